//! Server configuration: load, merge the environment, validate.
//!
//! Sources, later wins: built-in defaults → `config.json` (or `.toml`) →
//! `RELAYAPI_*` environment variables. Field names keep the shape existing
//! RelayAPI deployments already use (`server.*`, `rate_limit.*`, `log.*`) and
//! add the sections this server needs (`upstream`, `usage`, `cors`,
//! `providers`, `credentials`, `policy`, `admin`).
//!
//! Validation collects *every* problem before failing, and each message names
//! the file, the field path and the fix (see [`ConfigError`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The whole server configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerSettings,
    pub rate_limit: RateLimitSettings,
    pub upstream: UpstreamSettings,
    pub usage: UsageSettings,
    pub cors: CorsSettings,
    /// Provider entries that extend or override the built-in registry, by id.
    pub providers: BTreeMap<String, crate::providers::ProviderOverride>,
    /// Accept the earlier Go server's AES-CBC tokens (off by default; see docs/migration.md).
    pub legacy_tokens: bool,
    pub legacy: LegacySettings,
    /// Request logging: sinks, body capture, redaction (docs/logging.md).
    pub log: LogSettings,
    /// Provider keys held by the relay, by name, for `key_ref` tokens.
    pub credentials: BTreeMap<String, CredentialSettings>,
    /// Defaults and bounds of per-token policy enforcement.
    pub policy: PolicySettings,
    /// The admin API (revocation, usage): its own listener, off without a key.
    pub admin: AdminSettings,
}

/// One relay-held credential: a provider and one or more keys, used in
/// turn (round-robin).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialSettings {
    /// Registry id (or alias) of the provider these keys belong to.
    pub provider: String,
    /// The provider keys. Secrets: never printed.
    pub api_keys: Vec<relayapi_token::SecretString>,
}

/// Per-token policy: defaults the token does not set, and memory bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// LLM tokens reserved for a call of a `max_tokens` token when the
    /// request names no output limit (`max_tokens`, `max_completion_tokens`,
    /// `max_output_tokens`, `generationConfig.maxOutputTokens`).
    pub default_token_reservation: u64,
    /// Most tokens whose `rps` state is remembered at once (bounds memory).
    pub max_tracked_tokens: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            default_token_reservation: 4096,
            max_tracked_tokens: 100_000,
        }
    }
}

/// The admin listener. Without `api_key` or `api_key_sha256` it is off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// `host:port` to bind; loopback by default.
    pub listen: String,
    /// The admin key in clear (a secret; prefer `api_key_sha256`).
    pub api_key: Option<relayapi_token::SecretString>,
    /// Lower- or upper-case hex SHA-256 of the admin key.
    pub api_key_sha256: Option<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8841".into(),
            api_key: None,
            api_key_sha256: None,
        }
    }
}

impl AdminSettings {
    /// True when an admin key is configured (then the listener runs).
    pub fn enabled(&self) -> bool {
        self.api_key.is_some() || self.api_key_sha256.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Interface to bind. Loopback by default: expose it on purpose.
    pub host: String,
    /// TCP port; 0 binds a free port (printed on the first stdout line).
    pub port: u16,
    /// Path prefix every relayed request starts with.
    pub base_path: String,
    /// Seconds a client may take to send the request head.
    #[serde(with = "secs")]
    pub read_timeout: Duration,
    /// Accepted for compatibility. A total write deadline would cut long
    /// streams, so it is not applied to relayed bodies (see `upstream.idle_timeout`).
    #[serde(with = "secs")]
    pub write_timeout: Duration,
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Verbose (debug-level) logs.
    pub debug: bool,
    /// Seconds in-flight requests (streams included) get to finish on shutdown.
    #[serde(with = "secs")]
    pub shutdown_grace: Duration,
    /// Peers whose `X-Forwarded-For` is believed (CIDR list).
    pub trusted_proxies: Vec<String>,
    /// Largest JSON body the relay will parse when a token enforces `model`/`models`.
    pub max_parsed_body_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8840,
            base_path: "/relayapi/".into(),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            debug: false,
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            max_parsed_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Traffic limits, applied before any token work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Global sustained rate; 0 disables the global limit.
    pub requests_per_second: f64,
    /// Global burst.
    pub burst: u32,
    /// Per-client-IP limit (`null`, or `false` in TOML, disables it).
    #[serde(deserialize_with = "off_switch::ip_limit")]
    pub ip_limit: Option<IpLimitSettings>,
    /// Most client IPs tracked at once (bounds memory under floods).
    pub max_tracked_ips: usize,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 10_000.0,
            burst: 20_000,
            ip_limit: Some(IpLimitSettings::default()),
            max_tracked_ips: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpLimitSettings {
    pub requests_per_second: f64,
    pub burst: u32,
}

impl Default for IpLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 1_000.0,
            burst: 2_000,
        }
    }
}

/// How the relay talks to providers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Seconds to establish a TCP (+TLS) connection.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Seconds until the provider's response head arrives.
    #[serde(with = "secs")]
    pub first_byte_timeout: Duration,
    /// Seconds allowed between two body chunks (either direction of a stream
    /// can be long; only silence is cut).
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// Seconds an unused pooled connection is kept.
    #[serde(with = "secs")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per provider host.
    pub pool_max_idle_per_host: usize,
    /// A PEM file of CA certificates trusted for providers' TLS in addition
    /// to the built-in (Mozilla) roots: a self-hosted model server or a
    /// corporate proxy with a private CA.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            ca_file: None,
        }
    }
}

/// Where `max_calls` counters live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageSettings {
    /// `sqlite` (a single durable file, default) or `memory` (tests; lost on exit).
    pub store: String,
    /// The SQLite file.
    pub path: PathBuf,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            store: "sqlite".into(),
            path: PathBuf::from("relayapi-usage.db"),
        }
    }
}

/// Browser access. The token is the credential, so any origin is allowed by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    pub enabled: bool,
    /// Exact origins, or `"*"` for any.
    pub allowed_origins: Vec<String>,
    /// Seconds browsers may cache a preflight answer.
    pub max_age: u64,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_origins: vec!["*".into()],
            max_age: 600,
        }
    }
}

/// Request logging. Keeps the earlier RelayAPI shape (`console`,
/// `database`, `web`, `parquet`) and adds capture and delivery settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `true` (pretty on a terminal, JSON lines otherwise), `false`, or `{"format": "pretty"|"json"}`.
    pub console: crate::logs::sinks::console::ConsoleSetting,
    pub database: DatabaseLogSettings,
    pub web: WebLogSettings,
    pub parquet: ParquetLogSettings,
    /// Capture request/response bodies and headers (redacted) in the records.
    pub bodies: bool,
    /// Per body capture cap, bytes (decoded text included).
    pub max_body_bytes: usize,
    /// More header names whose values are masked (credentials always are).
    pub redact_headers: Vec<String>,
    /// More JSON (and form) request body field names whose values are masked.
    pub redact_json_fields: Vec<String>,
    /// Where records wait while a sink is down and its queue is full
    /// (`relayapi-spool` in the working directory, like the usage store's
    /// file; `null`, or `false` in TOML, runs without a spool, dropping overflow).
    #[serde(deserialize_with = "off_switch::spool_dir")]
    pub spool_dir: Option<PathBuf>,
    /// Spool size per sink before records are dropped (and counted).
    pub spool_max_bytes: u64,
    /// Records per sink queued in memory.
    pub queue_capacity: usize,
    /// A batch is written after this many records…
    pub batch_max_records: usize,
    /// …or this long after its first record (seconds).
    #[serde(with = "secs")]
    pub batch_max_delay: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            console: crate::logs::sinks::console::ConsoleSetting::Enabled(true),
            database: DatabaseLogSettings::default(),
            web: WebLogSettings::default(),
            parquet: ParquetLogSettings::default(),
            bodies: false,
            max_body_bytes: 64 * 1024,
            redact_headers: Vec::new(),
            redact_json_fields: Vec::new(),
            spool_dir: Some(PathBuf::from("relayapi-spool")),
            spool_max_bytes: 256 * 1024 * 1024,
            queue_capacity: 10_000,
            batch_max_records: 500,
            batch_max_delay: Duration::from_secs(1),
        }
    }
}

