//! `vit convert` end to end: timm and HF checkpoints in, HF safetensors folders out, checked
//! against timm's and HF's own logits; dtype casts; bad inputs and safe outputs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use common::{deit_tiny, f32_values, fixture, max_abs_diff, shared_dir, stderr, stdout, vit};
use serde_json::{json, Value};
use vit::model::weights::read_weights;
use vit::model::{LoadOptions, LoadedModel, ModelFiles, ModelOptions};

fn timm_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("timm/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn convert(args: &[&str]) -> Output {
    let mut all = vec!["convert"];
    all.extend_from_slice(args);
    let output = vit(&all);
    assert!(
        !stderr(&output).contains("panicked"),
        "vit panicked: {}",
        stderr(&output)
    );
    output
}

/// Runs a conversion that must succeed and returns its JSON summary.
fn convert_ok(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--format", "json"]);
    let output = convert(&all);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

/// Asserts a failed run: exit 2, one `vit: ` line of error on stderr containing `needle`.
fn assert_fails(output: &Output, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("vit: "), "{err}");
    assert!(last.contains(needle), "expected {needle:?} in {err}");
    assert!(stdout(output).is_empty(), "{}", stdout(output));
}

/// Asserts that no temporary folder of a conversion is left in `dir`.
fn assert_no_leftovers(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp-"),
            "{name} left behind in {}",
            dir.display()
        );
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn load(dir: &Path) -> LoadedModel {
    let options = common::cpu_f32();
    let loaded = LoadedModel::load(&ModelFiles::local(dir).unwrap(), &options)
        .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
    assert!(
        loaded.unused_tensors.is_empty(),
        "{:?}",
        loaded.unused_tensors
    );
    loaded
}

/// Max |logits of the model in `dir` − the logits in `io`| on `io`'s pixel values.
fn logits_diff(dir: &Path, io: &Path) -> f32 {
    let io = candle_core::safetensors::load(io, &Device::Cpu).unwrap();
    let logits = load(dir).model.forward(&io["pixel_values"]).unwrap();
    max_abs_diff(&f32_values(&logits), &f32_values(&io["logits"]))
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn timm_checkpoints_convert_to_models_with_timms_logits() {
    let cases = timm_cases();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let input = fixture(case["file"].as_str().unwrap());
        let expected = &case["expected_hf_config"];
        let heads = expected["num_attention_heads"].to_string();
        let before = std::fs::read(&input).unwrap();
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let summary = convert_ok(&[s(&input), "-o", s(&out), "--num-heads", &heads]);
        assert_eq!(summary["layout"], "timm", "{name}");
        assert_eq!(summary["dtype"], "f32", "{name}");
        assert_eq!(summary["source_tensors"], case["num_tensors"], "{name}");
        // Each layer's fused qkv weight (and bias) becomes three tensors.
        let per_layer = if expected["qkv_bias"] == true { 4 } else { 2 };
        let qkv_split = per_layer * expected["num_hidden_layers"].as_u64().unwrap();
        assert_eq!(
            summary["tensors"].as_u64().unwrap(),
            case["num_tensors"].as_u64().unwrap() + qkv_split,
            "{name}"
        );
        assert_eq!(
            file_names(&out),
            [
                "config.json",
                "model.safetensors",
                "preprocessor_config.json"
            ]
        );
        let config = read_json(&out.join("config.json"));
        for (key, value) in expected.as_object().unwrap() {
            let got = match key.as_str() {
                // HF writes the labels, not their number.
                "num_labels" => config["id2label"].as_object().unwrap().len().into(),
                _ => config[key].clone(),
            };
            assert_eq!(&got, value, "{name}: config.json {key}");
        }
        let diff = logits_diff(&out, &fixture(case["io"].as_str().unwrap()));
        assert!(diff < 1e-4, "{name}: max |logit diff| {diff} vs timm");
        assert_eq!(
            std::fs::read(&input).unwrap(),
            before,
            "{name}: input changed"
        );
        assert_no_leftovers(root.path());
    }
}

