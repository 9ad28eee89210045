//! The `signal-gateway` binary: load the configuration (flags,
//! environment, file), set up logging, and run the library's [`Gateway`]
//! until Ctrl-C or SIGTERM, reloading on SIGHUP; or run a subcommand.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use signal_gateway::config::file::{self, LoadError, Loaded};
use signal_gateway::config::{Command, check};
use signal_gateway::http::LogFormat;
use signal_gateway::reload::Reloader;
use signal_gateway::server::Gateway;
use signal_gateway::tls;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload::Handle;

/// jemalloc keeps the many small, long-lived per-connection allocations
/// apart from the short-lived buffers of handshakes, so memory freed after a
/// burst of concurrent connections is not stranded between them: with
/// glibc's malloc an idle WebSocket connection cost 5.2 KiB of RSS when
/// clients connected 32 at a time, with jemalloc 3.8 KiB (10k connections).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Swaps the log filter on reload.
type LogLevel = Handle<EnvFilter, tracing_subscriber::Registry>;

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let loaded = match file::load(args.clone()) {
        Ok(loaded) => loaded,
        Err(LoadError::Clap(err)) => err.exit(),
        Err(LoadError::File(problems)) => {
            for problem in problems {
                eprintln!("error: {problem}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    match loaded.command {
        Some(Command::DefaultConfig) => {
            print!("{}", file::default_config());
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::PrintConfig) => {
            print!("{}", loaded.print());
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::CheckConfig) => {
            let problems = check::problems(&loaded);
            for problem in &problems {
                println!("problem: {problem}");
            }
            let source = loaded
                .file
                .as_ref()
                .map_or("flags and environment".to_owned(), |f| {
                    f.display().to_string()
                });
            if problems.is_empty() {
                println!("{source}: configuration ok");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{source}: {} problem(s)", problems.len());
            return Ok(ExitCode::FAILURE);
        }
        Some(Command::Cert) | None => {}
    }
    let filter = match loaded.config.operations.log_filter() {
        Ok(filter) => filter,
        Err(err) => anyhow::bail!(loaded.explain(&err.to_string())),
    };
    let log_level = init_logging(
        LogFormat::or_default(
            loaded.config.operations.log_format,
            std::io::stderr().is_terminal(),
        ),
        filter,
    );
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
    let config = loaded.config.clone();
    if let Some(Command::Cert) = loaded.command {
        let identity = tls::generate_dev(&config.tls.cert_dir, &config.tls.sans)
            .context("writing the development certificate")?;
        let (cert, key) = tls::dev_paths(&config.tls.cert_dir);
        println!("certificate: {}", cert.display());
        println!("key:         {}", key.display());
        println!("sha-256:     {}", identity.sha256_hex());
        println!("base64:      {}", identity.sha256_base64());
        return Ok(ExitCode::SUCCESS);
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
        // Taken before anything is announced: a SIGHUP from then on is a
        // reload, never the default action (exit).
        let hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        // Likewise SIGTERM and SIGINT: once /readyz answers, a stop signal
        // drains the gateway, never kills it by the default action.
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let gateway = match Gateway::bind(config).await {
            Ok(gateway) => gateway,
            Err(err) => anyhow::bail!(loaded.explain(&err.to_string())),
        };
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
        tokio::spawn(reload_on_hangup(
            hangups,
            gateway.reloader(),
            log_level,
            args,
            loaded,
        ));
        gateway
            .run_reporting(|| notify_systemd(&[sd_notify::NotifyState::Ready]), async {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
            })
            .await?;
        tracing::info!("stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Tells systemd (`Type=notify`) how the service is doing; without
/// `NOTIFY_SOCKET` (not started by systemd) this does nothing.
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(%err, "cannot notify systemd");
    }
}

/// On each SIGHUP: loads the configuration again (same flags, environment
/// and file) and applies what can change live. A configuration that fails
/// changes nothing; changes that need a restart are named.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Reloader,
    log_level: LogLevel,
    args: Vec<OsString>,
    started: Loaded,
) {
    let mut applied = started.clone();
    while hangups.recv().await.is_some() {
        notify_systemd(&[sd_notify::NotifyState::Reloading]);
        match reload(&reloader, &log_level, &args).await {
            Ok(loaded) => {
                let (live, _) = applied.changes(&loaded);
                let (_, restart) = started.changes(&loaded);
                tracing::info!(changed = ?live, "configuration reloaded");
                if !restart.is_empty() {
                    tracing::warn!(
                        settings = ?restart,
                        "changed but not applied: these take effect on restart"
                    );
                }
                applied = loaded;
            }
            Err(err) => tracing::error!("reload refused, nothing changed: {err}"),
        }
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }
}

/// One reload; the error says what is wrong, with file lines.
async fn reload(
    reloader: &Reloader,
    log_level: &LogLevel,
    args: &[OsString],
) -> Result<Loaded, String> {
    let loaded = file::load(args.iter().cloned()).map_err(|err| err.to_string())?;
    let filter = loaded
        .config
        .operations
        .log_filter()
        .map_err(|err| loaded.explain(&err.to_string()))?;
    let reloaded = reloader
        .reload(&loaded.config)
        .await
        .map_err(|err| loaded.explain(&err.to_string()))?;
    if let Err(err) = log_level.reload(filter) {
        tracing::warn!(%err, "log level not changed");
    }
    tracing::info!(sha256 = %reloaded.sha256_hex, "certificate served to new connections");
    for what in reloaded.not_live {
        tracing::warn!("{what}: takes effect on restart");
    }
    Ok(loaded)
}

/// Crates whose trace events print whole frames, envelopes and all: those
/// events are dropped whatever `RUST_LOG` says, so that no log ever holds a
/// payload (an SDP names its host's addresses) or a token.
const FRAME_PRINTERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Logs go to stderr (stdout is for the `cert` subcommand's output): text
/// with colours on a terminal, or one JSON object per event with its fields
/// at the top level and the connection's span beside them.
fn init_logging(format: LogFormat, filter: EnvFilter) -> LogLevel {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
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
    handle
}
