//! `loadgen`: the load generator of `benches/compare.sh` and `benches/soak.sh`, and
//! the fake WeCom API and webhook receiver they point the service at.
//!
//! `run` drives a loopback URL over HTTP/1.1 keep-alive with N connections, one
//! request in flight on each (like wrk), for a bounded time and optionally at a
//! fixed total rate. Callbacks are made on the fly with the library's own
//! `crypto::encrypt` and `crypto::sign` and the service's configuration, so in the
//! default mode every request carries a new MsgId and the service does its real
//! work (verify, decrypt, parse, journal durably), not the duplicate path.
//! The client is a small hand-made HTTP/1.1 one (hyper's client cost more than nginx
//! per request, so it capped the reference run). `fake-api` (tokio + hyper) answers
//! the WeCom API calls the service makes and receives forwarded messages; `wait`
//! measures start-up to live.
//!
//! ```text
//! loadgen run --url URL [--mode distinct|duplicate|kf|get] [-c CONNECTIONS] [-d SECONDS]
//!             [--rate REQ_PER_S] [--pid PID] [--config FILE] [--timeout SECONDS]
//!             [--threads N] [--label NAME] [--json]
//! loadgen fake-api [--listen 127.0.0.1:PORT] [--page N]
//! loadgen wait --url URL [--since-ns UNIX_NS] [--timeout SECONDS] [--json]
//! ```
//!
//! Deliberately not here: anything the shipped binary needs (this is an example
//! target), and any host but loopback: the generator trusts every certificate.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use wechat_api::config::{self, CallbackKeys, Sources};
use wechat_api::crypto;

/// Where callbacks go when the URL names no path.
const CALLBACK_PATH: &str = "/api/v1/wecom/callback";
/// The kf account of the generated `kf_msg_or_event` notices.
const OPEN_KFID: &str = "wkload";

/// Load generator and fake WeCom API for the benchmarks (loopback only).
#[derive(Parser)]
#[command(name = "loadgen")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a loopback URL with N keep-alive connections for a bounded time; print
    /// requests/s, latency percentiles, errors, and the server's RSS and CPU.
    Run(RunArgs),
    /// Serve a fake WeCom API (WECOM_API_BASE_URL) and a webhook receiver at
    /// /forward (FORWARD_URL); GET /stats answers the counts, which are also
    /// printed as one JSON line on SIGINT/SIGTERM.
    FakeApi {
        #[arg(long, default_value = "127.0.0.1:18095")]
        listen: SocketAddr,
        /// Distinct text messages in each kf/sync_msg page.
        #[arg(long, default_value_t = 1)]
        page: u32,
    },
    /// Poll URL (a new connection each millisecond) until it answers 2xx, then print
    /// the milliseconds since --since-ns (e.g. `date +%s%N` taken before the exec).
    Wait {
        #[arg(long)]
        url: String,
        /// Unix time in nanoseconds to measure from; default: when this started.
        #[arg(long)]
        since_ns: Option<u128>,
        /// Give up after this many seconds (exit code 1).
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// Print one JSON line instead of the number.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Target, e.g. http://127.0.0.1:18093 or https://127.0.0.1:18092; callbacks go
    /// to /api/v1/wecom/callback when the URL has no path.
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value_t = Mode::Distinct)]
    mode: Mode,
    /// Connections, each with one request in flight.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Seconds to send for.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Fixed total rate in requests per second; 0 sends as fast as answers come. A
    /// connection that falls behind sends at once; latency is counted from the
    /// actual send, so a stalling server shows as a lower achieved rate.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// The server's process id: report its RSS (VmRSS) and CPU (utime + stime).
    #[arg(long)]
    pid: Option<u32>,
    /// The service's configuration file (the demo's is DATA_DIR/demo.toml); the
    /// environment and .env apply as they do for the service.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seconds before a request (or connect) counts as a timeout.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Runtime threads; 1 (single-threaded) is best when pinned to one core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A name for this run in the output.
    #[arg(long)]
    label: Option<String>,
    /// Print one JSON line on stdout; the human summary goes to stderr.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Mode {
    /// Signed, encrypted app text callbacks, each with a new MsgId.
    Distinct,
    /// One signed callback, replayed: the dedup path.
    Duplicate,
    /// kf `kf_msg_or_event` notices, each with a new Token (the service then calls
    /// kf/sync_msg: point it at `fake-api`).
    Kf,
    /// GET the URL as given (a reference server such as nginx).
    Get,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(&args),
        Command::FakeApi { listen, page } => runtime(1)?.block_on(fake_api(listen, page)),
        Command::Wait { url, since_ns, timeout, json } => {
            let since_ns = since_ns.unwrap_or_else(unix_nanos);
            runtime(1)?.block_on(wait(&url, since_ns, seconds(timeout)?, json))
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build().context("cannot start the async runtime")
}

