//! The agent loop: sample telemetry into the persistent queue on a timer, keep an MQTT session to the hub,
//! forward the queue oldest first within the inflight window, delete each message only after its PUBACK,
//! answer commands, renew the certificate in time, and reconnect with full-jitter backoff.
//!
//! Sampling never waits for the network: while the hub is unreachable the queue fills (dropping the oldest when
//! full, recorded in a gap marker) and drains once connected. Un-acknowledged messages stay in the queue and
//! are resent after a reconnect; the hub de-duplicates by seq. Queue operations run on tokio's blocking pool
//! (redb fsyncs).
//!
//! **Seq conflicts.** The hub refuses an uplink whose seq it already holds with different content: PUBACK
//! `0x83` (implementation specific error), a reason string starting with [`SEQ_CONFLICT_REASON`], and the user
//! property [`HIGHEST_SEQ_PROPERTY`] = the highest seq it holds for the device, in decimal (an identical resend
//! gets `0x00`). The agent then stops publishing uplinks, waits for the PUBACKs of those in flight (each is
//! stored or refused by then, so nothing the hub stored is sent again under a new seq), renumbers the whole
//! queue in one transaction so that the oldest message gets `highest_seq + 1` (or, without the property,
//! `max(now, next seq)`), and reconnects; the new session resends everything. See [`crate::queue`].

use std::collections::VecDeque;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use bytestring::ByteString;
use hearth_proto::DeviceId;
use hearth_proto::command::AckStatus;
use hearth_proto::topic::{DeviceTopic, command_topic};
use hearth_proto::uplink::{Fields, UplinkBody, Value};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::backoff::Backoff;
pub use crate::clock::now_ms;
use crate::clock::{Clock, SystemClock};
use crate::commands::{self, Action};
use crate::enrol::{self, Identity};
use crate::keystore::{FileKeyStore, KeyStore};
use crate::mqtt::{self, ConnectOptions, Event, MqttConnection, MqttError, QoS};
use crate::queue::{DEFAULT_CAPACITY, MAX_SEQ, Queue, QueueError, QueuedUplink};
use crate::source::{SystemSource, TelemetrySource};

/// Start of the PUBACK reason string with which the hub refuses an uplink whose (device, seq) it already holds
/// with different content (reason code [`mqtt::REASON_IMPLEMENTATION_SPECIFIC`], `0x83`).
pub const SEQ_CONFLICT_REASON: &str = "seq_conflict";
/// PUBACK user property in which the hub reports, with a seq conflict, the highest seq it holds for the
/// device (a decimal `u64`).
pub const HIGHEST_SEQ_PROPERTY: &str = "highest_seq";

/// The directory, under the state directory, where device software keeps user data and settings (Wi-Fi
/// credentials, schedules, names): a `wipe` command (the owner released the device) empties it, with the queued
/// uplinks and the sampling interval, and the device keeps only its identity (EN 303 645 5.11-1).
pub const USER_DATA_DIR: &str = "user-data";

