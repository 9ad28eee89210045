//! Command line, environment and configuration file.
//!
//! Every flag has an environment variable `SIGNAL_<FLAG>` and a key in the
//! configuration file ([`file`]): its long name, in the section its
//! `--help` heading names. `--help` text comes from the doc comments below.
//! Limits refuse zero: no setting means "unbounded".

pub mod check;
pub mod file;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::ForwardedHeader;
use crate::cluster::{Backend, SentinelSettings};
use crate::core::limits::{self, Limits};
use crate::core::token::AuthMode;
use crate::http::UnknownUserStatus;
use crate::jwt::{Claims, JwksRedirects, JwksSettings, KeySource};
use crate::store::StoreKind;
use crate::turn::{self, IceProvider, UrlKind};

/// A WebRTC signaling gateway: register a name, connect over WebSocket or
/// WebTransport, and trade offers, answers and ICE candidates with other
/// users.
#[derive(Debug, Clone, Parser)]
#[command(name = "signal-gateway", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// What to do; without a subcommand the gateway runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file: every flag has a key there (see
    /// `default-config`). Flags and environment variables override it.
    #[arg(
        long = "config",
        id = "config",
        value_name = "FILE",
        env = "SIGNAL_CONFIG",
        global = true
    )]
    pub config_file: Option<PathBuf>,
    /// How the gateway runs.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Write a new development certificate (ECDSA P-256, valid 14 days) and
    /// key into the certificate directory, and print its SHA-256.
    Cert,
    /// Check the configuration (flags, environment, file) without serving:
    /// files readable, certificate and key matching, secrets long enough,
    /// URLs well-formed. Prints each problem; exits 1 if there is any.
    CheckConfig,
    /// Print the effective configuration as TOML, with where each value
    /// came from; secrets are redacted.
    PrintConfig,
    /// Print a configuration file with every key, commented out at its
    /// default (what deploy/config.toml is).
    DefaultConfig,
}

/// Everything the gateway needs to run. The `--help` headings name the
/// configuration file's sections.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listen")]
pub struct Config {
    /// TCP address for HTTP and WebSocket. `localhost:PORT` binds both
    /// 127.0.0.1 and ::1; the default listens on every interface, IPv4 and
    /// IPv6.
    #[arg(long, env = "SIGNAL_LISTEN", default_value = "[::]:8000")]
    pub listen: ListenAddr,

    /// UDP address for WebTransport over HTTP/3 [default: the --listen
    /// address and port]
    #[arg(long, env = "SIGNAL_WT_LISTEN")]
    pub wt_listen: Option<ListenAddr>,

    /// Also serve HTTPS and WSS on the TCP listener, with the same
    /// certificate as WebTransport, and advertise HTTP/3 with Alt-Svc.
    #[arg(long, env = "SIGNAL_TLS")]
    pub tls: bool,

    /// PEM certificate chain for production (any key type and validity).
    /// Without it the gateway uses a development certificate from
    /// --cert-dir, generated on first start.
    #[arg(long, env = "SIGNAL_CERT", requires = "key", help_heading = "TLS")]
    pub cert: Option<PathBuf>,

    /// PEM private key matching --cert.
    #[arg(long, env = "SIGNAL_KEY", requires = "cert", help_heading = "TLS")]
    pub key: Option<PathBuf>,

