//! `vit finetune` end to end: training on tiny synthetic images, checkpoints that survive
//! `kill -9`, the models it writes, and its errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{stderr, stdout, vit, vit_command};
use image::{Rgb, RgbImage};
use serde_json::Value;
use vit::model::save::write_model_folder;
use vit::model::weights::read_weights;
use vit::model::ViTConfig;
use vit::preprocess::PreprocessConfig;
use vit::train::model::init_weights;

const CLASSES: [&str; 3] = ["disk", "plain", "stripes"];

/// A 40x40 picture of `class` with seeded noise: a red disk, a flat green field, or blue
/// stripes, each on a dark noisy background.
fn picture(class: &str, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let mut noise = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 26) as u8
    };
    RgbImage::from_fn(40, 40, |x, y| {
        let (dx, dy) = (x as i32 - 20, y as i32 - 20);
        let base = match class {
            "disk" if dx * dx + dy * dy < 150 => [220, 40, 40],
            "plain" => [40, 180, 40],
            "stripes" if y % 6 < 3 => [40, 40, 220],
            _ => [30, 30, 30],
        };
        let n = noise();
        Rgb(base.map(|c: u8| c.saturating_add(n)))
    })
}

/// `root/train/<class>/` and `root/val/<class>/` with `train` and `val` images per class.
fn dataset(root: &Path, train: u32, val: u32) {
    for class in CLASSES {
        for (split, count, offset) in [("train", train, 0), ("val", val, 1000)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                picture(class, i + offset)
                    .save(dir.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }
}

/// A tiny HF model folder (hidden 32, 2 layers, 32x32 input, patch 8) labelled `labels`.
fn tiny_base(dir: &Path, labels: &[&str]) {
    let id2label: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), Value::from(*l)))
        .collect();
    let config = ViTConfig::from_json(
        &serde_json::json!({
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "image_size": 32, "patch_size": 8,
            "layer_norm_eps": 1e-6, "id2label": id2label,
        })
        .to_string(),
    )
    .unwrap();
    let weights = init_weights(&config, 7).unwrap();
    let preprocess = PreprocessConfig::default().with_input_size(32);
    std::fs::create_dir_all(dir).unwrap();
    write_model_folder(dir, &config, None, &weights, &preprocess).unwrap();
}

/// A dataset and a tiny base model in a temporary folder.
struct Setup {
    root: tempfile::TempDir,
}

