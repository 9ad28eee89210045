//! One WebTransport session: the client's bidirectional stream carries
//! newline-delimited envelopes both ways, exactly as WebSocket frames do.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h3::quic::{BidiStream as _, RecvStream as _};
use h3_webtransport::server::{AcceptedBi, WebTransportSession};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::Instrument;

use super::framing::LineFramer;
use super::metered::{Meter, MeteredBidi, MeteredConnection, MeteredRecv};
use crate::core::envelope::close_frame;
use crate::core::outbox::Queued;
use crate::core::{
    Admission, AfterWrite, Authenticated, CloseReason, Hub, Session, Transport, write_within,
};

type Session3 = WebTransportSession<MeteredConnection, Bytes>;
type SendHalf = h3_webtransport::stream::SendStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = h3_webtransport::stream::RecvStream<MeteredRecv, Bytes>;

/// How long to let the client read our final envelope and close the
/// connection itself before we close it (closing QUIC at once would discard
/// unacknowledged stream data).
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Lines handled before giving the targets' writers a turn.
const READ_BATCH: usize = 64;
/// `H3_REQUEST_REJECTED`: a stream the gateway refuses unread.
const STREAM_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(0x10b);

/// Closes the QUIC connection (and with it the session) with the reason's
/// code: the one place a WebTransport close code is chosen.
pub(super) fn close_connection(conn: &quinn::Connection, reason: CloseReason, hub: &Hub) {
    hub.stats.closed_for(reason);
    conn.close(
        quinn::VarInt::from_u32(u32::from(reason.code())),
        reason.reason().as_bytes(),
    );
}

/// Waits for the client's stream, attaches the session to `user`, and
/// relays until either side closes. Runs as the connection's own task, which
/// holds only what the relay needs (the session is boxed: it owns the HTTP/3
/// connection, which must live as long as the session).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice for the session's life"
)]
pub(super) fn run(
    session: Box<Session3>,
    conn: quinn::Connection,
    user: Authenticated,
    admission: Admission,
    meter: Meter,
    peer: SocketAddr,
    hub: Arc<Hub>,
) -> impl Future<Output = ()> {
    async move {
        let waited = tokio::select! {
            // Boxed: accepting streams takes a large future, needed only here.
            waited = timeout(hub.limits.stream_open_timeout, Box::pin(first_stream(&session))) => waited,
            () = hub.stopping() => {
                close_connection(&conn, CloseReason::Shutdown, &hub);
                return;
            }
        };
        let stream = match waited {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(user = %user.user, "no stream opened in time");
                close_connection(&conn, CloseReason::StreamTimeout, &hub);
                return;
            }
        };
        let (mut send, recv) = stream.split();
        // The token was checked at the CONNECT; attaching checks that
        // nothing revoked it since.
        let core = match hub.attach(admission, user, Transport::WebTransport, peer.ip()) {
            Ok(core) => core,
            Err(reason) => {
                let _ = timeout(hub.limits.write_timeout, async {
                    send.write_all(&close_frame(reason)).await?;
                    send.shutdown().await
                })
                .await;
                // Let the client read the CLOSE envelope before the
                // connection goes (see `relay`).
                let _ = timeout(CLOSE_LINGER, conn.closed()).await;
                close_connection(&conn, reason, &hub);
                return;
            }
        };
        // From here on h3 reads nothing but this stream: no budget, the
        // window of one session, and no further streams.
        meter.lift();
        conn.set_receive_window(super::session_window(&hub.limits));
        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(0));
        conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        drop(hub);
        let span = tracing::debug_span!("conn", id = core.conn_id(), user = %core.user(), transport = "webtransport");
        relay(session, conn, send, recv, core)
            .instrument(span)
            .await;
    }
}

type Bidi = h3_webtransport::stream::BidiStream<MeteredBidi, Bytes>;

