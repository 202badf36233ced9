//! The device's identity at the hub: first-start enrolment with the factory bootstrap file, the state it leaves
//! behind, and certificate renewal.
//!
//! After enrolment the state directory holds everything the agent needs, so the bootstrap file (and its
//! single-use token, which is never stored) is no longer read:
//!
//! | file | content |
//! |---|---|
//! | `device.key` | the private key ([`crate::keystore`]) |
//! | `device.crt` | the certificate chain the hub issued (leaf, then device CA), PEM |
//! | `hub.json` | [`HubConfig`]: where the hub is, its CA, and who this device is |
//!
//! Both certificate files are replaced atomically, so a crash mid-renewal leaves the old, still valid, chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearth_proto::enrol::{BOOTSTRAP_VERSION, BootstrapFile, CertificateResponse, EnrolRequest, RenewRequest};
use hearth_proto::{DeviceId, ModelId};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::fsutil::write_atomic;
use crate::keystore::{KeyStore, KeyStoreError};
use crate::tls::{TlsError, client_config, parse_certificates};

/// File name of the certificate chain inside the state directory.
pub const CERT_FILE: &str = "device.crt";
/// File name of the hub configuration inside the state directory.
pub const HUB_FILE: &str = "hub.json";

/// How long one enrolment or renewal request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why enrolment or renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The device is not enrolled and no bootstrap file was given.
    #[error("not enrolled yet ({0} has no certificate) and no bootstrap file was given")]
    NoBootstrap(PathBuf),
    /// The bootstrap file could not be read or parsed.
    #[error("bootstrap file {path}: {detail}")]
    Bootstrap {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A state file could not be read, parsed or written.
    #[error("state file {path}: {detail}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The hub refused the request (4xx). Retrying will not help.
    #[error("the hub refused {what} ({status} {code}): {message}")]
    Refused {
        /// `enrolment` or `renewal`.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// The hub's stable error code, for example `token_used`.
        code: String,
        /// The hub's explanation.
        message: String,
    },
    /// The hub failed (5xx). Retrying may help.
    #[error("the hub failed during {what} ({status} {code}): {message}")]
    Server {
        /// `enrolment` or `renewal`.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// The hub's error code, if it sent one.
        code: String,
        /// The hub's explanation.
        message: String,
    },
    /// The request did not complete (connection, TLS, timeout, unreadable answer). Retrying may help.
    #[error("{what} request failed: {source}")]
    Http {
        /// `enrolment` or `renewal`.
        what: &'static str,
        /// reqwest's error.
        source: reqwest::Error,
    },
    /// The hub's answer does not fit this device.
    #[error("the hub's answer is unusable: {0}")]
    BadResponse(String),
    /// The key store failed.
    #[error(transparent)]
    Key(#[from] KeyStoreError),
    /// A TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl EnrolError {
    /// Whether trying again later may succeed (5xx and network errors); 4xx and local errors are final.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EnrolError::Server { .. } | EnrolError::Http { .. })
    }
}

/// `hub.json`: what the agent keeps from the bootstrap file (everything but the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Format version (1).
    pub v: u64,
    /// This device's id.
    pub device_id: DeviceId,
    /// This device's model.
    pub model: ModelId,
    /// The hub's HTTPS base URL.
    pub hub_url: String,
    /// The hub's MQTT host name (also the name its certificate must carry).
    pub mqtt_host: String,
    /// The hub's MQTTS port.
    pub mqtt_port: u16,
    /// The only CA the device trusts for the hub's server certificates.
    pub hub_ca_pem: String,
}

/// An enrolled device: its hub, its key and its current certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Where the hub is and who this device is.
    pub hub: HubConfig,
    /// The current certificate chain, PEM.
    pub chain_pem: String,
    /// Start of the leaf certificate's validity, Unix ms.
    pub not_before_ms: u64,
    /// End of the leaf certificate's validity, Unix ms.
    pub not_after_ms: u64,
    key: Arc<dyn KeyStore>,
}

impl Identity {
    /// The device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.hub.device_id
    }

    /// When to renew: two thirds into the certificate's lifetime, Unix ms.
    pub fn renew_after_ms(&self) -> u64 {
        let lifetime = self.not_after_ms.saturating_sub(self.not_before_ms);
        self.not_before_ms + lifetime / 3 * 2
    }

    /// The key store holding this device's key.
    pub fn key_store(&self) -> &Arc<dyn KeyStore> {
        &self.key
    }

    /// TLS configuration presenting the device certificate and trusting only the hub CA (MQTT and renewal).
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, EnrolError> {
        Ok(client_config(&self.hub.hub_ca_pem, Some((&self.chain_pem, self.key.signing_key()?)))?)
    }

    /// The name the hub's MQTT server certificate must carry.
    pub fn mqtt_server_name(&self) -> Result<ServerName<'static>, EnrolError> {
        ServerName::try_from(self.hub.mqtt_host.clone())
            .map_err(|e| EnrolError::BadResponse(format!("mqtt host {:?}: {e}", self.hub.mqtt_host)))
    }

    /// The hub's MQTT address, `host:port`.
    pub fn mqtt_addr(&self) -> String {
        format!("{}:{}", self.hub.mqtt_host, self.hub.mqtt_port)
    }
}

