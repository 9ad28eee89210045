//! A connection's bounded outbound queue.
//!
//! The router never waits on a peer: it pushes into the target's outbox and
//! moves on. The connection's writer takes *everything* queued at once and
//! writes it with one flush, which is what keeps the relay near the syscall
//! floor under load. Closing goes through the outbox too, so envelopes queued
//! before a close are still written before the final `CLOSE` envelope.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::ids::NodeId;
use super::wire::CloseReason;

/// Identifies one live connection; never reused within a process.
pub type ConnId = u64;

/// A sender connected to this node.
#[derive(Debug, Clone)]
pub struct LocalSender {
    /// The sender's username.
    pub user: Arc<str>,
    /// The sender's connection at the time it sent.
    pub conn: ConnId,
}

/// Who sent a queued envelope, so it can be answered if it is never written.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A sender on this node.
    Local(LocalSender),
    /// A sender on another node: that node, and the envelope's id in its
    /// book (it is told how the envelope ended).
    Remote {
        /// The sender's node.
        node: NodeId,
        /// The envelope's id there.
        id: u64,
    },
}

/// One frame waiting to be written.
#[derive(Debug)]
pub struct Queued {
    /// The complete envelope, ending in `\n`.
    pub frame: Bytes,
    /// The sender of a forwarded envelope; `None` for the gateway's own frames.
    pub origin: Option<Origin>,
    /// When a forwarded envelope was accepted (for the relay latency).
    pub accepted_at: Option<std::time::Instant>,
    /// Its `seq` in the user's stream; 0 for frames outside it (`WELCOME`).
    pub seq: u64,
}

impl Queued {
    /// One of the gateway's own frames (WELCOME, an error, a token notice).
    pub fn own(frame: Bytes) -> Self {
        Self {
            frame,
            origin: None,
            accepted_at: None,
            seq: 0,
        }
    }
}

/// Why a push was refused; the frame is handed back so the caller can answer.
#[derive(Debug)]
pub enum PushError {
    /// The queue is at its envelope or byte limit.
    Full(Queued),
    /// The connection is closing and takes nothing new.
    Closing(Queued),
}

/// Why [`Outbox::push_mapped`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// The queue is at its envelope or byte limit.
    Full,
    /// The connection is closing and takes nothing new.
    Closing,
}

/// Bounded queue plus close signal for one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Whether a close was asked for: set with `State::closing`, read
    /// without the lock by the reader, which checks it for every frame.
    closing: AtomicBool,
    ready: Notify,
    max_envelopes: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    bytes: usize,
    closing: Option<CloseReason>,
}

impl Outbox {
    /// An empty outbox holding at most `max_envelopes` frames and `max_bytes` bytes.
    pub fn new(max_envelopes: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            closing: AtomicBool::new(false),
            ready: Notify::new(),
            max_envelopes,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every update is a single push/drain), so a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame for the writer without waiting.
    pub fn push(&self, item: Queued) -> Result<(), PushError> {
        self.push_within(item, self.max_envelopes)
    }

    /// Queues the gateway's own reply to this connection (an error
    /// envelope). Replies are bounded by the byte limit only: a reader
    /// handles a whole batch of frames before the writer runs, and a burst
    /// of bad frames must not make a client that reads its replies look
    /// like a slow consumer. A client that does not read them still fills
    /// the byte limit or stalls the writer.
    pub fn push_reply(&self, item: Queued) -> Result<(), PushError> {
        self.push_within(item, usize::MAX)
    }

