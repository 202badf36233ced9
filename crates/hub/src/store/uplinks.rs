//! Uplinks (telemetry, events, state): the durable, de-duplicated record of what devices sent.
//!
//! [`Store::commit_uplinks`] is the telemetry writer's one transaction per batch. Both backends give the same
//! answer per message: [`Written::Stored`] (new), [`Written::Duplicate`] (this (device, seq) is stored with the
//! same content) or [`Written::Conflict`] (stored with different content). SQLite enforces (device, seq) with
//! its primary key. PostgreSQL keeps uplinks in day partitions by receive time, where (device, seq) cannot be a
//! unique key, so the batch locks its devices' rows (in id order: no deadlock between nodes), reads each
//! device's high-water mark, and looks up only seqs at or below it; a resend racing on another node waits on
//! the same row lock and then finds the first copy.

use std::collections::HashMap;

use hearth_proto::uplink::UplinkKind;
use sqlx::{PgConnection, QueryBuilder, Row as _, Sqlite, SqliteConnection};

use super::{Backend, BeginWrite as _, Result, Store, StoreError, partitions};

/// One uplink to store.
#[derive(Debug, Clone)]
pub struct UplinkRecord {
    /// Device id.
    pub device_id: String,
    /// Device sequence number.
    pub seq: i64,
    /// Telemetry, event or state.
    pub kind: UplinkKind,
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
    /// Telemetry, event or state.
    #[sqlx(try_from = "String")]
    pub kind: UplinkKind,
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
    /// Only rows the hub received at or after this, Unix ms (0: all).
    pub received_from: i64,
    /// Inclusive lower bound of device time.
    pub from_ts: i64,
    /// Exclusive upper bound of device time.
    pub to_ts: i64,
    /// Only rows with seq greater than this (the previous page's last seq).
    pub after_seq: i64,
    /// Page size.
    pub limit: i64,
}

/// What became of one record of a committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored by this batch.
    Stored,
    /// An identical message with this (device, seq) was already stored.
    Duplicate,
    /// A different message with this (device, seq) is stored.
    Conflict {
        /// The device's highest stored seq.
        highest_seq: i64,
    },
}

/// Rows per SQLite INSERT statement (6 bound values each, well under SQLite's 32766-variable limit).
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// Stores a batch of uplinks and the devices' last-seen times in one transaction, and says per record what
    /// became of it. Nothing is kept unless this returns `Ok`; a success answer to a device must wait for it.
    pub async fn commit_uplinks(&self, records: &[UplinkRecord], seen: &[(String, i64)]) -> Result<Vec<Written>> {
        match &self.backend {
            Backend::Sqlite { ingest, .. } => {
                let mut tx = ingest.begin_write().await?;
                let written = commit_sqlite(tx.conn(), records, seen).await?;
                tx.commit().await?;
                Ok(written)
            }
            Backend::Postgres { pool } => {
                let mut tx = pool.begin_write().await?;
                match commit_postgres(tx.conn(), records, seen).await {
                    Ok(written) => {
                        tx.commit().await?;
                        Ok(written)
                    }
                    // A receive time with no partition (the hub's clock jumped past the partitions made ahead):
                    // make the partitions and try once more, in a new transaction.
                    Err(StoreError::Db(e)) if partitions::is_missing_partition(&e) => {
                        drop(tx);
                        let days = records.iter().map(|r| r.received_at.div_euclid(partitions::DAY_MS));
                        let (lo, hi) = days.fold((i64::MAX, i64::MIN), |(lo, hi), d| (lo.min(d), hi.max(d)));
                        partitions::ensure(pool, lo, hi).await?;
                        let mut tx = pool.begin_write().await?;
                        let written = commit_postgres(tx.conn(), records, seen).await?;
                        tx.commit().await?;
                        Ok(written)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// A page of one device's uplinks, ordered by seq.
    pub async fn uplinks(&self, q: &UplinkQuery) -> Result<Vec<UplinkRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, UplinkRow>(
            "SELECT seq, kind, device_ts, received_at, body_json FROM uplinks \
             WHERE device_id = $1 AND device_ts >= $2 AND device_ts < $3 AND seq > $4 AND received_at >= $6 \
             ORDER BY seq LIMIT $5",
        )
        .bind(&q.device_id)
        .bind(q.from_ts)
        .bind(q.to_ts)
        .bind(q.after_seq)
        .bind(q.limit)
        .bind(q.received_from)
        .fetch_all(pool)
        .await?))
    }

    /// The newest `limit` uplinks of a device received at or after `received_from`, newest first.
    pub async fn latest_uplinks(&self, device_id: &str, received_from: i64, limit: i64) -> Result<Vec<UplinkRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, UplinkRow>(
            "SELECT seq, kind, device_ts, received_at, body_json FROM uplinks \
             WHERE device_id = $1 AND received_at >= $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(device_id)
        .bind(received_from)
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Deletes uplinks received before `before`, returning how many went. SQLite deletes at most `limit` rows
    /// per call (the caller repeats); PostgreSQL drops every day partition that ends at or before `before`
    /// (so a row lives until its whole day is past retention) and creates the coming week's partitions.
    pub async fn prune_uplinks(&self, before: i64, limit: i64) -> Result<u64> {
        match &self.backend {
            Backend::Sqlite { pool, .. } => Ok(sqlx::query(
                "DELETE FROM uplinks WHERE (device_id, seq) IN \
                 (SELECT device_id, seq FROM uplinks WHERE received_at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()),
            Backend::Postgres { pool } => partitions::drop_before(pool, before).await,
        }
    }

    /// Makes sure telemetry partitions exist from `now`'s day to `ahead_days` later (PostgreSQL; nothing to do
    /// on SQLite). The hub calls it at start and with every retention pass.
    pub async fn prepare_uplink_partitions(&self, now: i64, ahead_days: i64) -> Result<()> {
        match &self.backend {
            Backend::Sqlite { .. } => Ok(()),
            Backend::Postgres { pool } => {
                let day = now.div_euclid(partitions::DAY_MS);
                partitions::ensure(pool, day, day + ahead_days).await
            }
        }
    }

    /// How many uplinks are stored in all (for tests and `doctor`).
    pub async fn uplink_total(&self) -> Result<i64> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM uplinks")
            .fetch_one(pool)
            .await?
            .0))
    }

    /// How many uplinks a device has stored (for tests and `doctor`).
    pub async fn uplink_count(&self, device_id: &str) -> Result<i64> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM uplinks WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(pool)
            .await?
            .0))
    }
}

