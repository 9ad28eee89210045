//! Identities in an embedded database file (redb) that survive restarts.
//!
//! Why redb: pure Rust (no C to build), ACID, crash-safe by design, and it
//! fsyncs on every commit by default; one file, locked against a second
//! process. SQLite would do as well but compiles C and needs WAL plus
//! `synchronous=FULL` to give the same promise.
//!
//! Every lookup is answered from an in-memory index loaded at start
//! ([`MemoryStore`]); only changes touch the file. They go through one
//! writer task fed by a bounded queue, which commits them in batches (group
//! commit): the registrations and deletes that arrived while one commit was
//! on its way to the disk are decided together, written in the next
//! transaction and made durable by its one fsync. Each is answered only
//! after the commit that holds it has reached the disk, so an identity
//! whose `SUCCESS` a client saw survives a crash (even SIGKILL) right
//! after. Commits run on the blocking pool, so the async runtime's workers
//! never wait on the disk. Last-seen times are written in batches by
//! [`IdentityStore::flush`] (every sweep, at most a minute apart, and at
//! shutdown), in transactions of their own that give way to registrations:
//! a crash can lose the last minute of them, which makes those identities
//! look up to a minute older than they are — harmless against a
//! time-to-live of hours.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::core::Limits;
use crate::core::clock::Clock;
use tokio::sync::{mpsc, oneshot};

use crate::core::store::{
    IdentityStore, MemoryStore, Pending, Record, Registration, StoreError, StoreFuture, TokenDigest,
};

/// The file in `--data-dir`.
pub const FILE_NAME: &str = "identities.redb";
/// The layout of the records this gateway reads and writes.
const FORMAT_VERSION: u64 = 1;
/// Pages redb may cache; the index in memory answers every lookup, so the
/// cache only serves writes.
const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Requests waiting for the writer. When it is full a registration waits
/// for room (the disk sets the pace) rather than the queue growing without
/// bound.
const QUEUE: usize = 4096;
/// Most requests one transaction decides: every one of them waits for its
/// commit, so a batch is kept to what a commit writes in a millisecond or
/// two.
const MAX_BATCH: usize = 1024;
/// Last-seen times written per transaction. The writer takes registrations
/// and deletes first and writes these only when none waits, so a sweep's
/// thousands of them hold a registration up by one such transaction at most.
const LAST_SEEN_CHUNK: usize = 1024;

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
    index: Arc<MemoryStore>,
    /// Names whose last-seen time changed since the last flush.
    dirty: Arc<Mutex<HashSet<Arc<str>>>>,
    /// The writer's queue.
    jobs: mpsc::Sender<Job>,
}

/// Where a request's answer goes.
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the writer is asked to do.
#[derive(Debug)]
enum Job {
    /// A change that joins the next batch.
    Change(Change),
    /// Forget every identity: a batch of its own.
    Clear(Reply<usize>),
    /// Write the last-seen times changed so far.
    LastSeen(Reply<()>),
}

/// A change decided and written in a batch with others.
#[derive(Debug)]
enum Change {
    /// Register a name that was free when it was asked for.
    Register {
        name: Arc<str>,
        presented: Option<String>,
        address: IpAddr,
        reply: Reply<Registration>,
    },
    /// Remove identities, each if it still has the digest it was chosen with.
    Remove {
        victims: Vec<(Arc<str>, TokenDigest)>,
        reply: Reply<Vec<Arc<str>>>,
    },
}

/// What the writer commits next.
#[derive(Debug)]
enum Batch {
    Changes(Vec<Change>),
    Clear(Reply<usize>),
}

/// A change's answer, sent once its batch is committed.
#[derive(Debug)]
enum Answer {
    Register(Reply<Registration>, Result<Registration, StoreError>),
    Remove(Reply<Vec<Arc<str>>>, Vec<Arc<str>>),
}

