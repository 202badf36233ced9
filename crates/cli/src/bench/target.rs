//! The systems under test, started by the tool itself on 127.0.0.1 (it never targets anything else): a Hearth
//! hub (`hearth serve` as a child process, durable SQLite) and Mosquitto from Debian (non-durable) configured the
//! same way: mutual TLS 1.3, certificate required, identity as user name, and a per-device topic ACL. Both use
//! the same PKI: device certificates from the hub's device CA, server certificates from its server CA.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use hearth_hub::identity::Authorities;
use hearth_hub::secrets::MasterKey;
use hearth_hub::store::Store;
use hearth_proto::DeviceId;

/// One simulated device's credentials.
#[derive(Clone)]
pub struct DeviceCred {
    /// Device id (the certificate's subject).
    pub id: String,
    /// TLS client configuration with its certificate and key.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Hearth hub.
    Hearth,
    /// Mosquitto.
    Mosquitto,
    /// nginx serving a file over mutual TLS (the peer of the download scenario).
    Nginx,
}

impl Kind {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hearth => "hearth",
            Kind::Mosquitto => "mosquitto",
            Kind::Nginx => "nginx",
        }
    }
}

/// A running system under test.
pub struct Target {
    /// Which one.
    pub kind: Kind,
    /// Its MQTTS address.
    pub addr: SocketAddr,
    child: Child,
    /// Further hub nodes sharing the first one's database and bus (`--nodes`), with their MQTTS addresses.
    others: Vec<(SocketAddr, Child)>,
}

impl Target {
    /// Its process id (for /proc figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every process of the system (one per node).
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.child.id()).chain(self.others.iter().map(|(_, c)| c.id())).collect()
    }

    /// The MQTTS address device `i` uses: devices are spread over the nodes in turn.
    pub fn addr_for(&self, i: usize) -> SocketAddr {
        match i % (1 + self.others.len()) {
            0 => self.addr,
            k => self.others[k - 1].0,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.kind == Kind::Nginx {
            // nginx's master stops its workers on SIGTERM; killed outright, it would leave them running.
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            for _ in 0..50 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (_, c) in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where the hub runs: its embedded SQLite, or PostgreSQL (a fresh database per round) with `nodes` hub
/// processes sharing it and the NATS bus at `nats`.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    /// Admin URL of a PostgreSQL server.
    pub postgres: Option<String>,
    /// NATS URL (needed for more than one node).
    pub nats: Option<String>,
    /// Hub processes.
    pub nodes: usize,
}

/// Starts `hearth serve` with `config`; returns the child and the setup token it printed (if any).
fn spawn_hub(
    config: &Path,
    data: &Path,
    https: u16,
    mqtts: u16,
    master_key: Option<&str>,
) -> Result<(Child, Option<String>)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--https", &format!("127.0.0.1:{https}"), "--mqtts", &format!("127.0.0.1:{mqtts}")])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(k) = master_key {
        cmd.env("HEARTH_MASTER_KEY", k);
    }
    let mut child = cmd.spawn().context("while starting the hub")?;
    let stdout = child.stdout.take().context("hub stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut token = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim().starts_with("hst_") {
                token = Some(line.trim().to_owned());
            }
            if line.starts_with("Ready.") {
                let _ = tx.send(token.take());
            }
        }
    });
    let token = rx.recv_timeout(Duration::from_secs(60)).context("the hub did not start")?;
    Ok((child, token))
}

