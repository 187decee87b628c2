//! The grammar and the matching rules of the policy claims that scope a
//! token: `origins`, `ips`, `paths`, `methods`.
//!
//! Each claim is a list of strings. [`crate::Claims`] keeps the strings
//! exactly as minted (so the canonical JSON reproduces them byte for byte)
//! and uses the parsers here to refuse a token whose list has an item that
//! does not parse. The matchers are what the relay applies to a request;
//! they live here, next to the grammar, so the meaning of a claim is
//! defined in one place (and mirrored by the SDKs from
//! `docs/token-format.md` §4.1).
//!
//! * [`OriginPattern`] — an exact origin `scheme://host[:port]` or a
//!   subdomain wildcard `[scheme://]*.domain[:port]`, ASCII-case-insensitive.
//! * [`IpNetwork`] — an IPv4/IPv6 address or CIDR network (host bits zero).
//! * [`is_path_prefix`] / [`path_has_prefix`] — segment-wise path prefixes
//!   relative to the relay's base path.
//! * [`is_method`] — an upper-case HTTP method name.
//!
//! Parsers return `None`/`false` instead of errors: a claim item is either
//! valid or the whole token is `token_invalid` (reason-free by design).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One item of the `origins` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `scheme://host[:port]`, compared with the whole `Origin` header
    /// value, ASCII-case-insensitively. Stored lower-case.
    Exact(String),
    /// `[scheme://]*.domain[:port]`: any host that ends in `.domain` with at
    /// least one more label in front (never the apex `domain` itself).
    Wildcard {
        /// Lower-case scheme; `None` = any scheme.
        scheme: Option<String>,
        /// Lower-case domain after `*.`.
        domain: String,
        /// Port as written (digits); `None` = the origin must carry no port.
        port: Option<String>,
    },
}

impl OriginPattern {
    /// Parses one `origins` item; `None` if it is not in the grammar of
    /// `docs/token-format.md` §4.1.
    pub fn parse(s: &str) -> Option<OriginPattern> {
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, s),
        };
        if let Some(scheme) = scheme {
            if !is_scheme(scheme) {
                return None;
            }
        }
        let (host, port) = split_port(rest)?;
        if let Some(domain) = host.strip_prefix("*.") {
            if !is_domain(domain) {
                return None;
            }
            return Some(OriginPattern::Wildcard {
                scheme: scheme.map(str::to_ascii_lowercase),
                domain: domain.to_ascii_lowercase(),
                port: port.map(str::to_owned),
            });
        }
        // An exact origin needs its scheme.
        scheme?;
        if !is_domain(host) && !is_bracketed_ipv6(host) {
            return None;
        }
        Some(OriginPattern::Exact(s.to_ascii_lowercase()))
    }

    /// True when the `Origin` header value `origin` is allowed by this
    /// pattern. `origin` is what the browser sent (`scheme://host[:port]`);
    /// anything that is not of that shape matches no wildcard.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginPattern::Wildcard {
                scheme,
                domain,
                port,
            } => {
                let Some((o_scheme, rest)) = origin.split_once("://") else {
                    return false;
                };
                let Some((o_host, o_port)) = split_port(rest) else {
                    return false;
                };
                if scheme
                    .as_deref()
                    .is_some_and(|s| !s.eq_ignore_ascii_case(o_scheme))
                {
                    return false;
                }
                if port.as_deref() != o_port {
                    return false;
                }
                // host = <one or more labels> "." domain
                let (h, d) = (o_host.as_bytes(), domain.as_bytes());
                h.len() > d.len() + 1
                    && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
                    && h[h.len() - d.len() - 1] == b'.'
                    && is_domain(&o_host[..o_host.len() - d.len() - 1])
            }
        }
    }
}

/// True when `origin` matches any pattern of an `origins` list (items that
/// do not parse match nothing: fail closed).
pub fn origin_allowed<S: AsRef<str>>(patterns: &[S], origin: &str) -> bool {
    patterns
        .iter()
        .filter_map(|p| OriginPattern::parse(p.as_ref()))
        .any(|p| p.matches(origin))
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986 §3.1).
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `domain = label *( "." label )`, `label = 1*( ALPHA / DIGIT / "-" )`.
fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_bracketed_ipv6(s: &str) -> bool {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .is_some_and(|inner| inner.parse::<Ipv6Addr>().is_ok())
}

/// Splits `host[:port]`. The port is 1–5 digits, no leading zero, value
/// 1–65535. A `:` inside an IPv6 literal `[…]` is not a port separator.
fn split_port(s: &str) -> Option<(&str, Option<&str>)> {
    let after_literal = if s.starts_with('[') {
        s.find(']')? + 1
    } else {
        0
    };
    match s[after_literal..].rfind(':') {
        None => Some((s, None)),
        Some(i) => {
            let (host, port) = (&s[..after_literal + i], &s[after_literal + i + 1..]);
            is_port(port).then_some((host, Some(port)))
        }
    }
}

