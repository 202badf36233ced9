//! Security monitoring, first part: every refusal the hub makes (bad certificate, ACL violation, invalid payload,
//! limit breach, failed login) becomes a security event, **aggregated per cause and source**.
//!
//! A hostile client can cause refusals far faster than a database should write rows or a log should print lines
//! (16,000 refused topic filters in one SUBSCRIBE, thousands of failed handshakes a second). So `record` only
//! bumps a counter in memory under the key (kind, device, source network); a flusher writes one row per key
//! with its count, first and last time, and one sample detail, every [`FLUSH_INTERVAL`], and logs one line per
//! row. At most [`MAX_KEYS`] keys are kept between flushes; events beyond that are counted in one overflow row
//! per kind (no device, no source, the detail says so), so neither memory, rows nor log lines grow with the
//! attack rate, and a flood of one kind cannot hide that another kind happened. IPv6 sources are aggregated per
//! /64 (one host usually owns a whole /64).
//!
//! Invariant: the cost of an event is O(1) memory and no I/O at the call site; rows and log lines per
//! [`FLUSH_INTERVAL`] are at most [`MAX_KEYS`] + the number of kinds.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::store::{NewSecurityEvent, Store};

/// How often aggregated events are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Most distinct (kind, device, source) keys held between two flushes.
pub const MAX_KEYS: usize = 512;
/// Longest detail kept, in characters.
const MAX_DETAIL: usize = 200;

/// One security event.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    /// The device, when authenticated.
    pub device: Option<String>,
    /// The peer address (aggregated per address, IPv6 per /64).
    pub source: Option<IpAddr>,
    /// Stable kind (`acl_publish`, `acl_subscribe`, `invalid_payload`, `tls_refused`, `rate_limited`, …).
    pub kind: &'static str,
    /// Detail (of the first occurrence within a flush interval).
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: &'static str,
    device: Option<String>,
    source: Option<String>,
}

#[derive(Debug)]
struct Aggregate {
    first_at: i64,
    last_at: i64,
    count: u64,
    detail: String,
}

#[derive(Debug, Default)]
struct Pending {
    /// Occurrences by kind since start (never reset).
    counts: BTreeMap<&'static str, u64>,
    keys: HashMap<Key, Aggregate>,
    /// Per kind, events that found no room among the keys.
    overflow: HashMap<&'static str, Aggregate>,
}

/// Records security events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Monitor {
    pending: Arc<Mutex<Pending>>,
    lost: Arc<AtomicU64>,
    flush_tx: mpsc::Sender<oneshot::Sender<()>>,
    clock: Clock,
}

impl Monitor {
    /// Starts the flusher task.
    pub fn start(store: Store, clock: Clock) -> Monitor {
        let (flush_tx, flush_rx) = mpsc::channel(8);
        let monitor = Monitor { pending: Arc::default(), lost: Arc::default(), flush_tx, clock };
        tokio::spawn(flusher(monitor.clone(), store, flush_rx));
        monitor
    }

    /// Records an event: O(1), never blocks on I/O, never logs by itself.
    pub fn record(&self, event: SecurityEvent) {
        let now = self.clock.now_ms();
        let key = Key { kind: event.kind, device: event.device, source: event.source.map(source_network) };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending.counts.entry(event.kind).or_default() += 1;
        let room = pending.keys.len() < MAX_KEYS;
        match pending.keys.get_mut(&key) {
            Some(a) => bump(a, now),
            None if room => {
                pending
                    .keys
                    .insert(key, Aggregate { first_at: now, last_at: now, count: 1, detail: clip(event.detail) });
            }
            None => match pending.overflow.get_mut(event.kind) {
                Some(a) => bump(a, now),
                None => {
                    let detail = format!(
                        "overflow: more than {MAX_KEYS} distinct event sources in {FLUSH_INTERVAL:?}; these are \
                         not attributed to a device or source. First: {}",
                        clip(event.detail)
                    );
                    pending.overflow.insert(event.kind, Aggregate { first_at: now, last_at: now, count: 1, detail });
                }
            },
        }
    }

