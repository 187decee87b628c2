//! What the mock says and how it is framed: the deterministic reply text,
//! token estimates, ids, how a reply is cut into stream chunks, JSON and SSE
//! encoding.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// Prefix of every reply; the rest echoes the last user message.
pub(crate) const REPLY_PREFIX: &str = "mock reply to: ";
/// Characters of the user message echoed in the reply.
const ECHO_CHARS: usize = 200;
/// Text used to pad replies and fill extra chunks.
const FILLER: &str = " mock";

/// `"mock reply to: <text truncated to 200 chars>"`.
pub(crate) fn reply_text(last_user: &str) -> String {
    let end = last_user
        .char_indices()
        .nth(ECHO_CHARS)
        .map_or(last_user.len(), |(i, _)| i);
    let mut s = String::with_capacity(REPLY_PREFIX.len() + end);
    s.push_str(REPLY_PREFIX);
    s.push_str(&last_user[..end]);
    s
}

/// The text of a message `content`: a string, or the `text` fields of an
/// array of parts (OpenAI and Anthropic content blocks) joined together.
pub(crate) fn content_text(content: Option<&Value>) -> Cow<'_, str> {
    match content {
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for text in parts.iter().filter_map(|p| p.get("text")?.as_str()) {
                out.push_str(text);
            }
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(""),
    }
}

/// A token estimate: a quarter of the bytes, at least one.
pub(crate) fn tokens_for_len(len: usize) -> u64 {
    (len as u64).div_ceil(4).max(1)
}

/// `s` followed by filler up to `len` bytes (unchanged if already longer).
pub(crate) fn padded(s: &str, len: usize) -> String {
    let mut out = String::with_capacity(len.max(s.len()));
    out.push_str(s);
    while out.len() < len {
        let need = len - out.len();
        out.push_str(&FILLER[..need.min(FILLER.len())]);
    }
    out
}

/// A process-unique id: `prefix` followed by a counter.
pub(crate) fn next_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A JSON response.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes_response(status, bytes),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A JSON response from already-encoded bytes.
pub(crate) fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        bytes,
    )
        .into_response()
}

/// Encodes a non-stream body whose text is `reply`; when `target` asks for a
/// bigger body, the text is padded so the JSON is about `target` bytes.
/// `render` encodes the body for a given text.
pub(crate) fn render_padded(
    reply: &str,
    target: Option<usize>,
    render: impl Fn(&str) -> Vec<u8>,
) -> Vec<u8> {
    let first = render(reply);
    match target {
        Some(target) if target > first.len() => {
            render(&padded(reply, reply.len() + (target - first.len())))
        }
        _ => first,
    }
}

