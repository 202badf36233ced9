//! The database unavailable: another process holds SQLite's write lock for 10 s (30 s in long mode) while a
//! device streams QoS 1 telemetry. The hub must refuse new messages with a reason code instead of stalling,
//! keep its memory bounded, lose nothing it acknowledged, and resume by itself when the lock goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Device, Tally, integrity_check, percentile, pick, publish_until, report, rss_kib};
use crate::support::{HubProcess, free_ports, setup, stored_seqs};

#[tokio::test]
async fn a_locked_database_for_seconds_refuses_then_resumes_and_loses_nothing() {
    let _turn = super::ONE_AT_A_TIME.lock().await;
    let fault = "database unavailable (write lock held by another process)";
    let hold = Duration::from_secs(pick(10, 30));
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("hub");
    let (https, mqtts) = free_ports();
    let extra = "[mqtt]\npublish_rate_per_sec = 100000\npublish_burst = 100000\n[telemetry]\nmax_bytes_per_device_per_day = 0\n";
    let hub = HubProcess::start_with(&data, https, mqtts, extra);
    let token = setup(&hub);
    let device = Device::enrol(&hub, &token, &dir.path().join("device")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let pid = hub.pid();
    let rss_before = rss_kib(pid);
    let db = data.join("hearth.db");
    let locker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            use sqlx::Connection as _;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut conn =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.expect("open the db");
            sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.expect("lock");
            let locked_at = Instant::now();
            let mut peak = 0;
            while locked_at.elapsed() < hold {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sqlx::query("ROLLBACK").execute(&mut conn).await.expect("unlock");
            let released = Instant::now();
            // Keep publishing for a while after the release, then stop.
            tokio::time::sleep(Duration::from_secs(8)).await;
            stop.store(true, Ordering::Relaxed);
            (peak, released)
        })
    };
    let mut tally = Tally::default();
    let mut next_seq = 1;
    let started = Instant::now();
    publish_until(&device, 500, Vec::new(), &mut next_seq, &stop, &mut tally).await;
    let (peak, released) = locker.await.expect("locker");
    let refusals: u64 = tally.refusals_by_code.values().sum();
    assert!(refusals > 0, "the hub never refused while the database was locked");
    assert!(tally.refused.is_empty(), "{} refused messages were never stored after the release", tally.refused.len());

    let stored: std::collections::BTreeSet<i64> =
        stored_seqs(&hub, &token, &device.id).await.into_iter().map(|(s, _)| s).collect();
    let lost: Vec<&i64> = tally.acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged messages missing", lost.len());
    assert_eq!(stored.len(), tally.acked.len(), "stored exactly what was acknowledged");
    let grown_mb = peak.saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 64, "hub memory grew by {grown_mb} MB while the database was locked");
    let mut lat = tally.latencies_ms.clone();
    lat.sort_unstable();
    let p = |q: f64| percentile(&lat, q);
    drop(hub);
    assert_eq!(integrity_check(&data.join("hearth.db")).await, "ok");
    report(
        fault,
        1,
        "refused with a reason code while locked (no stall), nothing acknowledged lost, every refused message stored \
         after the release, RSS bounded, integrity_check ok",
        serde_json::json!({
            "lock_held_seconds": hold.as_secs(), "run_seconds": started.elapsed().as_secs_f64(),
            "acked": tally.acked.len(), "refusals": refusals,
            "refusal_codes": tally.refusals_by_code.iter().map(|(k, v)| (format!("{k:#04x}"), v)).collect::<std::collections::BTreeMap<_, _>>(),
            "puback_ms_p50": p(0.5), "puback_ms_p99": p(0.99), "puback_ms_max": p(1.0),
            "seconds_after_release_until_stop": released.elapsed().as_secs_f64(),
            "hub_rss_before_kib": rss_before, "hub_rss_peak_kib": peak, "connects": tally.connects,
        }),
    );
}
