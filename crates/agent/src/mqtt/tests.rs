//! The client against a scripted peer that speaks the same codec: what the client sends decodes to the
//! intended packets, and the client reacts to the hub's answers as the protocol says.

use rmqtt_codec::v5::{ConnectAck, SubscribeAck, SubscribeAckReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// The hub's side of a duplex pipe, decoding with the real codec.
struct Peer {
    io: DuplexStream,
    codec: Codec,
    buf: BytesMut,
}

impl Peer {
    async fn recv(&mut self) -> Packet {
        loop {
            if let Some((p, _)) = self.codec.decode(&mut self.buf).unwrap() {
                return p;
            }
            let n = self.io.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "client closed");
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }
}

fn options(keep_alive: Duration) -> ConnectOptions {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut opts = ConnectOptions::new("unused:0", ServerName::try_from("hub").unwrap(), Arc::new(tls), "dev-1");
    opts.keep_alive = keep_alive;
    opts
}

fn pair() -> (DuplexStream, Peer) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (a, Peer { io: b, codec: Codec::new(0, 0), buf: BytesMut::new() })
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

#[test]
fn connect_packet_round_trips_through_the_codec() {
    let connect = Connect {
        clean_start: true,
        keep_alive: 30,
        client_id: "dev-1".into(),
        max_packet_size: NonZeroU32::new(DEFAULT_MAX_PACKET),
        ..Connect::default()
    };
    let mut codec = Codec::new(0, 0);
    let mut buf = BytesMut::new();
    codec.encode(Packet::Connect(Box::new(connect.clone())), &mut buf).unwrap();
    let (decoded, _) = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(decoded, Packet::Connect(Box::new(connect)));
}

#[tokio::test]
async fn session_subscribe_publish_acks_and_commands() {
    let (io, mut peer) = pair();
    let hub = tokio::spawn(async move {
        let Packet::Connect(c) = peer.recv().await else { panic!("expected CONNECT") };
        assert_eq!(c.client_id, "dev-1");
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 30);
        assert_eq!(c.max_packet_size.map(|m| m.get()), Some(64 * 1024));
        let ack = ConnectAck { receive_max: pid(2), ..ConnectAck::default() };
        peer.send(Packet::ConnectAck(Box::new(ack))).await;

        let Packet::Subscribe(s) = peer.recv().await else { panic!("expected SUBSCRIBE") };
        assert_eq!(s.topic_filters[0].0, "devices/dev-1/commands");
        assert_eq!(s.topic_filters[0].1.qos, QoS::AtLeastOnce);
        peer.send(Packet::SubscribeAck(SubscribeAck {
            packet_id: s.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: vec![SubscribeAckReason::GrantedQos1],
        }))
        .await;

        let mut ids = Vec::new();
        for _ in 0..2 {
            let Packet::Publish(p) = peer.recv().await else { panic!("expected PUBLISH") };
            assert_eq!(p.topic, "devices/dev-1/telemetry");
            assert_eq!(p.qos, QoS::AtLeastOnce);
            ids.push((p.packet_id.unwrap(), p.payload));
        }
        assert_eq!(ids[0].1, Bytes::from_static(b"one"));
        for (i, (id, _)) in ids.iter().enumerate() {
            let reason = if i == 0 { PublishAckReason::Success } else { PublishAckReason::PayloadFormatInvalid };
            peer.send(Packet::PublishAck(PublishAck {
                packet_id: *id,
                reason_code: reason,
                properties: Vec::new(),
                reason_string: None,
            }))
            .await;
        }

        let command = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: "devices/dev-1/commands".into(),
            packet_id: Some(pid(7)),
            payload: Bytes::from_static(b"{}"),
            properties: None,
        };
        peer.send(Packet::Publish(Box::new(command))).await;
        let Packet::PublishAck(ack) = peer.recv().await else { panic!("expected PUBACK") };
        assert_eq!(ack.packet_id, pid(7));
        let Packet::Disconnect(d) = peer.recv().await else { panic!("expected DISCONNECT") };
        assert_eq!(d.reason_code, DisconnectReasonCode::NormalDisconnection);
    });

    let mut conn = MqttConnection::handshake(io, &options(Duration::from_secs(30))).await.unwrap();
    assert_eq!(conn.max_inflight(), 2, "capped by the hub's Receive Maximum");
    let sub = conn.subscribe("devices/dev-1/commands", QoS::AtLeastOnce).unwrap();
    assert_eq!(conn.next_event().await.unwrap(), Event::SubAck { packet_id: sub, reason_codes: vec![1] });

    let a = conn.publish("devices/dev-1/telemetry", Bytes::from_static(b"one"), QoS::AtLeastOnce).unwrap().unwrap();
    let b = conn.publish("devices/dev-1/telemetry", Bytes::from_static(b"two"), QoS::AtLeastOnce).unwrap().unwrap();
    assert_ne!(a, b);
    assert!(matches!(
        conn.publish("devices/dev-1/telemetry", Bytes::new(), QoS::AtLeastOnce),
        Err(MqttError::InflightFull)
    ));
    assert_eq!(conn.next_event().await.unwrap(), Event::PubAck { packet_id: a, reason_code: REASON_SUCCESS });
    assert_eq!(
        conn.next_event().await.unwrap(),
        Event::PubAck { packet_id: b, reason_code: REASON_PAYLOAD_FORMAT_INVALID }
    );
    assert_eq!(conn.inflight(), 0);
    let Event::Message { topic, payload } = conn.next_event().await.unwrap() else { panic!("expected message") };
    assert_eq!((topic.as_ref(), payload.as_ref()), ("devices/dev-1/commands", b"{}".as_ref()));
    conn.flush().await.unwrap();
    conn.disconnect().await;
    hub.await.unwrap();
}

