//! The SQLite side of budgets, revocations and per-token usage: schema,
//! and the operations the writer thread applies inside its group-commit
//! transaction (so they share its exactness and durability: a reply is
//! sent only after the transaction holding the change committed).
//!
//! Tables (all `WITHOUT ROWID`, keyed by jti):
//! - `token_budget (jti, used, exp)` — LLM tokens used *including*
//!   outstanding reservations; deleted an hour after `exp`.
//! - `token_usage (jti, sub, calls, llm_tokens, first_use, last_use, exp)` —
//!   admin statistics, indexed by `sub`; kept for the usage retention
//!   period after `exp`.
//! - `revoked_tokens (jti, revoked_at)` — kept forever (revocations are
//!   rare, and a token's `exp` is not known when it is revoked by id).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::super::{
    decide_budget, settled, unix_now, BudgetAdmission, SubReport, TokenReport, UsageDelta,
    USAGE_RETENTION_SECS,
};
use super::EXPIRED_GRACE_SECS;

/// The operations beyond `max_calls`, applied by the writer thread.
pub(super) enum PolicyOp {
    ReserveTokens { budget: u64, amount: u64, exp: i64 },
    SettleTokens { reserved: u64, actual: u64 },
    TokensUsed,
    Revoke { now: i64 },
    RecordUsage(Vec<(String, UsageDelta)>),
    TokenReport,
    SubReport(Option<String>),
}

pub(super) enum PolicyOutcome {
    Budget(BudgetAdmission),
    Used(u64),
    RevokedAt(i64),
    Recorded,
    Token(Box<TokenReport>),
    Subs(Vec<SubReport>),
}

pub(super) fn init(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS token_budget (
            jti TEXT PRIMARY KEY,
            used INTEGER NOT NULL,
            exp INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS token_usage (
            jti TEXT PRIMARY KEY,
            sub TEXT,
            calls INTEGER NOT NULL,
            llm_tokens INTEGER NOT NULL,
            first_use INTEGER NOT NULL,
            last_use INTEGER NOT NULL,
            exp INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS token_usage_sub ON token_usage (sub);
        CREATE TABLE IF NOT EXISTS revoked_tokens (
            jti TEXT PRIMARY KEY,
            revoked_at INTEGER NOT NULL
        ) WITHOUT ROWID;",
    )?;
    housekeeping(conn)?;
    Ok(())
}

/// Deletes budgets of long-expired tokens and usage rows past retention.
pub(super) fn housekeeping(conn: &Connection) -> rusqlite::Result<usize> {
    let now = unix_now();
    let budgets = conn.execute(
        "DELETE FROM token_budget WHERE exp < ?1",
        params![now - EXPIRED_GRACE_SECS],
    )?;
    let usage = conn.execute(
        "DELETE FROM token_usage WHERE exp < ?1",
        params![now.saturating_sub(USAGE_RETENTION_SECS)],
    )?;
    Ok(budgets + usage)
}

/// Every revocation, for the in-memory mirror the request path reads.
pub(super) fn load_revoked(conn: &Connection) -> rusqlite::Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT jti, revoked_at FROM revoked_tokens")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    rows.collect()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn budget_used(conn: &Connection, jti: &str) -> rusqlite::Result<Option<(u64, i64)>> {
    conn.prepare_cached("SELECT used, exp FROM token_budget WHERE jti = ?1")?
        .query_row(params![jti], |r| Ok((to_u64(r.get(0)?), r.get(1)?)))
        .optional()
}

fn set_budget(conn: &Connection, jti: &str, used: u64, exp: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO token_budget (jti, used, exp) VALUES (?1, ?2, ?3)
         ON CONFLICT (jti) DO UPDATE SET used = excluded.used, exp = max(exp, excluded.exp)",
    )?
    .execute(params![jti, to_i64(used), exp])?;
    Ok(())
}

