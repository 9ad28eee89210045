//! What an operator's tooling calls: `GET /metrics` (Prometheus), and the
//! probes `GET /healthz` (alive) and `GET /readyz` (should get traffic).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::core::Hub;
use crate::metrics::Metrics;

/// The hub and its metrics, shared by the main listener and the
/// `--metrics-listen` one.
#[derive(Debug, Clone)]
pub struct Operations {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl Operations {
    /// The operations of `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        let metrics = Arc::new(Metrics::new(hub.clone()));
        Self { hub, metrics }
    }
}

/// `/healthz` and `/readyz`, public: a probe carries no credentials, and
/// they say nothing about anyone.
pub(crate) fn probes<S>(ops: Operations) -> Router<S> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ops)
}

/// `/metrics`, for the caller to guard.
pub(crate) fn metrics<S>(ops: Operations) -> Router<S> {
    Router::new()
        .route("/metrics", get(exposition))
        .with_state(ops)
}

/// Everything the `--metrics-listen` address serves, without
/// authentication: it is meant to be reachable only by the scraper.
pub fn router(ops: Operations) -> Router {
    Router::new()
        .merge(metrics(ops.clone()))
        .merge(probes(ops))
        .fallback(super::api::not_found)
        .method_not_allowed_fallback(super::api::method_not_allowed)
}

/// `GET /metrics`: the Prometheus text exposition.
async fn exposition(State(ops): State<Operations>) -> Response {
    (
        [
            (CONTENT_TYPE, crate::metrics::CONTENT_TYPE),
            (CACHE_CONTROL, "no-store"),
        ],
        ops.metrics.render(),
    )
        .into_response()
}

/// `GET /healthz`: the process answers, so it is alive.
async fn healthz() -> Response {
    (
        [(CACHE_CONTROL, "no-store")],
        axum::Json(json!({ "status": "ok" })),
    )
        .into_response()
}

/// `GET /readyz`: 200 when the gateway should get traffic, else 503 with
/// the reason (from the first moment of a shutdown, so a load balancer
/// stops sending clients before the drain closes anyone).
async fn readyz(State(ops): State<Operations>) -> Response {
    let (status, body) = match ops.hub.readiness() {
        Ok(()) => (StatusCode::OK, json!({ "ready": true })),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reason": why.reason(), "message": why.message() }),
        ),
    };
    (status, [(CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}
