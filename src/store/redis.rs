//! Identities in Redis, shared by every node of a cluster: register on one
//! node, connect on any other.
//!
//! - `sg:identity:<name>`: hash `digest` (hex SHA-256 of the token), `by`
//!   (the registering address's per-IP key), `created` (ms).
//! - `sg:token:<digest>`: the name a token digest belongs to.
//! - `sg:identities`, `sg:by-ip:<key>`: sorted sets of names by last-seen
//!   time (ms), for the caps, the listing and expiry.
//!
//! Registration is one script, so two nodes registering the same name at
//! once cannot both win, and the caps hold cluster-wide. Redis must persist
//! (`appendonly yes`) for identities to survive its restart, as the README
//! says. Tokens are compared as digests, the one comparison with a known
//! identity in constant time, as in the other stores.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::Script;
use subtle::ConstantTimeEq;

use crate::cluster::Primary;
use crate::core::clock::Clock;
use crate::core::store::{
    IdentityStore, Record, Registration, StoreError, StoreFuture, token_digest,
};

const IDENTITIES: &str = "sg:identities";

fn identity_key(name: &str) -> String {
    format!("sg:identity:{name}")
}

fn token_key(digest_hex: &str) -> String {
    format!("sg:token:{digest_hex}")
}

fn by_ip_key(address: &str) -> String {
    format!("sg:by-ip:{address}")
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates an identity unless the name exists (then returns its digest) or
/// a cap is reached. KEYS: identity, token, identities, by-ip. ARGV: name,
/// digest, by, now, max total, max per address.
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local existing = redis.call('HGET', KEYS[1], 'digest')
if existing then return {'exists', existing} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return {'full'} end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[6]) then return {'address_full'} end
redis.call('HSET', KEYS[1], 'digest', ARGV[2], 'by', ARGV[3], 'created', ARGV[4])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return {'created'}
",
    )
});

/// The name a token digest belongs to, if its identity still has that
/// digest. KEYS: token. ARGV: digest.
static AUTHENTICATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local name = redis.call('GET', KEYS[1])
if not name then return false end
if redis.call('HGET', 'sg:identity:' .. name, 'digest') ~= ARGV[1] then return false end
return name
",
    )
});

/// Undoes a registration no replica confirmed, unless the identity was
/// replaced meanwhile. KEYS: identity, token, identities, by-ip. ARGV:
/// name, digest.
static UNREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'digest') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
",
    )
});

/// Marks names as seen when they were, each unless a later time is kept
/// already (another node saw it since). ARGV: name, Unix ms, name, ms...
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #ARGV, 2 do
  local name, seen = ARGV[i], tonumber(ARGV[i + 1])
  local by = redis.call('HGET', 'sg:identity:' .. name, 'by')
  if by and seen > tonumber(redis.call('ZSCORE', 'sg:identities', name) or 0) then
    redis.call('ZADD', 'sg:identities', seen, name)
    redis.call('ZADD', 'sg:by-ip:' .. by, seen, name)
  end
end
return 0
",
    )
});

/// Removes the named identities that are still unseen since the cutoff and
/// not connected anywhere in the cluster (no route; those are marked seen
/// now); returns the names removed. ARGV: cutoff, now, names...
static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = {}
for i = 3, #ARGV do
  local name = ARGV[i]
  local seen = redis.call('ZSCORE', 'sg:identities', name)
  if seen and tonumber(seen) < tonumber(ARGV[1]) then
    if redis.call('EXISTS', 'sg:route:' .. name) == 1 then
      redis.call('ZADD', 'sg:identities', ARGV[2], name)
    else
      local identity = redis.call('HMGET', 'sg:identity:' .. name, 'digest', 'by')
      if identity[1] then redis.call('DEL', 'sg:token:' .. identity[1]) end
      if identity[2] then redis.call('ZREM', 'sg:by-ip:' .. identity[2], name) end
      redis.call('DEL', 'sg:identity:' .. name)
      redis.call('ZREM', 'sg:identities', name)
      table.insert(removed, name)
    end
  end
end
return removed
",
    )
});

/// Names expiry looks at per round trip.
const EXPIRE_BATCH: usize = 500;

/// Identities in Redis.
#[derive(Debug)]
pub struct RedisStore {
    redis: Primary,
    max_identities: usize,
    max_per_address: usize,
    /// Names seen since the last flush, and when (Unix ms).
    seen: Mutex<HashMap<Arc<str>, u64>>,
    /// The count at the last look (every node registers).
    count: AtomicUsize,
    clock: Clock,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("Redis: {err}"))
}

