//! The load generator's HTTP/1.1 client: a loopback [`Target`] (plain or TLS), its
//! keep-alive [`HttpConnection`]s with one request in flight each, the framing of
//! their answers (Content-Length, chunked, or until close), and the TLS verifier that
//! accepts the loopback's self-signed certificate.
//!
//! Hand-made rather than hyper's client, whose per-request cost made the generator,
//! not nginx, the limit of the reference run.
//!
//! Deliberately not here: what is sent (`generate`), the timing and counting of a run
//! (`run`), pipelining, HTTP/2, redirects, and any host but loopback (the verifier
//! trusts every certificate, so `Target::parse` refuses other hosts).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use anyhow::{bail, ensure, Context};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where requests go: a loopback address, plain or TLS.
pub(crate) struct Target {
    addr: SocketAddr,
    host: String,
    /// The URL's path and query; for callbacks, the query they are appended to.
    pub(crate) path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    pub(crate) fn parse(url: &str, default_path: Option<&str>) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
        let host = parsed.host_str().with_context(|| format!("{url} has no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        ensure!(loopback, "{url}: loopback only (this generator trusts any certificate)");
        let addr = parsed
            .socket_addrs(|| None)
            .with_context(|| format!("{url}: cannot resolve"))?
            .into_iter()
            .next()
            .with_context(|| format!("{url}: no address"))?;
        let tls = match parsed.scheme() {
            "http" => None,
            "https" => {
                let name = ServerName::try_from(bare.to_owned()).with_context(|| format!("{url}: server name"))?;
                Some((tls_connector()?, name))
            }
            other => bail!("{url}: scheme {other} (http or https)"),
        };
        let mut path = parsed.path().to_owned();
        if let Some(default) = default_path.filter(|_| path == "/") {
            default.clone_into(&mut path);
        }
        if let Some(query) = parsed.query() {
            path = format!("{path}?{query}");
        }
        let host = parsed.port().map_or_else(|| host.to_owned(), |port| format!("{host}:{port}"));
        Ok(Self { addr, host, path, tls })
    }

    /// A new keep-alive HTTP/1.1 connection.
    pub(crate) async fn connect(&self) -> std::io::Result<HttpConnection> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(stream),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), stream).await?),
        };
        Ok(HttpConnection { stream, buffer: Vec::with_capacity(READ_CHUNK), used: false })
    }

    /// A whole HTTP/1.1 request: `GET` without a body, `POST` of XML with one.
    pub(crate) fn request(&self, path_and_query: &str, body: Option<&[u8]>) -> Bytes {
        let mut request = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
        match body {
            None => request
                .extend_from_slice(format!("GET {path_and_query} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host).as_bytes()),
            Some(body) => {
                request.extend_from_slice(
                    format!(
                        "POST {path_and_query} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
                        self.host,
                        body.len()
                    )
                    .as_bytes(),
                );
                request.extend_from_slice(body);
            }
        }
        Bytes::from(request)
    }
}

/// A plain or TLS stream.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Bytes asked of the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One keep-alive HTTP/1.1 connection with one request in flight, like wrk's: the
/// request is written whole, the answer read whole (Content-Length, chunked, or
/// until the server closes). Hand-made rather than hyper's client, whose per-request
/// cost made the generator, not nginx, the limit of the reference run.
pub(crate) struct HttpConnection {
    stream: Box<dyn Stream>,
    /// Read but not yet consumed.
    buffer: Vec<u8>,
    /// Whether an answer has come on it (a reused connection may have been closed).
    used: bool,
}

/// How an answer went.
pub(crate) enum Exchange {
    /// The status, and whether the connection can carry another request.
    Answered { status: u16, keep_alive: bool },
    /// A reused connection was closed before any byte of the answer: the server
    /// ended the keep-alive (not an error; the request is not counted).
    Closed,
}

impl HttpConnection {
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Exchange> {
        self.stream.write_all(request).await?;
        self.stream.flush().await?;
        let head = loop {
            if let Some(head) = Head::parse(&self.buffer)? {
                break head;
            }
            if !self.fill().await? {
                if self.used && self.buffer.is_empty() {
                    return Ok(Exchange::Closed);
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let mut keep_alive = head.keep_alive;
        let consumed = match head.framing {
            Framing::Length(length) => {
                while self.buffer.len() < head.length + length {
                    if !self.fill().await? {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                head.length + length
            }
            Framing::Chunked => loop {
                if let Some(body) = chunked_length(&self.buffer[head.length..])? {
                    break head.length + body;
                }
                if !self.fill().await? {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            },
            Framing::UntilClose => {
                while self.fill().await? {
                    self.buffer.clear();
                }
                keep_alive = false;
                self.buffer.len()
            }
        };
        self.buffer.drain(..consumed);
        self.used = true;
        Ok(Exchange::Answered { status: head.status, keep_alive })
    }

    /// Reads what the socket has; `false` at its end.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buffer.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.buffer).await? > 0)
    }
}

/// An answer's status line and headers.
struct Head {
    /// Bytes up to and including the empty line.
    length: usize,
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Head {
    fn parse(buffer: &[u8]) -> std::io::Result<Option<Self>> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(buffer).map_err(std::io::Error::other)? {
            httparse::Status::Complete(length) => length,
            httparse::Status::Partial => return Ok(None),
        };
        let status = response.code.unwrap_or_default();
        let mut keep_alive = response.version == Some(1);
        let mut framing = Framing::UntilClose;
        for header in response.headers.iter() {
            let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                if !matches!(framing, Framing::Chunked) {
                    framing = Framing::Length(value.parse().map_err(std::io::Error::other)?);
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                if value.to_ascii_lowercase().contains("chunked") {
                    framing = Framing::Chunked;
                }
            } else if header.name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                keep_alive = if value.contains("close") { false } else { keep_alive || value.contains("keep-alive") };
            }
        }
        if status == 204 || status == 304 || (100..200).contains(&status) {
            framing = Framing::Length(0);
        }
        Ok(Some(Self { length, status, framing, keep_alive }))
    }
}

/// The length of a whole chunked body at the start of `body`, once it has all come.
fn chunked_length(body: &[u8]) -> std::io::Result<Option<usize>> {
    let line_end = |from: usize| body.get(from..).and_then(|rest| rest.windows(2).position(|w| w == b"\r\n"));
    let mut position = 0;
    loop {
        let Some(end) = line_end(position) else { return Ok(None) };
        let line = std::str::from_utf8(&body[position..position + end]).map_err(std::io::Error::other)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(std::io::Error::other)?;
        position += end + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(end) = line_end(position) else { return Ok(None) };
                position += end + 2;
                if end == 0 {
                    return Ok(Some(position));
                }
            }
        }
        if body.len() < position + size + 2 {
            return Ok(None);
        }
        position += size + 2;
    }
}

/// A TLS client for a self-signed loopback certificate: accepts any certificate,
/// still checks the handshake signatures; offers only HTTP/1.1.
fn tls_connector() -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(wechat_api::testing::tls::AnyServerCertificate::new(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(Target::parse("https://localhost:8092/", None).is_ok());
        assert!(Target::parse("http://[::1]:8092/", None).is_ok());
        assert!(Target::parse("https://example.com/", None).is_err());
        assert!(Target::parse("http://10.0.0.1/", None).is_err());
    }

    #[test]
    fn answers_are_framed_by_length_chunks_or_close() {
        let head = |text: &str| Head::parse(text.as_bytes()).expect("parses").expect("complete");
        let length = head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n");
        assert!(matches!(length.framing, Framing::Length(7)) && length.keep_alive && length.status == 200);
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(chunked.framing, Framing::Chunked));
        let close = head("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        assert!(matches!(close.framing, Framing::UntilClose) && !close.keep_alive && close.status == 400);
        let old = head("HTTP/1.0 204 No Content\r\n\r\n");
        assert!(matches!(old.framing, Framing::Length(0)) && !old.keep_alive);
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\nContent-Le").expect("parses").is_none());
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nHTTP/1.1";
        assert_eq!(chunked_length(body).expect("valid"), Some(body.len() - b"HTTP/1.1".len()));
        assert_eq!(chunked_length(b"4\r\nWiki\r\n0\r\n").expect("valid"), None, "not all there yet");
        assert_eq!(chunked_length(b"4\r\nWi").expect("valid"), None);
        assert!(chunked_length(b"zz\r\n").is_err());
    }
}
