//! This node's live device connections, and the dispatcher that applies bus notices to them.
//!
//! Each connected device registers a channel here for downlinks, and a close signal. One device has at most
//! one live connection on all nodes together: every connection gets a session epoch from the store, and a
//! connection closes when this node or another reports a higher epoch for its device. A close is a `watch`
//! value, not a message in the bounded downlink channel, so it can never be dropped because that channel is
//! full (before, a takeover close sent with `try_send` could be lost and leave two live sessions).
//!
//! Capabilities never send to a connection directly: they publish a [`Notice`] on the bus, and the
//! dispatcher of whichever node holds the connection delivers it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, watch};

use crate::bus::Notice;
use hearth_proto::DeviceId;
pub use hearth_proto::downlink::{CloseReason, Downlink};

/// A registered connection.
#[derive(Debug, Clone)]
pub struct Link {
    /// Unique per connection on this node, to tell a connection from its successor.
    pub conn_id: u64,
    /// The session epoch the store gave this connection.
    pub epoch: i64,
    /// Its command channel (command ids; the session reads each from the store).
    pub tx: mpsc::Sender<String>,
    /// Its close signal (the session watches it).
    pub close: Arc<watch::Sender<Option<CloseReason>>>,
}

impl Link {
    /// A link and the receiving ends its session keeps.
    pub fn new(conn_id: u64, epoch: i64) -> (Link, mpsc::Receiver<String>, watch::Receiver<Option<CloseReason>>) {
        let (tx, rx) = mpsc::channel(64);
        let (close, close_rx) = watch::channel(None);
        (Link { conn_id, epoch, tx, close: Arc::new(close) }, rx, close_rx)
    }

    /// Asks the session to close. Never lost: the session sees the latest reason whenever it next looks.
    pub fn close(&self, reason: CloseReason) {
        self.close.send_replace(Some(reason));
    }
}

/// The registry. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    inner: Arc<Mutex<HashMap<DeviceId, Link>>>,
    next_conn: Arc<AtomicU64>,
}

impl Routing {
    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection and closes the one it replaces on this node (session takeover). A connection
    /// whose epoch is already superseded (a newer one registered first) is closed at once instead.
    pub fn register(&self, device: &DeviceId, link: Link) {
        let mut links = self.lock();
        match links.get(device) {
            Some(current) if current.epoch > link.epoch => link.close(CloseReason::SessionTakenOver),
            _ => {
                if let Some(old) = links.insert(device.clone(), link) {
                    old.close(CloseReason::SessionTakenOver);
                }
            }
        }
    }

    /// Removes a connection if it is still the registered one.
    pub fn unregister(&self, device: &DeviceId, conn_id: u64) {
        let mut links = self.lock();
        if links.get(device).is_some_and(|l| l.conn_id == conn_id) {
            links.remove(device);
        }
    }

    /// Closes this node's connection of `device` if its epoch is below `epoch` (another node took over).
    pub fn close_older(&self, device: &DeviceId, epoch: i64) {
        if let Some(l) = self.lock().get(device).filter(|l| l.epoch < epoch) {
            l.close(CloseReason::SessionTakenOver);
        }
    }

    /// Delivers a downlink to this node's connection of `device`; false if it has none here or its channel is
    /// full (a command then stays open in the store and goes out at the next subscribe).
    pub fn deliver(&self, device: &DeviceId, downlink: Downlink) -> bool {
        let Some(link) = self.lock().get(device).cloned() else { return false };
        match downlink {
            Downlink::Command { id } => link.tx.try_send(id).is_ok(),
            Downlink::Close { reason } => {
                link.close(reason);
                true
            }
        }
    }

    /// Every connection on this node: device and epoch.
    pub fn links(&self) -> Vec<(DeviceId, i64)> {
        self.lock().iter().map(|(d, l)| (d.clone(), l.epoch)).collect()
    }

