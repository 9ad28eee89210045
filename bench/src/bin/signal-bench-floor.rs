//! signal-bench-floor: the least a server can do for a room envelope, as a
//! reference beside the systems in the bench's room scenario.
//!
//! It speaks just enough WebSocket for the generator (the handshake, and
//! frames without extensions): a connection's first text frame names its
//! room (`"room":"…"`, answered with `{"type":"JOINED"}`), and every later
//! one is written, as one unmasked frame built once, to each other member of
//! that room with one `write` per member, straight from the reader: no
//! JSON, no queue, no writer task to wake, no timers, no books. One thread
//! (tokio's current-thread runtime); a read takes everything the socket
//! has, and a short read counts as drained, so an envelope costs one
//! `epoll_wait`, one `read` and one `write` per member. A copy that would
//! block is kept and written when the socket drains, in order.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// One read takes at most this much.
const READ_BYTES: usize = 64 * 1024;
/// Largest frame accepted from a client.
const MAX_FRAME: usize = 64 * 1024;
/// Largest handshake request.
const MAX_REQUEST: usize = 8 * 1024;

/// The least a server can do for a room envelope: a reference for the
/// bench's room scenario.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// One member's connection: its socket, and what could not be written yet.
struct Member {
    stream: TcpStream,
    /// Bytes of copies a full socket did not take, written in order by the
    /// member's flusher before anything new.
    backlog: RefCell<Vec<u8>>,
    drain: Notify,
}

impl Member {
    /// Writes `frame` now, or after what is already waiting.
    fn send(&self, frame: &[u8]) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => backlog.extend_from_slice(&frame[n..]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    backlog.extend_from_slice(frame);
                }
                Err(_) => return,
            }
            self.drain.notify_one();
        } else {
            backlog.extend_from_slice(frame);
        }
    }

    /// Writes the backlog whenever there is one, until the socket fails.
    async fn flush(self: Rc<Self>) {
        loop {
            self.drain.notified().await;
            while !self.backlog.borrow().is_empty() {
                if self.stream.writable().await.is_err() {
                    return;
                }
                let mut backlog = self.backlog.borrow_mut();
                match self.stream.try_write(&backlog) {
                    Ok(n) => {
                        backlog.drain(..n);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

type Rooms = Rc<RefCell<HashMap<String, Vec<Rc<Member>>>>>;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let listener = TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("binding {}", cli.listen))?;
        println!("listening on {}", listener.local_addr()?);
        serve(listener).await
    })
}

/// Accepts connections until the listener fails; each one is served on
/// this thread.
async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let rooms: Rooms = Rc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(connection(stream, rooms.clone()));
    }
}

