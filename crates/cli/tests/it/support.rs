//! Process helpers: a hub process on chosen free ports, running the CLI, and reading a process's listening
//! sockets from /proc.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_test_support::workspace_bin;

/// Two free loopback ports (bound and released; fine for tests that then bind them at once).
pub fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().expect("addr").port(), b.local_addr().expect("addr").port())
}

/// A `hearth serve` process.
pub struct HubProcess {
    pub child: Child,
    pub https_port: u16,
    pub data_dir: PathBuf,
    /// The setup token it printed (first start only).
    pub setup_token: Option<String>,
}

impl HubProcess {
    /// Starts `hearth serve` on the given ports and waits until it prints that it runs.
    pub fn start(data_dir: &Path, https_port: u16, mqtt_port: u16) -> HubProcess {
        Self::start_with(data_dir, https_port, mqtt_port, "")
    }

    /// Like [`start`](Self::start), with more TOML appended to the configuration.
    pub fn start_with(data_dir: &Path, https_port: u16, mqtt_port: u16, extra: &str) -> HubProcess {
        Self::start_env(data_dir, https_port, mqtt_port, extra, &[])
    }

    /// Like [`start_with`](Self::start_with), with environment variables for the hub.
    pub fn start_env(
        data_dir: &Path,
        https_port: u16,
        mqtt_port: u16,
        extra: &str,
        env: &[(&str, &str)],
    ) -> HubProcess {
        let config = data_dir.with_extension("toml");
        // A hub for devices and operators: no consumer sign-up, so no mail relay is needed.
        let config_text = format!(
            "[public]\nhostnames = [\"127.0.0.1\", \"localhost\"]\n{extra}\n[accounts]\nconsumer_sign_up = false\n"
        );
        std::fs::write(&config, config_text).expect("config");
        let mut child = Command::new(workspace_bin("hearth"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--https", &format!("127.0.0.1:{https_port}"), "--mqtts", &format!("127.0.0.1:{mqtt_port}")])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hearth serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut token = None;
            let mut sent = false;
            // Keep reading to the end so the hub never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim().starts_with("hst_") {
                    token = Some(line.trim().to_owned());
                }
                if line.starts_with("Ready.") && !sent {
                    let _ = tx.send(token.clone());
                    sent = true;
                }
            }
        });
        let setup_token = rx.recv_timeout(Duration::from_secs(60)).expect("hub printed its start banner");
        HubProcess { child, https_port, data_dir: data_dir.to_path_buf(), setup_token }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("tls/server-ca.pem")
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `hearth ARGS` against `hub` with `token`; returns (success, stdout, stderr).
pub fn hearth(hub: &HubProcess, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    hearth_env(hub, token, args, &[])
}

/// [`hearth`] with more environment variables.
pub fn hearth_env(
    hub: &HubProcess,
    token: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut cmd = Command::new(workspace_bin("hearth"));
    cmd.envs(env.iter().copied());
    cmd.args(args).env("HEARTH_HUB", hub.url()).env("HEARTH_HUB_CA", hub.ca()).env("RUST_LOG", "warn");
    // `hearth setup` reads the owner's password from here.
    cmd.env("HEARTH_OWNER_PASSWORD", hearth_test_support::OWNER_PASSWORD);
    if let Some(t) = token {
        cmd.env("HEARTH_TOKEN", t);
    }
    let out = cmd.output().expect("run hearth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Completes owner setup through the CLI; returns the operator token.
pub fn setup(hub: &HubProcess) -> String {
    let token = hub.setup_token.clone().expect("first start prints a setup token");
    let (ok, out, err) =
        hearth(hub, None, &["setup", "--setup-token", &token, "--email", hearth_test_support::OWNER_EMAIL]);
    assert!(ok, "setup failed: {err}");
    out.split_whitespace().find(|w| w.starts_with("hop_")).expect("operator token printed").to_owned()
}

/// TCP and UDP ports a process has open for listening (TCP LISTEN or any bound UDP socket).
pub fn listening_ports(pid: u32) -> (Vec<u16>, usize) {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut tcp = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
                tcp.push(port);
            }
        }
    }
    let mut udp = 0;
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        udp += text.lines().skip(1).filter(|l| l.split_whitespace().nth(9).is_some_and(|i| inodes.contains(i))).count();
    }
    tcp.sort_unstable();
    (tcp, udp)
}

/// Every stored seq of a device, following pages.
pub async fn stored_seqs(hub: &HubProcess, token: &str, device: &str) -> Vec<(i64, i64)> {
    // A fresh client: a pooled connection may point at a hub process that was killed.
    let client = hearth_test_support::client_for(&hub.ca(), None).expect("client");
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{}/api/v1/devices/{device}/telemetry?limit=1000&after_seq={after}", hub.url());
        let page: serde_json::Value = client
            .get(url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("json");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        for i in &items {
            out.push((i["seq"].as_i64().expect("seq"), i["received_at_ms"].as_i64().expect("received")));
        }
        match page["next_after_seq"].as_i64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

/// Manufactures `count` devices of `model` through the API.
pub async fn manufacture(
    hub: &HubProcess,
    token: &str,
    model: &str,
    count: usize,
) -> hearth_proto::enrol::ManufactureResponse {
    let client = hearth_test_support::client_for(&hub.ca(), None).expect("client");
    client
        .post(format!("{}/api/v1/devices", hub.url()))
        .bearer_auth(token)
        .json(&serde_json::json!({ "model": model, "count": count }))
        .send()
        .await
        .expect("manufacture")
        .json()
        .await
        .expect("manufacture answer")
}
