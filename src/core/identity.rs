//! Identities: registering names, and telling whose a presented token is.
//! Tokens are checked by the first [`TokenVerifier`] that says the token is
//! its kind, and otherwise looked up among registered identities; a new
//! kind of token is one verifier added where the list is built
//! (`src/server/mod.rs`).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::admission::{Refusal, quota};
use super::clock::{Clock, KeyedRateLimiter};
use super::limits::{Limits, ip_key};
use super::rooms::RoomClaim;
use super::stats::{AuthMethod, AuthOutcome, RegistrationOutcome, Stats};
use super::store::{IdentityStore, MemoryStore, Registration, StoreError};
use super::token::{AuthMode, TokenError, TokenVerifier};
use super::username::{UsernameError, validate_username};
use super::wire::HttpError;

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The name breaks the username rules.
    #[error(transparent)]
    InvalidName(#[from] UsernameError),
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway takes only JWTs (`--auth jwt`).
    #[error("this gateway takes only tokens your application issues (JWT); it registers no names")]
    Closed,
}

impl RegisterError {
    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            RegisterError::InvalidName(_) => HttpError::Invalid,
            RegisterError::Store(err) => err.http_error(),
            RegisterError::Closed => HttpError::RegistrationClosed,
        }
    }
}

/// Why a token does not authenticate.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No identity has this token (or tokens of its kind are not taken).
    #[error("no valid token: register first and present its token, or present a JWT")]
    Unknown,
    /// A JWT was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Identities cannot be read right now. The detail (a file path, a
    /// Redis address) is logged, never shown to the client.
    #[error("identities are unavailable right now; try again later")]
    Store(#[from] StoreError),
}

impl AuthError {
    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            AuthError::Store(err) => err.http_error(),
            AuthError::Unknown | AuthError::Token(_) => HttpError::Unauthorized,
        }
    }
}

/// Where identities come from: the store of registered ones, the
/// verifiers of tokens issued elsewhere, and which of them are taken.
#[derive(Debug, Clone)]
pub struct Identities {
    /// Registered identities.
    pub store: Arc<dyn IdentityStore>,
    /// Verifiers of tokens an application issues, asked in order.
    pub verifiers: Vec<Arc<dyn TokenVerifier>>,
    /// Which identities are taken.
    pub mode: AuthMode,
}

impl Identities {
    /// Registered identities in memory only, dated by `clock`; no JWTs.
    pub fn in_memory(limits: &Limits, clock: &Clock) -> Self {
        Self {
            store: Arc::new(
                MemoryStore::new(limits.max_identities, limits.max_identities_per_ip)
                    .with_clock(clock.clone()),
            ),
            verifiers: Vec::new(),
            mode: AuthMode::Register,
        }
    }
}

/// The user a token belongs to, when the token stops being valid (`None`:
/// a registered identity's token lives as long as the identity), and the
/// rooms a JWT's `rooms` claim allows (`None`: no such claim).
pub type Verdict = (Arc<str>, Option<SystemTime>, Option<RoomClaim>);

/// Registration and authentication, with their rate and their counters.
#[derive(Debug)]
pub struct IdentityService {
    store: Arc<dyn IdentityStore>,
    verifiers: Vec<Arc<dyn TokenVerifier>>,
    mode: AuthMode,
    register_rate: KeyedRateLimiter<IpAddr>,
    identity_ttl: Duration,
    stats: Arc<Stats>,
    clock: Clock,
}

impl IdentityService {
    /// The service over `identities`, with the registration rate and the
    /// identity lifetime of `limits`, counting into `stats`; the rate runs
    /// on `clock`.
    pub fn new(identities: Identities, limits: &Limits, stats: Arc<Stats>, clock: &Clock) -> Self {
        Self {
            store: identities.store,
            verifiers: identities.verifiers,
            mode: identities.mode,
            register_rate: clock.keyed_rate(quota(
                limits.register_rate_per_ip,
                limits.register_burst_per_ip,
            )),
            identity_ttl: limits.identity_ttl,
            stats,
            clock: clock.clone(),
        }
    }

    /// Checks the per-IP registration rate.
    pub fn check_register_rate(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.register_rate
            .check_key(&ip_key(peer))
            .map_err(|not_until| {
                self.stats.registration(RegistrationOutcome::Refused);
                Refusal::RateLimited(self.clock.retry_after(&not_until))
            })
    }

    /// Registers `name` for a client at `peer` after checking it against
    /// the username rules, or hands the name back to its owner presenting
    /// its token.
    pub async fn register(
        &self,
        name: &str,
        presented: Option<&str>,
        peer: IpAddr,
    ) -> Result<Registration, RegisterError> {
        let registration = self.register_name(name, presented, peer).await;
        self.stats.registration(match &registration {
            Ok(Registration::Created { .. }) => RegistrationOutcome::Created,
            Ok(Registration::Reclaimed { .. }) => RegistrationOutcome::Reclaimed,
            Ok(Registration::Taken) => RegistrationOutcome::Taken,
            Err(RegisterError::InvalidName(_)) => RegistrationOutcome::Invalid,
            Err(RegisterError::Store(StoreError::Unavailable(_))) => RegistrationOutcome::Failed,
            Err(_) => RegistrationOutcome::Refused,
        });
        registration
    }

