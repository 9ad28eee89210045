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
//!   over WebSocket (in the clear or over TLS) and WebTransport, and for
//!   PeerJS server and socket.io.
//! - [`identity`]: registered names, and JWTs minted in the generator.
//! - [`wire`]: envelopes of the three protocols and the timestamped payload.
//! - [`socketio`]: socket.io's Engine.IO handshake, pings and event framing.
//! - [`pairs`]: throughput (closed loop) and latency (open loop).
//! - [`conns`]: connection set-up and idle memory.
//! - [`registrations`]: registrations per second.
//! - [`rooms`]: rooms of members sending to their room (open loop).
//! - [`procfs`], [`summary`], [`http`], [`tls`]: measurement and plumbing.
//!
//! `src/bin/signal-bench-floor.rs` is the room scenario's reference server:
//! the least any server can do for a room envelope.
//!
//! Every run is bounded: each loop stops at the end of its window or after a
//! maximum count, every network wait has a timeout, and a watchdog thread
//! exits the process if the whole run outlives its deadline.

mod client;
mod conns;
mod http;
mod identity;
mod pairs;
mod procfs;
mod registrations;
mod rooms;
mod socketio;
mod summary;
mod tls;
mod wire;

use std::cell::Cell;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::client::{Conn, Target};
use crate::http::HttpClient;
use crate::identity::IdentityMode;
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
    /// System under test: the gateway over WebSocket (ws), WebSocket over
    /// TLS (wss) or WebTransport (wt), PeerJS server (peerjs), socket.io
    /// (socketio), or the room scenario's floor (floor,
    /// `signal-bench-floor`).
    #[arg(long, value_enum, env = "BENCH_SYSTEM")]
    pub system: System,

    /// PEM certificate the wss client trusts: the one the gateway serves
    /// (its development certificate, cert.pem in its --cert-dir).
    #[arg(long, env = "BENCH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// How gateway clients get their token: register their name, or bring
    /// a JWT the generator mints (HS256 with --jwt-secret, ES256 with
    /// --jwt-key).
    #[arg(long, value_enum, env = "BENCH_IDENTITY", default_value_t = IdentityMode::Register)]
    pub identity: IdentityMode,

    /// The HS256 secret the gateway was given (its --jwt-secret).
    #[arg(long, env = "BENCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// ES256 private key (PKCS#8 PEM) whose public key the gateway was
    /// given with --jwt-public-key (signal-bench-keypair writes both).
    #[arg(long, env = "BENCH_JWT_KEY")]
    pub jwt_key: Option<PathBuf>,

    /// HTTP and WebSocket address of the server.
    #[arg(long, env = "BENCH_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,

    /// WebTransport (UDP) address [default: --addr]
    #[arg(long, env = "BENCH_WT_ADDR")]
    pub wt_addr: Option<SocketAddr>,

    /// Another node of the same gateway cluster (HTTP, WebSocket and
    /// WebTransport on this one address): in the throughput and latency
    /// scenarios, the B side of every pair registers and connects here while
    /// A stays on --addr, so every envelope crosses nodes.
    #[arg(long, env = "BENCH_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,

    /// PID of the server process: its CPU time and RSS are what is measured.
    #[arg(long, env = "BENCH_SERVER_PID")]
    pub server_pid: u32,

    /// What to call the --server-pid process in the per-process CPU split.
    #[arg(long, env = "BENCH_SERVER_NAME", default_value = "server")]
    pub server_name: String,

    /// Another process of the system under test whose CPU counts as the
    /// server's, as NAME=PID (a cluster's other node, its Redis); repeat
    /// for more.
    #[arg(long = "also-measure", value_name = "NAME=PID", value_parser = parse_named_pid)]
    pub also_measure: Vec<(String, u32)>,

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
        /// Acknowledge as client.js does (ACK every 32 envelopes or 1 s):
        /// the relay cost with resume buffers kept and freed.
        #[arg(long)]
        ack: bool,
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
        /// Acknowledge as client.js does (ACK every 32 envelopes or 1 s):
        /// the relay cost with resume buffers kept and freed, at a fixed
        /// rate.
        #[arg(long)]
        ack: bool,
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
    /// Registrations: `POST /v1/register` alone, repeated (gateway only);
    /// registrations/s, latency and server CPU per registration.
    Register {
        /// Most registrations measured.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Seconds measured at most (registrations started after that are
        /// not made).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Registrations in progress at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Registrations made the same way before the measured ones.
        #[arg(long, default_value_t = 200)]
        warmup: usize,
    },
    /// Rooms: members join rooms and each sends to its room at a fixed
    /// rate (open loop); server CPU per delivered envelope and delivery
    /// latency (gateway and socket.io).
    Rooms {
        /// Rooms.
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Members per room.
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Envelopes per second each member sends to its room.
        #[arg(long, default_value_t = 2.0)]
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
            Scenario::Register { .. } => "register",
            Scenario::Idle { .. } => "idle",
            Scenario::Rooms { .. } => "rooms",
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
            }
            | Scenario::Rooms {
                warmup, duration, ..
            } => warmup + duration + 10.0,
            Scenario::Setup {
                connections,
                warmup_connections,
                ..
            } => (connections + warmup_connections) as f64 / 100.0,
            // Warm-up registrations may each wait for a disk commit.
            Scenario::Register {
                duration, warmup, ..
            } => duration + *warmup as f64 / 50.0,
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

