//! Who a request is and whether its origin may act: shared by the HTTP API,
//! the WebSocket upgrade and the WebTransport CONNECT, which all see the same
//! `http` request types.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;

/// Cookie holding the session token (HttpOnly).
pub const TOKEN_COOKIE: &str = "user_token";
/// Cookie holding the username, readable by page scripts (it is not a
/// credential: only the token authenticates).
pub const USERNAME_COOKIE: &str = "user_username";
/// Query parameter carrying the token where headers cannot be set
/// (`new WebSocket(url)`, `new WebTransport(url)`).
pub const TOKEN_PARAM: &str = "token";

/// The bearer token of an `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name`, from any `Cookie` header. The header is read
/// as bytes: another cookie may hold UTF-8 (the username does), and
/// `to_str` would refuse the whole header for it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| percent_decode_str(value).decode_utf8().ok())
        .filter(|value| !value.is_empty())
}

/// The session token a request carries: `Authorization: Bearer`, then
/// `?token=` (only where `query` is given), then the `user_token` cookie.
/// What the client names explicitly wins over the cookie the browser adds
/// on its own, so a stale cookie never logs a connection in as someone else.
pub fn session_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    bearer(headers)
        .map(Cow::Borrowed)
        .or_else(|| query_param(query, TOKEN_PARAM))
        .or_else(|| cookie(headers, TOKEN_COOKIE).map(Cow::Borrowed))
}

/// Whether `presented` equals the configured admin token, in constant time.
pub fn admin_token_matches(expected: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())))
}

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

/// Which origins may use the gateway from a browser. Clones share one
/// allow-list, which [`OriginPolicy::replace`] changes for all of them (a
/// reload of --allow-origin).
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    list: Arc<ArcSwap<AllowList>>,
}

/// The origins allowed besides the gateway's own.
#[derive(Debug, Default)]
struct AllowList {
    allowed: Vec<String>,
    any: bool,
}

impl AllowList {
    fn new(allowed: &[String]) -> Self {
        Self {
            any: allowed.iter().any(|o| o == "*"),
            allowed: allowed
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }
}

/// The verdict on a request's `Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginVerdict {
    /// No `Origin` header: a native client, not a browser.
    Absent,
    /// The page comes from the gateway itself.
    SameOrigin,
    /// A foreign origin on the allow-list.
    Allowed,
    /// A foreign origin not on the list: refuse with 403.
    Refused,
}

impl OriginVerdict {
    /// Whether the request may proceed.
    pub fn permits(self) -> bool {
        self != OriginVerdict::Refused
    }
}

impl OriginPolicy {
    /// Whether `origin` is named on the allow-list (not merely allowed by
    /// `*`): what admin routes ask of a browser's origin.
    pub fn lists(&self, origin: &str) -> bool {
        self.list
            .load()
            .allowed
            .contains(&origin.trim_end_matches('/').to_ascii_lowercase())
    }

    /// Whether `*` was given: every origin may use the gateway, without
    /// credentials.
    pub fn allows_any(&self) -> bool {
        self.list.load().any
    }

    /// A policy allowing the gateway's own origin plus `allowed` (`*` = all).
    pub fn new(allowed: &[String]) -> Self {
        Self {
            list: Arc::new(ArcSwap::from_pointee(AllowList::new(allowed))),
        }
    }

    /// Allows `allowed` from now on, in this policy and all its clones.
    pub fn replace(&self, allowed: &[String]) {
        self.list.store(Arc::new(AllowList::new(allowed)));
    }

