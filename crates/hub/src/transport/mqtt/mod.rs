//! The MQTTS endpoint: TLS 1.3 with a mandatory device certificate (checked by the hub's own verifier,
//! including revocation), then one [`session`] task per connection. There is no plaintext MQTT listener.

pub mod session;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::commands::Commands;
use crate::identity::{Identity, device_id_of};
use crate::monitoring::{Monitor, SecurityEvent};
use crate::routing::Routing;
use crate::store::Store;
use crate::telemetry::Ingest;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct MqttLimits {
    /// Largest inbound packet, bytes.
    pub max_packet: u32,
    /// QoS 1 messages a client may have unacknowledged.
    pub receive_max: u16,
    /// Subscriptions per session.
    pub max_subscriptions: usize,
    /// Sustained publishes per second.
    pub rate_per_sec: u32,
    /// Burst of publishes.
    pub burst: u32,
    /// Largest keep-alive accepted; 0 or larger is replaced by this.
    pub max_keep_alive: u16,
    /// Time from TCP accept to the end of the TLS handshake, and again to CONNECT.
    pub connect_timeout: Duration,
    /// Most concurrent connections; more are closed at accept.
    pub max_connections: usize,
}

impl Default for MqttLimits {
    fn default() -> Self {
        MqttLimits {
            max_packet: 64 * 1024,
            receive_max: 64,
            max_subscriptions: 8,
            rate_per_sec: 100,
            burst: 200,
            max_keep_alive: 600,
            connect_timeout: Duration::from_secs(10),
            max_connections: 200_000,
        }
    }
}

/// What sessions need.
#[derive(Debug)]
pub struct Ctx {
    /// Limits.
    pub limits: MqttLimits,
    /// Storage.
    pub store: Store,
    /// Durable ingest.
    pub ingest: Ingest,
    /// Security events.
    pub monitor: Monitor,
    /// Live connections.
    pub routing: Routing,
    /// Commands.
    pub commands: Commands,
    /// Identity (revocation notices).
    pub identity: Identity,
}

/// Builds the TLS configuration of the MQTT listener.
pub fn tls_config(identity: &Identity, allow_tls12: bool) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    super::server_tls(identity, allow_tls12, true, b"mqtt")
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, ctx: Arc<Ctx>) {
    let acceptor = TlsAcceptor::from(tls);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, peer) = super::accept(&listener).await;
        if active.load(Ordering::Relaxed) >= ctx.limits.max_connections {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let active = active.clone();
        active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            handle(tcp, peer, acceptor, ctx).await;
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn handle(tcp: tokio::net::TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, ctx: Arc<Ctx>) {
    let tls = match tokio::time::timeout(ctx.limits.connect_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ctx.monitor.record(SecurityEvent {
                device: None,
                source: Some(peer.to_string()),
                kind: "tls_refused",
                detail: e.to_string(),
            });
            return;
        }
        Err(_) => return,
    };
    let device = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(device_id_of);
    let Some(device) = device else {
        // Unreachable with the mandatory verifier; refuse rather than guess.
        return;
    };
    session::run(tls, device, peer, ctx).await;
}
