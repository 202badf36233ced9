//! Device records: manufacture, enrolment, certificates, revocation, presence and reported state.

use hearth_proto::DeviceId;

use super::{BeginWrite as _, Result, Store, StoreError};

/// A device's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Made by the factory, not yet enrolled.
    Manufactured,
    /// Holds a certificate the hub issued.
    Enrolled,
    /// Refused for good.
    Revoked,
}

impl DeviceStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Manufactured => "manufactured",
            DeviceStatus::Enrolled => "enrolled",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for DeviceStatus {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self> {
        match s.as_str() {
            "manufactured" => Ok(DeviceStatus::Manufactured),
            "enrolled" => Ok(DeviceStatus::Enrolled),
            "revoked" => Ok(DeviceStatus::Revoked),
            _ => Err(StoreError::Corrupt(format!("device status {s:?}"))),
        }
    }
}

/// A device as the factory creates it. Only MACs of its secrets are stored.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Device id.
    pub id: String,
    /// Model designation.
    pub model: String,
    /// MAC of the bootstrap token.
    pub bootstrap_mac: Vec<u8>,
    /// When the bootstrap token stops working.
    pub bootstrap_expires_at: i64,
    /// MAC of the claim code.
    pub claim_mac: Vec<u8>,
}

/// A device as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceRow {
    /// Device id.
    #[sqlx(try_from = "String")]
    pub id: DeviceId,
    /// Model designation.
    pub model: String,
    /// Life-cycle state.
    #[sqlx(try_from = "String")]
    pub status: DeviceStatus,
    /// Current certificate serial (hex).
    pub cert_serial: Option<String>,
    /// Current certificate expiry.
    pub cert_not_after: Option<i64>,
    /// Created by the factory.
    pub created_at: i64,
    /// First enrolment.
    pub enrolled_at: Option<i64>,
    /// Revocation.
    pub revoked_at: Option<i64>,
    /// Last MQTT activity (connect or message).
    pub last_seen_at: Option<i64>,
    /// Last reported state, JSON.
    pub state_json: Option<String>,
    /// Whether a connection of the device was open on some hub node (see `session_node`).
    pub session_open: bool,
    /// The node that holds (or held) it: the connection counts only while that node is alive.
    pub session_node: Option<String>,
    /// The consumer account that claimed it.
    pub owner_account_id: Option<String>,
    /// When it was claimed (its owner sees telemetry received since then).
    pub claimed_at: Option<i64>,
    /// The wipe command sent when it was released, until the device confirms it (no claim before that).
    pub wipe_command_id: Option<String>,
    /// When the device last confirmed a wipe.
    pub wiped_at: Option<i64>,
}

/// Who releases a claimed device.
#[derive(Debug, Clone, Copy)]
pub enum Release<'a> {
    /// The consumer account that claimed it.
    Owner(&'a str),
    /// The owner or an admin of the hub.
    Operator,
}

/// What a CONNECT asks of the device's stored session.
#[derive(Debug, Clone, Copy)]
pub struct SessionOpen<'a> {
    /// Clean start (3.1.1: clean session): any earlier session is discarded.
    pub clean: bool,
    /// How long the session outlives this connection, ms (0: it ends with the connection).
    pub expiry_ms: i64,
    /// The node that holds the connection.
    pub node: &'a str,
    /// Now, Unix ms.
    pub now: i64,
}

/// The session a connection opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedSession {
    /// The connection's epoch (0: no such device).
    pub epoch: i64,
    /// An earlier session resumed (MQTT's Session Present).
    pub present: bool,
    /// The resumed session holds the command subscription.
    pub subscribed: bool,
}

/// A certificate to record for a device.
#[derive(Debug, Clone, Copy)]
pub struct CertRecord<'a> {
    /// Serial, hex.
    pub serial: &'a str,
    /// End of validity, Unix ms.
    pub not_after: i64,
    /// SHA-256 of the certified public key, hex.
    pub spki: &'a str,
    /// The chain (leaf and device CA), PEM.
    pub chain: &'a str,
}

