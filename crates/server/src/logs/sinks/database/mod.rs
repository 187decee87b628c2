//! Database sink: one row per record in SQLite, PostgreSQL or MySQL/MariaDB,
//! through one code path (sqlx, generic over the driver).
//!
//! - [`dsn`]: the connection string (URL or the earlier keyword/Go forms) →
//!   typed options; passwords are scrubbed from every error we surface.
//! - [`schema`]: the table, the versioned migrations and the few SQL
//!   fragments that differ per database.
//!
//! # Behaviour
//!
//! - **Start**: the pool connects lazily, so a database that is down never
//!   stops the relay. A background attempt creates/migrates the table right
//!   away; if it fails, the first batch tries again (and so on, with the
//!   pipeline's backoff) — the records wait in the queue and the spool.
//! - **Write**: each batch is one transaction, idempotent by `request_id`
//!   (so the pipeline may retry a batch that was in fact written without
//!   adding a row): multi-row `INSERT ... VALUES` for SQLite and MySQL (at
//!   most [`ROWS_PER_STATEMENT`] rows / [`BYTES_PER_STATEMENT`] of JSON
//!   each); for PostgreSQL one `INSERT ... SELECT * FROM UNNEST(<one array
//!   per column>)` per [`BYTES_PER_STATEMENT`], which PostgreSQL parses and
//!   plans once whatever the row count.
//! - **Errors**: connection, timeout, lock, resource and permission errors
//!   are [`SinkError::Retryable`]; data the database refuses (SQLSTATE 22/23,
//!   SQLite constraint/size errors) is [`SinkError::Permanent`]. Messages
//!   carry the database's code and, for non-data errors, its message with
//!   any password replaced by `[REDACTED]`; never the connection string or
//!   record values.
//! - **Shutdown**: `flush` closes the pool.

pub mod dsn;
pub mod schema;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relayapi_token::SecretString;
use sqlx::pool::PoolOptions;
use sqlx::{Arguments, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use crate::logs::record::LogRecord;

use super::{Sink, SinkError, SinkFuture};
use dsn::Options;
use schema::{Dialect, COLUMN_CHARS, MIGRATIONS, MIGRATIONS_TABLE};

/// Most rows in one `INSERT` (24 parameters each: far below every
/// database's parameter limit).
pub const ROWS_PER_STATEMENT: usize = 200;
/// An `INSERT` stops taking rows once their JSON reaches this size
/// (MariaDB's default `max_allowed_packet` is 16 MiB).
pub const BYTES_PER_STATEMENT: usize = 4 * 1024 * 1024;
/// Bound on one `write_batch` (connect, migrate, insert, commit).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write waits for a pooled connection (connecting included).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection string does not parse. Never contains it.
#[derive(Debug, thiserror::Error)]
#[error("log.database.connection_string: {0}")]
pub struct InvalidDatabase(#[from] pub dsn::DsnError);

enum Pools {
    Sqlite(Pool<sqlx::Sqlite>),
    Postgres(Pool<sqlx::Postgres>),
    MySql(Pool<sqlx::MySql>),
}

struct Inner {
    dialect: Dialect,
    pools: Pools,
    /// Passwords found in the connection string: scrubbed from errors.
    passwords: Vec<SecretString>,
    /// True once the migrations ran on this pool. An async mutex: held
    /// while migrating, so one migration runs at a time.
    schema_ready: tokio::sync::Mutex<bool>,
    /// Set when a write found the table gone: the next migration replays
    /// every applied step (the bookkeeping says they ran, the table says
    /// their work is lost).
    table_vanished: AtomicBool,
    timeout: Duration,
}

/// Writes batches to a database.
pub struct DatabaseSink {
    inner: Arc<Inner>,
    /// The first migration attempt, started with the sink.
    warmup: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for DatabaseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSink")
            .field("type", &self.inner.dialect.kind())
            .field("connection_string", &relayapi_token::secret::REDACTED)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// Checks a connection string without connecting (config validation).
pub fn validate(kind: &str, connection_string: &str) -> Result<(), InvalidDatabase> {
    if let Options::Sqlite(o) = dsn::parse(kind, connection_string)? {
        // SQLite creates the file, not its directory.
        let dir = o
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(dsn::DsnError(
                "the SQLite file's directory does not exist; create it or change the path",
            )
            .into());
        }
    }
    Ok(())
}

impl DatabaseSink {
    /// A sink for `kind` (`sqlite`, `postgres`, `mysql`). Does not connect;
    /// must be called inside a Tokio runtime (it starts the migration).
    pub fn new(kind: &str, connection_string: &SecretString) -> Result<Self, InvalidDatabase> {
        let dsn = connection_string.expose();
        let options = dsn::parse(kind, dsn)?;
        let passwords = dsn::passwords(dsn)
            .into_iter()
            .map(SecretString::new)
            .collect();
        let (dialect, pools) = match options {
            Options::Sqlite(o) => (
                Dialect::Sqlite,
                // One writer: SQLite serialises writes anyway.
                Pools::Sqlite(pool_options(1).connect_lazy_with(o)),
            ),
            Options::Postgres(o) => (
                Dialect::Postgres,
                Pools::Postgres(pool_options(2).connect_lazy_with(o)),
            ),
            Options::MySql(o) => (
                Dialect::MySql,
                Pools::MySql(pool_options(2).connect_lazy_with(o)),
            ),
        };
        let inner = Arc::new(Inner {
            dialect,
            pools,
            passwords,
            schema_ready: tokio::sync::Mutex::new(false),
            table_vanished: AtomicBool::new(false),
            timeout: DEFAULT_TIMEOUT,
        });
        let warm = inner.clone();
        let warmup = tokio::spawn(async move {
            match tokio::time::timeout(warm.timeout, warm.ensure_schema()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(
                    sink = warm.dialect.kind(),
                    error = %e,
                    "log database not ready yet; records wait and are retried"
                ),
                Err(_) => tracing::warn!(
                    sink = warm.dialect.kind(),
                    "log database did not answer; records wait and are retried"
                ),
            }
        });
        Ok(DatabaseSink {
            inner,
            warmup: Mutex::new(Some(warmup)),
        })
    }
}

fn pool_options<DB: Database>(max: u32) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(300)))
        // No ping before every batch (a round trip each, under load a
        // scheduling delay too): a connection that died with its server
        // fails the write, which is retried on a fresh one.
        .test_before_acquire(false)
}

