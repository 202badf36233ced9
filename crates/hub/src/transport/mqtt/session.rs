//! One device's MQTT session: CONNECT, access control on every topic, limits, durable ingest with PUBACK after
//! commit, command delivery, keep-alive. The device is who its certificate says; nothing in the packets can
//! change that, and the session closes as soon as that certificate stops being accepted (revocation, or a newer
//! certificate of the device in use).
//!
//! Costs are charged per item, not per packet: every topic filter of a SUBSCRIBE spends from the same rate
//! budget as a packet, a SUBSCRIBE carries at most `max_filters_per_packet` filters, and refusals become
//! aggregated security events (one per cause and source), never a row or a log line each.
//!
//! PUBACKs leave in the order their PUBLISHes arrived (MQTT 5 §4.6): an answer that is ready at once (a refusal,
//! a command answer) waits behind earlier messages still waiting for their commit.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use hearth_proto::command::{Command, CommandAck};
use hearth_proto::topic::{self, DeviceTopic, PublishDenied};
use hearth_proto::uplink::Uplink;
use hearth_proto::{DeviceId, TopicFilterDecision};

use super::wire::{CONNACK_UNSUPPORTED_LEVEL, In, Out, PublishViolation, Reason, Version, WillIn, Wire, WireError};
use super::{Ctx, MqttLimits};
use crate::bus::Notice;
use crate::identity::{CertFacts, CertRefusal};
use crate::monitoring::SecurityEvent;
use crate::routing::{CloseReason, Link};
use crate::store::{SessionOpen, UplinkRecord};
use crate::telemetry::{Durable, IngestItem, Outcome};
use crate::transport::admission::{Slot, Stage};

/// How often, at most, a busy session tells the store that its device is active (ms of the hub's clock).
const SEEN_EVERY_MS: i64 = 30_000;

/// The admission slots a connection holds: its pending slot until CONNECT is accepted, then a session slot.
#[derive(Debug)]
pub struct Admission {
    /// Held from TCP accept until CONNECT is accepted.
    pub pending: Slot,
    /// Where the session slot comes from.
    pub sessions: Stage,
}

/// How a session ended (for logs and tests).
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (MQTT 5 reason 0x04 asks for its will all the same).
    Disconnect {
        /// The will is published.
        with_will: bool,
    },
    /// The connection closed or failed without a DISCONNECT.
    Lost,
    /// The hub closed it, with this reason.
    Hub(Reason, String),
    /// The hub closed it because the device's certificate stopped being accepted (revoked, superseded,
    /// expired): MQTT 5 `0x87 Not authorized` with this text.
    Untrusted(String),
}

impl End {
    /// Whether the connection's will is published. Not after a DISCONNECT with reason 0x00 (MQTT-3.14.4-3), nor
    /// when the hub closes the connection because the device's certificate stopped being accepted (its messages
    /// are no longer taken) or because the hub itself is shutting down (the device did not vanish).
    fn publishes_will(&self) -> bool {
        match self {
            End::Disconnect { with_will } => *with_will,
            End::Lost => true,
            End::Hub(reason, _) => *reason != Reason::ServerShuttingDown,
            End::Untrusted(_) => false,
        }
    }
}

/// A will accepted at CONNECT: checked then exactly as the publish it stands for, stored when it fires.
#[derive(Debug)]
struct Will {
    uplink: Uplink,
    /// The payload's size, charged to the device's quota when the will is stored.
    size: u64,
    /// MQTT 5 will delay interval.
    delay: Duration,
}

/// A PUBACK's reason code, reason string and user properties.
type Answer = (Reason, Option<String>, Vec<(ByteString, ByteString)>);

/// An answer to a QoS 1 PUBLISH, in arrival order; `None` while the message waits for its commit.
#[derive(Debug)]
struct PendingAck {
    packet_id: NonZeroU16,
    answer: Option<Answer>,
}

struct Session<S> {
    io: S,
    ctx: Arc<Ctx>,
    device: DeviceId,
    serial: String,
    not_after_ms: i64,
    peer: SocketAddr,
    wire: Wire,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// QoS 1 messages received and not yet answered, in arrival order.
    acks: VecDeque<PendingAck>,
    durable_tx: mpsc::UnboundedSender<Durable>,
    /// Commands sent and not yet PUBACKed by the device: packet id → command id.
    inflight_out: HashMap<u16, String>,
    next_packet_id: u16,
    /// What the client accepts: unacknowledged QoS 1 messages, and the largest packet.
    client_receive_max: u16,
    client_max_packet: Option<u32>,
    subscribed: bool,
    subscriptions: usize,
    /// How long the session outlives this connection, ms (CONNECT's session expiry; DISCONNECT may change it).
    expiry_ms: i64,
    /// The will to publish if the connection ends without a normal DISCONNECT.
    will: Option<Will>,
    /// This connection's session epoch (from the store).
    epoch: i64,
    tokens: f64,
    refilled: Instant,
    /// When the session last told the store its device was active (hub clock, ms).
    seen_at_ms: i64,
}

