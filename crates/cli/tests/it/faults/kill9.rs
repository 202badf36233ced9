//! Crash safety: `kill -9` the hub at random moments of QoS 1 ingest and restart it. Every message the hub
//! acknowledged must be stored, exactly once, and SQLite's integrity check must pass after every crash.
//! 5 trials in short mode, 50 in long mode, each killing after a random number of acknowledgements.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use hearth_agent::mqtt::{Event, MqttConnection, QoS};

use super::{Device, integrity_check, pick, report};
use crate::support::{HubProcess, free_ports, setup, stored_seqs};

const LIMITS: &str = "[mqtt]\npublish_rate_per_sec = 100000\npublish_burst = 100000\nreceive_maximum = 256\n";

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9_exactly_once() {
    let _turn = super::ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let (https, mqtts) = free_ports();
    let data = dir.path().join("hub");
    let mut hub = HubProcess::start_with(&data, https, mqtts, LIMITS);
    let token = setup(&hub);

    // One device, enrolled through the agent's own code.
    let mut enrolled = Device::enrol(&hub, &token, &dir.path().join("device")).await;
    enrolled.opts.inflight = 128;
    let (device, topic, opts) = (enrolled.id.clone(), enrolled.topic(), enrolled.opts.clone());

    let mut acked: HashSet<i64> = HashSet::new();
    let mut seq: i64 = 1;
    let trials = pick(5, 50);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    eprintln!("kill -9 trials: seed {seed}");
    let mut rng = seed | 1;
    let mut resent_total = 0;
    for trial in 0..trials {
        // xorshift64: a kill after 20 to 2,000 acknowledgements.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 20 + (rng % 1981) as usize;
        let mut conn = MqttConnection::connect(opts.clone()).await.expect("connect");
        let mut in_flight: HashMap<u16, i64> = HashMap::new();
        let mut acked_now = 0usize;
        let mut killed = false;
        loop {
            while !killed && conn.can_publish() {
                let payload = format!(r#"{{"v":1,"seq":{seq},"ts":1764000000000,"metrics":{{"n":{seq}}}}}"#);
                match conn.publish(topic.as_str(), Bytes::from(payload), QoS::AtLeastOnce) {
                    Ok(Some(pid)) => {
                        in_flight.insert(pid, seq);
                        seq += 1;
                    }
                    _ => break,
                }
            }
            match tokio::time::timeout(Duration::from_secs(5), conn.next_event()).await {
                Ok(Ok(Event::PubAck { packet_id, reason_code: 0 })) => {
                    let s = in_flight.remove(&packet_id).expect("ack for a message in flight");
                    acked.insert(s);
                    acked_now += 1;
                    if acked_now == kill_after && !killed {
                        hub.kill9();
                        killed = true;
                    }
                }
                Ok(Ok(Event::PubAck { reason_code, .. })) => {
                    panic!("refused with {reason_code:#x}")
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        assert!(killed, "trial {trial}: the connection ended before the kill");
        // Restart on the same data and ports; the database must be intact.
        hub = HubProcess::start_with(&data, https, mqtts, LIMITS);
        assert_eq!(integrity_check(&data.join("hearth.db")).await, "ok", "trial {trial}: integrity check");
        let stored = stored_seqs(&hub, &token, &device).await;
        let stored_set: HashSet<i64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(stored_set.len(), stored.len(), "trial {trial}: a message was stored twice");
        let lost: Vec<i64> = acked.difference(&stored_set).copied().collect();
        assert!(
            lost.is_empty(),
            "trial {trial}: {} acknowledged messages lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        // Unacknowledged messages may or may not be stored; the device resends them (same seq) and the hub
        // must keep one copy: resend the in-flight ones now.
        let mut conn = MqttConnection::connect(opts.clone()).await.expect("reconnect");
        let pending: Vec<i64> = in_flight.into_values().collect();
        let mut resent: HashMap<u16, i64> = HashMap::new();
        for s in &pending {
            let payload = format!(r#"{{"v":1,"seq":{s},"ts":1764000000000,"metrics":{{"n":{s}}}}}"#);
            let pid =
                conn.publish(topic.as_str(), Bytes::from(payload), QoS::AtLeastOnce).expect("publish").expect("pid");
            resent.insert(pid, *s);
        }
        while !resent.is_empty() {
            match tokio::time::timeout(Duration::from_secs(10), conn.next_event()).await {
                Ok(Ok(Event::PubAck { packet_id, reason_code: 0 })) => {
                    if let Some(s) = resent.remove(&packet_id) {
                        acked.insert(s);
                    }
                }
                Ok(Ok(_)) => {}
                other => panic!("resend failed: {other:?}"),
            }
        }
        conn.disconnect().await;
        let stored = stored_seqs(&hub, &token, &device).await;
        let stored_set: HashSet<i64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(stored_set.len(), stored.len(), "trial {trial}: duplicates after resend");
        assert!(acked.is_subset(&stored_set), "trial {trial}: acknowledged messages missing after resend");
        resent_total += pending.len();
        eprintln!(
            "trial {trial}: killed after {kill_after} acks; {} acknowledged, {} stored, {} resent after the crash",
            acked.len(),
            stored.len(),
            pending.len()
        );
    }
    report(
        "kill -9 of the hub during QoS 1 ingest",
        trials,
        "every acknowledged message stored exactly once after restart; SQLite integrity_check ok after each crash",
        serde_json::json!({ "acknowledged": acked.len(), "lost": 0, "duplicates": 0,
                            "unacknowledged_resent": resent_total, "seed": seed }),
    );
}
