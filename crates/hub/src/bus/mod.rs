//! The bus between hub nodes: notices that another node must see (something for a device's connection, a new
//! connection that supersedes an older one, a changed certificate or revocation).
//!
//! One node needs no bus service: the in-process bus hands every notice to this node's dispatcher. Several
//! nodes share NATS JetStream (`bus.url`): a notice is published to the stream `HEARTH_BUS` and acknowledged
//! by the server before `publish` returns, and each node reads the stream through an ordered consumer, which
//! resumes after a reconnect where it left off, so a node that was cut off for a moment misses nothing the
//! stream still holds (10 minutes). The store is always the record and the bus only says "look again": a
//! node that starts rebuilds its view from the store before it accepts connections, and re-reads revocations
//! every 30 s as a backstop.
//!
//! A notice is delivered to the publishing node directly (not through NATS), so a node keeps serving its own
//! devices while NATS is unreachable; notices from other nodes carry their origin and are never applied twice.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use hearth_proto::DeviceId;
use hearth_proto::downlink::Downlink;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// The JetStream stream the hub creates.
pub const STREAM: &str = "HEARTH_BUS";
/// Its subjects.
const SUBJECT_PREFIX: &str = "hearth.bus";
/// How long the stream keeps a notice.
const MAX_AGE: Duration = Duration::from_secs(600);
/// Most bytes the stream keeps (the oldest notices go first).
const MAX_BYTES: i64 = 256 << 20;
/// Notices buffered per local subscriber before it counts as lagging (and rebuilds from the store).
const LOCAL_CAPACITY: usize = 8192;

/// A notice for every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// Something for a device's live connection, on whichever node holds it.
    Downlink {
        /// The device.
        device: DeviceId,
        /// What to do.
        downlink: Downlink,
    },
    /// A device opened a connection with this session epoch; any connection of it with a lower epoch closes.
    SessionOpened {
        /// The device.
        device: DeviceId,
        /// The new connection's epoch (from the store).
        epoch: i64,
    },
    /// A device's certificates or revocation changed: nodes reload them from the store.
    CertsChanged {
        /// The device.
        device: DeviceId,
    },
}

impl Notice {
    fn subject(&self) -> String {
        let (kind, device) = match self {
            Notice::Downlink { device, .. } => ("downlink", device),
            Notice::SessionOpened { device, .. } => ("session", device),
            Notice::CertsChanged { device } => ("certs", device),
        };
        format!("{SUBJECT_PREFIX}.{kind}.{device}")
    }
}

/// A notice as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The publishing node.
    origin: String,
    notice: Notice,
}

/// Why the bus could not be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting or setting up the stream failed.
    #[error("NATS at {url}: {detail}")]
    Connect {
        /// Where (no credentials).
        url: String,
        /// Why.
        detail: String,
    },
    /// A notice was not acknowledged by NATS.
    #[error("publishing to NATS: {0}")]
    Publish(String),
}

/// Handle to the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    /// This process's origin on the bus: the node name plus a random suffix, so two processes that share a
    /// node name (a cloned data directory) still hear each other.
    origin: String,
    local: broadcast::Sender<Notice>,
    nats: Option<async_nats::jetstream::Context>,
    location: String,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("node", &self.inner.node).field("location", &self.inner.location).finish()
    }
}

impl Bus {
    /// The in-process bus of a single node.
    pub fn local(node: &str) -> Bus {
        let (local, _) = broadcast::channel(LOCAL_CAPACITY);
        Bus {
            inner: Arc::new(Inner {
                node: node.to_owned(),
                origin: origin(node),
                local,
                nats: None,
                location: "in-process".into(),
            }),
        }
    }

