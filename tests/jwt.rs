//! Identities an application brings: JWTs with real signatures (HS256,
//! RS256, PS256, ES256, EdDSA), a JWKS served by a real local HTTP server,
//! every refusal, and the in-band refresh that keeps a connection open past
//! its first token's expiry.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::raw_h3::h3_request;
use common::{Client, GatewayProcess, Kind, TestGateway, failed_start, within, ws_connect};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const RSA_PRIVATE: &str = include_str!("fixtures/jwt-rsa-private.pem");
const RSA_PUBLIC: &str = "tests/fixtures/jwt-rsa-public.pem";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `user`, expiring `in_secs` from now.
fn claims(user: &str, in_secs: i64) -> Value {
    json!({ "sub": user, "exp": now() + in_secs })
}

fn mint(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        None,
        claims,
    )
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
}

/// A generated key pair: the signing key and the public key in PEM.
fn generated(alg: &'static rcgen::SignatureAlgorithm) -> (EncodingKey, String) {
    let pair = rcgen::KeyPair::generate_for(alg).unwrap();
    let private = pair.serialize_pem();
    let key = if std::ptr::eq(alg, &rcgen::PKCS_ED25519) {
        EncodingKey::from_ed_pem(private.as_bytes())
    } else {
        EncodingKey::from_ec_pem(private.as_bytes())
    };
    (key.unwrap(), pair.public_key_pem())
}

/// Writes `pem` to a temporary file the gateway can read.
fn key_file(pem: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pem).unwrap();
    file
}

async fn welcome(gw: &common::Addrs, kind: Kind, token: &str) -> Value {
    let mut client = Client::connect(gw, kind, token).await;
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "WELCOME", "{welcome}");
    welcome
}

#[tokio::test]
async fn every_key_type_authenticates_over_both_transports() {
    let (es256, es256_public) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (eddsa, eddsa_public) = generated(&rcgen::PKCS_ED25519);
    let (es_file, ed_file) = (key_file(&es256_public), key_file(&eddsa_public));
    let es_path = es_file.path().display().to_string();
    let ed_path = ed_file.path().display().to_string();
    let cases: Vec<(&str, Vec<&str>, Algorithm, EncodingKey)> = vec![
        (
            "hs256",
            vec!["--jwt-secret", SECRET],
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        ),
        (
            "rs256",
            vec!["--jwt-public-key", RSA_PUBLIC],
            Algorithm::RS256,
            rsa_key(),
        ),
        (
            "ps256",
            vec!["--jwt-public-key", RSA_PUBLIC],
            Algorithm::PS256,
            rsa_key(),
        ),
        (
            "es256",
            vec!["--jwt-public-key", &es_path],
            Algorithm::ES256,
            es256,
        ),
        (
            "eddsa",
            vec!["--jwt-public-key", &ed_path],
            Algorithm::EdDSA,
            eddsa,
        ),
    ];
    for (name, args, alg, key) in cases {
        let gw = TestGateway::start_with(&args).await;
        let user = format!("ada-{name}");
        let token = mint(alg, &key, None, &claims(&user, 300));
        for kind in [Kind::WebSocket, Kind::WebTransport] {
            let welcome = welcome(&gw, kind, &token).await;
            assert_eq!(
                welcome["payload"]["username"],
                user.as_str(),
                "{name} {kind:?}"
            );
        }
        let me = gw
            .http()
            .get(gw.url("/v1/user"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200, "{name}");
    }
}

/// Signs `payload` with `alg: none`: no signature at all.
fn unsigned(payload: &Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(payload.to_string())
    )
}

