//! A byte budget on what h3 reads from a QUIC connection before its
//! WebTransport session is authenticated.
//!
//! h3 reads a whole frame into memory before decoding it, whatever length
//! the frame declares, on the control stream and on request streams alike.
//! Nothing in h3 bounds that, and QUIC flow control does not either: h3
//! consumes what arrives, which reopens the window. So every stream h3 is
//! handed goes through [`MeteredRecv`], which charges each chunk to the
//! connection's [`Meter`]; past the budget the connection is closed with
//! `H3_EXCESSIVE_LOAD` before another chunk is handed over. Once the session
//! is attached the budget is lifted: from then on h3 reads nothing but the
//! session's own stream, whose lines the framer bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use h3_datagram::quic_traits::DatagramConnectionExt;

use crate::core::wire::PreSessionClose;

/// The bytes one connection may still hand to h3, shared by its streams.
#[derive(Debug, Clone)]
pub struct Meter {
    state: Arc<MeterState>,
}

#[derive(Debug)]
struct MeterState {
    read: AtomicU64,
    limit: AtomicU64,
    conn: quinn::Connection,
}

impl Meter {
    /// A meter allowing `limit` bytes on `conn`.
    pub fn new(conn: quinn::Connection, limit: usize) -> Self {
        Self {
            state: Arc::new(MeterState {
                read: AtomicU64::new(0),
                limit: AtomicU64::new(u64::try_from(limit).unwrap_or(u64::MAX)),
                conn,
            }),
        }
    }

    /// Removes the budget (the session is attached).
    pub fn lift(&self) {
        self.state.limit.store(u64::MAX, Ordering::Relaxed);
    }

    /// Whether the budget has been exceeded (and the connection closed).
    pub fn exceeded(&self) -> bool {
        self.state.read.load(Ordering::Relaxed) > self.state.limit.load(Ordering::Relaxed)
    }

    /// Charges `bytes`; false, with the connection closed, once over budget.
    fn charge(&self, bytes: usize) -> bool {
        let read = self
            .state
            .read
            .fetch_add(bytes as u64, Ordering::Relaxed)
            .saturating_add(bytes as u64);
        if read <= self.state.limit.load(Ordering::Relaxed) {
            return true;
        }
        let close = PreSessionClose::ByteLimit;
        self.state.conn.close(
            quinn::VarInt::from_u32(close.h3_code()),
            close.reason().as_bytes(),
        );
        false
    }
}

fn over_budget() -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: ConnectionErrorIncoming::ApplicationClose {
            error_code: u64::from(PreSessionClose::ByteLimit.h3_code()),
        },
    }
}

/// An h3-quinn connection, or its stream opener, whose incoming streams
/// are metered.
pub struct Metered<T> {
    inner: T,
    meter: Meter,
}

/// An h3-quinn connection whose incoming streams are metered.
pub type MeteredConnection = Metered<h3_quinn::Connection>;

/// Opens streams on a metered connection (h3 opens its own unidirectional
/// ones; what it receives on any of them is metered).
pub type MeteredOpener = Metered<h3_quinn::OpenStreams>;

impl MeteredConnection {
    /// Wraps `conn`, charging what h3 reads to `meter`.
    pub fn new(conn: quinn::Connection, meter: Meter) -> Self {
        Self {
            inner: h3_quinn::Connection::new(conn),
            meter,
        }
    }
}

/// A receive stream whose chunks are charged to the connection's meter.
pub struct MeteredRecv {
    inner: h3_quinn::RecvStream,
    meter: Meter,
}

impl quic::RecvStream for MeteredRecv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        match self.inner.poll_data(cx) {
            Poll::Ready(Ok(Some(chunk))) if !self.meter.charge(chunk.len()) => {
                Poll::Ready(Err(over_budget()))
            }
            polled => polled,
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

/// A bidirectional stream whose receive side is metered.
pub struct MeteredBidi {
    send: h3_quinn::SendStream<Bytes>,
    recv: MeteredRecv,
}

impl MeteredBidi {
    fn new(stream: h3_quinn::BidiStream<Bytes>, meter: Meter) -> Self {
        let (send, inner) = quic::BidiStream::split(stream);
        Self {
            send,
            recv: MeteredRecv { inner, meter },
        }
    }
}

impl quic::RecvStream for MeteredBidi {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl quic::SendStream<Bytes> for MeteredBidi {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl quic::SendStreamUnframed<Bytes> for MeteredBidi {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        self.send.poll_send(cx, buf)
    }
}

impl quic::BidiStream<Bytes> for MeteredBidi {
    type SendStream = h3_quinn::SendStream<Bytes>;
    type RecvStream = MeteredRecv;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        (self.send, self.recv)
    }
}

impl quic::Connection<Bytes> for MeteredConnection {
    type RecvStream = MeteredRecv;
    type OpenStreams = MeteredOpener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_recv(&mut self.inner, cx).map_ok(|inner| {
            MeteredRecv {
                inner,
                meter: self.meter.clone(),
            }
        })
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_bidi(&mut self.inner, cx)
            .map_ok(|stream| MeteredBidi::new(stream, self.meter.clone()))
    }

    fn opener(&self) -> Self::OpenStreams {
        MeteredOpener {
            inner: quic::Connection::<Bytes>::opener(&self.inner),
            meter: self.meter.clone(),
        }
    }
}

impl<T> quic::OpenStreams<Bytes> for Metered<T>
where
    T: quic::OpenStreams<
            Bytes,
            BidiStream = h3_quinn::BidiStream<Bytes>,
            SendStream = h3_quinn::SendStream<Bytes>,
        >,
{
    type BidiStream = MeteredBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_bidi(&mut self.inner, cx)
            .map_ok(|stream| MeteredBidi::new(stream, self.meter.clone()))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<Bytes>::close(&mut self.inner, code, reason);
    }
}

impl DatagramConnectionExt<Bytes> for MeteredConnection {
    type SendDatagramHandler = h3_quinn::datagram::SendDatagramHandler;
    type RecvDatagramHandler = h3_quinn::datagram::RecvDatagramHandler;

    fn send_datagram_handler(&self) -> Self::SendDatagramHandler {
        DatagramConnectionExt::<Bytes>::send_datagram_handler(&self.inner)
    }

    fn recv_datagram_handler(&self) -> Self::RecvDatagramHandler {
        DatagramConnectionExt::<Bytes>::recv_datagram_handler(&self.inner)
    }
}
