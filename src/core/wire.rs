//! The one table from "what went wrong" to what goes on the wire.
//!
//! Every close code, close reason and error-envelope `type` the gateway can
//! produce is defined here, so the README table and the code cannot drift
//! apart: both transports and the HTTP layer call into this module instead of
//! spelling codes themselves.

/// Why the gateway closes a realtime connection.
///
/// The same value is carried by a WebSocket close frame and by the QUIC
/// application close of a WebTransport session, and is announced before the
/// close by a final `CLOSE` envelope on both transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The gateway is shutting down; reconnecting later is expected to work.
    Shutdown,
    /// The client broke the transport's framing rules.
    ProtocolError,
    /// A frame or line exceeded the envelope size limit.
    MessageTooBig,
    /// A failure inside the gateway.
    InternalError,
    /// The connection carried no valid token.
    Unauthenticated,
    /// The same user opened a newer connection (newest wins).
    Replaced,
    /// An administrator kicked every active user, or deleted the identity.
    Kicked,
    /// The client did not read its envelopes fast enough.
    SlowConsumer,
    /// The client kept sending after being told it was over its rate limit.
    RateLimited,
    /// Nothing (not even a pong) arrived within the idle timeout.
    IdleTimeout,
    /// A WebTransport client opened no stream within the stream timeout.
    StreamTimeout,
    /// The JWT the connection was opened (or last refreshed) with expired.
    TokenExpired,
}

impl CloseReason {
    /// Every reason, in table order (used by docs and tests).
    pub const ALL: [CloseReason; 12] = [
        CloseReason::Shutdown,
        CloseReason::ProtocolError,
        CloseReason::MessageTooBig,
        CloseReason::InternalError,
        CloseReason::Unauthenticated,
        CloseReason::Replaced,
        CloseReason::Kicked,
        CloseReason::SlowConsumer,
        CloseReason::RateLimited,
        CloseReason::IdleTimeout,
        CloseReason::StreamTimeout,
        CloseReason::TokenExpired,
    ];

    /// The WebSocket close code, also used as the WebTransport session's
    /// application close code. 1xxx are RFC 6455 codes; 4xxx are ours
    /// (4000 `UNAUTHENTICATED` is the code clients of the original protocol
    /// already handle).
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::Shutdown => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::MessageTooBig => 1009,
            CloseReason::InternalError => 1011,
            CloseReason::Unauthenticated => 4000,
            CloseReason::Replaced => 4001,
            CloseReason::Kicked => 4002,
            CloseReason::TokenExpired => 4003,
            CloseReason::SlowConsumer => 4008,
            CloseReason::RateLimited => 4029,
            CloseReason::IdleTimeout => 4408,
            CloseReason::StreamTimeout => 4409,
        }
    }

    /// The close reason text (ASCII, well under the 123-byte WebSocket limit).
    pub const fn reason(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "SHUTDOWN",
            CloseReason::ProtocolError => "PROTOCOL_ERROR",
            CloseReason::MessageTooBig => "MESSAGE_TOO_BIG",
            CloseReason::InternalError => "INTERNAL_ERROR",
            CloseReason::Unauthenticated => "UNAUTHENTICATED",
            CloseReason::Replaced => "REPLACED",
            CloseReason::Kicked => "KICKED",
            CloseReason::SlowConsumer => "SLOW_CONSUMER",
            CloseReason::RateLimited => "RATE_LIMITED",
            CloseReason::IdleTimeout => "IDLE_TIMEOUT",
            CloseReason::StreamTimeout => "STREAM_TIMEOUT",
            CloseReason::TokenExpired => "TOKEN_EXPIRED",
        }
    }

    /// A sentence for humans, sent in the final `CLOSE` envelope.
    pub const fn description(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "the gateway is shutting down; reconnect later",
            CloseReason::ProtocolError => "the connection broke the transport's framing rules",
            CloseReason::MessageTooBig => "a frame exceeded the envelope size limit",
            CloseReason::InternalError => "internal error in the gateway",
            CloseReason::Unauthenticated => {
                "no valid token: register first and connect with its token"
            }
            CloseReason::Replaced => "a newer connection of the same user replaced this one",
            CloseReason::Kicked => "an administrator disconnected this user",
            CloseReason::SlowConsumer => "envelopes for this connection were not read fast enough",
            CloseReason::RateLimited => "the connection kept sending over its rate limit",
            CloseReason::IdleTimeout => "nothing arrived within the idle timeout",
            CloseReason::StreamTimeout => "no WebTransport stream was opened in time",
            CloseReason::TokenExpired => {
                "the token expired without a refresh: reconnect with a fresh one"
            }
        }
    }

    /// Whether a client should reconnect on its own after this close.
    /// Replaced and kicked clients must not fight their replacement.
    pub const fn should_reconnect(self) -> bool {
        !matches!(
            self,
            CloseReason::Replaced
                | CloseReason::Kicked
                | CloseReason::Unauthenticated
                | CloseReason::MessageTooBig
                | CloseReason::ProtocolError
                | CloseReason::RateLimited
        )
    }
}

