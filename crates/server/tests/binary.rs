//! Black-box tests of the built `relayapi` binary: the CLI contract, key
//! file generation, durability across `kill -9`, graceful shutdown, and no
//! secret in any log line or any log sink (console, webhook, SQLite,
//! PostgreSQL, MariaDB, Parquet).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use relayapi_mock::{MockConfig, MockServer};

const BIN: &str = env!("CARGO_BIN_EXE_relayapi");
const MOCK_KEY: &str = "sk-mock-binary-test-777";

struct Relay {
    child: Child,
    url: String,
    stderr: PathBuf,
}

impl Relay {
    /// Starts `relayapi serve` in `dir` and reads the first stdout line.
    fn start(dir: &Path, extra: &[&str]) -> Relay {
        let mut command = Command::new(BIN);
        command.arg("serve").args(extra);
        Self::spawn(dir, command)
    }

    /// Runs `command` (which ends up running `relayapi serve`) in `dir`.
    fn spawn(dir: &Path, mut command: Command) -> Relay {
        let stderr = dir.join(format!(
            "stderr-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = command
            .current_dir(dir)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "first line was {line:?}; stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            })
            .to_string();
        Relay { child, url, stderr }
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, mock_url: &str, usage: &str) {
    let config = serde_json::json!({
        "server": {"port": 0, "shutdown_grace": 10, "trusted_proxies": ["127.0.0.1"]},
        "usage": {"store": usage, "path": dir.join("usage.db")},
        "providers": {"openai": {"base_url": format!("{mock_url}/v1")}}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn relayapi(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn mint_url(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "--rai",
        "default.rai",
        "--provider",
        "openai",
        "--api-key",
        MOCK_KEY,
        "--url",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = relayapi(dir, &args);
    assert!(ok, "token failed: {err}");
    out
}

/// The .rai's server block says port 8840; the test relay listens elsewhere.
fn retarget(url: &str, relay: &Relay) -> String {
    let path = &url[url.find("/relayapi/").unwrap()..];
    format!("{}{path}", relay.url)
}

#[tokio::test]
async fn newcomer_walkthrough_and_no_secret_in_logs() {
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock.url(), "sqlite");
    let relay = Relay::start(dir.path(), &[]);

    // default.rai was generated, owner-only.
    let rai_path = dir.path().join("default.rai");
    let rai: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rai_path).unwrap()).unwrap();
    let aes_key = rai["crypto"]["aes_key"].as_str().unwrap().to_string();
    assert_eq!(aes_key.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&rai_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let base = retarget(&mint_url(dir.path(), &["--max-calls", "5"]), &relay);
    assert!(base.ends_with('/'));
    let token = base
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}chat/completions"))
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Failures too, so their log lines are covered.
    let bad = format!(
        "{}/relayapi/{}x/chat/completions",
        relay.url,
        &token[..token.len() - 1]
    );
    assert_eq!(
        http.post(bad).body("{}").send().await.unwrap().status(),
        401
    );
    assert_eq!(health(&http, &relay).await["status"], "ok");

    relay.signal("-TERM");
    let stderr = relay.stderr.clone();
    let mut relay = relay;
    let status = tokio::task::spawn_blocking(move || relay.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful exit expected, got {status:?}");
    let logs = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        logs.contains("generated"),
        "startup should say where the .rai went: {logs}"
    );
    assert_no_canary("the logs", &logs, &canaries(&token, &aes_key, &[]));
}

/// The secrets no log line and no sink may contain: the provider key, the
/// token (and its tail), the key material, and any database password.
fn canaries(token: &str, aes_key: &str, more: &[String]) -> Vec<(String, String)> {
    let mut v = vec![
        ("api key".to_string(), MOCK_KEY.to_string()),
        ("token".to_string(), token.to_string()),
        (
            "token tail".to_string(),
            token[token.len() - 20..].to_string(),
        ),
        ("aes_key".to_string(), aes_key.to_string()),
    ];
    v.extend(
        more.iter()
            .map(|m| ("database password".to_string(), m.clone())),
    );
    v
}

fn assert_no_canary(place: &str, text: &str, canaries: &[(String, String)]) {
    for (what, secret) in canaries {
        assert!(
            !text.contains(secret.as_str()),
            "{what} leaked into {place}"
        );
    }
    // A grep does not see into base64 (binary body captures): every run of
    // base64 that decodes is searched too.
    use base64::Engine as _;
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    for run in text.split(|c: char| !is_b64(c)).filter(|r| r.len() >= 16) {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(run) else {
            continue;
        };
        let raw = String::from_utf8_lossy(&raw);
        for (what, secret) in canaries {
            assert!(
                !raw.contains(secret.as_str()),
                "{what} leaked into {place}, base64-encoded"
            );
        }
    }
}

#[tokio::test]
async fn kill_9_never_readmits_a_used_call() {
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock.url(), "sqlite");
    let http = reqwest::Client::new();

    let relay = Relay::start(dir.path(), &[]);
    let url = format!(
        "{}models",
        retarget(&mint_url(dir.path(), &["--max-calls", "4"]), &relay)
    );
    for _ in 0..3 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    }
    relay.signal("-KILL");
    drop(relay);

    let relay = Relay::start(dir.path(), &[]);
    let url = format!(
        "{}/relayapi/{}",
        relay.url,
        url.split("/relayapi/").nth(1).unwrap()
    );
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "token_exhausted");
}

#[tokio::test]
async fn health_says_degraded_while_the_usage_store_cannot_write() {
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock.url(), "sqlite");
    let http = reqwest::Client::new();
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    // Past a file size limit the kernel sends SIGXFSZ, which kills unless
    // ignored; ignored, the write fails with EFBIG (as on a full disk).
    // An ignored signal stays ignored across exec.
    let mut command = Command::new("sh");
    command.args(["-c", "trap '' XFSZ; exec \"$0\" serve", BIN]);
    let relay = Relay::spawn(dir.path(), command);
    let wal = dir.path().join("usage.db-wal");
    let limited = format!(
        "{}models",
        retarget(&mint_url(dir.path(), &["--max-calls", "9"]), &relay)
    );
    let stateless = format!("{}models", retarget(&mint_url(dir.path(), &[]), &relay));
    assert_eq!(http.get(&limited).send().await.unwrap().status(), 200);
    assert_eq!(health(&http, &relay).await["status"], "ok");

