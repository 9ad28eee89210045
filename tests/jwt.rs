//! Identities an application brings: JWTs with real signatures (HS256,
//! RS256, PS256, ES256, EdDSA), a JWKS served by a real local HTTP server,
//! every refusal, and the in-band refresh that keeps a connection open past
//! its first token's expiry.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::raw_h3::h3_request;
use common::{Client, GatewayProcess, Kind, TestGateway, failed_start, within, ws_connect};
use futures::StreamExt;
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

/// What the key-set server answers.
#[derive(Clone)]
enum Serve {
    /// The key set.
    Keys(JwkSet),
    /// `503`.
    Error,
    /// Nothing, ever: the request hangs.
    Hang,
    /// A body of `bytes` bytes, streamed; with its length declared or not.
    Huge { bytes: usize, declared: bool },
    /// `302` to this URL.
    Redirect(String),
}

/// A key set served over HTTP by a real server the test controls, which
/// counts the requests it gets and the bytes it streams. `/moved` always
/// serves the keys of the last `Serve::Keys`.
struct JwksServer {
    url: String,
    base: String,
    serve: Arc<Mutex<Serve>>,
    hits: Arc<AtomicUsize>,
    streamed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// One chunk of a huge key set: JSON whitespace.
static PADDING: [u8; 65536] = [b' '; 65536];

impl JwksServer {
    async fn start(keys: JwkSet) -> Self {
        Self::start_serving(Serve::Keys(keys)).await
    }

