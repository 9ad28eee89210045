//! One WebTransport session: the client's bidirectional stream carries
//! newline-delimited envelopes both ways, exactly as WebSocket frames do.
//! This module waits for that stream and translates it for the connection
//! loop ([`crate::connection`]).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h3::quic::{BidiStream as _, RecvStream as _};
use h3_webtransport::server::{AcceptedBi, WebTransportSession};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::Instrument;

use super::Authorized;
use super::metered::{Meter, MeteredBidi, MeteredConnection, MeteredRecv};
use crate::connection::lines::LineFramer;
use crate::connection::{self, Link, READ_BATCH, Read};
use crate::core::envelope::close_frame;
use crate::core::outbox::Queued;
use crate::core::{CloseReason, Hub, Session, Transport};

type Session3 = WebTransportSession<MeteredConnection, Bytes>;
type SendHalf = h3_webtransport::stream::SendStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = h3_webtransport::stream::RecvStream<MeteredRecv, Bytes>;
type Bidi = h3_webtransport::stream::BidiStream<MeteredBidi, Bytes>;

/// `H3_REQUEST_REJECTED`: a stream the gateway refuses unread.
const STREAM_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(0x10b);

/// Closes the QUIC connection (and with it the session) with the reason's
/// code: the one place a WebTransport close code is chosen.
pub(super) fn close_connection(conn: &quinn::Connection, reason: CloseReason) {
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
    authorized: Authorized,
    conn: quinn::Connection,
    meter: Meter,
    peer: SocketAddr,
    started: Instant,
    hub: Arc<Hub>,
) -> impl Future<Output = ()> {
    async move {
        let Authorized {
            session,
            user,
            admission,
            resume,
        } = authorized;
        let limits = hub.limits();
        let waited = tokio::select! {
            // Boxed: accepting streams takes a large future, needed only here.
            waited = timeout(limits.stream_open_timeout, Box::pin(first_stream(&session))) => {
                waited.map_err(|_| CloseReason::StreamTimeout)
            }
            () = hub.stopping() => Err(CloseReason::Shutdown),
        };
        let stream = match waited {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(reason) => {
                tracing::debug!(user = %user.user(), reason = reason.reason(), "closed before its stream");
                connection::closed_without_link(&hub, Transport::WebTransport, reason);
                close_connection(&conn, reason);
                return;
            }
        };
        let (send, recv) = stream.split();
        let link = WtLink {
            session,
            conn,
            send,
            recv,
            framer: LineFramer::new(limits.max_envelope_bytes),
            write_timeout: limits.write_timeout,
            reading: true,
            refusing_streams: true,
        };
        // The token was checked at the CONNECT; attaching checks that
        // nothing revoked it since.
        let core = match Session::attach(&hub, admission, user, peer.ip(), started, resume) {
            Ok(core) => core,
            Err(reason) => {
                connection::refuse(link, reason, &hub).await;
                return;
            }
        };
        // From here on h3 reads nothing but this stream: no budget, the
        // window of one session, and no further streams.
        meter.lift();
        link.conn
            .set_receive_window(super::session_window(hub.limits()));
        link.conn
            .set_max_concurrent_bi_streams(quinn::VarInt::from_u32(0));
        link.conn
            .set_max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        drop(hub);
        let span = tracing::debug_span!("conn", id = core.conn_id(), user = %core.user(), transport = "webtransport");
        connection::serve(link, core).instrument(span).await;
    }
}

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

/// A WebTransport session as the connection loop drives it. After the
/// client's stream is open nothing else on the HTTP/3 connection matters:
/// further streams are refused, and the end of the connection shows as the
/// end of the stream.
struct WtLink {
    /// Owns the HTTP/3 connection, which must live as long as the session.
    session: Box<Session3>,
    conn: quinn::Connection,
    send: SendHalf,
    recv: RecvHalf,
    framer: LineFramer,
    write_timeout: Duration,
    /// False once the client's stream has ended (or broke the line limit).
    reading: bool,
    /// False once the connection no longer hands out streams to refuse.
    refusing_streams: bool,
}

