//! The request path, top to bottom, written once.
//!
//! Every request goes through [`handle`] in this order; each step may answer
//! early with an [`ApiError`] and nothing below it runs:
//!
//! 1. **accept** — request id (`x-request-id`), client IP;
//! 2. **CORS preflight** — answered here, without a token;
//! 3. **unauthenticated routes** — `GET /health` (the complete list);
//! 4. **traffic limits** — global and per-IP buckets, before any crypto;
//! 5. **token** — located, decrypted, claims validated, not revoked; the
//!    relay's own `GET {base}_relayapi/usage` is answered here;
//! 6. **policy** — scopes (`origins`, `ips`, `methods`, `paths` after
//!    normalisation), provider known, credential (`api_key` or `key_ref`),
//!    per-token `rps` and `concurrency`, `max_body_bytes`, `model`/`models`,
//!    the `max_tokens` reservation, `max_calls` reserved — cheap static
//!    checks first, counters last, so a refusal spends as little as possible;
//! 7. **forward** — provider URL, credential injected, bodies streamed; a
//!    `key_ref` call may be retried once on the next key;
//! 8. **respond** — provider status and headers, body streamed with a
//!    finish hook; our `x-request-id` and CORS headers on every answer;
//! 9. **finish** — the hook settles the budget, releases the concurrency
//!    slot, records usage statistics and writes the log record; a request
//!    dropped before any answer (client gone, shutdown) is logged by
//!    `PendingLog`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;

use crate::auth;
use crate::client_ip::{self, client_ip};
use crate::config::Config;
use crate::cors::Cors;
use crate::credentials::{Credential, Credentials};
use crate::error::ApiError;
use crate::keyfile::{KeyStore, Keys};
use crate::limits::{RateSpec, TrafficLimiter};
use crate::logs::redact;
use crate::logs::request::{new_tap, take_tap, RecordSettings, RequestLog, Tapped};
use crate::logs::tap::Direction;
use crate::logs::Logger;
use crate::policy::body_limit::LimitedBody;
use crate::policy::budget::{self, StripUsageChunk};
use crate::policy::{self, PolicyState};
use crate::providers::Registry;
use crate::proxy::{self, full, Finish, FinishReason, IdleTimeout, RelayBody};
use crate::usage::{Admission, BudgetAdmission, UsageDelta, UsageStore};

// Named once: a header name given as a string is parsed on every use.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const CALLS_REMAINING: HeaderName = HeaderName::from_static("x-relayapi-calls-remaining");
const TOKENS_REMAINING: HeaderName = HeaderName::from_static("x-relayapi-tokens-remaining");
/// Read by the official OpenAI and Anthropic SDKs before their own retry
/// rules (which retry every 429).
const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
/// The provider's own `x-request-id` (the relay's id takes that name).
const UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// Counters for `/health`; relaxed atomics, they are statistics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Every request received.
    pub requests: AtomicU64,
    /// Requests forwarded to a provider.
    pub relayed: AtomicU64,
    /// Requests the relay refused or failed itself (an `ApiError`).
    pub rejected: AtomicU64,
    /// Relayed responses still streaming.
    pub in_flight: AtomicU64,
    /// Relayed responses delivered completely.
    pub completed: AtomicU64,
    /// Relayed responses cut because the provider failed or fell silent mid-body.
    pub upstream_aborted: AtomicU64,
    /// Requests the client left before the end: relayed responses it
    /// stopped reading, and requests it hung up on before any answer.
    pub client_aborted: AtomicU64,
}

/// The record's `error_code` for a stream the relay cut when its shutdown
/// grace period ended (the client got a cut body, not an error answer).
pub const SHUTDOWN_CUT: &str = "shutdown";

/// Everything the request path needs, shared by all connections.
pub struct AppState {
    pub config: Config,
    /// The accepted keys; swapped when a watched `.rai` directory changes.
    pub keys: KeyStore,
    pub registry: Registry,
    pub limiter: TrafficLimiter,
    pub usage: UsageStore,
    /// One upstream pool per server worker thread.
    pub client: crate::upstream::Upstream,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub cors: Cors,
    pub stats: Stats,
    /// Request logging, when any sink is on.
    pub logger: Option<Logger>,
    /// Per-token rate and concurrency state, policy defaults.
    pub policy: PolicyState,
    /// Relay-held provider keys for `key_ref` tokens.
    pub credentials: Credentials,
    /// Tap settings for reading usage when logging is off (budget tokens,
    /// and every token while the admin API is on): no capture.
    usage_tap: RecordSettings,
    pub started: Instant,
    /// Set when a worker's shutdown drain ran out of time: the streams
    /// still open are cut by the relay, not left by their clients.
    pub grace_over: AtomicBool,
    /// Request ids are `<random process prefix>-<counter>`: unique, no syscall per request.
    id_prefix: String,
    id_counter: AtomicU64,
}

