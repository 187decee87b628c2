//! The command line: `serve` (default), `gen-config`, `token`, `check-config`,
//! and `admin` (a client of the admin API: `revoke`, `token`, `usage`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use relayapi_token::{Claims, RaiConfig, SecretString, V2Key};

use crate::config::{self, Config};
use crate::http::AppState;
use crate::keyfile;
use crate::providers::Registry;
use crate::usage::UsageStore;

#[derive(Parser, Debug)]
#[command(
    name = "relayapi",
    version,
    about = "RelayAPI: let front ends call AI providers with short-lived encrypted tokens instead of API keys."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The command to run, with the options given before it folded in:
    /// `relayapi --config X check-config` checks X, as `relayapi
    /// check-config --config X` does (the earlier server's `-config X -d
    /// check-config` spelling comes out this way too). An option given on
    /// both sides takes the subcommand's value.
    pub fn into_command(self) -> Command {
        let top = self.serve;
        match self.command {
            None => Command::Serve(top),
            Some(Command::Serve(sub)) => Command::Serve(ServeArgs {
                config: sub.config.or(top.config),
                rai: sub.rai.or(top.rai),
                log_format: if sub.log_format == LogFormat::default() {
                    top.log_format
                } else {
                    sub.log_format
                },
                debug: sub.debug || top.debug,
                allow_insecure_sample_key: sub.allow_insecure_sample_key
                    || top.allow_insecure_sample_key,
            }),
            Some(Command::CheckConfig { config, rai }) => Command::CheckConfig {
                config: config.or(top.config),
                rai: rai.or(top.rai),
            },
            Some(Command::Token(mut t)) => {
                t.rai = t.rai.or(top.rai);
                Command::Token(t)
            }
            Some(other) => other,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay (the default when no command is given).
    Serve(ServeArgs),
    /// Print a fresh .rai client config with new random key material.
    GenConfig {
        /// Public URL scheme+host of the relay, as front ends will reach it.
        #[arg(long, default_value = "http://localhost")]
        host: String,
        /// Public port of the relay (1-65535).
        #[arg(long, default_value_t = 8840, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
    /// Mint a token (or a ready base URL) from the command line.
    Token(Box<TokenArgs>),
    /// Talk to a running relay's admin API (revoke tokens, read usage).
    Admin(AdminArgs),
    /// Validate the config and .rai files and explain every problem.
    CheckConfig {
        /// Server config to check. Default: ./config.json or ./config.toml if present (not both), else built-in defaults.
        #[arg(long, env = "RELAYAPI_CONFIG")]
        config: Option<PathBuf>,
        /// A .rai file or a directory of them. Default: ./default.rai.
        #[arg(long, env = "RELAYAPI_RAI")]
        rai: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Server config (JSON, or TOML when it ends in .toml). Default: ./config.json or ./config.toml if present (not both), else built-in defaults.
    #[arg(long, env = "RELAYAPI_CONFIG")]
    pub config: Option<PathBuf>,
    /// A .rai file or a directory of them. Default: ./default.rai, generated when absent.
    #[arg(long, env = "RELAYAPI_RAI")]
    pub rai: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "RELAYAPI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Debug-level logs (same as `server.debug`); RELAYAPI_LOG or RUST_LOG, when set, decide instead.
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Accept the sample key published with the earlier RelayAPI (never in production).
    #[arg(long)]
    pub allow_insecure_sample_key: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The .rai file whose key signs the token. Default: ./default.rai.
    #[arg(long, env = "RELAYAPI_RAI")]
    pub rai: Option<PathBuf>,
    /// Provider id or alias (openai, anthropic, gemini, ...).
    #[arg(long)]
    pub provider: String,
    /// The provider API key the token carries (encrypted).
    #[arg(
        long,
        required_unless_present = "key_ref",
        conflicts_with = "key_ref",
        value_parser = secret
    )]
    pub api_key: Option<SecretString>,
    /// Instead of --api-key: the name of a credential in the relay's config
    /// (`credentials`); the token then carries no provider key.
    #[arg(long)]
    pub key_ref: Option<String>,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub expire: Duration,
    /// Most calls the token may make (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_calls: Option<u64>,
    /// Force this model on every request.
    #[arg(long)]
    pub model: Option<String>,
    /// Allowed models, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// End-user id, for logs.
    #[arg(long)]
    pub sub: Option<String>,
    /// Free text for logs.
    #[arg(long)]
    pub ext_info: Option<String>,
    /// Allowed browser origins, comma-separated (`https://app.example.com`, `*.example.com`).
    #[arg(long, value_delimiter = ',')]
    pub origins: Vec<String>,
    /// Allowed client networks, comma-separated (`203.0.113.0/24`, `2001:db8::/32`, `198.51.100.7`).
    #[arg(long, value_delimiter = ',')]
    pub ips: Vec<String>,
    /// Allowed path prefixes after the base path, comma-separated (`chat/completions`).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Allowed HTTP methods, comma-separated (`POST,GET`).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Per-token rate limit, requests per second.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rps: Option<u64>,
    /// Burst for --rps (default: the rps).
    #[arg(long, requires = "rps", value_parser = clap::value_parser!(u64).range(1..))]
    pub burst: Option<u64>,
    /// Most requests of this token in flight at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: Option<u64>,
    /// Budget in LLM tokens (prompt + completion over all calls).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens: Option<u64>,
    /// Largest request body, bytes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes: Option<u64>,
    /// Print the ready base URL for an SDK instead of the bare token.
    #[arg(long)]
    pub url: bool,
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        env = "RELAYAPI_ADMIN_URL",
        default_value = "http://127.0.0.1:8841",
        global = true
    )]
    pub admin_url: String,
    /// The admin key (prefer the environment variable over the flag: flags show in `ps`).
    #[arg(
        long,
        env = "RELAYAPI_ADMIN_KEY",
        hide_env_values = true,
        global = true,
        value_parser = secret
    )]
    pub admin_key: Option<SecretString>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Revoke a token by its id (jti); the relay refuses it from now on.
    Revoke {
        /// The token id; it may start with `-` (base64url), so it is never
        /// taken for a flag.
        #[arg(allow_hyphen_values = true)]
        jti: String,
    },
    /// Show a token's usage: calls, LLM tokens, first/last use, revoked.
    Token {
        #[arg(allow_hyphen_values = true)]
        jti: String,
    },
    /// Usage totals for one end user (--sub), or for all of them.
    Usage {
        #[arg(long)]
        sub: Option<String>,
    },
}

