//! `vit explain` as users run it: pictures and maps written, their numbers equal to the
//! attention probabilities the same run keeps, captions equal to `vit classify`, bad inputs and
//! existing outputs handled. HF parity of the probabilities and maps: tests/attention_parity.rs.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::{f32_values, fixture, jsonl, max_abs_diff, stderr, stdout, vit};
use vit::explain::{ImageAttention, Query};

/// The committed synthetic images (odd sizes, gray, palette, RGBA, EXIF orientation).
fn images() -> String {
    fixture("preprocess/images").display().to_string()
}

fn model(relative: &str) -> String {
    fixture(relative).display().to_string()
}

/// The DeiT fixture at its own 32 px (it has no preprocessor config: HF's default is 224).
const DEIT_SIZE: [&str; 2] = ["--image-size", "32"];

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().clone().unwrap_or_default()
}

/// Image `index` of the `attentions` `(images, layers, heads, tokens, tokens)` of a maps file.
fn image_attention(values: &[f32], dims: &[usize], index: usize) -> Vec<Vec<f32>> {
    let (layers, heads, tokens) = (dims[1], dims[2], dims[3]);
    let square = heads * tokens * tokens;
    (0..layers)
        .map(|layer| {
            let start = (index * layers + layer) * square;
            values[start..start + square].to_vec()
        })
        .collect()
}

#[test]
fn maps_are_the_maps_of_the_attentions_the_run_keeps() {
    // DeiT: two prefix tokens (class, distillation), 2 layers of 4 heads.
    let out = tempfile::tempdir().unwrap();
    let maps = out.path().join("maps.safetensors");
    let deit = model("family/deit_p8_s32");
    for (method, layer, discard) in [("attention", "0", "0"), ("rollout", "1", "0.5")] {
        let run = vit(&[
            "explain",
            "-m",
            &deit,
            &images(),
            "--method",
            method,
            "--layer",
            layer,
            "--discard-ratio",
            discard,
            "--maps",
            maps.to_str().unwrap(),
            "--all-attentions",
            "--force",
            DEIT_SIZE[0],
            DEIT_SIZE[1],
        ]);
        assert!(run.status.success(), "{method}: {}", stderr(&run));
        let file = load(&maps);
        let attentions = &file["attentions"];
        let dims = attentions.dims().to_vec();
        let images = dims[0];
        assert_eq!(images, 6, "one row per image");
        assert_eq!(&dims[1..3], &[2, 4], "layers, heads");
        assert_eq!(
            file["maps"].dims(),
            &[images, 4, 4],
            "{method}: the 32 px grid of 8 px patches"
        );
        let values = f32_values(attentions);
        let maps_values = f32_values(&file["maps"]);
        for image in 0..images {
            let layers = image_attention(&values, &dims, image);
            let attention = ImageAttention {
                layers: layers.iter().map(Vec::as_slice).collect(),
                probe: None,
                heads: dims[2],
                tokens: dims[3],
                prefix: 2,
            };
            let expected = match method {
                // By hand: the class token's row over the patches, mean over heads.
                "attention" => (2..dims[3])
                    .map(|column| {
                        (0..dims[2])
                            .map(|head| layers[0][(head * dims[3]) * dims[3] + column])
                            .sum::<f32>()
                            / dims[2] as f32
                    })
                    .collect(),
                _ => attention.rollout(1, Query::Token(0), 0.5).unwrap(),
            };
            let ours = &maps_values[image * 16..(image + 1) * 16];
            assert!(
                max_abs_diff(ours, &expected) < 1e-6,
                "{method}: image {image}"
            );
        }
        let meta = metadata(&maps);
        assert_eq!(meta["method"], method);
        assert_eq!(meta["layer"], layer);
        let files: Vec<String> = serde_json::from_str(&meta["files"]).unwrap();
        assert_eq!(files.len(), images);
        assert!(files[0].ends_with("exif_orient6_96x64.jpg"), "{files:?}");
    }
}