/// Runs a session on an authenticated TLS stream until it ends.
pub async fn run<S>(io: S, cert: CertFacts, peer: SocketAddr, ctx: Arc<Ctx>, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = ctx.limits.clone();
    // Subscribe to certificate changes before anything else, so a revocation during the handshake or CONNECT
    // is seen.
    let mut changed = ctx.identity.on_cert_change();
    let (durable_tx, mut durable_rx) = mpsc::unbounded_channel();
    let mut s = Session {
        io,
        ctx: ctx.clone(),
        device: cert.device,
        serial: cert.serial,
        not_after_ms: cert.not_after_ms,
        peer,
        wire: Wire::new(limits.max_packet),
        // Small to start (idle connections dominate memory); the codec reserves more for a large packet.
        rbuf: BytesMut::with_capacity(1024),
        wbuf: BytesMut::with_capacity(256),
        acks: VecDeque::new(),
        durable_tx,
        inflight_out: HashMap::new(),
        next_packet_id: 1,
        client_receive_max: u16::MAX,
        client_max_packet: None,
        subscribed: false,
        subscriptions: 0,
        expiry_ms: 0,
        will: None,
        epoch: 0,
        tokens: f64::from(limits.burst),
        refilled: Instant::now(),
        seen_at_ms: ctx.clock.now_ms(),
    };

    // CONNECT must arrive promptly.
    let connect = match tokio::time::timeout(limits.connect_timeout, s.read_first()).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return,
        Ok(Err(WireError::ClientIdRejected)) => {
            // 3.1.1 §3.1.3.1: a zero-length client id needs clean session; the answer is return code 2.
            s.security("client_id_rejected", "empty client id without clean session".into());
            s.wire.encode(connack(Reason::ClientIdNotValid, false, &limits, None, None, None), &mut s.wbuf);
            let _ = s.flush().await;
            return;
        }
        Ok(Err(WireError::UnsupportedLevel(level))) => {
            s.security("unsupported_protocol", format!("MQTT protocol level {level}; use 3.1.1 or 5"));
            s.wbuf.extend_from_slice(&CONNACK_UNSUPPORTED_LEVEL);
            let _ = s.flush().await;
            return;
        }
        Ok(Err(e)) => {
            let kind = if matches!(e, WireError::TooLarge { .. }) { "packet_too_large" } else { "malformed_packet" };
            s.security(kind, format!("before CONNECT: {e}"));
            return;
        }
        Err(_) => {
            s.security("connect_timeout", format!("no CONNECT within {:?}", limits.connect_timeout));
            return;
        }
    };
    // The certificate was checked at the handshake; it may have been revoked or superseded since.
    if let Err(refusal) = ctx.identity.certs().check(s.device.as_str(), &s.serial) {
        s.security(refusal_kind(refusal), format!("{refusal} between handshake and CONNECT"));
        return;
    }
    let Some(keep_alive) = s.accept_connect(connect).await else {
        let _ = s.flush().await;
        return;
    };
    let Admission { pending, sessions } = admission;
    let _session_slot = match sessions.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(full) => {
            tracing::warn!(device = %s.device, "no session slot free ({full}); closing");
            let expires_at = ctx.clock.now_ms().saturating_add(s.expiry_ms);
            if let Err(e) = ctx.store.close_session(s.device.as_str(), s.epoch, expires_at).await {
                tracing::warn!(error = %e, "could not record the end of a refused session");
            }
            s.wire.encode(
                Out::Disconnect {
                    reason: Reason::ServerUnavailable,
                    reason_string: Some("hub full; retry later".into()),
                },
                &mut s.wbuf,
            );
            let _ = s.flush().await;
            return;
        }
    };
    drop(pending);
    // A will of an earlier connection still waiting out its delay here is not published now.
    ctx.wills.cancel(&s.device);

    let conn_id = ctx.routing.next_conn_id();
    let (link, mut link_rx, mut close_rx) = Link::new(conn_id, s.epoch);
    ctx.routing.register(&s.device, link);
    // Any older connection of this device, on any node, closes. Announced in the background: CONNACK never
    // waits for the bus.
    let (bus, notice) = (ctx.bus.clone(), Notice::SessionOpened { device: s.device.clone(), epoch: s.epoch });
    tokio::spawn(async move {
        if let Err(e) = bus.publish(notice).await {
            tracing::warn!(error = %e, "could not tell other nodes of a new session");
        }
    });
    // A newer connection may have opened on another node between our epoch and our registration (its notice
    // then found nothing to close here): the store decides.
    match ctx.store.session_epoch(s.device.as_str()).await {
        Ok(current) if current > s.epoch => ctx.routing.close_older(&s.device, current),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, device = %s.device, "could not re-check the session epoch"),
    }
    if let Err(e) = ctx.identity.cert_used(&s.device, &s.serial).await {
        tracing::warn!(error = %e, device = %s.device, "could not record the first use of a certificate");
    }
    ctx.ingest.seen(s.device.as_str());
    tracing::info!(device = %s.device, peer = %s.peer, version = ?s.wire.version(), "device connected");
    if s.subscribed {
        s.deliver_open_commands().await;
    }
    // Packets sent right behind CONNECT (in the same read) are already buffered: handle them now, not on the
    // next read, which may never come.
    let pipelined = s.process_input().await;
    let _ = s.flush().await;

    // Keep-alive: the client must send something within 1.5 × its keep-alive.
    let idle_limit = Duration::from_millis(u64::from(keep_alive) * 1500);
    let mut deadline = Instant::now() + idle_limit;
    let certs = ctx.identity.certs();
    // The session lasts no longer than the certificate that opened it.
    let cert_left = Duration::from_millis(u64::try_from(s.not_after_ms - ctx.clock.now_ms()).unwrap_or(0));
    let cert_expiry = tokio::time::sleep(cert_left);
    tokio::pin!(cert_expiry);
    let end = if let Err(end) = pipelined {
        end
    } else {
        loop {
            let can_read = s.acks.len() < usize::from(limits.receive_max) + 1;
            let step = tokio::select! {
                read = s.io.read_buf(&mut s.rbuf), if can_read => match read {
                    Ok(0) | Err(_) => Err(End::Lost),
                    Ok(_) => {
                        deadline = Instant::now() + idle_limit;
                        s.process_input().await
                    }
                },
                Some(d) = durable_rx.recv() => {
                    // Answer everything the writer has decided so far in one TLS record and one write.
                    let mut next = Some(d);
                    let mut result = Ok(());
                    while let Some(d) = next {
                        if let Err(end) = s.on_durable(d) {
                            result = Err(end);
                            break;
                        }
                        next = durable_rx.try_recv().ok();
                    }
                    s.release_acks();
                    result
                }
                Some(id) = link_rx.recv() => {
                    if s.subscribed {
                        match ctx.commands.deliverable(&s.device, &id).await {
                            Ok(Some(command)) => s.send_command(&command).await,
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "could not load a command; it goes at the next subscribe"),
                        }
                    }
                    Ok(())
                }
                changed = close_rx.changed() => {
                    let reason = if changed.is_ok() { *close_rx.borrow_and_update() } else { Some(CloseReason::SessionTakenOver) };
                    match reason {
                        None => Ok(()),
                        Some(CloseReason::Revoked) => Err(End::Untrusted("device revoked".into())),
                        Some(CloseReason::SessionTakenOver) => Err(End::Hub(Reason::SessionTakenOver, "another connection of this device took over".into())),
                        Some(CloseReason::ShuttingDown) => Err(End::Hub(Reason::ServerShuttingDown, "hub shutting down".into())),
                    }
                }
                notice = changed.recv() => match notice {
                    Ok(id) if id != s.device => Ok(()),
                    // Our device changed, or notices were missed (lagged): decide from the authoritative view.
                    _ => match certs.check(s.device.as_str(), &s.serial) {
                        Ok(()) => Ok(()),
                        Err(CertRefusal::Revoked) => Err(End::Untrusted("device revoked".into())),
                        Err(other) => Err(End::Untrusted(other.to_string())),
                    },
                },
                _ = sleep_until(deadline) => Err(End::Hub(Reason::KeepAliveTimeout, "keep-alive expired".into())),
            _ = &mut cert_expiry => Err(End::Untrusted("certificate expired; renew it and reconnect".into())),
            };
            // The step's own end wins over a failed write (a client that sent DISCONNECT and reset the socket, or a
            // revoked device that stopped reading, did not "lose" its connection).
            let flushed = s.flush().await;
            if let Err(end) = step {
                break end;
            }
            if flushed.is_err() {
                break End::Lost;
            }
        }
    };

    let said = match &end {
        End::Hub(reason, text) => Some((*reason, text.clone())),
        End::Untrusted(text) => Some((Reason::NotAuthorized, text.clone())),
        End::Disconnect { .. } | End::Lost => None,
    };
    if let Some((reason, text)) = said {
        s.wire.encode(Out::Disconnect { reason, reason_string: Some(text) }, &mut s.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), s.flush()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), s.io.shutdown()).await;
    ctx.routing.unregister(&s.device, conn_id);
    if let Some(will) = s.will.take().filter(|_| end.publishes_will()) {
        publish_will(ctx.clone(), s.device.clone(), s.serial.clone(), s.epoch, will, s.expiry_ms);
    }
    let expires_at = ctx.clock.now_ms().saturating_add(s.expiry_ms);
    if let Err(e) = ctx.store.close_session(s.device.as_str(), s.epoch, expires_at).await {
        tracing::warn!(error = %e, device = %s.device, "could not record the end of a session");
    }
    ctx.ingest.seen(s.device.as_str());
    tracing::info!(device = %s.device, peer = %s.peer, end = ?end, "device disconnected");
}

