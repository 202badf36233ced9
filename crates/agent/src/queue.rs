//! The persistent store-and-forward queue of uplinks: a redb database at `{state_dir}/queue.redb`.
//!
//! Table `uplinks` maps seq → one kind byte (`t`elemetry, `e`vent, `s`tate, or `g` for a gap marker, which is
//! published as an event; so the topic is known without parsing) followed by the uplink's JSON payload. Table
//! `meta` holds `next_seq` (so sequence numbers never repeat, even across restarts), `dropped` (how many
//! messages were discarded because the queue was full) and `open_gap` (the seq of the gap marker that later
//! drops may still be merged into). Every change is one durable write transaction: a message is in the queue,
//! or it is not.
//!
//! **Sequence numbers only rise; they do not start at 1.** A fresh queue file starts `next_seq` at the clock
//! (Unix ms, given by the caller: [`Queue::open`] takes `now_ms`), so a queue that is recreated (the natural
//! fix after a corrupt-queue error) does not reuse seqs the hub already stored from the previous file: the hub
//! de-duplicates by (device, seq) and would acknowledge new data under an old seq without storing it. A device
//! that sends fewer than 1000 messages a second never catches up with its own clock. If the hub still holds
//! different data under a queued seq (a clock set back, a queue from another device), it refuses the message
//! and the agent moves every queued message above the hub's highest seq with [`Queue::renumber_from`], in one
//! transaction and in order.
//!
//! The queue is bounded: pushing onto a full queue drops the oldest messages and, in the same transaction, adds
//! their number to `dropped` and records them in a **gap marker**: an event uplink named [`GAP_EVENT`] with the
//! data `dropped` (how many were dropped since the previous marker), `first_seq` and `last_seq` (the range of
//! the dropped seqs; a seq in the range that is not a marker was either dropped or delivered before). One
//! marker covers a whole drop episode: later drops are merged into it for as long as it has not been handed
//! out for publishing ([`Queue::next_to_send`] seals it, because a record must never change once the hub may
//! hold it; the next drop then starts a new marker). Markers count towards the capacity but are never dropped
//! to make room (the oldest data goes instead), so a queue of capacity 1 may hold a marker besides its message.
//! Messages leave otherwise only through [`Queue::ack`] after the hub's PUBACK.
//!
//! redb is blocking (it fsyncs on commit). The methods here are synchronous; async callers run them through
//! [`tokio::task::spawn_blocking`] (the agent does), so a slow disk never stalls the MQTT connection's task.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hearth_proto::limits::MAX_TIMESTAMP_MS;
use hearth_proto::topic::DeviceTopic;
use hearth_proto::uplink::{Fields, Uplink, UplinkBody, Value};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// File name of the queue inside the state directory.
pub const QUEUE_FILE: &str = "queue.redb";
/// Default capacity in messages.
pub const DEFAULT_CAPACITY: u64 = 10_000;
/// The largest seq the protocol accepts (2^53, the largest integer JSON keeps exactly).
pub const MAX_SEQ: u64 = MAX_TIMESTAMP_MS;
/// Name of the event that reports dropped messages (see the module documentation).
pub const GAP_EVENT: &str = "queue_gap";

/// A fresh queue starts at the clock but never above this, so a clock gone wild cannot use up the seq space.
const MAX_FIRST_SEQ: u64 = 1 << 52;

const UPLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("uplinks");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
const DROPPED: &str = "dropped";
const OPEN_GAP: &str = "open_gap";

const KIND_TELEMETRY: u8 = b't';
const KIND_EVENT: u8 = b'e';
const KIND_STATE: u8 = b's';
const KIND_GAP: u8 = b'g';

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
    /// [`Queue::renumber_from`] was asked for seqs outside `1..=MAX_SEQ`; nothing was changed.
    #[error("queue database {path}: cannot renumber {count} messages from seq {first}: past the largest seq")]
    SeqOutOfRange {
        /// The database file.
        path: PathBuf,
        /// The first seq asked for.
        first: u64,
        /// How many messages are queued.
        count: u64,
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
    /// When messages were dropped: the seq of the gap marker that records them (new, or merged into).
    pub gap_marker: Option<u64>,
}

