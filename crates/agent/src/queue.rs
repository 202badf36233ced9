//! The persistent store-and-forward queue of uplinks: a redb database at `{state_dir}/queue.redb`.
//!
//! Table `uplinks` maps seq → one kind byte (`t`elemetry, `e`vent, `s`tate, so the topic is known without
//! parsing) followed by the uplink's JSON payload. Table `meta` holds `next_seq` (so sequence numbers never
//! repeat, even across restarts) and `dropped` (how many messages were discarded because the queue was full).
//! Every change is one durable write transaction: a message is in the queue, or it is not.
//!
//! The queue is bounded: pushing onto a full queue drops the oldest messages and adds exactly their number to
//! `dropped`, in the same transaction. Messages leave otherwise only through [`Queue::ack`] after the hub's
//! PUBACK.
//!
//! redb is blocking (it fsyncs on commit). The methods here are synchronous; async callers run them through
//! [`tokio::task::spawn_blocking`] (the agent does), so a slow disk never stalls the MQTT connection's task.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hearth_proto::topic::DeviceTopic;
use hearth_proto::uplink::{Uplink, UplinkBody};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// File name of the queue inside the state directory.
pub const QUEUE_FILE: &str = "queue.redb";
/// Default capacity in messages.
pub const DEFAULT_CAPACITY: u64 = 10_000;

const UPLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("uplinks");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
const DROPPED: &str = "dropped";

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database could not be opened, read or written.
    #[error("queue database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: redb::Error,
    },
    /// A stored record is not one this build wrote.
    #[error("queue database {path}: record {seq} is corrupt")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The record's seq.
        seq: u64,
    },
}

/// One queued uplink, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedUplink {
    /// Its sequence number.
    pub seq: u64,
    /// The topic kind it is published on.
    pub topic: DeviceTopic,
    /// The JSON payload.
    pub payload: Bytes,
}

/// What [`Queue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The sequence number given to the new message.
    pub seq: u64,
    /// How many old messages were dropped to make room.
    pub dropped: u64,
}

/// The queue; cheap to clone (clones share the database).
#[derive(Clone)]
pub struct Queue {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    capacity: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("path", &self.path).field("capacity", &self.capacity).finish()
    }
}

impl Queue {
    /// Opens (or creates) the queue at `{state_dir}/queue.redb`, holding at most `capacity` messages (≥ 1).
    pub fn open(state_dir: &Path, capacity: u64) -> Result<Queue, QueueError> {
        let path = state_dir.join(QUEUE_FILE);
        // A small page cache: the queue is written and read sequentially, and devices have little memory.
        let db = redb::Builder::new().set_cache_size(256 * 1024).create(&path).map_err(|e| db_err(&path, e))?;
        let queue = Queue { db: Arc::new(db), path: Arc::new(path), capacity: capacity.max(1) };
        // Create the tables up front so readers never see them missing.
        queue.write(|uplinks, meta| {
            let _ = (uplinks, meta);
            Ok(())
        })?;
        Ok(queue)
    }

    /// Appends an uplink with the next sequence number and timestamp `ts` (Unix ms), dropping the oldest
    /// messages if the queue is full.
    pub fn push(&self, body: UplinkBody, ts: u64) -> Result<Pushed, QueueError> {
        let kind = kind_byte(body.topic());
        self.write(|uplinks, meta| {
            let seq = meta.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(1);
            let uplink = Uplink { seq, ts, body };
            let mut record = Vec::with_capacity(256);
            record.push(kind);
            record.extend_from_slice(&uplink.to_json());
            uplinks.insert(seq, record.as_slice())?;
            meta.insert(NEXT_SEQ, seq + 1)?;
            let mut dropped = 0;
            while uplinks.len()? > self.capacity {
                if uplinks.pop_first()?.is_none() {
                    break;
                }
                dropped += 1;
            }
            if dropped > 0 {
                let total = meta.get(DROPPED)?.map(|v| v.value()).unwrap_or(0);
                meta.insert(DROPPED, total + dropped)?;
            }
            Ok(Pushed { seq, dropped })
        })
    }

    /// The oldest `n` messages, in order.
    pub fn peek(&self, n: usize) -> Result<Vec<QueuedUplink>, QueueError> {
        self.peek_from(0, n)
    }

    /// The oldest `n` messages whose seq is at least `from`, in order.
    pub fn peek_from(&self, from: u64, n: usize) -> Result<Vec<QueuedUplink>, QueueError> {
        let read = || -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(UPLINKS)?;
            let mut out = Vec::with_capacity(n.min(64));
            for entry in table.range(from..)?.take(n) {
                let (k, v) = entry?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        };
        let rows = read().map_err(|e| db_err(&self.path, e))?;
        rows.into_iter()
            .map(|(seq, record)| {
                let topic = match record.first() {
                    Some(b't') => DeviceTopic::Telemetry,
                    Some(b'e') => DeviceTopic::Events,
                    Some(b's') => DeviceTopic::State,
                    _ => {
                        return Err(QueueError::Corrupt { path: self.path.to_path_buf(), seq });
                    }
                };
                let payload = Bytes::from(record).slice(1..);
                Ok(QueuedUplink { seq, topic, payload })
            })
            .collect()
    }

