//! `vit explain`: where the model looked. Attention maps of images (the class token's
//! attention in one layer, per head, or attention rollout) as pictures over the photo the
//! model saw, and as numbers in a safetensors file.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use rayon::prelude::*;
use serde_json::json;
use vit::classifier::{top_k, Classifier, Prediction, ScoreFunction};
use vit::explain::{BatchAttention, ImageAttention, Method, Query};
use vit::inputs::{is_stdin, Input};
use vit::model::{AttentionKernel, Pooling};
use vit::preprocess::PixelValues;
use vit::zero_shot::{label_texts, DEFAULT_TEMPLATE};

use super::{InputArgs, ModelArgs, Outcome};

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    inputs: InputArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// How the map is made: attention rollout through the layers (Abnar & Zuidema, 2020),
    /// the class token's attention to the patches in one layer (mean over heads), or the
    /// same per head (a panel per head).
    #[arg(long, value_enum, default_value_t = MethodArg::Rollout)]
    method: MethodArg,
    /// The layer (from 0) whose attention is shown; for rollout, the last layer rolled out
    /// [default: the last].
    #[arg(long, value_name = "N")]
    layer: Option<usize>,
    /// Rollout: the fraction of each layer's lowest attention values set to zero before the
    /// rollout (the class token's own kept), as jacobgil/vit-explain does.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    discard_ratio: f64,
    /// The label whose score the caption gives (a name, or an index of the model's labels)
    /// [default: the top label].
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
    /// Zero-shot labels, separated by commas, for an image-text model (CLIP, SigLIP): the
    /// caption gives the best of them.
    #[arg(long, value_delimiter = ',', value_name = "LABEL,...")]
    labels: Vec<String>,
    /// The text each zero-shot label is put into, in place of its `{}` [default: HF's
    /// pipeline's, "This is a photo of {}."].
    #[arg(long, value_name = "TEXT")]
    template: Option<String>,
    /// Write one PNG per image into DIR: the photo as the model saw it (after resize and
    /// crop) with the map laid over it, the top label and its score in a caption.
    #[arg(long, short = 'o', value_name = "DIR")]
    output: Option<PathBuf>,
    /// Write the maps to FILE.safetensors: `maps` (images, grid_h, grid_w), or (images,
    /// heads, grid_h, grid_w) for class-heads, the file list in its metadata.
    #[arg(long, value_name = "FILE.safetensors")]
    maps: Option<PathBuf>,
    /// With --maps, also every layer's attention probabilities: `attentions` (images,
    /// layers, heads, tokens, tokens), and `pool_attentions` (images, heads, tokens) for a
    /// model pooled by an attention probe.
    #[arg(long)]
    all_attentions: bool,
    /// Also show the register tokens' own maps (DINOv2 with registers): panels beside the
    /// class token's, and `register_maps` (images, registers, grid_h, grid_w) in --maps.
    #[arg(long)]
    include_registers: bool,
    /// How strongly the map covers the photo, from 0 (photo only) to 1 (map only).
    #[arg(long, value_name = "A", default_value_t = 0.6)]
    alpha: f32,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 8)]
    batch_size: usize,
    /// Square input size; position embeddings are interpolated for sizes other than the
    /// model's [default: the model's preprocessing].
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Replace existing PNGs and maps file.
    #[arg(long)]
    force: bool,
    /// What is printed on stdout per image.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MethodArg {
    Rollout,
    Attention,
    ClassHeads,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One line per image: the file, its picture, the label and score.
    Text,
    /// One JSON object per line: file, png, label, index, score, peak ([row, column] of the
    /// map's maximum on the patch grid), or error.
    Jsonl,
}

/// The checked arguments of a run.
struct Plan {
    inputs: Vec<Input>,
    method: Method,
    discard_ratio: f64,
    /// Where each input's PNG goes, when PNGs are written.
    pictures: Option<Vec<PathBuf>>,
    maps: Option<PathBuf>,
    /// Every layer's probabilities go into the maps file too.
    all_attentions: bool,
    /// How strongly pictures' maps cover their photos.
    alpha: f32,
    zero_shot: Option<(Vec<String>, String)>,
}

