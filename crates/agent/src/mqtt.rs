//! A small MQTT 5 client over TLS, built on `rmqtt-codec`'s v5 codec (the wire format is never hand-written
//! here): CONNECT/CONNACK, one SUBSCRIBE, QoS 0/1 publishing with packet ids and an inflight window, keep-alive
//! with PINGREQ, incoming QoS 1 messages acknowledged, and a clean DISCONNECT. A PUBACK's reason string and
//! user properties are kept for [`MqttConnection::last_puback`].
//!
//! It is deliberately lean, because the load generator runs thousands of them: one [`MqttConnection`] is a
//! plain struct driven by its owner's task (no background task, no channels). [`MqttConnection::publish`]
//! and [`MqttConnection::subscribe`] only encode into an outgoing buffer; all socket I/O and the keep-alive
//! timer run inside [`MqttConnection::next_event`], which is cancel-safe, so the owner can `select!` on it
//! together with its own timers. **Keep polling `next_event`**: nothing is sent, and no PINGREQ goes out,
//! while it is not polled.
//!
//! ```no_run
//! # async fn demo(opts: hearth_agent::mqtt::ConnectOptions) -> Result<(), hearth_agent::mqtt::MqttError> {
//! use hearth_agent::mqtt::{Event, MqttConnection, QoS};
//! let mut conn = MqttConnection::connect(opts).await?;
//! conn.subscribe("devices/dev-1/commands", QoS::AtLeastOnce)?;
//! let pid = conn.publish("devices/dev-1/telemetry", bytes::Bytes::from_static(b"{}"), QoS::AtLeastOnce)?;
//! loop {
//!     match conn.next_event().await? {
//!         Event::PubAck { packet_id, .. } if Some(packet_id) == pid => break,
//!         _ => {}
//!     }
//! }
//! conn.disconnect().await;
//! # Ok(()) }
//! ```

use std::future::poll_fn;
use std::io;
use std::num::{NonZeroU16, NonZeroU32};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::Publish;
use rmqtt_codec::v5::{
    Codec, Connect, ConnectAckReason, Disconnect, DisconnectReasonCode, Packet, PublishAck, PublishAckReason,
    Subscribe, SubscriptionOptions,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Decoder, Encoder};

pub use rmqtt_codec::v5::QoS;

/// Default keep-alive.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Default limit for TCP connect + TLS handshake + CONNACK.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest packet accepted from the hub (the protocol's limit).
pub const DEFAULT_MAX_PACKET: u32 = 64 * 1024;
/// Default number of QoS 1 publishes awaiting PUBACK.
pub const DEFAULT_INFLIGHT: u16 = 32;
/// PUBACK reason: success.
pub const REASON_SUCCESS: u8 = 0x00;

/// Whether an MQTT 5 reason code reports success: every code below 0x80 does (for example 0x10, "no matching
/// subscribers", which a broker may send for a publish nobody subscribed to).
pub fn is_success(reason_code: u8) -> bool {
    reason_code < 0x80
}
/// PUBACK reason: the hub validated the payload and refused it; resending will not help.
pub const REASON_PAYLOAD_FORMAT_INVALID: u8 = 0x99;
/// PUBACK reason: implementation specific error (the hub uses it for a seq conflict, see [`crate::agent`]).
pub const REASON_IMPLEMENTATION_SPECIFIC: u8 = 0x83;

/// How much is read from the socket at once.
const READ_CHUNK: usize = 8 * 1024;

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// TCP address, `host:port`.
    pub addr: String,
    /// The name the hub's server certificate must carry.
    pub server_name: ServerName<'static>,
    /// TLS configuration (see [`crate::tls::client_config`]): hub CA as only root, device certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// MQTT client id: the device id.
    pub client_id: String,
    /// Keep-alive; the hub may override it in CONNACK.
    pub keep_alive: Duration,
    /// Limit for TCP connect, TLS handshake and CONNACK together.
    pub connect_timeout: Duration,
    /// Largest packet accepted from the hub (announced in CONNECT, enforced by the decoder).
    pub max_packet_size: u32,
    /// Most QoS 1 publishes awaiting PUBACK (further capped by the hub's Receive Maximum).
    pub inflight: u16,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Options with the defaults: keep-alive 30 s, connect timeout 10 s, 64 KiB packets, inflight 32.
    pub fn new(
        addr: impl Into<String>,
        server_name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        client_id: impl Into<String>,
    ) -> ConnectOptions {
        ConnectOptions {
            addr: addr.into(),
            server_name,
            tls,
            client_id: client_id.into(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_packet_size: DEFAULT_MAX_PACKET,
            inflight: DEFAULT_INFLIGHT,
        }
    }
}