    /// Directory of the development certificate (cert.pem, key.pem).
    #[arg(
        long,
        env = "SIGNAL_CERT_DIR",
        default_value = "certs",
        global = true,
        help_heading = "TLS"
    )]
    pub cert_dir: PathBuf,

    /// Extra subject alternative names for the development certificate
    /// (DNS names or IP addresses), besides localhost, 127.0.0.1 and ::1.
    #[arg(
        long = "san",
        env = "SIGNAL_SAN",
        value_delimiter = ',',
        global = true,
        help_heading = "TLS"
    )]
    pub sans: Vec<String>,

    /// Bearer token required by the admin routes. Without it, admin routes
    /// answer only to clients on the loopback interface.
    #[arg(
        long,
        env = "SIGNAL_ADMIN_TOKEN",
        hide_env_values = true,
        help_heading = "HTTP"
    )]
    pub admin_token: Option<String>,

    /// Origins allowed besides the gateway's own (repeatable, or
    /// comma-separated); `*` allows every origin.
    #[arg(
        long = "allow-origin",
        env = "SIGNAL_ALLOW_ORIGIN",
        value_delimiter = ',',
        help_heading = "HTTP"
    )]
    pub allow_origins: Vec<String>,

    /// Reverse proxies whose forwarding headers are believed (repeatable, or
    /// comma-separated IPs). Per-IP limits and the admin loopback rule then
    /// apply to the address the proxy reports, not to the proxy.
    #[arg(
        long = "trusted-proxy",
        env = "SIGNAL_TRUSTED_PROXY",
        value_delimiter = ',',
        help_heading = "HTTP"
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// The header the trusted proxies write the client's address (and the
    /// host and scheme it used) in; the other one is never read.
    #[arg(
        long,
        env = "SIGNAL_FORWARDED_HEADER",
        value_enum,
        default_value = "x-forwarded-for",
        help_heading = "HTTP"
    )]
    pub forwarded_header: ForwardedHeader,

    /// What `GET /v1/user` answers for a missing or unknown token, with the
    /// session cookies cleared either way: 404 (the documented contract) or
    /// 401 (what the seed's server answered: its web app goes back to its
    /// register page only on 401).
    #[arg(
        long,
        env = "SIGNAL_UNKNOWN_USER_STATUS",
        value_enum,
        default_value = "404",
        help_heading = "HTTP"
    )]
    pub unknown_user_status: UnknownUserStatus,

    /// Host names (`host` or `host:port`) the gateway is reached under,
    /// besides loopback names (repeatable, or comma-separated). Without
    /// --admin-token, admin routes answer only requests addressed to a
    /// loopback name or one of these, which refuses DNS-rebinding pages.
    #[arg(
        long = "public-host",
        env = "SIGNAL_PUBLIC_HOST",
        value_delimiter = ',',
        help_heading = "HTTP"
    )]
    pub public_hosts: Vec<String>,

    /// Tokio worker threads [default: the CPUs this process may run on]
    #[arg(long, env = "SIGNAL_WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,

    /// Identities.
    #[command(flatten)]
    pub identity: IdentityArgs,

    /// ICE servers and TURN.
    #[command(flatten)]
    pub ice: IceArgs,

    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,

    /// Metrics, probes and logs.
    #[command(flatten)]
    pub operations: OperationArgs,

    /// Several gateways as one.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

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
    #[arg(long, env = "SIGNAL_REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = nonzero_duration)]
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
        let secret = |value: &Option<String>, file: &Option<PathBuf>, flag: &'static str| match (
            value, file,
        ) {
            (Some(value), _) => Ok(Some(value.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| Some(text.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|err| ConfigError::SecretFile {
                    flag,
                    path: path.clone(),
                    reason: err.to_string(),
                }),
            (None, None) => Ok(None),
        };
        Ok(Some(Backend::Sentinel(SentinelSettings {
            sentinels: self.sentinels()?,
            master: self.redis_master.clone().unwrap_or_default(),
            sentinel_password: secret(
                &self.redis_sentinel_password,
                &self.redis_sentinel_password_file,
                "--redis-sentinel-password-file",
            )?,
            redis_password: secret(
                &self.redis_password,
                &self.redis_password_file,
                "--redis-password-file",
            )?,
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

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, fields at the top level, for log pipelines.
    Json,
}

impl LogFormat {
    /// The format asked for, or text on a terminal and JSON otherwise.
    pub fn or_default(chosen: Option<LogFormat>, terminal: bool) -> LogFormat {
        chosen.unwrap_or(if terminal {
            LogFormat::Text
        } else {
            LogFormat::Json
        })
    }
}

/// What an operator's tooling talks to.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Metrics")]
pub struct OperationArgs {
    /// Also serve /metrics, /healthz and /readyz on this TCP address, without
    /// authentication (a scrape and probe port, kept off the public one). On
    /// the main listener /metrics is always there, guarded like the admin
    /// routes.
    #[arg(long, env = "SIGNAL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format on stderr [default: text on a terminal, json otherwise]
    #[arg(long, env = "SIGNAL_LOG_FORMAT", value_enum, help_heading = "Log")]
    pub log_format: Option<LogFormat>,

    /// Which events are logged: a level (`info`, `debug`) or per-module
    /// directives (`signal_gateway=debug,quinn=warn`), as in `RUST_LOG`
    /// [default: RUST_LOG, else signal_gateway=info]
    #[arg(long, env = "SIGNAL_LOG_LEVEL", help_heading = "Log")]
    pub log_level: Option<String>,

    /// On SIGTERM or Ctrl-C, how long /readyz answers 503 while everything
    /// still works, before clients are told to go: give it the load
    /// balancer's probe interval times its failure threshold, so no new
    /// client is sent here once the drain starts.
    #[arg(long, env = "SIGNAL_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration, help_heading = "Shutdown")]
    pub shutdown_delay: Duration,
}

/// What is logged when neither --log-level nor `RUST_LOG` says.
pub const DEFAULT_LOG_FILTER: &str = "signal_gateway=info";

impl OperationArgs {
    /// The log filter: --log-level, else `RUST_LOG` (when it parses), else
    /// [`DEFAULT_LOG_FILTER`].
    pub fn log_filter(&self) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
        let Some(directives) = &self.log_level else {
            return Ok(tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)));
        };
        tracing_subscriber::EnvFilter::try_new(directives).map_err(|err| ConfigError::LogLevel {
            directives: directives.clone(),
            reason: err.to_string(),
        })
    }
}

/// Which identities the gateway takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthArg {
    /// Names registered with POST /v1/register.
    Register,
    /// JWTs an application issues; registration is closed.
    Jwt,
    /// Both.
    Both,
}

/// Where identities come from, as flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Identity")]
pub struct IdentityArgs {
    /// Where registered identities live: `embedded`, a database file in
    /// --data-dir that survives restarts; `memory`, forgotten on restart; or
    /// `redis`, shared by a cluster's nodes [default: redis with --redis,
    /// embedded without]
    #[arg(long, env = "SIGNAL_STORE", value_enum)]
    pub store: Option<StoreKind>,

    /// Directory of the embedded identity database (identities.redb).
    #[arg(long, env = "SIGNAL_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Which identities are taken: `register`, `jwt` (registration closed)
    /// or `both` [default: register without JWT settings, both with them]
    #[arg(long, env = "SIGNAL_AUTH", value_enum)]
    pub auth: Option<AuthArg>,

    /// Shared secret of HS256/384/512 JWTs.
    #[arg(
        long,
        env = "SIGNAL_JWT_SECRET",
        hide_env_values = true,
        group = "jwt_key",
        help_heading = "JWT"
    )]
    pub jwt_secret: Option<String>,

    /// File holding the shared secret of HS256/384/512 JWTs (trailing
    /// newline ignored).
    #[arg(
        long,
        env = "SIGNAL_JWT_SECRET_FILE",
        group = "jwt_key",
        help_heading = "JWT"
    )]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key of RS/PS 256/384/512, ES256/384 or EdDSA JWTs.
    #[arg(
        long,
        env = "SIGNAL_JWT_PUBLIC_KEY",
        group = "jwt_key",
        help_heading = "JWT"
    )]
    pub jwt_public_key: Option<PathBuf>,

    /// URL of a JSON Web Key Set; keys are picked by the token's `kid`.
    #[arg(long, env = "SIGNAL_JWKS_URL", group = "jwt_key", help_heading = "JWT")]
    pub jwks_url: Option<String>,

    /// A token naming an unknown `kid` refetches the key set, at most this
    /// often.
    #[arg(long, env = "SIGNAL_JWKS_REFRESH_MIN", default_value = "30s", value_parser = nonzero_duration, help_heading = "JWT")]
    pub jwks_refresh_min: Duration,

    /// A whole key-set fetch (connect, answer, body) must end within this;
    /// a token naming an unknown `kid` waits no longer for it.
    #[arg(long, env = "SIGNAL_JWKS_TIMEOUT", default_value = "3s", value_parser = nonzero_duration, help_heading = "JWT")]
    pub jwks_timeout: Duration,

    /// Largest key set read, in bytes; a longer one is cut off there.
    #[arg(long, env = "SIGNAL_JWKS_MAX_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..), help_heading = "JWT")]
    pub jwks_max_bytes: u64,

    /// Which redirects a key-set fetch follows: `none`, or `same-origin`
    /// (up to 3, never to another scheme, host or port).
    #[arg(
        long,
        env = "SIGNAL_JWKS_REDIRECTS",
        value_enum,
        default_value = "none",
        help_heading = "JWT"
    )]
    pub jwks_redirects: JwksRedirects,

    /// Required `iss` of JWTs.
    #[arg(long, env = "SIGNAL_JWT_ISSUER", help_heading = "JWT")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of JWTs (one of the token's audiences).
    #[arg(long, env = "SIGNAL_JWT_AUDIENCE", help_heading = "JWT")]
    pub jwt_audience: Option<String>,

    /// The JWT claim the username comes from.
    #[arg(
        long,
        env = "SIGNAL_JWT_USERNAME_CLAIM",
        default_value = "sub",
        help_heading = "JWT"
    )]
    pub jwt_username_claim: String,
}

