//! A node's inbox: the subscription to its own channel and the control
//! channel, kept up (re-subscribing after any loss), and what arrives on
//! it handed to the hub.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::messages::{self, Header};
use super::{PING_WITHIN, RedisCluster, bounded, keys};
use crate::core::Hub;
use crate::core::ids::NodeId;

/// First wait before subscribing again; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Keeps the subscription up until `stop`.
pub(super) async fn run(cluster: Arc<RedisCluster>, hub: Arc<Hub>, stop: CancellationToken) {
    let health = &cluster.health;
    let mut switches = cluster.redis.switches();
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        switches.borrow_and_update();
        match subscribe(cluster.redis.client(), &cluster.node).await {
            Ok(pubsub) => {
                backoff = MIN_BACKOFF;
                failing = false;
                health.subscribed.store(true, Ordering::Release);
                // Whatever happened while we were away, claim every local
                // user again.
                health.resync.store(true, Ordering::Release);
                cluster.resynced.notify_one();
                tracing::info!(node = %cluster.node, "subscribed to the cluster's channels");
                let why = listen(pubsub, &cluster, &hub, &stop, &mut switches).await;
                health.subscribed.store(false, Ordering::Release);
                if stop.is_cancelled() {
                    return;
                }
                tracing::warn!(why, "the cluster subscription was lost; subscribing again");
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(%err, "cannot subscribe to the cluster's channels; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
            _ = switches.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(
    client: Option<redis::Client>,
    node: &str,
) -> Result<redis::aio::PubSub, String> {
    let client = client.ok_or("no Redis primary known")?;
    let mut pubsub = bounded(client.get_async_pubsub()).await?;
    bounded(pubsub.subscribe(&[keys::inbox(node), keys::CONTROL.to_owned()])).await?;
    Ok(pubsub)
}

/// Hands every message to the hub until the subscription ends or goes
/// quiet (this node pings itself every second, so silence means it is
/// dead); returns why it ended.
async fn listen(
    pubsub: redis::aio::PubSub,
    cluster: &RedisCluster,
    hub: &Hub,
    stop: &CancellationToken,
    switches: &mut tokio::sync::watch::Receiver<u64>,
) -> &'static str {
    let mut messages = pubsub.into_on_message();
    loop {
        tokio::select! {
            () = stop.cancelled() => return "stopping",
            _ = switches.changed() => return "the Redis primary changed",
            next = tokio::time::timeout(PING_WITHIN, messages.next()) => match next {
                Err(_) => return "nothing arrived, not even this node's ping, within 3 s",
                Ok(None) => return "the connection closed",
                Ok(Some(message)) => {
                    handle(Bytes::copy_from_slice(message.get_payload_bytes()), cluster, hub);
                }
            }
        }
    }
}

fn handle(payload: Bytes, cluster: &RedisCluster, hub: &Hub) {
    let (header, frames) = match messages::decode(payload) {
        Ok(decoded) => decoded,
        Err(err) => {
            tracing::warn!(%err, "an unreadable message on the cluster's channels; ignored");
            return;
        }
    };
    match header {
        Header::Envelopes { from, items } => {
            let from: NodeId = from.into();
            for ((id, target, _), frame) in items.into_iter().zip(frames) {
                hub.deliver_remote(&from, id, &target, frame);
            }
        }
        Header::Fates { items, .. } => {
            for (id, fate) in items {
                hub.settled(id, fate);
            }
        }
        Header::Fence {
            from,
            user,
            epoch,
            handoff,
        } => {
            let closed = match handoff {
                Some(by) => hub.hand_off(&user, epoch, &from.as_str().into(), by),
                None => hub.fence(&user, epoch),
            };
            if closed {
                tracing::debug!(%user, epoch, %from, "closed: replaced on another node");
            }
        }
        Header::Stream {
            user,
            epoch,
            stream,
            ..
        } => {
            let moved = stream.map(|head| messages::moved(head, frames, hub.clock().now()));
            hub.handed_over(&user, epoch, moved);
        }
        Header::Ping { from, .. } => {
            if from == cluster.node.as_ref() {
                cluster.health.heard_ping();
            }
        }
        room @ (Header::Room { .. } | Header::RoomEnvelope { .. } | Header::Kick { .. }) => {
            if !matches!(&room, Header::Kick { from, .. } if from == cluster.node.as_ref()) {
                super::rooms::handle(room, frames, hub);
            }
        }
        Header::Broadcast { from, command } => {
            if from != cluster.node.as_ref() {
                let closed = hub.apply(command);
                tracing::info!(?command, %from, closed, "carried out another node's admin action");
            }
        }
    }
}
