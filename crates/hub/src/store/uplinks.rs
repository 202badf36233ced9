//! Uplinks (telemetry, events, state): the durable, de-duplicated record of what devices sent.

use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};

use super::{Result, Store};

/// One uplink to store.
#[derive(Debug, Clone)]
pub struct UplinkRecord {
    /// Device id.
    pub device_id: String,
    /// Device sequence number.
    pub seq: i64,
    /// `telemetry`, `event` or `state`.
    pub kind: &'static str,
    /// Device timestamp.
    pub device_ts: i64,
    /// Hub receive time.
    pub received_at: i64,
    /// The validated message, re-encoded as JSON (envelope included).
    pub body_json: String,
}

/// One stored uplink.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UplinkRow {
    /// Device sequence number.
    pub seq: i64,
    /// `telemetry`, `event` or `state`.
    pub kind: String,
    /// Device timestamp.
    pub device_ts: i64,
    /// Hub receive time.
    pub received_at: i64,
    /// The validated message as JSON (envelope included).
    pub body_json: String,
}

/// A telemetry query: one device, a device-time range, keyset paging by seq.
#[derive(Debug, Clone)]
pub struct UplinkQuery {
    /// Device id.
    pub device_id: String,
    /// Inclusive lower bound of device time.
    pub from_ts: i64,
    /// Exclusive upper bound of device time.
    pub to_ts: i64,
    /// Only rows with seq greater than this (the previous page's last seq).
    pub after_seq: i64,
    /// Page size.
    pub limit: i64,
}

/// Rows per INSERT statement (6 bound values each, well under SQLite's 32766-variable limit).
const ROWS_PER_STATEMENT: usize = 500;

/// Inserts a batch on the writer's connection inside the caller's transaction. A row whose (device, seq) is
/// already stored is not written. Returns, per record, whether it was written now.
pub async fn insert_batch(conn: &mut SqliteConnection, batch: &[UplinkRecord]) -> Result<Vec<bool>> {
    let mut written = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO uplinks (device_id, seq, kind, device_ts, received_at, body_json) ");
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(&r.device_id)
                .push_bind(r.seq)
                .push_bind(r.kind)
                .push_bind(r.device_ts)
                .push_bind(r.received_at)
                .push_bind(&r.body_json);
        });
        qb.push(" ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq");
        let rows = qb.build().fetch_all(&mut *conn).await?;
        if rows.len() == chunk.len() {
            // The usual case: no repeat in the chunk, every row written.
            written.resize(written.len() + chunk.len(), true);
            continue;
        }
        // Some were already stored (resends): tell which. A (device, seq) twice in one chunk is written once,
        // and its first occurrence counts as written.
        let mut new: std::collections::HashSet<(String, i64)> =
            rows.iter().map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1))).collect();
        written.extend(chunk.iter().map(|r| new.remove(&(r.device_id.clone(), r.seq))));
    }
    Ok(written)
}

/// The stored body of one uplink (to tell a resend from a conflicting message).
pub async fn stored_body(conn: &mut SqliteConnection, device_id: &str, seq: i64) -> Result<Option<String>> {
    let row = sqlx::query("SELECT body_json FROM uplinks WHERE device_id = $1 AND seq = $2")
        .bind(device_id)
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The highest seq stored for a device.
pub async fn highest_seq(conn: &mut SqliteConnection, device_id: &str) -> Result<Option<i64>> {
    let row =
        sqlx::query("SELECT MAX(seq) FROM uplinks WHERE device_id = $1").bind(device_id).fetch_one(&mut *conn).await?;
    Ok(row.get(0))
}

/// Applies the newest state uplink of a batch to the device row (only if newer than what is stored).
pub async fn apply_state(conn: &mut SqliteConnection, device_id: &str, seq: i64, state_json: &str) -> Result<()> {
    sqlx::query(
        "UPDATE devices SET state_json = $3, state_seq = $2 WHERE id = $1 AND (state_seq IS NULL OR state_seq < $2)",
    )
    .bind(device_id)
    .bind(seq)
    .bind(state_json)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// A page of one device's uplinks, ordered by seq.
    pub async fn uplinks(&self, q: &UplinkQuery) -> Result<Vec<UplinkRow>> {
        Ok(sqlx::query_as::<_, UplinkRow>(
            "SELECT seq, kind, device_ts, received_at, body_json FROM uplinks \
             WHERE device_id = $1 AND device_ts >= $2 AND device_ts < $3 AND seq > $4 ORDER BY seq LIMIT $5",
        )
        .bind(&q.device_id)
        .bind(q.from_ts)
        .bind(q.to_ts)
        .bind(q.after_seq)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes at most `limit` uplinks received before `before`. Returns how many went.
    pub async fn prune_uplinks(&self, before: i64, limit: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM uplinks WHERE (device_id, seq) IN \
             (SELECT device_id, seq FROM uplinks WHERE received_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// How many uplinks are stored in all (for tests and `doctor`).
    pub async fn uplink_total(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM uplinks").fetch_one(&self.pool).await?;
        Ok(row.get(0))
    }

    /// How many uplinks a device has stored (for tests and `doctor`).
    pub async fn uplink_count(&self, device_id: &str) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM uplinks WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }
}
