//! Every protection, on both transports where it applies: admission limits,
//! rate limits, slow consumers, idle and half-open connections, header and
//! frame limits, graceful shutdown, log hygiene, TLS cookies — and the
//! delivery guarantee.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::raw_h3::h3_try_request;
use common::{
    Client, GatewayProcess, Kind, TestGateway, frozen_client, status_field, within, ws_connect,
    wt_connect,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

every_transport!(
    connection_cap_refuses_before_any_work,
    per_ip_connection_rate_refuses_before_any_work,
    envelope_rate_limit_answers_then_closes,
    slow_consumer_is_disconnected_and_nobody_else_waits,
    vanished_clients_leave_within_the_idle_timeout,
    shutdown_drains_queued_envelopes_then_closes_everyone,
    every_accepted_envelope_is_delivered_or_answered,
    every_close_the_gateway_makes_is_counted_once,
);

/// Tries to open one more realtime connection; `Err` carries what refused it.
async fn try_connect(gw: &TestGateway, kind: Kind, token: &str) -> Result<Client, String> {
    let query = format!("?token={token}");
    match kind {
        Kind::WebSocket => match ws_connect(gw, &query, &[]).await {
            Ok(ws) => Ok(Client::Ws(ws)),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(format!("HTTP {}", response.status().as_u16()))
            }
            Err(other) => Err(other.to_string()),
        },
        Kind::WebTransport => wt_connect(gw, &query, &[])
            .await
            .map(Client::Wt)
            .map_err(|e| e.to_string()),
    }
}

async fn connection_cap_refuses_before_any_work(kind: Kind) {
    let gw = TestGateway::start_with(&["--max-connections", "2"]).await;
    let _a = gw.user("a", kind).await;
    let b = gw.user("b", kind).await;
    let token = gw.register("c").await;
    let refused = try_connect(&gw, kind, &token)
        .await
        .err()
        .expect("third connection refused");
    if kind == Kind::WebSocket {
        assert_eq!(refused, "HTTP 503");
    }
    assert_eq!(gw.hub.admitted(), 2);
    b.close().await;
    within("slot released", async {
        while gw.hub.admitted() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut c = try_connect(&gw, kind, &token)
        .await
        .expect("a slot is free again");
    assert_eq!(c.recv().await["type"], "WELCOME");
}

async fn per_ip_connection_rate_refuses_before_any_work(kind: Kind) {
    let gw = TestGateway::start_with(&["--connect-rate", "1", "--connect-burst", "3"]).await;
    let token = gw.register("a").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            try_connect(&gw, kind, &token)
                .await
                .expect("within the burst"),
        );
    }
    let refused = try_connect(&gw, kind, &token)
        .await
        .err()
        .expect("over the rate");
    if kind == Kind::WebSocket {
        assert_eq!(refused, "HTTP 429");
    }
}

#[tokio::test]
async fn websocket_rate_refusal_says_when_to_retry() {
    let gw = TestGateway::start_with(&["--connect-rate", "1", "--connect-burst", "1"]).await;
    let upgrade = || {
        gw.http()
            .get(gw.url("/v1/connect"))
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
    };
    assert_eq!(upgrade().await.unwrap().status(), 101);
    let second = upgrade().await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(status_field(second).await, "RATE_LIMITED");
}

