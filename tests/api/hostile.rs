//! Hostile input at the HTTP and TLS level, against the real service on
//! 127.0.0.1: oversized bodies, slow clients (slowloris), floods of idle
//! connections, and clients that only speak TLS 1.0 or 1.1.
//!
//! Deliberately not here: parser-level fuzzing (see `properties`). The raw
//! clients below drive rustls by hand over a tokio socket so a test can stop
//! anywhere: before the ClientHello, mid-handshake, mid-header or mid-body.
//! Nothing sleeps for a fixed time: every wait is a poll with a deadline, and the
//! deadlines are generous bounds on a broken server, not measurements.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::*;

/// The server cuts slow or idle clients after about 5 s; this only bounds a broken server.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);
const TEN_MB: usize = 10 * 1024 * 1024;
const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS client driven by hand, collecting whatever plaintext the server sends.
struct RawTls {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
    received: Vec<u8>,
    closed: bool,
}

enum Step {
    Wrote(usize),
    Read(Vec<u8>),
    Closed,
}

impl RawTls {
    /// Connects and completes the handshake with only `versions` enabled.
    async fn connect(app: &TestApp, versions: &[&'static SupportedProtocolVersion]) -> Self {
        Self::connect_with(app, client(app, versions, &[])).await
    }

    async fn connect_with(app: &TestApp, tls: rustls::ClientConnection) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
        let mut raw = Self { tcp, tls, received: Vec::new(), closed: false };
        while raw.tls.is_handshaking() {
            if raw.tls.wants_write() {
                raw.flush().await;
            } else {
                raw.read_more().await;
            }
            assert!(!raw.closed, "the server closed the connection during the handshake");
        }
        // TLS 1.3: the client's Finished is queued once the handshake is over.
        raw.flush().await;
        raw
    }

    /// Feeds bytes from the socket to rustls and keeps the plaintext; empty means EOF.
    fn take_in(&mut self, mut data: &[u8]) {
        if data.is_empty() {
            self.closed = true;
        }
        while !data.is_empty() && !self.closed {
            if self.tls.read_tls(&mut data).is_err() || self.tls.process_new_packets().is_err() {
                // A fatal alert from the server ends the connection just like a close.
                self.closed = true;
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.tls.reader().read(&mut chunk) {
                    Ok(0) => {
                        self.closed = true;
                        break;
                    }
                    Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
        }
    }

    async fn read_more(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        match self.tcp.read(&mut buf).await {
            Ok(n) => self.take_in(&buf[..n]),
            Err(_) => self.closed = true,
        }
    }

    /// Sends `bytes` while reading what arrives. Returns false when it stopped
    /// early because the server had answered or closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        loop {
            // rustls buffers a limited amount of plaintext: feed it piece by piece.
            let taken = match self.tls.writer().write(rest) {
                Ok(n) => n,
                Err(_) => return false,
            };
            rest = &rest[taken..];
            if !self.flush().await {
                return false;
            }
            if rest.is_empty() {
                return true;
            }
        }
    }

