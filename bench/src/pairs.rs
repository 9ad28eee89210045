//! The two scenarios with pairs of peers: A sends pings to B, B echoes each
//! one back, A timestamps the round trip.
//!
//! * **Throughput** (closed loop): every A keeps `window` pings in flight and
//!   sends a new one for each echo, so the offered load follows what the
//!   server (or the generator) can take. Figures: relayed envelopes per
//!   second and the server's CPU time per relayed envelope.
//! * **Latency** (open loop): every A sends at a fixed rate on its own
//!   schedule, whatever the answers do, so a slow server cannot slow the
//!   generator down and hide its own delay (no coordinated omission). The
//!   RTT is timestamped at the real send; the RTT from the scheduled send
//!   time and the send lag are reported as well.
//!
//! "Relayed" counts every envelope the server forwards: a round trip is two.
//! Against a cluster (`--peer-addr`), every A is on one node and every B on
//! the other, so each envelope crosses nodes; the server's CPU is then that
//! of every process of the cluster (see [`crate::procfs`]).
//! Both scenarios warm up first and measure a window afterwards; the loops
//! stop at the end of the window (time) or after a maximum number of pings
//! (count), whichever comes first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval_at};

use crate::client::{Conn, Target};
use crate::http::HttpClient;
use crate::procfs::{CpuMeter, CpuWindow};
use crate::summary::{Summary, summarize};
use crate::wire::{self, PING, PONG, PayloadMaker, System};
use crate::{Common, open_named, server_forwarded};

/// How long the pingers get to collect their last answers after the window.
const DRAIN: Duration = Duration::from_secs(3);
/// Most RTT samples one pinger keeps (bounds the generator's memory).
const MAX_SAMPLES_PER_PINGER: usize = 2_000_000;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What every task of a run shares.
#[derive(Debug)]
struct Shared {
    phase: AtomicU8,
    /// Data envelopes received by any client (each was relayed once).
    relayed: AtomicU64,
    /// Envelopes that were neither pings, echoes nor expected control frames.
    unexpected: AtomicU64,
    /// The measured window in nanoseconds since `epoch` (end is `u64::MAX`
    /// while it lasts); a ping belongs to the window if it was sent in it.
    window_start: AtomicU64,
    window_end: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(WARMUP),
            relayed: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.ns(Instant::now())
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn in_window(&self, sent_ns: u64) -> bool {
        sent_ns >= self.window_start.load(Ordering::Relaxed)
            && sent_ns < self.window_end.load(Ordering::Relaxed)
    }
}

/// Parameters of the throughput scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputParams {
    /// Pairs of peers.
    pub pairs: usize,
    /// Pings in flight per pair.
    pub window: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Seconds before the measured window.
    pub warmup_s: f64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Most pings sent in the whole run.
    pub max_pings: u64,
    /// Both peers acknowledge what they receive as client.js does (`ACK`
    /// every 32 envelopes or every second), so the gateway keeps and frees
    /// their resume buffers.
    pub ack: bool,
}

/// Envelopes between two `ACK`s, as client.js sends them.
const ACK_EVERY: u64 = 32;
/// The longest a client.js peer waits to acknowledge what it received.
const ACK_AFTER: Duration = Duration::from_secs(1);

/// A peer's acknowledgements (`ACK` with the highest `seq` received, every
/// [`ACK_EVERY`] envelopes or [`ACK_AFTER`]); does nothing when off.
struct Acker {
    on: bool,
    seq: u64,
    unacked: u64,
    last: Instant,
}

impl Acker {
    fn new(on: bool) -> Self {
        Self {
            on,
            seq: 0,
            unacked: 0,
            last: Instant::now(),
        }
    }

    /// Notes a received frame; queues an `ACK` in `out` when one is due.
    fn received(&mut self, frame: &[u8], out: &mut Vec<String>) {
        if !self.on {
            return;
        }
        let Some(seq) = wire::number(frame, b"\"seq\":") else {
            return;
        };
        self.seq = self.seq.max(seq);
        self.unacked += 1;
        if self.unacked >= ACK_EVERY || self.last.elapsed() >= ACK_AFTER {
            out.push(format!(
                "{{\"target\":\"\",\"type\":\"ACK\",\"payload\":{{\"seq\":{}}}}}",
                self.seq
            ));
            self.unacked = 0;
            self.last = Instant::now();
        }
    }
}

