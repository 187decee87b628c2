//! The body tap: watches one body (request or response) stream past, chunk by
//! chunk, and at the end says what the log record needs from it: usage,
//! model, whether it was a stream, and (with body logging on) the captured
//! body. Pure and synchronous; the proxy calls [`BodyTap::observe`] per frame
//! and [`BodyTap::finish`] exactly once (also when the body was cut short).
//!
//! Layout of the work, per chunk:
//! 1. raw bytes are counted;
//! 2. [`decode`](super::decode) undoes `Content-Encoding` into bounded pieces;
//! 3. decoded pieces go either to the [`sse`](super::sse) parser (event
//!    streams) or into the `head` buffer (everything else), which holds the
//!    first `max(max_capture_bytes, max_usage_scan_bytes)` decoded bytes.
//!
//! An encoded body the tap cannot decode (unknown or stacked coding, corrupt
//! data) is not captured at all: secrets inside it could not be scrubbed.
//!
//! Memory bound, whatever the input: `head` + SSE line and
//! event buffers (each ≤ `max_usage_scan_bytes`) + SSE text/raw (≤
//! `max_capture_bytes` each) + the decoder's window (32 KiB, brotli ≤ 16 MiB).

use std::sync::Arc;

use base64::Engine as _;

use super::decode::{Decoder, Encoding, Stop};
use super::record::{CapturedBody, Usage};
use super::redact::{redact_form_fields, redact_json_lenient};
use super::sse::{cut_at_char, SseDigest, SseParser};
use super::usage::probe_response;

/// Decoded/compressed ratio past which an encoded event stream is treated as
/// a bomb and no longer decoded.
const MAX_DECODE_RATIO: u64 = 1024;

/// What the tap keeps and how much of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// `log.bodies`: capture bodies; when false only usage/counters are kept.
    pub capture_bodies: bool,
    /// Per body cap for the captured text/base64 (decoded text too).
    pub max_capture_bytes: usize,
    /// Non-SSE bodies are buffered up to this to read `usage` / `model`;
    /// bigger bodies give `usage: None`. Also caps one SSE line / event.
    pub max_usage_scan_bytes: usize,
    /// Extra JSON body field names to mask (besides `api_key` and co).
    pub redact_json_fields: Vec<String>,
}

impl Default for TapConfig {
    fn default() -> Self {
        TapConfig {
            capture_bodies: false,
            max_capture_bytes: 64 * 1024,
            max_usage_scan_bytes: 1024 * 1024,
            redact_json_fields: Vec::new(),
        }
    }
}

/// Which body the tap watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// What the tap found, handed to the finish hook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapOutcome {
    /// Token usage, from a JSON response or the stream's events.
    pub usage: Option<Usage>,
    /// The captured body (only when `capture_bodies`).
    pub body: Option<CapturedBody>,
    /// The body was `text/event-stream`.
    pub stream: bool,
    /// The `"model"` named by a JSON request body (top level) or response.
    pub model: Option<String>,
}

/// What the content type says about the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Json,
    Text,
    /// `application/x-www-form-urlencoded`: text, and request bodies have
    /// their fields redacted like JSON's.
    Form,
    /// No content type: text if the bytes are UTF-8; scanned for usage.
    Unknown,
    /// Another declared type (`image/png`, `audio/mpeg`, octet-stream…):
    /// text if the bytes are UTF-8; not scanned for usage (no 1 MiB buffer
    /// for media bodies).
    Other,
}

impl Kind {
    fn parse(ct: Option<&str>) -> Kind {
        let Some(ct) = ct else {
            return Kind::Unknown;
        };
        let mime = ct.split(';').next().unwrap_or("").trim();
        // Case-insensitive without lowercasing a copy (one per body).
        let is = |m: &str| mime.eq_ignore_ascii_case(m);
        let ends = |suffix: &str| {
            mime.len() >= suffix.len()
                && mime.as_bytes()[mime.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        };
        let starts = |prefix: &str| {
            mime.len() >= prefix.len()
                && mime.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        if is("text/event-stream") {
            Kind::Sse
        } else if is("application/json")
            || ends("+json")
            || is("application/x-ndjson")
            || is("application/ndjson")
            || is("application/jsonl")
        {
            Kind::Json
        } else if starts("text/")
            || ends("+xml")
            || is("application/xml")
            || is("application/javascript")
        {
            Kind::Text
        } else if is("application/x-www-form-urlencoded") {
            Kind::Form
        } else {
            Kind::Other
        }
    }
}

/// The decoded side of the tap (split from the decoder so both can be
/// borrowed at once).
#[derive(Debug)]
struct Decoded {
    /// Decoded bytes seen.
    total: u64,
    /// First `head_limit` decoded bytes (non-SSE bodies only).
    head: Vec<u8>,
    head_limit: usize,
    /// SSE parser and digest (event-stream bodies only).
    sse: Option<(SseParser, SseDigest)>,
}

impl Decoded {
    fn consume(&mut self, piece: &[u8]) {
        self.total += piece.len() as u64;
        if let Some((parser, digest)) = &mut self.sse {
            parser.push(piece, &mut |ev| digest.on_event(ev));
        } else {
            let room = self.head_limit.saturating_sub(self.head.len());
            let take = room.min(piece.len());
            self.head.extend_from_slice(&piece[..take]);
        }
    }
}

/// Observes one body; see the module docs.
#[derive(Debug)]
pub struct BodyTap {
    dir: Direction,
    cfg: Arc<TapConfig>,
    kind: Kind,
    encoding: Encoding,
    /// Raw bytes seen (what went over the wire).
    seen: u64,
    decoder: Option<DecoderBox>,
    decoded: Decoded,
}

/// `Decoder` has no `Debug` (the brotli state is huge); this wrapper prints
/// only the counters.
struct DecoderBox(Decoder);

impl std::fmt::Debug for DecoderBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("decoded", &self.0.decoded())
            .field("stopped", &self.0.stopped())
            .finish()
    }
}