/// A key given on the command line, held as a [`SecretString`] so the
/// parsed arguments' `Debug` never shows it.
fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 30m, 1h or 7d"))?;
    if d.as_secs() == 0 {
        return Err("the expiry must be at least 1s".into());
    }
    Ok(d)
}

/// The config file to load and whether it must exist: the one named by
/// `--config`/`RELAYAPI_CONFIG`, else `config.json` or `config.toml` in the
/// working directory ([`config::default_file`]), else none (built-in defaults).
fn config_source(explicit: Option<&Path>) -> Result<(Option<PathBuf>, bool), config::ConfigError> {
    match explicit {
        Some(p) => Ok((Some(p.to_path_buf()), true)),
        None => Ok((config::default_file(Path::new(""))?, false)),
    }
}

fn default_path(explicit: Option<&Path>, default: &str) -> (PathBuf, bool) {
    match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(default), false),
    }
}

/// Rewrites the earlier Go server's flags (`-config X`, `-rai X`, `-d`,
/// `-debug`, `-gen[=host:port]`) into this CLI's, with a hint on stderr.
pub fn translate_legacy_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut translated = false;
    for (i, arg) in args.into_iter().enumerate() {
        let Some(text) = arg.to_str().filter(|_| i > 0) else {
            out.push(arg);
            continue;
        };
        let (flag, value) = match text.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (text, None),
        };
        let mut push_flag = |new: &str| {
            out.push(new.into());
            if let Some(v) = value {
                out.push(v.into());
            }
        };
        match flag {
            "-config" => push_flag("--config"),
            "-rai" => push_flag("--rai"),
            "-debug" => push_flag("--debug"),
            "-gen" => {
                out.push("gen-config".into());
                if let Some((host, port)) = value.and_then(|v| v.rsplit_once(':')) {
                    let host = if host.contains("://") {
                        host.to_string()
                    } else {
                        format!("http://{host}")
                    };
                    out.extend(["--host".into(), host.into(), "--port".into(), port.into()]);
                }
            }
            _ => {
                out.push(arg);
                continue;
            }
        }
        translated = true;
    }
    if translated {
        eprintln!("note: single-dash flags of the earlier RelayAPI are accepted; the new forms are --config, --rai, --debug and `relayapi gen-config --host H --port P`");
    }
    out
}

