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

use serde::de::Visitor as _;
use serde::Deserialize as _;
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

    pub(super) fn merge_usage_object(&mut self, u: &Value) {
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

    pub(super) fn merge_gemini(&mut self, u: &Value) {
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

/// Usage of a whole (non-stream) JSON response body already parsed: the
/// reference [`probe_response`] is tested against.
#[cfg(test)]
pub fn usage_from_json(v: &Value) -> Option<Usage> {
    let mut acc = UsageAccumulator::new();
    acc.observe(v);
    acc.usage()
}

/// Usage and model of a whole (non-stream) JSON response body, read
/// without building the rest of it: only the keys [`UsageAccumulator::observe`]
/// looks at become values, everything else (`choices`, `content`, …) is
/// skipped by the parser. Same answers as parsing into a `Value` first, at
/// a fraction of the cost (this runs on every logged response).
pub fn probe_response(body: &[u8]) -> (Option<Usage>, Option<String>) {
    let mut acc = UsageAccumulator::new();
    let first = body.iter().find(|c| !c.is_ascii_whitespace());
    let model = if first == Some(&b'[') {
        // Gemini without `alt=sse`: an array of response objects.
        let Ok(items) = serde_json::from_slice::<Vec<AnyJson<ResponseProbe>>>(body) else {
            return (None, None);
        };
        for p in items.iter().filter_map(|i| i.0.as_ref()) {
            p.feed(&mut acc);
        }
        items
            .first()
            .and_then(|i| i.0.as_ref())
            .and_then(ResponseProbe::model)
    } else {
        let Ok(p) = serde_json::from_slice::<ResponseProbe>(body) else {
            return (None, None);
        };
        p.feed(&mut acc);
        p.model()
    };
    (acc.usage(), model)
}

/// One stream event's data, read like [`probe_response`]: its usage merged
/// into `acc`; returns the model the event names (top level, then
/// `message.model`, `response.model`, Gemini `modelVersion`), or `Err` when
/// the data is not JSON. The same answers as parsing the event into a
/// `Value` for [`UsageAccumulator::observe`], for when no text is captured.
pub fn probe_event(data: &str, acc: &mut UsageAccumulator) -> serde_json::Result<Option<String>> {
    if data.trim_start().starts_with('[') {
        let items: Vec<AnyJson<ResponseProbe>> = serde_json::from_str(data)?;
        for p in items.iter().filter_map(|i| i.0.as_ref()) {
            p.feed(acc);
        }
        return Ok(None);
    }
    let p: AnyJson<ResponseProbe> = serde_json::from_str(data)?;
    let Some(p) = p.0 else { return Ok(None) };
    p.feed(acc);
    Ok(p.model
        .or(p.message_model)
        .or(p.response_model)
        .or(p.model_version))
}

/// The keys of a response object that carry usage or the model.
#[derive(Default)]
struct ResponseProbe {
    model: Option<String>,
    model_version: Option<String>,
    usage: Option<Value>,
    message_usage: Option<Value>,
    response_usage: Option<Value>,
    /// `message.model` (Anthropic `message_start`), `response.model`
    /// (OpenAI Responses events): only stream events name the model there.
    message_model: Option<String>,
    response_model: Option<String>,
    usage_metadata: Option<Value>,
}

impl ResponseProbe {
    /// In the order [`UsageAccumulator::observe`] merges them.
    fn feed(&self, acc: &mut UsageAccumulator) {
        for u in [&self.usage, &self.message_usage, &self.response_usage]
            .into_iter()
            .flatten()
        {
            acc.merge_usage_object(u);
        }
        if let Some(u) = &self.usage_metadata {
            acc.merge_gemini(u);
        }
    }

    fn model(&self) -> Option<String> {
        self.model.clone().or_else(|| self.model_version.clone())
    }
}

/// Any JSON value: `Some` when it was an object `T` could be read from,
/// `None` for anything else (skipped, not built).
struct AnyJson<T>(Option<T>);

impl<'de> serde::Deserialize<'de> for ResponseProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ProbeVisitor)
    }
}

struct ProbeVisitor;

impl<'de> serde::de::Visitor<'de> for ProbeVisitor {
    type Value = ResponseProbe;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<ResponseProbe, A::Error> {
        use serde::de::IgnoredAny;
        let mut p = ResponseProbe::default();
        // A later duplicate key wins, as in a `Value`.
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "model" => p.model = map.next_value::<AnyJson<String>>()?.0,
                "modelVersion" => p.model_version = map.next_value::<AnyJson<String>>()?.0,
                "usage" => p.usage = Some(map.next_value()?),
                "usageMetadata" => p.usage_metadata = Some(map.next_value()?),
                "message" => {
                    let n = map.next_value::<AnyJson<Nested>>()?.0.unwrap_or_default();
                    (p.message_usage, p.message_model) = (n.usage, n.model);
                }
                "response" => {
                    let n = map.next_value::<AnyJson<Nested>>()?.0.unwrap_or_default();
                    (p.response_usage, p.response_model) = (n.usage, n.model);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }
}

/// The `usage` and `model` of an object (Anthropic `message`, OpenAI
/// Responses `response`).
#[derive(Default)]
struct Nested {
    usage: Option<Value>,
    model: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Nested {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Nested;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Nested, A::Error> {
                let mut n = Nested::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "usage" => n.usage = Some(map.next_value()?),
                        "model" => n.model = map.next_value::<AnyJson<String>>()?.0,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(n)
            }
        }
        d.deserialize_map(V)
    }
}

