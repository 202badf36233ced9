//! Signed updates through the hub: a maker's offline-signed release is published, served over mutual TLS and
//! verified by the agent's TUF client; every refusal leaves the repository as it was; root rotation, timestamp
//! renewal; rollouts with their gates; check-ins and postponing.

use std::time::Duration;

use hearth_agent::tuf;
use hearth_release::keys::KeyFile;
use hearth_test_support::updates::{Maker, release_info, sources};
use hearth_test_support::{TestDevice, TestHub, client_for, reqwest};
use serde_json::json;

fn mtls(hub: &TestHub, device: &TestDevice) -> reqwest::Client {
    let identity = format!("{}{}", device.key_pem, device.chain_pem);
    client_for(&hub.hub.server_ca_path, Some(identity.as_bytes())).expect("client")
}

fn sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_signed_release_is_published_served_over_mutual_tls_and_verified_by_the_device() {
    let clock = hearth_hub::clock::Clock::manual(jiff::Timestamp::now().as_millisecond());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let device = hub.enrolled_device(dir.path()).await.expect("device");
    let maker = Maker::new(&hub.client, &hub.base(), &hub.token, &dir.path().join("maker")).await.expect("maker");
    let image = maker
        .release("test-model-1.0.0.img", release_info("test-model", "1.0.0", 1), 300_000, 7)
        .await
        .expect("release");

    // Before its files are uploaded, the targets metadata is refused, and nothing is published.
    let targets = std::fs::read(maker.repo.dir().join("targets.json")).expect("targets");
    let root1 = std::fs::read(maker.repo.dir().join("1.root.json")).expect("root");
    let body = json!({"roots": [serde_json::from_slice::<serde_json::Value>(&root1).expect("json")],
        "targets": serde_json::from_slice::<serde_json::Value>(&targets).expect("json")});
    let (status, answer) = hub.post("/api/v1/updates/publish", body).await.expect("publish");
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap_or("").contains("upload its file"), "{answer}");
    assert_eq!(hub.get("/api/v1/updates").await.expect("status").1["root_version"], 0, "nothing published");

    // A file whose content does not hash to its name is refused.
    let wrong = hub
        .client
        .post(format!("{}/api/v1/updates/files/{}", hub.base(), "0".repeat(64)))
        .bearer_auth(&hub.token)
        .header("content-type", "application/octet-stream")
        .body(b"not that".to_vec());
    let (status, _, _) = hub.send(wrong).await.expect("upload");
    assert_eq!(status, 422);

    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[1], true).await.expect("publish");
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["root_version"].as_i64(), answer["targets_version"].as_i64()), (Some(1), Some(1)));
    assert_eq!((answer["snapshot_version"].as_i64(), answer["timestamp_version"].as_i64()), (Some(1), Some(1)));

    // The device's TUF client (the agent's) refreshes and downloads over mutual TLS; the image is the maker's.
    let fetcher = tuf::Fetcher::new(mtls(&hub, &device));
    let meta = dir.path().join("device-meta");
    tuf::init(&meta, &maker.repo.dir().join("1.root.json")).expect("init");
    let base = format!("{}/tuf", hub.base());
    let targets_url = format!("{base}/targets");
    let out = dir.path().join("device-targets");
    tuf::download(&fetcher, &meta, &base, "test-model-1.0.0.img", &targets_url, &out).await.expect("download");
    assert_eq!(std::fs::read(out.join("test-model-1.0.0.img")).expect("image"), image);
    let repository = tuf::refresh(&fetcher, &meta, &base, Some(&targets_url)).await.expect("refresh");
    let info = tuf::release_info(&repository, "test-model-1.0.0.img").expect("release");
    assert_eq!(info.version, "1.0.0");
    assert_eq!(info.sbom.as_deref(), Some("test-model-1.0.0.img.cdx.json"));

    // Without a device certificate the repository answers nothing.
    let (status, _, _) = hub.send(hub.client.get(format!("{base}/timestamp.json"))).await.expect("anon");
    assert_eq!(status, 401);
    // Ranges resume a download.
    let sha = sha256(&image);
    let ranged = mtls(&hub, &device)
        .get(format!("{targets_url}/{sha}.test-model-1.0.0.img"))
        .header("range", "bytes=1000-")
        .send()
        .await
        .expect("range");
    assert_eq!(ranged.status().as_u16(), 206);
    assert_eq!(ranged.headers()["content-range"], format!("bytes 1000-{}/{}", image.len() - 1, image.len()).as_str());
    assert_eq!(ranged.bytes().await.expect("body").as_ref(), &image[1000..]);

    // Releases and their SBOMs for people.
    let (status, list) = hub.get("/api/v1/releases").await.expect("releases");
    assert_eq!(status, 200);
    assert_eq!(list["releases"][0]["info"]["version"], "1.0.0");
    assert_eq!(list["releases"][0]["sha256"], sha.as_str());
    let (status, _, sbom) = hub
        .send(
            hub.client.get(format!("{}/api/v1/releases/test-model-1.0.0.img/sbom", hub.base())).bearer_auth(&hub.token),
        )
        .await
        .expect("sbom");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&sbom).expect("json")["bomFormat"], "CycloneDX");

    // The same targets again (not newer), and targets signed by a root key instead of the targets key: refused.
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[], true).await.expect("again");
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap_or("").contains("not newer"), "{answer}");
    let forged = hearth_release::Repo::open(&dir.path().join("forged"));
    std::fs::create_dir_all(forged.dir()).expect("dir");
    std::fs::copy(maker.repo.dir().join("root.json"), forged.dir().join("root.json")).expect("copy");
    std::fs::copy(maker.repo.dir().join("targets.json"), forged.dir().join("targets.json")).expect("copy");
    let forger = Maker {
        dir: dir.path().join("forged"),
        repo: forged.clone(),
        root_keys: maker.root_keys.clone(),
        targets_keys: maker.root_keys.clone(),
        hub_keys: maker.hub_keys.clone(),
    };
    let refused = forger.release("test-model-1.0.1.img", release_info("test-model", "1.0.1", 1), 10, 1).await;
    assert!(refused.is_err(), "the maker's tool will not sign targets with root keys");
    let mut doctored: serde_json::Value = serde_json::from_slice(&targets).expect("json");
    doctored["signed"]["version"] = json!(5);
    let (status, answer) = hub.post("/api/v1/updates/publish", json!({"targets": doctored})).await.expect("doctored");
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap_or("").contains("not signed"), "{answer}");
    let mut custom: serde_json::Value = serde_json::from_slice(&root1).expect("json");
    custom["signed"]["version"] = json!(2);
    let (status, _) = hub.post("/api/v1/updates/publish", json!({"roots": [custom]})).await.expect("root");
    assert_eq!(status, 422, "a root version not signed by the previous root's keys");
    assert_eq!(hub.get("/api/v1/updates").await.expect("status").1["targets_version"], 1, "unchanged by refusals");

    // Root rotation that replaces the targets key (a compromised one): roots 2 and the re-signed targets in one
    // publication; the device follows, and the old key can no longer sign.
    let new_targets = KeyFile::new(&dir.path().join("maker/keys/targets-2.pem"));
    KeyFile::generate(&dir.path().join("maker/keys/targets-2.pem")).expect("key");
    let plan = hearth_release::RootPlan {
        root: vec![maker.root_keys[0].public().expect("k"), maker.root_keys[1].public().expect("k")],
        root_threshold: 2,
        targets: vec![new_targets.public().expect("k")],
        targets_threshold: 1,
        hub: maker.hub_keys.clone(),
        expires: hearth_test_support::updates::in_a_year(),
    };
    maker
        .repo
        .rotate_root(
            &plan,
            &sources(&maker.root_keys),
            &sources(&maker.root_keys),
            &sources(std::slice::from_ref(&new_targets)),
        )
        .await
        .expect("rotate");
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[2], false).await.expect("root only");
    assert_eq!(status, 422, "the published targets would no longer verify: {answer}");
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[2], true).await.expect("rotation");
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["root_version"].as_i64(), answer["targets_version"].as_i64()), (Some(2), Some(2)));
    tuf::refresh(&fetcher, &meta, &base, Some(&targets_url)).await.expect("the device follows the rotation");
    let trusted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(meta.join("root.json")).expect("root")).expect("json");
    assert_eq!(trusted["signed"]["version"], 2);

    // The timestamp is renewed before it expires, and devices accept the renewal.
    let before = hub.get("/api/v1/updates").await.expect("status").1;
    assert!(!hub.hub.state.updates.refresh().await.expect("refresh"), "not due yet");
    clock.advance(Duration::from_secs(13 * 3600));
    assert!(hub.hub.state.updates.refresh().await.expect("refresh"), "due after half its life");
    let after = hub.get("/api/v1/updates").await.expect("status").1;
    assert_eq!(after["timestamp_version"].as_i64(), before["timestamp_version"].as_i64().map(|v| v + 1));
    assert!(after["timestamp_expires_at"].as_i64() > before["timestamp_expires_at"].as_i64());
    tuf::refresh(&fetcher, &meta, &base, Some(&targets_url)).await.expect("refresh after renewal");
}

