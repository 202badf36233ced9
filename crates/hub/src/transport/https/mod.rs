//! The HTTPS endpoint: TLS 1.3 (optionally 1.2), with an optional client certificate that, when presented, must
//! be a valid, unrevoked device certificate (used by renewal). Serves the REST API; there is no plaintext HTTP.

pub mod api;
pub mod auth;
pub mod disclosure;
pub mod error;
pub mod links;
pub mod passkeys;
pub mod people;
pub mod updates;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::admission::{Slot, SourceKey, Stage, StageLimits};
use crate::identity::{CertFacts, Identity, cert_facts};
use crate::monitoring::{Monitor, SecurityEvent};

/// The whole HTTPS application, pages and API, as one router over the hub's state: what [`serve`] runs on each
/// connection, and what tests drive with `oneshot` where no socket is needed.
pub fn app(state: crate::HubState) -> Router {
    api::router(state)
}

/// The device certificate that authenticated the connection, if any (it may be expired within the renewal
/// grace period: only renewal accepts such a connection).
#[derive(Debug, Clone)]
pub struct PeerDevice(pub Option<CertFacts>);

/// The connection's remote address.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The client's address, as handlers take it (`Option<Extension<PeerAddr>>`: absent when a test drives the router
/// without a socket).
pub fn source_ip(peer: &Option<axum::Extension<PeerAddr>>) -> Option<std::net::IpAddr> {
    peer.as_ref().map(|p| p.0.0.ip())
}

/// Builds the TLS configuration of the HTTPS listener: a device certificate is optional, and one expired for
/// at most `expired_grace` is let through for renewal.
pub fn tls_config(
    identity: &Identity,
    allow_tls12: bool,
    expired_grace: std::time::Duration,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    super::server_tls(identity, allow_tls12, false, expired_grace, b"http/1.1")
}

/// Limits of the HTTPS listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpsLimits {
    /// Connections in their TLS handshake: in all and per source.
    pub pending: StageLimits,
    /// Established connections without a device certificate (people, programs, enrolment): in all and per
    /// source. Connections with a device certificate use their own [`HttpsLimits::device_connections`], so
    /// anonymous clients can never take the slots devices need to renew.
    pub anonymous: StageLimits,
    /// Established connections with a device certificate: in all and per source; per device at most
    /// [`MAX_CONNECTIONS_PER_DEVICE`]. So one device (or its stolen certificate) cannot take the slots others
    /// need to renew.
    pub device_connections: StageLimits,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to send the request headers.
    pub header_timeout: Duration,
    /// Longest life of one connection, so a client that trickles requests or never reads the answer cannot hold
    /// a connection (requests here are small; clients simply reconnect).
    pub max_lifetime: Duration,
}

impl Default for HttpsLimits {
    fn default() -> Self {
        HttpsLimits {
            pending: StageLimits { total: 1024, per_source: 32 },
            anonymous: StageLimits { total: 3072, per_source: 64 },
            device_connections: StageLimits { total: 1024, per_source: 16 },
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(60),
        }
    }
}

/// How long a request in flight at a connection's maximum lifetime may still take before the connection is dropped.
pub const LIFETIME_GRACE: Duration = Duration::from_secs(30);

/// Most concurrent HTTPS connections one device certificate may hold.
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 2;

