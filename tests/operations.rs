//! What an operator relies on: `/metrics` parses with Prometheus's own
//! checker and tells the same story as `/v1/stats` after a scripted
//! session, `/readyz` turns 503 the moment a shutdown starts, and the JSON
//! log has one line per connection close and never a token or payload;
//! and every metric has its row in the operations guide.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The exposition as `series -> value`, series written as in the text
/// (`name{label="value",...}`).
type Exposition = BTreeMap<String, f64>;

fn parse_exposition(text: &str) -> Exposition {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().unwrap_or_else(|_| panic!("a number: {line}")),
            };
            (series.to_owned(), value)
        })
        .collect()
}

async fn scrape(url: &str) -> (String, Exposition) {
    let response = within("GET /metrics", reqwest::get(url))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let parsed = parse_exposition(&text);
    (text, parsed)
}

/// One series' value; a missing series fails the test (every labelled
/// series is exposed from the start, at zero).
fn value(metrics: &Exposition, series: &str) -> u64 {
    let value = metrics
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}"));
    *value as u64
}

fn sum_of(metrics: &Exposition, name: &str) -> u64 {
    metrics
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, value)| *value as u64)
        .sum()
}

/// Checks a histogram's shape: cumulative buckets that never decrease and
/// end in `+Inf` equal to `_count`. Returns the count.
fn histogram_count(metrics: &Exposition, name: &str, labels: &str) -> u64 {
    let open = if labels.is_empty() {
        format!("{name}_bucket{{")
    } else {
        format!("{name}_bucket{{{labels},")
    };
    let buckets: Vec<(f64, u64)> = metrics
        .iter()
        .filter_map(|(series, value)| {
            let rest = series.strip_prefix(&open)?;
            let bound = rest.strip_prefix("le=\"")?.split('"').next()?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, *value as u64))
        })
        .collect();
    let mut buckets = buckets;
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name}{{{labels}}} has buckets");
    assert!(
        buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "{name}{{{labels}}} buckets are cumulative: {buckets:?}"
    );
    let count_series = if labels.is_empty() {
        format!("{name}_count")
    } else {
        format!("{name}_count{{{labels}}}")
    };
    let count = value(metrics, &count_series);
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{name}");
    count
}

/// Error envelopes a client got before the marker it sent itself, by type.
async fn errors_until_marker(client: &mut Client, me: &str) -> BTreeMap<String, u64> {
    client.send(me, "marker", Value::Null).await;
    let mut errors = BTreeMap::new();
    loop {
        let envelope = client.recv().await;
        let kind = envelope["type"].as_str().unwrap().to_owned();
        if kind == "marker" {
            return errors;
        }
        if kind.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            *errors.entry(kind).or_default() += 1;
        }
    }
}

/// [`within`], printing the gateway's log if it times out.
async fn within_or_log<T>(
    gw: &GatewayProcess,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}; the log:\n{}", gw.log_text()),
    }
}

fn promtool() -> std::process::Command {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "promtool is missing: scripts/test installs it (Debian's `prometheus` package)"
    );
    std::process::Command::new("promtool")
}

/// Runs `promtool check metrics` on `exposition`; returns its verdict.
fn promtool_check(exposition: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

/// Every metric the gateway exposes has its row in docs/operations.md: a
/// new counter is one row in `core/stats.rs`'s table and one in the guide.
#[tokio::test]
async fn every_metric_has_a_row_in_the_operations_guide() {
    let gw = TestGateway::start().await;
    let (text, _) = scrape(&gw.url("/metrics")).await;
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let mut seen = 0;
    for declared in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let (name, kind) = declared.split_once(' ').unwrap();
        let exposed = match kind {
            "counter" if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.to_owned(),
        };
        assert!(
            guide.contains(&format!("`{exposed}`")),
            "{exposed} ({kind}) has no row in docs/operations.md"
        );
        seen += 1;
    }
    assert!(seen > 20, "the exposition declares its metrics: {text}");
}

