//! A user's *stream*: the numbered envelopes the gateway writes to a user,
//! kept until the client acknowledges them, so a client that lost its
//! connection can resume (`resume=N`) and have every envelope after `N`
//! written again, in order, with its original `seq`.
//!
//! The stream outlives its connections: while a user is *away* (its last
//! connection ended without a clean close, for `--resume-window`)
//! envelopes sent to it are numbered and kept the same way, and written
//! when it comes back. Nothing here locks or does IO: the registry keeps
//! the streams under its own lock and calls these.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ids::Epoch;
use super::outbox::{Origin, Queued};

/// Envelopes kept per user before the oldest is dropped (LiveKit's signal
/// relay keeps 1,000 messages; a call set-up is 20–30 envelopes, so 256
/// covers several calls' worth of unacknowledged envelopes).
pub const DEFAULT_RESUME_BUFFER: usize = 256;
/// Bytes kept per user before the oldest envelope is dropped (the size of
/// `--queue-bytes`: what a connection may have queued it may also have in
/// flight).
pub const DEFAULT_RESUME_BUFFER_BYTES: usize = 1024 * 1024;
/// Envelopes a stream makes room for when it starts keeping again: what
/// `client.js` receives between two `ACK`s (it acknowledges every 32).
const KEPT_AT_FIRST: usize = 32;
/// The most bytes a stream makes room for at once (large envelopes grow
/// the room as they come, so it stays near what the bounds count).
const FRAMES_AT_FIRST: usize = 16 * 1024;
/// How long a user whose connection died stays *away* (its envelopes held)
/// before it is gone: long enough for a network switch or a fallback from
/// WebTransport to WebSocket, short enough that a sender learns soon
/// (PeerJS expires its queue after 5 s).
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(10);
/// Bytes every user's kept envelopes may take together: over it, new holds
/// are refused, so a flood to away users cannot exhaust the process.
pub const DEFAULT_RESUME_MEMORY: usize = 256 * 1024 * 1024;

/// The bounds of every stream.
#[derive(Debug, Clone, Copy)]
pub struct ResumeLimits {
    /// See [`DEFAULT_RESUME_BUFFER`].
    pub buffer: usize,
    /// See [`DEFAULT_RESUME_BUFFER_BYTES`].
    pub buffer_bytes: usize,
    /// See [`DEFAULT_RESUME_WINDOW`].
    pub window: Duration,
    /// See [`DEFAULT_RESUME_MEMORY`].
    pub memory: usize,
}

impl Default for ResumeLimits {
    fn default() -> Self {
        Self {
            buffer: DEFAULT_RESUME_BUFFER,
            buffer_bytes: DEFAULT_RESUME_BUFFER_BYTES,
            window: DEFAULT_RESUME_WINDOW,
            memory: DEFAULT_RESUME_MEMORY,
        }
    }
}

/// Why a user is finally gone: its stream ends, what was held for it is
/// answered, and it is no longer reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The client closed its last connection cleanly (close frame
    /// 1000/1001, its WebTransport stream or session closed).
    Closed,
    /// It was away for the whole `--resume-window`.
    Expired,
    /// An administrator kicked it.
    Kicked,
    /// Its identity was deleted.
    Deleted,
    /// The gateway closed its connection for good (a protocol error, a
    /// flood, a newer connection on another node).
    Ended,
}

/// One envelope of a stream, kept until acknowledged. Its bytes are the
/// next `len` of the stream's `frames` after those of the envelopes kept
/// before it.
#[derive(Debug)]
struct Kept {
    seq: u64,
    len: usize,
    /// Who sent it (to answer if it is never written).
    origin: Option<Origin>,
    /// When it was accepted.
    accepted_at: Option<Instant>,
}

/// What a new connection of the user is told in its `WELCOME`.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// The stream's opaque id.
    pub session: Arc<str>,
    /// Whether every envelope after the client's `resume=N` follows.
    pub resumed: bool,
    /// How many envelopes from before this connection follow `WELCOME`.
    pub replayed: usize,
}

