//! One device's MQTT session: CONNECT, access control on every topic, limits, durable ingest with PUBACK after
//! commit, command delivery, keep-alive. The device is who its certificate says; nothing in the packets can
//! change that.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use hearth_proto::command::CommandAck;
use hearth_proto::topic::{self, DeviceTopic, PublishDenied};
use hearth_proto::uplink::{Uplink, UplinkBody};
use hearth_proto::{DeviceId, TopicFilterDecision};

use super::wire::{In, Out, Reason, Version, Wire, WireError};
use super::{Ctx, MqttLimits};
use crate::monitoring::SecurityEvent;
use crate::routing::{CloseReason, Downlink, Link};
use crate::store::{CommandRow, UplinkRecord};
use crate::telemetry::{Durable, IngestItem};

/// How a session ended (for logs and tests).
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT or closed the connection.
    Client,
    /// The hub closed it, with this reason.
    Hub(Reason, String),
}

struct Session<S> {
    io: S,
    ctx: Arc<Ctx>,
    device: DeviceId,
    peer: SocketAddr,
    wire: Wire,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// QoS 1 messages handed to the writer and not yet acknowledged.
    inflight_in: usize,
    durable_tx: mpsc::UnboundedSender<Durable>,
    /// Commands sent and not yet PUBACKed by the device: packet id → command id.
    inflight_out: HashMap<u16, String>,
    next_packet_id: u16,
    subscribed: bool,
    subscriptions: usize,
    persistent: bool,
    tokens: f64,
    refilled: Instant,
}

