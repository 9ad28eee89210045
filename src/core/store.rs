//! `UserStore`: the registered identities and their tokens.
//!
//! Registration returns a random 256-bit token, and only the token
//! authenticates: a name is public, so it is never a credential. Tokens are kept as SHA-256 digests, never in
//! clear, and looked up by digest: timing of that lookup reveals nothing
//! about a token's bytes (an attacker cannot steer digests), and the one
//! comparison against a known identity is constant-time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// SHA-256 of a token.
type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

/// A fresh random token: 32 bytes from the thread-local CSPRNG (seeded by
/// the OS), base64url without padding.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug)]
struct Identity {
    digest: TokenDigest,
    /// Milliseconds since the store's epoch when it was last used.
    last_seen: AtomicU64,
    /// The per-IP key of the address that registered it.
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

/// Why the store refused to register.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The identity cap is reached.
    #[error("the gateway holds the maximum of {0} identities; try again later")]
    Full(usize),
    /// The registering address holds as many identities as it may.
    #[error("this address already holds {0} identities, the most one address may hold")]
    AddressFull(usize),
}

impl StoreError {
    /// What an HTTP client is answered.
    pub fn http_error(&self) -> crate::core::wire::HttpError {
        use crate::core::wire::HttpError;
        match self {
            StoreError::Full(_) => HttpError::Unavailable,
            StoreError::AddressFull(_) => HttpError::TooManyIdentities,
        }
    }
}

/// The registered identities.
#[derive(Debug)]
pub struct UserStore {
    inner: RwLock<Inner>,
    epoch: Instant,
    max_identities: usize,
    max_per_address: usize,
}

