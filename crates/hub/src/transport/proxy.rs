//! The PROXY protocol (version 2, binary) from trusted load balancers: behind a TCP balancer every connection
//! comes from the balancer's address, so per-source admission, security events and logs would count the whole
//! balancer as one client. With `listen.proxy_protocol_from` listing the balancers' addresses, a connection
//! from one of them must start with a PROXY v2 header (HAProxy: `send-proxy-v2`), and the client address it
//! carries is used instead. A connection from any other address is taken as it is: nobody else can claim a
//! source address.
//!
//! Framing is read exactly (16 bytes, then the length they declare, at most [`MAX_HEADER`]), so not one byte
//! of the TLS handshake behind the header is consumed; the header itself is parsed and checked by `ppp`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

/// Longest header accepted: the fixed part, IPv6 addresses, and room for a few TLVs.
pub const MAX_HEADER: usize = 16 + 36 + 512;

/// Why a connection from a trusted balancer was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No complete header in time.
    #[error("no PROXY v2 header within {0:?}")]
    Timeout(Duration),
    /// The connection ended or failed while reading the header.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The declared header is longer than accepted.
    #[error("PROXY header of {0} bytes is longer than {MAX_HEADER}")]
    TooLong(usize),
    /// Not a valid PROXY v2 header.
    #[error("invalid PROXY v2 header: {0}")]
    Invalid(String),
}

/// The client's address: `peer` itself, unless `peer` is a trusted balancer, whose header then says who the
/// client is (a `LOCAL` header, such as a health check's, keeps `peer`).
pub async fn client_address<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    peer: SocketAddr,
    trusted: &[IpAddr],
    timeout: Duration,
) -> Result<SocketAddr, ProxyError> {
    if !trusted.contains(&peer.ip()) {
        return Ok(peer);
    }
    let read = async {
        let mut buf = vec![0u8; 16];
        io.read_exact(&mut buf).await?;
        // The fixed part alone must already be a valid start (signature, version, command, family).
        if let Err(e) = ppp::v2::Header::try_from(buf.as_slice())
            && !ppp::PartialResult::is_incomplete(&e)
        {
            return Err(ProxyError::Invalid(e.to_string()));
        }
        let declared = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if 16 + declared > MAX_HEADER {
            return Err(ProxyError::TooLong(16 + declared));
        }
        buf.resize(16 + declared, 0);
        io.read_exact(&mut buf[16..]).await?;
        let header = ppp::v2::Header::try_from(buf.as_slice()).map_err(|e| ProxyError::Invalid(e.to_string()))?;
        Ok(match (header.command, header.addresses) {
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)
            }
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)
            }
            // LOCAL (the balancer's own health check), or an address family without an IP: the balancer.
            _ => peer,
        })
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| ProxyError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (source, dest),
        )
        .build()
        .unwrap()
    }

    const BALANCER: &str = "10.0.0.5:40000";

    async fn run(bytes: Vec<u8>, peer: &str) -> (Result<SocketAddr, ProxyError>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&bytes).await.unwrap();
        drop(a);
        let trusted = ["10.0.0.5".parse().unwrap()];
        let got = client_address(&mut b, peer.parse().unwrap(), &trusted, Duration::from_millis(200)).await;
        let mut rest = Vec::new();
        let _ = b.read_to_end(&mut rest).await;
        (got, rest)
    }

    #[tokio::test]
    async fn a_trusted_balancer_names_the_client_and_nothing_after_the_header_is_consumed() {
        let client: SocketAddr = "203.0.113.9:51234".parse().unwrap();
        let mut bytes = header(client, "10.0.0.9:8883".parse().unwrap());
        bytes.extend_from_slice(b"\x16\x03\x01TLS");
        let (got, rest) = run(bytes, BALANCER).await;
        assert_eq!(got.unwrap(), client);
        assert_eq!(rest, b"\x16\x03\x01TLS", "the TLS handshake behind the header is left intact");
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let (got, _) = run(header(v6, "[2001:db8::1]:8883".parse().unwrap()), BALANCER).await;
        assert_eq!(got.unwrap(), v6);
    }

    #[tokio::test]
    async fn anyone_else_is_taken_as_they_are_and_nothing_is_read() {
        let forged = header("198.51.100.1:1".parse().unwrap(), "10.0.0.9:8883".parse().unwrap());
        let (got, rest) = run(forged.clone(), "192.0.2.77:5555").await;
        assert_eq!(got.unwrap(), "192.0.2.77:5555".parse().unwrap(), "an untrusted peer cannot claim a source");
        assert_eq!(rest, forged, "its bytes go to TLS untouched (where they fail)");
    }

    #[tokio::test]
    async fn bad_headers_from_a_balancer_are_refused() {
        let (got, _) = run(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh".to_vec(), BALANCER).await;
        assert!(matches!(got, Err(ProxyError::Invalid(_))), "TLS without a header: {got:?}");
        let mut long = header("203.0.113.9:1".parse().unwrap(), "10.0.0.9:8883".parse().unwrap());
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let (got, _) = run(long, BALANCER).await;
        assert!(matches!(got, Err(ProxyError::TooLong(_))), "{got:?}");
        let (got, _) = run(vec![0x0d, 0x0a], BALANCER).await;
        assert!(matches!(got, Err(ProxyError::Io(_))), "cut short: {got:?}");
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0x0d, 0x0a, 0x0d]).await.unwrap();
        let trusted = ["10.0.0.5".parse().unwrap()];
        let slow = client_address(&mut b, BALANCER.parse().unwrap(), &trusted, Duration::from_millis(50)).await;
        assert!(matches!(slow, Err(ProxyError::Timeout(_))), "{slow:?}");
    }
}
