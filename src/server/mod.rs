//! Binds the listeners and runs the gateway until shutdown: the one entry
//! point shared by `main` and the tests.

mod listen;

pub use listen::{ListenAddr, ListenArgs};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{OriginPolicy, ProxyPolicy};
use crate::cluster::Node;
use crate::config::{Config, ConfigError};
use crate::core::clock::Clock;
use crate::core::token::TokenVerifier;
use crate::core::{Hub, Identities, Limits};
use crate::http::{self, CertInfo, HttpContext, Operations, TcpLimits, WebSocketSettings};
use crate::jwt::{JwtVerifier, SetupError};
use crate::reload::{LiveIce, LiveVerifier, Reloader};
use crate::store::{self, OpenError};
use crate::tls::{self, TlsError};
use crate::webtransport::{self, EndpointError, WebTransportContext};

/// After the drain deadline, QUIC endpoints get this long to send their
/// close frames.
const ENDPOINT_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Housekeeping (identity expiry, per-IP rate state) runs at least this often.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Settings contradict each other.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A TCP listener could not be bound.
    #[error("cannot listen on TCP {addr}: {source}")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The WebTransport endpoint could not start.
    #[error(transparent)]
    WebTransport(#[from] EndpointError),
    /// The identity store could not open.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// JWT verification could not be set up.
    #[error(transparent)]
    Jwt(#[from] SetupError),
    /// The cluster node could not be set up.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::SetupError),
}

/// The identity store, the JWT verifier and which of them are taken; the
/// verifier also as the handle a reload replaces its keys through.
async fn identities(
    config: &Config,
    limits: &Limits,
    node: Option<&Node>,
    clock: &Clock,
) -> Result<(Identities, Option<Arc<LiveVerifier>>), GatewayError> {
    let settings = &config.identity;
    let keys = settings.jwt.key_source()?;
    let mode = settings.mode(keys.is_some())?;
    let store = store::open(
        settings.store,
        settings.data_dir.clone(),
        limits,
        node.map(Node::redis),
        clock,
    )
    .await?;
    let live = match keys {
        Some(keys) => Some(Arc::new(LiveVerifier::new(
            JwtVerifier::new(keys, settings.jwt.claims())
                .await?
                .with_clock(clock.clone()),
        ))),
        None => None,
    };
    // Every kind of token the gateway takes besides its own, asked in order.
    let verifiers = live
        .iter()
        .map(|live| live.clone() as Arc<dyn TokenVerifier>)
        .collect();
    Ok((
        Identities {
            store,
            verifiers,
            mode,
        },
        live,
    ))
}

/// A gateway with its sockets bound, ready to run.
#[derive(Debug)]
pub struct Gateway {
    hub: Arc<Hub>,
    tcp: Vec<TcpListener>,
    quic: Vec<quinn::Endpoint>,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    wt: Arc<WebTransportContext>,
    cert: CertInfo,
    tcp_limits: TcpLimits,
    /// `--metrics-listen` and what it serves.
    metrics: Option<(TcpListener, axum::Router)>,
    /// The cluster node, with where browsers reach its WebTransport.
    node: Option<(Node, String)>,
    shutdown_delay: Duration,
    shutdown_timeout: Duration,
    reloader: Reloader,
}

impl Gateway {
    /// Loads (or generates) the certificate and binds every socket, so that
    /// when this returns the gateway's addresses are known and reachable.
    pub async fn bind(config: Config) -> Result<Self, GatewayError> {
        config.validate()?;
        // quinn and rustls must agree on one process-wide crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = tls::load(&config.tls)?;
        let limits = config.limits.core();
        let node = match config.cluster.backend()? {
            Some(backend) => Some(Node::new(backend, &config.cluster.node_id())?),
            None => None,
        };
        let clock = Clock::system();
        let (identities, verifier) = identities(&config, &limits, node.as_ref(), &clock).await?;
        let mode = identities.mode;
        let ice = Arc::new(LiveIce::new(config.ice.provider()?));
        let hub = Hub::with_clock(limits, identities, ice.clone(), clock);
        if let Some(node) = &node {
            hub.join(node.cluster());
        }
        let tcp = bind_tcp(config.listeners.listen).await?;
        let http_port = tcp
            .first()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port());
        let wt_listen = config
            .listeners
            .wt_listen
            .unwrap_or(config.listeners.listen.with_port(http_port));
        let quic = bind_quic(wt_listen, webtransport::server_config(&identity, &hub)?).await?;
        let webtransport_port = quic
            .first()
            .and_then(|e| e.local_addr().ok())
            .map_or(0, |a| a.port());

        let cert = CertInfo {
            sha256_base64: identity.sha256_base64(),
            sha256_hex: identity.sha256_hex(),
            development: identity.development,
            webtransport_port,
            webtransport_host: config.cluster.advertise_host.clone(),
        };
        let advertised = match (&config.cluster.advertise_host, quic.first()) {
            (Some(host), _) => format!("{host}:{webtransport_port}"),
            (None, Some(endpoint)) => endpoint
                .local_addr()
                .map_or_else(|_| String::new(), |addr| addr.to_string()),
            (None, None) => String::new(),
        };
        let origins = OriginPolicy::new(&config.http.allow_origins);
        let operations = Operations::new(hub.clone());
        let metrics = match config.operations.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| GatewayError::BindTcp { addr, source })?;
                Some((listener, http::operations_router(operations.clone())))
            }
            None => None,
        };
        let context = Arc::new(HttpContext {
            hub: hub.clone(),
            origins: origins.clone(),
            admin_token: ArcSwapOption::from_pointee(config.http.admin_token.clone()),
            proxies: ProxyPolicy::new(&config.http.trusted_proxies, config.http.forwarded_header),
            public_hosts: config.http.public_hosts.clone(),
            secure: config.listeners.tls,
            cert: ArcSwap::from_pointee(cert.clone()),
            max_body_bytes: config.limits.max_body_bytes,
            body_timeout: config.limits.handshake_timeout,
            websocket: WebSocketSettings::default(),
            unknown_user_status: config.http.unknown_user_status,
            operations,
        });
        let router = http::router(context.clone());
        let reloader = Reloader::new(
            identity.live(),
            context,
            origins.clone(),
            ice,
            verifier,
            mode,
        );
        let tls = if config.listeners.tls {
            Some(Arc::new(identity.server_config(&[b"http/1.1"])?))
        } else {
            None
        };
        let wt = Arc::new(WebTransportContext {
            hub: hub.clone(),
            origins,
            router: router.clone(),
            max_header_bytes: config.limits.max_header_bytes,
            max_body_bytes: config.limits.max_body_bytes,
        });
        Ok(Self {
            hub,
            tcp,
            quic,
            router,
            tls,
            wt,
            cert,
            tcp_limits: TcpLimits {
                max_header_bytes: config.limits.max_header_bytes,
                handshake_timeout: config.limits.handshake_timeout,
            },
            metrics,
            node: node.map(|node| (node, advertised)),
            shutdown_delay: config.operations.shutdown_delay,
            shutdown_timeout: config.limits.shutdown_timeout,
            reloader,
        })
    }

    /// Applies a new configuration's live settings while this gateway runs
    /// (what SIGHUP does).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The bound TCP (HTTP/WebSocket) addresses.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound UDP (WebTransport) addresses.
    pub fn webtransport_addrs(&self) -> Vec<SocketAddr> {
        self.quic
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .collect()
    }

    /// The bound `--metrics-listen` address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The served certificate, as `/v1/cert-hash` reports it.
    pub fn cert(&self) -> &CertInfo {
        &self.cert
    }

    /// The routing core.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Serves until `shutdown` completes, then drains: `/readyz` answers
    /// 503 at once; after `--shutdown-delay` (the load balancer has noticed)
    /// newcomers are refused and every client is closed with `SHUTDOWN`
    /// after its queued envelopes; the listeners keep answering probes until
    /// the clients are gone or the shutdown timeout has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        self.run_reporting(|| {}, shutdown).await
    }

    /// [`Gateway::run`], calling `ready` once it serves (`/readyz` answers
    /// 200): where a service manager is told.
    pub async fn run_reporting(
        self,
        ready: impl FnOnce(),
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), GatewayError> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        for listener in self.tcp {
            tasks.spawn(http::serve_tcp(
                listener,
                self.router.clone(),
                self.tls.clone(),
                self.tcp_limits,
                stop.clone(),
            ));
        }
        if let Some((listener, router)) = self.metrics {
            tasks.spawn(http::serve_tcp(
                listener,
                router,
                None,
                self.tcp_limits,
                stop.clone(),
            ));
        }
        for endpoint in &self.quic {
            tasks.spawn(webtransport::serve(
                endpoint.clone(),
                self.wt.clone(),
                stop.clone(),
            ));
        }
        tasks.spawn(sweep(self.hub.clone(), stop.clone()));
        tasks.spawn(expire_away(self.hub.clone(), stop.clone()));
        if let Some((node, webtransport)) = self.node {
            tasks.spawn(node.run(self.hub.clone(), webtransport, stop.clone()));
        }
        self.hub.serving();
        ready();

        shutdown.await;
        self.hub.draining();
        tracing::info!(delay = ?self.shutdown_delay, "shutting down: not ready");
        tokio::time::sleep(self.shutdown_delay).await;
        for endpoint in &self.quic {
            endpoint.set_server_config(None);
        }
        let closing = self.hub.shutdown();
        let drained = tokio::time::timeout(self.shutdown_timeout, self.hub.wait_idle())
            .await
            .is_ok();
        tracing::info!(closing, drained, "clients closed");
        stop.cancel();
        for endpoint in &self.quic {
            endpoint.close(
                u32::from(crate::core::CloseReason::Shutdown.code()).into(),
                crate::core::CloseReason::Shutdown.reason().as_bytes(),
            );
        }
        let _ = tokio::time::timeout(ENDPOINT_CLOSE_GRACE, async {
            for endpoint in &self.quic {
                endpoint.wait_idle().await;
            }
        })
        .await;
        tasks.close();
        let _ = tokio::time::timeout(ENDPOINT_CLOSE_GRACE, tasks.wait()).await;
        if let Err(err) = self.hub.flush().await {
            tracing::warn!(%err, "last-seen times not written at shutdown");
        }
        Ok(())
    }
}

