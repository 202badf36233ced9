//! The hub's certificate authorities and its server certificate.
//!
//! Two CAs, each with an ECDSA P-256 key sealed under the master key and kept in the store (so every hub node
//! shares them): the **device CA** signs device certificates (client authentication only) and is the only trust
//! anchor for device connections; the **server CA** signs the hub's TLS server certificate and is what devices
//! and operators trust for the hub. Keeping them apart means a device certificate can never pass as the server,
//! and rotating the server certificate never touches device identities.

use std::sync::Arc;

use rcgen::PublicKeyData as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::secrets::MasterKey;
use crate::store::Store;
use hearth_proto::DeviceId;

/// Errors creating or using the authorities.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A sealed key could not be opened.
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// A stored certificate or key does not parse.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
}

/// Why a CSR was refused. The message is safe to send back to the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// Not a PEM CSR, or its signature does not verify.
    #[error("the CSR does not parse or its signature does not verify")]
    Invalid,
    /// The CSR names a different device.
    #[error("the CSR subject names {found:?}, not this device")]
    SubjectMismatch {
        /// The common name found.
        found: String,
    },
    /// The key type is not accepted.
    #[error("key algorithm not accepted; use ECDSA P-256, ECDSA P-384 or Ed25519")]
    Algorithm,
}

/// A certificate issued to a device.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf then device CA, PEM.
    pub chain_pem: String,
    /// Serial, hex.
    pub serial_hex: String,
    /// SHA-256 of the certified public key (SubjectPublicKeyInfo), hex.
    pub spki_sha256: String,
    /// Start of validity, Unix ms.
    pub not_before_ms: i64,
    /// End of validity, Unix ms.
    pub not_after_ms: i64,
}

/// The TLS server identity (certificate chain and key) for both listeners.
#[derive(Clone)]
pub struct ServerIdentity {
    /// Server certificate then server CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server key (PKCS#8 DER).
    pub key: Arc<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").field("chain_len", &self.chain.len()).field("key", &"<redacted>").finish()
    }
}

impl ServerIdentity {
    /// The key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.as_slice().to_vec()))
    }
}

/// The loaded authorities.
pub struct Authorities {
    device_issuer: Issuer<'static, KeyPair>,
    server_issuer: Issuer<'static, KeyPair>,
    /// Device CA certificate, PEM.
    pub device_ca_pem: String,
    /// Device CA certificate, DER.
    pub device_ca_der: CertificateDer<'static>,
    /// Server CA certificate, PEM (what clients of the hub trust).
    pub server_ca_pem: String,
    /// The hub's server identity, replaced in place when it is renewed (new handshakes use the new one).
    pub server: Arc<ServerCertResolver>,
    hostnames: Vec<String>,
}

/// Hands rustls the hub's current server certificate, so a renewal takes effect without a restart (before, a
/// hub running for a year served an expired certificate).
#[derive(Debug)]
pub struct ServerCertResolver {
    current: std::sync::RwLock<(Arc<rustls::sign::CertifiedKey>, i64)>,
}

impl ServerCertResolver {
    fn new(identity: &ServerIdentity) -> Result<ServerCertResolver, CaError> {
        Ok(ServerCertResolver { current: std::sync::RwLock::new(Self::certified(identity)?) })
    }

    fn certified(identity: &ServerIdentity) -> Result<(Arc<rustls::sign::CertifiedKey>, i64), CaError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = provider
            .key_provider
            .load_private_key(identity.private_key())
            .map_err(|_| CaError::Corrupt("server key"))?;
        let not_after = x509_parser::parse_x509_certificate(&identity.chain[0])
            .map(|(_, c)| c.validity().not_after.timestamp() * 1000)
            .map_err(|_| CaError::Corrupt("server certificate"))?;
        Ok((Arc::new(rustls::sign::CertifiedKey::new(identity.chain.clone(), key)), not_after))
    }

    /// End of validity of the certificate served now, Unix ms.
    pub fn not_after_ms(&self) -> i64 {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1
    }

    fn replace(&self, identity: &ServerIdentity) -> Result<(), CaError> {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Self::certified(identity)?;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone())
    }
}

impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorities").finish_non_exhaustive()
    }
}

const DEVICE_CA: &str = "device-ca";
const SERVER_CA: &str = "server-ca";
const SERVER_CERT: &str = "server";

