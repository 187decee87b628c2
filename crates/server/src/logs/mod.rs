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

use std::sync::Arc;

use crate::config::LogSettings;
use pipeline::{BatchSettings, LogPipeline};
use request::RecordSettings;
use sinks::Sink;

/// The running logging: the pipeline and what the request path needs to
/// build records for it.
#[derive(Debug)]
pub struct Logger {
    pub pipeline: LogPipeline,
    pub records: RecordSettings,
}

impl Logger {
    /// Starts the configured sinks; `None` when none is on (then the request
    /// path does no logging work at all). Must run inside a tokio runtime.
    pub fn start(settings: &LogSettings) -> Option<Logger> {
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        if let Some(format) = settings.console.resolve() {
            sinks.push(Arc::new(sinks::console::ConsoleSink::stderr(format)));
        }
        if settings.web.enabled {
            let client = crate::proxy::build_client(&crate::config::UpstreamSettings {
                ca_file: settings.web.ca_file.clone(),
                ..Default::default()
            });
            match sinks::webhook::WebhookSink::new(
                settings.web.callback_url.clone(),
                settings.web.secret.clone(),
                client,
            ) {
                Ok(sink) => sinks.push(Arc::new(sink)),
                // Validated at config load; this only guards a bypassed check.
                Err(e) => tracing::error!(error = %e, "log.web disabled: invalid callback_url"),
            }
        }
        if settings.database.enabled {
            let db = &settings.database;
            match sinks::database::DatabaseSink::new(&db.kind, &db.connection_string) {
                Ok(sink) => sinks.push(Arc::new(sink)),
                // Validated at config load; this only guards a bypassed check.
                Err(e) => tracing::error!(error = %e, "log.database disabled"),
            }
        }
        if settings.parquet.enabled {
            let pq = &settings.parquet;
            match sinks::parquet::ParquetSink::new(sinks::parquet::ParquetOptions {
                dir: pq.file_path.clone(),
                max_file_bytes: pq.max_file_bytes,
                max_file_age: pq.max_file_age,
            }) {
                Ok(sink) => sinks.push(Arc::new(sink)),
                Err(e) => tracing::error!(error = %e, "log.parquet disabled"),
            }
        }
        if sinks.is_empty() {
            return None;
        }
        let batch = BatchSettings {
            max_records: settings.batch_max_records,
            max_delay: settings.batch_max_delay,
            queue_capacity: settings.queue_capacity,
            spool_dir: settings.spool_dir.clone(),
            spool_max_bytes: settings.spool_max_bytes,
            ..BatchSettings::default()
        };
        Some(Logger {
            pipeline: LogPipeline::start(sinks, batch),
            records: RecordSettings {
                tap: Arc::new(tap::TapConfig {
                    capture_bodies: settings.bodies,
                    max_capture_bytes: settings.max_body_bytes,
                    redact_json_fields: settings.redact_json_fields.clone(),
                    ..tap::TapConfig::default()
                }),
                bodies: settings.bodies,
                redact_headers: settings.redact_headers.clone(),
            },
        })
    }
}
