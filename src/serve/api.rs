//! The requests and answers of `vit serve`: OpenAI's embeddings shape, the classify endpoint,
//! and OpenAI's error object.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// An error answer: `{"error": {"message", "type", "code"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: &'static str,
    /// Seconds a client should wait before trying again (503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code,
            retry_after: None,
        }
    }

    /// A request that cannot be read: bad JSON (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// A field of the wrong type or value (422).
    pub fn bad_field(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            status if status.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind(), "code": self.code}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// One input of a request: an image's bytes, or a text.
#[derive(Debug)]
pub enum Item {
    Image(Vec<u8>),
    Text(String),
}

/// `POST /v1/embeddings`: OpenAI's request, plus `pool` and `normalize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub input: Value,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
    /// `image` (default) or `text`: what plain strings in `input` are.
    #[serde(default)]
    pub modality: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub normalize: bool,
}

/// `POST /v1/classify` (its default: a raw image body's, every option unset).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    pub input: Value,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
}

/// The items of an `input`: a string or a list of strings and `{"type": "text"|"image_url",
/// ...}` objects; plain strings are images (a `data:` URI or bare base64) unless
/// `strings_are_text`.
pub fn items(input: &Value, strings_are_text: bool) -> Result<Vec<Item>, ApiError> {
    let list: Vec<&Value> = match input {
        Value::Array(values) => values.iter().collect(),
        Value::Null => return Err(ApiError::bad_field("`input` is missing")),
        value => vec![value],
    };
    if list.is_empty() {
        return Err(ApiError::bad_field("`input` is empty"));
    }
    list.iter()
        .enumerate()
        .map(|(index, value)| item(value, strings_are_text).map_err(|e| e.at(index)))
        .collect()
}

/// Why one input is unreadable, before its index is known.
struct ItemError(String);

impl ItemError {
    fn at(self, index: usize) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_image",
            format!("input {index}: {}", self.0),
        )
    }
}

fn item(value: &Value, strings_are_text: bool) -> Result<Item, ItemError> {
    match value {
        Value::String(text) if strings_are_text => Ok(Item::Text(text.clone())),
        Value::String(encoded) => image_bytes(encoded).map(Item::Image),
        Value::Object(object) => match object.get("type").and_then(Value::as_str) {
            Some("text") => match object.get("text") {
                Some(Value::String(text)) => Ok(Item::Text(text.clone())),
                _ => Err(ItemError("a text item needs a string `text`".into())),
            },
            Some("image_url") | Some("image") => {
                let url = object
                    .get("image_url")
                    .map(|u| u.get("url").unwrap_or(u))
                    .or_else(|| object.get("image"));
                match url {
                    Some(Value::String(encoded)) => image_bytes(encoded).map(Item::Image),
                    _ => Err(ItemError("an image item needs a data URI or base64".into())),
                }
            }
            _ => Err(ItemError(
                "an item's `type` is `text` or `image_url`".into(),
            )),
        },
        _ => Err(ItemError("an input is a string or an item object".into())),
    }
}

/// An image's bytes from a `data:` URI (base64) or bare base64.
fn image_bytes(encoded: &str) -> Result<Vec<u8>, ItemError> {
    let payload = match encoded.strip_prefix("data:") {
        Some(uri) => match uri.split_once(',') {
            Some((header, data)) if header.ends_with(";base64") => data,
            Some(_) => return Err(ItemError("a data URI must be base64-encoded".into())),
            None => return Err(ItemError("a data URI without data".into())),
        },
        None if encoded.starts_with("http://") || encoded.starts_with("https://") => {
            return Err(ItemError(
                "URLs are not fetched: send the image as a data URI or base64".into(),
            ))
        }
        None => encoded,
    };
    let payload: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(payload.as_bytes())
        .map_err(|e| ItemError(format!("not base64: {e}")))
}

/// The embeddings answer, OpenAI's shape.
pub fn embeddings_response(
    rows: &[Vec<f32>],
    model: &str,
    base64: bool,
    images: usize,
    text_tokens: usize,
) -> Value {
    let data: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let embedding = match base64 {
                true => {
                    let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                false => json!(row),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"images": images, "prompt_tokens": text_tokens, "total_tokens": text_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_data_uris_bare_base64_or_items() {
        let input = json!([
            "data:image/png;base64,AAEC",
            "AAEC",
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAEC"}},
            {"type": "text", "text": "a cat"},
        ]);
        let parsed = items(&input, false).unwrap();
        assert_eq!(parsed.len(), 4);
        for item in &parsed[..3] {
            assert!(matches!(item, Item::Image(bytes) if bytes == &[0, 1, 2]));
        }
        assert!(matches!(&parsed[3], Item::Text(t) if t == "a cat"));
        assert!(matches!(&items(&json!("a dog"), true).unwrap()[0], Item::Text(t) if t == "a dog"));
    }

    #[test]
    fn bad_inputs_name_their_index() {
        for (input, message) in [
            (json!(["AAEC", "!!"]), "input 1: not base64"),
            (
                json!(["http://example.com/cat.jpg"]),
                "input 0: URLs are not fetched",
            ),
            (json!([{"type": "audio"}]), "input 0: an item's `type`"),
            (json!([3]), "input 0: an input is a string"),
        ] {
            let err = items(&input, false).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with(message), "{}", err.message);
        }
        assert_eq!(
            items(&json!([]), false).unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn base64_embeddings_are_little_endian_floats() {
        let answer = embeddings_response(&[vec![1.0, -2.5]], "m", true, 1, 0);
        let encoded = answer["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let values: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, [1.0, -2.5]);
        assert_eq!(answer["usage"]["images"], 1);
    }
}
