//! The `max_tokens` budget: how much a call reserves, how the request is
//! adjusted so its usage is never lost, and what it is charged at the end.
//!
//! * **Reservation** ([`inspect`]): the request's own output limit —
//!   `max_tokens`, `max_completion_tokens`, `max_output_tokens` (OpenAI,
//!   Anthropic) or `generationConfig.maxOutputTokens` (Gemini), the largest
//!   if several — else `policy.default_token_reservation`. Prompt tokens are
//!   not part of it (the relay does not tokenize); they are charged at the
//!   settle.
//! * **Usage in streams**: an OpenAI-style streaming chat request
//!   (`…/chat/completions` with `"stream": true`) that does not ask for
//!   `stream_options.include_usage` gets it added, and the extra usage-only
//!   chunk is removed from the stream again ([`StripUsageChunk`]) so the
//!   client sees exactly the stream it asked for.
//! * **Settle** ([`charge`]): a response that ended normally is charged
//!   the usage it reported. Anything else — the client went away, the
//!   provider cut the stream, no usage reported at all — is charged the
//!   larger of the usage reported so far and the reservation, because the
//!   provider may have generated up to the reservation before the cut. A
//!   provider error answer (status ≥ 400) without usage is charged nothing,
//!   and a call that never got an answer releases its reservation.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::{Map, Value};

use crate::logs::record::Usage;
use crate::proxy::FinishReason;

/// What a budget token's request body tells the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// LLM tokens to reserve.
    pub reserve: u64,
    /// The body to send instead (with `stream_options.include_usage` added).
    pub new_body: Option<Bytes>,
    /// The client did not ask for the usage chunk: strip it from the stream.
    pub strip_usage_chunk: bool,
}

/// The output limit a request body asks for, if it names one.
fn output_limit(m: &Map<String, Value>) -> Option<u64> {
    let top = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(token_count));
    let gemini = m
        .get("generationConfig")
        .and_then(|g| g.get("maxOutputTokens"))
        .and_then(token_count);
    top.chain(gemini).max()
}

/// A limit written as an integer, or as a number with a fraction or an
/// exponent (`1e5`, `100.0`: OpenAI refuses those, lenient servers take
/// them), rounded up; the cast saturates at `u64::MAX`.
fn token_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.ceil() as u64)
    })
}

/// Inspects a (JSON) request body for path `rest`; `body` may be empty or
/// not JSON, then the default reservation applies and nothing changes.
pub fn inspect(rest: &str, body: &[u8], default_reservation: u64) -> Inspection {
    let mut out = Inspection {
        reserve: default_reservation,
        new_body: None,
        strip_usage_chunk: false,
    };
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(body) else {
        return out;
    };
    if let Some(limit) = output_limit(&m) {
        out.reserve = limit.max(1);
    }
    let path = rest.split('?').next().unwrap_or("").trim_end_matches('/');
    let streaming = m.get("stream").and_then(Value::as_bool) == Some(true);
    if streaming && path.ends_with("chat/completions") {
        let asked = m
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool);
        match m.get_mut("stream_options") {
            // Asked for it: nothing to add, nothing to strip.
            _ if asked == Some(true) => {}
            Some(Value::Object(o)) => {
                o.insert("include_usage".into(), Value::Bool(true));
                out.strip_usage_chunk = true;
            }
            // Not an object: leave it for the provider to refuse.
            Some(v) if !v.is_null() => {}
            // Absent, or `null` (which OpenAI takes as absent).
            _ => {
                let mut o = Map::new();
                o.insert("include_usage".into(), Value::Bool(true));
                m.insert("stream_options".into(), Value::Object(o));
                out.strip_usage_chunk = true;
            }
        }
        if out.strip_usage_chunk {
            out.new_body = serde_json::to_vec(&m).ok().map(Bytes::from);
            if out.new_body.is_none() {
                out.strip_usage_chunk = false;
            }
        }
    }
    out
}

