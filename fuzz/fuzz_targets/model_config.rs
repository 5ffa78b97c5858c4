//! Fuzz target: `vit::fuzzing::model_config` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vit::fuzzing::model_config(data));
