//! What reached the mock: every request to a provider route (method, path,
//! which accepted key it carried), how many are in flight right now and the
//! most ever in flight at once — so tests can assert that a refused
//! request never arrived, which key a retry used, or that a concurrency
//! limit held at the upstream. Also applies per-key faults.
//!
//! A request counts as in flight from its arrival until its response body
//! has been sent completely or dropped (a stream counts until it ends).
//! The journal keeps the last [`MAX_ENTRIES`] requests. `/health` and the
//! `/_mock/*` routes are not recorded.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::Stream;
use serde::Serialize;

use crate::{auth, AppState};

/// Requests remembered (oldest dropped first).
pub const MAX_ENTRIES: usize = 10_000;

/// One request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// The accepted key the request carried (primary or extra), if any.
    pub key: Option<String>,
}

/// Shared between the middleware and whoever inspects the mock.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Mutex<VecDeque<Entry>>,
    total: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Journal {
    /// The requests recorded so far, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().iter().cloned().collect()
    }

    /// Requests recorded since start (or the last reset).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were in flight at once.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets the entries and the counters (not the requests in flight).
    pub fn reset(&self) {
        self.lock().clear();
        self.total.store(0, Ordering::SeqCst);
        self.max_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, entry: Entry) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(entry);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// `GET /_mock/journal` as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.total(),
            "in_flight": self.in_flight(),
            "max_in_flight": self.max_in_flight(),
            "requests": self.entries(),
        })
    }
}

struct InFlightGuard(Arc<Journal>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The response body's data, holding the in-flight guard until the last
/// frame was taken (or the body was dropped).
struct Guarded {
    inner: BodyDataStream,
    guard: Option<InFlightGuard>,
}

impl Stream for Guarded {
    type Item = Result<bytes::Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled {
            self.guard = None;
        }
        polled
    }
}

/// The middleware: records, applies a per-key fault, counts in flight.
pub(crate) async fn layer(State(cfg): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/health" || path.starts_with("/_mock/") {
        return next.run(req).await;
    }
    let journal = cfg.journal.clone();
    let key = auth::which_key(req.headers(), req.uri().query(), &cfg).map(str::to_owned);
    let guard = journal.enter();
    journal.record(Entry {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned()),
        key: key.clone(),
    });
    let fault = key
        .as_deref()
        .and_then(|k| cfg.key_faults.iter().find(|(fk, _)| fk == k))
        .and_then(|(_, status)| StatusCode::from_u16(*status).ok());
    let resp = match fault {
        Some(status) => crate::openai::error_response(
            status,
            "mock injected error for this key",
            "mock_error",
            &format!("mock_key_status_{}", status.as_u16()),
        ),
        None => next.run(req).await,
    };
    let (mut parts, body) = resp.into_parts();
    // Keep the length a plain body had (a stream body would lose it).
    if let Some(len) = HttpBody::size_hint(&body).exact() {
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let body = Body::from_stream(Guarded {
        inner: body.into_data_stream(),
        guard: Some(guard),
    });
    Response::from_parts(parts, body)
}
