//! Regression tests for the defects an outside review found in the foundation (issue 6), each named after what
//! broke: one device degrading the hub with SUBSCRIBE, one source holding every slot, superseded certificates
//! that kept working, devices that could never come back, new data silently discarded on a repeated seq,
//! unbounded stored data, refusals and logins that left no trace, and the smaller protocol defects.

use std::net::IpAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use hearth_hub::clock::Clock;
use hearth_test_support::mqtt::{V5, telemetry};
use hearth_test_support::{TestDevice, TestHub, client_for, csr_for, tls_connect};
use rmqtt_codec::v5;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DAY: Duration = Duration::from_secs(86_400);

fn topic(dev: &TestDevice, suffix: &str) -> String {
    format!("devices/{}/{suffix}", dev.id)
}

async fn stored(hub: &TestHub, dev: &TestDevice) -> Vec<serde_json::Value> {
    let (_, page) = hub.get(&format!("/api/v1/devices/{}/telemetry?limit=1000", dev.id)).await.expect("telemetry");
    page["items"].as_array().cloned().unwrap_or_default()
}

async fn puback(c: &mut V5) -> v5::PublishAck {
    match c.recv().await {
        Some(v5::Packet::PublishAck(a)) => a,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Renews over mutual TLS with `dev`'s certificate and a CSR for `key`; returns status and body.
async fn renew(hub: &TestHub, dev: &TestDevice, key: &rcgen::KeyPair) -> Result<(u16, serde_json::Value), String> {
    let identity = format!("{}{}", dev.key_pem, dev.chain_pem);
    let client = client_for(&hub.hub.server_ca_path, Some(identity.as_bytes())).map_err(|e| e.to_string())?;
    let csr = csr_for(key, dev.id.as_str()).map_err(|e| e.to_string())?;
    let request = client.post(format!("{}/api/v1/renew", hub.base())).json(&json!({ "csr_pem": csr }));
    let (status, _, body) = hearth_test_support::checked(request).await.map_err(|e| format!("{e:?}"))?;
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

fn with_chain(dev: &TestDevice, key: &rcgen::KeyPair, chain: &str) -> TestDevice {
    TestDevice {
        id: dev.id.clone(),
        key_pem: key.serialize_pem(),
        chain_pem: chain.to_owned(),
        key_path: dev.key_path.clone(),
        cert_path: dev.cert_path.clone(),
    }
}

async fn enrol(hub: &TestHub, id: &str, token: &str, key: &rcgen::KeyPair) -> (u16, serde_json::Value) {
    let request = hub
        .client
        .post(format!("{}/api/v1/enrol", hub.base()))
        .json(&json!({ "device_id": id, "bootstrap_token": token, "csr_pem": csr_for(key, id).expect("csr") }));
    let (status, _, body) = hub.send(request).await.expect("send");
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

async fn can_connect(hub: &TestHub, dev: &TestDevice) -> bool {
    V5::connect(hub, dev).await.is_ok()
}

#[tokio::test]
async fn subscribe_with_thousands_of_filters_is_cut_off_and_costs_one_event_per_cause() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");

    // Sixteen foreign filters (the most one packet may carry): each refused, one aggregated event.
    let foreign: Vec<String> = (0..16).map(|i| format!("devices/other{i:02}xxxxxxxxx/commands")).collect();
    c.subscribe(&foreign, 1).await.expect("subscribe");
    match c.recv().await {
        Some(v5::Packet::SubscribeAck(ack)) => {
            assert_eq!(ack.status.len(), 16);
            assert!(ack.status.iter().all(|s| *s == v5::SubscribeAckReason::NotAuthorized));
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // 1,500 filters in one packet (the review sent 16,000): the connection is closed, once.
    let many: Vec<String> = (0..1500).map(|i| format!("devices/x{i:015}/commands")).collect();
    c.subscribe(&many, 2).await.expect("subscribe");
    match c.recv().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::QuotaExceeded),
        other => panic!("expected DISCONNECT 0x97, got {other:?}"),
    }
    assert_eq!(hub.event_count("acl_subscribe").await.expect("events"), 1, "one event for the 16 refused filters");
    assert_eq!(hub.event_count("too_many_filters").await.expect("events"), 1);
    let (rows, _) = hub.hub.state.store.security_event_totals().await.expect("totals");
    assert!(rows <= 3, "{rows} event rows for two packets");
}

#[tokio::test]
async fn failed_handshakes_from_one_source_are_one_aggregated_row_not_one_each() {
    let hub = TestHub::start().await.expect("hub");
    for _ in 0..200 {
        // No client certificate: refused in the handshake.
        let _ = tls_connect(&hub.hub, None).await.map(|mut t| async move { t.read_u8().await });
    }
    assert!(hub.has_events("tls_refused", 200).await, "every refusal is counted");
    let (rows, occurrences) = hub.hub.state.store.security_event_totals().await.expect("totals");
    assert!(rows <= 4, "{rows} rows for 200 refusals from one source");
    assert!(occurrences >= 200);
}

#[tokio::test]
async fn one_source_cannot_hold_every_https_or_mqtt_slot() {
    let hub = TestHub::start_with(|c| {
        c.https.max_pending_per_source = 4;
        c.mqtt.max_pending_per_source = 4;
    })
    .await
    .expect("hub");
    for addr in [hub.hub.https_addr, hub.hub.mqtt_addr] {
        // Four connections that never start TLS hold this source's share.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("tcp"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A fifth from the same source is closed at once...
        let mut fifth = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{addr}: a source over its share is closed at once: {n:?}");
    }
    // ...while another source is served (HTTPS from 127.0.0.2).
    let other = hearth_test_support::client_from(&hub.hub.server_ca_path, "127.0.0.2".parse::<IpAddr>().expect("ip"))
        .expect("client");
    let resp = other.get(format!("{}/healthz", hub.base())).send().await.expect("healthz from another source");
    assert_eq!(resp.status(), 200);
    assert!(hub.has_events("connection_refused", 2).await);
}

#[tokio::test]
async fn superseded_certificate_cannot_connect_or_renew_itself() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let old = hub.enrolled_device(dir.path()).await.expect("device");
    // Renewal with a new key.
    let new_key = rcgen::KeyPair::generate().expect("key");
    let (status, cert) = renew(&hub, &old, &new_key).await.expect("renew");
    assert_eq!(status, 200, "{cert}");
    let new = with_chain(&old, &new_key, cert["certificate_chain_pem"].as_str().expect("chain"));
    // Until the new certificate is used, the old one still works (the device may not have received the reply).
    assert!(can_connect(&hub, &old).await, "the previous certificate works until the new one is used");
    assert!(can_connect(&hub, &new).await);
    // From the first use of the new one on, the old one is refused everywhere.
    assert!(!can_connect(&hub, &old).await, "a superseded certificate must not connect");
    let thief_key = rcgen::KeyPair::generate().expect("key");
    assert!(
        !matches!(renew(&hub, &old, &thief_key).await, Ok((200, _))),
        "a superseded certificate must not renew itself onto a key of its own"
    );
    assert!(can_connect(&hub, &new).await, "the current certificate keeps working");
    assert!(hub.has_events("tls_refused", 2).await);
    // A renewal loop is refused: one renewal of the current certificate per 10 minutes.
    let (status, body) = renew(&hub, &new, &thief_key).await.expect("renew again");
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("renewed_recently")), "{body}");
}

