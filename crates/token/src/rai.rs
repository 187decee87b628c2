//! `.rai` client configs.
//!
//! A `.rai` file is the small JSON document a relay operator hands to an
//! application backend: where the relay lives and the AES key both sides
//! share. The token key is derived from `crypto.aes_key` (see
//! [`crate::keys`]).
//!
//! ```json
//! {"version":"1.0.0",
//!  "server":{"host":"http://localhost","port":8840,"base_path":"/relayapi/"},
//!  "crypto":{"method":"aes","aes_key":"<64 hex>","aes_iv_seed":"<hex>"}}
//! ```
//!
//! [`RaiConfig::parse`] validates everything and reports all problems at
//! once; unknown fields are ignored for forward compatibility. This module
//! parses strings only — callers read the file and add its path to errors.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{RaiError, RaiFieldError};
use crate::secret::SecretString;

/// The `.rai` format version written by [`RaiConfig::generate`].
pub const RAI_VERSION: &str = "1.0.0";

const FIX: &str = "generate a fresh file with `relayapi gen-config`";

/// A validated `.rai` client config. `Debug` never shows key material.
///
/// Construct it with [`RaiConfig::parse`] (or serde, which runs the same
/// validation) or [`RaiConfig::generate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaiConfig {
    /// Format version, e.g. `1.0.0`.
    pub version: String,
    /// Where clients reach the relay.
    pub server: RaiServer,
    /// Shared key material.
    pub crypto: RaiCrypto,
}

/// The `server` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaiServer {
    /// Scheme and host name, e.g. `http://localhost` (no path).
    pub host: String,
    /// TCP port, 1–65535.
    pub port: u16,
    /// URL prefix of the relay; always starts and ends with `/` after parsing.
    pub base_path: String,
}

/// The `crypto` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaiCrypto {
    /// Always `aes` (compared case-insensitively, kept as written).
    pub method: String,
    /// 64 hex characters = the 32-byte AES key.
    pub aes_key: SecretString,
    /// Non-empty, even-length hex. Only used by legacy tokens.
    pub aes_iv_seed: SecretString,
}

impl RaiConfig {
    /// Parses and validates a `.rai` document.
    ///
    /// # Errors
    /// [`RaiError::Syntax`] if `json` is not JSON, otherwise
    /// [`RaiError::Invalid`] listing every bad field.
    pub fn parse(json: &str) -> Result<RaiConfig, RaiError> {
        let value: Value = serde_json::from_str(json).map_err(|e| RaiError::Syntax {
            line: e.line(),
            column: e.column(),
        })?;
        Self::from_value(&value)
    }

    /// Validates an already-parsed JSON value (see [`RaiConfig::parse`]).
    ///
    /// # Errors
    /// [`RaiError::Invalid`] listing every bad field.
    pub fn from_value(value: &Value) -> Result<RaiConfig, RaiError> {
        let mut p = Problems::default();
        let Some(root) = value.as_object() else {
            p.add(
                "(root)",
                "must be a JSON object with `version`, `server` and `crypto`",
            );
            return Err(p.into_error());
        };

        let version = p.string(
            root,
            "version",
            "version",
            "must be a string such as \"1.0.0\"",
        );
        let server = p.object(root, "server", "server");
        let crypto = p.object(root, "crypto", "crypto");

        let (mut host, mut port, mut base_path) = (None, None, None);
        if let Some(server) = server {
            host = p.string(
                server,
                "host",
                "server.host",
                "must be a string such as \"http://localhost\"",
            );
            if let Some(Err(problem)) = host.as_deref().map(check_host) {
                p.add("server.host", problem);
            }
            port = match server.get("port") {
                Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
                    Some(n) if n > 0 => Some(n),
                    _ => {
                        p.add("server.port", "must be an integer between 1 and 65535");
                        None
                    }
                },
                None => {
                    p.add("server.port", "is missing; add e.g. \"port\": 8840");
                    None
                }
            };
            base_path = p
                .string(
                    server,
                    "base_path",
                    "server.base_path",
                    "must be a string such as \"/relayapi/\"",
                )
                .map(|s| normalise_base_path(&s));
        }

