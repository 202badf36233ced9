//! Operator API tokens and the one-time owner-setup token. Only MACs are stored.

use sqlx::Row as _;

use super::{Result, Store};

/// An operator token to store (only its MAC).
#[derive(Debug, Clone, Copy)]
pub struct NewApiToken<'a> {
    /// Id.
    pub id: &'a str,
    /// MAC of the value.
    pub mac: &'a [u8],
    /// Label.
    pub label: &'a str,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Expires, Unix ms.
    pub expires_at: i64,
}

impl Store {
    /// Number of operator tokens ever created, live or not (zero means the hub still needs its owner set up).
    pub async fn api_tokens_ever(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM api_tokens").fetch_one(&self.pool).await?;
        Ok(row.get(0))
    }

    /// The id and expiry of the unrevoked operator token with this MAC.
    pub async fn api_token(&self, mac: &[u8]) -> Result<Option<(String, Option<i64>)>> {
        let row = sqlx::query("SELECT id, expires_at FROM api_tokens WHERE token_mac = $1 AND revoked_at IS NULL")
            .bind(mac)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Stores a new operator token.
    pub async fn insert_api_token(&self, t: &NewApiToken<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, token_mac, label, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(t.id)
        .bind(t.mac)
        .bind(t.label)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every operator token, newest first (the migration gave every earlier token an expiry).
    pub async fn api_tokens(&self) -> Result<Vec<crate::accounts::TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, label, created_at, COALESCE(expires_at, 0), revoked_at FROM api_tokens \
             ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| crate::accounts::TokenInfo {
                id: r.get(0),
                label: r.get(1),
                created_at_ms: r.get(2),
                expires_at_ms: r.get(3),
                revoked_at_ms: r.get(4),
            })
            .collect())
    }

    /// Revokes an operator token. False if there is no such unrevoked token.
    pub async fn revoke_api_token(&self, id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces any setup token by a new one (only one is ever valid).
    pub async fn replace_setup_token(&self, mac: &[u8], expires_at: i64) -> Result<()> {
        let mut tx = super::WriteTx::begin(&self.pool).await?;
        sqlx::query("DELETE FROM setup_tokens").execute(tx.conn()).await?;
        sqlx::query("INSERT INTO setup_tokens (token_mac, expires_at) VALUES ($1, $2)")
            .bind(mac)
            .bind(expires_at)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Consumes a valid setup token and creates the first operator token, atomically. False if the setup token
    /// is unknown, used or expired.
    pub async fn complete_setup(&self, setup_mac: &[u8], token: &NewApiToken<'_>) -> Result<bool> {
        // A plain read first: a wrong token never takes the write lock (anyone may call setup).
        let usable =
            sqlx::query("SELECT 1 FROM setup_tokens WHERE token_mac = $1 AND used_at IS NULL AND expires_at > $2")
                .bind(setup_mac)
                .bind(token.created_at)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
        if !usable {
            return Ok(false);
        }
        let mut tx = super::WriteTx::begin(&self.pool).await?;
        let done = sqlx::query(
            "UPDATE setup_tokens SET used_at = $2 WHERE token_mac = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(setup_mac)
        .bind(token.created_at)
        .execute(tx.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO api_tokens (id, token_mac, label, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.id)
        .bind(token.mac)
        .bind(token.label)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A stored key pair: (certificate PEM, sealed private key).
    pub async fn key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>> {
        let row = sqlx::query("SELECT cert_pem, sealed_key FROM keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Stores a key pair unless one of that name exists (then the existing one wins: two nodes starting at once
    /// agree on one CA).
    pub async fn insert_key(&self, name: &str, cert_pem: &str, sealed: &[u8], now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO keys (name, cert_pem, sealed_key, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(cert_pem)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces a key pair (server certificate rotation).
    pub async fn replace_key(&self, name: &str, cert_pem: &str, sealed: &[u8], now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO keys (name, cert_pem, sealed_key, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET cert_pem = $2, sealed_key = $3, created_at = $4",
        )
        .bind(name)
        .bind(cert_pem)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
