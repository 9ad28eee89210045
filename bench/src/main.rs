//! signal-bench: the load generator behind `scripts/bench`.
//!
//! One run of one scenario against one running server, printing one JSON
//! line on stdout (progress and errors go to stderr). The driver starts a
//! fresh server per run, pins it and this process to different cores, and
//! passes the server's PID so CPU time and RSS come from the server's own
//! accounting in `/proc`.
//!
//! Layout:
//! - [`client`]: identities, connections and batched I/O for the gateway
//!   over WebSocket and WebTransport, and for PeerJS server and socket.io.
//! - [`wire`]: envelopes of the three protocols and the timestamped payload.
//! - [`socketio`]: socket.io's Engine.IO handshake, pings and event framing.
//! - [`pairs`]: throughput (closed loop) and latency (open loop).
//! - [`conns`]: connection set-up and idle memory.
//! - [`procfs`], [`summary`], [`http`]: measurement and plumbing.
//!
//! Every run is bounded: each loop stops at the end of its window or after a
//! maximum count, every network wait has a timeout, and a watchdog thread
//! exits the process if the whole run outlives its deadline.

mod client;
mod conns;
mod http;
mod pairs;
mod procfs;
mod socketio;
mod summary;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::client::{Conn, Target};
use crate::http::HttpClient;
use crate::procfs::CpuMeter;
use crate::wire::System;

/// Every single network wait (connect, first envelope, HTTP request) is
/// bounded by this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed on top of a scenario's own phases before the watchdog fires.
const DEADLINE_SLACK_S: f64 = 60.0;

/// Load generator for signal-gateway (WebSocket and WebTransport), PeerJS
/// server and socket.io. Runs one scenario against a running server and
/// prints one JSON line.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// What every scenario needs.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// System under test: the gateway over WebSocket (ws) or WebTransport
    /// (wt), PeerJS server (peerjs), or socket.io (socketio).
    #[arg(long, value_enum, env = "BENCH_SYSTEM")]
    pub system: System,

    /// HTTP and WebSocket address of the server.
    #[arg(long, env = "BENCH_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,

    /// WebTransport (UDP) address [default: --addr]
    #[arg(long, env = "BENCH_WT_ADDR")]
    pub wt_addr: Option<SocketAddr>,

    /// PID of the server process: its CPU time and RSS are what is measured.
    #[arg(long, env = "BENCH_SERVER_PID")]
    pub server_pid: u32,

    /// Kernel clock ticks per second, as `getconf CLK_TCK` prints.
    #[arg(long, env = "BENCH_CLK_TCK", default_value_t = 100)]
    pub clk_tck: u32,

    /// QUIC client endpoints (UDP sockets) shared by the WebTransport
    /// connections.
    #[arg(long, env = "BENCH_WT_ENDPOINTS", default_value_t = 4)]
    pub wt_endpoints: usize,

    /// Connections being opened at once while a scenario sets up.
    #[arg(long, env = "BENCH_CONNECT_CONCURRENCY", default_value_t = 32)]
    pub connect_concurrency: usize,

    /// Hard limit on the whole run, in seconds; the watchdog exits the
    /// process with status 3 past it [default: the scenario's own time plus
    /// 60 s]
    #[arg(long, env = "BENCH_DEADLINE")]
    pub deadline: Option<f64>,

    /// Prefix of every user name the run registers (the gateway refuses a
    /// name that is taken, so runs against one server need different ones).
    #[arg(long, env = "BENCH_NAME_PREFIX", default_value = "")]
    pub name_prefix: String,

    /// Free text copied into the result (the driver puts the run number here).
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Relay throughput: pairs ping-pong with a window of pings in flight
    /// (closed loop); relayed envelopes/s and server CPU per envelope.
    Throughput {
        /// Pairs of peers.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Pings in flight per pair.
        #[arg(long, default_value_t = 10)]
        window: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        /// Seconds of warm-up before the measured window.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Most pings sent in the whole run (a count bound besides the time bound).
        #[arg(long, default_value_t = 50_000_000)]
        max_pings: u64,
    },
    /// Latency: pairs send pings at a fixed rate (open loop); RTT percentiles
    /// from an HDR histogram.
    Latency {
        /// Pairs of peers.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Pings per second per pair (each ping is relayed twice).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        /// Seconds of warm-up before the measured window.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Connection set-up: identity (none for socket.io) + connect + first
    /// envelope, repeated; connections/s and set-up latency.
    Setup {
        /// Connections to set up.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// Set-ups in progress at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Connections set up the same way before the measured ones.
        #[arg(long, default_value_t = 200)]
        warmup_connections: usize,
    },
    /// Idle memory: server RSS per idle connection at each level.
    Idle {
        /// Connection counts at which RSS is read (comma-separated, ascending).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        levels: Vec<usize>,
        /// Seconds the connections sit idle before RSS is read.
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
        /// Seconds between PeerJS HEARTBEAT messages (the PeerJS client sends
        /// one every 5 s).
        #[arg(long, default_value_t = 5.0)]
        heartbeat: f64,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Throughput { .. } => "throughput",
            Scenario::Latency { .. } => "latency",
            Scenario::Setup { .. } => "setup",
            Scenario::Idle { .. } => "idle",
        }
    }

    /// A generous estimate of how long the scenario takes, for the watchdog.
    fn expected_s(&self) -> f64 {
        match self {
            Scenario::Throughput {
                warmup, duration, ..
            }
            | Scenario::Latency {
                warmup, duration, ..
            } => warmup + duration + 10.0,
            Scenario::Setup {
                connections,
                warmup_connections,
                ..
            } => (connections + warmup_connections) as f64 / 100.0,
            Scenario::Idle { levels, settle, .. } => {
                let most = levels.iter().max().copied().unwrap_or(0) as f64;
                most / 200.0 + settle * levels.len() as f64
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let deadline = cli
        .common
        .deadline
        .unwrap_or(cli.scenario.expected_s() + DEADLINE_SLACK_S);
    start_watchdog(Duration::from_secs_f64(deadline.max(1.0)));
    // One thread: the generator is pinned to one core, and a single-threaded
    // runtime is the cheapest way to drive many sockets from it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(run(&cli))?;
    println!("{result}");
    // Do not wait for connections to close politely: the run is over.
    std::process::exit(0);
}

/// Exits the process if the run outlives `deadline`, whatever it is stuck on.
fn start_watchdog(deadline: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("signal-bench: watchdog: the run exceeded {deadline:?}; exiting");
        std::process::exit(3);
    });
}

