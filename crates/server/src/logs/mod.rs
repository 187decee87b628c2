//! Request logging: one redacted [`record::LogRecord`] per request, observed
//! from the streams without holding them, delivered to sinks off the
//! request path.
//!
//! - [`record`]: the record type (`docs/logging.md`).
//! - [`pipeline`]: shared delivery machinery (queues, batching, retries,
//!   drop accounting, shutdown flush) — the only thing the request path
//!   touches is [`pipeline::LogPipeline::push`].
//! - [`spool`]: the on-disk overflow buffer a failing sink replays from.
//! - [`sinks`]: one folder per sink, each only writes one batch.

pub mod pipeline;
pub mod record;
pub mod sinks;
pub mod spool;
