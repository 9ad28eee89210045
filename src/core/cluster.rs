//! The cluster seam: what the core needs from the other gateways of a
//! cluster, and the books it keeps of the envelopes it sent them.
//!
//! A node routes an envelope to a user connected elsewhere by handing it to
//! the [`Cluster`] backend, which never makes the sender wait: it queues the
//! envelope for a task of its own. Every such envelope is remembered
//! ([`InFlight`]) until the target's node says how it ended, and answered to
//! its sender if it did not end written; one whose fate is unknown when its
//! deadline passes is answered `UNCONFIRMED`. So no envelope a node
//! accepts is lost silently, whatever happens to the link between nodes.
//!
//! One live connection per user holds cluster-wide through epochs: each
//! connection claims its user with an epoch the backend allocates
//! atomically, higher for newer claims; a node closes a connection only on
//! a fence naming that connection's epoch or a later one, so a late message
//! can never evict a newer connection.
//!
//! A user's stream follows it: the node where the user connects anew asks
//! the node of its previous claim for the user's stream along with the
//! fence ([`Cluster::fence`]), and that node hands it over
//! ([`Cluster::hand_off`]) rather than ending it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::clock::Clock;
use super::ids::{Epoch, NodeId};
use super::outbox::LocalSender;
use super::resume::Moved;
use super::rooms::RoomChange;
use super::transport::Transport;

/// An envelope accepted here for a user with no connection here.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its id in this node's [`InFlight`] book.
    pub id: u64,
    /// The target user.
    pub target: Arc<str>,
    /// The complete envelope, as the target will read it.
    pub frame: Bytes,
    /// Look the target's route up afresh rather than in a cache: the node
    /// the cache named said the target is not there.
    pub fresh_route: bool,
}

/// How an envelope sent to another node ended, as that node (or the
/// backend, when it could not be sent) tells the sender's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fate", content = "why", rename_all = "snake_case")]
pub enum Fate {
    /// Written to the target's connection.
    Written,
    /// The node the route named has no connection for the target (it moved
    /// or left a moment ago).
    NotHere,
    /// The target is connected nowhere (no route, or its node is gone).
    NotFound,
    /// The target's queue was full: it was disconnected as a slow consumer.
    Slow,
    /// Queued on the target's connection, which closed before writing it.
    Undelivered(String),
    /// The cluster could not carry it (Redis unreachable).
    Unavailable(String),
    /// Held for its target while the target was away, and the target did
    /// not come back within `--resume-window`.
    Expired(String),
}

/// A claim on a user, as the backend made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterClaim {
    /// Its epoch.
    pub epoch: Epoch,
    /// The claim it superseded on another node, to fence there.
    pub previous: Option<(NodeId, Epoch)>,
}

/// A user's stream on its way from the node of its previous claim to the
/// node where the user connected anew.
#[derive(Debug)]
pub struct Handoff {
    /// The user.
    pub user: Arc<str>,
    /// The claim it is handed to.
    pub epoch: Epoch,
    /// The stream; `None` when the node held none for the user.
    pub stream: Option<Moved>,
}

/// Why a claim could not be made.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    /// The cluster's shared state cannot be reached.
    #[error("the cluster is unreachable: {0}")]
    Unavailable(String),
}

/// An admin action every node carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Broadcast {
    /// Close every connection as `KICKED`.
    KickAll,
    /// Every identity was deleted: close every connection, and refuse those
    /// on their way in.
    RevokeAll,
}

/// A live connection somewhere in the cluster, for the admin listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterUser {
    /// The user.
    pub username: Arc<str>,
    /// The node its connection is on.
    pub node: NodeId,
    /// The connection's id on that node.
    pub connection_id: u64,
    /// Its transport.
    pub transport: Transport,
    /// Seconds since the Unix epoch when it connected.
    pub connected_at: u64,
}

/// A live node, as `GET /v1/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its `--node-id`.
    pub node: NodeId,
    /// Where its WebTransport endpoint is reached (`host:port`).
    pub webtransport: String,
    /// Seconds since the Unix epoch when it started.
    pub started_at: u64,
    /// Its live connections when it last renewed its lease.
    pub connections: usize,
}

/// What cluster queries return.
pub type ClusterFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send + 'a>>;