impl Authorities {
    /// Loads the authorities from the store, creating any that are missing, and (re)issues the server
    /// certificate when its names changed or it expires within 30 days.
    pub async fn load_or_create(
        store: &Store,
        master: &MasterKey,
        hostnames: &[String],
        now: OffsetDateTime,
    ) -> Result<Authorities, CaError> {
        let (device_ca_pem, device_key) = load_or_create_ca(store, master, DEVICE_CA, "Hearth device CA", now).await?;
        let (server_ca_pem, server_ca_key) =
            load_or_create_ca(store, master, SERVER_CA, "Hearth server CA", now).await?;
        let device_issuer = Issuer::from_ca_cert_pem(&device_ca_pem, device_key)?;
        let server_issuer = Issuer::from_ca_cert_pem(&server_ca_pem, server_ca_key)?;

        let server = match store.key(SERVER_CERT).await? {
            Some((pem, sealed)) if server_cert_fits(&pem, hostnames, now) => {
                let key = master.unseal(SERVER_CERT, &sealed)?;
                ServerIdentity { chain: vec![pem_to_der(&pem)?, pem_to_der(&server_ca_pem)?], key: Arc::new(key) }
            }
            _ => {
                let (cert, key) = server_cert(&server_issuer, "Hearth hub", hostnames, Duration::days(397), now)?;
                let key_der = Zeroizing::new(key.serialize_der());
                let sealed = master.seal(SERVER_CERT, &key_der)?;
                store.replace_key(SERVER_CERT, &cert.pem(), &sealed, unix_ms(now)).await?;
                ServerIdentity { chain: vec![cert.der().clone(), pem_to_der(&server_ca_pem)?], key: Arc::new(key_der) }
            }
        };
        let device_ca_der = pem_to_der(&device_ca_pem)?;
        let server = Arc::new(ServerCertResolver::new(&server)?);
        Ok(Authorities {
            device_issuer,
            server_issuer,
            device_ca_pem,
            device_ca_der,
            server_ca_pem,
            server,
            hostnames: hostnames.to_vec(),
        })
    }

    /// Renews the server certificate when it expires within 30 days (or another node renewed it): stores the
    /// new one and serves it from the next handshake on. Returns true if the certificate served changed.
    pub async fn refresh_server_cert(
        &self,
        store: &Store,
        master: &MasterKey,
        now: OffsetDateTime,
    ) -> Result<bool, CaError> {
        let stored = store.key(SERVER_CERT).await?;
        let identity = match stored {
            Some((pem, sealed)) if server_cert_fits(&pem, &self.hostnames, now) => {
                let der = pem_to_der(&pem)?;
                if x509_parser::parse_x509_certificate(&der).map(|(_, c)| c.validity().not_after.timestamp() * 1000)
                    == Ok(self.server.not_after_ms())
                {
                    return Ok(false);
                }
                let key = master.unseal(SERVER_CERT, &sealed)?;
                ServerIdentity { chain: vec![der, pem_to_der(&self.server_ca_pem)?], key: Arc::new(key) }
            }
            _ => {
                let (cert, key) =
                    server_cert(&self.server_issuer, "Hearth hub", &self.hostnames, Duration::days(397), now)?;
                let key_der = Zeroizing::new(key.serialize_der());
                let sealed = master.seal(SERVER_CERT, &key_der)?;
                store.replace_key(SERVER_CERT, &cert.pem(), &sealed, unix_ms(now)).await?;
                ServerIdentity {
                    chain: vec![cert.der().clone(), pem_to_der(&self.server_ca_pem)?],
                    key: Arc::new(key_der),
                }
            }
        };
        self.server.replace(&identity)?;
        Ok(true)
    }

    /// Issues a fresh server certificate and key (PEM) for `hostnames`, signed by the server CA: for another
    /// TLS endpoint that devices must trust the same way, such as the benchmark's Mosquitto peer.
    pub fn issue_server_cert(
        &self,
        hostnames: &[String],
        now: OffsetDateTime,
    ) -> Result<(String, Zeroizing<String>), CaError> {
        let (cert, key) = server_cert(&self.server_issuer, "Hearth peer", hostnames, Duration::days(30), now)?;
        Ok((format!("{}{}", cert.pem(), self.server_ca_pem), Zeroizing::new(key.serialize_pem())))
    }

