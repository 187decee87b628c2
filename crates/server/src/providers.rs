//! The provider registry: where each provider lives and how it wants its key.
//!
//! Built-in entries come from `providers.json`, compiled into the binary; the
//! server config's `providers` section overrides fields of an entry or adds
//! new ones. A token only ever *names* an entry (by id or alias): a token can
//! never point the relay at a URL of its choosing.
//!
//! Each entry's `base_url` is the default base URL of that provider's
//! official SDK, so a front end swaps that SDK's `baseURL` for the relay URL
//! and every path the SDK appends maps 1:1 onto the provider.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};

/// How a provider expects its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI and most compatible APIs).
    #[serde(rename = "bearer")]
    Bearer,
    /// `x-api-key: KEY` (Anthropic).
    #[serde(rename = "x-api-key")]
    XApiKey,
    /// `x-goog-api-key: KEY` (Gemini).
    #[serde(rename = "x-goog-api-key")]
    XGoogApiKey,
    /// `api-key: KEY` (Azure OpenAI).
    #[serde(rename = "api-key")]
    ApiKey,
}

impl AuthStyle {
    pub fn header_name(self) -> HeaderName {
        match self {
            AuthStyle::Bearer => http::header::AUTHORIZATION,
            AuthStyle::XApiKey => HeaderName::from_static("x-api-key"),
            AuthStyle::XGoogApiKey => HeaderName::from_static("x-goog-api-key"),
            AuthStyle::ApiKey => HeaderName::from_static("api-key"),
        }
    }

    /// The header value carrying `key`, marked sensitive so it is never
    /// printed by `Debug` of the request.
    pub fn header_value(self, key: &str) -> Option<HeaderValue> {
        let mut v = match self {
            AuthStyle::Bearer => {
                // One allocation, no formatting machinery: this runs per request.
                let mut value = bytes::BytesMut::with_capacity(7 + key.len());
                value.extend_from_slice(b"Bearer ");
                value.extend_from_slice(key.as_bytes());
                HeaderValue::from_maybe_shared(value.freeze()).ok()?
            }
            _ => HeaderValue::from_str(key).ok()?,
        };
        v.set_sensitive(true);
        Some(v)
    }
}

/// Azure OpenAI addresses deployments, and wants an `api-version` on every call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureSettings {
    /// Fills `{resource}` in the base URL.
    pub resource: Option<String>,
    /// Prefixes `deployments/<name>/` when the client path has none (plain OpenAI SDKs).
    pub deployment: Option<String>,
    /// Added as `api-version` when the client sent none.
    pub api_version: Option<String>,
}

/// One entry as written in `providers.json` or in the server config. In the
/// config every field is optional: present fields replace the built-in ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderOverride {
    pub base_url: Option<String>,
    pub auth: Option<AuthStyle>,
    pub aliases: Option<Vec<String>>,
    pub default_headers: Option<BTreeMap<String, String>>,
    pub azure: Option<AzureSettings>,
}

#[derive(Deserialize)]
struct BuiltinEntry {
    id: String,
    #[serde(flatten)]
    fields: ProviderOverride,
}

/// A resolved provider, ready for the hot path.
#[derive(Debug)]
pub struct Provider {
    pub id: String,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// True when `base_url` ends in `/v1` (then a client path `v1/...` is de-duplicated).
    pub base_ends_in_v1: bool,
    /// The base URL's path without its leading `/`, plus `/` (`v1/`,
    /// Groq's `openai/v1/`, Azure's `openai/`); empty for a bare host. See
    /// [`Provider::local_path`].
    base_prefix: String,
    pub auth: AuthStyle,
    pub default_headers: Vec<(HeaderName, HeaderValue)>,
    pub azure: Option<AzureSettings>,
    /// False while the base URL still has a `{placeholder}` (e.g. Azure without a resource).
    pub configured: bool,
    /// The `Host` header for every upstream request (computed once).
    pub host: Option<HeaderValue>,
    /// `base_url` split once: its scheme and authority (reused for every
    /// request's URI, so only the path is parsed per request) and its path
    /// without a trailing slash (`/v1`, or empty). `None` when `base_url`
    /// is not an absolute URL: then no request can be forwarded.
    base: Option<(Scheme, Authority, String)>,
}