/// The process log filter (what is logged to stderr, by target and level):
/// `RELAYAPI_LOG`, else `RUST_LOG`, else `info` (`relayapi=debug,info`
/// with `debug`). Both variables take the same syntax; `RELAYAPI_LOG` is the
/// relay's own, so it wins, and one that does not parse is an error (the
/// operator set it for this relay on purpose), while a bad `RUST_LOG`, which
/// may be meant for other programs, falls back to the default as before.
/// Empty counts as unset.
pub fn log_filter(
    relayapi_log: Option<&str>,
    rust_log: Option<&str>,
    debug: bool,
) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    use tracing_subscriber::EnvFilter;
    if let Some(filter) = relayapi_log.filter(|f| !f.trim().is_empty()) {
        return EnvFilter::try_new(filter).map_err(|e| {
            anyhow::anyhow!(
                "environment variable RELAYAPI_LOG: not a log filter ({e}); write levels like \"info\" or \"relayapi=debug,info\" (the RUST_LOG syntax), or unset it"
            )
        });
    }
    let default = if debug { "relayapi=debug,info" } else { "info" };
    Ok(rust_log
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default)))
}

/// [`log_filter`] from the process environment.
fn env_log_filter(debug: bool) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let var = |name| std::env::var(name).ok();
    log_filter(
        var("RELAYAPI_LOG").as_deref(),
        var("RUST_LOG").as_deref(),
        debug,
    )
}

pub fn init_tracing(format: LogFormat, debug: bool) -> anyhow::Result<()> {
    let filter = env_log_filter(debug)?;
    // Colours only for a person at a terminal, never into files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    Ok(())
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (config_path, explicit) = config_source(args.config.as_deref())?;
    let config = Config::load(config_path.as_deref(), explicit, &config::process_env())?;
    init_tracing(args.log_format, config.server.debug || args.debug)?;
    let (rai_path, rai_explicit) = default_path(args.rai.as_deref(), "default.rai");
    // A generated .rai names the public port SDKs should use; with port 0
    // (pick a free one) there is none yet, so it names the default.
    let public_port = if config.server.port == 0 {
        8840
    } else {
        config.server.port
    };
    let allow_sample = args.allow_insecure_sample_key;
    let keys = keyfile::load(&rai_path, !rai_explicit, public_port, allow_sample)?;
    if let Some(p) = &keys.generated {
        tracing::info!(path = %p.display(), "no .rai found: generated a fresh client config; give this file to your backend (keep it secret)");
    }
    for (file, kid) in &keys.files {
        tracing::info!(file = %file.display(), kid = %kid, "loaded client config");
    }
    let usage = match config.usage.store.as_str() {
        "memory" => UsageStore::memory(),
        _ => UsageStore::open_sqlite(&config.usage.path)
            .with_context(|| format!("usage.path: cannot open {}", config.usage.path.display()))?,
    };
    let addr = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| {
            format!("server.port: cannot listen on {addr}; pick a free port or stop what uses it")
        })?;
    let local = listener.local_addr()?;
    // Bound before "listening" is printed: a relay that says it is up has
    // every listener it was configured with.
    let admin_key = crate::admin::AdminKey::from_settings(&config.admin);
    let admin_listener = match &admin_key {
        Some(_) => {
            let listen = config.admin.listen.clone();
            let l = tokio::net::TcpListener::bind(&listen).await.with_context(|| {
                format!("admin.listen: cannot listen on {listen}; pick a free port or stop what uses it")
            })?;
            Some(l)
        }
        None => None,
    };
    {
        // The first stdout line is the contract scripts rely on.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
    }
    tracing::info!(addr = %local, base_path = %config.server.base_path, "relay ready");
    if let Some(l) = &admin_listener {
        tracing::info!(addr = %l.local_addr()?, "admin API ready");
    }
    if config.legacy_tokens {
        tracing::warn!(
            "legacy_tokens is on: tokens of the earlier RelayAPI (AES-CBC, query-string URLs) are accepted. \
             They cannot be made tamper-proof; move backends to v2 tokens and turn this off (docs/migration.md)"
        );
    }
    let state = Arc::new(AppState::new(config, keys.keys, usage));
    crate::http::spawn_background(&state);
    let admin = match (admin_listener, admin_key) {
        (Some(l), Some(key)) => {
            let state = state.clone();
            Some(tokio::spawn(crate::admin::serve(
                l,
                state,
                key,
                std::future::pending(),
            )))
        }
        _ => None,
    };
    if rai_path.is_dir() {
        let reload_state = state.clone();
        tokio::spawn(keyfile::watch_dir(
            rai_path,
            std::time::Duration::from_secs(2),
            allow_sample,
            move |k| {
                reload_state.keys.replace(k);
            },
        ));
    }
    crate::server::serve(listener, state, crate::server::shutdown_signal()).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}