/// The rest of the cluster, as the core sees it. Nothing here makes a
/// connection's task wait on the network except claims (a connection's
/// set-up) and the admin queries.
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// This node's name.
    fn node(&self) -> &NodeId;

    /// Queues an envelope for the target's node; hands it back at once when
    /// the cluster cannot carry it now (its link is down or its queue full).
    fn forward(&self, outgoing: Outgoing) -> Result<(), Outgoing>;

    /// Tells `node` how the envelope it numbered `id` ended here.
    fn settle(&self, node: &NodeId, id: u64, fate: Fate);

    /// Claims `user` for a connection on this node; returns the claim's
    /// epoch, and the claim it superseded on another node (for the caller
    /// to fence there).
    fn claim<'a>(
        &'a self,
        user: &'a str,
        connection_id: u64,
        transport: Transport,
    ) -> ClusterFuture<'a, ClusterClaim>;

    /// Tells `node` that this node's claim `by` supersedes its claim
    /// `epoch` on `user`: it closes that connection and hands the user's
    /// stream over (see [`Hub::hand_off`](super::hub::Hub::hand_off)). Resolves
    /// to whether the node heard it (false: it is gone, or unreachable).
    fn fence<'a>(
        &'a self,
        node: &'a NodeId,
        user: &'a str,
        epoch: Epoch,
        by: Epoch,
    ) -> ClusterFuture<'a, bool>;

    /// Queues `handoff` for `node`; hands it back at once when the cluster
    /// cannot carry it now.
    fn hand_off(&self, _node: &NodeId, handoff: Handoff) -> Result<(), Handoff> {
        Err(handoff)
    }

    /// Gives up the claim `epoch` on `user`, unless a newer one replaced it.
    fn release(&self, user: &str, epoch: Epoch);

    /// Has every other node carry out `command` (this node already has).
    fn broadcast(&self, command: Broadcast) -> ClusterFuture<'_, ()>;

    /// Every live connection in the cluster.
    fn connected(&self) -> ClusterFuture<'_, Vec<ClusterUser>>;

    /// Every live node.
    fn nodes(&self) -> ClusterFuture<'_, Vec<NodeInfo>>;

    /// Whether this node's claims on its own users are known to hold: false
    /// after the node was paused, until it has checked them again (another
    /// node may hold a user meanwhile). Asked before every local delivery.
    fn current(&self) -> bool;

    /// `Ok` while envelopes can flow between nodes; else why not.
    fn readiness(&self) -> Result<(), String>;

    /// The shared store's primary and its failovers, for the metrics.
    fn primary(&self) -> Option<PrimaryFacts> {
        None
    }

    /// Queues a change to rooms for the shared state, which tells every
    /// node once it is made (see [`RoomChange`]); hands it back when the
    /// cluster cannot carry it now.
    fn change_rooms(&self, change: RoomChange) -> Result<(), RoomChange> {
        Err(change)
    }

    /// Queues a room envelope (`frame`, from `sender`) for `node`, which
    /// writes it to its members of `room`: once per node, not per member.
    /// False when the cluster cannot carry it now.
    fn forward_room(&self, _node: &NodeId, _room: &str, _sender: &str, _frame: Bytes) -> bool {
        false
    }

    /// Has every other node close `user`'s connection as `KICKED`.
    fn kick(&self, _user: &str) -> ClusterFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// What a node knows of the primary it writes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrimaryFacts {
    /// `host:port`, empty while none is known.
    pub address: String,
    /// Switches of primary seen since the node started.
    pub failovers: u64,
    /// Time this node spent unable to carry envelopes to other nodes.
    pub unavailable: Duration,
}

/// An envelope sent to another node, remembered until it is settled.
#[derive(Debug)]
pub struct Pending {
    /// Who sent it (to answer them).
    pub sender: LocalSender,
    /// The target user.
    pub target: Arc<str>,
    /// The envelope (to read its type for an answer, or to send again).
    pub frame: Bytes,
    /// Whether it has already been sent again after a `NotHere`.
    pub retried: bool,
    /// Held here for a user whose stream then moved to another node: its
    /// fate is that node's to count (this node counted it moved).
    pub moved: bool,
}

#[derive(Debug, Default)]
struct Book {
    next_id: u64,
    pending: HashMap<u64, (Pending, Instant)>,
    /// Deadlines in the order they fall (all envelopes get the same time).
    deadlines: VecDeque<(Instant, u64)>,
}

