//! Shared fixtures: a mock provider and a relay in this process, on
//! 127.0.0.1:0, and token minting with a fresh key.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod db;

use std::collections::BTreeMap;

use relayapi::config::Config;
use relayapi::providers::ProviderOverride;
use relayapi::usage::UsageStore;
use relayapi::RunningRelay;
use relayapi_mock::{MockConfig, MockServer};
use relayapi_token::{Claims, Keyring, RaiConfig, SecretString, V2Key};

pub const MOCK_KEY: &str = "sk-mock-secret-4242";

pub struct Env {
    pub mock: MockServer,
    pub relay: RunningRelay,
    pub rai: RaiConfig,
    pub key: V2Key,
    pub http: reqwest::Client,
}

/// Points every provider kind the mock speaks at the mock.
pub fn config_for(mock_url: &str) -> Config {
    let mut config = Config::default();
    config.server.port = 0;
    config.usage.store = "memory".into();
    // The console sink writes straight to the test process's stderr (past
    // the test harness's capture); tests that log turn sinks on themselves.
    config.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
    // The default spool (`relayapi-spool` in the working directory) would
    // land in the crate's folder; tests of the spool give it a temp dir.
    config.log.spool_dir = None;
    let mut p = BTreeMap::new();
    let ov = |url: String| ProviderOverride {
        base_url: Some(url),
        ..Default::default()
    };
    p.insert("openai".to_string(), ov(format!("{mock_url}/v1")));
    p.insert("anthropic".to_string(), ov(mock_url.to_string()));
    p.insert("gemini".to_string(), ov(mock_url.to_string()));
    let mut az = ov(format!("{mock_url}/openai"));
    az.azure = Some(relayapi::providers::AzureSettings {
        resource: None,
        deployment: Some("dep1".into()),
        api_version: Some("2024-10-21".into()),
    });
    p.insert("azure-openai".to_string(), az);
    config.providers = p;
    config
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(|_| {}, UsageStore::memory()).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config), usage: UsageStore) -> Env {
        Self::start_with_mock(MockConfig::new(MOCK_KEY), tweak, usage).await
    }

    /// With a mock of its own configuration (extra keys, per-key faults).
    pub async fn start_with_mock(
        mock: MockConfig,
        tweak: impl FnOnce(&mut Config),
        usage: UsageStore,
    ) -> Env {
        let mock = MockServer::start(mock).await.unwrap();
        let mut config = config_for(&mock.url());
        tweak(&mut config);
        let rai = RaiConfig::generate("http://127.0.0.1", 0);
        let key = V2Key::from_rai(&rai);
        let mut keyring = Keyring::new();
        keyring.insert(V2Key::from_rai(&rai)).unwrap();
        let relay = RunningRelay::start(config, keyring, usage).await.unwrap();
        Env {
            mock,
            relay,
            rai,
            key,
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}/relayapi/", self.relay.addr)
    }

    pub fn claims(&self, provider: &str) -> Claims {
        Claims::new(
            provider,
            SecretString::new(MOCK_KEY.to_string()),
            3600,
            now(),
        )
    }

    pub fn mint(&self, claims: &Claims) -> String {
        relayapi_token::encode_v2(&self.key, claims).unwrap()
    }

    pub fn token(&self, provider: &str) -> String {
        self.mint(&self.claims(provider))
    }

    /// POSTs [`chat_body`] to `url` (a full URL through the relay).
    pub async fn post_chat(&self, url: impl reqwest::IntoUrl, stream: bool) -> reqwest::Response {
        self.http
            .post(url)
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap()
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
    )
}

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello relay"}],
        "stream": stream,
    })
}

/// Shared flag: while set, the receiver answers 503.
pub type Flag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Log records a receiver got.
pub type Records = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// Waits (up to 3 s) until `n` records arrived, returns them; waits a
/// little longer first, so that more than `n` (a duplicate) shows.
pub async fn wait_records(records: &Records, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..300 {
        if records.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    records.lock().unwrap().clone()
}

/// A webhook receiver on 127.0.0.1:0 that keeps every record it gets.
pub async fn receiver() -> (String, Records) {
    let (url, records, _) = switchable_receiver().await;
    (url, records)
}

/// The same, answering 503 (and keeping nothing) while the flag is set.
pub async fn switchable_receiver() -> (String, Records, Flag) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let records: Records = Default::default();
    let down: Flag = Default::default();
    let (store, is_down) = (records.clone(), down.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (store, is_down) = (store.clone(), is_down.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (store, is_down) = (store.clone(), is_down.clone());
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut resp =
                                http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            if is_down.load(std::sync::atomic::Ordering::SeqCst) {
                                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            } else {
                                let batch: Vec<serde_json::Value> =
                                    serde_json::from_slice(&body).unwrap();
                                store.lock().unwrap().extend(batch);
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}/logs"), records, down)
}

/// The tests name their requests with `x-request-id` to find the records;
/// the relay adopts a caller's id only from a trusted proxy.
pub fn trust_loopback(c: &mut Config) {
    c.server.trusted_proxies = vec!["127.0.0.1".into()];
}

/// GETs `url` once per request id, 32 at a time; every status and body is
/// read. Returns the statuses.
pub async fn get_each(
    http: &reqwest::Client,
    url: &str,
    ids: impl Iterator<Item = String>,
) -> Vec<u16> {
    use futures_util::StreamExt;
    futures_util::stream::iter(ids)
        .map(|id| {
            let (http, url) = (http.clone(), url.to_string());
            async move {
                let resp = http
                    .get(&url)
                    .header("x-request-id", id)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                resp.bytes().await.unwrap();
                status
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}
