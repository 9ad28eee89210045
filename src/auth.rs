//! Who a request is and whether its origin may act: shared by the HTTP API,
//! the WebSocket upgrade and the WebTransport CONNECT, which all see the same
//! `http` request types.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;

/// Cookie holding the session token (HttpOnly).
pub const TOKEN_COOKIE: &str = "user_token";
/// Cookie holding the username, readable by page scripts as in the seed.
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

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
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

/// The client's address: the TCP peer, or, when the peer is a trusted
/// reverse proxy, the right-most address in `X-Forwarded-For` that is not
/// itself a trusted proxy (the left-most entries are the client's own
/// claims and cannot be trusted).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted_proxies.contains(ip))
        .unwrap_or(peer)
}

/// Whether a peer address is on the loopback interface (IPv4-mapped too).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Which origins may use the gateway from a browser.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
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
    /// A policy allowing the gateway's own origin plus `allowed` (`*` = all).
    pub fn new(allowed: &[String]) -> Self {
        Self {
            any: allowed.iter().any(|o| o == "*"),
            allowed: allowed
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
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
        if self.any || self.allowed.contains(&origin) {
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

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9")]);
        assert_eq!(
            client_ip(proxy, &h, &[]),
            proxy,
            "untrusted peers are taken as they are"
        );
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &h, &[proxy]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 10.0.0.2")]);
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &chain, &[proxy, inner]),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &headers(&[]), &[proxy]), proxy);
    }

    #[test]
    fn loopback_includes_mapped_v4() {
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
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