/// One user's stream.
#[derive(Debug)]
pub struct Stream {
    /// The opaque id `WELCOME` carries as `session`.
    pub session: Arc<str>,
    next_seq: u64,
    /// Every kept envelope, `seq` ascending and without gaps: the stream
    /// can replay anything after `floor - 1`.
    kept: VecDeque<Kept>,
    /// The kept envelopes' bytes, as written (`seq` included), back to
    /// back. A copy rather than a second reference to the frame queued for
    /// the writer: the queued frame is freed once written, while its memory
    /// is still in the cache, and a kept envelope costs no allocation.
    frames: VecDeque<u8>,
    /// Highest `seq` written to some connection (shared with the sessions,
    /// whose writers raise it without the registry's lock).
    written: Arc<AtomicU64>,
    /// Highest `seq` the client acknowledged.
    acked: u64,
    /// The first `seq` the user's latest connection was (or will be)
    /// written: a replaced connection's unwritten envelopes below it reach
    /// nobody.
    covered_from: u64,
    /// The highest `seq` handed to the latest connection's queue: what is
    /// kept above it (held while that connection was closing) is nobody's
    /// to write.
    queued_through: u64,
    /// While away: when the window ends, and which absence it was.
    pub away: Option<(Instant, u64)>,
    /// The claim of the user's latest connection: while the user is away
    /// it keeps the user's route to this node (in a cluster), so envelopes
    /// from other nodes come here to be held.
    pub epoch: Epoch,
    /// No connection of the user has seen this stream yet: a client's
    /// `resume=N` names another stream's numbering, so nothing is resumed.
    pub fresh: bool,
}

/// What pushing an envelope into a stream did to the bounds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes the stream took (+) or gave back (−) in all.
    pub bytes: isize,
    /// Older envelopes dropped to make room (the client can no longer
    /// resume from before them).
    pub dropped: usize,
}

impl Stream {
    /// A new stream, numbered from 1.
    pub fn new(session: Arc<str>) -> Self {
        Self {
            session,
            next_seq: 1,
            kept: VecDeque::new(),
            frames: VecDeque::new(),
            written: Arc::new(AtomicU64::new(0)),
            acked: 0,
            covered_from: 1,
            queued_through: 0,
            away: None,
            epoch: 0,
            fresh: true,
        }
    }

    /// The `seq` the next envelope gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest `seq` written, shared with the user's sessions.
    pub fn written(&self) -> &Arc<AtomicU64> {
        &self.written
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.frames.len()
    }

    /// Envelopes kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Lowest `seq` still kept (`next_seq` when none is).
    fn floor(&self) -> u64 {
        self.kept.front().map_or(self.next_seq, |kept| kept.seq)
    }

    /// Whether the stream could keep one more envelope of `len` bytes
    /// without dropping one never written (held envelopes are never
    /// dropped to make room: they are refused instead).
    pub fn can_hold(&self, len: usize, limits: &ResumeLimits) -> bool {
        let written = self.written.load(Ordering::Relaxed);
        let mut count = self.kept.len() + 1;
        let mut bytes = self.frames.len() + len;
        for kept in &self.kept {
            if count <= limits.buffer && bytes <= limits.buffer_bytes {
                return true;
            }
            if kept.seq > written {
                return false;
            }
            count -= 1;
            bytes -= kept.len;
        }
        true
    }