#[test]
fn the_default_output_is_beside_the_input_and_heads_default_to_hidden_over_64() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("my model.pth");
    std::fs::copy(fixture("timm/timm_vit.pth"), &input).unwrap();
    let output = convert(&[s(&input)]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("pass --num-heads"),
        "{}",
        stderr(&output)
    );
    let out = root.path().join("my model-hf");
    let text = stdout(&output);
    assert!(
        text.contains(&format!("output       {}", out.display())),
        "{text}"
    );
    for row in [
        "tensors      40 (32 in the source)",
        "dtype        f32",
        "verified     ",
    ] {
        assert!(text.contains(row), "{row:?} missing in\n{text}");
    }
    // 48 / 64 rounds to 0: one head, and the wrong logits a missing --num-heads gives.
    assert_eq!(load(&out).config.num_attention_heads, 1);
    assert!(logits_diff(&out, &fixture("timm/io.safetensors")) > 1e-3);
    let preprocessor = read_json(&out.join("preprocessor_config.json"));
    assert_eq!(preprocessor["size"]["shortest_edge"], 35);
    assert_eq!(preprocessor["crop_size"]["height"], 32);
    assert_eq!(preprocessor["resample"], 3);
    assert_eq!(file_names(root.path()), ["my model-hf", "my model.pth"]);
}

#[test]
fn hf_bin_folders_become_safetensors_with_the_same_logits() {
    let cases = [
        ("hf/p16_s80_relu_bin", "hf/p16_s80_relu_bin/io.safetensors"),
        (
            "hf/p8_s32_silu_1label_bin",
            "hf/p8_s32_silu_1label_bin/io.safetensors",
        ),
        ("timm/hf_bin", "timm/io.safetensors"),
    ];
    for (dir, io) in cases {
        let input = fixture(dir);
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let summary = convert_ok(&[s(&input), "-o", s(&out)]);
        assert_eq!(summary["layout"], "hf", "{dir}");
        assert_eq!(summary["max_cast_change"], 0.0, "{dir}");
        assert_eq!(
            file_names(&out),
            [
                "config.json",
                "model.safetensors",
                "preprocessor_config.json"
            ]
        );
        assert_eq!(
            std::fs::read(out.join("config.json")).unwrap(),
            std::fs::read(input.join("config.json")).unwrap(),
            "{dir}: config.json is not copied as is"
        );
        let diff = logits_diff(&out, &fixture(io));
        assert!(diff < 1e-4, "{dir}: max |logit diff| {diff}");
        let source = read_weights(&input.join("pytorch_model.bin")).unwrap();
        let written = read_weights(&out.join("model.safetensors")).unwrap();
        assert_eq!(source.len(), written.len(), "{dir}");
        for (name, tensor) in &source {
            assert_eq!(
                f32_values(tensor),
                f32_values(&written[name]),
                "{dir}: {name}"
            );
        }
    }
}

#[test]
fn models_are_sharded_above_the_maximum_shard_size_and_shards_are_read() {
    let input = fixture("hf/p8_s32_gelu_sharded");
    let io = input.join("io.safetensors");
    let root = tempfile::tempdir().unwrap();
    let single = root.path().join("single");
    let summary = convert_ok(&[s(&input), "-o", s(&single)]);
    assert_eq!(summary["shards"], 1);
    assert!(logits_diff(&single, &io) < 1e-4);

    let sharded = root.path().join("sharded");
    let summary = convert_ok(&[s(&input), "-o", s(&sharded), "--max-shard-size", "8KiB"]);
    let shards = summary["shards"].as_u64().unwrap();
    assert!(shards >= 3, "{summary}");
    let index = read_json(&sharded.join("model.safetensors.index.json"));
    assert_eq!(index["metadata"]["total_size"], summary["bytes"]);
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len() as u64, summary["tensors"].as_u64().unwrap());
    let mut files: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    assert_eq!(files.len() as u64, shards);
    for (i, file) in files.iter().enumerate() {
        assert_eq!(
            *file,
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        );
        let tensors = candle_core::safetensors::load(sharded.join(file), &Device::Cpu).unwrap();
        let bytes: usize = tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        assert!(bytes <= 8192 || tensors.len() == 1, "{file}: {bytes} bytes");
    }
    assert!(!sharded.join("model.safetensors").exists());
    assert!(logits_diff(&sharded, &io) < 1e-4);
}