#[tokio::test]
async fn renewal_reply_lost_the_previous_certificate_renews_only_the_same_key() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let old = hub.enrolled_device(dir.path()).await.expect("device");
    let key2 = rcgen::KeyPair::generate().expect("key");
    let (status, lost) = renew(&hub, &old, &key2).await.expect("renew");
    assert_eq!(status, 200);
    // The reply was lost: the device still has only its old certificate. Retrying for the same key gets the
    // same new certificate again (a replay changes nothing)...
    let (status, cert) = renew(&hub, &old, &key2).await.expect("retry");
    assert_eq!(status, 200, "{cert}");
    assert_eq!(cert["certificate_chain_pem"], lost["certificate_chain_pem"]);
    // ...but the old certificate cannot get a certificate for any other key.
    let key3 = rcgen::KeyPair::generate().expect("key");
    let (status, body) = renew(&hub, &old, &key3).await.expect("other key");
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("certificate_superseded")), "{body}");
    assert!(hub.has_events("renew_refused", 1).await, "renew refusals are recorded");
    let current = with_chain(&old, &key2, cert["certificate_chain_pem"].as_str().expect("chain"));
    assert!(can_connect(&hub, &current).await);
    assert!(!can_connect(&hub, &old).await);
}

#[tokio::test]
async fn enrol_retry_after_a_lost_reply_gets_the_same_certificate_and_a_replay_changes_nothing() {
    let hub = TestHub::start().await.expect("hub");
    let file = hub.manufacture("m", 1).await.expect("manufacture").remove(0);
    let id = file.device_id.as_str();
    let key = rcgen::KeyPair::generate().expect("key");
    let (status, first) = enrol(&hub, id, &file.bootstrap_token, &key).await;
    assert_eq!(status, 200);
    // Before: 409 token_used for ever. Now the same key gets the same certificate again.
    let (status, again) = enrol(&hub, id, &file.bootstrap_token, &key).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["certificate_chain_pem"], first["certificate_chain_pem"], "the same certificate, unchanged");
    let dir = tempfile::tempdir().expect("dir");
    let dev = TestDevice {
        id: file.device_id.clone(),
        key_pem: key.serialize_pem(),
        chain_pem: first["certificate_chain_pem"].as_str().expect("chain").to_owned(),
        key_path: dir.path().join("k"),
        cert_path: dir.path().join("c"),
    };
    assert!(can_connect(&hub, &dev).await);
    // A replay of the captured request after the device connected: still the same certificate, and the device
    // is not locked out (a new serial would have superseded the one it holds).
    let (status, replay) = enrol(&hub, id, &file.bootstrap_token, &key).await;
    assert_eq!((status, &replay["certificate_chain_pem"]), (200, &first["certificate_chain_pem"]));
    assert!(can_connect(&hub, &dev).await, "a replayed enrolment must not lock the device out");
    // Another key with the spent token is refused.
    let other = rcgen::KeyPair::generate().expect("key");
    let (status, body) = enrol(&hub, id, &file.bootstrap_token, &other).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("token_used")));
}