fn seconds(value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{value} is not a number of seconds"))
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The target and its connections

/// Where requests go: a loopback address, plain or TLS.
struct Target {
    addr: SocketAddr,
    host: String,
    /// The URL's path and query; for callbacks, the query they are appended to.
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    fn parse(url: &str, default_path: Option<&str>) -> anyhow::Result<Self> {
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
    async fn connect(&self) -> std::io::Result<HttpConnection> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(stream),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), stream).await?),
        };
        Ok(HttpConnection { stream, buffer: Vec::with_capacity(READ_CHUNK), used: false })
    }

    /// A whole HTTP/1.1 request: `GET` without a body, `POST` of XML with one.
    fn request(&self, path_and_query: &str, body: Option<&[u8]>) -> Bytes {
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
struct HttpConnection {
    stream: Box<dyn Stream>,
    /// Read but not yet consumed.
    buffer: Vec<u8>,
    /// Whether an answer has come on it (a reused connection may have been closed).
    used: bool,
}

/// How an answer went.
enum Exchange {
    /// The status, and whether the connection can carry another request.
    Answered { status: u16, keep_alive: bool },
    /// A reused connection was closed before any byte of the answer: the server
    /// ended the keep-alive (not an error; the request is not counted).
    Closed,
}

impl HttpConnection {
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Exchange> {
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
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------
// What is sent

/// Makes each request's path and body.
enum Generator {
    /// Encrypted, signed callbacks made per request.
    Callbacks(Callbacks),
    /// The same request every time (the duplicate path, or a plain GET).
    Fixed(Bytes),
}

/// App text callbacks or kf notices, each one new.
struct Callbacks {
    keys: CallbackKeys,
    corp: String,
    agent: i64,
    kf: bool,
    next: AtomicU64,
    id_base: u64,
}

impl Generator {
    fn new(args: &RunArgs, target: &Target) -> anyhow::Result<Self> {
        if args.mode == Mode::Get {
            return Ok(Self::Fixed(target.request(&target.path, None)));
        }
        let sources = Sources::from_process(args.config.clone());
        let (config, _warnings) = config::load(&sources).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        let keys = if args.mode == Mode::Kf { config.kf_keys } else { config.app_keys };
        // Unique across runs against one store: milliseconds since the epoch times a
        // million leaves room for a million requests per run started a second apart.
        let id_base = u64::try_from(unix_nanos() / 1_000_000).unwrap_or_default().saturating_mul(1_000_000);
        let callbacks = Callbacks {
            keys,
            corp: config.corp_id.as_str().to_owned(),
            agent: config.agent_id.unwrap_or(1_000_002),
            kf: args.mode == Mode::Kf,
            next: AtomicU64::new(0),
            id_base,
        };
        if args.mode == Mode::Duplicate {
            let (path_and_query, body) = callbacks.make(target);
            return Ok(Self::Fixed(target.request(&path_and_query, Some(body.as_bytes()))));
        }
        Ok(Self::Callbacks(callbacks))
    }

    /// The next request, whole.
    fn next(&self, target: &Target) -> Bytes {
        match self {
            Self::Fixed(request) => request.clone(),
            Self::Callbacks(callbacks) => {
                let (path, body) = callbacks.make(target);
                target.request(&path, Some(body.as_bytes()))
            }
        }
    }
}

impl Callbacks {
    /// The next callback's path with query, and body: a new MsgId (app) or Token
    /// (kf), encrypted and signed.
    fn make(&self, target: &Target) -> (String, String) {
        let Self { keys, corp, agent, kf, next, id_base } = self;
        let n = next.fetch_add(1, Ordering::Relaxed);
        let id = id_base + n;
        let timestamp = (unix_nanos() / 1_000_000_000).to_string();
        let xml = if *kf {
            format!(
                "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><CreateTime>{timestamp}</CreateTime>\
                 <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
                 <Token><![CDATA[LOAD{id}]]></Token><OpenKfId><![CDATA[{OPEN_KFID}]]></OpenKfId></xml>"
            )
        } else {
            format!(
                "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[load{}]]></FromUserName>\
                 <CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                 <Content><![CDATA[load test message {n}]]></Content><MsgId>{id}</MsgId><AgentID>{agent}</AgentID></xml>",
                n % 100
            )
        };
        let encrypted = crypto::encrypt(&keys.aes_key, xml.as_bytes(), corp.as_bytes());
        let nonce = n.to_string();
        let signature = crypto::sign(keys.token.expose(), &timestamp, &nonce, &encrypted);
        let separator = if target.path.contains('?') { '&' } else { '?' };
        let path = format!(
            "{}{separator}msg_signature={}&timestamp={timestamp}&nonce={nonce}",
            target.path,
            signature.as_str()
        );
        let body = format!(
            "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt>\
             <AgentID>{agent}</AgentID></xml>"
        );
        (path, body)
    }
}

// ---------------------------------------------------------------------------
// The run

struct Plan {
    target: Target,
    generator: Generator,
    start: Instant,
    deadline: Instant,
    /// Between two sends on one connection, at a fixed rate.
    interval: Option<Duration>,
    timeout: Duration,
    connections: usize,
}

/// What one connection (and then all of them) saw.
struct Tally {
    /// Microseconds from send to the whole answer, every answered request.
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    connect_errors: u64,
    io_errors: u64,
    timeouts: u64,
    /// Connections the server closed between requests (not errors).
    reconnects: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).context("histogram bounds")?,
            statuses: BTreeMap::new(),
            connect_errors: 0,
            io_errors: 0,
            timeouts: 0,
            reconnects: 0,
        })
    }

    fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.latency.add(&other.latency).context("histogram merge")?;
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.connect_errors += other.connect_errors;
        self.io_errors += other.io_errors;
        self.timeouts += other.timeouts;
        self.reconnects += other.reconnects;
        Ok(())
    }

    fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    fn ok(&self) -> u64 {
        self.statuses.iter().filter(|(status, _)| (200..300).contains(*status)).map(|(_, n)| n).sum()
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    ensure!(args.connections >= 1, "--connections must be at least 1");
    ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be 0 or more");
    let duration = seconds(args.duration)?;
    let default_path = (args.mode != Mode::Get).then_some(CALLBACK_PATH);
    let target = Target::parse(&args.url, default_path)?;
    let generator = Generator::new(args, &target)?;
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    let label = args.label.clone().unwrap_or_else(|| format!("{:?}", args.mode).to_lowercase());
    let url = args.url.clone();

    let runtime = runtime(args.threads)?;
    let server_before = args.pid.map(|pid| ProcSample::read(&pid.to_string())).transpose()?;
    let self_before = ProcSample::read("self")?;
    let cores_before = core_ticks()?;
    let start = Instant::now();
    let plan = Arc::new(Plan {
        target,
        generator,
        start,
        deadline: start + duration,
        interval,
        timeout: seconds(args.timeout)?,
        connections: args.connections,
    });
    let tally = runtime.block_on(async {
        let mut workers = tokio::task::JoinSet::new();
        for index in 0..plan.connections {
            workers.spawn(connection(Arc::clone(&plan), index));
        }
        let mut total = Tally::new()?;
        while let Some(done) = workers.join_next().await {
            total.merge(&done.context("a connection task panicked")??)?;
        }
        anyhow::Ok(total)
    })?;
    let elapsed = start.elapsed();
    let server_after = args.pid.map(|pid| ProcSample::read(&pid.to_string())).transpose()?;
    let self_after = ProcSample::read("self")?;
    let cores_after = core_ticks()?;
    drop(runtime);

    let secs = elapsed.as_secs_f64();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let percentile = |q: f64| tally.latency.value_at_quantile(q) as f64 / 1000.0;
    let answered = tally.answered();
    let non_2xx = answered - tally.ok();
    let rps = answered as f64 / secs;
    let loadgen_cpu_pct = (self_after.cpu_ticks - self_before.cpu_ticks) as f64 / ticks / secs * 100.0;
    // How busy each core was, whoever used it: on a shared machine the part the
    // server and the generator do not explain is someone else's.
    let core_busy_pct: Vec<f64> = cores_before
        .iter()
        .zip(&cores_after)
        .map(|(before, after)| {
            let total = after.total.saturating_sub(before.total).max(1) as f64;
            after.busy.saturating_sub(before.busy) as f64 / total * 100.0
        })
        .collect();
    let mut report = json!({
        "label": label,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "url": url,
        "connections": args.connections,
        "duration_s": secs,
        "target_rate": args.rate,
        "requests": answered,
        "ok": tally.ok(),
        "non_2xx": non_2xx,
        "statuses": tally.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "connect_errors": tally.connect_errors,
        "io_errors": tally.io_errors,
        "timeouts": tally.timeouts,
        "socket_errors": tally.connect_errors + tally.io_errors + tally.timeouts,
        "reconnects": tally.reconnects,
        "rps": rps,
        "mean_ms": tally.latency.mean() / 1000.0,
        "p50_ms": percentile(0.50),
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "max_ms": tally.latency.max() as f64 / 1000.0,
        "loadgen_cpu_pct": loadgen_cpu_pct,
        "core_busy_pct": core_busy_pct,
    });
    let mut human = format!(
        "{label}: {url}, {} connections, {secs:.2} s{}\n  \
         requests  {answered} = {rps:.1} req/s (2xx {}, non-2xx {non_2xx}{})\n  \
         latency   p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms\n  \
         socket errors: connect {}, read/write {}, timeout {} (server-closed keep-alives: {})\n  \
         loadgen CPU {loadgen_cpu_pct:.0} %; cores busy {}",
        args.connections,
        if args.rate > 0.0 { format!(", target {} req/s", args.rate) } else { String::new() },
        tally.ok(),
        if non_2xx > 0 { format!(", statuses {:?}", tally.statuses) } else { String::new() },
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        tally.latency.max() as f64 / 1000.0,
        tally.connect_errors,
        tally.io_errors,
        tally.timeouts,
        tally.reconnects,
        core_busy_pct.iter().map(|pct| format!("{pct:.0} %")).collect::<Vec<_>>().join(", "),
    );
    if let (Some(pid), Some(before), Some(after)) = (args.pid, server_before, server_after) {
        let cpu_s = (after.cpu_ticks - before.cpu_ticks) as f64 / ticks;
        let cpu_pct = cpu_s / secs * 100.0;
        let fields = [
            ("server_pid", json!(pid)),
            ("server_rss_start_kib", json!(before.rss_kib)),
            ("server_rss_end_kib", json!(after.rss_kib)),
            ("server_hwm_kib", json!(after.hwm_kib)),
            ("server_cpu_s", json!(cpu_s)),
            ("server_cpu_pct", json!(cpu_pct)),
        ];
        if let Value::Object(map) = &mut report {
            map.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
        }
        human.push_str(&format!(
            "\n  server    pid {pid}: RSS {:.1} -> {:.1} MiB (peak {:.1} MiB), CPU {cpu_s:.2} s = {cpu_pct:.0} %",
            before.rss_kib as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
            after.hwm_kib as f64 / 1024.0,
        ));
    }
    if args.json {
        eprintln!("{human}");
        println!("{report}");
    } else {
        println!("{human}");
    }
    Ok(())
}

