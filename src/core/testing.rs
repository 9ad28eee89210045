//! Helpers for the core's unit tests.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use super::clock::Clock;
use super::hub::{Authenticated, Hub};
use super::ice::{IceConfig, IceServer, IceServers};
use super::identity::Identities;
use super::limits::Limits;
use super::session::Session;
use super::transport::Transport;
use super::wire::CloseReason;

/// The address test clients come from.
pub(crate) const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A hub with `limits`, no identities and [`TestIce`].
pub(crate) fn hub_with(limits: Limits) -> Arc<Hub> {
    hub_at(limits, Clock::system())
}

/// A hub as [`hub_with`] makes it, reading time from `clock`.
pub(crate) fn hub_at(limits: Limits, clock: Clock) -> Arc<Hub> {
    let identities = Identities::in_memory(&limits, &clock);
    Hub::with_clock(limits, identities, Arc::new(TestIce), clock)
}

/// One TURN server whose credentials name the user and the time, so a test
/// can tell whose and when they were minted.
#[derive(Debug)]
pub(crate) struct TestIce;

impl IceServers for TestIce {
    fn for_user(&self, user: &str, now: SystemTime) -> IceConfig {
        let minted = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        IceConfig {
            ice_servers: vec![IceServer {
                urls: vec!["turn:turn.test".into()],
                username: Some(format!("{minted}:{user}")),
                credential: Some("secret".into()),
            }],
            ttl: 60,
        }
    }
}

/// Attaches a WebSocket connection for `user`.
pub(crate) fn connect(hub: &Arc<Hub>, user: &str) -> Session {
    resume(hub, user, None)
}

/// Attaches a WebSocket connection for `user` that asks to resume after
/// `seq` (`resume=N`), or not.
pub(crate) fn resume(hub: &Arc<Hub>, user: &str, seq: Option<u64>) -> Session {
    let admission = hub.admit(LOCAL).unwrap();
    let claimed = futures::executor::block_on(
        hub.claim(Authenticated::for_tests(hub, user), Transport::WebSocket),
    )
    .unwrap();
    Session::attach(hub, admission, claimed, LOCAL, hub.clock().now(), seq).unwrap()
}

/// Everything queued for `session`, WELCOME included, as JSON; seals it.
pub(crate) fn drain_all(session: &Session) -> Vec<Value> {
    session
        .outbox()
        .seal(CloseReason::InternalError)
        .iter()
        .map(|item| serde_json::from_slice::<Value>(&item.frame).unwrap())
        .collect()
}

fn json(items: &[super::outbox::Queued]) -> Vec<Value> {
    items
        .iter()
        .map(|item| serde_json::from_slice::<Value>(&item.frame).unwrap())
        .filter(|v| v["type"] != "WELCOME")
        .collect()
}

/// Everything queued for `session`, as JSON, skipping the WELCOME; seals it.
pub(crate) fn drain(session: &Session) -> Vec<Value> {
    json(&session.outbox().seal(CloseReason::InternalError))
}

/// The next batch the writer would take, as JSON, skipping the WELCOME.
pub(crate) fn take(session: &Session) -> Vec<Value> {
    let (batch, _) = futures::executor::block_on(session.outbox().next_batch());
    json(&Vec::from(batch))
}
