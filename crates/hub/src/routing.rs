//! In-process routing from the hub's capabilities to live device connections.
//!
//! Each connected device registers a channel here for commands, and a close signal for administrative closes
//! (session takeover, shutdown). One device has at most one live connection: registering a new one closes the
//! old. A close is a `watch` value, not a message in the bounded command channel, so it can never be dropped
//! because that channel is full (before, a takeover close sent with `try_send` could be lost and leave two live
//! sessions of one device). This is the single-node router; the scale-out design puts NATS behind the same API.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::store::CommandRow;
use hearth_proto::DeviceId;

/// Why the hub closes a connection from outside its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The device was revoked.
    Revoked,
    /// The same device connected again.
    SessionTakenOver,
    /// The hub is shutting down.
    ShuttingDown,
}

/// What the hub sends down a device's connection.
#[derive(Debug)]
pub enum Downlink {
    /// Deliver a command.
    Command(CommandRow),
}

/// A registered connection.
#[derive(Debug, Clone)]
pub struct Link {
    /// Unique per connection, to tell a connection from its successor.
    pub conn_id: u64,
    /// Its command channel.
    pub tx: mpsc::Sender<Downlink>,
    /// Its close signal (the session watches it).
    pub close: Arc<watch::Sender<Option<CloseReason>>>,
}

impl Link {
    /// A link and the receiving ends its session keeps.
    pub fn new(conn_id: u64) -> (Link, mpsc::Receiver<Downlink>, watch::Receiver<Option<CloseReason>>) {
        let (tx, rx) = mpsc::channel(64);
        let (close, close_rx) = watch::channel(None);
        (Link { conn_id, tx, close: Arc::new(close) }, rx, close_rx)
    }

    /// Asks the session to close. Never lost: the session sees the latest reason whenever it next looks.
    pub fn close(&self, reason: CloseReason) {
        self.close.send_replace(Some(reason));
    }
}

/// The registry. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    inner: Arc<Mutex<Inner>>,
    next_conn: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Inner {
    links: HashMap<DeviceId, Link>,
    /// Devices whose persistent session holds a subscription to their command topic.
    persistent_subscriptions: HashSet<DeviceId>,
}

impl Routing {
    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection and closes the one it replaces (session takeover).
    pub fn register(&self, device: &DeviceId, link: Link) {
        if let Some(old) = self.lock().links.insert(device.clone(), link) {
            old.close(CloseReason::SessionTakenOver);
        }
    }

    /// Removes a connection if it is still the registered one.
    pub fn unregister(&self, device: &DeviceId, conn_id: u64) {
        let mut inner = self.lock();
        if inner.links.get(device).is_some_and(|l| l.conn_id == conn_id) {
            inner.links.remove(device);
        }
    }

    /// Sends to a device's live connection; false if it has none or its channel is full.
    pub fn send(&self, device: &DeviceId, msg: Downlink) -> bool {
        let tx = self.lock().links.get(device).map(|l| l.tx.clone());
        tx.is_some_and(|tx| tx.try_send(msg).is_ok())
    }

    /// Number of live connections.
    pub fn connected(&self) -> usize {
        self.lock().links.len()
    }

    /// Whether a device is connected.
    pub fn is_connected(&self, device: &DeviceId) -> bool {
        self.lock().links.contains_key(device)
    }

    /// Records or forgets a persistent subscription.
    pub fn set_persistent_subscription(&self, device: &DeviceId, on: bool) {
        let mut inner = self.lock();
        if on {
            inner.persistent_subscriptions.insert(device.clone());
        } else {
            inner.persistent_subscriptions.remove(device);
        }
    }

    /// Whether a persistent session with a command subscription exists.
    pub fn has_persistent_subscription(&self, device: &DeviceId) -> bool {
        self.lock().persistent_subscriptions.contains(device)
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let links: Vec<Link> = self.lock().links.values().cloned().collect();
        for l in links {
            l.close(reason);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_close_is_not_lost_when_the_command_channel_is_full() {
        let routing = Routing::default();
        let device = DeviceId::parse("abcdefghijklmnop").expect("id");
        let (old, _old_commands, old_close) = Link::new(1);
        // The old session stopped reading: its command channel is full.
        while old
            .tx
            .try_send(Downlink::Command(crate::store::CommandRow {
                id: "c".into(),
                device_id: "abcdefghijklmnop".into(),
                name: "ping".into(),
                args_json: "{}".into(),
                status: "pending".into(),
                created_at: 0,
                expires_at: 0,
                sent_at: None,
                answered_at: None,
                detail: None,
            }))
            .is_ok()
        {}
        routing.register(&device, old);
        let (new, _new_commands, new_close) = Link::new(2);
        routing.register(&device, new);
        assert_eq!(*old_close.borrow(), Some(CloseReason::SessionTakenOver), "the old session is told to close");
        assert_eq!(*new_close.borrow(), None);
        routing.unregister(&device, 1);
        assert!(routing.is_connected(&device), "the old session's end does not remove the new one");
    }
}
