//! Certificates for WebTransport (and optional HTTPS/WSS).
//!
//! Browsers accept a self-signed certificate for WebTransport only through
//! `serverCertificateHashes`, and only if it is ECDSA P-256 and valid for at
//! most 14 days. The development certificate follows those rules and is
//! regenerated on start when it is missing, malformed or within a day of
//! expiry. A production certificate from `--cert`/`--key` is used as given.
//! Either is served through a [`LiveCert`], which a reload replaces under
//! running listeners.

use std::fs;
use std::io::{BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

/// Longest validity Chromium accepts for `serverCertificateHashes`.
pub const MAX_HASH_PINNED_VALIDITY: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// The development certificate starts this far in the past, for clock skew.
const DEV_BACKDATE: Duration = Duration::from_secs(60 * 60);
/// ...and is valid this long in total, a little under the 14-day cap.
const DEV_VALIDITY: Duration = Duration::from_secs(14 * 24 * 60 * 60 - 2 * 60 * 60);
/// A development certificate this close to expiry is replaced on start.
const DEV_RENEW_BEFORE: Duration = Duration::from_secs(24 * 60 * 60);
/// Names every development certificate covers.
const DEV_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why certificates could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The PEM file has no certificate.
    #[error("{}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    /// The PEM file has no private key.
    #[error("{}: no private key found", .0.display())]
    NoKey(PathBuf),
    /// rcgen failed (e.g. an invalid --san).
    #[error("cannot generate the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration refused the certificate: {0}")]
    Rustls(#[from] rustls::Error),
    /// The private key is not the certificate's.
    #[error("{}: this private key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A certificate chain, its key, and the SHA-256 of the leaf.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate's DER (what `serverCertificateHashes` pins).
    pub sha256: [u8; 32],
    /// Whether this is the self-signed development certificate.
    pub development: bool,
    /// What every configuration made from this identity serves.
    live: Arc<LiveCert>,
}

impl Identity {
    /// Pairs a chain with its key; fails when rustls cannot use the key or
    /// the key is not the leaf's.
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        development: bool,
    ) -> Result<Self, rustls::Error> {
        let sha256 = chain.first().map_or([0; 32], |leaf| sha256(leaf));
        let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &crypto_provider())?;
        Ok(Self {
            chain,
            key,
            sha256,
            development,
            live: Arc::new(LiveCert(ArcSwap::from_pointee(certified))),
        })
    }

    /// The certificate the server configurations of this identity present:
    /// replace it there to serve another certificate to new connections.
    pub fn live(&self) -> Arc<LiveCert> {
        self.live.clone()
    }

    /// The fingerprint as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The fingerprint as standard base64.
    pub fn sha256_base64(&self) -> String {
        STANDARD.encode(self.sha256)
    }

    /// rustls server configuration offering the given ALPN protocols,
    /// presenting this identity's [`LiveCert`].
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.live.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// The certificate and key TLS and QUIC handshakes present, replaceable
/// while serving: each handshake asks for it, so a reload reaches every
/// new connection and leaves established ones as they are.
#[derive(Debug)]
pub struct LiveCert(ArcSwap<CertifiedKey>);

impl LiveCert {
    /// Serves `identity`'s certificate from now on.
    pub fn replace(&self, identity: &Identity) {
        self.0.store(identity.live.0.load_full());
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// ring, without the AES-256 suites.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|suite| !AES_256_SUITES.contains(&suite.suite()));
    provider
}

/// Suites not offered. rustls clients list AES-256-GCM first, and the
/// server follows the client's order: AES-256 with SHA-384 costs more in
/// every handshake (SHA-384 key schedule) and every packet (14 AES rounds
/// instead of 10) for no protection a signalling channel needs. Without
/// them such clients take AES-128-GCM, which every TLS 1.3 client must
/// implement and browsers already prefer; a client that puts ChaCha20 first
/// (no AES hardware) still gets it. On WebTransport set-up this took about
/// a sixth off the server CPU (issue 17).
const AES_256_SUITES: [rustls::CipherSuite; 3] = [
    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

fn sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Where the development certificate and key live in `dir`.
pub fn dev_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Writes a new development certificate and key into `dir`.
pub fn generate_dev(dir: &Path, extra_sans: &[String]) -> Result<Identity, TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let sans: Vec<String> = DEV_SANS
        .iter()
        .map(|s| s.to_string())
        .chain(extra_sans.iter().cloned())
        .collect();
    let mut params = rcgen::CertificateParams::new(sans)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "signal-gateway development certificate",
    );
    let not_before = SystemTime::now() - DEV_BACKDATE;
    params.not_before = not_before.into();
    params.not_after = (not_before + DEV_VALIDITY).into();
    let cert = params.self_signed(&key)?;

    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let (cert_path, key_path) = dev_paths(dir);
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(Identity::new(vec![cert.der().clone()], key_der, true)?)
}

/// Writes via a temporary file and rename, so a concurrent start never
/// reads half a file; keys are created readable by the owner only.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    file.write_all(contents).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

/// The development certificate from `dir`, made anew when it is missing,
/// unusable by browsers, lacking a requested name, or expiring within a day.
/// Returns whether it was regenerated.
pub fn load_or_generate_dev(
    dir: &Path,
    extra_sans: &[String],
) -> Result<(Identity, bool), TlsError> {
    let (cert_path, key_path) = dev_paths(dir);
    if let Ok(identity) = load_pem(&cert_path, &key_path)
        && let Some(leaf) = identity.chain.first()
        && dev_cert_is_usable(leaf, extra_sans, SystemTime::now())
    {
        return Ok((
            Identity {
                development: true,
                ..identity
            },
            false,
        ));
    }
    generate_dev(dir, extra_sans).map(|identity| (identity, true))
}

