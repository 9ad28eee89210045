//! A minimal HTTP/1.1 client for the few plain requests the bench makes
//! (register, `/v1/stats`, `/v1/cert-hash`, PeerJS's `/peerjs/id`), over
//! TCP or, against a gateway started with `--tls`, over TLS.
//!
//! One keep-alive connection per client, as a browser's `fetch` would reuse,
//! so the set-up scenario measures the request and not a TCP (or TLS)
//! handshake per registration. Responses must carry `Content-Length` (axum
//! and express both send it for these routes) or end with the connection.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;

use crate::IO_TIMEOUT;
use crate::tls::{self, Stream};

/// Largest response body accepted (the stats and user listings are small).
const MAX_BODY_BYTES: usize = 4 << 20;

/// A keep-alive HTTP/1.1 connection to one server.
pub struct HttpClient {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    conn: Option<BufReader<Stream>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl HttpClient {
    /// A client for `addr`, over TLS if `tls` is given; connects on first use.
    pub fn new(addr: SocketAddr, tls: Option<TlsConnector>) -> Self {
        Self {
            addr,
            tls,
            conn: None,
        }
    }

    /// `GET path`; returns the status and body.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.request("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&mut self, path: &str, body: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.request("POST", path, Some(body.as_bytes())).await
    }

    /// One request, retried once on a fresh connection if a reused one had
    /// been closed by the server in the meantime.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let reused = self.conn.is_some();
        match tokio::time::timeout(IO_TIMEOUT, self.try_request(method, path, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) if reused => {
                self.conn = None;
                tokio::time::timeout(IO_TIMEOUT, self.try_request(method, path, body))
                    .await
                    .context("HTTP request timed out")?
            }
            Ok(Err(err)) => {
                self.conn = None;
                Err(err)
            }
            Err(_) => {
                self.conn = None;
                bail!("HTTP {method} {path} timed out")
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let stream = tls::connect(self.addr, self.tls.as_ref()).await?;
            self.conn = Some(BufReader::new(stream));
        }
        let Some(conn) = self.conn.as_mut() else {
            bail!("no connection");
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n",
            self.addr
        );
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body.unwrap_or_default());
        conn.get_mut().write_all(&request).await?;
        // TLS may hold the last record back until flushed.
        conn.get_mut().flush().await?;

        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed before the response");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("connection closed in the response head");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse::<usize>().context("bad Content-Length")?);
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not supported by this client");
                }
            }
        }
        let mut body = Vec::new();
        match length {
            Some(n) if n > MAX_BODY_BYTES => bail!("response body of {n} bytes is too large"),
            Some(n) => {
                body.resize(n, 0);
                conn.read_exact(&mut body).await?;
            }
            None => {
                (&mut *conn)
                    .take(MAX_BODY_BYTES as u64)
                    .read_to_end(&mut body)
                    .await?;
                close = true;
            }
        }
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }
}