impl IdentityArgs {
    /// Where JWT keys come from, if anywhere.
    pub fn key_source(&self) -> Result<Option<KeySource>, ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            return secret_source(secret.as_bytes().to_vec(), "--jwt-secret").map(Some);
        }
        if let Some(path) = &self.jwt_secret_file {
            let secret = std::fs::read(path).map_err(|err| ConfigError::SecretFile {
                flag: "--jwt-secret-file",
                path: path.clone(),
                reason: err.to_string(),
            })?;
            let trimmed = secret.trim_ascii_end().to_vec();
            return secret_source(trimmed, "--jwt-secret-file").map(Some);
        }
        if let Some(path) = &self.jwt_public_key {
            return Ok(Some(KeySource::PublicKey(path.clone())));
        }
        if let Some(url) = &self.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::JwksUrl(url.clone()));
            }
            return Ok(Some(KeySource::Jwks(JwksSettings {
                url: url.clone(),
                refresh_min: self.jwks_refresh_min,
                timeout: self.jwks_timeout,
                max_bytes: usize::try_from(self.jwks_max_bytes).unwrap_or(usize::MAX),
                redirects: self.jwks_redirects,
            })));
        }
        Ok(None)
    }

    /// Which identities are taken, given whether JWT keys are configured.
    pub fn mode(&self, has_keys: bool) -> Result<AuthMode, ConfigError> {
        match (self.auth, has_keys) {
            (None, false) | (Some(AuthArg::Register), false) => Ok(AuthMode::Register),
            (None, true) | (Some(AuthArg::Both), true) => Ok(AuthMode::Both),
            (Some(AuthArg::Jwt), true) => Ok(AuthMode::Jwt),
            (Some(AuthArg::Register), true) => Err(ConfigError::AuthMismatch(
                "--auth register takes no JWT settings; use --auth both",
            )),
            (Some(AuthArg::Jwt | AuthArg::Both), false) => Err(ConfigError::AuthMismatch(
                "--auth jwt and --auth both need --jwt-secret, --jwt-secret-file, --jwt-public-key or --jwks-url",
            )),
        }
    }

    /// What a JWT must say besides being signed.
    pub fn claims(&self) -> Claims {
        Claims {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            username: self.jwt_username_claim.clone(),
        }
    }
}