impl AppState {
    /// Must run inside a tokio runtime (the log pipeline spawns its tasks).
    pub fn new(config: Config, keys: Keys, usage: UsageStore) -> AppState {
        let rl = &config.rate_limit;
        let global = (rl.requests_per_second > 0.0).then(|| RateSpec {
            per_second: rl.requests_per_second,
            burst: rl.burst.max(1),
        });
        let per_ip = rl.ip_limit.as_ref().map(|ip| RateSpec {
            per_second: ip.requests_per_second,
            burst: ip.burst.max(1),
        });
        // Request ids key the log records (the database sink's inserts are
        // idempotent on them), so ids of two runs must not collide: 64
        // random bits per process, or the clock and pid if there is no
        // randomness to be had.
        let mut prefix = [0u8; 8];
        if getrandom::getrandom(&mut prefix).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            prefix = (nanos ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
        }
        let registry = Registry::new(&config.providers);
        AppState {
            limiter: TrafficLimiter::new(global, per_ip, rl.max_tracked_ips),
            policy: PolicyState::new(&config.policy),
            credentials: Credentials::new(&config.credentials, &registry),
            usage_tap: RecordSettings {
                tap: Default::default(),
                bodies: false,
                redact_headers: Vec::new(),
            },
            registry,
            client: crate::upstream::Upstream::new(&config.upstream, crate::server::worker_count()),
            logger: Logger::start(&config.log),
            trusted_proxies: config.trusted_proxies(),
            cors: Cors::new(&config.cors),
            stats: Stats::default(),
            started: Instant::now(),
            grace_over: AtomicBool::new(false),
            id_prefix: hex::encode(prefix),
            id_counter: AtomicU64::new(0),
            keys: KeyStore::new(keys),
            usage,
            config,
        }
    }

    /// The request's id: the caller's own `x-request-id` when `trust_caller`
    /// (the peer is a trusted proxy, or the admin API's authenticated
    /// caller) and it is short and plain, so traces join up; else a fresh
    /// one. A client's own id is never adopted: ids key the log records, and
    /// a client choosing them could make its records replace others'.
    pub(crate) fn request_id(&self, headers: &HeaderMap, trust_caller: bool) -> HeaderValue {
        match caller_request_id(headers) {
            Some(v) if trust_caller => v.clone(),
            _ => self.fresh_request_id(),
        }
    }

    fn fresh_request_id(&self) -> HeaderValue {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        // `req_<prefix><n as at least 10 hex digits>`, without `format!`
        // (this runs on every request).
        let mut id = [0u8; 64];
        let prefix = self.id_prefix.as_bytes();
        let head = 4 + prefix.len().min(40);
        id[..4].copy_from_slice(b"req_");
        id[4..head].copy_from_slice(&prefix[..head - 4]);
        let digits = ((67 - n.leading_zeros() as usize) / 4).max(10);
        for (i, slot) in id[head..head + digits].iter_mut().enumerate() {
            let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
            *slot = b"0123456789abcdef"[nibble as usize];
        }
        HeaderValue::from_bytes(&id[..head + digits])
            .unwrap_or(HeaderValue::from_static("req_unknown"))
    }
}

/// The caller's `x-request-id`, if it is short and plain enough to log and
/// echo.
fn caller_request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(&X_REQUEST_ID).filter(|v| {
        !v.is_empty()
            && v.len() <= 128
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    })
}

/// The whole request path. Never fails: errors become responses.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Infallible> {
    // 1. accept
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let trusted_peer = client_ip::peer_is_trusted(peer, &state.trusted_proxies);
    let request_id = state.request_id(req.headers(), trusted_peer);
    let origin = req.headers().get(header::ORIGIN).cloned();

    // 2. CORS preflight: no token, no limits below.
    let preflight = state.cors.is_preflight(req.method(), req.headers());
    // Preflights carry no token, so they are answered from the config alone;
    // the real request is then checked against the token's `origins`, and
    // refused without CORS headers (the browser hides the answer).
    let mut cors_origin = origin.as_ref();
    let mut resp = if preflight {
        state.cors.preflight(req.headers())
    } else if is_health_path(req.uri().path(), &state.config.server.base_path) {
        // 3. the unauthenticated routes
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            health(&state)
        } else {
            let mut resp = error_response(ApiError::MethodNotRelayed);
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            resp
        }
    } else {
        let ip = client_ip(peer, req.headers(), &state.trusted_proxies);
        let log = state.logger.as_ref().map(|logger| {
            let mut log = RequestLog::begin(
                request_id.to_str().unwrap_or(""),
                req.method().as_str(),
                crate::logs::request::ip_text(ip),
            );
            log.request_headers(&logger.records, req.headers());
            if !trusted_peer {
                log.record().client_request_id = caller_request_id(req.headers())
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
            }
            log
        });
        // Holds the record until one of the paths below writes it; if this
        // future is dropped before `relay` returns, the guard writes it.
        let mut pending = PendingLog {
            log,
            state: &state,
            answered: false,
        };
        let mut refusal_headers = HeaderMap::new();
        let body_may_be_unread = has_http1_body(&req);
        let relayed = relay(
            state.clone(),
            ip,
            req,
            &mut pending.log,
            &mut refusal_headers,
        )
        .await;
        pending.answered = true;
        match relayed {
            Ok(r) => r,
            Err(e) => {
                state.stats.rejected.fetch_add(1, Ordering::Relaxed);
                if e == ApiError::OriginNotAllowed {
                    // No CORS headers for the refused origin (the browser
                    // hides the answer), but still `Vary: Origin`.
                    cors_origin = None;
                }
                let body = e.body();
                let mut resp = error_response_with(e, body.clone());
                resp.headers_mut().extend(refusal_headers);
                if body_may_be_unread {
                    // Most refusals come before the body is read; hyper then
                    // cannot reuse the connection. Saying so keeps a
                    // keep-alive client from sending its next request into a
                    // closing socket.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                // A refusal is one record, written now (relay() handed the
                // log to the response body only on success).
                if let (Some(mut log), Some(logger)) = (pending.log.take(), &state.logger) {
                    log.record().error_code = Some(e.code().to_string());
                    log.answered(&logger.records, resp.headers(), &body);
                    logger.pipeline.push(Arc::new(log.finish(
                        e.status().as_u16(),
                        None,
                        body.len() as u64,
                        false,
                    )));
                }
                resp
            }
        }
    };

    // 8. what every answer carries
    let headers = resp.headers_mut();
    headers.insert(X_REQUEST_ID, request_id);
    if !preflight {
        state.cors.decorate(cors_origin, headers);
    }
    Ok(resp)
}