/// A device's current certificate as stored.
#[derive(Debug, Clone)]
pub struct CurrentCert {
    /// The chain, PEM (absent for devices enrolled before it was recorded).
    pub chain_pem: Option<String>,
    /// SHA-256 of its public key, hex.
    pub spki: Option<String>,
    /// Its serial.
    pub serial: Option<String>,
    /// The serial it replaced, accepted until it is used.
    pub prev_serial: Option<String>,
    /// Whether it has been used to connect.
    pub used: bool,
    /// Life-cycle state.
    pub status: DeviceStatus,
}

/// The accepted serials of one device, as stored.
#[derive(Debug, Clone)]
pub struct CertSerialsRow {
    /// Device id.
    pub device_id: String,
    /// Current certificate serial.
    pub current: String,
    /// Previous serial, accepted until the current one is used.
    pub prev: Option<String>,
    /// Whether the current certificate has been used.
    pub used: bool,
}

/// The state of a bootstrap token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Valid, unused, unexpired.
    Usable,
    /// No device with that id and token.
    Invalid,
    /// Already used.
    Used,
    /// Expired.
    Expired,
    /// The device is revoked.
    Revoked,
}

/// Why an enrolment did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolOutcome {
    /// Enrolled; the certificate is recorded.
    Enrolled,
    /// No device with that id and token.
    Invalid,
    /// The token was already used.
    Used,
    /// The token expired.
    Expired,
    /// The device is revoked.
    Revoked,
}

const DEVICE_COLUMNS: &str = "id, model, status, cert_serial, cert_not_after, created_at, enrolled_at, revoked_at, \
                              last_seen_at, state_json, session_open, session_node, owner_account_id, \
                              claimed_at, wipe_command_id, wiped_at";

/// Decodes a status column.
fn status(s: String) -> Result<DeviceStatus> {
    DeviceStatus::try_from(s)
}

