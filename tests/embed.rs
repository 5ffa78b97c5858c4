//! `vit embed` end to end: the real binary on the shared DINOv2 (against HF transformers'
//! embeddings) and on the family fixtures; output formats, sharding, bad input.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{fixture, jsonl, max_abs_diff, shared_dir, stderr, stdout, vit, vit_command};
use serde_json::Value;

/// A small DINOv2 backbone of the family fixtures.
fn small_backbone() -> String {
    fixture("family/dinov2_model_p7_s35_at28")
        .display()
        .to_string()
}

/// Synthetic images of the preprocessing fixtures (RGBA, palette, gray, odd JPEG, EXIF).
fn images() -> String {
    fixture("preprocess/images").display().to_string()
}

/// Rows of an `.npy` written by `vit embed` (float32, C order): its shape and values.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape_text = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = shape_text[..shape_text.find(')').unwrap()]
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let values: Vec<f32> = bytes[10 + header_len..]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

/// The shared DINOv2 on every photo, on both of HF's image backends: torchvision (the
/// default) and PIL (`--image-backend pil`).
#[test]
fn shared_dinov2_embeddings_match_hf_transformers_on_every_photo() {
    let Some(shared) = shared_dir() else { return };
    let model = shared.join("models/dinov2-small-imgfocus");
    let reference = candle_core::safetensors::load(
        fixture("shared_dinov2/hf_embeddings.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images = shared.join("images");
    for (backend, suffix, logged) in [
        (None, "_torchvision", "HF's torchvision backend"),
        (Some("pil"), "", "HF's PIL backend"),
    ] {
        for (pool, format) in [("cls", "npy"), ("mean", "safetensors")] {
            let out = dir.path().join(format!("{pool}{suffix}.{format}"));
            let mut args = vec![
                "embed",
                "-m",
                model.to_str().unwrap(),
                images.to_str().unwrap(),
                "--pool",
                pool,
                "-o",
                out.to_str().unwrap(),
            ];
            args.extend(
                backend
                    .map(|b| ["--image-backend", b])
                    .into_iter()
                    .flatten(),
            );
            let output = vit(&args);
            assert!(output.status.success(), "{}", stderr(&output));
            assert!(stdout(&output).is_empty(), "results go to the file");
            assert!(stderr(&output).contains(logged), "{}", stderr(&output));
            let (shape, values, files) = match format {
                "npy" => {
                    let (shape, values) = read_npy(&out);
                    let list =
                        std::fs::read_to_string(format!("{}.files.txt", out.display())).unwrap();
                    let files: Vec<String> = list.lines().map(str::to_string).collect();
                    (shape, values, files)
                }
                _ => {
                    let bytes = std::fs::read(&out).unwrap();
                    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
                    let meta = metadata.metadata().clone().unwrap();
                    let files: Vec<String> = serde_json::from_str(&meta["files"]).unwrap();
                    assert_eq!(meta["failed"], "[]");
                    let tensors =
                        candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
                    let t = &tensors["embeddings"];
                    (t.dims().to_vec(), common::f32_values(t), files)
                }
            };
            assert_eq!(shape, [26, 384], "{pool}");
            assert_eq!(files.len(), 26);
            let mut worst = 0f32;
            for (row, file) in values.chunks(384).zip(&files) {
                let name = Path::new(file).file_name().unwrap().to_str().unwrap();
                let expected = common::f32_values(&reference[&format!("{pool}{suffix}.{name}")]);
                let diff = max_abs_diff(row, &expected);
                assert!(
                    diff < 1e-4,
                    "{pool}{suffix} {name}: max |diff| {diff} vs HF"
                );
                worst = worst.max(diff);
            }
            eprintln!("{pool}{suffix}: worst |diff| vs HF {worst:.2e}");
        }
    }
}

#[test]
fn jsonl_rows_stream_in_input_order_and_normalize_to_unit_length() {
    let output = vit(&["embed", "-m", &small_backbone(), &images(), "--normalize"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rows = jsonl(&stdout(&output));
    let files: Vec<&str> = rows.iter().map(|r| r["file"].as_str().unwrap()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    assert!(rows.len() >= 5);
    for row in &rows {
        let embedding: Vec<f64> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(embedding.len(), 32);
        let norm: f64 = embedding.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
}

#[test]
fn csv_and_token_outputs_have_their_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("e.csv");
    let output = vit(&[
        "embed",
        "-m",
        &small_backbone(),
        &images(),
        "-o",
        csv.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("file,0,1,2,"));
    assert!(lines.all(|l| l.split(',').count() == 33));
    let tokens = dir.path().join("t.npy");
    let output = vit(&[
        "embed",
        "-m",
        &small_backbone(),
        &images(),
        "--pool",
        "tokens",
        "-o",
        tokens.to_str().unwrap(),
        "--image-size",
        "28",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (shape, _) = read_npy(&tokens);
    assert_eq!(&shape[1..], [1 + 16, 32]);
}

#[test]
fn failed_inputs_are_reported_and_left_out_of_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"not a jpeg").unwrap();
    let good = fixture("preprocess/images/odd_301x157.jpg");
    let out = dir.path().join("e.npy");
    let output = vit(&[
        "embed",
        "-m",
        &small_backbone(),
        good.to_str().unwrap(),
        broken.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("broken.jpg"));
    let (shape, _) = read_npy(&out);
    assert_eq!(shape, [1, 32]);
    let list = std::fs::read_to_string(format!("{}.files.txt", out.display())).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], good.to_str().unwrap());
    assert!(lines[1].starts_with("# failed: ") && lines[1].contains("broken.jpg"));
    let output = vit(&["embed", "-m", &small_backbone(), broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let rows = jsonl(&stdout(&output));
    assert!(rows[0]["error"].is_string());
}

#[test]
fn outputs_are_never_overwritten_without_force_and_bad_plans_fail_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.npy");
    std::fs::write(&out, b"keep").unwrap();
    let (model, inputs) = (small_backbone(), images());
    let run = |extra: &[&str]| {
        let mut args = vec!["embed", "-m", &model, &inputs];
        args.extend_from_slice(extra);
        vit(&args)
    };
    for (extra, message) in [
        (
            vec!["-o", out.to_str().unwrap()],
            "already exists (use --force",
        ),
        (vec!["--format", "npy"], "write a file: give one with -o"),
        (vec!["--pool", "tokens"], "--pool tokens needs"),
        (vec!["-o", "/tmp/x.bin"], "cannot tell the format"),
    ] {
        let output = run(&extra);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(message), "{extra:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let output = run(&["--shard", "3/3"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("the shard index is zero-based"));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    let output = run(&["-o", out.to_str().unwrap(), "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read_npy(&out).0[1], 32);
}

/// Rows of a jsonl run by file.
fn rows_by_file(output: &std::process::Output) -> HashMap<String, Value> {
    assert!(output.status.success(), "{}", stderr(output));
    jsonl(&stdout(output))
        .into_iter()
        .map(|r| {
            (
                r["file"].as_str().unwrap().to_string(),
                r["embedding"].clone(),
            )
        })
        .collect()
}

#[test]
fn three_shards_from_a_file_list_on_stdin_cover_one_unsharded_run() {
    let files: Vec<PathBuf> = std::fs::read_dir(fixture("preprocess/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let list: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
    let whole = rows_by_file(&vit(&["embed", "-m", &small_backbone(), &images()]));
    let mut union = HashMap::new();
    for index in 0..3 {
        let shard = format!("{index}/3");
        let mut child = vit_command(&[
            "embed",
            "-m",
            &small_backbone(),
            "--files-from",
            "-",
            "--shard",
            &shard,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        let rows = rows_by_file(&child.wait_with_output().unwrap());
        assert!(
            !rows.is_empty() && rows.len() < whole.len(),
            "shard {shard}"
        );
        for (file, row) in rows {
            assert!(union.insert(file, row).is_none(), "a file in two shards");
        }
    }
    assert_eq!(union, whole);
}

#[test]
fn classify_on_a_backbone_points_to_embed() {
    let output = vit(&["classify", "-m", &small_backbone(), &images()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no classification head") && err.contains("vit embed"),
        "{err}"
    );
}