/// Loads the identity from `state_dir`, or, if the device has no certificate yet, enrols with the bootstrap
/// file. Network and 5xx failures are retried with `backoff`; a refusal (4xx) is returned at once.
pub async fn load_or_enrol(
    state_dir: &Path,
    bootstrap: Option<&Path>,
    key: Arc<dyn KeyStore>,
    backoff: &mut Backoff,
) -> Result<Identity, EnrolError> {
    if state_dir.join(CERT_FILE).exists() && state_dir.join(HUB_FILE).exists() {
        return load(state_dir, key);
    }
    let path = bootstrap.ok_or_else(|| EnrolError::NoBootstrap(state_dir.to_path_buf()))?;
    let boot = read_bootstrap(path)?;
    loop {
        match enrol(state_dir, &boot, key.clone()).await {
            Ok(identity) => return Ok(identity),
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "enrolment failed; will retry");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads and checks a bootstrap file.
pub fn read_bootstrap(path: &Path) -> Result<BootstrapFile, EnrolError> {
    let bad = |detail: String| EnrolError::Bootstrap { path: path.to_path_buf(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let boot: BootstrapFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if boot.v != BOOTSTRAP_VERSION {
        return Err(bad(format!("unsupported version {}", boot.v)));
    }
    Ok(boot)
}

/// Loads an enrolled identity from `state_dir`.
pub fn load(state_dir: &Path, key: Arc<dyn KeyStore>) -> Result<Identity, EnrolError> {
    let hub_path = state_dir.join(HUB_FILE);
    let hub: HubConfig = read_state(&hub_path, |t| serde_json::from_str(t).map_err(|e| e.to_string()))?;
    let cert_path = state_dir.join(CERT_FILE);
    let chain_pem = read_state(&cert_path, |t| Ok(t.to_owned()))?;
    identity(hub, chain_pem, key)
}

/// Enrols once (no retry): CSR, `POST /api/v1/enrol`, then saves `device.crt` and `hub.json`.
pub async fn enrol(state_dir: &Path, boot: &BootstrapFile, key: Arc<dyn KeyStore>) -> Result<Identity, EnrolError> {
    let csr_pem = key.certificate_request(&boot.device_id)?;
    let tls = client_config(&boot.hub_ca_pem, None)?;
    let request =
        EnrolRequest { device_id: boot.device_id.clone(), bootstrap_token: boot.bootstrap_token.clone(), csr_pem };
    let url = format!("{}/api/v1/enrol", boot.hub_url.trim_end_matches('/'));
    let answer = post("enrolment", tls, &url, &request).await?;
    let hub = HubConfig {
        v: 1,
        device_id: boot.device_id.clone(),
        model: boot.model.clone(),
        hub_url: boot.hub_url.clone(),
        mqtt_host: boot.mqtt_host.clone(),
        mqtt_port: boot.mqtt_port,
        hub_ca_pem: boot.hub_ca_pem.clone(),
    };
    let identity = accept(&hub, answer, key)?;
    // Certificate first: with hub.json absent a crash here is seen as "not enrolled" and retried (and then
    // refused as token_used, which is the truth); the reverse order could pair a new hub.json with no cert.
    save(state_dir, CERT_FILE, identity.chain_pem.as_bytes())?;
    let hub_json = serde_json::to_vec_pretty(&identity.hub).map_err(|e| EnrolError::BadResponse(e.to_string()))?;
    save(state_dir, HUB_FILE, &hub_json)?;
    tracing::info!(device = %identity.hub.device_id, "enrolled with the hub");
    Ok(identity)
}

/// Renews once (no retry) over mutual TLS with the current certificate, keeping the same key; replaces
/// `device.crt` atomically and returns the new identity.
pub async fn renew(state_dir: &Path, current: &Identity) -> Result<Identity, EnrolError> {
    let csr_pem = current.key.certificate_request(current.device_id())?;
    let url = format!("{}/api/v1/renew", current.hub.hub_url.trim_end_matches('/'));
    let answer = post("renewal", current.tls_config()?, &url, &RenewRequest { csr_pem }).await?;
    let identity = accept(&current.hub, answer, current.key.clone())?;
    save(state_dir, CERT_FILE, identity.chain_pem.as_bytes())?;
    tracing::info!(device = %identity.hub.device_id, not_after_ms = identity.not_after_ms, "renewed certificate");
    Ok(identity)
}

#[derive(Deserialize)]
struct ApiErrorBody {
    error: ApiErrorDetail,
}

#[derive(Deserialize)]
struct ApiErrorDetail {
    code: String,
    message: String,
}

async fn post<T: Serialize>(
    what: &'static str,
    tls: rustls::ClientConfig,
    url: &str,
    body: &T,
) -> Result<CertificateResponse, EnrolError> {
    let http = |source| EnrolError::Http { what, source };
    let client =
        reqwest::Client::builder().tls_backend_preconfigured(tls).timeout(HTTP_TIMEOUT).build().map_err(http)?;
    let response = client.post(url).json(body).send().await.map_err(http)?;
    let status = response.status();
    if status.is_success() {
        return response.json::<CertificateResponse>().await.map_err(http);
    }
    let text = response.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ApiErrorBody>(&text) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (String::from("unknown"), text.chars().take(200).collect()),
    };
    let status = status.as_u16();
    if (400..500).contains(&status) {
        Err(EnrolError::Refused { what, status, code, message })
    } else {
        Err(EnrolError::Server { what, status, code, message })
    }
}

fn accept(hub: &HubConfig, answer: CertificateResponse, key: Arc<dyn KeyStore>) -> Result<Identity, EnrolError> {
    if answer.device_id != hub.device_id {
        return Err(EnrolError::BadResponse(format!("certificate is for {}, not {}", answer.device_id, hub.device_id)));
    }
    identity(hub.clone(), answer.certificate_chain_pem, key)
}

fn identity(hub: HubConfig, chain_pem: String, key: Arc<dyn KeyStore>) -> Result<Identity, EnrolError> {
    let chain = parse_certificates("device certificate chain", &chain_pem)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| EnrolError::BadResponse(format!("device certificate: {e}")))?;
    let ms = |t: &x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0).saturating_mul(1000);
    let validity = leaf.validity();
    Ok(Identity { not_before_ms: ms(&validity.not_before), not_after_ms: ms(&validity.not_after), hub, chain_pem, key })
}

fn read_state<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, EnrolError> {
    let bad = |detail: String| EnrolError::State { path: path.to_path_buf(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    parse(&text).map_err(bad)
}

fn save(state_dir: &Path, name: &str, bytes: &[u8]) -> Result<(), EnrolError> {
    let path = state_dir.join(name);
    write_atomic(&path, bytes, 0o644).map_err(|e| EnrolError::State { path, detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::FileKeyStore;

    /// A throwaway CA signing the device's own CSR, as the hub would.
    fn issue(key: &FileKeyStore, id: &DeviceId, days: i64) -> String {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&key.certificate_request(id).unwrap()).unwrap();
        let mut params = csr.params;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + time::Duration::days(days);
        let leaf = params.signed_by(&csr.public_key, &issuer).unwrap();
        format!("{}{}", leaf.pem(), ca_cert.pem())
    }

    #[test]
    fn identity_reloads_and_renews_two_thirds_in() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(FileKeyStore::open_or_create(dir.path()).unwrap());
        let id = DeviceId::parse("dev-1").unwrap();
        let chain = issue(&key, &id, 30);
        let hub = HubConfig {
            v: 1,
            device_id: id.clone(),
            model: ModelId::parse("plug-2").unwrap(),
            hub_url: "https://127.0.0.1:1".into(),
            mqtt_host: "localhost".into(),
            mqtt_port: 8883,
            hub_ca_pem: chain.split_inclusive("-----END CERTIFICATE-----\n").nth(1).unwrap().to_owned(),
        };
        save(dir.path(), CERT_FILE, chain.as_bytes()).unwrap();
        save(dir.path(), HUB_FILE, &serde_json::to_vec(&hub).unwrap()).unwrap();

        let identity = load(dir.path(), key).unwrap();
        assert_eq!(identity.hub, hub);
        let lifetime = identity.not_after_ms - identity.not_before_ms;
        assert_eq!(lifetime, 30 * 24 * 3600 * 1000);
        assert_eq!(identity.renew_after_ms(), identity.not_before_ms + lifetime / 3 * 2);
        identity.tls_config().unwrap();
        assert_eq!(identity.mqtt_addr(), "localhost:8883");
    }

    #[tokio::test]
    async fn missing_bootstrap_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(FileKeyStore::open_or_create(dir.path()).unwrap());
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let err = load_or_enrol(dir.path(), None, key, &mut backoff).await.unwrap_err();
        assert!(matches!(err, EnrolError::NoBootstrap(_)), "{err}");
    }
}
