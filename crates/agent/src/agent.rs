//! The agent loop: sample telemetry into the persistent queue on a timer, keep an MQTT session to the hub,
//! forward the queue oldest first within the inflight window, delete each message only after its PUBACK,
//! answer commands, renew the certificate in time, and reconnect with full-jitter backoff.
//!
//! Sampling never waits for the network: while the hub is unreachable the queue fills (dropping the oldest when
//! full) and drains once connected. Un-acknowledged messages stay in the queue and are resent after a
//! reconnect; the hub de-duplicates by seq. Queue operations run on tokio's blocking pool (redb fsyncs).

use std::collections::VecDeque;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use bytestring::ByteString;
use hearth_proto::DeviceId;
use hearth_proto::topic::{DeviceTopic, command_topic};
use hearth_proto::uplink::{Fields, UplinkBody, Value};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::backoff::Backoff;
use crate::commands::{self, Action};
use crate::enrol::{self, Identity};
use crate::keystore::{FileKeyStore, KeyStore};
use crate::mqtt::{self, ConnectOptions, Event, MqttConnection, MqttError, QoS};
use crate::queue::{DEFAULT_CAPACITY, Queue, QueueError, QueuedUplink};
use crate::source::{SystemSource, TelemetrySource};

/// Firmware version reported in the state uplink.
pub const FIRMWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How an [`Agent`] is set up. Start from [`AgentConfig::new`] and change what you need.
pub struct AgentConfig {
    /// Directory for the key, certificate, hub configuration and queue (created with mode 0700).
    pub state_dir: PathBuf,
    /// The factory bootstrap file; needed only until the device is enrolled.
    pub bootstrap_path: Option<PathBuf>,
    /// Sampling interval (default 10 s; the hub can change it with `set_interval`).
    pub interval: Duration,
    /// Queue capacity in messages (default 10 000).
    pub queue_capacity: u64,
    /// First reconnect/retry delay ceiling (default 1 s).
    pub backoff_min: Duration,
    /// Largest reconnect/retry delay (default 60 s).
    pub backoff_max: Duration,
    /// MQTT keep-alive (default 30 s).
    pub keep_alive: Duration,
    /// Where telemetry comes from (default [`SystemSource`]).
    pub source: Box<dyn TelemetrySource>,
    /// Connect MQTT to this `host:port` instead of the hub's advertised address (tests, port forwarding).
    /// The hub's certificate is still checked against the advertised MQTT host name.
    pub mqtt_addr: Option<String>,
    /// Use this key store instead of `{state_dir}/device.key`.
    pub key_store: Option<Arc<dyn KeyStore>>,
    /// Count into these counters (so a caller can watch an agent that is still enrolling); default: new ones.
    pub stats: Option<Arc<AgentStats>>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("state_dir", &self.state_dir)
            .field("bootstrap_path", &self.bootstrap_path)
            .field("interval", &self.interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("mqtt_addr", &self.mqtt_addr)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// The defaults, with state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            state_dir: state_dir.into(),
            bootstrap_path: None,
            interval: Duration::from_secs(10),
            queue_capacity: DEFAULT_CAPACITY,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            keep_alive: mqtt::DEFAULT_KEEP_ALIVE,
            source: Box::new(SystemSource),
            mqtt_addr: None,
            key_store: None,
            stats: None,
        }
    }
}

/// Live counters of one agent; cheap to read from any task.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Uplinks pushed into the queue (telemetry and state).
    pub queued: AtomicU64,
    /// Uplinks the hub acknowledged with success (and that were then deleted).
    pub acked: AtomicU64,
    /// Uplinks the hub refused as invalid (PUBACK 0x99) and that were deleted.
    pub rejected: AtomicU64,
    /// Uplinks dropped because the queue was full, over the queue's whole life.
    pub dropped: AtomicU64,
    /// Successful MQTT connections (CONNACK success).
    pub connects: AtomicU64,
    /// Commands answered.
    pub commands_handled: AtomicU64,
    /// Certificate renewals completed.
    pub renewals: AtomicU64,
}

