//! Private JSON helpers: a duplicate-rejecting object parser, a reader of
//! one string member as `JSON.parse` reads it, and the canonical
//! string/value writer used for minting.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, Visitor,
};
use serde_json::value::RawValue;
use serde_json::Value;

/// A top-level JSON object in document order. Parsing fails when the
/// input is not an object or when a member name appears twice.
pub(crate) struct UniqueObject(pub(crate) Vec<(String, Value)>);

impl UniqueObject {
    /// Parses `bytes` (must be UTF-8 JSON, one object, nothing after it).
    pub(crate) fn parse(bytes: &[u8]) -> Option<UniqueObject> {
        serde_json::from_slice(bytes).ok()
    }

    /// The value of member `name`, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object with unique member names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
        let mut seen = BTreeSet::new();
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom("duplicate member name"));
            }
            let value: Value = map.next_value()?;
            members.push((key, value));
        }
        Ok(UniqueObject(members))
    }
}

/// The string value of the top-level member `name` of `text`, read as
/// `JSON.parse` (and Python's `json.loads`, `NaN` refused) reads it: `text`
/// must be one JSON object (RFC 8259, nothing but whitespace after it);
/// names and strings have their escapes decoded; when `name` appears more
/// than once the last one wins; and that last value counts only if it is
/// a string. `None` otherwise.
///
/// Everything but the wanted values is skipped by serde_json's iterative
/// skipper, so what a Rust string cannot hold (a lone surrogate escape) or
/// nesting past serde_json's recursion limit elsewhere in the object does
/// not hide the member, as it would not from those parsers. A lone
/// surrogate in the wanted string itself becomes U+FFFD.
pub(crate) fn last_string_member<'a>(text: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let LastMember(raw) = LastMember::parse(text, name)?;
    let mut de = serde_json::Deserializer::from_str(raw?.get());
    // (`deserialize_bytes` fails on anything but a string.)
    let value = de.deserialize_bytes(StringBytes).ok()?;
    de.end().ok()?;
    Some(value)
}

/// The raw text of the last top-level member with a given name.
struct LastMember<'a>(Option<&'a RawValue>);

impl<'a> LastMember<'a> {
    fn parse(text: &'a str, name: &str) -> Option<LastMember<'a>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let found = de.deserialize_map(LastMemberVisitor { name }).ok()?;
        de.end().ok()?;
        Some(found)
    }
}

struct LastMemberVisitor<'n> {
    name: &'n str,
}

impl<'de> Visitor<'de> for LastMemberVisitor<'_> {
    type Value = LastMember<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LastMember<'de>, A::Error> {
        let mut last = None;
        while let Some(is_wanted) = map.next_key_seed(NameIs(self.name))? {
            if is_wanted {
                last = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(LastMember(last))
    }
}

/// Whether a member name, escapes decoded, is the wanted one. Read as
/// bytes: serde_json then keeps a lone surrogate (as WTF-8, never equal
/// to a real name) instead of failing the whole object.
struct NameIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for NameIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for NameIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<bool, E> {
        Ok(v == self.0.as_bytes())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// A JSON string, borrowed when it has no escapes; bytes that are not
/// UTF-8 (a lone surrogate escape, as WTF-8) become U+FFFD.
struct StringBytes;

impl<'de> Visitor<'de> for StringBytes {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON string")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        Ok(String::from_utf8_lossy(v))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(Cow::Owned(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Appends `s` as a JSON string literal, escaped exactly like serde_json,
/// JavaScript `JSON.stringify` and Python
/// `json.dumps(ensure_ascii=False)`: `"` and `\` escaped, control
/// characters below U+0020 as `\b \f \n \r \t` or `\u00xx` (lower-case hex),
/// everything else (including non-ASCII and U+007F) written raw.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `v` in canonical compact form: no whitespace, object members
/// sorted by name (byte order), strings as in [`write_string`], numbers as
/// serde_json prints them.
pub(crate) fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, val);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn string_escaping_matches_serde_json() {
        let mut samples: Vec<String> = (0u32..0x80)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b"))
            .collect();
        samples.push("José 🚀 東京 \u{2028}\u{2029} </script>".into());
        for s in samples {
            let mut ours = String::new();
            write_string(&mut ours, &s);
            assert_eq!(ours, serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn duplicate_members_are_rejected() {
        assert!(UniqueObject::parse(br#"{"a":1,"a":2}"#).is_none());
        assert!(UniqueObject::parse(br#"{"a":1,"b":{"c":1}}"#).is_some());
        assert!(UniqueObject::parse(b"[1]").is_none());
        assert!(UniqueObject::parse(br#"{"a":1} x"#).is_none());
    }

    #[test]
    fn values_are_written_with_sorted_keys() {
        let v: Value = serde_json::from_str(r#"{"b":[1,true,null],"a":{"z":"x","y":-2}}"#).unwrap();
        let mut out = String::new();
        write_value(&mut out, &v);
        assert_eq!(out, r#"{"a":{"y":-2,"z":"x"},"b":[1,true,null]}"#);
    }
}
