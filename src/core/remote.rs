//! The hub's side of a cluster: envelopes sent to other nodes and how they
//! ended, other nodes' envelopes delivered here, fences and broadcasts.
//! The cluster backend calls these when it hears from the other nodes.

use std::sync::Arc;

use bytes::Bytes;

use super::cluster::{Broadcast, Cluster, Fate, Handoff, Outgoing, Pending};
use super::envelope::{ErrorDetail, Inbound, error_frame};
use super::hub::Hub;
use super::ids::{Epoch, NodeId};
use super::outbox::{LocalSender, Origin, Queued};
use super::registry::{Claim, Delivery, HandOff, Handing, Kind};
use super::resume::Moved;
use super::wire::ErrorType;

/// What a sender is told of an envelope whose target's stream moved to
/// another node that could not take it over.
const NOT_TAKEN_OVER: &str =
    "the target connected to another node, which could not take its stream over";

impl Hub {
    /// Sends an envelope for `target`, not connected here, to the cluster.
    /// False when the cluster cannot carry it now (answered by the caller).
    pub(super) fn forward_remote(&self, sender: &LocalSender, target: &str, frame: Bytes) -> bool {
        let Some(cluster) = self.cluster() else {
            return false;
        };
        let target: Arc<str> = target.into();
        let id = self.in_flight_envelopes().insert(Pending {
            sender: sender.clone(),
            target: target.clone(),
            frame: frame.clone(),
            retried: false,
            moved: false,
        });
        let outgoing = Outgoing {
            id,
            target,
            frame,
            fresh_route: false,
        };
        if cluster.forward(outgoing).is_err() {
            self.in_flight_envelopes().take(id);
            self.stats().cluster_unavailable.inc();
            return false;
        }
        self.stats().sent_remote.inc();
        true
    }

    /// How an envelope this node sent ended (told by the target's node, or
    /// by the backend when it could not be sent). Answers the sender unless
    /// it was written; a target that moved is looked up again once.
    pub fn settled(&self, id: u64, fate: Fate) {
        let Some((mut pending, deadline)) = self.in_flight_envelopes().take(id) else {
            // Its deadline passed: the sender was told UNCONFIRMED.
            self.stats().remote_late.inc();
            return;
        };
        let (error, message) = match fate {
            Fate::Written => {
                if !pending.moved {
                    self.stats().remote_written.inc();
                }
                return;
            }
            Fate::NotHere if !pending.retried => {
                pending.retried = true;
                let outgoing = Outgoing {
                    id,
                    target: pending.target.clone(),
                    frame: pending.frame.clone(),
                    fresh_route: true,
                };
                self.in_flight_envelopes().restore(id, pending, deadline);
                let sent = self.cluster().is_some_and(|c| c.forward(outgoing).is_ok());
                if !sent && let Some((pending, _)) = self.in_flight_envelopes().take(id) {
                    self.answer_sender(
                        &pending,
                        ErrorType::ClusterUnavailable,
                        "the other nodes cannot be reached now".to_owned(),
                    );
                }
                return;
            }
            Fate::NotHere | Fate::NotFound => (
                ErrorType::TargetNotFound,
                format!("user \"{}\" is not connected", pending.target),
            ),
            Fate::Slow => (
                ErrorType::TargetSlow,
                format!(
                    "user \"{}\" was not reading its envelopes and has been disconnected",
                    pending.target
                ),
            ),
            Fate::Undelivered(why) => (
                ErrorType::Undelivered,
                format!(
                    "the envelope for \"{}\" was not delivered: {why}",
                    pending.target
                ),
            ),
            Fate::Unavailable(why) => (
                ErrorType::ClusterUnavailable,
                format!("the other nodes cannot be reached now: {why}"),
            ),
            Fate::Expired(why) => (
                ErrorType::Expired,
                format!("the envelope for \"{}\" expired: {why}", pending.target),
            ),
        };
        self.answer_sender(&pending, error, message);
    }

