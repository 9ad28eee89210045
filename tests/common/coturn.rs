//! A real coturn (`turnserver` from Debian's `coturn` package) on loopback,
//! configured the way the README tells an operator to run it beside the
//! gateway (`use-auth-secret` with a `static-auth-secret`), with what a
//! loopback trial needs besides: loopback peers allowed, no TLS, a narrow
//! relay port range, no CLI. Killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::ports::{Protocol, free_port_block};

/// Relay ports coturn may allocate: two per client is all a test needs.
const RELAY_PORTS: u16 = 16;

/// Starts before giving up: one fails if another test takes the chosen port
/// first (coturn then retries its bind forever, so it must be killed).
const START_ATTEMPTS: u32 = 3;

/// How long one start may take to answer STUN (it takes well under a
/// second on an idle machine).
const START_WITHIN: Duration = Duration::from_secs(8);

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
    /// it answers STUN. A start that does not answer in time is killed and
    /// tried again on other ports.
    pub async fn start(secret: &str) -> Self {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut coturn = Self::spawn(secret);
            match coturn.wait_ready().await {
                Ok(()) => return coturn,
                Err(why) => failures.push(format!(
                    "attempt {attempt}, port {}: {why}; its log:\n{}",
                    coturn.port,
                    coturn.log()
                )),
            }
        }
        panic!(
            "coturn did not answer STUN in {START_ATTEMPTS} starts:\n{}",
            failures.join("\n")
        );
    }

    fn spawn(secret: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // coturn listens on the first port and relays on the rest.
        let port = free_port_block(Protocol::Udp, 1 + RELAY_PORTS);
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
             no-tcp\n\
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
            min_port = port + 1,
            max_port = port + RELAY_PORTS,
            log = dir.path().join("turnserver.log").display(),
            pid = dir.path().join("turnserver.pid").display(),
            db = dir.path().join("turndb").display(),
        );
        let conf = dir.path().join("turnserver.conf");
        std::fs::write(&conf, config).unwrap();
        let child = tokio::process::Command::new(turnserver())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("turnserver starts");
        Self { port, dir, child }
    }

    /// Waits until coturn answers a STUN Binding request, or says why not.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + START_WITHIN;
        let mut answer = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("turnserver exited ({status})"));
            }
            socket.send_to(&binding_request(), server).await.unwrap();
            let reply =
                tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut answer))
                    .await;
            // 0x0101: Binding success response.
            if let Ok(Ok((n, _))) = reply
                && n >= 20
                && answer[..2] == [0x01, 0x01]
            {
                return Ok(());
            }
        }
        Err(format!("no STUN answer within {START_WITHIN:?}"))
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
