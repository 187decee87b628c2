//! Anthropic Messages API: `POST /v1/messages`, JSON and SSE
//! (`message_start`, `content_block_start`, `content_block_delta`…,
//! `content_block_stop`, `message_delta`, `message_stop`), and its error shape.

use std::iter;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::{self, Knobs};
use crate::reply::{self, ContentPlan};
use crate::{auth, AppState};

/// An Anthropic-style error response.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    reply::json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

#[derive(Deserialize)]
struct MessagesRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    mock: Option<Knobs>,
}

#[derive(Deserialize)]
struct InMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(cfg): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !auth::anthropic(&headers, &cfg) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        );
    }
    if !headers.contains_key("anthropic-version") {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let req = serde_json::from_slice::<MessagesRequest>(&body);
    let knobs = Knobs::from_headers(&headers).or(req.as_ref().ok().and_then(|r| r.mock));
    if let Some(resp) = knobs.before_response().await {
        return resp;
    }
    let req = match req {
        Ok(req) => req,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON body: {e}"),
            )
        }
    };
    let Some(model) = req.model else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model: Field required",
        );
    };
    let mut prompt_len = reply::content_text(req.system.as_ref()).len();
    let mut last_user = None;
    for m in &req.messages {
        let text = reply::content_text(m.content.as_ref());
        prompt_len += text.len();
        if m.role == "user" {
            last_user = Some(text);
        }
    }
    let reply = reply::reply_text(last_user.as_deref().unwrap_or(""));
    let input_tokens = reply::tokens_for_len(prompt_len);
    let id = reply::next_id("msg_mock_");

    if req.stream == Some(true) {
        let plan = ContentPlan::new(reply, knobs.chunks(), knobs.chunk_bytes());
        return stream(id, model, plan, input_tokens, &knobs);
    }

    let body = reply::render_padded(&reply, knobs.response_bytes(), |text| {
        serde_json::to_vec(&json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": reply::tokens_for_len(text.len())},
        }))
        .unwrap_or_default()
    });
    reply::json_bytes_response(StatusCode::OK, body)
}

fn stream(
    id: String,
    model: String,
    plan: ContentPlan,
    input_tokens: u64,
    knobs: &Knobs,
) -> Response {
    let start = reply::sse_event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }}),
    );
    let block_start = reply::sse_event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    let block_stop = reply::sse_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    );
    let message_delta = reply::sse_event(
        "message_delta",
        &json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": plan.tokens()}}),
    );
    let stop = reply::sse_event("message_stop", &json!({"type": "message_stop"}));
    let deltas = (0..plan.len()).map(move |i| {
        reply::sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": plan.piece(i)}}),
        )
    });
    let events = iter::once(start)
        .chain(iter::once(block_start))
        .chain(deltas)
        .chain([block_stop, message_delta, stop]);
    reply::stream_response(
        "text/event-stream",
        faults::stream_body(Box::new(events), knobs),
    )
}
