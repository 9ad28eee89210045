//! Where the gateway listens, as flags.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use clap::Args;

/// Where the gateway listens, as flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listen")]
pub struct ListenArgs {
    /// TCP address for HTTP and WebSocket. `localhost:PORT` binds both
    /// 127.0.0.1 and ::1; the default listens on every interface, IPv4 and
    /// IPv6.
    #[arg(long, env = "SIGNAL_LISTEN", default_value = "[::]:8000")]
    pub listen: ListenAddr,

    /// UDP address for WebTransport over HTTP/3 [default: the --listen
    /// address and port]
    #[arg(long, env = "SIGNAL_WT_LISTEN")]
    pub wt_listen: Option<ListenAddr>,

    /// Also serve HTTPS and WSS on the TCP listener, with the same
    /// certificate as WebTransport, and advertise HTTP/3 with Alt-Svc.
    #[arg(long, env = "SIGNAL_TLS")]
    pub tls: bool,
}

impl ListenArgs {
    /// The WebTransport address: --wt-listen, or the --listen address.
    pub fn wt_listen(&self) -> ListenAddr {
        self.wt_listen.unwrap_or(self.listen)
    }
}

/// Where to listen: one socket address, or both loopback addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// One address, e.g. `[::]:8000` or `127.0.0.1:0`.
    Socket(SocketAddr),
    /// `localhost:PORT`: 127.0.0.1 and ::1 on the same port (browsers try
    /// ::1 first for `localhost`).
    Localhost(u16),
}

impl ListenAddr {
    /// The addresses to bind, first one first (port 0 is resolved by the
    /// first bind and reused for the second).
    pub fn addrs(self) -> Vec<SocketAddr> {
        match self {
            ListenAddr::Socket(addr) => vec![addr],
            ListenAddr::Localhost(port) => vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            ],
        }
    }

    /// The port asked for (0 means "any").
    pub fn port(self) -> u16 {
        match self {
            ListenAddr::Socket(addr) => addr.port(),
            ListenAddr::Localhost(port) => port,
        }
    }

    /// The same addresses on another port.
    pub fn with_port(self, port: u16) -> Self {
        match self {
            ListenAddr::Socket(addr) => ListenAddr::Socket(SocketAddr::new(addr.ip(), port)),
            ListenAddr::Localhost(_) => ListenAddr::Localhost(port),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("localhost:") {
            return port
                .parse()
                .map(ListenAddr::Localhost)
                .map_err(|_| format!("{s:?}: the port must be a number from 0 to 65535"));
        }
        s.parse().map(ListenAddr::Socket).map_err(|_| {
            format!("{s:?} is not an address like [::]:8000, 127.0.0.1:8000 or localhost:8000")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Socket(addr) => addr.fmt(f),
            ListenAddr::Localhost(port) => write!(f, "localhost:{port}"),
        }
    }
}
