//! The foundation end to end with real processes: factory → enrol → mutual-TLS connect → publish → stored →
//! query, commands, revocation; and what listens where.

use std::process::{Command, Stdio};
use std::time::Duration;

use hearth_test_support::{client_for, eventually, workspace_bin};

use crate::support::{HubProcess, free_ports, hearth, listening_ports, setup};

#[tokio::test]
async fn factory_enrol_connect_publish_store_query_with_real_processes() {
    let dir = tempfile::tempdir().expect("dir");
    let (https, mqtts) = free_ports();
    let hub = HubProcess::start(&dir.path().join("hub"), https, mqtts);
    let token = setup(&hub);

    // Factory: one file per device, mode 0600, and a CSV manifest; the hub keeps no secret in clear.
    let out_dir = dir.path().join("factory");
    let (ok, out, err) = hearth(
        &hub,
        Some(&token),
        &["factory", "--model", "plug-2", "--count", "2", "--out", out_dir.to_str().expect("utf8")],
    );
    assert!(ok, "factory failed: {err}");
    assert!(out.contains("2 devices"), "{out}");
    let manifest = std::fs::read_to_string(out_dir.join("manifest.csv")).expect("manifest");
    let rows: Vec<&str> = manifest.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{manifest}");
    let device = rows[0].split(',').next().expect("id").to_owned();
    let claim_code = rows[0].split(',').nth(2).expect("claim code").to_owned();
    // A printable label per device: the claim QR code opens the hub's claim page with the code filled in.
    let label = std::fs::read_to_string(out_dir.join("labels").join(format!("{device}.svg"))).expect("label");
    assert!(label.contains(&format!("ID {device}")), "{label}");
    assert!(label.contains(&format!(">{}-{}<", &claim_code[..5], &claim_code[5..10])), "the code in groups: {label}");
    assert!(label.contains("<path d=\"M"), "the QR code: {label}");
    // Printed and scanned: Chromium draws the label, zbarimg (a real QR reader) reads it back.
    let label_path = out_dir.join("labels").join(format!("{device}.svg"));
    if let Some(scanned) = scan_label(&label_path, &dir.path().join("label.png")) {
        assert_eq!(scanned, format!("QR-Code:{}/claim?code={claim_code}", hub.url()));
    }
    if std::env::var_os("HEARTH_SCREENSHOTS").is_some() {
        std::fs::copy(out_dir.join("labels").join(format!("{device}.svg")), "../../docs/screenshots/label.svg")
            .expect("copy the sample label");
    }
    let bootstrap = out_dir.join(format!("{device}.json"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&bootstrap).expect("file").permissions().mode() & 0o777, 0o600);
    let boot: serde_json::Value = serde_json::from_slice(&std::fs::read(&bootstrap).expect("read")).expect("json");
    let secret = boot["bootstrap_token"].as_str().expect("token").to_owned();
    let db = std::fs::read(hub.data_dir.join("hearth.db")).expect("db");
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the bootstrap token must not be stored in clear"
    );

    // The agent: its own key, enrolment over HTTPS, MQTT over mutual TLS.
    let state = dir.path().join("agent");
    let mut agent = Command::new(workspace_bin("hearth-agent"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--bootstrap")
        .arg(&bootstrap)
        .args(["--interval-secs", "1"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn agent");

    let client = client_for(&hub.ca(), None).expect("client");
    let url = format!("{}/api/v1/devices/{device}/telemetry?limit=100", hub.url());
    let stored = eventually(Duration::from_secs(30), || {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            let page: serde_json::Value = client.get(url).bearer_auth(token).send().await.ok()?.json().await.ok()?;
            let items = page["items"].as_array()?.clone();
            (items.iter().filter(|i| i["kind"] == "telemetry").count() >= 3).then_some(items)
        }
    })
    .await
    .expect("the agent's telemetry was stored");
    assert!(stored.iter().any(|i| i["kind"] == "state"), "the agent reports its state");
    let seqs: Vec<i64> = stored.iter().map(|i| i["seq"].as_i64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(std::fs::metadata(state.join("device.key")).expect("key").permissions().mode() & 0o777, 0o600);

    // What listens: the hub only on its two TLS ports, the agent on nothing.
    let (hub_ports, hub_udp) = listening_ports(hub.pid());
    assert_eq!(hub_ports, {
        let mut p = vec![https, mqtts];
        p.sort_unstable();
        p
    });
    assert_eq!(hub_udp, 0);
    assert_eq!(listening_ports(agent.id()), (vec![], 0), "the agent must not listen");

    // A command round trip through the CLI.
    let (ok, out, err) = hearth(&hub, Some(&token), &["device", "command", &device, "ping"]);
    assert!(ok, "command failed: {out}{err}");
    assert!(out.contains("\"status\": \"ok\""), "{out}");

    // Revocation: the agent is cut off and cannot come back.
    let (ok, out, _) = hearth(&hub, Some(&token), &["device", "revoke", &device]);
    assert!(ok && out.contains("revoked"), "{out}");
    let (ok, out, _) = hearth(&hub, Some(&token), &["device", "show", &device]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["status"], "revoked");
    let offline = eventually(Duration::from_secs(5), || {
        let (client, token) = (client.clone(), token.clone());
        let url = format!("{}/api/v1/devices/{device}", hub.url());
        async move {
            let d: serde_json::Value = client.get(url).bearer_auth(token).send().await.ok()?.json().await.ok()?;
            (d["connected"] == false).then_some(())
        }
    })
    .await;
    assert!(offline.is_some(), "revoked device still connected");
    let _ = agent.kill();
    let _ = agent.wait();

    // A lost owner password or token: someone with the data directory (and so the master key) issues a new setup
    // token, which with the owner's email sets a new password and yields a new API token, revoking the earlier
    // ones. With another email it creates nothing: there is one owner.
    let (ok, out, err) = hearth(&hub, None, &["setup-token", "--data-dir", hub.data_dir.to_str().expect("utf8")]);
    assert!(ok, "setup-token failed: {err}");
    let setup_token = out.split_whitespace().find(|w| w.starts_with("hst_")).expect("setup token printed").to_owned();
    let (ok, _, err) = hearth(&hub, None, &["setup", "--setup-token", &setup_token, "--email", "intruder@example.org"]);
    assert!(!ok && err.contains("invalid_setup_token"), "{err}");
    let owner = hearth_test_support::OWNER_EMAIL;
    let (ok, out, err) = hearth(&hub, None, &["setup", "--setup-token", &setup_token, "--email", owner]);
    assert!(ok, "{err}");
    let second = out.split_whitespace().find(|w| w.starts_with("hop_")).expect("operator token").to_owned();
    assert_ne!(second, token);
    // Recovery takes the owner's access back from whoever held it: earlier API tokens are revoked.
    let (ok, _, err) = hearth(&hub, Some(&second), &["device", "list"]);
    assert!(ok, "{err}");
    let (ok, _, err) = hearth(&hub, Some(&token), &["device", "list"]);
    assert!(!ok && err.contains("invalid_token"), "{err}");
    // Without the data directory there is nothing to open.
    let (ok, _, err) =
        hearth(&hub, None, &["setup-token", "--data-dir", dir.path().join("nothing").to_str().expect("utf8")]);
    assert!(!ok && err.contains("master.key not found"), "{err}");
}

#[tokio::test]
async fn the_demo_listens_only_on_its_two_tls_ports_and_rolls_out_an_update() {
    let dir = tempfile::tempdir().expect("dir");
    let mut demo = Command::new(workspace_bin("hearth"))
        .args([
            "demo",
            "--devices",
            "2",
            "--duration-secs",
            "20",
            "--interval-secs",
            "1",
            "--https-port",
            "0",
            "--mqtts-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("demo"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines = printed.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut ports = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().map(|mut l| l.push(line.clone())).ok();
            for key in ["API:", "MQTTS:"] {
                if let Some(rest) = line.trim().strip_prefix(key) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    if let Some(p) = addr.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse::<u16>().ok()) {
                        ports.push(p);
                    }
                }
            }
            if ports.len() == 2 {
                let _ = tx.send(ports.clone());
                ports.clear();
            }
        }
    });
    let mut ports = rx.recv_timeout(Duration::from_secs(60)).expect("demo printed its addresses");
    ports.sort_unstable();
    // Let the devices enrol and connect.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (listening, udp) = listening_ports(demo.id());
    assert_eq!(listening, ports, "hub plus in-process agents must listen on exactly the two TLS ports");
    assert_eq!(udp, 0);
    // Both ports speak TLS only: a plaintext MQTT CONNECT gets no CONNACK.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.expect("connect");
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tcp.write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0]).await;
    let mut buf = [0u8; 4];
    let got = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
    assert!(!matches!(got, Ok(Ok(4)) if buf[0] == 0x20), "plaintext MQTT must not be answered");
    let status = demo.wait().expect("demo ends");
    assert!(status.success());
    // The demo also rolls a signed update out to its devices, and they all take it.
    let printed = printed.lock().expect("lines").join("\n");
    assert!(printed.contains("completed: every device runs demo-thermostat-1.1.0.img"), "{printed}");
}

