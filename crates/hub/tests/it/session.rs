//! MQTT session behaviour: TLS versions, persistent sessions, keep-alive, command delivery and timeout,
//! telemetry queries by time range.

use std::time::Duration;

use hearth_hub::identity::IdentitySettings;
use hearth_test_support::mqtt::V5;
use hearth_test_support::{TestDevice, TestHub, csr_for, eventually, tls_connect};
use rmqtt_codec::v5;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// CONNECT, MQTT 3.1.1, with the given clean-session flag and keep-alive.
fn connect_311(client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, if clean { 0x02 } else { 0x00 }];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

fn subscribe_311(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    let mut packet = vec![0x82, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

async fn connect(hub: &TestHub, dev: &TestDevice, clean: bool, keep_alive: u16) -> (Tls, [u8; 4]) {
    connect_as(hub, dev, dev.id.as_str(), clean, keep_alive).await
}

/// Like [`connect`], with another client id in the CONNECT.
async fn connect_as(hub: &TestHub, dev: &TestDevice, client_id: &str, clean: bool, keep_alive: u16) -> (Tls, [u8; 4]) {
    let mut tls = tls_connect(&hub.hub, Some(dev)).await.expect("tls");
    tls.write_all(&connect_311(client_id, clean, keep_alive)).await.expect("connect");
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await.expect("connack");
    (tls, connack)
}

#[tokio::test]
async fn tls_1_2_is_refused_unless_configured() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&hub.hub.server_ca_path).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(dev.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(dev.key_pem.as_bytes()).expect("key");
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("tls12")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    for addr in [hub.hub.mqtt_addr, hub.hub.https_addr] {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        assert!(connector.connect(name, tcp).await.is_err(), "TLS 1.2 must be refused on {addr}");
    }
}

#[tokio::test]
async fn persistent_session_keeps_the_subscription_and_gets_queued_commands() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");

    let (mut tls, connack) = connect(&hub, &dev, false, 60).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "first connect: no session yet");
    tls.write_all(&subscribe_311(&format!("devices/{}/commands", dev.id))).await.expect("subscribe");
    let mut suback = [0u8; 5];
    tls.read_exact(&mut suback).await.expect("suback");
    assert_eq!(suback, [0x90, 0x03, 0x00, 0x01, 0x01], "granted QoS 1");
    tls.write_all(&[0xe0, 0x00]).await.expect("disconnect");
    drop(tls);
    let gone =
        eventually(Duration::from_secs(5), || async { (!hub.hub.state.routing.is_connected(&dev.id)).then_some(()) })
            .await;
    assert!(gone.is_some());

    // While the device is away a command is queued.
    let (status, cmd) =
        hub.post(&format!("/api/v1/devices/{}/commands", dev.id), json!({ "name": "ping" })).await.expect("command");
    assert_eq!(status, 202);
    assert_eq!(cmd["status"], "pending");

    // It comes back with clean session off: the session is present and the command arrives without a new
    // SUBSCRIBE.
    let (mut tls, connack) = connect(&hub, &dev, false, 60).await;
    assert_eq!(connack, [0x20, 0x02, 0x01, 0x00], "session present");
    let mut buf = vec![0u8; 4096];
    let n =
        tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.expect("command in time").expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(buf[0] & 0xf0, 0x30, "a PUBLISH");
    assert!(text.contains(cmd["id"].as_str().expect("id")), "{text}");

    // A clean session forgets it.
    drop(tls);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_tls, connack) = connect(&hub, &dev, true, 60).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn keep_alive_is_enforced() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let (mut tls, connack) = connect(&hub, &dev, true, 1).await;
    assert_eq!(connack[3], 0);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    // Silent client: the hub closes after 1.5 × the keep-alive.
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4), "{waited:?}");
}