        let (mut method, mut aes_key, mut aes_iv_seed) = (None, None, None);
        if let Some(crypto) = crypto {
            method = p.string(
                crypto,
                "method",
                "crypto.method",
                "must be the string \"aes\"",
            );
            if let Some(m) = &method {
                if !m.eq_ignore_ascii_case("aes") {
                    p.add(
                        "crypto.method",
                        "must be \"aes\" (the only supported method)",
                    );
                }
            }
            aes_key = p.secret(crypto, "aes_key", "crypto.aes_key");
            if let Some(k) = &aes_key {
                if !(k.expose().len() == 64 && is_hex(k.expose())) {
                    p.add(
                        "crypto.aes_key",
                        format!("must be 64 hex characters (32 bytes); {FIX}"),
                    );
                }
            }
            aes_iv_seed = p.secret(crypto, "aes_iv_seed", "crypto.aes_iv_seed");
            if let Some(s) = &aes_iv_seed {
                let s = s.expose();
                if s.is_empty() || s.len() % 2 != 0 || !is_hex(s) {
                    p.add(
                        "crypto.aes_iv_seed",
                        format!("must be a non-empty, even-length hex string; {FIX}"),
                    );
                }
            }
        }

        match (version, host, port, base_path, method, aes_key, aes_iv_seed) {
            (
                Some(version),
                Some(host),
                Some(port),
                Some(base_path),
                Some(method),
                Some(aes_key),
                Some(aes_iv_seed),
            ) if p.0.is_empty() => Ok(RaiConfig {
                version,
                server: RaiServer {
                    host,
                    port,
                    base_path,
                },
                crypto: RaiCrypto {
                    method,
                    aes_key,
                    aes_iv_seed,
                },
            }),
            _ => Err(p.into_error()),
        }
    }

    /// A new config with a fresh random 32-byte key and 16-byte IV seed,
    /// `base_path` `/relayapi/`.
    ///
    /// # Panics
    /// Only if the operating system's random number generator fails; there
    /// is no safe fallback for key generation.
    pub fn generate(host: &str, port: u16) -> RaiConfig {
        let key = Zeroizing::new(random_bytes::<32>());
        let seed = Zeroizing::new(random_bytes::<16>());
        RaiConfig {
            version: RAI_VERSION.to_owned(),
            server: RaiServer {
                host: host.to_owned(),
                port,
                base_path: "/relayapi/".to_owned(),
            },
            crypto: RaiCrypto {
                method: "aes".to_owned(),
                aes_key: SecretString::new(hex::encode(*key)),
                aes_iv_seed: SecretString::new(hex::encode(*seed)),
            },
        }
    }

    /// The config as pretty-printed JSON, key material included — this is
    /// what `relayapi gen-config` writes to disk.
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain strings and integers into a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The 32 key bytes of `crypto.aes_key`.
    ///
    /// Parsed configs always hold a valid key. If a caller overwrote the
    /// public field with something that is not 64 hex characters, this
    /// fails closed: it returns a fresh random key, so nothing minted with
    /// it verifies anywhere and nothing verifies under it.
    pub fn aes_key_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        if hex::decode_to_slice(self.crypto.aes_key.expose(), &mut out[..]).is_err() {
            *out = random_bytes::<32>();
        }
        out
    }

    /// `host` (without trailing `/`) + `:` + `port` + `base_path`, e.g.
    /// `http://localhost:8840/relayapi/`. If `host` already carries a port
    /// (`http://localhost:9000`), no second port is added.
    pub fn base_url(&self) -> String {
        let host = self.server.host.trim_end_matches('/');
        let authority = host.split_once("://").map_or(host, |(_, rest)| rest);
        let after_ipv6 = authority
            .rsplit_once(']')
            .map_or(authority, |(_, rest)| rest);
        let base = normalise_base_path(&self.server.base_path);
        if after_ipv6.contains(':') {
            format!("{host}{base}")
        } else {
            format!("{host}:{}{base}", self.server.port)
        }
    }

    /// Lower-case hex SHA-256 of `method + aes_key + aes_iv_seed`, exactly
    /// as written in the file. Identifies the config for legacy tokens.
    pub fn legacy_hash(&self) -> String {
        let c = &self.crypto;
        let mut h = Sha256::new();
        h.update(c.method.as_bytes());
        h.update(c.aes_key.expose().as_bytes());
        h.update(c.aes_iv_seed.expose().as_bytes());
        hex::encode(h.finalize())
    }
}