/// What [`Queue::renumber_from`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renumbered {
    /// How many messages were renumbered (all that were queued).
    pub count: u64,
    /// The seq the oldest message has now.
    pub first: u64,
    /// The seq the next pushed message will get.
    pub next_seq: u64,
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
    /// A new file's first seq is `now_ms` (Unix ms; at least 1); an existing file continues where it stopped.
    pub fn open(state_dir: &Path, capacity: u64, now_ms: u64) -> Result<Queue, QueueError> {
        let path = state_dir.join(QUEUE_FILE);
        // A small page cache: the queue is written and read sequentially, and devices have little memory.
        let db = redb::Builder::new().set_cache_size(256 * 1024).create(&path).map_err(|e| db_err(&path, e))?;
        let queue = Queue { db: Arc::new(db), path: Arc::new(path), capacity: capacity.max(1) };
        // Creates the tables up front, so readers never see them missing, and fixes the first seq of a new file.
        queue.write(|uplinks, meta| {
            if meta.get(NEXT_SEQ)?.is_none() {
                let after_last = uplinks.last()?.map(|(k, _)| k.value().saturating_add(1)).unwrap_or(1);
                meta.insert(NEXT_SEQ, now_ms.clamp(1, MAX_FIRST_SEQ).max(after_last))?;
            }
            Ok(())
        })?;
        Ok(queue)
    }

    /// Appends an uplink with the next sequence number and timestamp `ts` (Unix ms). If the queue is full, the
    /// oldest messages are dropped and recorded in the open gap marker (a new one, queued just before this
    /// message, if none is open), all in the same transaction.
    pub fn push(&self, body: UplinkBody, ts: u64) -> Result<Pushed, QueueError> {
        let kind = kind_byte(body.topic());
        self.write(|uplinks, meta| {
            let mut seq = get_or(meta, NEXT_SEQ, 1)?;
            let open_gap = match meta.get(OPEN_GAP)?.map(|v| v.value()) {
                Some(g) if uplinks.get(g)?.is_some() => Some(g),
                _ => None,
            };
            let mut len = uplinks.len()?;
            let mut dropped = Dropped::default();
            // Room for this message, and for a new marker once something is dropped and no marker is open.
            while len + 1 + u64::from(dropped.count > 0 && open_gap.is_none()) > self.capacity {
                let Some(victim) = oldest_data(uplinks)? else {
                    // Only markers are left: holding one more record beats losing a count of losses.
                    break;
                };
                uplinks.remove(victim)?;
                dropped.add(victim);
                len -= 1;
            }
            let mut gap_marker = None;
            if dropped.count > 0 {
                let marker = match open_gap {
                    Some(g) => {
                        // The marker keeps the time of the episode's first drop.
                        let (so_far, since) = read_gap(uplinks, g)?;
                        uplinks.insert(g, gap_record(g, since, so_far.merge(dropped)).as_slice())?;
                        g
                    }
                    None => {
                        let g = seq;
                        seq += 1;
                        uplinks.insert(g, gap_record(g, ts, dropped).as_slice())?;
                        meta.insert(OPEN_GAP, g)?;
                        g
                    }
                };
                gap_marker = Some(marker);
                let total = get_or(meta, DROPPED, 0)?;
                meta.insert(DROPPED, total + dropped.count)?;
            }
            let record = encode(kind, &Uplink { seq, ts, body });
            uplinks.insert(seq, record.as_slice())?;
            meta.insert(NEXT_SEQ, seq + 1)?;
            Ok(Pushed { seq, dropped: dropped.count, gap_marker })
        })
    }

    /// The oldest `n` messages, in order (for inspection; publishing goes through [`Queue::next_to_send`]).
    pub fn peek(&self, n: usize) -> Result<Vec<QueuedUplink>, QueueError> {
        self.peek_from(0, n)
    }

    /// The oldest `n` messages whose seq is at least `from`, in order (for inspection).
    pub fn peek_from(&self, from: u64, n: usize) -> Result<Vec<QueuedUplink>, QueueError> {
        let read = || -> Result<Rows, TxError> {
            let txn = self.db.begin_read().map_err(redb::Error::from)?;
            let table = txn.open_table(UPLINKS).map_err(redb::Error::from)?;
            read_rows(&table, from, n)
        };
        let rows = read().map_err(|e| e.into_queue_error(&self.path))?;
        self.decode_rows(rows)
    }

    /// Like [`Queue::peek_from`], for publishing: the returned messages may reach the hub, so an open gap
    /// marker among them is sealed (in the same transaction as the read) and later drops start a new marker.
    pub fn next_to_send(&self, from: u64, n: usize) -> Result<Vec<QueuedUplink>, QueueError> {
        let read = || -> Result<(Rows, bool), TxError> {
            let txn = self.db.begin_read().map_err(redb::Error::from)?;
            let table = txn.open_table(UPLINKS).map_err(redb::Error::from)?;
            let open = txn.open_table(META).map_err(redb::Error::from)?.get(OPEN_GAP)?.map(|v| v.value());
            let rows = read_rows(&table, from, n)?;
            let seal = open.is_some_and(|g| rows.iter().any(|(seq, _)| *seq == g));
            Ok((rows, seal))
        };
        let (rows, seal) = read().map_err(|e| e.into_queue_error(&self.path))?;
        if !seal {
            return self.decode_rows(rows);
        }
        // Read again inside the write transaction, so what is returned is exactly what was sealed.
        let rows = self.write(|uplinks, meta| {
            let rows = read_rows(uplinks, from, n)?;
            meta.remove(OPEN_GAP)?;
            Ok(rows)
        })?;
        self.decode_rows(rows)
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

    /// Gives every queued message a new seq, the oldest `first` and each next one more, in order, in one
    /// transaction (a crash leaves either the old numbering or the new one, and every message). `next_seq`
    /// becomes at least `first + count`; it never decreases. Fails with [`QueueError::SeqOutOfRange`], changing
    /// nothing, when the new seqs would pass [`MAX_SEQ`]. The agent calls this when the hub reports that it
    /// holds different data under a queued seq.
    pub fn renumber_from(&self, first: u64) -> Result<Renumbered, QueueError> {
        self.write(|uplinks, meta| {
            let mut rows = Vec::new();
            for entry in uplinks.iter()? {
                let (k, v) = entry?;
                rows.push((k.value(), v.value().to_vec()));
            }
            let count = rows.len() as u64;
            if first == 0 || first.checked_add(count).is_none_or(|end| end - 1 > MAX_SEQ) {
                return Err(TxError::SeqOutOfRange { first, count });
            }
            let open_gap = meta.get(OPEN_GAP)?.map(|v| v.value());
            let mut new_open_gap = None;
            uplinks.retain(|_, _| false)?;
            for (new_seq, (old_seq, record)) in (first..).zip(rows) {
                let (kind, mut uplink) = decode(old_seq, &record)?;
                uplink.seq = new_seq;
                uplinks.insert(new_seq, encode(kind, &uplink).as_slice())?;
                if open_gap == Some(old_seq) {
                    new_open_gap = Some(new_seq);
                }
            }
            match new_open_gap {
                Some(g) => meta.insert(OPEN_GAP, g)?,
                None => meta.remove(OPEN_GAP)?,
            };
            let next_seq = get_or(meta, NEXT_SEQ, 1)?.max(first + count);
            meta.insert(NEXT_SEQ, next_seq)?;
            Ok(Renumbered { count, first, next_seq })
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

    fn decode_rows(&self, rows: Rows) -> Result<Vec<QueuedUplink>, QueueError> {
        rows.into_iter()
            .map(|(seq, record)| {
                let topic = match record.first() {
                    Some(&KIND_TELEMETRY) => DeviceTopic::Telemetry,
                    Some(&KIND_EVENT | &KIND_GAP) => DeviceTopic::Events,
                    Some(&KIND_STATE) => DeviceTopic::State,
                    _ => {
                        return Err(QueueError::Corrupt { path: self.path.to_path_buf(), seq });
                    }
                };
                let payload = Bytes::from(record).slice(1..);
                Ok(QueuedUplink { seq, topic, payload })
            })
            .collect()
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
        f: impl FnOnce(&mut redb::Table<u64, &[u8]>, &mut redb::Table<&str, u64>) -> Result<T, TxError>,
    ) -> Result<T, QueueError> {
        let run = || -> Result<T, TxError> {
            // Default durability is immediate: commit returns after fsync, so an acknowledged push survives a
            // power cut. An error drops the transaction uncommitted: nothing of it reaches the file.
            let txn = self.db.begin_write().map_err(redb::Error::from)?;
            let out = {
                let mut uplinks = txn.open_table(UPLINKS).map_err(redb::Error::from)?;
                let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
                f(&mut uplinks, &mut meta)?
            };
            txn.commit().map_err(redb::Error::from)?;
            Ok(out)
        };
        run().map_err(|e| e.into_queue_error(&self.path))
    }
}

/// Records as stored: (seq, kind byte + JSON).
type Rows = Vec<(u64, Vec<u8>)>;

/// Why a transaction's body failed; the path is added by [`TxError::into_queue_error`].
enum TxError {
    Db(redb::Error),
    Corrupt(u64),
    SeqOutOfRange { first: u64, count: u64 },
}

impl TxError {
    fn into_queue_error(self, path: &Path) -> QueueError {
        match self {
            TxError::Db(e) => db_err(path, e),
            TxError::Corrupt(seq) => QueueError::Corrupt { path: path.to_path_buf(), seq },
            TxError::SeqOutOfRange { first, count } => {
                QueueError::SeqOutOfRange { path: path.to_path_buf(), first, count }
            }
        }
    }
}

impl From<redb::Error> for TxError {
    fn from(e: redb::Error) -> Self {
        TxError::Db(e)
    }
}

impl From<redb::StorageError> for TxError {
    fn from(e: redb::StorageError) -> Self {
        TxError::Db(e.into())
    }
}

/// The messages dropped by one push, or recorded in one gap marker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    count: u64,
    first: u64,
    last: u64,
}

impl Dropped {
    fn add(&mut self, seq: u64) {
        self.first = if self.count == 0 { seq } else { self.first.min(seq) };
        self.last = self.last.max(seq);
        self.count += 1;
    }

    fn merge(self, o: Dropped) -> Dropped {
        Dropped { count: self.count + o.count, first: self.first.min(o.first), last: self.last.max(o.last) }
    }
}

fn kind_byte(topic: DeviceTopic) -> u8 {
    match topic {
        DeviceTopic::Telemetry => KIND_TELEMETRY,
        DeviceTopic::Events => KIND_EVENT,
        // Command acknowledgements are not queued; state is the only other kind.
        DeviceTopic::State | DeviceTopic::CommandAck => KIND_STATE,
    }
}

fn encode(kind: u8, uplink: &Uplink) -> Vec<u8> {
    let json = uplink.to_json();
    let mut record = Vec::with_capacity(json.len() + 1);
    record.push(kind);
    record.extend_from_slice(&json);
    record
}

/// The kind byte and the parsed uplink of a stored record.
fn decode(seq: u64, record: &[u8]) -> Result<(u8, Uplink), TxError> {
    let (kind, json) = record.split_first().ok_or(TxError::Corrupt(seq))?;
    let topic = match *kind {
        KIND_TELEMETRY => DeviceTopic::Telemetry,
        KIND_EVENT | KIND_GAP => DeviceTopic::Events,
        KIND_STATE => DeviceTopic::State,
        _ => return Err(TxError::Corrupt(seq)),
    };
    let uplink = Uplink::parse(topic, json).map_err(|_| TxError::Corrupt(seq))?;
    if uplink.seq != seq {
        return Err(TxError::Corrupt(seq));
    }
    Ok((*kind, uplink))
}

fn gap_record(seq: u64, ts: u64, d: Dropped) -> Vec<u8> {
    let mut data = Fields::new();
    // Counts and seqs are below 2^53, so an f64 holds them exactly.
    data.insert("dropped".into(), Value::Number(d.count as f64));
    data.insert("first_seq".into(), Value::Number(d.first as f64));
    data.insert("last_seq".into(), Value::Number(d.last as f64));
    encode(KIND_GAP, &Uplink { seq, ts, body: UplinkBody::Event { event: GAP_EVENT.into(), data } })
}

/// What the gap marker at `seq` records so far, and its timestamp.
fn read_gap(uplinks: &redb::Table<u64, &[u8]>, seq: u64) -> Result<(Dropped, u64), TxError> {
    let record = uplinks.get(seq)?.ok_or(TxError::Corrupt(seq))?.value().to_vec();
    let (kind, uplink) = decode(seq, &record)?;
    let UplinkBody::Event { event, data } = uplink.body else { return Err(TxError::Corrupt(seq)) };
    if kind != KIND_GAP || event != GAP_EVENT {
        return Err(TxError::Corrupt(seq));
    }
    let field = |name: &str| match data.get(name) {
        Some(Value::Number(n)) if *n >= 0.0 && n.fract() == 0.0 => Ok(*n as u64),
        _ => Err(TxError::Corrupt(seq)),
    };
    Ok((Dropped { count: field("dropped")?, first: field("first_seq")?, last: field("last_seq")? }, uplink.ts))
}

/// The seq of the oldest record that is not a gap marker.
fn oldest_data(uplinks: &redb::Table<u64, &[u8]>) -> Result<Option<u64>, TxError> {
    for entry in uplinks.iter()? {
        let (k, v) = entry?;
        if v.value().first() != Some(&KIND_GAP) {
            return Ok(Some(k.value()));
        }
    }
    Ok(None)
}

fn read_rows(table: &impl ReadableTable<u64, &'static [u8]>, from: u64, n: usize) -> Result<Rows, TxError> {
    let mut out = Vec::with_capacity(n.min(64));
    for entry in table.range(from..)?.take(n) {
        let (k, v) = entry?;
        out.push((k.value(), v.value().to_vec()));
    }
    Ok(out)
}

fn get_or(meta: &redb::Table<&str, u64>, key: &str, default: u64) -> Result<u64, TxError> {
    Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(default))
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> QueueError {
    QueueError::Db { path: path.to_path_buf(), source: e.into() }
}

#[cfg(test)]
mod tests;
