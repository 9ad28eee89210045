//! Which browser origins may use the gateway.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::forwarded::host_port;

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

#[cfg(test)]
mod tests {
    use super::*;

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
