//! The fleet simulator: many [`hearth_agent::Agent`]s in one process, each with its own state directory and
//! bootstrap file, producing plausible sensor data from a [`Profile`]. Agents start spread over a ramp so that
//! enrolment does not hit the hub as a thundering herd.
//!
//! [`Fleet::start`] returns at once; [`Fleet::stats`] reads every agent's counters while it runs (also while it
//! is still enrolling), and [`Fleet::stop`] shuts all agents down cleanly and returns the [`FleetReport`].
//! [`run_fleet`] does both around a shutdown signal.

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is the failure report (CONVENTIONS.md: unwrap_used allowed in tests).
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hearth_agent::backoff::Jitter;
use hearth_agent::{Agent, AgentConfig, AgentStats, StatsSnapshot, TelemetrySource};
use hearth_proto::uplink::{Fields, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What kind of device the simulated agents pretend to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `temperature_c` (random walk around 21 °C), `setpoint_c`, `heating` (on below the setpoint).
    Thermostat,
    /// `on`, `power_w` (noisy draw while on), `energy_wh` (accumulated).
    Plug,
    /// `motion` (occasionally true), `battery_pct` (slowly draining), `lux`.
    Motion,
}

impl Profile {
    /// A telemetry source for one device of this profile; `seed` makes devices differ.
    pub fn source(self, seed: u64) -> Box<dyn TelemetrySource> {
        let rng = Jitter::with_seed(seed);
        match self {
            Profile::Thermostat => Box::new(Thermostat { rng, temperature: 21.0, setpoint: 21.5 }),
            Profile::Plug => Box::new(Plug { rng, on: true, energy_wh: 0.0, last_ms: None }),
            Profile::Motion => Box::new(Motion { rng, battery: 100.0 }),
        }
    }
}

/// How to run a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// One bootstrap file per agent.
    pub bootstraps: Vec<PathBuf>,
    /// Agent `i` keeps its state in `{root_dir}/agent-{i}`.
    pub root_dir: PathBuf,
    /// Sampling interval of every agent.
    pub interval: Duration,
    /// Sensor behaviour.
    pub profile: Profile,
    /// Agents start evenly spread over this time.
    pub ramp: Duration,
    /// Queue capacity per agent.
    pub queue_capacity: u64,
    /// Reconnect backoff, smallest ceiling and cap.
    pub backoff: (Duration, Duration),
    /// Connect MQTT here instead of the address in the bootstrap files.
    pub mqtt_addr: Option<String>,
    /// Over-the-air updates into each agent's own directory A/B slots (`{root_dir}/agent-{i}/slots`).
    pub updates: Option<FleetUpdates>,
}

/// How a fleet's agents take updates.
#[derive(Debug, Clone)]
pub struct FleetUpdates {
    /// The TUF root the devices trust at first.
    pub trust_root: PathBuf,
    /// The factory image every device starts on, and its metadata.
    pub factory_image: PathBuf,
    /// The factory image's metadata (a signed release).
    pub factory: hearth_agent::update::SlotImage,
    /// The devices' hardware revision.
    pub hardware: String,
    /// Check for updates at least this often.
    pub check_interval: Option<Duration>,
}

impl FleetConfig {
    /// Defaults: 10 s interval, thermostat profile, 2 s ramp, 10 000 messages per queue, backoff 1–60 s.
    pub fn new(bootstraps: Vec<PathBuf>, root_dir: impl Into<PathBuf>) -> FleetConfig {
        FleetConfig {
            bootstraps,
            root_dir: root_dir.into(),
            interval: Duration::from_secs(10),
            profile: Profile::Thermostat,
            ramp: Duration::from_secs(2),
            queue_capacity: 10_000,
            backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            mqtt_addr: None,
            updates: None,
        }
    }
}

/// What a fleet did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetReport {
    /// Agents configured.
    pub agents: usize,
    /// Agents that got an identity and ran.
    pub started: usize,
    /// Errors that stopped an agent, as `agent-{i}: message`.
    pub errors: Vec<String>,
    /// The agents' counters, summed.
    pub totals: StatsSnapshot,
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    stats: Vec<Arc<AgentStats>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(usize, anyhow::Result<bool>)>,
}