impl Provider {
    /// A provider at `base_url` (a trailing slash is ignored).
    fn at(
        id: String,
        base_url: &str,
        auth: AuthStyle,
        default_headers: Vec<(HeaderName, HeaderValue)>,
        azure: Option<AzureSettings>,
    ) -> Provider {
        let base_url = base_url.trim_end_matches('/').to_string();
        let parsed: Option<Uri> = base_url.parse().ok();
        let base = parsed.as_ref().and_then(|uri| {
            let path = uri.path().trim_end_matches('/').to_string();
            Some((uri.scheme()?.clone(), uri.authority()?.clone(), path))
        });
        let base_prefix = match base.as_ref().map(|(_, _, p)| p.trim_matches('/')) {
            Some(p) if !p.is_empty() => format!("{p}/"),
            _ => String::new(),
        };
        Provider {
            id,
            base_ends_in_v1: base_url.ends_with("/v1"),
            base_prefix,
            configured: !base_url.contains('{'),
            host: parsed.as_ref().and_then(host_header),
            base,
            base_url,
            auth,
            default_headers,
            azure,
        }
    }

    /// The upstream URI for the client's `rest` path (after base path and
    /// token) and query string (credentials already removed); `None` when
    /// the path is not one a URI may carry.
    pub fn upstream_uri(&self, rest: &str, query: &str) -> Option<Uri> {
        let (scheme, authority, base_path) = self.base.as_ref()?;
        // From the String itself: its buffer becomes the path's, no copy.
        let path = PathAndQuery::try_from(self.upstream_path(base_path, rest, query)).ok()?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).ok()
    }

    /// The configured Azure deployment, when it will be put in front of
    /// `rest` (a path naming its own `deployments/<name>/` keeps that one).
    pub fn default_deployment(&self, rest: &str) -> Option<&str> {
        let dep = self.azure.as_ref()?.deployment.as_deref()?;
        (!rest.trim_start_matches('/').starts_with("deployments/")).then_some(dep)
    }

    /// The client's path relative to the base URL (what `paths` scopes, the
    /// model policy and the upstream URI see). An official SDK whose default
    /// base URL is the provider's bare host puts the base URL's path in
    /// front of every path (Groq's `openai/v1/chat/completions`, Mistral's
    /// `v1/…`, `AzureOpenAI(azure_endpoint=…)`'s `openai/deployments/…`):
    /// that copy is dropped, once, as is a `v1/` in front of the path when
    /// the base URL ends in `/v1`. Apply it exactly once per request.
    pub fn local_path<'a>(&self, rest: &'a str) -> &'a str {
        let rest = rest.trim_start_matches('/');
        let strip = |prefix: &str| {
            rest.strip_prefix(prefix)
                .or_else(|| (rest == &prefix[..prefix.len() - 1]).then_some(""))
        };
        if !self.base_prefix.is_empty() {
            if let Some(local) = strip(&self.base_prefix) {
                return local;
            }
        }
        if self.base_ends_in_v1 {
            if let Some(local) = strip("v1/") {
                return local;
            }
        }
        rest
    }

    /// `base_path` + the client's local path ([`Provider::local_path`]) and
    /// query as the provider wants them (Azure's deployment and
    /// `api-version` added).
    fn upstream_path(&self, base_path: &str, rest: &str, query: &str) -> String {
        let rest = rest.trim_start_matches('/');
        let mut url = String::with_capacity(base_path.len() + rest.len() + query.len() + 48);
        url.push_str(base_path);
        url.push('/');
        if let Some(dep) = self.default_deployment(rest) {
            url.push_str("deployments/");
            url.push_str(dep);
            url.push('/');
        }
        url.push_str(rest);
        let mut sep = '?';
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
            sep = '&';
        }
        if let Some(version) = self.azure.as_ref().and_then(|a| a.api_version.as_deref()) {
            let has_version = query
                .split('&')
                .any(|kv| kv.split('=').next() == Some("api-version"));
            if !has_version {
                url.push(sep);
                url.push_str("api-version=");
                url.push_str(version);
            }
        }
        url
    }
}

