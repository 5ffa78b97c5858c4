//! `vit embed`: image embeddings, or the text embeddings of an image-text model (CLIP,
//! SigLIP), as JSON lines on stdout or a `.npy`, `.safetensors`, `.jsonl` or `.csv` file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use vit::atomic::write_file;
use vit::classifier::Classifier;
use vit::embeddings::{file_list, l2_normalize, npy_bytes, safetensors_bytes};
use vit::inputs::Input;
use vit::model::{AttentionKernel, EmbeddingKind};

use super::{InputArgs, ModelArgs, Outcome};

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    inputs: InputArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Which embedding: auto (the model's own: the class token after the final norm for ViT,
    /// DeiT and DINOv2 backbones, what the head reads for classifiers, the projected
    /// embedding for CLIP, the attention-pooled one for SigLIP), cls, mean (of the patch
    /// tokens, after the final norm) or tokens
    /// (every token; npy or safetensors only).
    #[arg(long, value_enum, default_value_t = PoolArg::Auto)]
    pool: PoolArg,
    /// Scale each embedding (each token, for `tokens`) to unit length.
    #[arg(long)]
    normalize: bool,
    /// Output file [default: JSON lines on stdout].
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Output format [default: from the output file's extension, else jsonl].
    #[arg(long, short = 'f', value_enum)]
    format: Option<Format>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 8)]
    batch_size: usize,
    /// Square input size; position embeddings are interpolated for sizes other than the
    /// model's [default: the model's preprocessing].
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Embed this text with an image-text model's text tower (CLIP, SigLIP), instead of images;
    /// repeatable. Its rows are comparable with the model's image embeddings (`--pool auto`):
    /// cosine similarity after --normalize.
    #[arg(long, value_name = "TEXT")]
    text: Vec<String>,
    /// Embed the texts of FILE, one a line (`-`: stdin), after those of --text (lines of at
    /// most 64 KiB; a FIFO with no writer blocks until one opens it).
    #[arg(long, value_name = "FILE")]
    text_file: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PoolArg {
    Auto,
    Cls,
    Mean,
    Tokens,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One float32 array `(images, width)` (or `(images, tokens, hidden)`), with the paths
    /// in row order in `FILE.files.txt` (the texts in `FILE.texts.txt`).
    Npy,
    /// A tensor `embeddings` with the paths in its metadata (`files`, `failed`; `texts`).
    Safetensors,
    /// `{"file": PATH, "embedding": [...]}` per image (`{"text": ...}` per text), streamed.
    Jsonl,
    /// `file,0,1,...` (`text,0,1,...`) rows with a header.
    Csv,
}

/// The checked arguments of a run.
struct Plan {
    /// The images, or the texts.
    work: Work,
    kind: EmbeddingKind,
    format: Format,
    output: Option<PathBuf>,
}

/// What a run embeds.
enum Work {
    Images(Vec<Input>),
    Texts(Vec<String>),
}

impl Work {
    /// The key that names each row in the output (`file` or `text`).
    fn key(&self) -> &'static str {
        match self {
            Self::Images(_) => "file",
            Self::Texts(_) => "text",
        }
    }
}

fn plan(args: &EmbedArgs) -> Result<Plan> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let format = match (args.format, &args.output) {
        (Some(format), _) => format,
        (None, Some(path)) => format_of(path)?,
        (None, None) => Format::Jsonl,
    };
    let kind = match args.pool {
        PoolArg::Auto => EmbeddingKind::Auto,
        PoolArg::Cls => EmbeddingKind::Class,
        PoolArg::Mean => EmbeddingKind::Mean,
        PoolArg::Tokens => EmbeddingKind::Tokens,
    };
    let binary = matches!(format, Format::Npy | Format::Safetensors);
    if binary && args.output.is_none() {
        bail!("--format npy and safetensors write a file: give one with -o");
    }
    if kind == EmbeddingKind::Tokens && !binary {
        bail!("--pool tokens needs --format npy or safetensors");
    }
    if let Some(path) = &args.output {
        if path.exists() && !args.force {
            bail!(
                "{}: already exists (use --force to replace it)",
                path.display()
            );
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if parent.is_some_and(|p| !p.is_dir()) {
            bail!("{}: its folder does not exist", path.display());
        }
    }
    let texts = super::collect_texts(&args.text, args.text_file.as_deref(), "text")?;
    let work = match (texts.is_empty(), args.inputs.is_empty()) {
        (true, _) => Work::Images(args.inputs.collect()?),
        (false, true) => {
            if kind != EmbeddingKind::Auto {
                bail!("--pool is for images: texts have one embedding each");
            }
            if args.image_size.is_some() {
                bail!("--image-size is for images, not texts");
            }
            Work::Texts(texts)
        }
        (false, false) => {
            bail!("give images or texts (--text, --text-file), not both: embed them in two runs")
        }
    };
    Ok(Plan {
        work,
        kind,
        format,
        output: args.output.clone(),
    })
}