impl LogSettings {
    /// True when any sink is on (then the request path builds records).
    pub fn any_sink(&self) -> bool {
        self.console.resolve().is_some()
            || self.web.enabled
            || self.database.enabled
            || self.parquet.enabled
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseLogSettings {
    pub enabled: bool,
    /// `sqlite`, `postgres` or `mysql` (MySQL and MariaDB).
    #[serde(rename = "type")]
    pub kind: String,
    /// URL (`postgres://…`, `mysql://…`), libpq keywords, a Go MySQL DSN, or
    /// a SQLite file path. May hold a password: never printed.
    pub connection_string: relayapi_token::SecretString,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebLogSettings {
    pub enabled: bool,
    pub callback_url: String,
    /// When set, batches carry `X-RelayAPI-Signature: sha256=<HMAC-SHA256(secret, body)>`.
    pub secret: Option<relayapi_token::SecretString>,
    /// PEM CA certificates trusted for an `https` receiver, in addition to
    /// the built-in roots (a receiver behind a private CA).
    pub ca_file: Option<PathBuf>,
}

/// By hand: the callback URL is a credential as much as the secret (its
/// userinfo, its query, or a path like Slack's `/services/T…/B…/…`), so
/// `Debug` of the config shows neither.
impl fmt::Debug for WebLogSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = if self.callback_url.is_empty() {
            ""
        } else {
            relayapi_token::secret::REDACTED
        };
        f.debug_struct("WebLogSettings")
            .field("enabled", &self.enabled)
            .field("callback_url", &url)
            .field("secret", &self.secret)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParquetLogSettings {
    pub enabled: bool,
    /// A directory for `logs_YYYY-MM-DD.parquet` files (created if missing).
    pub file_path: PathBuf,
    /// A file is finished (footer written) once it is this big…
    pub max_file_bytes: u64,
    /// …or this old (seconds): what a crash can lose at most.
    #[serde(with = "secs")]
    pub max_file_age: Duration,
}

impl Default for ParquetLogSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            file_path: PathBuf::new(),
            max_file_bytes: 64 * 1024 * 1024,
            max_file_age: Duration::from_secs(300),
        }
    }
}

/// Compatibility with the earlier server's tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacySettings {
    /// Origins (`https://host[:port]`) a legacy token may name as its
    /// `provider` instead of a registry id. Anything else is `provider_unknown`.
    pub allowed_provider_urls: Vec<String>,
    /// Accept legacy tokens whose first JSON member is a field other than
    /// `id`, as the Java generator writes them (`{"max_calls":1,…`). The IV
    /// sets the first 16 plaintext bytes at will, so a holder can rewrite
    /// that field's start there: each digit of `max_calls` among those bytes
    /// can become a `9`, on the same call counter. Off (the default), such
    /// tokens are `token_invalid` (docs/migration.md).
    pub accept_first_block_fields: bool,
}

impl Config {
    /// How legacy tokens are decoded, or `None` while `legacy_tokens` is off.
    pub fn legacy_decoding(&self) -> Option<relayapi_token::LegacyOptions> {
        self.legacy_tokens.then_some(relayapi_token::LegacyOptions {
            accept_first_block_fields: self.legacy.accept_first_block_fields,
        })
    }
}

/// Every problem found in a config, each naming the file, field and fix.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} has {} problem(s):", self.file, self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Environment variables as (name, value) pairs; passed in so tests never
/// touch the process environment.
pub type Env = Vec<(String, String)>;

pub fn process_env() -> Env {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("RELAYAPI_"))
        .collect()
}

/// The config file read when none is named (`--config`, `RELAYAPI_CONFIG`):
/// `config.json` or `config.toml` in `dir`, whichever exists, or `None`
/// (built-in defaults). Both present is an error rather than a silent
/// preference: the operator would be editing a file that does nothing.
pub fn default_file(dir: &Path) -> Result<Option<PathBuf>, ConfigError> {
    let json = dir.join("config.json");
    let toml = dir.join("config.toml");
    match (json.exists(), toml.exists()) {
        (true, true) => Err(ConfigError {
            file: json.display().to_string(),
            problems: vec![format!(
                "{} is there too, and only one config file is read; merge the settings into one of them and remove the other, or name the one to use with --config FILE (or RELAYAPI_CONFIG)",
                toml.display()
            )],
        }),
        (true, false) => Ok(Some(json)),
        (false, true) => Ok(Some(toml)),
        (false, false) => Ok(None),
    }
}

