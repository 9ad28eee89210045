//! The room scenario: rooms of members, every member sending to its room at
//! a fixed rate (open loop), every other member receiving each envelope.
//! Server CPU per delivered envelope (one member's copy) and the delivery
//! latency from the send to each member's receipt (one clock: the
//! generator's), against socket.io's own rooms (`socket.join(room)`,
//! `socket.to(room).emit(…)`) in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval_at};

use crate::client::{Conn, Target};
use crate::procfs::CpuMeter;
use crate::socketio;
use crate::summary::{Summary, summarize};
use crate::wire::{self, PayloadMaker, System};
use crate::{Common, IO_TIMEOUT, open_named};

/// The `type` of the room envelopes.
const KIND: &str = "ROOM";
/// Time the members get to receive the last envelopes after the window.
const DRAIN: Duration = Duration::from_secs(2);
/// Most latency samples one member keeps.
const MAX_SAMPLES: usize = 1_000_000;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Parameters of the room scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RoomParams {
    /// Rooms.
    pub rooms: usize,
    /// Members per room.
    pub members: usize,
    /// Envelopes per second each member sends to its room.
    pub rate: f64,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Seconds before the measured window.
    pub warmup_s: f64,
    /// Seconds measured.
    pub duration_s: f64,
}

#[derive(Debug)]
struct Shared {
    phase: AtomicU8,
    /// Room envelopes received by members in the window.
    delivered: AtomicU64,
    window_start: AtomicU64,
    window_end: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start.load(Ordering::Relaxed)
            && ns < self.window_end.load(Ordering::Relaxed)
    }
}

/// What one member saw.
#[derive(Debug, Default)]
struct MemberResult {
    sent_in_window: u64,
    latency_ns: Vec<u64>,
}

/// A room envelope (or a `JOIN`) as `system` takes it.
fn room_envelope(system: System, room: &str, payload: &str) -> String {
    let object = format!("{{\"room\":\"{room}\",\"type\":\"{KIND}\",\"payload\":{payload}}}");
    match system {
        System::Socketio => format!("{}{object}{}", socketio::EVENT_HEAD, socketio::EVENT_TAIL),
        _ => object,
    }
}

/// Joins `room` and waits for the `JOINED` answer.
async fn join(conn: &mut Conn, system: System, room: &str) -> anyhow::Result<()> {
    let mut out = vec![wire::envelope(
        system,
        "",
        "JOIN",
        &format!("{{\"room\":\"{room}\"}}"),
    )];
    conn.send(&mut out).await?;
    let mut inbox = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            if !conn.recv_batch(&mut inbox).await? {
                bail!("closed while joining {room}");
            }
            if inbox
                .drain(..)
                .any(|frame| wire::parse(&frame).is_some_and(|e| e.kind == b"JOINED"))
            {
                return Ok(());
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no JOINED for {room}"))?
}

/// Runs the room scenario and returns its JSON result.
pub async fn run(
    common: &Common,
    target: Arc<Target>,
    meter: &CpuMeter,
    params: RoomParams,
) -> anyhow::Result<serde_json::Value> {
    if params.rooms == 0 || params.members < 2 {
        bail!("--rooms must be at least 1 and --members at least 2");
    }
    if !(params.rate > 0.0 && params.rate <= 10_000.0) {
        bail!("--rate must be in (0, 10000] envelopes per second per member");
    }
    let system = target.system;
    let prefix = &common.name_prefix;
    let names: Vec<String> = (0..params.rooms * params.members)
        .map(|i| format!("{prefix}r{}m{}", i / params.members, i % params.members))
        .collect();
    let mut conns = open_named(&target, &names, common.connect_concurrency).await?;
    for (i, conn) in conns.iter_mut().enumerate() {
        join(conn, system, &format!("{prefix}room{}", i / params.members)).await?;
    }
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        delivered: AtomicU64::new(0),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        epoch: Instant::now(),
    });
    let period = Duration::from_secs_f64(1.0 / params.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ u64::from(std::process::id());
    let members: Vec<JoinHandle<anyhow::Result<MemberResult>>> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let offset = period.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
            tokio::spawn(member(
                conn,
                system,
                format!("{prefix}room{}", i / params.members),
                period,
                start + offset,
                PayloadMaker::new(params.payload_bytes),
                shared.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(params.warmup_s)).await;
    let delivered0 = shared.delivered.load(Ordering::Relaxed);
    let cpu0 = meter.sample()?;
    shared
        .window_start
        .store(shared.ns(Instant::now()), Ordering::Relaxed);
    shared.phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(params.duration_s)).await;
    shared
        .window_end
        .store(shared.ns(Instant::now()), Ordering::Relaxed);
    let cpu1 = meter.sample()?;
    let delivered = shared.delivered.load(Ordering::Relaxed) - delivered0;
    shared.phase.store(STOP, Ordering::Relaxed);
    let cpu = meter.window(&cpu0, &cpu1);
    let deadline = tokio::time::Instant::now() + DRAIN + Duration::from_secs(2);
    let mut results = Vec::with_capacity(members.len());
    for task in members {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(joined) => results.push(joined??),
            Err(_) => {
                abort.abort();
                bail!("a member did not finish in time");
            }
        }
    }
    let latencies: Vec<u64> = results
        .iter()
        .flat_map(|r| r.latency_ns.iter().copied())
        .collect();
    let latency: Summary = summarize(&latencies);
    let sent: u64 = results.iter().map(|r| r.sent_in_window).sum();
    let expected = sent * (params.members as u64 - 1);
    Ok(json!({
        "params": params,
        "offered_delivered_per_s":
            (params.rooms * params.members * (params.members - 1)) as f64 * params.rate,
        "delivered": delivered,
        "delivered_per_s": delivered as f64 / cpu.wall_s,
        "server_cpu_us_per_delivered":
            (delivered > 0).then(|| cpu.server_cpu_s * 1e6 / delivered as f64),
        "cpu": cpu,
        "latency": latency,
        "sent_in_window": sent,
        "missing_in_window": expected.saturating_sub(latency.count),
    }))
}

/// One member: sends to its room on schedule and times what it receives.
async fn member(
    mut conn: Conn,
    system: System,
    room: String,
    period: Duration,
    first: Instant,
    maker: PayloadMaker,
    shared: Arc<Shared>,
) -> anyhow::Result<MemberResult> {
    let mut result = MemberResult::default();
    let mut inbox: Vec<Bytes> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut ticker = interval_at(first.into(), period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut seq = 0u64;
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
                let sent = shared.ns(Instant::now());
                if shared.in_window(sent) {
                    result.sent_in_window += 1;
                }
                let intended = shared.ns(scheduled.into_std());
                out.push(room_envelope(system, &room, &maker.make(seq, sent, intended)));
                seq += 1;
                conn.send(&mut out).await?;
            }
            received = conn.recv_batch(&mut inbox) => {
                if !received? {
                    bail!("connection closed by the server");
                }
            }
            () = tokio::time::sleep_until(drain_until), if !sending => break,
        }
        if inbox.is_empty() {
            continue;
        }
        let now = shared.ns(Instant::now());
        for frame in inbox.drain(..) {
            let Some(envelope) = wire::parse(&frame).filter(|e| e.kind == KIND.as_bytes()) else {
                continue;
            };
            let Some(sent) = wire::number(envelope.payload, b"\"t\":") else {
                continue;
            };
            if shared.in_window(sent) {
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if result.latency_ns.len() < MAX_SAMPLES {
                    result.latency_ns.push(now.saturating_sub(sent));
                }
            }
        }
    }
    conn.close().await;
    Ok(result)
}
