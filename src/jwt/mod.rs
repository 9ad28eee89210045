//! Verifies the JWTs an application issues for its users, with a shared
//! secret (HS256/384/512), a public key (RS/PS 256/384/512, ES256/384,
//! EdDSA) or a JSON Web Key Set fetched over HTTP.
//!
//! The algorithm is pinned by the key: a token may only use an algorithm
//! of its key's family, so a token signed with `none`, or an HS256 token
//! made with a public key as its "secret" (algorithm confusion), is refused.
//! `exp` is required, `nbf` honoured, both with [`TOKEN_LEEWAY`]; `iss` and
//! `aud` are checked when configured.

mod args;

pub use args::JwtArgs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;
use tokio::time::Instant;

use crate::core::clock::Clock;
use crate::core::stats::AuthMethod;
use crate::core::token::{TOKEN_LEEWAY, TokenError, TokenVerifier, Verified, VerifyFuture};

/// The latest expiry taken from a token, 9999-12-31T23:59:59Z: a later
/// `exp` (up to 2^64-1) is as good as never and is taken as this, so no
/// time arithmetic on it can overflow.
const LATEST_EXP: u64 = 253_402_300_799;

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A shared secret (HMAC).
    Secret(Vec<u8>),
    /// A PEM public key file (RSA, EC P-256/P-384, Ed25519).
    PublicKey(PathBuf),
    /// A JSON Web Key Set fetched over HTTP.
    Jwks(JwksSettings),
}

/// Where a JSON Web Key Set is fetched from, and the bounds on fetching it.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// The URL.
    pub url: String,
    /// Fetched again at most this often when a token names an unknown key,
    /// counting failed attempts.
    pub refresh_min: Duration,
    /// A whole fetch (connect, headers, body) ends within this; a token
    /// waiting for a fetch waits no longer.
    pub timeout: Duration,
    /// Largest key set read, in bytes; reading stops there.
    pub max_bytes: usize,
    /// Which redirects a fetch follows.
    pub redirects: JwksRedirects,
}

/// Which redirects a key-set fetch follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum JwksRedirects {
    /// None: a redirect is a failed fetch.
    #[default]
    None,
    /// Up to 3, each to the configured URL's own origin (scheme, host and
    /// port): a path moved on the same server, never another host.
    SameOrigin,
}

/// Most redirects `--jwks-redirects same-origin` follows in one fetch.
const MAX_REDIRECTS: usize = 3;

/// What a token must say besides being signed.
#[derive(Debug, Clone)]
pub struct Claims {
    /// `iss` must equal this, when set.
    pub issuer: Option<String>,
    /// `aud` must include this, when set.
    pub audience: Option<String>,
    /// The claim holding the username.
    pub username: String,
}

/// Why the verifier cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The key file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds no usable public key.
    #[error("{0} holds no RSA, EC (P-256, P-384) or Ed25519 public key in PEM")]
    Key(PathBuf),
    /// The HTTP client for the key set cannot be built.
    #[error("cannot set up fetching the key set: {0}")]
    Client(String),
}

/// A key and the algorithms a token verified with it may use.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A fetch in flight, shared by every token waiting for it.
type Fetch = Shared<BoxFuture<'static, Result<(), String>>>;

/// When the key set was last fetched, and the fetch under way.
#[derive(Debug, Default)]
struct Fetches {
    /// When the last fetch started, whether it succeeded or not: failed
    /// attempts count toward `refresh_min` too, or a key-set host answering
    /// errors would be asked again for every token naming an unknown key.
    last_attempt: Option<Instant>,
    /// At most one fetch runs; tokens needing it share its result.
    in_flight: Option<Fetch>,
}

/// A key set fetched over HTTP: keys by `kid`.
#[derive(Debug)]
struct Jwks {
    settings: JwksSettings,
    client: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, Key>>>,
    fetches: Mutex<Fetches>,
}

