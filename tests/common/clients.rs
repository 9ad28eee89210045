//! Realtime clients as browsers and native apps are: tokio-tungstenite for
//! WebSocket, wtransport for WebTransport, behind one interface.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::gateway::Addrs;
use super::within;

/// Which transport a test client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    WebTransport,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Close code (WebSocket close frame or QUIC application close).
    pub code: u32,
    /// Close reason text.
    pub reason: String,
    /// The payload of the final `CLOSE` envelope, if one arrived.
    pub envelope: Option<Value>,
}

/// A WebSocket client connection.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Ws = WsStream;

/// A realtime client on either transport, with one interface.
pub enum Client {
    Ws(Ws),
    Wt(WtClient),
}

pub struct WtClient {
    pub conn: wtransport::Connection,
    pub send: wtransport::SendStream,
    pub recv: BufReader<wtransport::RecvStream>,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

/// Opens a WebSocket to `/v1/connect` with the given query and headers.
pub async fn ws_connect(
    gw: &Addrs,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/v1/connect{query}", gw.http)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    within(
        "websocket connect",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map(|(ws, _)| ws)
}

/// A wtransport client endpoint that pins the gateway's certificate.
pub fn wt_endpoint(
    gw: &Addrs,
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    wt_endpoint_from(gw, "[::]:0".parse().unwrap())
}

/// [`wt_endpoint`] bound to `bind` (to be another client address).
pub fn wt_endpoint_from(
    gw: &Addrs,
    bind: SocketAddr,
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_address(bind)
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(gw.cert_sha256)])
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .build();
    wtransport::Endpoint::client(config).unwrap()
}

/// Opens a WebTransport session with the given query and headers.
pub async fn wt_connect(
    gw: &Addrs,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<WtClient, wtransport::error::ConnectingError> {
    let endpoint = wt_endpoint(gw);
    let mut options = wtransport::endpoint::ConnectOptions::builder(format!(
        "https://{}/v1/connect{query}",
        gw.wt
    ));
    for (name, value) in headers {
        options = options.add_header(*name, *value);
    }
    let conn = within("webtransport connect", endpoint.connect(options.build())).await?;
    let (send, recv) = within("open stream", async {
        conn.open_bi().await.unwrap().await.unwrap()
    })
    .await;
    Ok(WtClient {
        conn,
        send,
        recv: BufReader::new(recv),
        _endpoint: endpoint,
    })
}

impl Client {
    /// Connects with `token` in the query string (as a browser must).
    pub async fn connect(gw: &Addrs, kind: Kind, token: &str) -> Self {
        let query = format!("?token={token}");
        match kind {
            Kind::WebSocket => Client::Ws(
                ws_connect(gw, &query, &[])
                    .await
                    .expect("websocket connects"),
            ),
            Kind::WebTransport => Client::Wt(
                wt_connect(gw, &query, &[])
                    .await
                    .expect("webtransport connects"),
            ),
        }
    }

    /// Sends one envelope text (WebSocket text frame; WebTransport line).
    pub async fn send_text(&mut self, text: &str) {
        match self {
            Client::Ws(ws) => within("ws send", ws.send(Message::text(text)))
                .await
                .expect("ws send"),
            Client::Wt(wt) => {
                let mut line = text.as_bytes().to_vec();
                line.push(b'\n');
                within("wt send", wt.send.write_all(&line))
                    .await
                    .expect("wt send");
            }
        }
    }

    /// Sends raw bytes: a binary frame on WebSocket, bytes as they are on
    /// WebTransport (the caller adds newlines).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match self {
            Client::Ws(ws) => within("ws send", ws.send(Message::binary(bytes.to_vec())))
                .await
                .expect("ws send"),
            Client::Wt(wt) => within("wt send", wt.send.write_all(bytes))
                .await
                .expect("wt send"),
        }
    }

    /// Sends `{target, type, payload}`.
    pub async fn send(&mut self, target: &str, kind: &str, payload: Value) {
        self.send_text(&json!({ "target": target, "type": kind, "payload": payload }).to_string())
            .await;
    }

    /// The next envelope as raw text (without the trailing newline).
    pub async fn recv_text(&mut self) -> String {
        match self {
            // One deadline for the envelope, however many pings come first.
            Client::Ws(ws) => {
                within("ws recv", async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(text))) => {
                                return text.trim_end_matches('\n').to_owned();
                            }
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                            other => panic!("expected an envelope, got {other:?}"),
                        }
                    }
                })
                .await
            }
            Client::Wt(wt) => {
                let mut line = String::new();
                let read = within("wt recv", wt.recv.read_line(&mut line))
                    .await
                    .expect("wt read");
                assert!(read > 0, "stream ended while an envelope was expected");
                line.trim_end_matches('\n').to_owned()
            }
        }
    }

    /// The next envelope.
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
    }

    /// Reads until the gateway closes the connection; returns the close
    /// code, reason and final CLOSE envelope. Envelopes before it are returned
    /// in `skipped`.
    pub async fn closed(&mut self) -> Closed {
        let mut envelope = None;
        match self {
            Client::Ws(ws) => loop {
                match within("ws close", ws.next()).await {
                    Some(Ok(Message::Text(text))) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        if v["type"] == "CLOSE" {
                            envelope = Some(v["payload"].clone());
                        }
                    }
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Closed {
                            code: u16::from(frame.code).into(),
                            reason: frame.reason.to_string(),
                            envelope,
                        };
                    }
                    Some(Ok(_)) => {}
                    other => panic!("expected a close frame, got {other:?}"),
                }
            },
            Client::Wt(wt) => {
                loop {
                    let mut line = String::new();
                    match within("wt close", wt.recv.read_line(&mut line)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let v: Value = serde_json::from_str(line.trim_end()).unwrap();
                            if v["type"] == "CLOSE" {
                                envelope = Some(v["payload"].clone());
                            }
                        }
                    }
                }
                // Reading to the end is what a client does; the gateway
                // closes the connection with the code right after.
                match within("wt closed", wt.conn.closed()).await {
                    wtransport::error::ConnectionError::ApplicationClosed(close) => Closed {
                        code: u32::try_from(close.code().into_inner()).unwrap(),
                        reason: String::from_utf8_lossy(close.reason()).into_owned(),
                        envelope,
                    },
                    other => panic!("expected an application close, got {other:?}"),
                }
            }
        }
    }

    /// The next envelope other than `CLOSE`, or how the connection ended
    /// if it ends first.
    pub async fn recv_or_close(&mut self) -> Result<Value, Closed> {
        let mut envelope = None;
        match self {
            Client::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        if v["type"] != "CLOSE" {
                            return Ok(v);
                        }
                        envelope = Some(v["payload"].clone());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(Closed {
                            code: frame.as_ref().map_or(1005, |f| u16::from(f.code).into()),
                            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                            envelope,
                        });
                    }
                    Some(Ok(_)) => {}
                    other => panic!("expected an envelope or a close, got {other:?}"),
                }
            },
            Client::Wt(wt) => {
                let mut line = String::new();
                match wt.recv.read_line(&mut line).await {
                    Ok(0) | Err(_) => match within("wt closed", wt.conn.closed()).await {
                        wtransport::error::ConnectionError::ApplicationClosed(close) => {
                            Err(Closed {
                                code: u32::try_from(close.code().into_inner()).unwrap(),
                                reason: String::from_utf8_lossy(close.reason()).into_owned(),
                                envelope,
                            })
                        }
                        other => panic!("expected an application close, got {other:?}"),
                    },
                    Ok(_) => {
                        let v: Value = serde_json::from_str(line.trim_end()).unwrap();
                        if v["type"] != "CLOSE" {
                            return Ok(v);
                        }
                        // As client.js does on CLOSE: take its code and
                        // reason and close the session, so the gateway
                        // does not linger waiting for it.
                        let payload = v["payload"].clone();
                        wt.conn.close(0u32.into(), b"closed");
                        Err(Closed {
                            code: payload["code"].as_u64().unwrap_or_default() as u32,
                            reason: payload["reason"].as_str().unwrap_or_default().to_owned(),
                            envelope: Some(payload),
                        })
                    }
                }
            }
        }
    }

    /// Closes from the client side, cleanly.
    pub async fn close(self) {
        match self {
            Client::Ws(mut ws) => {
                let _ = within("ws close", ws.close(None)).await;
            }
            Client::Wt(mut wt) => {
                let _ = within("wt finish", wt.send.finish()).await;
                wt.conn.close(0u32.into(), b"bye");
            }
        }
    }
}

