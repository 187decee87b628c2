//! Connections to the providers: one small pool per server worker thread.
//!
//! Why not `hyper_util`'s pooled client: per request it locks a shared pool,
//! hashes the host key, builds a lazy connect future and, for HTTP/1,
//! spawns a task that waits for the connection to become idle again. On a
//! relay whose whole job is forwarding, that bookkeeping was a large share
//! of the CPU spent per request (see `bench/README.md`). Here:
//!
//! - a worker only ever touches its own pool (the lock is uncontended; it is
//!   there because tests run several servers on one multi-thread runtime);
//! - hosts are found by a linear scan of the few the relay talks to;
//! - HTTP/1.1 is spoken by [`h1`], inside the task serving the client (no
//!   connection task, no channels), and a connection goes back to the pool
//!   from the response body itself when it ends;
//! - an HTTP/2 connection (negotiated by ALPN) is hyper's, shared by every
//!   request of that worker to that host.
//!
//! A pooled HTTP/1 connection the provider closed while it sat idle is
//! noticed at checkout (its socket reads end-of-stream); if it dies between
//! that check and the write of the request, the request is written once
//! more on a new connection (nothing reached the provider).

pub mod h1;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use crate::config::UpstreamSettings;
use crate::proxy::{BoxError, RelayBody};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The relay's upstream side: a connector and one pool per worker thread
/// (picked by [`crate::server::worker_index`]). A connection's I/O is driven
/// by the runtime that opened it, so a worker reusing another worker's
/// connection would pay a cross-thread wake-up on every read and write.
pub struct Upstream {
    connector: Connector,
    pools: Box<[Arc<Mutex<WorkerPool>>]>,
    limits: PoolLimits,
    /// `upstream.connect_timeout`, for the whole connect: name lookup, TCP,
    /// TLS and the HTTP/2 handshake (the connector's own timeout covers
    /// only the TCP connect).
    connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct PoolLimits {
    idle_timeout: Duration,
    max_idle_per_host: usize,
}

/// The connections of one worker thread, by host.
#[derive(Default)]
struct WorkerPool {
    hosts: Vec<HostPool>,
}

struct HostPool {
    scheme: Scheme,
    authority: Authority,
    /// Idle HTTP/1 connections, oldest first.
    idle: std::collections::VecDeque<Idle>,
    /// The shared HTTP/2 connection, when the host speaks it.
    h2: Option<http2::SendRequest<RelayBody>>,
}

struct Idle {
    conn: h1::Connection,
    since: Instant,
}

impl Idle {
    /// Not idle for longer than the pool allows, and still open.
    fn usable(&mut self, now: Instant, limits: PoolLimits) -> bool {
        now.duration_since(self.since) <= limits.idle_timeout && self.conn.is_usable()
    }
}

enum Conn {
    H1(h1::Connection),
    H2(http2::SendRequest<RelayBody>),
}

impl WorkerPool {
    fn host_index(&mut self, scheme: &Scheme, authority: &Authority) -> usize {
        // Exact bytes, not `Authority`'s case-insensitive `==` (ten times
        // the instructions): the URIs come from the provider config, so a
        // host is always spelled the same; another spelling just gets a pool.
        if let Some(i) = self
            .hosts
            .iter()
            .position(|h| h.authority.as_str() == authority.as_str() && h.scheme == *scheme)
        {
            return i;
        }
        self.hosts.push(HostPool {
            scheme: scheme.clone(),
            authority: authority.clone(),
            idle: Default::default(),
            h2: None,
        });
        self.hosts.len() - 1
    }
}

impl HostPool {
    /// A connection ready for a request, newest first; closed and expired
    /// ones are dropped on the way.
    fn checkout(&mut self, now: Instant, limits: PoolLimits) -> Option<Conn> {
        if let Some(h2) = &self.h2 {
            if !h2.is_closed() {
                return Some(Conn::H2(h2.clone()));
            }
            self.h2 = None;
        }
        while let Some(mut entry) = self.idle.pop_back() {
            if entry.usable(now, limits) {
                return Some(Conn::H1(entry.conn));
            }
        }
        None
    }

