//! How long one fsync takes on the disk under a directory: the floor of a
//! durable commit, against which the embedded store's registrations are
//! read. Rewrites 4 KiB pages of a small preallocated file and syncs each
//! write with `fdatasync` (`File::sync_data`), as redb's commit does, then
//! prints one JSON line of latencies in µs. A tool of its own because it
//! needs no server.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

/// Pages the writes rotate over.
const PAGES: u64 = 16;
const PAGE_BYTES: usize = 4096;

/// Measures fdatasync latency in DIR and prints it as JSON.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Directory on the disk to measure (created if missing); the probe
    /// file is removed afterwards.
    dir: PathBuf,
    /// Synced writes measured.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("creating {}", cli.dir.display()))?;
    let path = cli.dir.join("fsync-probe");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let page = [0x5a_u8; PAGE_BYTES];
    for i in 0..PAGES {
        file.write_all_at(&page, i * PAGE_BYTES as u64)?;
    }
    file.sync_all()?;
    let mut micros = Vec::new();
    for i in 0..cli.count {
        file.write_all_at(&page, (i % PAGES) * PAGE_BYTES as u64)?;
        let started = Instant::now();
        file.sync_data()?;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    println!(
        "{}",
        json!({
            "count": micros.len(),
            "dir": cli.dir,
            "mean_us": mean,
            "p50_us": at(0.5),
            "p90_us": at(0.9),
            "p99_us": at(0.99),
            "max_us": at(1.0),
        })
    );
    Ok(())
}
