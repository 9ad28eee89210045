//! `UserStore`: the registered identities and their tokens.
//!
//! The seed handed out the raw username as an unsigned cookie, so anyone
//! could be anyone. Here registration returns a random 256-bit token, and
//! only the token authenticates. Tokens are kept as SHA-256 digests, never in
//! clear, and looked up by digest: timing of that lookup reveals nothing
//! about a token's bytes (an attacker cannot steer digests), and the one
//! comparison against a known identity is constant-time.

use std::collections::HashMap;
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
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<Arc<str>, Identity>,
    by_digest: HashMap<TokenDigest, Arc<str>>,
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
}

/// The registered identities.
#[derive(Debug)]
pub struct UserStore {
    inner: RwLock<Inner>,
    epoch: Instant,
    max_identities: usize,
}

impl UserStore {
    /// An empty store holding at most `max_identities` identities.
    pub fn new(max_identities: usize) -> Self {
        Self {
            inner: RwLock::default(),
            epoch: Instant::now(),
            max_identities,
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

    /// Registers `name` (already validated). If the name is taken and
    /// `presented` is that identity's token, the owner gets it back.
    pub fn register(
        &self,
        name: &str,
        presented: Option<&str>,
    ) -> Result<Registration, StoreError> {
        let now = self.now_ms();
        let mut inner = self.write();
        if let Some((username, identity)) = inner.by_name.get_key_value(name) {
            let owns =
                presented.is_some_and(|token| bool::from(digest(token).ct_eq(&identity.digest)));
            if !owns {
                return Ok(Registration::Taken);
            }
            identity.last_seen.store(now, Ordering::Relaxed);
            return Ok(Registration::Reclaimed {
                username: username.clone(),
                token: presented.unwrap_or_default().to_owned(),
            });
        }
        if inner.by_name.len() >= self.max_identities {
            return Err(StoreError::Full(self.max_identities));
        }
        let username: Arc<str> = Arc::from(name);
        let token = new_token();
        let token_digest = digest(&token);
        inner.by_digest.insert(token_digest, username.clone());
        inner.by_name.insert(
            username.clone(),
            Identity {
                digest: token_digest,
                last_seen: AtomicU64::new(now),
            },
        );
        Ok(Registration::Created { username, token })
    }

    /// The user a token belongs to, marking the identity as seen.
    pub fn authenticate(&self, token: &str) -> Option<Arc<str>> {
        let inner = self.read();
        let username = inner.by_digest.get(&digest(token))?.clone();
        if let Some(identity) = inner.by_name.get(&username) {
            identity.last_seen.store(self.now_ms(), Ordering::Relaxed);
        }
        Some(username)
    }

    /// Marks `username` as seen now (a connection of it just ended).
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
        let expired: Vec<(Arc<str>, TokenDigest)> = inner
            .by_name
            .iter()
            .filter(|(name, identity)| {
                identity.last_seen.load(Ordering::Relaxed) < cutoff && !in_use(name)
            })
            .map(|(name, identity)| (name.clone(), identity.digest))
            .collect();
        for (name, token_digest) in &expired {
            inner.by_name.remove(name);
            inner.by_digest.remove(token_digest);
        }
        expired.into_iter().map(|(name, _)| name).collect()
    }

    /// Forgets every identity; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut inner = self.write();
        let count = inner.by_name.len();
        inner.by_name.clear();
        inner.by_digest.clear();
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

    fn created(r: Registration) -> (Arc<str>, String) {
        match r {
            Registration::Created { username, token } => (username, token),
            other => panic!("expected Created, got {other:?}"),
        }
    }

    #[test]
    fn register_then_authenticate() {
        let store = UserStore::new(10);
        let (name, token) = created(store.register("alice", None).unwrap());
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
        let store = UserStore::new(10);
        let (_, token) = created(store.register("alice", None).unwrap());
        assert_eq!(store.register("alice", None).unwrap(), Registration::Taken);
        assert_eq!(
            store.register("alice", Some("guess")).unwrap(),
            Registration::Taken
        );
        let (_, bob_token) = created(store.register("bob", None).unwrap());
        assert_eq!(
            store.register("alice", Some(&bob_token)).unwrap(),
            Registration::Taken
        );
        assert_eq!(
            store.register("alice", Some(&token)).unwrap(),
            Registration::Reclaimed {
                username: "alice".into(),
                token: token.clone()
            }
        );
    }

    #[test]
    fn tokens_are_distinct() {
        let store = UserStore::new(1000);
        let tokens: std::collections::HashSet<String> = (0..500)
            .map(|i| created(store.register(&format!("u{i}"), None).unwrap()).1)
            .collect();
        assert_eq!(tokens.len(), 500);
    }

    #[test]
    fn identity_cap_is_enforced() {
        let store = UserStore::new(2);
        store.register("a", None).unwrap();
        store.register("b", None).unwrap();
        assert_eq!(store.register("c", None), Err(StoreError::Full(2)));
        assert_eq!(store.register("a", None).unwrap(), Registration::Taken);
    }

    #[test]
    fn expiry_frees_unseen_names_but_keeps_connected_ones() {
        let store = UserStore::new(10);
        let (_, old_token) = created(store.register("old", None).unwrap());
        store.register("online", None).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        store.register("fresh", None).unwrap();
        let expired = store.expire(Duration::from_millis(20), |name| name == "online");
        assert_eq!(expired, vec![Arc::<str>::from("old")]);
        assert_eq!(store.authenticate(&old_token), None);
        assert!(matches!(
            store.register("old", None).unwrap(),
            Registration::Created { .. }
        ));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn clear_forgets_everything() {
        let store = UserStore::new(10);
        let (_, token) = created(store.register("a", None).unwrap());
        assert_eq!(store.clear(), 1);
        assert_eq!(store.authenticate(&token), None);
        assert!(store.is_empty());
    }
}
