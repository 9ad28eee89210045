//! The transports a connection can arrive on, by the names the wire, the
//! logs, the metrics and the cluster's shared state use.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RFC 6455 WebSocket over HTTP/1.1 (axum).
    WebSocket,
    /// WebTransport over HTTP/3 (quinn + h3).
    WebTransport,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::WebTransport];

    /// This transport's position in [`Transport::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Transport::WebSocket => 0,
            Transport::WebTransport => 1,
        }
    }

    /// The name used on the wire and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::WebTransport => "webtransport",
        }
    }
}

/// A name that is no transport's (another version's node wrote it, or the
/// shared state was edited by hand).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{0:?} is no transport (expected \"websocket\" or \"webtransport\")")]
pub struct UnknownTransport(pub String);

impl FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Transport::ALL
            .into_iter()
            .find(|transport| transport.as_str() == name)
            .ok_or_else(|| UnknownTransport(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_reads_back_from_its_name() {
        for transport in Transport::ALL {
            assert_eq!(transport.as_str().parse(), Ok(transport));
        }
        assert_eq!(
            "carrier-pigeon".parse::<Transport>(),
            Err(UnknownTransport("carrier-pigeon".into()))
        );
    }
}
