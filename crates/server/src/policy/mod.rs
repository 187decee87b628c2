//! Per-token policy: what a token's policy claims allow, checked on the
//! request path right after the token is decoded (step 6 of `http.rs`).
//!
//! * [`check_scope`] — the static scopes, in this order: `origins`
//!   (`origin_not_allowed`), `ips` (`ip_not_allowed`), `methods`
//!   (`method_not_allowed`), `paths` (`path_not_allowed`, after
//!   [`path::normalise`]). Pure; nothing is counted for a refused request.
//! * [`rate`] — `rps`/`burst`, a GCRA per jti (`rate_limited`).
//! * [`concurrency`] — `concurrency`, a slot per request in flight
//!   (`concurrency_exceeded`).
//! * [`body_limit`] — `max_body_bytes` while the body streams
//!   (`payload_too_large`).
//! * [`budget`] — `max_tokens`: reservation, `include_usage`, settle rule
//!   (`budget_exhausted`; the counts live in the usage store).
//!
//! A token without a claim is not limited by it: every check here is a
//! no-op for tokens minted before these claims existed.

pub mod body_limit;
pub mod budget;
pub mod concurrency;
pub mod multipart;
pub mod path;
pub mod rate;

use std::net::IpAddr;

use http::{HeaderValue, Method};
use relayapi_token::Claims;

use crate::config::PolicySettings;
use crate::error::ApiError;

/// The shared state of per-token limits.
#[derive(Debug)]
pub struct PolicyState {
    pub rates: rate::TokenRates,
    pub in_flight: concurrency::InFlight,
    pub default_reservation: u64,
}

impl PolicyState {
    pub fn new(settings: &PolicySettings) -> PolicyState {
        PolicyState {
            rates: rate::TokenRates::new(settings.max_tracked_tokens),
            in_flight: concurrency::InFlight::default(),
            default_reservation: settings.default_token_reservation.max(1),
        }
    }
}

/// The `Origin` and client IP checks; also applied to the relay's own
/// `_relayapi/usage` route. A request without an `Origin` header is not a
/// browser's cross-origin request and passes `origins` (the claim keeps
/// *browsers* on other sites from using a leaked token; it is not
/// authentication — a non-browser client can send any `Origin`).
pub fn check_origin_and_ip(
    claims: &Claims,
    origin: Option<&HeaderValue>,
    ip: IpAddr,
) -> Result<(), ApiError> {
    if claims.origins.is_some() {
        if let Some(origin) = origin {
            let ok = origin.to_str().is_ok_and(|o| claims.allows_origin(o));
            if !ok {
                return Err(ApiError::OriginNotAllowed);
            }
        }
    }
    if !claims.allows_ip(ip) {
        return Err(ApiError::IpNotAllowed);
    }
    Ok(())
}

/// The static scopes (see the module docs). Returns the path to forward:
/// the normalised one when the token has `paths`, else `rest` unchanged.
/// `local` maps a normalised path to the part below the provider's base
/// URL ([`crate::providers::Provider::local_path`]): what `paths` scope, so
/// `v1/chat/completions` is `chat/completions` when both reach one URL.
pub fn check_scope(
    claims: &Claims,
    method: &Method,
    origin: Option<&HeaderValue>,
    ip: IpAddr,
    rest: &str,
    local: impl FnOnce(&str) -> &str,
) -> Result<Option<String>, ApiError> {
    check_origin_and_ip(claims, origin, ip)?;
    if !claims.allows_method(method.as_str()) {
        return Err(ApiError::MethodNotAllowed);
    }
    // Without `paths` there are no prefixes to keep to, but a path must
    // still not climb above the provider's base path or smuggle an escaped
    // separator: one that could is normalised like a scoped one (most
    // paths skip this).
    if claims.paths.is_none() && !path::may_need_normalising(rest) {
        return Ok(None);
    }
    let normalised = path::normalise(rest).map_err(|_| ApiError::PathNotAllowed)?;
    if !claims.allows_path(local(&normalised)) {
        return Err(ApiError::PathNotAllowed);
    }
    Ok(Some(normalised))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn claims() -> Claims {
        Claims::new("openai", "k", 60, 1)
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn tokens_without_claims_pass_unchanged() {
        let c = claims();
        let o = HeaderValue::from_static("https://anywhere.example");
        assert_eq!(
            check_scope(&c, &Method::DELETE, Some(&o), IP, "a/b/c", |p| p).unwrap(),
            None
        );
    }

    #[test]
    fn tokens_without_paths_still_cannot_leave_the_base_path() {
        let c = claims();
        for escaping in [
            "../../admin",
            "chat/../../x",
            "%2e%2e/x",
            "a/%2E%2e/../b",
            "a%2fb",
            "a%5Cb",
            "a\\b",
            "a%00b",
            "a%zzb",
        ] {
            assert_eq!(
                check_scope(&c, &Method::GET, None, IP, escaping, |p| p),
                Err(ApiError::PathNotAllowed),
                "{escaping}"
            );
        }
        // Resolvable dot segments and unreserved escapes are forwarded
        // normalised, exactly as for a `paths` token.
        assert_eq!(
            check_scope(
                &c,
                &Method::POST,
                None,
                IP,
                "v1beta/models/gemini%2Dpro:generateContent",
                |p| p
            )
            .unwrap()
            .as_deref(),
            Some("v1beta/models/gemini-pro:generateContent")
        );
        assert_eq!(
            check_scope(
                &c,
                &Method::POST,
                None,
                IP,
                "x/../chat/./completions",
                |p| p
            )
            .unwrap()
            .as_deref(),
            Some("chat/completions")
        );
    }

    #[test]
    fn each_scope_refuses_with_its_code() {
        let c = claims()
            .with_origins(["https://app.example"])
            .with_ips(["192.0.2.0/24"])
            .with_methods(["POST"])
            .with_paths(["chat/completions"]);
        let good = HeaderValue::from_static("https://app.example");
        let bad = HeaderValue::from_static("https://evil.example");
        let ok = |m: &Method, o, ip, p: &str| {
            check_scope(&c, m, o, ip, p, |p| p.strip_prefix("v1/").unwrap_or(p))
        };
        assert_eq!(
            ok(&Method::POST, Some(&good), IP, "chat/./completions").unwrap(),
            Some("chat/completions".into())
        );
        // `paths` scope the path below the base URL: a repeated `v1/` is
        // the same endpoint (the path itself is forwarded as it came).
        assert_eq!(
            ok(&Method::POST, Some(&good), IP, "v1/chat/completions").unwrap(),
            Some("v1/chat/completions".into())
        );
        assert_eq!(
            ok(&Method::POST, Some(&good), IP, "v1/models"),
            Err(ApiError::PathNotAllowed)
        );
        // No Origin header: not a cross-origin browser request.
        assert!(ok(&Method::POST, None, IP, "chat/completions").is_ok());
        assert_eq!(
            ok(&Method::POST, Some(&bad), IP, "chat/completions"),
            Err(ApiError::OriginNotAllowed)
        );
        let other_ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            ok(&Method::POST, Some(&good), other_ip, "chat/completions"),
            Err(ApiError::IpNotAllowed)
        );
        assert_eq!(
            ok(&Method::GET, Some(&good), IP, "chat/completions"),
            Err(ApiError::MethodNotAllowed)
        );
        for p in [
            "models",
            "chat/completions/../../models",
            "chat%2fcompletions",
            "../x",
        ] {
            assert_eq!(
                ok(&Method::POST, Some(&good), IP, p),
                Err(ApiError::PathNotAllowed),
                "{p}"
            );
        }
    }
}
