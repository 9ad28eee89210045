//! Command line, environment and configuration file.
//!
//! Every flag has an environment variable `SIGNAL_<FLAG>` and a key in the
//! configuration file ([`file`]): its long name, in the section its
//! `--help` heading names. Each component declares its own flags (`--help`
//! text from their doc comments) next to what they configure; this module
//! flattens them and checks the rules that span several. Limits refuse
//! zero: no setting means "unbounded".

pub mod check;
pub mod file;
pub mod limits;
pub(crate) mod parse;
pub mod secret;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use self::limits::LimitArgs;
use crate::cluster::ClusterArgs;
use crate::core::token::AuthMode;
use crate::http::{HttpArgs, OperationArgs};
use crate::jwt::JwtArgs;
pub use crate::server::{ListenAddr, ListenArgs};
use crate::store::StoreKind;
use crate::tls::TlsArgs;
use crate::turn::IceArgs;

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
    /// Where it listens.
    #[command(flatten)]
    pub listeners: ListenArgs,

    /// Its certificate.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// The HTTP front door.
    #[command(flatten)]
    pub http: HttpArgs,

    /// Tokio worker threads [default: the CPUs this process may run on]
    #[arg(long, env = "SIGNAL_WORKER_THREADS", help_heading = "Listen")]
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

    /// JWTs.
    #[command(flatten)]
    pub jwt: JwtArgs,
}

impl IdentityArgs {
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
        problems.extend(self.http.problems());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::limits::Limits;
    use crate::http::UnknownUserStatus;

    #[test]
    fn defaults_match_the_core_defaults() {
        let config = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(
            config.listeners.listen,
            ListenAddr::Socket("[::]:8000".parse().unwrap())
        );
        assert_eq!(config.listeners.wt_listen(), config.listeners.listen);
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
        assert_eq!(config.listeners.wt_listen().port(), 2);
    }

    #[test]
    fn the_unknown_user_status_is_404_unless_asked_for_401() {
        let default = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(
            default.http.unknown_user_status,
            UnknownUserStatus::NotFound
        );
        let legacy = Config::from_args(["--unknown-user-status", "401"]).unwrap();
        assert_eq!(
            legacy.http.unknown_user_status,
            UnknownUserStatus::Unauthorized
        );
        assert_eq!(legacy.http.unknown_user_status.http_error().status(), 401);
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
        assert_eq!(config.http.allow_origins.len(), 2);
        config.validate().unwrap();
    }
}