/// A shared secret short enough to guess is refused: HS256 needs 256 bits.
const MIN_SECRET_BYTES: usize = 32;

fn secret_source(secret: Vec<u8>, flag: &'static str) -> Result<KeySource, ConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::WeakSecret(flag));
    }
    Ok(KeySource::Secret(secret))
}

/// The ICE servers handed to clients, as flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TURN")]
pub struct IceArgs {
    /// STUN server URL handed to clients, `stun:host[:port]` (repeatable, or
    /// comma-separated).
    #[arg(long = "stun-url", env = "SIGNAL_STUN_URL", value_delimiter = ',')]
    pub stun_urls: Vec<String>,

    /// TURN server URL handed to clients with credentials minted for each
    /// user, `turn:host[:port][?transport=udp|tcp]` or `turns:…` (repeatable,
    /// or comma-separated); needs --turn-secret.
    #[arg(long = "turn-url", env = "SIGNAL_TURN_URL", value_delimiter = ',')]
    pub turn_urls: Vec<String>,

    /// The secret shared with the TURN server (coturn's static-auth-secret,
    /// with use-auth-secret); TURN credentials are HMACs made with it.
    #[arg(
        long,
        env = "SIGNAL_TURN_SECRET",
        hide_env_values = true,
        group = "turn_secret_source"
    )]
    pub turn_secret: Option<String>,

    /// File holding the TURN secret (trailing newline ignored).
    #[arg(long, env = "SIGNAL_TURN_SECRET_FILE", group = "turn_secret_source")]
    pub turn_secret_file: Option<PathBuf>,

    /// How long minted TURN credentials stay valid (whole seconds, at least
    /// 1s); clients fetch fresh ones before then. coturn checks it when a
    /// call makes its relay allocation; the allocation then lasts as long as
    /// the call.
    #[arg(long, env = "SIGNAL_TURN_TTL", default_value = "1h", value_parser = nonzero_duration)]
    pub turn_ttl: Duration,
}

impl IceArgs {
    /// Checks the URLs and that TURN URLs and a secret come together.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (urls, kind, flag) in [
            (&self.stun_urls, UrlKind::Stun, "--stun-url"),
            (&self.turn_urls, UrlKind::Turn, "--turn-url"),
        ] {
            for url in urls {
                turn::check_url(url, kind).map_err(|reason| ConfigError::IceUrl {
                    flag,
                    url: url.clone(),
                    reason,
                })?;
            }
        }
        let has_secret = self.turn_secret.is_some() || self.turn_secret_file.is_some();
        match (self.turn_urls.is_empty(), has_secret) {
            (false, false) => Err(ConfigError::Turn(
                "--turn-url needs --turn-secret (or SIGNAL_TURN_SECRET, or --turn-secret-file): the secret coturn has as static-auth-secret",
            )),
            (true, true) => Err(ConfigError::Turn(
                "--turn-secret without --turn-url: name the TURN servers the credentials are for",
            )),
            _ if self.turn_ttl < Duration::from_secs(1) => Err(ConfigError::Turn(
                "--turn-ttl must be at least 1s: TURN credentials expire in whole seconds",
            )),
            _ => Ok(()),
        }
    }

    /// The ICE servers to hand out, reading the secret file if there is one.
    pub fn provider(&self) -> Result<IceProvider, ConfigError> {
        self.check()?;
        let secret = match (&self.turn_secret, &self.turn_secret_file) {
            (Some(secret), _) => Some(secret.as_bytes().to_vec()),
            (None, Some(path)) => {
                let secret = std::fs::read(path).map_err(|err| ConfigError::SecretFile {
                    flag: "--turn-secret-file",
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
                Some(secret.trim_ascii_end().to_vec())
            }
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::Turn("the TURN secret is empty"));
        }
        Ok(IceProvider::new(
            self.stun_urls.clone(),
            self.turn_urls.clone(),
            secret.as_deref(),
            self.turn_ttl,
        ))
    }
}

