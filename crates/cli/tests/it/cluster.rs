//! Three hub processes on loopback sharing one PostgreSQL database and one NATS server, behind Debian's
//! HAProxy in TCP mode (TLS passes through; each hub checks client certificates itself; HAProxy connects from
//! 127.0.0.2 and names each client in a PROXY v2 header, which the hubs trust from that address only). What one node does,
//! every node sees: commands cross nodes, a revocation closes a session on another node and every node
//! refuses the device, a persistent session resumes on another node, and a node killed during QoS 1 ingest
//! loses nothing it acknowledged and stores nothing twice. A release published through one node is served by all,
//! and a rollout made through another opens each wave once though every node runs the engine.
//!
//! Needs `HEARTH_TEST_POSTGRES_URL`, `HEARTH_TEST_NATS_URL` and `haproxy`; says SKIPPED without them (and fails
//! under `HEARTH_REQUIRE_ALL=1`, as in CI).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hearth_test_support::mqtt::{V5, telemetry};
use hearth_test_support::services::{nats_url, pg_database};
use hearth_test_support::{TestDevice, client_for, enrol_at, eventually, require_tool};
use rmqtt_codec::v5;

use crate::support::{HubProcess, free_ports};

/// HAProxy in TCP mode in front of the nodes.
struct Balancer {
    child: Child,
    mqtt: u16,
    https: u16,
    _config: PathBuf,
}

impl Balancer {
    fn start(dir: &Path, nodes: &[(u16, u16)]) -> Balancer {
        let (mqtt, https) = free_ports();
        let servers = |pick: fn(&(u16, u16)) -> u16| {
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    format!("    server node{i} 127.0.0.1:{} send-proxy-v2 check check-send-proxy inter 500 fall 2 rise 1\n", pick(n))
                })
                .collect::<String>()
        };
        let config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 20m\n    timeout server 20m\n\
             frontend mqtts\n    bind 127.0.0.1:{mqtt}\n    default_backend hubs_mqtts\n\
             frontend https\n    bind 127.0.0.1:{https}\n    default_backend hubs_https\n\
             backend hubs_mqtts\n    balance leastconn\n    source 127.0.0.2\n{}\
             backend hubs_https\n    balance roundrobin\n    source 127.0.0.2\n{}",
            servers(|n| n.1),
            servers(|n| n.0),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("haproxy config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Balancer { child, mqtt, https, _config: path }
    }

    fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt))
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Node {
    process: HubProcess,
    https: u16,
    mqtt: u16,
    dir: PathBuf,
}

impl Node {
    fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt))
    }
}

struct Cluster {
    nodes: Vec<Node>,
    balancer: Balancer,
    extra: String,
    key: String,
    token: String,
    ca: PathBuf,
    client: reqwest::Client,
}

impl Cluster {
    fn start_node(dir: &Path, https: u16, mqtt: u16, extra: &str, key: &str) -> HubProcess {
        HubProcess::start_env(dir, https, mqtt, extra, &[("HEARTH_MASTER_KEY", key)])
    }

    fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.process.kill9();
        n.process = Self::start_node(&n.dir, n.https, n.mqtt, &self.extra, &self.key);
    }

    fn url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.nodes[i].https)
    }

    async fn api(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url(i))).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.timeout(Duration::from_secs(30)).send().await.expect("api request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Sends a command to `dev` through node `via`; returns the recorded command.
    async fn send_command(&self, via: usize, dev: &TestDevice, name: &str) -> serde_json::Value {
        let path = format!("/api/v1/devices/{}/commands", dev.id);
        let (status, cmd) =
            self.api(via, reqwest::Method::POST, &path, Some(serde_json::json!({ "name": name }))).await;
        assert_eq!(status, 202, "{cmd}");
        cmd
    }

    async fn device(&self, dir: &Path, via: usize) -> TestDevice {
        let (status, made) = self
            .api(via, reqwest::Method::POST, "/api/v1/devices", Some(serde_json::json!({"model": "c", "count": 1})))
            .await;
        assert_eq!(status, 201, "manufacture: {made}");
        let file = &made["devices"][0];
        let balancer = format!("https://127.0.0.1:{}", self.balancer.https);
        enrol_at(
            &self.client,
            &balancer,
            file["device_id"].as_str().expect("id"),
            file["bootstrap_token"].as_str().expect("token"),
            dir,
        )
        .await
        .expect("enrol through the balancer")
    }
}

