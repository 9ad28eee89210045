//! Test support, one harness per file: a real gateway on ephemeral
//! loopback ports (`gateway`), the gateway binary as a separate process
//! (`process`), clients that talk to it as browsers and native apps do —
//! tokio-tungstenite for WebSocket, wtransport (an independent
//! QUIC/HTTP/3/WebTransport stack) for WebTransport (`clients`) — a
//! hostile HTTP/3 client built on raw QUIC streams (`raw_h3`), and a real
//! coturn TURN server (`coturn`).
// Each test file uses its own part of this module.
#![allow(dead_code, unused_macros)]

use std::time::Duration;

use serde_json::Value;

pub mod clients;
pub mod coturn;
pub mod gateway;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod raw_h3;
pub mod redis;

// Not every test file uses every harness.
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use process::*;

/// Every transport a behaviour test runs over, one line each: the module
/// its tests go in and its [`Kind`].
macro_rules! for_each_transport {
    ($apply:ident, $($names:ident),*) => {
        $apply!(websocket, WebSocket, $($names),*);
        $apply!(webtransport, WebTransport, $($names),*);
    };
}

/// The tests of one transport: `async fn name(kind: Kind)` run as
/// `module::name`.
macro_rules! transport_tests {
    ($module:ident, $kind:ident, $($name:ident),*) => {
        mod $module {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::$kind).await })*
        }
    };
}

/// Runs each listed `async fn name(kind: Kind)` over every transport
/// (`websocket::name`, `webtransport::name`, ...): one behaviour test,
/// written once.
macro_rules! every_transport {
    ($($name:ident),* $(,)?) => {
        for_each_transport!(transport_tests, $($name),*);
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
