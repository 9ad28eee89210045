//! The `signal-gateway` binary: parse the configuration, set up logging,
//! and run the library's [`Gateway`] until Ctrl-C or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use signal_gateway::config::{Cli, Command, LogFormat};
use signal_gateway::server::Gateway;
use signal_gateway::tls;
use tracing_subscriber::EnvFilter;

/// jemalloc keeps the many small, long-lived per-connection allocations
/// apart from the short-lived buffers of handshakes, so memory freed after a
/// burst of concurrent connections is not stranded between them: with
/// glibc's malloc an idle WebSocket connection cost 5.2 KiB of RSS when
/// clients connected 32 at a time, with jemalloc 3.8 KiB (10k connections).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(LogFormat::or_default(
        cli.config.operations.log_format,
        std::io::stderr().is_terminal(),
    ));
    // jemalloc gives freed pages back to the system only when it gets the
    // chance: a background thread lets an idle gateway shrink after a burst.
    if let Err(err) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(%err, "jemalloc background thread unavailable; memory returns to the system later");
    }
    // Every connection is a file descriptor: take all the system allows
    // (the soft limit is often 1,024 while the hard one is far higher).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open file limit"),
    }
    let config = cli.config;
    if let Some(Command::Cert) = cli.command {
        let identity = tls::generate_dev(&config.cert_dir, &config.sans)
            .context("writing the development certificate")?;
        let (cert, key) = tls::dev_paths(&config.cert_dir);
        println!("certificate: {}", cert.display());
        println!("key:         {}", key.display());
        println!("sha-256:     {}", identity.sha256_hex());
        println!("base64:      {}", identity.sha256_base64());
        return Ok(());
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.get());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let gateway = Gateway::bind(config).await?;
        let cert = gateway.cert();
        for addr in gateway.http_addrs() {
            tracing::info!(
                "HTTP + WebSocket on http://{addr} (demo at /, WebSocket at /v1/connect)"
            );
        }
        for addr in gateway.webtransport_addrs() {
            tracing::info!("WebTransport on https://{addr}/v1/connect (UDP)");
        }
        if let Some(addr) = gateway.metrics_addr() {
            tracing::info!("metrics and probes on http://{addr}/metrics, /healthz, /readyz");
        }
        tracing::info!(
            sha256 = %cert.sha256_hex,
            development = cert.development,
            "certificate (pin it with serverCertificateHashes; GET /v1/cert-hash)"
        );
        gateway.run(shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Crates whose trace events print whole frames, envelopes and all: those
/// events are dropped whatever `RUST_LOG` says, so that no log ever holds a
/// payload (an SDP names its host's addresses) or a token.
const FRAME_PRINTERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Logs go to stderr (stdout is for the `cert` subcommand's output): text
/// with colours on a terminal, or one JSON object per event with its fields
/// at the top level and the connection's span beside them.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("signal_gateway=info"));
    let no_frames = tracing_subscriber::filter::filter_fn(|event| {
        *event.level() != tracing::Level::TRACE
            || !FRAME_PRINTERS
                .iter()
                .any(|krate| event.target().split("::").next() == Some(*krate))
    });
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs.with_filter(no_frames))
        .init();
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
