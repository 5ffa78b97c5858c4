//! `vit classify`: the top classes of images, in input order.

use std::io::Write;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use vit::classifier::{top_k, Classifier, Prediction, ScoreFunction};
use vit::inputs::Input;
use vit::model::AttentionKernel;

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
    /// How logits become scores [default: softmax, or sigmoid for a single label].
    #[arg(long, value_enum)]
    function: Option<FunctionArg>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    format: Format,
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
    Ok(Plan {
        inputs: args.inputs.collect()?,
        top_k: args.top_k,
        batch_size: args.batch_size,
        format: args.format,
    })
}

pub fn run(args: ClassifyArgs) -> Result<Outcome> {
    let plan = plan(&args)?;
    let ready = args.model.load(AttentionKernel::Standard)?;
    if !ready.loaded.model.has_head() {
        bail!(
            "{}: the model has no classification head (a backbone): use `vit embed`",
            args.model.model
        );
    }
    let classifier = Classifier::new(ready.loaded, ready.device, args.image_size)?;
    let num_labels = classifier.config.num_labels();
    let function = match args.function {
        None => ScoreFunction::default_for(num_labels),
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
                progress.suspend(|| eprintln!("vit: {}: {message}", path.display()));
            }
            report.add(&path.display().to_string(), record)?;
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    report.finish()?;
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
                let predictions = top_k(&scores, &classifier.config.id2label, k);
                records[slot] = Record::Predictions(predictions);
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
