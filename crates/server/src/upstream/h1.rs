//! HTTP/1.1 to a provider, driven by the request that uses the connection.
//!
//! Why not hyper's client connection: hyper runs each connection as a task
//! of its own and talks to it over channels — the request goes in through
//! one, the response head comes back through a oneshot, every body chunk
//! through another channel — so each exchange wakes and polls two tasks
//! several times. Forwarding is all a relay does, and those hand-offs were a
//! large share of its CPU per request. Here the task serving the client
//! writes the request and reads the answer itself.
//!
//! The codec is small because the relay needs only the client side of
//! HTTP/1.1 (RFC 9112), one exchange at a time: no pipelining, no upgrades.
//! Response heads and chunk sizes are parsed by `httparse` (hyper's parser);
//! framing follows RFC 9112 §6.3: no body after `HEAD`, 1xx, 204 and 304; a
//! `Transfer-Encoding` ending in `chunked` wins over `Content-Length` (and
//! the connection is then not reused); conflicting `Content-Length`s are an
//! error; anything else reads until the provider closes.
//!
//! A connection is reused only after an exchange that ended exactly at the
//! end of the response, with nothing unasked-for left in the buffer, and
//! with keep-alive on both sides.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::Checkin;
use crate::proxy::{BoxError, RelayBody};

/// Header lines accepted in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Headers the relay may add to a provider's response on the way out.
const ADDED_RESPONSE_HEADERS: usize = 6;
/// Read buffer: starts small (an idle stream holds it), doubles while reads
/// fill it, up to this. A response head must fit in it.
const INITIAL_BUFFER: usize = 4 * 1024;
const MAX_BUFFER: usize = 64 * 1024;
/// A first body frame up to this size is copied behind the request head so
/// that both leave in one write.
const COALESCE_LIMIT: usize = 16 * 1024;
/// A first body frame up to this size goes out with the head, unwatched
/// (the socket buffers take it at once); a larger one is written like the
/// rest of the body, watching for an early answer.
const FIRST_WITH_HEAD: usize = 64 * 1024;

/// What can go wrong talking HTTP/1.1 to a provider. None of these carry
/// header values or body bytes: they end up in debug logs.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before the response was complete")]
    Incomplete,
    #[error("invalid upstream response: {0}")]
    Invalid(&'static str),
    #[error("upstream response head larger than {MAX_BUFFER} bytes")]
    HeadTooLarge,
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
    #[error("request body does not match its Content-Length")]
    BodyLength,
}

/// The byte stream under a connection: plain TCP, or TLS (rustls) when
/// ALPN settled on HTTP/1.1.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>>),
}

