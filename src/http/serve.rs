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
/// Back-off after `accept` fails for another reason than running out of
/// file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a shed connection may take to read its answer and close.
const SHED_LINGER: Duration = Duration::from_millis(200);
/// Descriptor exhaustion is logged at most this often.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// What a client shed for want of file descriptors reads (plain HTTP only).
const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 76\r\n\r\n{\"status\":\"UNAVAILABLE\",\"message\":\"the gateway is out of file descriptors\"}\n";

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
    let mut shedder = Shedder::new(tls.is_none());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_out_of_descriptors(&err) => {
                    shedder.shed(&listener).await;
                    continue;
                }
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

fn is_out_of_descriptors(err: &std::io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's).
    matches!(err.raw_os_error(), Some(24 | 23))
}

/// Keeps the gateway answering when it runs out of file descriptors. A
/// descriptor is held in reserve; when `accept` fails for want of one, the
/// reserve is let go so the waiting connection can be accepted, told `503`
/// (over plain HTTP) and closed, and the reserve taken again. Without this
/// the connection would stay queued and `accept` fail in a loop, while
/// clients, health checks among them, time out with no answer.
struct Shedder {
    reserve: Option<std::fs::File>,
    plain_http: bool,
    last_logged: Option<tokio::time::Instant>,
}

impl Shedder {
    fn new(plain_http: bool) -> Self {
        Self {
            reserve: std::fs::File::open("/dev/null").ok(),
            plain_http,
            last_logged: None,
        }
    }

    async fn shed(&mut self, listener: &TcpListener) {
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= SHED_LOG_INTERVAL)
        {
            self.last_logged = Some(now);
            tracing::warn!(
                "out of file descriptors: answering new connections 503 and closing them"
            );
        }
        self.reserve = None;
        // The connection waiting in the queue is ready, so this does not wait.
        if let Ok(Ok((stream, _))) = tokio::time::timeout(ACCEPT_BACKOFF, listener.accept()).await {
            if self.plain_http {
                answer_shed(stream).await;
            }
        } else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
        self.reserve = std::fs::File::open("/dev/null").ok();
    }
}

/// Tells a shed client why, then closes the way that keeps the answer
/// from being lost: a socket closed with unread data resets the connection,
/// and the client's request may still be on its way. So the answer goes
/// out, our side is ended, and what the client sends is read until it
/// closes too, for at most [`SHED_LINGER`].
async fn answer_shed(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(SHED_LINGER, async {
        stream.write_all(SHED_RESPONSE).await?;
        stream.shutdown().await?;
        let mut request = [0u8; 1024];
        while stream.read(&mut request).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shed_response_is_well_formed() {
        let text = std::str::from_utf8(SHED_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["status"], "UNAVAILABLE");
    }
}
