//! OpenAI Responses API: `POST /v1/responses`, JSON and SSE.
//!
//! The reply text, token estimates, knobs and stream framing are chat's
//! (`reply`, `faults`); only the envelope differs. A stream is the named
//! events OpenAI sends for one text message: `response.created`,
//! `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, N × `response.output_text.delta`,
//! `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, `response.completed`; every payload has its
//! `type` and a `sequence_number` counting from 0.

use std::iter;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::faults::{self, Knobs};
use crate::openai::{bad_request, unauthorized};
use crate::reply::{self, ContentPlan};
use crate::{auth, AppState};

#[derive(Deserialize)]
struct ResponsesRequest {
    #[serde(default)]
    model: Option<String>,
    /// A string (one user message) or an array of input items.
    #[serde(default)]
    input: Option<Value>,
    /// A system message that is not an input item; echoed in the answer.
    #[serde(default)]
    instructions: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    /// Echoed, as OpenAI does (the relay's budget reads it from the request).
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    mock: Option<Knobs>,
}

/// What the answer is built from.
struct Prompt {
    /// Bytes of text over the instructions and every input item.
    len: usize,
    /// The text of the last `user` item.
    last_user: String,
}

/// Reads `input`: a string is one user message; an array holds items with a
/// `role` and a `content` (a string or parts whose `text` counts, as
/// `input_text` parts have). Items without a role (tool outputs, …) count
/// towards the prompt by their own `text`/`output` only.
fn read_input(input: &Value) -> Option<Prompt> {
    match input {
        Value::String(s) => Some(Prompt {
            len: s.len(),
            last_user: s.clone(),
        }),
        Value::Array(items) => {
            let mut len = 0;
            let mut last_user = String::new();
            for item in items {
                let text = match item.get("content") {
                    Some(content) => reply::content_text(Some(content)),
                    None => reply::content_text(item.get("text").or(item.get("output"))),
                };
                len += text.len();
                if item.get("role").and_then(Value::as_str) == Some("user") {
                    last_user = text.into_owned();
                }
            }
            Some(Prompt { len, last_user })
        }
        _ => None,
    }
}

/// The parts of an answer that do not change while it is produced.
struct Head {
    id: String,
    msg_id: String,
    created_at: u64,
    model: String,
    instructions: Value,
    max_output_tokens: Option<u64>,
    metadata: Value,
    input_tokens: u64,
}

impl Head {
    /// The Response object: `output` and `usage` as given, every other field
    /// as OpenAI fills it for a plain text request (the SDKs' types require
    /// `parallel_tool_calls`, `tool_choice` and `tools`).
    fn response(&self, status: &str, output: Value, usage: Value) -> Value {
        let completed_at = if status == "completed" {
            json!(reply::unix_now())
        } else {
            Value::Null
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "completed_at": completed_at,
            "error": null,
            "incomplete_details": null,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": self.metadata,
        })
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + output_tokens,
        })
    }

    /// The assistant message item; `text: None` is the empty in-progress one.
    fn message(&self, text: Option<&str>) -> Value {
        match text {
            Some(text) => json!({
                "type": "message", "id": self.msg_id, "status": "completed",
                "role": "assistant", "content": [output_text(text)],
            }),
            None => json!({
                "type": "message", "id": self.msg_id, "status": "in_progress",
                "role": "assistant", "content": [],
            }),
        }
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// `POST /v1/responses`.
pub(crate) async fn responses(
    State(cfg): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut resp = respond(&cfg, &headers, &body).await;
    // As OpenAI does on every API answer, like the chat route.
    if let Ok(id) = http::HeaderValue::from_str(&reply::next_id("req_")) {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp
}

async fn respond(cfg: &crate::MockConfig, headers: &HeaderMap, body: &[u8]) -> Response {
    if !auth::openai(headers, cfg) {
        return unauthorized();
    }
    let req = serde_json::from_slice::<ResponsesRequest>(body);
    let knobs = Knobs::from_headers(headers).or(req.as_ref().ok().and_then(|r| r.mock));
    if let Some(resp) = knobs.before_response().await {
        return resp;
    }
    let req = match req {
        Ok(req) => req,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}"), "invalid_json"),
    };
    let Some(model) = req.model else {
        return bad_request("you must provide a model parameter", "missing_model");
    };
    let prompt = match req.input.as_ref() {
        None | Some(Value::Null) => {
            return bad_request("'input' is a required property", "missing_input")
        }
        Some(input) => match read_input(input) {
            Some(prompt) => prompt,
            None => {
                return bad_request(
                    "'input' must be a string or an array of input items",
                    "invalid_type",
                )
            }
        },
    };
    let instructions = req.instructions.unwrap_or(Value::Null);
    let prompt_len = prompt.len + reply::content_text(Some(&instructions)).len();
    let reply = reply::reply_text(&prompt.last_user);
    let head = Head {
        id: reply::next_id("resp_mock_"),
        msg_id: reply::next_id("msg_mock_"),
        created_at: reply::unix_now(),
        model,
        instructions,
        max_output_tokens: req.max_output_tokens,
        metadata: req.metadata.unwrap_or_else(|| json!({})),
        input_tokens: reply::tokens_for_len(prompt_len),
    };

    if req.stream == Some(true) {
        let plan = ContentPlan::new(reply, knobs.chunks(), knobs.chunk_bytes());
        return stream(head, plan, &knobs);
    }

    let body = reply::render_padded(&reply, knobs.response_bytes(), |text| {
        let usage = head.usage(reply::tokens_for_len(text.len()));
        serde_json::to_vec(&head.response("completed", json!([head.message(Some(text))]), usage))
            .unwrap_or_default()
    });
    reply::json_bytes_response(StatusCode::OK, body)
}

/// One `response.output_text.delta` (a struct: there may be thousands).
#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    delta: &'a str,
    logprobs: [(); 0],
    sequence_number: usize,
}

