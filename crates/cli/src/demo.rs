//! `hearth demo`: the whole foundation in one command. Starts a hub on the embedded default (SQLite, loopback),
//! sets up its owner, manufactures devices through the API, enrols them through the real path (their own keys,
//! CSRs, single-use tokens), streams their telemetry over mutual TLS, and prints what to look at. Then it rolls out
//! a signed update: the demo plays the maker (offline keys, a TUF root, two signed releases with SBOMs), the
//! devices start on the first release and take the second in waves, each health-checked and committed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::HubArgs;
use crate::client::HubClient;

/// Marks a directory the demo created, so it may clear it on the next run.
const MARKER: &str = ".hearth-demo";
/// The demo owner's email (a reserved domain: nothing is ever sent there).
const DEMO_OWNER: &str = "owner@demo.invalid";

#[derive(Args)]
pub struct DemoArgs {
    /// How many simulated devices.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Seconds between telemetry samples of each device.
    #[arg(long, default_value_t = 2)]
    interval_secs: u64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration_secs: u64,
    /// Demo data directory (cleared at start if an earlier demo made it).
    #[arg(long, default_value = "hearth-demo")]
    data_dir: PathBuf,
    /// HTTPS port on 127.0.0.1 (a free one is chosen if it is taken).
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    /// MQTTS port on 127.0.0.1 (a free one is chosen if it is taken).
    #[arg(long, default_value_t = 8883)]
    mqtts_port: u16,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.devices == 0 || args.devices > 10_000 {
        bail!("--devices must be 1 to 10000");
    }
    prepare_dir(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;

    let mut config = hearth_hub::Config { data_dir: data_dir.join("hub"), ..Default::default() };
    config.listen.https = free_or_any(args.https_port).await;
    config.listen.mqtts = free_or_any(args.mqtts_port).await;
    config.public.hostnames = vec!["127.0.0.1".into(), "localhost".into()];
    // A demo on loopback has no mail relay: sign-up and reset links go to the log (a loud warning says so).
    config.mail.dev_log_links_insecure = true;
    eprintln!("[1/5] starting the hub (SQLite, TLS only, loopback) in {}", data_dir.display());
    let hub = hearth_hub::start(config).await.context("the hub could not start")?;
    let https_url = format!("https://127.0.0.1:{}", hub.https_addr.port());
    let ca = hub.server_ca_path.clone();

    eprintln!("[2/5] setting up the owner with the one-time setup token");
    let setup = hub.setup_token.as_ref().context("a new hub has a setup token")?.expose().to_owned();
    let mut hub_args = HubArgs { hub: https_url.clone(), ca: ca.clone(), token: None };
    // The demo's owner gets a random password, printed once at the end (a real hub's owner chooses their own).
    let owner_password = hearth_hub::secrets::random_base32(24).context("no randomness for the owner password")?;
    let token = HubClient::new(&hub_args)?.setup(&setup, DEMO_OWNER, &owner_password).await?;
    hub_args.token = Some(token.clone());
    let client = HubClient::new(&hub_args)?;

    eprintln!("[3/5] manufacturing {} devices (+2 spares for your own MQTT clients)", args.devices);
    let made = client.manufacture("demo-thermostat", args.devices).await?;
    let factory_dir = data_dir.join("factory");
    crate::write_factory_output(&made, &factory_dir, None)?;
    let bootstraps: Vec<PathBuf> =
        made.devices.iter().map(|d| factory_dir.join(format!("{}.json", d.device_id))).collect();
    // Two spare devices, one per Mosquitto client printed below: a second connection of one device would take
    // over the first (0x8E) and the first client would exit. Their own model: they run no updater, so the
    // thermostats' rollout is not theirs.
    let spare_made = client.manufacture("demo-spare", 2).await?;
    let spare_dir = data_dir.join("factory-spares");
    crate::write_factory_output(&spare_made, &spare_dir, None)?;
    let mut spare_bootstraps: Vec<PathBuf> =
        spare_made.devices.iter().map(|d| spare_dir.join(format!("{}.json", d.device_id))).collect();
    let mut spares = Vec::new();
    for name in ["spare-listener", "spare-sender"] {
        let bootstrap = spare_bootstraps.pop().context("the spare devices")?;
        // Each enrols through the agent's own code path; its key and certificate stay on disk.
        let dir = data_dir.join(name);
        let boot = hearth_agent::enrol::read_bootstrap(&bootstrap)?;
        let key = Arc::new(hearth_agent::keystore::FileKeyStore::open_or_create(&dir)?);
        let identity = hearth_agent::enrol::enrol(&dir, &boot, key).await.context("while enrolling a spare device")?;
        std::fs::remove_file(&bootstrap)?;
        spares.push((identity.device_id().clone(), dir));
    }

    eprintln!("[4/5] signing two releases as the maker would (offline keys, TUF root, SBOM) and publishing them");
    let maker = sign_demo_releases(&client, &data_dir.join("maker")).await?;

    eprintln!(
        "[5/5] starting {} simulated devices: each generates its key, enrols, connects with mutual TLS",
        args.devices
    );
    let mut fleet_config = hearth_simulator::FleetConfig::new(bootstraps, data_dir.join("devices"));
    fleet_config.interval = Duration::from_secs(args.interval_secs.max(1));
    fleet_config.updates = Some(hearth_simulator::FleetUpdates {
        trust_root: maker.root.clone(),
        factory_image: maker.factory_image.clone(),
        factory: maker.factory.clone(),
        hardware: "rev-a".into(),
        check_interval: Some(Duration::from_secs(30)),
    });
    let fleet = hearth_simulator::Fleet::start(fleet_config);

    let mqtt_port = hub.mqtt_addr.port();
    let first_device = made.devices.first().map(|d| d.device_id.to_string()).unwrap_or_default();
    // The binary that runs now: after a cargo build it is not on PATH.
    let hearth = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "hearth".into());
    let ca = ca.display();
    println!();
    println!("Hearth demo is running.");
    println!("  API:             {https_url}  (OpenAPI: {https_url}/api/v1/openapi.json)");
    println!("  MQTTS:           127.0.0.1:{mqtt_port}  (mutual TLS only; no plaintext port exists)");
    println!(
        "  web app:         {https_url}/  (the browser warns: the hub's own CA signed it; see the server CA below)"
    );
    println!(
        "  owner account:   {DEMO_OWNER}  password {owner_password}  (sign in on the web app, or POST /api/v1/sessions)"
    );
    println!("  API token:       {token}");
    println!("  server CA:       {ca}");
    println!();
    println!("Look at the devices and their telemetry:");
    println!("  curl --cacert {ca} -H 'Authorization: Bearer {token}' {https_url}/api/v1/devices");
    println!(
        "  curl --cacert {ca} -H 'Authorization: Bearer {token}' '{https_url}/api/v1/devices/{first_device}/telemetry?limit=5'"
    );
    println!("Or with the CLI:");
    println!("  export HEARTH_HUB={https_url} HEARTH_HUB_CA={ca} HEARTH_TOKEN={token}");
    println!("  {hearth} device list;  {hearth} device command {first_device} ping");
    println!();
    let (listener, listener_dir) = &spares[0];
    let (sender, sender_dir) = &spares[1];
    let (ld, sd) = (listener_dir.display(), sender_dir.display());
    println!("Be two spare devices with Mosquitto's clients (their keys never left {ld} and {sd}).");
    println!("{listener} waits for commands (in one terminal):");
    println!(
        "  mosquitto_sub -h 127.0.0.1 -p {mqtt_port} --cafile {ca} --cert {ld}/device.crt --key {ld}/device.key -i {listener} -V mqttv5 -q 1 -t devices/{listener}/commands -v"
    );
    println!("and, in another, sends it a command (Mosquitto's client shows it but cannot answer, so no waiting)");
    println!("and has {sender} send a reading:");
    println!("  {hearth} device command {listener} ping --no-wait");
    println!(
        "  mosquitto_pub -h 127.0.0.1 -p {mqtt_port} --cafile {ca} --cert {sd}/device.crt --key {sd}/device.key -i {sender} -V mqttv5 -q 1 -t devices/{sender}/telemetry -m '{{\"v\":1,\"seq\":1,\"ts\":1764000000000,\"metrics\":{{\"temperature_c\":21.5}}}}'"
    );
    println!();
    if args.duration_secs > 0 {
        println!("Stopping after {} s (Ctrl-C stops earlier).", args.duration_secs);
    } else {
        println!("Ctrl-C stops the demo.");
    }

