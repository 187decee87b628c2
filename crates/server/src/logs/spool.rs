//! The overflow spool: records a sink could not take in time, kept on local
//! disk as JSON lines until the sink is healthy again.
//!
//! Layout: one directory per sink, `<spool_dir>/<sink name>/`, holding
//! numbered segment files `<seq:020>.jsonl` (one `LogRecord` per line).
//! Appends always go to the newest ("active") segment; a segment is sealed
//! when it reaches [`SEGMENT_MAX_BYTES`] or when the replayer asks for work.
//! Replay reads the oldest sealed segment (so at most one segment is in
//! memory), hands its records to the sink, and deletes the file only after
//! every batch of it was written. A crash or shutdown in the middle of a
//! segment replays the whole segment again on the next start
//! (at-least-once; receivers dedupe by `request_id`).
//!
//! The total size of all segments is bounded by `max_bytes`: a record that
//! would not fit is refused and the caller counts it as dropped. A torn last
//! line (crash during a write) is skipped on replay and counted.
//!
//! All file I/O is `tokio::fs`; the spool is owned by one sink's pipeline
//! tasks behind an async mutex and is never touched on the request path.
//! One process at a time: `open` takes an exclusive lock on `<dir>/.lock`
//! (held until the spool is dropped), so two relays started in the same
//! working directory cannot replay or number each other's segments.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::record::LogRecord;

/// A segment is sealed once it holds this many bytes, which also bounds the
/// memory one replay step needs.
pub const SEGMENT_MAX_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
struct SegmentMeta {
    seq: u64,
    bytes: u64,
    records: u64,
}

#[derive(Debug)]
struct Active {
    meta: SegmentMeta,
    file: tokio::fs::File,
}

/// A sealed segment read back for replay. Remove it with
/// [`Spool::remove`] once all of it was delivered.
#[derive(Debug)]
pub struct ReplaySegment {
    /// Segment number (file name).
    pub seq: u64,
    /// The records, oldest first.
    pub records: Vec<Arc<LogRecord>>,
    /// Lines that did not parse (torn writes); already lost.
    pub bad_lines: u64,
}

/// Outcome of [`Spool::append`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Records now on disk.
    pub written: u64,
    /// Records refused: the spool is full (or the write failed).
    pub dropped: u64,
}

/// One sink's spool. Invariant: `total_bytes`/`total_records` are the sums
/// over `sealed` and `active`, and `total_bytes <= max_bytes`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Sealed segments, oldest first.
    sealed: VecDeque<SegmentMeta>,
    active: Option<Active>,
    next_seq: u64,
    total_bytes: u64,
    total_records: u64,
    /// Holds the directory's lock for as long as this spool lives.
    _lock: std::fs::File,
}

/// Keeps a sink name usable as a directory name.
fn dir_name(sink: &str) -> String {
    let s: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "sink".to_string()
    } else {
        s
    }
}

/// Takes `<dir>/.lock` exclusively; another process holding it is
/// [`io::ErrorKind::ResourceBusy`].
async fn lock_dir(dir: &Path) -> io::Result<std::fs::File> {
    let path = dir.join(".lock");
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the spool directory is in use by another relay process",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    })
    .await
    .map_err(io::Error::other)?
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.jsonl"))
}

impl Spool {
    /// Opens (creating if needed) `<spool_dir>/<sink>/` and indexes the
    /// segments a previous run left there; they are replayed first.
    pub async fn open(spool_dir: &Path, sink: &str, max_bytes: u64) -> io::Result<Spool> {
        let dir = spool_dir.join(dir_name(sink));
        tokio::fs::create_dir_all(&dir).await?;
        let lock = lock_dir(&dir).await?;
        let mut seqs = Vec::new();
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".jsonl") else {
                continue;
            };
            if let Ok(seq) = stem.parse::<u64>() {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut spool = Spool {
            dir,
            max_bytes,
            sealed: VecDeque::new(),
            active: None,
            next_seq: seqs.last().map_or(1, |s| s + 1),
            total_bytes: 0,
            total_records: 0,
            _lock: lock,
        };
        for seq in seqs {
            let data = tokio::fs::read(segment_path(&spool.dir, seq)).await?;
            let bytes = data.len() as u64;
            let records = data
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count() as u64;
            if bytes == 0 {
                let _ = tokio::fs::remove_file(segment_path(&spool.dir, seq)).await;
                continue;
            }
            spool.sealed.push_back(SegmentMeta {
                seq,
                bytes,
                records,
            });
            spool.total_bytes += bytes;
            spool.total_records += records;
        }
        Ok(spool)
    }

    /// Records waiting on disk.
    pub fn pending_records(&self) -> u64 {
        self.total_records
    }

    /// Bytes used on disk.
    pub fn pending_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends records (oldest first) to the active segment. Records that
    /// would push the spool past `max_bytes` are refused (counted in
    /// `dropped`); so are all of them when the file cannot be written.
    pub async fn append(&mut self, records: &[Arc<LogRecord>]) -> AppendOutcome {
        let mut out = AppendOutcome::default();
        let mut buf = Vec::new();
        let mut count = 0u64;
        for r in records {
            let before = buf.len();
            buf.extend_from_slice(r.json().as_bytes());
            buf.push(b'\n');
            if self.total_bytes + buf.len() as u64 > self.max_bytes {
                buf.truncate(before);
                out.dropped += 1;
                continue;
            }
            count += 1;
        }
        if buf.is_empty() {
            return out;
        }
        match self.write_active(&buf).await {
            Ok(()) => {
                self.total_bytes += buf.len() as u64;
                self.total_records += count;
                if let Some(a) = self.active.as_mut() {
                    a.meta.bytes += buf.len() as u64;
                    a.meta.records += count;
                    if a.meta.bytes >= SEGMENT_MAX_BYTES {
                        self.seal_active().await;
                    }
                }
                out.written = count;
            }
            Err(e) => {
                tracing::warn!(error = %e.kind(), dir = %self.dir.display(), "log spool write failed");
                // What was written (if anything) of a failed write is counted
                // again at the next open; here it is lost.
                self.active = None;
                out.dropped += count;
            }
        }
        out
    }