    // The disk is full: the relay's files may not grow any more (its WAL
    // must, for the next commit).
    set_file_size_limit(&relay, &std::fs::metadata(&wal).unwrap().len().to_string());
    let resp = http.get(&limited).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "service_unavailable");
    assert_eq!(http.get(&stateless).send().await.unwrap().status(), 200);
    let h = health(&http, &relay).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["usage"]["status"], "failing", "{h}");
    assert!(h["usage"]["last_error"].as_str().is_some(), "{h}");

    set_file_size_limit(&relay, "unlimited");
    assert_eq!(http.get(&limited).send().await.unwrap().status(), 200);
    let h = health(&http, &relay).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["usage"]["write_errors"], 1, "{h}");
}

/// Sets the soft `RLIMIT_FSIZE` of the running relay (`unlimited` or bytes).
fn set_file_size_limit(relay: &Relay, limit: &str) {
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &relay.child.id().to_string(),
            &format!("--fsize={limit}:"),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit --fsize={limit}: failed");
}

/// One request over a fresh connection, `target` sent byte for byte (no
/// client library re-encodes it); the answer's status line and body, or
/// `None` when the connection closed without one.
fn raw_get(relay: &Relay, target: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let addr = relay.url.strip_prefix("http://").unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    // A reset (the task serving the connection died) counts as no answer.
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// A `token` query value holding a multi-byte character (percent-encoded
/// next to a `%2F`, or raw) where the glued-path cut counted ASCII
/// characters made the relay panic before any limit: in release
/// (`panic = "abort"`) one request ended the process. Each must get the
/// answer any garbage token gets, and the relay must still be there.
#[test]
fn a_multibyte_character_in_a_query_token_is_invalid_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"server": {"port": 0}, "usage": {"store": "memory"}});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let garbage = raw_get(&relay, "/relayapi/x?token=garbage").expect("no answer to garbage");
    assert!(garbage.0.starts_with("HTTP/1.1 401"), "{garbage:?}");
    assert!(garbage.1.contains("token_invalid"), "{garbage:?}");
    let (a21, a42) = ("A".repeat(21), "A".repeat(42));
    for target in [
        format!("/relayapi/?token=a.{a21}%C3%A9%2Fx"),
        format!("/relayapi/?token={a42}%C3%A9%2Fx"),
        format!("/relayapi/?token=a.{a21}\u{e9}/x"),
        format!("/relayapi/?token={a42}\u{e9}/x"),
    ] {
        let answer = raw_get(&relay, &target);
        let stderr = std::fs::read_to_string(&relay.stderr).unwrap_or_default();
        assert_eq!(answer.as_ref(), Some(&garbage), "{target}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{target}\n{stderr}");
    }
    let health = raw_get(&relay, "/health").expect("the relay is gone");
    assert!(health.0.starts_with("HTTP/1.1 200"), "{health:?}");
}

