//! Test support: a real gateway on ephemeral loopback ports, and clients that
//! talk to it as browsers and native apps do — tokio-tungstenite for
//! WebSocket, wtransport (an independent QUIC/HTTP/3 stack) for
//! WebTransport, and a raw h3 client where HTTP/3 status codes matter.
// Each test file uses its own part of this module.
#![allow(dead_code, unused_macros)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use signal_gateway::config::Config;
use signal_gateway::core::Hub;
use signal_gateway::server::Gateway;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod raw_h3;

/// Runs each listed `async fn name(kind: Kind)` as `websocket::name` and
/// `webtransport::name`: one behaviour test, written once, for both
/// transports.
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod websocket {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::WebSocket).await })*
        }
        mod webtransport {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::WebTransport).await })*
        }
    };
}

/// Every await in the tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `future` or fails the test after [`TIMEOUT`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// The `status` field of a JSON answer (the API's error and register bodies).
pub async fn status_field(response: reqwest::Response) -> String {
    let body: Value = within("a JSON body", response.json()).await.unwrap();
    body["status"].as_str().unwrap_or_default().to_owned()
}

/// Generous rates so ordinary tests never trip the abuse limits; tests of
/// the limits pass their own values (later flags win).
const TEST_DEFAULTS: &[&str] = &[
    "--listen",
    "127.0.0.1:0",
    "--connect-rate",
    "100000",
    "--connect-burst",
    "100000",
    "--register-rate",
    "100000",
    "--register-burst",
    "100000",
    "--envelope-rate",
    "100000",
    "--envelope-burst",
    "100000",
];

/// Where a gateway is and how to trust it: all a client needs, and cheap to
/// move into another thread.
#[derive(Debug, Clone)]
pub struct Addrs {
    pub http: SocketAddr,
    pub wt: SocketAddr,
    pub cert_sha256: [u8; 32],
    pub cert_der: Vec<u8>,
}

