//! Token claims: parsing (fail closed), canonical serialisation, time
//! validation.
//!
//! * [`Claims::from_json`] accepts exactly the claims in the spec, plus any
//!   `x_*` metadata; any other member, a wrong type, or a duplicate member
//!   name makes the token invalid.
//! * [`Claims::to_json`] writes the canonical byte string every SDK must
//!   reproduce when minting.
//! * [`Claims::validate`] applies the time rules (60 s leeway for `nbf` and
//!   `iat`, none for `exp`).

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::error::TokenError;
use crate::json::{write_string, write_value, UniqueObject};
use crate::rai::random_bytes;
use crate::secret::SecretString;

/// Clock skew tolerated for `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 60;

/// Minimum `jti` length: 22 base64url characters = 128 bits.
pub const MIN_JTI_LEN: usize = 22;

/// Prefix of free-form metadata claims.
pub const EXTRA_PREFIX: &str = "x_";

/// The claims of a v2 token. `Debug` redacts `api_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Unique token id, base64url alphabet, at least 22 characters.
    pub jti: String,
    /// Issued at, UTC seconds.
    pub iat: i64,
    /// Not before, UTC seconds.
    pub nbf: Option<i64>,
    /// Expiry, UTC seconds (exclusive: the token is dead at `exp`).
    pub exp: i64,
    /// Upstream provider name, e.g. `openai`.
    pub provider: String,
    /// Upstream provider API key.
    pub api_key: SecretString,
    /// Maximum number of relayed calls, at least 1.
    pub max_calls: Option<u64>,
    /// The only model the token may use.
    pub model: Option<String>,
    /// Allowed models (non-empty list).
    pub models: Option<Vec<String>>,
    /// Subject: the end user the token was minted for.
    pub sub: Option<String>,
    /// Opaque string for the application (may hold JSON, see
    /// [`Claims::effective_model`]).
    pub ext_info: Option<String>,
    /// `x_*` metadata claims; only keys starting with `x_` are allowed.
    pub extra: BTreeMap<String, Value>,
}

