//! Where the cluster keeps its state in Redis, and the scripts that change
//! it atomically. Every key starts with `sg:`.
//!
//! - `sg:route:<user>`: hash `node`, `conn`, `epoch`, `transport`, `since`:
//!   the user's live connection.
//! - `sg:epoch:<user>`: the user's last claimed epoch (kept a week after the
//!   last claim; claims never go below a route's epoch).
//! - `sg:node:<node>`: a node's lease (JSON [`NodeInfo`]), renewed every
//!   second, expiring after three.
//! - `sg:inbox:<node>`: the channel a node subscribes to; `sg:control`: the
//!   channel every node subscribes to.
//!
//! [`NodeInfo`]: crate::core::cluster::NodeInfo

use std::sync::LazyLock;

use redis::Script;

/// A user's route.
pub fn route(user: &str) -> String {
    format!("sg:route:{user}")
}

/// The prefix of every route key.
pub const ROUTES: &str = "sg:route:";

/// A user's epoch counter.
pub fn epoch(user: &str) -> String {
    format!("sg:epoch:{user}")
}

/// A node's lease.
pub fn lease(node: &str) -> String {
    format!("sg:node:{node}")
}

/// The prefix of every lease key.
pub const LEASES: &str = "sg:node:";

/// A node's inbox channel.
pub fn inbox(node: &str) -> String {
    format!("sg:inbox:{node}")
}

/// The channel every node hears.
pub const CONTROL: &str = "sg:control";

/// How long an epoch counter outlives its last claim.
pub const EPOCH_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;

/// Claims a user: the next epoch (above any route's), the route set to the
/// claiming connection; returns `{epoch, previous node, previous epoch}`.
/// KEYS: route, epoch. ARGV: node, conn, transport, since, keep (ms).
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local epoch = redis.call('INCR', KEYS[2])
local prev = redis.call('HMGET', KEYS[1], 'node', 'epoch')
local prev_epoch = tonumber(prev[2] or '0')
if prev_epoch >= epoch then
  epoch = prev_epoch + 1
  redis.call('SET', KEYS[2], epoch)
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2], 'epoch', epoch,
  'transport', ARGV[3], 'since', ARGV[4])
return {epoch, prev[1] or '', prev_epoch}
",
    )
});

/// Removes a route if it is still the claim `epoch` (sent with `EVAL` in
/// the courier's pipelines). KEYS: route. ARGV: epoch.
pub const RELEASE_SOURCE: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Claims a user again with the epoch it already has (after the node lost
/// Redis for a while), unless a newer claim was made meanwhile. Returns
/// `{1 kept | 0 lost, previous node, previous epoch}`. KEYS: route, epoch.
/// ARGV: node, conn, epoch, transport, since, keep (ms).
pub static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local prev = redis.call('HMGET', KEYS[1], 'node', 'epoch')
local mine = tonumber(ARGV[3])
local prev_epoch = tonumber(prev[2] or '0')
if prev_epoch > mine then
  return {0, prev[1] or '', prev_epoch}
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2], 'epoch', ARGV[3],
  'transport', ARGV[4], 'since', ARGV[5])
if tonumber(redis.call('GET', KEYS[2]) or '0') < mine then
  redis.call('SET', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {1, prev[1] or '', prev_epoch}
",
    )
});
