//! Request logging: one redacted [`record::LogRecord`] per request, observed
//! from the streams without holding them, delivered to sinks off the
//! request path.
//!
//! - [`record`]: the record type (`docs/logging.md`).
//! - [`tap`]: the body tap (usage, model, captured body per body), built on
//!   [`decode`] (Content-Encoding), [`sse`] (event streams) and [`usage`]
//!   (provider usage shapes).
//! - [`redact`]: what never reaches a sink.

pub mod decode;
pub mod record;
pub mod request;
pub mod redact;
pub mod sse;
pub mod tap;
pub mod usage;
