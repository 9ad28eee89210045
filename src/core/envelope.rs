//! Envelopes: what clients send, and the frames the gateway sends back.
//!
//! Inbound envelopes are parsed without copying: `target` and `type` borrow
//! from the frame and `payload` stays raw JSON, so the hot path never builds a
//! tree of the payload and re-serialises it. Outbound frames are built once as
//! `Bytes` ending in `\n`, and the same bytes go out as a WebSocket text frame
//! or as one line on a WebTransport stream.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ice::IceConfig;
use super::resume::{SEQ_ROOM, SeqTail};
use super::wire::{CLOSE_TYPE, CloseReason, ErrorType, PROTOCOL_VERSION, WELCOME_TYPE};

/// Longest `target` accepted, in bytes (a 64-character name fits even in
/// 4-byte UTF-8).
pub const MAX_TARGET_BYTES: usize = 256;
/// Longest `type` accepted, in bytes; signaling types (`video-offer`,
/// `new-ice-candidate`) are ~15 bytes.
pub const MAX_TYPE_BYTES: usize = 128;

/// An envelope as a client sends it: `{"target", "type", "payload"}`, or
/// for a room `{"room", "type", "payload"}` without `target`. Any other
/// field (such as a spoofed `originator`) is ignored.
#[derive(Debug, Deserialize)]
#[serde(expecting = "an envelope object with string fields \"target\" and \"type\"")]
pub struct Inbound<'a> {
    /// Username of the recipient.
    #[serde(borrow)]
    pub target: Cow<'a, str>,
    /// Opaque to the gateway (`video-offer`, `ice-candidate`, ...).
    #[serde(borrow, rename = "type")]
    pub kind: Cow<'a, str>,
    /// Any JSON value, forwarded byte for byte; absent means `null`.
    #[serde(borrow, default)]
    pub payload: Option<&'a RawValue>,
    /// The room an envelope without `target` goes to (a `room` beside a
    /// `target` is ignored: the envelope goes to the target).
    #[serde(skip)]
    pub room: Option<Cow<'a, str>>,
}

/// An inbound envelope as it is on the wire: `target` may be missing when
/// `room` is there.
#[derive(Deserialize)]
#[serde(expecting = "an envelope object with string fields \"target\" and \"type\"")]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    target: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present", rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<Cow<'a, str>>,
}

/// A string that is there (`null` is refused; a missing field is `None`
/// through `default`), borrowed from the frame when it has no escapes.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Text::deserialize(deserializer).map(|text| Some(text.0))
}

/// Why a frame is not a valid envelope. Sent back as `INVALID_MESSAGE`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Nothing but whitespace.
    #[error("envelope is empty")]
    Empty,
    /// Not JSON at all (or not UTF-8).
    #[error("envelope is not valid JSON: {0}")]
    Syntax(String),
    /// JSON, but not an object with string `target` and `type`.
    #[error("envelope has the wrong shape: {0}")]
    Shape(String),
    /// `target` or `type` is longer than allowed.
    #[error("`{field}` is longer than {max} bytes")]
    FieldTooLong {
        /// The field's name.
        field: &'static str,
        /// The limit in bytes.
        max: usize,
    },
    /// The payload nests arrays/objects deeper than allowed.
    #[error("payload is nested deeper than {max} levels")]
    TooDeep {
        /// The configured depth limit.
        max: usize,
    },
}

/// Parses and validates one inbound envelope.
pub fn parse_inbound(frame: &[u8], max_depth: usize) -> Result<Inbound<'_>, EnvelopeError> {
    parse(Source::Bytes(frame), max_depth)
}

/// Like [`parse_inbound`], for text already known to be UTF-8 (a WebSocket
/// text frame): serde then skips checking every string again.
pub fn parse_inbound_text(text: &str, max_depth: usize) -> Result<Inbound<'_>, EnvelopeError> {
    parse(Source::Text(text), max_depth)
}

enum Source<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

