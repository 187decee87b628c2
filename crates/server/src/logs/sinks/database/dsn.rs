//! `log.database.connection_string` → typed sqlx connect options, and the
//! password scrubbing every surfaced error goes through.
//!
//! Accepted spellings (the first of each is what the docs show):
//!
//! - **postgres**: a URL `postgres://user:password@host:5432/db?sslmode=require`
//!   (`postgresql://` too), or libpq keywords
//!   `host=... port=... user=... password=... dbname=... sslmode=...` (the
//!   form earlier RelayAPI configs use).
//! - **mysql** (MySQL and MariaDB): a URL `mysql://user:password@host:3306/db`
//!   (`mariadb://` too), or the Go driver's DSN
//!   `user:password@tcp(host:3306)/db?params` (params other than `tls` are
//!   ignored).
//! - **sqlite**: a file path (`relayapi-logs.db`), or `sqlite://path`,
//!   `sqlite:path`. The file is created if missing.
//!
//! Nothing here ever puts the connection string into an error message:
//! [`DsnError`] says what is wrong, not what was written.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::ConnectOptions;

/// What is wrong with a connection string. Never contains the string.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DsnError(pub &'static str);

/// Typed options for one of the three databases.
#[derive(Debug, Clone)]
pub enum Options {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
    MySql(MySqlConnectOptions),
}

/// How long SQLite waits for a lock held by another process.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses `dsn` for database `kind` (`sqlite`, `postgres`, `mysql`).
pub fn parse(kind: &str, dsn: &str) -> Result<Options, DsnError> {
    let dsn = dsn.trim();
    if dsn.is_empty() {
        return Err(DsnError("the connection string is empty"));
    }
    let options = match kind {
        "sqlite" => Options::Sqlite(sqlite(dsn)?),
        "postgres" => Options::Postgres(postgres(dsn)?),
        "mysql" => Options::MySql(mysql(dsn)?),
        _ => return Err(DsnError("unknown database type")),
    };
    // Statements carry no values (all bound), but they are noise at debug
    // level; failures are reported by the sink itself.
    Ok(match options {
        Options::Sqlite(o) => Options::Sqlite(o.disable_statement_logging()),
        Options::Postgres(o) => Options::Postgres(
            o.disable_statement_logging()
                .application_name("relayapi-logs"),
        ),
        Options::MySql(o) => Options::MySql(o.disable_statement_logging()),
    })
}

fn sqlite(dsn: &str) -> Result<SqliteConnectOptions, DsnError> {
    let o = if dsn.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(dsn)
            .map_err(|_| DsnError("not a valid sqlite: URL; write a file path or sqlite://path"))?
    } else {
        SqliteConnectOptions::new().filename(dsn)
    };
    Ok(o.create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT))
}

fn postgres(dsn: &str) -> Result<PgConnectOptions, DsnError> {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        return PgConnectOptions::from_str(dsn).map_err(|_| {
            DsnError("not a valid PostgreSQL URL; write postgres://user:password@host:5432/db")
        });
    }
    let pairs = keywords(dsn).ok_or(DsnError(
        "not a PostgreSQL URL (postgres://user:password@host/db) nor libpq keywords (host=... user=... password=... dbname=...)",
    ))?;
    let mut o = PgConnectOptions::new_without_pgpass();
    for (k, v) in &pairs {
        o = match k.as_str() {
            "host" | "hostaddr" => o.host(v),
            "port" => o.port(
                v.parse()
                    .map_err(|_| DsnError("port= is not a port number"))?,
            ),
            "user" => o.username(v),
            "password" => o.password(v),
            "dbname" => o.database(v),
            "sslmode" => o.ssl_mode(PgSslMode::from_str(v).map_err(|_| {
                DsnError("sslmode= must be disable, prefer, require, verify-ca or verify-full")
            })?),
            "sslrootcert" => o.ssl_root_cert(v.as_str()),
            "application_name" => o.application_name(v),
            // Client-side settings without an equivalent here (connect_timeout,
            // TimeZone, ...) are accepted and ignored.
            _ => o,
        };
    }
    Ok(o)
}

/// libpq `key=value` pairs separated by spaces; values may be single-quoted
/// with `\'` and `\\` escapes. `None` when it is not that shape.
fn keywords(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.to_ascii_lowercase(), value));
    }
    (!out.is_empty()).then_some(out)
}

fn mysql(dsn: &str) -> Result<MySqlConnectOptions, DsnError> {
    if let Some(rest) = dsn.strip_prefix("mariadb://") {
        return mysql(&format!("mysql://{rest}"));
    }
    if dsn.starts_with("mysql://") {
        return MySqlConnectOptions::from_str(dsn).map_err(|_| {
            DsnError("not a valid MySQL URL; write mysql://user:password@host:3306/db")
        });
    }
    go_mysql(dsn).ok_or(DsnError(
        "not a MySQL URL (mysql://user:password@host:3306/db) nor a Go DSN (user:password@tcp(host:3306)/db)",
    ))
}

