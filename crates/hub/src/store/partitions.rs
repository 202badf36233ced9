//! PostgreSQL telemetry partitions: one per UTC day of receive time, named `uplinks_pYYYYMMDD`, created ahead
//! of time by the hub (and on demand when a batch finds none), dropped whole by retention.
//!
//! Several nodes run this at once: creation and dropping take a transaction-scoped advisory lock, and
//! `CREATE TABLE IF NOT EXISTS` makes a second creator a no-op.

use sqlx::PgPool;

use super::{BeginWrite as _, Result};

/// One day in milliseconds.
pub(super) const DAY_MS: i64 = 86_400_000;

/// The advisory lock key of partition maintenance ("hearth" + 1 in ASCII, an arbitrary constant).
const LOCK_KEY: i64 = 0x6865_6172_7468_0001;

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// Whether a database error is PostgreSQL's "no partition of relation found for row".
pub(super) fn is_missing_partition(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.code().as_deref() == Some("23514") && d.message().contains("no partition"))
}

/// The partition name of a day (days since the Unix epoch).
pub(super) fn name(day: i64) -> Option<String> {
    let julian = i32::try_from(day + UNIX_EPOCH_JULIAN_DAY).ok()?;
    let date = time::Date::from_julian_day(julian).ok()?;
    if date.year() < 1970 || date.year() > 9999 {
        return None;
    }
    Some(format!("uplinks_p{:04}{:02}{:02}", date.year(), u8::from(date.month()), date.day()))
}

/// The day of a partition name made by [`name`].
fn day_of(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("uplinks_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[0..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..8].parse().ok()?;
    let date = time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY)
}

/// Creates the partitions of days `from..=to` that do not exist yet (at most 400 at a time).
pub(super) async fn ensure(pool: &PgPool, from: i64, to: i64) -> Result<()> {
    if from > to {
        return Ok(());
    }
    let to = to.min(from + 400);
    let mut tx = pool.begin_write().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(LOCK_KEY).execute(tx.conn()).await?;
    for day in from..=to {
        let Some(table) = name(day) else { continue };
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} PARTITION OF uplinks FOR VALUES FROM ({}) TO ({})",
            day * DAY_MS,
            (day + 1) * DAY_MS
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(tx.conn()).await?;
    }
    tx.commit().await
}

/// Drops every partition whose day ends at or before `before`; returns how many rows they held.
///
/// Each partition goes in its own short transaction that waits at most 2 s for its lock: dropping a partition
/// locks the parent table, and ingest on every node must not queue behind a long retention pass or behind a
/// slow query ahead of it. A partition whose lock was not had goes on the next pass.
pub(super) async fn drop_before(pool: &PgPool, before: i64) -> Result<u64> {
    let parts: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'uplinks' AND p.relnamespace = c.relnamespace \
         AND pg_table_is_visible(p.oid)",
    )
    .fetch_all(pool)
    .await?;
    let mut rows = 0u64;
    for (table,) in parts {
        let Some(day) = day_of(&table) else { continue };
        if (day + 1) * DAY_MS > before {
            continue;
        }
        // `table` matched uplinks_pNNNNNNNN above: safe to splice. Counted before any lock is taken.
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"))).fetch_one(pool).await?;
        let mut tx = pool.begin_write().await?;
        sqlx::query("SET LOCAL lock_timeout = '2s'").execute(tx.conn()).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(LOCK_KEY).execute(tx.conn()).await?;
        match sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}"))).execute(tx.conn()).await {
            Ok(_) => {
                tx.commit().await?;
                tracing::info!(partition = %table, rows = n, "telemetry partition dropped by retention");
                rows += u64::try_from(n).unwrap_or(0);
            }
            Err(e) => {
                tracing::warn!(partition = %table, error = %e, "partition not dropped now (busy); next pass");
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_and_bad_names_are_ignored() {
        assert_eq!(name(0).as_deref(), Some("uplinks_p19700101"));
        assert_eq!(name(20_417).as_deref(), Some("uplinks_p20251125"));
        for d in [0, 1, 59, 365, 20_000, 2_932_896] {
            let n = name(d).unwrap();
            assert_eq!(day_of(&n), Some(d), "{n}");
        }
        assert_eq!(name(-1), None);
        assert_eq!(day_of("uplinks_p2025"), None);
        assert_eq!(day_of("uplinks_p2025x101"), None);
        assert_eq!(day_of("uplinks_default"), None);
        assert_eq!(day_of("uplinks_p20251301"), None);
    }
}