#[tokio::test]
async fn the_exposition_passes_promtool_without_errors_or_warnings() {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", Kind::WebSocket).await;
    let mut bob = gw.user("bob", Kind::WebTransport).await;
    alice.send("bob", "offer", json!({"sdp": "v=0"})).await;
    assert_eq!(bob.recv().await["type"], "offer");
    alice.send("nobody", "offer", Value::Null).await;
    assert_eq!(alice.recv().await["type"], "TARGET_NOT_FOUND");
    let (text, _) = scrape(&gw.url("/metrics")).await;
    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics failed:\n{said}\n{text}");
    assert!(said.trim().is_empty(), "promtool had remarks:\n{said}");

    // The checker is not lenient: a malformed exposition fails it.
    let broken = text.replace(
        "# TYPE signal_gateway_connections gauge",
        "# TYPE signal_gateway_connections gauge\n# TYPE signal_gateway_connections gauge",
    );
    assert!(!promtool_check(&broken).0, "a doubled TYPE line is refused");
    let unsuffixed = "# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n";
    let (_, remarks) = promtool_check(unsuffixed);
    assert!(
        !remarks.trim().is_empty(),
        "a counter without _total is remarked on"
    );
}

/// Connects on both transports, forwards both ways, provokes every error
/// envelope a registered identity can get, replaces a connection and kicks
/// everyone; then every counter says what the clients saw and agrees with
/// `/v1/stats`.
#[tokio::test]
async fn after_a_scripted_session_the_metrics_match_what_happened_and_v1_stats() {
    let gw = TestGateway::start_with(&[
        "--envelope-burst",
        "300",
        "--envelope-rate",
        "1",
        "--write-timeout",
        "1s",
        "--max-envelope-bytes",
        "1048576",
        // dave, the slow consumer below, is away for this long and then
        // gone: what was held for him is answered EXPIRED.
        "--resume-window",
        "1s",
    ])
    .await;
    let http = gw.http();

    // Registrations: four created, one taken, one invalid; a check of each
    // token kind.
    let tokens: BTreeMap<&str, String> =
        register_all(&gw, &["alice", "bob", "carol", "dave"]).await;
    let taken = http
        .post(gw.url("/v1/register"))
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status_field(taken).await, "TAKEN");
    let invalid = http
        .post(gw.url("/v1/register"))
        .header("content-type", "application/json")
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let checked = http
        .get(gw.url("/v1/user"))
        .bearer_auth(&tokens["alice"])
        .send()
        .await
        .unwrap();
    assert_eq!(checked.status(), 200);
    let unknown = http
        .get(gw.url("/v1/user"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Both transports, both ways.
    let mut alice = Client::connect(&gw, Kind::WebSocket, &tokens["alice"]).await;
    let mut bob = Client::connect(&gw, Kind::WebTransport, &tokens["bob"]).await;
    assert_eq!(alice.recv().await["type"], "WELCOME");
    assert_eq!(bob.recv().await["type"], "WELCOME");
    for n in 0..10 {
        alice.send("bob", "offer", json!(n)).await;
        assert_eq!(bob.recv().await["payload"], json!(n));
        bob.send("alice", "answer", json!(n)).await;
        assert_eq!(alice.recv().await["payload"], json!(n));
    }

    // Errors a sender can provoke at once.
    alice.send_text("not json").await;
    alice.send("nobody", "offer", Value::Null).await;
    alice
        .send("", "REFRESH_TOKEN", json!({"token": "x.y.z"}))
        .await;
    let mut seen = errors_until_marker(&mut alice, "alice").await;

    // A replacement: bob again, on WebSocket.
    let mut bob_again = Client::connect(&gw, Kind::WebSocket, &tokens["bob"]).await;
    assert_eq!(bob_again.recv().await["type"], "WELCOME");
    assert_eq!(bob.closed().await.reason, "REPLACED");

    // The envelope rate: carol's burst of 300 runs out (the rate refills
    // one a second, so a few of the ten extra may pass).
    let mut carol = Client::connect(&gw, Kind::WebTransport, &tokens["carol"]).await;
    assert_eq!(carol.recv().await["type"], "WELCOME");
    let mut carol_errors = BTreeMap::new();
    for round in 0..10 {
        // In rounds, so that her own queue never fills.
        for n in 0..31 {
            carol.send("carol", "burst", json!(round * 31 + n)).await;
        }
        for _ in 0..31 {
            let envelope = carol.recv().await;
            let kind = envelope["type"].as_str().unwrap();
            if kind != "burst" {
                *carol_errors.entry(kind.to_owned()).or_default() += 1;
            }
        }
    }
    assert!(
        carol_errors.get("RATE_LIMITED") >= Some(&1),
        "{carol_errors:?}"
    );
    carol.close().await;

    // A slow consumer: dave never reads; alice floods him until he is
    // disconnected, and is told what did not reach him.
    let dave = Client::connect(&gw, Kind::WebSocket, &tokens["dave"]).await;
    gw.wait_connected("dave", |users| {
        users.iter().any(|u| u["username"] == "dave")
    })
    .await;
    // Large envelopes fill the socket buffers and the queue in a few dozen.
    let payload = json!("x".repeat(900_000));
    let mut flooded = 0;
    while gw.hub.is_connected("dave") {
        assert!(flooded < 200, "dave was never disconnected");
        alice.send("dave", "flood", payload.clone()).await;
        flooded += 1;
        if flooded % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(dave);
    // Every forwarded envelope has ended one way or another.
    within("envelopes settled", async {
        loop {
            let counters = gw.get_json("/v1/stats").await["counters"].clone();
            let ended = ["written", "undelivered_reported", "undelivered_unreported"]
                .iter()
                .map(|k| counters[k].as_u64().unwrap())
                .sum::<u64>()
                + ["expired", "expired_unreported"]
                    .iter()
                    .map(|k| counters["resume"][k].as_u64().unwrap())
                    .sum::<u64>();
            if ended == counters["forwarded"].as_u64().unwrap() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for (kind, count) in errors_until_marker(&mut alice, "alice").await {
        *seen.entry(kind).or_default() += count;
    }
    for (kind, count) in carol_errors {
        *seen.entry(kind).or_default() += count;
    }
    assert!(
        seen.get("TARGET_SLOW").copied().unwrap_or(0)
            + seen.get("UNDELIVERED").copied().unwrap_or(0)
            + seen.get("EXPIRED").copied().unwrap_or(0)
            > 0,
        "alice was told about dave: {seen:?}"
    );

    // The kick closes alice and bob's second connection.
    let kicked = http
        .get(gw.url("/v1/kick-active-users"))
        .send()
        .await
        .unwrap();
    assert_eq!(kicked.status(), 200);
    assert_eq!(alice.closed().await.reason, "KICKED");
    assert_eq!(bob_again.closed().await.reason, "KICKED");
    within("everyone gone", async {
        while gw.hub.connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A connection is counted closed when its close sequence has run.
    within("closes counted", async {
        loop {
            let counters = gw.get_json("/v1/stats").await["counters"].clone();
            if counters["connections_closed"] == counters["connections_opened"] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let stats = gw.get_json("/v1/stats").await;
    let counters = &stats["counters"];
    let (_, m) = scrape(&gw.url("/metrics")).await;
    let n = |key: &str| counters[key].as_u64().unwrap_or(0);

    // Connections: alice, bob, bob again, carol, dave.
    let ws = "transport=\"websocket\"";
    let wt = "transport=\"webtransport\"";
    assert_eq!(
        value(
            &m,
            &format!("signal_gateway_connections_opened_total{{{ws}}}")
        ),
        3
    );
    assert_eq!(
        value(
            &m,
            &format!("signal_gateway_connections_opened_total{{{wt}}}")
        ),
        2
    );
    assert_eq!(n("connections_opened"), 5);
    assert_eq!(n("connections_closed"), 5);
    assert_eq!(value(&m, &format!("signal_gateway_connections{{{ws}}}")), 0);
    assert_eq!(value(&m, &format!("signal_gateway_connections{{{wt}}}")), 0);
    let closed = |transport: &str, reason: &str| {
        value(
            &m,
            &format!("signal_gateway_connections_closed_total{{{transport},reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(closed(wt, "REPLACED"), 1);
    assert_eq!(closed(ws, "KICKED"), 2);
    assert_eq!(closed(ws, "SLOW_CONSUMER"), 1);
    assert_eq!(closed(wt, "CLIENT"), 1, "carol closed herself");
    assert_eq!(sum_of(&m, "signal_gateway_connections_closed_total"), 5);
    for (reason, count) in stats["counters"]["closes"].as_object().unwrap() {
        assert_eq!(
            closed(ws, reason) + closed(wt, reason),
            count.as_u64().unwrap(),
            "closes by {reason} agree with /v1/stats"
        );
    }

    // Envelopes.
    assert_eq!(
        value(&m, "signal_gateway_envelopes_received_total"),
        n("frames_received")
    );
    assert_eq!(
        value(&m, "signal_gateway_envelopes_forwarded_total"),
        n("forwarded")
    );
    assert_eq!(
        value(&m, "signal_gateway_envelopes_written_total"),
        n("written")
    );
    assert_eq!(value(&m, "signal_gateway_envelopes_to_gateway_total"), 1);
    assert_eq!(
        value(&m, "signal_gateway_frames_after_close_total"),
        n("after_close")
    );
    assert_eq!(
        value(&m, "signal_gateway_undelivered_unreported_total"),
        n("undelivered_unreported")
    );
    assert!(n("written") >= 20 + 300, "the ping-pong and carol's burst");
    assert_eq!(
        histogram_count(&m, "signal_gateway_relay_latency_seconds", ""),
        n("written"),
        "one latency per written envelope"
    );

    // Error envelopes: what the clients saw, and what /v1/stats says.
    let error = |kind: &str| {
        value(
            &m,
            &format!("signal_gateway_error_envelopes_total{{type=\"{kind}\"}}"),
        )
    };
    for kind in [
        "TARGET_NOT_FOUND",
        "INVALID_MESSAGE",
        "RATE_LIMITED",
        "TARGET_SLOW",
        "UNDELIVERED",
        "TOKEN_REFUSED",
    ] {
        assert_eq!(
            error(kind),
            seen.get(kind).copied().unwrap_or(0),
            "{kind}: the metric counts what the clients got ({seen:?})"
        );
    }
    assert_eq!(error("INVALID_MESSAGE"), n("invalid"));
    assert_eq!(error("TARGET_NOT_FOUND"), n("target_not_found"));
    assert_eq!(error("TARGET_SLOW"), n("target_slow"));
    assert_eq!(error("UNDELIVERED"), n("undelivered_reported"));
    assert_eq!(error("RATE_LIMITED"), n("rate_limited"));
    assert_eq!(error("TOKEN_REFUSED"), 1);

    // Set-up times: one per connection that got its WELCOME.
    assert_eq!(histogram_count(&m, "signal_gateway_setup_seconds", ws), 3);
    assert_eq!(histogram_count(&m, "signal_gateway_setup_seconds", wt), 2);
    // Batches: at least one flush, never more flushes than frames.
    let batches = histogram_count(&m, "signal_gateway_write_batch_envelopes", "");
    assert!(batches > 0, "{batches}");

    // Bytes moved on both transports.
    for transport in [ws, wt] {
        assert!(
            value(
                &m,
                &format!("signal_gateway_received_bytes_total{{{transport}}}")
            ) > 1000
        );
        assert!(
            value(
                &m,
                &format!("signal_gateway_sent_bytes_total{{{transport}}}")
            ) > 1000
        );
    }
    assert!(
        value(&m, &format!("signal_gateway_received_bytes_total{{{ws}}}")) > 900_000 * 5,
        "alice's flood"
    );

    // Identities.
    let registrations = |outcome: &str| {
        value(
            &m,
            &format!("signal_gateway_registrations_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(registrations("created"), 4);
    assert_eq!(registrations("taken"), 1);
    assert_eq!(registrations("invalid"), 1);
    assert_eq!(registrations("refused"), 0);
    let authentications = |method: &str, outcome: &str| {
        value(
            &m,
            &format!(
                "signal_gateway_authentications_total{{method=\"{method}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(
        authentications("token", "accepted"),
        5 + 1,
        "five connects, one check"
    );
    assert_eq!(authentications("token", "refused"), 1);
    assert_eq!(authentications("jwt", "accepted"), 0);
    assert_eq!(
        value(&m, "signal_gateway_identities"),
        stats["identities"].as_u64().unwrap()
    );
    assert_eq!(value(&m, "signal_gateway_identities"), 4);

    // The process and the build.
    assert!(value(&m, "process_resident_memory_bytes") > 1 << 20);
    assert!(value(&m, "process_open_fds") > 3);
    assert!(m["process_cpu_seconds_total"] > 0.0);
    let build = m
        .keys()
        .find(|series| series.starts_with("signal_gateway_build_info{"))
        .expect("build info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(!build.contains("commit=\"\""), "{build}");
}

async fn register_all<'a>(gw: &TestGateway, names: &[&'a str]) -> BTreeMap<&'a str, String> {
    let mut tokens = BTreeMap::new();
    for name in names {
        tokens.insert(*name, gw.register(name).await);
    }
    tokens
}

#[tokio::test]
async fn the_metrics_port_serves_without_credentials_and_the_main_one_guards() {
    let gw = TestGateway::start_with(&[
        "--admin-token",
        "s3cret-admin",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let http = gw.http();
    let guarded = http.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(
        guarded.status(),
        401,
        "the main listener wants the admin token"
    );
    let allowed = http
        .get(gw.url("/metrics"))
        .bearer_auth("s3cret-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    // The probes are public on the main listener.
    let ready = http.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap(), json!({"ready": true}));
    let healthy = http.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    assert_eq!(
        within("healthcheck", http.get(gw.url("/healthcheck")).send())
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "success",
        "/healthcheck stays as it was"
    );

    let metrics_addr = gw.metrics_addr.expect("--metrics-listen is bound");
    let (_, m) = scrape(&format!("http://{metrics_addr}/metrics")).await;
    assert!(m.contains_key("signal_gateway_envelopes_forwarded_total"));
    for probe in ["/healthz", "/readyz"] {
        let response = http
            .get(format!("http://{metrics_addr}{probe}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{probe}");
    }
    let elsewhere = http
        .get(format!("http://{metrics_addr}/v1/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        404,
        "the metrics port serves nothing else"
    );
}

#[tokio::test]
async fn readyz_turns_503_as_soon_as_sigterm_arrives_while_connections_drain() {
    let gw = GatewayProcess::start(
        &["--store", "memory", "--shutdown-delay", "3s"],
        "signal_gateway=info",
    )
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://{}{}", gw.http, path);
    // The address is logged as the listener binds; ready once it serves.
    within("ready", async {
        loop {
            let response = http.get(url("/readyz")).send().await.unwrap();
            if response.status() == 200 {
                return;
            }
            let why: Value = response.json().await.unwrap();
            assert_eq!(why["reason"], "starting", "{why}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let token = gw.register("alice").await;
    let mut alice = Client::connect(&gw, Kind::WebSocket, &token).await;
    assert_eq!(alice.recv().await["type"], "WELCOME");
    let signalled = std::time::Instant::now();
    gw.terminate();
    let answer = within("readyz 503", async {
        loop {
            let response = http.get(url("/readyz")).send().await.unwrap();
            if response.status() == 503 {
                return response.json::<Value>().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "not ready within {:?}",
        signalled.elapsed()
    );
    assert_eq!(answer["ready"], false);
    assert_eq!(answer["reason"], "shutting_down");
    assert!(answer["message"].as_str().unwrap().contains("draining"));

    // Still alive and still relaying: the load balancer drains the node
    // before anyone is closed.
    let healthy = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    alice.send("alice", "still-here", Value::Null).await;
    assert_eq!(alice.recv().await["type"], "still-here");

    // Then the drain closes alice with SHUTDOWN, and the process exits.
    let closed = alice.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (1001, "SHUTDOWN"));
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "after the delay"
    );
    let mut child = gw.child;
    let status = within("exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_json_log_has_a_line_per_close_and_never_a_token_or_payload() {
    let gw = GatewayProcess::start(&["--store", "memory", "--log-format", "json"], "trace").await;
    let alice_token = gw.register("alice").await;
    let bob_token = gw.register("bob").await;
    let mut alice = Client::connect(&gw, Kind::WebSocket, &alice_token).await;
    let mut bob = Client::connect(&gw, Kind::WebTransport, &bob_token).await;
    assert_eq!(alice.recv().await["type"], "WELCOME");
    assert_eq!(bob.recv().await["type"], "WELCOME");
    let secret = "payload-that-must-never-be-logged-4f1c";
    for _ in 0..3 {
        alice.send("bob", "offer", json!({ "sdp": secret })).await;
        assert_eq!(bob.recv().await["payload"]["sdp"], secret);
    }
    bob.send("alice", "answer", json!(secret)).await;
    assert_eq!(alice.recv().await["payload"], secret);
    alice.close().await;
    bob.close().await;

    let closes = within_or_log(&gw, "two close lines", async {
        loop {
            let closes: Vec<Value> = gw
                .log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|event| {
                    event["message"] == "connection closed"
                        && event["target"] == "signal_gateway::connection"
                })
                .collect();
            if closes.len() == 2 {
                return closes;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let by_user = |user: &str| {
        closes
            .iter()
            .find(|event| event["user"] == user)
            .unwrap_or_else(|| panic!("a close line for {user}: {closes:?}"))
            .clone()
    };
    let alice_line = by_user("alice");
    assert_eq!(alice_line["transport"], "websocket");
    assert_eq!(alice_line["reason"], "CLIENT");
    assert_eq!(alice_line["code"], 1000);
    assert_eq!(alice_line["level"], "INFO");
    assert_eq!(alice_line["received"], 3, "three offers");
    assert_eq!(alice_line["sent"], 2, "WELCOME and the answer");
    let bob_line = by_user("bob");
    assert_eq!(bob_line["transport"], "webtransport");
    assert_eq!(bob_line["received"], 1);
    assert_eq!(bob_line["sent"], 4);
    for line in [&alice_line, &bob_line] {
        assert!(line["conn"].as_u64().unwrap() > 0, "{line}");
        assert!(line["duration_ms"].is_u64(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
    assert_ne!(alice_line["conn"], bob_line["conn"]);
    let opened = gw
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| {
            line.contains("\"connection opened\"") && line.contains("signal_gateway::connection")
        })
        .count();
    assert_eq!(opened, 2, "one open line per connection");

    let log = gw.log.lock().unwrap().clone();
    assert!(log.len() > 50, "trace logs plenty ({} lines)", log.len());
    let mut leaks = BTreeMap::new();
    for line in &log {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("every line is JSON ({err}): {line}"));
        for never in [alice_token.as_str(), bob_token.as_str(), secret] {
            if line.contains(never) {
                leaks.insert(event["target"].to_string(), line.clone());
            }
        }
    }
    assert!(leaks.is_empty(), "tokens or payloads logged by {leaks:#?}");
}