    async fn write_active(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.active.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, seq))
                .await?;
            self.active = Some(Active {
                meta: SegmentMeta {
                    seq,
                    bytes: 0,
                    records: 0,
                },
                file,
            });
        }
        let Some(active) = self.active.as_mut() else {
            return Err(io::Error::other("no active segment"));
        };
        active.file.write_all(buf).await?;
        active.file.flush().await
    }

    async fn seal_active(&mut self) {
        if let Some(mut a) = self.active.take() {
            let _ = a.file.flush().await;
            if a.meta.records > 0 {
                self.sealed.push_back(a.meta);
            }
        }
    }

    /// Reads the oldest segment for replay (sealing the active one when it
    /// is the only one left). `None` when the spool is empty. The segment
    /// stays on disk until [`Spool::remove`].
    pub async fn oldest(&mut self) -> io::Result<Option<ReplaySegment>> {
        if self.sealed.is_empty() {
            self.seal_active().await;
        }
        let Some(meta) = self.sealed.front().copied() else {
            return Ok(None);
        };
        let data = match tokio::fs::read(segment_path(&self.dir, meta.seq)).await {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(meta.seq);
                return Ok(Some(ReplaySegment {
                    seq: meta.seq,
                    records: Vec::new(),
                    bad_lines: 0,
                }));
            }
            Err(e) => return Err(e),
        };
        let mut records = Vec::with_capacity(meta.records as usize);
        let mut bad_lines = 0;
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<LogRecord>(line) {
                Ok(r) => records.push(Arc::new(r)),
                Err(_) => bad_lines += 1,
            }
        }
        Ok(Some(ReplaySegment {
            seq: meta.seq,
            records,
            bad_lines,
        }))
    }

    /// Deletes a replayed segment.
    pub async fn remove(&mut self, seq: u64) -> io::Result<()> {
        match tokio::fs::remove_file(segment_path(&self.dir, seq)).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.forget(seq);
        Ok(())
    }

    fn forget(&mut self, seq: u64) {
        if let Some(pos) = self.sealed.iter().position(|m| m.seq == seq) {
            if let Some(m) = self.sealed.remove(pos) {
                self.total_bytes = self.total_bytes.saturating_sub(m.bytes);
                self.total_records = self.total_records.saturating_sub(m.records);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rec(id: &str) -> Arc<LogRecord> {
        Arc::new(LogRecord {
            request_id: id.into(),
            status: 200,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn one_spool_directory_serves_one_relay_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Spool::open(tmp.path(), "webhook", 10_000).await.unwrap();
        let err = Spool::open(tmp.path(), "webhook", 10_000)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
        assert!(err.to_string().contains("another relay"), "{err}");
        // Another sink's directory is its own.
        Spool::open(tmp.path(), "parquet", 10_000).await.unwrap();
        drop(first);
        Spool::open(tmp.path(), "webhook", 10_000).await.unwrap();
    }

    #[tokio::test]
    async fn spool_round_trips_survives_reopen_and_respects_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Spool::open(tmp.path(), "web hook", 10_000).await.unwrap();
        let out = s.append(&[rec("a"), rec("b")]).await;
        assert_eq!(
            out,
            AppendOutcome {
                written: 2,
                dropped: 0
            }
        );
        drop(s);
        let mut s = Spool::open(tmp.path(), "web hook", 10_000).await.unwrap();
        assert_eq!(s.pending_records(), 2);
        s.append(&[rec("c")]).await;
        let seg = s.oldest().await.unwrap().unwrap();
        let ids: Vec<_> = seg.records.iter().map(|r| r.request_id.clone()).collect();
        assert_eq!(ids, ["a", "b"]);
        s.remove(seg.seq).await.unwrap();
        let seg = s.oldest().await.unwrap().unwrap();
        assert_eq!(seg.records[0].request_id, "c");
        s.remove(seg.seq).await.unwrap();
        assert!(s.oldest().await.unwrap().is_none());
        assert_eq!((s.pending_records(), s.pending_bytes()), (0, 0));

        let line = serde_json::to_vec(&*rec("x")).unwrap().len() as u64 + 1;
        let mut s = Spool::open(tmp.path(), "bounded", line * 3).await.unwrap();
        let recs: Vec<_> = (0..5).map(|i| rec(&format!("{i}"))).collect();
        // same-length ids → each line has the same size
        assert_eq!(
            s.append(&recs).await,
            AppendOutcome {
                written: 3,
                dropped: 2
            }
        );
        assert_eq!(s.pending_bytes(), line * 3);
    }

    #[tokio::test]
    async fn torn_last_line_is_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Spool::open(tmp.path(), "w", 10_000).await.unwrap();
        s.append(&[rec("a")]).await;
        drop(s);
        let path = segment_path(&tmp.path().join("w"), 1);
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(b"{\"request_id\":\"tor");
        std::fs::write(&path, data).unwrap();
        let mut s = Spool::open(tmp.path(), "w", 10_000).await.unwrap();
        let seg = s.oldest().await.unwrap().unwrap();
        assert_eq!((seg.records.len(), seg.bad_lines), (1, 1));
    }
}
