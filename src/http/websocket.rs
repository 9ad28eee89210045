//! The WebSocket transport: turns frames into core calls and drains the
//! connection's outbox. One task per connection owns the socket, so there is
//! exactly one writer; it reads every frame the socket has before waiting,
//! and writes a whole batch of queued envelopes with one flush.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::future::OptionFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use super::AppState;
use super::api::ApiError;
use crate::auth;
use crate::connection::{self, Link, Liveness, READ_BATCH, Read};
use crate::core::envelope::close_frame;
use crate::core::outbox::Queued;
use crate::core::wire::HttpError;
use crate::core::{Admission, AuthError, Claimed, CloseReason, Hub, Reading, Session, Transport};

/// tungstenite collects a batch's frames in a buffer of up to this size and
/// writes them with one system call on flush. (At 0 it would write every
/// frame on its own.) The buffer keeps its largest size while the
/// connection lives, so it is kept modest.
const WRITE_BUFFER: usize = 16 * 1024;
/// RFC 6455 §1.3: appended to the client's key to prove the upgrade.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Socket-level settings of the WebSocket transport.
#[derive(Debug, Clone)]
pub struct WebSocketSettings {
    /// tungstenite's read buffer, allocated per connection up front. The
    /// TCP listener serves small reads from one large read (see
    /// `read_ahead`), so a small buffer costs no extra system calls and keeps
    /// idle connections cheap (axum's 128 KiB default costs 136 KB each).
    pub read_buffer_bytes: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            read_buffer_bytes: 512,
        }
    }
}

type Socket = WebSocketStream<Counted<TokioIo<hyper::upgrade::Upgraded>>>;

/// The timeouts a connection's task needs (copied, not the whole `Limits`:
/// the task lives as long as the connection).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    write: Duration,
    idle: Duration,
    keep_alive: Duration,
}

/// `GET /v1/connect`: upgrade to WebSocket and attach to the token's user.
/// Without a valid token the upgrade still happens and the socket is closed
/// with 4000 `UNAUTHENTICATED` (a browser can read a close
/// code, not an HTTP status).
///
/// The handshake is done here rather than with axum's `WebSocketUpgrade`
/// so that the connection's task holds only what it needs: this keeps an
/// idle connection within a few KiB (see the README's performance section).
pub(crate) async fn connect(
    State(ctx): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let started = std::time::Instant::now();
    let headers = request.headers();
    let accept = match accept_key(headers) {
        Ok(accept) => accept,
        Err(response) => return *response,
    };
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return upgrade_required("this connection cannot be upgraded; use HTTP/1.1");
    };
    let headers = request.headers();
    let client = ctx.proxies.client(peer.ip(), headers).ip;
    let admission = match ctx.hub.admit(client) {
        Ok(admission) => admission,
        Err(refusal) => return ApiError::from(refusal).into_response(),
    };
    // Without a valid token the upgrade still happens, and the connection
    // is closed with 4000 (a browser reads a close code, not a status).
    let resume = auth::resume_point(request.uri().query());
    let user = match auth::session_token(headers, request.uri().query()) {
        Some(token) => match ctx.hub.authenticate(&token).await {
            Ok(user) => Some(user),
            Err(AuthError::Store(err)) => return ApiError::from(err).into_response(),
            Err(_) => None,
        },
        None => None,
    };
    // Claimed before the upgrade: in a cluster the claim needs Redis, and
    // a browser reads a 503 better than a close.
    let user = match user {
        Some(user) => match ctx.hub.claim(user, Transport::WebSocket).await {
            Ok(claimed) => Some(claimed),
            Err(err) => return ApiError::from(err).into_response(),
        },
        None => None,
    };
    let limits = ctx.hub.limits();
    let config = WebSocketConfig::default()
        .read_buffer_size(ctx.websocket.read_buffer_bytes)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(
            limits
                .queue_bytes
                .saturating_add(limits.max_envelope_bytes)
                .saturating_mul(2),
        )
        .max_message_size(Some(limits.max_envelope_bytes))
        .max_frame_size(Some(limits.max_envelope_bytes));
    tokio::spawn(run(Box::new(Handover {
        on_upgrade,
        config,
        hub: ctx.hub.clone(),
        admission,
        user,
        client,
        started,
        resume,
    })));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_default()
}