#[tokio::test]
async fn bad_configuration_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[mqtt]\nreceive_maximum = 0\n").expect("write");
    let out = Command::new(workspace_bin("hearth"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.receive_maximum"), "{err}");
    assert!(!dir.path().join("data").exists(), "a refused configuration must change nothing");
}

#[tokio::test]
async fn the_agent_renews_its_certificate_over_mutual_tls() {
    use std::sync::Arc;
    let hub = hearth_test_support::TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let boot = hub.manufacture("renewing", 1).await.expect("manufacture").remove(0);
    let state = dir.path().join("agent");
    let key = Arc::new(hearth_agent::keystore::FileKeyStore::open_or_create(&state).expect("key"));
    let first = hearth_agent::enrol::enrol(&state, &boot, key).await.expect("enrol");
    let before = std::fs::read_to_string(state.join("device.crt")).expect("cert");
    let (_, d1) = hub.get(&format!("/api/v1/devices/{}", boot.device_id)).await.expect("device");

    let second = hearth_agent::enrol::renew(&state, &first).await.expect("renew");
    let after = std::fs::read_to_string(state.join("device.crt")).expect("cert");
    assert_ne!(before, after, "a new certificate is stored");
    assert_eq!(second.device_id(), first.device_id());
    let (_, d2) = hub.get(&format!("/api/v1/devices/{}", boot.device_id)).await.expect("device");
    assert_ne!(d1["cert_serial"], d2["cert_serial"], "the hub records the new serial");

    // After revocation the renewal is refused.
    hub.post(&format!("/api/v1/devices/{}/revoke", boot.device_id), serde_json::json!({})).await.expect("revoke");
    assert!(hearth_agent::enrol::renew(&state, &second).await.is_err());
}

/// Issue 14, deviation 11: the demo printed a `mosquitto_sub` and a `mosquitto_pub` line for the same device, so
/// running the second kicked the first off (0x8E), and bare `hearth …` lines that are not on PATH after a cargo
/// build. Every line it prints now works when pasted in order into a shell.
#[tokio::test]
async fn the_demo_lines_work_when_pasted_in_order() {
    if !hearth_test_support::require_tool("mosquitto_sub", "e2e::the_demo_lines_work_when_pasted_in_order") {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let mut demo = Command::new(workspace_bin("hearth"))
        .args(["demo", "--devices", "1", "--duration-secs", "60", "--https-port", "0", "--mqtts-port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("demo"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.starts_with("Stopping after") || line.starts_with("Ctrl-C");
            lines.push(line);
            if done {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let printed = rx.recv_timeout(Duration::from_secs(120)).expect("the demo printed its lines");
    let find = |start: &str| -> String {
        printed
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(start) || l.contains(start))
            .unwrap_or_else(|| panic!("no line with {start:?} in {printed:#?}"))
            .to_owned()
    };
    let export = find("export HEARTH_HUB=");
    let shell = |line: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("{export}; {line}"));
        c
    };
    // The CLI lines (the binary's real path, not a bare `hearth`).
    let cli = find("device list;");
    assert!(!cli.starts_with("hearth "), "the CLI line names the binary's path: {cli}");
    let out = shell(&cli).output().expect("run the CLI line");
    assert!(out.status.success(), "{cli}: {}", String::from_utf8_lossy(&out.stderr));
    // One terminal waits for a command (exiting after one, for the test); the other sends one and a reading.
    let sub_line = find("mosquitto_sub ");
    let sub = shell(&format!("{sub_line} -C 1 -W 30")).stdout(Stdio::piped()).spawn().expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let send = printed.iter().map(|l| l.trim()).find(|l| l.contains("--no-wait")).expect("the command line").to_owned();
    let out = shell(&send).output().expect("send a command");
    assert!(out.status.success(), "{send}: {}", String::from_utf8_lossy(&out.stderr));
    let pub_line = find("mosquitto_pub ");
    let out = shell(&pub_line).output().expect("mosquitto_pub");
    assert!(out.status.success(), "{pub_line}: {}", String::from_utf8_lossy(&out.stderr));
    let got = tokio::task::spawn_blocking(move || sub.wait_with_output()).await.expect("join").expect("sub");
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success() && text.contains("\"name\":\"ping\""), "the listener got the command: {text}");
    let _ = demo.kill();
    let _ = demo.wait();
}

/// Issue 14, deviation 13: `device list` columns did not line up for longer models, and logs written to a file
/// kept ANSI colour codes.
#[tokio::test]
async fn device_list_lines_up_and_logs_to_a_file_are_plain_text() {
    let dir = tempfile::tempdir().expect("dir");
    let (https, mqtts) = free_ports();
    let hub = HubProcess::start(&dir.path().join("hub"), https, mqtts);
    let token = setup(&hub);
    crate::support::manufacture(&hub, &token, "a-rather-long-model-designation", 1).await;
    crate::support::manufacture(&hub, &token, "m", 1).await;
    let (ok, out, err) = hearth(&hub, Some(&token), &["device", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header = lines[0];
    for column in ["model", "status", "online", "last seen"] {
        let at = header.find(column).expect("column");
        for line in &lines[1..] {
            let before = &line[..at];
            assert!(before.ends_with("  ") || at == 0, "{column} does not start at {at} in {line:?}\n{out}");
            assert_ne!(line.as_bytes()[at], b' ', "{column} is empty at {at} in {line:?}");
        }
    }
    assert!(lines[1..].iter().all(|l| l.ends_with("never")), "never seen devices say so: {out}");
    drop(hub);
    // The hub's log, redirected to a pipe (as to a file or the journal): plain text, no escape codes.
    let config = dir.path().join("plain.toml");
    std::fs::write(&config, "[accounts]\nconsumer_sign_up = false\n").expect("config");
    let mut serve = Command::new(workspace_bin("hearth"))
        .args(["serve", "--https", "127.0.0.1:0", "--mqtts", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("plain"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let stderr = serve.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("hub started") {
                break;
            }
        }
        seen
    });
    let seen = log.join().expect("log");
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(seen.contains("hub started"), "{seen}");
    assert!(!seen.contains('\u{1b}'), "ANSI codes in a redirected log: {seen:?}");
}

/// What a QR reader makes of the label at `svg` once Chromium has drawn it large (None, with the skip reported,
/// when Chromium or zbarimg is missing).
fn scan_label(svg: &std::path::Path, png: &std::path::Path) -> Option<String> {
    const TEST: &str = "e2e::factory_enrol_connect_publish_store_query_with_real_processes (label scan)";
    let chromium = std::path::Path::new("/usr/bin/chromium");
    if !hearth_test_support::require_file(chromium, TEST, "apt-get install chromium (.ci/run does)")
        || !hearth_test_support::require_tool("zbarimg", TEST)
    {
        return None;
    }
    let profile = tempfile::tempdir().expect("profile");
    let mut draw = Command::new(chromium);
    draw.args(["--headless", "--disable-gpu", "--window-size=800,480", "--force-device-scale-factor=3"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if nix_root() {
        draw.arg("--no-sandbox");
    }
    assert!(draw.status().expect("chromium runs").success(), "chromium drew the label");
    let out = Command::new("zbarimg").args(["-q", "--raw"]).arg(png).output().expect("zbarimg runs");
    assert!(out.status.success(), "zbarimg found no QR code: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(format!("QR-Code:{text}"))
}

/// Whether the tests run as root (Chromium then needs --no-sandbox).
fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
