//! What nodes say to each other through Redis: one message per `PUBLISH`,
//! a JSON header line, and for a batch of envelopes their bytes after it,
//! exactly as the target will read them (no re-encoding on either side).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::core::cluster::{Broadcast, Fate, Handoff};
use crate::core::ids::Epoch;
use crate::core::outbox::{Origin, Queued};
use crate::core::resume::Moved;

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
        /// The newer claim, when its node asks for the user's stream (a
        /// [`Header::Stream`] back).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handoff: Option<Epoch>,
    },
    /// A user's stream, handed to the node that claimed the user: its
    /// kept envelopes' bytes follow the header, in `seq` order.
    Stream {
        /// The node that held it.
        from: String,
        /// The user.
        user: String,
        /// The claim it is handed to.
        epoch: Epoch,
        /// `None` when the node held no stream for the user.
        stream: Option<StreamHead>,
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

/// A handed-over stream's state, its kept envelopes' bytes following the
/// header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHead {
    /// Its session id.
    pub session: String,
    /// The `seq` its next envelope gets.
    pub next_seq: u64,
    /// The highest `seq` the client acknowledged.
    pub acked: u64,
    /// The highest `seq` written.
    pub written: u64,
    /// Every kept envelope, in `seq` order.
    pub items: Vec<KeptHead>,
}

/// One kept envelope of a handed-over stream; its bytes follow the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptHead {
    /// Its `seq`.
    pub seq: u64,
    /// Its length.
    pub len: usize,
    /// Who to tell its fate: a node, and that node's id for it.
    pub origin: Option<(String, u64)>,
    /// Accepted from a sender (rather than the gateway's own).
    pub accepted: bool,
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
    /// An envelope is not UTF-8 text (clients are written text frames as
    /// they are).
    #[error("envelope {0} is not UTF-8 text")]
    NotText(usize),
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

/// The message handing `handoff` over from node `from`. Only envelopes
/// whose fate another node waits for carry their origin: the node where
/// the stream held them turned its own senders' into entries of its books.
pub fn handoff(from: &str, handoff: &Handoff) -> Bytes {
    let (head, frames) = match &handoff.stream {
        Some(moved) => {
            let items = moved
                .kept
                .iter()
                .map(|item| {
                    let origin = match &item.origin {
                        Some(Origin::Remote { node, id }) => Some((node.to_string(), *id)),
                        _ => None,
                    };
                    KeptHead {
                        seq: item.seq,
                        len: item.frame.len(),
                        origin,
                        accepted: item.accepted_at.is_some(),
                    }
                })
                .collect();
            let head = StreamHead {
                session: moved.session.to_string(),
                next_seq: moved.next_seq,
                acked: moved.acked,
                written: moved.written,
                items,
            };
            let frames: Vec<Bytes> = moved.kept.iter().map(|item| item.frame.clone()).collect();
            (Some(head), frames)
        }
        None => (None, Vec::new()),
    };
    let header = Header::Stream {
        from: from.to_owned(),
        user: handoff.user.to_string(),
        epoch: handoff.epoch,
        stream: head,
    };
    encode(&header, &frames)
}

/// The stream a [`Header::Stream`] carried, its envelopes from senders
/// accepted `now` (for the relay latency, which then counts from here).
pub fn moved(head: StreamHead, frames: Vec<Bytes>, now: std::time::Instant) -> Moved {
    let kept = head
        .items
        .into_iter()
        .zip(frames)
        .map(|(item, frame)| Queued {
            frame,
            origin: item.origin.map(|(node, id)| Origin::Remote {
                node: node.into(),
                id,
            }),
            accepted_at: item.accepted.then_some(now),
            seq: item.seq,
        })
        .collect();
    Moved {
        session: head.session.into(),
        next_seq: head.next_seq,
        acked: head.acked,
        written: head.written,
        kept,
    }
}

/// A message read: its header, and for envelopes each one's bytes (slices
/// of `payload`, not copies).
pub fn decode(payload: Bytes) -> Result<(Header, Vec<Bytes>), MessageError> {
    let end = memchr::memchr(b'\n', &payload).ok_or(MessageError::NoHeader)?;
    let header: Header = serde_json::from_slice(&payload[..end])
        .map_err(|err| MessageError::Header(err.to_string()))?;
    let rest = payload.slice(end + 1..);
    if let Header::RoomEnvelope { .. } = &header {
        return text(vec![rest]).map(|frames| (header, frames));
    }
    let lengths: Vec<usize> = match &header {
        Header::Envelopes { items, .. } => items.iter().map(|(_, _, len)| *len).collect(),
        Header::Stream {
            stream: Some(head), ..
        } => head.items.iter().map(|item| item.len).collect(),
        _ => return Ok((header, Vec::new())),
    };
    let total = lengths
        .iter()
        .try_fold(0usize, |sum, len| sum.checked_add(*len));
    if total != Some(rest.len()) {
        return Err(MessageError::Lengths(rest.len()));
    }
    let mut frames = Vec::with_capacity(lengths.len());
    let mut at = 0;
    for len in lengths {
        frames.push(rest.slice(at..at + len));
        at += len;
    }
    text(frames).map(|frames| (header, frames))
}

/// `frames`, once each is known to be UTF-8 text.
fn text(frames: Vec<Bytes>) -> Result<Vec<Bytes>, MessageError> {
    match frames
        .iter()
        .position(|frame| std::str::from_utf8(frame).is_err())
    {
        Some(at) => Err(MessageError::NotText(at)),
        None => Ok(frames),
    }
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
                handoff: Some(10),
            },
            Header::Stream {
                from: "c".into(),
                user: "alice".into(),
                epoch: 10,
                stream: None,
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
    fn a_stream_travels_with_its_kept_envelopes() {
        let frames = vec![
            Bytes::from_static(b"{\"type\":\"offer\",\"seq\":7}\n"),
            Bytes::from_static(b"{\"type\":\"answer\",\"seq\":8}\n"),
        ];
        let header = Header::Stream {
            from: "node-a".into(),
            user: "bob".into(),
            epoch: 12,
            stream: Some(StreamHead {
                session: "9f3c".into(),
                next_seq: 9,
                acked: 6,
                written: 7,
                items: vec![
                    KeptHead {
                        seq: 7,
                        len: frames[0].len(),
                        origin: None,
                        accepted: true,
                    },
                    KeptHead {
                        seq: 8,
                        len: frames[1].len(),
                        origin: Some(("node-a".into(), 3)),
                        accepted: true,
                    },
                ],
            }),
        };
        let (back, got) = decode(encode(&header, &frames)).unwrap();
        assert_eq!(back, header);
        assert_eq!(got, frames);
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
        let not_text = encode(
            &Header::Envelopes {
                from: "a".into(),
                items: vec![(1, "bob".into(), 3), (2, "bob".into(), 2)],
            },
            &[Bytes::from_static(b"{}\n"), Bytes::from_static(b"\xff\n")],
        );
        assert_eq!(decode(not_text), Err(MessageError::NotText(1)));
    }
}
