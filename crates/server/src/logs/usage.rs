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

/// The counters of one usage object, under every provider's names; each is
/// `None` unless present as an unsigned integer (what `Value::as_u64`
/// gives). Read from a `Value` ([`Counters::from_value`]) or straight from
/// the JSON ([`Counters`]' `Deserialize`), with the same result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Counters {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`: `Some(_)` when the details
    /// object is there (the inner `None`: no count in it).
    prompt_details_cached: Option<Option<u64>>,
    input_details_cached: Option<Option<u64>>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    // Gemini `usageMetadata`.
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    total_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
}

impl Counters {
    /// `None` when `v` is not an object.
    pub(super) fn from_value(v: &Value) -> Option<Counters> {
        if !v.is_object() {
            return None;
        }
        let details = |key: &str| v.get(key).map(|d| num(d, "cached_tokens"));
        Some(Counters {
            prompt_tokens: num(v, "prompt_tokens"),
            completion_tokens: num(v, "completion_tokens"),
            total_tokens: num(v, "total_tokens"),
            prompt_details_cached: details("prompt_tokens_details"),
            input_details_cached: details("input_tokens_details"),
            input_tokens: num(v, "input_tokens"),
            output_tokens: num(v, "output_tokens"),
            cache_creation_input_tokens: num(v, "cache_creation_input_tokens"),
            cache_read_input_tokens: num(v, "cache_read_input_tokens"),
            prompt_token_count: num(v, "promptTokenCount"),
            candidates_token_count: num(v, "candidatesTokenCount"),
            thoughts_token_count: num(v, "thoughtsTokenCount"),
            total_token_count: num(v, "totalTokenCount"),
            cached_content_token_count: num(v, "cachedContentTokenCount"),
        })
    }
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
                let counters = |u: Option<&Value>| u.and_then(Counters::from_value);
                if let Some(u) = counters(v.get("usage")) {
                    self.merge_usage_object(&u);
                }
                // Anthropic `message_start`.
                if let Some(u) = counters(v.get("message").and_then(|m| m.get("usage"))) {
                    self.merge_usage_object(&u);
                }
                // OpenAI Responses stream: `response.completed` (and
                // `response.incomplete` / `response.failed`).
                if let Some(u) = counters(v.get("response").and_then(|r| r.get("usage"))) {
                    self.merge_usage_object(&u);
                }
                // Gemini.
                if let Some(u) = counters(v.get("usageMetadata")) {
                    self.merge_gemini(&u);
                }
            }
            _ => {}
        }
    }

    /// Merges an OpenAI / Anthropic usage object (OpenAI streams send
    /// `"usage": null` on every chunk but the last: not an object, never
    /// merged).
    pub(super) fn merge_usage_object(&mut self, u: &Counters) {
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
        set(&mut self.prompt, u.prompt_tokens);
        set(&mut self.completion, u.completion_tokens);
        set(&mut self.total, u.total_tokens);
        set(
            &mut self.cached,
            u.prompt_details_cached.or(u.input_details_cached).flatten(),
        );
        // Anthropic, and OpenAI Responses (same names, no cache_* fields).
        set(&mut self.input, u.input_tokens);
        set(&mut self.completion, u.output_tokens);
        set(&mut self.cache_creation, u.cache_creation_input_tokens);
        set(&mut self.cache_read, u.cache_read_input_tokens);
        set(&mut self.cached, u.cache_read_input_tokens);
        if !any {
            self.seen = before;
        }
    }

    pub(super) fn merge_gemini(&mut self, u: &Counters) {
        self.seen = true;
        if let Some(p) = u.prompt_token_count {
            self.prompt = Some(p);
        }
        let (cand, thoughts) = (u.candidates_token_count, u.thoughts_token_count);
        if cand.is_some() || thoughts.is_some() {
            self.completion = Some(cand.unwrap_or(0).saturating_add(thoughts.unwrap_or(0)));
        }
        if let Some(t) = u.total_token_count {
            self.total = Some(t);
        }
        if let Some(c) = u.cached_content_token_count {
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
    usage: Option<Counters>,
    message_usage: Option<Counters>,
    response_usage: Option<Counters>,
    /// `message.model` (Anthropic `message_start`), `response.model`
    /// (OpenAI Responses events): only stream events name the model there.
    message_model: Option<String>,
    response_model: Option<String>,
    usage_metadata: Option<Counters>,
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

/// Declares an enum of the JSON keys a visitor looks at, deserialized
/// straight from the parser's bytes (no allocation; escaped keys work
/// too), every other key being `Other`.
macro_rules! key_enum {
    ($name:ident { $($variant:ident = $json:literal),* $(,)? }) => {
        enum $name { $($variant,)* Other }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an object key")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, key: &[u8]) -> Result<$name, E> {
                        $(if key == $json.as_bytes() {
                            return Ok($name::$variant);
                        })*
                        Ok($name::Other)
                    }
                    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<$name, E> {
                        self.visit_bytes(key.as_bytes())
                    }
                }
                // As bytes: serde_json then skips the UTF-8 check of every
                // key (escapes are still undone), which was the largest part
                // of reading a key.
                d.deserialize_bytes(V)
            }
        }
    };
}