/// One row, ready to bind (text already cleaned and cut).
struct Row {
    request_id: String,
    started_at: String,
    duration_ms: i64,
    ttfb_ms: Option<i64>,
    client_ip: String,
    method: String,
    path: String,
    provider: Option<String>,
    kid: Option<String>,
    jti: Option<String>,
    sub: Option<String>,
    model: Option<String>,
    status: i32,
    error_code: Option<String>,
    upstream_status: Option<i32>,
    bytes_in: i64,
    bytes_out: i64,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    total_tokens: Option<i64>,
    cached_tokens: Option<i64>,
    stream: bool,
    client_aborted: bool,
    record: String,
}

/// Text for a short column: no NUL (PostgreSQL refuses it), at most
/// [`COLUMN_CHARS`] characters.
fn short(s: &str) -> String {
    // The usual case, without a walk per character: byte length bounds
    // the character count.
    if s.len() <= COLUMN_CHARS && !s.as_bytes().contains(&0) {
        return s.to_owned();
    }
    s.chars()
        .take(COLUMN_CHARS)
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect()
}

fn short_opt(s: Option<&String>) -> Option<String> {
    s.map(|s| short(s))
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// serde_json writes NUL as `\u0000`, which PostgreSQL's JSONB refuses:
/// turn exactly those escapes (not an escaped backslash followed by
/// `u0000`) into `\ufffd`.
fn jsonb_safe(json: String) -> String {
    if !json.contains("\\u0000") {
        return json;
    }
    let mut out = String::with_capacity(json.len());
    let mut rest = json.as_str();
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let esc = &rest[i..];
        if let Some(after) = esc.strip_prefix("\\u0000") {
            out.push_str("\\ufffd");
            rest = after;
        } else {
            // Any other escape is two characters (or \uXXXX, whose tail
            // has no backslash): copy the pair.
            let n = esc.chars().nth(1).map_or(1, |c| 1 + c.len_utf8());
            out.push_str(&esc[..n]);
            rest = &esc[n..];
        }
    }
    out.push_str(rest);
    out
}