/// A request whose answer is not made yet. `handle`'s future is dropped
/// unfinished when hyper sees the client hang up (or the shutdown grace
/// ends) while `relay` still waits (for the provider's head, the request
/// body, the usage store): then no path wrote the record or counted the
/// outcome, and this guard does, as an answer never sent. Once `relay`
/// returns, its paths own the record (they `take()` it) and the outcome.
/// With logging off this is a flag and a branch.
struct PendingLog<'a> {
    log: Option<RequestLog>,
    state: &'a AppState,
    /// `relay` returned: the record (if any) is written by the answer.
    answered: bool,
}

/// The record's `status` for a request the client left before any answer
/// was sent (nginx's "client closed request"; no client saw it).
pub const CLIENT_CLOSED_STATUS: u16 = 499;

impl Drop for PendingLog<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let shutdown = self.state.grace_over.load(Ordering::Relaxed);
        if !shutdown {
            self.state
                .stats
                .client_aborted
                .fetch_add(1, Ordering::Relaxed);
        }
        let (Some(mut log), Some(logger)) = (self.log.take(), &self.state.logger) else {
            return;
        };
        let status = if shutdown {
            // The relay gave up on it: what it answers when it cannot serve.
            log.record().error_code = Some(SHUTDOWN_CUT.to_string());
            StatusCode::SERVICE_UNAVAILABLE.as_u16()
        } else {
            CLIENT_CLOSED_STATUS
        };
        logger
            .pipeline
            .push(Arc::new(log.finish(status, None, 0, !shutdown)));
    }
}