#[test]
fn a_taken_admin_port_stops_the_relay_before_it_says_listening() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "server": {"port": 0},
        "usage": {"store": "memory"},
        "admin": {"listen": taken.local_addr().unwrap().to_string(), "api_key": "k-0123456789abcdef0123"},
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (ok, out, err) = relayapi(dir.path(), &["serve"]);
    assert!(!ok, "the relay ran without its admin listener: {out}");
    assert!(!out.contains("listening"), "{out}");
    assert!(err.contains("admin.listen: cannot listen on"), "{err}");
}

#[tokio::test]
async fn sigterm_lets_an_open_stream_finish() {
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock.url(), "memory");
    let relay = Relay::start(dir.path(), &[]);
    let base = retarget(&mint_url(dir.path(), &[]), &relay);
    let resp = reqwest::Client::new()
        .post(format!("{base}chat/completions"))
        .header("x-mock-chunk-delay-ms", "200")
        .header("x-mock-chunks", "5")
        .json(&serde_json::json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    relay.signal("-TERM");
    let text = resp.text().await.unwrap();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream cut by shutdown: {text}"
    );
}

#[test]
fn cli_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = relayapi(
        dir.path(),
        &[
            "gen-config",
            "--host",
            "https://relay.example",
            "--port",
            "443",
        ],
    );
    assert!(ok);
    let rai: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rai["server"]["port"], 443);
    assert_eq!(rai["crypto"]["method"], "aes");
    std::fs::write(dir.path().join("default.rai"), &out).unwrap();
    // A host without its scheme would make every base URL unusable.
    let (ok, _, err) = relayapi(dir.path(), &["gen-config", "--host", "relay.example"]);
    assert!(
        !ok && err.contains("--host: must start with http://"),
        "{err}"
    );

    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["token", "--help"],
        vec!["check-config", "--help"],
        vec!["gen-config", "--help"],
    ] {
        let (ok, out, _) = relayapi(dir.path(), &args);
        assert!(ok && out.contains("Usage"), "{args:?}");
    }

    let (ok, out, _) = relayapi(
        dir.path(),
        &[
            "token",
            "--provider",
            "openai",
            "--api-key",
            "sk-x",
            "--expire",
            "10m",
        ],
    );
    assert!(ok);
    assert_eq!(out.split('.').count(), 5, "a compact JWE: {out}");
    let (ok, _, err) = relayapi(
        dir.path(),
        &["token", "--provider", "nope", "--api-key", "sk-x"],
    );
    assert!(!ok && err.contains("--provider"), "{err}");
    let (ok, _, err) = relayapi(
        dir.path(),
        &[
            "token",
            "--provider",
            "openai",
            "--api-key",
            "sk-x",
            "--max-calls",
            "0",
        ],
    );
    assert!(!ok && err.contains("max-calls"), "{err}");

    let (ok, out, _) = relayapi(dir.path(), &["check-config"]);
    assert!(ok, "{out}");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"server": {"base_path": "nope", "prot": 1}}"#,
    )
    .unwrap();
    let (ok, _, err) = relayapi(dir.path(), &["check-config"]);
    assert!(
        !ok && err.contains("config.json") && err.contains("prot"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"server": {"base_path": "nope"}, "usage": {"store": "x"}}"#,
    )
    .unwrap();
    let (ok, _, err) = relayapi(dir.path(), &["check-config"]);
    assert!(
        !ok && err.contains("server.base_path") && err.contains("usage.store"),
        "{err}"
    );

    // Log sinks: listed when fine (never the connection string), and each
    // bad field named with its fix.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"log": {"console": false, "database": {"enabled": true, "type": "postgres",
            "connection_string": "postgres://relay:s3cr3t-pw@db.example/logs"},
            "parquet": {"enabled": true, "file_path": "pq"}}}"#,
    )
    .unwrap();
    let (ok, out, err) = relayapi(dir.path(), &["check-config"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("log sinks: database (postgres), parquet (pq)"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t-pw") && !err.contains("s3cr3t-pw"));
    std::fs::write(dir.path().join("a-file"), "x").unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"log": {"database": {"enabled": true, "type": "oracle"},
            "parquet": {"enabled": true, "file_path": "a-file"}}}"#,
    )
    .unwrap();
    let (ok, _, err) = relayapi(dir.path(), &["check-config"]);
    assert!(
        !ok && err.contains("config.json")
            && err.contains("log.database.type")
            && err.contains("log.parquet.file_path"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"log": {"database": {"enabled": true, "type": "mysql", "connection_string": "s3cr3t-pw"},
            "parquet": {"enabled": true}}}"#,
    )
    .unwrap();
    let (ok, _, err) = relayapi(dir.path(), &["check-config"]);
    assert!(
        !ok && err.contains("log.database.connection_string")
            && err.contains("log.parquet.file_path")
            && !err.contains("s3cr3t-pw"),
        "{err}"
    );
}

