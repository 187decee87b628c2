//! Incremental `text/event-stream` parser for the log.
//!
//! [`SseParser::push`] takes decoded bytes in any chunking and calls back
//! once per complete event (the joined `data:` lines and the `event:` name).
//! Lines are split on LF, CRLF or CR (a CR at the end of a chunk is
//! remembered so a CRLF split across chunks is one line break). A line longer
//! than the cap is not buffered: its bytes are dropped as they arrive and the
//! line is ignored; the same cap bounds one event's joined data.
//!
//! [`SseDigest`] is what the tap makes of the events: event count, assistant
//! text merged from the deltas, non-JSON `data:` kept raw, usage, model.

use serde_json::Value;

use super::usage::{probe_event, UsageAccumulator};

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: Option<&'a str>,
    pub data: &'a str,
}

/// Line splitter and event assembler with bounded buffers.
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    /// The current, incomplete line (at most `max_line` bytes).
    line: Vec<u8>,
    /// The current line overflowed `max_line`: drop until its end.
    line_dropped: bool,
    /// Last byte seen was a CR (a following LF belongs to it).
    after_cr: bool,
    /// `data:` lines of the current event joined with `\n` (at most `max_line`).
    data: Vec<u8>,
    has_data: bool,
    /// The event's data overflowed: the event is dispatched without data.
    data_dropped: bool,
    event: Option<String>,
    /// Lines dropped because they were too long (for tests and metrics).
    dropped_lines: u64,
}

impl SseParser {
    pub fn new(max_line: usize) -> Self {
        SseParser {
            max_line,
            line: Vec::new(),
            line_dropped: false,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            data_dropped: false,
            event: None,
            dropped_lines: 0,
        }
    }

    /// Bytes held in buffers right now (bounded by `2 * max_line` plus the
    /// event name).
    pub fn buffered(&self) -> usize {
        self.line.capacity() + self.data.capacity() + self.event.as_ref().map_or(0, String::len)
    }

    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    pub fn push(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.append_line(&chunk[..i]);
                    let cr = chunk[i] == b'\r';
                    let mut next = i + 1;
                    if cr {
                        if next < chunk.len() {
                            if chunk[next] == b'\n' {
                                next += 1;
                            }
                        } else {
                            self.after_cr = true;
                        }
                    }
                    self.end_line(on_event);
                    chunk = &chunk[next..];
                }
                None => {
                    self.append_line(chunk);
                    break;
                }
            }
        }
    }

    /// End of stream: an event whose lines were complete but that lacked the
    /// final blank line is still dispatched (a cut stream keeps its last
    /// complete event); a partial last line is discarded.
    pub fn finish(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        self.line.clear();
        self.line_dropped = false;
        self.dispatch(on_event);
    }

    fn append_line(&mut self, bytes: &[u8]) {
        if self.line_dropped {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line {
            self.line_dropped = true;
            self.dropped_lines += 1;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.line_dropped {
            self.line_dropped = false;
            self.line.clear();
            return;
        }
        if self.line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line[0] != b':' {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &b""[..]),
            };
            match field {
                b"data" => {
                    if !self.data_dropped {
                        let sep = usize::from(self.has_data);
                        if self.data.len() + sep + value.len() > self.max_line {
                            self.data_dropped = true;
                            self.dropped_lines += 1;
                            self.data = Vec::new();
                        } else {
                            if self.has_data {
                                self.data.push(b'\n');
                            }
                            self.data.extend_from_slice(value);
                        }
                    }
                    self.has_data = true;
                }
                b"event" => {
                    let v = String::from_utf8_lossy(value);
                    self.event = Some(v.chars().take(256).collect());
                }
                _ => {} // id, retry, unknown fields
            }
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.has_data {
            let text = if self.data_dropped {
                String::new()
            } else {
                String::from_utf8_lossy(&self.data).into_owned()
            };
            on_event(SseEvent {
                event: self.event.as_deref(),
                data: &text,
            });
        }
        self.data.clear();
        self.has_data = false;
        self.data_dropped = false;
        self.event = None;
    }
}

/// What the tap keeps from a stream of events.
#[derive(Debug)]
pub struct SseDigest {
    /// Whether to keep text and raw lines (body logging on).
    capture: bool,
    /// Cap for `text` and for the raw lines together.
    max_capture: usize,
    pub events: u64,
    pub text: String,
    pub raw: Vec<String>,
    raw_bytes: usize,
    /// A raw line was cut: no more are kept (the cap is reached, give or
    /// take a character).
    raw_full: bool,
    pub truncated: bool,
    pub usage: UsageAccumulator,
    pub model: Option<String>,
}

