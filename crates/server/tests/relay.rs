//! The relay end to end, in process: real HTTP on loopback between a
//! reqwest client, the relay and the mock provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use relayapi::usage::UsageStore;
use relayapi_token::{Claims, SecretString};

#[tokio::test]
async fn chat_completion_through_path_token() {
    let env = Env::start().await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let resp = env.post_chat(url, false).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("hello relay"));
}

#[tokio::test]
async fn every_token_location_works_and_none_is_forwarded() {
    let env = Env::start().await;
    let t = env.token("openai");
    let b = env.base();
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        (
            format!("{b}{t}/echo/p?x=1"),
            vec![("authorization", "Bearer ignored".into())],
        ),
        (format!("{b}echo/p?x=1&token={t}"), vec![]),
        (
            format!("{b}echo/p?x=1"),
            vec![("authorization", format!("Bearer {t}"))],
        ),
        (format!("{b}echo/p?x=1"), vec![("x-api-key", t.clone())]),
        (
            format!("{b}echo/p?x=1"),
            vec![("x-goog-api-key", t.clone())],
        ),
        (format!("{b}echo/p?x=1"), vec![("api-key", t.clone())]),
        (format!("{b}echo/p?x=1&key={t}"), vec![]),
    ];
    for (i, (url, headers)) in cases.into_iter().enumerate() {
        let mut req = env.http.get(&url);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "case {i}");
        let echo: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(echo["path"], "/v1/echo/p", "case {i}");
        assert_eq!(
            echo["query"], "x=1",
            "case {i}: token must be stripped from the query"
        );
        let hdrs = echo["headers"].to_string();
        assert!(
            !hdrs.contains(&t),
            "case {i}: token leaked upstream: {hdrs}"
        );
        assert_eq!(
            echo["headers"]["authorization"],
            format!("Bearer {MOCK_KEY}"),
            "case {i}"
        );
        assert!(echo["headers"]["x-api-key"].is_null() && echo["headers"]["api-key"].is_null());
    }
}

