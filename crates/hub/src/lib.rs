//! The Hearth hub: MQTT over mutual TLS for devices, an HTTPS API for people, device identity without shared
//! secrets, durable telemetry, commands and security events, on an embedded SQLite database or, across several
//! nodes, PostgreSQL with NATS JetStream between them.
//!
//! [`start`] brings a hub up from a [`Config`] and returns a [`RunningHub`]; the `hearth` CLI and the tests both
//! use it. Module map (one folder per capability): `identity`, `accounts`, `telemetry`, `commands`,
//! `monitoring`, `routing` (this node's connections), `bus` (notices between nodes), `store` (the only SQL),
//! `transport::{mqtt, https}` (the only wire formats).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod accounts;
pub mod bus;
pub mod clock;
pub mod commands;
pub mod config;
pub mod disclosure;
pub mod doctor;
pub mod identity;
pub mod mail;
pub mod monitoring;
pub mod routing;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod updates;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
use identity::{Authorities, Identity, IdentitySettings};
use secrets::{MasterKey, MasterKeySource, SecretString};
use store::Store;

/// How devices and people reach this hub (goes into bootstrap files).
#[derive(Debug, Clone)]
pub struct PublicEndpoints {
    /// HTTPS base URL.
    pub https_url: String,
    /// MQTT host.
    pub mqtt_host: String,
    /// MQTTS port.
    pub mqtt_port: u16,
}

/// Shared state of the HTTP handlers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubState {
    /// Storage.
    pub store: Store,
    /// Device identity.
    pub identity: Identity,
    /// Operator accounts.
    pub accounts: accounts::Accounts,
    /// Commands.
    pub commands: commands::Commands,
    /// Security events.
    pub monitor: monitoring::Monitor,
    /// Live connections.
    pub routing: routing::Routing,
    /// Public endpoints.
    pub public: Arc<PublicEndpoints>,
    /// The hub's clock.
    pub clock: clock::Clock,
    /// Retention of stored data.
    pub retention: telemetry::Retention,
    /// The bus between nodes.
    pub bus: bus::Bus,
    /// Signed updates and rollouts.
    pub updates: updates::Updates,
    /// Vulnerability disclosure: security.txt, report intake, triage.
    pub disclosure: disclosure::Disclosure,
    /// Wills waiting out their delay on this node.
    pub pending_wills: Arc<transport::mqtt::session::PendingWills>,
}

/// Why the hub could not start. The message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Something at start-up failed. The cause is the error's source (shown by `{:#}` and error reporters).
    #[error("{context}")]
    Failed {
        /// What the hub was doing.
        context: String,
        /// Why it failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn failed<E: std::error::Error + Send + Sync + 'static>(context: impl Into<String>) -> impl FnOnce(E) -> StartError {
    let context = context.into();
    move |e| StartError::Failed { context, source: Box::new(e) }
}

/// A running hub.
#[derive(Debug)]
pub struct RunningHub {
    /// Where MQTTS listens.
    pub mqtt_addr: SocketAddr,
    /// Where HTTPS listens.
    pub https_addr: SocketAddr,
    /// The one-time owner-setup token, when the hub has no owner yet.
    pub setup_token: Option<SecretString>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the server CA certificate was written (what clients trust).
    pub server_ca_path: PathBuf,
    /// Where the master key came from.
    pub master_key_source: MasterKeySource,
    /// Public endpoints.
    pub public: Arc<PublicEndpoints>,
    /// Handler state (for in-process use, e.g. tests and `demo`).
    pub state: HubState,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ingest_task: tokio::task::JoinHandle<()>,
}

/// Starts a hub: opens (or creates) the data directory, master key, database, CAs and server certificate, and
/// binds both TLS listeners.
pub async fn start(config: Config) -> Result<RunningHub, StartError> {
    start_with_clock(config, clock::Clock::system()).await
}

