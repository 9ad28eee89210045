//! The WebSocket transport: turns frames into core calls and drains the
//! connection's outbox. One task per connection owns the socket, so there is
//! exactly one writer; it reads every frame the socket has before waiting,
//! and writes a whole batch of queued envelopes with one flush.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::header::UPGRADE;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tracing::Instrument;

use super::AppState;
use super::api::ApiError;
use crate::auth;
use crate::core::envelope::close_frame;
use crate::core::outbox::Queued;
use crate::core::{CloseReason, Hub, Session, Transport};

/// How long to wait for the client's close frame after sending ours, so the
/// client reads our final envelope and close instead of a TCP reset.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Frames handled per wake-up before giving the writer a turn.
const READ_BATCH: usize = 64;

/// Socket-level settings of the WebSocket transport.
#[derive(Debug, Clone)]
pub struct WebSocketSettings {
    /// tungstenite's read buffer, allocated per connection up front: small
    /// keeps idle connections cheap (axum's 128 KiB default costs 136 KB per
    /// connection), and one read still takes many signalling frames.
    pub read_buffer_bytes: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            read_buffer_bytes: 4096,
        }
    }
}

/// `GET /v1/connect`: upgrade to WebSocket and attach to the token's user.
/// Without a valid token the upgrade still happens and the socket is closed
/// with 4000 `UNAUTHENTICATED`, as in the seed (a browser can read a close
/// code, not an HTTP status).
pub(crate) async fn connect(
    State(ctx): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return not_an_upgrade(&headers, rejection),
    };
    let client = auth::client_ip(peer.ip(), &headers, &ctx.trusted_proxies);
    let admission = match ctx.hub.admit(client) {
        Ok(admission) => admission,
        Err(refusal) => return ApiError::from(refusal).into_response(),
    };
    let user = auth::session_token(&headers, uri.query())
        .and_then(|token| ctx.hub.store.authenticate(&token));
    let limits = &ctx.hub.limits;
    let hub = ctx.hub.clone();
    upgrade
        .read_buffer_size(ctx.websocket.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.queue_bytes.saturating_add(limits.max_envelope_bytes).saturating_mul(2))
        .max_message_size(limits.max_envelope_bytes)
        .max_frame_size(limits.max_envelope_bytes)
        .on_upgrade(move |socket| async move {
            match user {
                Some(user) => {
                    let session = hub.attach(admission, user, Transport::WebSocket, client);
                    let span = tracing::info_span!("conn", id = session.conn_id(), user = %session.user(), transport = "websocket");
                    serve(socket, session).instrument(span).await;
                }
                None => {
                    hub.stats.closed_for(CloseReason::Unauthenticated);
                    let mut socket = socket;
                    close(&mut socket, CloseReason::Unauthenticated, &hub).await;
                    drop(admission);
                }
            }
        })
}

fn not_an_upgrade(headers: &HeaderMap, rejection: WebSocketUpgradeRejection) -> Response {
    let asked_for_websocket = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if asked_for_websocket {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID",
            format!("bad WebSocket handshake: {rejection}"),
        )
        .into_response()
    } else {
        let mut response = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "UPGRADE_REQUIRED",
            "/v1/connect needs a WebSocket upgrade (or WebTransport over HTTP/3)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(UPGRADE, axum::http::HeaderValue::from_static("websocket"));
        response
    }
}

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The socket took nothing for the whole write timeout.
    #[error("the connection stopped reading for {0:?}")]
    Stalled(Duration),
    /// The socket failed.
    #[error("the connection failed: {0}")]
    Failed(String),
}

async fn serve(mut socket: WebSocket, session: Session) {
    tracing::debug!("connected");
    let limits = session.hub().limits.clone();
    let mut batch: Vec<Queued> = Vec::new();
    let mut reading = true;
    let mut last_heard = Instant::now();
    let mut keep_alive = interval_at(
        Instant::now() + limits.keep_alive_interval,
        limits.keep_alive_interval,
    );
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let ended_by = loop {
        tokio::select! {
            biased;
            closing = session.outbox().next_batch(&mut batch) => {
                if let Err(err) = write_batch(&mut socket, &batch, limits.write_timeout).await {
                    session.report_unwritten(batch.drain(..), &err.to_string());
                    if let WriteError::Stalled(_) = err {
                        session.close(CloseReason::SlowConsumer);
                        break Some(CloseReason::SlowConsumer);
                    }
                    break None;
                }
                session.record_written(&batch);
                batch.clear();
                if let Some(reason) = closing {
                    break Some(reason);
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
                // ...but let the writers of the targets run before the next
                // batch: frames parsed from tungstenite's buffer do not count
                // against tokio's cooperative budget, so a flood could
                // otherwise fill a target's queue on a single-thread runtime.
                if taken == READ_BATCH {
                    tokio::task::yield_now().await;
                }
            }
            _ = keep_alive.tick() => {
                if last_heard.elapsed() >= limits.idle_timeout {
                    session.close(CloseReason::IdleTimeout);
                    continue;
                }
                let ping = timeout(limits.write_timeout, socket.send(Message::Ping(Bytes::new()))).await;
                if !matches!(ping, Ok(Ok(()))) {
                    break None;
                }
            }
        }
    };
    match ended_by {
        Some(reason) => {
            close(&mut socket, reason, session.hub()).await;
            tracing::debug!(reason = reason.reason(), "closed by the gateway");
        }
        None => tracing::debug!("closed by the client"),
    }
}

/// Hands one read result to the core; returns whether reading goes on. A
/// framing error asks the session to close (the writer then drains and
/// sends the close); a closed or failed socket just ends reading.
fn handle(session: &Session, message: Option<Result<Message, axum::Error>>) -> bool {
    match message {
        Some(Ok(Message::Text(text))) => session.handle_frame(text.as_bytes()),
        Some(Ok(Message::Binary(data))) => session.handle_frame(&data),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        Some(Ok(Message::Close(_))) | None => return false,
        Some(Err(err)) => {
            if let Ok(err) = err.into_inner().downcast::<tungstenite::Error>() {
                match *err {
                    tungstenite::Error::Capacity(_) => session.close(CloseReason::MessageTooBig),
                    tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
                        session.close(CloseReason::ProtocolError);
                    }
                    _ => {}
                }
            }
            return false;
        }
    }
    true
}

async fn write_batch(
    socket: &mut WebSocket,
    batch: &[Queued],
    write_timeout: Duration,
) -> Result<(), WriteError> {
    let failed = |err: &dyn std::fmt::Display| WriteError::Failed(err.to_string());
    let write = async {
        for item in batch {
            let text = Utf8Bytes::try_from(item.frame.clone()).map_err(|e| failed(&e))?;
            socket
                .feed(Message::Text(text))
                .await
                .map_err(|e| failed(&e))?;
        }
        socket.flush().await.map_err(|e| failed(&e))
    };
    timeout(write_timeout, write)
        .await
        .unwrap_or(Err(WriteError::Stalled(write_timeout)))
}

/// Sends the final `CLOSE` envelope and the close frame, then waits briefly
/// for the client's close so neither is lost to a TCP reset.
async fn close(socket: &mut WebSocket, reason: CloseReason, hub: &Hub) {
    let write_timeout = hub.limits.write_timeout;
    let envelope = Utf8Bytes::try_from(close_frame(reason)).unwrap_or_default();
    let frame = CloseFrame {
        code: reason.code(),
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
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        })
        .await;
    }
}