pub fn gen_config(host: &str, port: u16) -> anyhow::Result<()> {
    if let Err(problem) = relayapi_token::rai::check_host(host) {
        bail!("--host: {problem}");
    }
    let rai = RaiConfig::generate(host, port);
    println!("{}", rai.to_json_pretty());
    Ok(())
}

pub fn token(a: TokenArgs) -> anyhow::Result<()> {
    let rai_path = a.rai.unwrap_or_else(|| PathBuf::from("default.rai"));
    if rai_path.is_dir() {
        bail!(
            "--rai (or RELAYAPI_RAI): {} is a directory; a token is signed by one key: name its .rai file",
            rai_path.display()
        );
    }
    let rai = keyfile::read_rai(&rai_path)?;
    let registry = Registry::new(&Default::default());
    if registry.get(&a.provider).is_none() {
        bail!(
            "--provider: unknown provider {:?}; built-in ids: {}",
            a.provider,
            registry.ids().join(", ")
        );
    }
    let now = crate::auth::unix_now();
    let ttl = i64::try_from(a.expire.as_secs()).unwrap_or(i64::MAX / 2);
    let mut claims = match (a.api_key, a.key_ref) {
        (Some(key), _) if key.expose().trim().is_empty() => bail!("--api-key: must not be empty"),
        (Some(key), _) => Claims::new(&a.provider, key, ttl, now),
        (None, Some(name)) if name.trim().is_empty() => bail!("--key-ref: must not be empty"),
        (None, Some(name)) => Claims::new_key_ref(&a.provider, name, ttl, now),
        (None, None) => bail!("give --api-key KEY or --key-ref NAME"),
    };
    claims.max_calls = a.max_calls;
    claims.model = a.model;
    claims.models = (!a.models.is_empty()).then_some(a.models);
    claims.sub = a.sub;
    claims.ext_info = a.ext_info;
    let methods: Vec<String> = a
        .methods
        .iter()
        .map(|m| m.trim().to_ascii_uppercase())
        .collect();
    use relayapi_token::scope;
    claims.origins = scope_flag(
        "--origins",
        a.origins,
        |s| scope::OriginPattern::parse(s).is_some(),
        "an origin like https://app.example.com or a wildcard like *.example.com",
    )?;
    if let Some((item, v4)) = a.ips.iter().find_map(|s| {
        let v4 = scope::IpNetwork::parse(s.trim())?.ipv4_equivalent()?;
        Some((s, v4))
    }) {
        bail!("--ips: {item:?} is an IPv4-mapped IPv6 network, which never matches (clients are matched as IPv4); write {v4}");
    }
    claims.ips = scope_flag(
        "--ips",
        a.ips,
        |s| scope::IpNetwork::parse(s).is_some(),
        "an IP address or a CIDR network with zero host bits, like 203.0.113.0/24",
    )?;
    claims.paths = scope_flag(
        "--paths",
        a.paths,
        scope::is_path_prefix,
        "a path below the base path: segments of letters, digits and -._~!$&'()*+,;=:@ joined by '/', with no '/' at either end, no empty, '.' or '..' segment and no '%', like chat/completions",
    )?;
    claims.methods = scope_flag(
        "--methods",
        methods,
        scope::is_method,
        "an HTTP method like POST",
    )?;
    claims.rps = a.rps;
    claims.burst = a.burst;
    claims.concurrency = a.concurrency;
    claims.max_tokens = a.max_tokens;
    claims.max_body_bytes = a.max_body_bytes;
    let token = relayapi_token::encode_v2(&V2Key::from_rai(&rai), &claims)?;
    if a.url {
        println!("{}{}/", rai.base_url(), token);
    } else {
        println!("{token}");
    }
    Ok(())
}

