//! The agent loop end to end against a scripted MQTT broker on 127.0.0.1 with mutual TLS (the real hub's
//! end-to-end tests live in `crates/cli/tests`): connect, subscribe, state first, telemetry forwarded and
//! deleted after PUBACK, a command answered, and a clean DISCONNECT on shutdown. `queue` covers the queue
//! against a fake hub: seq conflicts and a day offline.

#![allow(clippy::unwrap_used)]

mod queue;
mod tuf;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hearth_agent::enrol::{CERT_FILE, HUB_FILE, HubConfig};
use hearth_agent::keystore::{FileKeyStore, KeyStore};
use hearth_agent::{Agent, AgentConfig};
use hearth_proto::command::{AckStatus, CommandAck};
use hearth_proto::{DeviceId, ModelId};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v5::{Codec, Packet, PublishAck, PublishAckReason, QoS, SubscribeAck, SubscribeAckReason};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};

struct Pki {
    ca_pem: String,
    server_config: Arc<rustls::ServerConfig>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    Pki { ca_pem: ca_cert.pem(), server_config: Arc::new(server_config), issuer }
}

/// Writes what enrolment would have left in the state directory.
fn pre_enrol(pki: &Pki, dir: &std::path::Path, id: &DeviceId, port: u16) {
    let key = FileKeyStore::open_or_create(dir).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&key.certificate_request(id).unwrap()).unwrap();
    let mut params = csr.params;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    let leaf = params.signed_by(&csr.public_key, &pki.issuer).unwrap();
    std::fs::write(dir.join(CERT_FILE), format!("{}{}", leaf.pem(), pki.ca_pem)).unwrap();
    let hub = HubConfig {
        v: 1,
        device_id: id.clone(),
        model: ModelId::parse("plug-2").unwrap(),
        hub_url: "https://localhost:1".into(),
        mqtt_host: "localhost".into(),
        mqtt_port: port,
        hub_ca_pem: pki.ca_pem.clone(),
    };
    std::fs::write(dir.join(HUB_FILE), serde_json::to_vec(&hub).unwrap()).unwrap();
}

struct Peer<S> {
    io: S,
    codec: Codec,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some((p, _)) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }
}

#[tokio::test]
async fn agent_forwards_queue_answers_commands_and_disconnects_cleanly() {
    let pki = pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let id = DeviceId::parse("dev-it").unwrap();
    pre_enrol(&pki, dir.path(), &id, port);

    // The broker reports every packet it receives.
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Packet>();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut peer = Peer { io: tls, codec: Codec::new(0, 0), buf: BytesMut::new() };
        let mut publishes = 0;
        while let Some(packet) = peer.recv().await {
            match &packet {
                Packet::Connect(_) => peer.send(Packet::ConnectAck(Box::default())).await,
                Packet::Subscribe(s) => {
                    let ack = SubscribeAck {
                        packet_id: s.packet_id,
                        properties: Vec::new(),
                        reason_string: None,
                        status: vec![SubscribeAckReason::GrantedQos1],
                    };
                    peer.send(Packet::SubscribeAck(ack)).await;
                }
                Packet::Publish(p) => {
                    let ack = PublishAck {
                        packet_id: p.packet_id.unwrap(),
                        reason_code: PublishAckReason::Success,
                        properties: Vec::new(),
                        reason_string: None,
                    };
                    peer.send(Packet::PublishAck(ack)).await;
                    publishes += 1;
                    if publishes == 3 {
                        let cmd = Publish {
                            dup: false,
                            retain: false,
                            qos: QoS::AtLeastOnce,
                            topic: "devices/dev-it/commands".into(),
                            packet_id: std::num::NonZeroU16::new(1),
                            payload: br#"{"v":1,"id":"c1","name":"set_interval","args":{"seconds":2},"expires_at":9007199254740991}"#
                                .as_slice()
                                .into(),
                            properties: None,
                        };
                        peer.send(Packet::Publish(Box::new(cmd))).await;
                    }
                }
                _ => {}
            }
            let _ = seen_tx.send(packet);
        }
    });

    let mut config = AgentConfig::new(dir.path());
    config.interval = Duration::from_millis(50);
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    config.mqtt_addr = Some(format!("127.0.0.1:{port}"));
    let agent = Agent::new(config).await.unwrap();
    let stats = agent.stats();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(agent.run(shutdown));

    let mut topics = Vec::new();
    let mut command_ack = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while command_ack.is_none() {
        let packet = tokio::time::timeout_at(deadline, seen.recv()).await.unwrap().unwrap();
        if let Packet::Connect(c) = &packet {
            assert_eq!(c.client_id, "dev-it");
        }
        if let Packet::Publish(p) = packet {
            if p.topic == "devices/dev-it/commands/ack" {
                command_ack = Some(CommandAck::parse(&p.payload).unwrap());
            }
            topics.push(p.topic.to_string());
        }
    }
    assert_eq!(topics[0], "devices/dev-it/state", "state is reported on connect");
    assert!(topics.iter().filter(|t| *t == "devices/dev-it/telemetry").count() >= 2, "{topics:?}");
    let ack = command_ack.unwrap();
    assert_eq!((ack.id.as_str(), ack.status), ("c1", AckStatus::Ok));

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap().unwrap();
    let mut disconnected = false;
    while let Ok(Some(packet)) = tokio::time::timeout(Duration::from_secs(2), seen.recv()).await {
        disconnected |= matches!(packet, Packet::Disconnect(_));
    }
    assert!(disconnected, "agent sent DISCONNECT on shutdown");
    let s = stats.snapshot();
    assert_eq!(s.connects, 1);
    assert_eq!(s.commands_handled, 1);
    assert!(s.acked >= 3, "{s:?}");
    assert_eq!(s.rejected, 0);
}