/// Where to listen instead of `addr` when binding it failed: the IPv4
/// wildcard for the IPv6 one, when the host has no IPv6 (not when the port
/// is taken). The default listens dual-stack; a host with IPv6 disabled
/// still gets a working gateway on IPv4.
fn ipv4_instead(addr: SocketAddr, err: &std::io::Error) -> Option<SocketAddr> {
    use std::io::ErrorKind::{AddrInUse, PermissionDenied};
    let port_refused = matches!(err.kind(), AddrInUse | PermissionDenied);
    (addr.is_ipv6() && addr.ip().is_unspecified() && !port_refused)
        .then(|| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port()))
}

/// Binds every address of `listen` with `bind`; port 0 is chosen by the
/// first bind and reused for the others, so `localhost:0` gets one port on
/// both loopbacks. Only the first address must bind: a host without IPv6
/// still serves `localhost` over IPv4. Fails with the address that did not
/// bind.
async fn bind_all<T, F>(
    listen: ListenAddr,
    what: &'static str,
    mut bind: impl FnMut(SocketAddr) -> F,
    local_addr: impl Fn(&T) -> std::io::Result<SocketAddr>,
) -> Result<Vec<T>, (SocketAddr, std::io::Error)>
where
    F: Future<Output = std::io::Result<T>>,
{
    let mut bound_all: Vec<T> = Vec::new();
    for addr in listen.addrs() {
        let addr = match bound_all.first().and_then(|first| local_addr(first).ok()) {
            Some(first) if addr.port() == 0 => SocketAddr::new(addr.ip(), first.port()),
            _ => addr,
        };
        let bound = match bind(addr).await {
            Err(err) => match ipv4_instead(addr, &err) {
                Some(v4) => {
                    tracing::warn!(%addr, %err, "IPv6 unavailable; {what} on {v4} only");
                    bind(v4).await
                }
                None => Err(err),
            },
            bound => bound,
        };
        match bound {
            Ok(bound) => bound_all.push(bound),
            Err(err) if !bound_all.is_empty() => {
                tracing::warn!(%addr, %err, "not listening on this address")
            }
            Err(err) => return Err((addr, err)),
        }
    }
    Ok(bound_all)
}

