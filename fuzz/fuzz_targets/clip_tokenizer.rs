//! Fuzz target: `vit::fuzzing::clip_tokenizer` on arbitrary bytes (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vit::fuzzing::clip_tokenizer(data);
});
