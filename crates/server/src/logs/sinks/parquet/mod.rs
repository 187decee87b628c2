//! Parquet sink: daily files of typed columns ([`columns`]) in
//! `log.parquet.file_path` (a directory, created if missing).
//!
//! # File rules
//!
//! - Records go to the file of their **UTC date** (`started_at`):
//!   `logs_YYYY-MM-DD.parquet`, then `logs_YYYY-MM-DD.1.parquet`,
//!   `.2`, ... — a name that exists is **never reused or truncated** (a
//!   restart, a rotation or a second relay on the same directory starts the
//!   next part).
//! - A file is written under a hidden temporary name
//!   (`.logs_YYYY-MM-DD.<pid>.<n>.parquet.inprogress`) and gets its final
//!   name only once its footer is written and synced, so every
//!   `logs_*.parquet` is complete and readable (pyarrow, DuckDB, Spark).
//! - A file is finished (footer, fsync, rename) when a record of another day
//!   arrives, when it reaches `max_file_bytes`, when it is `max_file_age`
//!   old (checked every second even without traffic) and on shutdown
//!   ([`Sink::flush`]). An unfinished file has no footer: a crash loses at
//!   most the records of the one open file, i.e. at most that window. Its
//!   `.inprogress` file is left behind (and reported at the next start).
//! - Rows are buffered (at most [`ROW_GROUP_BYTES`] / [`ROW_GROUP_ROWS`])
//!   and written as one row group, so files have sensible row groups even at
//!   one request a second. Snappy compression.
//!
//! All file work (encoding, compression, writes, fsync) runs on the blocking
//! pool (`spawn_blocking`); the runtime threads never wait on the disk. An
//! I/O error makes the batch [`SinkError::Retryable`] and abandons the open
//! file (like a crash would); the retry starts a new part.

pub mod columns;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesPtr};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use parquet::schema::types::Type;

use crate::logs::pipeline::estimated_size;
use crate::logs::record::LogRecord;

use super::{Sink, SinkError, SinkFuture};

/// Buffered rows are written as a row group at this estimated size...
pub const ROW_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// ...or at this many rows.
pub const ROW_GROUP_ROWS: usize = 20_000;
/// How often the age of the open file is checked without traffic.
const AGE_CHECK: Duration = Duration::from_secs(1);
/// Suffix of files still being written.
const IN_PROGRESS: &str = ".parquet.inprogress";

/// Settings of one Parquet sink.
#[derive(Debug, Clone)]
pub struct ParquetOptions {
    pub dir: PathBuf,
    /// Finish a file once it is this big (bytes written so far).
    pub max_file_bytes: u64,
    /// Finish a file once it has been open this long.
    pub max_file_age: Duration,
}

/// Distinguishes the temporary files of one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

struct Open {
    day: String,
    tmp: PathBuf,
    writer: SerializedFileWriter<File>,
    opened: Instant,
    /// Rows waiting for the next row group, and their estimated size.
    pending: Vec<Arc<LogRecord>>,
    pending_bytes: usize,
    rows: u64,
    /// Records in this file from batches already reported written (and
    /// counted as delivered): what is lost if the file cannot be finished.
    accepted: u64,
}

/// Records reported written that were lost afterwards, for the pipeline to
/// count as dropped ([`Sink::take_lost`]).
#[derive(Default)]
struct Lost {
    records: AtomicU64,
    why: Mutex<Option<String>>,
}

impl Lost {
    fn add(&self, n: u64, why: &SinkError) {
        if n == 0 {
            return;
        }
        self.records.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut g) = self.why.lock() {
            *g = Some(format!("{n} records lost: {why}"));
        }
    }
}

struct Files {
    options: ParquetOptions,
    schema: Arc<Type>,
    props: WriterPropertiesPtr,
    open: Option<Open>,
    lost: Arc<Lost>,
}

/// Writes records to daily Parquet files.
pub struct ParquetSink {
    files: Arc<Mutex<Files>>,
    lost: Arc<Lost>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink").finish_non_exhaustive()
    }
}

/// Warns about `.inprogress` files in `dir` (a crash left them unfinished);
/// returns how many there are. Run once, when the sink starts.
fn report_unfinished(dir: &Path) -> usize {
    let leftovers = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(IN_PROGRESS))
                .count()
        })
        .unwrap_or(0);
    if leftovers > 0 {
        tracing::warn!(
            dir = %dir.display(),
            files = leftovers,
            "unfinished Parquet files from an earlier run (no footer, not readable); their records were lost in a crash"
        );
    }
    leftovers
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Retryable(format!("parquet: {what} {}: {e}", path.display()))
}