#[tokio::test]
async fn registration_rate_and_identity_cap() {
    let gw = TestGateway::start_with(&[
        "--register-rate",
        "1",
        "--register-burst",
        "3",
        "--max-identities",
        "100",
    ])
    .await;
    for i in 0..3 {
        gw.register(&format!("u{i}")).await;
    }
    let response = gw
        .http()
        .post(gw.url("/v1/register"))
        .json(&json!({"username": "u4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(status_field(response).await, "RATE_LIMITED");

    let gw = TestGateway::start_with(&["--max-identities", "2"]).await;
    gw.register("a").await;
    gw.register("b").await;
    let response = gw
        .http()
        .post(gw.url("/v1/register"))
        .json(&json!({"username": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(status_field(response).await, "UNAVAILABLE");
}

#[tokio::test]
async fn unseen_identities_expire_and_connected_ones_stay() {
    let gw = TestGateway::start_with(&["--identity-ttl", "400ms"]).await;
    let old_token = gw.register("old").await;
    let mut online = gw.user("online", Kind::WebSocket).await;
    // Checking the token would count as being seen, so just wait.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let response = gw
        .http()
        .get(gw.url("/v1/user"))
        .bearer_auth(&old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "the unseen identity expired");
    let again = gw
        .http()
        .post(gw.url("/v1/register"))
        .json(&json!({"username": "old"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status_field(again).await, "SUCCESS", "the name is free");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let names = gw.users().await;
    assert!(
        names["registered"]
            .as_array()
            .unwrap()
            .contains(&json!("online")),
        "a connected user never expires"
    );
    online.send("online", "still-here", Value::Null).await;
    assert_eq!(online.recv().await["type"], "still-here");
}

async fn envelope_rate_limit_answers_then_closes(kind: Kind) {
    let gw = TestGateway::start_with(&["--envelope-rate", "1", "--envelope-burst", "5"]).await;
    let mut alice = gw.user("alice", kind).await;
    for i in 0..6 {
        alice.send("alice", "burst", json!(i)).await;
    }
    for i in 0..5 {
        assert_eq!(alice.recv().await["payload"], json!(i), "the burst passes");
    }
    let limited = alice.recv().await;
    assert_eq!(limited["type"], "RATE_LIMITED");
    assert!(limited["payload"]["retry_after_ms"].as_u64().unwrap() <= 1000);
    // Ignoring the answer and flooding on closes the connection.
    for _ in 0..20 {
        alice.send("alice", "flood", Value::Null).await;
    }
    let closed = alice.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4029, "RATE_LIMITED")
    );
}

async fn slow_consumer_is_disconnected_and_nobody_else_waits(kind: Kind) {
    let gw = TestGateway::start_with(&["--queue-envelopes", "8", "--write-timeout", "1s"]).await;
    let mut alice = gw.user("alice", kind).await;
    let _bob = gw.user("bob", kind).await; // never reads again
    let mut carol = gw.user("carol", kind).await;
    let mut dave = gw.user("dave", kind).await;
    let payload = json!("x".repeat(60_000));

    let flood = async {
        for sent in 1..=3000 {
            alice.send("bob", "flood", payload.clone()).await;
            if sent % 20 == 0 && !gw.hub.is_connected("bob") {
                return sent;
            }
        }
        panic!("bob was never disconnected");
    };
    let others = async {
        for n in 0..30 {
            carol.send("dave", "ping", json!(n)).await;
            assert_eq!(dave.recv().await["payload"], json!(n));
            dave.send("carol", "pong", json!(n)).await;
            assert_eq!(carol.recv().await["payload"], json!(n));
        }
    };
    let (sent, ()) = tokio::join!(flood, others);
    assert!(sent <= 3000);
    // alice was told, and is still connected herself.
    let told = within("alice told", async {
        loop {
            let v = alice.recv().await;
            match v["type"].as_str().unwrap() {
                "TARGET_SLOW" | "UNDELIVERED" => return v,
                "TARGET_NOT_FOUND" => continue,
                other => panic!("unexpected {other}: {v}"),
            }
        }
    })
    .await;
    assert_eq!(told["payload"]["target"], "bob");
    alice.send("alice", "alive", Value::Null).await;
    loop {
        let v = alice.recv().await;
        if v["type"] == "alive" {
            break;
        }
    }
    // The close is counted when it is sent, once bob's stalled write gives up.
    within("the close counted", async {
        while !gw
            .hub
            .stats()
            .snapshot()
            .closes
            .contains_key("SLOW_CONSUMER")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let closes = gw.hub.stats().snapshot().closes;
    assert_eq!(closes.get("SLOW_CONSUMER"), Some(&1), "{closes:?}");
}

async fn vanished_clients_leave_within_the_idle_timeout(kind: Kind) {
    let gw = TestGateway::start_with(&[
        "--idle-timeout",
        "1s",
        "--keep-alive-interval",
        "250ms",
        "--resume-window",
        "1s",
    ])
    .await;
    let mut alive = gw.user("alive", kind).await;
    let token = gw.register("ghost").await;
    let frozen = frozen_client(&gw, kind, &token, Duration::from_secs(6)).await;
    gw.wait_connected("ghost attached", |users| {
        users.iter().any(|u| u["username"] == "ghost")
    })
    .await;
    // Meanwhile a client that is idle but alive stays connected past the
    // idle timeout: it acknowledges keep-alives / answers pings (a WebSocket
    // client does so while it reads, as browsers always do).
    let ghost_dropped = gw.wait_connected("ghost dropped", |users| {
        !users.iter().any(|u| u["username"] == "ghost")
    });
    let stays_alive = async {
        for _ in 0..10 {
            alive.send("alive", "tick", Value::Null).await;
            assert_eq!(alive.recv().await["type"], "tick");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::join!(ghost_dropped, stays_alive);
    // A vanished client is away (its envelopes held) for the resume
    // window, then gone.
    alive.send("ghost", "hello", Value::Null).await;
    let answer = alive.recv().await;
    assert!(
        matches!(
            answer["type"].as_str(),
            Some("EXPIRED" | "TARGET_NOT_FOUND")
        ),
        "{answer}"
    );
    alive.send("ghost", "hello", Value::Null).await;
    assert_eq!(alive.recv().await["type"], "TARGET_NOT_FOUND");
    gw.wait_connected("alive stays", |users| {
        users.iter().any(|u| u["username"] == "alive")
    })
    .await;
    tokio::task::spawn_blocking(move || frozen.join().unwrap())
        .await
        .unwrap();
}

async fn shutdown_drains_queued_envelopes_then_closes_everyone(kind: Kind) {
    let mut gw = TestGateway::start_with(&["--shutdown-timeout", "5s"]).await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    for i in 0..50 {
        alice.send("bob", "n", json!(i)).await;
    }
    within("forwarded", async {
        while gw.hub.stats().forwarded.get() < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let bob_reads = async {
        for i in 0..50 {
            assert_eq!(
                bob.recv().await["payload"],
                json!(i),
                "queued envelopes first"
            );
        }
        bob.closed().await
    };
    let (took, bob_closed, alice_closed) = tokio::join!(gw.shutdown(), bob_reads, alice.closed());
    for closed in [bob_closed, alice_closed] {
        assert_eq!((closed.code, closed.reason.as_str()), (1001, "SHUTDOWN"));
        assert_eq!(closed.envelope.unwrap()["reconnect"], true);
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The guarantee, checked from the clients' side: while bob is replaced and
/// then leaves in the middle of alice's stream, every envelope alice sends
/// reaches exactly one of bob's connections or comes back to alice as an
/// error — never both, never twice, never neither — in order per connection.
///
/// Phases: 0..200 go to bob1; once bob1 has read 150 of them, bob2 replaces
/// it (the rest are in flight); 200..400 go to bob2; once bob2 has read up
/// to 350, it closes while 400..500 are sent; 500..600 are sent after it
/// left.
async fn every_accepted_envelope_is_delivered_or_answered(kind: Kind) {
    const TOTAL: usize = 600;
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let bob_token = gw.register("bob").await;
    let mut bob1 = Client::connect(&gw, kind, &bob_token).await;
    assert_eq!(bob1.recv().await["type"], "WELCOME");
    // The highest sequence number each of bob's connections has read.
    let (bob1_tx, mut bob1_rx) = tokio::sync::watch::channel(0usize);
    let (bob2_tx, mut bob2_rx) = tokio::sync::watch::channel(0usize);
    let (phase_tx, phase_rx) = tokio::sync::watch::channel("bob1");
    let (gone_tx, mut gone_rx) = tokio::sync::watch::channel(false);
    let (attached_tx, mut attached_rx) = tokio::sync::watch::channel(false);
    let seq_of = |v: &Value| v["type"].as_str().unwrap()[1..].parse::<usize>().unwrap();

    let send_all = async move {
        for i in 0..TOTAL {
            match i {
                200 => {
                    bob1_rx.wait_for(|n| *n >= 150).await.unwrap();
                    phase_tx.send_replace("replace");
                    attached_rx.wait_for(|attached| *attached).await.unwrap();
                }
                400 => {
                    bob2_rx.wait_for(|n| *n >= 350).await.unwrap();
                    phase_tx.send_replace("leave");
                }
                500 => {
                    gone_rx.wait_for(|gone| *gone).await.unwrap();
                }
                _ => {}
            }
            alice.send("bob", &format!("m{i}"), json!(i)).await;
            if i % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
        alice.send("alice", "done", Value::Null).await;
        let mut errors = Vec::new();
        loop {
            let v = alice.recv().await;
            match v["type"].as_str().unwrap() {
                "done" => return errors,
                "TARGET_NOT_FOUND" | "UNDELIVERED" | "TARGET_SLOW" => {
                    errors.push(v["payload"]["type"].as_str().unwrap().to_owned());
                }
                other => panic!("unexpected {other}"),
            }
        }
    };
    let bob1_reads = async move {
        let mut got = Vec::new();
        loop {
            let v = bob1.recv().await;
            match v["type"].as_str().unwrap() {
                "CLOSE" => return got,
                kind => {
                    bob1_tx.send_replace(seq_of(&v));
                    got.push(kind.to_owned());
                }
            }
        }
    };
    let bob2_lifecycle = {
        let mut phase = phase_rx;
        let gw = &gw;
        async move {
            phase.wait_for(|p| *p == "replace").await.unwrap();
            let mut bob2 = Client::connect(gw, kind, &bob_token).await;
            assert_eq!(bob2.recv().await["type"], "WELCOME");
            attached_tx.send_replace(true);
            let mut got = Vec::new();
            // Read until alice moves on to the leaving phase, then close
            // while her envelopes are still coming.
            loop {
                tokio::select! {
                    v = bob2.recv() => {
                        bob2_tx.send_replace(seq_of(&v));
                        got.push(v["type"].as_str().unwrap().to_owned());
                    }
                    _ = phase.wait_for(|p| *p == "leave") => break,
                }
            }
            for v in bob2.close_and_drain().await {
                let kind = v["type"].as_str().unwrap();
                if kind != "CLOSE" {
                    got.push(kind.to_owned());
                }
            }
            gone_tx.send_replace(true);
            got
        }
    };
    let (errors, got1, got2) = within("exchange", async {
        tokio::join!(send_all, bob1_reads, bob2_lifecycle)
    })
    .await;

    let seq = |names: &[String]| -> Vec<usize> {
        names.iter().map(|n| n[1..].parse().unwrap()).collect()
    };
    let (one, two, failed) = (seq(&got1), seq(&got2), seq(&errors));
    assert!(one.windows(2).all(|w| w[0] < w[1]), "in order on bob1");
    assert!(two.windows(2).all(|w| w[0] < w[1]), "in order on bob2");
    let mut all: Vec<usize> = one.iter().chain(&two).chain(&failed).copied().collect();
    let unique: BTreeSet<usize> = all.iter().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all.len(),
        unique.len(),
        "nothing delivered twice or both delivered and answered"
    );
    assert_eq!(unique, (0..TOTAL).collect::<BTreeSet<_>>(), "nothing lost");
    assert!(
        one.len() >= 150 && two.len() >= 150,
        "bob1 read {}, bob2 read {}",
        one.len(),
        two.len()
    );
    assert_eq!(
        failed.iter().filter(|n| **n >= 500).count(),
        100,
        "sent after bob left: all answered"
    );

    // The gateway's own books agree.
    within("connections closed", async {
        while gw.hub.connections() > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let stats = gw.hub.stats().snapshot();
    let outcomes = stats.after_close
        + stats.invalid
        + stats.rate_limited
        + stats.target_not_found
        + stats.target_slow
        + stats.to_gateway
        + stats.forwarded;
    assert_eq!(stats.frames_received, outcomes, "{stats:?}");
    assert_eq!(
        stats.forwarded,
        stats.written + stats.undelivered_reported + stats.undelivered_unreported,
        "{stats:?}"
    );
}

#[tokio::test]
async fn oversized_headers_are_refused_on_http1_and_http3() {
    let gw = TestGateway::start_with(&["--max-header-bytes", "16384"]).await;
    let big = "x".repeat(20_000);
    let response = gw
        .http()
        .get(gw.url("/healthcheck"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let refused = h3_try_request(
        &gw,
        http::Method::GET,
        "/healthcheck",
        &[("x-big", &big)],
        false,
    )
    .await;
    assert!(!matches!(refused, Ok((200, _))), "{refused:?}");
    let small = h3_try_request(
        &gw,
        http::Method::GET,
        "/healthcheck",
        &[("x-small", "1")],
        false,
    )
    .await;
    assert_eq!(small, Ok((200, "success".to_owned())));
}

#[tokio::test]
async fn slow_and_silent_http_clients_are_cut_off() {
    let gw = TestGateway::start_with(&["--handshake-timeout", "500ms"]).await;
    let mut silent = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut trickle = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    trickle
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut trickle] {
        let mut buf = vec![0u8; 1024];
        let ended = within("server hangs up", async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        });
        ended.await;
    }
}

#[tokio::test]
async fn binary_exits_zero_on_sigterm_after_closing_clients_and_logs_no_secrets() {
    let mut gw = GatewayProcess::start(&[], "signal_gateway=debug,info").await;
    let token = gw.register("alice").await;
    let mut ws = Client::connect(&gw, Kind::WebSocket, &token).await;
    assert_eq!(ws.recv().await["type"], "WELCOME");
    let bob_token = gw.register("bob").await;
    let mut wt = Client::connect(&gw, Kind::WebTransport, &bob_token).await;
    assert_eq!(wt.recv().await["type"], "WELCOME");
    let secret = "a=candidate:SECRET-SDP-192.0.2.99";
    ws.send("bob", "ice-candidate", json!({"candidate": secret}))
        .await;
    assert_eq!(wt.recv().await["payload"]["candidate"], secret);

    gw.terminate();
    let (ws_closed, wt_closed) = tokio::join!(ws.closed(), wt.closed());
    assert_eq!(ws_closed.code, 1001);
    assert_eq!(wt_closed.code, 1001);
    let status = within("gateway exits", gw.child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let log = gw.log_text();
    assert!(log.contains("shutting down"), "{log}");
    for secret in [secret, &token, &bob_token] {
        assert!(!log.contains(secret), "the log must not contain {secret}");
    }
}

#[tokio::test]
async fn tls_mode_serves_https_and_wss_with_secure_cookies() {
    let gw = TestGateway::start_with(&["--tls"]).await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&gw.cert_der).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let response = https
        .post(format!("https://{}/v1/register", gw.http))
        .json(&json!({"username": "secure"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=86400", gw.wt.port())
    );
    let cookies: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies.iter().all(|c| c.ends_with("; Secure")),
        "{cookies:?}"
    );
    let token = response.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(gw.cert_der.clone()))
        .unwrap();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let stream = connector
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let url = format!("wss://{}/v1/connect?token={token}", gw.http);
    let (mut wss, _) = within("wss", tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    use futures::StreamExt;
    let welcome = within("welcome", wss.next()).await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("WELCOME"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_limits_apply_to_the_forwarded_client() {
    let gw = TestGateway::start_with(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--register-rate",
        "1",
        "--register-burst",
        "1",
    ])
    .await;
    let register = |name: &str, client: &str| {
        gw.http()
            .post(gw.url("/v1/register"))
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .json(&json!({ "username": name }))
            .send()
    };
    assert_eq!(register("a", "203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(
        register("b", "203.0.113.1").await.unwrap().status(),
        429,
        "same client"
    );
    assert_eq!(
        register("c", "203.0.113.2").await.unwrap().status(),
        200,
        "another client"
    );
    let admin = gw
        .http()
        .get(gw.url("/v1/users"))
        .header("x-forwarded-for", "203.0.113.1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        403,
        "a remote client behind the local proxy is not loopback"
    );

    // Without --trusted-proxy the header is ignored: everyone is 127.0.0.1.
    let direct = TestGateway::start_with(&["--register-rate", "1", "--register-burst", "1"]).await;
    let forged = |name: &str, client: &str| {
        direct
            .http()
            .post(direct.url("/v1/register"))
            .header("x-forwarded-for", client.to_owned())
            .json(&json!({ "username": name }))
            .send()
    };
    assert_eq!(forged("a", "203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(forged("b", "203.0.113.2").await.unwrap().status(), 429);
}

/// The books count every close the gateway makes, once, whoever decided
/// it: the registry (replaced, kicked, shutdown), the session (a frame too
/// big), the attach (no valid token). They must equal what the clients saw.
async fn every_close_the_gateway_makes_is_counted_once(kind: Kind) {
    let mut gw = TestGateway::start_with(&["--max-envelope-bytes", "1024"]).await;
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    let mut note = |closed: common::Closed| *seen.entry(closed.reason).or_default() += 1;

    let token = gw.register("ann").await;
    let mut first = Client::connect(&gw, kind, &token).await;
    first.recv().await;
    let mut second = Client::connect(&gw, kind, &token).await;
    second.recv().await;
    note(first.closed().await);

    let mut big = gw.user("ben", kind).await;
    big.send_text(&format!(
        "{{\"target\":\"ben\",\"type\":\"t\",\"payload\":\"{}\"}}",
        "x".repeat(2000)
    ))
    .await;
    note(big.closed().await);

    let mut cid = gw.user("cid", kind).await;
    let kicked = within(
        "kick",
        gw.http().get(gw.url("/v1/kick-active-users")).send(),
    )
    .await
    .unwrap();
    assert_eq!(kicked.status(), 200);
    note(second.closed().await);
    note(cid.closed().await);

    if kind == Kind::WebSocket {
        let mut stranger = Client::Ws(ws_connect(&gw, "?token=nobody", &[]).await.unwrap());
        note(stranger.closed().await);
    }

    let mut dee = gw.user("dee", kind).await;
    let (closed, _) = tokio::join!(dee.closed(), gw.shutdown());
    note(closed);

    let counted: std::collections::BTreeMap<String, u64> = gw
        .hub
        .stats()
        .snapshot()
        .closes
        .into_iter()
        .map(|(reason, count)| (reason.to_owned(), count))
        .collect();
    assert_eq!(counted, seen);
    let mut expected = vec![
        ("KICKED", 2),
        ("MESSAGE_TOO_BIG", 1),
        ("REPLACED", 1),
        ("SHUTDOWN", 1),
    ];
    if kind == Kind::WebSocket {
        expected.push(("UNAUTHENTICATED", 1));
    }
    let expected: std::collections::BTreeMap<String, u64> = expected
        .into_iter()
        .map(|(reason, count)| (reason.to_owned(), count))
        .collect();
    assert_eq!(counted, expected);
}
