//! The listener and its worker threads, seen from a client: both protocols
//! on one port, silent connections, many connections at once, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/2 (prior knowledge, cleartext) connection to the relay.
async fn h2_prior_knowledge(
    env: &Env,
) -> hyper::client::conn::http2::SendRequest<Full<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(env.relay.addr)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn h2c_with_prior_knowledge_and_http1_share_the_port() {
    let env = Env::start().await;
    let mut send = h2_prior_knowledge(&env).await;
    let body = chat_body(false).to_string();
    let req = http::Request::post(format!(
        "http://{}/relayapi/{}/chat/completions",
        env.relay.addr,
        env.token("openai")
    ))
    .header("content-type", "application/json")
    .body(Full::new(bytes::Bytes::from(body)))
    .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("chat.completion"));

    // HTTP/1.1 on the same port.
    let resp = env
        .http
        .post(format!(
            "{}{}/chat/completions",
            env.base(),
            env.token("openai")
        ))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    drop(send);
    env.relay.stop().await;
}

#[tokio::test]
async fn an_oversized_h2_head_gets_the_json_431() {
    let env = Env::start().await;
    let mut send = h2_prior_knowledge(&env).await;
    // The default server.max_header_bytes is 64 KiB.
    let req = http::Request::get(format!(
        "http://{}/relayapi/{}/models",
        env.relay.addr,
        env.token("openai")
    ))
    .header("x-big", "a".repeat(70 * 1024))
    .body(Full::new(bytes::Bytes::new()))
    .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 431);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "headers_too_large");
    drop(send);
    env.relay.stop().await;
}

/// Reads until the relay closes `tcp`; how long that took (None: not
/// within 10 s).
async fn time_until_closed(tcp: &mut tokio::net::TcpStream) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_half_sent_head_and_an_idle_keep_alive_are_cut_after_the_read_timeout() {
    let env = Env::start_with(
        |c| c.server.read_timeout = Duration::from_secs(1),
        relayapi::usage::UsageStore::memory(),
    )
    .await;
    // Slowloris: a head that never ends.
    let mut slow = tokio::net::TcpStream::connect(env.relay.addr)
        .await
        .unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let took = time_until_closed(&mut slow).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(900) && t < Duration::from_secs(5)),
        "{took:?}"
    );
    // A kept-alive connection that goes quiet after its answer.
    let mut idle = tokio::net::TcpStream::connect(env.relay.addr)
        .await
        .unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let took = time_until_closed(&mut idle).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(800) && t < Duration::from_secs(5)),
        "{took:?}"
    );
    env.relay.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_read_timeout() {
    let env = Env::start_with(
        |c| c.server.read_timeout = Duration::from_secs(1),
        relayapi::usage::UsageStore::memory(),
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(env.relay.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    // Closed by the relay (EOF or reset), well before our own deadline.
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    env.relay.stop().await;
}

#[tokio::test]
async fn a_split_h2_preface_is_still_recognised() {
    let env = Env::start().await;
    let mut tcp = tokio::net::TcpStream::connect(env.relay.addr)
        .await
        .unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    tcp.write_all(&preface[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(&preface[5..]).await.unwrap();
    // An empty SETTINGS frame; the server answers with its own SETTINGS.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[3], 4, "a SETTINGS frame: {head:?}");
    drop(tcp);
    env.relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keep_alive_connections_at_once_all_get_answers() {
    // A burst of new connections is spread over the workers (some are
    // handed from one worker to another); every one must be served.
    let env = Env::start().await;
    let url = format!("{}{}/chat/completions", env.base(), env.token("openai"));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            // One client each: one connection each.
            let (http, url) = (reqwest::Client::new(), url.clone());
            tokio::spawn(async move {
                for _ in 0..3 {
                    let resp = http
                        .post(&url)
                        .json(&chat_body(false))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = &env.relay.state.stats;
    assert_eq!(
        stats.completed.load(std::sync::atomic::Ordering::Relaxed),
        300
    );
    env.relay.stop().await;
}

#[tokio::test]
async fn stop_closes_idle_keep_alive_connections_at_once() {
    let env = Env::start_with(
        |c| c.server.shutdown_grace = Duration::from_secs(20),
        relayapi::usage::UsageStore::memory(),
    )
    .await;
    // Connections that answered one request each and now sit idle, on
    // every worker, plus one that never sent anything.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(env.relay.addr)
            .await
            .unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        idle.push(tcp);
    }
    let mut silent = tokio::net::TcpStream::connect(env.relay.addr)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    env.relay.stop().await;
    // Not the 20 s grace period: nothing was in flight.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for tcp in idle.iter_mut().chain(std::iter::once(&mut silent)) {
        assert!(time_until_closed(tcp).await.is_some());
    }
}
