//! Where the cluster keeps its state in Redis, and the scripts that change
//! it atomically. Every key starts with `sg:`.
//!
//! - `sg:route:<user>`: hash `node`, `conn`, `epoch`, `transport`, `since`:
//!   the user's live connection.
//! - `sg:epoch:<user>`: the user's last claimed epoch (kept a week after the
//!   last claim; claims never go below a route's epoch).
//! - `sg:node:<node>`: a node's lease (JSON [`NodeInfo`]), renewed every
//!   second, expiring after three.
//! - `sg:generation`: hash `id`, `at` (ms): the cluster's shared state as
//!   the nodes found it. Written once by the first node; if it is gone or
//!   another, Redis lost what the nodes relied on (it restarted empty).
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

/// The cluster's shared state generation.
pub const GENERATION: &str = "sg:generation";

/// How long an epoch counter outlives its last claim.
pub const EPOCH_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;

/// Checks, at the top of a script, that `sg:generation` (KEYS[3]) is still
/// the one the node knows (ARGV[g]) and, for a claim, that it is at least
/// ARGV[g+1] ms old at ARGV[g+2] (now, ms): a state Redis made anew is
/// claimed in only once every node has had time to notice that the old one
/// is gone and close its users.
fn generation_guard(first: usize, settle: bool) -> String {
    let mut guard = format!(
        "local generation = redis.call('HMGET', KEYS[3], 'id', 'at')
if generation[1] ~= ARGV[{first}] then
  return redis.error_reply('GENERATION the cluster state this node knew is gone (Redis restarted empty?)')
end
"
    );
    if settle {
        guard.push_str(&format!(
            "if tonumber(ARGV[{now}]) - tonumber(generation[2] or '0') < tonumber(ARGV[{wait}]) then
  return redis.error_reply('SETTLING the cluster state is new; claims wait until every node has noticed')
end
",
            wait = first + 1,
            now = first + 2
        ));
    }
    guard
}

/// Sets up `sg:generation` (KEYS[1]) with ARGV id and at (ms) unless it
/// exists; returns `{id, at}` of the one there is.
pub static ADOPT_GENERATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'at', ARGV[2])
end
local generation = redis.call('HMGET', KEYS[1], 'id', 'at')
return {generation[1], tonumber(generation[2])}
",
    )
});

/// The lowest epoch a claim gets under the Sentinels' `config_epoch`
/// (which grows with every failover): every claim made after a failover
/// outranks every claim made before it, even one the new primary never
/// received.
pub fn epoch_floor(config_epoch: u64) -> u64 {
    (config_epoch << 32) + 1
}

/// Claims a user: the next epoch (above any route's and at least the
/// failover's floor), the route set to the claiming connection; returns
/// `{epoch, previous node, previous epoch}`. KEYS: route, epoch,
/// generation. ARGV: node, conn, transport, since, keep (ms), generation
/// id, settle (ms), now (ms), floor.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        generation_guard(6, true),
        r"
local counted = redis.call('INCR', KEYS[2])
local epoch = counted
local prev = redis.call('HMGET', KEYS[1], 'node', 'epoch')
local prev_epoch = tonumber(prev[2] or '0')
if prev_epoch >= epoch then
  epoch = prev_epoch + 1
end
if tonumber(ARGV[9]) > epoch then
  epoch = tonumber(ARGV[9])
end
if epoch ~= counted then
  redis.call('SET', KEYS[2], epoch)
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2], 'epoch', epoch,
  'transport', ARGV[3], 'since', ARGV[4])
return {epoch, prev[1] or '', prev_epoch}
"
    ))
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
/// `{1 kept | 0 lost, previous node, previous epoch}`. KEYS: route, epoch,
/// generation. ARGV: node, conn, epoch, transport, since, keep (ms),
/// generation id.
pub static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        generation_guard(7, false),
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
"
    ))
});
