//! Test helpers shared by the crates' integration tests: an in-process hub on `127.0.0.1:0` with its owner set
//! up, an API client that trusts it, locating the workspace's binaries, and the rule for outside tools: a test
//! that needs one (mosquitto, openssl, …) says clearly that it is skipped when the tool is missing, unless
//! `HEARTH_REQUIRE_ALL=1` (set by CI), which turns the skip into a failure.

pub mod contract;
/// The HTTP client the helpers use, for tests that build their own requests.
pub use reqwest;
pub mod mqtt;
pub mod services;
pub mod updates;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use hearth_hub::{Config, RunningHub};
use hearth_proto::enrol::{BootstrapFile, ManufactureResponse};

/// A hub running in this process, with an operator token.
#[derive(Debug)]
pub struct TestHub {
    /// The hub.
    pub hub: RunningHub,
    /// Its data directory (deleted on drop).
    pub dir: tempfile::TempDir,
    /// An operator bearer token.
    pub token: String,
    /// A client that trusts the hub's server CA.
    pub client: reqwest::Client,
}

/// With `RUST_LOG` set, the in-process hubs of the tests log to stderr (`RUST_LOG=warn cargo test … --nocapture`
/// shows why a request got a 500).
pub fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A test configuration: loopback, free ports, data in `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    config.listen.https = "127.0.0.1:0".parse().expect("literal address");
    config.listen.mqtts = "127.0.0.1:0".parse().expect("literal address");
    config.public.hostnames = vec!["127.0.0.1".into(), "localhost".into()];
    // Links go to the in-memory outbox (`hub.state.accounts.mailer().dev_outbox()`), where tests read them.
    config.mail.dev_log_links_insecure = true;
    config
}

impl TestHub {
    /// Starts a hub with the test configuration and completes owner setup.
    pub async fn start() -> Result<TestHub> {
        Self::start_with(|_| {}).await
    }

    /// Starts a hub after `adjust` has changed the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Result<TestHub> {
        Self::start_with_clock(adjust, hearth_hub::clock::Clock::system()).await
    }

    /// Starts a hub on `clock` (a manual clock lets a test move time) after `adjust` changed the configuration.
    pub async fn start_with_clock(
        adjust: impl FnOnce(&mut Config),
        clock: hearth_hub::clock::Clock,
    ) -> Result<TestHub> {
        log_if_asked();
        let dir = tempfile::tempdir()?;
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let hub = hearth_hub::start_with_clock(config, clock).await?;
        let client = client_for(&hub.server_ca_path, None)?;
        let setup = hub.setup_token.as_ref().context("a new hub prints a setup token")?.expose().to_owned();
        let request = client.post(format!("{}/api/v1/setup", base_url(&hub))).json(&serde_json::json!({
            "setup_token": setup, "email": OWNER_EMAIL, "password": OWNER_PASSWORD }));
        let (status, _, body) = checked(request).await?;
        if status != 201 {
            bail!("setup failed: {}", String::from_utf8_lossy(&body));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let token = answer["token"].as_str().context("token in answer")?.to_owned();
        Ok(TestHub { hub, dir, token, client })
    }

    /// Starts a hub on `clock` with no owner yet: `token` is empty; returns the setup token it printed.
    pub async fn start_bare(clock: hearth_hub::clock::Clock) -> Result<(TestHub, String)> {
        Self::start_bare_with(clock, |_| {}).await
    }

    /// As [`TestHub::start_bare`], after `adjust` changed the configuration.
    pub async fn start_bare_with(
        clock: hearth_hub::clock::Clock,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<(TestHub, String)> {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let hub = hearth_hub::start_with_clock(config, clock).await?;
        let client = client_for(&hub.server_ca_path, None)?;
        let setup = hub.setup_token.as_ref().context("a new hub prints a setup token")?.expose().to_owned();
        Ok((TestHub { hub, dir, token: String::new(), client }, setup))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        base_url(&self.hub)
    }

    /// GET with the operator token; returns status and JSON body. The answer must keep the API contract.
    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        let (status, _, body) =
            self.send(self.client.get(format!("{}{path}", self.base())).bearer_auth(&self.token)).await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
    }

    /// POST JSON with the operator token; returns status and JSON body. The answer must keep the API contract.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<(u16, serde_json::Value)> {
        let request = self.client.post(format!("{}{path}", self.base())).bearer_auth(&self.token).json(&body);
        let (status, _, body) = self.send(request).await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
    }

    /// Sends any request to the hub and checks its answer against the OpenAPI document ([`contract::check`]);
    /// returns status, headers and body.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
        checked(request).await
    }

    /// Occurrences of security events of `kind` stored so far (events are aggregated: rows carry a count). Flushes
    /// the hub's aggregated events first, so what was recorded before the call is counted.
    pub async fn event_count(&self, kind: &str) -> Result<u64> {
        self.hub.state.monitor.flush().await;
        let (status, events) = self.get(&format!("/api/v1/security-events?limit=1000&kind={kind}")).await?;
        if status != 200 {
            bail!("security events: {status} {events}");
        }
        Ok(events.as_array().context("array")?.iter().filter_map(|e| e["count"].as_u64()).sum())
    }

    /// Waits up to 5 s until at least `min` events of `kind` were recorded.
    pub async fn has_events(&self, kind: &str, min: u64) -> bool {
        eventually(std::time::Duration::from_secs(5), || async {
            (self.event_count(kind).await.ok()? >= min).then_some(())
        })
        .await
        .is_some()
    }

    /// Makes a verified account directly in the store (no mail round trip), for tests about what it may do.
    pub async fn add_account(&self, id: &str, email: &str, role: hearth_hub::store::Role, pass: &str) -> Result<()> {
        let hash = hearth_hub::accounts::password::hash(pass)?;
        let now = self.hub.state.clock.now_ms();
        let new = hearth_hub::store::NewAccount {
            id,
            email,
            role,
            password_hash: &hash,
            created_at: now,
            verified_at: Some(now),
        };
        if !self.hub.state.store.insert_account(&new).await? {
            bail!("account {email} exists already");
        }
        Ok(())
    }

    /// A client as a browser is for the pages: it trusts the hub's server CA and does not follow redirects (so a
    /// test sees each `303` and where it leads).
    pub fn browser(&self) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.hub.server_ca_path)?)?;
        Ok(reqwest::Client::builder().tls_certs_only([ca]).redirect(reqwest::redirect::Policy::none()).build()?)
    }

    /// Signs in through the API with a password: the `name=value` session cookie and its CSRF token.
    pub async fn session(&self, email: &str, pass: &str) -> Result<(String, String)> {
        let request = self
            .client
            .post(format!("{}/api/v1/sessions", self.base()))
            .json(&serde_json::json!({"email": email, "password": pass}));
        let (status, headers, body) = self.send(request).await?;
        if status != 201 {
            bail!("sign-in of {email} failed ({status}): {}", String::from_utf8_lossy(&body));
        }
        let cookie = headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
            .to_owned();
        let body: serde_json::Value = serde_json::from_slice(&body)?;
        let csrf = body["csrf_token"].as_str().ok_or_else(|| anyhow::anyhow!("no CSRF token"))?.to_owned();
        Ok((cookie, csrf))
    }

    /// Manufactures `count` devices and returns their bootstrap files.
    pub async fn manufacture(&self, model: &str, count: usize) -> Result<Vec<BootstrapFile>> {
        let (status, body) =
            self.post("/api/v1/devices", serde_json::json!({ "model": model, "count": count })).await?;
        if status != 201 {
            bail!("manufacture failed ({status}): {body}");
        }
        let resp: ManufactureResponse = serde_json::from_value(body)?;
        Ok(resp.bootstrap_files())
    }

    /// Writes bootstrap files into `dir` (one per device) and returns their paths.
    pub fn write_bootstraps(&self, files: &[BootstrapFile], dir: &Path) -> Result<Vec<PathBuf>> {
        write_bootstraps(files, dir)
    }

    /// Stops the hub and keeps its data directory (to restart on the same data).
    pub async fn stop(self) -> (tempfile::TempDir, String) {
        self.hub.shutdown().await;
        (self.dir, self.token)
    }
}

/// Writes one bootstrap file per device into `dir` (mode 0600) and returns the paths.
pub fn write_bootstraps(files: &[BootstrapFile], dir: &Path) -> Result<Vec<PathBuf>> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    for f in files {
        let path = dir.join(format!("{}.json", f.device_id));
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        file.write_all(&serde_json::to_vec_pretty(f)?)?;
        paths.push(path);
    }
    Ok(paths)
}

/// The test owner's email.
pub const OWNER_EMAIL: &str = "owner@example.org";
/// The test owner's password (strong enough for the hub's rules).
pub const OWNER_PASSWORD: &str = "correct horse battery staple";

/// Sends `request` and checks its answer against the OpenAPI document; returns status, headers and body.
pub async fn checked(request: reqwest::RequestBuilder) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
    let (client, request) = request.build_split();
    let request = request?;
    let (method, path) = (request.method().to_string(), request.url().path().to_owned());
    let resp = client.execute(request).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?.to_vec();
    let content_type = headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if let Err(breach) = contract::check(&method, &path, status, content_type, &body) {
        bail!("API contract broken: {breach}");
    }
    Ok((status, headers, body))
}

/// The hub's HTTPS base URL.
pub fn base_url(hub: &RunningHub) -> String {
    format!("https://127.0.0.1:{}", hub.https_addr.port())
}

/// A reqwest client trusting only the CA in `ca_path`, with an optional client identity (PEM key + chain).
pub fn client_for(ca_path: &Path, identity_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_path)?)?;
    let mut builder = reqwest::Client::builder().tls_certs_only([ca]);
    if let Some(pem) = identity_pem {
        builder = builder.identity(reqwest::Identity::from_pem(pem)?);
    }
    Ok(builder.build()?)
}

/// A client that trusts the CA at `ca_path` and connects from `local` (another source address on loopback).
pub fn client_from(ca_path: &Path, local: std::net::IpAddr) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_path)?)?;
    Ok(reqwest::Client::builder().tls_certs_only([ca]).local_address(local).build()?)
}

/// Path of a binary built from this workspace (`hearth`, `hearth-agent`), next to the test executable's
/// directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/it-xxxx → target/debug/NAME
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    dir.join(name)
}

/// Whether an outside tool is on PATH. When it is not: panics under `HEARTH_REQUIRE_ALL=1` (CI), otherwise prints
/// a clear SKIPPED line and returns false.
pub fn require_tool(tool: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    found || missing(test, &format!("`{tool}` is not installed"), "`.ci/run` lists the Debian packages the tests use")
}

/// Whether `path` (an outside tool the tests install, such as a Python virtual environment) exists; when it does
/// not, as [`require_tool`], with `hint` saying how to get it.
pub fn require_file(path: &Path, test: &str, hint: &str) -> bool {
    path.exists() || missing(test, &format!("{} does not exist", path.display()), hint)
}

fn missing(test: &str, what: &str, hint: &str) -> bool {
    if std::env::var("HEARTH_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{test}: {what}, and HEARTH_REQUIRE_ALL=1 makes that a failure ({hint})");
    }
    eprintln!("SKIPPED {test}: {what} ({hint})");
    false
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A device enrolled through the real API, with its key and certificate also written as PEM files (for
/// outside clients such as mosquitto_pub).
#[derive(Debug)]
pub struct TestDevice {
    /// Device id.
    pub id: hearth_proto::DeviceId,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Certificate chain, PEM.
    pub chain_pem: String,
    /// `{dir}/{id}.key`.
    pub key_path: PathBuf,
    /// `{dir}/{id}.crt`.
    pub cert_path: PathBuf,
}

/// Enrols a manufactured device through the API at `base` (an HTTPS URL) with a fresh ECDSA P-256 key; files
/// go to `dir`.
pub async fn enrol_at(
    client: &reqwest::Client,
    base: &str,
    device_id: &str,
    bootstrap_token: &str,
    dir: &Path,
) -> Result<TestDevice> {
    let key = rcgen::KeyPair::generate()?;
    let csr = csr_for(&key, device_id)?;
    let request = client
        .post(format!("{base}/api/v1/enrol"))
        .json(&serde_json::json!({ "device_id": device_id, "bootstrap_token": bootstrap_token, "csr_pem": csr }));
    let (status, _, body) = checked(request).await?;
    if status != 200 {
        bail!("enrol failed: {}", String::from_utf8_lossy(&body));
    }
    let cert: hearth_proto::enrol::CertificateResponse = serde_json::from_slice(&body)?;
    write_device_files(dir, hearth_proto::DeviceId::parse(device_id)?, key.serialize_pem(), cert.certificate_chain_pem)
}

impl TestHub {
    /// Manufactures and enrols one device with a fresh ECDSA P-256 key; files go to `dir`.
    pub async fn enrolled_device(&self, dir: &Path) -> Result<TestDevice> {
        let file = self.manufacture("test-model", 1).await?.remove(0);
        let key = rcgen::KeyPair::generate()?;
        let csr = csr_for(&key, file.device_id.as_str())?;
        let request = self.client.post(format!("{}/api/v1/enrol", self.base())).json(&serde_json::json!({
            "device_id": file.device_id, "bootstrap_token": file.bootstrap_token, "csr_pem": csr }));
        let (status, _, body) = checked(request).await?;
        if status != 200 {
            bail!("enrol failed: {}", String::from_utf8_lossy(&body));
        }
        let cert: hearth_proto::enrol::CertificateResponse = serde_json::from_slice(&body)?;
        write_device_files(dir, file.device_id, key.serialize_pem(), cert.certificate_chain_pem)
    }

    /// A device certificate for `device` issued directly by the hub's CA, valid from `start` for `validity`
    /// (to make expired certificates); files go to `dir`.
    pub fn issue_direct(
        &self,
        dir: &Path,
        device: &hearth_proto::DeviceId,
        start: time::OffsetDateTime,
        validity: time::Duration,
    ) -> Result<TestDevice> {
        let key = rcgen::KeyPair::generate()?;
        let csr = csr_for(&key, device.as_str())?;
        let issued = self
            .hub
            .state
            .identity
            .authorities()
            .issue_device_cert(device, "test-model", &csr, validity, start)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        write_device_files(dir, device.clone(), key.serialize_pem(), issued.chain_pem)
    }
}

/// A CSR (PEM) with subject CN = `cn`.
pub fn csr_for(key: &rcgen::KeyPair, cn: &str) -> Result<String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    Ok(params.serialize_request(key)?.pem()?)
}

/// A self-signed CA and a client certificate from it for `cn` (a certificate from the wrong CA).
pub fn foreign_device(dir: &Path, cn: &str) -> Result<TestDevice> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Hearth device CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let id = hearth_proto::DeviceId::parse(cn)?;
    write_device_files(dir, id, key.serialize_pem(), format!("{}{}", cert.pem(), ca.pem()))
}

fn write_device_files(
    dir: &Path,
    id: hearth_proto::DeviceId,
    key_pem: String,
    chain_pem: String,
) -> Result<TestDevice> {
    std::fs::create_dir_all(dir)?;
    let key_path = dir.join(format!("{id}.key"));
    let cert_path = dir.join(format!("{id}.crt"));
    std::fs::write(&key_path, &key_pem)?;
    std::fs::write(&cert_path, &chain_pem)?;
    Ok(TestDevice { id, key_pem, chain_pem, key_path, cert_path })
}

/// A TLS connection to the hub's MQTT port as `device` (or with no certificate), for raw-byte tests.
pub async fn tls_connect(
    hub: &RunningHub,
    device: Option<&TestDevice>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_connect_to(hub, hub.mqtt_addr, device).await
}

/// A TLS connection to `addr` (one of the hub's ports) as `device` (or with no certificate).
pub async fn tls_connect_to(
    hub: &RunningHub,
    addr: std::net::SocketAddr,
    device: Option<&TestDevice>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_connect_ca(&hub.server_ca_path, addr, device).await
}

/// A TLS connection to `addr` (a hub's MQTT port, or a balancer in front of several) trusting the server CA
/// at `server_ca`, as `device` (or with no certificate).
pub async fn tls_connect_ca(
    server_ca: &Path,
    addr: std::net::SocketAddr,
    device: Option<&TestDevice>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca)? {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let config = match device {
        Some(d) => {
            let chain = CertificateDer::pem_slice_iter(d.chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(d.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    // Without it the first packet after the handshake waits for the server's delayed ACK (about 40 ms).
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp).await?;
    // In TLS 1.3 a refused client certificate shows only on the first read; surface it now.
    use tokio::io::AsyncWriteExt as _;
    tls.flush().await?;
    Ok(tls)
}

/// This process's resident set size in KiB (Linux).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
