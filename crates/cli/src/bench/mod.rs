//! `hearth bench`: Hearth's load generator and its side-by-side comparison with Mosquitto.
//!
//! The tool starts both systems itself on 127.0.0.1 with the same PKI and equivalent security (mutual TLS 1.3,
//! per-device ACL), drives thousands of devices each with its own certificate, and reports Hearth / Mosquitto
//! ratios. Scenarios: connect storm (connect time, connects/s, server CPU per handshake), idle capacity (server
//! RSS per connection), QoS 1 fan-in at rising arrival rates until PUBACK p99 passes 25 ms (Hearth acknowledges
//! only after a durable commit; Mosquitto, non-durable, acknowledges from memory), and command round trip.
//! Every run stops on its own durations and counts. Results go to a table and a JSON file; timings are never
//! asserted (see docs/BENCHMARKS.md for method and figures).

mod downloads;
mod load;
mod stats;
mod store;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use load::{CommandClock, Phase, Report, Wiring, spawn_device};
use stats::{cpu_us, histogram, median, ms, rss_kib, summary};
use target::{Deployment, DeviceCred, Kind, Lab, Target};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// A seconds-long functional run against Hearth only (for CI): connects, publishes, answers commands and
    /// checks that every acknowledged message was stored once. Reports figures but asserts no timing.
    Smoke {
        /// Devices.
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// JSON output file.
        #[arg(long, default_value = "bench-smoke.json")]
        out: PathBuf,
    },
    /// The full comparison.
    Run(RunArgs),
    /// Many devices download one signed update image at once over mutual TLS, from the hub and from nginx
    /// serving the same file with the same TLS demands: aggregate throughput, per-download times, server RSS.
    Downloads {
        /// Concurrent devices (one connection each).
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Image size, MiB.
        #[arg(long, default_value_t = 8)]
        image_mib: usize,
        /// Rounds (medians reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Measure the hub only (no nginx).
        #[arg(long)]
        no_peer: bool,
        /// JSON output file.
        #[arg(long, default_value = "bench-downloads.json")]
        out: PathBuf,
    },
    /// The storage engines' commit capacity alone (no TLS, no MQTT): batches through the hub's store.
    Store {
        /// Also measure PostgreSQL on this server (a database `hearth_bench_store` is made there).
        #[arg(long)]
        postgres: Option<String>,
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000,4096")]
        batches: Vec<usize>,
        /// Devices the records are spread over.
        #[arg(long, default_value_t = 200)]
        devices: usize,
        /// Records per measurement.
        #[arg(long, default_value_t = 40_000)]
        records: usize,
        /// Measurements per batch size (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// JSON output file.
        #[arg(long, default_value = "bench-store.json")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Both,
    Hearth,
    Mosquitto,
}

#[derive(Args)]
struct RunArgs {
    /// Systems to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    target: Which,
    /// Connections for the connect storm and idle capacity.
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    /// Connection attempts per second in the storm (open loop).
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Seconds to hold the idle connections before measuring memory.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Devices publishing in the fan-in scenario.
    #[arg(long, default_value_t = 200)]
    fanin_devices: usize,
    /// Aggregate QoS 1 arrival rates to step through, messages/s.
    #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000,20000,40000,80000")]
    rates: Vec<f64>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// Devices receiving commands.
    #[arg(long, default_value_t = 100)]
    command_devices: usize,
    /// Commands per second (open loop).
    #[arg(long, default_value_t = 500.0)]
    command_rate: f64,
    /// Seconds of commands.
    #[arg(long, default_value_t = 5)]
    command_secs: u64,
    /// Repeat the whole comparison and report medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Run the hub on this PostgreSQL server instead of its embedded SQLite: postgres://USER@HOST/DATABASE.
    /// Each round creates its own database `hearth_bench_<n>` there (the URL's database is only connected to).
    #[arg(long)]
    postgres: Option<String>,
    /// NATS with JetStream between hub nodes (needed with --nodes above 1): nats://HOST:PORT.
    #[arg(long)]
    nats: Option<String>,
    /// Hub processes sharing the PostgreSQL database; devices are spread over them in turn (CPU and memory
    /// figures are summed over the nodes).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// JSON output file.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
}

