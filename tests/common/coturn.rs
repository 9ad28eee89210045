//! A real coturn (`turnserver` from Debian's `coturn` package) on loopback,
//! configured the way the README tells an operator to run it beside the
//! gateway (`use-auth-secret` with a `static-auth-secret`), with what a
//! loopback trial needs besides: loopback peers allowed, no TLS, a narrow
//! relay port range, no CLI. Killed on drop.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::within;

/// Relay ports coturn may allocate: two per client is all a test needs.
const RELAY_PORTS: u16 = 16;

pub struct Coturn {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: tokio::process::Child,
}

/// Where `turnserver` is, or a failure that says how to get it.
fn turnserver() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = PathBuf::from(dir).join("turnserver");
        if path.exists() {
            return path;
        }
    }
    panic!(
        "coturn's turnserver is not installed: `scripts/turn --install-only` \
         (which scripts/test runs) installs Debian's coturn package"
    );
}

/// A UDP port nobody uses on 127.0.0.1 right now.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The first of `RELAY_PORTS` consecutive free UDP ports.
fn free_relay_range() -> u16 {
    for _ in 0..100 {
        let first = rand::random_range(40_000..60_000);
        let all_free =
            (first..first + RELAY_PORTS).all(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return first;
        }
    }
    panic!("no range of {RELAY_PORTS} free UDP ports on 127.0.0.1");
}

/// A STUN Binding request (RFC 5389 §6): its answer says coturn listens.
fn binding_request() -> [u8; 20] {
    let mut request = [0u8; 20];
    request[..2].copy_from_slice(&0x0001u16.to_be_bytes());
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    request[8..].copy_from_slice(&rand::random::<[u8; 12]>());
    request
}

impl Coturn {
    /// Starts coturn with `secret` as its `static-auth-secret`; returns once
    /// it answers STUN.
    pub async fn start(secret: &str) -> Self {
        let binary = turnserver();
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let min_port = free_relay_range();
        let config = format!(
            "listening-ip=127.0.0.1\n\
             relay-ip=127.0.0.1\n\
             listening-port={port}\n\
             min-port={min_port}\n\
             max-port={max_port}\n\
             use-auth-secret\n\
             static-auth-secret={secret}\n\
             realm=signal-gateway.test\n\
             fingerprint\n\
             no-tls\n\
             no-dtls\n\
             no-tcp-relay\n\
             allow-loopback-peers\n\
             no-cli\n\
             no-software-attribute\n\
             simple-log\n\
             log-file={log}\n\
             pidfile={pid}\n\
             userdb={db}\n",
            max_port = min_port + RELAY_PORTS - 1,
            log = dir.path().join("turnserver.log").display(),
            pid = dir.path().join("turnserver.pid").display(),
            db = dir.path().join("turndb").display(),
        );
        let conf = dir.path().join("turnserver.conf");
        std::fs::write(&conf, config).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("turnserver starts");
        let coturn = Self { port, dir, child };
        coturn.wait_ready().await;
        coturn
    }

    async fn wait_ready(&self) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server: SocketAddr = ([127, 0, 0, 1], self.port).into();
        within("coturn answers STUN", async {
            let mut answer = [0u8; 512];
            loop {
                socket.send_to(&binding_request(), server).await.unwrap();
                let reply =
                    tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut answer))
                        .await;
                // 0x0101: Binding success response.
                if let Ok(Ok((n, _))) = reply
                    && n >= 20
                    && answer[..2] == [0x01, 0x01]
                {
                    return;
                }
            }
        })
        .await;
    }

    /// What coturn logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turnserver.log")).unwrap_or_default()
    }

    /// Runs `turnutils_uclient` (coturn's test client) against this server
    /// as `username`/`credential`: two clients allocate relays and send each
    /// other messages through them. Returns whether it succeeded, and its
    /// output.
    pub async fn client_exchange(&self, username: &str, credential: &str) -> (bool, String) {
        let run = tokio::process::Command::new("turnutils_uclient")
            .args(["-y", "-c", "-n", "3", "-m", "1", "-e", "127.0.0.1"])
            .args(["-u", username, "-w", credential])
            .args(["-p", &self.port.to_string(), "127.0.0.1"])
            .kill_on_drop(true)
            .output();
        // It sends for a few seconds whatever happens; a busy machine slows it.
        let output = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("turnutils_uclient finishes")
            .expect("turnutils_uclient runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
