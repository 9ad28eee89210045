//! What a reload (SIGHUP) changes under a running gateway: the
//! certificate, the JWT keys, the admin token, the ICE servers and TURN
//! secret, and the origins allowed. Everything new is built and checked
//! first and swapped in only then, so a reload that fails changes nothing.
//! Established connections keep what they were set up with.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::auth::OriginPolicy;
use crate::config::{Config, ConfigError};
use crate::core::stats::AuthMethod;
use crate::core::token::{AuthMode, TokenVerifier, VerifyFuture};
use crate::core::{IceConfig, IceServers};
use crate::http::{CertInfo, HttpContext};
use crate::jwt::{JwtVerifier, SetupError};
use crate::tls::{self, LiveCert, TlsError};
use crate::turn::IceProvider;

/// The ICE servers handed out, replaceable while serving.
#[derive(Debug)]
pub struct LiveIce(ArcSwap<IceProvider>);

impl LiveIce {
    /// Hands out `provider`'s servers until replaced.
    pub fn new(provider: IceProvider) -> Self {
        Self(ArcSwap::from_pointee(provider))
    }
}

impl IceServers for LiveIce {
    fn for_user(&self, user: &str, now: SystemTime) -> IceConfig {
        self.0.load().for_user(user, now)
    }
}

/// The JWT verifier, replaceable while serving: a token is checked with
/// the keys current when it arrives.
#[derive(Debug)]
pub struct LiveVerifier(ArcSwap<JwtVerifier>);

impl LiveVerifier {
    /// Verifies with `verifier` until replaced.
    pub fn new(verifier: JwtVerifier) -> Self {
        Self(ArcSwap::from_pointee(verifier))
    }
}

impl TokenVerifier for LiveVerifier {
    fn is_kind(&self, token: &str) -> bool {
        self.0.load().is_kind(token)
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::Jwt
    }

    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        let current = self.0.load_full();
        Box::pin(async move { current.verify(token).await })
    }
}

/// Why a reload was refused (and nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new settings do not fit together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The JWT keys cannot be used.
    #[error(transparent)]
    Jwt(#[from] SetupError),
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// SHA-256 (hex) of the certificate now served.
    pub sha256_hex: String,
    /// Changes that were not applied because they need a restart.
    pub not_live: Vec<&'static str>,
}

/// Applies a new configuration's live settings to a running gateway.
#[derive(Debug, Clone)]
pub struct Reloader {
    parts: Arc<Parts>,
}

#[derive(Debug)]
struct Parts {
    cert: Arc<LiveCert>,
    http: Arc<HttpContext>,
    origins: OriginPolicy,
    ice: Arc<LiveIce>,
    verifier: Option<Arc<LiveVerifier>>,
    mode: AuthMode,
    /// One reload at a time: two signals in a row apply in order.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader of what these handles serve.
    pub(crate) fn new(
        cert: Arc<LiveCert>,
        http: Arc<HttpContext>,
        origins: OriginPolicy,
        ice: Arc<LiveIce>,
        verifier: Option<Arc<LiveVerifier>>,
        mode: AuthMode,
    ) -> Self {
        Self {
            parts: Arc::new(Parts {
                cert,
                http,
                origins,
                ice,
                verifier,
                mode,
                one_at_a_time: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Checks `config` and builds what it describes (reading certificate,
    /// key and secret files, refetching a key set), then serves it. JWT
    /// turned on or off, or another `--auth`, waits for a restart.
    pub async fn reload(&self, config: &Config) -> Result<Reloaded, ReloadError> {
        let parts = &self.parts;
        let _one = parts.one_at_a_time.lock().await;
        config.validate()?;
        let identity = tls::load(&config.tls)?;
        let ice = config.ice.provider()?;
        let keys = config.identity.jwt.key_source()?;
        let mode = config.identity.mode(keys.is_some())?;
        let mut not_live = Vec::new();
        let verifier = match (&parts.verifier, keys) {
            (Some(_), Some(keys)) if mode == parts.mode => {
                Some(JwtVerifier::new(keys, config.identity.jwt.claims()).await?)
            }
            (None, None) if mode == parts.mode => None,
            _ => {
                not_live.push("JWT turned on or off, or --auth changed");
                None
            }
        };

        parts.cert.replace(&identity);
        let served = parts.http.cert.load_full();
        parts.http.cert.store(Arc::new(CertInfo {
            sha256_base64: identity.sha256_base64(),
            sha256_hex: identity.sha256_hex(),
            development: identity.development,
            webtransport_port: served.webtransport_port,
            webtransport_host: served.webtransport_host.clone(),
        }));
        parts
            .http
            .admin_token
            .store(config.http.admin_token.clone().map(Arc::new));
        // CORS for `*` (no credentials) and for a list (credentials) are
        // different layers, chosen at start.
        if config.http.allow_origins.iter().any(|o| o == "*") == parts.origins.allows_any() {
            parts.origins.replace(&config.http.allow_origins);
        } else {
            not_live.push("--allow-origin '*' turned on or off");
        }
        parts.ice.0.store(Arc::new(ice));
        if let (Some(live), Some(verifier)) = (&parts.verifier, verifier) {
            let clock = live.0.load().clock().clone();
            live.0.store(Arc::new(verifier.with_clock(clock)));
        }
        Ok(Reloaded {
            sha256_hex: identity.sha256_hex(),
            not_live,
        })
    }
}
