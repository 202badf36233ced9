//! Bad input on the MQTT port: malformed, truncated and oversized packets, a 256 MiB declared length,
//! invalid payloads. Each gets a clear refusal, nothing is stored, the hub stays up and its memory stays flat.

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use hearth_test_support::{TestDevice, TestHub, rss_kib, tls_connect};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::codec::{Decoder as _, Encoder as _};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60, with `client_id`.
fn connect_311(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// Reads until the peer closes or `limit` passes; returns what arrived and whether it closed.
async fn read_until_closed(tls: &mut Tls, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

async fn connected_311(hub: &TestHub, dev: &TestDevice) -> Tls {
    let mut tls = tls_connect(&hub.hub, Some(dev)).await.expect("tls");
    tls.write_all(&connect_311(dev.id.as_str())).await.expect("write");
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await.expect("connack");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    tls
}

#[tokio::test]
async fn malformed_truncated_and_huge_packets_end_only_their_connection() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");

    // Not MQTT at all.
    let mut tls = tls_connect(&hub.hub, Some(&dev)).await.expect("tls");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(read_until_closed(&mut tls, Duration::from_secs(5)).await.1, "non-MQTT bytes must close the connection");

    // A reserved packet type after CONNECT.
    let mut tls = connected_311(&hub, &dev).await;
    tls.write_all(&[0xf0, 0x00]).await.expect("write");
    assert!(read_until_closed(&mut tls, Duration::from_secs(5)).await.1);

    // A PUBLISH with a malformed remaining length (five continuation bytes).
    let mut tls = connected_311(&hub, &dev).await;
    tls.write_all(&[0x32, 0xff, 0xff, 0xff, 0xff, 0x7f]).await.expect("write");
    assert!(read_until_closed(&mut tls, Duration::from_secs(5)).await.1);

    // Truncated: a PUBLISH that promises 100 bytes and delivers 10, then the client goes away. The session
    // must end (no hang) and store nothing.
    let mut tls = connected_311(&hub, &dev).await;
    tls.write_all(&[0x32, 100, 0, 5, b'a', b'b', b'c', b'd', b'e', 0]).await.expect("write");
    drop(tls);

    // A declared length of 256 MiB, many times: refused at the header, memory stays flat.
    let before = rss_kib();
    for _ in 0..100 {
        let mut tls = connected_311(&hub, &dev).await;
        tls.write_all(&[0x32, 0xff, 0xff, 0xff, 0x7f]).await.expect("write");
        let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
        assert!(closed, "a 256 MiB declaration must close the connection");
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "memory grew by {grown} KiB after 100 huge declarations");

    // The hub is still up, and a well-behaved connection still works.
    let mut tls = connected_311(&hub, &dev).await;
    tls.write_all(&[0xc0, 0x00]).await.expect("pingreq");
    let mut pong = [0u8; 2];
    tls.read_exact(&mut pong).await.expect("pingresp");
    assert_eq!(pong, [0xd0, 0x00]);

    let (_, page) = hub.get(&format!("/api/v1/devices/{}/telemetry", dev.id)).await.expect("telemetry");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "nothing may be stored");
    assert!(hub.event_count("malformed_packet").await.expect("events") > 0);
    assert!(hub.event_count("packet_too_large").await.expect("events") >= 100);
}

struct V5 {
    tls: Tls,
    codec: v5::Codec,
    rbuf: BytesMut,
}