    /// The route of the envelope `id` this node sent names this node
    /// itself: its target is on its way in here (its stream handed over),
    /// or left a moment ago. Delivered here as if this node had received
    /// it through the cluster (it waits for the stream, is held or
    /// queued); only a target unknown here too is looked up again once,
    /// then answered.
    pub fn routed_here(&self, id: u64) {
        let Some((pending, deadline)) = self.in_flight_envelopes().take(id) else {
            self.stats().remote_late.inc();
            return;
        };
        let item = Queued {
            frame: pending.frame.clone(),
            origin: Some(Origin::Local(pending.sender.clone())),
            accepted_at: Some(self.clock().now()),
            seq: 0,
        };
        let fate = match self
            .registry()
            .deliver(&pending.target, item, Kind::Forwarded)
        {
            Delivery::Queued | Delivery::Held => {
                // Settled as written by this node's cluster books, and
                // received by its own, like another node's envelope.
                self.stats().remote_written.inc();
                self.stats().remote_in.inc();
                return;
            }
            Delivery::NotFound(_) => Fate::NotHere,
            Delivery::HoldRefused(_) => Fate::NotFound,
            Delivery::TargetSlow(_) => Fate::Slow,
        };
        self.in_flight_envelopes().restore(id, pending, deadline);
        self.settled(id, fate);
    }

    /// Answers every envelope sent to another node whose deadline has
    /// passed without word of its fate: `UNCONFIRMED`.
    pub fn expire_remote(&self) -> usize {
        let expired = self.in_flight_envelopes().expired(self.clock().now());
        let timeout = self.limits().delivery_timeout;
        for pending in &expired {
            if !pending.moved {
                self.stats().remote_unconfirmed.inc();
            }
            self.answer_sender(
                pending,
                ErrorType::Unconfirmed,
                format!(
                    "the envelope for \"{}\" went to another node, which did not confirm it within {} ms; it may or may not have been delivered",
                    pending.target,
                    timeout.as_millis()
                ),
            );
        }
        expired.len()
    }

