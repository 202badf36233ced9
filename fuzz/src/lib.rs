//! What the fuzz targets share: one hub fixture per process — the hub's real device CA and its real commands
//! capability over a throwaway SQLite store — so the `csr` and `api_bodies` targets drive the hub's own code rather
//! than copies of it, plus the checks on what the hub answers. A bad input must be refused as the caller's
//! mistake (a `CsrError`, a 4xx), never as the hub's (an internal error, a 500).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequest as _;
use axum::http::{Request, header};
use base64::Engine as _;
use serde::de::DeserializeOwned;

use hearth_hub::commands::{CommandError, Commands};
use hearth_hub::identity::ca::IssueError;
use hearth_hub::identity::{Authorities, CsrError};
use hearth_hub::secrets::MasterKey;
use hearth_hub::store::Store;
use hearth_hub::transport::https::api::ApiJson;
use hearth_proto::DeviceId;

/// The device the fixture's checks are made for; its id is what the seed CSRs name.
pub const DEVICE: &str = "fuzzdevice";

/// The hub-side state the targets call into.
pub struct Hub {
    runtime: tokio::runtime::Runtime,
    authorities: Authorities,
    commands: Commands,
    device: DeviceId,
}

/// The process's hub fixture, built on first use.
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub::new().expect("the fuzz fixture needs a temporary directory and SQLite"))
}

impl Hub {
    fn new() -> Result<Hub, Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let dir = fixture_dir()?;
        let (authorities, commands) = runtime.block_on(async {
            let store = Store::open_sqlite(&dir.join("hub.db")).await?;
            let master = MasterKey::from_bytes(&[7; 32], "fuzz fixture")?;
            let hostnames = ["localhost".to_owned()];
            let authorities =
                Authorities::load_or_create(&store, &master, &hostnames, time::OffsetDateTime::now_utc()).await?;
            Ok::<_, Box<dyn std::error::Error>>((
                authorities,
                Commands::new(store, hearth_hub::bus::Bus::local("fuzz"), hearth_hub::clock::Clock::system()),
            ))
        })?;
        Ok(Hub { runtime, authorities, commands, device: DeviceId::parse(DEVICE)? })
    }

    /// The fixture's device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Hands `csr_pem` to the hub's issuing code for `device` (as enrolment and renewal do) and checks the answer:
    /// an issued certificate names `device`, and a refusal is a [`CsrError`], never the hub's own failure.
    pub fn check_csr(&self, device: &DeviceId, csr_pem: &str) {
        let now = time::OffsetDateTime::now_utc();
        match self.authorities.issue_device_cert(device, "fuzz-model", csr_pem, time::Duration::days(1), now) {
            Ok(issued) => {
                assert_eq!(leaf_common_name(&issued.chain_pem), device.as_str(), "the leaf must name the device")
            }
            Err(IssueError::Csr(CsrError::SubjectMismatch { found })) => assert_ne!(found, device.as_str()),
            Err(IssueError::Csr(_)) => {}
            Err(e) => panic!("a device's CSR made the hub fail (a 500, not a 400): {e}"),
        }
    }

    /// Runs a command request through the hub's `Commands::send` for the fixture's device, which the store does
    /// not know: every body is refused, by validation or as an unknown device, before anything is recorded.
    pub fn check_command(&self, name: &str, args: hearth_proto::uplink::Fields, timeout_secs: Option<u64>) {
        // The handler's default, as in `send_command`.
        let timeout = Duration::from_secs(timeout_secs.unwrap_or(60));
        let result = self.runtime.block_on(self.commands.send(&self.device, name, args, timeout));
        match result {
            Err(CommandError::Invalid(_) | CommandError::UnknownDevice) => {}
            other => panic!("a command for an unknown device must be refused as invalid or unknown: {other:?}"),
        }
    }

    /// Extracts `body` as a JSON request body of type `T` with the hub's own extractor ([`ApiJson`]), as the
    /// router does. A refusal must be a client error.
    pub fn extract<T: DeserializeOwned>(&self, body: &[u8]) -> Option<T> {
        let request = Request::builder()
            .method("POST")
            .uri("/")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a static request is valid");
        match self.runtime.block_on(ApiJson::<T>::from_request(request, &())) {
            Ok(ApiJson(value)) => Some(value),
            Err(e) => {
                assert!(e.status().is_client_error(), "a bad body must be a 4xx, got {}", e.status());
                None
            }
        }
    }
}

/// `der` as the PEM text a device would send, so the fuzzer can mutate the DER structure directly.
pub fn csr_pem_of_der(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

/// The subject common name of the first certificate in `chain_pem` (read independently of the hub's code).
fn leaf_common_name(chain_pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).expect("an issued chain is PEM");
    let cert = pem.parse_x509().expect("an issued certificate parses");
    let cn = cert.subject().iter_common_name().next().expect("an issued certificate has a common name");
    cn.as_str().expect("an issued common name is text").to_owned()
}

/// A directory for this process's store. libFuzzer ends the process with `exit`, so nothing is removed on the
/// way out; instead each start removes the directories of fixture processes that are gone (where `/proc` says so).
fn fixture_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let procfs = Path::new("/proc/self").exists();
    if let Ok(entries) = std::fs::read_dir(&base)
        && procfs
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("hearth-fuzz-")) else { continue };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!("hearth-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
