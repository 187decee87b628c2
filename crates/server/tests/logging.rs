//! Request logging end to end: real requests through the relay, records
//! delivered to a real local webhook receiver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use relayapi::usage::UsageStore;
use serde_json::Value;

async fn logged_env(bodies: bool) -> (Env, Arc<Mutex<Vec<Value>>>) {
    let (url, records) = receiver().await;
    let env = Env::start_with(
        move |c| {
            trust_loopback(c);
            c.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
            c.log.web.enabled = true;
            c.log.web.callback_url = url;
            c.log.bodies = bodies;
            c.log.batch_max_delay = Duration::from_millis(20);
        },
        UsageStore::memory(),
    )
    .await;
    (env, records)
}

fn by_id<'a>(records: &'a [Value], id: &str) -> &'a Value {
    let hits: Vec<&Value> = records.iter().filter(|r| r["request_id"] == id).collect();
    assert_eq!(hits.len(), 1, "exactly one record for {id}: {records:?}");
    hits[0]
}

#[tokio::test]
async fn one_record_per_request_with_usage_and_no_secret() {
    let (env, records) = logged_env(true).await;
    let mut claims = env.claims("openai");
    claims.sub = Some("user-42".into());
    claims.max_calls = Some(10);
    let token = env.mint(&claims);
    let url = format!("{}{token}/chat/completions", env.base());

    // 1. JSON response.
    let r1 = env
        .http
        .post(&url)
        .header("x-request-id", "log-json")
        .header("authorization", "Bearer sk-client-side-placeholder")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r1.status(), 200);
    r1.text().await.unwrap();
    // 2. Stream with the usage chunk.
    let mut body = chat_body(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let r2 = env
        .http
        .post(&url)
        .header("x-request-id", "log-sse")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r2.text().await.unwrap().contains("[DONE]"));
    // 3. Refused by the relay.
    let r3 = env
        .http
        .post(format!(
            "{}{}x/chat/completions",
            env.base(),
            &token[..token.len() - 1]
        ))
        .header("x-request-id", "log-refused")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r3.status(), 401);
    let refused_body = r3.text().await.unwrap();
    // 4. Client leaves mid-stream.
    let r4 = env
        .http
        .post(&url)
        .header("x-request-id", "log-gone")
        .header("x-mock-chunk-delay-ms", "100")
        .header("x-mock-chunks", "30")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut s = r4.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s);

    let all = wait_records(&records, 4).await;
    assert_eq!(all.len(), 4, "{all:?}");

    let json = by_id(&all, "log-json");
    assert_eq!(json["status"], 200);
    assert_eq!(json["upstream_status"], 200);
    assert_eq!(json["provider"], "openai");
    assert_eq!(json["sub"], "user-42");
    assert_eq!(json["jti"], claims.jti);
    assert_eq!(json["kid"], env.key.kid());
    assert_eq!(json["model_requested"], "gpt-4o-mini");
    assert_eq!(json["model_sent"], "gpt-4o-mini", "sent as requested");
    assert_eq!(json["path"], "/relayapi/chat/completions");
    assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(json["bytes_in"].as_u64().unwrap() > 0 && json["bytes_out"].as_u64().unwrap() > 0);
    assert!(json["response_body"]["text"]
        .as_str()
        .unwrap()
        .contains("hello relay"));
    assert_eq!(json["stream"], false);
    assert!(json["ttfb_ms"].is_u64());

    let sse = by_id(&all, "log-sse");
    assert_eq!(sse["stream"], true);
    assert!(sse["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(
        sse["response_body"]["text"]
            .as_str()
            .unwrap()
            .contains("hello relay"),
        "{sse}"
    );
    assert!(sse["response_body"]["sse_events"].as_u64().unwrap() >= 3);

    let refused = by_id(&all, "log-refused");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["error_code"], "token_invalid");
    assert!(refused["upstream_status"].is_null());
    assert!(refused["model_sent"].is_null(), "nothing went upstream");
    // What the client got from the relay itself, as for a provider's answer.
    assert_eq!(refused["bytes_out"], refused_body.len() as u64);
    assert_eq!(refused["response_body"]["text"], refused_body);
    let has =
        |headers: &Value, name: &str| headers.as_array().unwrap().iter().any(|h| h[0] == name);
    assert!(
        has(&refused["response_headers"], "content-type"),
        "{refused}"
    );
    assert!(
        has(&refused["request_headers"], "x-request-id"),
        "{refused}"
    );
    // Refused before the body was read: no request body.
    assert!(refused["request_body"].is_null());

    let gone = by_id(&all, "log-gone");
    assert_eq!(gone["client_aborted"], true);
    assert_eq!(gone["stream"], true);

    // The canaries: the provider key, the token, the .rai key — nowhere.
    let text = serde_json::to_string(&all).unwrap();
    for (what, secret) in [
        ("provider key", MOCK_KEY),
        ("token", token.as_str()),
        ("token tail", &token[token.len() - 24..]),
        ("aes_key", env.rai.crypto.aes_key.expose()),
    ] {
        assert!(!text.contains(secret), "{what} reached a log record");
    }
    assert!(!text.contains("sk-client-side-placeholder"));
    assert!(
        text.contains("[REDACTED]"),
        "credential header values are masked, not dropped"
    );
}

