//! Identities that last: the embedded store (the default) keeps every
//! registered identity across restarts and crashes, expires them by the
//! wall clock, and refuses to start — saying why, touching nothing — on a
//! data directory it cannot use.

mod common;

use std::time::Duration;

use common::{Client, GatewayProcess, Kind, failed_start, within};
use serde_json::Value;

/// `GET /v1/user` with `token`: the status and the body.
async fn whoami(gw: &common::Addrs, token: &str) -> (u16, Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = within(
        "GET /v1/user",
        client
            .get(format!("http://{}/v1/user", gw.http))
            .bearer_auth(token)
            .send(),
    )
    .await
    .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn start_on(data: &std::path::Path, extra: &[&str]) -> GatewayProcess {
    let data = data.display().to_string();
    let mut args = vec!["--data-dir", data.as_str()];
    args.extend_from_slice(extra);
    GatewayProcess::start(&args, "signal_gateway=info").await
}

async fn stop(mut gw: GatewayProcess) {
    gw.terminate();
    let status = within("gateway exits", gw.child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_restart_keeps_every_identity() {
    let data = tempfile::tempdir().unwrap();
    let gw = start_on(data.path(), &[]).await;
    let alice = gw.register("alice").await;
    let zoe = gw.register("Zoë Li").await;
    stop(gw).await;

    let gw = start_on(data.path(), &[]).await;
    assert_eq!(whoami(&gw, &alice).await.1["username"], "alice");
    assert_eq!(whoami(&gw, &zoe).await.1["username"], "Zoë Li");
    let mut client = Client::connect(&gw, Kind::WebTransport, &alice).await;
    assert_eq!(client.recv().await["payload"]["username"], "alice");
    // The name is still taken: nobody else can have it.
    let taken: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/register", gw.http))
        .json(&serde_json::json!({ "username": "alice" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(taken["status"], "TAKEN");
}

#[tokio::test]
async fn an_identity_answered_success_survives_sigkill_right_after() {
    let data = tempfile::tempdir().unwrap();
    let mut gw = start_on(data.path(), &[]).await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push((
            format!("crash-{i}"),
            gw.register(&format!("crash-{i}")).await,
        ));
    }
    // No graceful anything: the process is gone the moment the last
    // SUCCESS has been read.
    gw.child.start_kill().unwrap();
    within("killed", gw.child.wait()).await.unwrap();

    let gw = start_on(data.path(), &[]).await;
    for (name, token) in &tokens {
        assert_eq!(whoami(&gw, token).await.1["username"], name.as_str());
    }
}

/// What one registration request's client saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seen {
    /// `SUCCESS`, with the token.
    Success(String),
    /// Any other answer: the HTTP status and the body's `status`.
    Refused(u16, String),
    /// No answer: the gateway was killed with the request in flight.
    Nothing,
}

/// 64 clients register as fast as they can, each on its own keep-alive
/// connection, from four loopback addresses (32, 16, 8 and 8 clients) that
/// may hold 100 identities each; every fourth name is also asked for by the
/// client's partner. Once the busiest address is full and 250 names are
/// registered, the gateway is SIGKILLed with requests in flight. After the
/// restart, every name answered `SUCCESS` authenticates with its token, and
/// nothing else is kept: a name is registered only if a request for it was
/// answered `SUCCESS` or not answered at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_64_concurrent_registrations_keeps_exactly_what_was_answered_success() {
    use std::collections::{HashMap, HashSet};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CLIENTS: usize = 64;
    const PER_ADDRESS: usize = 100;
    const KILL_AFTER: usize = 250;
    let address_of = |client: usize| {
        let last = match client {
            0..32 => 2,
            32..48 => 3,
            48..56 => 4,
            _ => 5,
        };
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    };
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let cap = PER_ADDRESS.to_string();
    let args = [
        "--data-dir",
        dir.as_str(),
        "--max-identities-per-ip",
        cap.as_str(),
        "--register-rate",
        "1000000",
        "--register-burst",
        "1000000",
    ];
    let mut gw =
        GatewayProcess::start(&args, "signal_gateway=info,signal_gateway::store=debug").await;
    let url = format!("http://{}/v1/register", gw.http);
    let successes = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, successes, refusals) = (url.clone(), successes.clone(), refusals.clone());
            let http = reqwest::Client::builder()
                .no_proxy()
                .local_address(address_of(client))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for n in 0..20_000 {
                    let name = if n % 4 == 3 {
                        format!("duel-{}-{}", client / 2, n / 4)
                    } else {
                        format!("c{client}-{n}")
                    };
                    let request = http
                        .post(&url)
                        .json(&serde_json::json!({ "username": name }));
                    let answer = match request.send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.json::<Value>().await {
                                Ok(body) if body["status"] == "SUCCESS" => {
                                    successes.fetch_add(1, Ordering::Relaxed);
                                    Seen::Success(body["token"].as_str().unwrap().to_owned())
                                }
                                Ok(body) => {
                                    if status == 429 {
                                        refusals.fetch_add(1, Ordering::Relaxed);
                                    }
                                    let text = body["status"].as_str().unwrap_or_default();
                                    Seen::Refused(status, text.to_owned())
                                }
                                Err(_) => Seen::Nothing,
                            }
                        }
                        Err(_) => Seen::Nothing,
                    };
                    let over = answer == Seen::Nothing;
                    seen.push((name, answer));
                    if over {
                        break;
                    }
                }
                seen
            })
        })
        .collect();
    within("250 registered and an address full", async {
        while successes.load(Ordering::Relaxed) < KILL_AFTER
            || refusals.load(Ordering::Relaxed) == 0
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    gw.child.start_kill().unwrap();
    within("killed", gw.child.wait()).await.unwrap();
    let mut attempts: HashMap<String, Vec<(usize, Seen)>> = HashMap::new();
    for (client, task) in clients.into_iter().enumerate() {
        for (name, seen) in within("a client ends", task).await.unwrap() {
            attempts.entry(name).or_default().push((client, seen));
        }
    }
    let all = || attempts.values().flatten().map(|(_, seen)| seen);
    let count = |what: fn(&Seen) -> bool| all().filter(|seen| what(seen)).count();
    let in_flight = count(|seen| *seen == Seen::Nothing);
    let taken = count(|seen| matches!(seen, Seen::Refused(200, s) if s == "TAKEN"));
    let full = count(|seen| matches!(seen, Seen::Refused(429, s) if s == "TOO_MANY_IDENTITIES"));
    let answered_success = count(|seen| matches!(seen, Seen::Success(_)));
    assert!(in_flight >= 1, "the kill found no request in flight");
    assert!(
        answered_success >= KILL_AFTER && full >= 1 && taken >= 1,
        "{answered_success} {full} {taken}"
    );
    assert_eq!(
        count(|seen| matches!(seen, Seen::Refused(..))),
        taken + full,
        "only TAKEN and TOO_MANY_IDENTITIES are expected: {:?}",
        all()
            .filter(|seen| matches!(seen, Seen::Refused(..)))
            .collect::<HashSet<_>>()
    );
    // Registrations that arrived during a commit went into the next one
    // together (the log is JSON lines when not on a terminal).
    let largest_batch = gw
        .log_text()
        .lines()
        .filter(|line| line.contains("identities committed"))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok()?["changes"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        largest_batch > 1,
        "no commit held more than one registration"
    );

    let gw = GatewayProcess::start(&args, "signal_gateway=info").await;
    let registered: HashSet<String> = common::get_json_at(&gw, "/v1/users").await["registered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap().to_owned())
        .collect();
    for (name, seen) in &attempts {
        let won: Vec<&String> = seen
            .iter()
            .filter_map(|(_, seen)| match seen {
                Seen::Success(token) => Some(token),
                _ => None,
            })
            .collect();
        assert!(won.len() <= 1, "{name} answered SUCCESS twice");
        for token in won {
            let (status, body) = whoami(&gw, token).await;
            assert_eq!(
                (status, body["username"].as_str()),
                (200, Some(name.as_str())),
                "{name}"
            );
        }
        let may_exist = seen
            .iter()
            .any(|(_, seen)| matches!(seen, Seen::Success(_) | Seen::Nothing));
        assert!(
            may_exist || !registered.contains(name),
            "{name} is registered, but every request for it was refused: {seen:?}"
        );
        let lost_a_duel = seen
            .iter()
            .any(|(_, seen)| matches!(seen, Seen::Refused(_, s) if s == "TAKEN"));
        assert!(
            !lost_a_duel || registered.contains(name),
            "{name} was answered TAKEN, but nobody has it"
        );
    }
    assert!(
        registered.iter().all(|name| attempts.contains_key(name)),
        "a name nobody asked for"
    );
    // The cap held for every address, batches and all.
    let mut held: HashMap<IpAddr, usize> = HashMap::new();
    for name in &registered {
        let (client, _) = &attempts[name][0];
        *held.entry(address_of(*client)).or_default() += 1;
    }
    assert!(held.values().all(|&n| n <= PER_ADDRESS), "{held:?}");
}

#[tokio::test]
async fn identities_expire_by_the_wall_clock_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let gw = start_on(data.path(), &["--identity-ttl", "2s"]).await;
    let token = gw.register("fleeting").await;
    stop(gw).await;
    // Longer than the time to live while no gateway runs at all.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gw = start_on(data.path(), &["--identity-ttl", "2s"]).await;
    within("expired after the restart", async {
        while whoami(&gw, &token).await.0 != 404 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    gw.register("fleeting").await;
}

#[tokio::test]
async fn last_seen_times_are_kept_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let gw = start_on(data.path(), &["--identity-ttl", "3s"]).await;
    let token = gw.register("regular").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // A connection refreshes the identity; the graceful stop writes it.
    let mut client = Client::connect(&gw, Kind::WebSocket, &token).await;
    client.recv().await;
    client.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop(gw).await;
    let gw = start_on(data.path(), &["--identity-ttl", "3s"]).await;
    // Without the refresh it would expire at once (registered 2 s ago, plus
    // the restart); with it, it lives on for a while yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(whoami(&gw, &token).await.0, 200);
}

#[tokio::test]
async fn deleting_identities_empties_the_file_too() {
    let data = tempfile::tempdir().unwrap();
    let gw = start_on(data.path(), &[]).await;
    let token = gw.register("gone").await;
    let deleted = gw.delete_users().await;
    assert_eq!(deleted["deleted"], 1);
    stop(gw).await;
    let gw = start_on(data.path(), &[]).await;
    assert_eq!(whoami(&gw, &token).await.0, 404);
    assert_eq!(
        common::get_json_at(&gw, "/v1/users").await["registered"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn the_memory_store_forgets_on_restart() {
    let data = tempfile::tempdir().unwrap();
    let gw = start_on(data.path(), &["--store", "memory"]).await;
    let token = gw.register("ephemeral").await;
    stop(gw).await;
    let gw = start_on(data.path(), &["--store", "memory"]).await;
    assert_eq!(whoami(&gw, &token).await.0, 404);
    assert!(
        !data.path().join("identities.redb").exists(),
        "the memory store writes nothing"
    );
}

#[tokio::test]
async fn the_identity_cap_still_applies() {
    let data = tempfile::tempdir().unwrap();
    let gw = start_on(data.path(), &["--max-identities", "2"]).await;
    gw.register("one").await;
    gw.register("two").await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/register", gw.http))
        .json(&serde_json::json!({ "username": "three" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}

fn digest_of(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_data_directory_that_cannot_be_written_stops_the_gateway() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for dir in [file.join("data"), "/proc/signal-gateway-data".into()] {
        let dir = dir.display().to_string();
        let (code, log) = failed_start(&["--data-dir", &dir]).await;
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("cannot use the data directory"), "{log}");
    }
}

#[tokio::test]
async fn a_file_of_another_format_version_is_refused_and_left_alone() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("identities.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut table = txn.open_table(meta).unwrap();
            table.insert("format_version", 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let before = digest_of(&path);
    let dir = data.path().display().to_string();
    let (code, log) = failed_start(&["--data-dir", &dir]).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("format version 2"), "{log}");
    assert_eq!(digest_of(&path), before, "the file was changed");
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_left_alone() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("identities.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let before = digest_of(&path);
    let dir = data.path().display().to_string();
    let (code, log) = failed_start(&["--data-dir", &dir]).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("cannot open"), "{log}");
    assert!(log.contains("left untouched"), "{log}");
    assert_eq!(digest_of(&path), before, "the file was changed");
}

#[tokio::test]
async fn a_second_gateway_on_the_same_data_directory_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let first = start_on(data.path(), &[]).await;
    let token = first.register("first").await;
    let dir = data.path().display().to_string();
    let (code, log) = failed_start(&["--data-dir", &dir]).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("in use by another process"), "{log}");
    assert_eq!(
        whoami(&first, &token).await.0,
        200,
        "the first one carries on"
    );
}