    /// SHA-256 (hex) of the public key in `csr_pem`, after the same checks as issuing (signature, subject,
    /// algorithm): to recognise a retry for a key the hub already certified without signing anything.
    pub fn csr_key_sha256(&self, device: &DeviceId, csr_pem: &str) -> Result<String, CsrError> {
        let csr = parse_csr(device, csr_pem)?;
        Ok(hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &csr.public_key.subject_public_key_info()).as_ref()
        ))
    }

    /// Issues a device certificate for the key in `csr_pem`. The subject is set by the hub (CN = device id,
    /// OU = model); the CSR contributes only its public key, after its signature and subject are checked.
    pub fn issue_device_cert(
        &self,
        device: &DeviceId,
        model: &str,
        csr_pem: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, IssueError> {
        let csr = parse_csr(device, csr_pem)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, device.as_str());
        name.push(DnType::OrganizationalUnitName, model);
        params.distinguished_name = name;
        let not_before = now - Duration::minutes(5);
        let not_after = now + validity;
        params.not_before = not_before;
        params.not_after = not_after;
        let serial = random_serial()?;
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.device_issuer)?;
        let spki_sha256 =
            hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &csr.public_key.subject_public_key_info())
                .as_ref());
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.device_ca_pem),
            serial_hex,
            spki_sha256,
            not_before_ms: unix_ms(not_before),
            not_after_ms: unix_ms(not_after),
        })
    }
}

/// Why issuing a device certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR was refused (the device's fault).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Signing failed (the hub's fault).
    #[error(transparent)]
    Rcgen(#[from] rcgen::Error),
    /// No randomness for the serial number (the hub's fault).
    #[error(transparent)]
    Random(#[from] crate::secrets::SecretError),
}

/// Parses a CSR (its signature is verified) and checks what the hub requires of it: a subject naming `device`
/// (or none) and an accepted key algorithm.
fn parse_csr(device: &DeviceId, csr_pem: &str) -> Result<CertificateSigningRequestParams, CsrError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| CsrError::Invalid)?;
    if let Some(cn) = csr.params.distinguished_name.get(&DnType::CommonName) {
        let found = dn_value_text(cn).unwrap_or_else(|| "<not a text value>".into());
        if found != device.as_str() {
            return Err(CsrError::SubjectMismatch { found });
        }
    }
    let alg = csr.public_key.algorithm();
    let accepted = [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519];
    if !accepted.contains(&alg) {
        return Err(CsrError::Algorithm);
    }
    Ok(csr)
}

fn dn_value_text(v: &rcgen::DnValue) -> Option<String> {
    match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A TLS server certificate (server authentication only) for `hostnames`, signed by `issuer`.
fn server_cert(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    hostnames: &[String],
    validity: Duration,
    now: OffsetDateTime,
) -> Result<(rcgen::Certificate, KeyPair), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name);
    params.subject_alt_names = hostnames.iter().map(|h| san(h)).collect::<Result<_, _>>()?;
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + validity;
    params.serial_number = Some(random_serial()?);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

async fn load_or_create_ca(
    store: &Store,
    master: &MasterKey,
    name: &'static str,
    common_name: &str,
    now: OffsetDateTime,
) -> Result<(String, KeyPair), CaError> {
    if store.key(name).await?.is_none() {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(365 * 20);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let sealed = master.seal(name, &Zeroizing::new(key.serialize_der()))?;
        store.insert_key(name, &cert.pem(), &sealed, unix_ms(now)).await?;
    }
    // Read back: if another node won the race, its CA is the one everybody uses.
    let (pem, sealed) = store.key(name).await?.ok_or(CaError::Corrupt(name))?;
    let der = master.unseal(name, &sealed)?;
    let key = KeyPair::try_from(der.as_slice()).map_err(|_| CaError::Corrupt(name))?;
    Ok((pem, key))
}

fn server_cert_fits(pem: &str, hostnames: &[String], now: OffsetDateTime) -> bool {
    let Ok(der) = pem_to_der(pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let not_after = cert.validity().not_after.timestamp();
    if not_after < (now + Duration::days(30)).unix_timestamp() {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let mut present: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let mut wanted: Vec<String> = hostnames.to_vec();
    present.sort();
    wanted.sort();
    present == wanted
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn san(host: &str) -> Result<SanType, rcgen::Error> {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(host.try_into()?)),
    }
}

fn random_serial() -> Result<SerialNumber, crate::secrets::SecretError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| crate::secrets::SecretError::Random)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte, so the encoding is stable
    Ok(SerialNumber::from_slice(&bytes))
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, CaError> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| CaError::Corrupt("certificate"))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}