impl Setup {
    fn new(train: u32, val: u32, base_labels: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        dataset(&root.path().join("data"), train, val);
        tiny_base(&root.path().join("base"), base_labels);
        Self { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The arguments of a run into `out` with `extra` options.
    fn args(&self, out: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "finetune",
            "--data",
            &self.arg("data"),
            "--model",
            &self.arg("base"),
            "-o",
            &self.arg(out),
            "--batch-size",
            "4",
            "--lr",
            "3e-3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
}

fn run(args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    vit(&args)
}

fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn assert_clean_failure(output: &std::process::Output, expected: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains(expected))
        .unwrap_or_default();
    assert!(
        line.starts_with("vit: ") || line.starts_with("error: "),
        "{err}"
    );
}

#[test]
fn training_lowers_the_loss_and_classify_loads_the_result() {
    let setup = Setup::new(12, 4, &["a", "b", "c", "d", "e"]);
    let output = run(&setup.args("out", &["--epochs", "6"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("head replaced (5 labels -> 3)"), "{err}");
    assert!(err.contains("epoch 6/6"), "{err}");
    let out = setup.path("out");
    assert!(stdout(&output).starts_with(&format!("{}: best validation accuracy", out.display())));

    let lines = metrics(&out);
    assert_eq!(lines.len(), 6);
    let loss = |i: usize| lines[i]["train_loss"].as_f64().unwrap();
    assert!(loss(5) < 0.8 * loss(0), "loss {} -> {}", loss(0), loss(5));
    let best = lines
        .iter()
        .map(|l| l["val_accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(best >= 0.75, "best validation accuracy {best}");
    assert!(lines.iter().any(|l| l["best"] == true));
    let plot = image::open(out.join("metrics.png")).unwrap();
    assert!(plot.width() > 500 && plot.height() > 300);

    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"]["2"], "stripes");
    assert_eq!(config["label2id"]["disk"], 0);
    assert!(out.join("last/trainer_state.json").is_file());

    let image = setup.path("data/val/stripes/000.png");
    let classified = vit(&[
        "classify",
        "--model",
        &out.display().to_string(),
        "-f",
        "jsonl",
        &image.display().to_string(),
    ]);
    assert_eq!(classified.status.code(), Some(0), "{}", stderr(&classified));
    let line: Value = serde_json::from_str(stdout(&classified).trim()).unwrap();
    let labels: Vec<&str> = line["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 3);
    assert!(labels.iter().all(|l| CLASSES.contains(l)), "{labels:?}");
}

/// Starts a run, waits until its checkpoint satisfies `ready`, kills it with SIGKILL, resumes
/// it, and checks the result is bit-identical to an uninterrupted run.
fn check_kill_and_resume(save_steps: &str, ready: fn(&Value) -> bool) {
    let setup = Setup::new(16, 4, &["x"]);
    let extra = ["--epochs", "4", "--save-steps", save_steps, "--seed", "5"];
    let reference = run(&setup.args("reference", &extra));
    assert_eq!(reference.status.code(), Some(0), "{}", stderr(&reference));

    let args = setup.args("killed", &extra);
    let mut child = vit_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state_path = setup.path("killed/last/trainer_state.json");
    let started = Instant::now();
    loop {
        let state = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok());
        if state.as_ref().is_some_and(ready) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before the kill");

    let resumed = vit(&["finetune", "--resume", "-o", &setup.arg("killed")]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("resuming"),
        "{}",
        stderr(&resumed)
    );
    for file in [
        "model.safetensors",
        "last/model.safetensors",
        "last/optimizer.safetensors",
    ] {
        let a = std::fs::read(setup.path("reference").join(file)).unwrap();
        let b = std::fs::read(setup.path("killed").join(file)).unwrap();
        assert!(a == b, "{file} differs after resuming");
    }
    let strip = |lines: Vec<Value>| -> Vec<Value> {
        lines
            .into_iter()
            .map(|mut l| {
                let map = l.as_object_mut().unwrap();
                map.remove("train_images_per_s");
                map.remove("epoch_seconds");
                l
            })
            .collect()
    };
    assert_eq!(
        strip(metrics(&setup.path("reference"))),
        strip(metrics(&setup.path("killed")))
    );
}

#[test]
fn killed_mid_epoch_a_resumed_run_ends_with_identical_weights() {
    check_kill_and_resume("1", |state| {
        state["global_step"].as_u64().unwrap() >= 15 && state["step_in_epoch"] != 0
    });
}

#[test]
fn killed_after_an_epoch_a_resumed_run_ends_with_identical_weights() {
    check_kill_and_resume("0", |state| state["epoch"].as_u64().unwrap() >= 1);
}

#[test]
fn matching_labels_keep_the_head_and_a_frozen_backbone_stays_put() {
    let setup = Setup::new(4, 2, &["plain", "stripes", "disk"]);
    let output = run(&setup.args(
        "out",
        &[
            "--epochs",
            "1",
            "--freeze-backbone",
            "--image-backend",
            "pil",
        ],
    ));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("head kept, rows reordered"),
        "{}",
        stderr(&output)
    );
    // The backend asked for is a setting of the run, kept for --resume.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(setup.path("out/last/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["settings"]["image_backend"], "pil", "{state}");
    let base = read_weights(&setup.path("base/model.safetensors")).unwrap();
    let trained = read_weights(&setup.path("out/model.safetensors")).unwrap();
    let same = |name: &str, rows: Option<&[u32]>| {
        let a = match rows {
            Some(rows) => {
                let rows = candle_core::Tensor::new(rows, &candle_core::Device::Cpu).unwrap();
                base[name].index_select(&rows, 0).unwrap()
            }
            None => base[name].clone(),
        };
        let diff = (a - &trained[name]).unwrap().abs().unwrap();
        diff.flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0
    };
    assert!(same("vit.encoder.layer.1.intermediate.dense.weight", None));
    assert!(same("vit.embeddings.position_embeddings", None));
    // The base's rows (plain, stripes, disk) come back in class order (disk, plain,
    // stripes), then train.
    assert!(!same("classifier.weight", Some(&[2, 0, 1])));
}

#[test]
fn a_preset_trains_from_scratch() {
    let setup = Setup::new(4, 2, &["x"]);
    let output = vit(&[
        "finetune",
        "--data",
        &setup.arg("data"),
        "--preset",
        "vit-tiny-patch16-224",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "-b",
        "6",
        "-o",
        &setup.arg("out"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("from scratch"),
        "{}",
        stderr(&output)
    );
    let config = ViTConfig::from_file(&setup.path("out/config.json")).unwrap();
    assert_eq!((config.hidden_size, config.num_hidden_layers), (192, 12));
    assert_eq!(config.image_size, 32);
    assert_eq!(config.id2label, CLASSES);
}

#[test]
fn unreadable_images_are_warned_counted_and_skipped() {
    let setup = Setup::new(4, 2, &["x"]);
    let broken = setup.path("data/train/disk/broken.jpg");
    std::fs::write(&broken, b"not a jpeg").unwrap();
    let output = run(&setup.args("out", &["--epochs", "1"]));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("vit: warning: {}: ", broken.display())),
        "{err}"
    );
    assert!(setup.path("out/model.safetensors").is_file());
}

#[test]
fn bad_requests_fail_cleanly_without_touching_earlier_outputs() {
    let setup = Setup::new(2, 1, &["x"]);
    assert_clean_failure(
        &run(&setup.args("never", &["--resume"])),
        "cannot be used with",
    );
    assert_clean_failure(
        &vit(&["finetune", "--resume", "-o", &setup.arg("never")]),
        "no checkpoint to resume from",
    );
    assert_clean_failure(
        &run(&setup.args("never", &["--image-size", "30"])),
        "not a positive multiple of the model's patch size 8",
    );
    assert_clean_failure(
        &run(&setup.args("never", &["--dtype", "int8"])),
        "--dtype int8 is for inference; finetune trains in f32, f16 or bf16",
    );
    assert_clean_failure(
        &vit(&[
            "finetune",
            "--data",
            &setup.arg("missing"),
            "--preset",
            "vit-tiny-patch16-224",
            "-o",
            &setup.arg("never"),
        ]),
        "missing: no such folder",
    );
    assert!(!setup.path("never").exists());

    let out = setup.path("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), b"keep me").unwrap();
    assert_clean_failure(
        &run(&setup.args("out", &["--epochs", "1"])),
        "use --resume to continue it or --force to replace it",
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        b"keep me"
    );
    let forced = run(&setup.args("out", &["--epochs", "1", "--force"]));
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    assert_ne!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        b"keep me"
    );
}

/// DeiT, DINOv2 and DINOv3 (fixtures of HF's own layouts) train through autograd, whole or
/// with a frozen backbone, and come out as the classifier of their family (HF's; vit's own
/// for DINOv3, which transformers has none of).
#[test]
fn deit_dinov2_and_dinov3_train_and_are_saved_as_their_family_classifiers() {
    let setup = Setup::new(8, 3, &["a"]);
    for (fixture_name, freeze, architecture) in [
        (
            "family/dinov2_reg_model_p8_s40_at32x48",
            true,
            "Dinov2WithRegistersForImageClassification",
        ),
        (
            "family/dinov2_cls_swiglu_p8_s32",
            false,
            "Dinov2ForImageClassification",
        ),
        (
            "family/deit_teacher_p8_s32_interp48",
            false,
            "DeiTForImageClassification",
        ),
        (
            "dinov3/gated_reg_p4_s24",
            true,
            "DINOv3ViTForImageClassification",
        ),
        (
            "dinov3/plain_p4_s20",
            false,
            "DINOv3ViTForImageClassification",
        ),
    ] {
        let model = common::fixture(fixture_name).display().to_string();
        let out = format!("out-{}", fixture_name.replace('/', "-"));
        let mut args = setup.args(&out, &["--epochs", "3", "--image-size", "32"]);
        args[4] = model;
        if freeze {
            args.push("--freeze-backbone".into());
        }
        let output = run(&args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{fixture_name}: {}",
            stderr(&output)
        );
        let lines = metrics(&setup.path(&out));
        let loss = |i: usize| lines[i]["train_loss"].as_f64().unwrap();
        assert!(
            loss(2) < loss(0),
            "{fixture_name}: loss {} -> {}",
            loss(0),
            loss(2)
        );
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(setup.path(&out).join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["architectures"][0], architecture, "{fixture_name}");
        assert_eq!(config["id2label"]["2"], "stripes");
        let classified = vit(&[
            "classify",
            "-m",
            &setup.arg(&out),
            "-f",
            "jsonl",
            &setup.arg("data/val/disk/000.png"),
        ]);
        assert_eq!(classified.status.code(), Some(0), "{}", stderr(&classified));
    }
}
