//! The queue's guarantees, each with a test that fails without it: order and content, seqs that start at the
//! clock and never repeat, exact drop counts with one gap marker per episode, renumbering that keeps every
//! message, a simulated day offline, and `kill -9` in the middle of writing (a child process).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_proto::uplink::{Fields, Value};

use super::*;
use crate::backoff::Jitter;

/// A plausible clock reading (Unix ms) for the first seq of a new queue.
const T0: u64 = 1_764_000_000_000;

fn telemetry(x: f64) -> UplinkBody {
    let mut metrics = Fields::new();
    metrics.insert("x".into(), Value::Number(x));
    UplinkBody::Telemetry { metrics }
}

fn seqs(q: &Queue) -> Vec<u64> {
    q.peek(usize::MAX).unwrap().iter().map(|m| m.seq).collect()
}

fn parse(m: &QueuedUplink) -> Uplink {
    let up = Uplink::parse(m.topic, &m.payload).expect("a queued payload is a valid uplink");
    assert_eq!(up.seq, m.seq, "the payload's seq is the record's key");
    up
}

/// `(dropped, first_seq, last_seq)` when `m` is a gap marker.
fn gap(m: &QueuedUplink) -> Option<(u64, u64, u64)> {
    let UplinkBody::Event { event, data } = parse(m).body else { return None };
    if event != GAP_EVENT {
        return None;
    }
    let n = |k: &str| match data.get(k) {
        Some(Value::Number(n)) => *n as u64,
        other => panic!("gap marker field {k}: {other:?}"),
    };
    assert_eq!(data.len(), 3, "{data:?}");
    Some((n("dropped"), n("first_seq"), n("last_seq")))
}

fn markers(q: &Queue) -> Vec<(u64, (u64, u64, u64))> {
    q.peek(usize::MAX).unwrap().iter().filter_map(|m| gap(m).map(|g| (m.seq, g))).collect()
}