#[tokio::test]
async fn refused_connack_names_the_reason() {
    let (io, mut peer) = pair();
    tokio::spawn(async move {
        peer.recv().await;
        let ack = ConnectAck { reason_code: ConnectAckReason::ClientIdentifierNotValid, ..ConnectAck::default() };
        peer.send(Packet::ConnectAck(Box::new(ack))).await;
        peer
    });
    let err = MqttConnection::handshake(io, &options(Duration::from_secs(30))).await.unwrap_err();
    assert!(matches!(err, MqttError::Refused { code: 0x85, .. }), "{err}");
    assert!(err.to_string().contains("ClientIdentifierNotValid"), "{err}");
}

#[tokio::test]
async fn unanswered_ping_ends_the_connection() {
    let (io, mut peer) = pair();
    let hub = tokio::spawn(async move {
        peer.recv().await;
        peer.send(Packet::ConnectAck(Box::default())).await;
        // Answer nothing from now on; the client must ping and then give up.
        assert_eq!(peer.recv().await, Packet::PingRequest);
        peer
    });
    let mut conn = MqttConnection::handshake(io, &options(Duration::from_secs(1))).await.unwrap();
    let started = std::time::Instant::now();
    let err = conn.next_event().await.unwrap_err();
    assert!(matches!(err, MqttError::KeepAliveTimeout(_)), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    drop(hub.await.unwrap());
}

#[test]
fn zero_keep_alive_from_the_hub_waits_without_spinning() {
    // Regression: with Server Keep Alive 0 (or a configured keep-alive of 0) the keep-alive timer stayed at
    // sleep(0), was polled anyway, and `next_event` spun on one core. On a paused clock an idle connection lets
    // time jump to the one-hour timeout; a spinning one never lets the runtime idle, so time stands still.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let (io, mut peer) = pair();
            let hub = tokio::spawn(async move {
                peer.recv().await;
                let ack = ConnectAck { server_keepalive_sec: Some(0), ..ConnectAck::default() };
                peer.send(Packet::ConnectAck(Box::new(ack))).await;
                // Keep the pipe open, say nothing.
                std::future::pending::<()>().await;
            });
            let mut conn = MqttConnection::handshake(io, &options(Duration::from_secs(30))).await.unwrap();
            assert_eq!(conn.keep_alive(), Duration::ZERO);
            let waited = tokio::time::timeout(Duration::from_secs(3600), conn.next_event()).await;
            assert!(waited.is_err(), "nothing arrives, so the wait times out: {waited:?}");
            hub.abort();
        });
        let _ = done_tx.send(());
    });
    done.recv_timeout(Duration::from_secs(20)).expect("next_event spun instead of waiting");
}

