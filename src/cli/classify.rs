//! `vit classify`: the top classes of images, in input order: the model's own classes, or
//! zero-shot labels with an image-text model (CLIP, SigLIP).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use vit::classifier::{top_k, Classifier, Prediction, ScoreFunction};
use vit::inputs::Input;
use vit::model::AttentionKernel;
use vit::zero_shot::{label_texts, DEFAULT_TEMPLATE};

use super::{InputArgs, ModelArgs, Outcome};

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    inputs: InputArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Classes to print per image (at most the number of labels).
    #[arg(long, short = 'k', default_value_t = 5)]
    top_k: usize,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 8)]
    batch_size: usize,
    /// Square input size; position embeddings are interpolated for sizes other than the
    /// model's [default: the model's preprocessing].
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// How logits become scores [default: softmax, or sigmoid for a single label; for
    /// zero-shot labels, the model's: softmax for CLIP, sigmoid for SigLIP].
    #[arg(long, value_enum)]
    function: Option<FunctionArg>,
    /// Zero-shot labels, separated by commas, for an image-text model (CLIP, SigLIP): each is put
    /// into --template and compared with the image.
    #[arg(long, value_delimiter = ',', value_name = "LABEL,...")]
    labels: Vec<String>,
    /// Zero-shot labels, one a line (`-`: stdin), after those of --labels (lines of at most
    /// 64 KiB; a FIFO with no writer blocks until one opens it).
    #[arg(long, value_name = "FILE")]
    labels_file: Option<PathBuf>,
    /// The text each zero-shot label is put into, in place of its `{}` [default: HF's
    /// pipeline's, "This is a photo of {}."].
    #[arg(long, value_name = "TEXT")]
    template: Option<String>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    format: Format,
    /// At the end, print timings on stderr as `vit: stats: {JSON}`: load_seconds (the model),
    /// classify_seconds (everything after: label embeddings, decoding, forward passes),
    /// images.
    #[arg(long)]
    stats: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Human-readable, one block per image.
    Text,
    /// One JSON array of all results, printed at the end.
    Json,
    /// One JSON object per line, streamed as results come.
    Jsonl,
    /// `file,rank,index,label,score` rows with a header.
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum FunctionArg {
    Softmax,
    Sigmoid,
    /// Raw logits.
    None,
}

/// The checked arguments of a run.
struct Plan {
    inputs: Vec<Input>,
    top_k: usize,
    batch_size: usize,
    format: Format,
    /// Zero-shot labels and their template, when given.
    zero_shot: Option<(Vec<String>, String)>,
}

/// The outcome of one input.
enum Record {
    Predictions(Vec<Prediction>),
    Error(String),
}

fn plan(args: &ClassifyArgs) -> Result<Plan> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let labels: Vec<String> =
        super::collect_texts(&args.labels, args.labels_file.as_deref(), "label")?
            .iter()
            .map(|label| label.trim().to_string())
            .collect();
    let zero_shot = match (labels.is_empty(), &args.template) {
        (true, None) => None,
        (true, Some(_)) => bail!("--template needs zero-shot labels (--labels or --labels-file)"),
        (false, template) => {
            let template = template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
            label_texts(&labels, template)?;
            Some((labels, template.to_string()))
        }
    };
    Ok(Plan {
        inputs: args.inputs.collect()?,
        top_k: args.top_k,
        batch_size: args.batch_size,
        format: args.format,
        zero_shot,
    })
}