/// What the upgrade handler hands to the connection's task.
struct Handover {
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    hub: std::sync::Arc<Hub>,
    admission: Admission,
    user: Option<Claimed>,
    client: IpAddr,
    started: std::time::Instant,
    /// The client's `resume=N`.
    resume: Option<u64>,
}

/// Once hyper has handed over the connection: attach it and serve it, or
/// close it as unauthenticated. Two futures chained rather than one async
/// fn: an async fn keeps a local that lives across more than one await, or
/// that is moved into an awaited future, in room of its own for the whole
/// function (rust-lang/rust#62958), so the set-up's locals and the session
/// would sit beside the connection loop for as long as the connection
/// lives. Chained, the task holds the set-up or the loop, never both, and
/// an idle connection's task is 1,536 bytes instead of 1,920 (jemalloc's
/// 1.5 KiB size class instead of 2 KiB).
fn run(handover: Box<Handover>) -> impl Future<Output = ()> {
    upgrade_and_attach(handover)
        .then(|attached| {
            OptionFuture::from(attached.map(|(link, session)| {
                let span = tracing::debug_span!("conn", id = session.conn_id(), user = %session.user(), transport = "websocket");
                connection::serve(link, session).instrument(span)
            }))
        })
        .map(drop)
}

/// Waits for hyper's upgrade and attaches the connection to its user;
/// `None` when the upgrade failed or the connection was refused (and
/// closed) at attach.
async fn upgrade_and_attach(handover: Box<Handover>) -> Option<(WsLink, Session)> {
    let Handover {
        on_upgrade,
        config,
        hub,
        admission,
        user,
        client,
        started,
        resume,
    } = *handover;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!(%err, "WebSocket upgrade failed");
            return None;
        }
    };
    let io = Counted::new(TokioIo::new(upgraded));
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let limits = hub.limits();
    let link = WsLink {
        socket,
        timeouts: Timeouts {
            write: limits.write_timeout,
            idle: limits.idle_timeout,
            keep_alive: limits.keep_alive_interval,
        },
        last_heard: Instant::now(),
        watch: MessageWatch::default(),
        reported: 0,
    };
    // The token was checked before the upgrade; attaching checks that
    // nothing revoked it since.
    let attached = user
        .ok_or(CloseReason::Unauthenticated)
        .and_then(|user| Session::attach(&hub, admission, user, client, started, resume));
    match attached {
        Ok(session) => Some((link, session)),
        Err(reason) => {
            // Boxed: the close would otherwise make this future, and so
            // the task, larger than the connection loop.
            Box::pin(connection::refuse(link, reason, &hub)).await;
            None
        }
    }
}

/// Checks the upgrade request (RFC 6455 §4.2.1) and computes
/// `Sec-WebSocket-Accept`; otherwise the documented error response.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, Box<Response>> {
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(Box::new(upgrade_required(
            "/v1/connect needs a WebSocket upgrade (or WebTransport over HTTP/3)",
        )));
    }
    let bad = |message: &str| {
        Box::new(
            ApiError::new(
                HttpError::Invalid,
                format!("bad WebSocket handshake: {message}"),
            )
            .into_response(),
        )
    };
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(bad("the Connection header must include \"upgrade\""));
    }
    if headers.get(SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        let mut response = upgrade_required("only WebSocket version 13 is supported");
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(Box::new(response));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let mut input = key.to_vec();
    input.extend_from_slice(ACCEPT_GUID);
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    HeaderValue::from_str(&STANDARD.encode(digest)).map_err(|_| bad("unusable key"))
}

/// Whether a comma-separated header has `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn upgrade_required(message: &str) -> Response {
    let mut response = ApiError::new(HttpError::UpgradeRequired, message).into_response();
    response
        .headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    response
}

