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
