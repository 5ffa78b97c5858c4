//! `vit serve`: the model over HTTP until SIGTERM or SIGINT (see [`vit::serve`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use vit::classifier::Classifier;
use vit::model::AttentionKernel;
use vit::serve::{LogFormat, ServeOptions};

use super::{ModelArgs, Outcome};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default; elsewhere, set a key).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The most images the model runs at once.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long a batch waits for more requests after its first, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Images waiting or running at most; beyond, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// The largest request body, in MB (413 beyond).
    #[arg(long, default_value_t = 20)]
    max_body_mb: usize,
    /// The longest a request's body may take to arrive, in seconds (408 beyond).
    #[arg(long, default_value_t = 60)]
    body_timeout_s: u64,
    /// A file holding the bearer key requests must carry (or VIT_API_KEY).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// CPU threads for the model [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Square input size [default: the model's preprocessing].
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// One line per request on stderr, as text or JSON.
    #[arg(long, value_enum, default_value_t = LogArg::Json)]
    log_format: LogArg,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogArg {
    Text,
    Json,
}

/// The checked arguments.
struct Plan {
    address: SocketAddr,
    api_key: Option<String>,
}

fn plan(args: &ServeArgs) -> Result<Plan> {
    if args.max_batch == 0 || args.queue == 0 || args.max_body_mb == 0 {
        bail!("--max-batch, --queue and --max-body-mb must be at least 1");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let api_key = match (&args.api_key_file, std::env::var("VIT_API_KEY")) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("{}: cannot read the API key", file.display()))?;
            Some(text.trim().to_string())
        }
        (None, Ok(key)) => Some(key.trim().to_string()),
        (None, Err(_)) => None,
    };
    if api_key.as_deref() == Some("") {
        bail!("the API key is empty");
    }
    let address = SocketAddr::new(args.host, args.port);
    if !args.host.is_loopback() && api_key.is_none() {
        log!(
            "vit: warning: serving on {address} without an API key: anyone who can reach it can \
             use it (--api-key-file or VIT_API_KEY)"
        );
    }
    Ok(Plan { address, api_key })
}

pub fn run(args: ServeArgs) -> Result<Outcome> {
    let plan = plan(&args)?;
    if let Some(threads) = args.threads {
        super::set_threads(threads)?;
    }
    let mut ready = args.model.load(AttentionKernel::Standard)?;
    let text = ready.loaded.text.take();
    let layout = ready.loaded.layout.name();
    let int8 = ready.loaded.int8.runs_int8();
    let classifier = Classifier::new(ready.loaded, ready.device, args.image_size)?;
    let config = &classifier.config;
    let info = json!({
        "model": args.model.model,
        "layout": layout,
        "dtype": if int8 { "int8" } else { classifier.model.dtype().as_str() },
        "device": vit::device::device_name(&classifier.device),
        "image_size": classifier.preprocess.output_size(640, 480),
        "patch_size": config.patch_size,
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "labels": classifier.labels().len(),
        "image_text": text.is_some(),
    });
    let options = ServeOptions {
        address: plan.address,
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue,
        max_body_bytes: args.max_body_mb << 20,
        body_timeout: Duration::from_secs(args.body_timeout_s.max(1)),
        api_key: plan.api_key,
        decode_threads: args.threads.unwrap_or_else(rayon::current_num_threads),
        log: match args.log_format {
            LogArg::Text => LogFormat::Text,
            LogArg::Json => LogFormat::Json,
        },
        info,
        model_name: args.model.model.clone(),
    };
    vit::serve::run(classifier, text, options, |address| {
        log!("vit: serving on http://{address}");
    })?;
    Ok(Outcome::Success)
}
