//! Per-request fault injection: the knobs, where they are read from, and the
//! event-stream body that applies the streaming ones.
//!
//! Knobs come from `x-mock-*` request headers and, on the JSON routes, from a
//! `"mock": {...}` object in the body; a header wins over the body.

use std::str::FromStr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;

/// Content chunks in a stream unless `x-mock-chunks` says otherwise.
pub(crate) const DEFAULT_CHUNKS: usize = 5;
/// Upper bound of `x-mock-chunks`.
pub(crate) const MAX_CHUNKS: usize = 10_000;
/// Upper bound of `x-mock-chunk-bytes`.
pub(crate) const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Upper bound of `x-mock-response-bytes`.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The fault knobs of one request; `None` means "not asked for".
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub(crate) struct Knobs {
    pub delay_ms: Option<u64>,
    pub status: Option<u16>,
    pub chunk_delay_ms: Option<u64>,
    pub chunks: Option<usize>,
    pub chunk_bytes: Option<usize>,
    pub reset_after: Option<usize>,
    pub stall_after: Option<usize>,
    pub response_bytes: Option<usize>,
}

fn header<T: FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Knobs {
    /// Reads the `x-mock-*` headers (unparsable values are ignored).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            delay_ms: header(headers, "x-mock-delay-ms"),
            status: header(headers, "x-mock-status"),
            chunk_delay_ms: header(headers, "x-mock-chunk-delay-ms"),
            chunks: header(headers, "x-mock-chunks"),
            chunk_bytes: header(headers, "x-mock-chunk-bytes"),
            reset_after: header(headers, "x-mock-reset-after"),
            stall_after: header(headers, "x-mock-stall-after"),
            response_bytes: header(headers, "x-mock-response-bytes"),
        }
    }

    /// Fills the knobs not set here from `other`.
    pub(crate) fn or(self, other: Option<Knobs>) -> Self {
        let Some(o) = other else { return self };
        Self {
            delay_ms: self.delay_ms.or(o.delay_ms),
            status: self.status.or(o.status),
            chunk_delay_ms: self.chunk_delay_ms.or(o.chunk_delay_ms),
            chunks: self.chunks.or(o.chunks),
            chunk_bytes: self.chunk_bytes.or(o.chunk_bytes),
            reset_after: self.reset_after.or(o.reset_after),
            stall_after: self.stall_after.or(o.stall_after),
            response_bytes: self.response_bytes.or(o.response_bytes),
        }
    }

    /// Content chunks of a stream, clamped to `0..=MAX_CHUNKS`.
    pub(crate) fn chunks(&self) -> usize {
        self.chunks.unwrap_or(DEFAULT_CHUNKS).min(MAX_CHUNKS)
    }

    /// Text bytes per content chunk, if asked for (clamped to `1..=MAX_CHUNK_BYTES`).
    pub(crate) fn chunk_bytes(&self) -> Option<usize> {
        self.chunk_bytes.map(|b| b.clamp(1, MAX_CHUNK_BYTES))
    }

    /// Target size of a non-stream JSON body, if asked for.
    pub(crate) fn response_bytes(&self) -> Option<usize> {
        self.response_bytes.map(|b| b.min(MAX_RESPONSE_BYTES))
    }

    /// Applies `delay_ms`, then answers the injected `status` if one was asked
    /// for. Call it after authentication.
    pub(crate) async fn before_response(&self) -> Option<Response> {
        if let Some(ms) = self.delay_ms.filter(|&ms| ms > 0) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let code = self.status?;
        let status = StatusCode::from_u16(code).ok()?;
        Some(crate::openai::error_response(
            status,
            "mock injected error",
            "mock_error",
            &format!("mock_status_{code}"),
        ))
    }
}

/// The events of a stream, produced lazily (a 10000-chunk stream is never
/// held in memory at once).
pub(crate) type Events = Box<dyn Iterator<Item = Bytes> + Send>;

/// Where a stream body stands.
struct StreamState {
    events: Events,
    /// Events already handed to hyper.
    sent: usize,
    chunk_delay: Option<Duration>,
    reset_after: Option<usize>,
    stall_after: Option<usize>,
    /// Set once the injected error has been returned.
    done: bool,
}

/// A streaming body yielding each event as its own frame, with the knobs'
/// chunk delay between events, and a reset (body error, so the connection is
/// dropped without a proper end) or a stall (pending forever) after the
/// configured number of events.
pub(crate) fn stream_body(events: Events, knobs: &Knobs) -> Body {
    let state = StreamState {
        events,
        sent: 0,
        chunk_delay: knobs
            .chunk_delay_ms
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis),
        reset_after: knobs.reset_after,
        stall_after: knobs.stall_after,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.reset_after == Some(st.sent) {
            // Let hyper flush what was sent so far before the abort.
            tokio::task::yield_now().await;
            st.done = true;
            let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset");
            return Some((Err(err), st));
        }
        if st.stall_after == Some(st.sent) {
            std::future::pending::<()>().await;
        }
        let event = st.events.next()?;
        if st.sent > 0 {
            if let Some(delay) = st.chunk_delay {
                tokio::time::sleep(delay).await;
            }
        }
        st.sent += 1;
        Some((Ok::<Bytes, std::io::Error>(event), st))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn headers_win_over_body_and_bad_values_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-chunks", HeaderValue::from_static("7"));
        h.insert("x-mock-status", HeaderValue::from_static("nope"));
        let body = Knobs {
            chunks: Some(3),
            status: Some(500),
            ..Knobs::default()
        };
        let k = Knobs::from_headers(&h).or(Some(body));
        assert_eq!(k.chunks(), 7);
        assert_eq!(k.status, Some(500));
        assert_eq!(Knobs::default().chunks(), DEFAULT_CHUNKS);
        let big = Knobs {
            chunks: Some(usize::MAX),
            ..Knobs::default()
        };
        assert_eq!(big.chunks(), MAX_CHUNKS);
    }
}