/// The types [`AnyJson`] can hold: read from their own JSON shape, and
/// every other shape skipped.
trait FromAnyJson<'de>: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error>;
}

impl<'de> FromAnyJson<'de> for String {
    fn from_str(s: &str) -> Option<Self> {
        Some(s.to_owned())
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        serde::de::IgnoredAny::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            .map(|_| None)
    }
}

impl<'de> FromAnyJson<'de> for Nested {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Nested::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
    }
}

impl<'de> FromAnyJson<'de> for ResponseProbe {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        ProbeVisitor.visit_map(map).map(Some)
    }
}

impl<'de, T: FromAnyJson<'de>> serde::Deserialize<'de> for AnyJson<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: FromAnyJson<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = AnyJson<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<AnyJson<T>, E> {
                Ok(AnyJson(T::from_str(s)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AnyJson<T>, A::Error> {
                T::from_map(map).map(AnyJson)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<AnyJson<T>, A::Error> {
                serde::de::IgnoredAny::deserialize(serde::de::value::SeqAccessDeserializer::new(
                    seq,
                ))
                .map(|_| AnyJson(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<AnyJson<T>, E> {
                Ok(AnyJson(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<AnyJson<T>, E> {
                Ok(AnyJson(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<AnyJson<T>, E> {
                Ok(AnyJson(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<AnyJson<T>, E> {
                Ok(AnyJson(None))
            }
            fn visit_unit<E>(self) -> Result<AnyJson<T>, E> {
                Ok(AnyJson(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    /// Usage from the parsed `Value` (the reference), asserting that the
    /// probe over the same bytes finds the same usage and model.
    fn checked(v: &Value) -> Option<Usage> {
        let reference = usage_from_json(v);
        let first = match v {
            Value::Array(a) => a.first(),
            other => Some(other),
        };
        let s = |k: &str| {
            first
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let model = s("model").or_else(|| s("modelVersion"));
        let bytes = serde_json::to_vec(v).unwrap();
        assert_eq!(probe_response(&bytes), (reference.clone(), model), "{v}");
        reference
    }

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
        assert_eq!(checked(&v), u(20, 7, 27, Some(16)));
    }

    #[test]
    fn openai_responses_json() {
        let v = json!({"object":"response","usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":4},"total_tokens":39}});
        assert_eq!(checked(&v), u(30, 9, 39, Some(0)));
    }

    #[test]
    fn anthropic_json_counts_cache_parts_in_prompt() {
        let v = json!({"type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":5}});
        assert_eq!(checked(&v), u(1110, 5, 1115, Some(1000)));
    }

    #[test]
    fn gemini_json_and_array_take_last_usage_metadata() {
        let one = json!({"candidates":[],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"thoughtsTokenCount":2,"totalTokenCount":13,"cachedContentTokenCount":4}});
        assert_eq!(checked(&one), u(8, 5, 13, Some(4)));
        let arr = json!([
            {"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}},
            {"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":1,"totalTokenCount":9}},
            {"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":6,"totalTokenCount":14}}
        ]);
        assert_eq!(checked(&arr), u(8, 6, 14, None));
    }

    #[test]
    fn no_usage_and_null_usage_are_none() {
        assert_eq!(checked(&json!({"choices":[]})), None);
        assert_eq!(checked(&json!({"usage":null})), None);
        assert_eq!(checked(&json!({"usage":{}})), None);
        assert_eq!(checked(&json!("text")), None);
    }

    #[test]
    fn probe_matches_the_value_parse_on_odd_shapes() {
        for v in [
            json!({"model":7,"modelVersion":"g-1","usage":{"total_tokens":3}}),
            json!({"model":{"x":1},"message":"text","response":[1,2]}),
            json!({"message":{"content":[{"text":"a\"b\u{e9}"}],"usage":{"input_tokens":4,"output_tokens":2}}}),
            json!({"type":"response.completed","response":{"output":[{"x":[null,true,1.5]}],"usage":{"input_tokens":3,"output_tokens":1,"total_tokens":4}}}),
            json!(["x", {"model":"m","usageMetadata":{"totalTokenCount":2}}]),
            json!([{"modelVersion":"v","usageMetadata":null}, 5]),
            json!([]),
            json!(null),
            json!({"usage":{"prompt_tokens":1},"model":"a","choices":[{"message":{"usage":{"prompt_tokens":99}}}]}),
        ] {
            checked(&v);
        }
        // A later duplicate key wins, as in a `Value`.
        assert_eq!(
            probe_response(br#"{"model":"a","usage":{"total_tokens":1},"model":"b","usage":{"total_tokens":2}}"#),
            (u(0, 0, 2, None), Some("b".into()))
        );
        // Not JSON, or cut short: nothing.
        assert_eq!(
            probe_response(b"{\"usage\":{\"total_tokens\":1}"),
            (None, None)
        );
        assert_eq!(probe_response(b"plain"), (None, None));
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
