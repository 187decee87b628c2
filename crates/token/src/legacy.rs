//! Legacy tokens of the earlier Go RelayAPI (opt-in on the relay).
//!
//! Format: `base64url(IV ‖ AES-256-CBC(key = hex-decode(aes_key), PKCS#7(JSON)))`
//! where the JSON carries `id`, `api_key`, `max_calls`, `expire_time`,
//! `created_at` (RFC 3339), `provider` and `ext_info`. Keys are matched
//! case-insensitively, unknown keys ignored, a later duplicate wins.
//!
//! CBC without a MAC is malleable, so this module is careful where the old
//! server was not:
//! - every failure — base64, length, padding, UTF-8, JSON, a field — is the
//!   one reason-free [`TokenError::Invalid`], and the work done does not
//!   depend on *where* it failed (no padding oracle through the answer);
//! - the call counter key ([`LegacyClaims::counter_id`]) is derived from the
//!   key id and the *last* ciphertext block: flipping IV bits (which edits
//!   the `id` field at will) or dropping leading blocks (a new IV then
//!   rewrites the new first block) keeps it, changing it garbles the
//!   padding block, and distinct tokens (distinct random IVs) never share
//!   one;
//! - the IV sets the first 16 plaintext bytes at will, and the holder knows
//!   them (`{"id":"token-17…` or `{"max_calls":1,"`). Only the *first* JSON
//!   member's value can begin inside those bytes (any recognised field after
//!   another member starts at byte 16 or later), so a token whose first
//!   member is a recognised field other than `id` is refused unless
//!   [`LegacyOptions::accept_first_block_fields`] is set: in the Java
//!   generator's order (`{"max_calls":1,"…`) an IV flip turns the digit into
//!   a `9` on the same counter.
//!
//! Decoding only; new tokens should be v2 (`crate::v2`).

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit};
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::TokenError;
use crate::rai::RaiConfig;
use crate::secret::SecretString;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Longest legacy token accepted (base64 characters), checked before any work.
pub const MAX_LEGACY_TOKEN_LEN: usize = 16 * 1024;

/// Leeway for `created_at` in the future, as for v2 `iat`.
const LEEWAY_SECS: i64 = 60;

/// One legacy key: the raw AES key and the `rai_hash` that selects it.
#[derive(Clone)]
pub struct LegacyKey {
    aes_key: Zeroizing<[u8; 32]>,
    rai_hash: String,
    /// Public id of the key, part of every counter id (16 hex chars).
    key_id: String,
}

impl LegacyKey {
    pub fn from_rai(rai: &RaiConfig) -> LegacyKey {
        let aes_key = rai.aes_key_bytes();
        let digest = Sha256::new()
            .chain_update(b"relayapi legacy key id\0")
            .chain_update(&aes_key[..])
            .finalize();
        let mut key_id = hex::encode(digest);
        key_id.truncate(16);
        LegacyKey {
            aes_key,
            rai_hash: rai.legacy_hash(),
            key_id,
        }
    }