impl Row {
    fn from_record(r: &LogRecord, d: Dialect) -> Result<Row, SinkError> {
        let record = r.json().to_owned();
        let record = match d {
            Dialect::Postgres => jsonb_safe(record),
            _ => record,
        };
        let usage = r.usage.as_ref();
        Ok(Row {
            request_id: short(&r.request_id),
            started_at: d.started_at(&r.started_at),
            duration_ms: int(r.duration_ms),
            ttfb_ms: r.ttfb_ms.map(int),
            client_ip: short(&r.client_ip),
            method: short(&r.method),
            path: r.path.replace('\0', "\u{fffd}"),
            provider: short_opt(r.provider.as_ref()),
            kid: short_opt(r.kid.as_ref()),
            jti: short_opt(r.jti.as_ref()),
            sub: short_opt(r.sub.as_ref()),
            model: short_opt(r.model_sent.as_ref().or(r.model_requested.as_ref())),
            status: i32::from(r.status),
            error_code: short_opt(r.error_code.as_ref()),
            upstream_status: r.upstream_status.map(i32::from),
            bytes_in: int(r.bytes_in),
            bytes_out: int(r.bytes_out),
            prompt_tokens: usage.map(|u| int(u.prompt_tokens)),
            completion_tokens: usage.map(|u| int(u.completion_tokens)),
            total_tokens: usage.map(|u| int(u.total_tokens)),
            cached_tokens: usage.and_then(|u| u.cached_tokens).map(int),
            stream: r.stream,
            client_aborted: r.client_aborted,
            record,
        })
    }
}

impl Inner {
    fn scrub(&self, text: &str) -> String {
        let pw: Vec<String> = self
            .passwords
            .iter()
            .map(|p| p.expose().to_string())
            .collect();
        dsn::scrub(text, &pw)
    }

    /// Our verdict on a database error, without secrets or record values.
    fn classify(&self, e: &sqlx::Error) -> SinkError {
        let name = self.dialect.kind();
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                if self.dialect.is_data_error(&code) || db.kind() != sqlx::error::ErrorKind::Other {
                    SinkError::Permanent(format!(
                        "{name}: the database refused the batch (code {code})"
                    ))
                } else {
                    SinkError::Retryable(format!(
                        "{name}: database error {code}: {}",
                        self.scrub(db.message())
                    ))
                }
            }
            sqlx::Error::PoolTimedOut => SinkError::Retryable(format!(
                "{name}: no connection within {} s (database down or unreachable?)",
                ACQUIRE_TIMEOUT.as_secs()
            )),
            other => SinkError::Retryable(format!("{name}: {}", self.scrub(&other.to_string()))),
        }
    }

    /// Runs the migrations once per pool (again after the table vanished).
    async fn ensure_schema(&self) -> Result<(), SinkError> {
        let mut ready = self.schema_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let replay = self.table_vanished.swap(false, Ordering::AcqRel);
        let applied = match &self.pools {
            Pools::Sqlite(p) => migrate(p, self.dialect, replay).await,
            Pools::Postgres(p) => migrate(p, self.dialect, replay).await,
            Pools::MySql(p) => migrate(p, self.dialect, replay).await,
        }
        .inspect_err(|_| {
            if replay {
                self.table_vanished.store(true, Ordering::Release);
            }
        })
        // Every migration failure is worth retrying: a permission fixed or
        // a concurrent migrator finished, the next attempt goes through.
        .map_err(|e| match self.classify(&e) {
            SinkError::Permanent(m) | SinkError::Retryable(m) => {
                SinkError::Retryable(format!("{m} (while migrating)"))
            }
        })?;
        if applied > 0 {
            tracing::info!(
                sink = self.dialect.kind(),
                applied,
                version = schema::SCHEMA_VERSION,
                "log database table ready"
            );
        }
        *ready = true;
        Ok(())
    }

    async fn write(&self, batch: &[Arc<LogRecord>]) -> Result<(), SinkError> {
        self.ensure_schema().await?;
        let rows = batch
            .iter()
            .map(|r| Row::from_record(r, self.dialect))
            .collect::<Result<Vec<_>, _>>()?;
        let result = match &self.pools {
            Pools::Sqlite(p) => insert(p, self.dialect, rows).await,
            Pools::Postgres(p) => insert_postgres(p, rows).await,
            Pools::MySql(p) => insert(p, self.dialect, rows).await,
        };
        result.map_err(|e| {
            if let sqlx::Error::Database(db) = &e {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                if self.dialect.is_missing_table(&code, db.message()) {
                    // Dropped behind our back: migrate again on the retry.
                    self.table_vanished.store(true, Ordering::Release);
                    if let Ok(mut ready) = self.schema_ready.try_lock() {
                        *ready = false;
                    }
                    return SinkError::Retryable(format!(
                        "{}: table {} is missing; recreating it",
                        self.dialect.kind(),
                        schema::TABLE
                    ));
                }
            }
            self.classify(&e)
        })
    }
}