#[tokio::test]
async fn anthropic_stream_usage_and_path_token_removed() {
    let (env, records) = logged_env(false).await;
    let token = env.token("anthropic");
    let resp = env
        .http
        .post(format!("{}{token}/v1/messages", env.base()))
        .header("x-request-id", "log-anthropic")
        .json(
            &serde_json::json!({"model": "claude-x", "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "count my tokens"}]}),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("message_stop"));
    let all = wait_records(&records, 1).await;
    let r = by_id(&all, "log-anthropic");
    assert_eq!(r["path"], "/relayapi/v1/messages");
    let usage = &r["usage"];
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 0
            && usage["completion_tokens"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert!(
        r["response_body"].is_null() && r["request_headers"].is_null(),
        "bodies are off by default"
    );
}

/// Gemini names the model in the path; a token's pinned model rewrites it.
#[tokio::test]
async fn gemini_model_comes_from_the_path() {
    let (env, records) = logged_env(false).await;
    let plain = env.token("gemini");
    let mut claims = env.claims("gemini");
    claims.model = Some("gemini-pinned".into());
    let pinned = env.mint(&claims);
    for (id, token) in [("gem-plain", &plain), ("gem-pinned", &pinned)] {
        let resp = env
            .http
            .post(format!(
                "{}{token}/v1beta/models/gemini-2.0-flash:generateContent",
                env.base()
            ))
            .header("x-request-id", id)
            .json(&serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    let all = wait_records(&records, 2).await;
    let plain = by_id(&all, "gem-plain");
    assert_eq!(plain["model_requested"], "gemini-2.0-flash", "{plain}");
    assert_eq!(plain["model_sent"], "gemini-2.0-flash");
    assert!(plain["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let pinned = by_id(&all, "gem-pinned");
    assert_eq!(pinned["model_requested"], "gemini-2.0-flash");
    assert_eq!(pinned["model_sent"], "gemini-pinned");
}

#[tokio::test]
async fn a_body_cut_by_max_body_bytes_is_counted_as_received() {
    let (env, records) = logged_env(false).await;
    let token = env.mint(&env.claims("openai").with_max_body_bytes(10));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![b'a'; 6]), Ok(vec![b'b'; 200])];
    let resp = env
        .http
        .post(format!("{}{token}/upload", env.base()))
        .header("x-request-id", "cut-body")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let all = wait_records(&records, 1).await;
    let cut = by_id(&all, "cut-body");
    assert_eq!(cut["error_code"], "payload_too_large", "{cut}");
    assert!(
        cut["bytes_in"].as_u64().unwrap() > 10,
        "the cutting chunk counts: {cut}"
    );
}

#[tokio::test]
async fn webhook_outage_loses_no_record() {
    let (url, records, down) = switchable_receiver().await;
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_path_buf();
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let env = Env::start_with(
        move |c| {
            trust_loopback(c);
            c.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
            c.log.web.enabled = true;
            c.log.web.callback_url = url;
            c.log.batch_max_delay = Duration::from_millis(20);
            // A tiny queue, so the outage overflows into the spool.
            c.log.queue_capacity = 20;
            c.log.spool_dir = Some(spool_dir);
        },
        UsageStore::memory(),
    )
    .await;
    let url = format!("{}{}/models", env.base(), env.token("openai"));
    let n = 1000;
    let statuses = get_each(&env.http, &url, (0..n).map(|i| format!("outage-{i}"))).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(
        records.lock().unwrap().is_empty(),
        "nothing is accepted while the receiver is down"
    );

    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut unique = std::collections::BTreeSet::new();
    for _ in 0..600 {
        unique = records
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r["request_id"].as_str().map(str::to_string))
            .filter(|id| id.starts_with("outage-"))
            .collect();
        if unique.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(unique.len(), n, "every record arrives after the outage");
    let stats = env.relay.state.logger.as_ref().unwrap().pipeline.stats();
    assert_eq!(stats[0].dropped, 0, "{stats:?}");
}

/// A client that hangs up while the relay waits for the provider's head
/// still gets its one record, and `/health` counts it; the token's slot and
/// budget reservation are given back.
#[tokio::test]
async fn a_client_gone_before_the_answer_head_still_gets_one_record() {
    let (env, records) = logged_env(false).await;
    let mut claims = env.claims("openai");
    claims.concurrency = Some(1);
    claims.max_tokens = Some(100_000);
    let token = env.mint(&claims);
    let url = format!("{}{token}/chat/completions", env.base());
    let mut body = chat_body(false);
    body["max_tokens"] = 50.into();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = impatient
        .post(&url)
        .header("x-request-id", "gone-early")
        .header("x-mock-delay-ms", "3000")
        .json(&body)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    let all = wait_records(&records, 1).await;
    let r = by_id(&all, "gone-early");
    assert_eq!(r["client_aborted"], true, "{r}");
    assert_eq!(r["status"], 499, "{r}");
    assert_eq!(r["bytes_out"], 0);
    assert!(r["bytes_in"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["upstream_status"].is_null() && r["ttfb_ms"].is_null(),
        "{r}"
    );
    assert!(r["error_code"].is_null(), "{r}");
    assert_eq!(r["model_sent"], "gpt-4o-mini", "it went upstream: {r}");
    assert!(r["duration_ms"].as_u64().unwrap() >= 150, "{r}");

    let health: Value = env
        .http
        .get(format!("http://{}/health", env.relay.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["requests"]["client_aborted"], 1, "{health}");
    assert_eq!(health["requests"]["in_flight"], 0, "{health}");
    assert_eq!(health["requests"]["rejected"], 0, "{health}");

    // The concurrency slot (limit 1) and the reservation were released: the
    // next call goes through, and the whole budget is still there.
    let resp = env
        .http
        .post(&url)
        .header("x-request-id", "after-gone")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let left: u64 = resp.headers()["x-relayapi-tokens-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    resp.text().await.unwrap();
    assert_eq!(left, 100_000 - 50, "only this call's reservation is held");
    let all = wait_records(&records, 2).await;
    assert_eq!(by_id(&all, "after-gone")["status"], 200);
    assert_eq!(all.len(), 2, "{all:?}");
}

/// A request still waiting for the provider's head when the shutdown grace
/// ends is dropped by the relay: one record, blaming the shutdown, not the
/// client.
#[tokio::test]
async fn a_request_waiting_for_its_head_at_the_end_of_the_grace_gets_one_record() {
    let (url, records) = receiver().await;
    let env = Env::start_with(
        move |c| {
            trust_loopback(c);
            c.server.shutdown_grace = Duration::from_secs(1);
            c.log.web.enabled = true;
            c.log.web.callback_url = url;
            c.log.batch_max_delay = Duration::from_millis(20);
        },
        UsageStore::memory(),
    )
    .await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let waiting = env
        .http
        .post(&url)
        .header("x-request-id", "head-at-shutdown")
        .header("x-mock-delay-ms", "10000")
        .json(&chat_body(false));
    let waiting = tokio::spawn(async move { waiting.send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = env.relay.state.clone();
    env.relay.stop().await;
    assert!(waiting.await.unwrap().is_err(), "no answer was sent");
    let all = records.lock().unwrap().clone();
    let r = by_id(&all, "head-at-shutdown");
    assert_eq!(r["client_aborted"], false, "{r}");
    assert_eq!(r["error_code"], "shutdown", "{r}");
    assert_eq!(r["status"], 503, "{r}");
    assert!(r["upstream_status"].is_null(), "{r}");
    let aborted = stats
        .stats
        .client_aborted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(aborted, 0, "not the client's doing");
}
