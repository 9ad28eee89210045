//! Who sent a request: the peer, or the address trusted reverse proxies
//! report for it, and whether the authority it was addressed to names this
//! machine.

use std::net::IpAddr;

use http::HeaderMap;

/// Which header the trusted reverse proxies write the client's address in.
/// Only that one is read: a client can send the other one itself, and a
/// proxy that does not write it passes it through untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (with `X-Forwarded-Host` and `X-Forwarded-Proto`):
    /// nginx, HAProxy's `option forwardfor`, Envoy, most load balancers.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…;host=…;proto=…`.
    Forwarded,
}

/// The reverse proxies whose forwarding headers the gateway believes.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    trusted: Vec<IpAddr>,
    header: ForwardedHeader,
}

/// Who sent a request, as far as the gateway can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the TCP peer, or the address trusted proxies
    /// report for it.
    pub ip: IpAddr,
    /// False when a trusted proxy's header could not be read: `ip` is then
    /// the last trusted proxy's address, good enough to key per-IP limits
    /// on but never taken as the client's own (it may be loopback).
    pub proven: bool,
    /// The host (and port) the client addressed, when a trusted proxy
    /// reports it (`X-Forwarded-Host`, `Forwarded: host=`).
    pub forwarded_host: Option<String>,
    /// The scheme the client used (`http`, `https`), when a trusted proxy
    /// reports it (`X-Forwarded-Proto`, `Forwarded: proto=`).
    pub forwarded_proto: Option<String>,
}

impl Client {
    /// A client whose address is the TCP peer's, with no proxy involved.
    pub fn direct(peer: IpAddr) -> Self {
        Self {
            ip: peer.to_canonical(),
            proven: true,
            forwarded_host: None,
            forwarded_proto: None,
        }
    }

    /// Whether the client is certainly on this machine.
    pub fn is_loopback(&self) -> bool {
        self.proven && is_loopback(self.ip)
    }

    /// The authority the client addressed and whether it used a secure
    /// scheme: what a trusted proxy reports, else the request's own `host`
    /// and the listener's scheme (`secure`). Behind a proxy this is the
    /// page's origin, not the proxy's upstream address.
    pub fn addressed<'a>(&'a self, host: Option<&'a str>, secure: bool) -> (Option<&'a str>, bool) {
        let secure = match self.forwarded_proto.as_deref() {
            // Some proxies report `ws`/`wss` for WebSocket upgrades.
            Some("https" | "wss") => true,
            Some("http" | "ws") => false,
            _ => secure,
        };
        (self.forwarded_host.as_deref().or(host), secure)
    }
}

/// One proxy hop's report: the address it received the request from, and
/// the host and scheme that request was addressed to.
struct Hop<'a> {
    for_addr: Option<IpAddr>,
    host: Option<&'a str>,
    proto: Option<&'a str>,
}

impl ProxyPolicy {
    /// Believes `trusted` proxies, reading `header`.
    pub fn new(trusted: &[IpAddr], header: ForwardedHeader) -> Self {
        Self {
            trusted: trusted.iter().map(|ip| ip.to_canonical()).collect(),
            header,
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.contains(&ip.to_canonical())
    }

    /// The client behind a request from TCP peer `peer`. From a trusted
    /// proxy, the hops are read from the right (the entry the nearest proxy
    /// appended) leftwards, past every trusted proxy; the first address
    /// that is not one is the client. Entries to its left are the client's
    /// own claims and are never read. An entry that does not parse ends the
    /// walk: the client is then not proven.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return Client::direct(peer);
        }
        let mut client = Client::direct(peer);
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => {
                // Written once, by the nearest proxy (which is trusted):
                // read even when it writes no `X-Forwarded-For`.
                let last = |name| list_entries(headers, name).pop().filter(|v| !v.is_empty());
                client.forwarded_host = last("x-forwarded-host").map(str::to_owned);
                client.forwarded_proto = last("x-forwarded-proto").map(str::to_ascii_lowercase);
                x_forwarded_hops(headers)
            }
            ForwardedHeader::Forwarded => forwarded_hops(headers),
        };
        for hop in hops.into_iter().rev() {
            client.forwarded_host = hop.host.map(str::to_owned).or(client.forwarded_host);
            client.forwarded_proto = hop
                .proto
                .map(str::to_ascii_lowercase)
                .or(client.forwarded_proto);
            match hop.for_addr {
                Some(ip) if self.trusts(ip) => client.ip = ip.to_canonical(),
                Some(ip) => {
                    client.ip = ip.to_canonical();
                    return client;
                }
                None => {
                    client.proven = false;
                    return client;
                }
            }
        }
        // Nothing but trusted proxies (or no header at all): the last of
        // them sent the request itself.
        client
    }
}

