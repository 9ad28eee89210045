//! Rooms: named groups of users, who joined them in what order, and who
//! may join which.
//!
//! Membership belongs to the user, not to a connection: a connection that
//! replaces another of the same user keeps its rooms, and a user leaves its
//! rooms only by `LEAVE` or when it is gone (see [`LeaveReason`]). Every
//! change runs under one lock, and what the change must tell the members
//! is delivered by the caller's closure under that same lock, so every
//! member sees presence in one order, and a room envelope is fanned out to
//! exactly the members of the moment it was accepted.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::ids::NodeId;
use super::username::{UsernameError, validate_username};

/// Most members one room holds (LiveKit's default room is unbounded; a
/// mesh call is useless past a handful, an SFU's signaling room a few
/// dozen).
pub const DEFAULT_MAX_ROOM_MEMBERS: usize = 50;
/// Most rooms one user is in at once.
pub const DEFAULT_MAX_ROOMS_PER_USER: usize = 16;

/// Why a user left a room, as `PEER_LEFT`'s `reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaveReason {
    /// It sent `LEAVE`.
    Left,
    /// Its connection ended and no other took its place.
    Disconnected,
    /// An administrator kicked it.
    Kicked,
    /// Its identity was deleted.
    Deleted,
}

impl LeaveReason {
    /// Every reason.
    pub const ALL: [LeaveReason; 4] = [
        LeaveReason::Left,
        LeaveReason::Disconnected,
        LeaveReason::Kicked,
        LeaveReason::Deleted,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::Kicked => "kicked",
            LeaveReason::Deleted => "deleted",
        }
    }
}

impl FromStr for LeaveReason {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        LeaveReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .ok_or_else(|| format!("no leave reason {text:?}"))
    }
}

/// Who may join rooms when the token carries no `rooms` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomPolicy {
    /// Any room (a JWT with a `rooms` claim is still held to it).
    #[default]
    Any,
    /// Only rooms a JWT's `rooms` claim names; registered names and JWTs
    /// without the claim join none.
    JwtOnly,
}

impl FromStr for RoomPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "any" => Ok(RoomPolicy::Any),
            "jwt-only" => Ok(RoomPolicy::JwtOnly),
            other => Err(format!("{other:?} is not a room policy (any, jwt-only)")),
        }
    }
}

impl std::fmt::Display for RoomPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoomPolicy::Any => "any",
            RoomPolicy::JwtOnly => "jwt-only",
        })
    }
}

/// The rooms a JWT's `rooms` claim names: exact names, and prefixes
/// written with a trailing `*` (`"team-42-*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomClaim(Arc<[String]>);

impl RoomClaim {
    /// The claim's entries as the token lists them.
    pub fn new(entries: Vec<String>) -> Self {
        Self(entries.into())
    }

    /// Whether the claim names `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.0.iter().any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => entry == room,
        })
    }
}

/// Whether a connection authenticated with `claim` may join `room` under
/// `policy`.
pub fn may_join(policy: RoomPolicy, claim: Option<&RoomClaim>, room: &str) -> bool {
    match claim {
        Some(claim) => claim.allows(room),
        None => policy == RoomPolicy::Any,
    }
}

/// Checks a room name: the username rules.
pub fn validate_room(name: &str) -> Result<(), String> {
    validate_username(name).map_err(|err| match err {
        UsernameError::Empty => "room name cannot be empty".to_owned(),
        other => format!(
            "bad room name (room names follow the username rules): {}",
            other.to_string().replacen("username", "name", 1)
        ),
    })
}

/// Why a room operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// Sending to, or leaving, a room the user is not in.
    #[error("you are not in room {0:?}")]
    NotInRoom(String),
    /// The room holds `--max-room-members` already.
    #[error("room {room:?} is full ({max} members)")]
    Full {
        /// The room.
        room: String,
        /// The limit.
        max: usize,
    },
    /// The user is in `--max-rooms-per-user` rooms already.
    #[error("you are in {max} rooms already, the most one user may be in")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// In a cluster: the shared state could not be reached.
    #[error("the other nodes cannot be reached now: {0}")]
    Unavailable(String),
}

/// A room member: the user, and in a cluster the node its connection is
/// on (`None`: this node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The user.
    pub user: Arc<str>,
    /// Its node, when that is another one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// One room as a cluster's shared state holds it: its members in join
