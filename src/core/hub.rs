//! The hub: the gateway's use cases behind methods — admitting
//! connections, registering and authenticating identities, attaching
//! connections to users, the admin actions and the books. The HTTP API and
//! the transports call these and reach no further into the core.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cluster::{Broadcast, Cluster, ClusterError, ClusterUser, Epoch, InFlight, NodeInfo};
use super::envelope::{ErrorDetail, Inbound, Welcome, error_frame, welcome_frame};
use super::ice::{IceConfig, IceServers};
use super::limits::{Limits, ip_key};
use super::outbox::{ConnId, LocalSender, Origin, Outbox, PushError, Queued};
use super::readiness::{NotReady, Phase};
use super::registry::{ConnectedUser, Entry, Grant, Transport, UserClientRegistry};
use super::session::Session;
use super::stats::{AuthMethod, AuthOutcome, RegistrationOutcome, Stats, StatsSnapshot};
use super::store::{IdentityStore, MemoryStore, Registration, StoreError};
use super::token::{AuthMode, TokenError, TokenVerifier, is_jwt};
use super::username::{UsernameError, validate_username};
use super::wire::{CloseReason, ErrorType, HttpError};

/// How long a fence is remembered: longer than any connection takes from
/// its claim to its attach (both set-up timeouts are far shorter).
const FENCE_MEMORY: Duration = Duration::from_secs(120);

/// Why a new connection or registration is refused before any work is done.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The global connection cap is reached.
    #[error("the gateway is at its limit of {0} connections")]
    AtCapacity(usize),
    /// This client IP is over its rate.
    #[error("too many requests from this address; retry in {} ms", .0.as_millis())]
    RateLimited(Duration),
    /// Too many connections are still authenticating.
    #[error("the gateway is at its limit of {0} connections still authenticating")]
    PendingFull(usize),
    /// This client IP has too many connections still authenticating.
    #[error("this address has {0} connections still authenticating, the most it may have")]
    PendingFromAddress(usize),
}

impl Refusal {
    /// Every cause, as metrics label them.
    pub const CAUSES: [&'static str; 5] = [
        "shutting_down",
        "at_capacity",
        "rate_limited",
        "pending_full",
        "pending_from_address",
    ];

    /// This refusal's cause, as metrics label it.
    pub fn cause(&self) -> &'static str {
        match self {
            Refusal::ShuttingDown => "shutting_down",
            Refusal::AtCapacity(_) => "at_capacity",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::PendingFull(_) => "pending_full",
            Refusal::PendingFromAddress(_) => "pending_from_address",
        }
    }

    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            Refusal::RateLimited(_) => HttpError::RateLimited,
            Refusal::ShuttingDown
            | Refusal::AtCapacity(_)
            | Refusal::PendingFull(_)
            | Refusal::PendingFromAddress(_) => HttpError::Unavailable,
        }
    }

    /// How long the client should wait, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited(wait) => Some(*wait),
            _ => None,
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The name breaks the username rules.
    #[error(transparent)]
    InvalidName(#[from] UsernameError),
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway takes only JWTs (`--auth jwt`).
    #[error("this gateway takes only tokens your application issues (JWT); it registers no names")]
    Closed,
}

/// Why a token does not authenticate.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No identity has this token (or tokens of its kind are not taken).
    #[error("no valid token: register first and present its token, or present a JWT")]
    Unknown,
    /// A JWT was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Identities cannot be read right now. The detail (a file path, a
    /// Redis address) is logged, never shown to the client.
    #[error("identities are unavailable right now; try again later")]
    Store(#[from] StoreError),
}

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

impl AuthError {
    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            AuthError::Store(err) => err.http_error(),
            AuthError::Unknown | AuthError::Token(_) => HttpError::Unauthorized,
        }
    }
}

/// Where identities come from: the store of registered ones, an
/// application's JWTs, and which of them are taken.
#[derive(Debug, Clone)]
pub struct Identities {
    /// Registered identities.
    pub store: Arc<dyn IdentityStore>,
    /// Verifies JWTs, when the gateway takes them.
    pub verifier: Option<Arc<dyn TokenVerifier>>,
    /// Which identities are taken.
    pub mode: AuthMode,
}

impl Identities {
    /// Registered identities in memory only, no JWTs.
    pub fn in_memory(limits: &Limits) -> Self {
        Self {
            store: Arc::new(MemoryStore::new(
                limits.max_identities,
                limits.max_identities_per_ip,
            )),
            verifier: None,
            mode: AuthMode::Register,
        }
    }
}

