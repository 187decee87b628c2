//! Building one [`LogRecord`] per request from the request path.
//!
//! [`RequestLog`] is started when a request arrives and filled in step by
//! step (token, provider, statuses); it ends in exactly one record, either
//! at once (the relay answered itself) or from the response body's finish
//! hook (success, provider error mid-stream, or client gone), or from the
//! request path's drop guard (`http::PendingLog`: the request was dropped
//! before any answer). Bodies are
//! observed by [`Tapped`] wrappers that feed a [`BodyTap`] frame by frame.
//! Secrets (the token, the provider key) are scrubbed from everything text
//! before the record leaves this module.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::record::{CapturedBody, LogRecord};
use super::redact::{self, redact_headers, Scrubber};
use super::tap::{BodyTap, Direction, TapConfig, TapOutcome};

/// A tap shared by a body wrapper and the finish hook.
pub type SharedTap = Arc<Mutex<Option<BodyTap>>>;

/// Settings the request path needs to build records.
#[derive(Debug)]
pub struct RecordSettings {
    pub tap: Arc<TapConfig>,
    /// Also keep (redacted) headers.
    pub bodies: bool,
    pub redact_headers: Vec<String>,
}

/// A record in the making.
#[derive(Debug)]
pub struct RequestLog {
    record: LogRecord,
    start: Instant,
    /// Strings that must never appear in the record (token, provider key).
    secrets: Vec<String>,
    request_tap: Option<SharedTap>,
    /// The request went upstream: `model_sent` is then known.
    forwarded: bool,
}

impl RequestLog {
    /// Starts a record; the path (token removed) is set once the token is located.
    pub fn begin(request_id: &str, method: &str, client_ip: String) -> RequestLog {
        RequestLog {
            record: LogRecord {
                request_id: request_id.to_string(),
                started_at: rfc3339_utc(SystemTime::now()),
                client_ip,
                method: method.to_string(),
                ..LogRecord::default()
            },
            start: Instant::now(),
            secrets: Vec::new(),
            request_tap: None,
            forwarded: false,
        }
    }

    /// The record under construction (fields are set directly).
    pub fn record(&mut self) -> &mut LogRecord {
        &mut self.record
    }

    /// Registers a secret to scrub from every text field, and its copies
    /// with the dots percent-escaped (`%2E`, `%2e`): a client or provider
    /// echoing a token escaped that way would otherwise leave all but its
    /// first segment readable.
    pub fn secret(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if s.contains('.') {
            self.secrets.push(s.replace('.', "%2E"));
            self.secrets.push(s.replace('.', "%2e"));
        }
        self.secrets.push(s.to_string());
    }

    /// The request is about to go upstream; `forced` is the model the
    /// token rewrote it to, if any (otherwise the requested one is sent).
    pub fn forwarding(&mut self, forced: Option<&str>) {
        self.forwarded = true;
        self.record.model_sent = forced.map(str::to_string);
    }

    pub fn mark_ttfb(&mut self) {
        self.record.ttfb_ms = Some(self.start.elapsed().as_millis() as u64);
    }

    /// Keeps the (redacted) request headers, with body logging on; called on
    /// arrival, so a refused request has them too.
    pub fn request_headers(&mut self, settings: &RecordSettings, headers: &HeaderMap) {
        if settings.bodies {
            self.record.request_headers = Some(redact_headers(headers, &settings.redact_headers));
        }
    }

    /// Starts tapping the request body; returns the tap for [`Tapped`].
    pub fn tap_request(&mut self, settings: &RecordSettings, headers: &HeaderMap) -> SharedTap {
        let tap = new_tap(Direction::Request, settings, headers);
        self.request_tap = Some(tap.clone());
        tap
    }

    /// The relay answered itself (a refusal): with body logging on, the
    /// answer's headers and its (small, JSON) body are kept like a
    /// provider's.
    pub fn answered(&mut self, settings: &RecordSettings, headers: &HeaderMap, body: &[u8]) {
        if !settings.bodies {
            return;
        }
        self.record.response_headers = Some(redact_headers(headers, &settings.redact_headers));
        let cap = settings.tap.max_capture_bytes;
        let text = String::from_utf8_lossy(&body[..body.len().min(cap)]).into_owned();
        self.record.response_body = Some(CapturedBody {
            text: Some(text),
            truncated: body.len() > cap,
            ..CapturedBody::default()
        });
    }

