//! `vit serve`: image classification and embeddings over HTTP (axum on tokio), batched across
//! requests by one thread that owns the model ([`batcher`]); images decoded and preprocessed
//! on a separate pool, never on the async runtime's threads.

pub mod api;
pub mod batcher;
mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::classifier::{top_k, Classifier, ScoreFunction};
use crate::embeddings::l2_normalize;
use crate::model::{EmbeddingKind, TextTower};
use crate::preprocess::{decode_rgb, PixelValues};
use api::{ApiError, ClassifyRequest, EmbeddingsRequest, Item};
use batcher::{Batcher, Refused, Rows, Ticket, Work};
use metrics::Metrics;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub address: SocketAddr,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Places in the queue (images).
    pub queue: usize,
    pub max_body_bytes: usize,
    /// The longest a request's body may take to arrive (408 beyond): a client that sends a
    /// byte a second holds its own connection this long, nothing else.
    pub body_timeout: Duration,
    /// The bearer key requests must carry, when set.
    pub api_key: Option<String>,
    /// Threads that decode and preprocess images.
    pub decode_threads: usize,
    pub log: LogFormat,
    /// What `/info` says of the model (name, layout, dtype, device, sizes).
    pub info: Value,
    /// The model's name in answers.
    pub model_name: String,
}

/// How each request is logged on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What every handler shares.
struct App {
    batcher: Batcher,
    classifier_labels: Vec<String>,
    has_head: bool,
    has_text: bool,
    /// The image-text model's score function for zero-shot labels.
    zero_shot_function: Option<ScoreFunction>,
    preprocess: crate::preprocess::PreprocessConfig,
    decode: rayon::ThreadPool,
    options: ServeOptions,
    metrics: Metrics,
    /// Set once SIGTERM or SIGINT arrives: `/health` answers 503.
    draining: AtomicBool,
}

/// Serves `classifier` (and the text tower of an image-text model) until SIGTERM or SIGINT,
/// then drains: no new connections, every accepted request answered. `ready` hears the bound
/// address once the server listens.
pub fn run(
    classifier: Classifier,
    text: Option<TextTower>,
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vit-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let decode = rayon::ThreadPoolBuilder::new()
        .num_threads(options.decode_threads.max(1))
        .thread_name(|i| format!("vit-decode-{i}"))
        .build()
        .context("cannot start the decoding threads")?;
    let metrics = Metrics::default();
    let batch_metrics = metrics.clone();
    let app = Arc::new(App {
        classifier_labels: classifier.labels().to_vec(),
        has_head: classifier.model.has_head(),
        has_text: text.is_some(),
        zero_shot_function: text
            .as_ref()
            .map(|t| crate::zero_shot::score_function(t.config.loss)),
        preprocess: classifier.preprocess.clone(),
        batcher: Batcher::start(
            classifier,
            text,
            options.max_batch,
            options.max_wait,
            options.queue,
            move |report| batch_metrics.batch(report.images),
        ),
        decode,
        metrics,
        draining: AtomicBool::new(false),
        options,
    });
    runtime.block_on(serve(app, ready))
}

async fn serve(app: Arc<App>, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(app.options.address)
        .await
        .with_context(|| format!("cannot listen on {}", app.options.address))?;
    let address = listener.local_addr()?;
    let router = Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics_text))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/classify", post(classify))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), around))
        .with_state(app.clone());
    ready(address);
    let draining = app.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            draining.draining.store(true, Ordering::SeqCst);
            crate::kernels::warn(format_args!(
                "vit: draining: answering accepted requests, then exiting"
            ));
        })
        .await
        .context("the server stopped")
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM can be handled");
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Every request: the key checked (all but `/health`), then metrics and one log line.
async fn around(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_string();
    let method = request.method().to_string();
    let response = match authorized(&app, &path, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    };
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    let endpoint = match path.as_str() {
        "/health" | "/info" | "/metrics" | "/v1/embeddings" | "/v1/classify" => path.as_str(),
        _ => "other",
    };
    app.metrics.request(endpoint, status, seconds);
    let line = match app.options.log {
        LogFormat::Json => json!({
            "time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
            "method": method,
            "path": path,
            "status": status,
            "ms": (seconds * 1e6).round() / 1e3,
        })
        .to_string(),
        LogFormat::Text => format!("{method} {path} {status} {:.1} ms", seconds * 1e3),
    };
    crate::kernels::warn(format_args!("{line}"));
    response
}

/// The bearer key, compared in constant time; never logged.
fn authorized(app: &App, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.options.api_key else {
        return Ok(());
    };
    if path == "/health" {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match constant_time_eq(given.as_bytes(), key.as_bytes()) {
        true => Ok(()),
        false => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "a missing or wrong API key (Authorization: Bearer KEY)",
        )),
    }
}

/// Whether `a` equals `b`, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.draining.load(Ordering::SeqCst) {
        false => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        true => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response(),
    }
}