impl WtLink {
    /// Hands the complete lines of `chunk` to the session, then those of
    /// every further chunk quinn already holds, up to [`READ_BATCH`] lines:
    /// one wake-up handles what arrived in several packets, as the WebSocket
    /// side reads several frames per `read()`. Each trip back through the
    /// connection loop costs a poll of all its branches and of quinn's
    /// stream (a lock of the connection): batching took 15-20 % off the
    /// server CPU per relayed envelope at 100 pairs x 10 in flight, and did
    /// nothing measurable with one in flight (issue 17). No await point: a
    /// chunk taken is always consumed, so this stays cancel-safe.
    fn take(&mut self, mut chunk: Bytes, session: &Session) -> Read {
        let (mut frames, mut bytes) = (0, 0);
        let reading = session.reading();
        loop {
            bytes += chunk.len();
            let fed = self.framer.feed(chunk, |line| {
                frames += 1;
                reading.frame(line);
            });
            if fed.is_err() {
                self.reading = false;
                return Read::Close(CloseReason::MessageTooBig);
            }
            if frames >= READ_BATCH {
                break;
            }
            let mut cx = Context::from_waker(Waker::noop());
            match self.recv.poll_data(&mut cx) {
                Poll::Ready(Ok(Some(mut next))) => chunk = next.copy_to_bytes(next.remaining()),
                // Nothing more now; an end or error shows on the next read.
                _ => break,
            }
        }
        Read::Frames { frames, bytes }
    }
}

impl WtLink {
    /// Whether the client ended the session on purpose: it finished its
    /// stream on a live connection, or closed the connection itself. A
    /// connection that timed out or was reset is not a clean close.
    fn closed_by_client(&self) -> bool {
        match self.conn.close_reason() {
            None => true,
            Some(quinn::ConnectionError::ApplicationClosed(_)) => true,
            Some(_) => false,
        }
    }
}

impl Link for WtLink {
    type Error = std::io::Error;
    const TRANSPORT: Transport = Transport::WebTransport;

    /// The next chunk of the client's stream, its complete lines handed to
    /// the session; streams the client opens beside it are refused at once,
    /// so what it sends on them is dropped, not held.
    async fn read(&mut self, session: &Session) -> Read {
        loop {
            tokio::select! {
                data = poll_fn(|cx| self.recv.poll_data(cx)) => return match data {
                    Ok(Some(mut chunk)) => self.take(chunk.copy_to_bytes(chunk.remaining()), session),
                    // The client finished its stream or the session is gone.
                    Ok(None) | Err(_) => {
                        self.reading = false;
                        if self.closed_by_client() {
                            session.closed_by_client();
                        }
                        Read::Ended
                    }
                },
                extra = self.conn.accept_bi(), if self.refusing_streams => match extra {
                    Ok((mut send, mut recv)) => {
                        let _ = send.reset(STREAM_REFUSED);
                        let _ = recv.stop(STREAM_REFUSED);
                    }
                    Err(_) => self.refusing_streams = false,
                },
                extra = self.conn.accept_uni(), if self.refusing_streams => match extra {
                    Ok(mut recv) => {
                        let _ = recv.stop(STREAM_REFUSED);
                    }
                    Err(_) => self.refusing_streams = false,
                },
            }
        }
    }

    /// Writes a batch to the stream with one write: a single frame as it
    /// is, several concatenated.
    async fn write(&mut self, batch: &VecDeque<Queued>) -> std::io::Result<()> {
        if let (Some(single), 1) = (batch.front(), batch.len()) {
            return self.send.write_all(&single.frame).await;
        }
        let mut buf = BytesMut::with_capacity(batch.iter().map(|item| item.frame.len()).sum());
        for item in batch {
            buf.extend_from_slice(&item.frame);
        }
        self.send.write_all(&buf).await
    }

    async fn send_close(&mut self, reason: CloseReason) {
        let _ = timeout(self.write_timeout, async {
            self.send.write_all(&close_frame(reason)).await?;
            self.send.shutdown().await
        })
        .await;
    }

    async fn finish(&mut self) {
        let _ = timeout(self.write_timeout, self.send.shutdown()).await;
    }

    /// Closing QUIC at once would discard stream data not yet acknowledged:
    /// the client reads to the end and closes the connection itself.
    async fn drain(&mut self, frames: &mut u64) {
        while self.reading {
            match poll_fn(|cx| self.recv.poll_data(cx)).await {
                Ok(Some(mut chunk)) => {
                    let chunk = chunk.copy_to_bytes(chunk.remaining());
                    self.reading = self.framer.feed(chunk, |_| *frames += 1).is_ok();
                }
                Ok(None) | Err(_) => self.reading = false,
            }
        }
        self.conn.closed().await;
    }

    fn release(self, reason: Option<CloseReason>) {
        match reason {
            Some(reason) => close_connection(&self.conn, reason),
            None => self.conn.close(quinn::VarInt::from_u32(0), b"BYE"),
        }
        drop(self.session);
    }
}