    let deadline =
        (args.duration_secs > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.duration_secs));
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut rollout: Option<String> = None;
    let mut rollout_done = false;
    loop {
        let stop_at = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = stop_at => break,
            _ = tick.tick() => {
                let t = fleet.totals();
                let connected = hub.state.routing.connected();
                eprintln!(
                    "  devices connected {connected}/{}  messages queued {}  stored+acknowledged {}  commands answered {}",
                    args.devices, t.queued, t.acked, t.commands_handled
                );
                // Once every device is up, the update goes out: a canary, then half, then all.
                if rollout.is_none() && connected >= args.devices {
                    let plan = serde_json::json!({"release": maker.update_name, "canary": 1, "percents": [50, 100]});
                    match client.post("/api/v1/rollouts", plan).await {
                        Ok(v) => {
                            let id = v["id"].as_str().unwrap_or("").to_owned();
                            println!("Rolling out {} (a security release) as rollout {id}: watch it with", maker.update_name);
                            println!("  {hearth} rollout list   (or GET {https_url}/api/v1/rollouts/{id})");
                            rollout = Some(id);
                        }
                        Err(e) => eprintln!("  could not start the rollout: {e:#}"),
                    }
                }
                if let (Some(id), false) = (&rollout, rollout_done)
                    && let Ok(v) = client.get(&format!("/api/v1/rollouts/{id}")).await
                {
                    eprintln!("  rollout {id}: {} wave {}/{} {}", v["state"].as_str().unwrap_or(""), v["wave"].as_i64().unwrap_or(-1) + 1, v["waves"], v["counts"]);
                    if v["state"] == "completed" {
                        rollout_done = true;
                        println!("Rollout {id} completed: every device runs {} and reported it.", maker.update_name);
                    }
                }
            }
        }
    }
    eprintln!("stopping devices and hub");
    let report = fleet.stop().await;
    hub.shutdown().await;
    println!(
        "Demo finished: {} of {} devices ran, {} messages acknowledged after durable storage, {} lost to queue overflow.",
        report.started, report.agents, report.totals.acked, report.totals.dropped
    );
    for e in &report.errors {
        println!("  device error: {e}");
    }
    Ok(())
}