pub fn run(args: ClassifyArgs) -> Result<Outcome> {
    let mut plan = plan(&args)?;
    let started = std::time::Instant::now();
    let ready = args.model.load(AttentionKernel::Standard)?;
    let loaded = started.elapsed();
    if plan.zero_shot.is_none() {
        if ready.loaded.text.is_some() {
            bail!(
                "{}: an image-text model classifies into zero-shot labels: give them with \
                 --labels or --labels-file",
                args.model.model
            );
        }
        if !ready.loaded.model.has_head() {
            bail!(
                "{}: the model has no classification head (a backbone): use `vit embed`",
                args.model.model
            );
        }
    }
    let classifier = ready.classifier(&args.model.model, args.image_size, plan.zero_shot.take())?;
    let num_labels = classifier.labels().len();
    let function = match args.function {
        None => match &classifier.zero_shot {
            Some(zero_shot) => zero_shot.score_function(),
            None => ScoreFunction::default_for(num_labels),
        },
        Some(FunctionArg::Softmax) => ScoreFunction::Softmax,
        Some(FunctionArg::Sigmoid) => ScoreFunction::Sigmoid,
        Some(FunctionArg::None) => ScoreFunction::None,
    };
    let top_k = plan.top_k.min(num_labels);

    let progress = super::progress_bar(plan.inputs.len());
    let mut report = Report::new(plan.format)?;
    let mut failures = 0usize;
    for chunk in plan.inputs.chunks(plan.batch_size) {
        let records = classify_chunk(&classifier, chunk, function, top_k);
        for (input, record) in chunk.iter().zip(records) {
            let path = input.path();
            if let Record::Error(message) = &record {
                failures += 1;
                progress.suspend(|| log!("vit: {}: {message}", path.display()));
            }
            report.add(&path.display().to_string(), record)?;
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    report.finish()?;
    if args.stats {
        let stats = json!({
            "load_seconds": loaded.as_secs_f64(),
            "classify_seconds": (started.elapsed() - loaded).as_secs_f64(),
            "images": plan.inputs.len(),
            "failed": failures,
        });
        log!("vit: stats: {stats}");
    }
    Ok(match failures {
        0 => Outcome::Success,
        _ => Outcome::PartialFailure,
    })
}

/// Decodes a chunk in parallel, runs the decodable images as one batch, and returns one record
/// per input, in order.
fn classify_chunk(
    classifier: &Classifier,
    chunk: &[Input],
    function: ScoreFunction,
    k: usize,
) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::with_capacity(chunk.len());
    let mut ready = Vec::new();
    let mut slots = Vec::new();
    for prepared in classifier.prepare(chunk) {
        match prepared {
            Ok(pixels) => {
                slots.push(records.len());
                ready.push(pixels);
                records.push(Record::Predictions(Vec::new()));
            }
            Err(err) => records.push(Record::Error(super::one_line(&err))),
        }
    }
    if ready.is_empty() {
        return records;
    }
    let batch: Vec<_> = ready.iter().collect();
    match classifier.logits(&batch) {
        Ok(rows) => {
            for (slot, logits) in slots.into_iter().zip(rows) {
                let scores = function.apply(&logits);
                // A score that is not a number is no result: an error for this image (a
                // model that overflows on it), never `"score": null` with exit 0.
                records[slot] = match scores.iter().position(|s| !s.is_finite()) {
                    Some(index) => Record::Error(format!(
                        "the model gave a non-finite score ({}) for label {index}",
                        scores[index]
                    )),
                    None => Record::Predictions(top_k(&scores, classifier.labels(), k)),
                };
            }
        }
        Err(err) => {
            for slot in slots {
                records[slot] = Record::Error(super::one_line(&err));
            }
        }
    }
    records
}

/// Writes records to stdout in the chosen format.
struct Report {
    format: Format,
    out: std::io::StdoutLock<'static>,
    /// Objects held back for `json`, which prints one array at the end.
    json_items: Vec<serde_json::Value>,
}

impl Report {
    fn new(format: Format) -> Result<Self> {
        let mut out = std::io::stdout().lock();
        if format == Format::Csv {
            writeln!(out, "file,rank,index,label,score")?;
        }
        Ok(Self {
            format,
            out,
            json_items: Vec::new(),
        })
    }

    fn add(&mut self, file: &str, record: Record) -> Result<()> {
        let out = &mut self.out;
        match self.format {
            Format::Json | Format::Jsonl => {
                let object = match &record {
                    Record::Predictions(predictions) => {
                        json!({"file": file, "predictions": predictions})
                    }
                    Record::Error(message) => json!({"file": file, "error": message}),
                };
                if self.format == Format::Json {
                    self.json_items.push(object);
                } else {
                    writeln!(out, "{object}")?;
                    out.flush()?;
                }
            }
            Format::Csv => {
                if let Record::Predictions(predictions) = &record {
                    for (rank, p) in predictions.iter().enumerate() {
                        writeln!(
                            out,
                            "{},{},{},{},{:.6}",
                            super::csv_field(file),
                            rank + 1,
                            p.index,
                            super::csv_field(&p.label),
                            p.score
                        )?;
                    }
                }
            }
            Format::Text => {
                if let Record::Predictions(predictions) = &record {
                    writeln!(out, "{file}")?;
                    for p in predictions {
                        writeln!(out, "  {:>8.4}  {} [{}]", p.score, p.label, p.index)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.format == Format::Json {
            let array = serde_json::Value::Array(std::mem::take(&mut self.json_items));
            writeln!(self.out, "{}", serde_json::to_string_pretty(&array)?)?;
        }
        self.out.flush()?;
        Ok(())
    }
}
