//! The admin API over real HTTP (its own listener), and the `relayapi admin`
//! and `relayapi token` commands against it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use relayapi::usage::UsageStore;
use serde_json::Value;

const ADMIN_KEY: &str = "admin-test-key-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_relayapi");

fn with_admin(c: &mut relayapi::config::Config) {
    c.admin.listen = "127.0.0.1:0".into();
    c.admin.api_key = Some(ADMIN_KEY.into());
}

fn admin_url(env: &Env) -> String {
    format!("http://{}", env.relay.admin_addr.expect("admin API on"))
}

async fn admin(env: &Env, method: reqwest::Method, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = env
        .http
        .request(method, format!("{}{path}", admin_url(env)));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    assert!(
        r.headers()
            .get("x-request-id")
            .is_some_and(|v| v.to_str().unwrap().starts_with("req_")),
        "admin answers carry a request id: {:?}",
        r.headers()
    );
    (status, r.json().await.unwrap())
}

async fn chat(env: &Env, token: &str) -> reqwest::Response {
    env.http
        .post(format!("{}{token}/chat/completions", env.base()))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_api_is_off_without_a_key() {
    let env = Env::start().await;
    assert!(env.relay.admin_addr.is_none());
}

#[tokio::test]
async fn admin_key_is_required_and_checked() {
    let env = Env::start_with(with_admin, UsageStore::memory()).await;
    for key in [
        None,
        Some("wrong"),
        Some(""),
        Some(&ADMIN_KEY[..ADMIN_KEY.len() - 1]),
    ] {
        let (s, v) = admin(&env, reqwest::Method::GET, "/admin/usage", key).await;
        assert_eq!(s, 401, "{key:?}");
        assert_eq!(v["error"]["code"], "admin_unauthorized");
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    let (s, _) = admin(&env, reqwest::Method::GET, "/admin/usage", Some(ADMIN_KEY)).await;
    assert_eq!(s, 200);
    let (s, v) = admin(&env, reqwest::Method::GET, "/admin/nope", Some(ADMIN_KEY)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = admin(
        &env,
        reqwest::Method::GET,
        "/admin/tokens/x/revoke",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (s, v) = admin(
        &env,
        reqwest::Method::GET,
        "/admin/tokens/a.b",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_jti")));
}

#[tokio::test]
async fn a_hashed_admin_key_works_too() {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(ADMIN_KEY.as_bytes()));
    let env = Env::start_with(
        |c| {
            c.admin.listen = "127.0.0.1:0".into();
            c.admin.api_key_sha256 = Some(hash);
        },
        UsageStore::memory(),
    )
    .await;
    let (s, _) = admin(&env, reqwest::Method::GET, "/admin/usage", Some(ADMIN_KEY)).await;
    assert_eq!(s, 200);
    let (s, _) = admin(&env, reqwest::Method::GET, "/admin/usage", Some("other")).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn revoke_token_report_and_usage_per_sub() {
    let env = Env::start_with(with_admin, UsageStore::memory()).await;
    let alice1 = env.claims("openai").with_sub("alice").with_max_calls(10);
    let alice2 = env.claims("openai").with_sub("alice");
    let bob = env.claims("openai").with_sub("bob smith");
    let (t1, t2, t3) = (env.mint(&alice1), env.mint(&alice2), env.mint(&bob));
    let mut tokens_seen = 0;
    for t in [&t1, &t1, &t2, &t3] {
        let r = chat(&env, t).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        tokens_seen += v["usage"]["total_tokens"].as_u64().unwrap();
    }
    // The statistics are batched off the request path; a read flushes them
    // (the finish hook runs right after each response was read).
    let report = loop {
        let (s, v) = admin(
            &env,
            reqwest::Method::GET,
            &format!("/admin/tokens/{}", alice1.jti),
            Some(ADMIN_KEY),
        )
        .await;
        assert_eq!(s, 200);
        if v["calls"] == 2 {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(report["sub"], "alice");
    assert_eq!(report["max_calls_used"], 2);
    assert_eq!(report["revoked"], false);
    assert!(report["llm_tokens"].as_u64().unwrap() > 0);
    assert!(report["first_use"].as_i64().unwrap() <= report["last_use"].as_i64().unwrap());
    assert!(!report.to_string().contains(MOCK_KEY));

    let (_, alice) = admin(
        &env,
        reqwest::Method::GET,
        "/admin/usage?sub=alice",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(
        (alice["tokens"].as_u64(), alice["calls"].as_u64()),
        (Some(2), Some(3))
    );
    let (_, all) = admin(&env, reqwest::Method::GET, "/admin/usage", Some(ADMIN_KEY)).await;
    let users = all["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    let total: u64 = users
        .iter()
        .map(|u| u["llm_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(total, tokens_seen);
    let (_, nobody) = admin(
        &env,
        reqwest::Method::GET,
        "/admin/usage?sub=nobody",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(nobody["calls"], 0);
    // A space as forms and HTTP libraries send it, and percent-encoded.
    for query in ["sub=bob+smith", "sub=bob%20smith", "other=1&sub=bob+smith"] {
        let (_, bob) = admin(
            &env,
            reqwest::Method::GET,
            &format!("/admin/usage?{query}"),
            Some(ADMIN_KEY),
        )
        .await;
        assert_eq!(
            (bob["sub"].as_str(), bob["calls"].as_u64()),
            (Some("bob smith"), Some(1)),
            "{query}"
        );
    }

    // Revoked: refused at once, before the provider.
    let before = env.mock.journal().total();
    let (s, v) = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/tokens/{}/revoke", alice1.jti),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!((s, v["revoked"].as_bool()), (200, Some(true)));
    assert_eq!(
        error_code(chat(&env, &t1).await).await,
        (401, "token_revoked".into())
    );
    assert_eq!(env.mock.journal().total(), before);
    // The other tokens still work.
    assert_eq!(chat(&env, &t2).await.status(), 200);
}

#[tokio::test]
async fn responses_usage_is_counted_per_token_json_and_stream() {
    let env = Env::start_with(with_admin, UsageStore::memory()).await;
    let claims = env.claims("openai").with_sub("carol");
    let token = env.mint(&claims);
    let url = format!("{}{token}/responses", env.base());
    let body = serde_json::json!({"model": "gpt-4o-mini", "input": "count me"});
    let v: Value = env
        .http
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut expected = v["usage"]["total_tokens"].as_u64().unwrap();
    let mut stream = body.clone();
    stream["stream"] = serde_json::json!(true);
    let text = env
        .http
        .post(&url)
        .json(&stream)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The `response.completed` event (the last one) carries the usage.
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: response.completed\n"), "{text}");
    let data: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    expected += data["response"]["usage"]["total_tokens"].as_u64().unwrap();
    let report = loop {
        let (s, v) = admin(
            &env,
            reqwest::Method::GET,
            &format!("/admin/tokens/{}", claims.jti),
            Some(ADMIN_KEY),
        )
        .await;
        assert_eq!(s, 200);
        if v["calls"] == 2 && v["llm_tokens"] == expected {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(report["sub"], "carol");
}

#[tokio::test]
async fn revocations_and_usage_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let env = Env::start_with(with_admin, UsageStore::open_sqlite(&db).unwrap()).await;
    let claims = env.claims("openai").with_sub("carol");
    let token = env.mint(&claims);
    assert_eq!(chat(&env, &token).await.status(), 200);
    let (s, _) = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/tokens/{}/revoke", claims.jti),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(s, 200);
    let Env {
        relay, key, mock, ..
    } = env;
    relay.stop().await;
    drop(mock);

    // A new relay on the same file, same key.
    let env = Env::start_with(with_admin, UsageStore::open_sqlite(&db).unwrap()).await;
    let token = relayapi_token::encode_v2(&key, &claims).unwrap();
    let mut keyring = relayapi_token::Keyring::new();
    keyring.insert(key).unwrap();
    env.relay.state.keys.replace(keyring.into());
    assert_eq!(
        error_code(chat(&env, &token).await).await,
        (401, "token_revoked".into())
    );
    let (_, report) = admin(
        &env,
        reqwest::Method::GET,
        &format!("/admin/tokens/{}", claims.jti),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(report["revoked"], true);
    assert_eq!(report["calls"], 1, "{report}");
    assert_eq!(report["sub"], "carol");
}

/// Runs the binary off the runtime's threads (the relay it talks to runs
/// on them).
async fn run(args: &[&str], admin_key: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("RELAYAPI_ADMIN_KEY")
        .env_remove("RELAYAPI_ADMIN_URL");
    if let Some(k) = admin_key {
        cmd.env("RELAYAPI_ADMIN_KEY", k);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn cli_admin_commands_talk_to_the_admin_api() {
    let env = Env::start_with(with_admin, UsageStore::memory()).await;
    let claims = env.claims("openai").with_sub("dave");
    let token = env.mint(&claims);
    assert_eq!(chat(&env, &token).await.status(), 200);
    let url = admin_url(&env);
    // A jti may start with '-' (one in 64 random ones does): still an argument.
    let out = run(
        &[
            "admin",
            "--admin-url",
            url.as_str(),
            "token",
            "-AAAAAAAAAAAAAAAAAAAAA",
        ],
        Some(ADMIN_KEY),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = ["admin", "--admin-url", url.as_str()];

    let out = run(
        &[&base[..], &["usage", "--sub", "dave"]].concat(),
        Some(ADMIN_KEY),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sub"], "dave");

    let out = run(
        &[&base[..], &["revoke", &claims.jti]].concat(),
        Some(ADMIN_KEY),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &[&base[..], &["token", &claims.jti]].concat(),
        Some(ADMIN_KEY),
    )
    .await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["revoked"], true);
    assert_eq!(
        error_code(chat(&env, &token).await).await,
        (401, "token_revoked".into())
    );

    // Wrong key: a failing exit with the API's code; no key at all: told how.
    let out = run(
        &[&base[..], &["token", &claims.jti]].concat(),
        Some("wrong"),
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_unauthorized"));
    let out = run(&[&base[..], &["token", &claims.jti]].concat(), None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RELAYAPI_ADMIN_KEY"));
}

#[tokio::test]
async fn cli_token_mints_policy_claims_and_key_refs() {
    let dir = tempfile::tempdir().unwrap();
    let rai = relayapi_token::RaiConfig::generate("http://127.0.0.1", 8840);
    let rai_path = dir.path().join("k.rai");
    std::fs::write(&rai_path, rai.to_json_pretty()).unwrap();
    let rai_arg = rai_path.to_str().unwrap();
    let out = run(
        &[
            "token",
            "--rai",
            rai_arg,
            "--provider",
            "openai",
            "--key-ref",
            "team",
            "--origins",
            "https://app.example.com,*.example.org",
            "--ips",
            "10.0.0.0/8",
            "--paths",
            "chat/completions",
            "--methods",
            "post,GET",
            "--rps",
            "2",
            "--burst",
            "5",
            "--concurrency",
            "3",
            "--max-tokens",
            "1000",
            "--max-body-bytes",
            "65536",
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let ring = relayapi_token::Keyring::from(relayapi_token::V2Key::from_rai(&rai));
    let c = relayapi_token::open_v2(&ring, token.trim()).unwrap();
    assert_eq!(c.key_ref(), Some("team"));
    assert!(c.api_key().is_none());
    assert_eq!(c.methods, Some(vec!["POST".into(), "GET".into()]));
    assert_eq!((c.rps, c.burst, c.concurrency), (Some(2), Some(5), Some(3)));
    assert_eq!((c.max_tokens, c.max_body_bytes), (Some(1000), Some(65536)));
    assert_eq!(c.origins.unwrap().len(), 2);

    for (bad, needle) in [
        (vec!["--ips", "10.0.0.1/8"], "--ips"),
        (vec!["--origins", "https://a.example/"], "--origins"),
        (vec!["--paths", "/chat"], "--paths"),
        (vec!["--burst", "3"], "--rps"),
    ] {
        let args = [
            &[
                "token",
                "--rai",
                rai_arg,
                "--provider",
                "openai",
                "--api-key",
                "sk-x",
            ][..],
            &bad,
        ]
        .concat();
        let out = run(&args, None).await;
        assert!(!out.status.success(), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Neither --api-key nor --key-ref.
    let out = run(&["token", "--rai", rai_arg, "--provider", "openai"], None).await;
    assert!(!out.status.success());
}
