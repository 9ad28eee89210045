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
//! A second gateway takes both registered names and JWTs from a key set a
//! server in the test publishes, rotating in a new key every few seconds
//! (published ahead of use, as identity providers do). Against it:
//! registrations of the JWT users' names, each connected at once; tokens
//! naming unknown keys, as fast as they go (each would refetch the key set
//! without the refetch limit); and GETs of the admin routes marked as a
//! page of another site's (`Sec-Fetch-Site: cross-site`, what an `<img>`
//! sends). Meanwhile pairs of JWT users (WebSocket ↔ WebTransport) trade
//! envelopes and reconnect with tokens signed by the newest key.
//!
//! It fails if a legitimate connection fails, if the legitimate round trip
//! p99 passes 250 ms, if the gateway's memory grows past the documented
//! bounds (docs/security.md, "Limits and protections"), if a JWT user is
//! taken over or kicked, if the key set is fetched more often than
//! `--jwks-refresh-min` allows, or if a cross-site admin request is obeyed.

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
    let jwt_front = tokio::spawn(jwt_front_door(seconds, hostile));
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
    let jwt = jwt_front.await.expect("the JWT front door run failed");
    assert_eq!(jwt.tally.get("JWT users failed"), 0, "a JWT user failed");
    assert_eq!(
        jwt.tally.get("registered names equal to a JWT user's"),
        0,
        "a registration took a JWT user's name"
    );
    assert_eq!(
        jwt.tally.get("cross-site admin requests obeyed"),
        0,
        "a cross-site admin request was obeyed"
    );
    assert!(
        jwt.fetches <= jwt.fetches_allowed,
        "{} key-set fetches, at most {} allowed",
        jwt.fetches,
        jwt.fetches_allowed
    );
    assert!(
        percentile(&jwt.rtts, 99.0) < 250_000,
        "JWT users' p99 round trip"
    );
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

/// What the JWT gateway's run saw.
struct JwtRun {
    tally: Arc<Tally>,
    rtts: Vec<u64>,
    fetches: u64,
    fetches_allowed: u64,
}

/// The key the application signs with now, and the key set it publishes.
struct Issuer {
    signing: Mutex<(String, jsonwebtoken::EncodingKey)>,
    published: Mutex<jsonwebtoken::jwk::JwkSet>,
}

impl Issuer {
    fn key() -> (String, jsonwebtoken::EncodingKey, jsonwebtoken::jwk::Jwk) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let kid = format!("k{:016x}", rand::random::<u64>());
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        jwk.common.key_id = Some(kid.clone());
        (kid, key, jwk)
    }

    /// A token for `user`, valid for a minute, signed with the current key.
    fn token(&self, user: &str) -> String {
        let (kid, key) = &*self.signing.lock().unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.clone());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        jsonwebtoken::encode(&header, &json!({ "sub": user, "exp": exp }), key).unwrap()
    }
}

/// How often the attacked gateway may refetch the key set.
const REFRESH_MIN_SECS: u64 = 1;
/// A new key is published this often, and signed with from half-way on.
const ROTATE_EVERY: Duration = Duration::from_secs(4);

/// The JWT gateway and its attackers, for `seconds`.
async fn jwt_front_door(seconds: u64, hostile: u64) -> JwtRun {
    let (kid, key, jwk) = Issuer::key();
    let issuer = Arc::new(Issuer {
        signing: Mutex::new((kid, key)),
        published: Mutex::new(jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }),
    });
    let fetches = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get({
            let (issuer, fetches) = (issuer.clone(), fetches.clone());
            move || {
                fetches.fetch_add(1, Ordering::Relaxed);
                let keys = issuer.published.lock().unwrap().clone();
                async move { axum::Json(keys) }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let refresh = format!("{REFRESH_MIN_SECS}s");
    let gw = GatewayProcess::start(
        &[
            "--jwks-url",
            &url,
            "--jwks-refresh-min",
            &refresh,
            "--connect-rate",
            "100000",
            "--connect-burst",
            "100000",
            "--register-rate",
            "100000",
            "--register-burst",
            "100000",
            "--max-identities-per-ip",
            "100000",
        ],
        "signal_gateway=info",
    )
    .await;
    let addrs = gw.addrs.clone();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let fetches_before = fetches.load(Ordering::Relaxed);
    let tally = Arc::new(Tally::default());

    let rotation = tokio::spawn({
        let issuer = issuer.clone();
        async move {
            while Instant::now() < until {
                tokio::time::sleep(ROTATE_EVERY / 2).await;
                let (kid, key, jwk) = Issuer::key();
                {
                    let mut published = issuer.published.lock().unwrap();
                    let newest = published.keys.pop();
                    published.keys = newest.into_iter().chain([jwk]).collect();
                }
                // Published ahead of use: past the gateway's refetch limit.
                tokio::time::sleep(ROTATE_EVERY / 2).await;
                *issuer.signing.lock().unwrap() = (kid, key);
            }
        }
    });
    let mut attackers = Vec::new();
    for i in 0..hostile {
        attackers.push(tokio::spawn(unknown_kids(
            addrs.clone(),
            600 + i,
            until,
            tally.clone(),
        )));
        attackers.push(tokio::spawn(cross_site_admin(
            addrs.clone(),
            until,
            tally.clone(),
        )));
    }
    attackers.push(tokio::spawn(name_takeovers(
        addrs.clone(),
        until,
        tally.clone(),
    )));
    let pairs: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(jwt_pair(
                addrs.clone(),
                issuer.clone(),
                i,
                until,
                tally.clone(),
            ))
        })
        .collect();
    let mut rtts = Vec::new();
    for pair in pairs {
        rtts.extend(pair.await.expect("a JWT pair failed"));
    }
    let fetches = fetches.load(Ordering::Relaxed) - fetches_before;
    let elapsed = started.elapsed().as_secs();
    for attacker in attackers {
        attacker.abort();
    }
    rotation.abort();
    server.abort();
    rtts.sort_unstable();
    println!("\nJWT front door: {elapsed} s, a new key every {ROTATE_EVERY:?}\n");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| JWT users' round trip p50 / p99 (WS → WT → WS) | {} / {} µs ({} round trips) |",
        percentile(&rtts, 50.0),
        percentile(&rtts, 99.0),
        rtts.len()
    );
    println!(
        "| key-set fetches | {fetches} in {elapsed} s (--jwks-refresh-min {REFRESH_MIN_SECS}s) |"
    );
    for (name, count) in tally.0.lock().unwrap().iter() {
        println!("| {name} | {count} |");
    }
    JwtRun {
        tally,
        rtts,
        fetches,
        fetches_allowed: elapsed / REFRESH_MIN_SECS + 2,
    }
}

