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
//!
//! Legacy URLs (earlier Go server) also put the request path *inside* the
//! query, glued to the last value: `/relayapi/?token=T&rai_hash=H/chat/completions`.
//! When the `token` or `rai_hash` value contains a `/`, the part from the
//! `/` on is the real path (and anything after a further `?`, more query).

use std::collections::BTreeMap;

use http::HeaderMap;
use relayapi_token::Claims;

use crate::error::ApiError;
use crate::keyfile::Keys;

/// Headers that carry client credentials; never forwarded.
pub const CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "x-goog-api-key", "api-key"];

/// Query parameters that carry client credentials; never forwarded.
const CREDENTIAL_PARAMS: [&str; 3] = ["token", "key", "rai_hash"];

/// A request split into its token and what is left to forward.
#[derive(Debug)]
pub struct Located {
    /// The raw token, if any location held one.
    pub token: Option<String>,
    /// The legacy key selector (`rai_hash` query parameter).
    pub rai_hash: Option<String>,
    /// The path after the base path (and after a path token), no leading '/'.
    pub rest: String,
    /// The query string with every credential parameter removed.
    pub query: String,
}

/// Splits `rest` (path after the base path) and `query` into the token and
/// the parts to forward.
pub fn locate(rest: &str, query: Option<&str>, headers: &HeaderMap) -> Located {
    let rest = rest.trim_start_matches('/');
    let (first, after) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let mut token = None;
    let mut rest_out = rest;
    // A damaged path token (cut short, dots lost) still starts like a JWE
    // header: treat it as the token so the answer is `token_invalid`, not a
    // misleading `token_missing`. No provider path starts with `eyJ`.
    if relayapi_token::looks_like_jwe(first) || first.starts_with("eyJ") {
        token = Some(first.to_string());
        rest_out = after;
    }

    let mut found: BTreeMap<&str, String> = BTreeMap::new();
    let mut glued_path: Option<&str> = None;
    let mut kept = String::new();
    let mut keep = |pair: &str| {
        if !kept.is_empty() {
            kept.push('&');
        }
        kept.push_str(pair);
    };
    let query = query.unwrap_or("");
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(&param) = CREDENTIAL_PARAMS.iter().find(|p| **p == name) else {
            keep(pair);
            continue;
        };
        let mut value = value;
        if param != "key" && glued_path.is_none() {
            if let Some(slash) = value.find('/') {
                glued_path = Some(&value[slash..]);
                value = &value[..slash];
            }
        }
        let decoded = percent_encoding::percent_decode_str(value.trim_end_matches('='))
            .decode_utf8_lossy()
            .into_owned();
        found.entry(param).or_insert(decoded);
    }

    let mut rest_out = rest_out.to_string();
    if let Some(glued) = glued_path {
        // `/chat/completions?x=1&y=2` glued after the last value.
        let (path, more_query) = glued.split_once('?').unwrap_or((glued, ""));
        if rest_out.is_empty() {
            rest_out = path.trim_start_matches('/').to_string();
        }
        for pair in more_query.split(['&', '?']).filter(|p| !p.is_empty()) {
            keep(pair);
        }
    }

    if token.is_none() {
        token = found
            .remove("token")
            .or_else(|| header_token(headers))
            .or_else(|| found.remove("key"))
            .filter(|t| !t.is_empty());
    }
    Located {
        token,
        rai_hash: found.remove("rai_hash").filter(|h| !h.is_empty()),
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

/// Decodes and validates a token at `now` (unix seconds): a compact JWE is
/// a v2 token; anything else is a legacy token when `legacy` is on, and
/// invalid otherwise. Both formats end as the same [`Claims`], so limits,
/// logs and credential handling cannot differ between them.
pub fn authenticate(
    keys: &Keys,
    located: &Located,
    legacy: bool,
    now: i64,
) -> Result<(Claims, TokenFormat), ApiError> {
    let token = located.token.as_deref().ok_or(ApiError::TokenMissing)?;
    if token.contains('.') || !legacy {
        return Ok((keys.decode_v2(token, now)?, TokenFormat::V2));
    }
    let l = relayapi_token::decode_legacy(&keys.legacy, token, located.rai_hash.as_deref(), now)?;
    let claims = Claims {
        jti: l.counter_id,
        iat: l.created_at,
        nbf: None,
        exp: l.expire_time,
        provider: l.provider,
        api_key: l.api_key,
        max_calls: Some(l.max_calls),
        model: None,
        models: None,
        sub: None,
        ext_info: (!l.ext_info.is_empty()).then_some(l.ext_info),
        extra: BTreeMap::new(),
    };
    Ok((claims, TokenFormat::Legacy))
}

/// Which format a token was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    V2,
    /// The earlier server's AES-CBC tokens (`legacy_tokens = true`).
    Legacy,
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
    fn legacy_url_shapes_recover_the_path() {
        let h = HeaderMap::new();
        let cases = [
            (
                "chat/completions",
                "token=T&rai_hash=H&x=1",
                "chat/completions",
                "x=1",
            ),
            (
                "",
                "token=T&rai_hash=H/chat/completions",
                "chat/completions",
                "",
            ),
            (
                "",
                "token=T&rai_hash=H==/chat/completions",
                "chat/completions",
                "",
            ),
            (
                "",
                "x=1&token=T==/v1/chat/completions?api-version=2",
                "v1/chat/completions",
                "x=1&api-version=2",
            ),
            ("", "rai_hash=H&token=T/embeddings", "embeddings", ""),
            ("models", "token=T&other=a/b", "models", "other=a/b"),
        ];
        for (rest, query, want_rest, want_query) in cases {
            let l = locate(rest, Some(query), &h);
            assert_eq!(l.token.as_deref(), Some("T"), "{query}");
            assert_eq!(l.rest, want_rest, "{query}");
            assert_eq!(l.query, want_query, "{query}");
            if query.contains("rai_hash") {
                assert_eq!(l.rai_hash.as_deref(), Some("H"), "{query}");
            }
        }
    }

    #[test]
    fn damaged_path_token_is_still_the_token() {
        let l = locate("eyJhbGciOiJkaXIi/chat/completions", None, &HeaderMap::new());
        assert_eq!(l.token.as_deref(), Some("eyJhbGciOiJkaXIi"));
        assert_eq!(l.rest, "chat/completions");
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
        let mut l = locate("chat/completions", None, &HeaderMap::new());
        assert!(l.token.is_none());
        let keys = Keys::default();
        assert_eq!(
            authenticate(&keys, &l, true, 0).unwrap_err(),
            ApiError::TokenMissing
        );
        for (token, legacy) in [("garbage", true), ("garbage", false), ("a.b.c", true)] {
            l.token = Some(token.into());
            assert_eq!(
                authenticate(&keys, &l, legacy, 0).unwrap_err(),
                ApiError::TokenInvalid
            );
        }
    }
}
