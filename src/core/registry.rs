//! `UserClientRegistry`: who is connected right now, and where to reach them.
//!
//! One live connection per user, newest wins: each connection carries the
//! epoch of its claim on the user (a local counter on a single gateway,
//! allocated cluster-wide in a cluster), and a connection with a lower epoch
//! never replaces one with a higher. Removal compares connection ids, so the
//! late cleanup of a replaced connection can never evict the connection
//! that replaced it; a fence (another node's newer claim) closes only the
//! connections it names.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use super::ids::{Epoch, NodeId};
use super::outbox::{ConnId, Outbox, Queued, Room};
use super::resume::{self, Gone, Moved, MovedMark, Pushed, ResumeLimits, Resumption, Stream};
use super::stats::Stats;
use super::transport::Transport;
use super::wire::CloseReason;

/// A live connection as the registry knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The connection's id.
    pub conn: ConnId,
    /// Its claim's epoch.
    pub epoch: Epoch,
    /// Its transport.
    pub transport: Transport,
    /// Where envelopes for it go.
    pub outbox: Arc<Outbox>,
    /// When it attached.
    pub since: SystemTime,
    /// The client's address.
    pub peer: IpAddr,
}

/// What happened to an envelope handed to [`UserClientRegistry::deliver`].
#[derive(Debug)]
pub enum Delivery {
    /// Queued on the target's connection.
    Queued,
    /// The target is away (reconnecting): kept, and written when it
    /// resumes.
    Held,
    /// The target has no live connection and is not away.
    NotFound(Queued),
    /// The target is away, but its stream or the process holds all it
    /// may (`--resume-buffer`, `--resume-buffer-bytes`, `--resume-memory`).
    HoldRefused(Queued),
    /// The target's queue was full: it has been disconnected as a slow consumer.
    TargetSlow(Queued),
}

/// Which bounds of the target's queue an envelope is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An envelope from another user: the queue's envelope and byte limits.
    Forwarded,
    /// The gateway's own envelope to the user (an error, a notice): the
    /// byte limit only (see [`Outbox::push_reply`]).
    Own,
}

/// How a connection's end leaves its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The connection died without a clean close: the user is away for
    /// `--resume-window`.
    Away,
    /// The user is gone at once.
    Gone(Gone),
}

/// A user whose stream ended, with the envelopes it was never written (to
/// answer to their senders).
#[derive(Debug)]
pub struct Departed {
    /// The user.
    pub user: Arc<str>,
    /// Why.
    pub why: Gone,
    /// Accepted for it and never written.
    pub unwritten: Vec<Queued>,
    /// The claim it kept while away, to give up now.
    pub claim: Option<Epoch>,
}

/// What a connection's end did, as [`UserClientRegistry::detach`] says.
#[derive(Debug, Default)]
pub struct Detached {
    /// Envelopes of the connection's queue that nobody will write (answer
    /// them as undelivered).
    pub undelivered: Vec<Queued>,
    /// The user's stream ended with this connection.
    pub departed: Option<Departed>,
    /// The user is away now.
    pub away: bool,
    /// A hand-off that waited for this connection to stop writing, and
    /// the stream to send with it (`None`: none to hand over any more).
    pub handoff: Option<(Handing, Option<Moved>)>,
}

/// Where a user's stream goes: the node that claimed the user, and its
/// claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handing {
    /// The node the user connected to anew.
    pub to: NodeId,
    /// Its claim on the user.
    pub by: Epoch,
}

/// What [`UserClientRegistry::hand_off`] did with the user's stream.
#[derive(Debug)]
pub enum HandOff {
    /// Took it out to hand over now (`None`: there is none).
    Now(Option<Moved>),
    /// It closed the user's connection here, which may still be writing a
    /// batch: the stream goes when that connection leaves
    /// ([`Detached::handoff`]), with its last writes counted in it.
    Later,
}

/// What an attach gives the new connection.
#[derive(Debug)]
pub struct Attached {
    /// The connection it replaced, closed as `REPLACED`.
    pub replaced: Option<Entry>,
    /// What `WELCOME` said.
    pub resumption: Resumption,
    /// The stream's highest written `seq`, raised by the session's writer.
    pub written: Arc<AtomicU64>,
    /// Envelopes the client's `resume=N` proved written that were not
    /// known to be (an old connection wrote them and died before saying
    /// so, perhaps on another node): count them as written now.
    pub proved: Vec<Queued>,
}

/// One row of the admin listing.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectedUser {
    /// The user.
    pub username: Arc<str>,
    /// The connection's id.
    pub connection_id: ConnId,
    /// Its transport.
    pub transport: Transport,
    /// Seconds since the Unix epoch when it attached.
    pub connected_at: u64,
    /// Envelopes waiting to be written to it (known for this node's
    /// connections only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    /// The node it is on, in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// What had been revoked when a connection was authenticated. A
/// connection is authenticated (its token checked) a moment before it
/// attaches: a WebSocket upgrade or a WebTransport stream comes later. On
/// attach the registry checks that no kick and no deletion of identities
/// happened in between, so an identity deleted meanwhile can never come
/// back through a connection that was already on its way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    kicks: u64,
    deletions: u64,
}

#[derive(Debug)]
struct State {
    users: HashMap<Arc<str>, Entry>,
    /// Per user, the highest epoch a newer claim elsewhere superseded, and
    /// when: a connection still on its way in with that epoch or a lower
    /// one is refused as it attaches.
    fences: HashMap<Arc<str>, (Epoch, Instant)>,
    accepting: bool,
    kicks: u64,
    deletions: u64,
    /// Every user's stream: live users' and away users'.
    streams: HashMap<Arc<str>, Stream>,
    /// Away users by the end of their window, soonest first, with the
    /// absence each entry is for.
    away: VecDeque<(Instant, Arc<str>, u64)>,
    absences: u64,
    /// Bytes every stream keeps together (`--resume-memory`).
    kept_bytes: usize,
    /// Users whose stream moved to another node (they resumed there), and
    /// when: what their old connections here could not write went with
    /// it. Forgotten with the fences.
    moved: HashMap<Arc<str>, (MovedMark, Instant)>,
    /// Users claimed here whose stream another node is handing over:
    /// envelopes for them wait here until it arrives (or the wait ends).
    incoming: HashMap<Arc<str>, Incoming>,
    /// Users whose stream is to be handed over once the connection the
    /// hand-off closed has left: that connection, the fence's epoch, and
    /// where the stream goes.
    handing: HashMap<Arc<str>, (ConnId, Epoch, Handing)>,
}

