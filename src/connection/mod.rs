//! The one connection loop, for every transport.
//!
//! A transport implements [`Link`]: read the client's next frames into the
//! session, write a batch of envelopes, send the close. Everything else
//! happens here, the same way for every transport: each batch the core
//! queues is written with one flush and settled with the core; frames are
//! read ahead, but the targets' writers get a turn during a flood; the
//! connection is kept alive; and the close is always the same sequence —
//! the final `CLOSE` envelope, detaching from the core, counting the frames
//! that raced the close, releasing the connection. Every close the gateway
//! makes is counted here, once.

pub mod lines;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep, interval_at};

use crate::core::outbox::Queued;
use crate::core::{AfterWrite, CloseReason, Hub, Session, Transport, write_within};

/// Frames handled before the loop gives the targets' writers a turn:
/// frames parsed from a buffer do not count against tokio's cooperative
/// budget, so a flood could otherwise fill a target's queue before its
/// writer runs (on a single-thread runtime, always).
pub const READ_BATCH: usize = 64;
/// After sending its `CLOSE`, the gateway waits this long for the client to
/// close its side, so the client reads the final envelope and close instead
/// of a reset; the frames it sent meanwhile are counted, not accepted.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What one read from the client gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Frames were handed to the session.
    Frames {
        /// How many.
        frames: usize,
        /// Bytes read from the connection for them.
        bytes: usize,
    },
    /// The client closed its side, or the connection is gone.
    Ended,
    /// The client broke the transport's rules; close with this reason.
    Close(CloseReason),
}

/// What a keep-alive tick found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The client is there.
    Alive,
    /// Nothing (complete) arrived within the idle timeout.
    Idle,
    /// The connection is gone.
    Gone,
}

/// A client connection as the loop drives it; a transport implements this
/// and only translates between its frames and these calls.
pub trait Link: Send {
    /// The transport this is.
    const TRANSPORT: Transport;

    /// What a failed write reports.
    type Error: std::fmt::Display + Send;

    /// Waits for the client's next frames and hands each complete one to
    /// `session`, at most [`READ_BATCH`] at a time. Must be cancel-safe:
    /// the loop drops it when a batch is ready to write.
    fn read(&mut self, session: &Session) -> impl Future<Output = Read> + Send;

