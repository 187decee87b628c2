//! Log delivery against a real local webhook receiver: signatures, batching
//! by count and delay, outages with retries, permanent 4xx, overflow to the
//! spool and replay (also across a restart), the spool bound, shutdown
//! flush, and console JSON lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use relayapi::logs::pipeline::{BatchSettings, LogPipeline};
use relayapi::logs::record::{CapturedBody, LogRecord, Usage};
use relayapi::logs::sinks::console::{ConsoleFormat, ConsoleSink};
use relayapi::logs::sinks::webhook::WebhookSink;
use relayapi::logs::sinks::Sink;
use relayapi_token::SecretString;

/// What the receiver saw. Only records of batches it answered 2xx count.
#[derive(Default)]
struct Seen {
    /// request_id → times accepted.
    ids: Mutex<HashMap<String, u32>>,
    /// Sizes of accepted batches, in order.
    batches: Mutex<Vec<usize>>,
    /// Every POST, whatever the answer.
    hits: AtomicU64,
    bad_signatures: AtomicU64,
    signed: AtomicU64,
    bad_headers: AtomicU64,
}

struct Receiver {
    addr: SocketAddr,
    tls: bool,
    /// Status the receiver answers with.
    status: Arc<AtomicU16>,
    seen: Arc<Seen>,
}

impl Receiver {
    async fn start(secret: Option<&str>) -> Receiver {
        Self::start_with(secret, None).await
    }

