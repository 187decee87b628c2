//! Forwarding: build the upstream request, send it on a pooled client, and
//! stream the answer back.
//!
//! Bodies are never collected in this path, with one bounded exception: a
//! token that enforces `model`/`models` needs the JSON `model` field, so that
//! body is read up to `server.max_parsed_body_bytes` and re-serialised.
//! Streams are wrapped in [`IdleTimeout`], which cuts only *silence* longer
//! than `upstream.idle_timeout` — never a long stream that keeps talking.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use relayapi_token::Claims;
use smallvec::SmallVec;

use crate::auth::CREDENTIAL_HEADERS;
use crate::config::UpstreamSettings;
use crate::error::ApiError;
use crate::providers::Provider;
use crate::upstream::{Upstream, UpstreamBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type both directions use.
pub type RelayBody = BoxBody<Bytes, BoxError>;
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, RelayBody>;

/// The HTTP(S) connector every upstream connection uses: rustls (ring)
/// with webpki roots (plus `upstream.ca_file`'s certificates), ALPN `h2`
/// and `http/1.1`, TCP_NODELAY and keep-alive.
pub fn https_connector(settings: &UpstreamSettings) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &settings.ca_file {
        // Validated with the config; a file that broke since then leaves
        // only the built-in roots (TLS to the private CA's servers fails).
        match extra_roots(path) {
            Ok(extra) => roots.roots.extend(extra.roots),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "ca_file not loaded; only the built-in roots are trusted")
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions();
    let tls = match builder {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The ring provider always supports the safe defaults; keep a sane
        // fallback instead of a panic anyway.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    };
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// The CA certificates of the PEM file `path` (`upstream.ca_file`), as trust
/// anchors. Errors say what is wrong with the file, for the config message.
pub fn extra_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
        roots.add(cert).map_err(|e| {
            format!(
                "{} holds a certificate rustls cannot use: {e}",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", path.display()));
    }
    Ok(roots)
}

/// A pooled HTTP/1.1 + HTTP/2 client for the relay's own outgoing calls
/// (webhook sink, CLI); the request path uses [`crate::upstream::Upstream`].
pub fn build_client(settings: &UpstreamSettings) -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(https_connector(settings))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1); the names listed in `Connection`
/// are hop-by-hop too.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// Removes every header for which `drop` is true, and the names listed in
/// `Connection`. One scan over the (few) headers present, then removals of
/// only what is there: cheaper than removing each unwanted name by lookup.
fn filter_headers(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    // On the stack: a request drops one or two headers (its `Origin`, a
    // client's `Authorization`), and this runs twice per call.
    let mut doomed: SmallVec<[HeaderName; 4]> = SmallVec::new();
    for listed in headers.get_all(header::CONNECTION) {
        for name in listed.to_str().unwrap_or_default().split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in headers.keys() {
        if drop(name.as_str()) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Prepares the client's headers for the provider: hop-by-hop and every
/// client credential removed, browser context (cookies, origin, forwarding
/// chain) dropped, the provider's credential and default headers added.
pub fn upstream_headers(
    mut headers: HeaderMap,
    provider: &Provider,
    auth: HeaderValue,
) -> HeaderMap {
    // The provider's own Host replaces the client's below (no removal needed).
    let host_replaced = provider.host.is_some();
    filter_headers(&mut headers, |name| {
        is_hop_by_hop(name)
            || CREDENTIAL_HEADERS.contains(&name)
            || (name == "host" && !host_replaced)
            || matches!(
                name,
                "cookie" | "origin" | "referer" | "forwarded" | "x-real-ip"
            )
            // the whole forwarding family: -for, -host, -proto, -port,
            // -prefix, -server, -ssl, -client-ip…
            || name.starts_with("x-forwarded-")
    });
    headers.insert(provider.auth.header_name(), auth);
    if let Some(host) = &provider.host {
        headers.insert(header::HOST, host.clone());
    }
    for (name, value) in &provider.default_headers {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    headers
}

/// Prepares the provider's headers for the client: hop-by-hop removed;
/// cookies for the provider's domain mean nothing on the relay's, and the
/// relay answers CORS itself.
pub fn downstream_headers(headers: &mut HeaderMap) {
    filter_headers(headers, |name| {
        is_hop_by_hop(name) || name == "set-cookie" || name.starts_with("access-control-")
    });
}

/// What a token demands of the request's model.
pub fn needs_model_policy(claims: &Claims) -> bool {
    claims.models.is_some() || claims.effective_model().is_some()
}

/// Checks `models` and applies a forced `model`, wherever the provider
/// reads the model: the JSON body's `model`, a Gemini-style
/// `models/<name>:method` path segment, and an Azure `deployments/<name>/`
/// path. Returns the new path and body. A `model` query parameter (OpenAI's
/// realtime endpoints read one) is checked like the others and, as the
/// relay does not rewrite queries, refused under a forced model it differs
/// from.
///
/// Fail closed: with `models`, every model the request names must be in the
/// list, and a request that generates (any method but GET, HEAD, DELETE)
/// must name one — otherwise the provider would pick its own default. A
/// non-string `model` or an empty body where one is needed is
/// `invalid_body`. A `multipart/form-data` body (audio transcriptions,
/// image edits) is checked by its `model` field, read strictly
/// ([`crate::policy::multipart`]). (`rest` is already normalised when it
/// held escapes or dot segments, see `policy::check_scope`.)
pub fn apply_model_policy(
    claims: &Claims,
    method: &http::Method,
    rest: &str,
    query: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<(String, Option<Bytes>), ApiError> {
    use crate::policy::multipart;
    let forced = claims.effective_model();
    let forced = forced.as_deref();
    let query_models = query_models(query);
    if let Some(model) = forced {
        if query_models.iter().any(|m| m != model) {
            return Err(ApiError::ModelNotAllowed);
        }
    }
    let reads_only = matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::DELETE
    );
    let mut json: Option<serde_json::Map<String, serde_json::Value>> = None;
    // A form: its boundary and where its `model` value is.
    let mut form: Option<(&str, Option<multipart::ModelField>)> = None;
    match content_type.and_then(multipart::form_boundary) {
        Some(boundary) => {
            let boundary = boundary.map_err(|_| ApiError::InvalidBody)?;
            let found = multipart::find_model(body, boundary).map_err(|_| ApiError::InvalidBody)?;
            form = Some((boundary, found));
        }
        None if !body.is_empty() => match serde_json::from_slice::<SingleModelObject>(body) {
            Ok(SingleModelObject(m)) => json = Some(m),
            // A non-object body, or one naming `model` twice (which one a
            // provider reads is its parser's choice), cannot be checked.
            Err(_) => return Err(ApiError::InvalidBody),
        },
        None => {}
    }
    let path_model = path_model_span(rest);
    let body_model = match (json.as_ref().and_then(|m| m.get("model")), &form) {
        (Some(serde_json::Value::String(m)), _) => Some(m.clone()),
        (Some(_), _) => return Err(ApiError::InvalidBody),
        // `find_model` checked that the value is UTF-8.
        (None, Some((_, Some(field)))) => std::str::from_utf8(&body[field.value.clone()])
            .map(str::to_owned)
            .ok(),
        (None, _) => None,
    };
    if json.is_none() && form.is_none() && path_model.is_none() && !reads_only {
        // Nothing to check or to rewrite, yet the call may generate.
        return Err(ApiError::InvalidBody);
    }

    let mut new_rest = rest.to_string();
    let mut new_body = None;
    match forced {
        Some(model) => {
            if let Some(m) = json.as_mut() {
                if body_model.is_some() || path_model.is_none() {
                    m.insert("model".into(), serde_json::Value::String(model.to_string()));
                    new_body = Some(Bytes::from(
                        serde_json::to_vec(m).map_err(|_| ApiError::Internal)?,
                    ));
                }
            }
            if let Some((boundary, found)) = form {
                if found.is_some() || path_model.is_none() {
                    new_body = Some(Bytes::from(multipart::with_model(
                        body, boundary, found, model,
                    )));
                }
            }
            if let Some((s, e)) = path_model {
                new_rest = format!("{}{}{}", &rest[..s], model, &rest[e..]);
            }
        }
        None => {
            if let Some(allowed) = &claims.models {
                let named = [body_model.as_deref(), path_model.map(|(s, e)| &rest[s..e])];
                let allowed_model = |m: &str| allowed.iter().any(|a| a == m);
                let mut all_named = named
                    .iter()
                    .flatten()
                    .copied()
                    .chain(query_models.iter().map(String::as_str));
                if all_named.any(|m| !allowed_model(m)) {
                    return Err(ApiError::ModelNotAllowed);
                }
                if !reads_only && named.iter().all(Option::is_none) && query_models.is_empty() {
                    return Err(ApiError::ModelNotAllowed);
                }
            }
        }
    }
    Ok((new_rest, new_body))
}

/// A JSON object whose top level names `model` at most once; other
/// duplicate members keep the last value, as `serde_json::Value` does.
struct SingleModelObject(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for SingleModelObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = SingleModelObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SingleModelObject, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if k == "model" && out.contains_key("model") {
                        return Err(serde::de::Error::custom("`model` named twice"));
                    }
                    out.insert(k, v);
                }
                Ok(SingleModelObject(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// The values of `model` query parameters, percent-decoded (lossily: a
/// value that is not UTF-8 then matches no allowed model).
fn query_models(query: &str) -> Vec<String> {
    query_values(query, "model").collect()
}

/// The values of query parameter `name`, decoded as browsers and HTTP
/// libraries encode forms (`+` is a space, then percent escapes).
pub fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    let decode = |raw: &str| {
        percent_encoding::percent_decode_str(&raw.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query.split('&').filter_map(move |pair| {
        let (n, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(n) == name).then(|| decode(value))
    })
}

/// The model the path names (see [`path_model_span`]), for the log.
pub fn path_model(rest: &str) -> Option<&str> {
    path_model_span(rest).map(|(s, e)| &rest[s..e])
}

/// The byte span of the model named by the path: `<model>` in
/// `…/models/<model>:generateContent` (Gemini) or `models/<model>` (a model
/// lookup), or the deployment in `deployments/<name>/…` (Azure runs the
/// deployment, whatever the body says).
fn path_model_span(rest: &str) -> Option<(usize, usize)> {
    let start = if let Some(tail) = rest.strip_prefix("deployments/") {
        rest.len() - tail.len()
    } else {
        let at = rest
            .match_indices("models/")
            .find(|(i, _)| *i == 0 || rest.as_bytes()[i - 1] == b'/')?
            .0;
        at + "models/".len()
    };
    let tail = &rest[start..];
    let end = tail.find([':', '/']).unwrap_or(tail.len());
    (end > 0).then_some((start, start + end))
}

/// Reads a body for the model policy, refusing more than `cap` bytes.
pub async fn read_capped(mut body: RelayBody, cap: usize) -> Result<Bytes, ApiError> {
    // A plain frame loop rather than `http_body_util::Limited`, whose error
    // conversion defeats `Send` inference for the request future.
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<IdleElapsed>() {
                ApiError::RequestTimeout
            } else {
                ApiError::InvalidBody
            }
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > cap {
                return Err(ApiError::PayloadTooLarge);
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

pub fn full(bytes: Bytes) -> RelayBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Maps a client error to our answer: timeouts are 504, everything else 502
/// — unless it was the request body, read from our own client, that went
/// silent (408: the provider was waiting for it).
pub fn classify_upstream_error(e: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<IdleElapsed>() {
            return ApiError::RequestTimeout;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ApiError::UpstreamTimeout;
            }
        }
        source = s.source();
    }
    ApiError::UpstreamUnreachable
}

pin_project_lite::pin_project! {
    /// A body that fails when no frame arrives for `idle`.
    ///
    /// Cheap per frame: a frame only records the time. The timer is created
    /// the first time the inner body has nothing to give (a body that is
    /// ready at once, like most non-streaming answers, never touches the
    /// timer wheel) and is not moved on every frame: when it fires early
    /// because frames arrived meanwhile, it is re-armed for `idle` after the
    /// last one. The cut therefore happens exactly `idle` after the last frame
    /// (before the first frame: after the relay first waited for one, so a
    /// body read at once never even reads the clock).
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        // The last frame's arrival, or when the wait for the first began.
        last_frame: Option<tokio::time::Instant>,
        idle: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            sleep: None,
            last_frame: None,
            idle,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no data for longer than the idle timeout")]
pub struct IdleElapsed;

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.last_frame.is_some() {
                    *this.last_frame = Some(tokio::time::Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let last = *this
                    .last_frame
                    .get_or_insert_with(tokio::time::Instant::now);
                let deadline = last + *this.idle;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                loop {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Fired. Frames since it was armed moved the deadline.
                    let deadline = this.last_frame.unwrap_or(last) + *this.idle;
                    if tokio::time::Instant::now() >= deadline {
                        return Poll::Ready(Some(Err(Box::new(IdleElapsed))));
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Runs `on_finish` exactly once when the body ends, fails, or is dropped
    /// (client gone) — the hook for accounting and logs.
    pub struct Finish<B, F: FnOnce(FinishReason)> {
        #[pin]
        inner: B,
        on_finish: Option<F>,
        bytes: u64,
    }
    impl<B, F: FnOnce(FinishReason)> PinnedDrop for Finish<B, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_finish.take() {
                f(FinishReason::ClientGone { bytes: *this.bytes });
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Complete { bytes: u64 },
    UpstreamError { bytes: u64 },
    ClientGone { bytes: u64 },
}

impl<B, F: FnOnce(FinishReason)> Finish<B, F> {
    pub fn new(inner: B, on_finish: F) -> Self {
        Self {
            inner,
            on_finish: Some(on_finish),
            bytes: 0,
        }
    }
}

impl<B, F> Body for Finish<B, F>
where
    B: Body<Data = Bytes, Error = BoxError>,
    F: FnOnce(FinishReason),
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                // hyper stops polling a body that says it has ended (e.g. its
                // Content-Length is reached) and just drops it: that is a
                // completion, not a client that went away.
                if this.inner.is_end_stream() {
                    if let Some(f) = this.on_finish.take() {
                        f(FinishReason::Complete { bytes: *this.bytes });
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.on_finish.take() {
                    f(FinishReason::UpstreamError { bytes: *this.bytes });
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.on_finish.take() {
                    f(FinishReason::Complete { bytes: *this.bytes });
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends `req` and waits for the response head at most `first_byte`.
/// `Host` is already set ([`upstream_headers`]), or derived by the HTTP/1
/// client for a base URL with user info.
pub async fn send(
    upstream: &Upstream,
    req: http::Request<RelayBody>,
    first_byte: Duration,
) -> Result<http::Response<UpstreamBody>, ApiError> {
    match crate::timer::timeout(first_byte, upstream.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream request failed");
            Err(classify_upstream_error(e.as_ref()))
        }
        Err(_) => Err(ApiError::UpstreamTimeout),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::providers::Registry;

    /// A body giving one frame after each of `gaps`, then ending.
    fn paced(gaps: &[u64]) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let gaps: Vec<u64> = gaps.to_vec();
        let frames = futures_util::stream::unfold(gaps.into_iter(), |mut gaps| async move {
            let gap = gaps.next()?;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), gaps))
        });
        http_body_util::StreamBody::new(frames)
    }

    /// Frames until the end or the first error; the error's time since start.
    async fn drain(body: impl Body<Data = Bytes, Error = BoxError>) -> (usize, Option<Duration>) {
        let started = std::time::Instant::now();
        let mut body = std::pin::pin!(body);
        let mut frames = 0;
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            match frame {
                Ok(_) => frames += 1,
                Err(e) => {
                    assert!(e.is::<IdleElapsed>(), "{e}");
                    return (frames, Some(started.elapsed()));
                }
            }
        }
        (frames, None)
    }

    #[tokio::test]
    async fn idle_timeout_cuts_only_silence_longer_than_idle() {
        let idle = Duration::from_millis(150);
        // Ready at once, and steady frames closer than `idle`: never cut.
        assert_eq!(
            drain(IdleTimeout::new(paced(&[0, 0, 0]), idle)).await,
            (3, None)
        );
        assert_eq!(
            drain(IdleTimeout::new(paced(&[60, 60, 60, 60, 60]), idle)).await,
            (5, None)
        );
        // Silent from the start: cut after `idle`.
        let (frames, cut) = drain(IdleTimeout::new(paced(&[1000]), idle)).await;
        assert_eq!(frames, 0);
        let cut = cut.unwrap();
        assert!(cut >= idle && cut < idle * 4, "{cut:?}");
        // Two frames, then silence: cut `idle` after the last one.
        let (frames, cut) = drain(IdleTimeout::new(paced(&[100, 100, 1000]), idle)).await;
        assert_eq!(frames, 2);
        let cut = cut.unwrap();
        assert!(
            cut >= Duration::from_millis(200) + idle && cut < Duration::from_millis(700),
            "{cut:?}"
        );
    }

    fn claims(json: &str) -> Claims {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        let m = v.as_object_mut().unwrap();
        m.insert("jti".into(), "AAAAAAAAAAAAAAAAAAAAAA".into());
        m.insert("iat".into(), 1.into());
        m.insert("exp".into(), 2.into());
        m.insert("provider".into(), "openai".into());
        m.insert("api_key".into(), "sk-x".into());
        Claims::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn auth(provider: Option<&std::sync::Arc<Provider>>, key: &str) -> HeaderValue {
        provider.unwrap().auth.header_value(key).unwrap()
    }

    #[test]
    fn credentials_and_hop_by_hop_never_forwarded() {
        let reg = Registry::new(&Default::default());
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("x-goog-api-key", "client"),
            ("api-key", "client"),
            ("cookie", "a=b"),
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("anthropic-version", "2024-01-01"),
            ("openai-beta", "assistants=v2"),
            ("host", "relay.example.com"),
            ("forwarded", "for=192.0.2.7"),
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/app"),
            ("x-forwarded-client-ip", "192.0.2.7"),
            ("x-real-ip", "192.0.2.7"),
        ] {
            h.insert(HeaderName::from_static(k), v.parse().unwrap());
        }
        h.append(header::HOST, "second.example.com".parse().unwrap());
        let out = upstream_headers(
            h.clone(),
            reg.get("anthropic").unwrap(),
            auth(reg.get("anthropic"), "sk-real"),
        );
        // The provider's Host, once, whatever the client sent.
        let hosts: Vec<_> = out.get_all(header::HOST).iter().collect();
        assert_eq!(hosts, ["api.anthropic.com"]);
        assert_eq!(out.get("x-api-key").unwrap(), "sk-real");
        assert!(out.get("authorization").is_none());
        assert!(out.get("cookie").is_none() && out.get("x-secret-hop").is_none());
        assert!(out.get("keep-alive").is_none() && out.get("connection").is_none());
        for forwarding in ["forwarded", "x-real-ip"] {
            assert!(out.get(forwarding).is_none(), "{forwarding}");
        }
        assert!(!out.keys().any(|k| k.as_str().starts_with("x-forwarded-")));
        // The client's own provider header wins over the registry default.
        assert_eq!(out.get("anthropic-version").unwrap(), "2024-01-01");
        assert_eq!(out.get("openai-beta").unwrap(), "assistants=v2");

        let out = upstream_headers(
            h,
            reg.get("openai").unwrap(),
            auth(reg.get("openai"), "sk-real"),
        );
        assert_eq!(out.get("authorization").unwrap(), "Bearer sk-real");
        assert!(out.get("x-api-key").is_none() && out.get("api-key").is_none());
        assert!(format!("{out:?}").contains("Sensitive"));
    }

    #[test]
    fn default_header_added_when_absent() {
        let reg = Registry::new(&Default::default());
        let out = upstream_headers(
            HeaderMap::new(),
            reg.get("anthropic").unwrap(),
            auth(reg.get("anthropic"), "k"),
        );
        assert_eq!(out.get("anthropic-version").unwrap(), "2023-06-01");
    }

    fn post(c: &Claims, rest: &str, body: &[u8]) -> Result<(String, Option<Bytes>), ApiError> {
        apply_model_policy(c, &http::Method::POST, rest, "", body, None)
    }

    /// A transcription form as the SDKs write it: the file, then `model`.
    fn transcription_form(model: Option<&str>) -> Vec<u8> {
        let mut body = String::from(
            "--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n",
        );
        if let Some(m) = model {
            body.push_str(&format!(
                "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{m}\r\n"
            ));
        }
        body.push_str("--b0undary--\r\n");
        body.into_bytes()
    }

    fn post_form(c: &Claims, body: &[u8]) -> Result<(String, Option<Bytes>), ApiError> {
        let ct = Some("multipart/form-data; boundary=b0undary");
        apply_model_policy(c, &http::Method::POST, "audio/transcriptions", "", body, ct)
    }

    #[test]
    fn a_form_is_checked_and_rewritten_by_its_model_field() {
        let listed = claims(r#"{"models":["whisper-1"]}"#);
        assert!(post_form(&listed, &transcription_form(Some("whisper-1"))).is_ok());
        assert_eq!(
            post_form(&listed, &transcription_form(Some("gpt-4o-transcribe"))).unwrap_err(),
            ApiError::ModelNotAllowed
        );
        // No model named: the provider would choose.
        assert_eq!(
            post_form(&listed, &transcription_form(None)).unwrap_err(),
            ApiError::ModelNotAllowed
        );
        // Unreadable alike by every parser: refused, as a bad JSON body is.
        let twice = String::from_utf8(transcription_form(Some("whisper-1")))
            .unwrap()
            .replace(
                "--b0undary--",
                "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx\r\n--b0undary--",
            );
        assert_eq!(
            post_form(&listed, twice.as_bytes()).unwrap_err(),
            ApiError::InvalidBody
        );
        let bad_boundary = apply_model_policy(
            &listed,
            &http::Method::POST,
            "audio/transcriptions",
            "",
            &transcription_form(Some("whisper-1")),
            Some("multipart/form-data"),
        );
        assert_eq!(bad_boundary.unwrap_err(), ApiError::InvalidBody);
        // A form sent as JSON is no JSON object.
        let as_json = apply_model_policy(
            &listed,
            &http::Method::POST,
            "audio/transcriptions",
            "",
            &transcription_form(Some("whisper-1")),
            Some("application/json"),
        );
        assert_eq!(as_json.unwrap_err(), ApiError::InvalidBody);

        let forced = claims(r#"{"model":"whisper-1"}"#);
        let (_, body) = post_form(&forced, &transcription_form(Some("gpt-4o-transcribe"))).unwrap();
        assert_eq!(body.unwrap(), transcription_form(Some("whisper-1")));
        let original = transcription_form(None);
        let (_, body) = post_form(&forced, &original).unwrap();
        let body = body.unwrap();
        let field = crate::policy::multipart::find_model(&body, "b0undary")
            .unwrap()
            .unwrap();
        assert_eq!(&body[field.value], b"whisper-1");
        assert!(body.ends_with(&original));
    }

    #[test]
    fn models_allow_list() {
        let c = claims(r#"{"models":["a","b"]}"#);
        assert!(post(&c, "chat/completions", br#"{"model":"a"}"#).is_ok());
        assert!(post(&c, "v1beta/models/b:generateContent", b"{}").is_ok());
        assert!(post(&c, "deployments/a/chat/completions", br#"{"n":1}"#).is_ok());
        // Listing and looking up models generate nothing.
        assert!(apply_model_policy(&c, &http::Method::GET, "models", "", b"", None).is_ok());
        let refused = [
            (
                "chat/completions",
                &br#"{"model":"c"}"#[..],
                ApiError::ModelNotAllowed,
            ),
            (
                "v1beta/models/c:generateContent",
                b"{}",
                ApiError::ModelNotAllowed,
            ),
            // Gemini and Azure run the path's model, whatever the body says.
            (
                "v1beta/models/c:generateContent",
                br#"{"model":"a"}"#,
                ApiError::ModelNotAllowed,
            ),
            (
                "deployments/c/chat/completions",
                br#"{"model":"a"}"#,
                ApiError::ModelNotAllowed,
            ),
            // A model that is no plain name is still a model.
            (
                "v1beta/models/a%3Ax:generateContent",
                b"{}",
                ApiError::ModelNotAllowed,
            ),
            // A generating call must name a model: the provider's default
            // is not in the list.
            (
                "chat/completions",
                br#"{"messages":[]}"#,
                ApiError::ModelNotAllowed,
            ),
            (
                "chat/completions",
                br#"{"model":["c"]}"#,
                ApiError::InvalidBody,
            ),
            ("chat/completions", b"", ApiError::InvalidBody),
            ("chat/completions", b"[1]", ApiError::InvalidBody),
        ];
        for (rest, body, want) in refused {
            assert_eq!(
                post(&c, rest, body).unwrap_err(),
                want,
                "{rest} {}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            apply_model_policy(&c, &http::Method::GET, "models/c", "", b"", None).unwrap_err(),
            ApiError::ModelNotAllowed
        );
    }

    #[test]
    fn forced_model_rewrites_body_and_path() {
        let c = claims(r#"{"model":"forced"}"#);
        let (_, body) = post(&c, "chat/completions", br#"{"model":"x","n":1}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(v["model"], "forced");
        assert_eq!(v["n"], 1);
        let (path, _) = post(&c, "v1beta/models/gemini-x:generateContent", b"{}").unwrap();
        assert_eq!(path, "v1beta/models/forced:generateContent");
        let (path, _) = post(&c, "deployments/gpt-x/chat/completions", b"{}").unwrap();
        assert_eq!(path, "deployments/forced/chat/completions");
        // A body without a model gets the forced one.
        let (_, body) = post(&c, "chat/completions", br#"{"n":1}"#).unwrap();
        assert!(String::from_utf8(body.unwrap().to_vec())
            .unwrap()
            .contains(r#""model":"forced""#));
        let c = claims(r#"{"ext_info":"{\"rep_m\":\"legacy\"}"}"#);
        let (_, body) = post(&c, "chat/completions", br#"{"model":"x"}"#).unwrap();
        assert!(String::from_utf8(body.unwrap().to_vec())
            .unwrap()
            .contains("legacy"));
    }

    /// A `rep_m` written with JSON escapes (PHP's `\/`, Python's `\u00e8`)
    /// or named twice was no model to the relay, which then let the token
    /// call any model while every SDK reported one.
    #[test]
    fn an_escaped_or_repeated_rep_m_still_forces_the_model() {
        for (ext, want) in [
            (r#"{"rep_m":"meta-llama\/Llama-3"}"#, "meta-llama/Llama-3"),
            (r#"{"rep_m": "mod\u00e8le"}"#, "modèle"),
            (r#"{"rep_m":"first","rep_m":"last"}"#, "last"),
        ] {
            let c = Claims::new("openai", "sk-x", 600, 0).with_ext_info(ext);
            assert!(needs_model_policy(&c), "{ext}");
            let (_, body) = post(&c, "chat/completions", br#"{"model":"other"}"#).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
            assert_eq!(v["model"], want, "{ext}");
            let (path, _) = post(&c, "v1beta/models/other:generateContent", b"{}").unwrap();
            assert_eq!(path, format!("v1beta/models/{want}:generateContent"));
            assert_eq!(
                apply_model_policy(&c, &http::Method::GET, "realtime", "model=other", b"", None)
                    .unwrap_err(),
                ApiError::ModelNotAllowed,
                "{ext}"
            );
        }
    }

    #[test]
    fn a_body_naming_model_twice_is_refused() {
        let listed = claims(r#"{"models":["a"]}"#);
        let forced = claims(r#"{"model":"a"}"#);
        for c in [&listed, &forced] {
            for body in [
                &br#"{"model":"a","model":"b"}"#[..],
                br#"{"model":"b","messages":[],"model":"a"}"#,
            ] {
                assert_eq!(
                    post(c, "chat/completions", body).unwrap_err(),
                    ApiError::InvalidBody
                );
            }
        }
        // Other duplicates, and a nested `model`, are the provider's business.
        assert!(post(&listed, "chat/completions", br#"{"model":"a","n":1,"n":2}"#).is_ok());
        assert!(post(
            &listed,
            "chat/completions",
            br#"{"model":"a","x":{"model":"b"}}"#
        )
        .is_ok());
    }

    #[test]
    fn a_model_query_parameter_is_checked_too() {
        let get = |c: &Claims, query: &str| {
            apply_model_policy(c, &http::Method::GET, "realtime", query, b"", None)
        };
        let listed = claims(r#"{"models":["a"]}"#);
        assert!(get(&listed, "model=a").is_ok());
        assert!(get(&listed, "x=1&model=%61").is_ok());
        for query in ["model=b", "model=a&model=b", "model=%FF", "mode%6C=b"] {
            assert_eq!(
                get(&listed, query).unwrap_err(),
                ApiError::ModelNotAllowed,
                "{query}"
            );
        }
        // Naming a model in the query is naming one for a generating call.
        let call = |q: &str| {
            apply_model_policy(
                &listed,
                &http::Method::POST,
                "realtime/calls",
                q,
                b"{}",
                None,
            )
        };
        assert!(call("model=a").is_ok());
        assert_eq!(call("").unwrap_err(), ApiError::ModelNotAllowed);
        // Queries are not rewritten: a different model is refused.
        let forced = claims(r#"{"model":"f"}"#);
        assert!(get(&forced, "model=f").is_ok());
        assert!(get(&forced, "other=1").is_ok());
        assert_eq!(
            get(&forced, "model=g").unwrap_err(),
            ApiError::ModelNotAllowed
        );
    }
}