/// Envelopes for a user whose stream is on its way from another node.
#[derive(Debug)]
struct Incoming {
    /// The claim the stream is handed to.
    epoch: Epoch,
    parked: Vec<Queued>,
    bytes: usize,
}

/// What taking over a stream another node handed over did.
#[derive(Debug, Default)]
pub struct TakenOver {
    /// The handed-over stream is the user's here now.
    pub installed: bool,
    /// Envelopes accepted for the user that nobody will write (answer them
    /// as undelivered).
    pub undelivered: Vec<Queued>,
}

/// A live connection's claim, for claiming again after the cluster's shared
/// state was out of reach.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The user.
    pub user: Arc<str>,
    /// The connection's id.
    pub conn: ConnId,
    /// Its claim's epoch.
    pub epoch: Epoch,
    /// Its transport.
    pub transport: Transport,
}

/// The live connections, keyed by username, and every user's stream.
#[derive(Debug)]
pub struct UserClientRegistry {
    state: Mutex<State>,
    resume: ResumeLimits,
    stats: Arc<Stats>,
}

impl Default for UserClientRegistry {
    fn default() -> Self {
        Self::new(ResumeLimits::default(), Arc::default())
    }
}

impl UserClientRegistry {
    /// An empty registry whose streams keep to `resume`.
    pub fn new(resume: ResumeLimits, stats: Arc<Stats>) -> Self {
        Self {
            state: Mutex::new(State {
                users: HashMap::new(),
                fences: HashMap::new(),
                accepting: true,
                kicks: 0,
                deletions: 0,
                streams: HashMap::new(),
                away: VecDeque::new(),
                absences: 0,
                kept_bytes: 0,
                moved: HashMap::new(),
                incoming: HashMap::new(),
                handing: HashMap::new(),
            }),
            resume,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single map operation, so a poisoned lock still
        // guards a consistent map.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What has been revoked so far; take it *before* checking a token, and
    /// hand it to [`UserClientRegistry::insert`].
    pub fn grant(&self) -> Grant {
        let state = self.lock();
        Grant {
            kicks: state.kicks,
            deletions: state.deletions,
        }
    }

    /// Makes `entry` the user's live connection, continuing the user's
    /// stream (or starting one): its outbox gets `welcome` (told whether
    /// the client's `resume` could be honoured) and then every envelope
    /// the connection is owed, before anything new. A previous connection
    /// is asked to close as `REPLACED` and returned. The entry is refused
    /// with the reason to close it with when the registry has stopped
    /// (`SHUTDOWN`), when everyone was kicked since `grant` was taken
    /// (`KICKED`), when identities were deleted since (`UNAUTHENTICATED`),
    /// or when a newer claim on the user exists, here or (fenced) elsewhere
    /// (`REPLACED`).
    pub fn attach(
        &self,
        user: Arc<str>,
        entry: Entry,
        grant: Grant,
        resume: Option<u64>,
        welcome: impl FnOnce(&Resumption) -> Bytes,
    ) -> Result<Attached, CloseReason> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.accepting {
            return Err(CloseReason::Shutdown);
        }
        if state.deletions != grant.deletions {
            return Err(CloseReason::Unauthenticated);
        }
        if state.kicks != grant.kicks {
            return Err(CloseReason::Kicked);
        }
        let fenced = state
            .fences
            .get(&user)
            .is_some_and(|(epoch, _)| *epoch >= entry.epoch);
        let newer_here = state
            .users
            .get(&user)
            .is_some_and(|live| live.epoch > entry.epoch);
        if fenced || newer_here {
            return Err(CloseReason::Replaced);
        }
        let stream = match state.streams.entry(user.clone()) {
            std::collections::hash_map::Entry::Occupied(live) => live.into_mut(),
            std::collections::hash_map::Entry::Vacant(none) => {
                state.moved.remove(&user);
                none.insert(Stream::new(resume::session_id()))
            }
        };
        // A new stream (or one started for envelopes that waited for a
        // stream that never came) resumes nothing, whatever the client asks.
        let resume = resume.filter(|_| !stream.fresh);
        stream.fresh = false;
        let replacing = state.users.contains_key(&user);
        let (resumption, replay) = stream.resume(resume, replacing);
        let proved = match resume {
            Some(n) if resumption.resumed => stream.prove_written(n),
            _ => Vec::new(),
        };
        stream.epoch = entry.epoch;
        let written = stream.written().clone();
        // Under the lock, so nothing new reaches the outbox before these.
        let _ = entry.outbox.push(Queued::own(welcome(&resumption)));
        entry.outbox.push_replay(replay);
        let old = state.users.insert(user, entry);
        drop(guard);
        if let Some(old) = &old {
            old.outbox.close(CloseReason::Replaced);
        }
        Ok(Attached {
            replaced: old,
            resumption,
            written,
            proved,
        })
    }

    /// A newer claim on `user` exists elsewhere, superseding `epoch`:
    /// closes the user's connection here as `REPLACED` if its epoch is
    /// `epoch` or lower, and refuses such connections still on their way
    /// in. Returns whether a live connection was closed, and the user's
    /// stream if it ended here. `now` dates the fence.
    pub fn fence(&self, user: &str, epoch: Epoch, now: Instant) -> (bool, Option<Departed>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let closed = Self::fenced(state, user, epoch, now);
        // An away user is someone else's now: nothing is held for it here
        // any more. (A connection closed here ends its stream as it leaves,
        // once its writer has written what it could.)
        let departed = if closed.is_none() && !state.users.contains_key(user) {
            self.end_stream(state, user, Gone::Ended, false)
        } else {
            None
        };
        drop(guard);
        let closed = closed
            .map(|entry| entry.outbox.close(CloseReason::Replaced))
            .is_some();
        (closed, departed)
    }

    /// Records that a newer claim elsewhere supersedes `epoch`, and takes
    /// the user's live connection out if it is that one or older.
    fn fenced(state: &mut State, user: &str, epoch: Epoch, now: Instant) -> Option<Entry> {
        match state.fences.get_mut(user) {
            Some(fence) => *fence = (fence.0.max(epoch), now),
            None => {
                state.fences.insert(user.into(), (epoch, now));
            }
        }
        let superseded = state
            .users
            .get(user)
            .is_some_and(|live| live.epoch <= epoch);
        if superseded {
            state.users.remove(user)
        } else {
            None
        }
    }

    /// [`UserClientRegistry::fence`] by a node where the user resumes: the
    /// user's stream, if its claim is `epoch` or older, is taken out to be
    /// handed to that node (`to`) rather than ended (nothing is answered
    /// here: it goes on there), and what its old connections here could
    /// not write is left to it. When this closes the user's live
    /// connection, the stream waits for that connection to leave: a batch
    /// it is writing counts as written in the stream, not here as well.
    /// Returns whether a live connection was closed, and the stream.
    pub fn hand_off(&self, user: &str, epoch: Epoch, to: Handing, now: Instant) -> (bool, HandOff) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let closed = Self::fenced(state, user, epoch, now);
        if let Some((_, fenced, handing)) = state.handing.get_mut(user) {
            // Still waiting for the connection: the newest claim gets it.
            if epoch >= *fenced {
                (*fenced, *handing) = (epoch, to);
            }
            return (false, HandOff::Later);
        }
        let movable = Self::movable(state, user, epoch);
        if movable && let Some(entry) = closed {
            state.handing.insert(user.into(), (entry.conn, epoch, to));
            drop(guard);
            entry.outbox.close(CloseReason::Replaced);
            return (true, HandOff::Later);
        }
        let moved = if movable {
            Self::export(state, user, now)
        } else {
            None
        };
        drop(guard);
        let closed = closed
            .map(|entry| entry.outbox.close(CloseReason::Replaced))
            .is_some();
        (closed, HandOff::Now(moved))
    }