impl RegisterError {
    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            RegisterError::InvalidName(_) => HttpError::Invalid,
            RegisterError::Store(err) => err.http_error(),
            RegisterError::Closed => HttpError::RegistrationClosed,
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
    grant: Grant,
}

#[cfg(test)]
impl Authenticated {
    /// `user`, authenticated now, without a token (unit tests).
    pub(crate) fn for_tests(hub: &Hub, user: &str) -> Self {
        Self {
            user: user.into(),
            expires_at: None,
            grant: hub.registry.grant(),
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
    /// The counters.
    pub counters: StatsSnapshot,
}

/// The shared state behind both transports and the HTTP API.
#[derive(Debug)]
pub struct Hub {
    pub(super) store: Arc<dyn IdentityStore>,
    pub(super) verifier: Option<Arc<dyn TokenVerifier>>,
    mode: AuthMode,
    ice: Arc<dyn IceServers>,
    pub(super) registry: UserClientRegistry,
    pub(super) limits: Limits,
    pub(super) stats: Stats,
    next_conn: AtomicU64,
    admitted: AtomicUsize,
    pending: AtomicUsize,
    pending_by_ip: Mutex<HashMap<IpAddr, usize>>,
    all_gone: Notify,
    connect_rate: DefaultKeyedRateLimiter<IpAddr>,
    register_rate: DefaultKeyedRateLimiter<IpAddr>,
    stopping: CancellationToken,
    phase: Phase,
    /// The other nodes, once this gateway has joined a cluster.
    pub(super) cluster: OnceLock<Arc<dyn Cluster>>,
    /// Envelopes sent to other nodes and not settled yet.
    pub(super) in_flight: InFlight,
}

pub(super) fn quota(rate: std::num::NonZeroU32, burst: std::num::NonZeroU32) -> Quota {
    Quota::per_second(rate).allow_burst(burst)
}

/// The clock of every rate limiter. Made once: making one (governor's
/// `RateLimiter::direct`, `DefaultClock::default()`) asks the CPU whether
/// its TSC is usable with several `CPUID` instructions, and in a virtual
/// machine each of those traps to the hypervisor. Per connection that was
/// about a tenth of the server CPU of a WebTransport set-up (`perf`, issue 17).
pub(super) fn clock() -> &'static DefaultClock {
    static CLOCK: std::sync::LazyLock<DefaultClock> =
        std::sync::LazyLock::new(DefaultClock::default);
    &CLOCK
}

pub(super) fn retry_after(
    not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>,
) -> Duration {
    not_until.wait_time_from(clock().now())
}

impl Hub {
    /// A hub with the given limits, taking identities from `identities`
    /// and handing out the ICE servers of `ice`.
    pub fn new(limits: Limits, identities: Identities, ice: Arc<dyn IceServers>) -> Arc<Self> {
        Arc::new(Self {
            store: identities.store,
            verifier: identities.verifier,
            mode: identities.mode,
            ice,
            registry: UserClientRegistry::default(),
            stats: Stats::default(),
            next_conn: AtomicU64::new(1),
            admitted: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            pending_by_ip: Mutex::default(),
            all_gone: Notify::new(),
            connect_rate: RateLimiter::keyed(quota(
                limits.connect_rate_per_ip,
                limits.connect_burst_per_ip,
            )),
            stopping: CancellationToken::new(),
            phase: Phase::default(),
            cluster: OnceLock::new(),
            in_flight: InFlight::new(limits.delivery_timeout),
            register_rate: RateLimiter::keyed(quota(
                limits.register_rate_per_ip,
                limits.register_burst_per_ip,
            )),
            limits,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Admits a new realtime connection from `peer` that carries its token
    /// (a WebSocket upgrade), or refuses it before the upgrade, so a refusal
    /// costs nothing.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refusal> {
        self.counted((|| {
            if !self.registry.is_accepting() {
                return Err(Refusal::ShuttingDown);
            }
            self.check_connect_rate(peer)?;
            self.try_claim()
        })())
    }

    /// Counts a refused admission by its cause.
    fn counted<T>(&self, admission: Result<T, Refusal>) -> Result<T, Refusal> {
        if let Err(refusal) = &admission {
            self.stats.refusal(refusal.cause());
        }
        admission
    }

    fn check_connect_rate(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.connect_rate
            .check_key(&ip_key(peer))
            .map_err(|not_until| Refusal::RateLimited(retry_after(&not_until)))
    }

    /// Takes one of the `--max-connections` slots for a connection that has
    /// authenticated.
    pub fn claim_slot(self: &Arc<Self>) -> Result<Admission, Refusal> {
        self.counted(self.try_claim())
    }

    fn try_claim(self: &Arc<Self>) -> Result<Admission, Refusal> {
        if !self.registry.is_accepting() {
            return Err(Refusal::ShuttingDown);
        }
        let max = self.limits.max_connections;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::AtCapacity(max))?;
        Ok(Admission { hub: self.clone() })
    }

    /// Admits a connection that has yet to authenticate (a QUIC connection,
    /// before its WebTransport CONNECT), under limits of its own: it takes
    /// none of the slots authenticated connections need.
    pub fn admit_pending(self: &Arc<Self>, peer: IpAddr) -> Result<PendingAdmission, Refusal> {
        self.counted(self.try_admit_pending(peer))
    }

    fn try_admit_pending(self: &Arc<Self>, peer: IpAddr) -> Result<PendingAdmission, Refusal> {
        if !self.registry.is_accepting() {
            return Err(Refusal::ShuttingDown);
        }
        let key = ip_key(peer);
        let max = self.limits.max_pending_connections;
        let per_ip = self.limits.max_pending_per_ip;
        let mut by_ip = self.lock_pending();
        let held = by_ip.get(&key).copied().unwrap_or(0);
        if held >= per_ip {
            return Err(Refusal::PendingFromAddress(per_ip));
        }
        if self.pending.load(Ordering::Acquire) >= max {
            return Err(Refusal::PendingFull(max));
        }
        self.check_connect_rate(peer)?;
        by_ip.insert(key, held + 1);
        self.pending.fetch_add(1, Ordering::AcqRel);
        Ok(PendingAdmission {
            hub: self.clone(),
            key,
        })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every update is a single map operation.
        self.pending_by_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connections admitted and still authenticating.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Whether unauthenticated connections crowd the gateway enough that a
    /// new one must first prove its address (a QUIC Retry): then a flood
    /// of spoofed or abandoned handshakes costs no state at all.
    pub fn under_pressure(&self) -> bool {
        self.pending() >= (self.limits.max_pending_connections / 4).max(1)
    }

    /// Checks the per-IP registration rate.
    pub fn check_register_rate(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.register_rate
            .check_key(&ip_key(peer))
            .map_err(|not_until| {
                self.stats.registration(RegistrationOutcome::Refused);
                Refusal::RateLimited(retry_after(&not_until))
            })
    }

    /// Registers `name` for a client at `peer` after checking it against
    /// the username rules, or hands the name back to its owner presenting
    /// its token.
    pub async fn register(
        &self,
        name: &str,
        presented: Option<&str>,
        peer: IpAddr,
    ) -> Result<Registration, RegisterError> {
        let registration = self.register_name(name, presented, peer).await;
        self.stats.registration(match &registration {
            Ok(Registration::Created { .. }) => RegistrationOutcome::Created,
            Ok(Registration::Reclaimed { .. }) => RegistrationOutcome::Reclaimed,
            Ok(Registration::Taken) => RegistrationOutcome::Taken,
            Err(RegisterError::InvalidName(_)) => RegistrationOutcome::Invalid,
            Err(RegisterError::Store(StoreError::Unavailable(_))) => RegistrationOutcome::Failed,
            Err(_) => RegistrationOutcome::Refused,
        });
        registration
    }

    async fn register_name(
        &self,
        name: &str,
        presented: Option<&str>,
        peer: IpAddr,
    ) -> Result<Registration, RegisterError> {
        if !self.mode.registers() {
            return Err(RegisterError::Closed);
        }
        validate_username(name)?;
        let name = self.mode.registered_name(name);
        validate_username(&name)?;
        Ok(self.store.register(&name, presented, ip_key(peer)).await?)
    }

    /// The name a registration for `requested` is stored under (see
    /// [`AuthMode::registered_name`]).
    pub fn registered_name<'a>(&self, requested: &'a str) -> std::borrow::Cow<'a, str> {
        self.mode.registered_name(requested)
    }