/// Wills waiting out their delay on this node: at most one per device, that of its newest connection (a newer
/// connection's will replaces it, a new connection cancels it), so a device that reconnects in a loop with a long
/// will delay holds one task here, not one per connection.
#[derive(Debug, Default)]
pub struct PendingWills(std::sync::Mutex<HashMap<DeviceId, (i64, tokio::task::AbortHandle)>>);

impl PendingWills {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, (i64, tokio::task::AbortHandle)>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `task` for the will of the connection with `epoch`, unless a newer connection's will waits already
    /// (then this one could never fire: the device connected again after it).
    fn start(&self, device: DeviceId, epoch: i64, task: impl FnOnce() -> tokio::task::AbortHandle) {
        let mut map = self.map();
        if map.get(&device).is_some_and(|(newer, _)| *newer > epoch) {
            return;
        }
        if let Some((_, old)) = map.insert(device, (epoch, task())) {
            old.abort();
        }
    }

    /// A new connection of `device` opened: its waiting will is not published.
    fn cancel(&self, device: &DeviceId) {
        if let Some((_, task)) = self.map().remove(device) {
            task.abort();
        }
    }

    fn finished(&self, device: &DeviceId, task: tokio::task::Id) {
        let mut map = self.map();
        if map.get(device).is_some_and(|(_, t)| t.id() == task) {
            map.remove(device);
        }
    }

    /// Drops every waiting will (the hub is stopping; they are not published).
    pub fn abort_all(&self) {
        for (_, (_, task)) in self.map().drain() {
            task.abort();
        }
    }

