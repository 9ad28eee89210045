//! Soak: thousands of clients over both transports for a bounded time, with
//! connection churn, replacements, admin kicks and malformed input mixed in.
//! Ignored by `cargo test`; run it with `scripts/soak` (or
//! `cargo test --release --test soak -- --ignored --nocapture`).
//!
//! Settings (environment): `SOAK_SECONDS` (default 120), `SOAK_CLIENTS`
//! (default 2000, half WebSocket, half WebTransport), `SOAK_KICK_EVERY`
//! (seconds between admin kicks, default 30).
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
}

#[derive(Default, Clone, Copy)]
struct Outcome {
    delivered: u8,
    errored: u8,
}

const COUNTERS: &[&str] = &[
    "sent",
    "malformed_sent",
    "invalid_replies",
    "delivered",
    "errors",
    "connects",
    "connect_failures",
    "replacements",
    "client_closes",
    "closed_REPLACED",
    "closed_KICKED",
    "closed_other",
];

impl Ledger {
    fn new() -> Self {
        Self {
            outcomes: Mutex::default(),
            counters: COUNTERS
                .iter()
                .map(|name| (*name, AtomicU64::new(0)))
                .collect(),
        }
    }

    fn count(&self, name: &str) {
        self.counters[name].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, name: &str) -> u64 {
        self.counters[name].load(Ordering::Relaxed)
    }

    /// Notes a sent envelope (its outcome may already have been recorded
    /// by the reader, which can be faster than this call).
    fn sent(&self, id: u64) {
        self.count("sent");
        self.outcomes.lock().unwrap().entry(id).or_default();
    }

    fn record(&self, id: u64, delivered: bool) {
        let mut outcomes = self.outcomes.lock().unwrap();
        let outcome = outcomes.entry(id).or_default();
        if delivered {
            outcome.delivered += 1;
        } else {
            outcome.errored += 1;
        }
    }
}

