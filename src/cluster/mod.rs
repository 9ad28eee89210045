//! Many gateways as one, on Redis: the cluster backend behind the core's
//! [`Cluster`] seam.
//!
//! Each node subscribes to its own inbox channel and to a control channel.
//! A user's connection is recorded as a route (`sg:route:<user>`: node and
//! epoch), claimed with an epoch a script allocates atomically; the node
//! that claims tells the previous holder's node to close that epoch's
//! connection (a fence), so newest wins however claims race. An envelope
//! for a user on another node is queued for the courier task, which looks
//! routes up (cached until a node says the user is not there), and
//! publishes one message per target node per batch; the target node
//! writes each envelope and reports every fate back in batches. Nodes hold
//! leases (`sg:node:<id>`, 3 s) and ping their own inbox every second, so a
//! dead node's users are unreachable at once (its subscription is gone) or
//! within 4 s (its lease lapsed), and a node whose subscription silently
//! stopped delivering knows it within 3 s and reports itself not ready.
//!
//! The Redis written to is one server (`--redis`) or the primary Sentinel
//! names, followed through failovers (see `sentinel`).
//!
//! Redis pub/sub delivers at most once; the core's books make that safe:
//! every envelope sent is answered to its sender unless its node confirmed
//! writing it (see [`crate::core::cluster`]).

mod args;
mod courier;
mod inbox;
mod keys;
mod messages;
mod rooms;
mod sentinel;

pub use args::ClusterArgs;
pub use sentinel::{Backend, Primary, SentinelSettings};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::core::Transport;
use crate::core::cluster::{
    Broadcast, Cluster, ClusterClaim, ClusterError, ClusterFuture, ClusterUser, Fate, Handoff,
    NodeInfo, Outgoing, PrimaryFacts,
};
use crate::core::ids::{Epoch, NodeId};
use crate::core::rooms::RoomChange;
use crate::core::{Hub, store::unix_ms};
use messages::Header;

/// Envelopes waiting for the courier; beyond this a sender is answered
/// `CLUSTER_UNAVAILABLE` at once instead of queueing without bound.
const OUTGOING_QUEUE: usize = 65_536;
/// Fates and releases waiting for the courier.
const REPORT_QUEUE: usize = 65_536;
/// Any one Redis operation gives up after this (the link is then down).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// A node's self-ping must come back within this, or its subscription is
/// considered dead.
const PING_WITHIN: Duration = Duration::from_secs(3);
/// How often the clock watcher looks at the time.
const CLOCK_TICK: Duration = Duration::from_millis(100);
/// A gap this long between two looks means the node was not running (it
/// was stopped, or starved): two lease renewals missed, time enough for a
/// user to have reconnected elsewhere. Its claims are checked again before
/// it delivers to its own users.
const PAUSE_LIMIT: Duration = Duration::from_secs(2);
/// A generation of the shared state is claimed in only once it is this
/// old: longer than a running node takes to notice the one it knew is gone
/// (it looks every second) and close its users, so nobody can claim a
/// name while its old connection is still open somewhere.
const GENERATION_SETTLE: Duration = Duration::from_secs(3);

/// The origin of the clock watcher's times.
static CLOCK_BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn clock_ms() -> u64 {
    u64::try_from(CLOCK_BASE.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The cluster's shared state as this node found it in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    /// Random, written by the node that found none.
    id: String,
    /// When it was written, in Unix milliseconds.
    at_ms: u64,
}

/// Why a node cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL is not one the Redis client takes.
    #[error("--redis: {0}")]
    Url(String),
}

/// Something a node tells another through the courier.
#[derive(Debug)]
enum Report {
    /// How an envelope from `node` ended here.
    Fate { node: NodeId, id: u64, fate: Fate },
    /// A connection ended: drop its route unless a newer claim replaced it.
    Release { user: Arc<str>, epoch: Epoch },
    /// A change to rooms, for the shared state.
    Rooms(RoomChange),
    /// A room envelope for `node`'s members (the whole message).
    RoomEnvelope { node: NodeId, message: bytes::Bytes },
    /// A user's stream for the node that claimed it (the whole message).
    Handoff { node: NodeId, message: bytes::Bytes },
}

