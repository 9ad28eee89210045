//! Rooms in a cluster: membership lives in Redis, changed only by scripts
//! that check the limits and fence the user's claim as routes are fenced
//! (a change from a connection whose epoch is no longer the route's is
//! refused), and that publish each change on the control channel, so every
//! node hears every change in one order and keeps the same view.
//!
//! - `sg:room:<room>`: sorted set of members, scored in join order.
//! - `sg:roomnode:<room>`: hash member → the node its connection is on.
//! - `sg:userrooms:<user>`: set of the user's rooms.
//! - `sg:noderooms:<node>`: set of `room\nuser` held on the node (names
//!   have no control characters), so a dead node's members can be found.
//! - `sg:roomseq`: the join counter.
//!
//! A room envelope crosses to each node with members once
//! ([`Header::RoomEnvelope`]); that node writes it to its members.

use std::sync::Arc;

use crate::core::Hub;
use crate::core::ids::NodeId;
use crate::core::rooms::{LeaveReason, RoomChange, RoomError, RoomMembers};

use super::messages::Header;
use super::{RedisCluster, bounded, keys};

/// The prefix of every room's member set.
const ROOMS: &str = "sg:room:";
/// The prefix of every node's membership index.
const NODE_ROOMS: &str = "sg:noderooms:";

fn room_members(room: &str) -> String {
    format!("{ROOMS}{room}")
}

/// Helpers every room script starts with: the keys of a room and of a
/// user, taking a member out (with its `PEER_LEFT` news), and the news.
const PRELUDE: &str = r"
local function news(change, room, user, node, reason)
  redis.call('PUBLISH', 'sg:control', cjson.encode({kind = 'room', change = change,
    room = room, user = user, node = node, reason = reason}) .. '\n')
end
local function depart(room, user, node, reason)
  redis.call('ZREM', 'sg:room:' .. room, user)
  redis.call('HDEL', 'sg:roomnode:' .. room, user)
  redis.call('SREM', 'sg:userrooms:' .. user, room)
  redis.call('SREM', 'sg:noderooms:' .. node, room .. '\n' .. user)
  news('left', room, user, node, reason)
end
local function holds(user, node, epoch)
  local route = redis.call('HMGET', 'sg:route:' .. user, 'node', 'epoch')
  return route[1] == node and route[2] == epoch
end
";

/// Joins: ARGV room, user, node, epoch, max members, max rooms per user.
const JOIN: &str = r"
local room, user, node = ARGV[1], ARGV[2], ARGV[3]
if not holds(user, node, ARGV[4]) then return redis.error_reply('FENCED') end
if redis.call('ZSCORE', 'sg:room:' .. room, user) then return 'ALREADY' end
if redis.call('ZCARD', 'sg:room:' .. room) >= tonumber(ARGV[5]) then
  return redis.error_reply('FULL')
end
if redis.call('SCARD', 'sg:userrooms:' .. user) >= tonumber(ARGV[6]) then
  return redis.error_reply('TOO_MANY')
end
local seq = redis.call('INCR', 'sg:roomseq')
redis.call('ZADD', 'sg:room:' .. room, seq, user)
redis.call('HSET', 'sg:roomnode:' .. room, user, node)
redis.call('SADD', 'sg:userrooms:' .. user, room)
redis.call('SADD', 'sg:noderooms:' .. node, room .. '\n' .. user)
news('joined', room, user, node, nil)
return 'OK'
";

/// Leaves: ARGV room, user, node, epoch.
const LEAVE: &str = r"
local room, user, node = ARGV[1], ARGV[2], ARGV[3]
if not holds(user, node, ARGV[4]) then return redis.error_reply('FENCED') end
if not redis.call('ZSCORE', 'sg:room:' .. room, user) then
  return redis.error_reply('NOT_IN_ROOM')
end
depart(room, user, node, 'left')
return 'OK'
";

/// A user held on a node is gone: ARGV user, node, reason. Unless its
/// route names another node now (it reconnected there: its rooms move
/// there), it leaves every room held on that node.
const GONE: &str = r"
local user, node = ARGV[1], ARGV[2]
local route = redis.call('HGET', 'sg:route:' .. user, 'node')
if route and route ~= node then return 0 end
local gone = 0
for _, room in ipairs(redis.call('SMEMBERS', 'sg:userrooms:' .. user)) do
  if redis.call('HGET', 'sg:roomnode:' .. room, user) == node then
    depart(room, user, node, ARGV[3])
    gone = gone + 1
  end
end
return gone
";