/// The Go MySQL driver's `[user[:password]@][net[(addr)]]/dbname[?params]`.
fn go_mysql(dsn: &str) -> Option<MySqlConnectOptions> {
    // The password may contain '@' and '/': split at the last '@' before
    // the address part.
    let slash = dsn.rfind(")/").map(|i| i + 1).or_else(|| dsn.find('/'))?;
    let (head, tail) = dsn.split_at(slash);
    let tail = &tail[1..];
    let (db, params) = match tail.split_once('?') {
        Some((d, p)) => (d, Some(p)),
        None => (tail, None),
    };
    let (userinfo, addr) = match head.rfind('@') {
        Some(i) => (Some(&head[..i]), &head[i + 1..]),
        None => (None, head),
    };
    let mut o = MySqlConnectOptions::new();
    if let Some(u) = userinfo {
        let (user, pass) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        o = o.username(user);
        if let Some(p) = pass {
            o = o.password(p);
        }
    }
    if !addr.is_empty() {
        let (net, inner) = match addr.split_once('(') {
            Some((n, rest)) => (n, rest.strip_suffix(')')?),
            None => (addr, ""),
        };
        match net {
            "tcp" | "" => {
                if !inner.is_empty() {
                    let (host, port) = match inner.rsplit_once(':') {
                        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
                        None => (inner, None),
                    };
                    o = o.host(host.trim_start_matches('[').trim_end_matches(']'));
                    if let Some(p) = port {
                        o = o.port(p);
                    }
                }
            }
            "unix" => o = o.socket(inner),
            _ => return None,
        }
    }
    if !db.is_empty() {
        o = o.database(db);
    }
    for pair in params.unwrap_or("").split('&') {
        if let Some(("tls", v)) = pair.split_once('=') {
            o = o.ssl_mode(match v {
                "true" => MySqlSslMode::VerifyIdentity,
                "skip-verify" | "preferred" => MySqlSslMode::Required,
                "false" => MySqlSslMode::Disabled,
                _ => return None,
            });
        }
    }
    Some(o)
}

/// The password written in `dsn`, in every form it may appear in an error
/// (as written and percent-decoded). Empty when there is none.
pub fn passwords(dsn: &str) -> Vec<String> {
    let mut out = Vec::new();
    let dsn = dsn.trim();
    if let Some(rest) = dsn.split_once("://").map(|(_, r)| r) {
        // URL userinfo: everything before the last '@' of the authority.
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, p)) = userinfo.split_once(':') {
                out.push(p.to_string());
            }
        }
        for pair in rest
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
        {
            if let Some(("password", p)) = pair.split_once('=') {
                out.push(p.to_string());
            }
        }
    } else if let Some(pairs) = keywords(dsn) {
        out.extend(
            pairs
                .into_iter()
                .filter(|(k, _)| k == "password")
                .map(|(_, v)| v),
        );
    } else if let Some(i) = dsn.rfind('@') {
        if let Some((_, p)) = dsn[..i].split_once(':') {
            out.push(p.to_string());
        }
    }
    let decoded: Vec<String> = out
        .iter()
        .filter_map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        })
        .collect();
    out.extend(decoded);
    out.retain(|p| !p.is_empty());
    out.sort();
    out.dedup();
    out
}

/// `text` with every occurrence of a password replaced by `[REDACTED]`.
pub fn scrub(text: &str, passwords: &[String]) -> String {
    let mut s = text.to_string();
    for p in passwords {
        s = s.replace(p.as_str(), relayapi_token::secret::REDACTED);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn postgres_url_and_keywords() {
        let o = match parse(
            "postgres",
            "postgres://u:p%40ss@db.example:6543/logs?sslmode=require",
        )
        .unwrap()
        {
            Options::Postgres(o) => o,
            _ => unreachable!(),
        };
        assert_eq!(o.get_host(), "db.example");
        assert_eq!(o.get_port(), 6543);
        assert_eq!(o.get_database(), Some("logs"));
        let o = match parse(
            "postgres",
            "host=127.0.0.1 port=5433 user=relay password='s3 cr\\'et' dbname=logs sslmode=disable",
        )
        .unwrap()
        {
            Options::Postgres(o) => o,
            _ => unreachable!(),
        };
        assert_eq!((o.get_host(), o.get_port()), ("127.0.0.1", 5433));
        assert_eq!(o.get_username(), "relay");
        assert!(parse("postgres", "not a dsn").is_err());
        assert!(parse("postgres", "port=abc").is_err());
    }

    #[test]
    fn mysql_url_and_go_dsn() {
        assert!(parse("mysql", "mysql://root:pw@127.0.0.1:3307/logs").is_ok());
        assert!(parse("mysql", "mariadb://root:pw@127.0.0.1:3307/logs").is_ok());
        assert!(parse(
            "mysql",
            "root:p@ss/w@tcp(127.0.0.1:3307)/logs?charset=utf8mb4&parseTime=True"
        )
        .is_ok());
        assert!(parse("mysql", "root@unix(/tmp/my.sock)/logs").is_ok());
        assert!(parse("mysql", "root:pw@tcp(127.0.0.1:x)/logs").is_err());
        assert!(parse("mysql", "nonsense").is_err());
    }

    #[test]
    fn sqlite_path_or_url() {
        assert!(parse("sqlite", "logs.db").is_ok());
        assert!(parse("sqlite", "sqlite://logs.db").is_ok());
        assert!(parse("sqlite", "  ").is_err());
    }

    #[test]
    fn errors_never_echo_the_string_and_passwords_are_found() {
        let dsn = "postgres://relay:hunter2%21@db/x?sslmode=bogus";
        let e = parse("postgres", dsn).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let pw = passwords(dsn);
        assert!(pw.contains(&"hunter2%21".to_string()) && pw.contains(&"hunter2!".to_string()));
        assert_eq!(
            scrub("auth failed for hunter2! and hunter2%21", &pw),
            "auth failed for [REDACTED] and [REDACTED]"
        );
        assert_eq!(
            passwords("host=x password='a b' user=u"),
            vec!["a b".to_string()]
        );
        assert_eq!(passwords("root:pw@tcp(h:1)/db"), vec!["pw".to_string()]);
        assert!(passwords("logs.db").is_empty());
    }
}