/// A copy of [`AgentStats`] at one moment; snapshots add up (see the simulator's fleet report).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`AgentStats::queued`].
    pub queued: u64,
    /// See [`AgentStats::acked`].
    pub acked: u64,
    /// See [`AgentStats::rejected`].
    pub rejected: u64,
    /// See [`AgentStats::dropped`].
    pub dropped: u64,
    /// See [`AgentStats::connects`].
    pub connects: u64,
    /// See [`AgentStats::commands_handled`].
    pub commands_handled: u64,
    /// See [`AgentStats::renewals`].
    pub renewals: u64,
}

impl AgentStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            queued: get(&self.queued),
            acked: get(&self.acked),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
            connects: get(&self.connects),
            commands_handled: get(&self.commands_handled),
            renewals: get(&self.renewals),
        }
    }
}

impl std::ops::AddAssign for StatsSnapshot {
    fn add_assign(&mut self, o: StatsSnapshot) {
        self.queued += o.queued;
        self.acked += o.acked;
        self.rejected += o.rejected;
        self.dropped += o.dropped;
        self.connects += o.connects;
        self.commands_handled += o.commands_handled;
        self.renewals += o.renewals;
    }
}

/// One device agent: an enrolled identity, its queue and its telemetry source. Build with [`Agent::new`],
/// read counters through [`Agent::stats`], then [`Agent::run`] until shutdown.
pub struct Agent {
    state_dir: PathBuf,
    identity: Identity,
    tls: Arc<rustls::ClientConfig>,
    queue: Queue,
    stats: Arc<AgentStats>,
    sampler: Sampler,
    backoff: Backoff,
    keep_alive: Duration,
    mqtt_addr: Option<String>,
    topics: Topics,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("device_id", self.identity.device_id()).finish_non_exhaustive()
    }
}

struct Topics {
    telemetry: ByteString,
    events: ByteString,
    state: ByteString,
    ack: ByteString,
    commands: String,
}

/// Why a session ended without an error.
enum SessionEnd {
    Shutdown,
    Renew,
}

impl Agent {
    /// Loads the identity from the state directory, or enrols with the bootstrap file (retrying 5xx and
    /// network errors with backoff; a 4xx such as "bootstrap token already used" is returned at once), and
    /// opens the queue. Cancel by dropping the future.
    pub async fn new(config: AgentConfig) -> anyhow::Result<Agent> {
        let state_dir = config.state_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .with_context(|| format!("while creating the state directory {}", state_dir.display()))?;
        let key: Arc<dyn KeyStore> = match config.key_store {
            Some(key) => key,
            None => Arc::new(FileKeyStore::open_or_create(&state_dir).context("while loading the device key")?),
        };
        let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
        let identity = enrol::load_or_enrol(&state_dir, config.bootstrap_path.as_deref(), key, &mut backoff)
            .await
            .context("while establishing the device identity")?;
        backoff.reset();
        let tls = Arc::new(identity.tls_config().context("while building the tls configuration")?);
        let queue = {
            let dir = state_dir.clone();
            let capacity = config.queue_capacity;
            tokio::task::spawn_blocking(move || Queue::open(&dir, capacity))
                .await
                .context("while opening the queue")??
        };
        let stats = config.stats.unwrap_or_default();
        stats.dropped.store(queue.dropped()?, Ordering::Relaxed);
        let id = identity.device_id().clone();
        let topics = Topics {
            telemetry: DeviceTopic::Telemetry.for_device(&id).into(),
            events: DeviceTopic::Events.for_device(&id).into(),
            state: DeviceTopic::State.for_device(&id).into(),
            ack: DeviceTopic::CommandAck.for_device(&id).into(),
            commands: command_topic(&id),
        };
        let sampler = Sampler::new(config.source, queue.clone(), stats.clone(), config.interval);
        Ok(Agent {
            state_dir,
            identity,
            tls,
            queue,
            stats,
            sampler,
            backoff,
            keep_alive: config.keep_alive,
            mqtt_addr: config.mqtt_addr,
            topics,
        })
    }