/// Check-in of `device` reporting `steps`; returns the goal's target.
async fn check_in(
    hub: &TestHub,
    device: &TestDevice,
    image: Option<&str>,
    steps: serde_json::Value,
) -> Option<(String, String)> {
    let mut body = json!({"hardware": "rev-a", "security_floor": 1, "steps": steps});
    if let Some(sha) = image {
        body["image"] = json!({"sha256": sha});
    }
    let request = mtls(hub, device).post(format!("{}/api/v1/device/update", hub.base())).json(&body);
    let (status, _, answer) = hub.send(request).await.expect("check-in");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    let goal = &answer["goal"];
    goal["target"].as_str().map(|t| (goal["rollout"].as_str().expect("rollout").to_owned(), t.to_owned()))
}

#[tokio::test]
async fn rollouts_open_waves_pause_on_failures_and_devices_postpone_within_limits() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let mut devices = Vec::new();
    for _ in 0..4 {
        devices.push(hub.enrolled_device(dir.path()).await.expect("device"));
    }
    let maker = Maker::new(&hub.client, &hub.base(), &hub.token, &dir.path().join("maker")).await.expect("maker");
    let old =
        maker.release("test-model-1.0.0.img", release_info("test-model", "1.0.0", 1), 1000, 1).await.expect("release");
    let mut security = release_info("test-model", "1.1.0", 2);
    security.kind = hearth_proto::release::ReleaseKind::Security;
    security.fixes = "Closes a crash over the local network.".into();
    let new = maker.release("test-model-1.1.0.img", security, 1000, 2).await.expect("release");
    let new_sha = sha256(&new);
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[1], true).await.expect("publish");
    assert_eq!(status, 200, "{answer}");

    // A device on a released image raises nothing; one on an image the hub never released raises an event.
    assert_eq!(check_in(&hub, &devices[0], Some(&sha256(&old)), json!([])).await, None, "no rollout yet");
    assert_eq!(hub.event_count("unknown_image").await.expect("events"), 0);
    check_in(&hub, &devices[1], Some(&"e".repeat(64)), json!([])).await;
    assert!(hub.has_events("unknown_image", 1).await, "an image the hub never released");
    let (status, device) = hub.get(&format!("/api/v1/devices/{}", devices[0].id)).await.expect("device");
    assert_eq!(status, 200, "{device}");

    // Bad plans and unknown releases are refused.
    let (status, _) = hub.post("/api/v1/rollouts", json!({"release": "nope.img"})).await.expect("rollout");
    assert_eq!(status, 404);
    let (status, _) = hub
        .post("/api/v1/rollouts", json!({"release": "test-model-1.1.0.img", "percents": [50, 40, 100]}))
        .await
        .expect("rollout");
    assert_eq!(status, 422);

    // Canary of 1, then 50 % and 100 %; the canary rolls back: the failure gate pauses the rollout.
    let plan = json!({"release": "test-model-1.1.0.img", "canary": 1, "percents": [50, 100]});
    let (status, rollout) = hub.post("/api/v1/rollouts", plan.clone()).await.expect("rollout");
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().expect("id").to_owned();
    assert_eq!((rollout["state"].as_str(), rollout["wave"].as_i64()), (Some("running"), Some(0)), "{rollout}");
    let (status, _) = hub.post("/api/v1/rollouts", plan.clone()).await.expect("second");
    assert_eq!(status, 409, "one active rollout per model");
    let mut goals = Vec::new();
    for d in &devices {
        goals.push(check_in(&hub, d, None, json!([])).await);
    }
    let canary: Vec<usize> = goals.iter().enumerate().filter(|(_, g)| g.is_some()).map(|(i, _)| i).collect();
    assert_eq!(canary.len(), 1, "only the canary is told: {goals:?}");
    let canary = &devices[canary[0]];
    assert_eq!(goals.iter().flatten().next().map(|g| g.1.as_str()), Some("test-model-1.1.0.img"));
    let step = |state: &str| json!([{"rollout": id, "state": state, "detail": format!("now {state}")}]);
    check_in(&hub, canary, None, step("downloading")).await;
    check_in(&hub, canary, None, step("rolled_back")).await;
    hub.hub.state.updates.run_engine().await.expect("engine");
    let (_, view) = hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view");
    assert_eq!(view["state"], "paused", "{view}");
    assert!(view["reason"].as_str().unwrap_or("").contains("health gate"), "{view}");
    assert_eq!(view["counts"]["rolled_back"], 1);
    for d in &devices {
        assert_eq!(check_in(&hub, d, None, json!([])).await, None, "a paused rollout gives no goal");
    }
    // A final step is final: a late "succeeded" does not rewrite the rollback.
    check_in(&hub, canary, None, step("succeeded")).await;
    assert_eq!(hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view").1["counts"]["rolled_back"], 1);

    // Resuming accepts that failure; the next wave opens and its devices are told.
    let (status, view) = hub.post(&format!("/api/v1/rollouts/{id}/resume"), json!({})).await.expect("resume");
    assert_eq!(status, 200, "{view}");
    assert_eq!((view["state"].as_str(), view["wave"].as_i64()), (Some("running"), Some(1)), "{view}");
    let (status, _) = hub.post(&format!("/api/v1/rollouts/{id}/resume"), json!({})).await.expect("resume");
    assert_eq!(status, 409, "not paused");
    let told: Vec<&TestDevice> = {
        let mut told = Vec::new();
        for d in &devices {
            if check_in(&hub, d, None, json!([])).await.is_some() {
                told.push(d);
            }
        }
        told
    };
    assert_eq!(told.len(), 1, "wave 1 is half of 4, less the canary");

    // Postponing: within the limits, never past the security deadline.
    let waiting = told[0];
    let path = format!("/api/v1/devices/{}/update/postpone", waiting.id);
    let (status, _) = hub.post(&path, json!({"days": 8})).await.expect("postpone");
    assert_eq!(status, 422, "at most 7 days at once");
    let (status, answer) = hub.post(&path, json!({"days": 7})).await.expect("postpone");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(check_in(&hub, waiting, None, json!([])).await, None, "postponed");
    for _ in 0..2 {
        let (status, _) = hub.post(&path, json!({"days": 1})).await.expect("postpone");
        assert_eq!(status, 409, "nothing is waiting now: it is postponed");
    }
    let rollout_id = id.clone();
    // A success claim without the release's image counts as a failure; with it, as a success.
    check_in(&hub, waiting, None, json!([{"rollout": rollout_id, "state": "succeeded"}])).await;
    let (_, view) = hub.get(&format!("/api/v1/rollouts/{rollout_id}")).await.expect("view");
    assert_eq!(view["counts"]["failed"], 1, "{view}");
    assert!(view["counts"]["succeeded"].is_null(), "{view}");

    // Abort: no device gets the release any more.
    let (status, view) = hub.post(&format!("/api/v1/rollouts/{id}/abort"), json!({})).await.expect("abort");
    assert_eq!((status, view["state"].as_str()), (200, Some("aborted")));
    for d in &devices {
        assert_eq!(check_in(&hub, d, None, json!([])).await, None, "aborted");
    }
    // The canary's rollback and the false success claim stay on record.
    let (_, list) = hub.get("/api/v1/rollouts").await.expect("list");
    assert_eq!(list["rollouts"][0]["counts"]["rolled_back"], 1, "{list}");
    assert_eq!(list["rollouts"][0]["reason"].as_str().map(|r| r.starts_with("aborted by")), Some(true), "{list}");

    // A new rollout where everyone succeeds completes by itself.
    let (status, rollout) = hub
        .post("/api/v1/rollouts", json!({"release": "test-model-1.1.0.img", "canary": 1, "percents": [100]}))
        .await
        .expect("rollout");
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().expect("id").to_owned();
    for _ in 0..4 {
        for d in &devices {
            if let Some((rollout, _)) = check_in(&hub, d, None, json!([])).await {
                check_in(&hub, d, Some(&new_sha), json!([{"rollout": rollout, "state": "succeeded"}])).await;
            }
        }
        hub.hub.state.updates.run_engine().await.expect("engine");
    }
    let (_, view) = hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view");
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["counts"]["succeeded"], 4, "{view}");

    // Check-ins without a device certificate, or with nonsense, are refused.
    let (status, _, _) = hub
        .send(
            hub.client
                .post(format!("{}/api/v1/device/update", hub.base()))
                .json(&json!({"hardware": "a", "security_floor": 0})),
        )
        .await
        .expect("anon");
    assert_eq!(status, 401);
    let bad = mtls(&hub, &devices[0])
        .post(format!("{}/api/v1/device/update", hub.base()))
        .json(&json!({"hardware": "rev a", "security_floor": 0}));
    let (status, _, _) = hub.send(bad).await.expect("bad");
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_device_that_checks_in_without_pause_is_throttled_and_others_are_not() {
    use hearth_hub::updates::CHECK_IN_BURST;
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let (noisy, quiet) = (
        hub.enrolled_device(dir.path()).await.expect("device"),
        hub.enrolled_device(dir.path()).await.expect("device"),
    );
    let client = mtls(&hub, &noisy);
    let body = json!({"hardware": "rev-a", "security_floor": 1, "steps": []});
    let (mut accepted, mut refused) = (0, None);
    for _ in 0..(CHECK_IN_BURST as usize + 20) {
        let request = client.post(format!("{}/api/v1/device/update", hub.base())).json(&body);
        let (status, headers, answer) = hub.send(request).await.expect("check-in");
        match status {
            200 => accepted += 1,
            429 => {
                refused = Some((headers.get("retry-after").cloned(), String::from_utf8_lossy(&answer).into_owned()));
                break;
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&answer)),
        }
    }
    assert!(accepted >= CHECK_IN_BURST as usize, "the whole allowance is usable: {accepted}");
    let (retry_after, answer) = refused.expect("a device checking in without pause is refused");
    assert!(retry_after.is_some() && answer.contains("throttled"), "{answer}");
    assert!(hub.has_events("check_in_throttled", 1).await, "and it is on record");
    // Another device is not affected.
    assert_eq!(check_in(&hub, &quiet, None, json!([])).await, None);
}

