//! Identities in an embedded database file (redb) that survive restarts.
//!
//! Why redb: pure Rust (no C to build), ACID, crash-safe by design, and it
//! fsyncs on every commit by default; one file, locked against a second
//! process. SQLite would do as well but compiles C and needs WAL plus
//! `synchronous=FULL` to give the same promise.
//!
//! Every lookup is answered from an in-memory index loaded at start
//! ([`MemoryStore`]); only changes touch the file, each in a blocking task
//! so the async runtime's workers never wait on the disk. A registration is
//! answered only after its commit has reached the disk, so an identity
//! whose `SUCCESS` a client saw survives a crash (even SIGKILL) right after.
//! Last-seen times are written in batches by [`IdentityStore::flush`]
//! (every sweep, at most a minute apart, and at shutdown): a crash can lose
//! the last minute of them, which makes those identities look up to a
//! minute older than they are — harmless against a time-to-live of hours.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::core::Limits;
use crate::core::store::{
    Decision, IdentityStore, MemoryStore, Record, Registration, StoreError, StoreFuture,
    TokenDigest, unix_ms,
};

/// The file in `--data-dir`.
pub const FILE_NAME: &str = "identities.redb";
/// The layout of the records this gateway reads and writes.
const FORMAT_VERSION: u64 = 1;
/// Pages redb may cache; the index in memory answers every lookup, so the
/// cache only serves writes.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const IDENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("identities");
const FORMAT_KEY: &str = "format_version";

/// A record on disk: digest (32), last seen in Unix ms (8, little-endian),
/// registering address as IPv6 (16; IPv4 mapped).
const RECORD_BYTES: usize = 32 + 8 + 16;

/// Why the store cannot open. Nothing is ever deleted or rewritten when
/// opening fails: the gateway stops and says why.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created or used.
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process (another gateway) has the file open.
    #[error("{path} is in use by another process (another gateway on the same --data-dir?)")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a gateway with another record layout.
    #[error(
        "{path} has format version {found}; this gateway reads version {FORMAT_VERSION} (use the gateway that wrote it, or another --data-dir)"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it says it has.
        found: u64,
    },
    /// The file cannot be read as an identity database; it is left as it is.
    #[error(
        "cannot open {path}: {reason}; the file is left untouched (move it away to start empty)"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What redb or the record decoder said.
        reason: String,
    },
}

/// Registered identities in a redb file, with the whole set in memory.
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    index: MemoryStore,
    /// One change at a time: decided against the index, committed to the
    /// file, then applied to the index.
    writer: tokio::sync::Mutex<()>,
    /// Names whose last-seen time changed since the last flush.
    dirty: Mutex<HashSet<Arc<str>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) `identities.redb` in `data_dir` and loads it.
    pub async fn open(data_dir: PathBuf, limits: &Limits) -> Result<Self, OpenError> {
        let index = MemoryStore::new(limits.max_identities, limits.max_identities_per_ip);
        let (db, path, records) = tokio::task::spawn_blocking(move || open_file(&data_dir))
            .await
            .map_err(|err| OpenError::Unreadable {
                path: PathBuf::from(FILE_NAME),
                reason: err.to_string(),
            })??;
        for record in records {
            index.insert(record);
        }
        tracing::info!(path = %path.display(), identities = index.len(), "identity store open");
        Ok(Self {
            db: Arc::new(db),
            path,
            index,
            writer: tokio::sync::Mutex::new(()),
            dirty: Mutex::default(),
        })
    }

    /// Runs `change` in one write transaction on a blocking thread.
    async fn commit(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        let written = tokio::task::spawn_blocking(move || {
            let txn = db.begin_write()?;
            change(&txn)?;
            txn.commit()?;
            Ok::<(), redb::Error>(())
        })
        .await;
        let failure = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => err.to_string(),
            Err(err) => err.to_string(),
        };
        tracing::error!(path = %self.path.display(), error = %failure, "writing identities failed");
        Err(StoreError::Unavailable(format!(
            "writing {}: {failure}",
            self.path.display()
        )))
    }

    fn take_dirty(&self) -> Vec<Arc<str>> {
        let mut dirty = self
            .dirty
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        dirty.drain().collect()
    }
}

