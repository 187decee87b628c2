//! The database sink against real SQLite, PostgreSQL and MariaDB (throwaway
//! servers from `common::db`): records of real requests queried back
//! (indexed columns and the JSON record), the versioned migration, a
//! retried batch that adds no row, and a PostgreSQL outage — down at start,
//! then stopped while requests pass — after which every record arrives
//! exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::db::{MariaDb, Postgres};
use common::*;
use relayapi::logs::record::LogRecord;
use relayapi::logs::sinks::database::DatabaseSink;
use relayapi::logs::sinks::Sink;
use relayapi::usage::UsageStore;
use relayapi_token::SecretString;
use serde_json::Value;

/// What every database returns for one row.
type RowTuple = (
    String,         // request_id
    i32,            // status
    Option<String>, // jti
    Option<String>, // sub
    Option<String>, // provider
    Option<String>, // model
    Option<i64>,    // total_tokens
    bool,           // stream
    Option<String>, // error_code
    String,         // record (JSON text)
);

const SELECT: &str = "SELECT request_id, status, jti, sub, provider, model, total_tokens, stream, error_code, RECORD FROM relayapi_logs ORDER BY request_id";

async fn db_env(kind: &str, url: &str) -> Env {
    let (kind, url) = (kind.to_string(), url.to_string());
    Env::start_with(
        move |c| {
            trust_loopback(c);
            c.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
            c.log.database.enabled = true;
            c.log.database.kind = kind;
            c.log.database.connection_string = SecretString::new(url);
            c.log.batch_max_delay = Duration::from_millis(20);
        },
        UsageStore::memory(),
    )
    .await
}