/// Runs a Redis operation under the cluster's timeout.
async fn bounded<T>(
    operation: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(Duration::from_secs(2), operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(unavailable(err)),
        Err(_) => Err(unavailable("no answer within 2 s")),
    }
}

impl RedisStore {
    /// Identities on `redis`, with the caps of `--max-identities` and
    /// `--max-identities-per-ip` (cluster-wide).
    pub fn new(redis: Primary, max_identities: usize, max_per_address: usize) -> Self {
        Self {
            redis,
            max_identities,
            max_per_address,
            seen: Mutex::default(),
            count: AtomicUsize::new(0),
            clock: Clock::system(),
        }
    }

    /// The same store dating identities by `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        // A map of names, changed by code that cannot panic midway.
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the last-seen times noted since the last time.
    async fn write_seen(&self) -> Result<(), StoreError> {
        let seen: Vec<(Arc<str>, u64)> = self.seen().drain().collect();
        if seen.is_empty() {
            return Ok(());
        }
        let mut touch = TOUCH.prepare_invoke();
        for (name, at) in &seen {
            touch.arg(name.as_ref()).arg(*at);
        }
        let mut redis = self.redis.clone();
        let written = bounded(touch.invoke_async::<()>(&mut redis)).await;
        if written.is_err() {
            // Written at the next flush, unless seen again since.
            let mut pending = self.seen();
            for (name, at) in seen {
                pending.entry(name).or_insert(at);
            }
        }
        written
    }