fn parse(source: Source<'_>, max_depth: usize) -> Result<Inbound<'_>, EnvelopeError> {
    let frame = match source {
        Source::Text(text) => text.as_bytes(),
        Source::Bytes(bytes) => bytes,
    };
    if frame.iter().all(u8::is_ascii_whitespace) {
        return Err(EnvelopeError::Empty);
    }
    // serde's derived visitor also takes a struct from an array
    // (`["bob","offer"]`); the protocol only has objects.
    if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let shape = match serde_json::from_slice::<serde::de::IgnoredAny>(frame) {
            Ok(_) => EnvelopeError::Shape(
                "expected an object like {\"target\":..,\"type\":..}".to_owned(),
            ),
            Err(err) => EnvelopeError::Syntax(err.to_string()),
        };
        return Err(shape);
    }
    let parsed = match source {
        Source::Text(text) => serde_json::from_str(text),
        Source::Bytes(bytes) => serde_json::from_slice(bytes),
    };
    let wire: Wire<'_> = parsed.map_err(|err| match err.classify() {
        serde_json::error::Category::Data => EnvelopeError::Shape(err.to_string()),
        _ => EnvelopeError::Syntax(err.to_string()),
    })?;
    let (target, room) = match (wire.target, wire.room) {
        (Some(target), _) => (target, None),
        (None, Some(room)) => (Cow::Borrowed(""), Some(room)),
        (None, None) => {
            return Err(EnvelopeError::Shape(
                "missing field `target` (or `room`, to send to a room)".to_owned(),
            ));
        }
    };
    let kind = wire
        .kind
        .ok_or_else(|| EnvelopeError::Shape("missing field `type`".to_owned()))?;
    let inbound = Inbound {
        target,
        kind,
        payload: wire.payload,
        room,
    };
    if inbound.target.len() > MAX_TARGET_BYTES {
        return Err(EnvelopeError::FieldTooLong {
            field: "target",
            max: MAX_TARGET_BYTES,
        });
    }
    if inbound
        .room
        .as_ref()
        .is_some_and(|room| room.len() > MAX_TARGET_BYTES)
    {
        return Err(EnvelopeError::FieldTooLong {
            field: "room",
            max: MAX_TARGET_BYTES,
        });
    }
    if inbound.kind.len() > MAX_TYPE_BYTES {
        return Err(EnvelopeError::FieldTooLong {
            field: "type",
            max: MAX_TYPE_BYTES,
        });
    }
    if let Some(payload) = inbound.payload
        && nesting_exceeds(payload.get(), max_depth)
    {
        return Err(EnvelopeError::TooDeep { max: max_depth });
    }
    Ok(inbound)
}