/// Firmware version reported in the state uplink.
pub const FIRMWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How an [`Agent`] is set up. Start from [`AgentConfig::new`] and change what you need.
pub struct AgentConfig {
    /// Directory for the key, certificate, hub configuration and queue (created with mode 0700). Device software
    /// keeps its user data and settings under [`USER_DATA_DIR`] in it: a `wipe` command erases that.
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
    /// MQTT keep-alive (default 30 s; zero turns it off).
    pub keep_alive: Duration,
    /// Limit for TCP connect, TLS handshake and CONNACK together (default 10 s).
    pub connect_timeout: Duration,
    /// Uplinks per second at most, bursts of twice that (default [`crate::pace::DEFAULT_RATE`], half the hub's
    /// default limit; 0 = unpaced). Keep it below the hub's `mqtt.publish_rate_per_sec`.
    pub max_publish_rate: u32,
    /// Where telemetry comes from (default [`SystemSource`]).
    pub source: Box<dyn TelemetrySource>,
    /// Connect MQTT to this `host:port` instead of the hub's advertised address (tests, port forwarding).
    /// The hub's certificate is still checked against the advertised MQTT host name.
    pub mqtt_addr: Option<String>,
    /// Use this key store instead of `{state_dir}/device.key`.
    pub key_store: Option<Arc<dyn KeyStore>>,
    /// Count into these counters (so a caller can watch an agent that is still enrolling); default: new ones.
    pub stats: Option<Arc<AgentStats>>,
    /// The wall clock (default [`SystemClock`]); sampling times still come from tokio's timer.
    pub clock: Arc<dyn Clock>,
    /// Over-the-air updates (default: none; the device then answers `update_check` as unsupported).
    pub updates: Option<crate::update::UpdateConfig>,
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
            connect_timeout: mqtt::DEFAULT_CONNECT_TIMEOUT,
            max_publish_rate: crate::pace::DEFAULT_RATE,
            source: Box::new(SystemSource),
            mqtt_addr: None,
            key_store: None,
            stats: None,
            clock: Arc::new(SystemClock),
            updates: None,
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
    /// Times the queue was renumbered because the hub held different data under a queued seq.
    pub renumbered: AtomicU64,
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
    /// See [`AgentStats::renumbered`].
    pub renumbered: u64,
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
            renumbered: get(&self.renumbered),
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
        self.renumbered += o.renumbered;
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
    connect_timeout: Duration,
    max_publish_rate: u32,
    mqtt_addr: Option<String>,
    topics: Topics,
    clock: Arc<dyn Clock>,
    updater: Option<crate::update::Updater>,
    updates_enabled: bool,
    nudge: Arc<tokio::sync::Notify>,
}