/// Serves `app` over TLS until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: HttpsLimits,
    monitor: Monitor,
    proxy_from: Arc<[std::net::IpAddr]>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let pending = Stage::new(limits.pending);
    let anonymous = Stage::new(limits.anonymous);
    let devices = Stage::new(limits.device_connections);
    let per_device = Stage::new(StageLimits { total: usize::MAX, per_source: MAX_CONNECTIONS_PER_DEVICE });
    let stages = Stages { pending, anonymous, devices, per_device };
    loop {
        let (tcp, accepted_from) = super::accept(&listener).await;
        let (acceptor, app, stages, monitor, proxy_from) =
            (acceptor.clone(), app.clone(), stages.clone(), monitor.clone(), proxy_from.clone());
        if proxy_from.contains(&accepted_from.ip()) {
            // From a trusted balancer: the client its PROXY header names is the source admission counts. Read
            // in the connection's own task, within the handshake timeout.
            tokio::spawn(async move {
                let mut tcp = tcp;
                match super::proxy::client_address(&mut tcp, accepted_from, &proxy_from, limits.handshake_timeout).await
                {
                    Ok(peer) => {
                        if let Some(slot) = admit_pending(&stages.pending, &monitor, peer) {
                            connection(tcp, peer, slot, acceptor, app, stages, limits, monitor).await;
                        }
                    }
                    Err(e) => monitor.record(SecurityEvent {
                        device: None,
                        source: Some(accepted_from.ip()),
                        kind: "proxy_header_refused",
                        detail: format!("HTTPS: {e}"),
                    }),
                }
            });
            continue;
        }
        let peer = accepted_from;
        let Some(slot) = admit_pending(&stages.pending, &monitor, peer) else { continue };
        tokio::spawn(connection(tcp, peer, slot, acceptor, app, stages, limits, monitor));
    }
}

/// The admission stages of the HTTPS listener.
#[derive(Clone)]
struct Stages {
    pending: Stage,
    anonymous: Stage,
    devices: Stage,
    per_device: Stage,
}

/// A handshake slot for `peer`, or `None` (recorded) when its share or the stage is full.
fn admit_pending(pending: &Stage, monitor: &Monitor, peer: SocketAddr) -> Option<Slot> {
    match pending.admit(peer.ip()) {
        Ok(slot) => Some(slot),
        Err(refused) => {
            monitor.record(SecurityEvent {
                device: None,
                source: Some(peer.ip()),
                kind: "connection_refused",
                detail: format!("HTTPS: {refused}"),
            });
            None
        }
    }
}

/// One connection: TLS handshake, admission by kind of client, then HTTP until it ends.
#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
    acceptor: TlsAcceptor,
    app: Router,
    stages: Stages,
    limits: HttpsLimits,
    monitor: Monitor,
) {
    let Stages { anonymous, devices, per_device, .. } = &stages;
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            monitor.record(SecurityEvent {
                device: None,
                source: Some(peer.ip()),
                kind: "tls_refused",
                detail: format!("HTTPS: {e}"),
            });
            return;
        }
        Err(_) => {
            monitor.record(SecurityEvent {
                device: None,
                source: Some(peer.ip()),
                kind: "handshake_timeout",
                detail: format!("HTTPS: no TLS handshake within {:?}", limits.handshake_timeout),
            });
            return;
        }
    };
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| cert_facts(c));
    let stage = if cert.is_some() { &devices } else { &anonymous };
    let admitted = stage.admit(peer.ip()).and_then(|slot| match &cert {
        Some(c) => per_device.admit_key(SourceKey::of_name(c.device.as_str())).map(|d| (slot, Some(d))),
        None => Ok((slot, None)),
    });
    let _slots = match admitted {
        Ok(s) => s,
        Err(refused) => {
            monitor.record(SecurityEvent {
                device: cert.map(|c| c.device.to_string()),
                source: Some(peer.ip()),
                kind: "connection_refused",
                detail: format!("HTTPS after handshake: {refused}"),
            });
            return;
        }
    };
    drop(slot);
    let svc = tower::ServiceExt::map_request(app, move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(PeerDevice(cert.clone()));
        req.extensions_mut().insert(PeerAddr(peer));
        req
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = tokio::time::sleep(limits.max_lifetime) => {
            // At its maximum lifetime the connection closes gracefully: a request in flight gets its answer (with
            // `Connection: close`), never a cut connection; only then, or after a short grace, is it dropped.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(LIFETIME_GRACE, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::debug!(peer = %peer, "HTTPS connection dropped after its lifetime and grace");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(peer = %peer, error = %e, "HTTPS connection ended with an error");
    }
}