    /// Writes the pending TLS records, reading meanwhile so neither side can
    /// block the other. False when the server answered or closed first.
    async fn flush(&mut self) -> bool {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut out).is_err() {
                return false;
            }
        }
        let mut written = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while written < out.len() {
            if self.closed || !self.received.is_empty() {
                return false;
            }
            let (mut reader, mut writer) = self.tcp.split();
            let step = tokio::select! {
                w = writer.write(&out[written..]) => match w {
                    Ok(n) if n > 0 => Step::Wrote(n),
                    _ => Step::Closed,
                },
                r = reader.read(&mut buf) => match r {
                    Ok(n) => Step::Read(buf[..n].to_vec()),
                    Err(_) => Step::Closed,
                },
            };
            match step {
                Step::Wrote(n) => written += n,
                Step::Read(data) => self.take_in(&data),
                Step::Closed => self.closed = true,
            }
        }
        !self.closed
    }

    /// Waits until the response head has arrived (or the connection closed).
    async fn response_head(&mut self) -> String {
        let deadline = Instant::now() + CLOSE_DEADLINE;
        while !self.closed && !self.received.windows(4).any(|w| w == b"\r\n\r\n") {
            tokio::time::timeout_at(deadline, self.read_more()).await.expect("no response before the deadline");
        }
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// Waits until the server closes the connection; false if it is still open at `deadline`.
    async fn closed_by(&mut self, deadline: Instant) -> bool {
        while !self.closed {
            if tokio::time::timeout_at(deadline, self.read_more()).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// A rustls client that trusts only the test's certificate, with `versions`
/// enabled, offering `alpn` (none: HTTP/1.1).
fn client(app: &TestApp, versions: &[&'static SupportedProtocolVersion], alpn: &[&[u8]]) -> rustls::ClientConnection {
    let pem = std::fs::read(app.dir.path().join("server.crt")).expect("certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&pem).expect("PEM certificate")).expect("trusted root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("client connection")
}

/// Waits until the server closes a plain TCP connection; false if still open at `deadline`.
async fn tcp_closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An alert or a 408 before the close: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

/// The service still answers liveness and accepts a real callback.
async fn assert_healthy(app: &TestApp, msg_id: u64) {
    let response = app.client.get(app.url("/api/health/live")).send().await.expect("liveness request");
    assert_eq!(response.status(), 200);
    assert_eq!(app.post_text("still here", msg_id).await, 200);
}

fn post_head(app: &TestApp, framing: &str) -> String {
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("x", 1));
    format!(
        "POST /wechat/callback?{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: text/xml\r\n{framing}\r\n",
        signed.query, app.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_body_declared_by_content_length_is_refused_with_413_before_it_is_read() {
    let app = spawn_app().await;
    let mut conn = RawTls::connect(&app, BOTH).await;
    assert!(conn.send(post_head(&app, &format!("Content-Length: {TEN_MB}\r\n")).as_bytes()).await);
    // Only a little of the 10 MB follows: the answer must not wait for the rest.
    let mut sent = 0;
    while sent < 256 * 1024 && conn.send(&[b'a'; 16 * 1024]).await {
        sent += 16 * 1024;
    }
    let head = conn.response_head().await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("exceeds"), "{head}");
    // And it does not read the rest either: the connection ends there.
    assert!(conn.closed_by(Instant::now() + CLOSE_DEADLINE).await, "the server waits for the other 10 MB");
    assert_healthy(&app, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_10_mb_body_is_refused_with_413_once_the_limit_is_passed() {
    let app = spawn_app().await;
    let mut conn = RawTls::connect(&app, BOTH).await;
    assert!(conn.send(post_head(&app, "Transfer-Encoding: chunked\r\n").as_bytes()).await);
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
    let mut sent = 0;
    while sent < TEN_MB && conn.send(chunk.as_bytes()).await {
        sent += 64 * 1024;
    }
    let head = conn.response_head().await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(sent < TEN_MB, "the server read all {sent} bytes before answering");
    assert_healthy(&app, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_body_from_a_standard_client_is_refused_with_413() {
    let app = spawn_app().await;
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("x", 1));
    let url = app.url(&format!("/api/v1/wecom/callback?{}", signed.query));
    let response = app.client.post(&url).body(vec![b'a'; TEN_MB]).send().await.expect("request");
    // HTTP/1.1: HTTP/2 is not offered (see `attacks::http2_is_not_offered…`).
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 413);
    // The same without a length: a stream of 64 KiB chunks.
    let chunks = (0..TEN_MB / (64 * 1024)).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 64 * 1024]));
    let body = reqwest::Body::wrap_stream(tokio_stream::iter(chunks));
    let response = app.client.post(&url).body(body).send().await.expect("streamed request");
    assert_eq!(response.status(), 413);
    assert_healthy(&app, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_by_the_server() {
    let app = spawn_app().await;
    let mut conn = RawTls::connect(&app, BOTH).await;
    let head = post_head(&app, "X-Slow: ");
    let head = head.trim_end_matches("\r\n");
    let deadline = Instant::now() + CLOSE_DEADLINE;
    // One byte at a time, a few per second: an ever longer header that never ends.
    for (sent, byte) in head.bytes().chain(std::iter::repeat(b'a')).enumerate() {
        assert!(Instant::now() < deadline, "still open after {sent} slow header bytes");
        if !conn.send(&[byte]).await {
            break;
        }
        // The pause between bytes is a wait for the server, which may close any time.
        let _ = tokio::time::timeout(Duration::from_millis(250), conn.read_more()).await;
        if conn.closed {
            break;
        }
    }
    assert!(conn.closed_by(deadline).await, "a slow header is never cut off");
    let answer = String::from_utf8_lossy(&conn.received);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_healthy(&app, 4).await;
}

/// Sends `body` a byte at a time, a few per second, until the server closes the
/// connection; returns how many bytes went out and what the server said.
async fn dribble(conn: &mut RawTls, body: &[u8]) -> (usize, String) {
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut sent = 0;
    for byte in body {
        assert!(Instant::now() < deadline, "still reading a slow body after {sent} bytes");
        if !conn.send(&[*byte]).await {
            break;
        }
        sent += 1;
        // The pause between bytes is a wait for the server, which may answer any time.
        let _ = tokio::time::timeout(Duration::from_millis(250), conn.read_more()).await;
        if conn.closed {
            break;
        }
    }
    assert!(conn.closed_by(deadline).await, "a slow body is never cut off");
    (sent, String::from_utf8_lossy(&conn.received).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_answered_and_cut_off_by_the_server() {
    let app = spawn_app().await;
    let with_length = async {
        let mut conn = RawTls::connect(&app, BOTH).await;
        assert!(conn.send(post_head(&app, "Content-Length: 4096\r\n").as_bytes()).await);
        dribble(&mut conn, &[b'<'; 4096]).await
    };
    // Chunked: once answered, actix would drain the rest of the body however slowly it came.
    let chunked = async {
        let mut conn = RawTls::connect(&app, BOTH).await;
        assert!(conn.send(post_head(&app, "Transfer-Encoding: chunked\r\n").as_bytes()).await);
        dribble(&mut conn, "1\r\n<\r\n".repeat(1000).as_bytes()).await
    };
    let ((sent, answer), (sent_chunked, answer_chunked)) = tokio::join!(with_length, chunked);
    assert!(sent < 4096 && sent_chunked < 6000, "the whole body went through");
    // 408 Request Timeout, with the reason: not a malformed request, a late one.
    for answer in [&answer, &answer_chunked] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request body not received in time"), "{answer}");
    }
    assert_healthy(&app, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_nobody_reads_does_not_keep_the_connection_open() {
    let app = spawn_app().await;
    let mut conn = RawTls::connect(&app, BOTH).await;
    let head = format!("POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nTransfer-Encoding: chunked\r\n\r\n", app.port);
    // The 404 may come before the chunk is out: the send may stop early.
    conn.send(format!("{head}5\r\nhello\r\n").as_bytes()).await;
    let answer = conn.response_head().await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // The client now goes quiet without ending the body: the server must not wait for it.
    assert!(conn.closed_by(Instant::now() + CLOSE_DEADLINE).await, "the connection waits forever for the body");
    assert_healthy(&app, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tls_handshake_is_cut_off_by_the_server() {
    let app = spawn_app().await;
    let mut tcp = TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let hello = client_hello([3, 3]);
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut closed = false;
    // The ClientHello one byte at a time, never complete.
    for byte in &hello[..hello.len() - 1] {
        assert!(Instant::now() < deadline, "a slow handshake is never cut off");
        if tcp.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(250), tcp.read(&mut buf)).await {
            closed = true;
            break;
        }
    }
    assert!(closed || tcp_closed_by(&mut tcp, deadline).await, "a slow handshake is never cut off");
    assert_healthy(&app, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_connections_are_closed_and_do_not_block_a_real_request() {
    let app = spawn_app().await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect"));
    }
    // Handshake done, then nothing: no request line.
    let mut idle = Vec::new();
    for i in 0..20 {
        let alpn: &[&[u8]] = if i % 2 == 0 { &[] } else { &[b"h2", b"http/1.1"] };
        idle.push(RawTls::connect_with(&app, client(&app, BOTH, alpn)).await);
    }
    assert_eq!(idle[1].tls.alpn_protocol(), Some(&b"http/1.1"[..]), "HTTP/2 is not offered");
    // While all of them are open, a real client still gets through.
    assert_healthy(&app, 7).await;
    let deadline = Instant::now() + CLOSE_DEADLINE;
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(tcp_closed_by(stream, deadline).await, "connection {i} without a ClientHello is still open");
    }
    for (i, conn) in idle.iter_mut().enumerate() {
        assert!(conn.closed_by(deadline).await, "idle TLS connection {i} is still open");
    }
    assert_healthy(&app, 8).await;
}

/// A hand-built ClientHello record with `legacy_version` and no
/// `supported_versions` extension, offering TLS 1.2 and older suites.
fn client_hello(legacy_version: [u8; 2]) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&u16::try_from(data.len()).expect("short").to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut body = legacy_version.to_vec();
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
                  // ECDHE-ECDSA/RSA-AES128-GCM-SHA256, ECDHE-RSA-AES128/256-CBC-SHA, AES128/256-SHA, DES-CBC3-SHA.
    let suites: [u16; 7] = [0xc02b, 0xc02f, 0xc013, 0xc014, 0x002f, 0x0035, 0x000a];
    body.extend_from_slice(&u16::try_from(suites.len() * 2).expect("short").to_be_bytes());
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null only
    let mut extensions = Vec::new();
    extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // groups: x25519, secp256r1
    extension(&mut extensions, 0x000b, &[1, 0]); // point formats: uncompressed
    extension(&mut extensions, 0x000d, &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]); // signature algorithms
    extension(&mut extensions, 0x0017, &[]); // extended master secret
    extension(&mut extensions, 0xff01, &[0]); // renegotiation info
    body.extend_from_slice(&u16::try_from(extensions.len()).expect("short").to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&u32::try_from(body.len()).expect("short").to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 3, 1]; // handshake record, TLS 1.0 record version as real clients send
    record.extend_from_slice(&u16::try_from(handshake.len()).expect("short").to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[derive(Debug, PartialEq)]
enum Answer {
    Alert { level: u8, description: u8 },
    ServerHello,
    Closed,
    Other(Vec<u8>),
}

/// Sends `hello` on a fresh connection and reads the first record of the answer.
async fn answer_to(app: &TestApp, hello: &[u8]) -> Answer {
    let mut tcp = TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    tcp.write_all(hello).await.expect("send ClientHello");
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut header = [0u8; 5];
    match tokio::time::timeout_at(deadline, tcp.read_exact(&mut header)).await.expect("an answer in time") {
        Ok(_) => {}
        Err(_) => return Answer::Closed,
    }
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
    if tokio::time::timeout_at(deadline, tcp.read_exact(&mut payload)).await.expect("a whole record").is_err() {
        return Answer::Other(header.to_vec());
    }
    match (header[0], payload.as_slice()) {
        (21, [level, description, ..]) => Answer::Alert { level: *level, description: *description },
        (22, [2, ..]) => Answer::ServerHello,
        _ => Answer::Other([&header[..], &payload].concat()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_client_hellos_are_refused_with_a_protocol_version_alert() {
    let app = spawn_app().await;
    // The same hello with TLS 1.2 is answered: the refusal below is about the version alone.
    assert_eq!(answer_to(&app, &client_hello([3, 3])).await, Answer::ServerHello);
    for (name, version) in [("TLS 1.0", [3, 1]), ("TLS 1.1", [3, 2])] {
        let answer = answer_to(&app, &client_hello(version)).await;
        assert!(
            matches!(answer, Answer::Alert { level: 2, description: 70 } | Answer::Closed),
            "{name}: expected a fatal protocol_version alert or a close, got {answer:?}"
        );
    }
    assert_healthy(&app, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_only_and_tls_1_3_only_clients_are_served() {
    let app = spawn_app().await;
    for (version, expected) in
        [(&rustls::version::TLS12, ProtocolVersion::TLSv1_2), (&rustls::version::TLS13, ProtocolVersion::TLSv1_3)]
    {
        let mut conn = RawTls::connect(&app, &[version]).await;
        assert_eq!(conn.tls.protocol_version(), Some(expected));
        let request =
            format!("GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", app.port);
        assert!(conn.send(request.as_bytes()).await);
        let head = conn.response_head().await;
        assert!(head.starts_with("HTTP/1.1 200"), "{expected:?}: {head}");
    }
}
