//! The WebSocket transport: turns frames into core calls and drains the
//! connection's outbox. One task per connection owns the socket, so there is
//! exactly one writer; it reads every frame the socket has before waiting,
//! and writes a whole batch of queued envelopes with one flush.

use std::collections::VecDeque;
use std::future::Future;
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
use futures::{FutureExt, SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use super::AppState;
use super::api::ApiError;
use crate::auth;
use crate::core::envelope::close_frame;
use crate::core::outbox::Queued;
use crate::core::{
    Admission, AfterWrite, Authenticated, CloseReason, Hub, Session, Transport, write_within,
};

/// How long to wait for the client's close frame after sending ours, so the
/// client reads our final envelope and close instead of a TCP reset.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Frames handled per wake-up before giving the writer a turn.
const READ_BATCH: usize = 64;
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
/// with 4000 `UNAUTHENTICATED`, as in the seed (a browser can read a close
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
    let user = auth::session_token(headers, request.uri().query())
        .and_then(|token| ctx.hub.authenticate(&token));
    let limits = &ctx.hub.limits;
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
    tokio::spawn(run(
        on_upgrade,
        config,
        ctx.hub.clone(),
        admission,
        user,
        client,
    ));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_default()
}

/// Once hyper has handed over the connection: serve it, or close it as
/// unauthenticated. (A function returning an `async move` block for the same
/// reason as [`serve`].)
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice for the connection's life"
)]
fn run(
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    hub: std::sync::Arc<Hub>,
    admission: Admission,
    user: Option<Authenticated>,
    client: IpAddr,
) -> impl Future<Output = ()> {
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "WebSocket upgrade failed");
                return;
            }
        };
        let io = Counted::new(TokioIo::new(upgraded));
        let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let timeouts = Timeouts {
            write: hub.limits.write_timeout,
            idle: hub.limits.idle_timeout,
            keep_alive: hub.limits.keep_alive_interval,
        };
        // The token was checked before the upgrade; attaching checks that
        // nothing revoked it since.
        let attached = user
            .ok_or(CloseReason::Unauthenticated)
            .and_then(|user| hub.attach(admission, user, Transport::WebSocket, client));
        let session = match attached {
            Ok(session) => session,
            Err(reason) => {
                hub.stats.closed_for(reason);
                close(&mut socket, reason, &hub).await;
                return;
            }
        };
        drop(hub);
        let span = tracing::debug_span!("conn", id = session.conn_id(), user = %session.user(), transport = "websocket");
        serve(socket, session, timeouts).instrument(span).await;
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
                StatusCode::BAD_REQUEST,
                "INVALID",
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
    let mut response =
        ApiError::new(StatusCode::UPGRADE_REQUIRED, "UPGRADE_REQUIRED", message).into_response();
    response
        .headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    response
}