/// What a finished call is charged; see the module docs.
pub fn charge(
    reserved: u64,
    status: Option<u16>,
    reason: Option<FinishReason>,
    usage: Option<&Usage>,
) -> u64 {
    let seen = usage.map(|u| u.total_tokens);
    match (status, reason, seen) {
        // No answer from the provider: nothing was generated.
        (None, _, _) => 0,
        (Some(_), Some(FinishReason::Complete { .. }), Some(total)) => total,
        (Some(s), _, None) if s >= 400 => 0,
        (Some(_), _, seen) => seen.unwrap_or(0).max(reserved),
    }
}

/// Longest event the stripper holds while waiting for its end; a longer
/// one makes it give up and pass everything through unchanged.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// True for the usage-only chunk the relay asked for: a `data:` event whose
/// JSON has `"choices": []` and a `usage` object.
fn is_usage_only_event(event: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(event) else {
        return false;
    };
    let mut data = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if !line.is_empty() && !line.starts_with(':') {
            // Another field (`event:`, `id:`): not the plain usage chunk.
            return false;
        }
    }
    // Every chunk of such a stream names `"usage"` (as null); only the
    // usage-only one has no choices. Cheap tests first, JSON last.
    if !data.contains("\"usage\"")
        || !(data.contains("\"choices\":[]") || data.contains("\"choices\": []"))
    {
        return false;
    }
    match serde_json::from_str::<Value>(&data) {
        Ok(v) => {
            v.get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
                && v.get("usage").is_some_and(Value::is_object)
        }
        Err(_) => false,
    }
}

/// The end of the first complete SSE event in `buf` (index after the blank
/// line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

pin_project_lite::pin_project! {
    /// Passes an SSE body through event by event, leaving out the
    /// usage-only chunk. Holds at most one incomplete event (bounded by
    /// `MAX_EVENT_BYTES`); complete events go out in the frame they
    /// arrived in.
    pub struct StripUsageChunk<B> {
        #[pin]
        inner: B,
        partial: BytesMut,
        ready: VecDeque<Bytes>,
        passthrough: bool,
        ended: bool,
    }
}

impl<B> StripUsageChunk<B> {
    pub fn new(inner: B) -> Self {
        StripUsageChunk {
            inner,
            partial: BytesMut::new(),
            ready: VecDeque::new(),
            passthrough: false,
            ended: false,
        }
    }
}