/// A WebSocket connection as the connection loop drives it.
struct WsLink {
    socket: Socket,
    timeouts: Timeouts,
    last_heard: Instant,
    watch: MessageWatch,
    /// Socket bytes already counted in the gateway's books.
    reported: u64,
}

/// What one message read means for the loop.
enum Step {
    More,
    Stop(Read),
}

impl WsLink {
    /// Hands one read result to the core. A framing error asks for a close
    /// with its reason; a closed or failed socket ends reading.
    fn handle(
        &mut self,
        reading: &Reading<'_>,
        message: Option<Result<Message, tungstenite::Error>>,
    ) -> Step {
        let read = self.socket.get_ref().read;
        match message {
            Some(Ok(Message::Text(text))) => {
                self.watch.message(read);
                reading.text(&text);
            }
            Some(Ok(Message::Binary(data))) => {
                self.watch.message(read);
                reading.frame(&data);
            }
            Some(Ok(Message::Ping(payload) | Message::Pong(payload))) => {
                self.watch.control(payload.len());
            }
            Some(Ok(Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                // A close frame without a code, or with 1000 or 1001, is a
                // client that meant to leave; another code reports a
                // failure.
                if frame.is_none_or(|frame| matches!(u16::from(frame.code), 1000 | 1001)) {
                    reading.session().closed_by_client();
                }
                return Step::Stop(Read::Ended);
            }
            None => return Step::Stop(Read::Ended),
            Some(Err(err)) => return Step::Stop(Self::failure(&err)),
        }
        Step::More
    }

    /// What a read error means: a client that broke the framing rules is
    /// closed with the matching code; one that just went away (a reset,
    /// no closing handshake) is gone.
    fn failure(err: &tungstenite::Error) -> Read {
        use tungstenite::error::ProtocolError;
        match err {
            tungstenite::Error::Capacity(_) => Read::Close(CloseReason::MessageTooBig),
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Read::Ended
            }
            tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
                Read::Close(CloseReason::ProtocolError)
            }
            _ => Read::Ended,
        }
    }
}

impl Link for WsLink {
    const TRANSPORT: Transport = Transport::WebSocket;
    type Error = tungstenite::Error;

    /// Takes every frame tungstenite already holds, up to a batch, after
    /// the first one arrives.
    async fn read(&mut self, session: &Session) -> Read {
        let mut message = self.socket.next().await;
        self.last_heard = Instant::now();
        let reading = session.reading();
        let mut frames = 0;
        loop {
            if let Step::Stop(read) = self.handle(&reading, message) {
                return read;
            }
            frames += 1;
            if frames == READ_BATCH {
                break;
            }
            match self.socket.next().now_or_never() {
                Some(next) => message = next,
                None => break,
            }
        }
        let read = self.socket.get_ref().read;
        let bytes = usize::try_from(read - self.reported).unwrap_or(usize::MAX);
        self.reported = read;
        Read::Frames { frames, bytes }
    }

    /// Feeds the batch to tungstenite's write buffer and flushes it: one
    /// system call for the whole batch. Each envelope goes out as a text
    /// frame as it is: the core builds them from UTF-8 text, and envelopes
    /// from other nodes are checked when they arrive.
    async fn write(&mut self, batch: &VecDeque<Queued>) -> Result<(), tungstenite::Error> {
        for item in batch {
            let frame = Frame::message(item.frame.clone(), OpCode::Data(Data::Text), true);
            self.socket.feed(Message::Frame(frame)).await?;
        }
        self.socket.flush().await
    }

    fn keep_alive_interval(&self) -> Option<Duration> {
        Some(self.timeouts.keep_alive)
    }

    async fn keep_alive(&mut self) -> Liveness {
        let idle = self.timeouts.idle;
        let stalled = self
            .watch
            .stalled(self.socket.get_ref().read, Instant::now(), idle);
        if self.last_heard.elapsed() >= idle || stalled {
            return Liveness::Idle;
        }
        let ping = timeout(
            self.timeouts.write,
            self.socket.send(Message::Ping(Bytes::new())),
        )
        .await;
        if matches!(ping, Ok(Ok(()))) {
            Liveness::Alive
        } else {
            Liveness::Gone
        }
    }