    /// Whether `user`'s stream can go to a node whose claim fenced
    /// `epoch`: nobody is live here and the stream is that claim's or older.
    fn movable(state: &State, user: &str, epoch: Epoch) -> bool {
        !state.users.contains_key(user)
            && state
                .streams
                .get(user)
                .is_some_and(|stream| stream.epoch <= epoch)
    }

    /// Takes `user`'s stream out to hand over, remembering what it took.
    fn export(state: &mut State, user: &str, now: Instant) -> Option<Moved> {
        let (user, stream) = state.streams.remove_entry(user)?;
        state.kept_bytes -= stream.bytes();
        let moved = stream.export();
        state.moved.insert(user, (moved.mark(), now));
        Some(moved)
    }

    /// `user` was claimed here with `epoch` and its stream is on its way
    /// from another node: envelopes for the user wait for it (within the
    /// stream's bounds) rather than being answered not found.
    pub fn expect(&self, user: Arc<str>, epoch: Epoch) {
        let mut state = self.lock();
        let incoming = state.incoming.entry(user).or_insert(Incoming {
            epoch,
            parked: Vec::new(),
            bytes: 0,
        });
        incoming.epoch = incoming.epoch.max(epoch);
    }

    /// Holds `item` for `target` if its stream is on its way here.
    fn park(&self, state: &mut State, target: &str, item: Queued) -> Delivery {
        let Some(incoming) = state.incoming.get_mut(target) else {
            return Delivery::NotFound(item);
        };
        let len = item.frame.len();
        if incoming.parked.len() >= self.resume.buffer
            || incoming.bytes + len > self.resume.buffer_bytes
        {
            return Delivery::HoldRefused(item);
        }
        incoming.bytes += len;
        incoming.parked.push(item);
        Delivery::Held
    }

