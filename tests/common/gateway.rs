//! A real gateway in the test's own process, on ephemeral loopback ports,
//! through the library's entry point.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use signal_gateway::config::Config;
use signal_gateway::core::Hub;
use signal_gateway::server::Gateway;

use super::clients::{Client, Kind};
use super::within;

/// Generous rates so ordinary tests never trip the abuse limits; tests of
/// the limits pass their own values (later flags win).
pub const TEST_RATES: &[&str] = &[
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

/// The admin routes, asked from loopback (no token needed), each under
/// [`within`]: the JSON answer.
impl Addrs {
    /// `method path` as an admin would call it.
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> Value {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        within(&format!("{method} {path}"), async {
            client
                .request(method.clone(), format!("http://{}{path}", self.http))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
        .await
    }

    /// `POST /v1/kick-active-users`.
    pub async fn kick(&self) -> Value {
        self.admin(reqwest::Method::POST, "/v1/kick-active-users")
            .await
    }

    /// `GET /v1/users`: who is registered and connected.
    pub async fn users(&self) -> Value {
        self.admin(reqwest::Method::GET, "/v1/users").await
    }

    /// `DELETE /v1/users`: forget every identity.
    pub async fn delete_users(&self) -> Value {
        self.admin(reqwest::Method::DELETE, "/v1/users").await
    }

    /// `GET /v1/nodes`: the live nodes of a cluster.
    pub async fn nodes(&self) -> Value {
        self.admin(reqwest::Method::GET, "/v1/nodes").await
    }
}

/// A running gateway (dereferences to its [`Addrs`]).
pub struct TestGateway {
    pub addrs: Addrs,
    /// The `--metrics-listen` address, when one was asked for.
    pub metrics_addr: Option<SocketAddr>,
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
        let mut argv: Vec<String> = ["--listen", "127.0.0.1:0"]
            .iter()
            .chain(TEST_RATES)
            .map(|s| s.to_string())
            .collect();
        argv.extend(["--cert-dir".to_string(), certs.path().display().to_string()]);
        let data = certs.path().join("data");
        argv.extend(["--data-dir".to_string(), data.display().to_string()]);
        argv.extend(args.iter().map(|s| s.to_string()));
        let config = Config::from_args(argv).expect("valid test config");
        // WebTransport takes the HTTP port's number on UDP by default; on a
        // busy test machine another test's client may hold it. Try again
        // (a fresh HTTP port) rather than fail on what is not under test.
        let mut attempts = 0;
        let gateway = loop {
            match Gateway::bind(config.clone()).await {
                Ok(gateway) => break gateway,
                Err(err) if attempts < 5 && err.to_string().contains("in use") => attempts += 1,
                Err(err) => panic!("gateway binds: {err}"),
            }
        };
        let http = gateway.http_addrs()[0];
        let wt = gateway.webtransport_addrs()[0];
        let hub = gateway.hub().clone();
        let metrics_addr = gateway.metrics_addr();
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
            metrics_addr,
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
                let users = self.users().await;
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

pub(super) fn read_cert_der(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("dev certificate written");
    let mut reader = std::io::BufReader::new(&pem[..]);
    rustls_pemfile::certs(&mut reader)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
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