/// Entry point.
pub async fn run(args: BenchArgs) -> Result<()> {
    match args.mode {
        Mode::Smoke { devices, seconds, out } => smoke(devices, seconds, out).await,
        Mode::Run(a) => compare(a).await,
        Mode::Downloads { devices, image_mib, repeat, no_peer, out } => {
            downloads::run(downloads::DownloadBench { devices, image_mib, repeat, peer: !no_peer, out }).await
        }
        Mode::Store { postgres, batches, devices, records, repeat, out } => {
            if devices == 0 || repeat == 0 || batches.contains(&0) {
                bail!("--devices, --repeat and every --batches value must be at least 1");
            }
            store::run(store::StoreBench { postgres, batches, devices, records, repeat, out }).await
        }
    }
}

type Metrics = BTreeMap<String, f64>;

async fn smoke(devices: usize, seconds: u64, out: PathBuf) -> Result<()> {
    let work = tempfile::tempdir()?;
    eprintln!("bench smoke: starting a hub");
    let lab = Lab::start_on(work.path(), &Deployment::default(), 0).await?;
    let creds = lab.devices("smoke", devices, true).await?;
    let cmd_creds = lab.devices("", devices.min(5), true).await?;
    let mut m = Metrics::new();
    let mut details = serde_json::Map::new();
    connect_storm(&lab.hub, &creds, 100.0, 1, &mut m, &mut details).await?;
    let rate = (devices as f64 * 10.0).max(10.0);
    fanin(&lab.hub, &creds, &[rate], seconds, &mut m, &mut details).await?;
    let acked = m.get("fanin_acked_total").copied().unwrap_or(0.0) as i64;
    let stored = stored_count(&lab, &creds).await?;
    let controller = lab.devices(CONTROLLER, 1, false).await?.remove(0);
    commands(&lab, &lab.hub, &cmd_creds, &controller, CommandLoad { rate: 20.0, secs: 2 }, &mut m, &mut details)
        .await?;
    let report = json!({ "mode": "smoke", "metrics": m, "details": details, "stored": stored });
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "bench smoke: {} connected, {acked} acknowledged, {stored} stored, {} commands round-tripped -> {}",
        m.get("connect_ok").copied().unwrap_or(0.0),
        m.get("command_done").copied().unwrap_or(0.0),
        out.display()
    );
    if m.get("connect_ok").copied().unwrap_or(0.0) < devices as f64 || acked == 0 || stored != acked {
        bail!("smoke run failed: every device must connect and every acknowledged message must be stored once");
    }
    Ok(())
}