fn plan(args: &ExplainArgs) -> Result<Plan> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(0.0..1.0).contains(&args.discard_ratio) {
        bail!("--discard-ratio {} is not in [0, 1)", args.discard_ratio);
    }
    if !(0.0..=1.0).contains(&args.alpha) {
        bail!("--alpha {} is not in [0, 1]", args.alpha);
    }
    let method = match args.method {
        MethodArg::Rollout => Method::Rollout,
        MethodArg::Attention => Method::Attention,
        MethodArg::ClassHeads => Method::ClassHeads,
    };
    if args.discard_ratio > 0.0 && method != Method::Rollout {
        bail!("--discard-ratio applies to --method rollout only");
    }
    if args.output.is_none() && args.maps.is_none() {
        bail!("nothing to write: give -o DIR for pictures, --maps FILE.safetensors, or both");
    }
    if args.all_attentions && args.maps.is_none() {
        bail!("--all-attentions writes into the --maps file: give one");
    }
    if let Some(maps) = &args.maps {
        if maps.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            bail!("{}: --maps writes a .safetensors file", maps.display());
        }
        if maps.exists() && !args.force {
            bail!(
                "{}: already exists (use --force to replace it)",
                maps.display()
            );
        }
    }
    let zero_shot = match (args.labels.is_empty(), &args.template) {
        (true, None) => None,
        (true, Some(_)) => bail!("--template needs zero-shot labels (--labels)"),
        (false, template) => {
            let labels: Vec<String> = args.labels.iter().map(|l| l.trim().to_string()).collect();
            let template = template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
            label_texts(&labels, template)?;
            Some((labels, template.to_string()))
        }
    };
    let inputs = args.inputs.collect()?;
    let pictures = match &args.output {
        Some(dir) => Some(picture_paths(dir, &inputs, args.force)?),
        None => None,
    };
    Ok(Plan {
        inputs,
        method,
        discard_ratio: args.discard_ratio,
        pictures,
        maps: args.maps.clone(),
        all_attentions: args.all_attentions,
        alpha: args.alpha,
        zero_shot,
    })
}

/// Each input's PNG in `dir`: its file stem, numbered from `-2` on when two inputs share
/// one. An existing PNG is refused before any work unless `force`.
fn picture_paths(dir: &Path, inputs: &[Input], force: bool) -> Result<Vec<PathBuf>> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let mut taken = HashSet::new();
    let mut paths = Vec::with_capacity(inputs.len());
    for input in inputs {
        let path = input.path();
        let stem = match is_stdin(path) {
            true => "stdin".to_string(),
            false => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".to_string()),
        };
        let mut name = format!("{stem}.png");
        let mut copy = 1;
        while !taken.insert(name.clone()) {
            copy += 1;
            name = format!("{stem}-{copy}.png");
        }
        let picture = dir.join(name);
        if picture.exists() && !force {
            bail!(
                "{}: already exists (use --force to replace it)",
                picture.display()
            );
        }
        paths.push(picture);
    }
    Ok(paths)
}

/// What the maps of this model are of, checked against the model.
struct Target {
    query: Query,
    /// The layer shown (attention, class-heads) or the last rolled out (rollout).
    layer: usize,
    registers: usize,
}

fn target(args: &ExplainArgs, classifier: &Classifier, model: &str) -> Result<Target> {
    let variant = &classifier.config.variant;
    let layers = classifier.config.num_hidden_layers;
    let query = match (variant.class_token, variant.pooling) {
        (true, _) => Query::Token(0),
        (false, Pooling::AttentionPool) => Query::Probe,
        (false, _) => bail!(
            "{model}: the model has neither a class token nor an attention pool, so no token's \
             attention summarises the image"
        ),
    };
    if query == Query::Probe && args.layer.is_some() && args.method != MethodArg::Rollout {
        bail!(
            "{model}: the model has no class token; its map is its attention pool's, after the \
             last layer (--layer applies to rollout only)"
        );
    }
    let layer = args.layer.unwrap_or(layers.saturating_sub(1));
    if layer >= layers {
        bail!(
            "--layer {layer}: the model has {layers} layers (0 to {})",
            layers - 1
        );
    }
    let registers = match (args.include_registers, variant.register_tokens) {
        (false, _) => 0,
        (true, 0) => bail!("--include-registers: {model} has no register tokens"),
        (true, n) => n,
    };
    Ok(Target {
        query,
        layer,
        registers,
    })
}

