//! Console sink: one line per record on **stderr** (stdout's first line is
//! the relay's startup contract and is never used for logs).
//!
//! - [`ConsoleFormat::Pretty`]: a human line, ANSI-coloured only when the
//!   target is a terminal, e.g.
//!   `2026-01-02T03:04:05Z 200 POST /v1/chat/completions openai gpt-4o 812ms ttfb=95ms tokens=12/30 sub=user-1 id=req_…`.
//!   Control characters in fields are escaped so a hostile path cannot
//!   inject terminal sequences.
//! - [`ConsoleFormat::Json`]: JSON lines, one `LogRecord` each.
//!
//! Config: `log.console: true` → [`ConsoleFormat::auto`] (pretty on a
//! terminal, JSON lines otherwise); `{"format": "pretty"|"json"}` picks one.
//! Writes happen on the blocking pool so a stalled stderr pipe never blocks
//! the runtime.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use crate::logs::record::LogRecord;

use super::{Sink, SinkError, SinkFuture};

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleFormat {
    /// One human line per record.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl ConsoleFormat {
    /// Pretty when stderr is a terminal, JSON lines otherwise (what
    /// `log.console: true` means).
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            ConsoleFormat::Pretty
        } else {
            ConsoleFormat::Json
        }
    }
}

/// The `log.console` config value: `true`/`false`, or `{"format": ...}`.
///
/// Deserialized by hand: an untagged enum would take `{}` or a misspelt
/// `{"formt": "json"}` as the object form with no format (silently "auto"),
/// and its errors name no field. Here every other shape is an error that
/// lists the allowed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum ConsoleSetting {
    /// `true`: on, [`ConsoleFormat::auto`]; `false`: off.
    Enabled(bool),
    /// `{"format": "pretty"|"json"}`: on with that format (`None`, auto,
    /// is never read from a config: write `true` for that).
    Format { format: Option<ConsoleFormat> },
}

/// What `log.console` may be, for error messages.
const CONSOLE_SHAPES: &str = r#"true, false, {"format": "pretty"} or {"format": "json"} (true: pretty on a terminal, JSON lines otherwise)"#;

impl<'de> serde::Deserialize<'de> for ConsoleSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};

        struct Shapes;

        impl<'de> Visitor<'de> for Shapes {
            type Value = ConsoleSetting;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(CONSOLE_SHAPES)
            }

            fn visit_bool<E: Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(ConsoleSetting::Enabled(on))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut format = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "format" {
                        // Starts like serde's own message, so the config
                        // loader adds its "fix the spelling" hint.
                        return Err(Error::custom(format!(
                            "unknown field `{key}`; log.console is {CONSOLE_SHAPES}"
                        )));
                    }
                    // Any value, so that a wrong one gets the message below
                    // rather than a bare "expected a string".
                    let value: serde_json::Value = map.next_value()?;
                    format = Some(match value.as_str() {
                        Some("pretty") => ConsoleFormat::Pretty,
                        Some("json") => ConsoleFormat::Json,
                        _ => {
                            return Err(Error::custom(format!(
                                r#"format {value} is not a console format; write {{"format": "pretty"}} or {{"format": "json"}} (or true, false)"#
                            )))
                        }
                    });
                }
                match format {
                    Some(format) => Ok(ConsoleSetting::Format {
                        format: Some(format),
                    }),
                    None => Err(Error::custom(format!(
                        "an empty object names no format; log.console is {CONSOLE_SHAPES}"
                    ))),
                }
            }
        }

        d.deserialize_any(Shapes)
    }
}

impl ConsoleSetting {
    /// The format to use, or `None` when the console sink is off.
    pub fn resolve(&self) -> Option<ConsoleFormat> {
        match self {
            ConsoleSetting::Enabled(false) => None,
            ConsoleSetting::Enabled(true) => Some(ConsoleFormat::auto()),
            ConsoleSetting::Format { format } => Some(format.unwrap_or_else(ConsoleFormat::auto)),
        }
    }
}

/// Writes records to stderr (or any writer, for tests).
pub struct ConsoleSink {
    format: ConsoleFormat,
    color: bool,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSink")
            .field("format", &self.format)
            .field("color", &self.color)
            .finish()
    }
}