    /// How many wills wait (one per device at most).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Stores a will as the message it stands for, after its delay unless the device has connected again by then
/// (on any node: the store's session epoch tells; on this node a new connection also cancels the wait), and only
/// while the certificate that set it is still accepted (a device revoked meanwhile publishes nothing). The delay is
/// cut short by the end of the session (MQTT 5 §3.1.3.2.2). A will whose hub stops before its delay ends is not
/// published.
fn publish_will(ctx: Arc<Ctx>, device: DeviceId, serial: String, epoch: i64, will: Will, expiry_ms: i64) {
    let delay = will.delay.min(Duration::from_millis(u64::try_from(expiry_ms).unwrap_or(0)));
    let spawn = {
        let (ctx, device) = (ctx.clone(), device.clone());
        move || {
            tokio::spawn(async move {
                fire_will(&ctx, &device, &serial, epoch, will, delay).await;
                if !delay.is_zero() {
                    ctx.wills.finished(&device, tokio::task::id());
                }
            })
            .abort_handle()
        }
    };
    if delay.is_zero() {
        spawn();
    } else {
        ctx.wills.start(device, epoch, spawn);
    }
}

async fn fire_will(ctx: &Ctx, device: &DeviceId, serial: &str, epoch: i64, will: Will, delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
        match ctx.store.session_epoch(device.as_str()).await {
            Ok(current) if current == epoch => {}
            Ok(_) => {
                tracing::debug!(device = %device, "the device connected again within its will delay; will not published");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, device = %device, "could not check the session; will not published");
                return;
            }
        }
    }
    if let Err(refusal) = ctx.identity.certs().check(device.as_str(), serial) {
        tracing::info!(device = %device, %refusal, "will not published: the certificate that set it is no longer accepted");
        return;
    }
    if !ctx.ingest.available() {
        tracing::warn!(device = %device, "storage unavailable; will not published");
        return;
    }
    if let Err(e) = ctx.quotas.charge(device.as_str(), will.size) {
        tracing::warn!(device = %device, error = %e, "will not published");
        return;
    }
    let record = uplink_record(device, &will.uplink, ctx.clock.now_ms());
    let (tx, mut rx) = mpsc::unbounded_channel();
    if ctx.ingest.submit(IngestItem { record, ack: Some((tx, NonZeroU16::MIN)) }).await.is_err() {
        return;
    }
    match rx.recv().await.map(|d| d.outcome) {
        Some(Outcome::Stored) => tracing::info!(device = %device, "will published"),
        Some(Outcome::Duplicate) => {
            tracing::info!(device = %device, seq = will.uplink.seq, "will already stored under its seq (a repeat)")
        }
        Some(Outcome::Conflict { highest_seq }) => ctx.monitor.record(SecurityEvent {
            device: Some(device.to_string()),
            source: None,
            kind: "seq_conflict",
            detail: format!(
                "will under seq {}: a different message is stored there; highest stored seq is {highest_seq}",
                will.uplink.seq
            ),
        }),
        Some(Outcome::Unavailable) | None => {
            tracing::warn!(device = %device, "storage failed while storing a will; it is lost")
        }
    }
}

/// The security event and reason code of a topic a device may not publish to (a PUBLISH or a will).
fn publish_refusal(denied: &PublishDenied) -> (&'static str, Reason) {
    match denied {
        PublishDenied::Invalid(_) => ("invalid_topic", Reason::TopicNameInvalid),
        PublishDenied::NotAuthorized | PublishDenied::Unknown => ("acl_publish", Reason::NotAuthorized),
    }
}

/// The row an accepted message becomes.
fn uplink_record(device: &DeviceId, uplink: &Uplink, received_at: i64) -> UplinkRecord {
    UplinkRecord {
        device_id: device.to_string(),
        seq: uplink.seq as i64,
        kind: uplink.body.kind(),
        device_ts: uplink.ts as i64,
        received_at,
        // What was validated, re-encoded: a payload with duplicate keys is stored as the value that was
        // checked, never as the raw text that smuggled a second copy past the limits.
        body_json: uplink.to_json_string(),
    }
}