/// Reads one envelope stream to its end, recording outcomes; returns the
/// close reason announced by the gateway, if any.
fn handle_envelope(ledger: &Ledger, v: &Value) -> Option<String> {
    let kind = v["type"].as_str().unwrap_or_default();
    let id_of = |s: &str| s.strip_prefix('m').and_then(|n| n.parse::<u64>().ok());
    if v["originator"] != "" {
        if let Some(id) = id_of(kind) {
            ledger.count("delivered");
            ledger.record(id, true);
        }
        return None;
    }
    match kind {
        "WELCOME" => None,
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
                ledger.record(id, false);
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

    async fn close(&mut self) {
        match self {
            Writer::Ws(sink) => {
                let _ = sink.send(Message::Close(None)).await;
            }
            Writer::Wt(send) => {
                let _ = send.finish().await;
            }
        }
    }
}

/// Opens a connection and starts its reader; the reader ends when the
/// gateway closes the connection and yields the announced close reason.
async fn open(
    addrs: &Addrs,
    kind: Kind,
    token: &str,
    ledger: Arc<Ledger>,
) -> Option<(
    Writer,
    tokio::task::JoinHandle<Option<String>>,
    Option<wtransport::Connection>,
)> {
    let query = format!("?token={token}");
    match kind {
        Kind::WebSocket => {
            let ws = match common::ws_connect(addrs, &query, &[]).await {
                Ok(ws) => ws,
                Err(err) => {
                    eprintln!("ws connect failed: {err}");
                    return None;
                }
            };
            let (sink, mut stream) = ws.split();
            let reader = tokio::spawn(async move {
                let mut reason = None;
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = message
                        && let Ok(v) = serde_json::from_str::<Value>(&text)
                    {
                        reason = handle_envelope(&ledger, &v).or(reason);
                    }
                }
                reason
            });
            Some((Writer::Ws(sink), reader, None))
        }
        Kind::WebTransport => {
            let client = match common::wt_connect(addrs, &query, &[]).await {
                Ok(client) => client,
                Err(err) => {
                    eprintln!("wt connect failed: {err}");
                    return None;
                }
            };
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
                                reason = handle_envelope(&ledger, &v).or(reason);
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

/// One simulated user: connects, sends to random peers at random
/// intervals, sometimes garbage, and churns (clean close or replacement)
/// until the deadline.
async fn user(
    index: u64,
    kind: Kind,
    addrs: Addrs,
    clients: u64,
    deadline: Instant,
    ledger: Arc<Ledger>,
) {
    let token = register_at(&addrs, &format!("s{index}")).await;
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let Some((mut writer, mut reader, mut conn)) =
            open(&addrs, kind, &token, ledger.clone()).await
        else {
            ledger.count("connect_failures");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        ledger.count("connects");
        let lifetime = Duration::from_millis(rand::rng().random_range(3_000..25_000));
        let until = (Instant::now() + lifetime).min(deadline);
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
                ledger.sent(id);
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
            if let Some((new_writer, new_reader, new_conn)) =
                open(&addrs, kind, &token, ledger.clone()).await
            {
                ledger.count("connects");
                note_close(&ledger, reader).await;
                drop(writer);
                drop(conn);
                (writer, reader, conn) = (new_writer, new_reader, new_conn);
                let _ = (&writer, &conn);
            }
        }
        ledger.count("client_closes");
        writer.close().await;
        note_close(&ledger, reader).await;
        drop(conn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running: run with scripts/soak"]
async fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 120);
    let clients = env_u64("SOAK_CLIENTS", 2000);
    let kick_every = env_u64("SOAK_KICK_EVERY", 30);
    let gw = GatewayProcess::start(
        &[
            "--connect-rate",
            "100000",
            "--connect-burst",
            "100000",
            "--register-rate",
            "100000",
            "--register-burst",
            "100000",
        ],
        "signal_gateway=info",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_baseline = gw.rss_kib();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let ledger = Arc::new(Ledger::new());
    let peak_rss = Arc::new(AtomicU64::new(rss_baseline));
    let peak_connections = Arc::new(AtomicU64::new(0));

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
            gw.addrs.clone(),
            clients,
            deadline,
            ledger.clone(),
        )));
        if index % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let admin = {
        let addrs = gw.addrs.clone();
        let pid = gw.child.id().unwrap();
        let (peak_rss, peak_connections) = (peak_rss.clone(), peak_connections.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut kicks = 0u64;
            let mut next_kick = started + Duration::from_secs(kick_every);
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    })
                    .unwrap_or(0);
                peak_rss.fetch_max(rss, Ordering::Relaxed);
                peak_connections.fetch_max(
                    get_json_at(&addrs, "/v1/stats").await["connections"]
                        .as_u64()
                        .unwrap_or(0),
                    Ordering::Relaxed,
                );
                if Instant::now() >= next_kick && Instant::now() + Duration::from_secs(5) < deadline
                {
                    let _ = http
                        .post(format!("http://{}/v1/kick-active-users", addrs.http))
                        .send()
                        .await;
                    kicks += 1;
                    next_kick += Duration::from_secs(kick_every);
                }
            }
            kicks
        })
    };
    for user in users {
        tokio::time::timeout(Duration::from_secs(seconds + 60), user)
            .await
            .expect("user finished")
            .expect("user task");
    }
    let kicks = admin.await.unwrap();
    let elapsed = started.elapsed();

    // Everyone has left: the registry must empty.
    let settle = Instant::now();
    let mut server = get_json_at(&gw.addrs, "/v1/stats").await;
    while (server["connections"] != 0 || server["admitted"] != 0)
        && settle.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server = get_json_at(&gw.addrs, "/v1/stats").await;
    }
    // Freed memory goes back to the system in the background: give it time.
    let peak = peak_rss.load(Ordering::Relaxed);
    let near_baseline = rss_baseline + (peak.saturating_sub(rss_baseline) / 4).max(16 * 1024);
    let mut rss_end = gw.rss_kib();
    let settle = Instant::now();
    while rss_end > near_baseline && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_end = gw.rss_kib();
    }
    let c = &server["counters"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);

    let outcomes = ledger.outcomes.lock().unwrap();
    let duplicates = outcomes
        .values()
        .filter(|o| o.delivered + o.errored > 1)
        .count();
    let both = outcomes
        .values()
        .filter(|o| o.delivered > 0 && o.errored > 0)
        .count();
    let unknown = outcomes
        .values()
        .filter(|o| o.delivered + o.errored == 0)
        .count() as u64;
    let sent = ledger.get("sent");
    let server_errors =
        n("target_not_found") + n("target_slow") + n("rate_limited") + n("undelivered_reported");
    let explained = n("after_close") + n("undelivered_unreported") + n("replies_dropped");
    let log = gw.log_text();
    let bad_log: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();

    println!("\n## Soak summary\n");
    println!("| figure | value |\n|---|---|");
    let rows: Vec<(&str, String)> = vec![
        ("duration", format!("{:.0} s", elapsed.as_secs_f64())),
        (
            "clients (WebSocket / WebTransport)",
            format!("{} / {}", clients.div_ceil(2), clients / 2),
        ),
        ("connections opened", ledger.get("connects").to_string()),
        (
            "connect failures",
            ledger.get("connect_failures").to_string(),
        ),
        (
            "peak live connections",
            peak_connections.load(Ordering::Relaxed).to_string(),
        ),
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
        ("  answered with an error", ledger.get("errors").to_string()),
        ("  no outcome seen by the client", unknown.to_string()),
        (
            "malformed frames sent / INVALID_MESSAGE replies",
            format!(
                "{} / {}",
                ledger.get("malformed_sent"),
                ledger.get("invalid_replies")
            ),
        ),
        ("server: frames received", n("frames_received").to_string()),
        (
            "server: forwarded / written",
            format!("{} / {}", n("forwarded"), n("written")),
        ),
        (
            "server: error replies (not found, slow, rate, undelivered)",
            server_errors.to_string(),
        ),
        (
            "server: after close / undelivered unreported / replies dropped",
            format!(
                "{} / {} / {}",
                n("after_close"),
                n("undelivered_unreported"),
                n("replies_dropped")
            ),
        ),
        (
            "duplicates / delivered and errored",
            format!("{duplicates} / {both}"),
        ),
        (
            "registry at end (connections / admitted)",
            format!("{} / {}", server["connections"], server["admitted"]),
        ),
        (
            "RSS baseline / peak / end",
            format!(
                "{} / {} / {} KiB",
                rss_baseline,
                peak_rss.load(Ordering::Relaxed),
                rss_end
            ),
        ),
        ("error or warning log lines", bad_log.len().to_string()),
    ];
    for (name, value) in &rows {
        println!("| {name} | {value} |");
    }
    for line in bad_log.iter().take(20) {
        println!("log: {line}");
    }

    let books = n("after_close")
        + n("invalid")
        + n("rate_limited")
        + n("target_not_found")
        + n("target_slow")
        + n("to_gateway")
        + n("forwarded");
    assert_eq!(
        n("frames_received"),
        books,
        "every frame has exactly one outcome"
    );
    assert_eq!(
        n("forwarded"),
        n("written") + n("undelivered_reported") + n("undelivered_unreported"),
        "every forwarded envelope was written or reported"
    );
    assert_eq!(duplicates, 0, "nothing delivered twice");
    assert_eq!(both, 0, "nothing both delivered and answered");
    assert_eq!(
        ledger.get("delivered"),
        n("written"),
        "every envelope written was read by its client"
    );
    assert!(ledger.get("errors") <= server_errors);
    assert!(
        unknown <= explained,
        "{unknown} envelopes without an outcome, only {explained} explained by closes"
    );
    assert_eq!(server["connections"], 0, "nobody left in the registry");
    assert_eq!(server["admitted"], 0, "no admission slot leaked");
    assert!(
        rss_end <= near_baseline,
        "memory back near its baseline: {rss_end} KiB > {near_baseline} KiB"
    );
    assert!(bad_log.is_empty(), "the gateway logged errors or warnings");
    assert!(
        ledger.get("connects") >= clients,
        "every client connected at least once"
    );
}