/// The `x` metric of a telemetry message.
fn x(m: &QueuedUplink) -> Option<f64> {
    match parse(m).body {
        UplinkBody::Telemetry { metrics } => match metrics.get("x") {
            Some(Value::Number(x)) => Some(*x),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn keeps_order_and_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 100, T0).unwrap();
    for i in 0..5 {
        assert_eq!(
            q.push(telemetry(i as f64), 1000 + i).unwrap(),
            Pushed { seq: T0 + i, dropped: 0, gap_marker: None }
        );
    }
    q.push(UplinkBody::State { state: Fields::new() }, 2000).unwrap();
    let all = q.peek(10).unwrap();
    assert_eq!(all.iter().map(|m| m.seq - T0).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(parse(&all[0]), Uplink { seq: T0, ts: 1000, body: telemetry(0.0) });
    assert_eq!(all[5].topic, DeviceTopic::State);
    assert_eq!(q.peek(2).unwrap().len(), 2);
    assert_eq!(q.peek_from(T0 + 3, 10).unwrap().iter().map(|m| m.seq - T0).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(q.next_to_send(T0 + 3, 2).unwrap(), q.peek_from(T0 + 3, 2).unwrap());

    q.ack(&[T0 + 1, T0 + 3, 99]).unwrap();
    assert_eq!(seqs(&q).iter().map(|s| s - T0).collect::<Vec<_>>(), [0, 2, 4, 5]);
    q.remove_through(T0 + 2).unwrap();
    assert_eq!(seqs(&q).iter().map(|s| s - T0).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(q.len().unwrap(), 2);
}

#[test]
fn recreated_queue_does_not_restart_at_seq_1() {
    // Regression: a queue file recreated after corruption restarted at seq 1, and the hub, which already had
    // seqs 1, 2, … from the old file, acknowledged the new data as duplicates without storing it.
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 10, T0).unwrap();
    assert_eq!(q.next_seq().unwrap(), T0, "a new file starts at the clock");
    let old: Vec<u64> = (0..3).map(|i| q.push(telemetry(i as f64), T0).unwrap().seq).collect();
    assert_eq!(old, [T0, T0 + 1, T0 + 2]);
    drop(q);
    std::fs::remove_file(dir.path().join(QUEUE_FILE)).unwrap();

    // Ten seconds later, a fresh file: its seqs lie above everything the old file handed out.
    let q = Queue::open(dir.path(), 10, T0 + 10_000).unwrap();
    let first = q.push(telemetry(9.0), T0 + 10_000).unwrap().seq;
    assert_eq!(first, T0 + 10_000);
    assert!(old.iter().all(|s| *s < first));
    drop(q);

    // An existing file continues where it stopped, whatever the clock says now.
    let q = Queue::open(dir.path(), 10, 5).unwrap();
    assert_eq!(q.push(telemetry(1.0), 5).unwrap().seq, T0 + 10_001);
    drop(q);

    // A clock at 0 still gives a valid seq; a clock gone wild leaves room below the protocol's limit.
    for (now, expect) in [(0, 1), (u64::MAX, MAX_FIRST_SEQ)] {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 10, now).unwrap();
        assert_eq!(q.push(telemetry(0.0), 1).unwrap().seq, expect);
        parse(&q.peek(1).unwrap()[0]);
    }
}

#[test]
fn full_queue_drops_oldest_and_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 3, 1).unwrap();
    for i in 0..3 {
        assert_eq!(q.push(telemetry(0.0), 1 + i).unwrap().dropped, 0);
    }
    // The first drop also makes room for the gap marker, which goes just before the new message.
    assert_eq!(q.push(telemetry(0.0), 9).unwrap(), Pushed { seq: 5, dropped: 2, gap_marker: Some(4) });
    assert_eq!(seqs(&q), [3, 4, 5]);
    assert_eq!(markers(&q), [(4, (2, 1, 2))]);
    // Later drops merge into the same marker.
    assert_eq!(q.push(telemetry(0.0), 9).unwrap(), Pushed { seq: 6, dropped: 1, gap_marker: Some(4) });
    assert_eq!(q.push(telemetry(0.0), 9).unwrap(), Pushed { seq: 7, dropped: 1, gap_marker: Some(4) });
    assert_eq!(seqs(&q), [4, 6, 7]);
    assert_eq!(markers(&q), [(4, (4, 1, 5))]);
    assert_eq!(q.dropped().unwrap(), 4);
    assert_eq!(q.len().unwrap(), 3);

    // Reopening with a smaller capacity drops the surplus on the next push, counted exactly, into the marker
    // that is still open; the marker itself is kept even though it exceeds the capacity of 1.
    drop(q);
    let q = Queue::open(dir.path(), 1, 1).unwrap();
    assert_eq!(q.push(telemetry(0.0), 9).unwrap(), Pushed { seq: 8, dropped: 2, gap_marker: Some(4) });
    assert_eq!(q.dropped().unwrap(), 6);
    assert_eq!(seqs(&q), [4, 8]);
    assert_eq!(markers(&q), [(4, (6, 1, 7))]);
}

#[test]
fn one_gap_marker_per_episode_and_a_new_one_once_it_was_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 4, 1).unwrap();
    for i in 0..4 {
        q.push(telemetry(i as f64), 10).unwrap();
    }
    q.push(telemetry(4.0), 20).unwrap();
    q.push(telemetry(5.0), 30).unwrap();
    assert_eq!(seqs(&q), [4, 5, 6, 7]);
    assert_eq!(markers(&q), [(5, (3, 1, 3))]);
    let marker = q.peek_from(5, 1).unwrap().remove(0);
    assert_eq!(marker.topic, DeviceTopic::Events);
    assert_eq!(parse(&marker).ts, 20, "the marker carries the time of the episode's first drop");

    // Handing out messages before the marker leaves it open ...
    assert_eq!(q.next_to_send(0, 1).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [4]);
    q.push(telemetry(6.0), 40).unwrap();
    assert_eq!(markers(&q), [(5, (4, 1, 4))]);
    // ... inspecting does not seal it ...
    q.peek_from(5, 10).unwrap();
    // ... handing it out does: it may reach the hub now, so it must not change.
    let sent = q.next_to_send(5, 10).unwrap();
    assert_eq!(sent.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7, 8]);
    assert_eq!(gap(&sent[0]), Some((4, 1, 4)));
    q.push(telemetry(7.0), 50).unwrap();
    q.push(telemetry(8.0), 60).unwrap();
    // The next drop starts a second marker; the first is unchanged and is never dropped to make room.
    assert_eq!(markers(&q), [(5, (4, 1, 4)), (9, (3, 6, 8))]);
    assert_eq!(seqs(&q), [5, 9, 10, 11]);
    let total: u64 = markers(&q).iter().map(|(_, (n, _, _))| n).sum();
    assert_eq!(total, q.dropped().unwrap(), "the markers add up to the drop count");

    // A marker acknowledged by the hub is gone; the next drop starts a new one rather than writing to it.
    q.next_to_send(0, 10).unwrap();
    q.ack(&[5, 9]).unwrap();
    q.push(telemetry(9.0), 70).unwrap();
    q.push(telemetry(10.0), 80).unwrap();
    q.push(telemetry(11.0), 90).unwrap();
    assert_eq!(markers(&q), [(14, (2, 10, 11))]);
    assert_eq!(q.dropped().unwrap(), 9);
}