/// The limits, as flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Largest envelope in bytes (WebSocket message, WebTransport line);
    /// a bigger one closes the connection with 1009 MESSAGE_TOO_BIG.
    #[arg(long, env = "SIGNAL_MAX_ENVELOPE_BYTES", default_value_t = limits::DEFAULT_MAX_ENVELOPE_BYTES, value_parser = nonzero_usize)]
    pub max_envelope_bytes: usize,

    /// Deepest nesting of arrays/objects in a payload.
    #[arg(long, env = "SIGNAL_MAX_JSON_DEPTH", default_value_t = limits::DEFAULT_MAX_JSON_DEPTH, value_parser = nonzero_usize)]
    pub max_json_depth: usize,

    /// Envelopes queued for one connection before it is disconnected as a
    /// slow consumer.
    #[arg(long, env = "SIGNAL_QUEUE_ENVELOPES", default_value_t = limits::DEFAULT_QUEUE_ENVELOPES, value_parser = nonzero_usize)]
    pub queue_envelopes: usize,

    /// Bytes queued for one connection before it is disconnected as a slow
    /// consumer.
    #[arg(long, env = "SIGNAL_QUEUE_BYTES", default_value_t = limits::DEFAULT_QUEUE_BYTES, value_parser = nonzero_usize)]
    pub queue_bytes: usize,

    /// How long a socket write may stall before the connection is dropped
    /// as a slow consumer.
    #[arg(long, env = "SIGNAL_WRITE_TIMEOUT", default_value = "5s", value_parser = nonzero_duration)]
    pub write_timeout: Duration,

    /// A connection from which nothing arrives for this long (not even a
    /// pong or a QUIC acknowledgement) is closed.
    #[arg(long, env = "SIGNAL_IDLE_TIMEOUT", default_value = "20s", value_parser = nonzero_duration)]
    pub idle_timeout: Duration,

    /// How often the gateway pings WebSocket clients and sends QUIC
    /// keep-alives; must be below --idle-timeout.
    #[arg(long, env = "SIGNAL_KEEP_ALIVE_INTERVAL", default_value = "6s", value_parser = nonzero_duration)]
    pub keep_alive_interval: Duration,

    /// A WebTransport client must open its stream within this time.
    #[arg(long, env = "SIGNAL_STREAM_OPEN_TIMEOUT", default_value = "10s", value_parser = nonzero_duration)]
    pub stream_open_timeout: Duration,

    /// A client must finish its TLS handshake and send each HTTP request
    /// head and body within this time (cuts off slow-drip clients); a QUIC
    /// connection must authenticate a WebTransport session within this
    /// time of its first packet, whatever else it does.
    #[arg(long, env = "SIGNAL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = nonzero_duration)]
    pub handshake_timeout: Duration,

    /// Inbound envelopes per second per connection.
    #[arg(long, env = "SIGNAL_ENVELOPE_RATE", default_value_t = NonZeroU32::new(limits::DEFAULT_ENVELOPE_RATE).unwrap_or(NonZeroU32::MIN))]
    pub envelope_rate: NonZeroU32,

    /// Inbound envelopes a connection may send in one burst.
    #[arg(long, env = "SIGNAL_ENVELOPE_BURST", default_value_t = NonZeroU32::new(limits::DEFAULT_ENVELOPE_BURST).unwrap_or(NonZeroU32::MIN))]
    pub envelope_burst: NonZeroU32,

    /// Live realtime connections across both transports.
    #[arg(long, env = "SIGNAL_MAX_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_CONNECTIONS, value_parser = nonzero_usize)]
    pub max_connections: usize,

    /// New realtime connections per second per client IP.
    #[arg(long, env = "SIGNAL_CONNECT_RATE", default_value_t = NonZeroU32::new(limits::DEFAULT_CONNECT_RATE_PER_IP).unwrap_or(NonZeroU32::MIN))]
    pub connect_rate: NonZeroU32,

    /// New realtime connections one client IP may open in one burst.
    #[arg(long, env = "SIGNAL_CONNECT_BURST", default_value_t = NonZeroU32::new(limits::DEFAULT_CONNECT_BURST_PER_IP).unwrap_or(NonZeroU32::MIN))]
    pub connect_burst: NonZeroU32,

    /// Registrations per second per client IP.
    #[arg(long, env = "SIGNAL_REGISTER_RATE", default_value_t = NonZeroU32::new(limits::DEFAULT_REGISTER_RATE_PER_IP).unwrap_or(NonZeroU32::MIN))]
    pub register_rate: NonZeroU32,

    /// Registrations one client IP may make in one burst.
    #[arg(long, env = "SIGNAL_REGISTER_BURST", default_value_t = NonZeroU32::new(limits::DEFAULT_REGISTER_BURST_PER_IP).unwrap_or(NonZeroU32::MIN))]
    pub register_burst: NonZeroU32,

    /// Registered identities held at once.
    #[arg(long, env = "SIGNAL_MAX_IDENTITIES", default_value_t = limits::DEFAULT_MAX_IDENTITIES, value_parser = nonzero_usize)]
    pub max_identities: usize,

    /// An identity not seen for this long expires and its name becomes free.
    #[arg(long, env = "SIGNAL_IDENTITY_TTL", default_value = "24h", value_parser = nonzero_duration)]
    pub identity_ttl: Duration,

    /// Identities registered from one client IP (IPv6: one /64) held at once.
    #[arg(long, env = "SIGNAL_MAX_IDENTITIES_PER_IP", default_value_t = limits::DEFAULT_MAX_IDENTITIES_PER_IP, value_parser = nonzero_usize)]
    pub max_identities_per_ip: usize,

    /// QUIC connections still authenticating (handshake, plain HTTP/3
    /// requests, the WebTransport CONNECT), counted apart from
    /// --max-connections.
    #[arg(long, env = "SIGNAL_MAX_PENDING_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_PENDING_CONNECTIONS, value_parser = nonzero_usize)]
    pub max_pending_connections: usize,

    /// QUIC connections still authenticating from one client IP (IPv6: one
    /// /64).
    #[arg(long, env = "SIGNAL_MAX_PENDING_PER_IP", default_value_t = limits::DEFAULT_MAX_PENDING_PER_IP, value_parser = nonzero_usize)]
    pub max_pending_per_ip: usize,

    /// Bytes a QUIC connection may send before it has authenticated a
    /// WebTransport session, on all its streams together; more closes it.
    #[arg(long, env = "SIGNAL_PRE_SESSION_BYTES", default_value_t = limits::DEFAULT_PRE_SESSION_BYTES, value_parser = nonzero_usize)]
    pub pre_session_bytes: usize,

    /// Plain HTTP/3 requests a QUIC connection may make before it has
    /// authenticated a WebTransport session; more closes it.
    #[arg(long, env = "SIGNAL_PRE_SESSION_REQUESTS", default_value_t = limits::DEFAULT_PRE_SESSION_REQUESTS, value_parser = nonzero_usize)]
    pub pre_session_requests: usize,

    /// Largest HTTP request head (request line and headers) in bytes, on
    /// HTTP/1.1 and HTTP/3.
    #[arg(long, env = "SIGNAL_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES, value_parser = nonzero_usize)]
    pub max_header_bytes: usize,

    /// Largest HTTP request body in bytes.
    #[arg(long, env = "SIGNAL_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = nonzero_usize)]
    pub max_body_bytes: usize,

    /// On SIGTERM or Ctrl-C, how long to let clients drain before exiting.
    #[arg(long, env = "SIGNAL_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = nonzero_duration, help_heading = "Shutdown")]
    pub shutdown_timeout: Duration,

    /// In a cluster, how long a node waits to hear whether another node
    /// wrote an envelope it sent there before answering its sender
    /// UNCONFIRMED; longer than --write-timeout.
    #[arg(long, env = "SIGNAL_DELIVERY_TIMEOUT", default_value = "10s", value_parser = nonzero_duration, help_heading = "Cluster")]
    pub delivery_timeout: Duration,
}