    /// Envelopes sent to other nodes and not settled yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight_envelopes().len()
    }

    fn answer_sender(&self, pending: &Pending, error: ErrorType, message: String) {
        if error != ErrorType::Unconfirmed && !pending.moved {
            self.stats().remote_failed.inc();
        }
        let kind = serde_json::from_slice::<Inbound<'_>>(&pending.frame)
            .ok()
            .map(|inbound| inbound.kind.into_owned());
        let frame = error_frame(
            error,
            &ErrorDetail {
                message,
                target: Some(&pending.target),
                kind: kind.as_deref(),
                retry_after_ms: None,
            },
        );
        // A sender that left before its envelope's fate came back: the
        // answer is dropped, and counted, so the books still add up.
        if self.send_own(&pending.sender.user, frame) {
            self.stats().error_sent(error);
        }
    }

    /// Delivers an envelope another node accepted for `target`, numbered
    /// `id` there; tells that node at once if it cannot be queued here.
    pub fn deliver_remote(&self, from: &NodeId, id: u64, target: &str, frame: Bytes) {
        self.stats().remote_in.inc();
        let item = Queued {
            frame,
            origin: Some(Origin::Remote {
                node: from.clone(),
                id,
            }),
            accepted_at: Some(self.clock().now()),
            seq: 0,
        };
        if self.cluster().is_some_and(|cluster| !cluster.current()) {
            self.stats().remote_in_failed.inc();
            if let Some(cluster) = self.cluster() {
                cluster.settle(
                    from,
                    id,
                    Fate::Unavailable(
                        "the target's node is checking which users it holds after a pause".into(),
                    ),
                );
            }
            return;
        }
        let fate = match self.registry().deliver(target, item, Kind::Forwarded) {
            Delivery::Queued | Delivery::Held => return,
            Delivery::NotFound(_) => Fate::NotHere,
            Delivery::HoldRefused(_) => Fate::NotFound,
            Delivery::TargetSlow(_) => Fate::Slow,
        };
        self.stats().remote_in_failed.inc();
        if let Some(cluster) = self.cluster() {
            cluster.settle(from, id, fate);
        }
    }

    /// Tells another node that its envelope `id`, queued or held here,
    /// was never written: undelivered, or `expired` with its target's
    /// resume window.
    pub(super) fn report_remote_unwritten(&self, node: &NodeId, id: u64, expired: bool, why: &str) {
        self.stats().remote_in_failed.inc();
        if let Some(cluster) = self.cluster() {
            let fate = if expired {
                Fate::Expired(why.to_owned())
            } else {
                Fate::Undelivered(why.to_owned())
            };
            cluster.settle(node, id, fate);
        }
    }

    /// A newer claim on `user` was made elsewhere, superseding `epoch`, and
    /// nobody asks for the user's stream (this node found the newer claim
    /// itself, claiming its users again): closes the user's connection here
    /// if it is that one or older. An away user's stream here ends: what
    /// was held for it is answered.
    pub fn fence(&self, user: &str, epoch: Epoch) -> bool {
        let (closed, departed) = self.registry().fence(user, epoch, self.clock().now());
        if let Some(departed) = departed {
            self.departed(departed);
        }
        closed
    }

    /// Another node claimed `user` with `by`, superseding `epoch`, and asks
    /// for the user's stream: closes the user's connection here (if it is
    /// that claim or older) and hands the stream to `to` rather than
    /// ending it — nothing held is answered here, the user's rooms stay
    /// its own, and what its old connections here could not write goes
    /// with it. Envelopes accepted here for the user and never written are
    /// settled through this node's books from then on (their fate comes
    /// back from `to`, like any envelope sent there). Answers at once, with
    /// no stream, when there is none to hand over; when the user's live
    /// connection here was closed, once that connection has left (see
    /// [`Hub::send_stream`]). Returns whether a live connection was closed.
    pub fn hand_off(&self, user: &str, epoch: Epoch, to: &NodeId, by: Epoch) -> bool {
        let handing = Handing { to: to.clone(), by };
        let (closed, handoff) =
            self.registry()
                .hand_off(user, epoch, handing.clone(), self.clock().now());
        if let HandOff::Now(moved) = handoff {
            self.send_stream(user, handing, moved);
        }
        closed
    }

    /// Sends `user`'s stream (`None`: there is none) to the node that
    /// claimed the user.
    pub fn send_stream(&self, user: &str, handing: Handing, moved: Option<Moved>) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let Handing { to, by } = handing;
        let to = &to;
        let here = cluster.node().clone();
        let target: Arc<str> = user.into();
        let stream = moved.map(|mut moved| {
            let written = moved.written;
            for item in moved.kept.iter_mut().filter(|item| item.seq > written) {
                if let Some(Origin::Local(sender)) = &item.origin {
                    // Held there for the user's window before its fate
                    // comes back: EXPIRED must come before UNCONFIRMED.
                    let pending = Pending {
                        sender: sender.clone(),
                        target: target.clone(),
                        frame: item.frame.clone(),
                        retried: true,
                        moved: true,
                    };
                    let id = self
                        .in_flight_envelopes()
                        .insert_later(pending, self.limits().resume_window);
                    item.origin = Some(Origin::Remote {
                        node: here.clone(),
                        id,
                    });
                }
            }
            moved
        });
        let had_stream = stream.is_some();
        let accepted = stream.as_ref().map_or(0, accepted_unwritten);
        let handoff = Handoff {
            user: target,
            epoch: by,
            stream,
        };
        match cluster.hand_off(to, handoff) {
            Ok(()) if had_stream => {
                self.stats().handed_off.inc();
                self.stats().resume_moved.add(accepted as u64);
            }
            Ok(()) => {}
            Err(handoff) => {
                tracing::warn!(user, node = %to, "could not hand a user's stream to its new node");
                if let Some(mut moved) = handoff.stream {
                    // Its senders here are answered here, as before it moved.
                    for item in &mut moved.kept {
                        if let Some(Origin::Remote { node, id }) = &item.origin
                            && *node == here
                            && let Some((pending, _)) = self.in_flight_envelopes().take(*id)
                        {
                            item.origin = Some(Origin::Local(pending.sender));
                        }
                    }
                    let unwritten = self.registry().discard(moved, self.clock().now());
                    self.report_undelivered(unwritten, user, NOT_TAKEN_OVER);
                }
            }
        }
    }

    /// Takes `user`'s stream over from `node`, where its claim `previous`
    /// is superseded by this node's claim `epoch`: fences it there and
    /// waits (at most `--handoff-wait`) for the stream, which then
    /// continues here. Envelopes for the user meanwhile wait for it. A node
    /// that is gone or does not answer in time leaves the user to start a
    /// new stream here, counted.
    pub(super) async fn take_over(
        &self,
        cluster: &Arc<dyn Cluster>,
        user: &Arc<str>,
        node: &NodeId,
        previous: Epoch,
        epoch: Epoch,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.handoffs()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(user.clone(), (epoch, tx));
        self.registry().expect(user.clone(), epoch);
        // Ends the wait however this future ends (its connection may give
        // up meanwhile).
        let mut waiting = Waiting {
            hub: self,
            user,
            epoch,
            reply: Some(rx),
            moved: None,
            failed: false,
        };
        let heard = cluster
            .fence(node, user, previous, epoch)
            .await
            .unwrap_or(false);
        match waiting.reply.as_mut() {
            Some(reply) if heard => {
                match tokio::time::timeout(self.limits().handoff_wait, reply).await {
                    Ok(Ok(moved)) => {
                        waiting.moved = moved;
                        waiting.reply = None;
                    }
                    Ok(Err(_)) | Err(_) => waiting.failed = true,
                }
            }
            _ => waiting.failed = true,
        }
        if waiting.failed {
            tracing::info!(%user, %node, "the user's previous node did not hand its stream over: a new stream");
        }
    }

    /// A stream another node handed over for `user`'s claim `epoch` here
    /// (`None`: it held none). Given to the claim waiting for it; when none
    /// is (it stopped waiting, or a newer claim replaced it) the stream is
    /// not taken over: what it held never written is answered.
    pub fn handed_over(&self, user: &str, epoch: Epoch, stream: Option<Moved>) {
        // What it holds never written is this node's to settle from now on.
        let accepted = stream.as_ref().map_or(0, accepted_unwritten);
        self.stats().remote_in.add(accepted as u64);
        let waiter = {
            let mut handoffs = self
                .handoffs()
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match handoffs.get(user) {
                Some((waiting, _)) if *waiting == epoch => handoffs.remove(user),
                _ => None,
            }
        };
        let stream = match waiter {
            Some((_, tx)) => match tx.send(stream) {
                Ok(()) => return,
                Err(stream) => stream,
            },
            None => stream,
        };
        if let Some(moved) = stream {
            tracing::info!(
                user,
                epoch,
                "a user's stream arrived after its claim stopped waiting"
            );
            let unwritten = self.registry().discard(moved, self.clock().now());
            self.report_undelivered(unwritten, user, NOT_TAKEN_OVER);
        }
    }

    /// Carries out an admin action another node broadcast.
    pub fn apply(&self, command: Broadcast) -> usize {
        match command {
            Broadcast::KickAll => self.kick_here(),
            Broadcast::RevokeAll => self.revoke_here(),
        }
    }

    /// The cluster's shared state is gone (Redis restarted empty): no
    /// identity or route this node's users hold exists any more, and anyone
    /// could register their names. Closes every local connection as the
    /// deletion of every identity does (`KICKED`; those on their way in are
    /// refused); returns how many were live.
    pub fn shared_state_lost(&self) -> usize {
        self.revoke_here()
    }

    /// Every live connection's claim (to claim again after the cluster's
    /// shared state was out of reach).
    pub fn claims(&self) -> Vec<Claim> {
        self.registry().claims()
    }
}