#[test]
fn earlier_cli_spellings_and_the_sample_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = relayapi(dir.path(), &["-gen=localhost:9000"]);
    assert!(ok, "{err}");
    let rai: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rai["server"]["port"], 9000);
    assert!(
        err.contains("gen-config"),
        "a hint about the new form: {err}"
    );

    let sample = r#"{"version":"1.0.0","server":{"host":"http://localhost","port":8080,"base_path":"/relayapi/"},
        "crypto":{"method":"aes","aes_key":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","aes_iv_seed":"fedcba9876543210"}}"#;
    std::fs::write(dir.path().join("k1.rai"), sample).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"server": {"port": 0}, "usage": {"store": "memory"}}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["-config", "config.json", "-rai", "k1.rai"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("k1.rai") && err.contains("--allow-insecure-sample-key"),
        "{err}"
    );
    assert!(
        !err.contains("0123456789abcdef0123"),
        "the key itself is never printed"
    );

    let relay = Relay::start(
        dir.path(),
        &[
            "--config",
            "config.json",
            "--rai",
            "k1.rai",
            "--allow-insecure-sample-key",
        ],
    );
    assert!(relay.url.starts_with("http://127.0.0.1:"));
}

/// The relay's `/health` document.
async fn health(http: &reqwest::Client, relay: &Relay) -> serde_json::Value {
    http.get(format!("{}/health", relay.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The webhook sink's counters in the relay's `/health`.
async fn webhook_stats(http: &reqwest::Client, relay: &Relay) -> serde_json::Value {
    let health = health(http, relay).await;
    health["logs"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|s| s["name"] == "webhook"))
        .cloned()
        .unwrap_or_else(|| panic!("no webhook sink in /health: {health}"))
}

/// A config that says nothing about the spool still has one: records that
/// overflow a down sink's queue wait in `relayapi-spool/` in the working
/// directory, and every one arrives, once, when the sink is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_down_sink_spools_instead_of_dropping() {
    use std::sync::atomic::Ordering::SeqCst;
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let (hook, records, down) = common::switchable_receiver().await;
    down.store(true, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "server": {"port": 0, "trusted_proxies": ["127.0.0.1"]},
        "usage": {"store": "memory"},
        "log": {"console": false, "queue_capacity": 5, "batch_max_records": 5,
                "batch_max_delay": 0.02,
                "web": {"enabled": true, "callback_url": hook}},
        "providers": {"openai": {"base_url": format!("{}/v1", mock.url())}}
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let base = retarget(&mint_url(dir.path(), &[]), &relay);
    let http = reqwest::Client::new();
    let n = 60;
    for i in 0..n {
        let r = http
            .get(format!("{base}models"))
            .header("x-request-id", format!("spooled-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let mut stats = webhook_stats(&http, &relay).await;
    for _ in 0..100 {
        if stats["spooled"].as_u64().unwrap_or(0) + stats["queued"].as_u64().unwrap_or(0) >= n - 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stats = webhook_stats(&http, &relay).await;
    }
    assert!(stats["spooled"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["dropped"], 0, "{stats}");
    let segments = std::fs::read_dir(dir.path().join("relayapi-spool").join("webhook"))
        .expect("the spool lives in the working directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        })
        .count();
    assert!(segments > 0, "no spool segment written");
    assert!(records.lock().unwrap().is_empty());

    down.store(false, SeqCst);
    let mut ids = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..600 {
        ids.clear();
        for r in records.lock().unwrap().iter() {
            if let Some(id) = r["request_id"].as_str() {
                *ids.entry(id.to_string()).or_default() += 1;
            }
        }
        if ids.len() == n as usize {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        ids.len(),
        n as usize,
        "every record arrives after the outage"
    );
    assert!(ids.values().all(|c| *c == 1), "none arrives twice: {ids:?}");
    let stats = webhook_stats(&http, &relay).await;
    assert_eq!(stats["dropped"], 0, "{stats}");
}

/// SIGTERM under load with every sink on (PostgreSQL as the database):
/// every admitted request has exactly one record in every sink afterwards,
/// and the Parquet files are complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_every_admitted_request_is_logged() {
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_kind = if common::db::Postgres::available() {
        "postgres"
    } else {
        "sqlite"
    };
    let sinks = AllSinks::start(dir.path(), db_kind).await.unwrap();
    let config = serde_json::json!({
        "server": {"port": 0, "shutdown_grace": 10, "trusted_proxies": ["127.0.0.1"]},
        "usage": {"store": "memory"},
        "log": sinks.log_config(false),
        "providers": {"openai": {"base_url": format!("{}/v1", mock.url())}}
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let base = retarget(&mint_url(dir.path(), &[]), &relay);
    let http = reqwest::Client::new();
    // Stream response heads received: admitted, and its body is under way.
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..120 {
        let (http, base, heads) = (http.clone(), base.clone(), heads.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("load-{i}");
            let resp = http
                .post(format!("{base}chat/completions"))
                .header("x-request-id", &id)
                .header("x-mock-chunk-delay-ms", "50")
                .header("x-mock-chunks", "10")
                .json(&serde_json::json!({"model": "m", "stream": i % 2 == 0, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 200 => {
                    if i % 2 == 0 {
                        heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    r.text().await.ok().map(|_| id)
                }
                _ => None,
            }
        }));
    }
    // Signal while many are in flight (each body takes ~500 ms), however
    // slow the machine is today.
    let t = std::time::Instant::now();
    while heads.load(std::sync::atomic::Ordering::SeqCst) < 40
        && t.elapsed() < std::time::Duration::from_secs(30)
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    relay.signal("-TERM");
    let mut admitted = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            admitted.push(id);
        }
    }
    let (status, logs) = exit_status(relay).await;
    assert!(status.success());
    assert!(
        admitted.len() >= 40,
        "the load should mostly run before the signal: {}",
        admitted.len()
    );
    for stored in sinks.stored(&logs).await {
        let mut count: std::collections::BTreeMap<&str, usize> = Default::default();
        for id in &stored.ids {
            *count.entry(id.as_str()).or_default() += 1;
        }
        for id in &admitted {
            assert_eq!(
                count.get(id.as_str()),
                Some(&1),
                "{id} must be in the {} sink exactly once",
                stored.sink
            );
        }
    }
}

/// Every sink on at once, and what each stored afterwards.
struct AllSinks {
    dir: PathBuf,
    db_kind: &'static str,
    pg: Option<common::db::Postgres>,
    my: Option<common::db::MariaDb>,
    hook_url: String,
    hook: common::Records,
}

/// What one sink holds after the run: record ids and all its text.
struct Stored {
    sink: &'static str,
    ids: Vec<String>,
    text: String,
}

impl AllSinks {
    /// Console (JSON lines), webhook, Parquet and one database of
    /// `db_kind`. `None` when that database's server is not installed.
    async fn start(dir: &Path, db_kind: &'static str) -> Option<AllSinks> {
        let (hook_url, hook, _) = common::switchable_receiver().await;
        let (mut pg, mut my) = (None, None);
        match db_kind {
            "postgres" => {
                pg = Some(
                    tokio::task::spawn_blocking(common::db::Postgres::start)
                        .await
                        .unwrap()?,
                )
            }
            "mysql" => {
                my = Some(
                    tokio::task::spawn_blocking(common::db::MariaDb::start)
                        .await
                        .unwrap()?,
                )
            }
            _ => {}
        }
        Some(AllSinks {
            dir: dir.to_path_buf(),
            db_kind,
            pg,
            my,
            hook_url,
            hook,
        })
    }

    fn db_url(&self) -> String {
        match self.db_kind {
            "postgres" => self.pg.as_ref().unwrap().url(),
            "mysql" => self.my.as_ref().unwrap().url(),
            _ => self.dir.join("logs.db").display().to_string(),
        }
    }

    fn passwords(&self) -> Vec<String> {
        let mut v = Vec::new();
        v.extend(self.pg.as_ref().map(|p| p.password.clone()));
        v.extend(self.my.as_ref().map(|m| m.password.clone()));
        v
    }

    fn log_config(&self, bodies: bool) -> serde_json::Value {
        serde_json::json!({
            "console": {"format": "json"},
            "web": {"enabled": true, "callback_url": self.hook_url},
            "database": {"enabled": true, "type": self.db_kind, "connection_string": self.db_url()},
            "parquet": {"enabled": true, "file_path": self.dir.join("parquet")},
            "bodies": bodies,
            "batch_max_delay": 0.05
        })
    }

    /// Reads back every sink (after the relay exited).
    async fn stored(&self, stderr: &str) -> Vec<Stored> {
        let mut out = Vec::new();
        let console: Vec<String> = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["request_id"].as_str().map(str::to_string))
            .collect();
        out.push(Stored {
            sink: "console",
            ids: console,
            text: stderr.to_string(),
        });
        let hook = self.hook.lock().unwrap().clone();
        out.push(Stored {
            sink: "webhook",
            ids: hook
                .iter()
                .filter_map(|r| r["request_id"].as_str().map(str::to_string))
                .collect(),
            text: serde_json::to_string(&hook).unwrap(),
        });
        let (ids, records): (Vec<String>, Vec<String>) = match self.db_kind {
            "postgres" => {
                let pool = self.pg.as_ref().unwrap().pool().await;
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT request_id, row_to_json(t)::text FROM relayapi_logs t")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                rows.into_iter().unzip()
            }
            "mysql" => {
                let pool = self.my.as_ref().unwrap().pool().await;
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT CAST(request_id AS CHAR), CAST(CONCAT_WS('|', record, client_ip, path, IFNULL(jti, ''), IFNULL(sub, '')) AS CHAR) FROM relayapi_logs",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                rows.into_iter().unzip()
            }
            _ => {
                let path = self.dir.join("logs.db");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT request_id, record FROM relayapi_logs")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                pool.close().await;
                let (ids, mut text): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
                // The raw file bytes too (database and WAL).
                for f in ["logs.db", "logs.db-wal"] {
                    if let Ok(b) = std::fs::read(self.dir.join(f)) {
                        text.push(String::from_utf8_lossy(&b).into_owned());
                    }
                }
                (ids, text)
            }
        };
        out.push(Stored {
            sink: self.db_kind,
            ids,
            text: records.join("\n"),
        });
        let (ids, text) = read_parquet_dir(&self.dir.join("parquet"));
        out.push(Stored {
            sink: "parquet",
            ids,
            text,
        });
        out
    }
}

/// Every row of every `logs_*.parquet` (each file must be complete and
/// readable): request ids, and each row rendered as text.
fn read_parquet_dir(dir: &Path) -> (Vec<String>, String) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let (mut ids, mut text) = (Vec::new(), String::new());
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("logs_") && name.ends_with(".parquet"),
            "only finished files after a clean exit: {name}"
        );
        let raw = std::fs::read(&path).unwrap();
        text.push_str(&String::from_utf8_lossy(&raw));
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            ids.push(row.get_string(0).unwrap().clone());
            text.push_str(&row.to_string());
            text.push('\n');
        }
    }
    (ids, text)
}

async fn exit_status(relay: Relay) -> (std::process::ExitStatus, String) {
    relay.signal("-TERM");
    let stderr = relay.stderr.clone();
    let mut relay = relay;
    let status = tokio::task::spawn_blocking(move || relay.child.wait())
        .await
        .unwrap()
        .unwrap();
    (status, std::fs::read_to_string(stderr).unwrap())
}

/// The canary test across every sink, once per database type: streaming
/// and non-streaming calls with bodies on, the token in the path, in
/// `Authorization` and in a JSON body field, the provider key in a body
/// field, and escaped or unread copies of the token the relay does not
/// locate — then no sink's stored output and no log line holds a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_sink_or_log_line() {
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    for db_kind in ["sqlite", "postgres", "mysql"] {
        let dir = tempfile::tempdir().unwrap();
        let Some(sinks) = AllSinks::start(dir.path(), db_kind).await else {
            continue;
        };
        let config = serde_json::json!({
            "server": {"port": 0, "shutdown_grace": 10, "trusted_proxies": ["127.0.0.1"]},
            "usage": {"store": "memory"},
            "log": sinks.log_config(true),
            "providers": {"openai": {"base_url": format!("{}/v1", mock.url())}}
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let relay = Relay::start(dir.path(), &[]);
        let rai: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("default.rai")).unwrap())
                .unwrap();
        let aes_key = rai["crypto"]["aes_key"].as_str().unwrap().to_string();
        let base = retarget(&mint_url(dir.path(), &[]), &relay);
        let token = base
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let http = reqwest::Client::new();
        let body = |stream: bool| {
            serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
                "api_key": MOCK_KEY, "token": token,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "canary"}]})
        };
        let mut ids = Vec::new();
        for (i, stream) in [false, true].into_iter().enumerate() {
            let id = format!("canary-{db_kind}-path-{i}");
            let r = http
                .post(format!("{base}chat/completions"))
                .header("x-request-id", &id)
                .json(&body(stream))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap();
            ids.push(id);
            let id = format!("canary-{db_kind}-header-{i}");
            let r = http
                .post(format!(
                    "{}/relayapi/chat/completions?key={token}",
                    relay.url
                ))
                .header("x-request-id", &id)
                .header("authorization", format!("Bearer {token}"))
                .json(&body(stream))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "token in the Authorization header");
            r.text().await.unwrap();
            ids.push(id);
        }
        // A binary upload carrying the secrets (captured as base64), which
        // the echo reflects back.
        let id = format!("canary-{db_kind}-binary");
        let mut upload = b"\xff\xfe\x00 ".to_vec();
        upload.extend_from_slice(MOCK_KEY.as_bytes());
        upload.extend_from_slice(b" \x00 ");
        upload.extend_from_slice(token.as_bytes());
        let r = http
            .post(format!("{base}echo"))
            .header("x-request-id", &id)
            .header("content-type", "application/octet-stream")
            .body(upload)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        ids.push(id);
        // The token where the relay does not look for it (so it is not a
        // known secret): escaped in a second path segment and in a query
        // value, and in a header the relay does not read.
        let dots_escaped = token.replace('.', "%2E");
        let e_escaped = format!("%65{}", &token[1..]);
        let id = format!("canary-{db_kind}-unlocated");
        let r = http
            .get(format!(
                "{}/relayapi/{e_escaped}/v1/models?foo={dots_escaped}",
                relay.url
            ))
            .header("x-request-id", &id)
            .header("x-note", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        ids.push(id);
        let (status, logs) = exit_status(relay).await;
        assert!(status.success(), "{db_kind}: {status:?}\n{logs}");
        let mut canaries = canaries(&token, &aes_key, &sinks.passwords());
        canaries.push(("the token, escaped".into(), dots_escaped));
        canaries.push(("the token, escaped".into(), e_escaped));
        assert_no_canary("the process logs", &logs, &canaries);
        for stored in sinks.stored(&logs).await {
            for id in &ids {
                assert!(
                    stored.ids.contains(id),
                    "{db_kind}: {} has no record {id}",
                    stored.sink
                );
            }
            assert!(
                stored.text.contains("[REDACTED]") || stored.sink == "parquet",
                "{}: redaction markers expected",
                stored.sink
            );
            assert_no_canary(
                &format!("the {} sink", stored.sink),
                &stored.text,
                &canaries,
            );
        }
    }
}