impl From<MaybeHttpsStream<TokioIo<TcpStream>>> for Io {
    fn from(stream: MaybeHttpsStream<TokioIo<TcpStream>>) -> Self {
        match stream {
            MaybeHttpsStream::Http(tcp) => Io::Tcp(tcp.into_inner()),
            tls => Io::Tls(Box::new(TokioIo::new(tls))),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Bytes read from the provider and not consumed yet: `data[start..end]`.
/// The vector is zero-filled once (no unsafe code for uninitialised reads)
/// and reused; consumed bytes are copied out into their own `Bytes`.
struct Inbox {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbox {
    fn new() -> Self {
        Self {
            data: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn take(&mut self, n: usize) -> Bytes {
        let bytes = Bytes::copy_from_slice(&self.data[self.start..self.start + n]);
        self.consume(n);
        bytes
    }

    /// Reads more; `Ok(0)` is end of stream. Fails when the unconsumed
    /// bytes already fill the largest buffer (a head or line too long).
    fn poll_fill(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<usize, H1Error>> {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < MAX_BUFFER {
                self.data.resize((self.data.len() * 2).min(MAX_BUFFER), 0);
            } else {
                return Poll::Ready(Err(H1Error::HeadTooLarge));
            }
        }
        let mut buf = ReadBuf::new(&mut self.data[self.end..]);
        ready!(Pin::new(io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        // A read that filled all the room asks for a bigger buffer next time.
        if self.end + n == self.data.len() && self.start == 0 && self.data.len() < MAX_BUFFER {
            self.data.resize((self.data.len() * 2).min(MAX_BUFFER), 0);
        }
        self.end += n;
        Poll::Ready(Ok(n))
    }
}

/// An open HTTP/1.1 connection with no exchange in progress.
pub struct Connection {
    io: Io,
    inbox: Inbox,
}

impl Connection {
    pub fn new(io: Io) -> Self {
        Self {
            io,
            inbox: Inbox::new(),
        }
    }

    /// Whether an idle connection can take a request: the provider has not
    /// closed it and sent nothing unasked-for. At most one non-blocking
    /// read, none once the socket has been seen empty and stayed quiet; the
    /// next wait for the response then needs no extra read.
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.inbox.is_empty() && self.inbox.poll_fill(&mut self.io, &mut cx).is_pending()
    }

    /// Reads the response head (skipping interim 1xx answers).
    async fn read_head(&mut self, method: &Method) -> Result<Head, H1Error> {
        std::future::poll_fn(|cx| self.poll_head(method, cx))
            .await?
            .ok_or(H1Error::Incomplete)
    }

    /// [`Connection::read_head`] as a poll: `Ok(None)` when the provider
    /// closed before a whole head arrived.
    fn poll_head(
        &mut self,
        method: &Method,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Head>, H1Error>> {
        loop {
            let filled = self.inbox.filled();
            // Nothing read yet (the usual first pass): nothing to parse.
            if !filled.is_empty() {
                if let Some((len, head)) = parse_head(filled, method)? {
                    self.inbox.consume(len);
                    match head {
                        Some(head) => return Poll::Ready(Ok(Some(head))),
                        None => continue, // 1xx: the real answer follows
                    }
                }
            }
            if ready!(self.inbox.poll_fill(&mut self.io, cx))? == 0 {
                return Poll::Ready(Ok(None));
            }
        }
    }
}

/// A parsed response head and how its body is framed.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// `Ok(None)`: more bytes needed. `Ok(Some((len, None)))`: an interim 1xx
/// answer of `len` bytes to skip.
#[allow(clippy::type_complexity)]
fn parse_head(bytes: &[u8], method: &Method) -> Result<Option<(usize, Option<Head>)>, H1Error> {
    // Uninitialised slots: zeroing 100 of them on every parse showed up in
    // profiles (httparse fills only what it uses).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, bytes, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Invalid("too many headers")),
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The relay never asks for an upgrade (it drops `Upgrade`).
        return Err(H1Error::Invalid("unrequested protocol switch"));
    }
    if status.is_informational() {
        return Ok(Some((len, None)));
    }
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // One copy of the head; every header value is a slice of it (one
    // allocation per response instead of one per value).
    let head = Bytes::copy_from_slice(&bytes[..len]);
    let base = bytes.as_ptr() as usize;
    // Room for what the relay adds before answering (request id, CORS,
    // remaining calls): growing a HeaderMap rehashes it.
    let mut map = HeaderMap::with_capacity(resp.headers.len() + ADDED_RESPONSE_HEADERS);
    let mut framing_headers = 0u8;
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| H1Error::Invalid("header name"))?;
        // httparse's values point into `bytes`; anything else (an empty
        // value may point anywhere) is copied on its own.
        let start = (h.value.as_ptr() as usize).wrapping_sub(base);
        let value = match start.checked_add(h.value.len()) {
            Some(end) if !h.value.is_empty() && end <= head.len() => {
                HeaderValue::from_maybe_shared(head.slice(start..end))
            }
            _ => HeaderValue::from_bytes(h.value),
        }
        .map_err(|_| H1Error::Invalid("header value"))?;
        // Noted on the way, so the usual answer (a length, no
        // `Transfer-Encoding`, no `Connection`) needs no lookups below.
        framing_headers |= if name == header::CONTENT_LENGTH {
            HAS_LENGTH
        } else if name == header::TRANSFER_ENCODING {
            HAS_TRANSFER_ENCODING
        } else if name == header::CONNECTION {
            HAS_CONNECTION
        } else {
            0
        };
        map.append(name, value);
    }
    let (framing, framing_reusable) = response_framing(method, status, &map, framing_headers)?;
    let keep_alive = framing_reusable && wants_keep_alive(version, &map, framing_headers);
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    let (parts, ()) = response.into_parts();
    Ok(Some((
        len,
        Some(Head {
            parts,
            framing,
            keep_alive,
        }),
    )))
}

/// How the response body is delimited (RFC 9112 §6.3), and whether the
/// framing allows reusing the connection afterwards.
const HAS_LENGTH: u8 = 1;
const HAS_TRANSFER_ENCODING: u8 = 2;
const HAS_CONNECTION: u8 = 4;

/// `present`: which of the framing headers the head has (`HAS_*` bits).
fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    present: u8,
) -> Result<(Framing, bool), H1Error> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, true));
    }
    let has_length = present & HAS_LENGTH != 0;
    if present & HAS_TRANSFER_ENCODING != 0 {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            // Both headers: a smuggling shape; read it as chunked, then close.
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => {
                (Framing::Chunked(Chunk::Size), !has_length)
            }
            _ => (Framing::UntilClose, false),
        });
    }
    if has_length {
        let mut length: Option<u64> = None;
        for value in headers.get_all(header::CONTENT_LENGTH) {
            for part in value.as_bytes().split(|&b| b == b',') {
                let n =
                    parse_length(part.trim_ascii()).ok_or(H1Error::Invalid("Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::Invalid("conflicting Content-Length"));
                }
                length = Some(n);
            }
        }
        return Ok(match length {
            Some(0) => (Framing::Done, true),
            Some(n) => (Framing::Length(n), true),
            None => return Err(H1Error::Invalid("Content-Length")),
        });
    }
    Ok((Framing::UntilClose, false))
}

/// Digits only: `+1`, `-1`, ` 1` and the empty string are refused.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// `present`: as for [`response_framing`]; without a `Connection` header
/// the version's default holds.
fn wants_keep_alive(version: Version, headers: &HeaderMap, present: u8) -> bool {
    if present & HAS_CONNECTION == 0 {
        return version != Version::HTTP_10;
    }
    match version {
        Version::HTTP_10 => has_token(headers, "keep-alive"),
        _ => !has_token(headers, "close"),
    }
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    /// Exactly this many body bytes still to send.
    Length(u64),
    Chunked,
}

/// A request turned into bytes, up to its first body frame: everything
/// that can be sent again, unchanged, on a fresh connection if a pooled one
/// turns out to be dead when it is written.
pub struct Outgoing {
    method: Method,
    /// Request line, headers, blank line, and (when small and the body
    /// ended with it) the whole body, framed.
    head: Vec<u8>,
    /// The first body frame, framed separately because it is large.
    first: Option<Bytes>,
    /// The rest of the body, `None` when it has all been taken.
    rest: Option<RelayBody>,
    framing: RequestFraming,
    /// The body ended with `first`: its end (the last chunk) follows it.
    end_after_first: bool,
}