impl ConsoleSink {
    /// Writes to `out`, without colours (use [`ConsoleSink::with_color`]).
    pub fn new(format: ConsoleFormat, out: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            format,
            color: false,
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// Writes to stderr, coloured when stderr is a terminal.
    pub fn stderr(format: ConsoleFormat) -> Self {
        let color = std::io::stderr().is_terminal();
        ConsoleSink::new(format, Box::new(std::io::stderr())).with_color(color)
    }

    /// Turns ANSI colours in the pretty format on or off.
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    fn render(&self, batch: &[Arc<LogRecord>]) -> Result<Vec<u8>, SinkError> {
        let mut buf = Vec::with_capacity(batch.len() * 256);
        for r in batch {
            match self.format {
                ConsoleFormat::Json => {
                    buf.extend_from_slice(r.json().as_bytes());
                    buf.push(b'\n');
                }
                ConsoleFormat::Pretty => {
                    buf.extend_from_slice(pretty_line(r, self.color).as_bytes());
                    buf.push(b'\n');
                }
            }
        }
        Ok(buf)
    }
}

/// Escapes control characters (ANSI injection) in a field.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The human line for one record.
pub fn pretty_line(r: &LogRecord, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let status_color = match r.status {
        200..=299 => "32",
        300..=399 => "36",
        400..=499 => "33",
        _ => "31",
    };
    let mut line = String::with_capacity(160);
    let _ = write!(
        line,
        "{} {} {}",
        paint("2", &clean(&r.started_at)),
        paint(status_color, &r.status.to_string()),
        clean(&r.method)
    );
    let _ = write!(line, " {}", clean(&r.path));
    if !r.query.is_empty() {
        let _ = write!(line, "?{}", clean(&r.query));
    }
    if let Some(p) = &r.provider {
        let _ = write!(line, " {}", clean(p));
    }
    if let Some(m) = r.model_sent.as_ref().or(r.model_requested.as_ref()) {
        let _ = write!(line, " {}", paint("1", &clean(m)));
    }
    let _ = write!(line, " {}ms", r.duration_ms);
    if let Some(t) = r.ttfb_ms {
        let _ = write!(line, " ttfb={t}ms");
    }
    if let Some(u) = &r.usage {
        let _ = write!(line, " tokens={}/{}", u.prompt_tokens, u.completion_tokens);
    }
    if r.stream {
        line.push_str(" stream");
    }
    if r.client_aborted {
        line.push_str(&paint("33", " aborted"));
    }
    if let Some(e) = &r.error_code {
        let _ = write!(line, " {}", paint("31", &format!("error={}", clean(e))));
    }
    if let Some(s) = &r.sub {
        let _ = write!(line, " sub={}", clean(s));
    }
    let _ = write!(line, " id={}", clean(&r.request_id));
    line
}

impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        "console"
    }

    /// A blocked terminal is not an outage to outlast: no spool files for it.
    fn spools(&self) -> bool {
        false
    }

    fn write_batch<'a>(&'a self, batch: &'a [Arc<LogRecord>]) -> SinkFuture<'a> {
        Box::pin(async move {
            let buf = self.render(batch)?;
            let out = self.out.clone();
            tokio::task::spawn_blocking(move || {
                let mut w = out
                    .lock()
                    .map_err(|_| SinkError::Permanent("console: writer poisoned".into()))?;
                w.write_all(&buf).and_then(|()| w.flush()).map_err(|e| {
                    SinkError::Retryable(format!("console: write failed ({})", e.kind()))
                })
            })
            .await
            .map_err(|_| SinkError::Retryable("console: writer task failed".into()))?
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::logs::record::Usage;

    #[test]
    fn console_setting_accepts_bool_and_object() {
        let parse = |j: &str| serde_json::from_str::<ConsoleSetting>(j).unwrap();
        assert_eq!(parse("false").resolve(), None);
        assert_eq!(parse("true").resolve(), Some(ConsoleFormat::auto()));
        assert_eq!(
            parse(r#"{"format":"json"}"#).resolve(),
            Some(ConsoleFormat::Json)
        );
        assert_eq!(
            parse(r#"{"format":"pretty"}"#).resolve(),
            Some(ConsoleFormat::Pretty)
        );
        assert!(serde_json::from_str::<ConsoleSetting>(r#"{"format":"xml"}"#).is_err());
    }

    #[test]
    fn pretty_line_has_the_fields_and_no_colour_when_off() {
        let r = LogRecord {
            request_id: "req_1".into(),
            started_at: "2026-01-02T03:04:05Z".into(),
            duration_ms: 812,
            ttfb_ms: Some(95),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            provider: Some("openai".into()),
            model_sent: Some("gpt-4o".into()),
            status: 200,
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 30,
                total_tokens: 42,
                cached_tokens: None,
            }),
            sub: Some("user\x1b[31m".into()),
            ..Default::default()
        };
        let line = pretty_line(&r, false);
        assert_eq!(
            line,
            "2026-01-02T03:04:05Z 200 POST /v1/chat/completions openai gpt-4o 812ms ttfb=95ms tokens=12/30 sub=user\\u{1b}[31m id=req_1"
        );
        assert!(pretty_line(&r, true).contains("\x1b[32m200\x1b[0m"));
    }
}
