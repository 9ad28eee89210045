//! How a gateway client gets the token it connects with: a registered name
//! (`POST /v1/register`), or a JWT the generator mints itself, as an
//! application's backend would, with the key the gateway was started with
//! (`--jwt-secret` for HS256, `--jwt-public-key` for ES256).

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::ValueEnum;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::http::HttpClient;

/// How long a minted token is valid: far longer than any run, so no
/// connection sees `TOKEN_EXPIRING`.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Where gateway identities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    /// `POST /v1/register` for every name.
    Register,
    /// An HS256 JWT minted with --jwt-secret.
    JwtHs256,
    /// An ES256 JWT minted with the private key in --jwt-key.
    JwtEs256,
}

/// Signs JWTs whose `sub` is the user's name.
pub struct Minter {
    header: Header,
    key: EncodingKey,
    expires: u64,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("alg", &self.header.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

impl Minter {
    /// The minter for `mode`, or `None` when names are registered.
    pub fn new(
        mode: IdentityMode,
        secret: Option<&str>,
        key_file: Option<&Path>,
    ) -> anyhow::Result<Option<Self>> {
        let (alg, key) = match mode {
            IdentityMode::Register => return Ok(None),
            IdentityMode::JwtHs256 => {
                let secret = secret.context("--identity jwt-hs256 needs --jwt-secret")?;
                (
                    Algorithm::HS256,
                    EncodingKey::from_secret(secret.as_bytes())?,
                )
            }
            IdentityMode::JwtEs256 => {
                let path = key_file.context("--identity jwt-es256 needs --jwt-key")?;
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)?)
            }
        };
        let expires = (SystemTime::now() + TOKEN_LIFETIME)
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs();
        Ok(Some(Self {
            header: Header::new(alg),
            key,
            expires,
        }))
    }

    /// A token for `name`.
    pub fn mint(&self, name: &str) -> anyhow::Result<String> {
        let claims = Claims {
            sub: name,
            exp: self.expires,
        };
        Ok(jsonwebtoken::encode(&self.header, &claims, &self.key)?)
    }
}

/// Registers `name` on the gateway and returns its token.
pub async fn register(http: &mut HttpClient, name: &str) -> anyhow::Result<String> {
    let (status, body) = http
        .post_json("/v1/register", &format!("{{\"username\":\"{name}\"}}"))
        .await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("register answered {status} with non-JSON"))?;
    if status != 200 || value["status"] != "SUCCESS" {
        bail!("register {name}: HTTP {status} {value}");
    }
    Ok(value["token"].as_str().context("no token")?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_tokens_carry_the_name_and_verify_with_the_secret() {
        let secret = "a-shared-secret-of-at-least-32-bytes!";
        let minter = Minter::new(IdentityMode::JwtHs256, Some(secret), None)
            .unwrap()
            .unwrap();
        let token = minter.mint("s1").unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims["sub"], "s1");
        assert!(
            Minter::new(IdentityMode::Register, None, None)
                .unwrap()
                .is_none()
        );
        assert!(Minter::new(IdentityMode::JwtEs256, None, None).is_err());
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key_rcgen_writes() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dir = std::env::temp_dir().join(format!("signal-bench-es256-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let private = dir.join("private.pem");
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        let minter = Minter::new(IdentityMode::JwtEs256, None, Some(&private));
        std::fs::remove_dir_all(&dir).unwrap();
        let token = minter.unwrap().unwrap().mint("s2").unwrap();
        let key = jsonwebtoken::DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()).unwrap();
        let validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims["sub"], "s2");
    }
}