/// One connection's loop: connect, then one request at a time until the deadline;
/// reconnect after an error.
async fn connection(plan: Arc<Plan>, index: usize) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    // At a fixed rate the connections' sends are spread evenly over one interval.
    let mut next_send =
        plan.interval.map(|interval| plan.start + interval.mul_f64(index as f64 / plan.connections as f64));
    while Instant::now() < plan.deadline {
        let mut connection = match tokio::time::timeout(plan.timeout, plan.target.connect()).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(_)) | Err(_) => {
                tally.connect_errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            if let (Some(at), Some(interval)) = (next_send, plan.interval) {
                if at >= plan.deadline {
                    return Ok(tally);
                }
                tokio::time::sleep_until(at.into()).await;
                next_send = Some(at + interval);
            }
            if Instant::now() >= plan.deadline {
                return Ok(tally);
            }
            let request = plan.generator.next(&plan.target);
            let sent = Instant::now();
            match tokio::time::timeout(plan.timeout, connection.exchange(&request)).await {
                Ok(Ok(Exchange::Answered { status, keep_alive })) => {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    tally.latency.saturating_record(micros.max(1));
                    *tally.statuses.entry(status).or_default() += 1;
                    if !keep_alive {
                        tally.reconnects += 1;
                        break;
                    }
                }
                Ok(Ok(Exchange::Closed)) => {
                    tally.reconnects += 1;
                    break;
                }
                Ok(Err(_)) => {
                    tally.io_errors += 1;
                    break;
                }
                Err(_) => {
                    tally.timeouts += 1;
                    break;
                }
            }
        }
    }
    Ok(tally)
}