/// order, each with its node.
#[derive(Debug, Clone)]
pub struct RoomMembers {
    /// The room.
    pub room: Arc<str>,
    /// `(user, node)`, in join order.
    pub members: Vec<(Arc<str>, NodeId)>,
}

/// One room as the admin listing shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomListing {
    /// The room's name.
    pub room: Arc<str>,
    /// Its members in join order.
    pub members: Vec<Member>,
}

#[derive(Debug, Default)]
struct State {
    /// Each room's members, in join order.
    rooms: HashMap<Arc<str>, Vec<Member>>,
    /// Each user's rooms, in join order.
    users: HashMap<Arc<str>, Vec<Arc<str>>>,
}

/// Every room with members, and every member's rooms.
#[derive(Debug)]
pub struct Rooms {
    state: Mutex<State>,
    max_members: usize,
    max_per_user: usize,
}

/// A change to rooms a cluster node asks of the shared state; it is made
/// there (limits checked, the user's claim fenced as routes are) and then
/// told to every node in one order, this one included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomChange {
    /// `user`'s connection `epoch` here joins `room`.
    Join {
        /// The room.
        room: Arc<str>,
        /// The user.
        user: Arc<str>,
        /// Its connection's claim.
        epoch: u64,
    },
    /// `user`'s connection `epoch` here leaves `room`.
    Leave {
        /// The room.
        room: Arc<str>,
        /// The user.
        user: Arc<str>,
        /// Its connection's claim.
        epoch: u64,
    },
    /// `user`, held here, is gone: out of every room it is in through
    /// this node, unless its route names another node now.
    Gone {
        /// The user.
        user: Arc<str>,
        /// Why.
        reason: LeaveReason,
    },
    /// `user` is now held here with `epoch`: its memberships move here.
    Adopt {
        /// The user.
        user: Arc<str>,
        /// Its connection's claim.
        epoch: u64,
    },
}

/// What a join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The user was in the room already: nobody else is told.
    Already,
    /// The user is a new member.
    New,
}