impl<'de> Deserialize<'de> for RaiConfig {
    /// Runs the same validation as [`RaiConfig::parse`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        RaiConfig::from_value(&value).map_err(serde::de::Error::custom)
    }
}

/// Ensures a leading and a trailing `/` (`""` → `/`, `api` → `/api/`).
fn normalise_base_path(s: &str) -> String {
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        format!("/{trimmed}/")
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[expect(clippy::expect_used, reason = "no safe fallback when the OS RNG fails")]
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("operating system random number generator failed");
    out
}

/// Collected field problems.
#[derive(Default)]
struct Problems(Vec<RaiFieldError>);

impl Problems {
    fn add(&mut self, field: &'static str, problem: impl Into<String>) {
        self.0.push(RaiFieldError {
            field,
            problem: problem.into(),
        });
    }

    fn into_error(self) -> RaiError {
        RaiError::Invalid(self.0)
    }

    fn string(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        field: &'static str,
        hint: &str,
    ) -> Option<String> {
        match obj.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.add(field, hint);
                None
            }
            None => {
                self.add(field, format!("is missing; it {hint}"));
                None
            }
        }
    }

    /// Like `string` but never mentions the value.
    fn secret(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        field: &'static str,
    ) -> Option<SecretString> {
        match obj.get(key) {
            Some(Value::String(s)) => Some(SecretString::new(s.clone())),
            Some(_) => {
                self.add(field, format!("must be a hex string; {FIX}"));
                None
            }
            None => {
                self.add(field, format!("is missing; {FIX}"));
                None
            }
        }
    }

    fn object<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
        field: &'static str,
    ) -> Option<&'a Map<String, Value>> {
        match obj.get(key) {
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                self.add(field, format!("must be a JSON object; {FIX}"));
                None
            }
            None => {
                self.add(field, format!("is missing; {FIX}"));
                None
            }
        }
    }
}

