//! Soak: thousands of clients over both transports for a bounded time, with
//! connection churn, replacements, admin kicks, malformed input and blinks
//! mixed in: a WebSocket client now and then loses its connection without
//! a close and comes back with `resume=N`, as the README's client does.
//! Ignored by `cargo test`; run it with `scripts/soak` (or
//! `cargo test --release --test soak -- --ignored --nocapture`).
//!
//! Settings (environment): `SOAK_LOGS` (a directory to write each
//! process's log and final `/v1/stats` to), `SOAK_SECONDS` (default 120), `SOAK_CLIENTS`
//! (default 2000, half WebSocket, half WebTransport), `SOAK_KICK_EVERY`
//! (seconds between admin kicks, default 30), `SOAK_CLUSTER` (nodes: 0,
//! the default, runs one gateway; 2 or more run that many nodes on one real
//! redis-server, clients spread over them, and one node SIGKILLed a third of
//! the way through and started again on its port a few seconds later).
//! In a cluster, `SOAK_MOVE_PERCENT` of the blinks (default 50) come back
//! on another node, over either transport, with `resume=N`: the user's
//! stream must follow it there.
//! `SOAK_FAILOVER=1` with a cluster puts the nodes on a Redis primary, a
//! replica and three Sentinels instead, and SIGKILLs the primary half way
//! through (Sentinel promotes the replica; the old primary is started
//! again and demoted): the same checks hold across the failover.
//!
//! In a cluster the killed process's counters die with it, so the checks
//! are made per process that lived to the end (the restarted one included),
//! and on the clients' side: every envelope a client sent was read by its
//! target or answered with an error, or went through the killed process
//! (its fate unknown, counted apart). An envelope both read and answered
//! is allowed only when the answer was `UNCONFIRMED`, which says exactly
//! that it may have arrived.
//!
//! At the end it checks: the gateway's books balance (every frame has one
//! outcome; every forwarded envelope was written or reported undelivered);
//! no envelope reached a client twice or both arrived and came back as an
//! error; every envelope the gateway says it wrote was read by a client;
//! nobody is left in the registry; memory is back near its baseline; and the
//! gateway logged no error or warning.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::{RedisServer, SentinelGroup};
use common::{Addrs, GatewayProcess, Kind, get_json_at, register_at};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What happened to each envelope a client sent, keyed by its id.
#[derive(Default)]
struct Ledger {
    outcomes: Mutex<HashMap<u64, Outcome>>,
    counters: HashMap<&'static str, AtomicU64>,
    /// Envelopes read by clients, by the gateway process they read them
    /// from (its index in [`Fleet::processes`]).
    delivered_from: Mutex<HashMap<usize, u64>>,
    /// Error answers read by clients, by the process that sent them.
    errored_from: Mutex<HashMap<usize, u64>>,
    /// Connects to another process than the user's previous connection
    /// was on, by that previous process: the most hand-offs it can make.
    crossed_from: Mutex<HashMap<usize, u64>>,
    /// `resumed: true` read after a blink on another process, by the
    /// process the user blinked on: each took a hand-off from it.
    moved_resumed_from: Mutex<HashMap<usize, u64>>,
    /// Envelopes replayed on those resumes (`WELCOME`'s `replayed`), by
    /// the same process: some it wrote, and the client reads elsewhere.
    replayed_from: Mutex<HashMap<usize, u64>>,
}

#[derive(Default, Clone, Copy)]
struct Outcome {
    delivered: u8,
    errored: u8,
    /// Of the errors, `UNCONFIRMED` answers: the envelope may have arrived.
    unconfirmed: u8,
    /// The process the sender sent it through.
    process: usize,
    /// Sent on a connection that then blinked: the gateway may never have
    /// read it (a socket closed with unread data is reset, and what it had
    /// not sent yet is lost with it).
    blinked: bool,
}

const COUNTERS: &[&str] = &[
    "sent",
    "malformed_sent",
    "invalid_replies",
    "delivered",
    "errors",
    "unconfirmed",
    "connects",
    "connect_failures",
    "replacements",
    "client_closes",
    "closed_REPLACED",
    "closed_KICKED",
    "closed_other",
    "blinks",
    "resumed",
    "not_resumed",
    "replayed",
    "seen_again",
    "moved_blinks",
    "moved_resumes",
    "moved_resumes_wt",
    "moved_resumed",
    "moved_not_resumed",
];

impl Ledger {
    fn new() -> Self {
        Self {
            outcomes: Mutex::default(),
            counters: COUNTERS
                .iter()
                .map(|name| (*name, AtomicU64::new(0)))
                .collect(),
            delivered_from: Mutex::default(),
            errored_from: Mutex::default(),
            crossed_from: Mutex::default(),
            moved_resumed_from: Mutex::default(),
            replayed_from: Mutex::default(),
        }
    }

    fn count(&self, name: &str) {
        self.counters[name].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, name: &str) -> u64 {
        self.counters[name].load(Ordering::Relaxed)
    }

    fn count_at(map: &Mutex<HashMap<usize, u64>>, process: usize) {
        *map.lock().unwrap().entry(process).or_default() += 1;
    }

