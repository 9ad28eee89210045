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
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deleted: Value = client
        .delete(format!("http://{}/v1/users", gw.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