async fn commit_sqlite(
    conn: &mut SqliteConnection,
    records: &[UplinkRecord],
    seen: &[(String, i64)],
) -> Result<Vec<Written>> {
    let inserted = insert_batch_sqlite(conn, records).await?;
    let mut outcomes = Vec::with_capacity(records.len());
    let mut highest: HashMap<&str, i64> = HashMap::new();
    for (r, new) in records.iter().zip(&inserted) {
        if *new {
            outcomes.push(Written::Stored);
            continue;
        }
        // Rare (resends after a lost PUBACK): compare with what is stored.
        let stored: Option<(String,)> =
            sqlx::query_as("SELECT body_json FROM uplinks WHERE device_id = $1 AND seq = $2")
                .bind(&r.device_id)
                .bind(r.seq)
                .fetch_optional(&mut *conn)
                .await?;
        if stored.is_some_and(|(b,)| b == r.body_json) {
            outcomes.push(Written::Duplicate);
            continue;
        }
        let h = match highest.get(r.device_id.as_str()) {
            Some(h) => *h,
            None => {
                let (h,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM uplinks WHERE device_id = $1")
                    .bind(&r.device_id)
                    .fetch_one(&mut *conn)
                    .await?;
                let h = h.unwrap_or(0);
                highest.insert(&r.device_id, h);
                h
            }
        };
        outcomes.push(Written::Conflict { highest_seq: h });
    }
    super::devices::touch_batch(conn, seen).await?;
    for r in newest_states(records, &outcomes) {
        sqlx::query(
            "UPDATE devices SET state_json = $3, state_seq = $2 WHERE id = $1 AND (state_seq IS NULL OR state_seq < $2)",
        )
        .bind(&r.device_id)
        .bind(r.seq)
        .bind(&r.body_json)
        .execute(&mut *conn)
        .await?;
    }
    Ok(outcomes)
}

/// Inserts a batch; a row whose (device, seq) is already stored is not written. Returns, per record, whether
/// it was written now.
async fn insert_batch_sqlite(conn: &mut SqliteConnection, batch: &[UplinkRecord]) -> Result<Vec<bool>> {
    let mut written = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO uplinks (device_id, seq, kind, device_ts, received_at, body_json) ");
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(&r.device_id)
                .push_bind(r.seq)
                .push_bind(r.kind.as_str())
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

/// The newest state record of each device among those stored now.
fn newest_states<'a>(records: &'a [UplinkRecord], outcomes: &[Written]) -> Vec<&'a UplinkRecord> {
    let mut newest: HashMap<&str, &UplinkRecord> = HashMap::new();
    for (r, _) in records.iter().zip(outcomes).filter(|(r, o)| r.kind == UplinkKind::State && **o == Written::Stored) {
        let e = newest.entry(r.device_id.as_str()).or_insert(r);
        if r.seq > e.seq {
            *e = r;
        }
    }
    newest.into_values().collect()
}

