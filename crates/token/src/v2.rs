//! Token v2: JWE compact serialisation (RFC 7516), `alg` `dir`, `enc`
//! `A256GCM`.
//!
//! ```text
//! BASE64URL(header) . "" . BASE64URL(iv) . BASE64URL(ciphertext) . BASE64URL(tag)
//! ```
//!
//! * header, when minting, is exactly `{"alg":"dir","enc":"A256GCM","kid":"<kid>"}`;
//! * the encrypted-key segment is empty (direct encryption);
//! * IV 12 bytes, tag 16 bytes, base64url without padding everywhere;
//! * AAD = the ASCII bytes of the header segment exactly as received.
//!
//! Every failure maps to [`TokenError::Invalid`] except the clock checks.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::claims::Claims;
use crate::error::TokenError;
use crate::json::UniqueObject;
use crate::keys::{Keyring, V2Key};
use crate::rai::random_bytes;

/// Tokens longer than this (in bytes) are rejected before any work.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// AES-GCM IV length in bytes.
pub const IV_LEN: usize = 12;
/// AES-GCM tag length in bytes.
pub const TAG_LEN: usize = 16;

/// The protected header a conforming minter writes for `kid`.
pub fn canonical_header(kid: &str) -> String {
    format!(r#"{{"alg":"dir","enc":"A256GCM","kid":"{kid}"}}"#)
}

/// Mints a token with a random IV.
///
/// # Errors
/// [`TokenError::Invalid`] if the claims would not be accepted by
/// [`decode_v2`] (bad jti, `exp <= iat`, non-`x_` extra claim, …) or the
/// token would exceed [`MAX_TOKEN_LEN`].
pub fn encode_v2(key: &V2Key, claims: &Claims) -> Result<String, TokenError> {
    encode_v2_with_iv(key, claims, random_bytes::<IV_LEN>())
}

/// Mints a token with a caller-chosen IV. Deterministic: for test vectors
/// and SDK tests only — never reuse an IV with the same key in production.
///
/// # Errors
/// As [`encode_v2`].
pub fn encode_v2_with_iv(
    key: &V2Key,
    claims: &Claims,
    iv: [u8; IV_LEN],
) -> Result<String, TokenError> {
    claims.check_structure()?;
    let payload = Zeroizing::new(claims.to_json());
    let token = encrypt_compact(key, &canonical_header(key.kid()), payload.as_bytes(), iv)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid);
    }
    Ok(token)
}

/// Low-level: encrypts `payload` under `protected_header` (any string,
/// used verbatim) without checking either. Exists for test vectors and
/// interop tests; use [`encode_v2`] to mint.
///
/// # Errors
/// [`TokenError::Invalid`] if AES-GCM refuses the input (over 64 GiB).
pub fn encrypt_compact(
    key: &V2Key,
    protected_header: &str,
    payload: &[u8],
    iv: [u8; IV_LEN],
) -> Result<String, TokenError> {
    let header_b64 = URL_SAFE_NO_PAD.encode(protected_header.as_bytes());
    let cipher = Aes256Gcm::new(key.expose_content_key().into());
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: payload,
                aad: header_b64.as_bytes(),
            },
        )
        .map_err(|_| TokenError::Invalid)?;
    let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    Ok(format!(
        "{header_b64}..{}.{}.{}",
        URL_SAFE_NO_PAD.encode(iv),
        URL_SAFE_NO_PAD.encode(ciphertext),
        URL_SAFE_NO_PAD.encode(tag)
    ))
}

/// Decrypts, parses and validates a token at time `now` (UTC seconds).
///
/// # Errors
/// [`TokenError::Expired`] / [`TokenError::NotYetValid`] from
/// [`Claims::validate`]; [`TokenError::Invalid`] for everything else.
pub fn decode_v2(keyring: &Keyring, token: &str, now: i64) -> Result<Claims, TokenError> {
    let claims = open_v2(keyring, token)?;
    claims.validate(now)?;
    Ok(claims)
}