/// `name=pid`, for --also-measure.
fn parse_named_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=PID"))?;
    let pid = pid.parse().map_err(|_| format!("{pid:?} is not a PID"))?;
    if name.is_empty() {
        return Err(format!("{text:?} has no name"));
    }
    Ok((name.to_owned(), pid))
}

async fn run(cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let common = &cli.common;
    if common.system == System::Floor && !matches!(cli.scenario, Scenario::Rooms { .. }) {
        anyhow::bail!("the floor is a reference for the room scenario only");
    }
    let target = Arc::new(Target::new(common).await?);
    let peer = match common.peer_addr {
        Some(addr) => {
            if !matches!(
                cli.scenario,
                Scenario::Throughput { .. } | Scenario::Latency { .. }
            ) {
                anyhow::bail!("--peer-addr is for the throughput and latency scenarios");
            }
            if !common.system.is_gateway() {
                anyhow::bail!("--peer-addr is for a cluster of gateways");
            }
            Some(Arc::new(Target::at(common, addr, addr).await?))
        }
        None => None,
    };
    let cross_node = peer.is_some();
    let mut processes = vec![(common.server_name.clone(), common.server_pid)];
    processes.extend(common.also_measure.iter().cloned());
    let mut udp_ports = vec![target.wt.port()];
    udp_ports.extend(peer.as_ref().map(|p| p.wt.port()));
    let meter = CpuMeter::new(&processes, common.clk_tck, udp_ports)?;
    let figures = match cli.scenario {
        Scenario::Throughput {
            pairs,
            window,
            payload_bytes,
            warmup,
            duration,
            max_pings,
            ack,
        } => {
            let params = pairs::ThroughputParams {
                pairs,
                window,
                payload_bytes,
                warmup_s: warmup,
                duration_s: duration,
                max_pings,
                ack,
            };
            pairs::throughput(common, target, peer, &meter, params).await?
        }
        Scenario::Latency {
            pairs,
            rate,
            payload_bytes,
            warmup,
            duration,
            ack,
        } => {
            let params = pairs::LatencyParams {
                pairs,
                rate,
                payload_bytes,
                warmup_s: warmup,
                duration_s: duration,
                ack,
            };
            pairs::latency(common, target, peer, &meter, params).await?
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
        Scenario::Register {
            count,
            duration,
            concurrency,
            warmup,
        } => {
            let params = registrations::RegisterParams {
                count,
                duration_s: duration,
                concurrency,
                warmup,
            };
            registrations::run(common, &target, &meter, params).await?
        }
        Scenario::Rooms {
            rooms,
            members,
            rate,
            payload_bytes,
            warmup,
            duration,
        } => {
            if !matches!(
                common.system,
                System::Ws | System::Wss | System::Wt | System::Socketio | System::Floor
            ) {
                anyhow::bail!("the room scenario is for the gateway, socket.io and the floor");
            }
            let params = rooms::RoomParams {
                rooms,
                members,
                rate,
                payload_bytes,
                warmup_s: warmup,
                duration_s: duration,
            };
            rooms::run(common, target, &meter, params).await?
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
        "identity": common.identity,
        "label": common.label,
        "cross_node": cross_node,
        "generator_peak_rss_kib": procfs::own_peak_rss_kib(),
    });
    if let (Some(out), Some(fig)) = (result.as_object_mut(), figures.as_object()) {
        out.extend(fig.clone());
    }
    Ok(result)
}

/// Runs `job(http, i)` for every `i` in `range` (or those started before
/// `until`), `concurrency` at a time, each worker with its own keep-alive
/// HTTP connection (as a browser reuses one), and returns the results in
/// the order of `range`. The workers share this task: the runtime has one
/// thread anyway.
pub async fn run_workers<T>(
    target: &Target,
    range: Range<usize>,
    until: Option<Instant>,
    concurrency: usize,
    job: impl AsyncFn(&mut HttpClient, usize) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let next = Cell::new(range.start);
    let worker = async || {
        let mut http = target.http_client();
        let mut done = Vec::new();
        loop {
            let i = next.get();
            if i >= range.end || until.is_some_and(|until| Instant::now() >= until) {
                return anyhow::Ok(done);
            }
            next.set(i + 1);
            done.push((i, job(&mut http, i).await?));
        }
    };
    let workers = concurrency.clamp(1, range.len().max(1));
    let mut all: Vec<(usize, T)> = futures::future::try_join_all((0..workers).map(|_| worker()))
        .await?
        .into_iter()
        .flatten()
        .collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, done)| done).collect())
}

/// Opens one connection per name (each with its identity on the gateway),
/// `concurrency` at a time, in the order of `names`.
pub async fn open_named(
    target: &Target,
    names: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<Conn>> {
    run_workers(
        target,
        0..names.len(),
        None,
        concurrency,
        async |http, i| {
            let (name, token) = target.identity(http, Some(&names[i]), i as u64).await?;
            target
                .connect(&name, &token)
                .await
                .with_context(|| format!("connecting {name}"))
        },
    )
    .await
}

/// The gateway's count of envelopes forwarded so far (`GET /v1/stats`):
/// to its own users, plus (a cluster node) those it sent to other nodes.
pub async fn server_forwarded(http: &mut HttpClient) -> anyhow::Result<u64> {
    let (status, body) = http.get("/v1/stats").await?;
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    let local = value["counters"]["forwarded"]
        .as_u64()
        .with_context(|| format!("no counters.forwarded in /v1/stats ({status}): {value}"))?;
    let remote = value["counters"]["remote"]["sent"].as_u64().unwrap_or(0);
    Ok(local + remote)
}
