//! signal-bench: load generator for signal-gateway (see scripts/bench).
use clap::Parser;

/// Load generator comparing signal-gateway's transports and PeerJS server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    Ok(())
}
