//! What an operator's tooling calls: `GET /metrics` (Prometheus), and the
//! probes `GET /healthz` (alive) and `GET /readyz` (should get traffic);
//! and the flags for them, the logs and the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use serde_json::json;

use crate::config::ConfigError;
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

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, fields at the top level, for log pipelines.
    Json,
}

impl LogFormat {
    /// The format asked for, or text on a terminal and JSON otherwise.
    pub fn or_default(chosen: Option<LogFormat>, terminal: bool) -> LogFormat {
        chosen.unwrap_or(if terminal {
            LogFormat::Text
        } else {
            LogFormat::Json
        })
    }
}

/// What an operator's tooling talks to.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Metrics")]
pub struct OperationArgs {
    /// Also serve /metrics, /healthz and /readyz on this TCP address, without
    /// authentication (a scrape and probe port, kept off the public one). On
    /// the main listener /metrics is always there, guarded like the admin
    /// routes.
    #[arg(long, env = "SIGNAL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format on stderr [default: text on a terminal, json otherwise]
    #[arg(long, env = "SIGNAL_LOG_FORMAT", value_enum, help_heading = "Log")]
    pub log_format: Option<LogFormat>,

    /// Which events are logged: a level (`info`, `debug`) or per-module
    /// directives (`signal_gateway=debug,quinn=warn`), as in `RUST_LOG`
    /// [default: RUST_LOG, else signal_gateway=info]
    #[arg(long, env = "SIGNAL_LOG_LEVEL", help_heading = "Log")]
    pub log_level: Option<String>,

    /// On SIGTERM or Ctrl-C, how long /readyz answers 503 while everything
    /// still works, before clients are told to go: give it the load
    /// balancer's probe interval times its failure threshold, so no new
    /// client is sent here once the drain starts.
    #[arg(long, env = "SIGNAL_SHUTDOWN_DELAY", default_value = "0s", value_parser = crate::config::parse::duration, help_heading = "Shutdown")]
    pub shutdown_delay: Duration,
}

/// What is logged when neither --log-level nor `RUST_LOG` says.
pub const DEFAULT_LOG_FILTER: &str = "signal_gateway=info";

impl OperationArgs {
    /// The log filter: --log-level, else `RUST_LOG` (when it parses), else
    /// [`DEFAULT_LOG_FILTER`].
    pub fn log_filter(&self) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
        let Some(directives) = &self.log_level else {
            return Ok(tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)));
        };
        tracing_subscriber::EnvFilter::try_new(directives).map_err(|err| ConfigError::LogLevel {
            directives: directives.clone(),
            reason: err.to_string(),
        })
    }
}