impl Outgoing {
    /// Serialises `req` (absolute URI; `Host` set by the caller) and takes
    /// its first body frame.
    pub async fn prepare(req: Request<RelayBody>) -> Result<Self, H1Error> {
        let (parts, mut body) = req.into_parts();
        // The head is built by a plain function: its locals stay out of
        // this future, which every request's future embeds.
        let mut out = Self::encode(parts, &body)?;
        if out.framing == RequestFraming::Length(0) {
            return Ok(out);
        }
        let first = next_data(&mut body).await?;
        let ended = first.is_none() || body.is_end_stream();
        if let Some(data) = first {
            out.count(data.len())?;
            if ended && data.len() <= COALESCE_LIMIT {
                out.frame_into_head(&data);
            } else {
                out.first = Some(data);
            }
        }
        if !ended {
            out.rest = Some(body);
        } else if out.first.is_none() {
            out.end_into_head()?;
        } else {
            // The end goes on the wire after `first`, never before it.
            out.end_bytes()?;
            out.end_after_first = true;
        }
        Ok(out)
    }

    /// The request line and headers, with the body's framing decided.
    fn encode(parts: http::request::Parts, body: &RelayBody) -> Result<Self, H1Error> {
        let mut headers = parts.headers;
        // The framing is this function's to decide (the proxy drops the
        // client's hop-by-hop `Transfer-Encoding` anyway).
        headers.remove(header::TRANSFER_ENCODING);
        // HTTP/1.1 requires `Host`; the proxy sets it, except for a base URL
        // with user info, where it is derived here (without the user info).
        if !headers.contains_key(header::HOST) {
            if let Some(host) = parts.uri.host() {
                let value = match parts.uri.port_u16() {
                    Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
                    None => HeaderValue::from_str(host),
                };
                if let Ok(value) = value {
                    headers.insert(header::HOST, value);
                }
            }
        }
        let declared = match headers.get(header::CONTENT_LENGTH) {
            Some(v) => Some(parse_length(v.as_bytes().trim_ascii()).ok_or(H1Error::BodyLength)?),
            None => None,
        };
        // Like hyper: a declared length is kept; an empty body sends no
        // framing header; a body of known size gets Content-Length; GET,
        // HEAD and CONNECT never carry a body of unknown size; anything else
        // of unknown size is chunked.
        let framing = match declared {
            Some(n) => RequestFraming::Length(n),
            None if body.is_end_stream() => RequestFraming::Length(0),
            None => match body.size_hint().exact() {
                Some(n) => {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                    RequestFraming::Length(n)
                }
                None if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
                    RequestFraming::Length(0)
                }
                None => {
                    headers.insert(
                        header::TRANSFER_ENCODING,
                        HeaderValue::from_static("chunked"),
                    );
                    RequestFraming::Chunked
                }
            },
        };
        let mut head = Vec::with_capacity(256 + 64 * headers.len());
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        match parts.uri.path_and_query() {
            Some(pq) => head.extend_from_slice(pq.as_str().as_bytes()),
            None => head.push(b'/'),
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");

        Ok(Outgoing {
            method: parts.method,
            head,
            first: None,
            rest: None,
            framing,
            end_after_first: false,
        })
    }

    /// Counts `n` body bytes against a declared length.
    fn count(&mut self, n: usize) -> Result<(), H1Error> {
        if let RequestFraming::Length(left) = &mut self.framing {
            *left = left.checked_sub(n as u64).ok_or(H1Error::BodyLength)?;
        }
        Ok(())
    }

    fn frame_into_head(&mut self, data: &[u8]) {
        let (prefix, suffix) = self.frame_around(data.len());
        self.head.extend_from_slice(prefix.as_bytes());
        self.head.extend_from_slice(data);
        self.head.extend_from_slice(suffix);
    }

    /// What goes before and after `len` body bytes on the wire (the chunk
    /// size line and its CRLF when chunked).
    fn frame_around(&self, len: usize) -> (String, &'static [u8]) {
        match self.framing {
            RequestFraming::Chunked => (format!("{len:X}\r\n"), b"\r\n"),
            RequestFraming::Length(_) => (String::new(), b""),
        }
    }

    /// The body ended: a declared length must be used up; chunked ends with
    /// the last chunk.
    fn end_into_head(&mut self) -> Result<(), H1Error> {
        let end = self.end_bytes()?;
        self.head.extend_from_slice(end);
        Ok(())
    }

