//! Rooms on the wire: `JOIN` and `LEAVE` from a session, room envelopes
//! fanned out to the other members, presence told to everyone in order,
//! and a user taken out of every room when it is gone.
//!
//! Every write a room causes (`JOINED`, `LEFT`, `PEER_JOINED`,
//! `PEER_LEFT`, each member's copy of a room envelope) goes through the
//! registry's one delivery path, as a direct envelope does, under the
//! rooms' lock: so a member sees `PEER_JOINED` for carol before anything
//! carol sends the room, and `PEER_LEFT` after the last of it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::cluster::ClusterError;
use super::envelope::{Inbound, room_frame, server_frame};
use super::hub::Hub;
use super::ids::{Epoch, NodeId};
use super::outbox::{Origin, Queued};
use super::registry::{Delivery, Kind};
use super::resume::Gone;
use super::rooms::{
    Joined, LeaveReason, Member, RoomChange, RoomError, RoomListing, RoomMembers, may_join,
    validate_room,
};
use super::session::Session;
use super::wire::{
    ErrorType, JOIN_TYPE, JOINED_TYPE, LEAVE_TYPE, LEFT_TYPE, PEER_JOINED_TYPE, PEER_LEFT_TYPE,
};

/// The payload of `JOIN` and `LEAVE`.
#[derive(Deserialize)]
struct RoomRequest {
    room: String,
}

#[derive(Serialize)]
struct JoinedPayload<'a> {
    room: &'a str,
    members: Vec<&'a str>,
}

#[derive(Serialize)]
struct RoomOnly<'a> {
    room: &'a str,
}

#[derive(Serialize)]
struct PeerJoined<'a> {
    room: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct PeerLeft<'a> {
    room: &'a str,
    user: &'a str,
    reason: &'static str,
}

/// The payload of a room error: `{"message", "room", "type"}`.
#[derive(Serialize)]
struct RoomErrorDetail<'a> {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl From<Gone> for LeaveReason {
    fn from(why: Gone) -> Self {
        match why {
            Gone::Kicked => LeaveReason::Kicked,
            Gone::Deleted => LeaveReason::Deleted,
            Gone::Closed | Gone::Expired | Gone::Ended => LeaveReason::Disconnected,
        }
    }
}

impl RoomError {
    /// The error envelope's `type`.
    pub fn error_type(&self) -> ErrorType {
        match self {
            RoomError::NotInRoom(_) => ErrorType::NotInRoom,
            RoomError::Full { .. } => ErrorType::RoomFull,
            RoomError::TooMany { .. } => ErrorType::TooManyRooms,
            RoomError::Unavailable(_) => ErrorType::ClusterUnavailable,
        }
    }
}

impl Session {
    /// Answers a room request or envelope with `error`.
    fn room_error(&self, error: ErrorType, message: String, room: Option<&str>, kind: &str) {
        self.reply_error_frame(
            error,
            server_frame(
                error.as_str(),
                &RoomErrorDetail {
                    message,
                    room,
                    kind,
                },
            ),
        );
    }

    /// `JOIN` or `LEAVE` (an envelope to the gateway itself).
    pub(super) fn presence(&self, inbound: &Inbound<'_>) {
        let Some(RoomRequest { room }) = inbound
            .payload
            .and_then(|payload| serde_json::from_str(payload.get()).ok())
        else {
            self.room_error(
                ErrorType::InvalidMessage,
                format!(
                    "{} takes the payload {{\"room\": \"<name>\"}}",
                    inbound.kind
                ),
                None,
                &inbound.kind,
            );
            return;
        };
        if let Err(message) = validate_room(&room) {
            self.room_error(
                ErrorType::InvalidMessage,
                message,
                Some(&room),
                &inbound.kind,
            );
            return;
        }
        if inbound.kind == JOIN_TYPE {
            self.join(&room);
        } else {
            self.leave_room(&room);
        }
    }