/// The SSE answer. Deltas are produced lazily, as chat's chunks are; the
/// closing events carry the whole text (as OpenAI's do), which is put
/// together only once the last delta has gone.
fn stream(head: Head, plan: ContentPlan, knobs: &Knobs) -> Response {
    let head = Arc::new(head);
    let plan = Arc::new(plan);
    let n = plan.len();
    let event = |name: &'static str, seq: usize, mut payload: Value| {
        payload["type"] = json!(name);
        payload["sequence_number"] = json!(seq);
        reply::sse_event(name, &payload)
    };
    let opening = [
        event(
            "response.created",
            0,
            json!({"response": head.response("in_progress", json!([]), Value::Null)}),
        ),
        event(
            "response.in_progress",
            1,
            json!({"response": head.response("in_progress", json!([]), Value::Null)}),
        ),
        event(
            "response.output_item.added",
            2,
            json!({"output_index": 0, "item": head.message(None)}),
        ),
        event(
            "response.content_part.added",
            3,
            json!({"item_id": head.msg_id, "output_index": 0, "content_index": 0,
                "part": output_text("")}),
        ),
    ];
    let deltas = {
        let (head, plan) = (head.clone(), plan.clone());
        (0..n).map(move |i| {
            reply::sse_event(
                "response.output_text.delta",
                &TextDelta {
                    kind: "response.output_text.delta",
                    item_id: &head.msg_id,
                    output_index: 0,
                    content_index: 0,
                    delta: plan.piece(i),
                    logprobs: [],
                    sequence_number: 4 + i,
                },
            )
        })
    };
    // Each closing event is encoded when it is sent, so at most one of them
    // is held besides the text.
    let closing = iter::once_with(move || {
        let text: String = (0..plan.len()).map(|i| plan.piece(i)).collect();
        let tokens = plan.tokens();
        (text, tokens)
    })
    .flat_map(move |(text, tokens)| {
        let head = head.clone();
        (0..4).map(move |k| {
            let seq = 4 + n + k;
            match k {
                0 => event(
                    "response.output_text.done",
                    seq,
                    json!({"item_id": head.msg_id, "output_index": 0, "content_index": 0,
                        "text": text, "logprobs": []}),
                ),
                1 => event(
                    "response.content_part.done",
                    seq,
                    json!({"item_id": head.msg_id, "output_index": 0, "content_index": 0,
                        "part": output_text(&text)}),
                ),
                2 => event(
                    "response.output_item.done",
                    seq,
                    json!({"output_index": 0, "item": head.message(Some(&text))}),
                ),
                _ => event(
                    "response.completed",
                    seq,
                    json!({"response": head.response(
                        "completed",
                        json!([head.message(Some(&text))]),
                        head.usage(tokens),
                    )}),
                ),
            }
        })
    });
    let events = opening.into_iter().chain(deltas).chain(closing);
    reply::stream_response(
        "text/event-stream",
        faults::stream_body(Box::new(events), knobs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_a_string_or_items_and_the_last_user_text_is_answered() {
        let p = read_input(&json!("hi")).map(|p| (p.len, p.last_user));
        assert_eq!(p, Some((2, "hi".into())));
        let items = json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "ok"}]},
            {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "sec"}, {"type": "input_image"},
                    {"type": "input_text", "text": "ond"}]},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
            7,
        ]);
        let p = read_input(&items).map(|p| (p.len, p.last_user));
        assert_eq!(p, Some((8 + 5 + 2 + 6 + 2, "second".into())));
        assert!(read_input(&json!({"role": "user"})).is_none());
        assert!(read_input(&json!(3)).is_none());
    }
}