/// Opens the file, checks its format and reads every record. An existing
/// file is looked at read-only first: one this gateway must refuse is left
/// exactly as it was.
fn open_file(data_dir: &Path) -> Result<(Database, PathBuf, Vec<Record>), OpenError> {
    std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(FILE_NAME);
    let failure = |err: redb::DatabaseError| match err {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            OpenError::InUse { path: path.clone() }
        }
        // Not a redb file (or a damaged one) is a file problem; any other
        // I/O error is the directory's.
        redb::DatabaseError::Storage(redb::StorageError::Io(source))
            if source.kind() != std::io::ErrorKind::InvalidData =>
        {
            OpenError::DataDir {
                path: data_dir.to_owned(),
                source,
            }
        }
        other => OpenError::Unreadable {
            path: path.clone(),
            reason: other.to_string(),
        },
    };
    let exists = std::fs::metadata(&path).is_ok_and(|meta| meta.len() > 0);
    if exists {
        match Database::builder().open_read_only(&path) {
            Ok(db) => check_version(&db, &path)?,
            // Left unclean by a crash: the writable open below repairs it,
            // and checks the version after.
            Err(redb::DatabaseError::RepairAborted) => {}
            Err(err) => return Err(failure(err)),
        }
    }
    // `create` opens an existing database, initialises a missing or empty
    // file, and refuses anything else: it never overwrites.
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(&path)
        .map_err(failure)?;
    check_version(&db, &path)?;
    stamp_new(&db).map_err(|err| OpenError::Unreadable {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    let records = read_all(&db).map_err(|reason| OpenError::Unreadable {
        path: path.clone(),
        reason,
    })?;
    Ok((db, path, records))
}

/// Refuses a file written with another record layout.
fn check_version(db: &impl ReadableDatabase, path: &Path) -> Result<(), OpenError> {
    let found = (|| {
        let txn = db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(redb::Error::from(err)),
        };
        Ok(meta.get(FORMAT_KEY)?.map(|v| v.value()))
    })()
    .map_err(|err: redb::Error| OpenError::Unreadable {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    match found {
        Some(found) if found != FORMAT_VERSION => Err(OpenError::Version {
            path: path.to_owned(),
            found,
        }),
        _ => Ok(()),
    }
}

/// Gives a new file its format version and tables.
fn stamp_new(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get(FORMAT_KEY)?.is_none() {
            meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
        }
        txn.open_table(IDENTITIES)?;
    }
    txn.commit()?;
    Ok(())
}

fn read_all(db: &Database) -> Result<Vec<Record>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(IDENTITIES).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for row in table.iter().map_err(|e| e.to_string())? {
        let (name, bytes) = row.map_err(|e| e.to_string())?;
        let record = decode(name.value(), bytes.value())
            .ok_or_else(|| format!("the record of {:?} is damaged", name.value()))?;
        records.push(record);
    }
    Ok(records)
}