fn is_port(s: &str) -> bool {
    is_decimal(s) && s.len() <= 5 && s.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
}

/// Digits only, no leading zero (except `0` itself).
fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// One item of the `ips` claim: an address (a network of one) or a CIDR
/// network whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Parses `address` or `address/prefix`: IPv4 dotted quad (no leading
    /// zeros) or IPv6 text form (no zone, no brackets); prefix 0–32 / 0–128
    /// in decimal; host bits beyond the prefix MUST be zero.
    pub fn parse(s: &str) -> Option<IpNetwork> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if is_decimal(p) && p.len() <= 3 => p.parse::<u8>().ok()?,
            Some(_) => return None,
        };
        if prefix > max {
            return None;
        }
        let net = IpNetwork { addr, prefix };
        (net.masked(addr) == Some(addr)).then_some(net)
    }

    /// `ip` with the bits beyond this network's prefix cleared, if it is of
    /// the same family.
    fn masked(&self, ip: IpAddr) -> Option<IpAddr> {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from(ip) & mask)))
            }
            (IpAddr::V6(_), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V6(Ipv6Addr::from(u128::from(ip) & mask)))
            }
            _ => None,
        }
    }

    /// The IPv4 network this one stands for, when it lies inside the
    /// IPv4-mapped range (`::ffff:0:0/96`, prefix ≥ 96). Such an item never
    /// matches (clients are matched as the IPv4 address they carry), so
    /// minters ask for this form instead.
    pub fn ipv4_equivalent(&self) -> Option<String> {
        let IpAddr::V6(v6) = self.addr else {
            return None;
        };
        let v4 = v6.to_ipv4_mapped().filter(|_| self.prefix >= 96)?;
        Some(format!("{v4}/{}", self.prefix - 96))
    }

    /// True when `ip` is inside this network. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, what a dual-stack socket reports) is matched as
    /// the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.masked(ip) == Some(self.addr)
    }
}

/// True when `ip` is inside any network of an `ips` list (items that do
/// not parse match nothing).
pub fn ip_allowed<S: AsRef<str>>(networks: &[S], ip: IpAddr) -> bool {
    networks
        .iter()
        .filter_map(|n| IpNetwork::parse(n.as_ref()))
        .any(|n| n.contains(ip))
}

/// True when `s` is a valid `paths` item: one or more `/`-separated
/// segments, no leading or trailing `/`, each segment non-empty, not `.` or
/// `..`, made of RFC 3986 `pchar`s without percent-encoding.
pub fn is_path_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|seg| {
            !seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(is_plain_pchar)
        })
}

/// RFC 3986 `pchar` minus `pct-encoded`: unreserved, sub-delims, `:`, `@`.
pub fn is_plain_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// True when the normalised request path `path` (relative to the base
/// path, no leading `/`) starts with `prefix` on whole segments:
/// `chat/completions` allows `chat/completions` and `chat/completions/x`,
/// not `chat/completionsx`. Case-sensitive.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// True when `path` has any of the prefixes of a `paths` list.
pub fn path_allowed<S: AsRef<str>>(prefixes: &[S], path: &str) -> bool {
    prefixes
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| is_path_prefix(p))
        .any(|p| path_has_prefix(path, p))
}

