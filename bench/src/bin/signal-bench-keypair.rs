//! Writes a fresh ECDSA P-256 key pair for the bench's ES256 JWTs:
//! `es256-private.pem` (PKCS#8), which `signal-bench --jwt-key` signs with,
//! and `es256-public.pem`, which the gateway is given with
//! `--jwt-public-key`. A tool of its own because the gateway must have the
//! public key before it starts, and a scenario run needs a running server.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Writes es256-private.pem and es256-public.pem into DIR.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Directory to write the two files into (created if missing).
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating a P-256 key pair")?;
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("creating {}", cli.dir.display()))?;
    for (name, pem) in [
        ("es256-private.pem", pair.serialize_pem()),
        ("es256-public.pem", pair.public_key_pem()),
    ] {
        let path = cli.dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