impl Rooms {
    /// No rooms yet, with these limits.
    pub fn new(max_members: usize, max_per_user: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_members,
            max_per_user,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a few map operations that cannot panic halfway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many members `room` has other than `user`.
    pub fn others(&self, room: &str, user: &str) -> usize {
        self.lock().rooms.get(room).map_or(0, |members| {
            members.iter().filter(|m| *m.user != *user).count()
        })
    }

    /// Adds `user` (on `node`, `None` for this one) to `room`, then calls
    /// `tell` under the lock with what the join did and the members in join
    /// order (the joiner last when it is new).
    pub fn join<R>(
        &self,
        room: &str,
        user: &Arc<str>,
        node: Option<NodeId>,
        tell: impl FnOnce(Joined, &[Member]) -> R,
    ) -> Result<R, RoomError> {
        let mut state = self.lock();
        let in_room = state
            .rooms
            .get(room)
            .is_some_and(|members| members.iter().any(|m| m.user == *user));
        if in_room {
            let members = &state.rooms[room];
            return Ok(tell(Joined::Already, members));
        }
        let size = state.rooms.get(room).map_or(0, Vec::len);
        if size >= self.max_members {
            return Err(RoomError::Full {
                room: room.to_owned(),
                max: self.max_members,
            });
        }
        let joined = state.users.get(user).map_or(0, Vec::len);
        if joined >= self.max_per_user {
            return Err(RoomError::TooMany {
                max: self.max_per_user,
            });
        }
        let name: Arc<str> = match state.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        state
            .users
            .entry(user.clone())
            .or_default()
            .push(name.clone());
        let members = state.rooms.entry(name).or_default();
        members.push(Member {
            user: user.clone(),
            node,
        });
        Ok(tell(Joined::New, members))
    }

    /// Takes `user` out of `room`, then calls `tell` under the lock with
    /// the members left.
    pub fn leave<R>(
        &self,
        room: &str,
        user: &str,
        tell: impl FnOnce(&[Member]) -> R,
    ) -> Result<R, RoomError> {
        let mut state = self.lock();
        if !Self::remove(&mut state, room, user) {
            return Err(RoomError::NotInRoom(room.to_owned()));
        }
        let left = state.rooms.get(room).map_or(&[][..], Vec::as_slice);
        Ok(tell(left))
    }

    /// Calls `send` under the lock with the members of `room` other than
    /// `user`, if `user` is one.
    pub fn send<R>(
        &self,
        room: &str,
        user: &str,
        send: impl FnOnce(&mut dyn Iterator<Item = &Member>) -> R,
    ) -> Result<R, RoomError> {
        let state = self.lock();
        let members = state
            .rooms
            .get(room)
            .filter(|members| members.iter().any(|m| *m.user == *user))
            .ok_or_else(|| RoomError::NotInRoom(room.to_owned()))?;
        Ok(send(&mut members.iter().filter(|m| *m.user != *user)))
    }

    /// Takes `user` out of every room it is in, calling `tell` under the
    /// lock for each room with the members left; returns how many rooms.
    pub fn depart(&self, user: &str, mut tell: impl FnMut(&str, &[Member])) -> usize {
        let mut state = self.lock();
        let Some(rooms) = state.users.get(user).cloned() else {
            return 0;
        };
        for room in &rooms {
            Self::remove(&mut state, room, user);
            let left = state.rooms.get(&**room).map_or(&[][..], Vec::as_slice);
            tell(room, left);
        }
        rooms.len()
    }

    /// Every member on this node.
    pub fn local_users(&self) -> Vec<Arc<str>> {
        let state = self.lock();
        let mut users: Vec<Arc<str>> = state
            .rooms
            .values()
            .flatten()
            .filter(|m| m.node.is_none())
            .map(|m| m.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Whether `user` is a member of `room`.
    pub fn is_member(&self, room: &str, user: &str) -> bool {
        self.lock()
            .rooms
            .get(room)
            .is_some_and(|members| members.iter().any(|m| *m.user == *user))
    }

    /// Whether `user` is in a room as a member on another node.
    pub fn held_elsewhere(&self, user: &str) -> bool {
        self.lock()
            .rooms
            .values()
            .flatten()
            .any(|m| *m.user == *user && m.node.is_some())
    }

    /// A join the shared state made (a cluster's): no limit is checked
    /// here. Calls `tell` under the lock, as [`Rooms::join`] does.
    pub fn apply_join<R>(
        &self,
        room: &str,
        user: &Arc<str>,
        node: Option<NodeId>,
        tell: impl FnOnce(Joined, &[Member]) -> R,
    ) -> R {
        let mut state = self.lock();
        let name: Arc<str> = match state.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        let members = state.rooms.entry(name.clone()).or_default();
        if members.iter().any(|m| m.user == *user) {
            return tell(Joined::Already, members);
        }
        members.push(Member {
            user: user.clone(),
            node,
        });
        state
            .users
            .entry(user.clone())
            .or_default()
            .push(name.clone());
        tell(Joined::New, &state.rooms[&name])
    }

    /// A member moved to `node` (`None`: this one).
    pub fn apply_move(&self, room: &str, user: &str, node: Option<NodeId>) {
        let mut state = self.lock();
        if let Some(member) = state
            .rooms
            .get_mut(room)
            .and_then(|members| members.iter_mut().find(|m| *m.user == *user))
        {
            member.node = node;
        }
    }

    /// Replaces every room with what the shared state holds (a node that
    /// starts, or comes back to the cluster): `(room, members in join
    /// order)`.
    pub fn replace_all(&self, rooms: Vec<(Arc<str>, Vec<Member>)>) {
        let mut state = self.lock();
        state.rooms.clear();
        state.users.clear();
        for (room, members) in rooms {
            for member in &members {
                state
                    .users
                    .entry(member.user.clone())
                    .or_default()
                    .push(room.clone());
            }
            if !members.is_empty() {
                state.rooms.insert(room, members);
            }
        }
    }

    /// The rooms `user` is in, in join order.
    pub fn of(&self, user: &str) -> Vec<Arc<str>> {
        self.lock().users.get(user).cloned().unwrap_or_default()
    }

    /// Every room with its members, sorted by name.
    pub fn listing(&self) -> Vec<RoomListing> {
        let state = self.lock();
        let mut rooms: Vec<RoomListing> = state
            .rooms
            .iter()
            .map(|(room, members)| RoomListing {
                room: room.clone(),
                members: members.clone(),
            })
            .collect();
        drop(state);
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        rooms
    }

    /// Removes `user` from `room` (and the room once empty); whether it
    /// was a member.
    fn remove(state: &mut State, room: &str, user: &str) -> bool {
        let Some(members) = state.rooms.get_mut(room) else {
            return false;
        };
        let Some(at) = members.iter().position(|m| *m.user == *user) else {
            return false;
        };
        members.remove(at);
        if members.is_empty() {
            state.rooms.remove(room);
        }
        if let Some(rooms) = state.users.get_mut(user) {
            rooms.retain(|r| **r != *room);
            if rooms.is_empty() {
                state.users.remove(user);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(members: &[Member]) -> Vec<String> {
        members.iter().map(|m| m.user.to_string()).collect()
    }

    #[test]
    fn members_are_kept_in_join_order_and_a_second_join_changes_nothing() {
        let rooms = Rooms::new(50, 16);
        for user in ["alice", "bob", "carol"] {
            let got = rooms
                .join("standup", &user.into(), None, |joined, members| {
                    (joined, names(members))
                })
                .unwrap();
            assert_eq!(got.0, Joined::New);
        }
        let (joined, members) = rooms
            .join("standup", &"bob".into(), None, |j, m| (j, names(m)))
            .unwrap();
        assert_eq!(joined, Joined::Already);
        assert_eq!(members, ["alice", "bob", "carol"]);
        let others = rooms
            .send("standup", "bob", |others| {
                others.map(|m| m.user.to_string()).collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(others, ["alice", "carol"]);
    }

    #[test]
    fn limits_are_enforced_and_leaving_frees_them() {
        let rooms = Rooms::new(2, 2);
        rooms.join("a", &"u1".into(), None, |_, _| ()).unwrap();
        rooms.join("a", &"u2".into(), None, |_, _| ()).unwrap();
        assert!(matches!(
            rooms.join("a", &"u3".into(), None, |_, _| ()),
            Err(RoomError::Full { max: 2, .. })
        ));
        rooms.join("b", &"u1".into(), None, |_, _| ()).unwrap();
        assert_eq!(
            rooms.join("c", &"u1".into(), None, |_, _| ()),
            Err(RoomError::TooMany { max: 2 })
        );
        let left = rooms.leave("a", "u2", names).unwrap();
        assert_eq!(left, ["u1"]);
        rooms.join("a", &"u3".into(), None, |_, _| ()).unwrap();
        assert_eq!(
            rooms.leave("a", "u2", |_| ()),
            Err(RoomError::NotInRoom("a".into()))
        );
        assert!(rooms.send("a", "u2", |_| ()).is_err());
    }

    #[test]
    fn departing_leaves_every_room_and_empty_rooms_go() {
        let rooms = Rooms::new(50, 16);
        rooms.join("a", &"alice".into(), None, |_, _| ()).unwrap();
        rooms.join("b", &"alice".into(), None, |_, _| ()).unwrap();
        rooms.join("b", &"bob".into(), None, |_, _| ()).unwrap();
        let mut told = Vec::new();
        assert_eq!(
            rooms.depart("alice", |room, left| told
                .push((room.to_owned(), names(left)))),
            2
        );
        assert_eq!(
            told,
            [
                ("a".to_owned(), vec![]),
                ("b".to_owned(), vec!["bob".to_owned()])
            ]
        );
        assert!(rooms.of("alice").is_empty());
        let listing = rooms.listing();
        assert_eq!(listing.len(), 1);
        assert_eq!(&*listing[0].room, "b");
        assert_eq!(rooms.depart("alice", |_, _| ()), 0);
    }

    #[test]
    fn a_claim_allows_exact_names_and_prefixes() {
        let claim = RoomClaim::new(vec!["lobby".into(), "team-42-*".into()]);
        assert!(claim.allows("lobby"));
        assert!(!claim.allows("lobby2"));
        assert!(claim.allows("team-42-standup"));
        assert!(claim.allows("team-42-"));
        assert!(!claim.allows("team-43-standup"));
        assert!(may_join(RoomPolicy::JwtOnly, Some(&claim), "lobby"));
        assert!(!may_join(RoomPolicy::Any, Some(&claim), "elsewhere"));
        assert!(may_join(RoomPolicy::Any, None, "elsewhere"));
        assert!(!may_join(RoomPolicy::JwtOnly, None, "lobby"));
        let everything = RoomClaim::new(vec!["*".into()]);
        assert!(everything.allows("anything"));
    }

    #[test]
    fn room_names_follow_the_username_rules() {
        assert!(validate_room("standup").is_ok());
        assert!(validate_room("").is_err());
        assert!(validate_room(" x").is_err());
        assert!(validate_room("a\u{200b}b").is_err());
        assert!(validate_room(&"x".repeat(65)).is_err());
        assert!(validate_room("bad\nname").unwrap_err().contains("room"));
    }
}
