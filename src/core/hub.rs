//! The hub: the core's services put together behind one set of methods —
//! admission ([`super::admission`]), identities ([`super::identity`]),
//! claims on users, the admin actions, lifecycle and the books. The HTTP
//! API and the transports call these and reach no further into the core;
//! a claimed connection attaches through [`super::session::Session::attach`].

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, Admissions, PendingAdmission, Refusal};
use super::clock::Clock;
use super::cluster::{Broadcast, Cluster, ClusterError, ClusterUser, InFlight, NodeInfo};
use super::envelope::{ErrorDetail, Inbound, error_frame};
use super::ice::{IceConfig, IceServers};
use super::identity::{AuthError, Identities, IdentityService, RegisterError};
use super::ids::Epoch;
use super::limits::Limits;
use super::outbox::{ConnId, Origin, Queued};
use super::readiness::{NotReady, Phase};
use super::registry::{ConnectedUser, Delivery, Departed, Grant, Kind, UserClientRegistry};
use super::resume::{Gone, Moved};
use super::rooms::{LeaveReason, RoomClaim, Rooms};
use super::stats::{Stats, StatsSnapshot};
use super::store::{Registration, StoreError};
use super::transport::Transport;
use super::wire::{ErrorType, HttpError};

/// How long a fence is remembered: longer than any connection takes from
/// its claim to its attach (both set-up timeouts are far shorter).
const FENCE_MEMORY: Duration = Duration::from_secs(120);

/// How long a connection claiming a user whose previous claim is on
/// another node waits for that node to hand the user's stream over before
/// its `WELCOME`: a live node answers within a round trip through Redis
/// (milliseconds); one that has not answered by then is taken as dead, and
/// the connection starts a new stream (`resumed: false`, counted). The
/// default of `--handoff-wait`.
pub const DEFAULT_HANDOFF_WAIT: Duration = Duration::from_secs(1);

/// Why an admin action failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// Identities could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The other nodes could not be reached.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl AdminError {
    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            AdminError::Store(err) => err.http_error(),
            AdminError::Cluster(_) => HttpError::Unavailable,
        }
    }
}

/// A token that was valid, and what had been revoked when it was checked
/// (see [`Grant`]).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user the token belongs to.
    pub user: Arc<str>,
    /// When the token stops being valid (a JWT's `exp`); gateway tokens
    /// do not expire while their identity lives.
    pub expires_at: Option<SystemTime>,
    /// The rooms a JWT's `rooms` claim allows (`None`: no claim).
    pub rooms: Option<RoomClaim>,
    grant: Grant,
}

impl Authenticated {
    /// What had been revoked when the token was checked.
    pub(super) fn grant(&self) -> Grant {
        self.grant
    }
}

#[cfg(test)]
impl Authenticated {
    /// `user`, authenticated now, without a token (unit tests).
    pub(crate) fn for_tests(hub: &Hub, user: &str) -> Self {
        Self {
            user: user.into(),
            expires_at: None,
            rooms: None,
            grant: hub.registry().grant(),
        }
    }
}

/// An authenticated connection's claim on its user, made before it
/// attaches (see [`Hub::claim`]); given up on drop unless it attached.
#[derive(Debug)]
pub struct Claimed {
    hub: Arc<Hub>,
    authenticated: Authenticated,
    conn: ConnId,
    epoch: Epoch,
    transport: Transport,
    attached: bool,
}

impl Claimed {
    /// The claimed user.
    pub fn user(&self) -> &Arc<str> {
        &self.authenticated.user
    }

    /// The authentication the claim was made with.
    pub(super) fn authenticated(&self) -> &Authenticated {
        &self.authenticated
    }

    /// The connection's id, its epoch and its transport.
    pub(super) fn connection(&self) -> (ConnId, Epoch, Transport) {
        (self.conn, self.epoch, self.transport)
    }

    /// The connection attached: from now on its session gives the claim up.
    pub(super) fn attached(mut self) {
        self.attached = true;
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if !self.attached {
            self.hub.release(&self.authenticated.user, self.epoch);
        }
    }
}