/// SQL text and its bound arguments, built together so every placeholder
/// is the driver's own (`$n` for PostgreSQL, `?` otherwise). The text is
/// borrowed: it must outlive the arguments (they borrow nothing, but the
/// driver's types say they may).
struct Stmt<'s, 'q, DB: Database> {
    sql: &'s mut String,
    args: DB::Arguments<'q>,
}

impl<'s, 'q, DB: Database> Stmt<'s, 'q, DB> {
    fn new(sql: &'s mut String) -> Self {
        Stmt {
            sql,
            args: Default::default(),
        }
    }

    fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    fn bind<T: 'q + Encode<'q, DB> + Type<DB>>(&mut self, value: T) -> Result<(), sqlx::Error> {
        self.args.add(value).map_err(sqlx::Error::Encode)?;
        self.args
            .format_placeholder(&mut *self.sql)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))
    }
}

/// Migrates `pool` to [`schema::SCHEMA_VERSION`]; returns how many
/// migrations ran. `replay`: the log table vanished, so the steps already
/// recorded run again first (not recorded twice). The version is read and
/// the steps run under [`Dialect::migration_lock`], released before the
/// connection goes back to the pool.
async fn migrate<DB>(pool: &Pool<DB>, d: Dialect, replay: bool) -> Result<usize, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let mut conn = pool.acquire().await?;
    let lock = d.migration_lock();
    if let Some((take, _)) = lock {
        sqlx::query::<DB>(take).execute(&mut *conn).await?;
    }
    let result: Result<usize, sqlx::Error> = async {
        sqlx::query::<DB>(&d.migrations_table())
            .execute(&mut *conn)
            .await?;
        let current: i64 = sqlx::query_scalar::<DB, i64>(&format!(
            "SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version DESC LIMIT 1"
        ))
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(0);
        if replay {
            for m in MIGRATIONS.iter().filter(|m| m.version <= current) {
                for stmt in d.migration(m.version) {
                    sqlx::query::<DB>(&stmt).execute(&mut *conn).await?;
                }
            }
        }
        let mut applied = 0;
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            let mut sql =
                format!("INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (");
            let mut record = Stmt::<DB>::new(&mut sql);
            record.bind(m.version)?;
            record.push(", ");
            record.bind(m.name.to_string())?;
            record.push(", ");
            record.bind(crate::logs::request::rfc3339_utc(
                std::time::SystemTime::now(),
            ))?;
            record.push(")");
            let args = record.args;
            let record = sqlx::query_with::<DB, _>(&sql, args);
            if d.transactional_ddl() {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                for stmt in d.migration(m.version) {
                    sqlx::query::<DB>(&stmt).execute(&mut *tx).await?;
                }
                record.execute(&mut *tx).await?;
                tx.commit().await?;
            } else {
                for stmt in d.migration(m.version) {
                    sqlx::query::<DB>(&stmt).execute(&mut *conn).await?;
                }
                record.execute(&mut *conn).await?;
            }
            applied += 1;
        }
        Ok(applied)
    }
    .await;
    if let Some((_, release)) = lock {
        if sqlx::query::<DB>(release)
            .execute(&mut *conn)
            .await
            .is_err()
        {
            // A session lock ends with its session: never pool this one again.
            conn.close_on_drop();
        }
    }
    result
}