    /// The user `token` belongs to — a registered identity's token or an
    /// application's JWT — with what had been revoked at this moment;
    /// [`Hub::attach`] refuses it if anything was revoked since. A refused
    /// JWT is logged with its reason, never with the token.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, AuthError> {
        let authenticated = self.check_token(token).await;
        let method = if is_jwt(token) {
            AuthMethod::Jwt
        } else {
            AuthMethod::Token
        };
        self.stats
            .authentication(method, auth_outcome(&authenticated));
        if let Err(AuthError::Store(err)) = &authenticated {
            tracing::warn!(%err, "a token could not be checked");
        }
        authenticated
    }

    async fn check_token(&self, token: &str) -> Result<Authenticated, AuthError> {
        // Taken before the lookup: a deletion that the lookup does not see
        // yet is then seen by the attach.
        let grant = self.registry.grant();
        if is_jwt(token) {
            let verifier = self
                .verifier
                .as_ref()
                .filter(|_| self.mode.takes_jwts())
                .ok_or(AuthError::Unknown)?;
            let verified = verifier
                .verify(token)
                .await
                .and_then(|verified| {
                    validate_username(&verified.username)?;
                    self.mode.jwt_may_name(&verified.username)?;
                    Ok(verified)
                })
                .inspect_err(|err| tracing::info!(reason = %err, "JWT refused"))?;
            return Ok(Authenticated {
                user: verified.username.into(),
                expires_at: Some(verified.expires_at),
                grant,
            });
        }
        if !self.mode.registers() {
            return Err(AuthError::Unknown);
        }
        let user = self
            .store
            .authenticate(token)
            .await?
            .filter(|name| self.mode.registered_may_be(name))
            .ok_or(AuthError::Unknown)?;
        Ok(Authenticated {
            user,
            expires_at: None,
            grant,
        })
    }

