//! The fault suite: outages, crashes, floods and hostile clients, each measured the way trusted systems measure
//! them (SQLite's crash tests, Mender's power cuts, Mosquitto's raw-socket tests). Short in every `cargo test`
//! (and so in CI); long on demand with `cargo xtask faults --long`, which sets `HEARTH_FAULTS=long`.
//!
//! Each fault asserts what must hold (nothing acknowledged lost, memory bounded, the hub stays up and resumes by
//! itself) and records its figures through [`report`]: a line of JSON appended to the file named by
//! `HEARTH_FAULTS_REPORT` (xtask renders them into a table for `docs/RELIABILITY.md`), and a line on stderr.

mod db_locked;
mod disk_full;
mod hostile_load;
mod kill9;
mod network;
mod soak;
mod update_power_cut;

/// One fault at a time, in this test binary: a fault measures the hub under its own load, not its neighbours'
/// (cargo runs a binary's tests in parallel). Every fault test holds this for its whole run.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How hard to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every `cargo test`: seconds per fault.
    Short,
    /// `cargo xtask faults --long`: minutes per fault, more trials.
    Long,
}

/// The mode from `HEARTH_FAULTS` (`long` or anything else).
pub fn mode() -> Mode {
    match std::env::var("HEARTH_FAULTS").as_deref() {
        Ok("long") => Mode::Long,
        _ => Mode::Short,
    }
}

/// `short` in short mode, `long` in long mode.
pub fn pick<T>(short: T, long: T) -> T {
    match mode() {
        Mode::Short => short,
        Mode::Long => long,
    }
}

