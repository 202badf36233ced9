//! Device presence: when each device was last seen. Connects and disconnects are frequent (a reconnect storm is
//! thousands per second), so they are recorded in memory and written in one transaction per second instead of
//! one committed write per event. Last-seen is informational: losing the last second of it in a crash is
//! acceptable, unlike telemetry.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::Store;

/// Records presence. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence {
    tx: mpsc::Sender<(String, i64)>,
}

impl Presence {
    /// Starts the writer task.
    pub fn start(store: Store) -> Presence {
        let (tx, rx) = mpsc::channel(65_536);
        tokio::spawn(writer(store, rx));
        Presence { tx }
    }

    /// Notes that `device` was seen now (never blocks; under extreme load an update may be skipped).
    pub fn seen(&self, device: &str) {
        let _ = self.tx.try_send((device.to_owned(), crate::now_ms()));
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<(String, i64)>) {
    let mut batch = Vec::with_capacity(4096);
    loop {
        if rx.recv_many(&mut batch, 4096).await == 0 {
            return;
        }
        // Collect for up to a second so a storm becomes a few transactions.
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(x) = rx.try_recv() {
            batch.push(x);
        }
        let mut latest: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        for (id, at) in batch.drain(..) {
            let e = latest.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
        let rows: Vec<(String, i64)> = latest.into_iter().collect();
        if let Err(e) = store.touch_many(&rows).await {
            tracing::warn!(error = %e, devices = rows.len(), "could not record last-seen times");
        }
    }
}
