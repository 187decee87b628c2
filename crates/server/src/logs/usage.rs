//! Token usage from provider responses, JSON bodies and stream events alike.
//!
//! Every JSON value the tap sees (a whole response body, or one SSE event's
//! data) goes through [`UsageAccumulator::observe`]. It finds the usage
//! objects of the three provider families wherever they sit, normalises each
//! to prompt / completion / total / cached counts, and merges them field by
//! field: a field reported later replaces the earlier value (provider
//! counters are cumulative), a field not reported keeps it. This gives the
//! documented rule for streams cut mid-way for free: whatever was reported
//! so far. See `docs/logging.md`, "Usage".

use serde_json::Value;

use super::record::Usage;

/// Merged usage seen so far. Raw counters are kept separately so that the
/// Anthropic parts (input, cache creation, cache read) can arrive in
/// different events.
#[derive(Debug, Default, Clone)]
pub struct UsageAccumulator {
    /// OpenAI chat `prompt_tokens`, Gemini `promptTokenCount`.
    prompt: Option<u64>,
    /// Anthropic / OpenAI Responses `input_tokens`.
    input: Option<u64>,
    /// Anthropic `cache_creation_input_tokens`.
    cache_creation: Option<u64>,
    /// Anthropic `cache_read_input_tokens`.
    cache_read: Option<u64>,
    completion: Option<u64>,
    total: Option<u64>,
    /// OpenAI `*_tokens_details.cached_tokens`, Gemini `cachedContentTokenCount`.
    cached: Option<u64>,
    seen: bool,
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

impl UsageAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for usage anywhere a supported provider puts it in `v`: a
    /// response object, a stream event, or an array of them (Gemini
    /// `streamGenerateContent` without `alt=sse`).
    pub fn observe(&mut self, v: &Value) {
        match v {
            Value::Array(items) => {
                for item in items {
                    if item.is_object() {
                        self.observe(item);
                    }
                }
            }
            Value::Object(_) => {
                // OpenAI chat / Responses (non-stream), Anthropic JSON and
                // `message_delta`.
                if let Some(u) = v.get("usage") {
                    self.merge_usage_object(u);
                }
                // Anthropic `message_start`.
                if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                    self.merge_usage_object(u);
                }
                // OpenAI Responses stream: `response.completed` (and
                // `response.incomplete` / `response.failed`).
                if let Some(u) = v.get("response").and_then(|r| r.get("usage")) {
                    self.merge_usage_object(u);
                }
                // Gemini.
                if let Some(u) = v.get("usageMetadata") {
                    self.merge_gemini(u);
                }
            }
            _ => {}
        }
    }

    fn merge_usage_object(&mut self, u: &Value) {
        if !u.is_object() {
            return; // OpenAI streams send `"usage": null` on every chunk but the last
        }
        let before = self.seen;
        self.seen = true;
        let mut any = false;
        let mut set = |slot: &mut Option<u64>, val: Option<u64>| {
            if let Some(x) = val {
                *slot = Some(x);
                any = true;
            }
        };
        // OpenAI chat completions.
        set(&mut self.prompt, num(u, "prompt_tokens"));
        set(&mut self.completion, num(u, "completion_tokens"));
        set(&mut self.total, num(u, "total_tokens"));
        let details_cached = u
            .get("prompt_tokens_details")
            .or_else(|| u.get("input_tokens_details"))
            .and_then(|d| num(d, "cached_tokens"));
        set(&mut self.cached, details_cached);
        // Anthropic, and OpenAI Responses (same names, no cache_* fields).
        set(&mut self.input, num(u, "input_tokens"));
        set(&mut self.completion, num(u, "output_tokens"));
        set(
            &mut self.cache_creation,
            num(u, "cache_creation_input_tokens"),
        );
        let cache_read = num(u, "cache_read_input_tokens");
        set(&mut self.cache_read, cache_read);
        set(&mut self.cached, cache_read);
        if !any {
            self.seen = before;
        }
    }

    fn merge_gemini(&mut self, u: &Value) {
        if !u.is_object() {
            return;
        }
        self.seen = true;
        if let Some(p) = num(u, "promptTokenCount") {
            self.prompt = Some(p);
        }
        let cand = num(u, "candidatesTokenCount");
        let thoughts = num(u, "thoughtsTokenCount");
        if cand.is_some() || thoughts.is_some() {
            self.completion = Some(cand.unwrap_or(0).saturating_add(thoughts.unwrap_or(0)));
        }
        if let Some(t) = num(u, "totalTokenCount") {
            self.total = Some(t);
        }
        if let Some(c) = num(u, "cachedContentTokenCount") {
            self.cached = Some(c);
        }
    }

    /// True once any usage object was seen.
    pub fn seen(&self) -> bool {
        self.seen
    }

    /// The normalised usage, or `None` when no usage was reported.
    ///
    /// - prompt = `prompt_tokens` / `promptTokenCount`, else the sum of
    ///   `input_tokens`, `cache_creation_input_tokens` and
    ///   `cache_read_input_tokens` (Anthropic reports them apart; we count
    ///   every input token the model read, as OpenAI and Gemini do).
    /// - total = reported total, else prompt + completion.
    pub fn usage(&self) -> Option<Usage> {
        if !self.seen {
            return None;
        }
        let prompt = match self.prompt {
            Some(p) => p,
            None => self
                .input
                .unwrap_or(0)
                .saturating_add(self.cache_creation.unwrap_or(0))
                .saturating_add(self.cache_read.unwrap_or(0)),
        };
        let completion = self.completion.unwrap_or(0);
        let total = self
            .total
            .unwrap_or_else(|| prompt.saturating_add(completion));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
            cached_tokens: self.cached,
        })
    }
}