    fn checkin(&mut self, conn: h1::Connection, now: Instant, limits: PoolLimits) {
        while self
            .idle
            .front_mut()
            .is_some_and(|e| !e.usable(now, limits))
        {
            self.idle.pop_front();
        }
        if limits.max_idle_per_host == 0 {
            return;
        }
        if self.idle.len() >= limits.max_idle_per_host {
            self.idle.pop_front();
        }
        self.idle.push_back(Idle { conn, since: now });
    }
}

fn lock(pool: &Mutex<WorkerPool>) -> std::sync::MutexGuard<'_, WorkerPool> {
    // The pool holds no invariant a panic could break halfway.
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    /// `pools` worker pools (at least one) with these settings.
    pub fn new(settings: &UpstreamSettings, pools: usize) -> Self {
        Self {
            connector: crate::proxy::https_connector(settings),
            pools: (0..pools.max(1)).map(|_| Arc::default()).collect(),
            limits: PoolLimits {
                idle_timeout: settings.pool_idle_timeout,
                max_idle_per_host: settings.pool_max_idle_per_host,
            },
            connect_timeout: settings.connect_timeout,
        }
    }

    /// Closes idle connections past `pool_idle_timeout` and forgets closed
    /// ones, in every worker's pool. Checkouts and returns do this too; the
    /// relay calls this every second so that a worker that went quiet does
    /// not keep sockets open forever.
    pub fn sweep_idle(&self) {
        let now = Instant::now();
        for pool in self.pools.iter() {
            for host in lock(pool).hosts.iter_mut() {
                host.idle.retain_mut(|e| e.usable(now, self.limits));
                if host.h2.as_ref().is_some_and(|h| h.is_closed()) {
                    host.h2 = None;
                }
            }
        }
    }

    /// Idle HTTP/1 connections in all pools (tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.pools
            .iter()
            .map(|p| lock(p).hosts.iter().map(|h| h.idle.len()).sum::<usize>())
            .sum()
    }

    /// Sends `req` (absolute URI, `Host` header set) and returns the
    /// response head; the body streams from the connection.
    pub async fn request(
        &self,
        req: Request<RelayBody>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let (Some(scheme), Some(authority)) = (req.uri().scheme(), req.uri().authority()) else {
            return Err("upstream URI is not absolute".into());
        };
        let pool = &self.pools[crate::server::worker_index() % self.pools.len()];
        let (host, pooled) = {
            let mut p = lock(pool);
            let host = p.host_index(scheme, authority);
            (host, p.hosts[host].checkout(Instant::now(), self.limits))
        };
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => Box::pin(self.connect(pool, host)).await?,
        };
        match conn {
            Conn::H1(mut conn) => {
                let out = h1::Outgoing::prepare(req).await?;
                if let Err(e) = out.write_start(&mut conn).await {
                    if !reused {
                        return Err(e.into());
                    }
                    // Died after the checkout's check: nothing was sent.
                    conn = match Box::pin(self.connect(pool, host)).await? {
                        Conn::H1(c) => c,
                        Conn::H2(_) => return Err("provider switched to HTTP/2 mid-request".into()),
                    };
                    out.write_start(&mut conn).await?;
                }
                let checkin = Checkin {
                    pool: pool.clone(),
                    host,
                    limits: self.limits,
                };
                let (parts, body) = out.finish(conn, checkin).await?;
                Ok(Response::from_parts(parts, UpstreamBody::H1 { body }))
            }
            // Boxed: hyper's HTTP/2 send future is large, and inline it
            // would make every request's future (HTTP/1 too) that large.
            Conn::H2(sender) => Box::pin(self.send_h2(sender, req, reused, pool, host)).await,
        }
    }

    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<RelayBody>,
        req: Request<RelayBody>,
        reused: bool,
        pool: &Mutex<WorkerPool>,
        host: usize,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            // A shared connection that went away before the request was
            // handed to it: nothing was sent, try a fresh one.
            Err(mut e) if reused => match e.take_message() {
                Some(req) => match Box::pin(self.connect(pool, host)).await? {
                    Conn::H2(mut fresh) => fresh.send_request(req).await?,
                    Conn::H1(_) => return Err("provider switched to HTTP/1.1 mid-request".into()),
                },
                None => return Err(e.into_error().into()),
            },
            Err(e) => return Err(e.into_error().into()),
        };
        Ok(resp.map(|body| UpstreamBody::H2 { body }))
    }

    /// Opens a connection (TLS and ALPN as the URI's scheme says); an
    /// HTTP/2 one starts being driven on the current worker's runtime.
    /// Callers box this future: it is large (the TLS and HTTP/2 handshakes,
    /// ~6.5 KiB) and rare, and inlined it would be copied around with every
    /// request's future.
    async fn connect(&self, pool: &Mutex<WorkerPool>, host: usize) -> Result<Conn, BoxError> {
        match crate::timer::timeout(self.connect_timeout, self.connect_untimed(pool, host)).await {
            Ok(conn) => conn,
            // A timed-out I/O error: the relay answers `upstream_timeout`.
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect to the provider (DNS, TCP, TLS, HTTP/2) timed out",
            )
            .into()),
        }
    }

    async fn connect_untimed(
        &self,
        pool: &Mutex<WorkerPool>,
        host: usize,
    ) -> Result<Conn, BoxError> {
        // The connector needs only the scheme and authority: the pool's key
        // (no request URI is kept around for this rare path).
        let uri = {
            let p = lock(pool);
            let h = p.hosts.get(host).ok_or("upstream host left the pool")?;
            Uri::builder()
                .scheme(h.scheme.clone())
                .authority(h.authority.clone())
                .path_and_query("/")
                .build()?
        };
        let mut connector = self.connector.clone();
        let io = connector.call(uri).await?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            lock(pool).hosts[host].h2 = Some(sender.clone());
            Ok(Conn::H2(sender))
        } else {
            Ok(Conn::H1(h1::Connection::new(io.into())))
        }
    }
}