/// [`start`] with another clock (tests move a manual clock to see what a day or a year later does).
pub async fn start_with_clock(config: Config, clock: clock::Clock) -> Result<RunningHub, StartError> {
    config.validate()?;
    let data_dir = config.data_dir.clone();
    create_private_dir(&data_dir).map_err(failed(format!("creating data directory {}", data_dir.display())))?;

    let env_key = std::env::var("HEARTH_MASTER_KEY").ok();
    let (master, master_key_source) =
        MasterKey::load(env_key.as_deref(), config.secrets.master_key_file.as_deref(), &data_dir.join("master.key"))
            .map_err(failed("loading the master key"))?;
    let master = Arc::new(master);

    let store_url = config.store_url()?;
    let store = Store::open(&store_url, store::PoolSettings { max_connections: config.store.max_connections })
        .await
        .map_err(failed(format!("opening the database at {} (setting `store.url`)", store_url.redacted())))?;
    store
        .prepare_uplink_partitions(clock.now_ms(), 7)
        .await
        .map_err(failed("creating this week's telemetry partitions"))?;
    let node = node_name(&data_dir)
        .map_err(failed(format!("reading or creating {}", data_dir.join("node-name").display())))?;
    // This node holds no connection yet, whatever the store says from before a crash.
    store.clear_sessions_of(&node, clock.now_ms()).await.map_err(failed("clearing this node's old sessions"))?;
    let bus = match &config.bus.url {
        Some(url) => {
            bus::Bus::connect_nats(url, &node).await.map_err(failed("connecting to the bus (setting `bus.url`)"))?
        }
        None => bus::Bus::local(&node),
    };
    // Listen before loading the certificate view, so no change falls between the load and the first notice.
    let notices = bus.subscribe();
    let authorities = Authorities::load_or_create(&store, &master, &config.public.hostnames, clock.now())
        .await
        .map_err(failed("loading the certificate authorities"))?;
    let tls_dir = data_dir.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(failed("creating the tls directory"))?;
    let server_ca_path = tls_dir.join("server-ca.pem");
    std::fs::write(&server_ca_path, &authorities.server_ca_pem).map_err(failed("writing tls/server-ca.pem"))?;
    std::fs::write(tls_dir.join("device-ca.pem"), &authorities.device_ca_pem)
        .map_err(failed("writing tls/device-ca.pem"))?;
    let authorities = Arc::new(authorities);

    let identity = Identity::new(
        store.clone(),
        master.clone(),
        authorities,
        IdentitySettings {
            device_cert_validity: time::Duration::days(i64::from(config.devices.cert_validity_days)),
            bootstrap_validity: time::Duration::days(i64::from(config.devices.bootstrap_validity_days)),
            expired_renewal_grace: time::Duration::days(i64::from(config.devices.expired_renewal_grace_days)),
        },
        clock.clone(),
        bus.clone(),
    )
    .await
    .map_err(failed("loading revocations and certificate serials"))?;
    let routing = routing::Routing::default();
    let commands = commands::Commands::new(store.clone(), bus.clone(), clock.clone());
    let monitor = monitoring::Monitor::start(store.clone(), clock.clone());
    let (ingest, ingest_task) = telemetry::Ingest::start(
        &store,
        clock.clone(),
        telemetry::IngestSettings {
            data_dir: data_dir.clone(),
            min_free_bytes: config.telemetry.min_free_disk_mb.saturating_mul(1 << 20),
        },
    )
    .await
    .map_err(failed("starting the telemetry writer"))?;
    let retention = telemetry::Retention::new(
        store.clone(),
        clock.clone(),
        telemetry::RetentionSettings {
            telemetry_days: config.retention.telemetry_days,
            security_events_days: config.retention.security_events_days,
            max_security_events: config.retention.max_security_events,
            audit_days: config.retention.audit_days,
            interval: Duration::from_secs(3600),
        },
    );

    let mqtt_listener = TcpListener::bind(config.listen.mqtts)
        .await
        .map_err(failed(format!("binding MQTTS on {}", config.listen.mqtts)))?;
    let https_listener = TcpListener::bind(config.listen.https)
        .await
        .map_err(failed(format!("binding HTTPS on {}", config.listen.https)))?;
    let mqtt_addr = mqtt_listener.local_addr().map_err(failed("reading the MQTTS address"))?;
    let https_addr = https_listener.local_addr().map_err(failed("reading the HTTPS address"))?;

    let host = config.public.host.clone().unwrap_or_else(|| config.public.hostnames[0].clone());
    let url_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let public = Arc::new(PublicEndpoints {
        https_url: format!("https://{url_host}:{}", config.public.https_port.unwrap_or(https_addr.port())),
        mqtt_host: host,
        mqtt_port: config.public.mqtt_port.unwrap_or(mqtt_addr.port()),
    });

    let mailer = mail::Mailer::from_settings(&config.mail)?;
    let accounts = accounts::Accounts::new(
        store.clone(),
        master.clone(),
        clock.clone(),
        accounts::AccountSettings {
            token_validity: time::Duration::days(i64::from(config.accounts.operator_token_days)),
            consumer_sign_up: config.accounts.consumer_sign_up,
            mailer,
            link_base: public.https_url.clone(),
            webauthn: accounts::passkeys::relying_party(&public.mqtt_host, &public.https_url),
        },
    );
    let updates = updates::Updates::load_or_create(
        store.clone(),
        &master,
        clock.clone(),
        monitor.clone(),
        commands.clone(),
        &data_dir,
        updates::UpdateSettings {
            max_file_bytes: config.updates.max_file_mb.saturating_mul(1 << 20),
            check_seconds: u64::from(config.updates.check_hours) * 3600,
            max_postpones: config.updates.max_postpones,
            max_postpone_ms: i64::from(config.updates.max_postpone_days) * 86_400_000,
            security_deadline_ms: i64::from(config.updates.security_deadline_days) * 86_400_000,
        },
    )
    .await
    .map_err(failed("loading the update repository's keys"))?;
    let disclosure = disclosure::Disclosure::new(
        store.clone(),
        clock.clone(),
        monitor.clone(),
        config.disclosure.clone(),
        // The same on every node (from the shared master key), so any node checks any node's challenge.
        &master.token_mac("report-challenge-key", ""),
    );
    let pending_wills = Arc::new(transport::mqtt::session::PendingWills::default());
    let state = HubState {
        updates: updates.clone(),
        disclosure,
        store: store.clone(),
        identity: identity.clone(),
        accounts: accounts.clone(),
        commands: commands.clone(),
        monitor: monitor.clone(),
        routing: routing.clone(),
        public: public.clone(),
        clock: clock.clone(),
        retention: retention.clone(),
        bus: bus.clone(),
        pending_wills: pending_wills.clone(),
    };
    let mqtt_tls =
        transport::mqtt::tls_config(&identity, config.tls.allow_tls12).map_err(failed("configuring MQTTS TLS"))?;
    let https_tls = transport::https::tls_config(
        &identity,
        config.tls.allow_tls12,
        Duration::from_secs(u64::from(config.devices.expired_renewal_grace_days) * 86_400),
    )
    .map_err(failed("configuring HTTPS TLS"))?;
    let ctx = Arc::new(transport::mqtt::Ctx {
        limits: config.mqtt_limits(),
        store: store.clone(),
        ingest,
        monitor: monitor.clone(),
        routing,
        commands: commands.clone(),
        identity: identity.clone(),
        quotas: telemetry::Quotas::new(config.telemetry.max_bytes_per_device_per_day, clock.clone()),
        clock: clock.clone(),
        bus: bus.clone(),
        wills: pending_wills,
    });
    let tasks = vec![
        tokio::spawn(routing::dispatch(notices, ctx.routing.clone(), identity.clone(), store.clone())),
        identity.spawn_revocation_sweep(Duration::from_secs(30)),
        identity.spawn_miss_reloads(),
        spawn_heartbeat(store.clone(), bus.node().to_owned(), clock.clone()),
        tokio::spawn(transport::mqtt::serve(mqtt_listener, mqtt_tls, ctx)),
        tokio::spawn(transport::https::serve(
            https_listener,
            https_tls,
            transport::https::app(state.clone()),
            config.https_limits(),
            monitor,
            config.listen.proxy_protocol_from.clone().into(),
        )),
        commands.spawn_expiry(),
        retention.spawn(),
        identity.spawn_server_cert_refresh(Duration::from_secs(6 * 3600)),
        updates.spawn_refresh(),
        updates.spawn_engine(Duration::from_secs(2)),
    ];
    let setup_token = accounts.setup_token_if_needed().await.map_err(failed("creating the setup token"))?;
    tracing::info!(node = %bus.node(), store = %store.location(), bus = %bus.location(), mqtts = %mqtt_addr,
        https = %https_addr, "hub started");
    Ok(RunningHub {
        mqtt_addr,
        https_addr,
        setup_token,
        data_dir,
        server_ca_path,
        master_key_source,
        public,
        state,
        tasks,
        ingest_task,
    })
}

