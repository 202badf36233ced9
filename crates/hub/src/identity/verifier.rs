//! The hub's client-certificate verifier: webpki's chain validation against the device CA, then Hearth's own
//! checks, so a revoked device or a superseded certificate is refused inside the TLS handshake, before it can
//! send a single MQTT byte.
//!
//! A device id alone is not enough: each enrolled device has one *current* certificate serial, plus the
//! *previous* one for as long as the renewed certificate has not been used (the device may not have received
//! it yet). Any other certificate of the device, however valid its signature and dates, is refused. Before,
//! only the id was checked, so a certificate replaced by a renewal with a new key kept working, and renewed
//! itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};

use hearth_proto::DeviceId;

/// Which certificate serials of a device are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serials {
    /// The newest certificate issued.
    pub current: String,
    /// The one it replaced, accepted until `current` is first used.
    pub prev: Option<String>,
    /// Whether `current` has been used to connect.
    pub used: bool,
}

/// The hub's in-memory view of device certificates, shared by the verifiers, sessions and the identity
/// capability: revoked device ids and each device's accepted serials. The store is the record; this is
/// loaded from it at start and updated together with it.
#[derive(Debug, Default)]
pub struct DeviceCerts {
    revoked: RwLock<HashSet<String>>,
    serials: RwLock<HashMap<String, Serials>>,
    /// Where a refusal for an unknown serial is reported, so the identity capability re-reads the device
    /// from the store (another node may have just enrolled or renewed it, its notice still on the way).
    misses: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
}

/// Why a device certificate is refused after its chain checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    /// The device is revoked.
    #[error("device revoked")]
    Revoked,
    /// A newer certificate of this device is in use (or the device was re-enrolled).
    #[error("certificate superseded by a newer one of this device")]
    Superseded,
    /// The hub issued no certificate to this device through enrolment.
    #[error("device not enrolled")]
    NotEnrolled,
}

impl DeviceCerts {
    /// A view holding `revoked` ids and `serials` per device id.
    pub fn new(
        revoked: impl IntoIterator<Item = String>,
        serials: impl IntoIterator<Item = (String, Serials)>,
    ) -> Self {
        DeviceCerts {
            revoked: RwLock::new(revoked.into_iter().collect()),
            serials: RwLock::new(serials.into_iter().collect()),
            misses: std::sync::OnceLock::new(),
        }
    }

    /// Reports refusals for unknown or superseded serials to `tx` (bounded: when it is full, a report is
    /// dropped; the device's next attempt reports again).
    pub fn report_misses_to(&self, tx: tokio::sync::mpsc::Sender<String>) {
        let _ = self.misses.set(tx);
    }

    /// Replaces the whole view (after missed notices).
    pub fn replace_all(
        &self,
        revoked: impl IntoIterator<Item = String>,
        serials: impl IntoIterator<Item = (String, Serials)>,
    ) {
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked.into_iter().collect();
        *self.serials.write().unwrap_or_else(|p| p.into_inner()) = serials.into_iter().collect();
    }

    /// Adds a device to the revoked set.
    pub fn revoke(&self, id: &DeviceId) {
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).insert(id.as_str().to_owned());
    }

    /// Whether a device is revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    /// Sets the accepted serials of a device (after enrolment or renewal).
    pub fn set_serials(&self, id: &DeviceId, serials: Serials) {
        self.serials.write().unwrap_or_else(|p| p.into_inner()).insert(id.as_str().to_owned(), serials);
    }

    /// Forgets a device's serials (it has no certificate any more).
    pub fn forget_serials(&self, id: &DeviceId) {
        self.serials.write().unwrap_or_else(|p| p.into_inner()).remove(id.as_str());
    }

    /// The accepted serials of a device.
    pub fn serials(&self, id: &str) -> Option<Serials> {
        self.serials.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Whether a connection with `serial` is the first use of `id`'s current certificate (so the previous one must
    /// now stop working). Cheap: called on every CONNECT.
    pub fn is_first_use(&self, id: &str, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|s| s.current == serial && (!s.used || s.prev.is_some()))
    }

    /// Whether a certificate of `id` with `serial` may be used now.
    pub fn check(&self, id: &str, serial: &str) -> Result<(), CertRefusal> {
        if self.is_revoked(id) {
            return Err(CertRefusal::Revoked);
        }
        let verdict = match self.serials.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            None => Err(CertRefusal::NotEnrolled),
            Some(s) if s.current == serial || s.prev.as_deref() == Some(serial) => Ok(()),
            Some(_) => Err(CertRefusal::Superseded),
        };
        if verdict.is_err()
            && let Some(tx) = self.misses.get()
        {
            let _ = tx.try_send(id.to_owned());
        }
        verdict
    }
}