/// The PKI and the Hearth hub's operator access.
pub struct Lab {
    /// Working directory (hub data, Mosquitto files).
    pub dir: PathBuf,
    /// The hub.
    pub hub: Target,
    /// The hub's HTTPS URL.
    pub hub_url: String,
    /// Operator token.
    pub token: String,
    /// Server CA PEM path.
    pub server_ca: PathBuf,
    /// The hub's store (SQLite in the lab, or the round's PostgreSQL database).
    pub store: Store,
    authorities: Arc<Authorities>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Lab {
    /// Starts a fresh hub in `dir` (as `deployment` says) and sets up its owner.
    pub async fn start_on(dir: &Path, deployment: &Deployment, round: usize) -> Result<Lab> {
        let data = dir.join("hub");
        let (https, mqtts) = (free_port()?, free_port()?);
        let config = dir.join("hub.toml");
        let nodes = deployment.nodes.max(1);
        if nodes > 1 && (deployment.postgres.is_none() || deployment.nats.is_none()) {
            bail!("--nodes above 1 needs --postgres and --nats");
        }
        let store_url = match &deployment.postgres {
            Some(admin) => Some(Store::fresh_postgres_database(admin, &format!("hearth_bench_{round}")).await?),
            None => None,
        };
        let bus_toml = match &deployment.nats {
            Some(n) => format!("[bus]\nurl = \"{n}\"\n"),
            None => "[bus]\nsingle_node = true\n".to_owned(),
        };
        let store_toml = store_url.as_ref().map(|u| format!("[store]\nurl = \"{u}\"\n{bus_toml}")).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "[public]\nhostnames = [\"127.0.0.1\", \"localhost\"]\n\
                 [accounts]\nconsumer_sign_up = false\n\
                 [mqtt]\npublish_rate_per_sec = 100000\npublish_burst = 100000\nmax_connections = 10000000\n\
                 max_pending_per_source = 100000\n{store_toml}"
            ),
        )?;
        // Several nodes share one master key (it opens the CA keys in the shared database).
        let master_key = (nodes > 1).then(|| {
            use base64::Engine as _;
            let mut raw = [0u8; 32];
            raw.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(131) ^ round as u8);
            base64::engine::general_purpose::STANDARD.encode(raw)
        });
        let (child, setup) = spawn_hub(&config, &data, https, mqtts, master_key.as_deref())?;
        let setup = setup.context("no setup token")?;
        let mut hub =
            Target { kind: Kind::Hearth, addr: SocketAddr::from(([127, 0, 0, 1], mqtts)), child, others: Vec::new() };
        let hub_url = format!("https://127.0.0.1:{https}");
        let server_ca = data.join("tls/server-ca.pem");
        let client = crate::client::HubClient::new(&crate::HubArgs {
            hub: hub_url.clone(),
            ca: server_ca.clone(),
            token: None,
        })?;
        let password = hearth_hub::secrets::random_base32(24).context("no randomness for the owner password")?;
        let token = client.setup(&setup, "owner@bench.invalid", &password).await?;
        // The other nodes start once the owner exists (so none of them replaces the setup token).
        for n in 1..nodes {
            let (https, mqtts) = (free_port()?, free_port()?);
            let (child, _) = spawn_hub(&config, &dir.join(format!("hub{n}")), https, mqtts, master_key.as_deref())?;
            hub.others.push((SocketAddr::from(([127, 0, 0, 1], mqtts)), child));
        }

        // The operator's own access to the hub's keys, to mint bench certificates without a round trip each.
        let (master, _) = MasterKey::load(master_key.as_deref(), None, &data.join("master.key"))?;
        let master = Arc::new(master);
        let store = match &store_url {
            Some(u) => {
                Store::open(&hearth_hub::store::StoreUrl::parse(u).map_err(anyhow::Error::msg)?, Default::default())
                    .await?
            }
            None => Store::open_sqlite(&data.join("hearth.db")).await?,
        };
        let hostnames = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let authorities =
            Arc::new(Authorities::load_or_create(&store, &master, &hostnames, time::OffsetDateTime::now_utc()).await?);
        Ok(Lab { dir: dir.to_path_buf(), hub, hub_url, token, server_ca, store, authorities })
    }

    /// Issues `n` device certificates named `{prefix}-{i}` (keys from a pool of 64, so the run measures the
    /// server, not key generation). With `enrol`, the devices also get records in the hub (through the real
    /// manufacture and enrol logic), which the command scenario needs.
    pub async fn devices(&self, prefix: &str, n: usize, enrol: bool) -> Result<Vec<DeviceCred>> {
        let server_ca_pem = std::fs::read_to_string(&self.server_ca)?;
        let pool: Vec<rcgen::KeyPair> =
            (0..n.clamp(1, 64)).map(|_| rcgen::KeyPair::generate()).collect::<Result<_, _>>()?;
        let signers: Vec<Arc<dyn rustls::sign::SigningKey>> = pool
            .iter()
            .map(|k| {
                let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()));
                rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&der).map_err(anyhow::Error::from)
            })
            .collect::<Result<_>>()?;
        // Hearth accepts only certificates it issued through enrolment (it checks each device's current serial),
        // so enrolled devices go through the real API: manufacture, then enrol with a CSR each.
        let made = if enrol { self.manufacture_and_enrol(n, &pool).await? } else { Vec::new() };
        let now = time::OffsetDateTime::now_utc();
        let mut creds = Vec::with_capacity(n);
        let step = (n / 10).max(1);
        for i in 0..n {
            let (id, chain) = match made.get(i) {
                Some((id, chain)) => (id.clone(), chain.clone()),
                None => {
                    let id = DeviceId::parse(&format!("{prefix}-{i:07}"))?;
                    let csr = csr_for(&pool[i % pool.len()], &id)?;
                    let chain = self
                        .authorities
                        .issue_device_cert(&id, "bench", &csr, time::Duration::days(7), now)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .chain_pem;
                    (id, chain)
                }
            };
            let tls =
                hearth_agent::tls::client_config(&server_ca_pem, Some((&chain, signers[i % signers.len()].clone())))?;
            creds.push(DeviceCred { id: id.to_string(), tls: Arc::new(tls) });
            if n >= 1000 && !enrol && (i + 1) % step == 0 {
                eprintln!("    certificates: {}/{n}", i + 1);
            }
        }
        Ok(creds)
    }

    /// Manufactures `n` devices through the API and enrols each with a CSR for key `i % pool.len()`, 16 at a
    /// time. Returns (device id, certificate chain) in order.
    async fn manufacture_and_enrol(&self, n: usize, pool: &[rcgen::KeyPair]) -> Result<Vec<(DeviceId, String)>> {
        let client = crate::client::HubClient::new(&crate::HubArgs {
            hub: self.hub_url.clone(),
            ca: self.server_ca.clone(),
            token: Some(self.token.clone()),
        })?;
        let mut made = Vec::with_capacity(n);
        while made.len() < n {
            let batch = (n - made.len()).min(10_000);
            made.extend(client.manufacture("bench", batch).await?.devices);
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, m) in made.into_iter().enumerate() {
            let csr = csr_for(&pool[i % pool.len()], &m.device_id)?;
            let (client, sem) = (client.clone(), sem.clone());
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let req = hearth_proto::enrol::EnrolRequest {
                    device_id: m.device_id.clone(),
                    bootstrap_token: m.bootstrap_token,
                    csr_pem: csr,
                };
                let chain = client.enrol(&req).await?.certificate_chain_pem;
                anyhow::Ok((i, m.device_id, chain))
            });
        }
        let mut out: Vec<Option<(DeviceId, String)>> = vec![None; n];
        let step = (n / 10).max(1);
        let mut done = 0;
        while let Some(r) = tasks.join_next().await {
            let (i, id, chain) = r??;
            out[i] = Some((id, chain));
            done += 1;
            if n >= 1000 && done % step == 0 {
                eprintln!("    enrolled: {done}/{n}");
            }
        }
        out.into_iter().map(|x| x.context("an enrolment did not finish")).collect()
    }

    /// Starts Mosquitto with the same PKI and a per-device ACL (plus `controller`, which may use every device
    /// topic, for the command scenario).
    pub fn mosquitto(&self, controller: &str) -> Result<Target> {
        let dir = self.dir.join("mosquitto");
        std::fs::create_dir_all(&dir)?;
        let hostnames = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (chain, key) = self.authorities.issue_server_cert(&hostnames, time::OffsetDateTime::now_utc())?;
        std::fs::write(dir.join("server.crt"), chain)?;
        hearth_hub::secrets::write_private(&dir.join("server.key"), key.as_bytes())?;
        std::fs::write(dir.join("device-ca.pem"), &self.authorities.device_ca_pem)?;
        std::fs::write(
            dir.join("acl"),
            format!("user {controller}\ntopic readwrite devices/#\n\npattern readwrite devices/%u/#\n"),
        )?;
        let port = free_port()?;
        let conf = format!(
            "per_listener_settings false\nallow_anonymous false\npersistence false\nlog_dest file {d}/mosquitto.log\n\
             user {user}\n\
             max_keepalive 600\nlistener {port} 127.0.0.1\ncafile {d}/device-ca.pem\ncertfile {d}/server.crt\n\
             keyfile {d}/server.key\nrequire_certificate true\nuse_identity_as_username true\n\
             tls_version tlsv1.3\nacl_file {d}/acl\n",
            d = dir.display(),
            // Started as root, Mosquitto would drop to its own user and lose access to the 0600 key in our
            // private directory; this throwaway loopback peer keeps the user that started it.
            user = std::env::var("USER").unwrap_or_else(|_| "root".into())
        );
        std::fs::write(dir.join("mosquitto.conf"), conf)?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("while starting mosquitto (apt-get install mosquitto)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Target { kind: Kind::Mosquitto, addr, child, others: Vec::new() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
        bail!("mosquitto did not start listening on {addr}: {log}")
    }
}