#[test]
fn pictures_show_the_maps_with_the_label_classify_gives() {
    let out = tempfile::tempdir().unwrap();
    let pictures = out.path().join("pictures");
    let deit = model("family/deit_p8_s32");
    let run = vit(&[
        "explain",
        "-m",
        &deit,
        &images(),
        "--method",
        "class-heads",
        "-o",
        pictures.to_str().unwrap(),
        "-f",
        "jsonl",
        DEIT_SIZE[0],
        DEIT_SIZE[1],
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let classify = vit(&[
        "classify",
        "-m",
        &deit,
        &images(),
        "-k",
        "1",
        "-f",
        "jsonl",
        DEIT_SIZE[0],
        DEIT_SIZE[1],
    ]);
    assert!(classify.status.success(), "{}", stderr(&classify));
    let explained = jsonl(&stdout(&run));
    let classified = jsonl(&stdout(&classify));
    assert_eq!(explained.len(), 6);
    for (ours, theirs) in explained.iter().zip(&classified) {
        assert_eq!(ours["file"], theirs["file"]);
        let top = &theirs["predictions"][0];
        assert_eq!(ours["label"], top["label"], "{ours}");
        let diff = (ours["score"].as_f64().unwrap() - top["score"].as_f64().unwrap()).abs();
        assert!(diff < 1e-5, "{ours} vs {top}");
        let png = Path::new(ours["png"].as_str().unwrap());
        let picture = image::open(png).unwrap().to_rgb8();
        // Four heads' panels of the 32 px view, two by two, titled, with a caption below.
        assert!(
            picture.width() >= 64 && picture.height() > 64,
            "{png:?}: {:?}",
            picture.dimensions()
        );
        let peak = ours["peak"].as_array().unwrap();
        assert!(peak.iter().all(|v| v.as_u64().unwrap() < 4), "{ours}");
    }
    // One picture per input, named after it.
    let names: Vec<String> = std::fs::read_dir(&pictures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
}

#[test]
fn the_picture_is_the_photo_the_model_saw_under_the_map() {
    // With alpha 0 the picture above its caption is the preprocessed photo itself: the same
    // for every method.
    let out = tempfile::tempdir().unwrap();
    let deit = model("family/deit_p8_s32");
    let photo = fixture("preprocess/images/rgba_120x90.png");
    let mut tops = Vec::new();
    for (method, alpha) in [("rollout", "0"), ("attention", "0"), ("attention", "1")] {
        let dir = out.path().join(format!("{method}-{alpha}"));
        let run = vit(&[
            "explain",
            "-m",
            &deit,
            photo.to_str().unwrap(),
            "--method",
            method,
            "--alpha",
            alpha,
            "-o",
            dir.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        let picture = image::open(dir.join("rgba_120x90.png")).unwrap().to_rgb8();
        let top = image::imageops::crop_imm(&picture, 0, 0, 32, 32).to_image();
        tops.push(top);
    }
    assert_eq!(
        tops[0], tops[1],
        "alpha 0 shows the photo whatever the method"
    );
    assert_ne!(tops[1], tops[2], "alpha 1 shows the map");
}

#[test]
fn a_bad_image_is_its_own_error_and_the_others_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    std::fs::copy(
        fixture("preprocess/images/palette_100x75.png"),
        inputs.join("good.png"),
    )
    .unwrap();
    std::fs::write(inputs.join("broken.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let pictures = dir.path().join("out");
    let maps = dir.path().join("maps.safetensors");
    let run = vit(&[
        "explain",
        "-m",
        &model("family/deit_p8_s32"),
        inputs.to_str().unwrap(),
        "-o",
        pictures.to_str().unwrap(),
        "--maps",
        maps.to_str().unwrap(),
        DEIT_SIZE[0],
        DEIT_SIZE[1],
    ]);
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    let err = stderr(&run);
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(pictures.join("good.png").is_file());
    assert!(!pictures.join("broken.png").exists());
    assert_eq!(load(&maps)["maps"].dims(), &[1, 4, 4]);
    let failed: Vec<serde_json::Value> = serde_json::from_str(&metadata(&maps)["failed"]).unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["file"].as_str().unwrap().ends_with("broken.jpg"));
}

#[test]
fn existing_outputs_need_force_and_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let pictures = dir.path().join("out");
    std::fs::create_dir(&pictures).unwrap();
    std::fs::write(pictures.join("gray_l_77x59.png"), b"keep").unwrap();
    let deit = model("family/deit_p8_s32");
    let images = images();
    let base = ["explain", "-m", &deit, &images, DEIT_SIZE[0], DEIT_SIZE[1]];
    let mut args = base.to_vec();
    args.extend(["-o", pictures.to_str().unwrap()]);
    let run = vit(&args);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stderr(&run).contains("gray_l_77x59.png: already exists (use --force"),
        "{}",
        stderr(&run)
    );
    assert_eq!(
        std::fs::read_dir(&pictures).unwrap().count(),
        1,
        "nothing written"
    );
    assert_eq!(
        std::fs::read(pictures.join("gray_l_77x59.png")).unwrap(),
        b"keep"
    );

    let maps = dir.path().join("maps.safetensors");
    std::fs::write(&maps, b"keep").unwrap();
    let mut args = base.to_vec();
    args.extend(["--maps", maps.to_str().unwrap()]);
    assert_eq!(vit(&args).status.code(), Some(2));
    assert_eq!(std::fs::read(&maps).unwrap(), b"keep");
    args.push("--force");
    let run = vit(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(load(&maps)["maps"].dims(), &[6, 4, 4]);
}

#[test]
fn siglip_maps_come_from_its_attention_pool_and_registers_have_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps.safetensors");
    let photo = fixture("preprocess/images/odd_301x157.jpg");
    let photo = photo.to_str().unwrap();
    let siglip = model("siglip/vision_siglip_p16_s48");
    let run = vit(&[
        "explain",
        "-m",
        &siglip,
        photo,
        "--method",
        "class-heads",
        "--maps",
        maps.to_str().unwrap(),
        "--all-attentions",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let file = load(&maps);
    assert_eq!(
        file["maps"].dims(),
        &[1, 4, 3, 3],
        "4 heads of the probe on a 3x3 grid"
    );
    assert_eq!(file["pool_attentions"].dims(), &[1, 4, 9]);
    // Each head's map is its probe's attention to the 9 patches (no prefix tokens).
    let diff = max_abs_diff(
        &f32_values(&file["maps"]),
        &f32_values(&file["pool_attentions"]),
    );
    assert_eq!(diff, 0.0);
    let run = vit(&[
        "explain",
        "-m",
        &siglip,
        photo,
        "--method",
        "attention",
        "--layer",
        "0",
        "--maps",
        maps.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(stderr(&run).contains("no class token"), "{}", stderr(&run));

    let dinov2 = model("family/dinov2_reg_cls_p8_s32");
    let run = vit(&[
        "explain",
        "-m",
        &dinov2,
        photo,
        "--include-registers",
        "--maps",
        maps.to_str().unwrap(),
        "--force",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let file = load(&maps);
    let grid = file["maps"].dims()[1];
    assert_eq!(file["register_maps"].dims(), &[1, 2, grid, grid]);
}

#[test]
fn zero_shot_captions_give_the_best_label() {
    let dir = tempfile::tempdir().unwrap();
    let clip = model("clip/clip_p16_s48");
    let photo = fixture("preprocess/images/rgba_120x90.png");
    let photo = photo.to_str().unwrap();
    let labels = "a cat,a dog,a car";
    let run = vit(&[
        "explain",
        "-m",
        &clip,
        photo,
        "--labels",
        labels,
        "-o",
        dir.path().to_str().unwrap(),
        "-f",
        "jsonl",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let classify = vit(&[
        "classify", "-m", &clip, photo, "--labels", labels, "-k", "1", "-f", "jsonl",
    ]);
    assert!(classify.status.success(), "{}", stderr(&classify));
    let (ours, theirs) = (
        &jsonl(&stdout(&run))[0],
        &jsonl(&stdout(&classify))[0]["predictions"][0],
    );
    assert_eq!(ours["label"], theirs["label"]);
    assert!((ours["score"].as_f64().unwrap() - theirs["score"].as_f64().unwrap()).abs() < 1e-5);
}

#[test]
fn bad_plans_are_one_clear_line_before_the_model_loads() {
    let deit = model("family/deit_p8_s32");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&[], "nothing to write"),
        (
            &["-o", out, "--all-attentions"],
            "--all-attentions writes into the --maps file",
        ),
        (
            &["-o", out, "--discard-ratio", "1"],
            "--discard-ratio 1 is not in [0, 1)",
        ),
        (
            &["-o", out, "--method", "attention", "--discard-ratio", "0.5"],
            "rollout only",
        ),
        (
            &["-o", out, "--layer", "2"],
            "--layer 2: the model has 2 layers",
        ),
        (
            &["-o", out, "--include-registers"],
            "has no register tokens",
        ),
        (
            &["-o", out, "--label", "no such label"],
            "not one of the model's labels",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["explain", "-m", &deit];
        let images = images();
        args.push(&images);
        args.extend(extra);
        let run = vit(&args);
        assert_eq!(run.status.code(), Some(2), "{extra:?}");
        let err = stderr(&run);
        assert!(err.contains(message), "{extra:?}: {err}");
        assert!(!Path::new(out).exists(), "{extra:?}: nothing written");
    }
}
