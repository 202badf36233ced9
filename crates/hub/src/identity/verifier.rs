//! The hub's client-certificate verifier: webpki's chain validation against the device CA, then Hearth's own
//! checks, so a revoked device is refused inside the TLS handshake, before it can send a single MQTT byte.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use hearth_proto::DeviceId;

/// The set of revoked device ids, shared by the verifiers and the revocation API.
#[derive(Debug, Default)]
pub struct Revocations {
    ids: RwLock<HashSet<String>>,
}

impl Revocations {
    /// A set holding `ids`.
    pub fn new(ids: impl IntoIterator<Item = String>) -> Self {
        Revocations { ids: RwLock::new(ids.into_iter().collect()) }
    }

    /// Adds a device.
    pub fn revoke(&self, id: &DeviceId) {
        self.ids.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id.as_str().to_owned());
    }

    /// Whether a device is revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.ids.read().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(id)
    }
}

/// Verifies device certificates: chain to the device CA (webpki), client-auth usage, validity, a parseable
/// device id as subject, and not revoked.
#[derive(Debug)]
pub struct DeviceCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<Revocations>,
    mandatory: bool,
}

impl DeviceCertVerifier {
    /// A verifier trusting only `device_ca`. With `mandatory = false` (the HTTPS listener) a client may connect
    /// without a certificate; one that presents a certificate must still pass every check.
    pub fn new(
        device_ca: CertificateDer<'static>,
        revocations: Arc<Revocations>,
        mandatory: bool,
    ) -> Result<Arc<Self>, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(device_ca)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let builder = if mandatory { builder } else { builder.allow_unauthenticated() };
        let inner = builder.build().map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Arc::new(DeviceCertVerifier { inner, revocations, mandatory }))
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
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let id = device_id_of(end_entity).ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.revocations.is_revoked(id.as_str()) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
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

/// The device id a certificate names (its subject common name), if it is a valid id.
pub fn device_id_of(cert: &CertificateDer<'_>) -> Option<DeviceId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    DeviceId::parse(cn).ok()
}