impl Client {
    /// Closes the sending side the way a well-behaved client does (close
    /// frame / stream FIN) and keeps reading until the gateway ends the
    /// connection; returns every envelope that arrived meanwhile.
    pub async fn close_and_drain(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        match self {
            Client::Ws(ws) => {
                within("ws close", ws.close(None)).await.ok();
                while let Some(Ok(message)) = within("ws drain", ws.next()).await {
                    if let Message::Text(text) = message {
                        seen.push(serde_json::from_str(&text).unwrap());
                    }
                }
            }
            Client::Wt(wt) => {
                within("wt finish", wt.send.finish()).await.ok();
                loop {
                    let mut line = String::new();
                    match within("wt drain", wt.recv.read_line(&mut line)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => seen.push(serde_json::from_str(line.trim_end()).unwrap()),
                    }
                }
            }
        }
        seen
    }
}

/// Connects with `token` in a thread of its own, then freezes that thread
/// for `freeze`: its sockets go unserviced (no pongs, no QUIC
/// acknowledgements), which is what a vanished browser looks like.
/// Returns once the client is attached.
pub async fn frozen_client(
    addrs: &Addrs,
    kind: Kind,
    token: &str,
    freeze: Duration,
) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let addrs = addrs.clone();
    let token = token.to_owned();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let mut client = Client::connect(&addrs, kind, &token).await;
            assert_eq!(client.recv().await["type"], "WELCOME");
            client
        });
        ready_tx.send(()).unwrap();
        std::thread::sleep(freeze);
        drop(client);
        drop(runtime);
    });
    within(
        "frozen client ready",
        tokio::task::spawn_blocking(move || ready_rx.recv()),
    )
    .await
    .unwrap()
    .expect("frozen client connected");
    handle
}
