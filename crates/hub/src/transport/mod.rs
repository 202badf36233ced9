//! The only modules that know wire formats: MQTT (devices) and HTTPS/JSON (people, enrolment). Both listeners
//! share one TLS policy, built here.

pub mod admission;
pub mod https;
pub mod mqtt;
pub mod proxy;

use std::sync::Arc;

use crate::identity::{DeviceCertVerifier, Identity};

/// The hub's TLS server configuration: TLS 1.3 (1.2 only when `allow_tls12`), aws-lc-rs, the hub's server
/// certificate, and client certificates checked by [`DeviceCertVerifier`] (chain to the device CA and not
/// revoked, one of the device's accepted serials); `client_cert_required` makes one mandatory (MQTT) rather than
/// optional (HTTPS, for renewal), and `expired_grace` lets a recently expired one through (HTTPS renewal only).
/// Session resumption is off: a resumed session would skip the certificate (and revocation) check.
pub fn server_tls(
    identity: &Identity,
    allow_tls12: bool,
    client_cert_required: bool,
    expired_grace: std::time::Duration,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let auth = identity.authorities();
    let verifier = DeviceCertVerifier::new(
        auth.device_ca_der.clone(),
        identity.certs(),
        client_cert_required,
        expired_grace.as_secs(),
    )?;
    let versions: &[&rustls::SupportedProtocolVersion] =
        if allow_tls12 { &[&rustls::version::TLS13, &rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
    let mut config = rustls::ServerConfig::builder_with_details(
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        Arc::new(crate::clock::TlsTime(identity.clock().clone())),
    )
    .with_protocol_versions(versions)?
    .with_client_cert_verifier(verifier)
    .with_cert_resolver(identity.server_cert_resolver());
    config.alpn_protocols = vec![alpn.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The next connection. Accept errors (EMFILE and friends) are logged and waited out briefly instead of
/// spinning the accept loop.
pub(crate) async fn accept(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