async fn info(State(app): State<Arc<App>>) -> Json<Value> {
    let mut info = app.options.info.clone();
    info["limits"] = json!({
        "max_batch": app.options.max_batch,
        "max_wait_ms": app.options.max_wait.as_secs_f64() * 1e3,
        "queue": app.options.queue,
        "max_body_bytes": app.options.max_body_bytes,
    });
    Json(info)
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.prometheus(app.batcher.depth());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The body, at most the limit (413 beyond it) and within the body timeout (408 beyond).
async fn body_bytes(app: &App, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = app.options.max_body_bytes;
    let read = tokio::time::timeout(app.options.body_timeout, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s",
                app.options.body_timeout.as_secs_f64()
            ),
        ));
    };
    read.map_err(|err| {
        // axum's error wraps http-body-util's LengthLimitError, known by its message (the
        // crate is not a dependency of ours).
        let too_large = std::error::Error::source(&err)
            .is_some_and(|cause| cause.to_string() == "length limit exceeded");
        match too_large {
            true => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over {limit} bytes"),
            ),
            false => ApiError::bad_request(format!("cannot read the body: {err}")),
        }
    })
}

/// A JSON body as `T`: bad JSON is 400, a bad field 422.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => ApiError::bad_field(err.to_string()),
        _ => ApiError::bad_request(format!("the body is not JSON: {err}")),
    })
}

/// Decodes and preprocesses images on the decoding pool, each error naming its input's
/// index; a panic there is this request's 500.
async fn pixel_values(
    app: &Arc<App>,
    images: Vec<(usize, Vec<u8>)>,
) -> Result<Vec<PixelValues>, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let worker = app.clone();
    app.decode.spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            use rayon::prelude::*;
            images
                .par_iter()
                .map(|(index, bytes)| {
                    decode_rgb(bytes)
                        .map(|image| worker.preprocess.pixel_values(&image))
                        .map_err(|err| {
                            ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_image",
                                format!("input {index}: {}", crate::one_line(&err)),
                            )
                        })
                })
                .collect::<Result<Vec<_>, ApiError>>()
        }));
        let _ = reply.send(result.unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "decoding an image panicked",
            ))
        }));
    });
    let pixels = answer.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the decoding threads stopped",
        )
    })??;
    if pixels.iter().any(|p| p.tiles != 1) {
        return Err(ApiError::bad_field(
            "images cut into tiles are not served (use vit embed)",
        ));
    }
    Ok(pixels)
}

/// Takes `places` in the queue before any work: a full queue is 503 with `Retry-After`.
fn reserve(app: &App, places: usize) -> Result<Ticket, ApiError> {
    app.batcher
        .reserve(places)
        .map_err(|refused| refused_error(app, refused))
}

fn refused_error(app: &App, refused: Refused) -> ApiError {
    match refused {
        Refused::Full => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!(
                    "the queue is full ({} images): try again",
                    app.options.queue
                ),
            )
        },
        Refused::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the model's thread has stopped",
        ),
    }
}

/// Queues work on its reserved places and waits for its rows.
async fn run_work(app: &App, ticket: Ticket, work: Work) -> Result<Vec<Vec<f32>>, ApiError> {
    let answer = app
        .batcher
        .submit(ticket, work)
        .map_err(|refused| refused_error(app, refused))?;
    let rows: Rows = answer.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the model's thread dropped the request",
        )
    })?;
    rows.map_err(|message| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", message))
}