    /// Notes a sent envelope (its outcome may already have been recorded
    /// by the reader, which can be faster than this call).
    fn sent(&self, id: u64, process: usize) {
        self.count("sent");
        self.outcomes.lock().unwrap().entry(id).or_default().process = process;
    }

    /// Marks envelopes sent on a connection that blinked.
    fn blinked(&self, ids: &[u64]) {
        let mut outcomes = self.outcomes.lock().unwrap();
        for id in ids {
            outcomes.entry(*id).or_default().blinked = true;
        }
    }

    fn record(&self, id: u64, delivered: bool, unconfirmed: bool) {
        let mut outcomes = self.outcomes.lock().unwrap();
        let outcome = outcomes.entry(id).or_default();
        if delivered {
            outcome.delivered += 1;
        } else {
            outcome.errored += 1;
            outcome.unconfirmed += u8::from(unconfirmed);
        }
    }
}

/// Where a connection goes and what it asks for.
#[derive(Clone, Copy)]
struct Link {
    /// The gateway process (its index in [`Fleet::processes`]).
    process: usize,
    /// It asks to resume (`resume=N`).
    resuming: bool,
    /// It resumes after a blink on this other process: a cross-node resume.
    moved_from: Option<usize>,
}

/// Reads one envelope stream to its end, recording outcomes; returns the
/// close reason announced by the gateway, if any.
fn handle_envelope(ledger: &Ledger, link: Link, v: &Value, last_seq: &AtomicU64) -> Option<String> {
    let process = link.process;
    let kind = v["type"].as_str().unwrap_or_default();
    // As the README's client: an envelope is processed once, by its seq;
    // a connection that was not resumed may number from 1 again.
    if kind == "WELCOME" && v["payload"]["resumed"] != true {
        last_seq.store(0, Ordering::Relaxed);
    }
    if let Some(seq) = v["seq"].as_u64() {
        if seq <= last_seq.load(Ordering::Relaxed) {
            ledger.count("seen_again");
            return None;
        }
        last_seq.store(seq, Ordering::Relaxed);
    }
    let id_of = |s: &str| s.strip_prefix('m').and_then(|n| n.parse::<u64>().ok());
    if v["originator"] != "" {
        if let Some(id) = id_of(kind) {
            ledger.count("delivered");
            Ledger::count_at(&ledger.delivered_from, process);
            ledger.record(id, true, false);
        }
        return None;
    }
    match kind {
        "WELCOME" => {
            let resumed = v["payload"]["resumed"] == true;
            if resumed {
                ledger.count("resumed");
                let replayed = v["payload"]["replayed"].as_u64().unwrap_or(0);
                ledger.counters["replayed"].fetch_add(replayed, Ordering::Relaxed);
            } else if link.resuming {
                ledger.count("not_resumed");
            }
            if let Some(from) = link.moved_from.filter(|_| link.resuming) {
                if resumed {
                    ledger.count("moved_resumed");
                    Ledger::count_at(&ledger.moved_resumed_from, from);
                    *ledger
                        .replayed_from
                        .lock()
                        .unwrap()
                        .entry(from)
                        .or_default() += v["payload"]["replayed"].as_u64().unwrap_or(0);
                } else {
                    ledger.count("moved_not_resumed");
                }
            }
            None
        }
        "CLOSE" => Some(
            v["payload"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        "INVALID_MESSAGE" => {
            ledger.count("invalid_replies");
            None
        }
        _ => {
            if let Some(id) = v["payload"]["type"].as_str().and_then(id_of) {
                ledger.count("errors");
                Ledger::count_at(&ledger.errored_from, process);
                if kind == "UNCONFIRMED" {
                    ledger.count("unconfirmed");
                }
                ledger.record(id, false, kind == "UNCONFIRMED");
            }
            None
        }
    }
}

enum Writer {
    Ws(futures::stream::SplitSink<common::WsStream, Message>),
    Wt(wtransport::SendStream),
}

impl Writer {
    async fn send(&mut self, text: String) -> bool {
        match self {
            Writer::Ws(sink) => sink.send(Message::text(text)).await.is_ok(),
            Writer::Wt(send) => send.write_all(format!("{text}\n").as_bytes()).await.is_ok(),
        }
    }

    /// Closes the sending side, within 5 s: a stream to a killed process
    /// is never acknowledged.
    async fn close(&mut self) {
        let close = async {
            match self {
                Writer::Ws(sink) => {
                    let _ = sink.send(Message::Close(None)).await;
                }
                Writer::Wt(send) => {
                    let _ = send.finish().await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    }
}

/// Runs a connect in a task of its own: the harness panics on a connect
/// that hangs (a killed node's UDP port answers nothing), and in a task of
/// its own that is a failed connect (`None`), as is an error.
async fn connect_in_task<T, E>(
    transport: &str,
    connect: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Option<T>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::spawn(connect).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(err)) => {
            eprintln!("{transport} connect failed: {err}");
            None
        }
        Err(_) => None,
    }
}

/// Opens a connection and starts its reader; the reader ends when the
/// gateway closes the connection and yields the announced close reason.
async fn open(
    addrs: &Addrs,
    link: Link,
    kind: Kind,
    token: &str,
    ledger: Arc<Ledger>,
    last_seq: Arc<AtomicU64>,
) -> Option<(
    Writer,
    tokio::task::JoinHandle<Option<String>>,
    Option<wtransport::Connection>,
)> {
    // `last_seq` is this connection's own: what it processed, from where
    // it resumes (0: it does not).
    let query = match last_seq.load(Ordering::Relaxed) {
        0 => format!("?token={token}"),
        last => format!("?token={token}&resume={last}"),
    };
    let link = Link {
        resuming: last_seq.load(Ordering::Relaxed) > 0,
        ..link
    };
    let addrs = addrs.clone();
    match kind {
        Kind::WebSocket => {
            let ws = connect_in_task("ws", async move {
                common::ws_connect(&addrs, &query, &[]).await
            })
            .await?;
            let (sink, mut stream) = ws.split();
            let reader = tokio::spawn(async move {
                let mut reason = None;
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = message
                        && let Ok(v) = serde_json::from_str::<Value>(&text)
                    {
                        reason = handle_envelope(&ledger, link, &v, &last_seq).or(reason);
                    }
                }
                reason
            });
            Some((Writer::Ws(sink), reader, None))
        }
        Kind::WebTransport => {
            let client = connect_in_task("wt", async move {
                common::wt_connect(&addrs, &query, &[]).await
            })
            .await?;
            let mut recv = client.recv;
            let reader = tokio::spawn(async move {
                let mut reason = None;
                let mut line = String::new();
                loop {
                    line.clear();
                    match recv.read_line(&mut line).await {
                        Ok(0) | Err(_) => return reason,
                        Ok(_) => {
                            if let Ok(v) = serde_json::from_str::<Value>(line.trim_end()) {
                                reason = handle_envelope(&ledger, link, &v, &last_seq).or(reason);
                            }
                        }
                    }
                }
            });
            Some((Writer::Wt(client.send), reader, Some(client.conn)))
        }
    }
}

async fn note_close(ledger: &Ledger, reader: tokio::task::JoinHandle<Option<String>>) {
    let reason = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    match reason.as_deref() {
        Some("REPLACED") => ledger.count("closed_REPLACED"),
        Some("KICKED") => ledger.count("closed_KICKED"),
        _ => ledger.count("closed_other"),
    }
}

/// For each node, the process serving it now (its index in
/// [`Fleet::processes`]) and where it is; `None` while it is down.
type Live = Arc<std::sync::RwLock<Vec<Option<(usize, Addrs)>>>>;

/// Node `preferred`, or the next one that is up: its index, its process
/// and where it is.
fn pick(live: &Live, preferred: usize) -> Option<(usize, usize, Addrs)> {
    let live = live.read().unwrap();
    (0..live.len()).find_map(|i| {
        let node = (preferred + i) % live.len();
        live[node]
            .clone()
            .map(|(process, addrs)| (node, process, addrs))
    })
}

/// One simulated user: connects, sends to random peers at random
/// intervals, sometimes garbage, and churns (clean close or replacement)
/// until the deadline. It prefers its home node and moves to the next one
/// up when a connect fails. In a cluster, half of its blinks take it to
/// another node (its new home), on either transport: its stream must
/// follow it there.
async fn user(
    index: u64,
    kind: Kind,
    live: Live,
    clients: u64,
    deadline: Instant,
    ledger: Arc<Ledger>,
) {
    let move_share = env_u64("SOAK_MOVE_PERCENT", 50).min(100) as f64 / 100.0;
    // Both transports on every node: users 0 and 1 on node 0, 2 and 3 on 1...
    let mut home = (index / 2) as usize;
    let (_, _, addrs) = pick(&live, home).expect("a node is up at the start");
    let token = register_at(&addrs, &format!("s{index}")).await;
    let mut preferred = home;
    let mut seq = 0u64;
    // The highest seq processed before a blink, to resume from.
    let mut resume_from = 0;
    // The process the user's last connection was on, and the one it
    // blinked on if it did.
    let mut previous: Option<usize> = None;
    let mut blinked_on: Option<usize> = None;
    // The transport of the next connection (a cross-node resume may
    // change it, for that connection).
    let mut next_kind = kind;
    while Instant::now() < deadline {
        let Some((node, process, addrs)) = pick(&live, preferred) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let conn_kind = std::mem::replace(&mut next_kind, kind);
        let moved_from = blinked_on.take().filter(|&from| from != process);
        if let Some(from) = previous.filter(|&from| from != process) {
            Ledger::count_at(&ledger.crossed_from, from);
        }
        let mut last_seq = Arc::new(AtomicU64::new(std::mem::take(&mut resume_from)));
        if moved_from.is_some() && last_seq.load(Ordering::Relaxed) > 0 {
            ledger.count("moved_resumes");
            if conn_kind == Kind::WebTransport {
                ledger.count("moved_resumes_wt");
            }
        }
        let link = Link {
            process,
            resuming: false,
            moved_from,
        };
        let Some((mut writer, mut reader, mut conn)) = open(
            &addrs,
            link,
            conn_kind,
            &token,
            ledger.clone(),
            last_seq.clone(),
        )
        .await
        else {
            ledger.count("connect_failures");
            preferred += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        previous = Some(process);
        preferred = home;
        ledger.count("connects");
        let lifetime = Duration::from_millis(rand::rng().random_range(3_000..25_000));
        let until = (Instant::now() + lifetime).min(deadline);
        let mut sent_here = Vec::new();
        loop {
            let pause = Duration::from_millis(rand::rng().random_range(100..600));
            tokio::time::sleep(pause).await;
            if Instant::now() >= until || reader.is_finished() {
                break;
            }
            let roll: f64 = rand::rng().random();
            // Only what the transport took counts as sent: a write after
            // the connection closed fails and is not an envelope.
            if roll < 0.03 {
                if !writer.send("{\"target\": oops".to_owned()).await {
                    break;
                }
                ledger.count("malformed_sent");
            } else {
                let target = rand::rng().random_range(0..clients);
                let id = (index << 32) | seq;
                seq += 1;
                let envelope = json!({"target": format!("s{target}"), "type": format!("m{id}"), "payload": {"sdp": "v=0 soak"}});
                if !writer.send(envelope.to_string()).await {
                    break;
                }
                ledger.sent(id, process);
                sent_here.push(id);
            }
        }
        if reader.is_finished() {
            note_close(&ledger, reader).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if Instant::now() < deadline && rand::rng().random_bool(0.3) {
            // A second connection of the same user replaces this one.
            ledger.count("replacements");
            let new_seq = Arc::new(AtomicU64::new(0));
            let link = Link {
                process,
                resuming: false,
                moved_from: None,
            };
            if let Some((new_writer, new_reader, new_conn)) = open(
                &addrs,
                link,
                conn_kind,
                &token,
                ledger.clone(),
                new_seq.clone(),
            )
            .await
            {
                last_seq = new_seq;
                ledger.count("connects");
                note_close(&ledger, reader).await;
                drop(writer);
                drop(conn);
                (writer, reader, conn) = (new_writer, new_reader, new_conn);
                let _ = (&writer, &conn);
            }
        }
        if conn_kind == Kind::WebSocket
            && Instant::now() + Duration::from_secs(3) < deadline
            && rand::rng().random_bool(0.2)
        {
            // A blink: the connection goes without a close frame; whatever
            // was in flight is lost with it, and the client comes back a
            // moment later with resume=N.
            ledger.count("blinks");
            ledger.blinked(&sent_here);
            reader.abort();
            let _ = reader.await;
            drop(writer);
            resume_from = last_seq.load(Ordering::Relaxed);
            blinked_on = Some(process);
            let nodes = live.read().unwrap().len();
            if nodes > 1 && rand::rng().random_bool(move_share) {
                // It comes back on another node, over either transport.
                ledger.count("moved_blinks");
                home = node + rand::rng().random_range(1..nodes);
                preferred = home;
                if rand::rng().random_bool(0.5) {
                    next_kind = Kind::WebTransport;
                }
            }
            let away = Duration::from_millis(rand::rng().random_range(200..1_500));
            tokio::time::sleep(away).await;
            continue;
        }
        ledger.count("client_closes");
        writer.close().await;
        note_close(&ledger, reader).await;
        drop(conn);
    }
}

/// Every gateway process of the run, and the Redis of a cluster.
struct Fleet {
    redis: Option<RedisServer>,
    /// Instead of `redis`: a primary, a replica and three Sentinels.
    sentinel: Option<SentinelGroup>,
    /// When the primary was killed and how long until every node served
    /// again after Sentinel named the new one (s).
    failover: Option<(f64, f64)>,
    /// Every process started, in order: a restarted node is a new entry.
    processes: Vec<GatewayProcess>,
    /// Resident memory of each process a moment after it started (KiB).
    baselines: Vec<u64>,
    /// The process SIGKILLed, if one was.
    killed: Option<usize>,
}

impl Fleet {
    /// The flags of node `node`, listening on `port` (0: any).
    fn args(&self, node: usize, port: u16) -> Vec<String> {
        let mut args: Vec<String> = [
            "--connect-rate",
            "100000",
            "--connect-burst",
            "100000",
            "--register-rate",
            "100000",
            "--register-burst",
            "100000",
            // Every client registers from 127.0.0.1, and a cluster counts
            // identities per address across its nodes.
            "--max-identities-per-ip",
            "1000000",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(redis) = &self.redis {
            args.extend(["--redis".into(), redis.url(), "--node-id".into()]);
            args.push(format!("node-{node}"));
        }
        if let Some(group) = &self.sentinel {
            args.extend(group.flags());
            args.extend(["--node-id".into(), format!("node-{node}")]);
        }
        if port != 0 {
            args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        }
        args
    }

    /// Starts node `node` (on `port`, else on any port if that one will
    /// not do) and waits until it is ready; returns its process index.
    async fn start(&mut self, node: usize, port: u16) -> usize {
        let args = self.args(node, port);
        let start = tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            GatewayProcess::start(&args, "signal_gateway=info").await
        });
        let gateway = match start.await {
            Ok(gateway) => gateway,
            Err(_) if port != 0 => {
                println!("node-{node} could not have port {port} again: on another port");
                let args = self.args(node, 0);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                GatewayProcess::start(&args, "signal_gateway=info").await
            }
            Err(err) => panic!("node-{node} did not start: {err}"),
        };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let ready = format!("http://{}/readyz", gateway.addrs.http);
        common::within("the node is ready", async {
            while !http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.baselines.push(gateway.rss_kib());
        self.processes.push(gateway);
        self.processes.len() - 1
    }

    /// The processes alive at the end.
    fn survivors(&self) -> impl Iterator<Item = (usize, &GatewayProcess)> {
        self.processes
            .iter()
            .enumerate()
            .filter(|(p, _)| Some(*p) != self.killed)
    }
}

/// SIGKILLs the Redis primary; waits until Sentinel names the replica and
/// every live node is ready again (at most 5 s later); starts the old
/// primary again, as it was, for Sentinel to demote.
async fn fail_over(fleet: &mut Fleet, live: &Live, started: Instant) {
    let group = fleet.sentinel.as_mut().expect("a Sentinel group");
    let old = group.primary().expect("the Sentinels agree on a primary");
    group.servers[old].kill();
    let at = started.elapsed().as_secs_f64();
    println!("{at:.0} s: SIGKILLed the Redis primary");
    let named = group.wait_primary(1 - old, Duration::from_secs(30)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let up: Vec<(usize, Addrs)> = live.read().unwrap().iter().flatten().cloned().collect();
    for (_, addrs) in &up {
        let ready = format!("http://{}/readyz", addrs.http);
        common::within("the node is ready after the failover", async {
            while !http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    let serving = named.elapsed().as_secs_f64();
    println!(
        "{:.0} s: Sentinel named the replica; every node ready {serving:.2} s later",
        started.elapsed().as_secs_f64()
    );
    assert!(
        serving < 5.0,
        "serving again {serving:.2} s after the switch"
    );
    group.servers[old].restart();
    fleet.failover = Some((at, serving));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running: run with scripts/soak"]
async fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 120);
    let clients = env_u64("SOAK_CLIENTS", 2000);
    let kick_every = env_u64("SOAK_KICK_EVERY", 30);
    let cluster = env_u64("SOAK_CLUSTER", 0) as usize;
    let nodes = cluster.max(1);
    let failover = cluster > 0 && env_u64("SOAK_FAILOVER", 0) > 0;
    let sentinel = failover.then(SentinelGroup::start);
    if let Some(group) = &sentinel {
        group.wait_settled().await;
    }
    let mut fleet = Fleet {
        redis: (cluster > 0 && !failover).then(RedisServer::start),
        sentinel,
        failover: None,
        processes: Vec::new(),
        baselines: Vec::new(),
        killed: None,
    };
    let mut live = Vec::new();
    for node in 0..nodes {
        let process = fleet.start(node, 0).await;
        live.push(Some((process, fleet.processes[process].addrs.clone())));
    }
    let live: Live = Arc::new(std::sync::RwLock::new(live));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    // In a cluster, a third of the way through: SIGKILL node 1, start it
    // again 3 s later.
    let kill_at = (nodes > 1 && seconds >= 20).then(|| started + Duration::from_secs(seconds / 3));
    // With Sentinel, half way through: SIGKILL the Redis primary.
    let failover_at =
        (failover && seconds >= 30).then(|| started + Duration::from_secs(seconds / 2));
    let ledger = Arc::new(Ledger::new());

    let mut users = Vec::new();
    for index in 0..clients {
        let kind = if index % 2 == 0 {
            Kind::WebSocket
        } else {
            Kind::WebTransport
        };
        users.push(tokio::spawn(user(
            index,
            kind,
            live.clone(),
            clients,
            deadline,
            ledger.clone(),
        )));
        if index % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Watches memory and connections, kicks, and kills and restarts a node.
    let admin = {
        let live = live.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut kicks = 0u64;
            let mut next_kick = started + Duration::from_secs(kick_every);
            let mut peak_rss: HashMap<usize, u64> = HashMap::new();
            let mut peak_connections = 0u64;
            let mut kill_at = kill_at;
            let mut failover_at = failover_at;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let up: Vec<(usize, Addrs)> =
                    live.read().unwrap().iter().flatten().cloned().collect();
                let mut connections = 0;
                for (process, addrs) in &up {
                    let pid = fleet.processes[*process].child.id().unwrap_or(0);
                    let peak = peak_rss.entry(*process).or_default();
                    *peak = (*peak).max(common::rss_kib_of(pid).unwrap_or(0));
                    connections += get_json_at(addrs, "/v1/stats").await["connections"]
                        .as_u64()
                        .unwrap_or(0);
                }
                peak_connections = peak_connections.max(connections);
                if Instant::now() >= next_kick && Instant::now() + Duration::from_secs(5) < deadline
                {
                    // Admin actions reach every node of a cluster.
                    let _ = http
                        .post(format!("http://{}/v1/kick-active-users", up[0].1.http))
                        .send()
                        .await;
                    kicks += 1;
                    next_kick += Duration::from_secs(kick_every);
                }
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    kill_at = None;
                    let (process, addrs) = live.write().unwrap()[1].take().unwrap();
                    let child = &mut fleet.processes[process].child;
                    child.start_kill().unwrap();
                    child.wait().await.unwrap();
                    fleet.killed = Some(process);
                    println!(
                        "{:.0} s: SIGKILLed node-1 (pid of process {process})",
                        started.elapsed().as_secs_f64()
                    );
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let restarted = fleet.start(1, addrs.http.port()).await;
                    let addrs = fleet.processes[restarted].addrs.clone();
                    println!(
                        "{:.0} s: node-1 ready again on {}",
                        started.elapsed().as_secs_f64(),
                        addrs.http
                    );
                    live.write().unwrap()[1] = Some((restarted, addrs));
                }
                if failover_at.is_some_and(|at| Instant::now() >= at) {
                    failover_at = None;
                    fail_over(&mut fleet, &live, started).await;
                }
            }
            (fleet, kicks, peak_rss, peak_connections)
        })
    };
    for user in users {
        tokio::time::timeout(Duration::from_secs(seconds + 60), user)
            .await
            .expect("user finished")
            .expect("user task");
    }
    let (fleet, kicks, peak_rss, peak_connections) = admin.await.unwrap();
    let elapsed = started.elapsed();

    // Everyone has left: every registry must empty, and every envelope sent
    // to another node must be settled.
    let settle = Instant::now();
    let mut stats: Vec<(usize, Value)> = Vec::new();
    loop {
        stats.clear();
        for (process, gateway) in fleet.survivors() {
            stats.push((process, get_json_at(&gateway.addrs, "/v1/stats").await));
        }
        let settled = stats.iter().all(|(_, s)| {
            let r = |k: &str| s["counters"]["remote"][k].as_u64().unwrap_or(0);
            s["connections"] == 0
                && s["admitted"] == 0
                && s["away"] == 0
                && r("sent") == r("written") + r("failed") + r("unconfirmed")
        });
        if settled || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Freed memory goes back to the system in the background: give it time.
    let near_baseline = |process: usize| {
        let baseline = fleet.baselines[process];
        let peak = peak_rss.get(&process).copied().unwrap_or(baseline);
        baseline + (peak.saturating_sub(baseline) / 4).max(16 * 1024)
    };
    let settle = Instant::now();
    let rss_end = loop {
        let rss: Vec<(usize, u64)> = fleet.survivors().map(|(p, g)| (p, g.rss_kib())).collect();
        if rss.iter().all(|(p, rss)| *rss <= near_baseline(*p))
            || settle.elapsed() > Duration::from_secs(30)
        {
            break rss;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Sums over the processes alive at the end.
    let n = |k: &str| -> u64 {
        stats
            .iter()
            .map(|(_, s)| s["counters"][k].as_u64().unwrap_or(0))
            .sum()
    };
    let r = |k: &str| -> u64 {
        stats
            .iter()
            .map(|(_, s)| s["counters"]["remote"][k].as_u64().unwrap_or(0))
            .sum()
    };
    let outcomes = ledger.outcomes.lock().unwrap();
    let duplicates = outcomes
        .values()
        .filter(|o| o.delivered > 1 || o.errored > 1)
        .count();
    let both = outcomes
        .values()
        .filter(|o| o.delivered > 0 && o.errored > o.unconfirmed)
        .count();
    let delivered_unconfirmed = outcomes
        .values()
        .filter(|o| o.delivered > 0 && o.unconfirmed > 0)
        .count();
    let no_outcome = |through_killed: bool| {
        outcomes
            .values()
            .filter(|o| {
                o.delivered + o.errored == 0
                    && !o.blinked
                    && (Some(o.process) == fleet.killed) == through_killed
            })
            .count() as u64
    };
    let lost_in_blinks = outcomes
        .values()
        .filter(|o| o.delivered + o.errored == 0 && o.blinked)
        .count();
    let (unknown, lost_with_killed) = (no_outcome(false), no_outcome(true));
    let sent = ledger.get("sent");
    let e = |k: &str| -> u64 {
        stats
            .iter()
            .map(|(_, s)| s["counters"]["resume"][k].as_u64().unwrap_or(0))
            .sum()
    };
    let server_errors = n("target_not_found")
        + n("target_slow")
        + n("rate_limited")
        + n("undelivered_reported")
        + e("expired")
        + r("failed")
        + r("unconfirmed")
        + r("unavailable");
    let explained = n("after_close")
        + n("undelivered_unreported")
        + e("expired_unreported")
        + n("replies_dropped");
    let delivered_from = ledger.delivered_from.lock().unwrap().clone();
    let replayed_from = ledger.replayed_from.lock().unwrap().clone();
    let errored_from = ledger.errored_from.lock().unwrap().clone();
    let delivered_by_killed = fleet
        .killed
        .map_or(0, |p| delivered_from.get(&p).copied().unwrap_or(0));
    let mut bad_log: Vec<String> = Vec::new();
    for (process, gateway) in fleet.survivors() {
        for line in gateway.log_text().lines() {
            if line.contains(" ERROR ") || line.contains(" WARN ") {
                bad_log.push(format!("process {process}: {line}"));
            }
        }
    }
    let errors_logged = bad_log.iter().filter(|l| l.contains(" ERROR ")).count();
    if let Ok(dir) = std::env::var("SOAK_LOGS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (process, gateway) in fleet.processes.iter().enumerate() {
            std::fs::write(format!("{dir}/process-{process}.log"), gateway.log_text()).unwrap();
            std::fs::write(
                format!("{dir}/process-{process}.stats.json"),
                stats
                    .iter()
                    .find(|(p, _)| *p == process)
                    .map_or(String::new(), |(_, s)| s.to_string()),
            )
            .unwrap();
        }
    }

    println!("\n## Soak summary\n");
    println!("| figure | value |\n|---|---|");
    let mut rows: Vec<(&str, String)> = vec![
        ("duration", format!("{:.0} s", elapsed.as_secs_f64())),
        (
            "clients (WebSocket / WebTransport)",
            format!("{} / {}", clients.div_ceil(2), clients / 2),
        ),
    ];
    if let Some((at, serving)) = fleet.failover {
        rows.push((
            "cluster: Redis primary SIGKILLed at / every node serving again after Sentinel named the new one",
            format!("{at:.0} s / {serving:.2} s"),
        ));
    }
    if cluster > 0 {
        rows.push((
            "cluster: nodes on one Redis / node SIGKILLed and restarted",
            format!(
                "{nodes} / {}",
                if fleet.killed.is_some() {
                    "node-1"
                } else {
                    "none"
                }
            ),
        ));
    }
    rows.extend([
        ("connections opened", ledger.get("connects").to_string()),
        (
            "connect failures",
            ledger.get("connect_failures").to_string(),
        ),
        ("peak live connections", peak_connections.to_string()),
        (
            "replacements / client closes / admin kicks",
            format!(
                "{} / {} / {kicks}",
                ledger.get("replacements"),
                ledger.get("client_closes")
            ),
        ),
        (
            "closed as REPLACED / KICKED / other",
            format!(
                "{} / {} / {}",
                ledger.get("closed_REPLACED"),
                ledger.get("closed_KICKED"),
                ledger.get("closed_other")
            ),
        ),
        ("envelopes sent by clients", sent.to_string()),
        (
            "  delivered (read by a client)",
            ledger.get("delivered").to_string(),
        ),
        (
            "  answered with an error (of which UNCONFIRMED)",
            format!("{} ({})", ledger.get("errors"), ledger.get("unconfirmed")),
        ),
        ("  no outcome seen by the client", unknown.to_string()),
        (
            "blinks / resumed: true / resumed: false / envelopes replayed / seen again",
            format!(
                "{} / {} / {} / {} / {}",
                ledger.get("blinks"),
                ledger.get("resumed"),
                ledger.get("not_resumed"),
                ledger.get("replayed"),
                ledger.get("seen_again")
            ),
        ),
        (
            "  no outcome, sent by a client just before it blinked",
            lost_in_blinks.to_string(),
        ),
        (
            "  server: held / expired / replayed / lost in a dead connection",
            format!(
                "{} / {} / {} / {}",
                e("held"),
                e("expired"),
                e("replayed"),
                e("lost")
            ),
        ),
    ]);
    if cluster > 0 {
        rows.extend([
            (
                "blinks to another node / resumes there (of which over WebTransport)",
                format!(
                    "{} / {} ({})",
                    ledger.get("moved_blinks"),
                    ledger.get("moved_resumes"),
                    ledger.get("moved_resumes_wt")
                ),
            ),
            (
                "  resumes there answered resumed: true / resumed: false",
                format!(
                    "{} / {}",
                    ledger.get("moved_resumed"),
                    ledger.get("moved_not_resumed")
                ),
            ),
            (
                "  server: handed off / hand-offs failed / held envelopes moved",
                format!(
                    "{} / {} / {}",
                    e("handed_off"),
                    e("handoff_failed"),
                    e("moved")
                ),
            ),
            (
                "  no outcome, sent through the killed process",
                lost_with_killed.to_string(),
            ),
            (
                "  delivered and answered UNCONFIRMED",
                delivered_unconfirmed.to_string(),
            ),
            (
                "  delivered by the killed process",
                delivered_by_killed.to_string(),
            ),
        ]);
    }
    let server = if cluster > 0 {
        "server (processes alive at the end, summed)"
    } else {
        "server"
    };
    rows.extend([
        (
            "malformed frames sent / INVALID_MESSAGE replies",
            format!(
                "{} / {}",
                ledger.get("malformed_sent"),
                ledger.get("invalid_replies")
            ),
        ),
        (server, String::new()),
        ("  frames received", n("frames_received").to_string()),
        (
            "  forwarded here / written",
            format!("{} / {}", n("forwarded"), n("written")),
        ),
        (
            "  error replies (not found, slow, rate, undelivered, remote)",
            server_errors.to_string(),
        ),
        (
            "  after close / undelivered unreported / replies dropped",
            format!(
                "{} / {} / {}",
                n("after_close"),
                n("undelivered_unreported"),
                n("replies_dropped")
            ),
        ),
    ]);
    if cluster > 0 {
        rows.extend([
            (
                "  to other nodes: sent / written / failed / unconfirmed / late",
                format!(
                    "{} / {} / {} / {} / {}",
                    r("sent"),
                    r("written"),
                    r("failed"),
                    r("unconfirmed"),
                    r("late")
                ),
            ),
            (
                "  from other nodes: received / not written / unavailable",
                format!(
                    "{} / {} / {}",
                    r("received"),
                    r("received_failed"),
                    r("unavailable")
                ),
            ),
        ]);
    }
    rows.extend([
        (
            "duplicates / delivered and errored",
            format!("{duplicates} / {both}"),
        ),
        ("registry at end (connections / admitted)", {
            let live =
                |k: &str| -> u64 { stats.iter().map(|(_, s)| s[k].as_u64().unwrap_or(0)).sum() };
            format!("{} / {}", live("connections"), live("admitted"))
        }),
        (
            "RSS baseline / peak / end (each live process)",
            rss_end
                .iter()
                .map(|(p, rss)| {
                    format!(
                        "{} / {} / {} KiB",
                        fleet.baselines[*p],
                        peak_rss.get(p).copied().unwrap_or(0),
                        rss
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (
            "error / warning log lines",
            format!("{errors_logged} / {}", bad_log.len() - errors_logged),
        ),
    ]);
    for (name, value) in &rows {
        println!("| {name} | {value} |");
    }
    for line in bad_log.iter().take(20) {
        println!("log: {line}");
    }

    for (process, s) in &stats {
        let n = |k: &str| s["counters"][k].as_u64().unwrap_or(0);
        let r = |k: &str| s["counters"]["remote"][k].as_u64().unwrap_or(0);
        let e = |k: &str| s["counters"]["resume"][k].as_u64().unwrap_or(0);
        let books = n("after_close")
            + n("invalid")
            + n("rate_limited")
            + n("target_not_found")
            + n("target_slow")
            + n("to_gateway")
            + n("forwarded")
            + r("sent")
            + r("unavailable");
        assert_eq!(
            n("frames_received"),
            books,
            "process {process}: every frame has exactly one outcome: {s}"
        );
        assert_eq!(
            n("forwarded") + r("received"),
            n("written")
                + n("undelivered_reported")
                + n("undelivered_unreported")
                + e("expired")
                + e("expired_unreported")
                + e("moved")
                + r("received_failed"),
            "process {process}: every envelope for a user here was written or reported: {s}"
        );
        assert_eq!(
            r("sent"),
            r("written") + r("failed") + r("unconfirmed"),
            "process {process}: every envelope sent to another node was settled: {s}"
        );
        // A blinked client that could not resume (a kick ended its stream
        // meanwhile) never reads what was written into its dead
        // connection: the gateway counts those as lost. One that resumed
        // on another node reads them there, replayed (at most what the
        // resumes there replayed); one that resumed here reads them again
        // from here, counted replayed rather than written.
        let read = delivered_from.get(process).copied().unwrap_or(0);
        let replayed_elsewhere = replayed_from.get(process).copied().unwrap_or(0);
        assert!(
            read <= n("written") + e("replayed")
                && n("written") <= read + e("lost") + replayed_elsewhere,
            "process {process}: every envelope it wrote was read by its client, or counted lost, or replayed on another node: read {read}, replayed elsewhere at most {replayed_elsewhere}, {s}"
        );
        assert_eq!(s["connections"], 0, "process {process}: nobody left");
        assert_eq!(s["admitted"], 0, "process {process}: no slot leaked");
    }
    assert_eq!(duplicates, 0, "nothing delivered or answered twice");
    assert_eq!(
        ledger.get("seen_again"),
        0,
        "a resumed connection writes nothing the client had processed"
    );
    assert_eq!(
        both, 0,
        "nothing both delivered and answered, but UNCONFIRMED"
    );
    if cluster > 0 {
        // Every cross-node resume that said `resumed: true` took a
        // hand-off from the node the user blinked on, and no node handed
        // off more streams than its users left it for another node.
        let moved_resumed_from = ledger.moved_resumed_from.lock().unwrap().clone();
        let crossed_from = ledger.crossed_from.lock().unwrap().clone();
        for (process, s) in &stats {
            let handed_off = s["counters"]["resume"]["handed_off"].as_u64().unwrap_or(0);
            let resumed_from_here = moved_resumed_from.get(process).copied().unwrap_or(0);
            let left_here = crossed_from.get(process).copied().unwrap_or(0);
            assert!(
                resumed_from_here <= handed_off && handed_off <= left_here,
                "process {process}: {resumed_from_here} users resumed elsewhere after a blink here, \
                 {handed_off} streams handed off, {left_here} connects elsewhere after a connection here"
            );
        }
        assert!(
            ledger.get("moved_resumes") > 0,
            "blinked clients resumed on another node"
        );
        assert!(
            e("handed_off") > 0,
            "streams were handed over to another node"
        );
    }
    let errors_from_survivors: u64 = stats
        .iter()
        .map(|(p, _)| errored_from.get(p).copied().unwrap_or(0))
        .sum();
    assert!(
        errors_from_survivors <= server_errors,
        "{errors_from_survivors} error answers read, the processes alive sent {server_errors}"
    );
    assert!(
        unknown <= explained,
        "{unknown} envelopes without an outcome, only {explained} explained by closes"
    );
    for (process, rss) in &rss_end {
        assert!(
            *rss <= near_baseline(*process),
            "process {process}: memory back near its baseline: {rss} KiB > {} KiB",
            near_baseline(*process)
        );
    }
    if cluster > 0 {
        assert_eq!(errors_logged, 0, "a live node logged errors");
    } else {
        assert!(bad_log.is_empty(), "the gateway logged errors or warnings");
    }
    assert!(
        ledger.get("connects") >= clients,
        "every client connected at least once"
    );
}