/// Why the connection failed or ended. After any error the connection is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The socket or TLS failed (including a refused handshake, for example a revoked certificate).
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// Connecting, the TLS handshake or CONNACK took longer than the connect timeout.
    #[error("no CONNACK within {0:?}")]
    ConnectTimeout(Duration),
    /// The hub answered CONNECT with a failure reason.
    #[error("hub refused the connection: {reason} (0x{code:02x}){}", fmt_reason_string(.reason_string))]
    Refused {
        /// The CONNACK reason code.
        code: u8,
        /// Its name.
        reason: String,
        /// The hub's explanation, if it sent one.
        reason_string: Option<String>,
    },
    /// The hub closed the session with DISCONNECT.
    #[error("hub disconnected: {reason} (0x{code:02x}){}", fmt_reason_string(.reason_string))]
    Disconnected {
        /// The DISCONNECT reason code.
        code: u8,
        /// Its name.
        reason: String,
        /// The hub's explanation, if it sent one.
        reason_string: Option<String>,
    },
    /// The hub closed the connection without DISCONNECT.
    #[error("hub closed the connection")]
    Closed,
    /// No PINGRESP arrived within the keep-alive interval.
    #[error("no PINGRESP within {0:?}; connection presumed dead")]
    KeepAliveTimeout(Duration),
    /// The hub sent something that could not be decoded (or was larger than the limit).
    #[error("could not decode a packet from the hub: {0}")]
    Decode(String),
    /// A packet could not be encoded (for example larger than the hub's maximum packet size).
    #[error("could not encode a packet: {0}")]
    Encode(String),
    /// The hub broke the protocol.
    #[error("protocol violation by the hub: {0}")]
    Protocol(&'static str),
    /// A QoS 1 publish was attempted with the inflight window full; wait for a PUBACK.
    #[error("inflight window full")]
    InflightFull,
}

fn fmt_reason_string(s: &Option<String>) -> String {
    s.as_ref().map(|s| format!(": {s}")).unwrap_or_default()
}

/// Something the hub sent that the owner should know about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message on a subscribed topic. A QoS 1 message has already been acknowledged (PUBACK).
    Message {
        /// Its topic.
        topic: ByteString,
        /// Its payload.
        payload: Bytes,
    },
    /// The hub acknowledged a QoS 1 publish; its slot in the inflight window is free again.
    PubAck {
        /// The id [`MqttConnection::publish`] returned.
        packet_id: u16,
        /// The reason code: [`REASON_SUCCESS`], [`REASON_PAYLOAD_FORMAT_INVALID`], `0x87` not authorized, …
        reason_code: u8,
    },
    /// The hub answered a SUBSCRIBE.
    SubAck {
        /// The id [`MqttConnection::subscribe`] returned.
        packet_id: u16,
        /// One reason code per filter: granted QoS (0, 1) or a failure (≥ 0x80).
        reason_codes: Vec<u8>,
    },
}

/// What a PUBACK carried besides its packet id and reason code: the MQTT 5 properties a hub may add to
/// explain itself. See [`MqttConnection::last_puback`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PubAckDetails {
    /// The packet id, as in [`Event::PubAck`].
    pub packet_id: u16,
    /// The reason code, as in [`Event::PubAck`].
    pub reason_code: u8,
    /// The hub's explanation, if it sent one.
    pub reason_string: Option<ByteString>,
    /// The user properties (name, value), in the order received; a name may repeat.
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl PubAckDetails {
    /// The value of the first user property called `name`.
    pub fn user_property(&self, name: &str) -> Option<&str> {
        self.user_properties.iter().find(|(k, _)| k == name).map(|(_, v)| &**v)
    }
}