/// Usage of a whole (non-stream) JSON response body.
pub fn usage_from_json(v: &Value) -> Option<Usage> {
    let mut acc = UsageAccumulator::new();
    acc.observe(v);
    acc.usage()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn u(p: u64, c: u64, t: u64, cached: Option<u64>) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
            cached_tokens: cached,
        })
    }

    #[test]
    fn openai_chat_json() {
        let v = json!({"id":"x","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27,"prompt_tokens_details":{"cached_tokens":16}}});
        assert_eq!(usage_from_json(&v), u(20, 7, 27, Some(16)));
    }

    #[test]
    fn openai_responses_json() {
        let v = json!({"object":"response","usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":4},"total_tokens":39}});
        assert_eq!(usage_from_json(&v), u(30, 9, 39, Some(0)));
    }

    #[test]
    fn anthropic_json_counts_cache_parts_in_prompt() {
        let v = json!({"type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":5}});
        assert_eq!(usage_from_json(&v), u(1110, 5, 1115, Some(1000)));
    }

    #[test]
    fn gemini_json_and_array_take_last_usage_metadata() {
        let one = json!({"candidates":[],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"thoughtsTokenCount":2,"totalTokenCount":13,"cachedContentTokenCount":4}});
        assert_eq!(usage_from_json(&one), u(8, 5, 13, Some(4)));
        let arr = json!([
            {"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}},
            {"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":1,"totalTokenCount":9}},
            {"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":6,"totalTokenCount":14}}
        ]);
        assert_eq!(usage_from_json(&arr), u(8, 6, 14, None));
    }

    #[test]
    fn no_usage_and_null_usage_are_none() {
        assert_eq!(usage_from_json(&json!({"choices":[]})), None);
        assert_eq!(usage_from_json(&json!({"usage":null})), None);
        assert_eq!(usage_from_json(&json!({"usage":{}})), None);
        assert_eq!(usage_from_json(&json!("text")), None);
    }

    #[test]
    fn anthropic_stream_cut_after_message_start_keeps_input() {
        let mut acc = UsageAccumulator::new();
        acc.observe(&json!({"type":"message_start","message":{"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}));
        assert_eq!(acc.usage(), u(30, 1, 31, Some(5)));
        acc.observe(&json!({"type":"message_delta","usage":{"output_tokens":12}}));
        assert_eq!(acc.usage(), u(30, 12, 42, Some(5)));
    }
}