    /// The ICE servers `user` should use, with TURN credentials minted now.
    pub fn ice_servers(&self, user: &str) -> IceConfig {
        self.ice.for_user(user, SystemTime::now())
    }

    /// Verifies a JWT presented to replace a connection's token; it must
    /// name `user`. Returns its expiry.
    pub(super) async fn refresh(&self, user: &str, token: &str) -> Result<SystemTime, AuthError> {
        let refreshed = self.check_refresh(user, token).await;
        self.stats
            .authentication(AuthMethod::Jwt, auth_outcome(&refreshed));
        refreshed
    }

    async fn check_refresh(&self, user: &str, token: &str) -> Result<SystemTime, AuthError> {
        let verifier = self
            .verifier
            .as_ref()
            .filter(|_| is_jwt(token))
            .ok_or(AuthError::Unknown)?;
        let verified = verifier
            .verify(token)
            .await
            .inspect_err(|err| tracing::info!(reason = %err, "refresh JWT refused"))?;
        if verified.username != user {
            return Err(AuthError::Token(TokenError::OtherUser {
                expected: user.to_owned(),
                named: verified.username,
            }));
        }
        Ok(verified.expires_at)
    }

    /// Claims `authenticated`'s user for a new connection on `transport`,
    /// before the connection is accepted: on a single gateway at once, in a
    /// cluster with an epoch allocated cluster-wide, which fences the user's
    /// previous connection wherever it is. Refused when the cluster's shared
    /// state cannot be reached.
    pub async fn claim(
        self: &Arc<Self>,
        authenticated: Authenticated,
        transport: Transport,
    ) -> Result<Claimed, ClusterError> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let epoch = match self.cluster() {
            Some(cluster) => cluster.claim(&authenticated.user, conn, transport).await?,
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

    /// Attaches an admitted, claimed connection to its user. A previous
    /// connection of the same user is closed as `REPLACED`. The session's
    /// outbox starts with the `WELCOME` envelope, which carries ICE servers
    /// minted for this connection. Refused, with the reason to close the
    /// connection with, when the gateway is shutting down, the
    /// authentication was revoked since (a kick, deleted identities), or a
    /// newer claim on the user exists (`REPLACED`). `started` is when the
    /// client's first request or packet arrived, for the set-up time
    /// histogram.
    pub fn attach(
        self: &Arc<Self>,
        admission: Admission,
        mut claimed: Claimed,
        peer: IpAddr,
        started: Instant,
    ) -> Result<Session, CloseReason> {
        let (conn, epoch, transport) = (claimed.conn, claimed.epoch, claimed.transport);
        let Authenticated {
            user,
            expires_at,
            grant,
        } = claimed.authenticated.clone();
        let outbox = Arc::new(Outbox::new(
            self.limits.queue_envelopes,
            self.limits.queue_bytes,
        ));
        let welcome = welcome_frame(&Welcome {
            username: &user,
            transport: transport.as_str(),
            connection_id: conn,
            max_envelope_bytes: self.limits.max_envelope_bytes,
            ice: &self.ice_servers(&user),
        });
        // A fresh outbox is empty and open, so the push cannot fail.
        let _ = outbox.push(Queued::own(welcome));
        self.registry.insert(
            user.clone(),
            Entry {
                conn,
                epoch,
                transport,
                outbox: outbox.clone(),
                since: SystemTime::now(),
                peer,
            },
            grant,
        )?;
        // From here the session gives the claim up when it ends.
        claimed.attached = true;
        self.store.touch(&user);
        self.stats.attached(transport);
        Ok(Session::new(
            self.clone(),
            LocalSender { user, conn },
            epoch,
            transport,
            outbox,
            admission,
            expires_at,
            started,
        ))
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
        Ok(self.registry.kick_all() + elsewhere)
    }

    /// Forgets every identity and kicks every connection; a connection
    /// whose token was checked before and that attaches after is refused.
    /// Returns `(identities, connections)`.
    pub async fn delete_identities(&self) -> Result<(usize, usize), AdminError> {
        // The store first: see `Hub::authenticate`.
        let identities = self.store.clear().await?;
        let elsewhere = match self.cluster() {
            Some(cluster) => {
                let others = self.elsewhere(cluster.connected().await?);
                cluster.broadcast(Broadcast::RevokeAll).await?;
                others.len()
            }
            None => 0,
        };
        Ok((identities, self.registry.revoke_all() + elsewhere))
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
            registered: self.store.names().await?,
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
            counters: self.stats.snapshot(),
        }
    }