/// A `wipe` command (the owner released the device): the agent erases the queued uplinks (they may hold the
/// previous owner's readings) and the user data directory, and only then acknowledges `ok`; its identity stays.
#[tokio::test]
async fn a_wipe_erases_queued_uplinks_and_user_data_before_it_is_acknowledged() {
    use hearth_agent::USER_DATA_DIR;
    use hearth_agent::queue::Queue;

    let pki = pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let id = DeviceId::parse("dev-wipe").unwrap();
    pre_enrol(&pki, dir.path(), &id, port);
    let user = dir.path().join(USER_DATA_DIR);
    std::fs::create_dir_all(user.join("schedules")).unwrap();
    std::fs::write(user.join("wifi.conf"), "ssid=home\npsk=secret\n").unwrap();
    std::fs::write(user.join("schedules/morning.json"), "{}").unwrap();
    {
        let queue = Queue::open(dir.path(), 100, 1).unwrap();
        for i in 0..5u32 {
            queue.push(queue::telemetry("temp", f64::from(i)), 1_764_000_000_000 + u64::from(i)).unwrap();
        }
    }

    // The broker acknowledges nothing the agent publishes (so everything stays queued), and sends the wipe once
    // the agent has subscribed.
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Packet>();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut peer = Peer { io: tls, codec: Codec::new(0, 0), buf: BytesMut::new() };
        while let Some(packet) = peer.recv().await {
            match &packet {
                Packet::Connect(_) => peer.send(Packet::ConnectAck(Box::default())).await,
                Packet::Subscribe(s) => {
                    let status = vec![SubscribeAckReason::GrantedQos1];
                    let ack =
                        SubscribeAck { packet_id: s.packet_id, properties: Vec::new(), reason_string: None, status };
                    peer.send(Packet::SubscribeAck(ack)).await;
                    let cmd =
                        Publish {
                            dup: false,
                            retain: false,
                            qos: QoS::AtLeastOnce,
                            topic: "devices/dev-wipe/commands".into(),
                            packet_id: std::num::NonZeroU16::new(1),
                            payload: br#"{"v":1,"id":"cw","name":"wipe","args":{},"expires_at":9007199254740991}"#
                                .as_slice()
                                .into(),
                            properties: None,
                        };
                    peer.send(Packet::Publish(Box::new(cmd))).await;
                }
                _ => {}
            }
            let _ = seen_tx.send(packet);
        }
    });

    let mut config = AgentConfig::new(dir.path());
    config.interval = Duration::from_secs(3600);
    config.mqtt_addr = Some(format!("127.0.0.1:{port}"));
    let agent = Agent::new(config).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(agent.run(shutdown));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ack = loop {
        let packet = tokio::time::timeout_at(deadline, seen.recv()).await.unwrap().unwrap();
        if let Packet::Publish(p) = packet
            && p.topic == "devices/dev-wipe/commands/ack"
        {
            break CommandAck::parse(&p.payload).unwrap();
        }
    };
    assert_eq!((ack.id.as_str(), ack.status), ("cw", AckStatus::Ok), "{:?}", ack.detail);
    // Five queued readings and the state reported on connect; two files.
    assert_eq!(ack.detail.as_deref(), Some("erased 6 queued uplinks and 2 user data files; settings back to defaults"));
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap().unwrap();
    assert_eq!(std::fs::read_dir(&user).unwrap().count(), 0, "the user data directory is empty");
    assert_eq!(Queue::open(dir.path(), 100, 1).unwrap().len().unwrap(), 0, "nothing queued is left");
    assert!(dir.path().join(CERT_FILE).exists(), "the identity stays");
}