#[tokio::test]
async fn support_periods_can_be_extended_never_shortened() {
    let hub = TestHub::start().await.expect("hub");
    let until = jiff::Timestamp::now().as_millisecond() + 3 * 365 * 86_400_000;
    let body = json!({"support_until": until, "policy": "Security updates for 3 years after the last unit is sold."});
    let (status, answer) = hub.post("/api/v1/models/test-model/support", body).await.expect("support");
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = hub
        .post("/api/v1/models/test-model/support", json!({"support_until": until - 1, "policy": "less"}))
        .await
        .expect("support");
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = hub
        .post("/api/v1/models/test-model/support", json!({"support_until": 5, "policy": "past"}))
        .await
        .expect("support");
    assert_eq!(status, 400, "{answer}");
    let (_, list) = hub.get("/api/v1/models/support").await.expect("list");
    assert_eq!(list["models"][0]["support_until"], until);
}

/// A TCP proxy to `to` that cuts each connection after a random number of bytes from the server (up to
/// `max_cut`); returns its address.
async fn cutting_proxy(to: std::net::SocketAddr, max_cut: u64) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut rng: u64 =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64) | 1;
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let cut = 20_000 + rng % max_cut;
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else { return };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut sent = 0u64;
                    let mut buf = vec![0u8; 16 * 1024];
                    while sent < cut {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let n = n.min((cut - sent) as usize);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n as u64;
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_download_cut_at_random_offsets_resumes_and_fetches_at_most_one_and_a_half_times_the_image() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let device = hub.enrolled_device(dir.path()).await.expect("device");
    let maker = Maker::new(&hub.client, &hub.base(), &hub.token, &dir.path().join("maker")).await.expect("maker");
    let size = 3 << 20;
    let image =
        maker.release("test-model-2.0.0.img", release_info("test-model", "2.0.0", 1), size, 3).await.expect("release");
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[1], true).await.expect("publish");
    assert_eq!(status, 200, "{answer}");
    let sha = sha256(&image);
    // Cuts every connection within its first ~1 MiB of answer bytes (TLS included).
    let proxy = cutting_proxy(hub.hub.https_addr, 1 << 20).await;
    let url = format!("https://127.0.0.1:{}/tuf/targets/{sha}.test-model-2.0.0.img", proxy.port());
    let part = dir.path().join("download/image.part");
    let client = mtls(&hub, &device);
    let fetched = std::sync::atomic::AtomicU64::new(0);
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 200, "no progress");
        let got = hearth_agent::update::download::resumable(
            &client,
            &url,
            &part,
            size as u64,
            &sha,
            Duration::from_secs(10),
            &fetched,
        );
        match got.await {
            Ok(()) => break,
            Err(hearth_agent::update::download::DownloadError::Network(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(std::fs::read(&part).expect("file"), image);
    assert!(attempts > 2, "the proxy cut the download ({attempts} attempts)");
    let fetched = fetched.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fetched as f64 <= 1.5 * size as f64, "fetched {fetched} bytes for a {size}-byte image");
    eprintln!(
        "resume: {attempts} connections, {fetched} bytes fetched for {size} ({:.3}x)",
        fetched as f64 / size as f64
    );

    // A partial file that is wrong (bit rot, a lying server) fails the hash and is removed, never installed.
    std::fs::write(&part, vec![0u8; size]).expect("corrupt");
    let direct = format!("{}/tuf/targets/{sha}.test-model-2.0.0.img", hub.base());
    let got = hearth_agent::update::download::resumable(
        &client,
        &direct,
        &part,
        size as u64,
        &sha,
        Duration::from_secs(10),
        &std::sync::atomic::AtomicU64::new(0),
    )
    .await;
    assert!(matches!(got, Err(hearth_agent::update::download::DownloadError::HashMismatch { .. })), "{got:?}");
    assert!(!part.exists());
}

/// A signed-in browser without redirects: GETs a page's HTML, POSTs a form with the session's CSRF token.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Browser {
    async fn sign_in(hub: &TestHub, email: &str, pass: &str) -> Browser {
        let (cookie, csrf) = hub.session(email, pass).await.expect("session");
        Browser { client: hub.browser().expect("client"), base: hub.base(), cookie, csrf }
    }

    async fn page(&self, path: &str) -> (u16, String) {
        let resp =
            self.client.get(format!("{}{path}", self.base)).header("cookie", &self.cookie).send().await.expect("get");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// The status and, for a redirect, where to.
    async fn form(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let mut fields: Vec<(&str, &str)> = fields.to_vec();
        fields.push(("csrf", &self.csrf));
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("sec-fetch-site", "same-origin")
            .form(&fields)
            .send()
            .await
            .expect("post");
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (resp.status().as_u16(), location)
    }
}

#[tokio::test]
async fn the_app_shows_a_rollout_paused_by_its_gate_and_lets_operators_resume_it_and_owners_postpone() {
    use hearth_hub::store::Role;
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    hub.add_account("alice", "alice@example.org", Role::Consumer, "alice's own passphrase").await.expect("account");
    let alice = Browser::sign_in(&hub, "alice@example.org", "alice's own passphrase").await;
    let owner = Browser::sign_in(&hub, hearth_test_support::OWNER_EMAIL, hearth_test_support::OWNER_PASSWORD).await;
    // Alice owns both devices of the model.
    let mut devices = Vec::new();
    let (_, made) = hub.post("/api/v1/devices", json!({ "model": "test-model", "count": 2 })).await.expect("made");
    for made in made["devices"].as_array().expect("devices") {
        let (id, token) = (made["device_id"].as_str().expect("id"), made["bootstrap_token"].as_str().expect("token"));
        let device =
            hearth_test_support::enrol_at(&hub.client, &hub.base(), id, token, dir.path()).await.expect("enrol");
        let claim = hub
            .client
            .post(format!("{}/api/v1/claims", hub.base()))
            .header("cookie", &alice.cookie)
            .header("x-csrf-token", &alice.csrf)
            .json(&json!({ "claim_code": made["claim_code"] }));
        assert_eq!(hub.send(claim).await.expect("claim").0, 201);
        devices.push(device);
    }
    let maker = Maker::new(&hub.client, &hub.base(), &hub.token, &dir.path().join("maker")).await.expect("maker");
    let mut security = release_info("test-model", "1.1.0", 2);
    security.kind = hearth_proto::release::ReleaseKind::Security;
    security.fixes = "Closes a crash over the local network.".into();
    security.disruption = hearth_proto::release::Disruption { restarts: true, seconds: 40 };
    maker.release("test-model-1.1.0.img", security, 1000, 1).await.expect("release");
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[1], true).await.expect("publish");
    assert_eq!(status, 200, "{answer}");
    let until = hub.hub.state.clock.now_ms() + 400 * 86_400_000;
    let (status, _) = hub
        .post("/api/v1/models/test-model/support", json!({"support_until": until, "policy": "Five years of fixes."}))
        .await
        .expect("support");
    assert_eq!(status, 200);

    // Nothing pending yet: the device page shows the support period and no update.
    let (status, page) = alice.page(&format!("/devices/{}", devices[0].id)).await;
    assert_eq!(status, 200);
    assert!(page.contains("Security updates until") && page.contains("Five years of fixes."), "{page}");
    assert!(!page.contains("pending-update"), "nothing pending yet");

    // A rollout started from the page: a canary, then everyone.
    let (status, to) =
        owner.form("/rollouts", &[("release", "test-model-1.1.0.img"), ("canary", "1"), ("percents", "100")]).await;
    assert_eq!((status, to.as_str()), (303, "/updates?notice=started"));
    let (status, _) = owner.form("/rollouts", &[("release", "test-model-1.1.0.img"), ("percents", "50, 40")]).await;
    assert_eq!(status, 422, "waves must rise to 100");
    let id = hub.get("/api/v1/rollouts").await.expect("list").1["rollouts"][0]["id"].as_str().expect("id").to_owned();

    // The canary rolls back: the failure gate pauses the rollout, and the page says why.
    let mut canary = None;
    for (i, d) in devices.iter().enumerate() {
        if check_in(&hub, d, None, json!([])).await.is_some() {
            canary = Some(i);
        }
    }
    let canary = canary.expect("one device is the canary");
    let other = &devices[1 - canary];
    check_in(&hub, &devices[canary], None, json!([{"rollout": id, "state": "rolled_back", "detail": "health"}])).await;
    hub.hub.state.updates.run_engine().await.expect("engine");
    let (status, page) = owner.page("/updates").await;
    assert_eq!(status, 200);
    let row = page.split(&format!("id=\"rollout-{id}\"")).nth(1).expect("the rollout's row").to_owned();
    assert!(row.contains("paused") && row.contains("health gate: 1 of 1 devices"), "{row}");
    assert!(row.contains(&format!("/rollouts/{id}/resume")) && !row.contains("/pause\""), "{row}");
    assert!(page.contains("Closes a crash over the local network.") && page.contains("Five years of fixes."));

    // A support account or a consumer cannot act on rollouts; a stale CSRF token changes nothing.
    assert_eq!(alice.form(&format!("/rollouts/{id}/resume"), &[]).await.0, 403);
    let stale = Browser {
        csrf: "stale".into(),
        ..Browser::sign_in(&hub, hearth_test_support::OWNER_EMAIL, hearth_test_support::OWNER_PASSWORD).await
    };
    assert_eq!(stale.form(&format!("/rollouts/{id}/resume"), &[]).await.0, 403);
    assert_eq!(hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view").1["state"], "paused");

    // The owner resumes from the page; the other device is told and its owner sees the update waiting.
    let (status, to) = owner.form(&format!("/rollouts/{id}/resume"), &[]).await;
    assert_eq!((status, to.as_str()), (303, "/updates?notice=resume"));
    assert_eq!(hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view").1["state"], "running");
    assert!(check_in(&hub, other, None, json!([])).await.is_some(), "the next wave is open");
    let (_, page) = alice.page(&format!("/devices/{}", other.id)).await;
    assert!(page.contains("Update to 1.1.0 (security)"), "{page}");
    assert!(page.contains("Closes a crash over the local network.") && page.contains("restarts, about 40 s"), "{page}");
    assert!(page.contains("installed by") && page.contains("action=\"/devices/"), "a deadline and the form: {page}");

    // Alice postpones by two days; the API says so too, with one postponement fewer left.
    let (_, before) = hub.get(&format!("/api/v1/devices/{}/update", other.id)).await.expect("update");
    let left = before["pending"]["postpones_left"].as_u64().expect("left");
    let (status, to) = alice.form(&format!("/devices/{}/postpone", other.id), &[("days", "2")]).await;
    assert_eq!((status, to), (303, format!("/devices/{}?update=postponed", other.id)));
    let (_, after) = hub.get(&format!("/api/v1/devices/{}/update", other.id)).await.expect("update");
    assert_eq!(after["pending"]["postpones_left"].as_u64(), Some(left - 1), "{after}");
    assert!(after["pending"]["postponed_until"].as_i64().is_some(), "{after}");
    assert_eq!(after["support_until"].as_i64(), Some(until));
    let (_, page) = alice.page(&format!("/devices/{}?update=postponed", other.id)).await;
    assert!(page.contains("The update is postponed.") && page.contains("postponed until"), "{page}");
    // Out-of-range days are refused and change nothing.
    assert_eq!(alice.form(&format!("/devices/{}/postpone", other.id), &[("days", "99")]).await.0, 422);
    let (_, same) = hub.get(&format!("/api/v1/devices/{}/update", other.id)).await.expect("update");
    assert_eq!(same["pending"]["postpones_left"], after["pending"]["postpones_left"]);

    // The owner aborts: the update is no longer pending, and the audit log has each step.
    let (status, _) = owner.form(&format!("/rollouts/{id}/abort"), &[]).await;
    assert_eq!(status, 303);
    let (_, view) = hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("view");
    assert_eq!(view["reason"], format!("aborted by {}", hearth_test_support::OWNER_EMAIL), "who, readably");
    let (_, page) = alice.page(&format!("/devices/{}", other.id)).await;
    assert!(!page.contains("pending-update"), "aborted: nothing pending");
    let (_, log) = hub.get("/api/v1/audit-log").await.expect("log");
    let actions: Vec<&str> = log.as_array().expect("log").iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["rollout_created", "rollout_resumed", "update_postponed", "rollout_aborted"] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
}