#[test]
fn f16_and_bf16_outputs_hold_exactly_the_rounded_tensors() {
    // The HF .bin is the same model as timm_vit.pth, mapped to HF names by the generator.
    let reference = read_weights(&fixture("timm/hf_bin/pytorch_model.bin")).unwrap();
    for (dtype, hf_name) in [("f16", "float16"), ("bf16", "bfloat16")] {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let input = fixture("timm/timm_vit.pth");
        let summary = convert_ok(&[
            s(&input),
            "-o",
            s(&out),
            "--num-heads",
            "3",
            "--dtype",
            dtype,
        ]);
        assert_eq!(summary["dtype"], dtype);
        assert!(summary["max_cast_change"].as_f64().unwrap() > 0.0);
        assert_eq!(read_json(&out.join("config.json"))["dtype"], hf_name);
        let written =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(written.len(), reference.len());
        for (name, source) in &reference {
            let tensor = &written[name];
            assert_eq!(tensor.dims(), source.dims(), "{name}");
            let source = f32_values(source);
            let bits: Vec<u16> = match dtype {
                "f16" => source
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_bits())
                    .collect(),
                _ => source
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_bits())
                    .collect(),
            };
            let got: Vec<u16> = match dtype {
                "f16" => {
                    assert_eq!(tensor.dtype(), DType::F16, "{name}");
                    let values: Vec<half::f16> = tensor.flatten_all().unwrap().to_vec1().unwrap();
                    values.iter().map(|v| v.to_bits()).collect()
                }
                _ => {
                    assert_eq!(tensor.dtype(), DType::BF16, "{name}");
                    let values: Vec<half::bf16> = tensor.flatten_all().unwrap().to_vec1().unwrap();
                    values.iter().map(|v| v.to_bits()).collect()
                }
            };
            assert_eq!(got, bits, "{dtype}: {name} is not the rounded source");
        }
        // Rounded weights still give nearly timm's logits.
        let diff = logits_diff(&out, &fixture("timm/io.safetensors"));
        assert!(diff < 0.1, "{dtype}: max |logit diff| {diff}");
    }
}