/// The envelopes this node sent to others and has not heard back about.
#[derive(Debug)]
pub struct InFlight {
    book: Mutex<Book>,
    timeout: Duration,
    clock: Clock,
}

impl InFlight {
    /// A book whose envelopes are given up after `timeout` of `clock`.
    pub fn new(timeout: Duration, clock: Clock) -> Self {
        Self {
            book: Mutex::new(Book::default()),
            timeout,
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // Every update is a single map or queue operation.
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers an envelope about to be sent; returns its id.
    pub fn insert(&self, pending: Pending) -> u64 {
        self.insert_later(pending, Duration::ZERO)
    }

    /// [`InFlight::insert`] for an envelope whose fate may take `extra`
    /// longer than the timeout to come back (one held in a stream handed to
    /// another node waits out the user's resume window there first).
    pub fn insert_later(&self, pending: Pending, extra: Duration) -> u64 {
        let deadline = self.clock.now() + self.timeout + extra;
        let mut book = self.lock();
        book.next_id += 1;
        let id = book.next_id;
        book.pending.insert(id, (pending, deadline));
        // Deadlines stay sorted: nearly always at the end.
        let at = book.deadlines.partition_point(|(at, _)| *at <= deadline);
        book.deadlines.insert(at, (deadline, id));
        id
    }

    /// Puts back an envelope taken out to be sent again, under its old id
    /// and deadline.
    pub fn restore(&self, id: u64, pending: Pending, deadline: Instant) {
        self.lock().pending.insert(id, (pending, deadline));
    }

    /// Takes the envelope `id` out of the book (it has been settled); `None`
    /// if it already was (or its deadline passed).
    pub fn take(&self, id: u64) -> Option<(Pending, Instant)> {
        self.lock().pending.remove(&id)
    }

    /// Takes out every envelope whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<Pending> {
        let mut book = self.lock();
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = book.deadlines.front() {
            if deadline > now {
                break;
            }
            book.deadlines.pop_front();
            if let Some((pending, _)) = book.pending.remove(&id) {
                expired.push(pending);
            }
        }
        expired
    }

    /// Envelopes still waiting for their fate.
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    fn pending(target: &str) -> Pending {
        Pending {
            sender: LocalSender {
                user: "alice".into(),
                conn: 1,
            },
            target: target.into(),
            frame: Bytes::from_static(b"{}\n"),
            retried: false,
            moved: false,
        }
    }

    #[test]
    fn settled_envelopes_leave_the_book_once() {
        let book = InFlight::new(Duration::from_secs(60), Clock::system());
        let first = book.insert(pending("bob"));
        let second = book.insert(pending("carol"));
        assert_ne!(first, second);
        assert_eq!(book.len(), 2);
        assert_eq!(book.take(first).unwrap().0.target.as_ref(), "bob");
        assert!(book.take(first).is_none(), "settled once");
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn unsettled_envelopes_expire_in_order_and_settled_ones_never() {
        let manual = ManualClock::new();
        let clock = manual.clock();
        let book = InFlight::new(Duration::from_millis(10), clock.clone());
        let first = book.insert(pending("bob"));
        book.insert(pending("carol"));
        book.take(first);
        manual.advance(Duration::from_millis(9));
        assert!(book.expired(clock.now()).is_empty(), "not yet");
        manual.advance(Duration::from_millis(1));
        let expired = book.expired(clock.now());
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].target.as_ref(), "carol");
        assert!(book.is_empty());
    }

    #[test]
    fn a_restored_envelope_keeps_its_deadline() {
        let book = InFlight::new(Duration::from_millis(10), Clock::system());
        let id = book.insert(pending("bob"));
        let (mut taken, deadline) = book.take(id).unwrap();
        taken.retried = true;
        book.restore(id, taken, deadline);
        let expired = book.expired(deadline);
        assert_eq!(expired.len(), 1);
        assert!(expired[0].retried);
    }

    #[test]
    fn fates_travel_as_tagged_json() {
        let json = serde_json::to_string(&Fate::Undelivered("closed".into())).unwrap();
        assert_eq!(json, r#"{"fate":"undelivered","why":"closed"}"#);
        let back: Fate = serde_json::from_str(r#"{"fate":"written"}"#).unwrap();
        assert_eq!(back, Fate::Written);
    }
}
