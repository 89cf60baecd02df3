//! Connections from this host are sent unpaced.
//!
//! Many distributions (and the machines this server was measured on) default to BBR, which
//! paces each connection: segments leave on a timer at the bandwidth it has estimated. Between
//! two sockets of one host there is no link to pace for, and pacing changes how the peer's
//! kernel sizes its receive window: data arriving in measured steps looks like a slow sender,
//! so the window stayed near 1 MB and each 2 MB PNG went out in several window-limited steps,
//! every one a wake-up and an acknowledgement on both sides (`ss -ti`: receive-window limited
//! ~97 % of the time). With Reno on the accepted socket the window grew past the response
//! size and the client's CPU per 2 MB response fell by about a quarter (see the book's
//! benchmarks page). Reverse proxies, sidecars and probes on the same host are the peers this
//! helps; connections from other hosts keep the system's congestion control.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

/// The congestion control loopback connections get: built into every Linux kernel and always
/// allowed to unprivileged processes.
pub(super) const LOOPBACK_CONGESTION: &str = "reno";

/// Whether `peer` is this host (IPv4 or IPv6 loopback, also IPv4-mapped on a dual-stack socket).
pub(super) fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Switches an accepted connection from a loopback `peer` to [`LOOPBACK_CONGESTION`].
pub(super) fn tune(stream: &TcpStream, peer: &SocketAddr) {
    #[cfg(target_os = "linux")]
    if is_loopback(peer) {
        // A kernel that refuses keeps its default, which only costs CPU.
        let _ = rustix::net::sockopt::set_tcp_congestion(stream, LOOPBACK_CONGESTION);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, peer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers_are_recognised_in_every_form() {
        for loopback in [
            "127.0.0.1:80",
            "127.8.9.10:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(is_loopback(&loopback.parse().unwrap()), "{loopback}");
        }
        for remote in [
            "10.0.0.1:80",
            "192.168.1.2:80",
            "[2001:db8::1]:80",
            "[::ffff:10.0.0.1]:80",
        ] {
            assert!(!is_loopback(&remote.parse().unwrap()), "{remote}");
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_loopback_connections_use_reno() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (accepted, peer) = listener.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        tune(&accepted, &peer);
        // A sandboxed network stack may not report the option at all; Linux always does.
        match rustix::net::sockopt::tcp_congestion(&accepted) {
            Ok(chosen) => assert_eq!(chosen, LOOPBACK_CONGESTION),
            Err(err) => eprintln!("TCP_CONGESTION not readable here ({err}); nothing to check"),
        }
    }
}
