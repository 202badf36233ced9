//! The agent's one TLS policy, shared by HTTPS (enrolment, renewal) and MQTT: TLS 1.3 only, aws-lc-rs, and the
//! hub CA from the bootstrap file as the only trust root (no system roots, so a public CA cannot impersonate
//! the hub). With a device certificate it also presents that certificate as client authentication.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input held no certificate or could not be parsed.
    #[error("invalid {what}: {detail}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// The parser's explanation.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Parses every certificate in a PEM bundle, refusing an empty one.
pub fn parse_certificates(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what, detail: "no certificate found".into() });
    }
    Ok(certs)
}

/// A client configuration trusting only `hub_ca_pem`; with `client` (certificate chain PEM and key) it also
/// authenticates the device.
pub fn client_config(hub_ca_pem: &str, client: Option<(&str, Arc<dyn SigningKey>)>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates("hub CA certificate", hub_ca_pem)? {
        roots.add(cert)?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key)) => {
            let chain = parse_certificates("device certificate chain", chain_pem)?;
            let certified = CertifiedKey::new(chain, key);
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
    };
    Ok(config)
}
