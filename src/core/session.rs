//! One attached connection as the core sees it: frames in, envelopes
//! routed, errors answered; and the writer protocol a transport follows
//! to drain the connection's outbox.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::admission::{Admission, quota};
use super::clock::DirectRateLimiter;
use super::cluster::Fate;
use super::envelope::{
    EnvelopeError, ErrorDetail, Inbound, error_frame, forward_frame, parse_inbound,
    parse_inbound_text, server_frame,
};
use super::envelope::{Welcome, welcome_frame};
use super::hub::{Claimed, Hub};
use super::ids::Epoch;
use super::outbox::{ConnId, LocalSender, Origin, Outbox, Queued};
use super::registry::{Delivery, Ending, Entry, Kind};
use super::resume::Gone;
use super::rooms::RoomClaim;
use super::store::unix_ms;
use super::token::TOKEN_LEEWAY;
use super::transport::Transport;
use super::wire::{
    ACK_TYPE, CloseReason, ErrorType, JOIN_TYPE, LEAVE_TYPE, REFRESH_TOKEN_TYPE,
    TOKEN_EXPIRING_TYPE, TOKEN_REFRESHED_TYPE,
};

/// How long before its token expires a connection is warned: a minute, or
/// half the token's life when that is shorter.
const TOKEN_WARNING: Duration = Duration::from_secs(60);

/// The JWT a connection was opened with, or last refreshed with; shared
/// with the task that checks a refresh.
#[derive(Debug)]
struct TokenLife {
    /// `exp`, in Unix milliseconds.
    expires_ms: AtomicU64,
    /// When that expiry was set, in Unix milliseconds.
    set_ms: AtomicU64,
    /// The expiry the connection was last warned about.
    warned_ms: AtomicU64,
    /// Told when a refresh set a new expiry: the connection's timer is
    /// armed for the old one, which may be later.
    renewed: tokio::sync::Notify,
}

impl TokenLife {
    fn new(expires_at: SystemTime, now_ms: u64) -> Self {
        let life = Self {
            expires_ms: AtomicU64::new(0),
            set_ms: AtomicU64::new(0),
            warned_ms: AtomicU64::new(0),
            renewed: tokio::sync::Notify::new(),
        };
        life.renew(expires_at, now_ms);
        life
    }

    /// Sets the expiry to `expires_at`, at `now_ms` (Unix milliseconds).
    fn renew(&self, expires_at: SystemTime, now_ms: u64) {
        self.set_ms.store(now_ms, Ordering::Relaxed);
        self.expires_ms
            .store(unix_ms(expires_at), Ordering::Relaxed);
    }
}

#[derive(serde::Serialize)]
struct TokenExpiry {
    /// `exp`, in Unix seconds.
    expires_at: u64,
    /// Milliseconds left.
    expires_in_ms: u64,
}

#[derive(serde::Deserialize)]
struct Refresh {
    token: String,
}

/// The payload of an `ACK`.
#[derive(serde::Deserialize)]
struct Ack {
    seq: u64,
}

/// Why a transport could not write a batch.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The connection took nothing for the whole write timeout.
    #[error("the connection stopped reading for {0:?}")]
    Stalled(Duration),
    /// The socket or stream failed.
    #[error("the connection failed: {0}")]
    Failed(String),
}

/// Runs a transport's write under the write timeout.
pub async fn write_within<E: std::fmt::Display>(
    write_timeout: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), WriteError> {
    match tokio::time::timeout(write_timeout, write).await {
        Ok(result) => result.map_err(|err| WriteError::Failed(err.to_string())),
        Err(_) => Err(WriteError::Stalled(write_timeout)),
    }
}

/// What a transport's writer does after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWrite {
    /// Wait for the next batch.
    Continue,
    /// Send the final `CLOSE` envelope and close with this reason.
    Close(CloseReason),
    /// The connection is gone; nothing more can be written.
    Gone,
}

/// One live connection as the core sees it. Owned by the transport task;
/// dropping it detaches the connection and answers anything left unwritten.
#[derive(Debug)]
pub struct Session {
    hub: Arc<Hub>,
    origin: LocalSender,
    /// The epoch of this connection's claim on its user.
    epoch: Epoch,
    transport: Transport,
    outbox: Arc<Outbox>,
    limiter: DirectRateLimiter,
    strikes: DirectRateLimiter,
    token: Option<Arc<TokenLife>>,
    /// The rooms its JWT's `rooms` claim allows (`None`: no claim).
    rooms: Option<RoomClaim>,
    /// When the client's first request or packet arrived.
    started: Instant,
    /// The highest `seq` of the user's stream written anywhere.
    written: Arc<AtomicU64>,
    /// The client closed the connection cleanly: its user is gone, not away.
    clean: AtomicBool,
    /// Whether the connection has left the registry.
    left: AtomicBool,
    /// Its user is away: the claim stays with the user's stream (which
    /// gives it up when the user is gone), not with the connection.
    claim_kept: AtomicBool,
    _admission: Admission,
}

/// Frames read from a client in one go, handed to its session one by one
/// (see [`Session::reading`]).
pub struct Reading<'a> {
    session: &'a Session,
    at: Instant,
}

