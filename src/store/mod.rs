//! Where registered identities live, behind the core's
//! [`IdentityStore`] seam: in memory only, in an embedded database file
//! that survives restarts (the default), or in Redis, shared by a cluster.

mod embedded;
mod redis;

use std::path::PathBuf;
use std::sync::Arc;

use crate::core::Limits;
use crate::core::clock::Clock;
use crate::core::store::{IdentityStore, MemoryStore};

pub use embedded::{EmbeddedStore, OpenError};
pub use redis::RedisStore;

/// Which store keeps registered identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// In memory: a restart forgets every identity.
    Memory,
    /// An embedded database file in `--data-dir` (redb): identities survive
    /// restarts and crashes.
    Embedded,
    /// Redis (`--redis`): shared by every node of a cluster.
    Redis,
}

/// Opens the configured store: `kind`, or Redis when the gateway is a
/// cluster node (`redis`), else the embedded one.
pub async fn open(
    kind: Option<StoreKind>,
    data_dir: PathBuf,
    limits: &Limits,
    redis: Option<crate::cluster::Primary>,
    clock: &Clock,
) -> Result<Arc<dyn IdentityStore>, OpenError> {
    let caps = (limits.max_identities, limits.max_identities_per_ip);
    let clock = clock.clone();
    Ok(match (kind, redis) {
        (Some(StoreKind::Memory), _) => {
            Arc::new(MemoryStore::new(caps.0, caps.1).with_clock(clock))
        }
        (Some(StoreKind::Redis) | None, Some(redis)) => {
            Arc::new(RedisStore::new(redis, caps.0, caps.1).with_clock(clock))
        }
        (Some(StoreKind::Embedded | StoreKind::Redis) | None, _) => {
            Arc::new(EmbeddedStore::open(data_dir, limits, clock).await?)
        }
    })
}