/// What `Allow` says when the relay refuses a method itself.
const RELAYED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The methods provider APIs use; anything else is refused before the
/// token is read.
fn is_relayed_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// Steps 4–8 for a request under the base path. `log` (when logging is on)
/// is filled in along the way; on success it moves into the response body's
/// finish hook, on error the caller writes it. `refusal_headers` are added
/// to the error answer (`Allow` on a 405).
async fn relay(
    state: Arc<AppState>,
    ip: std::net::IpAddr,
    req: Request<Incoming>,
    log: &mut Option<RequestLog>,
    refusal_headers: &mut HeaderMap,
) -> Result<Response<RelayBody>, ApiError> {
    let base = state.config.server.base_path.as_str();
    let path = req.uri().path();
    let rest = match path.strip_prefix(base) {
        Some(rest) => rest,
        None if path == base.trim_end_matches('/') => "",
        None => {
            if let Some(log) = log.as_mut() {
                // (`finish` masks any segment shaped like a token.)
                log.record().path = path.to_string();
            }
            return Err(ApiError::NotFound);
        }
    };
    // Only string work: where the token is, and the path and query without it
    // (what the log may show even for a request refused next).
    let located = auth::locate(rest, req.uri().query(), req.headers());
    // hyper's own limit is its read buffer, which lets heads of up to about
    // twice the setting through; this makes `max_header_bytes` exact.
    let head_too_large = head_len(&req) > state.config.server.max_header_bytes;
    if let Some(log) = log.as_mut() {
        let r = log.record();
        r.path.clear();
        r.path.reserve(base.len() + located.rest.len());
        r.path.push_str(base);
        r.path.push_str(&located.rest);
        r.query.clone_from(&located.query);
        if let Some(t) = &located.token {
            log.secret(t);
        }
    }

    if head_too_large {
        return Err(ApiError::HeadersTooLarge);
    }
    // TRACE would echo the injected credential back to the client; CONNECT
    // and extension methods have no place in a provider's API.
    if !is_relayed_method(req.method()) {
        refusal_headers.insert(header::ALLOW, HeaderValue::from_static(RELAYED_METHODS));
        return Err(ApiError::MethodNotRelayed);
    }

    // 4. traffic limits, before any crypto (one clock read for the request's
    // limits and its start)
    let started = Instant::now();
    state
        .limiter
        .check(ip, started)
        .map_err(|retry| ApiError::RateLimited(retry.0))?;

    // 5. token
    let legacy_on = state.config.legacy_decoding();
    let (claims, format) =
        auth::authenticate(&state.keys.current(), &located, legacy_on, auth::unix_now())?;
    if state.usage.is_revoked(&claims.jti) {
        return Err(ApiError::TokenRevoked);
    }
    let mut rest = located.rest;
    let legacy_token = matches!(format, auth::TokenFormat::Legacy { .. });
    if legacy_token {
        rest = strip_repeated_base(&rest, base).to_string();
    }
    let query = located.query;
    if let Some(log) = log.as_mut() {
        if let Some(key) = claims.api_key() {
            log.secret(key.expose());
        }
        let r = log.record();
        r.jti = Some(claims.jti.clone());
        r.sub.clone_from(&claims.sub);
        r.ext_info.clone_from(&claims.ext_info);
        r.provider = Some(claims.provider.clone());
        r.kid = match &format {
            auth::TokenFormat::Legacy { key_id } => Some(key_id.clone()),
            // The token decoded above: only its header needs reading again.
            auth::TokenFormat::V2 => located
                .token
                .as_deref()
                .and_then(relayapi_token::header_kid),
        };
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    // `_relayapi/` is the relay's own namespace: never forwarded.
    if in_own_namespace(&rest) {
        if req.method() != Method::GET || rest.trim_end_matches('/') != USAGE_ROUTE {
            return Err(ApiError::NotFound);
        }
        policy::check_origin_and_ip(&claims, origin.as_ref(), ip)?;
        return token_usage(&state, &claims, log).await;
    }

    // 6. policy: static scopes first (nothing is counted for these), on the
    // path below the provider's base URL
    let provider = match state.registry.get(&claims.provider) {
        Some(p) if p.configured => p.clone(),
        Some(_) => return Err(ApiError::ProviderUnknown),
        // Only legacy tokens may name a URL, and only an allowed one.
        None if legacy_token => state
            .registry
            .legacy_url_provider(&claims.provider, &state.config.legacy.allowed_provider_urls)
            .ok_or(ApiError::ProviderUnknown)?,
        None => return Err(ApiError::ProviderUnknown),
    };
    if let Some(log) = log.as_mut() {
        log.record().provider = Some(provider.id.clone());
    }
    let scoped = policy::check_scope(&claims, req.method(), origin.as_ref(), ip, &rest, |p| {
        provider.local_path(p)
    });
    if scoped == Err(ApiError::MethodNotAllowed) {
        let allow = claims.methods.as_deref().unwrap_or_default().join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            refusal_headers.insert(header::ALLOW, v);
        }
    }
    if let Some(normalised) = scoped? {
        // `./_relayapi/…` or `%5Frelayapi/…` only reach the namespace once
        // normalised; they are not the usage route's spellings.
        if in_own_namespace(&normalised) {
            return Err(ApiError::NotFound);
        }
        rest = normalised;
    }
    // Once: a base path the client's SDK repeated goes (a suffix, no copy).
    let repeated = rest.len() - provider.local_path(&rest).len();
    rest.drain(..repeated);
    if let Some(log) = log.as_mut() {
        // Gemini and Azure name the model in the path (a JSON body's
        // `model`, read by the tap, is the fallback).
        log.record().model_requested = proxy::path_model(&rest).map(str::to_string);
    }
    let credential = upstream_credential(&state.credentials, &claims, &provider.id)?;
    // The first attempt's key and auth header, before any counter: a token
    // key no header can carry (a stray newline) is refused as invalid
    // without spending a call. (Pool keys are checked when the config loads.)
    let (first_index, first_key) = credential.first().ok_or(ApiError::CredentialUnknown)?;
    let mut first_auth = Some(
        provider
            .auth
            .header_value(first_key.expose())
            .ok_or(ApiError::TokenInvalid)?,
    );
    // per-token counters: rate, then a concurrency slot (held to the finish)
    if let Some(rps) = claims.rps {
        let burst = claims.effective_burst().unwrap_or(rps);
        state
            .policy
            .rates
            .check(&claims.jti, rps, burst, started)
            .map_err(|retry| ApiError::RateLimited(retry.0))?;
    }
    let slot = match claims.concurrency {
        Some(limit) => Some(
            state
                .policy
                .in_flight
                .acquire(&claims.jti, limit)
                .ok_or(ApiError::ConcurrencyExceeded)?,
        ),
        None => None,
    };

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let idle = state.config.upstream.idle_timeout;
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Set by the limit when it cut the body (only tokens with a limit).
    let mut too_big: Option<Arc<std::sync::atomic::AtomicBool>> = None;
    if let Some(max) = claims.max_body_bytes {
        if declared_len.is_some_and(|n| n > max) {
            return Err(ApiError::PayloadTooLarge);
        }
    }
    let mut body: RelayBody = IdleTimeout::new(body, idle).boxed();
    // The tap sits before the limit: the record counts (and captures) what
    // was received, also the chunk that broke the limit.
    if let (Some(log), Some(logger)) = (log.as_mut(), &state.logger) {
        let tap = log.tap_request(&logger.records, &headers);
        body = Tapped::new(body, tap).boxed();
    }
    if let Some(max) = claims.max_body_bytes {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        body = LimitedBody::new(body, max, flag.clone()).boxed();
        too_big = Some(flag);
    }
    let cap = state.config.server.max_parsed_body_bytes;
    let read_error = |e: ApiError| {
        if too_big
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire))
        {
            ApiError::PayloadTooLarge
        } else {
            e
        }
    };
    // The body, when it had to be read (model policy, budget, or a key_ref
    // retry); then every attempt sends these bytes.
    let mut buffered: Option<Bytes> = None;
    if proxy::needs_model_policy(&claims) {
        // Azure runs the deployment in the path: the configured one is
        // what the policy checks (and rewrites), so it is made explicit.
        if let Some(dep) = provider.default_deployment(&rest) {
            rest = format!("deployments/{dep}/{}", rest.trim_start_matches('/'));
        }
        let bytes = proxy::read_capped(body, cap).await.map_err(read_error)?;
        // Two content types: which one a provider reads is its choice.
        let mut content_types = headers.get_all(header::CONTENT_TYPE).iter();
        let content_type = content_types.next().and_then(|v| v.to_str().ok());
        if content_types.next().is_some() {
            return Err(ApiError::InvalidBody);
        }
        let (new_rest, new_body) =
            proxy::apply_model_policy(&claims, &parts.method, &rest, &query, &bytes, content_type)?;
        rest = new_rest;
        buffered = Some(new_body.unwrap_or(bytes));
        body = full(Bytes::new());
    }
    // The path is final: a client path no URI can carry is refused before
    // anything is reserved.
    let mut uri = provider
        .upstream_uri(&rest, &query)
        .ok_or(ApiError::NotFound)?;
    let mut strip_usage = false;
    let mut reservation = None;
    // Only a POST can make a provider generate (list models, fetch a file:
    // GET/DELETE/...), so only a POST reserves budget.
    let budgeted = claims.max_tokens.filter(|_| parts.method == Method::POST);
    if let Some(max_tokens) = budgeted {
        if buffered.is_none() && is_json_or_untyped(&headers) {
            buffered = Some(proxy::read_capped(body, cap).await.map_err(read_error)?);
            body = full(Bytes::new());
        }
        let seen = budget::inspect(
            &rest,
            buffered.as_deref().unwrap_or_default(),
            state.policy.default_reservation,
        );
        if let Some(new_body) = seen.new_body {
            buffered = Some(new_body);
        }
        if seen.strip_usage_chunk {
            // The stripper reads the event stream: ask for it uncompressed.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            strip_usage = true;
        }
        reservation = Some(reserve_budget(&state, &claims, max_tokens, seen.reserve).await?);
    }
    let retry_possible = credential.pool().is_some_and(|c| c.len() > 1);
    if retry_possible && buffered.is_none() {
        // A small body of known length is read so that the one retry can
        // resend it; a streamed or large body is sent once, without retry.
        let empty = declared_len == Some(0) || http_body::Body::is_end_stream(&body);
        if empty {
            buffered = Some(Bytes::new());
        } else if declared_len.is_some_and(|n| n <= cap as u64) {
            buffered = Some(proxy::read_capped(body, cap).await.map_err(read_error)?);
            body = full(Bytes::new());
        }
    }
    if let Some(bytes) = &buffered {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    }
    let calls_remaining = match claims.max_calls {
        None => None,
        Some(max) => match state.usage.reserve_call(&claims.jti, max, claims.exp).await {
            Ok(Admission::Admitted { remaining, .. }) => Some(remaining),
            Ok(Admission::Exhausted { .. }) => return Err(ApiError::TokenExhausted),
            Err(e) => {
                tracing::error!(error = %e, "usage store failed; refusing the call");
                return Err(ApiError::ServiceUnavailable);
            }
        },
    };

    // 7. forward (a key_ref call with a replayable body may try two keys)
    if let Some(log) = log.as_mut() {
        log.forwarding(claims.effective_model().as_deref());
    }
    let mut attempt_key = Some((first_index, first_key));
    let mut retried = false;
    let upstream = loop {
        let Some((key_index, key)) = attempt_key else {
            return Err(ApiError::CredentialUnknown);
        };
        if let Some(log) = log.as_mut() {
            log.secret(key.expose());
        }
        let next_key = match (&buffered, credential.pool()) {
            (Some(_), Some(pool)) if !retried => pool.key_after(key_index),
            _ => None,
        };
        // Copies only when a second attempt may follow.
        let (attempt_headers, attempt_uri) = if next_key.is_some() {
            (headers.clone(), uri.clone())
        } else {
            (std::mem::take(&mut headers), std::mem::take(&mut uri))
        };
        let attempt_body = match &buffered {
            Some(bytes) => full(bytes.clone()),
            None => std::mem::replace(&mut body, full(Bytes::new())),
        };
        let mut upstream_req = Request::new(attempt_body);
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = attempt_uri;
        let auth = match first_auth.take() {
            Some(auth) => auth,
            None => provider
                .auth
                .header_value(key.expose())
                .ok_or(ApiError::TokenInvalid)?,
        };
        *upstream_req.headers_mut() = proxy::upstream_headers(attempt_headers, &provider, auth);
        let sent = proxy::send(
            &state.client,
            upstream_req,
            state.config.upstream.first_byte_timeout,
        )
        .await;
        let retry = match &sent {
            Ok(resp) => {
                resp.status() == StatusCode::TOO_MANY_REQUESTS || resp.status().is_server_error()
            }
            Err(e) => *e == ApiError::UpstreamUnreachable,
        };
        match (sent, next_key) {
            (_, Some(next)) if retry => {
                tracing::debug!(
                    key = key_index,
                    "retrying once with the credential's next key"
                );
                attempt_key = Some(next);
                retried = true;
            }
            (Ok(resp), _) => break resp,
            (Err(e), _) => return Err(read_error(e)),
        }
    };
    state.stats.relayed.fetch_add(1, Ordering::Relaxed);

    // 8. respond: status and headers as the provider sent them, body streamed
    let (mut rparts, rbody) = upstream.into_parts();
    proxy::downstream_headers(&mut rparts.headers);
    if let Some(id) = rparts.headers.remove(&X_REQUEST_ID) {
        rparts.headers.insert(UPSTREAM_REQUEST_ID, id);
    }
    // The response tap and the record travel with the body to its finish hook.
    let mut record_log = log.take();
    let response_tap = match (record_log.as_mut(), &state.logger) {
        (Some(log), Some(logger)) => {
            log.mark_ttfb();
            log.record().upstream_status = Some(rparts.status.as_u16());
            if logger.records.bodies {
                log.record().response_headers = Some(redact::redact_headers(
                    &rparts.headers,
                    &logger.records.redact_headers,
                ));
            }
            Some(new_tap(
                Direction::Response,
                &logger.records,
                &rparts.headers,
            ))
        }
        // Budgets are settled, and the admin API counts, from the usage.
        _ if reservation.is_some() || state.config.admin.enabled() => Some(new_tap(
            Direction::Response,
            &state.usage_tap,
            &rparts.headers,
        )),
        _ => None,
    };
    if let Some(n) = calls_remaining {
        rparts.headers.insert(CALLS_REMAINING, HeaderValue::from(n));
    }
    if let Some(r) = &reservation {
        rparts
            .headers
            .insert(TOKENS_REMAINING, HeaderValue::from(r.remaining));
    }
    // Only an uncompressed event stream is filtered (an error answer is JSON).
    let strip_usage = strip_usage
        && !rparts.headers.contains_key(header::CONTENT_ENCODING)
        && rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    if strip_usage {
        rparts.headers.remove(header::CONTENT_LENGTH);
    }
    let status = rparts.status;
    state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let finish_state = state.clone();
    let finish_provider = provider.clone();
    let finish_claims = claims.clone();
    // The plain case is boxed once (below, with the finish hook); only a
    // tapped or filtered stream pays for a second box.
    let rbody = IdleTimeout::new(rbody, idle);
    let rbody = match (&response_tap, strip_usage) {
        (None, false) => Either::Left(rbody),
        (tap, strip) => {
            let mut b: RelayBody = match tap {
                Some(tap) => Tapped::new(rbody, tap.clone()).boxed(),
                None => rbody.boxed(),
            };
            if strip {
                b = StripUsageChunk::new(b).boxed();
            }
            Either::Right(b)
        }
    };
    let body = Finish::new(rbody, move |reason: FinishReason| {
        // 9. finish: exactly once, whatever happened to the stream
        let outcome = response_tap.and_then(take_tap).map(|t| t.finish());
        let usage = outcome.as_ref().and_then(|o| o.usage.as_ref());
        if let Some(r) = reservation {
            let charged = budget::charge(r.reserved, Some(status.as_u16()), Some(reason), usage);
            r.settle(&finish_state.usage, charged);
        }
        drop(slot);
        let now = auth::unix_now();
        finish_state.usage.record_use(
            &finish_claims.jti,
            UsageDelta {
                sub: finish_claims.sub.clone(),
                calls: 1,
                llm_tokens: usage.map_or(0, |u| u.total_tokens),
                first_use: now,
                last_use: now,
                exp: finish_claims.exp,
            },
        );
        if let (Some(mut log), Some(logger)) = (record_log, &finish_state.logger) {
            let (bytes, aborted) = match reason {
                FinishReason::Complete { bytes } | FinishReason::UpstreamError { bytes } => {
                    (bytes, false)
                }
                // The relay itself cut the stream: its shutdown grace ran out.
                FinishReason::ClientGone { bytes }
                    if finish_state.grace_over.load(Ordering::Relaxed) =>
                {
                    log.record().error_code = Some(SHUTDOWN_CUT.to_string());
                    (bytes, false)
                }
                FinishReason::ClientGone { bytes } => (bytes, true),
            };
            logger.pipeline.push(Arc::new(log.finish(
                status.as_u16(),
                outcome,
                bytes,
                aborted,
            )));
        }
        let stats = &finish_state.stats;
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let outcome = match reason {
            FinishReason::Complete { .. } => &stats.completed,
            FinishReason::UpstreamError { .. } => &stats.upstream_aborted,
            FinishReason::ClientGone { .. } => &stats.client_aborted,
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            provider = %finish_provider.id,
            status = status.as_u16(),
            ?reason,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request finished"
        );
    });
    let mut resp = Response::new(body.boxed());
    *resp.status_mut() = status;
    *resp.headers_mut() = rparts.headers;
    Ok(resp)
}

