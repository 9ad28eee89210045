//! `GET /metrics`: the gateway's books in the Prometheus text format.
//!
//! Built with `prometheus-client` (the Prometheus project's own Rust
//! client): its encoder writes the exposition, and a collector reads the
//! core's counters and histograms at scrape time. The relay path therefore
//! pays nothing for metrics beyond the atomics it already updates for
//! `/v1/stats`, and the two can never disagree: they are the same numbers.
//! Labels are few and bounded (transport, close reason, error type, cause,
//! outcome); never a user, token, address or connection.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::core::Hub;
use crate::core::histogram::HistogramSnapshot;
use crate::core::stats::{AuthMethod, AuthOutcome, RegistrationOutcome, Stats};
use crate::core::wire::{CloseReason, ErrorType, PreSessionClose};
use crate::core::{Refusal, Transport};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The version and commit this binary was built from.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const COMMIT: &str = env!("SIGNAL_GATEWAY_COMMIT");

/// Renders every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics of `hub`, plus the process's own.
    pub fn new(hub: Arc<Hub>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(GatewayCollector { hub }));
        registry.register_collector(Box::new(ProcessCollector));
        Self { registry }
    }

    /// The exposition, in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

#[derive(Debug)]
struct GatewayCollector {
    hub: Arc<Hub>,
}

