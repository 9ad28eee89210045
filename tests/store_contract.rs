//! One contract for every identity store: each behaviour is written once
//! against the core's `IdentityStore` and run on every backend — memory,
//! the embedded file (redb, in a temporary directory) and Redis (a real
//! `redis-server`, started on a free port and killed by PID). Every store
//! reads a manual clock (Redis keeps the times it is given), so expiry is
//! tested by advancing it, to the millisecond, never by sleeping. A new
//! backend is one line in `for_each_store!` and its arm in `Store::open`.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use signal_gateway::cluster::Primary;
use signal_gateway::core::Limits;
use signal_gateway::core::clock::ManualClock;
use signal_gateway::core::store::{IdentityStore, MemoryStore, Registration, StoreError};
use signal_gateway::store::{EmbeddedStore, RedisStore, StoreKind};

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The expiry tests' time-to-live (the default `--identity-ttl`).
const TTL: Duration = Duration::from_secs(24 * 60 * 60);
const MS: Duration = Duration::from_millis(1);

/// An address of the documentation range, `192.0.2.<n>`.
fn away(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
}

/// A store under test.
struct Store {
    store: Arc<dyn IdentityStore>,
    /// The time it reads.
    clock: ManualClock,
    /// Where it keeps its identities (a directory, a Redis), dropped with it.
    _home: Box<dyn std::any::Any + Send + Sync>,
}

impl Store {
    /// An empty store of `kind` holding at most `max` identities, `per_address`
    /// of them registered from one address.
    async fn open(kind: StoreKind, max: usize, per_address: usize) -> Self {
        let clock = ManualClock::new();
        let (store, home): (Arc<dyn IdentityStore>, Box<dyn std::any::Any + Send + Sync>) =
            match kind {
                StoreKind::Memory => (
                    Arc::new(MemoryStore::new(max, per_address).with_clock(clock.clock())),
                    Box::new(()),
                ),
                StoreKind::Embedded => {
                    let dir = tempfile::tempdir().unwrap();
                    let limits = Limits {
                        max_identities: max,
                        max_identities_per_ip: per_address,
                        ..Limits::default()
                    };
                    let store = EmbeddedStore::open(dir.path().to_owned(), &limits, clock.clock())
                        .await
                        .unwrap();
                    (Arc::new(store), Box::new(dir))
                }
                StoreKind::Redis => {
                    let server = RedisServer::start();
                    let primary = Primary::fixed(&server.url()).unwrap();
                    (
                        Arc::new(
                            RedisStore::new(primary, max, per_address).with_clock(clock.clock()),
                        ),
                        Box::new(server),
                    )
                }
            };
        Self {
            store,
            clock,
            _home: home,
        }
    }

    /// Lets `by` pass for the store.
    fn pass(&self, by: Duration) {
        self.clock.advance(by);
    }

    async fn register(&self, name: &str, presented: Option<&str>, address: IpAddr) -> Registration {
        within(self.store.register(name, presented, address))
            .await
            .unwrap_or_else(|err| panic!("registering {name}: {err}"))
    }

    /// Registers `name` from `address`, which must create it; its token.
    async fn create(&self, name: &str, address: IpAddr) -> String {
        match self.register(name, None, address).await {
            Registration::Created { username, token } => {
                assert_eq!(&*username, name);
                token
            }
            other => panic!("registering {name}: {other:?}"),
        }
    }

    async fn refused(&self, name: &str, address: IpAddr) -> StoreError {
        match within(self.store.register(name, None, address)).await {
            Err(err) => err,
            Ok(outcome) => panic!("registering {name}: {outcome:?}, not refused"),
        }
    }

    async fn whose(&self, token: &str) -> Option<String> {
        within(self.store.authenticate(token))
            .await
            .unwrap()
            .map(|name| name.to_string())
    }