/// Registered names and live connections, as the admin listing shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Users {
    /// Every registered name, sorted.
    pub registered: Vec<Arc<str>>,
    /// Every live connection, sorted by user: this node's, and in a
    /// cluster every other node's.
    pub connected: Vec<ConnectedUser>,
}

/// The books: live counts and every counter since start.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Live (attached) connections.
    pub connections: usize,
    /// Connections holding a `--max-connections` slot.
    pub admitted: usize,
    /// QUIC connections still authenticating.
    pub pending: usize,
    /// Registered identities.
    pub identities: usize,
    /// Users away now (reconnecting, their envelopes held).
    pub away: usize,
    /// Bytes the users' streams keep for resumes (`--resume-memory`).
    pub resume_bytes: usize,
    /// The counters.
    pub counters: StatsSnapshot,
}

/// The shared state behind both transports and the HTTP API: the services
/// of the core put together.
#[derive(Debug)]
pub struct Hub {
    admissions: Admissions,
    identities: IdentityService,
    ice: Arc<dyn IceServers>,
    registry: UserClientRegistry,
    limits: Limits,
    stats: Arc<Stats>,
    next_conn: AtomicU64,
    stopping: CancellationToken,
    phase: Phase,
    /// The other nodes, once this gateway has joined a cluster.
    cluster: OnceLock<Arc<dyn Cluster>>,
    /// Envelopes sent to other nodes and not settled yet.
    in_flight: InFlight,
    clock: Clock,
    /// Every room and its members.
    rooms: Rooms,
    /// Users claimed here whose stream another node is handing over, by
    /// the claim's epoch.
    handoffs: Handoffs,
}

/// Claims waiting for another node to hand their user's stream over.
pub(super) type Handoffs = std::sync::Mutex<
    std::collections::HashMap<Arc<str>, (Epoch, tokio::sync::oneshot::Sender<Option<Moved>>)>,
>;

impl Hub {
    /// A hub with the given limits, taking identities from `identities`
    /// and handing out the ICE servers of `ice`, on the system's clock.
    pub fn new(limits: Limits, identities: Identities, ice: Arc<dyn IceServers>) -> Arc<Self> {
        Self::with_clock(limits, identities, ice, Clock::system())
    }

    /// A hub as [`Hub::new`] makes it, reading time from `clock` (the
    /// store in `identities` should read the same one).
    pub fn with_clock(
        limits: Limits,
        identities: Identities,
        ice: Arc<dyn IceServers>,
        clock: Clock,
    ) -> Arc<Self> {
        let stats = Arc::new(Stats::default());
        Arc::new(Self {
            admissions: Admissions::new(&limits, &clock),
            identities: IdentityService::new(identities, &limits, stats.clone(), &clock),
            ice,
            registry: UserClientRegistry::new(limits.resume(), stats.clone()),
            stats,
            next_conn: AtomicU64::new(1),
            stopping: CancellationToken::new(),
            phase: Phase::default(),
            cluster: OnceLock::new(),
            in_flight: InFlight::new(limits.delivery_timeout, clock.clone()),
            rooms: Rooms::new(limits.max_room_members, limits.max_rooms_per_user),
            handoffs: Handoffs::default(),
            limits,
            clock,
        })
    }

    /// The clock the core reads time from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The live connections by user.
    pub(super) fn registry(&self) -> &UserClientRegistry {
        &self.registry
    }

    /// Every room and its members.
    pub(super) fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// Envelopes sent to other nodes and not settled yet.
    pub(super) fn in_flight_envelopes(&self) -> &InFlight {
        &self.in_flight
    }

    /// Claims waiting for another node to hand their user's stream over.
    pub(super) fn handoffs(&self) -> &Handoffs {
        &self.handoffs
    }

