//! Every limit the routing core enforces, with its default and the reason
//! for it. Transports read their own limits (frame sizes, timeouts) from the
//! same struct, so one `Limits` describes the whole gateway. Zero is never
//! "unbounded": the configuration layer refuses it.

use std::num::NonZeroU32;
use std::time::Duration;

/// Largest envelope, in bytes: 64 KiB, Centrifugo's default for WebSocket and
/// WebTransport. An SDP offer with candidates is a few KiB.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// Deepest payload nesting. SDP/ICE payloads nest 2–3 levels; serde_json's
/// own hard limit is 128.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;
/// Envelopes waiting for one connection before it counts as a slow consumer
/// (socketioxide uses 128 packets; a call set-up is 20–30 envelopes).
pub const DEFAULT_QUEUE_ENVELOPES: usize = 256;
/// Bytes waiting for one connection before it counts as a slow consumer
/// (Centrifugo's `client.queue_max_size` is 1 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 1024 * 1024;
/// How long one socket write may stall before the reader is dropped as a
/// slow consumer (Centrifugo uses 1 s; 5 s forgives a mobile hiccup).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that sends nothing, not even a pong or a QUIC ACK, for this
/// long is dead and leaves the registry.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the gateway pings (WebSocket) or sends a QUIC keep-alive; a
/// third of the idle timeout leaves room for two lost probes.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6);
/// A WebTransport client must open its stream this soon after the session
/// is accepted (Centrifugo's `bidiStreamAcceptTimeout`).
pub const DEFAULT_STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must finish its TLS or QUIC handshake and send its HTTP request
/// head within this time; slow-drip (slowloris) clients are cut off.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Inbound envelopes per second per connection. Signalling is bursty (ICE
/// candidates come in a rush) but low on average.
pub const DEFAULT_ENVELOPE_RATE: u32 = 50;
/// Envelopes a connection may send at once before the rate applies.
pub const DEFAULT_ENVELOPE_BURST: u32 = 200;
/// Live realtime connections across both transports.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// New realtime connections per second per client IP.
pub const DEFAULT_CONNECT_RATE_PER_IP: u32 = 20;
/// Connections one IP may open at once before the rate applies.
pub const DEFAULT_CONNECT_BURST_PER_IP: u32 = 100;
/// Registrations per second per client IP.
pub const DEFAULT_REGISTER_RATE_PER_IP: u32 = 5;
/// Registrations one IP may make at once before the rate applies.
pub const DEFAULT_REGISTER_BURST_PER_IP: u32 = 50;
/// Registered identities held at once.
pub const DEFAULT_MAX_IDENTITIES: usize = 100_000;
/// An identity unseen for this long expires and its name becomes free.
pub const DEFAULT_IDENTITY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The limits in force.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`DEFAULT_MAX_ENVELOPE_BYTES`].
    pub max_envelope_bytes: usize,
    /// See [`DEFAULT_MAX_JSON_DEPTH`].
    pub max_json_depth: usize,
    /// See [`DEFAULT_QUEUE_ENVELOPES`].
    pub queue_envelopes: usize,
    /// See [`DEFAULT_QUEUE_BYTES`].
    pub queue_bytes: usize,
    /// See [`DEFAULT_WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`DEFAULT_KEEP_ALIVE_INTERVAL`].
    pub keep_alive_interval: Duration,
    /// See [`DEFAULT_STREAM_OPEN_TIMEOUT`].
    pub stream_open_timeout: Duration,
    /// See [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`DEFAULT_ENVELOPE_RATE`].
    pub envelope_rate: NonZeroU32,
    /// See [`DEFAULT_ENVELOPE_BURST`].
    pub envelope_burst: NonZeroU32,
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DEFAULT_CONNECT_RATE_PER_IP`].
    pub connect_rate_per_ip: NonZeroU32,
    /// See [`DEFAULT_CONNECT_BURST_PER_IP`].
    pub connect_burst_per_ip: NonZeroU32,
    /// See [`DEFAULT_REGISTER_RATE_PER_IP`].
    pub register_rate_per_ip: NonZeroU32,
    /// See [`DEFAULT_REGISTER_BURST_PER_IP`].
    pub register_burst_per_ip: NonZeroU32,
    /// See [`DEFAULT_MAX_IDENTITIES`].
    pub max_identities: usize,
    /// See [`DEFAULT_IDENTITY_TTL`].
    pub identity_ttl: Duration,
}

const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            queue_envelopes: DEFAULT_QUEUE_ENVELOPES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keep_alive_interval: DEFAULT_KEEP_ALIVE_INTERVAL,
            stream_open_timeout: DEFAULT_STREAM_OPEN_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            envelope_rate: nz(DEFAULT_ENVELOPE_RATE),
            envelope_burst: nz(DEFAULT_ENVELOPE_BURST),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_rate_per_ip: nz(DEFAULT_CONNECT_RATE_PER_IP),
            connect_burst_per_ip: nz(DEFAULT_CONNECT_BURST_PER_IP),
            register_rate_per_ip: nz(DEFAULT_REGISTER_RATE_PER_IP),
            register_burst_per_ip: nz(DEFAULT_REGISTER_BURST_PER_IP),
            max_identities: DEFAULT_MAX_IDENTITIES,
            identity_ttl: DEFAULT_IDENTITY_TTL,
        }
    }
}
