//! The web app in real headless Chromium (Debian's), driven by `tests/browser/flow.mjs` through playwright-core:
//! setup with the one-time token → the owner signs in → a consumer signs up and confirms by mail → claims a
//! simulated device (a real agent) by its code → sees its telemetry chart → sends a command the agent answers →
//! sees the update a rollout holds for it and postpones it → releases the device and the agent confirms the wipe.
//! The owner also pauses and resumes that rollout on the updates page. Every page is checked with axe-core and for CSP
//! violations. This test owns the world the script asks about: the hub, the device, the mail outbox.
//!
//! `HEARTH_SCREENSHOTS=docs/screenshots` (relative to the workspace) also saves the pages as PNG for the docs.

use std::process::Stdio;
use std::time::Duration;

use hearth_agent::{Agent, AgentConfig};
use hearth_hub::clock::Clock;
use hearth_test_support::updates::{Maker, release_info};
use hearth_test_support::{TestHub, eventually, require_file, require_tool};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TEST: &str = "browser::the_web_app_works_end_to_end_in_chromium";
const OWNER: (&str, &str) = ("owner@example.org", "a quiet lamp by the harbour");
const CONSUMER: (&str, &str) = ("carol@example.org", "seven teal kettles on a shelf");

fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Base64 SHA-256 hashes of the public keys in the hub's certificate chain: Chromium trusts the hub through
/// `--ignore-certificate-errors-spki-list`, which makes the connection count as secure (as a CA in the system
/// store would), not as a certificate error clicked through.
async fn spki_hashes(hub: &TestHub) -> Vec<String> {
    use base64::Engine as _;
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(&hub.hub.server_ca_path).expect("server CA");
    let mut hashes = Vec::new();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.expect("PEM");
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("certificate");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, parsed.tbs_certificate.subject_pki.raw);
        hashes.push(base64::engine::general_purpose::STANDARD.encode(digest.as_ref()));
    }
    hashes
}