#[test]
fn an_open_gap_marker_survives_a_restart_and_keeps_counting() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 2, 1).unwrap();
    for i in 0..5 {
        q.push(telemetry(i as f64), 1).unwrap();
    }
    drop(q);
    let q = Queue::open(dir.path(), 2, 1).unwrap();
    for i in 5..10 {
        q.push(telemetry(i as f64), 1).unwrap();
    }
    // Ten data messages and one marker have seqs 1..=11; the marker (3) and the newest message remain.
    assert_eq!(seqs(&q), [3, 11]);
    assert_eq!(markers(&q), [(3, (9, 1, 10))]);
    assert_eq!(q.dropped().unwrap(), 9);
}

#[test]
fn renumber_keeps_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 100, 1).unwrap();
    for i in 0..5 {
        q.push(telemetry(i as f64), 100 + i).unwrap();
    }
    q.push(UplinkBody::State { state: Fields::new() }, 200).unwrap();
    q.push(UplinkBody::Event { event: "door_open".into(), data: Fields::new() }, 300).unwrap();
    let before = q.peek(usize::MAX).unwrap();

    assert_eq!(q.renumber_from(5000).unwrap(), Renumbered { count: 7, first: 5000, next_seq: 5007 });
    let after = q.peek(usize::MAX).unwrap();
    assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), (5000..5007).collect::<Vec<_>>());
    for (b, a) in before.iter().zip(&after) {
        let (b, a) = ((b.topic, parse(b)), (a.topic, parse(a)));
        assert_eq!((b.0, b.1.ts, b.1.body), (a.0, a.1.ts, a.1.body), "same message, same place, new seq");
    }
    assert_eq!(q.push(telemetry(9.0), 400).unwrap().seq, 5007);

    // Renumbering lower moves the messages but never lowers next_seq: seqs handed out only rise.
    assert_eq!(q.renumber_from(10).unwrap(), Renumbered { count: 8, first: 10, next_seq: 5008 });
    assert_eq!(seqs(&q), (10..18).collect::<Vec<_>>());
    assert_eq!(q.push(telemetry(10.0), 500).unwrap().seq, 5008);
    drop(q);
    let q = Queue::open(dir.path(), 100, 1).unwrap();
    assert_eq!(q.len().unwrap(), 9, "renumbering is durable");

    // An empty queue only moves next_seq.
    q.ack(&seqs(&q)).unwrap();
    assert_eq!(q.renumber_from(9000).unwrap(), Renumbered { count: 0, first: 9000, next_seq: 9000 });
    assert_eq!(q.push(telemetry(0.0), 1).unwrap().seq, 9000);
}

#[test]
fn renumber_moves_an_open_gap_marker_along() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 3, 1).unwrap();
    for i in 0..4 {
        q.push(telemetry(i as f64), 1).unwrap();
    }
    assert_eq!(seqs(&q), [3, 4, 5]);
    q.renumber_from(100).unwrap();
    assert_eq!(markers(&q), [(101, (2, 1, 2))]);
    // Still open: the next drop merges into it at its new seq.
    assert_eq!(q.push(telemetry(9.0), 1).unwrap(), Pushed { seq: 103, dropped: 1, gap_marker: Some(101) });
    assert_eq!(markers(&q), [(101, (3, 1, 100))]);
}

#[test]
fn renumber_refuses_seqs_past_the_limit_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), 10, 1).unwrap();
    for i in 0..3 {
        q.push(telemetry(i as f64), 1).unwrap();
    }
    let before = q.peek(10).unwrap();
    for first in [0, MAX_SEQ - 1, u64::MAX - 1] {
        let err = q.renumber_from(first).unwrap_err();
        assert!(matches!(err, QueueError::SeqOutOfRange { count: 3, .. }), "{err}");
        assert_eq!(q.peek(10).unwrap(), before);
        assert_eq!(q.next_seq().unwrap(), 4);
    }
    q.renumber_from(MAX_SEQ - 2).unwrap();
    assert_eq!(seqs(&q), [MAX_SEQ - 2, MAX_SEQ - 1, MAX_SEQ]);
    for m in q.peek(10).unwrap() {
        parse(&m);
    }
}