    /// The `rai_hash` query value that selects this key.
    pub fn rai_hash(&self) -> &str {
        &self.rai_hash
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl std::fmt::Debug for LegacyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Legacy keys in load order (the order keys are tried without `rai_hash`).
#[derive(Clone, Debug, Default)]
pub struct LegacyKeyring {
    keys: Vec<LegacyKey>,
}

impl LegacyKeyring {
    pub fn new() -> LegacyKeyring {
        LegacyKeyring::default()
    }

    /// Adds a key; the same key twice is kept once.
    pub fn insert(&mut self, key: LegacyKey) {
        if !self.keys.iter().any(|k| k.key_id == key.key_id) {
            self.keys.push(key);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a legacy token says, in the relay's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyClaims {
    /// The generator's `id` (for logs only: it is malleable and may collide).
    pub id: String,
    pub api_key: SecretString,
    pub max_calls: u64,
    /// Unix seconds.
    pub expire_time: i64,
    pub created_at: i64,
    pub provider: String,
    pub ext_info: String,
    /// The call-counter key: stable under IV tampering, distinct per token.
    pub counter_id: String,
    /// [`LegacyKey::key_id`] of the key that opened the token.
    pub key_id: String,
}

/// What [`decode_legacy_with`] accepts beyond the safe default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegacyOptions {
    /// Accept tokens whose first JSON member is a recognised field other
    /// than `id` (matched as the decoder matches names: case-insensitively,
    /// after escape decoding), as the Java generator writes them
    /// (`{"max_calls":…`). Its value then starts inside the first 16
    /// plaintext bytes, which the IV sets at will: a holder can rewrite it
    /// there (each `max_calls` digit among those bytes can become `9`, on
    /// the same call counter). Off by default: such tokens are
    /// [`TokenError::Invalid`].
    pub accept_first_block_fields: bool,
}

/// Decodes a legacy token at `now` with the default [`LegacyOptions`]
/// (a token whose first member is a field other than `id` is refused).
///
/// # Errors
/// As [`decode_legacy_with`].
pub fn decode_legacy(
    keyring: &LegacyKeyring,
    token: &str,
    rai_hash: Option<&str>,
    now: i64,
) -> Result<LegacyClaims, TokenError> {
    decode_legacy_with(keyring, token, rai_hash, now, LegacyOptions::default())
}

/// Decodes a legacy token at `now`. With `rai_hash`, only that key is
/// tried; without it, every key in load order.
///
/// # Errors
/// [`TokenError::Expired`] when `expire_time` has passed,
/// [`TokenError::NotYetValid`] when `created_at` is over 60 s ahead,
/// [`TokenError::Invalid`] for everything else, including a first member
/// refused by `options` (see [`LegacyOptions`]).
pub fn decode_legacy_with(
    keyring: &LegacyKeyring,
    token: &str,
    rai_hash: Option<&str>,
    now: i64,
    options: LegacyOptions,
) -> Result<LegacyClaims, TokenError> {
    let bytes = decode_base64(token).ok_or(TokenError::Invalid)?;
    // IV + at least one block, whole blocks only.
    if bytes.len() < 32 || bytes.len() % 16 != 0 {
        return Err(TokenError::Invalid);
    }
    let candidates: Vec<&LegacyKey> = match rai_hash.map(|h| h.trim().trim_end_matches('=')) {
        Some(h) if !h.is_empty() => keyring
            .keys
            .iter()
            .filter(|k| k.rai_hash.eq_ignore_ascii_case(h))
            .collect(),
        _ => keyring.keys.iter().collect(),
    };
    let mut found = None;
    for key in candidates {
        // Try every candidate even after a hit would be found, so time does not
        // tell which key matched; the first success wins.
        if let Some(claims) = open_with(key, &bytes, options) {
            found.get_or_insert(claims);
        }
    }
    let claims = found.ok_or(TokenError::Invalid)?;
    if now >= claims.expire_time {
        return Err(TokenError::Expired);
    }
    if claims.created_at > now.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

fn decode_base64(token: &str) -> Option<Zeroizing<Vec<u8>>> {
    let t = token.trim();
    if t.len() > MAX_LEGACY_TOKEN_LEN {
        return None;
    }
    let t = t.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| STANDARD_NO_PAD.decode(t))
        .ok()
        .map(Zeroizing::new)
}

fn open_with(key: &LegacyKey, bytes: &[u8], options: LegacyOptions) -> Option<LegacyClaims> {
    let (iv, ciphertext) = bytes.split_at(16);
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let dec = Aes256CbcDec::new_from_slices(&key.aes_key[..], iv).ok()?;
    dec.decrypt_padded_mut::<NoPadding>(&mut buf).ok()?;
    // PKCS#7 checked without early exits, then the JSON is parsed whatever
    // the padding said, so both failures cost the same.
    let (pad_ok, pad_len) = pkcs7_check(&buf);
    let body_len = buf.len() - if pad_ok { pad_len } else { 0 };
    let parsed = parse_fields(&buf[..body_len]);
    if !pad_ok {
        return None;
    }
    let fields = parsed?;
    let first_block_field = fields.first_block_field;
    // `bytes` is at least two blocks, so the ciphertext has a last one.
    let counter_id = counter_id(key, &ciphertext[ciphertext.len() - 16..]);
    // Checked after the claims are built, so a refused first member costs
    // the same work as an accepted token.
    fields
        .into_claims(counter_id, key.key_id.clone())
        .filter(|_| options.accept_first_block_fields || !first_block_field)
}

/// Returns (valid, pad length) examining every byte of the last block.
fn pkcs7_check(buf: &[u8]) -> (bool, usize) {
    let Some(&last) = buf.last() else {
        return (false, 0);
    };
    let n = usize::from(last);
    let mut ok = (1..=16).contains(&n) && n <= buf.len();
    let tail = &buf[buf.len().saturating_sub(16)..];
    for (i, &b) in tail.iter().rev().enumerate() {
        if i < n {
            ok &= b == last;
        }
    }
    (ok, n)
}

fn counter_id(key: &LegacyKey, last_block: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"relayapi legacy counter\0")
        .chain_update(key.key_id.as_bytes())
        .chain_update(last_block)
        .finalize();
    // "L" marks the legacy namespace; 42 base64url chars ≈ 252 bits.
    let mut id = String::from("L");
    id.push_str(&URL_SAFE_NO_PAD.encode(&digest[..31]));
    id
}

#[derive(Default)]
struct Fields {
    id: Option<String>,
    api_key: Option<String>,
    max_calls: Option<i64>,
    expire_time: Option<String>,
    created_at: Option<String>,
    provider: Option<String>,
    ext_info: Option<String>,
    /// The first member is a recognised field other than `id`: its value
    /// begins in the IV-controlled first block.
    first_block_field: bool,
}

impl Fields {
    fn into_claims(self, counter_id: String, key_id: String) -> Option<LegacyClaims> {
        let max_calls = u64::try_from(self.max_calls?).ok().filter(|&n| n > 0)?;
        let api_key = self.api_key.filter(|k| !k.is_empty())?;
        let provider = self.provider.filter(|p| !p.is_empty())?;
        Some(LegacyClaims {
            id: self.id.unwrap_or_default(),
            api_key: SecretString::new(api_key),
            max_calls,
            expire_time: parse_rfc3339(self.expire_time.as_deref()?)?,
            created_at: match self.created_at.as_deref() {
                Some(t) => parse_rfc3339(t)?,
                None => i64::MIN,
            },
            provider,
            ext_info: self.ext_info.unwrap_or_default(),
            counter_id,
            key_id,
        })
    }
}

fn parse_fields(plain: &[u8]) -> Option<Fields> {
    let entries = serde_json::from_slice::<OrderedObject>(plain).ok()?.0;
    let mut f = Fields::default();
    // Later duplicates win, names case-insensitive (serde has decoded any
    // escapes, so `max\u005fcalls` is `max_calls`), unknown names ignored.
    for (i, (name, value)) in entries.into_iter().enumerate() {
        let name = name.to_ascii_lowercase();
        let text = || value.as_str().map(str::to_owned);
        match name.as_str() {
            "id" => f.id = Some(text().or_else(|| value.as_i64().map(|n| n.to_string()))?),
            "api_key" => f.api_key = Some(text()?),
            "max_calls" => f.max_calls = Some(value.as_i64()?),
            "expire_time" => f.expire_time = Some(text()?),
            "created_at" => f.created_at = Some(text()?),
            "provider" => f.provider = Some(text()?),
            "ext_info" => f.ext_info = Some(text()?),
            _ => continue,
        }
        // A field other than `id` first, as decided by the match that read
        // it, so the first-member rule sees every name the decoder does.
        if i == 0 && name != "id" {
            f.first_block_field = true;
        }
    }
    Some(f)
}

/// A JSON object's members in document order, duplicates kept.
struct OrderedObject(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// RFC 3339 date-time (`Z` or `±hh:mm`, 0–9 fractional digits) → unix seconds
/// (fractions truncated).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // At most 4 digits: no overflow.
        Some(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if !(1..=9).contains(&(i - start)) {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut};

    type Enc = cbc::Encryptor<aes::Aes256>;

    const KEY_HEX: &str = "a123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn rai(key: &str) -> RaiConfig {
        RaiConfig::parse(&format!(
            r#"{{"version":"1.0.0","server":{{"host":"http://localhost","port":8080,"base_path":"/relayapi/"}},"crypto":{{"method":"aes","aes_key":"{key}","aes_iv_seed":"fedcba9876543210"}}}}"#
        ))
        .unwrap()
    }

    pub(crate) fn mint(key_hex: &str, json: &str, iv: [u8; 16]) -> String {
        let key: [u8; 32] = hex::decode(key_hex).unwrap().try_into().unwrap();
        let ct = Enc::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(json.as_bytes());
        let mut all = iv.to_vec();
        all.extend(ct);
        URL_SAFE_NO_PAD.encode(all)
    }

    fn ring() -> LegacyKeyring {
        let mut r = LegacyKeyring::new();
        r.insert(LegacyKey::from_rai(&rai(KEY_HEX)));
        r
    }

    const NOW: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z

    fn body(expire: &str) -> String {
        format!(
            r#"{{"id":"1735689600000","api_key":"sk-legacy","max_calls":3,"expire_time":"{expire}","created_at":"2025-01-01T00:00:00Z","provider":"openai","ext_info":"{{\"rep_m\":\"m\"}}"}}"#
        )
    }

    #[test]
    fn decodes_python_shaped_token() {
        let t = mint(KEY_HEX, &body("2025-01-01T01:00:00Z"), [9; 16]);
        let c = decode_legacy(&ring(), &t, None, NOW).unwrap();
        assert_eq!(c.api_key.expose(), "sk-legacy");
        assert_eq!(c.max_calls, 3);
        assert_eq!(c.expire_time, NOW + 3600);
        assert_eq!(c.ext_info, r#"{"rep_m":"m"}"#);
        // rai_hash selects; a wrong one refuses; padding and whitespace tolerated.
        let h = rai(KEY_HEX).legacy_hash();
        assert!(decode_legacy(&ring(), &format!(" {t}== "), Some(&h), NOW).is_ok());
        assert_eq!(
            decode_legacy(&ring(), &t, Some("00"), NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn keys_case_insensitive_unknown_ignored_later_duplicate_wins() {
        let json = r#"{"extra":true,"PROVIDER":"openai","Max_Calls":1,"api_key":"old","API_KEY":"new","Expire_Time":"2025-01-01T01:00:00.123456789+01:00","id":"x","created_at":"2024-12-31T22:00:00.5Z","ext_info":""}"#;
        let c = decode_legacy(&ring(), &mint(KEY_HEX, json, [1; 16]), None, NOW - 3000).unwrap();
        assert_eq!(c.api_key.expose(), "new");
        assert_eq!(c.expire_time, NOW);
    }

    const ACCEPT: LegacyOptions = LegacyOptions {
        accept_first_block_fields: true,
    };

    /// `body` in the Java generator's `HashMap` order: `max_calls` first.
    fn java_body(max_calls: u64) -> String {
        format!(
            r#"{{"max_calls":{max_calls},"api_key":"sk-legacy","provider":"openai","expire_time":"2030-01-01T00:00:00Z","created_at":"2025-01-01T00:00:00Z","id":"1735689600000","ext_info":""}}"#
        )
    }

    #[test]
    fn a_first_member_other_than_id_needs_the_opt_in() {
        let t = mint(KEY_HEX, &java_body(1), [4; 16]);
        assert_eq!(
            decode_legacy(&ring(), &t, None, NOW),
            Err(TokenError::Invalid)
        );
        let c = decode_legacy_with(&ring(), &t, None, NOW, ACCEPT).unwrap();
        assert_eq!((c.max_calls, c.api_key.expose()), (1, "sk-legacy"));

        // Every recognised field but `id` as the first member, however spelled
        // (case, JSON escapes), optional ones too: `created_at`'s year and
        // `ext_info`'s `rep_m` would be as rewritable as `max_calls`.
        let rest = r#""api_key":"sk-legacy","max_calls":3,"expire_time":"2030-01-01T00:00:00Z","created_at":"2025-01-01T00:00:00Z","provider":"openai","ext_info":"{\"rep_m\":\"m\"}""#;
        for first in [
            r#""max_calls":3"#,
            r#""MAX_CALLS":3"#,
            r#""max\u005fcalls":3"#,
            r#""\u006Dax_calls":3"#,
            r#""api_key":"sk-legacy""#,
            r#""Provider":"openai""#,
            r#""expire_time":"2030-01-01T00:00:00Z""#,
            r#""created_at":"2025-01-01T00:00:00Z""#,
            r#""ext_info":"{\"rep_m\":\"m\"}""#,
        ] {
            let json = format!("{{{first},{rest}}}");
            let t = mint(KEY_HEX, &json, [7; 16]);
            assert_eq!(
                decode_legacy(&ring(), &t, None, NOW),
                Err(TokenError::Invalid),
                "{json}"
            );
            assert!(
                decode_legacy_with(&ring(), &t, None, NOW, ACCEPT).is_ok(),
                "{json}"
            );
        }
        // `id` first (the Python and JavaScript generators), in any spelling,
        // and an unknown first member are accepted without the opt-in.
        for first in [
            r#""id":"token-1735689600.123456""#,
            r#""ID":1735689600000"#,
            r#""i\u0064":"x""#,
            r#""extra":true"#,
        ] {
            let json = format!("{{{first},{rest}}}");
            let c = decode_legacy(&ring(), &mint(KEY_HEX, &json, [8; 16]), None, NOW).unwrap();
            assert_eq!(c.max_calls, 3, "{json}");
        }
    }

    /// The attack the rule stops: the holder knows the first 16 plaintext
    /// bytes of a Java-order token (`{"max_calls":1,"`) and XORs the IV.
    #[test]
    fn an_iv_flip_raises_a_first_block_max_calls_only_with_the_opt_in() {
        let flip = |t: &str, to: &[u8; 16]| {
            let mut raw = URL_SAFE_NO_PAD.decode(t).unwrap();
            let from = java_body(1);
            for i in 0..16 {
                raw[i] ^= from.as_bytes()[i] ^ to[i];
            }
            URL_SAFE_NO_PAD.encode(raw)
        };
        let t = mint(KEY_HEX, &java_body(1), [4; 16]);
        let orig = decode_legacy_with(&ring(), &t, None, NOW, ACCEPT).unwrap();

        let raised = flip(&t, br#"{"max_calls":9,""#);
        let c = decode_legacy_with(&ring(), &raised, None, NOW, ACCEPT).unwrap();
        // The risk the opt-in accepts: nine calls on the same counter.
        assert_eq!(c.max_calls, 9);
        assert_eq!(c.counter_id, orig.counter_id);
        assert_eq!(
            decode_legacy(&ring(), &raised, None, NOW),
            Err(TokenError::Invalid)
        );
        // Neither case nor an escape gets around the rule (the escape does
        // not even fit: the value would start after byte 16).
        let upper = flip(&t, br#"{"MAX_CALLS":9,""#);
        assert!(decode_legacy_with(&ring(), &upper, None, NOW, ACCEPT).is_ok());
        assert_eq!(
            decode_legacy(&ring(), &upper, None, NOW),
            Err(TokenError::Invalid)
        );
        // Relabelling the first member to `id` (or anything unknown) passes
        // the rule but drops the required `max_calls`: invalid either way.
        for to in [br#"{"id":"xxxxxx",""#, br#"{"max_callz":9,""#] {
            let relabelled = flip(&t, to);
            for opts in [LegacyOptions::default(), ACCEPT] {
                assert_eq!(
                    decode_legacy_with(&ring(), &relabelled, None, NOW, opts),
                    Err(TokenError::Invalid)
                );
            }
        }
    }

    #[test]
    fn expiry_and_never_valid() {
        let t = mint(KEY_HEX, &body("2025-01-01T00:00:00Z"), [2; 16]);
        assert_eq!(
            decode_legacy(&ring(), &t, None, NOW),
            Err(TokenError::Expired)
        );
        for max in ["0", "-1"] {
            let json = body("2030-01-01T00:00:00Z")
                .replace("\"max_calls\":3", &format!("\"max_calls\":{max}"));
            assert_eq!(
                decode_legacy(&ring(), &mint(KEY_HEX, &json, [3; 16]), None, NOW),
                Err(TokenError::Invalid)
            );
        }
        let json = body("2030-01-01T00:00:00Z").replace("\"max_calls\":3,", "");
        assert_eq!(
            decode_legacy(&ring(), &mint(KEY_HEX, &json, [3; 16]), None, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn malformed_inputs_are_invalid_never_panics() {
        for t in [
            "",
            "!!!",
            "AAAA",
            &URL_SAFE_NO_PAD.encode([0u8; 31]),
            &URL_SAFE_NO_PAD.encode([0u8; 33]),
            &"A".repeat(20_000),
        ] {
            assert_eq!(
                decode_legacy(&ring(), t, None, NOW),
                Err(TokenError::Invalid),
                "{t:.20}"
            );
        }
        assert_eq!(
            decode_legacy(&ring(), &URL_SAFE_NO_PAD.encode([0u8; 48]), None, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn iv_tampering_keeps_the_counter_and_distinct_tokens_differ() {
        let json = body("2030-01-01T00:00:00Z");
        let t = mint(KEY_HEX, &json, [5; 16]);
        let base = decode_legacy(&ring(), &t, None, NOW).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for bit in 0..128 {
            let mut r = raw.clone();
            r[bit / 8] ^= 1 << (bit % 8);
            if let Ok(c) = decode_legacy(&ring(), &URL_SAFE_NO_PAD.encode(&r), None, NOW) {
                assert_eq!(c.counter_id, base.counter_id, "bit {bit}");
            }
        }
        let other = decode_legacy(&ring(), &mint(KEY_HEX, &json, [6; 16]), None, NOW).unwrap();
        assert_ne!(other.counter_id, base.counter_id);
    }

    #[test]
    fn dropping_the_first_block_keeps_the_counter() {
        // Laid out so that byte 32 starts a member: a holder who drops the
        // first ciphertext block and picks IV' = C1 ^ P2 ^ X gets the
        // plaintext X ‖ P3…, every field intact.
        let json = format!(
            r#"{{"id":"{}","api_key":"sk-legacy","max_calls":1,"expire_time":"2030-01-01T00:00:00Z","provider":"openai"}}"#,
            "x".repeat(23)
        );
        assert_eq!(&json[32..42], r#""api_key":"#);
        let t = mint(KEY_HEX, &json, [7; 16]);
        let base = decode_legacy(&ring(), &t, None, NOW).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let x = br#"{"zzzzzzzzzz":1,"#;
        let mut forged: Vec<u8> = (0..16)
            .map(|i| raw[16 + i] ^ json.as_bytes()[16 + i] ^ x[i])
            .collect();
        forged.extend_from_slice(&raw[32..]);
        let c = decode_legacy(&ring(), &URL_SAFE_NO_PAD.encode(&forged), None, NOW).unwrap();
        assert_eq!((c.api_key.expose(), c.max_calls), ("sk-legacy", 1));
        assert_eq!(c.counter_id, base.counter_id, "a fresh counter for free");
    }

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-01-01T00:00:00.1Z"), Some(NOW));
        assert_eq!(
            parse_rfc3339("2025-01-01T08:00:00.123456789+08:00"),
            Some(NOW)
        );
        assert_eq!(parse_rfc3339("2024-12-31T19:00:00-05:00"), Some(NOW));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        for bad in [
            "2025-01-01T00:00:00",
            "2025-01-01T00:00:00.Z",
            "2025-01-01T00:00:00.1234567890Z",
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-01-01T00:00:00+0800",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let k = LegacyKey::from_rai(&rai(KEY_HEX));
        let s = format!("{k:?} {:?}", ring());
        assert!(!s.contains(KEY_HEX) && !s.contains(&KEY_HEX[..16]));
    }
}
