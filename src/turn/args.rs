//! The ICE flags: STUN and TURN servers, and the TURN secret.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{IceProvider, UrlKind, check_url};
use crate::config::ConfigError;
use crate::config::secret::Secret;

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
    #[arg(long, env = "SIGNAL_TURN_TTL", default_value = "1h", value_parser = crate::config::parse::nonzero_duration)]
    pub turn_ttl: Duration,
}

impl IceArgs {
    /// `--turn-secret` and `--turn-secret-file`.
    fn secret(&self) -> Secret<'_> {
        Secret {
            value: self.turn_secret.as_ref(),
            file: self.turn_secret_file.as_ref(),
            file_flag: "--turn-secret-file",
        }
    }

    /// Checks the URLs and that TURN URLs and a secret come together.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (urls, kind, flag) in [
            (&self.stun_urls, UrlKind::Stun, "--stun-url"),
            (&self.turn_urls, UrlKind::Turn, "--turn-url"),
        ] {
            for url in urls {
                check_url(url, kind).map_err(|reason| ConfigError::IceUrl {
                    flag,
                    url: url.clone(),
                    reason,
                })?;
            }
        }
        match (self.turn_urls.is_empty(), self.secret().is_given()) {
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
        let secret = self.secret().bytes()?;
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
