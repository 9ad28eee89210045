//! Three gateway processes and one real Redis, as a cluster: envelopes
//! cross nodes on every transport pairing, identities are shared, newest
//! wins under races, a killed node frees its users within 5 s, a Redis
//! restart mid-traffic converges with every envelope written or answered,
//! admin actions reach every node, and the books add up over the nodes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

struct Cluster {
    redis: RedisServer,
    nodes: Vec<GatewayProcess>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(count: usize) -> Self {
        Self::start_with(count, &[]).await
    }

    async fn start_with(count: usize, extra: &[&str]) -> Self {
        let redis = RedisServer::start();
        let url = redis.url();
        let mut nodes = Vec::new();
        for n in 0..count {
            let id = format!("node-{n}");
            let mut args = vec!["--redis", &url, "--node-id", &id];
            args.extend_from_slice(TEST_RATES);
            args.extend_from_slice(extra);
            nodes.push(GatewayProcess::start(&args, "signal_gateway=info").await);
        }
        let cluster = Self {
            redis,
            nodes,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        cluster.all_ready().await;
        cluster
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[node].http)
    }

    async fn readyz(&self, node: usize) -> (u16, Value) {
        match self.http.get(self.url(node, "/readyz")).send().await {
            Ok(response) => (
                response.status().as_u16(),
                response.json().await.unwrap_or(Value::Null),
            ),
            Err(_) => (0, Value::Null),
        }
    }