impl BodyTap {
    /// `content_type` / `content_encoding` from the headers of that body.
    pub fn new(
        dir: Direction,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        cfg: Arc<TapConfig>,
    ) -> BodyTap {
        let kind = Kind::parse(content_type);
        let encoding = Encoding::parse(content_encoding);
        let capture = cfg.capture_bodies;
        let sse = (kind == Kind::Sse).then(|| {
            (
                SseParser::new(cfg.max_usage_scan_bytes.max(1024)),
                SseDigest::new(capture, cfg.max_capture_bytes),
            )
        });
        // Non-SSE bodies: keep enough to capture, and (JSON or no content
        // type) enough to read usage / model.
        let scan = matches!(kind, Kind::Json | Kind::Unknown);
        let head_limit = if sse.is_some() {
            0
        } else {
            let c = if capture { cfg.max_capture_bytes } else { 0 };
            let s = if scan { cfg.max_usage_scan_bytes } else { 0 };
            c.max(s)
        };
        BodyTap {
            dir,
            kind,
            encoding,
            seen: 0,
            decoder: Decoder::new(encoding).map(DecoderBox),
            decoded: Decoded {
                total: 0,
                head: Vec::new(),
                head_limit,
                sse,
            },
            cfg,
        }
    }

    /// Called per frame: O(chunk) work, memory bounded by the caps.
    pub fn observe(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        match (&mut self.decoder, self.encoding) {
            (Some(d), _) => {
                let budget = if self.decoded.sse.is_some() {
                    self.seen
                        .saturating_mul(MAX_DECODE_RATIO)
                        .saturating_add(self.cfg.max_usage_scan_bytes as u64)
                } else {
                    // One byte past the head tells "cut" from "fits".
                    self.decoded.head_limit as u64
                };
                let decoded = &mut self.decoded;
                d.0.feed(chunk, budget, &mut |p| decoded.consume(p));
            }
            (None, Encoding::Identity) => self.decoded.consume(chunk),
            (None, _) => {} // unknown coding: not decoded
        }
    }

    /// Raw (on-the-wire) bytes observed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Bytes the tap holds in its own buffers right now (test accessor for
    /// the memory bound; excludes the decoder's window).
    #[cfg(test)]
    fn buffered_bytes(&self) -> usize {
        self.decoded.head.capacity()
            + self
                .decoded
                .sse
                .as_ref()
                .map_or(0, |(p, d)| p.buffered() + d.buffered())
    }

    /// Called exactly once, also when the body was cut short: what was seen.
    pub fn finish(mut self) -> TapOutcome {
        let capture = self.cfg.capture_bodies;
        let stopped = self.decoder.as_ref().and_then(|d| d.0.stopped());
        let undecodable = self.encoding == Encoding::Unknown || stopped == Some(Stop::Corrupt);

        if let Some((mut parser, mut digest)) = self.decoded.sse.take() {
            parser.finish(&mut |ev| digest.on_event(ev));
            let body = capture.then(|| {
                if undecodable && digest.events == 0 {
                    CapturedBody::undecodable()
                } else {
                    CapturedBody {
                        text: Some(std::mem::take(&mut digest.text)),
                        base64: None,
                        truncated: digest.truncated || stopped.is_some(),
                        sse_events: Some(digest.events),
                        sse_raw: std::mem::take(&mut digest.raw),
                        omitted: None,
                    }
                }
            });
            return TapOutcome {
                usage: digest.usage.usage(),
                body,
                stream: true,
                model: digest.model.take(),
            };
        }

        // Non-SSE: the whole decoded body is in `head` when nothing was cut.
        let complete = !undecodable
            && stopped.is_none()
            && self.decoded.total <= self.decoded.head_limit as u64;
        let head = &self.decoded.head;
        // Only the few keys the record needs are read; the rest of the JSON
        // is skipped, never built.
        let (usage, model) = match self.dir {
            Direction::Response
                if complete
                    && !matches!(self.kind, Kind::Text | Kind::Form)
                    && looks_like_json(head) =>
            {
                probe_response(head)
            }
            Direction::Request if !undecodable && looks_like_json(head) => {
                (None, top_level_string_lenient(head, "model"))
            }
            _ => (None, None),
        };

        let body = capture.then(|| {
            if undecodable {
                CapturedBody::undecodable()
            } else {
                self.decoded_body()
            }
        });
        TapOutcome {
            usage,
            body,
            stream: false,
            model,
        }
    }

