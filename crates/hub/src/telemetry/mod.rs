//! Durable telemetry ingest with group commit, and the limits that keep stored data bounded.
//!
//! MQTT sessions hand validated uplinks to one writer task through a bounded channel. The writer takes whatever
//! has queued up (up to [`MAX_BATCH`]), writes it in one transaction, commits (SQLite WAL, `synchronous=FULL`:
//! the commit is on disk), and only then tells each session the [`Outcome`] of each packet. Under load one
//! fsync covers thousands of messages; at low load a message waits for one commit.
//!
//! Storage is idempotent by (device, seq), and a repeat is checked, not assumed: a resend with the same content
//! is a [`Outcome::Duplicate`] (acknowledged, stored once), but a *different* message under a seq already stored
//! is a [`Outcome::Conflict`], refused with the highest stored seq so the device can renumber. (Before, an agent
//! whose queue was recreated restarted at seq 1 and got PUBACK 0x00 for data that was never stored.)
//!
//! A database that fails (disk full, locked, gone) does not stall ingest: the batch's messages get
//! [`Outcome::Unavailable`] (never acknowledged, so devices keep them), and for a back-off period
//! ([`Ingest::available`] is false) sessions refuse new QoS 1 messages at once instead of queueing them. The
//! next batch after the back-off is the probe; when it commits, ingest has resumed by itself. The same happens
//! while the data directory's free space is below the configured floor.
//!
//! The same writer records devices' last-seen times, coalesced per batch: SQLite has one writer at a time, and
//! a second writing connection would make ingest wait on its lock (a reconnect storm would stall telemetry).
//! On PostgreSQL each hub node runs one such writer; the store keeps (device, seq) idempotent across nodes.
//!
//! Invariant: a PUBACK with a success code is sent only for a message whose transaction has committed, or
//! which an earlier committed transaction already holds with identical content.

mod limits;

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

pub use limits::{QuotaExceeded, Quotas, Retention, RetentionSettings};

use crate::clock::Clock;
use crate::store::{self, Store, UplinkRecord};

/// Most records per transaction.
pub const MAX_BATCH: usize = 4096;
/// First back-off after a failed commit; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest back-off after failed commits.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed now.
    Stored,
    /// An identical message with this seq was already stored.
    Duplicate,
    /// A different message with this seq is stored; the device's highest stored seq is given.
    Conflict {
        /// The highest seq stored for the device.
        highest_seq: i64,
    },
    /// The database refused the batch; nothing of it is stored. Retry later.
    Unavailable,
}

impl Outcome {
    /// Whether the message may be acknowledged as received.
    pub fn is_durable(self) -> bool {
        matches!(self, Outcome::Stored | Outcome::Duplicate)
    }
}

/// Tells a session what became of its message.
#[derive(Debug, Clone, Copy)]
pub struct Durable {
    /// The packet id to answer.
    pub packet_id: NonZeroU16,
    /// The outcome.
    pub outcome: Outcome,
}

/// One uplink for the writer.
#[derive(Debug)]
pub struct IngestItem {
    /// What to store.
    pub record: UplinkRecord,
    /// For QoS 1: where to report the outcome, and the packet id.
    pub ack: Option<(mpsc::UnboundedSender<Durable>, NonZeroU16)>,
}

/// What the writer receives.
#[derive(Debug)]
enum WriterItem {
    Uplink(IngestItem),
    Seen { device: String, at: i64 },
}

/// Why a message could not be handed to the writer.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The writer stopped (the hub is shutting down).
    #[error("the telemetry writer has stopped")]
    Stopped,
}

/// Handle to the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::Sender<WriterItem>,
    health: Arc<Health>,
    clock: Clock,
}

#[derive(Debug, Default)]
struct Health {
    /// The database failed; refuse until this monotonic instant.
    failed_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The data directory is below its free-space floor.
    low_disk: AtomicBool,
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The directory whose file system holds the database (checked for free space).
    pub data_dir: PathBuf,
    /// Refuse new messages while less than this many bytes are free there (0 = no check).
    pub min_free_bytes: u64,
}