/// `vit classify` logits of every class, in descending order, by file, computed in f32.
fn ranked_logits(model: &Path, images: &Path) -> HashMap<String, Vec<(u64, f64)>> {
    let output = vit(&[
        "classify",
        "-m",
        s(model),
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "-k",
        "1000",
        "--function",
        "none",
        "-f",
        "json",
        s(images),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let results: Value = serde_json::from_str(&stdout(&output)).unwrap();
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let file = r["file"].as_str().unwrap().to_string();
            let ranked = r["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["index"].as_u64().unwrap(), p["score"].as_f64().unwrap()))
                .collect();
            (file, ranked)
        })
        .collect()
}

#[test]
fn bf16_conversion_of_the_shared_deit_keeps_top1_and_the_top5_up_to_near_ties() {
    let Some(shared) = shared_dir() else { return };
    let model = deit_tiny(&shared);
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("deit-bf16");
    let summary = convert_ok(&[s(&model), "-o", s(&out), "--dtype", "bf16"]);
    assert_eq!(summary["layout"], "hf");
    assert_eq!(summary["tensors"], 200);
    assert_eq!(summary["parameters"], 5_717_416);
    assert_eq!(summary["bytes"], 2 * 5_717_416);
    assert_eq!(
        std::fs::read(out.join("preprocessor_config.json")).unwrap(),
        std::fs::read(model.join("preprocessor_config.json")).unwrap()
    );
    let mut config = read_json(&out.join("config.json"));
    let mut original = read_json(&model.join("config.json"));
    for key in ["dtype", "torch_dtype"] {
        if original.get(key).is_some() {
            assert_eq!(config[key], "bfloat16");
        }
        config.as_object_mut().unwrap().remove(key);
        original.as_object_mut().unwrap().remove(key);
    }
    assert_eq!(config, original, "config.json changed beyond its dtype");

    // bf16 weights move the f32 logits by up to about 0.08 (logits span about 15). The top-5
    // must stay, except that two classes whose f32 logits are within 0.05 (a near tie at that
    // scale) may trade places, on one photo at most.
    let images = shared.join("images");
    let original = ranked_logits(&model, &images);
    let rounded = ranked_logits(&out, &images);
    assert!(original.len() >= 20, "{} photos", original.len());
    let mut max_change = 0f64;
    let mut near_ties = Vec::new();
    for (file, ranked) in &original {
        let logit: HashMap<u64, f64> = ranked.iter().copied().collect();
        let other: HashMap<u64, f64> = rounded[file].iter().copied().collect();
        for (class, value) in &logit {
            max_change = max_change.max((value - other[class]).abs());
        }
        let top = |r: &[(u64, f64)]| -> Vec<u64> { r[..5].iter().map(|(i, _)| *i).collect() };
        let (a, b) = (top(ranked), top(&rounded[file]));
        assert_eq!(a[0], b[0], "{file}: top-1 changed");
        if a != b {
            for (x, y) in a.iter().zip(&b).filter(|(x, y)| x != y) {
                let gap = (logit[x] - logit[y]).abs();
                assert!(gap < 0.05, "{file}: {a:?} became {b:?} (f32 gap {gap})");
            }
            near_ties.push(file.clone());
        }
    }
    assert!(
        max_change < 0.1,
        "bf16 weights moved a logit by {max_change}"
    );
    assert!(near_ties.len() <= 1, "top-5 changed on {near_ties:?}");
    eprintln!(
        "bf16: largest logit change {max_change:.4}; near ties swapped in the top-5: {near_ties:?}"
    );
}

#[test]
fn keeping_the_dtype_of_the_shared_deit_writes_identical_tensors() {
    let Some(shared) = shared_dir() else { return };
    let model = deit_tiny(&shared);
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("deit");
    let summary = convert_ok(&[s(&model), "-o", s(&out)]);
    assert_eq!(summary["dtype"], "f32");
    for file in ["config.json", "preprocessor_config.json"] {
        assert_eq!(
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(model.join(file)).unwrap(),
            "{file}"
        );
    }
    let source = read_weights(&model.join("model.safetensors")).unwrap();
    let written = read_weights(&out.join("model.safetensors")).unwrap();
    assert_eq!(source.len(), written.len());
    for (name, tensor) in &source {
        let bits = |t: &Tensor| -> Vec<u32> { f32_values(t).iter().map(|v| v.to_bits()).collect() };
        assert_eq!(bits(tensor), bits(&written[name]), "{name}");
    }
}

#[test]
fn truncated_and_malicious_pickles_are_refused_and_run_nothing() {
    let marker = Path::new("/tmp/vit-pwned");
    let _ = std::fs::remove_file(marker);
    let root = tempfile::tempdir().unwrap();
    let raw_pickle = root.path().join("evil.bin");
    std::fs::copy(fixture("pickle/evil.pkl"), &raw_pickle).unwrap();
    let out = root.path().join("out");

    let output = convert(&[s(&fixture("pickle/truncated.pt")), "-o", s(&out)]);
    assert_fails(&output, "truncated or corrupt zip archive");
    for evil in [fixture("pickle/evil_zip.pt"), raw_pickle] {
        let output = convert(&[s(&evil), "-o", s(&out)]);
        assert_fails(&output, "refusing to load");
        assert!(
            !marker.exists(),
            "{}: the pickle ran a command",
            evil.display()
        );
    }
    assert!(!out.exists());
    assert_eq!(file_names(root.path()), ["evil.bin"]);
}

/// Writes `tensors` as a safetensors file.
fn save(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

#[test]
fn unknown_layouts_and_non_vit_tensors_are_named() {
    let root = tempfile::tempdir().unwrap();
    let resnet = root.path().join("resnet.safetensors");
    let t = || Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let names = [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "fc.weight",
        "fc.bias",
    ];
    save(
        &resnet,
        &names.iter().map(|n| (n.to_string(), t())).collect(),
    );
    let out = root.path().join("out");
    let output = convert(&[s(&resnet), "-o", s(&out)]);
    assert_fails(&output, "unknown checkpoint layout");
    let err = stderr(&output);
    assert!(
        err.contains("saw 5 tensors: bn1.running_mean, conv1.weight, fc.bias"),
        "{err}"
    );
    assert!(err.contains(s(&resnet)), "{err}");

    let output = convert(&[
        s(&fixture("timm/timm_vit.pth")),
        "-o",
        s(&out),
        "--from",
        "hf",
    ]);
    assert_fails(&output, "not an HF ViT checkpoint");

    // A distillation token whose position embeddings do not fit: named with its shapes.
    let mut timm = candle_core::safetensors::load(
        fixture("timm/timm_vit_noqkvbias.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    timm.insert(
        "dist_token".into(),
        Tensor::zeros((1, 1, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let distilled = root.path().join("distilled.safetensors");
    save(&distilled, &timm);
    let output = convert(&[s(&distilled), "-o", s(&out), "--num-heads", "2"]);
    assert_fails(
        &output,
        "pos_embed has 65 rows: not a square grid with or without 2 prefix tokens",
    );
    // A timm variant no HF layout holds is refused by name.
    let deit3 = fixture("timm_family/vit_reg_no_embed_class_ls_at40");
    let output = convert(&[s(&deit3), "-o", s(&out)]);
    assert_fails(&output, "no HF counterpart in the ViT family");
    assert!(stderr(&output).contains("no_embed_class"));
    assert!(!out.exists());
    assert_no_leftovers(root.path());
}

#[test]
fn a_cast_that_fails_verification_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut timm = candle_core::safetensors::load(
        fixture("timm/timm_vit_noqkvbias.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // 1e6 does not fit in f16: the cast makes it infinite, and verification must catch it.
    timm.insert(
        "head.bias".into(),
        Tensor::new(&[0f32, 1e6, 2.], &Device::Cpu).unwrap(),
    );
    let input = root.path().join("big.safetensors");
    save(&input, &timm);
    let out = root.path().join("out");
    let output = convert(&[
        s(&input),
        "-o",
        s(&out),
        "--num-heads",
        "2",
        "--dtype",
        "f16",
    ]);
    assert_fails(
        &output,
        "verification failed: tensor head.bias: element 1 changes from 1e6 to inf",
    );
    assert!(!out.exists());
    assert_no_leftovers(root.path());
    assert_eq!(file_names(root.path()), ["big.safetensors"]);
    // bf16 has the range: the same checkpoint converts.
    convert_ok(&[
        s(&input),
        "-o",
        s(&out),
        "--num-heads",
        "2",
        "--dtype",
        "bf16",
    ]);
}

#[test]
fn an_existing_output_is_kept_without_force_and_replaced_with_it() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let input = fixture("timm/timm_vit.pth");
    let output = convert(&[s(&input), "-o", s(&out), "--num-heads", "3"]);
    assert_fails(&output, "already exists (use --force");
    assert_eq!(file_names(&out), ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_no_leftovers(root.path());

    convert_ok(&[s(&input), "-o", s(&out), "--num-heads", "3", "--force"]);
    assert_eq!(
        file_names(&out),
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json"
        ]
    );
    assert_eq!(file_names(root.path()), ["out"]);
}

#[test]
fn the_input_folder_is_never_the_output() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for file in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(fixture("timm/hf_bin").join(file), model.join(file)).unwrap();
    }
    for out in [model.clone(), root.path().to_path_buf()] {
        let output = convert(&[s(&model), "-o", s(&out), "--force"]);
        assert_fails(&output, "the output folder holds the input");
        assert_eq!(file_names(&model), ["config.json", "pytorch_model.bin"]);
    }
}

/// Whether permissions are enforced for this user (they are not for root).
fn permissions_enforced(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("probe");
    std::fs::create_dir(&probe).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o555)).unwrap();
    let enforced = std::fs::create_dir(probe.join("x")).is_err();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&probe).unwrap();
    enforced
}

#[test]
fn an_unwritable_output_location_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let input = fixture("timm/timm_vit.pth");
    // Under a regular file nobody, root included, can create a folder.
    let file = root.path().join("file.txt");
    std::fs::write(&file, "data").unwrap();
    let output = convert(&[s(&input), "-o", s(&file.join("out")), "--num-heads", "3"]);
    assert_fails(&output, "cannot create output folder");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");

    if !permissions_enforced(root.path()) {
        eprintln!("SKIPPED: read-only folder case (permissions are not enforced for this user)");
        return;
    }
    let locked = root.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let output = convert(&[s(&input), "-o", s(&locked.join("out")), "--num-heads", "3"]);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_fails(&output, "Permission denied");
    assert!(file_names(&locked).is_empty());
}