#[test]
fn check_config_before_the_first_run_is_fine_but_a_named_key_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = relayapi(dir.path(), &["check-config"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("default.rai does not exist yet"), "{out}");
    assert!(
        !dir.path().join("default.rai").exists(),
        "check-config writes nothing"
    );
    let (ok, _, err) = relayapi(dir.path(), &["check-config", "--rai", "missing.rai"]);
    assert!(!ok && err.contains("missing.rai: not found"), "{err}");
    assert!(
        out.contains("usage store relayapi-usage.db (created on first run)"),
        "{out}"
    );
    assert!(
        !dir.path().join("relayapi-usage.db").exists(),
        "check-config creates no usage file"
    );
    // A usage.path that `serve` could not open is a problem now, not at start.
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"usage": {"path": "not-a-dir/usage.db"}}"#,
    )
    .unwrap();
    let (ok, _, err) = relayapi(dir.path(), &["check-config"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("config.json: usage.path: not-a-dir/usage.db cannot be created: not-a-dir is not a directory"),
        "{err}"
    );
}

/// A stream still open when the shutdown grace runs out is cut by the
/// relay: its record says so (`error_code: "shutdown"`), and does not blame
/// the client (`client_aborted: false`).
#[tokio::test]
async fn a_stream_cut_at_the_end_of_the_grace_is_not_a_client_abort() {
    use futures_util::StreamExt as _;
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let (url, records) = common::receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "server": {"port": 0, "shutdown_grace": 2, "trusted_proxies": ["127.0.0.1"]},
        "usage": {"store": "memory"},
        "log": {"console": false, "batch_max_delay": 0.05,
                "web": {"enabled": true, "callback_url": url}},
        "providers": {"openai": {"base_url": format!("{}/v1", mock.url())}}
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let base = retarget(&mint_url(dir.path(), &[]), &relay);
    let r = reqwest::Client::new()
        .post(format!("{base}chat/completions"))
        .header("x-request-id", "cut-by-shutdown")
        .header("x-mock-chunks", "200")
        .header("x-mock-chunk-delay-ms", "50")
        .json(&common::chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let (status, logs) = exit_status(relay).await;
    assert!(status.success(), "{logs}");
    reader.await.unwrap();
    let got = records.lock().unwrap().clone();
    let rec = got
        .iter()
        .find(|r| r["request_id"] == "cut-by-shutdown")
        .unwrap_or_else(|| panic!("no record: {got:?}\n{logs}"));
    assert_eq!(rec["client_aborted"], false, "{rec}");
    assert_eq!(rec["error_code"], "shutdown", "{rec}");
    assert_eq!(rec["status"], 200);
    assert!(rec["bytes_out"].as_u64().unwrap() > 0);
}

/// SIGTERM while the webhook sink's write hangs (a receiver that accepts and
/// never answers): the process still exits within the grace period, and the
/// batch waits in the spool for the next start instead of being lost.
#[tokio::test]
async fn sigterm_with_a_hanging_sink_exits_in_time_and_spools_the_batch() {
    let mock = MockServer::start(MockConfig::new(MOCK_KEY)).await.unwrap();
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/hook", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = |url: &str| {
        serde_json::json!({
            "server": {"port": 0, "shutdown_grace": 3, "trusted_proxies": ["127.0.0.1"]},
            "usage": {"store": "memory"},
            "log": {"console": false, "batch_max_delay": 0.1,
                    "web": {"enabled": true, "callback_url": url}},
            "providers": {"openai": {"base_url": format!("{}/v1", mock.url())}}
        })
        .to_string()
    };
    std::fs::write(dir.path().join("config.json"), config(&hang_url)).unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let base = retarget(&mint_url(dir.path(), &[]), &relay);
    let http = reqwest::Client::new();
    for i in 0..20 {
        let r = http
            .post(format!("{base}chat/completions"))
            .header("x-request-id", format!("hang-{i}"))
            .json(&common::chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    // The batch is written (and hangs) before the signal.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let signalled = std::time::Instant::now();
    let (status, logs) = exit_status(relay).await;
    let took = signalled.elapsed();
    assert!(status.success(), "{logs}");
    assert!(
        took < std::time::Duration::from_millis(3500),
        "exited {took:?} after SIGTERM with a 3 s grace\n{logs}"
    );
    assert!(logs.contains("in_spool=20"), "{logs}");

    // Next start, with a receiver that answers: the spool is replayed.
    let (url, records) = common::receiver().await;
    std::fs::write(dir.path().join("config.json"), config(&url)).unwrap();
    let relay = Relay::start(dir.path(), &[]);
    for _ in 0..200 {
        if records.lock().unwrap().len() >= 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let (status, logs) = exit_status(relay).await;
    assert!(status.success(), "{logs}");
    let ids: std::collections::BTreeSet<String> = records
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 20, "{ids:?}");
}
