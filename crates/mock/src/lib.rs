//! `relayapi-mock`: a fake OpenAI / Anthropic / Gemini upstream for RelayAPI's
//! tests, benchmarks and demos.
//!
//! It speaks just enough of each provider's wire format (JSON and SSE) for the
//! relay to be exercised end to end without network access, and it can be told
//! per request to misbehave (delays, errors, resets, stalls) so the relay's
//! failure handling can be tested.
//!
//! # Layout
//! - [`router`] builds the axum router, [`serve`] / [`serve_with_shutdown`] run
//!   it on a listener, [`MockServer::start`] spawns it on `127.0.0.1:0` for
//!   in-process tests of other crates.
//! - `auth`: where each provider expects the API key and the constant-time check.
//! - `openai`, `responses` (OpenAI's Responses API), `audio` (transcription forms), `anthropic`, `gemini`:
//!   one module per wire format.
//! - `faults`: the per-request fault knobs and the event-stream body that
//!   applies chunk delays, resets and stalls.
//! - `reply`: the deterministic reply text, token estimates, ids and SSE framing.
//! - `echo`: the debug echo route and the streaming upload sink.
//! - [`journal`]: what reached the mock (per request: method, path, key),
//!   requests in flight and their peak, per-key faults.
//!
//! # Routes
//! | Route | Auth |
//! |---|---|
//! | `GET /health` | none |
//! | `POST /v1/chat/completions`, `POST /v1/responses`, `POST /v1/embeddings`, `POST /v1/images/generations`, `POST /v1/audio/transcriptions` and `translations`, `GET /v1/models` | `Authorization: Bearer KEY` or `api-key: KEY` |
//! | `POST /openai/deployments/{deployment}/chat/completions`, `.../embeddings` (Azure) | same as OpenAI |
//! | `POST /v1/messages` (Anthropic; also needs `anthropic-version`) | `x-api-key: KEY` |
//! | `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent[?alt=sse]` (also under `/v1/`) | `x-goog-api-key: KEY` or `?key=KEY` |
//! | `ANY /echo[/{*path}]`, `ANY /v1/echo[/{*path}]`, `POST /v1/upload` | the key in any of the places above |
//!
//! Every other path answers 404 with an OpenAI-style error body.
//!
//! # Fault injection
//! Request headers (or, on the chat/responses/messages/gemini routes, the same names
//! without the `x-mock-` prefix and with `_` in a `"mock": {...}` object of the
//! JSON body; headers win):
//! - `x-mock-delay-ms: N`: wait N ms before sending the response headers.
//! - `x-mock-status: CODE`: answer CODE with an OpenAI-style error body
//!   (`code` = `mock_status_CODE`); authentication is still checked first.
//! - `x-mock-chunk-delay-ms: N`: in streams, wait N ms between events.
//! - `x-mock-chunks: N`: content chunks in streams (default 5, at most 10000).
//! - `x-mock-chunk-bytes: N`: approximate text size of each content chunk.
//! - `x-mock-reset-after: N`: in streams, abort the connection after N events.
//! - `x-mock-stall-after: N`: in streams, stop sending (hang) after N events.
//! - `x-mock-response-bytes: N`: non-stream replies are padded so the JSON
//!   body is about N bytes.
//!
//! # Several keys, per-key faults, the journal
//! [`MockConfig::with_extra_keys`] accepts more keys besides the primary one;
//! [`MockConfig::with_key_fault`] makes every request carrying a given key
//! answer a status (e.g. 429) — so a relay's key rotation and retry can be
//! observed. [`MockServer::journal`] (or `GET /_mock/journal`) lists the
//! requests that arrived and which key each carried, with the number in
//! flight and the peak; `POST /_mock/reset` clears it.

mod anthropic;
mod audio;
mod auth;
mod echo;
mod faults;
mod gemini;
pub mod journal;
mod openai;
mod reply;
mod responses;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The API key the mock accepts unless told otherwise.
pub const DEFAULT_API_KEY: &str = "sk-mock";

/// Largest JSON request body the provider routes read (the echo and upload
/// routes stream and are not limited).
const MAX_JSON_BODY: usize = 64 << 20;

/// Configuration of one mock instance.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The primary credential accepted, in whichever place the provider expects it.
    pub api_key: String,
    /// More keys accepted the same way.
    pub extra_api_keys: Vec<String>,
    /// A request carrying this key is answered with this status.
    pub key_faults: Vec<(String, u16)>,
    /// Shared record of what arrived (see [`journal`]).
    pub journal: Arc<journal::Journal>,
}

