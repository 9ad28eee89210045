//! The WebTransport transport: HTTP/3 over QUIC (quinn + h3 +
//! h3-webtransport) on UDP.
//!
//! Each QUIC connection carries at most one WebTransport session, opened by
//! an extended CONNECT to `/v1/connect`. Path, `Origin` and token are checked
//! before the session is accepted, so a refused client gets a plain HTTP/3
//! status (404, 403, 401). Other HTTP/3 requests are answered by the same
//! axum application as HTTP/1.1, which keeps the `Alt-Svc` advertisement
//! honest.

pub mod framing;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes, BytesMut};
use h3::server::RequestStream;
use http::header::{CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower::ServiceExt;
use tracing::Instrument;

use crate::auth::{self, OriginPolicy};
use crate::core::{Admission, CloseReason, Hub};
use crate::tls::{Identity, TlsError};

/// The path of the WebTransport endpoint (same as the WebSocket one).
pub const CONNECT_PATH: &str = "/v1/connect";
/// Largest HTTP/3 response body relayed from the axum application.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Client-initiated streams allowed at once: the CONNECT, the session's
/// stream and a few plain requests; HTTP/3 needs three unidirectional
/// streams of its own (control, QPACK encoder and decoder).
const MAX_BIDI_STREAMS: u32 = 16;
const MAX_UNI_STREAMS: u32 = 8;
/// QUIC datagrams are not part of the protocol, but browsers only open
/// WebTransport to a server that accepts them, so they are accepted into
/// this small buffer and never read: quinn drops the oldest past it. Its
/// default (1.25 MB per connection) would let a client pin that much memory
/// per session with datagrams nobody reads.
const DATAGRAM_BUFFER_BYTES: usize = 4096;

type H3Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// What every WebTransport connection shares.
#[derive(Debug)]
pub struct WebTransportContext {
    /// The routing core.
    pub hub: Arc<Hub>,
    /// Which browser origins may connect.
    pub origins: OriginPolicy,
    /// The HTTP application, for plain HTTP/3 requests.
    pub router: Router,
    /// Largest request head (`max_field_section_size`).
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
}

/// Why the WebTransport endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The certificate was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// rustls' configuration cannot do QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The QUIC server configuration: HTTP/3 ALPN, and idle timeout plus
/// keep-alive chosen so a vanished browser leaves within the idle timeout.
/// (h3-webtransport does not notice a browser's session close; the idle
/// timeout is what bounds that case.)
pub fn server_config(identity: &Identity, hub: &Hub) -> Result<quinn::ServerConfig, EndpointError> {
    let tls = identity.server_config(&[b"h3"])?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let limits = &hub.limits;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok())
        .keep_alive_interval(Some(limits.keep_alive_interval))
        .max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER_BYTES));
    let window = u32::try_from(limits.max_envelope_bytes.saturating_mul(4).max(256 * 1024))
        .unwrap_or(u32::MAX);
    transport
        .stream_receive_window(window.into())
        .receive_window((window.saturating_mul(2)).into())
        .send_window(u64::try_from(limits.queue_bytes.max(256 * 1024)).unwrap_or(u64::MAX));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Kernel buffer asked for on the UDP socket. One socket carries every