    /// The device id.
    pub fn device_id(&self) -> &DeviceId {
        self.identity.device_id()
    }

    /// The identity (hub configuration, certificate validity).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The counters, shared with the running agent.
    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// The persistent queue (for inspection; the agent owns what goes in and out).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Runs until `shutdown` becomes true (or its sender is dropped), then disconnects cleanly. Returns an
    /// error only for local failures (the queue's database, the state directory); network trouble is retried.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut next_renew_try = Instant::now();
        loop {
            if is_shut_down(&shutdown) {
                return Ok(());
            }
            if now_ms() >= self.identity.renew_after_ms() && Instant::now() >= next_renew_try {
                let state_dir = self.state_dir.clone();
                let renewal = enrol::renew(&state_dir, &self.identity);
                match self.sampler.while_sampling(renewal, &mut shutdown).await? {
                    None => return Ok(()),
                    Some(Ok(identity)) => {
                        self.tls = Arc::new(identity.tls_config().context("while building the tls configuration")?);
                        self.identity = identity;
                        self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        let retry = self.backoff.next_delay().max(Duration::from_secs(1));
                        tracing::warn!(error = %e, retry_in = ?retry, "certificate renewal failed");
                        next_renew_try = Instant::now() + retry;
                    }
                }
            }

            let opts = self.connect_options()?;
            let connected = match self.sampler.while_sampling(MqttConnection::connect(opts), &mut shutdown).await? {
                None => return Ok(()),
                Some(r) => r,
            };
            let outcome = match connected {
                Ok(mut conn) => {
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(device = %self.identity.device_id(), "connected to the hub");
                    self.session(&mut conn, &mut shutdown, next_renew_try).await.map(|end| (end, Some(conn)))
                }
                Err(e) => Err(SessionError::Mqtt(e)),
            };
            match outcome {
                Ok((SessionEnd::Shutdown, conn)) => {
                    if let Some(conn) = conn {
                        conn.disconnect().await;
                    }
                    return Ok(());
                }
                Ok((SessionEnd::Renew, conn)) => {
                    if let Some(conn) = conn {
                        conn.disconnect().await;
                    }
                    next_renew_try = Instant::now();
                    continue;
                }
                Err(SessionError::Local(e)) => return Err(e),
                Err(SessionError::Mqtt(e)) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "mqtt connection lost or refused");
                    let sleep = tokio::time::sleep(delay);
                    if self.sampler.while_sampling(sleep, &mut shutdown).await?.is_none() {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let addr = self.mqtt_addr.clone().unwrap_or_else(|| self.identity.mqtt_addr());
        let server_name = self.identity.mqtt_server_name()?;
        let mut opts = ConnectOptions::new(addr, server_name, self.tls.clone(), self.identity.device_id().as_str());
        opts.keep_alive = self.keep_alive;
        Ok(opts)
    }

    /// One connected session: subscribe, report state, then forward the queue and answer commands until
    /// shutdown, renewal time or a connection error.
    async fn session(
        &mut self,
        conn: &mut MqttConnection,
        shutdown: &mut watch::Receiver<bool>,
        renew_not_before: Instant,
    ) -> Result<SessionEnd, SessionError> {
        conn.subscribe(&self.topics.commands, QoS::AtLeastOnce)?;
        self.sampler.push_state(&self.queue).await?;
        // Which queued seq (or command acknowledgement, `None`) each packet id in flight carries.
        let mut inflight: VecDeque<(u16, Option<u64>)> = VecDeque::new();
        let mut acks: VecDeque<Bytes> = VecDeque::new();
        // Next seq to send; starting at 0 resends whatever the previous session left un-acknowledged.
        let mut cursor = 0u64;
        let mut exhausted = false;
        let renew_in = Duration::from_millis(self.identity.renew_after_ms().saturating_sub(now_ms()));
        // After a failed renewal, wait for the retry time: ending the session at once would reconnect in a loop.
        let renew_at = tokio::time::sleep_until((Instant::now() + renew_in).max(renew_not_before));
        tokio::pin!(renew_at);
        loop {
            // Command acknowledgements go first: they are small and the hub is waiting for them.
            while conn.can_publish() {
                let Some(payload) = acks.pop_front() else {
                    break;
                };
                if let Some(pid) = conn.publish(self.topics.ack.clone(), payload, QoS::AtLeastOnce)? {
                    inflight.push_back((pid, None));
                }
            }
            if self.sampler.take_dirty() {
                exhausted = false;
            }
            let free = usize::from(conn.max_inflight()).saturating_sub(conn.inflight());
            if free > 0 && !exhausted {
                let batch = blocking(&self.queue, move |q| q.peek_from(cursor, free)).await?;
                exhausted = batch.len() < free;
                for QueuedUplink { seq, topic, payload } in batch {
                    let topic = match topic {
                        DeviceTopic::Telemetry => self.topics.telemetry.clone(),
                        DeviceTopic::Events => self.topics.events.clone(),
                        DeviceTopic::State | DeviceTopic::CommandAck => self.topics.state.clone(),
                    };
                    if let Some(pid) = conn.publish(topic, payload, QoS::AtLeastOnce)? {
                        inflight.push_back((pid, Some(seq)));
                    }
                    cursor = seq + 1;
                }
            }

            tokio::select! {
                event = conn.next_event() => match event? {
                    Event::PubAck { packet_id, reason_code } => {
                        let Some(i) = inflight.iter().position(|(p, _)| *p == packet_id) else { continue };
                        let Some((_, item)) = inflight.remove(i) else { continue };
                        self.on_puback(item, reason_code).await?;
                        if !mqtt::is_success(reason_code) && reason_code != mqtt::REASON_PAYLOAD_FORMAT_INVALID {
                            // The message stays queued; a new session resends it after a backoff.
                            return Err(SessionError::Mqtt(MqttError::Protocol("hub refused a publish")));
                        }
                    }
                    Event::Message { topic, payload } => {
                        if topic != self.topics.commands.as_str() {
                            tracing::debug!(%topic, "ignored a message outside the command topic");
                            continue;
                        }
                        if let Some((ack, action)) = commands::handle(&payload, now_ms()) {
                            tracing::info!(id = %ack.id, status = ack.status.as_str(), "answered a command");
                            acks.push_back(Bytes::from(ack.to_json()));
                            self.stats.commands_handled.fetch_add(1, Ordering::Relaxed);
                            match action {
                                Action::None => {}
                                Action::SetInterval(interval) => self.sampler.set_interval(interval),
                                Action::ReportState => self.sampler.push_state(&self.queue).await?,
                            }
                        }
                    }
                    Event::SubAck { reason_codes, .. } => {
                        if reason_codes.iter().any(|c| *c >= 0x80) {
                            return Err(SessionError::Mqtt(MqttError::Protocol("command subscription refused")));
                        }
                        // Subscribed: this connection works, so the next outage starts from a short delay.
                        self.backoff.reset();
                    }
                },
                _ = self.sampler.tick() => self.sampler.sample().await?,
                _ = &mut renew_at => return Ok(SessionEnd::Renew),
                _ = wait_shutdown(shutdown) => return Ok(SessionEnd::Shutdown),
            }
        }
    }

    async fn on_puback(&mut self, item: Option<u64>, reason_code: u8) -> anyhow::Result<()> {
        let Some(seq) = item else {
            if !mqtt::is_success(reason_code) {
                tracing::warn!(reason_code, "the hub refused a command acknowledgement");
            }
            return Ok(());
        };
        match reason_code {
            code if mqtt::is_success(code) => {
                blocking(&self.queue, move |q| q.ack(&[seq])).await?;
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            mqtt::REASON_PAYLOAD_FORMAT_INVALID => {
                // The hub will never accept this message; resending would loop forever.
                tracing::warn!(seq, "the hub refused an uplink as invalid; dropping it");
                blocking(&self.queue, move |q| q.ack(&[seq])).await?;
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            other => tracing::warn!(seq, reason_code = other, "the hub did not accept an uplink; will resend"),
        }
        Ok(())
    }
}

enum SessionError {
    /// The connection failed; reconnect.
    Mqtt(MqttError),
    /// Something local failed; stop.
    Local(anyhow::Error),
}

impl From<MqttError> for SessionError {
    fn from(e: MqttError) -> Self {
        SessionError::Mqtt(e)
    }
}

impl From<anyhow::Error> for SessionError {
    fn from(e: anyhow::Error) -> Self {
        SessionError::Local(e)
    }
}

/// The sampling side of the agent, kept apart so it can run while the rest waits on the network.
struct Sampler {
    source: Box<dyn TelemetrySource>,
    queue: Queue,
    stats: Arc<AgentStats>,
    ticker: Interval,
    /// Set whenever something was queued, so the session knows to look at the queue again.
    dirty: bool,
}

impl Sampler {
    fn new(source: Box<dyn TelemetrySource>, queue: Queue, stats: Arc<AgentStats>, interval: Duration) -> Sampler {
        Sampler { source, queue, stats, ticker: ticker(interval), dirty: true }
    }

    fn set_interval(&mut self, interval: Duration) {
        self.ticker = ticker(interval);
    }

    /// Waits for the next sampling time. Cancel-safe.
    async fn tick(&mut self) {
        self.ticker.tick().await;
    }

    fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    async fn sample(&mut self) -> anyhow::Result<()> {
        let metrics = self.source.sample(now_ms());
        if metrics.is_empty() {
            return Ok(());
        }
        self.push(UplinkBody::Telemetry { metrics }).await
    }

    async fn push_state(&mut self, queue: &Queue) -> anyhow::Result<()> {
        let (len, dropped) = blocking(queue, |q| Ok((q.len()?, q.dropped()?))).await?;
        let mut state = Fields::new();
        state.insert("firmware".into(), Value::Text(FIRMWARE_VERSION.into()));
        state.insert("queue_len".into(), Value::Number(len as f64));
        state.insert("queue_dropped".into(), Value::Number(dropped as f64));
        self.push(UplinkBody::State { state }).await
    }

    async fn push(&mut self, body: UplinkBody) -> anyhow::Result<()> {
        let ts = now_ms();
        let pushed = blocking(&self.queue, move |q| q.push(body, ts)).await?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if pushed.dropped > 0 {
            self.stats.dropped.fetch_add(pushed.dropped, Ordering::Relaxed);
            tracing::warn!(dropped = pushed.dropped, "queue full; dropped the oldest uplinks");
        }
        self.dirty = true;
        Ok(())
    }

    /// Drives `fut` to completion while still sampling on time. `None` if shutdown came first.
    async fn while_sampling<F: std::future::Future>(
        &mut self,
        fut: F,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<F::Output>> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(Some(out)),
                _ = self.ticker.tick() => self.sample().await?,
                _ = wait_shutdown(shutdown) => return Ok(None),
            }
        }
    }
}

fn ticker(interval: Duration) -> Interval {
    let interval = interval.max(Duration::from_millis(1));
    let mut t = tokio::time::interval_at(Instant::now() + interval, interval);
    // After a stall, sample once and keep the rhythm; a burst of catch-up samples would say nothing new.
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

async fn blocking<T: Send + 'static>(
    queue: &Queue,
    f: impl FnOnce(&Queue) -> Result<T, QueueError> + Send + 'static,
) -> anyhow::Result<T> {
    let queue = queue.clone();
    let out = tokio::task::spawn_blocking(move || f(&queue)).await.context("while running a queue operation")?;
    Ok(out?)
}

fn is_shut_down(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Resolves once shutdown is requested or its sender is gone. Cancel-safe.
async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Unix time in milliseconds (at least 1, as the protocol requires).
pub fn now_ms() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(1);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}