#[tokio::test]
async fn unanswered_commands_time_out() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let (status, cmd) = hub
        .post(&format!("/api/v1/devices/{}/commands", dev.id), json!({ "name": "ping", "timeout_secs": 1 }))
        .await
        .expect("command");
    assert_eq!(status, 202);
    let path = format!("/api/v1/devices/{}/commands/{}", dev.id, cmd["id"].as_str().expect("id"));
    let done = eventually(Duration::from_secs(5), || async {
        let (_, c) = hub.get(&path).await.ok()?;
        (c["status"] == "timeout").then_some(c)
    })
    .await;
    assert!(done.is_some(), "the command did not time out");
    let (status, body) =
        hub.post(&format!("/api/v1/devices/{}/commands", dev.id), json!({ "name": "Bad Name" })).await.expect("req");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_command")));
}

#[tokio::test]
async fn expired_bootstrap_tokens_are_refused() {
    let hub = TestHub::start().await.expect("hub");
    let expired = hub.hub.state.identity.with_settings(IdentitySettings {
        device_cert_validity: time::Duration::days(1),
        bootstrap_validity: time::Duration::seconds(-1),
        expired_renewal_grace: time::Duration::ZERO,
    });
    let made = expired.manufacture(&hearth_proto::ModelId::parse("old-stock").expect("model"), 1).await.expect("made");
    let key = rcgen::KeyPair::generate().expect("key");
    let resp = hub
        .client
        .post(format!("{}/api/v1/enrol", hub.base()))
        .json(&json!({ "device_id": made[0].id, "bootstrap_token": made[0].bootstrap_token.expose(),
                       "csr_pem": csr_for(&key, made[0].id.as_str()).expect("csr") }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "token_expired");
}

#[tokio::test]
async fn telemetry_is_queried_by_time_range_in_pages() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let (mut tls, _) = connect(&hub, &dev, true, 60).await;
    let topic = format!("devices/{}/telemetry", dev.id);
    for seq in 1..=6u16 {
        let payload = format!(r#"{{"v":1,"seq":{seq},"ts":{},"metrics":{{"n":{seq}}}}}"#, 1000 * u64::from(seq));
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend_from_slice(payload.as_bytes());
        let mut packet = vec![0x32, body.len() as u8];
        packet.extend_from_slice(&body);
        tls.write_all(&packet).await.expect("publish");
        let mut puback = [0u8; 4];
        tls.read_exact(&mut puback).await.expect("puback");
        assert_eq!(puback, [0x40, 0x02, 0x00, seq as u8]);
    }
    // Device time 2000 ≤ ts < 6000: seqs 2..=5, two per page.
    let path = format!("/api/v1/devices/{}/telemetry?from=2000&to=6000&limit=2", dev.id);
    let (_, p1) = hub.get(&path).await.expect("page 1");
    let seqs = |p: &serde_json::Value| {
        p["items"].as_array().expect("items").iter().map(|i| i["seq"].as_i64().expect("seq")).collect::<Vec<_>>()
    };
    assert_eq!(seqs(&p1), vec![2, 3]);
    let (_, p2) = hub.get(&format!("{path}&after_seq={}", p1["next_after_seq"])).await.expect("page 2");
    assert_eq!(seqs(&p2), vec![4, 5]);
    assert_eq!(p2["items"][0]["body"]["metrics"]["n"], 4.0);
}

#[tokio::test]
async fn revoked_between_handshake_and_connect_is_refused() {
    // Regression: a session subscribed to revocation notices only after CONNECT, so a device revoked while it
    // held CONNECT back stayed connected.
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut tls = tls_connect(&hub.hub, Some(&dev)).await.expect("handshake passes before revocation");
    let (status, _) = hub.post(&format!("/api/v1/devices/{}/revoke", dev.id), json!({})).await.expect("revoke");
    assert_eq!(status, 200);
    tls.write_all(&connect_311(dev.id.as_str(), true, 60)).await.expect("connect");
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.expect("answered in time");
    assert!(matches!(read, Ok(0) | Err(_)) || buf[3] != 0, "a revoked device must not get a session: {read:?} {buf:?}");
    assert!(!hub.hub.state.routing.is_connected(&dev.id));
}

/// A bus notice only says "look in the store": a command id that was never recorded, or one already sent,
/// sends nothing (anyone who can publish on the bus, or a notice replayed after a reconnect, gets nothing
/// delivered); a recorded, unsent command is delivered.
#[tokio::test]
async fn bus_notices_deliver_only_recorded_unsent_commands() {
    use hearth_hub::bus::Notice;
    use hearth_hub::routing::Downlink;
    use hearth_test_support::mqtt::V5;
    use rmqtt_codec::v5;

    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    c.subscribe(&[format!("devices/{}/commands", dev.id)], 1).await.expect("subscribe");
    assert!(matches!(c.recv().await, Some(v5::Packet::SubscribeAck(_))));
    let bus = &hub.hub.state.bus;
    let forged = Notice::Downlink { device: dev.id.clone(), downlink: Downlink::Command { id: "cforged".into() } };
    bus.publish(forged).await.expect("publish");
    assert!(c.recv_within(Duration::from_millis(500)).await.is_none(), "an unrecorded command id sends nothing");

    let (status, cmd) =
        hub.post(&format!("/api/v1/devices/{}/commands", dev.id), json!({"name": "ping"})).await.expect("send");
    assert_eq!(status, 202);
    let Some(v5::Packet::Publish(p)) = c.recv().await else { panic!("the recorded command is delivered") };
    let body: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
    assert_eq!(body["id"], cmd["id"]);
    // The same notice again (a replay): the command is already sent, so nothing goes out twice.
    let id = cmd["id"].as_str().expect("id").to_owned();
    bus.publish(Notice::Downlink { device: dev.id.clone(), downlink: Downlink::Command { id } }).await.expect("replay");
    let next = c.recv_within(Duration::from_millis(500)).await;
    assert!(!matches!(next, Some(v5::Packet::Publish(_))), "a replayed notice re-sent the command: {next:?}");
}

/// Issue 14, deviation 4: MQTT 3.1 (`MQIsdp`, level 3) was accepted although the hub speaks 3.1.1 and 5; a
/// 3.1.1 CONNECT with an empty client id and clean session 0 was closed without a CONNACK. Now: CONNACK return
/// code 1 (unacceptable protocol version) and 2 (identifier rejected), each recorded as a security event.
#[tokio::test]
async fn mqtt_31_and_an_empty_client_id_without_clean_session_get_their_connack_codes() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");

    // MQTT 3.1: protocol name "MQIsdp", level 3, clean session, keep-alive 60.
    let id = dev.id.as_str();
    let mut body = vec![0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    let mut tls = tls_connect(&hub.hub, Some(&dev)).await.expect("tls");
    tls.write_all(&packet).await.expect("connect");
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await.expect("connack");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x01], "3.1 is refused with return code 1");

    // 3.1.1, empty client id, clean session 0.
    let (_tls, connack) = connect_as(&hub, &dev, "", false, 60).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x02], "return code 2 (identifier rejected)");
    // The same with clean session 1 is accepted (the hub assigns the certificate's id).
    let (_tls, connack) = connect_as(&hub, &dev, "", true, 60).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    assert!(hub.has_events("unsupported_protocol", 1).await);
    assert!(hub.has_events("client_id_rejected", 1).await);
}

