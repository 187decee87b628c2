//! The Parquet schema — one typed column per record field — and the
//! encoding of a group of records into one row group.
//!
//! [`COLUMNS`] is the single source of truth: the schema message, the
//! writer and `docs/logging.md` follow it. Nested `usage` is flattened to
//! `usage_*` columns (null when the provider reported none); bodies and
//! headers are JSON strings (the same JSON as in the other sinks).

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::errors::ParquetError;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use crate::logs::record::LogRecord;

/// A column's physical type (and logical annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `binary (STRING)`: UTF-8 text.
    Str,
    /// `binary (STRING)` holding a JSON document.
    Json,
    /// `int64 (TIMESTAMP(MILLIS,true))`: UTC milliseconds since the epoch.
    TimestampMs,
    Int64,
    Int32,
    Bool,
}

/// One value of one row.
pub enum Value<'a> {
    Str(Option<Cow<'a, str>>),
    I64(Option<i64>),
    I32(Option<i32>),
    Bool(bool),
}

/// One column: name, type, nullability and how to read it from a record.
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub optional: bool,
    pub get: for<'a> fn(&'a LogRecord) -> Value<'a>,
}

/// Columns whose values repeat (provider, model, status, …) are
/// dictionary-encoded; these, unique per row or nearly, are not: hashing
/// them into a dictionary that overflows anyway only costs CPU.
pub const NO_DICTIONARY: &[&str] = &[
    "request_id",
    "client_request_id",
    "started_at",
    "duration_ms",
    "ttfb_ms",
    "bytes_in",
    "bytes_out",
    "request_body",
    "response_body",
    "request_headers",
    "response_headers",
];

/// Columns without min/max statistics: nobody prunes row groups by a
/// request id, a path or a body, and comparing every value (long strings)
/// to keep them was about a tenth of the writer's CPU. The columns
/// people filter on (time, jti, sub, provider, model, status, numbers) keep
/// theirs.
pub const NO_STATISTICS: &[&str] = &[
    "request_id",
    "client_request_id",
    "client_ip",
    "path",
    "query",
    "kid",
    "ext_info",
    "request_body",
    "response_body",
    "request_headers",
    "response_headers",
];

fn s(v: &str) -> Value<'_> {
    Value::Str(Some(Cow::Borrowed(v)))
}
fn so(v: &Option<String>) -> Value<'_> {
    Value::Str(v.as_deref().map(Cow::Borrowed))
}
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
fn json<T: serde::Serialize>(v: &Option<T>) -> Value<'static> {
    Value::Str(
        v.as_ref()
            .and_then(|v| serde_json::to_string(v).ok())
            .map(Cow::Owned),
    )
}

macro_rules! col {
    ($name:literal, $kind:ident, $opt:literal, $get:expr) => {
        Column {
            name: $name,
            kind: Kind::$kind,
            optional: $opt,
            get: $get,
        }
    };
}

