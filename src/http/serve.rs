//! The TCP accept loop: HTTP/1.1 (with upgrades to WebSocket) over plain TCP
//! or TLS, with limits on header size and on how long a client may take to
//! send its request head (slowloris).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::read_ahead::ReadAhead;

/// hyper refuses read buffers smaller than this.
const HYPER_MIN_BUFFER: usize = 8 * 1024;
/// Back-off after `accept` fails (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits of the TCP side.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Largest request head; hyper's floor is 8 KiB.
    pub max_header_bytes: usize,
    /// Time allowed for the TLS handshake and for each request head.
    pub handshake_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` is cancelled. In-flight HTTP
/// requests finish; upgraded WebSocket connections are closed by the core.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: TcpLimits,
    stop: CancellationToken,
) {
    let tls = tls.map(TlsAcceptor::from);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Signalling frames are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(ReadAhead::new(stream), peer, router, limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, router, limits, stop).await
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    limits: TcpLimits,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUFFER))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "HTTP connection ended with an error");
    }
}