/// What the demo maker signed.
struct DemoMaker {
    /// The root devices trust first.
    root: PathBuf,
    /// The factory image (release 1.0.0) and its metadata.
    factory_image: PathBuf,
    factory: hearth_agent::update::SlotImage,
    /// The update's target name (release 1.1.0).
    update_name: String,
}

/// Plays the maker: keys (kept in the demo directory here; a real maker keeps root and targets keys offline),
/// root version 1 with the hub's online keys, release 1.0.0 (the devices' factory image) and 1.1.0 (a security
/// release), each with an SBOM; uploads and publishes them, and sets the model's support period.
async fn sign_demo_releases(client: &HubClient, dir: &std::path::Path) -> Result<DemoMaker> {
    use hearth_release::keys::KeyFile;
    std::fs::create_dir_all(dir)?;
    let keys: Vec<PathBuf> =
        ["root-1", "root-2", "targets"].iter().map(|k| dir.join(format!("keys/{k}.pem"))).collect();
    for k in &keys {
        KeyFile::generate(k)?;
    }
    let hub_keys: hearth_release::HubKeys = serde_json::from_value(client.get("/api/v1/updates/keys").await?)?;
    let source = |p: &PathBuf| Box::new(KeyFile::new(p)) as Box<dyn tough::key_source::KeySource>;
    let in_days = |d: i64| jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * d);
    let plan = hearth_release::RootPlan {
        root: vec![KeyFile::new(&keys[0]).public()?, KeyFile::new(&keys[1]).public()?],
        root_threshold: 2,
        targets: vec![KeyFile::new(&keys[2]).public()?],
        targets_threshold: 1,
        hub: hub_keys,
        expires: in_days(365),
    };
    let repo = hearth_release::Repo::init(&dir.join("repo"), &plan, &[source(&keys[0]), source(&keys[1])]).await?;
    let mut names = Vec::new();
    for (version, security_version, fixes) in
        [("1.0.0", 1, ""), ("1.1.0", 2, "Closes a way to crash the thermostat over the local network.")]
    {
        let image = dir.join(format!("demo-thermostat-{version}.img"));
        std::fs::write(&image, format!("demo thermostat firmware {version}\n").repeat(20_000))?;
        let sbom = dir.join(format!("demo-thermostat-{version}.cdx.json"));
        std::fs::write(
            &sbom,
            serde_json::to_vec_pretty(&serde_json::json!({
                "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
                "metadata": {"component": {"type": "firmware", "name": "demo-thermostat", "version": version}},
                "components": []
            }))?,
        )?;
        let name = format!("demo-thermostat-{version}.img");
        let info = hearth_proto::release::ReleaseInfo {
            model: hearth_proto::ModelId::parse("demo-thermostat")?,
            version: version.into(),
            hardware: vec!["rev-a".into()],
            security_version,
            kind: if fixes.is_empty() {
                hearth_proto::release::ReleaseKind::Feature
            } else {
                hearth_proto::release::ReleaseKind::Security
            },
            disruption: hearth_proto::release::Disruption { restarts: true, seconds: 5 },
            fixes: fixes.into(),
            notes: format!("Demo release {version}."),
            sbom: None,
        };
        let release =
            hearth_release::NewRelease { image: &image, name: &name, info, sbom: Some(&sbom), expires: in_days(365) };
        repo.add_release(release, &[source(&keys[2])]).await?;
        names.push((name, image, security_version, version));
    }
    crate::release::upload(client, &repo).await?;
    let until = jiff::Timestamp::now().as_millisecond() + 3 * 365 * 86_400_000;
    client
        .post(
            "/api/v1/models/demo-thermostat/support",
            serde_json::json!({"support_until": until,
            "policy": "Security updates for at least three years after the last unit is sold."}),
        )
        .await?;
    let (factory_name, factory_image, sv, version) = names[0].clone();
    let sha = hearth_agent::update::download::sha256_file(&factory_image)?;
    Ok(DemoMaker {
        root: repo.dir().join("1.root.json"),
        factory_image,
        factory: hearth_agent::update::SlotImage {
            target: factory_name,
            version: version.into(),
            security_version: sv,
            sha256: sha,
        },
        update_name: names[1].0.clone(),
    })
}

fn prepare_dir(dir: &std::path::Path) -> Result<()> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!("{} exists and was not made by `hearth demo`; choose another --data-dir", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("while clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("while creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by hearth demo; cleared by the next demo run\n")?;
    Ok(())
}

async fn free_or_any(port: u16) -> std::net::SocketAddr {
    let wanted = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match tokio::net::TcpListener::bind(wanted).await {
        Ok(_) => wanted,
        Err(_) => {
            eprintln!("  port {port} is taken; using a free port instead");
            std::net::SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}
