//! ICE servers from the configuration, with TURN credentials minted per
//! user by the TURN REST API scheme that coturn implements with
//! `use-auth-secret` and `static-auth-secret`
//! (draft-uberti-behave-turn-rest-00): the username is
//! `<unix expiry>:<gateway username>` and the credential is
//! `base64(HMAC-SHA1(secret, username))`. coturn recomputes the HMAC with
//! the same secret and refuses the credential once the expiry has passed,
//! so the gateway and coturn share nothing but the secret.

mod args;

pub use args::IceArgs;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

use crate::core::ice::{IceConfig, IceServer, IceServers};

/// The ICE servers the gateway hands out: STUN URLs as they are, TURN URLs
/// with credentials minted for each user.
pub struct IceProvider {
    stun_urls: Vec<String>,
    turn: Option<Turn>,
    ttl: Duration,
}

struct Turn {
    urls: Vec<String>,
    key: hmac::Key,
}

impl IceProvider {
    /// A provider of `stun_urls` and, with a secret, `turn_urls`;
    /// credentials last `ttl`. Without a secret no TURN server is listed.
    pub fn new(
        stun_urls: Vec<String>,
        turn_urls: Vec<String>,
        secret: Option<&[u8]>,
        ttl: Duration,
    ) -> Self {
        let turn = secret.filter(|_| !turn_urls.is_empty()).map(|secret| Turn {
            urls: turn_urls,
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
        });
        Self {
            stun_urls,
            turn,
            ttl,
        }
    }
}

impl fmt::Debug for IceProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("IceProvider")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn.as_ref().map(|turn| &turn.urls))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl IceServers for IceProvider {
    fn for_user(&self, user: &str, now: SystemTime) -> IceConfig {
        let mut ice_servers = Vec::new();
        if !self.stun_urls.is_empty() {
            ice_servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(turn) = &self.turn {
            let username = username(expiry(now, self.ttl), user);
            let credential = STANDARD.encode(hmac::sign(&turn.key, username.as_bytes()));
            ice_servers.push(IceServer {
                urls: turn.urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        IceConfig {
            ice_servers,
            ttl: self.ttl.as_secs(),
        }
    }
}

/// When credentials minted at `now` expire, in Unix seconds.
fn expiry(now: SystemTime, ttl: Duration) -> u64 {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    now.saturating_add(ttl.as_secs())
}

/// The TURN username for `user` until `expiry` (Unix seconds). coturn
/// reads the expiry up to the first `:`, so a `:` in the name is harmless.
pub fn username(expiry: u64, user: &str) -> String {
    format!("{expiry}:{user}")
}

/// The kinds of ICE server URL the flags take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    /// `stun:host[:port]` (RFC 7064).
    Stun,
    /// `turn:` or `turns:host[:port][?transport=udp|tcp]` (RFC 7065).
    Turn,
}

/// Checks an ICE server URL the way browsers parse it, so a typo is refused
/// at start rather than failing every call: the scheme, a host name, an
/// IPv4 address or a bracketed IPv6 address, an optional port, and for
/// TURN an optional `?transport=udp` or `?transport=tcp`.
pub fn check_url(url: &str, kind: UrlKind) -> Result<(), String> {
    let schemes: &[&str] = match kind {
        UrlKind::Stun => &["stun"],
        UrlKind::Turn => &["turn", "turns"],
    };
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| format!("no scheme; write {}:host[:port]", schemes[0]))?;
    if !schemes.contains(&scheme) {
        return Err(format!(
            "the scheme must be {}, not {scheme:?}",
            schemes.join(": or ") + ":"
        ));
    }
    let (address, query) = match rest.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (rest, None),
    };
    match (kind, query) {
        (_, None) => {}
        (UrlKind::Turn, Some("transport=udp" | "transport=tcp")) => {}
        (UrlKind::Turn, Some(other)) => {
            return Err(format!(
                "the only query allowed is ?transport=udp or ?transport=tcp, not ?{other}"
            ));
        }
        (UrlKind::Stun, Some(_)) => return Err("a stun: URL takes no query".into()),
    }
    if address.starts_with("//") {
        return Err("write the host right after the scheme, without //".into());
    }
    let (host, port) = split_port(address)?;
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(1..) => {}
            _ => {
                return Err(format!(
                    "the port must be a number from 1 to 65535, not {port:?}"
                ));
            }
        }
    }
    check_host(host)
}

/// `host[:port]`, `[v6][:port]`.
fn split_port(address: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(bracketed) = address.strip_prefix('[') {
        let (v6, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        return match after {
            "" => Ok((address, None)),
            _ => after
                .strip_prefix(':')
                .map(|port| (address, Some(port)))
                .ok_or_else(|| format!("unexpected {after:?} after the IPv6 address")),
        };
    }
    Ok(match address.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (address, None),
    })
}

