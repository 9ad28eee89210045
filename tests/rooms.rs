//! Rooms against a real gateway over both transports: join, leave and
//! presence in order, room envelopes reaching every other member exactly
//! once, every error past each limit and outside a JWT's rooms, the admin
//! routes, and membership that survives a reconnect.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::SystemTime;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

/// A JWT for `user`, with `rooms` as its `rooms` claim when given.
fn jwt(user: &str, rooms: Option<Value>) -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = json!({ "sub": user, "exp": exp });
    if let Some(rooms) = rooms {
        claims["rooms"] = rooms;
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The other transport, so rooms mix both.
fn other(kind: Kind) -> Kind {
    match kind {
        Kind::WebSocket => Kind::WebTransport,
        Kind::WebTransport => Kind::WebSocket,
    }
}

async fn join(client: &mut Client, room: &str) {
    client
        .send_text(&json!({"target": "", "type": "JOIN", "payload": {"room": room}}).to_string())
        .await;
}

async fn leave(client: &mut Client, room: &str) {
    client
        .send_text(&json!({"target": "", "type": "LEAVE", "payload": {"room": room}}).to_string())
        .await;
}

async fn to_room(client: &mut Client, room: &str, kind: &str, payload: Value) {
    client
        .send_text(&json!({"room": room, "type": kind, "payload": payload}).to_string())
        .await;
}

/// Joins and reads the `JOINED`; returns its members.
async fn joined(client: &mut Client, room: &str) -> Vec<String> {
    join(client, room).await;
    let answer = client.recv().await;
    assert_eq!(answer["type"], "JOINED", "{answer}");
    assert_eq!(answer["payload"]["room"], room);
    names(&answer["payload"]["members"])
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap().to_owned())
        .collect()
}

/// Asserts the next envelope is `PEER_JOINED`/`PEER_LEFT` for `user`.
async fn expect_presence(client: &mut Client, kind: &str, room: &str, user: &str) -> Value {
    let got = client.recv().await;
    assert_eq!(got["type"], kind, "{got}");
    assert_eq!(got["originator"], "");
    assert_eq!(got["payload"]["room"], room, "{got}");
    assert_eq!(got["payload"]["user"], user, "{got}");
    got
}

async fn presence_is_told_in_order(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", other(kind)).await;
    let mut carol = gw.user("carol", kind).await;
    assert_eq!(joined(&mut alice, "standup").await, ["alice"]);
    assert_eq!(joined(&mut bob, "standup").await, ["alice", "bob"]);
    expect_presence(&mut alice, "PEER_JOINED", "standup", "bob").await;
    assert_eq!(
        joined(&mut carol, "standup").await,
        ["alice", "bob", "carol"]
    );
    // Carol speaks at once: the others hear of her before they hear her.
    to_room(&mut carol, "standup", "hello", json!(1)).await;
    for member in [&mut alice, &mut bob] {
        expect_presence(member, "PEER_JOINED", "standup", "carol").await;
        let hello = member.recv().await;
        assert_eq!(hello["type"], "hello");
        assert_eq!(hello["originator"], "carol");
        assert_eq!(hello["room"], "standup");
        assert_eq!(hello["target"], "");
    }
    // Joining again answers JOINED and tells nobody.
    assert_eq!(joined(&mut bob, "standup").await, ["alice", "bob", "carol"]);
    // Carol's last envelope comes before her PEER_LEFT.
    to_room(&mut carol, "standup", "bye", Value::Null).await;
    leave(&mut carol, "standup").await;
    let left = carol.recv().await;
    assert_eq!(left["type"], "LEFT");
    assert_eq!(left["payload"]["room"], "standup");
    for member in [&mut alice, &mut bob] {
        assert_eq!(member.recv().await["type"], "bye");
        let got = expect_presence(member, "PEER_LEFT", "standup", "carol").await;
        assert_eq!(got["payload"]["reason"], "left");
    }
    // A connection that ends takes its user out: `disconnected`.
    bob.close().await;
    let got = expect_presence(&mut alice, "PEER_LEFT", "standup", "bob").await;
    assert_eq!(got["payload"]["reason"], "disconnected");
    // Nothing else came: a probe to herself is next.
    alice.send("alice", "probe", Value::Null).await;
    assert_eq!(alice.recv().await["type"], "probe");
}