/// Why [`Agent::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was asked for.
    Shutdown,
    /// An update switched slots (or rolled back): start the agent again, as after a reboot.
    Reboot,
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
    /// The queue was renumbered after a seq conflict; reconnect to resend it.
    Renumbered,
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
        let clock = config.clock;
        let queue = {
            let dir = state_dir.clone();
            let capacity = config.queue_capacity;
            // A new queue file starts its seqs at the clock, so it never reuses seqs an earlier file gave out.
            let now = clock.now_ms();
            tokio::task::spawn_blocking(move || Queue::open(&dir, capacity, now))
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
        let sampler = Sampler::new(config.source, queue.clone(), stats.clone(), config.interval, clock.clone());
        let nudge = Arc::new(tokio::sync::Notify::new());
        let updater = match config.updates {
            Some(updates) => Some(
                crate::update::Updater::boot(
                    &state_dir,
                    identity.key_store().clone(),
                    updates,
                    stats.clone(),
                    nudge.clone(),
                )
                .context("while starting the updater")?,
            ),
            None => None,
        };
        Ok(Agent {
            state_dir,
            identity,
            tls,
            queue,
            stats,
            sampler,
            backoff,
            keep_alive: config.keep_alive,
            connect_timeout: config.connect_timeout,
            max_publish_rate: config.max_publish_rate,
            mqtt_addr: config.mqtt_addr,
            topics,
            clock,
            updates_enabled: updater.is_some(),
            updater,
            nudge,
        })
    }

    /// Erases user data and settings: every queued uplink (it may hold the previous owner's readings), the
    /// [`USER_DATA_DIR`], and the sampling interval back to its configured default. The identity stays.
    async fn wipe(&mut self) -> anyhow::Result<String> {
        let dropped = blocking(&self.queue, |q| {
            let n = q.len()?;
            q.remove_through(MAX_SEQ)?;
            Ok(n)
        })
        .await?;
        let user_data = self.state_dir.join(USER_DATA_DIR);
        let files = tokio::task::spawn_blocking(move || erase_dir(&user_data)).await??;
        self.sampler.reset_interval();
        tracing::warn!(queued = dropped, files, "wiped user data and settings: the device was released by its owner");
        Ok(format!("erased {dropped} queued uplinks and {files} user data files; settings back to defaults"))
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

    /// Runs until `shutdown` becomes true (or its sender is dropped), then disconnects cleanly; or until an update
    /// asks for a restart ([`Stopped::Reboot`]). Returns an error only for local failures (the queue's database,
    /// the state directory); network trouble is retried.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) -> anyhow::Result<Stopped> {
        let Some(updater) = self.updater.take() else {
            self.run_loop(shutdown).await?;
            return Ok(Stopped::Shutdown);
        };
        // The updater runs beside the loop; its restart request stops the loop like a shutdown.
        let (inner_tx, inner_rx) = watch::channel(false);
        let (updater_stop_tx, updater_stop_rx) = watch::channel(false);
        let mut updater_task = tokio::spawn(updater.run(updater_stop_rx));
        let mut outer = shutdown.clone();
        let forward = tokio::spawn(async move {
            while !*outer.borrow() {
                if outer.changed().await.is_err() {
                    break;
                }
            }
            let _ = updater_stop_tx.send(true);
        });
        let mut loop_task = std::pin::pin!(self.run_loop(inner_rx));
        let stopped = tokio::select! {
            ended = &mut loop_task => {
                ended?;
                Stopped::Shutdown
            }
            ended = &mut updater_task => {
                let reboot = match ended {
                    Ok(Ok(crate::update::UpdaterEnd::Reboot)) => true,
                    Ok(Ok(crate::update::UpdaterEnd::Stop)) => false,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "the updater stopped; updates are off until the next start");
                        false
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the updater failed");
                        false
                    }
                };
                if reboot || *shutdown.borrow() {
                    let _ = inner_tx.send(true);
                    loop_task.await?;
                    if reboot { Stopped::Reboot } else { Stopped::Shutdown }
                } else {
                    // Updates stopped, telemetry goes on.
                    loop_task.await?;
                    Stopped::Shutdown
                }
            }
        };
        forward.abort();
        Ok(stopped)
    }

    async fn run_loop(&mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut next_renew_try = Instant::now();
        loop {
            if is_shut_down(&shutdown) {
                return Ok(());
            }
            if self.clock.now_ms() >= self.identity.renew_after_ms() && Instant::now() >= next_renew_try {
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
                Ok((SessionEnd::Renumbered, conn)) => {
                    if let Some(conn) = conn {
                        conn.disconnect().await;
                    }
                    // Short (the session's SUBACK reset the backoff), but a hub that keeps refusing cannot make
                    // this a tight loop.
                    let sleep = tokio::time::sleep(self.backoff.next_delay());
                    if self.sampler.while_sampling(sleep, &mut shutdown).await?.is_none() {
                        return Ok(());
                    }
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
        opts.connect_timeout = self.connect_timeout;
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
        // After a seq conflict: the hub's highest seq (if it said), until the uplinks in flight are answered.
        let mut conflict: Option<Option<u64>> = None;
        // The highest seq the hub stored in this session: renumbering must start above it too.
        let mut highest_stored = 0u64;
        let renew_in = Duration::from_millis(self.identity.renew_after_ms().saturating_sub(self.clock.now_ms()));
        // After a failed renewal, wait for the retry time: ending the session at once would reconnect in a loop.
        let renew_at = tokio::time::sleep_until((Instant::now() + renew_in).max(renew_not_before));
        tokio::pin!(renew_at);
        let mut pacer = crate::pace::Pacer::new(self.max_publish_rate, Instant::now());
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
            if let Some(highest) = conflict
                && !inflight.iter().any(|(_, item)| item.is_some())
            {
                self.renumber(highest, highest_stored).await?;
                return Ok(SessionEnd::Renumbered);
            }
            if self.sampler.take_dirty() {
                exhausted = false;
            }
            let window = usize::from(conn.max_inflight()).saturating_sub(conn.inflight());
            let free = pacer.available(window, Instant::now());
            // Paced out with room in the window and more queued: wake when the next message may leave.
            let paced = window > 0 && free == 0 && !exhausted && conflict.is_none();
            let pace_until = pacer.next_at(Instant::now());
            if free > 0 && !exhausted && conflict.is_none() {
                let batch = blocking(&self.queue, move |q| q.next_to_send(cursor, free)).await?;
                exhausted = batch.len() < free;
                for QueuedUplink { seq, topic, payload } in batch {
                    let topic = match topic {
                        DeviceTopic::Telemetry => self.topics.telemetry.clone(),
                        DeviceTopic::Events => self.topics.events.clone(),
                        DeviceTopic::State | DeviceTopic::CommandAck => self.topics.state.clone(),
                    };
                    if let Some(pid) = conn.publish(topic, payload, QoS::AtLeastOnce)? {
                        inflight.push_back((pid, Some(seq)));
                        pacer.take(1, Instant::now());
                    }
                    cursor = seq + 1;
                }
            }

            tokio::select! {
                event = conn.next_event() => match event? {
                    Event::PubAck { packet_id, reason_code } => {
                        let Some(i) = inflight.iter().position(|(p, _)| *p == packet_id) else { continue };
                        let Some((_, item)) = inflight.remove(i) else { continue };
                        let details = conn.last_puback();
                        let outcome = classify_puback(
                            reason_code,
                            details.and_then(|d| d.reason_string.as_deref()),
                            details.and_then(|d| d.user_property(HIGHEST_SEQ_PROPERTY)),
                        );
                        let Some(seq) = item else {
                            if !mqtt::is_success(reason_code) {
                                tracing::warn!(reason_code, "the hub refused a command acknowledgement");
                            }
                            continue;
                        };
                        match outcome {
                            PubAckOutcome::Stored => {
                                blocking(&self.queue, move |q| q.ack(&[seq])).await?;
                                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                                highest_stored = highest_stored.max(seq);
                            }
                            PubAckOutcome::Invalid => {
                                // The hub will never accept this message; resending would loop forever.
                                tracing::warn!(seq, "the hub refused an uplink as invalid; dropping it");
                                blocking(&self.queue, move |q| q.ack(&[seq])).await?;
                                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            PubAckOutcome::SeqConflict { highest } => {
                                tracing::debug!(seq, ?highest, "the hub holds different data under this seq");
                                // `None < Some`: the highest seq any refusal reported wins.
                                conflict = Some(conflict.flatten().max(highest));
                            }
                            PubAckOutcome::Refused => {
                                tracing::warn!(seq, reason_code, "the hub did not accept an uplink; will resend");
                                // The message stays queued; a new session resends it after a backoff.
                                return Err(SessionError::Mqtt(MqttError::Protocol("hub refused a publish")));
                            }
                        }
                    }
                    Event::Message { topic, payload } => {
                        if topic != self.topics.commands.as_str() {
                            tracing::debug!(%topic, "ignored a message outside the command topic");
                            continue;
                        }
                        if let Some((mut ack, action)) = commands::handle(&payload, self.clock.now_ms()) {
                            match action {
                                Action::None => {}
                                Action::SetInterval(interval) => self.sampler.set_interval(interval),
                                Action::ReportState => self.sampler.push_state(&self.queue).await?,
                                Action::UpdateCheck => {
                                    if self.updates_enabled {
                                        self.nudge.notify_one();
                                    } else {
                                        ack.status = AckStatus::Unsupported;
                                        ack.detail = Some("this device has no updater".into());
                                    }
                                }
                                Action::Wipe => {
                                    // Done before the acknowledgement: `ok` tells the hub the data is gone.
                                    let (status, detail) = match self.wipe().await {
                                        Ok(erased) => (AckStatus::Ok, erased),
                                        Err(e) => (AckStatus::Error, format!("wipe failed: {e:#}")),
                                    };
                                    (ack.status, ack.detail) = (status, Some(detail));
                                }
                            }
                            tracing::info!(id = %ack.id, status = ack.status.as_str(), "answered a command");
                            acks.push_back(Bytes::from(ack.to_json()));
                            self.stats.commands_handled.fetch_add(1, Ordering::Relaxed);
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
                _ = tokio::time::sleep_until(pace_until), if paced => {}
                _ = &mut renew_at => return Ok(SessionEnd::Renew),
                _ = wait_shutdown(shutdown) => return Ok(SessionEnd::Shutdown),
            }
        }
    }

    /// Renumbers the queue after a seq conflict so that the oldest message gets a seq above everything the hub
    /// holds: `highest + 1` as the hub reported, else `max(now, next seq)` (see [`renumber_start`]).
    async fn renumber(&mut self, highest: Option<u64>, highest_stored: u64) -> Result<(), SessionError> {
        let now = self.clock.now_ms();
        let (len, next_seq) = blocking(&self.queue, |q| Ok((q.len()?, q.next_seq()?))).await?;
        let first = renumber_start(highest, highest_stored, next_seq, now);
        if first.checked_add(len).is_none_or(|end| end - 1 > MAX_SEQ) {
            // Not a local failure: the hub's number is out of range. Keep everything and try again later.
            tracing::error!(?highest, len, "the hub's highest seq leaves no room to renumber the queue");
            return Err(SessionError::Mqtt(MqttError::Protocol("seq conflict beyond the largest seq")));
        }
        let done = blocking(&self.queue, move |q| q.renumber_from(first)).await?;
        self.stats.renumbered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            count = done.count,
            first = done.first,
            hub_highest_seq = ?highest,
            "the hub holds different data under queued seqs; renumbered the queue and will resend it"
        );
        Ok(())
    }
}

/// What a PUBACK for a queued uplink means for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubAckOutcome {
    /// Stored (any reason code below `0x80`): delete the message.
    Stored,
    /// Refused as invalid (`0x99`): delete the message; resending would loop forever.
    Invalid,
    /// The hub holds different data under this seq (`0x83` with a [`SEQ_CONFLICT_REASON`] reason string or a
    /// [`HIGHEST_SEQ_PROPERTY`] property): renumber the queue above `highest` and resend.
    SeqConflict {
        /// The highest seq the hub holds for the device, if it said (and it parsed as a decimal `u64`).
        highest: Option<u64>,
    },
    /// Refused for another reason: keep the message and resend it after a reconnect.
    Refused,
}

/// Classifies a PUBACK from its reason code, reason string and [`HIGHEST_SEQ_PROPERTY`] user property.
pub fn classify_puback(reason_code: u8, reason_string: Option<&str>, highest_seq: Option<&str>) -> PubAckOutcome {
    match reason_code {
        code if mqtt::is_success(code) => PubAckOutcome::Stored,
        mqtt::REASON_PAYLOAD_FORMAT_INVALID => PubAckOutcome::Invalid,
        mqtt::REASON_IMPLEMENTATION_SPECIFIC
            if reason_string.is_some_and(|r| r.starts_with(SEQ_CONFLICT_REASON)) || highest_seq.is_some() =>
        {
            PubAckOutcome::SeqConflict { highest: highest_seq.and_then(|h| h.parse().ok()) }
        }
        _ => PubAckOutcome::Refused,
    }
}

/// The seq the oldest queued message gets when the queue is renumbered after a seq conflict: above the hub's
/// `highest` seq if it reported one, else above everything this queue handed out (`next_seq`) and at least the
/// clock (a recreated queue starts at the clock); in both cases above the highest seq the hub stored in this
/// session (`highest_stored`, 0 for none).
pub fn renumber_start(highest: Option<u64>, highest_stored: u64, next_seq: u64, now_ms: u64) -> u64 {
    let above_stored = highest_stored.saturating_add(1);
    match highest {
        Some(h) => h.saturating_add(1).max(above_stored),
        None => now_ms.max(next_seq).max(above_stored),
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
    clock: Arc<dyn Clock>,
    ticker: Interval,
    /// The configured interval, which a wipe restores.
    default_interval: Duration,
    /// Set whenever something was queued, so the session knows to look at the queue again.
    dirty: bool,
}

impl Sampler {
    fn new(
        source: Box<dyn TelemetrySource>,
        queue: Queue,
        stats: Arc<AgentStats>,
        interval: Duration,
        clock: Arc<dyn Clock>,
    ) -> Sampler {
        Sampler { source, queue, stats, clock, ticker: ticker(interval), default_interval: interval, dirty: true }
    }

    fn set_interval(&mut self, interval: Duration) {
        self.ticker = ticker(interval);
    }

    fn reset_interval(&mut self) {
        self.ticker = ticker(self.default_interval);
    }

    /// Waits for the next sampling time. Cancel-safe.
    async fn tick(&mut self) {
        self.ticker.tick().await;
    }

    fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    async fn sample(&mut self) -> anyhow::Result<()> {
        let metrics = self.source.sample(self.clock.now_ms());
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
        let ts = self.clock.now_ms();
        let pushed = blocking(&self.queue, move |q| q.push(body, ts)).await?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if pushed.dropped > 0 {
            self.stats.dropped.fetch_add(pushed.dropped, Ordering::Relaxed);
            tracing::warn!(
                dropped = pushed.dropped,
                gap_marker = pushed.gap_marker,
                "queue full; dropped the oldest uplinks (counted in the gap marker)"
            );
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

/// Deletes everything in `dir` (which stays, empty; a missing one is made), returning how many files went.
fn erase_dir(dir: &Path) -> std::io::Result<u64> {
    let mut files = 0;
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    files += erase_dir(&entry.path())?;
                    std::fs::remove_dir(entry.path())?;
                } else {
                    std::fs::remove_file(entry.path())?;
                    files += 1;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    Ok(files)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_puback_reads_the_seq_conflict_refusal() {
        use PubAckOutcome::*;
        let check = |code: u8, reason: Option<&str>, highest: Option<&str>, expected: PubAckOutcome| {
            assert_eq!(classify_puback(code, reason, highest), expected, "{code:#x} {reason:?} {highest:?}");
        };
        check(0x00, None, None, Stored);
        check(0x10, None, None, Stored);
        // An identical resend is acknowledged as stored, whatever else the hub says.
        check(0x00, Some("duplicate"), Some("77"), Stored);
        check(0x99, None, None, Invalid);
        check(
            0x83,
            Some("seq_conflict: seq 5 holds different data"),
            Some("1764000000123"),
            SeqConflict { highest: Some(1_764_000_000_123) },
        );
        check(0x83, Some("seq_conflict"), None, SeqConflict { highest: None });
        check(0x83, None, Some("42"), SeqConflict { highest: Some(42) });
        check(0x83, Some("seq_conflict"), Some("not a number"), SeqConflict { highest: None });
        check(0x83, Some("seq_conflict"), Some("-1"), SeqConflict { highest: None });
        // 0x83 for anything else, and other refusals, keep the message for a later resend.
        check(0x83, Some("storage unavailable"), None, Refused);
        check(0x83, None, None, Refused);
        check(0x87, Some("seq_conflict"), Some("42"), Refused);
        check(0x97, None, None, Refused);
    }

    #[test]
    fn renumber_start_lies_above_everything_the_hub_may_hold() {
        let check = |highest: Option<u64>, stored: u64, next: u64, now: u64, expected: u64| {
            assert_eq!(renumber_start(highest, stored, next, now), expected, "{highest:?} {stored} {next} {now}");
        };
        // The hub's highest seq decides, even below our own numbering or the clock.
        check(Some(1000), 0, 7, 1_764_000_000_000, 1001);
        check(Some(1000), 0, 5000, 1, 1001);
        // … unless this session stored something higher.
        check(Some(1000), 1500, 2000, 1, 1501);
        // Without the property: above the clock and above every seq this queue handed out.
        check(None, 0, 7, 1_764_000_000_000, 1_764_000_000_000);
        check(None, 0, 1_764_000_000_500, 1_764_000_000_000, 1_764_000_000_500);
        check(None, 1_764_000_000_600, 1_764_000_000_500, 1_764_000_000_000, 1_764_000_000_601);
        check(Some(u64::MAX), 0, 1, 1, u64::MAX);
    }
}