/// UTC `YYYY-MM-DD` of a record (today when `started_at` is malformed).
fn day_of(r: &LogRecord) -> String {
    match relayapi_token::legacy::parse_rfc3339(&r.started_at) {
        Some(_) => r.started_at[..10].to_string(),
        None => crate::logs::request::rfc3339_utc(SystemTime::now())[..10].to_string(),
    }
}

/// The `n`-th part name of `day`: `logs_D.parquet`, `logs_D.1.parquet`, ...
pub fn part_name(day: &str, n: u32) -> String {
    if n == 0 {
        format!("logs_{day}.parquet")
    } else {
        format!("logs_{day}.{n}.parquet")
    }
}

impl Files {
    fn start_file(&mut self, day: &str) -> Result<&mut Open, SinkError> {
        // Every new file, not once: the directory may have been removed
        // (log rotation, an operator) while the relay ran.
        let dir = &self.options.dir;
        std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.options.dir.join(format!(
            ".logs_{day}.{}.{seq}{IN_PROGRESS}",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_err("cannot create", &tmp, e))?;
        let writer = SerializedFileWriter::new(file, self.schema.clone(), self.props.clone())
            .map_err(|e| io_err("cannot start", &tmp, e))?;
        Ok(self.open.insert(Open {
            day: day.to_string(),
            tmp,
            writer,
            opened: Instant::now(),
            pending: Vec::new(),
            pending_bytes: 0,
            rows: 0,
            accepted: 0,
        }))
    }

    /// Writes the buffered rows of the open file as a row group.
    fn write_pending(open: &mut Open) -> Result<(), SinkError> {
        if open.pending.is_empty() {
            return Ok(());
        }
        columns::write_row_group(&mut open.writer, &open.pending)
            .map_err(|e| io_err("cannot write", &open.tmp, e))?;
        open.rows += open.pending.len() as u64;
        open.pending.clear();
        open.pending_bytes = 0;
        Ok(())
    }

    /// Finishes the open file: last row group, footer, fsync, final name.
    fn finish(&mut self) -> Result<(), SinkError> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        let result = Self::write_pending(&mut open).and_then(|()| {
            let file = open
                .writer
                .into_inner()
                .map_err(|e| io_err("cannot finish", &open.tmp, e))?;
            file.sync_all()
                .map_err(|e| io_err("cannot sync", &open.tmp, e))?;
            drop(file);
            let path = publish(&open.tmp, &self.options.dir, &open.day)?;
            tracing::debug!(file = %path.display(), rows = open.rows, "Parquet log file finished");
            Ok(())
        });
        if let Err(e) = &result {
            tracing::error!(
                file = %open.tmp.display(),
                records = open.accepted,
                "a Parquet log file could not be finished; its records are lost"
            );
            self.lost.add(open.accepted, e);
        }
        result
    }

    /// Finishes the open file if it is too old.
    fn finish_if_old(&mut self) -> Result<(), SinkError> {
        match &self.open {
            Some(o) if o.opened.elapsed() >= self.options.max_file_age => self.finish(),
            _ => Ok(()),
        }
    }

    fn write(&mut self, batch: Vec<Arc<LogRecord>>) -> Result<(), SinkError> {
        let mut by_day: BTreeMap<String, Vec<Arc<LogRecord>>> = BTreeMap::new();
        for r in batch {
            by_day.entry(day_of(&r)).or_default().push(r);
        }
        let result = self.write_days(by_day);
        match (&result, self.open.as_mut()) {
            (Ok(()), Some(open)) => open.accepted = open.rows + open.pending.len() as u64,
            // The writer may be mid-row-group: abandon the file (as a crash
            // would) so the retry starts clean. This batch is retried; the
            // earlier ones in the file are lost.
            (Err(e), Some(_)) => {
                if let Some(open) = self.open.take() {
                    tracing::error!(
                        file = %open.tmp.display(),
                        records = open.accepted,
                        "abandoning a Parquet log file after a write error; its records are lost"
                    );
                    self.lost.add(open.accepted, e);
                }
            }
            _ => {}
        }
        result
    }

    fn write_days(
        &mut self,
        by_day: BTreeMap<String, Vec<Arc<LogRecord>>>,
    ) -> Result<(), SinkError> {
        self.finish_if_old()?;
        for (day, records) in by_day {
            if self.open.as_ref().is_some_and(|o| o.day != day) {
                self.finish()?;
            }
            let max_bytes = self.options.max_file_bytes;
            let open = match self.open.take() {
                Some(o) => self.open.insert(o),
                None => self.start_file(&day)?,
            };
            for r in records {
                open.pending_bytes += estimated_size(&r);
                open.pending.push(r);
                if open.pending_bytes >= ROW_GROUP_BYTES || open.pending.len() >= ROW_GROUP_ROWS {
                    Self::write_pending(open)?;
                }
            }
            // Rows not written yet count at their (uncompressed) estimate.
            let size = open.writer.bytes_written() as u64 + open.pending_bytes as u64;
            if size >= max_bytes {
                self.finish()?;
            }
        }
        Ok(())
    }
}