/// An HTTP/1 request with a body (HTTP/2 streams close on their own and
/// forbid `Connection`).
fn has_http1_body(req: &Request<Incoming>) -> bool {
    req.version() < http::Version::HTTP_2
        && (req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"))
}

/// `/health`, also under the base path and with doubled slashes: the
/// earlier SDK's `health_check()` asks for `/relayapi//health`.
fn is_health_path(path: &str, base_path: &str) -> bool {
    if path == "/health" {
        return true;
    }
    if !path.ends_with("/health") {
        return false;
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let mut base = base_path.split('/').filter(|s| !s.is_empty());
    loop {
        match (base.next(), segments.next()) {
            (Some(b), Some(s)) if b == s => {}
            (Some(_), _) => return false,
            (None, Some("health")) => return segments.next().is_none(),
            (None, _) => return false,
        }
    }
}

/// The earlier SDK wrote its base path twice (`/relayapi//relayapi/chat/completions`);
/// for its tokens the second copy is dropped. (A v2 token never gets this
/// treatment: a base path like `/v1/` must not eat a provider's `v1/`.)
fn strip_repeated_base<'a>(rest: &'a str, base_path: &str) -> &'a str {
    let base = base_path.trim_matches('/');
    match rest.strip_prefix(base) {
        Some(after) if !base.is_empty() && (after.is_empty() || after.starts_with('/')) => {
            after.trim_start_matches('/')
        }
        _ => rest,
    }
}