    async fn send_close(&mut self, reason: CloseReason) {
        let envelope = Utf8Bytes::try_from(close_frame(reason)).unwrap_or_default();
        let frame = CloseFrame {
            code: reason.code().into(),
            reason: Utf8Bytes::from_static(reason.reason()),
        };
        let _ = timeout(self.timeouts.write, async {
            self.socket.feed(Message::Text(envelope)).await?;
            self.socket.send(Message::Close(Some(frame))).await
        })
        .await;
    }

    /// The client sent its close frame (tungstenite answers it) or is gone.
    async fn finish(&mut self) {}

    async fn drain(&mut self, frames: &mut u64) {
        while let Some(Ok(message)) = self.socket.next().await {
            match message {
                Message::Close(_) => break,
                Message::Text(_) | Message::Binary(_) => *frames += 1,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn release(self, _reason: Option<CloseReason>) {}
}

/// Notices a data message that never ends. tungstenite gathers the frames
/// of a fragmented message out of sight, and the pongs a client sends in
/// between keep the connection alive, so one message that never ends
/// could hold up to `--max-envelope-bytes` for as long as the client
/// likes. Bytes the socket delivered that neither completed a data message
/// nor carried a control frame belong to a message still in progress; one
/// in progress for the idle timeout closes the connection as idle.
#[derive(Debug, Default)]
struct MessageWatch {
    /// Socket bytes read when the last data message completed.
    read_at_message: u64,
    /// Bytes of control frames since then.
    control_bytes: u64,
    /// Since when bytes are unexplained.
    incomplete_since: Option<Instant>,
}

impl MessageWatch {
    /// A client's control frame (payload of at most 125 bytes) is 6 bytes
    /// of header and mask plus its payload (RFC 6455 §5.2).
    const CONTROL_FRAME_OVERHEAD: u64 = 6;

    fn message(&mut self, read: u64) {
        self.read_at_message = read;
        self.control_bytes = 0;
        self.incomplete_since = None;
    }

    fn control(&mut self, payload: usize) {
        self.control_bytes += payload as u64 + Self::CONTROL_FRAME_OVERHEAD;
    }

    /// Whether a message has been in progress for `limit` or longer.
    fn stalled(&mut self, read: u64, now: Instant, limit: Duration) -> bool {
        // Bytes read ahead of the last message (part of the next frame)
        // make this undercount, never overcount.
        let unexplained = read
            .saturating_sub(self.read_at_message)
            .saturating_sub(self.control_bytes);
        if unexplained == 0 {
            self.incomplete_since = None;
            return false;
        }
        now.duration_since(*self.incomplete_since.get_or_insert(now)) >= limit
    }
}

/// The upgraded connection, counting the bytes read from it (for
/// [`MessageWatch`]).
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    read: u64,
}

impl<S> Counted<S> {
    fn new(inner: S) -> Self {
        Self { inner, read: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_never_ends_is_noticed_despite_pongs() {
        let limit = Duration::from_secs(20);
        let start = Instant::now();
        let mut watch = MessageWatch::default();
        // A 100-byte message, then the first fragment of another (1,000
        // bytes) followed by pongs every few seconds.
        watch.message(100);
        let mut read = 1_100;
        assert!(!watch.stalled(read, start, limit));
        for tick in 1..=3u64 {
            watch.control(4);
            read += 10;
            let now = start + Duration::from_secs(7 * tick);
            assert_eq!(watch.stalled(read, now, limit), tick == 3, "tick {tick}");
        }
    }

    #[test]
    fn complete_messages_and_control_frames_are_never_a_stall() {
        let limit = Duration::from_secs(1);
        let start = Instant::now();
        let mut watch = MessageWatch::default();
        for i in 1..=5u64 {
            watch.control(0);
            watch.message(i * 100 + i * 6);
            let now = start + Duration::from_secs(2 * i);
            assert!(!watch.stalled(i * 100 + i * 6, now, limit));
        }
        watch.control(125);
        assert!(!watch.stalled(506 + 131, start + Duration::from_secs(60), limit));
    }
}