/// Gives `tmp` the first free part name of `day` without ever replacing a
/// file (a hard link fails if the name exists; rename where links are not
/// supported).
fn publish(tmp: &Path, dir: &Path, day: &str) -> Result<PathBuf, SinkError> {
    for n in 0..100_000u32 {
        let path = dir.join(part_name(day, n));
        if path.exists() {
            continue;
        }
        match std::fs::hard_link(tmp, &path) {
            Ok(()) => {
                let _ = std::fs::remove_file(tmp);
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) => {
                std::fs::rename(tmp, &path).map_err(|e| io_err("cannot rename", tmp, e))?;
                return Ok(path);
            }
        }
    }
    Err(SinkError::Retryable(format!(
        "parquet: no free part name for {day} in {}",
        dir.display()
    )))
}

impl ParquetSink {
    /// A sink writing into `options.dir`. Must be called inside a Tokio
    /// runtime (it starts the age check). Creates nothing until the first
    /// record.
    pub fn new(options: ParquetOptions) -> Result<Self, SinkError> {
        let schema = columns::schema()
            .map_err(|e| SinkError::Permanent(format!("parquet: bad schema: {e}")))?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(concat!("relayapi ", env!("CARGO_PKG_VERSION")).to_string())
            // Min/max per column chunk (what readers prune row groups by),
            // not per page: page indexes cost CPU for no gain on logs.
            .set_statistics_enabled(EnabledStatistics::Chunk);
        for name in columns::NO_DICTIONARY {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*name), false);
        }
        for name in columns::NO_STATISTICS {
            props = props
                .set_column_statistics_enabled(ColumnPath::from(*name), EnabledStatistics::None);
        }
        let props = Arc::new(props.build());
        report_unfinished(&options.dir);
        let lost = Arc::new(Lost::default());
        let files = Arc::new(Mutex::new(Files {
            options,
            schema,
            props,
            open: None,
            lost: lost.clone(),
        }));
        let ticker = tokio::spawn(age_check(Arc::downgrade(&files)));
        Ok(ParquetSink {
            files,
            lost,
            ticker: Mutex::new(Some(ticker)),
        })
    }

    /// Runs `f` on the files on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Files) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = files
                .lock()
                .map_err(|_| SinkError::Retryable("parquet: writer state poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|_| SinkError::Retryable("parquet: writer task failed".into()))?
    }
}

/// Finishes files that got too old while no batch came.
async fn age_check(files: Weak<Mutex<Files>>) {
    let mut tick = tokio::time::interval(AGE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(files) = files.upgrade() else { return };
        let due = match files.try_lock() {
            Ok(g) => g
                .open
                .as_ref()
                .is_some_and(|o| o.opened.elapsed() >= g.options.max_file_age),
            // A write is running; it checks the age itself.
            Err(_) => false,
        };
        if due {
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(mut g) = files.lock() {
                    let _ = g.finish_if_old();
                }
            })
            .await;
        }
    }
}

impl Sink for ParquetSink {
    fn name(&self) -> &str {
        "parquet"
    }

    fn write_batch<'a>(&'a self, batch: &'a [Arc<LogRecord>]) -> SinkFuture<'a> {
        let batch = batch.to_vec();
        Box::pin(async move { self.blocking(move |f| f.write(batch)).await })
    }

    fn flush<'a>(&'a self) -> SinkFuture<'a> {
        Box::pin(async move {
            if let Some(t) = self.ticker.lock().ok().and_then(|mut g| g.take()) {
                t.abort();
            }
            self.blocking(|f| f.finish()).await
        })
    }

    fn take_lost(&self) -> Option<(u64, String)> {
        let n = self.lost.records.swap(0, Ordering::Relaxed);
        let why = self.lost.why.lock().ok().and_then(|mut g| g.take());
        (n > 0).then(|| (n, why.unwrap_or_default()))
    }
}

