//! The limits, as flags: each is declared once, with the [`Limits`] field
//! it fills.

use std::num::NonZeroU32;
use std::time::Duration;

use clap::Args;

use super::parse::{nonzero_duration, nonzero_usize};
use crate::core::limits::{self, Limits};
use crate::core::resume;
use crate::core::rooms::{self, RoomPolicy};

/// 16 KiB: ample for a browser's headers and cookies, small enough that a
/// flood of huge headers costs little (h3 leaves it unbounded by default).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// 16 KiB: a registration body is a few dozen bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

/// Declares [`LimitArgs`] and [`LimitArgs::core`] from one list: a row
/// is a flag, and `=> field` names the [`Limits`] field it fills (rows
/// without one are read by the transports directly).
macro_rules! limit_args {
    ($( $(#[$meta:meta])* $flag:ident: $ty:ty $(=> $core:ident)?, )*) => {
        /// The limits, as flags.
        #[derive(Debug, Clone, Args)]
        #[command(next_help_heading = "Limits")]
        pub struct LimitArgs {
            $( $(#[$meta])* pub $flag: $ty, )*
        }

        impl LimitArgs {
            /// The core's view of these limits.
            pub fn core(&self) -> Limits {
                Limits { $( $( $core: self.$flag, )? )* }
            }
        }
    };
}

limit_args! {
    /// Largest envelope in bytes (WebSocket message, WebTransport line);
    /// a bigger one closes the connection with 1009 MESSAGE_TOO_BIG.
    #[arg(long, env = "SIGNAL_MAX_ENVELOPE_BYTES", default_value_t = limits::DEFAULT_MAX_ENVELOPE_BYTES, value_parser = nonzero_usize)]
    max_envelope_bytes: usize => max_envelope_bytes,

    /// Deepest nesting of arrays/objects in a payload.
    #[arg(long, env = "SIGNAL_MAX_JSON_DEPTH", default_value_t = limits::DEFAULT_MAX_JSON_DEPTH, value_parser = nonzero_usize)]
    max_json_depth: usize => max_json_depth,

    /// Envelopes queued for one connection before it is disconnected as a
    /// slow consumer.
    #[arg(long, env = "SIGNAL_QUEUE_ENVELOPES", default_value_t = limits::DEFAULT_QUEUE_ENVELOPES, value_parser = nonzero_usize)]
    queue_envelopes: usize => queue_envelopes,

    /// Bytes queued for one connection before it is disconnected as a slow
    /// consumer.
    #[arg(long, env = "SIGNAL_QUEUE_BYTES", default_value_t = limits::DEFAULT_QUEUE_BYTES, value_parser = nonzero_usize)]
    queue_bytes: usize => queue_bytes,

    /// How long a socket write may stall before the connection is dropped
    /// as a slow consumer.
    #[arg(long, env = "SIGNAL_WRITE_TIMEOUT", default_value = "5s", value_parser = nonzero_duration)]
    write_timeout: Duration => write_timeout,

    /// A connection from which nothing arrives for this long (not even a
    /// pong or a QUIC acknowledgement) is closed.
    #[arg(long, env = "SIGNAL_IDLE_TIMEOUT", default_value = "20s", value_parser = nonzero_duration)]
    idle_timeout: Duration => idle_timeout,

    /// How often the gateway pings WebSocket clients and sends QUIC
    /// keep-alives; must be below --idle-timeout.
    #[arg(long, env = "SIGNAL_KEEP_ALIVE_INTERVAL", default_value = "6s", value_parser = nonzero_duration)]
    keep_alive_interval: Duration => keep_alive_interval,

    /// A WebTransport client must open its stream within this time.
    #[arg(long, env = "SIGNAL_STREAM_OPEN_TIMEOUT", default_value = "10s", value_parser = nonzero_duration)]
    stream_open_timeout: Duration => stream_open_timeout,

    /// A client must finish its TLS handshake and send each HTTP request
    /// head and body within this time (cuts off slow-drip clients); a QUIC
    /// connection must authenticate a WebTransport session within this
    /// time of its first packet, whatever else it does.
    #[arg(long, env = "SIGNAL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = nonzero_duration)]
    handshake_timeout: Duration => handshake_timeout,

    /// Inbound envelopes per second per connection.
    #[arg(long, env = "SIGNAL_ENVELOPE_RATE", default_value_t = NonZeroU32::new(limits::DEFAULT_ENVELOPE_RATE).unwrap_or(NonZeroU32::MIN))]
    envelope_rate: NonZeroU32 => envelope_rate,

    /// Inbound envelopes a connection may send in one burst.
    #[arg(long, env = "SIGNAL_ENVELOPE_BURST", default_value_t = NonZeroU32::new(limits::DEFAULT_ENVELOPE_BURST).unwrap_or(NonZeroU32::MIN))]
    envelope_burst: NonZeroU32 => envelope_burst,

    /// Live realtime connections across both transports.
    #[arg(long, env = "SIGNAL_MAX_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_CONNECTIONS, value_parser = nonzero_usize)]
    max_connections: usize => max_connections,

    /// New realtime connections per second per client IP.
    #[arg(long, env = "SIGNAL_CONNECT_RATE", default_value_t = NonZeroU32::new(limits::DEFAULT_CONNECT_RATE_PER_IP).unwrap_or(NonZeroU32::MIN))]
    connect_rate: NonZeroU32 => connect_rate_per_ip,

    /// New realtime connections one client IP may open in one burst.
    #[arg(long, env = "SIGNAL_CONNECT_BURST", default_value_t = NonZeroU32::new(limits::DEFAULT_CONNECT_BURST_PER_IP).unwrap_or(NonZeroU32::MIN))]
    connect_burst: NonZeroU32 => connect_burst_per_ip,

    /// Registrations per second per client IP.
    #[arg(long, env = "SIGNAL_REGISTER_RATE", default_value_t = NonZeroU32::new(limits::DEFAULT_REGISTER_RATE_PER_IP).unwrap_or(NonZeroU32::MIN))]
    register_rate: NonZeroU32 => register_rate_per_ip,

    /// Registrations one client IP may make in one burst.
    #[arg(long, env = "SIGNAL_REGISTER_BURST", default_value_t = NonZeroU32::new(limits::DEFAULT_REGISTER_BURST_PER_IP).unwrap_or(NonZeroU32::MIN))]
    register_burst: NonZeroU32 => register_burst_per_ip,

    /// Registered identities held at once.
    #[arg(long, env = "SIGNAL_MAX_IDENTITIES", default_value_t = limits::DEFAULT_MAX_IDENTITIES, value_parser = nonzero_usize)]
    max_identities: usize => max_identities,

    /// An identity not seen for this long expires and its name becomes free.
    #[arg(long, env = "SIGNAL_IDENTITY_TTL", default_value = "24h", value_parser = nonzero_duration)]
    identity_ttl: Duration => identity_ttl,

    /// Identities registered from one client IP (IPv6: one /64) held at once.
    #[arg(long, env = "SIGNAL_MAX_IDENTITIES_PER_IP", default_value_t = limits::DEFAULT_MAX_IDENTITIES_PER_IP, value_parser = nonzero_usize)]
    max_identities_per_ip: usize => max_identities_per_ip,

    /// QUIC connections still authenticating (handshake, plain HTTP/3
    /// requests, the WebTransport CONNECT), counted apart from
    /// --max-connections.
    #[arg(long, env = "SIGNAL_MAX_PENDING_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_PENDING_CONNECTIONS, value_parser = nonzero_usize)]
    max_pending_connections: usize => max_pending_connections,

    /// QUIC connections still authenticating from one client IP (IPv6: one
    /// /64).
    #[arg(long, env = "SIGNAL_MAX_PENDING_PER_IP", default_value_t = limits::DEFAULT_MAX_PENDING_PER_IP, value_parser = nonzero_usize)]
    max_pending_per_ip: usize => max_pending_per_ip,

    /// Bytes a QUIC connection may send before it has authenticated a
    /// WebTransport session, on all its streams together; more closes it.
    #[arg(long, env = "SIGNAL_PRE_SESSION_BYTES", default_value_t = limits::DEFAULT_PRE_SESSION_BYTES, value_parser = nonzero_usize)]
    pre_session_bytes: usize => pre_session_bytes,

    /// Plain HTTP/3 requests a QUIC connection may make before it has
    /// authenticated a WebTransport session; more closes it.
    #[arg(long, env = "SIGNAL_PRE_SESSION_REQUESTS", default_value_t = limits::DEFAULT_PRE_SESSION_REQUESTS, value_parser = nonzero_usize)]
    pre_session_requests: usize => pre_session_requests,

    /// Largest HTTP request head (request line and headers) in bytes, on
    /// HTTP/1.1 and HTTP/3.
    #[arg(long, env = "SIGNAL_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES, value_parser = nonzero_usize)]
    max_header_bytes: usize,

    /// Largest HTTP request body in bytes.
    #[arg(long, env = "SIGNAL_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = nonzero_usize)]
    max_body_bytes: usize,

    /// On SIGTERM or Ctrl-C, how long to let clients drain before exiting.
    #[arg(long, env = "SIGNAL_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = nonzero_duration, help_heading = "Shutdown")]
    shutdown_timeout: Duration,

    /// In a cluster, how long a node waits to hear whether another node
    /// wrote an envelope it sent there before answering its sender
    /// UNCONFIRMED; longer than --write-timeout.
    #[arg(long, env = "SIGNAL_DELIVERY_TIMEOUT", default_value = "10s", value_parser = nonzero_duration, help_heading = "Cluster")]
    delivery_timeout: Duration => delivery_timeout,

    /// How long a user whose connection died without a clean close stays
    /// away: envelopes for it are held, and written when it resumes; after
    /// it their senders get EXPIRED.
    #[arg(long, env = "SIGNAL_RESUME_WINDOW", default_value = "10s", value_parser = nonzero_duration, help_heading = "Resume")]
    resume_window: Duration => resume_window,

    /// Envelopes kept per user until the client acknowledges them (ACK),
    /// so a reconnect can resume; the oldest is dropped first.
    #[arg(long, env = "SIGNAL_RESUME_BUFFER", default_value_t = resume::DEFAULT_RESUME_BUFFER, value_parser = nonzero_usize, help_heading = "Resume")]
    resume_buffer: usize => resume_buffer,

    /// Bytes kept per user until the client acknowledges them; the oldest
    /// envelope is dropped first.
    #[arg(long, env = "SIGNAL_RESUME_BUFFER_BYTES", default_value_t = resume::DEFAULT_RESUME_BUFFER_BYTES, value_parser = nonzero_usize, help_heading = "Resume")]
    resume_buffer_bytes: usize => resume_buffer_bytes,

    /// Bytes all users' kept envelopes may take together; over it, new
    /// holds for away users are refused with TARGET_NOT_FOUND.
    #[arg(long, env = "SIGNAL_RESUME_MEMORY", default_value_t = resume::DEFAULT_RESUME_MEMORY, value_parser = nonzero_usize, help_heading = "Resume")]
    resume_memory: usize => resume_memory,

    /// In a cluster, how long a node where a user connects waits for the
    /// user's stream from the node it was on before WELCOME; a node that
    /// has not handed it over by then leaves the user a new stream.
    #[arg(long, env = "SIGNAL_HANDOFF_WAIT", default_value = "1s", value_parser = nonzero_duration, help_heading = "Resume")]
    handoff_wait: Duration => handoff_wait,

    /// Most members one room holds; a JOIN past it is answered ROOM_FULL.
    #[arg(long, env = "SIGNAL_MAX_ROOM_MEMBERS", default_value_t = rooms::DEFAULT_MAX_ROOM_MEMBERS, value_parser = nonzero_usize, help_heading = "Rooms")]
    max_room_members: usize => max_room_members,

    /// Most rooms one user is in at once; a JOIN past it is answered
    /// TOO_MANY_ROOMS.
    #[arg(long, env = "SIGNAL_MAX_ROOMS_PER_USER", default_value_t = rooms::DEFAULT_MAX_ROOMS_PER_USER, value_parser = nonzero_usize, help_heading = "Rooms")]
    max_rooms_per_user: usize => max_rooms_per_user,

    /// Who may join rooms: `any` (a JWT with a `rooms` claim only the rooms
    /// it names), or `jwt-only` (only the rooms a JWT's `rooms` claim
    /// names; registered names and JWTs without the claim join none).
    #[arg(long = "rooms", env = "SIGNAL_ROOMS", default_value = "any", value_parser = clap::builder::ValueParser::new(str::parse::<RoomPolicy>), help_heading = "Rooms")]
    room_policy: RoomPolicy => rooms,
}