key_enum!(ProbeKey {
    Model = "model",
    ModelVersion = "modelVersion",
    Usage = "usage",
    UsageMetadata = "usageMetadata",
    Message = "message",
    Response = "response",
});

key_enum!(CounterKey {
    PromptTokens = "prompt_tokens",
    CompletionTokens = "completion_tokens",
    TotalTokens = "total_tokens",
    PromptTokensDetails = "prompt_tokens_details",
    InputTokensDetails = "input_tokens_details",
    InputTokens = "input_tokens",
    OutputTokens = "output_tokens",
    CacheCreationInputTokens = "cache_creation_input_tokens",
    CacheReadInputTokens = "cache_read_input_tokens",
    PromptTokenCount = "promptTokenCount",
    CandidatesTokenCount = "candidatesTokenCount",
    ThoughtsTokenCount = "thoughtsTokenCount",
    TotalTokenCount = "totalTokenCount",
    CachedContentTokenCount = "cachedContentTokenCount",
});

key_enum!(DetailsKey {
    CachedTokens = "cached_tokens",
});

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
        while let Some(key) = map.next_key::<ProbeKey>()? {
            match key {
                ProbeKey::Model => p.model = map.next_value::<AnyJson<String>>()?.0,
                ProbeKey::ModelVersion => p.model_version = map.next_value::<AnyJson<String>>()?.0,
                ProbeKey::Usage => p.usage = map.next_value::<AnyJson<Counters>>()?.0,
                ProbeKey::UsageMetadata => {
                    p.usage_metadata = map.next_value::<AnyJson<Counters>>()?.0;
                }
                ProbeKey::Message => {
                    let n = map.next_value::<AnyJson<Nested>>()?.0.unwrap_or_default();
                    (p.message_usage, p.message_model) = (n.usage, n.model);
                }
                ProbeKey::Response => {
                    let n = map.next_value::<AnyJson<Nested>>()?.0.unwrap_or_default();
                    (p.response_usage, p.response_model) = (n.usage, n.model);
                }
                ProbeKey::Other => {
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
    usage: Option<Counters>,
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
                while let Some(key) = map.next_key::<ProbeKey>()? {
                    match key {
                        ProbeKey::Usage => n.usage = map.next_value::<AnyJson<Counters>>()?.0,
                        ProbeKey::Model => n.model = map.next_value::<AnyJson<String>>()?.0,
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

/// Reads a usage object's counters like [`Counters::from_value`] does from
/// its `Value`: a later duplicate key wins, a count that is not an
/// unsigned integer is `None`.
impl<'de> serde::Deserialize<'de> for Counters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Counters;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Counters, A::Error> {
                let mut c = Counters::default();
                while let Some(key) = map.next_key::<CounterKey>()? {
                    let slot = match key {
                        CounterKey::PromptTokensDetails => {
                            c.prompt_details_cached =
                                Some(map.next_value::<AnyJson<Details>>()?.0.and_then(|d| d.0));
                            continue;
                        }
                        CounterKey::InputTokensDetails => {
                            c.input_details_cached =
                                Some(map.next_value::<AnyJson<Details>>()?.0.and_then(|d| d.0));
                            continue;
                        }
                        CounterKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                        CounterKey::PromptTokens => &mut c.prompt_tokens,
                        CounterKey::CompletionTokens => &mut c.completion_tokens,
                        CounterKey::TotalTokens => &mut c.total_tokens,
                        CounterKey::InputTokens => &mut c.input_tokens,
                        CounterKey::OutputTokens => &mut c.output_tokens,
                        CounterKey::CacheCreationInputTokens => &mut c.cache_creation_input_tokens,
                        CounterKey::CacheReadInputTokens => &mut c.cache_read_input_tokens,
                        CounterKey::PromptTokenCount => &mut c.prompt_token_count,
                        CounterKey::CandidatesTokenCount => &mut c.candidates_token_count,
                        CounterKey::ThoughtsTokenCount => &mut c.thoughts_token_count,
                        CounterKey::TotalTokenCount => &mut c.total_token_count,
                        CounterKey::CachedContentTokenCount => &mut c.cached_content_token_count,
                    };
                    *slot = map.next_value::<AnyU64>()?.0;
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

/// `cached_tokens` of a `*_tokens_details` object.
struct Details(Option<u64>);

impl<'de> serde::Deserialize<'de> for Details {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Details;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a details object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Details, A::Error> {
                let mut cached = None;
                while let Some(key) = map.next_key::<DetailsKey>()? {
                    match key {
                        DetailsKey::CachedTokens => cached = map.next_value::<AnyU64>()?.0,
                        DetailsKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Details(cached))
            }
        }
        d.deserialize_map(V)
    }
}

/// Any JSON value: `Some` for an unsigned integer (like `Value::as_u64`),
/// `None` for anything else (skipped, not built).
struct AnyU64(Option<u64>);

impl<'de> serde::Deserialize<'de> for AnyU64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AnyU64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E>(self, n: u64) -> Result<AnyU64, E> {
                Ok(AnyU64(Some(n)))
            }
            // A `Value` keeps a non-negative i64 as an unsigned number.
            fn visit_i64<E>(self, n: i64) -> Result<AnyU64, E> {
                Ok(AnyU64(u64::try_from(n).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<AnyU64, E> {
                Ok(AnyU64(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<AnyU64, E> {
                Ok(AnyU64(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<AnyU64, E> {
                Ok(AnyU64(None))
            }
            fn visit_unit<E>(self) -> Result<AnyU64, E> {
                Ok(AnyU64(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<AnyU64, A::Error> {
                serde::de::IgnoredAny::deserialize(serde::de::value::MapAccessDeserializer::new(
                    map,
                ))
                .map(|_| AnyU64(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<AnyU64, A::Error> {
                serde::de::IgnoredAny::deserialize(serde::de::value::SeqAccessDeserializer::new(
                    seq,
                ))
                .map(|_| AnyU64(None))
            }
        }
        d.deserialize_any(V)
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

/// Objects read with their own `Deserialize` (any other shape is `None`).
macro_rules! from_any_json_object {
    ($($t:ty),*) => {$(
        impl<'de> FromAnyJson<'de> for $t {
            fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                <$t>::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
    )*};
}

from_any_json_object!(Nested, Counters, Details);

impl<'de> FromAnyJson<'de> for ResponseProbe {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        ProbeVisitor.visit_map(map).map(Some)
    }
}

/// Any JSON value: `Some` when it was an object `T` could be read from,
/// `None` for anything else (skipped, not built).
struct AnyJson<T>(Option<T>);

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
    fn counters_read_from_json_match_the_value_reading() {
        for text in [
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#,
            // Counts that are not unsigned integers count as absent.
            r#"{"prompt_tokens":-0,"completion_tokens":0,"total_tokens":18446744073709551615}"#,
            r#"{"prompt_tokens":"1","completion_tokens":-2,"total_tokens":3.0,"input_tokens":{"n":1},"output_tokens":[4],"cache_read_input_tokens":null,"cache_creation_input_tokens":true}"#,
            // Details: present without a count, present as null, or absent.
            r#"{"prompt_tokens_details":{},"input_tokens_details":{"cached_tokens":5}}"#,
            r#"{"prompt_tokens_details":null,"input_tokens_details":{"cached_tokens":5}}"#,
            r#"{"input_tokens_details":{"cached_tokens":5,"other":[1,{"a":2}]}}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":"x"}}"#,
            // A later duplicate wins; escaped key names are the same keys.
            r#"{"total_tokens":1,"total_tokens":2,"t\u006ftal_tokens":3}"#,
            r#"{"promptTokenCount":8,"candidatesTokenCount":3,"thoughtsTokenCount":2,"totalTokenCount":13,"cachedContentTokenCount":4,"x":"y"}"#,
            r#"{}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let read: Counters = serde_json::from_str(text).unwrap();
            assert_eq!(Some(read), Counters::from_value(&value), "{text}");
        }
        assert_eq!(Counters::from_value(&json!([1])), None);
        assert_eq!(Counters::from_value(&Value::Null), None);
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
