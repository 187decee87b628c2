//! The policy claims enforced over real HTTP: relay and mock on 127.0.0.1:0.
//! Every refusal is checked at the mock too: a refused request never
//! reaches the provider (the mock's journal records what arrived).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use relayapi::usage::UsageStore;
use relayapi_mock::MockConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request exactly as written (no URL normalisation on the way,
/// unlike an HTTP client library) and returns status and body.
async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The paths (with queries) the mock provider received, in order.
fn paths_seen(env: &Env) -> Vec<String> {
    env.mock
        .journal()
        .entries()
        .into_iter()
        .map(|e| e.path)
        .collect()
}

/// POSTs `body` to `target` as written and asserts the relay refused it
/// with `status` and `code`.
async fn assert_refused(addr: SocketAddr, target: &str, body: &str, status: u16, code: &str) {
    let (got, text) = raw(addr, "POST", target, "", body).await;
    assert_eq!(got, status, "{target}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], code, "{target}");
}

/// A request body of `n` chunks of `size` bytes, sent without Content-Length.
fn chunked(n: usize, size: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..n).map(|_| Ok(vec![b'a'; size])).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

fn chat_json() -> String {
    chat_body(false).to_string()
}

/// Waits (bounded) until `f` holds; for effects of a response's finish hook,
/// which runs just after the client has read the body.
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn origins_refuse_other_sites_and_cors_echoes_only_allowed_origins() {
    let env = Env::start().await;
    let claims = env
        .claims("openai")
        .with_origins(["https://app.example.com", "*.example.org"]);
    let url = format!("{}{}/chat/completions", env.base(), env.mint(&claims));
    let send = |origin: Option<&'static str>| {
        let mut r = env.http.post(&url).json(&chat_body(false));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for ok in [
        "https://app.example.com",
        "HTTPS://APP.example.com",
        "https://a.b.example.org",
    ] {
        let r = send(Some(ok)).await.unwrap();
        assert_eq!(r.status(), 200, "{ok}");
        assert_eq!(r.headers()["access-control-allow-origin"], ok);
        assert!(r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-relayapi-tokens-remaining"));
    }
    // No Origin: not a browser's cross-origin request.
    assert_eq!(send(None).await.unwrap().status(), 200);
    let before = env.mock.journal().total();
    for bad in [
        "https://evil.example",
        "https://example.org",
        "http://app.example.com",
        "null",
    ] {
        let r = send(Some(bad)).await.unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{bad}"
        );
        assert_eq!(r.headers()["vary"], "Origin", "{bad}");
        assert_eq!(
            error_code(r).await,
            (403, "origin_not_allowed".into()),
            "{bad}"
        );
    }
    assert_eq!(
        env.mock.journal().total(),
        before,
        "refused requests reached the mock"
    );
    // A preflight carries no token: answered from the config alone.
    let pre = env
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
}

#[tokio::test]
async fn ips_use_the_same_client_ip_as_the_traffic_limits() {
    let env = Env::start_with(
        |c| c.server.trusted_proxies = vec!["127.0.0.1".into()],
        UsageStore::memory(),
    )
    .await;
    let token = env.mint(
        &env.claims("openai")
            .with_ips(["203.0.113.0/24", "2001:db8::/32"]),
    );
    let url = format!("{}{token}/chat/completions", env.base());
    let send = |xff: &'static str| {
        env.http
            .post(&url)
            .header("x-forwarded-for", xff)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(send("203.0.113.77").await.unwrap().status(), 200);
    assert_eq!(send("2001:db8::5").await.unwrap().status(), 200);
    let before = env.mock.journal().total();
    assert_eq!(
        error_code(send("198.51.100.1").await.unwrap()).await,
        (403, "ip_not_allowed".into())
    );
    // Without a forwarded address the peer (127.0.0.1) is the client.
    let direct = env.post_chat(&url, false).await;
    assert_eq!(error_code(direct).await, (403, "ip_not_allowed".into()));
    assert_eq!(env.mock.journal().total(), before);
}

#[tokio::test]
async fn methods_are_enforced_with_405() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_methods(["POST"]));
    let r = env
        .http
        .get(format!("{}{token}/models", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(error_code(r).await, (405, "method_not_allowed".into()));
    assert_eq!(env.mock.journal().total(), 0);
    let r = env
        .http
        .post(format!("{}{token}/chat/completions", env.base()))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn path_escapes_are_refused_and_never_reach_the_mock() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_paths(["chat/completions"]));
    let addr = env.relay.addr;
    let body = chat_json();
    // Normalised forms of the allowed path are forwarded normalised.
    for allowed in [
        "chat/completions",
        "chat/./completions",
        "ch%61t/completions",
        "chat/x/../completions",
        "chat/%2E/completions",
    ] {
        let (status, text) = raw(
            addr,
            "POST",
            &format!("/relayapi/{token}/{allowed}"),
            "",
            &body,
        )
        .await;
        assert_eq!(status, 200, "{allowed}: {text}");
    }
    let seen = paths_seen(&env);
    assert!(seen.iter().all(|p| p == "/v1/chat/completions"), "{seen:?}");

    let before = env.mock.journal().total();
    for attempt in [
        "models",
        "chat/completions/../../models",
        "chat/completions/../../../v1/models",
        "../models",
        "%2e%2e/models",
        "%2E%2e/models",
        "chat/%2E%2E/%2e%2E/models",
        "chat//completions",
        "chat/completions%2f..%2f..%2fmodels",
        "chat%2Fcompletions",
        "chat%5Ccompletions",
        "chat/completions%00",
        "chat/completionsx",
        "Chat/Completions",
    ] {
        let target = format!("/relayapi/{token}/{attempt}");
        assert_refused(addr, &target, &body, 403, "path_not_allowed").await;
    }
    // A raw backslash is refused too (by hyper or by us; either way, not forwarded).
    for attempt in ["chat\\..\\models", "chat\\completions"] {
        let (status, _) = raw(
            addr,
            "POST",
            &format!("/relayapi/{token}/{attempt}"),
            "",
            &body,
        )
        .await;
        assert!(status == 403 || status == 400, "{attempt}: {status}");
    }
    // The token in a header instead of the path: same rules.
    let auth = format!("Authorization: Bearer {token}\r\n");
    let (status, _) = raw(
        addr,
        "POST",
        "/relayapi/chat/completions/../../models",
        &auth,
        &body,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = raw(addr, "POST", "/relayapi/chat/completions", &auth, &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        env.mock.journal().total(),
        before + 1,
        "only the last allowed call arrived"
    );
}

#[tokio::test]
async fn rps_limits_each_token_with_retry_after() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_rps(1, Some(2)));
    let other = env.token("openai");
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = env
            .http
            .get(format!("{}{token}/models", env.base()))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").cloned();
            assert_eq!(error_code(r).await.1, "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    // burst 2, then 1 per second.
    assert!(
        admitted <= 2.0 + elapsed + 1.0,
        "{statuses:?} in {elapsed}s"
    );
    assert!(statuses.contains(&429), "{statuses:?} in {elapsed}s");
    let ra: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(ra >= 1);
    // Another token is not affected.
    let r = env
        .http
        .get(format!("{}{other}/models", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_3_never_has_more_than_3_in_flight_at_the_mock() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_concurrency(3));
    let url = format!("{}{token}/chat/completions", env.base());
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (http, url) = (env.http.clone(), url.clone());
            tokio::spawn(async move {
                let r = http
                    .post(&url)
                    .header("x-mock-chunk-delay-ms", "20")
                    .header("x-mock-chunks", "4")
                    .json(&chat_body(true))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                if status == 429 {
                    assert_eq!(r.headers()["retry-after"], "1");
                    let v: Value = r.json().await.unwrap();
                    assert_eq!(v["error"]["code"], "concurrency_exceeded");
                } else {
                    // Streams hold their slot until the body ends.
                    let _ = r.bytes().await.unwrap();
                }
                status
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    println!(
        "concurrency 3: {ok} relayed, {refused} refused, peak in flight at the mock {}",
        env.mock.journal().max_in_flight()
    );
    assert_eq!(ok + refused, 100);
    assert!(ok >= 3, "ok {ok}");
    let journal = env.mock.journal();
    assert_eq!(
        journal.total(),
        ok as u64,
        "refused requests reached the mock"
    );
    assert!(
        journal.max_in_flight() <= 3,
        "max in flight {}",
        journal.max_in_flight()
    );
    assert!(eventually(|| env.relay.state.policy.in_flight.tracked() == 0).await);
}

#[tokio::test]
async fn a_client_that_hangs_up_releases_its_concurrency_slot() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_concurrency(1));
    let url = format!("{}{token}/chat/completions", env.base());
    let r = env
        .http
        .post(&url)
        .header("x-mock-chunk-delay-ms", "500")
        .header("x-mock-chunks", "20")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    // While the first stream runs, a second request is refused.
    let busy = env.post_chat(&url, false).await;
    assert_eq!(error_code(busy).await, (429, "concurrency_exceeded".into()));
    drop(stream);
    assert!(
        eventually(|| env
            .relay
            .state
            .policy
            .in_flight
            .count(&relayapi_jti(&env, &token))
            == 0)
        .await
    );
    let again = env.post_chat(&url, false).await;
    assert_eq!(again.status(), 200);
}

fn relayapi_jti(env: &Env, token: &str) -> String {
    let ring = relayapi_token::Keyring::from(env.key.clone());
    relayapi_token::open_v2(&ring, token).unwrap().jti
}

#[tokio::test]
async fn max_body_bytes_refuses_big_bodies_up_front_and_while_streaming() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_max_body_bytes(300));
    let url = format!("{}{token}/chat/completions", env.base());
    assert_eq!(env.post_chat(&url, false).await.status(), 200);
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(400)}]});
    let r = env.http.post(&url).json(&big).send().await.unwrap();
    assert_eq!(error_code(r).await, (413, "payload_too_large".into()));
    assert_eq!(
        env.mock.journal().total(),
        1,
        "the big body was not forwarded"
    );
    // Chunked upload (no Content-Length): cut once it passes the limit.
    let r = env
        .http
        .post(format!("{}{token}/upload", env.base()))
        .body(chunked(10, 100))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (413, "payload_too_large".into()));
}