impl<B> Body for StripUsageChunk<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if let Some(out) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    *this.ended = true;
                    if !this.partial.is_empty() {
                        let rest = this.partial.split().freeze();
                        if *this.passthrough || !is_usage_only_event(&rest) {
                            this.ready.push_back(rest);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    if *this.passthrough {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    this.partial.extend_from_slice(&data);
                    let mut out = BytesMut::new();
                    while let Some(end) = event_end(this.partial) {
                        let event = this.partial.split_to(end);
                        if !is_usage_only_event(&event) {
                            out.extend_from_slice(&event);
                        }
                    }
                    if this.partial.len() > MAX_EVENT_BYTES {
                        // Not an event stream we understand: stop filtering.
                        *this.passthrough = true;
                        out.extend_from_slice(&this.partial.split());
                    }
                    if !out.is_empty() {
                        this.ready.push_back(out.freeze());
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ready.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Stripping changes the length: no exact hint.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn reservation_from_the_request_or_default() {
        let r = |body: &str| inspect("chat/completions", body.as_bytes(), 500).reserve;
        assert_eq!(r(r#"{"max_tokens":100}"#), 100);
        assert_eq!(r(r#"{"max_completion_tokens":70,"max_tokens":20}"#), 70);
        assert_eq!(r(r#"{"max_output_tokens":33}"#), 33);
        assert_eq!(r(r#"{"generationConfig":{"maxOutputTokens":64}}"#), 64);
        assert_eq!(r(r#"{"max_tokens":"many"}"#), 500);
        assert_eq!(r(r#"{"messages":[]}"#), 500);
        assert_eq!(r("not json"), 500);
        assert_eq!(r(""), 500);
        assert_eq!(r(r#"{"max_tokens":0}"#), 1);
        assert_eq!(r(r#"{"max_tokens":1e5}"#), 100_000);
        assert_eq!(r(r#"{"max_tokens":99.5}"#), 100);
        assert_eq!(r(r#"{"max_tokens":-3.0}"#), 500);
        assert_eq!(r(r#"{"max_tokens":1e300}"#), u64::MAX);
    }

    #[test]
    fn include_usage_is_added_to_openai_streams_only() {
        let i = inspect(
            "v1/chat/completions",
            br#"{"model":"m","stream":true,"messages":[]}"#,
            10,
        );
        assert!(i.strip_usage_chunk);
        let v: Value = serde_json::from_slice(&i.new_body.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");

        let i = inspect(
            "chat/completions",
            br#"{"stream":true,"stream_options":{"x":1}}"#,
            10,
        );
        let v: Value = serde_json::from_slice(&i.new_body.unwrap()).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x":1,"include_usage":true})
        );

        // `null` is no options at all.
        let i = inspect(
            "chat/completions",
            br#"{"stream":true,"stream_options":null}"#,
            10,
        );
        assert!(i.strip_usage_chunk);
        let v: Value = serde_json::from_slice(&i.new_body.unwrap()).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage":true})
        );

        // Asked for by the client: untouched, nothing stripped.
        let i = inspect(
            "chat/completions",
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            10,
        );
        assert!(!i.strip_usage_chunk && i.new_body.is_none());
        // Not streaming, or not chat completions (Anthropic reports usage anyway).
        for (path, body) in [
            ("chat/completions", r#"{"stream":false}"#),
            ("v1/messages", r#"{"stream":true}"#),
            ("responses", r#"{"stream":true}"#),
        ] {
            let i = inspect(path, body.as_bytes(), 10);
            assert!(!i.strip_usage_chunk && i.new_body.is_none(), "{path}");
        }
    }

    #[test]
    fn charge_rules() {
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
            total_tokens: 30,
            cached_tokens: None,
        };
        let complete = Some(FinishReason::Complete { bytes: 1 });
        let gone = Some(FinishReason::ClientGone { bytes: 1 });
        let cut = Some(FinishReason::UpstreamError { bytes: 1 });
        assert_eq!(charge(100, Some(200), complete, Some(&u)), 30);
        assert_eq!(charge(100, Some(200), complete, None), 100);
        assert_eq!(charge(100, Some(200), gone, None), 100);
        assert_eq!(charge(100, Some(200), gone, Some(&u)), 100);
        assert_eq!(charge(10, Some(200), cut, Some(&u)), 30);
        assert_eq!(charge(100, Some(429), complete, None), 0);
        assert_eq!(charge(100, Some(400), complete, Some(&u)), 30);
        assert_eq!(charge(100, None, None, None), 0);
    }

    async fn strip(frames: Vec<&'static str>) -> (Vec<String>, String) {
        let stream = futures_util::stream::iter(
            frames
                .into_iter()
                .map(|f| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(f)))),
        );
        let mut body = StripUsageChunk::new(StreamBody::new(stream));
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            out.push(String::from_utf8(data.to_vec()).unwrap());
        }
        let all = out.concat();
        (out, all)
    }

    #[tokio::test]
    async fn usage_only_chunk_is_removed_and_the_rest_kept_in_order() {
        let (frames, all) = strip(vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        ])
        .await;
        assert_eq!(frames.len(), 3);
        assert!(!all.contains("total_tokens"), "{all}");
        assert!(all.contains("\"content\":\"a\"") && all.ends_with("data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn events_split_across_frames_and_crlf_are_handled() {
        let (_, all) = strip(vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\r\n\r\ndata: {\"choi",
            "ces\":[],\"usage\":{\"total_tokens\":3}}\r\n",
            "\r\ndata: [DONE]\r\n\r\n",
        ])
        .await;
        assert_eq!(
            all,
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_stream_without_usage_chunk_is_unchanged() {
        let input = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let (_, all) = strip(vec![input]).await;
        assert_eq!(all, input);
        // A trailing event without its blank line still comes out.
        let (_, all) = strip(vec!["data: 1\n\ndata: 2"]).await;
        assert_eq!(all, "data: 1\n\ndata: 2");
    }
}