impl Config {
    /// Loads `path` (JSON, or TOML when it ends in `.toml`), or the built-in
    /// defaults when `path` is `None` or a default path that does not exist;
    /// then applies `RELAYAPI_*` overrides and validates.
    pub fn load(path: Option<&Path>, must_exist: bool, env: &Env) -> Result<Config, ConfigError> {
        let (label, mut tree) = match path {
            Some(p) if p.exists() => {
                let label = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: label.clone(),
                    problems: vec![format!("cannot read the file: {e}")],
                })?;
                (label.clone(), parse_tree(&label, p, &text)?)
            }
            Some(p) if must_exist => {
                return Err(ConfigError {
                    file: p.display().to_string(),
                    problems: vec![
                        "file not found; check the path, or omit --config to use built-in defaults"
                            .into(),
                    ],
                })
            }
            _ => (
                "built-in defaults".to_string(),
                Value::Object(Default::default()),
            ),
        };
        let mut problems = Vec::new();
        let from_env = apply_env(&mut tree, env, &mut problems);
        let env_problems = problems.len();
        let known = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
        refuse_lists_for_objects(&tree, &known, "", &mut problems);
        let mut retried: Vec<String> = Vec::new();
        let config: Option<Config> = loop {
            if problems.len() > env_problems {
                break None;
            }
            match serde_path_to_error::deserialize(tree.clone()) {
                Ok(c) => break Some(c),
                Err(e) => {
                    let field = e.path().to_string();
                    // `RELAYAPI_LOG_WEB_SECRET=12345` parsed as a number, but
                    // the setting wants a string: take the text as written.
                    if !retried.contains(&field) {
                        if let Some(raw) = env_value_as_string(&field, &from_env, env) {
                            let path: Vec<String> = field.split('.').map(str::to_owned).collect();
                            set_path(&mut tree, &path, Value::String(raw));
                            retried.push(field);
                            continue;
                        }
                    }
                    problems.push(format!("{field}: {}", explain_serde(&field, e.inner())));
                    break None;
                }
            }
        };
        if let Some(config) = &config {
            config.validate(&mut problems);
        }
        for problem in &mut problems {
            blame_env_var(problem, &from_env);
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError {
                file: label,
                problems,
            }),
        }
    }

    fn validate(&self, problems: &mut Vec<String>) {
        let s = &self.server;
        if !s.base_path.starts_with('/')
            || !s.base_path.ends_with('/')
            || s.base_path.contains("//")
        {
            problems.push(format!(
                "server.base_path: must start and end with '/' (got {:?}); e.g. \"/relayapi/\"",
                s.base_path
            ));
        }
        if s.host.parse::<std::net::IpAddr>().is_err() && s.host != "localhost" {
            problems.push(format!(
                "server.host: must be an IP address to bind, like \"127.0.0.1\" or \"0.0.0.0\" (got {:?})",
                s.host
            ));
        }
        if s.max_header_bytes < 1024 {
            problems.push("server.max_header_bytes: must be at least 1024".into());
        }
        // Zero is refused where it breaks the relay; where it has a meaning
        // it is accepted: shutdown_grace (exit at once), write_timeout
        // (never applied), upstream.pool_* (no reuse), cors.max_age (no
        // preflight caching), log.batch_max_delay (no batching delay).
        if s.read_timeout.is_zero() {
            // hyper's header timer would close every connection at once.
            problems.push(
                "server.read_timeout: must be > 0 seconds (0 closes every connection before its request arrives); write e.g. 30 or \"30s\" (the default)".into(),
            );
        }
        if s.max_parsed_body_bytes == 0 {
            problems.push(
                "server.max_parsed_body_bytes: must be ≥ 1 (0 refuses every body the relay must read: model enforcement, budgets); write e.g. 4194304 (the default, 4 MiB)".into(),
            );
        }
        for (i, net) in s.trusted_proxies.iter().enumerate() {
            if parse_net(net).is_none() {
                problems.push(format!(
                    "server.trusted_proxies[{i}]: {net:?} is not an IP or CIDR network; write e.g. \"10.0.0.0/8\" or \"127.0.0.1\""
                ));
            }
        }
        let r = &self.rate_limit;
        if !(r.requests_per_second >= 0.0 && r.requests_per_second.is_finite()) {
            problems.push(
                "rate_limit.requests_per_second: must be ≥ 0 (0 disables the global limit)".into(),
            );
        }
        if r.requests_per_second > 0.0 && r.burst == 0 {
            problems.push("rate_limit.burst: must be ≥ 1 when requests_per_second is set".into());
        }
        if let Some(ip) = &r.ip_limit {
            if !(ip.requests_per_second > 0.0 && ip.requests_per_second.is_finite())
                || ip.burst == 0
            {
                problems.push(
                    "rate_limit.ip_limit: requests_per_second must be > 0 and burst ≥ 1; set it to null (JSON) or false (TOML) to disable per-IP limits".into(),
                );
            }
        }
        if r.max_tracked_ips == 0 {
            problems.push("rate_limit.max_tracked_ips: must be ≥ 1".into());
        }
        let u = &self.upstream;
        for (name, d, default) in [
            ("connect_timeout", u.connect_timeout, 10),
            ("first_byte_timeout", u.first_byte_timeout, 300),
            ("idle_timeout", u.idle_timeout, 120),
        ] {
            if d.is_zero() {
                problems.push(format!(
                    "upstream.{name}: must be > 0 seconds (0 fails every request); write e.g. {default} or \"{default}s\" (the default)"
                ));
            }
        }
        check_ca_file("upstream.ca_file", u.ca_file.as_deref(), problems);
        if !matches!(self.usage.store.as_str(), "sqlite" | "memory") {
            problems.push(format!(
                "usage.store: unknown store {:?}; use \"sqlite\" (durable file) or \"memory\"",
                self.usage.store
            ));
        }
        for (i, o) in self.cors.allowed_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                problems.push(format!(
                    "cors.allowed_origins[{i}]: {o:?} is not an origin; write \"https://app.example.com\" or \"*\""
                ));
            }
        }
        crate::providers::validate_overrides(&self.providers, problems);
        let log = &self.log;
        if log.web.enabled && crate::providers::url_origin(&log.web.callback_url).is_none() {
            let with_userinfo = log
                .web
                .callback_url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
                .and_then(|u| u.authority().map(|a| a.as_str().contains('@')))
                .unwrap_or(false);
            problems.push(if with_userinfo {
                "log.web.callback_url: a user or password in the URL is not supported (the value is not shown); receivers authenticate the relay by log.web.secret's X-RelayAPI-Signature, or put a token in the URL's path or query".into()
            } else {
                "log.web.callback_url: not an http(s) URL with a host (the value is not shown: it may hold credentials); set the receiver's URL or disable log.web".into()
            });
        }
        if log.web.enabled {
            check_ca_file("log.web.ca_file", log.web.ca_file.as_deref(), problems);
        }
        for (name, value) in [
            ("max_body_bytes", log.max_body_bytes),
            ("queue_capacity", log.queue_capacity),
            ("batch_max_records", log.batch_max_records),
        ] {
            if value == 0 {
                problems.push(format!("log.{name}: must be at least 1"));
            }
        }
        if log.database.enabled {
            let db = &log.database;
            if db.kind.is_empty() {
                problems.push(
                    "log.database.type is missing; with log.database.enabled, set it to \"sqlite\", \"postgres\" or \"mysql\" (also for MariaDB)"
                        .into(),
                );
            } else if !matches!(db.kind.as_str(), "sqlite" | "postgres" | "mysql") {
                problems.push(format!(
                    "log.database.type: unknown type {:?}; use \"sqlite\", \"postgres\" or \"mysql\" (also for MariaDB)",
                    db.kind
                ));
            } else if db.connection_string.expose().trim().is_empty() {
                problems.push(format!(
                    "log.database.connection_string: empty; set it (e.g. {}) or set log.database.enabled to false",
                    match db.kind.as_str() {
                        "sqlite" => "\"relayapi-logs.db\"",
                        "postgres" => "\"postgres://user:password@host:5432/db\"",
                        _ => "\"mysql://user:password@host:3306/db\"",
                    }
                ));
            } else if let Err(e) =
                crate::logs::sinks::database::validate(&db.kind, db.connection_string.expose())
            {
                // The message says what is wrong, never what was written.
                problems.push(format!("{e} (log.database.type is {:?})", db.kind));
            }
        }
        if log.parquet.enabled {
            let pq = &log.parquet;
            if pq.file_path.as_os_str().is_empty() {
                problems.push(
                    "log.parquet.file_path: empty; set a directory for the daily files (e.g. \"/var/log/relayapi\") or set log.parquet.enabled to false".into(),
                );
            } else if pq.file_path.exists() && !pq.file_path.is_dir() {
                problems.push(format!(
                    "log.parquet.file_path: {:?} is a file; it must be a directory (created if missing) for logs_YYYY-MM-DD.parquet files",
                    pq.file_path
                ));
            }
            if pq.max_file_bytes == 0 || pq.max_file_age.is_zero() {
                problems.push(
                    "log.parquet: max_file_bytes and max_file_age must be > 0 (they bound what a crash can lose)".into(),
                );
            }
        }
        if let Some(dir) = &log.spool_dir {
            if dir.as_os_str().is_empty() {
                problems.push(
                    "log.spool_dir: empty; set a directory (default \"relayapi-spool\"), or null (JSON) or false (TOML) to run without a spool".into(),
                );
            } else if dir.exists() && !dir.is_dir() {
                problems.push(format!(
                    "log.spool_dir: {dir:?} is a file; it must be a directory (created if missing), or null (JSON) or false (TOML) to run without a spool"
                ));
            }
        }
        self.validate_policy(problems);
        for (i, u) in self.legacy.allowed_provider_urls.iter().enumerate() {
            if crate::providers::url_origin(u).is_none() {
                problems.push(format!(
                    "legacy.allowed_provider_urls[{i}]: {u:?} is not an http(s) URL; write an origin like \"https://api.example.com\""
                ));
            }
        }
    }

    fn validate_policy(&self, problems: &mut Vec<String>) {
        let registry = crate::providers::Registry::new(&self.providers);
        for (name, c) in &self.credentials {
            let field = format!("credentials.{name}");
            if name.is_empty() {
                problems.push("credentials: a credential name must not be empty".into());
            }
            if registry.get(&c.provider).is_none() {
                // Not quoted: a key written in the wrong place would be.
                problems.push(format!(
                    "{field}.provider: not a provider of this relay (the value is not shown: credentials hold keys); use one of: {}",
                    registry.ids().join(", ")
                ));
            }
            if c.api_keys.is_empty() {
                problems.push(format!(
                    "{field}.api_keys: list at least one provider key, e.g. [\"sk-...\"]"
                ));
            }
            for (i, k) in c.api_keys.iter().enumerate() {
                let bad = k.expose().trim().is_empty()
                    || http::HeaderValue::from_str(k.expose()).is_err();
                if bad {
                    // Never echo the key itself.
                    problems.push(format!(
                        "{field}.api_keys[{i}]: must be a non-empty key without spaces at the ends or control characters"
                    ));
                }
            }
        }
        let p = &self.policy;
        if p.default_token_reservation == 0 {
            problems.push("policy.default_token_reservation: must be ≥ 1".into());
        }
        if p.max_tracked_tokens == 0 {
            problems.push("policy.max_tracked_tokens: must be ≥ 1".into());
        }
        let a = &self.admin;
        if a.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "admin.listen: {:?} is not an address to bind; write e.g. \"127.0.0.1:8841\"",
                a.listen
            ));
        }
        if a.api_key.is_some() && a.api_key_sha256.is_some() {
            problems.push("admin: set either api_key or api_key_sha256, not both".into());
        }
        if a.api_key.as_ref().is_some_and(|k| k.expose().len() < 16) {
            problems.push(
                "admin.api_key: use at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
            );
        }
        if let Some(h) = &a.api_key_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(
                    "admin.api_key_sha256: must be 64 hex characters, e.g. the output of `printf %s \"$KEY\" | sha256sum`".into(),
                );
            }
        }
    }

    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.server
            .trusted_proxies
            .iter()
            .filter_map(|s| parse_net(s))
            .collect()
    }
}