    /// Ends the wait for `user`'s stream (claimed here with `epoch`): the
    /// stream another node handed over (`moved`), if it came, becomes the
    /// user's here, continuing its numbering, unless a newer claim
    /// superseded `epoch` meanwhile or the user already has a stream here.
    /// The envelopes that waited for it follow. The user is away until its
    /// connection attaches (a fresh window from `now`).
    pub fn take_over(
        &self,
        user: &str,
        epoch: Epoch,
        moved: Option<Moved>,
        now: Instant,
    ) -> TakenOver {
        let mut guard = self.lock();
        let state = &mut *guard;
        // A kick or the deletion of identities meanwhile ended the wait.
        let ended = !state.incoming.contains_key(user);
        let parked = match state.incoming.get(user) {
            Some(incoming) if incoming.epoch == epoch => state
                .incoming
                .remove(user)
                .map(|incoming| incoming.parked)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let superseded = ended
            || state
                .fences
                .get(user)
                .is_some_and(|(fence, _)| *fence >= epoch)
            || state.users.get(user).is_some_and(|live| live.epoch > epoch);
        let mut taken = TakenOver::default();
        let imported = match moved {
            Some(moved) if superseded || state.streams.contains_key(user) => {
                taken.undelivered = self.discard(moved, now);
                None
            }
            Some(moved) => {
                let unwritten = unwritten(&moved);
                match Stream::import(moved) {
                    Some(mut stream) => match stream.trim(&self.resume) {
                        Some(dropped)
                            if state.kept_bytes + stream.bytes() <= self.resume.memory =>
                        {
                            self.stats.resume_dropped.add(dropped as u64);
                            Some(stream)
                        }
                        // Over this node's bounds with envelopes never
                        // written: answered, as a hold over them is.
                        _ => {
                            taken.undelivered = self.end_refused(stream, now);
                            None
                        }
                    },
                    None => {
                        taken.undelivered = unwritten;
                        None
                    }
                }
            }
            None => None,
        };
        if superseded {
            taken.undelivered.extend(parked);
            return taken;
        }
        taken.installed = imported.is_some();
        let user: Arc<str> = user.into();
        let fresh = !state.streams.contains_key(&user);
        if fresh && imported.is_none() && parked.is_empty() {
            return taken;
        }
        let stream = state
            .streams
            .entry(user.clone())
            .or_insert_with(|| imported.unwrap_or_else(|| Stream::new(resume::session_id())));
        if fresh {
            state.kept_bytes += stream.bytes();
        }
        for item in parked {
            let len = item.frame.len();
            if state.kept_bytes + len > self.resume.memory || !stream.can_hold(len, &self.resume) {
                taken.undelivered.push(item);
                continue;
            }
            let (_, pushed) = stream.push(item, &self.resume, true);
            state.kept_bytes = state.kept_bytes.saturating_add_signed(pushed.bytes);
            if pushed.dropped > 0 {
                self.stats.resume_dropped.add(pushed.dropped as u64);
            }
        }
        if fresh {
            state.moved.remove(&user);
            stream.epoch = epoch;
            if !state.users.contains_key(&user) {
                state.absences += 1;
                let until = now + self.resume.window;
                stream.away = Some((until, state.absences));
                state.away.push_back((until, user, state.absences));
            }
        }
        taken
    }

    /// A handed-over stream that cannot be the user's here (a newer claim
    /// superseded the one it was handed to, or it came too late): returns
    /// what it held never written, to answer; what was written and never
    /// acknowledged is counted lost.
    pub fn discard(&self, moved: Moved, now: Instant) -> Vec<Queued> {
        let unwritten = unwritten(&moved);
        match Stream::import(moved) {
            Some(stream) => self.end_refused(stream, now),
            None => unwritten,
        }
    }

    /// Ends a handed-over stream that is not taken over: returns what it
    /// held never written; what was written and never acknowledged is
    /// counted lost.
    fn end_refused(&self, mut stream: Stream, now: Instant) -> Vec<Queued> {
        stream.away = Some((now, 0));
        let (unwritten, lost, _) = stream.end();
        self.stats.resume_lost.add(lost as u64);
        unwritten
    }

    /// Forgets fences older than `age`: by then every connection they could
    /// refuse has attached or given up (set-up is bounded by the handshake
    /// and stream-open timeouts).
    pub fn prune_fences(&self, age: Duration, now: Instant) {
        let mut state = self.lock();
        state
            .fences
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < age);
        state
            .moved
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < age);
    }

    /// Every live connection's claim.
    pub fn claims(&self) -> Vec<Claim> {
        self.lock()
            .users
            .iter()
            .map(|(user, entry)| Claim {
                user: user.clone(),
                conn: entry.conn,
                epoch: entry.epoch,
                transport: entry.transport,
            })
            .collect()
    }

    /// Removes the user's entry only if it is still connection `conn`.
    pub fn remove_if(&self, user: &str, conn: ConnId) -> bool {
        let mut state = self.lock();
        match state.users.get(user) {
            Some(entry) if entry.conn == conn => {
                state.users.remove(user);
                true
            }
            _ => false,
        }
    }

    /// The one way anything reaches a user: numbers `item` with the next
    /// `seq` of the user's stream and queues it on the live connection
    /// without waiting, or holds it while the user is away. A target whose
    /// queue is full is closed as `SLOW_CONSUMER` and removed (and is away
    /// from then on).
    pub fn deliver(&self, target: &str, item: Queued, kind: Kind) -> Delivery {
        self.deliver_with(target, kind, |_| item)
    }

    /// [`UserClientRegistry::deliver`] of the envelope `make` builds, told
    /// the `seq` it gets when the user has a stream: a frame built with
    /// it (and carrying it in `Queued::seq`) needs no stamping after.
    pub fn deliver_with(
        &self,
        target: &str,
        kind: Kind,
        make: impl FnOnce(Option<u64>) -> Queued,
    ) -> Delivery {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(stream) = state.streams.get_mut(target) else {
            return self.park(state, target, make(None));
        };
        let mut item = make(Some(stream.next_seq()));
        let len = item.frame.len();
        if let Some(entry) = state.users.get(target) {
            let keep = state.kept_bytes + len <= self.resume.memory;
            let mut pushed = Pushed::default();
            let queued = entry.outbox.push_mapped(item, kind == Kind::Own, |item| {
                let (stamped, kept) = stream.push(item, &self.resume, keep);
                stream.queued(stamped.seq);
                pushed = kept;
                stamped
            });
            match queued {
                Ok(()) => {
                    state.kept_bytes = state.kept_bytes.saturating_add_signed(pushed.bytes);
                    if pushed.dropped > 0 {
                        self.stats.resume_dropped.add(pushed.dropped as u64);
                    }
                    return Delivery::Queued;
                }
                Err((Room::Full, item)) => {
                    entry.outbox.close(CloseReason::SlowConsumer);
                    state.users.remove(target);
                    return Delivery::TargetSlow(item);
                }
                // Closing: held as for an away user, until its connection
                // has left.
                Err((Room::Closing, returned)) => item = returned,
            }
        }
        if state.kept_bytes + len > self.resume.memory || !stream.can_hold(len, &self.resume) {
            return Delivery::HoldRefused(item);
        }
        let (_, pushed) = stream.push(item, &self.resume, true);
        state.kept_bytes = state.kept_bytes.saturating_add_signed(pushed.bytes);
        Delivery::Held
    }

    /// Of `items` (envelopes connection `conn` of `user` could not
    /// write), those nobody will write: neither a newer connection of the
    /// user nor a resume.
    pub fn unkept(
        &self,
        user: &str,
        conn: ConnId,
        items: impl IntoIterator<Item = Queued>,
    ) -> Vec<Queued> {
        let state = self.lock();
        let live = state
            .users
            .get(user)
            .is_some_and(|entry| entry.conn != conn);
        let stream = state.streams.get(user);
        let moved = state.moved.get(user).filter(|_| stream.is_none());
        items
            .into_iter()
            .filter(|item| !stream.is_some_and(|stream| stream.takes_care_of(item.seq, live)))
            .filter(|item| !moved.is_some_and(|(moved, _)| moved.took(item.seq)))
            .collect()
    }

    /// The client acknowledged everything up to `seq`.
    pub fn ack(&self, user: &str, seq: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(stream) = state.streams.get_mut(user) {
            let freed = stream.ack(seq);
            state.kept_bytes -= freed;
        }
    }

    /// Connection `conn` of `user` ended: it leaves (unless it already
    /// had), and `leftovers` (its queue, never written) are sorted out.
    /// When no newer connection of the user is live, the user is away or
    /// gone as `ending` says (away from `now` for the window).
    pub fn detach(
        &self,
        user: &str,
        conn: ConnId,
        ending: Ending,
        leftovers: Vec<Queued>,
        now: Instant,
    ) -> Detached {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state
            .users
            .get(user)
            .is_some_and(|entry| entry.conn == conn)
        {
            state.users.remove(user);
        }
        let handing = match state.handing.get(user) {
            Some((waiting_for, _, _)) if *waiting_for == conn => state.handing.remove(user),
            _ => None,
        };
        let mut detached = Detached::default();
        let Some(stream) = state.streams.get_mut(user) else {
            // A stream that moved to another node took them along.
            let moved = state.moved.get(user);
            detached.undelivered = leftovers
                .into_iter()
                .filter(|item| !moved.is_some_and(|(moved, _)| moved.took(item.seq)))
                .collect();
            detached.handoff = handing.map(|(_, _, to)| (to, None));
            return detached;
        };
        // What the stream still keeps is written again on resume.
        let live = state.users.contains_key(user);
        detached.undelivered = leftovers
            .into_iter()
            .filter(|item| !stream.takes_care_of(item.seq, live))
            .collect();
        if let Some((_, epoch, to)) = handing {
            // The connection the hand-off closed has stopped writing: the
            // stream goes now, with its last writes counted in it.
            let moved = if Self::movable(state, user, epoch) {
                Self::export(state, user, now)
            } else {
                None
            };
            let stays = moved.is_none();
            detached.handoff = Some((to, moved));
            if !stays {
                return detached;
            }
        }
        let Some(stream) = state.streams.get_mut(user) else {
            return detached;
        };
        if state.users.contains_key(user) || stream.away.is_some() {
            return detached;
        }
        match ending {
            Ending::Away => {
                state.absences += 1;
                let until = now + self.resume.window;
                stream.away = Some((until, state.absences));
                stream.shrink();
                state.away.push_back((until, user.into(), state.absences));
                detached.away = true;
            }
            Ending::Gone(why) => {
                detached.departed = self.end_stream(state, user, why, false);
            }
        }
        detached
    }

    /// Ends `user`'s stream. With `writing`, the user's live connection is
    /// being closed and still writes its queue: what it was given is its
    /// own to count, written or answered as it leaves, not answered here too.
    fn end_stream(
        &self,
        state: &mut State,
        user: &str,
        why: Gone,
        writing: bool,
    ) -> Option<Departed> {
        let (user, stream) = state.streams.remove_entry(user)?;
        let claim = stream.away.map(|_| stream.epoch);
        let (unwritten, lost, bytes) = if writing {
            stream.end_beside_writer()
        } else {
            stream.end()
        };
        state.kept_bytes -= bytes;
        self.stats.resume_lost.add(lost as u64);
        Some(Departed {
            user,
            why,
            unwritten,
            claim,
        })
    }

    /// Ends the wait for a user's stream on its way here (the user is
    /// gone): what waited for it is answered with `departed`'s envelopes,
    /// and the stream is not taken over when it comes.
    fn stop_waiting(
        departed: Option<Departed>,
        user: &str,
        why: Gone,
        incoming: Incoming,
    ) -> Departed {
        let mut departed = departed.unwrap_or_else(|| Departed {
            user: user.into(),
            why,
            unwritten: Vec::new(),
            claim: None,
        });
        departed.unwritten.extend(incoming.parked);
        departed
    }

    /// Ends the streams of users away past their window by `now`.
    pub fn expire_away(&self, now: Instant) -> Vec<Departed> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut departed = Vec::new();
        while let Some((until, _, _)) = state.away.front() {
            if *until > now {
                break;
            }
            let Some((_, user, absence)) = state.away.pop_front() else {
                break;
            };
            let still_away = state
                .streams
                .get(&user)
                .is_some_and(|stream| stream.away.is_some_and(|(_, a)| a == absence));
            if still_away && !state.users.contains_key(&user) {
                departed.extend(self.end_stream(state, &user, Gone::Expired, false));
            }
        }
        departed
    }

    /// Users away now.
    pub fn away(&self) -> usize {
        self.lock()
            .streams
            .values()
            .filter(|stream| stream.away.is_some())
            .count()
    }

    /// Bytes every stream keeps together.
    pub fn kept_bytes(&self) -> usize {
        self.lock().kept_bytes
    }

    /// Envelopes `user`'s stream keeps (0 without one).
    pub fn kept(&self, user: &str) -> usize {
        self.lock().streams.get(user).map_or(0, Stream::len)
    }

    /// Empties the registry, after `update` has changed its state under
    /// the same lock, and closes every connection with `reason`; returns how
    /// many there were. With `gone`, every user's stream ends too (away
    /// users' included), so nobody is held for.
    fn close_all(
        &self,
        reason: CloseReason,
        gone: Option<Gone>,
        update: impl FnOnce(&mut State),
    ) -> (usize, Vec<Departed>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        update(state);
        let drained: HashMap<Arc<str>, Entry> = state.users.drain().collect();
        let mut departed = Vec::new();
        if let Some(why) = gone {
            let users: Vec<Arc<str>> = state.streams.keys().cloned().collect();
            for user in users {
                let writing = drained.contains_key(&user);
                departed.extend(self.end_stream(state, &user, why, writing));
            }
            state.away.clear();
            for (user, incoming) in state.incoming.drain() {
                departed.push(Self::stop_waiting(None, &user, why, incoming));
            }
        }
        drop(guard);
        for entry in drained.values() {
            entry.outbox.close(reason);
        }
        (drained.len(), departed)
    }

    /// Closes `user`'s live connection as `KICKED` and ends its stream: the
    /// user is gone, as every user is after [`UserClientRegistry::kick_all`]
    /// (the admin's kick of one user). Whether it had a connection or was
    /// away.
    pub fn kick(&self, user: &str) -> (bool, Option<Departed>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let entry = state.users.remove(user);
        let mut departed = self.end_stream(state, user, Gone::Kicked, entry.is_some());
        if let Some(incoming) = state.incoming.remove(user) {
            departed = Some(Self::stop_waiting(departed, user, Gone::Kicked, incoming));
        }
        drop(guard);
        let found = entry.is_some() || departed.is_some();
        if let Some(entry) = entry {
            entry.outbox.close(CloseReason::Kicked);
        }
        (found, departed)
    }

    /// Closes every connection as `KICKED`, and every connection already
    /// authenticated but not attached yet as it attaches; every user is
    /// gone.
    pub fn kick_all(&self) -> (usize, Vec<Departed>) {
        self.close_all(CloseReason::Kicked, Some(Gone::Kicked), |state| {
            state.kicks += 1;
        })
    }

    /// Closes every connection as `KICKED` after every identity has been
    /// deleted; connections on their way in are refused as
    /// `UNAUTHENTICATED`; every user is gone.
    pub fn revoke_all(&self) -> (usize, Vec<Departed>) {
        self.close_all(CloseReason::Kicked, Some(Gone::Deleted), |state| {
            state.deletions += 1;
        })
    }

    /// Closes every connection as `SHUTDOWN` and refuses new ones for good.
    pub fn stop(&self) -> usize {
        self.close_all(CloseReason::Shutdown, None, |state| state.accepting = false)
            .0
    }

    /// Whether new connections are still taken (false once shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.lock().accepting
    }

    /// Whether `user` has a live connection.
    pub fn contains(&self, user: &str) -> bool {
        self.lock().users.contains_key(user)
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.lock().users.len()
    }

    /// Whether nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live connections, sorted by username.
    pub fn snapshot(&self) -> Vec<ConnectedUser> {
        let state = self.lock();
        let mut users: Vec<ConnectedUser> = state
            .users
            .iter()
            .map(|(name, entry)| ConnectedUser {
                username: name.clone(),
                connection_id: entry.conn,
                transport: entry.transport,
                connected_at: entry
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                queued: Some(entry.outbox.len()),
                node: None,
            })
            .collect();
        drop(state);
        users.sort_by(|a, b| a.username.cmp(&b.username));
        users
    }
}

