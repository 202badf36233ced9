//! Security events: refused connections, ACL violations, invalid payloads, limit breaches.

use super::{Result, Store};

/// A security event to store.
#[derive(Debug, Clone)]
pub struct NewSecurityEvent {
    /// When, Unix ms.
    pub at: i64,
    /// The device, when known.
    pub device_id: Option<String>,
    /// The peer address.
    pub source: Option<String>,
    /// Stable kind.
    pub kind: String,
    /// Detail.
    pub detail: String,
}

/// A stored security event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecurityEventRow {
    /// Row id.
    pub id: i64,
    /// When.
    pub at: i64,
    /// The device, when known (authenticated).
    pub device_id: Option<String>,
    /// The peer address.
    pub source: Option<String>,
    /// Stable kind, for example `acl_publish`.
    pub kind: String,
    /// Detail.
    pub detail: String,
}

impl Store {
    /// Records security events in one transaction.
    pub async fn insert_security_events(&self, events: &[NewSecurityEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for NewSecurityEvent { at, device_id: device, source, kind, detail } in events {
            sqlx::query(
                "INSERT INTO security_events (at, device_id, source, kind, detail) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(at)
            .bind(device)
            .bind(source)
            .bind(kind)
            .bind(detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Most recent security events, newest first, optionally of one device.
    pub async fn security_events(&self, device_id: Option<&str>, limit: i64) -> Result<Vec<SecurityEventRow>> {
        Ok(sqlx::query_as::<_, SecurityEventRow>(
            "SELECT id, at, device_id, source, kind, detail FROM security_events \
             WHERE ($1 IS NULL OR device_id = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
