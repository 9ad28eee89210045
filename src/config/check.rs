//! `check-config`: everything about a configuration that can be known
//! without serving (no socket is bound, no file written, no key set
//! fetched).

use std::time::SystemTime;

use super::file::Loaded;
use crate::jwt::{JwtVerifier, KeySource};
use crate::tls;

/// Every problem found, each a sentence naming the setting (and the file
/// line that set it); empty when the gateway would start.
pub fn problems(loaded: &Loaded) -> Vec<String> {
    let config = &loaded.config;
    let mut problems = Vec::new();
    problems.extend(
        config
            .problems()
            .iter()
            .map(|err| loaded.explain(&err.to_string())),
    );
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => match tls::load_pem(cert, key) {
            Ok(identity) => problems.extend(
                certificate_dates(&identity, SystemTime::now())
                    .map(|why| loaded.explain(&format!("--cert {}: {why}", cert.display()))),
            ),
            Err(err) => problems.push(loaded.explain(&format!("--cert/--key: {err}"))),
        },
        _ => {
            let (cert, _) = tls::dev_paths(&config.tls.cert_dir);
            if config.tls.cert_dir.exists() && !config.tls.cert_dir.is_dir() {
                problems.push(loaded.explain(&format!(
                    "--cert-dir {}: not a directory",
                    config.tls.cert_dir.display()
                )));
            } else if cert.exists()
                && let Err(err) = tls::load_pem(&cert, &tls::dev_paths(&config.tls.cert_dir).1)
            {
                problems.push(format!(
                    "the development certificate is unreadable and would be replaced on start: {err}"
                ));
            }
        }
    }
    match config.identity.jwt.key_source() {
        Ok(keys) => {
            if let Err(err) = config.identity.mode(keys.is_some()) {
                problems.push(loaded.explain(&err.to_string()));
            }
            // A secret or public key is checked as the gateway would load
            // it; a key set is only fetched when serving.
            if let Some(keys @ (KeySource::Secret(_) | KeySource::PublicKey(_))) = keys
                && let Err(err) = futures::executor::block_on(JwtVerifier::new(
                    keys,
                    config.identity.jwt.claims(),
                ))
            {
                problems.push(loaded.explain(&format!("JWT key: {err} (--jwt-public-key)")));
            }
        }
        Err(err) => problems.push(loaded.explain(&err.to_string())),
    }
    if config.ice.check().is_ok()
        && let Err(err) = config.ice.provider()
    {
        problems.push(loaded.explain(&err.to_string()));
    }
    // The Redis and Sentinel password files are read as a node would.
    if config.cluster.check().is_ok()
        && let Err(err) = config.cluster.backend()
    {
        problems.push(loaded.explain(&err.to_string()));
    }
    let data_dir = &config.identity.data_dir;
    if data_dir.exists() && !data_dir.is_dir() {
        problems.push(loaded.explain(&format!(
            "--data-dir {}: not a directory",
            data_dir.display()
        )));
    }
    problems.dedup();
    problems
}

/// What is wrong with a certificate's validity at `now`.
fn certificate_dates(identity: &tls::Identity, now: SystemTime) -> Option<String> {
    let facts = tls::CertificateFacts::read(identity.chain.first()?)?;
    if facts.not_after <= now {
        Some("the certificate has expired".to_owned())
    } else if facts.not_before > now {
        Some("the certificate is not valid yet".to_owned())
    } else {
        None
    }
}