impl Jwks {
    fn new(settings: JwksSettings) -> Result<Self, SetupError> {
        let origin = reqwest::Url::parse(&settings.url)
            .map_err(|err| SetupError::Client(format!("{}: {err}", settings.url)))?
            .origin();
        let redirects = match settings.redirects {
            JwksRedirects::None => reqwest::redirect::Policy::none(),
            JwksRedirects::SameOrigin => reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS || attempt.url().origin() != origin {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }),
        };
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(redirects)
            .build()
            .map_err(|err| SetupError::Client(err.to_string()))?;
        Ok(Self {
            settings,
            client,
            keys: RwLock::default(),
            fetches: Mutex::default(),
        })
    }

    fn current(&self) -> Arc<HashMap<String, Key>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key a token names: `kid`, or without one the only key.
    fn pick(&self, kid: Option<&str>) -> Option<Key> {
        let keys = self.current();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            // Without a `kid`, only a set of one key is unambiguous.
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    fn lock_fetches(&self) -> std::sync::MutexGuard<'_, Fetches> {
        // Every update is a single assignment.
        self.fetches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fetch to wait for: the one in flight, or a new one unless the
    /// last attempt began less than `refresh_min` ago (then `None`: the
    /// token is answered at once with the keys there are).
    fn refetch(self: &Arc<Self>) -> Option<Fetch> {
        let mut fetches = self.lock_fetches();
        if let Some(fetch) = &fetches.in_flight {
            return Some(fetch.clone());
        }
        if fetches
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.settings.refresh_min)
        {
            return None;
        }
        fetches.last_attempt = Some(Instant::now());
        // A task of its own: a token that stops waiting (its connection
        // went away) does not cancel the fetch the others share.
        let jwks = self.clone();
        let task = tokio::spawn(async move {
            let url = &jwks.settings.url;
            let result = match tokio::time::timeout(jwks.settings.timeout, jwks.fetch()).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "{url} did not answer within {} ms (--jwks-timeout)",
                    jwks.settings.timeout.as_millis()
                )),
            };
            match &result {
                Ok(count) => tracing::info!(%url, keys = count, "JWKS fetched"),
                Err(err) => tracing::warn!(%err, "JWKS fetch failed; the last good keys stay"),
            }
            jwks.lock_fetches().in_flight = None;
            result.map(|_| ())
        });
        let fetch = async move { task.await.unwrap_or_else(|err| Err(err.to_string())) }
            .boxed()
            .shared();
        fetches.in_flight = Some(fetch.clone());
        Some(fetch)
    }

    /// Fetches the key set and replaces the cached one; returns its size.
    /// On failure the last good keys stay. Reads at most `max_bytes`: a
    /// larger declared length is refused before the body, a longer body
    /// as soon as it passes the limit.
    async fn fetch(&self) -> Result<usize, String> {
        let url = &self.settings.url;
        let max = self.settings.max_bytes;
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|err| format!("fetching {url}: {err}"))?;
        if response.status().is_redirection() {
            return Err(format!(
                "{url} answered {} (a redirect); key-set fetches follow {} (--jwks-redirects)",
                response.status(),
                match self.settings.redirects {
                    JwksRedirects::None => "no redirects",
                    JwksRedirects::SameOrigin => "redirects only within the URL's own origin",
                }
            ));
        }
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        if let Some(declared) = response.content_length()
            && declared > max as u64
        {
            return Err(format!(
                "{url} declares {declared} bytes, more than --jwks-max-bytes ({max})"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| format!("reading {url}: {err}"))?
        {
            if body.len() + chunk.len() > max {
                return Err(format!(
                    "{url} sent more than --jwks-max-bytes ({max}); the rest was not read"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let jwks: JwkSet =
            serde_json::from_slice(&body).map_err(|err| format!("{url} is not a JWKS: {err}"))?;
        let keys: HashMap<String, Key> = jwks
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                Some((kid, jwk_key(jwk)?))
            })
            .collect();
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(count)
    }
}

#[derive(Debug)]
enum Keys {
    One(Key),
    Set(Arc<Jwks>),
}

/// Verifies JWTs with the configured keys and claims.
#[derive(Debug)]
pub struct JwtVerifier {
    keys: Keys,
    claims: Claims,
    /// What `exp` and `nbf` are checked against.
    clock: Clock,
}

impl JwtVerifier {
    /// Sets up a verifier; a key set is fetched once now (if that fails,
    /// the verifier starts without keys and fetches when a token arrives).
    pub async fn new(source: KeySource, claims: Claims) -> Result<Self, SetupError> {
        let keys = match source {
            KeySource::Secret(secret) => Keys::One(Key {
                key: DecodingKey::from_secret(&secret)
                    .map_err(|err| SetupError::Client(err.to_string()))?,
                algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
            }),
            KeySource::PublicKey(path) => {
                let pem = std::fs::read(&path).map_err(|source| SetupError::Read {
                    path: path.clone(),
                    source,
                })?;
                Keys::One(pem_key(&pem).ok_or(SetupError::Key(path))?)
            }
            KeySource::Jwks(settings) => Keys::Set(Arc::new(Jwks::new(settings)?)),
        };
        if let Keys::Set(jwks) = &keys
            && let Some(fetch) = jwks.refetch()
            && fetch.await.is_err()
        {
            tracing::warn!(url = %jwks.settings.url, "JWKS unavailable at start; will fetch when a token arrives");
        }
        Ok(Self {
            keys,
            claims,
            clock: Clock::system(),
        })
    }

    /// The clock lifetimes are checked against.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The same verifier checking lifetimes against `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The key a token names: the one key, or `kid` in the key set. An
    /// unknown `kid` waits for the key set to be fetched again (the fetch in
    /// flight, or a new one at most once per `--jwks-refresh-min`), at most
    /// `--jwks-timeout`; a known one never waits.
    async fn key(&self, kid: Option<&str>) -> Result<Key, TokenError> {
        let jwks = match &self.keys {
            Keys::One(key) => return Ok(key.clone()),
            Keys::Set(jwks) => jwks,
        };
        if let Some(key) = jwks.pick(kid) {
            return Ok(key);
        }
        let fetched = match jwks.refetch() {
            Some(fetch) => fetch.await,
            None => Ok(()),
        };
        if let Some(key) = jwks.pick(kid) {
            return Ok(key);
        }
        match fetched {
            Err(err) if jwks.current().is_empty() => Err(TokenError::NoKeys(err)),
            _ if jwks.current().is_empty() => Err(TokenError::NoKeys(format!(
                "the key set at {} holds no usable key, and is fetched again at most once per --jwks-refresh-min",
                jwks.settings.url
            ))),
            _ => Err(TokenError::UnknownKey(kid.unwrap_or_default().to_owned())),
        }
    }

    async fn check(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| TokenError::Malformed(err.to_string()))?;
        let key = self.key(header.kid.as_deref()).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // `exp` and `nbf` are checked below, against the clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp"]);
        match &self.claims.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.claims.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(|err| match err.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm => {
                        TokenError::Algorithm(format!("{:?}", header.alg))
                    }
                    ErrorKind::InvalidIssuer => TokenError::Issuer,
                    ErrorKind::InvalidAudience => TokenError::Audience,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
                        TokenError::NoExpiry
                    }
                    _ => TokenError::Malformed(err.to_string()),
                })?;
        let claims = data.claims;
        let username = claims
            .get(&self.claims.username)
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::UsernameClaim(self.claims.username.clone()))?
            .to_owned();
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenError::NoExpiry)?;
        self.check_lifetime(exp, claims.get("nbf"))?;
        let rooms = match claims.get("rooms") {
            None => None,
            Some(Value::Array(names)) => Some(
                names
                    .iter()
                    .map(|name| name.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                    .ok_or(TokenError::RoomsClaim)?,
            ),
            Some(_) => return Err(TokenError::RoomsClaim),
        };
        Ok(Verified {
            username,
            rooms,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp.min(LATEST_EXP)),
        })
    }
}

