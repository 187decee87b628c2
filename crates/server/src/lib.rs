//! RelayAPI server: a streaming relay between front ends holding capability
//! tokens and AI providers holding the real keys.
//!
//! Layout, one module per concern (the request path is in [`http`], top to
//! bottom):
//! - [`config`]: `config.json`/TOML + `RELAYAPI_*` env, validated with
//!   messages that name file, field and fix;
//! - [`keyfile`]: `.rai` client configs → the keyring;
//! - [`auth`]: where the token is, and decoding it ([`claims_cache`]:
//!   decoded tokens reused by their text);
//! - [`limits`], [`client_ip`]: traffic limits before any crypto;
//! - [`policy`]: per-token scopes and limits (origins, ips, paths, methods,
//!   rps, concurrency, body size, LLM-token budget);
//! - [`credentials`]: provider keys held by the relay (`key_ref` tokens);
//! - [`usage`]: the store for `max_calls`, budgets, revocations and usage
//!   statistics (SQLite file or memory);
//! - [`providers`]: the registry (compiled-in data + config overrides);
//! - [`proxy`]: header rules, model policy, streaming bodies;
//!   [`upstream`]: the per-worker connection pools to the providers;
//! - [`cors`], [`error`]: browser access and the one error → HTTP mapping;
//! - [`admin`]: the admin API (revocation, usage) on its own listener;
//! - [`server`]: worker threads, listener and graceful shutdown;
//!   [`timer`]: the coarse per-worker timer for per-request timeouts;
//!   [`alloc`]: allocator tuning; [`cli`]: the commands.

pub mod admin;
pub mod alloc;
pub mod auth;
pub mod claims_cache;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod cors;
pub mod credentials;
pub mod error;
pub mod http;
pub mod keyfile;
pub mod limits;
pub mod logs;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod server;
pub mod timer;
pub mod upstream;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

/// The hasher for maps keyed by what trusted parties chose (token ids,
/// tokens that decrypted, provider and credential names): several times
/// cheaper than std's SipHash on the request path, randomly seeded per
/// process. Maps keyed by what any client controls (the per-IP limiter's
/// entries) keep SipHash.
pub(crate) type FastHasher = foldhash::fast::RandomState;
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;

/// A relay running inside the current runtime (tests, embedding).
pub struct RunningRelay {
    pub addr: SocketAddr,
    /// The admin API's address, when an admin key is configured.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<http::AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    admin: Option<tokio::task::JoinHandle<()>>,
}

impl RunningRelay {
    /// Binds `config.server.host:port` and serves until [`RunningRelay::stop`].
    pub async fn start(
        config: config::Config,
        keys: impl Into<keyfile::Keys>,
        usage: usage::UsageStore,
    ) -> std::io::Result<RunningRelay> {
        let listener =
            tokio::net::TcpListener::bind((config.server.host.as_str(), config.server.port))
                .await?;
        let addr = listener.local_addr()?;
        let admin_key = admin::AdminKey::from_settings(&config.admin);
        let admin_listener = match &admin_key {
            Some(_) => Some(tokio::net::TcpListener::bind(config.admin.listen.as_str()).await?),
            None => None,
        };
        let state = Arc::new(http::AppState::new(config, keys.into(), usage));
        http::spawn_background(&state);
        let mut admin_addr = None;
        let admin = match (admin_listener, admin_key) {
            (Some(l), Some(key)) => {
                admin_addr = Some(l.local_addr()?);
                Some(tokio::spawn(admin::serve(
                    l,
                    state.clone(),
                    key,
                    std::future::pending(),
                )))
            }
            _ => None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Ok(RunningRelay {
            addr,
            admin_addr,
            state,
            shutdown: Some(tx),
            task,
            admin,
        })
    }

    /// Graceful stop: drains in-flight requests, closes the usage store.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        if let Some(admin) = self.admin.take() {
            admin.abort();
            let _ = admin.await;
        }
    }
}