#[test]
fn the_leftover_of_an_interrupted_run_is_removed() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    // Above Linux's largest pid (2^22), so no live process owns it.
    let stale: PathBuf = root.path().join(".out.tmp-9999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), "partial").unwrap();
    let output = convert(&[
        s(&fixture("timm/timm_vit.pth")),
        "-o",
        s(&out),
        "--num-heads",
        "3",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("left by an interrupted run"),
        "{}",
        stderr(&output)
    );
    assert_eq!(file_names(root.path()), ["out"]);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let input = fixture("timm/timm_vit.pth");
    for args in [
        vec!["--max-shard-size", "5XB"],
        vec!["--max-shard-size", "0"],
        vec!["--to", "onnx"],
        vec!["--dtype", "f8"],
        vec!["--from", "keras"],
        vec!["--num-heads", "0"],
    ] {
        let mut all = vec![s(&input), "-o", "/nonexistent/never"];
        all.extend(args.iter().copied());
        let output = convert(&all);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let output = convert(&["missing.pth"]);
    assert_fails(&output, "missing.pth: no such file or directory");
}

/// timm's distilled DeiT becomes HF's `DeiTForImageClassificationWithTeacher`, a timm
/// DINOv2 backbone HF's `Dinov2Model`: written in HF's names, and the written folder gives
/// timm's outputs.
#[test]
fn timm_deit_distilled_and_dinov2_convert_to_their_hf_layouts() {
    use vit::model::{EmbeddingKind, LoadedModel, ModelFiles};
    let root = tempfile::tempdir().unwrap();
    for (case, architecture, output_name) in [
        (
            "deit_distilled",
            "DeiTForImageClassificationWithTeacher",
            "logits",
        ),
        ("dinov2_backbone", "Dinov2Model", "pooled"),
    ] {
        let source = fixture(&format!("timm_family/{case}"));
        let out = root.path().join(case);
        let output = convert(&[s(&source), "-o", s(&out)]);
        assert_eq!(output.status.code(), Some(0), "{case}: {}", stderr(&output));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], architecture, "{case}");
        let loaded =
            LoadedModel::load(&ModelFiles::local(&out).unwrap(), &common::cpu_f32()).unwrap();
        let io =
            candle_core::safetensors::load(source.join("io.safetensors"), &Device::Cpu).unwrap();
        let ours = match output_name {
            "logits" => loaded.model.forward(&io["pixel_values"]),
            _ => loaded.model.embed(&io["pixel_values"], EmbeddingKind::Auto),
        }
        .unwrap();
        let diff = common::max_abs_diff(
            &common::f32_values(&ours),
            &common::f32_values(&io[output_name]),
        );
        assert!(diff < 1e-4, "{case}: {output_name} {diff} from timm's");
    }
}

