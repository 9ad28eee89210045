//! Tokens an application issues for its own users (JWTs): the seam between
//! the core and the verifier, which lives outside the core (it reads keys
//! from files and fetches them over HTTP).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use super::stats::AuthMethod;
use super::username::UsernameError;

/// How far `exp` and `nbf` may be off: the clocks of the application that
/// issues tokens and of the gateway differ by a few seconds.
pub const TOKEN_LEEWAY: Duration = Duration::from_secs(5);

/// How identities reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Only names registered with `POST /v1/register`.
    #[default]
    Register,
    /// Only JWTs an application issues; registration is closed.
    Jwt,
    /// Either.
    Both,
}

impl AuthMode {
    /// Whether gateway tokens (from registration) are accepted.
    pub fn registers(self) -> bool {
        self != AuthMode::Jwt
    }

    /// Whether JWTs are accepted.
    pub fn takes_jwts(self) -> bool {
        self != AuthMode::Register
    }

    /// The name a registration for `requested` is stored under: in `Both`,
    /// [`REGISTERED_PREFIX`] and the name (once), so that no registered
    /// name can ever be a JWT's user; elsewhere the name as asked.
    pub fn registered_name(self, requested: &str) -> Cow<'_, str> {
        if self == AuthMode::Both && !requested.starts_with(REGISTERED_PREFIX) {
            Cow::Owned(format!("{REGISTERED_PREFIX}{requested}"))
        } else {
            Cow::Borrowed(requested)
        }
    }

    /// Whether `name` may be the user of a JWT here: in `Both`, never a
    /// name of the registered namespace.
    pub fn jwt_may_name(self, name: &str) -> Result<(), TokenError> {
        if self == AuthMode::Both && name.starts_with(REGISTERED_PREFIX) {
            return Err(TokenError::RegisteredName(name.to_owned()));
        }
        Ok(())
    }

    /// Whether a registered identity called `name` may authenticate here:
    /// in `Both`, only one of the registered namespace (an identity
    /// registered while the gateway ran `--auth register` could otherwise
    /// be a JWT's user).
    pub fn registered_may_be(self, name: &str) -> bool {
        self != AuthMode::Both || name.starts_with(REGISTERED_PREFIX)
    }
}

/// In `--auth both`, every registered name starts with this and no JWT may
/// name a user that does: registered names and the application's users are
/// two namespaces that can never collide, whatever is registered when,
/// and with nothing to remember (a reservation list could be lost with
/// the store, or be beaten to a name by a registration).
pub const REGISTERED_PREFIX: char = '~';

/// A token the verifier accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user, from the configured claim (not yet checked against the
    /// name rules: the core does that).
    pub username: String,
    /// When the token stops being valid (`exp`).
    pub expires_at: SystemTime,
    /// The rooms its `rooms` claim names (trailing `*`: a prefix), if it
    /// has the claim.
    pub rooms: Option<Vec<String>>,
}

/// Why a JWT was refused; the text is what a developer reads in the log
/// and in the refusal's message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT at all, or its header or claims do not decode.
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still to come.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `exp` is missing.
    #[error("the token has no exp claim; one is required")]
    NoExpiry,
    /// The signature does not verify with the configured key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// Signed with an algorithm the configured key does not allow.
    #[error("the token is signed with {0}, which the configured key does not allow")]
    Algorithm(String),
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not the one configured (--jwt-issuer)")]
    Issuer,
    /// `aud` does not include the configured audience.
    #[error("the token's audience does not include the one configured (--jwt-audience)")]
    Audience,
    /// The `rooms` claim is not an array of strings.
    #[error("the token's rooms claim must be an array of room names")]
    RoomsClaim,
    /// The username claim is missing or not a string.
    #[error("the token has no string claim {0:?} to take the username from")]
    UsernameClaim(String),
    /// In `--auth both`, the username is one of the registered namespace.
    #[error(
        "the token's username {0:?} starts with \"~\", which marks names registered with POST /v1/register (--auth both)"
    )]
    RegisteredName(String),
    /// A refreshed token names another user than the connection's.
    #[error(
        "a refreshed token must name the connection's user ({expected}); this one names {named:?}"
    )]
    OtherUser {
        /// The connection's user.
        expected: String,
        /// The user the token names.
        named: String,
    },
    /// The username breaks the name rules.
    #[error("the token's username is not allowed: {0}")]
    Username(#[from] UsernameError),
    /// The token names a key the key set does not have (it is fetched
    /// again at most once per `--jwks-refresh-min`).
    #[error(
        "no key {0:?} in the key set (fetched again for an unknown key at most once per --jwks-refresh-min)"
    )]
    UnknownKey(String),
    /// No key could be had (the key set was never fetched).
    #[error("no signing keys are available: {0}")]
    NoKeys(String),
}

/// What verifying a token returns.
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<Verified, TokenError>> + Send + 'a>>;

/// Checks tokens an application issues (a JWT's signature, algorithm,
/// `exp`/`nbf`, issuer and audience). The core asks each verifier in turn
/// whether a token is its kind; one that is none's is a gateway token.
pub trait TokenVerifier: Send + Sync + fmt::Debug {
    /// Whether `token` has this verifier's shape (cheap: no verification).
    fn is_kind(&self, token: &str) -> bool;

    /// The method its tokens are counted under in the metrics.
    fn method(&self) -> AuthMethod;

    /// Verifies `token`.
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_both_registered_names_and_jwt_users_are_apart() {
        let both = AuthMode::Both;
        assert_eq!(both.registered_name("dave"), "~dave");
        assert_eq!(both.registered_name("~dave"), "~dave", "prefixed once");
        assert!(both.jwt_may_name("dave").is_ok());
        assert_eq!(
            both.jwt_may_name("~dave"),
            Err(TokenError::RegisteredName("~dave".into()))
        );
        assert!(both.registered_may_be("~dave"));
        assert!(
            !both.registered_may_be("dave"),
            "registered under --auth register"
        );
        for other in [AuthMode::Register, AuthMode::Jwt] {
            assert_eq!(other.registered_name("dave"), "dave");
            assert!(other.jwt_may_name("~dave").is_ok());
            assert!(other.registered_may_be("dave"));
        }
    }
}
