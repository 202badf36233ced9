//! The device's private key: where it lives, how it is created, and the two things the rest of the agent needs
//! from it (a certificate signing request, and a signing key for TLS client authentication).
//!
//! [`KeyStore`] is a trait so a hardware-backed store (PKCS#11, a TPM) can replace [`FileKeyStore`] without the
//! enrolment or MQTT code knowing: they ask for a CSR and a [`rustls::sign::SigningKey`], never for key bytes.
//! Key material is never logged; `Debug` of the store shows only where it lives.

use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_proto::DeviceId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;
use zeroize::Zeroizing;

use crate::fsutil::write_atomic;

/// File name of the key inside the state directory.
pub const KEY_FILE: &str = "device.key";

/// Why the key store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file exists but does not hold a usable key.
    #[error("key file {path} does not hold a usable private key: {detail}")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// Generating the key or the certificate request failed.
    #[error("could not generate a key or certificate request: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the key.
    #[error("tls refused the device key: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the agent needs from wherever the device key lives.
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// A PKCS#10 certificate signing request (PEM) for this key, with subject common name `device_id`.
    fn certificate_request(&self, device_id: &DeviceId) -> Result<String, KeyStoreError>;

    /// The key as rustls uses it to sign the TLS 1.3 CertificateVerify of a client certificate.
    fn signing_key(&self) -> Result<Arc<dyn SigningKey>, KeyStoreError>;
}

/// A key kept in `{state_dir}/device.key` as PKCS#8 PEM, mode 0600; ECDSA P-256, generated on first use.
pub struct FileKeyStore {
    path: PathBuf,
    key: KeyPair,
}

impl fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKeyStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl FileKeyStore {
    /// Loads the key from `{state_dir}/device.key`, or generates one and stores it there if there is none.
    pub fn open_or_create(state_dir: &Path) -> Result<FileKeyStore, KeyStoreError> {
        let path = state_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let pem = Zeroizing::new(pem);
                let key = KeyPair::from_pem(&pem)
                    .map_err(|e| KeyStoreError::Corrupt { path: path.clone(), detail: e.to_string() })?;
                Ok(FileKeyStore { path, key })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The state directory holds the key: only the agent's user may enter it.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(state_dir)
                    .map_err(|source| KeyStoreError::Io { path: state_dir.to_path_buf(), source })?;
                let key = KeyPair::generate()?;
                let pem = Zeroizing::new(key.serialize_pem());
                write_atomic(&path, pem.as_bytes(), 0o600)
                    .map_err(|source| KeyStoreError::Io { path: path.clone(), source })?;
                tracing::info!(path = %path.display(), "generated a new device key (ECDSA P-256)");
                Ok(FileKeyStore { path, key })
            }
            Err(source) => Err(KeyStoreError::Io { path, source }),
        }
    }

    /// Where the key is stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key as DER (PKCS#8), the form rustls loads.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

impl KeyStore for FileKeyStore {
    fn certificate_request(&self, device_id: &DeviceId) -> Result<String, KeyStoreError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id.as_str());
        params.distinguished_name = dn;
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    fn signing_key(&self) -> Result<Arc<dyn SigningKey>, KeyStoreError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        Ok(provider.key_provider.load_private_key(self.private_key_der())?)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn key_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileKeyStore::open_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = FileKeyStore::open_or_create(dir.path()).unwrap();
        assert_eq!(first.key.public_key_pem(), second.key.public_key_pem());
        assert!(!format!("{second:?}").contains("PRIVATE"));

        let id = DeviceId::parse("dev-1").unwrap();
        let csr = second.certificate_request(&id).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let cn = parsed.params.distinguished_name.get(&DnType::CommonName).unwrap();
        assert_eq!(cn, &rcgen::DnValue::Utf8String("dev-1".into()));
        second.signing_key().unwrap();
    }

    #[test]
    fn corrupt_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let err = FileKeyStore::open_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, KeyStoreError::Corrupt { .. }), "{err}");
    }
}