/// session; at the default (~208 KiB) a burst from many clients overflows it
/// and the kernel drops datagrams, which QUIC then has to retransmit. Linux
/// caps it at `net.core.rmem_max` / `wmem_max`.
const UDP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Binds a QUIC endpoint on a UDP socket with large kernel buffers (the
/// caller names the address in [`EndpointError::Bind`]).
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        udp_socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]` serves IPv4 too, as the TCP listener does.
        socket.set_only_v6(false)?;
    }
    for (name, set, get) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
        ),
        (
            "send",
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
        ),
    ] {
        // Linux reports twice what it grants (bookkeeping included).
        let granted = set(&socket, UDP_SOCKET_BUFFER)
            .and_then(|()| get(&socket))
            .unwrap_or(0)
            / 2;
        if granted < UDP_SOCKET_BUFFER {
            tracing::warn!(
                %addr,
                granted,
                wanted = UDP_SOCKET_BUFFER,
                "UDP {name} buffer is smaller than asked for; raise net.core.rmem_max and net.core.wmem_max"
            );
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Accepts QUIC connections until `stop` is cancelled. Connections over the
/// cap or the per-IP rate are refused before the handshake.
pub async fn serve(
    endpoint: quinn::Endpoint,
    ctx: Arc<WebTransportContext>,
    stop: tokio_util::sync::CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            () = stop.cancelled() => break,
        };
        let peer = incoming.remote_address();
        let admission = match ctx.hub.admit(peer.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                tracing::debug!(%peer, %refusal, "refused QUIC connection");
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        let span = tracing::debug_span!("quic", %peer);
        connections.spawn(
            async move {
                if let Err(err) = handle_connection(incoming, admission, ctx).await {
                    tracing::debug!(%err, "QUIC connection ended");
                }
            }
            .instrument(span),
        );
    }
    connections.close();
    connections.wait().await;
}

/// Why a QUIC connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("QUIC handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("HTTP/3: {0}")]
    H3(#[from] h3::error::ConnectionError),
    #[error("HTTP/3 stream: {0}")]
    Stream(#[from] h3::error::StreamError),
    #[error("timed out")]
    Timeout,
    #[error("closed by the client")]
    Closed,
}

async fn handle_connection(
    incoming: quinn::Incoming,
    admission: Admission,
    ctx: Arc<WebTransportContext>,
) -> Result<(), ConnectionError> {
    let peer = incoming.remote_address();
    let handshake_timeout = ctx.hub.limits.handshake_timeout;
    let conn = tokio::time::timeout(handshake_timeout, incoming)
        .await
        .map_err(|_| ConnectionError::Timeout)??;
    let mut h3 = h3::server::builder()
        .max_field_section_size(u64::try_from(ctx.max_header_bytes).unwrap_or(u64::MAX))
        .enable_webtransport(true)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_webtransport_sessions(1)
        .send_grease(true)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await?;
    let stream_timeout = ctx.hub.limits.stream_open_timeout;
    loop {
        // A connection that asks for nothing holds a slot for nothing.
        let accepted = tokio::select! {
            accepted = tokio::time::timeout(stream_timeout, h3.accept()) => accepted,
            () = ctx.hub.stopping() => {
                session::close_connection(&conn, CloseReason::Shutdown, &ctx.hub);
                return Ok(());
            }
        };
        let resolver = match accepted {
            Ok(Ok(Some(resolver))) => resolver,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                session::close_connection(&conn, CloseReason::StreamTimeout, &ctx.hub);
                return Ok(());
            }
        };
        let (request, mut stream) =
            tokio::time::timeout(handshake_timeout, resolver.resolve_request())
                .await
                .map_err(|_| ConnectionError::Timeout)??;
        if !is_webtransport_connect(&request) {
            tokio::spawn(serve_http3(request, stream, ctx.clone(), peer));
            continue;
        }
        match authorize(&ctx, &request) {
            Err((status, message)) => {
                tracing::debug!(%status, message, "refused WebTransport session");
                respond(&mut stream, status, message).await?;
            }
            Ok(user) => {
                let waited = tokio::time::timeout(handshake_timeout, peer_settings(&mut h3))
                    .await
                    .map_err(|_| ConnectionError::Timeout)??;
                if let Some(resolver) = waited {
                    // A request that arrived while we waited: answer it too.
                    tokio::spawn(serve_resolver(resolver, ctx.clone(), peer));
                }
                let session =
                    h3_webtransport::server::WebTransportSession::accept(request, stream, h3)
                        .await?;
                // The session gets a task of its own, holding only what it
                // needs; this one, with the whole handshake's state, ends.
                tokio::spawn(session::run(
                    Box::new(session),
                    conn,
                    user,
                    admission,
                    peer,
                    ctx.hub.clone(),
                ));
                return Ok(());
            }
        }
    }
}

type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;
type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// Waits until the client's HTTP/3 SETTINGS have arrived.
///
/// h3-webtransport checks the client's SETTINGS (WebTransport and datagram
/// support) the moment a session is accepted, and closes the connection if
/// they are not there yet. A CONNECT can overtake the SETTINGS frame: they
/// travel on different QUIC streams. Polling the connection processes its
/// control stream; a request accepted meanwhile is handed back.
async fn peer_settings(h3: &mut H3Connection) -> Result<Option<Resolver>, ConnectionError> {
    use h3::ConnectionState as _;
    use std::borrow::Cow;
    use std::task::Poll;
    let stream = std::future::poll_fn(|cx| {
        if matches!(h3.settings(), Cow::Borrowed(_)) {
            return Poll::Ready(Ok(None));
        }
        match h3.poll_accept_request_stream(cx) {
            Poll::Ready(Ok(Some(stream))) => Poll::Ready(Ok(Some(stream))),
            Poll::Ready(Ok(None)) => Poll::Ready(Err(ConnectionError::Closed)),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err.into())),
            Poll::Pending if matches!(h3.settings(), Cow::Borrowed(_)) => Poll::Ready(Ok(None)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await?;
    Ok(stream.map(|stream| {
        h3.create_resolver(h3::frame::FrameStream::new(h3::stream::BufRecvStream::new(
            stream,
        )))
    }))
}

/// Resolves a request that arrived beside a session's CONNECT.
async fn serve_resolver(resolver: Resolver, ctx: Arc<WebTransportContext>, peer: SocketAddr) {
    let handshake_timeout = ctx.hub.limits.handshake_timeout;
    match tokio::time::timeout(handshake_timeout, resolver.resolve_request()).await {
        Ok(Ok((request, mut stream))) if is_webtransport_connect(&request) => {
            let message = "one WebTransport session per connection".to_owned();
            let _ = respond(&mut stream, StatusCode::TOO_MANY_REQUESTS, message).await;
        }
        Ok(Ok((request, stream))) => serve_http3(request, stream, ctx, peer).await,
        Ok(Err(err)) => tracing::debug!(%err, "HTTP/3 request failed"),
        Err(_) => tracing::debug!("HTTP/3 request head timed out"),
    }
}

fn is_webtransport_connect<T>(request: &Request<T>) -> bool {
    request.method() == Method::CONNECT
        && request.extensions().get::<h3::ext::Protocol>()
            == Some(&h3::ext::Protocol::WEB_TRANSPORT)
}

/// The checks made before a session is accepted: path, origin, token.
fn authorize<T>(
    ctx: &WebTransportContext,
    request: &Request<T>,
) -> Result<Arc<str>, (StatusCode, String)> {
    if request.uri().path() != CONNECT_PATH {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no WebTransport endpoint at {}", request.uri().path()),
        ));
    }
    let origin = request
        .headers()
        .get(ORIGIN)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let authority = request.uri().authority().map(|a| a.as_str());
    if !ctx.origins.judge(origin, authority, true).permits() {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "origin {} is not allowed; see --allow-origin",
                origin.unwrap_or_default()
            ),
        ));
    }
    auth::session_token(request.headers(), request.uri().query())
        .and_then(|token| ctx.hub.store.authenticate(&token))
        .ok_or_else(|| {
            (
                StatusCode::UNAUTHORIZED,
                "no valid token: register first and connect with ?token=".to_owned(),
            )
        })
}

async fn respond(
    stream: &mut H3Stream,
    status: StatusCode,
    message: String,
) -> Result<(), h3::error::StreamError> {
    let code = status
        .canonical_reason()
        .unwrap_or("ERROR")
        .to_ascii_uppercase()
        .replace(' ', "_");
    let body = serde_json::json!({ "status": code, "message": message }).to_string();
    let response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(())
        .unwrap_or_default();
    stream.send_response(response).await?;
    stream.send_data(Bytes::from(body)).await?;
    stream.finish().await
}

/// Answers a plain HTTP/3 request with the axum application.
async fn serve_http3(
    request: Request<()>,
    mut stream: H3Stream,
    ctx: Arc<WebTransportContext>,
    peer: SocketAddr,
) {
    let result = async {
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            if body.len() + chunk.remaining() > ctx.max_body_bytes {
                let message = format!("invalid body: larger than {} bytes", ctx.max_body_bytes);
                return respond(&mut stream, StatusCode::PAYLOAD_TOO_LARGE, message).await;
            }
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let (mut parts, ()) = request.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        if let Some(authority) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.entry(HOST).or_insert(authority);
        }
        let request = Request::from_parts(parts, Body::from(body.freeze()));
        let Ok(response) = ctx.router.clone().oneshot(request).await;
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, MAX_RESPONSE_BYTES).await.unwrap_or_default();
        stream
            .send_response(Response::from_parts(parts, ()))
            .await?;
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await
    };
    if let Err(err) = result.await {
        tracing::debug!(%err, "HTTP/3 request failed");
    }
}