async fn run(cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let common = &cli.common;
    let wt_addr = common.wt_addr.unwrap_or(common.addr);
    let meter = CpuMeter::new(common.server_pid, common.clk_tck, wt_addr.port())?;
    let target =
        Arc::new(Target::new(common.system, common.addr, wt_addr, common.wt_endpoints).await?);
    let figures = match cli.scenario {
        Scenario::Throughput {
            pairs,
            window,
            payload_bytes,
            warmup,
            duration,
            max_pings,
        } => {
            let params = pairs::ThroughputParams {
                pairs,
                window,
                payload_bytes,
                warmup_s: warmup,
                duration_s: duration,
                max_pings,
            };
            pairs::throughput(common, target, &meter, params).await?
        }
        Scenario::Latency {
            pairs,
            rate,
            payload_bytes,
            warmup,
            duration,
        } => {
            let params = pairs::LatencyParams {
                pairs,
                rate,
                payload_bytes,
                warmup_s: warmup,
                duration_s: duration,
            };
            pairs::latency(common, target, &meter, params).await?
        }
        Scenario::Setup {
            connections,
            concurrency,
            warmup_connections,
        } => {
            let params = conns::SetupParams {
                connections,
                concurrency,
                warmup_connections,
            };
            conns::setup(common, target, &meter, params).await?
        }
        Scenario::Idle {
            ref levels,
            settle,
            heartbeat,
        } => {
            let params = conns::IdleParams {
                levels: levels.clone(),
                settle_s: settle,
                heartbeat_s: heartbeat,
            };
            conns::idle(common, target, &meter, params).await?
        }
    };
    let mut result = json!({
        "scenario": cli.scenario.name(),
        "system": common.system,
        "server": common.system.server(),
        "transport": common.system.transport(),
        "label": common.label,
        "generator_peak_rss_kib": procfs::own_peak_rss_kib(),
    });
    if let (Some(out), Some(fig)) = (result.as_object_mut(), figures.as_object()) {
        out.extend(fig.clone());
    }
    Ok(result)
}

/// Opens one connection per name (registering each on the gateway),
/// `concurrency` at a time, in the order of `names`.
pub async fn open_named(
    target: &Arc<Target>,
    names: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<Conn>> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let target = target.clone();
            async move {
                let mut http = HttpClient::new(target.http);
                let (name, token) = target.identity(&mut http, Some(name), i as u64).await?;
                target
                    .connect(&name, &token)
                    .await
                    .with_context(|| format!("connecting {name}"))
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// The gateway's count of envelopes forwarded so far (`GET /v1/stats`).
pub async fn server_forwarded(http: &mut HttpClient) -> anyhow::Result<u64> {
    let (status, body) = http.get("/v1/stats").await?;
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    value["counters"]["forwarded"]
        .as_u64()
        .with_context(|| format!("no counters.forwarded in /v1/stats ({status}): {value}"))
}