async fn cluster(test: &str, dir: &Path) -> Option<(Cluster, hearth_test_support::services::PgDatabase)> {
    if !require_tool("haproxy", test) {
        return None;
    }
    let nats = nats_url(test)?;
    let db = pg_database(test).await?;
    let mut raw = [0u8; 32];
    raw.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(37) ^ (std::process::id() as u8));
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    let ports: Vec<(u16, u16)> = (0..3).map(|_| free_ports()).collect();
    // The balancer's ports go into bootstrap files; pick them first.
    let balancer = Balancer::start(dir, &ports);
    let extra = format!(
        "https_port = {}\nmqtt_port = {}\n[listen]\nproxy_protocol_from = [\"127.0.0.2\"]\n[store]\nurl = \"{}\"\n[bus]\nurl = \"{}\"\n\
         [mqtt]\npublish_rate_per_sec = 100000\npublish_burst = 100000\n",
        balancer.https, balancer.mqtt, db.url, nats
    );
    let mut nodes = Vec::new();
    for (i, (https, mqtt)) in ports.iter().copied().enumerate() {
        let node_dir = dir.join(format!("node{i}"));
        let process = Cluster::start_node(&node_dir, https, mqtt, &extra, &key);
        nodes.push(Node { process, https, mqtt, dir: node_dir });
    }
    // Every start before an owner exists replaces the setup token: the last node's is the valid one.
    let last = &nodes[2].process;
    let token = crate::support::setup(last);
    let ca = nodes[0].dir.join("tls/server-ca.pem");
    for n in &nodes[1..] {
        assert_eq!(
            std::fs::read(n.dir.join("tls/server-ca.pem")).expect("ca"),
            std::fs::read(&ca).expect("ca"),
            "every node serves the same server CA (from the shared database)"
        );
    }
    let client = client_for(&ca, None).expect("client");
    Some((Cluster { nodes, balancer, extra, key, token, ca, client }, db))
}

fn commands_filter(dev: &TestDevice) -> String {
    format!("devices/{}/commands", dev.id)
}