#[tokio::test]
async fn every_refusal_says_why_and_never_logs_the_token() {
    let gw = GatewayProcess::start(
        &[
            "--jwt-public-key",
            RSA_PUBLIC,
            "--jwt-issuer",
            "https://app.example",
            "--jwt-audience",
            "signal",
        ],
        "signal_gateway=info",
    )
    .await;
    let good = |extra: Value| {
        let mut claims = json!({
            "sub": "grace", "exp": now() + 300, "iss": "https://app.example", "aud": "signal",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let rsa = |claims: &Value| mint(Algorithm::RS256, &rsa_key(), None, claims);
    // One bit of the decoded signature flipped. Editing the token's last
    // character is not that: it holds padding bits too (which must be zero,
    // or the token does not decode), and the edit may leave it as it was.
    let tampered = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = rsa(&good(json!({})));
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let mut signature = b64.decode(signature).unwrap();
        signature[0] ^= 1;
        format!("{signed}.{}", b64.encode(signature))
    };
    let public_pem = std::fs::read(RSA_PUBLIC).unwrap();
    let confused = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem).unwrap(),
        None,
        &good(json!({})),
    );
    let cases = [
        ("expired", rsa(&good(json!({"exp": now() - 60}))), "expired"),
        (
            "not yet valid",
            rsa(&good(json!({"nbf": now() + 60}))),
            "not valid yet",
        ),
        ("bad signature", tampered, "signature"),
        ("alg none", unsigned(&good(json!({}))), "JWT"),
        ("algorithm confusion", confused, "HS256"),
        (
            "wrong issuer",
            rsa(&good(json!({"iss": "https://evil.example"}))),
            "issuer",
        ),
        (
            "wrong audience",
            rsa(&good(json!({"aud": "other"}))),
            "audience",
        ),
        ("no exp", rsa(&good(json!({"exp": null}))), "exp"),
        ("no sub", rsa(&good(json!({"sub": null}))), "\"sub\""),
        (
            "a name breaking the rules",
            rsa(&good(json!({"sub": " padded "}))),
            "username",
        ),
    ];
    for (case, token, reason) in &cases {
        let path = format!("/v1/connect?token={token}");
        let (status, body) = h3_request(&gw, http::Method::CONNECT, &path, &[], true).await;
        assert_eq!(status, 401, "{case}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "{case}: {message} should say {reason:?}"
        );
        let mut ws = Client::Ws(
            ws_connect(&gw, &format!("?token={token}"), &[])
                .await
                .unwrap(),
        );
        assert_eq!(ws.closed().await.code, 4000, "{case} over WebSocket");
    }
    let log = gw.log_text();
    assert!(log.contains("JWT refused"), "{log}");
    for (case, token, _) in &cases {
        let signature = token.rsplit('.').next().unwrap_or_default();
        let body = token.split('.').nth(1).unwrap_or_default();
        assert!(
            !log.contains(body) && (signature.is_empty() || !log.contains(signature)),
            "the {case} token is in the log"
        );
    }
}

