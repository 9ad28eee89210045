//! Newline-delimited envelopes on a WebTransport stream.
//!
//! QUIC delivers a stream in chunks that have nothing to do with message
//! boundaries: one chunk may carry many lines, and one line may arrive in
//! many chunks. Complete lines inside a chunk are handed out without copying;
//! only a line split across chunks is buffered, and never past the size
//! limit, so an endless line is refused before it is held whole.

use bytes::{Bytes, BytesMut};

/// A line exceeded the envelope size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a line is longer than {max} bytes")]
pub struct LineTooLong {
    /// The limit in bytes (without the newline).
    pub max: usize,
}

/// Splits a byte stream into lines of at most `max_line` bytes. A trailing
/// `\r` is dropped; blank lines are skipped (a client may send one just to
/// open its stream).
#[derive(Debug)]
pub struct LineFramer {
    partial: BytesMut,
    max_line: usize,
}

impl LineFramer {
    /// A framer refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: BytesMut::new(),
            max_line,
        }
    }

    /// Feeds one chunk, calling `on_line` for every line it completes, in
    /// order. After an error the framer must not be fed again.
    pub fn feed(
        &mut self,
        mut chunk: Bytes,
        mut on_line: impl FnMut(&[u8]),
    ) -> Result<(), LineTooLong> {
        let too_long = LineTooLong { max: self.max_line };
        while let Some(end) = memchr::memchr(b'\n', &chunk) {
            if self.partial.len() + end > self.max_line {
                return Err(too_long);
            }
            let line = chunk.split_to(end + 1);
            if self.partial.is_empty() {
                emit(&line[..end], &mut on_line);
            } else {
                self.partial.extend_from_slice(&line[..end]);
                emit(&self.partial, &mut on_line);
                self.partial.clear();
            }
        }
        if self.partial.len() + chunk.len() > self.max_line {
            return Err(too_long);
        }
        self.partial.extend_from_slice(&chunk);
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            // Give back the buffer of a split line so idle streams stay small.
            self.partial = BytesMut::new();
        }
        Ok(())
    }

    /// Bytes of an unfinished line held so far.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

fn emit(line: &[u8], on_line: &mut impl FnMut(&[u8])) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(u8::is_ascii_whitespace) {
        on_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(framer: &mut LineFramer, chunks: &[&[u8]]) -> Result<Vec<String>, LineTooLong> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.feed(Bytes::copy_from_slice(chunk), |line| {
                out.push(String::from_utf8_lossy(line).into_owned())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn several_lines_in_one_chunk() {
        let mut framer = LineFramer::new(100);
        assert_eq!(
            lines(&mut framer, &[b"a\nbb\nccc\n"]).unwrap(),
            ["a", "bb", "ccc"]
        );
        assert_eq!(framer.pending(), 0);
    }

    #[test]
    fn a_line_across_many_chunks() {
        let mut framer = LineFramer::new(100);
        assert_eq!(
            lines(&mut framer, &[b"{\"ta", b"rget\"", b":1}\nnext", b"\n"]).unwrap(),
            ["{\"target\":1}", "next"]
        );
    }

    #[test]
    fn crlf_and_blank_lines() {
        let mut framer = LineFramer::new(100);
        assert_eq!(lines(&mut framer, &[b"\n\r\n  \na\r\n"]).unwrap(), ["a"]);
    }

    #[test]
    fn an_unterminated_line_waits() {
        let mut framer = LineFramer::new(100);
        assert!(lines(&mut framer, &[b"partial"]).unwrap().is_empty());
        assert_eq!(framer.pending(), 7);
    }

    #[test]
    fn limit_is_exact() {
        let mut framer = LineFramer::new(4);
        assert_eq!(lines(&mut framer, &[b"abcd\n"]).unwrap(), ["abcd"]);
        assert_eq!(
            lines(&mut framer, &[b"abcde\n"]),
            Err(LineTooLong { max: 4 })
        );
        let mut framer = LineFramer::new(4);
        assert_eq!(
            lines(&mut framer, &[b"ab", b"cd", b"\n"]).unwrap(),
            ["abcd"]
        );
        let mut framer = LineFramer::new(4);
        assert_eq!(
            lines(&mut framer, &[b"ab", b"cde"]),
            Err(LineTooLong { max: 4 })
        );
    }

    #[test]
    fn refused_before_the_line_is_held_whole() {
        let mut framer = LineFramer::new(1000);
        let chunk = vec![b'x'; 600];
        framer.feed(Bytes::from(chunk.clone()), |_| {}).unwrap();
        assert_eq!(
            framer.feed(Bytes::from(chunk), |_| {}),
            Err(LineTooLong { max: 1000 })
        );
        assert!(framer.pending() <= 1000);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Splits `data` at the given cut points.
    fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain([data.len()]) {
            out.push(Bytes::copy_from_slice(&data[start..point]));
            start = point;
        }
        out
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_lines(
            lines in prop::collection::vec(r"[^\n\r]*[^\s]", 0..20),
            cuts in prop::collection::vec(any::<usize>(), 0..30),
        ) {
            let mut data = Vec::new();
            for line in &lines {
                data.extend_from_slice(line.as_bytes());
                data.push(b'\n');
            }
            let mut framer = LineFramer::new(1 << 20);
            let mut got = Vec::new();
            for chunk in chunks(&data, &cuts) {
                framer.feed(chunk, |line| got.push(String::from_utf8(line.to_vec()).unwrap())).unwrap();
            }
            prop_assert_eq!(got, lines);
            prop_assert_eq!(framer.pending(), 0);
        }

        #[test]
        fn any_bytes_never_exceed_the_limit(
            data in prop::collection::vec(any::<u8>(), 0..2048),
            cuts in prop::collection::vec(any::<usize>(), 0..30),
            max in 1usize..300,
        ) {
            let mut framer = LineFramer::new(max);
            for chunk in chunks(&data, &cuts) {
                let mut longest = 0;
                let fed = framer.feed(chunk, |line| longest = longest.max(line.len()));
                prop_assert!(longest <= max);
                prop_assert!(framer.pending() <= max);
                if fed.is_err() {
                    break;
                }
            }
        }
    }
}
