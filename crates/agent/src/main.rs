//! The `hearth-agent` binary: parses flags, sets up logging and signal handling, and runs one
//! [`hearth_agent::Agent`] until SIGINT or SIGTERM. Everything else lives in the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hearth_agent::update::{DirSlots, ExternalInstaller, Installer, SlotImage, UpdateConfig};
use hearth_agent::{Agent, AgentConfig, Stopped};
use tokio::signal::unix::{SignalKind, signal};

/// The Hearth device agent: enrols with the hub once, then sends telemetry over MQTT with mutual TLS,
/// keeps unsent messages in a persistent queue, and answers commands. Opens no listening port.
#[derive(Debug, Parser)]
#[command(name = "hearth-agent", version)]
struct Args {
    /// Directory for the device key, certificate, hub settings and message queue (created if missing).
    #[arg(long, env = "HEARTH_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,

    /// Factory bootstrap file (JSON) used for the first enrolment; not needed once enrolled.
    #[arg(long, env = "HEARTH_BOOTSTRAP", value_name = "FILE")]
    bootstrap: Option<PathBuf>,

    /// Seconds between telemetry samples (1..=86400); the hub may change it with `set_interval`.
    #[arg(long, env = "HEARTH_INTERVAL_SECS", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    interval_secs: u64,

    /// Most messages kept while the hub is unreachable; beyond it the oldest are dropped (and counted).
    #[arg(long, env = "HEARTH_QUEUE_CAPACITY", value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    queue_capacity: u64,

    /// Over-the-air updates into directory A/B slots with a simulated bootloader (tests, demo, simulation).
    #[arg(long, env = "HEARTH_SLOTS", value_name = "DIR", conflicts_with = "installer_command")]
    slots: Option<PathBuf>,

    /// With --slots: the factory image for the first boot, a directory holding `image` and its `slot.json`.
    #[arg(long, env = "HEARTH_FACTORY_SLOT", value_name = "DIR", requires = "slots")]
    factory_slot: Option<PathBuf>,

    /// Over-the-air updates through this installer program (RAUC-style: install FILE, status, mark-good,
    /// mark-bad, reboot).
    #[arg(long, env = "HEARTH_INSTALLER", value_name = "PATH")]
    installer_command: Option<PathBuf>,

    /// The TUF root this device trusts at first (shipped with its software).
    #[arg(long, env = "HEARTH_UPDATE_ROOT", value_name = "FILE")]
    update_root: Option<PathBuf>,

    /// This device's hardware revision, matched against a release's hardware list.
    #[arg(long, env = "HEARTH_HARDWARE", value_name = "REV", default_value = "rev-a")]
    hardware: String,

    /// Run on the first boot of a new image (HEARTH_IMAGE = its file); exit 0 means healthy.
    #[arg(long, env = "HEARTH_HEALTH_COMMAND", value_name = "PATH")]
    health_command: Option<PathBuf>,

    /// Seconds a new image has to get back in contact with the hub before it is rolled back.
    #[arg(long, env = "HEARTH_HEALTH_TIMEOUT_SECS", value_name = "N", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    health_timeout_secs: u64,

    /// Boots a new image gets before the bootloader goes back to the previous one.
    #[arg(long, env = "HEARTH_BOOT_TRIES", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    boot_tries: u32,

    /// Check for updates at least this often, seconds (the hub says how often too).
    #[arg(long, env = "HEARTH_UPDATE_CHECK_SECS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    update_check_secs: Option<u64>,
}

impl Args {
    /// The update settings the flags ask for, if any.
    fn updates(&self) -> anyhow::Result<Option<UpdateConfig>> {
        let installer: std::sync::Arc<dyn Installer> = match (&self.slots, &self.installer_command) {
            (Some(dir), _) => {
                let factory = match &self.factory_slot {
                    Some(f) => {
                        let meta: SlotImage = serde_json::from_slice(
                            &std::fs::read(f.join("slot.json"))
                                .with_context(|| format!("reading {}/slot.json", f.display()))?,
                        )
                        .with_context(|| format!("{}/slot.json", f.display()))?;
                        Some((f.join("image"), meta))
                    }
                    None => None,
                };
                std::sync::Arc::new(DirSlots::open(dir, factory.as_ref().map(|(p, m)| (p.as_path(), m)))?)
            }
            (None, Some(cmd)) => std::sync::Arc::new(ExternalInstaller::new(cmd)),
            (None, None) => return Ok(None),
        };
        let mut config = UpdateConfig::new(installer);
        config.hardware = self.hardware.clone();
        config.trust_root = self.update_root.clone();
        config.health_command = self.health_command.clone();
        config.health_timeout = Duration::from_secs(self.health_timeout_secs);
        config.boot_tries = self.boot_tries;
        config.max_check_interval = self.update_check_secs.map(Duration::from_secs);
        Ok(Some(config))
    }
}

// One device, one connection: a single-threaded runtime keeps the agent's memory and threads small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut sigint = signal(SignalKind::interrupt()).context("while installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("while installing the SIGTERM handler")?;
    // Each turn is a boot: an update that switched slots (or rolled back) starts the agent again.
    loop {
        let mut config = AgentConfig::new(args.state_dir.clone());
        config.bootstrap_path = args.bootstrap.clone();
        config.interval = Duration::from_secs(args.interval_secs);
        config.queue_capacity = args.queue_capacity;
        config.updates = args.updates().context("while setting up updates")?;

        let (stop, shutdown) = tokio::sync::watch::channel(false);
        // Enrolment may wait on the network for a long time; a signal must still end it.
        let agent = tokio::select! {
            agent = Agent::new(config) => agent.context("while starting the agent")?,
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        };
        tracing::info!(device = %agent.device_id(), "agent started");
        let mut run = tokio::spawn(agent.run(shutdown));
        tokio::select! {
            // The agent stops on its own for a local failure (its disk), or to restart after an update.
            ended = &mut run => {
                match ended.context("while running the agent")?.context("while running the agent")? {
                    Stopped::Reboot => {
                        tracing::warn!("restarting into the image the bootloader chooses");
                        continue;
                    }
                    Stopped::Shutdown => return Ok(()),
                }
            }
            _ = sigint.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = sigterm.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
        let _ = stop.send(true);
        run.await.context("while waiting for the agent to stop")?.context("while running the agent")?;
        return Ok(());
    }
}
