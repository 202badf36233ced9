//! Device records: manufacture, enrolment, certificates, revocation, presence and reported state.

use sqlx::Row as _;

use super::{Result, Store};

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
    pub id: String,
    /// Model designation.
    pub model: String,
    /// `manufactured`, `enrolled` or `revoked`.
    pub status: String,
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
    /// `enrolled`, …
    pub status: String,
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

const DEVICE_COLUMNS: &str =
    "id, model, status, cert_serial, cert_not_after, created_at, enrolled_at, revoked_at, last_seen_at, state_json";

impl Store {
    /// Inserts a factory batch in one transaction (all or nothing).
    pub async fn insert_devices(&self, devices: &[NewDevice], now: i64) -> Result<()> {
        let mut tx = super::WriteTx::begin(&self.pool).await?;
        for d in devices {
            sqlx::query(
                "INSERT INTO devices (id, model, status, bootstrap_mac, bootstrap_expires_at, claim_mac, created_at) \
                 VALUES ($1, $2, 'manufactured', $3, $4, $5, $6)",
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
        tx.commit().await?;
        Ok(())
    }

    /// One device.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"));
        Ok(sqlx::query_as::<_, DeviceRow>(sql).bind(id).fetch_optional(&self.pool).await?)
    }

    /// Devices ordered by id, after `after` (exclusive), at most `limit`.
    pub async fn devices(&self, after: Option<&str>, limit: i64) -> Result<Vec<DeviceRow>> {
        let sql =
            sqlx::AssertSqlSafe(format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id > $1 ORDER BY id LIMIT $2"));
        Ok(sqlx::query_as::<_, DeviceRow>(sql).bind(after.unwrap_or("")).bind(limit).fetch_all(&self.pool).await?)
    }

    /// Ids of every revoked device (loaded into the TLS verifier at start).
    pub async fn revoked_device_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM devices WHERE status = 'revoked'").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Consumes the bootstrap token and records the device's certificate, atomically: a token works once.
    /// Enrolling again with a re-issued token replaces the certificate (the previous one stops working).
    pub async fn enrol(&self, id: &str, bootstrap_mac: &[u8], now: i64, cert: &CertRecord<'_>) -> Result<EnrolOutcome> {
        let done = sqlx::query(
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
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
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
        let row = sqlx::query(
            "SELECT cert_chain_pem, cert_spki, cert_serial, prev_cert_serial, cert_used_at IS NOT NULL, status \
             FROM devices WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| CurrentCert {
            chain_pem: r.get(0),
            spki: r.get(1),
            serial: r.get(2),
            prev_serial: r.get(3),
            used: r.get(4),
            status: r.get(5),
        }))
    }

    /// Renewal with the current certificate `presented`: the new certificate becomes current, the presented one
    /// previous. False if `presented` is no longer current or the device is not enrolled.
    pub async fn renew_current(&self, id: &str, presented: &str, cert: &CertRecord<'_>) -> Result<bool> {
        let done = sqlx::query(
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the first use of the current certificate; the previous one stops being accepted.
    pub async fn mark_cert_used(&self, id: &str, serial: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET cert_used_at = COALESCE(cert_used_at, $3), prev_cert_serial = NULL \
             WHERE id = $1 AND cert_serial = $2",
        )
        .bind(id)
        .bind(serial)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a device that is not revoked a new, unused bootstrap token. False if it is revoked or unknown.
    pub async fn reissue_bootstrap(&self, id: &str, bootstrap_mac: &[u8], expires_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE devices SET bootstrap_mac = $2, bootstrap_expires_at = $3, bootstrap_used_at = NULL \
             WHERE id = $1 AND status <> 'revoked'",
        )
        .bind(id)
        .bind(bootstrap_mac)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The accepted certificate serials of one enrolled device.
    pub async fn cert_serials_of(&self, id: &str) -> Result<Option<CertSerialsRow>> {
        let row = sqlx::query(
            "SELECT id, cert_serial, prev_cert_serial, cert_used_at IS NOT NULL FROM devices \
             WHERE id = $1 AND status = 'enrolled' AND cert_serial IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| CertSerialsRow { device_id: r.get(0), current: r.get(1), prev: r.get(2), used: r.get(3) }))
    }

    /// The accepted certificate serials of every enrolled device (loaded into the verifiers at start).
    pub async fn cert_serials(&self) -> Result<Vec<CertSerialsRow>> {
        let rows = sqlx::query(
            "SELECT id, cert_serial, prev_cert_serial, cert_used_at IS NOT NULL FROM devices \
             WHERE status = 'enrolled' AND cert_serial IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| CertSerialsRow { device_id: r.get(0), current: r.get(1), prev: r.get(2), used: r.get(3) })
            .collect())
    }

    /// What a bootstrap token is worth now, read-only (checked before any work is done for the caller).
    pub async fn bootstrap_token_state(&self, id: &str, bootstrap_mac: &[u8], now: i64) -> Result<TokenState> {
        let row = sqlx::query(
            "SELECT status, bootstrap_used_at, bootstrap_expires_at FROM devices WHERE id = $1 AND bootstrap_mac = $2",
        )
        .bind(id)
        .bind(bootstrap_mac)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => TokenState::Invalid,
            Some(r) if r.get::<String, _>(0) == "revoked" => TokenState::Revoked,
            Some(r) if r.get::<Option<i64>, _>(1).is_some() => TokenState::Used,
            Some(r) if r.get::<i64, _>(2) <= now => TokenState::Expired,
            Some(_) => TokenState::Usable,
        })
    }

    /// Marks a device revoked. False if there is no such device.
    pub async fn revoke(&self, id: &str, now: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE devices SET status = 'revoked', revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Records MQTT activity (last seen) inside the caller's transaction; only ever moves the time forward.
pub async fn touch_batch(conn: &mut sqlx::SqliteConnection, seen: &[(String, i64)]) -> Result<()> {
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
