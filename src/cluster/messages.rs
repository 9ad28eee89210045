//! What nodes say to each other through Redis: one message per `PUBLISH`,
//! a JSON header line, and for a batch of envelopes their bytes after it,
//! exactly as the target will read them (no re-encoding on either side).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::core::cluster::{Broadcast, Fate};
use crate::core::ids::Epoch;

/// A message's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Header {
    /// Envelopes for users connected on the receiving node: `(id, target,
    /// length)` each, the envelopes following the header in that order.
    Envelopes {
        /// The sending node.
        from: String,
        /// One entry per envelope.
        items: Vec<(u64, String, usize)>,
    },
    /// How envelopes the receiving node sent ended here.
    Fates {
        /// The node the envelopes went to.
        from: String,
        /// `(id, fate)` each.
        items: Vec<(u64, Fate)>,
    },
    /// A newer claim on `user` exists: close its connection if its epoch is
    /// `epoch` or older.
    Fence {
        /// The node that claimed.
        from: String,
        /// The user.
        user: String,
        /// The superseded epoch.
        epoch: Epoch,
    },
    /// A node's message to itself, proving its subscription delivers.
    Ping {
        /// The node.
        from: String,
        /// A counter.
        seq: u64,
    },
    /// An admin action for every node.
    Broadcast {
        /// The node it was asked of.
        from: String,
        /// What to do.
        command: Broadcast,
    },
    /// A change to rooms the shared state made (its script publishes this
    /// on the control channel, see `rooms`).
    Room {
        /// `joined`, `left` or `moved`.
        change: String,
        /// The room.
        room: String,
        /// The member.
        user: String,
        /// The node its connection is on.
        node: String,
        /// Why it left.
        #[serde(default)]
        reason: Option<String>,
    },
    /// A room envelope for the receiving node's members of `room`; its
    /// bytes follow the header.
    RoomEnvelope {
        /// The sending node.
        from: String,
        /// The room.
        room: String,
        /// Its sender (not written to).
        sender: String,
    },
    /// Close this user's connection as `KICKED`.
    Kick {
        /// The node it was asked of.
        from: String,
        /// The user.
        user: String,
    },
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// No header line.
    #[error("no header line")]
    NoHeader,
    /// The header is not one we know.
    #[error("unreadable header: {0}")]
    Header(String),
    /// The envelopes' lengths do not match the bytes that follow.
    #[error("the envelopes' lengths do not add up to the {0} bytes after the header")]
    Lengths(usize),
}

/// A header, with the envelopes' bytes after it.
pub fn encode(header: &Header, frames: &[Bytes]) -> Bytes {
    let body: usize = frames.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(128 + body);
    // Serialising our own types into memory cannot fail.
    let _ = serde_json::to_writer((&mut out).writer(), header);
    out.put_u8(b'\n');
    for frame in frames {
        out.put_slice(frame);
    }
    out.freeze()
}

/// A message read: its header, and for envelopes each one's bytes (slices
/// of `payload`, not copies).
pub fn decode(payload: Bytes) -> Result<(Header, Vec<Bytes>), MessageError> {
    let end = memchr::memchr(b'\n', &payload).ok_or(MessageError::NoHeader)?;
    let header: Header = serde_json::from_slice(&payload[..end])
        .map_err(|err| MessageError::Header(err.to_string()))?;
    let rest = payload.slice(end + 1..);
    if let Header::RoomEnvelope { .. } = &header {
        return Ok((header, vec![rest]));
    }
    let Header::Envelopes { items, .. } = &header else {
        return Ok((header, Vec::new()));
    };
    let total = items
        .iter()
        .try_fold(0usize, |sum, (_, _, len)| sum.checked_add(*len));
    if total != Some(rest.len()) {
        return Err(MessageError::Lengths(rest.len()));
    }
    let mut frames = Vec::with_capacity(items.len());
    let mut at = 0;
    for (_, _, len) in items {
        frames.push(rest.slice(at..at + len));
        at += len;
    }
    Ok((header, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_travel_byte_for_byte_after_their_header() {
        let frames = vec![
            Bytes::from_static(b"{\"type\":\"offer\",\"payload\":\"a\\nb\"}\n"),
            Bytes::from_static(b"{\"type\":\"answer\"}\n"),
        ];
        let header = Header::Envelopes {
            from: "node-a".into(),
            items: vec![
                (1, "bob".into(), frames[0].len()),
                (2, "zoë".into(), frames[1].len()),
            ],
        };
        let (back, got) = decode(encode(&header, &frames)).unwrap();
        assert_eq!(back, header);
        assert_eq!(got, frames);
    }

    #[test]
    fn other_messages_carry_only_a_header() {
        for header in [
            Header::Fates {
                from: "b".into(),
                items: vec![(3, Fate::Written), (4, Fate::Undelivered("gone".into()))],
            },
            Header::Fence {
                from: "c".into(),
                user: "alice".into(),
                epoch: 9,
            },
            Header::Ping {
                from: "a".into(),
                seq: 1,
            },
            Header::Broadcast {
                from: "a".into(),
                command: Broadcast::KickAll,
            },
        ] {
            let (back, frames) = decode(encode(&header, &[])).unwrap();
            assert_eq!(back, header);
            assert!(frames.is_empty());
        }
    }

    #[test]
    fn malformed_messages_are_refused_not_trusted() {
        assert_eq!(
            decode(Bytes::from_static(b"{}")),
            Err(MessageError::NoHeader)
        );
        assert!(matches!(
            decode(Bytes::from_static(b"{\"kind\":\"nope\"}\n")),
            Err(MessageError::Header(_))
        ));
        let lying = encode(
            &Header::Envelopes {
                from: "a".into(),
                items: vec![(1, "bob".into(), 100), (2, "x".into(), usize::MAX)],
            },
            &[Bytes::from_static(b"short")],
        );
        assert_eq!(decode(lying), Err(MessageError::Lengths(5)));
    }
}
