//! Browser access (CORS). Preflights are answered here without a token —
//! nothing below runs for them — and every other response from an allowed
//! origin gets the headers that let the SDKs read it.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::CorsSettings;
use crate::proxy::{full, RelayBody};

/// Headers a browser script may read: request id, limits, retry hints.
const EXPOSE: &str = "x-request-id, x-upstream-request-id, x-relayapi-calls-remaining, x-relayapi-tokens-remaining, \
retry-after, retry-after-ms, x-should-retry, \
x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, \
x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, openai-processing-ms, request-id, \
anthropic-ratelimit-requests-limit, anthropic-ratelimit-requests-remaining, anthropic-ratelimit-requests-reset, \
anthropic-ratelimit-tokens-limit, anthropic-ratelimit-tokens-remaining, anthropic-ratelimit-tokens-reset";
/// [`EXPOSE`] as a header value, checked at compile time (`from_static` at
/// run time validates all ~300 bytes on every response).
const EXPOSE_VALUE: HeaderValue = HeaderValue::from_static(EXPOSE);
/// The `Vary` value of an answer that depends on `Origin`.
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

pub struct Cors {
    enabled: bool,
    any_origin: bool,
    origins: Vec<String>,
    max_age: HeaderValue,
}

impl Cors {
    pub fn new(s: &CorsSettings) -> Cors {
        Cors {
            enabled: s.enabled,
            any_origin: s.allowed_origins.iter().any(|o| o == "*"),
            origins: s
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
            max_age: HeaderValue::from(s.max_age),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.enabled
            && (self.any_origin
                || origin
                    .to_str()
                    .is_ok_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o))))
    }

    /// True for a CORS preflight this layer must answer.
    pub fn is_preflight(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.enabled
            && method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204, permissive about methods and headers
    /// (the token decides what a request may do), silent for other origins.
    pub fn preflight(&self, headers: &HeaderMap) -> Response<RelayBody> {
        let mut resp = Response::new(full(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        let Some(origin) = headers.get(header::ORIGIN) else {
            return resp;
        };
        if !self.allows(origin) {
            return resp;
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        if let Some(req_headers) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        resp
    }

    /// Adds CORS headers to an ordinary response for an allowed origin.
    /// With CORS on, every answer says it varies by `Origin` — also one
    /// without CORS headers, or a shared cache could hand it to an allowed
    /// origin (or the allowed one's to another).
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if !self.enabled {
            return;
        }
        headers.append(header::VARY, VARY_ORIGIN);
        let Some(origin) = origin else { return };
        if !self.allows(origin) {
            return;
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_VALUE);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn req(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            "POST".parse().unwrap(),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization, x-stainless-os".parse().unwrap(),
        );
        h
    }

    #[test]
    fn preflight_for_allowed_and_other_origins() {
        let cors = Cors::new(&CorsSettings {
            enabled: true,
            allowed_origins: vec!["https://app.example.com".into()],
            max_age: 60,
        });
        let h = req("https://app.example.com");
        assert!(cors.is_preflight(&Method::OPTIONS, &h));
        let r = cors.preflight(&h);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, x-stainless-os"
        );
        let r = cors.preflight(&req("https://evil.example"));
        assert!(r
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
    }

    #[test]
    fn every_answer_varies_by_origin_when_cors_is_on() {
        let cors = Cors::new(&CorsSettings {
            enabled: true,
            allowed_origins: vec!["https://app.example.com".into()],
            max_age: 60,
        });
        let other: HeaderValue = "https://other.example".parse().unwrap();
        for origin in [None, Some(&other)] {
            let mut out = HeaderMap::new();
            cors.decorate(origin, &mut out);
            assert_eq!(out[header::VARY], "Origin", "{origin:?}");
            assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        }
        let off = Cors::new(&CorsSettings {
            enabled: false,
            ..CorsSettings::default()
        });
        let mut out = HeaderMap::new();
        off.decorate(Some(&other), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn decorate_exposes_relay_headers() {
        let cors = Cors::new(&CorsSettings::default());
        let mut out = HeaderMap::new();
        cors.decorate(Some(&"https://x.test".parse().unwrap()), &mut out);
        assert!(out[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap()
            .contains("x-request-id"));
    }
}
