//! The Redis primary a node talks to, fixed (`--redis`) or found and
//! followed through Sentinel (`--redis-sentinel`).
//!
//! [`Primary`] is a connection like any other to the rest of the cluster
//! code: every command goes to whichever server is the primary now. With
//! Sentinel, [`follow`] asks every Sentinel where the primary is (at once on
//! `+switch-master`, else every 500 ms), believes the one with the highest
//! config epoch, and switches only to a server whose `ROLE` says `master`;
//! a current primary that starts calling itself a replica is dropped at
//! once, so no write goes to a replica. The Sentinels' config epoch counts
//! failovers: it lives in the Sentinels, not in Redis, so a write lost in
//! a failover cannot roll it back, and every claim made under a newer
//! config epoch outranks every claim made under an older one.
//!
//! The redis crate's own `sentinel` feature finds a primary once, but gives
//! neither the config epoch nor a way to follow a switch under a running
//! connection, which is what this module is for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisError, RedisFuture, Value,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{REDIS_TIMEOUT, RedisCluster, SetupError, bounded};

/// How long one Sentinel, or a server named as the primary, has to answer.
const ASK_WITHIN: Duration = Duration::from_secs(1);
/// How often the Sentinels are asked where the primary is (besides at once
/// on `+switch-master`) and the primary's role is checked.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Config epochs are taken up to 2^21 so that a claim's epoch (config
/// epoch × 2^32 plus a count) stays exact in Redis's Lua numbers (doubles,
/// 2^53).
const MAX_CONFIG_EPOCH: u64 = (1 << 21) - 1;

/// Where a node finds Redis.
#[derive(Clone)]
pub enum Backend {
    /// One Redis, at this URL.
    Url(String),
    /// Whatever primary the Sentinels name.
    Sentinel(SentinelSettings),
}

/// `--redis-sentinel` and the flags that go with it.
#[derive(Clone)]
pub struct SentinelSettings {
    /// The Sentinels, `(host, port)`.
    pub sentinels: Vec<(String, u16)>,
    /// The name they monitor the primary under.
    pub master: String,
    /// The Sentinels' password.
    pub sentinel_password: Option<String>,
    /// The primary's (and replicas') password.
    pub redis_password: Option<String>,
    /// How long a registration waits for a replica to confirm it.
    pub wait_timeout: Duration,
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL may hold a password.
            Backend::Url(_) => f.write_str("Url"),
            Backend::Sentinel(settings) => settings.fmt(f),
        }
    }
}

fn connection_info(
    host: &str,
    port: u16,
    password: Option<&str>,
) -> Result<ConnectionInfo, SetupError> {
    let mut redis = RedisConnectionInfo::default();
    if let Some(password) = password {
        redis = redis.set_password(password);
    }
    ConnectionAddr::Tcp(host.to_owned(), port)
        .into_connection_info()
        .map(|info| info.set_redis_settings(redis))
        .map_err(|err| SetupError::Url(err.to_string()))
}

/// A Redis connection that reconnects by itself, failing fast while Redis
/// is away (every operation is also bounded by [`REDIS_TIMEOUT`]).
fn manager(
    client: &redis::Client,
    answer_within: Duration,
) -> Result<ConnectionManager, SetupError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(answer_within))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|err| SetupError::Url(err.to_string()))
}

/// The server commands go to now.
#[derive(Clone)]
struct Link {
    address: String,
    client: redis::Client,
    /// Commands of the cluster and the identity store.
    commands: ConnectionManager,
    /// Registrations only: `WAIT` blocks the connection it is sent on, so it
    /// gets one of its own.
    registrations: ConnectionManager,
}

impl Link {
    fn open(client: redis::Client, address: String, wait: Duration) -> Result<Self, SetupError> {
        Ok(Self {
            commands: manager(&client, REDIS_TIMEOUT)?,
            registrations: manager(&client, REDIS_TIMEOUT + wait)?,
            address,
            client,
        })
    }
}

struct Shared {
    link: RwLock<Option<Link>>,
    /// The Sentinels' config epoch of the primary (0 with `--redis`).
    config_epoch: AtomicU64,
    /// Switches of primary seen after the first.
    failovers: AtomicU64,
    /// Bumped at every switch: the inbox subscribes again on the new primary.
    switches: watch::Sender<u64>,
    /// Why the primary cannot be used now, as Sentinel or the server says.
    problem: Mutex<Option<String>>,
    /// Set while `problem` holds something (read on the hot path).
    troubled: AtomicBool,
    /// With Sentinel, how long a registration waits for a replica.
    wait: Option<Duration>,
}