    /// Deletes the messages with these seqs (after their PUBACK); unknown seqs are ignored.
    pub fn ack(&self, seqs: &[u64]) -> Result<(), QueueError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.write(|uplinks, _| {
            for seq in seqs {
                uplinks.remove(seq)?;
            }
            Ok(())
        })
    }

    /// Deletes every message with seq ≤ `seq`.
    pub fn remove_through(&self, seq: u64) -> Result<(), QueueError> {
        self.write(|uplinks, _| {
            uplinks.retain_in(..=seq, |_, _| false)?;
            Ok(())
        })
    }

    /// How many messages are queued.
    pub fn len(&self) -> Result<u64, QueueError> {
        self.read_meta(|txn| Ok(txn.open_table(UPLINKS)?.len()?))
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// The seq the next pushed message will get.
    pub fn next_seq(&self) -> Result<u64, QueueError> {
        self.read_meta(|txn| Ok(txn.open_table(META)?.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(1)))
    }

    /// How many messages were dropped because the queue was full, over the queue's whole life.
    pub fn dropped(&self) -> Result<u64, QueueError> {
        self.read_meta(|txn| Ok(txn.open_table(META)?.get(DROPPED)?.map(|v| v.value()).unwrap_or(0)))
    }

    /// The capacity in messages.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_meta<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>) -> Result<T, QueueError> {
        let run = || -> Result<T, redb::Error> {
            let txn = self.db.begin_read()?;
            f(&txn)
        };
        run().map_err(|e| db_err(&self.path, e))
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<u64, &[u8]>, &mut redb::Table<&str, u64>) -> Result<T, redb::Error>,
    ) -> Result<T, QueueError> {
        let run = || -> Result<T, redb::Error> {
            // Default durability is immediate: commit returns after fsync, so an acknowledged push survives a
            // power cut.
            let txn = self.db.begin_write()?;
            let out = {
                let mut uplinks = txn.open_table(UPLINKS)?;
                let mut meta = txn.open_table(META)?;
                f(&mut uplinks, &mut meta)?
            };
            txn.commit()?;
            Ok(out)
        };
        run().map_err(|e| db_err(&self.path, e))
    }
}

fn kind_byte(topic: DeviceTopic) -> u8 {
    match topic {
        DeviceTopic::Telemetry => b't',
        DeviceTopic::Events => b'e',
        // Command acknowledgements are not queued; state is the only other kind.
        DeviceTopic::State | DeviceTopic::CommandAck => b's',
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> QueueError {
    QueueError::Db { path: path.to_path_buf(), source: e.into() }
}

#[cfg(test)]
mod tests {
    use hearth_proto::uplink::{Fields, Value};

    use super::*;

    fn telemetry(x: f64) -> UplinkBody {
        let mut metrics = Fields::new();
        metrics.insert("x".into(), Value::Number(x));
        UplinkBody::Telemetry { metrics }
    }

    fn seqs(q: &Queue) -> Vec<u64> {
        q.peek(usize::MAX).unwrap().iter().map(|m| m.seq).collect()
    }

    #[test]
    fn keeps_order_and_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 100).unwrap();
        for i in 0..5 {
            assert_eq!(q.push(telemetry(i as f64), 1000 + i).unwrap(), Pushed { seq: i + 1, dropped: 0 });
        }
        q.push(UplinkBody::State { state: Fields::new() }, 2000).unwrap();
        let all = q.peek(10).unwrap();
        assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        let first = Uplink::parse(all[0].topic, &all[0].payload).unwrap();
        assert_eq!(first, Uplink { seq: 1, ts: 1000, body: telemetry(0.0) });
        assert_eq!(all[5].topic, DeviceTopic::State);
        assert_eq!(q.peek(2).unwrap().len(), 2);
        assert_eq!(q.peek_from(4, 10).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6]);

        q.ack(&[2, 4, 99]).unwrap();
        assert_eq!(seqs(&q), [1, 3, 5, 6]);
        q.remove_through(3).unwrap();
        assert_eq!(seqs(&q), [5, 6]);
        assert_eq!(q.len().unwrap(), 2);
    }

    #[test]
    fn full_queue_drops_oldest_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 3).unwrap();
        for i in 0..3 {
            assert_eq!(q.push(telemetry(0.0), 1 + i).unwrap().dropped, 0);
        }
        assert_eq!(q.push(telemetry(0.0), 9).unwrap(), Pushed { seq: 4, dropped: 1 });
        q.push(telemetry(0.0), 9).unwrap();
        assert_eq!(seqs(&q), [3, 4, 5]);
        assert_eq!(q.dropped().unwrap(), 2);
        assert_eq!(q.len().unwrap(), 3);

        // Reopening with a smaller capacity drops the surplus on the next push, counted exactly.
        drop(q);
        let q = Queue::open(dir.path(), 1).unwrap();
        assert_eq!(q.push(telemetry(0.0), 9).unwrap(), Pushed { seq: 6, dropped: 3 });
        assert_eq!(q.dropped().unwrap(), 5);
        assert_eq!(seqs(&q), [6]);
    }

    #[test]
    fn survives_restart_and_never_reuses_seq() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 10).unwrap();
        for i in 0..4 {
            q.push(telemetry(i as f64), 5).unwrap();
        }
        q.ack(&[1, 2, 3, 4]).unwrap();
        q.push(telemetry(42.0), 6).unwrap();
        let before = q.peek(10).unwrap();
        drop(q);

        let q = Queue::open(dir.path(), 10).unwrap();
        assert_eq!(q.peek(10).unwrap(), before);
        assert_eq!(q.next_seq().unwrap(), 6);
        // Even with the queue emptied, the next seq continues.
        q.ack(&[5]).unwrap();
        assert!(q.is_empty().unwrap());
        drop(q);
        let q = Queue::open(dir.path(), 10).unwrap();
        assert_eq!(q.push(telemetry(1.0), 7).unwrap().seq, 6);
    }
}
