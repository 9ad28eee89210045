//! What is specific to WebTransport: the two transports reaching each other,
//! the checks before a session is accepted, plain HTTP/3, both loopbacks,
//! the certificate browsers pin, datagrams nobody reads, and the HTTP/3
//! SETTINGS of every WebTransport draft a browser ships.

mod common;

use std::time::{Duration, SystemTime};

use common::raw_h3::{
    frame, h3_request, open_control_with, qpack_fields, quic_connect, response_status,
    server_settings, varint,
};
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
        json!({"target":"modern","type":"video-offer","originator":"legacy","payload":{"sdp":"o"},"seq":1})
    );
    wt.send("legacy", "video-answer", json!({"sdp": "a"})).await;
    assert_eq!(
        ws.recv().await,
        json!({"target":"legacy","type":"video-answer","originator":"modern","payload":{"sdp":"a"},"seq":1})
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

/// What the gateway's SETTINGS must say, by draft: Chromium and Firefox
/// read draft-02's pair, Safari 26.4+ needs draft-13/14's
/// `SETTINGS_WT_MAX_SESSIONS` of at least 1, draft-15 replaced it with
/// `SETTINGS_WT_ENABLED`. With one session per connection, WebTransport
/// flow control is off (draft-14 §5.1); its initial limits allow one stream
/// of each kind and as much data as QUIC allows, in case a browser applies them.
const WEBTRANSPORT_SETTINGS: [(u64, u64, &str); 10] = [
    (0x08, 1, "ENABLE_CONNECT_PROTOCOL (RFC 9220)"),
    (0x33, 1, "H3_DATAGRAM (RFC 9297)"),
    (0x2b60_3742, 1, "ENABLE_WEBTRANSPORT (draft-02)"),
    (0x2b60_3743, 1, "WEBTRANSPORT_MAX_SESSIONS (draft-02)"),
    (0xc671_706a, 1, "WEBTRANSPORT_MAX_SESSIONS (draft-07)"),
    (0x14e9_cd29, 1, "WT_MAX_SESSIONS (draft-13/14)"),
    (0x2c7c_f000, 1, "WT_ENABLED (draft-15)"),
    (0x2b64, 1, "WT_INITIAL_MAX_STREAMS_UNI (draft-13/14)"),
    (0x2b65, 1, "WT_INITIAL_MAX_STREAMS_BIDI (draft-13/14)"),
    (0x2b61, (1 << 30) - 1, "WT_INITIAL_MAX_DATA (draft-13/14)"),
];

#[tokio::test]
async fn settings_carry_every_webtransport_dialect() {
    let gw = TestGateway::start().await;
    let conn = quic_connect(
        &gw,
        "127.0.0.1:0".parse().unwrap(),
        quinn::TransportConfig::default(),
    )
    .await;
    let _control = open_control_with(&conn, &[(0x33, 1)]).await;
    let settings = server_settings(&conn).await;
    let value = |id: u64| {
        let found: Vec<u64> = settings
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{id:#x} sent {} times", found.len());
        found.first().copied()
    };
    for (id, expected, name) in WEBTRANSPORT_SETTINGS {
        assert_eq!(
            value(id),
            Some(expected),
            "{name} ({id:#x}) in {settings:x?}"
        );
    }
    assert!(
        value(0x06).is_some_and(|v| v > 0),
        "SETTINGS_MAX_FIELD_SECTION_SIZE in {settings:x?}"
    );
}

/// Opens a session the way a client of one WebTransport draft does: its
/// SETTINGS carry only that draft's codepoint, its CONNECT `:protocol
/// webtransport` with Chromium's draft-02 header or without it. Returns the
/// CONNECT's status and, on 200, the first line of the session's stream.
async fn connect_in_dialect(
    gw: &TestGateway,
    setting: u64,
    draft02_header: bool,
    token: &str,
) -> (u16, String) {
    let conn = quic_connect(
        gw,
        "127.0.0.1:0".parse().unwrap(),
        quinn::TransportConfig::default(),
    )
    .await;
    let _control = open_control_with(&conn, &[(0x08, 1), (0x33, 1), (setting, 1)]).await;
    let (mut send, mut recv) = within("open CONNECT stream", conn.open_bi()).await.unwrap();
    let path = format!("/v1/connect?token={token}");
    let mut fields = vec![
        (":method", "CONNECT"),
        (":protocol", "webtransport"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path.as_str()),
    ];
    if draft02_header {
        fields.push(("sec-webtransport-http3-draft02", "1"));
    }
    send.write_all(&frame(0x01, &qpack_fields(&fields)))
        .await
        .unwrap();
    let mut head = Vec::new();
    let status = loop {
        if let Some(status) = response_status(&head) {
            break status;
        }
        match within("CONNECT response", recv.read_chunk(4096, true)).await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk.bytes),
            other => panic!("{setting:#x}: no response to the CONNECT: {other:?}"),
        }
    };
    if status != 200 {
        return (status, String::new());
    }
    // A WebTransport stream of the session (0x41, session id): the gateway
    // greets on it.
    let (mut wt_send, mut wt_recv) = within("open session stream", conn.open_bi()).await.unwrap();
    let mut header = varint(0x41);
    header.extend(varint(u64::from(send.id())));
    wt_send.write_all(&header).await.unwrap();
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        match within("first line", wt_recv.read_chunk(4096, true)).await {
            Ok(Some(chunk)) => line.extend_from_slice(&chunk.bytes),
            other => panic!("{setting:#x}: session stream ended: {other:?}"),
        }
    }
    (status, String::from_utf8_lossy(&line).into_owned())
}

#[tokio::test]
async fn sessions_open_in_every_webtransport_dialect() {
    let gw = TestGateway::start().await;
    for (dialect, setting, draft02_header) in [
        ("draft-02 (Chromium, Firefox)", 0x2b60_3742, true),
        ("draft-02 without its header", 0x2b60_3742, false),
        ("draft-07", 0xc671_706a, false),
        ("draft-13/14 (Safari 26.4+)", 0x14e9_cd29, false),
        (
            "draft-14 settings with the draft-02 header",
            0x14e9_cd29,
            true,
        ),
        ("draft-15", 0x2c7c_f000, false),
    ] {
        let name = format!("dialect-{setting:x}-{draft02_header}");
        let token = gw.register(&name).await;
        let (status, line) = connect_in_dialect(&gw, setting, draft02_header, &token).await;
        assert_eq!(status, 200, "{dialect}");
        let welcome: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(
            (
                welcome["type"].as_str(),
                welcome["payload"]["username"].as_str()
            ),
            (Some("WELCOME"), Some(name.as_str())),
            "{dialect}"
        );
    }
}
