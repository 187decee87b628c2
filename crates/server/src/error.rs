//! Every error the relay itself answers with, and its one mapping to HTTP.
//!
//! The body is OpenAI-shaped (`{"error":{"message","type","code"}}`) so the
//! official SDKs surface it naturally; `code` is stable and documented in
//! `docs/errors.md`. Messages are fixed strings: nothing from a token, a key
//! or an internal error ever reaches a client. Provider errors are not
//! `ApiError`s: they pass through untouched.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    TokenMissing,
    /// One variant for every way a token can fail to decode: nothing can be learned from it.
    TokenInvalid,
    TokenExpired,
    TokenNotYetValid,
    TokenExhausted,
    /// The token was revoked through the admin API.
    TokenRevoked,
    ModelNotAllowed,
    /// `origins`: the request's `Origin` is not one the token allows.
    OriginNotAllowed,
    /// `ips`: the client address is outside the token's networks.
    IpNotAllowed,
    /// `paths`: the (normalised) path is outside the token's prefixes, or
    /// does not normalise cleanly.
    PathNotAllowed,
    /// `methods`: the HTTP method is not one the token allows.
    MethodNotAllowed,
    /// A method the relay never forwards (TRACE, CONNECT, extensions).
    MethodNotRelayed,
    /// `concurrency`: the token already has that many requests in flight.
    ConcurrencyExceeded,
    /// `max_tokens`: the call's reservation does not fit in what is left.
    BudgetExhausted {
        /// What is left of the budget (for `x-relayapi-tokens-remaining`).
        remaining: u64,
    },
    RateLimited(Duration),
    ProviderUnknown,
    /// A `key_ref` token names a credential this relay does not hold (or one
    /// for another provider).
    CredentialUnknown,
    PayloadTooLarge,
    /// The client stopped sending its request body for longer than
    /// `upstream.idle_timeout` (its fault, not the provider's).
    RequestTimeout,
    /// The request line and headers are over `server.max_header_bytes`.
    HeadersTooLarge,
    InvalidBody,
    NotFound,
    UpstreamUnreachable,
    UpstreamTimeout,
    ServiceUnavailable,
    Internal,
}

impl ApiError {
    pub fn status(self) -> StatusCode {
        match self {
            ApiError::TokenMissing
            | ApiError::TokenInvalid
            | ApiError::TokenExpired
            | ApiError::TokenNotYetValid
            | ApiError::TokenRevoked => StatusCode::UNAUTHORIZED,
            ApiError::TokenExhausted
            | ApiError::RateLimited(_)
            | ApiError::ConcurrencyExceeded
            | ApiError::BudgetExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ModelNotAllowed
            | ApiError::OriginNotAllowed
            | ApiError::IpNotAllowed
            | ApiError::PathNotAllowed => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed | ApiError::MethodNotRelayed => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ApiError::ProviderUnknown | ApiError::CredentialUnknown | ApiError::InvalidBody => {
                StatusCode::BAD_REQUEST
            }
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            ApiError::TokenMissing => "token_missing",
            ApiError::TokenInvalid => "token_invalid",
            ApiError::TokenExpired => "token_expired",
            ApiError::TokenNotYetValid => "token_not_yet_valid",
            ApiError::TokenExhausted => "token_exhausted",
            ApiError::TokenRevoked => "token_revoked",
            ApiError::ModelNotAllowed => "model_not_allowed",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::IpNotAllowed => "ip_not_allowed",
            ApiError::PathNotAllowed => "path_not_allowed",
            ApiError::MethodNotAllowed | ApiError::MethodNotRelayed => "method_not_allowed",
            ApiError::ConcurrencyExceeded => "concurrency_exceeded",
            ApiError::BudgetExhausted { .. } => "budget_exhausted",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::ProviderUnknown => "provider_unknown",
            ApiError::CredentialUnknown => "credential_unknown",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::InvalidBody => "invalid_body",
            ApiError::NotFound => "not_found",
            ApiError::UpstreamUnreachable => "upstream_unreachable",
            ApiError::UpstreamTimeout => "upstream_timeout",
            ApiError::ServiceUnavailable => "service_unavailable",
            ApiError::Internal => "internal_error",
        }
    }