/// A user is now held on a node: ARGV user, node, epoch. Its memberships
/// move there.
const ADOPT: &str = r"
local user, node = ARGV[1], ARGV[2]
if not holds(user, node, ARGV[3]) then return 0 end
local moved = 0
for _, room in ipairs(redis.call('SMEMBERS', 'sg:userrooms:' .. user)) do
  local was = redis.call('HGET', 'sg:roomnode:' .. room, user)
  if was and was ~= node then
    redis.call('HSET', 'sg:roomnode:' .. room, user, node)
    redis.call('SREM', 'sg:noderooms:' .. was, room .. '\n' .. user)
    redis.call('SADD', 'sg:noderooms:' .. node, room .. '\n' .. user)
    news('moved', room, user, node, nil)
    moved = moved + 1
  end
end
return moved
";

/// A node without a lease is dead: ARGV node. Each of its members leaves
/// (`disconnected`), unless its route names another node now (then the
/// membership moves there).
const PURGE: &str = r"
local dead = ARGV[1]
for _, entry in ipairs(redis.call('SMEMBERS', 'sg:noderooms:' .. dead)) do
  local cut = string.find(entry, '\n', 1, true)
  local room, user = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
  local now = redis.call('HGET', 'sg:route:' .. user, 'node')
  if now and now ~= dead then
    redis.call('HSET', 'sg:roomnode:' .. room, user, now)
    redis.call('SADD', 'sg:noderooms:' .. now, entry)
    news('moved', room, user, now, nil)
  else
    depart(room, user, dead, 'disconnected')
  end
end
redis.call('DEL', 'sg:noderooms:' .. dead)
return 1
";

/// A change to rooms as the courier runs it: the script and its
/// arguments, and who to answer if the shared state refuses it.
pub(super) struct Scripted {
    source: String,
    args: Vec<String>,
    /// For a join or a leave: the user, its room, and the request's type.
    asked: Option<(Arc<str>, Arc<str>, &'static str)>,
}

/// The script for `change`, made on `node` under the hub's limits.
pub(super) fn script(change: &RoomChange, node: &NodeId, hub: &Hub) -> Scripted {
    let with = |body: &str| format!("{PRELUDE}{body}");
    match change {
        RoomChange::Join { room, user, epoch } => Scripted {
            source: with(JOIN),
            args: vec![
                room.to_string(),
                user.to_string(),
                node.to_string(),
                epoch.to_string(),
                hub.limits().max_room_members.to_string(),
                hub.limits().max_rooms_per_user.to_string(),
            ],
            asked: Some((user.clone(), room.clone(), "JOIN")),
        },
        RoomChange::Leave { room, user, epoch } => Scripted {
            source: with(LEAVE),
            args: vec![
                room.to_string(),
                user.to_string(),
                node.to_string(),
                epoch.to_string(),
            ],
            asked: Some((user.clone(), room.clone(), "LEAVE")),
        },
        RoomChange::Gone { user, reason } => Scripted {
            source: with(GONE),
            args: vec![
                user.to_string(),
                node.to_string(),
                reason.as_str().to_owned(),
            ],
            asked: None,
        },
        RoomChange::Adopt { user, epoch } => Scripted {
            source: with(ADOPT),
            args: vec![user.to_string(), node.to_string(), epoch.to_string()],
            asked: None,
        },
    }
}

impl Scripted {
    /// Adds the script to `pipe` (its result is read by [`Scripted::answer`]).
    pub(super) fn add_to(&self, pipe: &mut redis::Pipeline) {
        let command = pipe.cmd("EVAL").arg(&self.source).arg(0);
        for arg in &self.args {
            command.arg(arg);
        }
    }