#[tokio::test]
async fn device_offline_past_its_certificate_renews_within_grace_or_gets_a_reissued_bootstrap() {
    // The hub's clock starts 40 days ago and then jumps to now: the device's 30-day certificate expired 10 days
    // ago (by the hub's clock, which the TLS handshake uses too).
    let start = Clock::system().now_ms() - 40 * 86_400_000;
    let clock = Clock::manual(start);
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    clock.set(Clock::system().now_ms());
    assert!(!can_connect(&hub, &dev).await, "an expired certificate never opens an MQTT session");
    let key = rcgen::KeyPair::generate().expect("key");
    let (status, cert) = renew(&hub, &dev, &key).await.expect("renew");
    assert_eq!(status, 200, "renewal within the 90-day grace: {cert}");
    let renewed = with_chain(&dev, &key, cert["certificate_chain_pem"].as_str().expect("chain"));
    assert!(can_connect(&hub, &renewed).await);
    assert!(hub.has_events("renewed_after_expiry", 1).await);

    // Without grace, the operator re-issues a bootstrap token and the device enrols again.
    let strict_clock = Clock::manual(start);
    let strict = TestHub::start_with_clock(|c| c.devices.expired_renewal_grace_days = 0, strict_clock.clone())
        .await
        .expect("hub");
    let dev = strict.enrolled_device(dir.path()).await.expect("device");
    assert!(can_connect(&strict, &dev).await, "valid by the hub's clock");
    strict_clock.set(Clock::system().now_ms());
    assert!(renew(&strict, &dev, &key).await.is_err(), "no grace: the handshake refuses the expired certificate");
    let (status, fresh) =
        strict.post(&format!("/api/v1/devices/{}/bootstrap", dev.id), json!({})).await.expect("reissue");
    assert_eq!(status, 201, "{fresh}");
    let token = fresh["device"]["bootstrap_token"].as_str().expect("token");
    let key2 = rcgen::KeyPair::generate().expect("key");
    let (status, cert) = enrol(&strict, dev.id.as_str(), token, &key2).await;
    assert_eq!(status, 200, "{cert}");
    // A revoked device gets no new token.
    strict.post(&format!("/api/v1/devices/{}/revoke", dev.id), json!({})).await.expect("revoke");
    let (status, _) = strict.post(&format!("/api/v1/devices/{}/bootstrap", dev.id), json!({})).await.expect("reissue");
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_different_message_under_a_stored_seq_is_refused_not_silently_acknowledged() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    let t = topic(&dev, "telemetry");
    c.publish(&t, telemetry(5, 1.0), 1).await.expect("publish");
    assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::Success);
    // The same message again (a resend): acknowledged, stored once.
    c.publish(&t, telemetry(5, 1.0), 2).await.expect("publish");
    assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::Success);
    // New data under the same seq (a recreated queue starting over): refused, with the highest stored seq.
    c.publish(&t, telemetry(5, 2.0), 3).await.expect("publish");
    let ack = puback(&mut c).await;
    assert_eq!(ack.reason_code, v5::PublishAckReason::ImplementationSpecificError);
    assert!(ack.reason_string.as_deref().is_some_and(|s| s.starts_with("seq_conflict")), "{ack:?}");
    let highest = ack.properties.iter().find(|(k, _)| k == "highest_seq").map(|(_, v)| v.to_string());
    assert_eq!(highest.as_deref(), Some("5"));
    let items = stored(&hub, &dev).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["body"]["metrics"]["t"], 1.0, "the stored message is the first one");
    // As docs/API.md says (issue 14, deviation 13): the body is the whole validated message, envelope included.
    assert_eq!((items[0]["body"]["v"].as_u64(), items[0]["body"]["seq"].as_i64()), (Some(1), items[0]["seq"].as_i64()));
    assert_eq!(items[0]["body"]["ts"], items[0]["device_ts_ms"]);
    assert!(hub.has_events("seq_conflict", 1).await);
}

