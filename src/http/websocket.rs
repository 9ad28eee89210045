//! The WebSocket transport: turns frames into core calls and drains the
//! connection's outbox. One task per connection owns the socket, so there is
//! exactly one writer; it reads every frame the socket has before waiting,
//! and writes a whole batch of queued envelopes with one flush.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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
use crate::core::{Admission, AfterWrite, CloseReason, Hub, Session, Transport, write_within};

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

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

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
    let client = auth::client_ip(peer.ip(), headers, &ctx.trusted_proxies);
    let admission = match ctx.hub.admit(client) {
        Ok(admission) => admission,
        Err(refusal) => return ApiError::from(refusal).into_response(),
    };
    let user = auth::session_token(headers, request.uri().query())
        .and_then(|token| ctx.hub.store.authenticate(&token));
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
    user: Option<std::sync::Arc<str>>,
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
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let Some(user) = user else {
            hub.stats.closed_for(CloseReason::Unauthenticated);
            close(&mut socket, CloseReason::Unauthenticated, &hub).await;
            drop(admission);
            return;
        };
        let timeouts = Timeouts {
            write: hub.limits.write_timeout,
            idle: hub.limits.idle_timeout,
            keep_alive: hub.limits.keep_alive_interval,
        };
        let session = hub.attach(admission, user, Transport::WebSocket, client);
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
                    reading = handle(&session, message);
                    // Take the frames already buffered before waiting again...
                    let mut taken = 1;
                    while reading && taken < READ_BATCH {
                        let Some(message) = socket.next().now_or_never() else { break };
                        reading = handle(&session, message);
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
                    if last_heard.elapsed() >= timeouts.idle {
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
/// sends the close); a closed or failed socket just ends reading.
fn handle(session: &Session, message: Option<Result<Message, tungstenite::Error>>) -> bool {
    match message {
        Some(Ok(Message::Text(text))) => session.handle_text(&text),
        Some(Ok(Message::Binary(data))) => session.handle_frame(&data),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
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