/// What the hub reads from a device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The device it names (subject common name).
    pub device: DeviceId,
    /// Its serial, lower-case hex.
    pub serial: String,
    /// End of validity, Unix ms.
    pub not_after_ms: i64,
}

/// Reads the device id, serial and expiry of a certificate, if it names a valid device id.
pub fn cert_facts(cert: &[u8]) -> Option<CertFacts> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(CertFacts {
        device: DeviceId::parse(cn).ok()?,
        serial: super::ca::hex(parsed.raw_serial()),
        not_after_ms: parsed.validity().not_after.timestamp().saturating_mul(1000),
    })
}

/// Verifies device certificates: chain to the device CA (webpki), client-auth usage, validity, a parseable
/// device id as subject, not revoked, and one of the device's accepted serials.
#[derive(Debug)]
pub struct DeviceCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    certs: Arc<DeviceCerts>,
    mandatory: bool,
    expired_grace_secs: u64,
}

impl DeviceCertVerifier {
    /// A verifier trusting only `device_ca`. With `mandatory = false` (the HTTPS listener) a client may connect
    /// without a certificate; one that presents a certificate must still pass every check.
    /// `expired_grace_secs > 0` accepts a certificate expired for at most that long (HTTPS only, where the
    /// handlers let such a connection do nothing but renew).
    pub fn new(
        device_ca: CertificateDer<'static>,
        certs: Arc<DeviceCerts>,
        mandatory: bool,
        expired_grace_secs: u64,
    ) -> Result<Arc<Self>, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(device_ca)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let builder = if mandatory { builder } else { builder.allow_unauthenticated() };
        let inner = builder.build().map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Arc::new(DeviceCertVerifier { inner, certs, mandatory, expired_grace_secs }))
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let facts = cert_facts(end_entity).ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let verified = match self.inner.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) if self.within_grace(&facts, now) => {
                // Everything but the dates must still check out: verify as of the last second it was valid.
                let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    u64::try_from(facts.not_after_ms / 1000 - 1).unwrap_or(0),
                ));
                self.inner.verify_client_cert(end_entity, intermediates, at)?
            }
            other => other?,
        };
        self.certs.check(facts.device.as_str(), &facts.serial).map_err(|refusal| match refusal {
            CertRefusal::Revoked => rustls::Error::InvalidCertificate(CertificateError::Revoked),
            other => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(other)))),
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl DeviceCertVerifier {
    fn within_grace(&self, facts: &CertFacts, now: UnixTime) -> bool {
        let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let expired_for = now_s.saturating_sub(facts.not_after_ms / 1000);
        self.expired_grace_secs > 0 && expired_for >= 0 && expired_for.unsigned_abs() <= self.expired_grace_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn only_current_and_unused_previous_serials_pass() {
        let d = id("abcdefghijklmnop");
        let certs = DeviceCerts::new(
            [],
            [(d.to_string(), Serials { current: "02".into(), prev: Some("01".into()), used: false })],
        );
        assert_eq!(certs.check(d.as_str(), "02"), Ok(()));
        assert_eq!(certs.check(d.as_str(), "01"), Ok(()), "previous serial until the new one is used");
        assert_eq!(certs.check(d.as_str(), "00"), Err(CertRefusal::Superseded));
        assert!(certs.is_first_use(d.as_str(), "02") && !certs.is_first_use(d.as_str(), "01"));
        certs.set_serials(&d, Serials { current: "02".into(), prev: None, used: true });
        assert!(!certs.is_first_use(d.as_str(), "02"), "only the first use counts");
        assert_eq!(certs.check(d.as_str(), "01"), Err(CertRefusal::Superseded), "after the first use of 02");
        assert_eq!(certs.check("unknownunknownun", "02"), Err(CertRefusal::NotEnrolled));
        certs.revoke(&d);
        assert_eq!(certs.check(d.as_str(), "02"), Err(CertRefusal::Revoked));
    }
}