impl Fleet {
    /// Starts one agent per bootstrap file (spread over the ramp) and returns at once.
    pub fn start(config: FleetConfig) -> Fleet {
        let (stop, shutdown) = watch::channel(false);
        let n = config.bootstraps.len();
        let mut stats = Vec::with_capacity(n);
        let mut tasks = JoinSet::new();
        let mut seeds = Jitter::from_entropy();
        for (i, bootstrap) in config.bootstraps.iter().enumerate() {
            let agent_stats = Arc::new(AgentStats::default());
            stats.push(agent_stats.clone());
            let (root, bootstrap, fleet) = (config.root_dir.clone(), bootstrap.clone(), config.clone_settings());
            let seed = seeds.next_u64();
            // Called at each boot: an update that switches slots restarts the agent with a fresh configuration.
            let make = move || -> anyhow::Result<AgentConfig> {
                let dir = root.join(format!("agent-{i}"));
                let mut agent_config = AgentConfig::new(&dir);
                agent_config.bootstrap_path = Some(bootstrap.clone());
                agent_config.interval = fleet.interval;
                agent_config.queue_capacity = fleet.queue_capacity;
                agent_config.backoff_min = fleet.backoff.0;
                agent_config.backoff_max = fleet.backoff.1;
                agent_config.source = fleet.profile.source(seed);
                agent_config.mqtt_addr = fleet.mqtt_addr.clone();
                agent_config.stats = Some(agent_stats.clone());
                if let Some(u) = &fleet.updates {
                    let slots =
                        hearth_agent::update::DirSlots::open(&dir.join("slots"), Some((&u.factory_image, &u.factory)))?;
                    let mut updates = hearth_agent::update::UpdateConfig::new(Arc::new(slots));
                    updates.trust_root = Some(u.trust_root.clone());
                    updates.hardware = u.hardware.clone();
                    updates.max_check_interval = u.check_interval;
                    agent_config.updates = Some(updates);
                }
                Ok(agent_config)
            };
            let delay = config.ramp.mul_f64(i as f64 / n.max(1) as f64);
            let shutdown = shutdown.clone();
            tasks.spawn(async move { (i, run_one(make, delay, shutdown).await) });
        }
        Fleet { stats, stop, tasks }
    }

    /// Each agent's counters, in bootstrap order (live: they keep changing while the fleet runs).
    pub fn stats(&self) -> &[Arc<AgentStats>] {
        &self.stats
    }

    /// The counters of all agents, summed, now.
    pub fn totals(&self) -> StatsSnapshot {
        let mut totals = StatsSnapshot::default();
        for s in &self.stats {
            totals += s.snapshot();
        }
        totals
    }

    /// Stops every agent (each disconnects cleanly) and reports.
    pub async fn stop(mut self) -> FleetReport {
        let _ = self.stop.send(true);
        let mut report = FleetReport { agents: self.stats.len(), ..FleetReport::default() };
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((_, Ok(started))) => report.started += usize::from(started),
                Ok((i, Err(e))) => report.errors.push(format!("agent-{i}: {e:#}")),
                Err(e) => report.errors.push(format!("agent task failed: {e}")),
            }
        }
        report.errors.sort();
        report.totals = self.totals();
        report
    }
}