/// Providers by id and alias (lower-case).
#[derive(Debug, Clone)]
pub struct Registry {
    by_name: crate::FastMap<String, Arc<Provider>>,
    ids: Vec<String>,
}

const BUILTIN: &str = include_str!("providers.json");

fn builtin_entries() -> Vec<BuiltinEntry> {
    // The file is compiled in and covered by a test, so a parse failure here
    // is a build defect; fall back to an empty list rather than panic.
    serde_json::from_str(BUILTIN).unwrap_or_default()
}

impl Registry {
    /// The built-in registry with `overrides` applied.
    pub fn new(overrides: &BTreeMap<String, ProviderOverride>) -> Registry {
        let mut merged: BTreeMap<String, ProviderOverride> = BTreeMap::new();
        for e in builtin_entries() {
            merged.insert(e.id, e.fields);
        }
        for (id, o) in overrides {
            let entry = merged.entry(id.to_ascii_lowercase()).or_default();
            if o.base_url.is_some() {
                entry.base_url.clone_from(&o.base_url);
            }
            if o.auth.is_some() {
                entry.auth = o.auth;
            }
            if o.aliases.is_some() {
                entry.aliases.clone_from(&o.aliases);
            }
            if let Some(h) = &o.default_headers {
                entry
                    .default_headers
                    .get_or_insert_with(BTreeMap::new)
                    .extend(h.clone());
            }
            if let Some(az) = &o.azure {
                let cur = entry.azure.get_or_insert_with(AzureSettings::default);
                if az.resource.is_some() {
                    cur.resource.clone_from(&az.resource);
                }
                if az.deployment.is_some() {
                    cur.deployment.clone_from(&az.deployment);
                }
                if az.api_version.is_some() {
                    cur.api_version.clone_from(&az.api_version);
                }
            }
        }
        let mut by_name = crate::FastMap::default();
        let mut ids = Vec::new();
        for (id, e) in merged {
            let Some(provider) = resolve(&id, &e) else {
                continue;
            };
            let provider = Arc::new(provider);
            for alias in e.aliases.iter().flatten() {
                by_name
                    .entry(alias.to_ascii_lowercase())
                    .or_insert_with(|| provider.clone());
            }
            // Ids win over aliases of other entries.
            by_name.insert(id.clone(), provider);
            ids.push(id);
        }
        Registry { by_name, ids }
    }

    /// Looks up an id or alias, case-insensitively.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        if let Some(p) = self.by_name.get(name) {
            return Some(p);
        }
        self.by_name.get(&name.to_ascii_lowercase())
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

fn resolve(id: &str, e: &ProviderOverride) -> Option<Provider> {
    let mut base = e.base_url.clone()?;
    if let Some(res) = e.azure.as_ref().and_then(|a| a.resource.as_deref()) {
        base = base.replace("{resource}", res);
    }
    let default_headers = e
        .default_headers
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    Some(Provider::at(
        id.to_string(),
        &base,
        e.auth.unwrap_or(AuthStyle::Bearer),
        default_headers,
        e.azure.clone(),
    ))
}