    /// Numbers `item` with the next `seq`, keeps a copy, and returns it
    /// stamped. With `keep` false (the process is over `--resume-memory`)
    /// nothing is kept and everything kept so far is dropped: the stream
    /// can no longer be resumed from before this envelope.
    pub fn push(&mut self, item: Queued, limits: &ResumeLimits, keep: bool) -> (Queued, Pushed) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Queued {
            frame,
            origin,
            accepted_at,
            seq: built_with,
        } = item;
        // A frame built with its `seq` already (see
        // `UserClientRegistry::deliver_with`) is not stamped again.
        let frame = if built_with == seq {
            frame
        } else {
            stamp(frame, seq)
        };
        let stamped = Queued {
            frame,
            seq,
            origin,
            accepted_at,
        };
        let mut pushed = Pushed::default();
        if !keep {
            pushed.dropped = self.kept.len();
            pushed.bytes = -isize::try_from(self.frames.len()).unwrap_or(isize::MAX);
            self.kept = VecDeque::new();
            self.frames = VecDeque::new();
            return (stamped, pushed);
        }
        let len = stamped.frame.len();
        if self.kept.capacity() == 0 && self.away.is_none() {
            // Room for what a client keeps unacknowledged between two
            // `ACK`s at once, rather than growing to it step by step after
            // every `ACK` that freed everything. (An away user's stream
            // only holds: it grows as envelopes come, so what it takes
            // stays near what the bounds count.)
            let envelopes = KEPT_AT_FIRST.min(limits.buffer);
            self.kept.reserve_exact(envelopes);
            self.frames.reserve_exact(
                envelopes
                    .saturating_mul(len)
                    .min(FRAMES_AT_FIRST)
                    .min(limits.buffer_bytes),
            );
        }
        // Beyond that, grow by a quarter at a time: the ring is used all
        // round, so its whole room is memory the stream keeps touching.
        if self.kept.len() == self.kept.capacity() {
            self.kept.reserve_exact((self.kept.len() / 4).max(1));
        }
        if self.frames.capacity() - self.frames.len() < len {
            self.frames.reserve_exact(len.max(self.frames.len() / 4));
        }
        self.kept.push_back(Kept {
            seq,
            len,
            origin: stamped.origin.clone(),
            accepted_at: stamped.accepted_at,
        });
        self.frames.extend(stamped.frame.iter());
        pushed.bytes = isize::try_from(len).unwrap_or(isize::MAX);
        // Never drop the envelope just kept: one envelope over the byte
        // bound is still resumable.
        while self.kept.len() > 1
            && (self.kept.len() > limits.buffer || self.frames.len() > limits.buffer_bytes)
        {
            let freed = self.pop_oldest();
            pushed.bytes -= isize::try_from(freed).unwrap_or(isize::MAX);
            pushed.dropped += 1;
        }
        (stamped, pushed)
    }

    /// Frees what the client acknowledged (everything up to `seq`, as far
    /// as it was written); returns the bytes freed.
    pub fn ack(&mut self, seq: u64) -> usize {
        let through = seq.min(self.written.load(Ordering::Relaxed));
        self.acked = self.acked.max(through);
        let mut freed = 0;
        while self.kept.front().is_some_and(|kept| kept.seq <= through) {
            freed += self.kept.pop_front().map_or(0, |kept| kept.len);
        }
        self.frames.drain(..freed);
        if self.kept.is_empty() {
            // An idle user keeps no allocation.
            self.kept = VecDeque::new();
            self.frames = VecDeque::new();
        }
        freed
    }

    /// What a new connection gets: with `resume = Some(n)`, everything
    /// after `n` if the stream still has all of it (`resumed`); otherwise
    /// what was never written anywhere — unless the connection replaces a
    /// live one without asking to resume: that one still writes its queue,
    /// as before resume existed. Returns the envelopes to write before
    /// anything new.
    pub fn resume(&mut self, resume: Option<u64>, replacing: bool) -> (Resumption, Vec<Queued>) {
        self.away = None;
        let resumed = resume.filter(|&n| n < self.next_seq && n.saturating_add(1) >= self.floor());
        let after = match resumed {
            Some(n) => n,
            None if replacing && resume.is_none() => u64::MAX,
            None => self.written.load(Ordering::Relaxed),
        };
        let replay: Vec<Queued> = self.copies(|kept| kept.seq > after).collect();
        self.covered_from = replay.first().map_or(self.next_seq, |first| first.seq);
        if let Some(last) = replay.last() {
            self.queued_through = last.seq;
        }
        let resumption = Resumption {
            session: self.session.clone(),
            resumed: resumed.is_some(),
            replayed: replay.len(),
        };
        (resumption, replay)
    }

    /// Ends the stream: every kept envelope never written (to be answered
    /// to its sender), how many were written while the user was away and
    /// never acknowledged (lost with the connection they were written to,
    /// as far as anyone can tell), and the bytes given back.
    pub fn end(self) -> (Vec<Queued>, usize, usize) {
        let written = self.written.load(Ordering::Relaxed);
        let lost = if self.away.is_some() {
            self.kept
                .iter()
                .filter(|kept| kept.seq <= written && kept.seq > self.acked)
                .count()
        } else {
            0
        };
        let unwritten = self.copies(|kept| kept.seq > written).collect();
        (unwritten, lost, self.frames.len())
    }

    /// Whether `seq` is kept (a leftover of a dead connection the stream
    /// still holds is written again on resume), or acknowledged by the
    /// client (it arrived on another connection).
    fn keeps(&self, seq: u64) -> bool {
        seq != 0 && seq < self.next_seq && (seq >= self.floor() || seq <= self.acked)
    }

    /// Whether `seq`, which a connection of the user could not write, is
    /// taken care of: while another connection of the user is `live`, if
    /// that one writes it (or the client acknowledged it); otherwise if
    /// the stream keeps it for a resume.
    pub fn takes_care_of(&self, seq: u64, live: bool) -> bool {
        if !live {
            return self.keeps(seq);
        }
        seq != 0 && seq < self.next_seq && (seq >= self.covered_from || seq <= self.acked)
    }

    /// Takes the stream apart to hand it to another node (the user resumed
    /// there): everything a resume there needs.
    pub fn export(self) -> Moved {
        let kept = self.copies(|_| true).collect();
        Moved {
            session: self.session,
            next_seq: self.next_seq,
            acked: self.acked,
            written: self.written.load(Ordering::Relaxed),
            kept,
        }
    }

    /// The stream another node handed over, continuing its numbering;
    /// `None` when its parts do not add up (kept envelopes out of order,
    /// with gaps, or not below `next_seq`).
    pub fn import(moved: Moved) -> Option<Self> {
        let Moved {
            session,
            next_seq,
            acked,
            written,
            kept,
        } = moved;
        let contiguous = kept
            .windows(2)
            .all(|pair| pair[0].seq.checked_add(1) == Some(pair[1].seq));
        let below = kept.last().is_none_or(|last| last.seq < next_seq);
        if next_seq == 0
            || next_seq > MAX_SEQ
            || !contiguous
            || !below
            || kept.first().is_some_and(|first| first.seq == 0)
        {
            return None;
        }
        // Exactly the room the envelopes take: an imported stream is away
        // and only holds until its user attaches.
        let mut frames = VecDeque::with_capacity(kept.iter().map(|item| item.frame.len()).sum());
        for item in &kept {
            frames.extend(item.frame.iter());
        }
        let kept: VecDeque<Kept> = kept
            .into_iter()
            .map(|item| Kept {
                seq: item.seq,
                len: item.frame.len(),
                origin: item.origin,
                accepted_at: item.accepted_at,
            })
            .collect();
        Some(Self {
            session,
            next_seq,
            kept,
            frames,
            written: Arc::new(AtomicU64::new(written.min(next_seq - 1))),
            acked: acked.min(next_seq - 1),
            covered_from: next_seq,
            queued_through: 0,
            away: None,
            epoch: 0,
            fresh: false,
        })
    }

    /// Drops the oldest envelopes already written while the stream is over
    /// `limits` (another node's bounds may be larger than this one's).
    /// Returns how many it dropped, or `None` when what is left, never
    /// written, is still over them.
    pub fn trim(&mut self, limits: &ResumeLimits) -> Option<usize> {
        let written = self.written.load(Ordering::Relaxed);
        let mut dropped = 0;
        while self.kept.len() > limits.buffer || self.frames.len() > limits.buffer_bytes {
            match self.kept.front() {
                Some(oldest) if oldest.seq <= written => {
                    self.pop_oldest();
                    dropped += 1;
                }
                _ => return None,
            }
        }
        Some(dropped)
    }

    /// The client resumed after `n`: every envelope up to `n` reached it,
    /// whichever connection wrote it (an old one here, or one on the node
    /// the stream came from). Raises the written mark to `n` and returns
    /// the kept envelopes this raised it over, to count as written.
    pub fn prove_written(&mut self, n: u64) -> Vec<Queued> {
        let n = n.min(self.next_seq.saturating_sub(1));
        let before = self.written.fetch_max(n, Ordering::Relaxed);
        self.copies(|kept| kept.seq > before && kept.seq <= n)
            .collect()
    }

    /// [`Stream::end`] while the user's latest connection still writes
    /// what it was given (it is being closed, and has not left): those
    /// envelopes are its to count, written or answered as it leaves, so
    /// only the ones below it are returned unwritten.
    pub fn end_beside_writer(self) -> (Vec<Queued>, usize, usize) {
        let (covered_from, queued_through) = (self.covered_from, self.queued_through);
        let (mut unwritten, lost, bytes) = self.end();
        unwritten.retain(|kept| kept.seq < covered_from || kept.seq > queued_through);
        (unwritten, lost, bytes)
    }

    /// `seq` was handed to the latest connection's queue.
    pub fn queued(&mut self, seq: u64) {
        self.queued_through = self.queued_through.max(seq);
    }

    /// Gives back the room made for envelopes to come: an away user's
    /// stream only holds, so what it takes stays what the bounds count.
    pub fn shrink(&mut self) {
        self.kept.shrink_to_fit();
        self.frames.shrink_to_fit();
    }

    /// Forgets the oldest kept envelope; returns its bytes.
    fn pop_oldest(&mut self) -> usize {
        let len = self.kept.pop_front().map_or(0, |kept| kept.len);
        self.frames.drain(..len);
        len
    }

    /// The kept envelopes `wanted` picks, oldest first, each in a frame of
    /// its own, ready for an outbox.
    fn copies(&self, wanted: impl Fn(&Kept) -> bool) -> impl Iterator<Item = Queued> {
        let (front, back) = self.frames.as_slices();
        self.kept
            .iter()
            .scan(0, |at, kept| {
                let start = *at;
                *at += kept.len;
                Some((kept, start..*at))
            })
            .filter(move |(kept, _)| wanted(kept))
            .map(move |(kept, bytes)| Queued {
                frame: copy_out(front, back, bytes),
                origin: kept.origin.clone(),
                accepted_at: kept.accepted_at,
                seq: kept.seq,
            })
    }
}