/// One image's maps on its patch grid.
struct ImageMaps {
    /// The query's map, or one per head for class-heads.
    maps: Vec<Vec<f32>>,
    /// Each register's map.
    registers: Vec<Vec<f32>>,
    grid: (usize, usize),
}

/// What every image of a run is explained with.
struct Explainer<'a> {
    classifier: &'a Classifier,
    plan: &'a Plan,
    target: &'a Target,
    scores: &'a Scores,
}

/// The outcome of one input.
enum Record {
    Done {
        prediction: Option<Prediction>,
        picture: Option<PathBuf>,
        peak: (usize, usize),
    },
    Error(String),
}

pub fn run(args: ExplainArgs) -> Result<Outcome> {
    let mut plan = plan(&args)?;
    let ready = args.model.load(AttentionKernel::Standard)?;
    let model = args.model.model.clone();
    let classifier = ready.classifier(&model, args.image_size, plan.zero_shot.take())?;
    let target = target(&args, &classifier, &model)?;
    let scores = Scores::new(&classifier, args.label.as_deref())?;
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    }

    let progress = super::progress_bar(plan.inputs.len());
    let mut out = std::io::stdout().lock();
    let mut maps = MapsFile::default();
    let mut failures = 0usize;
    let explainer = Explainer {
        classifier: &classifier,
        plan: &plan,
        target: &target,
        scores: &scores,
    };
    for (chunk_index, chunk) in plan.inputs.chunks(args.batch_size).enumerate() {
        let first = chunk_index * args.batch_size;
        let pictures = plan
            .pictures
            .as_ref()
            .map(|paths| &paths[first..first + chunk.len()]);
        let records = explain_chunk(&explainer, chunk, pictures, &mut maps);
        for (input, record) in chunk.iter().zip(records) {
            let file = input.path().display().to_string();
            if let Record::Error(message) = &record {
                failures += 1;
                progress.suspend(|| log!("vit: {file}: {message}"));
                maps.failed.push((file.clone(), message.clone()));
            }
            report(&mut out, args.format, &file, &record)?;
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    if let Some(path) = &plan.maps {
        let metadata = json!({
            "method": plan.method.name(),
            "layer": target.layer,
            "discard_ratio": plan.discard_ratio,
            "model": model,
        });
        vit::atomic::write_file(path, &maps.bytes(&metadata)?)?;
    }
    Ok(match failures {
        0 => Outcome::Success,
        _ => Outcome::PartialFailure,
    })
}

/// How the caption's label and score are chosen.
struct Scores {
    function: ScoreFunction,
    /// The label asked for, by index; `None`: the top label.
    label: Option<usize>,
    /// Whether the outputs are logits over labels (not a backbone's embedding).
    classifies: bool,
}

impl Scores {
    fn new(classifier: &Classifier, label: Option<&str>) -> Result<Self> {
        let classifies = classifier.zero_shot.is_some()
            || (classifier.model.has_head() && !classifier.labels().is_empty());
        let labels = classifier.labels();
        let function = match &classifier.zero_shot {
            Some(zero_shot) => zero_shot.score_function(),
            None => ScoreFunction::default_for(labels.len()),
        };
        let label = match label {
            None => None,
            Some(_) if !classifies => {
                bail!(
                    "--label: the model has no labels (a backbone; zero-shot labels need --labels)"
                )
            }
            Some(name) => Some(
                labels
                    .iter()
                    .position(|l| l == name)
                    .or_else(|| name.parse().ok().filter(|&i: &usize| i < labels.len()))
                    .with_context(|| format!("--label {name}: not one of the model's labels"))?,
            ),
        };
        Ok(Self {
            function,
            label,
            classifies,
        })
    }

    fn prediction(&self, output: &[f32], labels: &[String]) -> Option<Prediction> {
        if !self.classifies {
            return None;
        }
        let scores = self.function.apply(output);
        match self.label {
            Some(index) => Some(Prediction {
                index,
                label: labels[index].clone(),
                score: scores[index],
            }),
            None => top_k(&scores, labels, 1).into_iter().next(),
        }
    }
}

/// Decodes a chunk in parallel, runs the decodable images as one batch keeping the
/// attention, and makes, draws and keeps each image's maps: one record per input, in order.
fn explain_chunk(
    explainer: &Explainer,
    chunk: &[Input],
    pictures: Option<&[PathBuf]>,
    maps: &mut MapsFile,
) -> Vec<Record> {
    let prepared = explainer.classifier.prepare(chunk);
    let mut records: Vec<Option<Record>> = Vec::with_capacity(chunk.len());
    let mut ready: Vec<(usize, &PixelValues)> = Vec::new();
    for (slot, result) in prepared.iter().enumerate() {
        match result {
            Ok(pixels) => {
                ready.push((slot, pixels));
                records.push(None);
            }
            Err(err) => records.push(Some(Record::Error(super::one_line(err)))),
        }
    }
    if !ready.is_empty() {
        let batch: Vec<&PixelValues> = ready.iter().map(|(_, p)| *p).collect();
        match explainer.classifier.attentions(&batch) {
            Err(err) => {
                let message = super::one_line(&err);
                for (slot, _) in &ready {
                    records[*slot] = Some(Record::Error(message.clone()));
                }
            }
            Ok(attention) => {
                let results: Vec<Result<(ImageMaps, Option<Prediction>)>> = ready
                    .par_iter()
                    .enumerate()
                    .map(|(index, (slot, pixels))| {
                        let picture = pictures.map(|paths| paths[*slot].as_path());
                        vit::panics::catch("cannot draw the map", || {
                            explain_image(explainer, &attention, index, pixels, picture)
                        })
                    })
                    .collect();
                for (index, ((slot, _), result)) in ready.iter().zip(results).enumerate() {
                    records[*slot] = Some(match result {
                        Ok((image_maps, prediction)) => {
                            let peak = peak(&image_maps.maps, image_maps.grid);
                            let kept = maps.add(
                                chunk[*slot].path(),
                                &image_maps,
                                explainer
                                    .plan
                                    .all_attentions
                                    .then(|| attention.image(index)),
                            );
                            match kept {
                                Ok(()) => Record::Done {
                                    prediction,
                                    picture: pictures.map(|paths| paths[*slot].clone()),
                                    peak,
                                },
                                Err(err) => Record::Error(super::one_line(&err)),
                            }
                        }
                        Err(err) => Record::Error(super::one_line(&err)),
                    });
                }
            }
        }
    }
    records
        .into_iter()
        .map(|record| record.expect("every slot is filled"))
        .collect()
}

/// One image's maps, its prediction, and its picture written to `picture`.
fn explain_image(
    explainer: &Explainer,
    attention: &BatchAttention,
    index: usize,
    pixels: &PixelValues,
    picture: Option<&Path>,
) -> Result<(ImageMaps, Option<Prediction>)> {
    let Explainer {
        classifier,
        plan,
        target,
        scores,
    } = explainer;
    let patch = classifier.config.patch_size;
    let grid = (pixels.height / patch, pixels.width / patch);
    let image = attention.image(index);
    image.check()?;
    if image.patches() != grid.0 * grid.1 {
        bail!(
            "{} patch tokens for a {}x{} patch grid",
            image.patches(),
            grid.0,
            grid.1
        );
    }
    let map_of = |query: Query| -> Result<Vec<f32>> {
        match plan.method {
            Method::Rollout => image.rollout(target.layer, query, plan.discard_ratio),
            Method::Attention | Method::ClassHeads => image.attention(target.layer, query),
        }
    };
    let maps = match plan.method {
        Method::ClassHeads => image.head_maps(target.layer, target.query)?,
        _ => vec![map_of(target.query)?],
    };
    let registers = (1..=target.registers)
        .map(|register| map_of(Query::Token(register)))
        .collect::<Result<Vec<_>>>()?;
    let prediction = scores.prediction(&attention.outputs[index], classifier.labels());
    let image_maps = ImageMaps {
        maps,
        registers,
        grid,
    };
    if let Some(path) = picture {
        let photo = classifier.preprocess.model_view(pixels)?;
        let drawn = draw(&photo, &image_maps, plan, target, &prediction);
        vit::atomic::write_file(path, &vit::render::png_bytes(&drawn)?)?;
    }
    Ok((image_maps, prediction))
}

/// The picture of one image: the map over the photo (a titled panel per head for
/// class-heads, and per register with --include-registers), with a caption.
fn draw(
    photo: &image::RgbImage,
    maps: &ImageMaps,
    plan: &Plan,
    target: &Target,
    prediction: &Option<Prediction>,
) -> image::RgbImage {
    let overlay = |map: &[f32]| vit::render::overlay(photo, map, maps.grid, plan.alpha);
    let mut panels: Vec<(String, image::RgbImage)> = match plan.method {
        Method::ClassHeads => maps
            .maps
            .iter()
            .enumerate()
            .map(|(head, map)| (format!("head {head}"), overlay(map)))
            .collect(),
        _ => vec![(String::new(), overlay(&maps.maps[0]))],
    };
    for (register, map) in maps.registers.iter().enumerate() {
        panels.push((format!("register {}", register + 1), overlay(map)));
    }
    let body = match panels.len() {
        1 if panels[0].0.is_empty() => panels.remove(0).1,
        n => {
            if let Some(first) = panels.first_mut().filter(|p| p.0.is_empty()) {
                first.0 = "class token".to_string();
            }
            vit::render::panel_grid(&panels, (n as f64).sqrt().ceil() as usize)
        }
    };
    let label = match prediction {
        Some(p) => format!("{} {:.3}", p.label, p.score),
        None => "(no labels)".to_string(),
    };
    let method = match (plan.method, target.query) {
        (Method::Rollout, _) => format!("rollout, layers 0-{}", target.layer),
        (_, Query::Probe) => format!("{}, pool probe", plan.method.name()),
        (method, _) => format!("{}, layer {}", method.name(), target.layer),
    };
    vit::render::with_caption(&body, &[label, method])
}

/// `[row, column]` of the first map's maximum on the grid.
fn peak(maps: &[Vec<f32>], (_, cols): (usize, usize)) -> (usize, usize) {
    let map = maps.first().map(Vec::as_slice).unwrap_or_default();
    let best = map
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| match v > best.1 {
            true => (i, v),
            false => best,
        })
        .0;
    (best / cols.max(1), best % cols.max(1))
}

