//! The two scenarios about connections rather than envelopes.
//!
//! * **Set-up**: `concurrency` workers each repeat the whole sequence a new
//!   client goes through — get an identity (gateway: `POST /v1/register`,
//!   or a JWT minted in the generator; PeerJS: `GET /peerjs/id`), connect
//!   (TCP + TLS if any + WebSocket upgrade, or QUIC + HTTP/3 + extended
//!   CONNECT + stream), wait for the server's first envelope, then send one
//!   envelope to itself and wait for it to come back — until `connections`
//!   clients are up. Figures: connections per second, latency of the whole
//!   sequence and of each step, and server CPU per connection. socket.io has no identity step (the name goes in the
//!   CONNECT packet): its connect step is TCP + WebSocket upgrade + Engine.IO
//!   OPEN + Socket.IO CONNECT and its acknowledgement.
//! * **Idle memory**: opens connections up to each level (e.g. 1k, then
//!   10k), lets them sit idle, and reads the server's RSS; the figure is RSS
//!   growth per connection. Idle clients behave as real ones do: WebSocket
//!   clients answer the gateway's pings, PeerJS clients send the PeerJS
//!   library's `HEARTBEAT` every 5 s, socket.io clients answer Engine.IO
//!   pings, WebTransport sessions answer QUIC keep-alives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::client::{Conn, Target};
use crate::http::HttpClient;
use crate::procfs::{CpuMeter, rss_kib};
use crate::summary::{nanos, summarize};
use crate::wire::{self, PING, PayloadMaker, System};
use crate::{Common, IO_TIMEOUT, open_named, run_workers};

/// Parameters of the set-up scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SetupParams {
    /// Connections to set up.
    pub connections: usize,
    /// Set-ups in progress at once.
    pub concurrency: usize,
    /// Connections set up (the same way) before the measured ones.
    pub warmup_connections: usize,
}

/// Parameters of the idle-memory scenario.
#[derive(Debug, Clone, Serialize)]
pub struct IdleParams {
    /// Connection counts at which RSS is read, ascending.
    pub levels: Vec<usize>,
    /// Seconds to let the connections sit idle before reading RSS.
    pub settle_s: f64,
    /// Seconds between PeerJS `HEARTBEAT`s (the PeerJS client's default is 5).
    pub heartbeat_s: f64,
}

/// Step timings of one set-up, in nanoseconds.
struct Timing {
    identity: u64,
    connect: u64,
    first_envelope: u64,
}

/// Runs the set-up scenario and returns its JSON result.
pub async fn setup(
    common: &Common,
    target: Arc<Target>,
    meter: &CpuMeter,
    params: SetupParams,
) -> anyhow::Result<serde_json::Value> {
    // Warm-up: the same sequence, unmeasured, so that neither server is
    // judged on its first connections (a JIT compiling, caches filling).
    let warm = params.warmup_connections;
    let (warm_conns, _) = set_up_batch(&target, common, 0..warm, params.concurrency).await?;
    let cpu0 = meter.sample()?;
    let started = Instant::now();
    let (held, timings) = set_up_batch(
        &target,
        common,
        warm..warm + params.connections,
        params.concurrency,
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = meter.sample()?;
    let cpu = meter.window(&cpu0, &cpu1);
    let rss = rss_kib(common.server_pid)?;
    let step = |f: fn(&Timing) -> u64| summarize(&timings.iter().map(f).collect::<Vec<_>>());
    let result = json!({
        "params": params,
        "connections": held.len(),
        "wall_s": wall,
        "connections_per_s": held.len() as f64 / wall,
        "setup": step(|t| t.identity + t.connect + t.first_envelope),
        "identity": step(|t| t.identity),
        "connect": step(|t| t.connect),
        "first_envelope": step(|t| t.first_envelope),
        // What follows the identity, apart from how it was obtained.
        "connect_and_first_envelope": step(|t| t.connect + t.first_envelope),
        "server_cpu_us_per_connection": cpu.server_cpu_s * 1e6 / held.len().max(1) as f64,
        "server_rss_kib": rss,
        "cpu": cpu,
    });
    close_all(held.into_iter().chain(warm_conns).collect()).await;
    Ok(result)
}

/// Sets up the connections numbered `range`, `concurrency` at a time.
async fn set_up_batch(
    target: &Target,
    common: &Common,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<(Vec<Conn>, Vec<Timing>)> {
    let maker = PayloadMaker::new(200);
    let done = run_workers(target, range, None, concurrency, async |http, i| {
        set_up_one(target, &common.name_prefix, http, i, &maker)
            .await
            .with_context(|| format!("setting up connection {i}"))
    })
    .await?;
    Ok(done.into_iter().unzip())
}

/// Identity, connection, first envelope, and one envelope to itself.
async fn set_up_one(
    target: &Target,
    prefix: &str,
    http: &mut HttpClient,
    i: usize,
    maker: &PayloadMaker,
) -> anyhow::Result<(Conn, Timing)> {
    let t0 = Instant::now();
    // PeerJS clients usually ask the server for an id; gateway and socket.io
    // users pick a name.
    let wanted = (target.system != System::Peerjs).then(|| format!("{prefix}s{i}"));
    let (name, token) = target.identity(http, wanted.as_deref(), i as u64).await?;
    let t1 = Instant::now();
    let mut conn = target.connect(&name, &token).await?;
    let t2 = Instant::now();
    let mut out = vec![wire::envelope(
        target.system,
        &name,
        PING,
        &maker.make(i as u64, 0, 0),
    )];
    let mut inbox: Vec<Bytes> = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, async {
        conn.send(&mut out).await?;
        loop {
            if !conn.recv_batch(&mut inbox).await? {
                bail!("closed before the first envelope came back");
            }
            if inbox
                .iter()
                .any(|f| wire::parse(f).is_some_and(|e| e.kind == PING.as_bytes()))
            {
                return Ok(());
            }
            inbox.clear();
        }
    })
    .await
    .context("first envelope timed out")??;
    let t3 = Instant::now();
    Ok((
        conn,
        Timing {
            identity: nanos(t1 - t0),
            connect: nanos(t2 - t1),
            first_envelope: nanos(t3 - t2),
        },
    ))
}

/// Closes many connections at once, bounded in time.
async fn close_all(conns: Vec<Conn>) {
    let mut closing = JoinSet::new();
    for conn in conns {
        closing.spawn(conn.close());
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while closing.join_next().await.is_some() {}
    })
    .await;
}

