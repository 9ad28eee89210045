//! Verifies the JWTs an application issues for its users, with a shared
//! secret (HS256/384/512), a public key (RS/PS 256/384/512, ES256/384,
//! EdDSA) or a JSON Web Key Set fetched over HTTP.
//!
//! The algorithm is pinned by the key: a token may only use an algorithm
//! of its key's family, so a token signed with `none`, or an HS256 token
//! made with a public key as its "secret" (algorithm confusion), is refused.
//! `exp` is required, `nbf` honoured, both with [`TOKEN_LEEWAY`]; `iss` and
//! `aud` are checked when configured.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;
use tokio::time::Instant;

use crate::core::token::{TOKEN_LEEWAY, TokenError, TokenVerifier, Verified, VerifyFuture};

/// How long one JWKS request may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted, in bytes.
const JWKS_MAX_BYTES: usize = 1 << 20;

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A shared secret (HMAC).
    Secret(Vec<u8>),
    /// A PEM public key file (RSA, EC P-256/P-384, Ed25519).
    PublicKey(PathBuf),
    /// A JSON Web Key Set at this URL.
    Jwks {
        /// The URL.
        url: String,
        /// Refetched at most this often when a token names an unknown key.
        refresh_min: Duration,
    },
}

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

/// A fetched key set: keys by `kid`, and when it was fetched.
#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<String, Key>,
    fetched: Option<Instant>,
}

#[derive(Debug)]
enum Keys {
    One(Key),
    Set {
        url: String,
        refresh_min: Duration,
        client: reqwest::Client,
        set: RwLock<Arc<KeySet>>,
        /// One fetch at a time.
        fetching: tokio::sync::Mutex<()>,
    },
}

/// Verifies JWTs with the configured keys and claims.
#[derive(Debug)]
pub struct JwtVerifier {
    keys: Keys,
    claims: Claims,
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
            KeySource::Jwks { url, refresh_min } => {
                let client = reqwest::Client::builder()
                    .timeout(JWKS_FETCH_TIMEOUT)
                    .build()
                    .map_err(|err| SetupError::Client(err.to_string()))?;
                Keys::Set {
                    url,
                    refresh_min,
                    client,
                    set: RwLock::default(),
                    fetching: tokio::sync::Mutex::new(()),
                }
            }
        };
        let verifier = Self { keys, claims };
        if let Keys::Set { url, .. } = &verifier.keys {
            match verifier.fetch().await {
                Ok(count) => tracing::info!(%url, keys = count, "JWKS fetched"),
                Err(err) => {
                    tracing::warn!(%url, %err, "JWKS unavailable at start; will fetch when a token arrives")
                }
            }
        }
        Ok(verifier)
    }

    /// Fetches the key set and replaces the cached one; returns its size.
    /// On failure the last good keys stay.
    async fn fetch(&self) -> Result<usize, String> {
        let Keys::Set {
            url, client, set, ..
        } = &self.keys
        else {
            return Ok(0);
        };
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|err| format!("fetching {url}: {err}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|err| format!("reading {url}: {err}"))?;
        if body.len() > JWKS_MAX_BYTES {
            return Err(format!("{url} sent more than {JWKS_MAX_BYTES} bytes"));
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
        *set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(KeySet {
            keys,
            fetched: Some(Instant::now()),
        });
        Ok(count)
    }

    /// The key a token names: the one key, or `kid` in the key set, fetched
    /// again (at most once per `--jwks-refresh-min`) when it is not there.
    async fn key(&self, kid: Option<&str>) -> Result<Key, TokenError> {
        let (refresh_min, set, fetching) = match &self.keys {
            Keys::One(key) => return Ok(key.clone()),
            Keys::Set {
                refresh_min,
                set,
                fetching,
                ..
            } => (refresh_min, set, fetching),
        };
        let current = || set.read().unwrap_or_else(|p| p.into_inner()).clone();
        let pick = |keys: &KeySet| match kid {
            Some(kid) => keys.keys.get(kid).cloned(),
            // Without a `kid`, only a set of one key is unambiguous.
            None if keys.keys.len() == 1 => keys.keys.values().next().cloned(),
            None => None,
        };
        if let Some(key) = pick(&current()) {
            return Ok(key);
        }
        let _one_at_a_time = fetching.lock().await;
        let cached = current();
        let stale = cached.fetched.is_none_or(|at| at.elapsed() >= *refresh_min);
        if stale && let Err(err) = self.fetch().await {
            tracing::warn!(%err, "JWKS refetch failed; the last good keys stay");
            if cached.keys.is_empty() {
                return Err(TokenError::NoKeys(err));
            }
        }
        pick(&current()).ok_or_else(|| TokenError::UnknownKey(kid.unwrap_or_default().to_owned()))
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
        validation.leeway = TOKEN_LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
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
        Ok(Verified {
            username,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

impl TokenVerifier for JwtVerifier {
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