fn report(out: &mut impl Write, format: Format, file: &str, record: &Record) -> Result<()> {
    match (format, record) {
        (Format::Jsonl, Record::Error(message)) => {
            writeln!(out, "{}", json!({"file": file, "error": message}))?
        }
        (Format::Text, Record::Error(_)) => {}
        (
            Format::Jsonl,
            Record::Done {
                prediction,
                picture,
                peak,
            },
        ) => {
            let mut object = json!({"file": file, "peak": [peak.0, peak.1]});
            if let Some(picture) = picture {
                object["png"] = json!(picture.display().to_string());
            }
            if let Some(p) = prediction {
                object["label"] = json!(p.label);
                object["index"] = json!(p.index);
                object["score"] = json!(p.score);
            }
            writeln!(out, "{object}")?
        }
        (
            Format::Text,
            Record::Done {
                prediction,
                picture,
                ..
            },
        ) => {
            let mut line = file.to_string();
            if let Some(p) = prediction {
                line.push_str(&format!("  {:.4}  {}", p.score, p.label));
            }
            if let Some(picture) = picture {
                line.push_str(&format!("  -> {}", picture.display()));
            }
            writeln!(out, "{line}")?
        }
    }
    out.flush()?;
    Ok(())
}

/// The numbers for `--maps`: every image's maps, in input order.
#[derive(Default)]
struct MapsFile {
    files: Vec<String>,
    failed: Vec<(String, String)>,
    /// Each image's maps, one after the other.
    maps: Vec<f32>,
    /// The shape of one image's maps: `(grid)` or `(heads, grid)`.
    map_shape: Option<Vec<usize>>,
    registers: Vec<f32>,
    registers_shape: Option<Vec<usize>>,
    attentions: Vec<f32>,
    attentions_shape: Option<Vec<usize>>,
    pool: Vec<f32>,
}

