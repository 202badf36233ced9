//! The MQTTS endpoint: TLS 1.3 with a mandatory device certificate (checked by the hub's own verifier,
//! including revocation), then one [`session`] task per connection. There is no plaintext MQTT listener.

pub mod session;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::admission::{Slot, Stage, StageLimits};
use crate::clock::Clock;
use crate::commands::Commands;
use crate::identity::{Identity, cert_facts};
use crate::monitoring::{Monitor, SecurityEvent};
use crate::routing::Routing;
use crate::store::Store;
use crate::telemetry::{Ingest, Quotas};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct MqttLimits {
    /// Largest inbound packet, bytes.
    pub max_packet: u32,
    /// QoS 1 messages a client may have unacknowledged.
    pub receive_max: u16,
    /// Subscriptions per session.
    pub max_subscriptions: usize,
    /// Topic filters in one SUBSCRIBE or UNSUBSCRIBE; more close the connection.
    pub max_filters_per_packet: usize,
    /// Sustained packets (and topic filters) per second.
    pub rate_per_sec: u32,
    /// Burst of packets.
    pub burst: u32,
    /// Largest keep-alive accepted; 0 or larger is replaced by this.
    pub max_keep_alive: u16,
    /// Time from TCP accept to the end of the TLS handshake, and again to CONNECT.
    pub connect_timeout: Duration,
    /// Most concurrent device sessions (authenticated, CONNECT accepted).
    pub max_connections: usize,
    /// Connections in their handshake or before CONNECT: in all, and per source address.
    pub pending: StageLimits,
    /// Trusted load balancers that send a PROXY v2 header (see `transport::proxy`).
    pub proxy_from: Arc<[std::net::IpAddr]>,
}

impl Default for MqttLimits {
    fn default() -> Self {
        MqttLimits {
            max_packet: 64 * 1024,
            receive_max: 64,
            max_subscriptions: 8,
            max_filters_per_packet: 16,
            rate_per_sec: 100,
            burst: 200,
            max_keep_alive: 600,
            connect_timeout: Duration::from_secs(5),
            max_connections: 200_000,
            pending: StageLimits { total: 2048, per_source: 64 },
            proxy_from: Arc::from(Vec::new()),
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
    /// Identity (certificate checks and change notices).
    pub identity: Identity,
    /// Daily uplink quotas.
    pub quotas: Quotas,
    /// The hub's clock.
    pub clock: Clock,
    /// The bus (session takeover across nodes).
    pub bus: crate::bus::Bus,
    /// Wills waiting out their delay (shared with [`crate::HubState`] for tests and monitoring).
    pub wills: Arc<session::PendingWills>,
}

/// Builds the TLS configuration of the MQTT listener.
pub fn tls_config(identity: &Identity, allow_tls12: bool) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    super::server_tls(identity, allow_tls12, true, Duration::ZERO, b"mqtt")
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, ctx: Arc<Ctx>) {
    let acceptor = TlsAcceptor::from(tls);
    let pending = Stage::new(ctx.limits.pending);
    let sessions = Stage::new(StageLimits { total: ctx.limits.max_connections, per_source: 0 });
    loop {
        let (mut tcp, peer) = super::accept(&listener).await;
        let _ = tcp.set_nodelay(true);
        if ctx.limits.proxy_from.contains(&peer.ip()) {
            // From a trusted balancer: the client it names is the source that admission counts.
            let (acceptor, ctx, sessions, pending) = (acceptor.clone(), ctx.clone(), sessions.clone(), pending.clone());
            tokio::spawn(async move {
                let proxy_from = ctx.limits.proxy_from.clone();
                let client =
                    match super::proxy::client_address(&mut tcp, peer, &proxy_from, ctx.limits.connect_timeout).await {
                        Ok(client) => client,
                        Err(e) => {
                            ctx.monitor.record(SecurityEvent {
                                device: None,
                                source: Some(peer.ip()),
                                kind: "proxy_header_refused",
                                detail: format!("MQTTS: {e}"),
                            });
                            return;
                        }
                    };
                if let Some(slot) = admit(&pending, &ctx, client) {
                    handle(tcp, client, acceptor, ctx, slot, sessions).await;
                }
            });
            continue;
        }
        // Before any work: a source holding its share of pending slots, or a full pending stage, is closed.
        let Some(slot) = admit(&pending, &ctx, peer) else { continue };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            handle(tcp, peer, acceptor, ctx, slot, sessions).await;
        });
    }
}

/// A pending slot for `source`, or `None` (recorded as a security event) when its share or the stage is full.
fn admit(pending: &Stage, ctx: &Ctx, source: SocketAddr) -> Option<Slot> {
    match pending.admit(source.ip()) {
        Ok(slot) => Some(slot),
        Err(refused) => {
            ctx.monitor.record(SecurityEvent {
                device: None,
                source: Some(source.ip()),
                kind: "connection_refused",
                detail: format!("MQTTS: {refused}"),
            });
            None
        }
    }
}

async fn handle(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<Ctx>,
    pending: Slot,
    sessions: Stage,
) {
    let tls = match tokio::time::timeout(ctx.limits.connect_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ctx.monitor.record(SecurityEvent {
                device: None,
                source: Some(peer.ip()),
                kind: "tls_refused",
                detail: format!("MQTTS: {e}"),
            });
            return;
        }
        Err(_) => {
            ctx.monitor.record(SecurityEvent {
                device: None,
                source: Some(peer.ip()),
                kind: "handshake_timeout",
                detail: format!("MQTTS: no TLS handshake within {:?}", ctx.limits.connect_timeout),
            });
            return;
        }
    };
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| cert_facts(c));
    let Some(cert) = cert else {
        // Unreachable with the mandatory verifier; refuse rather than guess.
        return;
    };
    session::run(tls, cert, peer, ctx, session::Admission { pending, sessions }).await;
}