    /// Answers the user when the shared state refused its join or leave,
    /// or could not be reached (`result`: the script's reply).
    pub(super) fn answer(&self, hub: &Hub, node: &NodeId, result: Result<&redis::Value, &str>) {
        let Some((user, room, kind)) = &self.asked else {
            return;
        };
        let refused = match result {
            Err(why) => RoomError::Unavailable(why.to_owned()),
            Ok(redis::Value::ServerError(err)) => match err.code() {
                "FULL" => RoomError::Full {
                    room: room.to_string(),
                    max: hub.limits().max_room_members,
                },
                "TOO_MANY" => RoomError::TooMany {
                    max: hub.limits().max_rooms_per_user,
                },
                "NOT_IN_ROOM" => RoomError::NotInRoom(room.to_string()),
                // A newer connection of the user holds it now; this one
                // is on its way out.
                "FENCED" => return,
                other => RoomError::Unavailable(format!("Redis refused the change: {other}")),
            },
            // Already a member: JOINED again, from this node's view.
            Ok(redis::Value::SimpleString(answer)) if answer == "ALREADY" => {
                hub.room_joined(room, user, node);
                return;
            }
            Ok(_) => return,
        };
        hub.room_refused(user, room, kind, refused);
    }
}

/// Purges every node that holds members but no lease.
pub(super) async fn purge_dead(cluster: &RedisCluster, live: &[NodeId]) {
    let Ok(indexes) = cluster.scan(NODE_ROOMS).await else {
        return;
    };
    for index in indexes {
        let node = index.strip_prefix(NODE_ROOMS).unwrap_or(&index);
        if live.iter().any(|live| live.as_ref() == node) {
            continue;
        }
        let mut redis = cluster.redis.clone();
        let result = bounded(
            redis::cmd("EVAL")
                .arg(format!("{PRELUDE}{PURGE}"))
                .arg(0)
                .arg(node)
                .query_async::<i64>(&mut redis),
        )
        .await;
        match result {
            Ok(_) => tracing::info!(node, "took a dead node's users out of their rooms"),
            Err(err) => tracing::warn!(%err, node, "could not clear a dead node's rooms"),
        }
    }
}

/// Reads every room from Redis and hands it to the hub (a node that
/// starts, or subscribes again).
pub(super) async fn load(cluster: &RedisCluster, hub: &Hub) -> Result<(), String> {
    let names: Vec<String> = cluster
        .scan(ROOMS)
        .await?
        .into_iter()
        .filter_map(|key| key.strip_prefix(ROOMS).map(str::to_owned))
        .collect();
    let mut rooms = Vec::with_capacity(names.len());
    if !names.is_empty() {
        let mut pipe = redis::pipe();
        for room in &names {
            pipe.cmd("ZRANGE").arg(room_members(room)).arg(0).arg(-1);
            pipe.cmd("HGETALL").arg(format!("sg:roomnode:{room}"));
        }
        let mut redis = cluster.redis.clone();
        type Reply = Vec<redis::Value>;
        let replies: Reply = bounded(pipe.query_async(&mut redis)).await?;
        for (room, pair) in names.into_iter().zip(replies.chunks(2)) {
            let members: Vec<String> = redis::from_redis_value_ref(&pair[0]).unwrap_or_default();
            let nodes: std::collections::HashMap<String, String> =
                redis::from_redis_value_ref(&pair[1]).unwrap_or_default();
            let members = members
                .into_iter()
                .filter_map(|user| {
                    let node = nodes.get(&user)?;
                    Some((Arc::from(user.as_str()), NodeId::from(node.as_str())))
                })
                .collect();
            rooms.push(RoomMembers {
                room: Arc::from(room.as_str()),
                members,
            });
        }
    }
    hub.rooms_loaded(rooms);
    Ok(())
}

/// Handles a room message on the control channel or this node's inbox.
pub(super) fn handle(header: Header, frames: Vec<bytes::Bytes>, hub: &Hub) {
    match header {
        Header::Room {
            change,
            room,
            user,
            node,
            reason,
        } => {
            let node = NodeId::from(node.as_str());
            match change.as_str() {
                "joined" => hub.room_joined(&room, &user, &node),
                "moved" => hub.room_moved(&room, &user, &node),
                "left" => {
                    let reason = reason
                        .as_deref()
                        .and_then(|reason| reason.parse().ok())
                        .unwrap_or(LeaveReason::Disconnected);
                    hub.room_departed(&room, &user, &node, reason);
                }
                other => tracing::warn!(change = other, "an unknown room change; ignored"),
            }
        }
        Header::RoomEnvelope { room, sender, .. } => {
            if let Some(frame) = frames.into_iter().next() {
                hub.deliver_room_remote(&room, &sender, frame);
            }
        }
        Header::Kick { from, user } if hub.kick_user_here(&user) => {
            tracing::info!(%user, %from, "kicked on another node's admin request");
        }
        _ => {}
    }
}

/// The message carrying a room envelope to `node`'s inbox.
pub(super) fn envelope_message(
    from: &NodeId,
    room: &str,
    sender: &str,
    frame: bytes::Bytes,
) -> bytes::Bytes {
    super::messages::encode(
        &Header::RoomEnvelope {
            from: from.to_string(),
            room: room.to_owned(),
            sender: sender.to_owned(),
        },
        &[frame],
    )
}

/// The channel a node's room envelopes go to.
pub(super) fn inbox(node: &NodeId) -> String {
    keys::inbox(node)
}