#[tokio::test]
async fn a_locked_database_refuses_new_messages_instead_of_stalling_and_ingest_resumes() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    let t = topic(&dev, "telemetry");

    // Another process holds the write lock (a database that is down, for the writer).
    use sqlx::Connection as _;
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", hub.dir.path().join("hearth.db").display()))
        .await
        .expect("open");
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut lock).await.expect("lock");

    c.publish(&t, telemetry(1, 1.0), 1).await.expect("publish");
    let ack = match c.recv_within(Duration::from_secs(15)).await {
        Some(v5::Packet::PublishAck(a)) => a,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(ack.reason_code, v5::PublishAckReason::UnspecifiedError, "not acknowledged as stored");
    // While the database fails, new messages are refused at once (nothing piles up behind the writer).
    let started = std::time::Instant::now();
    c.publish(&t, telemetry(2, 1.0), 2).await.expect("publish");
    assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::UnspecifiedError);
    let refused_after = started.elapsed();

    sqlx::query("ROLLBACK").execute(&mut lock).await.expect("unlock");
    // Ingest resumes by itself: the device resends and everything is stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        c.publish(&t, telemetry(1, 1.0), 3).await.expect("publish");
        if puback(&mut c).await.reason_code == v5::PublishAckReason::Success {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ingest did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.publish(&t, telemetry(2, 1.0), 4).await.expect("publish");
    assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::Success);
    let seqs: Vec<i64> = stored(&hub, &dev).await.iter().filter_map(|i| i["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert!(refused_after < Duration::from_secs(5), "refused without waiting for the writer: {refused_after:?}");
}

#[tokio::test]
async fn a_device_over_its_daily_quota_is_refused_with_0x97() {
    let hub = TestHub::start_with(|c| c.telemetry.max_bytes_per_device_per_day = 150).await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    let t = topic(&dev, "telemetry");
    c.publish(&t, telemetry(1, 1.0), 1).await.expect("publish");
    assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::Success);
    c.publish(&t, telemetry(2, 1.0), 2).await.expect("publish");
    assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::Success);
    c.publish(&t, telemetry(3, 1.0), 3).await.expect("publish");
    assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::QuotaExceeded);
    assert_eq!(stored(&hub, &dev).await.len(), 2);
    assert!(hub.has_events("quota_exceeded", 1).await);
}