    /// Registered identities.
    pub fn identities(&self) -> usize {
        self.store.count()
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
        loop {
            let notified = self.all_gone.notified();
            if self.admitted.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Connections admitted and not yet ended (attached or in handshake).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Periodic housekeeping: expires unseen identities, writes batched
    /// last-seen times, and forgets idle per-IP rate state. Returns the
    /// number of identities expired.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.registry.prune_fences(FENCE_MEMORY);
        let in_use = |name: &str| self.registry.contains(name);
        let expired = self.store.expire(self.limits.identity_ttl, &in_use).await?;
        self.store.flush().await?;
        self.connect_rate.retain_recent();
        self.connect_rate.shrink_to_fit();
        self.register_rate.retain_recent();
        self.register_rate.shrink_to_fit();
        Ok(expired.len())
    }

    /// Writes what the store batches; the last thing a stopping gateway does.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// Answers envelopes that were accepted for `target` but never written.
    pub(super) fn report_undelivered(
        &self,
        items: impl IntoIterator<Item = Queued>,
        target: &str,
        why: &str,
    ) {
        for item in items {
            let origin = match item.origin {
                None => {
                    self.stats.replies_dropped.inc();
                    continue;
                }
                Some(Origin::Remote { node, id }) => {
                    self.report_remote_undelivered(&node, id, why);
                    continue;
                }
                Some(Origin::Local(origin)) => origin,
            };
            let kind = serde_json::from_slice::<Inbound<'_>>(&item.frame)
                .ok()
                .map(|inbound| inbound.kind.into_owned());
            let Some(sender) = self.registry.outbox_of(&origin.user, origin.conn) else {
                self.stats.undelivered_unreported.inc();
                continue;
            };
            let frame = error_frame(
                ErrorType::Undelivered,
                &ErrorDetail {
                    message: format!("the envelope for \"{target}\" was not delivered: {why}"),
                    target: Some(target),
                    kind: kind.as_deref(),
                    retry_after_ms: None,
                },
            );
            match sender.push_reply(Queued::own(frame)) {
                Ok(()) => {
                    self.stats.undelivered_reported.inc();
                    self.stats.error_sent(ErrorType::Undelivered);
                }
                Err(PushError::Closing(_)) => self.stats.undelivered_unreported.inc(),
                Err(PushError::Full(_)) => {
                    self.stats.undelivered_unreported.inc();
                    sender.close(CloseReason::SlowConsumer);
                    self.registry.remove_if(&origin.user, origin.conn);
                }
            }
        }
    }
}

fn auth_outcome<T>(result: &Result<T, AuthError>) -> AuthOutcome {
    match result {
        Ok(_) => AuthOutcome::Accepted,
        Err(AuthError::Store(_)) => AuthOutcome::Failed,
        Err(_) => AuthOutcome::Refused,
    }
}

/// A slot under the global connection cap; released on drop.
#[derive(Debug)]
pub struct Admission {
    hub: Arc<Hub>,
}

/// A slot under the caps of connections still authenticating; released
/// on drop.
#[derive(Debug)]
pub struct PendingAdmission {
    hub: Arc<Hub>,
    key: IpAddr,
}

impl Drop for PendingAdmission {
    fn drop(&mut self) {
        let mut by_ip = self.hub.lock_pending();
        if let Some(held) = by_ip.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                by_ip.remove(&self.key);
            }
        }
        self.hub.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.hub.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hub.all_gone.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::{LOCAL, connect, hub_with};
    use std::net::Ipv4Addr;
    use std::num::NonZeroU32;