/// The format an output file's extension names.
fn format_of(path: &Path) -> Result<Format> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    Ok(match extension.as_deref() {
        Some("npy") => Format::Npy,
        Some("safetensors") => Format::Safetensors,
        Some("jsonl") => Format::Jsonl,
        Some("csv") => Format::Csv,
        _ => bail!(
            "{}: cannot tell the format from the extension (use --format)",
            path.display()
        ),
    })
}

pub fn run(args: EmbedArgs) -> Result<Outcome> {
    let plan = plan(&args)?;
    let ready = args.model.load(AttentionKernel::Standard)?;
    let mut rows = Rows::new(&plan);
    let inputs = match &plan.work {
        Work::Images(inputs) => inputs,
        Work::Texts(texts) => {
            let Some(text) = &ready.loaded.text else {
                bail!(
                    "{}: the model has no text tower: --text needs an image-text model (CLIP, SigLIP)",
                    args.model.model
                );
            };
            for chunk in texts.chunks(args.batch_size) {
                let embeddings = text.embed(chunk)?.to_dtype(candle_core::DType::F32)?;
                for (line, row) in chunk.iter().zip(embeddings.to_vec2::<f32>()?) {
                    let mut row = row;
                    if args.normalize {
                        l2_normalize(&mut row);
                    }
                    let width = row.len();
                    rows.add(line.clone(), row, vec![width])?;
                }
            }
            rows.finish()?;
            return Ok(Outcome::Success);
        }
    };
    if plan.kind == EmbeddingKind::Class && !ready.loaded.config.variant.class_token {
        bail!(
            "{}: the model has no class token: use --pool auto or mean",
            args.model.model
        );
    }
    if plan.kind == EmbeddingKind::Class && ready.loaded.config.variant.adapter.is_some() {
        bail!(
            "{}: the model gives out its adapter's tokens, not its class token (one per tile): \
             use --pool tokens, mean or auto",
            args.model.model
        );
    }
    let model = Classifier::new(ready.loaded, ready.device, args.image_size)?;
    let progress = super::progress_bar(inputs.len());
    for chunk in inputs.chunks(args.batch_size) {
        let records = embed_chunk(&model, chunk, plan.kind, args.normalize);
        for (input, record) in chunk.iter().zip(records) {
            let file = input.path().display().to_string();
            match record {
                Ok((values, shape)) => rows.add(file, values, shape)?,
                Err(message) => {
                    progress.suspend(|| log!("vit: {file}: {message}"));
                    rows.fail(file, message)?;
                }
            }
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    let failures = rows.failed.len();
    rows.finish()?;
    Ok(match failures {
        0 => Outcome::Success,
        _ => Outcome::PartialFailure,
    })
}

/// One embedding (values and shape without the batch dimension), or why there is none.
type Record = std::result::Result<(Vec<f32>, Vec<usize>), String>;

/// Decodes a chunk in parallel and embeds the decodable images as one batch: one record
/// per input, in order.
fn embed_chunk(
    model: &Classifier,
    chunk: &[Input],
    kind: EmbeddingKind,
    normalize: bool,
) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::with_capacity(chunk.len());
    let mut ready = Vec::new();
    let mut slots = Vec::new();
    for prepared in model.prepare(chunk) {
        match prepared {
            Ok(pixels) => {
                slots.push(records.len());
                ready.push(pixels);
                records.push(Ok((Vec::new(), Vec::new())));
            }
            Err(err) => records.push(Err(super::one_line(&err))),
        }
    }
    if ready.is_empty() {
        return records;
    }
    let batch: Vec<_> = ready.iter().collect();
    match model.embeddings(&batch, kind) {
        Ok(embeddings) => {
            for (slot, (mut row, row_shape)) in slots.into_iter().zip(embeddings) {
                let width = *row_shape.last().unwrap_or(&1);
                if normalize {
                    row.chunks_mut(width).for_each(l2_normalize);
                }
                // Not-a-number is no embedding: an error for this input, never a row of
                // nulls with exit 0.
                records[slot] = match row.iter().position(|v| !v.is_finite()) {
                    Some(index) => Err(format!(
                        "the model gave a non-finite value ({}) at {index}",
                        row[index]
                    )),
                    None => Ok((row, row_shape)),
                };
            }
        }
        Err(err) => {
            let message = super::one_line(&err);
            for slot in slots {
                records[slot] = Err(message.clone());
            }
        }
    }
    records
}

/// The rows written so far: streamed for JSON lines and CSV, gathered for the arrays.
struct Rows {
    /// What names a row: `file` or `text`.
    key: &'static str,
    format: Format,
    output: Option<PathBuf>,
    /// Text lines bound for the output file (stdout gets them at once).
    text: Vec<u8>,
    values: Vec<f32>,
    row_shape: Option<Vec<usize>>,
    files: Vec<String>,
    failed: Vec<(String, String)>,
}

impl Rows {
    fn new(plan: &Plan) -> Self {
        Self {
            key: plan.work.key(),
            format: plan.format,
            output: plan.output.clone(),
            text: Vec::new(),
            values: Vec::new(),
            row_shape: None,
            files: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Text for the output: printed at once on stdout, else kept for the file.
    fn emit(&mut self, line: String) -> Result<()> {
        match self.output {
            Some(_) => {
                self.text.extend_from_slice(line.as_bytes());
                self.text.push(b'\n');
            }
            None => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()?;
            }
        }
        Ok(())
    }

    fn add(&mut self, file: String, values: Vec<f32>, shape: Vec<usize>) -> Result<()> {
        match &self.row_shape {
            None => {
                if self.format == Format::Csv {
                    let columns: Vec<String> = (0..values.len()).map(|i| i.to_string()).collect();
                    self.emit(format!("{},{}", self.key, columns.join(",")))?;
                }
                self.row_shape = Some(shape);
            }
            Some(first) if *first != shape => bail!(
                "{file}: embedding of shape {shape:?} after rows of {first:?}: the images \
                 preprocess to different sizes (use --image-size)"
            ),
            Some(_) => {}
        }
        match self.format {
            Format::Jsonl => self.emit(json!({self.key: file, "embedding": values}).to_string())?,
            Format::Csv => {
                let numbers: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                let line = format!("{},{}", super::csv_field(&file), numbers.join(","));
                self.emit(line)?;
            }
            Format::Npy | Format::Safetensors => self.values.extend_from_slice(&values),
        }
        self.files.push(file);
        Ok(())
    }

    fn fail(&mut self, file: String, message: String) -> Result<()> {
        if self.format == Format::Jsonl {
            self.emit(json!({"file": file, "error": message}).to_string())?;
        }
        self.failed.push((file, message));
        Ok(())
    }

    /// Writes the output file (through a temporary file and a rename).
    fn finish(self) -> Result<()> {
        let Some(path) = &self.output else {
            return Ok(());
        };
        let mut shape = vec![self.files.len()];
        shape.extend(self.row_shape.clone().unwrap_or_default());
        match self.format {
            Format::Jsonl | Format::Csv => write_file(path, &self.text)?,
            Format::Npy => {
                let mut list = path.as_os_str().to_owned();
                list.push(format!(".{}s.txt", self.key));
                write_file(
                    &PathBuf::from(list),
                    file_list(&self.files, &self.failed).as_bytes(),
                )?;
                write_file(path, &npy_bytes(&self.values, &shape))?;
            }
            Format::Safetensors => write_file(
                path,
                &safetensors_bytes(&self.values, &shape, self.key, &self.files, &self.failed)?,
            )?,
        }
        log!(
            "vit: wrote {} embeddings of shape {:?} to {}",
            self.files.len(),
            &shape[1..],
            path.display()
        );
        Ok(())
    }
}