impl Ingest {
    /// Starts the writer on its own connection. The returned handle's `JoinHandle` finishes after the channel
    /// closes and everything queued is committed.
    pub async fn start(
        store: &Store,
        clock: Clock,
        settings: IngestSettings,
    ) -> Result<(Ingest, tokio::task::JoinHandle<()>), store::StoreError> {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
        let health = Arc::new(Health::default());
        let task = tokio::spawn(writer(store.clone(), rx, health.clone()));
        if settings.min_free_bytes > 0 {
            tokio::spawn(watch_disk(Arc::downgrade(&health), settings));
        }
        Ok((Ingest { tx, health, clock }, task))
    }

    /// Whether new messages can be taken now. False while the database is failing (for a back-off period after
    /// each failed commit) or the disk is nearly full: sessions then refuse QoS 1 messages with a reason code
    /// instead of queueing them behind a writer that cannot write.
    pub fn available(&self) -> bool {
        if self.health.low_disk.load(Ordering::Relaxed) {
            return false;
        }
        let until = *self.health.failed_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    /// Queues an item; waits when the writer is behind (back-pressure reaches the device through TCP).
    pub async fn submit(&self, item: IngestItem) -> Result<(), IngestError> {
        self.tx.send(WriterItem::Uplink(item)).await.map_err(|_| IngestError::Stopped)
    }

    /// Notes that `device` was active now. Never waits: last-seen is informational, so under overload an update
    /// may be skipped.
    pub fn seen(&self, device: &str) {
        let _ = self.tx.try_send(WriterItem::Seen { device: device.to_owned(), at: self.clock.now_ms() });
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<WriterItem>, health: Arc<Health>) {
    let mut batch: Vec<WriterItem> = Vec::with_capacity(MAX_BATCH);
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut records: Vec<UplinkRecord> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<Option<(mpsc::UnboundedSender<Durable>, NonZeroU16)>> = Vec::with_capacity(MAX_BATCH);
    let mut backoff = FIRST_BACKOFF;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        records.clear();
        acks.clear();
        for item in batch.drain(..) {
            match item {
                WriterItem::Uplink(item) => {
                    records.push(item.record);
                    acks.push(item.ack);
                }
                WriterItem::Seen { device, at } => {
                    let e = seen.entry(device).or_insert(at);
                    *e = (*e).max(at);
                }
            }
        }
        let touched: Vec<(String, i64)> = seen.drain().collect();
        let outcomes = match commit(&store, &records, &touched).await {
            Ok(outcomes) => {
                *health.failed_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
                backoff = FIRST_BACKOFF;
                outcomes
            }
            Err(e) => {
                // Nothing of the batch is stored and nothing is acknowledged: devices keep their messages. For a
                // while, sessions refuse new ones outright rather than pile them up behind a failing database.
                tracing::error!(error = %e, batch = records.len(), backoff_ms = backoff.as_millis() as u64,
                    "telemetry commit failed; refusing new messages for a while");
                *health.failed_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                vec![Outcome::Unavailable; records.len()]
            }
        };
        for (ack, outcome) in acks.drain(..).zip(outcomes) {
            if let Some((tx, packet_id)) = ack {
                // The session may have gone; the message is stored (or not) all the same.
                let _ = tx.send(Durable { packet_id, outcome });
            }
        }
    }
}

async fn commit(
    store: &Store,
    records: &[UplinkRecord],
    touched: &[(String, i64)],
) -> Result<Vec<Outcome>, store::StoreError> {
    // One transaction for the batch; its connection is closed if it does not commit, so no half-rolled-back
    // state can leak into the next batch (see `store::WriteTx`).
    let written = store.commit_uplinks(records, touched).await?;
    Ok(written
        .into_iter()
        .map(|w| match w {
            store::Written::Stored => Outcome::Stored,
            store::Written::Duplicate => Outcome::Duplicate,
            store::Written::Conflict { highest_seq } => Outcome::Conflict { highest_seq },
        })
        .collect())
}

/// Checks the data directory's free space every second while the hub runs.
async fn watch_disk(health: std::sync::Weak<Health>, settings: IngestSettings) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(health) = health.upgrade() else { return };
        let free = match rustix::fs::statvfs(&settings.data_dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                tracing::warn!(error = %e, dir = %settings.data_dir.display(), "could not read free disk space");
                continue;
            }
        };
        let low = free < settings.min_free_bytes;
        if health.low_disk.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    free_bytes = free,
                    floor = settings.min_free_bytes,
                    "disk nearly full; refusing new telemetry"
                );
            } else {
                tracing::info!(free_bytes = free, "disk space back above the floor; taking telemetry again");
            }
        }
    }
}
