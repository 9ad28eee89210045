//! Clients of the systems under test, behind one interface: how to get an
//! identity (register or a JWT, a PeerJS id, or just a name for socket.io),
//! how to connect, and how to move batches of envelopes.
//!
//! WebSocket uses tokio-tungstenite, as the gateway's tests do, for the
//! gateway (in the clear or over TLS, see [`crate::tls`]), PeerJS and
//! socket.io alike (socket.io's Engine.IO handshake and pings are handled
//! on top of it, see [`crate::socketio`]); WebTransport
//! uses wtransport, an HTTP/3 stack independent of the gateway's h3, with a
//! few shared UDP endpoints (one endpoint per connection makes QUIC set-up
//! needlessly slow on the client). Reads take every envelope already
//! received before returning and writes go out with one flush, so the
//! generator stays cheap per envelope.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wtransport::endpoint::endpoint_side;

use crate::http::HttpClient;
use crate::identity::{self, Minter};
use crate::tls::{self, Stream};
use crate::wire::{self, System};
use crate::{Common, IO_TIMEOUT, socketio};

/// Envelopes taken per read before handing them to the caller.
const READ_BATCH: usize = 256;
/// Free room ensured in a WebTransport line buffer before each read.
const WT_READ_ROOM: usize = 8 * 1024;
/// tungstenite's per-connection read buffer: enough for several 4 KiB
/// envelopes per read, small enough for 10k idle connections.
const WS_READ_BUFFER: usize = 16 * 1024;
/// Frames are written out once this much is buffered, or on flush.
const WS_WRITE_BUFFER: usize = 64 * 1024;
/// Socket buffers of the generator's UDP sockets.
const GENERATOR_UDP_BUFFER: usize = 8 << 20;
/// The client's QUIC idle timeout; the server's keep-alives (every few
/// seconds) keep idle sessions open, so the client sends none of its own.
const WT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<Stream>;
type WtEndpoint = wtransport::Endpoint<endpoint_side::Client>;

/// Where the system under test listens, and what every connection shares.
pub struct Target {
    /// The system.
    pub system: System,
    /// HTTP and WebSocket address.
    pub http: SocketAddr,
    /// WebTransport (UDP) address.
    pub wt: SocketAddr,
    /// TLS on the TCP port (`wss`).
    tls: Option<TlsConnector>,
    /// JWTs instead of registered names (gateway only).
    minter: Option<Minter>,
    endpoints: Vec<WtEndpoint>,
    next_endpoint: AtomicUsize,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("system", &self.system)
            .field("http", &self.http)
            .field("wt", &self.wt)
            .field("tls", &self.tls.is_some())
            .field("minter", &self.minter)
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

impl Target {
    /// Prepares clients for the system in `common`. For WebTransport,
    /// fetches the certificate hash to pin and opens the client endpoints;
    /// for WSS, loads the certificate to trust; for JWT identities, the key.
    pub async fn new(common: &Common) -> anyhow::Result<Self> {
        Self::at(common, common.addr, common.wt_addr.unwrap_or(common.addr)).await
    }

    /// The same, for the server at `http` (HTTP and WebSocket) and `wt`
    /// (WebTransport): another node of a cluster.
    pub async fn at(common: &Common, http: SocketAddr, wt: SocketAddr) -> anyhow::Result<Self> {
        let system = common.system;
        let tls = match (system, &common.tls_cert) {
            (System::Wss, Some(cert)) => Some(tls::connector(cert)?),
            (System::Wss, None) => bail!("--system wss needs --tls-cert"),
            _ => None,
        };
        let minter = Minter::new(
            common.identity,
            common.jwt_secret.as_deref(),
            common.jwt_key.as_deref(),
        )?;
        if minter.is_some() && !system.is_gateway() {
            bail!("JWT identities are for the gateway only");
        }
        let mut pool = Vec::new();
        if system == System::Wt {
            let hash = cert_hash(http).await?;
            for _ in 0..common.wt_endpoints.max(1) {
                let config = wtransport::ClientConfig::builder()
                    .with_bind_socket(generator_udp_socket()?)
                    .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
                    .max_idle_timeout(Some(WT_IDLE_TIMEOUT))
                    .context("idle timeout")?
                    .keep_alive_interval(None)
                    .build();
                pool.push(WtEndpoint::client(config).context("opening a QUIC endpoint")?);
            }
        }
        Ok(Self {
            system,
            http,
            wt,
            tls,
            minter,
            endpoints: pool,
            next_endpoint: AtomicUsize::new(0),
        })
    }

    /// A keep-alive HTTP client for the server (over TLS for `wss`).
    pub fn http_client(&self) -> HttpClient {
        HttpClient::new(self.http, self.tls.clone())
    }

