//! Power cuts during updates: `kill -9` a real `hearth-agent` (directory A/B slots, simulated bootloader) at
//! random moments while rollouts keep giving it new releases, so that cuts land in the download, the install,
//! the switch, the first (trial) boot and the commit. After every cut the image the next boot runs must be one
//! the maker signed, whole; at the end the device must be back in contact with the hub and finish its update.
//! 20 trials in short mode (every `cargo test`, so CI), 200 in long mode.

use std::time::Duration;

use hearth_test_support::eventually;

use super::{pick, report};
use crate::updates::{next_boot_is_signed, phase_of, rig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_any_moment_of_an_update_leaves_a_signed_image_and_the_device_comes_back() {
    let _turn = super::ONE_AT_A_TIME.lock().await;
    let versions = ["1.1.0", "1.2.0", "1.3.0", "1.4.0"];
    let more: Vec<(&str, u64, usize, bool)> = versions.iter().map(|v| (*v, 1, 2 << 20, false)).collect();
    let rig = rig(1, &more).await;
    let device = &rig.devices[0];
    let trials = pick(20, 200);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    eprintln!("update power cuts: seed {seed}");
    let mut rng = seed | 1;
    let mut next_release = 1;
    let mut current: Option<String> = None;
    let mut phases = std::collections::BTreeMap::<String, u64>::new();
    {
        // First start: enrol and come up on the factory image.
        let _agent = rig.agent(0);
        rig.enrolled().await;
    }
    for trial in 0..trials {
        // Keep a rollout going: a finished, paused or failed one is replaced by the next release.
        let state = match &current {
            Some(id) => rig.hub.get(&format!("/api/v1/rollouts/{id}")).await.expect("rollout").1["state"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            None => "none".into(),
        };
        if state != "running" {
            if state == "paused"
                && let Some(id) = &current
            {
                let (status, _) =
                    rig.hub.post(&format!("/api/v1/rollouts/{id}/abort"), serde_json::json!({})).await.expect("abort");
                assert_eq!(status, 200);
            }
            current = Some(rig.roll_out(next_release).await);
            next_release = next_release % versions.len() + 1;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Each trial aims at one moment: the cut comes a random 0-15 ms after the device enters that phase (or at
        // a random time for "any"), watching its own state files every millisecond.
        let aim = ["downloading", "installing", "switched", "trial boot", "any"][trial % 5];
        let mut agent = rig.agent(0);
        let started = std::time::Instant::now();
        if aim == "any" {
            tokio::time::sleep(Duration::from_millis(rng % 2_500)).await;
        } else {
            while phase_of(device) != aim && started.elapsed() < Duration::from_secs(8) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng % 16)).await;
        }
        let at = phase_of(device);
        *phases.entry(at.clone()).or_default() += 1;
        let cut_after = started.elapsed();
        let _ = agent.0.kill();
        let _ = agent.0.wait();
        let (slot, signed) = next_boot_is_signed(&device.slots, &rig.releases);
        assert!(
            signed,
            "trial {trial} (cut after {cut_after:?}, during {at}): the next boot's slot {slot} is not a signed image"
        );
    }

    // Back on: the device reaches the hub and its rollout ends (completed, or paused by a rollback the cuts
    // caused), and what it runs is signed.
    let _agent = rig.agent(0);
    let id = current.expect("a rollout");
    let path = format!("/api/v1/rollouts/{id}");
    let ended = eventually(Duration::from_secs(180), || async {
        let (_, view) = rig.hub.get(&path).await.ok()?;
        matches!(view["state"].as_str(), Some("completed" | "paused")).then_some(view)
    })
    .await;
    let Some(ended) = ended else {
        let (_, view) = rig.hub.get(&path).await.expect("view");
        let state = std::fs::read_to_string(device.state.join("update/state.json")).unwrap_or_default();
        let boot = std::fs::read_to_string(device.slots.join("bootloader.json")).unwrap_or_default();
        panic!("the rollout never ended after the cuts (seed {seed}): {view}\nstate {state}\nbootloader {boot}");
    };
    let (slot, signed) = next_boot_is_signed(&device.slots, &rig.releases);
    assert!(signed, "after the trials the running slot {slot} is not a signed image");
    let (_, body) = rig.hub.get(&format!("/api/v1/devices/{}", device.id)).await.expect("device");
    let back = eventually(Duration::from_secs(30), || async {
        let (_, body) = rig.hub.get(&format!("/api/v1/devices/{}", device.id)).await.ok()?;
        (body["connected"] == true).then_some(())
    })
    .await;
    assert!(back.is_some(), "the device is not back in contact with the hub: {body}");
    let hit = |p: &str| phases.get(p).copied().unwrap_or(0);
    assert!(hit("downloading") + hit("installing") + hit("switched") > 0, "no cut landed in an install: {phases:?}");
    assert!(hit("trial boot") > 0, "no cut landed in a first boot: {phases:?}");
    report(
        "update_power_cut",
        trials,
        "after every kill -9 the next boot's image is signed and whole; the device reconnects and its rollout ends",
        serde_json::json!({"seed": seed, "cut_during": phases, "last_rollout": ended["state"], "counts": ended["counts"]}),
    );
}