    /// On TLS with the test certificate for `localhost` (`testdata/tls`).
    async fn start_tls() -> Receiver {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tls/");
        let certs: Vec<_> = CertificateDer::pem_file_iter(format!("{dir}server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{dir}server.key")).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_with(
            None,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_with(secret: Option<&str>, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let on_tls = tls.is_some();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Seen::default());
        let secret = secret.map(str::to_owned);
        let (st, sn) = (status.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (st, sn, secret) = (st.clone(), sn.clone(), secret.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (st, sn, secret) = (st.clone(), sn.clone(), secret.clone());
                        async move {
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            sn.hits.fetch_add(1, Ordering::SeqCst);
                            let ok_headers = headers
                                .get("content-type")
                                .is_some_and(|v| v == "application/json")
                                && headers
                                    .get("user-agent")
                                    .is_some_and(|v| v.to_str().unwrap().starts_with("relayapi/"));
                            if !ok_headers {
                                sn.bad_headers.fetch_add(1, Ordering::SeqCst);
                            }
                            if let Some(secret) = &secret {
                                let expected = independent_hmac(secret.as_bytes(), &body);
                                match headers.get("x-relayapi-signature") {
                                    Some(v)
                                        if v.to_str().unwrap() == format!("sha256={expected}") =>
                                    {
                                        sn.signed.fetch_add(1, Ordering::SeqCst);
                                    }
                                    _ => {
                                        sn.bad_signatures.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                            let code = st.load(Ordering::SeqCst);
                            if code == 200 {
                                let records: Vec<LogRecord> =
                                    serde_json::from_slice(&body).unwrap();
                                sn.batches.lock().unwrap().push(records.len());
                                let mut ids = sn.ids.lock().unwrap();
                                for r in records {
                                    *ids.entry(r.request_id).or_default() += 1;
                                }
                            }
                            let resp = hyper::Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let http1 = hyper::server::conn::http1::Builder::new();
                    match tls {
                        // A client that does not trust the certificate
                        // ends the handshake: no request, not counted.
                        Some(tls) => {
                            if let Ok(s) = tls.accept(tcp).await {
                                let _ = http1.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = http1.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            tls: on_tls,
            status,
            seen,
        }
    }

    fn url(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}/hook", self.addr.port()),
            false => format!("http://{}/hook", self.addr),
        }
    }

    fn unique(&self) -> usize {
        self.seen.ids.lock().unwrap().len()
    }

    fn total(&self) -> u64 {
        self.seen
            .ids
            .lock()
            .unwrap()
            .values()
            .map(|n| u64::from(*n))
            .sum()
    }

    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    fn sink(&self, secret: Option<&str>) -> Arc<dyn Sink> {
        let client = relayapi::proxy::build_client(&relayapi::config::UpstreamSettings::default());
        Arc::new(
            WebhookSink::new(
                self.url(),
                secret.map(|s| SecretString::new(s.into())),
                client,
            )
            .unwrap(),
        )
    }
}

/// HMAC-SHA256 written out from the definition (RFC 2104) over sha2, so the
/// test does not reuse the sink's own signing code.
fn independent_hmac(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize(),
    )
}

fn record(prefix: &str, i: usize) -> Arc<LogRecord> {
    Arc::new(LogRecord {
        request_id: format!("req_{prefix}_{i:05}"),
        started_at: "2026-01-02T03:04:05.678Z".into(),
        duration_ms: 812,
        ttfb_ms: Some(95),
        client_ip: "203.0.113.7".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        provider: Some("openai".into()),
        model_sent: Some("gpt-4o".into()),
        status: 200,
        usage: Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 30,
            total_tokens: 42,
            cached_tokens: Some(4),
        }),
        ..Default::default()
    })
}

fn fast(settings: BatchSettings) -> BatchSettings {
    BatchSettings {
        max_delay: Duration::from_millis(50),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        ..settings
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signature_verifies_and_batches_flush_by_count() {
    let rx = Receiver::start(Some("whsec_test")).await;
    let p = LogPipeline::start(
        vec![rx.sink(Some("whsec_test"))],
        BatchSettings {
            max_records: 10,
            max_delay: Duration::from_secs(60),
            ..Default::default()
        },
    );
    for i in 0..25 {
        p.push(record("count", i));
    }
    wait_until("two full batches", Duration::from_secs(5), || {
        rx.unique() == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.unique(), 20, "the partial batch waits for max_delay");
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert_eq!(*rx.seen.batches.lock().unwrap(), vec![10, 10, 5]);
    assert_eq!(rx.seen.signed.load(Ordering::SeqCst), 3);
    assert_eq!(rx.seen.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(rx.seen.bad_headers.load(Ordering::SeqCst), 0);
    assert_eq!(report.sinks[0].delivered, 25);
    assert_eq!(report.undelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_behind_a_private_ca_needs_log_web_ca_file() {
    let rx = Receiver::start_tls().await;
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tls/ca.pem");
    let settings = |ca_file: Option<&str>| -> relayapi::config::LogSettings {
        serde_json::from_value(serde_json::json!({
            "console": false,
            "web": {"enabled": true, "callback_url": rx.url(), "ca_file": ca_file},
            "batch_max_delay": 1,
            // No spool: the first relay's undelivered record must not
            // reach the second through one (it would, from the default).
            "spool_dir": null,
        }))
        .unwrap()
    };
    // Only the built-in roots: the handshake fails, nothing arrives.
    let logger = relayapi::logs::Logger::start(&settings(None)).unwrap();
    logger.pipeline.push(record("untrusted", 0));
    let report = logger
        .pipeline
        .clone()
        .shutdown(Duration::from_secs(2))
        .await;
    assert_eq!(rx.total(), 0);
    assert_eq!(report.sinks[0].delivered, 0);
    // Trusting the test CA: every record arrives, over TLS.
    let logger = relayapi::logs::Logger::start(&settings(Some(ca))).unwrap();
    for i in 0..3 {
        logger.pipeline.push(record("trusted", i));
    }
    let report = logger
        .pipeline
        .clone()
        .shutdown(Duration::from_secs(5))
        .await;
    assert_eq!(report.sinks[0].delivered, 3);
    assert_eq!(rx.unique(), 3);
    assert_eq!(rx.total(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_flush_after_max_delay() {
    let rx = Receiver::start(None).await;
    let p = LogPipeline::start(
        vec![rx.sink(None)],
        BatchSettings {
            max_records: 1000,
            max_delay: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let t = Instant::now();
    for i in 0..3 {
        p.push(record("delay", i));
    }
    wait_until("the delayed batch", Duration::from_secs(3), || {
        rx.unique() == 3
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(90),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(*rx.seen.batches.lock().unwrap(), vec![3]);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_503_is_retried_and_every_record_arrives() {
    let rx = Receiver::start(None).await;
    rx.set_status(503);
    let p = LogPipeline::start(
        vec![rx.sink(None)],
        fast(BatchSettings {
            max_records: 50,
            ..Default::default()
        }),
    );
    for i in 0..200 {
        p.push(record("outage", i));
    }
    wait_until("retries", Duration::from_secs(3), || {
        p.stats()[0].retries >= 3
    })
    .await;
    assert_eq!(rx.unique(), 0);
    assert!(p.stats()[0].last_error.as_deref().unwrap().contains("503"));
    rx.set_status(200);
    wait_until("all records", Duration::from_secs(10), || {
        rx.unique() == 200
    })
    .await;
    assert!(rx.total() >= 200);
    // The receiver keeps a batch before its answer reaches the sink: the
    // counter follows a moment later.
    wait_until("the last batch counted", Duration::from_secs(5), || {
        p.stats()[0].delivered == 200
    })
    .await;
    let st = &p.stats()[0];
    assert_eq!((st.delivered, st.dropped), (200, 0));
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_is_permanent_counted_and_not_retried() {
    let rx = Receiver::start(None).await;
    rx.set_status(400);
    let p = LogPipeline::start(
        vec![rx.sink(None)],
        fast(BatchSettings {
            max_records: 5,
            ..Default::default()
        }),
    );
    for i in 0..5 {
        p.push(record("perm", i));
    }
    wait_until("the drop", Duration::from_secs(3), || {
        p.stats()[0].dropped == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.seen.hits.load(Ordering::SeqCst),
        1,
        "a 400 is not retried"
    );
    let st = &p.stats()[0];
    assert_eq!((st.delivered, st.retries, st.dropped), (0, 0, 5));
    let err = st.last_error.clone().unwrap();
    assert!(err.contains("permanent") && err.contains("400"), "{err}");
    assert!(!err.contains("127.0.0.1"), "no URL in errors: {err}");
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_goes_to_spool_and_is_replayed_after_recovery() {
    let rx = Receiver::start(None).await;
    rx.set_status(503);
    let dir = tempfile::tempdir().unwrap();
    let p = LogPipeline::start(
        vec![rx.sink(None)],
        fast(BatchSettings {
            max_records: 100,
            queue_capacity: 10,
            spool_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        }),
    );
    for i in 0..1000 {
        p.push(record("spool", i));
    }
    wait_until("spooling", Duration::from_secs(5), || {
        p.stats()[0].spooled >= 800
    })
    .await;
    assert_eq!(p.stats()[0].dropped, 0);
    assert_eq!(rx.unique(), 0);
    rx.set_status(200);
    wait_until("all 1000 records", Duration::from_secs(15), || {
        rx.unique() == 1000
    })
    .await;
    wait_until("the spool to empty", Duration::from_secs(5), || {
        p.stats()[0].in_spool == 0
    })
    .await;
    let st = &p.stats()[0];
    assert_eq!(st.dropped, 0);
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.undelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_bound_exceeded_drops_are_counted_exactly() {
    let rx = Receiver::start(None).await;
    rx.set_status(503);
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::to_vec(&*record("bound", 0)).unwrap().len() as u64 + 1;
    let p = LogPipeline::start(
        vec![rx.sink(None)],
        fast(BatchSettings {
            max_records: 100,
            queue_capacity: 10,
            spool_dir: Some(dir.path().to_path_buf()),
            spool_max_bytes: line * 200,
            ..Default::default()
        }),
    );
    for i in 0..1000 {
        p.push(record("bound", i));
    }
    wait_until("spool full", Duration::from_secs(5), || {
        let st = &p.stats()[0];
        // At most one batch (100) is in flight, 10 wait in the queue.
        st.spooled + st.dropped + st.queued >= 890
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = p.stats()[0].dropped;
    // 1000 - 200 (spool) - 10 (queue) - at most 100 (the batch in flight).
    assert!(
        dropped >= 690,
        "spool holds 200 records at most, dropped {dropped}"
    );
    assert_eq!(p.stats()[0].spooled, 200);
    rx.set_status(200);
    wait_until("every kept record", Duration::from_secs(10), || {
        rx.unique() as u64 + p.stats()[0].dropped == 1000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = &p.stats()[0];
    assert_eq!(rx.unique() as u64, 1000 - st.dropped);
    assert_eq!(st.dropped, dropped, "no later drops");
    assert_eq!(st.delivered, 1000 - st.dropped);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_survives_a_restart() {
    let rx = Receiver::start(None).await;
    rx.set_status(503);
    let dir = tempfile::tempdir().unwrap();
    let settings = fast(BatchSettings {
        max_records: 50,
        queue_capacity: 10,
        spool_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    let p = LogPipeline::start(vec![rx.sink(None)], settings.clone());
    for i in 0..300 {
        p.push(record("restart", i));
    }
    let t = Instant::now();
    let report = p.shutdown(Duration::from_millis(500)).await;
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    let st = &report.sinks[0];
    assert_eq!(
        (st.delivered, st.dropped, st.in_spool),
        (0, 0, 300),
        "{report:?}"
    );
    assert_eq!(report.undelivered, 300);

    rx.set_status(200);
    let p = LogPipeline::start(vec![rx.sink(None)], settings);
    wait_until("replay after restart", Duration::from_secs(10), || {
        rx.unique() == 300
    })
    .await;
    wait_until("the spool to empty", Duration::from_secs(5), || {
        p.stats()[0].in_spool == 0
    })
    .await;
    let report = p.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.undelivered, 0);
    assert_eq!(rx.total(), 300, "nothing was delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_pending_batches_within_the_deadline() {
    let rx = Receiver::start(None).await;
    let p = LogPipeline::start(
        vec![rx.sink(None)],
        BatchSettings {
            max_records: 1000,
            max_delay: Duration::from_secs(60),
            ..Default::default()
        },
    );
    for i in 0..50 {
        p.push(record("flush", i));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rx.unique(), 0);
    let t = Instant::now();
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(rx.unique(), 50);
    assert_eq!((report.undelivered, report.timed_out), (0, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_dead_sink_and_no_spool_is_bounded_and_counts_the_loss() {
    let rx = Receiver::start(None).await;
    rx.set_status(503);
    let p = LogPipeline::start(vec![rx.sink(None)], fast(BatchSettings::default()));
    for i in 0..20 {
        p.push(record("dead", i));
    }
    let t = Instant::now();
    let report = p.shutdown(Duration::from_millis(400)).await;
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(report.sinks[0].dropped, 20);
}

/// A `Write` into shared memory.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_json_lines_parse_back_into_records() {
    let out = Shared::default();
    let sink: Arc<dyn Sink> =
        Arc::new(ConsoleSink::new(ConsoleFormat::Json, Box::new(out.clone())));
    let p = LogPipeline::start(vec![sink], fast(BatchSettings::default()));
    let mut sent = Vec::new();
    for i in 0..3 {
        let mut r = (*record("console", i)).clone();
        r.response_body = Some(CapturedBody {
            text: Some(format!("hello \"{i}\"\nline two")),
            truncated: i == 2,
            sse_events: Some(4),
            ..Default::default()
        });
        r.request_headers = Some(vec![("content-type".into(), "application/json".into())]);
        let r = Arc::new(r);
        sent.push((*r).clone());
        p.push(r);
    }
    p.shutdown(Duration::from_secs(1)).await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let back: Vec<LogRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, sent);
}

#[test]
fn console_format_deserializes_from_config_spelling() {
    assert_eq!(
        serde_json::from_str::<ConsoleFormat>("\"pretty\"").unwrap(),
        ConsoleFormat::Pretty
    );
    assert_eq!(
        serde_json::from_str::<ConsoleFormat>("\"json\"").unwrap(),
        ConsoleFormat::Json
    );
}