    /// Writes a batch of frames with one flush.
    fn write(
        &mut self,
        batch: &VecDeque<Queued>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// How often the loop calls [`Link::keep_alive`]; `None` for a
    /// transport that keeps itself alive (QUIC).
    fn keep_alive_interval(&self) -> Option<Duration> {
        None
    }

    /// Pings the client and says whether it is still there.
    fn keep_alive(&mut self) -> impl Future<Output = Liveness> + Send {
        std::future::ready(Liveness::Alive)
    }

    /// Sends the final `CLOSE` envelope and the transport's own close.
    fn send_close(&mut self, reason: CloseReason) -> impl Future<Output = ()> + Send;

    /// Ends the gateway's side after the client ended its own.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;

    /// Reads until the client has closed, adding the data frames that
    /// arrive meanwhile to `frames`.
    fn drain(&mut self, frames: &mut u64) -> impl Future<Output = ()> + Send;

    /// Releases the connection, with `reason` when the gateway closed it.
    fn release(self, reason: Option<CloseReason>);
}

/// Serves an attached connection until either side closes it. (A plain
/// function returning an `async move` block: an `async fn` would keep its
/// arguments' slots besides the locals they move into, and this future
/// lives as long as the connection.)
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold the link and session twice"
)]
pub fn serve<L: Link>(mut link: L, session: Session) -> impl Future<Output = ()> + Send {
    async move {
        let stats = session.hub().stats();
        tracing::info!(
            conn = session.conn_id(),
            transport = L::TRANSPORT.as_str(),
            user = session.user(),
            "connection opened"
        );
        let opened = Instant::now();
        let write_timeout = session.hub().limits().write_timeout;
        let mut keep_alive = link.keep_alive_interval().map(|period| {
            let mut ticks = interval_at(Instant::now() + period, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        });
        // Only a connection opened with a JWT has one: it warns before the
        // token expires and closes the connection once it has.
        let mut token_timer = session
            .check_token()
            .map(|due| Box::pin(tokio::time::sleep(due)));
        let mut reading = true;
        let mut since_yield = 0;
        // This connection's own books, for its close event.
        let (mut received, mut sent) = (0u64, 0u64);
        let mut welcomed = false;
        let ended_by = loop {
            tokio::select! {
                biased;
                (batch, closing) = session.outbox().next_batch() => {
                    let written = write_within(write_timeout, link.write(&batch)).await;
                    if written.is_ok() {
                        sent += batch.len() as u64;
                        stats.sent(L::TRANSPORT, batch.iter().map(|item| item.frame.len()).sum());
                        // The first batch carries the WELCOME.
                        if !welcomed {
                            welcomed = true;
                            stats.setup(L::TRANSPORT).observe_duration(session.started().elapsed());
                        }
                    }
                    match session.batch_written(batch, written, closing) {
                        AfterWrite::Continue => {}
                        AfterWrite::Close(reason) => break Some(reason),
                        AfterWrite::Gone => break None,
                    }
                }
                read = link.read(&session), if reading => match read {
                    Read::Frames { frames, bytes } => {
                        received += frames as u64;
                        stats.received(L::TRANSPORT, bytes);
                        since_yield += frames;
                        if since_yield >= READ_BATCH {
                            since_yield = 0;
                            tokio::task::yield_now().await;
                        }
                    }
                    Read::Close(reason) => {
                        session.close(reason);
                        reading = false;
                    }
                    Read::Ended => {
                        reading = false;
                        if session.outbox().closing().is_none() {
                            break None;
                        }
                    }
                },
                () = tick(&mut keep_alive) => match link.keep_alive().await {
                    Liveness::Alive => {}
                    Liveness::Idle => session.close(CloseReason::IdleTimeout),
                    Liveness::Gone => break None,
                },
                () = fire(&mut token_timer) => match (session.check_token(), token_timer.as_mut()) {
                    (Some(due), Some(timer)) => timer.as_mut().reset(Instant::now() + due),
                    _ => token_timer = None,
                },
                // A refresh may bring the expiry closer: arm the timer anew.
                () = session.token_renewed() => {
                    token_timer = session.check_token().map(|due| Box::pin(tokio::time::sleep(due)));
                },
            }
        };
        let (code, reason) = ended_by.map_or((1000, "CLIENT"), |r| (r.code(), r.reason()));
        tracing::info!(
            conn = session.conn_id(),
            transport = L::TRANSPORT.as_str(),
            user = session.user(),
            code,
            reason,
            duration_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            received,
            sent,
            "connection closed"
        );
        // Boxed: the close runs once, and keeping its state inline would grow
        // every connection's task.
        Box::pin(close(link, ended_by, session.hub(), Some(&session))).await;
    }
}

/// Closes a connection that is refused at the moment it would attach (its
/// token was revoked meanwhile, the gateway is shutting down), the same way
/// an attached one is closed.
pub async fn refuse<L: Link>(link: L, reason: CloseReason, hub: &Hub) {
    tracing::debug!(reason = reason.reason(), "refused at attach");
    close(link, Some(reason), hub, None).await;
}

/// Counts a close made on a connection that never got a link (a
/// WebTransport session that opened no stream); the transport closes it by
/// its own means.
pub fn closed_without_link(hub: &Hub, transport: Transport, reason: CloseReason) {
    hub.stats().closed_for(transport, Some(reason));
}

/// The close sequence: `CLOSE` (or the end of our side), detach, linger
/// counting late frames, release.
async fn close<L: Link>(
    mut link: L,
    reason: Option<CloseReason>,
    hub: &Hub,
    session: Option<&Session>,
) {
    hub.stats().closed_for(L::TRANSPORT, reason);
    match reason {
        Some(reason) => link.send_close(reason).await,
        None => link.finish().await,
    }
    if let Some(session) = session {
        session.leave();
    }
    let mut late = 0;
    let _ = tokio::time::timeout(CLOSE_LINGER, link.drain(&mut late)).await;
    hub.stats().frames_received.add(late);
    hub.stats().after_close.add(late);
    link.release(reason);
}

/// When the timer goes off, or never.
async fn fire(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The next keep-alive tick, or never.
async fn tick(keep_alive: &mut Option<Interval>) {
    match keep_alive {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
