//! Private JSON helpers: a duplicate-rejecting object parser and the
//! canonical string/value writer used for minting.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
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
