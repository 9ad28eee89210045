//! Three gateway processes on a Redis primary, one replica and three
//! Sentinels (Debian's `redis-server` and `redis-sentinel`, down after
//! 1 s): the primary SIGKILLed under cross-node traffic on both transports
//! loses no envelope silently and the cluster serves again within 5 s of
//! Sentinel naming the new primary; the old primary, back, is never written
//! to; and a claim the new primary never received (replication cut before
//! it) never leaves a user live on two nodes, over 20 failovers.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::redis::{SentinelGroup, replica_of, role, signal};
use common::*;
use serde_json::{Value, json};

/// Within this of Sentinel naming the new primary, every node serves again.
const SERVING_WITHIN: Duration = Duration::from_secs(5);

struct Nodes {
    nodes: Vec<GatewayProcess>,
    http: reqwest::Client,
}

impl Nodes {
    async fn start(group: &SentinelGroup) -> Self {
        let flags = group.flags();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let id = format!("node-{n}");
            let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
            args.extend(["--node-id", &id]);
            args.extend_from_slice(TEST_RATES);
            nodes.push(GatewayProcess::start(&args, "signal_gateway=info").await);
        }
        let nodes = Self {
            nodes,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        within("every node ready", nodes.all_ready()).await;
        nodes
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

    async fn all_ready(&self) {
        for node in 0..self.nodes.len() {
            while self.readyz(node).await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn connect(&self, node: usize, kind: Kind, token: &str) -> Client {
        let mut client = Client::connect(&self.nodes[node], kind, token).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "WELCOME", "{welcome}");
        client
    }

    /// Waits until the cluster-wide listing shows `users` connected.
    async fn wait_connected(&self, users: &[&str]) {
        let want: BTreeSet<String> = users.iter().map(|u| u.to_string()).collect();
        within("cluster-wide listing", async {
            loop {
                let listed = self.nodes[0].addrs.users().await;
                let got: BTreeSet<String> = listed["connected"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|u| u["username"].as_str().map(str::to_owned))
                    .collect();
                if want.is_subset(&got) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

/// One cross-node stream: envelopes `m<n>` from one client to another,
/// each either received or answered to its sender.
#[derive(Default)]
struct Stream {
    sent: u64,
    received: BTreeSet<u64>,
    answered: BTreeSet<u64>,
    errors: BTreeSet<String>,
}

impl Stream {
    /// Sorts what `client` got: envelopes of the stream it receives
    /// (`into`) and answers to envelopes it sent (`self`).
    fn read(got: &Value, outgoing: &mut Stream, incoming: Option<&mut Stream>) {
        let kind = got["type"].as_str().unwrap_or_default();
        if let Some(n) = kind.strip_prefix('m').and_then(|n| n.parse().ok())
            && let Some(incoming) = incoming
        {
            incoming.received.insert(n);
            return;
        }
        if let Some(n) = got["payload"]["type"]
            .as_str()
            .and_then(|t| t.strip_prefix('m'))
            .and_then(|n| n.parse().ok())
        {
            outgoing.answered.insert(n);
            outgoing.errors.insert(kind.to_owned());
        }
    }

    fn lost(&self) -> Vec<u64> {
        (0..self.sent)
            .filter(|n| !self.received.contains(n) && !self.answered.contains(n))
            .collect()
    }
}

/// Everything waiting on `client`, sorted into the streams.
async fn drain(client: &mut Client, outgoing: &mut Stream, mut incoming: Option<&mut Stream>) {
    while let Ok(got) = tokio::time::timeout(Duration::from_millis(1), client.recv()).await {
        Stream::read(&got, outgoing, incoming.as_deref_mut());
    }
}

/// SIGKILL of the primary while alice (WebSocket, node 0) sends to bob
/// (WebTransport, node 1), bob to carol (WebSocket, node 2) and alice to
/// dave (WebTransport, node 0): same-node traffic never stops, cross-node
/// sends are answered CLUSTER_UNAVAILABLE while nodes say why they are not
/// ready, every node serves again within 5 s of the first Sentinel naming
/// the replica, nothing is lost silently, and identities registered before the
/// kill authenticate on every node. Then the old primary comes back: no
/// node connects to it while Sentinel demotes it, and `/readyz` and
/// `/v1/nodes` stay right on every node.
#[tokio::test]
async fn a_killed_primary_fails_over_under_traffic_and_is_not_written_to_when_back() {
    let mut group = SentinelGroup::start();
    group.wait_settled().await;
    let nodes = Nodes::start(&group).await;
    let names = ["alice", "bob", "carol", "dave"];
    let mut tokens = Vec::new();
    for (n, name) in names.iter().enumerate() {
        tokens.push(nodes.nodes[n % 3].register(name).await);
    }
    let mut alice = nodes.connect(0, Kind::WebSocket, &tokens[0]).await;
    let mut bob = nodes.connect(1, Kind::WebTransport, &tokens[1]).await;
    let mut carol = nodes.connect(2, Kind::WebSocket, &tokens[2]).await;
    let mut dave = nodes.connect(0, Kind::WebTransport, &tokens[3]).await;
    nodes.wait_connected(&names).await;

    let old = group.primary().expect("the Sentinels agree on a primary");
    let new = 1 - old;
    let mut to_bob = Stream::default();
    let mut to_carol = Stream::default();
    let mut local = 0;
    let started = Instant::now();
    let mut killed_at = None;
    let mut named_at = None;
    let mut serving_at = None;
    let mut reasons = BTreeSet::new();
    let mut last_look = Instant::now();
    let mut serving_from = (0, 0);
    while serving_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(2)) {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no failover: {}",
            group.sentinels[0].log()
        );
        if killed_at.is_none() && started.elapsed() > Duration::from_secs(1) {
            group.servers[old].kill();
            killed_at = Some(Instant::now());
        }
        if killed_at.is_some() && serving_at.is_none() && last_look.elapsed() > LOOK_EVERY {
            last_look = Instant::now();
            if named_at.is_none() && group.named_by_any(new) {
                named_at = Some(Instant::now());
            }
            let mut ready = 0;
            for node in 0..3 {
                match nodes.readyz(node).await {
                    (200, _) => ready += 1,
                    (_, body) => {
                        reasons.insert(body["message"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
            if named_at.is_some() && ready == 3 {
                serving_at = Some(Instant::now());
                serving_from = (to_bob.sent, to_carol.sent);
            }
        }
        alice
            .send("bob", &format!("m{}", to_bob.sent), json!(to_bob.sent))
            .await;
        to_bob.sent += 1;
        bob.send(
            "carol",
            &format!("m{}", to_carol.sent),
            json!(to_carol.sent),
        )
        .await;
        to_carol.sent += 1;
        alice.send("dave", "local", json!(local)).await;
        let got = dave.recv().await;
        assert_eq!(got["payload"], local, "same-node traffic never stops");
        local += 1;
        drain(&mut alice, &mut to_bob, None).await;
        drain(&mut bob, &mut to_carol, Some(&mut to_bob)).await;
        drain(&mut carol, &mut Stream::default(), Some(&mut to_carol)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (killed_at, named_at, serving_at) =
        (killed_at.unwrap(), named_at.unwrap(), serving_at.unwrap());
    let took = serving_at - named_at;
    eprintln!(
        "Sentinel named the new primary {:?} after the kill; every node ready {took:?} later; reasons given: {reasons:?}",
        named_at - killed_at
    );
    assert!(
        took < SERVING_WITHIN,
        "serving again {took:?} after the switch"
    );
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| !r.is_empty()),
        "/readyz said why it was not ready: {reasons:?}"
    );
    // Every envelope ends received or answered (waiting out the delivery
    // timeout for those whose fate was unknown).
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline && (!to_bob.lost().is_empty() || !to_carol.lost().is_empty()) {
        drain(&mut alice, &mut to_bob, None).await;
        drain(&mut bob, &mut to_carol, Some(&mut to_bob)).await;
        drain(&mut carol, &mut Stream::default(), Some(&mut to_carol)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (name, stream) in [("alice -> bob", &to_bob), ("bob -> carol", &to_carol)] {
        assert!(
            stream.lost().is_empty(),
            "{name}: sent {}, silently lost {:?}",
            stream.sent,
            stream.lost()
        );
        assert!(
            stream.errors.contains("CLUSTER_UNAVAILABLE"),
            "{name}: cross-node sends during the switch were refused clearly: {:?}",
            stream.errors
        );
        eprintln!(
            "{name}: sent {}, received {}, answered {} ({:?})",
            stream.sent,
            stream.received.len(),
            stream.answered.len(),
            stream.errors
        );
    }
    // Cross-node delivery works once every node is ready, both ways.
    let late = |stream: &Stream, from: u64| -> Vec<u64> {
        (from..stream.sent)
            .filter(|n| !stream.received.contains(n))
            .collect()
    };
    assert_eq!(
        late(&to_bob, serving_from.0),
        Vec::<u64>::new(),
        "alice -> bob once serving"
    );
    assert_eq!(
        late(&to_carol, serving_from.1),
        Vec::<u64>::new(),
        "bob -> carol once serving"
    );
    // Identities registered before the kill authenticate on every node.
    for node in 0..3 {
        for (name, token) in names.iter().zip(&tokens) {
            let checked = nodes
                .http
                .get(nodes.url(node, "/v1/user"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(checked.status(), 200, "{name} on node {node}");
        }
    }
    let metrics = within(
        "GET /metrics",
        nodes.http.get(nodes.url(0, "/metrics")).send(),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let primary_line = format!(
        "signal_gateway_cluster_primary{{address=\"127.0.0.1:{}\"}} 1",
        group.servers[new].port
    );
    assert!(metrics.contains(&primary_line), "{metrics}");
    assert!(
        metrics.contains("signal_gateway_cluster_failovers_total 1"),
        "{metrics}"
    );
    let not_ready: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("signal_gateway_cluster_not_ready_seconds_total "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        (0.5..15.0).contains(&not_ready),
        "time not ready counted: {not_ready} s"
    );

    // The old primary comes back (as it was: a primary with its data), and
    // Sentinel demotes it; no node connects to it meanwhile.
    group.servers[old].restart();
    let back = Instant::now();
    let mut demoted = false;
    while back.elapsed() < Duration::from_secs(3) || !demoted {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "Sentinel did not demote the old primary: {}",
            group.sentinels[0].log()
        );
        demoted = role(group.servers[old].port).as_deref() == Ok("slave");
        let clients: String = group.servers[old].ask(::redis::cmd("CLIENT").arg("LIST"));
        let strangers: Vec<&str> = clients
            .lines()
            .filter(|line| {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|f| f.strip_prefix(name))
                        .unwrap_or_default()
                };
                !field("name=").starts_with("sentinel-")
                    && !field("flags=").contains('M')
                    && !["client", "role"]
                        .iter()
                        .any(|c| field("cmd=").starts_with(c))
            })
            .collect();
        assert!(
            strangers.is_empty(),
            "a gateway connected to the old primary: {strangers:?}"
        );
        for node in 0..3 {
            assert_eq!(nodes.readyz(node).await.0, 200, "node {node}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in 0..3 {
        let listed = nodes.nodes[node].addrs.nodes().await;
        let ids: Vec<&str> = listed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["node-0", "node-1", "node-2"], "node {node}");
    }
    alice.send("bob", "after", json!("demoted")).await;
    within("bob hears alice after the demotion", async {
        while bob.recv().await["type"] != "after" {}
    })
    .await;
}

/// How often the test looks at the Sentinels and the nodes' `/readyz`.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The lost write, made deterministic: the replica is frozen and cut off
/// from the primary, a user connects to node 0 (a claim only the primary
/// has), the primary is killed, and the replica (which never saw the claim)
/// is promoted; then the same token races to nodes 1 and 2. Every time, the
/// connection on node 0 is closed as replaced and exactly one of the other
/// two stays, reached from every node. 20 failovers.
#[tokio::test]
async fn a_claim_lost_in_a_failover_never_leaves_a_user_live_twice() {
    const ROUNDS: usize = 20;
    let mut group = SentinelGroup::start();
    group.wait_settled().await;
    let nodes = Nodes::start(&group).await;
    let mut tokens = Vec::new();
    for round in 0..ROUNDS {
        tokens.push(nodes.nodes[round % 3].register(&format!("u{round}")).await);
    }
    let probe_token = nodes.nodes[0].register("probe").await;
    let mut probe = nodes.connect(0, Kind::WebSocket, &probe_token).await;
    let started = Instant::now();
    for (round, token) in tokens.iter().enumerate() {
        let user = format!("u{round}");
        let kind = if round % 2 == 0 {
            Kind::WebSocket
        } else {
            Kind::WebTransport
        };
        group.wait_settled().await;
        let primary = group.primary().expect("the Sentinels agree on a primary");
        let replica = 1 - primary;
        // Cut replication: freeze the replica, then have the primary drop
        // its link, so nothing written from here on reaches the replica.
        group.servers[replica].freeze(true);
        let _: () = group.servers[primary].ask(
            ::redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("replica"),
        );
        let first = nodes.connect(0, kind, token).await;
        let route: Option<String> = group.servers[primary].ask(
            ::redis::cmd("HGET")
                .arg(format!("sg:route:{user}"))
                .arg("node"),
        );
        assert_eq!(route.as_deref(), Some("node-0"), "round {round}");
        group.servers[primary].kill();
        group.servers[replica].freeze(false);
        let failing = Instant::now();
        group.wait_primary(replica, Duration::from_secs(30)).await;
        let failed_over = failing.elapsed();
        within("every node ready", nodes.all_ready()).await;

        // The same token races to nodes 1 and 2.
        let connects = [1, 2].map(|node| {
            let addrs = nodes.nodes[node].addrs.clone();
            let token = token.clone();
            tokio::spawn(async move { Client::connect(&addrs, kind, &token).await })
        });
        let mut clients = vec![first];
        for connect in connects {
            clients.push(connect.await.unwrap());
        }
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
        let mut closed = Vec::new();
        let mut welcomed = Vec::new();
        within("two of three closed, the third welcomed", async {
            while !(closed.len() == 2
                && welcomed.iter().any(|w| closed.iter().all(|(c, _)| c != w)))
            {
                match events.recv().await.unwrap() {
                    (index, Ok(v)) if v["type"] == "WELCOME" => welcomed.push(index),
                    (index, Err(close)) => closed.push((index, close)),
                    (_, Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(
            closed.iter().any(|(index, _)| *index == 0),
            "round {round}: the connection whose claim was lost is closed: {closed:?}"
        );
        for (_, close) in &closed {
            assert_eq!(
                (close.code, close.reason.as_str()),
                (4001, "REPLACED"),
                "round {round}"
            );
        }
        let survivor = (0..3).find(|i| closed.iter().all(|(c, _)| c != i)).unwrap();
        // Exactly one live connection: the probe on node 0 reaches it, and
        // it stays the only one.
        probe.send(&user, "ping", json!(round)).await;
        let heard = tokio::time::timeout(TIMEOUT, events.recv()).await;
        if heard.is_err() {
            let answers: Vec<Value> =
                std::iter::from_fn(|| futures::FutureExt::now_or_never(probe.recv())).collect();
            let route: std::collections::HashMap<String, String> =
                group.servers[replica].ask(::redis::cmd("HGETALL").arg(format!("sg:route:{user}")));
            panic!(
                "round {round}: the survivor ({survivor}) did not get the probe; the probe got {answers:?}; route {route:?}; closed {closed:?}"
            );
        }
        match heard.unwrap().unwrap() {
            (index, Ok(v)) => {
                assert_eq!(index, survivor, "round {round}");
                assert_eq!(v["payload"], json!(round), "round {round}");
            }
            (index, Err(close)) => panic!("round {round}: {index} closed too: {close:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            events.try_recv().is_err(),
            "round {round}: nothing else happened"
        );
        for reader in readers {
            reader.abort();
        }
        // The old primary comes back as the new one's replica.
        group.servers[primary].restart_with(&replica_of(group.servers[replica].port));
        eprintln!(
            "round {round}: failed over in {failed_over:?}; {:?} since the first round",
            started.elapsed()
        );
    }
}

/// The flags: Sentinels as `host:port`, with a master name, not with
/// `--redis`; passwords only with Sentinels.
#[test]
fn sentinel_flags_are_checked() {
    use signal_gateway::config::Config;
    let check = |args: &[&str]| {
        Config::from_args(args)
            .map_err(|err| err.to_string())
            .and_then(|config| config.validate().map_err(|err| err.to_string()))
    };
    let good = [
        "--redis-sentinel",
        "10.0.0.1:26379,[::1]:26380",
        "--redis-master",
        "gw",
    ];
    assert_eq!(check(&good), Ok(()));
    let refused = [
        &["--redis-sentinel", "10.0.0.1:26379"][..],
        &["--redis-sentinel", "10.0.0.1", "--redis-master", "gw"],
        &["--redis-sentinel", "10.0.0.1:0", "--redis-master", "gw"],
        &["--redis-master", "gw"],
        &["--redis-password", "x", "--redis", "redis://127.0.0.1"],
        &[
            "--redis",
            "redis://127.0.0.1",
            "--redis-sentinel",
            "10.0.0.1:26379",
            "--redis-master",
            "gw",
        ],
    ];
    for args in refused {
        assert!(check(args).is_err(), "{args:?} refused");
    }
}

/// The lost write with the old claim's node frozen (SIGSTOP) through the
/// failover, and one reconnect on node 1 while it is: the user had
/// connected before (its epoch counter replicated), so without the
/// failover's floor the new claim would get the very epoch of the lost one
/// and the frozen node, resuming, would win the tie and close the newest
/// connection. With it, the resumed node finds a newer claim and closes its
/// stale copy; the connection on node 1 stays, reached from node 2.
#[tokio::test]
async fn a_node_frozen_through_a_failover_loses_its_stale_claim() {
    const ROUNDS: usize = 3;
    let mut group = SentinelGroup::start();
    group.wait_settled().await;
    let nodes = Nodes::start(&group).await;
    // With no replica in sync, a registration is undone and answered 503
    // after --redis-wait-timeout (1 s); once one is, the name is free (not
    // TAKEN: nothing was registered).
    let primary = group.primary().expect("the Sentinels agree on a primary");
    group.servers[1 - primary].freeze(true);
    let register = || async {
        let response = nodes
            .http
            .post(nodes.url(1, "/v1/register"))
            .json(&json!({"username": "unconfirmed"}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    let asked = Instant::now();
    let (status, body) = within("an unconfirmed registration", register()).await;
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("UNAVAILABLE")),
        "{body}"
    );
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "waited for a replica"
    );
    group.servers[1 - primary].freeze(false);
    group.wait_settled().await;
    let (status, body) = within("the registration again", register()).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("SUCCESS")),
        "{body}"
    );

    let probe_token = nodes.nodes[2].register("probe").await;
    let mut probe = nodes.connect(2, Kind::WebSocket, &probe_token).await;
    for round in 0..ROUNDS {
        let user = format!("f{round}");
        // The last round's old primary is back as a replica, in sync.
        group.wait_settled().await;
        let token = nodes.nodes[0].register(&user).await;
        // A claim every node and the replica know, then one only the
        // primary has.
        nodes
            .connect(1, Kind::WebSocket, &token)
            .await
            .close()
            .await;
        group.wait_settled().await;
        let primary = group.primary().expect("the Sentinels agree on a primary");
        let replica = 1 - primary;
        group.servers[replica].freeze(true);
        let _: () = group.servers[primary].ask(
            ::redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("replica"),
        );
        let mut stale = nodes.connect(0, Kind::WebTransport, &token).await;
        let frozen = nodes.nodes[0].child.id().unwrap();
        signal(frozen, "-STOP");
        group.servers[primary].kill();
        group.servers[replica].freeze(false);
        group.wait_primary(replica, Duration::from_secs(30)).await;
        within("nodes 1 and 2 ready", async {
            for node in 1..3 {
                while nodes.readyz(node).await.0 != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await;
        let mut newest = nodes.connect(1, Kind::WebSocket, &token).await;
        signal(frozen, "-CONT");
        let closed = within("the stale copy closed", async {
            loop {
                if let Err(close) = stale.recv_or_close().await {
                    return close;
                }
            }
        })
        .await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4001, "REPLACED"),
            "round {round}"
        );
        within("every node ready", nodes.all_ready()).await;
        probe.send(&user, "ping", json!(round)).await;
        let got = within("the newest connection gets the probe", newest.recv()).await;
        assert_eq!(got["payload"], json!(round), "round {round}: {got}");
        newest.close().await;
        group.servers[primary].restart_with(&replica_of(group.servers[replica].port));
    }
}
