//! The `vit` binary end to end: formats, exit codes, folders and bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::{deit_tiny, fixture, shared_dir, stderr, stdout, vit, vit_with_env};
use serde_json::Value;

/// A small HF-format model from the fixtures (16x16 patches, 80x80 input, 5 labels).
fn tiny_model() -> String {
    fixture("hf/p16_s80_relu_bin").display().to_string()
}

fn sample_image(name: &str) -> String {
    fixture("preprocess/images")
        .join(name)
        .display()
        .to_string()
}

fn assert_no_panic(output: &std::process::Output) {
    let err = stderr(output);
    assert!(!err.contains("panicked"), "vit panicked: {err}");
}

/// The stderr of a run that must have failed on its input (exit 2) without a panic.
fn data_error(output: &std::process::Output) -> String {
    assert_no_panic(output);
    assert_eq!(output.status.code(), Some(2));
    stderr(output)
}

fn assert_one_line(err: &str) {
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one-line error expected: {err}"
    );
}

#[test]
fn help_lists_every_subcommand() {
    let output = vit(&["--help"]);
    assert!(output.status.success());
    let text = stdout(&output);
    for sub in ["classify", "bench", "convert", "finetune"] {
        assert!(text.contains(sub), "--help lacks {sub}");
    }
    assert!(vit(&["classify", "--help"]).status.success());
}