/// Whether this node's link to the cluster works, from what its tasks see.
#[derive(Debug, Default)]
struct Health {
    /// The last Redis command succeeded.
    commands_ok: AtomicBool,
    /// The inbox subscription is established.
    subscribed: AtomicBool,
    /// When this node last heard its own ping.
    last_ping: Mutex<Option<Instant>>,
    /// Set when the link came back: the courier claims every local user
    /// again.
    resync: AtomicBool,
    /// Reports dropped because their queue was full.
    dropped_reports: AtomicU64,
    /// Switches of primary whose claims must be made again; the node is
    /// not ready until `reclaimed` catches up.
    reclaim_wanted: AtomicU64,
    /// Switches whose claims were made again.
    reclaimed: AtomicU64,
    /// Time spent not ready, counted by the courier's tick.
    unavailable_ms: AtomicU64,
    /// When that was last counted.
    last_count: Mutex<Option<Instant>>,
    /// The generation of the shared state this node relies on.
    generation: Mutex<Option<Generation>>,
    /// The node was paused: its own users are not delivered to until its
    /// claims on them are checked again.
    away: AtomicBool,
    /// When the clock watcher last looked ([`clock_ms`]).
    tick_ms: AtomicU64,
}

impl Health {
    fn heard_ping(&self) {
        *self
            .last_ping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }

    fn ping_fresh(&self) -> bool {
        self.last_ping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|at| at.elapsed() < PING_WITHIN)
    }

    fn command_result<T>(&self, result: &Result<T, String>) {
        let ok = result.is_ok();
        if self.commands_ok.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!("Redis answers again");
            } else if let Err(err) = result {
                tracing::warn!(%err, "Redis does not answer");
            }
        }
    }

    fn problem(&self) -> Option<&'static str> {
        if !self.commands_ok.load(Ordering::Acquire) {
            Some("Redis does not answer commands")
        } else if !self.subscribed.load(Ordering::Acquire) {
            Some("the inbox subscription is not established")
        } else if !self.ping_fresh() {
            Some("the inbox subscription delivers nothing (no self-ping within 3 s)")
        } else if self.reclaimed.load(Ordering::Acquire)
            < self.reclaim_wanted.load(Ordering::Acquire)
        {
            Some("claiming this node's users again on the new Redis primary")
        } else {
            match self.generation() {
                None => Some("the cluster's shared state has not been read yet"),
                Some(generation) if !settled(&generation) => Some(
                    "the cluster's shared state is new: claims wait 3 s, until every node has noticed",
                ),
                Some(_) => None,
            }
        }
    }

    fn generation(&self) -> Option<Generation> {
        self.generation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_generation(&self, generation: Generation) {
        *self
            .generation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(generation);
    }

    /// Whether this node's claims on its users are known to hold: it has
    /// not been paused since it last checked them. Read on the hot path:
    /// the tick first, so that a fresh tick also shows the `away` the
    /// watcher set before it (see [`watch_clock`]).
    fn current(&self) -> bool {
        let tick = self.tick_ms.load(Ordering::Acquire);
        clock_ms().saturating_sub(tick) < millis(PAUSE_LIMIT) && !self.away.load(Ordering::Acquire)
    }
}

fn settled(generation: &Generation) -> bool {
    unix_ms(SystemTime::now()).saturating_sub(generation.at_ms) >= millis(GENERATION_SETTLE)
}

/// Looks at the clock every [`CLOCK_TICK`] until `stop`; after a gap of
/// [`PAUSE_LIMIT`] the node was not running, and has the courier check its
/// claims again before it delivers to its own users.
async fn watch_clock(cluster: Arc<RedisCluster>, stop: CancellationToken) {
    let health = &cluster.health;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CLOCK_TICK) => {}
        }
        let gap = last.elapsed();
        if gap >= PAUSE_LIMIT {
            tracing::warn!(
                paused_ms = millis(gap),
                "this node was not running; checking its claims before delivering to its users"
            );
            // Before the tick: see `Health::current`.
            health.away.store(true, Ordering::Release);
            health.resync.store(true, Ordering::Release);
            cluster.resynced.notify_one();
        }
        health.tick_ms.store(clock_ms(), Ordering::Release);
        last = Instant::now();
    }
}

