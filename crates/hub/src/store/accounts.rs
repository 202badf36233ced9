//! People: accounts, their sign-in sessions (only token MACs), login throttling counters and the audit log.

use super::{BeginWrite as _, Result, Store};

/// An account's role. Operators run the hub (owner, admin, support); consumers own devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Set up the hub; everything an admin may, and manages admins.
    Owner,
    /// Operates the fleet and the accounts of consumers and support.
    Admin,
    /// Sees a consumer's devices only while that consumer grants access.
    Support,
    /// Owns and claims devices.
    Consumer,
}

impl Role {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Support => "support",
            Role::Consumer => "consumer",
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Ok(match s.as_str() {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "support" => Role::Support,
            "consumer" => Role::Consumer,
            _ => return Err(format!("unknown role {s:?}")),
        })
    }
}

/// An account to create.
#[derive(Debug, Clone, Copy)]
pub struct NewAccount<'a> {
    /// Random id.
    pub id: &'a str,
    /// Lower-case email.
    pub email: &'a str,
    /// Role.
    pub role: Role,
    /// PHC string, or [`NO_PASSWORD_YET`] for an invited account until the invitee sets one through the link.
    pub password_hash: &'a str,
    /// Now, Unix ms.
    pub created_at: i64,
    /// When its email was verified (None: a consumer's sign-up, until the link in the mail is followed).
    pub verified_at: Option<i64>,
}

/// The password hash of an invited account until the invitee sets a password: no password verifies against it.
pub const NO_PASSWORD_YET: &str = "!invited";

/// What a mail link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPurpose {
    /// Verify a consumer's email after sign-up.
    Verify,
    /// Set a new password (forgotten password).
    Reset,
    /// Set the first password of an invited account.
    Invite,
}

impl LinkPurpose {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkPurpose::Verify => "verify",
            LinkPurpose::Reset => "reset",
            LinkPurpose::Invite => "invite",
        }
    }

    fn parse(s: &str) -> Option<LinkPurpose> {
        [LinkPurpose::Verify, LinkPurpose::Reset, LinkPurpose::Invite].into_iter().find(|p| p.as_str() == s)
    }
}

/// A stored account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    /// Id.
    pub id: String,
    /// Email.
    pub email: String,
    /// Role.
    #[sqlx(try_from = "String")]
    pub role: Role,
    /// PHC string.
    pub password_hash: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Password last set, Unix ms.
    pub password_changed_at: i64,
    /// Disabled, Unix ms.
    pub disabled_at: Option<i64>,
    /// Email verified, Unix ms (None: a consumer who has not followed the link in the sign-up mail).
    pub verified_at: Option<i64>,
}

/// A sign-in session to store.
#[derive(Debug, Clone, Copy)]
pub struct NewWebSession<'a> {
    /// Id (to list and end it).
    pub id: &'a str,
    /// MAC of the token.
    pub mac: &'a [u8],
    /// Whose.
    pub account_id: &'a str,
    /// Now, Unix ms.
    pub created_at: i64,
    /// Absolute end, Unix ms.
    pub expires_at: i64,
    /// Where from (the source network).
    pub source: Option<&'a str>,
    /// The browser's User-Agent, clipped.
    pub user_agent: Option<&'a str>,
}

/// A stored sign-in session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebSessionRow {
    /// Id.
    pub id: String,
    /// Whose.
    pub account_id: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last used, Unix ms.
    pub last_seen_at: i64,
    /// Absolute end, Unix ms.
    pub expires_at: i64,
    /// Source network.
    pub source: Option<String>,
    /// User-Agent.
    pub user_agent: Option<String>,
}

/// An audit entry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    /// When, Unix ms.
    pub at: i64,
    /// Who (an account id), if anyone signed in.
    pub account_id: Option<String>,
    /// What: a stable action name (`owner_setup`, `sign_in`, `sign_in_refused`, …).
    pub action: String,
    /// On what (an account, device or token id).
    pub target: Option<String>,
    /// From where (the source network).
    pub source: Option<String>,
    /// Detail, minimised (never a secret).
    pub detail: String,
}