#[tokio::test]
async fn the_web_app_works_end_to_end_in_chromium() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    if !require_tool("node", TEST)
        || !require_file(chromium, TEST, "apt-get install chromium (.ci/run does)")
        || !require_file(
            &browser_dir().join("node_modules/playwright-core"),
            TEST,
            "npm ci --prefix crates/cli/tests/browser",
        )
    {
        return;
    }
    // Reached as `localhost` (WebAuthn has no relying party for an IP address), so passkeys are on.
    let (hub, setup_token) =
        TestHub::start_bare_with(Clock::system(), |c| c.public.host = Some("localhost".into())).await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let screenshots = std::env::var("HEARTH_SCREENSHOTS")
        .ok()
        .map(|d| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(d));
    let config = json!({
                "base": format!("https://localhost:{}", hub.hub.https_addr.port()),
        "spki": spki_hashes(&hub).await,
        "chromium": chromium,
        "setupToken": setup_token,
        "owner": { "email": OWNER.0, "password": OWNER.1 },
                "consumer": { "email": CONSUMER.0, "password": CONSUMER.1 },
        "passkeyUser": "dana@example.org",
        "screenshots": screenshots,
    });
    let mut script = tokio::process::Command::new("node")
        .arg(browser_dir().join("flow.mjs"))
        .env("HEARTH_BROWSER_CONFIG", config.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut to_script = script.stdin.take().expect("stdin");
    let mut from_script = BufReader::new(script.stdout.take().expect("stdout")).lines();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut agent_task = None;
    let outcome = loop {
        let line = tokio::time::timeout(Duration::from_secs(180), from_script.next_line())
            .await
            .expect("the browser script answers within 3 minutes")
            .expect("read")
            .expect("the browser script ended without a verdict");
        let message: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let answer = match message["ask"].as_str() {
            None => break message,
            // The owner made the device in the factory; a real agent enrols and starts reporting.
            Some("device") => {
                let (cookie, csrf) = hub.session(OWNER.0, OWNER.1).await.expect("owner session");
                let request = hub
                    .client
                    .post(format!("{}/api/v1/devices", hub.base()))
                    .header("cookie", cookie)
                    .header("x-csrf-token", csrf)
                    .json(&json!({ "model": "plug-1", "count": 1 }));
                let (status, _, body) = hub.send(request).await.expect("manufacture");
                assert_eq!(status, 201);
                let made: hearth_proto::enrol::ManufactureResponse = serde_json::from_slice(&body).expect("json");
                let code = made.devices[0].claim_code.clone();
                let paths = hearth_test_support::write_bootstraps(&made.bootstrap_files(), &dir.path().join("boot"))
                    .expect("bootstrap");
                let mut agent = AgentConfig::new(dir.path().join("agent"));
                agent.bootstrap_path = Some(paths[0].clone());
                agent.interval = Duration::from_millis(300);
                agent.backoff_max = Duration::from_millis(500);
                let agent = Agent::new(agent).await.expect("the agent enrols");
                let id = agent.device_id().to_string();
                agent_task = Some(tokio::spawn(agent.run(stopped.clone())));
                json!({ "device_id": id, "claim_code": code })
            }
            // The maker publishes a signed security release for the device's model, and the owner's rollout tells
            // the device (this agent has no installer: it stays told, so the pages have a rollout to show).
            Some("rollout") => {
                let (cookie, csrf) = hub.session(OWNER.0, OWNER.1).await.expect("owner session");
                let request = hub
                    .client
                    .post(format!("{}/api/v1/tokens", hub.base()))
                    .header("cookie", cookie)
                    .header("x-csrf-token", csrf)
                    .json(&json!({ "label": "maker", "expires_in_days": 1 }));
                let (status, _, body) = hub.send(request).await.expect("token");
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                let token =
                    serde_json::from_slice::<Value>(&body).expect("json")["token"].as_str().expect("token").to_owned();
                let base = hub.base();
                let maker = Maker::new(&hub.client, &base, &token, &dir.path().join("maker")).await.expect("maker");
                let mut info = release_info("plug-1", "1.1.0", 2);
                info.kind = hearth_proto::release::ReleaseKind::Security;
                info.fixes = "Closes a crash over the local network.".into();
                maker.release("plug-1-1.1.0.img", info, 4096, 1).await.expect("release");
                let (status, answer) = maker.publish(&hub.client, &base, &token, &[1], true).await.expect("publish");
                assert_eq!(status, 200, "{answer}");
                let bearer =
                    |path: &str, body: Value| hub.client.post(format!("{base}{path}")).bearer_auth(&token).json(&body);
                let until = hub.hub.state.clock.now_ms() + 3 * 365 * 86_400_000;
                let support = json!({ "support_until": until, "policy": "Security fixes for three years." });
                assert_eq!(hub.send(bearer("/api/v1/models/plug-1/support", support)).await.expect("support").0, 200);
                let plan = json!({ "release": "plug-1-1.1.0.img", "canary": 1, "percents": [100] });
                let (status, _, body) = hub.send(bearer("/api/v1/rollouts", plan)).await.expect("rollout");
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                json!({ "release": "plug-1-1.1.0.img" })
            }
            Some("mail") => {
                let to = message["to"].as_str().expect("to").to_owned();
                let outbox = hub.hub.state.accounts.mailer();
                let link = eventually(Duration::from_secs(5), || async {
                    outbox
                        .dev_outbox()
                        .into_iter()
                        .rev()
                        .find(|m| m.to == to)
                        .and_then(|m| m.body.split_whitespace().find(|w| w.contains("?token=")).map(str::to_owned))
                })
                .await
                .expect("the sign-up mail");
                json!({ "link": link })
            }
            // Three readings received since the claim.
            Some("telemetry") => {
                let id = message["device_id"].as_str().expect("id").to_owned();
                let store = &hub.hub.state.store;
                let seen = eventually(Duration::from_secs(20), || async {
                    let claimed = store.device(&id).await.ok()??.claimed_at?;
                    let rows = store.latest_uplinks(&id, claimed, 10).await.ok()?;
                    (rows.len() >= 3).then_some(rows.len())
                })
                .await;
                json!({ "readings": seen.expect("telemetry after the claim") })
            }
            Some("wiped") => {
                let id = message["device_id"].as_str().expect("id").to_owned();
                let store = &hub.hub.state.store;
                let wiped_at =
                    eventually(Duration::from_secs(20), || async { store.device(&id).await.ok()??.wiped_at }).await;
                json!({ "wiped_at": wiped_at.expect("the agent confirms the wipe") })
            }
            Some(other) => json!({ "error": format!("unknown question {other}") }),
        };
        to_script.write_all(format!("{answer}\n").as_bytes()).await.expect("answer");
    };
    let status = tokio::time::timeout(Duration::from_secs(30), script.wait()).await.expect("node exits").expect("wait");
    let _ = stop.send(true);
    if let Some(task) = agent_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    assert!(outcome["failed"].is_null(), "the browser flow failed: {}", outcome["failed"]);
    assert!(status.success(), "{outcome}");
    let pages: Vec<&str> = outcome["done"].as_array().expect("pages").iter().filter_map(Value::as_str).collect();
    // Every page kind was checked for accessibility and CSP, at desktop and phone widths.
    for page in [
        "sign in",
        "sign up",
        "setup",
        "fleet",
        "accounts",
        "device with chart",
        "updates",
        "rollout paused",
        "device with an update postponed",
        "account",
        "device (phone)",
        "not found",
        "signed in with a passkey",
        "second factor",
        "fleet after the second factor",
    ] {
        assert!(pages.contains(&page), "{page} was not checked: {pages:?}");
    }
    // The agent really erased what it held: the hub recorded the confirmation of the wipe it sent.
    // (Read from the store: the owner now signs in with a passkey too.)
    let log = hub.hub.state.accounts.audit_log(500).await.expect("audit log");
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "owner_setup",
        "sign_up",
        "email_verified",
        "device_claimed",
        "device_released",
        "device_wiped",
        "passkey_added",
        "second_factor_asked",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}