    /// OpenAI's `type` field: who should act on it.
    fn kind(self) -> &'static str {
        match self {
            ApiError::TokenMissing
            | ApiError::TokenInvalid
            | ApiError::TokenExpired
            | ApiError::TokenNotYetValid
            | ApiError::TokenRevoked => "authentication_error",
            ApiError::ModelNotAllowed
            | ApiError::OriginNotAllowed
            | ApiError::IpNotAllowed
            | ApiError::PathNotAllowed
            | ApiError::MethodNotAllowed => "permission_error",
            ApiError::TokenExhausted
            | ApiError::RateLimited(_)
            | ApiError::ConcurrencyExceeded
            | ApiError::BudgetExhausted { .. } => "rate_limit_error",
            ApiError::ProviderUnknown
            | ApiError::CredentialUnknown
            | ApiError::PayloadTooLarge
            | ApiError::RequestTimeout
            | ApiError::HeadersTooLarge
            | ApiError::InvalidBody
            | ApiError::MethodNotRelayed
            | ApiError::NotFound => "invalid_request_error",
            ApiError::UpstreamUnreachable | ApiError::UpstreamTimeout => "upstream_error",
            ApiError::ServiceUnavailable | ApiError::Internal => "server_error",
        }
    }

    fn message(self) -> &'static str {
        match self {
            ApiError::TokenMissing => "No RelayAPI token was provided. Put it in the URL path after the base path, or pass it as the API key.",
            ApiError::TokenInvalid => "The RelayAPI token is invalid.",
            ApiError::TokenExpired => "The RelayAPI token has expired. Ask your backend for a new one.",
            ApiError::TokenNotYetValid => "The RelayAPI token is not valid yet.",
            ApiError::TokenExhausted => "The RelayAPI token has used all of its calls.",
            ApiError::TokenRevoked => "The RelayAPI token has been revoked.",
            ApiError::ModelNotAllowed => "This token may not use the requested model.",
            ApiError::OriginNotAllowed => "This token may not be used from this web origin.",
            ApiError::IpNotAllowed => "This token may not be used from this network address.",
            ApiError::PathNotAllowed => "This token may not call this path.",
            ApiError::MethodNotAllowed => "This token may not use this HTTP method.",
            ApiError::MethodNotRelayed => "The relay does not forward this HTTP method.",
            ApiError::ConcurrencyExceeded => "Too many requests of this token are in progress. Retry when one has finished.",
            ApiError::BudgetExhausted { .. } => "The RelayAPI token's LLM-token budget does not cover this request.",
            ApiError::RateLimited(_) => "Too many requests. Retry after the time given in the Retry-After header.",
            ApiError::ProviderUnknown => "The token names a provider this relay does not serve.",
            ApiError::CredentialUnknown => "The token names a provider credential (key_ref) this relay does not hold for its provider.",
            ApiError::PayloadTooLarge => "The request body is larger than this relay accepts.",
            ApiError::RequestTimeout => "The request body stopped arriving before it was complete.",
            ApiError::HeadersTooLarge => "The request's headers are larger than this relay accepts.",
            ApiError::InvalidBody => "The request body is not one this token's model limit can check: a JSON object, or a plain multipart/form-data form with at most one model field.",
            ApiError::NotFound => "No such route. Relayed requests start with the relay's base path.",
            ApiError::UpstreamUnreachable => "The provider could not be reached.",
            ApiError::UpstreamTimeout => "The provider did not answer in time.",
            ApiError::ServiceUnavailable => "The relay is temporarily unable to serve this request.",
            ApiError::Internal => "Internal relay error.",
        }
    }

    pub fn body(self) -> Bytes {
        let body = serde_json::json!({
            "error": {"message": self.message(), "type": self.kind(), "code": self.code()}
        });
        Bytes::from(body.to_string())
    }

    pub fn retry_after(self) -> Option<HeaderValue> {
        match self {
            // A slot frees when any request of the token ends; no better hint.
            ApiError::ConcurrencyExceeded => Some(HeaderValue::from_static("1")),
            ApiError::RateLimited(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                Some(HeaderValue::from(secs.max(1)))
            }
            _ => None,
        }
    }
}

impl From<relayapi_token::TokenError> for ApiError {
    fn from(e: relayapi_token::TokenError) -> Self {
        match e {
            relayapi_token::TokenError::Expired => ApiError::TokenExpired,
            relayapi_token::TokenError::NotYetValid => ApiError::TokenNotYetValid,
            _ => ApiError::TokenInvalid,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn body_is_openai_shaped_with_stable_code() {
        let v: serde_json::Value = serde_json::from_slice(&ApiError::TokenInvalid.body()).unwrap();
        assert_eq!(v["error"]["code"], "token_invalid");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(v["error"]["message"].is_string());
        assert_eq!(ApiError::TokenInvalid.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = ApiError::RateLimited(Duration::from_millis(1200));
        assert_eq!(e.retry_after().unwrap(), "2");
        assert_eq!(
            ApiError::RateLimited(Duration::ZERO).retry_after().unwrap(),
            "1"
        );
    }
}