/// The `type` of an error envelope the gateway sends back to a sender.
/// Error envelopes always carry `"originator": ""`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The target has no live connection.
    TargetNotFound,
    /// The frame was not a valid envelope; the connection stays open.
    InvalidMessage,
    /// The envelope was dropped because the sender is over its rate limit.
    RateLimited,
    /// The target's outbound queue was full; the target was disconnected.
    TargetSlow,
    /// The envelope was accepted but the target's connection closed before
    /// it could be written to it.
    Undelivered,
    /// A `REFRESH_TOKEN` was refused; the connection keeps its old token
    /// (and closes when it expires).
    TokenRefused,
    /// Cluster only: the target is not on this node and the other nodes
    /// cannot be reached now (Redis is down); the envelope was not sent.
    ClusterUnavailable,
    /// Cluster only: the envelope went to the target's node, which did not
    /// say within `--delivery-timeout` whether it wrote it; it may or may
    /// not have been delivered.
    Unconfirmed,
    /// The target was away (reconnecting) when the envelope was accepted,
    /// and did not come back within `--resume-window`; it was never
    /// written.
    Expired,
    /// A room envelope or `LEAVE` for a room the sender is not in.
    NotInRoom,
    /// A `JOIN` to a room at `--max-room-members`.
    RoomFull,
    /// A `JOIN` by a user in `--max-rooms-per-user` rooms already.
    TooManyRooms,
    /// A `JOIN` to a room the connection's token does not allow (its JWT's
    /// `rooms` claim, or `--rooms jwt-only`).
    Forbidden,
}

impl ErrorType {
    /// Every error type, in table order.
    pub const ALL: [ErrorType; 13] = [
        ErrorType::TargetNotFound,
        ErrorType::InvalidMessage,
        ErrorType::RateLimited,
        ErrorType::TargetSlow,
        ErrorType::Undelivered,
        ErrorType::TokenRefused,
        ErrorType::ClusterUnavailable,
        ErrorType::Unconfirmed,
        ErrorType::Expired,
        ErrorType::NotInRoom,
        ErrorType::RoomFull,
        ErrorType::TooManyRooms,
        ErrorType::Forbidden,
    ];

    /// The upper-case `type` string on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorType::TargetNotFound => "TARGET_NOT_FOUND",
            ErrorType::InvalidMessage => "INVALID_MESSAGE",
            ErrorType::RateLimited => "RATE_LIMITED",
            ErrorType::TargetSlow => "TARGET_SLOW",
            ErrorType::Undelivered => "UNDELIVERED",
            ErrorType::TokenRefused => "TOKEN_REFUSED",
            ErrorType::ClusterUnavailable => "CLUSTER_UNAVAILABLE",
            ErrorType::Unconfirmed => "UNCONFIRMED",
            ErrorType::Expired => "EXPIRED",
            ErrorType::NotInRoom => "NOT_IN_ROOM",
            ErrorType::RoomFull => "ROOM_FULL",
            ErrorType::TooManyRooms => "TOO_MANY_ROOMS",
            ErrorType::Forbidden => "FORBIDDEN",
        }
    }
}