/// A process's CPU time and memory, from /proc.
#[derive(Clone, Copy)]
struct ProcSample {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

impl ProcSample {
    fn read(pid: &str) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
        // The command name may contain spaces: fields are counted after its ')'.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            // Field n of proc(5) (1-based, state is 3) is index n - 3 here.
            fields.get(n - 3).and_then(|f| f.parse().ok()).with_context(|| format!("/proc/{pid}/stat field {n}"))
        };
        let cpu_ticks = field(14)? + field(15)?;
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
        let kib = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_default()
        };
        Ok(Self { cpu_ticks, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
    }
}

/// One core's time from /proc/stat, in clock ticks.
struct CoreTicks {
    busy: u64,
    total: u64,
}

/// Every core (`cpuN` lines), in order.
fn core_ticks() -> anyhow::Result<Vec<CoreTicks>> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|line| line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal; guest time is inside user.
            let total: u64 = ticks.iter().take(8).sum();
            let idle = ticks.get(3).copied().unwrap_or_default() + ticks.get(4).copied().unwrap_or_default();
            CoreTicks { busy: total.saturating_sub(idle), total }
        })
        .collect())
}

// ---------------------------------------------------------------------------
// Start-up to live

async fn wait(url: &str, since_ns: u128, timeout: Duration, json: bool) -> anyhow::Result<()> {
    let target = Target::parse(url, None)?;
    let give_up = Instant::now() + timeout;
    loop {
        let attempt = async { target.connect().await?.exchange(&target.request(&target.path, None)).await };
        if let Ok(Ok(Exchange::Answered { status, .. })) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            if (200..300).contains(&status) {
                break;
            }
        }
        ensure!(Instant::now() < give_up, "{url} did not answer 2xx within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ms = unix_nanos().saturating_sub(since_ns) as f64 / 1e6;
    if json {
        println!("{}", json!({"url": url, "live_ms": ms}));
    } else {
        println!("{ms:.1}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The fake WeCom API and webhook receiver

/// What the fake has answered.
#[derive(Default)]
struct Fake {
    page: u32,
    run: u64,
    gettoken: AtomicU64,
    sync_msg: AtomicU64,
    kf_messages: AtomicU64,
    send_msg: AtomicU64,
    message_send: AtomicU64,
    other: AtomicU64,
    forward: AtomicU64,
    forwarded_ids: Mutex<HashSet<String>>,
}

impl Fake {
    fn stats(&self) -> Value {
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        json!({
            "gettoken": n(&self.gettoken),
            "sync_msg": n(&self.sync_msg),
            "kf_messages": n(&self.kf_messages),
            "send_msg": n(&self.send_msg),
            "message_send": n(&self.message_send),
            "other": n(&self.other),
            "forward": n(&self.forward),
            "forward_distinct": self.forwarded_ids.lock().unwrap_or_else(PoisonError::into_inner).len(),
        })
    }

    /// A page of `self.page` new text messages, all there is.
    fn sync_page(&self, request: &[u8]) -> Value {
        let call = self.sync_msg.fetch_add(1, Ordering::Relaxed);
        let open_kfid = serde_json::from_slice::<Value>(request)
            .ok()
            .and_then(|body| body.get("open_kfid").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| OPEN_KFID.to_owned());
        let send_time = u64::try_from(unix_nanos() / 1_000_000_000).unwrap_or_default();
        let messages: Vec<Value> = (0..self.page)
            .map(|_| {
                let n = self.kf_messages.fetch_add(1, Ordering::Relaxed);
                json!({"msgid": format!("load{}-{n}", self.run), "open_kfid": open_kfid,
                       "external_userid": format!("wmload{}", n % 100), "send_time": send_time, "origin": 3,
                       "msgtype": "text", "text": {"content": format!("kf load message {n}")}})
            })
            .collect();
        json!({"errcode": 0, "errmsg": "ok", "next_cursor": format!("C{}-{call}", self.run), "has_more": 0,
               "msg_list": messages})
    }
}

async fn fake_api(listen: SocketAddr, page: u32) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let run = u64::try_from(unix_nanos() / 1_000_000).unwrap_or_default();
    let fake = Arc::new(Fake { page, run, ..Fake::default() });
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    eprintln!("fake WeCom API on http://{listen} (WECOM_API_BASE_URL), webhook receiver at /forward, counts at /stats");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let fake = Arc::clone(&fake);
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let service = hyper::service::service_fn(move |request| answer(Arc::clone(&fake), request));
                        // A connection's end, clean or not, is the client's business.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(error) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    eprintln!("fake-api: accept: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    println!("{}", fake.stats());
    Ok(())
}

async fn answer(fake: Arc<Fake>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let message_id = request.headers().get("x-message-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let answer = match path.as_str() {
        "/stats" => fake.stats(),
        "/forward" => {
            fake.forward.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = message_id {
                fake.forwarded_ids.lock().unwrap_or_else(PoisonError::into_inner).insert(id);
            }
            json!({})
        }
        "/cgi-bin/gettoken" => {
            let n = fake.gettoken.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok", "access_token": format!("FAKE-TOKEN-{n}"), "expires_in": 7200})
        }
        "/cgi-bin/kf/sync_msg" => fake.sync_page(&body),
        "/cgi-bin/kf/send_msg" => {
            fake.send_msg.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok", "msgid": "FAKE"})
        }
        "/cgi-bin/message/send" => {
            fake.message_send.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok", "msgid": "FAKE"})
        }
        _ => {
            fake.other.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok"})
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORP_ID: &str = "wx5823bf96d3bd56c7";
    const TOKEN: &str = "QDG6eK";
    const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn callbacks(kf: bool) -> Callbacks {
        let env = [("WECOM_CORP_ID", CORP_ID), ("WECOM_TOKEN", TOKEN), ("WECOM_ENCODING_AES_KEY", AES_KEY)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (config, _) = config::load(&Sources { env, ..Sources::default() }).expect("a valid configuration");
        Callbacks {
            keys: config.app_keys,
            corp: CORP_ID.to_owned(),
            agent: 1_000_002,
            kf,
            next: AtomicU64::new(0),
            id_base: 7_000_000,
        }
    }

    /// The query parameter `name` of `path`.
    fn parameter<'a>(path: &'a str, name: &str) -> &'a str {
        let query = path.split_once('?').expect("a query").1;
        query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).expect("the parameter")
    }

    fn decrypt(path: &str, body: &str) -> String {
        let encrypted =
            body.split("<Encrypt><![CDATA[").nth(1).and_then(|rest| rest.split("]]>").next()).expect("Encrypt");
        let signature = crypto::sign(TOKEN, parameter(path, "timestamp"), parameter(path, "nonce"), encrypted);
        assert!(signature.matches(parameter(path, "msg_signature")), "signed with the Token");
        let key = crypto::AesKey::parse(AES_KEY).expect("key");
        let plaintext = crypto::decrypt(&key, encrypted).expect("decrypts");
        assert_eq!(plaintext.receive_id(), CORP_ID);
        plaintext.message().to_owned()
    }

    fn target() -> Target {
        Target::parse("http://127.0.0.1:1", Some(CALLBACK_PATH)).expect("a loopback URL")
    }

    #[test]
    fn every_text_callback_is_signed_encrypted_and_has_a_new_msg_id() {
        let (callbacks, target) = (callbacks(false), target());
        let (path, body) = callbacks.make(&target);
        assert!(path.starts_with("/api/v1/wecom/callback?msg_signature="), "{path}");
        assert!(decrypt(&path, &body).contains("<MsgId>7000000</MsgId>"));
        let (path, body) = callbacks.make(&target);
        assert!(decrypt(&path, &body).contains("<MsgId>7000001</MsgId>"));
    }

    #[test]
    fn every_kf_notice_has_a_new_token() {
        let (callbacks, target) = (callbacks(true), target());
        let (path, body) = callbacks.make(&target);
        let xml = decrypt(&path, &body);
        assert!(xml.contains("<Event><![CDATA[kf_msg_or_event]]></Event>"), "{xml}");
        assert!(xml.contains("<Token><![CDATA[LOAD7000000]]></Token>"), "{xml}");
        let (path, body) = callbacks.make(&target);
        assert!(decrypt(&path, &body).contains("<Token><![CDATA[LOAD7000001]]></Token>"));
    }

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