#[tokio::test]
async fn retention_deletes_expired_rows_and_nothing_else() {
    let clock = Clock::manual(Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let t = topic(&dev, "telemetry");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    for seq in 1..=3 {
        c.publish(&t, telemetry(seq, 1.0), seq as u16).await.expect("publish");
        assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::Success);
    }
    // A security event now (an ACL refusal).
    c.publish(&topic(&dev, "secrets"), b"{}".to_vec(), 9).await.expect("publish");
    puback(&mut c).await;
    hub.hub.state.monitor.flush().await;
    clock.advance(200 * DAY);
    for seq in 4..=5 {
        c.publish(&t, telemetry(seq, 1.0), seq as u16).await.expect("publish");
        assert_eq!(puback(&mut c).await.reason_code, v5::PublishAckReason::Success);
    }
    clock.advance(200 * DAY);
    let pruned = hub.hub.state.retention.run_once().await.expect("retention");
    assert_eq!(pruned.uplinks, 3, "the three uplinks older than 365 days");
    assert_eq!(pruned.security_events, 1, "the event older than 90 days");
    // (The operator token expired meanwhile; read the store directly.)
    let rows = hub
        .hub
        .state
        .store
        .uplinks(&hearth_hub::store::UplinkQuery {
            device_id: dev.id.to_string(),
            received_from: 0,
            from_ts: 0,
            to_ts: i64::MAX,
            after_seq: 0,
            limit: 100,
        })
        .await
        .expect("uplinks");
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5], "newer rows stay");
    assert_eq!(hub.hub.state.retention.run_once().await.expect("again").uplinks, 0);
}

#[tokio::test]
async fn failed_logins_are_recorded_and_operator_tokens_expire_and_can_be_revoked() {
    let clock = Clock::manual(Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let url = format!("{}/api/v1/devices", hub.base());
    let status = |token: String| {
        let (client, url) = (hub.client.clone(), url.clone());
        async move { hearth_test_support::checked(client.get(url).bearer_auth(token)).await.expect("send").0 }
    };
    assert_eq!(status("hop_wrong".into()).await, 401);
    assert!(hub.has_events("auth_failed", 1).await, "a failed login leaves a trace");
    let (code, _) = hub
        .post(
            "/api/v1/setup",
            json!({ "setup_token": "hst_wrong", "email": "x@example.org", "password": "correct horse battery staple" }),
        )
        .await
        .expect("setup");
    assert_eq!(code, 401);
    assert!(hub.has_events("setup_failed", 1).await);

    let (code, made) = hub.post("/api/v1/tokens", json!({ "label": "ci", "expires_in_days": 1 })).await.expect("new");
    assert_eq!(code, 201, "{made}");
    let token = made["token"].as_str().expect("token").to_owned();
    assert_eq!(status(token.clone()).await, 200);
    let (_, list) = hub.get("/api/v1/tokens").await.expect("list");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert!(!list.to_string().contains(&token), "listing never shows a token's value");
    // Expiry, on the hub's clock.
    clock.advance(2 * DAY);
    assert_eq!(status(token).await, 401);
    // Revocation.
    let (_, made) = hub.post("/api/v1/tokens", json!({ "label": "temp" })).await.expect("new");
    let token = made["token"].as_str().expect("token").to_owned();
    assert_eq!(status(token.clone()).await, 200);
    let (code, _) =
        hub.post(&format!("/api/v1/tokens/{}/revoke", made["id"].as_str().expect("id")), json!({})).await.expect("rv");
    assert_eq!(code, 204);
    assert_eq!(status(token).await, 401);
    // A token never mints one that outlives it.
    let (_, short) = hub.post("/api/v1/tokens", json!({ "label": "short", "expires_in_days": 1 })).await.expect("new");
    let short_token = short["token"].as_str().expect("token").to_owned();
    let request = hub
        .client
        .post(format!("{}/api/v1/tokens", hub.base()))
        .bearer_auth(&short_token)
        .json(&json!({ "label": "long", "expires_in_days": 397 }));
    let (status, _, body) = hub.send(request).await.expect("send");
    assert_eq!(status, 201);
    let long: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert!(long["expires_at_ms"].as_i64() <= short["expires_at_ms"].as_i64(), "{long} outlives {short}");
}

#[tokio::test]
async fn https_handshake_failures_are_recorded() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let foreign = hearth_test_support::foreign_device(dir.path(), "aaaaaaaaaaaaaaaa").expect("foreign");
    let identity = format!("{}{}", foreign.key_pem, foreign.chain_pem);
    let client = client_for(&hub.hub.server_ca_path, Some(identity.as_bytes())).expect("client");
    let _ = client.get(format!("{}/healthz", hub.base())).send().await;
    assert!(hub.has_events("tls_refused", 1).await);
}