fn refusal_kind(r: CertRefusal) -> &'static str {
    match r {
        CertRefusal::Revoked => "revoked",
        CertRefusal::Superseded => "superseded_certificate",
        CertRefusal::NotEnrolled => "not_enrolled",
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn read_first(&mut self) -> Result<Option<In>, WireError> {
        loop {
            if let Some(p) = self.wire.decode(&mut self.rbuf)? {
                return Ok(Some(p));
            }
            self.reserve();
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    fn reserve(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < 256 {
            self.rbuf.reserve(2048);
        }
    }

    /// Checks CONNECT and answers CONNACK. Returns the keep-alive to enforce, or `None` if refused.
    async fn accept_connect(&mut self, packet: In) -> Option<u16> {
        let limits = self.ctx.limits.clone();
        let In::Connect { client_id, keep_alive, clean, session_expiry, receive_max, max_packet_size, legacy_31, will } =
            packet
        else {
            self.security("protocol_error", "first packet is not CONNECT".into());
            return None;
        };
        let v5 = self.wire.version() == Some(Version::V5);
        if legacy_31 {
            // MQTT 3.1 (MQIsdp): the hub speaks 3.1.1 and 5 only (3.1.1 §3.2.2.3: return code 1).
            self.security("unsupported_protocol", "MQTT 3.1 (MQIsdp); use 3.1.1 or 5".into());
            self.wire
                .encode(connack(Reason::UnsupportedProtocolVersion, false, &limits, None, None, None), &mut self.wbuf);
            return None;
        }
        let assigned = client_id.is_empty();
        if !assigned && client_id.as_ref() as &str != self.device.as_str() {
            self.security(
                "client_id_mismatch",
                format!("client id {:?} is not the certificate's device id", truncate(&client_id)),
            );
            self.wire.encode(
                connack(
                    Reason::ClientIdNotValid,
                    false,
                    &limits,
                    None,
                    None,
                    Some("client id must be the device id named by the certificate, or empty"),
                ),
                &mut self.wbuf,
            );
            return None;
        }
        let (keep_alive, server_keep_alive) = if keep_alive == 0 || keep_alive > limits.max_keep_alive {
            (limits.max_keep_alive, Some(limits.max_keep_alive))
        } else {
            (keep_alive, None)
        };
        if let Some(will) = will {
            match self.check_will(will) {
                Ok(will) => self.will = Some(will),
                Err((reason, text)) => {
                    // MQTT 3.1.1 has no return code for a refused will: "not authorized" is the nearest.
                    let reason = if v5 { reason } else { Reason::NotAuthorized };
                    self.wire.encode(connack(reason, false, &limits, None, None, Some(&text)), &mut self.wbuf);
                    return None;
                }
            }
        }
        self.client_receive_max = receive_max.max(1);
        self.client_max_packet = max_packet_size;
        // 3.1.1: 0 with clean session, 0xFFFFFFFF ("never", some 136 years) without.
        self.expiry_ms = i64::from(session_expiry) * 1000;
        // The session state is in the store, so it resumes on whichever node the device reaches.
        let open =
            SessionOpen { clean, expiry_ms: self.expiry_ms, node: self.ctx.bus.node(), now: self.ctx.clock.now_ms() };
        let opened = match self.ctx.store.open_session(self.device.as_str(), &open).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, device = %self.device, "could not open a session in the store");
                self.wire.encode(
                    connack(Reason::ServerUnavailable, false, &limits, None, None, Some("storage unavailable")),
                    &mut self.wbuf,
                );
                return None;
            }
        };
        if opened.epoch == 0 {
            // Revoked (or gone) in the store, though this node's view had not caught up: refused all the same.
            self.security("revoked_connect", "CONNECT from a device the store says is revoked".into());
            self.wire.encode(
                connack(Reason::NotAuthorized, false, &limits, None, None, Some("this device is revoked")),
                &mut self.wbuf,
            );
            return None;
        }
        self.epoch = opened.epoch;
        let session_present = opened.present;
        if opened.subscribed {
            self.subscribed = true;
            self.subscriptions = 1;
        }
        let assigned_id = (v5 && assigned).then(|| ByteString::from(self.device.as_str()));
        self.wire.encode(
            connack(
                Reason::Success,
                session_present,
                &limits,
                if v5 { server_keep_alive } else { None },
                assigned_id,
                None,
            ),
            &mut self.wbuf,
        );
        Some(keep_alive)
    }

    /// Decodes and handles every complete packet in the read buffer.
    async fn process_input(&mut self) -> Result<(), End> {
        loop {
            let packet = match self.wire.decode(&mut self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.reserve();
                    return Ok(());
                }
                Err(WireError::TooLarge { size, max }) => {
                    self.security("packet_too_large", format!("{size} bytes, limit {max}"));
                    return Err(End::Hub(Reason::PacketTooLarge, format!("packet of {size} bytes exceeds {max}")));
                }
                Err(e) => {
                    self.security("malformed_packet", e.to_string());
                    return Err(End::Hub(Reason::MalformedPacket, e.to_string()));
                }
            };
            self.handle(packet).await?;
        }
    }

    async fn handle(&mut self, packet: In) -> Result<(), End> {
        // Every packet spends from the same budget: SUBSCRIBE loops cost database work too.
        if !self.take_token() {
            self.security("rate_limited", format!("more than {}/s sustained", self.ctx.limits.rate_per_sec));
            return Err(End::Hub(Reason::MessageRateTooHigh, "packet rate limit exceeded".into()));
        }
        match packet {
            In::Publish { violation: Some(v), .. } => {
                let (kind, reason, text) = match v {
                    PublishViolation::DupOnQos0 => {
                        ("malformed_packet", Reason::MalformedPacket, "DUP set on a QoS 0 PUBLISH")
                    }
                    PublishViolation::TopicAlias => (
                        "protocol_error",
                        Reason::TopicAliasInvalid,
                        "topic aliases are not allowed (Topic Alias Maximum 0)",
                    ),
                    PublishViolation::SubscriptionIdentifier => (
                        "protocol_error",
                        Reason::ProtocolError,
                        "a client PUBLISH may not carry a subscription identifier",
                    ),
                };
                self.security(kind, text.into());
                Err(End::Hub(reason, text.into()))
            }
            In::Publish { topic, payload, qos, retain, packet_id, violation: None } => {
                self.on_publish(topic, payload, qos, retain, packet_id).await
            }
            In::PubAck { packet_id } => {
                if let Some(command_id) = self.inflight_out.remove(&packet_id.get()) {
                    tracing::debug!(device = %self.device, command = %command_id, "command delivered");
                }
                Ok(())
            }
            In::Subscribe { packet_id, filters } => {
                self.charge_filters(filters.len(), "SUBSCRIBE")?;
                self.on_subscribe(packet_id, filters).await
            }
            In::Unsubscribe { packet_id, filters } => {
                self.charge_filters(filters.len(), "UNSUBSCRIBE")?;
                for f in &filters {
                    if topic::authorize_subscribe(&self.device, f) == TopicFilterDecision::Commands && self.subscribed {
                        self.subscribed = false;
                        self.subscriptions = self.subscriptions.saturating_sub(1);
                        self.set_subscribed(false).await;
                    }
                }
                self.wire.encode(Out::UnsubAck { packet_id, count: filters.len() }, &mut self.wbuf);
                Ok(())
            }
            In::PingReq => {
                self.wire.encode(Out::PingResp, &mut self.wbuf);
                Ok(())
            }
            In::Disconnect { with_will, session_expiry } => {
                if let Some(secs) = session_expiry {
                    if self.expiry_ms == 0 && secs > 0 {
                        // MQTT-3.14.2-2: a session that was to end with its connection cannot be kept at the end.
                        self.security("protocol_error", "session expiry set at DISCONNECT after 0 at CONNECT".into());
                        return Err(End::Hub(
                            Reason::ProtocolError,
                            "session expiry cannot be set at DISCONNECT when CONNECT set 0".into(),
                        ));
                    }
                    self.expiry_ms = i64::from(secs) * 1000;
                }
                Err(End::Disconnect { with_will })
            }
            In::Connect { .. } => {
                self.security("protocol_error", "second CONNECT".into());
                Err(End::Hub(Reason::ProtocolError, "CONNECT may be sent only once".into()))
            }
            In::Unexpected(name) => {
                self.security("protocol_error", format!("unexpected {name}"));
                Err(End::Hub(Reason::ProtocolError, format!("a client may not send {name} here")))
            }
        }
    }

    async fn on_publish(
        &mut self,
        topic_name: ByteString,
        payload: Bytes,
        qos: u8,
        retain: bool,
        packet_id: Option<NonZeroU16>,
    ) -> Result<(), End> {
        if qos == 2 {
            self.security("qos_not_supported", "QoS 2 publish".into());
            return Err(End::Hub(Reason::QosNotSupported, "QoS 2 is not supported; use QoS 0 or 1".into()));
        }
        if retain {
            // Refused on both versions (3.1.1 has no reason code: the connection closes).
            self.security("retain_not_supported", "retained publish".into());
            return Err(End::Hub(Reason::RetainNotSupported, "retained messages are not supported".into()));
        }
        let qos1 = match (qos, packet_id) {
            (1, Some(id)) => Some(id),
            (1, None) => {
                return Err(End::Hub(Reason::ProtocolError, "QoS 1 without packet id".into()));
            }
            _ => None,
        };
        // MQTT 5 clients know the hub's receive maximum and exceeding it is their error; 3.1.1 clients have no
        // such notion, so for them the session simply stops reading until acknowledgements catch up.
        let v5 = self.wire.version() == Some(Version::V5);
        if v5 && qos1.is_some() && self.acks.len() >= usize::from(self.ctx.limits.receive_max) {
            self.security("receive_maximum_exceeded", format!("{} unacknowledged", self.acks.len() + 1));
            return Err(End::Hub(Reason::ReceiveMaximumExceeded, "too many unacknowledged QoS 1 messages".into()));
        }
        let now_ms = self.ctx.clock.now_ms();
        // (A clock stepped back counts as due, or activity would stop showing until the clock caught up.)
        if now_ms - self.seen_at_ms >= SEEN_EVERY_MS || now_ms < self.seen_at_ms {
            self.seen_at_ms = now_ms;
            self.ctx.ingest.seen(self.device.as_str());
        }
        let kind = match topic::authorize_publish(&self.device, &topic_name) {
            Ok(k) => k,
            Err(denied) => {
                let (event, reason) = publish_refusal(&denied);
                self.security(event, format!("publish to {:?}: {denied}", truncate(&topic_name)));
                return self.refuse_publish(qos1, reason, denied.to_string());
            }
        };
        match kind {
            DeviceTopic::CommandAck => {
                let ack = match CommandAck::parse(&payload) {
                    Ok(a) => a,
                    Err(e) => {
                        self.security("invalid_payload", format!("command ack: {e}"));
                        return self.refuse_publish(qos1, Reason::PayloadFormatInvalid, e.to_string());
                    }
                };
                match self.ctx.commands.answer(&self.device, &ack).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(device = %self.device, command = %ack.id, "answer to no open command")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not record a command answer");
                        // Not acknowledged; closing makes the device reconnect and resend it.
                        return Err(End::Hub(Reason::ServerUnavailable, "could not record the answer; resend".into()));
                    }
                }
                if let Some(id) = qos1 {
                    self.answer_now(id, Reason::Success, None, Vec::new());
                }
                Ok(())
            }
            DeviceTopic::Telemetry | DeviceTopic::Events | DeviceTopic::State => {
                let uplink = match Uplink::parse(kind, &payload) {
                    Ok(u) => u,
                    Err(e) => {
                        self.security("invalid_payload", format!("{}: {e}", kind.suffix()));
                        return self.refuse_publish(qos1, Reason::PayloadFormatInvalid, e.to_string());
                    }
                };
                if !self.ctx.ingest.available() {
                    // Storage is failing or the disk is nearly full: refuse now rather than queue behind it.
                    return self.refuse_publish(
                        qos1,
                        Reason::UnspecifiedError,
                        "storage unavailable; keep the message and resend later".into(),
                    );
                }
                // Charged only when the message can be taken (a device retrying through an outage keeps its quota).
                if let Err(e) = self.ctx.quotas.charge(self.device.as_str(), payload.len() as u64) {
                    self.security("quota_exceeded", e.to_string());
                    return self.refuse_publish(qos1, Reason::QuotaExceeded, e.to_string());
                }
                let record = uplink_record(&self.device, &uplink, self.ctx.clock.now_ms());
                let ack = qos1.map(|id| (self.durable_tx.clone(), id));
                if let Some(id) = qos1 {
                    self.acks.push_back(PendingAck { packet_id: id, answer: None });
                }
                if self.ctx.ingest.submit(IngestItem { record, ack }).await.is_err() {
                    return Err(End::Hub(Reason::ServerShuttingDown, "hub shutting down".into()));
                }
                Ok(())
            }
        }
    }

    /// Records what the writer decided for a message; the answer leaves in arrival order.
    fn on_durable(&mut self, d: Durable) -> Result<(), End> {
        let v5 = self.wire.version() == Some(Version::V5);
        let answer = match d.outcome {
            Outcome::Stored | Outcome::Duplicate => (Reason::Success, None, Vec::new()),
            Outcome::Conflict { highest_seq } => {
                self.security(
                    "seq_conflict",
                    format!("a different message is stored under this seq; highest stored seq is {highest_seq}"),
                );
                let text = format!(
                    "seq_conflict: a different message is stored under this seq; highest stored seq is {highest_seq}"
                );
                if !v5 {
                    return Err(End::Hub(Reason::ImplementationSpecific, text));
                }
                (
                    Reason::ImplementationSpecific,
                    Some(text),
                    vec![(ByteString::from_static("highest_seq"), ByteString::from(highest_seq.to_string()))],
                )
            }
            Outcome::Unavailable => {
                let text = "storage unavailable; keep the message and resend later".to_owned();
                if !v5 {
                    return Err(End::Hub(Reason::ServerUnavailable, text));
                }
                (Reason::UnspecifiedError, Some(text), Vec::new())
            }
        };
        match self.acks.iter_mut().find(|a| a.packet_id == d.packet_id && a.answer.is_none()) {
            Some(slot) => slot.answer = Some(answer),
            None => tracing::warn!(device = %self.device, packet_id = d.packet_id, "outcome for no pending message"),
        }
        Ok(())
    }

    /// Queues an answer that is ready now (it still leaves after earlier, unanswered messages).
    fn answer_now(
        &mut self,
        id: NonZeroU16,
        reason: Reason,
        text: Option<String>,
        props: Vec<(ByteString, ByteString)>,
    ) {
        self.acks.push_back(PendingAck { packet_id: id, answer: Some((reason, text, props)) });
        self.release_acks();
    }

    /// Encodes every answer at the front of the queue that is ready.
    fn release_acks(&mut self) {
        while self.acks.front().is_some_and(|a| a.answer.is_some()) {
            let Some(PendingAck { packet_id, answer: Some((reason, reason_string, properties)) }) =
                self.acks.pop_front()
            else {
                break;
            };
            self.wire.encode(Out::PubAck { packet_id, reason, reason_string, properties }, &mut self.wbuf);
        }
    }

    /// Refuses a publish: MQTT 5 QoS 1 gets a PUBACK with the reason; anything else ends the connection
    /// (MQTT 3.1.1 has no way to refuse a single message).
    fn refuse_publish(&mut self, qos1: Option<NonZeroU16>, reason: Reason, text: String) -> Result<(), End> {
        match (self.wire.version(), qos1) {
            (Some(Version::V5), Some(id)) => {
                self.answer_now(id, reason, Some(text), Vec::new());
                Ok(())
            }
            _ => Err(End::Hub(reason, text)),
        }
    }

    async fn on_subscribe(&mut self, packet_id: NonZeroU16, filters: Vec<(ByteString, u8)>) -> Result<(), End> {
        let mut results = Vec::with_capacity(filters.len());
        let mut newly = false;
        let (mut invalid, mut denied) = (None, None);
        for (filter, qos) in &filters {
            let result = match topic::authorize_subscribe(&self.device, filter) {
                TopicFilterDecision::Commands => {
                    if !self.subscribed {
                        if self.subscriptions >= self.ctx.limits.max_subscriptions {
                            Err(Reason::QuotaExceeded)
                        } else {
                            self.subscribed = true;
                            self.subscriptions += 1;
                            newly = true;
                            Ok((*qos).min(1))
                        }
                    } else {
                        Ok((*qos).min(1))
                    }
                }
                TopicFilterDecision::Invalid(e) => {
                    invalid.get_or_insert_with(|| format!("{:?}: {e}", truncate(filter)));
                    Err(Reason::TopicFilterInvalid)
                }
                TopicFilterDecision::NotAuthorized => {
                    denied.get_or_insert_with(|| format!("{:?}", truncate(filter)));
                    Err(Reason::NotAuthorized)
                }
            };
            results.push(result);
        }
        // One event per cause and packet, whatever the number of filters.
        let refused = |r: Reason| results.iter().filter(|x| **x == Err(r)).count();
        if let Some(first) = invalid {
            let n = refused(Reason::TopicFilterInvalid);
            self.security("invalid_topic", format!("subscribe: {n} invalid filter(s), first {first}"));
        }
        if let Some(first) = denied {
            let n = refused(Reason::NotAuthorized);
            self.security(
                "acl_subscribe",
                format!("subscribe: {n} filter(s) outside the device's topics, first {first}"),
            );
        }
        self.wire.encode(Out::SubAck { packet_id, results }, &mut self.wbuf);
        if newly {
            // Recorded for every session, so a takeover or a resumed session keeps it (a session that ends with
            // its connection is discarded at the next CONNECT, subscription and all).
            self.set_subscribed(true).await;
            self.deliver_open_commands().await;
        }
        Ok(())
    }

    /// Checks a will exactly as the publish it stands for (topic, payload, QoS, retain), so that one that could
    /// never be stored is refused at CONNECT, not lost when it fires.
    fn check_will(&self, will: WillIn) -> Result<Will, (Reason, String)> {
        let refuse = |kind: &'static str, reason: Reason, text: String| {
            self.security(kind, format!("will: {text}"));
            Err((reason, format!("will refused: {text}")))
        };
        if will.qos == 2 {
            return refuse("qos_not_supported", Reason::QosNotSupported, "QoS 2; use QoS 0 or 1".into());
        }
        if will.retain {
            return refuse(
                "retain_not_supported",
                Reason::RetainNotSupported,
                "retained wills are not supported".into(),
            );
        }
        let kind = match topic::authorize_publish(&self.device, &will.topic) {
            Ok(kind @ (DeviceTopic::Telemetry | DeviceTopic::Events | DeviceTopic::State)) => kind,
            Ok(DeviceTopic::CommandAck) => {
                return refuse(
                    "acl_publish",
                    Reason::NotAuthorized,
                    "a will may go to the device's events, state or telemetry topic, not its command answers".into(),
                );
            }
            Err(denied) => {
                let (event, reason) = publish_refusal(&denied);
                return refuse(event, reason, format!("{:?}: {denied}", truncate(&will.topic)));
            }
        };
        match Uplink::parse(kind, &will.payload) {
            Ok(uplink) => Ok(Will {
                uplink,
                size: will.payload.len() as u64,
                delay: Duration::from_secs(u64::from(will.delay_secs)),
            }),
            Err(e) => refuse("invalid_payload", Reason::PayloadFormatInvalid, format!("{}: {e}", kind.suffix())),
        }
    }

    /// Records the persistent session's command subscription (only while this connection is the current one).
    async fn set_subscribed(&mut self, on: bool) {
        if let Err(e) = self.ctx.store.set_session_subscribed(self.device.as_str(), on, self.epoch).await {
            tracing::warn!(error = %e, device = %self.device, "could not record the session's subscription");
        }
    }

    async fn deliver_open_commands(&mut self) {
        match self.ctx.commands.open_for(&self.device).await {
            Ok(rows) => {
                for row in rows {
                    self.send_command(&crate::commands::to_command(&row)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not load open commands"),
        }
    }

    async fn send_command(&mut self, command: &Command) {
        // Never more unacknowledged than the client accepts (its Receive Maximum), nor more than 64.
        if self.inflight_out.len() >= usize::from(self.client_receive_max).min(64) {
            // The device is not acknowledging; the command stays open and is sent on the next subscribe.
            return;
        }
        let topic = ByteString::from(topic::command_topic(&self.device));
        let payload = Bytes::from(command.to_json());
        // Fixed header (≤ 5), topic length prefix, packet id and an empty property block: a safe upper bound.
        let size = 5 + 2 + topic.len() + 2 + 1 + payload.len();
        if self.client_max_packet.is_some_and(|max| size as u64 > u64::from(max)) {
            tracing::warn!(device = %self.device, command = %command.id, size, max = ?self.client_max_packet,
                "command larger than the client's maximum packet size; not sent");
            return;
        }
        let packet_id = self.alloc_packet_id();
        self.inflight_out.insert(packet_id.get(), command.id.clone());
        self.wire.encode(Out::Publish { topic, payload, packet_id }, &mut self.wbuf);
        if let Err(e) = self.ctx.commands.mark_sent(&command.id).await {
            tracing::warn!(error = %e, "could not mark a command sent");
        }
    }

    fn alloc_packet_id(&mut self) -> NonZeroU16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if let Some(nz) = NonZeroU16::new(id).filter(|_| !self.inflight_out.contains_key(&id)) {
                return nz;
            }
        }
    }

    fn take_token(&mut self) -> bool {
        self.take_tokens(1)
    }

    /// Spends `n` from the rate budget, or nothing if it holds fewer.
    fn take_tokens(&mut self, n: usize) -> bool {
        let limits = &self.ctx.limits;
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(limits.rate_per_sec)).min(f64::from(limits.burst));
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Charges the topic filters of a SUBSCRIBE or UNSUBSCRIBE (the packet itself was charged already): too
    /// many in one packet, or more than the rate budget holds, close the connection.
    fn charge_filters(&mut self, count: usize, packet: &str) -> Result<(), End> {
        let max = self.ctx.limits.max_filters_per_packet;
        if count > max {
            self.security("too_many_filters", format!("{packet} with {count} topic filters, limit {max}"));
            return Err(End::Hub(Reason::QuotaExceeded, format!("at most {max} topic filters per {packet}")));
        }
        if !self.take_tokens(count.saturating_sub(1)) {
            self.security("rate_limited", format!("{packet} filters beyond {}/s", self.ctx.limits.rate_per_sec));
            return Err(End::Hub(Reason::MessageRateTooHigh, "packet rate limit exceeded".into()));
        }
        Ok(())
    }

    /// Writes what is buffered. A peer that stops reading for 30 s is dropped: a stuck write would otherwise
    /// keep the session from seeing keep-alive, takeover and revocation.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            let write = async {
                self.io.write_all(&self.wbuf).await?;
                self.io.flush().await
            };
            tokio::time::timeout(Duration::from_secs(30), write)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading"))??;
            self.wbuf.clear();
        }
        Ok(())
    }

    fn security(&self, kind: &'static str, detail: String) {
        self.ctx.monitor.record(SecurityEvent {
            device: Some(self.device.to_string()),
            source: Some(self.peer.ip()),
            kind,
            detail,
        });
    }
}