/// A list flag of a policy claim: every item valid and distinct, or an
/// error naming the flag and the item.
fn scope_flag(
    flag: &str,
    items: Vec<String>,
    valid: impl Fn(&str) -> bool,
    expected: &str,
) -> anyhow::Result<Option<Vec<String>>> {
    let items: Vec<String> = items.into_iter().map(|s| s.trim().to_string()).collect();
    if items.is_empty() {
        return Ok(None);
    }
    for (i, item) in items.iter().enumerate() {
        if !valid(item) {
            bail!("{flag}: {item:?} is not {expected}");
        }
        if items[..i].contains(item) {
            bail!("{flag}: {item:?} is listed twice");
        }
    }
    Ok(Some(items))
}

/// `relayapi admin …`: one request to the admin API, the JSON answer on
/// stdout; an error answer becomes the error message (and exit status 1).
pub async fn admin(a: AdminArgs) -> anyhow::Result<()> {
    let Some(key) = a.admin_key.filter(|k| !k.is_empty()) else {
        bail!("--admin-key: give the admin key (or set RELAYAPI_ADMIN_KEY)");
    };
    let base = a.admin_url.trim_end_matches('/');
    let (method, path) = match &a.command {
        AdminCommand::Revoke { jti } => (
            http::Method::POST,
            format!("/admin/tokens/{}/revoke", encode(jti)),
        ),
        AdminCommand::Token { jti } => {
            (http::Method::GET, format!("/admin/tokens/{}", encode(jti)))
        }
        AdminCommand::Usage { sub: Some(sub) } => (
            http::Method::GET,
            format!("/admin/usage?sub={}", encode(sub)),
        ),
        AdminCommand::Usage { sub: None } => (http::Method::GET, "/admin/usage".to_string()),
    };
    let url = format!("{base}{path}");
    let uri: http::Uri = url.parse().with_context(|| {
        format!("--admin-url: {base:?} is not a URL like http://127.0.0.1:8841")
    })?;
    let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .context("--admin-key: not a valid header value")?;
    auth.set_sensitive(true);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, auth)
        .body(crate::proxy::full(bytes::Bytes::new()))
        .context("building the admin request")?;
    let client = crate::proxy::build_client(&crate::config::UpstreamSettings::default());
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .context("the admin API did not answer within 30 s")?
        .with_context(|| {
            format!("cannot reach the admin API at {base}; is the relay running with an admin key?")
        })?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .context("reading the admin API's answer")?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !status.is_success() {
        let msg = value["error"]["message"].as_str().unwrap_or("no message");
        let code = value["error"]["code"].as_str().unwrap_or("unknown");
        bail!("admin API answered {status}: {code}: {msg}");
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    Ok(())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

pub fn check_config(config: Option<PathBuf>, rai: Option<PathBuf>) -> anyhow::Result<()> {
    let mut failed = false;
    let loaded = config_source(config.as_deref()).and_then(|(path, explicit)| {
        Config::load(path.as_deref(), explicit, &config::process_env()).map(|c| (path, c))
    });
    match loaded {
        Ok((config_path, c)) => {
            let source = match config_path.filter(|p| p.exists()) {
                Some(p) => p.display().to_string(),
                None => "built-in defaults".into(),
            };
            println!(
                "ok: {source} (listen {}:{}, base path {})",
                c.server.host, c.server.port, c.server.base_path
            );
            // Which log sinks would start (never the connection string or
            // the webhook URL: they may hold credentials).
            let log = &c.log;
            let mut sinks = Vec::new();
            if let Some(format) = log.console.resolve() {
                sinks.push(format!(
                    "console ({})",
                    format!("{format:?}").to_lowercase()
                ));
            }
            if log.web.enabled {
                sinks.push("webhook".to_string());
            }
            if log.database.enabled {
                sinks.push(format!("database ({})", log.database.kind));
            }
            if log.parquet.enabled {
                sinks.push(format!("parquet ({})", log.parquet.file_path.display()));
            }
            println!(
                "log sinks: {}{}",
                if sinks.is_empty() {
                    "none".to_string()
                } else {
                    sinks.join(", ")
                },
                if log.bodies { "; bodies captured" } else { "" }
            );
            if c.usage.store == "sqlite" {
                check_usage_path(&source, &c.usage.path, &mut failed);
            }
            let registry = Registry::new(&c.providers);
            for id in registry.ids() {
                if registry.get(id).is_some_and(|p| !p.configured) {
                    println!("note: provider {id} needs more settings before tokens can use it (see docs/providers.md)");
                }
            }
        }
        Err(e) => {
            failed = true;
            eprint!("{e}");
        }
    }
    // `serve` would refuse to start with it.
    if let Err(e) = env_log_filter(false) {
        failed = true;
        eprintln!("{e}");
    }
    let (rai_path, explicit_rai) = default_path(rai.as_deref(), "default.rai");
    if !explicit_rai && !rai_path.exists() {
        // What `serve` does on its first run: nothing to check yet.
        println!(
            "note: {} does not exist yet; `relayapi serve` generates it on first run",
            rai_path.display()
        );
    } else {
        check_key_files(&rai_path, &mut failed);
    }
    if failed {
        bail!("configuration has problems (listed above)");
    }
    Ok(())
}

/// `check-config`'s usage store part: can `serve` open (or create) the
/// file? Nothing is created or locked: a running relay is not disturbed.
fn check_usage_path(source: &str, path: &Path, failed: &mut bool) {
    let problem = if path.is_dir() {
        Some("is a directory; name a file, e.g. \"data/usage.db\"".to_string())
    } else if path.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .err()
            .map(|e| format!("cannot be opened for writing ({e}); fix its permissions or choose another usage.path"))
    } else {
        // The nearest existing ancestor must be a directory we could create in.
        let ancestor = path
            .ancestors()
            .skip(1)
            .find(|a| a.as_os_str().is_empty() || a.exists())
            .map(|a| {
                if a.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    a
                }
            });
        match ancestor {
            Some(dir) if !dir.is_dir() => Some(format!(
                "cannot be created: {} is not a directory; choose another usage.path",
                dir.display()
            )),
            Some(dir) => match std::fs::metadata(dir) {
                Ok(m) if m.permissions().readonly() => Some(format!(
                    "cannot be created: {} is read-only; choose another usage.path",
                    dir.display()
                )),
                Ok(_) => None,
                Err(e) => Some(format!(
                    "cannot be created ({e}); choose another usage.path"
                )),
            },
            None => None,
        }
    };
    match problem {
        Some(p) => {
            *failed = true;
            eprintln!("{source}: usage.path: {} {p}", path.display());
        }
        None if path.exists() => println!("ok: usage store {}", path.display()),
        None => println!("ok: usage store {} (created on first run)", path.display()),
    }
}