/// 16 KiB: ample for a browser's headers and cookies, small enough that a
/// flood of huge headers costs little (h3 leaves it unbounded by default).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// 16 KiB: a registration body is a few dozen bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

impl LimitArgs {
    /// The core's view of these limits.
    pub fn core(&self) -> Limits {
        Limits {
            max_envelope_bytes: self.max_envelope_bytes,
            max_json_depth: self.max_json_depth,
            queue_envelopes: self.queue_envelopes,
            queue_bytes: self.queue_bytes,
            write_timeout: self.write_timeout,
            idle_timeout: self.idle_timeout,
            keep_alive_interval: self.keep_alive_interval,
            stream_open_timeout: self.stream_open_timeout,
            handshake_timeout: self.handshake_timeout,
            envelope_rate: self.envelope_rate,
            envelope_burst: self.envelope_burst,
            max_connections: self.max_connections,
            connect_rate_per_ip: self.connect_rate,
            connect_burst_per_ip: self.connect_burst,
            register_rate_per_ip: self.register_rate,
            register_burst_per_ip: self.register_burst,
            max_identities: self.max_identities,
            identity_ttl: self.identity_ttl,
            max_identities_per_ip: self.max_identities_per_ip,
            max_pending_connections: self.max_pending_connections,
            max_pending_per_ip: self.max_pending_per_ip,
            pre_session_bytes: self.pre_session_bytes,
            pre_session_requests: self.pre_session_requests,
            delivery_timeout: self.delivery_timeout,
        }
    }
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Keep-alives must come before the idle timeout fires.
    #[error(
        "--keep-alive-interval ({keep_alive:?}) must be shorter than --idle-timeout ({idle:?})"
    )]
    KeepAliveTooLong {
        /// The keep-alive interval.
        keep_alive: Duration,
        /// The idle timeout.
        idle: Duration,
    },
    /// An --allow-origin value is not an origin.
    #[error("--allow-origin {0:?} is not an origin like https://example.com or *")]
    BadOrigin(String),
    /// A secret file cannot be read.
    #[error("{flag} {path}: {reason}")]
    SecretFile {
        /// The flag that names it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The JWT secret is too short.
    #[error("{0} must be at least 32 bytes (256 bits) long")]
    WeakSecret(&'static str),
    /// The JWKS URL is not an HTTP(S) URL.
    #[error("--jwks-url {0:?} is not an http:// or https:// URL")]
    JwksUrl(String),
    /// An ICE server URL is malformed.
    #[error("{flag} {url:?}: {reason}")]
    IceUrl {
        /// `--stun-url` or `--turn-url`.
        flag: &'static str,
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TURN settings do not fit together.
    #[error("{0}")]
    Turn(&'static str),
    /// The cluster settings are malformed or do not fit together.
    #[error("{0}")]
    Cluster(String),
    /// `--auth` does not fit the JWT settings.
    #[error("{0}")]
    AuthMismatch(&'static str),
    /// --log-level does not parse.
    #[error("--log-level {directives:?}: {reason}")]
    LogLevel {
        /// What was given.
        directives: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The pre-session budget cannot fit one request.
    #[error(
        "--pre-session-bytes ({budget}) must be at least --max-header-bytes + --max-body-bytes ({needed}), or one request could not be made"
    )]
    PreSessionTooSmall {
        /// The budget.
        budget: usize,
        /// A request head and body at their limits.
        needed: usize,
    },
}

impl Config {
    /// Parses a configuration from command-line style arguments (without
    /// the program name), with environment variables as for the binary.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(
            std::iter::once("signal-gateway".into()).chain(args.into_iter().map(Into::into)),
        )?;
        Ok(cli.config)
    }

    /// Checks rules that span several settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every rule spanning several settings that this configuration
    /// breaks (what `check-config` lists; [`Config::validate`] stops at
    /// the first).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.limits.keep_alive_interval >= self.limits.idle_timeout {
            problems.push(ConfigError::KeepAliveTooLong {
                keep_alive: self.limits.keep_alive_interval,
                idle: self.limits.idle_timeout,
            });
        }
        problems.extend(
            self.allow_origins
                .iter()
                .filter(|origin| {
                    *origin != "*"
                        && !(origin.starts_with("http://") || origin.starts_with("https://"))
                })
                .map(|origin| ConfigError::BadOrigin(origin.clone())),
        );
        problems.extend(self.ice.check().err());
        problems.extend(self.cluster.check().err());
        problems.extend(self.operations.log_filter().err());
        match (self.identity.store, self.cluster.is_node()) {
            (Some(StoreKind::Redis), false) => {
                problems.push(ConfigError::Cluster(
                    "--store redis needs --redis or --redis-sentinel".to_owned(),
                ));
            }
            (Some(kind @ (StoreKind::Memory | StoreKind::Embedded)), true) => {
                problems.push(ConfigError::Cluster(format!(
                    "--store {} cannot be shared: a cluster keeps identities in Redis (leave --store out)",
                    if kind == StoreKind::Memory {
                        "memory"
                    } else {
                        "embedded"
                    }
                )));
            }
            _ => {}
        }
        if self.limits.delivery_timeout <= self.limits.write_timeout {
            problems.push(ConfigError::Cluster(format!(
                "--delivery-timeout ({:?}) must be longer than --write-timeout ({:?}): a node reports an envelope undelivered only after a write stalls that long",
                self.limits.delivery_timeout, self.limits.write_timeout
            )));
        }
        let limits = &self.limits;
        let needed = limits
            .max_header_bytes
            .saturating_add(limits.max_body_bytes);
        if limits.pre_session_bytes < needed {
            problems.push(ConfigError::PreSessionTooSmall {
                budget: limits.pre_session_bytes,
                needed,
            });
        }
        problems
    }

    /// The WebTransport address: --wt-listen, or the --listen address.
    pub fn wt_listen(&self) -> ListenAddr {
        self.wt_listen.unwrap_or(self.listen)
    }
}

