//! Resume across a blink, against a real gateway: a raw client receiving a
//! stream of envelopes loses its path mid-stream (a TCP proxy that
//! freezes and then resets, or a UDP path that stops carrying datagrams),
//! reconnects a second later with `resume=N`, and has every envelope
//! exactly once, in order, while the sender hears nothing. Away users are
//! held for, then `EXPIRED`; a clean close is gone at once; the bounds
//! hold.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{TcpProxy, UdpProxy};
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::protocol::Message;

/// Envelopes in the stream, and how fast they are sent.
const ENVELOPES: i64 = 1000;
const SEND_EVERY: Duration = Duration::from_millis(2);
/// client.js's cadence: an ACK every 32 envelopes or every second.
const ACK_EVERY: usize = 32;
const ACK_AFTER: Duration = Duration::from_secs(1);

/// What one read gave.
enum Next {
    Envelope(Value),
    /// The connection failed or ended.
    Broken,
    /// Nothing arrived in time.
    Quiet,
}

/// The next envelope, without panicking on a broken connection.
async fn next(client: &mut Client, wait: Duration) -> Next {
    let deadline = tokio::time::Instant::now() + wait;
    match client {
        Client::Ws(ws) => loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Next::Quiet,
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Next::Envelope(serde_json::from_str(&text).unwrap());
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(_) => return Next::Broken,
            }
        },
        Client::Wt(wt) => {
            let mut line = String::new();
            match tokio::time::timeout_at(deadline, wt.recv.read_line(&mut line)).await {
                Err(_) => Next::Quiet,
                Ok(Ok(0) | Err(_)) => Next::Broken,
                Ok(Ok(_)) => Next::Envelope(serde_json::from_str(line.trim_end()).unwrap()),
            }
        }
    }
}

/// Sends a line without panicking (the path may be dead).
async fn try_send(client: &mut Client, text: &str) {
    let send = async {
        match client {
            Client::Ws(ws) => {
                let _ = ws.send(Message::text(text)).await;
            }
            Client::Wt(wt) => {
                let _ = wt.send.write_all(format!("{text}\n").as_bytes()).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
}

/// Connects `token` to the gateway at `addrs` on `kind`, with `query`
/// after the token.
async fn connect(addrs: &Addrs, kind: Kind, token: &str, query: &str) -> Client {
    let query = format!("?token={token}{query}");
    match kind {
        Kind::WebSocket => Client::Ws(ws_connect(addrs, &query, &[]).await.expect("ws connects")),
        Kind::WebTransport => {
            Client::Wt(wt_connect(addrs, &query, &[]).await.expect("wt connects"))
        }
    }
}

/// A receiving client as the README describes one: it processes each
/// envelope once, remembers the highest `seq`, and acknowledges.
#[derive(Default)]
struct Receiver {
    payloads: Vec<i64>,
    last_seq: u64,
    unacked: usize,
    acked_at: Option<Instant>,
    session: String,
}

impl Receiver {
    /// Reads the WELCOME; returns its payload.
    async fn welcome(&mut self, client: &mut Client) -> Value {
        let Next::Envelope(welcome) = next(client, TIMEOUT).await else {
            panic!("no WELCOME");
        };
        assert_eq!(welcome["type"], "WELCOME");
        self.acked_at = Some(Instant::now());
        welcome["payload"].clone()
    }

    /// Reads until `until` says stop, the connection breaks, or nothing
    /// comes for `quiet`; returns whether it broke.
    async fn read(
        &mut self,
        client: &mut Client,
        quiet: Duration,
        until: impl Fn(&Receiver) -> bool,
    ) -> bool {
        while !until(self) {
            match next(client, quiet).await {
                Next::Envelope(envelope) => self.process(client, envelope).await,
                Next::Broken => return true,
                Next::Quiet => return false,
            }
        }
        false
    }

    async fn process(&mut self, client: &mut Client, envelope: Value) {
        let seq = envelope["seq"].as_u64().expect("every envelope has a seq");
        assert!(
            seq > self.last_seq,
            "seq {seq} after {}: a duplicate or out of order",
            self.last_seq
        );
        assert_eq!(
            envelope["type"], "n",
            "only the stream's envelopes: {envelope}"
        );
        self.last_seq = seq;
        self.payloads.push(envelope["payload"].as_i64().unwrap());
        self.unacked += 1;
        if self.unacked >= ACK_EVERY || self.acked_at.is_some_and(|at| at.elapsed() >= ACK_AFTER) {
            self.ack(client).await;
        }
    }

    async fn ack(&mut self, client: &mut Client) {
        let ack = json!({"target": "", "type": "ACK", "payload": {"seq": self.last_seq}});
        try_send(client, &ack.to_string()).await;
        self.unacked = 0;
        self.acked_at = Some(Instant::now());
    }
}

/// Sends the stream to bob at 500/s; returns alice, to read what she was
/// told afterwards.
fn send_stream(mut alice: Client) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SEND_EVERY);
        for n in 0..ENVELOPES {
            ticks.tick().await;
            alice
                .send_text(&json!({"target": "bob", "type": "n", "payload": n}).to_string())
                .await;
        }
        alice
    })
}

