//! Request logging: one redacted [`record::LogRecord`] per request, observed
//! from the streams without holding them, delivered to sinks off the
//! request path.
//!
//! - [`record`]: the record type (`docs/logging.md`).

pub mod record;
pub mod pipeline;
pub mod sinks;
pub mod spool;