    async fn start_serving(first: Serve) -> Self {
        use axum::response::IntoResponse;
        let serve = Arc::new(Mutex::new(first.clone()));
        let moved = Arc::new(Mutex::new(match first {
            Serve::Keys(keys) => keys,
            _ => JwkSet { keys: Vec::new() },
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let streamed = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (serve, moved, hits, streamed) =
                (serve.clone(), moved.clone(), hits.clone(), streamed.clone());
            move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let now = serve.lock().unwrap().clone();
                if let Serve::Keys(keys) = &now {
                    *moved.lock().unwrap() = keys.clone();
                }
                let streamed = streamed.clone();
                async move {
                    match now {
                        Serve::Keys(keys) => axum::Json(keys).into_response(),
                        Serve::Error => http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                        Serve::Hang => std::future::pending().await,
                        Serve::Redirect(to) => {
                            (http::StatusCode::FOUND, [(http::header::LOCATION, to)])
                                .into_response()
                        }
                        Serve::Huge { bytes, declared } => {
                            let chunks = bytes / PADDING.len();
                            let body = futures::stream::iter(0..chunks).map(move |_| {
                                streamed.fetch_add(PADDING.len(), Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(
                                    &PADDING,
                                ))
                            });
                            let mut response = axum::body::Body::from_stream(body).into_response();
                            if declared {
                                response.headers_mut().insert(
                                    http::header::CONTENT_LENGTH,
                                    (chunks * PADDING.len()).into(),
                                );
                            }
                            response
                        }
                    }
                }
            }
        };
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(handler))
            .route(
                "/moved",
                axum::routing::get(move || {
                    let keys = moved.lock().unwrap().clone();
                    async move { axum::Json(keys) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let url = format!("{base}/.well-known/jwks.json");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            base,
            serve,
            hits,
            streamed,
            task,
        }
    }

    fn serve(&self, keys: JwkSet) {
        self.answer(Serve::Keys(keys));
    }

    fn answer(&self, serve: Serve) {
        *self.serve.lock().unwrap() = serve;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
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
    for (token, says) in [
        (
            hs256(&claims("someone-else", 300)),
            format!(
                "a refreshed token must name the connection's user ({user}); this one names \"someone-else\""
            ),
        ),
        ("not.a.jwt".to_owned(), "not a well-formed JWT".to_owned()),
    ] {
        client
            .send_text(
                &json!({"target": "", "type": "REFRESH_TOKEN", "payload": {"token": token}})
                    .to_string(),
            )
            .await;
        let refused = until_type(&mut client, "TOKEN_REFUSED").await;
        assert_eq!(refused["originator"], "");
        let message = refused["payload"]["message"].as_str().unwrap();
        assert!(message.contains(&says), "{message}");
        assert!(!message.contains("claim"), "{message}");
    }
    client.send(&user, "alive", Value::Null).await;
    until_type(&mut client, "alive").await;
}

every_transport!(
    a_refresh_to_a_shorter_token_is_enforced_on_time,
    an_in_band_refresh_keeps_the_connection,
    an_unrefreshed_token_closes_the_connection,
    a_refresh_must_name_the_same_user,
);

#[tokio::test]
async fn a_registered_token_cannot_be_refreshed() {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let mut client = welcome_client(&gw, Kind::WebSocket, &gw.register("regina").await).await;
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

/// `GET /v1/user` with `token`: its status and how long the answer took.
async fn user_status(gw: &TestGateway, token: &str) -> (u16, Duration) {
    let started = std::time::Instant::now();
    let response = within(
        "GET /v1/user",
        gw.http().get(gw.url("/v1/user")).bearer_auth(token).send(),
    )
    .await
    .unwrap();
    (response.status().as_u16(), started.elapsed())
}

/// A token signed with `key`, naming key `kid`.
fn es256(key: &EncodingKey, kid: &str, user: &str) -> String {
    mint(Algorithm::ES256, key, Some(kid), &claims(user, 300))
}

/// Finding 2: while the key set's host answers errors, tokens naming
/// unknown keys (no valid signature needed) fetch it at most once per
/// `--jwks-refresh-min`: failed attempts count too.
#[tokio::test]
async fn a_failing_key_set_host_is_asked_at_most_once_per_refresh_min() {
    let (k1, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(JwkSet {
        keys: vec![jwk(&k1, Algorithm::ES256, "k1")],
    })
    .await;
    let gw =
        TestGateway::start_with(&["--jwks-url", &server.url, "--jwks-refresh-min", "2s"]).await;
    server.answer(Serve::Error);
    let before = server.hits();
    let started = std::time::Instant::now();
    for n in 0..40 {
        let (status, _) = user_status(&gw, &es256(&k1, &format!("unknown-{n}"), "mal")).await;
        assert_eq!(status, 404);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetches = server.hits() - before;
    let allowed = started.elapsed().as_secs() as usize / 2 + 1;
    assert!(
        fetches <= allowed,
        "{fetches} fetches in {:?} (at most {allowed})",
        started.elapsed()
    );
    assert_eq!(user_status(&gw, &es256(&k1, "k1", "kim")).await.0, 200);
}

/// Finding 3: a key-set host that never answers holds no request longer
/// than `--jwks-timeout`; one fetch is in flight and the others share it;
/// tokens with known keys stay instant; a rotated key is taken once the
/// host answers again.
#[tokio::test]
async fn a_hanging_key_set_host_holds_no_request_long() {
    let (k1, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (k2, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let server = JwksServer::start(JwkSet {
        keys: vec![jwk(&k1, Algorithm::ES256, "k1")],
    })
    .await;
    let gw = TestGateway::start_with(&[
        "--jwks-url",
        &server.url,
        "--jwks-refresh-min",
        "100ms",
        "--jwks-timeout",
        "1s",
    ])
    .await;
    server.answer(Serve::Hang);
    let before = server.hits();
    let started = std::time::Instant::now();
    let tokens: Vec<String> = (0..30)
        .map(|n| es256(&k1, &format!("new-{n}"), "mal"))
        .collect();
    let unknown = futures::future::join_all(tokens.iter().map(|token| user_status(&gw, token)));
    let known = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        user_status(&gw, &es256(&k1, "k1", "kim")).await
    };
    let (unknown, known) = tokio::join!(unknown, known);
    let slowest = unknown.iter().map(|(_, took)| *took).max().unwrap();
    assert!(unknown.iter().all(|(status, _)| *status == 404));
    assert!(
        slowest < Duration::from_millis(2500),
        "a request waited {slowest:?} behind fetches (all 30 took {:?})",
        started.elapsed()
    );
    assert!(
        server.hits() - before <= 2,
        "{} fetches for 30 concurrent tokens",
        server.hits() - before
    );
    assert_eq!(known.0, 200);
    assert!(
        known.1 < Duration::from_millis(500),
        "a token with a known key waited {:?}",
        known.1
    );
    // The host answers again with a rotated key: taken at once.
    server.serve(JwkSet {
        keys: vec![jwk(&k2, Algorithm::ES256, "k2")],
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, took) = user_status(&gw, &es256(&k2, "k2", "kim")).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "rotated key took {took:?}");
}

/// Finding 4: a huge key set is read only up to `--jwks-max-bytes`, whether
/// its length is declared or not, and the gateway's memory stays flat.
#[tokio::test]
async fn a_huge_key_set_is_cut_off_at_the_limit() {
    const HUGE: usize = 300 << 20;
    let server = JwksServer::start_serving(Serve::Huge {
        bytes: HUGE,
        declared: false,
    })
    .await;
    let gw = GatewayProcess::start(
        &[
            "--jwks-url",
            &server.url,
            "--jwks-refresh-min",
            "100ms",
            "--jwks-timeout",
            "5s",
        ],
        "signal_gateway=info",
    )
    .await;
    let rss_mib = gw.rss_kib() / 1024;
    let streamed_mib = server.streamed.load(Ordering::SeqCst) >> 20;
    assert!(rss_mib < 100, "RSS {rss_mib} MiB after a 300 MiB key set");
    assert!(
        streamed_mib < 64,
        "{streamed_mib} MiB of the key set were taken"
    );
    assert!(
        gw.log_text()
            .contains("more than --jwks-max-bytes (1048576)")
    );
    // Declared: refused before the body.
    server.answer(Serve::Huge {
        bytes: HUGE,
        declared: true,
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (k1, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let path = format!("/v1/connect?token={}", es256(&k1, "k1", "kim"));
    let (status, body) = h3_request(&gw, http::Method::CONNECT, &path, &[], true).await;
    assert_eq!(status, 401, "{body}");
    within("the refusal is logged", async {
        while !gw.log_text().contains("declares") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gw.rss_kib() / 1024 < 100);
}

/// Finding 11: a key-set fetch follows no redirect by default, and with
/// `--jwks-redirects same-origin` only one to the URL's own origin.
#[tokio::test]
async fn key_set_redirects_to_another_host_are_not_followed() {
    let (k1, _) = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let keys = JwkSet {
        keys: vec![jwk(&k1, Algorithm::ES256, "k1")],
    };
    let elsewhere = JwksServer::start(keys.clone()).await;
    let redirecting = JwksServer::start_serving(Serve::Redirect(elsewhere.url.clone())).await;
    for policy in ["none", "same-origin"] {
        let gw =
            TestGateway::start_with(&["--jwks-url", &redirecting.url, "--jwks-redirects", policy])
                .await;
        assert_eq!(user_status(&gw, &es256(&k1, "k1", "kim")).await.0, 404);
    }
    assert_eq!(elsewhere.hits(), 0, "the other host was never asked");
    // A path moved on the same server is followed when allowed.
    let moving = JwksServer::start(keys).await;
    moving.answer(Serve::Redirect(format!("{}/moved", moving.base)));
    let none = TestGateway::start_with(&["--jwks-url", &moving.url]).await;
    assert_eq!(user_status(&none, &es256(&k1, "k1", "kim")).await.0, 404);
    let same =
        TestGateway::start_with(&["--jwks-url", &moving.url, "--jwks-redirects", "same-origin"])
            .await;
    assert_eq!(user_status(&same, &es256(&k1, "k1", "kim")).await.0, 200);
}

/// Finding 9: `exp = 2^64-1` is as good as never: the token is taken and no
/// task panics.
#[tokio::test]
async fn an_exp_at_the_end_of_time_panics_nothing() {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let token = hs256(&json!({ "sub": "eternal", "exp": u64::MAX }));
    assert_eq!(user_status(&gw, &token).await.0, 200);
    for kind in [Kind::WebSocket, Kind::WebTransport] {
        let welcome = welcome(&gw, kind, &token).await;
        assert_eq!(welcome["payload"]["username"], "eternal");
    }
}

/// Finding 8: a refresh to a token expiring sooner re-arms the timer: the
/// warning names the new expiry and the connection closes on time.
async fn a_refresh_to_a_shorter_token_is_enforced_on_time(kind: Kind) {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let user = format!("tess-{kind:?}");
    let mut client = Client::connect(&gw, kind, &hs256(&claims(&user, 40))).await;
    assert_eq!(client.recv().await["type"], "WELCOME");
    let short = claims(&user, 3);
    client
        .send_text(
            &json!({"target": "", "type": "REFRESH_TOKEN", "payload": {"token": hs256(&short)}})
                .to_string(),
        )
        .await;
    let refreshed_at = std::time::Instant::now();
    until_type(&mut client, "TOKEN_REFRESHED").await;
    let warning = until_type(&mut client, "TOKEN_EXPIRING").await;
    assert_eq!(warning["payload"]["expires_at"], short["exp"], "{warning}");
    let closed = client.closed().await;
    assert_eq!(closed.code, 4003);
    let took = refreshed_at.elapsed();
    // 3 s of token and 5 s of leeway.
    assert!(
        took < Duration::from_secs(10),
        "closed {took:?} after the refresh"
    );
}

/// Finding 1: under `--auth both`, a registration can never take a JWT
/// user's name: registered names live in their own namespace (`~name`),
/// which no JWT may name.
#[tokio::test]
async fn a_registered_name_never_takes_over_a_jwt_user() {
    let gw = TestGateway::start_with(&["--jwt-secret", SECRET]).await;
    let mut dave = welcome_client(&gw, Kind::WebSocket, &hs256(&claims("dave", 300))).await;
    let mut bob = welcome_client(&gw, Kind::WebTransport, &hs256(&claims("bob", 300))).await;
    let registered = within(
        "register",
        gw.http()
            .post(gw.url("/v1/register"))
            .json(&json!({ "username": "dave" }))
            .send(),
    )
    .await
    .unwrap();
    let body: Value = registered.json().await.unwrap();
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["username"], "~dave", "{body}");
    let token = body["token"].as_str().unwrap();
    let mut impostor = Client::connect(&gw, Kind::WebSocket, token).await;
    let welcome = impostor.recv().await;
    assert_eq!(welcome["payload"]["username"], "~dave", "{welcome}");
    // The real dave is still connected and gets what is sent to "dave".
    bob.send("dave", "offer", json!("for dave")).await;
    assert_eq!(until_type(&mut dave, "offer").await["payload"], "for dave");
    dave.send("bob", "answer", json!("from dave")).await;
    assert_eq!(until_type(&mut bob, "answer").await["originator"], "dave");
    // Asking for "~dave" is the same registered name: taken.
    let again = within(
        "register",
        gw.http()
            .post(gw.url("/v1/register"))
            .json(&json!({ "username": "~dave" }))
            .send(),
    )
    .await
    .unwrap();
    let taken: Value = again.json().await.unwrap();
    assert_eq!(taken["status"], "TAKEN");
    assert_eq!(
        taken["message"], "username \"~dave\" is already registered",
        "{taken}"
    );
    // And no JWT may name a user of the registered namespace.
    let path = format!("/v1/connect?token={}", hs256(&claims("~dave", 300)));
    let (status, body) = h3_request(&gw, http::Method::CONNECT, &path, &[], true).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("registered"), "{body}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), impostor.recv())
            .await
            .is_err(),
        "nothing sent to dave reached the registered ~dave"
    );
}

async fn welcome_client(gw: &TestGateway, kind: Kind, token: &str) -> Client {
    let mut client = Client::connect(gw, kind, token).await;
    assert_eq!(client.recv().await["type"], "WELCOME");
    client
}