/// Where to listen: one socket address, or both loopback addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// One address, e.g. `[::]:8000` or `127.0.0.1:0`.
    Socket(SocketAddr),
    /// `localhost:PORT`: 127.0.0.1 and ::1 on the same port (browsers try
    /// ::1 first for `localhost`).
    Localhost(u16),
}

impl ListenAddr {
    /// The addresses to bind, first one first (port 0 is resolved by the
    /// first bind and reused for the second).
    pub fn addrs(self) -> Vec<SocketAddr> {
        match self {
            ListenAddr::Socket(addr) => vec![addr],
            ListenAddr::Localhost(port) => vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            ],
        }
    }

    /// The port asked for (0 means "any").
    pub fn port(self) -> u16 {
        match self {
            ListenAddr::Socket(addr) => addr.port(),
            ListenAddr::Localhost(port) => port,
        }
    }

    /// The same addresses on another port.
    pub fn with_port(self, port: u16) -> Self {
        match self {
            ListenAddr::Socket(addr) => ListenAddr::Socket(SocketAddr::new(addr.ip(), port)),
            ListenAddr::Localhost(_) => ListenAddr::Localhost(port),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("localhost:") {
            return port
                .parse()
                .map(ListenAddr::Localhost)
                .map_err(|_| format!("{s:?}: the port must be a number from 0 to 65535"));
        }
        s.parse().map(ListenAddr::Socket).map_err(|_| {
            format!("{s:?} is not an address like [::]:8000, 127.0.0.1:8000 or localhost:8000")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Socket(addr) => addr.fmt(f),
            ListenAddr::Localhost(port) => write!(f, "localhost:{port}"),
        }
    }
}

fn nonzero_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 is not allowed: every limit must be bounded".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|err| format!("{err} (write durations like 0s, 500ms, 10s)"))
}

