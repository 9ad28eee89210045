//! Counters that make the delivery guarantee checkable from outside, and
//! the operational figures `/metrics` exposes.
//!
//! Every inbound frame ends in exactly one of: after-close (not accepted),
//! invalid, rate-limited, target-not-found, target-slow, to-gateway, or
//! forwarded; every forwarded envelope ends written, undelivered (reported
//! to its sender) or undelivered (sender already gone), or is still queued.
//! `/v1/stats` exposes these so the soak test can check that the sums add
//! up; `/metrics` exposes the same atomics, so the two never disagree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use super::histogram::{BATCH_BOUNDS, Histogram, LATENCY_BOUNDS, SETUP_BOUNDS};
use super::transport::Transport;
use super::wire::{CloseReason, ErrorType, PreSessionClose};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How `POST /v1/register` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// A new identity.
    Created,
    /// The owner took its name back.
    Reclaimed,
    /// Someone else's name.
    Taken,
    /// The name breaks the rules.
    Invalid,
    /// A cap, or registration closed (`--auth jwt`).
    Refused,
    /// The store could not be written.
    Failed,
}

impl RegistrationOutcome {
    /// Every outcome.
    pub const ALL: [RegistrationOutcome; 6] = [
        RegistrationOutcome::Created,
        RegistrationOutcome::Reclaimed,
        RegistrationOutcome::Taken,
        RegistrationOutcome::Invalid,
        RegistrationOutcome::Refused,
        RegistrationOutcome::Failed,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            RegistrationOutcome::Created => "created",
            RegistrationOutcome::Reclaimed => "reclaimed",
            RegistrationOutcome::Taken => "taken",
            RegistrationOutcome::Invalid => "invalid",
            RegistrationOutcome::Refused => "refused",
            RegistrationOutcome::Failed => "failed",
        }
    }
}

/// What kind of token was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A registered identity's token.
    Token,
    /// An application's JWT.
    Jwt,
}

impl AuthMethod {
    /// Every method.
    pub const ALL: [AuthMethod; 2] = [AuthMethod::Token, AuthMethod::Jwt];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::Jwt => "jwt",
        }
    }
}

/// How a token check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Accepted.
    Accepted,
    /// Refused (unknown, expired, bad signature...).
    Refused,
    /// Identities could not be read.
    Failed,
}

impl AuthOutcome {
    /// Every outcome.
    pub const ALL: [AuthOutcome; 3] = [
        AuthOutcome::Accepted,
        AuthOutcome::Refused,
        AuthOutcome::Failed,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthOutcome::Accepted => "accepted",
            AuthOutcome::Refused => "refused",
            AuthOutcome::Failed => "failed",
        }
    }
}

/// Close reasons plus one slot for connections the client ended.
const CLOSE_SLOTS: usize = CloseReason::ALL.len() + 1;

/// Per transport: indexed by [`Transport::index`].
type PerTransport<T> = [T; Transport::ALL.len()];

