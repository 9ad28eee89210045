//! The cluster's flags: where Redis is, and this node's name.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Backend, SentinelSettings};
use crate::config::ConfigError;
use crate::config::secret::Secret;

/// A cluster of gateways on Redis, as flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterArgs {
    /// Redis to join a cluster through (`redis://[:password@]host:port[/db]`,
    /// or `rediss://` for TLS): identities, routes and envelopes between
    /// gateways go through it. Without it the gateway is a single process.
    #[arg(long, env = "SIGNAL_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// Redis Sentinels to find the primary through, instead of --redis
    /// (`host:port`, comma-separated): the node follows every failover they
    /// announce (needs --redis-master)
    #[arg(
        long,
        env = "SIGNAL_REDIS_SENTINEL",
        value_delimiter = ',',
        conflicts_with = "redis"
    )]
    pub redis_sentinel: Vec<String>,

    /// The name the Sentinels monitor the primary under (`sentinel monitor
    /// <name> ...`)
    #[arg(long, env = "SIGNAL_REDIS_MASTER")]
    pub redis_master: Option<String>,

    /// The password of the Redis primary and replicas, with
    /// --redis-sentinel (--redis takes it in the URL)
    #[arg(
        long,
        env = "SIGNAL_REDIS_PASSWORD",
        hide_env_values = true,
        group = "redis_password_source"
    )]
    pub redis_password: Option<String>,

    /// File holding that password (trailing newline ignored)
    #[arg(
        long,
        env = "SIGNAL_REDIS_PASSWORD_FILE",
        group = "redis_password_source"
    )]
    pub redis_password_file: Option<PathBuf>,

    /// The Sentinels' password (their `requirepass`)
    #[arg(
        long,
        env = "SIGNAL_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true,
        group = "sentinel_password_source"
    )]
    pub redis_sentinel_password: Option<String>,

    /// File holding the Sentinels' password (trailing newline ignored)
    #[arg(
        long,
        env = "SIGNAL_REDIS_SENTINEL_PASSWORD_FILE",
        group = "sentinel_password_source"
    )]
    pub redis_sentinel_password_file: Option<PathBuf>,

    /// With --redis-sentinel, how long a registration waits for a replica
    /// to confirm it (`WAIT 1`) before it is undone and answered 503
    #[arg(long, env = "SIGNAL_REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = crate::config::parse::nonzero_duration)]
    pub redis_wait_timeout: Duration,

    /// This node's name in the cluster: letters, digits, `.`, `_`, `-`, at
    /// most 64 [default: the host name and a random suffix]
    #[arg(long, env = "SIGNAL_NODE_ID")]
    pub node_id: Option<String>,

    /// The host name (or IP) browsers reach this node's WebTransport
    /// endpoint under, when pages come through a load balancer:
    /// `/v1/cert-hash` names it, so a page opens WebTransport to this node
    /// [default: the host the page was loaded from]
    #[arg(long, env = "SIGNAL_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
}

impl ClusterArgs {
    /// Whether the gateway is a cluster node (`--redis` or
    /// `--redis-sentinel`).
    pub fn is_node(&self) -> bool {
        self.redis.is_some() || !self.redis_sentinel.is_empty()
    }

    /// Checks the flags.
    pub fn check(&self) -> Result<(), ConfigError> {
        let cluster = |why: &str| Err(ConfigError::Cluster(why.to_owned()));
        let sentinel_only = self.redis_master.is_some()
            || self.redis_password.is_some()
            || self.redis_password_file.is_some()
            || self.redis_sentinel_password.is_some()
            || self.redis_sentinel_password_file.is_some();
        if self.redis_sentinel.is_empty() && sentinel_only {
            return cluster(
                "--redis-master and the Redis and Sentinel passwords go with --redis-sentinel",
            );
        }
        if !self.redis_sentinel.is_empty() {
            self.sentinels()?;
            if self.redis_master.as_deref().is_none_or(str::is_empty) {
                return cluster(
                    "--redis-sentinel needs --redis-master: the name the Sentinels monitor the primary under",
                );
            }
        } else if let Some(url) = &self.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return cluster("--redis must be a redis:// or rediss:// URL");
            }
            redis_url_parses(url).map_err(ConfigError::Cluster)?;
        } else {
            if self.node_id.is_some() {
                return cluster("--node-id needs --redis or --redis-sentinel");
            }
            return Ok(());
        }
        if let Some(id) = &self.node_id {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if id.is_empty() || id.len() > 64 || !id.chars().all(allowed) {
                return Err(ConfigError::Cluster(format!(
                    "--node-id {id:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
                )));
            }
        }
        if let Some(host) = &self.advertise_host
            && (host.is_empty() || host.contains(['/', ' ', '@']))
        {
            return Err(ConfigError::Cluster(format!(
                "--advertise-host {host:?} is not a host name or IP address"
            )));
        }
        Ok(())
    }

    /// `--redis-sentinel` as `(host, port)` pairs.
    fn sentinels(&self) -> Result<Vec<(String, u16)>, ConfigError> {
        self.redis_sentinel
            .iter()
            .map(|entry| {
                let parsed = entry.trim().rsplit_once(':').and_then(|(host, port)| {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    (!host.is_empty()).then_some((host.to_owned(), port.parse::<u16>().ok()?))
                });
                parsed.filter(|(_, port)| *port != 0).ok_or_else(|| {
                    ConfigError::Cluster(format!(
                        "--redis-sentinel {entry:?}: give each Sentinel as host:port"
                    ))
                })
            })
            .collect()
    }

    /// Where the node finds Redis (reading the password files), or `None`
    /// when the gateway is no node.
    pub fn backend(&self) -> Result<Option<Backend>, ConfigError> {
        if let Some(url) = &self.redis {
            return Ok(Some(Backend::Url(url.clone())));
        }
        if self.redis_sentinel.is_empty() {
            return Ok(None);
        }
        Ok(Some(Backend::Sentinel(SentinelSettings {
            sentinels: self.sentinels()?,
            master: self.redis_master.clone().unwrap_or_default(),
            sentinel_password: Secret {
                value: self.redis_sentinel_password.as_ref(),
                file: self.redis_sentinel_password_file.as_ref(),
                file_flag: "--redis-sentinel-password-file",
            }
            .text()?,
            redis_password: Secret {
                value: self.redis_password.as_ref(),
                file: self.redis_password_file.as_ref(),
                file_flag: "--redis-password-file",
            }
            .text()?,
            wait_timeout: self.redis_wait_timeout,
        })))
    }

    /// This node's name: --node-id, or the host name and a random suffix.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|name| {
                name.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .take(40)
                    .collect::<String>()
            })
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "node".to_owned());
        format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
    }
}

/// Whether the redis crate takes `url` (its own parser, so the message is
/// the one an operator would get from it), without printing the password.
fn redis_url_parses(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|err| format!("--redis is not a usable Redis URL: {err}"))
}