/// Everything alice was sent until she has been quiet for a second.
async fn told(alice: &mut Client) -> Vec<Value> {
    let mut told = Vec::new();
    while let Next::Envelope(envelope) = next(alice, Duration::from_secs(1)).await {
        told.push(envelope);
    }
    told
}

/// How the first connection loses its path.
#[derive(Clone, Copy, Debug)]
enum Blink {
    /// WebSocket through a TCP proxy that freezes, then resets both sides.
    FreezeThenReset,
    /// WebTransport through a UDP proxy that stops forwarding.
    DropUdpPath,
}

/// One blink: bob receives the stream on `first` behind a proxy, loses
/// the path a third of the way in, and resumes on `second` a second later.
async fn blink(blink: Blink, second: Kind) {
    // The path is dead for 1.5 s at 500 envelopes a second: the stream
    // must keep more than the default 256.
    let gw = TestGateway::start_with(&["--resume-buffer", "2048"]).await;
    let alice_token = gw.register("alice").await;
    let bob_token = gw.register("bob").await;
    let mut alice = Client::connect(&gw.addrs, Kind::WebSocket, &alice_token).await;
    assert_eq!(alice.recv().await["type"], "WELCOME");

    let tcp = TcpProxy::start(gw.addrs.http).await;
    let udp = UdpProxy::start(gw.addrs.wt).await;
    let mut behind = gw.addrs.clone();
    behind.http = tcp.addr;
    behind.wt = udp.addr;
    let first = match blink {
        Blink::FreezeThenReset => Kind::WebSocket,
        Blink::DropUdpPath => Kind::WebTransport,
    };
    let mut bob = connect(&behind, first, &bob_token, "").await;
    let mut receiver = Receiver::default();
    let welcome = receiver.welcome(&mut bob).await;
    assert_eq!(welcome["resumed"], false);
    receiver.session = welcome["session"].as_str().unwrap().to_owned();

    let sender = send_stream(alice);
    let broke = receiver
        .read(&mut bob, TIMEOUT, |r| r.payloads.len() >= 300)
        .await;
    assert!(!broke, "the path broke before the blink");
    match blink {
        Blink::FreezeThenReset => {
            tcp.freeze();
            // The gateway keeps writing into the frozen path meanwhile.
            tokio::time::sleep(Duration::from_millis(500)).await;
            tcp.reset();
        }
        Blink::DropUdpPath => udp.drop_path(),
    }
    // Whatever was still in the client's socket is lost with it.
    drop(bob);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let resume = format!("&resume={}", receiver.last_seq);
    let mut bob = connect(&gw.addrs, second, &bob_token, &resume).await;
    let welcome = receiver.welcome(&mut bob).await;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["session"], receiver.session.as_str());
    let broke = receiver
        .read(&mut bob, Duration::from_secs(5), |r| {
            r.payloads.len() >= ENVELOPES as usize
        })
        .await;
    assert!(!broke, "the resumed connection broke");
    receiver.ack(&mut bob).await;
    assert_eq!(
        receiver.payloads,
        (0..ENVELOPES).collect::<Vec<_>>(),
        "every envelope exactly once, in order"
    );
    let mut alice = within("the sender finishes", sender).await.unwrap();
    let told = told(&mut alice).await;
    assert!(told.is_empty(), "the sender saw errors: {told:?}");
    let stats = gw.get_json("/v1/stats").await;
    assert_eq!(stats["counters"]["resume"]["resumed"], 1, "{stats}");
    if let Blink::FreezeThenReset = blink {
        // The gateway wrote into the frozen path: those envelopes were
        // lost with it, and written again.
        assert!(
            stats["counters"]["resume"]["replayed"].as_u64().unwrap() > 0,
            "{stats}"
        );
    }
}

#[tokio::test]
async fn a_websocket_blink_resumes_on_websocket() {
    blink(Blink::FreezeThenReset, Kind::WebSocket).await;
}

#[tokio::test]
async fn a_websocket_blink_resumes_on_webtransport() {
    blink(Blink::FreezeThenReset, Kind::WebTransport).await;
}

#[tokio::test]
async fn a_webtransport_blink_resumes_on_webtransport() {
    blink(Blink::DropUdpPath, Kind::WebTransport).await;
}

#[tokio::test]
async fn a_webtransport_blink_resumes_on_websocket() {
    blink(Blink::DropUdpPath, Kind::WebSocket).await;
}