/// A `ca_file` setting (`field` names it) must be a readable PEM file of
/// CA certificates; the message never echoes the file.
fn check_ca_file(field: &str, path: Option<&Path>, problems: &mut Vec<String>) {
    if let Err(e) = path.map_or(Ok(()), |p| crate::proxy::extra_roots(p).map(drop)) {
        problems.push(format!(
            "{field}: {e}; point it at a PEM file of CA certificates, or remove it to trust only the built-in roots"
        ));
    }
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn parse_tree(label: &str, path: &Path, text: &str) -> Result<Value, ConfigError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let parsed = if matches!(extension.as_deref(), Some("yaml" | "yml")) {
        Err(
            "YAML is not read; write the same settings as JSON (config.json) or TOML (config.toml)"
                .to_string(),
        )
    } else if extension.as_deref() == Some("toml") {
        toml::from_str::<Value>(text).map_err(|e| {
            let at = e.span().map_or(String::new(), |span| {
                let (line, column) = line_and_column(text, span.start);
                format!(" at line {line} column {column}")
            });
            format!("not valid TOML{at}: {}", e.message())
        })
    } else {
        serde_json::from_str::<Value>(text).map_err(|e| {
            format!(
                "not valid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            )
        })
    };
    match parsed {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ConfigError {
            file: label.into(),
            problems: vec!["the top level must be an object like {\"server\": {...}}".into()],
        }),
        Err(p) => Err(ConfigError {
            file: label.into(),
            problems: vec![p],
        }),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Settings whose values are secrets (or may hold credentials, like a URL's
/// userinfo): an error about them never shows the value.
fn is_secret_setting(field: &str) -> bool {
    field.starts_with("credentials.")
        // a custom auth header is a provider key
        || field.starts_with("providers.") && field.contains(".default_headers")
        || ["secret", "connection_string", "api_key", "callback_url"]
            .iter()
            .any(|name| field == *name || field.ends_with(&format!(".{name}")))
}

/// serde reads a struct from a list, by position (`"admin": ["127.0.0.1:8841",
/// "<key>"]` loads as `listen` and `api_key`): never what was meant, and a
/// secret would land in a field whose check quotes it. So every setting
/// that wants an object (by the defaults' shape, and the entries of
/// `credentials` and `providers`) refuses a list before serde sees it.
fn refuse_lists_for_objects(input: &Value, known: &Value, path: &str, problems: &mut Vec<String>) {
    let (Value::Object(input), Value::Object(known)) = (input, known) else {
        return;
    };
    for (key, value) in input {
        let field = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let wanted = known.get(key);
        // An empty default object is a map (`providers`, `credentials`);
        // their entries are structs.
        let object_wanted = matches!(path, "credentials" | "providers")
            || wanted.is_some_and(|k| k.as_object().is_some_and(|m| !m.is_empty()));
        if value.is_array() && object_wanted {
            problems.push(match secret_section_shape(&field) {
                Some(shape) => format!(
                    "{field}: a list is not read here (not shown: it holds a secret); write {shape}"
                ),
                None => format!(
                    "{field}: a list is not read here; write an object of named fields ({{\"field\": value, …}}, see docs/configuration.md)"
                ),
            });
        } else if let Some(known) = wanted {
            refuse_lists_for_objects(value, known, &field, problems);
        }
    }
}

/// The raw text of the `RELAYAPI_*` variable that set `field`, if it was
/// parsed as JSON into something other than a string (a retry takes it as
/// a string; a second failure at the same field is then a real error).
fn env_value_as_string(field: &str, from_env: &[(String, String)], env: &Env) -> Option<String> {
    let (_, var) = from_env.iter().find(|(path, _)| path == field)?;
    let raw = env.iter().find(|(name, _)| name == var).map(|(_, v)| v)?;
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::String(_)) | Err(_) => None,
        Ok(_) => Some(raw.clone()),
    }
}

/// What to write for `field` when it is a section that holds a secret, or
/// `None` when it is not one. An error about such a section is about its
/// type (`"log": {"database": "postgres://u:pw@h/db"}` is an error at
/// `log.database`), and serde's message quotes the value written, which is
/// then likely the secret itself: it is replaced by this shape.
fn secret_section_shape(field: &str) -> Option<&'static str> {
    // Keep in step with `is_secret_setting` and docs/configuration.md.
    Some(match field.split('.').collect::<Vec<_>>()[..] {
        ["log"] => "an object like {\"console\": true, \"database\": {…}, \"web\": {…}} (docs/logging.md)",
        ["log", "database"] => {
            "an object like {\"enabled\": true, \"type\": \"postgres\", \"connection_string\": \"postgres://…\"}"
        }
        ["log", "web"] => {
            "an object like {\"enabled\": true, \"callback_url\": \"https://…\", \"secret\": \"…\"}"
        }
        ["admin"] => "an object like {\"listen\": \"127.0.0.1:8841\", \"api_key_sha256\": \"…\"} (docs/admin.md)",
        ["credentials"] => {
            "an object of named credentials like {\"team-openai\": {\"provider\": \"openai\", \"api_keys\": [\"sk-…\"]}}"
        }
        ["credentials", _] => "an object like {\"provider\": \"openai\", \"api_keys\": [\"sk-…\"]}",
        ["credentials", _, "api_keys"] => "a list of provider keys like [\"sk-…\"]",
        ["providers", _, "default_headers"] => {
            "an object of header names and values like {\"anthropic-beta\": \"…\"}"
        }
        _ => return None,
    })
}

fn explain_serde(field: &str, e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("unknown field") {
        return format!("{msg} (remove it or fix the spelling)");
    }
    if let Some(shape) = secret_section_shape(field) {
        return format!("not a valid value (not shown: it holds a secret); write {shape}");
    }
    let secret = is_secret_setting(field);
    // serde names Rust types; say what to write instead.
    for (rust, plain) in [
        ("expected usize", "write a whole number, 0 or more"),
        ("expected u64", "write a whole number, 0 or more"),
        ("expected u32", "write a whole number, 0 or more"),
        ("expected u16", "write a whole number from 0 to 65535"),
        ("expected f64", "write a number"),
        ("expected a boolean", "write true or false"),
        ("expected a string", "write a string in double quotes"),
    ] {
        if msg.contains(rust) {
            return if secret {
                format!("not a valid value (not shown: it is a secret); {plain}")
            } else {
                format!("{msg} ({plain})")
            };
        }
    }
    if secret {
        "not a valid value (not shown: it is a secret); see docs/configuration.md".into()
    } else {
        msg
    }
}

/// Applies `RELAYAPI_SECTION_FIELD=value` overrides, e.g.
/// `RELAYAPI_SERVER_PORT=9000`, `RELAYAPI_RATE_LIMIT_IP_LIMIT_BURST=10`,
/// `RELAYAPI_USAGE_STORE=memory`. Names are matched against the known
/// field tree (so underscores inside field names work); values are parsed
/// as JSON when they parse, else taken as strings.
///
/// Returns the settings it set (dotted path, variable name), so that a
/// problem with one of them names the variable instead of blaming the file.
fn apply_env(tree: &mut Value, env: &Env, problems: &mut Vec<String>) -> Vec<(String, String)> {
    // The defaults, serialised, are the map of known fields.
    let known = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    let mut set = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("RELAYAPI_") else {
            continue;
        };
        // Variables that the CLI reads itself (`RELAYAPI_LOG` is the log
        // filter, see `cli::log_filter`), and the mock's own
        // (`RELAYAPI_MOCK_API_KEY`, …), often exported in the same shell.
        if matches!(
            rest,
            "CONFIG" | "RAI" | "LOG" | "LOG_FORMAT" | "ADMIN_URL" | "ADMIN_KEY"
        ) || rest.starts_with("MOCK_")
        {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        match resolve_env_path(&known, &rest) {
            Some(path) => {
                let value = serde_json::from_str::<Value>(raw)
                    .unwrap_or_else(|_| Value::String(raw.clone()));
                set_path(tree, &path, value);
                set.push((path.join("."), name.clone()));
            }
            None => problems.push(format!(
                "environment variable {name}: no such setting; names look like RELAYAPI_SERVER_PORT or RELAYAPI_RATE_LIMIT_BURST"
            )),
        }
    }
    set
}

/// Rewrites `field: …` as `field (from the environment variable NAME): …`
/// when a `RELAYAPI_*` variable set that field or one inside it, so the
/// operator fixes the variable rather than searching the file for it.
fn blame_env_var(problem: &mut String, from_env: &[(String, String)]) {
    let Some((field, rest)) = problem.split_once(": ") else {
        return;
    };
    // `server.trusted_proxies[0]` is the setting `server.trusted_proxies`.
    let setting = field.split('[').next().unwrap_or(field);
    let Some((_, var)) = from_env.iter().find(|(path, _)| {
        path == setting
            || path
                .strip_prefix(setting)
                .is_some_and(|tail| tail.starts_with('.'))
    }) else {
        return;
    };
    *problem = format!("{field} (from the environment variable {var}): {rest}; fix or unset {var}");
}