impl MapsFile {
    /// Keeps an image's maps (and its attention probabilities, when given); an image whose
    /// grid differs from the first image's cannot share the file's tensors.
    fn add(
        &mut self,
        file: &Path,
        maps: &ImageMaps,
        attention: Option<ImageAttention<'_>>,
    ) -> Result<()> {
        let (rows, cols) = maps.grid;
        let map_shape = match maps.maps.len() {
            1 => vec![rows, cols],
            heads => vec![heads, rows, cols],
        };
        if *self.map_shape.get_or_insert_with(|| map_shape.clone()) != map_shape {
            bail!(
                "its patch grid {rows}x{cols} differs from the first image's: --maps holds one \
                 size (use --image-size)"
            );
        }
        self.registers_shape
            .get_or_insert_with(|| vec![maps.registers.len(), rows, cols]);
        self.files.push(file.display().to_string());
        self.maps.extend(maps.maps.iter().flatten());
        self.registers.extend(maps.registers.iter().flatten());
        if let Some(attention) = attention {
            self.attentions_shape.get_or_insert_with(|| {
                vec![
                    attention.layers.len(),
                    attention.heads,
                    attention.tokens,
                    attention.tokens,
                ]
            });
            self.attentions
                .extend(attention.layers.iter().copied().flatten());
            if let Some(probe) = attention.probe {
                self.pool.extend_from_slice(probe);
            }
        }
        Ok(())
    }