    /// Joins a cluster: from now on, envelopes for users not connected
    /// here go to `cluster`. Once only; a second call is ignored.
    pub fn join(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Admits a new realtime connection from `peer` that carries its token
    /// (a WebSocket upgrade), or refuses it before the upgrade, so a refusal
    /// costs nothing.
    pub fn admit(&self, peer: IpAddr) -> Result<Admission, Refusal> {
        self.counted(self.accepting().and_then(|()| self.admissions.admit(peer)))
    }

    /// Takes one of the `--max-connections` slots for a connection that has
    /// authenticated.
    pub fn claim_slot(&self) -> Result<Admission, Refusal> {
        self.counted(self.accepting().and_then(|()| self.admissions.claim_slot()))
    }

    /// Admits a connection that has yet to authenticate (a QUIC connection,
    /// before its WebTransport CONNECT), under limits of its own.
    pub fn admit_pending(&self, peer: IpAddr) -> Result<PendingAdmission, Refusal> {
        self.counted(
            self.accepting()
                .and_then(|()| self.admissions.admit_pending(peer)),
        )
    }

    fn accepting(&self) -> Result<(), Refusal> {
        if self.registry.is_accepting() {
            Ok(())
        } else {
            Err(Refusal::ShuttingDown)
        }
    }

    /// Counts a refused admission by its cause.
    fn counted<T>(&self, admission: Result<T, Refusal>) -> Result<T, Refusal> {
        if let Err(refusal) = &admission {
            self.stats.refusal(refusal.cause());
        }
        admission
    }

    /// Connections admitted and still authenticating.
    pub fn pending(&self) -> usize {
        self.admissions.pending()
    }

    /// Whether unauthenticated connections crowd the gateway enough that a
    /// new one must first prove its address (a QUIC Retry): then a flood
    /// of spoofed or abandoned handshakes costs no state at all.
    pub fn under_pressure(&self) -> bool {
        self.admissions.under_pressure()
    }

    /// Checks the per-IP registration rate.
    pub fn check_register_rate(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.identities.check_register_rate(peer)
    }

    /// Registers `name` for a client at `peer` (see
    /// [`IdentityService::register`]).
    pub async fn register(
        &self,
        name: &str,
        presented: Option<&str>,
        peer: IpAddr,
    ) -> Result<Registration, RegisterError> {
        self.identities.register(name, presented, peer).await
    }

    /// The name a registration for `requested` is stored under.
    pub fn registered_name<'a>(&self, requested: &'a str) -> Cow<'a, str> {
        self.identities.registered_name(requested)
    }

    /// The user `token` belongs to, with what had been revoked at this
    /// moment; the attach refuses it if anything was revoked since.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, AuthError> {
        // Taken before the lookup: a deletion that the lookup does not see
        // yet is then seen by the attach.
        let grant = self.registry.grant();
        let (user, expires_at, rooms) = self.identities.authenticate(token).await?;
        Ok(Authenticated {
            user,
            expires_at,
            rooms,
            grant,
        })
    }

    /// The ICE servers `user` should use, with TURN credentials minted now.
    pub fn ice_servers(&self, user: &str) -> IceConfig {
        self.ice.for_user(user, self.clock.wall())
    }

    /// Verifies a token presented to replace a connection's token; it must
    /// name `user`. Returns its expiry.
    pub(super) async fn refresh(&self, user: &str, token: &str) -> Result<SystemTime, AuthError> {
        self.identities.refresh(user, token).await
    }

    /// Marks `user` as seen now.
    pub(super) fn touch(&self, user: &str) {
        self.identities.touch(user);
    }

    /// Claims `authenticated`'s user for a new connection on `transport`,
    /// before the connection is accepted: on a single gateway at once, in a
    /// cluster with an epoch allocated cluster-wide, which fences the user's
    /// previous connection wherever it is. When that is another node, the
    /// user's stream there is taken over first (waiting at most
    /// `--handoff-wait`), so the connection resumes it. Refused when the
    /// cluster's shared state cannot be reached.
    pub async fn claim(
        self: &Arc<Self>,
        authenticated: Authenticated,
        transport: Transport,
    ) -> Result<Claimed, ClusterError> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let epoch = match self.cluster() {
            Some(cluster) => {
                let claim = cluster.claim(&authenticated.user, conn, transport).await?;
                if let Some((node, previous)) = &claim.previous {
                    self.take_over(cluster, &authenticated.user, node, *previous, claim.epoch)
                        .await;
                }
                claim.epoch
            }
            None => conn,
        };
        Ok(Claimed {
            hub: self.clone(),
            authenticated,
            conn,
            epoch,
            transport,
            attached: false,
        })
    }

    /// Gives up the claim `epoch` on `user` (its connection ended or never
    /// attached).
    pub(super) fn release(&self, user: &str, epoch: Epoch) {
        if let Some(cluster) = self.cluster() {
            cluster.release(user, epoch);
        }
    }

    /// Closes every live connection as `KICKED` (admin reset), and those
    /// authenticated but not attached yet as they attach; returns how many
    /// were live.
    pub async fn kick_all(&self) -> Result<usize, ClusterError> {
        let elsewhere = match self.cluster() {
            Some(cluster) => {
                let others = self.elsewhere(cluster.connected().await?);
                cluster.broadcast(Broadcast::KickAll).await?;
                others.len()
            }
            None => 0,
        };
        Ok(self.kick_here() + elsewhere)
    }

    /// Forgets every identity and kicks every connection; a connection
    /// whose token was checked before and that attaches after is refused.
    /// Returns `(identities, connections)`.
    pub async fn delete_identities(&self) -> Result<(usize, usize), AdminError> {
        // The store first: see `Hub::authenticate`.
        let identities = self.identities.clear().await?;
        let elsewhere = match self.cluster() {
            Some(cluster) => {
                let others = self.elsewhere(cluster.connected().await?);
                cluster.broadcast(Broadcast::RevokeAll).await?;
                others.len()
            }
            None => 0,
        };
        Ok((identities, self.revoke_here() + elsewhere))
    }

    /// Registered names and live connections.
    pub async fn users(&self) -> Result<Users, AdminError> {
        let mut connected = self.registry.snapshot();
        if let Some(cluster) = self.cluster() {
            for user in self.elsewhere(cluster.connected().await?) {
                connected.push(ConnectedUser {
                    username: user.username,
                    connection_id: user.connection_id,
                    transport: user.transport,
                    connected_at: user.connected_at,
                    queued: None,
                    node: Some(user.node),
                });
            }
            let here = cluster.node();
            for user in &mut connected {
                user.node.get_or_insert_with(|| here.clone());
            }
            connected.sort_by(|a, b| a.username.cmp(&b.username));
        }
        Ok(Users {
            registered: self.identities.names().await?,
            connected,
        })
    }

    /// The cluster's live nodes; `None` when this gateway is no node.
    pub async fn nodes(&self) -> Result<Option<Vec<NodeInfo>>, ClusterError> {
        match self.cluster() {
            Some(cluster) => Ok(Some(cluster.nodes().await?)),
            None => Ok(None),
        }
    }

    /// The connections of `everyone` that are on other nodes.
    fn elsewhere(&self, everyone: Vec<ClusterUser>) -> Vec<ClusterUser> {
        let Some(here) = self.cluster().map(|cluster| cluster.node().clone()) else {
            return everyone;
        };
        everyone
            .into_iter()
            .filter(|user| user.node != here)
            .collect()
    }

    /// The books.
    pub async fn report(&self) -> Report {
        Report {
            connections: self.registry.len(),
            admitted: self.admitted(),
            pending: self.pending(),
            identities: self.identities(),
            away: self.away(),
            resume_bytes: self.resume_bytes(),
            counters: self.stats.snapshot(),
        }
    }

    /// Registered identities.
    pub fn identities(&self) -> usize {
        self.identities.count()
    }

    /// Whether `user` has a live connection.
    pub fn is_connected(&self, user: &str) -> bool {
        self.registry.contains(user)
    }

    /// Live (attached) connections.
    pub fn connections(&self) -> usize {
        self.registry.len()
    }

    /// The listeners are serving: traffic is welcome.
    pub fn serving(&self) {
        self.phase.serving();
    }

    /// A shutdown has begun: `/readyz` says so at once, while connections
    /// still work until [`Hub::shutdown`] closes them.
    pub fn draining(&self) {
        self.phase.draining();
    }

    /// Whether the gateway should be sent traffic now.
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.phase.readiness()?;
        match self.cluster() {
            Some(cluster) => cluster.readiness().map_err(NotReady::ClusterUnreachable),
            None => Ok(()),
        }
    }

    /// The cluster this gateway is a node of, if any.
    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.get()
    }

    /// Starts shutdown: refuses newcomers and closes everyone as `SHUTDOWN`.
    pub fn shutdown(&self) -> usize {
        self.phase.draining();
        self.stopping.cancel();
        self.registry.stop()
    }

    /// Completes once shutdown has started; connections that are not
    /// attached yet (handshakes, sessions without a stream) wait on this.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await;
    }

    /// Waits until every admitted connection has ended.
    pub async fn wait_idle(&self) {
        self.admissions.wait_idle().await;
    }

    /// Connections admitted and not yet ended (attached or in handshake).
    pub fn admitted(&self) -> usize {
        self.admissions.admitted()
    }

    /// Periodic housekeeping: expires unseen identities, writes batched
    /// last-seen times, and forgets idle per-IP rate state. Returns the
    /// number of identities expired.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.registry.prune_fences(FENCE_MEMORY, self.clock.now());
        let in_use = |name: &str| self.registry.contains(name);
        let expired = self.identities.expire(&in_use).await?;
        self.admissions.forget_quiet();
        Ok(expired)
    }

    /// Writes what the store batches; the last thing a stopping gateway does.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.identities.flush().await
    }

    /// Closes this node's connections as `KICKED`; every user here is
    /// gone. Returns how many connections were live.
    pub(super) fn kick_here(&self) -> usize {
        let (live, departed) = self.registry.kick_all();
        departed.into_iter().for_each(|d| self.departed(d));
        live
    }

    /// Closes this node's connections after every identity was deleted;
    /// every user here is gone. Returns how many connections were live.
    pub(super) fn revoke_here(&self) -> usize {
        let (live, departed) = self.registry.revoke_all();
        departed.into_iter().for_each(|d| self.departed(d));
        live
    }

    /// Queues one of the gateway's own envelopes (an error, a notice) for
    /// `user`, numbered in its stream like everything else it is written;
    /// false (and counted) when it could not be.
    pub(super) fn send_own(&self, user: &str, frame: bytes::Bytes) -> bool {
        let sent = self.deliver_own(user, frame);
        if !sent {
            self.stats.replies_dropped.inc();
        }
        sent
    }

    /// [`Hub::send_own`] without counting a failure (the caller counts it
    /// in its own books).
    pub(super) fn deliver_own(&self, user: &str, frame: bytes::Bytes) -> bool {
        matches!(
            self.registry.deliver(user, Queued::own(frame), Kind::Own),
            Delivery::Queued | Delivery::Held
        )
    }

    /// Ends the streams of users away for longer than `--resume-window`
    /// by `now`: what was held for them is answered `EXPIRED`. Returns
    /// how many users were gone.
    pub fn expire_away(&self, now: std::time::Instant) -> usize {
        let departed = self.registry.expire_away(now);
        let count = departed.len();
        departed.into_iter().for_each(|d| self.departed(d));
        count
    }

    /// Users away now (reconnecting, their envelopes held).
    pub fn away(&self) -> usize {
        self.registry.away()
    }

    /// Bytes the users' streams keep for resumes.
    pub fn resume_bytes(&self) -> usize {
        self.registry.kept_bytes()
    }

    /// Envelopes `user`'s stream keeps for a resume.
    pub fn kept(&self, user: &str) -> usize {
        self.registry.kept(user)
    }

    /// The one place a user is finally gone (a clean close, its window
    /// expired, a kick, its identity deleted, a close for good): nothing is
    /// held for it any more, and every envelope accepted for it and never
    /// written is answered to its sender — `EXPIRED` when the window ran
    /// out, else `UNDELIVERED`. Whatever else must forget a departed user
    /// hooks in here.
    pub(super) fn departed(&self, departed: Departed) {
        let Departed {
            user,
            why,
            unwritten,
            claim,
        } = departed;
        if let Some(epoch) = claim {
            self.release(&user, epoch);
        }
        tracing::debug!(%user, ?why, held = unwritten.len(), "user gone");
        self.stats.gone.inc();
        self.user_gone(&user, LeaveReason::from(why));
        match why {
            Gone::Expired => self.answer_unwritten(
                unwritten,
                &user,
                ErrorType::Expired,
                "the target did not come back within the resume window",
            ),
            _ => self.report_undelivered(unwritten, &user, "the target left"),
        }
    }

    /// Answers envelopes that were accepted for `target` but never written.
    pub(super) fn report_undelivered(
        &self,
        items: impl IntoIterator<Item = Queued>,
        target: &str,
        why: &str,
    ) {
        self.answer_unwritten(items, target, ErrorType::Undelivered, why);
    }

    /// Answers envelopes accepted for `target` and never written with
    /// `error` (`UNDELIVERED` or `EXPIRED`): a sender here in its own
    /// stream, a sender on another node through its node.
    fn answer_unwritten(
        &self,
        items: impl IntoIterator<Item = Queued>,
        target: &str,
        error: ErrorType,
        why: &str,
    ) {
        let expired = error == ErrorType::Expired;
        for item in items {
            let origin = match item.origin {
                // A room envelope another node accepted: its sender is
                // there, and not told.
                None if item.accepted_at.is_some() => {
                    if expired {
                        self.stats.expired_unreported.inc();
                    } else {
                        self.stats.undelivered_unreported.inc();
                    }
                    continue;
                }
                None => {
                    self.stats.replies_dropped.inc();
                    continue;
                }
                Some(Origin::Remote { node, id }) => {
                    self.report_remote_unwritten(&node, id, expired, why);
                    continue;
                }
                Some(Origin::Local(origin)) => origin,
            };
            let kind = serde_json::from_slice::<Inbound<'_>>(&item.frame)
                .ok()
                .map(|inbound| inbound.kind.into_owned());
            let message = if expired {
                format!("the envelope for \"{target}\" expired: {why}")
            } else {
                format!("the envelope for \"{target}\" was not delivered: {why}")
            };
            let frame = error_frame(
                error,
                &ErrorDetail {
                    message,
                    target: Some(target),
                    kind: kind.as_deref(),
                    retry_after_ms: None,
                },
            );
            let reported = self.deliver_own(&origin.user, frame);
            match (reported, expired) {
                (true, true) => self.stats.expired.inc(),
                (true, false) => self.stats.undelivered_reported.inc(),
                (false, true) => self.stats.expired_unreported.inc(),
                (false, false) => self.stats.undelivered_unreported.inc(),
            }
            if reported {
                self.stats.error_sent(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::{LOCAL, connect, hub_with};
    use crate::core::wire::CloseReason;

    #[test]
    fn admission_enforces_the_connection_cap_and_releases_on_drop() {
        let hub = hub_with(Limits {
            max_connections: 1,
            ..Limits::default()
        });
        let first = hub.admit(LOCAL).unwrap();
        assert_eq!(hub.admit(LOCAL).unwrap_err(), Refusal::AtCapacity(1));
        assert_eq!(hub.stats().refused("at_capacity"), 1);
        drop(first);
        assert!(hub.admit(LOCAL).is_ok());
    }

    #[test]
    fn shutdown_closes_everyone_and_refuses_newcomers() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        assert_eq!(hub.shutdown(), 1);
        assert_eq!(alice.outbox().closing(), Some(CloseReason::Shutdown));
        assert_eq!(hub.admit(LOCAL).unwrap_err(), Refusal::ShuttingDown);
        assert_eq!(hub.admit_pending(LOCAL).unwrap_err(), Refusal::ShuttingDown);
    }

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_connection_ends() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move { hub.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(alice);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