/// The relay's own route under the base path: the token's limits and what
/// is left (`GET {base_path}_relayapi/usage`, token anywhere it may be).
pub const USAGE_ROUTE: &str = "_relayapi/usage";

/// Which key a call uses: the token's own, or a relay-held credential.
enum UpstreamCredential<'a> {
    Token(&'a relayapi_token::SecretString),
    Pool(&'a Credential),
}

impl<'a> UpstreamCredential<'a> {
    fn pool(&self) -> Option<&'a Credential> {
        match self {
            UpstreamCredential::Pool(c) => Some(c),
            UpstreamCredential::Token(_) => None,
        }
    }

    /// The key of the first attempt (round-robin for a pool).
    fn first(&self) -> Option<(usize, &'a relayapi_token::SecretString)> {
        match self {
            UpstreamCredential::Token(k) => Some((0, k)),
            UpstreamCredential::Pool(c) => c.next_key(),
        }
    }
}

/// Resolves `api_key` / `key_ref`. A `key_ref` must name a credential held
/// for the same provider the token names (`credential_unknown` otherwise).
fn upstream_credential<'a>(
    credentials: &'a Credentials,
    claims: &'a relayapi_token::Claims,
    provider_id: &str,
) -> Result<UpstreamCredential<'a>, ApiError> {
    match &claims.credential {
        relayapi_token::Credential::ApiKey(key) => Ok(UpstreamCredential::Token(key)),
        relayapi_token::Credential::KeyRef(name) => credentials
            .get(name)
            .filter(|c| c.provider_id == provider_id && !c.is_empty())
            .map(UpstreamCredential::Pool)
            .ok_or(ApiError::CredentialUnknown),
    }
}