/// Parameters of the latency scenario.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyParams {
    /// Pairs of peers.
    pub pairs: usize,
    /// Pings per second sent by each pair.
    pub rate: f64,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Seconds before the measured window.
    pub warmup_s: f64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Both peers acknowledge what they receive as client.js does.
    pub ack: bool,
}

/// What one pinger measured.
#[derive(Debug, Default)]
struct PingerResult {
    rtt_ns: Vec<u64>,
    rtt_scheduled_ns: Vec<u64>,
    send_lag_ns: Vec<u64>,
    sent_in_window: u64,
    answered_in_window: u64,
}

/// A measured window: server CPU, relayed counts, the gateway's own count.
struct Window {
    cpu: CpuWindow,
    relayed: u64,
    server_forwarded: Option<u64>,
}

/// Runs the throughput scenario and returns its JSON result.
pub async fn throughput(
    common: &Common,
    target: Arc<Target>,
    peer: Option<Arc<Target>>,
    meter: &CpuMeter,
    params: ThroughputParams,
) -> anyhow::Result<serde_json::Value> {
    let shared = Shared::new();
    let b_side = peer.as_ref().unwrap_or(&target);
    let (pingers, echoers) = start_pairs(common, &target, b_side, params.pairs, |conn, partner| {
        let shared = shared.clone();
        let maker = PayloadMaker::new(params.payload_bytes);
        let limit = (params.max_pings / params.pairs.max(1) as u64).max(1);
        let system = target.system;
        let window = params.window;
        let acker = Acker::new(params.ack);
        tokio::spawn(closed_loop(
            conn, partner, system, window, maker, limit, shared, acker,
        ))
    })
    .await?;
    let _echoers = echoers.spawn(&shared, target.system, params.ack);
    let nodes: Vec<&Target> = std::iter::once(&*target).chain(peer.as_deref()).collect();
    let window = measure(&nodes, meter, &shared, params.warmup_s, params.duration_s).await?;
    let results = collect(pingers).await?;
    let rtt: Vec<u64> = results
        .iter()
        .flat_map(|r| r.rtt_ns.iter().copied())
        .collect();
    let rtt = summarize(&rtt);
    Ok(json!({
        "params": params,
        "relayed": window.relayed,
        "relayed_per_s": window.relayed as f64 / window.cpu.wall_s,
        "server_cpu_us_per_relayed": per_relayed_us(&window),
        "server_cpu_us_per_relayed_by_process": per_relayed_by_process(&window),
        "server_forwarded": window.server_forwarded,
        "cpu": window.cpu,
        "rtt": rtt,
        "unexpected": shared.unexpected.load(Ordering::Relaxed),
    }))
}