async fn usage_of(env: &Env, token: &str) -> Value {
    let r = env
        .http
        .get(format!("{}_relayapi/usage", env.base()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Sums the usage chunks of an OpenAI stream (when the client asked for them).
fn stream_usage(body: &str) -> Option<u64> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["usage"]["total_tokens"].as_u64())
        .last()
}

#[tokio::test]
async fn budget_reserves_settles_and_reports_tokens_remaining() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_max_tokens(1000));
    let url = format!("{}{token}/chat/completions", env.base());
    let mut body = chat_body(false);
    body["max_tokens"] = json!(100);
    let r = env.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-relayapi-tokens-remaining"], "900");
    let v: Value = r.json().await.unwrap();
    let used = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used > 0 && used < 100);
    // Settled to the real usage (the finish hook runs just after the read).
    let report = loop {
        let r = usage_of(&env, &token).await;
        if r["used"]["tokens"] == used {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(report["limits"]["max_tokens"], 1000);
    assert_eq!(report["remaining"]["tokens"], 1000 - used);
    assert!(!report.to_string().contains(MOCK_KEY));

    // A stream that did not ask for usage: the relay asked, settled from it,
    // and the client's stream has no usage chunk.
    let mut stream = chat_body(true);
    stream["max_tokens"] = json!(100);
    let r = env.http.post(&url).json(&stream).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(stream_usage(&text), None, "usage chunk leaked: {text}");
    let mut asked = stream.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let r = env.http.post(&url).json(&asked).send().await.unwrap();
    let text = r.text().await.unwrap();
    let streamed = stream_usage(&text).expect("the client asked for usage");
    // Both streams were settled to their real usage, not the reservation.
    let expected = used + 2 * streamed;
    loop {
        let r = usage_of(&env, &token).await;
        if r["used"]["tokens"] == expected {
            break;
        }
        assert!(r["used"]["tokens"].as_u64().unwrap() < 1000, "{r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `usage.total_tokens` of a Responses stream's `response.completed` event.
fn responses_stream_usage(body: &str) -> Option<u64> {
    body.split("\n\n")
        .filter(|e| e.starts_with("event: response.completed\n"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v["response"]["usage"]["total_tokens"].as_u64())
}

#[tokio::test]
async fn budget_settles_from_responses_usage_json_and_stream() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_max_tokens(1000));
    let url = format!("{}{token}/responses", env.base());
    // The Responses API names its output limit `max_output_tokens`.
    let body =
        json!({"model": "gpt-4o-mini", "input": "hello responses", "max_output_tokens": 100});
    let r = env.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-relayapi-tokens-remaining"], "900");
    let v: Value = r.json().await.unwrap();
    let used = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used > 0 && used < 100, "{v}");

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let r = env.http.post(&url).json(&stream).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    // Relayed as the provider sent it: nothing added, nothing stripped.
    assert!(text.starts_with("event: response.created\n"), "{text}");
    let streamed = responses_stream_usage(&text).expect("response.completed has usage");
    // Both calls were settled to the usage they reported, not their reservations.
    let expected = used + streamed;
    loop {
        let r = usage_of(&env, &token).await;
        if r["used"]["tokens"] == expected {
            assert_eq!(r["remaining"]["tokens"], 1000 - expected);
            break;
        }
        assert!(r["used"]["tokens"].as_u64().unwrap() < 200, "{r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(paths_seen(&env), ["/v1/responses", "/v1/responses"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_is_exact_under_concurrent_streams() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_max_tokens(1000));
    let url = format!("{}{token}/chat/completions", env.base());
    let mut body = chat_body(true);
    body["max_tokens"] = json!(300);
    body["stream_options"] = json!({"include_usage": true});
    let mut charged = 0u64;
    let mut admitted = 0;
    let mut exhausted_waves = 0;
    // Waves of 10 concurrent streams (~250 tokens each, reserving 300) until
    // nothing fits any more.
    for _ in 0..10 {
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (http, url, body) = (env.http.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    let r = http
                        .post(&url)
                        .header("x-mock-chunk-delay-ms", "30")
                        .header("x-mock-chunk-bytes", "200")
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        200 => Some(stream_usage(&r.text().await.unwrap()).unwrap()),
                        429 => {
                            let v: Value = r.json().await.unwrap();
                            assert_eq!(v["error"]["code"], "budget_exhausted");
                            None
                        }
                        s => panic!("status {s}"),
                    }
                })
            })
            .collect();
        let mut any = false;
        for t in tasks {
            if let Some(u) = t.await.unwrap() {
                charged += u;
                admitted += 1;
                any = true;
            }
        }
        if !any {
            exhausted_waves += 1;
            break;
        }
    }
    assert_eq!(exhausted_waves, 1, "the budget ran out");
    assert!(admitted >= 3);
    // Never more in flight than reservations fit: 3 x 300 <= 1000 < 4 x 300.
    assert!(
        env.mock.journal().max_in_flight() <= 3,
        "{}",
        env.mock.journal().max_in_flight()
    );
    // Settled exactly to the usage the streams reported, within budget + one reservation.
    let used = loop {
        let r = usage_of(&env, &token).await;
        let used = r["used"]["tokens"].as_u64().unwrap();
        if used == charged {
            break used;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "budget 1000: {admitted} streams admitted, settled {used}, peak in flight {}",
        env.mock.journal().max_in_flight()
    );
    assert!(used <= 1000 + 300, "settled {used}");
    assert_eq!(env.mock.journal().total(), admitted as u64);
}

#[tokio::test]
async fn a_stream_cut_by_the_client_is_charged_its_reservation() {
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_max_tokens(10_000));
    let url = format!("{}{token}/chat/completions", env.base());
    let mut body = chat_body(true);
    body["max_tokens"] = json!(500);
    let r = env
        .http
        .post(&url)
        .header("x-mock-chunk-delay-ms", "300")
        .header("x-mock-chunks", "20")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-relayapi-tokens-remaining"], "9500");
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    // No usage was reported before the cut: the reservation stays charged.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = usage_of(&env, &token).await;
    assert_eq!(r["used"]["tokens"], 500, "{r}");
}