/// What the browser rules say about a certificate, read from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// ECDSA on P-256.
    pub p256: bool,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// DNS names and IP addresses it covers.
    pub names: Vec<String>,
}

impl CertificateFacts {
    /// Reads the facts from a DER certificate.
    pub fn read(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let spki = cert.public_key();
        let p256 = spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|curve| curve == OID_EC_P256);
        let time =
            |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::DNSName(dns) => Some(dns.to_string()),
                        GeneralName::IPAddress(bytes) => {
                            ip_from_bytes(bytes).map(|ip| ip.to_string())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            p256,
            not_before: time(cert.validity().not_before.timestamp()),
            not_after: time(cert.validity().not_after.timestamp()),
            names,
        })
    }

    /// Total validity period.
    pub fn validity(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn dev_cert_is_usable(der: &[u8], extra_sans: &[String], now: SystemTime) -> bool {
    let Some(facts) = CertificateFacts::read(der) else {
        return false;
    };
    let covers = |want: &str| {
        let want_ip: Option<IpAddr> = want.parse().ok();
        facts.names.iter().any(|have| {
            have == want || (want_ip.is_some() && have.parse::<IpAddr>().ok() == want_ip)
        })
    };
    facts.p256
        && facts.validity() <= MAX_HASH_PINNED_VALIDITY
        && facts.not_before <= now
        && facts.not_after > now + DEV_RENEW_BEFORE
        && DEV_SANS.iter().all(|s| covers(s))
        && extra_sans.iter().all(|s| covers(s))
}

/// The certificate `args` name: `--cert`/`--key`, or the development
/// certificate in `--cert-dir` (made anew when missing or due for renewal).
pub fn load(args: &TlsArgs) -> Result<Identity, TlsError> {
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return load_pem(cert, key);
    }
    let (identity, generated) = load_or_generate_dev(&args.cert_dir, &args.sans)?;
    if generated {
        tracing::info!(dir = %args.cert_dir.display(), "generated a development certificate");
    }
    Ok(identity)
}

/// Loads a PEM certificate chain and private key.
pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    let cert_file = fs::File::open(cert_path).map_err(io_error(cert_path))?;
    let chain = rustls_pemfile::certs(&mut BufReader::new(cert_file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error(cert_path))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key_file = fs::File::open(key_path).map_err(io_error(key_path))?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(key_file))
        .map_err(io_error(key_path))?
        .ok_or_else(|| TlsError::NoKey(key_path.to_owned()))?;
    Identity::new(chain, key, false).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        },
        other => TlsError::Rustls(other),
    })
}

/// The certificate, as flags.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sg-tls-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn dev_certificate_follows_the_browser_rules() {
        let dir = temp_dir();
        let identity = generate_dev(&dir, &["gateway.test".into(), "10.0.0.7".into()]).unwrap();
        let facts = CertificateFacts::read(&identity.chain[0]).unwrap();
        assert!(facts.p256);
        assert!(facts.validity() <= MAX_HASH_PINNED_VALIDITY);
        assert!(facts.not_before < SystemTime::now());
        for name in ["localhost", "127.0.0.1", "::1", "gateway.test", "10.0.0.7"] {
            assert!(
                facts.names.iter().any(|n| n == name),
                "{name} in {:?}",
                facts.names
            );
        }
        assert_eq!(identity.sha256, sha256(&identity.chain[0]));
        identity.server_config(&[b"h3"]).unwrap();
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn dev_certificate_is_reused_until_it_needs_renewal() {
        let dir = temp_dir();
        let (first, made) = load_or_generate_dev(&dir, &[]).unwrap();
        assert!(made);
        let (second, made) = load_or_generate_dev(&dir, &[]).unwrap();
        assert!(!made);
        assert_eq!(first.sha256, second.sha256);
        assert!(second.development);
        let (third, made) = load_or_generate_dev(&dir, &["new.test".into()]).unwrap();
        assert!(made, "a missing SAN forces a new certificate");
        assert_ne!(third.sha256, second.sha256);
        let leaf = third.chain[0].clone();
        let in_13_days = SystemTime::now() + Duration::from_secs(13 * 24 * 3600);
        assert!(
            !dev_cert_is_usable(&leaf, &[], in_13_days),
            "renewed a day before expiry"
        );
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn garbage_files_are_replaced() {
        let dir = temp_dir();
        let (cert, key) = dev_paths(&dir);
        fs::write(&cert, "not a pem").unwrap();
        fs::write(&key, "nope").unwrap();
        let (_, made) = load_or_generate_dev(&dir, &[]).unwrap();
        assert!(made);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (a, b) = (temp_dir(), temp_dir());
        generate_dev(&a, &[]).unwrap();
        generate_dev(&b, &[]).unwrap();
        let (cert, _) = dev_paths(&a);
        let (_, other_key) = dev_paths(&b);
        let err = load_pem(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        fs::remove_dir_all(a).ok();
        fs::remove_dir_all(b).ok();
    }

    #[test]
    fn a_replaced_live_certificate_is_what_configurations_present() {
        let (a, b) = (temp_dir(), temp_dir());
        let first = generate_dev(&a, &[]).unwrap();
        let second = generate_dev(&b, &[]).unwrap();
        let live = first.live();
        let presented = |live: &LiveCert| live.0.load().cert[0].to_vec();
        assert_eq!(presented(&live), first.chain[0].to_vec());
        live.replace(&second);
        assert_eq!(presented(&live), second.chain[0].to_vec());
        assert_eq!(
            presented(&first.live()),
            second.chain[0].to_vec(),
            "one live certificate behind every configuration of the identity"
        );
        fs::remove_dir_all(a).ok();
        fs::remove_dir_all(b).ok();
    }

    #[test]
    fn missing_production_files_name_the_path() {
        let err = load_pem(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