/// Waits for the next PUBLISH (answering PUBACK), skipping other packets.
async fn next_publish(c: &mut V5, within: Duration) -> Option<rmqtt_codec::types::Publish> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match c.recv_within(left).await? {
            v5::Packet::Publish(p) => {
                if let Some(id) = p.packet_id {
                    c.puback(id).await.ok()?;
                }
                return Some(*p);
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn three_nodes_behind_haproxy_share_commands_revocation_sessions_and_ingest() {
    let test = "cluster::three_nodes_behind_haproxy";
    let dir = tempfile::tempdir().expect("dir");
    let Some((mut c, _db)) = cluster(test, dir.path()).await else { return };
    let devs = dir.path().join("devices");

    // 1. A device on node A receives a command sent through node B; its answer is visible through node C.
    let d1 = c.device(&devs, 1).await;
    let (mut m1, _) = V5::connect_to(&c.ca, c.nodes[0].mqtt_addr(), &d1, |_| {}).await.expect("d1 on node A");
    m1.subscribe(&[commands_filter(&d1)], 1).await.expect("subscribe");
    assert!(matches!(m1.recv().await, Some(v5::Packet::SubscribeAck(_))));
    let cmd = c.send_command(1, &d1, "ping").await;
    let cid = cmd["id"].as_str().expect("command id").to_owned();
    let sent = Instant::now();
    let p = next_publish(&mut m1, Duration::from_secs(5)).await.expect("the command crossed from node B to node A");
    let cross_node_ms = sent.elapsed().as_millis();
    let body: serde_json::Value = serde_json::from_slice(&p.payload).expect("command json");
    assert_eq!(body["id"], cid);
    let ack = serde_json::json!({"v": 1, "id": cid, "status": "ok", "detail": "pong"}).to_string();
    m1.publish(&format!("devices/{}/commands/ack", d1.id), ack, 7).await.expect("answer");
    let path = format!("/api/v1/devices/{}/commands/{cid}", d1.id);
    let answered = eventually(Duration::from_secs(5), || {
        let c = &c;
        let path = path.clone();
        async move {
            let (_, v) = c.api(2, reqwest::Method::GET, &path, None).await;
            (v["status"] == "ok").then_some(v)
        }
    })
    .await;
    assert!(answered.is_some(), "the answer is visible through node C");
    let (_, shown) = c.api(2, reqwest::Method::GET, &format!("/api/v1/devices/{}", d1.id), None).await;
    assert_eq!(shown["connected"], true, "node C sees the device connected to node A: {shown}");

    // 2. Revoking through node C closes the session on node A within 5 s; every node refuses the device.
    let (status, _) = c.api(2, reqwest::Method::POST, &format!("/api/v1/devices/{}/revoke", d1.id), None).await;
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    let mut closed = false;
    while revoked_at.elapsed() < Duration::from_secs(5) {
        match m1.recv_within(Duration::from_secs(5) - revoked_at.elapsed().min(Duration::from_secs(5))).await {
            Some(v5::Packet::Disconnect(_)) | None => {
                closed = true;
                break;
            }
            Some(_) => continue,
        }
    }
    let revoke_close_ms = revoked_at.elapsed().as_millis();
    assert!(closed, "the session on node A was not closed within 5 s of the revocation on node C");
    for (i, n) in c.nodes.iter().enumerate() {
        let refused = V5::connect_to(&c.ca, n.mqtt_addr(), &d1, |_| {}).await;
        assert!(refused.is_err(), "node {i} accepted a revoked device");
    }

    // 3. A persistent session resumes on another node with its undelivered command.
    let d2 = c.device(&devs, 0).await;
    let persistent = |cn: &mut v5::Connect| {
        cn.clean_start = false;
        cn.session_expiry_interval_secs = 3600;
    };
    let (mut m2, _) = V5::connect_to(&c.ca, c.nodes[0].mqtt_addr(), &d2, persistent).await.expect("d2 on node A");
    m2.subscribe(&[commands_filter(&d2)], 1).await.expect("subscribe");
    assert!(matches!(m2.recv().await, Some(v5::Packet::SubscribeAck(_))));
    drop(m2);
    // Node A dies; the device is offline when the command is sent.
    c.nodes[0].process.kill9();
    let cmd = c.send_command(1, &d2, "reboot").await;
    // Until the balancer's health check marks node A down, a connection may still land on it: retry, as a
    // device would.
    let (mut m2, present) = connect_retrying(&c.ca, c.balancer.mqtt_addr(), &d2, persistent).await;
    assert!(present, "the session is present on the node the balancer chose");
    let p = next_publish(&mut m2, Duration::from_secs(5))
        .await
        .expect("the undelivered command arrives without a new SUBSCRIBE");
    let body: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
    assert_eq!(body["id"], cmd["id"]);
    drop(m2);
    c.restart(0);

    // 4. Takeover across nodes: the same device connecting to node C closes its connection on node B.
    let d4 = c.device(&devs, 2).await;
    let (mut on_b, _) = connect_retrying(&c.ca, c.nodes[1].mqtt_addr(), &d4, |_| {}).await;
    let (mut on_c, _) = connect_retrying(&c.ca, c.nodes[2].mqtt_addr(), &d4, |_| {}).await;
    let closed_at = Instant::now();
    let mut reason = None;
    while closed_at.elapsed() < Duration::from_secs(5) {
        match on_b.recv_within(Duration::from_secs(5)).await {
            Some(v5::Packet::Disconnect(d)) => {
                reason = Some(d.reason_code);
                break;
            }
            None => break,
            Some(_) => continue,
        }
    }
    assert_eq!(reason, Some(v5::DisconnectReasonCode::SessionTakenOver), "node B closes the older session");
    on_c.publish(&format!("devices/{}/telemetry", d4.id), telemetry(1, 1.0), 1).await.expect("publish on C");
    assert!(
        matches!(on_c.recv().await, Some(v5::Packet::PublishAck(a)) if a.reason_code == v5::PublishAckReason::Success),
        "the newer session on node C stays and works"
    );
    drop((on_b, on_c));

    // 5. kill -9 of a node during QoS 1 ingest: every acknowledged message is stored exactly once.
    let mut trials = Vec::new();
    for trial in 0..3usize {
        let victim = trial % 3;
        let dev = c.device(&devs, (victim + 1) % 3).await;
        let (acked, published) = ingest_through_a_kill(&mut c, &dev, victim).await;
        let stored = stored_seq_counts(&c, (victim + 1) % 3, &dev).await;
        let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "trial {trial}: stored more than once: {twice:?}");
        let missing: Vec<_> = acked.iter().filter(|s| !stored.contains_key(s)).collect();
        assert!(missing.is_empty(), "trial {trial}: acknowledged but not stored: {missing:?}");
        assert_eq!(stored.len() as u64, published, "trial {trial}: after resending, everything is stored");
        trials.push((acked.len(), published));
        c.restart(victim);
    }
    eprintln!(
        "cluster: command across nodes {cross_node_ms} ms; revocation closed the session in {revoke_close_ms} ms; \
         kill -9 trials (acked before the kill, published): {trials:?}"
    );
    // The nodes stop before their database is dropped.
    drop(c);
}

/// Publishes QoS 1 telemetry to node `victim` directly, kills it with -9 after 300 acknowledgements, then
/// reconnects through the balancer and resends everything unacknowledged (and the last 50 acknowledged ones,
/// as a device whose PUBACKs were lost would). Returns the seqs acknowledged before the kill and how many
/// distinct seqs were published.
/// A device's HTTPS client with its certificate, straight to node `i`.
fn device_client(c: &Cluster, dev: &TestDevice) -> reqwest::Client {
    let identity = format!("{}{}", dev.key_pem, dev.chain_pem);
    client_for(&c.ca, Some(identity.as_bytes())).expect("device client")
}

/// A device checks in with node `via`; the goal's (rollout, target) if any.
async fn check_in(
    c: &Cluster,
    via: usize,
    dev: &TestDevice,
    image: Option<&str>,
    steps: serde_json::Value,
) -> Option<(String, String)> {
    let mut body = serde_json::json!({"hardware": "rev-a", "security_floor": 1, "steps": steps});
    if let Some(sha) = image {
        body["image"] = serde_json::json!({ "sha256": sha });
    }
    let resp = device_client(c, dev)
        .post(format!("{}/api/v1/device/update", c.url(via)))
        .json(&body)
        .send()
        .await
        .expect("check-in");
    assert_eq!(resp.status().as_u16(), 200);
    let answer: serde_json::Value = resp.json().await.expect("json");
    let goal = &answer["goal"];
    goal["target"].as_str().map(|t| (goal["rollout"].as_str().expect("rollout").to_owned(), t.to_owned()))
}

#[tokio::test]
async fn a_release_published_through_one_node_rolls_out_from_all_three() {
    use hearth_test_support::updates::{Maker, release_info};
    let test = "cluster::a_release_published_through_one_node";
    let dir = tempfile::tempdir().expect("dir");
    let Some((c, _db)) = cluster(test, dir.path()).await else { return };
    let devs = dir.path().join("devices");
    let (d1, d2) = (c.device(&devs, 0).await, c.device(&devs, 1).await);

    // The maker publishes through node A only.
    let maker = Maker::new(&c.client, &c.url(0), &c.token, &dir.path().join("maker")).await.expect("maker");
    let image = maker.release("c-1.1.0.img", release_info("c", "1.1.0", 2), 300_000, 7).await.expect("release");
    let sha: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &image)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (status, answer) = maker.publish(&c.client, &c.url(0), &c.token, &[1], true).await.expect("publish");
    assert_eq!(status, 200, "{answer}");
    // Every node serves the same signed metadata (one set of online keys, in the shared store) and the image,
    // which nodes B and C never received: they fill their file cache from the database.
    let mut timestamps = Vec::new();
    for i in 0..3 {
        let client = device_client(&c, &d1);
        let ts = client.get(format!("{}/tuf/timestamp.json", c.url(i))).send().await.expect("timestamp");
        assert_eq!(ts.status().as_u16(), 200);
        timestamps.push(ts.bytes().await.expect("body"));
        let file = client
            .get(format!("{}/tuf/targets/{sha}.c-1.1.0.img", c.url(i)))
            .send()
            .await
            .expect("target")
            .bytes()
            .await
            .expect("body");
        assert!(file == image, "node {i} serves the signed image whole");
    }
    assert!(timestamps.windows(2).all(|w| w[0] == w[1]), "the same timestamp metadata from every node");

    // d1 is connected to node C. The rollout is made through node B; three engines run, the canary wave opens
    // once, and node C delivers exactly one update_check.
    let (mut m1, _) = V5::connect_to(&c.ca, c.nodes[2].mqtt_addr(), &d1, |_| {}).await.expect("d1 on node C");
    m1.subscribe(&[commands_filter(&d1)], 1).await.expect("subscribe");
    assert!(matches!(m1.recv().await, Some(v5::Packet::SubscribeAck(_))));
    let plan = serde_json::json!({"release": "c-1.1.0.img", "canary": 1, "percents": [100]});
    let (status, rollout) = c.api(1, reqwest::Method::POST, "/api/v1/rollouts", Some(plan)).await;
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().expect("id").to_owned();
    let g1 = check_in(&c, 0, &d1, None, serde_json::json!([])).await;
    let g2 = check_in(&c, 2, &d2, None, serde_json::json!([])).await;
    assert!(g1.is_some() != g2.is_some(), "exactly one canary: {g1:?} {g2:?}");
    let (canary, other) = if g1.is_some() { (&d1, &d2) } else { (&d2, &d1) };
    if canary.id == d1.id {
        let mut told = 0;
        while let Some(p) = next_publish(&mut m1, Duration::from_secs(6)).await {
            let body: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
            told += usize::from(body["name"] == "update_check");
        }
        assert_eq!(told, 1, "one wave opening, one notice, whichever node's engine opened it");
    }
    // The canary succeeds (reported to node C); the next wave opens; the other device succeeds through node A.
    let done = serde_json::json!([{ "rollout": id, "state": "succeeded" }]);
    check_in(&c, 2, canary, Some(&sha), done.clone()).await;
    let goal =
        eventually(Duration::from_secs(20), || async { check_in(&c, 1, other, None, serde_json::json!([])).await })
            .await
            .expect("the second wave opens");
    assert_eq!(goal, (id.clone(), "c-1.1.0.img".to_owned()));
    check_in(&c, 0, other, Some(&sha), done).await;
    let completed = eventually(Duration::from_secs(20), || async {
        let (_, v) = c.api(2, reqwest::Method::GET, &format!("/api/v1/rollouts/{id}"), None).await;
        (v["state"] == "completed").then_some(v)
    })
    .await
    .expect("the rollout completes");
    assert_eq!(completed["counts"]["succeeded"], 2, "{completed}");
    for i in 0..3 {
        let (_, v) = c.api(i, reqwest::Method::GET, &format!("/api/v1/devices/{}/update", d1.id), None).await;
        assert_eq!(v["installed_sha256"].as_str(), Some(sha.as_str()), "node {i}: {v}");
    }
}