/// The TCP listeners (HTTP and WebSocket) of `listen`.
async fn bind_tcp(listen: ListenAddr) -> Result<Vec<TcpListener>, GatewayError> {
    bind_all(
        listen,
        "listening",
        TcpListener::bind,
        TcpListener::local_addr,
    )
    .await
    .map_err(|(addr, source)| GatewayError::BindTcp { addr, source })
}

/// The QUIC endpoints (WebTransport) of `listen`.
async fn bind_quic(
    listen: ListenAddr,
    config: quinn::ServerConfig,
) -> Result<Vec<quinn::Endpoint>, GatewayError> {
    let bind = |addr| std::future::ready(webtransport::bind(addr, config.clone()));
    bind_all(listen, "WebTransport", bind, quinn::Endpoint::local_addr)
        .await
        .map_err(|(addr, source)| EndpointError::Bind { addr, source }.into())
}

async fn sweep(hub: Arc<Hub>, stop: CancellationToken) {
    let period = (hub.limits().identity_ttl / 10).clamp(Duration::from_millis(100), SWEEP_INTERVAL);
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match hub.sweep().await {
                    Ok(0) => {}
                    Ok(expired) => tracing::info!(expired, "expired unseen identities"),
                    Err(err) => tracing::warn!(%err, "identity housekeeping failed; will retry"),
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Ends the streams of users away for longer than `--resume-window`, a
/// tenth of the window after it (at least every second).
async fn expire_away(hub: Arc<Hub>, stop: CancellationToken) {
    let period =
        (hub.limits().resume_window / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                hub.expire_away(hub.clock().now());
            }
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    #[test]
    fn only_the_ipv6_wildcard_without_ipv6_falls_back_to_ipv4() {
        let wildcard: SocketAddr = "[::]:8000".parse().unwrap();
        let no_ipv6 = Error::from_raw_os_error(97); // EAFNOSUPPORT
        assert_eq!(
            ipv4_instead(wildcard, &no_ipv6),
            Some("0.0.0.0:8000".parse().unwrap())
        );
        let taken = Error::from(ErrorKind::AddrInUse);
        assert_eq!(ipv4_instead(wildcard, &taken), None, "port taken");
        let loopback: SocketAddr = "[::1]:8000".parse().unwrap();
        assert_eq!(ipv4_instead(loopback, &no_ipv6), None, "not the wildcard");
    }
}