impl Reading<'_> {
    /// The session the frames are read for.
    pub fn session(&self) -> &Session {
        self.session
    }

    /// Handles one inbound frame: validates it, stamps the originator and
    /// queues it for the target, or queues an error envelope for the sender.
    pub fn frame(&self, frame: &[u8]) {
        let session = self.session;
        if session.admit_frame() {
            let parsed = parse_inbound(frame, session.hub.limits().max_json_depth);
            session.route(parsed, self.at);
        }
    }

    /// [`Reading::frame`] for text already known to be UTF-8.
    pub fn text(&self, text: &str) {
        let session = self.session;
        if session.admit_frame() {
            let parsed = parse_inbound_text(text, session.hub.limits().max_json_depth);
            session.route(parsed, self.at);
        }
    }
}

impl Session {
    /// Attaches an admitted, claimed connection to its user. A previous
    /// connection of the same user is closed as `REPLACED`. The session's
    /// outbox starts with the `WELCOME` envelope, which carries ICE servers
    /// minted for this connection. Refused, with the reason to close the
    /// connection with, when the gateway is shutting down, the
    /// authentication was revoked since (a kick, deleted identities), or a
    /// newer claim on the user exists (`REPLACED`). `started` is when the
    /// client's first request or packet arrived, for the set-up time
    /// histogram. `resume` is the client's `resume=N`: the highest `seq` it
    /// processed on an earlier connection.
    pub fn attach(
        hub: &Arc<Hub>,
        admission: Admission,
        claimed: Claimed,
        peer: IpAddr,
        started: Instant,
        resume: Option<u64>,
    ) -> Result<Session, CloseReason> {
        let (conn, epoch, transport) = claimed.connection();
        let authenticated = claimed.authenticated();
        let user = authenticated.user.clone();
        let expires_at = authenticated.expires_at;
        let rooms = authenticated.rooms.clone();
        let grant = authenticated.grant();
        let limits = hub.limits();
        let outbox = Arc::new(Outbox::new(limits.queue_envelopes, limits.queue_bytes));
        let ice = hub.ice_servers(&user);
        let welcome = |resumption: &super::resume::Resumption| {
            welcome_frame(&Welcome {
                username: &user,
                transport: transport.as_str(),
                connection_id: conn,
                max_envelope_bytes: limits.max_envelope_bytes,
                ice: &ice,
                session: &resumption.session,
                resumed: resumption.resumed,
                replayed: resumption.replayed,
            })
        };
        let attached = hub.registry().attach(
            user.clone(),
            Entry {
                conn,
                epoch,
                transport,
                outbox: outbox.clone(),
                since: hub.clock().wall(),
                peer,
            },
            grant,
            resume,
            welcome,
        )?;
        let stats = hub.stats();
        if resume.is_some() {
            if attached.resumption.resumed {
                stats.resumed.inc();
            } else {
                stats.not_resumed.inc();
            }
        }
        // From here the session gives the claim up when it ends.
        claimed.attached();
        hub.touch(&user);
        hub.user_attached(&user, epoch);
        hub.stats().attached(transport);
        let mut session = Session::new(
            hub.clone(),
            LocalSender { user, conn },
            epoch,
            transport,
            outbox,
            admission,
            expires_at,
            rooms,
            started,
        );
        session.written = attached.written;
        session.record_proved(&attached.proved);
        Ok(session)
    }

