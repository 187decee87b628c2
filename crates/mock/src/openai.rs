//! OpenAI wire format: chat completions (JSON and SSE), embeddings, the model
//! list, the error shape, and the Azure OpenAI deployment routes that reuse
//! them (the deployment name stands in for the model).

use std::iter;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::faults::{self, Knobs};
use crate::reply::{self, ContentPlan};
use crate::{auth, AppState};

/// An OpenAI-style error response.
pub(crate) fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: &str,
) -> Response {
    reply::json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

pub(crate) fn unauthorized() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "Incorrect API key provided",
        "invalid_request_error",
        "invalid_api_key",
    )
}

pub(crate) fn bad_request(message: &str, code: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        code,
    )
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    mock: Option<Knobs>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Usage {
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(cfg): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut resp = chat(&cfg, &headers, &body, None).await;
    // As OpenAI does: its id for the exchange, which a relay must not lose.
    if let Ok(id) = http::HeaderValue::from_str(&reply::next_id("req_")) {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp
}

/// `POST /openai/deployments/{deployment}/chat/completions` (Azure).
pub(crate) async fn azure_chat_completions(
    State(cfg): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    chat(&cfg, &headers, &body, Some(deployment)).await
}

async fn chat(
    cfg: &crate::MockConfig,
    headers: &HeaderMap,
    body: &[u8],
    deployment: Option<String>,
) -> Response {
    if !auth::openai(headers, cfg) {
        return unauthorized();
    }
    let req = serde_json::from_slice::<ChatRequest>(body);
    let knobs = Knobs::from_headers(headers).or(req.as_ref().ok().and_then(|r| r.mock));
    if let Some(resp) = knobs.before_response().await {
        return resp;
    }
    let req = match req {
        Ok(req) => req,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}"), "invalid_json"),
    };
    let Some(model) = req.model.or(deployment) else {
        return bad_request("you must provide a model parameter", "missing_model");
    };
    let mut prompt_len = 0;
    let mut last_user = None;
    for m in &req.messages {
        let text = reply::content_text(m.content.as_ref());
        prompt_len += text.len();
        if m.role == "user" {
            last_user = Some(text);
        }
    }
    let reply = reply::reply_text(last_user.as_deref().unwrap_or(""));
    let prompt_tokens = reply::tokens_for_len(prompt_len);
    let id = reply::next_id("chatcmpl-mock-");
    let created = reply::unix_now();

    if req.stream == Some(true) {
        let include_usage = req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let plan = ContentPlan::new(reply, knobs.chunks(), knobs.chunk_bytes());
        return stream(
            id,
            created,
            model,
            plan,
            include_usage,
            prompt_tokens,
            &knobs,
        );
    }

    let body = reply::render_padded(&reply, knobs.response_bytes(), |content| {
        let completion = Completion {
            id: &id,
            object: "chat.completion",
            created,
            model: &model,
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: "stop",
            }],
            usage: Usage::new(prompt_tokens, reply::tokens_for_len(content.len())),
        };
        serde_json::to_vec(&completion).unwrap_or_default()
    });
    reply::json_bytes_response(StatusCode::OK, body)
}

/// The SSE answer: a role chunk, the content chunks, a finish chunk, the
/// usage chunk if asked for, then `[DONE]`.
fn stream(
    id: String,
    created: u64,
    model: String,
    plan: ContentPlan,
    include_usage: bool,
    prompt_tokens: u64,
    knobs: &Knobs,
) -> Response {
    let usage = Usage::new(prompt_tokens, plan.tokens());
    let usage_chunk = include_usage.then(|| {
        reply::sse_data(&Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
            choices: &[],
            usage: Some(usage),
        })
    });
    let encode = move |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        reply::sse_data(&Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
            choices: &[ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        })
    };
    let first = encode(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    );
    let finish = encode(
        Delta {
            role: None,
            content: None,
        },
        Some("stop"),
    );
    let content = (0..plan.len()).map(move |i| {
        encode(
            Delta {
                role: None,
                content: Some(plan.piece(i)),
            },
            None,
        )
    });
    let events = iter::once(first)
        .chain(content)
        .chain(iter::once(finish))
        .chain(usage_chunk)
        .chain(iter::once(Bytes::from_static(b"data: [DONE]\n\n")));
    reply::stream_response(
        "text/event-stream",
        faults::stream_body(Box::new(events), knobs),
    )
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Value,
    /// `"float"` (the default) or `"base64"`: the vector's little-endian
    /// `f32` bytes, base64-encoded, which some SDK versions ask for by default.
    #[serde(default)]
    encoding_format: Option<String>,
    /// Length of each vector (OpenAI's `dimensions`); default 8.
    #[serde(default)]
    dimensions: Option<u64>,
}

/// Default dimensions of the mock embeddings.
const EMBEDDING_DIMS: usize = 8;

/// The largest `dimensions` the mock accepts (OpenAI's largest model has 3072).
const MAX_EMBEDDING_DIMS: u64 = 3072;