/// Whether already-validated JSON text nests arrays/objects deeper than
/// `max`. A scan instead of a parse: the payload is never turned into a tree.
fn nesting_exceeds(json: &str, max: usize) -> bool {
    // Depth cannot exceed the number of `{` and `[`: an SDP or ICE payload
    // has a handful, so the exact scan below rarely runs.
    if memchr::memchr2_iter(b'{', b'[', json.as_bytes()).count() <= max {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The envelope the target receives: `{"target","type","originator","payload"}`,
/// and `seq` when it is numbered already. `originator` is always the
/// authenticated sender.
pub fn forward_frame(
    target: &str,
    kind: &str,
    originator: &str,
    payload: Option<&RawValue>,
    seq: Option<u64>,
) -> Bytes {
    let payload = payload.map_or("null", RawValue::get);
    let mut out = Vec::with_capacity(
        52 + SEQ_ROOM + target.len() + kind.len() + originator.len() + payload.len(),
    );
    out.extend_from_slice(b"{\"target\":");
    push_json_string(&mut out, target);
    push_kind_originator_payload(&mut out, kind, originator, payload);
    if let Some(seq) = seq {
        out.truncate(out.len() - 2);
        out.extend_from_slice(SeqTail::new(seq).as_bytes());
    }
    Bytes::from(out)
}

/// A room envelope as each other member receives it:
/// `{"target": "", "room", "type", "originator", "payload"}`, built once
/// for every member.
pub fn room_frame(room: &str, kind: &str, originator: &str, payload: Option<&RawValue>) -> Bytes {
    let payload = payload.map_or("null", RawValue::get);
    let mut out =
        Vec::with_capacity(72 + room.len() + kind.len() + originator.len() + payload.len());
    out.extend_from_slice(b"{\"target\":\"\",\"room\":");
    push_json_string(&mut out, room);
    push_kind_originator_payload(&mut out, kind, originator, payload);
    Bytes::from(out)
}

/// The fields a forwarded and a room envelope end alike with, and the
/// closing brace and newline.
fn push_kind_originator_payload(out: &mut Vec<u8>, kind: &str, originator: &str, payload: &str) {
    out.extend_from_slice(b",\"type\":");
    push_json_string(out, kind);
    out.extend_from_slice(b",\"originator\":");
    push_json_string(out, originator);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"}\n");
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a `Vec` cannot fail: the writer is infallible and
    // every `str` is representable as a JSON string.
    let _ = serde_json::to_writer(out, s);
}

/// What an error envelope's payload says. Fields that do not apply are left out.
#[derive(Debug, Default, Serialize)]
pub struct ErrorDetail<'a> {
    /// A sentence saying what went wrong.
    pub message: String,
    /// The `target` of the envelope the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// The `type` of the envelope the error is about.
    #[serde(skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<&'a str>,
    /// For `RATE_LIMITED`: when the next envelope will be accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// An error envelope for the sender: an empty `originator` marks it as the
/// gateway's own.
pub fn error_frame(error: ErrorType, detail: &ErrorDetail<'_>) -> Bytes {
    server_frame(error.as_str(), detail)
}

/// Payload of the `WELCOME` envelope.
#[derive(Debug, Serialize)]
pub struct Welcome<'a> {
    /// The authenticated user this connection belongs to.
    pub username: &'a str,
    /// `websocket` or `webtransport`.
    pub transport: &'a str,
    /// Identifies this connection in logs and admin listings.
    pub connection_id: u64,
    /// Largest envelope the gateway accepts, in bytes.
    pub max_envelope_bytes: usize,
    /// The ICE servers this user's peer connections should use, with
    /// credentials minted for this connection (what `GET /v1/ice-servers`
    /// answers), so a client needs no extra request.
    pub ice: &'a IceConfig,
    /// The user's stream: the envelopes' `seq` numbers belong to it, and
    /// a different one than before means the numbering started again.
    pub session: &'a str,
    /// Whether every envelope after the client's `resume=N` follows.
    pub resumed: bool,
    /// How many envelopes from before this connection follow, before
    /// anything new.
    pub replayed: usize,
}

/// The first envelope on every connection, led by the protocol version.
pub fn welcome_frame(welcome: &Welcome<'_>) -> Bytes {
    #[derive(Serialize)]
    struct Versioned<'a> {
        protocol: u32,
        #[serde(flatten)]
        welcome: &'a Welcome<'a>,
    }
    server_frame(
        WELCOME_TYPE,
        &Versioned {
            protocol: PROTOCOL_VERSION,
            welcome,
        },
    )
}

#[derive(Serialize)]
struct ClosePayload {
    code: u16,
    reason: &'static str,
    message: &'static str,
    reconnect: bool,
}

/// The last envelope before the gateway closes a connection.
pub fn close_frame(reason: CloseReason) -> Bytes {
    server_frame(
        CLOSE_TYPE,
        &ClosePayload {
            code: reason.code(),
            reason: reason.reason(),
            message: reason.description(),
            reconnect: reason.should_reconnect(),
        },
    )
}