#[tokio::test]
async fn default_reservation_applies_when_the_request_names_no_limit() {
    let env = Env::start_with(
        |c| c.policy.default_token_reservation = 50,
        UsageStore::memory(),
    )
    .await;
    let token = env.mint(&env.claims("openai").with_max_tokens(120));
    let url = format!("{}{token}/chat/completions", env.base());
    let r = env.post_chat(&url, false).await;
    assert_eq!(r.headers()["x-relayapi-tokens-remaining"], "70");
    r.bytes().await.unwrap();
    // A reservation larger than what is left is refused before forwarding.
    let mut big = chat_body(false);
    big["max_tokens"] = json!(200);
    let r = env.http.post(&url).json(&big).send().await.unwrap();
    // The refusal says what is left, like every admitted call did.
    let left: u64 = r.headers()["x-relayapi-tokens-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(error_code(r).await, (429, "budget_exhausted".into()));
    assert_eq!(env.mock.journal().total(), 1);
    let v = usage_of(&env, &token).await;
    assert_eq!(v["remaining"]["tokens"], left, "{v}");
    assert!(left < 120, "the first call was charged: {v}");
}

#[tokio::test]
async fn only_a_post_reserves_budget() {
    // A default reservation (4096) larger than the budget must not block
    // calls that cannot generate anything, like listing models.
    let env = Env::start().await;
    let token = env.mint(&env.claims("openai").with_max_tokens(100));
    let models = format!("{}{token}/models", env.base());
    for _ in 0..3 {
        let r = env.http.get(&models).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let url = format!("{}{token}/chat/completions", env.base());
    let r = env.post_chat(&url, false).await;
    assert_eq!(error_code(r).await, (429, "budget_exhausted".into()));
    assert_eq!(env.mock.journal().total(), 3);
}

#[tokio::test]
async fn usage_route_shows_limits_and_what_is_left_without_counting() {
    let env = Env::start().await;
    let claims = env
        .claims("openai")
        .with_max_calls(3)
        .with_max_tokens(500)
        .with_rps(5, None)
        .with_sub("user-7");
    let token = env.mint(&claims);
    let mut body = chat_body(false);
    body["max_tokens"] = json!(50);
    let r = env
        .http
        .post(format!("{}{token}/chat/completions", env.base()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-relayapi-calls-remaining"], "2");
    assert_eq!(r.headers()["x-relayapi-tokens-remaining"], "450");
    r.bytes().await.unwrap();
    for _ in 0..3 {
        // Token in the path, in the header: both work; neither counts.
        let v: Value = env
            .http
            .get(format!("{}{token}/_relayapi/usage", env.base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["remaining"]["calls"], 2, "{v}");
        assert_eq!(v["limits"]["max_calls"], 3);
        assert_eq!(v["limits"]["rps"], 5);
        assert_eq!(v["limits"]["burst"], 5);
        assert_eq!(v["sub"], "user-7");
        assert!(!v.to_string().contains(MOCK_KEY));
        let v = usage_of(&env, &token).await;
        assert_eq!(v["remaining"]["calls"], 2);
    }
    // The relay's own namespace is never forwarded.
    for (method, path) in [("POST", "_relayapi/usage"), ("GET", "_relayapi/other")] {
        let r = env
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{token}/{path}", env.base()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (404, "not_found".into()),
            "{method} {path}"
        );
    }
    // Nor is it reached by spellings that only normalise to it (sent as
    // written: a client library would resolve the dot segments itself).
    for path in [
        "./_relayapi/usage",
        "x/../_relayapi/usage",
        "%2E/_relayapi/usage",
        "%5Frelayapi/usage",
        "%5frelayapi/anything",
    ] {
        let (status, text) = raw(
            env.relay.addr,
            "GET",
            &format!("/relayapi/{token}/{path}"),
            "",
            "",
        )
        .await;
        assert_eq!(status, 404, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{path}");
    }
    assert_eq!(env.mock.journal().total(), 1);
    let v = usage_of(&env, &token).await;
    assert_eq!(v["remaining"]["calls"], 2, "nothing above was a call: {v}");
    // Without limits: nulls, not zeros.
    let v = usage_of(&env, &env.token("openai")).await;
    assert_eq!(v["remaining"]["calls"], Value::Null);
    assert_eq!(v["remaining"]["tokens"], Value::Null);
}

const POOL: [&str; 3] = [
    "sk-pool-key-one-1111",
    "sk-pool-key-two-2222",
    "sk-pool-key-three-333",
];

async fn pool_env(records_url: Option<String>) -> Env {
    let mock = MockConfig::new(MOCK_KEY)
        .with_extra_keys([POOL[0], POOL[2]])
        .with_key_fault(POOL[1], 429);
    Env::start_with_mock(
        mock,
        move |c| {
            c.credentials.insert(
                "team-openai".into(),
                relayapi::config::CredentialSettings {
                    provider: "openai".into(),
                    api_keys: POOL.iter().map(|k| (*k).into()).collect(),
                },
            );
            if let Some(url) = records_url {
                c.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
                c.log.web.enabled = true;
                c.log.web.callback_url = url;
                c.log.bodies = true;
                c.log.batch_max_delay = Duration::from_millis(20);
            }
        },
        UsageStore::memory(),
    )
    .await
}

#[tokio::test]
async fn key_ref_rotates_keys_and_retries_once_on_429() {
    let (url, records) = receiver().await;
    let env = pool_env(Some(url)).await;
    let claims = relayapi_token::Claims::new_key_ref("openai", "team-openai", 3600, now());
    let token = env.mint(&claims);
    // No provider key in the token, not even encrypted.
    let ring = relayapi_token::Keyring::from(env.key.clone());
    let plain = relayapi_token::open_v2(&ring, &token).unwrap().to_json();
    assert!(
        plain.contains(r#""key_ref":"team-openai""#) && !plain.contains("sk-"),
        "{plain}"
    );

    let url = format!("{}{token}/chat/completions", env.base());
    for _ in 0..3 {
        let r = env.post_chat(&url, false).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // Round-robin: call 1 -> key 0; call 2 -> key 1 (429) and the one retry on
    // key 2; call 3 -> key 2.
    let keys: Vec<String> = env
        .mock
        .journal()
        .entries()
        .into_iter()
        .map(|e| e.key.unwrap())
        .collect();
    assert_eq!(keys, [POOL[0], POOL[1], POOL[2], POOL[2]]);
    // A streamed upload of unknown length cannot be replayed: no retry.
    let before = env.mock.journal().total();
    let mut saw_429 = false;
    for _ in 0..3 {
        let r = env
            .http
            .post(format!("{}{token}/upload", env.base()))
            .body(chunked(1, 3))
            .send()
            .await
            .unwrap();
        saw_429 |= r.status() == 429;
    }
    assert!(saw_429, "the failing key's 429 came through");
    assert_eq!(env.mock.journal().total(), before + 3, "one attempt each");
    // The provider keys appear in no log record.
    let all = loop {
        let got = records.lock().unwrap().clone();
        if got.len() >= 6 {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let text = serde_json::to_string(&all).unwrap();
    for key in POOL {
        assert!(!text.contains(key), "{key} in the log");
    }
}

#[tokio::test]
async fn key_ref_must_name_a_credential_of_the_tokens_provider() {
    let env = pool_env(None).await;
    for claims in [
        relayapi_token::Claims::new_key_ref("openai", "no-such-credential", 3600, now()),
        relayapi_token::Claims::new_key_ref("anthropic", "team-openai", 3600, now()),
    ] {
        let r = env
            .http
            .post(format!(
                "{}{}/chat/completions",
                env.base(),
                env.mint(&claims)
            ))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (400, "credential_unknown".into()));
    }
    assert_eq!(env.mock.journal().total(), 0);
}

#[tokio::test]
async fn a_token_without_paths_still_cannot_climb_above_the_base_path() {
    let env = Env::start().await;
    let token = env.token("openai");
    let addr = env.relay.addr;
    let body = chat_json();
    for attempt in [
        "../../admin/secret",
        "chat/../../../x",
        "%2e%2e/%2e%2e/x",
        "chat%2f..%2f..%2fx",
        "chat/completions%00",
    ] {
        let target = format!("/relayapi/{token}/{attempt}");
        assert_refused(addr, &target, &body, 403, "path_not_allowed").await;
    }
    assert_eq!(env.mock.journal().total(), 0);
    // A dot segment that stays inside is forwarded resolved.
    let (status, text) = raw(
        addr,
        "POST",
        &format!("/relayapi/{token}/x/../chat/./completions"),
        "",
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = paths_seen(&env);
    assert_eq!(seen, ["/v1/chat/completions"]);
}

#[tokio::test]
async fn azure_configured_deployment_is_the_model_the_policy_sees() {
    // The test config's Azure provider has `deployment: "dep1"`: a plain
    // OpenAI SDK's `chat/completions` runs dep1, whatever the body names.
    let env = Env::start().await;
    let addr = env.relay.addr;
    let gpt4o = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let listed = env.mint(&env.claims("azure-openai").with_models(["gpt-4o"]));
    let target = format!("/relayapi/{listed}/chat/completions");
    assert_refused(addr, &target, gpt4o, 403, "model_not_allowed").await;
    assert_eq!(env.mock.journal().total(), 0);
    // A forced model replaces the deployment too, as in an explicit path.
    let forced = env.mint(&env.claims("azure-openai").with_model("gpt-x"));
    let (status, text) = raw(
        addr,
        "POST",
        &format!("/relayapi/{forced}/chat/completions"),
        "",
        gpt4o,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = paths_seen(&env);
    assert_eq!(
        seen,
        ["/openai/deployments/gpt-x/chat/completions?api-version=2024-10-21"]
    );
}

#[tokio::test]
async fn models_hold_for_the_model_in_gemini_and_azure_paths() {
    let env = Env::start().await;
    let addr = env.relay.addr;
    let gemini = env.mint(&env.claims("gemini").with_models(["gemini-flash"]));
    let contents = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    let flash_body = r#"{"model":"gemini-flash","contents":[{"parts":[{"text":"hi"}]}]}"#;
    for (path, body) in [
        ("v1beta/models/gemini-pro:generateContent", contents),
        // Gemini runs the path's model, whatever the body names.
        ("v1beta/models/gemini-pro:generateContent", flash_body),
        // An escaped name is decoded before the check.
        ("v1beta/models/gemini%2Dpro:generateContent", contents),
    ] {
        let target = format!("/relayapi/{gemini}/{path}");
        assert_refused(addr, &target, body, 403, "model_not_allowed").await;
    }
    let (status, text) = raw(
        addr,
        "POST",
        &format!("/relayapi/{gemini}/v1beta/models/gemini-flash:generateContent"),
        "",
        contents,
    )
    .await;
    assert_eq!(status, 200, "{text}");

    let azure = env.mint(&env.claims("azure-openai").with_models(["gpt-4o"]));
    let gpt4o = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, text) = raw(
        addr,
        "POST",
        &format!("/relayapi/{azure}/deployments/gpt-5/chat/completions"),
        "",
        gpt4o,
    )
    .await;
    assert_eq!(status, 403, "{text}");
    // A generating call that names no model is refused: the provider's
    // default is not in the list.
    let openai = env.mint(&env.claims("openai").with_models(["gpt-4o-mini"]));
    let (status, text) = raw(
        addr,
        "POST",
        &format!("/relayapi/{openai}/chat/completions"),
        "",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 403, "{text}");
    // A `model` query parameter (OpenAI's realtime endpoints read one)
    // names a model too: one off the list is refused, whatever the body says.
    let target = format!("/relayapi/{openai}/realtime/calls?model=gpt-4o");
    let mini = gpt4o.replace("gpt-4o", "gpt-4o-mini");
    assert_refused(addr, &target, &mini, 403, "model_not_allowed").await;
    assert_eq!(
        env.mock.journal().total(),
        1,
        "only the allowed Gemini call arrived"
    );
}