/// Every error an HTTP request can get from the gateway: its status code
/// and the `status` string of the JSON body `{"status", "message"}`.
/// HTTP/1.1 and HTTP/3 answer from this one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpError {
    /// A malformed request: bad registration body or name, bad WebSocket
    /// handshake.
    Invalid,
    /// An admin route without the admin token; a WebTransport CONNECT or
    /// `GET /v1/ice-servers` without a valid token; `/v1/user` without a
    /// valid token under `--unknown-user-status 401`.
    Unauthorized,
    /// A foreign origin, or an admin route the request may not use.
    Forbidden,
    /// No such route, no such user, no WebTransport endpoint on that path.
    NotFound,
    /// A known route with another method.
    MethodNotAllowed,
    /// The request body did not arrive in time.
    Timeout,
    /// The request body is over `--max-body-bytes` (answered `INVALID`, the
    /// status clients already handle for a bad registration).
    PayloadTooLarge,
    /// `/v1/connect` without a WebSocket upgrade.
    UpgradeRequired,
    /// Over a per-IP rate.
    RateLimited,
    /// The address holds as many identities as it may.
    TooManyIdentities,
    /// A second WebTransport session on one QUIC connection.
    SessionExists,
    /// `POST /v1/register` on a gateway that takes only JWTs.
    RegistrationClosed,
    /// At a capacity limit, shutting down, or out of file descriptors.
    Unavailable,
}

impl HttpError {
    /// Every HTTP error, in table order.
    pub const ALL: [HttpError; 13] = [
        HttpError::Invalid,
        HttpError::Unauthorized,
        HttpError::Forbidden,
        HttpError::NotFound,
        HttpError::MethodNotAllowed,
        HttpError::Timeout,
        HttpError::PayloadTooLarge,
        HttpError::UpgradeRequired,
        HttpError::RateLimited,
        HttpError::TooManyIdentities,
        HttpError::SessionExists,
        HttpError::RegistrationClosed,
        HttpError::Unavailable,
    ];

    /// The HTTP status code.
    pub const fn status(self) -> u16 {
        match self {
            HttpError::Invalid => 400,
            HttpError::Unauthorized => 401,
            HttpError::Forbidden | HttpError::RegistrationClosed => 403,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed => 405,
            HttpError::Timeout => 408,
            HttpError::PayloadTooLarge => 413,
            HttpError::UpgradeRequired => 426,
            HttpError::RateLimited | HttpError::TooManyIdentities | HttpError::SessionExists => 429,
            HttpError::Unavailable => 503,
        }
    }

    /// The `status` string of the body.
    pub const fn code(self) -> &'static str {
        match self {
            HttpError::Invalid | HttpError::PayloadTooLarge => "INVALID",
            HttpError::Unauthorized => "UNAUTHORIZED",
            HttpError::Forbidden => "FORBIDDEN",
            HttpError::NotFound => "NOT_FOUND",
            HttpError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            HttpError::Timeout => "TIMEOUT",
            HttpError::UpgradeRequired => "UPGRADE_REQUIRED",
            HttpError::RateLimited => "RATE_LIMITED",
            HttpError::TooManyIdentities => "TOO_MANY_IDENTITIES",
            HttpError::SessionExists => "SESSION_EXISTS",
            HttpError::RegistrationClosed => "REGISTRATION_CLOSED",
            HttpError::Unavailable => "UNAVAILABLE",
        }
    }
}

/// Why the gateway closes a QUIC connection on which no WebTransport
/// session was authenticated. Carried as the QUIC application close: an
/// HTTP/3 error code (RFC 9114 §8.1) and this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreSessionClose {
    /// No session was authenticated within `--handshake-timeout` of the
    /// first packet, whatever the connection did meanwhile.
    Timeout,
    /// The connection sent more than `--pre-session-bytes`.
    ByteLimit,
    /// The connection made more than `--pre-session-requests` requests.
    RequestLimit,
}

impl PreSessionClose {
    /// Every reason, in table order.
    pub const ALL: [PreSessionClose; 3] = [
        PreSessionClose::Timeout,
        PreSessionClose::ByteLimit,
        PreSessionClose::RequestLimit,
    ];

