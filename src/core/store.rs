//! Identities: the seam between the core and where identities live, and
//! the in-memory store.
//!
//! Registration returns a random 256-bit token, and only the token
//! authenticates: a name is public, so it is never a credential. Tokens are
//! kept as SHA-256 digests, never in clear, and looked up by digest: timing
//! of that lookup reveals nothing about a token's bytes (an attacker cannot
//! steer digests), and the one comparison against a known identity is
//! constant-time.
//!
//! The core talks to an [`IdentityStore`]; [`MemoryStore`] is the one that
//! keeps nothing across restarts, and the index the persistent stores keep
//! in front of their files.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::clock::Clock;
pub use super::clock::unix_ms;
use super::wire::HttpError;

/// SHA-256 of a token.
pub type TokenDigest = [u8; 32];

/// The digest a token is stored and looked up by.
pub fn token_digest(token: &str) -> TokenDigest {
    let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

/// A fresh random token: 32 bytes from the thread-local CSPRNG (seeded by
/// the OS), base64url without padding.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One identity as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The name.
    pub name: Arc<str>,
    /// Its token's digest.
    pub digest: TokenDigest,
    /// When it was last used, in Unix milliseconds.
    pub last_seen_ms: u64,
    /// The per-IP key of the address that registered it.
    pub registered_by: IpAddr,
}

/// Outcome of a registration.
#[derive(Debug, PartialEq, Eq)]
pub enum Registration {
    /// A new identity; the token is returned once and never stored.
    Created {
        /// The registered name.
        username: Arc<str>,
        /// Its token.
        token: String,
    },
    /// The name is taken, but the request proved it owns it.
    Reclaimed {
        /// The registered name.
        username: Arc<str>,
        /// The token the request presented.
        token: String,
    },
    /// The name belongs to someone else.
    Taken,
}

/// Why a store refused or failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The identity cap is reached.
    #[error("the gateway holds the maximum of {0} identities; try again later")]
    Full(usize),
    /// The registering address holds as many identities as it may.
    #[error("this address already holds {0} identities, the most one address may hold")]
    AddressFull(usize),
    /// Where identities live cannot be reached or written right now.
    #[error("identities are unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            StoreError::Full(_) | StoreError::Unavailable(_) => HttpError::Unavailable,
            StoreError::AddressFull(_) => HttpError::TooManyIdentities,
        }
    }
}

/// What a store's asynchronous operations return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where identities live. The core calls this; the in-memory store here and
/// the persistent and shared stores outside the core implement it.
pub trait IdentityStore: Send + Sync + fmt::Debug {
    /// Registers `name` (already checked against the name rules) for a
    /// client whose per-IP key is `address`; answered only once the
    /// identity will survive what the store promises to survive. If the name
    /// is taken and `presented` is that identity's token, the owner gets it
    /// back.
    fn register<'a>(
        &'a self,
        name: &'a str,
        presented: Option<&'a str>,
        address: IpAddr,
    ) -> StoreFuture<'a, Registration>;

    /// The user a token belongs to.
    fn authenticate<'a>(&'a self, token: &'a str) -> StoreFuture<'a, Option<Arc<str>>>;

    /// Marks `name` as seen now (one of its connections attached or ended).
    /// Never waits: persistent stores write these in batches.
    fn touch(&self, name: &str);

    /// Removes identities unseen for longer than `ttl` unless `in_use` says
    /// they are connected; returns the names freed.
    fn expire<'a>(
        &'a self,
        ttl: Duration,
        in_use: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> StoreFuture<'a, Vec<Arc<str>>>;

    /// Forgets every identity; returns how many there were.
    fn clear(&self) -> StoreFuture<'_, usize>;

    /// The registered names, sorted.
    fn names(&self) -> StoreFuture<'_, Vec<Arc<str>>>;

    /// Number of identities.
    fn count(&self) -> usize;

    /// Writes what is batched (last-seen times); called periodically and at
    /// shutdown.
    fn flush(&self) -> StoreFuture<'_, ()>;
}