/// Runs a session on an authenticated TLS stream until it ends.
pub async fn run<S>(io: S, device: DeviceId, peer: SocketAddr, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = ctx.limits.clone();
    // Subscribe to revocations before anything else, so a revocation during the handshake or CONNECT is seen.
    let mut revoked = ctx.identity.on_revoke();
    let (durable_tx, mut durable_rx) = mpsc::unbounded_channel();
    let mut s = Session {
        io,
        ctx: ctx.clone(),
        device,
        peer,
        wire: Wire::new(limits.max_packet),
        // Small to start (idle connections dominate memory); the codec reserves more for a large packet.
        rbuf: BytesMut::with_capacity(1024),
        wbuf: BytesMut::with_capacity(256),
        inflight_in: 0,
        durable_tx,
        inflight_out: HashMap::new(),
        next_packet_id: 1,
        subscribed: false,
        subscriptions: 0,
        persistent: false,
        tokens: f64::from(limits.burst),
        refilled: Instant::now(),
    };

    // CONNECT must arrive promptly.
    let connect = match tokio::time::timeout(limits.connect_timeout, s.read_first()).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            s.security("malformed_packet", format!("before CONNECT: {e}"));
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %s.peer, "no CONNECT in time");
            return;
        }
    };
    // The certificate was checked at the handshake; the device may have been revoked since.
    if ctx.identity.revocations().is_revoked(s.device.as_str()) {
        s.security("revoked", "revoked between handshake and CONNECT".into());
        return;
    }
    let Some(keep_alive) = s.accept_connect(connect).await else {
        let _ = s.flush().await;
        return;
    };

    let conn_id = ctx.routing.next_conn_id();
    let (link_tx, mut link_rx) = mpsc::channel(64);
    if let Some(old) = ctx.routing.register(&s.device, Link { conn_id, tx: link_tx }) {
        let _ = old.tx.try_send(Downlink::Close(CloseReason::SessionTakenOver));
    }
    ctx.ingest.seen(s.device.as_str());
    tracing::info!(device = %s.device, peer = %s.peer, version = ?s.wire.version(), "device connected");
    if s.subscribed {
        s.deliver_open_commands().await;
    }
    let _ = s.flush().await;

    // Keep-alive: the client must send something within 1.5 × its keep-alive.
    let idle_limit = Duration::from_millis(u64::from(keep_alive) * 1500);
    let mut deadline = Instant::now() + idle_limit;
    let revocations = ctx.identity.revocations();
    let end = loop {
        let can_read = s.inflight_in < usize::from(limits.receive_max) + 1;
        let step = tokio::select! {
            read = s.io.read_buf(&mut s.rbuf), if can_read => match read {
                Ok(0) | Err(_) => Err(End::Client),
                Ok(_) => {
                    deadline = Instant::now() + idle_limit;
                    s.process_input().await
                }
            },
            Some(d) = durable_rx.recv() => {
                // Acknowledge everything the writer has committed so far in one TLS record and one write.
                let mut next = Some(d);
                while let Some(d) = next {
                    s.inflight_in -= 1;
                    s.wire.encode(Out::PubAck { packet_id: d.packet_id, reason: Reason::Success, reason_string: None }, &mut s.wbuf);
                    next = durable_rx.try_recv().ok();
                }
                Ok(())
            }
            Some(msg) = link_rx.recv() => match msg {
                Downlink::Command(row) => { if s.subscribed { s.send_command(&row).await; } Ok(()) }
                Downlink::Close(CloseReason::Revoked) => Err(End::Hub(Reason::NotAuthorized, "device revoked".into())),
                Downlink::Close(CloseReason::SessionTakenOver) => Err(End::Hub(Reason::SessionTakenOver, "another connection of this device took over".into())),
                Downlink::Close(CloseReason::ShuttingDown) => Err(End::Hub(Reason::ServerShuttingDown, "hub shutting down".into())),
            },
            notice = revoked.recv() => match notice {
                Ok(id) if id != s.device => Ok(()),
                // Missed notices (lagged) or a closed channel: decide from the authoritative set.
                Err(_) if !revocations.is_revoked(s.device.as_str()) => Ok(()),
                _ => Err(End::Hub(Reason::NotAuthorized, "device revoked".into())),
            },
            _ = sleep_until(deadline) => Err(End::Hub(Reason::KeepAliveTimeout, "keep-alive expired".into())),
        };
        if s.flush().await.is_err() {
            break End::Client;
        }
        if let Err(end) = step {
            break end;
        }
    };

    if let End::Hub(reason, text) = &end {
        s.wire.encode(Out::Disconnect { reason: *reason, reason_string: Some(text.clone()) }, &mut s.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), s.flush()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), s.io.shutdown()).await;
    ctx.routing.unregister(&s.device, conn_id);
    if !s.persistent {
        ctx.routing.set_persistent_subscription(&s.device, false);
    }
    ctx.ingest.seen(s.device.as_str());
    tracing::info!(device = %s.device, peer = %s.peer, end = ?end, "device disconnected");
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
        let In::Connect { client_id, keep_alive, clean, session_expiry } = packet else {
            self.security("protocol_error", "first packet is not CONNECT".into());
            return None;
        };
        let v5 = self.wire.version() == Some(Version::V5);
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
        self.persistent = !clean || (v5 && session_expiry > 0);
        let session_present = !clean && self.ctx.routing.has_persistent_subscription(&self.device);
        if clean {
            self.ctx.routing.set_persistent_subscription(&self.device, false);
        }
        if session_present {
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
            In::Publish { topic, payload, qos, retain, packet_id } => {
                self.on_publish(topic, payload, qos, retain, packet_id).await
            }
            In::PubAck { packet_id } => {
                if let Some(command_id) = self.inflight_out.remove(&packet_id.get()) {
                    tracing::debug!(device = %self.device, command = %command_id, "command delivered");
                }
                Ok(())
            }
            In::Subscribe { packet_id, filters } => self.on_subscribe(packet_id, filters).await,
            In::Unsubscribe { packet_id, filters } => {
                for f in &filters {
                    if topic::authorize_subscribe(&self.device, f) == TopicFilterDecision::Commands && self.subscribed {
                        self.subscribed = false;
                        self.subscriptions = self.subscriptions.saturating_sub(1);
                        self.ctx.routing.set_persistent_subscription(&self.device, false);
                    }
                }
                self.wire.encode(Out::UnsubAck { packet_id, count: filters.len() }, &mut self.wbuf);
                Ok(())
            }
            In::PingReq => {
                self.wire.encode(Out::PingResp, &mut self.wbuf);
                Ok(())
            }
            In::Disconnect => Err(End::Client),
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
        if retain && self.wire.version() == Some(Version::V5) {
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
        if v5 && qos1.is_some() && self.inflight_in >= usize::from(self.ctx.limits.receive_max) {
            self.security("receive_maximum_exceeded", format!("{} unacknowledged", self.inflight_in + 1));
            return Err(End::Hub(Reason::ReceiveMaximumExceeded, "too many unacknowledged QoS 1 messages".into()));
        }
        let kind = match topic::authorize_publish(&self.device, &topic_name) {
            Ok(k) => k,
            Err(denied) => {
                let (event, reason) = match &denied {
                    PublishDenied::Invalid(_) => ("invalid_topic", Reason::TopicNameInvalid),
                    PublishDenied::NotAuthorized | PublishDenied::Unknown => ("acl_publish", Reason::NotAuthorized),
                };
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
                    self.wire.encode(
                        Out::PubAck { packet_id: id, reason: Reason::Success, reason_string: None },
                        &mut self.wbuf,
                    );
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
                let record = UplinkRecord {
                    device_id: self.device.to_string(),
                    seq: uplink.seq as i64,
                    kind: match uplink.body {
                        UplinkBody::Telemetry { .. } => "telemetry",
                        UplinkBody::Event { .. } => "event",
                        UplinkBody::State { .. } => "state",
                    },
                    device_ts: uplink.ts as i64,
                    received_at: crate::now_ms(),
                    // What was validated, re-encoded: a payload with duplicate keys is stored as the value that
                    // was checked, never as the raw text that smuggled a second copy past the limits.
                    body_json: uplink.to_json_string(),
                };
                let ack = qos1.map(|id| (self.durable_tx.clone(), id));
                if qos1.is_some() {
                    self.inflight_in += 1;
                }
                if self.ctx.ingest.submit(IngestItem { record, ack }).await.is_err() {
                    return Err(End::Hub(Reason::ServerShuttingDown, "hub shutting down".into()));
                }
                Ok(())
            }
        }
    }

    /// Refuses a publish: MQTT 5 QoS 1 gets a PUBACK with the reason; anything else ends the connection
    /// (MQTT 3.1.1 has no way to refuse a single message).
    fn refuse_publish(&mut self, qos1: Option<NonZeroU16>, reason: Reason, text: String) -> Result<(), End> {
        match (self.wire.version(), qos1) {
            (Some(Version::V5), Some(id)) => {
                self.wire.encode(Out::PubAck { packet_id: id, reason, reason_string: Some(text) }, &mut self.wbuf);
                Ok(())
            }
            _ => Err(End::Hub(reason, text)),
        }
    }

    async fn on_subscribe(&mut self, packet_id: NonZeroU16, filters: Vec<(ByteString, u8)>) -> Result<(), End> {
        let mut results = Vec::with_capacity(filters.len());
        let mut newly = false;
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
                    self.security("invalid_topic", format!("subscribe {:?}: {e}", truncate(filter)));
                    Err(Reason::TopicFilterInvalid)
                }
                TopicFilterDecision::NotAuthorized => {
                    self.security("acl_subscribe", format!("subscribe {:?}", truncate(filter)));
                    Err(Reason::NotAuthorized)
                }
            };
            results.push(result);
        }
        self.wire.encode(Out::SubAck { packet_id, results }, &mut self.wbuf);
        if newly {
            if self.persistent {
                self.ctx.routing.set_persistent_subscription(&self.device, true);
            }
            self.deliver_open_commands().await;
        }
        Ok(())
    }

    async fn deliver_open_commands(&mut self) {
        match self.ctx.commands.open_for(&self.device).await {
            Ok(rows) => {
                for row in rows {
                    self.send_command(&row).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not load open commands"),
        }
    }

    async fn send_command(&mut self, row: &CommandRow) {
        if self.inflight_out.len() >= 64 {
            // The device is not acknowledging; the command stays open and is sent on the next subscribe.
            return;
        }
        let packet_id = self.alloc_packet_id();
        self.inflight_out.insert(packet_id.get(), row.id.clone());
        self.wire.encode(
            Out::Publish {
                topic: ByteString::from(topic::command_topic(&self.device)),
                payload: Bytes::from(crate::commands::to_wire(row)),
                packet_id,
            },
            &mut self.wbuf,
        );
        if let Err(e) = self.ctx.commands.mark_sent(&row.id).await {
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
        let limits = &self.ctx.limits;
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(limits.rate_per_sec)).min(f64::from(limits.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
            source: Some(self.peer.to_string()),
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