fn encode(record: &Record) -> [u8; RECORD_BYTES] {
    let mut out = [0u8; RECORD_BYTES];
    out[..32].copy_from_slice(&record.digest);
    out[32..40].copy_from_slice(&record.last_seen_ms.to_le_bytes());
    let v6 = match record.registered_by {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out[40..].copy_from_slice(&v6.octets());
    out
}

fn decode(name: &str, bytes: &[u8]) -> Option<Record> {
    let bytes: &[u8; RECORD_BYTES] = bytes.try_into().ok()?;
    let mut digest: TokenDigest = [0; 32];
    digest.copy_from_slice(&bytes[..32]);
    let last_seen_ms = u64::from_le_bytes(bytes[32..40].try_into().ok()?);
    let octets: [u8; 16] = bytes[40..].try_into().ok()?;
    Some(Record {
        name: Arc::from(name),
        digest,
        last_seen_ms,
        registered_by: IpAddr::V6(Ipv6Addr::from(octets)).to_canonical(),
    })
}

fn write_records(txn: &redb::WriteTransaction, records: &[Record]) -> Result<(), redb::Error> {
    let mut table = txn.open_table(IDENTITIES)?;
    for record in records {
        table.insert(&*record.name, encode(record).as_slice())?;
    }
    Ok(())
}

impl IdentityStore for EmbeddedStore {
    fn register<'a>(
        &'a self,
        name: &'a str,
        presented: Option<&'a str>,
        address: IpAddr,
    ) -> StoreFuture<'a, Registration> {
        Box::pin(async move {
            let _writing = self.writer.lock().await;
            match self.index.decide(name, presented, address)? {
                Decision::Taken => Ok(Registration::Taken),
                Decision::Reclaim(username) => Ok(Registration::Reclaimed {
                    username,
                    token: presented.unwrap_or_default().to_owned(),
                }),
                Decision::Create => {
                    let (record, token) = Record::fresh(name, address);
                    let written = record.clone();
                    self.commit(move |txn| write_records(txn, &[written]))
                        .await?;
                    let username = record.name.clone();
                    self.index.insert(record);
                    Ok(Registration::Created { username, token })
                }
            }
        })
    }

    fn authenticate<'a>(&'a self, token: &'a str) -> StoreFuture<'a, Option<Arc<str>>> {
        Box::pin(std::future::ready(Ok(self.index.lookup(token))))
    }

    fn touch(&self, name: &str) {
        if self.index.set_seen(name, unix_ms(SystemTime::now())) {
            self.dirty
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(Arc::from(name));
        }
    }

    fn expire<'a>(
        &'a self,
        ttl: Duration,
        in_use: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> StoreFuture<'a, Vec<Arc<str>>> {
        Box::pin(async move {
            let _writing = self.writer.lock().await;
            let cutoff = unix_ms(SystemTime::now())
                .saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            let expired = self.index.unseen_since(cutoff, in_use);
            if expired.is_empty() {
                return Ok(expired);
            }
            let names = expired.clone();
            self.commit(move |txn| {
                let mut table = txn.open_table(IDENTITIES)?;
                for name in &names {
                    table.remove(&**name)?;
                }
                Ok(())
            })
            .await?;
            self.index.remove(&expired);
            Ok(expired)
        })
    }

    fn clear(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let _writing = self.writer.lock().await;
            self.commit(|txn| {
                txn.delete_table(IDENTITIES)?;
                txn.open_table(IDENTITIES)?;
                Ok(())
            })
            .await?;
            self.take_dirty();
            Ok(self.index.forget_all())
        })
    }

    fn names(&self) -> StoreFuture<'_, Vec<Arc<str>>> {
        Box::pin(std::future::ready(Ok(self.index.sorted_names())))
    }

    fn count(&self) -> usize {
        self.index.len()
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let _writing = self.writer.lock().await;
            // Names removed since they were touched have no record left.
            let records: Vec<Record> = self
                .take_dirty()
                .iter()
                .filter_map(|name| self.index.record(name))
                .collect();
            if records.is_empty() {
                return Ok(());
            }
            self.commit(move |txn| write_records(txn, &records)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn records_round_trip() {
        for address in [
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            "2001:db8::".parse().unwrap(),
        ] {
            let record = Record {
                name: Arc::from("Zoë Li"),
                digest: [7; 32],
                last_seen_ms: 1_764_000_000_123,
                registered_by: address,
            };
            assert_eq!(decode("Zoë Li", &encode(&record)), Some(record));
        }
        assert_eq!(decode("x", &[0; 10]), None, "a short record is damaged");
    }
}
