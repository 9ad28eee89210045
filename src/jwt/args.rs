//! The JWT flags: where keys come from and what a token must claim.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Claims, JwksRedirects, JwksSettings, KeySource};
use crate::config::ConfigError;
use crate::config::secret::Secret;

/// A shared secret short enough to guess is refused: HS256 needs 256 bits.
const MIN_SECRET_BYTES: usize = 32;

/// Which JWTs are taken, as flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "JWT")]
pub struct JwtArgs {
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
    #[arg(long, env = "SIGNAL_JWKS_REFRESH_MIN", default_value = "30s", value_parser = crate::config::parse::nonzero_duration, help_heading = "JWT")]
    pub jwks_refresh_min: Duration,

    /// A whole key-set fetch (connect, answer, body) must end within this;
    /// a token naming an unknown `kid` waits no longer for it.
    #[arg(long, env = "SIGNAL_JWKS_TIMEOUT", default_value = "3s", value_parser = crate::config::parse::nonzero_duration, help_heading = "JWT")]
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

impl JwtArgs {
    /// `--jwt-secret` and `--jwt-secret-file`.
    fn secret(&self) -> Secret<'_> {
        Secret {
            value: self.jwt_secret.as_ref(),
            file: self.jwt_secret_file.as_ref(),
            file_flag: "--jwt-secret-file",
        }
    }

    /// Where JWT keys come from, if anywhere.
    pub fn key_source(&self) -> Result<Option<KeySource>, ConfigError> {
        let secret = self.secret();
        if let Some(bytes) = secret.bytes()? {
            if bytes.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::WeakSecret(if secret.value.is_some() {
                    "--jwt-secret"
                } else {
                    secret.file_flag
                }));
            }
            return Ok(Some(KeySource::Secret(bytes)));
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

    /// What a JWT must say besides being signed.
    pub fn claims(&self) -> Claims {
        Claims {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            username: self.jwt_username_claim.clone(),
        }
    }
}