    /// The first `max_capture_bytes` decoded bytes as text or base64.
    fn decoded_body(&self) -> CapturedBody {
        let cap = self.cfg.max_capture_bytes;
        let head = &self.decoded.head;
        let budget_cut = self
            .decoder
            .as_ref()
            .is_some_and(|d| d.0.stopped() == Some(Stop::Budget));
        let truncated = self.decoded.total > cap as u64 || (budget_cut && head.len() >= cap);
        let valid: Option<&str> = match std::str::from_utf8(head) {
            Ok(s) => Some(s),
            // Cut inside a character, or invalid only past the capture cap.
            Err(e) if e.error_len().is_none() || e.valid_up_to() >= cap => {
                std::str::from_utf8(&head[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        };
        let text: Option<String> = match valid {
            Some(t) => Some(t.to_owned()),
            // Declared text that is not UTF-8: kept lossily. So is a request
            // body that looks like JSON whatever its type says: as base64 it
            // would escape the field redaction below.
            None if matches!(self.kind, Kind::Json | Kind::Text | Kind::Form)
                || (self.dir == Direction::Request && looks_like_json(head)) =>
            {
                Some(String::from_utf8_lossy(head).into_owned())
            }
            None => None,
        };
        match text {
            Some(mut t) => {
                // Redact the whole head first (a secret straddling the cap
                // is masked to its end), then cut.
                let fields = &self.cfg.redact_json_fields;
                if self.dir == Direction::Request {
                    if self.kind == Kind::Json || looks_like_json(t.as_bytes()) {
                        t = redact_json_lenient(&t, fields);
                    } else if self.kind == Kind::Form {
                        t = redact_form_fields(&t, fields);
                    }
                }
                let cut = cut_at_char(&t, cap);
                let truncated = truncated || cut.len() < t.len();
                CapturedBody {
                    text: Some(cut.to_owned()),
                    truncated,
                    ..CapturedBody::default()
                }
            }
            None => {
                let n = head.len().min(cap);
                CapturedBody {
                    base64: Some(base64::engine::general_purpose::STANDARD.encode(&head[..n])),
                    truncated: truncated || head.len() > n,
                    ..CapturedBody::default()
                }
            }
        }
    }
}

fn looks_like_json(b: &[u8]) -> bool {
    matches!(
        b.iter().find(|c| !c.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

/// The top-level string `key` of a JSON object that may be cut short (a
/// request body bigger than the scan buffer): keys are read in order and
/// reading stops at `key`, so a truncated tail does not matter as long as
/// `key` comes before it.
fn top_level_string_lenient(bytes: &[u8], key: &str) -> Option<String> {
    use serde::de::{IgnoredAny, MapAccess, Visitor};

    struct Find<'a> {
        key: &'a str,
        found: &'a mut Option<String>,
    }
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(is_key) = map.next_key_seed(KeyIs(self.key))? {
                if is_key {
                    if let Ok(s) = map.next_value::<String>() {
                        *self.found = Some(s);
                    }
                    // Stop here: the rest is not read (serde_json then reports
                    // the unread tail as an error, which is ignored; a custom
                    // error would cost a formatted message per request).
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    /// Whether an object key is the one wanted, compared in place (no
    /// `String` per key).
    struct KeyIs<'a>(&'a str);
    impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
        type Value = bool;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            // As bytes: no UTF-8 check per key (see `usage::key_enum`).
            d.deserialize_bytes(self)
        }
    }
    impl Visitor<'_> for KeyIs<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object key")
        }
        fn visit_bytes<E: serde::de::Error>(self, key: &[u8]) -> Result<bool, E> {
            Ok(key == self.0.as_bytes())
        }
        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
            Ok(key == self.0)
        }
    }
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = serde::Deserializer::deserialize_map(
        &mut de,
        Find {
            key,
            found: &mut found,
        },
    );
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use flate2::Compression;
    use std::io::Write;

    fn cfg(capture: bool) -> Arc<TapConfig> {
        Arc::new(TapConfig {
            capture_bodies: capture,
            ..TapConfig::default()
        })
    }

    fn run(
        dir: Direction,
        ct: Option<&str>,
        ce: Option<&str>,
        cfg: Arc<TapConfig>,
        chunks: &[&[u8]],
    ) -> TapOutcome {
        let mut t = BodyTap::new(dir, ct, ce, cfg);
        for c in chunks {
            t.observe(c);
        }
        t.finish()
    }

    fn resp(ct: &str, ce: Option<&str>, capture: bool, body: &[u8]) -> TapOutcome {
        run(Direction::Response, Some(ct), ce, cfg(capture), &[body])
    }

    fn usage(p: u64, c: u64, t: u64, cached: Option<u64>) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
            cached_tokens: cached,
        })
    }

    const OPENAI_SSE: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo, w\u{f6}rld \u{1f30d}\"},\"finish_reason\":null}],\"usage\":null}\n\n\
: keep-alive\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC_SSE: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-3-5-sonnet-20241022\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":7}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    const GEMINI_SSE: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4},\"modelVersion\":\"gemini-1.5-flash\"}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" there\"},{\"text\":\"!\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":2,\"thoughtsTokenCount\":3,\"totalTokenCount\":9,\"cachedContentTokenCount\":1},\"modelVersion\":\"gemini-1.5-flash\"}\r\n\r\n";

    const OPENAI_JSON: &str = r#"{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}}}"#;

    /// The JSON compressed by `BrotliEncoderCompress(11, 22, ..)` (libbrotli
    /// 1.0.9): brotli compression is not among our dependencies.
    const BR_JSON: &[u8] = &[
        27, 244, 0, 0, 140, 195, 116, 163, 61, 95, 148, 114, 140, 38, 25, 196, 243, 231, 200, 143,
        127, 108, 13, 58, 240, 168, 160, 151, 58, 44, 125, 150, 187, 127, 177, 7, 125, 16, 75, 174,
        223, 90, 20, 118, 107, 205, 19, 137, 185, 181, 128, 114, 39, 62, 15, 70, 146, 191, 47, 97,
        238, 64, 59, 213, 95, 187, 95, 155, 118, 137, 5, 144, 217, 220, 33, 144, 24, 114, 0, 227,
        245, 233, 224, 212, 2, 84, 188, 237, 66, 42, 32, 52, 56, 152, 35, 77, 224, 108, 130, 115,
        12, 2, 130, 150, 196, 47, 216, 165, 121, 206, 111, 155, 89, 33, 220, 90, 178, 252, 6, 239,
        119, 94, 156, 43, 254, 190, 176, 137, 206, 235, 43, 181, 224, 47, 92, 47, 224, 70, 138,
        161, 130, 180, 28, 76, 181, 61, 126,
    ];
    const BR_JSON_PLAIN: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from brotli"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;

    /// `{"pad":"` followed by 64 MiB of `a`, brotli quality 5 (121 bytes).
    const BR_BOMB: &[u8] = &[
        203, 255, 255, 63, 0, 4, 28, 114, 228, 23, 204, 236, 91, 243, 188, 248, 45, 144, 177, 247,
        127, 103, 150, 32, 255, 255, 255, 0, 144, 0, 136, 195, 2, 208, 189, 255, 227, 255, 255, 31,
        0, 18, 0, 113, 88, 0, 186, 247, 127, 252, 255, 255, 3, 64, 2, 32, 14, 11, 64, 247, 254,
        143, 255, 255, 127, 0, 72, 0, 196, 97, 1, 232, 222, 255, 241, 255, 255, 15, 0, 9, 128, 56,
        44, 0, 221, 251, 63, 254, 255, 255, 1, 32, 1, 16, 135, 5, 160, 123, 255, 199, 255, 255, 63,
        0, 36, 0, 226, 176, 0, 116, 239, 255, 226, 0, 0, 128, 68, 88, 232, 18, 0,
    ];

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn content_types_are_matched_without_regard_to_case() {
        for (ct, kind) in [
            (Some("Application/JSON; charset=utf-8"), Kind::Json),
            (Some("application/vnd.api+JSON"), Kind::Json),
            (Some(" TEXT/EVENT-STREAM "), Kind::Sse),
            (Some("Text/Plain"), Kind::Text),
            (Some("application/atom+XML"), Kind::Text),
            (Some("Application/X-WWW-Form-Urlencoded"), Kind::Form),
            (Some("image/png"), Kind::Other),
            (Some("json"), Kind::Other),
            (None, Kind::Unknown),
        ] {
            assert_eq!(Kind::parse(ct), kind, "{ct:?}");
        }
    }

    #[test]
    fn openai_sse_result_does_not_depend_on_chunking() {
        let s = OPENAI_SSE.as_bytes();
        let whole = resp("text/event-stream; charset=utf-8", None, true, s);
        assert!(whole.stream);
        assert_eq!(whole.usage, usage(9, 4, 13, Some(2)));
        assert_eq!(whole.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        let body = whole.body.clone().unwrap();
        assert_eq!(body.text.as_deref(), Some("Hello, w\u{f6}rld \u{1f30d}"));
        assert_eq!(body.sse_events, Some(6), "5 JSON events + [DONE]");
        assert!(body.sse_raw.is_empty() && !body.truncated);
        for i in 0..=s.len() {
            let two = run(
                Direction::Response,
                Some("text/event-stream"),
                None,
                cfg(true),
                &[&s[..i], &s[i..]],
            );
            assert_eq!(two, whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        let ones = run(
            Direction::Response,
            Some("text/event-stream"),
            None,
            cfg(true),
            &bytes,
        );
        assert_eq!(ones, whole);
    }

    #[test]
    fn openai_choices_n2_append_all_and_raw_data_kept() {
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}},{\"index\":1,\"delta\":{\"content\":\"b\"}}]}\n\ndata: not json\n\ndata: [DONE]\n\n";
        let o = resp("text/event-stream", None, true, s.as_bytes());
        let b = o.body.unwrap();
        assert_eq!(b.text.as_deref(), Some("ab"));
        assert_eq!(b.sse_raw, vec!["not json".to_owned()]);
        assert_eq!(b.sse_events, Some(3));
        assert_eq!(o.usage, None);
    }

    #[test]
    fn openai_responses_stream_usage_from_response_completed() {
        let s = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Yo\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":5,\"input_tokens_details\":{\"cached_tokens\":1},\"output_tokens\":2,\"total_tokens\":7}}}\n\n";
        let o = resp("text/event-stream", None, true, s.as_bytes());
        assert_eq!(o.usage, usage(5, 2, 7, Some(1)));
        assert_eq!(o.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(o.body.unwrap().text.as_deref(), Some("Yo"));
    }

    #[test]
    fn anthropic_sse_usage_and_text() {
        let o = resp("text/event-stream", None, true, ANTHROPIC_SSE.as_bytes());
        // prompt = input 25 + cache creation 0 + cache read 10
        assert_eq!(o.usage, usage(35, 15, 50, Some(10)));
        assert_eq!(o.model.as_deref(), Some("claude-3-5-sonnet-20241022"));
        let b = o.body.unwrap();
        assert_eq!(b.text.as_deref(), Some("Hello there"));
        assert_eq!(b.sse_events, Some(9));
    }

    #[test]
    fn client_disconnect_mid_stream_keeps_usage_seen_so_far() {
        let s = ANTHROPIC_SSE;
        // Cut inside the second content_block_delta: message_start and the
        // first message_delta were delivered.
        let cut = s.find(" there").unwrap();
        let o = resp("text/event-stream", None, true, &s.as_bytes()[..cut]);
        assert_eq!(o.usage, usage(35, 7, 42, Some(10)));
        assert_eq!(o.body.unwrap().text.as_deref(), Some("Hello"));
        // Cut right after message_start: input only, output from message_start.
        let cut = s.find("event: content_block_start").unwrap();
        let o = resp("text/event-stream", None, false, &s.as_bytes()[..cut]);
        assert_eq!(o.usage, usage(35, 1, 36, Some(10)));
        assert_eq!(o.body, None);
        // Cut before anything: no usage.
        let o = resp("text/event-stream", None, false, &s.as_bytes()[..20]);
        assert_eq!(o.usage, None);
        // OpenAI cut before the usage chunk: none reported.
        let cut = OPENAI_SSE.find("\"choices\":[],").unwrap();
        let o = resp(
            "text/event-stream",
            None,
            true,
            &OPENAI_SSE.as_bytes()[..cut],
        );
        assert_eq!(o.usage, None);
        assert_eq!(
            o.body.unwrap().text.as_deref(),
            Some("Hello, w\u{f6}rld \u{1f30d}")
        );
        // Last event complete but without its blank line: still counted.
        let s2 = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n";
        let o = resp("text/event-stream", None, false, s2.as_bytes());
        assert_eq!(o.usage, usage(1, 2, 3, None));
    }

    #[test]
    fn gemini_sse_and_json_array() {
        let o = resp("text/event-stream", None, true, GEMINI_SSE.as_bytes());
        assert_eq!(o.usage, usage(4, 5, 9, Some(1)));
        assert_eq!(o.model.as_deref(), Some("gemini-1.5-flash"));
        assert_eq!(o.body.unwrap().text.as_deref(), Some("Hi there!"));
        let arr = r#"[{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4},"modelVersion":"gemini-2.0-flash"},
{"candidates":[{"content":{"parts":[{"text":" there"}]}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6}}]"#;
        let o = resp(
            "application/json; charset=UTF-8",
            None,
            true,
            arr.as_bytes(),
        );
        assert!(!o.stream);
        assert_eq!(o.usage, usage(4, 2, 6, None));
        assert_eq!(o.model.as_deref(), Some("gemini-2.0-flash"));
        assert_eq!(o.body.unwrap().text.as_deref(), Some(arr));
    }

    #[test]
    fn openai_json_response_usage_model_and_body() {
        let o = resp("application/json", None, true, OPENAI_JSON.as_bytes());
        assert_eq!(o.usage, usage(11, 2, 13, Some(0)));
        assert_eq!(o.model.as_deref(), Some("gpt-4o-2024-08-06"));
        let b = o.body.unwrap();
        assert_eq!(b.text.as_deref(), Some(OPENAI_JSON));
        assert!(!b.truncated && b.base64.is_none() && b.sse_events.is_none());
        // bodies off: usage still read, no body
        let o = resp("application/json", None, false, OPENAI_JSON.as_bytes());
        assert_eq!(o.usage, usage(11, 2, 13, Some(0)));
        assert_eq!(o.body, None);
    }

    #[test]
    fn encoded_json_is_decoded_for_the_log() {
        let plain = OPENAI_JSON.as_bytes();
        let zlib = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        };
        let raw = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        };
        for (enc, bytes) in [("gzip", gzip(plain)), ("deflate", zlib), ("deflate", raw)] {
            for chunk in [1, 3, 64, 100_000] {
                let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
                let o = run(
                    Direction::Response,
                    Some("application/json"),
                    Some(enc),
                    cfg(true),
                    &chunks,
                );
                assert_eq!(o.usage, usage(11, 2, 13, Some(0)), "{enc} {chunk}");
                assert_eq!(o.body.unwrap().text.as_deref(), Some(OPENAI_JSON));
            }
        }
        for chunk in [1, 5, 1000] {
            let chunks: Vec<&[u8]> = BR_JSON.chunks(chunk).collect();
            let o = run(
                Direction::Response,
                Some("application/json"),
                Some("br"),
                cfg(true),
                &chunks,
            );
            assert_eq!(o.usage, usage(12, 5, 17, None), "br {chunk}");
            assert_eq!(o.model.as_deref(), Some("gpt-4o-mini"));
            assert_eq!(o.body.unwrap().text.as_deref(), Some(BR_JSON_PLAIN));
        }
    }

    #[test]
    fn gzip_encoded_event_stream() {
        let gz = gzip(ANTHROPIC_SSE.as_bytes());
        let chunks: Vec<&[u8]> = gz.chunks(7).collect();
        let o = run(
            Direction::Response,
            Some("text/event-stream"),
            Some("gzip"),
            cfg(true),
            &chunks,
        );
        assert_eq!(o.usage, usage(35, 15, 50, Some(10)));
        assert_eq!(o.body.unwrap().text.as_deref(), Some("Hello there"));
    }

    #[test]
    fn unknown_or_corrupt_encoding_is_not_captured() {
        // Secrets inside bytes the relay cannot decode could not be scrubbed.
        let o = resp(
            "application/json",
            Some("zstd"),
            true,
            b"\x28\xb5\x2f\xfdabc",
        );
        let b = o.body.unwrap();
        assert_eq!(b, CapturedBody::undecodable());
        assert!(b.text.is_none() && b.base64.is_none() && !b.truncated);
        assert_eq!(o.usage, None);
        let o = resp(
            "application/json",
            Some("gzip"),
            true,
            OPENAI_JSON.as_bytes(),
        );
        assert_eq!(o.body.unwrap(), CapturedBody::undecodable());
        assert_eq!(o.usage, None);
        let o = resp("text/event-stream", Some("zstd"), true, b"data: {}\n\n");
        assert_eq!(o.body.unwrap(), CapturedBody::undecodable());
    }

    #[test]
    fn capture_is_truncated_at_the_cap_on_a_char_boundary() {
        let c = Arc::new(TapConfig {
            capture_bodies: true,
            max_capture_bytes: 10,
            ..TapConfig::default()
        });
        let o = run(
            Direction::Response,
            Some("text/plain"),
            None,
            c.clone(),
            &[b"abcdefgh\xc3\xa9\xc3\xa9zz"],
        );
        let b = o.body.unwrap();
        assert_eq!(b.text.as_deref(), Some("abcdefgh\u{e9}"));
        assert!(b.truncated);
        // JSON still parsed for usage (scan buffer is bigger than the capture)
        let o = run(
            Direction::Response,
            Some("application/json"),
            None,
            c.clone(),
            &[OPENAI_JSON.as_bytes()],
        );
        assert_eq!(o.usage, usage(11, 2, 13, Some(0)));
        let b = o.body.unwrap();
        assert_eq!(b.text.as_deref(), Some(&OPENAI_JSON[..10]));
        assert!(b.truncated);
        // SSE merged text capped too
        let o = run(
            Direction::Response,
            Some("text/event-stream"),
            None,
            c,
            &[OPENAI_SSE.as_bytes()],
        );
        let b = o.body.unwrap();
        assert_eq!(b.text.as_deref(), Some("Hello, w\u{f6}"));
        assert!(b.truncated);
        assert_eq!(o.usage, usage(9, 4, 13, Some(2)));
    }

    #[test]
    fn binary_body_is_base64_of_the_first_bytes() {
        let c = Arc::new(TapConfig {
            capture_bodies: true,
            max_capture_bytes: 4,
            ..TapConfig::default()
        });
        let png = b"\x89PNG\r\n\x1a\n\0\0";
        let o = run(Direction::Request, Some("image/png"), None, c, &[png]);
        let b = o.body.unwrap();
        assert_eq!(b.base64.as_deref(), Some("iVBORw=="));
        assert!(b.truncated && b.text.is_none());
        // no content type, invalid UTF-8 → base64; valid UTF-8 → text
        let o = run(
            Direction::Response,
            None,
            None,
            cfg(true),
            &[b"\xff\xfe\x00"],
        );
        assert_eq!(o.body.unwrap().base64.as_deref(), Some("//4A"));
        let o = run(
            Direction::Response,
            None,
            None,
            cfg(true),
            &[b"plain words"],
        );
        assert_eq!(o.body.unwrap().text.as_deref(), Some("plain words"));
    }

    #[test]
    fn request_model_and_redacted_capture() {
        let c = Arc::new(TapConfig {
            capture_bodies: true,
            redact_json_fields: vec!["user_secret".to_owned()],
            ..TapConfig::default()
        });
        let body = r#"{"model":"gpt-4o","api_key":"sk-canary-123","messages":[{"role":"user","content":"hi"}],"metadata":{"user_secret":"s3","token":"t0k"},"stream":true}"#;
        let o = run(
            Direction::Request,
            Some("application/json"),
            None,
            c.clone(),
            &[body.as_bytes()],
        );
        assert_eq!(o.model.as_deref(), Some("gpt-4o"));
        assert!(!o.stream);
        let t = o.body.unwrap().text.unwrap();
        for s in ["sk-canary-123", "s3", "t0k"] {
            assert!(!t.contains(s), "{s} leaked: {t}");
        }
        assert!(t.contains(r#""content":"hi""#));
        // A request bigger than the scan buffer (an inline image): model read
        // from the head; a secret after the capture cap never shows, one
        // straddling it is masked.
        let small = Arc::new(TapConfig {
            capture_bodies: true,
            max_capture_bytes: 60,
            max_usage_scan_bytes: 1000,
            ..TapConfig::default()
        });
        let big = format!(
            r#"{{"model":"claude-x","apiKey":"sk-canary-456789","image":"{}","api_key":"sk-late"}}"#,
            "A".repeat(5000)
        );
        let o = run(
            Direction::Request,
            Some("application/json"),
            None,
            small,
            &[big.as_bytes()],
        );
        assert_eq!(o.model.as_deref(), Some("claude-x"));
        let b = o.body.unwrap();
        assert!(b.truncated);
        let t = b.text.unwrap();
        assert!(!t.contains("sk-canary") && !t.contains("sk-late"), "{t}");
        assert!(
            t.starts_with(r#"{"model":"claude-x","apiKey":"[REDACTED]""#),
            "{t}"
        );
    }

    #[test]
    fn json_request_bodies_are_redacted_whatever_their_type_says() {
        // One invalid byte would make these base64, past the field redaction.
        let body = b"{\"api_key\":\"third-party-key\",\"model\":\"m\"}\xff";
        for ct in [None, Some("application/octet-stream"), Some("image/png")] {
            let o = run(Direction::Request, ct, None, cfg(true), &[body]);
            assert_eq!(o.model.as_deref(), Some("m"), "{ct:?}");
            let b = o.body.unwrap();
            assert!(b.base64.is_none(), "{ct:?}: {b:?}");
            let t = b.text.unwrap();
            assert!(!t.contains("third-party-key"), "{ct:?}: {t}");
            assert_eq!(t, "{\"api_key\":\"[REDACTED]\",\"model\":\"m\"}\u{fffd}");
        }
        // A response is not field-redacted: its bytes stay exact.
        let o = run(Direction::Response, None, None, cfg(true), &[body]);
        assert!(o.body.unwrap().base64.is_some());
        // Not JSON-looking: still base64.
        let o = run(Direction::Request, None, None, cfg(true), &[b"x\xff{"]);
        assert!(o.body.unwrap().base64.is_some());
        // NDJSON (whatever its first line) and `+json` types are JSON.
        for ct in [
            "application/ndjson",
            "application/x-ndjson",
            "application/jsonl",
            "application/merge-patch+json",
        ] {
            assert_eq!(Kind::parse(Some(ct)), Kind::Json, "{ct}");
            let o = run(
                Direction::Request,
                Some(ct),
                None,
                cfg(true),
                &[b"\"first\"\n{\"token\":\"t0k\"}\n"],
            );
            let t = o.body.unwrap().text.unwrap();
            assert_eq!(t, "\"first\"\n{\"token\":\"[REDACTED]\"}\n", "{ct}");
        }
    }

    #[test]
    fn form_request_bodies_are_field_redacted() {
        let c = Arc::new(TapConfig {
            capture_bodies: true,
            max_capture_bytes: 40,
            ..TapConfig::default()
        });
        let body = b"model=m&password=hunter2&note=hi&token=sk-canary-0123456789";
        let ct = Some("application/x-www-form-urlencoded; charset=utf-8");
        let o = run(Direction::Request, ct, None, c.clone(), &[body]);
        let b = o.body.unwrap();
        let t = b.text.unwrap();
        assert!(b.truncated);
        assert_eq!(t, "model=m&password=[REDACTED]&note=hi&toke", "{t}");
        assert!(!t.contains("hunter2") && !t.contains("sk-canary"));
        // A response is not field-redacted; other text is left as is.
        let o = run(Direction::Response, ct, None, c.clone(), &[body]);
        assert!(o.body.unwrap().text.unwrap().contains("hunter2"));
        let o = run(Direction::Request, Some("text/plain"), None, c, &[body]);
        assert!(o.body.unwrap().text.unwrap().contains("hunter2"));
    }

    #[test]
    fn gzip_bomb_is_bounded() {
        // 256 MiB of zeros → ~250 KB gzip (flate2, level 9).
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 500_000, "{}", bomb.len());
        let c = cfg(true);
        let mut t = BodyTap::new(
            Direction::Response,
            Some("application/json"),
            Some("gzip"),
            c.clone(),
        );
        for ch in bomb.chunks(16 * 1024) {
            t.observe(ch);
            assert!(t.buffered_bytes() <= c.max_usage_scan_bytes + c.max_capture_bytes);
        }
        let decoded = t.decoder.as_ref().unwrap().0.decoded();
        assert!(
            decoded <= (c.max_usage_scan_bytes + 64 * 1024) as u64,
            "{decoded}"
        );
        let o = t.finish();
        let b = o.body.unwrap();
        assert!(b.truncated);
        assert_eq!(b.text.map(|s| s.len()), Some(64 * 1024));
        assert_eq!(o.usage, None);
    }

    #[test]
    fn brotli_bomb_is_bounded() {
        let c = cfg(true);
        let mut t = BodyTap::new(
            Direction::Response,
            Some("application/json"),
            Some("br"),
            c.clone(),
        );
        t.observe(BR_BOMB);
        let decoded = t.decoder.as_ref().unwrap().0.decoded();
        assert!(
            decoded <= (c.max_usage_scan_bytes + 64 * 1024) as u64,
            "{decoded}"
        );
        assert!(t.buffered_bytes() <= c.max_usage_scan_bytes + c.max_capture_bytes);
        let b = t.finish().body.unwrap();
        assert!(b.truncated);
        assert_eq!(b.text.map(|s| s.len()), Some(64 * 1024));
    }

    #[test]
    fn media_bodies_are_not_buffered_for_usage_when_capture_is_off() {
        let mut t = BodyTap::new(Direction::Response, Some("audio/mpeg"), None, cfg(false));
        t.observe(&vec![0xffu8; 256 * 1024]);
        assert_eq!(t.buffered_bytes(), 0);
        let o = t.finish();
        assert_eq!((o.usage, o.body, o.stream), (None, None, false));
        let mut t = BodyTap::new(Direction::Response, Some("text/plain"), None, cfg(false));
        t.observe(b"hello");
        assert_eq!(t.buffered_bytes(), 0);
    }

    #[test]
    fn memory_stays_bounded_for_50_mb_inputs() {
        let c = cfg(true);
        let bound = 2 * c.max_usage_scan_bytes + 3 * c.max_capture_bytes + 4096;
        let chunk = vec![b'x'; 16 * 1024];
        let n = 50 * 1024 * 1024 / chunk.len();
        // a 50 MB upload
        let mut t = BodyTap::new(
            Direction::Request,
            Some("application/octet-stream"),
            None,
            c.clone(),
        );
        // a single 50 MB SSE line
        let mut s = BodyTap::new(
            Direction::Response,
            Some("text/event-stream"),
            None,
            c.clone(),
        );
        s.observe(b"data: ");
        for _ in 0..n {
            t.observe(&chunk);
            s.observe(&chunk);
            assert!(t.buffered_bytes() <= bound);
            assert!(s.buffered_bytes() <= bound);
        }
        assert_eq!(t.bytes_seen(), 50 * 1024 * 1024);
        s.observe(b"\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
        let o = s.finish();
        assert_eq!(o.usage, usage(1, 1, 2, None));
        // the over-long line was dropped (its event had no data left)
        assert_eq!(o.body.unwrap().sse_events, Some(1));
        let o = t.finish();
        assert!(o.body.unwrap().truncated);
        // an endless stream of events with text: text capped, buffers bounded
        let ev =
            "data: {\"choices\":[{\"delta\":{\"content\":\"0123456789abcdef\"}}]}\n\n".repeat(200);
        let mut s = BodyTap::new(
            Direction::Response,
            Some("text/event-stream"),
            None,
            c.clone(),
        );
        for _ in 0..400 {
            s.observe(ev.as_bytes());
            assert!(s.buffered_bytes() <= bound);
        }
        let b = s.finish().body.unwrap();
        assert!(b.truncated);
        assert_eq!(b.text.map(|t| t.len()), Some(c.max_capture_bytes));
        assert_eq!(b.sse_events, Some(80_000));
    }
}