fn resolve_env_path(known: &Value, rest: &str) -> Option<Vec<String>> {
    let Value::Object(map) = known else {
        return None;
    };
    // Longest key first so `rate_limit` wins over a hypothetical `rate`.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        if rest == key.as_str() {
            return Some(vec![key.clone()]);
        }
        if let Some(tail) = rest
            .strip_prefix(key.as_str())
            .and_then(|t| t.strip_prefix('_'))
        {
            let child = &map[key.as_str()];
            // `ip_limit` defaults to an object; `null` children cannot be walked.
            if let Some(mut sub) = resolve_env_path(child, tail) {
                sub.insert(0, key.clone());
                return Some(sub);
            }
        }
    }
    None
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let Value::Object(map) = node else { return };
        if i + 1 == path.len() {
            map.insert(key.clone(), value);
            return;
        }
        node = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

/// Settings that are turned off with `null` also take `false`: TOML has no
/// null, and without this a TOML file could not turn them off at all
/// (leaving them out means the default, which is on). `true` is refused: it
/// does not say which value to use.
mod off_switch {
    use std::fmt;
    use std::marker::PhantomData;
    use std::path::PathBuf;

    use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Visitor};

    use super::IpLimitSettings;

    pub fn ip_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpLimitSettings>, D::Error> {
        d.deserialize_any(OrOff::<IpLimitSettings>::new(
            "an object like {\"requests_per_second\": 1000, \"burst\": 2000}, or null (JSON) or false (TOML) to disable per-IP limits",
        ))
    }

    pub fn spool_dir<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        d.deserialize_any(OrOff::<PathBuf>::new(
            "a directory in double quotes, or null (JSON) or false (TOML) to run without a spool",
        ))
    }

    /// `null`/`false` → `None`; an object or a string → `Some(T)`.
    struct OrOff<T> {
        expecting: &'static str,
        value: PhantomData<T>,
    }

    impl<T> OrOff<T> {
        fn new(expecting: &'static str) -> Self {
            Self {
                expecting,
                value: PhantomData,
            }
        }
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OrOff<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
            if on {
                Err(E::invalid_value(de::Unexpected::Bool(true), &self))
            } else {
                Ok(None)
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            T::deserialize(v.into_deserializer()).map(Some)
        }

        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            // The caller's map access, so errors inside keep their field path.
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
}