impl V5 {
    async fn connect(hub: &TestHub, dev: &TestDevice) -> V5 {
        let tls = tls_connect(&hub.hub, Some(dev)).await.expect("tls");
        let mut c = V5 { tls, codec: v5::Codec::new(1 << 20, 1 << 20), rbuf: BytesMut::new() };
        let connect = v5::Connect {
            client_id: ByteString::from(dev.id.as_str()),
            keep_alive: 60,
            clean_start: true,
            ..Default::default()
        };
        c.send(v5::Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Some(v5::Packet::ConnectAck(ack)) => {
                assert_eq!(ack.reason_code, v5::ConnectAckReason::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, p: v5::Packet) {
        let mut buf = BytesMut::new();
        self.codec.encode(p, &mut buf).expect("encode");
        self.tls.write_all(&buf).await.expect("write");
    }

    async fn recv(&mut self) -> Option<v5::Packet> {
        loop {
            if let Ok(Some((p, _))) = self.codec.decode(&mut self.rbuf) {
                return Some(p);
            }
            match tokio::time::timeout(Duration::from_secs(5), self.tls.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn publish(&mut self, topic: &str, payload: Vec<u8>, id: u16) {
        let publish = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: ByteString::from(topic),
            packet_id: NonZeroU16::new(id),
            payload: Bytes::from(payload),
            properties: Some(v5::PublishProperties::default()),
        };
        self.send(v5::Packet::Publish(Box::new(publish))).await;
    }
}

#[tokio::test]
async fn invalid_and_oversized_payloads_are_refused_and_not_stored() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let topic = format!("devices/{}/telemetry", dev.id);
    let mut c = V5::connect(&hub, &dev).await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{not json".to_vec()),
        ("wrong schema", br#"{"v":1,"seq":1,"ts":5,"temperature":3}"#.to_vec()),
        ("wrong version", br#"{"v":9,"seq":1,"ts":5,"metrics":{}}"#.to_vec()),
        (
            "over the 16 KiB payload limit",
            format!(r#"{{"v":1,"seq":1,"ts":5,"metrics":{{"s":"{}"}}}}"#, "x".repeat(20_000)).into_bytes(),
        ),
    ];
    for (i, (what, payload)) in cases.into_iter().enumerate() {
        let id = i as u16 + 1;
        c.publish(&topic, payload, id).await;
        match c.recv().await {
            Some(v5::Packet::PublishAck(ack)) => {
                assert_eq!(ack.packet_id.get(), id);
                assert_eq!(ack.reason_code, v5::PublishAckReason::PayloadFormatInvalid, "{what}");
                assert!(ack.reason_string.is_some(), "{what}: the refusal explains itself");
            }
            other => panic!("{what}: expected PUBACK 0x99, got {other:?}"),
        }
    }
    // Unknown topic under the device's own prefix.
    c.publish(&format!("devices/{}/secrets", dev.id), b"{}".to_vec(), 10).await;
    assert!(
        matches!(c.recv().await, Some(v5::Packet::PublishAck(a)) if a.reason_code == v5::PublishAckReason::NotAuthorized)
    );

    // A packet over the 64 KiB limit ends the connection with "packet too large" (0x95).
    c.publish(&topic, vec![b'x'; 70 * 1024], 11).await;
    match c.recv().await {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::PacketTooLarge)
        }
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }

    // QoS 2 is answered properly, not silently dropped.
    let mut c = V5::connect(&hub, &dev).await;
    let publish = Publish {
        dup: false,
        retain: false,
        qos: QoS::ExactlyOnce,
        topic: ByteString::from(topic.as_str()),
        packet_id: NonZeroU16::new(1),
        payload: Bytes::from_static(br#"{"v":1,"seq":1,"ts":5,"metrics":{}}"#),
        properties: Some(v5::PublishProperties::default()),
    };
    c.send(v5::Packet::Publish(Box::new(publish))).await;
    match c.recv().await {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::QosNotSupported)
        }
        other => panic!("expected DISCONNECT 0x9B, got {other:?}"),
    }

    // A valid message still goes through on a new connection, and only it is stored.
    let mut c = V5::connect(&hub, &dev).await;
    c.publish(&topic, br#"{"v":1,"seq":1,"ts":5,"metrics":{"t":1}}"#.to_vec(), 1).await;
    assert!(
        matches!(c.recv().await, Some(v5::Packet::PublishAck(a)) if a.reason_code == v5::PublishAckReason::Success)
    );
    let (_, page) = hub.get(&format!("/api/v1/devices/{}/telemetry", dev.id)).await.expect("telemetry");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["items"][0]["body"]["metrics"]["t"], 1.0);
}

#[tokio::test]
async fn publish_rate_and_inflight_limits_have_reason_codes() {
    let hub = TestHub::start_with(|c| {
        c.mqtt.publish_rate_per_sec = 5;
        c.mqtt.publish_burst = 5;
    })
    .await
    .expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let topic = format!("devices/{}/telemetry", dev.id);
    let mut c = V5::connect(&hub, &dev).await;
    for seq in 1..=20u16 {
        let payload = format!(r#"{{"v":1,"seq":{seq},"ts":5,"metrics":{{}}}}"#).into_bytes();
        c.publish(&topic, payload, seq).await;
    }
    let mut saw = None;
    while let Some(p) = c.recv().await {
        if let v5::Packet::Disconnect(d) = p {
            saw = Some(d.reason_code);
            break;
        }
    }
    assert_eq!(saw, Some(v5::DisconnectReasonCode::MessageRateTooHigh));
}
