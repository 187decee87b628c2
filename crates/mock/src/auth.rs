//! Where each provider expects its API key, and the check itself.
//!
//! Keys are compared in constant time (a habit worth keeping even in a mock).
//! Query-string keys are compared raw, without percent-decoding.

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;

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

/// OpenAI: `Authorization: Bearer KEY`; Azure OpenAI: `api-key: KEY`.
pub(crate) fn openai(headers: &HeaderMap, key: &str) -> bool {
    bearer_is(headers, key) || header_is(headers, "api-key", key)
}

/// Anthropic: `x-api-key: KEY`.
pub(crate) fn anthropic(headers: &HeaderMap, key: &str) -> bool {
    header_is(headers, "x-api-key", key)
}

/// Gemini: `x-goog-api-key: KEY` or `?key=KEY`.
pub(crate) fn gemini(headers: &HeaderMap, query: Option<&str>, key: &str) -> bool {
    header_is(headers, "x-goog-api-key", key) || query_key_is(query, key)
}

/// Debug routes: the key in any provider's place.
pub(crate) fn any(headers: &HeaderMap, query: Option<&str>, key: &str) -> bool {
    openai(headers, key) || anthropic(headers, key) || gemini(headers, query, key)
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

    #[test]
    fn bearer_scheme_is_case_insensitive_but_key_is_exact() {
        assert!(openai(&with("authorization", "Bearer k"), "k"));
        assert!(openai(&with("authorization", "bearer k"), "k"));
        assert!(!openai(&with("authorization", "Bearer K"), "k"));
        assert!(!openai(&with("authorization", "Bearer "), ""));
        assert!(!openai(&with("authorization", "k"), "k"));
    }

    #[test]
    fn each_provider_only_reads_its_own_place() {
        assert!(openai(&with("api-key", "k"), "k"));
        assert!(!openai(&with("x-api-key", "k"), "k"));
        assert!(anthropic(&with("x-api-key", "k"), "k"));
        assert!(!anthropic(&with("authorization", "Bearer k"), "k"));
        assert!(gemini(&with("x-goog-api-key", "k"), None, "k"));
        assert!(gemini(&HeaderMap::new(), Some("alt=sse&key=k"), "k"));
        assert!(!gemini(&HeaderMap::new(), Some("notkey=k"), "k"));
        assert!(any(&with("x-goog-api-key", "k"), None, "k"));
    }
}
