//! Fuzz target: `vit::fuzzing::image` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vit::fuzzing::image(data));