/// Runs the latency scenario and returns its JSON result.
pub async fn latency(
    common: &Common,
    target: Arc<Target>,
    peer: Option<Arc<Target>>,
    meter: &CpuMeter,
    params: LatencyParams,
) -> anyhow::Result<serde_json::Value> {
    if !(params.rate > 0.0 && params.rate <= 100_000.0) {
        bail!("--rate must be in (0, 100000] pings per second per pair");
    }
    let shared = Shared::new();
    let period = Duration::from_secs_f64(1.0 / params.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ u64::from(std::process::id());
    let b_side = peer.as_ref().unwrap_or(&target);
    let (pingers, echoers) = start_pairs(common, &target, b_side, params.pairs, |conn, partner| {
        // Each pair starts at its own random phase within one period.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = period.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
        let shared = shared.clone();
        let maker = PayloadMaker::new(params.payload_bytes);
        let acker = Acker::new(params.ack);
        tokio::spawn(open_loop(
            conn,
            partner,
            target.system,
            period,
            start + offset,
            maker,
            shared,
            acker,
        ))
    })
    .await?;
    let _echoers = echoers.spawn(&shared, target.system, params.ack);
    let nodes: Vec<&Target> = std::iter::once(&*target).chain(peer.as_deref()).collect();
    let window = measure(&nodes, meter, &shared, params.warmup_s, params.duration_s).await?;
    let results = collect(pingers).await?;
    let all = |f: fn(&PingerResult) -> &Vec<u64>| -> Summary {
        let v: Vec<u64> = results.iter().flat_map(|r| f(r).iter().copied()).collect();
        summarize(&v)
    };
    let sent: u64 = results.iter().map(|r| r.sent_in_window).sum();
    let answered: u64 = results.iter().map(|r| r.answered_in_window).sum();
    Ok(json!({
        "params": params,
        "offered_relayed_per_s": 2.0 * params.pairs as f64 * params.rate,
        "relayed": window.relayed,
        "relayed_per_s": window.relayed as f64 / window.cpu.wall_s,
        "server_cpu_us_per_relayed": per_relayed_us(&window),
        "server_cpu_us_per_relayed_by_process": per_relayed_by_process(&window),
        "server_forwarded": window.server_forwarded,
        "cpu": window.cpu,
        "rtt": all(|r| &r.rtt_ns),
        "rtt_from_schedule": all(|r| &r.rtt_scheduled_ns),
        "send_lag": all(|r| &r.send_lag_ns),
        "pings_in_window": sent,
        "lost_in_window": sent.saturating_sub(answered),
        "unexpected": shared.unexpected.load(Ordering::Relaxed),
    }))
}

fn per_relayed_us(window: &Window) -> Option<f64> {
    (window.relayed > 0).then(|| window.cpu.server_cpu_s * 1e6 / window.relayed as f64)
}

/// Each server process's share of [`per_relayed_us`], by name.
fn per_relayed_by_process(window: &Window) -> serde_json::Map<String, serde_json::Value> {
    window
        .cpu
        .processes
        .iter()
        .map(|p| {
            let us = (window.relayed > 0).then(|| p.cpu_s * 1e6 / window.relayed as f64);
            (p.name.clone(), json!(us))
        })
        .collect()
}

/// The B side of every pair, connected and waiting to be started.
struct Echoers(Vec<(Conn, String)>);

impl Echoers {
    fn spawn(self, shared: &Arc<Shared>, system: System, ack: bool) -> AbortOnDrop {
        AbortOnDrop(
            self.0
                .into_iter()
                .map(|(conn, partner)| {
                    tokio::spawn(echo(conn, partner, system, shared.clone(), Acker::new(ack)))
                })
                .collect(),
        )
    }
}

/// Aborts the echo tasks when the scenario ends, however it ends.
struct AbortOnDrop(Vec<JoinHandle<anyhow::Result<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Connects `pairs` pairs (A = `a<i>` to `target`, B = `b<i>` to `b_side`,
/// the same server or another node of its cluster) and starts each A with
/// `spawn_pinger`; returns the pingers and the not yet started echoers.
async fn start_pairs(
    common: &Common,
    target: &Arc<Target>,
    b_side: &Arc<Target>,
    pairs: usize,
    mut spawn_pinger: impl FnMut(Conn, String) -> JoinHandle<anyhow::Result<PingerResult>>,
) -> anyhow::Result<(Vec<JoinHandle<anyhow::Result<PingerResult>>>, Echoers)> {
    if pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let prefix = &common.name_prefix;
    let a_names: Vec<String> = (0..pairs).map(|i| format!("{prefix}a{i}")).collect();
    let b_names: Vec<String> = (0..pairs).map(|i| format!("{prefix}b{i}")).collect();
    let a_conns = open_named(target, &a_names, common.connect_concurrency).await?;
    let b_conns = open_named(b_side, &b_names, common.connect_concurrency).await?;
    let mut pingers = Vec::with_capacity(pairs);
    let mut echoers = Vec::with_capacity(pairs);
    let mut conns = a_conns.into_iter().zip(b_conns);
    for i in 0..pairs {
        let Some((a, b)) = conns.next() else {
            bail!("missing connections");
        };
        echoers.push((b, format!("{prefix}a{i}")));
        pingers.push(spawn_pinger(a, format!("{prefix}b{i}")));
    }
    Ok((pingers, Echoers(echoers)))
}

/// Warm-up, then the measured window; sets the phases the tasks follow.
/// The gateway's own count is summed over `nodes` (one, or a cluster's two).
async fn measure(
    nodes: &[&Target],
    meter: &CpuMeter,
    shared: &Shared,
    warmup_s: f64,
    duration_s: f64,
) -> anyhow::Result<Window> {
    let mut stats: Option<Vec<HttpClient>> = nodes
        .iter()
        .all(|t| t.system.is_gateway())
        .then(|| nodes.iter().map(|t| t.http_client()).collect());
    tokio::time::sleep(Duration::from_secs_f64(warmup_s)).await;
    let forwarded0 = match stats.as_mut() {
        Some(http) => Some(forwarded_on(http).await?),
        None => None,
    };
    let relayed0 = shared.relayed.load(Ordering::Relaxed);
    let cpu0 = meter.sample()?;
    shared
        .window_start
        .store(shared.now_ns(), Ordering::Relaxed);
    shared.phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(duration_s)).await;
    shared.window_end.store(shared.now_ns(), Ordering::Relaxed);
    let cpu1 = meter.sample()?;
    let relayed1 = shared.relayed.load(Ordering::Relaxed);
    shared.phase.store(STOP, Ordering::Relaxed);
    let forwarded1 = match stats.as_mut() {
        Some(http) => Some(forwarded_on(http).await?),
        None => None,
    };
    Ok(Window {
        cpu: meter.window(&cpu0, &cpu1),
        relayed: relayed1 - relayed0,
        server_forwarded: forwarded0.zip(forwarded1).map(|(a, b)| b - a),
    })
}

/// The gateway's count of forwarded envelopes, summed over its nodes.
async fn forwarded_on(nodes: &mut [HttpClient]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for http in nodes {
        sum += server_forwarded(http).await?;
    }
    Ok(sum)
}

/// Waits (bounded) for every pinger to finish.
async fn collect(
    pingers: Vec<JoinHandle<anyhow::Result<PingerResult>>>,
) -> anyhow::Result<Vec<PingerResult>> {
    let deadline = tokio::time::Instant::now() + DRAIN + Duration::from_secs(2);
    let mut results = Vec::with_capacity(pingers.len());
    for pinger in pingers {
        let abort = pinger.abort_handle();
        match tokio::time::timeout_at(deadline, pinger).await {
            Ok(joined) => results.push(joined.context("pinger task")??),
            Err(_) => {
                abort.abort();
                bail!("a pinger did not finish in time");
            }
        }
    }
    Ok(results)
}

/// B: echoes every ping back to its partner with the same payload.
async fn echo(
    mut conn: Conn,
    partner: String,
    system: System,
    shared: Arc<Shared>,
    mut acker: Acker,
) -> anyhow::Result<()> {
    let mut inbox: Vec<Bytes> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    loop {
        inbox.clear();
        if !conn.recv_batch(&mut inbox).await? {
            return Ok(());
        }
        let mut pings = 0;
        for frame in &inbox {
            acker.received(frame, &mut out);
            match wire::parse(frame) {
                Some(envelope) if envelope.kind == PING.as_bytes() => {
                    let payload = std::str::from_utf8(envelope.payload)?;
                    out.push(wire::envelope(system, &partner, PONG, payload));
                    pings += 1;
                }
                _ => {
                    shared.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        shared.relayed.fetch_add(pings, Ordering::Relaxed);
        if !out.is_empty() {
            conn.send(&mut out).await?;
        }
    }
}

/// A in closed loop: `window` pings in flight, a new one per echo.
#[expect(clippy::too_many_arguments, reason = "one pinger's whole set-up")]
async fn closed_loop(
    mut conn: Conn,
    partner: String,
    system: System,
    window: usize,
    maker: PayloadMaker,
    limit: u64,
    shared: Arc<Shared>,
    mut acker: Acker,
) -> anyhow::Result<PingerResult> {
    let mut result = PingerResult::default();
    let mut inbox: Vec<Bytes> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut seq = 0u64;
    let mut outstanding = 0usize;
    let ping = |seq: u64, shared: &Shared| {
        let now = shared.now_ns();
        wire::envelope(system, &partner, PING, &maker.make(seq, now, now))
    };
    while seq < window as u64 && seq < limit {
        out.push(ping(seq, &shared));
        seq += 1;
        outstanding += 1;
    }
    conn.send(&mut out).await?;
    let mut drain_until = None;
    while outstanding > 0 {
        inbox.clear();
        let received = match drain_until {
            None => conn.recv_batch(&mut inbox).await?,
            Some(until) => tokio::time::timeout_at(until, conn.recv_batch(&mut inbox))
                .await
                .context("echoes missing after the window")??,
        };
        if !received {
            bail!("connection closed by the server");
        }
        let phase = shared.phase.load(Ordering::Relaxed);
        let now = shared.now_ns();
        let mut echoes = 0;
        for frame in &inbox {
            acker.received(frame, &mut out);
            let echo = wire::parse(frame).filter(|e| e.kind == PONG.as_bytes());
            let Some(echo) = echo else {
                shared.unexpected.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            echoes += 1;
            outstanding -= 1;
            if phase == MEASURE
                && result.rtt_ns.len() < MAX_SAMPLES_PER_PINGER
                && let Some(sent) = wire::number(echo.payload, b"\"t\":")
            {
                result.rtt_ns.push(now.saturating_sub(sent));
            }
            if phase != STOP && seq < limit {
                out.push(ping(seq, &shared));
                seq += 1;
                outstanding += 1;
            }
        }
        shared.relayed.fetch_add(echoes, Ordering::Relaxed);
        if phase == STOP && drain_until.is_none() {
            drain_until = Some(tokio::time::Instant::now() + DRAIN);
        }
        if !out.is_empty() {
            conn.send(&mut out).await?;
        }
    }
    conn.close().await;
    Ok(result)
}

/// A in open loop: one ping every `period` from `first`, whatever the echoes do.
#[expect(clippy::too_many_arguments, reason = "one pinger's whole set-up")]
async fn open_loop(
    mut conn: Conn,
    partner: String,
    system: System,
    period: Duration,
    first: Instant,
    maker: PayloadMaker,
    shared: Arc<Shared>,
    mut acker: Acker,
) -> anyhow::Result<PingerResult> {
    let mut result = PingerResult::default();
    let mut inbox: Vec<Bytes> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut ticker = interval_at(first.into(), period);
    // Late ticks fire at once, to keep the schedule (open loop).
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut seq = 0u64;
    let mut outstanding = 0u64;
    let mut sending = true;
    let mut drain_until = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        tokio::select! {
            scheduled = ticker.tick(), if sending => {
                if shared.phase.load(Ordering::Relaxed) == STOP {
                    sending = false;
                    drain_until = tokio::time::Instant::now() + DRAIN;
                    continue;
                }
                let now = Instant::now();
                let sent = shared.ns(now);
                let intended = shared.ns(scheduled.into_std());
                if shared.in_window(sent) {
                    result.sent_in_window += 1;
                    result.send_lag_ns.push(sent.saturating_sub(intended));
                }
                out.push(wire::envelope(system, &partner, PING, &maker.make(seq, sent, intended)));
                seq += 1;
                outstanding += 1;
                conn.send(&mut out).await?;
            }
            received = conn.recv_batch(&mut inbox) => {
                if !received? {
                    bail!("connection closed by the server");
                }
            }
            () = tokio::time::sleep_until(drain_until), if !sending => {
                break;
            }
        }
        if inbox.is_empty() {
            continue;
        }
        let now = shared.now_ns();
        let mut echoes = 0;
        for frame in &inbox {
            acker.received(frame, &mut out);
            let echo = wire::parse(frame).filter(|e| e.kind == PONG.as_bytes());
            let Some(echo) = echo else {
                shared.unexpected.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            echoes += 1;
            outstanding = outstanding.saturating_sub(1);
            let sent = wire::number(echo.payload, b"\"t\":").unwrap_or(0);
            if shared.in_window(sent) && result.rtt_ns.len() < MAX_SAMPLES_PER_PINGER {
                let intended = wire::number(echo.payload, b"\"i\":").unwrap_or(sent);
                result.answered_in_window += 1;
                result.rtt_ns.push(now.saturating_sub(sent));
                result.rtt_scheduled_ns.push(now.saturating_sub(intended));
            }
        }
        inbox.clear();
        shared.relayed.fetch_add(echoes, Ordering::Relaxed);
        if !out.is_empty() {
            conn.send(&mut out).await?;
        }
        if !sending && outstanding == 0 {
            break;
        }
    }
    conn.close().await;
    Ok(result)
}
