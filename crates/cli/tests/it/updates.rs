//! Signed updates end to end with real `hearth-agent` processes (directory A/B slots, the simulated bootloader)
//! against a hub: a rollout reaches every device; a release that fails its health check rolls back on the
//! canary and pauses its rollout by itself. The power-cut trials are in `faults::update_power_cut`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_test_support::updates::{Maker, release_info};
use hearth_test_support::{TestHub, eventually, workspace_bin};
use serde_json::json;

/// A hub, a maker with published releases, and devices with a factory image (the first release).
pub struct Rig {
    pub hub: TestHub,
    pub maker: Maker,
    pub dir: tempfile::TempDir,
    /// (target name, SHA-256) of each published release, in order.
    pub releases: Vec<(String, String)>,
    pub devices: Vec<DeviceRig>,
}

/// One device's files.
pub struct DeviceRig {
    pub id: String,
    pub bootstrap: PathBuf,
    pub state: PathBuf,
    pub slots: PathBuf,
    pub factory: PathBuf,
}

pub fn sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Releases `1.0.0` (the factory image), then one per entry of `more`: (version, security version, size,
/// broken). A broken image contains `BROKEN`, which the health command refuses.
pub async fn rig(devices: usize, more: &[(&str, u64, usize, bool)]) -> Rig {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let maker = Maker::new(&hub.client, &hub.base(), &hub.token, &dir.path().join("maker")).await.expect("maker");
    let mut releases = Vec::new();
    let mut images = Vec::new();
    for (i, (version, sv, size, broken)) in [("1.0.0", 1, 32 * 1024, false)].iter().chain(more).enumerate() {
        let name = format!("test-model-{version}.img");
        let mut bytes: Vec<u8> = (0..*size).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
        if *broken {
            // Signed as it is: broken in a way only the device's health check sees.
            bytes[..6].copy_from_slice(b"BROKEN");
        }
        let info = release_info("test-model", version, *sv);
        let image = maker.release_bytes(&name, info, bytes).await.expect("release");
        releases.push((name, sha256(&image)));
        images.push(image);
    }
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[1], true).await.expect("publish");
    assert_eq!(status, 200, "{answer}");
    let files = hub.manufacture("test-model", devices).await.expect("manufacture");
    let boot_dir = dir.path().join("bootstrap");
    let paths = hub.write_bootstraps(&files, &boot_dir).expect("bootstraps");
    let mut rigs = Vec::new();
    for (f, bootstrap) in files.iter().zip(paths) {
        let base = dir.path().join(f.device_id.as_str());
        let factory = base.join("factory");
        std::fs::create_dir_all(&factory).expect("factory");
        std::fs::write(factory.join("image"), &images[0]).expect("image");
        let slot = json!({"target": releases[0].0, "version": "1.0.0", "security_version": 1, "sha256": releases[0].1});
        std::fs::write(factory.join("slot.json"), slot.to_string()).expect("slot");
        rigs.push(DeviceRig {
            id: f.device_id.to_string(),
            bootstrap,
            state: base.join("state"),
            slots: base.join("slots"),
            factory,
        });
    }
    let health = dir.path().join("health.sh");
    std::fs::write(&health, "#!/bin/sh\n! grep -q BROKEN \"$HEARTH_IMAGE\"\n").expect("health");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&health, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Rig { hub, maker, dir, releases, devices: rigs }
}

