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

use crate::clock::Clock;
use crate::secrets::{MasterKey, SecretString, random_base32, random_token};
use crate::store::{CertRecord, EnrolOutcome, NewDevice, Store, TokenState};
pub use ca::{Authorities, CsrError};
pub use verifier::{CertFacts, CertRefusal, DeviceCertVerifier, DeviceCerts, Serials, cert_facts};

/// Shortest time between two renewals of a device's current certificate (a retry after a lost answer, with the
/// previous certificate, is not limited: it changes nothing).
pub const MIN_RENEWAL_GAP: std::time::Duration = std::time::Duration::from_secs(600);

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
    /// The presented certificate was replaced by a newer one, or the key in the CSR is not the one certified.
    #[error("this certificate has been superseded by a newer one of this device")]
    Superseded,
    /// The device renewed its current certificate moments ago.
    #[error("this device renewed its certificate less than {0} s ago; use the certificate it got")]
    RenewedRecently(u64),
    /// The certificate expired longer ago than the renewal grace period allows.
    #[error("this certificate expired too long ago to renew; ask the operator to re-issue a bootstrap token")]
    Expired,
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
    /// How long after its certificate expired a device may still renew (over HTTPS, renewal only); zero
    /// disables it, and such a device needs an operator to re-issue its bootstrap token.
    pub expired_renewal_grace: Duration,
}

/// The certificate a device authenticated an HTTPS request with.
#[derive(Debug, Clone)]
pub struct PresentedCert {
    /// What the certificate says.
    pub facts: CertFacts,
}

/// A new bootstrap token for an existing device (shown once).
#[derive(Debug)]
pub struct ReissuedBootstrap {
    /// Device id.
    pub id: DeviceId,
    /// Model.
    pub model: ModelId,
    /// The new single-use enrolment token.
    pub bootstrap_token: SecretString,
    /// When it stops working, Unix ms.
    pub expires_at_ms: i64,
}

/// The identity capability.
#[derive(Debug, Clone)]
pub struct Identity {
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// When each device last renewed its current certificate (monotonic), to refuse a renewal loop.
    last_renewal: Arc<std::sync::Mutex<std::collections::HashMap<DeviceId, tokio::time::Instant>>>,
    lock_hasher: std::collections::hash_map::RandomState,
    store: Store,
    master: Arc<MasterKey>,
    authorities: Arc<Authorities>,
    certs: Arc<DeviceCerts>,
    changed_tx: broadcast::Sender<DeviceId>,
    bus: crate::bus::Bus,
    settings: IdentitySettings,
    clock: Clock,
}

impl Identity {
    /// Builds the capability; revoked ids and accepted certificate serials are loaded from the store.
    pub async fn new(
        store: Store,
        master: Arc<MasterKey>,
        authorities: Arc<Authorities>,
        settings: IdentitySettings,
        clock: Clock,
        bus: crate::bus::Bus,
    ) -> Result<Identity, crate::store::StoreError> {
        let serials = store
            .cert_serials()
            .await?
            .into_iter()
            .map(|r| (r.device_id, Serials { current: r.current, prev: r.prev, used: r.used }));
        let revoked = store.revoked_device_ids().await?.into_iter().map(|d| d.as_str().to_owned());
        let certs = Arc::new(DeviceCerts::new(revoked, serials));
        let (changed_tx, _) = broadcast::channel(256);
        let locks = Arc::new((0..64).map(|_| tokio::sync::Mutex::new(())).collect());
        Ok(Identity {
            locks,
            last_renewal: Arc::default(),
            lock_hasher: std::collections::hash_map::RandomState::new(),
            store,
            master,
            authorities,
            certs,
            changed_tx,
            bus,
            settings,
            clock,
        })
    }

    /// Reloads one device's revocation and accepted serials from the store (another node changed them), and
    /// tells this node's sessions of the device to re-check.
    pub async fn reload_device(&self, device: &DeviceId) -> Result<(), crate::store::StoreError> {
        {
            let _guard = self.lock(device).await;
            let revoked = self
                .store
                .device(device.as_str())
                .await?
                .is_some_and(|d| d.status == crate::store::DeviceStatus::Revoked);
            if revoked {
                self.certs.revoke(device);
            }
            self.reload_serials(device).await?;
        }
        let _ = self.changed_tx.send(device.clone());
        Ok(())
    }