/// Every column, in file order.
pub const COLUMNS: &[Column] = &[
    col!("request_id", Str, false, |r| s(&r.request_id)),
    col!("client_request_id", Str, true, |r| so(&r.client_request_id)),
    col!("started_at", TimestampMs, false, |r| Value::I64(Some(
        timestamp_ms(&r.started_at).unwrap_or(0)
    ))),
    col!("duration_ms", Int64, false, |r| Value::I64(Some(int(
        r.duration_ms
    )))),
    col!("ttfb_ms", Int64, true, |r| Value::I64(r.ttfb_ms.map(int))),
    col!("client_ip", Str, false, |r| s(&r.client_ip)),
    col!("method", Str, false, |r| s(&r.method)),
    col!("path", Str, false, |r| s(&r.path)),
    col!("query", Str, false, |r| s(&r.query)),
    col!("provider", Str, true, |r| so(&r.provider)),
    col!("kid", Str, true, |r| so(&r.kid)),
    col!("jti", Str, true, |r| so(&r.jti)),
    col!("sub", Str, true, |r| so(&r.sub)),
    col!("ext_info", Str, true, |r| so(&r.ext_info)),
    col!("model_requested", Str, true, |r| so(&r.model_requested)),
    col!("model_sent", Str, true, |r| so(&r.model_sent)),
    col!("status", Int32, false, |r| Value::I32(Some(i32::from(
        r.status
    )))),
    col!("error_code", Str, true, |r| so(&r.error_code)),
    col!("upstream_status", Int32, true, |r| Value::I32(
        r.upstream_status.map(i32::from)
    )),
    col!("bytes_in", Int64, false, |r| Value::I64(Some(int(
        r.bytes_in
    )))),
    col!("bytes_out", Int64, false, |r| Value::I64(Some(int(
        r.bytes_out
    )))),
    col!("usage_prompt_tokens", Int64, true, |r| Value::I64(
        r.usage.as_ref().map(|u| int(u.prompt_tokens))
    )),
    col!("usage_completion_tokens", Int64, true, |r| Value::I64(
        r.usage.as_ref().map(|u| int(u.completion_tokens))
    )),
    col!("usage_total_tokens", Int64, true, |r| Value::I64(
        r.usage.as_ref().map(|u| int(u.total_tokens))
    )),
    col!("usage_cached_tokens", Int64, true, |r| Value::I64(
        r.usage.as_ref().and_then(|u| u.cached_tokens).map(int)
    )),
    col!("stream", Bool, false, |r| Value::Bool(r.stream)),
    col!("client_aborted", Bool, false, |r| Value::Bool(
        r.client_aborted
    )),
    col!("request_body", Json, true, |r| json(&r.request_body)),
    col!("response_body", Json, true, |r| json(&r.response_body)),
    col!("request_headers", Json, true, |r| json(&r.request_headers)),
    col!("response_headers", Json, true, |r| json(
        &r.response_headers
    )),
];

/// Our `YYYY-MM-DDTHH:MM:SS.mmmZ` → UTC milliseconds.
pub fn timestamp_ms(rfc3339: &str) -> Option<i64> {
    let secs = relayapi_token::legacy::parse_rfc3339(rfc3339)?;
    let millis = rfc3339
        .get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).take(3).collect();
            format!("{digits:0<3}").parse::<i64>().unwrap_or(0)
        })
        .unwrap_or(0);
    Some(secs * 1000 + millis)
}

/// The schema as a Parquet message type (also shown in the docs).
pub fn message_type() -> String {
    let mut m = String::from("message relayapi_log {\n");
    for c in COLUMNS {
        let rep = if c.optional { "optional" } else { "required" };
        let ty = match c.kind {
            Kind::Str | Kind::Json => "binary",
            Kind::TimestampMs | Kind::Int64 => "int64",
            Kind::Int32 => "int32",
            Kind::Bool => "boolean",
        };
        let logical = match c.kind {
            Kind::Str | Kind::Json => " (STRING)",
            Kind::TimestampMs => " (TIMESTAMP(MILLIS,true))",
            _ => "",
        };
        m.push_str(&format!("  {rep} {ty} {}{logical};\n", c.name));
    }
    m.push('}');
    m
}

/// The parsed schema.
pub fn schema() -> Result<Arc<Type>, ParquetError> {
    parquet::schema::parser::parse_message_type(&message_type()).map(Arc::new)
}