#[tokio::test]
async fn oversized_packet_from_the_hub_is_refused() {
    let (io, mut peer) = pair();
    tokio::spawn(async move {
        peer.recv().await;
        peer.send(Packet::ConnectAck(Box::default())).await;
        let big = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtMostOnce,
            topic: "devices/dev-1/commands".into(),
            packet_id: None,
            payload: Bytes::from(vec![b'x'; 70 * 1024]),
            properties: None,
        };
        peer.send(Packet::Publish(Box::new(big))).await;
        peer
    });
    let mut conn = MqttConnection::handshake(io, &options(Duration::from_secs(30))).await.unwrap();
    let err = conn.next_event().await.unwrap_err();
    assert!(matches!(err, MqttError::Decode(_)), "{err}");
}

#[tokio::test]
async fn puback_details_carry_the_reason_string_and_user_properties() {
    let (io, mut peer) = pair();
    let hub = tokio::spawn(async move {
        peer.recv().await;
        peer.send(Packet::ConnectAck(Box::default())).await;
        for reason in [PublishAckReason::ImplementationSpecificError, PublishAckReason::Success] {
            let Packet::Publish(p) = peer.recv().await else { panic!("expected PUBLISH") };
            let refused = reason != PublishAckReason::Success;
            peer.send(Packet::PublishAck(PublishAck {
                packet_id: p.packet_id.unwrap(),
                reason_code: reason,
                properties: if refused {
                    vec![("other".into(), "x".into()), ("highest_seq".into(), "1764000000123".into())]
                } else {
                    Vec::new()
                },
                reason_string: refused.then(|| "seq_conflict: seq 7 holds different data".into()),
            }))
            .await;
        }
        peer
    });
    let mut conn = MqttConnection::handshake(io, &options(Duration::from_secs(30))).await.unwrap();
    assert_eq!(conn.last_puback(), None);
    let a = conn.publish("devices/dev-1/telemetry", Bytes::from_static(b"a"), QoS::AtLeastOnce).unwrap().unwrap();
    assert_eq!(
        conn.next_event().await.unwrap(),
        Event::PubAck { packet_id: a, reason_code: REASON_IMPLEMENTATION_SPECIFIC }
    );
    let details = conn.last_puback().unwrap();
    assert_eq!((details.packet_id, details.reason_code), (a, 0x83));
    assert_eq!(details.reason_string.as_deref(), Some("seq_conflict: seq 7 holds different data"));
    assert_eq!(details.user_property("highest_seq"), Some("1764000000123"));
    assert_eq!(details.user_property("other"), Some("x"));
    assert_eq!(details.user_property("missing"), None);

    // The next PUBACK replaces them: nothing of the refusal sticks to a success.
    let b = conn.publish("devices/dev-1/telemetry", Bytes::from_static(b"b"), QoS::AtLeastOnce).unwrap().unwrap();
    assert_eq!(conn.next_event().await.unwrap(), Event::PubAck { packet_id: b, reason_code: REASON_SUCCESS });
    let details = conn.last_puback().unwrap();
    assert_eq!((details.packet_id, details.reason_string.as_deref(), details.user_properties.len()), (b, None, 0));
    drop(hub.await.unwrap());
}

#[test]
fn success_reason_codes_are_everything_below_0x80() {
    // Regression: a broker's 0x10 ("no matching subscribers") PUBACK was treated as a refusal.
    assert!(super::is_success(0x00));
    assert!(super::is_success(0x10));
    assert!(!super::is_success(0x87));
    assert!(!super::is_success(0x99));
}