    /// Number of live connections on this node.
    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    /// Whether a device is connected to this node.
    pub fn is_connected(&self, device: &DeviceId) -> bool {
        self.lock().contains_key(device)
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let links: Vec<Link> = self.lock().values().cloned().collect();
        for l in links {
            l.close(reason);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Link>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies bus notices on this node until the bus closes: downlinks and takeovers to this node's connections,
/// certificate changes to the identity view (reloaded from the store, which then tells the sessions). When
/// notices were missed (this node fell behind), the whole certificate view is reloaded.
pub async fn dispatch(
    mut rx: broadcast::Receiver<Notice>,
    routing: Routing,
    identity: crate::identity::Identity,
    store: crate::store::Store,
) {
    let (reloads, mut pending) = mpsc::channel::<DeviceId>(4096);
    let worker = identity.clone();
    tokio::spawn(async move {
        while let Some(device) = pending.recv().await {
            if let Err(e) = worker.reload_device(&device).await {
                tracing::warn!(error = %e, device = %device, "could not reload a device's certificates");
            }
        }
    });
    loop {
        match rx.recv().await {
            Ok(Notice::Downlink { device, downlink }) => {
                routing.deliver(&device, downlink);
            }
            Ok(Notice::SessionOpened { device, epoch }) => routing.close_older(&device, epoch),
            Ok(Notice::CertsChanged { device }) => {
                // One worker, a bounded queue: a flood of notices costs at most one reload per device queued.
                if reloads.try_send(device).is_err() {
                    tracing::warn!("certificate reloads are behind; later notices or the sweep catch up");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "bus notices missed (this node fell behind); re-reading from the store");
                let (identity, routing, store) = (identity.clone(), routing.clone(), store.clone());
                tokio::spawn(async move {
                    if let Err(e) = identity.reload_all().await {
                        tracing::warn!(error = %e, "could not reload certificates");
                    }
                    // Takeovers among the missed notices: the store's epochs decide.
                    for (device, epoch) in routing.links() {
                        match store.session_epoch(device.as_str()).await {
                            Ok(current) if current > epoch => routing.close_older(&device, current),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "could not re-check a session epoch"),
                        }
                    }
                });
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping() -> String {
        "c".into()
    }

    #[test]
    fn takeover_close_is_not_lost_when_the_command_channel_is_full() {
        let routing = Routing::default();
        let device = DeviceId::parse("abcdefghijklmnop").expect("id");
        let (old, _old_commands, old_close) = Link::new(1, 1);
        // The old session stopped reading: its command channel is full.
        while old.tx.try_send(ping()).is_ok() {}
        routing.register(&device, old);
        let (new, _new_commands, new_close) = Link::new(2, 2);
        routing.register(&device, new);
        assert_eq!(*old_close.borrow(), Some(CloseReason::SessionTakenOver), "the old session is told to close");
        assert_eq!(*new_close.borrow(), None);
        routing.unregister(&device, 1);
        assert!(routing.is_connected(&device), "the old session's end does not remove the new one");
    }

    #[test]
    fn only_a_higher_epoch_closes_a_connection() {
        let routing = Routing::default();
        let device = DeviceId::parse("dev-1").expect("id");
        let (link, _rx, close) = Link::new(1, 5);
        routing.register(&device, link);
        routing.close_older(&device, 5);
        routing.close_older(&device, 4);
        assert_eq!(*close.borrow(), None, "the same or an older epoch elsewhere changes nothing");
        routing.close_older(&device, 6);
        assert_eq!(*close.borrow(), Some(CloseReason::SessionTakenOver));
        // A connection registered after a newer one (its notice arrived first) closes at once.
        let (newer, _rx2, newer_close) = Link::new(2, 9);
        routing.register(&device, newer);
        let (late, _rx3, late_close) = Link::new(3, 7);
        routing.register(&device, late);
        assert_eq!(*late_close.borrow(), Some(CloseReason::SessionTakenOver));
        assert_eq!(*newer_close.borrow(), None);
    }
}
