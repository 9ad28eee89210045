//! Socket reads without a per-connection read buffer.
//!
//! tungstenite reads through a buffer it allocates for every connection up
//! front and keeps for the connection's life. A large one costs memory on
//! every idle connection; a small one costs a system call per few hundred
//! bytes under load. `ReadAhead` removes that trade-off: a small read is
//! served from one big read into a scratch buffer shared by the thread, and
//! only what the caller could not take is kept — in an allocation that is
//! freed as soon as it has been handed out. An idle connection holds no
//! read buffer at all, and a busy one still takes everything the kernel has
//! in one system call.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads at least this large go straight to the socket (hyper reads its
/// request heads with 8 KiB buffers).
const DIRECT_READ: usize = 4096;
/// One read from the socket takes at most this much.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// A stream whose small reads are served from one large read.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket that the caller has not taken yet.
    surplus: Bytes,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            surplus: Bytes::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.surplus.is_empty() {
            let n = this.surplus.len().min(buf.remaining());
            buf.put_slice(&this.surplus[..n]);
            this.surplus.advance(n);
            if this.surplus.is_empty() {
                // Give the allocation back now, not when more data comes.
                this.surplus = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= DIRECT_READ {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let data = read.filled();
            let n = data.len().min(buf.remaining());
            buf.put_slice(&data[..n]);
            if n < data.len() {
                this.surplus = Bytes::copy_from_slice(&data[n..]);
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_keep_nothing_after() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut reader = ReadAhead::new(server);
        let mut client = client;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let mut small = [0u8; 37];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert!(reader.surplus.is_empty());
    }

    #[tokio::test]
    async fn large_reads_go_straight_through() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = ReadAhead::new(server);
        client.write_all(b"hello").await.unwrap();
        let mut big = vec![0u8; DIRECT_READ];
        let n = reader.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"hello");
        assert!(reader.surplus.is_empty());
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut writer = ReadAhead::new(client);
        let mut server = server;
        writer.write_all(b"abc").await.unwrap();
        writer.flush().await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }
}