    /// Ends the record: `status` the client got, the response tap (if the
    /// provider answered), `bytes_out` delivered, whether the client left.
    pub fn finish(
        mut self,
        status: u16,
        response: Option<TapOutcome>,
        bytes_out: u64,
        client_aborted: bool,
    ) -> LogRecord {
        let r = &mut self.record;
        r.status = status;
        r.duration_ms = self.start.elapsed().as_millis() as u64;
        r.bytes_out = bytes_out;
        r.client_aborted = client_aborted;
        if let Some(tap) = self.request_tap.take().and_then(take_tap) {
            r.bytes_in = tap.bytes_seen();
            let outcome = tap.finish();
            if r.model_requested.is_none() {
                r.model_requested = outcome.model;
            }
            // No byte seen: no body, or refused before it was read.
            r.request_body = outcome.body.filter(|_| r.bytes_in > 0);
        }
        if self.forwarded && r.model_sent.is_none() {
            r.model_sent.clone_from(&r.model_requested);
        }
        if let Some(outcome) = response {
            r.usage = outcome.usage;
            r.stream = outcome.stream;
            r.response_body = outcome.body;
        }
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let scrubber = Scrubber::new(&secrets);
        scrubber.text(&mut r.path);
        scrubber.text(&mut r.query);
        // A client may send anything as its "model" or its request id, the
        // token or the provider key included.
        for model in [&mut r.model_requested, &mut r.model_sent]
            .into_iter()
            .flatten()
        {
            scrubber.text(model);
        }
        if let Some(id) = r.client_request_id.as_mut() {
            scrubber.text(id);
            if redact::looks_like_token(id) {
                *id = redact::REDACTED.to_string();
            }
        }
        redact::token_like_query_values(&mut r.query);
        redact::token_like_path_segments(&mut r.path);
        for body in [&mut r.request_body, &mut r.response_body]
            .into_iter()
            .flatten()
        {
            scrub_body(body, &scrubber);
        }
        for headers in [&mut r.request_headers, &mut r.response_headers]
            .into_iter()
            .flatten()
        {
            for (_, v) in headers.iter_mut() {
                scrubber.text(v);
                if redact::looks_like_token(v) {
                    *v = redact::REDACTED.to_string();
                }
            }
        }
        self.record
    }
}

fn scrub_body(body: &mut CapturedBody, scrubber: &Scrubber<'_>) {
    if let Some(t) = body.text.as_mut() {
        scrubber.text(t);
    }
    for line in &mut body.sse_raw {
        scrubber.text(line);
    }
    // A binary capture is base64 of raw bytes: a secret in it is scrubbed in
    // the bytes (a grep of the record would not find it, a decoder would).
    if let Some(b64) = body.base64.as_mut() {
        use base64::Engine as _;
        let engine = &base64::engine::general_purpose::STANDARD;
        match engine.decode(b64.as_bytes()) {
            Ok(mut raw) => {
                if scrubber.bytes(&mut raw) {
                    *b64 = engine.encode(&raw);
                }
            }
            // The tap wrote it, so this cannot happen; if it did, fail closed.
            Err(_) => body.base64 = None,
        }
    }
}

/// A new shared tap for a body with these headers.
pub fn new_tap(dir: Direction, settings: &RecordSettings, headers: &HeaderMap) -> SharedTap {
    let get = |name: http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    Arc::new(Mutex::new(Some(BodyTap::new(
        dir,
        get(http::header::CONTENT_TYPE),
        get(http::header::CONTENT_ENCODING),
        settings.tap.clone(),
    ))))
}

/// Takes the tap out (once); a poisoned lock still holds a usable tap.
pub fn take_tap(tap: SharedTap) -> Option<BodyTap> {
    tap.lock().unwrap_or_else(|p| p.into_inner()).take()
}

pin_project_lite::pin_project! {
    /// Passes frames through unchanged, showing each data frame to a tap.
    pub struct Tapped<B> {
        #[pin]
        inner: B,
        tap: SharedTap,
    }
}

impl<B> Tapped<B> {
    pub fn new(inner: B, tap: SharedTap) -> Self {
        Tapped { inner, tap }
    }
}

impl<B: Body<Data = Bytes>> Body for Tapped<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if let Some(tap) = this.tap.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    tap.observe(data);
                }
            }
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

