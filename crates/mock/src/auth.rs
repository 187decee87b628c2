//! Where each provider expects its API key, and the check itself.
//!
//! A mock accepts its primary key and any extra keys (`MockConfig`); each
//! check tries them all. Keys are compared in constant time (a habit worth
//! keeping even in a mock). Query-string keys are compared raw, without
//! percent-decoding.

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;

use crate::MockConfig;

/// Constant-time equality of two byte strings (length is not hidden).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header_is(headers: &HeaderMap, name: &str, key: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| ct_eq(v.as_bytes(), key.as_bytes()))
}

fn bearer_is(headers: &HeaderMap, key: &str) -> bool {
    headers.get(AUTHORIZATION).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") && ct_eq(&v[7..], key.as_bytes())
    })
}

fn query_key_is(query: Option<&str>, key: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .filter_map(|pair| pair.strip_prefix("key="))
            .any(|v| ct_eq(v.as_bytes(), key.as_bytes()))
    })
}

fn openai_one(headers: &HeaderMap, key: &str) -> bool {
    bearer_is(headers, key) || header_is(headers, "api-key", key)
}

fn anthropic_one(headers: &HeaderMap, key: &str) -> bool {
    header_is(headers, "x-api-key", key)
}

fn gemini_one(headers: &HeaderMap, query: Option<&str>, key: &str) -> bool {
    header_is(headers, "x-goog-api-key", key) || query_key_is(query, key)
}

/// OpenAI: `Authorization: Bearer KEY`; Azure OpenAI: `api-key: KEY`.
pub(crate) fn openai(headers: &HeaderMap, cfg: &MockConfig) -> bool {
    cfg.keys().any(|k| openai_one(headers, k))
}

/// Anthropic: `x-api-key: KEY`.
pub(crate) fn anthropic(headers: &HeaderMap, cfg: &MockConfig) -> bool {
    cfg.keys().any(|k| anthropic_one(headers, k))
}

/// Gemini: `x-goog-api-key: KEY` or `?key=KEY`.
pub(crate) fn gemini(headers: &HeaderMap, query: Option<&str>, cfg: &MockConfig) -> bool {
    cfg.keys().any(|k| gemini_one(headers, query, k))
}

/// The accepted key the request carries in any provider's place, if any
/// (the journal records which key a request used).
pub(crate) fn which_key<'a>(
    headers: &HeaderMap,
    query: Option<&str>,
    cfg: &'a MockConfig,
) -> Option<&'a str> {
    cfg.keys().find(|k| {
        openai_one(headers, k) || anthropic_one(headers, k) || gemini_one(headers, query, k)
    })
}

/// Debug routes: the key in any provider's place.
pub(crate) fn any(headers: &HeaderMap, query: Option<&str>, cfg: &MockConfig) -> bool {
    which_key(headers, query, cfg).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    fn k() -> MockConfig {
        MockConfig::new("k")
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_but_key_is_exact() {
        assert!(openai(&with("authorization", "Bearer k"), &k()));
        assert!(openai(&with("authorization", "bearer k"), &k()));
        assert!(!openai(&with("authorization", "Bearer K"), &k()));
        assert!(!openai(
            &with("authorization", "Bearer "),
            &MockConfig::new("")
        ));
        assert!(!openai(&with("authorization", "k"), &k()));
    }

    #[test]
    fn each_provider_only_reads_its_own_place() {
        assert!(openai(&with("api-key", "k"), &k()));
        assert!(!openai(&with("x-api-key", "k"), &k()));
        assert!(anthropic(&with("x-api-key", "k"), &k()));
        assert!(!anthropic(&with("authorization", "Bearer k"), &k()));
        assert!(gemini(&with("x-goog-api-key", "k"), None, &k()));
        assert!(gemini(&HeaderMap::new(), Some("alt=sse&key=k"), &k()));
        assert!(!gemini(&HeaderMap::new(), Some("notkey=k"), &k()));
        assert!(any(&with("x-goog-api-key", "k"), None, &k()));
    }

    #[test]
    fn extra_keys_are_accepted_and_identified() {
        let cfg = MockConfig::new("k").with_extra_keys(["k2", "k3"]);
        assert!(openai(&with("authorization", "Bearer k3"), &cfg));
        assert_eq!(which_key(&with("x-api-key", "k2"), None, &cfg), Some("k2"));
        assert_eq!(which_key(&with("x-api-key", "nope"), None, &cfg), None);
    }
}