/// A cluster node's side of Redis, as the core's [`Cluster`].
#[derive(Debug)]
pub struct RedisCluster {
    node: NodeId,
    redis: Primary,
    outgoing: mpsc::Sender<Outgoing>,
    reports: mpsc::Sender<Report>,
    health: Arc<Health>,
    /// Wakes the courier when the link came back.
    resynced: Notify,
}

/// A node, before it runs: the cluster the hub joins, and the tasks that
/// carry its traffic.
#[derive(Debug)]
pub struct Node {
    cluster: Arc<RedisCluster>,
    /// Where to find the primary, when Sentinel names it.
    sentinel: Option<SentinelSettings>,
    outgoing: mpsc::Receiver<Outgoing>,
    reports: mpsc::Receiver<Report>,
}

/// Runs a Redis operation under [`REDIS_TIMEOUT`], flattening its errors to
/// text (which never holds the URL or password).
async fn bounded<T>(
    operation: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(REDIS_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {} s", REDIS_TIMEOUT.as_secs())),
    }
}

impl Node {
    /// Sets up node `node` of the cluster on Redis at `backend`; nothing is
    /// sent to Redis until it runs (a node may start before Redis does, and
    /// is not ready until Redis answers).
    pub fn new(backend: Backend, node: &str) -> Result<Self, SetupError> {
        let (redis, sentinel) = match backend {
            Backend::Url(url) => (Primary::fixed(&url)?, None),
            Backend::Sentinel(settings) => (Primary::through_sentinel(&settings), Some(settings)),
        };
        let (outgoing_tx, outgoing) = mpsc::channel(OUTGOING_QUEUE);
        let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let health = Health::default();
        health.tick_ms.store(clock_ms(), Ordering::Release);
        let cluster = Arc::new(RedisCluster {
            node: node.into(),
            redis,
            outgoing: outgoing_tx,
            reports: reports_tx,
            health: Arc::new(health),
            resynced: Notify::new(),
        });
        Ok(Self {
            cluster,
            sentinel,
            outgoing,
            reports,
        })
    }

    /// The cluster, for the hub to join.
    pub fn cluster(&self) -> Arc<RedisCluster> {
        self.cluster.clone()
    }

    /// The Redis primary, for the identity store.
    pub fn redis(&self) -> Primary {
        self.cluster.redis.clone()
    }

    /// Carries the node's traffic until `stop`: the inbox subscription and
    /// the courier. `webtransport` is where browsers reach this node's
    /// WebTransport endpoint (`host:port`), for `GET /v1/nodes`.
    pub async fn run(self, hub: Arc<Hub>, webtransport: String, stop: CancellationToken) {
        let info = NodeInfo {
            node: self.cluster.node.clone(),
            webtransport,
            started_at: unix_ms(SystemTime::now()) / 1000,
            connections: 0,
        };
        let follow = {
            let (cluster, settings, stop) = (self.cluster.clone(), self.sentinel, stop.clone());
            async move {
                if let Some(settings) = settings {
                    sentinel::follow(cluster, settings, stop).await;
                }
            }
        };
        let inbox = inbox::run(self.cluster.clone(), hub.clone(), stop.clone());
        let clock = watch_clock(self.cluster.clone(), stop.clone());
        let courier = courier::run(
            self.cluster.clone(),
            hub,
            info,
            self.outgoing,
            self.reports,
            stop,
        );
        tokio::join!(follow, inbox, courier, clock);
        tracing::debug!("cluster tasks stopped");
    }
}

impl RedisCluster {
    /// Adds the time since the last call to the time unavailable, if the
    /// node is not ready (called by the courier's tick).
    fn count_unavailable(&self) {
        let now = Instant::now();
        let last = self
            .health
            .last_count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(now);
        if let Some(last) = last
            && self.problem().is_some()
        {
            let elapsed = u64::try_from((now - last).as_millis()).unwrap_or(u64::MAX);
            self.health
                .unavailable_ms
                .fetch_add(elapsed, Ordering::Relaxed);
        }
    }

    /// Why envelopes cannot flow between nodes now, if they cannot.
    fn problem(&self) -> Option<String> {
        self.redis
            .problem()
            .or_else(|| self.health.problem().map(str::to_owned))
    }