/// A budget reservation in flight. Dropped without [`Reservation::settle`]
/// (the call failed before an answer), it is released.
struct Reservation {
    jti: String,
    reserved: u64,
    /// Budget left after this reservation, for `x-relayapi-tokens-remaining`.
    remaining: u64,
    /// Set until settled; a drop with it still set releases the reservation.
    state: Option<Arc<AppState>>,
}

impl Reservation {
    fn settle(mut self, usage: &UsageStore, charged: u64) {
        self.state = None;
        usage.settle_tokens(&self.jti, self.reserved, charged);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.usage.settle_tokens(&self.jti, self.reserved, 0);
        }
    }
}

async fn reserve_budget(
    state: &Arc<AppState>,
    claims: &relayapi_token::Claims,
    max_tokens: u64,
    amount: u64,
) -> Result<Reservation, ApiError> {
    match state
        .usage
        .reserve_tokens(&claims.jti, max_tokens, amount, claims.exp)
        .await
    {
        Ok(BudgetAdmission::Admitted { remaining, .. }) => Ok(Reservation {
            jti: claims.jti.clone(),
            reserved: amount,
            remaining,
            state: Some(state.clone()),
        }),
        Ok(BudgetAdmission::Exhausted { used }) => Err(ApiError::BudgetExhausted {
            remaining: max_tokens.saturating_sub(used),
        }),
        Err(e) => {
            tracing::error!(error = %e, "usage store failed; refusing the call");
            Err(ApiError::ServiceUnavailable)
        }
    }
}

/// True for a path in the relay's own `_relayapi/` namespace.
fn in_own_namespace(rest: &str) -> bool {
    rest == "_relayapi" || rest.starts_with("_relayapi/")
}

/// The size of the request head as HTTP/1.1 sends it: request line, each
/// `name: value` line and the blank line.
fn head_len(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    req.headers().iter().fold(line + 2, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

/// True when the request body is JSON, or says nothing about its type; only
/// then does a budget token's body get read to find its output limit.
fn is_json_or_untyped(headers: &HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        }
    }
}

/// `GET {base}_relayapi/usage`: the token's limits and what is left. Not a
/// call: nothing is counted or reserved. Never shows a provider key.
async fn token_usage(
    state: &AppState,
    claims: &relayapi_token::Claims,
    log: &mut Option<RequestLog>,
) -> Result<Response<RelayBody>, ApiError> {
    let store = &state.usage;
    let failed = |e: crate::usage::UsageError| {
        tracing::error!(error = %e, "usage store failed");
        ApiError::ServiceUnavailable
    };
    let calls_used = match claims.max_calls {
        Some(_) => store.calls_used(&claims.jti).await.map_err(failed)?,
        None => 0,
    };
    let tokens_used = match claims.max_tokens {
        Some(_) => store.tokens_used(&claims.jti).await.map_err(failed)?,
        None => 0,
    };
    let body = serde_json::json!({
        "provider": claims.provider,
        "sub": claims.sub,
        "expires_at": claims.exp,
        "limits": {
            "max_calls": claims.max_calls,
            "max_tokens": claims.max_tokens,
            "rps": claims.rps,
            "burst": claims.effective_burst(),
            "concurrency": claims.concurrency,
            "max_body_bytes": claims.max_body_bytes,
            "model": claims.effective_model(),
            "models": claims.models,
            "origins": claims.origins,
            "ips": claims.ips,
            "paths": claims.paths,
            "methods": claims.methods,
        },
        "used": {
            "calls": claims.max_calls.map(|_| calls_used),
            "tokens": claims.max_tokens.map(|_| tokens_used),
        },
        "remaining": {
            "calls": claims.max_calls.map(|m| m.saturating_sub(calls_used)),
            "tokens": claims.max_tokens.map(|m| m.saturating_sub(tokens_used)),
        },
    });
    let bytes = Bytes::from(body.to_string());
    if let (Some(log), Some(logger)) = (log.take(), &state.logger) {
        let len = bytes.len() as u64;
        logger
            .pipeline
            .push(Arc::new(log.finish(200, None, len, false)));
    }
    let mut resp = Response::new(full(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Background work of a running relay: writes the usage statistics every
/// second (a nudge only: the store also writes them when it closes). Ends
/// when the state is dropped.
pub fn spawn_background(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            state.client.sweep_idle();
            if let Err(e) = state.usage.flush_usage().await {
                tracing::debug!(error = %e, "usage statistics not written");
            }
        }
    });
}

