//! The courier: the one task that sends what this node says to the others.
//! It takes envelopes and reports from bounded queues (the hot path never
//! waits on Redis), looks up the targets' routes, and sends each batch as
//! one pipeline: a message per target node, a message of fates per node
//! they are for, the releases of ended claims. It also keeps the node's
//! lease and self-ping, answers envelopes whose deadline passed, and
//! claims every local user again when the link to Redis comes back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::messages::{self, Header};
use super::{Generation, RedisCluster, Report, bounded, keys, rooms};
use crate::core::Hub;
use crate::core::cluster::{Fate, NodeInfo, Outgoing};
use crate::core::ids::NodeId;
use crate::core::store::{new_token, unix_ms};

/// Most envelopes (or reports) taken from a queue for one batch.
const BATCH: usize = 512;
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(250);
/// How often the lease is renewed, the self-ping sent and live nodes read.
const LEASE_EVERY: Duration = Duration::from_secs(1);
/// A lease lapses this long after its last renewal.
const LEASE_TTL_MS: u64 = 3000;
/// A route to a node missing from the live set looks at the leases again,
/// at most this often.
const LOOK_AGAIN: Duration = Duration::from_millis(100);
/// Routes remembered before the cache starts over.
const ROUTE_CACHE: usize = 100_000;

/// What the courier knows between batches.
struct Courier {
    cluster: Arc<RedisCluster>,
    hub: Arc<Hub>,
    info: NodeInfo,
    /// Which node each user was last found on.
    routes: HashMap<Arc<str>, NodeId>,
    /// Nodes holding a lease at the last look.
    live: HashSet<NodeId>,
    ping: u64,
    last_lease: Option<Instant>,
    /// When the live nodes were last read.
    last_look: Option<Instant>,
}

pub(super) async fn run(
    cluster: Arc<RedisCluster>,
    hub: Arc<Hub>,
    info: NodeInfo,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mut reports: mpsc::Receiver<Report>,
    stop: CancellationToken,
) {
    let mut courier = Courier {
        cluster,
        hub,
        info,
        routes: HashMap::new(),
        live: HashSet::new(),
        ping: 0,
        last_lease: None,
        last_look: None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut envelopes = Vec::with_capacity(BATCH);
    let mut told = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = courier.cluster.resynced.notified() => {
                courier.housekeeping(true).await;
                continue;
            }
            _ = tick.tick() => {
                courier.housekeeping(false).await;
                continue;
            }
            taken = outgoing.recv_many(&mut envelopes, BATCH) => if taken == 0 { break },
            taken = reports.recv_many(&mut told, BATCH) => if taken == 0 { break },
        }
        while envelopes.len() < BATCH {
            match outgoing.try_recv() {
                Ok(envelope) => envelopes.push(envelope),
                Err(_) => break,
            }
        }
        while told.len() < BATCH {
            match reports.try_recv() {
                Ok(report) => told.push(report),
                Err(_) => break,
            }
        }
        courier.send(&mut envelopes, &mut told).await;
    }
    // Whatever is still queued will not be sent: answer it now.
    outgoing.close();
    while let Ok(envelope) = outgoing.try_recv() {
        courier.hub.settled(
            envelope.id,
            Fate::Unavailable("the gateway is stopping".into()),
        );
    }
    courier.release_lease().await;
}