#[tokio::test]
async fn retained_publish_on_mqtt_311_is_refused_and_not_stored() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut tls = tls_connect(&hub.hub, Some(&dev)).await.expect("tls");
    let id = dev.id.as_str();
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, id.len() as u8];
    connect.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, connect.len() as u8];
    packet.extend_from_slice(&connect);
    // PUBLISH QoS 1, retain.
    let t = topic(&dev, "telemetry");
    let payload = telemetry(1, 1.0);
    let mut body = (t.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(t.as_bytes());
    body.extend_from_slice(&[0, 1]);
    body.extend_from_slice(&payload);
    packet.extend_from_slice(&[0x33, body.len() as u8]);
    packet.extend_from_slice(&body);
    tls.write_all(&packet).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
    assert_eq!(&got[..4], &[0x20, 2, 0, 0], "CONNACK, then the connection closes");
    assert!(!got[4..].starts_with(&[0x40]), "no PUBACK for a retained publish");
    assert!(stored(&hub, &dev).await.is_empty());
    hub.hub.state.monitor.flush().await;
    let (_, events) = hub.get("/api/v1/security-events").await.expect("events");
    assert!(hub.has_events("retain_not_supported", 1).await, "{events}");
}

#[tokio::test]
async fn command_answer_puback_does_not_overtake_earlier_telemetry_pubacks() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    for round in 0..5u16 {
        // Telemetry (waits for a commit), then a command answer (ready at once), in one write.
        let base = round * 2 + 1;
        c.publish(&topic(&dev, "telemetry"), telemetry(u64::from(base), 1.0), base).await.expect("publish");
        let ack = json!({ "v": 1, "id": "c1", "status": "ok" }).to_string();
        c.publish(&topic(&dev, "commands/ack"), ack, base + 1).await.expect("publish");
        let first = puback(&mut c).await.packet_id.get();
        let second = puback(&mut c).await.packet_id.get();
        assert_eq!((first, second), (base, base + 1), "PUBACKs must follow the order of the PUBLISHes");
    }
}

#[tokio::test]
async fn client_receive_maximum_bounds_the_commands_in_flight() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut c =
        V5::connect_with(&hub, &dev, |connect| connect.receive_max = NonZeroU16::new(1)).await.expect("connect");
    c.subscribe(&[topic(&dev, "commands")], 1).await.expect("subscribe");
    assert!(matches!(c.recv().await, Some(v5::Packet::SubscribeAck(_))));
    for _ in 0..3 {
        let (status, _) =
            hub.post(&format!("/api/v1/devices/{}/commands", dev.id), json!({ "name": "ping" })).await.expect("cmd");
        assert_eq!(status, 202);
    }
    let first = match c.recv().await {
        Some(v5::Packet::Publish(p)) => p,
        other => panic!("expected a command, got {other:?}"),
    };
    let next = c.recv_within(Duration::from_secs(1)).await;
    assert!(next.is_none(), "a second command while the first is unacknowledged breaks Receive Maximum 1: {next:?}");
    c.puback(first.packet_id.expect("qos 1")).await.expect("puback");
}