/// Checks a `server.host`: `http://` or `https://` and a host name (an
/// optional `:port`, a trailing `/`), nothing else — the front end's base
/// URL is built from it. The problem, worded for an error message.
pub fn check_host(host: &str) -> Result<(), &'static str> {
    let lower = host.to_ascii_lowercase();
    let Some(authority) = ["http://", "https://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
    else {
        return Err("must start with http:// or https://, \
                    e.g. \"https://relay.example.com\" or \"http://localhost\"");
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() {
        return Err("must name a host after the scheme, e.g. \"http://localhost\"");
    }
    let stray = |b: u8| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || b <= b' ' || b == 0x7f;
    if authority.bytes().any(stray) {
        return Err(
            "must be a scheme and a host only (no path, query, fragment, \
                    user or spaces), e.g. \"https://relay.example.com\"",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn doc(method: &str, key: &str, seed: &str) -> String {
        format!(
            r#"{{"version":"1.0.0","server":{{"host":"http://localhost","port":8840,"base_path":"relayapi"}},
               "crypto":{{"method":"{method}","aes_key":"{key}","aes_iv_seed":"{seed}"}},"future":1}}"#
        )
    }

    #[test]
    fn parses_and_normalises() {
        let c = RaiConfig::parse(&doc("AES", KEY, "00ff")).unwrap();
        assert_eq!(c.server.base_path, "/relayapi/");
        assert_eq!(c.base_url(), "http://localhost:8840/relayapi/");
        assert_eq!(c.aes_key_bytes()[31], 0x1f);
        assert_eq!(c.crypto.method, "AES");
    }

    #[test]
    fn base_url_keeps_an_explicit_port() {
        let mut c = RaiConfig::parse(&doc("aes", KEY, "00")).unwrap();
        c.server.host = "https://relay.example.com:9443/".into();
        assert_eq!(c.base_url(), "https://relay.example.com:9443/relayapi/");
        c.server.host = "http://[::1]".into();
        assert_eq!(c.base_url(), "http://[::1]:8840/relayapi/");
    }

    #[test]
    fn legacy_hash_is_sha256_of_fields_as_written() {
        let c = RaiConfig::parse(&doc("aes", KEY, "00ff")).unwrap();
        let expected = hex::encode(Sha256::digest(format!("aes{KEY}00ff").as_bytes()));
        assert_eq!(c.legacy_hash(), expected);
    }

    #[test]
    fn bad_key_length_names_field_and_hides_key() {
        let short = &KEY[..62];
        let err = RaiConfig::parse(&doc("aes", short, "00"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("crypto.aes_key must be 64 hex characters"),
            "{err}"
        );
        assert!(err.contains("relayapi gen-config"), "{err}");
        assert!(!err.contains(short), "{err}");
    }

    #[test]
    fn bad_key_hex_names_field_and_hides_key() {
        let bad = format!("{}zz", &KEY[..62]);
        let err = RaiConfig::parse(&doc("aes", &bad, "00"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("crypto.aes_key"), "{err}");
        assert!(!err.contains(&bad), "{err}");
    }

    #[test]
    fn wrong_method_and_bad_seed_are_all_reported() {
        let err = RaiConfig::parse(&doc("rsa", KEY, "abc")).unwrap_err();
        let RaiError::Invalid(problems) = &err else {
            panic!("{err:?}")
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, ["crypto.method", "crypto.aes_iv_seed"]);
        assert!(!err.to_string().contains(KEY));
    }

    #[test]
    fn missing_sections_and_bad_port() {
        let err = RaiConfig::parse(
            r#"{"version":"1","server":{"host":"http://h","port":70000,"base_path":"/"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.port must be an integer"), "{err}");
        assert!(err.contains("crypto is missing"), "{err}");
    }

    #[test]
    fn host_must_be_a_scheme_and_a_host() {
        for ok in [
            "http://localhost",
            "https://relay.example.com",
            "HTTPS://relay.example.com/",
            "http://localhost:9000",
            "http://[::1]:8840",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "relay.example.com:443",
            "ftp://a.example",
            "http://",
            "http://a.example/x",
            "http://a.example?x=1",
            "http://a.example#f",
            "http://u@a.example",
            "http://a .example",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
            let json = format!(
                r#"{{"version":"1","server":{{"host":{},"port":1,"base_path":"/"}}}}"#,
                serde_json::Value::from(bad)
            );
            let err = RaiConfig::parse(&json).unwrap_err().to_string();
            assert!(err.contains("server.host must"), "{bad}: {err}");
        }
    }

    #[test]
    fn syntax_error_reports_position_only() {
        let err = RaiConfig::parse(&format!("{{\"aes_key\":\"{KEY}\"")).unwrap_err();
        assert!(matches!(err, RaiError::Syntax { .. }));
        assert!(!err.to_string().contains(KEY));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let c = RaiConfig::parse(&doc("aes", KEY, "a1b2c3d4")).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(KEY) && !dbg.contains("a1b2c3d4"), "{dbg}");
        assert!(dbg.contains("[REDACTED]"));
    }

    #[test]
    fn generate_round_trips_through_parse_and_serde() {
        let c = RaiConfig::generate("http://localhost", 8840);
        assert_eq!(c.crypto.aes_key.expose().len(), 64);
        assert_eq!(c.crypto.aes_iv_seed.expose().len(), 32);
        let json = c.to_json_pretty();
        assert_eq!(RaiConfig::parse(&json).unwrap(), c);
        let via_serde: RaiConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(via_serde, c);
        assert_ne!(
            RaiConfig::generate("http://h", 1).crypto.aes_key,
            c.crypto.aes_key
        );
        assert!(serde_json::from_str::<RaiConfig>(r#"{"version":"1"}"#).is_err());
    }
}
