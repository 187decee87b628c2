//! Which IP address is the client: the one we rate-limit, log and match
//! against IP scopes.
//!
//! Invariant: the answer is never taken from a header written by an
//! untrusted party. `X-Forwarded-For` is only read when the socket peer is a
//! configured trusted proxy, and then only the hops appended by trusted
//! proxies are believed: we walk from the right (the entry our own proxy
//! appended) and stop at the first address that is not a trusted proxy.
//! Anything to its left was supplied by the client and may be forged.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderMap;
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's IP for a request received from `peer` with `headers`.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    if !is_trusted(peer_ip, trusted_proxies) {
        return peer_ip;
    }
    // All trusted hops seen so far; the left-most is the fallback when no
    // untrusted hop can be found.
    let mut leftmost_trusted: Option<IpAddr> = None;
    // Later header instances were appended later (closer to us): walk them
    // in reverse, and each one's entries from the right.
    'walk: for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            break 'walk;
        };
        for entry in value.rsplit(',') {
            // Tolerate "a, , b" and trailing commas.
            if entry.trim().is_empty() {
                continue;
            }
            let Some(ip) = parse_hop(entry) else {
                // A garbled hop: everything to its left came through a hop we
                // cannot identify, so none of it can be trusted.
                break 'walk;
            };
            if !is_trusted(ip, trusted_proxies) {
                return ip;
            }
            leftmost_trusted = Some(ip);
        }
    }
    // Every hop was a trusted proxy (or the header was missing/garbled): the
    // furthest proxy we can vouch for is the best we know.
    leftmost_trusted.unwrap_or(peer_ip)
}

/// True when the TCP peer itself is one of the trusted proxies (whose
/// `X-Forwarded-For` and `x-request-id` are believed).
pub fn peer_is_trusted(peer: SocketAddr, trusted_proxies: &[IpNet]) -> bool {
    !trusted_proxies.is_empty() && is_trusted(canonical(peer.ip()), trusted_proxies)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 (dual-stack sockets) compares and logs as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One XFF entry, leniently: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`, with spaces around.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Ok(sa) = entry.parse::<SocketAddr>() {
        sa.ip()
    } else {
        entry
            .strip_prefix('[')
            .and_then(|e| e.strip_suffix(']'))
            .and_then(|e| e.parse::<IpAddr>().ok())?
    };
    Some(canonical(ip))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_xff_is_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff(&["1.2.3.4"]);
        assert_eq!(
            client_ip(peer("203.0.113.5:1234"), &h, &trusted),
            ip("203.0.113.5")
        );
        // No trusted proxies configured at all: header ignored too.
        assert_eq!(client_ip(peer("10.0.0.1:1234"), &h, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted_hop_not_forged_leftmost() {
        let trusted = nets(&["10.0.0.0/8"]);
        // Client forged "6.6.6.6"; our proxy appended the real client 198.51.100.7.
        let h = xff(&["6.6.6.6, 198.51.100.7"]);
        assert_eq!(
            client_ip(peer("10.0.0.2:80"), &h, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_across_header_instances() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1", " [fd00::1]:443 "]);
        assert_eq!(
            client_ip(peer("10.0.0.2:80"), &h, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn all_hops_trusted_returns_leftmost() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(client_ip(peer("10.0.0.2:80"), &h, &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn missing_or_garbled_header_falls_back_safely() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(peer("10.0.0.2:80"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(peer("10.0.0.2:80"), &xff(&["garbage"]), &trusted),
            ip("10.0.0.2")
        );
        // A forged address left of a garbled hop is never believed.
        let h = xff(&["6.6.6.6, unknown, 10.1.1.1"]);
        assert_eq!(client_ip(peer("10.0.0.2:80"), &h, &trusted), ip("10.1.1.1"));
    }

    #[test]
    fn lenient_entry_forms() {
        assert_eq!(parse_hop(" 1.2.3.4:5678 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop("unknown"), None);
        assert_eq!(parse_hop(""), None);
    }

    #[test]
    fn mapped_v4_peer_matches_v4_trusted_net() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff(&["198.51.100.7"]);
        assert_eq!(
            client_ip(peer("[::ffff:10.0.0.2]:80"), &h, &trusted),
            ip("198.51.100.7")
        );
    }
}