impl UserStore {
    /// An empty store holding at most `max_identities` identities, and at
    /// most `max_per_address` registered from one per-IP key.
    pub fn new(max_identities: usize, max_per_address: usize) -> Self {
        Self {
            inner: RwLock::default(),
            epoch: Instant::now(),
            max_identities,
            max_per_address,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Both maps are updated together under the write lock by code that
        // cannot panic between the two updates, so poisoning is harmless.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers `name` (already validated) for a client whose per-IP key
    /// is `address`. If the name is taken and `presented` is that
    /// identity's token, the owner gets it back.
    pub fn register(
        &self,
        name: &str,
        presented: Option<&str>,
        address: IpAddr,
    ) -> Result<Registration, StoreError> {
        let now = self.now_ms();
        let mut inner = self.write();
        if let Some((username, identity)) = inner.by_name.get_key_value(name) {
            let owns =
                presented.is_some_and(|token| bool::from(digest(token).ct_eq(&identity.digest)));
            if !owns {
                return Ok(Registration::Taken);
            }
            return Ok(Registration::Reclaimed {
                username: username.clone(),
                token: presented.unwrap_or_default().to_owned(),
            });
        }
        if inner.by_name.len() >= self.max_identities {
            return Err(StoreError::Full(self.max_identities));
        }
        let held = inner.by_ip.entry(address).or_default();
        if *held >= self.max_per_address {
            return Err(StoreError::AddressFull(self.max_per_address));
        }
        *held += 1;
        let username: Arc<str> = Arc::from(name);
        let token = new_token();
        let token_digest = digest(&token);
        inner.by_digest.insert(token_digest, username.clone());
        inner.by_name.insert(
            username.clone(),
            Identity {
                digest: token_digest,
                last_seen: AtomicU64::new(now),
                registered_by: address,
            },
        );
        Ok(Registration::Created { username, token })
    }

    /// The user a token belongs to. Looking a token up does not refresh the
    /// identity: only its realtime connections do (see [`UserStore::touch`]),
    /// so an identity nobody connects with expires even if its token is
    /// checked every day.
    pub fn authenticate(&self, token: &str) -> Option<Arc<str>> {
        self.read().by_digest.get(&digest(token)).cloned()
    }

    /// Marks `username` as seen now (a connection of it attached or ended).
    pub fn touch(&self, username: &str) {
        if let Some(identity) = self.read().by_name.get(username) {
            identity.last_seen.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Removes identities unseen for longer than `ttl` unless `in_use` says
    /// they are connected; returns the names freed.
    pub fn expire(&self, ttl: Duration, in_use: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let cutoff = self
            .now_ms()
            .saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut inner = self.write();
        let expired: Vec<Arc<str>> = inner
            .by_name
            .iter()
            .filter(|(name, identity)| {
                identity.last_seen.load(Ordering::Relaxed) < cutoff && !in_use(name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            inner.remove(name);
        }
        expired
    }

    /// Forgets every identity; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut inner = self.write();
        let count = inner.by_name.len();
        inner.by_name.clear();
        inner.by_digest.clear();
        inner.by_ip.clear();
        count
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<Arc<str>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn created(r: Registration) -> (Arc<str>, String) {
        match r {
            Registration::Created { username, token } => (username, token),
            other => panic!("expected Created, got {other:?}"),
        }
    }

    #[test]
    fn register_then_authenticate() {
        let store = UserStore::new(10, 1000);
        let (name, token) = created(store.register("alice", None, HOME).unwrap());
        assert_eq!(&*name, "alice");
        assert!(token.len() >= 43, "256-bit token in base64url");
        assert_eq!(store.authenticate(&token).as_deref(), Some("alice"));
        assert_eq!(
            store.authenticate("alice"),
            None,
            "the name is not a credential"
        );
        assert_eq!(store.authenticate(""), None);
    }

    #[test]
    fn taken_unless_the_owner_presents_its_token() {
        let store = UserStore::new(10, 1000);
        let (_, token) = created(store.register("alice", None, HOME).unwrap());
        assert_eq!(
            store.register("alice", None, HOME).unwrap(),
            Registration::Taken
        );
        assert_eq!(
            store.register("alice", Some("guess"), HOME).unwrap(),
            Registration::Taken
        );
        let (_, bob_token) = created(store.register("bob", None, HOME).unwrap());
        assert_eq!(
            store.register("alice", Some(&bob_token), HOME).unwrap(),
            Registration::Taken
        );
        assert_eq!(
            store.register("alice", Some(&token), HOME).unwrap(),
            Registration::Reclaimed {
                username: "alice".into(),
                token: token.clone()
            }
        );
    }

    #[test]
    fn tokens_are_distinct() {
        let store = UserStore::new(1000, 1000);
        let tokens: std::collections::HashSet<String> = (0..500)
            .map(|i| created(store.register(&format!("u{i}"), None, HOME).unwrap()).1)
            .collect();
        assert_eq!(tokens.len(), 500);
    }

    #[test]
    fn identity_cap_is_enforced() {
        let store = UserStore::new(2, 1000);
        store.register("a", None, HOME).unwrap();
        store.register("b", None, HOME).unwrap();
        assert_eq!(store.register("c", None, HOME), Err(StoreError::Full(2)));
        assert_eq!(
            store.register("a", None, HOME).unwrap(),
            Registration::Taken
        );
    }

    #[test]
    fn expiry_frees_unseen_names_but_keeps_connected_ones() {
        let store = UserStore::new(10, 1000);
        let (_, old_token) = created(store.register("old", None, HOME).unwrap());
        store.register("online", None, HOME).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        store.register("fresh", None, HOME).unwrap();
        let expired = store.expire(Duration::from_millis(20), |name| name == "online");
        assert_eq!(expired, vec![Arc::<str>::from("old")]);
        assert_eq!(store.authenticate(&old_token), None);
        assert!(matches!(
            store.register("old", None, HOME).unwrap(),
            Registration::Created { .. }
        ));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn clear_forgets_everything() {
        let store = UserStore::new(10, 1000);
        let (_, token) = created(store.register("a", None, HOME).unwrap());
        assert_eq!(store.clear(), 1);
        assert_eq!(store.authenticate(&token), None);
        assert!(store.is_empty());
    }

    #[test]
    fn one_address_holds_a_bounded_number_of_identities() {
        let store = UserStore::new(10, 2);
        let away = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        store.register("a", None, HOME).unwrap();
        let (_, b_token) = created(store.register("b", None, HOME).unwrap());
        assert_eq!(
            store.register("c", None, HOME),
            Err(StoreError::AddressFull(2))
        );
        assert!(
            matches!(
                store.register("b", Some(&b_token), HOME).unwrap(),
                Registration::Reclaimed { .. }
            ),
            "the owner reclaiming its name takes no new place"
        );
        store.register("c", None, away).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.expire(Duration::ZERO, |name| name != "a").len(), 1);
        store.register("d", None, HOME).unwrap();
    }

    #[test]
    fn checking_a_token_does_not_refresh_the_identity() {
        let store = UserStore::new(10, 10);
        let (_, token) = created(store.register("idle", None, HOME).unwrap());
        std::thread::sleep(Duration::from_millis(30));
        assert!(store.authenticate(&token).is_some());
        assert_eq!(store.expire(Duration::from_millis(20), |_| false).len(), 1);
    }
}