    /// Queues the envelopes a resumed connection is owed, after its
    /// `WELCOME` and before anything new: bounded by the user's resume
    /// buffer, not by the queue's limits.
    pub fn push_replay(&self, items: impl IntoIterator<Item = Queued>) {
        let mut state = self.lock();
        for item in items {
            state.bytes += item.frame.len();
            state.queue.push_back(item);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Queues `item` as [`Outbox::push`] does (or as
    /// [`Outbox::push_reply`] when `own`), turned into what is queued by
    /// `map` only once it is sure to be taken, under the queue's lock: the
    /// user's stream numbers an envelope only when it is queued. Refused
    /// with why and the item as it came.
    pub fn push_mapped(
        &self,
        item: Queued,
        own: bool,
        map: impl FnOnce(Queued) -> Queued,
    ) -> Result<(), (Room, Queued)> {
        let mut state = self.lock();
        let max_envelopes = if own { usize::MAX } else { self.max_envelopes };
        let len = item.frame.len();
        if state.closing.is_some() {
            return Err((Room::Closing, item));
        }
        if !state.queue.is_empty()
            && (state.queue.len() >= max_envelopes || state.bytes + len > self.max_bytes)
        {
            return Err((Room::Full, item));
        }
        let item = map(item);
        state.bytes += item.frame.len();
        state.queue.push_back(item);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    fn push_within(&self, item: Queued, max_envelopes: usize) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Err(PushError::Closing(item));
        }
        let len = item.frame.len();
        // An empty queue always takes one frame, however large, so a limit
        // below the envelope size cannot wedge a connection.
        if !state.queue.is_empty()
            && (state.queue.len() >= max_envelopes || state.bytes + len > self.max_bytes)
        {
            return Err(PushError::Full(item));
        }
        state.bytes += len;
        state.queue.push_back(item);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Asks the writer to close the connection once what is queued is
    /// written. The first reason wins; returns whether this call set it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() {
            return false;
        }
        state.closing = Some(reason);
        self.closing.store(true, Ordering::Release);
        drop(state);
        self.ready.notify_one();
        true
    }

    /// The close reason, once a close has been asked for.
    pub fn closing(&self) -> Option<CloseReason> {
        self.lock().closing
    }

    /// Whether a close has been asked for, without taking the lock.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Waits until there is something to do: a frame queued, or a close
    /// asked for.
    async fn ready(&self) {
        loop {
            {
                let state = self.lock();
                if !state.queue.is_empty() || state.closing.is_some() {
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Takes every queued frame (the queue itself moves out, so an idle
    /// connection keeps no queue allocation), and the close reason when the
    /// connection must close after writing them.
    fn take(&self) -> (VecDeque<Queued>, Option<CloseReason>) {
        let mut state = self.lock();
        state.bytes = 0;
        (std::mem::take(&mut state.queue), state.closing)
    }

    /// Waits until there is something to do, then takes every queued frame
    /// (see [`Outbox::take`]).
    pub async fn next_batch(&self) -> (VecDeque<Queued>, Option<CloseReason>) {
        self.ready().await;
        self.take()
    }

    /// Seals the outbox and returns whatever was never taken by the writer.
    pub fn seal(&self, reason: CloseReason) -> Vec<Queued> {
        let mut state = self.lock();
        state.closing.get_or_insert(reason);
        self.closing.store(true, Ordering::Release);
        state.bytes = 0;
        state.queue.drain(..).collect()
    }

    /// Number of frames waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Queued {
        Queued::own(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn refuses_past_the_envelope_limit() {
        let outbox = Outbox::new(2, 1 << 20);
        outbox.push(frame(1)).unwrap();
        outbox.push(frame(1)).unwrap();
        assert!(matches!(outbox.push(frame(1)), Err(PushError::Full(_))));
    }

    #[test]
    fn replies_are_bounded_by_bytes_only() {
        let outbox = Outbox::new(1, 10);
        outbox.push(frame(1)).unwrap();
        assert!(matches!(outbox.push(frame(1)), Err(PushError::Full(_))));
        for _ in 0..9 {
            outbox.push_reply(frame(1)).unwrap();
        }
        assert!(matches!(
            outbox.push_reply(frame(1)),
            Err(PushError::Full(_))
        ));
    }

    #[test]
    fn refuses_past_the_byte_limit_but_always_takes_one() {
        let outbox = Outbox::new(100, 10);
        outbox.push(frame(50)).unwrap();
        assert!(matches!(outbox.push(frame(1)), Err(PushError::Full(_))));
        let outbox = Outbox::new(100, 10);
        outbox.push(frame(6)).unwrap();
        assert!(matches!(outbox.push(frame(5)), Err(PushError::Full(_))));
        outbox.push(frame(4)).unwrap();
    }

    #[tokio::test]
    async fn batch_takes_everything_and_frees_the_budget() {
        let outbox = Outbox::new(3, 1 << 20);
        for _ in 0..3 {
            outbox.push(frame(1)).unwrap();
        }
        let (batch, closing) = outbox.next_batch().await;
        assert_eq!(closing, None);
        assert_eq!(batch.len(), 3);
        outbox.push(frame(1)).unwrap();
    }

    #[tokio::test]
    async fn close_drains_queued_frames_first_and_then_refuses() {
        let outbox = Outbox::new(10, 1 << 20);
        outbox.push(frame(1)).unwrap();
        assert!(outbox.close(CloseReason::Kicked));
        assert!(!outbox.close(CloseReason::Shutdown), "first reason wins");
        assert!(matches!(outbox.push(frame(1)), Err(PushError::Closing(_))));
        let (batch, closing) = outbox.next_batch().await;
        assert_eq!(closing, Some(CloseReason::Kicked));
        assert_eq!(batch.len(), 1);
        let (batch, closing) = outbox.next_batch().await;
        assert_eq!(closing, Some(CloseReason::Kicked));
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn writer_wakes_on_push_from_another_task() {
        let outbox = Arc::new(Outbox::new(10, 1 << 20));
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.next_batch().await.0.len() })
        };
        tokio::task::yield_now().await;
        outbox.push(frame(1)).unwrap();
        assert_eq!(writer.await.unwrap(), 1);
    }

    #[test]
    fn seal_returns_leftovers() {
        let outbox = Outbox::new(10, 1 << 20);
        outbox.push(frame(1)).unwrap();
        outbox.push(frame(2)).unwrap();
        let left = outbox.seal(CloseReason::SlowConsumer);
        assert_eq!(left.len(), 2);
        assert_eq!(outbox.closing(), Some(CloseReason::SlowConsumer));
        assert!(outbox.is_empty());
    }
}