impl MockConfig {
    /// A configuration accepting `api_key`.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            extra_api_keys: Vec::new(),
            key_faults: Vec::new(),
            journal: Arc::default(),
        }
    }

    /// Also accepts `keys`.
    pub fn with_extra_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.extra_api_keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Accepts `key` and answers every request carrying it with `status`.
    pub fn with_key_fault(mut self, key: impl Into<String>, status: u16) -> Self {
        let key = key.into();
        self.extra_api_keys.push(key.clone());
        self.key_faults.push((key, status));
        self
    }

    /// Every accepted key, the primary first.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.api_key.as_str()).chain(self.extra_api_keys.iter().map(String::as_str))
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        Self::new(DEFAULT_API_KEY)
    }
}

/// Shared state of the handlers.
type AppState = Arc<MockConfig>;

/// Builds the mock's router (all routes, fallbacks and body limit).
pub fn router(cfg: MockConfig) -> Router {
    let state: AppState = Arc::new(cfg);
    Router::new()
        .route("/health", get(health))
        // OpenAI
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/images/generations", post(openai::images_generations))
        .route("/v1/audio/transcriptions", post(audio::transcriptions))
        .route("/v1/audio/translations", post(audio::transcriptions))
        .route("/v1/models", get(openai::models))
        // Azure OpenAI: same handlers, the deployment names the model.
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(openai::azure_chat_completions),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(openai::azure_embeddings),
        )
        // Anthropic
        .route("/v1/messages", post(anthropic::messages))
        // Gemini: `{model}:{method}` is parsed by the handler (axum cannot
        // split a segment on `:`). Google serves both API versions; recent
        // google-genai SDKs call `v1` when given a custom base URL.
        .route("/v1beta/models/{*rest}", post(gemini::models_action))
        // GET is OpenAI's model lookup (`client.models.retrieve`).
        .route(
            "/v1/models/{*rest}",
            get(openai::model).post(gemini::models_action),
        )
        // Debugging aids for the relay's tests and benchmarks.
        .route("/echo", any(echo::echo))
        .route("/echo/{*path}", any(echo::echo))
        .route("/v1/echo", any(echo::echo))
        .route("/v1/echo/{*path}", any(echo::echo))
        .route("/v1/upload", post(echo::upload))
        .route("/_mock/journal", get(journal_route))
        .route("/_mock/reset", post(reset_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            journal::layer,
        ))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(state)
}

/// Serves the mock on `listener` until the process ends.
pub async fn serve(listener: TcpListener, cfg: MockConfig) -> io::Result<()> {
    serve_with_shutdown(listener, cfg, std::future::pending()).await
}

/// Serves the mock on `listener` until `signal` completes, then waits for the
/// open connections to finish (a stalled stream never does: bound the wait).
pub async fn serve_with_shutdown<F>(
    listener: TcpListener,
    cfg: MockConfig,
    signal: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Small SSE frames must leave at once, not wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(cfg))
        .with_graceful_shutdown(signal)
        .await
}

/// A mock running in the background of the current tokio runtime; stopped
/// (its accept loop aborted) when dropped.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    journal: Arc<journal::Journal>,
    task: JoinHandle<io::Result<()>>,
}

impl MockServer {
    /// Binds `127.0.0.1:0` and serves `cfg` there in a spawned task.
    pub async fn start(cfg: MockConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let journal = cfg.journal.clone();
        let task = tokio::spawn(serve(listener, cfg));
        Ok(Self {
            addr,
            journal,
            task,
        })
    }

    /// What reached this mock.
    pub fn journal(&self) -> &journal::Journal {
        &self.journal
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn journal_route(axum::extract::State(cfg): axum::extract::State<AppState>) -> Response {
    reply::json_response(StatusCode::OK, &cfg.journal.to_json())
}

async fn reset_route(axum::extract::State(cfg): axum::extract::State<AppState>) -> Response {
    cfg.journal.reset();
    reply::json_response(StatusCode::OK, &serde_json::json!({"reset": true}))
}

async fn health() -> Response {
    reply::json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn not_found(method: Method, uri: Uri) -> Response {
    openai::error_response(
        StatusCode::NOT_FOUND,
        &format!("Unknown request URL: {method} {}", uri.path()),
        "invalid_request_error",
        "unknown_url",
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    openai::error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method {method} not allowed on {}", uri.path()),
        "invalid_request_error",
        "method_not_allowed",
    )
}
