//! The request path, top to bottom, written once.
//!
//! Every request goes through [`handle`] in this order; each step may answer
//! early with an [`ApiError`] and nothing below it runs:
//!
//! 1. **accept** — request id (`x-request-id`), client IP;
//! 2. **CORS preflight** — answered here, without a token;
//! 3. **unauthenticated routes** — `GET /health` (the complete list);
//! 4. **traffic limits** — global and per-IP buckets, before any crypto;
//! 5. **token** — located, decrypted, claims validated;
//! 6. **policy** — provider known, `model`/`models`, `max_calls` reserved;
//! 7. **forward** — provider URL, credential injected, bodies streamed;
//! 8. **respond** — provider status and headers, body streamed with a
//!    finish hook; our `x-request-id` and CORS headers on every answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth;
use crate::client_ip::client_ip;
use crate::config::Config;
use crate::cors::Cors;
use crate::error::ApiError;
use crate::keyfile::{KeyStore, Keys};
use crate::limits::{RateSpec, TrafficLimiter};
use crate::logs::redact;
use crate::logs::request::{new_tap, take_tap, RequestLog, Tapped};
use crate::logs::tap::Direction;
use crate::logs::Logger;
use crate::providers::Registry;
use crate::proxy::{self, full, Finish, FinishReason, IdleTimeout, RelayBody};
use crate::usage::{Admission, UsageStore};

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
    /// Relayed responses the client stopped reading before the end.
    pub client_aborted: AtomicU64,
}

/// Everything the request path needs, shared by all connections.
pub struct AppState {
    pub config: Config,
    /// The accepted keys; swapped when a watched `.rai` directory changes.
    pub keys: KeyStore,
    pub registry: Registry,
    pub limiter: TrafficLimiter,
    pub usage: UsageStore,
    /// One upstream pool per server worker thread.
    pub client: proxy::Upstream,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub cors: Cors,
    pub stats: Stats,
    /// Request logging, when any sink is on.
    pub logger: Option<Logger>,
    pub started: Instant,
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
        let mut prefix = [0u8; 4];
        // Uniqueness across restarts is nice to have, not a safety property.
        let _ = getrandom::getrandom(&mut prefix);
        AppState {
            limiter: TrafficLimiter::new(global, per_ip, rl.max_tracked_ips),
            registry: Registry::new(&config.providers),
            client: proxy::Upstream::new(&config.upstream, crate::server::worker_count()),
            logger: Logger::start(&config.log),
            trusted_proxies: config.trusted_proxies(),
            cors: Cors::new(&config.cors),
            stats: Stats::default(),
            started: Instant::now(),
            id_prefix: hex::encode(prefix),
            id_counter: AtomicU64::new(0),
            keys: KeyStore::new(keys),
            usage,
            config,
        }
    }

    fn request_id(&self, headers: &HeaderMap) -> HeaderValue {
        // A caller's own id is kept when it is short and plain, so traces join up.
        if let Some(v) = headers.get("x-request-id") {
            let ok = v.len() <= 128
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
            if ok && !v.is_empty() {
                return v.clone();
            }
        }
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

/// The whole request path. Never fails: errors become responses.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Infallible> {
    // 1. accept
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = state.request_id(req.headers());
    let origin = req.headers().get(header::ORIGIN).cloned();

    // 2. CORS preflight: no token, no limits below.
    let preflight = state.cors.is_preflight(req.method(), req.headers());
    let mut resp = if preflight {
        state.cors.preflight(req.headers())
    } else if req.uri().path() == "/health" && req.method() == Method::GET {
        // 3. the unauthenticated routes
        health(&state)
    } else {
        let ip = client_ip(peer, req.headers(), &state.trusted_proxies);
        let mut log = state.logger.as_ref().map(|_| {
            RequestLog::begin(
                request_id.to_str().unwrap_or(""),
                req.method().as_str(),
                ip.to_string(),
            )
        });
        match relay(state.clone(), ip, req, &mut log).await {
            Ok(r) => r,
            Err(e) => {
                state.stats.rejected.fetch_add(1, Ordering::Relaxed);
                // A refusal is one record, written now (relay() handed the
                // log to the response body only on success).
                if let (Some(mut log), Some(logger)) = (log, &state.logger) {
                    log.record().error_code = Some(e.code().to_string());
                    logger
                        .pipeline
                        .push(Arc::new(log.finish(e.status().as_u16(), None, 0, false)));
                }
                error_response(e)
            }
        }
    };

    // 8. what every answer carries
    let headers = resp.headers_mut();
    headers.insert("x-request-id", request_id);
    if !preflight {
        state.cors.decorate(origin.as_ref(), headers);
    }
    Ok(resp)
}