    fn report(&self, report: Report) {
        if self.reports.try_send(report).is_err() {
            self.health.dropped_reports.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes a header-only message.
    async fn publish(&self, channel: String, header: &Header) -> Result<usize, String> {
        let payload = messages::encode(header, &[]);
        let mut redis = self.redis.clone();
        let result = bounded(
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload.as_ref())
                .query_async::<usize>(&mut redis),
        )
        .await;
        self.health.command_result(&result);
        result
    }

    /// Tells `node` that its connection of `user` with `epoch` or older is
    /// superseded (by the claim `handoff`, when this node asks for the
    /// user's stream); returns whether the node heard it.
    async fn send_fence(
        &self,
        node: &str,
        user: &str,
        epoch: Epoch,
        handoff: Option<Epoch>,
    ) -> bool {
        if node.is_empty() || epoch == 0 {
            return false;
        }
        let header = Header::Fence {
            from: self.node.to_string(),
            user: user.to_owned(),
            epoch,
            handoff,
        };
        match self.publish(keys::inbox(node), &header).await {
            Ok(receivers) => receivers > 0,
            Err(err) => {
                tracing::warn!(%err, user, node, "could not tell a node its connection was replaced");
                false
            }
        }
    }

    /// Every key under `prefix`, by SCAN.
    async fn scan(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut redis = self.redis.clone();
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut redis),
            )
            .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn live_nodes(&self) -> Result<Vec<NodeInfo>, String> {
        let lease_keys = self.scan(keys::LEASES).await?;
        if lease_keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut redis = self.redis.clone();
        let leases: Vec<Option<String>> =
            bounded(redis::cmd("MGET").arg(&lease_keys).query_async(&mut redis)).await?;
        let mut nodes: Vec<NodeInfo> = leases
            .into_iter()
            .flatten()
            .filter_map(|lease| serde_json::from_str(&lease).ok())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }
}

fn unavailable(why: String) -> ClusterError {
    ClusterError::Unavailable(why)
}

impl Cluster for RedisCluster {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn forward(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
        if self.problem().is_some() {
            return Err(outgoing);
        }
        self.outgoing.try_send(outgoing).map_err(|err| match err {
            mpsc::error::TrySendError::Full(outgoing)
            | mpsc::error::TrySendError::Closed(outgoing) => outgoing,
        })
    }

    fn settle(&self, node: &NodeId, id: u64, fate: Fate) {
        self.report(Report::Fate {
            node: node.clone(),
            id,
            fate,
        });
    }

