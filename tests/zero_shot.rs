//! `vit classify --labels` and `vit embed --text` end to end: the real binary on the CLIP and
//! SigLIP fixtures of `tests/fixtures/generate.py --only clip` and `--only siglip` against
//! HF's pipeline scores (softmax for CLIP, sigmoid for SigLIP) and projected features, and
//! bad input.

mod common;

use common::{f32_values, fixture, max_abs_diff, shared_dir, stderr, stdout, vit};
use serde_json::Value;

/// The cases of both families' fixtures.
const CASES: [(&str, usize); 4] = [("clip", 0), ("clip", 1), ("siglip", 0), ("siglip", 1)];

fn case(family: &str, index: usize) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("{family}/cases.json"))).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["cases"][index].clone()
}

fn labels(case: &Value) -> Vec<String> {
    case["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn classify_with_labels_gives_the_pipelines_scores() {
    let Some(shared) = shared_dir() else { return };
    for (family, index) in CASES {
        let case = case(family, index);
        let model = fixture(case["dir"].as_str().unwrap());
        let labels = labels(&case);
        let labels_file = tempfile::NamedTempFile::new().unwrap();
        // the last label from a file, the others inline
        std::fs::write(labels_file.path(), format!("{}\n", labels.last().unwrap())).unwrap();
        let inline = labels[..labels.len() - 1].join(",");
        let photo = case["photos"][0].as_str().unwrap();
        let image = shared.join("images").join(photo);
        // HF's default pipeline (its torchvision backend), then its PIL backend.
        for (backend, scores) in [
            (None, "pipeline_scores_torchvision"),
            (Some("pil"), "pipeline_scores"),
        ] {
            let mut args = vec![
                "classify",
                "-m",
                model.to_str().unwrap(),
                "--labels",
                &inline,
                "--labels-file",
                labels_file.path().to_str().unwrap(),
                "-k",
                "100",
                "-f",
                "json",
                "--stats",
                image.to_str().unwrap(),
            ];
            args.extend(
                backend
                    .map(|b| ["--image-backend", b])
                    .into_iter()
                    .flatten(),
            );
            let output = vit(&args);
            assert!(output.status.success(), "{}", stderr(&output));
            let stats = stderr(&output);
            let stats = stats
                .lines()
                .find_map(|l| l.strip_prefix("vit: stats: "))
                .unwrap();
            let stats: Value = serde_json::from_str(stats).unwrap();
            assert_eq!(stats["images"], 1);
            assert!(stats["classify_seconds"].as_f64().unwrap() > 0.0);
            let results: Value = serde_json::from_str(&stdout(&output)).unwrap();
            let predictions = results[0]["predictions"].as_array().unwrap();
            assert_eq!(
                predictions.len(),
                labels.len(),
                "top-k is capped at the labels"
            );
            for prediction in predictions {
                let label = prediction["label"].as_str().unwrap();
                let score = prediction["score"].as_f64().unwrap();
                let hf = case[scores][photo][label].as_f64().unwrap();
                assert!(
                    (score - hf).abs() < 1e-5,
                    "{family} {index} {scores} {label}: {score} vs HF {hf}"
                );
            }
            // the softmax of CLIP sums to one over the labels; SigLIP's sigmoids do not
            let total: f64 = predictions
                .iter()
                .map(|p| p["score"].as_f64().unwrap())
                .sum();
            assert_eq!(
                (total - 1.0).abs() < 1e-4,
                family == "clip",
                "{family}: {total}"
            );
        }
    }
}

#[test]
fn embed_text_gives_the_projected_text_features() {
    for (family, index) in [("clip", 1), ("siglip", 0)] {
        check_text_features(&case(family, index));
    }
}

fn check_text_features(case: &Value) {
    let dir = fixture(case["dir"].as_str().unwrap());
    let template = case["template"].as_str().unwrap();
    let sequences: Vec<String> = labels(case)
        .iter()
        .map(|l| template.replacen("{}", l, 1))
        .collect();
    let mut args = vec!["embed", "-m", dir.to_str().unwrap()];
    for sequence in &sequences {
        args.extend(["--text", sequence.as_str()]);
    }
    let output = vit(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let expected = f32_values(&io["text_features"]);
    let rows: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), sequences.len());
    let width = expected.len() / sequences.len();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["text"], sequences[i].as_str());
        let ours: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let diff = max_abs_diff(&ours, &expected[i * width..(i + 1) * width]);
        assert!(diff < 1e-4, "{}: {diff}", sequences[i]);
    }
}