impl Store {
    /// Inserts a factory batch in one transaction (all or nothing).
    pub async fn insert_devices(&self, devices: &[NewDevice], now: i64) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for d in devices {
                sqlx::query(
                    "INSERT INTO devices (id, model, status, bootstrap_mac, bootstrap_expires_at, claim_mac, \
                     created_at) VALUES ($1, $2, 'manufactured', $3, $4, $5, $6)",
                )
                .bind(&d.id)
                .bind(&d.model)
                .bind(&d.bootstrap_mac)
                .bind(d.bootstrap_expires_at)
                .bind(&d.claim_mac)
                .bind(now)
                .execute(tx.conn())
                .await?;
            }
            tx.commit().await
        })
    }

    /// One device.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        on_pool!(self, pool => Ok(sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(pool)
            .await?))
    }

    /// Devices ordered by id, after `after` (exclusive), at most `limit`.
    pub async fn devices(&self, after: Option<&str>, limit: i64) -> Result<Vec<DeviceRow>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id > $1 ORDER BY id LIMIT $2");
        on_pool!(self, pool => Ok(sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(sql))
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Devices whose id starts with `prefix`, in id order, after `after` (the fleet list's search).
    pub async fn devices_with_prefix(&self, prefix: &str, after: Option<&str>, limit: i64) -> Result<Vec<DeviceRow>> {
        let pattern: String = prefix
            .chars()
            .flat_map(|c| match c {
                '\\' | '%' | '_' => vec!['\\', c],
                c => vec![c],
            })
            .chain(['%'])
            .collect();
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id LIKE $1 ESCAPE '\\' AND id > $2 ORDER BY id LIMIT $3"
        );
        on_pool!(self, pool => Ok(sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(sql))
            .bind(&pattern)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Gives the unclaimed, unrevoked device whose claim code has this MAC to `account_id`; its id, or `None`
    /// (no such device, or it is claimed already: the same answer).
    pub async fn claim_device(&self, claim_mac: &[u8], account_id: &str, now: i64) -> Result<Option<String>> {
        let row: Option<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "UPDATE devices SET owner_account_id = $2, claimed_at = $3 \
             WHERE claim_mac = $1 AND owner_account_id IS NULL AND wipe_command_id IS NULL AND status <> $4 \
             RETURNING id",
        )
        .bind(claim_mac)
        .bind(account_id)
        .bind(now)
        .bind(DeviceStatus::Revoked.to_string())
        .fetch_optional(pool)
        .await?);
        Ok(row.map(|(id,)| id))
    }

    /// Releases a claimed device (`by`: its owner, or an operator) in one transaction: it is unclaimed, its last
    /// reported state (the previous owner's) is forgotten, and, if
    /// `wipe` is given, that command is recorded and the device stays unclaimable until it confirms the wipe
    /// ([`Store::confirm_wipe`]). An operator may also release a device whose earlier wipe is unconfirmed, to send
    /// a new one. False (nothing changed) if `by` may not release it or it is neither claimed nor awaiting a wipe.
    pub async fn release_device(
        &self,
        device_id: &str,
        by: Release<'_>,
        wipe: Option<&super::NewCommand>,
    ) -> Result<bool> {
        let (condition, owner) = match by {
            Release::Owner(account) => ("owner_account_id = $3", account),
            Release::Operator => ("(owner_account_id IS NOT NULL OR wipe_command_id IS NOT NULL) AND $3 = $3", ""),
        };
        let sql = format!(
            "UPDATE devices SET owner_account_id = NULL, claimed_at = NULL, wipe_command_id = $2, state_json = NULL \
             WHERE id = $1 AND {condition}"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let released = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(device_id)
                .bind(wipe.map(|c| c.id.as_str()))
                .bind(owner)
                .execute(tx.conn())
                .await?
                .rows_affected();
            if released != 1 {
                return Ok(false);
            }
            if let Some(c) = wipe {
                super::commands::insert_command!(tx.conn(), c);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Records that the device confirmed the wipe `command_id` (it may be claimed again). False if that is not
    /// the wipe it was sent last.
    pub async fn confirm_wipe(&self, device_id: &str, command_id: &str, now: i64) -> Result<bool> {
        // With its audit entry in the same transaction: whoever sees the wipe confirmed sees it audited.
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let confirmed = sqlx::query(
                "UPDATE devices SET wipe_command_id = NULL, wiped_at = $3 WHERE id = $1 AND wipe_command_id = $2",
            )
            .bind(device_id)
            .bind(command_id)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected()
                == 1;
            if confirmed {
                sqlx::query(
                    "INSERT INTO audit_log (at, account_id, action, target, source, detail) \
                     VALUES ($1, NULL, 'device_wiped', $2, NULL, $3)",
                )
                .bind(now)
                .bind(device_id)
                .bind(format!("confirmed by the device (command {command_id})"))
                .execute(tx.conn())
                .await?;
            }
            tx.commit().await?;
            Ok(confirmed)
        })
    }

    /// The devices `account_id` claimed, in id order, after `after`.
    pub async fn devices_of_account(
        &self,
        account_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeviceRow>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE owner_account_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        on_pool!(self, pool => Ok(sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Grants support access to `account_id`'s devices until `expires_at` (replacing any earlier grant).
    pub async fn grant_support(&self, account_id: &str, now: i64, expires_at: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO support_grants (account_id, granted_at, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET granted_at = $2, expires_at = $3",
        )
        .bind(account_id)
        .bind(now)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Ends `account_id`'s support grant (false if it had none).
    pub async fn revoke_support_grant(&self, account_id: &str) -> Result<bool> {
        Ok(on_pool!(self, pool => sqlx::query("DELETE FROM support_grants WHERE account_id = $1")
            .bind(account_id)
            .execute(pool)
            .await?
            .rows_affected())
            == 1)
    }

    /// When `account_id`'s support grant ends, if it holds at `now`.
    pub async fn support_grant(&self, account_id: &str, now: i64) -> Result<Option<i64>> {
        let row: Option<(i64,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT expires_at FROM support_grants WHERE account_id = $1 AND expires_at > $2",
        )
        .bind(account_id)
        .bind(now)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(|(at,)| at))
    }

    /// The devices of every consumer whose support grant holds at `now`, in id order, after `after`.
    pub async fn devices_granted(&self, now: i64, after: Option<&str>, limit: i64) -> Result<Vec<DeviceRow>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE owner_account_id IN \
             (SELECT account_id FROM support_grants WHERE expires_at > $1) AND id > $2 ORDER BY id LIMIT $3"
        );
        on_pool!(self, pool => Ok(sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// How many devices there are, by status (for `doctor`, the migration check and tests).
    pub async fn device_counts(&self) -> Result<Vec<(DeviceStatus, i64)>> {
        let rows: Vec<(String, i64)> = on_pool!(self, pool =>
            sqlx::query_as("SELECT status, COUNT(*) FROM devices GROUP BY status ORDER BY status")
                .fetch_all(pool)
                .await?);
        rows.into_iter().map(|(s, n)| Ok((status(s)?, n))).collect()
    }

    /// Ids of every revoked device (loaded into the TLS verifier at start).
    pub async fn revoked_device_ids(&self) -> Result<Vec<DeviceId>> {
        self.revoked_since(i64::MIN).await
    }

    /// Ids of the devices revoked at or after `since` (the periodic backstop beside the bus).
    pub async fn revoked_since(&self, since: i64) -> Result<Vec<DeviceId>> {
        let ids: Vec<(String,)> = on_pool!(self, pool =>
            sqlx::query_as("SELECT id FROM devices WHERE status = 'revoked' AND revoked_at >= $1")
                .bind(since)
                .fetch_all(pool)
                .await?);
        ids.into_iter().map(|(id,)| DeviceId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
    }

    /// Consumes the bootstrap token and records the device's certificate, atomically: a token works once.
    /// Enrolling again with a re-issued token replaces the certificate (the previous one stops working).
    pub async fn enrol(&self, id: &str, bootstrap_mac: &[u8], now: i64, cert: &CertRecord<'_>) -> Result<EnrolOutcome> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET status = 'enrolled', bootstrap_used_at = $3, enrolled_at = COALESCE(enrolled_at, $3), \
             cert_serial = $4, cert_not_after = $5, cert_spki = $6, cert_chain_pem = $7, prev_cert_serial = NULL, \
             cert_used_at = NULL WHERE id = $1 AND bootstrap_mac = $2 AND bootstrap_used_at IS NULL \
             AND bootstrap_expires_at > $3 AND status IN ('manufactured', 'enrolled')",
        )
        .bind(id)
        .bind(bootstrap_mac)
        .bind(now)
        .bind(cert.serial)
        .bind(cert.not_after)
        .bind(cert.spki)
        .bind(cert.chain)
        .execute(pool)
        .await?
        .rows_affected());
        if done == 1 {
            return Ok(EnrolOutcome::Enrolled);
        }
        // Lost a race, or the token was never good: say which.
        Ok(match self.bootstrap_token_state(id, bootstrap_mac, now).await? {
            TokenState::Usable => EnrolOutcome::Used,
            TokenState::Invalid => EnrolOutcome::Invalid,
            TokenState::Used => EnrolOutcome::Used,
            TokenState::Expired => EnrolOutcome::Expired,
            TokenState::Revoked => EnrolOutcome::Revoked,
        })
    }

    /// The current certificate of a device.
    pub async fn current_cert(&self, id: &str) -> Result<Option<CurrentCert>> {
        #[allow(clippy::type_complexity)]
        let row: Option<(Option<String>, Option<String>, Option<String>, Option<String>, bool, String)> = on_pool!(self, pool => sqlx::query_as(
                "SELECT cert_chain_pem, cert_spki, cert_serial, prev_cert_serial, cert_used_at IS NOT NULL, status \
                 FROM devices WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?);
        row.map(|(chain_pem, spki, serial, prev_serial, used, s)| {
            Ok(CurrentCert { chain_pem, spki, serial, prev_serial, used, status: status(s)? })
        })
        .transpose()
    }

    /// Renewal with the current certificate `presented`: the new certificate becomes current, the presented one
    /// previous. False if `presented` is no longer current or the device is not enrolled.
    pub async fn renew_current(&self, id: &str, presented: &str, cert: &CertRecord<'_>) -> Result<bool> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET prev_cert_serial = cert_serial, cert_serial = $3, cert_not_after = $4, \
             cert_spki = $5, cert_chain_pem = $6, cert_used_at = NULL \
             WHERE id = $1 AND status = 'enrolled' AND cert_serial = $2",
        )
        .bind(id)
        .bind(presented)
        .bind(cert.serial)
        .bind(cert.not_after)
        .bind(cert.spki)
        .bind(cert.chain)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Records the first use of the current certificate; the previous one stops being accepted.
    pub async fn mark_cert_used(&self, id: &str, serial: &str, now: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET cert_used_at = COALESCE(cert_used_at, $3), prev_cert_serial = NULL \
             WHERE id = $1 AND cert_serial = $2",
        )
        .bind(id)
        .bind(serial)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Gives a device that is not revoked a new, unused bootstrap token. False if it is revoked or unknown.
    pub async fn reissue_bootstrap(&self, id: &str, bootstrap_mac: &[u8], expires_at: i64) -> Result<bool> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET bootstrap_mac = $2, bootstrap_expires_at = $3, bootstrap_used_at = NULL \
             WHERE id = $1 AND status <> 'revoked'",
        )
        .bind(id)
        .bind(bootstrap_mac)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// The accepted certificate serials of one enrolled device.
    pub async fn cert_serials_of(&self, id: &str) -> Result<Option<CertSerialsRow>> {
        let row: Option<(String, String, Option<String>, bool)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, cert_serial, prev_cert_serial, cert_used_at IS NOT NULL FROM devices \
             WHERE id = $1 AND status = 'enrolled' AND cert_serial IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(|(device_id, current, prev, used)| CertSerialsRow { device_id, current, prev, used }))
    }

    /// The accepted certificate serials of every enrolled device (loaded into the verifiers at start).
    pub async fn cert_serials(&self) -> Result<Vec<CertSerialsRow>> {
        let rows: Vec<(String, String, Option<String>, bool)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, cert_serial, prev_cert_serial, cert_used_at IS NOT NULL FROM devices \
             WHERE status = 'enrolled' AND cert_serial IS NOT NULL",
        )
        .fetch_all(pool)
        .await?);
        Ok(rows
            .into_iter()
            .map(|(device_id, current, prev, used)| CertSerialsRow { device_id, current, prev, used })
            .collect())
    }

    /// What a bootstrap token is worth now, read-only (checked before any work is done for the caller).
    pub async fn bootstrap_token_state(&self, id: &str, bootstrap_mac: &[u8], now: i64) -> Result<TokenState> {
        let row: Option<(String, Option<i64>, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT status, bootstrap_used_at, bootstrap_expires_at FROM devices WHERE id = $1 AND bootstrap_mac = $2",
        )
        .bind(id)
        .bind(bootstrap_mac)
        .fetch_optional(pool)
        .await?);
        Ok(match row {
            None => TokenState::Invalid,
            Some((s, _, _)) if status(s.clone())? == DeviceStatus::Revoked => TokenState::Revoked,
            Some((_, Some(_), _)) => TokenState::Used,
            Some((_, None, expires)) if expires <= now => TokenState::Expired,
            Some(_) => TokenState::Usable,
        })
    }

    /// Marks a device revoked. False if there is no such device.
    pub async fn revoke(&self, id: &str, now: i64) -> Result<bool> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET status = 'revoked', revoked_at = COALESCE(revoked_at, $2), session_subscribed = $3 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(false)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Starts a new connection of a device: raises its session epoch, and says whether the device's session
    /// resumes (MQTT's Session Present) and holds a command subscription. A session exists while a connection
    /// of the device is open (on any node, alive or not: a reconnect is then a takeover), and after that until
    /// its expiry interval has passed. A clean start, or a session that has expired, starts empty.
    ///
    /// A node closes its own connection of the device when another reports a higher epoch, so of two
    /// connections the later one wins on every node. A revoked (or unknown) device gets epoch 0 and no session:
    /// revocation is decided here by the store, whatever a node's view of it says yet.
    pub async fn open_session(&self, id: &str, open: &SessionOpen<'_>) -> Result<OpenedSession> {
        // A session exists while a connection is open, or until its expiry (never for expiry 0, whatever a clock
        // stepped back says); evaluated on the row as it was (SET expressions see the old values on both backends).
        macro_rules! exists {
            () => {
                "((session_open AND session_expires_at IS NULL) OR (session_expiry_ms > 0 AND COALESCE(session_expires_at, 0) > $5))"
            };
        }
        let sql = concat!(
            "UPDATE devices SET session_epoch = session_epoch + 1, session_resumed = (NOT $2) AND ",
            exists!(),
            ", session_subscribed = CASE WHEN (NOT $2) AND ",
            exists!(),
            " THEN session_subscribed ELSE $3 END, session_open = $4, session_node = $6, \
             session_expires_at = NULL, session_expiry_ms = $7 \
             WHERE id = $1 AND status <> 'revoked' RETURNING session_epoch, session_resumed, session_subscribed"
        );
        let row: Option<(i64, bool, bool)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(id)
            .bind(open.clean)
            .bind(false)
            .bind(true)
            .bind(open.now)
            .bind(open.node)
            .bind(open.expiry_ms)
            .fetch_optional(pool)
            .await?);
        Ok(row.map_or(OpenedSession { epoch: 0, present: false, subscribed: false }, |(epoch, present, subscribed)| {
            OpenedSession { epoch, present, subscribed }
        }))
    }

    /// Records whether the device's session holds a command subscription (so it resumes on any node). Only the
    /// connection with the device's current `epoch` may change it: a connection that was taken over does not
    /// clear its successor's state as it ends.
    pub async fn set_session_subscribed(&self, id: &str, on: bool, epoch: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET session_subscribed = $2 WHERE id = $1 AND session_epoch = $3",
        )
        .bind(id)
        .bind(on)
        .bind(epoch)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Records that the connection with `epoch` ended (unless a newer one has opened since): its session is
    /// kept until `expires_at` (Unix ms; `now` or earlier ends it at once).
    pub async fn close_session(&self, id: &str, epoch: i64, expires_at: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET session_open = $2, session_expires_at = $4 WHERE id = $1 AND session_epoch = $3",
        )
        .bind(id)
        .bind(false)
        .bind(epoch)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Marks every connection recorded for node `name` closed at `now` (the node is starting and holds none);
    /// each session then lasts its own expiry interval from `now`.
    pub async fn clear_sessions_of(&self, name: &str, now: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET session_open = $2, session_expires_at = $4 + session_expiry_ms \
             WHERE session_node = $1 AND session_open = $3",
        )
        .bind(name)
        .bind(false)
        .bind(true)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Records that node `name` is alive now (and forgets nodes silent for a week).
    pub async fn node_heartbeat(&self, name: &str, now: i64) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO nodes (name, started_at, seen_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (name) DO UPDATE SET seen_at = $2",
            )
            .bind(name)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query("DELETE FROM nodes WHERE seen_at < $1").bind(now - 7 * 86_400_000).execute(pool).await?;
        });
        Ok(())
    }

    /// Nodes that sent a heartbeat since `since`.
    pub async fn live_nodes(&self, since: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT name FROM nodes WHERE seen_at >= $1 ORDER BY name",
        )
        .bind(since)
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// The device's current session epoch (0 for an unknown device).
    pub async fn session_epoch(&self, id: &str) -> Result<i64> {
        let row: Option<(i64,)> = on_pool!(self, pool =>
            sqlx::query_as("SELECT session_epoch FROM devices WHERE id = $1").bind(id).fetch_optional(pool).await?);
        Ok(row.map_or(0, |r| r.0))
    }
}

/// Records MQTT activity (last seen) inside the caller's transaction; only ever moves the time forward.
pub(super) async fn touch_batch(conn: &mut sqlx::SqliteConnection, seen: &[(String, i64)]) -> Result<()> {
    for (id, at) in seen {
        sqlx::query(
            "UPDATE devices SET last_seen_at = $2 WHERE id = $1 AND (last_seen_at IS NULL OR last_seen_at < $2)",
        )
        .bind(id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