/// The client's first bidirectional stream; plain requests on the session
/// are answered 404 (the session owns this connection).
async fn first_stream(session: &Session3) -> Option<Bidi> {
    loop {
        match session.accept_bi().await {
            Ok(Some(AcceptedBi::BidiStream(_, stream))) => return Some(stream),
            Ok(Some(AcceptedBi::Request(_, mut stream))) => {
                let response = http::Response::builder()
                    .status(http::StatusCode::NOT_FOUND)
                    .body(())
                    .unwrap_or_default();
                let _ = stream.send_response(response).await;
                let _ = stream.finish().await;
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The relay loop and the close sequence. After the client's stream is
/// open nothing else on the HTTP/3 connection matters: further streams are
/// not accepted, and the end of the connection shows as the end of the
/// stream.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice for the session's life"
)]
fn relay(
    session: Box<Session3>,
    conn: quinn::Connection,
    mut send: SendHalf,
    mut recv: RecvHalf,
    core: Session,
) -> impl Future<Output = ()> {
    async move {
        tracing::debug!("connected");
        let write_timeout = core.hub().limits.write_timeout;
        let mut framer = LineFramer::new(core.hub().limits.max_envelope_bytes);
        let mut reading = true;
        let mut accepting_extra = true;
        let mut lines_since_yield = 0;
        let ended_by = loop {
            tokio::select! {
                biased;
                (batch, closing) = core.outbox().next_batch() => {
                    let written = write_within(write_timeout, write_batch(&mut send, &batch)).await;
                    match core.batch_written(batch, written, closing) {
                        AfterWrite::Continue => {}
                        AfterWrite::Close(reason) => break Some(reason),
                        AfterWrite::Gone => break None,
                    }
                }
                data = poll_fn(|cx| recv.poll_data(cx)), if reading => match data {
                    Ok(Some(mut chunk)) => {
                        let chunk = chunk.copy_to_bytes(chunk.remaining());
                        if framer.feed(chunk, |line| {
                            lines_since_yield += 1;
                            core.handle_frame(line);
                        }).is_err() {
                            core.close(CloseReason::MessageTooBig);
                            reading = false;
                        }
                        // Let the targets' writers run during a flood (see the
                        // WebSocket transport for why).
                        if lines_since_yield >= READ_BATCH {
                            lines_since_yield = 0;
                            tokio::task::yield_now().await;
                        }
                    }
                    // The client finished its stream or the session is gone.
                    Ok(None) | Err(_) => {
                        reading = false;
                        if core.outbox().closing().is_none() {
                            break None;
                        }
                    }
                },
                // Streams beyond the session's own are refused at once, so
                // what a client sends on them is dropped, not held.
                extra = conn.accept_bi(), if accepting_extra => match extra {
                    Ok((mut send, mut recv)) => {
                        let _ = send.reset(STREAM_REFUSED);
                        let _ = recv.stop(STREAM_REFUSED);
                    }
                    Err(_) => accepting_extra = false,
                },
                extra = conn.accept_uni(), if accepting_extra => match extra {
                    Ok(mut recv) => {
                        let _ = recv.stop(STREAM_REFUSED);
                    }
                    Err(_) => accepting_extra = false,
                },
            }
        };
        let (code, reason) = match ended_by {
            Some(reason) => {
                let _ = timeout(write_timeout, async {
                    send.write_all(&close_frame(reason)).await?;
                    send.shutdown().await
                })
                .await;
                tracing::debug!(reason = reason.reason(), "closed by the gateway");
                (u32::from(reason.code()), reason.reason())
            }
            None => {
                let _ = timeout(write_timeout, send.shutdown()).await;
                tracing::debug!("closed by the client");
                (0, "BYE")
            }
        };
        core.leave();
        // Closing QUIC at once would discard stream data not yet acknowledged:
        // give the client a moment to read to the end and close by itself.
        // Frames it sent before it saw our close are read and counted (the
        // session no longer accepts them), as on WebSocket.
        let linger = async {
            while reading {
                match poll_fn(|cx| recv.poll_data(cx)).await {
                    Ok(Some(mut chunk)) => {
                        let chunk = chunk.copy_to_bytes(chunk.remaining());
                        reading = framer.feed(chunk, |line| core.handle_frame(line)).is_ok();
                    }
                    Ok(None) | Err(_) => reading = false,
                }
            }
            conn.closed().await;
        };
        let _ = timeout(CLOSE_LINGER, linger).await;
        conn.close(quinn::VarInt::from_u32(code), reason.as_bytes());
        // `core` (and with it the connection's admission slot) goes only now, so
        // a shutdown waits for this close.
        drop(core);
        drop(session);
    }
}

/// Writes a batch to the stream with one write: a single frame as it is,
/// several concatenated.
async fn write_batch(send: &mut SendHalf, batch: &VecDeque<Queued>) -> std::io::Result<()> {
    if let (Some(single), 1) = (batch.front(), batch.len()) {
        return send.write_all(&single.frame).await;
    }
    let mut buf = BytesMut::with_capacity(batch.iter().map(|item| item.frame.len()).sum());
    for item in batch {
        buf.extend_from_slice(&item.frame);
    }
    send.write_all(&buf).await
}