    /// The HTTP/3 error code: `H3_NO_ERROR` (0x100) for the deadline, which
    /// an ordinary HTTP/3 client reaches too; `H3_EXCESSIVE_LOAD` (0x107)
    /// for the limits.
    pub const fn h3_code(self) -> u32 {
        match self {
            PreSessionClose::Timeout => 0x100,
            PreSessionClose::ByteLimit | PreSessionClose::RequestLimit => 0x107,
        }
    }

    /// The reason phrase of the close.
    pub const fn reason(self) -> &'static str {
        match self {
            PreSessionClose::Timeout => "PRE_SESSION_TIMEOUT",
            PreSessionClose::ByteLimit => "PRE_SESSION_BYTES",
            PreSessionClose::RequestLimit => "PRE_SESSION_REQUESTS",
        }
    }
}

/// `type` of the first envelope on every connection: the gateway has
/// attached it to the user and it can now receive envelopes.
pub const WELCOME_TYPE: &str = "WELCOME";

/// The protocol version `WELCOME` carries as `"protocol"`: it changes only
/// when something a client may rely on changes (docs/compatibility.md).
pub const PROTOCOL_VERSION: u32 = 1;

/// `type` of the last envelope the gateway sends before it closes a
/// connection; its payload repeats the close code and reason.
pub const CLOSE_TYPE: &str = "CLOSE";

/// `type` of the envelope that warns a JWT-authenticated connection its
/// token expires soon: send `REFRESH_TOKEN` before `expires_at`.
pub const TOKEN_EXPIRING_TYPE: &str = "TOKEN_EXPIRING";

/// `type` of the answer to an accepted `REFRESH_TOKEN`.
pub const TOKEN_REFRESHED_TYPE: &str = "TOKEN_REFRESHED";

/// `type` of the envelope a client sends the gateway itself (`"target":
/// ""`) to replace its connection's JWT with a fresh one:
/// `{"target": "", "type": "REFRESH_TOKEN", "payload": {"token": "…"}}`.
pub const REFRESH_TOKEN_TYPE: &str = "REFRESH_TOKEN";

/// `type` of the envelope a client sends the gateway to say it processed
/// everything up to a `seq`, so the gateway stops keeping it for a resume:
/// `{"target": "", "type": "ACK", "payload": {"seq": N}}`.
pub const ACK_TYPE: &str = "ACK";
/// `type` of the envelope a client sends the gateway to join a room:
/// `{"target": "", "type": "JOIN", "payload": {"room": "standup"}}`.
pub const JOIN_TYPE: &str = "JOIN";

/// `type` of the answer to a `JOIN`: the room and its members in join
/// order, the joiner among them.
pub const JOINED_TYPE: &str = "JOINED";

/// `type` of the envelope a client sends the gateway to leave a room.
pub const LEAVE_TYPE: &str = "LEAVE";

/// `type` of the answer to a `LEAVE`.
pub const LEFT_TYPE: &str = "LEFT";

/// `type` of the envelope the other members get when a user joins.
pub const PEER_JOINED_TYPE: &str = "PEER_JOINED";

/// `type` of the envelope the other members get when a user leaves, with
/// the reason (`left`, `disconnected`, `kicked`, `deleted`).
pub const PEER_LEFT_TYPE: &str = "PEER_LEFT";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_reasons_are_unique_and_fit_a_websocket_close_frame() {
        let codes: HashSet<_> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        let reasons: HashSet<_> = CloseReason::ALL.iter().map(|r| r.reason()).collect();
        assert_eq!(codes.len(), CloseReason::ALL.len());
        assert_eq!(reasons.len(), CloseReason::ALL.len());
        for r in CloseReason::ALL {
            assert!(r.reason().len() <= 123, "{r:?}");
            assert!(r.reason().is_ascii());
        }
    }

    #[test]
    fn http_errors_are_client_or_server_errors_with_upper_case_codes() {
        for e in HttpError::ALL {
            assert!((400..600).contains(&e.status()), "{e:?}");
            assert_eq!(e.code(), e.code().to_ascii_uppercase());
        }
    }

    #[test]
    fn error_types_are_upper_case_and_unique() {
        let names: HashSet<_> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names.len(), ErrorType::ALL.len());
        for e in ErrorType::ALL {
            assert_eq!(e.as_str(), e.as_str().to_ascii_uppercase());
        }
    }
}
