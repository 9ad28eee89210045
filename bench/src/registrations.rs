//! Registrations per second: `concurrency` workers, each on its own
//! keep-alive HTTP connection, repeat `POST /v1/register` with new names
//! until `count` are registered or `duration_s` is over, and nothing else
//! (the time bound keeps a slow store's run short, the count a fast one's
//! window long enough for CPU accounting in clock ticks). Figures: registrations
//! per second, the latency of each request, and server CPU per
//! registration. Run against each identity store, it shows what a
//! registration that waits for its disk commit costs.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use serde_json::json;

use crate::client::Target;
use crate::http::HttpClient;
use crate::identity;
use crate::procfs::CpuMeter;
use crate::summary::{nanos, summarize};
use crate::{Common, run_workers};

/// Parameters of the registration scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterParams {
    /// Most registrations measured.
    pub count: usize,
    /// Seconds measured at most.
    pub duration_s: f64,
    /// Registrations in progress at once.
    pub concurrency: usize,
    /// Registrations made before the measured ones.
    pub warmup: usize,
}

/// Runs the registration scenario and returns its JSON result.
pub async fn run(
    common: &Common,
    target: &Target,
    meter: &CpuMeter,
    params: RegisterParams,
) -> anyhow::Result<serde_json::Value> {
    if !target.system.is_gateway() {
        bail!("only the gateway has POST /v1/register");
    }
    let register = async |http: &mut HttpClient, i: usize| {
        let name = format!("{}r{i}", common.name_prefix);
        let started = Instant::now();
        identity::register(http, &name).await?;
        anyhow::Ok(nanos(started.elapsed()))
    };
    let warm = params.warmup;
    run_workers(target, 0..warm, None, params.concurrency, &register).await?;
    let cpu0 = meter.sample()?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(params.duration_s);
    let latencies = run_workers(
        target,
        warm..warm + params.count,
        Some(until),
        params.concurrency,
        &register,
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = meter.sample()?;
    let cpu = meter.window(&cpu0, &cpu1);
    let done = latencies.len();
    Ok(json!({
        "params": params,
        "registrations": done,
        "wall_s": wall,
        "registrations_per_s": done as f64 / wall,
        "latency": summarize(&latencies),
        "server_cpu_us_per_registration": cpu.server_cpu_s * 1e6 / done.max(1) as f64,
        "cpu": cpu,
    }))
}