impl SseDigest {
    pub fn new(capture: bool, max_capture: usize) -> Self {
        SseDigest {
            capture,
            max_capture,
            events: 0,
            text: String::new(),
            raw: Vec::new(),
            raw_bytes: 0,
            raw_full: false,
            truncated: false,
            usage: UsageAccumulator::new(),
            model: None,
        }
    }

    /// Bytes held (text and raw lines, with each line's own size).
    pub fn buffered(&self) -> usize {
        self.text.capacity() + self.raw_bytes + self.raw.capacity() * std::mem::size_of::<String>()
    }

    pub fn on_event(&mut self, ev: SseEvent<'_>) {
        self.events += 1;
        let data = ev.data.trim();
        if data == "[DONE]" || data.is_empty() {
            return;
        }
        if !self.capture {
            // Nothing to capture: read usage and model only, skip the rest.
            if let Ok(model) = probe_event(data, &mut self.usage) {
                if self.model.is_none() {
                    self.model = model;
                }
            }
            return;
        }
        match serde_json::from_str::<Value>(data) {
            Ok(v) => {
                self.usage.observe(&v);
                if self.model.is_none() {
                    self.model = stream_model(&v);
                }
                if self.capture {
                    merge_text(&v, &mut |s| self.push_text(s));
                }
            }
            Err(_) => {
                if self.capture {
                    self.push_raw(data);
                }
            }
        }
    }