    /// Connects to NATS at `url`, creates the stream if needed and starts reading it. `node` names this node
    /// (unique per process).
    pub async fn connect_nats(url: &str, node: &str) -> Result<Bus, BusError> {
        let shown = redact(url);
        let err = |e: &dyn std::fmt::Display| BusError::Connect { url: shown.clone(), detail: e.to_string() };
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            async_nats::ConnectOptions::new().name(format!("hearth-hub {node}")).connect(url),
        )
        .await
        .map_err(|_| err(&"no answer within 10 s"))?
        .map_err(|e| err(&e))?;
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{SUBJECT_PREFIX}.>")],
                max_age: MAX_AGE,
                // Notices are small; a reconnect storm must not grow the stream without bound.
                max_bytes: MAX_BYTES,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&format!("creating stream {STREAM} (is JetStream enabled?): {e}")))?;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&format!("creating a consumer: {e}")))?;
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        let (local, _) = broadcast::channel(LOCAL_CAPACITY);
        let inner =
            Arc::new(Inner { node: node.to_owned(), origin: origin(node), local, nats: Some(js), location: shown });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let Some(inner) = weak.upgrade() else { return };
                match msg {
                    Ok(msg) => match serde_json::from_slice::<Envelope>(&msg.payload) {
                        Ok(env) if env.origin == inner.origin => {}
                        Ok(env) => {
                            let _ = inner.local.send(env.notice);
                        }
                        Err(e) => tracing::warn!(error = %e, subject = %msg.subject, "unreadable bus notice; skipped"),
                    },
                    // The ordered consumer recreates itself after errors; log and go on.
                    Err(e) => tracing::warn!(error = %e, "bus consumer error; resuming"),
                }
            }
            tracing::error!("bus consumer ended; this node no longer hears other nodes");
        });
        tracing::info!(node, bus = %inner.location, "bus connected");
        Ok(Bus { inner })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Where the bus is (for logs and `doctor`; no credentials).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// Publishes a notice: this node sees it at once; with NATS, other nodes see it once the stream has
    /// acknowledged it (this call waits for that, up to 5 s).
    pub async fn publish(&self, notice: Notice) -> Result<(), BusError> {
        let _ = self.inner.local.send(notice.clone());
        let Some(js) = &self.inner.nats else { return Ok(()) };
        let subject = notice.subject();
        let payload = serde_json::to_vec(&Envelope { origin: self.inner.origin.clone(), notice })
            .map_err(|e| BusError::Publish(e.to_string()))?;
        let ack = tokio::time::timeout(Duration::from_secs(5), async {
            js.publish(subject, payload.into()).await.map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| BusError::Publish("no acknowledgement within 5 s".into()))?;
        ack.map(|_| ()).map_err(BusError::Publish)
    }

    /// Receives every notice from now on (this node's and, with NATS, every other node's).
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.inner.local.subscribe()
    }
}

/// `node` with a random suffix (the process's identity on the bus).
fn origin(node: &str) -> String {
    let mut raw = [0u8; 6];
    let suffix = match aws_lc_rs::rand::fill(&mut raw) {
        Ok(()) => raw.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        Err(_) => format!("{}", std::process::id()),
    };
    format!("{node}.{suffix}")
}

/// A NATS URL without user or password.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_are_redacted() {
        assert_eq!(redact("nats://user:pw@n1:4222"), "nats://n1:4222");
        assert_eq!(redact("nats://n1:4222"), "nats://n1:4222");
    }

    #[tokio::test]
    async fn the_local_bus_delivers_to_every_subscriber() {
        let bus = Bus::local("n1");
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        let device = DeviceId::parse("dev-1").unwrap();
        bus.publish(Notice::CertsChanged { device: device.clone() }).await.unwrap();
        assert_eq!(a.recv().await.unwrap(), Notice::CertsChanged { device: device.clone() });
        assert_eq!(b.recv().await.unwrap(), Notice::CertsChanged { device });
    }

    #[test]
    fn notices_have_per_device_subjects() {
        let device = DeviceId::parse("dev-1").unwrap();
        assert_eq!(Notice::SessionOpened { device, epoch: 3 }.subject(), "hearth.bus.session.dev-1");
    }
}
