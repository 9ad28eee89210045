//! Any bytes a client sends as one frame: the parser must return an
//! envelope or an error, never panic, and what it accepts must forward as a
//! single line of valid JSON carrying the same target and type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signal_gateway::core::envelope::{forward_frame, parse_inbound};

fuzz_target!(|data: &[u8]| {
    if let Ok(inbound) = parse_inbound(data, 32) {
        let frame = forward_frame(&inbound.target, &inbound.kind, "fuzz", inbound.payload, None);
        assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&frame).expect("forwarded frames are JSON");
        assert_eq!(value["target"].as_str(), Some(&*inbound.target));
        assert_eq!(value["type"].as_str(), Some(&*inbound.kind));
    }
});