    /// What ends the body on the wire, once all of it was counted.
    fn end_bytes(&self) -> Result<&'static [u8], H1Error> {
        match self.framing {
            RequestFraming::Length(0) => Ok(b""),
            RequestFraming::Length(_) => Err(H1Error::BodyLength),
            RequestFraming::Chunked => Ok(b"0\r\n\r\n"),
        }
    }

    /// Writes the head (and the first frame). Safe to call again on another
    /// connection when it fails.
    pub async fn write_start(&self, conn: &mut Connection) -> io::Result<()> {
        match self.first.as_ref().filter(|d| d.len() <= FIRST_WITH_HEAD) {
            None => conn.io.write_all(&self.head).await,
            Some(data) => {
                let (prefix, suffix) = self.frame_around(data.len());
                let end: &[u8] = match self.end_after_first {
                    true => self.end_bytes().map_err(io::Error::other)?,
                    false => b"",
                };
                write_all_vectored(
                    &mut conn.io,
                    &[&self.head, prefix.as_bytes(), data, suffix, end],
                )
                .await
            }
        }
    }

    /// Streams the rest of the body, then reads the response head. A
    /// provider may answer before it has read the whole body (a 413, a 429
    /// at its edge) and stop reading: while the body is sent, what the
    /// provider sends is read too, and a complete response head ends the
    /// upload — the answer is relayed at once and the connection is not
    /// reused. After a failed write the head is looked for in what it sent.
    pub async fn finish(
        mut self,
        mut conn: Connection,
        hand_back: Checkin,
    ) -> Result<(http::response::Parts, ResponseBody), H1Error> {
        let late_first = self.first.take().filter(|d| d.len() > FIRST_WITH_HEAD);
        if late_first.is_some() || self.rest.is_some() {
            match self.write_rest(&mut conn, late_first).await {
                Ok(None) => {}
                Ok(Some(early)) => return Ok(ResponseBody::start(conn, early, false, hand_back)),
                Err(H1Error::Io(e)) => {
                    let Ok(head) = conn.read_head(&self.method).await else {
                        return Err(H1Error::Io(e));
                    };
                    return Ok(ResponseBody::start(conn, head, false, hand_back));
                }
                Err(e) => return Err(e),
            }
        }
        let head = conn.read_head(&self.method).await?;
        Ok(ResponseBody::start(conn, head, true, hand_back))
    }

    /// Sends `first` (already counted) and the rest of the body; `Some`
    /// when a response head arrived before the body was all sent.
    async fn write_rest(
        &mut self,
        conn: &mut Connection,
        first: Option<Bytes>,
    ) -> Result<Option<Head>, H1Error> {
        let mut watch = EarlyAnswer {
            method: self.method.clone(),
            provider_closed: false,
        };
        let mut data = first;
        let mut body = self.rest.take();
        loop {
            if let Some(data) = data.take() {
                let (prefix, suffix) = self.frame_around(data.len());
                let parts = [prefix.as_bytes(), &data, suffix];
                if let Some(early) = watch.write(conn, &parts).await? {
                    return Ok(Some(early));
                }
            }
            let Some(b) = body.as_mut() else { break };
            match watch.next_data(conn, b).await? {
                Watched::Early(head) => return Ok(Some(head)),
                Watched::Done(Some(next)) => {
                    self.count(next.len())?;
                    data = Some(next);
                }
                Watched::Done(None) => break,
            }
        }
        // Here the end has not been sent: `first` was sent late, or a rest
        // followed it.
        let end = self.end_bytes()?;
        watch.write(conn, &[end]).await
    }
}

/// What a watched step ended with.
enum Watched<T> {
    Done(T),
    /// The provider answered first.
    Early(Head),
}

/// Reads what the provider sends while the request body is still going
/// out, for an answer that comes before the upload ends.
struct EarlyAnswer {
    method: Method,
    /// The provider closed its side; the next write will tell how.
    provider_closed: bool,
}

impl EarlyAnswer {
    /// Ready with a complete (final) response head, or a read error.
    /// Pending otherwise, with the read side's waker registered (none once
    /// the provider closed: the write or the body read in progress then
    /// drives the task).
    fn poll_head(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Head, H1Error>> {
        if self.provider_closed {
            return Poll::Pending;
        }
        match ready!(conn.poll_head(&self.method, cx)) {
            Ok(Some(head)) => Poll::Ready(Ok(head)),
            Ok(None) => {
                self.provider_closed = true;
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Writes `parts` whole, unless a response head arrives first.
    async fn write(
        &mut self,
        conn: &mut Connection,
        parts: &[&[u8]],
    ) -> Result<Option<Head>, H1Error> {
        let mut slices = io_slices(parts);
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.poll_head(conn, cx) {
                    return Poll::Ready(r.map(Watched::Early));
                }
                Pin::new(&mut conn.io)
                    .poll_write_vectored(cx, slices)
                    .map(|r| r.map(Watched::Done).map_err(H1Error::Io))
            })
            .await?;
            match step {
                Watched::Early(head) => return Ok(Some(head)),
                Watched::Done(0) => return Err(H1Error::Io(io::ErrorKind::WriteZero.into())),
                Watched::Done(n) => IoSlice::advance_slices(&mut slices, n),
            }
        }
        Ok(None)
    }

    /// The body's next data frame, unless a response head arrives first.
    async fn next_data(
        &mut self,
        conn: &mut Connection,
        body: &mut RelayBody,
    ) -> Result<Watched<Option<Bytes>>, H1Error> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll_head(conn, cx) {
                return Poll::Ready(r.map(Watched::Early));
            }
            poll_next_data(body, cx).map(|r| r.map(Watched::Done))
        })
        .await
    }
}

/// The next non-empty data frame (trailers of a request are not forwarded).
async fn next_data(body: &mut RelayBody) -> Result<Option<Bytes>, H1Error> {
    std::future::poll_fn(|cx| poll_next_data(body, cx)).await
}

fn poll_next_data(
    body: &mut RelayBody,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Bytes>, H1Error>> {
    loop {
        let Some(frame) = ready!(Pin::new(&mut *body).poll_frame(cx)) else {
            return Poll::Ready(Ok(None));
        };
        let frame = frame.map_err(H1Error::RequestBody)?;
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                return Poll::Ready(Ok(Some(data)));
            }
        }
        if body.is_end_stream() {
            return Poll::Ready(Ok(None));
        }
    }
}

/// The non-empty `parts`, for a vectored write.
fn io_slices<'a>(parts: &[&'a [u8]]) -> Vec<IoSlice<'a>> {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect()
}