/// Applies one operation for `jti` inside the writer's open transaction.
pub(super) fn apply(
    conn: &Connection,
    jti: &str,
    op: &PolicyOp,
) -> rusqlite::Result<PolicyOutcome> {
    Ok(match op {
        PolicyOp::ReserveTokens {
            budget,
            amount,
            exp,
        } => {
            let used = budget_used(conn, jti)?.map_or(0, |(used, _)| used);
            let (admission, new_used) = decide_budget(used, *budget, *amount);
            if let Some(n) = new_used {
                set_budget(conn, jti, n, *exp)?;
            }
            PolicyOutcome::Budget(admission)
        }
        PolicyOp::SettleTokens { reserved, actual } => match budget_used(conn, jti)? {
            Some((used, exp)) => {
                let n = settled(used, *reserved, *actual);
                set_budget(conn, jti, n, exp)?;
                PolicyOutcome::Used(n)
            }
            None => PolicyOutcome::Used(0),
        },
        PolicyOp::TokensUsed => {
            PolicyOutcome::Used(budget_used(conn, jti)?.map_or(0, |(used, _)| used))
        }
        PolicyOp::Revoke { now } => {
            conn.prepare_cached(
                "INSERT INTO revoked_tokens (jti, revoked_at) VALUES (?1, ?2)
                 ON CONFLICT (jti) DO NOTHING",
            )?
            .execute(params![jti, now])?;
            let at = conn
                .prepare_cached("SELECT revoked_at FROM revoked_tokens WHERE jti = ?1")?
                .query_row(params![jti], |r| r.get(0))?;
            PolicyOutcome::RevokedAt(at)
        }
        PolicyOp::RecordUsage(deltas) => {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO token_usage (jti, sub, calls, llm_tokens, first_use, last_use, exp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (jti) DO UPDATE SET
                    sub = coalesce(excluded.sub, sub),
                    calls = calls + excluded.calls,
                    llm_tokens = llm_tokens + excluded.llm_tokens,
                    first_use = min(first_use, excluded.first_use),
                    last_use = max(last_use, excluded.last_use),
                    exp = max(exp, excluded.exp)",
            )?;
            for (jti, d) in deltas {
                stmt.execute(params![
                    jti,
                    d.sub,
                    to_i64(d.calls),
                    to_i64(d.llm_tokens),
                    d.first_use,
                    d.last_use,
                    d.exp
                ])?;
            }
            PolicyOutcome::Recorded
        }
        PolicyOp::TokenReport => PolicyOutcome::Token(Box::new(token_report(conn, jti)?)),
        PolicyOp::SubReport(sub) => PolicyOutcome::Subs(sub_report(conn, sub.as_deref())?),
    })
}

fn token_report(conn: &Connection, jti: &str) -> rusqlite::Result<TokenReport> {
    let row = conn
        .prepare_cached(
            "SELECT sub, calls, llm_tokens, first_use, last_use FROM token_usage WHERE jti = ?1",
        )?
        .query_row(params![jti], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                to_u64(r.get(1)?),
                to_u64(r.get(2)?),
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let max_calls_used = conn
        .prepare_cached("SELECT used FROM token_calls WHERE jti = ?1")?
        .query_row(params![jti], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, to_u64);
    let revoked_at = conn
        .prepare_cached("SELECT revoked_at FROM revoked_tokens WHERE jti = ?1")?
        .query_row(params![jti], |r| r.get::<_, i64>(0))
        .optional()?;
    let mut report = TokenReport {
        jti: jti.to_owned(),
        max_calls_used,
        budget_used: budget_used(conn, jti)?.map(|(used, _)| used),
        revoked: revoked_at.is_some(),
        revoked_at,
        ..TokenReport::default()
    };
    if let Some((sub, calls, llm_tokens, first, last)) = row {
        report.sub = sub;
        report.calls = calls;
        report.llm_tokens = llm_tokens;
        if calls > 0 {
            report.first_use = Some(first);
            report.last_use = Some(last);
        }
    }
    Ok(report)
}

fn sub_report(conn: &Connection, sub: Option<&str>) -> rusqlite::Result<Vec<SubReport>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sub, count(*), sum(calls), sum(llm_tokens),
                min(CASE WHEN calls > 0 THEN first_use END),
                max(CASE WHEN calls > 0 THEN last_use END)
         FROM token_usage
         WHERE sub IS NOT NULL AND (?1 IS NULL OR sub = ?1)
         GROUP BY sub ORDER BY sub",
    )?;
    let rows = stmt.query_map(params![sub], |r| {
        Ok(SubReport {
            sub: r.get(0)?,
            tokens: to_u64(r.get(1)?),
            calls: to_u64(r.get(2)?),
            llm_tokens: to_u64(r.get(3)?),
            first_use: r.get(4)?,
            last_use: r.get(5)?,
        })
    })?;
    rows.collect()
}