/// The connection's one task. A plain function returning an `async move`
/// block, so the socket and session live once in the task, not twice (an
/// `async fn` keeps its arguments' slots besides the locals they move into).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold the socket and session twice"
)]
fn serve(mut socket: Socket, session: Session, timeouts: Timeouts) -> impl Future<Output = ()> {
    async move {
        tracing::debug!("connected");
        let mut reading = true;
        let mut last_heard = Instant::now();
        let mut watch = MessageWatch::default();
        let mut keep_alive = interval_at(Instant::now() + timeouts.keep_alive, timeouts.keep_alive);
        keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let ended_by = loop {
            tokio::select! {
                biased;
                (batch, closing) = session.outbox().next_batch() => {
                    let written = write_within(timeouts.write, write_batch(&mut socket, &batch)).await;
                    match session.batch_written(batch, written, closing) {
                        AfterWrite::Continue => {}
                        AfterWrite::Close(reason) => break Some(reason),
                        AfterWrite::Gone => break None,
                    }
                }
                message = socket.next(), if reading => {
                    last_heard = Instant::now();
                    reading = handle(&session, message, &mut watch, socket.get_ref().read);
                    // Take the frames already buffered before waiting again...
                    let mut taken = 1;
                    while reading && taken < READ_BATCH {
                        let Some(message) = socket.next().now_or_never() else { break };
                        reading = handle(&session, message, &mut watch, socket.get_ref().read);
                        taken += 1;
                    }
                    if !reading && session.outbox().closing().is_none() {
                        break None;
                    }
                    // ...but let the writers of the targets run before the
                    // next batch: frames parsed from tungstenite's buffer do
                    // not count against tokio's cooperative budget, so a flood
                    // could otherwise fill a target's queue on a single-thread
                    // runtime.
                    if taken == READ_BATCH {
                        tokio::task::yield_now().await;
                    }
                }
                _ = keep_alive.tick() => {
                    let stalled = watch.stalled(socket.get_ref().read, Instant::now(), timeouts.idle);
                    if last_heard.elapsed() >= timeouts.idle || stalled {
                        session.close(CloseReason::IdleTimeout);
                        continue;
                    }
                    let ping = timeout(timeouts.write, socket.send(Message::Ping(Bytes::new()))).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        break None;
                    }
                }
            }
        };
        match ended_by {
            Some(reason) => {
                // Boxed: the close sequence runs once, and keeping its state
                // inline would grow every connection's task.
                Box::pin(close(&mut socket, reason, session.hub())).await;
                tracing::debug!(reason = reason.reason(), "closed by the gateway");
            }
            None => tracing::debug!("closed by the client"),
        }
    }
}

/// Hands one read result to the core; returns whether reading goes on. A
/// framing error asks the session to close (the writer then drains and
/// sends the close); a closed or failed socket just ends reading. `read`
/// is what the socket has delivered so far, for `watch`.
fn handle(
    session: &Session,
    message: Option<Result<Message, tungstenite::Error>>,
    watch: &mut MessageWatch,
    read: u64,
) -> bool {
    match message {
        Some(Ok(Message::Text(text))) => {
            watch.message(read);
            session.handle_text(&text);
        }
        Some(Ok(Message::Binary(data))) => {
            watch.message(read);
            session.handle_frame(&data);
        }
        Some(Ok(Message::Ping(payload) | Message::Pong(payload))) => watch.control(payload.len()),
        Some(Ok(Message::Frame(_))) => {}
        Some(Ok(Message::Close(_))) | None => return false,
        Some(Err(err)) => {
            match err {
                tungstenite::Error::Capacity(_) => session.close(CloseReason::MessageTooBig),
                tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
                    session.close(CloseReason::ProtocolError);
                }
                _ => {}
            }
            return false;
        }
    }
    true
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

/// Feeds a batch to tungstenite's write buffer and flushes it: one system
/// call for the whole batch.
async fn write_batch(
    socket: &mut Socket,
    batch: &VecDeque<Queued>,
) -> Result<(), tungstenite::Error> {
    for item in batch {
        let text = Utf8Bytes::try_from(item.frame.clone())
            .map_err(|_| tungstenite::Error::Utf8(String::from("gateway frame is not UTF-8")))?;
        socket.feed(Message::Text(text)).await?;
    }
    socket.flush().await
}

/// Sends the final `CLOSE` envelope and the close frame, then waits briefly
/// for the client's close so neither is lost to a TCP reset.
async fn close(socket: &mut Socket, reason: CloseReason, hub: &Hub) {
    let write_timeout = hub.limits.write_timeout;
    let envelope = Utf8Bytes::try_from(close_frame(reason)).unwrap_or_default();
    let frame = CloseFrame {
        code: reason.code().into(),
        reason: Utf8Bytes::from_static(reason.reason()),
    };
    let sent = timeout(write_timeout, async {
        socket.feed(Message::Text(envelope)).await?;
        socket.send(Message::Close(Some(frame))).await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = timeout(CLOSE_LINGER, async {
            while let Some(Ok(message)) = socket.next().await {
                match message {
                    Message::Close(_) => break,
                    // Sent before the client saw our close; not accepted.
                    Message::Text(_) | Message::Binary(_) => {
                        hub.stats.frames_received.inc();
                        hub.stats.after_close.inc();
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
        })
        .await;
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