    /// The safetensors file, with `extra` and the file lists in its metadata.
    fn bytes(&self, extra: &serde_json::Value) -> Result<Vec<u8>> {
        use safetensors::tensor::{Dtype, TensorView};
        let images = self.files.len();
        let le =
            |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push = |name: &str, shape: &Option<Vec<usize>>, values: &[f32]| {
            if let Some(shape) = shape.as_ref().filter(|_| !values.is_empty()) {
                let mut full = vec![images];
                full.extend(shape);
                tensors.push((name.to_string(), full, le(values)));
            }
        };
        push("maps", &self.map_shape, &self.maps);
        push("register_maps", &self.registers_shape, &self.registers);
        push("attentions", &self.attentions_shape, &self.attentions);
        let pool_shape = self
            .attentions_shape
            .as_ref()
            .map(|shape| vec![shape[1], shape[2]]);
        push("pool_attentions", &pool_shape, &self.pool);
        if images == 0 {
            tensors.push(("maps".to_string(), vec![0], Vec::new()));
        }
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|view| (name.clone(), view))
                    .with_context(|| format!("{name}: inconsistent shape"))
            })
            .collect::<Result<Vec<_>>>()?;
        let failed: Vec<serde_json::Value> = self
            .failed
            .iter()
            .map(|(file, error)| json!({"file": file, "error": error}))
            .collect();
        let mut metadata = std::collections::HashMap::from([
            ("files".to_string(), serde_json::to_string(&self.files)?),
            ("failed".to_string(), serde_json::to_string(&failed)?),
        ]);
        if let Some(extra) = extra.as_object() {
            for (key, value) in extra {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                metadata.insert(key.clone(), text);
            }
        }
        safetensors::tensor::serialize(views, Some(metadata)).context("cannot serialize the maps")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_are_named_after_their_inputs_and_numbered_when_stems_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let inputs: Vec<Input> = ["a/cat.jpg", "b/cat.png", "dog.webp", "-", "c/cat.jpg"]
            .iter()
            .map(|p| Input::Image(PathBuf::from(p)))
            .collect();
        let names: Vec<String> = picture_paths(dir.path(), &inputs, false)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["cat.png", "cat-2.png", "dog.png", "stdin.png", "cat-3.png"]
        );
        std::fs::write(dir.path().join("dog.png"), b"").unwrap();
        let err = picture_paths(dir.path(), &inputs, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dog.png: already exists"), "{err}");
        assert!(picture_paths(dir.path(), &inputs, true).is_ok());
    }
}
