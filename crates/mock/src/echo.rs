//! Debugging aids: `ANY /echo/{*path}` (and `/v1/echo/...`) reflects what
//! reached the upstream; `POST /v1/upload` counts a streamed body without
//! holding it.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::faults::Knobs;
use crate::{auth, openai, reply, AppState};

/// Body bytes the echo reflects.
const ECHO_BODY_MAX: usize = 64 << 10;

fn unauthorized() -> Response {
    openai::error_response(
        StatusCode::UNAUTHORIZED,
        "Incorrect API key provided",
        "invalid_request_error",
        "invalid_api_key",
    )
}

fn body_error(e: &axum::Error) -> Response {
    openai::error_response(
        StatusCode::BAD_REQUEST,
        &format!("error reading request body: {e}"),
        "invalid_request_error",
        "body_read_error",
    )
}

/// Reflects method, path, query, headers and (the start of) the body as JSON.
pub(crate) async fn echo(
    State(cfg): State<AppState>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !auth::any(&headers, query.as_deref(), &cfg) {
        return unauthorized();
    }
    if let Some(resp) = Knobs::from_headers(&headers).before_response().await {
        return resp;
    }
    let mut kept = Vec::new();
    let mut body_len = 0usize;
    let mut frames = body.into_data_stream();
    while let Some(chunk) = frames.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return body_error(&e),
        };
        body_len += chunk.len();
        let room = ECHO_BODY_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
    }
    let mut header_map = Map::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        match header_map.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                header_map.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
            }
        }
    }
    reply::json_response(
        StatusCode::OK,
        &json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": query.unwrap_or_default(),
            "headers": header_map,
            "body_len": body_len,
            "body": String::from_utf8_lossy(&kept),
        }),
    )
}

/// Counts the bytes of a streamed body: `{"bytes": n}`.
pub(crate) async fn upload(
    State(cfg): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !auth::any(&headers, query.as_deref(), &cfg) {
        return unauthorized();
    }
    if let Some(resp) = Knobs::from_headers(&headers).before_response().await {
        return resp;
    }
    let mut bytes = 0u64;
    let mut frames = body.into_data_stream();
    while let Some(chunk) = frames.next().await {
        match chunk {
            Ok(chunk) => bytes += chunk.len() as u64,
            Err(e) => return body_error(&e),
        }
    }
    reply::json_response(StatusCode::OK, &json!({"bytes": bytes}))
}