    fn claim<'a>(
        &'a self,
        user: &'a str,
        connection_id: u64,
        transport: Transport,
    ) -> ClusterFuture<'a, ClusterClaim> {
        Box::pin(async move {
            let generation = self.health.generation().ok_or_else(|| {
                unavailable("this node has not read the cluster's shared state yet".into())
            })?;
            let mut redis = self.redis.clone();
            let now = unix_ms(SystemTime::now());
            let result = bounded(
                keys::CLAIM
                    .key(keys::route(user))
                    .key(keys::epoch(user))
                    .key(keys::GENERATION)
                    .arg(self.node.as_ref())
                    .arg(connection_id)
                    .arg(transport.as_str())
                    .arg(now / 1000)
                    .arg(keys::EPOCH_KEEP_MS)
                    .arg(&generation.id)
                    .arg(millis(GENERATION_SETTLE))
                    .arg(now)
                    .arg(keys::epoch_floor(self.redis.config_epoch()))
                    .invoke_async::<(Epoch, String, Epoch)>(&mut redis),
            )
            .await;
            // Refused for the state's generation: Redis answers; the
            // courier looks at the generation at once.
            if let Err(err) = &result
                && (err.contains("GENERATION") || err.contains("SETTLING"))
            {
                self.resynced.notify_one();
                return Err(unavailable(err.clone()));
            }
            self.health.command_result(&result);
            let (epoch, previous_node, previous_epoch) = result.map_err(unavailable)?;
            let elsewhere = !previous_node.is_empty()
                && previous_node != self.node.as_ref()
                && previous_epoch != 0;
            Ok(ClusterClaim {
                epoch,
                previous: elsewhere.then(|| (previous_node.into(), previous_epoch)),
            })
        })
    }

    fn fence<'a>(
        &'a self,
        node: &'a NodeId,
        user: &'a str,
        epoch: Epoch,
        by: Epoch,
    ) -> ClusterFuture<'a, bool> {
        Box::pin(async move { Ok(self.send_fence(node, user, epoch, Some(by)).await) })
    }

    fn hand_off(&self, node: &NodeId, handoff: Handoff) -> Result<(), Handoff> {
        if self.problem().is_some() {
            return Err(handoff);
        }
        let message = messages::handoff(&self.node, &handoff);
        self.reports
            .try_send(Report::Handoff {
                node: node.clone(),
                message,
            })
            .map_err(|_| handoff)
    }

    fn release(&self, user: &str, epoch: Epoch) {
        self.report(Report::Release {
            user: user.into(),
            epoch,
        });
    }

    fn broadcast(&self, command: Broadcast) -> ClusterFuture<'_, ()> {
        Box::pin(async move {
            let header = Header::Broadcast {
                from: self.node.to_string(),
                command,
            };
            self.publish(keys::CONTROL.to_owned(), &header)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn connected(&self) -> ClusterFuture<'_, Vec<ClusterUser>> {
        Box::pin(async move {
            let live: std::collections::HashSet<NodeId> = self
                .live_nodes()
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|info| info.node)
                .collect();
            let route_keys = self.scan(keys::ROUTES).await.map_err(unavailable)?;
            let mut redis = self.redis.clone();
            let mut pipe = redis::pipe();
            for key in &route_keys {
                pipe.cmd("HMGET")
                    .arg(key)
                    .arg("node")
                    .arg("conn")
                    .arg("transport")
                    .arg("since");
            }
            type Row = (Option<String>, Option<u64>, Option<String>, Option<u64>);
            let rows: Vec<Row> = if route_keys.is_empty() {
                Vec::new()
            } else {
                bounded(pipe.query_async(&mut redis))
                    .await
                    .map_err(unavailable)?
            };
            let mut users: Vec<ClusterUser> = route_keys
                .iter()
                .zip(rows)
                .filter_map(|(key, (node, conn, transport, since))| {
                    let node: NodeId = node?.into();
                    let transport = match transport?.parse::<Transport>() {
                        Ok(transport) => transport,
                        Err(err) => {
                            tracing::warn!(%err, %key, "a route names no transport; not listed");
                            return None;
                        }
                    };
                    live.contains(&node).then(|| ClusterUser {
                        username: key.strip_prefix(keys::ROUTES).unwrap_or(key).into(),
                        node,
                        connection_id: conn.unwrap_or_default(),
                        transport,
                        connected_at: since.unwrap_or_default(),
                    })
                })
                .collect();
            users.sort_by(|a, b| a.username.cmp(&b.username));
            Ok(users)
        })
    }

    fn nodes(&self) -> ClusterFuture<'_, Vec<NodeInfo>> {
        Box::pin(async move { self.live_nodes().await.map_err(unavailable) })
    }

    fn current(&self) -> bool {
        self.health.current()
    }

    fn readiness(&self) -> Result<(), String> {
        match self.problem() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    fn change_rooms(&self, change: RoomChange) -> Result<(), RoomChange> {
        if self.problem().is_some() {
            return Err(change);
        }
        self.reports
            .try_send(Report::Rooms(change.clone()))
            .map_err(|_| change)
    }

    fn forward_room(&self, node: &NodeId, room: &str, sender: &str, frame: bytes::Bytes) -> bool {
        if self.problem().is_some() {
            return false;
        }
        let message = rooms::envelope_message(&self.node, room, sender, frame);
        self.reports
            .try_send(Report::RoomEnvelope {
                node: node.clone(),
                message,
            })
            .is_ok()
    }

    fn kick(&self, user: &str) -> ClusterFuture<'_, ()> {
        let header = Header::Kick {
            from: self.node.to_string(),
            user: user.to_owned(),
        };
        Box::pin(async move {
            self.publish(keys::CONTROL.to_owned(), &header)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn primary(&self) -> Option<PrimaryFacts> {
        Some(PrimaryFacts {
            address: self.redis.address(),
            failovers: self.redis.failovers(),
            unavailable: Duration::from_millis(self.health.unavailable_ms.load(Ordering::Relaxed)),
        })
    }
}