async fn ingest_through_a_kill(c: &mut Cluster, dev: &TestDevice, victim: usize) -> (BTreeSet<u64>, u64) {
    const TOTAL: u64 = 2_000;
    let topic = format!("devices/{}/telemetry", dev.id);
    // The device was enrolled through another node a moment ago: the first attempt may meet a node that has
    // not yet read it (its next attempt does; see `DeviceCerts::report_misses_to`).
    let (mut m, _) = connect_retrying(&c.ca, c.nodes[victim].mqtt_addr(), dev, |_| {}).await;
    let mut acked_before_kill = BTreeSet::new();
    let mut inflight: BTreeMap<u16, u64> = BTreeMap::new();
    let mut next = 1u64;
    let mut killed = false;
    'outer: while next <= TOTAL || !inflight.is_empty() {
        while next <= TOTAL && inflight.len() < 32 {
            let id = ((next - 1) % 60_000 + 1) as u16;
            if m.publish(&topic, telemetry(next, next as f64), id).await.is_err() {
                break 'outer;
            }
            inflight.insert(id, next);
            next += 1;
        }
        match m.recv_within(Duration::from_secs(5)).await {
            Some(v5::Packet::PublishAck(a)) => {
                // A refusal (storage briefly unavailable, say) leaves the message unacknowledged: resent later.
                if let Some(seq) = inflight.remove(&a.packet_id.get())
                    && a.reason_code == v5::PublishAckReason::Success
                {
                    acked_before_kill.insert(seq);
                }
            }
            Some(_) => {}
            None => break,
        }
        if !killed && acked_before_kill.len() >= 300 {
            c.nodes[victim].process.kill9();
            killed = true;
        }
    }
    assert!(killed, "the node was killed mid-stream");
    drop(m);
    // Resend through the balancer: everything not acknowledged, plus the last 50 acknowledged.
    let mut resend: Vec<u64> = (1..next).filter(|s| !acked_before_kill.contains(s)).collect();
    resend.extend(acked_before_kill.iter().rev().take(50).copied());
    resend.extend(next..=TOTAL);
    resend.sort_unstable();
    resend.dedup();
    let (mut m, _) = connect_retrying(&c.ca, c.balancer.mqtt_addr(), dev, |_| {}).await;
    let mut pending: BTreeMap<u16, u64> = BTreeMap::new();
    let mut it = resend.into_iter();
    let mut id: u16 = 0;
    loop {
        while pending.len() < 32 {
            let Some(seq) = it.next() else { break };
            id = id % 60_000 + 1;
            m.publish(&topic, telemetry(seq, seq as f64), id).await.expect("resend");
            pending.insert(id, seq);
        }
        if pending.is_empty() {
            break;
        }
        match m.recv_within(Duration::from_secs(10)).await {
            Some(v5::Packet::PublishAck(a)) => {
                assert_eq!(a.reason_code, v5::PublishAckReason::Success, "resend refused: {a:?}");
                pending.remove(&a.packet_id.get());
            }
            Some(_) => {}
            None => panic!("the surviving node stopped answering"),
        }
    }
    (acked_before_kill, TOTAL)
}