    /// Writes everything aggregated so far now and waits until it is stored (tests, shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush_tx.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Events by kind since start (each occurrence counted), plus `lost_from_store`: events that could not be
    /// written because the database refused them.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, u64> = pending.counts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        drop(pending);
        out.insert("lost_from_store".into(), self.lost.load(Ordering::Relaxed));
        out
    }

    fn take(&self) -> Vec<NewSecurityEvent> {
        let (keys, overflow) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut pending.keys), std::mem::take(&mut pending.overflow))
        };
        let mut rows: Vec<NewSecurityEvent> = keys
            .into_iter()
            .map(|(k, a)| row(k.kind, k.device, k.source, a))
            .chain(overflow.into_iter().map(|(kind, a)| row(kind, None, None, a)))
            .collect();
        rows.sort_by_key(|r| r.at);
        rows
    }
}

fn bump(a: &mut Aggregate, now: i64) {
    a.count += 1;
    a.last_at = a.last_at.max(now);
}

fn row(kind: &'static str, device_id: Option<String>, source: Option<String>, a: Aggregate) -> NewSecurityEvent {
    NewSecurityEvent {
        at: a.first_at,
        last_at: a.last_at,
        count: i64::try_from(a.count).unwrap_or(i64::MAX),
        device_id,
        source,
        kind: kind.to_owned(),
        detail: a.detail,
    }
}

/// The aggregation key of a source address: the address itself, or its /64 for IPv6.
pub fn source_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn clip(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_DETAIL) {
        s.truncate(i);
    }
    s
}

async fn flusher(monitor: Monitor, store: Store, mut flush_rx: mpsc::Receiver<oneshot::Sender<()>>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let done = tokio::select! {
            _ = tick.tick() => None,
            req = flush_rx.recv() => match req {
                Some(done) => Some(done),
                None => return,
            },
        };
        let rows = monitor.take();
        if !rows.is_empty() {
            for r in &rows {
                tracing::warn!(kind = %r.kind, device = ?r.device_id, source = ?r.source, count = r.count, detail = %r.detail, "security event");
            }
            if let Err(e) = store.insert_security_events(&rows).await {
                let lost: i64 = rows.iter().map(|r| r.count).sum();
                monitor.lost.fetch_add(u64::try_from(lost).unwrap_or(0), Ordering::Relaxed);
                tracing::error!(error = %e, lost, "could not store security events");
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_aggregate_per_64_and_mapped_v4_as_v4() {
        assert_eq!(source_network("2001:db8:1:2:aaaa::1".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(source_network("2001:db8:1:2:bbbb::9".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(source_network("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(source_network("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }

    #[tokio::test]
    async fn beyond_the_key_limit_each_kind_keeps_its_own_overflow_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let monitor = Monitor::start(store.clone(), Clock::system());
        // A flood from MAX_KEYS + 100 sources, then one event of another kind from yet another source.
        for i in 0..(MAX_KEYS as u32 + 100) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            monitor.record(SecurityEvent {
                device: None,
                source: Some(ip.into()),
                kind: "tls_refused",
                detail: "x".into(),
            });
        }
        monitor.record(SecurityEvent {
            device: Some("abcdefghijklmnop".into()),
            source: Some("192.0.2.1".parse().unwrap()),
            kind: "revoked",
            detail: "y".into(),
        });
        monitor.flush().await;
        let (rows, occurrences) = store.security_event_totals().await.unwrap();
        assert_eq!(rows, MAX_KEYS as i64 + 2, "the keys, one overflow row for the flood, one for the other kind");
        assert_eq!(occurrences, MAX_KEYS as i64 + 101, "every event is counted");
        let revoked = store.security_events(None, Some("revoked"), 10).await.unwrap();
        assert_eq!(revoked.len(), 1, "a flood of one kind does not hide another kind");
        assert!(revoked[0].detail.starts_with("overflow"));
    }

    #[test]
    fn details_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(500);
        assert_eq!(clip(long).chars().count(), MAX_DETAIL);
    }
}
