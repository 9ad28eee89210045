//! The routing core: admission, attaching connections to users, and
//! forwarding envelopes between them.
//!
//! A transport turns its frames into [`Session::handle_frame`] calls and
//! writes what [`Session::outbox`] hands it; everything else, from the
//! envelope rules to who is reachable, is decided here.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::envelope::{
    EnvelopeError, ErrorDetail, Inbound, Welcome, error_frame, forward_frame, parse_inbound,
    parse_inbound_text, welcome_frame,
};
use super::limits::{Limits, ip_key};
use super::outbox::{ConnId, Origin, Outbox, PushError, Queued};
use super::registry::{Delivery, Entry, Grant, Transport, UserClientRegistry};
use super::stats::Stats;
use super::store::{Registration, StoreError, UserStore};
use super::wire::{CloseReason, ErrorType};

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

/// A token that was valid, and what had been revoked when it was checked
/// (see [`Grant`]).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user the token belongs to.
    pub user: Arc<str>,
    grant: Grant,
}

/// The shared state behind both transports and the HTTP API.
#[derive(Debug)]
pub struct Hub {
    /// Registered identities.
    pub store: UserStore,
    /// Live connections.
    pub registry: UserClientRegistry,
    /// Limits in force.
    pub limits: Limits,
    /// Counters.
    pub stats: Stats,
    next_conn: AtomicU64,
    admitted: AtomicUsize,
    pending: AtomicUsize,
    pending_by_ip: Mutex<HashMap<IpAddr, usize>>,
    all_gone: Notify,
    connect_rate: DefaultKeyedRateLimiter<IpAddr>,
    register_rate: DefaultKeyedRateLimiter<IpAddr>,
    stopping: CancellationToken,
}

fn quota(rate: std::num::NonZeroU32, burst: std::num::NonZeroU32) -> Quota {
    Quota::per_second(rate).allow_burst(burst)
}