/// The envelopes of a moved stream never written anywhere.
fn unwritten(moved: &Moved) -> Vec<Queued> {
    moved
        .kept
        .iter()
        .filter(|kept| kept.seq > moved.written)
        .map(|kept| Queued {
            frame: kept.frame.clone(),
            origin: kept.origin.clone(),
            accepted_at: kept.accepted_at,
            seq: kept.seq,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::net::Ipv4Addr;
    use std::sync::atomic::Ordering;

    fn entry(conn: ConnId, capacity: usize) -> Entry {
        Entry {
            conn,
            epoch: conn,
            transport: Transport::WebSocket,
            outbox: Arc::new(Outbox::new(capacity, 1 << 20)),
            since: SystemTime::now(),
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// The attach of a connection that does not resume, as a test needs it.
    trait Insert {
        fn insert(
            &self,
            user: Arc<str>,
            entry: Entry,
            grant: Grant,
        ) -> Result<Option<Entry>, CloseReason>;
    }

    impl Insert for UserClientRegistry {
        fn insert(
            &self,
            user: Arc<str>,
            entry: Entry,
            grant: Grant,
        ) -> Result<Option<Entry>, CloseReason> {
            self.attach(user, entry, grant, None, |_| Bytes::from_static(b"{}\n"))
                .map(|attached| attached.replaced)
        }
    }

    fn item() -> Queued {
        Queued::own(Bytes::from_static(b"{}\n"))
    }

    #[test]
    fn newest_wins_and_old_is_told_replaced() {
        let registry = UserClientRegistry::default();
        let first = entry(1, 8);
        let grant = registry.grant();
        registry
            .insert("alice".into(), first.clone(), grant)
            .unwrap();
        let old = registry
            .insert("alice".into(), entry(2, 8), grant)
            .unwrap()
            .unwrap();
        assert_eq!(old.conn, 1);
        assert_eq!(first.outbox.closing(), Some(CloseReason::Replaced));
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn an_older_claim_never_replaces_a_newer_one() {
        let registry = UserClientRegistry::default();
        let grant = registry.grant();
        let newer = entry(5, 8);
        registry
            .insert("alice".into(), newer.clone(), grant)
            .unwrap();
        assert_eq!(
            registry
                .insert("alice".into(), entry(4, 8), grant)
                .unwrap_err(),
            CloseReason::Replaced
        );
        assert_eq!(newer.outbox.closing(), None);
        assert_eq!(registry.claims()[0].epoch, 5);
    }

    #[test]
    fn a_fence_closes_only_what_it_names_and_refuses_it_on_the_way_in() {
        let registry = UserClientRegistry::default();
        let grant = registry.grant();
        let live = entry(7, 8);
        registry
            .insert("alice".into(), live.clone(), grant)
            .unwrap();
        let now = Instant::now();
        assert!(
            !registry.fence("alice", 6, now).0,
            "an older epoch leaves it"
        );
        assert_eq!(live.outbox.closing(), None);
        assert!(registry.fence("alice", 7, now).0);
        assert_eq!(live.outbox.closing(), Some(CloseReason::Replaced));
        assert!(!registry.contains("alice"));
        // A connection that claimed epoch 7 but attaches after the fence.
        assert_eq!(
            registry
                .insert("alice".into(), entry(7, 8), grant)
                .unwrap_err(),
            CloseReason::Replaced
        );
        registry.insert("alice".into(), entry(8, 8), grant).unwrap();
        registry.prune_fences(Duration::from_secs(60), now + Duration::from_secs(60));
        assert!(!registry.fence("bob", 1, now).0, "nobody to close");
    }

    #[test]
    fn late_cleanup_of_replaced_connection_keeps_the_new_one() {
        let registry = UserClientRegistry::default();
        let grant = registry.grant();
        registry.insert("alice".into(), entry(1, 8), grant).unwrap();
        registry.insert("alice".into(), entry(2, 8), grant).unwrap();
        assert!(!registry.remove_if("alice", 1));
        assert!(registry.contains("alice"));
        assert!(registry.remove_if("alice", 2));
        assert!(!registry.contains("alice"));
    }

    #[test]
    fn deliver_reports_missing_targets() {
        let registry = UserClientRegistry::default();
        assert!(matches!(
            registry.deliver("bob", item(), Kind::Forwarded),
            Delivery::NotFound(_)
        ));
    }

    #[test]
    fn full_target_is_closed_as_slow_consumer_and_removed() {
        let registry = UserClientRegistry::default();
        // Room for the WELCOME and one envelope.
        let bob = entry(7, 2);
        registry
            .insert("bob".into(), bob.clone(), registry.grant())
            .unwrap();
        assert!(matches!(
            registry.deliver("bob", item(), Kind::Forwarded),
            Delivery::Queued
        ));
        assert!(matches!(
            registry.deliver("bob", item(), Kind::Forwarded),
            Delivery::TargetSlow(_)
        ));
        assert_eq!(bob.outbox.closing(), Some(CloseReason::SlowConsumer));
        assert!(!registry.contains("bob"));
        assert!(
            matches!(
                registry.deliver("bob", item(), Kind::Forwarded),
                Delivery::Held
            ),
            "a slow consumer is away, not gone"
        );
    }

    #[test]
    fn stop_closes_everyone_and_refuses_newcomers() {
        let registry = UserClientRegistry::default();
        let a = entry(1, 8);
        registry
            .insert("a".into(), a.clone(), registry.grant())
            .unwrap();
        assert_eq!(registry.stop(), 1);
        assert_eq!(a.outbox.closing(), Some(CloseReason::Shutdown));
        let late = entry(2, 8);
        assert_eq!(
            registry
                .insert("b".into(), late, registry.grant())
                .unwrap_err(),
            CloseReason::Shutdown
        );
        assert!(registry.is_empty());
    }

    #[test]
    fn concurrent_replacements_leave_exactly_one_live_connection() {
        let registry = Arc::new(UserClientRegistry::default());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let registry = registry.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let conn = t * 1000 + i;
                        // Refused only for an older claim than the live one.
                        match registry.insert("alice".into(), entry(conn, 8), registry.grant()) {
                            Ok(_) | Err(CloseReason::Replaced) => {}
                            Err(other) => panic!("{other:?}"),
                        }
                        registry.remove_if("alice", conn.saturating_sub(1));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(registry.len() <= 1);
    }

    #[test]
    fn a_connection_authenticated_before_a_kick_or_deletion_cannot_attach_after_it() {
        let registry = UserClientRegistry::default();
        let before_kick = registry.grant();
        registry.kick_all();
        assert_eq!(
            registry
                .insert("a".into(), entry(1, 8), before_kick)
                .unwrap_err(),
            CloseReason::Kicked
        );
        let before_deletion = registry.grant();
        assert_eq!(registry.revoke_all().0, 0);
        assert_eq!(
            registry
                .insert("a".into(), entry(2, 8), before_deletion)
                .unwrap_err(),
            CloseReason::Unauthenticated
        );
        registry
            .insert("a".into(), entry(3, 8), registry.grant())
            .unwrap();
        assert!(registry.contains("a"));
    }

    fn to() -> Handing {
        Handing {
            to: "node-b".into(),
            by: 4,
        }
    }

    /// Hands `user`'s stream over, its connection closed and gone.
    fn handed_off(registry: &UserClientRegistry, user: &str, epoch: Epoch, now: Instant) -> Moved {
        assert!(matches!(
            registry.hand_off(user, epoch, to(), now).1,
            HandOff::Later
        ));
        let detached = registry.detach(user, epoch, Ending::Away, Vec::new(), now);
        detached.handoff.unwrap().1.unwrap()
    }

    #[test]
    fn a_stream_handed_to_another_node_leaves_nothing_to_answer_here() {
        let registry = UserClientRegistry::default();
        let now = Instant::now();
        let bob = entry(3, 8);
        registry
            .insert("bob".into(), bob.clone(), registry.grant())
            .unwrap();
        for _ in 0..2 {
            registry.deliver("bob", item(), Kind::Forwarded);
        }
        let (closed, handoff) = registry.hand_off("bob", 3, to(), now);
        assert!(closed);
        assert_eq!(bob.outbox.closing(), Some(CloseReason::Replaced));
        // The connection may still be writing: the stream waits for it.
        assert!(matches!(handoff, HandOff::Later));
        assert!(matches!(
            registry.deliver("bob", item(), Kind::Forwarded),
            Delivery::Held
        ));
        // Its connection's queue goes with it: nothing to answer (but the
        // WELCOME, outside the stream).
        let left = bob.outbox.seal(CloseReason::Replaced);
        assert_eq!(left.len(), 3);
        let detached = registry.detach("bob", 3, Ending::Away, left, now);
        let seqs: Vec<u64> = detached.undelivered.iter().map(|item| item.seq).collect();
        assert_eq!(seqs, [0]);
        assert!(detached.departed.is_none() && !detached.away);
        let (handing, moved) = detached.handoff.expect("the stream goes now");
        assert_eq!(handing, to());
        assert_eq!(moved.expect("the stream moved").kept.len(), 3);
        assert_eq!(registry.kept_bytes(), 0);
        assert!(matches!(
            registry.deliver("bob", item(), Kind::Forwarded),
            Delivery::NotFound(_)
        ));
        // A fence older than the stream hands nothing over.
        registry
            .insert("carol".into(), entry(9, 8), registry.grant())
            .unwrap();
        assert!(matches!(
            registry.hand_off("carol", 8, to(), now).1,
            HandOff::Now(None)
        ));
    }

    #[test]
    fn a_handed_over_stream_is_taken_over_with_what_waited_for_it() {
        let there = UserClientRegistry::default();
        there
            .insert("bob".into(), entry(3, 8), there.grant())
            .unwrap();
        there.deliver("bob", item(), Kind::Forwarded);
        let now = Instant::now();
        let moved = handed_off(&there, "bob", 3, now);
        let here = UserClientRegistry::default();
        here.expect("bob".into(), 4);
        assert!(matches!(
            here.deliver("bob", item(), Kind::Forwarded),
            Delivery::Held
        ));
        let taken = here.take_over("bob", 4, Some(moved), now);
        assert!(taken.installed && taken.undelivered.is_empty());
        assert_eq!(here.kept("bob"), 2);
        assert_eq!(here.away(), 1, "away until its connection attaches");
        let bob = entry(4, 8);
        let attached = here
            .attach("bob".into(), bob.clone(), here.grant(), Some(0), |_| {
                Bytes::from_static(b"{}\n")
            })
            .unwrap();
        assert!(attached.resumption.resumed);
        assert_eq!(attached.resumption.replayed, 2);
        assert_eq!(here.away(), 0);
    }

    #[test]
    fn a_stream_for_a_superseded_claim_is_answered_not_taken_over() {
        let there = UserClientRegistry::default();
        there
            .insert("bob".into(), entry(3, 8), there.grant())
            .unwrap();
        there.deliver("bob", item(), Kind::Forwarded);
        let now = Instant::now();
        let moved = handed_off(&there, "bob", 3, now);
        let here = UserClientRegistry::default();
        here.expect("bob".into(), 4);
        here.deliver("bob", item(), Kind::Forwarded);
        // A newer claim elsewhere fenced claim 4 meanwhile.
        here.fence("bob", 4, now);
        let taken = here.take_over("bob", 4, Some(moved), now);
        assert!(!taken.installed);
        assert_eq!(
            taken.undelivered.len(),
            2,
            "the moved one and the waiting one"
        );
        assert_eq!(here.kept("bob"), 0);
        assert_eq!(here.kept_bytes(), 0);
    }

    #[test]
    fn a_stream_started_for_envelopes_that_waited_in_vain_resumes_nothing() {
        let here = UserClientRegistry::default();
        let now = Instant::now();
        here.expect("bob".into(), 4);
        for _ in 0..2 {
            assert!(matches!(
                here.deliver("bob", item(), Kind::Forwarded),
                Delivery::Held
            ));
        }
        // The old node never handed the stream over.
        let taken = here.take_over("bob", 4, None, now);
        assert!(!taken.installed && taken.undelivered.is_empty());
        // The client's resume=1 names the old stream's numbering: this
        // stream's 1 and 2 were never written, so both follow WELCOME.
        let bob = entry(4, 8);
        let attached = here
            .attach("bob".into(), bob.clone(), here.grant(), Some(1), |_| {
                Bytes::from_static(b"{}\n")
            })
            .unwrap();
        assert!(!attached.resumption.resumed);
        assert_eq!(attached.resumption.replayed, 2);
        let seqs: Vec<u64> = bob
            .outbox
            .seal(CloseReason::Replaced)
            .iter()
            .map(|item| item.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    #[test]
    fn a_resume_on_the_new_node_proves_what_the_old_connection_wrote() {
        let there = UserClientRegistry::default();
        let now = Instant::now();
        let bob = entry(3, 8);
        there
            .insert("bob".into(), bob.clone(), there.grant())
            .unwrap();
        for _ in 0..3 {
            there.deliver("bob", item(), Kind::Forwarded);
        }
        // Its writer took WELCOME and 1..3; the client read 1 and 2, and
        // the write failed as the connection died (nothing recorded).
        let (batch, _) = futures::executor::block_on(bob.outbox.next_batch());
        assert!(matches!(
            there.hand_off("bob", 3, to(), now).1,
            HandOff::Later
        ));
        let detached = there.detach("bob", 3, Ending::Away, batch.into(), now);
        let moved = detached.handoff.unwrap().1.unwrap();
        assert_eq!((moved.written, moved.kept.len()), (0, 3));
        let here = UserClientRegistry::default();
        here.expect("bob".into(), 4);
        assert!(here.take_over("bob", 4, Some(moved), now).installed);
        let attached = here
            .attach("bob".into(), entry(4, 8), here.grant(), Some(2), |_| {
                Bytes::from_static(b"{}\n")
            })
            .unwrap();
        assert!(attached.resumption.resumed);
        assert_eq!(attached.resumption.replayed, 1);
        let proved: Vec<u64> = attached.proved.iter().map(|item| item.seq).collect();
        assert_eq!(proved, [1, 2]);
        assert_eq!(attached.written.load(Ordering::Relaxed), 2);
        here.ack("bob", 2);
        assert_eq!(here.kept("bob"), 1, "the ACK frees what the resume proved");
    }

    #[test]
    fn a_kick_or_deletion_during_a_hand_off_ends_it() {
        let there = UserClientRegistry::default();
        let now = Instant::now();
        for (user, conn) in [("bob", 3), ("carol", 5)] {
            there
                .insert(user.into(), entry(conn, 8), there.grant())
                .unwrap();
            there.deliver(user, item(), Kind::Forwarded);
        }
        let bob = handed_off(&there, "bob", 3, now);
        let carol = handed_off(&there, "carol", 5, now);
        let here = UserClientRegistry::default();
        here.expect("bob".into(), 4);
        here.expect("carol".into(), 6);
        for user in ["bob", "carol"] {
            assert!(matches!(
                here.deliver(user, item(), Kind::Forwarded),
                Delivery::Held
            ));
        }
        let (found, departed) = here.kick("bob");
        assert!(found);
        let departed = departed.expect("what waited for bob is answered");
        assert_eq!((departed.unwritten.len(), departed.why), (1, Gone::Kicked));
        let taken = here.take_over("bob", 4, Some(bob), now);
        assert!(!taken.installed);
        assert_eq!(taken.undelivered.len(), 1, "what the stream held, answered");
        let (_, departed) = here.revoke_all();
        assert_eq!(departed.len(), 1);
        assert_eq!(departed[0].unwritten.len(), 1);
        let taken = here.take_over("carol", 6, Some(carol), now);
        assert!(!taken.installed && taken.undelivered.len() == 1);
        assert_eq!(
            (here.kept("bob"), here.kept("carol"), here.away()),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_handed_over_stream_keeps_to_this_nodes_bounds() {
        let there = UserClientRegistry::default();
        let now = Instant::now();
        there
            .insert("bob".into(), entry(3, 8), there.grant())
            .unwrap();
        for _ in 0..3 {
            there.deliver("bob", item(), Kind::Forwarded);
        }
        let moved = handed_off(&there, "bob", 3, now);
        let small = |buffer, memory| {
            UserClientRegistry::new(
                ResumeLimits {
                    buffer,
                    memory,
                    ..ResumeLimits::default()
                },
                Arc::default(),
            )
        };
        let here = small(2, 1 << 20);
        here.expect("bob".into(), 4);
        let taken = here.take_over("bob", 4, Some(moved), now);
        assert!(!taken.installed, "three never written, two allowed");
        assert_eq!(taken.undelivered.len(), 3);
        assert_eq!(here.kept_bytes(), 0);
        there
            .insert("carol".into(), entry(5, 8), there.grant())
            .unwrap();
        there.deliver("carol", item(), Kind::Forwarded);
        let moved = handed_off(&there, "carol", 5, now);
        let here = small(8, 1);
        here.expect("carol".into(), 6);
        let taken = here.take_over("carol", 6, Some(moved), now);
        assert!(!taken.installed, "over --resume-memory");
        assert_eq!(taken.undelivered.len(), 1);
    }
}
