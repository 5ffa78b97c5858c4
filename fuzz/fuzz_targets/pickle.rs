//! Fuzz target: `vit::fuzzing::pickle` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vit::fuzzing::pickle(data);
});
