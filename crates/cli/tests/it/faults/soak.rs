//! Soak: a fleet of simulated devices streams telemetry through one hub for a long time (1,000 devices for
//! 30 minutes in long mode; 100 devices for 40 s in short mode). The hub's memory must not drift (< 5 % between
//! the first and last quarter of the run, after warm-up, in long mode), its file descriptors stay flat, and
//! no agent sees an error, a refusal or a dropped message.

use std::time::{Duration, Instant};

use hearth_simulator::{Fleet, FleetConfig};
use hearth_test_support::write_bootstraps;

use super::{Mode, fd_count, mode, pick, report, rss_kib};
use crate::support::{HubProcess, free_ports, manufacture, setup};

#[tokio::test]
async fn a_fleet_streaming_for_a_long_time_leaves_hub_memory_and_descriptors_flat() {
    let _turn = super::ONE_AT_A_TIME.lock().await;
    let devices = pick(100, 1_000);
    let run = Duration::from_secs(pick(40, 30 * 60));
    let dir = tempfile::tempdir().expect("dir");
    let (https, mqtts) = free_ports();
    let hub = HubProcess::start(&dir.path().join("hub"), https, mqtts);
    let token = setup(&hub);
    let mut paths = Vec::new();
    let mut left = devices;
    while left > 0 {
        let n = left.min(1_000);
        let made = manufacture(&hub, &token, "soak", n).await;
        paths.extend(
            write_bootstraps(&made.bootstrap_files(), &dir.path().join(format!("boot-{left}"))).expect("bootstraps"),
        );
        left -= n;
    }
    let mut config = FleetConfig::new(paths, dir.path().join("fleet"));
    config.interval = Duration::from_secs(2);
    config.ramp = Duration::from_secs(pick(5, 20));
    let fleet = Fleet::start(config);

    let pid = hub.pid();
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_secs(pick(2, 10))).await;
        samples.push((started.elapsed().as_secs_f64(), rss_kib(pid), fd_count(pid)));
    }
    let report_fleet = fleet.stop().await;
    assert!(
        report_fleet.errors.is_empty(),
        "agent errors: {:?}",
        &report_fleet.errors[..report_fleet.errors.len().min(5)]
    );
    let t = report_fleet.totals;
    assert_eq!(report_fleet.started, devices, "every agent ran");
    assert_eq!((t.rejected, t.dropped), (0, 0), "no refusals, nothing dropped");
    assert!(t.acked > 0 && t.acked + 10 * devices as u64 >= t.queued, "acked {} of {} queued", t.acked, t.queued);

    // Compare the second quarter (after ramp and warm-up) with the last quarter.
    let q = samples.len() / 4;
    let avg = |s: &[(f64, u64, usize)]| s.iter().map(|x| x.1 as f64).sum::<f64>() / s.len().max(1) as f64;
    let (early, late) = (avg(&samples[q..2 * q]), avg(&samples[samples.len() - q..]));
    let drift = if early > 0.0 { (late - early) / early * 100.0 } else { 0.0 };
    let fds: Vec<usize> = samples[q..].iter().map(|x| x.2).collect();
    let (fd_min, fd_max) = (fds.iter().min().copied().unwrap_or(0), fds.iter().max().copied().unwrap_or(0));
    if mode() == Mode::Long {
        assert!(drift < 5.0, "hub RSS drifted {drift:.1} % ({early:.0} → {late:.0} KiB)");
    }
    assert!(fd_max <= fd_min + 20, "descriptors not flat: {fd_min}..{fd_max}");
    report(
        "soak: a fleet streaming telemetry",
        1,
        "no agent errors, refusals or drops; hub RSS drift < 5 % (long mode); descriptors flat",
        serde_json::json!({
            "devices": devices, "seconds": run.as_secs(), "messages_acked": t.acked, "connects": t.connects,
            "rss_kib_second_quarter": early as u64, "rss_kib_last_quarter": late as u64,
            "rss_drift_percent": (drift * 10.0).round() / 10.0, "fds_min": fd_min, "fds_max": fd_max,
        }),
    );
}
