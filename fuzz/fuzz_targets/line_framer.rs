//! Any byte stream cut into any chunks: the WebTransport line framer must
//! never panic, never hand out a line over the limit, never hold more than
//! the limit, and must yield the same lines however the stream is cut.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use signal_gateway::connection::lines::LineFramer;

const MAX_LINE: usize = 256;

fn run(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut framer = LineFramer::new(MAX_LINE);
    let mut lines = Vec::new();
    for chunk in chunks {
        let fed = framer.feed(Bytes::copy_from_slice(chunk), |line| {
            assert!(line.len() <= MAX_LINE);
            lines.push(line.to_vec());
        });
        assert!(framer.pending() <= MAX_LINE);
        if fed.is_err() {
            return (lines, true);
        }
    }
    (lines, false)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size; the rest is the stream.
    let Some((&size, stream)) = data.split_first() else { return };
    let size = usize::from(size).max(1);
    let chunked: Vec<&[u8]> = stream.chunks(size).collect();
    let (lines, failed) = run(&chunked);
    let (whole_lines, whole_failed) = run(&[stream]);
    if !failed && !whole_failed {
        assert_eq!(lines, whole_lines, "chunking must not change the lines");
    }
});