/// The Redis primary, as a connection: commands go to the current one.
#[derive(Clone)]
pub struct Primary {
    shared: Arc<Shared>,
    registrations: bool,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("address", &self.address())
            .field("config_epoch", &self.config_epoch())
            .finish_non_exhaustive()
    }
}

impl Primary {
    fn new(link: Option<Link>, wait: Option<Duration>) -> Self {
        Self {
            shared: Arc::new(Shared {
                link: RwLock::new(link),
                config_epoch: AtomicU64::new(0),
                failovers: AtomicU64::new(0),
                switches: watch::Sender::new(0),
                problem: Mutex::default(),
                troubled: AtomicBool::new(false),
                wait,
            }),
            registrations: false,
        }
    }

    /// The one Redis at `url` (public for the store contract tests, which
    /// run the Redis store without a cluster).
    pub fn fixed(url: &str) -> Result<Self, SetupError> {
        let client = redis::Client::open(url).map_err(|err| SetupError::Url(err.to_string()))?;
        let address = client.get_connection_info().addr().to_string();
        Ok(Self::new(
            Some(Link::open(client, address, Duration::ZERO)?),
            None,
        ))
    }

    /// No primary yet: [`follow`] finds it.
    pub(super) fn through_sentinel(settings: &SentinelSettings) -> Self {
        Self::new(None, Some(settings.wait_timeout))
    }

    /// The same primary, on the connection kept for registrations.
    pub fn for_registrations(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            registrations: true,
        }
    }

    /// With Sentinel, how long a registration waits for a replica to
    /// confirm it (`WAIT 1`); `None` with a single Redis.
    pub fn replica_wait(&self) -> Option<Duration> {
        self.shared.wait
    }

    fn link(&self) -> Option<Link> {
        self.shared
            .link
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_link(&self, link: Option<Link>) {
        *self
            .shared
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = link;
    }

    /// The client of the current primary, for subscriptions.
    pub(super) fn client(&self) -> Option<redis::Client> {
        self.link().map(|link| link.client)
    }

    /// `host:port` of the current primary, empty when none is known.
    pub fn address(&self) -> String {
        self.link().map(|link| link.address).unwrap_or_default()
    }

    /// The Sentinels' config epoch of the primary: it grows with every
    /// failover (0 with `--redis`).
    pub fn config_epoch(&self) -> u64 {
        self.shared.config_epoch.load(Ordering::Acquire)
    }

    /// Switches of primary seen since the node started.
    pub fn failovers(&self) -> u64 {
        self.shared.failovers.load(Ordering::Relaxed)
    }

    /// Changes at every switch of primary.
    pub(super) fn switches(&self) -> watch::Receiver<u64> {
        self.shared.switches.subscribe()
    }

    /// Why the primary cannot be used now, if Sentinel or the server said.
    pub(super) fn problem(&self) -> Option<String> {
        if !self.shared.troubled.load(Ordering::Acquire) {
            return None;
        }
        self.problem_lock().clone()
    }

    fn problem_lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.shared
            .problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_problem(&self, problem: Option<String>) {
        let mut current = self.problem_lock();
        if *current != problem {
            match &problem {
                Some(problem) => tracing::warn!(problem, "the Redis primary cannot be used"),
                None => tracing::info!("the Redis primary is usable again"),
            }
        }
        self.shared
            .troubled
            .store(problem.is_some(), Ordering::Release);
        *current = problem;
    }

    fn manager(&self) -> Result<ConnectionManager, RedisError> {
        match self.link() {
            Some(link) if self.registrations => Ok(link.registrations),
            Some(link) => Ok(link.commands),
            None => Err(RedisError::from((
                ErrorKind::Io,
                "no Redis primary: waiting for Sentinel to name one",
            ))),
        }
    }
}