/// A device sampling every 10 s is offline for 24 h with room for 1000 messages, then its queue is drained the
/// way the agent does it (in windows, deleting after each acknowledgement).
#[test]
fn offline_for_24_hours_delivers_the_newest_in_order_and_counts_every_drop() {
    const INTERVAL_MS: u64 = 10_000;
    const CAPACITY: u64 = 1000;
    let produced = 24 * 3600 * 1000 / INTERVAL_MS;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), CAPACITY, T0).unwrap();
    let mut total_dropped = 0;
    for i in 0..produced {
        let now = T0 + i * INTERVAL_MS;
        total_dropped += q.push(telemetry(i as f64), now).unwrap().dropped;
    }
    assert!(produced > CAPACITY * 8);
    assert_eq!(q.len().unwrap(), CAPACITY);

    // Back online: send in windows of 32, acknowledge, repeat.
    let mut delivered = Vec::new();
    loop {
        let window = q.next_to_send(0, 32).unwrap();
        if window.is_empty() {
            break;
        }
        q.ack(&window.iter().map(|m| m.seq).collect::<Vec<_>>()).unwrap();
        delivered.extend(window);
    }
    let gaps: Vec<_> = delivered.iter().filter_map(gap).collect();
    assert_eq!(gaps.len(), 1, "one marker for one episode");
    let (dropped, first_seq, last_seq) = gaps[0];
    assert!(gap(&delivered[0]).is_some(), "the marker ended up oldest and went first");
    let samples: Vec<&QueuedUplink> = delivered.iter().filter(|m| m.topic == DeviceTopic::Telemetry).collect();
    let xs: Vec<u64> = samples.iter().map(|m| x(m).unwrap() as u64).collect();

    // The newest samples survive, in order, without holes, each with its own time.
    assert_eq!(xs, (produced - xs.len() as u64..produced).collect::<Vec<_>>());
    assert_eq!(samples.len() as u64, CAPACITY - 1, "the marker takes one slot");
    assert!(samples.windows(2).all(|w| w[0].seq < w[1].seq));
    for (m, i) in samples.iter().zip(&xs) {
        assert_eq!(parse(m).ts, T0 + i * INTERVAL_MS);
    }
    // Every sample is delivered or counted.
    assert_eq!(samples.len() as u64 + dropped, produced);
    assert_eq!(dropped, total_dropped);
    assert_eq!(dropped, q.dropped().unwrap());
    // The marker's range covers exactly the dropped samples (and the marker's own seq).
    assert_eq!(first_seq, T0);
    assert_eq!(last_seq - first_seq + 1, dropped + 1);
    assert!(samples.iter().all(|m| m.seq > last_seq));
}

// ---- kill -9 ------------------------------------------------------------------------------------------------

const CHILD_DIR: &str = "HEARTH_QUEUE_TEST_CHILD_DIR";
const CHILD_MODE: &str = "HEARTH_QUEUE_TEST_CHILD_MODE";
/// How many messages the renumbering child keeps renumbering.
const RENUMBERED: u64 = 50;