impl JwtVerifier {
    /// Refuses a token past its `exp`, or before its `nbf`, by more than
    /// [`TOKEN_LEEWAY`] (RFC 7519 §4.1.4, §4.1.5).
    fn check_lifetime(&self, exp: u64, nbf: Option<&Value>) -> Result<(), TokenError> {
        let now = self.clock.unix_ms() / 1000;
        let leeway = TOKEN_LEEWAY.as_secs();
        if exp < now.saturating_sub(leeway) {
            return Err(TokenError::Expired);
        }
        match nbf.map(Value::as_u64) {
            None => Ok(()),
            Some(None) => Err(TokenError::Malformed("nbf is not a NumericDate".to_owned())),
            Some(Some(nbf)) if nbf > now.saturating_add(leeway) => Err(TokenError::NotYetValid),
            Some(Some(_)) => Ok(()),
        }
    }
}

impl TokenVerifier for JwtVerifier {
    /// Three dot-separated parts; a gateway token is base64url, no dots.
    fn is_kind(&self, token: &str) -> bool {
        token.bytes().filter(|b| *b == b'.').count() == 2
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::Jwt
    }

    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(self.check(token))
    }
}

/// The public key in a PEM file, whichever kind it is.
fn pem_key(pem: &[u8]) -> Option<Key> {
    let families = [
        (DecodingKey::from_rsa_pem(pem), AlgorithmFamily::Rsa),
        (DecodingKey::from_ec_pem(pem), AlgorithmFamily::Ec),
        (DecodingKey::from_ed_pem(pem), AlgorithmFamily::Ed),
    ];
    families.into_iter().find_map(|(key, family)| {
        Some(Key {
            key: key.ok()?,
            algorithms: family.algorithms().to_vec(),
        })
    })
}

