//! Fixed ports for servers the tests start (Redis, coturn), chosen below
//! the kernel's ephemeral range: the kernel never hands those to a socket
//! bound to port 0 or to an outgoing connection, so a port found free stays
//! free until the server binds it, and stays its own while the server
//! restarts. A port in the ephemeral range can be taken between the check
//! and the bind by another test's client (and coturn then retries its bind
//! forever).

use std::net::{TcpListener, UdpSocket};
use std::ops::Range;

/// Which socket kind must be free on a port.
#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    Tcp,
    Udp,
}

fn ports_outside_the_ephemeral_range() -> Range<u16> {
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    10_000..lowest_ephemeral
}

fn is_free(protocol: Protocol, port: u16) -> bool {
    match protocol {
        Protocol::Tcp => TcpListener::bind(("127.0.0.1", port)).is_ok(),
        Protocol::Udp => UdpSocket::bind(("127.0.0.1", port)).is_ok(),
    }
}

/// The first of `count` consecutive ports free for `protocol` on
/// 127.0.0.1, below the ephemeral range.
pub fn free_port_block(protocol: Protocol, count: u16) -> u16 {
    let ports = ports_outside_the_ephemeral_range();
    for _ in 0..100 {
        let first = rand::random_range(ports.start..ports.end - count);
        if (first..first + count).all(|port| is_free(protocol, port)) {
            return first;
        }
    }
    panic!("no {count} free {protocol:?} ports in a row on 127.0.0.1 in {ports:?}");
}
