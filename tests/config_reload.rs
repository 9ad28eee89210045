//! SIGHUP reloads the configuration file under live connections: a real
//! certificate rotation (TLS over TCP and QUIC), the admin token, the
//! allowed origins, the JWT secret and key set, TURN and the log level; a
//! reload that fails changes nothing; settings that need a restart are
//! named in the log; systemd hears READY, RELOADING and STOPPING.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Addrs, Client, Kind, TIMEOUT, within};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The gateway binary, started with a configuration file; killed on drop.
struct Gateway {
    child: tokio::process::Child,
    http: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    async fn start(config: &Path) -> Self {
        Self::start_with(config, &[]).await
    }

    async fn start_with(config: &Path, env: &[(&str, &Path)]) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signal-gateway"))
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("gateway binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let collected = log.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("HTTP + WebSocket on http://").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().parse().unwrap());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let http = match tokio::time::timeout(TIMEOUT, addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!("gateway did not start:\n{}", log.lock().unwrap().join("\n")),
        };
        Self { child, http, log }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGHUP and waits for the log line that says how it went
    /// (the `nth` such line since start).
    async fn hangup(&self, nth: usize) -> String {
        self.signal("HUP");
        within("the reload is logged", async {
            loop {
                let outcomes: Vec<String> = self
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|l| {
                        l.contains("configuration reloaded") || l.contains("reload refused")
                    })
                    .cloned()
                    .collect();
                if outcomes.len() >= nth {
                    return outcomes[nth - 1].clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// The addresses with `cert` pinned, for WebTransport clients.
    fn addrs(&self, cert: &Cert) -> Addrs {
        Addrs {
            http: self.http,
            wt: self.http,
            cert_sha256: cert.sha256,
            cert_der: cert.der.clone(),
        }
    }
}

/// A certificate and key on disk.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    sha256: [u8; 32],
}

impl Cert {
    fn new(dir: &Path) -> Self {
        let identity = signal_gateway::tls::generate_dev(dir, &[]).unwrap();
        let (cert, key) = signal_gateway::tls::dev_paths(dir);
        Self {
            cert,
            key,
            der: identity.chain[0].to_vec(),
            sha256: identity.sha256,
        }
    }

    fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Puts this certificate where the gateway's configuration points.
    fn install(&self, live: &Cert) {
        std::fs::copy(&self.key, &live.key).unwrap();
        std::fs::copy(&self.cert, &live.cert).unwrap();
    }
}

/// A TLS client configuration trusting only `cert`.
fn trusting(cert: &Cert) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// An HTTPS client trusting only `cert`.
fn https(cert: &Cert) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(&cert.der).unwrap())
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

async fn cert_hash(gateway: &Gateway, trusted: &Cert) -> String {
    let answer: Value = https(trusted)
        .get(format!(
            "https://127.0.0.1:{}/v1/cert-hash",
            gateway.http.port()
        ))
        .send()
        .await
        .expect("HTTPS with the served certificate")
        .json()
        .await
        .unwrap();
    answer["hex"].as_str().unwrap().to_owned()
}

async fn admin_status(gateway: &Gateway, trusted: &Cert, token: &str) -> u16 {
    https(trusted)
        .get(format!(
            "https://127.0.0.1:{}/v1/stats",
            gateway.http.port()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn register(gateway: &Gateway, trusted: &Cert, name: &str) -> String {
    let answer: Value = https(trusted)
        .post(format!(
            "https://127.0.0.1:{}/v1/register",
            gateway.http.port()
        ))
        .json(&json!({ "username": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {answer}"))
        .to_owned()
}

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket over TLS, trusting only `cert`.
async fn wss(gateway: &Gateway, trusted: &Cert, token: &str) -> Result<Wss, String> {
    let tcp = tokio::net::TcpStream::connect(gateway.http)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(trusting(trusted)).connect(name, tcp),
    )
    .await
    .map_err(|e| e.to_string())?;
    let request = format!(
        "wss://localhost:{}/v1/connect?token={token}",
        gateway.http.port()
    )
    .into_client_request()
    .unwrap();
    let (mut ws, _) = within(
        "WebSocket upgrade",
        tokio_tungstenite::client_async(request, tls),
    )
    .await
    .map_err(|e| e.to_string())?;
    let welcome = wss_recv(&mut ws).await;
    assert_eq!(welcome["type"], "WELCOME");
    Ok(ws)
}

async fn wss_recv(ws: &mut Wss) -> Value {
    within("a WebSocket envelope", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("WebSocket ended: {other:?}"),
            }
        }
    })
    .await
}

async fn wss_send(ws: &mut Wss, target: &str, text: &str) {
    let envelope = json!({ "target": target, "type": "note", "payload": text }).to_string();
    within("a WebSocket send", ws.send(Message::text(envelope)))
        .await
        .unwrap();
}

/// `from` (WSS) and `to` (WebTransport) still trade envelopes both ways.
async fn still_talking(wss_client: &mut Wss, wss_name: &str, wt: &mut Client, wt_name: &str) {
    wss_send(wss_client, wt_name, "over tcp").await;
    let got = wt.recv().await;
    assert_eq!(
        (got["originator"].as_str(), got["payload"].as_str()),
        (Some(wss_name), Some("over tcp"))
    );
    wt.send(wss_name, "note", json!("over quic")).await;
    let got = wss_recv(wss_client).await;
    assert_eq!(
        (got["originator"].as_str(), got["payload"].as_str()),
        (Some(wt_name), Some("over quic"))
    );
}

fn config_text(live: &Cert, data: &Path, admin_token: &str, origin: &str) -> String {
    format!(
        "[listen]\ntls = true\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[http]\nadmin-token = \"{admin_token}\"\nallow-origin = [\"{origin}\"]\n\n[identity]\ndata-dir = \"{}\"\n",
        live.cert.display(),
        live.key.display(),
        data.display()
    )
}

async fn origin_status(gateway: &Gateway, trusted: &Cert, origin: &str) -> u16 {
    https(trusted)
        .post(format!(
            "https://127.0.0.1:{}/v1/register",
            gateway.http.port()
        ))
        .header("origin", origin)
        .json(&json!({ "username": format!("o{}", rand::random::<u32>()) }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_rotates_the_certificate_under_live_connections() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let first = Cert::new(&dir.path().join("first"));
    let second = Cert::new(&dir.path().join("second"));
    let live = Cert::new(&dir.path().join("live"));
    first.install(&live);
    let config = dir.path().join("gateway.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &config,
        config_text(&live, &data, "first-admin-token", "https://one.example"),
    )
    .unwrap();
    let gateway = Gateway::start(&config).await;

    assert_eq!(cert_hash(&gateway, &first).await, first.hex());
    let alice_token = register(&gateway, &first, "alice").await;
    let bob_token = register(&gateway, &first, "bob").await;
    let mut alice = wss(&gateway, &first, &alice_token).await.unwrap();
    let mut bob = Client::connect(&gateway.addrs(&first), Kind::WebTransport, &bob_token).await;
    let welcome = bob.recv().await;
    assert_eq!(welcome["type"], "WELCOME");
    still_talking(&mut alice, "alice", &mut bob, "bob").await;
    assert_eq!(
        admin_status(&gateway, &first, "first-admin-token").await,
        200
    );
    assert_eq!(
        origin_status(&gateway, &first, "https://one.example").await,
        200
    );
    assert_eq!(
        origin_status(&gateway, &first, "https://two.example").await,
        403
    );

    // Rotate: a new certificate and key at the same paths, a new admin
    // token and origin, and a limit that only a restart can change.
    second.install(&live);
    std::fs::write(
        &config,
        config_text(&live, &data, "second-admin-token", "https://two.example")
            + "\n[limits]\nmax-connections = 7\n",
    )
    .unwrap();
    let outcome = gateway.hangup(1).await;
    assert!(
        outcome.contains("configuration reloaded"),
        "{}",
        gateway.log_text()
    );
    let log = gateway.log_text();
    assert!(
        log.contains(&format!("sha256={}", second.hex())),
        "the new certificate is logged:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("take effect on restart") && l.contains("[limits] max-connections")),
        "what needs a restart is named:\n{log}"
    );

    // New connections get the new certificate, on TCP and on QUIC.
    assert_eq!(cert_hash(&gateway, &second).await, second.hex());
    assert!(
        https(&first)
            .get(format!(
                "https://127.0.0.1:{}/v1/cert-hash",
                gateway.http.port()
            ))
            .send()
            .await
            .is_err(),
        "the old certificate is no longer served over TCP"
    );
    assert!(wss(&gateway, &first, &alice_token).await.is_err());
    let carol_token = register(&gateway, &second, "carol").await;
    let mut carol =
        Client::connect(&gateway.addrs(&second), Kind::WebTransport, &carol_token).await;
    assert_eq!(carol.recv().await["type"], "WELCOME");
    let pinned_old = common::wt_connect(
        &gateway.addrs(&first),
        &format!("?token={carol_token}"),
        &[],
    )
    .await;
    assert!(
        pinned_old.is_err(),
        "the old certificate is no longer served over QUIC"
    );
    let mut dave = wss(
        &gateway,
        &second,
        &register(&gateway, &second, "dave").await,
    )
    .await
    .unwrap();

    // The connections made before the rotation carry on.
    still_talking(&mut alice, "alice", &mut bob, "bob").await;
    still_talking(&mut dave, "dave", &mut carol, "carol").await;
    still_talking(&mut alice, "alice", &mut carol, "carol").await;

    // The admin token and the origins changed; max-connections did not
    // (eight connections are more than 7).
    assert_eq!(
        admin_status(&gateway, &second, "first-admin-token").await,
        401
    );
    assert_eq!(
        admin_status(&gateway, &second, "second-admin-token").await,
        200
    );
    assert_eq!(
        origin_status(&gateway, &second, "https://one.example").await,
        403
    );
    assert_eq!(
        origin_status(&gateway, &second, "https://two.example").await,
        200
    );
    let mut more = Vec::new();
    for n in 0..4 {
        let token = register(&gateway, &second, &format!("extra{n}")).await;
        more.push(
            wss(&gateway, &second, &token)
                .await
                .expect("max-connections unchanged"),
        );
    }

    // A reload that fails changes nothing: a key that is not the
    // certificate's, and a token that would have changed with it.
    std::fs::copy(&first.key, &live.key).unwrap();
    std::fs::write(
        &config,
        config_text(&live, &data, "third-admin-token", "https://three.example"),
    )
    .unwrap();
    let outcome = gateway.hangup(2).await;
    assert!(
        outcome.contains("reload refused") && outcome.contains("does not match the certificate"),
        "{outcome}"
    );
    assert_eq!(cert_hash(&gateway, &second).await, second.hex());
    assert_eq!(
        admin_status(&gateway, &second, "second-admin-token").await,
        200
    );
    assert_eq!(
        admin_status(&gateway, &second, "third-admin-token").await,
        401
    );
    assert_eq!(
        origin_status(&gateway, &second, "https://two.example").await,
        200
    );
    still_talking(&mut alice, "alice", &mut bob, "bob").await;

    // A broken file is refused too, with its line.
    std::fs::write(&config, "[limits]\nmax-connections = \"many\"\n").unwrap();
    let outcome = gateway.hangup(3).await;
    assert!(
        outcome.contains("reload refused")
            && outcome.contains("gateway.toml:2: [limits] max-connections"),
        "{outcome}"
    );
    assert_eq!(cert_hash(&gateway, &second).await, second.hex());
    still_talking(&mut dave, "dave", &mut carol, "carol").await;
}

/// What systemd (`Type=notify`) hears on `NOTIFY_SOCKET`: READY=1 once the
/// gateway serves, RELOADING=1 then READY=1 around a reload, STOPPING=1
/// when it drains.
#[tokio::test]
async fn systemd_is_told_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert-dir = \"{0}/certs\"\n[identity]\ndata-dir = \"{0}/data\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut gateway = Gateway::start_with(&config, &[("NOTIFY_SOCKET", &socket_path)]).await;
    let mut buffer = vec![0u8; 4096];
    let mut next = async || {
        let n = within("a notification", socket.recv(&mut buffer))
            .await
            .unwrap();
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    assert_eq!(next().await.trim(), "READY=1");
    let ready = reqwest::get(format!("http://{}/readyz", gateway.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready when systemd is told so");
    gateway.hangup(1).await;
    assert_eq!(next().await.trim(), "RELOADING=1");
    assert_eq!(next().await.trim(), "READY=1");
    gateway.signal("TERM");
    assert_eq!(next().await.trim(), "STOPPING=1");
    let status = within("the gateway exits", gateway.child.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

fn hs256(secret: &str, user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// SIGHUP also replaces the JWT secret (read from its file again), the
/// TURN servers and secret, and the log level.
#[tokio::test]
async fn sighup_replaces_jwt_keys_turn_servers_and_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    let (old_secret, new_secret) = ("o".repeat(32), "n".repeat(40));
    std::fs::write(&secret_file, format!("{old_secret}\n")).unwrap();
    let config = dir.path().join("gateway.toml");
    let write_config = |turn_url: &str, turn_secret: &str, log_level: &str| {
        std::fs::write(
            &config,
            format!(
                "[tls]\ncert-dir = \"{0}/certs\"\n[identity]\ndata-dir = \"{0}/data\"\n\
                 [jwt]\njwt-secret-file = \"{1}\"\n\
                 [turn]\nturn-url = [\"{turn_url}\"]\nturn-secret = \"{turn_secret}\"\n\
                 [log]\nlog-level = \"{log_level}\"\n",
                dir.path().display(),
                secret_file.display()
            ),
        )
        .unwrap();
    };
    write_config(
        "turn:one.example:3478",
        "first-turn-secret",
        "signal_gateway=info",
    );
    let gateway = Gateway::start(&config).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let user_status = async |token: &str| {
        http.get(format!("http://{}/v1/user", gateway.http))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let ice = async |token: &str| -> Value {
        http.get(format!("http://{}/v1/ice-servers", gateway.http))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let old_token = hs256(&old_secret, "ada");
    let new_token = hs256(&new_secret, "ada");
    assert_eq!(user_status(&old_token).await, 200);
    assert_eq!(user_status(&new_token).await, 404);
    assert_eq!(register_plain(&http, gateway.http, "early").await, 200);
    let before = ice(&old_token).await;
    assert_eq!(
        before["iceServers"][0]["urls"][0], "turn:one.example:3478",
        "{before}"
    );

    std::fs::write(&secret_file, format!("{new_secret}\n")).unwrap();
    write_config(
        "turn:two.example:3478",
        "second-turn-secret",
        "signal_gateway=debug",
    );
    let outcome = gateway.hangup(1).await;
    assert!(
        outcome.contains("configuration reloaded"),
        "{}",
        gateway.log_text()
    );
    for key in ["[turn] turn-url", "[turn] turn-secret", "[log] log-level"] {
        assert!(outcome.contains(key), "{key} in {outcome}");
    }
    assert_eq!(user_status(&old_token).await, 404, "the old secret is gone");
    assert_eq!(user_status(&new_token).await, 200, "the new secret is read");
    let after = ice(&new_token).await;
    assert_eq!(
        after["iceServers"][0]["urls"][0], "turn:two.example:3478",
        "{after}"
    );
    assert_ne!(
        after["iceServers"][0]["credential"], before["iceServers"][0]["credential"],
        "credentials minted with the new secret"
    );
    // A registration is logged at debug: only once the level says so.
    assert_eq!(register_plain(&http, gateway.http, "late").await, 200);
    within("the debug event", async {
        while !gateway
            .log_text()
            .lines()
            .any(|l| l.contains(" DEBUG ") && l.contains("registered") && l.contains("late"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        !gateway.log_text().contains("early"),
        "debug events are not logged before the reload:\n{}",
        gateway.log_text()
    );

    // `*` (CORS without credentials) waits for a restart.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text + "[http]\nallow-origin = [\"*\"]\n").unwrap();
    gateway.hangup(2).await;
    assert!(
        gateway
            .log_text()
            .contains("--allow-origin '*' turned on or off: takes effect on restart"),
        "{}",
        gateway.log_text()
    );
    let foreign = http
        .post(format!("http://{}/v1/register", gateway.http))
        .header("origin", "https://elsewhere.example")
        .json(&json!({ "username": "foreigner" }))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403, "the allow-list did not become `*`");
}

async fn register_plain(http: &reqwest::Client, gateway: SocketAddr, name: &str) -> u16 {
    http.post(format!("http://{gateway}/v1/register"))
        .json(&json!({ "username": name }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A key set served by a real local HTTP server; the test changes it.
async fn jwks_server(
    keys: jsonwebtoken::jwk::JwkSet,
) -> (
    String,
    Arc<Mutex<jsonwebtoken::jwk::JwkSet>>,
    tokio::task::JoinHandle<()>,
) {
    let keys = Arc::new(Mutex::new(keys));
    let served = keys.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = served.lock().unwrap().clone();
            async move { axum::Json(keys) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, keys, task)
}

/// An ES256 signing key and its JWK named `kid`.
fn es256(kid: &str) -> (jsonwebtoken::EncodingKey, jsonwebtoken::jwk::Jwk) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    (key, jwk)
}

/// SIGHUP fetches the key set again, even when a token naming an unknown
/// `kid` may not refetch it yet (`jwks-refresh-min`).
#[tokio::test]
async fn sighup_fetches_the_key_set_again() {
    let (first_key, first_jwk) = es256("first");
    let (second_key, second_jwk) = es256("second");
    let (url, served, server) = jwks_server(jsonwebtoken::jwk::JwkSet {
        keys: vec![first_jwk],
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert-dir = \"{0}/certs\"\n[identity]\ndata-dir = \"{0}/data\"\n\
             [jwt]\njwks-url = \"{url}\"\njwks-refresh-min = \"1h\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let gateway = Gateway::start(&config).await;
    let token = |key: &jsonwebtoken::EncodingKey, kid: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        jsonwebtoken::encode(&header, &json!({ "sub": "kim", "exp": exp }), key).unwrap()
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let user_status = async |token: &str| {
        http.get(format!("http://{}/v1/user", gateway.http))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let (first, second) = (token(&first_key, "first"), token(&second_key, "second"));
    assert_eq!(user_status(&first).await, 200);
    served.lock().unwrap().keys = vec![second_jwk];
    assert_eq!(
        user_status(&second).await,
        404,
        "an unknown kid does not refetch within jwks-refresh-min"
    );
    let outcome = gateway.hangup(1).await;
    assert!(
        outcome.contains("configuration reloaded"),
        "{}",
        gateway.log_text()
    );
    assert_eq!(
        user_status(&second).await,
        200,
        "the reload fetched the new set"
    );
    assert_eq!(user_status(&first).await, 404, "the old key is gone");
    server.abort();
}