impl Courier {
    /// Deadlines every tick; lease, ping and live nodes every second (or
    /// at once after a resubscription, with every local user claimed
    /// again).
    async fn housekeeping(&mut self, resubscribed: bool) {
        self.hub.expire_remote();
        self.cluster.count_unavailable();
        let dropped = self
            .cluster
            .health
            .dropped_reports
            .swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "reports to other nodes dropped: their queue was full (those envelopes will be answered UNCONFIRMED)"
            );
        }
        let due = self.last_lease.is_none_or(|at| at.elapsed() >= LEASE_EVERY);
        if !(due || resubscribed) {
            return;
        }
        self.last_lease = Some(Instant::now());
        self.renew().await;
        if self.cluster.health.resync.swap(false, Ordering::AcqRel) {
            let wanted = self.cluster.health.reclaim_wanted.load(Ordering::Acquire);
            self.routes.clear();
            if let Err(err) = rooms::load(&self.cluster, &self.hub).await {
                tracing::warn!(%err, "could not read the rooms; will retry");
                self.cluster.health.resync.store(true, Ordering::Release);
            }
            if self.reclaim().await {
                self.cluster.health.away.store(false, Ordering::Release);
                self.cluster
                    .health
                    .reclaimed
                    .fetch_max(wanted, Ordering::AcqRel);
            }
        }
    }

    /// Renews the lease, pings the inbox and reads which nodes are alive,
    /// in one pipeline.
    async fn renew(&mut self) {
        self.ping += 1;
        self.info.connections = self.hub.connections();
        let node = self.cluster.node.to_string();
        let lease = serde_json::to_string(&self.info).unwrap_or_default();
        let ping = messages::encode(
            &Header::Ping {
                from: node.clone(),
                seq: self.ping,
            },
            &[],
        );
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys::lease(&node))
            .arg(lease)
            .arg("PX")
            .arg(LEASE_TTL_MS)
            .ignore()
            .cmd("PUBLISH")
            .arg(keys::inbox(&node))
            .arg(ping.as_ref())
            .ignore()
            .cmd("HGET")
            .arg(keys::GENERATION)
            .arg("id");
        let mut redis = self.cluster.redis.clone();
        let result = bounded(pipe.query_async::<(Option<String>,)>(&mut redis)).await;
        self.cluster.health.command_result(&result);
        let Ok((generation,)) = result else {
            return;
        };
        self.check_generation(generation).await;
        self.look_at_nodes().await;
    }

    /// Compares the generation of the shared state in Redis with the one
    /// this node relies on. If that one is gone, Redis lost every identity
    /// and route (it restarted empty): every local user is closed before
    /// this node takes part in a new generation, so no name can be claimed
    /// again while its old connection is open here.
    async fn check_generation(&mut self, found: Option<String>) {
        let health = &self.cluster.health;
        let known = health.generation();
        match (&known, &found) {
            (Some(known), Some(found)) if known.id == *found => return,
            (Some(_), _) => {
                let closed = self.hub.shared_state_lost();
                self.routes.clear();
                tracing::error!(
                    closed,
                    "the cluster's shared state is gone (Redis restarted empty?): every user of this node was closed as KICKED, as when every identity is deleted"
                );
            }
            (None, _) => {}
        }
        let mut redis = self.cluster.redis.clone();
        let adopted = bounded(
            keys::ADOPT_GENERATION
                .key(keys::GENERATION)
                .arg(new_token())
                .arg(unix_ms(std::time::SystemTime::now()))
                .invoke_async::<(String, u64)>(&mut redis),
        )
        .await;
        self.cluster.health.command_result(&adopted);
        match adopted {
            Ok((id, at_ms)) => {
                tracing::info!(generation = %id, "the cluster's shared state");
                health.set_generation(Generation { id, at_ms });
            }
            Err(err) => tracing::warn!(%err, "cannot read the cluster's shared state; will retry"),
        }
    }

    /// Reads which nodes hold a lease.
    async fn look_at_nodes(&mut self) {
        self.last_look = Some(Instant::now());
        if let Ok(nodes) = self.cluster.live_nodes().await {
            self.live = nodes.into_iter().map(|info| info.node).collect();
            self.live.insert(self.cluster.node.clone());
            let live: Vec<NodeId> = self.live.iter().cloned().collect();
            rooms::purge_dead(&self.cluster, &live).await;
        }
    }

    /// Claims every local user again with the epoch it has: a user claimed
    /// elsewhere meanwhile is closed here; a route that still names an
    /// older connection elsewhere is fenced there. False when that could
    /// not be done (it is tried again).
    async fn reclaim(&mut self) -> bool {
        let claims = self.hub.claims();
        if claims.is_empty() {
            return true;
        }
        let Some(generation) = self.cluster.health.generation() else {
            self.cluster.health.resync.store(true, Ordering::Release);
            return false;
        };
        let node = self.cluster.node.clone();
        let since = unix_ms(std::time::SystemTime::now()) / 1000;
        let mut lost = 0;
        for claim in claims {
            let mut redis = self.cluster.redis.clone();
            let result = bounded(
                keys::RECLAIM
                    .key(keys::route(&claim.user))
                    .key(keys::epoch(&claim.user))
                    .key(keys::GENERATION)
                    .arg(node.as_ref())
                    .arg(claim.conn)
                    .arg(claim.epoch)
                    .arg(claim.transport.as_str())
                    .arg(since)
                    .arg(keys::EPOCH_KEEP_MS)
                    .arg(&generation.id)
                    .invoke_async::<(u8, String, u64)>(&mut redis),
            )
            .await;
            self.cluster.health.command_result(&result);
            match result {
                Ok((0, _, _)) => {
                    lost += 1;
                    self.hub.fence(&claim.user, claim.epoch);
                }
                Ok((_, previous, epoch)) if previous != node.as_ref() => {
                    self.cluster
                        .send_fence(&previous, &claim.user, epoch, None)
                        .await;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "claiming local users again failed; will retry");
                    self.cluster.health.resync.store(true, Ordering::Release);
                    return false;
                }
            }
        }
        tracing::info!(lost, "claimed every local user again");
        true
    }

    async fn release_lease(&self) {
        let mut redis = self.cluster.redis.clone();
        let _ = bounded(
            redis::cmd("DEL")
                .arg(keys::lease(&self.cluster.node))
                .query_async::<()>(&mut redis),
        )
        .await;
    }

    /// Looks up the nodes of `targets` not known yet (or to be looked up
    /// afresh), in one pipeline.
    async fn resolve(&mut self, envelopes: &[Outgoing]) -> Result<(), String> {
        if self.routes.len() > ROUTE_CACHE {
            self.routes.clear();
        }
        let mut wanted: Vec<Arc<str>> = Vec::new();
        for envelope in envelopes {
            if envelope.fresh_route {
                self.routes.remove(&envelope.target);
            }
            if !self.routes.contains_key(&envelope.target) && !wanted.contains(&envelope.target) {
                wanted.push(envelope.target.clone());
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for target in &wanted {
            pipe.cmd("HGET").arg(keys::route(target)).arg("node");
        }
        let mut redis = self.cluster.redis.clone();
        let nodes: Vec<Option<String>> = bounded(pipe.query_async(&mut redis)).await?;
        for (target, node) in wanted.into_iter().zip(nodes) {
            if let Some(node) = node {
                self.routes.insert(target, node.into());
            }
        }
        Ok(())
    }

    /// Sends one batch: envelopes grouped by target node, fates grouped by
    /// the node they are for, releases; answers what could not be sent.
    async fn send(&mut self, envelopes: &mut Vec<Outgoing>, told: &mut Vec<Report>) {
        let resolved = if envelopes.is_empty() {
            Ok(())
        } else {
            self.resolve(envelopes).await
        };
        if let Err(err) = &resolved {
            self.cluster.health.command_result::<()>(&Err(err.clone()));
            for envelope in envelopes.drain(..) {
                self.hub
                    .settled(envelope.id, Fate::Unavailable(err.clone()));
            }
        }
        // A route to a node not seen alive yet (it started since the last
        // look): look again before calling its users unreachable.
        let unknown = envelopes.iter().any(|envelope| {
            self.routes
                .get(&envelope.target)
                .is_some_and(|node| !self.live.contains(node))
        });
        let looked = unknown && self.last_look.is_none_or(|at| at.elapsed() >= LOOK_AGAIN);
        if looked {
            self.look_at_nodes().await;
        }
        let here = self.cluster.node.clone();
        let mut by_node: HashMap<NodeId, Vec<Outgoing>> = HashMap::new();
        for envelope in envelopes.drain(..) {
            match self.routes.get(&envelope.target) {
                None => {
                    tracing::debug!(target_user = %envelope.target, "no route: not connected anywhere");
                    self.hub.settled(envelope.id, Fate::NotFound);
                }
                // The route names this node, yet the user was not here when
                // the envelope was sent: it is on its way in (its stream
                // handed over), or left a moment ago.
                Some(node) if *node == here => self.hub.routed_here(envelope.id),
                // Without a lease at a look made just now, the node is gone
                // (or cut off from Redis); otherwise the publish's receiver
                // count tells.
                Some(node) if looked && !self.live.contains(node) => {
                    tracing::debug!(target_user = %envelope.target, %node, "the route names a node without a lease");
                    self.hub.settled(envelope.id, Fate::NotFound);
                }
                Some(node) => by_node.entry(node.clone()).or_default().push(envelope),
            }
        }
        let mut fates: HashMap<NodeId, Vec<(u64, Fate)>> = HashMap::new();
        let mut releases = Vec::new();
        let mut room_envelopes = Vec::new();
        let mut handoffs = Vec::new();
        let mut scripted = Vec::new();
        for report in told.drain(..) {
            match report {
                Report::Fate { node, id, fate } => fates.entry(node).or_default().push((id, fate)),
                Report::Release { user, epoch } => releases.push((user, epoch)),
                Report::RoomEnvelope { node, message } => room_envelopes.push((node, message)),
                Report::Handoff { node, message } => handoffs.push((node, message)),
                Report::Rooms(change) => scripted.push(rooms::script(&change, &here, &self.hub)),
            }
        }
        if by_node.is_empty()
            && fates.is_empty()
            && releases.is_empty()
            && room_envelopes.is_empty()
            && handoffs.is_empty()
            && scripted.is_empty()
        {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent: Vec<(NodeId, Vec<u64>)> = Vec::with_capacity(by_node.len());
        for (node, batch) in by_node {
            let frames: Vec<Bytes> = batch.iter().map(|e| e.frame.clone()).collect();
            let header = Header::Envelopes {
                from: here.to_string(),
                items: batch
                    .iter()
                    .map(|e| (e.id, e.target.to_string(), e.frame.len()))
                    .collect(),
            };
            pipe.cmd("PUBLISH")
                .arg(keys::inbox(&node))
                .arg(messages::encode(&header, &frames).as_ref());
            sent.push((node, batch.into_iter().map(|e| e.id).collect()));
        }
        // Room envelopes before the room changes of the same batch: a
        // member's PEER_LEFT comes after the last envelope it sent.
        for (node, message) in room_envelopes {
            pipe.cmd("PUBLISH")
                .arg(rooms::inbox(&node))
                .arg(message.as_ref())
                .ignore();
        }
        // A stream its new node waits for; if it never arrives there (that
        // node died, or the link failed), the envelopes it held whose fate
        // is awaited are answered at their deadline.
        for (node, message) in handoffs {
            pipe.cmd("PUBLISH")
                .arg(keys::inbox(&node))
                .arg(message.as_ref())
                .ignore();
        }
        for (node, items) in fates {
            let header = Header::Fates {
                from: here.to_string(),
                items,
            };
            pipe.cmd("PUBLISH")
                .arg(keys::inbox(&node))
                .arg(messages::encode(&header, &[]).as_ref())
                .ignore();
        }
        for (user, epoch) in releases {
            pipe.cmd("EVAL")
                .arg(keys::RELEASE_SOURCE)
                .arg(1)
                .arg(keys::route(&user))
                .arg(epoch)
                .ignore();
        }
        for change in &scripted {
            change.add_to(&mut pipe);
        }
        let mut redis = self.cluster.redis.clone();
        let result = bounded(pipe.query_async::<Vec<redis::Value>>(&mut redis)).await;
        self.cluster.health.command_result(&result);
        match result {
            Ok(receivers) => {
                let changed = receivers.get(sent.len()..).unwrap_or_default();
                for (change, result) in scripted.iter().zip(changed) {
                    change.answer(&self.hub, &here, Ok(result));
                }
                for ((node, ids), receivers) in sent.into_iter().zip(receivers) {
                    match receivers {
                        redis::Value::Int(n) if n > 0 => {}
                        // Nobody subscribed: the node is gone.
                        redis::Value::Int(_) => {
                            tracing::debug!(%node, "no subscriber on the node's inbox: it is gone");
                            self.forget_node(&node);
                            for id in ids {
                                self.hub.settled(id, Fate::NotFound);
                            }
                        }
                        other => {
                            let why = format!("Redis refused the message: {other:?}");
                            for id in ids {
                                self.hub.settled(id, Fate::Unavailable(why.clone()));
                            }
                        }
                    }
                }
            }
            Err(err) => {
                for change in &scripted {
                    change.answer(&self.hub, &here, Err(&err));
                }
                for (_, ids) in sent {
                    for id in ids {
                        self.hub.settled(id, Fate::Unavailable(err.clone()));
                    }
                }
            }
        }
    }

    /// A node found dead: forget it and the routes that named it.
    fn forget_node(&mut self, node: &NodeId) {
        self.live.remove(node);
        self.routes.retain(|_, on| on != node);
    }
}
