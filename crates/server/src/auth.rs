//! Finding the capability token in a request and turning it into claims.
//!
//! Where a token may be, in order (the first one found wins):
//! 1. the first path segment after the base path, when it looks like a
//!    compact JWE (`/relayapi/<token>/chat/completions`);
//! 2. the `token` query parameter;
//! 3. `Authorization: Bearer`, `x-api-key`, `x-goog-api-key`, `api-key`
//!    headers, then the `key` query parameter — so a front end can pass the
//!    token as the `apiKey` of the provider's own SDK.
//!
//! Every one of these locations is stripped before forwarding, whichever held
//! the token: nothing the client sent as a credential reaches a provider.

use http::HeaderMap;
use relayapi_token::{Claims, Keyring};

use crate::error::ApiError;

/// Headers that carry client credentials; never forwarded.
pub const CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "x-goog-api-key", "api-key"];

/// Query parameters that carry client credentials; never forwarded.
const CREDENTIAL_PARAMS: [&str; 2] = ["token", "key"];

/// A request split into its token and what is left to forward.
#[derive(Debug)]
pub struct Located<'a> {
    /// The raw token, if any location held one.
    pub token: Option<String>,
    /// The path after the base path (and after a path token), no leading '/'.
    pub rest: &'a str,
    /// The query string with every credential parameter removed.
    pub query: String,
}

/// Splits `rest` (path after the base path) and `query` into the token and
/// the parts to forward.
pub fn locate<'a>(rest: &'a str, query: Option<&str>, headers: &HeaderMap) -> Located<'a> {
    let rest = rest.trim_start_matches('/');
    let (first, after) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let mut token = None;
    let mut rest_out = rest;
    if relayapi_token::looks_like_jwe(first) {
        token = Some(first.to_string());
        rest_out = after;
    }

    let mut query_token = None;
    let mut key_param = None;
    let mut kept = String::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if CREDENTIAL_PARAMS.contains(&name) {
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            if name == "token" {
                query_token.get_or_insert(decoded);
            } else {
                key_param.get_or_insert(decoded);
            }
            continue;
        }
        if !kept.is_empty() {
            kept.push('&');
        }
        kept.push_str(pair);
    }

    if token.is_none() {
        token = query_token
            .or_else(|| header_token(headers))
            .or(key_param)
            .filter(|t| !t.is_empty());
    }
    Located {
        token,
        rest: rest_out,
        query: kept,
    }
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_string());
        }
    }
    CREDENTIAL_HEADERS[1..]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(|v| v.trim().to_string())
}

/// Decodes and validates a token at `now` (unix seconds).
pub fn authenticate(keyring: &Keyring, token: Option<&str>, now: i64) -> Result<Claims, ApiError> {
    let token = token.ok_or(ApiError::TokenMissing)?;
    Ok(relayapi_token::decode_v2(keyring, token, now)?)
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const T: &str = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIiwia2lkIjoiMDEyMyJ9..aXZpdml2aXZpdml2.Y2lwaGVy.dGFndGFndGFndGFndGFn";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn path_token_wins_and_is_removed() {
        let h = headers(&[("authorization", "Bearer other")]);
        let path = format!("{T}/chat/completions");
        let l = locate(&path, Some("a=1&token=x"), &h);
        assert_eq!(l.token.as_deref(), Some(T));
        assert_eq!(l.rest, "chat/completions");
        assert_eq!(l.query, "a=1");
    }

    #[test]
    fn query_then_headers_then_key_param() {
        let h = headers(&[("x-api-key", "hdr")]);
        let l = locate("chat/completions", Some("token=q%2Dtok&key=k&b=2"), &h);
        assert_eq!(l.token.as_deref(), Some("q-tok"));
        assert_eq!(l.query, "b=2");
        let l = locate("v1/messages", Some("key=k"), &h);
        assert_eq!(l.token.as_deref(), Some("hdr"));
        assert_eq!(l.query, "");
        let l = locate("x", Some("key=k"), &HeaderMap::new());
        assert_eq!(l.token.as_deref(), Some("k"));
        for (name, value, want) in [
            ("authorization", "bearer abc", "abc"),
            ("x-goog-api-key", "g", "g"),
            ("api-key", "az", "az"),
        ] {
            let l = locate("x", None, &headers(&[(name, value)]));
            assert_eq!(l.token.as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn no_token_anywhere() {
        let l = locate("chat/completions", None, &HeaderMap::new());
        assert!(l.token.is_none());
        assert_eq!(
            authenticate(&Keyring::new(), None, 0).unwrap_err(),
            ApiError::TokenMissing
        );
        assert_eq!(
            authenticate(&Keyring::new(), Some("garbage"), 0).unwrap_err(),
            ApiError::TokenInvalid
        );
    }
}
