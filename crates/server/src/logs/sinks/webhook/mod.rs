//! Webhook sink: POSTs each batch as a JSON array of `LogRecord`s to the
//! operator's `callback_url`.
//!
//! # Request
//!
//! - `POST <callback_url>`, `content-type: application/json`,
//!   `user-agent: relayapi/<version>`; body: `[record, record, ...]`.
//! - With a `secret`: `X-RelayAPI-Signature: sha256=<hex>` where `<hex>` is
//!   the lowercase hex of HMAC-SHA256 keyed with the secret's UTF-8 bytes
//!   over the **exact raw request body bytes**. Receivers recompute it over
//!   the body as received (before any JSON parsing) and compare in constant
//!   time.
//! - Delivery is at-least-once: a batch whose answer timed out is sent
//!   again, so the same record may arrive twice. Every record has a unique
//!   `request_id`; dedupe on it.
//!
//! # Answers
//!
//! 2xx → delivered. Connection errors, timeouts (10 s by default), 408, 429
//! and 5xx → [`SinkError::Retryable`]. Any other status →
//! [`SinkError::Permanent`] (the batch is dropped and counted). Error
//! messages carry the status only: never the URL, the secret or a body.
//! `Debug` redacts the secret and the URL's userinfo and query.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper::Uri;
use relayapi_token::SecretString;
use sha2::Sha256;

use crate::logs::record::LogRecord;
use crate::proxy::{full, HttpsClient};

use super::{Sink, SinkError, SinkFuture};

/// Header carrying the body signature.
pub const SIGNATURE_HEADER: &str = "x-relayapi-signature";
/// Default bound on one POST (connect + answer head + answer body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Answer bodies are read (for connection reuse) up to this size.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The callback URL is not usable. Never contains the URL itself.
#[derive(Debug, thiserror::Error)]
#[error("log.web.callback_url must be an absolute http:// or https:// URL")]
pub struct InvalidCallbackUrl;

/// POSTs batches to a webhook.
pub struct WebhookSink {
    uri: Uri,
    secret: Option<SecretString>,
    client: HttpsClient,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &redacted_url(&self.uri))
            .field(
                "secret",
                &self
                    .secret
                    .as_ref()
                    .map(|_| relayapi_token::secret::REDACTED),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `scheme://host:port` with userinfo removed and the path and query
/// masked (Slack-style hooks carry their secret in the path).
pub fn redacted_url(uri: &Uri) -> String {
    let mut s = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.host().unwrap_or("")
    );
    if let Some(p) = uri.port_u16() {
        s.push_str(&format!(":{p}"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        s.push_str("/[REDACTED]");
    }
    if uri.query().is_some() {
        s.push_str("?[REDACTED]");
    }
    s
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the signature header value.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC accepts keys of any length; unreachable in practice.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSink {
    /// A sink posting to `callback_url` (http or https), signing with
    /// `secret` when given (an empty secret means none).
    pub fn new(
        callback_url: String,
        secret: Option<SecretString>,
        client: HttpsClient,
    ) -> Result<Self, InvalidCallbackUrl> {
        let uri: Uri = callback_url.parse().map_err(|_| InvalidCallbackUrl)?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => return Err(InvalidCallbackUrl),
        }
        let secret = secret.filter(|s| !s.is_empty());
        Ok(WebhookSink {
            uri,
            secret,
            client,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes the per-request timeout (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn body(batch: &[Arc<LogRecord>]) -> Result<Bytes, SinkError> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        buf.push(b'[');
        for (i, r) in batch.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(r.json().as_bytes());
        }
        buf.push(b']');
        Ok(Bytes::from(buf))
    }

    async fn post(&self, body: Bytes) -> Result<(), SinkError> {
        let mut req = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("relayapi/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret.expose(), &body));
        }
        let req = req
            .body(full(body))
            .map_err(|_| SinkError::Permanent("webhook: could not build the request".into()))?;
        let resp = self.client.request(req).await.map_err(|e| {
            let kind = if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            SinkError::Retryable(format!("webhook: {kind}"))
        })?;
        let status = resp.status();
        // Read a small answer so the connection can be reused; ignore it.
        let _ = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        classify(status)
    }
}

/// Maps the receiver's status to the sink's verdict.
pub fn classify(status: hyper::StatusCode) -> Result<(), SinkError> {
    let code = status.as_u16();
    if status.is_success() {
        Ok(())
    } else if code == 408 || code == 429 || status.is_server_error() {
        Err(SinkError::Retryable(format!("webhook answered {code}")))
    } else {
        Err(SinkError::Permanent(format!("webhook answered {code}")))
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    fn write_batch<'a>(&'a self, batch: &'a [Arc<LogRecord>]) -> SinkFuture<'a> {
        Box::pin(async move {
            let body = Self::body(batch)?;
            match tokio::time::timeout(self.timeout, self.post(body)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::Retryable(format!(
                    "webhook: no answer within {:?}",
                    self.timeout
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hyper::StatusCode;

    #[test]
    fn classification() {
        assert!(classify(StatusCode::OK).is_ok());
        assert!(classify(StatusCode::NO_CONTENT).is_ok());
        for c in [408, 429, 500, 502, 503] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(c).unwrap()),
                    Err(SinkError::Retryable(_))
                ),
                "{c}"
            );
        }
        for c in [400, 401, 403, 404, 413, 301] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(c).unwrap()),
                    Err(SinkError::Permanent(_))
                ),
                "{c}"
            );
        }
    }

    #[tokio::test]
    async fn debug_redacts_secret_userinfo_and_query() {
        let client = crate::proxy::build_client(&crate::config::UpstreamSettings::default());
        let sink = WebhookSink::new(
            "https://alice:pa55word@hooks.example.com:8443/services/T0/B0/s3cretpath?token=t0ps3cret".into(),
            Some(SecretString::new("hmac-s3cret".into())),
            client.clone(),
        )
        .unwrap();
        let dbg = format!("{sink:?}");
        for leak in [
            "pa55word",
            "alice",
            "t0ps3cret",
            "hmac-s3cret",
            "s3cretpath",
        ] {
            assert!(!dbg.contains(leak), "{dbg}");
        }
        assert!(
            dbg.contains("https://hooks.example.com:8443/[REDACTED]?[REDACTED]"),
            "{dbg}"
        );
        assert!(WebhookSink::new("not a url".into(), None, client.clone()).is_err());
        assert!(WebhookSink::new("ftp://x/".into(), None, client).is_err());
    }

    #[test]
    fn signature_matches_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
