//! TCP connections, in the clear or over TLS (the `wss` system: the gateway
//! started with `--tls` serves HTTPS and WSS on its TCP port).
//!
//! The client trusts exactly the certificate the gateway serves, read from
//! the run's certificate directory, as the WebTransport client pins its
//! hash. It speaks TLS 1.3 only with ring's provider and keeps rustls'
//! default session cache, as wtransport's client does, so that WSS and
//! WebTransport pay for the same handshakes and the same ciphers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// A TCP connection to the server, TLS or not.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// A TLS client that trusts the certificate(s) in the PEM file `cert` and
/// nothing else.
pub fn connector(cert: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
    {
        roots
            .add(der.with_context(|| format!("parsing {}", cert.display()))?)
            .context("trusting the gateway's certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // What a browser offers on a wss:// or https:// connection.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects to `addr`, with Nagle off (signalling frames are small and
/// latency-bound), and completes the TLS handshake if `tls` is given.
pub async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> anyhow::Result<Stream> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        None => Either::Left(tcp),
        Some(tls) => Either::Right(
            tls.connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .context("TLS handshake")?,
        ),
    })
}
