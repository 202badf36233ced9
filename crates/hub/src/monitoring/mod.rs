//! Security monitoring, first part: every refusal the hub makes (bad certificate, ACL violation, invalid payload,
//! limit breach) becomes a security event. Events go through a bounded channel to a writer that stores them in
//! batches, so a flood of violations can neither block connections nor grow memory: when the channel is full the
//! event is counted as dropped instead. Counters are kept in memory for the API.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{NewSecurityEvent, Store};

/// One security event.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    /// The device, when authenticated.
    pub device: Option<String>,
    /// The peer address.
    pub source: Option<String>,
    /// Stable kind (`acl_publish`, `acl_subscribe`, `invalid_payload`, `tls_refused`, `rate_limited`, …).
    pub kind: &'static str,
    /// Detail.
    pub detail: String,
}

/// Records security events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Monitor {
    tx: mpsc::Sender<(i64, SecurityEvent)>,
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    dropped: Arc<AtomicU64>,
}

impl Monitor {
    /// Starts the writer task.
    pub fn start(store: Store) -> Monitor {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(store, rx));
        Monitor { tx, counts: Arc::default(), dropped: Arc::default() }
    }

    /// Records an event (never blocks).
    pub fn record(&self, event: SecurityEvent) {
        tracing::warn!(kind = event.kind, device = ?event.device, source = ?event.source, detail = %event.detail, "security event");
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry(event.kind).or_default() += 1;
        let now = crate::now_ms();
        if self.tx.try_send((now, event)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts by kind since start, plus `dropped_from_store`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> =
            self.counts.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        out.insert("dropped_from_store".into(), self.dropped.load(Ordering::Relaxed));
        out
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<(i64, SecurityEvent)>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let rows: Vec<_> = batch
            .drain(..)
            .map(|(at, e)| NewSecurityEvent {
                at,
                device_id: e.device,
                source: e.source,
                kind: e.kind.to_owned(),
                detail: e.detail,
            })
            .collect();
        if let Err(e) = store.insert_security_events(&rows).await {
            tracing::error!(error = %e, lost = rows.len(), "could not store security events");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