/// The comma-separated entries of every `name` header, in order.
fn list_entries<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap_or("\u{fffd}"))
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect()
}

/// `X-Forwarded-For` entries as hops (addresses only: `X-Forwarded-Host`
/// and `X-Forwarded-Proto` are read apart, see [`ProxyPolicy::client`]).
fn x_forwarded_hops(headers: &HeaderMap) -> Vec<Hop<'_>> {
    list_entries(headers, "x-forwarded-for")
        .into_iter()
        .map(|entry| Hop {
            for_addr: node_address(entry),
            host: None,
            proto: None,
        })
        .collect()
}

/// RFC 7239 elements (`for=…;host=…;proto=…`) as hops.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Hop<'_>> {
    list_entries(headers, "forwarded")
        .into_iter()
        .map(|element| {
            let mut hop = Hop {
                for_addr: None,
                host: None,
                proto: None,
            };
            for pair in element.split(';') {
                let Some((key, value)) = pair.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "for" => hop.for_addr = node_address(value),
                    "host" => hop.host = Some(value).filter(|v| !v.is_empty()),
                    "proto" => hop.proto = Some(value).filter(|v| !v.is_empty()),
                    _ => {}
                }
            }
            hop
        })
        .collect()
}

/// The address in a forwarding entry, in the forms proxies write:
/// `192.0.2.1`, `192.0.2.1:5555`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`, optionally quoted. `unknown`, obfuscated names
/// (`_hidden`) and empty entries name no address.
fn node_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = entry.rsplit_once(':')?;
    is_port(port)
        .then(|| host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))
        .flatten()
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.parse::<u16>().is_ok()
}