/// The bytes at `range` of a ring whose contents are `front` then `back`,
/// in one allocation of their own.
fn copy_out(front: &[u8], back: &[u8], range: std::ops::Range<usize>) -> Bytes {
    let mut out = Vec::with_capacity(range.len());
    if range.start < front.len() {
        out.extend_from_slice(&front[range.start..range.end.min(front.len())]);
    }
    if range.end > front.len() {
        out.extend_from_slice(
            &back[range.start.saturating_sub(front.len())..range.end - front.len()],
        );
    }
    Bytes::from(out)
}

/// The highest `seq` a stream handed over from another node may have
/// reached: the largest integer a JavaScript client reads exactly, far
/// beyond what a stream numbers in its life.
pub const MAX_SEQ: u64 = 1 << 53;

/// A stream taken apart to move to another node (see [`Stream::export`]).
#[derive(Debug)]
pub struct Moved {
    /// The stream's session id.
    pub session: Arc<str>,
    /// The `seq` its next envelope gets.
    pub next_seq: u64,
    /// The highest `seq` the client acknowledged.
    pub acked: u64,
    /// The highest `seq` written to some connection.
    pub written: u64,
    /// Every kept envelope, `seq` ascending and without gaps.
    pub kept: Vec<Queued>,
}

impl Moved {
    /// What the old node remembers of the stream it handed over.
    pub fn mark(&self) -> MovedMark {
        MovedMark {
            floor: self.kept.first().map_or(self.next_seq, |kept| kept.seq),
            next_seq: self.next_seq,
            acked: self.acked,
        }
    }
}