/// Records a fault's figures: `fault` names it, `trials` how often it ran, `checked` what was verified, `figures`
/// the measurements.
pub fn report(fault: &str, trials: usize, checked: &str, figures: serde_json::Value) {
    let line = serde_json::json!({
        "fault": fault,
        "mode": format!("{:?}", mode()).to_lowercase(),
        "trials": trials,
        "checked": checked,
        "figures": figures,
    });
    eprintln!("FAULT {line}");
    if let Ok(path) = std::env::var("HEARTH_FAULTS_REPORT") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// A `/proc/PID/status` field in KiB, for example `VmRSS:` (0 if absent or the process is gone).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Resident memory of a process, KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The value at quantile `q` of sorted values (nearest rank), 0 for none.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Skips a fault that needs something this machine lacks (root for a tmpfs, say), loudly; with
/// `HEARTH_REQUIRE_ALL=1` (CI) a skip is a failure.
pub fn require(available: bool, what: &str, fault: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("HEARTH_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{fault}: needs {what}, and HEARTH_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("SKIPPED {fault}: needs {what}");
    false
}

/// One device enrolled through the agent's own code, ready to open raw MQTT connections.
pub struct Device {
    /// Its id.
    pub id: String,
    /// Connection options (mutual TLS with its certificate).
    pub opts: hearth_agent::mqtt::ConnectOptions,
}

impl Device {
    /// Manufactures and enrols a device on `hub`; its key and state live in `state`.
    pub async fn enrol(hub: &crate::support::HubProcess, token: &str, state: &std::path::Path) -> Device {
        use std::sync::Arc;
        let made = crate::support::manufacture(hub, token, "faults", 1).await;
        let boot = made.bootstrap_files().remove(0);
        let key = Arc::new(hearth_agent::keystore::FileKeyStore::open_or_create(state).expect("key"));
        let identity = hearth_agent::enrol::enrol(state, &boot, key).await.expect("enrol");
        let id = identity.device_id().to_string();
        let mut opts = hearth_agent::mqtt::ConnectOptions::new(
            identity.mqtt_addr(),
            identity.mqtt_server_name().expect("name"),
            Arc::new(identity.tls_config().expect("tls")),
            id.clone(),
        );
        opts.inflight = 64;
        Device { id, opts }
    }

    /// The telemetry topic.
    pub fn topic(&self) -> String {
        format!("devices/{}/telemetry", self.id)
    }
}

/// A valid telemetry payload for `seq` padded to about `size` bytes (at most ~15 KiB: strings of 250 bytes,
/// within the schema's per-string and per-message limits).
pub fn payload(seq: i64, size: usize) -> bytes::Bytes {
    let pads = (size.saturating_sub(60) / 260).min(60);
    let mut metrics = format!(r#""n":{seq}"#);
    for i in 0..pads {
        metrics.push_str(&format!(r#","p{i}":"{}""#, "x".repeat(250)));
    }
    bytes::Bytes::from(format!(r#"{{"v":1,"seq":{seq},"ts":1764000000000,"metrics":{{{metrics}}}}}"#))
}

/// What a publisher saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Seqs acknowledged with success.
    pub acked: std::collections::BTreeSet<i64>,
    /// Seqs refused (reason ≥ 0x80), not yet acknowledged: the device keeps them and resends.
    pub refused: std::collections::BTreeSet<i64>,
    /// Refusals by reason code.
    pub refusals_by_code: std::collections::BTreeMap<u8, u64>,
    /// PUBACK latencies, ms.
    pub latencies_ms: Vec<u64>,
    /// Connections opened.
    pub connects: u64,
}

/// Publishes QoS 1 telemetry of about `size` bytes as fast as the inflight window allows: first every seq in
/// `resend`, then new ones from `next_seq` on, until `stop` is set. After `stop`, no new seq is taken, but what
/// was refused keeps being resent (as a device would) until everything is acknowledged or 60 s pass; what is
/// still refused then stays in `tally.refused`. Reconnects when the hub closes the connection.
pub async fn publish_until(
    device: &Device,
    size: usize,
    resend: Vec<i64>,
    next_seq: &mut i64,
    stop: &std::sync::atomic::AtomicBool,
    tally: &mut Tally,
) {
    use hearth_agent::mqtt::{Event, MqttConnection, QoS};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mut todo: std::collections::VecDeque<i64> = resend.into();
    let mut stopped_at: Option<Instant> = None;
    let draining_too_long = |stopped_at: &mut Option<Instant>| {
        if stop.load(Ordering::Relaxed) {
            stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(60)
        } else {
            false
        }
    };
    'connections: loop {
        if (stop.load(Ordering::Relaxed) && todo.is_empty()) || draining_too_long(&mut stopped_at) {
            break;
        }
        let Ok(mut conn) = MqttConnection::connect(device.opts.clone()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tally.connects += 1;
        let mut in_flight: std::collections::HashMap<u16, (i64, Instant)> = Default::default();
        loop {
            while conn.can_publish() {
                let seq = match todo.pop_front() {
                    Some(seq) => seq,
                    None if !stop.load(Ordering::Relaxed) => {
                        *next_seq += 1;
                        *next_seq - 1
                    }
                    None => break,
                };
                match conn.publish(device.topic().as_str(), payload(seq, size), QoS::AtLeastOnce) {
                    Ok(Some(pid)) => {
                        in_flight.insert(pid, (seq, Instant::now()));
                    }
                    _ => {
                        todo.push_front(seq);
                        break;
                    }
                }
            }
            if stop.load(Ordering::Relaxed) && in_flight.is_empty() && todo.is_empty() {
                conn.disconnect().await;
                break 'connections;
            }
            if draining_too_long(&mut stopped_at) {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(30), conn.next_event()).await {
                Ok(Ok(Event::PubAck { packet_id, reason_code })) => {
                    let Some((seq, sent)) = in_flight.remove(&packet_id) else { continue };
                    tally.latencies_ms.push(sent.elapsed().as_millis() as u64);
                    if hearth_agent::mqtt::is_success(reason_code) {
                        tally.acked.insert(seq);
                        tally.refused.remove(&seq);
                    } else {
                        *tally.refusals_by_code.entry(reason_code).or_default() += 1;
                        tally.refused.insert(seq);
                        todo.push_back(seq);
                        // Like the agent: back off a little before resending.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        // Whatever was in flight when the connection ended is resent.
        todo.extend(in_flight.into_values().map(|(s, _)| s));
    }
    tally.refused.extend(todo);
}

/// Runs SQLite's own integrity check on a hub database (read-only; the hub may be running).
pub async fn integrity_check(db: &std::path::Path) -> String {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the database read-only");
    let row: (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&mut conn).await.expect("integrity_check");
    row.0
}