/// Runs the idle-memory scenario and returns its JSON result.
pub async fn idle(
    common: &Common,
    target: Arc<Target>,
    meter: &CpuMeter,
    params: IdleParams,
) -> anyhow::Result<serde_json::Value> {
    let mut levels = params.levels.clone();
    levels.sort_unstable();
    levels.dedup();
    if levels.first().is_none_or(|l| *l == 0) {
        bail!("--levels needs positive connection counts");
    }
    let needed = levels.last().copied().unwrap_or(0) as u64 + 100;
    if let Some(limit) = crate::procfs::open_files_limit()
        && target.system != System::Wt
        && limit < needed
    {
        bail!("the open-file limit is {limit}; raise it to at least {needed} (ulimit -n)");
    }
    let alive = Arc::new(AtomicUsize::new(0));
    let mut keepers = JoinSet::new();
    let rss_base = rss_kib(common.server_pid)?;
    let mut previous = (0usize, rss_base);
    let mut out = Vec::new();
    let heartbeat = Duration::from_secs_f64(params.heartbeat_s.max(0.1));
    for &level in &levels {
        let started = Instant::now();
        let names: Vec<String> = (previous.0..level)
            .map(|i| format!("{}i{i}", common.name_prefix))
            .collect();
        let conns = open_named(&target, &names, common.connect_concurrency).await?;
        let setup_s = started.elapsed().as_secs_f64();
        for (k, conn) in conns.into_iter().enumerate() {
            // Spread the PeerJS heartbeats over the interval.
            let phase = heartbeat.mul_f64((k % 997) as f64 / 997.0);
            keepers.spawn(keep_idle(
                conn,
                target.system,
                heartbeat,
                phase,
                alive.clone(),
            ));
        }
        let cpu0 = meter.sample()?;
        tokio::time::sleep(Duration::from_secs_f64(params.settle_s)).await;
        let cpu1 = meter.sample()?;
        let rss = rss_kib(common.server_pid)?;
        let cpu = meter.window(&cpu0, &cpu1);
        let connected = alive.load(Ordering::Relaxed);
        out.push(json!({
            "connections": level,
            "alive": connected,
            "setup_s": setup_s,
            "setup_per_s": (level - previous.0) as f64 / setup_s,
            "rss_base_kib": rss_base,
            "rss_kib": rss,
            "rss_bytes_per_connection": (rss.saturating_sub(rss_base) * 1024) as f64 / level as f64,
            "rss_bytes_per_connection_marginal":
                (rss.saturating_sub(previous.1) * 1024) as f64 / (level - previous.0) as f64,
            "idle_server_cpu_pct": cpu.server_cpu_pct,
            "cpu": cpu,
        }));
        if connected < level {
            bail!("only {connected} of {level} idle connections are still open");
        }
        previous = (level, rss);
    }
    keepers.abort_all();
    Ok(json!({ "params": params, "levels": out }))
}

/// Holds one idle connection open the way a real client would.
async fn keep_idle(
    mut conn: Conn,
    system: System,
    heartbeat: Duration,
    phase: Duration,
    alive: Arc<AtomicUsize>,
) {
    alive.fetch_add(1, Ordering::Relaxed);
    let mut inbox: Vec<Bytes> = Vec::new();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, heartbeat);
    loop {
        tokio::select! {
            _ = ticker.tick(), if system == System::Peerjs => {
                let mut beat = vec!["{\"type\":\"HEARTBEAT\"}".to_owned()];
                if conn.send(&mut beat).await.is_err() {
                    break;
                }
            }
            received = conn.recv_batch(&mut inbox) => {
                if !matches!(received, Ok(true)) {
                    break;
                }
                inbox.clear();
            }
        }
    }
    alive.fetch_sub(1, Ordering::Relaxed);
}