    async fn names(&self) -> Vec<String> {
        within(self.store.names())
            .await
            .unwrap()
            .iter()
            .map(|name| name.to_string())
            .collect()
    }

    /// Expires what is unseen for longer than `ttl`, keeping `in_use`; the
    /// names freed, sorted.
    async fn expire(&self, ttl: Duration, in_use: &[&str]) -> Vec<String> {
        let in_use: HashSet<String> = in_use.iter().map(|name| name.to_string()).collect();
        let keep = move |name: &str| in_use.contains(name);
        let mut expired: Vec<String> = within(self.store.expire(ttl, &keep))
            .await
            .unwrap()
            .iter()
            .map(|name| name.to_string())
            .collect();
        expired.sort();
        expired
    }
}

/// Every store call ends within 10 s.
async fn within<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the store answered within 10 s")
}

/// Every backend the contract runs on, one line each: the module its tests
/// go in and its [`StoreKind`].
macro_rules! for_each_store {
    ($($test:ident),* $(,)?) => {
        contract!(memory, StoreKind::Memory, $($test),*);
        contract!(embedded, StoreKind::Embedded, $($test),*);
        contract!(redis, StoreKind::Redis, $($test),*);
    };
}

/// The tests of one backend: each `async fn name(kind: StoreKind)` below,
/// run with `kind`.
macro_rules! contract {
    ($module:ident, $kind:expr, $($test:ident),*) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($kind).await;
                }
            )*
        }
    };
}

for_each_store!(
    a_registration_returns_a_token_that_authenticates_its_name,
    a_registered_name_is_taken,
    the_owner_registers_its_name_again_with_its_token,
    identities_unseen_for_longer_than_the_ttl_expire,
    touch_keeps_an_identity_from_expiring,
    clear_forgets_every_identity,
    the_identity_caps_hold,
    concurrent_registrations_of_one_name_create_it_once,
    the_caps_hold_under_concurrent_registrations,
);

async fn a_registration_returns_a_token_that_authenticates_its_name(kind: StoreKind) {
    let store = Store::open(kind, 10, 10).await;
    let token = store.create("alice", HOME).await;
    assert!(token.len() >= 43, "a 256-bit token in base64url: {token}");
    let zoe = store.create("Zoë Li", HOME).await;
    assert_ne!(token, zoe);
    assert_eq!(store.whose(&token).await.as_deref(), Some("alice"));
    assert_eq!(store.whose(&zoe).await.as_deref(), Some("Zoë Li"));
    assert_eq!(store.whose("alice").await, None, "a name is no credential");
    assert_eq!(store.whose("").await, None);
    assert_eq!(store.names().await, ["Zoë Li", "alice"], "sorted by bytes");
    assert_eq!(store.store.count(), 2);
    within(store.store.flush()).await.unwrap();
}

async fn a_registered_name_is_taken(kind: StoreKind) {
    let store = Store::open(kind, 10, 10).await;
    store.create("alice", HOME).await;
    let bob = store.create("bob", HOME).await;
    assert_eq!(
        store.register("alice", None, HOME).await,
        Registration::Taken
    );
    assert_eq!(
        store.register("alice", None, away(1)).await,
        Registration::Taken,
        "from another address too"
    );
    assert_eq!(
        store.register("alice", Some("a guess"), HOME).await,
        Registration::Taken
    );
    assert_eq!(
        store.register("alice", Some(&bob), HOME).await,
        Registration::Taken,
        "another identity's token"
    );
    assert_eq!(store.store.count(), 2);
}

