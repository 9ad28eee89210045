//! A hostile HTTP/3 client: raw QUIC streams with hand-made HTTP/3 frames,
//! for what no well-behaved client library will send (frames declaring
//! huge lengths, oversized header blocks, zero stream credit), plus an h3
//! client that keeps its connection for many requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Addrs, within};

/// A plain HTTP/3 request (optionally an extended CONNECT for WebTransport)
/// with a raw h3 client, to see the status codes a browser would get.
pub async fn h3_request(
    gw: &Addrs,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    webtransport: bool,
) -> (u16, String) {
    h3_try_request(gw, method, path, headers, webtransport)
        .await
        .unwrap_or_else(|err| panic!("HTTP/3 request failed: {err}"))
}

/// Like [`h3_request`], returning protocol errors instead of failing.
pub async fn h3_try_request(
    gw: &Addrs,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    webtransport: bool,
) -> Result<(u16, String), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(gw.cert_der.clone()))
        .unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = within(
        "quic connect",
        endpoint.connect(gw.wt, "localhost").unwrap(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (mut driver, mut send_request) = h3::client::builder()
        .enable_extended_connect(true)
        .enable_datagram(true)
        .build::<_, _, bytes::Bytes>(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| e.to_string())?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", gw.wt.port()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if webtransport {
        request = request.extension(h3::ext::Protocol::WEB_TRANSPORT);
    }
    let result = async {
        let mut stream = within(
            "h3 send",
            send_request.send_request(request.body(()).unwrap()),
        )
        .await
        .map_err(|e| e.to_string())?;
        within("h3 finish", stream.finish())
            .await
            .map_err(|e| e.to_string())?;
        let response = within("h3 response", stream.recv_response())
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(mut chunk) = within("h3 body", stream.recv_data())
            .await
            .map_err(|e| e.to_string())?
        {
            use bytes::Buf;
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok((
            response.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
    .await;
    drive.abort();
    result
}

/// A QUIC client connection to the gateway (ALPN `h3`), from `bind`, with
/// `transport` settings.
pub async fn quic_connect(
    gw: &Addrs,
    bind: SocketAddr,
    transport: quinn::TransportConfig,
) -> quinn::Connection {
    try_quic_connect(gw, bind, transport)
        .await
        .expect("QUIC handshake")
}

/// [`quic_connect`], returning a refused handshake as an error.
pub async fn try_quic_connect(
    gw: &Addrs,
    bind: SocketAddr,
    transport: quinn::TransportConfig,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(gw.cert_der.clone()))
        .unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(bind).unwrap();
    endpoint.set_default_client_config(config);
    within(
        "quic connect",
        endpoint.connect(gw.wt, "localhost").unwrap(),
    )
    .await
}

/// A QUIC variable-length integer (RFC 9000 §16).
pub fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=0x3f => vec![n as u8],
        0x40..=0x3fff => ((n as u16) | 0x4000).to_be_bytes().to_vec(),
        0x4000..=0x3fff_ffff => ((n as u32) | 0x8000_0000).to_be_bytes().to_vec(),
        _ => (n | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
    }
}

/// An HTTP/3 frame: type, length, payload.
pub fn frame(kind: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(kind);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// A QPACK integer with an `n`-bit prefix whose high bits are `flags`
/// (RFC 7541 §5.1).
fn prefixed_int(flags: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A QPACK field section of literal names and values (no tables, no
/// Huffman): what h3 decodes without any encoder stream.
pub fn qpack_fields(fields: &[(&str, &str)]) -> Vec<u8> {
    // Required Insert Count 0, Base 0.
    let mut out = vec![0, 0];
    for (name, value) in fields {
        // Literal field line with literal name: 001N H + 3-bit name length.
        prefixed_int(0x20, 3, name.len(), &mut out);
        out.extend_from_slice(name.as_bytes());
        prefixed_int(0x00, 7, value.len(), &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A GET request's HEADERS frame for `path`, with `extra` fields.
pub fn get_headers(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    frame(0x01, &qpack_fields(&fields))
}

/// Opens the client's control stream with an empty SETTINGS frame.
pub async fn open_control(conn: &quinn::Connection) -> quinn::SendStream {
    let mut control = within("open uni", conn.open_uni()).await.unwrap();
    let mut head = vec![0x00];
    head.extend(frame(0x04, &[]));
    control.write_all(&head).await.unwrap();
    control
}

/// Opens the client's control stream with a SETTINGS frame of
/// `(identifier, value)` pairs, as a browser of some WebTransport draft
/// sends them.
pub async fn open_control_with(
    conn: &quinn::Connection,
    settings: &[(u64, u64)],
) -> quinn::SendStream {
    let mut control = within("open uni", conn.open_uni()).await.unwrap();
    let payload: Vec<u8> = settings
        .iter()
        .flat_map(|(id, value)| [varint(*id), varint(*value)].concat())
        .collect();
    let mut head = vec![0x00];
    head.extend(frame(0x04, &payload));
    control.write_all(&head).await.unwrap();
    control
}

/// The server's SETTINGS as `(identifier, value)` pairs in the order sent,
/// read off its control stream (the unidirectional stream of type 0x00;
/// others, such as GREASE streams, are skipped) with this module's own
/// decoder, not h3's.
pub async fn server_settings(conn: &quinn::Connection) -> Vec<(u64, u64)> {
    loop {
        let mut recv = within("a server unidirectional stream", conn.accept_uni())
            .await
            .expect("the server opens its control stream");
        let mut bytes = Vec::new();
        loop {
            if let Some((kind, taken)) = read_varint(&bytes) {
                if kind != 0x00 {
                    break;
                }
                if let Some((0x04, payload)) = frames(&bytes[taken..]).first() {
                    return setting_pairs(payload);
                }
            }
            let chunk = within("the server's control stream", recv.read_chunk(4096, true))
                .await
                .expect("control stream readable")
                .expect("control stream stays open");
            bytes.extend_from_slice(&chunk.bytes);
        }
    }
}

/// A SETTINGS frame's payload as `(identifier, value)` pairs.
fn setting_pairs(mut payload: &[u8]) -> Vec<(u64, u64)> {
    let mut pairs = Vec::new();
    while !payload.is_empty() {
        let (id, a) = read_varint(payload).expect("setting identifier");
        let (value, b) = read_varint(&payload[a..]).expect("setting value");
        pairs.push((id, value));
        payload = &payload[a + b..];
    }
    pairs
}

/// Writes `head`, then junk, in 16 KiB chunks until the stream fails, `cap`
/// bytes are written, or `time` has passed; returns the bytes written.
pub async fn flood(
    stream: &mut quinn::SendStream,
    head: &[u8],
    cap: usize,
    time: Duration,
) -> usize {
    let junk = vec![0x5a; 16 * 1024];
    let mut written = 0;
    let _ = tokio::time::timeout(time, async {
        if stream.write_all(head).await.is_err() {
            return;
        }
        written = head.len();
        while written < cap {
            if stream.write_all(&junk).await.is_err() {
                return;
            }
            written += junk.len();
        }
    })
    .await;
    written
}

/// The application close a connection ended with: `(code, reason)`.
pub async fn closed_with(conn: &quinn::Connection) -> Option<(u64, String)> {
    match within("connection closed", conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => Some((
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        )),
        _ => None,
    }
}

/// An h3 client that keeps its connection, for many requests on one.
pub struct H3Client {
    pub conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl H3Client {
    /// Connects from `bind`.
    pub async fn connect(gw: &Addrs, bind: SocketAddr) -> Self {
        Self::connect_with(gw, bind, quinn::TransportConfig::default()).await
    }

    /// Connects from `bind` with `transport` settings.
    pub async fn connect_with(
        gw: &Addrs,
        bind: SocketAddr,
        transport: quinn::TransportConfig,
    ) -> Self {
        Self::try_connect_with(gw, bind, transport)
            .await
            .expect("HTTP/3 connection")
    }

    /// [`H3Client::connect_with`], returning a refusal as an error.
    pub async fn try_connect_with(
        gw: &Addrs,
        bind: SocketAddr,
        transport: quinn::TransportConfig,
    ) -> Result<Self, String> {
        let conn = try_quic_connect(gw, bind, transport)
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, send) = h3::client::builder()
            .enable_extended_connect(true)
            .enable_datagram(true)
            .build::<_, _, bytes::Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Self { conn, send, driver })
    }

    /// Sends a request (an extended CONNECT for WebTransport when
    /// `webtransport`) and returns its status, or the error.
    pub async fn request(&mut self, path: &str, webtransport: bool) -> Result<u16, String> {
        let method = if webtransport {
            http::Method::CONNECT
        } else {
            http::Method::GET
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        if webtransport {
            request = request.extension(h3::ext::Protocol::WEB_TRANSPORT);
        }
        let mut stream = self
            .send
            .send_request(request.body(()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        stream.finish().await.map_err(|e| e.to_string())?;
        let response = stream.recv_response().await.map_err(|e| e.to_string())?;
        while stream
            .recv_data()
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {}
        Ok(response.status().as_u16())
    }
}

impl Drop for H3Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads a QUIC variable-length integer; returns it and the bytes it took.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    let mut value = u64::from(first & 0x3f);
    for byte in bytes.get(1..len)? {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

/// The HTTP/3 frames in `bytes`, as `(type, payload)`.
pub fn frames(mut bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    while let Some((kind, a)) = read_varint(bytes) {
        let Some((len, b)) = read_varint(&bytes[a..]) else {
            break;
        };
        let start = a + b;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break;
        };
        out.push((kind, payload));
        bytes = &bytes[start + len as usize..];
    }
    out
}

/// A QPACK integer with an `n`-bit prefix; returns it and the bytes it took.
fn read_prefixed(bytes: &[u8], n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*bytes.first()?) & max;
    if value < max {
        return Some((value, 1));
    }
    let mut shift = 0;
    for (i, byte) in bytes[1..].iter().enumerate() {
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((value, i + 2));
        }
    }
    None
}

/// The `:status` of a response (the first HEADERS frame in `bytes`), as the
/// h3 server encodes it: an indexed static entry (RFC 9204 Appendix A) or a
/// literal value with a static name reference.
pub fn response_status(bytes: &[u8]) -> Option<u16> {
    let (_, section) = frames(bytes).into_iter().find(|(kind, _)| *kind == 0x01)?;
    // Skip the Required Insert Count and Base prefix.
    let line = section.get(2..)?;
    let first = *line.first()?;
    if first & 0xc0 == 0xc0 {
        let (index, _) = read_prefixed(line, 6)?;
        return match index {
            24 => Some(103),
            25 => Some(200),
            26 => Some(304),
            27 => Some(404),
            28 => Some(503),
            63 => Some(100),
            64 => Some(204),
            65 => Some(206),
            66 => Some(302),
            67 => Some(400),
            68 => Some(403),
            69 => Some(421),
            70 => Some(425),
            71 => Some(500),
            _ => None,
        };
    }
    if first & 0xc0 == 0x40 {
        let (_, taken) = read_prefixed(line, 4)?;
        let rest = &line[taken..];
        let huffman = rest.first()? & 0x80 != 0;
        let (len, taken) = read_prefixed(rest, 7)?;
        let value = rest.get(taken..taken + len)?;
        let text = if huffman {
            huffman_digits(value)?
        } else {
            String::from_utf8(value.to_vec()).ok()?
        };
        return text.parse().ok();
    }
    None
}

/// Decodes a Huffman-coded string of digits (RFC 7541 Appendix B: `0`–`2`
/// are 5-bit codes `00000`–`00010`, `3`–`9` 6-bit codes `011001`–`011111`;
/// the padding is all ones).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let code = |at: usize, n: usize| -> Option<u8> {
        bits.get(at..at + n)
            .map(|b| b.iter().fold(0, |acc, bit| (acc << 1) | bit))
    };
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        if bits[at..].iter().all(|bit| *bit == 1) && bits.len() - at < 8 {
            break;
        }
        match code(at, 5)? {
            five @ 0..=2 => {
                out.push(char::from(b'0' + five));
                at += 5;
            }
            _ => {
                let six = code(at, 6)?;
                if !(0b011001..=0b011111).contains(&six) {
                    return None;
                }
                out.push(char::from(b'3' + (six - 0b011001)));
                at += 6;
            }
        }
    }
    Some(out)
}