    #[test]
    fn admission_enforces_the_connection_cap_and_releases_on_drop() {
        let hub = hub_with(Limits {
            max_connections: 1,
            ..Limits::default()
        });
        let first = hub.admit(LOCAL).unwrap();
        assert_eq!(hub.admit(LOCAL).unwrap_err(), Refusal::AtCapacity(1));
        drop(first);
        assert!(hub.admit(LOCAL).is_ok());
    }

    #[test]
    fn per_ip_connection_rate_is_enforced() {
        let hub = hub_with(Limits {
            connect_rate_per_ip: NonZeroU32::new(1).unwrap(),
            connect_burst_per_ip: NonZeroU32::new(2).unwrap(),
            ..Limits::default()
        });
        let _a = hub.admit(LOCAL).unwrap();
        let _b = hub.admit(LOCAL).unwrap();
        assert!(matches!(hub.admit(LOCAL), Err(Refusal::RateLimited(_))));
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert!(hub.admit(other).is_ok(), "limits are per address");
    }

    #[test]
    fn shutdown_closes_everyone_and_refuses_newcomers() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        assert_eq!(hub.shutdown(), 1);
        assert_eq!(alice.outbox().closing(), Some(CloseReason::Shutdown));
        assert_eq!(hub.admit(LOCAL).unwrap_err(), Refusal::ShuttingDown);
    }

    #[test]
    fn pending_connections_have_caps_of_their_own() {
        let hub = hub_with(Limits {
            max_connections: 1,
            max_pending_connections: 3,
            max_pending_per_ip: 2,
            ..Limits::default()
        });
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let a = hub.admit_pending(LOCAL).unwrap();
        let _b = hub.admit_pending(LOCAL).unwrap();
        assert_eq!(
            hub.admit_pending(LOCAL).unwrap_err(),
            Refusal::PendingFromAddress(2)
        );
        let _c = hub.admit_pending(other).unwrap();
        let third = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(
            hub.admit_pending(third).unwrap_err(),
            Refusal::PendingFull(3)
        );
        let _slot = hub.admit(LOCAL).unwrap();
        assert_eq!(hub.pending(), 3, "authenticated slots are apart");
        drop(a);
        assert!(hub.admit_pending(LOCAL).is_ok());
    }

    #[test]
    fn a_token_checked_before_a_deletion_cannot_attach_after_it() {
        let hub = hub_with(Limits::default());
        let token = match futures::executor::block_on(hub.register("alice", None, LOCAL)).unwrap() {
            Registration::Created { token, .. } => token,
            other => panic!("{other:?}"),
        };
        let authenticated = futures::executor::block_on(hub.authenticate(&token)).unwrap();
        futures::executor::block_on(hub.delete_identities()).unwrap();
        let admission = hub.admit(LOCAL).unwrap();
        let claimed =
            futures::executor::block_on(hub.claim(authenticated, Transport::WebTransport)).unwrap();
        let refused = hub
            .attach(admission, claimed, LOCAL, Instant::now())
            .unwrap_err();
        assert_eq!(refused, CloseReason::Unauthenticated);
        assert_eq!(
            futures::executor::block_on(hub.authenticate(&token)).unwrap_err(),
            AuthError::Unknown
        );
        assert!(!hub.registry.contains("alice"));
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
