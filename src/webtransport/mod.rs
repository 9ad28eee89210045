//! The WebTransport transport: HTTP/3 over QUIC (quinn + h3 +
//! h3-webtransport) on UDP.
//!
//! Each QUIC connection carries at most one WebTransport session, opened by
//! an extended CONNECT to `/v1/connect`. Path, `Origin` and token are checked
//! before the session is accepted, so a refused client gets a plain HTTP/3
//! status (404, 403, 401). Other HTTP/3 requests are answered by the same
//! axum application as HTTP/1.1, which keeps the `Alt-Svc` advertisement
//! honest.

mod metered;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes, BytesMut};
use h3::server::RequestStream;
use http::header::{HOST, ORIGIN};
use http::{HeaderValue, Method, Request, Response};
use tower::ServiceExt;
use tracing::Instrument;

use crate::auth::{self, OriginPolicy};
use crate::core::wire::{HttpError, PreSessionClose};
use crate::core::{
    Admission, Authenticated, Claimed, CloseReason, Hub, PendingAdmission, Transport,
};
use crate::tls::{Identity, TlsError};
use metered::{Meter, MeteredBidi, MeteredConnection};

/// The path of the WebTransport endpoint (same as the WebSocket one).
pub const CONNECT_PATH: &str = "/v1/connect";
/// Largest HTTP/3 response body relayed from the axum application.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Client-initiated streams allowed at once: the CONNECT, the session's
/// stream and a couple of plain requests; HTTP/3 needs three unidirectional
/// streams of its own (control, QPACK encoder and decoder). Every stream
/// with unread data can pin up to 32 KiB of receive buffers besides its
/// data (quinn's reassembly bound), so they are few.
const MAX_BIDI_STREAMS: u32 = 4;
const MAX_UNI_STREAMS: u32 = 4;
/// QUIC datagrams are not part of the protocol, but browsers only open
/// WebTransport to a server that accepts them, so they are accepted into
/// this small buffer and never read: quinn drops the oldest past it. Its
/// default (1.25 MB per connection) would let a client pin that much memory
/// per session with datagrams nobody reads.
const DATAGRAM_BUFFER_BYTES: usize = 4096;

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
    let limits = hub.limits();
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok())
        .keep_alive_interval(Some(limits.keep_alive_interval))
        .max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER_BYTES));
    // Until a session is attached, the connection's window is its byte
    // budget: quinn holds no more than that unread, whatever the streams.
    transport
        .stream_receive_window(stream_window(limits).into())
        .receive_window(quinn::VarInt::from_u32(
            u32::try_from(limits.pre_session_bytes).unwrap_or(u32::MAX),
        ))
        .send_window(u64::try_from(limits.queue_bytes.max(256 * 1024)).unwrap_or(u64::MAX));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The receive window of one stream: room for a few envelopes in flight.
fn stream_window(limits: &crate::core::Limits) -> u32 {
    u32::try_from(limits.max_envelope_bytes.saturating_mul(4).max(256 * 1024)).unwrap_or(u32::MAX)
}

/// What an attached session may leave unread across all its streams: its
/// own stream's window, plus the pre-session budget for the HTTP/3 control
/// and QPACK streams, which are not read after the session attaches. Data
/// a client sends on any other stream takes from the same window, so it
/// can pin no more than this.
fn session_window(limits: &crate::core::Limits) -> quinn::VarInt {
    let window = u64::from(stream_window(limits))
        .saturating_add(u64::try_from(limits.pre_session_bytes).unwrap_or(u64::MAX));
    quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX)
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