/// Durations are written as seconds (`30`, `0.5`) or humantime strings (`"30s"`, `"2m"`).
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) if n >= 0.0 && n.is_finite() && n < 1e9 => Ok(Duration::from_secs_f64(n)),
            Raw::Num(n) => Err(serde::de::Error::custom(format!(
                "{n} is not a valid number of seconds"
            ))),
            Raw::Text(t) => humantime::parse_duration(&t).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration; write seconds (30) or \"30s\", \"2m\""
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn load_str(name: &str, text: &str, env: &Env) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        Config::load(Some(&p), true, env)
    }

    #[test]
    fn existing_relayapi_config_loads_unchanged() {
        let text = r#"{
          "server": {"host": "0.0.0.0", "port": 8080, "read_timeout": 30, "write_timeout": 30,
                     "max_header_bytes": 1048576, "debug": false},
          "log": {"console": true, "database": {"enabled": true, "type": "postgres",
                  "connection_string": "user=postgres password=postgres"},
                  "web": {"enabled": false, "callback_url": "http://example.com/log"},
                  "parquet": {"enabled": false, "file_path": "/tmp/x.parquet"}},
          "rate_limit": {"requests_per_second": 10, "burst": 20,
                         "ip_limit": {"requests_per_second": 2, "burst": 4}}
        }"#;
        let c = load_str("config.json", text, &vec![]).unwrap();
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.rate_limit.burst, 20);
        assert_eq!(c.rate_limit.ip_limit.unwrap().burst, 4);
    }

    #[test]
    fn toml_and_env_overrides() {
        let env = vec![
            ("RELAYAPI_SERVER_PORT".to_string(), "9001".to_string()),
            (
                "RELAYAPI_RATE_LIMIT_IP_LIMIT_BURST".to_string(),
                "7".to_string(),
            ),
            ("RELAYAPI_USAGE_STORE".to_string(), "memory".to_string()),
            (
                "RELAYAPI_UPSTREAM_IDLE_TIMEOUT".to_string(),
                "5s".to_string(),
            ),
        ];
        let c = load_str("c.toml", "[server]\nport = 1234\n", &env).unwrap();
        assert_eq!(c.server.port, 9001);
        assert_eq!(c.rate_limit.ip_limit.unwrap().burst, 7);
        assert_eq!(c.usage.store, "memory");
        assert_eq!(c.upstream.idle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_file_field_and_fix_and_are_all_collected() {
        let text = r#"{"server": {"base_path": "relay", "trusted_proxies": ["nope"]},
                       "usage": {"store": "redis-ish"}, "cors": {"allowed_origins": ["example.com"]}}"#;
        let err = load_str(
            "bad.json",
            text,
            &vec![("RELAYAPI_NOPE".into(), "1".into())],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bad.json"), "{msg}");
        for needle in [
            "server.base_path",
            "server.trusted_proxies[0]",
            "usage.store",
            "cors.allowed_origins[0]",
            "RELAYAPI_NOPE",
        ] {
            assert!(msg.contains(needle), "missing {needle} in {msg}");
        }
    }

    #[test]
    fn a_bad_environment_value_names_the_variable_not_just_the_file() {
        let env = vec![
            ("RELAYAPI_SERVER_PORT".to_string(), "not-a-port".to_string()),
            ("RELAYAPI_MOCK_API_KEY".to_string(), "sk-mock".to_string()),
        ];
        let msg = load_str("c.json", "{}", &env).unwrap_err().to_string();
        assert!(
            msg.contains("server.port (from the environment variable RELAYAPI_SERVER_PORT)"),
            "{msg}"
        );
        assert!(msg.contains("fix or unset RELAYAPI_SERVER_PORT"), "{msg}");
        // The mock's variable is not the relay's business.
        assert!(!msg.contains("RELAYAPI_MOCK_API_KEY"), "{msg}");
        // A validation problem of a field set from the environment, too.
        let env = vec![(
            "RELAYAPI_RATE_LIMIT_IP_LIMIT_BURST".to_string(),
            "0".to_string(),
        )];
        let msg = load_str("c.json", "{}", &env).unwrap_err().to_string();
        assert!(
            msg.contains("rate_limit.ip_limit (from the environment variable RELAYAPI_RATE_LIMIT_IP_LIMIT_BURST)"),
            "{msg}"
        );
        // A problem of the file alone names no variable.
        let env = vec![("RELAYAPI_SERVER_PORT".to_string(), "9000".to_string())];
        let msg = load_str("c.json", r#"{"server": {"base_path": "x"}}"#, &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("server.base_path: must start"), "{msg}");
        assert!(!msg.contains("environment variable"), "{msg}");
    }

    #[test]
    fn toml_syntax_errors_say_where_and_yaml_says_what_to_use_instead() {
        let msg = load_str("c.toml", "[server]\nport = 1\nhost = \n", &Env::new())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not valid TOML at line 3 column"), "{msg}");
        let msg = load_str("c.yaml", "server:\n  port: 1\n", &Env::new())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("YAML is not read"), "{msg}");
        assert!(msg.contains("config.toml"), "{msg}");
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("ab", 0), (1, 1));
    }

    #[test]
    fn secrets_never_appear_in_config_errors_and_numeric_secrets_work_from_the_environment() {
        // An all-digit secret from the environment is the string as written.
        let env = vec![(
            "RELAYAPI_LOG_WEB_SECRET".to_string(),
            "98765432109876".to_string(),
        )];
        let c = load_str("c.json", "{}", &env).unwrap();
        assert_eq!(c.log.web.secret.unwrap().expose(), "98765432109876");
        // A wrong type in a secret field is reported without its value.
        let msg = load_str(
            "c.json",
            r#"{"admin": {"api_key": 31415926535}}"#,
            &Env::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("admin.api_key: not a valid value (not shown"),
            "{msg}"
        );
        assert!(!msg.contains("31415926535"), "{msg}");
        // A bad webhook URL is not echoed (its userinfo or query may be a credential).
        let msg = load_str(
            "c.json",
            r#"{"log": {"web": {"enabled": true, "callback_url": "ftp://hookuser:Sekr1tPW@logs.example/in?token=Sekr1tTok"}}}"#,
            &Env::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("log.web.callback_url: not an http(s) URL"),
            "{msg}"
        );
        assert!(!msg.contains("Sekr1t"), "{msg}");
        // Each zero log size names its own field.
        let msg = load_str("c.json", r#"{"log": {"queue_capacity": 0}}"#, &Env::new())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("log.queue_capacity: must be at least 1"),
            "{msg}"
        );
        assert!(!msg.contains("batch_max_records"), "{msg}");
    }

    #[test]
    fn a_webhook_url_with_a_password_is_refused_saying_why_without_it() {
        let text = r#"{"log": {"web": {"enabled": true, "callback_url": "https://hook:Sekr1t@logs.example/in"}}}"#;
        let msg = load_str("c.json", text, &vec![]).unwrap_err().to_string();
        assert!(
            msg.contains("log.web.callback_url: a user or password"),
            "{msg}"
        );
        assert!(!msg.contains("Sekr1t") && !msg.contains("hook:"), "{msg}");
    }

    #[test]
    fn a_section_of_the_wrong_type_never_echoes_the_secret_in_it() {
        for (text, field, fix) in [
            (
                r#"{"providers": {"acme": {"base_url": "https://a.example", "default_headers": "Bearer sk-Sekr1t"}}}"#,
                "providers.acme.default_headers",
                r#"{"anthropic-beta": "#,
            ),
            (
                r#"{"providers": {"acme": {"base_url": "https://a.example", "default_headers": {"x-key": ["Bearer sk-Sekr1t"]}}}}"#,
                "providers.acme.default_headers.x-key",
                "",
            ),
            (
                r#"{"log": {"database": "postgres://u:Sekr1t@h/db"}}"#,
                "log.database",
                r#""connection_string": "#,
            ),
            (
                r#"{"log": {"web": "https://hook:Sekr1t@logs.example/in"}}"#,
                "log.web",
                r#""callback_url": "#,
            ),
            (
                r#"{"log": "postgres://u:Sekr1t@h/db"}"#,
                "log",
                r#""database": "#,
            ),
            (
                r#"{"admin": "Sekr1t-admin-key-0123456789"}"#,
                "admin",
                r#""api_key_sha256": "#,
            ),
            (
                r#"{"admin": 31415926535}"#,
                "admin",
                r#""api_key_sha256": "#,
            ),
            (
                r#"{"credentials": "sk-Sekr1t"}"#,
                "credentials",
                r#""api_keys": ["#,
            ),
            (
                r#"{"credentials": ["sk-Sekr1t"]}"#,
                "credentials",
                r#""api_keys": ["#,
            ),
            (
                r#"{"credentials": {"team": "sk-Sekr1t"}}"#,
                "credentials.team",
                r#""api_keys": ["#,
            ),
            (
                r#"{"credentials": {"team": ["sk-Sekr1t"]}}"#,
                "credentials.team",
                r#""api_keys": ["#,
            ),
            (
                r#"{"credentials": {"team": {"provider": "openai", "api_keys": "sk-Sekr1t"}}}"#,
                "credentials.team.api_keys",
                "a list",
            ),
            (
                r#"{"log": {"web": {"secret": ["Sekr1t"]}}}"#,
                "log.web.secret",
                "not shown",
            ),
            // serde reads a struct from a list, positionally: the secret would
            // land in another field and be echoed by that field's check.
            (
                r#"{"credentials": {"team": ["openai", ["sk-Sekr1t"]]}}"#,
                "credentials.team",
                r#""api_keys": ["#,
            ),
            (
                r#"{"log": {"database": ["postgres://u:Sekr1t@h/db"]}}"#,
                "log.database",
                r#""connection_string": "#,
            ),
            (
                r#"{"log": {"database": [true, "postgres://u:Sekr1t@h/db"]}}"#,
                "log.database",
                r#""connection_string": "#,
            ),
            (
                r#"{"log": [true, {"enabled": true, "type": "postgres://u:Sekr1t@h/db"}]}"#,
                "log",
                r#""database": "#,
            ),
            (
                r#"{"admin": ["127.0.0.1:8841", "Sekr1t-admin-key-0123456789"]}"#,
                "admin",
                r#""api_key_sha256": "#,
            ),
            // A key written where the provider goes.
            (
                r#"{"credentials": {"team": {"provider": "sk-Sekr1t", "api_keys": ["k"]}}}"#,
                "credentials.team.provider",
                "use one of: ",
            ),
        ] {
            let msg = load_str("c.json", text, &vec![]).unwrap_err().to_string();
            assert!(msg.contains(&format!("{field}: ")), "{text}: {msg}");
            assert!(msg.contains("not shown"), "{text}: {msg}");
            assert!(msg.contains(fix), "says what to write: {text}: {msg}");
            assert!(
                !msg.contains("Sekr1t") && !msg.contains("31415926535"),
                "{text}: {msg}"
            );
            assert!(
                !msg.contains("struct "),
                "names no Rust type: {text}: {msg}"
            );
        }
        let msg = load_str(
            "c.toml",
            "[log]\ndatabase = \"postgres://u:Sekr1t@h/db\"\n",
            &vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("log.database: ") && !msg.contains("Sekr1t"),
            "{msg}"
        );
        let env = vec![(
            "RELAYAPI_LOG_DATABASE".to_string(),
            "postgres://u:Sekr1t@h/db".to_string(),
        )];
        let msg = load_str("c.json", "{}", &env).unwrap_err().to_string();
        assert!(
            msg.contains("(from the environment variable RELAYAPI_LOG_DATABASE)"),
            "{msg}"
        );
        assert!(!msg.contains("Sekr1t"), "{msg}");
        // Sections without secrets still quote what was written.
        let msg = load_str("c.json", r#"{"server": "x-visible"}"#, &vec![])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("x-visible"), "{msg}");
        // ...and take no list for an object either.
        let msg = load_str("c.json", r#"{"rate_limit": {"ip_limit": [5, 9]}}"#, &vec![])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("rate_limit.ip_limit: a list is not read here; write an object"),
            "{msg}"
        );
    }

    #[test]
    fn type_errors_say_what_to_write() {
        for (text, needles) in [
            (
                r#"{"log": {"console": {"format": "xml"}}}"#,
                &["log.console", r#"{"format": "json"}"#][..],
            ),
            (
                r#"{"log": {"console": "json"}}"#,
                &["log.console", "true, false"],
            ),
            (
                r#"{"log": {"max_body_bytes": -1}}"#,
                &["log.max_body_bytes", "whole number"],
            ),
            (
                r#"{"log": {"database": {"enabled": true}}}"#,
                &["log.database.type is missing", "\"postgres\""],
            ),
        ] {
            let msg = load_str("c.json", text, &vec![]).unwrap_err().to_string();
            for needle in needles {
                assert!(msg.contains(needle), "missing {needle} in {msg}");
            }
            assert!(!msg.contains("ConsoleSetting"), "{msg}");
        }
    }

    #[test]
    fn log_console_takes_only_its_documented_shapes() {
        use crate::logs::sinks::console::{ConsoleFormat, ConsoleSetting};
        for (text, want) in [
            (r#"{"log": {"console": false}}"#, None),
            (
                r#"{"log": {"console": {"format": "json"}}}"#,
                Some(ConsoleFormat::Json),
            ),
            (
                r#"{"log": {"console": {"format": "pretty"}}}"#,
                Some(ConsoleFormat::Pretty),
            ),
        ] {
            let c = load_str("c.json", text, &vec![]).unwrap();
            assert_eq!(c.log.console.resolve(), want, "{text}");
        }
        let c = load_str("c.toml", "[log.console]\nformat = \"pretty\"\n", &vec![]).unwrap();
        assert_eq!(c.log.console.resolve(), Some(ConsoleFormat::Pretty));
        let env = vec![(
            "RELAYAPI_LOG_CONSOLE".to_string(),
            r#"{"format": "json"}"#.to_string(),
        )];
        let c = load_str("c.json", "{}", &env).unwrap();
        assert_eq!(
            c.log.console,
            ConsoleSetting::Format {
                format: Some(ConsoleFormat::Json)
            }
        );

        // A typo, an empty object or an extra field never silently means "auto".
        for (text, what) in [
            (r#"{"log": {"console": {"formt": "json"}}}"#, "formt"),
            (
                r#"{"log": {"console": {"format": "json", "colour": true}}}"#,
                "colour",
            ),
            (r#"{"log": {"console": {}}}"#, "names no format"),
            (r#"{"log": {"console": {"format": null}}}"#, "null"),
            (r#"{"log": {"console": {"format": 1}}}"#, "1"),
        ] {
            let msg = load_str("c.json", text, &vec![]).unwrap_err().to_string();
            for needle in [
                "log.console",
                what,
                r#"{"format": "pretty"}"#,
                r#"{"format": "json"}"#,
            ] {
                assert!(msg.contains(needle), "missing {needle} in {msg}");
            }
            assert!(!msg.contains("ConsoleSetting"), "{msg}");
        }
        let msg = load_str("c.toml", "[log.console]\nfromat = \"json\"\n", &vec![])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("log.console: unknown field `fromat`"), "{msg}");
        assert!(msg.contains("fix the spelling"), "{msg}");
    }

    #[test]
    fn upstream_ca_file_must_hold_pem_certificates() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tls/ca.pem");
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tls/server.key");
        let env = vec![("RELAYAPI_UPSTREAM_CA_FILE".to_string(), ca.to_string())];
        let c = load_str("c.json", "{}", &env).unwrap();
        assert_eq!(c.upstream.ca_file.as_deref(), Some(Path::new(ca)));
        for (path, why) in [
            ("/nonexistent/ca.pem", "cannot read"),
            (key, "holds no CERTIFICATE block"),
        ] {
            let text = format!(r#"{{"upstream": {{"ca_file": {path:?}}}}}"#);
            let msg = load_str("c.json", &text, &vec![]).unwrap_err().to_string();
            assert!(
                msg.contains("upstream.ca_file") && msg.contains(why),
                "{msg}"
            );
            assert!(
                msg.contains("PEM file of CA certificates"),
                "says the fix: {msg}"
            );
            assert!(!msg.contains("PRIVATE KEY"), "never echoes the file: {msg}");
        }
    }

    #[test]
    fn log_web_ca_file_is_checked_when_the_webhook_is_on() {
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tls/server.key");
        let web = |enabled: bool, path: &str| {
            format!(
                r#"{{"log": {{"web": {{"enabled": {enabled}, "callback_url": "https://localhost/hook", "ca_file": {path:?}}}}}}}"#
            )
        };
        let msg = load_str("c.json", &web(true, key), &vec![])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("log.web.ca_file") && msg.contains("holds no CERTIFICATE block"),
            "{msg}"
        );
        assert!(!msg.contains("PRIVATE KEY"), "never echoes the file: {msg}");
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tls/ca.pem");
        let c = load_str("c.json", &web(true, ca), &vec![]).unwrap();
        assert_eq!(c.log.web.ca_file.as_deref(), Some(Path::new(ca)));
        // Off: not read at all.
        assert!(load_str("c.json", &web(false, "/nonexistent"), &vec![]).is_ok());
    }

    #[test]
    fn credentials_admin_and_policy_are_validated_without_echoing_keys() {
        let ok = r#"{"credentials": {"team": {"provider": "openai", "api_keys": ["sk-canary-aaaa", "sk-canary-bbbb"]}},
                     "admin": {"api_key": "admin-canary-0123456789"},
                     "policy": {"default_token_reservation": 100}}"#;
        let c = load_str("c.json", ok, &vec![]).unwrap();
        assert!(c.admin.enabled());
        assert_eq!(c.credentials["team"].api_keys.len(), 2);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("canary"), "{dbg}");

        let bad = r#"{"credentials": {"team": {"provider": "nope", "api_keys": ["sk-canary-cc\n"]},
                                      "empty": {"provider": "openai", "api_keys": []}},
                      "admin": {"listen": "localhost", "api_key": "short-canary", "api_key_sha256": "zz"},
                      "policy": {"default_token_reservation": 0, "max_tracked_tokens": 0}}"#;
        let msg = load_str("c.json", bad, &vec![]).unwrap_err().to_string();
        for needle in [
            "credentials.team.provider",
            "credentials.team.api_keys[0]",
            "credentials.empty.api_keys",
            "admin.listen",
            "admin: set either",
            "admin.api_key:",
            "admin.api_key_sha256",
            "policy.default_token_reservation",
            "policy.max_tracked_tokens",
        ] {
            assert!(msg.contains(needle), "missing {needle} in {msg}");
        }
        assert!(!msg.contains("canary"), "{msg}");
        // The admin key from the environment (the CLI's own variables are not settings).
        let env = vec![
            (
                "RELAYAPI_ADMIN_API_KEY".to_string(),
                "env-admin-key-0123456789".to_string(),
            ),
            ("RELAYAPI_ADMIN_KEY".to_string(), "for the cli".to_string()),
        ];
        let c = load_str("c.json", "{}", &env).unwrap();
        assert!(c.admin.enabled());
    }

    #[test]
    fn log_sink_settings_are_validated_without_echoing_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/logs.db");
        let text = serde_json::json!({"log": {
            "database": {"enabled": true, "type": "sqlite", "connection_string": missing},
            "parquet": {"enabled": true, "file_path": "", "max_file_age": 0}}})
        .to_string();
        let msg = load_str("c.json", &text, &vec![]).unwrap_err().to_string();
        for needle in [
            "c.json",
            "log.database.connection_string",
            "directory does not exist",
            "log.parquet.file_path",
            "max_file_age",
        ] {
            assert!(msg.contains(needle), "missing {needle} in {msg}");
        }
        let text = r#"{"log": {"database": {"enabled": true, "type": "postgres",
            "connection_string": "postgres://u:hunter2@[bad/db"}}}"#;
        let msg = load_str("c.json", text, &vec![]).unwrap_err().to_string();
        assert!(msg.contains("log.database.connection_string"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let ok = r#"{"log": {"database": {"enabled": true, "type": "mysql",
            "connection_string": "root:pw@tcp(127.0.0.1:3306)/logs"},
            "parquet": {"enabled": true, "file_path": "logs", "max_file_bytes": 1048576}}}"#;
        let c = load_str("c.json", ok, &vec![]).unwrap();
        assert!(c.log.any_sink());
        assert_eq!(c.log.parquet.max_file_age, Duration::from_secs(300));
    }

    #[test]
    fn config_debug_shows_no_webhook_url_or_secret() {
        let text = r#"{"log": {"web": {"enabled": true,
            "callback_url": "https://logs.example/services/Sekr1tPath?token=Sekr1tTok",
            "secret": "Sekr1tHmac"},
            "database": {"enabled": true, "type": "postgres",
            "connection_string": "postgres://u:Sekr1tDb@h/db"}}}"#;
        let c = load_str("c.json", text, &vec![]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("Sekr1t"), "{dbg}");
        assert!(dbg.contains("callback_url: \"[REDACTED]\""), "{dbg}");
        assert!(format!("{:?}", Config::default()).contains("callback_url: \"\""));
    }

    #[test]
    fn the_log_spool_is_on_by_default_and_null_turns_it_off() {
        let c = load_str("c.json", "{}", &vec![]).unwrap();
        assert_eq!(c.log.spool_dir, Some(PathBuf::from("relayapi-spool")));
        let c = load_str(
            "c.json",
            r#"{"log": {"spool_dir": "/var/spool/relayapi"}}"#,
            &vec![],
        )
        .unwrap();
        assert_eq!(c.log.spool_dir, Some(PathBuf::from("/var/spool/relayapi")));
        let c = load_str("c.json", r#"{"log": {"spool_dir": null}}"#, &vec![]).unwrap();
        assert_eq!(c.log.spool_dir, None);
        let env = vec![("RELAYAPI_LOG_SPOOL_DIR".to_string(), "null".to_string())];
        assert_eq!(load_str("c.json", "{}", &env).unwrap().log.spool_dir, None);
        let msg = load_str("c.json", r#"{"log": {"spool_dir": ""}}"#, &vec![])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("c.json") && msg.contains("log.spool_dir"),
            "{msg}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = serde_json::json!({"log": {"spool_dir": file.path()}}).to_string();
        let msg = load_str("c.json", &text, &vec![]).unwrap_err().to_string();
        assert!(
            msg.contains("log.spool_dir") && msg.contains("is a file"),
            "{msg}"
        );
    }

    #[test]
    fn off_switches_documented_as_null_also_take_false_which_toml_can_write() {
        let text = "[rate_limit]\nip_limit = false\n\n[log]\nspool_dir = false\n";
        let c = load_str("c.toml", text, &vec![]).unwrap();
        assert!(c.rate_limit.ip_limit.is_none());
        assert_eq!(c.log.spool_dir, None);
        for off in ["null", "false"] {
            let text = format!(
                r#"{{"rate_limit": {{"ip_limit": {off}}}, "log": {{"spool_dir": {off}}}}}"#
            );
            let c = load_str("c.json", &text, &vec![]).unwrap();
            assert!(c.rate_limit.ip_limit.is_none(), "{off}");
            assert_eq!(c.log.spool_dir, None, "{off}");
            let env = vec![
                ("RELAYAPI_RATE_LIMIT_IP_LIMIT".to_string(), off.to_string()),
                ("RELAYAPI_LOG_SPOOL_DIR".to_string(), off.to_string()),
            ];
            let c = load_str("c.json", "{}", &env).unwrap();
            assert!(c.rate_limit.ip_limit.is_none(), "{off}");
            assert_eq!(c.log.spool_dir, None, "{off}");
        }
        // The values themselves still load, from TOML too.
        let text = "[rate_limit.ip_limit]\nrequests_per_second = 5\nburst = 9\n\n[log]\nspool_dir = \"sp\"\n";
        let c = load_str("c.toml", text, &vec![]).unwrap();
        assert_eq!(c.rate_limit.ip_limit.unwrap().burst, 9);
        assert_eq!(c.log.spool_dir, Some(PathBuf::from("sp")));
        // `true` does not say which value: refused, saying what to write.
        for (text, field) in [
            (
                r#"{"rate_limit": {"ip_limit": true}}"#,
                "rate_limit.ip_limit: ",
            ),
            (
                r#"{"rate_limit": {"ip_limit": 3}}"#,
                "rate_limit.ip_limit: ",
            ),
            (r#"{"log": {"spool_dir": true}}"#, "log.spool_dir: "),
            (
                r#"{"rate_limit": {"ip_limit": {"burst": 0}}}"#,
                "rate_limit.ip_limit: ",
            ),
            (r#"{"log": {"spool_dir": ""}}"#, "log.spool_dir: "),
        ] {
            let msg = load_str("c.json", text, &vec![]).unwrap_err().to_string();
            assert!(msg.contains(field), "{msg}");
            assert!(msg.contains("null (JSON) or false (TOML)"), "{msg}");
        }
        // A typo inside the object is still named with its path.
        let msg = load_str(
            "c.json",
            r#"{"rate_limit": {"ip_limit": {"brust": 1}}}"#,
            &vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("rate_limit.ip_limit.brust: unknown field `brust`"),
            "{msg}"
        );
        let msg = load_str(
            "c.json",
            r#"{"rate_limit": {"ip_limit": {"burst": "x"}}}"#,
            &vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("rate_limit.ip_limit.burst: "), "{msg}");
    }

    #[test]
    fn a_zero_that_would_break_the_relay_is_refused_and_a_meaningful_zero_is_not() {
        for (text, needle) in [
            (
                r#"{"server": {"read_timeout": 0}}"#,
                "server.read_timeout: must be > 0 seconds",
            ),
            (
                r#"{"server": {"read_timeout": "0s"}}"#,
                "server.read_timeout: must be > 0 seconds",
            ),
            (
                r#"{"server": {"max_parsed_body_bytes": 0}}"#,
                "server.max_parsed_body_bytes: must be ≥ 1",
            ),
            (
                r#"{"upstream": {"idle_timeout": 0}}"#,
                "upstream.idle_timeout: must be > 0 seconds",
            ),
        ] {
            let msg = load_str("c.json", text, &vec![]).unwrap_err().to_string();
            assert!(msg.contains(needle), "{text}: {msg}");
            assert!(msg.contains("write e.g."), "says the fix: {text}: {msg}");
        }
        let env = vec![("RELAYAPI_SERVER_READ_TIMEOUT".to_string(), "0".to_string())];
        let msg = load_str("c.json", "{}", &env).unwrap_err().to_string();
        assert!(
            msg.contains("server.read_timeout (from the environment variable RELAYAPI_SERVER_READ_TIMEOUT): must be > 0"),
            "{msg}"
        );
        // Zeros with a meaning: exit at once, no write deadline (never
        // applied anyway), no connection reuse, no preflight caching, no
        // global limit, no batching delay, an empty spool.
        let text = r#"{"server": {"shutdown_grace": 0, "write_timeout": 0},
            "upstream": {"pool_idle_timeout": 0, "pool_max_idle_per_host": 0},
            "cors": {"max_age": 0}, "rate_limit": {"requests_per_second": 0},
            "log": {"batch_max_delay": 0, "spool_max_bytes": 0}}"#;
        let c = load_str("c.json", text, &vec![]).unwrap();
        assert!(c.server.shutdown_grace.is_zero());
        assert!(c.upstream.pool_idle_timeout.is_zero());
    }

    #[test]
    fn unknown_field_is_reported_with_its_path() {
        let err = load_str("c.json", r#"{"server": {"prot": 1}}"#, &vec![]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("server") && msg.contains("prot"), "{msg}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = load_str("c.json", "{\n  \"server\": ,\n}", &vec![]).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn the_default_config_file_is_config_json_or_config_toml_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let (json, toml) = (
            dir.path().join("config.json"),
            dir.path().join("config.toml"),
        );
        assert_eq!(default_file(dir.path()).unwrap(), None);
        std::fs::write(&toml, "").unwrap();
        assert_eq!(default_file(dir.path()).unwrap(), Some(toml.clone()));
        std::fs::write(&json, "{}").unwrap();
        let msg = default_file(dir.path()).unwrap_err().to_string();
        for needle in ["config.json", "config.toml", "--config"] {
            assert!(msg.contains(needle), "missing {needle} in {msg}");
        }
        std::fs::remove_file(&toml).unwrap();
        assert_eq!(default_file(dir.path()).unwrap(), Some(json));
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_default_path_is_not() {
        let p = Path::new("/nonexistent/relayapi-config.json");
        assert!(Config::load(Some(p), true, &vec![]).is_err());
        assert!(Config::load(Some(p), false, &vec![]).is_ok());
    }

    #[test]
    fn legacy_first_block_opt_in_is_off_by_default_and_checked() {
        let off = load_str("c.json", r#"{"legacy_tokens": true}"#, &vec![]).unwrap();
        assert_eq!(
            off.legacy_decoding(),
            Some(relayapi_token::LegacyOptions::default())
        );
        let text = r#"{"legacy_tokens": true, "legacy": {"accept_first_block_fields": true}}"#;
        let on = load_str("c.json", text, &vec![]).unwrap();
        assert!(on.legacy_decoding().unwrap().accept_first_block_fields);
        // Without legacy_tokens nothing is decoded as legacy, opt-in or not.
        let text = r#"{"legacy": {"accept_first_block_fields": true}}"#;
        assert_eq!(
            load_str("c.json", text, &vec![]).unwrap().legacy_decoding(),
            None
        );
        let env = vec![(
            "RELAYAPI_LEGACY_ACCEPT_FIRST_BLOCK_FIELDS".to_string(),
            "true".to_string(),
        )];
        assert!(
            load_str("c.json", r#"{"legacy_tokens": true}"#, &env)
                .unwrap()
                .legacy
                .accept_first_block_fields
        );

        let text = r#"{"legacy_tokens": true, "legacy": {"accept_first_block_fields": "yes"}}"#;
        let msg = load_str("bad.json", text, &vec![]).unwrap_err().to_string();
        assert!(msg.contains("bad.json"), "{msg}");
        assert!(msg.contains("legacy.accept_first_block_fields: "), "{msg}");
        assert!(msg.contains("write true or false"), "{msg}");
        let text = r#"{"legacy": {"accept_first_block_field": true}}"#;
        let msg = load_str("bad.json", text, &vec![]).unwrap_err().to_string();
        assert!(msg.contains("accept_first_block_fields"), "{msg}");
        assert!(msg.contains("remove it or fix the spelling"), "{msg}");
    }
}