#[test]
fn image_text_models_are_refused_before_their_weights_are_read() {
    for dir in [
        "clip/clip_p32_s64",
        "siglip/siglip_p16_s48",
        "siglip/vision_siglip_p16_s48",
    ] {
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("converted");
        let output = convert(&[
            fixture(dir).to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(2), "{dir}");
        let err = stderr(&output);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("vit: ")
                && last.contains("config.json: an HF ")
                && last.contains("is read as it is"),
            "{dir}: {err}"
        );
        assert!(!target.exists(), "{dir}: nothing written");
    }
}

/// Loads `dir` in f32 on the CPU with `int8` quantization at load (or not).
fn load_with_int8(dir: &Path, int8: bool) -> LoadedModel {
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        num_heads: None,
        model: ModelOptions {
            int8,
            ..ModelOptions::default()
        },
    };
    LoadedModel::load(&ModelFiles::local(dir).unwrap(), &options)
        .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()))
}

/// Every tensor of the safetensors files of `dir`: (dtype, shape) by name.
fn stored_tensors(dir: &Path) -> HashMap<String, (safetensors::Dtype, Vec<usize>)> {
    let mut found = HashMap::new();
    for name in file_names(dir) {
        if !name.ends_with(".safetensors") {
            continue;
        }
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (tensor, view) in file.tensors() {
            found.insert(tensor, (view.dtype(), view.shape().to_vec()));
        }
    }
    found
}

#[test]
fn int8_folders_store_int8_weights_with_scales_and_run_as_load_time_int8() {
    let input = fixture("hf/p8_s32_gelu_sharded");
    let io = input.join("io.safetensors");
    let pixels = &candle_core::safetensors::load(&io, &Device::Cpu).unwrap()["pixel_values"];
    let quantized_at_load =
        f32_values(&load_with_int8(&input, true).model.forward(pixels).unwrap());
    let root = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("single", &[][..]),
        ("sharded", &["--max-shard-size", "8KiB"][..]),
    ] {
        let out = root.path().join(name);
        let mut args = vec![s(&input), "-o", s(&out), "--dtype", "int8"];
        args.extend_from_slice(extra);
        let summary = convert_ok(&args);
        assert_eq!(summary["dtype"], "int8+f32", "{summary}");
        let int8 = summary["int8_tensors"].as_u64().unwrap();
        let stored = stored_tensors(&out);
        assert_eq!(stored.len() as u64, summary["tensors"].as_u64().unwrap());
        let mut seen = 0;
        for (tensor, (dtype, shape)) in &stored {
            let dense = tensor.contains("encoder.layer.")
                && tensor.ends_with(".weight")
                && shape.len() == 2;
            if dense {
                seen += 1;
                assert_eq!(*dtype, safetensors::Dtype::I8, "{tensor}");
                let scale = &stored[&format!("{tensor}_scale")];
                assert_eq!(
                    scale,
                    &(safetensors::Dtype::F32, vec![shape[0]]),
                    "{tensor}"
                );
            } else {
                assert_eq!(*dtype, safetensors::Dtype::F32, "{tensor}");
            }
        }
        assert_eq!(seen, int8);
        assert!(int8 >= 6, "{summary}");
        let config = read_json(&out.join("config.json"));
        assert_eq!(config["quantization"]["quant_method"], "int8");
        assert_eq!(config["quantization"]["scale_suffix"], "_scale");
        if name == "sharded" {
            let index = read_json(&out.join("model.safetensors.index.json"));
            assert_eq!(index["metadata"]["total_size"], summary["bytes"]);
            assert_eq!(index["weight_map"].as_object().unwrap().len(), stored.len());
        }
        let bench = vit(&[
            "bench",
            "--model",
            s(&out),
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--batch-sizes",
            "1",
            "--format",
            "json",
        ]);
        assert!(bench.status.success(), "{}", stderr(&bench));
        let row: Value = serde_json::from_str(stdout(&bench).trim()).unwrap();
        assert_eq!(
            row["dtype"], "int8",
            "an int8 folder runs (and is reported) as int8"
        );
        let loaded = load_with_int8(&out, false);
        assert_eq!(loaded.int8, vit::model::Int8Weights::Stored);
        assert!(
            loaded.unused_tensors.is_empty(),
            "{:?}",
            loaded.unused_tensors
        );
        let logits = f32_values(&loaded.model.forward(pixels).unwrap());
        let diff = max_abs_diff(&logits, &quantized_at_load);
        assert!(
            diff < 1e-5,
            "{name}: {diff} from the same model quantized as it loads"
        );
        let reference = f32_values(&io_logits(&io));
        let largest = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let f32_diff = max_abs_diff(&logits, &reference);
        // A check for gross errors only (a wrong scale or transposed codes move the logits by
        // their own size): the codes themselves are checked above, and the int8 product's
        // rounding against its derived bound in the kernel's unit tests. With 32-wide layers
        // (16 weight pairs a channel) the weights' pair bound coarsens the steps by about a
        // fifth, and int8 lands 5-6% of the largest logit from f32.
        assert!(
            f32_diff < 0.1 * largest,
            "{name}: {f32_diff} from HF's f32 logits (up to {largest})"
        );
    }
}

