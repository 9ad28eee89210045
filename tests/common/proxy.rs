//! Test-controlled proxies between a client and the gateway, to cut a
//! connection the way networks do: a TCP proxy that first freezes (stops
//! carrying bytes either way, so the gateway keeps writing into a path
//! that goes nowhere) and then resets both sides; a UDP proxy that stops
//! forwarding (a dropped path: QUIC sees silence, then its idle timeout).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does with bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Open,
    Frozen,
    Reset,
}

/// A TCP proxy to one upstream address; every connection through it is
/// cut together.
pub struct TcpProxy {
    pub addr: SocketAddr,
    path: watch::Sender<Path>,
    tasks: JoinSet<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and carries each connection
    /// to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (path, watching) = watch::channel(Path::Open);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if *watching.borrow() != Path::Open {
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                connections.spawn(carry(client, server, watching.clone()));
            }
        });
        Self { addr, path, tasks }
    }

    /// Stops carrying bytes either way; the sockets stay open, so the
    /// gateway's writes pile up in its socket buffer, unread.
    pub fn freeze(&self) {
        self.path.send_replace(Path::Frozen);
    }

    /// Resets both sides of every connection (RST, no FIN), and refuses new
    /// ones.
    pub fn reset(&self) {
        self.path.send_replace(Path::Reset);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Carries one connection until the path is reset.
async fn carry(client: TcpStream, server: TcpStream, mut path: watch::Receiver<Path>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        let state = *path.borrow_and_update();
        match state {
            Path::Reset => break,
            Path::Frozen => {
                if path.changed().await.is_err() {
                    break;
                }
            }
            Path::Open => {
                tokio::select! {
                    read = client_read.read(&mut up) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { break },
                    },
                    read = server_read.read(&mut down) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { break },
                    },
                    changed = path.changed() => if changed.is_err() { break },
                }
            }
        }
    }
    // A linger of zero makes the close a reset.
    for stream in [
        client_read.reunite(client_write),
        server_read.reunite(server_write),
    ]
    .into_iter()
    .flatten()
    {
        #[expect(
            deprecated,
            reason = "a linger of zero resets at once; it never blocks"
        )]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    }
}

/// A UDP proxy to one upstream address (a QUIC endpoint): each client
/// address gets a socket of its own toward the upstream.
pub struct UdpProxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl UdpProxy {
    /// Binds an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let (open, watching) = watch::channel(true);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut routes: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut back = JoinSet::new();
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                if !*watching.borrow() {
                    continue;
                }
                let socket = match routes.get(&client) {
                    Some(socket) => socket.clone(),
                    None => {
                        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        socket.connect(upstream).await.unwrap();
                        routes.insert(client, socket.clone());
                        back.spawn(answer(
                            socket.clone(),
                            front.clone(),
                            client,
                            watching.clone(),
                        ));
                        socket
                    }
                };
                let _ = socket.send(&buf[..n]).await;
            }
        });
        Self { addr, open, tasks }
    }

    /// Stops forwarding either way, for good: the path is gone.
    pub fn drop_path(&self) {
        self.open.send_replace(false);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Carries the upstream's datagrams back to `client` while the path is
/// open.
async fn answer(
    socket: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    open: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = socket.recv(&mut buf).await {
        if *open.borrow() {
            let _ = front.send_to(&buf[..n], client).await;
        }
    }
}