/// The bounds of a stream that moved to another node, for the envelopes
/// its old connections here could not write.
#[derive(Debug, Clone, Copy)]
pub struct MovedMark {
    floor: u64,
    next_seq: u64,
    acked: u64,
}

impl MovedMark {
    /// Whether `seq`, which a connection of the user could not write, went
    /// with the stream (or was acknowledged): the stream's new node writes
    /// it on resume, so it is not answered here.
    pub fn took(&self, seq: u64) -> bool {
        seq != 0 && seq < self.next_seq && (seq >= self.floor || seq <= self.acked)
    }
}

/// `frame` (a JSON object ending in `}\n`) with `"seq": seq` as its last
/// field. In place when the frame is this one's alone and has room (the
/// envelope builders leave [`SEQ_ROOM`] bytes spare), else in a copy made
/// with that room (a room envelope, shared by its members).
pub fn stamp(frame: Bytes, seq: u64) -> Bytes {
    if !frame.ends_with(b"}\n") {
        return frame;
    }
    let mut out = match frame.try_into_mut() {
        Ok(own) => own,
        Err(shared) => {
            let mut copy = bytes::BytesMut::with_capacity(shared.len() + SEQ_ROOM);
            copy.extend_from_slice(&shared);
            copy
        }
    };
    out.truncate(out.len() - 2);
    out.extend_from_slice(SeqTail::new(seq).as_bytes());
    out.freeze()
}

