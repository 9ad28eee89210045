//! A real `redis-server` (Debian's package; `scripts/test` installs it) on
//! a free loopback port below the ephemeral range (see `ports`), with its
//! data in a temporary directory and the append-only file synced on every
//! write, as the README tells operators to run it. Killed by PID on drop,
//! even when the test fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::{Protocol, free_port_block};

/// A running Redis.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Flags after the usual ones (e.g. `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts Redis on a free port; waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with `extra` flags after the usual ones.
    pub fn start_with(extra: &[String]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port_block(Protocol::Tcp, 1),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.to_vec(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        assert!(
            found,
            "redis-server is missing: scripts/test installs it (Debian's `redis-server` package)"
        );
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {} exited ({status})", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers `PING`.
    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the data it had written.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again on the same port with no data at all, as a Redis
    /// without persistence (or with its files lost) comes back.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
        self.spawn();
    }

    /// Starts it again on the same port with other extra flags.
    pub fn restart_with(&mut self, extra: &[String]) {
        self.kill();
        self.extra = extra.to_vec();
        self.spawn();
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a server that hangs.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            signal(child.id(), if frozen { "-STOP" } else { "-CONT" });
        }
    }

    /// Its answer to `command` (awaited at most a second).
    pub fn ask<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        query(self.port, command, Duration::from_secs(1))
            .unwrap_or_else(|err| panic!("{command:?} on port {}: {err}", self.port))
    }
}

/// Sends `which` (`-STOP`, `-CONT`, ...) to process `pid`.
pub fn signal(pid: u32, which: &str) {
    let sent = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .is_ok_and(|status| status.success());
    assert!(sent, "kill {which} {pid}");
}

/// The answer of the Redis (or Sentinel) on `port` to `command`, on a new
/// connection, awaited at most `within`; asked again when a signal (this
/// process's children ending) interrupts the connect or the read.
pub fn query<T: redis::FromRedisValue>(
    port: u16,
    command: &redis::Cmd,
    within: Duration,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut attempts = 0;
    loop {
        let answer = client
            .get_connection_with_timeout(within)
            .and_then(|mut connection| {
                connection.set_read_timeout(Some(within))?;
                command.query(&mut connection)
            });
        match answer {
            Err(err) if attempts < 5 && err.to_string().contains("Interrupted") => attempts += 1,
            answer => return answer,
        }
    }
}

/// What `ROLE` says the server on `port` is (`master`, `slave`), or why it
/// does not answer.
pub fn role(port: u16) -> Result<String, String> {
    let answer: Vec<redis::Value> = query(port, &redis::cmd("ROLE"), Duration::from_millis(500))
        .map_err(|err| err.to_string())?;
    match answer.first() {
        Some(redis::Value::BulkString(role)) => Ok(String::from_utf8_lossy(role).into_owned()),
        other => Err(format!("{other:?}")),
    }
}