/// Steps 4–8 for a request under the base path. `log` (when logging is on)
/// is filled in along the way; on success it moves into the response body's
/// finish hook, on error the caller writes it.
async fn relay(
    state: Arc<AppState>,
    ip: std::net::IpAddr,
    req: Request<Incoming>,
    log: &mut Option<RequestLog>,
) -> Result<Response<RelayBody>, ApiError> {
    let base = state.config.server.base_path.as_str();
    let path = req.uri().path();
    let rest = match path.strip_prefix(base) {
        Some(rest) => rest,
        None if path == base.trim_end_matches('/') => "",
        None => {
            if let Some(log) = log.as_mut() {
                log.record().path = redact::token_free_path(path);
            }
            return Err(ApiError::NotFound);
        }
    };
    // Only string work: where the token is, and the path and query without it
    // (what the log may show even for a request refused next).
    let located = auth::locate(rest, req.uri().query(), req.headers());
    if let Some(log) = log.as_mut() {
        let r = log.record();
        r.path = format!("{base}{}", located.rest);
        r.query.clone_from(&located.query);
        if let Some(t) = &located.token {
            log.secret(t);
        }
    }

    // 4. traffic limits, before any crypto
    state
        .limiter
        .check(ip, Instant::now())
        .map_err(|retry| ApiError::RateLimited(retry.0))?;

    // 5. token
    let legacy_on = state.config.legacy_tokens;
    let (claims, format) =
        auth::authenticate(&state.keys.current(), &located, legacy_on, auth::unix_now())?;
    let mut rest = located.rest;
    let query = located.query;
    if let Some(log) = log.as_mut() {
        log.secret(claims.api_key.expose());
        let r = log.record();
        r.jti = Some(claims.jti.clone());
        r.sub.clone_from(&claims.sub);
        r.ext_info.clone_from(&claims.ext_info);
        r.provider = Some(claims.provider.clone());
        r.kid = located.token.as_deref().and_then(relayapi_token::peek_kid);
        r.model_sent = claims.effective_model().map(str::to_string);
    }

    // 6. policy
    let provider = match state.registry.get(&claims.provider) {
        Some(p) if p.configured => p.clone(),
        Some(_) => return Err(ApiError::ProviderUnknown),
        // Only legacy tokens may name a URL, and only an allowed one.
        None if format == auth::TokenFormat::Legacy => state
            .registry
            .legacy_url_provider(&claims.provider, &state.config.legacy.allowed_provider_urls)
            .ok_or(ApiError::ProviderUnknown)?,
        None => return Err(ApiError::ProviderUnknown),
    };
    if let Some(log) = log.as_mut() {
        log.record().provider = Some(provider.id.clone());
    }
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let idle = state.config.upstream.idle_timeout;
    let mut body: RelayBody = match (log.as_mut(), &state.logger) {
        (Some(log), Some(logger)) => {
            let tap = log.tap_request(&logger.records, &headers);
            Tapped::new(IdleTimeout::new(body, idle), tap).boxed()
        }
        _ => IdleTimeout::new(body, idle).boxed(),
    };
    if proxy::needs_model_policy(&claims) {
        let cap = state.config.server.max_parsed_body_bytes;
        let bytes = proxy::read_capped(body, cap).await?;
        let (new_rest, new_body) = proxy::apply_model_policy(&claims, &rest, &bytes)?;
        rest = new_rest;
        let bytes = new_body.unwrap_or(bytes);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        body = full(bytes);
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

    // 7. forward
    let url = provider.upstream_url(&rest, &query);
    let headers = proxy::upstream_headers(headers, &provider, claims.api_key.expose())?;
    let mut upstream_req = Request::new(body);
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = url.parse().map_err(|_| ApiError::NotFound)?;
    *upstream_req.headers_mut() = headers;
    let started = Instant::now();
    let upstream = proxy::send(
        &state.client,
        upstream_req,
        state.config.upstream.first_byte_timeout,
    )
    .await?;
    state.stats.relayed.fetch_add(1, Ordering::Relaxed);

    // 8. respond: status and headers as the provider sent them, body streamed
    let (mut rparts, rbody) = upstream.into_parts();
    proxy::downstream_headers(&mut rparts.headers);
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
        _ => None,
    };
    if let Some(n) = calls_remaining {
        rparts
            .headers
            .insert("x-relayapi-calls-remaining", HeaderValue::from(n));
    }
    let status = rparts.status;
    state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let finish_state = state.clone();
    let provider_id = provider.id.clone();
    let rbody: RelayBody = match &response_tap {
        Some(tap) => Tapped::new(IdleTimeout::new(rbody, idle), tap.clone()).boxed(),
        None => IdleTimeout::new(rbody, idle).boxed(),
    };
    let body = Finish::new(rbody, move |reason: FinishReason| {
        if let (Some(log), Some(logger)) = (record_log, &finish_state.logger) {
            let (bytes, aborted) = match reason {
                FinishReason::Complete { bytes } | FinishReason::UpstreamError { bytes } => {
                    (bytes, false)
                }
                FinishReason::ClientGone { bytes } => (bytes, true),
            };
            let outcome = response_tap.and_then(take_tap).map(|t| t.finish());
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
            provider = %provider_id,
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

pub fn error_response(e: ApiError) -> Response<RelayBody> {
    let mut resp = Response::new(full(e.body()));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(ra) = e.retry_after() {
        h.insert(header::RETRY_AFTER, ra);
    }
    resp
}

fn health(state: &AppState) -> Response<RelayBody> {
    let s = &state.stats;
    let body = serde_json::json!({
        "status": "ok",
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
            s.request_id(&HeaderMap::new())
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
        // A caller's plain id is kept; anything else is replaced.
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("trace-42.a:b_c"));
        assert_eq!(state.request_id(&h), "trace-42.a:b_c");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert!(state.request_id(&h).to_str().unwrap().starts_with(&prefix));
    }
}
