//! Counters that make the delivery guarantee checkable from outside.
//!
//! Every inbound frame ends in exactly one of: after-close (not accepted),
//! invalid, rate-limited, target-not-found, target-slow, or forwarded; every forwarded envelope ends
//! written, undelivered (reported to its sender) or undelivered (sender
//! already gone), or is still queued. `/v1/stats` exposes these so the soak
//! test can check that the sums add up.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::wire::{CloseReason, PreSessionClose};

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

/// The gateway's counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections attached to a user.
    pub connections_opened: Counter,
    /// Connections that have ended.
    pub connections_closed: Counter,
    /// Frames received from clients.
    pub frames_received: Counter,
    /// Frames that arrived after the gateway began closing the connection.
    pub after_close: Counter,
    /// Frames answered with `INVALID_MESSAGE`.
    pub invalid: Counter,
    /// Frames dropped by the rate limit.
    pub rate_limited: Counter,
    /// Envelopes answered with `TARGET_NOT_FOUND`.
    pub target_not_found: Counter,
    /// Envelopes answered with `TARGET_SLOW`.
    pub target_slow: Counter,
    /// Envelopes queued for their target.
    pub forwarded: Counter,
    /// Forwarded envelopes written to the target's connection.
    pub written: Counter,
    /// Forwarded envelopes never written, reported to the sender (`UNDELIVERED`).
    pub undelivered_reported: Counter,
    /// Forwarded envelopes never written whose sender had already left.
    pub undelivered_unreported: Counter,
    /// The gateway's own frames (error replies, WELCOME) discarded because
    /// their connection closed before they could be written.
    pub replies_dropped: Counter,
    /// QUIC handshakes answered with a Retry, to make the client prove its
    /// address before it gets any state.
    pub quic_retries: Counter,
    closes: [Counter; CloseReason::ALL.len()],
    pre_session_closes: [Counter; PreSessionClose::ALL.len()],
}

impl Stats {
    /// Counts a connection closed by the gateway for `reason`.
    pub fn closed_for(&self, reason: CloseReason) {
        if let Some(index) = CloseReason::ALL.iter().position(|r| *r == reason) {
            self.closes[index].inc();
        }
    }

    /// Counts a QUIC connection closed before it authenticated a session.
    pub fn pre_session_closed(&self, why: PreSessionClose) {
        if let Some(index) = PreSessionClose::ALL.iter().position(|w| *w == why) {
            self.pre_session_closes[index].inc();
        }
    }

    /// A serialisable copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
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
            written: self.written.get(),
            undelivered_reported: self.undelivered_reported.get(),
            undelivered_unreported: self.undelivered_unreported.get(),
            replies_dropped: self.replies_dropped.get(),
            closes: CloseReason::ALL
                .iter()
                .zip(&self.closes)
                .map(|(reason, count)| (reason.reason(), count.get()))
                .filter(|(_, count)| *count > 0)
                .collect(),
            quic_retries: self.quic_retries.get(),
            pre_session_closes: PreSessionClose::ALL
                .iter()
                .zip(&self.pre_session_closes)
                .map(|(why, count)| (why.reason(), count.get()))
                .filter(|(_, count)| *count > 0)
                .collect(),
        }
    }
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
    /// See [`Stats::written`].
    pub written: u64,
    /// See [`Stats::undelivered_reported`].
    pub undelivered_reported: u64,
    /// See [`Stats::undelivered_unreported`].
    pub undelivered_unreported: u64,
    /// See [`Stats::replies_dropped`].
    pub replies_dropped: u64,
    /// Connections the gateway closed, by close reason.
    pub closes: std::collections::BTreeMap<&'static str, u64>,
    /// See [`Stats::quic_retries`].
    pub quic_retries: u64,
    /// QUIC connections closed before they authenticated a session, by
    /// reason.
    pub pre_session_closes: std::collections::BTreeMap<&'static str, u64>,
}