fn check_host(host: &str) -> Result<(), String> {
    if host.starts_with('[') {
        return Ok(()); // checked by split_port
    }
    if host.is_empty() {
        return Err("no host".into());
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(format!(
            "{host:?} is not a host name, an IPv4 address or a bracketed IPv6 address"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"coturn-static-auth-secret";

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    /// The TURN server of a provider with `SECRET` and a TTL of an hour,
    /// for `user` at `unix`.
    fn turn_for(user: &str, unix: u64) -> IceServer {
        let provider = IceProvider::new(
            Vec::new(),
            vec!["turn:127.0.0.1".into()],
            Some(SECRET),
            Duration::from_secs(3600),
        );
        provider.for_user(user, at(unix)).ice_servers.remove(0)
    }

    #[test]
    fn the_credential_is_the_turn_rest_reference_computation() {
        // printf %s "1700003600:alice" \
        //   | openssl dgst -sha1 -hmac coturn-static-auth-secret -binary | base64
        let alice = turn_for("alice", 1_700_000_000);
        assert_eq!(alice.username.as_deref(), Some("1700003600:alice"));
        assert_eq!(
            alice.credential.as_deref(),
            Some("mQ2kk0sZoiEV+rzsWtRAfhjN8uE=")
        );
        // The name's UTF-8 bytes, as a browser sends the USERNAME attribute.
        let jose = turn_for("José María", 1_700_000_000);
        assert_eq!(
            jose.credential.as_deref(),
            Some("KykNM8xZ0WouT1suGUltXKfkAl4=")
        );
    }

    #[test]
    fn the_provider_mints_the_expiry_into_the_username_and_respects_the_ttl() {
        let provider = IceProvider::new(
            vec!["stun:stun.example.net".into()],
            vec![
                "turn:turn.example.net:3478?transport=udp".into(),
                "turns:turn.example.net:5349?transport=tcp".into(),
            ],
            Some(SECRET),
            Duration::from_secs(3600),
        );
        let config = provider.for_user("alice", at(1_700_000_000));
        assert_eq!(config.ttl, 3600);
        assert_eq!(config.ice_servers.len(), 2);
        assert_eq!(config.ice_servers[0].urls, ["stun:stun.example.net"]);
        assert_eq!(config.ice_servers[0].username, None);
        let turn = &config.ice_servers[1];
        assert_eq!(turn.urls.len(), 2);
        assert_eq!(turn.username.as_deref(), Some("1700003600:alice"));
        assert_eq!(
            turn.credential.as_deref(),
            Some("mQ2kk0sZoiEV+rzsWtRAfhjN8uE=")
        );

        let short = IceProvider::new(
            Vec::new(),
            vec!["turn:127.0.0.1".into()],
            Some(SECRET),
            Duration::from_millis(90_900),
        );
        let later = short.for_user("bob", at(1_700_000_000) + Duration::from_millis(999));
        assert_eq!(later.ttl, 90, "whole seconds");
        assert_eq!(
            later.ice_servers[0].username.as_deref(),
            Some("1700000090:bob")
        );
    }

    #[test]
    fn json_is_what_rtc_peer_connection_takes() {
        let provider = IceProvider::new(
            vec!["stun:127.0.0.1:3478".into()],
            vec!["turn:127.0.0.1:3478".into()],
            Some(SECRET),
            Duration::from_secs(60),
        );
        let json = serde_json::to_value(provider.for_user("a", at(100))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "iceServers": [
                    {"urls": ["stun:127.0.0.1:3478"]},
                    {"urls": ["turn:127.0.0.1:3478"], "username": "160:a",
                     // printf %s 160:a | openssl dgst -sha1 -hmac … -binary | base64
                     "credential": "IC8umSXCpEARnm/2SP58sWW6rzQ="},
                ],
                "ttl": 60,
            })
        );
        let none = IceProvider::new(Vec::new(), Vec::new(), None, Duration::from_secs(60));
        assert_eq!(
            serde_json::to_value(none.for_user("a", at(100))).unwrap(),
            serde_json::json!({"iceServers": [], "ttl": 60})
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let provider = IceProvider::new(
            Vec::new(),
            vec!["turn:127.0.0.1".into()],
            Some(b"hunter2-hunter2"),
            Duration::from_secs(60),
        );
        assert!(!format!("{provider:?}").contains("hunter2"));
    }

    #[test]
    fn urls_are_checked_like_browsers_parse_them() {
        for good in [
            "stun:stun.l.google.com:19302",
            "stun:127.0.0.1",
            "stun:[::1]:3478",
        ] {
            assert_eq!(check_url(good, UrlKind::Stun), Ok(()), "{good}");
        }
        for good in [
            "turn:turn.example.net",
            "turn:127.0.0.1:3478?transport=udp",
            "turns:turn.example.net:443?transport=tcp",
            "turn:[2001:db8::1]:3478?transport=tcp",
            "turn:example.net.",
        ] {
            assert_eq!(check_url(good, UrlKind::Turn), Ok(()), "{good}");
        }
        for (bad, kind) in [
            ("turn:host", UrlKind::Stun),
            ("stun:host", UrlKind::Turn),
            ("stuns:host", UrlKind::Stun),
            ("host:3478", UrlKind::Turn),
            ("turn.example.net", UrlKind::Turn),
            ("turn:", UrlKind::Turn),
            ("turn://host:3478", UrlKind::Turn),
            ("turn:host:0", UrlKind::Turn),
            ("turn:host:65536", UrlKind::Turn),
            ("turn:host:port", UrlKind::Turn),
            ("turn:host?transport=sctp", UrlKind::Turn),
            ("turn:host:3478?transport=udp&x=1", UrlKind::Turn),
            ("stun:host?transport=udp", UrlKind::Stun),
            ("turn:user@host", UrlKind::Turn),
            ("turn:host/path", UrlKind::Turn),
            ("turn:[::1", UrlKind::Turn),
            ("turn:[nope]:3478", UrlKind::Turn),
            ("turn:[::1]x", UrlKind::Turn),
            ("turn:-host", UrlKind::Turn),
            ("turn:host name", UrlKind::Turn),
        ] {
            assert!(check_url(bad, kind).is_err(), "{bad} accepted");
        }
    }
}
