//! The HTTPS endpoint: TLS 1.3 (optionally 1.2), with an optional client certificate that, when presented, must
//! be a valid, unrevoked device certificate (used by renewal). Serves the REST API; there is no plaintext HTTP.

pub mod api;
pub mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::identity::{Identity, device_id_of};
use hearth_proto::DeviceId;

/// The device that authenticated the connection with its certificate, if any.
#[derive(Debug, Clone)]
pub struct PeerDevice(pub Option<DeviceId>);

/// The connection's remote address.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Builds the TLS configuration of the HTTPS listener.
pub fn tls_config(identity: &Identity, allow_tls12: bool) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    super::server_tls(identity, allow_tls12, false, b"http/1.1")
}

/// Most concurrent HTTPS connections; more are closed at accept (they would share the process's file
/// descriptors with the devices' MQTT connections).
pub const MAX_CONNECTIONS: usize = 4096;

/// Longest life of one HTTPS connection, so a client that trickles a body or never reads the answer cannot hold
/// a connection (requests here are small; clients simply reconnect).
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves `app` over TLS until the task is aborted.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = super::accept(&listener).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "too many HTTPS connections; closing a new one");
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "HTTPS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let device = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(device_id_of);
            let svc =
                tower::ServiceExt::map_request(app, move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerDevice(device.clone()));
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            match tokio::time::timeout(MAX_CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "HTTPS connection ended with an error"),
                Err(_) => tracing::debug!(peer = %peer, "HTTPS connection closed at its maximum lifetime"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}