/// A key set served over HTTP by a real server the test controls.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<JwkSet>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: JwkSet) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let served = keys.clone();
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let keys = served.lock().unwrap().clone();
                async move { axum::Json(keys) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, keys, task }
    }

    fn serve(&self, keys: JwkSet) {
        *self.keys.lock().unwrap() = keys;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

#[tokio::test]
async fn a_jwks_rotates_and_outlives_its_server() {
    let (k1, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (k2, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (k3, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(JwkSet {
        keys: vec![jwk(&k1, Algorithm::ES256, "k1")],
    })
    .await;
    let gw =
        TestGateway::start_with(&["--jwks-url", &server.url, "--jwks-refresh-min", "200ms"]).await;
    let token = |key: &EncodingKey, kid: &str, user: &str| {
        mint(Algorithm::ES256, key, Some(kid), &claims(user, 300))
    };
    let addrs = gw.addrs.clone();
    let status = |token: String| {
        let addrs = addrs.clone();
        async move {
            let path = format!("/v1/connect?token={token}");
            h3_request(&addrs, http::Method::CONNECT, &path, &[], true).await
        }
    };
    welcome(&gw, Kind::WebSocket, &token(&k1, "k1", "kim")).await;

    // Rotation: the old key is removed, the new one served.
    server.serve(JwkSet {
        keys: vec![jwk(&k2, Algorithm::ES256, "k2")],
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    welcome(&gw, Kind::WebTransport, &token(&k2, "k2", "kim")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = status(token(&k1, "k1", "kim")).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("k1"), "{body}");

    // The key set's server goes away: the keys fetched last keep working.
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    welcome(&gw, Kind::WebSocket, &token(&k2, "k2", "lee")).await;
    let (code, body) = status(token(&k3, "k3", "lee")).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("k3"), "{body}");
}

/// Reads envelopes until one of `kind` arrives; fails on a CLOSE.
async fn until_type(client: &mut Client, kind: &str) -> Value {
    loop {
        let envelope = client.recv().await;
        assert_ne!(
            envelope["type"], "CLOSE",
            "closed while waiting for {kind}: {envelope}"
        );
        if envelope["type"] == kind {
            return envelope;
        }
    }
}

async fn an_in_band_refresh_keeps_the_connection(kind: Kind) {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let user = format!("ren-{kind:?}");
    let mut client = Client::connect(&gw, kind, &hs256(&claims(&user, 4))).await;
    assert_eq!(client.recv().await["type"], "WELCOME");
    let warning = until_type(&mut client, "TOKEN_EXPIRING").await;
    assert!(warning["payload"]["expires_in_ms"].as_u64().unwrap() <= 4_000);
    let fresh = hs256(&claims(&user, 120));
    client
        .send_text(
            &json!({"target": "", "type": "REFRESH_TOKEN", "payload": {"token": fresh}})
                .to_string(),
        )
        .await;
    let refreshed = until_type(&mut client, "TOKEN_REFRESHED").await;
    assert!(refreshed["payload"]["expires_at"].as_i64().unwrap() >= now() + 100);
    // Past the first token's expiry and its leeway, the connection is the
    // same one and still carries envelopes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    client.send(&user, "still-here", json!(1)).await;
    assert_eq!(
        until_type(&mut client, "still-here").await["originator"],
        user.as_str()
    );
}

async fn an_unrefreshed_token_closes_the_connection(kind: Kind) {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let user = format!("una-{kind:?}");
    let mut client = Client::connect(&gw, kind, &hs256(&claims(&user, 2))).await;
    assert_eq!(client.recv().await["type"], "WELCOME");
    assert_eq!(client.recv().await["type"], "TOKEN_EXPIRING");
    let closed = client.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4003, "TOKEN_EXPIRED")
    );
    assert_eq!(closed.envelope.unwrap()["reconnect"], true);
}

async fn a_refresh_must_name_the_same_user(kind: Kind) {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let user = format!("sam-{kind:?}");
    let mut client = Client::connect(&gw, kind, &hs256(&claims(&user, 300))).await;
    client.recv().await;
    for token in [hs256(&claims("someone-else", 300)), "not.a.jwt".to_owned()] {
        client
            .send_text(
                &json!({"target": "", "type": "REFRESH_TOKEN", "payload": {"token": token}})
                    .to_string(),
            )
            .await;
        let refused = until_type(&mut client, "TOKEN_REFUSED").await;
        assert_eq!(refused["originator"], "");
    }
    client.send(&user, "alive", Value::Null).await;
    until_type(&mut client, "alive").await;
}

every_transport!(
    an_in_band_refresh_keeps_the_connection,
    an_unrefreshed_token_closes_the_connection,
    a_refresh_must_name_the_same_user,
);

#[tokio::test]
async fn a_registered_token_cannot_be_refreshed() {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let mut client = gw.user("regina", Kind::WebSocket).await;
    client
        .send_text(&json!({"target": "", "type": "REFRESH_TOKEN", "payload": {"token": hs256(&claims("regina", 60))}}).to_string())
        .await;
    let refused = until_type(&mut client, "TOKEN_REFUSED").await;
    assert!(
        refused["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("not opened with a JWT"),
        "{refused}"
    );
    client
        .send_text(&json!({"target": "", "type": "HELLO"}).to_string())
        .await;
    assert_eq!(
        until_type(&mut client, "INVALID_MESSAGE").await["payload"]["type"],
        "HELLO"
    );
}

#[tokio::test]
async fn a_jwt_only_gateway_registers_nobody() {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET, "--auth", "jwt"]).await;
    let response = within(
        "register",
        gw.http()
            .post(gw.url("/v1/register"))
            .json(&json!({ "username": "nobody" }))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(common::status_field(response).await, "REGISTRATION_CLOSED");
    welcome(&gw, Kind::WebTransport, &hs256(&claims("jay", 60))).await;
}

#[tokio::test]
async fn jwt_settings_that_cannot_work_stop_the_gateway() {
    for (args, says) in [
        (vec!["--auth", "jwt"], "need --jwt-secret"),
        (vec!["--jwt-secret", "short"], "at least 32 bytes"),
        (vec!["--jwt-public-key", "/nonexistent.pem"], "cannot read"),
        (vec!["--jwt-public-key", "Cargo.toml"], "no RSA, EC"),
        (vec!["--jwks-url", "ftp://keys.example"], "not an http"),
        (
            vec!["--jwt-secret", SECRET, "--auth", "register"],
            "--auth register",
        ),
    ] {
        let (code, log) = failed_start(&args).await;
        assert_ne!(code, Some(0), "{args:?}");
        assert!(log.contains(says), "{args:?}: {log}");
    }
}