/// One MQTT 5 session. See the module documentation for how to drive it.
pub struct MqttConnection<S = TlsStream<TcpStream>> {
    io: S,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    need_flush: bool,
    keep_alive: Duration,
    last_sent: Instant,
    /// When the hub last sent anything: a link on which publishes leave but nothing comes back is dead, and is
    /// noticed within two keep-alives (before, only silence on our side triggered a ping, so a device that kept
    /// publishing into a half-open link noticed only once its inflight window was full).
    last_received: Instant,
    ping_sent: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    inflight: Vec<u16>,
    max_inflight: u16,
    next_pid: u16,
    session_present: bool,
    last_puback: Option<PubAckDetails>,
}

impl<S> std::fmt::Debug for MqttConnection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConnection")
            .field("keep_alive", &self.keep_alive)
            .field("inflight", &self.inflight.len())
            .field("max_inflight", &self.max_inflight)
            .finish_non_exhaustive()
    }
}

impl MqttConnection<TlsStream<TcpStream>> {
    /// Connects over TCP and TLS and completes CONNECT/CONNACK, all within `opts.connect_timeout`.
    pub async fn connect(opts: ConnectOptions) -> Result<Self, MqttError> {
        let limit = opts.connect_timeout;
        tokio::time::timeout(limit, async {
            let tcp = TcpStream::connect(&opts.addr).await?;
            tcp.set_nodelay(true)?;
            let connector = tokio_rustls::TlsConnector::from(opts.tls.clone());
            let tls = connector.connect(opts.server_name.clone(), tcp).await?;
            MqttConnection::handshake(tls, &opts).await
        })
        .await
        .map_err(|_| MqttError::ConnectTimeout(limit))?
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MqttConnection<S> {
    /// Completes CONNECT/CONNACK over an established stream (no timeout of its own; the transport fields of
    /// `opts` are not used). [`MqttConnection::connect`] is the usual entry point.
    pub async fn handshake(io: S, opts: &ConnectOptions) -> Result<Self, MqttError> {
        let keep_alive_secs = u16::try_from(opts.keep_alive.as_secs()).unwrap_or(u16::MAX);
        let mut conn = MqttConnection {
            io,
            codec: Codec::new(opts.max_packet_size, 0),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            need_flush: false,
            keep_alive: opts.keep_alive,
            last_sent: Instant::now(),
            last_received: Instant::now(),
            ping_sent: None,
            timer: Box::pin(tokio::time::sleep(opts.keep_alive)),
            inflight: Vec::with_capacity(usize::from(opts.inflight)),
            max_inflight: opts.inflight.max(1),
            next_pid: 0,
            session_present: false,
            last_puback: None,
        };
        let connect = Connect {
            clean_start: true,
            keep_alive: keep_alive_secs,
            client_id: ByteString::from(opts.client_id.as_str()),
            // We acknowledge commands immediately, so a small window is plenty.
            receive_max: NonZeroU16::new(16),
            max_packet_size: NonZeroU32::new(opts.max_packet_size),
            ..Connect::default()
        };
        conn.send(Packet::Connect(Box::new(connect)))?;
        let ack = match conn.next_packet(false).await? {
            Packet::ConnectAck(ack) => ack,
            Packet::Disconnect(d) => return Err(disconnected(&d)),
            _ => return Err(MqttError::Protocol("expected CONNACK")),
        };
        if ack.reason_code != ConnectAckReason::Success {
            return Err(MqttError::Refused {
                code: ack.reason_code as u8,
                reason: format!("{:?}", ack.reason_code),
                reason_string: ack.reason_string.as_ref().map(|s| s.to_string()),
            });
        }
        if let Some(secs) = ack.server_keepalive_sec {
            conn.keep_alive = Duration::from_secs(u64::from(secs));
        }
        conn.max_inflight = conn.max_inflight.min(ack.receive_max.get());
        if let Some(max) = ack.max_packet_size {
            conn.codec.set_max_outbound_size(max);
        }
        conn.session_present = ack.session_present;
        Ok(conn)
    }

    /// Queues a SUBSCRIBE for one filter; the answer arrives as [`Event::SubAck`] with the returned id.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<u16, MqttError> {
        let packet_id = self.alloc_pid();
        let options = SubscriptionOptions { qos, ..SubscriptionOptions::default() };
        self.send(Packet::Subscribe(Subscribe {
            packet_id: nonzero(packet_id),
            id: None,
            user_properties: Vec::new(),
            topic_filters: vec![(ByteString::from(filter), options)],
        }))?;
        Ok(packet_id)
    }

    /// Queues a publish. QoS 1 returns the packet id its [`Event::PubAck`] will carry, or
    /// [`MqttError::InflightFull`] when [`MqttConnection::can_publish`] is false; QoS 0 returns `None`.
    pub fn publish(
        &mut self,
        topic: impl Into<ByteString>,
        payload: Bytes,
        qos: QoS,
    ) -> Result<Option<u16>, MqttError> {
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => {
                if !self.can_publish() {
                    return Err(MqttError::InflightFull);
                }
                let pid = self.alloc_pid();
                self.inflight.push(pid);
                Some(pid)
            }
            QoS::ExactlyOnce => return Err(MqttError::Encode("QoS 2 is not supported".into())),
        };
        let publish = Publish {
            dup: false,
            retain: false,
            qos,
            topic: topic.into(),
            packet_id: packet_id.map(nonzero),
            payload,
            properties: None,
        };
        if let Err(e) = self.send(Packet::Publish(Box::new(publish))) {
            if let Some(pid) = packet_id {
                self.inflight.retain(|p| *p != pid);
            }
            return Err(e);
        }
        Ok(packet_id)
    }