async fn compare(a: RunArgs) -> Result<()> {
    // Each connection is one open file here and one in the server (a separate process with the same limit).
    let needed = a.devices.max(a.fanin_devices) as u64 + 500;
    let limit = stats::nofile_limit();
    if limit < needed {
        bail!(
            "{} connections need about {needed} open files per process but the limit is {limit}; raise it \
             (`prlimit --nofile={needed}:{needed} hearth bench ...`, needs CAP_SYS_RESOURCE beyond the hard limit) \
             or use fewer --devices",
            a.devices
        );
    }
    if a.rates.is_empty() || a.rates.iter().any(|r| *r <= 0.0) {
        bail!("--rates must be positive numbers");
    }
    let kinds: Vec<Kind> = match a.target {
        Which::Both => vec![Kind::Hearth, Kind::Mosquitto],
        Which::Hearth => vec![Kind::Hearth],
        Which::Mosquitto => vec![Kind::Mosquitto],
    };
    let mut runs: BTreeMap<&'static str, Vec<Metrics>> = BTreeMap::new();
    let mut all_details = Vec::new();
    for round in 0..a.repeat {
        let work = tempfile::tempdir()?;
        eprintln!(
            "== round {}/{}: preparing a hub and {} device certificates",
            round + 1,
            a.repeat,
            a.devices.max(a.fanin_devices)
        );
        let deployment = Deployment { postgres: a.postgres.clone(), nats: a.nats.clone(), nodes: a.nodes };
        let lab = Lab::start_on(work.path(), &deployment, round).await?;
        let creds = lab.devices("bench", a.devices.max(a.fanin_devices), true).await?;
        let cmd_creds = lab.devices("", a.command_devices, true).await?;
        let controller = lab.devices(CONTROLLER, 1, false).await?.remove(0);
        for kind in &kinds {
            let target = match kind {
                Kind::Hearth => None,
                Kind::Mosquitto => Some(lab.mosquitto(&controller.id)?),
                Kind::Nginx => bail!("nginx is the peer of `hearth bench downloads` only"),
            };
            let t = target.as_ref().unwrap_or(&lab.hub);
            eprintln!("-- {} (pid {})", kind.name(), t.pid());
            let mut m = Metrics::new();
            let mut details = serde_json::Map::new();
            m.insert("rss_start_kib".into(), rss_sum(t) as f64);
            connect_storm(t, &creds[..a.devices], a.connect_rate, a.hold_secs, &mut m, &mut details).await?;
            fanin(t, &creds[..a.fanin_devices], &a.rates, a.step_secs, &mut m, &mut details).await?;
            if *kind == Kind::Hearth {
                let acked = m.get("fanin_acked_total").copied().unwrap_or(0.0) as i64;
                let stored = stored_count(&lab, &creds[..a.fanin_devices]).await?;
                details.insert("stored_equals_acked".into(), json!(stored == acked));
                m.insert("fanin_stored_total".into(), stored as f64);
            }
            let load = CommandLoad { rate: a.command_rate, secs: a.command_secs };
            commands(&lab, t, &cmd_creds, &controller, load, &mut m, &mut details).await?;
            m.insert("rss_end_kib".into(), rss_sum(t) as f64);
            all_details.push(json!({ "round": round, "target": kind.name(), "metrics": m, "details": details }));
            runs.entry(kind.name()).or_default().push(m);
        }
    }
    let medians = medians(&runs);
    print_table(&medians);
    let report = json!({
        "date": hearth_hub::clock::Clock::system().now_ms(),
        "machine": machine(),
        "args": { "devices": a.devices, "connect_rate": a.connect_rate, "fanin_devices": a.fanin_devices,
                  "rates": a.rates, "step_secs": a.step_secs, "command_devices": a.command_devices,
                  "command_rate": a.command_rate, "repeat": a.repeat },
        "medians": medians,
        "runs": all_details,
    });
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("while writing {}", a.out.display()))?;
    eprintln!("results written to {}", a.out.display());
    Ok(())
}

const CONTROLLER: &str = "bench-controller";

/// The command scenario's offered load.
#[derive(Clone, Copy)]
struct CommandLoad {
    /// Commands per second (open loop).
    rate: f64,
    /// Seconds of commands.
    secs: u64,
}

fn spawn_all(
    target: &Target,
    creds: &[DeviceCred],
    rate: f64,
    subscribe: bool,
    clock: &Arc<CommandClock>,
) -> (watch::Sender<Phase>, mpsc::UnboundedReceiver<Report>, Instant) {
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let (tx, rx) = mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(100);
    for (i, cred) in creds.iter().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        let wiring = Wiring {
            target: target.addr_for(i),
            phase: phase_rx.clone(),
            reports: tx.clone(),
            clock: clock.clone(),
            subscribe,
        };
        spawn_device(i, cred.clone(), at, wiring);
    }
    (phase_tx, rx, start)
}

/// Waits for `n` connect reports, printing progress; returns (ok, failures, histogram, first error).
async fn collect_connects(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    n: usize,
    label: &str,
) -> (usize, usize, hdrhistogram::Histogram<u64>, Option<String>) {
    let mut h = histogram();
    let (mut ok, mut failed, mut first_err) = (0, 0, None);
    let mut last_print = Instant::now();
    while ok + failed < n {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Report::Connected(Ok(d)))) => {
                ok += 1;
                let _ = h.record(d.as_micros().max(1) as u64);
            }
            Ok(Some(Report::Connected(Err(e)))) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            eprintln!("   {label}: {ok}/{n} connected, {failed} failed");
            last_print = Instant::now();
        }
    }
    (ok, failed, h, first_err)
}