/// The end of a numbered envelope, `,"seq":N}\n`, written back to front in
/// one go with the digits by hand: `fmt` costs more than the rest of
/// numbering an envelope.
pub struct SeqTail {
    bytes: [u8; SEQ_FIELD.len() + 20 + 2],
    at: usize,
}

impl SeqTail {
    /// The tail for `seq`.
    pub fn new(seq: u64) -> Self {
        let mut bytes = [0u8; SEQ_FIELD.len() + 20 + 2];
        let mut at = bytes.len() - 2;
        bytes[at..].copy_from_slice(b"}\n");
        let mut rest = seq;
        loop {
            at -= 1;
            bytes[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        at -= SEQ_FIELD.len();
        bytes[at..at + SEQ_FIELD.len()].copy_from_slice(SEQ_FIELD);
        Self { bytes, at }
    }

    /// The tail's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.at..]
    }
}

/// What [`stamp`] puts before the digits.
const SEQ_FIELD: &[u8] = b",\"seq\":";

/// Bytes an envelope builder leaves spare so [`stamp`] can add `seq`
/// without copying: `,"seq":`, 20 digits and the end.
pub const SEQ_ROOM: usize = 28;

/// A session id nobody can guess or confuse with an earlier one: random,
/// in hex.
pub fn session_id() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str) -> Queued {
        Queued::own(Bytes::from(format!("{{\"type\":\"{text}\"}}\n")))
    }

    fn limits(buffer: usize) -> ResumeLimits {
        ResumeLimits {
            buffer,
            ..ResumeLimits::default()
        }
    }

    #[test]
    fn kept_envelopes_come_back_byte_for_byte_however_the_room_wrapped() {
        let mut stream = Stream::new("s".into());
        let limits = limits(5);
        let mut sent = Vec::new();
        // Envelopes of changing sizes, acknowledged now and then, so the
        // kept bytes wrap around the end of their room many times.
        for n in 0..200u64 {
            let text = "x".repeat(usize::try_from(n % 13).unwrap_or(0));
            let (stamped, _) = stream.push(item(&text), &limits, true);
            sent.push(stamped.frame);
            if n % 3 == 0 {
                stream
                    .written()
                    .store(n.saturating_sub(2), Ordering::Relaxed);
                stream.ack(n.saturating_sub(2));
            }
        }
        let kept = stream.len();
        assert!(kept > 1);
        assert_eq!(
            stream.bytes(),
            sent[sent.len() - kept..]
                .iter()
                .map(Bytes::len)
                .sum::<usize>()
        );
        stream.written().store(0, Ordering::Relaxed);
        let (told, replay) = stream.resume(Some(200 - kept as u64), false);
        assert!(told.resumed);
        let frames: Vec<&[u8]> = replay.iter().map(|q| &q.frame[..]).collect();
        let expected: Vec<&[u8]> = sent[sent.len() - kept..].iter().map(|f| &f[..]).collect();
        assert_eq!(frames, expected);
    }

    #[test]
    fn ending_beside_a_writer_answers_only_what_it_was_not_given() {
        let mut stream = Stream::new("s".into());
        let limits = limits(8);
        stream.resume(None, false);
        for _ in 0..2 {
            let (stamped, _) = stream.push(item("x"), &limits, true);
            stream.queued(stamped.seq);
        }
        // Held while the connection was closing: never in its queue.
        stream.push(item("x"), &limits, true);
        let (unwritten, _, _) = stream.end_beside_writer();
        assert_eq!(unwritten.iter().map(|k| k.seq).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn stamps_seq_as_the_last_field() {
        let frame = Bytes::from_static(b"{\"target\":\"bob\",\"payload\":{\"a\":1}}\n");
        assert_eq!(
            &stamp(frame, 1207)[..],
            b"{\"target\":\"bob\",\"payload\":{\"a\":1},\"seq\":1207}\n"
        );
        assert_eq!(
            &stamp(Bytes::from_static(b"{\"a\":0}\n"), 0)[..],
            b"{\"a\":0,\"seq\":0}\n"
        );
    }

    #[test]
    fn a_frame_with_room_is_stamped_in_place() {
        let mut built = Vec::with_capacity(64 + SEQ_ROOM);
        built.extend_from_slice(b"{\"type\":\"x\"}\n");
        let frame = Bytes::from(built);
        let at = frame.as_ptr();
        let stamped = stamp(frame, u64::MAX);
        assert_eq!(stamped.as_ptr(), at, "no copy");
        assert!(stamped.ends_with(b",\"seq\":18446744073709551615}\n"));
    }

    #[test]
    fn a_shared_frame_is_stamped_in_a_copy_and_left_as_it_was() {
        let frame = Bytes::from_static(b"{\"type\":\"x\"}\n");
        let member = frame.clone();
        let stamped = stamp(member, 7);
        assert_eq!(&stamped[..], b"{\"type\":\"x\",\"seq\":7}\n");
        assert_eq!(&frame[..], b"{\"type\":\"x\"}\n");
    }

    #[test]
    fn a_stream_makes_room_at_once_and_gives_it_back_when_all_is_acknowledged() {
        let mut stream = Stream::new("s".into());
        stream.push(item("x"), &limits(256), true);
        assert!(stream.kept.capacity() >= KEPT_AT_FIRST);
        stream.written().store(1, Ordering::Relaxed);
        stream.ack(1);
        assert_eq!(
            stream.kept.capacity(),
            0,
            "an idle user keeps no allocation"
        );
        let mut small = Stream::new("s".into());
        small.push(item("x"), &limits(4), true);
        assert!(
            small.kept.capacity() < KEPT_AT_FIRST,
            "never beyond the buffer"
        );
        let mut away = Stream::new("s".into());
        away.away = Some((Instant::now(), 1));
        let held = item("x");
        let len = held.frame.len() + SEQ_ROOM;
        away.push(held, &limits(256), true);
        assert!(
            away.kept.capacity() < KEPT_AT_FIRST,
            "held, not made room for"
        );
        assert!(away.frames.capacity() <= 2 * len, "held, not made room for");
    }

    #[test]
    fn numbers_keeps_and_frees_on_ack() {
        let mut stream = Stream::new("s".into());
        let limits = limits(8);
        for n in 1..=3 {
            let (stamped, _) = stream.push(item("x"), &limits, true);
            assert_eq!(stamped.seq, n);
        }
        stream.written().store(3, Ordering::Relaxed);
        assert!(stream.ack(2) > 0);
        assert_eq!(stream.len(), 1);
        stream.ack(99);
        assert!(stream.is_empty());
        assert_eq!(stream.bytes(), 0);
        assert_eq!(stream.next_seq(), 4);
    }

    #[test]
    fn an_ack_beyond_what_was_written_frees_only_what_was() {
        let mut stream = Stream::new("s".into());
        for _ in 0..3 {
            stream.push(item("x"), &limits(8), true);
        }
        stream.written().store(1, Ordering::Relaxed);
        stream.ack(3);
        assert_eq!(stream.len(), 2);
    }

    #[test]
    fn the_buffer_keeps_the_newest_and_resume_from_before_them_fails() {
        let mut stream = Stream::new("s".into());
        for _ in 0..10 {
            stream.push(item("x"), &limits(4), true);
        }
        assert_eq!(stream.len(), 4);
        stream.written().store(10, Ordering::Relaxed);
        let (told, replay) = stream.resume(Some(6), false);
        assert!(told.resumed);
        assert_eq!(
            replay.iter().map(|q| q.seq).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
        let (told, replay) = stream.resume(Some(5), false);
        assert!(!told.resumed, "6 was dropped");
        assert!(replay.is_empty(), "everything was written");
        let (told, _) = stream.resume(Some(11), false);
        assert!(!told.resumed, "the client cannot have seen 11");
        let (told, replay) = stream.resume(Some(10), false);
        assert!(told.resumed);
        assert!(replay.is_empty());
    }

    #[test]
    fn without_resume_only_what_was_never_written_follows() {
        let mut stream = Stream::new("s".into());
        for _ in 0..5 {
            stream.push(item("x"), &limits(8), true);
        }
        stream.written().store(3, Ordering::Relaxed);
        let (told, replay) = stream.resume(None, false);
        assert!(!told.resumed);
        assert_eq!(told.replayed, 2);
        assert_eq!(replay.iter().map(|q| q.seq).collect::<Vec<_>>(), [4, 5]);
        let (unwritten, lost, bytes) = stream.end();
        assert_eq!(unwritten.len(), 2);
        assert_eq!(lost, 0, "not away");
        assert!(bytes > 0);
    }

    #[test]
    fn held_envelopes_are_never_dropped_for_room() {
        let mut stream = Stream::new("s".into());
        let limits = limits(2);
        stream.push(item("x"), &limits, true);
        stream.written().store(1, Ordering::Relaxed);
        assert!(stream.can_hold(10, &limits));
        stream.push(item("x"), &limits, true);
        assert!(stream.can_hold(10, &limits), "seq 1 was written: it can go");
        stream.push(item("x"), &limits, true);
        assert!(!stream.can_hold(10, &limits), "2 and 3 were never written");
    }

    #[test]
    fn over_the_memory_cap_nothing_is_kept() {
        let mut stream = Stream::new("s".into());
        stream.push(item("x"), &limits(8), true);
        let (stamped, pushed) = stream.push(item("x"), &limits(8), false);
        assert_eq!(stamped.seq, 2);
        assert_eq!(pushed.dropped, 1);
        assert!(pushed.bytes < 0);
        assert!(stream.is_empty());
        let (told, _) = stream.resume(Some(0), false);
        assert!(!told.resumed);
    }

    #[test]
    fn a_moved_stream_continues_its_numbering_and_resumes_where_the_client_stopped() {
        let mut stream = Stream::new("s".into());
        for _ in 0..5 {
            stream.push(item("x"), &limits(8), true);
        }
        stream.written().store(4, Ordering::Relaxed);
        stream.ack(2);
        let moved = stream.export();
        let mark = moved.mark();
        assert!(
            mark.took(3) && mark.took(5) && mark.took(1),
            "kept or acknowledged"
        );
        assert!(!mark.took(6) && !mark.took(0), "never numbered");
        let mut there = Stream::import(moved).unwrap();
        assert_eq!(&*there.session, "s");
        assert_eq!(there.len(), 3);
        let (stamped, _) = there.push(item("x"), &limits(8), true);
        assert_eq!(stamped.seq, 6);
        let (told, replay) = there.resume(Some(3), false);
        assert!(told.resumed);
        assert_eq!(replay.iter().map(|q| q.seq).collect::<Vec<_>>(), [4, 5, 6]);
        let (told, _) = there.resume(Some(1), false);
        assert!(!told.resumed, "2 was freed by the ACK");
    }

    #[test]
    fn a_moved_stream_that_does_not_add_up_is_refused() {
        let mut stream = Stream::new("s".into());
        for _ in 0..3 {
            stream.push(item("x"), &limits(8), true);
        }
        let mut gap = stream.export();
        gap.kept.remove(1);
        assert!(Stream::import(gap).is_none(), "a gap");
        let beyond = Moved {
            session: "s".into(),
            next_seq: 2,
            acked: 0,
            written: 0,
            kept: vec![item("x"), item("y")]
                .into_iter()
                .zip(1..)
                .map(|(mut item, seq)| {
                    item.seq = seq;
                    item
                })
                .collect(),
        };
        assert!(Stream::import(beyond).is_none(), "numbered past next_seq");
    }

    #[test]
    fn a_moved_stream_with_absurd_numbers_is_refused_without_panicking() {
        let numbered = |seqs: &[u64]| -> Vec<Queued> {
            seqs.iter()
                .map(|&seq| {
                    let mut item = item("x");
                    item.seq = seq;
                    item
                })
                .collect()
        };
        let moved = |next_seq, kept| Moved {
            session: "s".into(),
            next_seq,
            acked: 0,
            written: 0,
            kept,
        };
        assert!(Stream::import(moved(u64::MAX, numbered(&[u64::MAX, 1]))).is_none());
        assert!(Stream::import(moved(u64::MAX, numbered(&[u64::MAX - 1]))).is_none());
        assert!(Stream::import(moved(u64::MAX, Vec::new())).is_none());
        assert!(Stream::import(moved(MAX_SEQ, numbered(&[MAX_SEQ - 1]))).is_some());
    }

    #[test]
    fn a_moved_stream_is_trimmed_to_this_nodes_bounds_but_never_of_what_was_not_written() {
        let mut stream = Stream::new("s".into());
        for _ in 0..4 {
            stream.push(item("x"), &limits(8), true);
        }
        stream.written().store(2, Ordering::Relaxed);
        let mut there = Stream::import(stream.export()).unwrap();
        assert_eq!(there.trim(&limits(2)), Some(2));
        assert_eq!(there.len(), 2);
        assert_eq!(there.trim(&limits(1)), None, "3 and 4 were never written");
    }
}