    fn join(&self, room: &str) {
        let hub = self.hub();
        if !may_join(hub.limits().rooms, self.room_claim(), room) {
            let why = match self.room_claim() {
                Some(_) => "your token's rooms claim does not name this room",
                None => {
                    "this gateway lets only tokens with a rooms claim join rooms (--rooms jwt-only)"
                }
            };
            self.room_error(ErrorType::Forbidden, why.to_owned(), Some(room), JOIN_TYPE);
            return;
        }
        let user = &self.origin().user;
        // Each member told costs the joiner one envelope of its rate.
        if !self.charge(hub.rooms().others(room, user).saturating_sub(1)) {
            return;
        }
        let join = || RoomChange::Join {
            room: room.into(),
            user: user.clone(),
            epoch: self.epoch(),
        };
        if self.change_in_cluster(room, JOIN_TYPE, join) {
            return;
        }
        let joined = hub.rooms().join(room, user, None, |joined, members| {
            hub.tell_joined(room, user, joined, members);
        });
        if let Err(err) = joined {
            self.room_error(err.error_type(), err.to_string(), Some(room), JOIN_TYPE);
        }
    }

    fn leave_room(&self, room: &str) {
        let hub = self.hub();
        let user = &self.origin().user;
        if !hub.rooms().is_member(room, user) {
            let err = RoomError::NotInRoom(room.to_owned());
            self.room_error(err.error_type(), err.to_string(), Some(room), LEAVE_TYPE);
            return;
        }
        if !self.charge(hub.rooms().others(room, user).saturating_sub(1)) {
            return;
        }
        let leave = || RoomChange::Leave {
            room: room.into(),
            user: user.clone(),
            epoch: self.epoch(),
        };
        if self.change_in_cluster(room, LEAVE_TYPE, leave) {
            return;
        }
        hub.room_left(room, user, LeaveReason::Left, true);
    }

    /// In a cluster a change is made in the shared state, then told to
    /// every node in one order, so the answer comes with that news; false
    /// on a single gateway, which makes the change itself.
    fn change_in_cluster(
        &self,
        room: &str,
        kind: &str,
        change: impl FnOnce() -> RoomChange,
    ) -> bool {
        let Some(cluster) = self.hub().cluster() else {
            return false;
        };
        if cluster.change_rooms(change()).is_err() {
            self.cluster_unavailable(room, kind);
        }
        true
    }

    fn cluster_unavailable(&self, room: &str, kind: &str) {
        self.room_error(
            ErrorType::ClusterUnavailable,
            "the other nodes cannot be reached now; retry in a moment".to_owned(),
            Some(room),
            kind,
        );
    }

    /// A room envelope (`room` without `target`): a copy for every other
    /// member, each counted against the sender's rate; one copy per other
    /// node with members, which writes it to its own.
    pub(super) fn to_room(&self, room: &str, inbound: &Inbound<'_>, now: Instant) {
        let hub = self.hub();
        let stats = hub.stats();
        let origin = self.origin();
        if !self.charge(hub.rooms().others(room, &origin.user).saturating_sub(1)) {
            return;
        }
        stats.room_sends.inc();
        let frame = room_frame(room, &inbound.kind, &origin.user, inbound.payload);
        let sent = hub.rooms().send(room, &origin.user, |others| {
            let mut slow = Vec::new();
            let mut nodes: Vec<&NodeId> = Vec::new();
            for member in others {
                if let Some(node) = &member.node {
                    if !nodes.contains(&node) {
                        nodes.push(node);
                    }
                    continue;
                }
                let item = Queued {
                    frame: frame.clone(),
                    origin: Some(Origin::Local(origin.clone())),
                    accepted_at: Some(now),
                    seq: 0,
                };
                match hub.deliver_room_copy(&member.user, item) {
                    Delivery::HoldRefused(_) => {
                        stats.hold_refused.inc();
                        slow.push((member.user.clone(), false));
                    }
                    Delivery::TargetSlow(_) => slow.push((member.user.clone(), true)),
                    Delivery::Queued | Delivery::Held | Delivery::NotFound(_) => {}
                }
            }
            let mut unreachable = false;
            if let Some(cluster) = hub.cluster() {
                for node in nodes {
                    if cluster.forward_room(node, room, &origin.user, frame.clone()) {
                        stats.sent_remote.inc();
                    } else {
                        unreachable = true;
                    }
                }
            }
            (slow, unreachable)
        });
        match sent {
            Ok((slow, unreachable)) => {
                for (member, was_slow) in slow {
                    let (error, message) = if was_slow {
                        (
                            ErrorType::TargetSlow,
                            format!(
                                "room member \"{member}\" was not reading its envelopes and has been disconnected"
                            ),
                        )
                    } else {
                        (
                            ErrorType::TargetNotFound,
                            format!(
                                "room member \"{member}\" is reconnecting, and the gateway holds all it may for it"
                            ),
                        )
                    };
                    self.room_error(error, message, Some(room), &inbound.kind);
                }
                if unreachable {
                    self.cluster_unavailable(room, &inbound.kind);
                }
            }
            Err(err) => {
                self.room_error(err.error_type(), err.to_string(), Some(room), &inbound.kind);
            }
        }
    }
}

