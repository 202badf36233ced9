//! Operator API tokens and the one-time owner-setup token. Only MACs are stored.

use super::{BeginWrite as _, Result, Store};

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
    /// The account it belongs to (`None` only for tokens minted by an older hub's setup).
    pub account_id: Option<&'a str>,
}

impl Store {
    /// Number of operator tokens ever created, live or not (zero means the hub still needs its owner set up).
    pub async fn api_tokens_ever(&self) -> Result<i64> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(pool)
            .await?
            .0))
    }

    /// The id, expiry and account of the unrevoked API token with this MAC (the account is `None` for a token
    /// minted by the setup token before accounts existed: it stands for the owner).
    pub async fn api_token(&self, mac: &[u8]) -> Result<Option<(String, Option<i64>, Option<String>)>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, (String, Option<i64>, Option<String>)>(
            "SELECT id, expires_at, account_id FROM api_tokens WHERE token_mac = $1 AND revoked_at IS NULL",
        )
        .bind(mac)
        .fetch_optional(pool)
        .await?))
    }

    /// Stores a new operator token.
    pub async fn insert_api_token(&self, t: &NewApiToken<'_>) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO api_tokens (id, token_mac, label, created_at, expires_at, account_id) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.id)
        .bind(t.mac)
        .bind(t.label)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.account_id)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Every operator token, newest first (the migration gave every earlier token an expiry).
    pub async fn api_tokens(&self) -> Result<Vec<crate::accounts::TokenInfo>> {
        let rows: Vec<(String, String, i64, i64, Option<i64>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, label, created_at, COALESCE(expires_at, 0), revoked_at FROM api_tokens \
             ORDER BY created_at DESC, id",
        )
        .fetch_all(pool)
        .await?);
        Ok(rows
            .into_iter()
            .map(|(id, label, created_at_ms, expires_at_ms, revoked_at_ms)| crate::accounts::TokenInfo {
                id,
                label,
                created_at_ms,
                expires_at_ms,
                revoked_at_ms,
            })
            .collect())
    }

    /// Revokes an operator token. False if there is no such unrevoked token.
    pub async fn revoke_api_token(&self, id: &str, now: i64) -> Result<bool> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Replaces any setup token by a new one (only one is ever valid).
    pub async fn replace_setup_token(&self, mac: &[u8], expires_at: i64) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM setup_tokens").execute(tx.conn()).await?;
            sqlx::query("INSERT INTO setup_tokens (token_mac, expires_at) VALUES ($1, $2)")
                .bind(mac)
                .bind(expires_at)
                .execute(tx.conn())
                .await?;
            tx.commit().await
        })
    }

    /// Revokes every live API token of the account, and any that belongs to no account; returns how many.
    pub async fn revoke_api_tokens_of(&self, account_id: &str, now: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE (account_id = $1 OR account_id IS NULL) AND revoked_at IS NULL",
        )
        .bind(account_id)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Uses up the setup token with this MAC if it is live at `now`; false (nothing changed) otherwise.
    pub async fn use_setup_token(&self, setup_mac: &[u8], now: i64) -> Result<bool> {
        Ok(on_pool!(self, pool => sqlx::query(
            "UPDATE setup_tokens SET used_at = $2 WHERE token_mac = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(setup_mac)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected())
            == 1)
    }

    /// Whether the setup token with this MAC can still be used at `now` (a plain read: a wrong token never takes
    /// the write lock, and costs no password hashing).
    pub async fn setup_token_usable(&self, setup_mac: &[u8], now: i64) -> Result<bool> {
        Ok(on_pool!(self, pool => sqlx::query(
            "SELECT 1 FROM setup_tokens WHERE token_mac = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(setup_mac)
        .bind(now)
        .fetch_optional(pool)
        .await?
        .is_some()))
    }

    /// A stored key pair: (certificate PEM, sealed private key).
    pub async fn key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, (String, Vec<u8>)>(
            "SELECT cert_pem, sealed_key FROM keys WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?))
    }

    /// Stores a key pair unless one of that name exists (then the existing one wins: two nodes starting at once
    /// agree on one CA).
    pub async fn insert_key(&self, name: &str, cert_pem: &str, sealed: &[u8], now: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO keys (name, cert_pem, sealed_key, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(cert_pem)
        .bind(sealed)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Replaces a key pair (server certificate rotation).
    pub async fn replace_key(&self, name: &str, cert_pem: &str, sealed: &[u8], now: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO keys (name, cert_pem, sealed_key, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET cert_pem = $2, sealed_key = $3, created_at = $4",
        )
        .bind(name)
        .bind(cert_pem)
        .bind(sealed)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }
}