/// An agent process, killed when dropped (a failed test leaves no agent behind).
pub struct AgentProcess(pub Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Rig {
    /// Waits until every device enrolled.
    pub async fn enrolled(&self) {
        for d in &self.devices {
            let path = format!("/api/v1/devices/{}", d.id);
            let ok = eventually(Duration::from_secs(60), || async {
                let (_, body) = self.hub.get(&path).await.ok()?;
                (body["status"] == "enrolled").then_some(())
            })
            .await;
            assert!(ok.is_some(), "{} never enrolled", d.id);
        }
    }

    /// Starts `hearth-agent` for device `i`.
    pub fn agent(&self, i: usize) -> AgentProcess {
        let d = &self.devices[i];
        Command::new(workspace_bin("hearth-agent"))
            .arg("--state-dir")
            .arg(&d.state)
            .arg("--bootstrap")
            .arg(&d.bootstrap)
            .arg("--slots")
            .arg(&d.slots)
            .arg("--factory-slot")
            .arg(&d.factory)
            .arg("--update-root")
            .arg(self.maker.repo.dir().join("1.root.json"))
            .arg("--health-command")
            .arg(self.dir.path().join("health.sh"))
            .args([
                "--health-timeout-secs",
                "20",
                "--update-check-secs",
                "2",
                "--interval-secs",
                "5",
                "--boot-tries",
                "2",
            ])
            .env("RUST_LOG", std::env::var("HEARTH_AGENT_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .spawn()
            .map(AgentProcess)
            .expect("spawn agent")
    }

    /// Waits until rollout `id` is in `state` (the engine runs every 2 s).
    pub async fn rollout_state(&self, id: &str, state: &str, within: Duration) -> serde_json::Value {
        let path = format!("/api/v1/rollouts/{id}");
        let got = eventually(within, || async {
            let (_, view) = self.hub.get(&path).await.ok()?;
            (view["state"] == state).then_some(view)
        })
        .await;
        match got {
            Some(view) => view,
            None => panic!("rollout {id} never became {state}: {}", self.hub.get(&path).await.expect("view").1),
        }
    }

    /// Creates a rollout of release `index` to every device at once after a canary of one.
    pub async fn roll_out(&self, index: usize) -> String {
        let plan =
            json!({"release": self.releases[index].0, "canary": 1, "percents": [100], "pause_failure_percent": 50});
        let (status, view) = self.hub.post("/api/v1/rollouts", plan).await.expect("rollout");
        assert_eq!(status, 201, "{view}");
        view["id"].as_str().expect("id").to_owned()
    }
}

/// What a device's slots say: the booted slot's image metadata and its file's SHA-256, and the trial slot's.
pub fn slots_state(slots: &Path) -> (serde_json::Value, Vec<(String, String)>) {
    let bootloader: serde_json::Value =
        serde_json::from_slice(&std::fs::read(slots.join("bootloader.json")).unwrap_or_default()).unwrap_or_default();
    let mut images = Vec::new();
    for slot in ["a", "b"] {
        let dir = slots.join(slot);
        let Ok(meta) = std::fs::read(dir.join("slot.json")) else { continue };
        let meta: serde_json::Value = serde_json::from_slice(&meta).expect("slot.json");
        let file_sha = std::fs::read(dir.join("image")).map(|b| sha256(&b)).unwrap_or_default();
        images.push((slot.to_owned(), format!("{}|{}|{file_sha}", meta["target"], meta["sha256"])));
    }
    (bootloader, images)
}

/// The slot the next boot runs, and whether its image is one of `signed` (target name, SHA-256) with a file
/// that hashes to it.
pub fn next_boot_is_signed(slots: &Path, signed: &[(String, String)]) -> (String, bool) {
    let bootloader: serde_json::Value =
        serde_json::from_slice(&std::fs::read(slots.join("bootloader.json")).expect("bootloader.json")).expect("json");
    let slot = match bootloader["trial"].as_object() {
        Some(trial) if trial["tries_left"].as_u64() > Some(0) => trial["slot"].as_str().expect("slot").to_owned(),
        _ => bootloader["active"].as_str().expect("active").to_owned(),
    };
    let dir = slots.join(&slot);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("slot.json")).expect("slot.json")).expect("json");
    let file_sha = sha256(&std::fs::read(dir.join("image")).expect("image"));
    let ok = signed
        .iter()
        .any(|(name, sha)| meta["target"] == name.as_str() && meta["sha256"] == sha.as_str() && &file_sha == sha);
    (slot, ok)
}

/// Where the device is: its job's phase, `trial boot` while the bootloader holds a trial, else `idle`.
pub fn phase_of(device: &DeviceRig) -> String {
    let bootloader: serde_json::Value =
        serde_json::from_slice(&std::fs::read(device.slots.join("bootloader.json")).unwrap_or_default())
            .unwrap_or_default();
    let job = std::fs::read(device.state.join("update/state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|s| s["job"]["phase"].as_str().map(str::to_owned));
    match (job, bootloader["trial"].is_object()) {
        (_, true) => "trial boot".into(),
        (Some(p), false) => p,
        (None, false) => "idle".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_aborted_while_a_device_downloads_is_never_installed_there() {
    let rig = rig(1, &[("1.1.0", 1, 6 << 20, false)]).await;
    let device = &rig.devices[0];
    {
        let _agent = rig.agent(0);
        rig.enrolled().await;
    }
    let id = rig.roll_out(1).await;
    // The device starts downloading; the power goes (kill -9) while it does.
    let mut agent = rig.agent(0);
    let started = std::time::Instant::now();
    while phase_of(device) != "downloading" && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(phase_of(device), "downloading", "the device never started downloading");
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    // Meanwhile the operator aborts the rollout.
    let (status, _) = rig.hub.post(&format!("/api/v1/rollouts/{id}/abort"), json!({})).await.expect("abort");
    assert_eq!(status, 200);
    let aborted_at = rig.hub.hub.state.clock.now_ms();
    // Back on: the device checks in, learns the hub no longer wants the release, and drops the job.
    let _agent = rig.agent(0);
    let path = format!("/api/v1/devices/{}/update", device.id);
    let checked = eventually(Duration::from_secs(60), || async {
        let (_, view) = rig.hub.get(&path).await.ok()?;
        (view["checked_in_at"].as_i64()? > aborted_at && phase_of(device) == "idle").then_some(view)
    })
    .await;
    assert!(checked.is_some(), "the device did not check in and drop its job: phase {}", phase_of(device));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (slots, _) = slots_state(&device.slots);
    assert!(slots["trial"].is_null(), "nothing is on trial: {slots}");
    let (slot, signed) = next_boot_is_signed(&device.slots, &rig.releases);
    assert!(signed);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(device.slots.join(&slot).join("slot.json")).expect("slot"))
            .expect("json");
    assert_eq!(
        meta["target"],
        rig.releases[0].0.as_str(),
        "still the factory image: the aborted release was not installed"
    );
    let (_, view) = rig.hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view");
    assert!(view["counts"]["succeeded"].is_null(), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reaches_every_device_and_a_release_failing_its_health_check_rolls_back_and_pauses() {
    let rig = rig(3, &[("1.1.0", 2, 200 * 1024, false), ("1.2.0", 3, 100 * 1024, true)]).await;
    let agents: Vec<AgentProcess> = (0..3).map(|i| rig.agent(i)).collect();
    rig.enrolled().await;

    // 1.1.0 reaches all three: canary first, then the rest; each commits after its health check.
    let id = rig.roll_out(1).await;
    let view = rig.rollout_state(&id, "completed", Duration::from_secs(120)).await;
    assert_eq!(view["counts"]["succeeded"], 3, "{view}");
    for d in &rig.devices {
        let (slot, ok) = next_boot_is_signed(&d.slots, &rig.releases);
        assert!(ok, "{}: slot {slot}", d.id);
        let (bootloader, _) = slots_state(&d.slots);
        assert!(bootloader["trial"].is_null(), "committed: {bootloader}");
        let floor = std::fs::read_to_string(d.state.join("security-floor")).expect("floor");
        assert_eq!(floor.trim(), "2", "the floor rose with the committed release");
    }

    // 1.2.0 fails its health check on the canary: it rolls back (still 1.1.0, floor unchanged) and the rollout
    // pauses by itself; nobody else gets it.
    let id = rig.roll_out(2).await;
    let view = rig.rollout_state(&id, "paused", Duration::from_secs(120)).await;
    assert!(view["reason"].as_str().unwrap_or("").contains("health gate"), "{view}");
    assert_eq!(view["counts"]["rolled_back"], 1, "{view}");
    assert_eq!(view["counts"]["waiting"], 2, "{view}");
    let (_, events) = rig.hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view");
    assert_eq!(events["state"], "paused");
    for d in &rig.devices {
        let (_, images) = slots_state(&d.slots);
        let (bootloader, _) = slots_state(&d.slots);
        let active = bootloader["active"].as_str().expect("active");
        let running = images.iter().find(|(s, _)| s == active).expect("active slot").1.clone();
        assert!(running.contains("test-model-1.1.0.img"), "{}: {running}", d.id);
        assert_eq!(std::fs::read_to_string(d.state.join("security-floor")).expect("floor").trim(), "2");
    }
    assert_eq!(rig.hub.event_count("unknown_image").await.expect("events"), 0, "every image was released");
    drop(agents);
}

/// python-tuf, or the skip reported (a failure with `HEARTH_REQUIRE_ALL=1`).
fn python_tuf() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tuf-venv/bin/python");
    hearth_test_support::require_file(
        &python,
        "updates (python-tuf against the hub)",
        "python3 -m venv target/tuf-venv && target/tuf-venv/bin/pip install --require-hashes -r ci/requirements-tuf.txt",
    )
    .then_some(python)
}

#[tokio::test]
async fn the_makers_commands_sign_and_publish_and_python_tufs_client_verifies_the_hubs_repository() {
    use crate::support::{HubProcess, free_ports, hearth, setup};
    let dir = tempfile::tempdir().expect("dir");
    let (https, mqtts) = free_ports();
    let hub = HubProcess::start(&dir.path().join("hub"), https, mqtts);
    let token = setup(&hub);
    let path = |p: &str| dir.path().join(p).to_str().expect("utf8").to_owned();
    let run = |args: &[&str]| {
        let (ok, out, err) = hearth(&hub, Some(&token), args);
        assert!(ok, "hearth {args:?}: {err}");
        out
    };
    // Offline keys; the hub's online keys; root 1 needing 2 of 2 root keys.
    for k in ["root-1", "root-2", "targets-1"] {
        run(&["release", "keygen", "--out", &path(&format!("keys/{k}.pem"))]);
    }
    let (ok, _, err) = hearth(&hub, Some(&token), &["release", "keygen", "--out", &path("keys/root-1.pem")]);
    assert!(!ok && err.contains("never overwritten"), "{err}");
    run(&["release", "hub-keys", "--out", &path("hub-keys.json")]);
    let (ok, _, err) = hearth(
        &hub,
        Some(&token),
        &[
            "release",
            "init",
            "--repo",
            &path("repo"),
            "--hub-keys",
            &path("hub-keys.json"),
            "--root-key",
            &path("keys/root-1.pem"),
            "--root-threshold",
            "2",
            "--targets-key",
            &path("keys/targets-1.pem"),
        ],
    );
    assert!(!ok && err.contains("threshold"), "one of two root keys is refused: {err}");
    run(&[
        "release",
        "init",
        "--repo",
        &path("repo"),
        "--hub-keys",
        &path("hub-keys.json"),
        "--root-key",
        &path("keys/root-1.pem"),
        "--root-key",
        &path("keys/root-2.pem"),
        "--root-threshold",
        "2",
        "--targets-key",
        &path("keys/targets-1.pem"),
    ]);
    let image = b"plug firmware 2.0\n".repeat(5000);
    std::fs::write(path("image.bin"), &image).expect("image");
    std::fs::write(path("sbom.json"), r#"{"bomFormat":"CycloneDX","specVersion":"1.5","version":1,"components":[]}"#)
        .expect("sbom");
    let out = run(&[
        "release",
        "add",
        "--repo",
        &path("repo"),
        "--targets-key",
        &path("keys/targets-1.pem"),
        "--image",
        &path("image.bin"),
        "--model",
        "plug-2",
        "--version",
        "2.0.0",
        "--hardware",
        "rev-a",
        "--security-version",
        "4",
        "--kind",
        "security",
        "--fixes",
        "Closes a crash over the local network.",
        "--restarts",
        "--downtime-seconds",
        "30",
        "--sbom",
        &path("sbom.json"),
    ]);
    assert!(out.contains("plug-2-2.0.0.img"), "{out}");
    let out = run(&["release", "upload", "--repo", &path("repo")]);
    assert!(out.contains("Published: 2 files, 1 root versions"), "{out}");
    let out = run(&["release", "upload", "--repo", &path("repo")]);
    assert!(out.contains("has everything"), "{out}");
    // No device of the model yet: a rollout is refused with the reason.
    let (ok, _, err) = hearth(&hub, Some(&token), &["rollout", "start", "--release", "plug-2-2.0.0.img"]);
    assert!(!ok && err.contains("no enrolled device"), "{err}");

    // python-tuf's client, as a device (its certificate), refreshes and verifies the image.
    let Some(python) = python_tuf() else { return };
    let client = hearth_test_support::client_for(&hub.ca(), None).expect("client");
    let answer: serde_json::Value = client
        .post(format!("{}/api/v1/devices", hub.url()))
        .bearer_auth(&token)
        .json(&json!({"model": "plug-2", "count": 1}))
        .send()
        .await
        .expect("manufacture")
        .json()
        .await
        .expect("json");
    let file: hearth_proto::enrol::ManufactureResponse = serde_json::from_value(answer).expect("batch");
    let boot = file.bootstrap_files().remove(0);
    let device =
        hearth_test_support::enrol_at(&client, &hub.url(), boot.device_id.as_str(), &boot.bootstrap_token, dir.path())
            .await
            .expect("enrol");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tuf/ngclient_hub.py");
    let output = Command::new(&python)
        .arg(script)
        .args([hub.url(), path("repo/1.root.json")])
        .arg(hub.ca())
        .arg(&device.cert_path)
        .arg(&device.key_path)
        .args(["plug-2-2.0.0.img", &path("ngclient")])
        .output()
        .expect("python");
    assert!(output.status.success(), "python-tuf refused: {}", String::from_utf8_lossy(&output.stderr));
    let downloaded = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(std::fs::read(&downloaded).expect("target"), image);
    // A root whose content was changed after signing is refused by python-tuf before anything is fetched.
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path("repo/1.root.json")).expect("root")).expect("json");
    tampered["signed"]["expires"] = json!("2099-01-01T00:00:00Z");
    std::fs::write(path("tampered-root.json"), tampered.to_string()).expect("write");
    let output = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tuf/ngclient_hub.py"))
        .args([hub.url(), path("tampered-root.json")])
        .arg(hub.ca())
        .arg(&device.cert_path)
        .arg(&device.key_path)
        .args(["plug-2-2.0.0.img", &path("ngclient-tampered")])
        .output()
        .expect("python");
    assert!(!output.status.success());
}

/// SoftHSM's PKCS#11 module (Debian's softhsm2).
const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[tokio::test]
async fn keys_made_in_a_pkcs11_token_sign_the_root_and_a_release_that_the_hub_accepts() {
    use crate::support::{HubProcess, free_ports, hearth_env, setup};
    const TEST: &str = "updates::keys_made_in_a_pkcs11_token (SoftHSM)";
    if !hearth_test_support::require_tool("softhsm2-util", TEST)
        || !hearth_test_support::require_file(Path::new(SOFTHSM), TEST, "apt-get install softhsm2 (.ci/run does)")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let path = |p: &str| dir.path().join(p).to_str().expect("utf8").to_owned();
    // A token of our own: SoftHSM keeps its tokens where its configuration says.
    std::fs::create_dir_all(path("tokens")).expect("tokens");
    std::fs::write(
        path("softhsm2.conf"),
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", path("tokens")),
    )
    .expect("conf");
    let conf = path("softhsm2.conf");
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "maker", "--pin", "483920", "--so-pin", "615243"])
        .output()
        .expect("softhsm2-util");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let (https, mqtts) = free_ports();
    let hub = HubProcess::start(&dir.path().join("hub"), https, mqtts);
    let token = setup(&hub);
    let env = [("SOFTHSM2_CONF", conf.as_str()), ("HEARTH_PKCS11_MODULE", SOFTHSM), ("HEARTH_PKCS11_PIN", "483920")];
    let run = |args: &[&str]| {
        let (ok, out, err) = hearth_env(&hub, Some(&token), args, &env);
        assert!(ok, "hearth {args:?}: {err}");
        out
    };
    let root = "pkcs11:token=maker;object=root-1";
    let targets = "pkcs11:token=maker;object=targets-1";
    for key in [root, targets] {
        let out = run(&["release", "keygen", "--out", key]);
        assert!(out.contains("made in the token"), "{out}");
    }
    // Refusals: a label that exists, a wrong PIN, a token that does not exist, no PIN at all.
    let (ok, _, err) = hearth_env(&hub, Some(&token), &["release", "keygen", "--out", root], &env);
    assert!(!ok && err.contains("never overwritten"), "{err}");
    let wrong_pin = [env[0], env[1], ("HEARTH_PKCS11_PIN", "000000")];
    let (ok, _, err) =
        hearth_env(&hub, Some(&token), &["release", "keygen", "--out", "pkcs11:token=maker;object=x"], &wrong_pin);
    assert!(!ok && err.contains("signing in"), "{err}");
    let (ok, _, err) =
        hearth_env(&hub, Some(&token), &["release", "keygen", "--out", "pkcs11:token=other;object=x"], &env);
    assert!(!ok && err.contains("no token labelled other"), "{err}");
    let (ok, _, err) =
        hearth_env(&hub, Some(&token), &["release", "keygen", "--out", "pkcs11:token=maker;object=x"], &env[..2]);
    assert!(!ok && err.contains("HEARTH_PKCS11_PIN"), "{err}");
    assert!(!err.contains("483920"), "the PIN is never printed");

    // Root 1 and a release, signed in the token; the hub checks every signature before it publishes.
    run(&["release", "hub-keys", "--out", &path("hub-keys.json")]);
    run(&[
        "release",
        "init",
        "--repo",
        &path("repo"),
        "--hub-keys",
        &path("hub-keys.json"),
        "--root-key",
        root,
        "--targets-key",
        targets,
    ]);
    std::fs::write(path("image.bin"), b"plug firmware 3.0\n".repeat(1000)).expect("image");
    let add = |key: &str| {
        hearth_env(
            &hub,
            Some(&token),
            &[
                "release",
                "add",
                "--repo",
                &path("repo"),
                "--targets-key",
                key,
                "--image",
                &path("image.bin"),
                "--model",
                "plug-3",
                "--version",
                "3.0.0",
                "--hardware",
                "rev-a",
                "--security-version",
                "1",
                "--kind",
                "feature",
            ],
            &env,
        )
    };
    let (ok, _, err) = add(root);
    assert!(!ok && err.contains("targets"), "the root key may not sign targets: {err}");
    let (ok, out, err) = add(targets);
    assert!(ok, "{err}");
    assert!(out.contains("plug-3-3.0.0.img"), "{out}");
    let out = run(&["release", "upload", "--repo", &path("repo")]);
    assert!(out.contains("Published: 1 files, 1 root versions"), "{out}");
    // The signatures are the token's: the root lists the token's public keys, and each verifies.
    let root_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path("repo/1.root.json")).expect("root")).expect("json");
    assert_eq!(root_json["signatures"].as_array().map(Vec::len), Some(1), "{root_json}");
    let client = hearth_test_support::client_for(&hub.ca(), None).expect("client");
    let status: serde_json::Value = client
        .get(format!("{}/api/v1/updates", hub.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!((status["root_version"].as_u64(), status["targets_version"].as_u64()), (Some(1), Some(1)), "{status}");
}
