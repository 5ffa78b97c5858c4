//! The fuzz targets' inputs replayed on stable Rust, in `make test`: each target's seeds
//! (the fixtures the generator made: images, `preprocessor_config.json` and `config.json`
//! files, `spiece.model` files, weights files, CLIP tokenizer files, an int8 folder made by
//! `vit convert`; and the crafted models of `shared/bug-reports`), and every
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
fn replay(name: &str, seeds: Vec<PathBuf>, target: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    replay_inputs(name, seeds, target);
}

/// [`replay`] for a target that says whether its input loaded and ran: each of `loading`
/// must, so that the replay is known to reach the parsers; `others` (parts of models,
/// models that need their config, bad files) need only not panic.
fn replay_loading(
    name: &str,
    loading: Vec<PathBuf>,
    others: Vec<PathBuf>,
    target: fn(&[u8]) -> bool,
) {
    assert!(!loading.is_empty(), "{name}: no seeds that load");
    for seed in &loading {
        let bytes = std::fs::read(seed).unwrap();
        assert!(
            target(&bytes),
            "{name}: the seed {} does not load",
            seed.display()
        );
    }
    let seeds = loading.into_iter().chain(others).collect();
    replay_inputs(name, seeds, move |bytes| {
        target(bytes);
    });
}

/// Runs `target` on each input whole and cut short; none may panic.
fn replay_inputs(
    name: &str,
    seeds: Vec<PathBuf>,
    target: impl Fn(&[u8]) + std::panic::RefUnwindSafe,
) {
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
    seeds.extend(files(&fixture("formats"), &|n| {
        !n.ends_with(".safetensors")
    }));
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

/// The files under `fixtures/` whose name `keep` accepts, split into those `loads` accepts
/// and the others.
fn split_seeds(keep: &dyn Fn(&str) -> bool, loads: &dyn Fn(&Path) -> bool) -> [Vec<PathBuf>; 2] {
    let (loading, others) = files(&fixture(""), keep)
        .into_iter()
        .partition(|p| loads(p));
    [loading, others]
}

#[test]
fn safetensors_files_never_panic() {
    // Those ViTs of hf/ whose weights alone say their config (GELU, 16x16 patches, ...).
    let loads = ["p16_s48_relu_3labels_eps1e-5", "p4_s32_gelu"]
        .map(|dir| fixture("hf").join(dir).join("model.safetensors"));
    let [loading, others] = split_seeds(
        &|n| n.starts_with("model") && n.ends_with(".safetensors"),
        &|p| loads.iter().any(|l| l == p),
    );
    replay_loading("safetensors", loading, others, vit::fuzzing::safetensors);
}

#[test]
fn pytorch_checkpoints_never_panic() {
    // Whole models: HF's pytorch_model.bin files and timm's checkpoints (pickle/ holds parts).
    let [loading, others] = split_seeds(
        &|n| [".bin", ".pt", ".pth"].iter().any(|ext| n.ends_with(ext)),
        &|p| !p.starts_with(fixture("pickle")),
    );
    replay_loading("pickle", loading, others, vit::fuzzing::pickle);
}

/// `bytes` of each file, joined by NUL, as the two-file targets take them.
fn joined(first: &Path, second: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(first).unwrap();
    bytes.push(0);
    bytes.extend(std::fs::read(second).unwrap());
    bytes
}

#[test]
fn int8_folders_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("int8");
    let output = common::vit(&[
        "convert",
        fixture("hf/p8_s32_gelu_sharded").to_str().unwrap(),
        "-o",
        folder.to_str().unwrap(),
        "--dtype",
        "int8",
    ]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let seed = dir.path().join("seed");
    let bytes = joined(
        &folder.join("config.json"),
        &folder.join("model.safetensors"),
    );
    std::fs::write(&seed, bytes).unwrap();
    replay_loading("int8_folder", vec![seed], vec![], vit::fuzzing::int8_folder);
}

#[test]
fn clip_tokenizer_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = files(&fixture("clip"), &|n| n == "tokenizer.json");
    for (i, vocab) in files(&fixture("clip"), &|n| n == "vocab.json")
        .iter()
        .enumerate()
    {
        let seed = dir.path().join(format!("bpe-{i}"));
        std::fs::write(&seed, joined(vocab, &vocab.with_file_name("merges.txt"))).unwrap();
        seeds.push(seed);
    }
    replay_loading(
        "clip_tokenizer",
        seeds,
        vec![],
        vit::fuzzing::clip_tokenizer,
    );
}