/// The envelopes of a moved stream accepted from a sender and never
/// written: in the books, they leave the node that held them and arrive
/// at the user's new node.
fn accepted_unwritten(moved: &Moved) -> usize {
    moved
        .kept
        .iter()
        .filter(|item| item.seq > moved.written && item.accepted_at.is_some())
        .count()
}

/// A claim waiting for its user's stream; ends the wait when dropped.
struct Waiting<'a> {
    hub: &'a Hub,
    user: &'a Arc<str>,
    epoch: Epoch,
    /// Where the stream arrives; closed when the wait ends, so a stream
    /// sent just then is either still taken over or, arriving too late,
    /// answered by [`Hub::handed_over`]: never dropped with the channel.
    reply: Option<tokio::sync::oneshot::Receiver<Option<Moved>>>,
    moved: Option<Moved>,
    failed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let hub = self.hub;
        {
            let mut handoffs = hub
                .handoffs()
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if handoffs
                .get(self.user)
                .is_some_and(|(epoch, _)| *epoch == self.epoch)
            {
                handoffs.remove(self.user);
            }
        }
        if let Some(mut reply) = self.reply.take() {
            reply.close();
            if let Ok(moved) = reply.try_recv() {
                self.moved = moved;
                self.failed = false;
            }
        }
        let received = self.moved.is_some();
        let taken =
            hub.registry()
                .take_over(self.user, self.epoch, self.moved.take(), hub.clock().now());
        if taken.installed {
            // The user's rooms follow its stream now, not when (or if) its
            // connection attaches: room copies come here to be held.
            hub.user_attached(self.user, self.epoch);
        }
        if self.failed || (received && !taken.installed) {
            hub.stats().handoff_failed.inc();
        }
        hub.report_undelivered(taken.undelivered, self.user, NOT_TAKEN_OVER);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::core::Limits;
    use crate::core::clock::{Clock, ManualClock};
    use crate::core::cluster::{
        Cluster, ClusterClaim, ClusterError, ClusterFuture, ClusterUser, NodeInfo,
    };
    use crate::core::rooms::RoomChange;
    use crate::core::testing::{connect, hub_at, take};
    use crate::core::transport::Transport;
    use std::time::Duration;

    /// A cluster whose other nodes are this test: it records what the hub
    /// hands it.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Mutex<Vec<Outgoing>>,
        settled: Mutex<Vec<(NodeId, u64, Fate)>>,
        handoffs: Mutex<Vec<(NodeId, Handoff)>>,
        rooms: Mutex<Vec<RoomChange>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl Cluster for Recorder {
        fn node(&self) -> &NodeId {
            static HERE: std::sync::OnceLock<NodeId> = std::sync::OnceLock::new();
            HERE.get_or_init(|| "here".into())
        }
        fn forward(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(outgoing);
            }
            self.sent.lock().unwrap().push(outgoing);
            Ok(())
        }
        fn settle(&self, node: &NodeId, id: u64, fate: Fate) {
            self.settled.lock().unwrap().push((node.clone(), id, fate));
        }
        fn claim<'a>(
            &'a self,
            _: &'a str,
            conn: u64,
            _: Transport,
        ) -> ClusterFuture<'a, ClusterClaim> {
            Box::pin(async move {
                Ok(ClusterClaim {
                    epoch: conn,
                    previous: None,
                })
            })
        }
        fn fence<'a>(
            &'a self,
            _: &'a NodeId,
            _: &'a str,
            _: Epoch,
            _: Epoch,
        ) -> ClusterFuture<'a, bool> {
            Box::pin(async { Ok(false) })
        }
        fn hand_off(&self, node: &NodeId, handoff: Handoff) -> Result<(), Handoff> {
            self.handoffs.lock().unwrap().push((node.clone(), handoff));
            Ok(())
        }
        fn change_rooms(&self, change: RoomChange) -> Result<(), RoomChange> {
            self.rooms.lock().unwrap().push(change);
            Ok(())
        }
        fn release(&self, _: &str, _: Epoch) {}
        fn broadcast(&self, _: Broadcast) -> ClusterFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
        fn connected(&self) -> ClusterFuture<'_, Vec<ClusterUser>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn nodes(&self) -> ClusterFuture<'_, Vec<NodeInfo>> {
            Box::pin(async { Err(ClusterError::Unavailable("test".into())) })
        }
        fn current(&self) -> bool {
            true
        }
        fn readiness(&self) -> Result<(), String> {
            Ok(())
        }
    }

    fn clustered(limits: Limits) -> (Arc<Hub>, Arc<Recorder>) {
        clustered_at(limits, Clock::system())
    }

    fn clustered_at(limits: Limits, clock: Clock) -> (Arc<Hub>, Arc<Recorder>) {
        let hub = hub_at(limits, clock);
        let recorder = Arc::new(Recorder::default());
        hub.join(recorder.clone());
        (hub, recorder)
    }

    #[test]
    fn a_target_elsewhere_goes_to_the_cluster_and_a_written_fate_closes_the_book() {
        let (hub, cluster) = clustered(Limits::default());
        let alice = connect(&hub, "alice");
        alice
            .reading()
            .frame(br#"{"target":"bob","type":"offer","payload":1}"#);
        let sent = cluster.sent.lock().unwrap().pop().unwrap();
        assert_eq!(sent.target.as_ref(), "bob");
        assert!(
            std::str::from_utf8(&sent.frame)
                .unwrap()
                .contains(r#""originator":"alice""#)
        );
        assert_eq!(hub.in_flight(), 1);
        hub.settled(sent.id, Fate::Written);
        assert_eq!(hub.in_flight(), 0);
        assert_eq!(hub.stats().remote_written.get(), 1);
        assert!(take(&alice).is_empty(), "nothing to answer");
        hub.settled(sent.id, Fate::Written);
        assert_eq!(hub.stats().remote_late.get(), 1, "settled once");
    }

    #[test]
    fn a_moved_target_is_looked_up_again_once_then_not_found() {
        let (hub, cluster) = clustered(Limits::default());
        let alice = connect(&hub, "alice");
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        let first = cluster.sent.lock().unwrap().pop().unwrap();
        hub.settled(first.id, Fate::NotHere);
        let again = cluster.sent.lock().unwrap().pop().unwrap();
        assert_eq!(again.id, first.id);
        assert!(again.fresh_route);
        hub.settled(again.id, Fate::NotHere);
        let answers = take(&alice);
        assert_eq!(answers[0]["type"], "TARGET_NOT_FOUND");
        assert_eq!(answers[0]["payload"]["type"], "offer");
        assert_eq!(hub.stats().remote_failed.get(), 1);
    }

    #[test]
    fn every_failed_fate_is_answered_with_its_error() {
        let (hub, cluster) = clustered(Limits::default());
        let alice = connect(&hub, "alice");
        for fate in [
            Fate::NotFound,
            Fate::Slow,
            Fate::Undelivered("closed".into()),
            Fate::Unavailable("redis".into()),
        ] {
            alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
            let sent = cluster.sent.lock().unwrap().pop().unwrap();
            hub.settled(sent.id, fate);
        }
        let kinds: Vec<String> = take(&alice)
            .iter()
            .map(|v| v["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "TARGET_NOT_FOUND",
                "TARGET_SLOW",
                "UNDELIVERED",
                "CLUSTER_UNAVAILABLE"
            ]
        );
    }

    #[test]
    fn an_unsettled_envelope_is_answered_unconfirmed_at_its_deadline() {
        let manual = ManualClock::new();
        let (hub, _cluster) = clustered_at(
            Limits {
                delivery_timeout: Duration::from_secs(5),
                ..Limits::default()
            },
            manual.clock(),
        );
        let alice = connect(&hub, "alice");
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        manual.advance(Duration::from_millis(4999));
        assert_eq!(hub.expire_remote(), 0, "not yet");
        manual.advance(Duration::from_millis(1));
        assert_eq!(hub.expire_remote(), 1);
        let answers = take(&alice);
        assert_eq!(answers[0]["type"], "UNCONFIRMED");
        assert_eq!(hub.stats().remote_unconfirmed.get(), 1);
    }

    #[test]
    fn with_the_cluster_down_the_sender_is_told_at_once() {
        let (hub, cluster) = clustered(Limits::default());
        cluster
            .down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let alice = connect(&hub, "alice");
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        assert_eq!(take(&alice)[0]["type"], "CLUSTER_UNAVAILABLE");
        assert_eq!(hub.in_flight(), 0);
        assert_eq!(hub.stats().cluster_unavailable.get(), 1);
    }

    #[test]
    fn another_nodes_envelope_is_delivered_and_its_fate_reported() {
        let (hub, cluster) = clustered(Limits::default());
        let bob = connect(&hub, "bob");
        let from: NodeId = "there".into();
        hub.deliver_remote(
            &from,
            7,
            "bob",
            Bytes::from_static(b"{\"type\":\"offer\"}\n"),
        );
        hub.deliver_remote(&from, 8, "nobody", Bytes::from_static(b"{}\n"));
        assert_eq!(
            cluster.settled.lock().unwrap().pop().unwrap(),
            (from.clone(), 8, Fate::NotHere)
        );
        let (batch, _) = futures::executor::block_on(bob.outbox().next_batch());
        bob.record_written(&batch);
        assert_eq!(
            cluster.settled.lock().unwrap().pop().unwrap(),
            (from, 7, Fate::Written)
        );
    }

    #[test]
    fn a_queued_envelope_from_another_node_is_reported_when_its_target_leaves() {
        let (hub, cluster) = clustered(Limits::default());
        let bob = connect(&hub, "bob");
        let from: NodeId = "there".into();
        hub.deliver_remote(&from, 9, "bob", Bytes::from_static(b"{}\n"));
        bob.closed_by_client();
        drop(bob);
        let (node, id, fate) = cluster.settled.lock().unwrap().pop().unwrap();
        assert_eq!((node, id), (from, 9));
        assert!(matches!(fate, Fate::Undelivered(_)));
        assert_eq!(hub.stats().remote_in_failed.get(), 1);
    }

    #[test]
    fn a_resume_on_the_new_node_counts_and_settles_what_the_old_connection_wrote() {
        let (hub, cluster) = clustered(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        for _ in 0..3 {
            alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        }
        // Bob's writer took 1..3 and the client read 1 and 2 as the
        // connection died: nothing was recorded written.
        let (batch, _) = futures::executor::block_on(bob.outbox().next_batch());
        let there: NodeId = "there".into();
        assert!(hub.hand_off("bob", bob.epoch(), &there, bob.epoch() + 1));
        bob.report_unwritten(batch, "reset");
        bob.leave();
        let stats = hub.stats();
        assert_eq!(stats.forwarded.get(), 3);
        assert_eq!(stats.resume_moved.get(), 3);
        let (to, handoff) = cluster.handoffs.lock().unwrap().pop().unwrap();
        assert_eq!(to, there);
        let moved = handoff.stream.unwrap();
        assert_eq!((moved.written, moved.kept.len()), (0, 3));
        // The new node: the client resumes after 2.
        let (new_node, new_cluster) = clustered(Limits::default());
        new_node.registry().expect("bob".into(), handoff.epoch);
        assert!(
            new_node
                .registry()
                .take_over("bob", handoff.epoch, Some(moved), new_node.clock().now())
                .installed
        );
        let resumed = crate::core::testing::resume(&new_node, "bob", Some(2));
        assert_eq!(new_node.stats().written.get(), 2, "proved by resume=2");
        let (replay, _) = futures::executor::block_on(resumed.outbox().next_batch());
        resumed.record_written(&replay);
        assert_eq!(new_node.stats().written.get(), 3);
        let fates = std::mem::take(&mut *new_cluster.settled.lock().unwrap());
        assert_eq!(fates.len(), 3);
        for (node, id, fate) in fates {
            assert_eq!(fate, Fate::Written);
            assert_eq!(&node, cluster.node());
            hub.settled(id, fate);
        }
        assert_eq!(hub.in_flight(), 0, "every moved envelope settled written");
        assert!(take(&alice).is_empty(), "nothing to answer");
    }

    #[test]
    fn an_envelope_whose_fresh_route_names_this_node_waits_here_for_its_target() {
        let (hub, cluster) = clustered(Limits::default());
        let alice = connect(&hub, "alice");
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        let sent = cluster.sent.lock().unwrap().pop().unwrap();
        // Bob connects here meanwhile, his stream on its way from his old
        // node, which answers the envelope "not here" (handed over).
        hub.registry().expect("bob".into(), 50);
        hub.settled(sent.id, Fate::NotHere);
        let again = cluster.sent.lock().unwrap().pop().unwrap();
        assert!(again.fresh_route);
        // The fresh route names this node.
        hub.routed_here(again.id);
        assert_eq!(hub.in_flight(), 0);
        assert!(take(&alice).is_empty(), "not TARGET_NOT_FOUND");
        hub.registry().take_over("bob", 50, None, hub.clock().now());
        let bob = connect(&hub, "bob");
        let got = take(&bob);
        assert_eq!(got[0]["type"], "offer");
        assert_eq!(got[0]["originator"], "alice");
        let stats = hub.stats();
        assert_eq!(stats.sent_remote.get(), 1);
        assert_eq!(stats.remote_written.get(), 1);
        assert_eq!(stats.remote_in.get(), 1);
        // A target unknown here too is looked up once more, then answered.
        alice
            .reading()
            .frame(br#"{"target":"carol","type":"offer"}"#);
        let first = cluster.sent.lock().unwrap().pop().unwrap();
        hub.routed_here(first.id);
        let again = cluster.sent.lock().unwrap().pop().unwrap();
        hub.routed_here(again.id);
        assert_eq!(take(&alice)[0]["type"], "TARGET_NOT_FOUND");
        assert_eq!(stats.remote_failed.get(), 1);
    }

    #[test]
    fn a_stream_taken_over_brings_its_users_rooms_before_its_connection_attaches() {
        let (hub, cluster) = clustered(Limits::default());
        let bob: Arc<str> = "bob".into();
        hub.rooms()
            .apply_join("r", &bob, Some("there".into()), |_, _| ());
        hub.registry().expect(bob.clone(), 7);
        drop(Waiting {
            hub: &hub,
            user: &bob,
            epoch: 7,
            reply: None,
            moved: Some(crate::core::resume::Stream::new("s".into()).export()),
            failed: false,
        });
        assert_eq!(hub.registry().away(), 1, "installed, no connection yet");
        let changes = cluster.rooms.lock().unwrap();
        assert!(
            matches!(&changes[..], [RoomChange::Adopt { user, epoch: 7 }] if **user == *"bob"),
            "{changes:?}"
        );
    }

    #[test]
    fn a_moved_envelope_waits_out_the_users_window_before_it_is_unconfirmed() {
        let manual = ManualClock::new();
        let limits = Limits {
            delivery_timeout: Duration::from_secs(5),
            resume_window: Duration::from_secs(10),
            ..Limits::default()
        };
        let (hub, _cluster) = clustered_at(limits, manual.clock());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        alice.reading().frame(br#"{"target":"bob","type":"offer"}"#);
        assert!(hub.hand_off("bob", bob.epoch(), &"there".into(), bob.epoch() + 1));
        bob.leave();
        assert_eq!(hub.in_flight(), 1);
        // An envelope sent afterwards keeps the usual deadline.
        alice
            .reading()
            .frame(br#"{"target":"carol","type":"offer"}"#);
        manual.advance(Duration::from_secs(5));
        assert_eq!(hub.expire_remote(), 1, "carol's, not bob's");
        manual.advance(Duration::from_millis(9999));
        assert_eq!(hub.expire_remote(), 0, "bob's may still expire there");
        manual.advance(Duration::from_millis(1));
        assert_eq!(hub.expire_remote(), 1);
    }

    /// The books of a node: every envelope for a user here (sent by a user
    /// here, or by another node) written, answered, or moved; each once.
    fn settled_here(hub: &Hub) -> (u64, u64) {
        let stats = hub.stats();
        (
            stats.forwarded.get() + stats.remote_in.get(),
            stats.written.get()
                + stats.undelivered_reported.get()
                + stats.undelivered_unreported.get()
                + stats.remote_in_failed.get(),
        )
    }

    #[test]
    fn a_kicked_connection_counts_what_it_still_writes_and_nothing_is_answered_twice() {
        let (hub, cluster) = clustered(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        let from: NodeId = "there".into();
        hub.deliver_remote(
            &from,
            7,
            "bob",
            Bytes::from_static(b"{\"type\":\"offer\"}\n"),
        );
        alice
            .reading()
            .frame(br#"{"target":"bob","type":"answer"}"#);
        // The kick closes bob's connection, whose writer still writes its
        // queue before it closes.
        assert!(hub.kick_user_here("bob"));
        let (batch, closing) = futures::executor::block_on(bob.outbox().next_batch());
        assert_eq!(closing, Some(crate::core::CloseReason::Kicked));
        assert_eq!(batch.len(), 3, "WELCOME and both envelopes");
        bob.record_written(&batch);
        drop(bob);
        assert_eq!(
            *cluster.settled.lock().unwrap(),
            [(from, 7, Fate::Written)],
            "the other node hears once that it was written"
        );
        let told = take(&alice);
        assert!(
            told.iter().all(|frame| frame["type"] == "WELCOME"),
            "bob got alice's answer: she is not told UNDELIVERED: {told:?}"
        );
        assert_eq!(settled_here(&hub), (2, 2));
    }

    #[test]
    fn what_a_kicked_connection_could_not_write_is_answered_once() {
        let (hub, cluster) = clustered(Limits::default());
        let bob = connect(&hub, "bob");
        let from: NodeId = "there".into();
        hub.deliver_remote(
            &from,
            7,
            "bob",
            Bytes::from_static(b"{\"type\":\"offer\"}\n"),
        );
        hub.deliver_remote(
            &from,
            8,
            "bob",
            Bytes::from_static(b"{\"type\":\"offer\"}\n"),
        );
        // The writer took WELCOME and both envelopes; the kick comes as it
        // writes them, and the write fails.
        let (batch, _) = futures::executor::block_on(bob.outbox().next_batch());
        assert_eq!(batch.len(), 3);
        hub.kick_here();
        hub.deliver_remote(
            &from,
            9,
            "bob",
            Bytes::from_static(b"{\"type\":\"offer\"}\n"),
        );
        bob.report_unwritten(batch, "broken pipe");
        drop(bob);
        let settled = cluster.settled.lock().unwrap();
        let mut ids: Vec<u64> = settled.iter().map(|(_, id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [7, 8, 9], "each answered once: {settled:?}");
        assert_eq!(settled_here(&hub), (3, 3));
    }
}