impl Lab {
    /// Starts nginx (Debian's) serving `file` at `/file` over HTTPS on 127.0.0.1 with the same PKI and the same
    /// demands as the hub's device routes: TLS 1.3, a device certificate from the hub's device CA required.
    /// Returns it and the file's URL.
    pub fn nginx(&self, file: &Path) -> Result<(Target, String)> {
        let dir = self.dir.join("nginx");
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::copy(file, dir.join("www/file")).context("while copying the file for nginx")?;
        let hostnames = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (chain, key) = self.authorities.issue_server_cert(&hostnames, time::OffsetDateTime::now_utc())?;
        std::fs::write(dir.join("server.crt"), chain)?;
        hearth_hub::secrets::write_private(&dir.join("server.key"), key.as_bytes())?;
        std::fs::write(dir.join("device-ca.pem"), &self.authorities.device_ca_pem)?;
        let port = free_port()?;
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        // Two workers for two cores; access logging off (the hub logs no request either).
        let conf = format!(
            "daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
             {user_line}             events {{ worker_connections 4096; }}
             http {{
  access_log off;
  client_body_temp_path {d}/tmp;
  proxy_temp_path {d}/tmp;
               fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp;
  scgi_temp_path {d}/tmp;
               sendfile on;
  keepalive_timeout 60;
               server {{
    listen 127.0.0.1:{port} ssl;
    ssl_protocols TLSv1.3;
                 ssl_certificate {d}/server.crt;
    ssl_certificate_key {d}/server.key;
                 ssl_client_certificate {d}/device-ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
                 root {d}/www;
    location = /file {{ default_type application/octet-stream; }}
  }}
}}
",
            d = dir.display(),
            // As root, nginx's workers would switch to a user that cannot read our 0600 key.
            user_line = if user == "root" { "user root;\n".to_owned() } else { String::new() },
        );
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("while starting nginx (apt-get install nginx-light)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                let url = format!("https://127.0.0.1:{port}/file");
                return Ok((Target { kind: Kind::Nginx, addr, child, others: Vec::new() }, url));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        bail!("nginx did not start listening on {addr}: {log}")
    }
}

fn csr_for(key: &rcgen::KeyPair, id: &DeviceId) -> Result<String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, id.as_str());
    Ok(params.serialize_request(key)?.pem()?)
}
