//! Security events (aggregated per kind, device and source by `monitoring`), and their retention.

use super::{BeginWrite as _, Result, Store};

/// An aggregated security event to store.
#[derive(Debug, Clone)]
pub struct NewSecurityEvent {
    /// First occurrence, Unix ms.
    pub at: i64,
    /// Last occurrence, Unix ms.
    pub last_at: i64,
    /// How many occurrences this row stands for.
    pub count: i64,
    /// The device, when known.
    pub device_id: Option<String>,
    /// The source address (IPv6: its /64).
    pub source: Option<String>,
    /// Stable kind.
    pub kind: String,
    /// Detail of the first occurrence.
    pub detail: String,
}

/// A stored security event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecurityEventRow {
    /// Row id.
    pub id: i64,
    /// First occurrence.
    pub at: i64,
    /// Last occurrence.
    pub last_at: i64,
    /// Occurrences.
    pub count: i64,
    /// The device, when known (authenticated).
    pub device_id: Option<String>,
    /// The source address.
    pub source: Option<String>,
    /// Stable kind, for example `acl_publish`.
    pub kind: String,
    /// Detail.
    pub detail: String,
}

impl Store {
    /// Records security events in one transaction.
    pub async fn insert_security_events(&self, events: &[NewSecurityEvent]) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for e in events {
                sqlx::query(
                    "INSERT INTO security_events (at, last_at, count, device_id, source, kind, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(e.at)
                .bind(e.last_at)
                .bind(e.count)
                .bind(&e.device_id)
                .bind(&e.source)
                .bind(&e.kind)
                .bind(&e.detail)
                .execute(tx.conn())
                .await?;
            }
            tx.commit().await
        })
    }

    /// Most recent security events, newest first, optionally of one device or one kind.
    pub async fn security_events(
        &self,
        device_id: Option<&str>,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SecurityEventRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, SecurityEventRow>(
            "SELECT id, at, COALESCE(last_at, at) AS last_at, count, device_id, source, kind, detail \
             FROM security_events WHERE ($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR kind = $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(device_id)
        .bind(kind)
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Rows and summed occurrences of security events (for tests, `doctor` and the operator view).
    pub async fn security_event_totals(&self) -> Result<(i64, i64)> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, (i64, i64)>(
            "SELECT COUNT(*), CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM security_events",
        )
        .fetch_one(pool)
        .await?))
    }

    /// Deletes security events whose last occurrence is before `before`, then the oldest beyond `max_rows`, in
    /// batches of 5,000 rows (so the write lock is never held for long). Returns how many rows went.
    pub async fn prune_security_events(&self, before: i64, max_rows: i64) -> Result<u64> {
        let aged = "DELETE FROM security_events WHERE id IN (SELECT id FROM security_events \
                    WHERE last_at < $1 OR (last_at IS NULL AND at < $1) LIMIT 5000)";
        let over = "DELETE FROM security_events WHERE id IN (SELECT id FROM security_events WHERE id <= \
                    (SELECT id FROM security_events ORDER BY id DESC LIMIT 1 OFFSET $1) ORDER BY id LIMIT 5000)";
        let mut pruned = 0;
        for (sql, bound) in [(aged, before), (over, max_rows)] {
            loop {
                let n = on_pool!(self, pool => sqlx::query(sql).bind(bound).execute(pool).await?.rows_affected());
                pruned += n;
                if n < 5000 {
                    break;
                }
            }
        }
        Ok(pruned)
    }
}