/// Whether an authority (`host`, `host:port`, `[v6]:port`) names this
/// machine: `localhost`, a `.localhost` name, or a loopback address. A
/// DNS-rebinding page reaches the gateway on loopback but under its own
/// name, so this is what tells the two apart.
pub fn is_loopback_authority(authority: &str) -> bool {
    let Some((host, _)) = host_port(&authority.to_ascii_lowercase(), 0) else {
        return false;
    };
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// Whether `authority` is one of `names` (`host` matches any port,
/// `host:port` only that port).
pub fn authority_is_one_of(authority: &str, names: &[String]) -> bool {
    let Some((host, port)) = host_port(&authority.to_ascii_lowercase(), 0) else {
        return false;
    };
    names.iter().any(|name| {
        let name = name.to_ascii_lowercase();
        match host_port(&name, 0) {
            Some((name_host, 0)) => name_host == host,
            Some(name_host_port) => name_host_port == (host.clone(), port),
            None => false,
        }
    })
}

/// Whether a peer address is on the loopback interface (IPv4-mapped too).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `(host, port)` of `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(super) fn host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains('/') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port))
            if !port.contains(']') && (!host.contains(':') || host.ends_with(']')) =>
        {
            (host, port.parse().ok()?)
        }
        _ => (authority, default_port),
    };
    Some((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::headers;

    fn client(policy: &ProxyPolicy, peer: &str, pairs: &[(&str, &str)]) -> Client {
        policy.client(peer.parse().unwrap(), &headers(pairs))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let xff = [("x-forwarded-for", "6.6.6.6, 203.0.113.9")];
        let nobody = ProxyPolicy::default();
        assert_eq!(
            client(&nobody, "127.0.0.1", &xff),
            Client::direct(ip("127.0.0.1")),
            "untrusted peers are taken as they are"
        );
        let proxy = ProxyPolicy::new(&[ip("127.0.0.1")], ForwardedHeader::XForwardedFor);
        assert_eq!(client(&proxy, "127.0.0.1", &xff).ip, ip("203.0.113.9"));
        assert_eq!(
            client(&proxy, "::ffff:127.0.0.1", &xff).ip,
            ip("203.0.113.9")
        );
        let two = ProxyPolicy::new(
            &[ip("127.0.0.1"), ip("10.0.0.2")],
            ForwardedHeader::XForwardedFor,
        );
        let chain = [("x-forwarded-for", "198.51.100.1, 10.0.0.2")];
        assert_eq!(client(&two, "127.0.0.1", &chain).ip, ip("198.51.100.1"));
        let own = client(&proxy, "127.0.0.1", &[]);
        assert_eq!((own.ip, own.proven), (ip("127.0.0.1"), true));
    }

    #[test]
    fn every_form_proxies_write_is_read() {
        let proxy = ProxyPolicy::new(&[ip("127.0.0.1")], ForwardedHeader::XForwardedFor);
        for (entry, want) in [
            ("203.0.113.9:5555", "203.0.113.9"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("\"192.0.2.4\"", "192.0.2.4"),
        ] {
            let seen = client(&proxy, "127.0.0.1", &[("x-forwarded-for", entry)]);
            assert_eq!((seen.ip, seen.proven), (ip(want), true), "{entry}");
        }
    }

    #[test]
    fn an_unreadable_entry_ends_trust_instead_of_being_skipped() {
        let proxy = ProxyPolicy::new(&[ip("127.0.0.1")], ForwardedHeader::XForwardedFor);
        for header in [
            "127.0.0.1, unknown",
            "127.0.0.1, _hidden",
            "127.0.0.1, ",
            "127.0.0.1, 203.0.113.9:port",
            "127.0.0.1, [2001:db8::1",
        ] {
            let seen = client(&proxy, "127.0.0.1", &[("x-forwarded-for", header)]);
            assert!(!seen.proven, "{header}");
            assert!(!seen.is_loopback(), "{header} must not grant loopback");
        }
    }

    #[test]
    fn the_forwarded_header_is_read_only_when_configured() {
        let header = [
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\";host=gw.example:8443;proto=https",
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ];
        let rfc = ProxyPolicy::new(&[ip("127.0.0.1")], ForwardedHeader::Forwarded);
        let seen = client(&rfc, "127.0.0.1", &header);
        assert_eq!(seen.ip, ip("2001:db8:cafe::17"));
        assert_eq!(seen.forwarded_host.as_deref(), Some("gw.example:8443"));
        assert_eq!(seen.forwarded_proto.as_deref(), Some("https"));
        let xff = ProxyPolicy::new(&[ip("127.0.0.1")], ForwardedHeader::XForwardedFor);
        assert_eq!(client(&xff, "127.0.0.1", &header).ip, ip("6.6.6.6"));
    }

    #[test]
    fn forwarded_host_and_proto_come_from_the_nearest_proxy() {
        let proxy = ProxyPolicy::new(&[ip("127.0.0.1")], ForwardedHeader::XForwardedFor);
        let seen = client(
            &proxy,
            "127.0.0.1",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-host", "localhost:10000"),
                ("x-forwarded-proto", "HTTP"),
            ],
        );
        assert_eq!(seen.forwarded_host.as_deref(), Some("localhost:10000"));
        assert_eq!(seen.forwarded_proto.as_deref(), Some("http"));
        let no_for = client(
            &proxy,
            "127.0.0.1",
            &[
                ("x-forwarded-host", "app.example"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(
            (no_for.forwarded_host.as_deref(), no_for.proven),
            (Some("app.example"), true),
            "read without X-Forwarded-For too"
        );
        let untrusted = client(
            &ProxyPolicy::default(),
            "127.0.0.1",
            &[("x-forwarded-host", "evil")],
        );
        assert_eq!(untrusted.forwarded_host, None);
    }

    #[test]
    fn the_addressed_authority_is_the_forwarded_one() {
        let direct = Client::direct(ip("127.0.0.1"));
        assert_eq!(
            direct.addressed(Some("localhost"), false),
            (Some("localhost"), false)
        );
        let proxied = Client {
            forwarded_host: Some("localhost:10000".into()),
            forwarded_proto: Some("https".into()),
            ..direct.clone()
        };
        assert_eq!(
            proxied.addressed(Some("localhost"), false),
            (Some("localhost:10000"), true)
        );
        for (proto, secure) in [
            ("wss", true),
            ("ws", false),
            ("http", false),
            ("gopher", true),
        ] {
            let seen = Client {
                forwarded_proto: Some(proto.into()),
                ..direct.clone()
            };
            assert_eq!(seen.addressed(None, true).1, secure, "{proto}");
        }
    }

    #[test]
    fn loopback_authorities() {
        for yes in [
            "localhost",
            "localhost:8000",
            "LOCALHOST:1",
            "app.localhost:3",
            "127.0.0.1:8000",
            "127.9.9.9",
            "[::1]:8000",
            "[::1]",
        ] {
            assert!(is_loopback_authority(yes), "{yes}");
        }
        for no in [
            "evil.example:8000",
            "localhost.evil.example",
            "192.0.2.1:8000",
            "[2001:db8::1]:1",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_authority(no), "{no}");
        }
        let names = vec!["gw.example".to_owned(), "other.example:8443".to_owned()];
        assert!(authority_is_one_of("GW.example:8000", &names));
        assert!(authority_is_one_of("other.example:8443", &names));
        assert!(!authority_is_one_of("other.example:8000", &names));
        assert!(!authority_is_one_of("evil.example", &names));
    }

    #[test]
    fn loopback_includes_mapped_v4() {
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
    }
}