/// Serves one connection until it ends, then takes it out of its room.
async fn connection(mut stream: TcpStream, rooms: Rooms) {
    if handshake(&mut stream).await.is_err() {
        return;
    }
    let member = Rc::new(Member {
        stream,
        backlog: RefCell::default(),
        drain: Notify::new(),
    });
    let flusher = tokio::task::spawn_local(member.clone().flush());
    let mut room = None;
    let _ = read_frames(&member, &rooms, &mut room).await;
    flusher.abort();
    if let Some(room) = room {
        let mut rooms = rooms.borrow_mut();
        if let Some(members) = rooms.get_mut(&room) {
            members.retain(|m| !Rc::ptr_eq(m, &member));
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
}

/// Answers the HTTP upgrade (RFC 6455 §4.2.2) and greets the client.
async fn handshake(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut request = Vec::with_capacity(1024);
    while !request.ends_with(b"\r\n\r\n") {
        if request.len() >= MAX_REQUEST || stream.read_buf(&mut request).await? == 0 {
            anyhow::bail!("no complete upgrade request");
        }
    }
    let text = std::str::from_utf8(&request)?;
    let key = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim())
        })
        .context("no Sec-WebSocket-Key")?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(&frame(br#"{"type":"WELCOME"}"#)).await?;
    Ok(())
}

/// Reads frames until the connection ends: the first joins a room, every
/// later one goes to the room's other members.
async fn read_frames(
    member: &Rc<Member>,
    rooms: &Rooms,
    room: &mut Option<String>,
) -> anyhow::Result<()> {
    // Room for a whole frame left over from the last read, and one read.
    let mut buf = vec![0u8; MAX_FRAME + 14 + READ_BYTES];
    let mut filled = 0;
    loop {
        member.stream.readable().await?;
        let free = buf.len() - filled;
        let mut got = 0;
        // A short read means the socket had nothing more: readiness is
        // cleared without the extra `read` that would say so.
        let read = member.stream.try_io(Interest::READABLE, || {
            got = member.stream.try_read(&mut buf[filled..])?;
            if got == 0 || got == free {
                Ok(())
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match read {
            Ok(()) if got == 0 => return Ok(()),
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err.into()),
        }
        filled += got;
        let mut at = 0;
        while let Some((opcode, payload, next)) = parse(&mut buf[at..filled])? {
            match opcode {
                0x1 | 0x2 => {
                    let payload = &buf[at..][payload];
                    match room {
                        None => {
                            let name = room_name(payload).context("first frame names no room")?;
                            rooms
                                .borrow_mut()
                                .entry(name.clone())
                                .or_default()
                                .push(member.clone());
                            *room = Some(name);
                            member.send(&frame(br#"{"type":"JOINED"}"#));
                        }
                        Some(name) => {
                            let copy = frame(payload);
                            let rooms = rooms.borrow();
                            for other in rooms.get(name).into_iter().flatten() {
                                if !Rc::ptr_eq(other, member) {
                                    other.send(&copy);
                                }
                            }
                        }
                    }
                }
                0x8 => return Ok(()),
                _ => {}
            }
            at += next;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
    }
}

/// The next complete frame in `buf` (unmasked in place): its opcode, the
/// payload's range, and the frame's length; `None` until it is complete.
fn parse(buf: &mut [u8]) -> anyhow::Result<Option<(u8, std::ops::Range<usize>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x80 == 0 {
        anyhow::bail!("fragmented frames are not supported");
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(be))?, 10)
        }
        126 | 127 => return Ok(None),
        len => (usize::from(len), 2),
    };
    if len > MAX_FRAME {
        anyhow::bail!("frame of {len} bytes");
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(mask)
    } else {
        None
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    if let Some(mask) = mask {
        for (i, byte) in buf[at..at + len].iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }
    Ok(Some((opcode, at..at + len, at + len)))
}

/// A server's text frame holding `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// The room a `JOIN` names: the string after `"room":"`.
fn room_name(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let start = text.find("\"room\":\"")? + 8;
    let end = start + text[start..].find('"')?;
    Some(text[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    async fn next_text(client: &mut Client) -> String {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), client.next())
            .await
            .expect("a frame in time")
            .expect("the connection open")
            .expect("a valid frame");
        message.into_text().expect("text").to_string()
    }

    async fn member(addr: SocketAddr, room: &str) -> Client {
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/floor"))
            .await
            .expect("connect");
        assert_eq!(next_text(&mut client).await, r#"{"type":"WELCOME"}"#);
        let join = format!(r#"{{"type":"JOIN","payload":{{"room":"{room}"}}}}"#);
        client.send(Message::text(join)).await.expect("join");
        assert_eq!(next_text(&mut client).await, r#"{"type":"JOINED"}"#);
        client
    }

    #[tokio::test]
    async fn every_other_member_of_the_room_gets_each_frame_once_in_order() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let server = tokio::task::spawn_local(serve(listener));
                let mut a = member(addr, "r1").await;
                let mut b = member(addr, "r1").await;
                let mut c = member(addr, "r1").await;
                let mut other = member(addr, "r2").await;
                for i in 0..100 {
                    a.feed(Message::text(format!("a{i}"))).await.unwrap();
                }
                a.flush().await.unwrap();
                c.send(Message::text("c0")).await.unwrap();
                for receiver in [&mut b, &mut c] {
                    for i in 0..100 {
                        assert_eq!(next_text(receiver).await, format!("a{i}"));
                    }
                }
                assert_eq!(next_text(&mut b).await, "c0");
                assert_eq!(next_text(&mut a).await, "c0");
                other.send(Message::text("o0")).await.unwrap();
                // Nobody else is in r2, and the sender gets no copy of its own.
                for client in [&mut a, &mut c, &mut other] {
                    let next =
                        tokio::time::timeout(std::time::Duration::from_millis(200), client.next());
                    assert!(next.await.is_err(), "an unexpected frame");
                }
                server.abort();
            })
            .await;
    }

    #[tokio::test]
    async fn a_member_that_does_not_read_holds_nobody_back_and_loses_nothing() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let server = tokio::task::spawn_local(serve(listener));
                let mut a = member(addr, "r").await;
                let mut b = member(addr, "r").await;
                let mut slow = member(addr, "r").await;
                // Far more than the socket buffers hold: `slow`'s copies
                // wait in its backlog while `b` reads everything.
                let pad = "x".repeat(60_000);
                for i in 0..400 {
                    a.send(Message::text(format!("{i} {pad}"))).await.unwrap();
                    assert_eq!(next_text(&mut b).await, format!("{i} {pad}"));
                }
                for i in 0..400 {
                    assert_eq!(next_text(&mut slow).await, format!("{i} {pad}"));
                }
                server.abort();
            })
            .await;
    }

    #[test]
    fn frames_round_trip_through_the_parser() {
        for len in [0, 125, 126, 300, 70_000] {
            let payload = vec![b'x'; len.min(MAX_FRAME)];
            let mut framed = frame(&payload);
            let (opcode, range, next) = parse(&mut framed).unwrap().unwrap();
            assert_eq!(
                (opcode, &framed[range], next),
                (1, &payload[..], framed.len())
            );
            assert_eq!(parse(&mut framed[..next - 1]).unwrap(), None);
        }
    }

    #[test]
    fn masked_frames_are_unmasked() {
        let mut framed = vec![0x81, 0x80 | 3, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3];
        let (_, range, _) = parse(&mut framed).unwrap().unwrap();
        assert_eq!(&framed[range], b"abc");
    }

    #[test]
    fn the_join_names_the_room() {
        assert_eq!(
            room_name(br#"{"type":"JOIN","payload":{"room":"room3"}}"#).as_deref(),
            Some("room3")
        );
        assert_eq!(room_name(br#"{"type":"JOIN"}"#), None);
    }
}
