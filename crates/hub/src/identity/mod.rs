//! Device identity: manufacturing records, enrolment with a single-use bootstrap token and a CSR, certificate
//! renewal over mutual TLS, and revocation (enforced in the TLS handshake and by closing live sessions).
//!
//! Guidelines 1, 4 and 5: no shared secret exists; each device proves itself with a key it generated; the hub
//! keeps only MACs of the bootstrap tokens and claim codes it hands to the factory.

pub mod ca;
pub mod verifier;

use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use tokio::sync::broadcast;

use hearth_proto::enrol::{CertificateResponse, EnrolRequest};
use hearth_proto::{DeviceId, ModelId};

use crate::secrets::{MasterKey, SecretString, random_base32, random_token};
use crate::store::{EnrolOutcome, NewDevice, Store, TokenState};
pub use ca::{Authorities, CsrError};
pub use verifier::{DeviceCertVerifier, Revocations, device_id_of};

/// MAC purposes, so a token of one kind can never be presented as another.
const BOOTSTRAP: &str = "bootstrap";
const CLAIM: &str = "claim";

/// Why enrolment or renewal was refused. Everything but `Internal` is the caller's mistake.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// Unknown device or wrong token.
    #[error("unknown device or invalid bootstrap token")]
    InvalidToken,
    /// The token was already used.
    #[error("this bootstrap token was already used; a device enrols once, then renews with its certificate")]
    TokenUsed,
    /// The token expired.
    #[error("this bootstrap token has expired")]
    TokenExpired,
    /// The device is revoked.
    #[error("this device is revoked")]
    Revoked,
    /// The device is not enrolled (renewal).
    #[error("this device is not enrolled")]
    NotEnrolled,
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Something failed inside the hub.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One device made by the factory, with its secrets in clear: shown once, never stored.
#[derive(Debug)]
pub struct ManufacturedDevice {
    /// Device id.
    pub id: DeviceId,
    /// Model.
    pub model: ModelId,
    /// Single-use enrolment token.
    pub bootstrap_token: SecretString,
    /// Consumer claim code (for the label).
    pub claim_code: SecretString,
}

/// Settings of the identity capability.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Lifetime of device certificates.
    pub device_cert_validity: Duration,
    /// Lifetime of bootstrap tokens.
    pub bootstrap_validity: Duration,
}

/// The identity capability.
#[derive(Debug, Clone)]
pub struct Identity {
    store: Store,
    master: Arc<MasterKey>,
    authorities: Arc<Authorities>,
    revocations: Arc<Revocations>,
    revoked_tx: broadcast::Sender<DeviceId>,
    settings: IdentitySettings,
}

impl Identity {
    /// Builds the capability; revoked ids are loaded from the store.
    pub async fn new(
        store: Store,
        master: Arc<MasterKey>,
        authorities: Arc<Authorities>,
        settings: IdentitySettings,
    ) -> Result<Identity, crate::store::StoreError> {
        let revocations = Arc::new(Revocations::new(store.revoked_device_ids().await?));
        let (revoked_tx, _) = broadcast::channel(256);
        Ok(Identity { store, master, authorities, revocations, revoked_tx, settings })
    }

    /// The same capability with other settings (for example a batch of devices with a shorter enrolment
    /// window); revocations stay shared.
    pub fn with_settings(&self, settings: IdentitySettings) -> Identity {
        Identity { settings, ..self.clone() }
    }

    /// The shared revocation set (for the TLS verifiers).
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// The authorities.
    pub fn authorities(&self) -> &Arc<Authorities> {
        &self.authorities
    }

    /// Subscribes to revocations (the MQTT endpoint closes the device's session).
    pub fn on_revoke(&self) -> broadcast::Receiver<DeviceId> {
        self.revoked_tx.subscribe()
    }

    /// Creates `count` device records of `model`: random ids, random bootstrap tokens and claim codes.
    pub async fn manufacture(&self, model: &ModelId, count: usize) -> Result<Vec<ManufacturedDevice>, EnrolError> {
        let now = OffsetDateTime::now_utc();
        let expires = ca::unix_ms(now + self.settings.bootstrap_validity);
        let mut made = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        for _ in 0..count {
            let id = DeviceId::parse(&random_base32(16).map_err(internal)?).map_err(internal)?;
            // 256-bit bootstrap token; 20-character claim code (100 bits) a person can type from a label.
            let bootstrap_token = random_token("hbt_", 32).map_err(internal)?;
            let claim_code = SecretString::new(random_base32(20).map_err(internal)?.to_uppercase());
            rows.push(NewDevice {
                id: id.to_string(),
                model: model.to_string(),
                bootstrap_mac: self.master.token_mac(BOOTSTRAP, bootstrap_token.expose()),
                bootstrap_expires_at: expires,
                claim_mac: self.master.token_mac(CLAIM, claim_code.expose()),
            });
            made.push(ManufacturedDevice { id, model: model.clone(), bootstrap_token, claim_code });
        }
        self.store.insert_devices(&rows, ca::unix_ms(now)).await.map_err(internal)?;
        Ok(made)
    }