    /// Whether a QoS 1 publish fits in the inflight window now.
    pub fn can_publish(&self) -> bool {
        self.inflight.len() < usize::from(self.max_inflight)
    }

    /// How many QoS 1 publishes await their PUBACK.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// The inflight window: the configured one, capped by the hub's Receive Maximum.
    pub fn max_inflight(&self) -> u16 {
        self.max_inflight
    }

    /// The keep-alive in force (the hub's Server Keep Alive if it sent one).
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Whether the hub reported an existing session in CONNACK (never, with clean start).
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// The details of the PUBACK most recently returned as [`Event::PubAck`] (reason string, user
    /// properties); read them right after that event, before polling [`MqttConnection::next_event`] again.
    pub fn last_puback(&self) -> Option<&PubAckDetails> {
        self.last_puback.as_ref()
    }

    /// Sends what is queued and waits for the next event. Cancel-safe: dropping the future loses nothing.
    pub async fn next_event(&mut self) -> Result<Event, MqttError> {
        loop {
            let packet = self.next_packet(true).await?;
            if let Some(event) = self.handle(packet)? {
                return Ok(event);
            }
        }
    }

    /// Writes out everything queued (for example before a deliberate pause in polling).
    pub async fn flush(&mut self) -> Result<(), MqttError> {
        poll_fn(|cx| {
            while !self.wbuf.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
                    }
                    Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut self.io).poll_flush(cx)
        })
        .await?;
        self.need_flush = false;
        Ok(())
    }

    /// Sends DISCONNECT (normal) and closes the stream, giving up after 2 s; errors are ignored because the
    /// connection is being abandoned either way.
    pub async fn disconnect(mut self) {
        if self.send(Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                self.flush().await?;
                tokio::io::AsyncWriteExt::shutdown(&mut self.io).await?;
                Ok::<(), MqttError>(())
            })
            .await;
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<Option<Event>, MqttError> {
        match packet {
            Packet::Publish(publish) => {
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        let packet_id = publish.packet_id.ok_or(MqttError::Protocol("QoS 1 publish without id"))?;
                        self.send(Packet::PublishAck(PublishAck {
                            packet_id,
                            reason_code: PublishAckReason::Success,
                            properties: Vec::new(),
                            reason_string: None,
                        }))?;
                    }
                    // We never subscribe at QoS 2, so the hub must not send it.
                    QoS::ExactlyOnce => return Err(MqttError::Protocol("QoS 2 publish")),
                }
                Ok(Some(Event::Message { topic: publish.topic, payload: publish.payload }))
            }
            Packet::PublishAck(ack) => {
                let pid = ack.packet_id.get();
                match self.inflight.iter().position(|p| *p == pid) {
                    Some(i) => {
                        self.inflight.swap_remove(i);
                        let reason_code = ack.reason_code as u8;
                        self.last_puback = Some(PubAckDetails {
                            packet_id: pid,
                            reason_code,
                            reason_string: ack.reason_string,
                            user_properties: ack.properties,
                        });
                        Ok(Some(Event::PubAck { packet_id: pid, reason_code }))
                    }
                    None => {
                        tracing::debug!(packet_id = pid, "PUBACK for an unknown packet id ignored");
                        Ok(None)
                    }
                }
            }
            Packet::SubscribeAck(ack) => Ok(Some(Event::SubAck {
                packet_id: ack.packet_id.get(),
                reason_codes: ack.status.iter().map(|s| *s as u8).collect(),
            })),
            Packet::PingResponse => {
                self.ping_sent = None;
                Ok(None)
            }
            Packet::Disconnect(d) => Err(disconnected(&d)),
            Packet::UnsubscribeAck(_) | Packet::Auth(_) => Ok(None),
            _ => Err(MqttError::Protocol("unexpected packet type")),
        }
    }

    /// Runs socket I/O until a whole packet has been decoded. With `keep_alive`, also sends PINGREQ when idle
    /// and fails when a PINGREQ goes unanswered for a keep-alive interval.
    async fn next_packet(&mut self, keep_alive: bool) -> Result<Packet, MqttError> {
        // A zero keep-alive (ours, or the hub's Server Keep Alive) turns pings off; the timer is then never armed
        // and must not be polled either, or the always-expired timer makes this loop spin.
        let keep_alive = keep_alive && !self.keep_alive.is_zero();
        loop {
            if let Some((packet, _)) =
                self.codec.decode(&mut self.rbuf).map_err(|e| MqttError::Decode(e.to_string()))?
            {
                self.last_received = Instant::now();
                return Ok(packet);
            }
            if keep_alive {
                let now = Instant::now();
                // Ping after a keep-alive of silence in either direction.
                let quiet_since = self.last_sent.min(self.last_received);
                let deadline = match self.ping_sent {
                    Some(sent) if now >= sent + self.keep_alive => {
                        return Err(MqttError::KeepAliveTimeout(self.keep_alive));
                    }
                    Some(sent) => sent + self.keep_alive,
                    None if now >= quiet_since + self.keep_alive => {
                        self.send(Packet::PingRequest)?;
                        self.ping_sent = Some(now);
                        now + self.keep_alive
                    }
                    None => quiet_since + self.keep_alive,
                };
                self.timer.as_mut().reset(deadline);
            }
            self.drive_io(keep_alive).await?;
        }
    }

    /// One round of I/O: writes what it can, and returns once bytes were read or the timer fired.
    async fn drive_io(&mut self, with_timer: bool) -> Result<(), MqttError> {
        poll_fn(|cx| {
            // Write first, so acknowledgements and pings leave even while the hub has nothing to say.
            while !self.wbuf.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.wbuf.advance(n);
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => break,
                }
            }
            if self.wbuf.is_empty() && self.need_flush {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.need_flush = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
            }
            // Read into the spare tail of the buffer; zeroing it keeps this safe code.
            let filled = self.rbuf.len();
            self.rbuf.resize(filled + READ_CHUNK, 0);
            let mut read = ReadBuf::new(&mut self.rbuf[filled..]);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
            let n = read.filled().len();
            self.rbuf.truncate(filled + n);
            match polled {
                Poll::Ready(Ok(())) if n == 0 => return Poll::Ready(Err(MqttError::Closed)),
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
            if with_timer && self.timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        })
        .await
    }

    fn send(&mut self, packet: Packet) -> Result<(), MqttError> {
        self.codec.encode(packet, &mut self.wbuf).map_err(|e| MqttError::Encode(e.to_string()))?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next packet id not awaiting a PUBACK (ids are 1..=65535 and wrap).
    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains(&self.next_pid) {
                return self.next_pid;
            }
        }
    }
}

fn nonzero(pid: u16) -> NonZeroU16 {
    NonZeroU16::new(pid).unwrap_or(NonZeroU16::MIN)
}

fn disconnected(d: &Disconnect) -> MqttError {
    MqttError::Disconnected {
        code: d.reason_code as u8,
        reason: format!("{:?}", d.reason_code),
        reason_string: d.reason_string.as_ref().map(|s| s.to_string()),
    }
}

#[cfg(test)]
mod tests;
