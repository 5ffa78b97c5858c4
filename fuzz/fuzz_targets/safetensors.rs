//! Fuzz target: `vit::fuzzing::safetensors` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vit::fuzzing::safetensors(data);
});