    /// The number of identities, as Redis counts it now.
    async fn recount(&self) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let count: usize =
            bounded(redis::cmd("ZCARD").arg(IDENTITIES).query_async(&mut redis)).await?;
        self.count.store(count, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes every key under `pattern`; returns how many.
    async fn delete_matching(&self, pattern: &str) -> Result<usize, StoreError> {
        let mut redis = self.redis.clone();
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut redis),
            )
            .await?;
            if !keys.is_empty() {
                deleted += keys.len();
                bounded(
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<()>(&mut redis),
                )
                .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// Waits until a replica has the registration just made on `redis`
/// (`WAIT 1`), at most `wait`; unconfirmed, the registration is undone and
/// refused, so a failover cannot lose an identity its owner was told about.
async fn confirm(
    redis: &mut Primary,
    wait: Duration,
    keys: &[String; 4],
    name: &str,
    digest: &str,
) -> Result<(), StoreError> {
    let mut command = redis::cmd("WAIT");
    command
        .arg(1)
        .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
    let waiting = command.query_async::<u64>(redis);
    let replicas = match tokio::time::timeout(wait + Duration::from_secs(2), waiting).await {
        Ok(answer) => answer.map_err(unavailable)?,
        Err(_) => 0,
    };
    if replicas >= 1 {
        return Ok(());
    }
    let undone = bounded(
        UNREGISTER
            .key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .key(&keys[3])
            .arg(name)
            .arg(digest)
            .invoke_async::<u8>(redis),
    )
    .await;
    if let Err(err) = undone {
        tracing::warn!(%err, "could not undo a registration no replica confirmed");
    }
    Err(unavailable(format!(
        "no replica confirmed the registration within {} ms; nothing was registered",
        wait.as_millis()
    )))
}

impl IdentityStore for RedisStore {
    fn register<'a>(
        &'a self,
        name: &'a str,
        presented: Option<&'a str>,
        address: IpAddr,
    ) -> StoreFuture<'a, Registration> {
        Box::pin(async move {
            let (record, token) = Record::fresh(name, address, self.clock.unix_ms());
            let digest = hex(&record.digest);
            let by = record.registered_by.to_string();
            let wait = self.redis.replica_wait();
            // WAIT covers the writes of the connection it is sent on.
            let mut redis = match wait {
                Some(_) => self.redis.for_registrations(),
                None => self.redis.clone(),
            };
            let keys = [
                identity_key(name),
                token_key(&digest),
                IDENTITIES.to_owned(),
                by_ip_key(&by),
            ];
            let answer: Vec<String> = bounded(
                REGISTER
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .key(&keys[3])
                    .arg(name)
                    .arg(&digest)
                    .arg(&by)
                    .arg(record.last_seen_ms)
                    .arg(self.max_identities)
                    .arg(self.max_per_address)
                    .invoke_async(&mut redis),
            )
            .await?;
            match answer.first().map(String::as_str) {
                Some("created") => {
                    if let Some(wait) = wait {
                        confirm(&mut redis, wait, &keys, name, &digest).await?;
                    }
                    self.count.fetch_add(1, Ordering::Relaxed);
                    Ok(Registration::Created {
                        username: record.name,
                        token,
                    })
                }
                Some("exists") => {
                    let stored = answer.get(1).map(String::as_str).unwrap_or_default();
                    let owns = presented.is_some_and(|token| {
                        bool::from(
                            hex(&token_digest(token))
                                .as_bytes()
                                .ct_eq(stored.as_bytes()),
                        )
                    });
                    // As in the other stores, proving ownership is not
                    // being seen: only connections refresh an identity.
                    if owns {
                        Ok(Registration::Reclaimed {
                            username: name.into(),
                            token: presented.unwrap_or_default().to_owned(),
                        })
                    } else {
                        Ok(Registration::Taken)
                    }
                }
                Some("full") => Err(StoreError::Full(self.max_identities)),
                Some("address_full") => Err(StoreError::AddressFull(self.max_per_address)),
                other => Err(unavailable(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn authenticate<'a>(&'a self, token: &'a str) -> StoreFuture<'a, Option<Arc<str>>> {
        Box::pin(async move {
            let digest = hex(&token_digest(token));
            let mut redis = self.redis.clone();
            let name: Option<String> = bounded(
                AUTHENTICATE
                    .key(token_key(&digest))
                    .arg(&digest)
                    .invoke_async(&mut redis),
            )
            .await?;
            Ok(name.map(Arc::from))
        })
    }

    fn touch(&self, name: &str) {
        self.seen().insert(name.into(), self.clock.unix_ms());
    }

    /// Identities still connected anywhere in the cluster (a route in
    /// Redis) are kept, as are those `in_use` says are connected here. The
    /// last-seen times noted since the last flush are written first, so
    /// that what was seen is judged by it.
    fn expire<'a>(
        &'a self,
        ttl: Duration,
        in_use: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> StoreFuture<'a, Vec<Arc<str>>> {
        Box::pin(async move {
            self.write_seen().await?;
            let now = self.clock.unix_ms();
            let cutoff = now.saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            let mut expired = Vec::new();
            let mut redis = self.redis.clone();
            // Names kept because they are in use stay in the range, ahead of
            // the rest: the next round starts after them.
            let mut kept = 0;
            loop {
                let names: Vec<String> = bounded(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(IDENTITIES)
                        .arg("-inf")
                        .arg(format!("({cutoff}"))
                        .arg("LIMIT")
                        .arg(kept)
                        .arg(EXPIRE_BATCH)
                        .query_async(&mut redis),
                )
                .await?;
                let (used, unused): (Vec<String>, Vec<String>) =
                    names.iter().cloned().partition(|name| in_use(name));
                kept += used.len();
                if !unused.is_empty() {
                    let mut expire = EXPIRE.arg(cutoff);
                    expire.arg(now).arg(&unused);
                    let removed: Vec<String> = bounded(expire.invoke_async(&mut redis)).await?;
                    expired.extend(removed.into_iter().map(Arc::from));
                }
                if names.len() < EXPIRE_BATCH {
                    break;
                }
            }
            self.recount().await?;
            Ok(expired)
        })
    }

    fn clear(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let before: usize =
                bounded(redis::cmd("ZCARD").arg(IDENTITIES).query_async(&mut redis)).await?;
            self.delete_matching("sg:identity:*").await?;
            self.delete_matching("sg:token:*").await?;
            self.delete_matching("sg:by-ip:*").await?;
            bounded(
                redis::cmd("DEL")
                    .arg(IDENTITIES)
                    .query_async::<()>(&mut redis),
            )
            .await?;
            self.count.store(0, Ordering::Relaxed);
            Ok(before)
        })
    }

    fn names(&self) -> StoreFuture<'_, Vec<Arc<str>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let mut names: Vec<String> = bounded(
                redis::cmd("ZRANGE")
                    .arg(IDENTITIES)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut redis),
            )
            .await?;
            names.sort();
            Ok(names.into_iter().map(Arc::from).collect())
        })
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.write_seen().await?;
            self.recount().await
        })
    }
}
