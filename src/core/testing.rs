//! Helpers for the core's unit tests.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::Value;

use super::hub::{Authenticated, Hub, Identities};
use super::limits::Limits;
use super::registry::Transport;
use super::session::Session;
use super::wire::CloseReason;

/// The address test clients come from.
pub(crate) const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A hub with `limits` and no identities.
pub(crate) fn hub_with(limits: Limits) -> Arc<Hub> {
    let identities = Identities::in_memory(&limits);
    Hub::new(limits, identities)
}

/// Attaches a WebSocket connection for `user`.
pub(crate) fn connect(hub: &Arc<Hub>, user: &str) -> Session {
    let admission = hub.admit(LOCAL).unwrap();
    hub.attach(
        admission,
        Authenticated::for_tests(hub, user),
        Transport::WebSocket,
        LOCAL,
        std::time::Instant::now(),
    )
    .unwrap()
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
