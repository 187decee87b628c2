//! Request logging: one redacted [`record::LogRecord`] per request, observed
//! from the streams without holding them, delivered to sinks off the
//! request path.
//!
//! - [`record`]: the record type (`docs/logging.md`).
//! - [`request`]: building the record along the request path.
//! - [`tap`]: the body tap (usage, model, captured body per body), built on
//!   [`decode`] (Content-Encoding), [`sse`] (event streams) and [`usage`]
//!   (provider usage shapes).
//! - [`redact`]: what never reaches a sink.
//! - [`pipeline`]: bounded per-sink queues, batching, retries, the overflow
//!   [`spool`], flush on shutdown; [`sinks`]: one folder per sink, each only
//!   knowing how to write one batch.

pub mod decode;
pub mod pipeline;
pub mod record;
pub mod redact;
pub mod request;
pub mod sinks;
pub mod spool;
pub mod sse;
pub mod tap;
pub mod usage;