/// The `Host` header for `uri`, exactly as the client would add it (host,
/// and the port when it is not the scheme's default), built without
/// `format!`; `None` leaves it to the client (URLs with user info).
pub fn host_header(uri: &http::Uri) -> Option<http::HeaderValue> {
    let authority = uri.authority()?;
    let default_port = match uri.scheme_str()? {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    if authority.as_str().contains('@') {
        return None;
    }
    let host = match authority.port_u16() {
        Some(port) if port == default_port => authority.host(),
        _ => authority.as_str(),
    };
    http::HeaderValue::from_str(host).ok()
}

/// `scheme://host[:port]` of an http(s) URL, lower-cased, or `None`.
pub fn url_origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = uri.authority()?.as_str().to_ascii_lowercase();
    if authority.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

impl Registry {
    /// A provider for a legacy token that names a raw URL: allowed only when
    /// the URL's origin is listed in `legacy.allowed_provider_urls`. Treated as
    /// an OpenAI-compatible API (bearer key) at exactly that URL.
    pub fn legacy_url_provider(&self, url: &str, allowed: &[String]) -> Option<Arc<Provider>> {
        let origin = url_origin(url)?;
        if !allowed
            .iter()
            .any(|a| url_origin(a).as_deref() == Some(origin.as_str()))
        {
            return None;
        }
        Some(Arc::new(Provider::at(
            origin,
            url,
            AuthStyle::Bearer,
            Vec::new(),
            None,
        )))
    }
}

/// Config validation for the `providers` section.
pub fn validate_overrides(
    overrides: &BTreeMap<String, ProviderOverride>,
    problems: &mut Vec<String>,
) {
    let builtin: Vec<String> = builtin_entries().into_iter().map(|e| e.id).collect();
    for (id, o) in overrides {
        let field = format!("providers.{id}");
        match &o.base_url {
            Some(url)
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.parse::<http::Uri>().is_err() && !url.contains('{') =>
            {
                problems.push(format!(
                    "{field}.base_url: {:?} is not an http(s) URL; write e.g. \"https://api.example.com/v1\"",
                    without_userinfo(url)
                ));
            }
            Some(_) => {}
            None if !builtin.contains(&id.to_ascii_lowercase()) => problems.push(format!(
                "{field}: a new provider needs a base_url (and usually an auth style: bearer, x-api-key, x-goog-api-key or api-key)"
            )),
            None => {}
        }
        for (k, v) in o.default_headers.iter().flatten() {
            if HeaderName::from_bytes(k.as_bytes()).is_err() || HeaderValue::from_str(v).is_err() {
                problems.push(format!(
                    "{field}.default_headers.{k}: not a valid HTTP header name/value"
                ));
            }
        }
    }
}

/// `url` with a `user:password@` before its host masked: a config error
/// about the URL must not show a password written into it.
fn without_userinfo(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    match url[after_scheme..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..after_scheme], &url[after_scheme + at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_bad_base_url_is_named_without_its_password() {
        let o: BTreeMap<String, ProviderOverride> = serde_json::from_str(
            r#"{"acme": {"base_url": "htps://user:s3cret-pw@llm.example.com/v1"},
                "odd": {"base_url": "ftp://[::1"}}"#,
        )
        .unwrap();
        let mut problems = vec![];
        validate_overrides(&o, &mut problems);
        let all = problems.join("\n");
        assert_eq!(problems.len(), 2, "{all}");
        assert!(
            !all.contains("s3cret-pw") && !all.contains("user:"),
            "{all}"
        );
        assert!(all.contains("htps://***@llm.example.com/v1"), "{all}");
        assert!(all.contains("ftp://[::1"), "{all}");
    }

    impl Provider {
        /// The URI as text, for assertions.
        fn upstream_url(&self, rest: &str, query: &str) -> String {
            self.upstream_uri(self.local_path(rest), query)
                .map(|u| u.to_string())
                .unwrap_or_default()
        }
    }

    #[test]
    fn host_header_matches_what_the_client_would_write() {
        let host =
            |u: &str| host_header(&u.parse().unwrap()).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            host("https://api.openai.com/v1/x").as_deref(),
            Some("api.openai.com")
        );
        assert_eq!(
            host("https://api.openai.com:443/v1").as_deref(),
            Some("api.openai.com")
        );
        assert_eq!(
            host("http://127.0.0.1:8080/v1").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(host("http://127.0.0.1:80/v1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host("http://[::1]:9000/").as_deref(), Some("[::1]:9000"));
        assert_eq!(host("http://user:pw@example.com/"), None);
        assert_eq!(host("/relative"), None);
    }

    #[test]
    fn builtin_file_parses_and_has_the_promised_providers() {
        let entries: Vec<BuiltinEntry> = serde_json::from_str(BUILTIN).unwrap();
        assert!(entries.len() >= 18);
        let r = Registry::new(&BTreeMap::new());
        for id in [
            "openai",
            "anthropic",
            "gemini",
            "googleai",
            "azure-openai",
            "mistral",
            "groq",
            "deepseek",
            "dashscope",
            "openrouter",
            "together",
            "fireworks",
            "xai",
            "perplexity",
            "cohere",
            "moonshot",
            "zhipu",
            "siliconflow",
            "ollama",
        ] {
            assert!(r.get(id).is_some(), "{id} missing");
        }
        assert_eq!(r.get("GoogleAI").unwrap().id, "gemini");
    }

    #[test]
    fn url_mapping_dedupes_v1_and_keeps_query() {
        let r = Registry::new(&BTreeMap::new());
        let openai = r.get("openai").unwrap();
        assert_eq!(
            openai.upstream_url("chat/completions", ""),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            openai.upstream_url("v1/chat/completions", "a=1"),
            "https://api.openai.com/v1/chat/completions?a=1"
        );
        let anthropic = r.get("anthropic").unwrap();
        assert_eq!(
            anthropic.upstream_url("v1/messages", ""),
            "https://api.anthropic.com/v1/messages"
        );
    }

    #[test]
    fn azure_needs_a_resource_and_fills_deployment_and_version() {
        let r = Registry::new(&BTreeMap::new());
        assert!(!r.get("azure-openai").unwrap().configured);
        let mut o = BTreeMap::new();
        o.insert(
            "azure-openai".to_string(),
            ProviderOverride {
                azure: Some(AzureSettings {
                    resource: Some("acme".into()),
                    deployment: Some("gpt4o".into()),
                    api_version: None,
                }),
                ..Default::default()
            },
        );
        let r = Registry::new(&o);
        let az = r.get("azure").unwrap();
        assert!(az.configured);
        assert_eq!(
            az.upstream_url("chat/completions", ""),
            "https://acme.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            az.upstream_url("deployments/x/embeddings", "api-version=1"),
            "https://acme.openai.azure.com/openai/deployments/x/embeddings?api-version=1"
        );
    }

    #[test]
    fn local_path_drops_the_base_path_an_sdk_repeats_once() {
        let o: BTreeMap<String, ProviderOverride> = serde_json::from_str(
            r#"{"azure-openai": {"base_url": "https://acme.openai.azure.com/openai"}}"#,
        )
        .unwrap();
        let r = Registry::new(&o);
        for (id, rest, local) in [
            ("openai", "v1/chat/completions", "chat/completions"),
            ("openai", "/v1/models", "models"),
            ("openai", "v1", ""),
            ("openai", "chat/completions", "chat/completions"),
            // once: a path that really starts with `v1/` keeps that one
            ("openai", "v1/v1/models", "v1/models"),
            ("openai", "v1x/models", "v1x/models"),
            // the groq SDK: base https://api.groq.com, path openai/v1/…
            ("groq", "openai/v1/chat/completions", "chat/completions"),
            ("groq", "v1/chat/completions", "chat/completions"),
            ("groq", "openai/v1", ""),
            ("groq", "chat/completions", "chat/completions"),
            // AzureOpenAI(azure_endpoint=<token URL>)
            (
                "azure-openai",
                "openai/deployments/gpt/chat/completions",
                "deployments/gpt/chat/completions",
            ),
            (
                "azure-openai",
                "deployments/gpt/chat/completions",
                "deployments/gpt/chat/completions",
            ),
            (
                "dashscope",
                "compatible-mode/v1/chat/completions",
                "chat/completions",
            ),
            // bare hosts: the path is the SDK's own
            ("anthropic", "v1/messages", "v1/messages"),
            (
                "gemini",
                "v1beta/models/g:generateContent",
                "v1beta/models/g:generateContent",
            ),
        ] {
            assert_eq!(r.get(id).unwrap().local_path(rest), local, "{id} {rest}");
        }
    }

    #[test]
    fn upstream_uri_joins_the_base_and_the_client_path() {
        let o: BTreeMap<String, ProviderOverride> = serde_json::from_str(
            r#"{"openai": {"base_url": "HTTP://127.0.0.1:9/v1/"},
                "acme": {"base_url": "http://[::1]:8080"},
                "bare": {"base_url": "https://llm.example.com"},
                "creds": {"base_url": "http://u:p@127.0.0.1:9/x/"}}"#,
        )
        .unwrap();
        let r = Registry::new(&o);
        for (id, rest, query, expected) in [
            (
                "openai",
                "v1/chat/completions",
                "a=1&b=%20",
                "http://127.0.0.1:9/v1/chat/completions?a=1&b=%20",
            ),
            ("openai", "", "", "http://127.0.0.1:9/v1/"),
            ("acme", "v1/models", "", "http://[::1]:8080/v1/models"),
            ("bare", "x/y", "q", "https://llm.example.com/x/y?q"),
            ("creds", "/y", "", "http://u:p@127.0.0.1:9/x/y"),
            (
                "anthropic",
                "v1/messages",
                "",
                "https://api.anthropic.com/v1/messages",
            ),
        ] {
            let p = r.get(id).unwrap();
            let uri = p.upstream_uri(p.local_path(rest), query).unwrap();
            // Equal to the whole URL parsed, part for part.
            let parsed: http::Uri = expected.parse().unwrap();
            assert_eq!(uri, parsed, "{id} {rest}");
            assert_eq!(uri.to_string(), expected);
        }
        assert_eq!(r.get("acme").unwrap().host.as_ref().unwrap(), "[::1]:8080");
        assert!(r.get("creds").unwrap().host.is_none());
        // A path the URI grammar refuses is refused, not passed on.
        assert!(r.get("openai").unwrap().upstream_uri("a b", "").is_none());
        // A base that is no absolute URL forwards nothing.
        let o: BTreeMap<String, ProviderOverride> =
            serde_json::from_str(r#"{"odd": {"base_url": "relative/path"}}"#).unwrap();
        assert!(Registry::new(&o)
            .get("odd")
            .unwrap()
            .upstream_uri("v1/x", "")
            .is_none());
    }

    #[test]
    fn overrides_replace_fields_and_add_providers() {
        let o: BTreeMap<String, ProviderOverride> = serde_json::from_str(
            r#"{"openai": {"base_url": "http://127.0.0.1:9/v1/"},
                "acme": {"base_url": "http://127.0.0.1:9", "auth": "x-api-key", "aliases": ["a"]}}"#,
        )
        .unwrap();
        let mut problems = vec![];
        validate_overrides(&o, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let r = Registry::new(&o);
        assert_eq!(r.get("openai").unwrap().base_url, "http://127.0.0.1:9/v1");
        assert_eq!(r.get("a").unwrap().auth, AuthStyle::XApiKey);
    }

    #[test]
    fn legacy_url_providers_need_an_allowed_origin() {
        let r = Registry::new(&BTreeMap::new());
        let allowed = vec!["https://llm.example.com".to_string()];
        let p = r
            .legacy_url_provider("https://LLM.example.com/v1/", &allowed)
            .unwrap();
        assert_eq!(
            p.upstream_url("v1/chat/completions", ""),
            "https://LLM.example.com/v1/chat/completions"
        );
        assert!(r
            .legacy_url_provider("https://evil.example.com/v1", &allowed)
            .is_none());
        assert!(r
            .legacy_url_provider("https://llm.example.com.evil.io/v1", &allowed)
            .is_none());
        assert!(r
            .legacy_url_provider("https://user@llm.example.com/v1", &allowed)
            .is_none());
        assert!(r
            .legacy_url_provider("ftp://llm.example.com", &allowed)
            .is_none());
    }

    #[test]
    fn bad_overrides_are_explained() {
        let o: BTreeMap<String, ProviderOverride> =
            serde_json::from_str(r#"{"new": {}, "openai": {"base_url": "ftp://x"}}"#).unwrap();
        let mut problems = vec![];
        validate_overrides(&o, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("providers.new")));
        assert!(problems
            .iter()
            .any(|p| p.contains("providers.openai.base_url")));
    }
}
