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
//! This file is the command line and its dispatch, and the few helpers every
//! command shares (the runtime, seconds, the clock); each job has its own file:
//!
//! - `run`: the connections of `loadgen run` and what each one counts;
//! - `client`: the HTTP/1.1 client and the TLS verifier that trusts any certificate;
//! - `generate`: the requests sent (signed callbacks, kf notices, replays, GETs);
//! - `sample`: the server's and the generator's CPU and memory, and the cores', from /proc;
//! - `report`: the JSON line and the human summary of a run;
//! - `wait`: start-up to live;
//! - `fake_wecom`: the fake WeCom API and webhook receiver.
//!
//! Deliberately not here: anything the shipped binary needs (this is an example
//! target), and any host but loopback: the generator trusts every certificate.

mod client;
mod fake_wecom;
mod generate;
mod report;
mod run;
mod sample;
mod wait;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

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
    /// Write COUNT distinct app text callbacks (as `distinct` makes them) for wrk,
    /// one per line: the path with its query, a tab, the body. benches/wrk-callbacks.lua
    /// posts them in order, each once.
    Bodies {
        /// How many; more than the run will send, or wrk replays them (duplicates).
        #[arg(long)]
        count: u64,
        #[arg(long)]
        out: PathBuf,
        /// The service's configuration file (as for `run`).
        #[arg(long)]
        config: Option<PathBuf>,
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
        Command::Run(args) => run::run(&args),
        Command::FakeApi { listen, page } => runtime(1)?.block_on(fake_wecom::fake_api(listen, page)),
        Command::Bodies { count, out, config } => generate::write_bodies(count, &out, config),
        Command::Wait { url, since_ns, timeout, json } => {
            let since_ns = since_ns.unwrap_or_else(unix_nanos);
            runtime(1)?.block_on(wait::wait(&url, since_ns, seconds(timeout)?, json))
        }
    }
}

/// The tokio runtime: current-thread for 1 (or 0), else that many workers.
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

/// A command-line number of seconds as a `Duration`; an error if negative or not finite.
fn seconds(value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{value} is not a number of seconds"))
}

/// Now, in nanoseconds since the Unix epoch.
fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}