async fn write_all_vectored(io: &mut Io, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices = io_slices(parts);
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Where the body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many body bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the provider closes the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes left in the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// What the buffered bytes gave, without reading more.
enum Step {
    Data(Bytes),
    NeedMore,
    Done,
}

/// A provider's HTTP/1.1 response body, read straight from the socket.
/// When it ends cleanly the connection goes back to its pool; dropped early
/// or failed, the connection closes with it.
pub struct ResponseBody {
    conn: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    hand_back: Option<Checkin>,
    /// Data was returned since the last `Pending`.
    gave_data: bool,
    /// A read failure held back for one poll (see `poll_next`).
    deferred: Option<H1Error>,
}

impl ResponseBody {
    /// The head's parts and its body; an empty body ends (and hands the
    /// connection back) at once.
    fn start(
        conn: Connection,
        head: Head,
        reusable: bool,
        hand_back: Checkin,
    ) -> (http::response::Parts, ResponseBody) {
        let mut body = ResponseBody {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: reusable && head.keep_alive,
            hand_back: Some(hand_back),
            gave_data: false,
            deferred: None,
        };
        if body.framing == Framing::Done {
            body.finish();
        }
        (head.parts, body)
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.inbox.is_empty() {
                if let Some(hand_back) = self.hand_back.take() {
                    hand_back.give_back(conn);
                }
            }
        }
    }

    /// Decodes what is buffered: a data frame, the end, or "need more".
    /// With `take_data` false it stops before any data (framing only).
    fn step(&mut self, take_data: bool) -> Result<Step, H1Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::Done);
        };
        let inbox = &mut conn.inbox;
        loop {
            match self.framing {
                Framing::Done => return Ok(Step::Done),
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(left) => {
                    if inbox.is_empty() || !take_data {
                        return Ok(Step::NeedMore);
                    }
                    let n = (inbox.filled().len() as u64).min(left) as usize;
                    self.framing = Framing::Length(left - n as u64);
                    return Ok(Step::Data(inbox.take(n)));
                }
                Framing::UntilClose => {
                    if inbox.is_empty() || !take_data {
                        return Ok(Step::NeedMore);
                    }
                    let n = inbox.filled().len();
                    return Ok(Step::Data(inbox.take(n)));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(inbox.filled()) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        inbox.consume(len);
                        self.framing = Framing::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(_) => return Err(H1Error::Invalid("chunk size")),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    if inbox.is_empty() || !take_data {
                        return Ok(Step::NeedMore);
                    }
                    let n = (inbox.filled().len() as u64).min(left) as usize;
                    self.framing = Framing::Chunked(match left - n as u64 {
                        0 => Chunk::DataEnd,
                        rest => Chunk::Data(rest),
                    });
                    return Ok(Step::Data(inbox.take(n)));
                }
                Framing::Chunked(Chunk::DataEnd) => match inbox.filled() {
                    [b'\r', b'\n', ..] => {
                        inbox.consume(2);
                        self.framing = Framing::Chunked(Chunk::Size);
                    }
                    [] | [b'\r'] => return Ok(Step::NeedMore),
                    _ => return Err(H1Error::Invalid("chunk data")),
                },
                Framing::Chunked(Chunk::Trailers) => {
                    // Trailers are read and dropped (the relay's client side
                    // is HTTP/1.1 or 2 without trailers for these APIs).
                    let Some(nl) = inbox.filled().iter().position(|&b| b == b'\n') else {
                        return Ok(Step::NeedMore);
                    };
                    let empty = nl == 0 || (nl == 1 && inbox.filled()[0] == b'\r');
                    inbox.consume(nl + 1);
                    if empty {
                        self.framing = Framing::Done;
                    }
                }
            }
        }
    }

    /// After a data frame: consumes framing that is already buffered (the
    /// CRLF, a last chunk, an empty trailer section), so that the body
    /// reports its end with its last data frame and the connection is back
    /// in the pool before the client has even seen the bytes.
    fn settle(&mut self) -> Result<(), H1Error> {
        if let Step::Done = self.step(false)? {
            self.finish();
        }
        Ok(())
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        if let Some(e) = self.deferred.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match self.step(true)? {
                Step::Data(data) => {
                    self.settle()?;
                    self.gave_data = true;
                    return Poll::Ready(Some(Ok(data)));
                }
                Step::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Step::NeedMore => {}
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let failure = match conn.inbox.poll_fill(&mut conn.io, cx) {
                Poll::Pending => {
                    self.gave_data = false;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) if self.framing == Framing::UntilClose => {
                    self.keep_alive = false;
                    self.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => H1Error::Incomplete,
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => e,
            };
            // hyper's server side aborts the client connection on a body
            // error without flushing what it has buffered. When the failure
            // comes right behind data (a provider that sends a chunk and
            // resets), the error waits one poll, so that the client gets
            // the head and the data before the abort.
            if self.gave_data {
                self.deferred = Some(failure);
                self.gave_data = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(failure)));
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        match ready!(this.poll_next(cx)) {
            Some(Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(e)) => {
                // A failed body never hands its connection back.
                this.conn = None;
                this.framing = Framing::Done;
                Poll::Ready(Some(Err(e)))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::Upstream;
    use super::*;
    use crate::config::UpstreamSettings;

    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    /// What the scripted provider does after reading a request.
    #[derive(Clone)]
    enum Reply {
        /// Writes these pieces (20 ms apart), keeps the connection.
        Send(Vec<&'static [u8]>),
        /// Writes these bytes and closes the connection.
        SendAndClose(&'static [u8]),
        /// Answers after the request head only, then closes without
        /// reading the body.
        EarlyAndClose(&'static [u8]),
        /// Answers after the request head only and keeps the connection
        /// open without reading another byte.
        EarlyAndStall(&'static [u8]),
    }

    struct Provider {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        /// Every request as it arrived on the wire.
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    /// Reads one request: head, then a Content-Length or chunked body.
    async fn read_request<S: AsyncRead + Unpin>(
        s: &mut S,
        buf: &mut Vec<u8>,
        head_only: bool,
    ) -> Option<Vec<u8>> {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let mut total = head_end;
        if !head_only {
            if let Some(cl) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
            {
                total += cl.trim().parse::<usize>().unwrap();
            } else if head.contains("transfer-encoding: chunked") {
                total = loop {
                    if let Some(i) = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                        break head_end + i + 5;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
            }
            while buf.len() < total {
                let mut chunk = [0u8; 65536];
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        let request = buf[..total].to_vec();
        buf.drain(..total);
        Some(request)
    }

    /// A provider answering the n-th request of every connection with
    /// `replies[n]` (the last one repeats).
    async fn provider(replies: Vec<Reply>) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (replies, log) = (replies.clone(), log.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for i in 0.. {
                        let reply = replies[i.min(replies.len() - 1)].clone();
                        let head_only =
                            matches!(reply, Reply::EarlyAndClose(_) | Reply::EarlyAndStall(_));
                        let Some(req) = read_request(&mut s, &mut buf, head_only).await else {
                            return;
                        };
                        log.lock().unwrap().push(req);
                        match reply {
                            Reply::Send(pieces) => {
                                for (j, p) in pieces.iter().enumerate() {
                                    if j > 0 {
                                        tokio::time::sleep(std::time::Duration::from_millis(20))
                                            .await;
                                    }
                                    s.write_all(p).await.unwrap();
                                }
                            }
                            Reply::EarlyAndStall(bytes) => {
                                s.write_all(bytes).await.unwrap();
                                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                                return;
                            }
                            Reply::SendAndClose(bytes) | Reply::EarlyAndClose(bytes) => {
                                let _ = s.write_all(bytes).await;
                                // Closing with unread data would reset the
                                // connection; stop reading gracefully.
                                let _ = s.shutdown().await;
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Provider {
            addr,
            accepted,
            requests,
        }
    }

    fn request(p: &Provider, method: Method, path: &str, body: RelayBody) -> Request<RelayBody> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = format!("http://{}{path}", p.addr).parse().unwrap();
        req.headers_mut()
            .insert(header::HOST, p.addr.to_string().parse().unwrap());
        req
    }

    /// Status, headers and the collected body (or the body's error).
    async fn call(
        up: &Upstream,
        req: Request<RelayBody>,
    ) -> Result<(StatusCode, HeaderMap, Result<Vec<u8>, String>), String> {
        let resp = up.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| e.to_string());
        Ok((parts.status, parts.headers, body))
    }

    fn get(p: &Provider) -> Request<RelayBody> {
        request(
            p,
            Method::GET,
            "/v1/x?a=b",
            crate::proxy::full(Bytes::new()),
        )
    }

    fn upstream() -> Upstream {
        Upstream::new(&UpstreamSettings::default(), 1)
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_and_the_connection_reused() {
        let p = provider(vec![Reply::Send(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
            b"7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        ])])
        .await;
        let up = upstream();
        for _ in 0..3 {
            let (status, headers, body) = call(&up, get(&p)).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(headers["transfer-encoding"], "chunked");
            assert_eq!(body.unwrap(), b"hello, world");
        }
        assert_eq!(p.accepted.load(Ordering::SeqCst), 1);
        let first = String::from_utf8(p.requests.lock().unwrap()[0].clone()).unwrap();
        assert!(first.starts_with("GET /v1/x?a=b HTTP/1.1\r\n"), "{first}");
        assert!(!first.contains("content-length") && !first.contains("transfer-encoding"));
    }

    #[tokio::test]
    async fn several_chunks_in_one_read_and_the_end_is_seen_with_the_last() {
        let p = provider(vec![Reply::Send(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
        ])])
        .await;
        let up = upstream();
        let mut body = up.request(get(&p)).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abc");
        assert!(!body.is_end_stream());
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"def");
        assert!(
            body.is_end_stream(),
            "the last chunk was buffered with the data"
        );
        assert_eq!(up.idle_count(), 1, "back in the pool with the last frame");
        drop(body);
        call(&up, get(&p)).await.unwrap().2.unwrap();
        assert_eq!(p.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn content_length_bodies_arriving_in_pieces() {
        let p = provider(vec![Reply::Send(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\nX-A: 2\r\nX-Empty:\r\n",
            b"\r\nhello",
            b" world",
        ])])
        .await;
        let up = upstream();
        let (status, headers, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!(status, 200);
        let values: Vec<_> = headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(headers["x-empty"], "");
        assert_eq!(body.unwrap(), b"hello world");
        call(&up, get(&p)).await.unwrap().2.unwrap();
        assert_eq!(p.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_without_length_runs_until_close_and_is_not_reused() {
        let p = provider(vec![Reply::SendAndClose(
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
        )])
        .await;
        let up = upstream();
        let (_, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!(body.unwrap(), b"until the end");
        let (_, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!(body.unwrap(), b"until the end");
        assert_eq!(p.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_body_after_204_304_or_head_and_1xx_is_skipped() {
        let p = provider(vec![
            Reply::Send(vec![b"HTTP/1.1 204 No Content\r\n\r\n"]),
            Reply::Send(vec![
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
            ]),
            Reply::Send(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]),
            Reply::Send(vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            ]),
        ])
        .await;
        let up = upstream();
        let (status, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!((status.as_u16(), body.unwrap()), (204, vec![]));
        let (status, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!((status.as_u16(), body.unwrap()), (304, vec![]));
        let head = request(&p, Method::HEAD, "/", crate::proxy::full(Bytes::new()));
        let (status, headers, body) = call(&up, head).await.unwrap();
        assert_eq!((status.as_u16(), body.unwrap()), (200, vec![]));
        assert_eq!(headers["content-length"], "5");
        let (status, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!((status.as_u16(), body.unwrap()), (201, b"ok".to_vec()));
        assert_eq!(p.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        for (reply, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
                "conflicting",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                "switch",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed"),
            (b"garbage\r\n\r\n", "malformed"),
            (b"HTTP/1.1 200 OK\r\n", "before the response was complete"),
        ] {
            let p = provider(vec![Reply::SendAndClose(reply)]).await;
            let err = call(&upstream(), get(&p)).await.unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        // A head larger than the buffer may grow to.
        let huge: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000))
                .into_bytes()
                .into_boxed_slice(),
        );
        let p = provider(vec![Reply::SendAndClose(huge)]).await;
        let err = call(&upstream(), get(&p)).await.unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[tokio::test]
    async fn broken_bodies_fail_and_close_the_connection() {
        for (reply, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
                "before the response was complete",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
                "chunk data",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                "before the response was complete",
            ),
        ] {
            let p = provider(vec![Reply::SendAndClose(reply)]).await;
            let (_, _, body) = call(&upstream(), get(&p)).await.unwrap();
            let err = body.unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[tokio::test]
    async fn chunked_with_content_length_is_read_as_chunked_then_closed() {
        let p = provider(vec![Reply::Send(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ])])
        .await;
        let up = upstream();
        let (_, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!(body.unwrap(), b"ok");
        call(&up, get(&p)).await.unwrap().2.unwrap();
        assert_eq!(p.accepted.load(Ordering::SeqCst), 2, "never reused");
    }

    #[tokio::test]
    async fn bytes_after_the_answer_spoil_the_connection() {
        let p = provider(vec![Reply::Send(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
        ])])
        .await;
        let up = upstream();
        let (_, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!(body.unwrap(), b"ok");
        call(&up, get(&p)).await.unwrap().2.unwrap();
        assert_eq!(p.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_are_honoured() {
        let p = provider(vec![Reply::Send(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ])])
        .await;
        let up = upstream();
        call(&up, get(&p)).await.unwrap().2.unwrap();
        call(&up, get(&p)).await.unwrap().2.unwrap();
        assert_eq!(p.accepted.load(Ordering::SeqCst), 2);

        let p = provider(vec![Reply::Send(vec![
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        ])])
        .await;
        call(&up, get(&p)).await.unwrap().2.unwrap();
        let (_, _, body) = call(&up, get(&p)).await.unwrap();
        assert_eq!(body.unwrap(), b"ok");
        assert_eq!(
            p.accepted.load(Ordering::SeqCst),
            1,
            "1.0 with keep-alive is reused"
        );
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_while_idle_is_replaced() {
        // Keep-alive answer, then the provider closes the idle connection.
        let p = provider(vec![Reply::SendAndClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )])
        .await;
        let up = upstream();
        for _ in 0..3 {
            let (_, _, body) = call(&up, get(&p)).await.unwrap();
            assert_eq!(body.unwrap(), b"ok");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(p.accepted.load(Ordering::SeqCst), 3);
    }

    fn ok() -> Reply {
        Reply::Send(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    }

    #[tokio::test]
    async fn request_bodies_are_framed_like_hyper_frames_them() {
        let p = provider(vec![ok()]).await;
        let up = upstream();
        // A whole body: Content-Length, one write with the head.
        let req = request(
            &p,
            Method::POST,
            "/a",
            crate::proxy::full(Bytes::from_static(b"{\"x\":1}")),
        );
        call(&up, req).await.unwrap().2.unwrap();
        // A streamed body of unknown size: chunked.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed();
        let sender = tokio::spawn(async move {
            for piece in [&b"ab"[..], b"", b"cde"] {
                tx.send(Ok(Frame::data(Bytes::from_static(piece))))
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        call(&up, request(&p, Method::POST, "/b", body))
            .await
            .unwrap()
            .2
            .unwrap();
        sender.await.unwrap();
        // A declared length is kept.
        let mut req = request(
            &p,
            Method::PUT,
            "/c",
            crate::proxy::full(Bytes::from_static(b"xyz")),
        );
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(3));
        call(&up, req).await.unwrap().2.unwrap();
        let seen: Vec<String> = p
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8(r.clone()).unwrap())
            .collect();
        assert!(seen[0].starts_with("POST /a HTTP/1.1\r\n"));
        assert!(
            seen[0].contains("content-length: 7\r\n") && seen[0].ends_with("\r\n\r\n{\"x\":1}")
        );
        assert!(seen[1].contains("transfer-encoding: chunked\r\n"));
        assert!(
            seen[1].ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{:?}",
            seen[1]
        );
        assert!(seen[2].contains("content-length: 3\r\n") && seen[2].ends_with("xyz"));
        assert_eq!(p.accepted.load(Ordering::SeqCst), 1);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_request_without_host_gets_one_from_its_uri() {
        let p = provider(vec![ok()]).await;
        let mut req = Request::new(crate::proxy::full(Bytes::new()));
        *req.uri_mut() = format!("http://user:pw@{}/h", p.addr).parse().unwrap();
        call(&upstream(), req).await.unwrap().2.unwrap();
        let seen = String::from_utf8(p.requests.lock().unwrap()[0].clone()).unwrap();
        assert!(seen.contains(&format!("host: {}\r\n", p.addr)), "{seen}");
        assert!(!seen.contains("user"), "{seen}");
    }

    #[tokio::test]
    async fn a_body_that_disagrees_with_its_content_length_is_refused() {
        let p = provider(vec![ok()]).await;
        let up = upstream();
        for (declared, body) in [(5, &b"abc"[..]), (2, b"abc")] {
            let mut req = request(
                &p,
                Method::POST,
                "/",
                crate::proxy::full(Bytes::from_static(body)),
            );
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
            let err = call(&up, req).await.unwrap_err();
            assert!(err.contains("Content-Length"), "{err}");
        }
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_upload_was_read_is_relayed() {
        let p = provider(vec![Reply::EarlyAndClose(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig",
        )])
        .await;
        let up = upstream();
        // 8 MB in 64 KiB frames: far more than the socket buffers hold.
        let frames =
            (0..128).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 65536]))));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let (status, _, body) = call(&up, request(&p, Method::POST, "/upload", body))
            .await
            .unwrap();
        assert_eq!(status, 413);
        assert_eq!(body.unwrap(), b"big");
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_upload_even_when_the_provider_keeps_the_connection() {
        const EARLY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nslow";
        let p = provider(vec![Reply::EarlyAndStall(EARLY)]).await;
        let up = upstream();
        let within = |f| tokio::time::timeout(std::time::Duration::from_secs(5), f);
        // A provider that stopped reading: 8 MB can never be written.
        let frames =
            (0..128).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 65536]))));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let (status, _, body) = within(call(&up, request(&p, Method::POST, "/big", body)))
            .await
            .expect("answered while the upload was blocked")
            .unwrap();
        assert_eq!(
            (status, body.unwrap()),
            (StatusCode::TOO_MANY_REQUESTS, b"slow".to_vec())
        );
        // A client still uploading (its body never ends): answered anyway.
        let first = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
            Bytes::from_static(b"{\"partial\":"),
        ))]);
        let body = http_body_util::StreamBody::new(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ));
        let (status, _, body) = within(call(&up, request(&p, Method::POST, "/slow", body.boxed())))
            .await
            .expect("answered while the client was still uploading")
            .unwrap();
        assert_eq!(
            (status, body.unwrap()),
            (StatusCode::TOO_MANY_REQUESTS, b"slow".to_vec())
        );
        // Neither connection is reused: the provider never read those bodies.
        call(&up, get(&p)).await.unwrap().2.unwrap();
        assert_eq!(p.accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn content_lengths_are_plain_digits_that_fit() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"007"), Some(7));
        assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1e3",
            b"0x10",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A body of unknown size that is over after its one frame.
    struct OneFrame(Option<Bytes>);

    impl Body for OneFrame {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    #[tokio::test]
    async fn a_chunked_body_that_ends_with_its_first_frame_ends_after_it() {
        let p = provider(vec![ok()]).await;
        let up = upstream();
        // Small (copied into the head), medium (written with the head) and
        // large (written after it).
        for size in [100usize, 20_000, 100_000] {
            let body = OneFrame(Some(Bytes::from(vec![b'y'; size]))).boxed();
            call(&up, request(&p, Method::POST, "/one", body))
                .await
                .unwrap()
                .2
                .unwrap();
        }
        let seen = p.requests.lock().unwrap().clone();
        for (req, size) in seen.iter().zip([100usize, 20_000, 100_000]) {
            let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&req[..head_end]);
            assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
            let mut expected = format!("{size:X}\r\n").into_bytes();
            expected.extend(std::iter::repeat_n(b'y', size));
            expected.extend_from_slice(b"\r\n0\r\n\r\n");
            assert!(
                req[head_end..] == expected[..],
                "size {size}: wrong body framing"
            );
        }
        assert_eq!(p.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_body_error_is_reported_as_such() {
        let p = provider(vec![ok()]).await;
        let up = upstream();
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err("client went away".into()),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let err = call(&up, request(&p, Method::POST, "/", body))
            .await
            .unwrap_err();
        assert!(err.contains("client went away"), "{err}");
    }

    /// A provider on TLS (the test CA in `testdata/tls`, ALPN `http/1.1`
    /// only) answering every request with a chunked body; `close` sends a
    /// TLS close_notify and closes after each answer.
    async fn tls_provider(close: bool) -> (u16, Arc<AtomicUsize>) {
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
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut s = acceptor.accept(tcp).await.unwrap();
                    let mut buf = Vec::new();
                    while read_request(&mut s, &mut buf, false).await.is_some() {
                        s.write_all(
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n, tls!\r\n0\r\n\r\n",
                        )
                        .await
                        .unwrap();
                        if close {
                            s.shutdown().await.unwrap();
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    /// An `Upstream` trusting the test CA through `upstream.ca_file`.
    fn tls_upstream() -> Upstream {
        let settings = UpstreamSettings {
            ca_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tls/ca.pem").into()),
            ..UpstreamSettings::default()
        };
        Upstream::new(&settings, 1)
    }

    fn tls_get(port: u16) -> Request<RelayBody> {
        let mut req = Request::new(crate::proxy::full(Bytes::new()));
        *req.uri_mut() = format!("https://localhost:{port}/v1/models")
            .parse()
            .unwrap();
        req.headers_mut()
            .insert(header::HOST, format!("localhost:{port}").parse().unwrap());
        req
    }

    #[tokio::test]
    async fn over_tls_a_connection_is_reused_and_a_close_notify_is_noticed() {
        let up = tls_upstream();
        let (port, accepted) = tls_provider(false).await;
        for _ in 0..3 {
            let (status, _, body) = call(&up, tls_get(port)).await.unwrap();
            assert_eq!(
                (status.as_u16(), body.unwrap()),
                (200, b"hello, tls!".to_vec())
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one TLS connection for all"
        );

        let (port, accepted) = tls_provider(true).await;
        for _ in 0..3 {
            let (_, _, body) = call(&up, tls_get(port)).await.unwrap();
            assert_eq!(body.unwrap(), b"hello, tls!");
            // Let the close_notify arrive: the checkout must see it.
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn without_ca_file_a_private_ca_is_not_trusted() {
        let up = Upstream::new(&UpstreamSettings::default(), 1);
        let (port, _) = tls_provider(false).await;
        let err = call(&up, tls_get(port))
            .await
            .expect_err("handshake must fail");
        assert!(
            format!("{err:?}").contains("UnknownIssuer"),
            "a certificate error, not something else: {err:?}"
        );
    }
}