/// A deterministic vector of `dims` values for `text` (FNV-1a seeded, values
/// in [-1, 1]).
fn embed(text: &[u8], dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..dims)
        .map(|_| {
            h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The vector as OpenAI sends it for `encoding_format: "base64"`.
fn embedding_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(cfg): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    embed_route(&cfg, &headers, &body, None).await
}

/// `POST /openai/deployments/{deployment}/embeddings` (Azure).
pub(crate) async fn azure_embeddings(
    State(cfg): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    embed_route(&cfg, &headers, &body, Some(deployment)).await
}

async fn embed_route(
    cfg: &crate::MockConfig,
    headers: &HeaderMap,
    body: &[u8],
    deployment: Option<String>,
) -> Response {
    if !auth::openai(headers, cfg) {
        return unauthorized();
    }
    if let Some(resp) = Knobs::from_headers(headers).before_response().await {
        return resp;
    }
    let req: EmbeddingsRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}"), "invalid_json"),
    };
    let Some(model) = req.model.or(deployment) else {
        return bad_request("you must provide a model parameter", "missing_model");
    };
    // A string, an array of strings, a token array, or an array of token arrays.
    let inputs: Vec<Vec<u8>> = match &req.input {
        Value::String(s) => vec![s.as_bytes().to_vec()],
        Value::Array(items) if items.iter().all(Value::is_number) => {
            vec![req.input.to_string().into_bytes()]
        }
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.as_bytes().to_vec(),
                other => other.to_string().into_bytes(),
            })
            .collect(),
        _ => return bad_request("'input' is a required property", "missing_input"),
    };
    let as_base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad_request(
                &format!("'{other}' is not one of ['float', 'base64'] - 'encoding_format'"),
                "invalid_value",
            )
        }
    };
    let dims = match req.dimensions {
        None => EMBEDDING_DIMS,
        Some(d @ 1..=MAX_EMBEDDING_DIMS) => d as usize,
        Some(d) => {
            return bad_request(
                &format!("dimensions must be between 1 and {MAX_EMBEDDING_DIMS}, got {d}"),
                "invalid_value",
            )
        }
    };
    let prompt_len: usize = inputs.iter().map(Vec::len).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let vector = embed(text, dims);
            let embedding = if as_base64 {
                Value::String(embedding_base64(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = reply::tokens_for_len(prompt_len);
    reply::json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

#[derive(Deserialize)]
struct ImagesRequest {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    response_format: Option<String>,
}

/// A 1×1 transparent PNG: what `b64_json` images decode to.
const PIXEL_PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// `POST /v1/images/generations`: `n` (1–10) fake images, as URLs or
/// (`response_format: "b64_json"`) a 1×1 PNG.
pub(crate) async fn images_generations(
    State(cfg): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !auth::openai(&headers, &cfg) {
        return unauthorized();
    }
    if let Some(resp) = Knobs::from_headers(&headers).before_response().await {
        return resp;
    }
    let req: ImagesRequest = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}"), "invalid_json"),
    };
    let Some(prompt) = req.prompt.filter(|p| !p.is_empty()) else {
        return bad_request("'prompt' is a required property", "missing_prompt");
    };
    let n = req.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return bad_request("'n' must be between 1 and 10", "invalid_n");
    }
    let b64 = req.response_format.as_deref() == Some("b64_json");
    let data: Vec<Value> = (0..n)
        .map(|i| {
            if b64 {
                json!({"b64_json": PIXEL_PNG_B64, "revised_prompt": prompt})
            } else {
                json!({"url": format!("https://images.mock.invalid/{i}.png"), "revised_prompt": prompt})
            }
        })
        .collect();
    reply::json_response(
        StatusCode::OK,
        &json!({"created": 1_700_000_000, "data": data}),
    )
}

/// Models listed by `GET /v1/models`.
const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o4-mini",
    "text-embedding-3-small",
];

/// `GET /v1/models`.
pub(crate) async fn models(State(cfg): State<AppState>, headers: HeaderMap) -> Response {
    if !auth::openai(&headers, &cfg) {
        return unauthorized();
    }
    if let Some(resp) = Knobs::from_headers(&headers).before_response().await {
        return resp;
    }
    let data: Vec<Value> = MODELS.iter().map(|id| model_object(id)).collect();
    reply::json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{model}`: one model of [`MODELS`], else OpenAI's 404.
pub(crate) async fn model(
    State(cfg): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !auth::openai(&headers, &cfg) {
        return unauthorized();
    }
    if let Some(resp) = Knobs::from_headers(&headers).before_response().await {
        return resp;
    }
    if !MODELS.contains(&id.as_str()) {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("The model '{id}' does not exist"),
            "invalid_request_error",
            "model_not_found",
        );
    }
    reply::json_response(StatusCode::OK, &model_object(&id))
}

/// One entry of the model list, as OpenAI writes it.
fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "relayapi-mock"})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn embeddings_are_deterministic_and_bounded() {
        let a = embed(b"hello", EMBEDDING_DIMS);
        assert_eq!(a, embed(b"hello", EMBEDDING_DIMS));
        assert_ne!(a, embed(b"hellp", EMBEDDING_DIMS));
        assert_eq!(a.len(), EMBEDDING_DIMS);
        assert_eq!(embed(b"hello", 3).len(), 3);
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn base64_embeddings_are_the_little_endian_f32_bytes() {
        let vector = embed(b"hello", EMBEDDING_DIMS);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(embedding_base64(&vector))
            .expect("valid base64");
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(decoded, vector);
    }
}