/// Inserts `rows` in one transaction of multi-row statements.
async fn insert<DB>(pool: &Pool<DB>, d: Dialect, rows: Vec<Row>) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    for<'a> Option<String>: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
    for<'a> i32: Encode<'a, DB> + Type<DB>,
    for<'a> Option<i32>: Encode<'a, DB> + Type<DB>,
    for<'a> bool: Encode<'a, DB> + Type<DB>,
{
    let head = d.insert_head();
    let mut tx = pool.begin().await?;
    for chunk in statements(rows, ROWS_PER_STATEMENT) {
        let mut sql = head.clone();
        let mut q = Stmt::<DB>::new(&mut sql);
        q.push("VALUES ");
        for (i, r) in chunk.into_iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" });
            q.bind(r.request_id)?;
            q.push(", ");
            q.bind(r.started_at)?;
            q.push(d.time_cast());
            q.push(", ");
            q.bind(r.duration_ms)?;
            q.push(", ");
            q.bind(r.ttfb_ms)?;
            for v in [r.client_ip, r.method, r.path] {
                q.push(", ");
                q.bind(v)?;
            }
            for v in [r.provider, r.kid, r.jti, r.sub, r.model] {
                q.push(", ");
                q.bind(v)?;
            }
            q.push(", ");
            q.bind(r.status)?;
            q.push(", ");
            q.bind(r.error_code)?;
            q.push(", ");
            q.bind(r.upstream_status)?;
            for v in [r.bytes_in, r.bytes_out] {
                q.push(", ");
                q.bind(v)?;
            }
            for v in [
                r.prompt_tokens,
                r.completion_tokens,
                r.total_tokens,
                r.cached_tokens,
            ] {
                q.push(", ");
                q.bind(v)?;
            }
            for v in [r.stream, r.client_aborted] {
                q.push(", ");
                q.bind(v)?;
            }
            q.push(", ");
            q.bind(r.record)?;
            q.push(d.json_cast());
            q.push(")");
        }
        q.push(d.insert_tail());
        let args = q.args;
        sqlx::query_with::<DB, _>(&sql, args)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Splits `rows` into statements of at most [`BYTES_PER_STATEMENT`] of JSON
/// (and `max_rows` rows); at least one row each.
fn statements(rows: Vec<Row>, max_rows: usize) -> Vec<Vec<Row>> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some(r) = rows.next_if(|r| {
            chunk.is_empty()
                || (chunk.len() < max_rows && bytes + r.record.len() <= BYTES_PER_STATEMENT)
        }) {
            bytes += r.record.len();
            chunk.push(r);
        }
        out.push(chunk);
    }
    out
}

/// The rows of one PostgreSQL statement, one array per column.
struct PgColumns {
    request_id: Vec<String>,
    started_at: Vec<String>,
    duration_ms: Vec<i64>,
    ttfb_ms: Vec<Option<i64>>,
    client_ip: Vec<String>,
    method: Vec<String>,
    path: Vec<String>,
    provider: Vec<Option<String>>,
    kid: Vec<Option<String>>,
    jti: Vec<Option<String>>,
    sub: Vec<Option<String>>,
    model: Vec<Option<String>>,
    status: Vec<i32>,
    error_code: Vec<Option<String>>,
    upstream_status: Vec<Option<i32>>,
    bytes_in: Vec<i64>,
    bytes_out: Vec<i64>,
    prompt_tokens: Vec<Option<i64>>,
    completion_tokens: Vec<Option<i64>>,
    total_tokens: Vec<Option<i64>>,
    cached_tokens: Vec<Option<i64>>,
    stream: Vec<bool>,
    client_aborted: Vec<bool>,
    record: Vec<String>,
}

impl PgColumns {
    fn with_capacity(n: usize) -> Self {
        PgColumns {
            request_id: Vec::with_capacity(n),
            started_at: Vec::with_capacity(n),
            duration_ms: Vec::with_capacity(n),
            ttfb_ms: Vec::with_capacity(n),
            client_ip: Vec::with_capacity(n),
            method: Vec::with_capacity(n),
            path: Vec::with_capacity(n),
            provider: Vec::with_capacity(n),
            kid: Vec::with_capacity(n),
            jti: Vec::with_capacity(n),
            sub: Vec::with_capacity(n),
            model: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            error_code: Vec::with_capacity(n),
            upstream_status: Vec::with_capacity(n),
            bytes_in: Vec::with_capacity(n),
            bytes_out: Vec::with_capacity(n),
            prompt_tokens: Vec::with_capacity(n),
            completion_tokens: Vec::with_capacity(n),
            total_tokens: Vec::with_capacity(n),
            cached_tokens: Vec::with_capacity(n),
            stream: Vec::with_capacity(n),
            client_aborted: Vec::with_capacity(n),
            record: Vec::with_capacity(n),
        }
    }
}