async fn room_envelopes_reach_every_other_member_once_in_order(kind: Kind) {
    let gw = TestGateway::start().await;
    let names = ["m0", "m1", "m2", "m3"];
    let mut members = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let transport = if n % 2 == 0 { kind } else { other(kind) };
        let mut client = gw.user(name, transport).await;
        joined(&mut client, "mesh").await;
        members.push(client);
    }
    // Everyone has heard every later join.
    for (n, member) in members.iter_mut().enumerate() {
        for later in &names[n + 1..] {
            expect_presence(member, "PEER_JOINED", "mesh", later).await;
        }
    }
    const EACH: usize = 25;
    // The payload travels byte for byte, spacing and number forms included.
    for member in members.iter_mut() {
        for i in 0..EACH {
            member
                .send_text(&format!(
                    r#"{{"room":"mesh","type":"n","payload":{{"i": {i}, "f": 1.50}}}}"#
                ))
                .await;
        }
    }
    for (n, member) in members.iter_mut().enumerate() {
        let mut next: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..EACH * (names.len() - 1) {
            let text = member.recv_text().await;
            let got: Value = serde_json::from_str(&text).unwrap();
            let from = got["originator"].as_str().unwrap().to_owned();
            assert_ne!(from, names[n], "a member never gets its own envelope");
            let i = got["payload"]["i"].as_u64().unwrap() as usize;
            assert!(
                text.contains(&format!(r#""payload":{{"i": {i}, "f": 1.50}}"#)),
                "{text}"
            );
            let expected = next.entry(from.clone()).or_default();
            assert_eq!(i, *expected, "{from}'s envelopes in order at {}", names[n]);
            *expected += 1;
        }
        assert!(next.values().all(|count| *count == EACH), "{next:?}");
        member.send(names[n], "probe", Value::Null).await;
        assert_eq!(member.recv().await["type"], "probe", "nothing more");
    }
    let stats = gw.get_json("/v1/stats").await;
    let counters = &stats["counters"];
    let fanout = (EACH * names.len() * (names.len() - 1)) as u64;
    assert_eq!(counters["rooms"]["sends"], (EACH * names.len()) as u64);
    assert_eq!(counters["rooms"]["fanout"], fanout);
}

async fn every_error_past_each_limit(kind: Kind) {
    let gw =
        TestGateway::start_with(&["--max-room-members", "2", "--max-rooms-per-user", "2"]).await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    let mut carol = gw.user("carol", other(kind)).await;
    joined(&mut alice, "a").await;
    joined(&mut bob, "a").await;
    expect_presence(&mut alice, "PEER_JOINED", "a", "bob").await;
    join(&mut carol, "a").await;
    let full = carol.recv().await;
    assert_eq!(full["type"], "ROOM_FULL", "{full}");
    assert_eq!(full["payload"]["room"], "a");
    assert_eq!(full["payload"]["type"], "JOIN");
    joined(&mut alice, "b").await;
    join(&mut alice, "c").await;
    let too_many = alice.recv().await;
    assert_eq!(too_many["type"], "TOO_MANY_ROOMS", "{too_many}");
    assert_eq!(too_many["payload"]["room"], "c");
    to_room(&mut carol, "a", "x", Value::Null).await;
    let not_in = carol.recv().await;
    assert_eq!(not_in["type"], "NOT_IN_ROOM", "{not_in}");
    assert_eq!(not_in["payload"]["type"], "x");
    leave(&mut carol, "a").await;
    assert_eq!(carol.recv().await["type"], "NOT_IN_ROOM");
    for bad in [
        json!({"room": ""}),
        json!({"room": " padded"}),
        json!({"room": "a\u{200b}b"}),
        json!({}),
        json!("a"),
    ] {
        carol
            .send_text(&json!({"target": "", "type": "JOIN", "payload": bad}).to_string())
            .await;
        let answer = carol.recv().await;
        assert_eq!(answer["type"], "INVALID_MESSAGE", "{bad}: {answer}");
    }
    // Room names follow the username rules: 64 characters fit, 65 do not.
    let long = "r".repeat(65);
    join(&mut carol, &long).await;
    assert_eq!(carol.recv().await["type"], "INVALID_MESSAGE");
    assert_eq!(joined(&mut carol, &"r".repeat(64)).await.len(), 1);
    // Leaving frees a place.
    leave(&mut bob, "a").await;
    assert_eq!(bob.recv().await["type"], "LEFT");
    assert_eq!(joined(&mut carol, "a").await, ["alice", "carol"]);
}

async fn a_room_costs_one_envelope_per_recipient(kind: Kind) {
    let gw = TestGateway::start_with(&["--envelope-rate", "1", "--envelope-burst", "11"]).await;
    let mut members = Vec::new();
    for n in 0..4 {
        let mut client = gw.user(&format!("r{n}"), kind).await;
        joined(&mut client, "room").await;
        members.push(client);
    }
    // r0 paid 1 for its JOIN; each room envelope costs 3 (three others):
    // three fit in the rest of the burst, the fourth is refused (the rate
    // adds one a second: it would need two more).
    for i in 0..4 {
        to_room(&mut members[0], "room", "n", json!(i)).await;
    }
    for later in ["r1", "r2", "r3"] {
        expect_presence(&mut members[0], "PEER_JOINED", "room", later).await;
    }
    let refused = members[0].recv().await;
    assert_eq!(refused["type"], "RATE_LIMITED", "{refused}");
    let got = members[1].recv().await;
    // r1 first hears of r2 and r3 joining.
    assert_eq!(got["type"], "PEER_JOINED");
    assert_eq!(members[1].recv().await["type"], "PEER_JOINED");
    for i in 0..3 {
        assert_eq!(members[1].recv().await["payload"], i);
    }
}

async fn jwt_rooms_claim_limits_what_a_token_may_join(kind: Kind) {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let token = jwt("dana", Some(json!(["lobby", "team-42-*"])));
    let mut dana = Client::connect(&gw, kind, &token).await;
    assert_eq!(dana.recv().await["type"], "WELCOME");
    assert_eq!(joined(&mut dana, "lobby").await, ["dana"]);
    assert_eq!(joined(&mut dana, "team-42-standup").await, ["dana"]);
    for refused in ["lobby2", "team-43-standup", "team-42"] {
        join(&mut dana, refused).await;
        let answer = dana.recv().await;
        assert_eq!(answer["type"], "FORBIDDEN", "{refused}: {answer}");
        assert_eq!(answer["payload"]["room"], refused);
    }
    // Without the claim, any room.
    let mut eve = Client::connect(&gw, kind, &jwt("eve", None)).await;
    assert_eq!(eve.recv().await["type"], "WELCOME");
    assert_eq!(joined(&mut eve, "anywhere").await, ["eve"]);
    // A claim that is not a list of names refuses the token.
    let bad = jwt("fay", Some(json!("lobby")));
    match kind {
        Kind::WebSocket => {
            let mut fay = Client::connect(&gw, kind, &bad).await;
            assert_eq!(fay.closed().await.code, 4000);
        }
        Kind::WebTransport => {
            let query = format!("?token={bad}");
            assert!(wt_connect(&gw, &query, &[]).await.is_err());
        }
    }
}

async fn jwt_only_lets_only_a_claim_open_a_room(kind: Kind) {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET, "--rooms", "jwt-only"]).await;
    let mut registered = gw.user("~reg", kind).await;
    join(&mut registered, "lobby").await;
    assert_eq!(registered.recv().await["type"], "FORBIDDEN");
    let mut plain = Client::connect(&gw, kind, &jwt("plain", None)).await;
    assert_eq!(plain.recv().await["type"], "WELCOME");
    join(&mut plain, "lobby").await;
    assert_eq!(plain.recv().await["type"], "FORBIDDEN");
    let mut granted = Client::connect(&gw, kind, &jwt("granted", Some(json!(["lobby"])))).await;
    assert_eq!(granted.recv().await["type"], "WELCOME");
    assert_eq!(joined(&mut granted, "lobby").await, ["granted"]);
}