/// 16 random bytes, base64url without padding (22 characters).
///
/// # Panics
/// Only if the operating system's random number generator fails.
pub fn new_jti() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Claims {
    /// Minimal claims for minting: fresh `jti`, `iat = now`,
    /// `exp = now + ttl_secs`. Set optional fields directly or with the
    /// `with_*` methods.
    pub fn new(
        provider: impl Into<String>,
        api_key: impl Into<SecretString>,
        ttl_secs: i64,
        now: i64,
    ) -> Claims {
        Claims {
            jti: new_jti(),
            iat: now,
            nbf: None,
            exp: now.saturating_add(ttl_secs),
            provider: provider.into(),
            api_key: api_key.into(),
            max_calls: None,
            model: None,
            models: None,
            sub: None,
            ext_info: None,
            extra: BTreeMap::new(),
        }
    }

    /// Sets `nbf`.
    #[must_use]
    pub fn with_nbf(mut self, nbf: i64) -> Claims {
        self.nbf = Some(nbf);
        self
    }

    /// Sets `max_calls`.
    #[must_use]
    pub fn with_max_calls(mut self, max_calls: u64) -> Claims {
        self.max_calls = Some(max_calls);
        self
    }

    /// Sets `model`.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Claims {
        self.model = Some(model.into());
        self
    }

    /// Sets `models`.
    #[must_use]
    pub fn with_models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Claims {
        self.models = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `sub`.
    #[must_use]
    pub fn with_sub(mut self, sub: impl Into<String>) -> Claims {
        self.sub = Some(sub.into());
        self
    }

    /// Sets `ext_info`.
    #[must_use]
    pub fn with_ext_info(mut self, ext_info: impl Into<String>) -> Claims {
        self.ext_info = Some(ext_info.into());
        self
    }

    /// Adds an `x_*` metadata claim (other names make minting fail).
    #[must_use]
    pub fn with_extra(mut self, name: impl Into<String>, value: Value) -> Claims {
        self.extra.insert(name.into(), value);
        self
    }

    /// Parses a claims set (the decrypted JWE payload). Fails closed: see
    /// the module docs. Does not look at the clock; see [`Claims::validate`].
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for anything that is not a well-formed claims
    /// object.
    pub fn from_json(bytes: &[u8]) -> Result<Claims, TokenError> {
        let obj = UniqueObject::parse(bytes).ok_or(TokenError::Invalid)?;
        let mut jti = None;
        let mut iat = None;
        let mut nbf = None;
        let mut exp = None;
        let mut provider = None;
        let mut api_key = None;
        let mut max_calls = None;
        let mut model = None;
        let mut models = None;
        let mut sub = None;
        let mut ext_info = None;
        let mut extra = BTreeMap::new();

        for (name, value) in obj.0 {
            match name.as_str() {
                "jti" => jti = Some(jti_value(&value)?),
                "iat" => iat = Some(int(&value)?),
                "nbf" => nbf = Some(int(&value)?),
                "exp" => exp = Some(int(&value)?),
                "provider" => provider = Some(non_empty(value)?),
                "api_key" => api_key = Some(SecretString::new(non_empty(value)?)),
                "max_calls" => max_calls = Some(positive(&value)?),
                "model" => model = Some(non_empty(value)?),
                "models" => models = Some(model_list(value)?),
                "sub" => sub = Some(string(value)?),
                "ext_info" => ext_info = Some(string(value)?),
                _ if name.starts_with(EXTRA_PREFIX) => {
                    extra.insert(name, value);
                }
                _ => return Err(TokenError::Invalid),
            }
        }

        match (jti, iat, exp, provider, api_key) {
            (Some(jti), Some(iat), Some(exp), Some(provider), Some(api_key)) => Ok(Claims {
                jti,
                iat,
                nbf,
                exp,
                provider,
                api_key,
                max_calls,
                model,
                models,
                sub,
                ext_info,
                extra,
            }),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Checks the claims that do not depend on the clock, exactly as
    /// [`Claims::from_json`] would after a round trip. Minting calls this
    /// so it never produces a token the relay would refuse.
    ///
    /// # Errors
    /// [`TokenError::Invalid`].
    pub fn check_structure(&self) -> Result<(), TokenError> {
        let reparsed = Claims::from_json(self.to_json().as_bytes())?;
        if reparsed != *self {
            return Err(TokenError::Invalid);
        }
        self.check_times()
    }

    fn check_times(&self) -> Result<(), TokenError> {
        if self.exp <= self.iat || self.nbf.is_some_and(|nbf| nbf >= self.exp) {
            return Err(TokenError::Invalid);
        }
        Ok(())
    }

    /// Time rules, `now` in UTC seconds:
    /// `exp <= iat` or `nbf >= exp` → `Invalid` (never valid);
    /// `now >= exp` → `Expired` (no leeway);
    /// `nbf > now + 60` or `iat > now + 60` → `NotYetValid`.
    /// (Given the first rule, `Expired` and `NotYetValid` cannot both apply.)
    ///
    /// # Errors
    /// As above.
    pub fn validate(&self, now: i64) -> Result<(), TokenError> {
        self.check_times()?;
        if now >= self.exp {
            return Err(TokenError::Expired);
        }
        let horizon = now.saturating_add(LEEWAY_SECS);
        if self.iat > horizon || self.nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }

    /// `model` if set; otherwise the string `rep_m` of `ext_info` when
    /// `ext_info` is a JSON object (legacy convention). A `rep_m` written
    /// with JSON escapes is not recognised (model names never need them).
    pub fn effective_model(&self) -> Option<&str> {
        if let Some(m) = &self.model {
            return Some(m);
        }
        let ext = self.ext_info.as_deref()?;
        if !ext.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str::<RepM<'_>>(ext).ok()?.rep_m
    }

    /// The canonical claims JSON (see `docs/token-format.md`): compact, keys
    /// in the order `jti, iat, nbf, exp, provider, api_key, max_calls,
    /// model, models, sub, ext_info`, then `x_*` keys in byte order; absent
    /// optionals omitted. Contains the API key: treat as secret.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        let mut first = true;
        let mut key = |out: &mut String, name: &str| {
            out.push_str(if first { "{" } else { "," });
            first = false;
            write_string(out, name);
            out.push(':');
        };
        key(&mut out, "jti");
        write_string(&mut out, &self.jti);
        key(&mut out, "iat");
        out.push_str(&self.iat.to_string());
        if let Some(nbf) = self.nbf {
            key(&mut out, "nbf");
            out.push_str(&nbf.to_string());
        }
        key(&mut out, "exp");
        out.push_str(&self.exp.to_string());
        key(&mut out, "provider");
        write_string(&mut out, &self.provider);
        key(&mut out, "api_key");
        write_string(&mut out, self.api_key.expose());
        if let Some(n) = self.max_calls {
            key(&mut out, "max_calls");
            out.push_str(&n.to_string());
        }
        if let Some(m) = &self.model {
            key(&mut out, "model");
            write_string(&mut out, m);
        }
        if let Some(ms) = &self.models {
            key(&mut out, "models");
            out.push('[');
            for (i, m) in ms.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(&mut out, m);
            }
            out.push(']');
        }
        if let Some(s) = &self.sub {
            key(&mut out, "sub");
            write_string(&mut out, s);
        }
        if let Some(e) = &self.ext_info {
            key(&mut out, "ext_info");
            write_string(&mut out, e);
        }
        // BTreeMap<String, _> iterates in byte order of the keys.
        for (name, value) in &self.extra {
            key(&mut out, name);
            write_value(&mut out, value);
        }
        out.push('}');
        out
    }
}

