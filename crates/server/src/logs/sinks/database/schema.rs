//! The table, its migrations and the SQL that differs between SQLite,
//! PostgreSQL and MySQL/MariaDB. Everything else is one code path.
//!
//! # Table `relayapi_logs` (documented in `docs/logging.md`)
//!
//! One row per request, keyed by `request_id` (so a retried batch never
//! adds a row: `ON CONFLICT DO NOTHING` / `INSERT IGNORE`). The columns
//! people filter and aggregate on are real, indexed where marked, and the
//! whole record is kept as JSON (`JSONB` / `JSON` / `TEXT`) in `record`.
//! Text columns are cut to [`COLUMN_CHARS`] characters (MySQL index limits);
//! `record` always has the full values.
//!
//! # Migrations
//!
//! `relayapi_log_migrations(version, name, applied_at)` lists what has been
//! applied. At start (and again if the table disappears) every migration
//! newer than the highest recorded version runs, then its version is
//! recorded. PostgreSQL and SQLite run each migration in a transaction;
//! MySQL commits DDL implicitly, so its statements are written to be safe
//! to run twice. A later release appends migrations here; it never edits
//! one that shipped. Relays that start together against one database take
//! turns ([`Dialect::migration_lock`]), so the loser of a race does not see
//! the winner's half-made table as an error.

/// Table the records go to.
pub const TABLE: &str = "relayapi_logs";
/// Bookkeeping table of applied migrations.
pub const MIGRATIONS_TABLE: &str = "relayapi_log_migrations";
/// The highest migration this build knows.
pub const SCHEMA_VERSION: i64 = 2;
/// Longest value (in characters) kept in a short text column.
pub const COLUMN_CHARS: usize = 191;

/// Columns in insert order; `record` (the JSON) is last.
pub const COLUMNS: [&str; 24] = [
    "request_id",
    "started_at",
    "duration_ms",
    "ttfb_ms",
    "client_ip",
    "method",
    "path",
    "provider",
    "kid",
    "jti",
    "sub",
    "model",
    "status",
    "error_code",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "stream",
    "client_aborted",
    "record",
];

/// Columns with an index of their own.
pub const INDEXED: [&str; 6] = ["started_at", "jti", "sub", "provider", "model", "status"];

/// Which SQL to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

/// One schema step; its SQL per dialect is [`Dialect::migration`].
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create relayapi_logs",
    },
    Migration {
        version: 2,
        name: "record compressed with lz4 (PostgreSQL 14+)",
    },
];