/// One of the gateway's own envelopes: empty `target` and `originator`.
pub fn server_frame(kind: &str, payload: &impl Serialize) -> Bytes {
    let payload = serde_json::to_string(payload).unwrap_or_else(|_| "null".to_owned());
    let mut out = Vec::with_capacity(52 + SEQ_ROOM + kind.len() + payload.len());
    out.extend_from_slice(b"{\"target\":\"\",\"type\":");
    push_json_string(&mut out, kind);
    out.extend_from_slice(b",\"originator\":\"\",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(text: &str) -> Result<Inbound<'_>, EnvelopeError> {
        parse_inbound(text.as_bytes(), 32)
    }

    #[test]
    fn accepts_a_signaling_envelope_and_keeps_payload_raw() {
        let env = parse(
            r#"{"target":"bob","type":"video-offer","payload":{"sdp":"v=0\r\n", "n": 1.50}}"#,
        )
        .unwrap();
        assert_eq!(env.target, "bob");
        assert_eq!(env.kind, "video-offer");
        assert_eq!(
            env.payload.unwrap().get(),
            r#"{"sdp":"v=0\r\n", "n": 1.50}"#
        );
    }

    #[test]
    fn missing_or_null_payload_is_none_and_forwards_as_null() {
        let env = parse(r#"{"target":"bob","type":"bye"}"#).unwrap();
        assert!(env.payload.is_none());
        let env = parse(r#"{"target":"bob","type":"bye","payload":null}"#).unwrap();
        let frame = forward_frame(&env.target, &env.kind, "alice", env.payload, None);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(
            v,
            json!({"target":"bob","type":"bye","originator":"alice","payload":null})
        );
    }

    #[test]
    fn spoofed_originator_and_unknown_fields_are_ignored() {
        let env =
            parse(r#"{"target":"bob","type":"x","originator":"mallory","extra":[1]}"#).unwrap();
        let frame = forward_frame(&env.target, &env.kind, "alice", env.payload, None);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["originator"], "alice");
        assert!(v.get("extra").is_none());
    }

    #[test]
    fn escaped_strings_round_trip() {
        let env = parse(r#"{"target":"b\u00f6b \"q\"","type":"t\n"}"#).unwrap();
        assert_eq!(env.target, "böb \"q\"");
        let frame = forward_frame(&env.target, &env.kind, "ä\\", None, None);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["target"], "böb \"q\"");
        assert_eq!(v["type"], "t\n");
        assert_eq!(v["originator"], "ä\\");
    }

    #[test]
    fn frames_end_with_a_newline_and_contain_no_other() {
        let frame = forward_frame("a", "b", "c", None, None);
        assert_eq!(frame.last(), Some(&b'\n'));
        assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
        let frame = close_frame(CloseReason::Replaced);
        assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn bad_envelopes_get_clear_errors() {
        let cases = [
            ("", "empty"),
            ("   \n", "empty"),
            ("not json", "not valid JSON"),
            ("[1,2]", "wrong shape"),
            (r#"["bob","video-offer",{}]"#, "expected an object"),
            ("\"text\"", "wrong shape"),
            ("{}", "missing field `target`"),
            (r#"{"room":"r"}"#, "missing field `type`"),
            (r#"{"room":null,"type":"x"}"#, "invalid type: null"),
            (r#"{"target":"bob"}"#, "missing field `type`"),
            (
                r#"{"target":5,"type":"x"}"#,
                "invalid type: integer `5`, expected a string",
            ),
            (r#"{"target":"bob","type":null}"#, "invalid type: null"),
            (
                r#"{"target":"a","type":"b"} trailing"#,
                "trailing characters",
            ),
            (
                r#"{"target":"a","target":"b","type":"c"}"#,
                "duplicate field `target`",
            ),
            (r#"{"target":"a","type":"b","payload":}"#, "not valid JSON"),
        ];
        for (input, expected) in cases {
            let err = parse(input).expect_err(input).to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn a_room_envelope_has_no_target_and_a_target_wins_over_a_room() {
        let env = parse(r#"{"room":"standup","type":"chat","payload":{"a":1}}"#).unwrap();
        assert_eq!(env.room.as_deref(), Some("standup"));
        assert_eq!(env.target, "");
        let frame = room_frame("standup", &env.kind, "alice", env.payload);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(
            v,
            json!({"target":"","room":"standup","type":"chat","originator":"alice","payload":{"a":1}})
        );
        let env = parse(r#"{"target":"bob","room":"standup","type":"x"}"#).unwrap();
        assert_eq!(env.target, "bob");
        assert!(env.room.is_none());
    }

    #[test]
    fn text_and_bytes_parse_alike() {
        let text = r#"{"target":"b\u00f6b","type":"t","payload":[{"a":[1]}]}"#;
        let a = parse_inbound_text(text, 32).unwrap();
        let b = parse_inbound(text.as_bytes(), 32).unwrap();
        assert_eq!((a.target, a.kind), (b.target, b.kind));
        assert_eq!(a.payload.unwrap().get(), b.payload.unwrap().get());
        assert!(matches!(
            parse_inbound_text("[1]", 32),
            Err(EnvelopeError::Shape(_))
        ));
        assert!(matches!(
            parse_inbound_text("nope", 32),
            Err(EnvelopeError::Syntax(_))
        ));
    }

    #[test]
    fn depth_fast_path_agrees_with_the_scan() {
        // Many brackets but shallow: the fast path cannot decide; the scan does.
        let wide = format!("[{}]", vec!["[]"; 100].join(","));
        assert!(!nesting_exceeds(&wide, 32));
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert!(nesting_exceeds(&deep, 32));
        assert!(!nesting_exceeds(r#"{"sdp":"v=0"}"#, 32));
    }

    #[test]
    fn invalid_utf8_is_a_syntax_error() {
        let err = parse_inbound(b"{\"target\":\"\xff\",\"type\":\"x\"}", 32).unwrap_err();
        assert!(matches!(err, EnvelopeError::Syntax(_)), "{err:?}");
    }

    #[test]
    fn long_fields_are_refused() {
        let long = "x".repeat(MAX_TARGET_BYTES + 1);
        let err = parse(&format!(r#"{{"target":"{long}","type":"x"}}"#)).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::FieldTooLong {
                field: "target",
                max: MAX_TARGET_BYTES
            }
        );
        let long = "x".repeat(MAX_TYPE_BYTES + 1);
        let err = parse(&format!(r#"{{"target":"a","type":"{long}"}}"#)).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::FieldTooLong {
                field: "type",
                max: MAX_TYPE_BYTES
            }
        );
    }

    #[test]
    fn depth_limit_counts_only_structure_outside_strings() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = format!(r#"{{"target":"a","type":"b","payload":{}}}"#, nested(32));
        assert!(parse(&ok).is_ok());
        let deep = format!(r#"{{"target":"a","type":"b","payload":{}}}"#, nested(33));
        assert_eq!(
            parse(&deep).unwrap_err(),
            EnvelopeError::TooDeep { max: 32 }
        );
        let brackets_in_string = format!(
            r#"{{"target":"a","type":"b","payload":"{}\"{{"}}"#,
            "[".repeat(100)
        );
        assert!(parse(&brackets_in_string).is_ok());
    }

    #[test]
    fn server_frames_have_empty_originator() {
        let detail = ErrorDetail {
            message: "user \"bob\" is not connected".into(),
            target: Some("bob"),
            kind: Some("video-offer"),
            retry_after_ms: None,
        };
        let v: Value =
            serde_json::from_slice(&error_frame(ErrorType::TargetNotFound, &detail)).unwrap();
        assert_eq!(
            v,
            json!({"target":"","type":"TARGET_NOT_FOUND","originator":"","payload":{
                "message":"user \"bob\" is not connected","target":"bob","type":"video-offer"}})
        );
        let v: Value = serde_json::from_slice(&close_frame(CloseReason::Kicked)).unwrap();
        assert_eq!(v["type"], "CLOSE");
        assert_eq!(v["payload"]["code"], 4002);
        assert_eq!(v["payload"]["reason"], "KICKED");
        assert_eq!(v["payload"]["reconnect"], false);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_envelope_or_a_clear_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            match parse_inbound(&bytes, 32) {
                Ok(inbound) => {
                    let frame = forward_frame(&inbound.target, &inbound.kind, "x", inbound.payload, None);
                    let v: Value = serde_json::from_slice(&frame).expect("forwarded frames are JSON");
                    prop_assert_eq!(v["target"].as_str(), Some(&*inbound.target));
                }
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }

        #[test]
        fn json_text_gives_an_envelope_or_a_clear_error(text in r#"[{}\[\]":, a-z0-9\\]{0,200}"#) {
            let _ = parse_inbound(text.as_bytes(), 32);
        }

        #[test]
        fn valid_envelopes_round_trip(target in ".{0,40}", kind in ".{0,40}", originator in ".{0,20}", payload in json_value()) {
            let text = serde_json::json!({"target": target, "type": kind, "payload": payload}).to_string();
            let inbound = parse_inbound(text.as_bytes(), 32).expect("valid envelope");
            prop_assert_eq!(&*inbound.target, target.as_str());
            prop_assert_eq!(&*inbound.kind, kind.as_str());
            let frame = forward_frame(&inbound.target, &inbound.kind, &originator, inbound.payload, None);
            prop_assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1, "one line");
            let v: Value = serde_json::from_slice(&frame).unwrap();
            prop_assert_eq!(&v["target"], &Value::String(target));
            prop_assert_eq!(&v["type"], &Value::String(kind));
            prop_assert_eq!(&v["originator"], &Value::String(originator));
            prop_assert_eq!(&v["payload"], &payload);
        }
    }
}