    /// Judges `origin` for a request addressed to `authority` (the `Host`
    /// header or `:authority`) over a connection with the given scheme.
    /// An origin is the gateway's own when its host and port equal the
    /// authority's: the demo page on `http://localhost:8000` opens
    /// WebTransport to `https://localhost:8000`, a different scheme but the
    /// same server.
    pub fn judge(
        &self,
        origin: Option<&str>,
        authority: Option<&str>,
        secure: bool,
    ) -> OriginVerdict {
        let Some(origin) = origin else {
            return OriginVerdict::Absent;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if let (Some(origin_hostport), Some(authority)) = (origin_host_port(&origin), authority) {
            let default_port = if secure { 443 } else { 80 };
            if host_port(&authority.to_ascii_lowercase(), default_port) == Some(origin_hostport) {
                return OriginVerdict::SameOrigin;
            }
        }
        let list = self.list.load();
        if list.any || list.allowed.contains(&origin) {
            OriginVerdict::Allowed
        } else {
            OriginVerdict::Refused
        }
    }
}

/// `(host, port)` of an origin like `http://host:port`, with the scheme's
/// default port filled in.
fn origin_host_port(origin: &str) -> Option<(String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    host_port(rest, default_port)
}

/// `(host, port)` of `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
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
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn token_sources_in_order() {
        let h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "user_token=def"),
        ]);
        assert_eq!(session_token(&h, Some("token=ghi")).as_deref(), Some("abc"));
        let h = headers(&[("cookie", "a=1; user_token=def; b=2")]);
        assert_eq!(
            session_token(&h, Some("token=ghi")).as_deref(),
            Some("ghi"),
            "explicit beats the cookie"
        );
        assert_eq!(session_token(&h, None).as_deref(), Some("def"));
        let h = headers(&[]);
        assert_eq!(
            session_token(&h, Some("x=1&token=g%2Dh")).as_deref(),
            Some("g-h")
        );
        assert_eq!(session_token(&h, None), None);
        assert_eq!(session_token(&h, Some("token=")), None);
        let h = headers(&[("authorization", "Basic abc")]);
        assert_eq!(session_token(&h, None), None);
    }

    #[test]
    fn the_token_cookie_is_found_beside_a_utf8_name() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes("user_username=Zoë Li; user_token=tok".as_bytes()).unwrap(),
        );
        assert_eq!(session_token(&h, None).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, USERNAME_COOKIE), Some("Zoë Li"));
        let mut latin1 = HeaderMap::new();
        latin1.append(
            COOKIE,
            HeaderValue::from_bytes(b"user_username=Zo\xebLi; user_token=tok").unwrap(),
        );
        assert_eq!(session_token(&latin1, None).as_deref(), Some("tok"));
    }

    #[test]
    fn username_cookie_is_not_a_token() {
        let h = headers(&[("cookie", "user_username=alice")]);
        assert_eq!(session_token(&h, None), None);
    }

    #[test]
    fn admin_token_comparison() {
        assert!(admin_token_matches("s3cret", Some("s3cret")));
        assert!(!admin_token_matches("s3cret", Some("s3cre")));
        assert!(!admin_token_matches("s3cret", None));
    }

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

    #[test]
    fn a_replaced_allow_list_holds_for_every_clone() {
        let policy = OriginPolicy::new(&["https://one.example".into()]);
        let clone = policy.clone();
        let judge = |p: &OriginPolicy, origin| p.judge(Some(origin), Some("gw:8000"), false);
        assert_eq!(judge(&clone, "https://one.example"), OriginVerdict::Allowed);
        policy.replace(&["https://two.example".into()]);
        assert_eq!(judge(&clone, "https://one.example"), OriginVerdict::Refused);
        assert_eq!(judge(&clone, "https://two.example"), OriginVerdict::Allowed);
        assert!(clone.lists("https://two.example"));
        policy.replace(&["*".into()]);
        assert_eq!(
            judge(&clone, "https://three.example"),
            OriginVerdict::Allowed
        );
    }

    #[test]
    fn origin_verdicts() {
        let policy = OriginPolicy::new(&["https://app.example".into()]);
        assert_eq!(
            policy.judge(None, Some("localhost:8000"), false),
            OriginVerdict::Absent
        );
        assert_eq!(
            policy.judge(Some("http://localhost:8000"), Some("localhost:8000"), false),
            OriginVerdict::SameOrigin
        );
        assert_eq!(
            policy.judge(Some("http://localhost:8000"), Some("localhost:8000"), true),
            OriginVerdict::SameOrigin,
            "page over http, WebTransport over https on the same host:port"
        );
        assert_eq!(
            policy.judge(Some("http://[::1]:8000"), Some("[::1]:8000"), false),
            OriginVerdict::SameOrigin
        );
        assert_eq!(
            policy.judge(Some("http://example.com"), Some("example.com"), false),
            OriginVerdict::SameOrigin
        );
        assert_eq!(
            policy.judge(Some("https://APP.example/"), Some("gw:8000"), false),
            OriginVerdict::Allowed
        );
        assert_eq!(
            policy.judge(Some("https://evil.example"), Some("gw:8000"), false),
            OriginVerdict::Refused
        );
        assert_eq!(
            policy.judge(Some("null"), Some("gw:8000"), false),
            OriginVerdict::Refused
        );
        assert_eq!(
            policy.judge(Some("http://localhost:9000"), Some("localhost:8000"), false),
            OriginVerdict::Refused,
            "another port is another origin"
        );
        let any = OriginPolicy::new(&["*".into()]);
        assert_eq!(
            any.judge(Some("https://evil.example"), Some("gw"), false),
            OriginVerdict::Allowed
        );
    }
}