/// Debian's `redis-sentinel` on a free port below the ephemeral range,
/// watching one primary as `main` (quorum 2, down after 1 s), its config
/// and log in a temporary directory. Killed by PID on drop.
pub struct RedisSentinel {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// The name the Sentinels monitor the primary under.
pub const MASTER: &str = "main";

impl RedisSentinel {
    pub fn start(primary: u16) -> Self {
        let found = Command::new("redis-sentinel")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        assert!(
            found,
            "redis-sentinel is missing: scripts/test installs it (Debian's `redis-sentinel` package)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_block(Protocol::Tcp, 1);
        let config = dir.path().join("sentinel.conf");
        // failover-timeout also spaces failovers of one master (twice it):
        // short, so that a test can fail over again within seconds.
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 1000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-sentinel")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel starts");
        let mut sentinel = Self {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while role(port).as_deref() != Ok("sentinel") {
            if let Some(Ok(Some(status))) = sentinel.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-sentinel on port {port} exited ({status}): {}",
                    sentinel.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-sentinel did not answer in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }

    /// Its log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// The port of the primary it names now, if it answers.
    pub fn primary_port(&self) -> Option<u16> {
        let (_, port): (String, u16) = query(
            self.port,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER),
            Duration::from_millis(500),
        )
        .ok()?;
        Some(port)
    }

    /// How many other Sentinels and healthy replicas it knows of.
    pub fn knows(&self) -> (usize, usize) {
        let within = Duration::from_secs(1);
        let sentinels: Vec<redis::Value> = query(
            self.port,
            redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER),
            within,
        )
        .unwrap_or_default();
        let replicas: Vec<std::collections::HashMap<String, String>> = query(
            self.port,
            redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER),
            within,
        )
        .unwrap_or_default();
        let healthy = replicas
            .iter()
            .filter(|r| {
                r.get("flags")
                    .is_some_and(|flags| !flags.contains("down") && !flags.contains("disconnected"))
            })
            .count();
        (sentinels.len(), healthy)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary, one replica and three Sentinels, as an operator runs them.
pub struct SentinelGroup {
    /// Whichever is primary now; `servers[0]` was at the start.
    pub servers: [RedisServer; 2],
    pub sentinels: Vec<RedisSentinel>,
}

impl SentinelGroup {
    /// Starts them and waits until every Sentinel knows the two others and
    /// the replica.
    pub fn start() -> Self {
        let primary = RedisServer::start_with(&QUICK_SYNC.map(str::to_owned));
        let replica = RedisServer::start_with(&replica_of(primary.port));
        let sentinels = (0..3).map(|_| RedisSentinel::start(primary.port)).collect();
        Self {
            servers: [primary, replica],
            sentinels,
        }
    }

    /// Whether the server that is not the primary replicates from it.
    fn replica_synced(&self) -> bool {
        let Some(primary) = self.primary() else {
            return false;
        };
        let info: String = query(
            self.servers[1 - primary].port,
            redis::cmd("INFO").arg("replication"),
            Duration::from_secs(1),
        )
        .unwrap_or_default();
        info.contains(&format!("master_port:{}", self.servers[primary].port))
            && info.contains("master_link_status:up")
    }

    /// Waits until every Sentinel knows the two others and the replica,
    /// and the replica is in sync (so that a failover can happen and a
    /// registration is confirmed).
    pub async fn wait_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.sentinels.iter().all(|s| s.knows() == (2, 1)) && self.replica_synced()) {
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not settle in 30 s: {:?}\n{}",
                self.sentinels
                    .iter()
                    .map(RedisSentinel::knows)
                    .collect::<Vec<_>>(),
                self.sentinels[0].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gateway's flags to find the primary through these Sentinels.
    pub fn flags(&self) -> Vec<String> {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        vec![
            "--redis-sentinel".to_owned(),
            sentinels.join(","),
            "--redis-master".to_owned(),
            MASTER.to_owned(),
        ]
    }

    /// The index in `servers` of the primary the Sentinels agree on.
    pub fn primary(&self) -> Option<usize> {
        let ports: Vec<Option<u16>> = self.sentinels.iter().map(|s| s.primary_port()).collect();
        let port = ports[0]?;
        if ports.iter().any(|p| *p != Some(port)) {
            return None;
        }
        self.servers.iter().position(|s| s.port == port)
    }

    /// Whether any Sentinel names `servers[index]` as the primary (the
    /// first to do so announces `+switch-master`).
    pub fn named_by_any(&self, index: usize) -> bool {
        self.sentinels
            .iter()
            .any(|s| s.primary_port() == Some(self.servers[index].port))
    }

    /// Waits until every Sentinel names `servers[index]` and it says it is
    /// the primary; returns when that was seen.
    pub async fn wait_primary(&self, index: usize, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if self.primary() == Some(index)
                && role(self.servers[index].port).as_deref() == Ok("master")
            {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not fail over to port {} in {within:?}\n{}",
                self.servers[index].port,
                self.sentinels[0].log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A primary starts a replica's full sync at once rather than after 5 s
/// (Redis 7 waits for more replicas to share a diskless transfer).
const QUICK_SYNC: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// `--replicaof 127.0.0.1 <port>`, syncing quickly once promoted.
pub fn replica_of(port: u16) -> Vec<String> {
    let mut flags: Vec<String> = QUICK_SYNC.map(str::to_owned).to_vec();
    flags.extend([
        "--replicaof".to_owned(),
        "127.0.0.1".to_owned(),
        port.to_string(),
    ]);
    flags
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