/// Waits until the gateway counts `user`'s connection gone (away or not).
async fn wait_detached(gw: &TestGateway, user: &str) {
    within("the connection leaves", async {
        while gw.hub.is_connected(user) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A WebSocket client that vanishes: its TCP connection ends without a
/// close frame.
async fn vanish(gw: &TestGateway, token: &str) -> Value {
    let mut bob = Client::connect(&gw.addrs, Kind::WebSocket, token).await;
    let welcome = bob.recv().await;
    drop(bob);
    wait_detached(gw, "bob").await;
    welcome["payload"].clone()
}

#[tokio::test]
async fn an_envelope_for_a_user_who_dropped_is_held_until_it_resumes() {
    let gw = TestGateway::start().await;
    let alice_token = gw.register("alice").await;
    let bob_token = gw.register("bob").await;
    let mut alice = Client::connect(&gw.addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let first = vanish(&gw, &bob_token).await;
    assert_eq!(gw.hub.away(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    alice
        .send("bob", "video-offer", json!({"sdp": "v=0"}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut bob = connect(&gw.addrs, Kind::WebTransport, &bob_token, "&resume=0").await;
    let welcome = bob.recv().await;
    assert_eq!(welcome["payload"]["resumed"], true);
    assert_eq!(welcome["payload"]["replayed"], 1);
    assert_eq!(welcome["payload"]["session"], first["session"]);
    let offer = bob.recv().await;
    assert_eq!(offer["type"], "video-offer");
    assert_eq!(offer["originator"], "alice");
    assert_eq!(offer["seq"], 1);
    assert!(
        told(&mut alice).await.is_empty(),
        "the sender hears nothing"
    );
}

#[tokio::test]
async fn after_the_window_the_sender_gets_expired_and_then_not_found() {
    let gw = TestGateway::start_with(&["--resume-window", "1s"]).await;
    let alice_token = gw.register("alice").await;
    let bob_token = gw.register("bob").await;
    let mut alice = Client::connect(&gw.addrs, Kind::WebTransport, &alice_token).await;
    alice.recv().await;
    vanish(&gw, &bob_token).await;
    alice.send("bob", "video-offer", json!(1)).await;
    alice.send("bob", "new-ice-candidate", json!(2)).await;
    let sent = Instant::now();
    let expired = alice.recv().await;
    let waited = sent.elapsed();
    assert_eq!(expired["type"], "EXPIRED", "{expired}");
    assert_eq!(expired["originator"], "");
    assert_eq!(expired["payload"]["target"], "bob");
    assert_eq!(expired["payload"]["type"], "video-offer");
    assert_eq!(expired["seq"], 1, "numbered in the sender's own stream");
    assert!(waited < Duration::from_secs(3), "expired {waited:?} after");
    let second = alice.recv().await;
    assert_eq!(second["type"], "EXPIRED");
    assert_eq!(second["payload"]["type"], "new-ice-candidate");
    assert_eq!(second["seq"], 2);
    alice.send("bob", "video-offer", json!(3)).await;
    assert_eq!(alice.recv().await["type"], "TARGET_NOT_FOUND");
    let stats = gw.get_json("/v1/stats").await;
    assert_eq!(stats["counters"]["resume"]["expired"], 2);
    assert_eq!(stats["away"], 0);
    // Too late to resume: a new stream.
    let mut bob = connect(&gw.addrs, Kind::WebSocket, &bob_token, "&resume=0").await;
    assert_eq!(bob.recv().await["payload"]["resumed"], false);
}

#[tokio::test]
async fn a_user_who_closed_cleanly_is_not_found_at_once() {
    for kind in [Kind::WebSocket, Kind::WebTransport] {
        let gw = TestGateway::start().await;
        let alice_token = gw.register("alice").await;
        let bob_token = gw.register("bob").await;
        let mut alice = Client::connect(&gw.addrs, Kind::WebSocket, &alice_token).await;
        alice.recv().await;
        let mut bob = Client::connect(&gw.addrs, kind, &bob_token).await;
        bob.recv().await;
        bob.close().await;
        wait_detached(&gw, "bob").await;
        within("bob is gone", async {
            while gw.hub.away() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        alice.send("bob", "video-offer", json!(1)).await;
        let answer = alice.recv().await;
        assert_eq!(answer["type"], "TARGET_NOT_FOUND", "{kind:?}: {answer}");
        let stats = gw.get_json("/v1/stats").await;
        assert_eq!(stats["counters"]["resume"]["went_away"], 0, "{kind:?}");
    }
}

#[tokio::test]
async fn an_unacknowledging_client_keeps_at_most_its_resume_buffer() {
    let gw = TestGateway::start_with(&["--resume-buffer", "50"]).await;
    let alice_token = gw.register("alice").await;
    let bob_token = gw.register("bob").await;
    let mut alice = Client::connect(&gw.addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let mut bob = Client::connect(&gw.addrs, Kind::WebSocket, &bob_token).await;
    bob.recv().await;
    for n in 0..200 {
        alice.send("bob", "n", json!(n)).await;
    }
    let mut last = 0;
    for _ in 0..200 {
        last = bob.recv().await["seq"].as_u64().unwrap();
    }
    assert_eq!(last, 200);
    assert_eq!(gw.hub.kept("bob"), 50);
    let stats = gw.get_json("/v1/stats").await;
    assert_eq!(stats["counters"]["resume"]["dropped"], 150);
    bob.send("", "ACK", json!({"seq": last})).await;
    within("the ACK frees the buffer", async {
        while gw.hub.kept("bob") > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(gw.hub.resume_bytes(), 0);
}

#[tokio::test]
async fn a_flood_to_away_users_stops_at_the_memory_cap() {
    let cap = 64 * 1024;
    let gw = TestGateway::start_with(&["--resume-memory", &cap.to_string()]).await;
    let alice_token = gw.register("alice").await;
    let mut alice = Client::connect(&gw.addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let mut away = Vec::new();
    for n in 0..4 {
        let name = format!("away{n}");
        let token = gw.register(&name).await;
        let mut client = Client::connect(&gw.addrs, Kind::WebSocket, &token).await;
        client.recv().await;
        drop(client);
        wait_detached(&gw, &name).await;
        away.push(name);
    }
    let payload = "x".repeat(1024);
    let mut refused = 0;
    for n in 0..200 {
        alice
            .send(&away[n % away.len()], "flood", json!(payload))
            .await;
        if let Next::Envelope(answer) = next(&mut alice, Duration::from_millis(5)).await {
            assert_eq!(answer["type"], "TARGET_NOT_FOUND");
            refused += 1;
        }
    }
    refused += told(&mut alice).await.len();
    let kept = gw.hub.resume_bytes();
    assert!(kept <= cap, "{kept} bytes kept over the {cap} cap");
    assert!(
        kept > cap / 2,
        "the cap, not something else, stopped it: {kept}"
    );
    let stats = gw.get_json("/v1/stats").await;
    assert_eq!(
        stats["counters"]["resume"]["hold_refused"]
            .as_u64()
            .unwrap(),
        refused as u64
    );
    assert_eq!(
        stats["counters"]["resume"]["held"].as_u64().unwrap() + refused as u64,
        200
    );
}

/// Two gateway processes on one real Redis.
async fn two_nodes(redis: &common::redis::RedisServer) -> Vec<GatewayProcess> {
    two_nodes_with(redis, &[]).await
}

/// [`two_nodes`], each started with `extra` arguments too.
async fn two_nodes_with(redis: &common::redis::RedisServer, extra: &[&str]) -> Vec<GatewayProcess> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for n in 0..2 {
        let id = format!("node-{n}");
        let mut args = vec!["--redis", &url, "--node-id", &id, "--resume-window", "5s"];
        args.extend_from_slice(TEST_RATES);
        args.extend_from_slice(extra);
        nodes.push(GatewayProcess::start(&args, "signal_gateway=info").await);
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    within("every node ready", async {
        for node in &nodes {
            let url = format!("http://{}/readyz", node.addrs.http);
            while http
                .get(&url)
                .send()
                .await
                .map_or(true, |r| r.status() != 200)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    nodes
}

/// Waits until `node`'s `/v1/stats` satisfies `done`.
async fn wait_counters(node: &GatewayProcess, done: impl Fn(&Value) -> bool) {
    within("the counters", async {
        while !done(&get_json_at(&node.addrs, "/v1/stats").await) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Waits until `node` holds `count` away users.
async fn wait_away(node: &GatewayProcess, count: u64) {
    within("the user is away", async {
        while get_json_at(&node.addrs, "/v1/stats").await["away"] != count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn in_a_cluster_an_away_user_is_held_for_from_every_node_and_resumes_on_its_node() {
    let redis = common::redis::RedisServer::start();
    let nodes = two_nodes(&redis).await;
    let bob_token = nodes[0].register("bob").await;
    let alice_token = nodes[0].register("alice").await;
    let carol_token = nodes[1].register("carol").await;
    // alice is on bob's node, carol on the other one.
    let mut alice = Client::connect(&nodes[0].addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let mut carol = Client::connect(&nodes[1].addrs, Kind::WebTransport, &carol_token).await;
    carol.recv().await;
    let mut bob = Client::connect(&nodes[0].addrs, Kind::WebSocket, &bob_token).await;
    let session = bob.recv().await["payload"]["session"].clone();
    alice.send("bob", "one", json!(1)).await;
    assert_eq!(bob.recv().await["seq"], 1);
    drop(bob);
    wait_away(&nodes[0], 1).await;
    alice.send("bob", "two", json!(2)).await;
    carol.send("bob", "three", json!(3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bob = connect(&nodes[0].addrs, Kind::WebTransport, &bob_token, "&resume=1").await;
    let welcome = bob.recv().await;
    assert_eq!(welcome["payload"]["resumed"], true, "{welcome}");
    assert_eq!(welcome["payload"]["session"], session);
    assert_eq!(welcome["payload"]["replayed"], 2);
    let mut held = [bob.recv().await, bob.recv().await];
    held.sort_by_key(|v| v["seq"].as_u64());
    assert_eq!(held[0]["seq"], 2);
    assert_eq!(held[1]["seq"], 3);
    let mut kinds: Vec<&str> = held.iter().map(|v| v["type"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["three", "two"], "held from both nodes");
    assert!(told(&mut alice).await.is_empty());
    assert!(
        told(&mut carol).await.is_empty(),
        "carol's node was told it was written"
    );
}

/// An away user resumes on another node: what its old node held for it
/// follows it there (from senders on both nodes), nobody is answered; when
/// it then stays away, senders on either node get `EXPIRED` once.
#[tokio::test]
async fn in_a_cluster_an_away_user_resumes_on_another_node_with_what_was_held() {
    let redis = common::redis::RedisServer::start();
    let nodes = two_nodes(&redis).await;
    let bob_token = nodes[0].register("bob").await;
    let alice_token = nodes[0].register("alice").await;
    let carol_token = nodes[1].register("carol").await;
    let mut alice = Client::connect(&nodes[0].addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let mut carol = Client::connect(&nodes[1].addrs, Kind::WebTransport, &carol_token).await;
    carol.recv().await;
    let mut bob = Client::connect(&nodes[0].addrs, Kind::WebSocket, &bob_token).await;
    let session = bob.recv().await["payload"]["session"].clone();
    alice.send("bob", "one", json!(1)).await;
    assert_eq!(bob.recv().await["seq"], 1);
    drop(bob);
    wait_away(&nodes[0], 1).await;
    alice.send("bob", "two", json!(2)).await;
    carol.send("bob", "three", json!(3)).await;
    // Both held on bob's old node (polled: a fixed sleep races the
    // window on a loaded machine).
    wait_counters(&nodes[0], |s| {
        s["counters"]["resume"]["held"] == 1 && s["counters"]["remote"]["received"] == 1
    })
    .await;
    let mut bob = connect(&nodes[1].addrs, Kind::WebSocket, &bob_token, "&resume=1").await;
    let welcome = bob.recv().await;
    assert_eq!(welcome["payload"]["resumed"], true, "{welcome}");
    assert_eq!(welcome["payload"]["session"], session);
    assert_eq!(welcome["payload"]["replayed"], 2);
    let mut held = [bob.recv().await, bob.recv().await];
    held.sort_by_key(|v| v["seq"].as_u64());
    assert_eq!([&held[0]["seq"], &held[1]["seq"]], [2, 3]);
    let mut kinds: Vec<&str> = held.iter().map(|v| v["type"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["three", "two"], "held from both nodes");
    wait_away(&nodes[0], 0).await;
    // From now on envelopes go to bob's new node, numbered on.
    alice.send("bob", "four", json!(4)).await;
    let four = bob.recv().await;
    assert_eq!((&four["type"], &four["seq"]), (&json!("four"), &json!(4)));
    assert!(told(&mut alice).await.is_empty(), "alice heard nothing");
    assert!(told(&mut carol).await.is_empty(), "carol heard nothing");
    let moved = get_json_at(&nodes[0].addrs, "/v1/stats").await;
    assert_eq!(moved["counters"]["resume"]["handed_off"], 1, "{moved}");
    // Away again, for good this time: each sender is told once.
    drop(bob);
    wait_away(&nodes[1], 1).await;
    alice.send("bob", "five", json!(5)).await;
    carol.send("bob", "six", json!(6)).await;
    for (sender, kind) in [(&mut alice, "five"), (&mut carol, "six")] {
        let answer = sender.recv().await;
        assert_eq!(answer["type"], "EXPIRED", "{answer}");
        assert_eq!(answer["payload"]["type"], kind);
        assert!(told(sender).await.is_empty(), "told once");
    }
}

/// A raw client receiving a stream on one node loses its path mid-stream
/// and resumes a second later on the other node: every envelope exactly
/// once, in order, from senders on both nodes, who hear nothing.
#[tokio::test]
async fn in_a_cluster_a_blink_resumes_on_another_node() {
    let redis = common::redis::RedisServer::start();
    let nodes = two_nodes_with(&redis, &["--resume-buffer", "4096"]).await;
    let bob_token = nodes[0].register("bob").await;
    let alice_token = nodes[0].register("alice").await;
    let carol_token = nodes[1].register("carol").await;
    let mut alice = Client::connect(&nodes[0].addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let mut carol = Client::connect(&nodes[1].addrs, Kind::WebSocket, &carol_token).await;
    carol.recv().await;
    let tcp = TcpProxy::start(nodes[0].addrs.http).await;
    let mut behind = nodes[0].addrs.clone();
    behind.http = tcp.addr;
    let mut bob = connect(&behind, Kind::WebSocket, &bob_token, "").await;
    let mut receiver = Receiver::default();
    let welcome = receiver.welcome(&mut bob).await;
    receiver.session = welcome["session"].as_str().unwrap().to_owned();
    // alice on bob's first node and carol on the other send alternately;
    // alice goes on alone from 800 until bob has reconnected, so her last
    // envelopes cross the hand-off (waiting for the stream on the new
    // node). Carol stops before: see docs/resume.md on a sender on the new
    // node during the hand-off.
    let (reconnected, mut resumed) = tokio::sync::watch::channel(false);
    let senders = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SEND_EVERY);
        for n in 0..ENVELOPES {
            ticks.tick().await;
            if n == 800 {
                let _ = resumed.wait_for(|done| *done).await;
            }
            let sender = if n % 2 == 0 || n >= 800 {
                &mut alice
            } else {
                &mut carol
            };
            sender
                .send_text(&json!({"target": "bob", "type": "n", "payload": n}).to_string())
                .await;
        }
        (alice, carol)
    });
    let broke = receiver
        .read(&mut bob, TIMEOUT, |r| r.payloads.len() >= 300)
        .await;
    assert!(!broke, "the path broke before the blink");
    tcp.freeze();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tcp.reset();
    drop(bob);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let resume = format!("&resume={}", receiver.last_seq);
    let reconnecting = connect(&nodes[1].addrs, Kind::WebSocket, &bob_token, &resume);
    let (bob, ()) = tokio::join!(reconnecting, async {
        // Sent while the new node claims bob and takes his stream over.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = reconnected.send(true);
    });
    let mut bob = bob;
    let welcome = receiver.welcome(&mut bob).await;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["session"], receiver.session.as_str());
    assert!(welcome["replayed"].as_u64().unwrap() > 0, "{welcome}");
    let broke = receiver
        .read(&mut bob, Duration::from_secs(5), |r| {
            r.payloads.len() >= ENVELOPES as usize
        })
        .await;
    assert!(!broke, "the resumed connection broke");
    receiver.ack(&mut bob).await;
    // Each sender's envelopes in the order sent; both senders' together
    // exactly once.
    for parity in [0, 1] {
        let alices = |n: &i64| n % 2 == 0 || *n >= 800;
        let mine: Vec<i64> = receiver
            .payloads
            .iter()
            .copied()
            .filter(|n| alices(n) == (parity == 0))
            .collect();
        let sent: Vec<i64> = (0..ENVELOPES)
            .filter(|n| alices(n) == (parity == 0))
            .collect();
        assert_eq!(mine, sent, "every envelope exactly once, in order");
    }
    assert_eq!(receiver.payloads.len(), ENVELOPES as usize);
    let (mut alice, mut carol) = within("the senders finish", senders).await.unwrap();
    assert!(told(&mut alice).await.is_empty(), "alice saw errors");
    assert!(told(&mut carol).await.is_empty(), "carol saw errors");
    let old = get_json_at(&nodes[0].addrs, "/v1/stats").await;
    assert_eq!(old["counters"]["resume"]["handed_off"], 1, "{old}");
    let new = get_json_at(&nodes[1].addrs, "/v1/stats").await;
    assert_eq!(new["counters"]["resume"]["resumed"], 1, "{new}");
    assert_eq!(new["counters"]["resume"]["handoff_failed"], 0, "{new}");
}

async fn join(client: &mut Client, room: &str) {
    client
        .send_text(&json!({"target": "", "type": "JOIN", "payload": {"room": room}}).to_string())
        .await;
    let joined = client.recv().await;
    assert_eq!(joined["type"], "JOINED", "{joined}");
}

/// A member of a room that blinks and resumes on another node keeps its
/// rooms: nobody hears it leave or join (not even after its old node's
/// window), and room envelopes reach it on its new node.
#[tokio::test]
async fn in_a_cluster_a_member_who_resumes_on_another_node_stays_in_its_rooms() {
    let redis = common::redis::RedisServer::start();
    let nodes = two_nodes(&redis).await;
    let bob_token = nodes[0].register("bob").await;
    let alice_token = nodes[0].register("alice").await;
    let carol_token = nodes[1].register("carol").await;
    let mut alice = Client::connect(&nodes[0].addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let mut carol = Client::connect(&nodes[1].addrs, Kind::WebSocket, &carol_token).await;
    carol.recv().await;
    join(&mut alice, "r").await;
    join(&mut carol, "r").await;
    assert_eq!(alice.recv().await["type"], "PEER_JOINED");
    let mut bob = Client::connect(&nodes[0].addrs, Kind::WebSocket, &bob_token).await;
    bob.recv().await;
    join(&mut bob, "r").await;
    for member in [&mut alice, &mut carol] {
        let joined = member.recv().await;
        assert_eq!(
            (&joined["type"], &joined["payload"]["user"]),
            (&json!("PEER_JOINED"), &json!("bob"))
        );
    }
    drop(bob);
    wait_away(&nodes[0], 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut bob = connect(&nodes[1].addrs, Kind::WebTransport, &bob_token, "&resume=1").await;
    let welcome = bob.recv().await;
    assert_eq!(welcome["payload"]["resumed"], true, "{welcome}");
    // Past the old node's window (5 s): still nobody heard bob leave.
    tokio::time::sleep(Duration::from_secs(6)).await;
    alice
        .send_text(&json!({"room": "r", "type": "hello", "payload": 1}).to_string())
        .await;
    let hello = bob.recv().await;
    assert_eq!(hello["type"], "hello", "{hello}");
    let got = carol.recv().await;
    assert_eq!(
        got["type"], "hello",
        "no PEER_LEFT or PEER_JOINED first: {got}"
    );
    assert!(told(&mut alice).await.is_empty(), "no presence for alice");
    assert!(told(&mut carol).await.is_empty(), "no presence for carol");
}

/// The node holding an away user's stream dies: the user's reconnect on
/// another node says `resumed: false` within the bounded wait, and the
/// loss is counted there.
#[tokio::test]
async fn in_a_cluster_a_stream_dies_with_its_node_and_the_loss_is_counted() {
    let redis = common::redis::RedisServer::start();
    let mut nodes = two_nodes(&redis).await;
    let bob_token = nodes[0].register("bob").await;
    let bob = Client::connect(&nodes[0].addrs, Kind::WebSocket, &bob_token).await;
    drop(bob);
    wait_away(&nodes[0], 1).await;
    let killed = nodes.remove(0);
    let pid = killed.child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    let started = Instant::now();
    let mut bob = connect(&nodes[0].addrs, Kind::WebSocket, &bob_token, "&resume=0").await;
    let welcome = bob.recv().await;
    let took = started.elapsed();
    assert_eq!(welcome["payload"]["resumed"], false, "{welcome}");
    assert!(
        took < Duration::from_millis(2500),
        "the wait is bounded: {took:?}"
    );
    let stats = get_json_at(&nodes[0].addrs, "/v1/stats").await;
    assert_eq!(stats["counters"]["resume"]["handoff_failed"], 1, "{stats}");
    drop(killed);
}

/// Sends `signal` to a gateway process.
fn signal(node: &GatewayProcess, signal: &str) {
    let pid = node.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The node holding an away user's stream is alive in Redis's eyes but
/// silent (stopped): the reconnect on another node waits the bounded
/// `--handoff-wait`, starts a new stream, and counts it; when the old node wakes and
/// hands the stream over too late, what it held is answered, once.
#[tokio::test]
async fn in_a_cluster_a_silent_old_node_is_waited_for_a_second_and_answered_later() {
    let redis = common::redis::RedisServer::start();
    let nodes = two_nodes_with(&redis, &["--handoff-wait", "1500ms"]).await;
    let bob_token = nodes[0].register("bob").await;
    let alice_token = nodes[0].register("alice").await;
    let mut alice = Client::connect(&nodes[0].addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let bob = Client::connect(&nodes[0].addrs, Kind::WebSocket, &bob_token).await;
    drop(bob);
    wait_away(&nodes[0], 1).await;
    alice.send("bob", "held", json!(1)).await;
    wait_counters(&nodes[0], |s| s["counters"]["resume"]["held"] == 1).await;
    signal(&nodes[0], "-STOP");
    let started = Instant::now();
    let connecting = connect(&nodes[1].addrs, Kind::WebSocket, &bob_token, "&resume=0");
    let mut bob = tokio::time::timeout(TIMEOUT, connecting).await;
    let took = started.elapsed();
    signal(&nodes[0], "-CONT");
    let welcome = bob.as_mut().expect("connects").recv().await;
    assert_eq!(welcome["payload"]["resumed"], false, "{welcome}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "waited --handoff-wait: {took:?}"
    );
    let stats = get_json_at(&nodes[1].addrs, "/v1/stats").await;
    assert_eq!(stats["counters"]["resume"]["handoff_failed"], 1, "{stats}");
    let answer = alice.recv().await;
    assert_eq!(answer["type"], "UNDELIVERED", "{answer}");
    assert_eq!(answer["payload"]["type"], "held");
    assert!(told(&mut alice).await.is_empty(), "told once");
}

/// A stream as big as `--resume-buffer-bytes` lets it be (1 MiB) moves to
/// the user's new node in one message through Redis.
#[tokio::test]
async fn in_a_cluster_a_full_stream_moves_in_one_message() {
    let redis = common::redis::RedisServer::start();
    let nodes = two_nodes(&redis).await;
    let bob_token = nodes[0].register("bob").await;
    let alice_token = nodes[0].register("alice").await;
    let mut alice = Client::connect(&nodes[0].addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let bob = Client::connect(&nodes[0].addrs, Kind::WebSocket, &bob_token).await;
    drop(bob);
    wait_away(&nodes[0], 1).await;
    let payload = "x".repeat(32 * 1024);
    // 31 envelopes of 32 KiB fit in 1 MiB; the 32nd would not.
    for n in 0..31 {
        alice
            .send("bob", "big", json!({"n": n, "p": payload}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(told(&mut alice).await.is_empty(), "all held");
    let mut bob = connect(&nodes[1].addrs, Kind::WebSocket, &bob_token, "&resume=0").await;
    let welcome = bob.recv().await;
    assert_eq!(welcome["payload"]["resumed"], true, "{welcome}");
    assert_eq!(welcome["payload"]["replayed"], 31);
    for n in 0..31 {
        let big = bob.recv().await;
        assert_eq!(big["payload"]["n"], n);
        assert_eq!(big["seq"], n + 1);
    }
    assert!(told(&mut alice).await.is_empty(), "alice heard nothing");
}

/// A node's books for envelopes to its users: every one it accepted
/// or received was written, answered, expired, or moved with a stream.
fn books(stats: &Value) -> (u64, u64) {
    let n = |k: &str| stats["counters"][k].as_u64().unwrap();
    let r = |k: &str| stats["counters"]["remote"][k].as_u64().unwrap();
    let e = |k: &str| stats["counters"]["resume"][k].as_u64().unwrap();
    (
        n("forwarded") + r("received"),
        n("written")
            + n("undelivered_reported")
            + n("undelivered_unreported")
            + e("expired")
            + e("expired_unreported")
            + e("moved")
            + r("received_failed"),
    )
}

#[tokio::test]
async fn in_a_cluster_a_stream_handed_over_mid_write_is_counted_once() {
    const BIG: u64 = 400;
    let redis = common::redis::RedisServer::start();
    let roomy = [
        "--resume-buffer",
        "4096",
        "--resume-buffer-bytes",
        "67108864",
        "--queue-envelopes",
        "4096",
        "--queue-bytes",
        "67108864",
    ];
    let nodes = two_nodes_with(&redis, &roomy).await;
    let bob_token = nodes[0].register("bob").await;
    let alice_token = nodes[0].register("alice").await;
    let mut alice = Client::connect(&nodes[0].addrs, Kind::WebSocket, &alice_token).await;
    alice.recv().await;
    let ws = ws_connect(&nodes[0].addrs, &format!("?token={bob_token}"), &[])
        .await
        .expect("ws connects");
    let (_bob_sink, mut old_bob) = ws.split();
    old_bob.next().await.expect("WELCOME").unwrap();
    // bob reads nothing more: once the sockets' buffers are full, node-0's
    // writer waits in the middle of a batch.
    let pad = "x".repeat(60_000);
    for n in 0..BIG {
        alice
            .send_text(
                &json!({"target": "bob", "type": "big", "payload": {"n": n, "pad": pad}})
                    .to_string(),
            )
            .await;
    }
    let stats = |node: usize| get_json_at(&nodes[node].addrs, "/v1/stats");
    within("node-0's writes stall", async {
        loop {
            let before = stats(0).await["counters"]["written"].clone();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = stats(0).await;
            if after["counters"]["forwarded"] == BIG
                && after["counters"]["written"] == before
                && after["counters"]["written"].as_u64().unwrap() < BIG
            {
                break;
            }
        }
    })
    .await;
    // bob comes back on node 1; while node 1 waits for the stream, the old
    // connection is read again and node-0's writer finishes.
    let (addrs, token) = (nodes[1].addrs.clone(), bob_token.clone());
    let again =
        tokio::spawn(async move { connect(&addrs, Kind::WebSocket, &token, "&resume=0").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drained = tokio::spawn(async move { while let Some(Ok(_)) = old_bob.next().await {} });
    let mut bob = within("bob connects to node 1", again).await.unwrap();
    assert_eq!(bob.recv().await["type"], "WELCOME");
    within("the old connection closes", drained).await.unwrap();
    within("node 0 keeps nobody of bob's", async {
        while stats(0).await["connections"] != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let old = stats(0).await;
    let (accepted, settled) = books(&old);
    assert_eq!(
        accepted, settled,
        "node 0 counts each envelope once, written or moved: {old}"
    );
    assert_eq!(old["counters"]["resume"]["handed_off"], 1, "{old}");
}