/// `check-config`'s key file part.
fn check_key_files(rai_path: &Path, failed: &mut bool) {
    match keyfile::load(rai_path, false, 0, false) {
        Ok(k) => {
            for (file, kid) in k.files {
                println!("ok: {} (kid {kid})", file.display());
            }
        }
        Err(e) => {
            *failed = true;
            eprintln!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn translate(args: &[&str]) -> Vec<String> {
        translate_legacy_args(args.iter().map(|a| (*a).into()).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn relayapi_log_is_the_log_filter_ahead_of_rust_log() {
        let shown = |r: Option<&str>, rust: Option<&str>, debug: bool| {
            log_filter(r, rust, debug).unwrap().to_string()
        };
        assert_eq!(
            shown(Some("relayapi=trace"), Some("warn"), true),
            "relayapi=trace"
        );
        assert_eq!(shown(None, Some("warn"), true), "warn");
        assert_eq!(shown(Some(""), None, false), "info");
        assert!(shown(None, None, true).contains("relayapi=debug"));
        // A bad RUST_LOG falls back to the default, as it always did.
        assert_eq!(shown(None, Some("relayapi=loud"), false), "info");
        let msg = log_filter(Some("relayapi=loud"), Some("info"), false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("environment variable RELAYAPI_LOG"), "{msg}");
        assert!(msg.contains("\"relayapi=debug,info\""), "{msg}");
    }

    #[test]
    fn options_before_the_subcommand_are_not_lost() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let args = translate_legacy_args(args.iter().map(Into::into).collect());
            Cli::try_parse_from(args).unwrap().into_command()
        };
        let path = |p: &str| Some(PathBuf::from(p));
        match parse(&[
            "relayapi",
            "--config",
            "c.json",
            "--rai",
            "k.rai",
            "check-config",
        ]) {
            Command::CheckConfig { config, rai } => {
                assert_eq!((config, rai), (path("c.json"), path("k.rai")));
            }
            other => panic!("{other:?}"),
        }
        // The earlier server's spelling.
        match parse(&["relayapi", "-config", "c.json", "-d", "check-config"]) {
            Command::CheckConfig { config, .. } => assert_eq!(config, path("c.json")),
            other => panic!("{other:?}"),
        }
        match parse(&[
            "relayapi", "--config", "c.json", "--debug", "serve", "--rai", "s.rai",
        ]) {
            Command::Serve(s) => {
                assert_eq!(
                    (s.config, s.rai, s.debug),
                    (path("c.json"), path("s.rai"), true)
                );
            }
            other => panic!("{other:?}"),
        }
        // (`token` with a top-level --rai: tests/config_cli.rs.)
        // Given on both sides, the subcommand's wins.
        match parse(&[
            "relayapi",
            "--config",
            "top.json",
            "check-config",
            "--config",
            "sub.json",
        ]) {
            Command::CheckConfig { config, .. } => assert_eq!(config, path("sub.json")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_parsed_command_line_never_shows_a_key_in_debug() {
        for args in [
            &[
                "relayapi",
                "token",
                "--provider",
                "openai",
                "--api-key",
                "sk-canary-1234",
            ][..],
            &[
                "relayapi",
                "admin",
                "--admin-key",
                "admin-canary-5678",
                "usage",
            ],
            &[
                "relayapi",
                "admin",
                "revoke",
                "jti-1",
                "--admin-key=admin-canary-5678",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let dbg = format!("{cli:?}");
            assert!(!dbg.contains("canary"), "{dbg}");
            assert!(dbg.contains("[REDACTED]"), "{dbg}");
            // The value itself still reaches the code that sends it.
            let key = match cli.command {
                Some(Command::Token(t)) => t.api_key,
                Some(Command::Admin(a)) => a.admin_key,
                _ => None,
            };
            assert!(key.unwrap().expose().contains("canary"));
        }
    }

    #[test]
    fn earlier_single_dash_flags_are_translated() {
        assert_eq!(
            translate(&["relayapi", "-config", "c.json", "-rai=keys", "-d"]),
            ["relayapi", "--config", "c.json", "--rai", "keys", "-d"]
        );
        assert_eq!(translate(&["relayapi", "-debug"]), ["relayapi", "--debug"]);
        assert_eq!(
            translate(&["relayapi", "-gen=relay.example.com:9000"]),
            [
                "relayapi",
                "gen-config",
                "--host",
                "http://relay.example.com",
                "--port",
                "9000"
            ]
        );
        assert_eq!(translate(&["relayapi", "-gen"]), ["relayapi", "gen-config"]);
        let parsed =
            Cli::try_parse_from(translate(&["relayapi", "-config", "c.json", "-d"])).unwrap();
        assert!(parsed.serve.debug);
        assert_eq!(parsed.serve.config.as_deref(), Some(Path::new("c.json")));
    }
}