/// A JSON call, a stream with usage and a refused call; returns the jti.
async fn exercise(env: &Env, prefix: &str) -> String {
    let mut claims = env.claims("openai");
    claims.sub = Some("user-db".into());
    let token = env.mint(&claims);
    let url = format!("{}{token}/chat/completions", env.base());
    let r = env
        .http
        .post(&url)
        .header("x-request-id", format!("{prefix}-json"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let mut body = chat_body(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let r = env
        .http
        .post(&url)
        .header("x-request-id", format!("{prefix}-sse"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("[DONE]"));
    let r = env
        .http
        .post(format!(
            "{}{}x/chat/completions",
            env.base(),
            &token[..token.len() - 1]
        ))
        .header("x-request-id", format!("{prefix}-refused"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    claims.jti
}

/// Checks the three rows of [`exercise`].
fn check_rows(rows: &[RowTuple], prefix: &str, jti: &str) {
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let want = [
        format!("{prefix}-json"),
        format!("{prefix}-refused"),
        format!("{prefix}-sse"),
    ];
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
    for r in rows {
        let record: Value = serde_json::from_str(&r.9).unwrap();
        assert_eq!(
            record["request_id"], r.0,
            "the JSON record is the full record"
        );
        assert_eq!(record["status"], r.1);
    }
    let (json, refused, sse) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(json.1, 200);
    assert_eq!(json.2.as_deref(), Some(jti));
    assert_eq!(json.3.as_deref(), Some("user-db"));
    assert_eq!(json.4.as_deref(), Some("openai"));
    assert_eq!(json.5.as_deref(), Some("gpt-4o-mini"));
    assert!(json.6.unwrap() > 0);
    assert!(!json.7);
    let record: Value = serde_json::from_str(&json.9).unwrap();
    assert_eq!(
        record["usage"]["total_tokens"].as_i64(),
        json.6,
        "columns and record agree"
    );
    assert!(sse.7 && sse.6.unwrap() > 0, "stream usage: {sse:?}");
    assert_eq!(refused.1, 401);
    assert_eq!(refused.8.as_deref(), Some("token_invalid"));
    assert!(refused.2.is_none(), "no jti for an undecodable token");
}

fn batch(prefix: &str, n: usize) -> Vec<Arc<LogRecord>> {
    (0..n)
        .map(|i| {
            Arc::new(LogRecord {
                request_id: format!("{prefix}-{i:04}"),
                started_at: "2026-01-02T03:04:05.678Z".into(),
                method: "POST".into(),
                path: "/relayapi/chat/completions".into(),
                status: 200,
                // NUL and a long sub: both must be stored, not refused.
                sub: Some(format!("nul\0{}", "x".repeat(300))),
                ..Default::default()
            })
        })
        .collect()
}

/// Writing the same batch twice (a retry after a lost answer) adds no row.
async fn retry_is_idempotent(kind: &str, url: &str) {
    let sink = DatabaseSink::new(kind, &SecretString::new(url.into())).unwrap();
    let b = batch("retry", 450);
    sink.write_batch(&b).await.unwrap();
    sink.write_batch(&b).await.unwrap();
    sink.write_batch(&b[100..200]).await.unwrap();
    sink.flush().await.unwrap();
}

/// A table dropped behind the relay's back (by `drop_table`, after one
/// row landed) makes the next write fail, to be retried; the retry creates
/// the table again and its batch of five lands.
async fn write_across_a_dropped_table(
    kind: &str,
    url: &str,
    drop_table: impl std::future::Future<Output = ()>,
) {
    let sink = DatabaseSink::new(kind, &SecretString::new(url.into())).unwrap();
    let b = batch("vanish", 5);
    sink.write_batch(&b[..1]).await.unwrap();
    drop_table.await;
    let first = sink.write_batch(&b).await;
    assert!(
        first.is_err(),
        "the write that finds the table gone fails (and is retried)"
    );
    sink.write_batch(&b)
        .await
        .expect("the retry recreates the table");
    sink.flush().await.unwrap();
}

/// Relays started together against a fresh database: their migrations take
/// turns, so every first write lands (unserialised, the loser of the race
/// met a duplicate key in the catalog or in the version table).
async fn first_starts_take_turns(kind: &str, url: &str) {
    let sinks: Vec<DatabaseSink> = (0..4)
        .map(|_| DatabaseSink::new(kind, &SecretString::new(url.into())).unwrap())
        .collect();
    let batches: Vec<_> = (0..4).map(|i| batch(&format!("race{i}"), 5)).collect();
    let writes = sinks.iter().zip(&batches).map(|(s, b)| s.write_batch(b));
    for (i, result) in futures_util::future::join_all(writes)
        .await
        .into_iter()
        .enumerate()
    {
        if let Err(e) = result {
            panic!("relay {i}'s first write failed: {e}");
        }
    }
    for sink in &sinks {
        sink.flush().await.unwrap();
    }
}

/// What [`first_starts_take_turns`] must leave: every row, each migration once.
macro_rules! check_race {
    ($pool:expr) => {{
        let pool = &$pool;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM relayapi_logs")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(rows, 20, "four relays' first batches");
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM relayapi_log_migrations ORDER BY version")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2], "each migration recorded once");
    }};
}

async fn wait_count<F: std::future::Future<Output = i64>>(
    what: &str,
    mut count: impl FnMut() -> F,
    want: i64,
) {
    // Generous: after an outage the pipeline's jittered backoff may wait a while.
    for _ in 0..1800 {
        if count().await >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count().await, want, "{what}");
}

/// The same checks on every database; only the SQL that differs is given:
/// rows of real requests (columns and JSON record agree), a typed time
/// column and a queryable JSON record, the six indexes, then a retried
/// batch that adds no row and the migration recorded once.
macro_rules! check_database {
    ($env:ident, $pool:expr, kind: $kind:expr, url: $url:expr, prefix: $prefix:expr,
     select: $select:expr, recent: $recent:expr, indexes: $indexes:expr,
     before_stop: $extra:block) => {{
        let jti = exercise(&$env, $prefix).await;
        let pool = &$pool;
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM relayapi_logs")
                .fetch_one(pool)
                .await
                .unwrap_or(0)
        };
        wait_count("three rows", count, 3).await;
        let rows: Vec<RowTuple> = sqlx::query_as(&$select).fetch_all(pool).await.unwrap();
        check_rows(&rows, $prefix, &jti);
        let recent: i64 = sqlx::query_scalar($recent).fetch_one(pool).await.unwrap();
        assert_eq!(recent, 2, "a typed time column and a queryable JSON record");
        let indexes: i64 = sqlx::query_scalar($indexes).fetch_one(pool).await.unwrap();
        assert_eq!(indexes, 6, "one index per filter column");
        $extra
        $env.relay.stop().await;

        retry_is_idempotent($kind, $url).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM relayapi_logs WHERE request_id LIKE 'retry-%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(n, 450, "a retried batch adds no row");
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM relayapi_log_migrations")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2], "migrated once, by version");
        write_across_a_dropped_table($kind, $url, async {
            sqlx::query("DROP TABLE relayapi_logs").execute(pool).await.unwrap();
        })
        .await;
        assert_eq!(count().await, 5, "the recreated table holds the retried batch, once");
        let indexes: i64 = sqlx::query_scalar($indexes).fetch_one(pool).await.unwrap();
        assert_eq!(indexes, 6, "the recreated table has its indexes again");
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_migration_and_idempotent_retry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.db");
    let url = path.to_str().unwrap();
    let env = db_env("sqlite", url).await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{url}?mode=rwc"))
        .await
        .unwrap();
    check_database!(env, pool, kind: "sqlite", url: url, prefix: "sq",
        select: SELECT,
        recent: "SELECT COUNT(*) FROM relayapi_logs WHERE started_at > '2020-01-01T00:00:00Z' \
                 AND json_extract(record, '$.provider') = 'openai'",
        indexes: "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' \
                  AND name LIKE 'relayapi_logs_%'",
        before_stop: {});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_migration_and_idempotent_retry() {
    let Some(pg) = tokio::task::spawn_blocking(Postgres::start).await.unwrap() else {
        return;
    };
    let env = db_env("postgres", &pg.url()).await;
    let pool = pg.pool().await;
    check_database!(env, pool, kind: "postgres", url: &pg.url(), prefix: "pg",
    select: SELECT.replace("RECORD", "record::text"),
    recent: "SELECT COUNT(*) FROM relayapi_logs WHERE started_at > now() - interval '1 hour' \
             AND record->>'provider' = 'openai'",
    indexes: "SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'relayapi_logs' \
              AND indexname LIKE 'relayapi_logs_%' AND indexname <> 'relayapi_logs_pkey'",
    before_stop: {
        if pg.tls {
            // The relay's pooled connections (still open) went over TLS.
            let tls: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'relayapi-logs' AND s.ssl",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            assert!(tls >= 1, "sslmode=require: the sink's connections use TLS");
        }
        // Migration 2: records that need TOAST are lz4-compressed on
        // PostgreSQL 14+ (Debian's builds have lz4; CI installs 15).
        let version: i32 =
            sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                .fetch_one(&pool)
                .await
                .unwrap();
        if version < 140000 {
            eprintln!("SKIP: lz4 check, PostgreSQL {version} has no column compression");
        } else {
            let compression: String = sqlx::query_scalar(
                "SELECT attcompression::text FROM pg_attribute \
                 WHERE attrelid = 'relayapi_logs'::regclass AND attname = 'record'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(compression, "l", "record column compressed with lz4");
        }
    });
    sqlx::query("CREATE DATABASE race")
        .execute(&pool)
        .await
        .unwrap();
    first_starts_take_turns("postgres", &pg.url_for("race")).await;
    check_race!(sqlx::PgPool::connect(&pg.url_for("race")).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_rows_migration_and_idempotent_retry() {
    let Some(my) = tokio::task::spawn_blocking(MariaDb::start).await.unwrap() else {
        return;
    };
    let env = db_env("mysql", &my.url()).await;
    let pool = my.pool().await;
    // Binary collation (exact matches) makes sqlx see the text columns as
    // VARBINARY; other clients see text. CAST for sqlx's String.
    let mut select = SELECT.to_string();
    for c in [
        "request_id",
        "jti",
        "sub",
        "provider",
        "model",
        "error_code",
        "RECORD",
    ] {
        select = select.replacen(&format!("{c},"), &format!("CAST({c} AS CHAR),"), 1);
        select = select.replacen(&format!("{c} FROM"), &format!("CAST({c} AS CHAR) FROM"), 1);
    }
    check_database!(env, pool, kind: "mysql", url: &my.url(), prefix: "my",
        select: select,
        recent: "SELECT COUNT(*) FROM relayapi_logs WHERE started_at > UTC_TIMESTAMP() - INTERVAL 1 HOUR \
                 AND JSON_VALUE(record, '$.provider') = 'openai'",
        indexes: "SELECT COUNT(DISTINCT index_name) FROM information_schema.statistics \
                  WHERE table_name = 'relayapi_logs' AND index_name LIKE 'relayapi_logs_%'",
        before_stop: {});
    first_starts_take_turns("mysql", &my.url_for("race")).await;
    check_race!(sqlx::MySqlPool::connect(&my.url_for("race")).await.unwrap());
}

/// 1,000 requests while PostgreSQL is down (at the relay's start, then
/// stopped in the middle); after it is back every record is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_no_record_and_duplicates_none() {
    let Some(mut pg) = tokio::task::spawn_blocking(Postgres::start).await.unwrap() else {
        return;
    };
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_path_buf();
    let url = pg.url();
    let env = Env::start_with(
        move |c| {
            trust_loopback(c);
            c.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
            c.log.database.enabled = true;
            c.log.database.kind = "postgres".into();
            c.log.database.connection_string = SecretString::new(url);
            c.log.batch_max_delay = Duration::from_millis(20);
            c.log.queue_capacity = 50;
            c.log.spool_dir = Some(spool_dir);
        },
        UsageStore::memory(),
    )
    .await;
    let url = format!("{}{}/models", env.base(), env.token("openai"));
    let send = |range: std::ops::Range<usize>| {
        get_each(&env.http, &url, range.map(|i| format!("outage-{i:04}")))
    };
    // Down at start: the relay serves, records wait.
    assert!(send(0..400).await.iter().all(|s| *s == 200));
    let stats = || env.relay.state.logger.as_ref().unwrap().pipeline.stats()[0].clone();
    // The first write waits for a connection (5 s), then fails retryably.
    for _ in 0..400 {
        if stats().retries > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = stats();
    assert!(st.retries > 0 && st.delivered == 0, "{st:?}");
    let err = st.last_error.unwrap_or_default();
    assert!(err.starts_with("retryable: postgres"), "{err}");
    assert!(!err.contains(&pg.password), "no password in errors: {err}");
    // Up, then down again while requests pass, then up.
    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let first = send(400..700);
    let (statuses, pg_back) = tokio::join!(first, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::spawn_blocking(move || {
            pg.stop();
            pg
        })
        .await
        .unwrap()
    });
    pg = pg_back;
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(send(700..1000).await.iter().all(|s| *s == 200));
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.restart();
        pg
    })
    .await
    .unwrap();

    let pool = pg.pool().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM relayapi_logs WHERE request_id LIKE 'outage-%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0)
    };
    wait_count("all 1000 records", count, 1000).await;
    let distinct: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT request_id) FROM relayapi_logs WHERE request_id LIKE 'outage-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(distinct, 1000, "exactly once");
    let st = stats();
    assert_eq!(st.dropped, 0, "{st:?}");
    assert!(
        st.spooled > 0,
        "the outage overflowed into the spool: {st:?}"
    );
    env.relay.stop().await;
}

/// A client that is not a trusted proxy cannot choose the id its record is
/// stored under: otherwise it could send the ids other requests will get
/// (or repeat one) and the idempotent insert would drop their records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_chosen_request_id_cannot_replace_another_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.db");
    let url = path.to_str().unwrap().to_string();
    let (kind, dsn) = ("sqlite".to_string(), url.clone());
    let env = Env::start_with(
        move |c| {
            c.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
            c.log.database.enabled = true;
            c.log.database.kind = kind;
            c.log.database.connection_string = SecretString::new(dsn);
            c.log.batch_max_delay = Duration::from_millis(20);
        },
        UsageStore::memory(),
    )
    .await;
    let url_models = format!("{}{}/models", env.base(), env.token("openai"));
    // The id the next generated one would be, and one repeated id.
    let probe = env.http.get(&url_models).send().await.unwrap();
    let seen = probe.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let guessed = format!("{}{:010x}", &seen[..seen.len() - 10], 1);
    let mut got = vec![seen];
    for id in [guessed.as_str(), "dup-id-A", "dup-id-A", "dup-id-A"] {
        let r = env
            .http
            .get(&url_models)
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answered = r.headers()["x-request-id"].to_str().unwrap().to_string();
        if id == "dup-id-A" {
            assert_ne!(answered, id, "an untrusted caller's id is not adopted");
        }
        got.push(answered);
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{url}?mode=rwc"))
        .await
        .unwrap();
    wait_count(
        "one row per request",
        || async {
            sqlx::query_scalar("SELECT COUNT(*) FROM relayapi_logs")
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
        },
        5,
    )
    .await;
    let mut ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM relayapi_logs")
        .fetch_all(&pool)
        .await
        .unwrap();
    ids.sort();
    got.sort();
    assert_eq!(
        ids, got,
        "every record under the id its client was answered with"
    );
    got.dedup();
    assert_eq!(got.len(), 5, "five requests, five ids: {got:?}");
    // The caller's own id is kept beside it, for tracing.
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM relayapi_logs WHERE json_extract(record, '$.client_request_id') = 'dup-id-A'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 3);
}
