//! Fuzz target: `vit::fuzzing::sentencepiece` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vit::fuzzing::sentencepiece(data));