/// A streaming response with the given content type.
pub(crate) fn stream_response(content_type: &'static str, body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `data: <json>\n\n`.
pub(crate) fn sse_data<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(b"data: ");
    // Serializing our own structs to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// `event: <name>\ndata: <json>\n\n`.
pub(crate) fn sse_event<T: Serialize>(name: &str, value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// How a reply is cut into the content chunks of a stream.
///
/// Without a chunk size, the reply is split at word starts (or at characters
/// when it has fewer words than chunks), so the chunks concatenate to exactly
/// the non-stream reply; only when there are more chunks than characters are
/// the extra chunks filler. With a chunk size, the first chunk is the reply
/// padded to that size and the others are filler of that size.
pub(crate) struct ContentPlan {
    chunks: usize,
    pieces: Pieces,
}

enum Pieces {
    Split {
        text: String,
        /// Byte offsets of piece starts, then `text.len()`.
        bounds: Vec<usize>,
    },
    Sized {
        first: String,
        filler: String,
    },
}

impl ContentPlan {
    pub(crate) fn new(reply: String, chunks: usize, chunk_bytes: Option<usize>) -> Self {
        let pieces = match chunk_bytes {
            Some(size) => Pieces::Sized {
                first: padded(&reply, size),
                filler: padded("", size),
            },
            None => {
                let words: Vec<usize> = reply
                    .char_indices()
                    .scan(true, |prev_space, (i, c)| {
                        let start = !c.is_whitespace() && (*prev_space || i == 0);
                        *prev_space = c.is_whitespace();
                        Some((i, start))
                    })
                    .filter_map(|(i, start)| start.then_some(i))
                    .collect();
                let units: Vec<usize> = if words.len() >= chunks && words.first() == Some(&0) {
                    words
                } else {
                    reply.char_indices().map(|(i, _)| i).collect()
                };
                let used = chunks.min(units.len());
                let mut bounds: Vec<usize> =
                    (0..used).map(|k| units[k * units.len() / used]).collect();
                bounds.push(reply.len());
                Pieces::Split {
                    text: reply,
                    bounds,
                }
            }
        };
        Self { chunks, pieces }
    }

    /// Number of content chunks.
    pub(crate) fn len(&self) -> usize {
        self.chunks
    }

    /// The text of chunk `i` (`i < len()`).
    pub(crate) fn piece(&self, i: usize) -> &str {
        match &self.pieces {
            Pieces::Split { text, bounds } => match (bounds.get(i), bounds.get(i + 1)) {
                (Some(&a), Some(&b)) => &text[a..b],
                _ => FILLER,
            },
            Pieces::Sized { first, filler } => {
                if i == 0 {
                    first
                } else {
                    filler
                }
            }
        }
    }

    /// Total bytes of text over all chunks.
    pub(crate) fn total_bytes(&self) -> usize {
        match &self.pieces {
            Pieces::Split { text, bounds } => {
                let used = bounds.len() - 1;
                if used == 0 {
                    0
                } else {
                    text.len() + FILLER.len() * (self.chunks - used)
                }
            }
            Pieces::Sized { first, filler } => match self.chunks {
                0 => 0,
                n => first.len() + filler.len() * (n - 1),
            },
        }
    }

    /// Estimated tokens of the streamed text.
    pub(crate) fn tokens(&self) -> u64 {
        tokens_for_len(self.total_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(plan: &ContentPlan) -> Vec<&str> {
        (0..plan.len()).map(|i| plan.piece(i)).collect()
    }

    #[test]
    fn default_chunks_concatenate_to_the_reply() {
        for text in ["hi", "hello there big wide world of tests", "héllo wörld"] {
            let reply = reply_text(text);
            for n in [1, 2, 5, 7, reply.chars().count()] {
                let plan = ContentPlan::new(reply.clone(), n, None);
                let pieces = all(&plan);
                assert_eq!(pieces.len(), n);
                assert!(pieces.iter().all(|p| !p.is_empty()));
                assert_eq!(pieces.concat(), reply, "n={n}");
                assert_eq!(plan.total_bytes(), reply.len());
            }
        }
    }

    #[test]
    fn more_chunks_than_chars_get_filler() {
        let reply = reply_text("x");
        let plan = ContentPlan::new(reply.clone(), 100, None);
        let text = all(&plan).concat();
        assert!(text.starts_with(&reply));
        assert_eq!(plan.total_bytes(), text.len());
        assert_eq!(ContentPlan::new(reply, 0, None).total_bytes(), 0);
    }

    #[test]
    fn sized_chunks_have_the_asked_size() {
        let plan = ContentPlan::new(reply_text("q"), 4, Some(100));
        assert!(all(&plan).iter().all(|p| p.len() == 100));
        assert_eq!(plan.total_bytes(), 400);
    }

    #[test]
    fn reply_echo_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(300);
        let r = reply_text(&long);
        assert_eq!(r.chars().count(), REPLY_PREFIX.len() + 200);
    }

    #[test]
    fn padding_reaches_the_target() {
        let body = render_padded("abc", Some(1000), |t| {
            format!("{{\"t\":\"{t}\"}}").into_bytes()
        });
        assert_eq!(body.len(), 1000);
        let small = render_padded("abc", Some(3), |t| t.as_bytes().to_vec());
        assert_eq!(small, b"abc");
    }
}