    /// An identity to connect with, `(name, token)`: on the gateway,
    /// registers `name`, or mints a JWT for it. For PeerJS, uses `name` as
    /// the id, or asks the server for one (`GET /peerjs/id`) when `name` is
    /// `None`, with a client-chosen token, as the PeerJS client library
    /// does. socket.io has no such step: the name travels in the CONNECT
    /// packet, and there is no token.
    pub async fn identity(
        &self,
        http: &mut HttpClient,
        name: Option<&str>,
        serial: u64,
    ) -> anyhow::Result<(String, String)> {
        if matches!(self.system, System::Socketio | System::Floor) {
            let name = name.context("socket.io users pick their own name")?;
            Ok((name.to_owned(), String::new()))
        } else if self.system.is_gateway() {
            let name = name.context("the gateway needs a username")?;
            let token = match &self.minter {
                Some(minter) => minter.mint(name)?,
                None => identity::register(http, name).await?,
            };
            Ok((name.to_owned(), token))
        } else {
            let id = match name {
                Some(name) => name.to_owned(),
                None => {
                    let (status, body) = http.get("/peerjs/id").await?;
                    if status != 200 {
                        bail!("GET /peerjs/id answered {status}");
                    }
                    String::from_utf8(body).context("PeerJS id is not UTF-8")?
                }
            };
            Ok((id, format!("tk{serial:x}")))
        }
    }

    /// Connects as `name` and waits for the server's first envelope
    /// (`WELCOME` from the gateway, `OPEN` from PeerJS, the CONNECT
    /// acknowledgement from socket.io).
    pub async fn connect(&self, name: &str, token: &str) -> anyhow::Result<Conn> {
        let mut conn = tokio::time::timeout(IO_TIMEOUT, self.open(name, token))
            .await
            .context("connect timed out")??;
        let mut first = Vec::new();
        let open = tokio::time::timeout(IO_TIMEOUT, conn.recv_batch(&mut first))
            .await
            .context("no first envelope")??;
        match first.first() {
            Some(frame) if open && wire::is_greeting(self.system, frame) => Ok(conn),
            _ => bail!(
                "expected the {} greeting first, got {:?}",
                self.system.server(),
                first
                    .first()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
            ),
        }
    }

    async fn open(&self, name: &str, token: &str) -> anyhow::Result<Conn> {
        match self.system {
            System::Ws | System::Wss | System::Peerjs | System::Socketio | System::Floor => {
                let url = match self.system {
                    System::Peerjs => format!(
                        "ws://{}/peerjs?key=peerjs&id={name}&token={token}",
                        self.http
                    ),
                    System::Socketio => format!("ws://{}{}", self.http, socketio::PATH),
                    System::Floor => format!("ws://{}/floor", self.http),
                    System::Wss => format!("wss://{}/v1/connect?token={token}", self.http),
                    _ => format!("ws://{}/v1/connect?token={token}", self.http),
                };
                let config = WebSocketConfig::default()
                    .read_buffer_size(WS_READ_BUFFER)
                    .write_buffer_size(WS_WRITE_BUFFER);
                let stream = tls::connect(self.http, self.tls.as_ref()).await?;
                let (mut ws, _) =
                    tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
                let engine_io = self.system == System::Socketio;
                if engine_io {
                    socketio_handshake(&mut ws, name).await?;
                }
                Ok(Conn::Ws(Box::new(WsConn { ws, engine_io })))
            }
            System::Wt => {
                let index = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
                let endpoint = &self.endpoints[index % self.endpoints.len()];
                let url = format!("https://{}/v1/connect?token={token}", self.wt);
                let conn = endpoint.connect(url).await?;
                let (send, recv) = conn.open_bi().await?.await?;
                Ok(Conn::Wt(Box::new(WtConn {
                    conn,
                    send,
                    recv,
                    partial: BytesMut::new(),
                    out: Vec::new(),
                })))
            }
        }
    }
}

/// Takes socket.io's Engine.IO OPEN packet and sends the CONNECT with `name`;
/// the acknowledgement is the connection's first envelope.
async fn socketio_handshake(ws: &mut Ws, name: &str) -> anyhow::Result<()> {
    let open = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("expected the Engine.IO OPEN packet, got {other:?}"),
        }
    };
    if !socketio::is_open(open.as_bytes()) {
        bail!("expected the Engine.IO OPEN packet, got {open:?}");
    }
    ws.send(Message::text(socketio::connect(name))).await?;
    Ok(())
}

/// A loopback UDP socket for a client endpoint, with a receive buffer large
/// enough that the generator never drops datagrams (the kernel caps it at
/// `net.core.rmem_max`): packet loss, if any, is then the server's.
fn generator_udp_socket() -> anyhow::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(GENERATOR_UDP_BUFFER);
    let _ = socket.set_send_buffer_size(GENERATOR_UDP_BUFFER);
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(socket.into())
}