async fn the_owner_registers_its_name_again_with_its_token(kind: StoreKind) {
    let store = Store::open(kind, 10, 1).await;
    let token = store.create("alice", HOME).await;
    for _ in 0..2 {
        assert_eq!(
            store.register("alice", Some(&token), HOME).await,
            Registration::Reclaimed {
                username: "alice".into(),
                token: token.clone()
            }
        );
    }
    assert_eq!(
        store.register("alice", Some(&token), away(1)).await,
        Registration::Reclaimed {
            username: "alice".into(),
            token: token.clone()
        },
        "from another address too"
    );
    assert_eq!(store.whose(&token).await.as_deref(), Some("alice"));
    assert_eq!(store.store.count(), 1, "no second identity");
    assert_eq!(
        store.refused("bob", HOME).await,
        StoreError::AddressFull(1),
        "the address still holds one"
    );
}

/// What expiry removes: identities unseen for longer than the time-to-live
/// (not one millisecond sooner), unless in use; neither checking a token nor
/// the owner registering its name again counts as seeing it. An expired
/// name is free, its token dead.
async fn identities_unseen_for_longer_than_the_ttl_expire(kind: StoreKind) {
    let store = Store::open(kind, 10, 10).await;
    let old = store.create("old", HOME).await;
    let reclaimed = store.create("reclaimed", HOME).await;
    store.create("online", HOME).await;
    store.pass(TTL);
    assert!(store.whose(&old).await.is_some());
    store.register("reclaimed", Some(&reclaimed), HOME).await;
    store.create("fresh", HOME).await;
    assert!(
        store.expire(TTL, &[]).await.is_empty(),
        "unseen for exactly the time-to-live: not longer"
    );
    store.pass(MS);
    assert_eq!(
        store.expire(TTL, &["online"]).await,
        ["old", "reclaimed"],
        "unseen for longer than the time-to-live, not in use"
    );
    assert_eq!(store.whose(&old).await, None);
    assert_eq!(store.names().await, ["fresh", "online"]);
    assert_eq!(store.store.count(), 2);
    let again = store.create("old", HOME).await;
    assert_ne!(again, old);
    assert_eq!(store.whose(&again).await.as_deref(), Some("old"));
    assert_eq!(store.expire(TTL, &[]).await, ["online"], "no longer in use");
}

/// A touch dates an identity now, before any flush writes it; touching a
/// name nobody holds creates nothing.
async fn touch_keeps_an_identity_from_expiring(kind: StoreKind) {
    let store = Store::open(kind, 10, 10).await;
    let kept = store.create("kept", HOME).await;
    store.create("left", HOME).await;
    store.pass(TTL);
    store.store.touch("kept");
    store.store.touch("nobody");
    store.pass(MS);
    assert_eq!(store.expire(TTL, &[]).await, ["left"]);
    within(store.store.flush()).await.unwrap();
    assert_eq!(store.names().await, ["kept"]);
    assert_eq!(store.whose(&kept).await.as_deref(), Some("kept"));
    // Unseen for exactly the time-to-live since the touch, then longer: a
    // flush writes when it was seen, not when it is written.
    store.pass(TTL - MS);
    assert!(store.expire(TTL, &[]).await.is_empty());
    store.pass(MS);
    assert_eq!(store.expire(TTL, &[]).await, ["kept"]);
    assert_eq!(store.store.count(), 0);
}

async fn clear_forgets_every_identity(kind: StoreKind) {
    let store = Store::open(kind, 10, 10).await;
    let tokens = [
        store.create("a", HOME).await,
        store.create("b", away(1)).await,
        store.create("c", away(2)).await,
    ];
    assert_eq!(within(store.store.clear()).await.unwrap(), 3);
    for token in &tokens {
        assert_eq!(store.whose(token).await, None);
    }
    assert!(store.names().await.is_empty());
    assert_eq!(store.store.count(), 0);
    assert_eq!(
        within(store.store.clear()).await.unwrap(),
        0,
        "already empty"
    );
    let again = store.create("a", HOME).await;
    assert_eq!(store.whose(&again).await.as_deref(), Some("a"));
    assert_eq!(store.store.count(), 1);
}