/// Declares [`Stats`] with its plain counters from one list: a row is a
/// counter, and `=> name, help` exposes it on `/metrics` as a metric of its
/// own (the others reach it through a labelled family or `/v1/stats`).
macro_rules! stats {
    ($( $(#[doc = $doc:literal])* $field:ident $(=> $metric:literal, $help:literal)?; )*) => {
        /// The gateway's counters since start.
        #[derive(Debug)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $field: Counter, )*
            /// Time from an envelope's acceptance to its write on the target's
            /// connection.
            pub relay_latency: Histogram<{ LATENCY_BOUNDS.len() }>,
            /// Envelopes written per flush.
            pub batch_sizes: Histogram<{ BATCH_BOUNDS.len() }>,
            setup: PerTransport<Histogram<{ SETUP_BOUNDS.len() }>>,
            live: PerTransport<AtomicI64>,
            opened: PerTransport<Counter>,
            closed: PerTransport<[Counter; CLOSE_SLOTS]>,
            bytes_in: PerTransport<Counter>,
            bytes_out: PerTransport<Counter>,
            pre_session_closes: [Counter; PreSessionClose::ALL.len()],
            refused: [Counter; crate::core::Refusal::CAUSES.len()],
            errors_sent: [Counter; ErrorType::ALL.len()],
            registrations: [Counter; RegistrationOutcome::ALL.len()],
            authentications: [[Counter; AuthOutcome::ALL.len()]; AuthMethod::ALL.len()],
        }

        impl Default for Stats {
            fn default() -> Self {
                Self {
                    $( $field: Counter::default(), )*
                    relay_latency: Histogram::new(&LATENCY_BOUNDS),
                    batch_sizes: Histogram::new(&BATCH_BOUNDS),
                    setup: [const { Histogram::new(&SETUP_BOUNDS) }; Transport::ALL.len()],
                    live: Default::default(),
                    opened: Default::default(),
                    closed: Default::default(),
                    bytes_in: Default::default(),
                    bytes_out: Default::default(),
                    pre_session_closes: Default::default(),
                    refused: Default::default(),
                    errors_sent: Default::default(),
                    registrations: Default::default(),
                    authentications: Default::default(),
                }
            }
        }

        impl Stats {
            /// The counters exposed as metrics of their own:
            /// `(name, help, value)`.
            pub fn metric_counters(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> {
                [$($( ($metric, $help, self.$field.get()), )?)*].into_iter()
            }
        }
    };
}

stats! {
    /// Connections attached to a user.
    connections_opened;
    /// Connections that have ended.
    connections_closed;
    /// Frames received from clients.
    frames_received => "signal_gateway_envelopes_received", "Frames received from clients on attached connections.";
    /// Frames that arrived after the gateway began closing the connection.
    after_close => "signal_gateway_frames_after_close", "Frames that arrived after the gateway had sent the connection its CLOSE (not accepted).";
    /// Frames answered with `INVALID_MESSAGE`.
    invalid;
    /// Frames dropped by the rate limit.
    rate_limited;
    /// Envelopes answered with `TARGET_NOT_FOUND`.
    target_not_found;
    /// Envelopes answered with `TARGET_SLOW`.
    target_slow;
    /// Envelopes queued for their target.
    forwarded => "signal_gateway_envelopes_forwarded", "Envelopes accepted and queued for their target.";
    /// Envelopes addressed to the gateway itself (`"target": ""`).
    to_gateway => "signal_gateway_envelopes_to_gateway", "Envelopes addressed to the gateway itself (REFRESH_TOKEN).";
    /// Forwarded envelopes written to the target's connection.
    written => "signal_gateway_envelopes_written", "Forwarded envelopes written to the target's connection.";
    /// Forwarded envelopes never written, reported to the sender (`UNDELIVERED`).
    undelivered_reported;
    /// Forwarded envelopes never written whose sender had already left.
    undelivered_unreported => "signal_gateway_undelivered_unreported", "Forwarded envelopes never written whose sender had already left.";
    /// The gateway's own frames (error replies, WELCOME) discarded because
    /// their connection closed before they could be written.
    replies_dropped;
    /// QUIC handshakes answered with a Retry, to make the client prove its
    /// address before it gets any state.
    quic_retries => "signal_gateway_quic_retries", "QUIC handshakes answered with a Retry (address validation under pressure).";
    /// Cluster: envelopes accepted here and sent to another node.
    sent_remote => "signal_gateway_cluster_sent", "Cluster: envelopes accepted here and sent to the target's node.";
    /// Cluster: of those, confirmed written by the target's node.
    remote_written;
    /// Cluster: of those, answered to the sender with an error (not found,
    /// slow, undelivered, unavailable).
    remote_failed;
    /// Cluster: of those, answered `UNCONFIRMED` at their deadline.
    remote_unconfirmed;
    /// Cluster: fates heard after the envelope's deadline had passed.
    remote_late;
    /// Cluster: envelopes for a user not connected here, not sent because
    /// the other nodes could not be reached (`CLUSTER_UNAVAILABLE` at once).
    cluster_unavailable => "signal_gateway_cluster_unavailable", "Cluster: envelopes for users not connected here refused at once because the other nodes could not be reached.";
    /// Cluster: envelopes other nodes sent here for users connected here.
    remote_in => "signal_gateway_cluster_received", "Cluster: envelopes other nodes sent here for users connected here.";
    /// Cluster: of those, not written here (reported back to their node).
    remote_in_failed => "signal_gateway_cluster_received_failed", "Cluster: of those, not written here (reported back to their node).";
    /// Forwarded envelopes accepted for an away user and held for it.
    held => "signal_gateway_resume_held", "Envelopes accepted for a user who was away (reconnecting) and held for it.";
    /// Envelopes for an away user refused (`TARGET_NOT_FOUND`) because its
    /// stream or the process held all it may.
    hold_refused => "signal_gateway_resume_hold_refused", "Envelopes for an away user refused (TARGET_NOT_FOUND): its stream or --resume-memory was full.";
    /// Held envelopes whose target did not come back in time, answered
    /// `EXPIRED`.
    expired;
    /// Held envelopes whose target did not come back in time, whose sender
    /// had already left.
    expired_unreported => "signal_gateway_resume_expired_unreported", "Held envelopes whose target did not come back in time and whose sender had already left.";
    /// Connections that asked to resume (`resume=N`) and were resumed.
    resumed => "signal_gateway_resumes", "Connections that asked to resume (resume=N) and got every envelope after N.";
    /// Connections that asked to resume and could not be (`resumed: false`).
    not_resumed => "signal_gateway_resumes_failed", "Connections that asked to resume but could not be (resumed: false).";
    /// Envelopes written again on a resumed connection.
    replayed => "signal_gateway_resume_replayed", "Envelopes written again on a resumed connection.";
    /// Envelopes dropped from a user's stream unacknowledged (over
    /// `--resume-buffer`, `--resume-buffer-bytes` or `--resume-memory`).
    resume_dropped => "signal_gateway_resume_dropped", "Envelopes dropped from a user's resume buffer unacknowledged (over its bounds).";
    /// Envelopes written to a connection that died, never acknowledged,
    /// whose user did not resume before its stream ended: lost with that
    /// connection as far as the gateway can tell.
    resume_lost => "signal_gateway_resume_lost", "Envelopes written to a connection that died and never acknowledged, whose user did not resume in time.";
    /// Cluster: streams handed to another node, where their user connected
    /// anew.
    handed_off => "signal_gateway_resume_handed_off", "Cluster: users' streams handed to the node where the user connected anew.";
    /// Cluster: envelopes accepted here, held for a user and never written,
    /// that went with the user's stream to another node (which writes or
    /// answers them, and counts them received).
    resume_moved => "signal_gateway_resume_moved", "Cluster: envelopes held here for a user, never written, that went with the user's stream to the node where it connected anew.";
    /// Cluster: users who connected here anew while their stream was on
    /// another node that did not hand it over (dead, unreachable, no
    /// answer within the wait, or a newer claim meanwhile).
    handoff_failed => "signal_gateway_resume_handoff_failed", "Cluster: users who connected here anew whose stream on another node could not be taken over (node dead or silent, or a newer claim).";
    /// Users whose last connection died without a clean close (away).
    went_away => "signal_gateway_users_away", "Users whose last connection died without a clean close (away for --resume-window).";
    /// Users finally gone (clean close, window expired, kick, deletion).
    gone => "signal_gateway_users_gone", "Users finally gone: a clean close, the resume window expired, a kick, a deletion.";
    /// Frames sent to a room (`room` without `target`), whether fanned out
    /// or refused `NOT_IN_ROOM`.
    room_sends => "signal_gateway_room_sends", "Frames sent to a room (fanned out, or refused NOT_IN_ROOM).";
    /// Copies of room envelopes queued for members (each also counted in
    /// `forwarded`).
    room_fanout => "signal_gateway_room_fanout", "Copies of room envelopes queued for members (also counted as forwarded).";
    /// Presence envelopes queued (`JOINED`, `LEFT`, `PEER_JOINED`,
    /// `PEER_LEFT`).
    presence => "signal_gateway_presence_envelopes", "Presence envelopes queued (JOINED, LEFT, PEER_JOINED, PEER_LEFT).";
}

fn position<T: PartialEq>(all: &[T], item: &T) -> usize {
    all.iter().position(|x| x == item).unwrap_or(0)
}

impl Stats {
    /// Counts a connection attached on `transport`.
    pub fn attached(&self, transport: Transport) {
        self.connections_opened.inc();
        self.opened[transport.index()].inc();
        self.live[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an attached connection gone.
    pub fn detached(&self, transport: Transport) {
        self.connections_closed.inc();
        self.live[transport.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection on `transport` that ended: closed by the gateway
    /// for `reason`, or by the client (`None`).
    pub fn closed_for(&self, transport: Transport, reason: Option<CloseReason>) {
        let slot = reason.map_or(CloseReason::ALL.len(), |r| position(&CloseReason::ALL, &r));
        self.closed[transport.index()][slot].inc();
    }

    /// Counts a QUIC connection closed before it authenticated a session.
    pub fn pre_session_closed(&self, why: PreSessionClose) {
        self.pre_session_closes[position(&PreSessionClose::ALL, &why)].inc();
    }

    /// Counts a refused admission, by cause.
    pub fn refusal(&self, cause: &str) {
        self.refused[position(&crate::core::Refusal::CAUSES, &cause)].inc();
    }

    /// Counts an error envelope sent.
    pub fn error_sent(&self, error: ErrorType) {
        self.errors_sent[position(&ErrorType::ALL, &error)].inc();
    }

    /// Counts a registration.
    pub fn registration(&self, outcome: RegistrationOutcome) {
        self.registrations[position(&RegistrationOutcome::ALL, &outcome)].inc();
    }

    /// Counts a token check.
    pub fn authentication(&self, method: AuthMethod, outcome: AuthOutcome) {
        self.authentications[position(&AuthMethod::ALL, &method)]
            [position(&AuthOutcome::ALL, &outcome)]
        .inc();
    }

    /// Counts bytes read from a connection.
    pub fn received(&self, transport: Transport, bytes: usize) {
        self.bytes_in[transport.index()].add(bytes as u64);
    }

    /// Counts bytes written to a connection.
    pub fn sent(&self, transport: Transport, bytes: usize) {
        self.bytes_out[transport.index()].add(bytes as u64);
    }

    /// The set-up time histogram of `transport`.
    pub fn setup(&self, transport: Transport) -> &Histogram<{ SETUP_BOUNDS.len() }> {
        &self.setup[transport.index()]
    }

    /// Live connections on `transport`.
    pub fn live(&self, transport: Transport) -> i64 {
        self.live[transport.index()].load(Ordering::Relaxed)
    }

    /// Connections attached on `transport`.
    pub fn opened(&self, transport: Transport) -> u64 {
        self.opened[transport.index()].get()
    }

    /// Connections on `transport` that ended for `reason` (`None`: the client).
    pub fn closed(&self, transport: Transport, reason: Option<CloseReason>) -> u64 {
        let slot = reason.map_or(CloseReason::ALL.len(), |r| position(&CloseReason::ALL, &r));
        self.closed[transport.index()][slot].get()
    }

    /// Bytes read on `transport`.
    pub fn bytes_in(&self, transport: Transport) -> u64 {
        self.bytes_in[transport.index()].get()
    }

    /// Bytes written on `transport`.
    pub fn bytes_out(&self, transport: Transport) -> u64 {
        self.bytes_out[transport.index()].get()
    }

    /// QUIC connections closed before authenticating, for `why`.
    pub fn pre_session_closes(&self, why: PreSessionClose) -> u64 {
        self.pre_session_closes[position(&PreSessionClose::ALL, &why)].get()
    }

    /// Admissions refused for `cause`.
    pub fn refused(&self, cause: &str) -> u64 {
        self.refused[position(&crate::core::Refusal::CAUSES, &cause)].get()
    }

    /// Error envelopes of `error` sent.
    pub fn errors_sent(&self, error: ErrorType) -> u64 {
        self.errors_sent[position(&ErrorType::ALL, &error)].get()
    }

    /// Registrations that ended in `outcome`.
    pub fn registrations(&self, outcome: RegistrationOutcome) -> u64 {
        self.registrations[position(&RegistrationOutcome::ALL, &outcome)].get()
    }

    /// Token checks of `method` that ended in `outcome`.
    pub fn authentications(&self, method: AuthMethod, outcome: AuthOutcome) -> u64 {
        self.authentications[position(&AuthMethod::ALL, &method)]
            [position(&AuthOutcome::ALL, &outcome)]
        .get()
    }

    /// A serialisable copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let nonzero = |pairs: Vec<(&'static str, u64)>| -> BTreeMap<&'static str, u64> {
            pairs.into_iter().filter(|(_, count)| *count > 0).collect()
        };
        StatsSnapshot {
            connections_opened: self.connections_opened.get(),
            connections_closed: self.connections_closed.get(),
            frames_received: self.frames_received.get(),
            after_close: self.after_close.get(),
            invalid: self.invalid.get(),
            rate_limited: self.rate_limited.get(),
            target_not_found: self.target_not_found.get(),
            target_slow: self.target_slow.get(),
            forwarded: self.forwarded.get(),
            to_gateway: self.to_gateway.get(),
            written: self.written.get(),
            undelivered_reported: self.undelivered_reported.get(),
            undelivered_unreported: self.undelivered_unreported.get(),
            replies_dropped: self.replies_dropped.get(),
            closes: nonzero(
                CloseReason::ALL
                    .iter()
                    .map(|reason| {
                        let count = Transport::ALL
                            .iter()
                            .map(|t| self.closed(*t, Some(*reason)))
                            .sum();
                        (reason.reason(), count)
                    })
                    .collect(),
            ),
            quic_retries: self.quic_retries.get(),
            pre_session_closes: nonzero(
                PreSessionClose::ALL
                    .iter()
                    .map(|why| (why.reason(), self.pre_session_closes(*why)))
                    .collect(),
            ),
            remote: RemoteSnapshot {
                sent: self.sent_remote.get(),
                written: self.remote_written.get(),
                failed: self.remote_failed.get(),
                unconfirmed: self.remote_unconfirmed.get(),
                late: self.remote_late.get(),
                unavailable: self.cluster_unavailable.get(),
                received: self.remote_in.get(),
                received_failed: self.remote_in_failed.get(),
            },
            resume: ResumeSnapshot {
                held: self.held.get(),
                hold_refused: self.hold_refused.get(),
                expired: self.expired.get(),
                expired_unreported: self.expired_unreported.get(),
                resumed: self.resumed.get(),
                not_resumed: self.not_resumed.get(),
                replayed: self.replayed.get(),
                dropped: self.resume_dropped.get(),
                lost: self.resume_lost.get(),
                went_away: self.went_away.get(),
                gone: self.gone.get(),
                handed_off: self.handed_off.get(),
                moved: self.resume_moved.get(),
                handoff_failed: self.handoff_failed.get(),
            },
            rooms: RoomSnapshot {
                sends: self.room_sends.get(),
                fanout: self.room_fanout.get(),
                presence: self.presence.get(),
            },
        }
    }
}

/// The cluster's counters (all zero on a gateway that is no cluster node).
#[derive(Debug, Clone, Serialize)]
pub struct RemoteSnapshot {
    /// See [`Stats::sent_remote`].
    pub sent: u64,
    /// See [`Stats::remote_written`].
    pub written: u64,
    /// See [`Stats::remote_failed`].
    pub failed: u64,
    /// See [`Stats::remote_unconfirmed`].
    pub unconfirmed: u64,
    /// See [`Stats::remote_late`].
    pub late: u64,
    /// See [`Stats::cluster_unavailable`].
    pub unavailable: u64,
    /// See [`Stats::remote_in`].
    pub received: u64,
    /// See [`Stats::remote_in_failed`].
    pub received_failed: u64,
}

/// The rooms' counters.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSnapshot {
    /// See [`Stats::room_sends`].
    pub sends: u64,
    /// See [`Stats::room_fanout`].
    pub fanout: u64,
    /// See [`Stats::presence`].
    pub presence: u64,
}

/// The counters at one moment, as served by `/v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::connections_opened`].
    pub connections_opened: u64,
    /// See [`Stats::connections_closed`].
    pub connections_closed: u64,
    /// See [`Stats::frames_received`].
    pub frames_received: u64,
    /// See [`Stats::after_close`].
    pub after_close: u64,
    /// See [`Stats::invalid`].
    pub invalid: u64,
    /// See [`Stats::rate_limited`].
    pub rate_limited: u64,
    /// See [`Stats::target_not_found`].
    pub target_not_found: u64,
    /// See [`Stats::target_slow`].
    pub target_slow: u64,
    /// See [`Stats::forwarded`].
    pub forwarded: u64,
    /// See [`Stats::to_gateway`].
    pub to_gateway: u64,
    /// See [`Stats::written`].
    pub written: u64,
    /// See [`Stats::undelivered_reported`].
    pub undelivered_reported: u64,
    /// See [`Stats::undelivered_unreported`].
    pub undelivered_unreported: u64,
    /// See [`Stats::replies_dropped`].
    pub replies_dropped: u64,
    /// Connections the gateway closed, by close reason.
    pub closes: BTreeMap<&'static str, u64>,
    /// See [`Stats::quic_retries`].
    pub quic_retries: u64,
    /// QUIC connections closed before they authenticated a session, by
    /// reason.
    pub pre_session_closes: BTreeMap<&'static str, u64>,
    /// Envelopes sent to and received from other nodes.
    pub remote: RemoteSnapshot,
    /// Resumes, and what was held for away users.
    pub resume: ResumeSnapshot,
    /// The rooms' counters.
    pub rooms: RoomSnapshot,
}

/// The resume counters.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeSnapshot {
    /// See [`Stats::held`].
    pub held: u64,
    /// See [`Stats::hold_refused`].
    pub hold_refused: u64,
    /// See [`Stats::expired`].
    pub expired: u64,
    /// See [`Stats::expired_unreported`].
    pub expired_unreported: u64,
    /// See [`Stats::resumed`].
    pub resumed: u64,
    /// See [`Stats::not_resumed`].
    pub not_resumed: u64,
    /// See [`Stats::replayed`].
    pub replayed: u64,
    /// See [`Stats::resume_dropped`].
    pub dropped: u64,
    /// See [`Stats::resume_lost`].
    pub lost: u64,
    /// See [`Stats::went_away`].
    pub went_away: u64,
    /// See [`Stats::gone`].
    pub gone: u64,
    /// See [`Stats::handed_off`].
    pub handed_off: u64,
    /// See [`Stats::resume_moved`].
    pub moved: u64,
    /// See [`Stats::handoff_failed`].
    pub handoff_failed: u64,
}