/// The legacy `ext_info` shape `{"rep_m": "<model>", ...}`.
#[derive(serde::Deserialize)]
struct RepM<'a> {
    #[serde(borrow, default)]
    rep_m: Option<&'a str>,
}

fn int(v: &Value) -> Result<i64, TokenError> {
    // serde_json keeps `1.0` and `1e3` as floats, so they fail here.
    v.as_i64().ok_or(TokenError::Invalid)
}

fn positive(v: &Value) -> Result<u64, TokenError> {
    v.as_u64().filter(|n| *n >= 1).ok_or(TokenError::Invalid)
}

fn string(v: Value) -> Result<String, TokenError> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(TokenError::Invalid),
    }
}

fn non_empty(v: Value) -> Result<String, TokenError> {
    string(v).and_then(|s| {
        if s.is_empty() {
            Err(TokenError::Invalid)
        } else {
            Ok(s)
        }
    })
}

fn jti_value(v: &Value) -> Result<String, TokenError> {
    match v.as_str() {
        Some(s) if s.len() >= MIN_JTI_LEN && is_b64url(s) => Ok(s.to_owned()),
        _ => Err(TokenError::Invalid),
    }
}

fn model_list(v: Value) -> Result<Vec<String>, TokenError> {
    let Value::Array(items) = v else {
        return Err(TokenError::Invalid);
    };
    if items.is_empty() {
        return Err(TokenError::Invalid);
    }
    items.into_iter().map(non_empty).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    const NOW: i64 = 1_700_000_000;
    const JTI: &str = "cmVsYXlhcGktdmVjLTAwMQ";

    fn base() -> String {
        format!(
            r#""jti":"{JTI}","iat":{NOW},"exp":{},"provider":"openai","api_key":"sk-secret-123""#,
            NOW + 3600
        )
    }

    fn parse_with(extra: &str) -> Result<Claims, TokenError> {
        Claims::from_json(format!("{{{}{extra}}}", base()).as_bytes())
    }

    #[test]
    fn minimal_claims_parse() {
        let c = parse_with("").unwrap();
        assert_eq!(c.jti, JTI);
        assert_eq!(c.api_key.expose(), "sk-secret-123");
        assert_eq!(c.to_json(), format!("{{{}}}", base()));
    }

    #[test]
    fn required_claims_are_required() {
        for name in ["jti", "iat", "exp", "provider", "api_key"] {
            let mut v: serde_json::Map<String, Value> =
                serde_json::from_str(&format!("{{{}}}", base())).unwrap();
            v.remove(name);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(
                Claims::from_json(json.as_bytes()),
                Err(TokenError::Invalid),
                "{name}"
            );
        }
    }

    #[test]
    fn wrong_types_and_values_are_invalid() {
        for extra in [
            r#","nbf":1.5"#,
            r#","max_calls":0"#,
            r#","max_calls":-1"#,
            r#","max_calls":"3""#,
            r#","model":"""#,
            r#","model":null"#,
            r#","models":[]"#,
            r#","models":["a",1]"#,
            r#","models":"a""#,
            r#","sub":1"#,
            r#","ext_info":{}"#,
            r#","unknown":1"#,
            r#","X_upper":1"#,
            r#","jti":"dup""#,
        ] {
            assert_eq!(parse_with(extra), Err(TokenError::Invalid), "{extra}");
        }
        let floats = format!(
            r#"{{"jti":"{JTI}","iat":1700000000.0,"exp":1700003600,"provider":"p","api_key":"k"}}"#
        );
        assert_eq!(
            Claims::from_json(floats.as_bytes()),
            Err(TokenError::Invalid)
        );
        assert_eq!(Claims::from_json(b"[]"), Err(TokenError::Invalid));
        assert_eq!(Claims::from_json(b"\xff"), Err(TokenError::Invalid));
    }

    #[test]
    fn jti_must_be_128_bit_base64url() {
        let with_jti = |jti: &str| {
            Claims::from_json(
                format!(r#"{{"jti":"{jti}","iat":1,"exp":2,"provider":"p","api_key":"k"}}"#)
                    .as_bytes(),
            )
        };
        assert!(with_jti(&"a".repeat(22)).is_ok());
        assert!(with_jti(&"-_".repeat(20)).is_ok());
        assert_eq!(with_jti(&"a".repeat(21)), Err(TokenError::Invalid));
        assert_eq!(
            with_jti(&format!("{}+", "a".repeat(22))),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            with_jti(&format!("{}=", "a".repeat(22))),
            Err(TokenError::Invalid)
        );
        assert_eq!(new_jti().len(), 22);
        assert!(with_jti(&new_jti()).is_ok());
    }

    #[test]
    fn x_claims_go_to_extra_and_serialise_sorted() {
        let c = parse_with(r#","x_b":{"z":1,"a":[true,null]},"x_a":"v""#).unwrap();
        assert_eq!(c.extra.len(), 2);
        assert!(c
            .to_json()
            .ends_with(r#""x_a":"v","x_b":{"a":[true,null],"z":1}}"#));
    }

    #[test]
    fn canonical_order_with_all_claims() {
        let c = Claims {
            jti: JTI.into(),
            iat: 10,
            nbf: Some(11),
            exp: 20,
            provider: "p".into(),
            api_key: "k".into(),
            max_calls: Some(3),
            model: Some("m".into()),
            models: Some(vec!["m".into(), "n".into()]),
            sub: Some("s\n\"é".into()),
            ext_info: Some("{}".into()),
            extra: BTreeMap::from([
                ("x_z".into(), Value::from(1)),
                ("x_a".into(), Value::from("a")),
            ]),
        };
        assert_eq!(
            c.to_json(),
            format!(
                r#"{{"jti":"{JTI}","iat":10,"nbf":11,"exp":20,"provider":"p","api_key":"k","max_calls":3,"model":"m","models":["m","n"],"sub":"s\n\"é","ext_info":"{{}}","x_a":"a","x_z":1}}"#
            )
        );
        assert_eq!(Claims::from_json(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn time_rules() {
        let c = Claims::new("p", "k", 100, NOW);
        assert_eq!(c.validate(NOW), Ok(()));
        assert_eq!(c.validate(NOW + 99), Ok(()));
        assert_eq!(c.validate(NOW + 100), Err(TokenError::Expired));
        // iat may be up to 60 s ahead of our clock.
        assert_eq!(c.validate(NOW - 60), Ok(()));
        assert_eq!(c.validate(NOW - 61), Err(TokenError::NotYetValid));

        let nbf = Claims::new("p", "k", 1000, NOW).with_nbf(NOW + 500);
        assert_eq!(nbf.validate(NOW + 440), Ok(()));
        assert_eq!(nbf.validate(NOW + 439), Err(TokenError::NotYetValid));

        assert_eq!(
            Claims::new("p", "k", 0, NOW).validate(NOW - 10),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            Claims::new("p", "k", -5, NOW).validate(NOW - 10),
            Err(TokenError::Invalid)
        );
        let nbf_after_exp = Claims::new("p", "k", 10, NOW).with_nbf(NOW + 10);
        assert_eq!(nbf_after_exp.validate(NOW), Err(TokenError::Invalid));
        assert_eq!(
            Claims::new("p", "k", 10, i64::MAX - 5).validate(i64::MAX),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn effective_model_prefers_model_then_rep_m() {
        let c = Claims::new("p", "k", 10, NOW);
        assert_eq!(c.effective_model(), None);
        let c = c.with_ext_info(r#"{"other":1,"rep_m":"gpt-4o-mini"}"#);
        assert_eq!(c.effective_model(), Some("gpt-4o-mini"));
        assert_eq!(c.clone().with_model("o3").effective_model(), Some("o3"));
        for ext in [
            r#"["gpt"]"#,
            r#"{"rep_m":1}"#,
            "not json",
            r#"{"rep_m":"a\u0062"}"#,
        ] {
            assert_eq!(
                c.clone().with_ext_info(ext).effective_model(),
                None,
                "{ext}"
            );
        }
    }

    #[test]
    fn debug_redacts_api_key() {
        let c = Claims::new("openai", "sk-live-do-not-print", 10, NOW);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-live-do-not-print"), "{dbg}");
        assert!(dbg.contains("[REDACTED]"));
    }
}
