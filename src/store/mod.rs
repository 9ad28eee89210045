//! Where registered identities live, behind the core's
//! [`IdentityStore`] seam: in memory only, or in an embedded database file
//! that survives restarts (the default).

mod embedded;

use std::path::PathBuf;
use std::sync::Arc;

use crate::core::Limits;
use crate::core::store::{IdentityStore, MemoryStore};

pub use embedded::{EmbeddedStore, OpenError};

/// Which store keeps registered identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreKind {
    /// In memory: a restart forgets every identity.
    Memory,
    /// An embedded database file in `--data-dir` (redb): identities survive
    /// restarts and crashes.
    #[default]
    Embedded,
}

/// Opens the configured store.
pub async fn open(
    kind: StoreKind,
    data_dir: PathBuf,
    limits: &Limits,
) -> Result<Arc<dyn IdentityStore>, OpenError> {
    Ok(match kind {
        StoreKind::Memory => Arc::new(MemoryStore::new(
            limits.max_identities,
            limits.max_identities_per_ip,
        )),
        StoreKind::Embedded => Arc::new(EmbeddedStore::open(data_dir, limits).await?),
    })
}