/// Connects through the balancer, retrying for up to 15 s (a node just killed may still be chosen).
async fn connect_retrying(
    ca: &Path,
    addr: SocketAddr,
    dev: &TestDevice,
    adjust: impl Fn(&mut v5::Connect) + Copy,
) -> (V5, bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match V5::connect_to(ca, addr, dev, adjust).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect through the balancer failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no node accepted {} through the balancer: {e}", dev.id),
        }
    }
}

/// How many stored rows each seq of a device has, read through node `via`.
async fn stored_seq_counts(c: &Cluster, via: usize, dev: &TestDevice) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    let mut after = 0i64;
    loop {
        let (status, page) = c
            .api(
                via,
                reqwest::Method::GET,
                &format!("/api/v1/devices/{}/telemetry?limit=1000&after_seq={after}", dev.id),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().expect("items") {
            *counts.entry(item["seq"].as_u64().expect("seq")).or_insert(0) += 1;
        }
        match page["next_after_seq"].as_i64() {
            Some(n) => after = n,
            None => return counts,
        }
    }
}

/// Devices, telemetry and an operator token as the API shows them.
async fn snapshot(hub: &HubProcess, token: &str) -> Vec<(String, String, Vec<(i64, i64)>)> {
    let client = client_for(&hub.ca(), None).expect("client");
    let list: serde_json::Value = client
        .get(format!("{}/api/v1/devices?limit=100", hub.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("devices")
        .json()
        .await
        .expect("json");
    let mut out = Vec::new();
    for d in list["devices"].as_array().expect("devices") {
        let id = d["id"].as_str().expect("id").to_owned();
        let seqs = crate::support::stored_seqs(hub, token, &id).await;
        out.push((id, d["status"].as_str().expect("status").to_owned(), seqs));
    }
    out
}

#[tokio::test]
async fn a_demo_hub_migrates_from_sqlite_to_postgres_and_serves_the_same_data() {
    let test = "cluster::a_demo_hub_migrates_from_sqlite_to_postgres";
    let Some(db) = pg_database(test).await else { return };
    let dir = tempfile::tempdir().expect("dir");
    let demo_dir = dir.path().join("demo");
    let out = Command::new(hearth_test_support::workspace_bin("hearth"))
        .args(["demo", "--devices", "3", "--duration-secs", "6", "--interval-secs", "1"])
        .args(["--https-port", "0", "--mqtts-port", "0"])
        .arg("--data-dir")
        .arg(&demo_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.split_whitespace().find(|w| w.starts_with("hop_")).expect("operator token").to_owned();
    let data = demo_dir.join("hub");

    let (https, mqtt) = free_ports();
    let before = {
        let hub = HubProcess::start(&data, https, mqtt);
        snapshot(&hub, &token).await
    };
    assert_eq!(before.len(), 5, "three running devices and the demo's two spare devices");
    let telemetry: usize = before.iter().map(|(_, _, s)| s.len()).sum();
    assert!(telemetry >= 6, "the demo stored telemetry: {before:?}");

    let migrate = |to: &str| {
        Command::new(hearth_test_support::workspace_bin("hearth"))
            .args(["store", "migrate", "--to", to])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run migrate")
    };
    let first = migrate(&db.url);
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "migrate failed: {}", String::from_utf8_lossy(&first.stderr));
    assert!(printed.contains("verified") && printed.contains("uplinks"), "{printed}");
    let again = migrate(&db.url);
    assert!(!again.status.success(), "a second migration into a database that holds devices is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));

    let (https, mqtt) = free_ports();
    let extra = format!("[store]\nurl = \"{}\"\n[bus]\nsingle_node = true\n", db.url);
    let hub = HubProcess::start_with(&data, https, mqtt, &extra);
    let after = snapshot(&hub, &token).await;
    assert_eq!(after, before, "the same devices, statuses and telemetry (seq and receive time) after migrating");
    drop(hub);
}
