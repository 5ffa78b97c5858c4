//! Fuzz target: `vit::fuzzing::int8_folder` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vit::fuzzing::int8_folder(data);
});
