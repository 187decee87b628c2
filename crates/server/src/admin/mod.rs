//! The admin API: revoke tokens and read usage, on a listener of its own.
//!
//! * Off unless `admin.api_key` or `admin.api_key_sha256` is set (an admin
//!   API without a key would be open to anyone who can reach the port);
//!   binds `admin.listen`, `127.0.0.1:8841` by default.
//! * Every request needs `Authorization: Bearer <admin key>`. The presented
//!   key is hashed with SHA-256 and compared with the configured hash in
//!   constant time (`subtle`), so neither the key's bytes nor its length
//!   leak through timing, and the config may hold only the hash.
//! * Routes, all JSON, errors in the relay's `{"error":{...}}` shape:
//!   - `POST /admin/tokens/{jti}/revoke` — revoke (durable; refused on this
//!     instance from the next request on, `token_revoked`);
//!   - `GET /admin/tokens/{jti}` — calls, LLM tokens, first/last use, revoked;
//!   - `GET /admin/usage?sub=S` — totals for one end user; without `sub`,
//!     totals for every end user.
//!
//! Usage statistics are written in batches; a read here writes the pending
//! ones first, so it sees every call that has finished.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AdminSettings;
use crate::http::AppState;
use crate::proxy::{full, RelayBody};
use crate::usage::MAX_JTI_LEN;

/// The configured admin key, as the SHA-256 of the key.
#[derive(Clone)]
pub struct AdminKey([u8; 32]);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey([REDACTED])")
    }
}

impl AdminKey {
    /// From the config; `None` when no key is set (the API is then off).
    pub fn from_settings(s: &AdminSettings) -> Option<AdminKey> {
        if let Some(key) = &s.api_key {
            return Some(AdminKey(Sha256::digest(key.expose().as_bytes()).into()));
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(s.api_key_sha256.as_deref()?, &mut hash).ok()?;
        Some(AdminKey(hash))
    }

    /// Constant-time check of a presented key.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.0).into()
    }
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    key: AdminKey,
    shutdown: impl Future<Output = ()>,
) {
    let key = Arc::new(key);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let state = state.clone();
        let key = key.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let key = key.clone();
            async move {
                // Like every relay answer, so an operator's report can be traced.
                let request_id = state.request_id(req.headers(), true);
                let mut resp = handle(&state, &key, req).await;
                resp.headers_mut()
                    .insert(crate::http::X_REQUEST_ID, request_id);
                Ok::<_, Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                tracing::trace!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<RelayBody> {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An error in the relay's shape; `code` is stable (docs/admin.md).
fn error(status: StatusCode, code: &str, message: &str) -> Response<RelayBody> {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    let mut resp = json(
        status,
        &serde_json::json!({"error": {"message": message, "type": kind, "code": code}}),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn bearer(req: &Request<Incoming>) -> Option<&[u8]> {
    let v = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
}

fn valid_jti(jti: &str) -> bool {
    !jti.is_empty()
        && jti.len() <= MAX_JTI_LEN
        && jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unavailable(e: &crate::usage::UsageError) -> Response<RelayBody> {
    tracing::error!(error = %e, "admin: usage store failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        "The usage store is unavailable.",
    )
}

async fn handle(state: &AppState, key: &AdminKey, req: Request<Incoming>) -> Response<RelayBody> {
    if !bearer(&req).is_some_and(|k| key.verify(k)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "admin_unauthorized",
            "Send the admin key as Authorization: Bearer <key>.",
        );
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match segments.as_slice() {
        ["admin", "tokens", jti, "revoke"] => {
            if method != Method::POST {
                return not_allowed("POST");
            }
            if !valid_jti(jti) {
                return bad_jti();
            }
            match state.usage.revoke(jti).await {
                Ok(at) => {
                    tracing::info!(jti = %jti, "token revoked");
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"jti": jti, "revoked": true, "revoked_at": at}),
                    )
                }
                Err(e) => unavailable(&e),
            }
        }
        ["admin", "tokens", jti] => {
            if method != Method::GET {
                return not_allowed("GET");
            }
            if !valid_jti(jti) {
                return bad_jti();
            }
            match state.usage.token_report(jti).await {
                Ok(report) => json(StatusCode::OK, &serde_json::to_value(report).unwrap_or_default()),
                Err(e) => unavailable(&e),
            }
        }
        ["admin", "usage"] => {
            if method != Method::GET {
                return not_allowed("GET");
            }
            let sub = req
                .uri()
                .query()
                .and_then(|q| crate::proxy::query_values(q, "sub").next());
            match state.usage.sub_report(sub.as_deref()).await {
                Ok(reports) => match sub {
                    Some(sub) => {
                        let one = reports.into_iter().next().unwrap_or(crate::usage::SubReport {
                            sub,
                            ..Default::default()
                        });
                        json(StatusCode::OK, &serde_json::to_value(one).unwrap_or_default())
                    }
                    None => json(StatusCode::OK, &serde_json::json!({"users": reports})),
                },
                Err(e) => unavailable(&e),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such admin route: POST /admin/tokens/{jti}/revoke, GET /admin/tokens/{jti}, GET /admin/usage?sub=...",
        ),
    }
}

fn not_allowed(allow: &'static str) -> Response<RelayBody> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This admin route does not take this HTTP method.",
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn bad_jti() -> Response<RelayBody> {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_jti",
        "A token id is 1-64 characters of A-Z a-z 0-9 - _.",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn admin_key_from_plain_or_hash_verifies_in_constant_time() {
        let plain = AdminSettings {
            api_key: Some("admin-key-0123456789".into()),
            ..AdminSettings::default()
        };
        let k = AdminKey::from_settings(&plain).unwrap();
        assert!(k.verify(b"admin-key-0123456789"));
        assert!(!k.verify(b"admin-key-012345678"));
        assert!(!k.verify(b""));
        let hashed = AdminSettings {
            api_key_sha256: Some(hex::encode(Sha256::digest(b"admin-key-0123456789"))),
            ..AdminSettings::default()
        };
        assert!(AdminKey::from_settings(&hashed)
            .unwrap()
            .verify(b"admin-key-0123456789"));
        assert!(AdminKey::from_settings(&AdminSettings::default()).is_none());
        assert!(!format!("{k:?}").contains("admin-key"));
    }

    #[test]
    fn jti_syntax() {
        assert!(valid_jti("cmVsYXlhcGktdmVjLTAwMQ"));
        assert!(valid_jti("1735689600000"));
        assert!(!valid_jti(""));
        assert!(!valid_jti("a/b"));
        assert!(!valid_jti("a%2fb"));
        assert!(!valid_jti(&"a".repeat(65)));
    }
}