#[tokio::test]
async fn credential_injected_the_providers_way() {
    let env = Env::start().await;
    // Anthropic: x-api-key + default anthropic-version, token given as the SDK's apiKey.
    let resp = env
        .http
        .post(format!("{}v1/messages", env.base()))
        .header("x-api-key", env.token("anthropic"))
        .json(&serde_json::json!({"model": "claude-x", "max_tokens": 10, "messages": [{"role":"user","content":"hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["type"],
        "message"
    );

    // Gemini (alias googleai): x-goog-api-key.
    let resp = env
        .http
        .post(format!(
            "{}v1beta/models/gemini-2.0-flash:generateContent",
            env.base()
        ))
        .header("x-goog-api-key", env.token("googleai"))
        .json(&serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Azure: api-key, deployment and api-version filled in from config.
    let resp = env
        .http
        .post(format!(
            "{}{}/chat/completions",
            env.base(),
            env.token("azure-openai")
        ))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A wrong provider key in the token: the provider's own 401 passes through.
    let claims = Claims::new("openai", SecretString::new("sk-wrong".into()), 60, now());
    let resp = env
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
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["code"], "invalid_api_key",
        "provider error must pass through unchanged"
    );
}

#[tokio::test]
async fn token_failures_have_exact_codes() {
    let env = Env::start().await;
    let b = env.base();
    let post = |url: String| env.http.post(url).json(&chat_body(false)).send();

    let (s, c) = error_code(post(format!("{b}chat/completions")).await.unwrap()).await;
    assert_eq!((s, c.as_str()), (401, "token_missing"));

    // Tampered: flip one character of the ciphertext.
    let t = env.token("openai");
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    let mut ct = parts[3].clone().into_bytes();
    ct[0] = if ct[0] == b'A' { b'B' } else { b'A' };
    parts[3] = String::from_utf8(ct).unwrap();
    let tampered = parts.join(".");
    let (s, c) = error_code(
        post(format!("{b}{tampered}/chat/completions"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (401, "token_invalid"));

    // Wrong key: minted with a different .rai.
    let other =
        relayapi_token::V2Key::from_rai(&relayapi_token::RaiConfig::generate("http://x", 1));
    let foreign = relayapi_token::encode_v2(&other, &env.claims("openai")).unwrap();
    let (s, c) = error_code(
        post(format!("{b}{foreign}/chat/completions"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (401, "token_invalid"));

    // Expired and not yet valid.
    let mut claims = env.claims("openai");
    claims.iat = now() - 100;
    claims.exp = now() - 1;
    let (s, c) = error_code(
        post(format!("{b}{}/chat/completions", env.mint(&claims)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (401, "token_expired"));
    let mut claims = env.claims("openai");
    claims.nbf = Some(now() + 600);
    let (s, c) = error_code(
        post(format!("{b}{}/chat/completions", env.mint(&claims)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (401, "token_not_yet_valid"));

    // Unknown claim (fail closed) and a foreign alg, sealed with the right key.
    let mut raw: serde_json::Value = serde_json::from_str(&env.claims("openai").to_json()).unwrap();
    raw["scopes"] = serde_json::json!(["chat"]);
    let kid = env.key.kid().to_string();
    let canonical = format!(r#"{{"alg":"dir","enc":"A256GCM","kid":"{kid}"}}"#);
    let a128 = format!(r#"{{"alg":"A128KW","enc":"A256GCM","kid":"{kid}"}}"#);
    let good_claims = env.claims("openai").to_json();
    for (header, payload) in [(&canonical, raw.to_string()), (&a128, good_claims)] {
        let tok =
            relayapi_token::v2::encrypt_compact(&env.key, header, payload.as_bytes(), [7; 12])
                .unwrap();
        let (s, c) = error_code(post(format!("{b}{tok}/chat/completions")).await.unwrap()).await;
        assert_eq!(
            (s, c.as_str()),
            (401, "token_invalid"),
            "{header} {payload}"
        );
    }
    // The same sealing with the canonical header and claims is accepted, so the
    // refusals above are about the claim and the alg, not the helper.
    let tok = relayapi_token::v2::encrypt_compact(
        &env.key,
        &canonical,
        env.claims("openai").to_json().as_bytes(),
        [8; 12],
    )
    .unwrap();
    assert_eq!(
        post(format!("{b}{tok}/chat/completions"))
            .await
            .unwrap()
            .status(),
        200
    );

    // Unknown provider.
    let (s, c) = error_code(
        post(format!("{b}{}/chat/completions", env.token("nope")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (400, "provider_unknown"));

    // Outside the base path.
    let (s, c) = error_code(
        post(format!("http://{}/other", env.relay.addr))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (404, "not_found"));
}

#[tokio::test]
async fn error_bodies_never_carry_secrets() {
    let env = Env::start().await;
    let t = env.token("openai");
    let broken = format!("{}x", &t[..t.len() - 1]);
    let resp = env
        .http
        .post(format!("{}{broken}/chat/completions", env.base()))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&broken[..40]) && !text.contains(MOCK_KEY));
    assert!(!text.contains(env.rai.crypto.aes_key.expose()));
}

#[tokio::test]
async fn models_policy_and_forced_model() {
    let env = Env::start().await;
    let mut claims = env.claims("openai");
    claims.models = Some(vec!["gpt-4o-mini".into()]);
    let t = env.mint(&claims);
    let url = format!("{}{t}/chat/completions", env.base());
    let ok = env.post_chat(&url, false).await;
    assert_eq!(ok.status(), 200);
    let mut body = chat_body(false);
    body["model"] = "gpt-5-expensive".into();
    let (s, c) = error_code(env.http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!((s, c.as_str()), (403, "model_not_allowed"));

    let mut claims = env.claims("openai");
    claims.model = Some("forced-model".into());
    let url = format!("{}{}/chat/completions", env.base(), env.mint(&claims));
    let v: serde_json::Value = env.post_chat(&url, false).await.json().await.unwrap();
    assert_eq!(v["model"], "forced-model");
}

/// Audio transcriptions and image edits name their model in a form field:
/// a `models` token checks it, a forced model replaces it, and a form two
/// parsers could read differently is refused before anything is counted.
#[tokio::test]
async fn a_multipart_form_is_held_to_the_model_policy() {
    let env = Env::start().await;
    let form = |model: &str| {
        format!(
            "--frm\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\nRIFF\r\n--frm\r\n\
             Content-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--frm--\r\n"
        )
    };
    let send = |url: String, body: String| {
        env.http
            .post(url)
            .header("content-type", "multipart/form-data; boundary=frm")
            .body(body)
            .send()
    };
    let mut claims = env.claims("openai");
    claims.models = Some(vec!["whisper-1".into()]);
    let url = format!(
        "{}{}/echo/audio/transcriptions",
        env.base(),
        env.mint(&claims)
    );
    let echo: serde_json::Value = send(url.clone(), form("whisper-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["body"], form("whisper-1"));
    let (s, c) = error_code(send(url.clone(), form("gpt-4o-transcribe")).await.unwrap()).await;
    assert_eq!((s, c.as_str()), (403, "model_not_allowed"));
    // A second model field hidden behind a bare-LF delimiter, which a
    // lenient parser would read.
    let smuggled = form("whisper-1").replace(
        "RIFF",
        "RIFF\n--frm\nContent-Disposition: form-data; name=\"model\"\n\ngpt-4o-transcribe",
    );
    let (s, c) = error_code(send(url, smuggled).await.unwrap()).await;
    assert_eq!((s, c.as_str()), (400, "invalid_body"));

    let mut claims = env.claims("openai");
    claims.model = Some("whisper-1".into());
    let url = format!(
        "{}{}/echo/audio/transcriptions",
        env.base(),
        env.mint(&claims)
    );
    let echo: serde_json::Value = send(url, form("gpt-4o-transcribe"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["body"], form("whisper-1"));
    assert_eq!(echo["body_len"], form("whisper-1").len());
}

/// `ext_info`'s `rep_m` written with JSON escapes (PHP's `\/`, Python's
/// `\u00e8`) or named twice was no model to the relay: the token could call
/// any model, though every SDK reported the forced one.
#[tokio::test]
async fn an_escaped_or_repeated_rep_m_forces_the_model() {
    let env = Env::start().await;
    for (ext_info, want) in [
        (r#"{"rep_m":"meta-llama\/Llama-3"}"#, "meta-llama/Llama-3"),
        (r#"{"uid": 7, "rep_m": "mod\u00e8le"}"#, "modèle"),
        (r#"{"rep_m":"first","rep_m":"last"}"#, "last"),
    ] {
        let mut claims = env.claims("openai");
        claims.ext_info = Some(ext_info.into());
        let url = format!("{}{}/chat/completions", env.base(), env.mint(&claims));
        let mut body = chat_body(false);
        body["model"] = "gpt-5-expensive".into();
        let resp = env.http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{ext_info}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["model"], want, "{ext_info}");
    }
}

#[tokio::test]
async fn parsed_body_is_capped() {
    let env = Env::start_with(
        |c| c.server.max_parsed_body_bytes = 1024,
        UsageStore::memory(),
    )
    .await;
    let mut claims = env.claims("openai");
    claims.model = Some("m".into());
    let url = format!("{}{}/chat/completions", env.base(), env.mint(&claims));
    let mut body = chat_body(false);
    body["messages"][0]["content"] = "x".repeat(4096).into();
    let (s, c) = error_code(env.http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!((s, c.as_str()), (413, "payload_too_large"));
}

#[tokio::test]
async fn sse_chunks_arrive_one_by_one() {
    let env = Env::start().await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let resp = env
        .http
        .post(url)
        .header("x-mock-chunk-delay-ms", "300")
        .header("x-mock-chunks", "4")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let start = Instant::now();
    let mut stream = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        arrivals.push(start.elapsed());
    }
    assert!(text.contains("data: [DONE]"));
    // The mock waits 300 ms between events: if the relay buffered, everything
    // would arrive at once at the end. The first event must be here well
    // before the mock even sends the second one.
    assert!(arrivals.len() >= 4, "events arrived merged: {arrivals:?}");
    assert!(
        arrivals[0] < Duration::from_millis(250),
        "first chunk late: {arrivals:?}"
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(600),
        "chunks were buffered: {arrivals:?}"
    );
}

#[tokio::test]
async fn max_calls_admits_exactly_k_under_concurrency() {
    let env = Env::start().await;
    let mut claims = env.claims("openai");
    claims.max_calls = Some(7);
    let url = format!("{}{}/models", env.base(), env.mint(&claims));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url) = (env.http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            http.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => exhausted += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, exhausted), (7, 43));
    let (s, c) = error_code(env.http.get(&url).send().await.unwrap()).await;
    assert_eq!((s, c.as_str()), (429, "token_exhausted"));
}

#[tokio::test]
async fn calls_remaining_header_counts_down() {
    let env = Env::start().await;
    let mut claims = env.claims("openai");
    claims.max_calls = Some(3);
    let url = format!("{}{}/models", env.base(), env.mint(&claims));
    for want in ["2", "1", "0"] {
        let resp = env
            .http
            .get(&url)
            .header("origin", "https://app.test")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-relayapi-calls-remaining"], want);
        let exposed = resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(exposed.contains("x-relayapi-calls-remaining"));
    }
    // The refusal says 0 too, readable by a browser front end.
    let resp = env
        .http
        .get(&url)
        .header("origin", "https://app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-relayapi-calls-remaining"], "0");
    assert!(resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-relayapi-calls-remaining"));
}

#[tokio::test]
async fn counters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let env = Env::start_with(|_| {}, UsageStore::open_sqlite(&db).unwrap()).await;
    let mut claims = env.claims("openai");
    claims.max_calls = Some(3);
    let token = env.mint(&claims);
    for _ in 0..2 {
        let url = format!("{}{token}/models", env.base());
        assert_eq!(env.http.get(&url).send().await.unwrap().status(), 200);
    }
    let Env {
        mock,
        relay,
        key,
        http,
        ..
    } = env;
    relay.stop().await;

    // A new relay on the same key and the same file: one call left, then none.
    let mut keyring = relayapi_token::Keyring::new();
    keyring.insert(key).unwrap();
    let relay = relayapi::RunningRelay::start(
        config_for(&mock.url()),
        keyring,
        UsageStore::open_sqlite(&db).unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/relayapi/{token}/models", relay.addr);
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relayapi-calls-remaining"], "0");
    let (s, c) = error_code(http.get(&url).send().await.unwrap()).await;
    assert_eq!((s, c.as_str()), (429, "token_exhausted"));
    relay.stop().await;
}

#[tokio::test]
async fn cors_preflight_needs_no_token() {
    let env = Env::start().await;
    let resp = env
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}chat/completions", env.base()),
        )
        .header("origin", "https://app.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-arch",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.test"
    );
    assert_eq!(
        resp.headers()["access-control-allow-headers"],
        "authorization, content-type, x-stainless-arch"
    );
    assert_eq!(
        resp.headers().get_all("vary").iter().count(),
        1,
        "one Vary header"
    );
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let env = Env::start_with(
        |c| {
            c.rate_limit.ip_limit = Some(relayapi::config::IpLimitSettings {
                requests_per_second: 1.0,
                burst: 2,
            });
        },
        UsageStore::memory(),
    )
    .await;
    let url = format!("{}chat/completions", env.base());
    let mut codes = Vec::new();
    for _ in 0..3 {
        let resp = env.post_chat(&url, false).await;
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
        }
        codes.push(error_code(resp).await.1);
    }
    assert_eq!(codes, ["token_missing", "token_missing", "rate_limited"]);
}

#[tokio::test]
async fn per_ip_limiter_memory_is_bounded_for_many_forwarded_ips() {
    let env = Env::start_with(
        |c| {
            c.server.trusted_proxies = vec!["127.0.0.1".into()];
            c.rate_limit.max_tracked_ips = 100;
        },
        UsageStore::memory(),
    )
    .await;
    let url = format!("http://{}/relayapi/x", env.relay.addr);
    for i in 0..2000u32 {
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let resp = env
            .http
            .get(&url)
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert!(env.relay.state.limiter.tracked_ips() <= 100);
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504() {
    // Nothing listens on the discard port of a fresh ephemeral listener we close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = Env::start_with(
        move |c| {
            c.providers.get_mut("openai").unwrap().base_url = Some(format!("http://{dead}/v1"));
            c.providers.get_mut("anthropic").unwrap().base_url = None;
            c.upstream.first_byte_timeout = Duration::from_millis(300);
        },
        UsageStore::memory(),
    )
    .await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let (s, c) = error_code(env.post_chat(&url, false).await).await;
    assert_eq!((s, c.as_str()), (502, "upstream_unreachable"));

    let mut claims = env.claims("gemini");
    claims.provider = "gemini".into();
    let url = format!(
        "{}{}/v1beta/models/g:generateContent",
        env.base(),
        env.mint(&claims)
    );
    let resp = env
        .http
        .post(&url)
        .header("x-mock-delay-ms", "2000")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let (s, c) = error_code(resp).await;
    assert_eq!((s, c.as_str()), (504, "upstream_timeout"));
}

#[tokio::test]
async fn health_reports_counters_without_secrets() {
    let env = Env::start().await;
    let v: serde_json::Value = env
        .http
        .get(format!("http://{}/health", env.relay.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["usage"]["status"], "ok", "{v}");
    assert_eq!(v["usage"]["write_errors"], 0, "{v}");
    assert!(v["requests"]["total"].as_u64().unwrap() >= 1);
    assert!(!v.to_string().contains(env.rai.crypto.aes_key.expose()));
    for path in ["/health", "/relayapi/health"] {
        let url = format!("http://{}{path}", env.relay.addr);
        let head = env.http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200, "{path}");
        let post = env.http.post(&url).send().await.unwrap();
        assert_eq!(post.headers()["allow"], "GET, HEAD", "{path}");
        assert_eq!(error_code(post).await, (405, "method_not_allowed".into()));
    }
}

fn outcomes(env: &Env) -> (u64, u64, u64) {
    let s = &env.relay.state.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    (
        get(&s.completed),
        get(&s.upstream_aborted),
        get(&s.client_aborted),
    )
}

#[tokio::test]
async fn every_relayed_response_finishes_exactly_once_with_the_right_outcome() {
    let env = Env::start().await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    // Content-Length body, then a chunked stream: both complete.
    let text = env.post_chat(&url, false).await.text().await.unwrap();
    assert!(text.contains("chat.completion"));
    let text = env.post_chat(&url, true).await.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    wait_until_idle(&env).await;
    assert_eq!(outcomes(&env), (2, 0, 0));
    // Provider resets mid-stream.
    let resp = env
        .http
        .post(&url)
        .header("x-mock-reset-after", "1")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.is_err());
    wait_until_idle(&env).await;
    assert_eq!(outcomes(&env), (2, 1, 0));
    // Client hangs up mid-stream.
    let resp = env
        .http
        .post(&url)
        .header("x-mock-chunk-delay-ms", "100")
        .header("x-mock-chunks", "50")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    wait_until_idle(&env).await;
    assert_eq!(outcomes(&env), (2, 1, 1));
    // Client hangs up before the provider's head (logging off: no record,
    // still counted).
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = impatient
        .post(&url)
        .header("x-mock-delay-ms", "3000")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    for _ in 0..100 {
        if outcomes(&env).2 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(outcomes(&env), (2, 1, 2));
    let in_flight = env
        .relay
        .state
        .stats
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(in_flight, 0);
}

async fn wait_until_idle(env: &Env) {
    let stats = &env.relay.state.stats;
    for _ in 0..100 {
        if stats.in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("a relayed response never finished");
}

#[tokio::test]
async fn large_upload_streams_through() {
    let env = Env::start().await;
    let url = format!("{}{}/upload", env.base(), env.token("openai"));
    // 24 MiB sent in 64 KiB chunks; the mock counts bytes without keeping them.
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let stream =
        futures_util::stream::iter((0..384).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = env
        .http
        .post(url)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["bytes"], 384 * 64 * 1024);
}

#[tokio::test]
async fn upstream_reset_mid_stream_reaches_the_client_as_an_error() {
    let env = Env::start().await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let resp = env
        .http
        .post(url)
        .header("x-mock-reset-after", "2")
        .header("x-mock-chunks", "10")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got_error = false;
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => {
                got_error = true;
                break;
            }
        }
    }
    assert!(got_error, "a cut stream must not look complete: {text}");
    assert!(!text.contains("[DONE]"));
    wait_until_idle(&env).await;
}

#[tokio::test]
async fn a_stalled_upload_is_the_clients_timeout_not_the_providers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start_with(
        |c| c.upstream.idle_timeout = Duration::from_millis(300),
        UsageStore::memory(),
    )
    .await;
    // Streamed to the provider as it comes, and read whole for a model policy.
    let forced = env.claims("openai").with_model("gpt-4o-mini");
    for token in [env.token("openai"), env.mint(&forced)] {
        let mut tcp = tokio::net::TcpStream::connect(env.relay.addr)
            .await
            .unwrap();
        let head = format!(
            "POST /relayapi/{token}/chat/completions HTTP/1.1\r\nHost: relay\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // The refusal closes the connection (its body was not read).
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
            .await
            .expect("an answer after the idle timeout")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    }
}

#[tokio::test]
async fn silent_stream_is_cut_by_the_idle_timeout_only() {
    let env = Env::start_with(
        |c| c.upstream.idle_timeout = Duration::from_millis(400),
        UsageStore::memory(),
    )
    .await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    // Slow but steady: 6 chunks 200 ms apart (1.2 s in all) is longer than the
    // idle timeout in total, and must not be cut.
    let resp = env
        .http
        .post(&url)
        .header("x-mock-chunk-delay-ms", "200")
        .header("x-mock-chunks", "6")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("[DONE]"));

    let resp = env
        .http
        .post(&url)
        .header("x-mock-stall-after", "2")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        resp.text().await.is_err(),
        "a stalled stream must end in an error"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until_idle(&env).await;
}

#[tokio::test]
async fn client_disconnect_mid_stream_finishes_the_request() {
    let env = Env::start().await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let resp = env
        .http
        .post(url)
        .header("x-mock-chunk-delay-ms", "100")
        .header("x-mock-chunks", "50")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(
        env.relay
            .state
            .stats
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(stream);
    wait_until_idle(&env).await;
}

#[tokio::test]
async fn refusal_before_the_body_is_read_closes_the_connection_cleanly() {
    // hyper cannot reuse a connection whose request body was never read; a
    // keep-alive client must be told, or its next request hits a closing socket.
    let env = Env::start().await;
    let url = format!("{}chat/completions", env.base());
    let refused = env
        .http
        .post(&url)
        .bearer_auth("not-a-token")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["connection"], "close");
    // No body: nothing left unread, the connection stays open.
    let refused = env
        .http
        .get(format!("{}models", env.base()))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(!refused.headers().contains_key("connection"));
    // A keep-alive client sees no failure over many refusals in a row.
    for _ in 0..200 {
        let r = env
            .http
            .post(&url)
            .bearer_auth("not-a-token")
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

#[tokio::test]
async fn a_head_over_max_header_bytes_is_refused_with_a_json_431() {
    let env = Env::start_with(|c| c.server.max_header_bytes = 2048, UsageStore::memory()).await;
    let url = format!("{}{}/models", env.base(), env.mint(&env.claims("openai")));
    let send = |padding: usize| {
        env.http
            .get(&url)
            .header("x-padding", "p".repeat(padding))
            .send()
    };
    // Well under: relayed.
    assert_eq!(send(100).await.unwrap().status(), 200);
    // Over the setting, though small enough for hyper's read buffer.
    let resp = send(2100).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert!(resp.headers().contains_key("x-request-id"));
    let (s, c) = error_code(resp).await;
    assert_eq!((s, c.as_str()), (431, "headers_too_large"));
}

#[tokio::test]
async fn trace_and_unknown_methods_are_refused_before_the_token() {
    // TRACE would have the provider echo the injected Authorization back.
    let env = Env::start().await;
    let mut claims = env.claims("openai");
    claims.max_calls = Some(1);
    let url = format!("{}{}/models", env.base(), env.mint(&claims));
    let before = env.mock.journal().total();
    for method in ["TRACE", "PROPFIND", "FOO", "get"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = env.http.request(m, &url).send().await.unwrap();
        assert_eq!(
            resp.headers()["allow"],
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
            "{method}"
        );
        assert_eq!(
            error_code(resp).await,
            (405, "method_not_allowed".into()),
            "{method}"
        );
    }
    assert_eq!(env.mock.journal().total(), before, "nothing was forwarded");
    let resp = env.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the refusals spent no call");
    assert_eq!(resp.headers()["x-relayapi-calls-remaining"], "0");
}

#[tokio::test]
async fn a_token_key_no_header_can_carry_spends_no_call() {
    let env = Env::start().await;
    // The same counter (jti) for both tokens: the first's key has a newline.
    // Our minters refuse such a key; another minter might not, so it is
    // sealed by hand.
    let mut good = env.claims("openai");
    good.max_calls = Some(1);
    let bad_json = good.to_json().replace(MOCK_KEY, &format!("{MOCK_KEY}\\n"));
    assert!(bad_json.contains("\\n"));
    let header = format!(
        r#"{{"alg":"dir","enc":"A256GCM","kid":"{}"}}"#,
        env.key.kid()
    );
    let bad = relayapi_token::v2::encrypt_compact(&env.key, &header, bad_json.as_bytes(), [9; 12])
        .unwrap();
    let before = env.mock.journal().total();
    for _ in 0..3 {
        let url = format!("{}{bad}/chat/completions", env.base());
        let resp = env.post_chat(&url, false).await;
        assert!(resp.headers().get("x-relayapi-calls-remaining").is_none());
        let (s, c) = error_code(resp).await;
        assert_eq!((s, c.as_str()), (401, "token_invalid"));
    }
    assert_eq!(
        env.mock.journal().total(),
        before,
        "nothing reached the provider"
    );
    let url = format!("{}{}/chat/completions", env.base(), env.mint(&good));
    let resp = env.post_chat(&url, false).await;
    assert_eq!(resp.status(), 200, "the refusals spent the only call");
    assert_eq!(resp.headers()["x-relayapi-calls-remaining"], "0");
}

#[tokio::test]
async fn a_stalled_tls_handshake_ends_at_the_connect_timeout() {
    // Accepts TCP, never answers the TLS ClientHello.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let env = Env::start_with(
        move |c| {
            c.providers.get_mut("openai").unwrap().base_url = Some(format!("https://{addr}/v1"));
            c.upstream.connect_timeout = Duration::from_millis(400);
            c.upstream.first_byte_timeout = Duration::from_secs(60);
        },
        UsageStore::memory(),
    )
    .await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let started = Instant::now();
    let resp = env.post_chat(&url, false).await;
    let (s, c) = error_code(resp).await;
    assert_eq!((s, c.as_str()), (504, "upstream_timeout"));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the first-byte timeout, not connect's"
    );
    held.abort();
}

#[tokio::test]
async fn used_up_tokens_tell_sdks_not_to_retry() {
    let env = Env::start().await;
    let mut claims = env.claims("openai");
    claims.max_calls = Some(1);
    let url = format!("{}{}/chat/completions", env.base(), env.mint(&claims));
    let send = || {
        env.http
            .post(&url)
            .header("origin", "https://app.test")
            .json(&chat_body(false))
            .send()
    };
    let ok = send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("x-should-retry").is_none());
    let refused = send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-should-retry"], "false");
    let exposed = refused.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-should-retry"), "{exposed}");

    // A traffic limit is worth retrying: no such header.
    let mut claims = env.claims("openai");
    claims.rps = Some(1);
    claims.burst = Some(1);
    let url = format!("{}{}/models", env.base(), env.mint(&claims));
    let _ = env.http.get(&url).send().await.unwrap();
    let limited = env.http.get(&url).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("x-should-retry").is_none());
    assert!(limited.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn the_providers_request_id_is_kept_beside_the_relays() {
    let env = Env::start().await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let resp = env
        .http
        .post(&url)
        .header("origin", "https://app.test")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    let upstream = h["x-upstream-request-id"].to_str().unwrap();
    assert!(upstream.starts_with("req_"), "{upstream}");
    let ours: Vec<_> = h.get_all("x-request-id").iter().collect();
    assert_eq!(ours.len(), 1);
    assert_ne!(ours[0].to_str().unwrap(), upstream);
    let exposed = h["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("x-upstream-request-id"), "{exposed}");
}

#[tokio::test]
async fn a_base_path_the_sdk_repeats_is_the_same_endpoint() {
    let env = Env::start().await;
    // `paths` scope what reaches the provider: `v1/chat/completions` on a
    // `…/v1` base URL is `chat/completions`.
    let claims = env.claims("openai").with_paths(["chat/completions"]);
    let token = env.mint(&claims);
    for path in ["chat/completions", "v1/chat/completions"] {
        let url = format!("{}{token}/{path}", env.base());
        let resp = env.post_chat(&url, false).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    let url = format!("{}{token}/v1/models", env.base());
    let (s, c) = error_code(env.http.get(&url).send().await.unwrap()).await;
    assert_eq!((s, c.as_str()), (403, "path_not_allowed"));

    // `AzureOpenAI(azure_endpoint=<token URL>)` sends `openai/deployments/…`
    // to a base URL that already ends in `/openai`; the model policy sees
    // the deployment either way.
    let azure = env
        .claims("azure-openai")
        .with_models(["gpt-4o", chat_body(false)["model"].as_str().unwrap()]);
    let token = env.mint(&azure);
    for (path, want) in [
        (
            "openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            200,
        ),
        ("deployments/gpt-4o/chat/completions", 200),
        (
            "openai/deployments/o1/chat/completions?api-version=2024-10-21",
            403,
        ),
    ] {
        let url = format!("{}{token}/{path}", env.base());
        let resp = env.post_chat(&url, false).await;
        assert_eq!(resp.status(), want, "{path}");
    }
}