fn retry_after(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Duration {
    not_until.wait_time_from(DefaultClock::default().now())
}

impl Hub {
    /// A hub with no users and the given limits.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            store: UserStore::new(limits.max_identities, limits.max_identities_per_ip),
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
            register_rate: RateLimiter::keyed(quota(
                limits.register_rate_per_ip,
                limits.register_burst_per_ip,
            )),
            limits,
        })
    }

    /// Admits a new realtime connection from `peer` that carries its token
    /// (a WebSocket upgrade), or refuses it before the upgrade, so a refusal
    /// costs nothing.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refusal> {
        if !self.registry.is_accepting() {
            return Err(Refusal::ShuttingDown);
        }
        self.check_connect_rate(peer)?;
        self.claim_slot()
    }

    fn check_connect_rate(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.connect_rate
            .check_key(&ip_key(peer))
            .map_err(|not_until| Refusal::RateLimited(retry_after(&not_until)))
    }

    /// Takes one of the `--max-connections` slots for a connection that has
    /// authenticated.
    pub fn claim_slot(self: &Arc<Self>) -> Result<Admission, Refusal> {
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
            .map_err(|not_until| Refusal::RateLimited(retry_after(&not_until)))
    }

    /// Registers `name` (already validated) for a client at `peer`, or
    /// hands the name back to its owner presenting its token.
    pub fn register(
        &self,
        name: &str,
        presented: Option<&str>,
        peer: IpAddr,
    ) -> Result<Registration, StoreError> {
        self.store.register(name, presented, ip_key(peer))
    }

    /// The user `token` belongs to, with what had been revoked at this
    /// moment; [`Hub::attach`] refuses it if anything was revoked since.
    pub fn authenticate(&self, token: &str) -> Option<Authenticated> {
        // Taken before the lookup: a deletion that the lookup does not see
        // yet is then seen by the attach.
        let grant = self.registry.grant();
        let user = self.store.authenticate(token)?;
        Some(Authenticated { user, grant })
    }

    /// Attaches an admitted, authenticated connection to its user. A
    /// previous connection of the same user is closed as `REPLACED`. The
    /// session's outbox starts with the `WELCOME` envelope. Refused, with
    /// the reason to close the connection with, when the gateway is shutting
    /// down or the authentication was revoked since (a kick, deleted
    /// identities).
    pub fn attach(
        self: &Arc<Self>,
        admission: Admission,
        authenticated: Authenticated,
        transport: Transport,
        peer: IpAddr,
    ) -> Result<Session, CloseReason> {
        let Authenticated { user, grant } = authenticated;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(
            self.limits.queue_envelopes,
            self.limits.queue_bytes,
        ));
        let welcome = welcome_frame(&Welcome {
            username: &user,
            transport: transport.as_str(),
            connection_id: conn,
            max_envelope_bytes: self.limits.max_envelope_bytes,
        });
        // A fresh outbox is empty and open, so the push cannot fail.
        let _ = outbox.push(Queued {
            frame: welcome,
            origin: None,
        });
        self.registry.insert(
            user.clone(),
            Entry {
                conn,
                transport,
                outbox: outbox.clone(),
                since: SystemTime::now(),
                peer,
            },
            grant,
        )?;
        self.store.touch(&user);
        self.stats.connections_opened.inc();
        let envelope_quota = quota(self.limits.envelope_rate, self.limits.envelope_burst);
        Ok(Session {
            hub: self.clone(),
            origin: Origin { user, conn },
            transport,
            outbox,
            limiter: RateLimiter::direct(envelope_quota),
            strikes: RateLimiter::direct(envelope_quota),
            _admission: admission,
        })
    }

    /// Closes every live connection as `KICKED` (admin reset), and those
    /// authenticated but not attached yet as they attach; returns how many
    /// were live.
    pub fn kick_all(&self) -> usize {
        self.registry.kick_all()
    }

    /// Forgets every identity and kicks every connection; a connection
    /// whose token was checked before and that attaches after is refused.
    /// Returns `(identities, connections)`.
    pub fn delete_identities(&self) -> (usize, usize) {
        // The store first: see `Hub::authenticate`.
        let identities = self.store.clear();
        (identities, self.registry.revoke_all())
    }

    /// Starts shutdown: refuses newcomers and closes everyone as `SHUTDOWN`.
    pub fn shutdown(&self) -> usize {
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

    /// Periodic housekeeping: expires unseen identities and forgets idle
    /// per-IP rate state. Returns the number of identities expired.
    pub fn sweep(&self) -> usize {
        let expired = self.store.expire(self.limits.identity_ttl, |name| {
            self.registry.contains(name)
        });
        self.connect_rate.retain_recent();
        self.connect_rate.shrink_to_fit();
        self.register_rate.retain_recent();
        self.register_rate.shrink_to_fit();
        expired.len()
    }

    /// Answers envelopes that were accepted for `target` but never written.
    fn report_undelivered(&self, items: impl IntoIterator<Item = Queued>, target: &str, why: &str) {
        for item in items {
            let Some(origin) = item.origin else {
                self.stats.replies_dropped.inc();
                continue;
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
            match sender.push_reply(Queued {
                frame,
                origin: None,
            }) {
                Ok(()) => self.stats.undelivered_reported.inc(),
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

/// One live connection as the core sees it. Owned by the transport task;
/// dropping it detaches the connection and answers anything left unwritten.
#[derive(Debug)]
pub struct Session {
    hub: Arc<Hub>,
    origin: Origin,
    transport: Transport,
    outbox: Arc<Outbox>,
    limiter: DefaultDirectRateLimiter,
    strikes: DefaultDirectRateLimiter,
    _admission: Admission,
}

impl Session {
    /// The authenticated user.
    pub fn user(&self) -> &str {
        &self.origin.user
    }

    /// This connection's id.
    pub fn conn_id(&self) -> ConnId {
        self.origin.conn
    }

    /// The hub this session belongs to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// What the writer drains.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Handles one inbound frame: validates it, stamps the originator and
    /// queues it for the target, or queues an error envelope for the sender.
    pub fn handle_frame(&self, frame: &[u8]) {
        if self.admit_frame() {
            self.route(parse_inbound(frame, self.hub.limits.max_json_depth));
        }
    }

    /// [`Session::handle_frame`] for text already known to be UTF-8.
    pub fn handle_text(&self, text: &str) {
        if self.admit_frame() {
            self.route(parse_inbound_text(text, self.hub.limits.max_json_depth));
        }
    }

    /// Counts a frame and applies the rate limit; false when the frame is
    /// not accepted (already answered, or the connection is closing).
    fn admit_frame(&self) -> bool {
        let stats = &self.hub.stats;
        stats.frames_received.inc();
        // Once the gateway has decided to close this connection (and said
        // so in the CLOSE envelope queued for it), frames still in flight
        // from the client are not accepted.
        if self.outbox.closing().is_some() {
            stats.after_close.inc();
            return false;
        }
        if let Err(not_until) = self.limiter.check() {
            stats.rate_limited.inc();
            if self.strikes.check().is_err() {
                self.close(CloseReason::RateLimited);
                return false;
            }
            let retry = retry_after(&not_until);
            self.reply_error(
                ErrorType::RateLimited,
                ErrorDetail {
                    message: format!(
                        "envelope dropped: over the rate limit; retry in {} ms",
                        retry.as_millis()
                    ),
                    retry_after_ms: Some(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX)),
                    ..ErrorDetail::default()
                },
            );
            return false;
        }
        true
    }

    /// Forwards a parsed envelope, or answers why it was not.
    fn route(&self, parsed: Result<Inbound<'_>, EnvelopeError>) {
        let stats = &self.hub.stats;
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
        let frame = forward_frame(
            &inbound.target,
            &inbound.kind,
            &self.origin.user,
            inbound.payload,
        );
        let item = Queued {
            frame,
            origin: Some(self.origin.clone()),
        };
        match self.hub.registry.deliver(&inbound.target, item) {
            Delivery::Queued => stats.forwarded.inc(),
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
                stats.closed_for(CloseReason::SlowConsumer);
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
        let frame = error_frame(error, &detail);
        if let Err(PushError::Full(_)) = self.outbox.push_reply(Queued {
            frame,
            origin: None,
        }) {
            self.close(CloseReason::SlowConsumer);
        }
    }

    /// Asks the writer to close this connection after what is queued, and
    /// makes the user unreachable at once.
    pub fn close(&self, reason: CloseReason) {
        if self.outbox.close(reason) {
            self.hub.stats.closed_for(reason);
        }
        self.hub
            .registry
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

    /// Counts forwarded envelopes the transport has written.
    pub fn record_written<'a>(&self, batch: impl IntoIterator<Item = &'a Queued>) {
        let forwarded = batch
            .into_iter()
            .filter(|item| item.origin.is_some())
            .count();
        self.hub.stats.written.add(forwarded as u64);
    }

    /// Answers the envelopes of a batch the transport failed to write.
    pub fn report_unwritten(&self, batch: impl IntoIterator<Item = Queued>, why: &str) {
        self.hub.report_undelivered(batch, &self.origin.user, why);
    }

    /// The transport this session runs on.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Detaches the connection now: the user becomes unreachable and every
    /// envelope still queued is answered to its sender. The transport calls
    /// this when nothing more will be written, then takes its time to close
    /// the socket; dropping the session does the same.
    pub fn leave(&self) {
        let hub = &self.hub;
        hub.registry.remove_if(&self.origin.user, self.origin.conn);
        let why = match self.outbox.closing() {
            Some(reason) => format!("the target's connection closed ({})", reason.reason()),
            None => "the target disconnected".to_owned(),
        };
        let left = self.outbox.seal(CloseReason::InternalError);
        hub.report_undelivered(left, &self.origin.user, &why);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave();
        self.hub.store.touch(&self.origin.user);
        self.hub.stats.connections_closed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::net::Ipv4Addr;
    use std::num::NonZeroU32;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn hub_with(limits: Limits) -> Arc<Hub> {
        Hub::new(limits)
    }

    fn connect(hub: &Arc<Hub>, user: &str) -> Session {
        let admission = hub.admit(LOCAL).unwrap();
        let authenticated = Authenticated {
            user: user.into(),
            grant: hub.registry.grant(),
        };
        hub.attach(admission, authenticated, Transport::WebSocket, LOCAL)
            .unwrap()
    }

    /// Everything queued for `session`, as JSON, skipping the WELCOME.
    fn drain(session: &Session) -> Vec<Value> {
        let items = session.outbox.seal(CloseReason::InternalError);
        items
            .iter()
            .map(|item| serde_json::from_slice::<Value>(&item.frame).unwrap())
            .filter(|v| v["type"] != "WELCOME")
            .collect()
    }

    fn take(session: &Session) -> Vec<Value> {
        let (batch, _) = futures::executor::block_on(session.outbox.next_batch());
        batch
            .iter()
            .map(|item| serde_json::from_slice::<Value>(&item.frame).unwrap())
            .filter(|v| v["type"] != "WELCOME")
            .collect()
    }

    #[test]
    fn forwards_with_originator_stamped() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.handle_frame(
            br#"{"target":"bob","type":"video-offer","payload":{"sdp":"x"},"originator":"eve"}"#,
        );
        let got = drain(&bob);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["originator"], "alice");
        assert_eq!(got[0]["target"], "bob");
        assert_eq!(got[0]["payload"]["sdp"], "x");
        assert!(drain(&alice).is_empty());
        assert_eq!(hub.stats.forwarded.get(), 1);
    }

    #[test]
    fn welcome_is_first() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let items = alice.outbox.seal(CloseReason::InternalError);
        let v: Value = serde_json::from_slice(&items[0].frame).unwrap();
        assert_eq!(v["type"], "WELCOME");
        assert_eq!(v["payload"]["username"], "alice");
        assert_eq!(v["payload"]["transport"], "websocket");
    }

    #[test]
    fn unknown_target_and_bad_frames_answer_the_sender_only() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        alice.handle_frame(br#"{"target":"nobody","type":"video-offer"}"#);
        alice.handle_frame(b"{oops");
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
        alice.handle_frame(br#"{"target":"alice","type":"note","payload":1}"#);
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
        alice.handle_frame(br#"{"target":"bob","type":"t"}"#);
        drop(old);
        assert!(
            hub.registry.contains("bob"),
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
        alice.handle_frame(br#"{"target":"bob","type":"a"}"#);
        alice.handle_frame(br#"{"target":"bob","type":"b"}"#);
        assert_eq!(bob.outbox.closing(), Some(CloseReason::SlowConsumer));
        assert!(!hub.registry.contains("bob"));
        let got = take(&alice);
        assert_eq!(got[0]["type"], "TARGET_SLOW");
        assert_eq!(got[0]["payload"]["type"], "b");
    }

    #[test]
    fn unwritten_envelopes_are_reported_to_their_live_sender() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.handle_frame(br#"{"target":"bob","type":"video-answer"}"#);
        bob.close(CloseReason::Kicked);
        drop(bob);
        let got = take(&alice);
        assert_eq!(got[0]["type"], "UNDELIVERED");
        assert_eq!(got[0]["payload"]["target"], "bob");
        assert_eq!(got[0]["payload"]["type"], "video-answer");
        assert_eq!(hub.stats.undelivered_reported.get(), 1);
    }

    #[test]
    fn unwritten_envelopes_of_a_departed_sender_are_counted() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.handle_frame(br#"{"target":"bob","type":"t"}"#);
        drop(alice);
        drop(bob);
        assert_eq!(hub.stats.undelivered_unreported.get(), 1);
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
            alice.handle_frame(br#"{"target":"alice","type":"t"}"#);
        }
        alice.handle_frame(br#"{"target":"alice","type":"t"}"#);
        let got = take(&alice);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3]["type"], "RATE_LIMITED");
        assert!(got[3]["payload"]["retry_after_ms"].as_u64().is_some());
        for _ in 0..3 {
            alice.handle_frame(br#"{"target":"alice","type":"t"}"#);
        }
        assert_eq!(alice.outbox.closing(), Some(CloseReason::RateLimited));
        assert!(!hub.registry.contains("alice"));
    }

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
        assert_eq!(alice.outbox.closing(), Some(CloseReason::Shutdown));
        assert_eq!(hub.admit(LOCAL).unwrap_err(), Refusal::ShuttingDown);
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

    #[test]
    fn per_pair_order_is_preserved() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        for i in 0..100 {
            alice
                .handle_frame(format!(r#"{{"target":"bob","type":"n","payload":{i}}}"#).as_bytes());
        }
        let got = drain(&bob);
        let seq: Vec<i64> = got.iter().map(|v| v["payload"].as_i64().unwrap()).collect();
        assert_eq!(seq, (0..100).collect::<Vec<_>>());
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
        let token = match hub.register("alice", None, LOCAL).unwrap() {
            Registration::Created { token, .. } => token,
            other => panic!("{other:?}"),
        };
        let authenticated = hub.authenticate(&token).unwrap();
        hub.delete_identities();
        let admission = hub.admit(LOCAL).unwrap();
        let refused = hub
            .attach(admission, authenticated, Transport::WebTransport, LOCAL)
            .unwrap_err();
        assert_eq!(refused, CloseReason::Unauthenticated);
        assert!(hub.authenticate(&token).is_none());
        assert!(!hub.registry.contains("alice"));
    }
}