    /// First enrolment: checks the CSR, then consumes the token and records the certificate atomically.
    pub async fn enrol(&self, req: &EnrolRequest) -> Result<CertificateResponse, EnrolError> {
        let now = OffsetDateTime::now_utc();
        let mac = self.master.token_mac(BOOTSTRAP, &req.bootstrap_token);
        // Authenticate before doing any work for the caller (CSR verification, signing). An unknown device and
        // a wrong token get the same answer: nothing is disclosed before authentication.
        match self
            .store
            .bootstrap_token_state(req.device_id.as_str(), &mac, ca::unix_ms(now))
            .await
            .map_err(internal)?
        {
            TokenState::Usable => {}
            TokenState::Invalid => return Err(EnrolError::InvalidToken),
            TokenState::Used => return Err(EnrolError::TokenUsed),
            TokenState::Expired => return Err(EnrolError::TokenExpired),
            TokenState::Revoked => return Err(EnrolError::Revoked),
        }
        let device =
            self.store.device(req.device_id.as_str()).await.map_err(internal)?.ok_or(EnrolError::InvalidToken)?;
        // The token is consumed only together with a certificate: a bad CSR leaves it usable.
        let issued = self.issue(&req.device_id, &device.model, &req.csr_pem, now)?;
        let outcome = self
            .store
            .enrol(req.device_id.as_str(), &mac, ca::unix_ms(now), &issued.serial_hex, issued.not_after_ms)
            .await
            .map_err(internal)?;
        match outcome {
            EnrolOutcome::Enrolled => Ok(response(&req.device_id, issued)),
            EnrolOutcome::Invalid => Err(EnrolError::InvalidToken),
            EnrolOutcome::Used => Err(EnrolError::TokenUsed),
            EnrolOutcome::Expired => Err(EnrolError::TokenExpired),
            EnrolOutcome::Revoked => Err(EnrolError::Revoked),
        }
    }

    /// Renewal for a device already authenticated by its certificate (mutual TLS).
    pub async fn renew(&self, device: &DeviceId, csr_pem: &str) -> Result<CertificateResponse, EnrolError> {
        let now = OffsetDateTime::now_utc();
        if self.revocations.is_revoked(device.as_str()) {
            return Err(EnrolError::Revoked);
        }
        let row = self.store.device(device.as_str()).await.map_err(internal)?.ok_or(EnrolError::NotEnrolled)?;
        let issued = self.issue(device, &row.model, csr_pem, now)?;
        if !self.store.renew(device.as_str(), &issued.serial_hex, issued.not_after_ms).await.map_err(internal)? {
            return Err(EnrolError::NotEnrolled);
        }
        Ok(response(device, issued))
    }

    /// Revokes a device: recorded, refused at every later handshake, and its live session closed.
    /// Returns false if there is no such device.
    pub async fn revoke(&self, device: &DeviceId) -> Result<bool, crate::store::StoreError> {
        let now = ca::unix_ms(OffsetDateTime::now_utc());
        if !self.store.revoke(device.as_str(), now).await? {
            return Ok(false);
        }
        self.revocations.revoke(device);
        // Nobody listening (no MQTT endpoint) is fine.
        let _ = self.revoked_tx.send(device.clone());
        tracing::info!(device = %device, "device revoked");
        Ok(true)
    }

    fn issue(
        &self,
        device: &DeviceId,
        model: &str,
        csr_pem: &str,
        now: OffsetDateTime,
    ) -> Result<ca::IssuedCert, EnrolError> {
        self.authorities.issue_device_cert(device, model, csr_pem, self.settings.device_cert_validity, now).map_err(
            |e| match e {
                ca::IssueError::Csr(c) => EnrolError::Csr(c),
                other => internal(other),
            },
        )
    }
}

fn response(device: &DeviceId, issued: ca::IssuedCert) -> CertificateResponse {
    let lifetime = issued.not_after_ms - issued.not_before_ms;
    CertificateResponse {
        device_id: device.clone(),
        certificate_chain_pem: issued.chain_pem,
        not_after_ms: issued.not_after_ms as u64,
        renew_after_ms: (issued.not_before_ms + lifetime * 2 / 3) as u64,
    }
}

fn internal(e: impl std::fmt::Display) -> EnrolError {
    EnrolError::Internal(e.to_string())
}
