//! Gemini API: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` (SSE with `?alt=sse`, otherwise a JSON array sent
//! element by element), and Google's error shape.

use std::iter;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::{self, Knobs};
use crate::reply::{self, ContentPlan};
use crate::{auth, AppState};

/// A Google-style error response.
fn error_response(status: StatusCode, message: &str, kind: &str) -> Response {
    reply::json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message, "status": kind}}),
    )
}

#[derive(Deserialize)]
struct GenerateRequest {
    #[serde(default)]
    contents: Vec<Content>,
    #[serde(default, rename = "systemInstruction")]
    system_instruction: Option<Content>,
    #[serde(default)]
    mock: Option<Knobs>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Value>,
}

impl Content {
    fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| p.get("text")?.as_str())
            .collect()
    }
}

fn query_has(query: Option<&str>, pair: &str) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == pair))
}

/// `POST /v1beta/models/{model}:{method}`.
pub(crate) async fn models_action(
    State(cfg): State<AppState>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !auth::gemini(&headers, query.as_deref(), &cfg) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "API key not valid.",
            "UNAUTHENTICATED",
        );
    }
    let (model, streaming) = match rest.rsplit_once(':') {
        Some((model, "generateContent")) => (model, false),
        Some((model, "streamGenerateContent")) => (model, true),
        _ => {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("models/{rest} is not found or the method is not supported"),
                "NOT_FOUND",
            )
        }
    };
    let req = serde_json::from_slice::<GenerateRequest>(&body);
    let knobs = Knobs::from_headers(&headers).or(req.as_ref().ok().and_then(|r| r.mock));
    if let Some(resp) = knobs.before_response().await {
        return resp;
    }
    let req = match req {
        Ok(req) => req,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON payload received. {e}"),
                "INVALID_ARGUMENT",
            )
        }
    };
    let mut prompt_len = req
        .system_instruction
        .as_ref()
        .map_or(0, |c| c.text().len());
    let mut last_user = None;
    for c in &req.contents {
        let text = c.text();
        prompt_len += text.len();
        if !matches!(c.role.as_deref(), Some(r) if r != "user") {
            last_user = Some(text);
        }
    }
    let reply = reply::reply_text(last_user.as_deref().unwrap_or(""));
    let prompt_tokens = reply::tokens_for_len(prompt_len);
    let model = model.to_owned();

    if streaming {
        let plan = ContentPlan::new(reply, knobs.chunks(), knobs.chunk_bytes());
        let sse = query_has(query.as_deref(), "alt=sse");
        return stream(model, plan, prompt_tokens, sse, &knobs);
    }

    let body = reply::render_padded(&reply, knobs.response_bytes(), |text| {
        let usage = usage(prompt_tokens, reply::tokens_for_len(text.len()));
        serde_json::to_vec(&response(&model, text, true, Some(usage))).unwrap_or_default()
    });
    reply::json_bytes_response(StatusCode::OK, body)
}

fn usage(prompt: u64, candidates: u64) -> Value {
    json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
    })
}

/// One GenerateContentResponse.
fn response(model: &str, text: &str, last: bool, usage: Option<Value>) -> Value {
    let mut candidate = json!({
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    });
    if last {
        candidate["finishReason"] = json!("STOP");
    }
    let mut out = json!({"candidates": [candidate], "modelVersion": model});
    if let Some(usage) = usage {
        out["usageMetadata"] = usage;
    }
    out
}

/// The content chunks, then a final chunk with `finishReason` and
/// `usageMetadata`; as SSE events, or as the elements of a JSON array.
fn stream(
    model: String,
    plan: ContentPlan,
    prompt_tokens: u64,
    sse: bool,
    knobs: &Knobs,
) -> Response {
    let last = response(&model, "", true, Some(usage(prompt_tokens, plan.tokens())));
    let frame = move |value: &Value, first: bool| -> Bytes {
        if sse {
            reply::sse_data(value)
        } else {
            let mut buf = Vec::with_capacity(128);
            buf.extend_from_slice(if first { b"[" } else { b",\r\n" });
            let _ = serde_json::to_writer(&mut buf, value);
            Bytes::from(buf)
        }
    };
    let n = plan.len();
    let last = frame(&last, n == 0);
    let chunks = (0..n).map(move |i| frame(&response(&model, plan.piece(i), false, None), i == 0));
    let close = (!sse).then(|| Bytes::from_static(b"]"));
    let events = chunks.chain(iter::once(last)).chain(close);
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    reply::stream_response(content_type, faults::stream_body(Box::new(events), knobs))
}