impl ConnectionLike for Primary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let manager = self.manager();
        Box::pin(async move { manager?.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let manager = self.manager();
        Box::pin(async move { manager?.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.manager().map_or(0, |manager| manager.get_db())
    }
}

/// What one Sentinel says of the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    host: String,
    port: u16,
    config_epoch: u64,
    /// Sentinel's flags hold `o_down`: the Sentinels agree the primary is
    /// down, and a failover is coming (one Sentinel's `s_down` alone is
    /// not enough: it may be that Sentinel's own trouble).
    down: bool,
}

impl View {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn parse_view(fields: &std::collections::HashMap<String, String>) -> Option<View> {
    Some(View {
        host: fields.get("ip")?.clone(),
        port: fields.get("port")?.parse().ok()?,
        config_epoch: fields.get("config-epoch")?.parse().ok()?,
        down: fields
            .get("flags")
            .is_some_and(|flags| flags.split(',').any(|f| f == "o_down")),
    })
}

/// The Sentinels and what they are asked.
struct Sentinels {
    settings: SentinelSettings,
    connections: Vec<ConnectionManager>,
}

impl Sentinels {
    fn new(settings: SentinelSettings) -> Result<Self, SetupError> {
        let connections = settings
            .sentinels
            .iter()
            .map(|(host, port)| {
                let info = connection_info(host, *port, settings.sentinel_password.as_deref())?;
                let client =
                    redis::Client::open(info).map_err(|err| SetupError::Url(err.to_string()))?;
                manager(&client, ASK_WITHIN)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            settings,
            connections,
        })
    }

    /// Asks every Sentinel at once; the view with the highest config epoch
    /// wins (a Sentinel that has not heard of a failover yet says less).
    async fn ask(&self) -> Result<View, String> {
        let asks = self.connections.iter().map(|sentinel| {
            let mut sentinel = sentinel.clone();
            async move {
                let fields: std::collections::HashMap<String, String> = bounded(
                    redis::cmd("SENTINEL")
                        .arg("MASTER")
                        .arg(&self.settings.master)
                        .query_async(&mut sentinel),
                )
                .await?;
                parse_view(&fields).ok_or_else(|| "an unreadable SENTINEL MASTER answer".to_owned())
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut best: Option<View> = None;
        let mut last_err = None;
        for answer in answers {
            match answer {
                Ok(view)
                    if best
                        .as_ref()
                        .is_none_or(|b| view.config_epoch > b.config_epoch) =>
                {
                    best = Some(view);
                }
                Ok(_) => {}
                Err(err) => last_err = Some(err),
            }
        }
        best.ok_or_else(|| {
            format!(
                "no Sentinel answers for {:?}: {}",
                self.settings.master,
                last_err.unwrap_or_default()
            )
        })
    }
}

/// What `ROLE` says a server is (`master`, `slave`, `sentinel`).
async fn role(connection: &mut impl ConnectionLike) -> Result<String, String> {
    let answer: Vec<Value> = bounded(redis::cmd("ROLE").query_async(connection)).await?;
    match answer.first() {
        Some(Value::BulkString(role)) => Ok(String::from_utf8_lossy(role).into_owned()),
        Some(Value::SimpleString(role)) => Ok(role.clone()),
        other => Err(format!("an unreadable ROLE answer: {other:?}")),
    }
}

/// Follows the primary the Sentinels name until `stop`.
pub(super) async fn follow(
    cluster: Arc<RedisCluster>,
    settings: SentinelSettings,
    stop: CancellationToken,
) {
    let sentinels = match Sentinels::new(settings.clone()) {
        Ok(sentinels) => sentinels,
        Err(err) => {
            cluster
                .redis
                .set_problem(Some(format!("the Sentinels cannot be reached: {err}")));
            return;
        }
    };
    let wake = Arc::new(Notify::new());
    let listeners = settings.sentinels.iter().filter_map(|(host, port)| {
        let info = connection_info(host, *port, settings.sentinel_password.as_deref()).ok()?;
        Some(hear_switches(info, wake.clone(), stop.clone()))
    });
    let listening = futures::future::join_all(listeners);
    let looking = async {
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake.notified() => {}
                _ = tick.tick() => {}
            }
            look(&cluster, &sentinels, settings.wait_timeout).await;
        }
    };
    tokio::join!(listening, looking);
}

/// Asks the Sentinels where the primary is; switches when they name another
/// server that says it is the primary; drops a primary that says it is not.
async fn look(cluster: &RedisCluster, sentinels: &Sentinels, wait: Duration) {
    let primary = &cluster.redis;
    let current = primary.address();
    let view = match sentinels.ask().await {
        Ok(view) => view,
        Err(err) => {
            // Without Sentinels the primary is still used while it says it
            // is one; a node that never found one says why it is not ready.
            if current.is_empty() {
                primary.set_problem(Some(err));
            } else {
                tracing::debug!(%err, "no Sentinel answers; keeping the primary");
                check_role(primary).await;
            }
            return;
        }
    };
    let named = view.address();
    if named == current {
        if view.down {
            primary.set_problem(Some(format!(
                "Sentinel reports the Redis primary {named} down; waiting for the failover"
            )));
        } else {
            check_role(primary).await;
        }
        return;
    }
    let link = match connection_info(
        &view.host,
        view.port,
        sentinels.settings.redis_password.as_deref(),
    )
    .and_then(|info| redis::Client::open(info).map_err(|err| SetupError::Url(err.to_string())))
    .and_then(|client| Link::open(client, named.clone(), wait))
    {
        Ok(link) => link,
        Err(err) => {
            primary.set_problem(Some(format!("cannot connect to {named}: {err}")));
            return;
        }
    };
    let mut candidate = link.commands.clone();
    match role(&mut candidate).await {
        Ok(role) if role == "master" => {}
        Ok(role) => {
            primary.set_problem(Some(format!(
                "Sentinel names {named} as the primary, but it says it is a {role}; waiting"
            )));
            return;
        }
        Err(err) => {
            primary.set_problem(Some(format!(
                "Sentinel names {named} as the primary, but it does not answer: {err}"
            )));
            return;
        }
    }
    primary
        .shared
        .config_epoch
        .fetch_max(view.config_epoch.min(MAX_CONFIG_EPOCH), Ordering::AcqRel);
    primary.set_link(Some(link));
    if !current.is_empty() {
        primary.shared.failovers.fetch_add(1, Ordering::Relaxed);
    }
    // Not ready until this node's users are claimed again on the new
    // primary (the courier clears it).
    cluster.health.reclaim_wanted.fetch_add(1, Ordering::AcqRel);
    primary.shared.switches.send_modify(|n| *n += 1);
    primary.set_problem(None);
    tracing::info!(
        from = %current,
        to = %named,
        config_epoch = primary.config_epoch(),
        "following the Redis primary Sentinel names"
    );
}

/// Drops the primary if it says it is not one any more (demoted by
/// Sentinel, or turned into a replica by hand), so nothing is written to a
/// replica.
async fn check_role(primary: &Primary) {
    let mut connection = primary.clone();
    match role(&mut connection).await {
        Ok(role) if role == "master" => primary.set_problem(None),
        Ok(role) => {
            let address = primary.address();
            primary.set_link(None);
            primary.set_problem(Some(format!(
                "the Redis primary {address} now says it is a {role}; waiting for Sentinel to name the new one"
            )));
        }
        // Not answering is the cluster's usual "Redis does not answer".
        Err(_) => {}
    }
}

/// Wakes `wake` at every `+switch-master` a Sentinel announces, keeping the
/// subscription up until `stop`.
async fn hear_switches(info: ConnectionInfo, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        if let Ok(client) = redis::Client::open(info.clone())
            && let Ok(mut pubsub) = bounded(client.get_async_pubsub()).await
            && bounded(pubsub.subscribe("+switch-master")).await.is_ok()
        {
            let mut messages = pubsub.on_message();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    message = messages.next() => match message {
                        Some(message) => {
                            tracing::info!(
                                announcement = %String::from_utf8_lossy(message.get_payload_bytes()),
                                "Sentinel announces a new primary"
                            );
                            wake.notify_one();
                        }
                        None => break,
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_answer_is_read_with_its_flags() {
        let fields = |flags: &str| {
            [
                ("name", "main"),
                ("ip", "10.0.0.2"),
                ("port", "6380"),
                ("flags", flags),
                ("config-epoch", "7"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        };
        let view = parse_view(&fields("master")).unwrap();
        assert_eq!(view.address(), "10.0.0.2:6380");
        assert_eq!(view.config_epoch, 7);
        assert!(!view.down);
        assert!(parse_view(&fields("master,s_down,o_down")).unwrap().down);
        assert!(!parse_view(&fields("master,s_down")).unwrap().down);
        assert!(parse_view(&std::collections::HashMap::new()).is_none());
    }
}
