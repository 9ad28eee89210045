//! The front door: what a client can make the gateway hold or do before it
//! is authenticated, and what an identity that no longer exists can still
//! do. One regression test per finding of the hostile-client probe, over
//! real sockets.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use common::raw_h3::{
    H3Client, closed_with, flood, get_headers, open_control, quic_connect, response_status,
    try_quic_connect, varint,
};
use common::{
    Client, GatewayProcess, Kind, TestGateway, get_json_at, register_at, status_field, within,
    ws_connect, wt_connect, wt_endpoint_from,
};

const H3_EXCESSIVE_LOAD: u64 = 0x107;
const H3_NO_ERROR: u64 = 0x100;

fn from(ip: &str) -> SocketAddr {
    format!("{ip}:0").parse().unwrap()
}

fn local() -> SocketAddr {
    from("127.0.0.1")
}

/// A reserved frame type (RFC 9114 §7.2.8) declaring a 1 GiB payload: h3
/// buffers such a frame whole before looking at it.
fn huge_reserved_frame_head() -> Vec<u8> {
    let mut head = varint(0x21);
    head.extend(varint(1 << 30));
    head
}

/// The HEADERS frame of a request declaring a 1 GiB header block.
fn huge_headers_head() -> Vec<u8> {
    let mut head = varint(0x01);
    head.extend(varint(1 << 30));
    head
}

/// Four tokenless clients flood one connection each; returns the bytes each
/// got through and the close each saw.
async fn flood_unauthenticated(
    gw: &common::Addrs,
    on_request_stream: bool,
) -> Vec<(usize, Option<(u64, String)>)> {
    let attackers = (0..4).map(|_| async {
        let conn = quic_connect(gw, local(), quinn::TransportConfig::default()).await;
        let mut control = open_control(&conn).await;
        let sent = if on_request_stream {
            let (mut send, _recv) = within("open bi", conn.open_bi()).await.unwrap();
            flood(
                &mut send,
                &huge_headers_head(),
                32 << 20,
                Duration::from_secs(10),
            )
            .await
        } else {
            flood(
                &mut control,
                &huge_reserved_frame_head(),
                32 << 20,
                Duration::from_secs(10),
            )
            .await
        };
        (sent, closed_with(&conn).await)
    });
    futures::future::join_all(attackers).await
}

async fn huge_frames_are_cut_off(on_request_stream: bool) {
    let gw = GatewayProcess::start(&[], "signal_gateway=info").await;
    let before = gw.rss_kib();
    for (sent, closed) in flood_unauthenticated(&gw, on_request_stream).await {
        assert!(
            sent < 1 << 20,
            "an unauthenticated connection pushed {sent} bytes before being cut off"
        );
        assert_eq!(
            closed,
            Some((H3_EXCESSIVE_LOAD, "PRE_SESSION_BYTES".to_owned()))
        );
    }
    let grown = gw.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    let stats = get_json_at(&gw, "/v1/stats").await;
    assert_eq!(
        stats["counters"]["pre_session_closes"]["PRE_SESSION_BYTES"],
        4
    );
    assert_eq!(stats["pending"], 0);
}

#[tokio::test]
async fn a_huge_frame_on_the_control_stream_is_cut_off_before_authentication() {
    huge_frames_are_cut_off(false).await;
}

#[tokio::test]
async fn a_huge_header_block_is_cut_off_before_authentication() {
    huge_frames_are_cut_off(true).await;
}

