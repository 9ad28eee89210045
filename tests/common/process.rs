//! The gateway binary as a separate process, for what only a process
//! shows: exit status, signals, its log, its memory. Killed on drop.

use std::net::SocketAddr;
use std::sync::Arc;

use super::TIMEOUT;
use super::gateway::{Addrs, read_cert_der, register_at};

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
        // WebTransport takes the HTTP port's number on UDP; on a busy test
        // machine another test's client may hold it: start again on a fresh
        // port rather than fail on what is not under test.
        for _ in 0..5 {
            match Self::try_start(wrapper, args, rust_log).await {
                Ok(gateway) => return gateway,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("gateway did not start; its log:\n{log}"),
            }
        }
        panic!("gateway did not start: its ports were always taken");
    }

    async fn try_start(wrapper: &[&str], args: &[&str], rust_log: &str) -> Result<Self, String> {
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
            .arg("--data-dir")
            .arg(certs.path().join("data"))
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
            _ => {
                // The log may still be arriving from an exiting process.
                let _ = tokio::time::timeout(TIMEOUT, child.wait()).await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                return Err(log.lock().unwrap().join("\n"));
            }
        };
        let cert_der = read_cert_der(&certs.path().join("cert.pem"));
        let digest = ring::digest::digest(&ring::digest::SHA256, &cert_der);
        let mut cert_sha256 = [0u8; 32];
        cert_sha256.copy_from_slice(digest.as_ref());
        Ok(Self {
            child,
            addrs: Addrs {
                http,
                wt: http,
                cert_sha256,
                cert_der,
            },
            log,
            certs,
        })
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
        rss_kib_of(self.child.id().expect("running")).expect("VmRSS in /proc/PID/status")
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

/// Runs `signal-gateway` with `args` (plus a loopback listener) expecting it
/// to refuse to start; returns its exit code and everything it logged.
pub async fn failed_start(args: &[&str]) -> (Option<i32>, String) {
    let certs = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_signal-gateway"))
        .args(["--listen", "127.0.0.1:0", "--cert-dir"])
        .arg(certs.path())
        .args(args)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("the gateway should have stopped by itself")
        .expect("gateway binary runs");
    let log = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    (output.status.code(), log)
}

/// Resident memory of process `pid` in KiB, from /proc; `None` once it is
/// gone (samplers that run while processes come and go).
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
