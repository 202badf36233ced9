//! A raw MQTT 5 client for tests that must see exactly what the hub sends (reason codes, properties, order):
//! packets through `rmqtt-codec`, over a TLS connection made with [`crate::tls_connect`].

use std::num::NonZeroU16;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::codec::{Decoder as _, Encoder as _};

use crate::{TestDevice, TestHub, tls_connect};

/// A TLS stream to the hub's MQTT port.
pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An MQTT 5 connection.
#[derive(Debug)]
pub struct V5 {
    /// The TLS stream.
    pub tls: Tls,
    codec: v5::Codec,
    rbuf: BytesMut,
}

impl V5 {
    /// Connects as `dev` (clean start, keep-alive 60) and expects CONNACK success.
    pub async fn connect(hub: &TestHub, dev: &TestDevice) -> Result<V5> {
        Self::connect_with(hub, dev, |_| {}).await
    }

    /// Connects as `dev` after `adjust` changed the CONNECT; expects CONNACK success.
    pub async fn connect_with(hub: &TestHub, dev: &TestDevice, adjust: impl FnOnce(&mut v5::Connect)) -> Result<V5> {
        let tls = tls_connect(&hub.hub, Some(dev)).await?;
        Self::handshake(tls, dev, adjust).await
    }

    /// Connects as `dev` to `addr` (a hub's MQTT port or a balancer) trusting `server_ca`, after `adjust`
    /// changed the CONNECT; expects CONNACK success and returns whether the hub had a session.
    pub async fn connect_to(
        server_ca: &std::path::Path,
        addr: std::net::SocketAddr,
        dev: &TestDevice,
        adjust: impl FnOnce(&mut v5::Connect),
    ) -> Result<(V5, bool)> {
        let tls = crate::tls_connect_ca(server_ca, addr, Some(dev)).await?;
        let mut present = false;
        let c = Self::handshake_with(tls, dev, adjust, &mut present).await?;
        Ok((c, present))
    }

    async fn handshake(tls: Tls, dev: &TestDevice, adjust: impl FnOnce(&mut v5::Connect)) -> Result<V5> {
        let mut present = false;
        Self::handshake_with(tls, dev, adjust, &mut present).await
    }

    async fn handshake_with(
        tls: Tls,
        dev: &TestDevice,
        adjust: impl FnOnce(&mut v5::Connect),
        session_present: &mut bool,
    ) -> Result<V5> {
        let mut c = V5 { tls, codec: v5::Codec::new(1 << 20, 1 << 20), rbuf: BytesMut::new() };
        let mut connect = v5::Connect {
            client_id: ByteString::from(dev.id.as_str()),
            keep_alive: 60,
            clean_start: true,
            ..Default::default()
        };
        adjust(&mut connect);
        c.send(v5::Packet::Connect(Box::new(connect))).await?;
        match c.recv().await {
            Some(v5::Packet::ConnectAck(ack)) if ack.reason_code == v5::ConnectAckReason::Success => {
                *session_present = ack.session_present;
                Ok(c)
            }
            other => bail!("expected CONNACK success, got {other:?}"),
        }
    }

    /// Sends a packet.
    pub async fn send(&mut self, p: v5::Packet) -> Result<()> {
        let mut buf = BytesMut::new();
        self.codec.encode(p, &mut buf)?;
        self.tls.write_all(&buf).await?;
        Ok(())
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.tls.write_all(bytes).await?;
        Ok(())
    }

    /// The next packet, or `None` if the connection closed or nothing came within 5 s.
    pub async fn recv(&mut self) -> Option<v5::Packet> {
        self.recv_within(Duration::from_secs(5)).await
    }

    /// The next packet, or `None` if the connection closed or nothing came within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<v5::Packet> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some((p, _))) => return Some(p),
                Ok(None) => {}
                Err(_) => return None,
            }
            match tokio::time::timeout_at(deadline, self.tls.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Publishes with QoS 1 (packet `id`).
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Bytes>, id: u16) -> Result<()> {
        self.publish_with(topic, payload, Some(id), false).await
    }

    /// Publishes with QoS 1 when `id` is given (else QoS 0), optionally retained.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        id: Option<u16>,
        retain: bool,
    ) -> Result<()> {
        let publish = Publish {
            dup: false,
            retain,
            qos: if id.is_some() { QoS::AtLeastOnce } else { QoS::AtMostOnce },
            topic: ByteString::from(topic),
            packet_id: id.and_then(NonZeroU16::new),
            payload: payload.into(),
            properties: Some(v5::PublishProperties::default()),
        };
        self.send(v5::Packet::Publish(Box::new(publish))).await
    }

    /// Subscribes to `filters` (QoS 1 each) with packet `id`.
    pub async fn subscribe(&mut self, filters: &[String], id: u16) -> Result<()> {
        let opts = v5::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: v5::RetainHandling::AtSubscribe,
        };
        let sub = v5::Subscribe {
            packet_id: NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN),
            id: None,
            user_properties: Vec::new(),
            topic_filters: filters.iter().map(|f| (ByteString::from(f.as_str()), opts)).collect(),
        };
        self.send(v5::Packet::Subscribe(sub)).await
    }

    /// Acknowledges a message the hub sent.
    pub async fn puback(&mut self, id: NonZeroU16) -> Result<()> {
        self.send(v5::Packet::PublishAck(v5::PublishAck {
            packet_id: id,
            reason_code: v5::PublishAckReason::Success,
            properties: Vec::new(),
            reason_string: None,
        }))
        .await
    }
}

/// A telemetry uplink payload with `seq` and one metric.
pub fn telemetry(seq: u64, value: f64) -> Vec<u8> {
    format!(r#"{{"v":1,"seq":{seq},"ts":{},"metrics":{{"t":{value}}}}}"#, 1_700_000_000_000u64 + seq).into_bytes()
}