    /// Waits until every node reports ready.
    async fn all_ready(&self) {
        within("every node ready", async {
            for node in 0..self.nodes.len() {
                while self.readyz(node).await.0 != 200 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .await;
    }

    async fn register(&self, node: usize, name: &str) -> String {
        self.nodes[node].register(name).await
    }

    async fn connect(&self, node: usize, kind: Kind, token: &str) -> Client {
        let mut client = Client::connect(&self.nodes[node], kind, token).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "WELCOME", "{welcome}");
        client
    }

    async fn get(&self, node: usize, path: &str) -> Value {
        within(path, async {
            self.http
                .get(self.url(node, path))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
        .await
    }

    /// Waits until the cluster-wide listing shows exactly `users`.
    async fn wait_connected(&self, users: &[&str]) {
        let want: BTreeSet<String> = users.iter().map(|u| u.to_string()).collect();
        within("cluster-wide listing", async {
            loop {
                let listed = self.nodes[0].addrs.users().await;
                let got: BTreeSet<String> = listed["connected"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u["username"].as_str().unwrap().to_owned())
                    .collect();
                if got == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

/// Every pairing of transports, each side on its own node, registered on a
/// third: both ways, in order.
#[tokio::test]
async fn envelopes_cross_nodes_on_every_transport_pairing_in_order() {
    let cluster = Cluster::start(3).await;
    let pairings = [
        (Kind::WebSocket, Kind::WebSocket),
        (Kind::WebSocket, Kind::WebTransport),
        (Kind::WebTransport, Kind::WebSocket),
        (Kind::WebTransport, Kind::WebTransport),
    ];
    for (n, (from, to)) in pairings.into_iter().enumerate() {
        let (a, b) = (format!("a{n}"), format!("b{n}"));
        // Registered on node 2, connected to nodes 0 and 1.
        let a_token = cluster.register(2, &a).await;
        let b_token = cluster.register(2, &b).await;
        let mut a_client = cluster.connect(0, from, &a_token).await;
        let mut b_client = cluster.connect(1, to, &b_token).await;
        cluster.wait_connected(&[&a, &b]).await;
        for i in 0..50 {
            a_client.send(&b, "offer", json!({ "n": i })).await;
        }
        for i in 0..50 {
            let got = b_client.recv().await;
            assert_eq!(got["type"], "offer", "{from:?} -> {to:?}: {got}");
            assert_eq!(got["originator"], a.as_str());
            assert_eq!(got["target"], b.as_str());
            assert_eq!(got["payload"]["n"], i, "in order");
        }
        b_client.send(&a, "answer", json!("back")).await;
        let back = a_client.recv().await;
        assert_eq!(
            (back["type"].clone(), back["payload"].clone()),
            (json!("answer"), json!("back"))
        );
        a_client.close().await;
        b_client.close().await;
        cluster.wait_connected(&[]).await;
    }
    // Every one of them was confirmed written: nothing is in flight or
    // answered as lost.
    let mut sent = 0;
    let mut written = 0;
    for node in 0..3 {
        let remote = cluster.get(node, "/v1/stats").await["counters"]["remote"].clone();
        sent += remote["sent"].as_u64().unwrap();
        written += remote["written"].as_u64().unwrap();
        assert_eq!(remote["failed"], 0, "node {node}: {remote}");
        assert_eq!(remote["unconfirmed"], 0, "node {node}: {remote}");
    }
    assert_eq!(sent, 4 * 51);
    assert_eq!(written, sent);
}

/// Register on one node, check and connect on the others; a name taken on
/// one is taken on all.
#[tokio::test]
async fn identities_are_shared_by_every_node() {
    let cluster = Cluster::start(3).await;
    let token = cluster.register(0, "grace").await;
    for node in 1..3 {
        let checked = cluster
            .http
            .get(cluster.url(node, "/v1/user"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(checked.status(), 200, "node {node}");
        assert_eq!(checked.json::<Value>().await.unwrap()["username"], "grace");
        let taken = cluster
            .http
            .post(cluster.url(node, "/v1/register"))
            .json(&json!({"username": "grace"}))
            .send()
            .await
            .unwrap();
        assert_eq!(status_field(taken).await, "TAKEN", "node {node}");
    }
    let mut client = cluster.connect(2, Kind::WebTransport, &token).await;
    client.send("grace", "self", json!(1)).await;
    assert_eq!(client.recv().await["type"], "self");
    let names = cluster.nodes[1].addrs.users().await;
    assert_eq!(names["registered"], json!(["grace"]));
}

/// The same token connecting to three nodes at once, a hundred times over:
/// each time exactly one connection stays, the others are told REPLACED.
#[tokio::test]
async fn newest_wins_when_three_nodes_race_for_one_user() {
    // Each round's survivor goes without a close: away (and still listed
    // on its node) for the resume window, kept short here.
    let cluster = Cluster::start_with(3, &["--resume-window", "200ms"]).await;
    let token = cluster.register(0, "racer").await;
    let probe_token = cluster.register(0, "probe").await;
    let mut probe = cluster.connect(0, Kind::WebSocket, &probe_token).await;
    for round in 0..100 {
        let kind = if round % 2 == 0 {
            Kind::WebSocket
        } else {
            Kind::WebTransport
        };
        let connects = (0..3).map(|node| {
            let addrs = cluster.nodes[node].addrs.clone();
            let token = token.clone();
            tokio::spawn(async move { Client::connect(&addrs, kind, &token).await })
        });
        let mut clients = Vec::new();
        for connect in connects {
            clients.push(connect.await.unwrap());
        }
        // Each client's events, as they come: the two that lose are closed
        // as REPLACED; the one left then gets the probe's envelope.
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let readers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(index, mut client)| {
                let events_tx = events_tx.clone();
                tokio::spawn(async move {
                    loop {
                        let event = client.recv_or_close().await;
                        let closed = event.is_err();
                        let _ = events_tx.send((index, event));
                        if closed {
                            return;
                        }
                    }
                })
            })
            .collect();
        // Wait for the two closes and for the survivor's WELCOME: a user
        // is reachable once welcomed, not as soon as its upgrade is answered.
        let mut closed = Vec::new();
        let mut welcomed = Vec::new();
        let survivor_welcomed = |closed: &[(usize, _)], welcomed: &[usize]| {
            closed.len() == 2 && welcomed.iter().any(|w| closed.iter().all(|(c, _)| c != w))
        };
        within("two of three closed, the third welcomed", async {
            while !survivor_welcomed(&closed, &welcomed) {
                match events.recv().await.unwrap() {
                    (index, Ok(v)) if v["type"] == "WELCOME" => welcomed.push(index),
                    (index, Err(close)) => closed.push((index, close)),
                    (_, Ok(v)) => panic!("round {round}: unexpected {v}"),
                }
            }
        })
        .await;
        for (_, close) in &closed {
            assert_eq!(
                (close.code, close.reason.as_str()),
                (4001, "REPLACED"),
                "round {round}"
            );
        }
        // The one left is the user's live connection, reached from node 0.
        let survivor = (0..3).find(|i| closed.iter().all(|(c, _)| c != i)).unwrap();
        probe.send("racer", "ping", json!(round)).await;
        match within("the survivor gets the probe", events.recv())
            .await
            .unwrap()
        {
            (index, Ok(v)) => {
                assert_eq!(index, survivor, "round {round}");
                assert_eq!(v["payload"], json!(round), "round {round}");
            }
            (index, Err(close)) => panic!("round {round}: {index} closed too: {close:?}"),
        }
        for reader in readers {
            reader.abort();
        }
        cluster.wait_connected(&["probe"]).await;
    }
}

/// SIGKILL of a node: within 5 s its users answer TARGET_NOT_FOUND, and
/// they can connect to another node at once.
#[tokio::test]
async fn a_killed_node_frees_its_users_within_five_seconds() {
    let mut cluster = Cluster::start(3).await;
    let alice_token = cluster.register(0, "alice").await;
    let bob_token = cluster.register(0, "bob").await;
    let mut alice = cluster.connect(0, Kind::WebSocket, &alice_token).await;
    let _bob = cluster.connect(1, Kind::WebTransport, &bob_token).await;
    cluster.wait_connected(&["alice", "bob"]).await;
    alice.send("bob", "offer", json!(0)).await;

    let killed = cluster.nodes.remove(1);
    let pid = killed.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let at = Instant::now();
    let answered = within("TARGET_NOT_FOUND for bob", async {
        let mut n = 1;
        loop {
            alice.send("bob", "offer", json!(n)).await;
            n += 1;
            let got = tokio::time::timeout(Duration::from_millis(200), alice.recv()).await;
            if let Ok(got) = got
                && got["type"] == "TARGET_NOT_FOUND"
            {
                return at.elapsed();
            }
        }
    })
    .await;
    assert!(answered < Duration::from_secs(5), "took {answered:?}");
    eprintln!("a killed node's user answered TARGET_NOT_FOUND after {answered:?}");
    drop(killed);

    // bob connects to another node at once, and is reached there.
    let mut bob = cluster.connect(1, Kind::WebSocket, &bob_token).await;
    alice.send("bob", "offer", json!("again")).await;
    loop {
        let got = bob.recv().await;
        if got["payload"] == "again" {
            break;
        }
    }
}

/// Kill Redis mid-traffic and start it again on the same port: same-node
/// traffic never stops, cross-node sends get a clear error meanwhile, the
/// nodes report not ready and then ready again, and every envelope alice
/// sent was either received or answered.
#[tokio::test]
async fn a_redis_restart_mid_traffic_converges_and_loses_nothing_silently() {
    let mut cluster = Cluster::start(3).await;
    let tokens: Vec<String> = futures::future::join_all(
        ["alice", "bob", "carol", "dave"].map(|name| cluster.register(0, name)),
    )
    .await;
    let mut alice = cluster.connect(0, Kind::WebSocket, &tokens[0]).await;
    let mut bob = cluster.connect(1, Kind::WebTransport, &tokens[1]).await;
    let mut carol = cluster.connect(0, Kind::WebTransport, &tokens[2]).await;
    cluster.wait_connected(&["alice", "bob", "carol"]).await;

    let mut sent = 0u64;
    let mut received = BTreeSet::new();
    let mut answered = BTreeSet::new();
    let mut errors = BTreeSet::new();
    let mut local = 0;
    let started = Instant::now();
    let mut killed_at = None;
    let mut restarted_at = None;
    let mut not_ready_seen = false;
    // About 6 s of traffic: Redis is killed after 1 s and restarted 2 s
    // later.
    while started.elapsed() < Duration::from_secs(6) {
        if killed_at.is_none() && started.elapsed() > Duration::from_secs(1) {
            cluster.redis.kill();
            killed_at = Some(Instant::now());
        }
        if let Some(at) = killed_at
            && restarted_at.is_none()
            && at.elapsed() > Duration::from_secs(2)
        {
            cluster.redis.restart();
            restarted_at = Some(Instant::now());
        }
        if killed_at.is_some() && restarted_at.is_none() && !not_ready_seen {
            not_ready_seen = cluster.readyz(0).await.0 == 503;
        }
        alice.send("bob", &format!("m{sent}"), json!(sent)).await;
        sent += 1;
        alice.send("carol", "local", json!(local)).await;
        let got = carol.recv().await;
        assert_eq!(got["payload"], local, "same-node traffic never stops");
        local += 1;
        drain(&mut alice, &mut answered, &mut errors).await;
        while let Ok(got) = tokio::time::timeout(Duration::from_millis(1), bob.recv()).await {
            received.insert(got["payload"].as_u64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(not_ready_seen, "/readyz said 503 while Redis was down");
    assert!(
        errors.contains("CLUSTER_UNAVAILABLE"),
        "cross-node sends during the outage were refused clearly: {errors:?}"
    );
    cluster.all_ready().await;
    let converged = restarted_at.unwrap().elapsed();
    assert!(
        converged < Duration::from_secs(10),
        "ready again after {converged:?}"
    );
    eprintln!("every node ready again {converged:?} after Redis restarted");
    // Every envelope alice sent ends received by bob or answered to alice
    // (waiting out the delivery timeout for those whose fate was unknown).
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline && (received.len() + answered.len()) < sent as usize {
        drain(&mut alice, &mut answered, &mut errors).await;
        while let Ok(got) = tokio::time::timeout(Duration::from_millis(20), bob.recv()).await {
            received.insert(got["payload"].as_u64().unwrap());
        }
    }
    let lost: Vec<u64> = (0..sent)
        .filter(|n| !received.contains(n) && !answered.contains(n))
        .collect();
    assert!(lost.is_empty(), "sent {sent}, silently lost {lost:?}");
    assert!(
        received.len() as u64 >= sent / 3,
        "{} of {sent} arrived",
        received.len()
    );
    // Every user has one live connection again and is reached from every
    // node: dave, on the third node, reaches all three.
    let mut dave = cluster.connect(2, Kind::WebSocket, &tokens[3]).await;
    cluster
        .wait_connected(&["alice", "bob", "carol", "dave"])
        .await;
    for (user, client) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        dave.send(user, "hello", json!("from node 2")).await;
        within("hello from node 2", async {
            while client.recv().await["type"] != "hello" {}
        })
        .await;
    }
}

/// Reads alice's error envelopes: each names the envelope's type `m<n>`.
async fn drain(alice: &mut Client, answered: &mut BTreeSet<u64>, errors: &mut BTreeSet<String>) {
    while let Ok(got) = tokio::time::timeout(Duration::from_millis(1), alice.recv()).await {
        let kind = got["type"].as_str().unwrap().to_owned();
        if let Some(n) = got["payload"]["type"]
            .as_str()
            .and_then(|t| t.strip_prefix('m'))
            .and_then(|n| n.parse().ok())
        {
            answered.insert(n);
        }
        errors.insert(kind);
    }
}

/// Kick, list and delete from any node act on the whole cluster;
/// `GET /v1/nodes` lists the live nodes.
#[tokio::test]
async fn admin_actions_from_one_node_reach_every_node() {
    let cluster = Cluster::start(3).await;
    let nodes = cluster.nodes[1].addrs.nodes().await;
    assert_eq!(nodes["cluster"], true);
    assert_eq!(nodes["node"], "node-1");
    let ids: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["node-0", "node-1", "node-2"]);

    let names = ["ann", "ben", "cat"];
    let mut clients = Vec::new();
    for (node, name) in names.iter().enumerate() {
        let token = cluster.register(node, name).await;
        let kind = if node == 1 {
            Kind::WebTransport
        } else {
            Kind::WebSocket
        };
        clients.push((cluster.connect(node, kind, &token).await, token));
    }
    cluster.wait_connected(&names).await;
    let listed = cluster.nodes[2].addrs.users().await;
    let rows: Vec<(String, String, String)> = listed["connected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["username"].as_str().unwrap().to_owned(),
                u["node"].as_str().unwrap().to_owned(),
                u["transport"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("ann".into(), "node-0".into(), "websocket".into()),
            ("ben".into(), "node-1".into(), "webtransport".into()),
            ("cat".into(), "node-2".into(), "websocket".into()),
        ]
    );

    // A kick asked of node 1 closes everyone, on every node.
    let kicked = cluster.nodes[1].addrs.kick().await;
    assert_eq!(kicked["kicked"], 3);
    for (client, _) in &mut clients {
        let closed = client.closed().await;
        assert_eq!((closed.code, closed.reason.as_str()), (4002, "KICKED"));
    }
    cluster.wait_connected(&[]).await;

    // Deleting identities on node 2 forgets them everywhere.
    let deleted = cluster.nodes[2].addrs.delete_users().await;
    assert_eq!(deleted["deleted"], 3);
    for node in 0..3 {
        for (_, token) in &clients {
            let checked = cluster
                .http
                .get(cluster.url(node, "/v1/user"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(checked.status(), 404, "node {node}");
        }
    }
}

/// After traffic that ends every way an envelope can (written across
/// nodes, refused for a missing target, undelivered because its target
/// left), each node's books and their sums over the cluster add up.
#[tokio::test]
async fn the_books_add_up_over_the_nodes() {
    let cluster = Cluster::start(3).await;
    let names = ["p0", "p1", "p2", "q0", "q1", "q2"];
    let mut clients = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let token = cluster.register(i % 3, name).await;
        let kind = if i % 2 == 0 {
            Kind::WebSocket
        } else {
            Kind::WebTransport
        };
        clients.push(cluster.connect(i % 3, kind, &token).await);
    }
    cluster.wait_connected(&names).await;
    // Everyone sends to everyone (most cross nodes), and to a stranger.
    for round in 0..20 {
        for (i, client) in clients.iter_mut().enumerate() {
            let to = names[(i + 1 + round % 5) % names.len()];
            client.send(to, "offer", json!(round)).await;
        }
    }
    clients[0].send("stranger", "offer", Value::Null).await;
    let mut received = 0;
    for client in &mut clients {
        loop {
            match tokio::time::timeout(Duration::from_millis(300), client.recv()).await {
                Ok(v) if v["type"] == "offer" => received += 1,
                Ok(v) => assert_eq!(v["type"], "TARGET_NOT_FOUND", "{v}"),
                Err(_) => break,
            }
        }
    }
    assert_eq!(received, 20 * names.len());
    // Then q2 leaves while envelopes are queued for it: it never reads.
    let q2 = clients.pop().unwrap();
    for _ in 0..5 {
        clients[0].send("q2", "late", json!("x".repeat(1000))).await;
    }
    drop(q2);
    cluster.wait_connected(&names[..5]).await;
    // Settled: nothing in flight anywhere.
    let stats = within("settled", async {
        loop {
            let mut all = Vec::new();
            for node in 0..3 {
                all.push(cluster.get(node, "/v1/stats").await);
            }
            let in_flight: u64 = all
                .iter()
                .map(|s| {
                    let r = &s["counters"]["remote"];
                    r["sent"].as_u64().unwrap()
                        - r["written"].as_u64().unwrap()
                        - r["failed"].as_u64().unwrap()
                        - r["unconfirmed"].as_u64().unwrap()
                })
                .sum();
            if in_flight == 0 {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let n = |s: &Value, key: &str| s["counters"][key].as_u64().unwrap();
    let r = |s: &Value, key: &str| s["counters"]["remote"][key].as_u64().unwrap();
    let (mut sent, mut confirmed) = (0, 0);
    for (node, s) in stats.iter().enumerate() {
        // What this node accepted for its own users ended written, answered
        // or unreported, as on a single gateway (queues are empty now).
        assert_eq!(
            n(s, "forwarded") + r(s, "received"),
            n(s, "written")
                + n(s, "undelivered_reported")
                + n(s, "undelivered_unreported")
                + r(s, "received_failed"),
            "node {node}: {s}"
        );
        sent += r(s, "sent");
        confirmed += r(s, "written");
        assert_eq!(r(s, "unconfirmed"), 0, "node {node}");
    }
    assert!(sent > 50, "most envelopes crossed nodes: {sent}");
    // Every envelope a node wrote for another node's sender was confirmed
    // back to that node, and nothing is left unsettled.
    let written_for_others: u64 = stats
        .iter()
        .map(|s| r(s, "received") - r(s, "received_failed"))
        .sum();
    assert_eq!(confirmed, written_for_others);
}

/// `--advertise-host` tells a page which host serves this node's
/// WebTransport, with the node's own certificate.
#[tokio::test]
async fn each_node_advertises_its_own_webtransport_address() {
    let cluster = Cluster::start_with(1, &["--advertise-host", "127.0.0.1"]).await;
    let hash = cluster.get(0, "/v1/cert-hash").await;
    assert_eq!(hash["webtransport"]["host"], "127.0.0.1");
    let port = hash["webtransport"]["port"].as_u64().unwrap();
    let nodes = cluster.nodes[0].addrs.nodes().await;
    assert_eq!(
        nodes["nodes"][0]["webtransport"],
        format!("127.0.0.1:{port}")
    );
}

/// Sends `signal` to a node's process (`STOP`, `CONT`).
fn signal(node: &GatewayProcess, signal: &str) {
    let pid = node.child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// Resumes a stopped node however the test ends.
struct Resume<'a>(&'a GatewayProcess);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Finding 6: Redis comes back empty. Every node notices that the shared
/// state it relied on is gone and closes its users as `KICKED` (as when
/// every identity is deleted) before anyone can claim their names again:
/// a user's connection is never taken over, only closed.
#[tokio::test]
async fn redis_restarted_empty_closes_every_user_before_a_name_can_be_taken() {
    let mut cluster = Cluster::start(2).await;
    let alice_token = cluster.register(0, "alice").await;
    let bob_token = cluster.register(0, "bob").await;
    let mut alice = cluster.connect(0, Kind::WebSocket, &alice_token).await;
    let mut bob = cluster.connect(1, Kind::WebTransport, &bob_token).await;
    cluster.wait_connected(&["alice", "bob"]).await;

    cluster.redis.restart_empty();
    let node1 = cluster.nodes[1].addrs.clone();
    let http = cluster.http.clone();
    // Someone takes alice's name as soon as the cluster lets them.
    let attacker = tokio::spawn(async move {
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut token = None;
        while Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if token.is_none() {
                let Ok(response) = http
                    .post(format!("http://{}/v1/register", node1.http))
                    .json(&json!({ "username": "alice" }))
                    .send()
                    .await
                else {
                    continue;
                };
                let body: Value = response.json().await.unwrap_or(Value::Null);
                token = body["token"].as_str().map(str::to_owned);
            }
            let Some(token) = &token else {
                continue;
            };
            let Ok(ws) = ws_connect(&node1, &format!("?token={token}"), &[]).await else {
                continue;
            };
            if let Ok(welcome) = Client::Ws(ws).recv_or_close().await
                && welcome["type"] == "WELCOME"
            {
                return Some(Instant::now());
            }
        }
        None
    });
    let alice_closed = alice.closed().await;
    let alice_closed_at = Instant::now();
    assert_eq!(
        (alice_closed.code, alice_closed.reason.as_str()),
        (4002, "KICKED"),
        "alice is closed, not replaced"
    );
    assert_eq!(bob.closed().await.code, 4002, "bob too, on the other node");
    let taken_at = attacker.await.unwrap().unwrap_or_else(|| {
        panic!(
            "the name never became free again; node 1's log:\n{}",
            cluster.nodes[1].log_text()
        )
    });
    assert!(
        taken_at > alice_closed_at,
        "the name was taken while alice was still connected"
    );
    cluster.all_ready().await;
    for node in 0..2 {
        let log = cluster.nodes[node].log_text();
        assert!(log.contains("shared state is gone"), "node {node}: {log}");
    }
}

/// Finding 7: carol is on node 0 with dave; node 0 stops for 5 s (longer
/// than its lease), carol reconnects on node 1. When node 0 resumes,
/// nothing dave sends carol reaches her old connection: node 0 checks its
/// claims before it delivers to its own users, answering meanwhile, and
/// carol's new connection gets what dave sends next.
#[tokio::test]
async fn a_paused_node_delivers_nothing_to_a_connection_it_no_longer_owns() {
    let cluster = Cluster::start(2).await;
    let carol_token = cluster.register(0, "carol").await;
    let dave_token = cluster.register(0, "dave").await;
    let mut old_carol = cluster.connect(0, Kind::WebSocket, &carol_token).await;
    let mut dave = cluster.connect(0, Kind::WebSocket, &dave_token).await;
    cluster.wait_connected(&["carol", "dave"]).await;

    signal(&cluster.nodes[0], "STOP");
    let resume = Resume(&cluster.nodes[0]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut new_carol = cluster.connect(1, Kind::WebTransport, &carol_token).await;
    dave.send("carol", "offer", json!("while paused")).await;
    drop(resume);
    for n in 0..10 {
        dave.send("carol", "offer", json!(n)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen = Vec::new();
    let closed = within("the old connection ends", async {
        loop {
            match old_carol.recv_or_close().await {
                Ok(envelope) => seen.push(envelope),
                Err(closed) => return closed,
            }
        }
    })
    .await;
    assert!(
        seen.iter().all(|envelope| envelope["type"] != "offer"),
        "the old connection got {seen:?}"
    );
    assert_eq!(closed.code, 4001, "replaced: {closed:?}");
    // dave is told about what could not be delivered, and reaches the new
    // connection once node 0 has caught up.
    within("dave reaches the new carol", async {
        loop {
            dave.send("carol", "offer", json!("after")).await;
            if let Ok(got) =
                tokio::time::timeout(Duration::from_millis(300), new_carol.recv()).await
                && got["payload"] == "after"
            {
                return;
            }
        }
    })
    .await;
}