/// Waits until the hub has recorded the end of the device's last connection (so the next CONNECT is not a
/// takeover of a connection still open).
async fn wait_closed(hub: &TestHub, dev: &TestDevice) {
    let closed = eventually(Duration::from_secs(5), || async {
        let row = hub.hub.state.store.device(dev.id.as_str()).await.ok()??;
        (!row.session_open).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the hub did not record the end of the connection");
}

/// An MQTT 5 connection with `clean_start` and `expiry` seconds of session expiry; returns it and whether the
/// hub said Session Present.
async fn connect_v5(hub: &TestHub, dev: &TestDevice, clean_start: bool, expiry: u32) -> (V5, bool) {
    V5::connect_to(&hub.hub.server_ca_path, hub.hub.mqtt_addr, dev, |c| {
        c.clean_start = clean_start;
        c.session_expiry_interval_secs = expiry;
    })
    .await
    .expect("connect")
}

/// An MQTT 5 DISCONNECT with `code` and, if given, a new session expiry.
fn disconnect_packet(code: v5::DisconnectReasonCode, session_expiry: Option<u32>) -> v5::Packet {
    v5::Packet::Disconnect(v5::Disconnect {
        reason_code: code,
        session_expiry_interval_secs: session_expiry,
        server_reference: None,
        reason_string: None,
        user_properties: Vec::new(),
    })
}

async fn disconnect_v5(mut c: V5, session_expiry: Option<u32>) {
    c.send(disconnect_packet(v5::DisconnectReasonCode::NormalDisconnection, session_expiry)).await.expect("disconnect");
    // The hub closes after a DISCONNECT.
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn session_expiry_interval_decides_session_present() {
    // Issue 14, deviation 2: a session with expiry 5 s reported Session Present after 8 s, and a session with
    // no subscription reported not present inside its expiry. The hub's clock is moved, not waited for.
    let clock = hearth_hub::clock::Clock::manual(hearth_hub::clock::Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");

    // Expiry 5 s, no subscription: the session exists for 5 s after the connection closes.
    let (c, present) = connect_v5(&hub, &dev, true, 5).await;
    assert!(!present, "clean start: never present");
    disconnect_v5(c, None).await;
    wait_closed(&hub, &dev).await;
    clock.advance(Duration::from_secs(3));
    let (c, present) = connect_v5(&hub, &dev, false, 5).await;
    assert!(present, "inside its expiry a session without subscriptions is present");
    disconnect_v5(c, None).await;
    wait_closed(&hub, &dev).await;
    clock.advance(Duration::from_secs(8));
    let (c, present) = connect_v5(&hub, &dev, false, 5).await;
    assert!(!present, "8 s after a 5 s expiry the session is gone");

    // DISCONNECT may lengthen the expiry: 5 s at CONNECT, 100 s at DISCONNECT.
    disconnect_v5(c, Some(100)).await;
    wait_closed(&hub, &dev).await;
    clock.advance(Duration::from_secs(60));
    let (c, present) = connect_v5(&hub, &dev, false, 0).await;
    assert!(present, "the expiry set at DISCONNECT counts");

    // Expiry 0: the session ends with the connection, subscription and all.
    let mut c = c;
    c.subscribe(&[format!("devices/{}/commands", dev.id)], 1).await.expect("subscribe");
    assert!(matches!(c.recv().await, Some(v5::Packet::SubscribeAck(_))));
    disconnect_v5(c, None).await;
    wait_closed(&hub, &dev).await;
    let (c, present) = connect_v5(&hub, &dev, false, 0).await;
    assert!(!present, "expiry 0 keeps nothing");

    // MQTT-3.14.2-2: a session that was to end with its connection cannot be kept by DISCONNECT.
    let mut c = c;
    c.send(disconnect_packet(v5::DisconnectReasonCode::NormalDisconnection, Some(30))).await.expect("disconnect");
    match c.recv().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::ProtocolError),
        other => panic!("expected DISCONNECT 0x82, got {other:?}"),
    }
    wait_closed(&hub, &dev).await;
    let (_c, present) = connect_v5(&hub, &dev, false, 0).await;
    assert!(!present, "the refused expiry was not kept");

    // MQTT 3.1.1 without clean session: the session never expires.
    drop(_c);
    wait_closed(&hub, &dev).await;
    let (tls, connack) = connect(&hub, &dev, false, 60).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "the 3.1.1 session starts");
    drop(tls);
    wait_closed(&hub, &dev).await;
    // (The device's certificate lasts 30 days, and the handshake checks it by the hub's clock.)
    clock.advance(Duration::from_secs(20 * 86_400));
    let (_tls, connack) = connect(&hub, &dev, false, 60).await;
    assert_eq!(connack, [0x20, 0x02, 0x01, 0x00], "present after 20 days");
}

/// A will on the device's events topic.
fn will(dev: &TestDevice, seq: u64, delay: Option<u32>) -> v5::LastWill {
    v5::LastWill {
        qos: rmqtt_codec::types::QoS::AtLeastOnce,
        retain: false,
        topic: format!("devices/{}/events", dev.id).into(),
        message: format!(r#"{{"v":1,"seq":{seq},"ts":1700000000000,"event":"connection_lost"}}"#).into(),
        will_delay_interval_sec: delay,
        correlation_data: None,
        message_expiry_interval: None,
        content_type: None,
        user_properties: Vec::new(),
        is_utf8_payload: None,
        response_topic: None,
    }
}

/// The seqs of the device's stored events.
async fn stored_event_seqs(hub: &TestHub, dev: &TestDevice) -> Vec<u64> {
    let (_, page) = hub.get(&format!("/api/v1/devices/{}/telemetry?limit=100", dev.id)).await.expect("telemetry");
    page["items"]
        .as_array()
        .map(|items| {
            items.iter().filter(|i| i["kind"] == "event").filter_map(|i| i["seq"].as_u64()).collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn wills_are_stored_as_device_events_when_the_connection_is_lost() {
    // Issue 14, deviation 6: wills were accepted and ignored.
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let with_will = |seq: u64, delay: Option<u32>, expiry: u32| {
        let w = will(&dev, seq, delay);
        move |c: &mut v5::Connect| {
            c.last_will = Some(w);
            c.session_expiry_interval_secs = expiry;
        }
    };
    let addr = hub.hub.mqtt_addr;
    let ca = hub.hub.server_ca_path.clone();

    // A normal DISCONNECT discards the will (seq 901).
    let (c, _) = V5::connect_to(&ca, addr, &dev, with_will(901, None, 0)).await.expect("connect");
    disconnect_v5(c, None).await;
    wait_closed(&hub, &dev).await;
    // A will with a delay is not published when the device is back within it (seq 902).
    let (c, _) = V5::connect_to(&ca, addr, &dev, with_will(902, Some(2), 60)).await.expect("connect");
    drop(c);
    wait_closed(&hub, &dev).await;
    let (back, _) = V5::connect_to(&ca, addr, &dev, |_| {}).await.expect("back");
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(back);
    wait_closed(&hub, &dev).await;
    // DISCONNECT with reason 0x04 asks for the will (seq 903).
    let (mut c, _) = V5::connect_to(&ca, addr, &dev, with_will(903, None, 0)).await.expect("connect");
    c.send(disconnect_packet(v5::DisconnectReasonCode::DisconnectWithWillMessage, None)).await.expect("disconnect");
    drop(c);
    wait_closed(&hub, &dev).await;
    // A connection lost without DISCONNECT publishes its will (seq 904).
    let (c, _) = V5::connect_to(&ca, addr, &dev, with_will(904, None, 0)).await.expect("connect");
    drop(c);
    let stored = eventually(Duration::from_secs(5), || async {
        let seqs = stored_event_seqs(&hub, &dev).await;
        seqs.contains(&904).then_some(seqs)
    })
    .await
    .expect("the will of a lost connection is stored");
    let mut stored = stored;
    stored.sort_unstable();
    assert_eq!(stored, vec![903, 904], "only the wills that fire are stored");
    let (_, page) = hub.get(&format!("/api/v1/devices/{}/telemetry?limit=100", dev.id)).await.expect("telemetry");
    let item = page["items"].as_array().and_then(|i| i.iter().find(|i| i["seq"] == 904)).cloned().expect("904");
    assert_eq!(item["body"]["event"], "connection_lost");
}

#[tokio::test]
async fn a_revoked_device_is_told_why_before_its_connection_closes() {
    // Issue 14, deviation 13: a revoked device saw only "connection lost". MQTT 5 gets DISCONNECT 0x87 with a
    // reason string first.
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    let (status, _) = hub.post(&format!("/api/v1/devices/{}/revoke", dev.id), json!({})).await.expect("revoke");
    assert_eq!(status, 200);
    match c.recv().await {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::NotAuthorized);
            assert_eq!(d.reason_string.as_deref(), Some("device revoked"));
        }
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(c.recv().await.is_none(), "then the connection closes");
}

#[tokio::test]
async fn topic_alias_is_refused_with_0x94_with_or_without_a_topic_name() {
    // Issue 14, deviation 1: aliases 1 and 5 were accepted (stored, PUBACK 0x00) though CONNACK allows none; an
    // alias-only publish got PUBACK 0x90 and alias 0 DISCONNECT 0x81. MQTT 5 §3.3.2.3.4 wants DISCONNECT 0x94.
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    for (topic, alias) in [(format!("devices/{}/telemetry", dev.id), 1u16), (String::new(), 1), (String::new(), 5)] {
        let mut c = V5::connect(&hub, &dev).await.expect("connect");
        let publish = rmqtt_codec::types::Publish {
            dup: false,
            retain: false,
            qos: rmqtt_codec::types::QoS::AtLeastOnce,
            topic: topic.clone().into(),
            packet_id: std::num::NonZeroU16::new(3),
            payload: hearth_test_support::mqtt::telemetry(u64::from(alias) + 70, 1.0).into(),
            properties: Some(v5::PublishProperties {
                topic_alias: std::num::NonZeroU16::new(alias),
                ..Default::default()
            }),
        };
        c.send(v5::Packet::Publish(Box::new(publish))).await.expect("publish");
        match c.recv().await {
            Some(v5::Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, v5::DisconnectReasonCode::TopicAliasInvalid, "topic {topic:?} alias {alias}")
            }
            other => panic!("topic {topic:?} alias {alias}: expected DISCONNECT 0x94, got {other:?}"),
        }
    }
    let (_, page) = hub.get(&format!("/api/v1/devices/{}/telemetry", dev.id)).await.expect("telemetry");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "nothing sent with an alias is stored");
}

#[tokio::test]
async fn a_resent_command_keeps_its_first_send_time_and_counts_its_deliveries() {
    // Issue 14, deviation 5: every SUBSCRIBE re-sent unanswered commands and overwrote `sent_at_ms`.
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let (_, cmd) =
        hub.post(&format!("/api/v1/devices/{}/commands", dev.id), json!({ "name": "ping" })).await.expect("cmd");
    let id = cmd["id"].as_str().expect("id").to_owned();
    let mut first_sent = None;
    for delivery in 1..=2 {
        let mut c = V5::connect(&hub, &dev).await.expect("connect");
        c.subscribe(&[format!("devices/{}/commands", dev.id)], 1).await.expect("subscribe");
        let mut got = false;
        while let Some(p) = c.recv().await {
            if let v5::Packet::Publish(p) = p {
                assert!(String::from_utf8_lossy(&p.payload).contains(&id), "the same command, by id");
                got = true;
                break;
            }
        }
        assert!(got, "delivery {delivery}: the unanswered command is sent");
        let (_, shown) = hub.get(&format!("/api/v1/devices/{}/commands/{id}", dev.id)).await.expect("show");
        assert_eq!(shown["deliveries"], delivery, "{shown}");
        let sent = shown["sent_at_ms"].as_i64().expect("sent_at_ms");
        assert_eq!(*first_sent.get_or_insert(sent), sent, "the first send time stays");
        drop(c);
        wait_closed(&hub, &dev).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn last_seen_moves_while_a_device_streams_not_only_at_connect() {
    // Issue 14, deviation 12: a device streaming every 2 s showed 14 minutes old. Activity moves last seen, at
    // most once per 30 s of the hub's clock per session (coalesced, not a write per message).
    let clock = hearth_hub::clock::Clock::manual(hearth_hub::clock::Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    let topic = format!("devices/{}/telemetry", dev.id);
    let last_seen = || async {
        let (_, d) = hub.get(&format!("/api/v1/devices/{}", dev.id)).await.expect("device");
        d["last_seen_at_ms"].as_i64()
    };
    let connected_at = clock.now_ms();
    assert_eq!(
        eventually(Duration::from_secs(5), || async { last_seen().await.filter(|t| *t == connected_at) }).await,
        Some(connected_at)
    );
    // (A seen mark goes to the writer before the message does: once the PUBACK is back, the mark is applied.)
    for (seq, step, expected) in [(1u64, 10u64, 0i64), (2, 25, 35_000), (3, 20, 35_000), (4, 40, 95_000)] {
        clock.advance(Duration::from_secs(step));
        c.publish(&topic, hearth_test_support::mqtt::telemetry(seq, 1.0), seq as u16).await.expect("publish");
        assert!(matches!(c.recv().await, Some(v5::Packet::PublishAck(_))));
        assert_eq!(last_seen().await, Some(connected_at + expected), "after message {seq}");
    }
}

#[tokio::test]
async fn a_device_reconnecting_in_a_loop_holds_at_most_one_waiting_will() {
    // A will with a long delay waits in a task; a device that reconnects in a loop must not pile them up (each
    // new connection cancels the wait, each new will replaces the old one).
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let (ca, addr) = (hub.hub.server_ca_path.clone(), hub.hub.mqtt_addr);
    for i in 0..20 {
        let w = will(&dev, 2000 + i, Some(3600));
        let (c, _) = V5::connect_to(&ca, addr, &dev, |c| {
            c.last_will = Some(w);
            c.session_expiry_interval_secs = 7200;
        })
        .await
        .expect("connect");
        drop(c);
        wait_closed(&hub, &dev).await;
    }
    let waiting = eventually(Duration::from_secs(5), || async {
        let n = hub.hub.state.pending_wills.len();
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(waiting, Some(1), "one will waits: the last connection's");
    let (_c, _) = V5::connect_to(&ca, addr, &dev, |_| {}).await.expect("back");
    assert!(hub.hub.state.pending_wills.is_empty(), "the device is back: no will waits");
    assert!(stored_event_seqs(&hub, &dev).await.is_empty(), "no will was published");
}

#[tokio::test]
async fn a_will_is_not_published_for_a_device_revoked_during_its_delay_and_an_error_disconnect_publishes_it() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let (ca, addr) = (hub.hub.server_ca_path.clone(), hub.hub.mqtt_addr);
    // MQTT-3.14.4-3: only DISCONNECT 0x00 discards the will; 0x80 (an error on the client's side) publishes it.
    let w = will(&dev, 3001, None);
    let (mut c, _) = V5::connect_to(&ca, addr, &dev, |c| c.last_will = Some(w)).await.expect("connect");
    c.send(disconnect_packet(v5::DisconnectReasonCode::UnspecifiedError, None)).await.expect("disconnect");
    drop(c);
    let stored = eventually(Duration::from_secs(5), || async {
        stored_event_seqs(&hub, &dev).await.contains(&3001).then_some(())
    })
    .await;
    assert!(stored.is_some(), "the will after DISCONNECT 0x80 is stored");
    wait_closed(&hub, &dev).await;
    // A will waiting out its 1 s delay when the device is revoked is not published.
    let w = will(&dev, 3002, Some(1));
    let (c, _) = V5::connect_to(&ca, addr, &dev, |c| {
        c.last_will = Some(w);
        c.session_expiry_interval_secs = 60;
    })
    .await
    .expect("connect");
    drop(c);
    wait_closed(&hub, &dev).await;
    let (status, _) = hub.post(&format!("/api/v1/devices/{}/revoke", dev.id), json!({})).await.expect("revoke");
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hub.hub.state.pending_wills.is_empty(), "the will's wait is over");
    assert_eq!(stored_event_seqs(&hub, &dev).await, vec![3001], "nothing of a revoked device is stored");
}