#[derive(Debug)]
struct Identity {
    digest: TokenDigest,
    last_seen_ms: AtomicU64,
    registered_by: IpAddr,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<Arc<str>, Identity>,
    by_digest: HashMap<TokenDigest, Arc<str>>,
    /// Identities held per registering address (per-IP key).
    by_ip: HashMap<IpAddr, usize>,
}

impl Inner {
    fn insert(&mut self, record: Record) {
        self.remove(&record.name);
        *self.by_ip.entry(record.registered_by).or_default() += 1;
        self.by_digest.insert(record.digest, record.name.clone());
        self.by_name.insert(
            record.name,
            Identity {
                digest: record.digest,
                last_seen_ms: AtomicU64::new(record.last_seen_ms),
                registered_by: record.registered_by,
            },
        );
    }

    fn remove(&mut self, name: &str) {
        let Some(identity) = self.by_name.remove(name) else {
            return;
        };
        self.by_digest.remove(&identity.digest);
        if let Some(held) = self.by_ip.get_mut(&identity.registered_by) {
            *held -= 1;
            if *held == 0 {
                self.by_ip.remove(&identity.registered_by);
            }
        }
    }
}

/// What registering a name would do, decided before anything is written.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create it.
    Create,
    /// Hand it back to its owner.
    Reclaim(Arc<str>),
    /// Someone else's.
    Taken,
}

impl Decision {
    /// The answer to a registration that writes nothing (the name exists);
    /// `None` for [`Decision::Create`], whose answer carries a new token.
    pub fn settled(self, presented: Option<&str>) -> Option<Registration> {
        match self {
            Decision::Create => None,
            Decision::Taken => Some(Registration::Taken),
            Decision::Reclaim(username) => Some(Registration::Reclaimed {
                username,
                token: presented.unwrap_or_default().to_owned(),
            }),
        }
    }
}

/// Changes a batch has decided but not yet applied to the index: what a
/// persistent store's writer commits in one transaction, then applies with
/// [`MemoryStore::apply`]. Decisions count them as if applied, so a batch
/// is as strict as one change at a time: a name asked for twice is created
/// once, and the caps count what the batch adds and removes.
#[derive(Debug, Default)]
pub struct Pending {
    created: HashMap<Arc<str>, Record>,
    removed: HashSet<Arc<str>>,
    /// Identities the batch adds and removes per registering address.
    held: HashMap<IpAddr, (usize, usize)>,
}

impl Pending {
    /// Adds a new identity, which [`MemoryStore::decide_pending`] said to create.
    pub fn create(&mut self, record: Record) {
        self.held.entry(record.registered_by).or_default().0 += 1;
        self.created.insert(record.name.clone(), record);
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.removed.is_empty()
    }

    /// The identities the batch creates.
    pub fn created(&self) -> impl Iterator<Item = &Record> {
        self.created.values()
    }

    /// The names the batch removes.
    pub fn removed(&self) -> impl Iterator<Item = &Arc<str>> {
        self.removed.iter()
    }
}

/// The identities in memory: the whole store with `--store memory`, and the
/// index a persistent store keeps in front of its file (every lookup is
/// answered from memory; only changes go to the file).
#[derive(Debug)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
    max_identities: usize,
    max_per_address: usize,
    clock: Clock,
}

impl MemoryStore {
    /// An empty store holding at most `max_identities` identities, and at
    /// most `max_per_address` registered from one per-IP key.
    pub fn new(max_identities: usize, max_per_address: usize) -> Self {
        Self {
            inner: RwLock::default(),
            max_identities,
            max_per_address,
            clock: Clock::system(),
        }
    }

