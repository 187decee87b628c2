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
use relayapi_token::{Claims, Credential};

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
    // memchr: the first segment is usually the ~370-character token.
    let (first, after) = match memchr::memchr(b'/', rest.as_bytes()) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let mut token = None;
    let mut rest_out = rest;
    // A damaged path token (cut short, dots lost) still starts like a JWE
    // header: treat it as the token so the answer is `token_invalid`, not a
    // misleading `token_missing`. No provider path starts with `eyJ`.
    // (The cheap prefix test first: it settles every well-formed token
    // without scanning its ~370 characters.)
    if first.starts_with("eyJ") || relayapi_token::looks_like_jwe(first) {
        token = Some(first.to_string());
        rest_out = after;
    }

    let mut found: BTreeMap<&str, String> = BTreeMap::new();
    let mut glued_path: Option<String> = None;
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
        let unescaped;
        let mut value = value;
        // Only a URL whose path is the bare base path can have the path
        // glued into its query: otherwise a tail after the token is part of
        // the (then invalid) token, not something to drop.
        if param != "key" && glued_path.is_none() && rest_out.is_empty() {
            // openai npm 6.x percent-encodes the path it appends to a base
            // URL that ends in a query (`…&rai_hash=H%2Fchat%2Fcompletions`).
            let escaped_slash = |w: &[u8]| w[0] == b'%' && w[1] == b'2' && w[2] | 0x20 == b'f';
            if !value.contains('/') && value.as_bytes().windows(3).any(escaped_slash) {
                unescaped = percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned();
                value = &unescaped;
            }
            // The glued path starts at the first `/`, or earlier when the
            // SDK glued it on without one (`rai_hash=<64 hex>chat/completions`).
            let head = &value[..value.find('/').unwrap_or(value.len())];
            let (end, glued_start) = glued_cut(param, head);
            // `get`, not indexing: were a cut ever off a character
            // boundary, the value would stay whole (and fail as a token)
            // instead of panicking — an abort in release, on a request no
            // limit has counted yet.
            if let (Some(glued), Some(cut)) = (value.get(glued_start..), value.get(..end)) {
                if !glued.is_empty() {
                    glued_path = Some(glued.to_string());
                    value = cut;
                }
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
        let (path, more_query) = glued.split_once('?').unwrap_or((&glued, ""));
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

/// Where a `token` or `rai_hash` query value (`head`: up to its first `/`)
/// ends, and where a path glued onto it starts, as `(end, glued_start)`;
/// `glued_start == head.len()` means nothing is glued before the `/`.
///
/// Official SDKs append their path to a base URL that ends in a query
/// (`?token=T&rai_hash=H`): older ones after a `/`, current ones directly
/// (`…&rai_hash=Hchat/completions`, `…?token=Tmodels`). The credential's own
/// shape says where it ends: `rai_hash` is 64 hex digits; a legacy token ends
/// at its `=` padding or else at the longest length that encodes whole AES
/// blocks (those lengths are ≥ 21 characters apart, longer than any first
/// path segment an SDK appends); a v2 token (JWE) ends 22 characters (the
/// 16-byte tag) after its last `.`.
///
/// Both offsets are character boundaries of `head`. The shapes count ASCII
/// characters, but `head` may hold others (a decoded `%C3%A9`, or `é` sent
/// raw): a cut that would fall inside one means the value is no credential
/// of that shape, so nothing is glued and the value stays whole, to fail
/// later like any other garbage (`token_invalid`, nothing said about why).
fn glued_cut(param: &str, head: &str) -> (usize, usize) {
    let (end, glued_start) = cut_by_shape(param, head);
    if head.is_char_boundary(end) && head.is_char_boundary(glued_start) {
        (end, glued_start)
    } else {
        (head.len(), head.len())
    }
}

/// [`glued_cut`] by byte arithmetic alone (offsets may fall inside a
/// character).
fn cut_by_shape(param: &str, head: &str) -> (usize, usize) {
    let whole = (head.len(), head.len());
    let after_padding = |end: usize| {
        let pad = head.as_bytes()[end..]
            .iter()
            .take_while(|b| **b == b'=')
            .count();
        (end, end + pad)
    };
    match param {
        "rai_hash" => {
            let hex = head.bytes().take(64).all(|b| b.is_ascii_hexdigit());
            if head.len() > 64 && hex {
                after_padding(64)
            } else {
                whole
            }
        }
        "token" => {
            if let Some(dot) = head.rfind('.') {
                let end = dot + 1 + JWE_TAG_CHARS;
                return if head.len() > end { (end, end) } else { whole };
            }
            if let Some(eq) = head.find('=') {
                return after_padding(eq);
            }
            // Unpadded base64url of 16·k bytes (k ≥ 2: IV + one block).
            let encoded = |blocks: usize| (blocks * 16 * 4).div_ceil(3);
            let mut blocks = 2;
            while encoded(blocks + 1) <= head.len() {
                blocks += 1;
            }
            let end = encoded(blocks);
            if end < head.len() {
                (end, end)
            } else {
                whole
            }
        }
        _ => whole,
    }
}

/// Base64url characters of a JWE's 16-byte AES-GCM tag.
const JWE_TAG_CHARS: usize = 22;

fn header_token(headers: &HeaderMap) -> Option<String> {
    // Read lossily: a value with bytes that are not visible ASCII is a token
    // that fails to decode (`token_invalid`), not a missing one.
    // Borrowed (no allocation) for the usual visible-ASCII value.
    fn text(v: &http::HeaderValue) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(v.as_bytes())
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION).map(text) {
        let v = v.trim();
        // Checked: the split must not cut a character.
        if let Some((scheme, rest)) = v.split_at_checked(7) {
            if scheme.eq_ignore_ascii_case("bearer ") && !rest.is_empty() {
                return Some(rest.trim().to_string());
            }
        }
    }
    CREDENTIAL_HEADERS[1..]
        .iter()
        .find_map(|h| headers.get(*h).map(text))
        .map(|v| v.trim().to_string())
}

/// Decodes and validates a token at `now` (unix seconds): a compact JWE is
/// a v2 token; anything else is a legacy token when `legacy` is set
/// ([`crate::config::Config::legacy_decoding`]: `legacy_tokens` on, with
/// its options), and invalid otherwise. Both formats end as the same
/// [`Claims`], so limits, logs and credential handling cannot differ
/// between them.
pub fn authenticate(
    keys: &Keys,
    located: &Located,
    legacy: Option<relayapi_token::LegacyOptions>,
    now: i64,
) -> Result<(std::sync::Arc<Claims>, TokenFormat), ApiError> {
    let token = located.token.as_deref().ok_or(ApiError::TokenMissing)?;
    let options = match legacy {
        Some(options) if !token.contains('.') => options,
        _ => return Ok((keys.decode_v2(token, now)?, TokenFormat::V2)),
    };
    let l = relayapi_token::decode_legacy_with(
        &keys.legacy,
        token,
        located.rai_hash.as_deref(),
        now,
        options,
    )?;
    // Legacy tokens know none of the policy claims (origins, paths, rps, …).
    let mut claims = Claims::from_required(
        l.counter_id,
        l.created_at,
        l.expire_time,
        l.provider,
        Credential::ApiKey(l.api_key),
    );
    claims.max_calls = Some(l.max_calls);
    claims.ext_info = (!l.ext_info.is_empty()).then_some(l.ext_info);
    Ok((
        std::sync::Arc::new(claims),
        TokenFormat::Legacy { key_id: l.key_id },
    ))
}

/// Which format a token was in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFormat {
    /// Its key id is in its header (read only when a record needs it).
    V2,
    /// The earlier server's AES-CBC tokens (`legacy_tokens = true`), with
    /// the id of the legacy key that opened it.
    Legacy { key_id: String },
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
            // openai npm 6.x: the appended path percent-encoded.
            (
                "",
                "token=T&rai_hash=H%2Fchat%2Fcompletions",
                "chat/completions",
                "",
            ),
            ("", "token=T%2fmodels%3Fx%3D1", "models", "x=1"),
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
    fn paths_glued_without_a_slash_are_recovered() {
        // What current official SDKs make of `…/relayapi/?token=T&rai_hash=H`.
        let hash = "5763d8489b1248389ae69f43109744512f2262e9c92140ae6038158a6a8c7498";
        let legacy = "A".repeat(128); // 96 bytes: IV + 5 blocks
        let jwe = format!("{T}Zw"); // T's tag is 20 characters; a real one has 22
        let h = HeaderMap::new();
        let cases = [
            (
                format!("token={legacy}&rai_hash={hash}chat/completions"),
                legacy.clone(),
                "chat/completions",
            ),
            (
                format!("token={legacy}&rai_hash={hash}models"),
                legacy.clone(),
                "models",
            ),
            (
                format!("token={legacy}&rai_hash={hash}==embeddings"),
                legacy.clone(),
                "embeddings",
            ),
            (
                format!("token={legacy}chat/completions"),
                legacy.clone(),
                "chat/completions",
            ),
            (format!("token={legacy}models"), legacy.clone(), "models"),
            (
                format!("token={legacy}=moderations"),
                legacy.clone(),
                "moderations",
            ),
            (
                format!("token={jwe}chat/completions"),
                jwe.clone(),
                "chat/completions",
            ),
            (format!("token={jwe}models"), jwe.clone(), "models"),
            // Nothing glued: the value is left alone.
            (
                format!("token={legacy}&rai_hash={hash}"),
                legacy.clone(),
                "",
            ),
            (format!("token={jwe}"), jwe.clone(), ""),
        ];
        for (query, want_token, want_rest) in cases {
            let l = locate("", Some(&query), &h);
            assert_eq!(l.token.as_deref(), Some(want_token.as_str()), "{query}");
            assert_eq!(l.rest, want_rest, "{query}");
            assert_eq!(l.query, "", "{query}");
            if query.contains("rai_hash") {
                assert_eq!(l.rai_hash.as_deref(), Some(hash), "{query}");
            }
        }
        // With a path of its own the URL has nothing glued into its query:
        // a tail after the token is part of it (a tampered token stays
        // whole, and fails to decode), not dropped.
        for (query, whole) in [
            (format!("token={jwe}xyz"), format!("{jwe}xyz")),
            (format!("token={legacy}models"), format!("{legacy}models")),
        ] {
            let l = locate("models", Some(&query), &h);
            assert_eq!(l.token.as_deref(), Some(whole.as_str()), "{query}");
            assert_eq!(l.rest, "models", "{query}");
        }
        // Every legacy length (IV + 1..=40 blocks) splits off a short segment.
        for blocks in 2..=41usize {
            let token = "B".repeat((blocks * 64).div_ceil(3));
            let l = locate("", Some(&format!("token={token}embeddings")), &h);
            assert_eq!(l.token.as_deref(), Some(token.as_str()), "{blocks} blocks");
            assert_eq!(l.rest, "embeddings");
        }
    }

    /// The audit's two requests: a decoded `%C3%A9` put a multi-byte
    /// character where `glued_cut`'s arithmetic (22 tag characters after
    /// the last `.`; whole AES blocks of base64) cut, and slicing there
    /// panicked — an abort in release, before any limit ran. The raw
    /// character (hyper passes UTF-8 in a query through) did the same.
    #[test]
    fn a_cut_inside_a_multibyte_character_is_no_glued_path() {
        let h = HeaderMap::new();
        let keys = Keys::default();
        let (a21, a42) = ("A".repeat(21), "A".repeat(42));
        for (query, want_token) in [
            (format!("token=a.{a21}%C3%A9%2Fx"), format!("a.{a21}é")),
            (format!("token={a42}%C3%A9%2Fx"), format!("{a42}é")),
            (format!("token=a.{a21}é/x"), format!("a.{a21}é")),
            (format!("token={a42}é/x"), format!("{a42}é")),
        ] {
            let l = locate("", Some(&query), &h);
            // Not a token in the shape the cut assumed: nothing is split
            // off before the `/`, and the value fails like any garbage.
            assert_eq!(l.token.as_deref(), Some(want_token.as_str()), "{query}");
            assert_eq!(l.rest, "x", "{query}");
            for legacy in [true, false] {
                assert_eq!(
                    authenticate(&keys, &l, legacy.then(Default::default), 0).unwrap_err(),
                    ApiError::TokenInvalid,
                    "{query}"
                );
            }
        }
    }

    /// splitmix64: a fixed seed, so a failure replays exactly.
    fn prng(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    /// Random strings of what the cuts count (token characters, runs of
    /// them near the cut lengths, `.`, `=`) mixed with what shifts bytes
    /// against characters (escaped and raw multi-byte UTF-8) and what
    /// splits (`/`, `%2F`, `?`, `&`).
    fn random_text(next: &mut impl FnMut() -> u64, max_pieces: u64) -> String {
        const PIECES: [&str; 22] = [
            "A",
            "z",
            "0",
            "-",
            "_",
            "=",
            ".",
            "/",
            "?",
            "&",
            "%",
            "%2F",
            "%2f",
            "%3F",
            "%C3%A9",
            "%F0%9F%98%80",
            "%C3",
            "é",
            "😀",
            "token=",
            "rai_hash=",
            "eyJ",
        ];
        let mut out = String::new();
        for _ in 0..next() % max_pieces {
            match next() % 8 {
                // A run of token characters: the cuts fall 22 (tag) or
                // 43, 64, 86, … (AES blocks) characters in.
                0 => out.push_str(&"A".repeat((next() % 90) as usize)),
                1 => out.push_str(&"a1b2c3d4e5f6".repeat((next() % 7) as usize)),
                _ => out.push_str(PIECES[(next() % PIECES.len() as u64) as usize]),
            }
        }
        out
    }

    #[test]
    fn no_query_or_path_makes_locate_panic() {
        let mut next = prng(0x5EED_2024_0A11_C0DE);
        let keys = Keys::default();
        let h = HeaderMap::new();
        let forced = Claims::new("openai", "sk-x", 600, 0).with_model("m");
        let listed = Claims::new("openai", "sk-x", 600, 0).with_models(["m"]);
        for _ in 0..20_000 {
            let param = ["token=", "rai_hash=", "key=", "x="][(next() % 4) as usize];
            let mut query = format!("{param}{}", random_text(&mut next, 12));
            if next().is_multiple_of(3) {
                let param = ["&token=", "&rai_hash="][(next() % 2) as usize];
                query.push_str(param);
                query.push_str(&random_text(&mut next, 12));
            }
            let rest = match next() % 3 {
                0 => String::new(),
                1 => "models".into(),
                _ => random_text(&mut next, 6),
            };
            let l = locate(&rest, Some(&query), &h);
            for legacy in [true, false] {
                let _ = authenticate(&keys, &l, legacy.then(Default::default), 0);
            }
            let _ = crate::proxy::path_model(&l.rest);
            let normalised = crate::policy::path::normalise(&l.rest);
            let rest = normalised.as_deref().unwrap_or(&l.rest);
            for claims in [&forced, &listed] {
                let _ = crate::proxy::apply_model_policy(
                    claims,
                    &http::Method::POST,
                    rest,
                    &l.query,
                    br#"{"model":"m"}"#,
                    None,
                );
            }
            // `glued_cut` itself, on any text (not only a value's head).
            let head = random_text(&mut next, 12);
            for param in ["token", "rai_hash", "key"] {
                let (end, glued_start) = glued_cut(param, &head);
                assert!(end <= glued_start && glued_start <= head.len(), "{head:?}");
                assert!(head.is_char_boundary(end), "{param} {head:?}");
                assert!(head.is_char_boundary(glued_start), "{param} {head:?}");
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
    fn a_header_token_with_non_ascii_bytes_is_a_token_not_none() {
        for (name, value) in [
            ("authorization", &b"Bearer \xffabc"[..]),
            ("x-api-key", &b"abc\xe9"[..]),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, http::HeaderValue::from_bytes(value).unwrap());
            let l = locate("chat/completions", None, &h);
            assert!(l.token.is_some_and(|t| t.contains("abc")), "{name}");
        }
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
            authenticate(&keys, &l, Some(Default::default()), 0).unwrap_err(),
            ApiError::TokenMissing
        );
        for (token, legacy) in [("garbage", true), ("garbage", false), ("a.b.c", true)] {
            l.token = Some(token.into());
            assert_eq!(
                authenticate(&keys, &l, legacy.then(Default::default), 0).unwrap_err(),
                ApiError::TokenInvalid
            );
        }
    }
}