/// JWT users `jwt-ws-i` and `jwt-wt-i` trading envelopes, reconnecting
/// every few seconds with tokens signed by the issuer's current key;
/// returns the round trips in microseconds.
async fn jwt_pair(
    gw: Addrs,
    issuer: Arc<Issuer>,
    i: u64,
    until: Instant,
    tally: Arc<Tally>,
) -> Vec<u64> {
    let a = format!("jwt-ws-{i}");
    let b = format!("jwt-wt-{i}");
    let mut rtts = Vec::new();
    while Instant::now() < until {
        let session = tokio::time::timeout(Duration::from_secs(10), async {
            let mut alice = Client::connect(&gw, Kind::WebSocket, &issuer.token(&a)).await;
            let mut bob = Client::connect(&gw, Kind::WebTransport, &issuer.token(&b)).await;
            if alice.recv().await["type"] != "WELCOME" || bob.recv().await["type"] != "WELCOME" {
                return false;
            }
            let reconnect_at = Instant::now() + ROTATE_EVERY;
            while Instant::now() < until.min(reconnect_at) {
                let sent = Instant::now();
                alice.send(&b, "ping", json!(rtts.len())).await;
                let got = bob.recv().await;
                if got["type"] != "ping" || got["originator"] != a.as_str() {
                    return false;
                }
                bob.send(&a, "pong", got["payload"].clone()).await;
                if alice.recv().await["type"] != "pong" {
                    return false;
                }
                rtts.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        })
        .await;
        if session != Ok(true) {
            tally.add("JWT users failed");
        }
    }
    rtts
}

/// Tokens naming keys nobody has (their signatures are garbage), each of
/// which would refetch the key set without the refetch limit.
async fn unknown_kids(gw: Addrs, i: u64, until: Instant, tally: Arc<Tally>) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(hostile_address(i).ip())
        .build()
        .unwrap();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let token = format!(
            "{}.{}.{}",
            b64.encode(format!(r#"{{"alg":"ES256","kid":"forged-{i}-{n}"}}"#)),
            b64.encode(r#"{"sub":"jwt-ws-0","exp":99999999999}"#),
            b64.encode([7u8; 64])
        );
        match http
            .get(format!("http://{}/v1/user", gw.http))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(response) if response.status() == 200 => tally.add("forged tokens taken"),
            Ok(_) => tally.add("forged tokens refused"),
            Err(_) => tally.add("forged token requests failed"),
        }
        // A hundred a second per attacker: a storm against a refetch limit
        // of one a second, without starving the test's own users of CPU.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GETs of the admin routes as a page of another site makes them (no
/// `Origin`, `Sec-Fetch-Site: cross-site`), from loopback.
async fn cross_site_admin(gw: Addrs, until: Instant, tally: Arc<Tally>) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    while Instant::now() < until {
        for path in ["/v1/kick-active-users", "/v1/users"] {
            let obeyed = http
                .get(format!("http://{}{path}", gw.http))
                .header("sec-fetch-site", "cross-site")
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            tally.add(if obeyed {
                "cross-site admin requests obeyed"
            } else {
                "cross-site admin requests refused"
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registrations of the JWT users' names, each connected at once.
async fn name_takeovers(gw: Addrs, until: Instant, tally: Arc<Tally>) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut tokens = std::collections::HashMap::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let name = format!(
            "jwt-{}-{}",
            if n.is_multiple_of(2) { "ws" } else { "wt" },
            n % 4
        );
        let Ok(response) = http
            .post(format!("http://{}/v1/register", gw.http))
            .json(&json!({ "username": name }))
            .send()
            .await
        else {
            continue;
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if body["username"] == name.as_str() {
            tally.add("registered names equal to a JWT user's");
        }
        if let Some(token) = body["token"].as_str() {
            tokens.insert(name.clone(), token.to_owned());
        }
        // Connected again and again with the name's token, as a taker would.
        if let Some(token) = tokens.get(&name)
            && let Ok(ws) = ws_connect(&gw, &format!("?token={token}"), &[]).await
        {
            let mut impostor = Client::Ws(ws);
            let _ = tokio::time::timeout(Duration::from_millis(200), impostor.recv()).await;
            tally.add("registered look-alikes connected");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