    fn push_text(&mut self, s: &str) {
        if self.truncated {
            return;
        }
        let room = self.max_capture.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
        } else {
            self.text.push_str(cut_at_char(s, room));
            self.truncated = true;
        }
    }

    fn push_raw(&mut self, s: &str) {
        if self.raw_full {
            self.truncated = true;
            return;
        }
        let room = self.max_capture.saturating_sub(self.raw_bytes);
        if s.len() <= room {
            self.raw_bytes += s.len();
            self.raw.push(s.to_owned());
            return;
        }
        // The first line that does not fit ends the raw capture: without
        // that, a room smaller than the next character (a cut yielding "")
        // would keep an empty line per event, without bound.
        self.truncated = true;
        self.raw_full = true;
        let piece = cut_at_char(s, room);
        if !piece.is_empty() {
            self.raw_bytes += piece.len();
            self.raw.push(piece.to_owned());
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
pub fn cut_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The model named by a stream event, if any.
fn stream_model(v: &Value) -> Option<String> {
    let s = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_owned);
    s(v.get("model"))
        .or_else(|| s(v.get("message").and_then(|m| m.get("model"))))
        .or_else(|| s(v.get("response").and_then(|m| m.get("model"))))
        .or_else(|| s(v.get("modelVersion")))
}

/// Assistant text carried by one stream event, in order.
fn merge_text(v: &Value, push: &mut dyn FnMut(&str)) {
    // OpenAI chat: every choice's delta (n > 1 appends all, in order).
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            if let Some(t) = c
                .get("delta")
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
            {
                push(t);
            }
        }
    }
    match v.get("type").and_then(Value::as_str) {
        // Anthropic.
        Some("content_block_delta") => {
            if let Some(t) = v
                .get("delta")
                .and_then(|d| d.get("text"))
                .and_then(Value::as_str)
            {
                push(t);
            }
        }
        // OpenAI Responses.
        Some("response.output_text.delta") => {
            if let Some(t) = v.get("delta").and_then(Value::as_str) {
                push(t);
            }
        }
        _ => {}
    }
    // Gemini: first candidate's parts.
    if let Some(parts) = v
        .get("candidates")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("content"))
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
    {
        for p in parts {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                push(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn events(input: &[&[u8]], max_line: usize) -> Vec<(Option<String>, String)> {
        let mut p = SseParser::new(max_line);
        let mut out = Vec::new();
        let mut f = |e: SseEvent<'_>| out.push((e.event.map(str::to_owned), e.data.to_owned()));
        for c in input {
            p.push(c, &mut f);
        }
        p.finish(&mut f);
        out
    }

    #[test]
    fn without_capture_events_are_probed_with_the_same_results() {
        let streams: &[&[&str]] = &[
            // OpenAI chat with the final usage chunk
            &[
                r#"{"id":"c","model":"gpt-4o","choices":[{"delta":{"content":"Hi"}}],"usage":null}"#,
                r#"{"id":"c","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
                "[DONE]",
            ],
            // Anthropic: model and input in message_start, output later
            &[
                r#"{"type":"message_start","message":{"model":"claude-x","content":[],"usage":{"input_tokens":7,"output_tokens":1}}}"#,
                r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"a\u00e9"}}"#,
                r#"{"type":"message_delta","usage":{"output_tokens":9}}"#,
            ],
            // OpenAI Responses: model and usage inside `response`
            &[
                r#"{"type":"response.created","response":{"model":"gpt-5","output":[]}}"#,
                r#"{"type":"response.completed","response":{"model":"gpt-5","usage":{"input_tokens":4,"output_tokens":6,"total_tokens":10}}}"#,
            ],
            // Gemini, odd shapes and non-JSON lines
            &[
                "not json",
                r#"{"modelVersion":"gemini-2","usageMetadata":{"promptTokenCount":2,"totalTokenCount":2}}"#,
                r#"[{"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":3,"totalTokenCount":5}}]"#,
                r#""a string""#,
                r#"{"model":5,"message":"x","response":[1]}"#,
            ],
        ];
        for events in streams {
            let mut probed = SseDigest::new(false, 1024);
            let mut reference = (UsageAccumulator::new(), None::<String>);
            for data in *events {
                probed.on_event(SseEvent { event: None, data });
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    reference.0.observe(&v);
                    if reference.1.is_none() {
                        reference.1 = stream_model(&v);
                    }
                }
            }
            assert_eq!(probed.usage.usage(), reference.0.usage(), "{events:?}");
            assert_eq!(probed.model, reference.1, "{events:?}");
            assert!(probed.usage.usage().is_some(), "{events:?}");
        }
    }

    #[test]
    fn lines_events_crlf_and_multi_data() {
        let s: &[u8] =
            b": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\ndata: x\rdata: y\r\rid: 3\n\n";
        let want = vec![
            (Some("a".to_owned()), "one\ntwo".to_owned()),
            (None, "x\ny".to_owned()),
        ];
        assert_eq!(events(&[s], 1024), want);
        // every two-way split, including between CR and LF
        for i in 0..=s.len() {
            assert_eq!(events(&[&s[..i], &s[i..]], 1024), want, "split at {i}");
        }
        // byte by byte
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(events(&bytes, 1024), want);
    }

    #[test]
    fn over_long_line_is_dropped_not_buffered() {
        let mut p = SseParser::new(100);
        let mut got = Vec::new();
        let mut f = |e: SseEvent<'_>| got.push(e.data.to_owned());
        p.push(b"data: ", &mut f);
        for _ in 0..1000 {
            p.push(&[b'x'; 1000], &mut f);
            assert!(p.buffered() <= 200);
        }
        p.push(b"\n\ndata: ok\n\n", &mut f);
        p.finish(&mut f);
        assert_eq!(got, vec!["ok".to_owned()]);
        assert_eq!(p.dropped_lines(), 1);
    }

    #[test]
    fn raw_lines_stay_bounded_when_the_room_left_is_inside_a_character() {
        // 1 to 3 bytes left, then events starting with multi-byte
        // characters: each cut is empty, and must not be kept (or counted).
        for left in 1..=3 {
            let mut d = SseDigest::new(true, 64);
            d.on_event(SseEvent {
                event: None,
                data: &"a".repeat(64 - left),
            });
            for i in 0..10_000 {
                let data = if i % 2 == 0 {
                    "日本語 not json"
                } else {
                    "🙂 nope"
                };
                d.on_event(SseEvent { event: None, data });
            }
            // The long line, and at most the one cut piece ("日" fits in 3).
            assert!(d.raw.len() <= 2, "left {left}: {} lines kept", d.raw.len());
            assert!(d.raw.iter().all(|l| !l.is_empty()));
            assert!(d.raw.iter().map(String::len).sum::<usize>() <= 64);
            assert!(d.buffered() < 1024, "left {left}: {} bytes", d.buffered());
            assert!(d.truncated);
            assert_eq!(d.events, 10_001);
        }
    }

    #[test]
    fn cut_at_char_respects_utf8() {
        assert_eq!(cut_at_char("héllo", 2), "h");
        assert_eq!(cut_at_char("héllo", 3), "hé");
        assert_eq!(cut_at_char("abc", 10), "abc");
    }
}