/// Runs a fleet until `shutdown` becomes true (or its sender is dropped), then stops it and reports.
pub async fn run_fleet(config: FleetConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<FleetReport> {
    let fleet = Fleet::start(config);
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    Ok(fleet.stop().await)
}

/// Waits out the ramp delay, enrols, runs; starts again after an update's restart. `Ok(true)` if the agent got
/// to run, `Ok(false)` if shutdown came first.
async fn run_one(
    make: impl Fn() -> anyhow::Result<AgentConfig>,
    delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    tokio::time::sleep(delay).await;
    let mut started = false;
    loop {
        let config = make()?;
        let agent = tokio::select! {
            agent = Agent::new(config) => agent?,
            _ = async { while !*shutdown.borrow_and_update() { if shutdown.changed().await.is_err() { break } } } => {
                return Ok(started);
            }
        };
        started = true;
        match agent.run(shutdown.clone()).await? {
            hearth_agent::Stopped::Reboot => continue,
            hearth_agent::Stopped::Shutdown => return Ok(true),
        }
    }
}

/// The settings every agent of a fleet shares (what [`FleetConfig`] holds besides the bootstrap files).
struct Shared {
    interval: Duration,
    queue_capacity: u64,
    backoff: (Duration, Duration),
    profile: Profile,
    mqtt_addr: Option<String>,
    updates: Option<FleetUpdates>,
}

impl FleetConfig {
    fn clone_settings(&self) -> Shared {
        Shared {
            interval: self.interval,
            queue_capacity: self.queue_capacity,
            backoff: self.backoff,
            profile: self.profile,
            mqtt_addr: self.mqtt_addr.clone(),
            updates: self.updates.clone(),
        }
    }
}

struct Thermostat {
    rng: Jitter,
    temperature: f64,
    setpoint: f64,
}

impl TelemetrySource for Thermostat {
    fn sample(&mut self, _now_ms: u64) -> Fields {
        let heating = self.temperature < self.setpoint;
        // A random walk pulled towards the setpoint while heating, towards 18 °C otherwise.
        let target = if heating { self.setpoint + 0.5 } else { 18.0 };
        self.temperature += (target - self.temperature) * 0.05 + (self.rng.next_f64() - 0.5) * 0.2;
        let mut f = Fields::new();
        f.insert("temperature_c".into(), Value::Number(round(self.temperature, 2)));
        f.insert("setpoint_c".into(), Value::Number(self.setpoint));
        f.insert("heating".into(), Value::Bool(heating));
        f
    }
}

struct Plug {
    rng: Jitter,
    on: bool,
    energy_wh: f64,
    last_ms: Option<u64>,
}

impl TelemetrySource for Plug {
    fn sample(&mut self, now_ms: u64) -> Fields {
        if self.rng.next_f64() < 0.05 {
            self.on = !self.on;
        }
        let power = if self.on { 60.0 + self.rng.next_f64() * 40.0 } else { 0.3 };
        let hours = self.last_ms.map(|last| now_ms.saturating_sub(last) as f64 / 3_600_000.0).unwrap_or(0.0);
        self.last_ms = Some(now_ms);
        self.energy_wh += power * hours;
        let mut f = Fields::new();
        f.insert("on".into(), Value::Bool(self.on));
        f.insert("power_w".into(), Value::Number(round(power, 1)));
        f.insert("energy_wh".into(), Value::Number(round(self.energy_wh, 3)));
        f
    }
}

struct Motion {
    rng: Jitter,
    battery: f64,
}

impl TelemetrySource for Motion {
    fn sample(&mut self, _now_ms: u64) -> Fields {
        self.battery = (self.battery - 0.01).max(0.0);
        let mut f = Fields::new();
        f.insert("motion".into(), Value::Bool(self.rng.next_f64() < 0.1));
        f.insert("battery_pct".into(), Value::Number(round(self.battery, 2)));
        f.insert("lux".into(), Value::Number(round(self.rng.next_f64() * 500.0, 0)));
        f
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

#[cfg(test)]
mod tests {
    use hearth_proto::topic::DeviceTopic;
    use hearth_proto::uplink::{Uplink, UplinkBody};

    use super::*;

    #[test]
    fn profiles_produce_valid_telemetry() {
        for profile in [Profile::Thermostat, Profile::Plug, Profile::Motion] {
            let mut source = profile.source(42);
            for i in 0..500u64 {
                let metrics = source.sample(1_764_000_000_000 + i * 10_000);
                assert!(!metrics.is_empty());
                let up = Uplink { seq: i + 1, ts: 1_764_000_000_000, body: UplinkBody::Telemetry { metrics } };
                assert_eq!(Uplink::parse(DeviceTopic::Telemetry, &up.to_json()), Ok(up), "{profile:?}");
            }
        }
        let mut t = Profile::Thermostat.source(1);
        for _ in 0..1000 {
            let Some(Value::Number(c)) = t.sample(0).get("temperature_c").cloned() else { panic!() };
            assert!((10.0..30.0).contains(&c), "{c}");
        }
    }

    #[tokio::test]
    async fn fleet_stops_cleanly_while_the_hub_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        let bootstraps: Vec<PathBuf> = (0..3)
            .map(|i| {
                let path = dir.path().join(format!("boot-{i}.json"));
                let boot = serde_json::json!({
                    "v": 1, "device_id": format!("sim-{i}"), "model": "thermo-1", "bootstrap_token": "t",
                    // Nothing listens on port 1: enrolment keeps retrying until the fleet stops.
                    "hub_url": "https://127.0.0.1:1", "mqtt_host": "127.0.0.1", "mqtt_port": 1, "hub_ca_pem": ca_pem,
                });
                std::fs::write(&path, boot.to_string()).unwrap();
                path
            })
            .collect();
        let mut config = FleetConfig::new(bootstraps, dir.path().join("state"));
        config.ramp = Duration::from_millis(30);
        config.backoff = (Duration::from_millis(10), Duration::from_millis(50));
        let fleet = Fleet::start(config);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fleet.stats().len(), 3);
        let report = tokio::time::timeout(Duration::from_secs(5), fleet.stop()).await.unwrap();
        assert_eq!(report.agents, 3);
        assert_eq!(report.started, 0);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        // Each agent generated its key before trying to enrol.
        assert!(dir.path().join("state/agent-2/device.key").exists());
    }
}
