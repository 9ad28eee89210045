//! ICE servers a client should use for its peer connections: the seam
//! between the core, which hands them out (in `WELCOME` and through the
//! hub), and whatever mints them (`crate::turn`, which holds the TURN
//! secret and the HMAC).

use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

/// One entry of `RTCConfiguration.iceServers`, as the browser takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs that share these credentials.
    pub urls: Vec<String>,
    /// The TURN username; absent for STUN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The TURN password; absent for STUN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The ICE servers for one user, with how long their credentials last:
/// `{"iceServers": [...], "ttl": seconds}`, so that
/// `new RTCPeerConnection({iceServers})` takes the list as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceConfig {
    /// STUN and TURN servers; empty when none are configured.
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    /// Seconds the credentials in the list stay valid from when they were
    /// minted: fetch a fresh list before then.
    pub ttl: u64,
}

/// Hands out ICE servers, minting fresh TURN credentials for each call.
pub trait IceServers: Send + Sync + fmt::Debug {
    /// The servers `user` should use, with credentials valid from `now`.
    fn for_user(&self, user: &str, now: SystemTime) -> IceConfig;
}
