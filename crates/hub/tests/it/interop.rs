//! Interop with MQTT clients nobody here wrote: Debian's `mosquitto_pub` / `mosquitto_sub`, with device
//! certificates. They must work on a device's own topics and be refused everywhere else.

use std::process::Stdio;
use std::time::Duration;

use hearth_test_support::{TestDevice, TestHub, eventually, foreign_device, require_tool};
use serde_json::json;
use tokio::process::Command;

struct Mosq<'a> {
    hub: &'a TestHub,
}

impl Mosq<'_> {
    fn base(&self, tool: &str, device: Option<&TestDevice>, client_id: Option<&str>, version: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(["-h", "127.0.0.1", "-p", &self.hub.hub.mqtt_addr.port().to_string()])
            .arg("--cafile")
            .arg(&self.hub.hub.server_ca_path)
            .args(["-V", version, "-d"]);
        if let Some(d) = device {
            cmd.arg("--cert").arg(&d.cert_path).arg("--key").arg(&d.key_path);
        }
        let id = client_id.map(str::to_owned).or_else(|| device.map(|d| d.id.to_string()));
        if let Some(id) = id {
            cmd.args(["-i", &id]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }

    /// Runs mosquitto_pub; returns its combined output.
    async fn publish(
        &self,
        device: Option<&TestDevice>,
        client_id: Option<&str>,
        version: &str,
        topic: &str,
        payload: &str,
    ) -> String {
        let mut cmd = self.base("mosquitto_pub", device, client_id, version);
        cmd.args(["-q", "1", "-t", topic, "-m", payload]);
        run(cmd).await
    }

    /// Runs mosquitto_sub for one subscription attempt, waiting at most 3 s for a message.
    async fn subscribe_once(&self, device: &TestDevice, version: &str, filter: &str) -> String {
        let mut cmd = self.base("mosquitto_sub", Some(device), None, version);
        cmd.args(["-q", "1", "-t", filter, "-C", "1", "-W", "3"]);
        run(cmd).await
    }
}

async fn run(mut cmd: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.output())
        .await
        .expect("mosquitto client finished")
        .expect("ran");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn uplink(seq: u64) -> String {
    format!(r#"{{"v":1,"seq":{seq},"ts":1764000000000,"metrics":{{"temperature_c":21.5}}}}"#)
}

async fn stored(hub: &TestHub, device: &str) -> usize {
    let (_, page) = hub.get(&format!("/api/v1/devices/{device}/telemetry?limit=1000")).await.expect("telemetry");
    page["items"].as_array().map(Vec::len).unwrap_or(0)
}

/// Waits (up to 5 s: events are written in batches) until at least `min` events of `kind` are stored.
async fn has_events(hub: &TestHub, kind: &str, min: u64) -> bool {
    hub.has_events(kind, min).await
}

#[tokio::test]
async fn mosquitto_clients_with_a_device_certificate_use_their_own_topics() {
    if !require_tool("mosquitto_pub", "mosquitto interop") {
        return;
    }
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let m = Mosq { hub: &hub };
    let topic = format!("devices/{}/telemetry", dev.id);

    let out = m.publish(Some(&dev), None, "mqttv5", &topic, &uplink(1)).await;
    assert!(out.contains("received PUBACK (Mid: 1, RC:0)"), "{out}");
    let out = m.publish(Some(&dev), None, "mqttv311", &topic, &uplink(2)).await;
    assert!(out.contains("received PUBACK"), "{out}");
    // The same sequence number again: acknowledged, stored once.
    let out = m.publish(Some(&dev), None, "mqttv311", &topic, &uplink(2)).await;
    assert!(out.contains("received PUBACK"), "{out}");
    assert_eq!(stored(&hub, dev.id.as_str()).await, 2);

    // A command reaches mosquitto_sub on the device's command topic.
    let mut sub = m.base("mosquitto_sub", Some(&dev), None, "mqttv5");
    sub.args(["-q", "1", "-t", &format!("devices/{}/commands", dev.id), "-C", "1", "-W", "10"]);
    let sub = sub.spawn().expect("mosquitto_sub");
    let connected =
        eventually(Duration::from_secs(5), || async { hub.hub.state.routing.is_connected(&dev.id).then_some(()) })
            .await;
    assert!(connected.is_some(), "mosquitto_sub did not connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, cmd) =
        hub.post(&format!("/api/v1/devices/{}/commands", dev.id), json!({ "name": "ping" })).await.expect("command");
    assert_eq!(status, 202, "{cmd}");
    let out = sub.wait_with_output().await.expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("\"id\":\"{}\"", cmd["id"].as_str().expect("id"))), "{text}");
    assert!(text.contains("\"name\":\"ping\""), "{text}");
}

#[tokio::test]
async fn connections_without_a_valid_certificate_are_refused() {
    if !require_tool("mosquitto_pub", "mosquitto interop") {
        return;
    }
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let good = hub.enrolled_device(dir.path()).await.expect("device");
    let m = Mosq { hub: &hub };
    let topic = format!("devices/{}/telemetry", good.id);

    // No certificate at all.
    let out = m.publish(None, Some(good.id.as_str()), "mqttv5", &topic, &uplink(1)).await;
    assert!(!out.contains("received CONNACK"), "{out}");
    // A certificate for the same device id from another CA.
    let foreign = foreign_device(&dir.path().join("foreign"), good.id.as_str()).expect("foreign");
    let out = m.publish(Some(&foreign), None, "mqttv5", &topic, &uplink(1)).await;
    assert!(!out.contains("received CONNACK"), "{out}");
    // An expired certificate from the right CA.
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let expired =
        hub.issue_direct(&dir.path().join("expired"), &good.id, start, time::Duration::days(1)).expect("expired");
    let out = m.publish(Some(&expired), None, "mqttv5", &topic, &uplink(1)).await;
    assert!(!out.contains("received CONNACK"), "{out}");
    // Revoked.
    hub.post(&format!("/api/v1/devices/{}/revoke", good.id), json!({})).await.expect("revoke");
    let out = m.publish(Some(&good), None, "mqttv5", &topic, &uplink(1)).await;
    assert!(!out.contains("received CONNACK"), "{out}");

    assert_eq!(stored(&hub, good.id.as_str()).await, 0, "nothing may be stored");
    assert!(has_events(&hub, "tls_refused", 4).await);
}

#[tokio::test]
async fn a_device_cannot_touch_another_devices_topics_or_session() {
    if !require_tool("mosquitto_pub", "mosquitto interop") {
        return;
    }
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let a = hub.enrolled_device(&dir.path().join("a")).await.expect("a");
    let b = hub.enrolled_device(&dir.path().join("b")).await.expect("b");
    let m = Mosq { hub: &hub };
    let b_topic = format!("devices/{}/telemetry", b.id);

    // Publish to B's topic: MQTT 5 answers "not authorized" (0x87 = 135); 3.1.1 closes the connection.
    let out = m.publish(Some(&a), None, "mqttv5", &b_topic, &uplink(1)).await;
    assert!(out.contains("received PUBACK (Mid: 1, RC:135)"), "{out}");
    let out = m.publish(Some(&a), None, "mqttv311", &b_topic, &uplink(1)).await;
    assert!(out.contains("received CONNACK (0)") && !out.contains("received PUBACK"), "{out}");
    // Subscribe to B's commands: refused per filter (3.1.1: 128, MQTT 5: 135).
    let out = m.subscribe_once(&a, "mqttv311", &format!("devices/{}/commands", b.id)).await;
    assert!(out.contains("Subscribed (mid: 1): 128"), "{out}");
    let out = m.subscribe_once(&a, "mqttv5", "devices/+/commands").await;
    assert!(out.contains("Subscribed (mid: 1): 135"), "{out}");
    assert_eq!(stored(&hub, b.id.as_str()).await, 0);

    // B is connected; A presents B's client id: refused, and B's session is untouched.
    let mut b_sub = m.base("mosquitto_sub", Some(&b), None, "mqttv5");
    b_sub.args(["-q", "1", "-t", &format!("devices/{}/commands", b.id), "-W", "20"]);
    let mut b_sub = b_sub.spawn().expect("mosquitto_sub");
    let up =
        eventually(Duration::from_secs(5), || async { hub.hub.state.routing.is_connected(&b.id).then_some(()) }).await;
    assert!(up.is_some());
    let out = m.publish(Some(&a), Some(b.id.as_str()), "mqttv311", &b_topic, &uplink(1)).await;
    assert!(out.contains("identifier rejected"), "{out}");
    let out = m.publish(Some(&a), Some(b.id.as_str()), "mqttv5", &b_topic, &uplink(1)).await;
    assert!(!out.contains("received PUBACK"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hub.hub.state.routing.is_connected(&b.id), "B's session must survive A's attempt");
    assert!(b_sub.try_wait().expect("status").is_none(), "B's client must still be running");
    let _ = b_sub.kill().await;

    assert!(has_events(&hub, "acl_publish", 2).await);
    assert!(has_events(&hub, "acl_subscribe", 2).await);
    assert!(has_events(&hub, "client_id_mismatch", 2).await);
}

#[tokio::test]
async fn revocation_disconnects_a_live_device_within_seconds() {
    if !require_tool("mosquitto_sub", "mosquitto interop") {
        return;
    }
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let m = Mosq { hub: &hub };
    let mut sub = m.base("mosquitto_sub", Some(&dev), None, "mqttv5");
    // Without reconnect attempts of its own, mosquitto_sub exits when the hub closes the connection.
    sub.args(["-q", "1", "-t", &format!("devices/{}/commands", dev.id), "-W", "30"]);
    let mut sub = sub.spawn().expect("mosquitto_sub");
    let up = eventually(Duration::from_secs(5), || async { hub.hub.state.routing.is_connected(&dev.id).then_some(()) })
        .await;
    assert!(up.is_some());

    let started = std::time::Instant::now();
    let (status, _) = hub.post(&format!("/api/v1/devices/{}/revoke", dev.id), json!({})).await.expect("revoke");
    assert_eq!(status, 200);
    let gone =
        eventually(Duration::from_secs(5), || async { (!hub.hub.state.routing.is_connected(&dev.id)).then_some(()) })
            .await;
    assert!(gone.is_some(), "the revoked device is still connected");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = sub.kill().await;

    let out = m.publish(Some(&dev), None, "mqttv5", &format!("devices/{}/telemetry", dev.id), &uplink(1)).await;
    assert!(!out.contains("received CONNACK"), "reconnect after revocation must be refused: {out}");
}
