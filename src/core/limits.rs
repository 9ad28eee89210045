//! Every limit the routing core enforces, with its default and the reason
//! for it. Transports read their own limits (frame sizes, timeouts) from the
//! same struct, so one `Limits` describes the whole gateway. Zero is never
//! "unbounded": the configuration layer refuses it.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use super::resume;
use super::rooms::RoomPolicy;

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
/// Identities registered from one client IP (or IPv6 /64) held at once, so
/// one address cannot squat the namespace (an office behind one NAT still
/// fits).
pub const DEFAULT_MAX_IDENTITIES_PER_IP: usize = 1000;
/// QUIC connections that have not yet authenticated a WebTransport session
/// (handshake, plain HTTP/3 requests, the CONNECT itself), across all
/// clients. They are counted apart from `--max-connections`, so
/// unauthenticated work never takes the slots authenticated users need.
/// At the worst case per connection (see [`DEFAULT_PRE_SESSION_BYTES`])
/// this bounds unauthenticated QUIC memory to about 200 MiB.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1024;
/// Unauthenticated QUIC connections from one client IP (or IPv6 /64).
pub const DEFAULT_MAX_PENDING_PER_IP: usize = 32;
/// Bytes an unauthenticated QUIC connection may send on all its streams
/// together (HTTP/3 SETTINGS, QPACK streams, request heads and bodies):
/// h3 buffers a whole frame before decoding it, whatever length it
/// declares, so this is what bounds it. A browser's handshake and CONNECT
/// take a few hundred bytes.
pub const DEFAULT_PRE_SESSION_BYTES: usize = 64 * 1024;
/// Plain HTTP/3 requests one unauthenticated QUIC connection may make.
pub const DEFAULT_PRE_SESSION_REQUESTS: usize = 32;
/// In a cluster, how long a node waits to hear how an envelope it sent to
/// another node ended before answering its sender `UNCONFIRMED`: longer
/// than the target's write timeout, after which the target's node has
/// written it or reported it undelivered.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The key per-IP limits use: an IPv4 address as it is, an IPv6 address
/// by its /64 (what one subscriber or host is usually given, so one client
/// cannot dodge a per-IP limit by rotating through its own addresses).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

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
    /// See [`DEFAULT_MAX_IDENTITIES_PER_IP`].
    pub max_identities_per_ip: usize,
    /// See [`DEFAULT_MAX_PENDING_CONNECTIONS`].
    pub max_pending_connections: usize,
    /// See [`DEFAULT_MAX_PENDING_PER_IP`].
    pub max_pending_per_ip: usize,
    /// See [`DEFAULT_PRE_SESSION_BYTES`].
    pub pre_session_bytes: usize,
    /// See [`DEFAULT_PRE_SESSION_REQUESTS`].
    pub pre_session_requests: usize,
    /// See [`DEFAULT_DELIVERY_TIMEOUT`].
    pub delivery_timeout: Duration,
    /// See [`resume::DEFAULT_RESUME_WINDOW`].
    pub resume_window: Duration,
    /// See [`resume::DEFAULT_RESUME_BUFFER`].
    pub resume_buffer: usize,
    /// See [`resume::DEFAULT_RESUME_BUFFER_BYTES`].
    pub resume_buffer_bytes: usize,
    /// See [`resume::DEFAULT_RESUME_MEMORY`].
    pub resume_memory: usize,
    /// See [`super::hub::DEFAULT_HANDOFF_WAIT`].
    pub handoff_wait: Duration,
    /// See [`super::rooms::DEFAULT_MAX_ROOM_MEMBERS`].
    pub max_room_members: usize,
    /// See [`super::rooms::DEFAULT_MAX_ROOMS_PER_USER`].
    pub max_rooms_per_user: usize,
    /// Who may join rooms without a JWT `rooms` claim.
    pub rooms: RoomPolicy,
}

impl Limits {
    /// The bounds of the users' streams.
    pub fn resume(&self) -> resume::ResumeLimits {
        resume::ResumeLimits {
            buffer: self.resume_buffer,
            buffer_bytes: self.resume_buffer_bytes,
            window: self.resume_window,
            memory: self.resume_memory,
        }
    }
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
            max_identities_per_ip: DEFAULT_MAX_IDENTITIES_PER_IP,
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
            max_pending_per_ip: DEFAULT_MAX_PENDING_PER_IP,
            pre_session_bytes: DEFAULT_PRE_SESSION_BYTES,
            pre_session_requests: DEFAULT_PRE_SESSION_REQUESTS,
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            resume_window: resume::DEFAULT_RESUME_WINDOW,
            resume_buffer: resume::DEFAULT_RESUME_BUFFER,
            resume_buffer_bytes: resume::DEFAULT_RESUME_BUFFER_BYTES,
            resume_memory: resume::DEFAULT_RESUME_MEMORY,
            handoff_wait: super::hub::DEFAULT_HANDOFF_WAIT,
            max_room_members: super::rooms::DEFAULT_MAX_ROOM_MEMBERS,
            max_rooms_per_user: super::rooms::DEFAULT_MAX_ROOMS_PER_USER,
            rooms: RoomPolicy::Any,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_keys_group_an_ipv6_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(other));
        assert_eq!(ip_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), v4, "IPv4-mapped is the IPv4 address");
    }
}
