//! The realtime protocol, written once and run over both transports: every
//! test below runs as `websocket::<name>` and `webtransport::<name>`.

#[macro_use]
mod common;

use common::{Client, Kind, TestGateway, within};
use serde_json::{Value, json};

every_transport!(
    welcome_comes_first,
    forwards_with_originator_stamped_and_payload_unchanged,
    spoofed_originator_is_ignored,
    missing_payload_arrives_as_null,
    sending_to_yourself_works,
    unknown_target_gets_target_not_found_and_stays_open,
    malformed_envelopes_get_invalid_message_and_stay_open,
    raw_bytes_frames_are_accepted,
    newest_connection_wins,
    kick_closes_everyone,
    oversize_envelope_closes_with_1009,
    five_hundred_envelopes_arrive_in_order,
    fifty_pairs_without_cross_talk,
    client_close_leaves_the_registry_at_once,
);

async fn welcome_comes_first(kind: Kind) {
    let gw = TestGateway::start().await;
    let token = gw.register("alice").await;
    let mut alice = Client::connect(&gw, kind, &token).await;
    let welcome = alice.recv().await;
    assert_eq!(welcome["type"], "WELCOME");
    assert_eq!(welcome["originator"], "");
    let transport = if kind == Kind::WebSocket {
        "websocket"
    } else {
        "webtransport"
    };
    assert_eq!(welcome["payload"]["transport"], transport);
    assert_eq!(welcome["payload"]["max_envelope_bytes"], 65536);
}

async fn forwards_with_originator_stamped_and_payload_unchanged(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    let raw_payload = r#"{"type":"offer","sdp":"v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\n",  "n": 1.50e0 , "u":"\u00e9"}"#;
    alice
        .send_text(&format!(
            r#"{{"target":"bob","type":"video-offer","payload":{raw_payload}}}"#
        ))
        .await;
    let text = bob.recv_text().await;
    assert_eq!(
        text,
        format!(
            r#"{{"target":"bob","type":"video-offer","originator":"alice","payload":{raw_payload},"seq":1}}"#
        ),
        "payload bytes are forwarded unchanged, the user's seq after them"
    );
    bob.send("alice", "video-answer", json!({"sdp": "answer"}))
        .await;
    let got = alice.recv().await;
    assert_eq!(
        got,
        json!({"target":"alice","type":"video-answer","originator":"bob","payload":{"sdp":"answer"},"seq":1})
    );
}

