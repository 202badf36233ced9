//! Disk full: the hub's data directory is a small tmpfs, filled by QoS 1 ingest until SQLite gets ENOSPC.
//! Nothing acknowledged may be missing, the hub must refuse (not stall, not crash) while the disk is full, its
//! memory must stay bounded, and ingest must resume by itself once space is freed. Needs root (to mount the
//! tmpfs); skipped loudly otherwise, and never in CI.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Device, Tally, integrity_check, publish_until, report, require, rss_kib};
use crate::support::{HubProcess, free_ports, setup, stored_seqs};

/// Unmounts the tmpfs however the test ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_new_messages_loses_nothing_acknowledged_and_ingest_resumes() {
    let _turn = super::ONE_AT_A_TIME.lock().await;
    let fault = "disk full (tmpfs data directory)";
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("hub");
    std::fs::create_dir_all(&data).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs"])
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !require(mounted, "permission to mount a tmpfs (root)", fault) {
        return;
    }
    let _mount = Mount(data.clone());
    let (https, mqtts) = free_ports();
    // No free-space floor: this fault is about what happens when SQLite itself hits ENOSPC.
    let extra = "[telemetry]\nmin_free_disk_mb = 0\nmax_bytes_per_device_per_day = 0\n\
                 [mqtt]\npublish_rate_per_sec = 100000\npublish_burst = 100000\n";
    let hub = HubProcess::start_with(&data, https, mqtts, extra);
    let token = setup(&hub);
    let device = Device::enrol(&hub, &token, &dir.path().join("device")).await;
    // Ballast the test frees later to let ingest resume.
    let ballast = data.join("ballast");
    std::fs::write(&ballast, vec![0u8; 6 << 20]).expect("ballast");

    let rss_before = rss_kib(hub.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let (stop, pid) = (stop.clone(), hub.pid());
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    // Fill the disk: publish 12 KB messages until the hub has refused plenty (or 90 s pass), in 2 s slices so
    // the test can look at the tally in between.
    let mut tally = Tally::default();
    let mut next_seq = 1;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        let slice = Arc::new(AtomicBool::new(false));
        let s2 = slice.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            s2.store(true, Ordering::Relaxed);
        });
        let resend: Vec<i64> = std::mem::take(&mut tally.refused).into_iter().collect();
        publish_until(&device, 12_000, resend, &mut next_seq, &slice, &mut tally).await;
        let _ = timer.await;
        if tally.refusals_by_code.values().sum::<u64>() >= 50 {
            break;
        }
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let refusals: u64 = tally.refusals_by_code.values().sum();
    assert!(refusals >= 50, "the disk never filled: {} acked, {refusals} refused", tally.acked.len());
    assert!(!tally.refusals_by_code.contains_key(&0x00), "success is never a refusal");
    assert!(hub_alive(&hub), "the hub must survive a full disk");
    let acked_when_full = tally.acked.len();

    // Free space: ingest resumes by itself; the device resends what was refused.
    std::fs::remove_file(&ballast).expect("free the ballast");
    let freed = Instant::now();
    let resend: Vec<i64> = std::mem::take(&mut tally.refused).into_iter().collect();
    let resend_count = resend.len();
    let resend_set: std::collections::BTreeSet<i64> = resend.iter().copied().collect();
    // Resend only (a stop flag already set: no new messages; the disk is still nearly full), until everything
    // refused is stored or 60 s pass.
    let resend_only = AtomicBool::new(true);
    publish_until(&device, 12_000, resend, &mut next_seq, &resend_only, &mut tally).await;
    let resumed_secs = freed.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = watch.await.unwrap_or(0);
    assert!(
        resend_set.iter().any(|s| tally.acked.contains(s)),
        "ingest did not resume after space was freed ({} still refused)",
        tally.refused.len()
    );

    let stored: std::collections::BTreeSet<i64> =
        stored_seqs(&hub, &token, &device.id).await.into_iter().map(|(s, _)| s).collect();
    let lost: Vec<&i64> = tally.acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged messages missing, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    let grown_mb = peak.saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 64, "hub memory grew by {grown_mb} MB while the disk was full");
    drop(hub);
    assert_eq!(integrity_check(&data.join("hearth.db")).await, "ok");
    report(
        fault,
        1,
        "refusals (never a success PUBACK) while full, no acknowledged message lost, hub alive, RSS bounded, ingest \
         resumes after space is freed, integrity_check ok",
        serde_json::json!({
            "acked_before_full": acked_when_full, "refusals_while_full": refusals,
            "refusal_codes": tally.refusals_by_code.iter().map(|(k, v)| (format!("{k:#04x}"), v)).collect::<std::collections::BTreeMap<_, _>>(),
            "fill_seconds": fill_secs, "resent_after_freeing": resend_count,
            "resend_phase_seconds": resumed_secs, "acked_total": tally.acked.len(),
            "hub_rss_before_kib": rss_before, "hub_rss_peak_kib": peak,
        }),
    );
}

fn hub_alive(hub: &HubProcess) -> bool {
    std::path::Path::new(&format!("/proc/{}", hub.pid())).exists() && rss_kib(hub.pid()) > 0
}