impl RunningHub {
    /// Stops accepting, closes device connections, waits for queued telemetry to commit, closes the database.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.state.routing.close_all(routing::CloseReason::ShuttingDown);
        // Waiting wills hold ingest handles; they are not published when the hub stops.
        self.state.pending_wills.abort_all();
        self.state.monitor.flush().await;
        // Sessions end, dropping their ingest handles; the writer then drains and stops.
        if tokio::time::timeout(Duration::from_secs(10), self.ingest_task).await.is_err() {
            tracing::warn!("telemetry writer did not finish within 10 s");
        }
        self.state.store.close().await;
    }
}

/// Opens an existing hub's accounts from its data directory, for local administration while the hub may be
/// running (SQLite allows it). Never creates a master key: without the hub's own key nothing can be opened.
pub async fn local_accounts(config: &Config) -> Result<accounts::Accounts, StartError> {
    let default_key = config.data_dir.join("master.key");
    let env_key = std::env::var("HEARTH_MASTER_KEY").ok();
    if env_key.is_none() && config.secrets.master_key_file.is_none() && !default_key.exists() {
        return Err(StartError::Failed {
            context: format!("no hub data in {}", config.data_dir.display()),
            source: "master.key not found; point --data-dir at the hub's data directory".into(),
        });
    }
    let (master, _) = MasterKey::load(env_key.as_deref(), config.secrets.master_key_file.as_deref(), &default_key)
        .map_err(failed("loading the master key"))?;
    let store_url = config.store_url()?;
    let store = Store::open(&store_url, store::PoolSettings { max_connections: 2 })
        .await
        .map_err(failed(format!("opening the database at {}", store_url.redacted())))?;
    Ok(accounts::Accounts::new(
        store,
        Arc::new(master),
        clock::Clock::system(),
        accounts::AccountSettings::offline(time::Duration::days(i64::from(config.accounts.operator_token_days))),
    ))
}

/// This node's name: kept in the data directory, so a restarted node knows which sessions were its own.
fn node_name(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node-name");
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = format!("node-{}", secrets::random_base32(10).map_err(std::io::Error::other)?);
    hearth_fsutil::write_atomic(&path, name.as_bytes(), 0o600)?;
    Ok(name)
}

/// Records this node as alive every 5 s (devices connected to a node that stopped are shown disconnected).
fn spawn_heartbeat(store: Store, node: String, clock: clock::Clock) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Err(e) = store.node_heartbeat(&node, clock.now_ms()).await {
                tracing::warn!(error = %e, "could not record this node's heartbeat");
            }
        }
    })
}

fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}
