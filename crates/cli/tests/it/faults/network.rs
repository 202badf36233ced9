//! Network faults between agents and the hub: connections cut at random by a proxy, a half-open link (the
//! proxy black-holes traffic while the connections stay open), the hub killed and restarted behind a fleet that
//! must come back spread out by its backoff jitter, and a reconnect storm of as many devices as this process's
//! open-file limit allows. Whatever happens on the wire, every message an agent queued must be stored exactly
//! once, and the hub must stay up.
//!
//! The [`Proxy`] gives each agent its own listening port (written into its bootstrap file as `mqtt_port`), so
//! every connection is known by its agent; the TLS server name stays 127.0.0.1, so the hub's certificate still
//! verifies. The agents sample from a [`Counter`] that the test mutes before stopping them, so their queues
//! drain to empty and the stored seqs can be compared with exactly the seqs each queue handed out (a new queue
//! starts at the clock, not at 1). The four faults run one at a time: a reconnect storm in one would skew the
//! timings another measures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_agent::backoff::Jitter;
use hearth_agent::queue::Queue;
use hearth_agent::{Agent, AgentConfig, AgentStats, TelemetrySource};
use hearth_proto::uplink::{Fields, Value};
use hearth_simulator::{Fleet, FleetConfig};
use hearth_test_support::{eventually, write_bootstraps};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{fd_count, percentile, pick, report, rss_kib};
use crate::support::{HubProcess, free_ports, manufacture, setup, stored_seqs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_cuts_connections_at_random_loses_no_qos1_message() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let began = Instant::now();
    let n = pick(8, 50);
    let chaos = pick(Duration::from_secs(15), Duration::from_secs(300));
    let net = BehindProxy::start("netcut", n).await;
    let agents = Agents::start(net.dir.path(), &net.boots, |c| {
        c.interval = Duration::from_millis(50);
        c.backoff_min = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(2);
    })
    .await;
    agents.wait_connected(Duration::from_secs(30)).await;

    let seed = seed();
    let mut rng = Jitter::with_seed(seed);
    let until = Instant::now() + chaos;
    let mut cuts = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100 + rng.up_to(600))).await;
        cuts += u64::from(net.proxy.cut_random(&mut rng));
    }
    let connects: u64 = agents.connects().iter().sum();
    let drain = agents.drain(Duration::from_secs(60)).await;
    let checked = agents.stop_and_verify(&net.hub, &net.token).await;
    assert!(cuts > 0, "the proxy never found a connection to cut");

    let events = security_events(&net.hub, &net.token).await;
    assert!(!events.contains_key("rate_limited"), "a paced agent never trips the hub's rate limit: {events:?}");
    report(
        "connections cut at random by a proxy (QoS 1 telemetry)",
        1,
        "every queued message stored exactly once (stored seqs = the seqs each queue handed out), none dropped or \
         rejected; the agents reconnect by themselves",
        serde_json::json!({
            "devices": n, "chaos_s": chaos.as_secs(), "cuts": cuts,
            "reconnects": connects.saturating_sub(n as u64), "proxy_accepts": net.proxy.accepts().len(),
            "messages": checked.messages, "lost": 0, "duplicates": 0, "renumbered": checked.renumbered,
            "stored_out_of_arrival_order": checked.out_of_order, "drain_ms": drain.as_millis() as u64,
            "hub_security_events": events, "seed": seed, "runtime_ms": began.elapsed().as_millis() as u64,
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_is_detected_and_nothing_is_lost() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let began = Instant::now();
    let n = 3;
    let holes = pick(1, 6);
    let hole = Duration::from_secs(15);
    // The agent's keep-alive is configurable (whole seconds on the wire); the hub accepts anything from 1 s to
    // its maximum. A short connect timeout keeps attempts made into the black hole from outliving it by much.
    let keep_alive = Duration::from_secs(2);
    let interval = Duration::from_millis(50);
    // The agent pings after a keep-alive in which the hub sent nothing, and gives up a keep-alive later: it
    // notices a dead link within two keep-alives, however much it publishes meanwhile. (Before, only its own
    // silence triggered a ping, so it noticed only once its inflight window was full: 32 × interval + 2 ×
    // keep-alive, about 380 s at the defaults.)
    let expected = keep_alive * 2;
    let net = BehindProxy::start("halfopen", n).await;
    let agents = Agents::start(net.dir.path(), &net.boots, |c| {
        c.interval = interval;
        c.backoff_min = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(2);
        c.keep_alive = keep_alive;
        c.connect_timeout = Duration::from_secs(3);
    })
    .await;
    agents.wait_connected(Duration::from_secs(30)).await;

    let mut detect_ms = Vec::new();
    let mut back_ms = Vec::new();
    for trial in 0..holes {
        // Normal traffic first, so every agent has a working session when the link goes dead.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = agents.connects();
        let start = Instant::now();
        net.proxy.black_hole(true);
        tokio::time::sleep(hole).await;
        net.proxy.black_hole(false);
        let end = Instant::now();
        // The agent gave up on the dead session when it opened its next connection.
        let accepts = net.proxy.accepts();
        for agent in 0..n {
            let first = accepts.iter().filter(|(a, t)| *a == agent && *t >= start).map(|(_, t)| *t).min();
            let first = first.unwrap_or_else(|| {
                panic!(
                    "trial {trial}: agent {agent} did not notice a link dead for {hole:?} (keep-alive {keep_alive:?})"
                )
            });
            assert!(first < end, "trial {trial}: agent {agent} noticed the dead link only after it came back");
            assert!(
                first - start <= expected + keep_alive,
                "trial {trial}: agent {agent} took {:?} to notice a dead link (keep-alive {keep_alive:?})",
                first - start
            );
            detect_ms.push((first - start).as_millis() as u64);
        }
        // Back: a new CONNACK (none can happen inside the black hole).
        let back = eventually(Duration::from_secs(30), || {
            let now = agents.connects();
            let before = before.clone();
            async move { now.iter().zip(&before).all(|(n, b)| n > b).then_some(()) }
        })
        .await;
        assert!(back.is_some(), "trial {trial}: the agents did not reconnect within 30 s after the link returned");
        back_ms.push(end.elapsed().as_millis() as u64);
    }
    // After a hole each agent resends some 300 queued messages, paced below the hub's default 100/s (burst
    // 200): no agent may trip the hub's rate limit.
    let drain = agents.drain(Duration::from_secs(60)).await;
    let checked = agents.stop_and_verify(&net.hub, &net.token).await;
    detect_ms.sort_unstable();

    let events = security_events(&net.hub, &net.token).await;
    assert!(!events.contains_key("rate_limited"), "a paced agent never trips the hub's rate limit: {events:?}");
    report(
        "half-open link: the proxy black-holes traffic, connections stay open",
        holes,
        "every agent detects the dead link while it is dead (keep-alive), reconnects after it, and every queued \
         message is stored exactly once, none dropped or rejected",
        serde_json::json!({
            "devices": n, "black_hole_s": hole.as_secs(), "keep_alive_s": keep_alive.as_secs(),
            "interval_ms": interval.as_millis() as u64,
            "expected_detect_ms": expected.as_millis() as u64,
            "detect_ms": { "min": detect_ms.first(), "p50": percentile(&detect_ms, 0.5), "max": detect_ms.last() },
            "detect_ms_all": detect_ms, "all_back_after_link_ms": back_ms,
            "messages": checked.messages, "lost": 0, "duplicates": 0, "renumbered": checked.renumbered,
            "drain_ms": drain.as_millis() as u64, "hub_security_events": events,
            "runtime_ms": began.elapsed().as_millis() as u64,
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_back_off_with_jitter_after_a_hub_restart() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let began = Instant::now();
    let n = pick(30, 200);
    let (backoff_min, backoff_max) = (Duration::from_millis(500), Duration::from_secs(5));
    let mut net = BehindProxy::start("restart", n).await;
    let agents = Agents::start(net.dir.path(), &net.boots, |c| {
        c.interval = Duration::from_millis(500);
        c.backoff_min = backoff_min;
        c.backoff_max = backoff_max;
    })
    .await;
    agents.wait_connected(Duration::from_secs(60)).await;

    let before = agents.connects();
    let killed = Instant::now();
    net.hub.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    net.restart_hub().await;
    let ready = restarted.elapsed();

    // Each agent's first successful reconnect (its next CONNACK), polled every 10 ms.
    let mut back: Vec<Option<Instant>> = vec![None; n];
    let deadline = restarted + Duration::from_secs(30);
    while back.iter().any(Option::is_none) && Instant::now() < deadline {
        let now = Instant::now();
        for ((b, c), before) in back.iter_mut().zip(agents.connects()).zip(&before) {
            if b.is_none() && c > *before {
                *b = Some(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = back.iter().filter(|b| b.is_none()).count();
    assert_eq!(missing, 0, "{missing} of {n} agents were not back within 30 s of the restart");
    let mut delays: Vec<u64> =
        back.iter().flatten().map(|t| t.saturating_duration_since(restarted).as_millis() as u64).collect();
    delays.sort_unstable();

    // Attempts = connections the proxy accepted, in the first 10 s after the kill.
    tokio::time::sleep_until(killed + Duration::from_secs(10)).await;
    let window = killed..killed + Duration::from_secs(10);
    let mut attempts: Vec<u64> = net
        .proxy
        .accepts()
        .iter()
        .filter(|(_, t)| window.contains(t))
        .map(|(_, t)| (*t - killed).as_millis() as u64)
        .collect();
    attempts.sort_unstable();
    let peak_100ms = attempts.iter().map(|a| attempts.iter().filter(|b| (*a..a + 100).contains(*b)).count()).max();

    let (p10, p50, p90) = (percentile(&delays, 0.1), percentile(&delays, 0.5), percentile(&delays, 0.9));
    assert!(
        p90 - p10 > 200,
        "reconnects not spread by jitter: p10 {p10} ms, p90 {p90} ms after the restart (backoff max {backoff_max:?})"
    );
    assert!(peak_100ms.unwrap_or(0) < n, "all {n} agents tried to reconnect within the same 100 ms");
    let drain = agents.drain(Duration::from_secs(60)).await;
    let checked = agents.stop_and_verify(&net.hub, &net.token).await;

    let events = security_events(&net.hub, &net.token).await;
    assert!(!events.contains_key("rate_limited"), "a paced agent never trips the hub's rate limit: {events:?}");
    report(
        "hub killed (kill -9) and restarted after 2 s behind a fleet",
        1,
        "all agents back within 30 s of the restart, their reconnects spread by backoff jitter (p90 - p10 > 200 ms, \
         never all in one 100 ms), every queued message stored exactly once",
        serde_json::json!({
            "devices": n, "backoff_ms": [backoff_min.as_millis() as u64, backoff_max.as_millis() as u64],
            "hub_ready_after_restart_ms": ready.as_millis() as u64,
            "reconnect_after_restart_ms": { "p10": p10, "p50": p50, "p90": p90, "max": delays.last() },
            "attempts_first_10s_after_kill": { "count": attempts.len(), "p10_ms": percentile(&attempts, 0.1),
                "p50_ms": percentile(&attempts, 0.5), "p90_ms": percentile(&attempts, 0.9),
                "max_ms": attempts.last(), "peak_per_100ms": peak_100ms },
            "messages": checked.messages, "lost": 0, "duplicates": 0, "drain_ms": drain.as_millis() as u64,
            "hub_security_events": events, "runtime_ms": began.elapsed().as_millis() as u64,
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_after_a_hub_restart_all_devices_return() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let began = Instant::now();
    // A connected in-process device holds about two descriptors here (its socket and its queue file); spend at
    // most 40% of the limit on them, leaving the rest to the test harness and the other tests in this process.
    let limit = open_files_soft_limit();
    let budget = (limit * 4 / 10 / 2) as usize;
    let n = pick(budget.min(500), budget);
    let bound = pick(Duration::from_secs(120), Duration::from_secs(600));

    let dir = tempfile::tempdir().expect("dir");
    let (https, mqtts) = free_ports();
    let data = dir.path().join("hub");
    let mut hub = HubProcess::start(&data, https, mqtts);
    let token = setup(&hub);
    let mut files = Vec::new();
    while files.len() < n {
        let made = manufacture(&hub, &token, "storm", (n - files.len()).min(10_000)).await;
        files.extend(made.bootstrap_files());
    }
    let paths = write_bootstraps(&files, &dir.path().join("boot")).expect("bootstraps");
    let mut config = FleetConfig::new(paths, dir.path().join("fleet"));
    config.interval = Duration::from_secs(5);
    // Enrolment spread over 20 ms per device; a 30 s backoff cap (the agent's default is 60 s) keeps the
    // 120 s bound meaningful.
    config.ramp = Duration::from_millis(20 * n as u64);
    config.backoff = (Duration::from_secs(1), Duration::from_secs(30));
    let fleet = Fleet::start(config);

    let up = eventually(Duration::from_secs(60) + Duration::from_millis(40 * n as u64), || {
        let connected = fleet.stats().iter().filter(|s| s.snapshot().connects >= 1).count();
        async move { (connected == n).then_some(()) }
    })
    .await;
    assert!(up.is_some(), "not all {n} devices connected at first");
    let first_up = began.elapsed();
    assert_eq!(connected_count(&hub, &token).await, n, "the hub lists every device as connected");
    let fds_test = fd_count(std::process::id());
    let (hub_rss_before, hub_fds_before) = (rss_kib(hub.pid()), fd_count(hub.pid()));

    hub.kill9();
    let restarted = Instant::now();
    let restart = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || HubProcess::start(&data, https, mqtts))
    };
    hub = restart.await.expect("restart");
    let ready = restarted.elapsed();
    let pid = hub.pid();
    let (mut rss_peak, mut fds_peak, mut fds_test_peak) = (0u64, 0usize, fds_test);
    let mut milestones: HashMap<&str, u64> = HashMap::new();
    let all_back = loop {
        assert!(hub.child.try_wait().expect("try_wait").is_none(), "the hub exited during the reconnect storm");
        rss_peak = rss_peak.max(rss_kib(pid));
        fds_peak = fds_peak.max(fd_count(pid));
        fds_test_peak = fds_test_peak.max(fd_count(std::process::id()));
        let connected = connected_count(&hub, &token).await;
        let elapsed = restarted.elapsed();
        for (name, share) in [("half", n / 2), ("90pct", n * 9 / 10)] {
            if connected >= share {
                milestones.entry(name).or_insert(elapsed.as_millis() as u64);
            }
        }
        if connected == n {
            break Some(elapsed);
        }
        if elapsed > bound {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let all_back = all_back.unwrap_or_else(|| panic!("not all {n} devices were back within {bound:?} of the restart"));
    let reconnected = fleet.stats().iter().filter(|s| s.snapshot().connects >= 2).count();
    assert_eq!(reconnected, n, "every agent counts its reconnect");
    assert!(hub.child.try_wait().expect("try_wait").is_none(), "the hub is still running");
    let (hub_rss_after, hub_fds_after) = (rss_kib(pid), fd_count(pid));

    let stopped = fleet.stop().await;
    assert!(stopped.errors.is_empty(), "agents failed: {:?}", stopped.errors);
    assert_eq!((stopped.totals.dropped, stopped.totals.rejected), (0, 0), "nothing dropped or rejected");

    let events = security_events(&hub, &token).await;
    report(
        "reconnect storm: hub killed (kill -9) and restarted under every device of the fleet",
        1,
        "every device connected again (hub API lists all as connected) within the bound; the hub process stays up",
        serde_json::json!({
            "devices": n, "open_files_soft_limit": limit, "bound_s": bound.as_secs(),
            "backoff_ms": [1000, 30_000], "first_connect_all_s": first_up.as_secs(),
            "hub_ready_after_restart_ms": ready.as_millis() as u64,
            "all_back_after_restart_ms": all_back.as_millis() as u64,
            "half_back_ms": milestones.get("half"), "p90_back_ms": milestones.get("90pct"),
            "hub_rss_kib": { "before": hub_rss_before, "storm_peak": rss_peak, "after": hub_rss_after },
            "hub_fds": { "before": hub_fds_before, "storm_peak": fds_peak, "after": hub_fds_after },
            "test_process_fds": { "all_connected": fds_test, "peak": fds_test_peak },
            "messages": stopped.totals.queued, "acked": stopped.totals.acked, "hub_security_events": events,
            "runtime_ms": began.elapsed().as_millis() as u64,
        }),
    );
}

/// A hub child process with its owner set up, and `n` manufactured devices whose bootstrap files send MQTT
/// through a [`Proxy`] (device `i` to listener `i`).
struct BehindProxy {
    proxy: Proxy,
    /// Dropped (killed) before `dir`, so the hub never runs on a deleted data directory.
    hub: HubProcess,
    token: String,
    boots: Vec<PathBuf>,
    https: u16,
    mqtts: u16,
    dir: tempfile::TempDir,
}

impl BehindProxy {
    async fn start(model: &str, n: usize) -> BehindProxy {
        let dir = tempfile::tempdir().expect("dir");
        let (https, mqtts) = free_ports();
        let hub = HubProcess::start(&dir.path().join("hub"), https, mqtts);
        let token = setup(&hub);
        let made = manufacture(&hub, &token, model, n).await;
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], mqtts)), n).await;
        let mut files = made.bootstrap_files();
        assert_eq!(files.len(), n, "manufactured");
        for (file, port) in files.iter_mut().zip(&proxy.ports) {
            file.mqtt_port = *port;
        }
        let boots = write_bootstraps(&files, &dir.path().join("boot")).expect("bootstraps");
        BehindProxy { proxy, hub, token, boots, https, mqtts, dir }
    }

    /// Starts the hub again on the same data and ports (off the runtime's threads: it waits for the banner).
    async fn restart_hub(&mut self) {
        let (data, https, mqtts) = (self.dir.path().join("hub"), self.https, self.mqtts);
        self.hub = tokio::task::spawn_blocking(move || HubProcess::start(&data, https, mqtts)).await.expect("restart");
    }
}

/// In-process agents, each with a [`Counter`] source behind one switch.
struct Agents {
    devices: Vec<Device>,
    sampling: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

struct Device {
    id: String,
    stats: Arc<AgentStats>,
    queue: Queue,
    /// The queue's next seq before the agent ran: the first seq it hands out.
    first_seq: u64,
    task: JoinHandle<anyhow::Result<()>>,
}

/// What [`Agents::stop_and_verify`] found.
struct Verified {
    messages: u64,
    renumbered: u64,
    out_of_order: usize,
}

impl Agents {
    /// Enrols one agent per bootstrap file (8 at a time: the hub limits handshakes per source address), then
    /// runs them all.
    async fn start(dir: &Path, boots: &[PathBuf], tune: impl Fn(&mut AgentConfig)) -> Agents {
        let sampling = Arc::new(AtomicBool::new(true));
        let gate = Arc::new(tokio::sync::Semaphore::new(8));
        let mut enrolling = tokio::task::JoinSet::new();
        for (i, boot) in boots.iter().enumerate() {
            let mut config = AgentConfig::new(dir.join(format!("agent-{i}")));
            config.bootstrap_path = Some(boot.clone());
            config.source = Box::new(Counter { on: sampling.clone(), n: 0 });
            tune(&mut config);
            let gate = gate.clone();
            enrolling.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                (i, Agent::new(config).await)
            });
        }
        let mut agents: Vec<Option<Agent>> = boots.iter().map(|_| None).collect();
        while let Some(joined) = enrolling.join_next().await {
            let (i, agent) = joined.expect("enrolment task");
            agents[i] = Some(agent.expect("agent enrols"));
        }
        let (stop, stop_rx) = watch::channel(false);
        let devices = agents
            .into_iter()
            .map(|agent| {
                let agent = agent.expect("enrolled");
                let queue = agent.queue().clone();
                let first_seq = queue.next_seq().expect("next seq");
                Device {
                    id: agent.device_id().to_string(),
                    stats: agent.stats(),
                    queue,
                    first_seq,
                    task: {
                        let stop = stop_rx.clone();
                        tokio::spawn(async move { agent.run(stop).await.map(|_| ()) })
                    },
                }
            })
            .collect();
        Agents { devices, sampling, stop }
    }

    /// Each agent's successful connections so far.
    fn connects(&self) -> Vec<u64> {
        self.devices.iter().map(|d| d.stats.snapshot().connects).collect()
    }

    /// Waits until every agent is connected and has had a message acknowledged.
    async fn wait_connected(&self, timeout: Duration) {
        let stats: Vec<_> = self.devices.iter().map(|d| d.stats.clone()).collect();
        let up = eventually(timeout, || {
            let ok = stats.iter().all(|s| {
                let s = s.snapshot();
                s.connects >= 1 && s.acked >= 1
            });
            async move { ok.then_some(()) }
        })
        .await;
        assert!(up.is_some(), "not every agent connected and published within {timeout:?}");
    }

    /// Mutes sampling and waits until every queue is empty; returns how long that took.
    async fn drain(&self, timeout: Duration) -> Duration {
        self.sampling.store(false, Ordering::Relaxed);
        let start = Instant::now();
        let all_sent = || {
            self.devices.iter().all(|d| {
                let s = d.stats.snapshot();
                s.acked + s.rejected + s.dropped >= s.queued && d.queue.is_empty().unwrap_or(false)
            })
        };
        // Drained, and still drained a backoff later: an agent that was between connections when its queue
        // emptied reconnects and queues a state report first (seen once in eight runs), which must go too.
        let drained = eventually(timeout, || {
            let done = all_sent();
            async move { done.then_some(()) }
        })
        .await;
        let mut stable = drained.is_some();
        while stable {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if all_sent() {
                break;
            }
            let again = eventually(timeout.saturating_sub(start.elapsed()), || {
                let done = all_sent();
                async move { done.then_some(()) }
            });
            stable = again.await.is_some();
        }
        let left: Vec<u64> = self.devices.iter().map(|d| d.queue.len().unwrap_or(u64::MAX)).collect();
        assert!(stable, "queues did not drain within {timeout:?}: {left:?} left");
        start.elapsed()
    }

    /// Stops the agents (each disconnects cleanly), then checks per device: nothing dropped or rejected, the
    /// queue empty, and the stored seqs exactly the seqs its queue handed out, one per queued message.
    async fn stop_and_verify(self, hub: &HubProcess, token: &str) -> Verified {
        self.stop.send_replace(true);
        let mut verified = Verified { messages: 0, renumbered: 0, out_of_order: 0 };
        for d in self.devices {
            let ran = tokio::time::timeout(Duration::from_secs(15), d.task).await;
            assert!(matches!(ran, Ok(Ok(Ok(())))), "{}: the agent did not stop cleanly: {ran:?}", d.id);
            let s = d.stats.snapshot();
            assert_eq!((s.dropped, s.rejected), (0, 0), "{}: nothing may be dropped or rejected", d.id);
            assert_eq!(d.queue.len().expect("queue length"), 0, "{}: the queue is empty", d.id);
            let next = d.queue.next_seq().expect("next seq");
            let expected: Vec<i64> = (d.first_seq as i64..next as i64).collect();
            assert_eq!(expected.len() as u64, s.queued, "{}: one seq per queued message, no gaps in the queue", d.id);
            let stored = stored_seqs(hub, token, &d.id).await;
            let seqs: Vec<i64> = stored.iter().map(|(seq, _)| *seq).collect();
            if seqs != expected {
                let held: std::collections::HashSet<i64> = seqs.iter().copied().collect();
                let missing: Vec<i64> = expected.iter().filter(|s| !held.contains(s)).copied().take(5).collect();
                panic!(
                    "{}: {} queued (seqs {}..{}), {} stored ({} distinct); missing e.g. {missing:?}, first stored {:?}",
                    d.id,
                    expected.len(),
                    d.first_seq,
                    next,
                    seqs.len(),
                    held.len(),
                    seqs.first()
                );
            }
            verified.messages += s.queued;
            verified.renumbered += s.renumbered;
            verified.out_of_order += stored.windows(2).filter(|w| w[0].1 > w[1].1).count();
        }
        verified
    }
}

/// Telemetry `{"n": k}` while the switch is on; an empty sample (which the agent does not queue) once it is off.
struct Counter {
    on: Arc<AtomicBool>,
    n: u64,
}

impl TelemetrySource for Counter {
    fn sample(&mut self, _now_ms: u64) -> Fields {
        let mut fields = Fields::new();
        if self.on.load(Ordering::Relaxed) {
            self.n += 1;
            fields.insert("n".into(), Value::Number(self.n as f64));
        }
        fields
    }
}

/// A TCP proxy in front of the hub's MQTT port, one listener per agent. It can cut a connection (both sides
/// closed at once, as a middlebox dropping a flow) and black-hole all traffic: nothing is forwarded either way
/// while the connections stay open, and what was held is forwarded once the hole closes.
struct Proxy {
    ports: Vec<u16>,
    shared: Arc<ProxyShared>,
    accept_loops: Vec<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: SocketAddr,
    next_id: AtomicU64,
    /// Live connections: id → (listener index, the switch that cuts it).
    live: Mutex<HashMap<u64, (usize, oneshot::Sender<()>)>>,
    /// Every accepted connection: (listener index, when).
    accepts: Mutex<Vec<(usize, Instant)>>,
    black_hole: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, listeners: usize) -> Proxy {
        let shared = Arc::new(ProxyShared {
            upstream,
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            accepts: Mutex::new(Vec::new()),
            black_hole: watch::channel(false).0,
        });
        let mut ports = Vec::with_capacity(listeners);
        let mut accept_loops = Vec::with_capacity(listeners);
        for index in 0..listeners {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a proxy port");
            ports.push(listener.local_addr().expect("proxy address").port());
            let shared = shared.clone();
            accept_loops.push(tokio::spawn(async move {
                loop {
                    let client = match listener.accept().await {
                        Ok((client, _)) => client,
                        Err(_) => {
                            // Out of descriptors or similar: try again shortly rather than spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    shared.accepts.lock().expect("proxy lock").push((index, Instant::now()));
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let (cut, cut_rx) = oneshot::channel();
                    shared.live.lock().expect("proxy lock").insert(id, (index, cut));
                    tokio::spawn(relay(shared.clone(), id, client, cut_rx));
                }
            }));
        }
        Proxy { ports, shared, accept_loops }
    }

    /// Cuts one live connection chosen at random; false if there was none.
    fn cut_random(&self, rng: &mut Jitter) -> bool {
        let mut live = self.shared.live.lock().expect("proxy lock");
        let mut ids: Vec<u64> = live.keys().copied().collect();
        if ids.is_empty() {
            return false;
        }
        ids.sort_unstable();
        let id = ids[rng.up_to(ids.len() as u64 - 1) as usize];
        live.remove(&id).is_some_and(|(_, cut)| cut.send(()).is_ok())
    }

    /// Starts (`true`) or ends (`false`) the black hole.
    fn black_hole(&self, on: bool) {
        self.shared.black_hole.send_replace(on);
    }

    /// Every accepted connection so far: (listener index, when).
    fn accepts(&self) -> Vec<(usize, Instant)> {
        self.shared.accepts.lock().expect("proxy lock").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.accept_loops {
            task.abort();
        }
        if let Ok(mut live) = self.shared.live.lock() {
            for (_, (_, cut)) in live.drain() {
                let _ = cut.send(());
            }
        }
    }
}

/// Connects to the hub and forwards both ways until either side closes or the connection is cut.
async fn relay(shared: Arc<ProxyShared>, id: u64, client: TcpStream, cut: oneshot::Receiver<()>) {
    let (upstream, hole) = (shared.upstream, shared.black_hole.subscribe());
    let forward = async move {
        let server = TcpStream::connect(upstream).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::try_join!(pump(client_read, server_write, hole.clone()), pump(server_read, client_write, hole))?;
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        _ = forward => {}
        _ = cut => {}
    }
    shared.live.lock().expect("proxy lock").remove(&id);
}

/// Copies one direction, holding the bytes while the black hole is open; passes a half-close on.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut hole: watch::Receiver<bool>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let _ = hole.wait_for(|closed| !closed).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let _ = hole.wait_for(|closed| !closed).await;
        to.write_all(&buf[..n]).await?;
    }
}

/// Devices the hub lists as connected, following pages.
async fn connected_count(hub: &HubProcess, token: &str) -> usize {
    // A fresh client: a pooled connection may point at a hub process that was killed.
    let client = hearth_test_support::client_for(&hub.ca(), None).expect("client");
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/api/v1/devices?limit=1000", hub.url());
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: serde_json::Value =
            client.get(url).bearer_auth(token).send().await.expect("list devices").json().await.expect("json");
        let devices = page["devices"].as_array().cloned().unwrap_or_default();
        count += devices.iter().filter(|d| d["connected"].as_bool() == Some(true)).count();
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return count,
        }
    }
}

/// The hub's security events so far, summed per kind (the newest 1000 aggregated rows). The hub writes them in
/// batches, so this first waits out one flush interval.
async fn security_events(hub: &HubProcess, token: &str) -> std::collections::BTreeMap<String, i64> {
    tokio::time::sleep(hearth_hub::monitoring::FLUSH_INTERVAL + Duration::from_millis(500)).await;
    let client = hearth_test_support::client_for(&hub.ca(), None).expect("client");
    let url = format!("{}/api/v1/security-events?limit=1000", hub.url());
    let rows: Vec<serde_json::Value> =
        client.get(url).bearer_auth(token).send().await.expect("security events").json().await.expect("json");
    let mut kinds = std::collections::BTreeMap::new();
    for row in rows {
        *kinds.entry(row["kind"].as_str().unwrap_or("?").to_owned()).or_insert(0) += row["count"].as_i64().unwrap_or(0);
    }
    kinds
}

/// The soft limit of open files for this process, from /proc/self/limits ("unlimited" counts as 2^20).
fn open_files_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(|v| if v == "unlimited" { 1 << 20 } else { v.parse().expect("a numeric soft limit of open files") })
        .expect("a line for open files")
}

/// A seed for the test's randomness, reported so that a failing run can be told apart.
fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}