#[test]
fn zero_shot_bad_input_is_one_clear_line() {
    let clip = fixture("clip/clip_p32_s64");
    let clip = clip.to_str().unwrap();
    let image = fixture("preprocess/images");
    let image = image.to_str().unwrap();
    let deit = fixture("family/deit_p8_s32");
    let vision = fixture("clip/vision_clip_p32_s64");
    let siglip = fixture("siglip/vision_siglip_p16_s48");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["classify", "-m", clip, image],
            "give them with --labels",
        ),
        (
            vec![
                "classify",
                "-m",
                deit.to_str().unwrap(),
                "--labels",
                "cat",
                image,
            ],
            "no text tower",
        ),
        (
            vec![
                "classify",
                "-m",
                clip,
                "--labels",
                "cat",
                "--template",
                "photo",
                image,
            ],
            "has no {} for the label",
        ),
        (
            vec!["classify", "-m", clip, "--labels", "cat,,dog", image],
            "label 2 is empty",
        ),
        (
            vec!["classify", "-m", clip, "--template", "a {}", image],
            "--template needs",
        ),
        (
            vec!["embed", "-m", vision.to_str().unwrap(), "--text", "a cat"],
            "no text tower",
        ),
        (
            vec!["embed", "-m", clip, "--text", "a cat", image],
            "not both",
        ),
        (
            vec!["embed", "-m", clip, "--text", "a cat", "--pool", "mean"],
            "--pool is for images",
        ),
        (vec!["embed", "-m", clip], "no images given"),
        (
            vec![
                "embed",
                "-m",
                siglip.to_str().unwrap(),
                "--pool",
                "cls",
                image,
            ],
            "no class token",
        ),
    ];
    for (args, message) in cases {
        let output = vit(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let err = stderr(&output);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("vit: ") && last.contains(message),
            "{args:?}: {err}"
        );
        assert!(stdout(&output).is_empty(), "{args:?}");
    }
}

#[test]
fn a_clip_folder_without_a_tokenizer_says_so_when_given_text() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("clip/clip_p32_s64");
    for name in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    let output = vit(&[
        "embed",
        "-m",
        dir.path().to_str().unwrap(),
        "--text",
        "a cat",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no tokenizer"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_absurd_text_layer_count_fails_at_once_naming_the_first_missing_layer() {
    let dir = common::fixture_copy("clip/clip_p32_s64");
    let config_path = dir.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["text_config"]["num_hidden_layers"] = Value::from(1_000_000_000u64);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = vit(&[
        "embed",
        "-m",
        dir.path().to_str().unwrap(),
        "--text",
        "a cat",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("missing tensor text.encoder.layer.2.layernorm_before.weight"),
        "{err}"
    );
}

/// The crafted `spiece.model` files of `shared/bug-reports/siglip-spiece` (a malformed
/// character map that panicked `spm_precompiled`, a 200 KB piece that overflowed the stack)
/// are each a one-line error naming the file, never a crash.
#[test]
fn crafted_sentencepiece_models_are_clear_errors() {
    let Some(shared) = shared_dir() else { return };
    let reports = shared.join("bug-reports/siglip-spiece");
    for (file, expected) in [
        ("sp122.spiece.model", "invalid precompiled_charsmap"),
        ("sp126.spiece.model", "invalid precompiled_charsmap"),
        ("sp127.spiece.model", "invalid precompiled_charsmap"),
        ("sq084.spiece.model", "bytes long"),
    ] {
        let dir = common::fixture_copy("siglip/siglip_p16_s48");
        let model = dir.path().join("spiece.model");
        std::fs::copy(reports.join(file), &model).unwrap();
        let output = vit(&[
            "embed",
            "-m",
            dir.path().to_str().unwrap(),
            "--text",
            "cat",
            "--format",
            "jsonl",
        ]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{file}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("overflow"),
            "{file}: {err}"
        );
        let last = err.trim_end().lines().last().unwrap();
        assert!(
            last.contains(&model.display().to_string()) && last.contains(expected),
            "{file}: {err}"
        );
    }
}

/// A CLIP `tokenizer.json` whose `post_processor` is null would drop the start and end
/// tokens silently: refused, naming the file.
#[test]
fn a_tokenizer_without_its_post_processor_is_refused() {
    let dir = common::fixture_copy("clip/clip_p32_s64");
    let path = dir.path().join("tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["post_processor"] = Value::Null;
    std::fs::write(&path, json.to_string()).unwrap();
    let output = vit(&["embed", "-m", dir.path().to_str().unwrap(), "--text", "cat"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("no post_processor"),
        "{err}"
    );
}
