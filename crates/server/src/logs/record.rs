//! The one log record: what happened to one request, with every secret
//! already removed. Documented field by field in `docs/logging.md`.
//!
//! Built once per request by the finish hook and handed to the sinks as an
//! `Arc<LogRecord>`: sinks never see the raw request.

use serde::{Deserialize, Serialize};

/// LLM token usage as the provider reported it (JSON body or stream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's cache, where reported
    /// (OpenAI `prompt_tokens_details.cached_tokens`, Anthropic
    /// `cache_read_input_tokens`, Gemini `cachedContentTokenCount`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

/// A captured body (only when body logging is on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedBody {
    /// UTF-8 text (for SSE: the assistant text merged from the deltas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Base64 of the first bytes, for non-text bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// True when the capture cap cut the body.
    pub truncated: bool,
    /// For SSE bodies: how many events passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_events: Option<u64>,
    /// For SSE bodies: `data:` lines that were not JSON, kept raw (capped too).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sse_raw: Vec<String>,
    /// Why no bytes were kept (then `text` and `base64` are unset): the body
    /// was in a content coding the relay could not decode, so secrets in it
    /// could not be scrubbed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted: Option<String>,
}

impl CapturedBody {
    /// The capture of an encoded body the relay could not decode.
    pub fn undecodable() -> CapturedBody {
        CapturedBody {
            omitted: Some("undecodable content-encoding".to_string()),
            ..CapturedBody::default()
        }
    }
}

/// One request, start to finish.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The `x-request-id` the client got.
    pub request_id: String,
    /// The `x-request-id` the client sent, when it was not adopted (the
    /// client is not a trusted proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// RFC 3339 UTC, when the request arrived.
    pub started_at: String,
    pub duration_ms: u64,
    /// First byte of the provider's response head, from `started_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<u64>,
    pub client_ip: String,
    pub method: String,
    /// Path with the token removed.
    pub path: String,
    /// Query with every credential parameter removed.
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Key id the token was minted under (v2), or the legacy key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_requested: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sent: Option<String>,
    /// Status the client got.
    pub status: u16,
    /// Our error code when the relay answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The response was `text/event-stream`.
    pub stream: bool,
    /// The client went away before the response ended.
    pub client_aborted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<CapturedBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<CapturedBody>,
    /// Redacted request headers (only when body logging is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Vec<(String, String)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Vec<(String, String)>>,
    /// The record's JSON, written once for every sink that needs it (see
    /// [`LogRecord::json`]); not part of the record itself.
    #[serde(skip)]
    pub serialized: JsonCache,
}

impl LogRecord {
    /// The record as compact JSON, serialized on first use and shared by
    /// every sink after that (webhook, database, spool, console). Call it
    /// only on a finished record: later changes to the fields are not seen.
    pub fn json(&self) -> &str {
        self.serialized.0.get_or_init(|| {
            // Sized once (growing from empty cost ~8 reallocations and
            // copies per record). Plain data (strings, numbers, maps with
            // string keys): writing it cannot fail; an empty object is the
            // harmless fallback.
            let mut out = Vec::with_capacity(super::pipeline::estimated_size(self));
            match serde_json::to_writer(&mut out, self).map(|()| String::from_utf8(out)) {
                Ok(Ok(json)) => json,
                _ => "{}".to_owned(),
            }
        })
    }
}

/// A lazily filled copy of a record's JSON. Invisible to comparisons and
/// clones (a clone starts empty) so records compare by their fields only.
#[derive(Default)]
pub struct JsonCache(std::sync::OnceLock<String>);

impl Clone for JsonCache {
    fn clone(&self) -> Self {
        JsonCache::default()
    }
}

impl PartialEq for JsonCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for JsonCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonCache")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn json_is_the_serialized_record_and_written_once() {
        let r = LogRecord {
            request_id: "req_1".into(),
            status: 200,
            usage: Some(Usage {
                total_tokens: 3,
                ..Usage::default()
            }),
            ..LogRecord::default()
        };
        let json = r.json();
        assert_eq!(json, serde_json::to_string(&r).unwrap());
        assert!(!json.contains("serialized"));
        // The same allocation the second time.
        assert!(std::ptr::eq(json, r.json()));
        // Clones and comparisons look at the fields only.
        let c = r.clone();
        assert_eq!(c, r);
        assert_eq!(c.json(), json);
        let back: LogRecord = serde_json::from_str(json).unwrap();
        assert_eq!(back, r);
    }
}