async fn the_identity_caps_hold(kind: StoreKind) {
    let store = Store::open(kind, 4, 2).await;
    store.create("a", HOME).await;
    let b = store.create("b", HOME).await;
    assert_eq!(store.refused("c", HOME).await, StoreError::AddressFull(2));
    assert!(matches!(
        store.register("b", Some(&b), HOME).await,
        Registration::Reclaimed { .. }
    ));
    store.create("c", away(1)).await;
    store.create("d", away(2)).await;
    assert_eq!(store.refused("e", away(3)).await, StoreError::Full(4));
    assert_eq!(
        store.refused("e", HOME).await,
        StoreError::Full(4),
        "the total is checked first"
    );
    assert_eq!(
        store.register("a", None, away(3)).await,
        Registration::Taken,
        "a taken name is answered, full or not"
    );
    assert_eq!(store.store.count(), 4);
    // Expiry makes room, at the address and in all.
    store.pass(MS);
    assert_eq!(store.expire(Duration::ZERO, &["b", "c", "d"]).await, ["a"]);
    store.create("e", HOME).await;
    assert_eq!(store.refused("f", away(3)).await, StoreError::Full(4));
    within(store.store.clear()).await.unwrap();
    store.create("f", HOME).await;
    store.create("g", HOME).await;
}

/// 64 registrations at once, for 4 names from 4 addresses: each name is
/// created once, every other request is told it is taken, and each token
/// returned authenticates its name.
async fn concurrent_registrations_of_one_name_create_it_once(kind: StoreKind) {
    let store = Store::open(kind, 100, 100).await;
    let requests: Vec<(String, IpAddr)> = (0..64u8)
        .map(|i| (format!("name-{}", i % 4), away(i / 16)))
        .collect();
    let outcomes = register_at_once(&store, &requests).await;
    let mut winners = HashSet::new();
    for outcome in &outcomes {
        match outcome {
            Ok(Registration::Created { username, token }) => {
                assert!(winners.insert(username.clone()), "{username} created twice");
                assert_eq!(store.whose(token).await.as_deref(), Some(&**username));
            }
            Ok(Registration::Taken) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners.len(), 4, "{outcomes:?}");
    assert_eq!(
        store.names().await,
        ["name-0", "name-1", "name-2", "name-3"]
    );
    assert_eq!(store.store.count(), 4);
}

/// 64 new names at once from 4 addresses against caps of 12 in all and 5
/// per address: exactly 12 created, none refused but for a cap, and no
/// address over its 5.
async fn the_caps_hold_under_concurrent_registrations(kind: StoreKind) {
    let store = Store::open(kind, 12, 5).await;
    let requests: Vec<(String, IpAddr)> =
        (0..64u8).map(|i| (format!("n{i}"), away(i % 4))).collect();
    let outcomes = register_at_once(&store, &requests).await;
    let mut held = [0; 4];
    for ((_, address), outcome) in requests.iter().zip(&outcomes) {
        match outcome {
            Ok(Registration::Created { .. }) => {
                let IpAddr::V4(v4) = address else {
                    unreachable!()
                };
                held[usize::from(v4.octets()[3])] += 1;
            }
            Err(StoreError::Full(12) | StoreError::AddressFull(5)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(held.iter().sum::<usize>(), 12, "{outcomes:?}");
    assert!(held.iter().all(|&n| n <= 5), "{held:?}");
    assert_eq!(store.store.count(), 12);
    assert_eq!(store.names().await.len(), 12);
}

/// Registers every `(name, address)` at once, each in a task of its own;
/// the outcomes in order.
async fn register_at_once(
    store: &Store,
    requests: &[(String, IpAddr)],
) -> Vec<Result<Registration, StoreError>> {
    let tasks: Vec<_> = requests
        .iter()
        .map(|(name, address)| {
            let (store, name, address) = (store.store.clone(), name.clone(), *address);
            tokio::spawn(async move { store.register(&name, None, address).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(within(task).await.unwrap());
    }
    outcomes
}