#[tokio::test]
async fn server_certificate_is_renewed_while_running() {
    let clock = Clock::manual(Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let resolver = hub.hub.state.identity.server_cert_resolver();
    let before = resolver.not_after_ms();
    assert!(!hub.hub.state.identity.refresh_server_cert().await.expect("refresh"), "nothing to do yet");
    clock.advance(380 * DAY);
    assert!(hub.hub.state.identity.refresh_server_cert().await.expect("refresh"), "renewed 17 days before expiry");
    assert!(resolver.not_after_ms() > before + 300 * 86_400_000, "the served certificate is the new one");
}

#[tokio::test]
async fn enrol_body_over_16_kib_is_refused() {
    let hub = TestHub::start().await.expect("hub");
    let body = json!({ "device_id": "aaaaaaaaaaaaaaaa", "bootstrap_token": "x".repeat(20_000), "csr_pem": "" });
    let (status, _, _) =
        hub.send(hub.client.post(format!("{}/api/v1/enrol", hub.base())).json(&body)).await.expect("send");
    assert_eq!(status, 413);
}

#[tokio::test]
async fn one_device_certificate_cannot_hold_every_https_device_slot() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let mut held = Vec::new();
    for _ in 0..hearth_hub::transport::https::MAX_CONNECTIONS_PER_DEVICE {
        held.push(hearth_test_support::tls_connect_to(&hub.hub, hub.hub.https_addr, Some(&dev)).await.expect("tls"));
    }
    // One more with the same certificate: closed right after the handshake.
    let mut extra = hearth_test_support::tls_connect_to(&hub.hub, hub.hub.https_addr, Some(&dev)).await.expect("tls");
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "a third connection of one device is refused");
    assert!(hub.has_events("connection_refused", 1).await);
    drop(held);
}

#[tokio::test]
async fn a_session_ends_when_its_certificate_expires() {
    // The hub's clock starts 30 days minus 20 s ago: the device's 30-day certificate expires 20 s from now
    // (real time, which TLS checks); then the hub's clock is set to 3 s before that expiry.
    let now = Clock::system().now_ms();
    let clock = Clock::manual(now - 30 * 86_400_000 + 20_000);
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    clock.set(now + 17_000);
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    match c.recv_within(Duration::from_secs(10)).await {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::NotAuthorized);
            assert!(d.reason_string.as_deref().is_some_and(|r| r.contains("expired")), "{d:?}");
        }
        other => panic!("expected DISCONNECT at certificate expiry, got {other:?}"),
    }
}

#[tokio::test]
async fn a_command_larger_than_the_clients_maximum_packet_size_is_not_sent() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    // 200 bytes: enough for a small command, too little for one with a long argument.
    let mut c = V5::connect_with(&hub, &dev, |connect| connect.max_packet_size = std::num::NonZeroU32::new(200))
        .await
        .expect("connect");
    c.subscribe(&[topic(&dev, "commands")], 1).await.expect("subscribe");
    assert!(matches!(c.recv().await, Some(v5::Packet::SubscribeAck(_))));
    let big = json!({ "name": "set_label", "args": { "label": "x".repeat(200) } });
    let (status, _) = hub.post(&format!("/api/v1/devices/{}/commands", dev.id), big).await.expect("cmd");
    assert_eq!(status, 202);
    let got = c.recv_within(Duration::from_secs(1)).await;
    assert!(got.is_none(), "a packet over the client's Maximum Packet Size must not be sent: {got:?}");
    let (status, _) =
        hub.post(&format!("/api/v1/devices/{}/commands", dev.id), json!({ "name": "ping" })).await.expect("cmd");
    assert_eq!(status, 202);
    match c.recv().await {
        Some(v5::Packet::Publish(p)) => assert!(p.payload.len() < 200),
        other => panic!("the small command still arrives, got {other:?}"),
    }
}