#[test]
fn usage_errors_exit_2() {
    let output = vit(&["classify"]);
    assert_eq!(output.status.code(), Some(2));
    let output = vit(&[
        "classify",
        "--top-k",
        "0",
        "--model",
        &tiny_model(),
        "x.jpg",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--top-k"), "{}", stderr(&output));
}

#[test]
fn json_output_is_one_parseable_array_in_input_order() {
    let images = [
        sample_image("rgba_120x90.png"),
        sample_image("odd_301x157.jpg"),
    ];
    let output = vit(&[
        "classify",
        "-m",
        &tiny_model(),
        "-k",
        "3",
        "-f",
        "json",
        &images[0],
        &images[1],
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let parsed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let items = parsed.as_array().unwrap();
    assert_eq!(items.len(), 2);
    for (item, image) in items.iter().zip(&images) {
        assert_eq!(item["file"], image.as_str());
        let predictions = item["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 3);
        let scores: Vec<f64> = predictions
            .iter()
            .map(|p| p["score"].as_f64().unwrap())
            .collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "not sorted: {scores:?}"
        );
        assert!(predictions[0]["label"]
            .as_str()
            .unwrap()
            .starts_with("LABEL_"));
    }
}

#[test]
fn top_k_is_capped_at_the_number_of_labels() {
    let output = vit(&[
        "classify",
        "-m",
        &tiny_model(),
        "-k",
        "50",
        "-f",
        "jsonl",
        &sample_image("gray_l_77x59.png"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let line: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(line["predictions"].as_array().unwrap().len(), 5);
}

#[test]
fn csv_and_text_formats() {
    let image = sample_image("palette_100x75.png");
    let output = vit(&[
        "classify",
        "-m",
        &tiny_model(),
        "-k",
        "2",
        "-f",
        "csv",
        &image,
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "file,rank,index,label,score");
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with(&format!("{image},1,")));
    assert!(lines[2].starts_with(&format!("{image},2,")));
    let output = vit(&["classify", "-m", &tiny_model(), "-k", "2", &image]);
    let text = stdout(&output);
    assert_eq!(text.lines().next(), Some(image.as_str()));
    assert_eq!(text.lines().count(), 3);
    assert!(
        stdout(&output).lines().all(|l| !l.starts_with("vit:")),
        "logs leaked to stdout"
    );
}

/// A temporary folder holding broken inputs next to a good one.
fn broken_inputs() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jpg");
    std::fs::copy(fixture("preprocess/images/odd_301x157.jpg"), &good).unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "this is not an image\n").unwrap();
    let truncated = dir.path().join("truncated.jpg");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing.png");
    (dir, vec![good, text, truncated, empty, missing])
}

#[test]
fn bad_inputs_are_reported_and_the_rest_classified() {
    let (_dir, paths) = broken_inputs();
    let args: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let model = tiny_model();
    let mut command = vec!["classify", "-m", &model, "-f", "jsonl"];
    command.extend(args.iter().map(String::as_str));
    let output = vit(&command);
    assert_no_panic(&output);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = common::jsonl(&stdout(&output));
    assert_eq!(lines.len(), 5);
    assert!(lines[0]["predictions"].is_array());
    for (line, path) in lines.iter().zip(&args).skip(1) {
        assert_eq!(line["file"], path.as_str());
        assert!(line["error"].is_string(), "{line}");
    }
    let err = stderr(&output);
    for path in &args[1..] {
        assert!(
            err.contains(&format!("vit: {path}: ")),
            "stderr does not name {path}: {err}"
        );
    }
    assert!(err.contains("no images in this folder"));
    assert!(err.contains("no such file or directory"));
}

/// Copies the tiny safetensors fixture model into a temp folder, letting `edit` change its
/// tensors first.
fn edited_model(
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) -> tempfile::TempDir {
    let source = fixture("hf/p4_s32_gelu");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(source.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn classify_with(model: &Path) -> std::process::Output {
    vit(&[
        "classify",
        "-m",
        &model.display().to_string(),
        &sample_image("rgba_120x90.png"),
    ])
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = edited_model(|t| {
        t.remove("vit.encoder.layer.1.attention.attention.key.weight");
    });
    let output = classify_with(dir.path());
    let err = data_error(&output);
    assert!(
        err.contains("missing tensor vit.encoder.layer.1.attention.attention.key.weight"),
        "{err}"
    );
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_reshaped_tensor_is_named_with_both_shapes() {
    let dir = edited_model(|t| {
        let w = t["classifier.weight"].clone();
        t.insert(
            "classifier.weight".into(),
            w.reshape((w.dim(1).unwrap(), w.dim(0).unwrap())).unwrap(),
        );
    });
    let output = classify_with(dir.path());
    let err = data_error(&output);
    assert!(
        err.contains("tensor classifier.weight has shape [32, 5], the config expects [5, 32]"),
        "{err}"
    );
}

#[test]
fn a_truncated_safetensors_file_is_named() {
    let dir = edited_model(|_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let output = classify_with(dir.path());
    let err = data_error(&output);
    assert!(err.starts_with("vit: "), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert_one_line(&err);
}

#[test]
fn a_missing_model_folder_is_named() {
    let output = vit(&[
        "classify",
        "-m",
        "./no/such/model",
        &sample_image("rgba_120x90.png"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("./no/such/model: no such file or directory"));
}

#[test]
fn the_hub_offline_without_cache_is_a_clear_error() {
    let output = vit(&["classify", &sample_image("rgba_120x90.png")]);
    let err = data_error(&output);
    assert!(
        err.contains("google/vit-base-patch16-224: not in the hub cache"),
        "{err}"
    );
}

#[test]
fn an_unreachable_hub_is_a_clear_error() {
    let output = vit_with_env(
        &[
            "classify",
            "-m",
            "google/vit-base-patch16-224",
            &sample_image("rgba_120x90.png"),
        ],
        &[
            ("HF_HUB_OFFLINE", "0"),
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ],
    );
    let err = data_error(&output);
    assert!(
        err.contains("cannot reach the Hugging Face Hub at http://127.0.0.1:9"),
        "{err}"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn an_unavailable_device_is_a_clear_error() {
    let output = vit(&[
        "classify",
        "--device",
        "cuda",
        "-m",
        &tiny_model(),
        &sample_image("rgba_120x90.png"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("built without CUDA support"));
}

#[test]
fn image_size_interpolates_position_embeddings() {
    let image = sample_image("odd_301x157.jpg");
    let output = vit(&[
        "classify",
        "-m",
        &tiny_model(),
        "--image-size",
        "96",
        "-f",
        "jsonl",
        &image,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = vit(&[
        "classify",
        "-m",
        &tiny_model(),
        "--image-size",
        "90",
        &image,
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("not a positive multiple of the model's patch size 16"));
}

#[test]
fn folders_of_real_photos_classify_with_the_shared_model() {
    let Some(shared) = shared_dir() else { return };
    let model = deit_tiny(&shared).display().to_string();
    let images = shared.join("images").display().to_string();
    let output = vit(&[
        "classify", "-m", &model, "-k", "1", "-f", "jsonl", "-b", "4", &images,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines = common::jsonl(&stdout(&output));
    assert_eq!(lines.len(), 26);
    let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    let cat = lines
        .iter()
        .find(|l| {
            l["file"]
                .as_str()
                .unwrap()
                .ends_with("skimage_chelsea_cat.png")
        })
        .unwrap();
    assert!([281, 282, 285].contains(&cat["predictions"][0]["index"].as_u64().unwrap()));
}

/// `classify --function none` logits of one image, by file, with the environment `envs`.
fn logits_with_env(envs: &[(&str, &str)]) -> (Vec<f64>, String) {
    let model = fixture("hf/p16_s112_gelu_tanh_1000").display().to_string();
    let image = sample_image("odd_301x157.jpg");
    let output = vit_with_env(
        &[
            "classify",
            "--model",
            &model,
            "--function",
            "none",
            "--top-k",
            "1000",
            "--format",
            "json",
            &image,
        ],
        envs,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let mut scores: Vec<(u64, f64)> = rows[0]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].as_u64().unwrap(), p["score"].as_f64().unwrap()))
        .collect();
    scores.sort_by_key(|&(index, _)| index);
    (
        scores.into_iter().map(|(_, s)| s).collect(),
        stderr(&output),
    )
}

#[test]
fn vit_gemm_picks_the_cpu_kernel_and_every_kernel_gives_the_same_logits() {
    let (reference, _) = logits_with_env(&[]);
    assert_eq!(reference.len(), 1000);
    for kernel in vit::kernels::Isa::supported() {
        let (logits, err) = logits_with_env(&[("VIT_GEMM", kernel.name())]);
        assert!(!err.contains("VIT_GEMM"), "{}: {err}", kernel.name());
        let diff = reference
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-4, "{}: logits differ by {diff}", kernel.name());
    }
    let (logits, err) = logits_with_env(&[("VIT_GEMM", "sse9")]);
    assert!(
        err.contains("VIT_GEMM=sse9: expected auto, avx512, avx2 or portable"),
        "{err}"
    );
    assert_eq!(
        logits.len(),
        1000,
        "an unknown kernel name falls back to the fastest"
    );
}

#[test]
fn a_shard_index_naming_a_tensor_its_shard_lacks_is_named() {
    let dir = common::fixture_copy("hf/p8_s32_gelu_sharded");
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["vit.extra.weight"] = "model-00001-of-00004.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let output = classify_with(dir.path());
    let err = data_error(&output);
    assert!(
        err.contains("tensor vit.extra.weight is listed in the index but not in its shard model-00001-of-00004.safetensors"),
        "{err}"
    );
    assert_one_line(&err);
}

#[test]
fn a_cmyk_jpeg_is_read_as_pillow_converts_it() {
    let cmyk = vit::preprocess::load_rgb(&fixture("cmyk/pattern_cmyk.jpg")).unwrap();
    let pillow = vit::preprocess::load_rgb(&fixture("cmyk/pattern_cmyk_as_rgb.png")).unwrap();
    assert_eq!(cmyk.dimensions(), (97, 65));
    let worst = cmyk
        .as_raw()
        .iter()
        .zip(pillow.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert_eq!(worst, 0, "max difference from Pillow's RGB: {worst}");
    let output = vit(&[
        "classify",
        "-m",
        fixture("hf/p4_s32_gelu").to_str().unwrap(),
        fixture("cmyk/pattern_cmyk.jpg").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn an_absurd_layer_count_fails_at_once_naming_the_first_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("hf/p4_s32_gelu");
    for name in ["model.safetensors", "config.json"] {
        std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["num_hidden_layers"] = Value::from(1_000_000_000u64);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let started = std::time::Instant::now();
    let output = vit(&[
        "classify",
        "-m",
        dir.path().to_str().unwrap(),
        fixture("cmyk/pattern_cmyk_as_rgb.png").to_str().unwrap(),
    ]);
    let err = data_error(&output);
    assert_one_line(&err);
    assert!(
        err.contains("missing tensor vit.encoder.layer.2.layernorm_before.weight")
            && err.contains("1000000000 layers"),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
}

/// `--image-backend` picks HF's backend for HF models (torchvision by default), keeps timm's
/// transform for timm checkpoints and refuses torchvision there; the log line says which
/// ran; the two HF backends give the pixel values each HF backend gives (checked in
/// tests/hf_parity.rs), so their scores differ a little here.
#[test]
fn image_backends_are_chosen_logged_and_refused_where_meaningless() {
    let image = sample_image("odd_301x157.jpg");
    let tiny_model_path = tiny_model();
    let scores = |args: &[&str]| -> (Vec<f64>, String) {
        let mut all = vec!["classify", "-m", &tiny_model_path, "-f", "json", &image];
        all.extend(args);
        let output = vit(&all);
        assert!(output.status.success(), "{}", stderr(&output));
        let results: Value = serde_json::from_str(&stdout(&output)).unwrap();
        let scores = results[0]["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["score"].as_f64().unwrap())
            .collect();
        (scores, stderr(&output))
    };
    let (default, log) = scores(&[]);
    assert!(
        log.contains("images preprocessed as HF's torchvision backend"),
        "{log}"
    );
    let (torchvision, _) = scores(&["--image-backend", "torchvision"]);
    assert_eq!(default, torchvision);
    let (pil, log) = scores(&["--image-backend", "pil"]);
    assert!(
        log.contains("images preprocessed as HF's PIL backend"),
        "{log}"
    );
    assert_ne!(default, pil, "the backends resize differently");

    let timm = fixture("timm_family/vit_token").display().to_string();
    let output = vit(&["classify", "-m", &timm, &image, "--image-backend", "pil"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("timm's transform"),
        "{}",
        stderr(&output)
    );
    let err = data_error(&vit(&[
        "classify",
        "-m",
        &timm,
        &image,
        "--image-backend",
        "torchvision",
    ]));
    assert!(
        err.contains("--image-backend torchvision") && err.contains("timm"),
        "{err}"
    );
    assert_one_line(&err);
    let output = vit(&[
        "classify",
        "-m",
        &tiny_model_path,
        &image,
        "--image-backend",
        "x",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

/// A JPEG that makes libjpeg (through the `mozjpeg` crate) panic costs its own line, and
/// the pictures beside it in the folder are still classified (exit 1, some inputs failed),
/// a tiled, planar TIFF (on which the `tiff` crate's own reader panics) among them.
#[test]
fn a_decoder_panic_costs_one_input_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("preprocess/images/odd_301x157.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let bad = dir.path().join("b.jpg");
    std::fs::copy(fixture("bad_images/undefined_quant_table.jpg"), &bad).unwrap();
    std::fs::copy(
        fixture("tiff/tiled_planar_48x40.tif"),
        dir.path().join("c.tif"),
    )
    .unwrap();
    let model = tiny_model();
    let output = vit(&[
        "classify",
        "-m",
        &model,
        "-f",
        "jsonl",
        dir.path().to_str().unwrap(),
    ]);
    assert_no_panic(&output);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = common::jsonl(&stdout(&output));
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["predictions"].is_array() && lines[2]["predictions"].is_array());
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);
    let err = stderr(&output);
    let line = format!("vit: {}: cannot decode JPEG: ", bad.display());
    assert!(err.contains(&line), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");

    let out = dir.path().join("e.npy");
    let output = vit(&[
        "embed",
        "-m",
        &model,
        dir.path().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_no_panic(&output);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let list = std::fs::read_to_string(format!("{}.files.txt", out.display())).unwrap();
    assert_eq!(
        list.lines().filter(|l| !l.starts_with('#')).count(),
        2,
        "{list}"
    );
}

/// `vit classify DIR | head -1`: once the reader has gone, vit stops quietly with exit 0
/// (as ripgrep does), whether stderr goes to a terminal or into the same closed pipe.
#[test]
fn a_closed_pipe_ends_the_run_quietly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::copy(
            fixture("preprocess/images/odd_301x157.jpg"),
            dir.path().join(format!("{i:02}.jpg")),
        )
        .unwrap();
    }
    let model = tiny_model();
    let args = [
        "classify",
        "-m",
        &model,
        "-f",
        "jsonl",
        dir.path().to_str().unwrap(),
    ];
    // stdout into a pipe whose reader is gone before the first result.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = common::vit_command(&args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );
    // stderr into the same closed pipe: the log lines fail too.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = common::vit_command(&args)
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A PNG whose header claims 100000 x 100000 pixels is refused before its pixels are
/// allocated, naming the size and the limit, and `--max-image-pixels` moves the limit.
#[test]
fn an_image_claiming_too_many_pixels_is_refused_before_decoding() {
    let png = common::png_bomb();
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, &png).unwrap();
    let model = tiny_model();
    let output = vit(&["classify", "-m", &model, bomb.to_str().unwrap()]);
    assert_no_panic(&output);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("100000x100000 is 10000000000 pixels, more than the limit of 89478485"),
        "{err}"
    );
    let small = sample_image("odd_301x157.jpg");
    let output = vit(&[
        "classify",
        "-m",
        &model,
        &small,
        "--max-image-pixels",
        "40000",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("301x157 is 47257 pixels"),
        "{}",
        stderr(&output)
    );
}

/// `cat photo.jpg | vit classify -` classifies the image on stdin, as the same file does.
#[test]
fn an_image_on_stdin_is_classified_as_its_file_is() {
    use std::io::Write;
    let image = sample_image("odd_301x157.jpg");
    let model = tiny_model();
    let from_file = vit(&["classify", "-m", &model, "-f", "json", &image]);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let mut child = common::vit_command(&["classify", "-m", &model, "-f", "json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&image).unwrap())
        .unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    let predictions = |output: &std::process::Output| {
        let results: Value = serde_json::from_str(&stdout(output)).unwrap();
        results[0]["predictions"].clone()
    };
    assert_eq!(predictions(&from_stdin), predictions(&from_file));
    let results: Value = serde_json::from_str(&stdout(&from_stdin)).unwrap();
    assert_eq!(results[0]["file"], "-");
    // stdin is read once.
    let err = data_error(&vit(&["classify", "-m", &model, "-", "-"]));
    assert!(err.contains("stdin can be read once"), "{err}");
}

/// Completions for the three shells name every subcommand, and the man pages are written.
#[test]
fn completions_and_man_pages_come_from_the_options() {
    for shell in ["bash", "zsh", "fish"] {
        let output = vit(&["completions", shell]);
        assert!(output.status.success(), "{}", stderr(&output));
        let script = stdout(&output);
        for word in ["classify", "embed", "image-backend", "max-image-pixels"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let output = vit(&["man-pages", dir.path().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let page = std::fs::read_to_string(dir.path().join("vit-classify.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("image\\-backend"), "{page}");
}

/// Sizes that would exhaust memory are refused before anything is allocated: an
/// `--image-size` whose forward pass needs more memory than the machine has (250,001
/// tokens on a patch-8 model: hundreds of GB of attention scores), and a preprocessor
/// config whose size is past Pillow's pixel limit.
#[test]
fn sizes_that_would_exhaust_memory_are_refused_up_front() {
    let model = fixture("hf/p8_s32_gelu_sharded").display().to_string();
    let image = sample_image("odd_301x157.jpg");
    let err = data_error(&vit(&[
        "classify",
        "-m",
        &model,
        "--image-size",
        "4000",
        &image,
    ]));
    assert!(
        err.contains("--image-size 4000: a forward pass over 250001 tokens needs about")
            && err.contains("GB available"),
        "{err}"
    );
    let dir = common::fixture_copy("hf/p8_s32_gelu_sharded");
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"size": {"height": 100000, "width": 100000}}"#,
    )
    .unwrap();
    let err = data_error(&vit(&[
        "classify",
        "-m",
        dir.path().to_str().unwrap(),
        &image,
    ]));
    assert!(
        err.contains("preprocessor_config.json")
            && err.contains("size 100000x100000 is more than 89478485 pixels"),
        "{err}"
    );
    assert_one_line(&err);
}

/// Config values that would give NaN or silently different numbers are refused at load,
/// naming the field: a negative or huge layer-norm eps, a zero image_std, and text_config
/// values of the wrong kind (read as missing, and so as defaults, before).
#[test]
fn configs_that_would_give_nan_or_defaults_are_refused() {
    let image = sample_image("odd_301x157.jpg");
    let edited = |source: &str, file: &str, edit: &dyn Fn(&mut Value)| {
        let dir = common::fixture_copy(source);
        let path = dir.path().join(file);
        let mut json: Value = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap(),
            Err(_) => serde_json::json!({}),
        };
        edit(&mut json);
        std::fs::write(&path, json.to_string()).unwrap();
        dir
    };
    for (eps, shown) in [(-1.0, "-1"), (1e30, "1000000000000000000000000000000")] {
        let dir = edited("hf/p8_s32_gelu_sharded", "config.json", &|c| {
            c["layer_norm_eps"] = eps.into()
        });
        let err = data_error(&vit(&[
            "classify",
            "-m",
            dir.path().to_str().unwrap(),
            &image,
        ]));
        assert!(
            err.contains(&format!("layer_norm_eps {shown} is not in (0, 1)")),
            "{err}"
        );
    }
    let dir = edited("hf/p8_s32_gelu_sharded", "preprocessor_config.json", &|c| {
        c["image_std"] = serde_json::json!([0.5, 0.0, 0.5])
    });
    let err = data_error(&vit(&[
        "classify",
        "-m",
        dir.path().to_str().unwrap(),
        &image,
    ]));
    assert!(
        err.contains("image_std 0 is not a non-zero number"),
        "{err}"
    );
    for value in [
        serde_json::json!(-1),
        serde_json::json!(2.5),
        serde_json::json!(null),
    ] {
        let dir = edited("clip/clip_p32_s64", "config.json", &|c| {
            c["text_config"]["num_attention_heads"] = value.clone()
        });
        let output = vit(&["embed", "-m", dir.path().to_str().unwrap(), "--text", "cat"]);
        let err = data_error(&output);
        assert!(
            err.contains("text_config: num_attention_heads") && err.contains("not a whole number"),
            "{value}: {err}"
        );
    }
}

/// Whole-file reads are capped: `/dev/zero` as a file list, a label file or a text file is
/// a one-line error about its first line, not memory exhausted.
#[cfg(target_os = "linux")]
#[test]
fn endless_list_and_text_files_are_refused() {
    let model = tiny_model();
    let image = sample_image("odd_301x157.jpg");
    let clip = fixture("clip/clip_p32_s64").display().to_string();
    for args in [
        vec!["classify", "-m", &model, "--files-from", "/dev/zero"],
        vec![
            "classify",
            "-m",
            &clip,
            "--labels-file",
            "/dev/zero",
            &image,
        ],
        vec!["embed", "-m", &clip, "--text-file", "/dev/zero"],
    ] {
        let err = data_error(&vit(&args));
        assert!(
            err.contains("/dev/zero: line 1 of the") && err.contains("65536 bytes"),
            "{err}"
        );
        assert_one_line(&err);
    }
}