fn nonzero_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("0 is not allowed: every timeout must be bounded".into()),
        Ok(d) => Ok(d),
        Err(err) => Err(format!("{err} (write durations like 500ms, 10s, 24h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_core_defaults() {
        let config = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(
            config.listen,
            ListenAddr::Socket("[::]:8000".parse().unwrap())
        );
        assert_eq!(config.wt_listen(), config.listen);
        let core = config.limits.core();
        let defaults = Limits::default();
        assert_eq!(core.max_envelope_bytes, defaults.max_envelope_bytes);
        assert_eq!(core.idle_timeout, defaults.idle_timeout);
        assert_eq!(core.keep_alive_interval, defaults.keep_alive_interval);
        assert_eq!(core.write_timeout, defaults.write_timeout);
        assert_eq!(core.identity_ttl, defaults.identity_ttl);
        assert_eq!(core.handshake_timeout, defaults.handshake_timeout);
        assert_eq!(core.envelope_rate, defaults.envelope_rate);
        config.validate().unwrap();
    }

    #[test]
    fn zero_limits_are_refused() {
        for args in [
            ["--max-envelope-bytes", "0"],
            ["--queue-envelopes", "0"],
            ["--idle-timeout", "0s"],
            ["--envelope-rate", "0"],
            ["--max-connections", "0"],
        ] {
            assert!(Config::from_args(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "localhost:0".parse::<ListenAddr>().unwrap(),
            ListenAddr::Localhost(0)
        );
        assert_eq!(ListenAddr::Localhost(9).addrs().len(), 2);
        assert!("nonsense".parse::<ListenAddr>().is_err());
        let config =
            Config::from_args(["--listen", "127.0.0.1:1", "--wt-listen", "[::1]:2"]).unwrap();
        assert_eq!(config.wt_listen().port(), 2);
    }

    #[test]
    fn the_unknown_user_status_is_404_unless_asked_for_401() {
        let default = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(default.unknown_user_status, UnknownUserStatus::NotFound);
        let legacy = Config::from_args(["--unknown-user-status", "401"]).unwrap();
        assert_eq!(legacy.unknown_user_status, UnknownUserStatus::Unauthorized);
        assert_eq!(legacy.unknown_user_status.http_error().status(), 401);
        for other in ["403", "unauthorized", ""] {
            assert!(
                Config::from_args(["--unknown-user-status", other]).is_err(),
                "{other:?}"
            );
        }
    }

    #[test]
    fn ice_settings_are_checked() {
        let config = Config::from_args([
            "--stun-url",
            "stun:stun.example.net:3478",
            "--turn-url",
            "turn:127.0.0.1:3478?transport=udp,turns:turn.example.net:443?transport=tcp",
            "--turn-secret",
            "s3cret",
        ])
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.ice.turn_urls.len(), 2);
        assert_eq!(config.ice.turn_ttl, Duration::from_secs(3600), "default");
        let list = crate::core::IceServers::for_user(
            &config.ice.provider().unwrap(),
            "alice",
            std::time::SystemTime::now(),
        );
        assert_eq!(list.ice_servers.len(), 2);

        let refused = |args: &[&str], expected: &str| {
            let config = Config::from_args(args).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        };
        refused(&["--turn-url", "turn:127.0.0.1"], "needs --turn-secret");
        refused(&["--turn-secret", "s3cret"], "without --turn-url");
        refused(
            &["--stun-url", "turn:127.0.0.1"],
            "--stun-url \"turn:127.0.0.1\"",
        );
        refused(
            &[
                "--turn-url",
                "turn:host?transport=sctp",
                "--turn-secret",
                "x",
            ],
            "?transport=udp or ?transport=tcp",
        );
        refused(
            &[
                "--turn-url",
                "turn:h",
                "--turn-secret",
                "x",
                "--turn-ttl",
                "500ms",
            ],
            "at least 1s",
        );
        assert!(Config::from_args(["--turn-ttl", "0s"]).is_err());
        assert!(
            Config::from_args(["--turn-secret", "a", "--turn-secret-file", "b"]).is_err(),
            "one source of the secret"
        );

        let empty = tempfile::NamedTempFile::new().unwrap();
        let path = empty.path().to_str().unwrap();
        let config =
            Config::from_args(["--turn-url", "turn:h", "--turn-secret-file", path]).unwrap();
        config.validate().unwrap();
        assert!(
            config
                .ice
                .provider()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        std::fs::write(path, "from-a-file\n").unwrap();
        config.ice.provider().unwrap();
    }

    #[test]
    fn cross_setting_rules_are_checked() {
        let config =
            Config::from_args(["--idle-timeout", "5s", "--keep-alive-interval", "5s"]).unwrap();
        assert!(config.validate().is_err());
        let config = Config::from_args(["--allow-origin", "example.com"]).unwrap();
        assert!(config.validate().is_err());
        let config = Config::from_args(["--allow-origin", "https://a.example,*"]).unwrap();
        assert_eq!(config.allow_origins.len(), 2);
        config.validate().unwrap();
    }
}