impl Drop for Files {
    /// Without a shutdown (tests, embedding), still finish the open file.
    fn drop(&mut self) {
        if self.open.is_some() {
            let _ = self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;

    fn rec(id: &str, at: &str) -> Arc<LogRecord> {
        Arc::new(LogRecord {
            request_id: id.into(),
            started_at: at.into(),
            status: 200,
            ..Default::default()
        })
    }

    fn rows(path: &Path) -> Vec<String> {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                let row = row.unwrap();
                row.get_string(0).unwrap().clone()
            })
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn unfinished_files_are_counted_at_start() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(report_unfinished(dir.path()), 0);
        assert_eq!(report_unfinished(&dir.path().join("missing")), 0);
        std::fs::write(
            dir.path().join(".logs_2026-12-03.7.0.parquet.inprogress"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("logs_2026-12-03.parquet"), b"x").unwrap();
        assert_eq!(report_unfinished(dir.path()), 1);
    }

    #[tokio::test]
    async fn days_parts_and_no_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("logs");
        let opts = ParquetOptions {
            dir: out.clone(),
            max_file_bytes: 1 << 30,
            max_file_age: Duration::from_secs(3600),
        };
        let sink = ParquetSink::new(opts.clone()).unwrap();
        sink.write_batch(&[
            rec("a", "2026-01-01T23:59:59.999Z"),
            rec("b", "2026-01-02T00:00:00.000Z"),
        ])
        .await
        .unwrap();
        sink.write_batch(&[rec("c", "2026-01-02T00:00:01.000Z")])
            .await
            .unwrap();
        // Only finished files carry a final name.
        assert!(names(&out)
            .iter()
            .all(|n| !n.starts_with("logs_2026-01-02")));
        sink.flush().await.unwrap();
        assert_eq!(
            names(&out),
            ["logs_2026-01-01.parquet", "logs_2026-01-02.parquet"]
        );
        assert_eq!(rows(&out.join("logs_2026-01-02.parquet")), ["b", "c"]);

        // A second run on the same day starts the next part.
        let sink = ParquetSink::new(opts).unwrap();
        sink.write_batch(&[rec("d", "2026-01-02T10:00:00.000Z")])
            .await
            .unwrap();
        sink.flush().await.unwrap();
        assert_eq!(rows(&out.join("logs_2026-01-02.parquet")), ["b", "c"]);
        assert_eq!(rows(&out.join("logs_2026-01-02.1.parquet")), ["d"]);
    }

    #[tokio::test]
    async fn size_and_age_finish_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(ParquetOptions {
            dir: dir.path().to_path_buf(),
            max_file_bytes: 1,
            max_file_age: Duration::from_millis(300),
        })
        .unwrap();
        sink.write_batch(&[rec("a", "2026-03-01T00:00:00.000Z")])
            .await
            .unwrap();
        sink.write_batch(&[rec("b", "2026-03-01T00:00:00.000Z")])
            .await
            .unwrap();
        assert_eq!(
            names(dir.path()),
            ["logs_2026-03-01.1.parquet", "logs_2026-03-01.parquet"]
        );
        // Age: finished by the background check, without another batch.
        let sink2 = ParquetSink::new(ParquetOptions {
            dir: dir.path().join("age"),
            max_file_bytes: 1 << 30,
            max_file_age: Duration::from_millis(300),
        })
        .unwrap();
        sink2
            .write_batch(&[rec("c", "2026-03-01T00:00:00.000Z")])
            .await
            .unwrap();
        for _ in 0..100 {
            if names(&dir.path().join("age")) == ["logs_2026-03-01.parquet"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(names(&dir.path().join("age")), ["logs_2026-03-01.parquet"]);
        sink.flush().await.unwrap();
        sink2.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_removed_directory_loses_the_open_file_counted_and_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("logs");
        let sink = ParquetSink::new(ParquetOptions {
            dir: out.clone(),
            max_file_bytes: 1 << 30,
            max_file_age: Duration::from_secs(3600),
        })
        .unwrap();
        let day = "2026-03-01T00:00:00.000Z";
        sink.write_batch(&[rec("a", day), rec("b", day)])
            .await
            .unwrap();
        assert_eq!(sink.take_lost(), None);
        std::fs::remove_dir_all(&out).unwrap();
        // The open file cannot be finished: its two records are reported.
        assert!(sink.flush().await.is_err());
        let (n, why) = sink.take_lost().expect("loss reported");
        assert_eq!(n, 2);
        assert!(why.contains("2 records lost"), "{why}");
        assert_eq!(sink.take_lost(), None, "reported once");
        // The next record recreates the directory.
        sink.write_batch(&[rec("c", day)]).await.unwrap();
        sink.blocking(|f| f.finish()).await.unwrap();
        assert_eq!(rows(&out.join("logs_2026-03-01.parquet")), ["c"]);
    }
}