/// Where an HTTP/1 connection goes back to when its exchange is over.
pub struct Checkin {
    pool: Arc<Mutex<WorkerPool>>,
    host: usize,
    limits: PoolLimits,
}

impl Checkin {
    fn give_back(self, conn: h1::Connection) {
        let mut pool = lock(&self.pool);
        if let Some(h) = pool.hosts.get_mut(self.host) {
            h.checkin(conn, Instant::now(), self.limits);
        }
    }
}

pin_project_lite::pin_project! {
    /// A provider's response body, from either protocol.
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        H1 { #[pin] body: h1::ResponseBody },
        H2 { #[pin] body: Incoming },
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            UpstreamBodyProj::H1 { body } => body.poll_frame(cx).map_err(Into::into),
            UpstreamBodyProj::H2 { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1 { body } => body.is_end_stream(),
            UpstreamBody::H2 { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1 { body } => body.size_hint(),
            UpstreamBody::H2 { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A plain HTTP/1.1 server counting the connections it accepted; `close`
    /// answers with `Connection: close` (hyper then closes after the answer).
    async fn server(close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            let path = req.uri().path().to_string();
                            let mut resp =
                                Response::new(http_body_util::Full::new(Bytes::from(path)));
                            if close {
                                resp.headers_mut()
                                    .insert(http::header::CONNECTION, "close".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    async fn get(up: &Upstream, addr: std::net::SocketAddr, path: &str) -> String {
        let mut req = Request::new(crate::proxy::full(Bytes::new()));
        *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
        let resp = up.request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reuses_a_connection_once_the_body_has_ended() {
        let (addr, accepted) = server(false).await;
        let up = Upstream::new(&UpstreamSettings::default(), 1);
        for i in 0..5 {
            // The origin form reaches the server, query included.
            assert_eq!(
                get(&up, addr, &format!("/v1/x{i}?a=b")).await,
                format!("/v1/x{i}")
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_early_does_not_return_its_connection() {
        let (addr, accepted) = server(false).await;
        let up = Upstream::new(&UpstreamSettings::default(), 1);
        let mut req = Request::new(crate::proxy::full(Bytes::new()));
        *req.uri_mut() = format!("http://{addr}/a").parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
        drop(up.request(req).await.unwrap());
        assert_eq!(get(&up, addr, "/b").await, "/b");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let (addr, accepted) = server(true).await;
        let up = Upstream::new(&UpstreamSettings::default(), 1);
        for _ in 0..3 {
            assert_eq!(get(&up, addr, "/c").await, "/c");
            // Let the closed connection's task notice the close, or not:
            // both paths (dropped at checkout, or retried) must work.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, accepted) = server(false).await;
        let settings = UpstreamSettings {
            pool_idle_timeout: Duration::from_millis(1),
            ..UpstreamSettings::default()
        };
        let up = Upstream::new(&settings, 1);
        get(&up, addr, "/a").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        get(&up, addr, "/b").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_sweep_closes_idle_connections_of_a_quiet_pool() {
        let (addr, _) = server(false).await;
        let settings = UpstreamSettings {
            pool_idle_timeout: Duration::from_millis(5),
            ..UpstreamSettings::default()
        };
        let up = Upstream::new(&settings, 1);
        get(&up, addr, "/a").await;
        tokio::task::yield_now().await;
        assert_eq!(up.idle_count(), 1);
        up.sweep_idle();
        assert_eq!(up.idle_count(), 1, "not expired yet");
        tokio::time::sleep(Duration::from_millis(20)).await;
        up.sweep_idle();
        assert_eq!(up.idle_count(), 0);
    }

    #[tokio::test]
    async fn unreachable_host_is_an_error_not_a_hang() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let up = Upstream::new(&UpstreamSettings::default(), 1);
        let mut req = Request::new(crate::proxy::full(Bytes::new()));
        *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
        assert!(up.request(req).await.is_err());
    }
}
