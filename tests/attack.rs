//! Attack: the front door's hostile clients, all at once, for a bounded
//! time, beside legitimate users; reports the gateway's memory and CPU and
//! what the legitimate users saw. Ignored by `cargo test`; run it with
//! `scripts/attack` (or `cargo test --release --test attack -- --ignored
//! --nocapture`).
//!
//! Settings (environment): `ATTACK_SECONDS` (default 60), `ATTACK_CLIENTS`
//! (hostile clients of each kind, default 8).
//!
//! The attacks: unauthenticated HTTP/3 connections sending a frame that
//! declares 1 GiB on the control stream, or in a request's HEADERS;
//! tokenless connections holding on with a request now and then; CONNECTs
//! from clients that give no stream credit; QUIC handshakes abandoned
//! after the first packet; slow request bodies over TCP; and, once
//! authenticated, WebSocket messages that never end and WebTransport
//! sessions filling every extra stream they can open. Meanwhile pairs of
//! users (WebSocket ↔ WebTransport) trade envelopes and measure the round
//! trip, and newcomers connect over both transports.
//!
//! It fails if a legitimate connection fails, if the legitimate round trip
//! p99 passes 250 ms, or if the gateway's memory grows past the documented
//! bounds (README, "Limits and protections").

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw_h3::{H3Client, closed_with, flood, open_control, try_quic_connect, varint};
use common::{Addrs, Client, GatewayProcess, Kind, register_at, ws_connect};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the run counted, by name.
#[derive(Default)]
struct Tally(Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl Tally {
    fn add(&self, name: &'static str) {
        *self.0.lock().unwrap().entry(name).or_default() += 1;
    }

    fn get(&self, name: &'static str) -> u64 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

/// Hostile clients come from 127.0.0.2 and up, one address per client, so
/// the per-address caps don't stop them all at once; users come from
/// 127.0.0.1.
fn hostile_address(i: u64) -> SocketAddr {
    format!("127.0.{}.{}:0", 1 + i / 250, 2 + i % 250)
        .parse()
        .unwrap()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn huge_frames(gw: Addrs, i: u64, in_headers: bool, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let Ok(conn) =
            try_quic_connect(&gw, hostile_address(i), quinn::TransportConfig::default()).await
        else {
            tally.add("hostile connections refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut control = open_control(&conn).await;
        let mut head = varint(if in_headers { 0x01 } else { 0x21 });
        head.extend(varint(1 << 30));
        let sent = if in_headers {
            let Ok((mut send, _recv)) = conn.open_bi().await else {
                continue;
            };
            flood(&mut send, &head, 64 << 20, Duration::from_secs(5)).await
        } else {
            flood(&mut control, &head, 64 << 20, Duration::from_secs(5)).await
        };
        let cut = closed_with(&conn)
            .await
            .is_some_and(|(code, _)| code == 0x107);
        tally.add(if cut {
            "huge frames cut off"
        } else {
            "huge frames not cut off"
        });
        if sent >= 64 << 20 {
            tally.add("huge frames passed 64 MiB");
        }
    }
}

async fn holder(gw: Addrs, i: u64, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let Ok(mut client) =
            H3Client::try_connect_with(&gw, hostile_address(i), quinn::TransportConfig::default())
                .await
        else {
            tally.add("hostile connections refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while Instant::now() < until && client.request("/healthcheck", false).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tally.add("holders closed");
    }
}

async fn stingy_connect(gw: Addrs, i: u64, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let mut stingy = quinn::TransportConfig::default();
        stingy
            .stream_receive_window(quinn::VarInt::from_u32(0))
            .receive_window(quinn::VarInt::from_u32(0));
        let Ok(mut client) = H3Client::try_connect_with(&gw, hostile_address(i), stingy).await
        else {
            tally.add("hostile connections refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), client.request("/v1/connect", true))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(15), client.conn.closed()).await;
        tally.add("no-credit CONNECTs closed");
    }
}

async fn abandoned_handshakes(gw: Addrs, i: u64, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let endpoint = quinn::Endpoint::client(hostile_address(i)).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(
                rustls::ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification))
                    .with_no_client_auth(),
            )
            .unwrap(),
        ));
        config.transport_config(Arc::new(quinn::TransportConfig::default()));
        let connecting = endpoint.connect_with(config, gw.wt, "localhost").unwrap();
        let pending = tokio::spawn(connecting);
        tokio::time::sleep(Duration::from_millis(2)).await;
        pending.abort();
        drop(endpoint);
        tally.add("handshakes abandoned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn slow_body(gw: Addrs, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(gw.http).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = tcp
            .write_all(b"POST /v1/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            .await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut rest),
        )
        .await;
        tally.add("slow bodies cut off");
    }
}

async fn endless_message(gw: Addrs, i: u64, until: Instant, tally: Arc<Tally>) {
    let token = register_at(&gw, &format!("dripper-{i}")).await;
    while Instant::now() < until {
        let Ok(mut ws) = ws_connect(&gw, &format!("?token={token}"), &[]).await else {
            continue;
        };
        let header = FrameHeader {
            is_final: false,
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let _ = ws
            .send(Message::Frame(Frame::from_payload(
                header,
                vec![b'x'; 60_000].into(),
            )))
            .await;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(60), ws.next()).await
        {
            if let Message::Close(_) = message {
                break;
            }
        }
        tally.add("endless messages closed");
    }
}

async fn extra_streams(gw: Addrs, i: u64, until: Instant, tally: Arc<Tally>) {
    let token = register_at(&gw, &format!("streamer-{i}")).await;
    let mut client = Client::connect(&gw, Kind::WebTransport, &token).await;
    let _ = client.recv().await;
    let Client::Wt(wt) = &client else {
        unreachable!()
    };
    let chunk = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        let Ok(Ok(opening)) =
            tokio::time::timeout(Duration::from_millis(500), wt.conn.open_bi()).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(Ok((mut send, _recv))) =
            tokio::time::timeout(Duration::from_millis(500), opening).await
        else {
            continue;
        };
        while tokio::time::timeout(Duration::from_millis(100), send.write_all(&chunk))
            .await
            .is_ok_and(|r| r.is_ok())
        {}
        tally.add("extra streams opened");
    }
}

/// A WebSocket user and a WebTransport user trading envelopes; returns the
/// round trips in microseconds.
async fn pair(gw: Addrs, i: u64, until: Instant, tally: Arc<Tally>) -> Vec<u64> {
    let a = format!("user-ws-{i}");
    let b = format!("user-wt-{i}");
    let mut alice = Client::connect(&gw, Kind::WebSocket, &register_at(&gw, &a).await).await;
    let mut bob = Client::connect(&gw, Kind::WebTransport, &register_at(&gw, &b).await).await;
    let _ = alice.recv().await;
    let _ = bob.recv().await;
    let mut rtts = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        alice.send(&b, "ping", json!({ "n": rtts.len() })).await;
        let got = bob.recv().await;
        bob.send(&a, "pong", got["payload"].clone()).await;
        let back = alice.recv().await;
        if back["type"] != "pong" {
            tally.add("user envelopes lost");
        }
        rtts.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rtts
}

/// Newcomers connecting over both transports now and then; returns the
/// set-up times in milliseconds.
async fn newcomers(gw: Addrs, until: Instant, tally: Arc<Tally>) -> Vec<u64> {
    let mut setups = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        for kind in [Kind::WebSocket, Kind::WebTransport] {
            n += 1;
            let token = register_at(&gw, &format!("newcomer-{n}")).await;
            let started = Instant::now();
            let connected = tokio::time::timeout(Duration::from_secs(5), async {
                let mut client = Client::connect(&gw, kind, &token).await;
                client.recv().await["type"] == "WELCOME"
            })
            .await;
            if connected == Ok(true) {
                setups.push(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            } else {
                tally.add("user connects failed");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    setups
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "runs for a minute; use scripts/attack"]
async fn attack() {
    let seconds = env_u64("ATTACK_SECONDS", 60);
    let hostile = env_u64("ATTACK_CLIENTS", 8);
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
            "--handshake-timeout",
            "5s",
            "--idle-timeout",
            "10s",
            "--keep-alive-interval",
            "3s",
        ],
        "signal_gateway=info",
    )
    .await;
    let pid = gw.child.id().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = gw.rss_kib();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tally = Arc::new(Tally::default());
    let addrs = gw.addrs.clone();

    let mut attackers = Vec::new();
    for i in 0..hostile {
        let t = &tally;
        attackers.push(tokio::spawn(huge_frames(
            addrs.clone(),
            i,
            false,
            until,
            t.clone(),
        )));
        attackers.push(tokio::spawn(huge_frames(
            addrs.clone(),
            100 + i,
            true,
            until,
            t.clone(),
        )));
        attackers.push(tokio::spawn(holder(
            addrs.clone(),
            200 + i,
            until,
            t.clone(),
        )));
        attackers.push(tokio::spawn(stingy_connect(
            addrs.clone(),
            300 + i,
            until,
            t.clone(),
        )));
        attackers.push(tokio::spawn(abandoned_handshakes(
            addrs.clone(),
            400 + i,
            until,
            t.clone(),
        )));
        attackers.push(tokio::spawn(slow_body(addrs.clone(), until, t.clone())));
        attackers.push(tokio::spawn(endless_message(
            addrs.clone(),
            i,
            until,
            t.clone(),
        )));
        attackers.push(tokio::spawn(extra_streams(
            addrs.clone(),
            i,
            until,
            t.clone(),
        )));
    }
    let pairs: Vec<_> = (0..10)
        .map(|i| tokio::spawn(pair(addrs.clone(), i, until, tally.clone())))
        .collect();
    let joining = tokio::spawn(newcomers(addrs.clone(), until, tally.clone()));

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while Instant::now() < until {
                let rss = common::rss_kib_of(pid).unwrap_or(0);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let mut rtts: Vec<u64> = Vec::new();
    for pair in pairs {
        rtts.extend(pair.await.expect("a user pair failed"));
    }
    let setups = joining.await.expect("newcomers failed");
    let cpu = cpu_seconds(pid) - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    sampler.await.unwrap();
    for attacker in attackers {
        attacker.abort();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let end = gw.rss_kib();
    rtts.sort_unstable();
    let mut setups_sorted = setups.clone();
    setups_sorted.sort_unstable();
    let peak = peak.load(Ordering::Relaxed);

    println!("\nattack: {seconds} s, {hostile} hostile clients of each kind\n");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| gateway RSS baseline / peak / 6 s after | {} / {} / {} MiB |",
        baseline / 1024,
        peak / 1024,
        end / 1024
    );
    println!(
        "| gateway CPU | {cpu:.1} s in {elapsed:.1} s ({:.0} % of one core) |",
        100.0 * cpu / elapsed
    );
    println!(
        "| users' round trip p50 / p99 / max (WS → WT → WS) | {} / {} / {} µs ({} round trips) |",
        percentile(&rtts, 50.0),
        percentile(&rtts, 99.0),
        rtts.last().copied().unwrap_or(0),
        rtts.len()
    );
    println!(
        "| newcomers' set-up p50 / max | {} / {} ms ({} connections) |",
        percentile(&setups_sorted, 50.0),
        setups_sorted.last().copied().unwrap_or(0),
        setups.len()
    );
    for (name, count) in tally.0.lock().unwrap().iter() {
        println!("| {name} | {count} |");
    }
    let stats = common::get_json_at(&gw, "/v1/stats").await;
    println!(
        "| gateway: pre-session closes | {} |",
        stats["counters"]["pre_session_closes"]
    );
    println!(
        "| gateway: QUIC retries | {} |",
        stats["counters"]["quic_retries"]
    );
    println!("| gateway: closes | {} |", stats["counters"]["closes"]);

    assert_eq!(
        tally.get("user connects failed"),
        0,
        "a user could not connect"
    );
    assert_eq!(
        tally.get("user envelopes lost"),
        0,
        "a user's envelope went astray"
    );
    assert_eq!(tally.get("huge frames not cut off"), 0);
    assert_eq!(tally.get("huge frames passed 64 MiB"), 0);
    assert!(percentile(&rtts, 99.0) < 250_000, "users' p99 round trip");
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    assert!(
        grown_mib < 512,
        "the gateway grew by {grown_mib} MiB under attack"
    );
}

/// Abandoned handshakes never get far enough to check a certificate.
#[derive(Debug)]
struct NoVerification;

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