/// Tokenless connections making a request now and then, from 127.0.0.1.
async fn start_holders(
    gw: &TestGateway,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Option<(u64, String)>>> {
    let mut holders = Vec::new();
    for _ in 0..count {
        let addrs = gw.addrs.clone();
        holders.push(tokio::spawn(async move {
            let mut client = H3Client::connect(&addrs, local()).await;
            loop {
                if client.request("/healthcheck", false).await.is_err() {
                    return closed_with(&client.conn).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    holders
}

#[tokio::test]
async fn unauthenticated_holders_take_none_of_the_slots_users_need() {
    let gw = TestGateway::start_with(&[
        "--max-connections",
        "3",
        "--max-pending-per-ip",
        "4",
        "--handshake-timeout",
        "2s",
    ])
    .await;
    let started = Instant::now();
    let holders = start_holders(&gw, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.hub.pending(), 4);
    // A fifth from the same address is refused...
    let refused = try_quic_connect(&gw, local(), quinn::TransportConfig::default()).await;
    assert!(
        refused.is_err(),
        "a fifth pending connection from one address"
    );
    // ...but users get in: over WebSocket at once, over WebTransport from
    // another address at once.
    let ws_token = gw.register("ws-user").await;
    let mut ws = Client::connect(&gw, Kind::WebSocket, &ws_token).await;
    assert_eq!(ws.recv().await["type"], "WELCOME");
    let wt_token = gw.register("wt-user").await;
    let endpoint = wt_endpoint_from(&gw, from("127.0.0.2"));
    let session = within(
        "WebTransport from another address",
        endpoint.connect(format!("https://{}/v1/connect?token={wt_token}", gw.wt)),
    )
    .await
    .expect("a user from another address is admitted");
    drop(session);
    // The holders are closed at the pre-session deadline, whatever they do.
    for holder in holders {
        let closed = within("holder closed", holder).await.unwrap();
        assert_eq!(
            closed,
            Some((H3_NO_ERROR, "PRE_SESSION_TIMEOUT".to_owned()))
        );
    }
    let held = started.elapsed();
    assert!(held < Duration::from_secs(4), "holders lasted {held:?}");
    // And a user from their address is admitted once they are gone.
    let mut wt = Client::connect(&gw, Kind::WebTransport, &wt_token).await;
    assert_eq!(wt.recv().await["type"], "WELCOME");
}

#[tokio::test]
async fn a_connect_answered_to_a_client_giving_no_credit_times_out() {
    let gw = TestGateway::start_with(&["--write-timeout", "1s", "--handshake-timeout", "8s"]).await;
    let mut stingy = quinn::TransportConfig::default();
    stingy
        .stream_receive_window(quinn::VarInt::from_u32(0))
        .receive_window(quinn::VarInt::from_u32(0));
    let started = Instant::now();
    let mut client = H3Client::connect_with(&gw, local(), stingy).await;
    let request =
        tokio::time::timeout(Duration::from_secs(6), client.request("/v1/connect", true)).await;
    assert!(
        !matches!(request, Ok(Ok(_))),
        "no response can reach a client that gives no credit"
    );
    within("stingy client closed", client.conn.closed()).await;
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(5),
        "the refusal held the connection {held:?}"
    );
    within("pending slot released", async {
        while gw.hub.pending() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn under_pressure_new_clients_prove_their_address_and_still_get_in() {
    let gw = TestGateway::start_with(&["--max-pending-connections", "4"]).await;
    // One tokenless holder is pressure enough for a cap of 4.
    let _holders = start_holders(&gw, 1).await;
    within("holder pending", async {
        while gw.hub.pending() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let token = gw.register("retried").await;
    let mut wt = Client::connect(&gw, Kind::WebTransport, &token).await;
    assert_eq!(wt.recv().await["type"], "WELCOME");
    assert!(
        gw.hub.stats().quic_retries.get() >= 1,
        "the newcomer was sent a Retry"
    );
}

#[tokio::test]
async fn requests_before_authentication_are_counted() {
    let gw = TestGateway::start_with(&["--pre-session-requests", "3"]).await;
    let mut client = H3Client::connect(&gw, local()).await;
    for _ in 0..3 {
        assert_eq!(client.request("/healthcheck", false).await, Ok(200));
    }
    assert!(client.request("/healthcheck", false).await.is_err());
    assert_eq!(
        closed_with(&client.conn).await,
        Some((H3_EXCESSIVE_LOAD, "PRE_SESSION_REQUESTS".to_owned()))
    );
}

#[tokio::test]
async fn an_oversized_http3_header_gets_431_and_the_connection_lives_on() {
    let gw = TestGateway::start().await;
    let conn = quic_connect(&gw, local(), quinn::TransportConfig::default()).await;
    let _control = open_control(&conn).await;
    let big = "x".repeat(20 * 1024);
    let mut statuses = Vec::new();
    for extra in [vec![("x-big", big.as_str())], vec![]] {
        let (mut send, mut recv) = within("open bi", conn.open_bi()).await.unwrap();
        send.write_all(&get_headers("/healthcheck", &extra))
            .await
            .unwrap();
        send.finish().unwrap();
        let response = within("response", recv.read_to_end(64 * 1024))
            .await
            .unwrap();
        statuses.push(response_status(&response));
    }
    assert_eq!(statuses, vec![Some(431), Some(200)]);
}

#[tokio::test]
async fn a_webtransport_session_authorized_before_a_deletion_cannot_take_the_name_back() {
    let gw = TestGateway::start().await;
    let stale_token = gw.register("zoe").await;
    // The stale client's session is accepted, but it has not opened its
    // stream yet.
    let endpoint = wt_endpoint_from(&gw, local());
    let stale = within(
        "stale session",
        endpoint.connect(format!("https://{}/v1/connect?token={stale_token}", gw.wt)),
    )
    .await
    .unwrap();
    let deleted = gw.delete_users().await;
    assert_eq!(deleted["deleted"], 1);
    let new_token = gw.register("zoe").await;
    let mut owner = Client::connect(&gw, Kind::WebSocket, &new_token).await;
    assert_eq!(owner.recv().await["type"], "WELCOME");
    // Now the stale session opens its stream.
    let (mut send, recv) = within("stale stream", async {
        stale.open_bi().await.unwrap().await.unwrap()
    })
    .await;
    send.write_all(b"\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(recv);
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt as _;
    within("stale answer", lines.read_line(&mut line))
        .await
        .unwrap();
    let envelope: Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(envelope["type"], "CLOSE", "{envelope}");
    assert_eq!(envelope["payload"]["reason"], "UNAUTHENTICATED");
    // The owner is untouched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let users = gw.users().await;
    assert_eq!(users["connected"][0]["username"], "zoe");
    assert_eq!(users["connected"][0]["transport"], "websocket");
    owner.send("zoe", "ping", Value::Null).await;
    assert_eq!(owner.recv().await["type"], "ping");
}

/// Connects with a token while its identity is deleted, over and over: a
/// connection either never attaches, or is kicked with the deletion.
/// Either way, no connection outlives the deletion of its identity.
async fn deletion_races_connects(kind: Kind) {
    let gw = TestGateway::start().await;
    for round in 0..40 {
        let name = format!("racer-{round}");
        let token = gw.register(&name).await;
        let addrs = gw.addrs.clone();
        let racer = tokio::spawn(async move {
            let query = format!("?token={token}");
            let client = match kind {
                Kind::WebSocket => ws_connect(&addrs, &query, &[]).await.ok().map(Client::Ws),
                Kind::WebTransport => wt_connect(&addrs, &query, &[]).await.ok().map(Client::Wt),
            };
            // A connection that attached and was never closed would time
            // out here.
            match client {
                Some(mut client) => Some(client.closed().await.code),
                None => None,
            }
        });
        tokio::time::sleep(Duration::from_micros(300 * (round % 8))).await;
        gw.delete_users().await;
        let code = within("racer", racer).await.unwrap();
        assert!(
            matches!(code, None | Some(4000 | 4002)),
            "round {round}: closed with {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let users = gw.users().await;
        assert_eq!(
            users["connected"],
            serde_json::json!([]),
            "round {round}: a connection outlived its identity"
        );
    }
}

#[tokio::test]
async fn deletion_races_websocket_connects() {
    deletion_races_connects(Kind::WebSocket).await;
}

#[tokio::test]
async fn deletion_races_webtransport_connects() {
    deletion_races_connects(Kind::WebTransport).await;
}

#[tokio::test]
async fn admin_routes_refuse_a_dns_rebinding_page() {
    let gw = TestGateway::start().await;
    gw.register("victim").await;
    let host = format!("evil.example:{}", gw.http.port());
    let origin = format!("http://{host}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://{}{path}", gw.http);
    let routes = [
        (reqwest::Method::GET, "/v1/kick-active-users"),
        (reqwest::Method::POST, "/v1/kick-active-users"),
        (reqwest::Method::GET, "/v1/users"),
        (reqwest::Method::DELETE, "/v1/users"),
        (reqwest::Method::GET, "/v1/stats"),
    ];
    for (method, path) in routes {
        for headers in [
            vec![("host", host.as_str()), ("origin", origin.as_str())],
            vec![("host", host.as_str())],
        ] {
            let mut request = client.request(method.clone(), url(path));
            for (name, value) in &headers {
                request = request.header(*name, *value);
            }
            let response = within(path, request.send()).await.unwrap();
            assert_eq!(response.status(), 403, "{method} {path} with {headers:?}");
        }
    }
    assert_eq!(
        gw.users().await["registered"],
        serde_json::json!(["victim"])
    );
}

#[tokio::test]
async fn admin_routes_behind_a_trusted_proxy_refuse_a_dns_rebinding_page() {
    let gw = TestGateway::start_with(&["--trusted-proxy", "127.0.0.1"]).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let own = "http://localhost:10000";
    let evil = "http://evil.example:10000";
    // What a proxy on this machine forwards for a page on port 10000.
    let cases = [
        (
            "the proxy's own page, Host passed through",
            200,
            vec![("host", "localhost:10000"), ("origin", own)],
        ),
        (
            "the proxy's own page, the port only in X-Forwarded-Host",
            200,
            vec![
                ("host", "localhost"),
                ("x-forwarded-host", "localhost:10000"),
                ("origin", own),
            ],
        ),
        (
            "a rebinding page, Host passed through",
            403,
            vec![("host", "evil.example:10000")],
        ),
        (
            "a rebinding page, Host rewritten, X-Forwarded-Host set",
            403,
            vec![
                ("host", "127.0.0.1:8000"),
                ("x-forwarded-host", "evil.example:10000"),
            ],
        ),
        (
            "a rebinding page writing X-Forwarded-Host itself",
            403,
            vec![
                ("host", "evil.example:10000"),
                ("x-forwarded-host", "localhost:10000"),
            ],
        ),
        (
            "a foreign page",
            403,
            vec![
                ("host", "localhost"),
                ("x-forwarded-host", "localhost:10000"),
                ("origin", evil),
            ],
        ),
    ];
    for (what, status, headers) in cases {
        let mut request = client
            .get(format!("http://{}/v1/users", gw.http))
            .header("x-forwarded-for", "127.0.0.1");
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = within(what, request.send()).await.unwrap();
        assert_eq!(response.status(), status, "{what}: {headers:?}");
    }
}

#[tokio::test]
async fn forwarded_entries_that_do_not_parse_end_trust() {
    let gw = TestGateway::start_with(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--register-rate",
        "1",
        "--register-burst",
        "1",
    ])
    .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // A client writing `127.0.0.1` itself, followed by what a proxy wrote and
    // the gateway cannot read, is not taken for loopback.
    for forwarded in [
        "127.0.0.1, unknown",
        "127.0.0.1, ",
        "127.0.0.1, _hidden",
        "127.0.0.1, [::1",
    ] {
        let response = within(
            "admin through a proxy",
            client
                .get(format!("http://{}/v1/users", gw.http))
                .header("x-forwarded-for", forwarded)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 403, "X-Forwarded-For: {forwarded}");
    }
    // Addresses with ports and brackets are read, so per-IP limits key on
    // them: a second registration from 203.0.113.9 is over its rate, one
    // from 203.0.113.10 is not.
    let register = |forwarded: &'static str, name: &'static str| {
        client
            .post(format!("http://{}/v1/register", gw.http))
            .header("x-forwarded-for", forwarded)
            .json(&serde_json::json!({ "username": name }))
            .send()
    };
    let first = within("first", register("203.0.113.9:5555", "a"))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let again = within("again", register("203.0.113.9:6666", "b"))
        .await
        .unwrap();
    assert_eq!(again.status(), 429);
    let other = within("other", register("203.0.113.10", "c"))
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let v6 = within("v6", register("[2001:db8::1]:443", "d"))
        .await
        .unwrap();
    assert_eq!(v6.status(), 200);
    let same_64 = within("same /64", register("[2001:db8::2]", "e"))
        .await
        .unwrap();
    assert_eq!(same_64.status(), 429, "one IPv6 /64 is one client");
}

#[tokio::test]
async fn a_slow_request_body_is_cut_off() {
    let gw = TestGateway::start_with(&["--handshake-timeout", "1s"]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(
        b"POST /v1/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    within("slow body answered", tcp.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"TIMEOUT\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn out_of_descriptors_the_gateway_sheds_clearly_and_recovers() {
    // The other tests' gateways run in this process: it needs more than the
    // usual 1,024 descriptors, unlike the gateway it starts.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open file limit");
    let gw = GatewayProcess::start_under(
        &["prlimit", "--nofile=64:64"],
        &["--handshake-timeout", "30s"],
        "signal_gateway=info",
    )
    .await;
    // Slow bodies hold descriptors (until the body timeout, longer than this
    // test).
    let mut held = Vec::new();
    for _ in 0..80 {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(gw.http).await else {
            break;
        };
        let _ = tcp
            .write_all(
                b"POST /v1/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            )
            .await;
        held.push(tcp);
    }
    // Past the limit, a client is told why instead of being left hanging.
    // (A busy machine is given longer than the usual bound.)
    let shed = tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..20 {
            let mut client = tokio::net::TcpStream::connect(gw.http).await.unwrap();
            let _ = client
                .write_all(
                    b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .await;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut answer)).await;
            let text = String::from_utf8_lossy(&answer).into_owned();
            if text.starts_with("HTTP/1.1 503") {
                return text;
            }
            // Served after all (a descriptor was free): keep it, try again.
            held.push(client);
        }
        panic!("20 connections past the limit, none shed");
    })
    .await;
    let text = shed.expect("no shed answer within 30 s");
    assert!(text.contains("out of file descriptors"), "{text}");
    within("the shedding logged", async {
        while !gw.log_text().contains("out of file descriptors") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(held);
    within("recovered", async {
        loop {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let answer = client
                .get(format!("http://{}/healthcheck", gw.http))
                .send()
                .await;
            if answer.is_ok_and(|response| response.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn extra_webtransport_streams_pin_a_bounded_amount() {
    let gw = GatewayProcess::start(&[], "signal_gateway=info").await;
    let sessions = 12;
    let mut held = Vec::new();
    // Registered first: what the identity store holds is not the sessions'.
    let mut tokens = Vec::new();
    for i in 0..sessions {
        tokens.push(gw.register(&format!("streamer-{i}")).await);
    }
    let before = gw.rss_kib();
    for token in &tokens {
        let mut client = Client::connect(&gw, Kind::WebTransport, token).await;
        assert_eq!(client.recv().await["type"], "WELCOME");
        let Client::Wt(wt) = &client else {
            unreachable!()
        };
        let chunk = vec![0u8; 64 * 1024];
        // As many streams as the gateway lets it open, each filled until
        // flow control stops it.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let Ok(Ok(opening)) =
                    tokio::time::timeout(Duration::from_millis(300), wt.conn.open_bi()).await
                else {
                    break;
                };
                let Ok(Ok((mut send, _recv))) =
                    tokio::time::timeout(Duration::from_millis(300), opening).await
                else {
                    break;
                };
                while tokio::time::timeout(Duration::from_millis(100), send.write_all(&chunk))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {}
            }
        })
        .await;
        held.push(client);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_session = gw.rss_kib().saturating_sub(before) / tokens.len() as u64;
    // The documented bound: one session's receive window (the stream
    // window plus the pre-session budget, 320 KiB by default) and the
    // session's own state.
    assert!(per_session < 400, "{per_session} KiB per session");
}

#[tokio::test]
async fn a_websocket_message_that_never_ends_times_out_despite_pongs() {
    let gw =
        TestGateway::start_with(&["--idle-timeout", "2s", "--keep-alive-interval", "500ms"]).await;
    let token = gw.register("dripper").await;
    let mut ws = ws_connect(&gw, &format!("?token={token}"), &[])
        .await
        .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("WELCOME"));
    let header = FrameHeader {
        is_final: false,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    ws.send(Message::Frame(Frame::from_payload(
        header,
        vec![b'x'; 1000].into(),
    )))
    .await
    .unwrap();
    // Reading answers the gateway's pings with pongs, all along.
    let started = Instant::now();
    let closed = within("dripper closed", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await;
    assert_eq!(closed, Some(4408));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn one_address_holds_a_bounded_number_of_identities() {
    let gw = TestGateway::start_with(&["--max-identities-per-ip", "3"]).await;
    for name in ["a", "b", "c"] {
        gw.register(name).await;
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = within(
        "fourth",
        client
            .post(format!("http://{}/v1/register", gw.http))
            .json(&serde_json::json!({ "username": "d" }))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(status_field(response).await, "TOO_MANY_IDENTITIES");
}

#[tokio::test]
async fn checking_a_token_does_not_keep_an_identity_alive() {
    let gw = TestGateway::start_with(&["--identity-ttl", "1s"]).await;
    let token = register_at(&gw, "squatter").await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let user = || {
        client
            .get(format!("http://{}/v1/user", gw.http))
            .bearer_auth(&token)
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut last = 200;
    while Instant::now() < deadline && last == 200 {
        last = within("user", user()).await.unwrap().status().as_u16();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 404, "GET /v1/user kept the identity alive");
}

/// Finding 5: without `--admin-token`, a page of another site cannot use
/// the admin routes through a browser: a cross-site or same-site GET
/// (`<img src>`, no `Origin`) is refused by its `Sec-Fetch-Site`; the
/// gateway's own pages, typed addresses and tools (no such header) still
/// work.
#[tokio::test]
async fn admin_routes_refuse_requests_other_sites_make() {
    let gw = TestGateway::start_with(&["--allow-origin", "https://dashboard.example"]).await;
    let mut alice = gw.user("alice", Kind::WebSocket).await;
    let admin = |path: &'static str, site: Option<&'static str>| {
        let mut request = gw.http().get(gw.url(path));
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        async move { within(path, request.send()).await.unwrap().status() }
    };
    // A listed origin's own fetch names it, and is let through.
    let listed = within(
        "listed origin",
        gw.http()
            .get(gw.url("/v1/users"))
            .header("sec-fetch-site", "cross-site")
            .header("origin", "https://dashboard.example")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(listed.status(), 200);
    for site in ["cross-site", "same-site"] {
        for path in ["/v1/kick-active-users", "/v1/users", "/v1/stats"] {
            assert_eq!(admin(path, Some(site)).await, 403, "{site} GET {path}");
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), alice.recv())
            .await
            .is_err(),
        "alice was not kicked"
    );
    assert_eq!(admin("/v1/users", Some("same-origin")).await, 200);
    assert_eq!(admin("/v1/users", Some("none")).await, 200);
    assert_eq!(admin("/v1/kick-active-users", None).await, 200);
    assert_eq!(alice.closed().await.code, 4002, "a tool's kick works");
}

/// Finding 10: `--allow-origin '*'` answers `Access-Control-Allow-Origin:
/// *` without credentials, never a foreign origin echoed with credentials;
/// a listed origin still gets credentials.
#[tokio::test]
async fn any_origin_gets_no_credentials() {
    let any = TestGateway::start_with(&["--allow-origin", "*"]).await;
    let listed = TestGateway::start_with(&["--allow-origin", "https://app.example"]).await;
    for (gw, origin, allow, credentials) in [
        (&any, "https://evil.example", "*", None),
        (
            &listed,
            "https://app.example",
            "https://app.example",
            Some("true"),
        ),
    ] {
        let preflight = within(
            "preflight",
            gw.http()
                .request(reqwest::Method::OPTIONS, gw.url("/v1/register"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send(),
        )
        .await
        .unwrap();
        let register = within(
            "register",
            gw.http()
                .post(gw.url("/v1/register"))
                .header("origin", origin)
                .json(&serde_json::json!({ "username": format!("cora-{}", allow.len()) }))
                .send(),
        )
        .await
        .unwrap();
        for response in [&preflight, &register] {
            let headers = response.headers();
            assert_eq!(
                headers
                    .get("access-control-allow-origin")
                    .and_then(|v| v.to_str().ok()),
                Some(allow),
                "{origin}: {headers:?}"
            );
            assert_eq!(
                headers
                    .get("access-control-allow-credentials")
                    .and_then(|v| v.to_str().ok()),
                credentials,
                "{origin}: {headers:?}"
            );
        }
    }
}

/// Finding 12: a full disk answers registrations `503` with a generic
/// message; the data file's path and the error are logged, not shown.
/// The disk fills for the gateway alone: its file-size limit is set to
/// the size its file has (`prlimit`), and SIGXFSZ is ignored, so a write
/// past it fails as a full disk's does.
#[tokio::test]
async fn a_full_disk_shows_no_path_to_clients() {
    let gw = GatewayProcess::start_under(
        &["sh", "-c", "trap '' XFSZ; exec \"$0\" \"$@\""],
        &[
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
    let file = gw.certs.path().join("data").join("identities.redb");
    let size = std::fs::metadata(&file).unwrap().len();
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", gw.child.id().unwrap()))
        .arg(format!("--fsize={size}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut refused = None;
    for n in 0..20_000 {
        let response = within(
            "register",
            http.post(format!("http://{}/v1/register", gw.http))
                .json(&serde_json::json!({ "username": format!("filler-{n}-{}", "x".repeat(40)) }))
                .send(),
        )
        .await
        .unwrap();
        if response.status() != 200 {
            refused = Some((response.status().as_u16(), response.text().await.unwrap()));
            break;
        }
    }
    let (status, body) = refused.expect("the file outgrew its limit");
    assert_eq!(status, 503, "{body}");
    let path = file.display().to_string();
    assert!(
        !body.contains(&path) && !body.contains("identities.redb") && !body.contains("large"),
        "{body}"
    );
    assert!(body.contains("unavailable"), "{body}");
    assert!(gw.log_text().contains("identities.redb"), "the log has it");
}