/// Behind a balancer listed in `listen.proxy_protocol_from`, the client named by its PROXY v2 header is the
/// source (for admission, events and logs); a connection from the balancer without a valid header is refused,
/// and a client that is not a listed balancer cannot claim an address with a header of its own.
#[tokio::test]
async fn a_trusted_balancer_names_the_client_and_nobody_else_can() {
    use tokio::io::AsyncWriteExt as _;
    // The "balancer" connects from 127.0.0.9; the test's own API client (127.0.0.1) stays a direct client.
    let hub = TestHub::start_with(|c| c.listen.proxy_protocol_from = vec!["127.0.0.9".parse().expect("ip")])
        .await
        .expect("hub");
    let header = |source: &str| {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (source.parse::<std::net::SocketAddr>().expect("addr"), hub.hub.mqtt_addr),
        )
        .build()
        .expect("header")
    };
    let from_balancer = |to: std::net::SocketAddr| async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.9:0".parse().expect("addr")).expect("bind");
        socket.connect(to).await.expect("connect")
    };
    // Through the "balancer": a header naming 203.0.113.7, then bytes that are not TLS.
    let mut tcp = from_balancer(hub.hub.mqtt_addr).await;
    tcp.write_all(&header("203.0.113.7:40000")).await.expect("header");
    tcp.write_all(b"\x16\x03\x01\x00\x05hello").await.expect("junk");
    let https: std::net::SocketAddr = hub.hub.https_addr;
    let mut tcp2 = from_balancer(https).await;
    tcp2.write_all(&header("198.51.100.9:40000")).await.expect("header");
    tcp2.write_all(b"\x16\x03\x01\x00\x05hello").await.expect("junk");
    // From the balancer without a header.
    let mut tcp3 = from_balancer(hub.hub.mqtt_addr).await;
    tcp3.write_all(b"\x16\x03\x01\x00\x05hello, no header here").await.expect("junk");
    let events = hearth_test_support::eventually(Duration::from_secs(10), || async {
        let (_, body) = hub.get("/api/v1/security-events?limit=100").await.ok()?;
        let rows = body.as_array()?.clone();
        let from = |src: &str| rows.iter().any(|e| e["source"] == src && e["kind"] == "tls_refused");
        let refused = rows.iter().any(|e| e["kind"] == "proxy_header_refused" && e["source"] == "127.0.0.9");
        (from("203.0.113.7") && from("198.51.100.9") && refused).then_some(rows)
    })
    .await;
    assert!(events.is_some(), "events name the client from the header, and a missing header is refused");
    drop((tcp, tcp2, tcp3));

    // A hub that trusts no balancer takes a header as the start of a (broken) TLS handshake from the peer.
    let plain = TestHub::start().await.expect("hub");
    let mut tcp = tokio::net::TcpStream::connect(plain.hub.mqtt_addr).await.expect("connect");
    tcp.write_all(&header("203.0.113.8:40000")).await.expect("header");
    let seen = hearth_test_support::eventually(Duration::from_secs(10), || async {
        let (_, body) = plain.get("/api/v1/security-events?limit=100").await.ok()?;
        let rows = body.as_array()?.clone();
        let claimed = rows.iter().any(|e| e["source"] == "203.0.113.8");
        let peer = rows.iter().any(|e| e["source"] == "127.0.0.1" && e["kind"] == "tls_refused");
        assert!(!claimed, "an untrusted peer claimed an address: {rows:?}");
        peer.then_some(())
    })
    .await;
    assert!(seen.is_some(), "the refusal is recorded against the real peer");
}

/// A connection reaching its maximum lifetime (here 1 s) while a request is in flight: the request still gets its
/// answer, with `Connection: close`, instead of a cut connection (which a client cannot tell from a lost reply).
#[tokio::test]
async fn a_request_in_flight_at_the_connections_lifetime_still_gets_its_answer() {
    use hearth_hub::transport::https::{HttpsLimits, serve, tls_config};
    let hub = TestHub::start().await.expect("hub");
    let state = &hub.hub.state;
    let tls = tls_config(&state.identity, false, Duration::from_secs(0)).expect("tls");
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "done"
        }),
    );
    let limits = HttpsLimits { max_lifetime: Duration::from_secs(1), ..HttpsLimits::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let monitor = hearth_hub::monitoring::Monitor::start(state.store.clone(), state.clock.clone());
    let server = tokio::spawn(serve(listener, tls, app, limits, monitor, std::sync::Arc::from(Vec::new())));
    let client = hearth_test_support::client_for(&hub.hub.server_ca_path, None).expect("client");
    let started = std::time::Instant::now();
    let response = client.get(format!("https://127.0.0.1:{port}/slow")).send().await.expect("an answer, not a cut");
    assert!(started.elapsed() > Duration::from_secs(1), "the request outlived the connection's lifetime");
    assert_eq!(response.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"));
    assert_eq!(response.text().await.expect("body"), "done");
    server.abort();
}