fn io_logits(io: &Path) -> Tensor {
    candle_core::safetensors::load(io, &Device::Cpu).unwrap()["logits"].clone()
}

/// The int8 weight the tests below damage.
const INT8_VICTIM: &str = "vit.encoder.layer.0.intermediate.dense.weight";

/// The tiny sharded fixture converted to an int8 folder `good` under `root`, with the bytes
/// of its (single) safetensors file.
fn int8_folder(root: &Path) -> (PathBuf, Vec<u8>) {
    let good = root.join("good");
    convert_ok(&[
        s(&fixture("hf/p8_s32_gelu_sharded")),
        "-o",
        s(&good),
        "--dtype",
        "int8",
    ]);
    let bytes = std::fs::read(good.join("model.safetensors")).unwrap();
    (good, bytes)
}

#[test]
fn int8_folders_with_a_missing_or_misshapen_scale_are_refused_naming_the_tensor() {
    let root = tempfile::tempdir().unwrap();
    let (good, bytes) = int8_folder(root.path());
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = INT8_VICTIM;
    let scale = format!("{victim}_scale");
    let rows = file.tensor(victim).unwrap().shape()[0];
    let wrong_scale: Vec<u8> = vec![0; 4 * (rows - 1)];
    for (case, message) in [
        (
            "missing",
            format!("tensor {victim} is int8 but {scale} (one scale per row) is missing"),
        ),
        (
            "misshapen",
            format!(
                "tensor {scale} is f32 [{}]; the int8 tensor {victim}",
                rows - 1
            ),
        ),
    ] {
        let dir = root.path().join(case);
        std::fs::create_dir(&dir).unwrap();
        for other in ["config.json", "preprocessor_config.json"] {
            std::fs::copy(good.join(other), dir.join(other)).unwrap();
        }
        let mut kept: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
        for (name, view) in file.tensors() {
            if name == scale {
                if case == "misshapen" {
                    let view = safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        vec![rows - 1],
                        &wrong_scale,
                    )
                    .unwrap();
                    kept.push((name, view));
                }
                continue;
            }
            kept.push((name, view));
        }
        safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
        let output = vit(&[
            "classify",
            "-m",
            s(&dir),
            "--device",
            "cpu",
            s(&fixture("preprocess/images/rgba_120x90.png")),
        ]);
        assert_fails(&output, &message);
        assert!(
            stderr(&output).contains("model.safetensors"),
            "{}",
            stderr(&output)
        );
    }
}