async fn connect_storm(
    t: &Target,
    creds: &[DeviceCred],
    rate: f64,
    hold_secs: u64,
    m: &mut Metrics,
    details: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let rss0 = rss_sum(t);
    let cpu0 = cpu_sum(t);
    let clock = Arc::new(CommandClock::default());
    let (phase, mut rx, start) = spawn_all(t, creds, rate, false, &clock);
    let (ok, failed, h, err) = collect_connects(&mut rx, creds.len(), "connect storm").await;
    let elapsed = start.elapsed().as_secs_f64().max(0.001);
    let cpu = cpu_sum(t).saturating_sub(cpu0);
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let rss_idle = rss_sum(t);
    let _ = phase.send(Phase::Stop);
    eprintln!("   connect storm: {ok} connected, {failed} failed in {elapsed:.1} s; holding done");
    m.insert("connect_ok".into(), ok as f64);
    m.insert("connect_failed".into(), failed as f64);
    m.insert("connects_per_s".into(), ok as f64 / elapsed);
    m.insert("connect_p50_ms".into(), ms(h.value_at_quantile(0.5)));
    m.insert("connect_p99_ms".into(), ms(h.value_at_quantile(0.99)));
    m.insert("cpu_us_per_connect".into(), if ok > 0 { cpu as f64 / ok as f64 } else { 0.0 });
    m.insert("rss_idle_kib".into(), rss_idle as f64);
    m.insert(
        "rss_kib_per_connection".into(),
        if ok > 0 { rss_idle.saturating_sub(rss0) as f64 / ok as f64 } else { 0.0 },
    );
    details.insert("connect_latency".into(), summary(&h));
    if let Some(e) = err {
        details.insert("connect_first_error".into(), json!(e));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// CPU time of every process of the system, µs.
fn cpu_sum(t: &Target) -> u64 {
    t.pids().into_iter().map(cpu_us).sum()
}

/// Resident memory of every process of the system, KiB.
fn rss_sum(t: &Target) -> u64 {
    t.pids().into_iter().map(rss_kib).sum()
}

async fn fanin(
    t: &Target,
    creds: &[DeviceCred],
    rates: &[f64],
    step_secs: u64,
    m: &mut Metrics,
    details: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let clock = Arc::new(CommandClock::default());
    let (phase, mut rx, _) = spawn_all(t, creds, 1000.0, false, &clock);
    let (ok, _, _, err) = collect_connects(&mut rx, creds.len(), "fan-in connect").await;
    if ok == 0 {
        bail!("no fan-in device could connect: {}", err.unwrap_or_default());
    }
    let mut steps = Vec::new();
    let mut best_rate = 0.0f64;
    let mut acked_total = 0u64;
    for (i, rate) in rates.iter().enumerate() {
        let cpu0 = cpu_sum(t);
        let until = Instant::now() + Duration::from_secs(step_secs);
        let _ = phase.send(Phase::Publish { step: i as u32, per_device_rate: rate / ok as f64, until });
        let mut h = histogram();
        let (mut scheduled, mut acked, mut refused, mut unexpected, mut reports, mut lost) = (0, 0, 0, 0, 0, 0);
        while reports + lost < ok {
            match tokio::time::timeout(Duration::from_secs(step_secs + 30), rx.recv()).await {
                Ok(Some(Report::Published { step, latency, scheduled: s, acked: a, refused: r, unexpected: u }))
                    if step == i as u32 =>
                {
                    let _ = h.add(&latency);
                    scheduled += s;
                    acked += a;
                    refused += r;
                    unexpected += u;
                    reports += 1;
                }
                Ok(Some(Report::Lost(e))) => {
                    lost += 1;
                    details.entry("fanin_first_lost_connection").or_insert(json!(e));
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let cpu = cpu_sum(t).saturating_sub(cpu0);
        acked_total += acked;
        let achieved = acked as f64 / step_secs as f64;
        let p99 = ms(h.value_at_quantile(0.99));
        eprintln!(
            "   fan-in {rate:>8.0} msg/s offered: {achieved:>8.0} acked/s, PUBACK p50 {:.2} ms p99 {p99:.2} ms, refused {refused}, lost connections {lost}",
            ms(h.value_at_quantile(0.5))
        );
        steps.push(json!({ "offered_per_s": rate, "acked_per_s": achieved, "scheduled": scheduled, "acked": acked,
            "refused": refused, "unexpected_acks": unexpected, "lost_connections": lost, "latency": summary(&h),
            "cpu_us_per_message": if acked > 0 { cpu as f64 / acked as f64 } else { 0.0 } }));
        let kept_up = acked as f64 >= 0.95 * scheduled as f64 && refused == 0 && lost == 0;
        if p99 <= 25.0 && kept_up {
            best_rate = best_rate.max(achieved);
        }
        if p99 > 25.0 || !kept_up {
            break;
        }
    }
    let _ = phase.send(Phase::Stop);
    // The step at about half the best rate: its p99 is the "PUBACK p99 at half of max load" figure.
    let half = steps
        .iter()
        .rfind(|s| s["offered_per_s"].as_f64().unwrap_or(0.0) <= best_rate / 2.0 * 1.05)
        .or_else(|| steps.first());
    m.insert("fanin_max_rate_p99_le_25ms".into(), best_rate);
    m.insert("fanin_acked_total".into(), acked_total as f64);
    if let Some(s) = half {
        m.insert("fanin_p99_ms_at_half_max".into(), s["latency"]["p99_ms"].as_f64().unwrap_or(0.0));
        m.insert("fanin_half_rate".into(), s["offered_per_s"].as_f64().unwrap_or(0.0));
    }
    if let Some(best) = steps.iter().rfind(|s| s["acked_per_s"].as_f64().unwrap_or(0.0) <= best_rate + 1.0) {
        m.insert("cpu_us_per_message".into(), best["cpu_us_per_message"].as_f64().unwrap_or(0.0));
    }
    details.insert("fanin_steps".into(), json!(steps));
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn commands(
    lab: &Lab,
    t: &Target,
    creds: &[DeviceCred],
    controller: &DeviceCred,
    CommandLoad { rate, secs }: CommandLoad,
    m: &mut Metrics,
    details: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let clock = Arc::new(CommandClock::default());
    let (phase, mut rx, _) = spawn_all(t, creds, 1000.0, true, &clock);
    let (ok, _, _, _) = collect_connects(&mut rx, creds.len(), "command devices").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = creds.iter().map(|c| c.id.clone()).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut sent = 0u64;
    match t.kind {
        Kind::Nginx => bail!("nginx takes no commands"),
        Kind::Hearth => {
            let client = crate::client::HubClient::new(&crate::HubArgs {
                hub: lab.hub_url.clone(),
                ca: lab.server_ca.clone(),
                token: Some(lab.token.clone()),
            })?;
            let client = Arc::new(client);
            let mut tasks = tokio::task::JoinSet::new();
            while Instant::now() < end {
                let at = start + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(at).await;
                let id = ids[sent as usize % ids.len()].clone();
                if clock.issued.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), at).is_some() {
                    // The previous command to this device is still open; count it as not round-tripped.
                }
                let client = client.clone();
                tasks.spawn(async move {
                    let _ = client
                        .post(&format!("/api/v1/devices/{id}/commands"), json!({ "name": "ping", "timeout_secs": 30 }))
                        .await;
                });
                sent += 1;
            }
            while tasks.join_next().await.is_some() {}
        }
        Kind::Mosquitto => {
            let mut conn = controller_connect(t, controller).await?;
            while Instant::now() < end {
                let at = start + Duration::from_secs_f64(sent as f64 / rate);
                while Instant::now() < at {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        ev = conn.next_event() => { ev.map_err(|e| anyhow::anyhow!("controller: {e}"))?; }
                    }
                }
                let id = ids[sent as usize % ids.len()].clone();
                clock.issued.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), at);
                let payload = format!(
                    r#"{{"v":1,"id":"c{sent}","name":"ping","args":{{}},"expires_at":{}}}"#,
                    hearth_agent::agent::now_ms() + 30_000
                );
                if conn.can_publish() {
                    let _ = conn.publish(
                        format!("devices/{id}/commands"),
                        Bytes::from(payload),
                        hearth_agent::mqtt::QoS::AtLeastOnce,
                    );
                }
                sent += 1;
            }
            let drain = Instant::now() + Duration::from_secs(2);
            while Instant::now() < drain {
                tokio::select! {
                    _ = tokio::time::sleep_until(drain) => {}
                    ev = conn.next_event() => { if ev.is_err() { break; } }
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = phase.send(Phase::Stop);
    let h = clock.rtt.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(histogram);
    let done = h.len();
    eprintln!(
        "   commands: {sent} sent at {rate:.0}/s to {ok} devices, {done} round trips, p50 {:.2} ms p99 {:.2} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99))
    );
    m.insert("command_sent".into(), sent as f64);
    m.insert("command_done".into(), done as f64);
    m.insert("commands_per_s".into(), done as f64 / secs as f64);
    m.insert("command_p99_ms".into(), ms(h.value_at_quantile(0.99)));
    details.insert("command_rtt".into(), summary(&h));
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn controller_connect(
    t: &Target,
    cred: &DeviceCred,
) -> Result<hearth_agent::mqtt::MqttConnection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut opts = hearth_agent::mqtt::ConnectOptions::new(t.addr.to_string(), name, cred.tls.clone(), cred.id.clone());
    opts.inflight = 1000;
    Ok(hearth_agent::mqtt::MqttConnection::connect(opts).await?)
}

async fn stored_count(lab: &Lab, creds: &[DeviceCred]) -> Result<i64> {
    let mut total = 0;
    for c in creds {
        total += lab.store.uplink_count(&c.id).await?;
    }
    Ok(total)
}

/// Per system, the median of each metric over the rounds that have it.
fn medians(runs: &BTreeMap<&'static str, Vec<Metrics>>) -> BTreeMap<&'static str, Metrics> {
    runs.iter()
        .map(|(k, rs)| {
            let keys: std::collections::BTreeSet<&String> = rs.iter().flat_map(|m| m.keys()).collect();
            let med = keys
                .into_iter()
                .map(|key| (key.clone(), median(rs.iter().filter_map(|m| m.get(key).copied()).collect())))
                .collect();
            (*k, med)
        })
        .collect()
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    json!({ "cpu": cpu, "cores": cores })
}

fn print_table(medians: &BTreeMap<&str, Metrics>) {
    let rows: [(&str, &str, bool); 13] = [
        ("connects_per_s", "connect storm: connects/s", true),
        ("connect_p99_ms", "connect storm: connect p99 (ms)", false),
        ("cpu_us_per_connect", "server CPU µs per connect", false),
        ("rss_kib_per_connection", "idle: server RSS KiB per connection", false),
        ("rss_start_kib", "server RSS before load (KiB)", false),
        ("fanin_max_rate_p99_le_25ms", "QoS 1 fan-in: max msg/s with p99 <= 25 ms", true),
        ("fanin_p99_ms_at_half_max", "PUBACK p99 at about half that rate (ms)", false),
        ("cpu_us_per_message", "server CPU µs per message", false),
        ("commands_per_s", "command round trips/s", true),
        ("command_p99_ms", "command round trip p99 (ms)", false),
        ("connect_failed", "connect failures", false),
        ("fanin_acked_total", "fan-in messages acknowledged", true),
        ("fanin_stored_total", "fan-in messages stored (Hearth)", true),
    ];
    let h = medians.get("hearth");
    let mq = medians.get("mosquitto");
    println!();
    println!("{:<46} {:>12} {:>12} {:>8}", "metric (median of rounds)", "hearth", "mosquitto", "ratio");
    for (key, label, _higher_is_better) in rows {
        let a = h.and_then(|m| m.get(key)).copied();
        let b = mq.and_then(|m| m.get(key)).copied();
        if a.is_none() && b.is_none() {
            continue;
        }
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!("{label:<46} {:>12} {:>12} {:>8}", fmt(a), fmt(b), ratio);
    }
    println!(
        "(ratio = hearth / mosquitto; Hearth acknowledges QoS 1 only after a durable commit, Mosquitto from memory)"
    );
}
