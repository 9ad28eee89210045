//! ICE servers and TURN credentials as a client gets them: `GET
//! /v1/ice-servers` with a registered token, with a JWT, over HTTP/3, and
//! refused; the same list in `WELCOME` on both transports; the empty list
//! without settings; flags refused at start; and the minted credentials
//! against a real coturn, which accepts them and refuses those minted with
//! another secret.

#[macro_use]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::coturn::Coturn;
use common::raw_h3::h3_request;
use common::{Client, Kind, TestGateway, failed_start, within};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const TURN_SECRET: &str = "a-turn-secret-shared-with-coturn";
const JWT_SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const TTL_SECS: u64 = 600;
const STUN: &str = "stun:stun.example.net:3478";
const TURN_UDP: &str = "turn:127.0.0.1:3478?transport=udp";
const TURN_TCP: &str = "turn:127.0.0.1:3478?transport=tcp";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A gateway with a STUN server, two TURN URLs and a secret.
async fn gateway_with_turn(extra: &[&str]) -> TestGateway {
    let ttl = format!("{TTL_SECS}s");
    let mut args = vec![
        "--stun-url",
        STUN,
        "--turn-url",
        TURN_UDP,
        "--turn-url",
        TURN_TCP,
        "--turn-secret",
        TURN_SECRET,
        "--turn-ttl",
        &ttl,
    ];
    args.extend_from_slice(extra);
    TestGateway::start_with(&args).await
}

/// Checks a list as the gateway with [`gateway_with_turn`] hands it to
/// `user`: the STUN entry, then the TURN entry whose username is
/// `<expiry>:<user>` with the expiry `TTL_SECS` from now, and whose
/// credential is base64(HMAC-SHA1(secret, username)), computed here.
fn check_list(list: &Value, user: &str) {
    assert_eq!(list["ttl"], TTL_SECS, "{list}");
    let servers = list["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{list}");
    assert_eq!(
        servers[0],
        json!({ "urls": [STUN] }),
        "STUN has no credentials"
    );
    let turn = &servers[1];
    assert_eq!(turn["urls"], json!([TURN_UDP, TURN_TCP]));
    let username = turn["username"].as_str().unwrap();
    let (expiry, name) = username.split_once(':').unwrap();
    assert_eq!(name, user);
    let expiry: u64 = expiry.parse().unwrap();
    let expected = now() + TTL_SECS;
    assert!(
        expiry.abs_diff(expected) <= 5,
        "expiry {expiry} should be about now + ttl ({expected})"
    );
    let credential = STANDARD
        .decode(turn["credential"].as_str().unwrap())
        .unwrap();
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        TURN_SECRET.as_bytes(),
    );
    ring::hmac::verify(&key, username.as_bytes(), &credential)
        .expect("the credential is HMAC-SHA1(secret, username)");
}