/// Accepts QUIC connections until `stop` is cancelled. A connection starts
/// out pending (unauthenticated), under caps of its own, and is refused
/// before the handshake when they are reached. While many connections are
/// pending, a client must first prove its address with a Retry round trip,
/// so spoofed or abandoned handshakes cost no state.
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
        if ctx.hub.under_pressure() && !incoming.remote_address_validated() {
            if incoming.may_retry() {
                ctx.hub.stats().quic_retries.inc();
                if let Err(err) = incoming.retry() {
                    err.into_incoming().refuse();
                }
            } else {
                incoming.refuse();
            }
            continue;
        }
        let pending = match ctx.hub.admit_pending(peer.ip()) {
            Ok(pending) => pending,
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
                if let Err(err) = handle_connection(incoming, pending, ctx).await {
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
    #[error("closed: {0}")]
    PreSession(&'static str),
    #[error("closed by the client")]
    Closed,
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

type H3Connection = h3::server::Connection<MeteredConnection, Bytes>;
type Resolver = h3::server::RequestResolver<MeteredConnection, Bytes>;
type H3Stream = RequestStream<MeteredBidi, Bytes>;
type Session3 = h3_webtransport::server::WebTransportSession<MeteredConnection, Bytes>;

/// A session whose CONNECT was authorized, ready for its stream.
pub(super) struct Authorized {
    /// Boxed: it owns the HTTP/3 connection, which must live as long as the
    /// session, and is large.
    pub(super) session: Box<Session3>,
    pub(super) user: Claimed,
    pub(super) admission: Admission,
    /// The client's `resume=N`.
    pub(super) resume: Option<u64>,
}

/// Runs a connection's whole pre-session phase — QUIC handshake, HTTP/3
/// set-up, plain requests, the CONNECT — under one deadline
/// (`--handshake-timeout` from the first packet) and one byte budget, then
/// hands an authorized session to a task of its own.
async fn handle_connection(
    incoming: quinn::Incoming,
    pending: PendingAdmission,
    ctx: Arc<WebTransportContext>,
) -> Result<(), ConnectionError> {
    let started = std::time::Instant::now();
    let peer = incoming.remote_address();
    let hub = &ctx.hub;
    let deadline = tokio::time::Instant::now() + hub.limits().handshake_timeout;
    let Ok(handshake) = tokio::time::timeout_at(deadline, incoming).await else {
        hub.stats().pre_session_closed(PreSessionClose::Timeout);
        return Err(ConnectionError::PreSession("QUIC handshake timed out"));
    };
    let conn = handshake?;
    let meter = Meter::new(conn.clone(), hub.limits().pre_session_bytes);
    // Closed while the HTTP/3 state is still alive: dropping it first
    // would close the connection without saying why.
    let mut pre = Box::pin(pre_session(&conn, &meter, &ctx, peer));
    let authorized = tokio::select! {
        outcome = &mut pre => match outcome {
            Ok(authorized) => authorized,
            Err(err) => {
                if meter.exceeded() {
                    hub.stats().pre_session_closed(PreSessionClose::ByteLimit);
                }
                return Err(err);
            }
        },
        () = tokio::time::sleep_until(deadline) => {
            close_pre_session(&conn, PreSessionClose::Timeout, hub);
            return Err(ConnectionError::PreSession("no session within the deadline"));
        }
        () = hub.stopping() => {
            session::close_connection(&conn, CloseReason::Shutdown);
            return Err(ConnectionError::ShuttingDown);
        }
    };
    drop(pre);
    drop(pending);
    // The session gets a task of its own, holding only what it needs; this
    // one, with the whole handshake's state, ends.
    tokio::spawn(session::run(
        authorized,
        conn,
        meter,
        peer,
        started,
        hub.clone(),
    ));
    Ok(())
}

fn close_pre_session(conn: &quinn::Connection, why: PreSessionClose, hub: &Hub) {
    hub.stats().pre_session_closed(why);
    conn.close(
        quinn::VarInt::from_u32(why.h3_code()),
        why.reason().as_bytes(),
    );
}

/// HTTP/3 on a new connection until a WebTransport CONNECT is authorized:
/// plain requests are answered by the HTTP application (at most
/// `--pre-session-requests` of them), refused CONNECTs get their status.
async fn pre_session(
    conn: &quinn::Connection,
    meter: &Meter,
    ctx: &Arc<WebTransportContext>,
    peer: SocketAddr,
) -> Result<Authorized, ConnectionError> {
    let hub = &ctx.hub;
    // Setting up sends our SETTINGS: a client that gives no credit to take
    // them is not waited for.
    let mut builder = h3::server::builder();
    builder
        .max_field_section_size(u64::try_from(ctx.max_header_bytes).unwrap_or(u64::MAX))
        .enable_webtransport(true)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_webtransport_sessions(1)
        .send_grease(true);
    let setup = builder.build(MeteredConnection::new(conn.clone(), meter.clone()));
    let mut h3: H3Connection = tokio::time::timeout(hub.limits().write_timeout, setup)
        .await
        .map_err(|_| ConnectionError::PreSession("the client took no SETTINGS"))??;
    let mut requests = 0;
    loop {
        let Some(resolver) = h3.accept().await? else {
            return Err(ConnectionError::Closed);
        };
        requests += 1;
        if requests > hub.limits().pre_session_requests {
            close_pre_session(conn, PreSessionClose::RequestLimit, hub);
            return Err(ConnectionError::PreSession("too many requests"));
        }
        let (request, mut stream) = match resolver.resolve_request().await {
            Ok(resolved) => resolved,
            // A request h3 refused on its own (a head over
            // `--max-header-bytes` gets its 431, a malformed one a stream
            // error) leaves the connection usable.
            Err(err) if !is_connection_error(&err) => {
                tracing::debug!(%err, "HTTP/3 request refused");
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        if !is_webtransport_connect(&request) {
            tokio::spawn(serve_http3(request, stream, ctx.clone(), peer));
            continue;
        }
        let refusal = match authorize(ctx, &request).await {
            Ok(user) => match hub.claim_slot() {
                // Claimed only once a slot is held: a refused connection
                // must not fence the user's live one elsewhere.
                Ok(admission) => match hub.claim(user, Transport::WebTransport).await {
                    Ok(user) => {
                        if let Some(resolver) = peer_settings(&mut h3).await? {
                            // A request that arrived while we waited: answer it too.
                            tokio::spawn(serve_resolver(resolver, ctx.clone(), peer));
                        }
                        let resume = auth::resume_point(request.uri().query());
                        let session = Session3::accept(request, stream, h3).await?;
                        return Ok(Authorized {
                            session: Box::new(session),
                            user,
                            admission,
                            resume,
                        });
                    }
                    Err(err) => (HttpError::Unavailable, err.to_string()),
                },
                Err(refusal) => (refusal.http_error(), refusal.to_string()),
            },
            Err(refusal) => refusal,
        };
        tracing::debug!(
            status = refusal.0.status(),
            message = refusal.1,
            "refused WebTransport session"
        );
        respond(
            &mut stream,
            refusal.0,
            refusal.1,
            hub.limits().write_timeout,
        )
        .await?;
    }
}

fn is_connection_error(err: &h3::error::StreamError) -> bool {
    matches!(err, h3::error::StreamError::ConnectionError(..))
}

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
    let limits = ctx.hub.limits();
    match tokio::time::timeout(limits.handshake_timeout, resolver.resolve_request()).await {
        Ok(Ok((request, mut stream))) if is_webtransport_connect(&request) => {
            let message = "one WebTransport session per connection".to_owned();
            let _ = respond(
                &mut stream,
                HttpError::SessionExists,
                message,
                limits.write_timeout,
            )
            .await;
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
async fn authorize<T>(
    ctx: &WebTransportContext,
    request: &Request<T>,
) -> Result<Authenticated, (HttpError, String)> {
    if request.uri().path() != CONNECT_PATH {
        return Err((
            HttpError::NotFound,
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
            HttpError::Forbidden,
            format!(
                "origin {} is not allowed; see --allow-origin",
                origin.unwrap_or_default()
            ),
        ));
    }
    let token = auth::session_token(request.headers(), request.uri().query()).ok_or((
        HttpError::Unauthorized,
        "no token: connect with ?token= (a registered token or a JWT)".to_owned(),
    ))?;
    ctx.hub
        .authenticate(&token)
        .await
        .map_err(|err| (err.http_error(), err.to_string()))
}

/// Answers a request with an error from the HTTP error table, within
/// `write_timeout`: a client that gives the stream no credit does not hold
/// the task.
async fn respond(
    stream: &mut H3Stream,
    error: HttpError,
    message: String,
    write_timeout: std::time::Duration,
) -> Result<(), ConnectionError> {
    let response = crate::http::error_response(error, &message);
    tokio::time::timeout(write_timeout, send_response(stream, response))
        .await
        .map_err(|_| ConnectionError::PreSession("the client took no response"))?
}

/// Sends an HTTP application response on an HTTP/3 request stream.
async fn send_response(
    stream: &mut H3Stream,
    response: Response<Body>,
) -> Result<(), ConnectionError> {
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, MAX_RESPONSE_BYTES).await.unwrap_or_default();
    stream
        .send_response(Response::from_parts(parts, ()))
        .await?;
    if !body.is_empty() {
        stream.send_data(body).await?;
    }
    Ok(stream.finish().await?)
}

/// Answers a plain HTTP/3 request with the axum application, the whole
/// exchange within `--handshake-timeout`.
async fn serve_http3(
    request: Request<()>,
    mut stream: H3Stream,
    ctx: Arc<WebTransportContext>,
    peer: SocketAddr,
) {
    let limits = ctx.hub.limits();
    let result = async {
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            if body.len() + chunk.remaining() > ctx.max_body_bytes {
                let message = format!("invalid body: larger than {} bytes", ctx.max_body_bytes);
                return respond(
                    &mut stream,
                    HttpError::PayloadTooLarge,
                    message,
                    limits.write_timeout,
                )
                .await;
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
        send_response(&mut stream, response).await
    };
    match tokio::time::timeout(limits.handshake_timeout, result).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "HTTP/3 request failed"),
        Err(_) => tracing::debug!("HTTP/3 request timed out"),
    }
}