impl Dialect {
    /// The config's `log.database.type` value.
    pub fn kind(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// DDL creating the migrations table (safe to run every start).
    pub fn migrations_table(self) -> String {
        match self {
            Dialect::MySql => format!(
                "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version BIGINT NOT NULL PRIMARY KEY, \
                 name VARCHAR(191) NOT NULL, applied_at VARCHAR(64) NOT NULL) CHARACTER SET utf8mb4"
            ),
            _ => format!(
                "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version BIGINT NOT NULL PRIMARY KEY, \
                 name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            ),
        }
    }

    /// Statements that take and release a database-wide lock around the
    /// migrations (a session advisory lock, MySQL's named lock), so relays
    /// starting together migrate one at a time. SQLite has none: its
    /// writers are serialised by the file lock, and a lost race is a
    /// primary-key error on the version row, retried.
    pub fn migration_lock(self) -> Option<(&'static str, &'static str)> {
        match self {
            // 0x52454c4159 is "RELAY": any constant, the same in every relay.
            Dialect::Postgres => Some((
                "SELECT pg_advisory_lock(353349943641)",
                "SELECT pg_advisory_unlock(353349943641)",
            )),
            // Waits up to 60 s; on a timeout the migration runs unlocked
            // (and at worst fails once and is retried).
            Dialect::MySql => Some((
                "SELECT GET_LOCK('relayapi_log_migrations', 60)",
                "SELECT RELEASE_LOCK('relayapi_log_migrations')",
            )),
            Dialect::Sqlite => None,
        }
    }

    /// The statements of migration `version`.
    pub fn migration(self, version: i64) -> Vec<String> {
        match version {
            1 => self.create_logs_table(),
            2 => self.lz4_record(),
            _ => Vec::new(),
        }
    }

    fn create_logs_table(self) -> Vec<String> {
        let (text, short, time, boolean, json) = match self {
            Dialect::Postgres => ("TEXT", "TEXT", "TIMESTAMPTZ", "BOOLEAN", "JSONB"),
            Dialect::Sqlite => ("TEXT", "TEXT", "TEXT", "INTEGER", "TEXT"),
            Dialect::MySql => (
                "MEDIUMTEXT",
                "VARCHAR(191)",
                "DATETIME(3)",
                "BOOLEAN",
                "JSON",
            ),
        };
        let table = format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (\
             request_id {short} NOT NULL PRIMARY KEY, \
             started_at {time} NOT NULL, \
             duration_ms BIGINT NOT NULL, \
             ttfb_ms BIGINT NULL, \
             client_ip {short} NOT NULL, \
             method {short} NOT NULL, \
             path {text} NOT NULL, \
             provider {short} NULL, \
             kid {short} NULL, \
             jti {short} NULL, \
             sub {short} NULL, \
             model {short} NULL, \
             status INTEGER NOT NULL, \
             error_code {short} NULL, \
             upstream_status INTEGER NULL, \
             bytes_in BIGINT NOT NULL, \
             bytes_out BIGINT NOT NULL, \
             prompt_tokens BIGINT NULL, \
             completion_tokens BIGINT NULL, \
             total_tokens BIGINT NULL, \
             cached_tokens BIGINT NULL, \
             stream {boolean} NOT NULL, \
             client_aborted {boolean} NOT NULL, \
             record {json} NOT NULL"
        );
        match self {
            // MySQL has no CREATE INDEX IF NOT EXISTS: indexes go inside the
            // CREATE TABLE, which is skipped as a whole when the table exists.
            // Binary collation: a jti or sub matches exactly, case included.
            Dialect::MySql => {
                let indexes: String = INDEXED
                    .iter()
                    .map(|c| format!(", INDEX {TABLE}_{c} ({c})"))
                    .collect();
                vec![format!(
                    "{table}{indexes}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )]
            }
            _ => {
                let mut v = vec![format!("{table})")];
                v.extend(
                    INDEXED.iter().map(|c| {
                        format!("CREATE INDEX IF NOT EXISTS {TABLE}_{c} ON {TABLE} ({c})")
                    }),
                );
                v
            }
        }
    }

    /// PostgreSQL compresses a record that does not fit a page (bodies on)
    /// with pglz by default; lz4 cost about a third less of the database's
    /// CPU per such row here. Older servers, or builds without lz4, keep
    /// pglz: the step is then a no-op rather than a failure. Existing rows
    /// are not rewritten.
    fn lz4_record(self) -> Vec<String> {
        match self {
            Dialect::Postgres => vec![format!(
                "DO $$ BEGIN \
                 IF current_setting('server_version_num')::int >= 140000 THEN \
                 EXECUTE 'ALTER TABLE {TABLE} ALTER COLUMN record SET COMPRESSION lz4'; \
                 END IF; \
                 EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN NULL; \
                 END $$"
            )],
            Dialect::Sqlite | Dialect::MySql => Vec::new(),
        }
    }

    /// Whether DDL can be rolled back (then a migration is one transaction).
    pub fn transactional_ddl(self) -> bool {
        !matches!(self, Dialect::MySql)
    }

    /// `INSERT ... (columns) ` up to `VALUES`.
    pub fn insert_head(self) -> String {
        let verb = match self {
            Dialect::MySql => "INSERT IGNORE INTO",
            _ => "INSERT INTO",
        };
        format!("{verb} {TABLE} ({}) ", COLUMNS.join(", "))
    }

    /// PostgreSQL's bulk insert: one statement, one array parameter per
    /// column, zipped by `UNNEST` (parsed and planned once whatever the
    /// row count; sqlx's recommended bulk path). Text arrays are cast to
    /// the column types in SQL, so the Rust side binds plain values.
    pub fn postgres_unnest_insert() -> String {
        let types = [
            "text",
            "timestamptz",
            "int8",
            "int8",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "int4",
            "text",
            "int4",
            "int8",
            "int8",
            "int8",
            "int8",
            "int8",
            "int8",
            "bool",
            "bool",
            "jsonb",
        ];
        let args: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| match *t {
                "timestamptz" | "jsonb" => format!("${}::text[]::{t}[]", i + 1),
                _ => format!("${}::{t}[]", i + 1),
            })
            .collect();
        format!(
            "INSERT INTO {TABLE} ({}) SELECT * FROM UNNEST({}) ON CONFLICT (request_id) DO NOTHING",
            COLUMNS.join(", "),
            args.join(", ")
        )
    }

    /// What follows the `VALUES` list: the idempotence clause.
    pub fn insert_tail(self) -> &'static str {
        match self {
            Dialect::MySql => "",
            _ => " ON CONFLICT (request_id) DO NOTHING",
        }
    }

    /// Cast appended to the `started_at` placeholder.
    pub fn time_cast(self) -> &'static str {
        match self {
            Dialect::Postgres => "::timestamptz",
            _ => "",
        }
    }

    /// Cast appended to the `record` placeholder.
    pub fn json_cast(self) -> &'static str {
        match self {
            Dialect::Postgres => "::jsonb",
            _ => "",
        }
    }