    /// Reloads the whole certificate view from the store (after missed bus notices).
    pub async fn reload_all(&self) -> Result<(), crate::store::StoreError> {
        let serials = self.store.cert_serials().await?;
        let revoked = self.store.revoked_device_ids().await?;
        self.certs.replace_all(
            revoked.iter().map(|d| d.as_str().to_owned()),
            serials.into_iter().map(|r| (r.device_id, Serials { current: r.current, prev: r.prev, used: r.used })),
        );
        // Every session re-checks (a lagged receiver decides from the authoritative view).
        for d in revoked {
            let _ = self.changed_tx.send(d);
        }
        Ok(())
    }

    /// Re-reads revocations from the store every `every` (the backstop beside the bus: a revocation whose
    /// notice was lost still reaches this node's verifier and sessions).
    pub fn spawn_revocation_sweep(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut since = this.clock.now_ms();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut passes = 0u64;
            loop {
                tick.tick().await;
                passes += 1;
                // Every 60th pass (30 min by default) re-read the whole view: revocations whose times came from
                // a clock far behind this one, and serial changes whose notices were lost.
                if passes.is_multiple_of(60) {
                    if let Err(e) = this.reload_all().await {
                        tracing::warn!(error = %e, "full certificate re-read failed; will retry");
                    }
                    continue;
                }
                // Overlap by ten minutes: revocation times come from other nodes' clocks.
                let now = this.clock.now_ms();
                match this.store.revoked_since(since.saturating_sub(600_000)).await {
                    Ok(ids) => {
                        since = now;
                        for id in ids.into_iter().filter(|d| !this.certs.is_revoked(d.as_str())) {
                            tracing::warn!(device = %id, "revocation found in the store without a bus notice");
                            this.certs.revoke(&id);
                            let _ = this.changed_tx.send(id);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "revocation sweep failed; will retry"),
                }
            }
        })
    }

    /// Re-reads devices whose certificate this node refused as unknown or superseded (another node may have
    /// enrolled or renewed them a moment ago), at most once per device per second, so the device's next
    /// attempt succeeds even if the bus notice is late or lost. Bounded: 1,024 reports queue at most.
    pub fn spawn_miss_reloads(&self) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
        self.certs.report_misses_to(tx);
        let this = self.clone();
        tokio::spawn(async move {
            let mut recent: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
            while let Some(id) = rx.recv().await {
                let now = tokio::time::Instant::now();
                recent.retain(|_, t| now.duration_since(*t) < std::time::Duration::from_secs(1));
                if recent.contains_key(&id) || recent.len() >= 4096 {
                    continue;
                }
                recent.insert(id.clone(), now);
                let Ok(device) = DeviceId::parse(&id) else { continue };
                if let Err(e) = this.reload_device(&device).await {
                    tracing::warn!(error = %e, device = %device, "could not re-read a refused device");
                }
            }
        })
    }

    /// Tells this node's sessions of `device` to re-check their certificate, and every other node to reload it.
    async fn changed(&self, device: &DeviceId) {
        let _ = self.changed_tx.send(device.clone());
        // In the background: a connect or an API answer never waits for the bus.
        let (bus, device) = (self.bus.clone(), device.clone());
        tokio::spawn(async move {
            if let Err(e) = bus.publish(crate::bus::Notice::CertsChanged { device: device.clone() }).await {
                // The store holds the change; other nodes pick up revocations by their sweep.
                tracing::error!(error = %e, device = %device, "could not tell other nodes of a certificate change");
            }
        });
    }

    /// The same capability with other settings (for example a batch of devices with a shorter enrolment
    /// window); the certificate view stays shared.
    pub fn with_settings(&self, settings: IdentitySettings) -> Identity {
        Identity { settings, ..self.clone() }
    }

    /// The hub's clock (also the TLS handshake's time source).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The settings.
    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// The shared view of revocations and accepted serials (for the TLS verifiers and sessions).
    pub fn certs(&self) -> Arc<DeviceCerts> {
        self.certs.clone()
    }

    /// The authorities.
    pub fn authorities(&self) -> &Arc<Authorities> {
        &self.authorities
    }

    /// What both listeners serve as their certificate (renewed in place).
    pub fn server_cert_resolver(&self) -> Arc<ca::ServerCertResolver> {
        self.authorities.server.clone()
    }

    /// Renews the server certificate when fewer than 30 days remain, checking every `every` while the hub runs.
    pub fn spawn_server_cert_refresh(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match this.refresh_server_cert().await {
                    Ok(true) => tracing::info!("server certificate renewed"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "could not renew the server certificate; will retry"),
                }
            }
        })
    }

    /// Renews the server certificate now if fewer than 30 days remain. True if the served certificate changed.
    pub async fn refresh_server_cert(&self) -> Result<bool, ca::CaError> {
        self.authorities.refresh_server_cert(&self.store, &self.master, self.clock.now()).await
    }

    /// Subscribes to certificate changes (revocation, re-enrolment, first use of a renewed certificate): a
    /// live session of that device re-checks its own certificate and closes if it is no longer accepted.
    pub fn on_cert_change(&self) -> broadcast::Receiver<DeviceId> {
        self.changed_tx.subscribe()
    }

    /// Creates `count` device records of `model`: random ids, random bootstrap tokens and claim codes.
    pub async fn manufacture(&self, model: &ModelId, count: usize) -> Result<Vec<ManufacturedDevice>, EnrolError> {
        let now = self.clock.now();
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

    /// Enrolment: checks the token and the CSR, then consumes the token and records the certificate atomically.
    ///
    /// A device whose enrol answer was lost retries with the same token and the same key and gets the *same*
    /// certificate again: nothing changes, so replaying a captured request can neither lock the device out nor
    /// give anyone a certificate for another key. A different key with a spent token is refused.
    pub async fn enrol(&self, req: &EnrolRequest) -> Result<CertificateResponse, EnrolError> {
        let now = self.clock.now();
        let now_ms = ca::unix_ms(now);
        let id = &req.device_id;
        let mac = self.master.token_mac(BOOTSTRAP, &req.bootstrap_token);
        // Authenticate before doing any work for the caller (CSR verification, signing). An unknown device and
        // a wrong token get the same answer: nothing is disclosed before authentication.
        let state = self.store.bootstrap_token_state(id.as_str(), &mac, now_ms).await.map_err(internal)?;
        match state {
            TokenState::Usable | TokenState::Used => {}
            TokenState::Invalid => return Err(EnrolError::InvalidToken),
            TokenState::Expired => return Err(EnrolError::TokenExpired),
            TokenState::Revoked => return Err(EnrolError::Revoked),
        }
        let _guard = self.lock(id).await;
        if state == TokenState::Used {
            return self.same_certificate_again(id, &req.csr_pem, EnrolError::TokenUsed).await;
        }
        let device = self.store.device(id.as_str()).await.map_err(internal)?.ok_or(EnrolError::InvalidToken)?;
        // The token is consumed only together with a certificate: a bad CSR leaves it usable.
        let issued = self.issue(id, &device.model, &req.csr_pem, now)?;
        let record = CertRecord {
            serial: &issued.serial_hex,
            not_after: issued.not_after_ms,
            spki: &issued.spki_sha256,
            chain: &issued.chain_pem,
        };
        match self.store.enrol(id.as_str(), &mac, now_ms, &record).await.map_err(internal)? {
            EnrolOutcome::Enrolled => {
                self.reload_serials(id).await.map_err(internal)?;
                // A re-enrolment replaces the identity: any live session on an older certificate closes.
                self.changed(id).await;
                Ok(response(id, issued))
            }
            // Lost a race with a concurrent request with this token: the same key gets that certificate.
            EnrolOutcome::Used => self.same_certificate_again(id, &req.csr_pem, EnrolError::TokenUsed).await,
            EnrolOutcome::Invalid => Err(EnrolError::InvalidToken),
            EnrolOutcome::Expired => Err(EnrolError::TokenExpired),
            EnrolOutcome::Revoked => Err(EnrolError::Revoked),
        }
    }

    /// Renewal for a device authenticated by its certificate (mutual TLS). With the current certificate, the
    /// new one becomes current and the presented one stays accepted until the new one is first used. With that
    /// previous certificate (the answer of a renewal was lost), the device gets the current certificate again,
    /// and only for the key it certifies: a copy of a superseded certificate can never renew itself onto a key
    /// of its own, and a replay changes nothing.
    pub async fn renew(&self, presented: &PresentedCert, csr_pem: &str) -> Result<CertificateResponse, EnrolError> {
        let now = self.clock.now();
        let device = &presented.facts.device;
        let _guard = self.lock(device).await;
        match self.certs.check(device.as_str(), &presented.facts.serial) {
            Ok(()) => {}
            Err(CertRefusal::Revoked) => return Err(EnrolError::Revoked),
            Err(CertRefusal::NotEnrolled) => return Err(EnrolError::NotEnrolled),
            Err(CertRefusal::Superseded) => return Err(EnrolError::Superseded),
        }
        if presented.facts.not_after_ms < ca::unix_ms(now) {
            let expired_for = ca::unix_ms(now) - presented.facts.not_after_ms;
            if expired_for > self.settings.expired_renewal_grace.whole_milliseconds() as i64 {
                return Err(EnrolError::Expired);
            }
        }
        let is_current = self.certs.serials(device.as_str()).is_some_and(|s| s.current == presented.facts.serial);
        if !is_current {
            return self.same_certificate_again(device, csr_pem, EnrolError::Superseded).await;
        }
        // One renewal of the current certificate per device and MIN_RENEWAL_GAP: a device (or a stolen
        // certificate) looping renew-and-reconnect costs a signature, a write and a notice to every session each time.
        {
            let mut last = self.last_renewal.lock().unwrap_or_else(|p| p.into_inner());
            let now_mono = tokio::time::Instant::now();
            if last.get(device).is_some_and(|t| now_mono.duration_since(*t) < MIN_RENEWAL_GAP) {
                return Err(EnrolError::RenewedRecently(MIN_RENEWAL_GAP.as_secs()));
            }
            if last.len() > 100_000 {
                last.retain(|_, t| now_mono.duration_since(*t) < MIN_RENEWAL_GAP);
            }
            last.insert(device.clone(), now_mono);
        }
        let row = self.store.device(device.as_str()).await.map_err(internal)?.ok_or(EnrolError::NotEnrolled)?;
        let issued = self.issue(device, &row.model, csr_pem, now)?;
        let record = CertRecord {
            serial: &issued.serial_hex,
            not_after: issued.not_after_ms,
            spki: &issued.spki_sha256,
            chain: &issued.chain_pem,
        };
        if !self.store.renew_current(device.as_str(), &presented.facts.serial, &record).await.map_err(internal)? {
            return Err(EnrolError::Superseded);
        }
        self.reload_serials(device).await.map_err(internal)?;
        // Other nodes learn the new serial (the device may reconnect anywhere).
        self.changed(device).await;
        Ok(response(device, issued))
    }

    /// The device's current certificate again, if the CSR is for the key it certifies (a retry after a lost
    /// answer); `otherwise` if not.
    async fn same_certificate_again(
        &self,
        device: &DeviceId,
        csr_pem: &str,
        otherwise: EnrolError,
    ) -> Result<CertificateResponse, EnrolError> {
        let key = self.authorities.csr_key_sha256(device, csr_pem)?;
        let current = self.store.current_cert(device.as_str()).await.map_err(internal)?;
        match current {
            Some(c) if c.status == crate::store::DeviceStatus::Enrolled && c.spki.as_deref() == Some(key.as_str()) => {
                let chain = c.chain_pem.ok_or(otherwise)?;
                response_from_chain(device, &chain).ok_or_else(|| internal("a stored certificate does not parse"))
            }
            _ => Err(otherwise),
        }
    }

    /// Notes that a device connected with the certificate of `serial`. The first use of a renewed certificate
    /// ends the previous one (recorded first, then in memory, and any session still on it is closed).
    pub async fn cert_used(&self, device: &DeviceId, serial: &str) -> Result<(), crate::store::StoreError> {
        if !self.certs.is_first_use(device.as_str(), serial) {
            return Ok(());
        }
        let _guard = self.lock(device).await;
        self.store.mark_cert_used(device.as_str(), serial, self.clock.now_ms()).await?;
        self.reload_serials(device).await?;
        drop(_guard);
        self.changed(device).await;
        Ok(())
    }

    /// Gives the device whose label carries `code` to `account_id`, if it is unclaimed and not revoked; the
    /// device id, or `None` (unknown code or already claimed: the same answer). Callers throttle attempts.
    pub async fn claim(&self, code: &str, account_id: &str) -> Result<Option<String>, crate::store::StoreError> {
        // As printed on the label: 20 characters of base32 in upper case; people type spaces, dashes, lower case.
        let code: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_uppercase();
        if code.len() != 20 {
            return Ok(None);
        }
        self.store.claim_device(&self.master.token_mac(CLAIM, &code), account_id, self.clock.now_ms()).await
    }

    /// Issues a new single-use bootstrap token for a device that is not revoked (its key was lost, or it was
    /// offline past its certificate's lifetime and grace). The device's current certificate keeps working until
    /// it enrols again; then only the new one does.
    pub async fn reissue_bootstrap(&self, device: &DeviceId) -> Result<ReissuedBootstrap, EnrolError> {
        let _guard = self.lock(device).await;
        let row = self.store.device(device.as_str()).await.map_err(internal)?.ok_or(EnrolError::InvalidToken)?;
        if self.certs.is_revoked(device.as_str()) {
            return Err(EnrolError::Revoked);
        }
        let model = ModelId::parse(&row.model).map_err(internal)?;
        let token = random_token("hbt_", 32).map_err(internal)?;
        let expires = ca::unix_ms(self.clock.now() + self.settings.bootstrap_validity);
        let mac = self.master.token_mac(BOOTSTRAP, token.expose());
        if !self.store.reissue_bootstrap(device.as_str(), &mac, expires).await.map_err(internal)? {
            return Err(EnrolError::Revoked);
        }
        tracing::info!(device = %device, "bootstrap token re-issued");
        Ok(ReissuedBootstrap { id: device.clone(), model, bootstrap_token: token, expires_at_ms: expires })
    }

    /// Revokes a device: recorded, refused at every later handshake, and its live session closed.
    /// Returns false if there is no such device.
    pub async fn revoke(&self, device: &DeviceId) -> Result<bool, crate::store::StoreError> {
        let _guard = self.lock(device).await;
        if !self.store.revoke(device.as_str(), self.clock.now_ms()).await? {
            return Ok(false);
        }
        self.certs.revoke(device);
        drop(_guard);
        // This node's sessions and every other node's (whose verifiers refuse the device from then on).
        self.changed(device).await;
        tracing::info!(device = %device, "device revoked");
        Ok(true)
    }

    /// Serialises every change to one device's certificates (enrol, renew, first use, re-issue, revoke), so the
    /// store and the in-memory view change in the same order.
    async fn lock(&self, device: &DeviceId) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher as _;
        let slot = self.lock_hasher.hash_one(device.as_str()) as usize % self.locks.len();
        self.locks[slot].lock().await
    }

    /// Sets the in-memory view of a device's accepted serials from the store (the record).
    async fn reload_serials(&self, device: &DeviceId) -> Result<(), crate::store::StoreError> {
        match self.store.cert_serials_of(device.as_str()).await? {
            Some(r) => self.certs.set_serials(device, Serials { current: r.current, prev: r.prev, used: r.used }),
            None => self.certs.forget_serials(device),
        }
        Ok(())
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

/// The answer for a stored certificate chain (leaf first).
fn response_from_chain(device: &DeviceId, chain_pem: &str) -> Option<CertificateResponse> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes()).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    let not_before = cert.validity().not_before.timestamp() * 1000;
    let not_after = cert.validity().not_after.timestamp() * 1000;
    Some(CertificateResponse {
        device_id: device.clone(),
        certificate_chain_pem: chain_pem.to_owned(),
        not_after_ms: u64::try_from(not_after).ok()?,
        renew_after_ms: u64::try_from(not_before + (not_after - not_before) * 2 / 3).ok()?,
    })
}

fn internal(e: impl std::fmt::Display) -> EnrolError {
    EnrolError::Internal(e.to_string())
}