    /// The same store dating identities by `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock identities are dated by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // The maps are updated together under the write lock by code that
        // cannot panic between the updates, so poisoning is harmless.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn decide_in(
        &self,
        inner: &Inner,
        name: &str,
        presented: Option<&str>,
        address: IpAddr,
    ) -> Result<Decision, StoreError> {
        if let Some(decision) = existing(inner, name, presented) {
            return Ok(decision);
        }
        let held = inner.by_ip.get(&address).copied().unwrap_or(0);
        self.room(inner.by_name.len(), held)
    }

    /// Whether one more identity fits, with `total` held and `held` by its
    /// registering address.
    fn room(&self, total: usize, held: usize) -> Result<Decision, StoreError> {
        if total >= self.max_identities {
            return Err(StoreError::Full(self.max_identities));
        }
        if held >= self.max_per_address {
            return Err(StoreError::AddressFull(self.max_per_address));
        }
        Ok(Decision::Create)
    }

    /// What registering `name` decides if the name is registered (taken,
    /// or its owner's again), answered from memory alone; `None` if it is
    /// free, which only a store's writer may decide on.
    pub fn decide_existing(&self, name: &str, presented: Option<&str>) -> Option<Decision> {
        existing(&self.read(), name, presented)
    }

    /// What registering `name` would do once the changes `pending` has
    /// decided are applied, with the caps checked.
    pub fn decide_pending(
        &self,
        pending: &Pending,
        name: &str,
        presented: Option<&str>,
        address: IpAddr,
    ) -> Result<Decision, StoreError> {
        // Created in this batch: nobody holds its token yet.
        if pending.created.contains_key(name) {
            return Ok(Decision::Taken);
        }
        let inner = self.read();
        if !pending.removed.contains(name)
            && let Some(decision) = existing(&inner, name, presented)
        {
            return Ok(decision);
        }
        let (added, dropped) = pending
            .held
            .values()
            .fold((0, 0), |(a, d), (x, y)| (a + x, d + y));
        let total = (inner.by_name.len() + added).saturating_sub(dropped);
        let (added, dropped) = pending.held.get(&address).copied().unwrap_or_default();
        let held =
            (inner.by_ip.get(&address).copied().unwrap_or(0) + added).saturating_sub(dropped);
        self.room(total, held)
    }

    /// Adds the removal of `name` to `pending` if the index holds it with
    /// `digest` (a name removed and registered again since it was chosen
    /// is another identity, and stays); returns whether it does.
    pub fn remove_pending(
        &self,
        pending: &mut Pending,
        name: &Arc<str>,
        digest: &TokenDigest,
    ) -> bool {
        if pending.created.contains_key(name) || pending.removed.contains(name) {
            return false;
        }
        let inner = self.read();
        let Some(identity) = inner.by_name.get(name) else {
            return false;
        };
        if identity.digest != *digest {
            return false;
        }
        pending.held.entry(identity.registered_by).or_default().1 += 1;
        pending.removed.insert(name.clone());
        true
    }

    /// Applies what a batch changed, once it is committed: its removals,
    /// then its new identities, under one lock.
    pub fn apply(&self, pending: Pending) {
        let mut inner = self.write();
        for name in &pending.removed {
            inner.remove(name);
        }
        for record in pending.created.into_values() {
            inner.insert(record);
        }
    }

    /// Adds (or replaces) an identity.
    pub fn insert(&self, record: Record) {
        self.write().insert(record);
    }

    /// Removes identities by name.
    pub fn remove(&self, names: &[Arc<str>]) {
        let mut inner = self.write();
        for name in names {
            inner.remove(name);
        }
    }

    /// The user a token belongs to.
    pub fn lookup(&self, token: &str) -> Option<Arc<str>> {
        self.read().by_digest.get(&token_digest(token)).cloned()
    }

    /// Sets `name`'s last-seen time; false if there is no such identity.
    pub fn set_seen(&self, name: &str, at_ms: u64) -> bool {
        self.read()
            .by_name
            .get(name)
            .map(|identity| identity.last_seen_ms.store(at_ms, Ordering::Relaxed))
            .is_some()
    }

    /// `name`'s record, if it exists.
    pub fn record(&self, name: &str) -> Option<Record> {
        let inner = self.read();
        let (name, identity) = inner.by_name.get_key_value(name)?;
        Some(Record {
            name: name.clone(),
            digest: identity.digest,
            last_seen_ms: identity.last_seen_ms.load(Ordering::Relaxed),
            registered_by: identity.registered_by,
        })
    }

    /// The identities unseen since `cutoff_ms` that `in_use` does not keep.
    pub fn unseen_since(&self, cutoff_ms: u64, in_use: &dyn Fn(&str) -> bool) -> Vec<Arc<str>> {
        self.read()
            .by_name
            .iter()
            .filter(|(name, identity)| {
                identity.last_seen_ms.load(Ordering::Relaxed) < cutoff_ms && !in_use(name)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Forgets every identity; returns how many there were.
    pub fn forget_all(&self) -> usize {
        let mut inner = self.write();
        let count = inner.by_name.len();
        *inner = Inner::default();
        count
    }

    /// The names, sorted.
    pub fn sorted_names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self.read().by_name.keys().cloned().collect();
        names.sort();
        names
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// Whether no identity is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `name` in memory only: decided and inserted under one lock.
    fn register_now(
        &self,
        name: &str,
        presented: Option<&str>,
        address: IpAddr,
    ) -> Result<Registration, StoreError> {
        let mut inner = self.write();
        let decision = self.decide_in(&inner, name, presented, address)?;
        if let Some(settled) = decision.settled(presented) {
            return Ok(settled);
        }
        let (record, token) = Record::fresh(name, address, self.clock.unix_ms());
        let username = record.name.clone();
        inner.insert(record);
        Ok(Registration::Created { username, token })
    }
}

/// The decision for `name` if it is registered: its owner's again when
/// `presented` is its token, else taken.
fn existing(inner: &Inner, name: &str, presented: Option<&str>) -> Option<Decision> {
    let (username, identity) = inner.by_name.get_key_value(name)?;
    let owns =
        presented.is_some_and(|token| bool::from(token_digest(token).ct_eq(&identity.digest)));
    Some(if owns {
        Decision::Reclaim(username.clone())
    } else {
        Decision::Taken
    })
}

impl Record {
    /// A new identity for `name` registered from `address`, seen at
    /// `seen_ms` (Unix milliseconds: now), and its token.
    pub fn fresh(name: &str, address: IpAddr, seen_ms: u64) -> (Record, String) {
        let token = new_token();
        let record = Record {
            name: Arc::from(name),
            digest: token_digest(&token),
            last_seen_ms: seen_ms,
            registered_by: address,
        };
        (record, token)
    }
}

fn ready<'a, T: Send + 'a>(value: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl IdentityStore for MemoryStore {
    fn register<'a>(
        &'a self,
        name: &'a str,
        presented: Option<&'a str>,
        address: IpAddr,
    ) -> StoreFuture<'a, Registration> {
        ready(self.register_now(name, presented, address))
    }

    fn authenticate<'a>(&'a self, token: &'a str) -> StoreFuture<'a, Option<Arc<str>>> {
        ready(Ok(self.lookup(token)))
    }

    fn touch(&self, name: &str) {
        self.set_seen(name, self.clock.unix_ms());
    }

    fn expire<'a>(
        &'a self,
        ttl: Duration,
        in_use: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> StoreFuture<'a, Vec<Arc<str>>> {
        let cutoff = self
            .clock
            .unix_ms()
            .saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let expired = self.unseen_since(cutoff, in_use);
        self.remove(&expired);
        ready(Ok(expired))
    }

    fn clear(&self) -> StoreFuture<'_, usize> {
        ready(Ok(self.forget_all()))
    }

    fn names(&self) -> StoreFuture<'_, Vec<Arc<str>>> {
        ready(Ok(self.sorted_names()))
    }

    fn count(&self) -> usize {
        self.len()
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use std::net::Ipv4Addr;

    const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn expire(
        store: &MemoryStore,
        ttl: Duration,
        in_use: impl Fn(&str) -> bool + Send + Sync,
    ) -> Vec<Arc<str>> {
        futures::executor::block_on(IdentityStore::expire(store, ttl, &in_use)).unwrap()
    }

    fn created(r: Registration) -> (Arc<str>, String) {
        match r {
            Registration::Created { username, token } => (username, token),
            other => panic!("expected Created, got {other:?}"),
        }
    }

    #[test]
    fn register_then_authenticate() {
        let store = MemoryStore::new(10, 1000);
        let (name, token) = created(store.register_now("alice", None, HOME).unwrap());
        assert_eq!(&*name, "alice");
        assert!(token.len() >= 43, "256-bit token in base64url");
        assert_eq!(store.lookup(&token).as_deref(), Some("alice"));
        assert_eq!(store.lookup("alice"), None, "the name is not a credential");
        assert_eq!(store.lookup(""), None);
    }

    #[test]
    fn taken_unless_the_owner_presents_its_token() {
        let store = MemoryStore::new(10, 1000);
        let (_, token) = created(store.register_now("alice", None, HOME).unwrap());
        assert_eq!(
            store.register_now("alice", None, HOME).unwrap(),
            Registration::Taken
        );
        assert_eq!(
            store.register_now("alice", Some("guess"), HOME).unwrap(),
            Registration::Taken
        );
        let (_, bob_token) = created(store.register_now("bob", None, HOME).unwrap());
        assert_eq!(
            store.register_now("alice", Some(&bob_token), HOME).unwrap(),
            Registration::Taken
        );
        assert_eq!(
            store.register_now("alice", Some(&token), HOME).unwrap(),
            Registration::Reclaimed {
                username: "alice".into(),
                token: token.clone()
            }
        );
    }

    #[test]
    fn tokens_are_distinct() {
        let store = MemoryStore::new(1000, 1000);
        let tokens: std::collections::HashSet<String> = (0..500)
            .map(|i| created(store.register_now(&format!("u{i}"), None, HOME).unwrap()).1)
            .collect();
        assert_eq!(tokens.len(), 500);
    }

    #[test]
    fn identity_cap_is_enforced() {
        let store = MemoryStore::new(2, 1000);
        store.register_now("a", None, HOME).unwrap();
        store.register_now("b", None, HOME).unwrap();
        assert_eq!(
            store.register_now("c", None, HOME),
            Err(StoreError::Full(2))
        );
        assert_eq!(
            store.register_now("a", None, HOME).unwrap(),
            Registration::Taken
        );
    }

    #[test]
    fn expiry_frees_unseen_names_but_keeps_connected_ones() {
        let manual = ManualClock::new();
        let store = MemoryStore::new(10, 1000).with_clock(manual.clock());
        let (_, old_token) = created(store.register_now("old", None, HOME).unwrap());
        store.register_now("online", None, HOME).unwrap();
        manual.advance(Duration::from_secs(3600));
        store.register_now("fresh", None, HOME).unwrap();
        assert!(
            expire(
                &store,
                Duration::from_secs(3600) + Duration::from_millis(1),
                |_| false
            )
            .is_empty(),
            "not a millisecond past the lifetime"
        );
        manual.advance(Duration::from_millis(1));
        let expired = expire(&store, Duration::from_secs(3600), |name| name == "online");
        assert_eq!(expired, vec![Arc::<str>::from("old")]);
        assert_eq!(store.lookup(&old_token), None);
        assert!(matches!(
            store.register_now("old", None, HOME).unwrap(),
            Registration::Created { .. }
        ));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn clear_forgets_everything() {
        let store = MemoryStore::new(10, 1000);
        let (_, token) = created(store.register_now("a", None, HOME).unwrap());
        assert_eq!(store.forget_all(), 1);
        assert_eq!(store.lookup(&token), None);
        assert!(store.is_empty());
    }

    #[test]
    fn one_address_holds_a_bounded_number_of_identities() {
        let manual = ManualClock::new();
        let store = MemoryStore::new(10, 2).with_clock(manual.clock());
        let away = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        store.register_now("a", None, HOME).unwrap();
        let (_, b_token) = created(store.register_now("b", None, HOME).unwrap());
        assert_eq!(
            store.register_now("c", None, HOME),
            Err(StoreError::AddressFull(2))
        );
        assert!(
            matches!(
                store.register_now("b", Some(&b_token), HOME).unwrap(),
                Registration::Reclaimed { .. }
            ),
            "the owner reclaiming its name takes no new place"
        );
        store.register_now("c", None, away).unwrap();
        manual.advance(Duration::from_millis(1));
        assert_eq!(expire(&store, Duration::ZERO, |name| name != "a").len(), 1);
        store.register_now("d", None, HOME).unwrap();
    }

    fn decide_and_create(
        store: &MemoryStore,
        pending: &mut Pending,
        name: &str,
        address: IpAddr,
    ) -> Result<Decision, StoreError> {
        let decision = store.decide_pending(pending, name, None, address)?;
        if decision == Decision::Create {
            pending.create(Record::fresh(name, address, store.clock().unix_ms()).0);
        }
        Ok(decision)
    }

    #[test]
    fn a_batch_creates_a_name_asked_for_twice_once() {
        let store = MemoryStore::new(10, 10);
        let mut pending = Pending::default();
        assert_eq!(
            decide_and_create(&store, &mut pending, "twin", HOME),
            Ok(Decision::Create)
        );
        assert_eq!(
            decide_and_create(&store, &mut pending, "twin", HOME),
            Ok(Decision::Taken)
        );
        assert_eq!(
            store.lookup("twin"),
            None,
            "nothing is applied before the commit"
        );
        store.apply(pending);
        assert_eq!(store.sorted_names(), vec![Arc::<str>::from("twin")]);
        assert_eq!(store.decide_existing("twin", None), Some(Decision::Taken));
    }

    #[test]
    fn the_caps_count_what_a_batch_adds_and_removes() {
        let away = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let store = MemoryStore::new(4, 2);
        let (_, token) = created(store.register_now("old", None, HOME).unwrap());
        let mut pending = Pending::default();
        assert_eq!(
            decide_and_create(&store, &mut pending, "a", HOME),
            Ok(Decision::Create)
        );
        assert_eq!(
            decide_and_create(&store, &mut pending, "b", HOME),
            Err(StoreError::AddressFull(2)),
            "one held and one in the batch"
        );
        assert_eq!(
            decide_and_create(&store, &mut pending, "c", away),
            Ok(Decision::Create)
        );
        assert_eq!(
            decide_and_create(&store, &mut pending, "d", away),
            Ok(Decision::Create)
        );
        assert_eq!(
            decide_and_create(&store, &mut pending, "e", away),
            Err(StoreError::Full(4))
        );
        // Removing "old" in the same batch makes room, at its address and in all.
        let digest = token_digest(&token);
        assert!(store.remove_pending(&mut pending, &Arc::from("old"), &digest));
        assert!(
            !store.remove_pending(&mut pending, &Arc::from("old"), &digest),
            "once"
        );
        assert_eq!(
            decide_and_create(&store, &mut pending, "old", HOME),
            Ok(Decision::Create)
        );
        assert!(
            !store.remove_pending(&mut pending, &Arc::from("old"), &digest),
            "the new \"old\" is another identity"
        );
        store.apply(pending);
        assert_eq!(store.len(), 4);
        assert_eq!(store.lookup(&token), None);
        assert_eq!(
            store.decide_existing("old", Some(&token)),
            Some(Decision::Taken)
        );
    }

    #[test]
    fn a_stale_removal_leaves_the_identity_registered_since() {
        let store = MemoryStore::new(10, 10);
        store.register_now("name", None, HOME).unwrap();
        let mut pending = Pending::default();
        assert!(!store.remove_pending(&mut pending, &Arc::from("name"), &[0; 32]));
        assert!(pending.is_empty());
    }

    #[test]
    fn checking_a_token_does_not_refresh_the_identity() {
        let manual = ManualClock::new();
        let store = MemoryStore::new(10, 10).with_clock(manual.clock());
        let (_, token) = created(store.register_now("idle", None, HOME).unwrap());
        manual.advance(Duration::from_secs(30));
        assert!(store.lookup(&token).is_some());
        assert_eq!(expire(&store, Duration::from_secs(20), |_| false).len(), 1);
    }
}
