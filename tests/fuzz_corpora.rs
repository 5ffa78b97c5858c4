//! The fuzz targets' inputs replayed on stable Rust, in `make test`: each target's seeds
//! (the fixtures the generator made: images, `preprocessor_config.json` and `config.json`
//! files, `spiece.model` files; and the crafted models of `shared/bug-reports`), and every
//! input a fuzzing run found to crash, kept in `fuzz/artifacts/<target>/`. Each must come
//! back (an error is fine) without a panic.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, repo, shared_dir};

/// Files under `dir` (recursively) whose name satisfies `keep`.
fn files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path, keep));
        } else if keep(path.file_name().unwrap().to_str().unwrap_or("")) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Runs `target` on every seed and every crash found so far of the target named `name`.
fn replay(name: &str, seeds: Vec<PathBuf>, target: fn(&[u8])) {
    let crashes = files(&repo().join("fuzz/artifacts").join(name), &|_| true);
    assert!(!seeds.is_empty(), "{name}: no seeds");
    for path in seeds.iter().chain(&crashes) {
        let bytes = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| target(&bytes));
        assert!(outcome.is_ok(), "{name}: {} panics", path.display());
        // Cut short, every input must fail cleanly too.
        for cut in [bytes.len() / 2, bytes.len() * 9 / 10] {
            let outcome = std::panic::catch_unwind(|| target(&bytes[..cut]));
            assert!(
                outcome.is_ok(),
                "{name}: {} cut at {cut} panics",
                path.display()
            );
        }
    }
}

#[test]
fn image_inputs_never_panic() {
    let mut seeds = files(&fixture("preprocess/images"), &|_| true);
    seeds.extend(files(&fixture("tiff"), &|n| n.ends_with(".tif")));
    seeds.extend(files(&fixture("bad_images"), &|_| true));
    seeds.extend(files(&fixture("cmyk"), &|_| true));
    replay("image", seeds, vit::fuzzing::image);
}

#[test]
fn preprocessor_configs_never_panic() {
    let seeds = files(&fixture(""), &|n| n == "preprocessor_config.json");
    replay(
        "preprocessor_config",
        seeds,
        vit::fuzzing::preprocessor_config,
    );
}

#[test]
fn model_configs_never_panic() {
    let seeds = files(&fixture(""), &|n| n == "config.json");
    replay("model_config", seeds, vit::fuzzing::model_config);
}

#[test]
fn sentencepiece_models_never_panic() {
    let mut seeds = files(&fixture(""), &|n| n == "spiece.model");
    if let Some(shared) = shared_dir() {
        seeds.extend(files(&shared.join("bug-reports/siglip-spiece"), &|n| {
            n.ends_with(".model")
        }));
    }
    replay("sentencepiece", seeds, vit::fuzzing::sentencepiece);
}