    /// `started_at` as this database wants it, from our RFC 3339
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn started_at(self, rfc3339: &str) -> String {
        match self {
            // DATETIME(3) takes "YYYY-MM-DD HH:MM:SS.mmm" (UTC by convention).
            Dialect::MySql => match relayapi_token::legacy::parse_rfc3339(rfc3339) {
                Some(_) if rfc3339.len() >= 19 => {
                    let frac = rfc3339
                        .get(19..)
                        .and_then(|r| r.strip_prefix('.'))
                        .map(|r| r.trim_end_matches(['Z', 'z']))
                        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
                        .map(|f| format!(".{}", &f[..f.len().min(3)]))
                        .unwrap_or_default();
                    format!("{} {}{frac}", &rfc3339[..10], &rfc3339[11..19])
                }
                _ => "1970-01-01 00:00:00".into(),
            },
            // PostgreSQL parses RFC 3339; SQLite keeps the text (it sorts).
            _ => {
                if relayapi_token::legacy::parse_rfc3339(rfc3339).is_some() {
                    rfc3339.to_string()
                } else {
                    "1970-01-01T00:00:00.000Z".into()
                }
            }
        }
    }

    /// True when the database refused the *data* (the same batch would fail
    /// again): such a batch is dropped and counted, never retried forever.
    /// Everything else (connection, locks, resources, permissions, a
    /// missing table) is worth retrying.
    pub fn is_data_error(self, code: &str) -> bool {
        match self {
            // SQLSTATE 22 data exception, 23 integrity, 54 program limit.
            Dialect::Postgres => ["22", "23", "54"].iter().any(|c| code.starts_with(c)),
            Dialect::MySql => ["22", "23"].iter().any(|c| code.starts_with(c)),
            // Primary result codes: TOOBIG, CONSTRAINT, MISMATCH, RANGE.
            Dialect::Sqlite => code
                .parse::<i64>()
                .is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25)),
        }
    }

    /// True when the error says our table is gone (then migrations run again).
    pub fn is_missing_table(self, code: &str, message: &str) -> bool {
        match self {
            Dialect::Postgres => code == "42P01",
            Dialect::MySql => code == "42S02",
            Dialect::Sqlite => message.contains("no such table"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn started_at_per_dialect() {
        let t = "2026-01-02T03:04:05.678Z";
        assert_eq!(Dialect::MySql.started_at(t), "2026-01-02 03:04:05.678");
        assert_eq!(Dialect::Postgres.started_at(t), t);
        assert_eq!(
            Dialect::MySql.started_at("2026-01-02T03:04:05Z"),
            "2026-01-02 03:04:05"
        );
        assert_eq!(
            Dialect::Sqlite.started_at("garbage"),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn every_column_is_created_and_inserted() {
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql] {
            let ddl = d.migration(1).join(";");
            for c in COLUMNS {
                assert!(ddl.contains(&format!("{c} ")), "{d:?} {c}");
            }
            for c in INDEXED {
                assert!(ddl.contains(&format!("{TABLE}_{c} ")), "{d:?} index {c}");
            }
            assert_eq!(d.insert_head().matches(", ").count(), COLUMNS.len() - 1);
        }
        let unnest = Dialect::postgres_unnest_insert();
        assert!(
            unnest.contains(&format!("${}::text[]::jsonb[]", COLUMNS.len())),
            "{unnest}"
        );
        assert!(Dialect::Postgres.migration(SCHEMA_VERSION + 1).is_empty());
        assert_eq!(MIGRATIONS.last().unwrap().version, SCHEMA_VERSION);
    }

    #[test]
    fn data_errors_are_permanent_the_rest_retryable() {
        assert!(Dialect::Postgres.is_data_error("22P02"));
        assert!(!Dialect::Postgres.is_data_error("08006"));
        assert!(!Dialect::Postgres.is_data_error("57P01"));
        assert!(Dialect::MySql.is_data_error("22001"));
        assert!(!Dialect::MySql.is_data_error("HY000"));
        assert!(Dialect::Sqlite.is_data_error("2067"));
        assert!(!Dialect::Sqlite.is_data_error("5"));
        assert!(Dialect::Sqlite.is_missing_table("1", "no such table: relayapi_logs"));
    }
}
