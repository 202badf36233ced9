//! `hearth`: run the hub (`serve`), set it up, manufacture devices, administer devices, send commands, read
//! telemetry, and try everything at once (`demo`). A thin layer over `hearth-hub` and the hub's REST API.

#![forbid(unsafe_code)]

mod bench;
mod client;
mod demo;
mod label;
mod release;
mod sbom;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

use client::HubClient;

#[derive(Parser)]
#[command(name = "hearth", version, about = "Hearth: a secure-by-default platform for consumer IoT devices")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: MQTTS for devices and HTTPS for people, both TLS only.
    Serve(ServeArgs),
    /// Create the owner account with the one-time setup token printed at first start (or, with a token from
    /// `hearth setup-token`, set a new owner password); prints the owner's API token. The password is read from
    /// HEARTH_OWNER_PASSWORD or, if unset, from the first line of standard input.
    Setup {
        #[command(flatten)]
        hub: HubArgs,
        /// The setup token the hub printed.
        #[arg(long, env = "HEARTH_SETUP_TOKEN", hide_env_values = true)]
        setup_token: String,
        /// The owner's email address (the owner signs in with it).
        #[arg(long, env = "HEARTH_OWNER_EMAIL")]
        email: String,
    },
    /// Issue a new one-time setup token from the hub's data directory (recovery for a lost owner password or API
    /// token; needs read access to the data directory and the master key). Use it with `hearth setup --email`.
    SetupToken {
        /// Configuration file, for `secrets.master_key_file`.
        #[arg(long, env = "HEARTH_CONFIG")]
        config: Option<PathBuf>,
        /// The hub's data directory.
        #[arg(long, env = "HEARTH_DATA_DIR", default_value = "hearth-data")]
        data_dir: PathBuf,
    },
    /// Create device records and write one bootstrap file per device plus a CSV manifest.
    Factory(FactoryArgs),
    /// Inspect and administer devices.
    Device {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Start a hub on the embedded default, create devices, enrol and run them, and show what to look at.
    Demo(demo::DemoArgs),
    /// Load generator: many devices with their own certificates against Hearth and Mosquitto, side by side.
    Bench(bench::BenchArgs),
    /// Print the hub's OpenAPI document.
    Openapi,
    /// Check a deployment: its configuration and data directory, and (with --online) what the running hub
    /// serves, such as security.txt's expiry. Exit status 1 when anything is broken.
    Doctor {
        /// Configuration file (TOML), as given to `hearth serve`.
        #[arg(long, env = "HEARTH_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory. Overrides `data_dir`.
        #[arg(long, env = "HEARTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Also ask the running hub (at --hub, trusting --ca).
        #[arg(long)]
        online: bool,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Database administration.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Signed updates for the maker: keys, the TUF root and its rotation, signing releases (offline), SBOMs, and
    /// uploading what was signed to the hub.
    Release {
        #[command(subcommand)]
        action: release::SigningAction,
    },
    /// Roll a published release out to devices in waves, with health gates; pause, resume, abort.
    Rollout {
        #[command(flatten)]
        hub: HubArgs,
        #[command(subcommand)]
        action: release::RolloutAction,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Copy a stopped embedded hub's SQLite data into an empty PostgreSQL database, verified by row counts.
    /// Then set `store.url` (and `bus.url` for several nodes) and start the hub(s).
    Migrate {
        /// The hub's data directory (its hearth.db is the source).
        #[arg(long, env = "HEARTH_DATA_DIR", default_value = "hearth-data")]
        data_dir: PathBuf,
        /// The target: postgres://USER@HOST:PORT/DATABASE (an empty database; the schema is created). Keep a
        /// password off the command line: use a pgpass file, or pass the URL in HEARTH_MIGRATE_TO.
        #[arg(long, env = "HEARTH_MIGRATE_TO", hide_env_values = true)]
        to: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML); see hearth.example.toml. Every setting is optional.
    #[arg(long, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database, master key, CA files). Overrides `data_dir`.
    #[arg(long, env = "HEARTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTPS listen address. Overrides `listen.https`.
    #[arg(long, env = "HEARTH_HTTPS")]
    https: Option<std::net::SocketAddr>,
    /// MQTTS listen address. Overrides `listen.mqtts`.
    #[arg(long, env = "HEARTH_MQTTS")]
    mqtts: Option<std::net::SocketAddr>,
    /// Database: sqlite://PATH or postgres://… Overrides `store.url`.
    #[arg(long, env = "HEARTH_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,
    /// Bus between hub nodes: nats://HOST:PORT (NATS with JetStream). Overrides `bus.url`.
    #[arg(long, env = "HEARTH_BUS_URL", hide_env_values = true)]
    bus_url: Option<String>,
}

/// How the CLI reaches a hub.
#[derive(Args, Clone)]
pub struct HubArgs {
    /// The hub's HTTPS URL.
    #[arg(long, env = "HEARTH_HUB", default_value = "https://localhost:8443", global = true)]
    pub hub: String,
    /// The hub's server CA certificate (PEM); the hub writes it to DATA_DIR/tls/server-ca.pem.
    #[arg(long, env = "HEARTH_HUB_CA", default_value = "hearth-data/tls/server-ca.pem", global = true)]
    pub ca: PathBuf,
    /// Operator token.
    #[arg(long, env = "HEARTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Args)]
struct FactoryArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Model designation (A-Z a-z 0-9 . _ -).
    #[arg(long)]
    model: String,
    /// How many devices (1 to 10000 per run).
    #[arg(long)]
    count: usize,
    /// Output directory for the bootstrap files, manifest.csv and labels/.
    #[arg(long)]
    out: PathBuf,
    /// Where a label's QR code sends consumers to claim the device (default: the hub's public HTTPS address, as
    /// the bootstrap files name it). Set it when consumers reach the web app by another address.
    #[arg(long)]
    claim_url: Option<String>,
}

#[derive(Subcommand)]
enum DeviceAction {
    /// List devices.
    List {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one device.
    Show {
        /// Device id.
        id: String,
    },
    /// Revoke a device: its connection closes and every later connection is refused.
    Revoke {
        /// Device id.
        id: String,
    },
    /// Send a command and wait for the answer.
    Command {
        /// Device id.
        id: String,
        /// Command name, e.g. ping, set_interval, report_state.
        name: String,
        /// Arguments as name=value (numbers and true/false are typed).
        #[arg(long = "arg")]
        args: Vec<String>,
        /// Seconds before the command times out.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Print the recorded command and return at once, without waiting for the answer.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show a device's stored telemetry, events and state, oldest first (page on with --after-seq).
    Telemetry {
        /// Device id.
        id: String,
        /// How many messages.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only messages after this sequence number (the previous page's `next_after_seq`).
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo prints its own progress; per-connection logs would drown it.
    let default_filter = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info,sqlx=warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log redirected to a file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The owner's password: HEARTH_OWNER_PASSWORD, or the first line of standard input.
fn owner_password() -> Result<zeroize::Zeroizing<String>> {
    if let Ok(p) = std::env::var("HEARTH_OWNER_PASSWORD") {
        return Ok(zeroize::Zeroizing::new(p));
    }
    eprint!("Owner password (at least 12 characters, not a common one; read from standard input): ");
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!password.is_empty(), "no password given: set HEARTH_OWNER_PASSWORD or type it on standard input");
    Ok(zeroize::Zeroizing::new(password))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Doctor { config, data_dir, online, hub } => doctor(config, data_dir, online.then_some(hub)).await,
        Command::Setup { hub, setup_token, email } => {
            let password = owner_password()?;
            let client = HubClient::new(&hub)?;
            let token = client.setup(&setup_token, &email, &password).await?;
            println!("Owner account {email} is ready. API token (shown once; keep it safe):\n\n  {token}\n");
            println!("Use it with:  export HEARTH_TOKEN={token}");
            Ok(())
        }
        Command::Release { action } => release::signing(action).await,
        Command::Rollout { hub, action } => release::rollout(&hub, action).await,
        Command::SetupToken { config, data_dir } => {
            let mut config = match &config {
                Some(path) => hearth_hub::Config::from_file(path)?,
                None => hearth_hub::Config::default(),
            };
            config.data_dir = data_dir;
            let accounts = hearth_hub::local_accounts(&config).await?;
            let token = accounts.issue_setup_token().await?;
            println!("New one-time setup token (valid 24 hours, single use; earlier setup tokens no longer work):");
            println!();
            println!("  {}", token.expose());
            println!();
            println!(
                "Use it with `hearth setup --setup-token <token> --email <owner email>` to set a new owner password."
            );
            Ok(())
        }
        Command::Factory(args) => factory(args).await,
        Command::Device { hub, action } => device(hub, action).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Store { action: StoreAction::Migrate { data_dir, to } } => migrate(&data_dir, &to).await,
        Command::Openapi => {
            use std::io::Write as _;
            let doc = hearth_hub::transport::https::api::openapi_document().to_pretty_json()?;
            // A closed pipe (`hearth openapi | head`) is not an error worth a panic.
            match writeln!(std::io::stdout(), "{doc}") {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => Ok(other?),
            }
        }
    }
}

async fn migrate(data_dir: &std::path::Path, to: &str) -> Result<()> {
    use hearth_hub::store::{PoolSettings, Store, StoreUrl};
    let source = data_dir.join("hearth.db");
    if !source.is_file() {
        anyhow::bail!("no hub database at {}; point --data-dir at the hub's data directory", source.display());
    }
    let target = StoreUrl::parse(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if !matches!(target, StoreUrl::Postgres(_)) {
        anyhow::bail!("--to must be a postgres:// URL");
    }
    eprintln!("Stop the hub before migrating: writes made during the copy would be lost.");
    let from = Store::open_sqlite(&source).await.context("opening the SQLite database")?;
    let into = Store::open(&target, PoolSettings { max_connections: 4 })
        .await
        .with_context(|| format!("opening {}", target.redacted()))?;
    eprintln!("copying {} -> {}", from.location(), into.location());
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let report = from
        .copy_into(&into, hearth_hub::clock::Clock::system().now_ms(), |table, rows| {
            if last.elapsed() >= std::time::Duration::from_secs(1) {
                eprintln!("  {table}: {rows} rows so far");
                last = std::time::Instant::now();
            }
        })
        .await
        .context("the copy failed; the target may hold part of the data: drop and recreate it before retrying")?;
    println!("Copied and verified (row counts match) in {:.1} s:", started.elapsed().as_secs_f64());
    for (table, rows) in &report.tables {
        println!("  {table:<16} {rows}");
    }
    println!("\nNext: set store.url = \"{}\" (and bus.url for several nodes), and start the hub.", target.redacted());
    into.close().await;
    from.close().await;
    Ok(())
}

async fn doctor(config: Option<PathBuf>, data_dir: Option<PathBuf>, online: Option<HubArgs>) -> Result<()> {
    use hearth_hub::doctor::{Finding, Level};
    let mut findings: Vec<Finding> = Vec::new();
    let loaded = match &config {
        Some(path) => hearth_hub::Config::from_file(path),
        None => Ok(hearth_hub::Config::default()),
    };
    match loaded {
        Ok(mut c) => {
            if let Some(d) = data_dir {
                c.data_dir = d;
            }
            findings.extend(hearth_hub::doctor::check_config(&c));
        }
        Err(e) => findings.push(Finding { level: Level::Error, about: "configuration".into(), message: e.to_string() }),
    }
    if let Some(hub) = online {
        let answer = async {
            let client = client::HubClient::new(&hub)?;
            client.text("/.well-known/security.txt").await
        };
        match answer.await {
            Ok(text) => {
                let now = hearth_hub::clock::Clock::system().now_ms();
                findings.extend(hearth_hub::doctor::check_security_txt(&text, now));
            }
            Err(e) => findings.push(Finding {
                level: Level::Error,
                about: "security.txt".into(),
                message: format!("could not be read from {}: {e:#}", hub.hub),
            }),
        }
    }
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "ok   ",
            Level::Warn => "WARN ",
            Level::Error => "ERROR",
        };
        println!("{tag} {}: {}", f.about, f.message);
    }
    let worst = findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    let (warnings, errors) = (
        findings.iter().filter(|f| f.level == Level::Warn).count(),
        findings.iter().filter(|f| f.level == Level::Error).count(),
    );
    println!("{errors} error(s), {warnings} warning(s)");
    if worst == Level::Error {
        bail!("the deployment has {errors} error(s)");
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => hearth_hub::Config::from_file(path)?,
        None => hearth_hub::Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = args.https {
        config.listen.https = a;
    }
    if let Some(a) = args.mqtts {
        config.listen.mqtts = a;
    }
    if let Some(u) = args.store_url {
        config.store.url = Some(u);
    }
    if let Some(u) = args.bus_url {
        config.bus.url = Some(u);
    }
    let hub = hearth_hub::start(config).await.context("the hub could not start")?;
    print_started(&hub);
    wait_for_signal().await;
    eprintln!("shutting down");
    hub.shutdown().await;
    Ok(())
}

/// Prints where the hub listens and, on first start, the setup token.
pub fn print_started(hub: &hearth_hub::RunningHub) {
    println!("Hearth hub running");
    println!("  MQTTS (devices, mutual TLS): {}", hub.mqtt_addr);
    println!("  HTTPS (API):                 {}  ({})", hub.https_addr, hub.public.https_url);
    println!("  data directory:              {}", hub.data_dir.display());
    println!("  database:                    {}", hub.state.store.location());
    println!("  bus:                         {} (this node: {})", hub.state.bus.location(), hub.state.bus.node());
    println!("  server CA (trust this):      {}", hub.server_ca_path.display());
    match &hub.master_key_source {
        hearth_hub::secrets::MasterKeySource::Environment => {
            println!("  master key:                  from HEARTH_MASTER_KEY")
        }
        hearth_hub::secrets::MasterKeySource::File { path, created } => println!(
            "  master key:                  {path}{}",
            if *created { " (created now: back it up; without it the keys cannot be opened)" } else { "" }
        ),
    }
    if let Some(token) = &hub.setup_token {
        println!();
        println!("No owner is set up yet. One-time setup token (valid 24 hours, single use):");
        println!();
        println!("  {}", token.expose());
        println!();
        println!(
            "Create the owner account with it (the password is read from HEARTH_OWNER_PASSWORD or standard input):\n  hearth setup --hub {} --ca {} --setup-token {} --email <owner email>",
            hub.public.https_url,
            hub.server_ca_path.display(),
            token.expose()
        );
    }
    println!();
    println!("Ready. Ctrl-C or SIGTERM stops the hub.");
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
}

async fn factory(args: FactoryArgs) -> Result<()> {
    let client = HubClient::new(&args.hub)?;
    let made = client.manufacture(&args.model, args.count).await?;
    let written = write_factory_output(&made, &args.out, args.claim_url.as_deref())?;
    println!("{} devices of model {} written to {}", made.devices.len(), args.model, args.out.display());
    println!("  bootstrap files: {written} (one per device, mode 0600; load each onto its device, keep no copy)");
    println!("  manifest:        {}", args.out.join("manifest.csv").display());
    println!(
        "  labels:          {} (SVG, 50 x 30 mm, with the claim QR code; print one per device)",
        args.out.join("labels").display()
    );
    Ok(())
}

/// Writes `{device_id}.json` bootstrap files (0600), `manifest.csv` (device_id, model, claim_code, file) and
/// `labels/{device_id}.svg` (the printable claim label; its QR code opens `{claim_url}/claim?code=…`, by default
/// the hub's public address).
pub fn write_factory_output(
    made: &hearth_proto::enrol::ManufactureResponse,
    out: &std::path::Path,
    claim_url: Option<&str>,
) -> Result<usize> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(out).with_context(|| format!("while creating {}", out.display()))?;
    let mut manifest = String::from("device_id,model,claim_code,bootstrap_file\n");
    let labels = out.join("labels");
    std::fs::create_dir_all(&labels).with_context(|| format!("while creating {}", labels.display()))?;
    for (file, device) in made.bootstrap_files().iter().zip(&made.devices) {
        let name = format!("{}.json", file.device_id);
        let path = out.join(&name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("while creating {}", path.display()))?;
        f.write_all(&serde_json::to_vec_pretty(file)?)?;
        // The base address; a `…/claim` given by mistake is not doubled.
        let base = claim_url.unwrap_or(&file.hub_url).trim_end_matches('/').trim_end_matches("/claim");
        let label = label::svg(device.device_id.as_str(), device.model.as_str(), &device.claim_code, base)
            .map_err(|e| anyhow::anyhow!("the claim QR code of {}: {e:?}", device.device_id))?;
        let label_path = labels.join(format!("{}.svg", device.device_id));
        // 0600 like the bootstrap files: the claim code is a secret until the label is on the box.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&label_path)
            .and_then(|mut f| f.write_all(label.as_bytes()))
            .with_context(|| format!("while writing {}", label_path.display()))?;
        manifest.push_str(&format!("{},{},{},{}\n", device.device_id, device.model, device.claim_code, name));
    }
    let manifest_path = out.join("manifest.csv");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&manifest_path)
        .with_context(|| format!("while writing {}", manifest_path.display()))?;
    let existing = f.metadata()?.len();
    let body = if existing > 0 { manifest.split_once('\n').map(|(_, rest)| rest).unwrap_or("") } else { &manifest };
    f.write_all(body.as_bytes())?;
    Ok(made.devices.len())
}

async fn device(hub: HubArgs, action: DeviceAction) -> Result<()> {
    let client = HubClient::new(&hub)?;
    match action {
        DeviceAction::List { limit } => {
            let body = client.get(&format!("/api/v1/devices?limit={limit}")).await?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let mut rows =
                vec![["id".to_owned(), "model".into(), "status".into(), "online".into(), "last seen".into()]];
            for d in body["devices"].as_array().into_iter().flatten() {
                let seen = match d["last_seen_at_ms"].as_i64() {
                    Some(at) => format!("{} s ago", (now_ms - at).max(0) / 1000),
                    None => "never".into(),
                };
                rows.push([
                    d["id"].as_str().unwrap_or("?").to_owned(),
                    d["model"].as_str().unwrap_or("?").to_owned(),
                    d["status"].as_str().unwrap_or("?").to_owned(),
                    if d["connected"].as_bool().unwrap_or(false) { "yes" } else { "no" }.to_owned(),
                    seen,
                ]);
            }
            // Columns as wide as their widest cell, so every row lines up whatever the ids and models.
            let widths: Vec<usize> =
                (0..5).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
            for r in &rows {
                let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
                println!("{}", line.join("  ").trim_end());
            }
        }
        DeviceAction::Show { id } => {
            println!("{}", serde_json::to_string_pretty(&client.get(&format!("/api/v1/devices/{id}")).await?)?);
        }
        DeviceAction::Revoke { id } => {
            let body = client.post(&format!("/api/v1/devices/{id}/revoke"), serde_json::json!({})).await?;
            println!("device {} is {}", id, body["status"].as_str().unwrap_or("?"));
        }
        DeviceAction::Telemetry { id, limit, after_seq } => {
            let body =
                client.get(&format!("/api/v1/devices/{id}/telemetry?limit={limit}&after_seq={after_seq}")).await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        DeviceAction::Command { id, name, args, timeout, no_wait } => {
            let mut map = serde_json::Map::new();
            for a in args {
                let (k, v) = a.split_once('=').with_context(|| format!("--arg {a:?} is not name=value"))?;
                let value = serde_json::from_str::<serde_json::Value>(v)
                    .ok()
                    .filter(|v| v.is_number() || v.is_boolean())
                    .unwrap_or_else(|| serde_json::Value::String(v.to_owned()));
                map.insert(k.to_owned(), value);
            }
            let body = client
                .post(
                    &format!("/api/v1/devices/{id}/commands"),
                    serde_json::json!({ "name": name, "args": map, "timeout_secs": timeout }),
                )
                .await?;
            let cid = body["id"].as_str().context("command id in answer")?.to_owned();
            if no_wait {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            eprintln!("command {cid} sent; waiting for the device's answer (up to {timeout} s)");
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout + 2);
            loop {
                let c = client.get(&format!("/api/v1/devices/{id}/commands/{cid}")).await?;
                let status = c["status"].as_str().unwrap_or("?");
                if !matches!(status, "pending" | "sent") || tokio::time::Instant::now() > deadline {
                    println!("{}", serde_json::to_string_pretty(&c)?);
                    if status != "ok" {
                        bail!("command ended as {status}");
                    }
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