    async fn register_name(
        &self,
        name: &str,
        presented: Option<&str>,
        peer: IpAddr,
    ) -> Result<Registration, RegisterError> {
        if !self.mode.registers() {
            return Err(RegisterError::Closed);
        }
        validate_username(name)?;
        let name = self.mode.registered_name(name);
        validate_username(&name)?;
        Ok(self.store.register(&name, presented, ip_key(peer)).await?)
    }

    /// The name a registration for `requested` is stored under (see
    /// [`AuthMode::registered_name`]).
    pub fn registered_name<'a>(&self, requested: &'a str) -> Cow<'a, str> {
        self.mode.registered_name(requested)
    }

    /// The verifier whose kind `token` is, if any.
    fn verifier_of(&self, token: &str) -> Option<&Arc<dyn TokenVerifier>> {
        self.verifiers
            .iter()
            .find(|verifier| verifier.is_kind(token))
    }

    /// Whose `token` is, counted under the method that checked it. A
    /// refused token is logged with its reason, never with the token.
    pub async fn authenticate(&self, token: &str) -> Result<Verdict, AuthError> {
        let (method, verdict) = match self.verifier_of(token) {
            Some(verifier) => (verifier.method(), self.verify(verifier, token).await),
            None => (AuthMethod::Token, self.registered(token).await),
        };
        self.stats.authentication(method, auth_outcome(&verdict));
        if let Err(AuthError::Store(err)) = &verdict {
            tracing::warn!(%err, "a token could not be checked");
        }
        verdict
    }

    async fn verify(
        &self,
        verifier: &Arc<dyn TokenVerifier>,
        token: &str,
    ) -> Result<Verdict, AuthError> {
        if !self.mode.takes_jwts() {
            return Err(AuthError::Unknown);
        }
        let verified = verifier
            .verify(token)
            .await
            .and_then(|verified| {
                validate_username(&verified.username)?;
                self.mode.jwt_may_name(&verified.username)?;
                Ok(verified)
            })
            .inspect_err(|err| tracing::info!(reason = %err, "JWT refused"))?;
        Ok((
            verified.username.into(),
            Some(verified.expires_at),
            verified.rooms.map(RoomClaim::new),
        ))
    }

    async fn registered(&self, token: &str) -> Result<Verdict, AuthError> {
        if !self.mode.registers() {
            return Err(AuthError::Unknown);
        }
        let user = self
            .store
            .authenticate(token)
            .await?
            .filter(|name| self.mode.registered_may_be(name))
            .ok_or(AuthError::Unknown)?;
        Ok((user, None, None))
    }

    /// Verifies a token presented to replace a connection's token; it must
    /// name `user`. Returns its expiry.
    pub async fn refresh(&self, user: &str, token: &str) -> Result<SystemTime, AuthError> {
        let verifier = self.verifier_of(token);
        let method = verifier.map_or(AuthMethod::Jwt, |verifier| verifier.method());
        let refreshed = match verifier {
            Some(verifier) => Self::check_refresh(verifier, user, token).await,
            None => Err(AuthError::Unknown),
        };
        self.stats.authentication(method, auth_outcome(&refreshed));
        refreshed
    }

    async fn check_refresh(
        verifier: &Arc<dyn TokenVerifier>,
        user: &str,
        token: &str,
    ) -> Result<SystemTime, AuthError> {
        let verified = verifier
            .verify(token)
            .await
            .inspect_err(|err| tracing::info!(reason = %err, "refresh JWT refused"))?;
        if verified.username != user {
            return Err(AuthError::Token(TokenError::OtherUser {
                expected: user.to_owned(),
                named: verified.username,
            }));
        }
        Ok(verified.expires_at)
    }

    /// Marks `user` as seen now (written in batches).
    pub fn touch(&self, user: &str) {
        self.store.touch(user);
    }

    /// Expires identities unseen for the identity lifetime, except those
    /// `in_use`, writes batched last-seen times, and forgets the
    /// registration rate of quiet addresses. Returns how many expired.
    pub async fn expire(
        &self,
        in_use: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<usize, StoreError> {
        let expired = self.store.expire(self.identity_ttl, in_use).await?;
        self.store.flush().await?;
        self.register_rate.retain_recent();
        self.register_rate.shrink_to_fit();
        Ok(expired.len())
    }

    /// Writes what the store batches.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// Forgets every identity; returns how many there were.
    pub async fn clear(&self) -> Result<usize, StoreError> {
        self.store.clear().await
    }

    /// Every registered name, sorted.
    pub async fn names(&self) -> Result<Vec<Arc<str>>, StoreError> {
        self.store.names().await
    }

    /// Registered identities.
    pub fn count(&self) -> usize {
        self.store.count()
    }
}

fn auth_outcome<T>(result: &Result<T, AuthError>) -> AuthOutcome {
    match result {
        Ok(_) => AuthOutcome::Accepted,
        Err(AuthError::Store(_)) => AuthOutcome::Failed,
        Err(_) => AuthOutcome::Refused,
    }
}