/// The gateway's certificate hash, to pin (`GET /v1/cert-hash`).
async fn cert_hash(http: SocketAddr) -> anyhow::Result<[u8; 32]> {
    let (status, body) = HttpClient::new(http, None).get("/v1/cert-hash").await?;
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    let hex = value["hex"].as_str().context("no hex in /v1/cert-hash")?;
    if status != 200 || hex.len() != 64 {
        bail!("bad /v1/cert-hash answer {status}: {value}");
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(hash)
}

/// One WebTransport session: the connection and its one bidirectional
/// stream of newline-terminated envelopes.
pub struct WtConn {
    conn: wtransport::Connection,
    send: wtransport::SendStream,
    recv: wtransport::RecvStream,
    partial: BytesMut,
    out: Vec<u8>,
}

/// One WebSocket connection. Over socket.io (`engine_io`), the server's
/// Engine.IO pings are answered here and never reach the caller, as the
/// socket.io client library answers them itself.
pub struct WsConn {
    ws: Ws,
    engine_io: bool,
}

/// A connection to the system under test.
pub enum Conn {
    /// WebSocket (gateway, PeerJS or socket.io).
    Ws(Box<WsConn>),
    /// WebTransport (gateway).
    Wt(Box<WtConn>),
}

impl Conn {
    /// Waits for at least one envelope, then also takes every envelope
    /// already received, appending them to `into`. Returns `false` once the
    /// connection has ended. Cancel-safe: nothing is lost if the future is
    /// dropped while waiting.
    pub async fn recv_batch(&mut self, into: &mut Vec<Bytes>) -> anyhow::Result<bool> {
        match self {
            Conn::Ws(conn) => {
                let WsConn { ws, engine_io } = &mut **conn;
                let is_ping = |frame: &Bytes| *engine_io && frame[..] == *socketio::PING;
                loop {
                    let frame: Bytes = match ws.next().await {
                        Some(Ok(Message::Text(text))) => text.into(),
                        Some(Ok(Message::Binary(data))) => data,
                        Some(Ok(Message::Close(_))) | None => return Ok(false),
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Err(err.into()),
                    };
                    if is_ping(&frame) {
                        // Answered before waiting on: an idle client must
                        // answer too. If this future is dropped meanwhile,
                        // the pong is already in tungstenite's write buffer
                        // and leaves with the next flush.
                        ws.send(Message::text(socketio::PONG)).await?;
                        continue;
                    }
                    into.push(frame);
                    break;
                }
                let mut pong = false;
                for _ in 1..READ_BATCH {
                    let frame: Bytes = match ws.next().now_or_never() {
                        Some(Some(Ok(Message::Text(text)))) => text.into(),
                        Some(Some(Ok(Message::Binary(data)))) => data,
                        Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                        _ => break,
                    };
                    if is_ping(&frame) {
                        pong = true;
                    } else {
                        into.push(frame);
                    }
                }
                if pong {
                    ws.send(Message::text(socketio::PONG)).await?;
                }
                Ok(true)
            }
            Conn::Wt(wt) => loop {
                if wt.take_lines(into) {
                    return Ok(true);
                }
                // Read straight into the line buffer's spare room; the
                // read takes everything the stream has, up to that room.
                let WtConn { recv, partial, .. } = &mut **wt;
                let start = partial.len();
                partial.reserve(WT_READ_ROOM);
                let room = partial.capacity();
                partial.resize(room, 0);
                // If this future is dropped while waiting (a `select!`),
                // nothing was read and the guard cuts the room off again.
                let mut filling = Filling {
                    buf: partial,
                    keep: start,
                };
                match recv.read(&mut filling.buf[start..]).await {
                    Ok(Some(n)) => filling.keep = start + n,
                    Ok(None) => return Ok(false),
                    Err(err) => return Err(err.into()),
                }
            },
        }
    }

    /// Sends `texts` (envelopes without terminators) with one flush, and
    /// empties the vector.
    pub async fn send(&mut self, texts: &mut Vec<String>) -> anyhow::Result<()> {
        match self {
            Conn::Ws(conn) => {
                for text in texts.drain(..) {
                    conn.ws.feed(Message::text(text)).await?;
                }
                conn.ws.flush().await?;
            }
            Conn::Wt(wt) => {
                wt.out.clear();
                for text in texts.drain(..) {
                    wt.out.extend_from_slice(text.as_bytes());
                    wt.out.push(b'\n');
                }
                wt.send.write_all(&wt.out).await?;
            }
        }
        Ok(())
    }

    /// Closes cleanly, without waiting long for the server.
    pub async fn close(self) {
        match self {
            Conn::Ws(mut conn) => {
                let _ = tokio::time::timeout(
                    Duration::from_millis(200),
                    WebSocketStream::close(&mut conn.ws, None),
                )
                .await;
            }
            Conn::Wt(wt) => {
                let mut wt = *wt;
                let _ = tokio::time::timeout(Duration::from_millis(200), wt.send.finish()).await;
                wt.conn.close(0u32.into(), b"bye");
            }
        }
    }
}

/// Cuts a buffer back to the bytes really read when a read ends, however
/// it ends (including cancellation).
struct Filling<'a> {
    buf: &'a mut BytesMut,
    keep: usize,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.keep);
    }
}

impl WtConn {
    /// Moves every complete line out of the partial buffer; returns whether
    /// there was one.
    fn take_lines(&mut self, into: &mut Vec<Bytes>) -> bool {
        let mut took = false;
        while let Some(end) = memchr::memchr(b'\n', &self.partial) {
            let line = self.partial.split_to(end + 1).freeze();
            if end > 0 {
                into.push(line.slice(..end));
                took = true;
            }
        }
        took
    }
}
