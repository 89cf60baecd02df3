//! The client address an anonymous caller's rate-limit bucket is kept for.
//!
//! It is the TCP peer, unless the peer is a trusted proxy (`--trusted-proxy`): then the
//! forwarding header names the client. Each proxy on the way appends the address it received
//! the request from, so the list reads client-first, and anything left of the first hop a
//! trusted proxy added may be what the client itself wrote. The client is therefore the
//! **rightmost address that is not a trusted proxy**, reading from the peer leftwards; if
//! every hop is trusted, the leftmost.
//!
//! `X-Forwarded-For` is read when present (every line of it, in order); otherwise the `for=`
//! parameters of `Forwarded` (RFC 7239). A hop that is not an address (`unknown`, an
//! obfuscated name, garbage) ends the walk: the client is the hop to its right, the one that
//! passed it on, so such requests share that proxy's bucket rather than pick one of their own.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use axum::http::header::FORWARDED;
use ipnet::IpNet;

/// The client address of a request from `peer` (`None`: not over TCP) with these headers.
pub fn address(peer: Option<SocketAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops = forwarded_hops(headers);
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            None => break,
        }
    }
    Some(client)
}

/// The hops of `X-Forwarded-For`, or else of `Forwarded`, client first; `None` for a hop
/// that is not an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let lines = |name| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect::<Vec<_>>()
    };
    let xff = lines(axum::http::HeaderName::from_static("x-forwarded-for"));
    if !xff.is_empty() {
        return xff
            .iter()
            .flat_map(|line| line.split(','))
            .map(|hop| parse_hop(hop.trim()))
            .collect();
    }
    lines(FORWARDED)
        .iter()
        .flat_map(|line| line.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, value)| parse_hop(value.trim().trim_matches('"')))
        })
        .collect()
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(socket) = hop.parse::<SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn client(peer: &str, pairs: &[(&str, &str)], trusted: &[&str]) -> String {
        address(Some(peer.parse().unwrap()), &headers(pairs), &nets(trusted))
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_untrusted_peers_headers_are_ignored() {
        let xff = [("x-forwarded-for", "203.0.113.9")];
        assert_eq!(client("198.51.100.1:5000", &xff, &[]), "198.51.100.1");
        assert_eq!(
            client("198.51.100.1:5000", &xff, &["10.0.0.0/8"]),
            "198.51.100.1"
        );
        assert_eq!(address(None, &headers(&xff), &nets(&["0.0.0.0/0"])), None);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = ["10.0.0.0/8", "127.0.0.1/32"];
        // The client wrote its own X-Forwarded-For; the proxy appended the real address.
        let spoofed = [("x-forwarded-for", "1.1.1.1, 203.0.113.9")];
        assert_eq!(client("127.0.0.1:1", &spoofed, &trusted), "203.0.113.9");
        // Two proxies, both trusted; split over two header lines.
        let chained = [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.1.2.3"),
        ];
        assert_eq!(client("10.9.9.9:1", &chained, &trusted), "203.0.113.9");
        // Every hop trusted: the leftmost.
        let inside = [("x-forwarded-for", "10.0.0.5, 10.0.0.6")];
        assert_eq!(client("10.0.0.7:1", &inside, &trusted), "10.0.0.5");
        // No header: the proxy itself.
        assert_eq!(client("10.0.0.7:1", &[], &trusted), "10.0.0.7");
        // Garbage stops the walk at the hop that passed it on.
        let junk = [("x-forwarded-for", "203.0.113.9, nonsense, 10.0.0.6")];
        assert_eq!(client("10.0.0.7:1", &junk, &trusted), "10.0.0.6");
        let ports = [("x-forwarded-for", "203.0.113.9:443")];
        assert_eq!(client("10.0.0.7:1", &ports, &trusted), "203.0.113.9");
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = ["10.0.0.0/8"];
        let forwarded = [(
            "forwarded",
            "for=198.51.100.4;proto=https, for=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1",
        )];
        assert_eq!(
            client("10.0.0.1:1", &forwarded, &trusted),
            "2001:db8:cafe::17"
        );
        let hidden = [("forwarded", "for=198.51.100.4, for=_hidden")];
        assert_eq!(client("10.0.0.1:1", &hidden, &trusted), "10.0.0.1");
        let both = [
            ("forwarded", "for=198.51.100.4"),
            ("x-forwarded-for", "203.0.113.9"),
        ];
        assert_eq!(client("10.0.0.1:1", &both, &trusted), "203.0.113.9");
        let mapped = [("x-forwarded-for", "::ffff:203.0.113.9")];
        assert_eq!(
            client("[::ffff:10.0.0.1]:1", &mapped, &trusted),
            "203.0.113.9"
        );
    }
}
