//! Passkeys of accounts, and WebAuthn ceremonies under way (taken once, until they expire).

use super::{BeginWrite as _, NewAccount, Result, Store};

/// A stored passkey.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PasskeyRow {
    /// base64url of the credential id.
    pub credential_id: String,
    /// Its account.
    pub account_id: String,
    /// The name its owner gave it.
    pub name: String,
    /// webauthn-rs's `Passkey`, JSON.
    pub passkey_json: String,
    /// Added, Unix ms.
    pub created_at: i64,
    /// Last used to sign in, Unix ms.
    pub last_used_at: Option<i64>,
}

/// What a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    /// A signed-in account adds a passkey.
    Register,
    /// Anyone signs in with a passkey (discoverable).
    SignIn,
    /// An operator who gave the right password confirms with a passkey.
    SecondFactor,
    /// A consumer signs up with a passkey instead of a password.
    SignUp,
}

impl CeremonyKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyKind::Register => "register",
            CeremonyKind::SignIn => "sign_in",
            CeremonyKind::SecondFactor => "second_factor",
            CeremonyKind::SignUp => "sign_up",
        }
    }
}

const COLUMNS: &str = "credential_id, account_id, name, passkey_json, created_at, last_used_at";

/// Inserts `$p` (a `PasskeyRow`) through the executor `$conn`.
macro_rules! insert_passkey {
    ($conn:expr, $p:expr) => {
        sqlx::query(
            "INSERT INTO passkeys (credential_id, account_id, name, passkey_json, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(&$p.credential_id)
        .bind(&$p.account_id)
        .bind(&$p.name)
        .bind(&$p.passkey_json)
        .bind($p.created_at)
        .bind($p.last_used_at)
        .execute($conn)
        .await?
        .rows_affected()
    };
}

impl Store {
    /// Stores a passkey; false if a passkey with this credential id exists (on any account).
    pub async fn insert_passkey(&self, p: &PasskeyRow) -> Result<bool> {
        Ok(on_pool!(self, pool => insert_passkey!(pool, p)) == 1)
    }

    /// Creates a consumer account whose only credential is `passkey`, in one transaction; false (nothing
    /// changed) if the email or the credential is taken.
    pub async fn create_passkey_account(&self, account: &NewAccount<'_>, passkey: &PasskeyRow) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let (taken,): (i64,) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM accounts WHERE email = $1) \
                 + (SELECT COUNT(*) FROM passkeys WHERE credential_id = $2)",
            )
            .bind(account.email)
            .bind(&passkey.credential_id)
            .fetch_one(tx.conn())
            .await?;
            if taken > 0 || passkey.account_id != account.id {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO accounts (id, email, role, password_hash, created_at, password_changed_at, verified_at) \
                 VALUES ($1, $2, $3, $4, $5, $5, $6)",
            )
            .bind(account.id)
            .bind(account.email)
            .bind(account.role.as_str())
            .bind(account.password_hash)
            .bind(account.created_at)
            .bind(account.verified_at)
            .execute(tx.conn())
            .await?;
            insert_passkey!(tx.conn(), passkey);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The account's passkeys, oldest first.
    pub async fn passkeys_of(&self, account_id: &str) -> Result<Vec<PasskeyRow>> {
        let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE account_id = $1 ORDER BY created_at, credential_id");
        on_pool!(self, pool => Ok(sqlx::query_as::<_, PasskeyRow>(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .fetch_all(pool)
            .await?))
    }

    /// The passkey with this credential id.
    pub async fn passkey(&self, credential_id: &str) -> Result<Option<PasskeyRow>> {
        let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE credential_id = $1");
        on_pool!(self, pool => Ok(sqlx::query_as::<_, PasskeyRow>(sqlx::AssertSqlSafe(sql))
            .bind(credential_id)
            .fetch_optional(pool)
            .await?))
    }

    /// Records a use of a passkey: its new state (the signature counter) and when.
    pub async fn passkey_used(&self, credential_id: &str, passkey_json: &str, now: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE passkeys SET passkey_json = $2, last_used_at = $3 WHERE credential_id = $1",
        )
        .bind(credential_id)
        .bind(passkey_json)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Deletes one of the account's passkeys; false if it has no such passkey.
    pub async fn delete_passkey(&self, account_id: &str, credential_id: &str) -> Result<bool> {
        Ok(on_pool!(self, pool => sqlx::query("DELETE FROM passkeys WHERE account_id = $1 AND credential_id = $2")
            .bind(account_id)
            .bind(credential_id)
            .execute(pool)
            .await?
            .rows_affected())
            == 1)
    }

    /// Deletes every passkey of the account; how many went.
    pub async fn delete_passkeys_of(&self, account_id: &str) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query("DELETE FROM passkeys WHERE account_id = $1")
            .bind(account_id)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Records a ceremony's state until `expires_at`.
    pub async fn insert_ceremony(
        &self,
        id: &str,
        kind: CeremonyKind,
        account_id: Option<&str>,
        state_json: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO webauthn_ceremonies (id, kind, account_id, state_json, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(account_id)
        .bind(state_json)
        .bind(now)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Takes (deletes and returns) a live ceremony of `kind`: its account and state. `None` if there is none, it
    /// expired, or it is of another kind. Two takers of one ceremony: one gets it.
    pub async fn take_ceremony(
        &self,
        id: &str,
        kind: CeremonyKind,
        now: i64,
    ) -> Result<Option<(Option<String>, String)>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "DELETE FROM webauthn_ceremonies WHERE id = $1 AND kind = $2 AND expires_at > $3 \
             RETURNING account_id, state_json",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(now)
        .fetch_optional(pool)
        .await?))
    }

    /// Deletes ceremonies that expired before `now`.
    pub async fn prune_ceremonies(&self, now: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at <= $1")
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()))
    }
}