impl Answer {
    fn send(self) {
        // A caller that went away (its client hung up) needs no answer.
        match self {
            Answer::Register(reply, outcome) => drop(reply.send(outcome)),
            Answer::Remove(reply, removed) => drop(reply.send(Ok(removed))),
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            Answer::Register(reply, _) => drop(reply.send(Err(err))),
            Answer::Remove(reply, _) => drop(reply.send(Err(err))),
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `identities.redb` in `data_dir`, loads it, and
    /// starts its writer task; identities are dated by `clock`.
    pub async fn open(data_dir: PathBuf, limits: &Limits, clock: Clock) -> Result<Self, OpenError> {
        let index = Arc::new(
            MemoryStore::new(limits.max_identities, limits.max_identities_per_ip).with_clock(clock),
        );
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
        let dirty = Arc::new(Mutex::default());
        let (jobs, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            db: Arc::new(db),
            path,
            index: index.clone(),
            dirty: Arc::clone(&dirty),
            last_seen: Vec::new(),
            flushes: Vec::new(),
            held_over: None,
        };
        tokio::spawn(writer.run(queue));
        Ok(Self { index, dirty, jobs })
    }

    /// Hands `job` to the writer and waits for its answer.
    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(job(reply)).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the identity writer has stopped".into())
}

/// The one task that changes the file, and the index after it.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    index: Arc<MemoryStore>,
    dirty: Arc<Mutex<HashSet<Arc<str>>>>,
    /// Names whose last-seen times are still to be written.
    last_seen: Vec<Arc<str>>,
    /// Flushes waiting for `last_seen` to be written.
    flushes: Vec<Reply<()>>,
    /// A request that could not join the batch before it: the next starts
    /// with it.
    held_over: Option<Job>,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        loop {
            let first = match self.held_over.take() {
                Some(job) => job,
                None if self.last_seen.is_empty() && self.flushes.is_empty() => {
                    match queue.recv().await {
                        Some(job) => job,
                        None => return,
                    }
                }
                // Last-seen times are written only when no change waits.
                None => match queue.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.write_last_seen().await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                },
            };
            // Let the requests this runtime has already read reach the queue
            // before the batch closes: the task runs again after the runtime
            // has polled its sockets.
            tokio::task::yield_now().await;
            match self.gather(first, &mut queue) {
                Some(Batch::Changes(changes)) => self.commit(changes).await,
                Some(Batch::Clear(reply)) => self.clear(reply).await,
                None => {}
            }
        }
    }

    /// `first` and whatever else waits in the queue, up to a batch.
    fn gather(&mut self, first: Job, queue: &mut mpsc::Receiver<Job>) -> Option<Batch> {
        let mut changes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::Change(change) => changes.push(change),
                Job::LastSeen(reply) => {
                    let dirty = std::mem::take(&mut *lock(&self.dirty));
                    self.last_seen.extend(dirty);
                    self.flushes.push(reply);
                }
                Job::Clear(reply) if changes.is_empty() => return Some(Batch::Clear(reply)),
                clear @ Job::Clear(_) => {
                    self.held_over = Some(clear);
                    break;
                }
            }
            if changes.len() >= MAX_BATCH {
                break;
            }
            next = queue.try_recv().ok();
        }
        (!changes.is_empty()).then_some(Batch::Changes(changes))
    }

    /// Decides `changes` in order against the index and each other, writes
    /// them in one transaction, commits it (one fsync), applies them to the
    /// index and answers each; if the commit fails, every one of them is
    /// answered that the store is unavailable.
    async fn commit(&self, changes: Vec<Change>) {
        let (db, index) = (self.db.clone(), self.index.clone());
        let batch = tokio::task::spawn_blocking(move || {
            let (pending, answers) = decide(&index, changes);
            let written = if pending.is_empty() {
                Ok(())
            } else {
                write(&db, |txn| {
                    let mut table = txn.open_table(IDENTITIES)?;
                    for name in pending.removed() {
                        table.remove(&**name)?;
                    }
                    for record in pending.created() {
                        table.insert(&*record.name, encode(record).as_slice())?;
                    }
                    Ok(())
                })
            };
            if written.is_ok() {
                index.apply(pending);
            }
            tracing::debug!(changes = answers.len(), "identities committed");
            (written, answers)
        })
        .await;
        match batch {
            Ok((Ok(()), answers)) => answers.into_iter().for_each(Answer::send),
            Ok((Err(err), answers)) => {
                let err = self.failed(err);
                answers.into_iter().for_each(|a| a.fail(err.clone()));
            }
            // The answers went with the task; their callers see the writer
            // gone.
            Err(err) => drop(self.failed(err)),
        }
    }

    async fn clear(&self, reply: Reply<usize>) {
        let (db, index) = (self.db.clone(), self.index.clone());
        let cleared = tokio::task::spawn_blocking(move || {
            write(&db, |txn| {
                txn.delete_table(IDENTITIES)?;
                txn.open_table(IDENTITIES)?;
                Ok(())
            })
            .map(|()| index.forget_all())
        })
        .await;
        let outcome = match cleared {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(err)) => Err(self.failed(err)),
            Err(err) => Err(self.failed(err)),
        };
        let _ = reply.send(outcome);
    }

    /// Writes the next chunk of last-seen times; answers the flushes once
    /// all are written. Records are read now, from the index this task
    /// alone changes: a name removed since it was touched has none, and is
    /// not written back.
    async fn write_last_seen(&mut self) {
        let rest = self.last_seen.len().saturating_sub(LAST_SEEN_CHUNK);
        let names = self.last_seen.split_off(rest);
        let records: Vec<Record> = names
            .iter()
            .filter_map(|name| self.index.record(name))
            .collect();
        if !records.is_empty() {
            let db = self.db.clone();
            let written =
                tokio::task::spawn_blocking(move || write(&db, |txn| write_records(txn, &records)))
                    .await;
            let failure = match written {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(self.failed(err)),
                Err(err) => Some(self.failed(err)),
            };
            if let Some(err) = failure {
                // Tried again at the next flush.
                lock(&self.dirty).extend(names.into_iter().chain(self.last_seen.drain(..)));
                for reply in self.flushes.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
                return;
            }
        }
        if self.last_seen.is_empty() {
            for reply in self.flushes.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn failed(&self, failure: impl std::fmt::Display) -> StoreError {
        tracing::error!(path = %self.path.display(), error = %failure, "writing identities failed");
        StoreError::Unavailable(format!("writing {}: {failure}", self.path.display()))
    }
}

/// Decides each change in order, against the index and the changes decided
/// before it in the batch.
fn decide(index: &MemoryStore, changes: Vec<Change>) -> (Pending, Vec<Answer>) {
    let mut pending = Pending::default();
    let answers = changes
        .into_iter()
        .map(|change| match change {
            Change::Register {
                name,
                presented,
                address,
                reply,
            } => {
                let presented = presented.as_deref();
                let outcome = index
                    .decide_pending(&pending, &name, presented, address)
                    .map(|decision| {
                        decision.settled(presented).unwrap_or_else(|| {
                            let (record, token) =
                                Record::fresh(&name, address, index.clock().unix_ms());
                            let username = record.name.clone();
                            pending.create(record);
                            Registration::Created { username, token }
                        })
                    });
                Answer::Register(reply, outcome)
            }
            Change::Remove { victims, reply } => {
                let removed = victims
                    .into_iter()
                    .filter(|(name, digest)| index.remove_pending(&mut pending, name, digest))
                    .map(|(name, _)| name)
                    .collect();
                Answer::Remove(reply, removed)
            }
        })
        .collect();
    (pending, answers)
}

/// Runs `change` in one write transaction and commits it.
fn write(
    db: &Database,
    change: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    change(&txn)?;
    txn.commit()?;
    Ok(())
}

fn lock(dirty: &Mutex<HashSet<Arc<str>>>) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
    // A set of names, changed by code that cannot panic midway.
    dirty
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            // A registered name is answered from the index at once, taken or
            // its owner's again: nothing to write, nothing to wait for.
            if let Some(settled) = self
                .index
                .decide_existing(name, presented)
                .and_then(|decision| decision.settled(presented))
            {
                return Ok(settled);
            }
            self.ask(|reply| {
                Job::Change(Change::Register {
                    name: Arc::from(name),
                    presented: presented.map(str::to_owned),
                    address,
                    reply,
                })
            })
            .await
        })
    }

    fn authenticate<'a>(&'a self, token: &'a str) -> StoreFuture<'a, Option<Arc<str>>> {
        Box::pin(std::future::ready(Ok(self.index.lookup(token))))
    }

    fn touch(&self, name: &str) {
        if self.index.set_seen(name, self.index.clock().unix_ms()) {
            lock(&self.dirty).insert(Arc::from(name));
        }
    }

    fn expire<'a>(
        &'a self,
        ttl: Duration,
        in_use: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> StoreFuture<'a, Vec<Arc<str>>> {
        Box::pin(async move {
            let cutoff = self
                .index
                .clock()
                .unix_ms()
                .saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            let victims: Vec<(Arc<str>, TokenDigest)> = self
                .index
                .unseen_since(cutoff, in_use)
                .iter()
                .filter_map(|name| self.index.record(name))
                .map(|record| (record.name, record.digest))
                .collect();
            if victims.is_empty() {
                return Ok(Vec::new());
            }
            self.ask(|reply| Job::Change(Change::Remove { victims, reply }))
                .await
        })
    }

    fn clear(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let count = self.ask(Job::Clear).await?;
            lock(&self.dirty).clear();
            Ok(count)
        })
    }

    fn names(&self) -> StoreFuture<'_, Vec<Arc<str>>> {
        Box::pin(std::future::ready(Ok(self.index.sorted_names())))
    }

    fn count(&self) -> usize {
        self.index.len()
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ask(Job::LastSeen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use redb::ReadableTableMetadata;
    use std::net::Ipv4Addr;

    const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    async fn store_in(dir: &Path, max_identities: usize, max_per_address: usize) -> EmbeddedStore {
        store_at(dir, max_identities, max_per_address, Clock::system()).await
    }

    async fn store_at(
        dir: &Path,
        max_identities: usize,
        max_per_address: usize,
        clock: Clock,
    ) -> EmbeddedStore {
        let limits = Limits {
            max_identities,
            max_identities_per_ip: max_per_address,
            ..Limits::default()
        };
        EmbeddedStore::open(dir.to_owned(), &limits, clock)
            .await
            .unwrap()
    }

    /// Registers every `(name, address)` at once; the outcomes in order.
    async fn register_all(
        store: &EmbeddedStore,
        requests: &[(String, IpAddr)],
    ) -> Vec<Result<Registration, StoreError>> {
        futures::future::join_all(
            requests
                .iter()
                .map(|(name, address)| store.register(name, None, *address)),
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_for_one_name_create_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path(), 1000, 1000).await;
        let requests: Vec<(String, IpAddr)> =
            (0..64).map(|i| (format!("name-{}", i % 8), HOME)).collect();
        let outcomes = register_all(&store, &requests).await;
        let mut winners = HashSet::new();
        for outcome in &outcomes {
            match outcome {
                Ok(Registration::Created { username, token }) => {
                    assert!(winners.insert(username.clone()), "{username} created twice");
                    assert_eq!(store.index.lookup(token).as_ref(), Some(username));
                }
                Ok(Registration::Taken) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(winners.len(), 8);
        assert_eq!(store.count(), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_caps_hold_across_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path(), 12, 5).await;
        let requests: Vec<(String, IpAddr)> = (0..64u8)
            .map(|i| (format!("n{i}"), IpAddr::V4(Ipv4Addr::new(192, 0, 2, i % 4))))
            .collect();
        let outcomes = register_all(&store, &requests).await;
        let created = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Registration::Created { .. })))
            .count();
        assert_eq!(created, 12, "{outcomes:?}");
        assert!(outcomes.iter().all(|o| matches!(
            o,
            Ok(Registration::Created { .. })
                | Err(StoreError::Full(12) | StoreError::AddressFull(5))
        )));
        for address in 0..4 {
            let held = requests
                .iter()
                .zip(&outcomes)
                .filter(|((_, from), o)| {
                    *from == IpAddr::V4(Ipv4Addr::new(192, 0, 2, address))
                        && matches!(o, Ok(Registration::Created { .. }))
                })
                .count();
            assert!(held <= 5, "{held} from one address");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expiry_removes_and_frees_the_names_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let manual = ManualClock::new();
        let store = store_at(dir.path(), 100, 100, manual.clock()).await;
        let requests: Vec<(String, IpAddr)> = (0..10).map(|i| (format!("e{i}"), HOME)).collect();
        register_all(&store, &requests).await;
        manual.advance(Duration::from_secs(60));
        assert!(
            store
                .expire(Duration::from_secs(60), &|_: &str| false)
                .await
                .unwrap()
                .is_empty(),
            "a lifetime to the millisecond is not past it"
        );
        manual.advance(Duration::from_millis(1));
        let expired = store
            .expire(Duration::from_secs(60), &|name: &str| name == "e0")
            .await
            .unwrap();
        assert_eq!(expired.len(), 9);
        store.touch("e0");
        store.flush().await.unwrap();
        assert_eq!(store.names().await.unwrap(), vec![Arc::<str>::from("e0")]);
        let outcomes = register_all(&store, &requests).await;
        assert!(matches!(outcomes[0], Ok(Registration::Taken)));
        assert!(
            outcomes[1..]
                .iter()
                .all(|o| matches!(o, Ok(Registration::Created { .. })))
        );
        assert_eq!(store.clear().await.unwrap(), 10);
        assert_eq!(store.count(), 0);
        // What the file holds, read by a fresh handle once the writer has let go.
        drop(store);
        let records = within_a_second(|| {
            let db = Database::builder()
                .open_read_only(dir.path().join(FILE_NAME))
                .ok()?;
            let table = db.begin_read().ok()?.open_table(IDENTITIES).ok()?;
            table.len().ok()
        })
        .await;
        assert_eq!(records, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registration_does_not_wait_behind_last_seen_times() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path(), 10_000, 10_000).await;
        let requests: Vec<(String, IpAddr)> = (0..3 * LAST_SEEN_CHUNK)
            .map(|i| (format!("s{i}"), HOME))
            .collect();
        register_all(&store, &requests).await;
        for (name, _) in &requests {
            store.touch(name);
        }
        // Three transactions of last-seen times, asked for first.
        let order = Mutex::new(Vec::new());
        let flushed = async {
            store.flush().await.unwrap();
            order.lock().unwrap().push("flush");
        };
        let registered = async {
            let outcome = store.register("late", None, HOME).await;
            assert!(
                matches!(outcome, Ok(Registration::Created { .. })),
                "{outcome:?}"
            );
            order.lock().unwrap().push("register");
        };
        tokio::join!(flushed, registered);
        assert_eq!(*order.lock().unwrap(), ["register", "flush"]);
    }

    /// Polls `probe` until it gives a value.
    async fn within_a_second<T>(probe: impl Fn() -> Option<T>) -> T {
        for _ in 0..100 {
            if let Some(value) = probe() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no answer within a second");
    }

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
