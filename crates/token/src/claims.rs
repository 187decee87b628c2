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
//!
//! The policy claims (`origins`, `ips`, `paths`, `methods`, `rps`, `burst`,
//! `concurrency`, `max_tokens`, `max_body_bytes`) are parsed here with the
//! same fail-closed rules; their grammar and matching live in
//! [`crate::scope`]. The upstream credential is either the provider key
//! itself (`api_key`) or the name of a key held by the relay (`key_ref`):
//! [`Credential`] makes "exactly one of the two" a property of the type.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::error::TokenError;
use crate::json::{last_string_member, write_string, write_value, UniqueObject};
use crate::rai::random_bytes;
use crate::scope::{self, IpNetwork, OriginPattern};
use crate::secret::SecretString;

/// Clock skew tolerated for `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 60;

/// Minimum `jti` length: 22 base64url characters = 128 bits.
pub const MIN_JTI_LEN: usize = 22;

/// Maximum `jti` length: what the relay's stores, its admin API and its
/// log schemas keep per token id.
pub const MAX_JTI_LEN: usize = 64;

/// Prefix of free-form metadata claims.
pub const EXTRA_PREFIX: &str = "x_";

/// How the relay authenticates to the provider for this token: exactly one
/// of the `api_key` and `key_ref` claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `api_key`: the provider key travels (encrypted) in the token.
    ApiKey(SecretString),
    /// `key_ref`: the name of a credential in the relay's config; the token
    /// carries no provider key at all.
    KeyRef(String),
}

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
    /// The upstream credential: `api_key` or `key_ref`.
    pub credential: Credential,
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
    /// Allowed `Origin`s (exact or `*.domain` wildcards), as minted; see
    /// [`OriginPattern`].
    pub origins: Option<Vec<String>>,
    /// Allowed client networks (addresses or CIDR), as minted; see
    /// [`IpNetwork`].
    pub ips: Option<Vec<String>>,
    /// Allowed path prefixes relative to the base path (no leading `/`),
    /// matched on whole segments; see [`scope::path_has_prefix`].
    pub paths: Option<Vec<String>>,
    /// Allowed HTTP methods, upper-case.
    pub methods: Option<Vec<String>>,
    /// Per-token rate limit, requests per second, at least 1.
    pub rps: Option<u64>,
    /// Burst for `rps` (only with `rps`; default = `rps`), at least 1.
    pub burst: Option<u64>,
    /// Maximum in-flight requests for this token, at least 1.
    pub concurrency: Option<u64>,
    /// Budget in LLM tokens (prompt + completion over all calls), at least 1.
    pub max_tokens: Option<u64>,
    /// Maximum request body size in bytes, at least 1.
    pub max_body_bytes: Option<u64>,
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
        Claims::with_credential(provider, Credential::ApiKey(api_key.into()), ttl_secs, now)
    }

    /// Like [`Claims::new`], for a token that names a credential held in the
    /// relay's config (`key_ref`) instead of carrying a provider key.
    pub fn new_key_ref(
        provider: impl Into<String>,
        key_ref: impl Into<String>,
        ttl_secs: i64,
        now: i64,
    ) -> Claims {
        Claims::with_credential(provider, Credential::KeyRef(key_ref.into()), ttl_secs, now)
    }

    fn with_credential(
        provider: impl Into<String>,
        credential: Credential,
        ttl_secs: i64,
        now: i64,
    ) -> Claims {
        Claims::from_required(
            new_jti(),
            now,
            now.saturating_add(ttl_secs),
            provider,
            credential,
        )
    }

    /// The required claims as given and no optional claim: for code that
    /// builds claims from another token format (the relay's legacy tokens).
    /// Nothing is checked here; [`Claims::check_structure`] does.
    pub fn from_required(
        jti: impl Into<String>,
        iat: i64,
        exp: i64,
        provider: impl Into<String>,
        credential: Credential,
    ) -> Claims {
        Claims {
            jti: jti.into(),
            iat,
            nbf: None,
            exp,
            provider: provider.into(),
            credential,
            max_calls: None,
            model: None,
            models: None,
            sub: None,
            ext_info: None,
            origins: None,
            ips: None,
            paths: None,
            methods: None,
            rps: None,
            burst: None,
            concurrency: None,
            max_tokens: None,
            max_body_bytes: None,
            extra: BTreeMap::new(),
        }
    }

    /// The provider key carried in the token (`api_key`), if any.
    pub fn api_key(&self) -> Option<&SecretString> {
        match &self.credential {
            Credential::ApiKey(key) => Some(key),
            Credential::KeyRef(_) => None,
        }
    }

    /// The name of the relay-held credential (`key_ref`), if any.
    pub fn key_ref(&self) -> Option<&str> {
        match &self.credential {
            Credential::KeyRef(name) => Some(name),
            Credential::ApiKey(_) => None,
        }
    }

    /// Replaces the credential with `api_key`.
    #[must_use]
    pub fn with_api_key(mut self, api_key: impl Into<SecretString>) -> Claims {
        self.credential = Credential::ApiKey(api_key.into());
        self
    }

    /// Replaces the credential with `key_ref` (the token then carries no
    /// provider key).
    #[must_use]
    pub fn with_key_ref(mut self, key_ref: impl Into<String>) -> Claims {
        self.credential = Credential::KeyRef(key_ref.into());
        self
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

    /// Sets `origins` (exact origins or `*.domain` wildcards).
    #[must_use]
    pub fn with_origins<S: Into<String>>(mut self, origins: impl IntoIterator<Item = S>) -> Claims {
        self.origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `ips` (addresses or CIDR networks).
    #[must_use]
    pub fn with_ips<S: Into<String>>(mut self, ips: impl IntoIterator<Item = S>) -> Claims {
        self.ips = Some(ips.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `paths` (prefixes relative to the base path, no leading `/`).
    #[must_use]
    pub fn with_paths<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Claims {
        self.paths = Some(paths.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `methods` (upper-case).
    #[must_use]
    pub fn with_methods<S: Into<String>>(mut self, methods: impl IntoIterator<Item = S>) -> Claims {
        self.methods = Some(methods.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `rps` and, if given, `burst`.
    #[must_use]
    pub fn with_rps(mut self, rps: u64, burst: Option<u64>) -> Claims {
        self.rps = Some(rps);
        self.burst = burst;
        self
    }

    /// Sets `concurrency`.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: u64) -> Claims {
        self.concurrency = Some(concurrency);
        self
    }

    /// Sets `max_tokens` (the LLM-token budget).
    #[must_use]
    pub fn with_max_tokens(mut self, max_tokens: u64) -> Claims {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets `max_body_bytes`.
    #[must_use]
    pub fn with_max_body_bytes(mut self, max_body_bytes: u64) -> Claims {
        self.max_body_bytes = Some(max_body_bytes);
        self
    }

    /// The burst of the per-token rate limit: `burst`, else `rps`.
    pub fn effective_burst(&self) -> Option<u64> {
        self.burst.or(self.rps)
    }

    /// True when the token has no `origins` claim or `origin` matches one
    /// of its patterns.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins
            .as_deref()
            .is_none_or(|o| scope::origin_allowed(o, origin))
    }

    /// True when the token has no `ips` claim or `ip` is in one of its
    /// networks.
    pub fn allows_ip(&self, ip: std::net::IpAddr) -> bool {
        self.ips.as_deref().is_none_or(|n| scope::ip_allowed(n, ip))
    }

    /// True when the token has no `paths` claim or the *normalised*
    /// request path (relative to the base path, no leading `/`) has one of
    /// its prefixes on whole segments.
    pub fn allows_path(&self, normalised_path: &str) -> bool {
        self.paths
            .as_deref()
            .is_none_or(|p| scope::path_allowed(p, normalised_path))
    }

    /// True when the token has no `methods` claim or lists `method`.
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods
            .as_deref()
            .is_none_or(|m| m.iter().any(|x| x == method))
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
        let mut key_ref = None;
        let mut c = Claims::from_required("", 0, 0, "", Credential::KeyRef(String::new()));

        for (name, value) in obj.0 {
            match name.as_str() {
                "jti" => jti = Some(jti_value(&value)?),
                "iat" => iat = Some(int(&value)?),
                "nbf" => nbf = Some(int(&value)?),
                "exp" => exp = Some(int(&value)?),
                "provider" => provider = Some(non_empty(value)?),
                "api_key" => api_key = Some(SecretString::new(non_empty(value)?)),
                "key_ref" => key_ref = Some(non_empty(value)?),
                "max_calls" => c.max_calls = Some(positive(&value)?),
                "model" => c.model = Some(non_empty(value)?),
                "models" => c.models = Some(model_list(value)?),
                "sub" => c.sub = Some(string(value)?),
                "ext_info" => c.ext_info = Some(string(value)?),
                "origins" => {
                    c.origins = Some(scope_list(value, |s| OriginPattern::parse(s).is_some())?);
                }
                "ips" => c.ips = Some(scope_list(value, |s| IpNetwork::parse(s).is_some())?),
                "paths" => c.paths = Some(scope_list(value, scope::is_path_prefix)?),
                "methods" => c.methods = Some(scope_list(value, scope::is_method)?),
                "rps" => c.rps = Some(positive(&value)?),
                "burst" => c.burst = Some(positive(&value)?),
                "concurrency" => c.concurrency = Some(positive(&value)?),
                "max_tokens" => c.max_tokens = Some(positive(&value)?),
                "max_body_bytes" => c.max_body_bytes = Some(positive(&value)?),
                _ if name.starts_with(EXTRA_PREFIX) => {
                    c.extra.insert(name, value);
                }
                _ => return Err(TokenError::Invalid),
            }
        }

        // `burst` shapes the `rps` limit; alone it means nothing.
        if c.burst.is_some() && c.rps.is_none() {
            return Err(TokenError::Invalid);
        }
        c.credential = match (api_key, key_ref) {
            (Some(key), None) => Credential::ApiKey(key),
            (None, Some(name)) => Credential::KeyRef(name),
            _ => return Err(TokenError::Invalid),
        };
        match (jti, iat, exp, provider) {
            (Some(jti), Some(iat), Some(exp), Some(provider)) => Ok(Claims {
                jti,
                iat,
                nbf,
                exp,
                provider,
                ..c
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

    /// The one model the token allows: `model` if set; otherwise the
    /// `rep_m` of `ext_info` (legacy convention), read as the SDKs'
    /// `JSON.parse` / `json.loads` read it (`docs/token-format.md` §4):
    /// `ext_info` is one JSON object; the last top-level `rep_m` counts,
    /// its escapes decoded (`\/`, `\u00e8`), if it is a string. Anything
    /// else (not JSON, not an object, a last `rep_m` that is no string)
    /// names no model. Borrowed unless the model was escaped.
    pub fn effective_model(&self) -> Option<Cow<'_, str>> {
        if let Some(m) = &self.model {
            return Some(Cow::Borrowed(m));
        }
        let ext = self.ext_info.as_deref()?;
        // Most `ext_info` is no JSON object: skip the parse.
        if !ext
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return None;
        }
        last_string_member(ext, "rep_m")
    }

    /// The canonical claims JSON (see `docs/token-format.md`): compact, keys
    /// in the order `jti, iat, nbf, exp, provider, api_key, key_ref,
    /// max_calls, model, models, sub, ext_info, origins, ips, paths,
    /// methods, rps, burst, concurrency, max_tokens, max_body_bytes`, then
    /// `x_*` keys in byte order; absent optionals omitted; array items in
    /// the order given. Contains the API key: treat as secret.
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
        match &self.credential {
            Credential::ApiKey(api_key) => {
                key(&mut out, "api_key");
                write_string(&mut out, api_key.expose());
            }
            Credential::KeyRef(name) => {
                key(&mut out, "key_ref");
                write_string(&mut out, name);
            }
        }
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
            write_strings(&mut out, ms);
        }
        if let Some(s) = &self.sub {
            key(&mut out, "sub");
            write_string(&mut out, s);
        }
        if let Some(e) = &self.ext_info {
            key(&mut out, "ext_info");
            write_string(&mut out, e);
        }
        for (name, list) in [
            ("origins", &self.origins),
            ("ips", &self.ips),
            ("paths", &self.paths),
            ("methods", &self.methods),
        ] {
            if let Some(list) = list {
                key(&mut out, name);
                write_strings(&mut out, list);
            }
        }
        for (name, n) in [
            ("rps", self.rps),
            ("burst", self.burst),
            ("concurrency", self.concurrency),
            ("max_tokens", self.max_tokens),
            ("max_body_bytes", self.max_body_bytes),
        ] {
            if let Some(n) = n {
                key(&mut out, name);
                out.push_str(&n.to_string());
            }
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
        Some(s) if (MIN_JTI_LEN..=MAX_JTI_LEN).contains(&s.len()) && is_b64url(s) => {
            Ok(s.to_owned())
        }
        _ => Err(TokenError::Invalid),
    }
}

fn write_strings(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, item);
    }
    out.push(']');
}

/// A policy list: a non-empty array of distinct strings (byte-wise), each
/// accepted by `valid`. Order is kept (it is part of the canonical form).
fn scope_list(v: Value, valid: impl Fn(&str) -> bool) -> Result<Vec<String>, TokenError> {
    let Value::Array(items) = v else {
        return Err(TokenError::Invalid);
    };
    if items.is_empty() {
        return Err(TokenError::Invalid);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = non_empty(item)?;
        if !valid(&s) || !seen.insert(s.clone()) {
            return Err(TokenError::Invalid);
        }
        out.push(s);
    }
    Ok(out)
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
        assert_eq!(c.api_key().unwrap().expose(), "sk-secret-123");
        assert_eq!(c.key_ref(), None);
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
            credential: Credential::ApiKey("k".into()),
            max_calls: Some(3),
            model: Some("m".into()),
            models: Some(vec!["m".into(), "n".into()]),
            sub: Some("s\n\"é".into()),
            ext_info: Some("{}".into()),
            origins: Some(vec!["https://b.example".into(), "*.a.example".into()]),
            ips: Some(vec!["10.0.0.0/8".into(), "::1".into()]),
            paths: Some(vec!["chat/completions".into(), "models".into()]),
            methods: Some(vec!["POST".into(), "GET".into()]),
            rps: Some(5),
            burst: Some(10),
            concurrency: Some(2),
            max_tokens: Some(1000),
            max_body_bytes: Some(65536),
            extra: BTreeMap::from([
                ("x_z".into(), Value::from(1)),
                ("x_a".into(), Value::from("a")),
            ]),
        };
        assert_eq!(
            c.to_json(),
            format!(
                r#"{{"jti":"{JTI}","iat":10,"nbf":11,"exp":20,"provider":"p","api_key":"k","max_calls":3,"model":"m","models":["m","n"],"sub":"s\n\"é","ext_info":"{{}}","origins":["https://b.example","*.a.example"],"ips":["10.0.0.0/8","::1"],"paths":["chat/completions","models"],"methods":["POST","GET"],"rps":5,"burst":10,"concurrency":2,"max_tokens":1000,"max_body_bytes":65536,"x_a":"a","x_z":1}}"#
            )
        );
        assert_eq!(Claims::from_json(c.to_json().as_bytes()).unwrap(), c);
        assert_eq!(c.check_structure(), Ok(()));

        let r = c.with_key_ref("team-openai");
        assert!(r
            .to_json()
            .contains(r#""provider":"p","key_ref":"team-openai","max_calls":3"#));
        assert!(!r.to_json().contains("api_key"));
        assert_eq!(Claims::from_json(r.to_json().as_bytes()).unwrap(), r);
    }

    #[test]
    fn exactly_one_of_api_key_and_key_ref() {
        let no_key = format!(
            r#""jti":"{JTI}","iat":{NOW},"exp":{},"provider":"openai""#,
            NOW + 1
        );
        let with = |extra: &str| Claims::from_json(format!("{{{no_key}{extra}}}").as_bytes());
        let c = with(r#","key_ref":"team""#).unwrap();
        assert_eq!(c.key_ref(), Some("team"));
        assert!(c.api_key().is_none());
        assert_eq!(c.credential, Credential::KeyRef("team".into()));
        assert_eq!(with(""), Err(TokenError::Invalid));
        assert_eq!(
            with(r#","key_ref":"team","api_key":"sk""#),
            Err(TokenError::Invalid)
        );
        assert_eq!(with(r#","key_ref":"""#), Err(TokenError::Invalid));
        assert_eq!(with(r#","key_ref":1"#), Err(TokenError::Invalid));
        assert_eq!(with(r#","key_ref":null"#), Err(TokenError::Invalid));

        let minted = Claims::new_key_ref("openai", "team", 60, NOW);
        assert_eq!(minted.check_structure(), Ok(()));
        assert_eq!(
            Claims::new_key_ref("openai", "", 60, NOW).check_structure(),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            minted
                .with_api_key("sk-x")
                .api_key()
                .map(SecretString::expose),
            Some("sk-x")
        );
    }

    #[test]
    fn policy_claims_parse() {
        let c = parse_with(
            r#","origins":["https://app.example.com","*.example.org"],"ips":["192.0.2.0/24","2001:db8::/32"],"paths":["chat/completions"],"methods":["POST"],"rps":2,"concurrency":3,"max_tokens":1000,"max_body_bytes":1024"#,
        )
        .unwrap();
        assert_eq!(c.rps, Some(2));
        assert_eq!(c.burst, None);
        assert_eq!(c.effective_burst(), Some(2));
        assert_eq!(c.concurrency, Some(3));
        assert_eq!(c.max_tokens, Some(1000));
        assert_eq!(c.max_body_bytes, Some(1024));
        assert!(c.allows_origin("https://APP.example.com"));
        assert!(c.allows_origin("https://x.example.org"));
        assert!(!c.allows_origin("https://example.org"));
        assert!(c.allows_ip("192.0.2.9".parse().unwrap()));
        assert!(!c.allows_ip("198.51.100.1".parse().unwrap()));
        assert!(c.allows_path("chat/completions"));
        assert!(!c.allows_path("embeddings"));
        assert!(c.allows_method("POST"));
        assert!(!c.allows_method("GET"));
        assert_eq!(
            parse_with(r#","rps":2,"burst":5"#)
                .unwrap()
                .effective_burst(),
            Some(5)
        );

        // Without the claims everything is allowed, as before.
        let plain = parse_with("").unwrap();
        assert!(plain.allows_origin("https://anything"));
        assert!(plain.allows_ip("203.0.113.1".parse().unwrap()));
        assert!(plain.allows_path("any/path"));
        assert!(plain.allows_method("DELETE"));
        assert_eq!(plain.effective_burst(), None);
    }

    #[test]
    fn policy_claims_fail_closed() {
        for extra in [
            r#","origins":[]"#,
            r#","origins":"https://a.example""#,
            r#","origins":[""]"#,
            r#","origins":["https://a.example/"]"#,
            r#","origins":["https://a.example","https://a.example"]"#,
            r#","origins":[1]"#,
            r#","origins":null"#,
            r#","ips":[]"#,
            r#","ips":["10.0.0.0/33"]"#,
            r#","ips":["10.0.0.1/8"]"#,
            r#","ips":["not-an-ip"]"#,
            r#","ips":["::1","::1"]"#,
            r#","paths":[]"#,
            r#","paths":["/chat/completions"]"#,
            r#","paths":["chat/../admin"]"#,
            r#","paths":["chat/%2e%2e"]"#,
            r#","paths":["chat/"]"#,
            r#","paths":["a","a"]"#,
            r#","methods":[]"#,
            r#","methods":["post"]"#,
            r#","methods":["POST","POST"]"#,
            r#","methods":["GET "]"#,
            r#","rps":0"#,
            r#","rps":-1"#,
            r#","rps":1.5"#,
            r#","rps":"2""#,
            r#","burst":3"#,
            r#","rps":1,"burst":0"#,
            r#","concurrency":0"#,
            r#","concurrency":true"#,
            r#","max_tokens":0"#,
            r#","max_tokens":1e3"#,
            r#","max_body_bytes":0"#,
            r#","max_body_bytes":18446744073709551616"#,
        ] {
            assert_eq!(parse_with(extra), Err(TokenError::Invalid), "{extra}");
        }
        // The builders cannot mint what the parser refuses.
        let c = Claims::new("p", "k", 10, NOW);
        for bad in [
            c.clone().with_methods(["get"]),
            c.clone().with_origins(Vec::<String>::new()),
            c.clone().with_ips(["10.0.0.0/8", "10.0.0.0/8"]),
            c.clone().with_rps(0, None),
            Claims {
                burst: Some(2),
                ..c.clone()
            },
        ] {
            assert_eq!(
                bad.check_structure(),
                Err(TokenError::Invalid),
                "{}",
                bad.to_json()
            );
        }
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
        assert_eq!(c.effective_model().as_deref(), Some("gpt-4o-mini"));
        assert_eq!(
            c.clone().with_model("o3").effective_model().as_deref(),
            Some("o3")
        );
        for ext in [
            r#"["gpt"]"#,
            r#"{"rep_m":1}"#,
            r#"{"rep_m":null}"#,
            r#"{"rep_m":["m"]}"#,
            r#"{"x":{"rep_m":"nested"}}"#,
            r#"{"REP_M":"other case"}"#,
            "not json",
            "{not json",
            "",
        ] {
            assert_eq!(
                c.clone().with_ext_info(ext).effective_model(),
                None,
                "{ext}"
            );
        }
    }

    /// What JSON.parse, Python's json.loads and Go's encoding/json read,
    /// the relay must read too: a `rep_m` it missed left the token free to
    /// use any model while the SDKs reported one.
    #[test]
    fn rep_m_is_read_as_json_parsers_read_it() {
        let c = Claims::new("p", "k", 10, NOW);
        let model = |ext: &str| {
            c.clone()
                .with_ext_info(ext)
                .effective_model()
                .map(String::from)
        };
        for (ext, want) in [
            // PHP's json_encode escapes '/'.
            (r#"{"rep_m":"meta-llama\/Llama-3"}"#, "meta-llama/Llama-3"),
            // Python's json.dumps (ensure_ascii, default separators).
            (r#"{"rep_m": "mod\u00e8le-\ud83d\ude80"}"#, "modèle-🚀"),
            (r#"{"rep_m":"a\u0062"}"#, "ab"),
            // A member name may be escaped too.
            (r#"{"rep\u005fm":"escaped-name"}"#, "escaped-name"),
            // Named twice: the last one wins.
            (r#"{"rep_m":"first","rep_m":"last"}"#, "last"),
            (r#"{"rep_m":1,"x":0,"rep_m":"last"}"#, "last"),
            // JSON whitespace around the object.
            (" \t\r\n{ \"rep_m\" : \"m\" }\n", "m"),
            // What serde_json's strings cannot hold elsewhere in the object
            // (a lone surrogate), or nesting past its recursion limit, does
            // not hide the model.
            (r#"{"note":"\ud800","rep_m":"m"}"#, "m"),
            (r#"{"\udc00":1,"rep_m":"m"}"#, "m"),
            (r#"{"big":1e400,"rep_m":"m"}"#, "m"),
        ] {
            assert_eq!(model(ext).as_deref(), Some(want), "{ext}");
        }
        let deep = format!(
            r#"{{"x":{}{},"rep_m":"m"}}"#,
            "[".repeat(500),
            "]".repeat(500)
        );
        assert_eq!(model(&deep).as_deref(), Some("m"));
        // A lone surrogate in `rep_m` itself (JSON.parse keeps it; a Rust
        // string cannot): still a model, one no provider serves.
        let lone = model(r#"{"rep_m":"gpt\ud800"}"#).unwrap();
        assert!(
            lone.starts_with("gpt") && lone.contains('\u{fffd}'),
            "{lone:?}"
        );
        // The last `rep_m` decides even when it is no string.
        for ext in [
            r#"{"rep_m":"first","rep_m":null}"#,
            r#"{"rep_m":"first","rep_m":2}"#,
            // Not JSON (as in every SDK): no model.
            r#"{"rep_m":"m","x":NaN}"#,
            r#"{"rep_m":"m",}"#,
            r#"{"rep_m":"m"} trailing"#,
            r#"{"rep_m":"m""#,
            "\u{feff}{\"rep_m\":\"m\"}",
        ] {
            assert_eq!(model(ext), None, "{ext}");
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
