//! Fuzz target: `vit::fuzzing::preprocessor_config` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vit::fuzzing::preprocessor_config(data));