/// Decrypts and parses a token without looking at the clock (inspection
/// and tests). Servers use [`decode_v2`].
///
/// # Errors
/// [`TokenError::Invalid`].
pub fn open_v2(keyring: &Keyring, token: &str) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid);
    }
    let parts = split5(token).ok_or(TokenError::Invalid)?;
    let [header_b64, encrypted_key, iv_b64, ct_b64, tag_b64] = parts;
    if !encrypted_key.is_empty() {
        return Err(TokenError::Invalid);
    }
    let kid = check_header(header_b64).ok_or(TokenError::Invalid)?;
    let key = keyring.get(&kid).ok_or(TokenError::Invalid)?;

    let iv = b64(iv_b64)?;
    let tag = b64(tag_b64)?;
    let mut sealed = b64(ct_b64)?;
    if iv.len() != IV_LEN || tag.len() != TAG_LEN {
        return Err(TokenError::Invalid);
    }
    sealed.extend_from_slice(&tag);

    let cipher = Aes256Gcm::new(key.expose_content_key().into());
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &sealed,
                    aad: header_b64.as_bytes(),
                },
            )
            .map_err(|_| TokenError::Invalid)?,
    );
    Claims::from_json(&plaintext)
}

/// Cheap syntactic test used to decide whether a URL path segment is a v2
/// token: five `.`-separated parts, the second empty, the others non-empty
/// base64url, the first starting with `eyJ` (base64 of `{"`). No decoding.
pub fn looks_like_jwe(s: &str) -> bool {
    // One pass (this runs on every request's first path segment): count
    // the dots, check each segment's length and every byte's alphabet.
    if !s.starts_with("eyJ") {
        return false;
    }
    let (mut dots, mut len) = (0usize, 0usize);
    for &b in s.as_bytes() {
        if b == b'.' {
            // The segment that just ended: only the second one is empty.
            if (dots == 1) != (len == 0) || dots == 4 {
                return false;
            }
            dots += 1;
            len = 0;
        } else if B64URL[usize::from(b)] {
            len += 1;
        } else {
            return false;
        }
    }
    dots == 4 && len > 0
}

/// The base64url alphabet as a table: one load per byte.
const B64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        i += 1;
    }
    table
};

/// The header `kid` of a syntactically valid v2 token, without decrypting.
/// Unauthenticated: use only for routing and diagnostics.
pub fn peek_kid(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let [header_b64, ..] = split5(token)?;
    check_header(header_b64)
}

/// The `kid` of a v2 token's protected header (the part before the first
/// `.`), the rest of the token unread; `None` unless the header is one this
/// crate accepts. For a token already decoded (the request log names the
/// key it was minted under): no second pass over the whole token, as
/// [`peek_kid`] makes.
pub fn header_kid(token: &str) -> Option<String> {
    check_header(token.split_once('.')?.0)
}

fn split5(token: &str) -> Option<[&str; 5]> {
    let mut it = token.split('.');
    let parts = [it.next()?, it.next()?, it.next()?, it.next()?, it.next()?];
    if it.next().is_some() {
        return None;
    }
    Some(parts)
}

/// Strict base64url: no padding, alphabet only, canonical trailing bits.
fn b64(s: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Invalid)
}

/// The protected header our SDKs write, byte for byte, up to the `kid` value.
const CANONICAL_HEADER_HEAD: &[u8] = br#"{"alg":"dir","enc":"A256GCM","kid":""#;

/// Validates the protected header and returns its `kid`.
/// [`CANONICAL_HEADER_HEAD`] in base64url: its 36 bytes are whole 3-byte
/// groups, so every canonical header's text starts with exactly this.
const CANONICAL_HEADER_HEAD_B64: &str = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIiwia2lkIjoi";

/// `kid"}` (the rest of a canonical header) → the kid, when it needs no JSON
/// escaping.
fn canonical_kid(rest: &[u8]) -> Option<String> {
    let kid = rest.strip_suffix(b"\"}")?;
    if !kid.is_empty() && kid.iter().all(u8::is_ascii_alphanumeric) {
        return std::str::from_utf8(kid).ok().map(str::to_owned);
    }
    None
}