impl Hub {
    /// Queues one of the gateway's own room envelopes for `user`, through
    /// the one delivery path.
    fn tell(&self, user: &str, frame: Bytes) {
        if self.deliver_own(user, frame) {
            self.stats().presence.inc();
        }
    }

    /// [`Hub::tell`] every member of `members` on this node.
    fn tell_members<'a>(&self, members: impl Iterator<Item = &'a Member>, frame: &Bytes) {
        for member in members.filter(|m| m.node.is_none()) {
            self.tell(&member.user, frame.clone());
        }
    }

    /// After `user` joined `room` (`members` in join order): `JOINED` to
    /// the joiner if it is here, and for a new member `PEER_JOINED` to the
    /// others here.
    fn tell_joined(&self, room: &str, user: &Arc<str>, joined: Joined, members: &[Member]) {
        let here = members.iter().any(|m| m.user == *user && m.node.is_none());
        if here {
            let names = members.iter().map(|m| &*m.user).collect();
            let frame = server_frame(
                JOINED_TYPE,
                &JoinedPayload {
                    room,
                    members: names,
                },
            );
            self.tell(user, frame);
        }
        if joined == Joined::New {
            let frame = server_frame(PEER_JOINED_TYPE, &PeerJoined { room, user });
            self.tell_members(members.iter().filter(|m| m.user != *user), &frame);
        }
    }

    /// Tells `members` that `user` left `room`.
    fn tell_left(&self, members: &[Member], room: &str, user: &str, reason: LeaveReason) {
        let frame = server_frame(
            PEER_LEFT_TYPE,
            &PeerLeft {
                room,
                user,
                reason: reason.as_str(),
            },
        );
        self.tell_members(members.iter(), &frame);
    }

    /// Takes `user` out of `room` and tells the members left; `LEFT` to the
    /// user when it left on its own from this node (`here`).
    fn room_left(&self, room: &str, user: &str, reason: LeaveReason, here: bool) {
        let _ = self.rooms().leave(room, user, |members| {
            if here && reason == LeaveReason::Left {
                self.tell(user, server_frame(LEFT_TYPE, &RoomOnly { room }));
            }
            self.tell_left(members, room, user, reason);
        });
    }

    /// `user` is gone (a clean close, its resume window expired, it was
    /// kicked, its identity deleted: [`Hub::departed`]): takes it out of
    /// every room it was in, telling the members why. The one place
    /// membership ends other than `LEAVE`; in a cluster the shared state
    /// does it (unless the user is held on another node now) and every
    /// node tells its members.
    pub(super) fn user_gone(&self, user: &str, reason: LeaveReason) {
        if self.rooms().of(user).is_empty() {
            return;
        }
        if let Some(cluster) = self.cluster() {
            let change = RoomChange::Gone {
                user: user.into(),
                reason,
            };
            if cluster.change_rooms(change).is_err() {
                tracing::warn!(
                    user,
                    "the cluster is unreachable: the user's rooms are left to the node-death cleanup"
                );
            }
            return;
        }
        self.rooms().depart(user, |room, members| {
            self.tell_left(members, room, user, reason);
        });
    }

    /// A connection of `user` with claim `epoch` attached here: in a
    /// cluster, rooms it joined through another node move here.
    pub(super) fn user_attached(&self, user: &Arc<str>, epoch: Epoch) {
        if let Some(cluster) = self.cluster()
            && self.rooms().held_elsewhere(user)
        {
            let _ = cluster.change_rooms(RoomChange::Adopt {
                user: user.clone(),
                epoch,
            });
        }
    }

    /// Closes `user`'s connection, wherever it is, as `KICKED`, after
    /// taking it out of its rooms; whether it had one.
    pub async fn kick_user(&self, user: &str) -> Result<bool, ClusterError> {
        let elsewhere = match self.cluster() {
            Some(cluster) => {
                let here = cluster.node().clone();
                let held = cluster
                    .connected()
                    .await?
                    .iter()
                    .any(|row| &*row.username == user && row.node != here);
                cluster.kick(user).await?;
                held
            }
            None => false,
        };
        Ok(self.kick_user_here(user) || elsewhere)
    }

    /// [`Hub::kick_user`] on this node (another node's kick arrives here):
    /// the user is gone, its rooms told `kicked`.
    pub fn kick_user_here(&self, user: &str) -> bool {
        let (found, departed) = self.registry().kick(user);
        if let Some(departed) = departed {
            self.departed(departed);
        }
        found
    }

    /// Every room with its members (in a cluster, each with its node).
    pub async fn room_listing(&self) -> Result<Vec<RoomListing>, ClusterError> {
        let mut rooms = self.rooms().listing();
        if let Some(cluster) = self.cluster() {
            for member in rooms.iter_mut().flat_map(|room| room.members.iter_mut()) {
                member.node.get_or_insert_with(|| cluster.node().clone());
            }
        }
        Ok(rooms)
    }

    fn node_of(&self, node: &NodeId) -> Option<NodeId> {
        match self.cluster() {
            Some(cluster) if cluster.node() == node => None,
            _ => Some(node.clone()),
        }
    }

    /// The shared state made a join: told to this node's members (and the
    /// joiner, if here).
    pub fn room_joined(&self, room: &str, user: &str, node: &NodeId) {
        let user: Arc<str> = user.into();
        self.rooms()
            .apply_join(room, &user, self.node_of(node), |joined, members| {
                self.tell_joined(room, &user, joined, members);
            });
    }

    /// The shared state refused a join or leave of `user` here: answers it.
    pub fn room_refused(&self, user: &str, room: &str, kind: &str, error: RoomError) {
        let frame = server_frame(
            error.error_type().as_str(),
            &RoomErrorDetail {
                message: error.to_string(),
                room: Some(room),
                kind,
            },
        );
        if self.deliver_own(user, frame) {
            self.stats().error_sent(error.error_type());
        }
    }

    /// The shared state took `user` (on `node`) out of `room`.
    pub fn room_departed(&self, room: &str, user: &str, node: &NodeId, reason: LeaveReason) {
        self.room_left(room, user, reason, self.node_of(node).is_none());
    }

    /// The shared state moved `user`'s membership of `room` to `node`.
    pub fn room_moved(&self, room: &str, user: &str, node: &NodeId) {
        self.rooms().apply_move(room, user, self.node_of(node));
    }

    /// What the shared state holds, for a node that (re)joins the cluster.
    pub fn rooms_loaded(&self, rooms: Vec<RoomMembers>) {
        let rooms = rooms
            .into_iter()
            .map(|RoomMembers { room, members }| {
                let members = members
                    .into_iter()
                    .map(|(user, node)| Member {
                        user,
                        node: self.node_of(&node),
                    })
                    .collect();
                (room, members)
            })
            .collect();
        self.rooms().replace_all(rooms);
    }

    /// A room envelope another node accepted from `sender`: a copy for
    /// each member of `room` here. Counted as forwarded here; one never
    /// written is counted unreported (its sender is on another node).
    pub fn deliver_room_remote(&self, room: &str, sender: &str, frame: Bytes) {
        let stats = self.stats();
        let now = self.clock().now();
        let _ = self.rooms().send(room, sender, |others| {
            for member in others.filter(|m| m.node.is_none()) {
                let item = Queued {
                    frame: frame.clone(),
                    origin: None,
                    accepted_at: Some(now),
                    seq: 0,
                };
                match self.deliver_room_copy(&member.user, item) {
                    // Refused or slow: its sender is on another node and
                    // not told, but the copy is counted.
                    Delivery::HoldRefused(_) | Delivery::TargetSlow(_) => {
                        stats.forwarded.inc();
                        stats.undelivered_unreported.inc();
                    }
                    Delivery::Queued | Delivery::Held | Delivery::NotFound(_) => {}
                }
            }
        });
    }

    /// Hands `member` its copy of a room envelope and counts it when it is
    /// queued, held (away: written when it resumes) or finds no stream here
    /// (gone a moment ago, or moved to another node with its rooms:
    /// counted, never dropped silently). A refused or slow copy is the
    /// caller's to answer and count.
    fn deliver_room_copy(&self, member: &str, item: Queued) -> Delivery {
        let stats = self.stats();
        let delivery = self.registry().deliver(member, item, Kind::Forwarded);
        match &delivery {
            Delivery::Queued => {
                stats.forwarded.inc();
                stats.room_fanout.inc();
            }
            Delivery::Held => {
                stats.forwarded.inc();
                stats.room_fanout.inc();
                stats.held.inc();
            }
            Delivery::NotFound(_) => {
                stats.forwarded.inc();
                stats.undelivered_unreported.inc();
            }
            Delivery::HoldRefused(_) | Delivery::TargetSlow(_) => {}
        }
        delivery
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::core::Limits;
    use crate::core::testing::{connect, hub_with, take};
    use serde_json::Value;

    fn join(session: &Session, room: &str) {
        session.reading().text(&format!(
            r#"{{"target":"","type":"JOIN","payload":{{"room":"{room}"}}}}"#
        ));
    }

    fn types(got: &[Value]) -> Vec<&str> {
        got.iter().map(|v| v["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn join_tells_the_joiner_everyone_and_the_others_the_joiner() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        join(&alice, "standup");
        join(&bob, "standup");
        let got = take(&alice);
        assert_eq!(types(&got), ["JOINED", "PEER_JOINED"]);
        assert_eq!(got[0]["payload"]["members"], serde_json::json!(["alice"]));
        assert_eq!(got[1]["payload"]["user"], "bob");
        assert_eq!(got[1]["originator"], "");
        let got = take(&bob);
        assert_eq!(
            got[0]["payload"]["members"],
            serde_json::json!(["alice", "bob"])
        );
        join(&bob, "standup");
        assert_eq!(types(&take(&bob)), ["JOINED"]);
        assert!(alice.outbox().is_empty(), "a second join tells nobody");
    }

    #[test]
    fn a_room_envelope_reaches_every_other_member_once_byte_for_byte() {
        let hub = hub_with(Limits::default());
        let users: Vec<Session> = ["a", "b", "c"].iter().map(|u| connect(&hub, u)).collect();
        for user in &users {
            join(user, "r");
        }
        for user in &users {
            take(user);
        }
        users[0]
            .reading()
            .text(r#"{"room":"r","type":"chat","payload":{"x": [1, 2.50]}}"#);
        assert!(users[0].outbox().is_empty(), "not back to the sender");
        for user in &users[1..] {
            let (batch, _) = futures::executor::block_on(user.outbox().next_batch());
            assert_eq!(batch.len(), 1);
            let expected: &[u8] =
                br#"{"target":"","room":"r","type":"chat","originator":"a","payload":{"x": [1, 2.50]},"seq":"#;
            assert!(batch[0].frame.starts_with(expected), "{:?}", batch[0].frame);
        }
        assert_eq!(hub.stats().room_fanout.get(), 2);
        assert_eq!(hub.stats().forwarded.get(), 2);
        assert_eq!(hub.stats().room_sends.get(), 1);
    }

    #[test]
    fn leaving_and_disconnecting_tell_the_others_why() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        let carol = connect(&hub, "carol");
        for user in [&alice, &bob, &carol] {
            join(user, "r");
        }
        take(&alice);
        bob.reading()
            .text(r#"{"target":"","type":"LEAVE","payload":{"room":"r"}}"#);
        assert_eq!(types(&take(&bob))[2..], ["LEFT"]);
        // A clean close: carol is gone at once (a dead connection would
        // leave her away, in her rooms, for the resume window).
        carol.closed_by_client();
        drop(carol);
        let got = take(&alice);
        assert_eq!(types(&got), ["PEER_LEFT", "PEER_LEFT"]);
        assert_eq!(got[0]["payload"]["reason"], "left");
        assert_eq!(got[1]["payload"]["user"], "carol");
        assert_eq!(got[1]["payload"]["reason"], "disconnected");
    }

    #[test]
    fn a_replaced_connection_keeps_its_rooms_without_churn() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        join(&alice, "r");
        join(&bob, "r");
        take(&alice);
        let again = connect(&hub, "bob");
        drop(bob);
        assert!(alice.outbox().is_empty(), "no PEER_LEFT");
        again.reading().text(r#"{"room":"r","type":"still-here"}"#);
        assert_eq!(types(&take(&alice)), ["still-here"]);
    }

    #[test]
    fn a_blink_resumed_within_the_window_keeps_the_rooms_without_churn() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        join(&alice, "r");
        join(&bob, "r");
        take(&alice);
        take(&bob);
        // bob's connection dies without a close: away, still in the room.
        drop(bob);
        alice
            .reading()
            .text(r#"{"room":"r","type":"while-away","payload":1}"#);
        assert!(alice.outbox().is_empty(), "no PEER_LEFT");
        let listing = hub.rooms().listing();
        assert_eq!(listing[0].members.len(), 2, "bob is still a member");
        // bob resumes: what alice sent meanwhile is written, and nobody is
        // told he left or joined.
        let back = crate::core::testing::resume(&hub, "bob", Some(0));
        let got = take(&back);
        assert!(
            got.iter().any(|v| v["type"] == "while-away"),
            "held for bob and written on resume: {got:?}"
        );
        assert!(!got.iter().any(|v| v["type"] == "PEER_JOINED"));
        back.reading().text(r#"{"room":"r","type":"back"}"#);
        assert_eq!(
            types(&take(&alice)),
            ["back"],
            "no PEER_LEFT, no PEER_JOINED"
        );
    }

    #[test]
    fn errors_past_each_limit() {
        let hub = hub_with(Limits {
            max_room_members: 2,
            max_rooms_per_user: 1,
            ..Limits::default()
        });
        let a = connect(&hub, "a");
        let b = connect(&hub, "b");
        let c = connect(&hub, "c");
        join(&a, "r");
        join(&b, "r");
        join(&c, "r");
        join(&a, "other");
        a.reading().text(r#"{"room":"nope","type":"x"}"#);
        a.reading()
            .text(r#"{"target":"","type":"LEAVE","payload":{"room":"nope"}}"#);
        a.reading()
            .text(r#"{"target":"","type":"JOIN","payload":{"room":" bad"}}"#);
        a.reading()
            .text(r#"{"target":"","type":"JOIN","payload":{}}"#);
        let got = take(&c);
        assert_eq!(types(&got), ["ROOM_FULL"]);
        assert_eq!(got[0]["payload"]["room"], "r");
        assert_eq!(got[0]["payload"]["type"], "JOIN");
        let got = take(&a);
        assert_eq!(
            types(&got),
            [
                "JOINED",
                "PEER_JOINED",
                "TOO_MANY_ROOMS",
                "NOT_IN_ROOM",
                "NOT_IN_ROOM",
                "INVALID_MESSAGE",
                "INVALID_MESSAGE"
            ]
        );
    }

    #[test]
    fn a_slow_member_is_closed_and_the_others_are_not_held_back() {
        let hub = hub_with(Limits {
            queue_envelopes: 4,
            ..Limits::default()
        });
        let a = connect(&hub, "a");
        let b = connect(&hub, "b");
        let slow = connect(&hub, "slow");
        for user in [&a, &b, &slow] {
            join(user, "r");
        }
        for user in [&a, &b] {
            take(user);
        }
        // slow still holds its WELCOME and JOINED: the third envelope
        // overflows its queue of 4.
        for i in 0..5 {
            a.reading()
                .text(&format!(r#"{{"room":"r","type":"n","payload":{i}}}"#));
            assert_eq!(take(&b)[0]["payload"], i, "b gets every envelope");
        }
        assert_eq!(
            slow.outbox().closing(),
            Some(crate::core::wire::CloseReason::SlowConsumer)
        );
        let got = take(&a);
        assert_eq!(types(&got), ["TARGET_SLOW"]);
        assert_eq!(got[0]["payload"]["room"], "r");
        // Away first (its rooms kept for a resume), gone once the window
        // has passed.
        drop(slow);
        assert!(b.outbox().is_empty(), "no PEER_LEFT while away");
        hub.expire_away(hub.clock().now() + std::time::Duration::from_secs(3600));
        let got = take(&b);
        assert_eq!(got[0]["type"], "PEER_LEFT");
        assert_eq!(got[0]["payload"]["reason"], "disconnected");
    }

    #[test]
    fn fan_out_counts_once_per_recipient_against_the_rate() {
        let hub = hub_with(Limits {
            envelope_rate: NonZeroU32::new(1).unwrap(),
            envelope_burst: NonZeroU32::new(10).unwrap(),
            ..Limits::default()
        });
        let users: Vec<Session> = (0..5).map(|n| connect(&hub, &format!("u{n}"))).collect();
        for user in &users {
            join(user, "r");
        }
        for user in &users {
            take(user);
        }
        // u0 paid 1 (its JOIN); each send costs 4: two fit in the burst of 10.
        for _ in 0..3 {
            users[0].reading().text(r#"{"room":"r","type":"x"}"#);
        }
        assert_eq!(types(&take(&users[0])), ["RATE_LIMITED"]);
        assert_eq!(take(&users[1]).len(), 2);
    }

    #[test]
    fn a_room_copy_for_a_member_without_a_stream_here_is_counted() {
        let hub = hub_with(Limits::default());
        let alice = connect(&hub, "alice");
        let bob = connect(&hub, "bob");
        join(&alice, "r");
        join(&bob, "r");
        take(&alice);
        take(&bob);
        // Bob's stream left this node (handed over, say); his membership
        // here has not moved yet.
        hub.registry().kick("bob");
        hub.rooms()
            .apply_join("r", &"carol".into(), Some("there".into()), |_, _| ());
        let stats = hub.stats();
        let before = (stats.forwarded.get(), stats.undelivered_unreported.get());
        alice.reading().text(r#"{"room":"r","type":"chat"}"#);
        hub.deliver_room_remote("r", "carol", Bytes::from_static(b"{}\n"));
        let after = (stats.forwarded.get(), stats.undelivered_unreported.get());
        assert_eq!(after.1 - before.1, 2, "one copy each way, counted");
        assert!(after.0 - before.0 >= 2);
    }
}