/// The account columns, in `AccountRow`'s order.
macro_rules! account_columns {
    () => {
        "id, email, role, password_hash, created_at, password_changed_at, disabled_at, verified_at"
    };
}

/// Inserts `$a` (a `NewAccount`) through the executor `$conn`.
macro_rules! insert_account {
    ($conn:expr, $a:expr) => {
        sqlx::query(
            "INSERT INTO accounts (id, email, role, password_hash, created_at, password_changed_at, verified_at) \
             VALUES ($1, $2, $3, $4, $5, $5, $6)",
        )
        .bind($a.id)
        .bind($a.email)
        .bind($a.role.as_str())
        .bind($a.password_hash)
        .bind($a.created_at)
        .bind($a.verified_at)
        .execute($conn)
        .await?
    };
}

/// Revokes every live row of `$account` in `$table` (`web_sessions` or `api_tokens`) at `$now`, through the
/// executor `$conn`; how many.
macro_rules! revoke_all_of {
    ($conn:expr, $table:literal, $account:expr, $now:expr) => {
        sqlx::query(concat!("UPDATE ", $table, " SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL"))
            .bind($account)
            .bind($now)
            .execute($conn)
            .await?
            .rows_affected()
    };
}

impl Store {
    /// Whether an owner account exists.
    pub async fn owner_exists(&self) -> Result<bool> {
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as("SELECT COUNT(*) FROM accounts WHERE role = $1")
            .bind(Role::Owner.as_str())
            .fetch_one(pool)
            .await?);
        Ok(n > 0)
    }

    /// Creates the owner, and the owner's first API token, with the setup token whose MAC is `setup_mac`, in one
    /// transaction: the setup token must be unused and unexpired at `account.created_at`, no owner may exist yet,
    /// and the setup token is used up. False (and nothing changed) otherwise.
    pub async fn create_owner(
        &self,
        setup_mac: &[u8],
        account: &NewAccount<'_>,
        token: &super::NewApiToken<'_>,
    ) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let used = sqlx::query(
                "UPDATE setup_tokens SET used_at = $2 WHERE token_mac = $1 AND used_at IS NULL AND expires_at > $2",
            )
            .bind(setup_mac)
            .bind(account.created_at)
            .execute(tx.conn())
            .await?
            .rows_affected();
            let (owners,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM accounts WHERE role = $1")
                .bind(Role::Owner.as_str())
                .fetch_one(tx.conn())
                .await?;
            if used != 1 || owners > 0 || account.role != Role::Owner || token.account_id != Some(account.id) {
                return Ok(false);
            }
            insert_account!(tx.conn(), account);
            // API tokens an older hub's setup minted (no account) become the owner's.
            sqlx::query("UPDATE api_tokens SET account_id = $1 WHERE account_id IS NULL")
                .bind(account.id)
                .execute(tx.conn())
                .await?;
            sqlx::query(
                "INSERT INTO api_tokens (id, token_mac, label, created_at, expires_at, account_id) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(token.id)
            .bind(token.mac)
            .bind(token.label)
            .bind(token.created_at)
            .bind(token.expires_at)
            .bind(token.account_id)
            .execute(tx.conn())
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Creates an account. False if the email is taken.
    pub async fn insert_account(&self, account: &NewAccount<'_>) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let (taken,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM accounts WHERE email = $1")
                .bind(account.email)
                .fetch_one(tx.conn())
                .await?;
            if taken > 0 {
                return Ok(false);
            }
            insert_account!(tx.conn(), account);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The account with this (lower-case) email.
    pub async fn account_by_email(&self, email: &str) -> Result<Option<AccountRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, AccountRow>(concat!("SELECT ", account_columns!(), " FROM accounts WHERE email = $1"))
            .bind(email)
            .fetch_optional(pool)
            .await?))
    }

    /// The account with this id.
    pub async fn account(&self, id: &str) -> Result<Option<AccountRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, AccountRow>(concat!("SELECT ", account_columns!(), " FROM accounts WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?))
    }

    /// Sets an account's password hash and ends every one of its sessions (a changed password signs out
    /// everywhere else; the caller starts a new session if it wants one).
    pub async fn set_password(&self, account_id: &str, password_hash: &str, now: i64) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query("UPDATE accounts SET password_hash = $2, password_changed_at = $3 WHERE id = $1")
                .bind(account_id)
                .bind(password_hash)
                .bind(now)
                .execute(tx.conn())
                .await?
                .rows_affected();
            revoke_all_of!(tx.conn(), "web_sessions", account_id, now);
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    /// Stores a sign-in session.
    pub async fn insert_web_session(&self, s: &NewWebSession<'_>) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO web_sessions (id, token_mac, account_id, created_at, last_seen_at, expires_at, source, \
             user_agent) VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
        )
        .bind(s.id)
        .bind(s.mac)
        .bind(s.account_id)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.source)
        .bind(s.user_agent)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// The live session with this token MAC at `now`: not revoked, before its absolute end, used within `idle_ms`,
    /// of an account that is not disabled. Its last use moves to `now` (at most once a minute, to spare writes).
    pub async fn web_session(&self, mac: &[u8], now: i64, idle_ms: i64) -> Result<Option<(WebSessionRow, AccountRow)>> {
        // Every authenticated browser request comes here: one read of the session, one of its account, and a
        // write only when the last use is more than a minute old.
        let session: Option<WebSessionRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, account_id, created_at, last_seen_at, expires_at, source, user_agent FROM web_sessions \
             WHERE token_mac = $1 AND revoked_at IS NULL AND expires_at > $2 AND last_seen_at + $3 > $2",
        )
        .bind(mac)
        .bind(now)
        .bind(idle_ms)
        .fetch_optional(pool)
        .await?);
        let Some(mut session) = session else { return Ok(None) };
        let Some(account) = self.account(&session.account_id).await?.filter(|a| a.disabled_at.is_none()) else {
            return Ok(None);
        };
        if session.last_seen_at < now - 60_000 {
            on_pool!(self, pool => sqlx::query("UPDATE web_sessions SET last_seen_at = $2 WHERE id = $1")
                .bind(&session.id)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected());
            session.last_seen_at = now;
        }
        Ok(Some((session, account)))
    }

    /// The account's live sessions at `now`, newest first.
    pub async fn web_sessions_of(&self, account_id: &str, now: i64, idle_ms: i64) -> Result<Vec<WebSessionRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, WebSessionRow>(
            "SELECT id, account_id, created_at, last_seen_at, expires_at, source, user_agent FROM web_sessions \
             WHERE account_id = $1 AND revoked_at IS NULL AND expires_at > $2 AND last_seen_at + $3 > $2 \
             ORDER BY created_at DESC, id",
        )
        .bind(account_id)
        .bind(now)
        .bind(idle_ms)
        .fetch_all(pool)
        .await?))
    }

    /// Ends one session of the account (false if it has no such live session).
    pub async fn revoke_web_session(&self, account_id: &str, id: &str, now: i64) -> Result<bool> {
        Ok(on_pool!(self, pool => sqlx::query(
            "UPDATE web_sessions SET revoked_at = $3 WHERE account_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(account_id)
        .bind(id)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected())
            == 1)
    }

    /// Ends every session of the account ("sign out everywhere"); returns how many ended.
    pub async fn revoke_web_sessions_of(&self, account_id: &str, now: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => revoke_all_of!(pool, "web_sessions", account_id, now)))
    }

    /// Counts a failed sign-in under `key` at `now` (a new window once `window_ms` passed since the first); at
    /// `max` failures in the window the key is locked until `now + lock_ms`. Returns the lock, if any.
    pub async fn record_login_failure(
        &self,
        key: &str,
        now: i64,
        window_ms: i64,
        max: i64,
        lock_ms: i64,
    ) -> Result<Option<i64>> {
        let row: (i64, Option<i64>) = on_pool!(self, pool => sqlx::query_as(
            "INSERT INTO login_failures (key, failures, first_at, locked_until) VALUES ($1, 1, $2, NULL) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN login_failures.first_at + $3 <= $2 THEN 1 ELSE login_failures.failures + 1 END, \
               first_at = CASE WHEN login_failures.first_at + $3 <= $2 THEN $2 ELSE login_failures.first_at END, \
               locked_until = CASE \
                 WHEN login_failures.first_at + $3 > $2 AND login_failures.failures + 1 >= $4 THEN $2 + $5 \
                 ELSE login_failures.locked_until END \
             RETURNING failures, locked_until",
        )
        .bind(key)
        .bind(now)
        .bind(window_ms)
        .bind(max)
        .bind(lock_ms)
        .fetch_one(pool)
        .await?);
        Ok(row.1.filter(|until| *until > now))
    }

    /// When `key` is locked until, if it is locked at `now`.
    pub async fn login_lock(&self, key: &str, now: i64) -> Result<Option<i64>> {
        let row: Option<(Option<i64>,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT locked_until FROM login_failures WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await?);
        Ok(row.and_then(|(until,)| until).filter(|until| *until > now))
    }

    /// Takes one counted attempt back from `key`, unless it is locked (a success is not a failure).
    pub async fn forgive_login_failure(&self, key: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE login_failures SET failures = failures - 1 WHERE key = $1 AND failures > 0 AND locked_until IS NULL",
        )
        .bind(key)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Forgets every counter whose key starts with `prefix` (recovery clears an account's locks everywhere).
    pub async fn clear_login_failures_like(&self, prefix: &str) -> Result<u64> {
        let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        Ok(on_pool!(self, pool => sqlx::query("DELETE FROM login_failures WHERE key LIKE $1 ESCAPE '\\'")
            .bind(&pattern)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Forgets the failures counted under `key` (after a successful sign-in).
    pub async fn clear_login_failures(&self, key: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Appends to the audit log.
    pub async fn audit(&self, e: &AuditRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO audit_log (at, account_id, action, target, source, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.at)
        .bind(&e.account_id)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.source)
        .bind(&e.detail)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// The newest audit entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, AuditRow>(
            "SELECT at, account_id, action, target, source, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Deletes sign-in sessions that ended (revoked or past their absolute end) before `before`, and login-failure
    /// counters first counted before `before` that hold no lock; returns how many rows went.
    pub async fn prune_web_sessions(&self, before: i64) -> Result<u64> {
        let sessions = on_pool!(self, pool => sqlx::query(
            "DELETE FROM web_sessions WHERE revoked_at < $1 OR expires_at < $1",
        )
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected());
        let failures = on_pool!(self, pool => sqlx::query(
            "DELETE FROM login_failures WHERE first_at < $1 AND (locked_until IS NULL OR locked_until < $1)",
        )
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(sessions + failures)
    }

    /// Deletes audit entries older than `before` (the retention job); returns how many went.
    pub async fn prune_audit_log(&self, before: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Stores a mail link (the MAC of its token) for `account_id`, live until `expires_at`.
    pub async fn insert_mail_link(
        &self,
        mac: &[u8],
        purpose: LinkPurpose,
        account_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO mail_links (token_mac, purpose, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(mac)
        .bind(purpose.as_str())
        .bind(account_id)
        .bind(now)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// The account and purpose of a live link (unused, unexpired at `now`), without using it.
    pub async fn mail_link(&self, mac: &[u8], now: i64) -> Result<Option<(String, LinkPurpose)>> {
        let row: Option<(String, String)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT account_id, purpose FROM mail_links WHERE token_mac = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(mac)
        .bind(now)
        .fetch_optional(pool)
        .await?);
        Ok(row.and_then(|(account, purpose)| LinkPurpose::parse(&purpose).map(|p| (account, p))))
    }

    /// Uses a live link of `purpose` and applies it, in one transaction: a verify link marks the email
    /// verified; a reset or invite link sets `password_hash` (required for them), marks the email verified,
    /// uses up every other reset and invite link of the account, ends every session of it, revokes its API tokens
    /// and deletes its passkeys. The account id,
    /// or `None` (nothing changed) if the link is not live, is of another purpose, or its account is disabled.
    pub async fn use_mail_link(
        &self,
        mac: &[u8],
        purpose: LinkPurpose,
        password_hash: Option<&str>,
        now: i64,
    ) -> Result<Option<String>> {
        if (purpose == LinkPurpose::Verify) != password_hash.is_none() {
            return Err(super::StoreError::Corrupt("a verify link sets no password; the others must".into()));
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let used: Option<(String,)> = sqlx::query_as(
                "UPDATE mail_links SET used_at = $2 WHERE token_mac = $1 AND purpose = $3 AND used_at IS NULL \
                 AND expires_at > $2 AND account_id IN (SELECT id FROM accounts WHERE disabled_at IS NULL) \
                 RETURNING account_id",
            )
            .bind(mac)
            .bind(now)
            .bind(purpose.as_str())
            .fetch_optional(tx.conn())
            .await?;
            let Some((account,)) = used else { return Ok(None) };
            sqlx::query("UPDATE accounts SET verified_at = $2 WHERE id = $1 AND verified_at IS NULL")
                .bind(&account)
                .bind(now)
                .execute(tx.conn())
                .await?;
            if let Some(hash) = password_hash {
                sqlx::query("UPDATE accounts SET password_hash = $2, password_changed_at = $3 WHERE id = $1")
                    .bind(&account)
                    .bind(hash)
                    .bind(now)
                    .execute(tx.conn())
                    .await?;
                sqlx::query(
                    "UPDATE mail_links SET used_at = $2 WHERE account_id = $1 AND used_at IS NULL \
                     AND purpose IN ('reset', 'invite')",
                )
                .bind(&account)
                .bind(now)
                .execute(tx.conn())
                .await?;
                revoke_all_of!(tx.conn(), "web_sessions", &account, now);
                // A reset is a recovery: whatever else could sign in goes too (an intruder's passkey or token).
                revoke_all_of!(tx.conn(), "api_tokens", &account, now);
                sqlx::query("DELETE FROM passkeys WHERE account_id = $1")
                    .bind(&account)
                    .execute(tx.conn())
                    .await?;
            }
            tx.commit().await?;
            Ok(Some(account))
        })
    }

    /// Accounts in email order, after `after`.
    pub async fn accounts(&self, after: Option<&str>, limit: i64) -> Result<Vec<AccountRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, AccountRow>(concat!(
            "SELECT ", account_columns!(), " FROM accounts WHERE email > $1 ORDER BY email LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Disables an account (never the owner) in one transaction: it can no longer sign in, its sessions end
    /// and its API tokens are revoked. False if there is no such enabled, non-owner account.
    pub async fn disable_account(&self, id: &str, now: i64) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE accounts SET disabled_at = $2 WHERE id = $1 AND disabled_at IS NULL AND role <> 'owner'",
            )
            .bind(id)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if n != 1 {
                return Ok(false);
            }
            revoke_all_of!(tx.conn(), "web_sessions", id, now);
            revoke_all_of!(tx.conn(), "api_tokens", id, now);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Deletes mail links that expired before `before`, and consumer sign-ups never verified that were made
    /// before `unverified_before` (with their links). Returns (links, accounts) deleted.
    pub async fn prune_mail_links(&self, before: i64, unverified_before: i64) -> Result<(u64, u64)> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let stale = "SELECT id FROM accounts WHERE verified_at IS NULL AND role = 'consumer' AND created_at < $1";
            let links = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM mail_links WHERE expires_at < $2 OR account_id IN ({stale})"
            )))
            .bind(unverified_before)
            .bind(before)
            .execute(tx.conn())
            .await?
            .rows_affected();
            // A sign-up with a passkey never confirmed: its passkey goes with it.
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM passkeys WHERE account_id IN ({stale})")))
                .bind(unverified_before)
                .execute(tx.conn())
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM webauthn_ceremonies WHERE account_id IN ({stale})")))
                .bind(unverified_before)
                .execute(tx.conn())
                .await?;
            let accounts = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM accounts WHERE id IN ({stale}) \
                 AND id NOT IN (SELECT account_id FROM web_sessions) \
                 AND id NOT IN (SELECT account_id FROM api_tokens WHERE account_id IS NOT NULL) \
                 AND id NOT IN (SELECT owner_account_id FROM devices WHERE owner_account_id IS NOT NULL) \
                 AND id NOT IN (SELECT account_id FROM support_grants)"
            )))
            .bind(unverified_before)
            .execute(tx.conn())
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok((links, accounts))
        })
    }
}