fn connack(
    reason: Reason,
    session_present: bool,
    limits: &MqttLimits,
    server_keep_alive: Option<u16>,
    assigned_client_id: Option<ByteString>,
    reason_string: Option<&str>,
) -> Out {
    Out::ConnAck {
        reason,
        session_present,
        receive_max: limits.receive_max,
        max_packet_size: limits.max_packet,
        server_keep_alive,
        assigned_client_id,
        reason_string: reason_string.map(str::to_owned),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_older_connections_will_never_replaces_a_newer_ones() {
        let wills = PendingWills::default();
        let device = DeviceId::parse("dev-1").expect("id");
        let waiting = || tokio::spawn(std::future::pending::<()>()).abort_handle();
        wills.start(device.clone(), 6, waiting);
        let newer = wills.map().get(&device).map(|(_, t)| t.id());
        let mut started = false;
        wills.start(device.clone(), 5, || {
            started = true;
            waiting()
        });
        assert!(!started, "the will of epoch 5 is not started behind epoch 6's");
        assert_eq!(wills.map().get(&device).map(|(_, t)| t.id()), newer);
        wills.start(device.clone(), 7, waiting);
        assert_eq!(wills.len(), 1, "epoch 7's will replaces epoch 6's");
        wills.cancel(&device);
        assert!(wills.is_empty());
        wills.start(device.clone(), 8, waiting);
        wills.abort_all();
        assert!(wills.is_empty());
    }
}
