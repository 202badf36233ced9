//! The `hearth-agent` binary: parses flags, sets up logging and signal handling, and runs one
//! [`hearth_agent::Agent`] until SIGINT or SIGTERM. Everything else lives in the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hearth_agent::{Agent, AgentConfig};
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

    let mut config = AgentConfig::new(args.state_dir);
    config.bootstrap_path = args.bootstrap;
    config.interval = Duration::from_secs(args.interval_secs);
    config.queue_capacity = args.queue_capacity;

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt()).context("while installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("while installing the SIGTERM handler")?;

    // Enrolment may wait on the network for a long time; a signal must still end it.
    let agent = tokio::select! {
        agent = Agent::new(config) => agent.context("while starting the agent")?,
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    };
    tracing::info!(device = %agent.device_id(), "agent started");
    let mut run = tokio::spawn(agent.run(shutdown));
    tokio::select! {
        // The agent stops on its own only for a local failure (its disk); report it.
        ended = &mut run => {
            return ended.context("while running the agent")?.context("while running the agent");
        }
        _ = sigint.recv() => tracing::info!("SIGINT received; shutting down"),
        _ = sigterm.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
    let _ = stop.send(true);
    run.await.context("while waiting for the agent to stop")?.context("while running the agent")?;
    Ok(())
}
