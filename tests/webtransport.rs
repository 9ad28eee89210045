//! What is specific to WebTransport: the two transports reaching each other,
//! the checks before a session is accepted, plain HTTP/3, both loopbacks,
//! the certificate browsers pin, and datagrams nobody reads.

mod common;

use std::time::{Duration, SystemTime};

use common::raw_h3::h3_request;
use common::{Client, GatewayProcess, Kind, TestGateway, within, wt_connect, wt_endpoint};
use serde_json::{Value, json};
use signal_gateway::tls::{CertificateFacts, MAX_HASH_PINNED_VALIDITY};

#[tokio::test]
async fn websocket_and_webtransport_users_talk_both_ways() {
    let gw = TestGateway::start().await;
    let mut ws = gw.user("legacy", Kind::WebSocket).await;
    let mut wt = gw.user("modern", Kind::WebTransport).await;
    ws.send("modern", "video-offer", json!({"sdp": "o"})).await;
    assert_eq!(
        wt.recv().await,
        json!({"target":"modern","type":"video-offer","originator":"legacy","payload":{"sdp":"o"}})
    );
    wt.send("legacy", "video-answer", json!({"sdp": "a"})).await;
    assert_eq!(
        ws.recv().await,
        json!({"target":"legacy","type":"video-answer","originator":"modern","payload":{"sdp":"a"}})
    );
    // The envelope bytes are identical on both transports.
    ws.send("legacy", "same", json!([1])).await;
    wt.send("modern", "same", json!([1])).await;
    let from_ws = ws.recv_text().await;
    let from_wt = wt.recv_text().await;
    assert_eq!(
        from_ws.replace("legacy", "X"),
        from_wt.replace("modern", "X")
    );
}

#[tokio::test]
async fn replacement_works_across_transports() {
    let gw = TestGateway::start().await;
    for (first, second) in [
        (Kind::WebSocket, Kind::WebTransport),
        (Kind::WebTransport, Kind::WebSocket),
    ] {
        let name = format!("user-{first:?}");
        let token = gw.register(&name).await;
        let mut old = Client::connect(&gw, first, &token).await;
        assert_eq!(old.recv().await["type"], "WELCOME");
        let mut new = Client::connect(&gw, second, &token).await;
        assert_eq!(new.recv().await["type"], "WELCOME");
        let closed = old.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4001, "REPLACED"),
            "{first:?} -> {second:?}"
        );
        new.send(&name, "self", Value::Null).await;
        assert_eq!(new.recv().await["type"], "self");
    }
}

#[tokio::test]
async fn session_checks_path_origin_and_token_before_accepting() {
    let gw = TestGateway::start_with(&["--allow-origin", "https://app.example"]).await;
    let token = gw.register("alice").await;
    let connect = http::Method::CONNECT;
    let with_token = format!("/v1/connect?token={token}");

    let (status, body) = h3_request(&gw, connect.clone(), "/v1/elsewhere", &[], true).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = h3_request(&gw, connect.clone(), "/v1/connect", &[], true).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "UNAUTHORIZED"
    );
    let (status, _) = h3_request(&gw, connect.clone(), "/v1/connect?token=forged", &[], true).await;
    assert_eq!(status, 401);
    let (status, body) = h3_request(
        &gw,
        connect.clone(),
        &with_token,
        &[("origin", "https://evil.example")],
        true,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "FORBIDDEN"
    );

    // The same refusals as an independent WebTransport stack sees them.
    assert!(wt_connect(&gw, "", &[]).await.is_err());
    assert!(
        wt_connect(
            &gw,
            &format!("?token={token}"),
            &[("origin", "https://evil.example")]
        )
        .await
        .is_err()
    );
    let own_origin = format!("http://{}", gw.wt);
    for origin in ["https://app.example", own_origin.as_str()] {
        let mut client = Client::Wt(
            wt_connect(&gw, &format!("?token={token}"), &[("origin", origin)])
                .await
                .unwrap(),
        );
        assert_eq!(client.recv().await["type"], "WELCOME", "{origin}");
        client.close().await;
    }
}

#[tokio::test]
async fn native_clients_may_authenticate_with_headers() {
    let gw = TestGateway::start().await;
    let token = gw.register("native").await;
    let bearer = format!("Bearer {token}");
    let cookie = format!("user_token={token}");
    for header in [
        ("authorization", bearer.as_str()),
        ("cookie", cookie.as_str()),
    ] {
        let mut client = Client::Wt(wt_connect(&gw, "", &[header]).await.unwrap());
        assert_eq!(
            client.recv().await["payload"]["username"],
            "native",
            "{}",
            header.0
        );
        client.close().await;
    }
}