async fn embeddings(State(app): State<Arc<App>>, body: Body) -> Result<Json<Value>, ApiError> {
    let bytes = body_bytes(&app, body).await?;
    let request: EmbeddingsRequest = parse(&bytes)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_field(format!(
                "`encoding_format` is `float` or `base64`, not `{other}`"
            )))
        }
    };
    let strings_are_text = match request.modality.as_deref() {
        None | Some("image") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::bad_field(format!(
                "`modality` is `image` or `text`, not `{other}`"
            )))
        }
    };
    let kind = match request.pool.as_deref() {
        None | Some("auto") => EmbeddingKind::Auto,
        Some("cls") => EmbeddingKind::Class,
        Some("mean") => EmbeddingKind::Mean,
        Some(other) => {
            return Err(ApiError::bad_field(format!(
                "`pool` is `auto`, `cls` or `mean`, not `{other}`"
            )))
        }
    };
    let items = api::items(&request.input, strings_are_text)?;
    let (mut images, mut texts) = (Vec::new(), Vec::new());
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Item::Image(bytes) => images.push((index, bytes)),
            Item::Text(text) => texts.push((index, text)),
        }
    }
    if !texts.is_empty() && !app.has_text {
        return Err(ApiError::bad_field(
            "text inputs need an image-text model (CLIP, SigLIP)",
        ));
    }
    if !texts.is_empty() && kind != EmbeddingKind::Auto {
        return Err(ApiError::bad_field("`pool` applies to images only"));
    }
    let count = images.len() + texts.len();
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; count];
    let image_count = images.len();
    if !images.is_empty() {
        let ticket = reserve(&app, images.len())?;
        let indices: Vec<usize> = images.iter().map(|(index, _)| *index).collect();
        let pixels = pixel_values(&app, images).await?;
        let embedded = run_work(
            &app,
            ticket,
            Work::Embed {
                images: pixels,
                kind,
            },
        )
        .await?;
        for (index, row) in indices.into_iter().zip(embedded) {
            rows[index] = Some(row);
        }
    }
    let mut text_tokens = 0;
    if !texts.is_empty() {
        text_tokens = texts
            .iter()
            .map(|(_, t)| t.split_whitespace().count())
            .sum();
        let indices: Vec<usize> = texts.iter().map(|(index, _)| *index).collect();
        let ticket = reserve(&app, 1)?;
        let embedded = run_work(
            &app,
            ticket,
            Work::Texts(texts.into_iter().map(|(_, t)| t).collect()),
        )
        .await?;
        for (index, row) in indices.into_iter().zip(embedded) {
            rows[index] = Some(row);
        }
    }
    let mut rows: Vec<Vec<f32>> = rows.into_iter().map(Option::unwrap_or_default).collect();
    if let Some(dimensions) = request.dimensions {
        // `input` is never empty: every row has the model's width.
        let width = rows[0].len();
        if dimensions != width {
            return Err(ApiError::bad_field(format!(
                "`dimensions` {dimensions}: the model's embeddings have {width}"
            )));
        }
    }
    if request.normalize {
        rows.iter_mut().for_each(|row| l2_normalize(row));
    }
    app.metrics.images(image_count);
    let model = request
        .model
        .unwrap_or_else(|| app.options.model_name.clone());
    Ok(Json(api::embeddings_response(
        &rows,
        &model,
        base64,
        image_count,
        text_tokens,
    )))
}

async fn classify(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let raw_image = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("image/") || t == "application/octet-stream");
    let bytes = body_bytes(&app, body).await?;
    let request: ClassifyRequest = match raw_image {
        true => ClassifyRequest::default(),
        false => parse(&bytes)?,
    };
    let images: Vec<(usize, Vec<u8>)> = match raw_image {
        true => vec![(0, bytes.to_vec())],
        false => api::items(&request.input, false)?
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Item::Image(bytes) => Ok((index, bytes)),
                Item::Text(_) => Err(ApiError::bad_field(format!(
                    "input {index}: classify takes images"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    let labels = match (&request.labels, &request.template) {
        (Some(labels), template) => {
            if !app.has_text {
                return Err(ApiError::bad_field(
                    "`labels` need an image-text model (CLIP, SigLIP)",
                ));
            }
            let template = template
                .clone()
                .unwrap_or_else(|| crate::zero_shot::DEFAULT_TEMPLATE.to_string());
            let labels: Vec<String> = labels.iter().map(|l| l.trim().to_string()).collect();
            crate::zero_shot::label_texts(&labels, &template)
                .map_err(|e| ApiError::bad_field(crate::one_line(&e)))?;
            Some((labels, template))
        }
        (None, Some(_)) => return Err(ApiError::bad_field("`template` needs `labels`")),
        (None, None) => None,
    };
    if labels.is_none() && (app.has_text || !app.has_head) {
        return Err(ApiError::bad_field(match app.has_text {
            true => "an image-text model classifies into zero-shot `labels`: give them",
            false => "the model has no classification head (a backbone): use /v1/embeddings",
        }));
    }
    // The zero-shot labels are kept here (the model's thread takes its own), the model's
    // own are borrowed.
    let zero_shot_names = labels.as_ref().map(|(labels, _)| labels.clone());
    let names: &[String] = zero_shot_names.as_deref().unwrap_or(&app.classifier_labels);
    let function = match request.function.as_deref() {
        None => match (&labels, app.zero_shot_function) {
            (Some(_), Some(function)) => function,
            _ => ScoreFunction::default_for(names.len()),
        },
        Some("softmax") => ScoreFunction::Softmax,
        Some("sigmoid") => ScoreFunction::Sigmoid,
        Some("none") => ScoreFunction::None,
        Some(other) => {
            return Err(ApiError::bad_field(format!(
                "`function` is `softmax`, `sigmoid` or `none`, not `{other}`"
            )))
        }
    };
    let k = match request.top_k {
        Some(0) => return Err(ApiError::bad_field("`top_k` must be at least 1")),
        Some(k) => k.min(names.len()),
        None => 5.min(names.len()),
    };
    let image_count = images.len();
    let ticket = reserve(&app, image_count)?;
    let pixels = pixel_values(&app, images).await?;
    let rows = run_work(
        &app,
        ticket,
        Work::Logits {
            images: pixels,
            labels,
        },
    )
    .await?;
    app.metrics.images(image_count);
    let results: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(index, logits)| {
            let scores = function.apply(logits);
            json!({"index": index, "predictions": top_k(&scores, names, k)})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": results})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
