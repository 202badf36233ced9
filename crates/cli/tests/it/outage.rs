//! Outage: stop the hub while agents publish, restart it. Every message the agents queued arrives, in order,
//! none twice, and none is dropped.

use std::time::Duration;

use hearth_agent::{Agent, AgentConfig};
use hearth_test_support::{eventually, write_bootstraps};

use crate::support::{HubProcess, free_ports, manufacture, setup, stored_seqs};

#[tokio::test]
async fn queued_messages_arrive_in_order_once_after_the_hub_returns() {
    let dir = tempfile::tempdir().expect("dir");
    let (https, mqtts) = free_ports();
    let data = dir.path().join("hub");
    let mut hub = HubProcess::start(&data, https, mqtts);
    let token = setup(&hub);
    let made = manufacture(&hub, &token, "outage", 3).await;
    let paths = write_bootstraps(&made.bootstrap_files(), &dir.path().join("boot")).expect("bootstraps");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut agents = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let mut config = AgentConfig::new(dir.path().join(format!("agent-{i}")));
        config.bootstrap_path = Some(path.clone());
        config.interval = Duration::from_millis(100);
        config.backoff_min = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(500);
        let agent = Agent::new(config).await.expect("agent enrols");
        let stats = agent.stats();
        let id = agent.device_id().to_string();
        let rx = stop_rx.clone();
        agents.push((id, stats, tokio::spawn(async move { agent.run(rx).await })));
    }
    let all_acked = |min: u64| {
        let stats: Vec<_> = agents.iter().map(|(_, s, _)| s.clone()).collect();
        move || {
            let stats = stats.clone();
            async move { stats.iter().all(|s| s.snapshot().acked >= min).then_some(()) }
        }
    };
    assert!(eventually(Duration::from_secs(20), all_acked(5)).await.is_some(), "agents did not start publishing");

    // Outage: the hub dies hard, the agents keep sampling into their queues.
    hub.kill9();
    let before: Vec<u64> = agents.iter().map(|(_, s, _)| s.snapshot().queued).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during: Vec<u64> = agents.iter().map(|(_, s, _)| s.snapshot().queued).collect();
    assert!(before.iter().zip(&during).all(|(b, d)| d >= &(b + 10)), "agents kept queueing: {before:?} → {during:?}");

    hub = HubProcess::start(&data, https, mqtts);
    // Wait until every queued message is acknowledged, then stop the agents.
    let drained = eventually(Duration::from_secs(30), || {
        let stats: Vec<_> = agents.iter().map(|(_, s, _)| s.clone()).collect();
        async move {
            stats
                .iter()
                .all(|s| {
                    let x = s.snapshot();
                    x.acked > 0 && x.acked + x.rejected + x.dropped >= x.queued
                })
                .then_some(())
        }
    })
    .await;
    assert!(drained.is_some(), "queues did not drain after the hub returned");
    stop_tx.send(true).expect("stop");
    for (_, _, task) in agents.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    for (id, stats, _) in &agents {
        let s = stats.snapshot();
        assert_eq!((s.dropped, s.rejected), (0, 0), "{id}: nothing may be dropped or rejected");
        let stored = stored_seqs(&hub, &token, id).await;
        let seqs: Vec<i64> = stored.iter().map(|(s, _)| *s).collect();
        // A new queue starts at the wall-clock milliseconds (so a recreated queue never repeats a seq): the
        // stored seqs are `queued` consecutive numbers from the first.
        let first = seqs.first().copied().unwrap_or(0);
        let expected: Vec<i64> = (first..first + s.queued as i64).collect();
        assert_eq!(seqs, expected, "{id}: every queued message exactly once, no gaps");
        // In order: the hub received them in sequence order.
        assert!(stored.windows(2).all(|w| w[0].1 <= w[1].1), "{id}: messages arrived out of order");
        assert!(s.connects >= 2, "{id}: the agent reconnected");
    }
}