/// An int8 folder that would run wrong is refused at load, naming the tensor or the config:
/// a scale that is NaN, infinite or too large for 127 times it; a weight whose dtype is
/// relabelled from I8 (its bytes would run as float weights); a config whose quantization
/// entry is missing or names a method vit cannot run.
#[test]
fn int8_folders_that_would_run_wrong_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let (good, bytes) = int8_folder(root.path());
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = INT8_VICTIM;
    let scale = format!("{victim}_scale");
    let rows = file.tensor(victim).unwrap().shape()[0];
    let image = fixture("preprocess/images/rgba_120x90.png");
    let run = |dir: &Path| vit(&["classify", "-m", s(dir), "--device", "cpu", s(&image)]);
    // Writes `good` with `scale`'s first value replaced, or `victim` relabelled.
    let variant = |case: &str, first_scale: Option<f32>, relabel: Option<safetensors::Dtype>| {
        let dir = root.path().join(case);
        std::fs::create_dir(&dir).unwrap();
        for other in ["config.json", "preprocessor_config.json"] {
            std::fs::copy(good.join(other), dir.join(other)).unwrap();
        }
        let mut scales: Vec<u8> = file.tensor(&scale).unwrap().data().to_vec();
        if let Some(value) = first_scale {
            scales[..4].copy_from_slice(&value.to_le_bytes());
        }
        let mut kept: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
        for (name, view) in file.tensors() {
            let view = match (name == scale, name == victim, relabel) {
                (true, _, _) => {
                    safetensors::tensor::TensorView::new(view.dtype(), vec![rows], &scales).unwrap()
                }
                (_, true, Some(dtype)) => {
                    safetensors::tensor::TensorView::new(dtype, view.shape().to_vec(), view.data())
                        .unwrap()
                }
                _ => view,
            };
            kept.push((name, view));
        }
        safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
        dir
    };
    for (case, value) in [("nan", f32::NAN), ("inf", f32::INFINITY), ("huge", 1e38)] {
        let dir = variant(case, Some(value), None);
        assert_fails(
            &run(&dir),
            &format!("tensor {scale} holds {value} for row 0"),
        );
    }
    for (case, dtype) in [
        ("u8", safetensors::Dtype::U8),
        ("bool", safetensors::Dtype::BOOL),
    ] {
        let dir = variant(case, None, Some(dtype));
        assert_fails(&run(&dir), &format!("tensor {victim} has scales ({scale})"));
    }
    for (case, entry, message) in [
        ("no_entry", None, "has no quantization entry"),
        (
            "int4",
            Some(json!({"quant_method": "int4"})),
            "quantization method \"int4\"",
        ),
        (
            "gptq",
            Some(json!({"quant_method": "gptq"})),
            "quantization method \"gptq\"",
        ),
    ] {
        let dir = variant(case, None, None);
        let mut config = read_json(&dir.join("config.json"));
        match entry {
            Some(entry) => config["quantization"] = entry,
            None => {
                config.as_object_mut().unwrap().remove("quantization");
            }
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        assert_fails(&run(&dir), message);
    }
    assert!(run(&good).status.success());
}

/// An HF DINOv3 folder converts in its own layout (names, config keys, the DINOv3
/// processor): unchanged it gives HF's tokens, in bf16 and int8 it stays close to them.
#[test]
fn dinov3_folders_convert_in_their_layout_to_bf16_and_int8() {
    use vit::model::EmbeddingKind;
    let source = fixture("dinov3/gated_reg_p4_s24");
    let io = candle_core::safetensors::load(source.join("io.safetensors"), &Device::Cpu).unwrap();
    let root = tempfile::tempdir().unwrap();
    // The relative error (of the tokens' norm) each dtype may bring: f32 none beyond the
    // order of sums; bf16 rounds each weight to 2^-9 of itself, int8 each weight to half a
    // step of 1/127 of its row's largest and each activation to half of 1/255 of its row's
    // range, through the six products of two layers and the normalizations between them.
    for (dtype, bound) in [("f32", 1e-5), ("bf16", 0.03), ("int8", 0.05)] {
        let out = root.path().join(dtype);
        let output = convert(&[s(&source), "-o", s(&out), "--dtype", dtype]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{dtype}: {}",
            stderr(&output)
        );
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], "dinov3_vit", "{dtype}");
        assert_eq!(config["key_bias"], false, "{dtype}");
        let preprocessor = std::fs::read_to_string(out.join("preprocessor_config.json")).unwrap();
        assert!(preprocessor.contains("DINOv3ViTImageProcessor"), "{dtype}");
        let loaded = LoadedModel::load(&ModelFiles::local(&out).unwrap(), &common::cpu_f32())
            .unwrap_or_else(|e| panic!("{dtype}: {e:#}"));
        assert!(
            loaded.unused_tensors.is_empty(),
            "{dtype}: {:?}",
            loaded.unused_tensors
        );
        let ours = loaded
            .model
            .embed(&io["pixel_values_1"], EmbeddingKind::Tokens)
            .unwrap();
        let (ours, hf) = (f32_values(&ours), f32_values(&io["tokens_1"]));
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
        let error =
            norm(&mut ours.iter().zip(&hf).map(|(a, b)| a - b)) / norm(&mut hf.iter().copied());
        eprintln!("{dtype}: relative error {error}");
        assert!(
            error < bound,
            "{dtype}: tokens {error} from HF's, relatively"
        );
    }
}