/// True when `s` is a valid `methods` item: one or more ASCII upper-case
/// letters (`GET`, `POST`, …). Compared exactly with the request method.
pub fn is_method(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn origin_grammar() {
        for ok in [
            "https://app.example.com",
            "http://localhost:5173",
            "HTTPS://App.Example.COM",
            "chrome-extension://abcdefghijklmnop",
            "http://[::1]:8080",
            "http://127.0.0.1",
            "https://*.example.com",
            "*.example.com",
            "*.example.com:8443",
            "app+x.y-z://h",
        ] {
            assert!(OriginPattern::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "example.com",
            "https://",
            "https://example.com/",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:65536",
            "https://example.com:080",
            "https://example.com:",
            "https://exa mple.com",
            "https://a..b",
            "https://*.example.com.",
            "https://*.",
            "*",
            "*.*.example.com",
            "https://a.*.example.com",
            "https://*example.com",
            "1http://a",
            "://a",
            "https://[::1",
            "https://[zz]",
            "null",
            "https://example.com?x",
        ] {
            assert!(OriginPattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn exact_origins_match_case_insensitively_and_exactly() {
        let p = ["https://App.example.com", "http://localhost:5173"];
        assert!(origin_allowed(&p, "https://app.example.com"));
        assert!(origin_allowed(&p, "HTTPS://APP.EXAMPLE.COM"));
        assert!(origin_allowed(&p, "http://localhost:5173"));
        assert!(!origin_allowed(&p, "http://app.example.com"));
        assert!(!origin_allowed(&p, "https://app.example.com:443"));
        assert!(!origin_allowed(&p, "https://app.example.com.evil.com"));
        assert!(!origin_allowed(&p, "http://localhost:5174"));
        assert!(!origin_allowed(&p, "null"));
    }

    #[test]
    fn wildcards_match_subdomains_not_the_apex() {
        let any_scheme = ["*.example.com"];
        assert!(origin_allowed(&any_scheme, "https://a.example.com"));
        assert!(origin_allowed(&any_scheme, "http://a.b.EXAMPLE.com"));
        assert!(!origin_allowed(&any_scheme, "https://example.com"));
        assert!(!origin_allowed(&any_scheme, "https://.example.com"));
        assert!(!origin_allowed(&any_scheme, "https://badexample.com"));
        assert!(!origin_allowed(&any_scheme, "https://a.example.com:8443"));
        assert!(!origin_allowed(&any_scheme, "https://a.example.com.evil"));
        assert!(!origin_allowed(&any_scheme, "a.example.com"));

        let https = ["https://*.example.com:8443"];
        assert!(origin_allowed(&https, "https://a.example.com:8443"));
        assert!(!origin_allowed(&https, "http://a.example.com:8443"));
        assert!(!origin_allowed(&https, "https://a.example.com"));
        assert!(!origin_allowed(&https, "https://a.example.com:8444"));
        // A pattern that does not parse matches nothing.
        assert!(!origin_allowed(&["*"], "https://a.example.com"));
    }

    #[test]
    fn ip_grammar() {
        for ok in [
            "10.0.0.0/8",
            "192.168.1.7",
            "192.168.1.7/32",
            "0.0.0.0/0",
            "::1",
            "2001:db8::/32",
            "2001:DB8::/32",
            "::/0",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(IpNetwork::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            "010.0.0.1",
            "10.0.0",
            "10.0.0.256",
            "2001:db8::1/32",
            "::/129",
            "fe80::1%eth0",
            "[::1]",
            "localhost",
            " 10.0.0.1",
            "10.0.0.0/8/8",
        ] {
            assert!(IpNetwork::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ip_matching() {
        let nets = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(ip_allowed(&nets, ip("10.255.0.1")));
        assert!(ip_allowed(&nets, ip("192.168.1.7")));
        assert!(!ip_allowed(&nets, ip("192.168.1.8")));
        assert!(!ip_allowed(&nets, ip("11.0.0.1")));
        assert!(ip_allowed(&nets, ip("2001:db8:ffff::1")));
        assert!(!ip_allowed(&nets, ip("2001:db9::1")));
        // A dual-stack socket reports IPv4 clients as mapped addresses.
        assert!(ip_allowed(&nets, ip("::ffff:10.1.2.3")));
        assert!(!ip_allowed(&nets, ip("::ffff:11.1.2.3")));
        assert!(ip_allowed(&["0.0.0.0/0"], ip("203.0.113.9")));
        assert!(!ip_allowed(&["0.0.0.0/0"], ip("2001:db8::1")));
        assert!(ip_allowed(&["::/0"], ip("2001:db8::1")));
    }

    #[test]
    fn mapped_networks_name_their_ipv4_form() {
        let v4 = |s: &str| IpNetwork::parse(s).unwrap().ipv4_equivalent();
        assert_eq!(v4("::ffff:10.0.0.0/104").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(v4("::ffff:1.2.3.4").as_deref(), Some("1.2.3.4/32"));
        assert_eq!(v4("::ffff:0.0.0.0/96").as_deref(), Some("0.0.0.0/0"));
        for none in [
            "::/0",
            "::/96",
            "::fffe:0:0/95",
            "2001:db8::/32",
            "10.0.0.0/8",
        ] {
            assert_eq!(v4(none), None, "{none}");
        }
    }

    #[test]
    fn path_grammar() {
        for ok in [
            "chat/completions",
            "v1/messages",
            "models",
            "v1beta/models/gemini-1.5-flash:generateContent",
            "a.b/~c",
            "...",
        ] {
            assert!(is_path_prefix(ok), "{ok}");
        }
        for bad in [
            "",
            "/chat",
            "chat/",
            "chat//completions",
            "./chat",
            "chat/..",
            "chat/%2e%2e",
            "chat\\x",
            "chat completions",
            "chat?x",
            "chat#x",
        ] {
            assert!(!is_path_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn paths_match_whole_segments() {
        let p = ["chat/completions", "models"];
        assert!(path_allowed(&p, "chat/completions"));
        assert!(path_allowed(&p, "chat/completions/"));
        assert!(path_allowed(&p, "chat/completions/abc"));
        assert!(path_allowed(&p, "models/gpt-4o"));
        assert!(!path_allowed(&p, "chat/completionsx"));
        assert!(!path_allowed(&p, "chat"));
        assert!(!path_allowed(&p, "Chat/completions"));
        assert!(!path_allowed(&p, "embeddings"));
        assert!(!path_allowed(&p, ""));
    }

    #[test]
    fn method_grammar() {
        assert!(is_method("GET"));
        assert!(is_method("POST"));
        assert!(!is_method("get"));
        assert!(!is_method("Post"));
        assert!(!is_method(""));
        assert!(!is_method("M-SEARCH"));
        assert!(!is_method("GET "));
    }
}