async fn admin_lists_rooms_and_kicks_one_user(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", other(kind)).await;
    let mut carol = gw.user("carol", kind).await;
    joined(&mut alice, "x").await;
    joined(&mut bob, "x").await;
    joined(&mut bob, "y").await;
    joined(&mut carol, "y").await;
    let listing = gw.admin(reqwest::Method::GET, "/v1/rooms").await;
    assert_eq!(
        listing,
        json!({"rooms": [
            {"room": "x", "members": [{"user": "alice"}, {"user": "bob"}]},
            {"room": "y", "members": [{"user": "bob"}, {"user": "carol"}]},
        ]})
    );
    let kicked = gw.admin(reqwest::Method::POST, "/v1/users/bob/kick").await;
    assert_eq!(kicked["kicked"], 1);
    let closed = bob.closed().await;
    assert_eq!(closed.code, 4002);
    assert_eq!(closed.reason, "KICKED");
    expect_presence(&mut alice, "PEER_JOINED", "x", "bob").await;
    let got = expect_presence(&mut alice, "PEER_LEFT", "x", "bob").await;
    assert_eq!(got["payload"]["reason"], "kicked");
    let got = expect_presence(&mut carol, "PEER_LEFT", "y", "bob").await;
    assert_eq!(got["payload"]["reason"], "kicked");
    // Only bob: the others stay connected and in their rooms.
    alice.send("carol", "still-here", Value::Null).await;
    assert_eq!(carol.recv().await["type"], "still-here");
    let listing = gw.admin(reqwest::Method::GET, "/v1/rooms").await;
    assert_eq!(listing["rooms"][0]["members"], json!([{"user": "alice"}]));
    let response = gw
        .http()
        .post(gw.url("/v1/users/nobody/kick"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

async fn a_reconnect_keeps_the_rooms_without_churn(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let token = gw.register("bob").await;
    let mut bob = Client::connect(&gw, other(kind), &token).await;
    assert_eq!(bob.recv().await["type"], "WELCOME");
    joined(&mut alice, "r").await;
    joined(&mut bob, "r").await;
    expect_presence(&mut alice, "PEER_JOINED", "r", "bob").await;
    // Newest wins: bob's second connection replaces the first.
    let mut again = Client::connect(&gw, kind, &token).await;
    assert_eq!(again.recv().await["type"], "WELCOME");
    assert_eq!(bob.closed().await.code, 4001);
    to_room(&mut alice, "r", "after", Value::Null).await;
    let got = again.recv().await;
    assert_eq!(got["type"], "after", "bob is still in the room: {got}");
    to_room(&mut again, "r", "back", Value::Null).await;
    let got = alice.recv().await;
    assert_eq!(
        got["type"], "back",
        "no PEER_LEFT or PEER_JOINED came first: {got}"
    );
}

async fn the_books_count_every_fan_out_write(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut a = gw.user("a", kind).await;
    let mut b = gw.user("b", other(kind)).await;
    let mut c = gw.user("c", kind).await;
    for client in [&mut a, &mut b, &mut c] {
        joined(client, "r").await;
    }
    for i in 0..10 {
        to_room(&mut a, "r", "n", json!(i)).await;
    }
    a.send("b", "direct", Value::Null).await;
    to_room(&mut a, "elsewhere", "n", Value::Null).await;
    assert_eq!(a.recv().await["type"], "PEER_JOINED");
    assert_eq!(a.recv().await["type"], "PEER_JOINED");
    assert_eq!(a.recv().await["type"], "NOT_IN_ROOM");
    b.recv().await;
    for _ in 0..11 {
        b.recv().await;
    }
    for _ in 0..10 {
        c.recv().await;
    }
    // Written is counted once the write returns, a moment after the reader
    // may have the envelope.
    let stats = within("the books settle", async {
        loop {
            let stats = gw.get_json("/v1/stats").await;
            let n = |key: &str| stats["counters"][key].as_u64().unwrap();
            if n("written") == n("forwarded") {
                return stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let n = |key: &str| stats["counters"][key].as_u64().unwrap();
    let rooms = |key: &str| stats["counters"]["rooms"][key].as_u64().unwrap();
    assert_eq!(rooms("sends"), 11);
    assert_eq!(rooms("fanout"), 20);
    assert_eq!(n("forwarded"), 21);
    assert_eq!(
        n("frames_received"),
        n("after_close")
            + n("invalid")
            + n("rate_limited")
            + n("target_not_found")
            + n("target_slow")
            + n("to_gateway")
            + rooms("sends")
            + (n("forwarded") - rooms("fanout")),
        "{stats}"
    );
    assert_eq!(
        n("forwarded"),
        n("written") + n("undelivered_reported") + n("undelivered_unreported"),
        "{stats}"
    );
    // JOINED ×3, PEER_JOINED 2 + 1.
    assert_eq!(rooms("presence"), 6);
}

every_transport!(
    presence_is_told_in_order,
    room_envelopes_reach_every_other_member_once_in_order,
    every_error_past_each_limit,
    a_room_costs_one_envelope_per_recipient,
    jwt_rooms_claim_limits_what_a_token_may_join,
    jwt_only_lets_only_a_claim_open_a_room,
    admin_lists_rooms_and_kicks_one_user,
    a_reconnect_keeps_the_rooms_without_churn,
    the_books_count_every_fan_out_write,
);

/// Three gateway processes on one real Redis.
mod cluster {
    use std::time::{Duration, Instant};

    use super::common::redis::RedisServer;
    use super::common::*;
    use super::{expect_presence, joined, names, to_room};
    use serde_json::{Value, json};

    struct Cluster {
        _redis: RedisServer,
        nodes: Vec<GatewayProcess>,
    }

    impl Cluster {
        async fn start() -> Self {
            let redis = RedisServer::start();
            let url = redis.url();
            let mut nodes = Vec::new();
            for n in 0..3 {
                let id = format!("node-{n}");
                let mut args = vec!["--redis", &url, "--node-id", &id];
                args.extend_from_slice(TEST_RATES);
                nodes.push(GatewayProcess::start(&args, "signal_gateway=info").await);
            }
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            within("every node ready", async {
                for node in &nodes {
                    loop {
                        let ready = http
                            .get(format!("http://{}/readyz", node.addrs.http))
                            .send()
                            .await
                            .is_ok_and(|r| r.status() == 200);
                        if ready {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
            .await;
            Self {
                _redis: redis,
                nodes,
            }
        }

        async fn user(&self, node: usize, kind: Kind, name: &str) -> Client {
            let token = self.nodes[0].register(name).await;
            let mut client = Client::connect(&self.nodes[node].addrs, kind, &token).await;
            assert_eq!(client.recv().await["type"], "WELCOME");
            client
        }

        async fn stats(&self, node: usize) -> Value {
            get_json_at(&self.nodes[node].addrs, "/v1/stats").await
        }
    }

    /// One room across three nodes: presence in one order everywhere,
    /// envelopes to every member once and in order, and one copy per node.
    #[tokio::test]
    async fn one_room_across_nodes() {
        let cluster = Cluster::start().await;
        let mut a = cluster.user(0, Kind::WebSocket, "a").await;
        let mut b = cluster.user(1, Kind::WebTransport, "b").await;
        let mut c = cluster.user(1, Kind::WebSocket, "c").await;
        let mut d = cluster.user(2, Kind::WebTransport, "d").await;
        assert_eq!(joined(&mut a, "mesh").await, ["a"]);
        assert_eq!(joined(&mut b, "mesh").await, ["a", "b"]);
        assert_eq!(joined(&mut c, "mesh").await, ["a", "b", "c"]);
        assert_eq!(joined(&mut d, "mesh").await, ["a", "b", "c", "d"]);
        // d speaks at once: everyone hears of d before hearing d.
        to_room(&mut d, "mesh", "hi", Value::Null).await;
        expect_presence(&mut a, "PEER_JOINED", "mesh", "b").await;
        expect_presence(&mut a, "PEER_JOINED", "mesh", "c").await;
        expect_presence(&mut b, "PEER_JOINED", "mesh", "c").await;
        for member in [&mut a, &mut b, &mut c] {
            expect_presence(member, "PEER_JOINED", "mesh", "d").await;
            let hi = member.recv().await;
            assert_eq!(
                (hi["type"].as_str(), hi["originator"].as_str()),
                (Some("hi"), Some("d"))
            );
        }
        let listing = cluster.nodes[2]
            .addrs
            .admin(reqwest::Method::GET, "/v1/rooms")
            .await;
        assert_eq!(
            listing["rooms"][0]["members"],
            json!([
                {"user": "a", "node": "node-0"},
                {"user": "b", "node": "node-1"},
                {"user": "c", "node": "node-1"},
                {"user": "d", "node": "node-2"},
            ])
        );
        let sent_before = cluster.stats(0).await["counters"]["remote"]["sent"]
            .as_u64()
            .unwrap();
        const EACH: u64 = 20;
        for i in 0..EACH {
            to_room(&mut a, "mesh", "n", json!(i)).await;
        }
        for member in [&mut b, &mut c, &mut d] {
            for i in 0..EACH {
                let got = member.recv().await;
                assert_eq!(got["originator"], "a", "{got}");
                assert_eq!(got["room"], "mesh");
                assert_eq!(got["payload"], i);
            }
            member.send("a", "probe", Value::Null).await;
        }
        for _ in 0..3 {
            assert_eq!(a.recv().await["type"], "probe", "nothing else reached a");
        }
        let sent = cluster.stats(0).await["counters"]["remote"]["sent"]
            .as_u64()
            .unwrap()
            - sent_before;
        assert_eq!(
            sent,
            2 * EACH,
            "one copy per node with members, not per member"
        );
        // A member leaving on one node is told everywhere.
        super::leave(&mut c, "mesh").await;
        assert_eq!(c.recv().await["type"], "LEFT");
        for member in [&mut a, &mut b, &mut d] {
            let got = expect_presence(member, "PEER_LEFT", "mesh", "c").await;
            assert_eq!(got["payload"]["reason"], "left");
        }
        // Kicked through another node than its own.
        let kicked = cluster.nodes[0]
            .addrs
            .admin(reqwest::Method::POST, "/v1/users/b/kick")
            .await;
        assert_eq!(kicked["kicked"], 1);
        assert_eq!(b.closed().await.code, 4002);
        for member in [&mut a, &mut d] {
            let got = expect_presence(member, "PEER_LEFT", "mesh", "b").await;
            assert_eq!(got["payload"]["reason"], "kicked");
        }
        // Every node's listing agrees.
        let listing = cluster.nodes[1]
            .addrs
            .admin(reqwest::Method::GET, "/v1/rooms")
            .await;
        assert_eq!(
            names(&json!(
                listing["rooms"][0]["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["user"].clone())
                    .collect::<Vec<_>>()
            )),
            ["a", "d"]
        );
    }

    /// A user who reconnects through another node keeps its rooms: nobody
    /// hears it leave or join, and room envelopes reach it on the new node.
    #[tokio::test]
    async fn a_reconnect_to_another_node_keeps_the_rooms() {
        let cluster = Cluster::start().await;
        let mut a = cluster.user(0, Kind::WebSocket, "a").await;
        let token = cluster.nodes[0].register("b").await;
        let mut b = Client::connect(&cluster.nodes[1].addrs, Kind::WebSocket, &token).await;
        assert_eq!(b.recv().await["type"], "WELCOME");
        joined(&mut a, "r").await;
        joined(&mut b, "r").await;
        expect_presence(&mut a, "PEER_JOINED", "r", "b").await;
        let mut again = Client::connect(&cluster.nodes[2].addrs, Kind::WebTransport, &token).await;
        assert_eq!(again.recv().await["type"], "WELCOME");
        assert_eq!(b.closed().await.code, 4001);
        // The membership moves to node 2 (the listing says so), then a's
        // envelopes reach b there.
        within("b's membership on node-2", async {
            loop {
                let listing = cluster.nodes[0]
                    .addrs
                    .admin(reqwest::Method::GET, "/v1/rooms")
                    .await;
                if listing["rooms"][0]["members"][1] == json!({"user": "b", "node": "node-2"}) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        to_room(&mut a, "r", "after", Value::Null).await;
        assert_eq!(again.recv().await["type"], "after");
        to_room(&mut again, "r", "back", Value::Null).await;
        let got = a.recv().await;
        assert_eq!(
            got["type"], "back",
            "no PEER_LEFT or PEER_JOINED first: {got}"
        );
    }

    /// A node's death takes its members out of their rooms within 5 s.
    #[tokio::test]
    async fn a_dead_nodes_members_leave_within_five_seconds() {
        let mut cluster = Cluster::start().await;
        let mut a = cluster.user(0, Kind::WebSocket, "a").await;
        let mut b = cluster.user(1, Kind::WebSocket, "b").await;
        let mut e = cluster.user(2, Kind::WebTransport, "e").await;
        joined(&mut a, "r").await;
        joined(&mut b, "r").await;
        joined(&mut e, "r").await;
        expect_presence(&mut a, "PEER_JOINED", "r", "b").await;
        expect_presence(&mut a, "PEER_JOINED", "r", "e").await;
        expect_presence(&mut b, "PEER_JOINED", "r", "e").await;
        let killed = cluster.nodes.remove(1);
        let pid = killed.child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        let at = Instant::now();
        let got = expect_presence(&mut a, "PEER_LEFT", "r", "b").await;
        let took = at.elapsed();
        assert_eq!(got["payload"]["reason"], "disconnected");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        eprintln!("a dead node's member left its room after {took:?}");
        let got = expect_presence(&mut e, "PEER_LEFT", "r", "b").await;
        assert_eq!(got["payload"]["reason"], "disconnected");
        drop(killed);
        // The room goes on between the live nodes.
        to_room(&mut e, "r", "still", Value::Null).await;
        assert_eq!(a.recv().await["type"], "still");
    }
}