/// A key from a JWKS entry, allowed only its own `alg` when it names one,
/// else its family's algorithms (an EC key only its curve's).
fn jwk_key(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Key> {
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let algorithms = match jwk.common.key_algorithm {
        Some(alg) => vec![key_algorithm(alg)?],
        None => match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            _ => key.family().algorithms().to_vec(),
        },
    };
    Some(Key { key, algorithms })
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"a secret of thirty-two bytes or more, for tests";

    async fn verifier(manual: &ManualClock) -> JwtVerifier {
        let claims = Claims {
            issuer: None,
            audience: None,
            username: "sub".to_owned(),
        };
        JwtVerifier::new(KeySource::Secret(SECRET.to_vec()), claims)
            .await
            .unwrap()
            .with_clock(manual.clock())
    }

    fn token(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn exp_and_nbf_are_checked_against_the_clock_with_the_leeway() {
        let manual = ManualClock::new();
        let verifier = verifier(&manual).await;
        let now = manual.clock().unix_ms() / 1000;
        let leeway = TOKEN_LEEWAY.as_secs();
        let lasting =
            token(&serde_json::json!({"sub": "alice", "nbf": now + 100, "exp": now + 600}));
        manual.advance(Duration::from_secs(100 - leeway - 1));
        assert_eq!(
            verifier.check(&lasting).await.unwrap_err(),
            TokenError::NotYetValid
        );
        manual.advance(Duration::from_secs(1));
        let verified = verifier.check(&lasting).await.unwrap();
        assert_eq!(verified.username, "alice");
        assert_eq!(
            verified.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(now + 600)
        );
        manual.advance(Duration::from_secs(600 + 2 * leeway - 100));
        assert!(verifier.check(&lasting).await.is_ok(), "within the leeway");
        manual.advance(Duration::from_secs(1));
        assert_eq!(
            verifier.check(&lasting).await.unwrap_err(),
            TokenError::Expired
        );
        let odd = token(&serde_json::json!({"sub": "alice", "nbf": "soon", "exp": now + 9_999}));
        assert!(matches!(
            verifier.check(&odd).await.unwrap_err(),
            TokenError::Malformed(_)
        ));
    }
}
