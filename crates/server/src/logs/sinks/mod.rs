//! Log sinks: each folder knows how to write **one batch** to one store and
//! whether a failure is worth retrying. Nothing else.
//!
//! Batching, bounded queues, retries with jittered backoff, the overflow
//! spool, drop accounting and flush-on-shutdown are shared machinery in
//! [`crate::logs::pipeline`] (the split Vector makes between
//! `src/sinks/<name>/` and `src/sinks/util/`).
//!
//! - [`console`]: human lines or JSON lines on stderr.
//! - [`webhook`]: signed JSON-array POSTs to an operator's URL.
//! - [`database`]: rows in SQLite, PostgreSQL or MySQL/MariaDB (sqlx).
//! - [`parquet`]: daily Parquet files.
//!
//! A sink implements [`Sink`]: `write_batch` must be safe to call again
//! with the same batch after a [`SinkError::Retryable`] (delivery is
//! at-least-once; the database sink's inserts are keyed by `request_id`),
//! and `flush` finishes anything buffered inside the sink (Parquet footers,
//! database connections).

pub mod console;
pub mod database;
pub mod parquet;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::record::LogRecord;

/// What [`Sink::write_batch`] and [`Sink::flush`] return.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// One destination for log records.
pub trait Sink: Send + Sync + 'static {
    /// Stable short name: `"console"`, `"webhook"`, `"sqlite"`,
    /// `"postgres"`, `"mysql"`, `"parquet"`. Used in stats, logs and the spool file names.
    fn name(&self) -> &str;

    /// Writes one batch (never empty). Called again with the same batch
    /// after a [`SinkError::Retryable`]; never called concurrently by the
    /// pipeline for one sink.
    fn write_batch<'a>(&'a self, batch: &'a [Arc<LogRecord>]) -> SinkFuture<'a>;

    /// Finishes whatever the sink buffers itself; called once on shutdown
    /// after the last batch.
    fn flush<'a>(&'a self) -> SinkFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    /// Records reported written by an earlier [`write_batch`](Self::write_batch)
    /// that the sink lost since (e.g. a Parquet file it could not finish),
    /// with the reason; the pipeline counts them as dropped. Taken: the
    /// next call returns only newer losses.
    fn take_lost(&self) -> Option<(u64, String)> {
        None
    }

    /// Whether overflow waits in the spool (when one is configured). A
    /// sink that cannot be "down" — the console — has no use for one.
    fn spools(&self) -> bool {
        true
    }
}

/// Why a sink could not write a batch. Messages never contain secrets,
/// URLs with credentials or record bodies: they end up in `/health`.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again later (connection refused, timeout, 5xx, 429...).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Will fail again the same way (4xx, bad data): the batch is dropped
    /// and counted.
    #[error("permanent: {0}")]
    Permanent(String),
}
