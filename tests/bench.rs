//! `vit bench` through the real binary: the JSON rows, the table, end-to-end mode and the
//! refusal of arguments it cannot honour. (Speed itself is measured by `make bench-compare`,
//! not by tests.)

mod common;

use common::{deit_tiny, shared_dir, stderr, stdout, vit};
use serde_json::Value;

/// Quick runs: one timed iteration per row, on the CPU.
const QUICK: [&str; 6] = ["bench", "--device", "cpu", "--warmup", "0", "--iters=1"];

/// A quick run of the smallest preset, unless `extra` names a model of its own.
fn bench(extra: &[&str]) -> std::process::Output {
    let names_model = extra
        .iter()
        .any(|arg| *arg == "--preset" || *arg == "--model");
    let preset: &[&str] = if names_model {
        &[]
    } else {
        &["--preset", "deit-tiny-patch16-224"]
    };
    let args: Vec<&str> = QUICK.iter().chain(preset).chain(extra).copied().collect();
    vit(&args)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

#[test]
fn json_rows_parse_and_hold_every_figure() {
    let output = bench(&["--batch-sizes", "1,2", "--peak", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    assert_eq!(lines.len(), 4, "two peak lines and one row per batch size");
    for (line, size) in lines.iter().zip([2048, 4096]) {
        let peak = &line["matmul_peak"];
        assert_eq!(peak["dtype"], "f32");
        assert_eq!(peak["size"], size);
        assert!(peak["gflops"].as_f64().unwrap() > 0.0);
        assert!(peak["kernel"].as_str().unwrap().starts_with("vit "));
    }

    for (row, batch) in lines[2..].iter().zip([1, 2]) {
        assert_eq!(row["model"], "deit-tiny-patch16-224");
        assert_eq!(row["params"], 5_717_416);
        assert_eq!(row["device"], "cpu");
        assert_eq!(row["dtype"], "f32");
        assert_eq!(row["attn"], "standard");
        assert_eq!(row["batch"], batch);
        assert_eq!(row["image_size"], 224);
        let gflop = row["gflop_per_image"].as_f64().unwrap();
        // 1.25 G multiply-adds, counted as two FLOPs each (as timm and fvcore report MACs).
        assert!(
            (gflop - 2.507).abs() < 0.001,
            "DeiT-Tiny costs 2.507 GFLOP, got {gflop}"
        );
        let latency = &row["latency_ms"];
        let p50 = latency["p50"].as_f64().unwrap();
        assert!(p50 > 0.0);
        assert!(p50 <= latency["p90"].as_f64().unwrap());
        assert!(latency["p90"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
        // One iteration: throughput, achieved GFLOP/s and latency describe the same sample.
        let images_per_sec = row["images_per_sec"].as_f64().unwrap();
        let mean_ms = latency["mean"].as_f64().unwrap();
        assert!((images_per_sec * mean_ms / 1e3 - batch as f64).abs() < 1e-6);
        let gflops = row["gflops"].as_f64().unwrap();
        assert!((gflops - images_per_sec * gflop).abs() < 1e-6 * gflops);
        assert!(row["peak_memory_bytes"].as_u64().unwrap() > 10_000_000);
        assert!(row["load_seconds"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn layer_products_follow_the_rows_one_per_dense_layer_and_batch() {
    let output = bench(&["--batch-sizes", "1,2", "--layers", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    assert_eq!(
        lines.len(),
        2 + 2 * 4,
        "two rows, then four layers per batch size"
    );
    assert!(lines[..2].iter().all(|line| line["batch"].is_u64()));
    // DeiT-Tiny: 197 tokens an image, 192 wide, MLP 768.
    let expected = [
        ("qkv", 192, 576),
        ("attention output", 192, 192),
        ("mlp in", 192, 768),
        ("mlp out", 768, 192),
    ];
    for (line, (batch, (layer, k, n))) in lines[2..].iter().zip(
        [1u64, 2]
            .into_iter()
            .flat_map(|b| expected.into_iter().map(move |e| (b, e))),
    ) {
        let product = &line["layer_product"];
        assert_eq!(product["batch"], batch, "{line}");
        assert_eq!(product["layer"], layer, "{line}");
        assert_eq!(product["rows"], 197 * batch, "{line}");
        assert_eq!(
            (product["k"].as_u64(), product["n"].as_u64()),
            (Some(k), Some(n))
        );
        assert!(product["gflops"].as_f64().unwrap() > 0.0, "{line}");
    }
}

#[test]
fn int8_rows_and_peaks_sit_beside_f32() {
    let output = bench(&[
        "--dtype",
        "f32,int8",
        "--batch-sizes",
        "2",
        "--peak",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    assert_eq!(
        lines.len(),
        4 + 2,
        "two peaks per dtype, then a row per dtype"
    );
    let peaks: Vec<(&str, &str)> = lines[..4]
        .iter()
        .map(|l| {
            let peak = &l["matmul_peak"];
            (
                peak["dtype"].as_str().unwrap(),
                peak["kernel"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!((peaks[0].0, peaks[2].0), ("f32", "int8"), "{peaks:?}");
    assert!(peaks[2].1.starts_with("vit int8 "), "{peaks:?}");
    let dtypes: Vec<&str> = lines[4..]
        .iter()
        .map(|r| r["dtype"].as_str().unwrap())
        .collect();
    assert_eq!(dtypes, ["f32", "int8"]);
    assert!(lines[5]["images_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn dtypes_and_batches_give_one_table() {
    let output = bench(&["--dtype", "f32,bf16", "--batch-sizes", "1,2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("deit-tiny-patch16-224: 5.7M params, 2.51 GFLOP per 224x224 image")
    );
    assert!(lines[1].split_whitespace().eq([
        "device", "dtype", "attn", "batch", "img/s", "p50", "ms", "p90", "ms", "p99", "ms",
        "GFLOP/s", "peak", "MB", "load", "s"
    ]));
    let rows: Vec<(String, String)> = lines[2..]
        .iter()
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            (cells[1].to_string(), cells[3].to_string())
        })
        .collect();
    let expected = [("f32", "1"), ("f32", "2"), ("bf16", "1"), ("bf16", "2")];
    assert_eq!(rows.len(), expected.len(), "{text}");
    for ((dtype, batch), (want_dtype, want_batch)) in rows.iter().zip(expected) {
        assert_eq!((dtype.as_str(), batch.as_str()), (want_dtype, want_batch));
    }
}

#[test]
fn end_to_end_mode_times_real_photos_by_stage() {
    let Some(shared) = shared_dir() else { return };
    let model = deit_tiny(&shared);
    let images = shared.join("images");
    let output = bench(&[
        "--model",
        model.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--batch-sizes",
        "4",
        "-f",
        "json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rows = json_lines(&stdout(&output));
    assert_eq!(rows.len(), 1);
    let stages = &rows[0]["stage_shares"];
    let shares: Vec<f64> = ["decode", "preprocess", "forward"]
        .iter()
        .map(|stage| {
            stages[stage]
                .as_f64()
                .unwrap_or_else(|| panic!("{stage}: {stages}"))
        })
        .collect();
    assert!(shares.iter().all(|&s| s > 0.0 && s < 1.0), "{stages}");
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{stages}");
}

#[test]
fn arguments_it_cannot_honour_are_refused_with_exit_2() {
    let cases: [(&[&str], &str); 7] = [
        (&["--batch-sizes", "0"], "--batch-sizes must be positive"),
        (&["--threads", "0"], "--threads must be at least 1"),
        (
            &["--preset", "vit-gigantic"],
            "unknown preset \"vit-gigantic\" (one of: vit-tiny-patch16-224",
        ),
        (&["--attn", "flash"], "--attn flash"),
        (&["--dtype", "f64"], "f64"),
        (&["--images", "/nonexistent/photos"], "/nonexistent/photos"),
        (
            &["--layers", "--dtype", "bf16"],
            "--layers times the CPU engine's f32 products; this run is bf16 on cpu",
        ),
    ];
    for (extra, message) in cases {
        let output = bench(extra);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(message), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
        assert!(stdout(&output).is_empty(), "{extra:?}: nothing on stdout");
    }
}