fn check_header(header_b64: &str) -> Option<String> {
    // Fast path for the exact bytes our SDKs write (a kid that needs no JSON
    // escaping): the strict parse below accepts them too, with this result.
    // Only the part after the fixed head is decoded (strictly: the head is
    // whole base64 groups, so the halves decode independently).
    if let Some(rest) = header_b64.strip_prefix(CANONICAL_HEADER_HEAD_B64) {
        if let Some(kid) = b64(rest).ok().and_then(|r| canonical_kid(&r)) {
            return Some(kid);
        }
    }
    let bytes = b64(header_b64).ok()?;
    if let Some(kid) = bytes
        .strip_prefix(CANONICAL_HEADER_HEAD)
        .and_then(canonical_kid)
    {
        return Some(kid);
    }
    let header = UniqueObject::parse(&bytes)?;
    let is =
        |name: &str, want: &str| matches!(header.get(name), Some(Value::String(s)) if s == want);
    if !is("alg", "dir") || !is("enc", "A256GCM") {
        return None;
    }
    if header.get("zip").is_some() || header.get("crit").is_some() {
        return None;
    }
    match header.get("kid") {
        Some(Value::String(kid)) => Some(kid.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn key() -> V2Key {
        V2Key::from_aes_key(&[0x42; 32])
    }

    fn claims() -> Claims {
        Claims::new("openai", "sk-test-secret-api-key", 3600, NOW)
    }

    #[test]
    fn canonical_head_in_base64_is_the_head_encoded() {
        assert_eq!(
            URL_SAFE_NO_PAD.encode(CANONICAL_HEADER_HEAD),
            CANONICAL_HEADER_HEAD_B64
        );
        assert_eq!(CANONICAL_HEADER_HEAD.len() % 3, 0);
        // The fast path and the strict parse agree, also on the edge cases.
        let header = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let canonical = header(r#"{"alg":"dir","enc":"A256GCM","kid":"0123abcd"}"#);
        assert_eq!(check_header(&canonical).as_deref(), Some("0123abcd"));
        let dashed = header(r#"{"alg":"dir","enc":"A256GCM","kid":"a-b"}"#);
        assert_eq!(check_header(&dashed).as_deref(), Some("a-b"));
        let empty = header(r#"{"alg":"dir","enc":"A256GCM","kid":""}"#);
        assert_eq!(check_header(&empty).as_deref(), Some(""));
        // Non-canonical trailing bits after the fixed head: refused.
        let mut bad = canonical.clone();
        bad.push('B');
        assert_eq!(check_header(&bad), None);
        let zip = header(r#"{"alg":"dir","enc":"A256GCM","kid":"k","zip":"DEF"}"#);
        assert_eq!(check_header(&zip), None);
    }

    #[test]
    fn round_trip() {
        let c = claims()
            .with_max_calls(5)
            .with_model("gpt-4o")
            .with_sub("user-1");
        let token = encode_v2(&key(), &c).unwrap();
        assert!(looks_like_jwe(&token));
        assert_eq!(peek_kid(&token).as_deref(), Some(key().kid()));
        assert_eq!(header_kid(&token).as_deref(), Some(key().kid()));
        assert_eq!(header_kid("eyJ.x"), None);
        assert_eq!(header_kid(token.split_once('.').unwrap().0), None);
        assert_eq!(decode_v2(&Keyring::from(key()), &token, NOW).unwrap(), c);
        assert!(!token.contains("sk-test"));
    }

    #[test]
    fn header_fast_path_agrees_with_the_strict_parse() {
        let enc = |h: &str| URL_SAFE_NO_PAD.encode(h);
        // Canonical bytes (fast path) and the same header spaced or
        // reordered (strict parse) give the same kid.
        for h in [
            r#"{"alg":"dir","enc":"A256GCM","kid":"0123456789abcdef"}"#,
            r#"{ "alg": "dir", "enc": "A256GCM", "kid": "0123456789abcdef" }"#,
            r#"{"kid":"0123456789abcdef","enc":"A256GCM","alg":"dir"}"#,
        ] {
            assert_eq!(
                check_header(&enc(h)).as_deref(),
                Some("0123456789abcdef"),
                "{h}"
            );
        }
        // Near misses of the canonical form still go through every check.
        for h in [
            r#"{"alg":"dir","enc":"A256GCM","kid":"a","zip":"DEF"}"#,
            r#"{"alg":"dir","enc":"A256GCM","kid":"a","kid":"b"}"#,
            r#"{"alg":"dir","enc":"A256GCM","kid":"a"}}"#,
            r#"{"alg":"dir","enc":"A128GCM","kid":"a"}"#,
        ] {
            assert_eq!(check_header(&enc(h)), None, "{h}");
        }
        assert_eq!(
            check_header(&enc(r#"{"alg":"dir","enc":"A256GCM","kid":"a\u0062"}"#)).as_deref(),
            Some("ab")
        );
    }

    #[test]
    fn random_iv_differs_per_token() {
        let c = claims();
        assert_ne!(
            encode_v2(&key(), &c).unwrap(),
            encode_v2(&key(), &c).unwrap()
        );
    }

    #[test]
    fn header_is_exact_and_deterministic_with_iv() {
        let t = encode_v2_with_iv(&key(), &claims(), [0; 12]).unwrap();
        let header = URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        assert_eq!(header, canonical_header(key().kid()).as_bytes());
        assert!(t.split('.').nth(2).unwrap() == "AAAAAAAAAAAAAAAA");
    }

    #[test]
    fn unknown_kid_is_invalid() {
        let token = encode_v2(&key(), &claims()).unwrap();
        let other = Keyring::from(V2Key::from_aes_key(&[1; 32]));
        assert_eq!(decode_v2(&other, &token, NOW), Err(TokenError::Invalid));
        assert_eq!(
            decode_v2(&Keyring::new(), &token, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn minting_refuses_claims_the_relay_would_reject() {
        let k = key();
        let mut c = claims();
        c.jti = "short".into();
        assert_eq!(encode_v2(&k, &c), Err(TokenError::Invalid));
        assert_eq!(
            encode_v2(&k, &claims().with_max_calls(0)),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            encode_v2(&k, &claims().with_extra("foo", Value::Null)),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            encode_v2(&k, &Claims::new("openai", "k", 0, NOW)),
            Err(TokenError::Invalid)
        );
        let big = "a".repeat(MAX_TOKEN_LEN);
        assert_eq!(
            encode_v2(&k, &claims().with_sub(big)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn oversized_token_is_rejected_before_work() {
        let s = format!("eyJ..{}", "A".repeat(MAX_TOKEN_LEN));
        assert_eq!(
            decode_v2(&Keyring::from(key()), &s, NOW),
            Err(TokenError::Invalid)
        );
        assert!(peek_kid(&s).is_none());
    }

    #[test]
    fn looks_like_jwe_is_syntactic() {
        assert!(looks_like_jwe("eyJh..a.b.c"));
        assert!(!looks_like_jwe("eyJh.x.a.b.c"));
        assert!(!looks_like_jwe("eyJh..a.b"));
        assert!(!looks_like_jwe("eyJh..a.b.c.d"));
        assert!(!looks_like_jwe("abcd..a.b.c"));
        assert!(!looks_like_jwe("eyJh..a.b+.c"));
        assert!(!looks_like_jwe("eyJh...b.c"));
        assert!(!looks_like_jwe("sk-proj-abc"));
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(TokenError::Invalid.code(), "token_invalid");
        assert_eq!(TokenError::Expired.code(), "token_expired");
        assert_eq!(TokenError::NotYetValid.code(), "token_not_yet_valid");
    }
}
