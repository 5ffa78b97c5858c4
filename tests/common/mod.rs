//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` (or `VIT_SHARED_DIR`), with the real model, photos and references. `None`, with a
/// visible message, when it is absent; under CI (`CI=true`) its absence fails the test instead.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VIT_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    if dir
        .join("models/deit-tiny-patch16-224/config.json")
        .is_file()
    {
        return Some(dir);
    }
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    assert!(
        !ci,
        "shared data not found at {} (set VIT_SHARED_DIR); CI must not skip",
        dir.display()
    );
    eprintln!(
        "SKIPPED: shared data not found at {} (set VIT_SHARED_DIR)",
        dir.display()
    );
    None
}

/// The shared DeiT-Tiny model folder.
pub fn deit_tiny(shared: &Path) -> PathBuf {
    shared.join("models/deit-tiny-patch16-224")
}

/// A committed fixture under `tests/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    repo().join("tests/fixtures").join(relative)
}

/// A temporary copy of the fixture folder `relative` (its files, not its subfolders), for a
/// test to edit.
pub fn fixture_copy(relative: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(relative)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Runs the built `vit` binary with `args` (and no hub access).
pub fn vit(args: &[&str]) -> Output {
    vit_with_env(args, &[])
}

/// Runs the built `vit` binary with extra environment variables.
pub fn vit_with_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = vit_command(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("the vit binary runs")
}

/// The objects of JSON-lines text, one a line.
pub fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// All values of a tensor, flattened, as f32.
pub fn f32_values(tensor: &candle_core::Tensor) -> Vec<f32> {
    tensor
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("a numeric tensor")
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A `vit` command set up as [`vit_with_env`] runs it, to spawn (and kill) as a child process.
pub fn vit_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vit"));
    command
        .args(args)
        .env_remove("VIT_MODEL")
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("vit-tests-empty-hf-home"),
        );
    command
}

/// The model of `files` (loaded as `loaded`) rebuilt over weights that track gradients, as
/// training builds it: every op then takes candle's ops, which have a backward pass, instead
/// of the engine's kernels.
pub fn tracked_model(
    files: &vit::model::ModelFiles,
    loaded: &vit::model::LoadedModel,
) -> vit::model::VisionTransformer {
    let mut weights =
        vit::model::weights::read_weights_as(&files.weights, Some(loaded.layout)).unwrap();
    vit::model::weights::adapt_to_config(&mut weights, loaded.layout, &loaded.config).unwrap();
    for tensor in weights.values_mut() {
        *tensor = candle_core::Var::from_tensor(tensor)
            .unwrap()
            .as_tensor()
            .clone();
    }
    vit::model::build(weights, &loaded.config, &cpu_f32()).unwrap()
}

/// Loading on the CPU in f32 with the default kernels.
pub fn cpu_f32() -> vit::model::LoadOptions {
    vit::model::LoadOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        num_heads: None,
        model: vit::model::ModelOptions::default(),
    }
}

/// A golden fixture's model folder loaded on the CPU in f32 on `model`'s kernels (with
/// `tracked`, rebuilt over weights that track gradients: candle's ops, as training runs them),
/// checked to use every tensor, and its `io.safetensors` (inputs and the reference outputs).
pub fn load_fixture_model(
    name: &str,
    dir: &Path,
    model: vit::model::ModelOptions,
    tracked: bool,
) -> (
    vit::model::LoadedModel,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let files = vit::model::ModelFiles::local(dir).unwrap();
    let options = vit::model::LoadOptions { model, ..cpu_f32() };
    let mut loaded =
        vit::model::LoadedModel::load(&files, &options).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    if tracked {
        loaded.model = tracked_model(&files, &loaded);
    }
    assert!(
        loaded.unused_tensors.is_empty(),
        "{name}: unused {:?}",
        loaded.unused_tensors
    );
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    (loaded, io)
}

/// Runs `check` with each CPU kernel set this machine has.
pub fn on_every_kernel(check: impl Fn(vit::model::ModelOptions)) {
    for isa in vit::kernels::Isa::supported() {
        eprintln!("checking the {} kernels", isa.name());
        check(vit::model::ModelOptions {
            isa,
            ..vit::model::ModelOptions::default()
        });
    }
}

/// Asserts that `ours` has `expected`'s shape and values within 1e-4 (the project's f32 bar).
pub fn assert_close(what: &str, ours: &candle_core::Tensor, expected: &candle_core::Tensor) {
    assert_eq!(ours.dims(), expected.dims(), "{what}");
    let diff = max_abs_diff(&f32_values(ours), &f32_values(expected));
    assert!(
        diff < 1e-4,
        "{what}: max |diff| {diff} against the reference"
    );
}

/// A PNG whose header claims 100000 x 100000 8-bit RGB pixels (a decompression bomb's
/// header, with a valid CRC), followed by a truncated IDAT.
pub fn png_bomb() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
        out
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = 100_000u32.to_be_bytes().to_vec();
    header.extend(100_000u32.to_be_bytes());
    header.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    png.extend(chunk(b"IHDR", &header));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x01]));
    png
}