/// Not a test of its own: the child process of the kill tests, doing nothing unless they started it. It writes
/// to the queue in a loop and prints a line after each commit, until it is killed (or 30 s pass).
#[test]
fn kill_test_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else { return };
    let q = Queue::open(Path::new(&dir), 1_000_000, 1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = std::io::stdout().lock();
    if mode == "renumber" {
        for i in 0..RENUMBERED {
            q.push(telemetry(i as f64), 1 + i).unwrap();
        }
    }
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    match mode.as_str() {
        "push" => {
            for i in 0.. {
                let seq = q.push(telemetry(i as f64), 1 + i).unwrap().seq;
                writeln!(out, "committed {seq}").unwrap();
                out.flush().unwrap();
                if std::time::Instant::now() > deadline {
                    break;
                }
            }
        }
        "renumber" => {
            for k in 1.. {
                let first = q.renumber_from(k * 1000).unwrap().first;
                writeln!(out, "renumbered {first}").unwrap();
                out.flush().unwrap();
                if std::time::Instant::now() > deadline {
                    break;
                }
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the child in `mode` on `dir`, SIGKILLs it (`Child::kill` on Unix) once it is ready and printed
/// `kill_after` lines starting with `progress`, and `delay` later; returns every complete line it printed.
fn run_and_kill(dir: &Path, mode: &str, progress: &str, kill_after: usize, delay: Duration) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "queue::tests::kill_test_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut reader = BufReader::new(child.0.stdout.take().unwrap());
    let mut lines: Vec<String> = Vec::new();
    let mut read_line = |lines: &mut Vec<String>| {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        // A line cut off by the kill has no newline: the child did not finish saying it, so it does not count.
        if line.ends_with('\n') {
            lines.push(line.trim_end().to_owned());
        }
        n > 0
    };
    // libtest prints the test's name without a newline, so "ready" ends that line.
    while !lines.iter().any(|l| l.ends_with("ready"))
        || lines.iter().filter(|l| l.starts_with(progress)).count() < kill_after
    {
        assert!(
            read_line(&mut lines),
            "the child ended before it was killed: {:?}",
            lines.iter().rev().take(5).collect::<Vec<_>>()
        );
    }
    std::thread::sleep(delay);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    while read_line(&mut lines) {}
    lines
}

fn numbers_after(lines: &[String], prefix: &str) -> Vec<u64> {
    lines.iter().filter_map(|l| l.strip_prefix(prefix)).map(|n| n.trim().parse().unwrap()).collect()
}

#[test]
fn kill_9_while_pushing_loses_at_most_the_record_being_written() {
    let mut rng = Jitter::from_entropy();
    for trial in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let kill_after = 1 + rng.up_to(40) as usize;
        let delay = Duration::from_micros(rng.up_to(5_000));
        let lines = run_and_kill(dir.path(), "push", "committed ", kill_after, delay);
        let committed = numbers_after(&lines, "committed ");
        assert!(committed.len() >= kill_after, "trial {trial}: {lines:?}");
        let last = *committed.last().unwrap();

        let q = Queue::open(dir.path(), 1_000_000, 1).unwrap();
        let stored = seqs(&q);
        for m in q.peek(usize::MAX).unwrap() {
            parse(&m);
        }
        assert!(committed.iter().all(|s| stored.contains(s)), "trial {trial}: a committed record was lost");
        assert!(
            stored.len() == committed.len() || stored == [committed.as_slice(), &[last + 1]].concat(),
            "trial {trial}: beyond the last committed record at most the one being written: {} stored, {} committed",
            stored.len(),
            committed.len()
        );
        assert_eq!(q.push(telemetry(0.0), 1).unwrap().seq, stored.last().unwrap() + 1, "trial {trial}");
        eprintln!("trial {trial}: killed after {} commits; {} records on reopen", committed.len(), stored.len());
    }
}

#[test]
fn kill_9_while_renumbering_leaves_the_old_or_the_new_numbering_whole() {
    let mut rng = Jitter::from_entropy();
    for trial in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let kill_after = rng.up_to(20) as usize;
        let delay = Duration::from_micros(rng.up_to(5_000));
        let lines = run_and_kill(dir.path(), "renumber", "renumbered ", kill_after, delay);
        let done = numbers_after(&lines, "renumbered ");
        // Before the first renumbering the records are 1..=RENUMBERED.
        let last = done.last().copied().unwrap_or(1);

        let q = Queue::open(dir.path(), 1_000_000, 1).unwrap();
        let all = q.peek(usize::MAX).unwrap();
        let first = all.first().map(|m| m.seq);
        assert!(
            first == Some(last) || first == Some(if done.is_empty() { 1000 } else { last + 1000 }),
            "trial {trial}: starts at {first:?} after {} renumberings ending at {last}",
            done.len()
        );
        assert_eq!(all.len() as u64, RENUMBERED, "trial {trial}: nothing lost, nothing doubled");
        let first = first.unwrap();
        assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (first..first + RENUMBERED).collect::<Vec<_>>());
        let xs: Vec<f64> = all.iter().map(|m| x(m).unwrap()).collect();
        assert_eq!(xs, (0..RENUMBERED).map(|i| i as f64).collect::<Vec<_>>(), "trial {trial}: order kept");
        assert!(q.next_seq().unwrap() >= first + RENUMBERED);
        eprintln!("trial {trial}: killed after {} renumberings; first seq {first} on reopen", done.len());
    }
}