/// PostgreSQL: the same rows through [`schema::Dialect::postgres_unnest_insert`]
/// (one statement per 4 MiB of JSON instead of one per 200 rows), in one
/// transaction.
async fn insert_postgres(pool: &Pool<sqlx::Postgres>, rows: Vec<Row>) -> Result<(), sqlx::Error> {
    let sql = Dialect::postgres_unnest_insert();
    let mut chunks = statements(rows, usize::MAX);
    // One statement is atomic on its own: no BEGIN/COMMIT round trips for
    // the usual batch. Several (over 4 MiB of JSON) share a transaction.
    if chunks.len() == 1 {
        let chunk = chunks.pop().unwrap_or_default();
        pg_query(&sql, chunk).execute(pool).await?;
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for chunk in chunks {
        pg_query(&sql, chunk).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The UNNEST insert of `chunk`, its columns bound as arrays.
fn pg_query(
    sql: &str,
    chunk: Vec<Row>,
) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut c = PgColumns::with_capacity(chunk.len());
    for r in chunk {
        c.request_id.push(r.request_id);
        c.started_at.push(r.started_at);
        c.duration_ms.push(r.duration_ms);
        c.ttfb_ms.push(r.ttfb_ms);
        c.client_ip.push(r.client_ip);
        c.method.push(r.method);
        c.path.push(r.path);
        c.provider.push(r.provider);
        c.kid.push(r.kid);
        c.jti.push(r.jti);
        c.sub.push(r.sub);
        c.model.push(r.model);
        c.status.push(r.status);
        c.error_code.push(r.error_code);
        c.upstream_status.push(r.upstream_status);
        c.bytes_in.push(r.bytes_in);
        c.bytes_out.push(r.bytes_out);
        c.prompt_tokens.push(r.prompt_tokens);
        c.completion_tokens.push(r.completion_tokens);
        c.total_tokens.push(r.total_tokens);
        c.cached_tokens.push(r.cached_tokens);
        c.stream.push(r.stream);
        c.client_aborted.push(r.client_aborted);
        c.record.push(r.record);
    }
    sqlx::query(sql)
        .bind(c.request_id)
        .bind(c.started_at)
        .bind(c.duration_ms)
        .bind(c.ttfb_ms)
        .bind(c.client_ip)
        .bind(c.method)
        .bind(c.path)
        .bind(c.provider)
        .bind(c.kid)
        .bind(c.jti)
        .bind(c.sub)
        .bind(c.model)
        .bind(c.status)
        .bind(c.error_code)
        .bind(c.upstream_status)
        .bind(c.bytes_in)
        .bind(c.bytes_out)
        .bind(c.prompt_tokens)
        .bind(c.completion_tokens)
        .bind(c.total_tokens)
        .bind(c.cached_tokens)
        .bind(c.stream)
        .bind(c.client_aborted)
        .bind(c.record)
}

impl Sink for DatabaseSink {
    fn name(&self) -> &str {
        self.inner.dialect.kind()
    }

    fn write_batch<'a>(&'a self, batch: &'a [Arc<LogRecord>]) -> SinkFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.inner.timeout, self.inner.write(batch)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::Retryable(format!(
                    "{}: no answer within {} s",
                    self.inner.dialect.kind(),
                    self.inner.timeout.as_secs()
                ))),
            }
        })
    }

    fn flush<'a>(&'a self) -> SinkFuture<'a> {
        Box::pin(async move {
            if let Some(w) = self.warmup.lock().ok().and_then(|mut g| g.take()) {
                w.abort();
            }
            match &self.inner.pools {
                Pools::Sqlite(p) => p.close().await,
                Pools::Postgres(p) => p.close().await,
                Pools::MySql(p) => p.close().await,
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn jsonb_safe_replaces_only_real_nul_escapes() {
        let r = LogRecord {
            request_id: "a\0b".into(),
            path: "\\u0000 literal".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&r).unwrap();
        let safe = jsonb_safe(json);
        let back: LogRecord = serde_json::from_str(&safe).unwrap();
        assert_eq!(back.request_id, "a\u{fffd}b");
        assert_eq!(back.path, "\\u0000 literal");
    }

    #[test]
    fn short_columns_are_cut_and_clean() {
        assert_eq!(short(&"é".repeat(300)).chars().count(), COLUMN_CHARS);
        assert_eq!(short("a\0"), "a\u{fffd}");
    }

    #[tokio::test]
    async fn debug_and_errors_hide_the_connection_string() {
        let s = SecretString::new("postgres://relay:pa55w0rd@127.0.0.1:1/logs".into());
        let sink = DatabaseSink::new("postgres", &s).unwrap();
        let dbg = format!("{sink:?}");
        assert!(
            !dbg.contains("pa55w0rd") && !dbg.contains("127.0.0.1"),
            "{dbg}"
        );
        let e = sink
            .inner
            .classify(&sqlx::Error::Protocol("bad pa55w0rd".into()));
        assert!(
            matches!(&e, SinkError::Retryable(m) if !m.contains("pa55w0rd")),
            "{e}"
        );
        let err = DatabaseSink::new("postgres", &SecretString::new("pa55w0rd".into()))
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("pa55w0rd") && err.contains("connection_string"),
            "{err}"
        );
        sink.flush().await.unwrap();
    }
}