    /// A session for a connection just attached.
    #[expect(
        clippy::too_many_arguments,
        reason = "everything a session is made of, from one caller"
    )]
    fn new(
        hub: Arc<Hub>,
        origin: LocalSender,
        epoch: Epoch,
        transport: Transport,
        outbox: Arc<Outbox>,
        admission: Admission,
        expires_at: Option<SystemTime>,
        rooms: Option<RoomClaim>,
        started: Instant,
    ) -> Self {
        let envelope_quota = quota(hub.limits().envelope_rate, hub.limits().envelope_burst);
        let clock = hub.clock();
        let limiter = clock.direct_rate(envelope_quota);
        let strikes = clock.direct_rate(envelope_quota);
        let token = expires_at.map(|at| Arc::new(TokenLife::new(at, clock.unix_ms())));
        Self {
            hub,
            origin,
            epoch,
            transport,
            outbox,
            limiter,
            strikes,
            token,
            rooms,
            started,
            written: Arc::default(),
            clean: AtomicBool::new(false),
            left: AtomicBool::new(false),
            claim_kept: AtomicBool::new(false),
            _admission: admission,
        }
    }

    /// The authenticated user.
    pub fn user(&self) -> &str {
        &self.origin.user
    }

    /// The authenticated user and this connection, as a sender.
    pub(super) fn origin(&self) -> &LocalSender {
        &self.origin
    }

    /// The epoch of this connection's claim on its user.
    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The rooms the connection's JWT allows (`None`: no `rooms` claim).
    pub(super) fn room_claim(&self) -> Option<&RoomClaim> {
        self.rooms.as_ref()
    }

    /// This connection's id.
    pub fn conn_id(&self) -> ConnId {
        self.origin.conn
    }

    /// When the client's first request or packet arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The hub this session belongs to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// What the writer drains.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Starts handling frames read from the client in one go: they were
    /// all accepted when the read returned, so the clock is read once for
    /// all of them rather than once per envelope.
    pub fn reading(&self) -> Reading<'_> {
        Reading {
            session: self,
            at: self.hub.clock().now(),
        }
    }

    /// Counts a frame and applies the rate limit; false when the frame is
    /// not accepted (already answered, or the connection is closing).
    fn admit_frame(&self) -> bool {
        let stats = self.hub.stats();
        stats.frames_received.inc();
        // Once the gateway has decided to close this connection (and said
        // so in the CLOSE envelope queued for it), frames still in flight
        // from the client are not accepted.
        if self.outbox.is_closing() {
            stats.after_close.inc();
            return false;
        }
        if let Err(not_until) = self.limiter.check() {
            self.over_rate(
                self.hub.clock().retry_after(&not_until),
                "envelope dropped: over the rate limit",
            );
            return false;
        }
        true
    }

    /// Charges `extra` more envelopes to the rate limit: a room envelope
    /// costs one per member it goes to, a `JOIN` or `LEAVE` one per member
    /// told (the frame itself paid for the first). False, and answered
    /// `RATE_LIMITED`, when over it.
    pub(super) fn charge(&self, extra: usize) -> bool {
        let Some(cells) = u32::try_from(extra).ok().and_then(NonZeroU32::new) else {
            return true;
        };
        match self.limiter.check_n(cells) {
            Ok(Ok(())) => true,
            Ok(Err(not_until)) => {
                self.over_rate(
                    self.hub.clock().retry_after(&not_until),
                    "room envelope dropped: it costs one envelope per member and that is over the rate limit",
                );
                false
            }
            Err(_) => {
                self.over_rate(
                    Duration::ZERO,
                    "room envelope dropped: it costs one envelope per member, more than --envelope-burst",
                );
                false
            }
        }
    }

    /// Answers a frame over the rate limit; closes the connection when it
    /// keeps flooding.
    fn over_rate(&self, retry: Duration, why: &str) {
        self.hub.stats().rate_limited.inc();
        if self.strikes.check().is_err() {
            self.close(CloseReason::RateLimited);
            return;
        }
        self.reply_error(
            ErrorType::RateLimited,
            ErrorDetail {
                message: format!("{why}; retry in {} ms", retry.as_millis()),
                retry_after_ms: Some(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX)),
                ..ErrorDetail::default()
            },
        );
    }

    /// Forwards a parsed envelope accepted at `accepted_at`, or answers why
    /// it was not.
    fn route(&self, parsed: Result<Inbound<'_>, EnvelopeError>, accepted_at: Instant) {
        let stats = self.hub.stats();
        let inbound = match parsed {
            Ok(inbound) => inbound,
            Err(err) => {
                stats.invalid.inc();
                self.reply_error(
                    ErrorType::InvalidMessage,
                    ErrorDetail {
                        message: err.to_string(),
                        ..ErrorDetail::default()
                    },
                );
                return;
            }
        };
        if let Some(room) = &inbound.room {
            self.to_room(room, &inbound, accepted_at);
            return;
        }
        if inbound.target.is_empty() {
            self.to_gateway(&inbound);
            return;
        }
        if self.hub.cluster().is_some_and(|cluster| !cluster.current()) {
            self.reply_error(
                ErrorType::ClusterUnavailable,
                ErrorDetail {
                    message: "this node was paused and is checking which users it still holds; retry in a moment".to_owned(),
                    target: Some(&inbound.target),
                    kind: Some(&inbound.kind),
                    retry_after_ms: None,
                },
            );
            return;
        }
        // Built under the registry's lock with the target's next `seq`, so
        // it is numbered as it is written rather than stamped after.
        let item = |seq: Option<u64>| Queued {
            frame: forward_frame(
                &inbound.target,
                &inbound.kind,
                &self.origin.user,
                inbound.payload,
                seq,
            ),
            origin: Some(Origin::Local(self.origin.clone())),
            accepted_at: Some(accepted_at),
            seq: seq.unwrap_or(0),
        };
        match self
            .hub
            .registry()
            .deliver_with(&inbound.target, Kind::Forwarded, item)
        {
            Delivery::Queued => stats.forwarded.inc(),
            Delivery::Held => {
                stats.forwarded.inc();
                stats.held.inc();
            }
            Delivery::HoldRefused(_) => {
                stats.target_not_found.inc();
                stats.hold_refused.inc();
                self.reply_error(
                    ErrorType::TargetNotFound,
                    ErrorDetail {
                        message: format!(
                            "user \"{}\" is reconnecting, and the gateway holds all it may for it",
                            inbound.target
                        ),
                        target: Some(&inbound.target),
                        kind: Some(&inbound.kind),
                        retry_after_ms: None,
                    },
                );
            }
            // Not here: in a cluster, the target may be on another node.
            Delivery::NotFound(item) if self.hub.cluster().is_some() => {
                if !self
                    .hub
                    .forward_remote(&self.origin, &inbound.target, item.frame)
                {
                    self.reply_error(
                        ErrorType::ClusterUnavailable,
                        ErrorDetail {
                            message: format!(
                                "user \"{}\" is not connected to this node, and the other nodes cannot be reached now",
                                inbound.target
                            ),
                            target: Some(&inbound.target),
                            kind: Some(&inbound.kind),
                            retry_after_ms: None,
                        },
                    );
                }
            }
            Delivery::NotFound(_) => {
                stats.target_not_found.inc();
                self.reply_error(
                    ErrorType::TargetNotFound,
                    ErrorDetail {
                        message: format!("user \"{}\" is not connected", inbound.target),
                        target: Some(&inbound.target),
                        kind: Some(&inbound.kind),
                        retry_after_ms: None,
                    },
                );
            }
            Delivery::TargetSlow(_) => {
                stats.target_slow.inc();
                self.reply_error(
                    ErrorType::TargetSlow,
                    ErrorDetail {
                        message: format!(
                            "user \"{}\" was not reading its envelopes and has been disconnected",
                            inbound.target
                        ),
                        target: Some(&inbound.target),
                        kind: Some(&inbound.kind),
                        retry_after_ms: None,
                    },
                );
            }
        }
    }

    fn reply_error(&self, error: ErrorType, detail: ErrorDetail<'_>) {
        self.reply_error_frame(error, error_frame(error, &detail));
    }

    /// Queues an error envelope already built for this connection.
    pub(super) fn reply_error_frame(&self, error: ErrorType, frame: bytes::Bytes) {
        self.hub.stats().error_sent(error);
        self.reply(frame);
    }

    /// Queues one of the gateway's own envelopes for this connection's
    /// user.
    fn reply(&self, frame: bytes::Bytes) {
        self.hub.send_own(&self.origin.user, frame);
    }

    /// An envelope addressed to the gateway itself (`"target": ""`):
    /// `ACK` or `REFRESH_TOKEN`. The new JWT is checked in a task of its
    /// own (a key may have to be fetched), which answers `TOKEN_REFRESHED`
    /// or `TOKEN_REFUSED`.
    fn to_gateway(&self, inbound: &Inbound<'_>) {
        self.hub.stats().to_gateway.inc();
        if inbound.kind == ACK_TYPE {
            match inbound
                .payload
                .and_then(|payload| serde_json::from_str::<Ack>(payload.get()).ok())
            {
                Some(Ack { seq }) => self.hub.registry().ack(&self.origin.user, seq),
                None => self.reply_error(
                    ErrorType::InvalidMessage,
                    ErrorDetail {
                        message: format!("the payload of {ACK_TYPE} must be {{\"seq\": N}}"),
                        kind: Some(&inbound.kind),
                        ..ErrorDetail::default()
                    },
                ),
            }
            return;
        }
        let refused = |message: &str| {
            self.reply_error(
                ErrorType::TokenRefused,
                ErrorDetail {
                    message: message.to_owned(),
                    kind: Some(&inbound.kind),
                    ..ErrorDetail::default()
                },
            );
        };
        if inbound.kind == JOIN_TYPE || inbound.kind == LEAVE_TYPE {
            self.presence(inbound);
            return;
        }
        if inbound.kind != REFRESH_TOKEN_TYPE {
            self.reply_error(
                ErrorType::InvalidMessage,
                ErrorDetail {
                    message: format!(
                        "the gateway (target \"\") takes only {ACK_TYPE}, {REFRESH_TOKEN_TYPE}, {JOIN_TYPE} and {LEAVE_TYPE} envelopes"
                    ),
                    kind: Some(&inbound.kind),
                    ..ErrorDetail::default()
                },
            );
            return;
        }
        let Some(life) = self.token.clone() else {
            refused("this connection was not opened with a JWT; there is nothing to refresh");
            return;
        };
        let Some(Refresh { token }) = inbound
            .payload
            .and_then(|payload| serde_json::from_str(payload.get()).ok())
        else {
            refused("the payload must be {\"token\": \"<a JWT>\"}");
            return;
        };
        let hub = self.hub.clone();
        let user = self.origin.user.clone();
        tokio::spawn(async move {
            let frame = match hub.refresh(&user, &token).await {
                Ok(expires_at) => {
                    let now_ms = hub.clock().unix_ms();
                    life.renew(expires_at, now_ms);
                    life.renewed.notify_one();
                    server_frame(TOKEN_REFRESHED_TYPE, &expiry(unix_ms(expires_at), now_ms))
                }
                Err(err) => {
                    hub.stats().error_sent(ErrorType::TokenRefused);
                    error_frame(
                        ErrorType::TokenRefused,
                        &ErrorDetail {
                            message: err.to_string(),
                            kind: Some(REFRESH_TOKEN_TYPE),
                            ..ErrorDetail::default()
                        },
                    )
                }
            };
            hub.send_own(&user, frame);
        });
    }

    /// Looks after the connection's JWT: warns (`TOKEN_EXPIRING`) when it
    /// is about to expire, closes the connection (`TOKEN_EXPIRED`) once it
    /// has, and says when to look again. `None` once there is nothing more
    /// to do (no JWT, or closed).
    pub fn check_token(&self) -> Option<Duration> {
        let life = self.token.as_ref()?;
        let now = self.hub.clock().unix_ms();
        let expires = life.expires_ms.load(Ordering::Relaxed);
        let close_at = expires.saturating_add(duration_ms(TOKEN_LEEWAY));
        if now >= close_at {
            self.close(CloseReason::TokenExpired);
            return None;
        }
        let life_ms = expires.saturating_sub(life.set_ms.load(Ordering::Relaxed));
        let warn_at = expires.saturating_sub(duration_ms(TOKEN_WARNING).min(life_ms / 2));
        if now < warn_at {
            return Some(Duration::from_millis(warn_at - now));
        }
        if life.warned_ms.swap(expires, Ordering::Relaxed) != expires {
            self.reply(server_frame(TOKEN_EXPIRING_TYPE, &expiry(expires, now)));
        }
        Some(Duration::from_millis(close_at - now))
    }

    /// Completes when a refresh has replaced the connection's JWT (then
    /// [`Session::check_token`] says when to look next); never for a
    /// connection without one.
    pub async fn token_renewed(&self) {
        match &self.token {
            Some(life) => life.renewed.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Asks the writer to close this connection after what is queued, and
    /// makes the user unreachable at once. (The close is counted when the
    /// connection loop sends it, whoever asked for it.)
    pub fn close(&self, reason: CloseReason) {
        self.outbox.close(reason);
        self.hub
            .registry()
            .remove_if(&self.origin.user, self.origin.conn);
    }

    /// Settles a batch the transport tried to write: counts what was
    /// written, answers what was not, and says what the writer does next. A
    /// stalled write makes the connection a slow consumer.
    pub fn batch_written(
        &self,
        batch: VecDeque<Queued>,
        result: Result<(), WriteError>,
        closing: Option<CloseReason>,
    ) -> AfterWrite {
        match result {
            Ok(()) => {
                self.record_written(&batch);
                closing.map_or(AfterWrite::Continue, AfterWrite::Close)
            }
            Err(err) => {
                self.report_unwritten(batch, &err.to_string());
                if let WriteError::Stalled(_) = err {
                    self.close(CloseReason::SlowConsumer);
                    AfterWrite::Close(CloseReason::SlowConsumer)
                } else {
                    AfterWrite::Gone
                }
            }
        }
    }

    /// Counts forwarded envelopes the transport has written for the first
    /// time, and how long each took from its acceptance; envelopes written
    /// again on a resume count as replayed.
    pub fn record_written(&self, batch: &VecDeque<Queued>) {
        let stats = self.hub.stats();
        let now = self.hub.clock().now();
        let last = batch.iter().map(|item| item.seq).max().unwrap_or(0);
        let before = self.written.fetch_max(last, Ordering::Relaxed);
        let first = |item: &&Queued| item.seq == 0 || item.seq > before;
        let mut forwarded = 0;
        stats
            .relay_latency
            .observe_durations(batch.iter().filter(first).filter_map(|item| {
                let accepted = item.accepted_at?;
                forwarded += 1;
                Some(now.saturating_duration_since(accepted))
            }));
        stats.written.add(forwarded);
        stats
            .replayed
            .add(batch.iter().filter(|item| !first(item)).count() as u64);
        stats.batch_sizes.observe(batch.len() as f64);
        if let Some(cluster) = self.hub.cluster() {
            for item in batch.iter().filter(first) {
                if let Some(Origin::Remote { node, id }) = &item.origin {
                    cluster.settle(node, *id, Fate::Written);
                }
            }
        }
    }

    /// Counts as written the envelopes the client's `resume=N` proved it
    /// read although no writer recorded them (see
    /// [`super::registry::Attached::proved`]), and settles them with their
    /// senders' nodes.
    fn record_proved(&self, proved: &[Queued]) {
        if proved.is_empty() {
            return;
        }
        let forwarded = proved.iter().filter(|item| item.accepted_at.is_some());
        self.hub.stats().written.add(forwarded.count() as u64);
        if let Some(cluster) = self.hub.cluster() {
            for item in proved {
                if let Some(Origin::Remote { node, id }) = &item.origin {
                    cluster.settle(node, *id, Fate::Written);
                }
            }
        }
    }

    /// The client closed its side cleanly (a close frame 1000/1001, its
    /// stream or session closed): when this connection leaves, its user is
    /// gone rather than away.
    pub fn closed_by_client(&self) {
        self.clean.store(true, Ordering::Relaxed);
    }

    /// Answers the envelopes of a batch the transport failed to write,
    /// except those the user's stream keeps: a resume writes them again.
    pub fn report_unwritten(&self, batch: impl IntoIterator<Item = Queued>, why: &str) {
        let unkept = self
            .hub
            .registry()
            .unkept(&self.origin.user, self.origin.conn, batch);
        self.hub.report_undelivered(unkept, &self.origin.user, why);
    }

    /// The transport this session runs on.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Detaches the connection now. Unless a newer connection of the user
    /// is live, the user is *away* (its envelopes held for
    /// `--resume-window`) when the connection died, or gone when the client
    /// closed it cleanly or the gateway closed it for good; envelopes still
    /// queued that the user's stream does not keep are answered to their
    /// senders. The transport calls this when nothing more will be
    /// written, then takes its time to close the socket; dropping the
    /// session does the same.
    pub fn leave(&self) {
        if self.left.swap(true, Ordering::Relaxed) {
            return;
        }
        let hub = &self.hub;
        let closing = self.outbox.closing();
        let ending = match closing {
            _ if self.clean.load(Ordering::Relaxed) => Ending::Gone(Gone::Closed),
            None => Ending::Away,
            Some(CloseReason::Kicked) => Ending::Gone(Gone::Kicked),
            Some(CloseReason::Unauthenticated) => Ending::Gone(Gone::Deleted),
            // The streams die with the process: nothing to wait for.
            Some(CloseReason::Shutdown) => Ending::Gone(Gone::Ended),
            Some(reason) if reason.should_reconnect() => Ending::Away,
            Some(_) => Ending::Gone(Gone::Ended),
        };
        let why = match closing {
            Some(reason) => format!("the target's connection closed ({})", reason.reason()),
            None => "the target disconnected".to_owned(),
        };
        let left = self.outbox.seal(CloseReason::InternalError);
        let detached = hub.registry().detach(
            &self.origin.user,
            self.origin.conn,
            ending,
            left,
            hub.clock().now(),
        );
        hub.report_undelivered(detached.undelivered, &self.origin.user, &why);
        if let Some((to, moved)) = detached.handoff {
            hub.send_stream(&self.origin.user, to, moved);
        }
        if detached.away {
            hub.stats().went_away.inc();
            self.claim_kept.store(true, Ordering::Relaxed);
        }
        if let Some(departed) = detached.departed {
            hub.departed(departed);
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The payload of `TOKEN_EXPIRING` and `TOKEN_REFRESHED`, at `now_ms`.
fn expiry(expires_ms: u64, now_ms: u64) -> TokenExpiry {
    TokenExpiry {
        expires_at: expires_ms / 1000,
        expires_in_ms: expires_ms.saturating_sub(now_ms),
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave();
        if !self.claim_kept.load(Ordering::Relaxed) {
            self.hub.release(&self.origin.user, self.epoch);
        }
        self.hub.touch(&self.origin.user);
        self.hub.stats().detached(self.transport);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::AuthError;
    use crate::core::Limits;
    use crate::core::clock::ManualClock;
    use crate::core::hub::Authenticated;
    use crate::core::store::Registration;
    use crate::core::testing::{LOCAL, connect, drain, drain_all, hub_at, hub_with, resume, take};
    use serde_json::Value;
    use std::num::NonZeroU32;

    #[test]
    fn forwards_with_originator_stamped() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.reading().frame(
            br#"{"target":"bob","type":"video-offer","payload":{"sdp":"x"},"originator":"eve"}"#,
        );
        let got = drain(&bob);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["originator"], "alice");
        assert_eq!(got[0]["target"], "bob");
        assert_eq!(got[0]["payload"]["sdp"], "x");
        assert!(drain(&alice).is_empty());
        assert_eq!(hub.stats().forwarded.get(), 1);
    }

    #[test]
    fn a_forwarded_envelope_is_numbered_once_as_it_is_built() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        for _ in 0..3 {
            alice
                .reading()
                .frame(br#"{"target":"bob","type":"x","payload":1}"#);
        }
        let mut items = bob.outbox.seal(CloseReason::InternalError);
        items.retain(|item| item.seq != 0);
        assert_eq!(items.len(), 3, "after the WELCOME");
        for item in &items {
            let text = std::str::from_utf8(&item.frame).unwrap();
            assert_eq!(text.matches("\"seq\"").count(), 1, "{text}");
            assert!(
                text.ends_with(&format!(",\"seq\":{}}}\n", item.seq)),
                "{text}"
            );
        }
        let seqs: Vec<u64> = items.iter().map(|item| item.seq).collect();
        assert_eq!(seqs.windows(2).filter(|w| w[1] == w[0] + 1).count(), 2);
    }

    #[test]
    fn welcome_is_first() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let items = alice.outbox.seal(CloseReason::InternalError);
        let v: Value = serde_json::from_slice(&items[0].frame).unwrap();
        assert_eq!(v["type"], "WELCOME");
        assert_eq!(
            v["payload"]["protocol"],
            crate::core::wire::PROTOCOL_VERSION,
            "the protocol version leads the payload"
        );
        assert_eq!(v["payload"]["username"], "alice");
        assert_eq!(v["payload"]["transport"], "websocket");
        assert!(
            v["payload"]["session"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        assert_eq!(v["payload"]["resumed"], false);
        assert_eq!(v["payload"]["replayed"], 0);
        assert!(v.get("seq").is_none(), "WELCOME is outside the stream");
        let ice = &v["payload"]["ice"];
        assert_eq!(ice["ttl"], 60);
        assert_eq!(ice["iceServers"][0]["urls"][0], "turn:turn.test");
        let username = ice["iceServers"][0]["username"].as_str().unwrap();
        assert!(
            username.ends_with(":alice"),
            "minted for the user: {username}"
        );
    }

    #[test]
    fn unknown_target_and_bad_frames_answer_the_sender_only() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        alice
            .reading()
            .frame(br#"{"target":"nobody","type":"video-offer"}"#);
        alice.reading().frame(b"{oops");
        let got = take(&alice);
        assert_eq!(got[0]["type"], "TARGET_NOT_FOUND");
        assert_eq!(got[0]["originator"], "");
        assert_eq!(got[0]["payload"]["target"], "nobody");
        assert_eq!(got[1]["type"], "INVALID_MESSAGE");
        assert_eq!(alice.outbox.closing(), None, "a bad frame does not close");
    }

    #[test]
    fn sending_to_yourself_works() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        alice
            .reading()
            .frame(br#"{"target":"alice","type":"note","payload":1}"#);
        let got = take(&alice);
        assert_eq!(got[0]["originator"], "alice");
    }

    #[test]
    fn replacement_closes_old_and_routes_to_new() {
        let hub = hub_with(Limits::default());
        let old = connect(&hub, "bob");
        let new = connect(&hub, "bob");
        assert_eq!(old.outbox.closing(), Some(CloseReason::Replaced));
        let alice = connect(&hub, "alice");
        alice.reading().frame(br#"{"target":"bob","type":"t"}"#);
        drop(old);
        assert!(
            hub.is_connected("bob"),
            "old cleanup must not evict the new connection"
        );
        assert_eq!(drain(&new).len(), 1);
    }

    #[test]
    fn full_target_is_disconnected_and_sender_told() {
        let hub = hub_with(Limits {
            queue_envelopes: 2,
            ..Limits::default()
        });
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        // bob's queue holds WELCOME + one envelope; the next one overflows.
        alice.reading().frame(br#"{"target":"bob","type":"a"}"#);
        alice.reading().frame(br#"{"target":"bob","type":"b"}"#);
        assert_eq!(bob.outbox.closing(), Some(CloseReason::SlowConsumer));
        assert!(!hub.is_connected("bob"));
        let got = take(&alice);
        assert_eq!(got[0]["type"], "TARGET_SLOW");
        assert_eq!(got[0]["payload"]["type"], "b");
    }

    #[test]
    fn unwritten_envelopes_are_reported_to_their_live_sender() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice
            .reading()
            .frame(br#"{"target":"bob","type":"video-answer"}"#);
        bob.close(CloseReason::Kicked);
        drop(bob);
        let got = take(&alice);
        assert_eq!(got[0]["type"], "UNDELIVERED");
        assert_eq!(got[0]["payload"]["target"], "bob");
        assert_eq!(got[0]["payload"]["type"], "video-answer");
        assert_eq!(hub.stats().undelivered_reported.get(), 1);
    }

    #[test]
    fn unwritten_envelopes_of_a_departed_sender_are_counted() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.reading().frame(br#"{"target":"bob","type":"t"}"#);
        alice.closed_by_client();
        drop(alice);
        bob.closed_by_client();
        drop(bob);
        assert_eq!(hub.stats().undelivered_unreported.get(), 1);
    }

    #[test]
    fn every_envelope_after_welcome_is_numbered_in_the_users_stream() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.reading().frame(br#"{"target":"bob","type":"a"}"#);
        alice.reading().frame(br#"{"target":"nobody","type":"b"}"#);
        alice.reading().frame(br#"{"target":"bob","type":"c"}"#);
        alice.reading().frame(b"{oops");
        let to_bob: Vec<u64> = drain(&bob)
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(to_bob, [1, 2]);
        let to_alice = drain(&alice);
        assert_eq!(to_alice[0]["type"], "TARGET_NOT_FOUND");
        assert_eq!(
            to_alice[0]["seq"], 1,
            "errors are numbered in the sender's stream"
        );
        assert_eq!(to_alice[1]["seq"], 2);
    }

    #[test]
    fn a_user_whose_connection_died_is_held_for_and_resumes_in_order() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.reading().frame(br#"{"target":"bob","type":"one"}"#);
        let session = drain_all(&bob)[0]["payload"]["session"].clone();
        // Written to a path that died: never acknowledged.
        bob.written.store(1, Ordering::Relaxed);
        drop(bob);
        assert!(!hub.is_connected("bob"));
        assert_eq!(hub.away(), 1);
        alice.reading().frame(br#"{"target":"bob","type":"two"}"#);
        assert!(take(&alice).is_empty(), "held: the sender hears nothing");
        assert_eq!(hub.stats().held.get(), 1);
        let back = resume(&hub, "bob", Some(0));
        let got = drain_all(&back);
        assert_eq!(got[0]["payload"]["resumed"], true);
        assert_eq!(got[0]["payload"]["replayed"], 2);
        assert_eq!(got[0]["payload"]["session"], session);
        let kinds: Vec<(&str, u64)> = got[1..]
            .iter()
            .map(|v| (v["type"].as_str().unwrap(), v["seq"].as_u64().unwrap()))
            .collect();
        assert_eq!(kinds, [("one", 1), ("two", 2)]);
        assert_eq!(hub.away(), 0);
        assert_eq!(hub.stats().resumed.get(), 1);
    }

    #[test]
    fn a_replacement_without_resume_leaves_the_old_queue_to_the_old_connection() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let old = connect(&hub, "bob");
        alice
            .reading()
            .frame(br#"{"target":"bob","type":"queued"}"#);
        let new = connect(&hub, "bob");
        assert!(
            drain(&new).is_empty(),
            "the old connection writes its own queue"
        );
        // It never did: its sender hears of it.
        drop(old);
        assert_eq!(take(&alice)[0]["type"], "UNDELIVERED");
    }

    #[test]
    fn an_acknowledged_envelope_is_not_written_again() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        for _ in 0..3 {
            alice.reading().frame(br#"{"target":"bob","type":"x"}"#);
        }
        bob.written.store(3, Ordering::Relaxed);
        bob.reading()
            .frame(br#"{"target":"","type":"ACK","payload":{"seq":2}}"#);
        assert_eq!(hub.kept("bob"), 1);
        drop(bob);
        let back = resume(&hub, "bob", Some(2));
        let got = drain_all(&back);
        assert_eq!(got[0]["payload"]["replayed"], 1);
        assert_eq!(got[1]["seq"], 3);
        let failed = resume(&hub, "bob", Some(1));
        assert_eq!(
            drain_all(&failed)[0]["payload"]["resumed"],
            false,
            "2 was freed"
        );
    }

    #[test]
    fn after_the_window_the_sender_is_told_expired_and_the_user_is_gone() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        drop(bob);
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        assert_eq!(hub.expire_away(hub.clock().now()), 0, "not yet");
        let after = hub.clock().now() + hub.limits().resume_window;
        assert_eq!(hub.expire_away(after), 1);
        let got = take(&alice);
        assert_eq!(got[0]["type"], "EXPIRED");
        assert_eq!(got[0]["payload"]["target"], "bob");
        assert_eq!(got[0]["payload"]["type"], "offer");
        assert_eq!(got[0]["seq"], 1);
        assert_eq!(hub.stats().expired.get(), 1);
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        assert_eq!(take(&alice)[0]["type"], "TARGET_NOT_FOUND");
    }

    #[test]
    fn a_clean_close_or_a_kick_is_gone_at_once() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        bob.closed_by_client();
        drop(bob);
        assert_eq!(hub.away(), 0);
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        assert_eq!(take(&alice)[0]["type"], "TARGET_NOT_FOUND");
        let carol = connect(&hub, "carol");
        drop(carol);
        assert_eq!(hub.away(), 1);
        hub.kick_here();
        assert_eq!(hub.away(), 0, "a kick ends away users too");
        let item = Queued::own(bytes::Bytes::from_static(b"{}\n"));
        assert!(matches!(
            hub.registry().deliver("carol", item, Kind::Forwarded),
            Delivery::NotFound(_)
        ));
    }

    #[test]
    fn holds_stop_at_the_memory_cap() {
        let hub = hub_with(Limits {
            resume_memory: 1000,
            ..Limits::default()
        });
        let alice = connect(&hub, "alice");
        drop(connect(&hub, "bob"));
        let frame = format!(
            r#"{{"target":"bob","type":"x","payload":"{}"}}"#,
            "y".repeat(200)
        );
        for _ in 0..10 {
            alice.reading().frame(frame.as_bytes());
        }
        assert!(hub.resume_bytes() <= 1000);
        assert!(hub.stats().hold_refused.get() >= 5);
        let answers = take(&alice);
        assert_eq!(answers[0]["type"], "TARGET_NOT_FOUND");
    }

    #[test]
    fn rate_limit_answers_then_closes_on_sustained_abuse() {
        let hub = hub_with(Limits {
            envelope_rate: NonZeroU32::new(1).unwrap(),
            envelope_burst: NonZeroU32::new(3).unwrap(),
            ..Limits::default()
        });
        let alice = connect(&hub, "alice");
        for _ in 0..3 {
            alice.reading().frame(br#"{"target":"alice","type":"t"}"#);
        }
        alice.reading().frame(br#"{"target":"alice","type":"t"}"#);
        let got = take(&alice);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3]["type"], "RATE_LIMITED");
        assert!(got[3]["payload"]["retry_after_ms"].as_u64().is_some());
        for _ in 0..3 {
            alice.reading().frame(br#"{"target":"alice","type":"t"}"#);
        }
        assert_eq!(alice.outbox.closing(), Some(CloseReason::RateLimited));
        assert!(!hub.is_connected("alice"));
    }

    #[test]
    fn per_pair_order_is_preserved() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        for i in 0..100 {
            alice
                .reading()
                .frame(format!(r#"{{"target":"bob","type":"n","payload":{i}}}"#).as_bytes());
        }
        let got = drain(&bob);
        let seq: Vec<i64> = got.iter().map(|v| v["payload"].as_i64().unwrap()).collect();
        assert_eq!(seq, (0..100).collect::<Vec<_>>());
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
        let refused =
            Session::attach(&hub, admission, claimed, LOCAL, hub.clock().now(), None).unwrap_err();
        assert_eq!(refused, CloseReason::Unauthenticated);
        assert_eq!(
            futures::executor::block_on(hub.authenticate(&token)).unwrap_err(),
            AuthError::Unknown
        );
        assert!(!hub.is_connected("alice"));
    }

    #[test]
    fn a_jwt_is_warned_about_then_closed_as_the_clock_passes_its_exp() {
        let manual = ManualClock::new();
        let hub = hub_at(Limits::default(), manual.clock());
        let mut authenticated = Authenticated::for_tests(&hub, "alice");
        authenticated.expires_at = Some(hub.clock().wall() + Duration::from_secs(600));
        let admission = hub.admit(LOCAL).unwrap();
        let claimed =
            futures::executor::block_on(hub.claim(authenticated, Transport::WebSocket)).unwrap();
        let alice =
            Session::attach(&hub, admission, claimed, LOCAL, hub.clock().now(), None).unwrap();
        assert_eq!(
            alice.check_token(),
            Some(Duration::from_secs(540)),
            "look again a minute before exp"
        );
        assert!(take(&alice).is_empty());
        manual.advance(Duration::from_secs(540));
        assert_eq!(
            alice.check_token(),
            Some(Duration::from_secs(60) + TOKEN_LEEWAY)
        );
        let warned = take(&alice);
        assert_eq!(warned[0]["type"], "TOKEN_EXPIRING");
        assert_eq!(warned[0]["payload"]["expires_in_ms"], 60_000);
        manual.advance(Duration::from_secs(60) + TOKEN_LEEWAY - Duration::from_millis(1));
        assert_eq!(alice.check_token(), Some(Duration::from_millis(1)));
        assert_eq!(alice.outbox().closing(), None);
        manual.advance(Duration::from_millis(1));
        assert_eq!(alice.check_token(), None);
        assert_eq!(alice.outbox().closing(), Some(CloseReason::TokenExpired));
    }
}
