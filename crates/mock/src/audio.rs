//! OpenAI audio: `POST /v1/audio/transcriptions` and `/v1/audio/translations`
//! (multipart forms, as `client.audio.transcriptions.create` sends them).
//!
//! The answer names the model and the audio's size, so a test can see what
//! reached the provider: `{"text": "Mock transcription (model M, N bytes of
//! audio)."}` (`response_format: "text"` answers that text alone).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::faults::Knobs;
use crate::openai::{bad_request, unauthorized};
use crate::{auth, reply, AppState};

/// One form field: its name, whether it is a file, its content.
struct Field<'a> {
    name: &'a str,
    is_file: bool,
    content: &'a [u8],
}

/// A lenient reader (the mock is no policy): the fields of a
/// `multipart/form-data` body, or `None` if it is not one.
fn fields<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Field<'a>>> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = memchr::memmem::find(rest, delimiter.as_bytes()) {
        let part = &rest[..at];
        rest = &rest[at + delimiter.len()..];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let Some(split) = memchr::memmem::find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&part[..split]).ok()?;
        let disposition = head
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        let name = disposition
            .split(';')
            .find_map(|p| p.trim().strip_prefix("name="))?
            .trim_matches('"');
        out.push(Field {
            name,
            is_file: disposition.contains("filename="),
            content: &part[split + 4..],
        });
    }
    Some(out)
}

/// `POST /v1/audio/transcriptions` and `/v1/audio/translations`.
pub(crate) async fn transcriptions(
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
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(fields) = fields(content_type, &body) else {
        return bad_request("expected a multipart/form-data body", "invalid_form");
    };
    let text_field = |name: &str| {
        fields
            .iter()
            .find(|f| f.name == name && !f.is_file)
            .map(|f| String::from_utf8_lossy(f.content).into_owned())
    };
    let Some(model) = text_field("model") else {
        return bad_request("you must provide a model parameter", "missing_model");
    };
    let Some(file) = fields.iter().find(|f| f.name == "file" && f.is_file) else {
        return bad_request("'file' is a required property", "missing_file");
    };
    let text = format!(
        "Mock transcription (model {model}, {} bytes of audio).",
        file.content.len()
    );
    match text_field("response_format").as_deref() {
        Some("text") => (StatusCode::OK, text).into_response(),
        _ => reply::json_response(StatusCode::OK, &json!({ "text": text })),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fields_are_read_from_a_form() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--b--\r\n";
        let f = fields("multipart/form-data; boundary=b", body).unwrap();
        let seen: Vec<_> = f.iter().map(|f| (f.name, f.is_file, f.content)).collect();
        assert_eq!(
            seen,
            [
                ("model", false, &b"whisper-1"[..]),
                ("file", true, &b"RIFF"[..])
            ]
        );
        assert!(fields("application/json", body).is_none());
    }
}