/// Writes one metric with `help`, of `kind`, whose samples `samples` writes.
fn metric(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: impl FnOnce(MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    samples(encoder.encode_descriptor(name, help, unit.as_ref(), kind)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    metric(encoder, name, help, None, MetricType::Counter, |m| {
        ConstCounter::new(value).encode(m)
    })
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: i64,
) -> std::fmt::Result {
    metric(encoder, name, help, unit, MetricType::Gauge, |m| {
        ConstGauge::new(value).encode(m)
    })
}

/// A counter with one label, one sample per `(label value, count)`.
fn labelled_counter<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    metric(encoder, name, help, None, MetricType::Counter, |mut m| {
        for (value, count) in samples {
            ConstCounter::new(count).encode(m.encode_family(&[(label, value)])?)?;
        }
        Ok(())
    })
}

fn histogram(mut m: MetricEncoder, snapshot: &HistogramSnapshot) -> std::fmt::Result {
    m.encode_histogram::<NoLabelSet>(snapshot.sum, snapshot.count, &snapshot.buckets, None)
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let hub = &self.hub;
        let stats: &Stats = hub.stats();
        let e = &mut encoder;
        metric(
            e,
            "signal_gateway_build_info",
            "The version and commit of this gateway (always 1).",
            None,
            MetricType::Gauge,
            |mut m| {
                ConstGauge::new(1)
                    .encode(m.encode_family(&[("version", VERSION), ("commit", COMMIT)])?)
            },
        )?;
        metric(
            e,
            "signal_gateway_connections",
            "Live realtime connections, by transport.",
            None,
            MetricType::Gauge,
            |mut m| {
                for transport in Transport::ALL {
                    ConstGauge::new(stats.live(transport))
                        .encode(m.encode_family(&[("transport", transport.as_str())])?)?;
                }
                Ok(())
            },
        )?;
        labelled_counter(
            e,
            "signal_gateway_connections_opened",
            "Realtime connections attached to a user, by transport.",
            "transport",
            Transport::ALL
                .iter()
                .map(|t| (t.as_str(), stats.opened(*t))),
        )?;
        metric(
            e,
            "signal_gateway_connections_closed",
            "Realtime connections that ended, by transport and close reason (CLIENT: the client closed or went away).",
            None,
            MetricType::Counter,
            |mut m| {
                for transport in Transport::ALL {
                    for reason in CloseReason::ALL.iter().map(|r| Some(*r)).chain([None]) {
                        let count = stats.closed(transport, reason);
                        let label = reason.map_or("CLIENT", CloseReason::reason);
                        ConstCounter::new(count).encode(m.encode_family(&[
                            ("transport", transport.as_str()),
                            ("reason", label),
                        ])?)?;
                    }
                }
                Ok(())
            },
        )?;
        labelled_counter(
            e,
            "signal_gateway_admissions_refused",
            "Connections refused before any work, by cause.",
            "cause",
            Refusal::CAUSES
                .iter()
                .map(|cause| (*cause, stats.refused(cause))),
        )?;
        gauge(
            e,
            "signal_gateway_pending_connections",
            "QUIC connections still authenticating.",
            None,
            i64::try_from(hub.pending()).unwrap_or(i64::MAX),
        )?;
        labelled_counter(
            e,
            "signal_gateway_pre_session_closes",
            "QUIC connections closed before they authenticated a session, by reason.",
            "reason",
            PreSessionClose::ALL
                .iter()
                .map(|why| (why.reason(), stats.pre_session_closes(*why))),
        )?;
        for (name, help, value) in stats.metric_counters() {
            counter(e, name, help, value)?;
        }
        labelled_counter(
            e,
            "signal_gateway_error_envelopes",
            "Error envelopes sent to senders, by type.",
            "type",
            ErrorType::ALL
                .iter()
                .map(|error| (error.as_str(), stats.errors_sent(*error))),
        )?;
        for (name, help, values) in [
            (
                "signal_gateway_received_bytes",
                "Bytes read from realtime connections, by transport.",
                Transport::ALL.map(|t| stats.bytes_in(t)),
            ),
            (
                "signal_gateway_sent_bytes",
                "Bytes of envelopes written to realtime connections, by transport.",
                Transport::ALL.map(|t| stats.bytes_out(t)),
            ),
        ] {
            labelled_counter(
                e,
                name,
                help,
                "transport",
                Transport::ALL.iter().map(|t| t.as_str()).zip(values),
            )?;
        }
        metric(
            e,
            "signal_gateway_relay_latency",
            "Time from an envelope's acceptance to its write on the target's connection.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            |m| histogram(m, &stats.relay_latency.snapshot()),
        )?;
        metric(
            e,
            "signal_gateway_setup",
            "Time from a connection's first request (WebSocket upgrade) or first packet (QUIC) to its WELCOME being written, by transport.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            |mut m| {
                for transport in Transport::ALL {
                    histogram(
                        m.encode_family(&[("transport", transport.as_str())])?,
                        &stats.setup(transport).snapshot(),
                    )?;
                }
                Ok(())
            },
        )?;
        metric(
            e,
            "signal_gateway_write_batch_envelopes",
            "Envelopes written per flush: the depth of a connection's outbox when its writer took it.",
            None,
            MetricType::Histogram,
            |m| histogram(m, &stats.batch_sizes.snapshot()),
        )?;
        labelled_counter(
            e,
            "signal_gateway_registrations",
            "POST /v1/register, by outcome.",
            "outcome",
            RegistrationOutcome::ALL
                .iter()
                .map(|outcome| (outcome.as_str(), stats.registrations(*outcome))),
        )?;
        metric(
            e,
            "signal_gateway_authentications",
            "Tokens checked (connects, GET /v1/user, refreshes), by method and outcome.",
            None,
            MetricType::Counter,
            |mut m| {
                for method in AuthMethod::ALL {
                    for outcome in AuthOutcome::ALL {
                        ConstCounter::new(stats.authentications(method, outcome)).encode(
                            m.encode_family(&[
                                ("method", method.as_str()),
                                ("outcome", outcome.as_str()),
                            ])?,
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        gauge(
            e,
            "signal_gateway_identities",
            "Registered identities.",
            None,
            i64::try_from(hub.identities()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "signal_gateway_ready",
            "1 when the gateway should get traffic (what /readyz answers 200 for), else 0.",
            None,
            i64::from(hub.readiness().is_ok()),
        )?;
        labelled_counter(
            e,
            "signal_gateway_cluster_settled",
            "Cluster: how envelopes sent to other nodes ended (late: heard of after their deadline).",
            "outcome",
            [
                ("written", stats.remote_written.get()),
                ("failed", stats.remote_failed.get()),
                ("unconfirmed", stats.remote_unconfirmed.get()),
                ("late", stats.remote_late.get()),
            ],
        )?;
        gauge(
            e,
            "signal_gateway_cluster_in_flight",
            "Cluster: envelopes sent to other nodes whose fate is not known yet.",
            None,
            i64::try_from(hub.in_flight()).unwrap_or(i64::MAX),
        )?;
        let Some(primary) = hub.cluster().and_then(|cluster| cluster.primary()) else {
            return Ok(());
        };
        metric(
            e,
            "signal_gateway_cluster_primary",
            "Cluster: the Redis primary this node writes to (1, labelled with its address; empty while none is known).",
            None,
            MetricType::Gauge,
            |mut m| {
                ConstGauge::new(1)
                    .encode(m.encode_family(&[("address", primary.address.as_str())])?)
            },
        )?;
        counter(
            e,
            "signal_gateway_cluster_failovers",
            "Cluster: switches to a new Redis primary seen since the node started.",
            primary.failovers,
        )?;
        metric(
            e,
            "signal_gateway_cluster_not_ready",
            "Cluster: time this node could not carry envelopes to other nodes (not ready).",
            Some(Unit::Seconds),
            MetricType::Counter,
            |m| ConstCounter::new(primary.unavailable.as_secs_f64()).encode(m),
        )
    }
}

/// The standard `process_*` metrics, read from `/proc/self`.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(process) = ProcessFacts::read() else {
            return Ok(());
        };
        let e = &mut encoder;
        metric(
            e,
            "process_cpu_seconds",
            "Total user and system CPU time spent, in seconds.",
            None,
            MetricType::Counter,
            |m| ConstCounter::new(process.cpu_seconds).encode(m),
        )?;
        gauge(
            e,
            "process_resident_memory",
            "Resident memory size.",
            Some(Unit::Bytes),
            process.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory",
            "Virtual memory size.",
            Some(Unit::Bytes),
            process.virtual_bytes,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Open file descriptors.",
            None,
            process.open_fds,
        )?;
        gauge(
            e,
            "process_max_fds",
            "The most file descriptors the process may open.",
            None,
            process.max_fds,
        )?;
        metric(
            e,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(process.start_time_seconds).encode(m),
        )
    }
}

/// What `/proc/self` says about this process.
struct ProcessFacts {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: i64,
    start_time_seconds: f64,
}

impl ProcessFacts {
    /// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on
    /// every Linux architecture this runs on).
    const TICKS: f64 = 100.0;

    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name (which may hold
        // spaces); field 3 of the line is the first of these.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = |key: &str| -> Option<i64> {
            let value = status.lines().find_map(|line| line.strip_prefix(key))?;
            Some(value.split_whitespace().next()?.parse::<i64>().ok()? * 1024)
        };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|line| line.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()?;
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / Self::TICKS,
            resident_bytes: kib("VmRSS:")?,
            virtual_bytes: kib("VmSize:")?,
            start_time_seconds: boot_time + field(22)? / Self::TICKS,
            open_fds: i64::try_from(std::fs::read_dir("/proc/self/fd").ok()?.count()).ok()?,
            max_fds,
        })
    }
}
