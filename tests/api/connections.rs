//! Connections under pressure (SPEC §15, issue 19 findings 2 and 3), against the
//! real service on loopback: one stranger (127.0.0.2, with only 127.0.0.1
//! trusted) holding thousands of silent sockets must slow no callback from
//! elsewhere past 1 s, its idle keep-alive connections are capped at
//! `CONNECTIONS_PER_ADDRESS`, and a socket that sends nothing is closed after
//! the 2 s first-bytes deadline. Every wait is a poll with a deadline; the only
//! pacing is the attacker's own (a socket reopened at most once a second).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const INSIDER: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Only 127.0.0.1 is trusted (and so exempt from the per-address cap).
const ONLY_LOCALHOST_TRUSTED: (&str, &str) = ("TRUSTED_NETWORKS", "127.0.0.1/32");
/// Bounds a broken server; no test measures time with it.
const DEADLINE: Duration = Duration::from_secs(30);

/// Lets this process hold as many sockets as its hard limit allows (the client
/// side of the floods and the service share it).
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    setrlimit(Resource::Nofile, raised).expect("raise RLIMIT_NOFILE to its hard limit");
}

/// A TCP connection to `port` on 127.0.0.1 from `from`.
async fn connect_from(from: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    socket.connect((Ipv4Addr::LOCALHOST, port).into()).await
}

/// How long until the service closes `stream` (EOF or reset), reading and
/// discarding anything it sends; `None` if it is still open at `deadline`.
async fn closed_within(stream: &mut TcpStream, started: Instant, deadline: Instant) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

type Idle = tokio_rustls::client::TlsStream<TcpStream>;