pub fn error_response(e: ApiError) -> Response<RelayBody> {
    let body = e.body();
    error_response_with(e, body)
}

/// [`error_response`] with `e`'s body already made.
fn error_response_with(e: ApiError, body: Bytes) -> Response<RelayBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(ra) = e.retry_after() {
        h.insert(header::RETRY_AFTER, ra);
    }
    // The header every admitted call carried, at its end value; and, as
    // waiting does not bring these back, no SDK retry (they would retry a
    // 429 twice, with back-off, before raising).
    match e {
        ApiError::TokenExhausted => {
            h.insert(CALLS_REMAINING, HeaderValue::from_static("0"));
            h.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        ApiError::BudgetExhausted { remaining } => {
            h.insert(TOKENS_REMAINING, HeaderValue::from(remaining));
            h.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        _ => {}
    }
    resp
}

fn health(state: &AppState) -> Response<RelayBody> {
    let s = &state.stats;
    // Still 200 when degraded: stateless tokens are served, and a liveness
    // probe restarting the relay would not mend a full disk.
    let status = if state.usage.is_failing() {
        "degraded"
    } else {
        "ok"
    };
    let body = serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "keys": state.keys.current().v2.len(),
        "requests": {
            "total": s.requests.load(Ordering::Relaxed),
            "relayed": s.relayed.load(Ordering::Relaxed),
            "rejected": s.rejected.load(Ordering::Relaxed),
            "in_flight": s.in_flight.load(Ordering::Relaxed),
            "completed": s.completed.load(Ordering::Relaxed),
            "upstream_aborted": s.upstream_aborted.load(Ordering::Relaxed),
            "client_aborted": s.client_aborted.load(Ordering::Relaxed),
        },
        "logs": state.logger.as_ref().map(|l| l.pipeline.stats()),
        "usage": state.usage.health_report(),
    });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn generated_request_ids_are_prefix_and_hex_counter() {
        let state = AppState::new(Config::default(), Keys::default(), UsageStore::memory());
        let id = |s: &AppState| {
            s.request_id(&HeaderMap::new(), true)
                .to_str()
                .unwrap()
                .to_string()
        };
        let prefix = format!("req_{}", state.id_prefix);
        assert_eq!(id(&state), format!("{prefix}0000000000"));
        assert_eq!(id(&state), format!("{prefix}0000000001"));
        state.id_counter.store(0xabc_def0_1234, Ordering::Relaxed);
        assert_eq!(id(&state), format!("{prefix}abcdef01234"));
        state.id_counter.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(id(&state), format!("{prefix}ffffffffffffffff"));
        // A trusted caller's plain id is kept; anything else is replaced.
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("trace-42.a:b_c"));
        assert_eq!(state.request_id(&h, true), "trace-42.a:b_c");
        assert!(state
            .request_id(&h, false)
            .to_str()
            .unwrap()
            .starts_with(&prefix));
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert!(state
            .request_id(&h, true)
            .to_str()
            .unwrap()
            .starts_with(&prefix));
        assert_eq!(state.id_prefix.len(), 16, "64 bits of prefix");
    }

    #[test]
    fn health_answers_at_the_root_and_under_the_base_path() {
        for p in [
            "/health",
            "/relayapi/health",
            "/relayapi//health",
            "//relayapi/health",
        ] {
            assert!(is_health_path(p, "/relayapi/"), "{p}");
        }
        for p in [
            "/relayapi/x/health",
            "/other/health",
            "/relayapi/healthz",
            "/health/x",
            "/",
        ] {
            assert!(!is_health_path(p, "/relayapi/"), "{p}");
        }
        assert!(is_health_path("/a/b/health", "/a/b/"));
    }

    #[test]
    fn the_earlier_sdks_doubled_base_path_is_dropped() {
        assert_eq!(
            strip_repeated_base("relayapi/chat/completions", "/relayapi/"),
            "chat/completions"
        );
        assert_eq!(strip_repeated_base("relayapi", "/relayapi/"), "");
        assert_eq!(
            strip_repeated_base("relayapixyz/a", "/relayapi/"),
            "relayapixyz/a"
        );
        assert_eq!(
            strip_repeated_base("chat/completions", "/relayapi/"),
            "chat/completions"
        );
        assert_eq!(strip_repeated_base("chat", "/"), "chat");
    }
}