async fn commit_postgres(
    conn: &mut PgConnection,
    records: &[UplinkRecord],
    seen: &[(String, i64)],
) -> Result<Vec<Written>> {
    // Lock every device row the batch touches, in id order, and read the high-water marks.
    let mut ids: Vec<&str> =
        records.iter().map(|r| r.device_id.as_str()).chain(seen.iter().map(|(d, _)| d.as_str())).collect();
    ids.sort_unstable();
    ids.dedup();
    let hwm: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT id, uplink_hwm FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();

    // Classify: above the mark is new; at or below it, look it up (resends, or a gap filled late).
    let mut outcomes: Vec<Option<Written>> = vec![None; records.len()];
    let mut first: HashMap<(&str, i64), usize> = HashMap::with_capacity(records.len());
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    let mut lookups: Vec<usize> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(&j) = first.get(&(r.device_id.as_str(), r.seq)) {
            repeats.push((i, j));
            continue;
        }
        first.insert((r.device_id.as_str(), r.seq), i);
        if r.seq > hwm.get(r.device_id.as_str()).copied().unwrap_or(0) {
            outcomes[i] = Some(Written::Stored);
        } else {
            lookups.push(i);
        }
    }
    let mut stored: HashMap<(String, i64), String> = HashMap::new();
    if !lookups.is_empty() {
        let devices: Vec<&str> = lookups.iter().map(|&i| records[i].device_id.as_str()).collect();
        let seqs: Vec<i64> = lookups.iter().map(|&i| records[i].seq).collect();
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT u.device_id, u.seq, u.body_json FROM uplinks u \
             JOIN UNNEST($1::text[], $2::bigint[]) AS k(device_id, seq) ON u.device_id = k.device_id AND u.seq = k.seq",
        )
        .bind(&devices)
        .bind(&seqs)
        .fetch_all(&mut *conn)
        .await?;
        stored = rows.into_iter().map(|(d, s, b)| ((d, s), b)).collect();
        for &i in &lookups {
            let r = &records[i];
            outcomes[i] = Some(match stored.get(&(r.device_id.clone(), r.seq)) {
                None => Written::Stored,
                Some(b) if *b == r.body_json => Written::Duplicate,
                Some(_) => Written::Conflict { highest_seq: 0 },
            });
        }
    }
    // A repeat inside the batch compares with what the key holds after it: the stored copy, or its first
    // occurrence in this batch.
    for &(i, j) in &repeats {
        let r = &records[i];
        let holds = stored.get(&(r.device_id.clone(), r.seq)).unwrap_or(&records[j].body_json);
        outcomes[i] =
            Some(if *holds == r.body_json { Written::Duplicate } else { Written::Conflict { highest_seq: 0 } });
    }
    let mut outcomes: Vec<Written> = outcomes.into_iter().map(|o| o.unwrap_or(Written::Stored)).collect();

    // New marks, and the highest seq each conflict reports.
    let mut marks: HashMap<&str, i64> = HashMap::new();
    for (r, o) in records.iter().zip(&outcomes) {
        let base = hwm.get(r.device_id.as_str()).copied().unwrap_or(0);
        let m = marks.entry(r.device_id.as_str()).or_insert(base);
        if *o == Written::Stored {
            *m = (*m).max(r.seq);
        }
    }
    for (r, o) in records.iter().zip(outcomes.iter_mut()) {
        if let Written::Conflict { highest_seq } = o {
            *highest_seq = marks.get(r.device_id.as_str()).copied().unwrap_or(0);
        }
    }

    let new: Vec<&UplinkRecord> =
        records.iter().zip(&outcomes).filter(|(_, o)| **o == Written::Stored).map(|(r, _)| r).collect();
    if !new.is_empty() {
        let cols = (
            new.iter().map(|r| r.device_id.as_str()).collect::<Vec<_>>(),
            new.iter().map(|r| r.seq).collect::<Vec<_>>(),
            new.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            new.iter().map(|r| r.device_ts).collect::<Vec<_>>(),
            new.iter().map(|r| r.received_at).collect::<Vec<_>>(),
            new.iter().map(|r| r.body_json.as_str()).collect::<Vec<_>>(),
        );
        sqlx::query(
            "INSERT INTO uplinks (device_id, seq, kind, device_ts, received_at, body_json) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[])",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .bind(&cols.5)
        .execute(&mut *conn)
        .await?;
    }

    // Marks and last-seen in one statement over the locked rows.
    let seen_at: HashMap<&str, i64> = seen.iter().map(|(d, t)| (d.as_str(), *t)).collect();
    let touched: Vec<&str> = ids.iter().copied().filter(|d| hwm.contains_key(*d)).collect();
    if !touched.is_empty() {
        let h: Vec<i64> = touched.iter().map(|d| marks.get(d).copied().unwrap_or(0)).collect();
        let s: Vec<i64> = touched.iter().map(|d| seen_at.get(d).copied().unwrap_or(i64::MIN)).collect();
        sqlx::query(
            "UPDATE devices AS d SET uplink_hwm = GREATEST(d.uplink_hwm, v.hwm), \
             last_seen_at = CASE WHEN v.seen > COALESCE(d.last_seen_at, -1) THEN v.seen ELSE d.last_seen_at END \
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS v(id, hwm, seen) WHERE d.id = v.id",
        )
        .bind(&touched)
        .bind(&h)
        .bind(&s)
        .execute(&mut *conn)
        .await?;
    }

    let states = newest_states(records, &outcomes);
    if !states.is_empty() {
        sqlx::query(
            "UPDATE devices AS d SET state_json = v.body, state_seq = v.seq \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS v(id, seq, body) \
             WHERE d.id = v.id AND (d.state_seq IS NULL OR d.state_seq < v.seq)",
        )
        .bind(states.iter().map(|r| r.device_id.as_str()).collect::<Vec<_>>())
        .bind(states.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(states.iter().map(|r| r.body_json.as_str()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(outcomes)
}