async fn spoofed_originator_is_ignored(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut mallory = gw.user("mallory", kind).await;
    let mut bob = gw.user("bob", kind).await;
    mallory
        .send_text(r#"{"target":"bob","type":"ice-candidate","originator":"alice","payload":null}"#)
        .await;
    assert_eq!(bob.recv().await["originator"], "mallory");
}

async fn missing_payload_arrives_as_null(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    alice
        .send_text(r#"{"target":"bob","type":"hang-up"}"#)
        .await;
    let got = bob.recv().await;
    assert_eq!(got["payload"], Value::Null);
    assert!(got.as_object().unwrap().contains_key("payload"));
}

async fn sending_to_yourself_works(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    alice.send("alice", "note", json!([1, 2])).await;
    assert_eq!(
        alice.recv().await,
        json!({"target":"alice","type":"note","originator":"alice","payload":[1,2],"seq":1})
    );
}

async fn unknown_target_gets_target_not_found_and_stays_open(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    alice.send("nobody", "video-offer", json!({})).await;
    let error = alice.recv().await;
    assert_eq!(error["type"], "TARGET_NOT_FOUND");
    assert_eq!(error["originator"], "");
    assert_eq!(error["target"], "");
    assert_eq!(error["payload"]["target"], "nobody");
    assert_eq!(error["payload"]["type"], "video-offer");
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("nobody")
    );
    alice.send("alice", "still-open", Value::Null).await;
    assert_eq!(alice.recv().await["type"], "still-open");
}

async fn malformed_envelopes_get_invalid_message_and_stay_open(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let cases = [
        ("not json", "not valid JSON"),
        ("[1,2,3]", "wrong shape"),
        ("\"just a string\"", "wrong shape"),
        ("{}", "missing field `target`"),
        (r#"{"target":"bob"}"#, "missing field `type`"),
        (r#"{"target":5,"type":"x"}"#, "expected a string"),
        (r#"{"target":"bob","type":["x"]}"#, "expected a string"),
        (
            r#"{"target":"a","type":"b"}{"target":"a","type":"b"}"#,
            "trailing characters",
        ),
    ];
    for (input, expected) in cases {
        alice.send_text(input).await;
        let error = alice.recv().await;
        assert_eq!(error["type"], "INVALID_MESSAGE", "{input}");
        assert_eq!(error["originator"], "");
        let message = error["payload"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{input}: {message}");
    }
    let deep = format!(
        r#"{{"target":"alice","type":"t","payload":{}{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    alice.send_text(&deep).await;
    assert!(
        alice.recv().await["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 32")
    );
    alice.send("alice", "after", Value::Null).await;
    assert_eq!(
        alice.recv().await["type"],
        "after",
        "the connection survives bad frames"
    );
}

async fn raw_bytes_frames_are_accepted(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let envelope = br#"{"target":"alice","type":"binary-ok","payload":1}"#;
    match kind {
        // WebSocket: a binary frame, as the seed accepted.
        Kind::WebSocket => alice.send_raw(envelope).await,
        // WebTransport: two lines in one write, then a line split in two.
        Kind::WebTransport => {
            let mut two = envelope.to_vec();
            two.push(b'\n');
            two.extend_from_slice(envelope);
            two.extend_from_slice(b"\n{\"target\":\"ali");
            alice.send_raw(&two).await;
            alice.send_raw(b"ce\",\"type\":\"split\"}\r\n").await;
        }
    }
    assert_eq!(alice.recv().await["type"], "binary-ok");
    if kind == Kind::WebTransport {
        assert_eq!(alice.recv().await["type"], "binary-ok");
        assert_eq!(alice.recv().await["type"], "split");
    }
    alice.send_raw(b"\xff\xfe\n").await;
    assert_eq!(alice.recv().await["type"], "INVALID_MESSAGE");
}

async fn newest_connection_wins(kind: Kind) {
    let gw = TestGateway::start().await;
    let token = gw.register("bob").await;
    let mut old = Client::connect(&gw, kind, &token).await;
    assert_eq!(old.recv().await["type"], "WELCOME");
    let mut new = Client::connect(&gw, kind, &token).await;
    assert_eq!(new.recv().await["type"], "WELCOME");
    let closed = old.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (4001, "REPLACED"));
    assert_eq!(closed.envelope.unwrap()["reason"], "REPLACED");

    let mut alice = gw.user("alice", kind).await;
    alice.send("bob", "video-offer", json!(1)).await;
    assert_eq!(
        new.recv().await["originator"],
        "alice",
        "the new connection receives"
    );
    gw.wait_connected("bob still connected once", |users| {
        users.iter().filter(|u| u["username"] == "bob").count() == 1
    })
    .await;
}

async fn kick_closes_everyone(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    let response = gw.kick().await;
    assert_eq!(response, json!({"kicked": 2}));
    for client in [&mut alice, &mut bob] {
        let closed = client.closed().await;
        assert_eq!((closed.code, closed.reason.as_str()), (4002, "KICKED"));
        assert_eq!(closed.envelope.unwrap()["reconnect"], false);
    }
    gw.wait_connected("registry empty", |users| users.is_empty())
        .await;
    // Kicked users may reconnect with their token.
    let token = gw.register("carol").await;
    let mut carol = Client::connect(&gw, kind, &token).await;
    assert_eq!(carol.recv().await["type"], "WELCOME");
}

async fn oversize_envelope_closes_with_1009(kind: Kind) {
    let gw = TestGateway::start_with(&["--max-envelope-bytes", "1024"]).await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    alice.send("bob", "fits", json!("x".repeat(900))).await;
    assert_eq!(bob.recv().await["type"], "fits");
    alice.send("bob", "too-big", json!("x".repeat(2000))).await;
    let closed = alice.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1009, "MESSAGE_TOO_BIG")
    );
    // Nothing of the oversize envelope reached bob.
    bob.send("bob", "probe", Value::Null).await;
    assert_eq!(bob.recv().await["type"], "probe");
}

async fn five_hundred_envelopes_arrive_in_order(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    let sender = async {
        for i in 0..500 {
            alice.send("bob", "n", json!(i)).await;
        }
        alice
    };
    let receiver = async {
        for i in 0..500 {
            let got = bob.recv().await;
            assert_eq!(got["payload"], json!(i));
        }
    };
    let (_alice, ()) = tokio::join!(sender, receiver);
}

async fn fifty_pairs_without_cross_talk(kind: Kind) {
    let gw = TestGateway::start().await;
    let mut pairs = Vec::new();
    for i in 0..50 {
        let a = gw.user(&format!("a{i}"), kind).await;
        let b = gw.user(&format!("b{i}"), kind).await;
        pairs.push((i, a, b));
    }
    let runs = pairs.into_iter().map(|(i, mut a, mut b)| async move {
        for n in 0..20 {
            a.send(&format!("b{i}"), "ping", json!({"pair": i, "n": n}))
                .await;
            let got = b.recv().await;
            assert_eq!(got["originator"], format!("a{i}"));
            assert_eq!(got["payload"], json!({"pair": i, "n": n}));
            b.send(&format!("a{i}"), "pong", json!({"pair": i, "n": n}))
                .await;
            let got = a.recv().await;
            assert_eq!(got["originator"], format!("b{i}"));
            assert_eq!(got["payload"], json!({"pair": i, "n": n}));
        }
    });
    within("fifty pairs", futures::future::join_all(runs)).await;
}

async fn client_close_leaves_the_registry_at_once(kind: Kind) {
    let gw = TestGateway::start().await;
    let alice = gw.user("alice", kind).await;
    let mut bob = gw.user("bob", kind).await;
    gw.wait_connected("both connected", |users| users.len() == 2)
        .await;
    alice.close().await;
    gw.wait_connected("alice gone", |users| users.len() == 1)
        .await;
    bob.send("alice", "offer", Value::Null).await;
    assert_eq!(bob.recv().await["type"], "TARGET_NOT_FOUND");
}
