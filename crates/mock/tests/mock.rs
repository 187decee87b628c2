//! Integration tests of the mock over real HTTP on `127.0.0.1:0`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relayapi_mock::{MockConfig, MockServer};
use serde_json::{json, Value};

const KEY: &str = "sk-mock";

async fn start() -> MockServer {
    MockServer::start(MockConfig::default()).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"}
        ],
        "stream": stream,
        "stream_options": {"include_usage": true}
    })
}

/// Splits an SSE body into (event name, data) pairs.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn health_needs_no_auth() {
    let m = start().await;
    let r = client()
        .get(format!("{}/health", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn openai_auth_accepts_bearer_and_azure_api_key_and_refuses_others() {
    let m = start().await;
    let c = client();
    let url = format!("{}/v1/chat/completions", m.url());
    let ok = c
        .post(&url)
        .bearer_auth(KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = c
        .post(&url)
        .header("api-key", KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for req in [
        c.post(&url).bearer_auth("sk-wrong"),
        c.post(&url).header("x-api-key", KEY),
        c.post(&url),
    ] {
        let r = req.json(&chat_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            json!({"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"})
        );
    }
    let r = c
        .get(format!("{}/v1/models", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn azure_deployment_routes_use_the_deployment_as_model() {
    let m = start().await;
    let c = client();
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let r = c
        .post(format!(
            "{}/openai/deployments/my-dep/chat/completions?api-version=2024-10-21",
            m.url()
        ))
        .header("api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "my-dep");
    let r = c
        .post(format!(
            "{}/openai/deployments/emb/embeddings?api-version=2024-10-21",
            m.url()
        ))
        .header("api-key", KEY)
        .json(&json!({"input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn anthropic_auth_and_version_header() {
    let m = start().await;
    let c = client();
    let url = format!("{}/v1/messages", m.url());
    let body = json!({"model": "claude-3-5-haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hey"}]});
    let r = c
        .post(&url)
        .header("x-api-key", "nope")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    );
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-3-5-haiku");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["content"][0],
        json!({"type": "text", "text": "mock reply to: hey"})
    );
    assert!(v["id"].as_str().unwrap().starts_with("msg_mock"));
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn gemini_auth_by_header_or_query_key() {
    let m = start().await;
    let c = client();
    let url = format!("{}/v1beta/models/gemini-2.0-flash:generateContent", m.url());
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "yo"}]}]});
    let r = c
        .post(&url)
        .header("x-goog-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "mock reply to: yo"
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.0-flash");
    assert!(v["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0);
    let r = c
        .post(format!("{url}?key={KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{url}?key=bad"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}})
    );
    let r = c
        .post(format!("{}/v1beta/models/gemini-2.0-flash:bogus", m.url()))
        .header("x-goog-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn chat_non_stream_has_the_openai_shape() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "mock reply to: hello there");
    assert_eq!(choice["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn chat_stream_sends_role_content_finish_usage_done() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    // role + 5 content + finish + usage + [DONE]
    assert_eq!(events.len(), 9, "{text}");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..8]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "gpt-4o-mini"));
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, "mock reply to: hello there");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert!(chunks[7]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn chat_stream_without_include_usage_and_with_chunk_knobs() {
    let m = start().await;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true});
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-chunks", "40")
        .header("x-mock-chunk-bytes", "100")
        .json(&body)
        .send()
        .await
        .unwrap();
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.len(), 1 + 40 + 1 + 1);
    let c: Value = serde_json::from_str(&events[10].1).unwrap();
    assert_eq!(
        c["choices"][0]["delta"]["content"].as_str().unwrap().len(),
        100
    );
    let finish: Value = serde_json::from_str(&events[41].1).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn anthropic_stream_event_names_in_order() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/messages", m.url()))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("x-mock-chunks", "3")
        .json(&json!({"model": "claude", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": [{"type": "text", "text": "abc"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse_events(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for ((name, _), d) in events.iter().zip(&data) {
        assert_eq!(d["type"].as_str(), name.as_deref());
    }
    assert!(
        data[0]["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let text: String = data[2..5]
        .iter()
        .map(|d| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "mock reply to: abc");
    assert_eq!(data[6]["delta"]["stop_reason"], "end_turn");
    assert!(data[6]["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn gemini_stream_sse_and_json_array() {
    let m = start().await;
    let c = client();
    let url = format!("{}/v1beta/models/gemini-x:streamGenerateContent", m.url());
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "g"}]}]});
    let r = c
        .post(format!("{url}?alt=sse"))
        .header("x-goog-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.len(), 6);
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = data
        .iter()
        .map(|d| {
            d["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "mock reply to: g");
    assert!(data[..5].iter().all(|d| d.get("usageMetadata").is_none()));
    let last = data.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(last["usageMetadata"]["promptTokenCount"].as_u64().is_some());
    assert!(last["usageMetadata"]["candidatesTokenCount"]
        .as_u64()
        .is_some());
    assert!(last["usageMetadata"]["totalTokenCount"].as_u64().is_some());

    let r = c
        .post(format!("{url}?key={KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let arr: Vec<Value> = r.json().await.unwrap();
    assert_eq!(arr.len(), 6);
    assert!(arr[5]["usageMetadata"].is_object());
}

#[tokio::test]
async fn injected_status_comes_after_auth() {
    let m = start().await;
    let c = client();
    let url = format!("{}/v1/chat/completions", m.url());
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .header("x-mock-status", "503")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        json!({"message": "mock injected error", "type": "mock_error", "param": null, "code": "mock_status_503"})
    );
    let r = c
        .post(&url)
        .bearer_auth("bad")
        .header("x-mock-status", "503")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The same knob from the JSON body.
    let mut body = chat_body(false);
    body["mock"] = json!({"status": 429});
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "mock_status_429"
    );
}

#[tokio::test]
async fn delay_ms_holds_back_the_response_headers() {
    let m = start().await;
    let t = Instant::now();
    let r = client()
        .get(format!("{}/v1/models", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-delay-ms", "200")
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "gpt-4o-mini");
}

#[tokio::test]
async fn reset_after_breaks_the_body_on_the_client_side() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-reset-after", "2")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut received = Vec::new();
    let mut error = None;
    while let Some(item) = body.next().await {
        match item {
            Ok(b) => received.extend_from_slice(&b),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(
        error.is_some(),
        "stream ended cleanly: {}",
        String::from_utf8_lossy(&received)
    );
    let text = String::from_utf8_lossy(&received);
    assert_eq!(sse_events(&text).len(), 2, "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn stall_after_stops_sending_without_ending() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-stall-after", "1")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let next = tokio::time::timeout(Duration::from_millis(300), body.next()).await;
    assert!(next.is_err(), "expected a stall, got {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_delay_sends_each_event_before_waiting_for_the_next() {
    let m = start().await;
    let delay = Duration::from_millis(300);
    let t0 = Instant::now();
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-chunk-delay-ms", delay.as_millis().to_string())
        .header("x-mock-chunks", "2")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let t_first = t0.elapsed();
    // The first frame holds exactly the first event: nothing waited for the second.
    assert_eq!(sse_events(&String::from_utf8_lossy(&first)).len(), 1);
    assert!(t_first < delay, "first event took {t_first:?}");
    let second = body.next().await.unwrap().unwrap();
    let t_second = t0.elapsed();
    assert!(!second.is_empty());
    assert!(
        t_second >= t_first + delay - Duration::from_millis(20),
        "{t_first:?} {t_second:?}"
    );
}

#[tokio::test]
async fn echo_reflects_method_path_query_headers_and_body() {
    let m = start().await;
    let c = client();
    for prefix in ["/echo", "/v1/echo"] {
        let r = c
            .put(format!("{}{prefix}/some/path?a=1&b=two", m.url()))
            .header("x-goog-api-key", KEY)
            .header("x-custom", "v1")
            .body("hello body")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["path"], format!("{prefix}/some/path"));
        assert_eq!(v["query"], "a=1&b=two");
        assert_eq!(v["headers"]["x-custom"], "v1");
        assert_eq!(v["headers"]["x-goog-api-key"], KEY);
        assert_eq!(v["body_len"], 10);
        assert_eq!(v["body"], "hello body");
    }
    for (name, value) in [
        ("authorization", format!("Bearer {KEY}")),
        ("x-api-key", KEY.to_owned()),
        ("api-key", KEY.to_owned()),
    ] {
        let r = c
            .get(format!("{}/echo/x", m.url()))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    let r = c.get(format!("{}/echo/x", m.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn upload_counts_a_streamed_body() {
    let m = start().await;
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![7u8; 16 * 1024]));
    let r = client()
        .post(format!("{}/v1/upload", m.url()))
        .bearer_auth(KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"bytes": 64 * 16 * 1024})
    );
}

#[tokio::test]
async fn response_bytes_pads_the_json_body() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-response-bytes", "1024")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert!((1000..=1040).contains(&body.len()), "{}", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("mock reply to: hello there"));
}

#[tokio::test]
async fn embeddings_are_deterministic() {
    let m = start().await;
    let c = client();
    let send = |input: Value| {
        c.post(format!("{}/v1/embeddings", m.url()))
            .bearer_auth(KEY)
            .json(&json!({"model": "text-embedding-3-small", "input": input}))
            .send()
    };
    let a: Value = send(json!("hello")).await.unwrap().json().await.unwrap();
    let b: Value = send(json!(["hello", "world"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["object"], "list");
    assert_eq!(a["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(a["data"][0]["embedding"], b["data"][0]["embedding"]);
    assert_ne!(b["data"][0]["embedding"], b["data"][1]["embedding"]);
    assert_eq!(b["data"][1]["index"], 1);
    assert!(b["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn images_generations_answers_urls_or_base64() {
    let m = start().await;
    let c = client();
    let send = |body: Value| {
        c.post(format!("{}/v1/images/generations", m.url()))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let r = send(json!({"prompt": "a cat", "n": 2})).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!(v["data"][1]["url"].as_str().unwrap().ends_with("1.png"));
    let v: Value = send(json!({"prompt": "a cat", "response_format": "b64_json"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["data"][0]["b64_json"]
        .as_str()
        .unwrap()
        .starts_with("iVBOR"));
    for bad in [
        json!({"n": 1}),
        json!({"prompt": "x", "n": 0}),
        json!({"prompt": "x", "n": 11}),
    ] {
        assert_eq!(send(bad).await.unwrap().status(), 400);
    }
    let r = c
        .post(format!("{}/v1/images/generations", m.url()))
        .bearer_auth("wrong")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn unknown_routes_get_an_openai_style_404() {
    let m = start().await;
    let r = client()
        .get(format!("{}/v2/nothing", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_url");
    let r = client()
        .get(format!("{}/v1/chat/completions", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn binary_prints_its_address_first_and_serves() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relayapi-mock"))
        .args(["--listen", "127.0.0.1:0", "--api-key", "sk-cli"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{line}"
    );
    let r = client()
        .get(format!("{url}/v1/models"))
        .bearer_auth("sk-cli")
        .send()
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.unwrap().status(), 200);
}

#[tokio::test]
async fn journal_records_keys_faults_and_in_flight_streams() {
    let m = MockServer::start(
        MockConfig::new(KEY)
            .with_extra_keys(["sk-second"])
            .with_key_fault("sk-limited", 429),
    )
    .await
    .unwrap();
    let chat = |key: &'static str| {
        client()
            .post(format!("{}/v1/chat/completions", m.url()))
            .bearer_auth(key)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(chat(KEY).await.unwrap().status(), 200);
    assert_eq!(chat("sk-second").await.unwrap().status(), 200);
    let limited = chat("sk-limited").await.unwrap();
    assert_eq!(limited.status(), 429);
    let v: Value = limited.json().await.unwrap();
    assert_eq!(v["error"]["code"], "mock_key_status_429");
    assert_eq!(chat("sk-unknown").await.unwrap().status(), 401);
    let keys: Vec<Option<String>> = m.journal().entries().into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [
            Some(KEY.to_string()),
            Some("sk-second".into()),
            Some("sk-limited".into()),
            None
        ]
    );
    // A stream is in flight until its body ends.
    let resp = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-chunk-delay-ms", "100")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(m.journal().in_flight(), 1);
    let _ = resp.bytes().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.journal().in_flight() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.journal().in_flight(), 0);
    assert_eq!(m.journal().max_in_flight(), 1);
    // The same over HTTP, then a reset.
    let j: Value = client()
        .get(format!("{}/_mock/journal", m.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(j["total"], 5);
    assert_eq!(j["requests"][1]["key"], "sk-second");
    client()
        .post(format!("{}/_mock/reset", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(m.journal().total(), 0);
}

#[tokio::test]
async fn one_model_is_looked_up_by_get_and_an_unknown_one_is_openais_404() {
    let m = start().await;
    let get = |id: &str| {
        client()
            .get(format!("{}/v1/models/{id}", m.url()))
            .bearer_auth(KEY)
            .send()
    };
    let r = get("gpt-4o").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["id"].as_str(), v["object"].as_str()),
        (Some("gpt-4o"), Some("model"))
    );
    let r = get("no-such-model").await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    // Gemini's POST on the same path still works.
    let r = client()
        .post(format!(
            "{}/v1/models/gemini-2.0-flash:generateContent",
            m.url()
        ))
        .header("x-goog-api-key", KEY)
        .json(&serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn responses_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4.1-mini",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "hello "}, {"type": "input_text", "text": "responses"}]}
        ],
        "stream": stream
    })
}

/// `usage` as the Responses API writes it, checked for consistency.
fn assert_responses_usage(u: &Value) -> (u64, u64) {
    let (input, output) = (
        u["input_tokens"].as_u64().unwrap(),
        u["output_tokens"].as_u64().unwrap(),
    );
    assert!(input > 0 && output > 0, "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), input + output, "{u}");
    assert_eq!(
        u["input_tokens_details"],
        json!({"cached_tokens": 0, "cache_write_tokens": 0})
    );
    assert_eq!(u["output_tokens_details"], json!({"reasoning_tokens": 0}));
    (input, output)
}

#[tokio::test]
async fn responses_non_stream_has_the_openai_shape() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/responses", m.url()))
        .bearer_auth(KEY)
        .json(&responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["object"], "response");
    assert!(v["created_at"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "gpt-4.1-mini");
    assert_eq!(v["instructions"], "be brief");
    assert_eq!(v["error"], Value::Null);
    // Required by the SDKs' types.
    assert_eq!(v["tools"], json!([]));
    assert_eq!(v["tool_choice"], "auto");
    assert_eq!(v["parallel_tool_calls"], true);
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    let msg = &output[0];
    assert!(msg["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        (&msg["type"], &msg["status"], &msg["role"]),
        (&json!("message"), &json!("completed"), &json!("assistant"))
    );
    assert_eq!(
        msg["content"],
        json!([{"type": "output_text", "text": "mock reply to: hello responses", "annotations": [], "logprobs": []}])
    );
    let (input, output) = assert_responses_usage(&v["usage"]);
    // Instructions and every item count: 8 + 7 + 2 + 15 bytes.
    assert_eq!(input, 32 / 4);
    assert_eq!(
        output,
        "mock reply to: hello responses".len().div_ceil(4) as u64
    );

    // A plain string input is one user message.
    let r = client()
        .post(format!("{}/v1/responses", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-response-bytes", "4096")
        .json(&json!({"model": "m", "input": "just this"}))
        .send()
        .await
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert!((4000..=4100).contains(&body.len()), "{}", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["instructions"], Value::Null);
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("mock reply to: just this mock"), "{text}");
    let (_, output) = assert_responses_usage(&v["usage"]);
    assert_eq!(output, text.len().div_ceil(4) as u64);
}

#[tokio::test]
async fn responses_stream_sends_openais_events_in_order() {
    let m = start().await;
    let r = client()
        .post(format!("{}/v1/responses", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-chunks", "7")
        .json(&responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let events: Vec<(String, Value)> = sse_events(&text)
        .into_iter()
        .map(|(name, data)| (name.unwrap(), serde_json::from_str(&data).unwrap()))
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    want.extend(["response.output_text.delta"; 7]);
    want.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, want, "{text}");
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i, "{name}");
    }
    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    let item_id = events[2].1["item"]["id"].as_str().unwrap();
    assert_eq!(events[2].1["item"]["status"], "in_progress");
    assert_eq!(events[3].1["part"]["text"], "");
    let deltas: String = events[4..11]
        .iter()
        .map(|(_, d)| {
            assert_eq!(
                (&d["item_id"], &d["output_index"], &d["content_index"]),
                (&json!(item_id), &json!(0), &json!(0))
            );
            d["delta"].as_str().unwrap()
        })
        .collect();
    assert_eq!(deltas, "mock reply to: hello responses");
    assert_eq!(events[11].1["text"], deltas.as_str());
    assert_eq!(events[12].1["part"]["text"], deltas.as_str());
    assert_eq!(events[13].1["item"]["status"], "completed");
    assert_eq!(events[13].1["item"]["content"][0]["text"], deltas.as_str());
    let done = &events[14].1["response"];
    assert_eq!(done["id"], created["id"]);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["id"], item_id);
    assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());
    let (input, output) = assert_responses_usage(&done["usage"]);
    assert_eq!(input, 8);
    assert_eq!(output, deltas.len().div_ceil(4) as u64);
}

#[tokio::test]
async fn responses_stream_knobs_shape_the_deltas() {
    let m = start().await;
    let mut body = responses_body(true);
    body["mock"] = json!({"chunks": 3, "chunk_bytes": 50, "chunk_delay_ms": 1});
    let r = client()
        .post(format!("{}/v1/responses", m.url()))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.len(), 4 + 3 + 4);
    let deltas: Vec<Value> = events[4..7]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(deltas
        .iter()
        .all(|d| d["delta"].as_str().unwrap().len() == 50));
    let done: Value = serde_json::from_str(&events[10].1).unwrap();
    assert_eq!(
        done["response"]["usage"]["output_tokens"],
        150u64.div_ceil(4)
    );

    // Reset after the opening events: the body breaks before the end.
    let r = client()
        .post(format!("{}/v1/responses", m.url()))
        .bearer_auth(KEY)
        .header("x-mock-reset-after", "4")
        .json(&responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err());
}

#[tokio::test]
async fn responses_errors_are_openai_shaped() {
    let m = start().await;
    let c = client();
    let url = format!("{}/v1/responses", m.url());
    let r = c
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    for (body, code) in [
        (json!({"input": "hi"}), "missing_model"),
        (json!({"model": "m"}), "missing_input"),
        (json!({"model": "m", "input": null}), "missing_input"),
        (json!({"model": "m", "input": 3}), "invalid_type"),
    ] {
        let r = c
            .post(&url)
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(v["error"]["code"], code, "{body}");
    }
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .header("x-mock-status", "429")
        .json(&responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "mock_status_429"
    );
    let r = c.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let paths: Vec<String> = m.journal().entries().into_iter().map(|e| e.path).collect();
    assert!(paths.iter().all(|p| p == "/v1/responses"), "{paths:?}");
    assert_eq!(paths.len(), 8);
}