/// Writes `records` as one row group.
pub fn write_row_group<W: Write + Send>(
    file: &mut SerializedFileWriter<W>,
    records: &[Arc<LogRecord>],
) -> Result<(), ParquetError> {
    let mut rg = file.next_row_group()?;
    for c in COLUMNS {
        let mut col = rg
            .next_column()?
            .ok_or_else(|| ParquetError::General(format!("schema has no column {}", c.name)))?;
        let mut defs: Vec<i16> = Vec::with_capacity(records.len());
        let defs_for = |defs: &[i16]| {
            if c.optional {
                Some(defs.to_vec())
            } else {
                None
            }
        };
        match col.untyped() {
            ColumnWriter::ByteArrayColumnWriter(w) => {
                // One buffer for the whole column, values are slices of it:
                // no allocation per value.
                let mut buf = Vec::new();
                let mut ends = Vec::with_capacity(records.len());
                for r in records {
                    match (c.get)(r) {
                        Value::Str(Some(v)) => {
                            buf.extend_from_slice(v.as_bytes());
                            ends.push(buf.len());
                            defs.push(1);
                        }
                        _ => defs.push(0),
                    }
                }
                let buf = bytes::Bytes::from(buf);
                let mut start = 0;
                let vals: Vec<ByteArray> = ends
                    .into_iter()
                    .map(|end| {
                        let v = ByteArray::from(buf.slice(start..end));
                        start = end;
                        v
                    })
                    .collect();
                w.write_batch(&vals, defs_for(&defs).as_deref(), None)?;
            }
            ColumnWriter::Int64ColumnWriter(w) => {
                let mut vals = Vec::with_capacity(records.len());
                for r in records {
                    match (c.get)(r) {
                        Value::I64(Some(v)) => {
                            vals.push(v);
                            defs.push(1);
                        }
                        _ => defs.push(0),
                    }
                }
                w.write_batch(&vals, defs_for(&defs).as_deref(), None)?;
            }
            ColumnWriter::Int32ColumnWriter(w) => {
                let mut vals = Vec::with_capacity(records.len());
                for r in records {
                    match (c.get)(r) {
                        Value::I32(Some(v)) => {
                            vals.push(v);
                            defs.push(1);
                        }
                        _ => defs.push(0),
                    }
                }
                w.write_batch(&vals, defs_for(&defs).as_deref(), None)?;
            }
            ColumnWriter::BoolColumnWriter(w) => {
                let vals: Vec<bool> = records
                    .iter()
                    .map(|r| matches!((c.get)(r), Value::Bool(true)))
                    .collect();
                w.write_batch(&vals, None, None)?;
            }
            _ => {
                return Err(ParquetError::General(format!(
                    "column {} has an unexpected type",
                    c.name
                )))
            }
        }
        col.close()?;
    }
    rg.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tuning_lists_name_real_columns() {
        for name in NO_DICTIONARY.iter().chain(NO_STATISTICS) {
            assert!(COLUMNS.iter().any(|c| c.name == *name), "{name}");
        }
        for kept in [
            "started_at",
            "jti",
            "sub",
            "provider",
            "model_sent",
            "status",
        ] {
            assert!(
                !NO_STATISTICS.contains(&kept),
                "{kept} keeps its statistics"
            );
        }
    }

    #[test]
    fn schema_parses_and_names_every_record_field() {
        let schema = schema().unwrap();
        assert_eq!(schema.get_fields().len(), COLUMNS.len());
        // Every top-level record field has a column (usage flattened).
        let json = serde_json::to_value(LogRecord {
            ttfb_ms: Some(1),
            provider: Some("p".into()),
            kid: Some("k".into()),
            jti: Some("j".into()),
            sub: Some("s".into()),
            ext_info: Some("e".into()),
            model_requested: Some("m".into()),
            model_sent: Some("m".into()),
            error_code: Some("c".into()),
            upstream_status: Some(200),
            usage: Some(Default::default()),
            request_body: Some(Default::default()),
            response_body: Some(Default::default()),
            request_headers: Some(vec![]),
            response_headers: Some(vec![]),
            ..Default::default()
        })
        .unwrap();
        for key in json.as_object().unwrap().keys() {
            let found = COLUMNS
                .iter()
                .any(|c| c.name == key || c.name.starts_with(&format!("{key}_")));
            assert!(found, "no column for record field {key}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_ms("1970-01-01T00:00:01.250Z"), Some(1250));
        assert_eq!(timestamp_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(timestamp_ms("1970-01-01T00:00:02Z"), Some(2000));
        assert_eq!(timestamp_ms("nope"), None);
    }
}
