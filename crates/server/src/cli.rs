//! The command line: `serve` (default), `gen-config`, `token`, `check-config`.

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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay (the default when no command is given).
    Serve(ServeArgs),
    /// Print a fresh .rai client config with new random key material.
    GenConfig {
        /// Public URL scheme+host of the relay, as front ends will reach it.
        #[arg(long, default_value = "http://localhost")]
        host: String,
        /// Public port of the relay.
        #[arg(long, default_value_t = 8840)]
        port: u16,
    },
    /// Mint a token (or a ready base URL) from the command line.
    Token(TokenArgs),
    /// Validate the config and .rai files and explain every problem.
    CheckConfig {
        #[arg(long, env = "RELAYAPI_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "RELAYAPI_RAI")]
        rai: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Server config (JSON, or TOML when it ends in .toml). Default: ./config.json if present, else built-in defaults.
    #[arg(long, env = "RELAYAPI_CONFIG")]
    pub config: Option<PathBuf>,
    /// A .rai file or a directory of them. Default: ./default.rai, generated when absent.
    #[arg(long, env = "RELAYAPI_RAI")]
    pub rai: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "RELAYAPI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Debug-level logs (same as `server.debug`).
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
    /// The .rai file whose key signs the token.
    #[arg(long, default_value = "default.rai")]
    pub rai: PathBuf,
    /// Provider id or alias (openai, anthropic, gemini, ...).
    #[arg(long)]
    pub provider: String,
    /// The provider API key the token carries (encrypted).
    #[arg(long)]
    pub api_key: String,
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
    /// Print the ready base URL for an SDK instead of the bare token.
    #[arg(long)]
    pub url: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 30m, 1h or 7d"))?;
    if d.as_secs() == 0 {
        return Err("the expiry must be at least 1s".into());
    }
    Ok(d)
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

pub fn init_tracing(format: LogFormat, debug: bool) {
    let default = if debug { "relayapi=debug,info" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal, never into files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (config_path, explicit) = default_path(args.config.as_deref(), "config.json");
    let config = Config::load(Some(&config_path), explicit, &config::process_env())?;
    init_tracing(args.log_format, config.server.debug || args.debug);
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
    {
        // The first stdout line is the contract scripts rely on.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
    }
    tracing::info!(addr = %local, base_path = %config.server.base_path, "relay ready");
    if config.legacy_tokens {
        tracing::warn!(
            "legacy_tokens is on: tokens of the earlier RelayAPI (AES-CBC, query-string URLs) are accepted. \
             They cannot be made tamper-proof; move backends to v2 tokens and turn this off (docs/migration.md)"
        );
    }
    let state = Arc::new(AppState::new(config, keys.keys, usage));
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
    Ok(())
}

pub fn gen_config(host: &str, port: u16) -> anyhow::Result<()> {
    let rai = RaiConfig::generate(host, port);
    println!("{}", rai.to_json_pretty());
    Ok(())
}

pub fn token(a: TokenArgs) -> anyhow::Result<()> {
    let rai = keyfile::read_rai(&a.rai)?;
    let registry = Registry::new(&Default::default());
    if registry.get(&a.provider).is_none() {
        bail!(
            "--provider: unknown provider {:?}; built-in ids: {}",
            a.provider,
            registry.ids().join(", ")
        );
    }
    if a.api_key.trim().is_empty() {
        bail!("--api-key: must not be empty");
    }
    let now = crate::auth::unix_now();
    let ttl = i64::try_from(a.expire.as_secs()).unwrap_or(i64::MAX / 2);
    let mut claims = Claims::new(&a.provider, SecretString::new(a.api_key), ttl, now);
    claims.max_calls = a.max_calls;
    claims.model = a.model;
    claims.models = (!a.models.is_empty()).then_some(a.models);
    claims.sub = a.sub;
    claims.ext_info = a.ext_info;
    let token = relayapi_token::encode_v2(&V2Key::from_rai(&rai), &claims)?;
    if a.url {
        println!("{}{}/", rai.base_url(), token);
    } else {
        println!("{token}");
    }
    Ok(())
}

pub fn check_config(config: Option<PathBuf>, rai: Option<PathBuf>) -> anyhow::Result<()> {
    let (config_path, explicit) = default_path(config.as_deref(), "config.json");
    let mut failed = false;
    match Config::load(Some(&config_path), explicit, &config::process_env()) {
        Ok(c) => {
            let source = if config_path.exists() {
                config_path.display().to_string()
            } else {
                "built-in defaults".into()
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
    let (rai_path, _) = default_path(rai.as_deref(), "default.rai");
    match keyfile::load(&rai_path, false, 0, false) {
        Ok(k) => {
            for (file, kid) in k.files {
                println!("ok: {} (kid {kid})", file.display());
            }
        }
        Err(e) => {
            failed = true;
            eprintln!("{e}");
        }
    }
    if failed {
        bail!("configuration has problems (listed above)");
    }
    Ok(())
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