#[tokio::test]
async fn plain_http3_requests_reach_the_same_api() {
    let gw = TestGateway::start().await;
    let (status, body) = h3_request(&gw, http::Method::GET, "/healthcheck", &[], false).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    let (status, body) = h3_request(&gw, http::Method::GET, "/v1/cert-hash", &[], false).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["algorithm"],
        "sha-256"
    );
    let (status, _) = h3_request(&gw, http::Method::GET, "/nope", &[], false).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn both_loopbacks_serve_both_transports() {
    let gw = TestGateway::start_with(&["--listen", "localhost:0"]).await;
    let port = gw.http.port();
    assert_eq!(
        gw.wt.port(),
        port,
        "WebTransport defaults to the HTTP port, over UDP"
    );
    let token = gw.register("dual").await;
    for ip in ["127.0.0.1", "[::1]"] {
        let url = format!("ws://{ip}:{port}/v1/connect?token={token}");
        let (mut ws, _) = within("ws connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        use futures::StreamExt;
        let welcome = within("ws welcome", ws.next()).await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("WELCOME"), "{ip}");

        let endpoint = wt_endpoint(&gw);
        let conn = within(
            "wt connect",
            endpoint.connect(format!("https://{ip}:{port}/v1/connect?token={token}")),
        )
        .await
        .unwrap_or_else(|err| panic!("WebTransport over {ip}: {err}"));
        let (_send, recv) = within("open", async {
            conn.open_bi().await.unwrap().await.unwrap()
        })
        .await;
        let mut lines = tokio::io::BufReader::new(recv);
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        within("wt welcome", lines.read_line(&mut line))
            .await
            .unwrap();
        assert!(line.contains("WELCOME"), "{ip}: {line}");
    }
}

#[tokio::test]
async fn the_pinned_hash_is_the_certificate_quic_serves_and_browsers_accept_it() {
    let gw = TestGateway::start().await;
    let token = gw.register("pin").await;
    let client = wt_connect(&gw, &format!("?token={token}"), &[])
        .await
        .unwrap();
    let served = client.conn.peer_identity().expect("server certificate");
    let leaf = served.as_slice()[0].der().to_vec();
    let digest = ring::digest::digest(&ring::digest::SHA256, &leaf);
    assert_eq!(
        digest.as_ref(),
        gw.cert_sha256,
        "what /v1/cert-hash reports is what QUIC serves"
    );

    let facts = CertificateFacts::read(&leaf).unwrap();
    assert!(facts.p256, "ECDSA P-256");
    assert!(
        facts.validity() <= MAX_HASH_PINNED_VALIDITY,
        "valid at most 14 days"
    );
    assert!(
        facts.not_before < SystemTime::now() - Duration::from_secs(60),
        "starts a little in the past"
    );
    for name in ["localhost", "127.0.0.1", "::1"] {
        assert!(facts.names.iter().any(|n| n == name), "{name}");
    }
}

#[tokio::test]
async fn a_session_that_opens_no_stream_is_closed() {
    let gw = TestGateway::start_with(&["--stream-open-timeout", "300ms"]).await;
    let token = gw.register("lazy").await;
    let endpoint = wt_endpoint(&gw);
    let conn = within(
        "connect",
        endpoint.connect(format!("https://{}/v1/connect?token={token}", gw.wt)),
    )
    .await
    .unwrap();
    match within("closed", conn.closed()).await {
        wtransport::error::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.code().into_inner(), 4409);
            assert_eq!(close.reason(), b"STREAM_TIMEOUT");
        }
        other => panic!("expected STREAM_TIMEOUT, got {other:?}"),
    }
}

#[tokio::test]
async fn unread_datagrams_cannot_pin_memory() {
    const SESSIONS: usize = 20;
    const DATAGRAMS: u64 = 500;
    let gw = GatewayProcess::start(&[], "signal_gateway=info").await;
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        let token = gw.register(&format!("dgram{i}")).await;
        let mut client = Client::connect(&gw.addrs, Kind::WebTransport, &token).await;
        assert_eq!(client.recv().await["type"], "WELCOME");
        clients.push(client);
    }
    let before = gw.rss_kib();
    // Browsers need datagram support to open WebTransport at all, so the
    // gateway accepts datagrams; it just never reads them. Each session
    // sends it ~500 KB of them, all put on the wire.
    for client in &clients {
        let Client::Wt(wt) = client else {
            unreachable!("WebTransport clients")
        };
        let size = wt.conn.max_datagram_size().expect("datagrams supported");
        let datagram = vec![b'x'; size.min(1000)];
        for _ in 0..DATAGRAMS {
            wt.conn.send_datagram(&datagram).unwrap();
        }
        within("datagrams sent", async {
            while wt.conn.quic_connection().stats().frame_tx.datagram < DATAGRAMS {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    // A round trip on each session: the gateway has read what came before.
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .send(&format!("dgram{i}"), "after-datagrams", json!(1))
            .await;
        assert_eq!(client.recv().await["type"], "after-datagrams");
    }
    let grown = gw.rss_kib().saturating_sub(before);
    assert!(
        grown < 4096,
        "RSS grew {grown} KiB for ~10 MB of unread datagrams"
    );
}