/// A running gateway (dereferences to its [`Addrs`]).
pub struct TestGateway {
    pub addrs: Addrs,
    pub hub: Arc<Hub>,
    pub certs: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    client: reqwest::Client,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> Self {
        let certs = tempfile::tempdir().expect("temp dir");
        let mut argv: Vec<String> = TEST_DEFAULTS.iter().map(|s| s.to_string()).collect();
        argv.extend(["--cert-dir".to_string(), certs.path().display().to_string()]);
        argv.extend(args.iter().map(|s| s.to_string()));
        let config = Config::from_args(argv).expect("valid test config");
        let gateway = Gateway::bind(config).await.expect("gateway binds");
        let http = gateway.http_addrs()[0];
        let wt = gateway.webtransport_addrs()[0];
        let hub = gateway.hub().clone();
        let hex = &gateway.cert().sha256_hex;
        let mut cert_sha256 = [0u8; 32];
        for (i, byte) in cert_sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let cert_der = read_cert_der(&certs.path().join("cert.pem"));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            gateway
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("gateway runs");
        });
        Self {
            addrs: Addrs {
                http,
                wt,
                cert_sha256,
                cert_der,
            },
            hub,
            certs,
            stop: Some(stop),
            task: Some(task),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Starts shutdown and waits for `run` to return; returns how long it took.
    pub async fn shutdown(&mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("gateway shutdown", task)
                .await
                .expect("gateway task");
        }
        started.elapsed()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// Registers `name` and returns its token.
    pub async fn register(&self, name: &str) -> String {
        let response = within(
            "register",
            self.client
                .post(self.url("/v1/register"))
                .json(&json!({ "username": name }))
                .send(),
        )
        .await
        .expect("register request");
        assert_eq!(response.status(), 200, "register {name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "SUCCESS", "register {name}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Registers `name` and connects it over `transport`, past its WELCOME.
    pub async fn user(&self, name: &str, transport: Kind) -> Client {
        let token = self.register(name).await;
        let mut client = Client::connect(self, transport, &token).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "WELCOME", "{welcome}");
        assert_eq!(welcome["payload"]["username"], name);
        client
    }

    /// GETs `path` and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        within(path, async {
            self.client
                .get(self.url(path))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
        .await
    }

    /// Polls `/v1/users` until `check` holds on the connected list.
    pub async fn wait_connected(&self, what: &str, check: impl Fn(&[Value]) -> bool) {
        within(what, async {
            loop {
                let users = self.get_json("/v1/users").await;
                if check(users["connected"].as_array().unwrap()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

impl std::ops::Deref for TestGateway {
    type Target = Addrs;

    fn deref(&self) -> &Addrs {
        &self.addrs
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn read_cert_der(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("dev certificate written");
    let mut reader = std::io::BufReader::new(&pem[..]);
    rustls_pemfile::certs(&mut reader)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Which transport a test client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    WebTransport,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Close code (WebSocket close frame or QUIC application close).
    pub code: u32,
    /// Close reason text.
    pub reason: String,
    /// The payload of the final `CLOSE` envelope, if one arrived.
    pub envelope: Option<Value>,
}

/// A WebSocket client connection.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Ws = WsStream;

/// A realtime client on either transport, with one interface.
pub enum Client {
    Ws(Ws),
    Wt(WtClient),
}

pub struct WtClient {
    pub conn: wtransport::Connection,
    pub send: wtransport::SendStream,
    pub recv: BufReader<wtransport::RecvStream>,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

/// Opens a WebSocket to `/v1/connect` with the given query and headers.
pub async fn ws_connect(
    gw: &Addrs,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/v1/connect{query}", gw.http)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    within(
        "websocket connect",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map(|(ws, _)| ws)
}

/// A wtransport client endpoint that pins the gateway's certificate.
pub fn wt_endpoint(
    gw: &Addrs,
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    wt_endpoint_from(gw, "[::]:0".parse().unwrap())
}

/// [`wt_endpoint`] bound to `bind` (to be another client address).
pub fn wt_endpoint_from(
    gw: &Addrs,
    bind: SocketAddr,
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_address(bind)
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(gw.cert_sha256)])
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .build();
    wtransport::Endpoint::client(config).unwrap()
}

/// Opens a WebTransport session with the given query and headers.
pub async fn wt_connect(
    gw: &Addrs,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<WtClient, wtransport::error::ConnectingError> {
    let endpoint = wt_endpoint(gw);
    let mut options = wtransport::endpoint::ConnectOptions::builder(format!(
        "https://{}/v1/connect{query}",
        gw.wt
    ));
    for (name, value) in headers {
        options = options.add_header(*name, *value);
    }
    let conn = within("webtransport connect", endpoint.connect(options.build())).await?;
    let (send, recv) = within("open stream", async {
        conn.open_bi().await.unwrap().await.unwrap()
    })
    .await;
    Ok(WtClient {
        conn,
        send,
        recv: BufReader::new(recv),
        _endpoint: endpoint,
    })
}

impl Client {
    /// Connects with `token` in the query string (as a browser must).
    pub async fn connect(gw: &Addrs, kind: Kind, token: &str) -> Self {
        let query = format!("?token={token}");
        match kind {
            Kind::WebSocket => Client::Ws(
                ws_connect(gw, &query, &[])
                    .await
                    .expect("websocket connects"),
            ),
            Kind::WebTransport => Client::Wt(
                wt_connect(gw, &query, &[])
                    .await
                    .expect("webtransport connects"),
            ),
        }
    }

    /// Sends one envelope text (WebSocket text frame; WebTransport line).
    pub async fn send_text(&mut self, text: &str) {
        match self {
            Client::Ws(ws) => within("ws send", ws.send(Message::text(text)))
                .await
                .expect("ws send"),
            Client::Wt(wt) => {
                let mut line = text.as_bytes().to_vec();
                line.push(b'\n');
                within("wt send", wt.send.write_all(&line))
                    .await
                    .expect("wt send");
            }
        }
    }

    /// Sends raw bytes: a binary frame on WebSocket, bytes as they are on
    /// WebTransport (the caller adds newlines).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match self {
            Client::Ws(ws) => within("ws send", ws.send(Message::binary(bytes.to_vec())))
                .await
                .expect("ws send"),
            Client::Wt(wt) => within("wt send", wt.send.write_all(bytes))
                .await
                .expect("wt send"),
        }
    }

    /// Sends `{target, type, payload}`.
    pub async fn send(&mut self, target: &str, kind: &str, payload: Value) {
        self.send_text(&json!({ "target": target, "type": kind, "payload": payload }).to_string())
            .await;
    }

    /// The next envelope as raw text (without the trailing newline).
    pub async fn recv_text(&mut self) -> String {
        match self {
            Client::Ws(ws) => loop {
                match within("ws recv", ws.next()).await {
                    Some(Ok(Message::Text(text))) => return text.trim_end_matches('\n').to_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected an envelope, got {other:?}"),
                }
            },
            Client::Wt(wt) => {
                let mut line = String::new();
                let read = within("wt recv", wt.recv.read_line(&mut line))
                    .await
                    .expect("wt read");
                assert!(read > 0, "stream ended while an envelope was expected");
                line.trim_end_matches('\n').to_owned()
            }
        }
    }

    /// The next envelope.
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
    }

    /// Reads until the gateway closes the connection; returns the close
    /// code, reason and final CLOSE envelope. Envelopes before it are returned
    /// in `skipped`.
    pub async fn closed(&mut self) -> Closed {
        let mut envelope = None;
        match self {
            Client::Ws(ws) => loop {
                match within("ws close", ws.next()).await {
                    Some(Ok(Message::Text(text))) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        if v["type"] == "CLOSE" {
                            envelope = Some(v["payload"].clone());
                        }
                    }
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Closed {
                            code: u16::from(frame.code).into(),
                            reason: frame.reason.to_string(),
                            envelope,
                        };
                    }
                    Some(Ok(_)) => {}
                    other => panic!("expected a close frame, got {other:?}"),
                }
            },
            Client::Wt(wt) => {
                loop {
                    let mut line = String::new();
                    match within("wt close", wt.recv.read_line(&mut line)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let v: Value = serde_json::from_str(line.trim_end()).unwrap();
                            if v["type"] == "CLOSE" {
                                envelope = Some(v["payload"].clone());
                            }
                        }
                    }
                }
                // Reading to the end is what a client does; the gateway
                // closes the connection with the code right after.
                match within("wt closed", wt.conn.closed()).await {
                    wtransport::error::ConnectionError::ApplicationClosed(close) => Closed {
                        code: u32::try_from(close.code().into_inner()).unwrap(),
                        reason: String::from_utf8_lossy(close.reason()).into_owned(),
                        envelope,
                    },
                    other => panic!("expected an application close, got {other:?}"),
                }
            }
        }
    }

    /// Closes from the client side, cleanly.
    pub async fn close(self) {
        match self {
            Client::Ws(mut ws) => {
                let _ = within("ws close", ws.close(None)).await;
            }
            Client::Wt(mut wt) => {
                let _ = within("wt finish", wt.send.finish()).await;
                wt.conn.close(0u32.into(), b"bye");
            }
        }
    }
}

/// A plain HTTP/3 request (optionally an extended CONNECT for WebTransport)
/// with a raw h3 client, to see the status codes a browser would get.
pub async fn h3_request(
    gw: &Addrs,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    webtransport: bool,
) -> (u16, String) {
    h3_try_request(gw, method, path, headers, webtransport)
        .await
        .unwrap_or_else(|err| panic!("HTTP/3 request failed: {err}"))
}

/// Like [`h3_request`], returning protocol errors instead of failing.
pub async fn h3_try_request(
    gw: &Addrs,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    webtransport: bool,
) -> Result<(u16, String), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(gw.cert_der.clone()))
        .unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = within(
        "quic connect",
        endpoint.connect(gw.wt, "localhost").unwrap(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (mut driver, mut send_request) = h3::client::builder()
        .enable_extended_connect(true)
        .enable_datagram(true)
        .build::<_, _, bytes::Bytes>(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| e.to_string())?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", gw.wt.port()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if webtransport {
        request = request.extension(h3::ext::Protocol::WEB_TRANSPORT);
    }
    let result = async {
        let mut stream = within(
            "h3 send",
            send_request.send_request(request.body(()).unwrap()),
        )
        .await
        .map_err(|e| e.to_string())?;
        within("h3 finish", stream.finish())
            .await
            .map_err(|e| e.to_string())?;
        let response = within("h3 response", stream.recv_response())
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(mut chunk) = within("h3 body", stream.recv_data())
            .await
            .map_err(|e| e.to_string())?
        {
            use bytes::Buf;
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok((
            response.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
    .await;
    drive.abort();
    result
}

impl Client {
    /// Closes the sending side the way a well-behaved client does (close
    /// frame / stream FIN) and keeps reading until the gateway ends the
    /// connection; returns every envelope that arrived meanwhile.
    pub async fn close_and_drain(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        match self {
            Client::Ws(ws) => {
                within("ws close", ws.close(None)).await.ok();
                while let Some(Ok(message)) = within("ws drain", ws.next()).await {
                    if let Message::Text(text) = message {
                        seen.push(serde_json::from_str(&text).unwrap());
                    }
                }
            }
            Client::Wt(wt) => {
                within("wt finish", wt.send.finish()).await.ok();
                loop {
                    let mut line = String::new();
                    match within("wt drain", wt.recv.read_line(&mut line)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => seen.push(serde_json::from_str(line.trim_end()).unwrap()),
                    }
                }
            }
        }
        seen
    }
}

/// Connects with `token` in a thread of its own, then freezes that thread
/// for `freeze`: its sockets go unserviced (no pongs, no QUIC
/// acknowledgements), which is what a vanished browser looks like.
/// Returns once the client is attached.
pub async fn frozen_client(
    addrs: &Addrs,
    kind: Kind,
    token: &str,
    freeze: Duration,
) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let addrs = addrs.clone();
    let token = token.to_owned();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let mut client = Client::connect(&addrs, kind, &token).await;
            assert_eq!(client.recv().await["type"], "WELCOME");
            client
        });
        ready_tx.send(()).unwrap();
        std::thread::sleep(freeze);
        drop(client);
        drop(runtime);
    });
    within(
        "frozen client ready",
        tokio::task::spawn_blocking(move || ready_rx.recv()),
    )
    .await
    .unwrap()
    .expect("frozen client connected");
    handle
}