/// An IP address as the record shows it (`Display`'s form). IPv4 is
/// written by hand: `to_string` went through `fmt` and was a visible share
/// of a record's cost.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Digits written by hand: `format!` with padding was a visible share of
    // a record's cost (one per request).
    let mut out = [0u8; 24];
    let fields: [(i64, usize); 7] = [
        (year.clamp(0, 9999), 4),
        (month, 2),
        (day, 2),
        (rem / 3600, 2),
        (rem / 60 % 60, 2),
        (rem % 60, 2),
        (i64::from(d.subsec_millis()), 3),
    ];
    let mut at = 0;
    for (i, (value, width)) in fields.into_iter().enumerate() {
        let mut v = value;
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        out[at] = b"--T::.Z"[i];
        at += 1;
    }
    String::from_utf8_lossy(&out[..at]).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "255.9.99.100",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(
            rfc3339_utc(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_164_800_123);
        assert_eq!(rfc3339_utc(t), "2024-02-29T00:00:00.123Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_160_786_789);
        assert_eq!(rfc3339_utc(t), "2026-12-01T21:33:06.789Z");
    }

    fn bodies_on() -> RecordSettings {
        RecordSettings {
            tap: Arc::new(TapConfig {
                capture_bodies: true,
                ..TapConfig::default()
            }),
            bodies: true,
            redact_headers: vec![],
        }
    }

    #[test]
    fn secrets_are_scrubbed_from_every_text_field() {
        let mut log = RequestLog::begin("req_1", "POST", "127.0.0.1".into());
        log.record().path = "/relayapi/TOKEN123/chat".into();
        log.secret("TOKEN123");
        log.secret("sk-live-key");
        log.record().query = "a=TOKEN123".into();
        let settings = bodies_on();
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-note", "contains sk-live-key".parse().unwrap());
        log.request_headers(&settings, &h);
        let tap = log.tap_request(&settings, &h);
        tap.lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .observe(br#"{"model":"m","messages":[{"content":"my key is sk-live-key"}]}"#);
        let rec = log.finish(200, None, 10, false);
        let json = serde_json::to_string(&rec).unwrap();
        assert!(
            !json.contains("TOKEN123") && !json.contains("sk-live-key"),
            "{json}"
        );
        assert_eq!(rec.model_requested.as_deref(), Some("m"));
        assert!(rec.bytes_in > 0);

        // The token sent as the model (it lands in an indexed column).
        let mut log = RequestLog::begin("req_2", "POST", "127.0.0.1".into());
        log.secret("TOKEN123");
        let tap = log.tap_request(&settings, &h);
        tap.lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .observe(br#"{"model":"TOKEN123"}"#);
        let rec = log.finish(200, None, 10, false);
        assert!(!serde_json::to_string(&rec).unwrap().contains("TOKEN123"));
        assert_eq!(rec.model_requested.as_deref(), Some("[REDACTED]"));
        assert_eq!(rec.model_sent, None, "never forwarded");
    }

    #[test]
    fn a_client_request_id_is_no_way_out_for_a_secret() {
        let token = format!("eyJ{}", "A".repeat(60));
        for (id, want) in [
            ("sk-live-key", "[REDACTED]"),
            (&token[..50], "[REDACTED]"),
            ("order-42", "order-42"),
        ] {
            let mut log = RequestLog::begin("req_3", "POST", "127.0.0.1".into());
            log.secret("sk-live-key");
            log.record().client_request_id = Some(id.to_string());
            let rec = log.finish(200, None, 10, false);
            assert_eq!(rec.client_request_id.as_deref(), Some(want), "{id}");
        }
    }

    #[test]
    fn a_body_never_read_is_absent_and_model_sent_follows_forwarding() {
        let settings = bodies_on();
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        // Tapped, then refused before a byte was read (e.g. token_exhausted).
        let mut log = RequestLog::begin("req_1", "POST", "127.0.0.1".into());
        log.tap_request(&settings, &h);
        let rec = log.finish(429, None, 10, false);
        assert!(rec.request_body.is_none(), "{:?}", rec.request_body);

        for (forced, sent) in [(None, "m"), (Some("pinned"), "pinned")] {
            let mut log = RequestLog::begin("req_2", "POST", "127.0.0.1".into());
            let tap = log.tap_request(&settings, &h);
            log.forwarding(forced);
            tap.lock()
                .unwrap()
                .as_mut()
                .unwrap()
                .observe(br#"{"model":"m"}"#);
            let rec = log.finish(200, None, 10, false);
            assert!(rec.request_body.is_some());
            assert_eq!(rec.model_requested.as_deref(), Some("m"));
            assert_eq!(rec.model_sent.as_deref(), Some(sent));
        }
    }

    #[test]
    fn secrets_are_scrubbed_from_binary_captures_too() {
        use base64::Engine as _;
        let key = "sk-live-key-0123456789";
        let mut log = RequestLog::begin("req_1", "POST", "127.0.0.1".into());
        log.secret(key);
        let settings = bodies_on();
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/octet-stream".parse().unwrap());
        let tap = log.tap_request(&settings, &h);
        let mut body = b"\xff\xfe\x00 ".to_vec();
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(b" \x00 ");
        body.extend_from_slice(&key.as_bytes()[..15]);
        tap.lock().unwrap().as_mut().unwrap().observe(&body);
        let rec = log.finish(200, None, 10, false);
        let b64 = rec.request_body.unwrap().base64.unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(raw, b"\xff\xfe\x00 [REDACTED] \x00 [REDACTED]".to_vec());
    }
}
