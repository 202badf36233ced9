//! Enrolment: the bootstrap file the factory writes for each device, and the bodies of the hub's enrolment and
//! renewal endpoints (`POST /api/v1/enrol`, `POST /api/v1/renew`).

use serde::{Deserialize, Serialize};

use crate::{DeviceId, ModelId};

/// Version of the bootstrap file format.
pub const BOOTSTRAP_VERSION: u64 = 1;

/// What the factory loads onto one device: who it is, the single-use token that lets it enrol once, and how to
/// reach and authenticate the hub. The claim code is for the label (QR) that the consumer scans, not for the device.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    /// Format version (1).
    pub v: u64,
    /// The device's id.
    pub device_id: DeviceId,
    /// The product model.
    pub model: ModelId,
    /// Single-use enrolment token (secret).
    pub bootstrap_token: String,
    /// The hub's HTTPS base URL, for example `https://hub.example:8443`.
    pub hub_url: String,
    /// The hub's MQTT host name.
    pub mqtt_host: String,
    /// The hub's MQTTS port.
    pub mqtt_port: u16,
    /// PEM of the CA that signs the hub's server certificate (the device trusts only this).
    pub hub_ca_pem: String,
}

impl std::fmt::Debug for BootstrapFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapFile")
            .field("device_id", &self.device_id)
            .field("model", &self.model)
            .field("bootstrap_token", &"<redacted>")
            .field("hub_url", &self.hub_url)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/enrol`: a device asks for its first certificate.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The device's id, as in its bootstrap file.
    pub device_id: DeviceId,
    /// The single-use bootstrap token.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub bootstrap_token: String,
    /// A PKCS#10 certificate signing request (PEM) for the key the device generated; its subject, if any, must
    /// be the device id.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 12288))]
    pub csr_pem: String,
}

impl std::fmt::Debug for EnrolRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolRequest").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

/// `POST /api/v1/renew` (over mutual TLS with the current certificate): a device asks for a fresh certificate.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A certificate signing request (PEM); its subject, if any, must be the device id.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 12288))]
    pub csr_pem: String,
}

/// The answer to enrolment and renewal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The device id the certificate names.
    pub device_id: DeviceId,
    /// The device certificate followed by the device CA certificate, PEM.
    pub certificate_chain_pem: String,
    /// When the certificate expires, Unix milliseconds.
    pub not_after_ms: u64,
    /// When the agent should renew, Unix milliseconds (two thirds into the lifetime).
    pub renew_after_ms: u64,
}

/// `POST /api/v1/devices` (operator): how many devices of which model to manufacture.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManufactureRequest {
    /// Model designation.
    pub model: ModelId,
    /// How many (1 to 10000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub count: usize,
}

/// How devices reach the hub, as the hub states it in a manufacturing answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubEndpoints {
    /// HTTPS base URL for enrolment and renewal.
    pub url: String,
    /// MQTT host.
    pub mqtt_host: String,
    /// MQTTS port.
    pub mqtt_port: u16,
    /// PEM of the CA that signs the hub's server certificate.
    pub ca_pem: String,
}

/// One manufactured device with its secrets, shown once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Serialize, Deserialize)]
pub struct ManufacturedDevice {
    /// Device id.
    pub device_id: DeviceId,
    /// Model.
    pub model: ModelId,
    /// Single-use enrolment token: load it onto the device, keep no copy.
    pub bootstrap_token: String,
    /// For the consumer's label (QR code).
    pub claim_code: String,
}

impl std::fmt::Debug for ManufacturedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManufacturedDevice").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

/// The answer to `POST /api/v1/devices`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManufactureResponse {
    /// How devices reach the hub.
    pub hub: HubEndpoints,
    /// The devices made.
    pub devices: Vec<ManufacturedDevice>,
}

impl ManufactureResponse {
    /// One bootstrap file per device, as the assembly line loads them.
    pub fn bootstrap_files(&self) -> Vec<BootstrapFile> {
        self.devices
            .iter()
            .map(|d| BootstrapFile {
                v: BOOTSTRAP_VERSION,
                device_id: d.device_id.clone(),
                model: d.model.clone(),
                bootstrap_token: d.bootstrap_token.clone(),
                hub_url: self.hub.url.clone(),
                mqtt_host: self.hub.mqtt_host.clone(),
                mqtt_port: self.hub.mqtt_port,
                hub_ca_pem: self.hub.ca_pem.clone(),
            })
            .collect()
    }
}