/// A keep-alive connection from `from`: TLS, one request answered, then idle.
/// `None` when the service closed it first.
async fn idle_connection(port: u16, connector: &tokio_rustls::TlsConnector, from: Ipv4Addr) -> Option<Idle> {
    let attempt = async {
        let tcp = connect_from(from, port).await.ok()?;
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = connector.connect(name, tcp).await.ok()?;
        tls.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut head = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(length)) = head.parse(&answer) {
                let body: usize = head
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .expect("a Content-Length");
                if answer.len() >= length + body {
                    return (head.code == Some(200)).then_some(tls);
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, attempt).await.ok().flatten()
}

/// `sockets` silent TCP connections from `from`, each reopened when the
/// service closes it (at most once a second each), until `stop`. Counts connects.
fn silent_flood(port: u16, from: Ipv4Addr, sockets: usize, stop: &CancellationToken) -> Arc<AtomicU64> {
    let connects = Arc::new(AtomicU64::new(0));
    for _ in 0..sockets {
        let (stop, connects) = (stop.clone(), Arc::clone(&connects));
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = pace.tick() => {}
                }
                let hold = async {
                    if let Ok(mut stream) = connect_from(from, port).await {
                        connects.fetch_add(1, Ordering::Relaxed);
                        let mut buf = [0u8; 64];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = hold => {}
                }
            }
        });
    }
    connects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_silent_sockets_from_one_stranger_slow_no_callback_past_a_second() {
    raise_open_files_limit();
    let app = spawn_app_with(&[ONLY_LOCALHOST_TRUSTED]).await;
    assert_eq!(app.post_text("warm up", 1).await, 200);
    let stop = CancellationToken::new();
    let connects = silent_flood(app.port, STRANGER, 3_000, &stop);
    let full_strength = Instant::now() + DEADLINE;
    while connects.load(Ordering::Relaxed) < 3_000 {
        assert!(Instant::now() < full_strength, "the flood never opened 3,000 sockets");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // WeCom, meanwhile: every callback on a new connection (a new handshake),
    // back to back for six seconds, three of the silent sockets' lifetimes.
    let pem = std::fs::read(app.dir.path().join("server.crt")).expect("certificate");
    let wecom = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"))
        .local_address(std::net::IpAddr::V4(INSIDER))
        .pool_max_idle_per_host(0)
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let mut took = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    let mut msg_id = 100;
    while Instant::now() < until {
        msg_id += 1;
        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("during the flood", msg_id));
        let started = Instant::now();
        let answer = wecom.post(app.url(&format!("/wechat/callback?{}", signed.query))).body(signed.body).send().await;
        took.push(started.elapsed());
        assert_eq!(answer.expect("an answer").status(), 200);
    }
    let flood_connects = connects.load(Ordering::Relaxed);
    stop.cancel();
    let slowest = took.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(1),
        "a callback took {slowest:?} during the flood ({} callbacks: {took:?})",
        took.len()
    );
    // Each silent socket is closed after 2 s and reopened at once: over the six
    // seconds the flood opens well past its first 3,000 (~9,000 on an idle
    // machine, ~5,800 with the rest of the suite beside it on two cores).
    assert!(flood_connects >= 4_500, "the flood kept reopening: {flood_connects} connects");
    let refused = app.metric("wechat_api_connections_refused_total{reason=\"per_address\"}").await;
    assert!(refused > 0.0, "the stranger's share was enforced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_are_capped_and_a_trusted_address_is_exempt() {
    raise_open_files_limit();
    let app = spawn_app_with(&[ONLY_LOCALHOST_TRUSTED, ("CONNECTIONS_PER_ADDRESS", "20")]).await;
    let tls = tls_connector(app.dir.path(), &[]);
    let before = rss_kib();
    // The review's attack, smaller: a stranger tries to park 1,000 idle keep-alive connections.
    let mut parked = Vec::new();
    for _ in 0..1_000 {
        if let Some(idle) = idle_connection(app.port, &tls, STRANGER).await {
            parked.push(idle);
        }
    }
    let after = rss_kib();
    assert_eq!(parked.len(), 20, "the stranger holds exactly CONNECTIONS_PER_ADDRESS");
    // Each costs ~20 KiB on either side; 1,000 of them would be some 40 MiB.
    assert!(after.saturating_sub(before) < 16 * 1024, "RSS grew from {before} KiB to {after} KiB");

    // The 21st is closed at once: well before the 2 s first-bytes deadline.
    let started = Instant::now();
    let closed = match connect_from(STRANGER, app.port).await {
        Ok(mut extra) => closed_within(&mut extra, started, started + DEADLINE).await,
        // Reset before the connect even returned.
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => Some(started.elapsed()),
        Err(error) => panic!("cannot connect: {error}"),
    };
    assert!(closed.is_some_and(|t| t < Duration::from_secs(1)), "the 21st was closed after {closed:?}");

    // A trusted address (a load balancer) is not capped.
    let mut trusted = Vec::new();
    for _ in 0..60 {
        let idle = idle_connection(app.port, &tls, INSIDER).await;
        trusted.push(idle.unwrap_or_else(|| panic!("a trusted address is exempt; {} held", trusted.len())));
    }
    // A stranger's slot comes back when one of its connections closes.
    drop(parked.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(idle) = idle_connection(app.port, &tls, STRANGER).await {
            parked.push(idle);
            break;
        }
        assert!(Instant::now() < deadline, "the closed connection's slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = app.metric("wechat_api_connections_refused_total{reason=\"per_address\"}").await;
    assert!(refused >= 981.0, "every refusal counted: {refused}");
    assert_eq!(app.post_text("still served", 1).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_sends_nothing_is_closed_after_two_seconds_and_a_stalled_handshake_after_five() {
    let app = spawn_app_with(&[("HTTP_PORT", "0")]).await;
    let started = Instant::now();
    let mut silent_tls = TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let mut silent_plain = TcpStream::connect(("127.0.0.1", app.http_port.expect("HTTP_PORT"))).await.expect("connect");
    // The first byte of a TLS record, then nothing.
    let mut stalled = TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    stalled.write_all(&[0x16]).await.expect("one byte");

    let deadline = started + DEADLINE;
    for (name, stream) in [("TLS", &mut silent_tls), ("plain", &mut silent_plain)] {
        let closed = closed_within(stream, started, deadline).await;
        assert!(
            closed.is_some_and(|t| t >= Duration::from_secs(1) && t < Duration::from_secs(4)),
            "a silent {name} socket was closed after {closed:?}, not at the 2 s first-bytes deadline"
        );
    }
    let closed = closed_within(&mut stalled, started, deadline).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_secs(4) && t < Duration::from_secs(8)),
        "a stalled handshake was closed after {closed:?}, not at the 5 s handshake deadline"
    );
    assert_eq!(app.metric("wechat_api_connections_refused_total{reason=\"silent\"}").await, 2.0);
    assert_eq!(app.metric("wechat_api_connections_refused_total{reason=\"handshake_timeout\"}").await, 1.0);
    assert_eq!(app.metric("wechat_api_connections_refused_total{reason=\"per_address\"}").await, 0.0);
    assert!(app.metrics().await.contains("wechat_api_connections_refused_total{reason=\"per_address\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_connections_is_logged_in_a_few_lines_naming_the_address() {
    let dir = tempfile::tempdir().expect("dir");
    write_certificate(dir.path(), 30);
    let env = test_env(dir.path(), &[ONLY_LOCALHOST_TRUSTED, ("CONNECTIONS_PER_ADDRESS", "1")]);
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(&env);
    let mut service = Running::start(command);
    let port = service.port();
    // One idle keep-alive connection holds the stranger's only slot (for the 75 s
    // of keep-alive, not a silent socket's 2 s); 300 more are refused.
    let _holder = idle_connection(port, &tls_connector(dir.path(), &[]), STRANGER).await.expect("a connection");
    let mut refused = 0;
    let deadline = Instant::now() + DEADLINE;
    while refused < 300 {
        assert!(Instant::now() < deadline, "only {refused} connections were refused at once");
        let started = Instant::now();
        match connect_from(STRANGER, port).await {
            Ok(mut stream) => {
                if closed_within(&mut stream, started, deadline).await.is_some() {
                    refused += 1;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(error) => panic!("cannot connect: {error}"),
        }
    }
    service.terminate();
    let lines = service.rest();
    let text = lines.join("\n");
    let logged: Vec<&String> = lines.iter().filter(|l| l.contains("connection closed")).collect();
    let per_address = logged.iter().filter(|l| l.contains("reason=\"per_address\"")).count();
    assert!((1..=10).contains(&per_address), "{per_address} lines for ~300 refusals:\n{text}");
    assert!(logged.len() <= 20, "at most 10 lines a minute per reason:\n{text}");
    assert!(logged.iter().all(|l| l.contains("client=127.0.0.2")), "the address to act on:\n{text}");
    assert!(logged.iter().any(|l| l.contains("CONNECTIONS_PER_ADDRESS")), "the setting to look at:\n{text}");
}