/// `GET /v1/ice-servers` with `headers`; the status, the headers and the body.
async fn get_ice(
    gw: &TestGateway,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = gw.http().get(gw.url("/v1/ice-servers"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = within("GET /v1/ice-servers", request.send()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

fn hs256(user: &str, in_secs: i64) -> String {
    let claims = json!({ "sub": user, "exp": now() as i64 + in_secs });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_registered_user_gets_stun_and_turn_with_fresh_credentials() {
    let gw = gateway_with_turn(&[]).await;
    let token = gw.register("alice").await;
    let bearer = format!("Bearer {token}");
    let (status, headers, body) = get_ice(&gw, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["content-type"], "application/json");
    check_list(&body, "alice");
    // The session cookie authenticates too, as on /v1/user.
    let cookie = format!("user_token={token}");
    let (status, _, body) = get_ice(&gw, &[("cookie", &cookie)]).await;
    assert_eq!(status, 200, "{body}");
    check_list(&body, "alice");
}

#[tokio::test]
async fn a_jwt_user_gets_credentials_in_its_own_name() {
    let gw = gateway_with_turn(&["--jwt-secret", JWT_SECRET, "--auth", "jwt"]).await;
    let bearer = format!("Bearer {}", hs256("jules", 60));
    let (status, headers, body) = get_ice(&gw, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    check_list(&body, "jules");
}

#[tokio::test]
async fn without_a_valid_token_the_route_refuses() {
    let gw = gateway_with_turn(&["--jwt-secret", JWT_SECRET]).await;
    let expired = format!("Bearer {}", hs256("jules", -60));
    let forged = format!(
        "Bearer {}",
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({ "sub": "jules", "exp": now() + 60 }),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!").unwrap(),
        )
        .unwrap()
    );
    for (what, headers) in [
        ("no token", vec![]),
        ("an unknown token", vec![("authorization", "Bearer nope")]),
        ("an expired JWT", vec![("authorization", expired.as_str())]),
        ("a forged JWT", vec![("authorization", forged.as_str())]),
        ("an unknown cookie", vec![("cookie", "user_token=nope")]),
    ] {
        let (status, headers, body) = get_ice(&gw, &headers).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["status"], "UNAUTHORIZED", "{what}");
        assert!(
            body["message"].as_str().unwrap().len() > 10,
            "{what}: {body}"
        );
        assert_eq!(headers["www-authenticate"], "Bearer", "{what}");
        assert!(body.get("iceServers").is_none(), "{what}");
    }
    let token = gw.register("alice").await;
    let bearer = format!("Bearer {token}");
    let (status, _, body) = get_ice(
        &gw,
        &[
            ("authorization", &bearer),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (403, Some("FORBIDDEN")));
    let response = gw
        .http()
        .post(gw.url("/v1/ice-servers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn without_ice_settings_the_list_is_empty() {
    let gw = TestGateway::start().await;
    let token = gw.register("alice").await;
    let bearer = format!("Bearer {token}");
    let (status, headers, body) = get_ice(&gw, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body, json!({ "iceServers": [], "ttl": 3600 }));
    for kind in [Kind::WebSocket, Kind::WebTransport] {
        let mut client = Client::connect(&gw, kind, &token).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "WELCOME");
        assert_eq!(welcome["payload"]["ice"], body, "{kind:?}");
    }
}

/// `WELCOME` carries the user's own list, minted for the connection.
async fn welcome_carries_the_users_own_list(kind: Kind) {
    let gw = gateway_with_turn(&[]).await;
    let token = gw.register("alice").await;
    let mut client = Client::connect(&gw, kind, &token).await;
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "WELCOME", "{welcome}");
    assert_eq!(welcome["payload"]["username"], "alice");
    check_list(&welcome["payload"]["ice"], "alice");
}

every_transport!(welcome_carries_the_users_own_list);

#[tokio::test]
async fn the_route_answers_plain_http3_too() {
    let gw = gateway_with_turn(&[]).await;
    let token = gw.register("alice").await;
    let bearer = format!("Bearer {token}");
    let (status, body) = h3_request(
        &gw,
        http::Method::GET,
        "/v1/ice-servers",
        &[("authorization", &bearer)],
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    check_list(&serde_json::from_str(&body).unwrap(), "alice");
    let (status, body) = h3_request(&gw, http::Method::GET, "/v1/ice-servers", &[], false).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn malformed_urls_and_a_missing_secret_stop_the_start() {
    for (args, expected) in [
        (
            vec![
                "--turn-url",
                "turn://turn.example.net",
                "--turn-secret",
                "s",
            ],
            "--turn-url \"turn://turn.example.net\"",
        ),
        (
            vec!["--stun-url", "stun:host:99999"],
            "port must be a number from 1 to 65535",
        ),
        (vec!["--turn-url", "turn:127.0.0.1"], "needs --turn-secret"),
    ] {
        let (code, log) = failed_start(&args).await;
        assert_eq!(code, Some(1), "{args:?}: {log}");
        assert!(log.contains(expected), "{args:?}: {log}");
    }
}

/// The credentials of the TURN entry `GET /v1/ice-servers` gives `user`.
async fn minted(gw: &TestGateway, user: &str) -> (String, String) {
    let token = gw.register(user).await;
    let bearer = format!("Bearer {token}");
    let (status, _, body) = get_ice(gw, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let turn = &body["iceServers"][0];
    (
        turn["username"].as_str().unwrap().to_owned(),
        turn["credential"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn coturn_accepts_the_minted_credentials_and_refuses_another_secrets() {
    let coturn = Coturn::start(TURN_SECRET).await;
    let url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let gw = TestGateway::start_with(&["--turn-url", &url, "--turn-secret", TURN_SECRET]).await;
    let (username, credential) = minted(&gw, "alice").await;
    let (ok, output) = coturn.client_exchange(&username, &credential).await;
    assert!(
        ok,
        "coturn refused the gateway's credentials:\n{output}\n{}",
        coturn.log()
    );
    assert!(output.contains("tot_recv_msgs=6"), "{output}");

    let wrong =
        TestGateway::start_with(&["--turn-url", &url, "--turn-secret", "not-coturns"]).await;
    let (username, credential) = minted(&wrong, "mallory").await;
    let (ok, output) = coturn.client_exchange(&username, &credential).await;
    assert!(
        !ok,
        "coturn took credentials minted with another secret:\n{output}"
    );
    // coturn says whom it refused in its log.
    let refused = format!("check_stun_auth: Cannot find credentials of user <{username}>");
    within("coturn logs the refusal", async {
        while !coturn.log().contains(&refused) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
