//! Durable telemetry ingest with group commit.
//!
//! MQTT sessions hand validated uplinks to one writer task through a bounded channel. The writer takes whatever
//! has queued up (up to [`MAX_BATCH`]), writes it in one transaction, commits (SQLite WAL, `synchronous=FULL`:
//! the commit is on disk), and only then tells each session which packets it may acknowledge. Under load one
//! fsync covers thousands of messages; at low load a message waits for one commit. Duplicates of
//! (device, seq) are ignored by the insert, so a resent message is acknowledged again but stored once.
//!
//! The same writer records devices' last-seen times, coalesced per batch: SQLite has one writer at a time, and
//! a second writing connection would make ingest wait on its lock (a reconnect storm would stall telemetry).
//!
//! Invariant: a PUBACK is sent only for a message whose transaction has committed.

use std::num::NonZeroU16;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{self, Store, UplinkRecord};

/// Most records per transaction.
pub const MAX_BATCH: usize = 4096;

/// Tells a session that its message is durable.
#[derive(Debug, Clone, Copy)]
pub struct Durable {
    /// The packet id to acknowledge.
    pub packet_id: NonZeroU16,
}

/// One uplink for the writer.
#[derive(Debug)]
pub struct IngestItem {
    /// What to store.
    pub record: UplinkRecord,
    /// For QoS 1: where to report durability, and the packet id.
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
}

impl Ingest {
    /// Starts the writer on its own connection. The returned handle's `JoinHandle` finishes after the channel
    /// closes and everything queued is committed.
    pub async fn start(store: &Store) -> Result<(Ingest, tokio::task::JoinHandle<()>), store::StoreError> {
        let conn = store.writer_connection().await?;
        let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
        let task = tokio::spawn(writer(conn, rx));
        Ok((Ingest { tx }, task))
    }

    /// Queues an item; waits when the writer is behind (back-pressure reaches the device through TCP).
    pub async fn submit(&self, item: IngestItem) -> Result<(), IngestError> {
        self.tx.send(WriterItem::Uplink(item)).await.map_err(|_| IngestError::Stopped)
    }

    /// Notes that `device` was active now (connect, disconnect). Never waits: last-seen is informational, so
    /// under overload an update may be skipped.
    pub fn seen(&self, device: &str) {
        let _ = self.tx.try_send(WriterItem::Seen { device: device.to_owned(), at: crate::now_ms() });
    }
}

async fn writer(mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>, mut rx: mpsc::Receiver<WriterItem>) {
    let mut batch: Vec<WriterItem> = Vec::with_capacity(MAX_BATCH);
    let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut records: Vec<UplinkRecord> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<(mpsc::UnboundedSender<Durable>, NonZeroU16)> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        records.clear();
        for item in batch.drain(..) {
            match item {
                WriterItem::Uplink(item) => {
                    records.push(item.record);
                    acks.extend(item.ack);
                }
                WriterItem::Seen { device, at } => {
                    let e = seen.entry(device).or_insert(at);
                    *e = (*e).max(at);
                }
            }
        }
        let touched: Vec<(String, i64)> = seen.drain().collect();
        let mut delay = Duration::from_millis(50);
        // A failed commit is retried, never acknowledged: the sessions keep waiting (and the devices keep their
        // messages) until the database accepts the batch.
        loop {
            match commit(&mut conn, &records, &touched).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, batch = records.len(), "telemetry commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for (tx, packet_id) in acks.drain(..) {
            // The session may have gone; the message is stored all the same.
            let _ = tx.send(Durable { packet_id });
        }
    }
}

async fn commit(
    conn: &mut sqlx::SqliteConnection,
    records: &[UplinkRecord],
    touched: &[(String, i64)],
) -> Result<(), store::StoreError> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await.map_err(store::StoreError::Db)?;
    store::uplinks::insert_batch(&mut tx, records).await?;
    store::devices::touch_batch(&mut tx, touched).await?;
    // Apply the newest state of each device in the batch.
    let mut newest: std::collections::HashMap<&str, &UplinkRecord> = std::collections::HashMap::new();
    for r in records.iter().filter(|r| r.kind == "state") {
        let e = newest.entry(r.device_id.as_str()).or_insert(r);
        if r.seq > e.seq {
            *e = r;
        }
    }
    for r in newest.values() {
        store::uplinks::apply_state(&mut tx, &r.device_id, r.seq, &r.body_json).await?;
    }
    tx.commit().await.map_err(store::StoreError::Db)?;
    Ok(())
}