/// The gateway binary as a separate process, for what only a process shows:
/// exit status, signals, its log, its memory.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub addrs: Addrs,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    pub certs: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `signal-gateway` with `args` (plus a temp cert dir and a
    /// loopback listener) and `RUST_LOG` as given; waits until it listens.
    pub async fn start(args: &[&str], rust_log: &str) -> Self {
        Self::start_under(&[], args, rust_log).await
    }

    /// [`GatewayProcess::start`] through a wrapper command (e.g. `prlimit`),
    /// which must exec the gateway so the child's PID is the gateway's.
    pub async fn start_under(wrapper: &[&str], args: &[&str], rust_log: &str) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let certs = tempfile::tempdir().unwrap();
        let binary = env!("CARGO_BIN_EXE_signal-gateway");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => tokio::process::Command::new(binary),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--cert-dir"])
            .arg(certs.path())
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("gateway binary starts");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let collected = log.clone();
        tokio::spawn(async move {
            let mut port_tx = Some(port_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("HTTP + WebSocket on http://").nth(1) {
                    let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    if let Some(tx) = port_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                collected.lock().unwrap().push(line);
            }
        });
        let http = match tokio::time::timeout(TIMEOUT, port_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "gateway did not start; its log:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        let cert_der = read_cert_der(&certs.path().join("cert.pem"));
        let digest = ring::digest::digest(&ring::digest::SHA256, &cert_der);
        let mut cert_sha256 = [0u8; 32];
        cert_sha256.copy_from_slice(digest.as_ref());
        Self {
            child,
            addrs: Addrs {
                http,
                wt: http,
                cert_sha256,
                cert_der,
            },
            log,
            certs,
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Registers `name` over HTTP and returns its token.
    pub async fn register(&self, name: &str) -> String {
        register_at(&self.addrs, name).await
    }
}

impl std::ops::Deref for GatewayProcess {
    type Target = Addrs;

    fn deref(&self) -> &Addrs {
        &self.addrs
    }
}

/// GETs `path` from the gateway behind `addrs` and parses the JSON answer.
pub async fn get_json_at(addrs: &Addrs, path: &str) -> Value {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    within(path, async {
        client
            .get(format!("http://{}{path}", addrs.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
    .await
}

/// Registers `name` at the gateway behind `addrs`; returns its token.
pub async fn register_at(addrs: &Addrs, name: &str) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let body: Value = within(
        "register",
        client
            .post(format!("http://{}/v1/register", addrs.http))
            .json(&json!({ "username": name }))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["status"], "SUCCESS", "{body}");
    body["token"].as_str().unwrap().to_owned()
}
