//! `loadgen run`: N keep-alive connections, one request in flight on each (like
//! wrk), for a bounded time and optionally at a fixed total rate; each connection
//! counts what it saw in a [`Tally`], and the tallies are merged at the end.
//!
//! Deliberately not here: how requests are made (`generate`) and carried (`client`),
//! the /proc readings taken around the load (`sample`), and how the result is
//! printed (`report`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;

use crate::client::{Exchange, Target};
use crate::generate::{Generator, CALLBACK_PATH};
use crate::sample::Snapshot;
use crate::{report, runtime, seconds, Mode, RunArgs};

/// What every connection of a run shares.
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
pub(crate) struct Tally {
    /// Microseconds from send to the whole answer, every answered request.
    pub(crate) latency: Histogram<u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) connect_errors: u64,
    pub(crate) io_errors: u64,
    pub(crate) timeouts: u64,
    /// Connections the server closed between requests (not errors).
    pub(crate) reconnects: u64,
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

    pub(crate) fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub(crate) fn ok(&self) -> u64 {
        self.statuses.iter().filter(|(status, _)| (200..300).contains(*status)).map(|(_, n)| n).sum()
    }
}

/// Runs the load `args` describe, then prints the report.
pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    ensure!(args.connections >= 1, "--connections must be at least 1");
    ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be 0 or more");
    let duration = seconds(args.duration)?;
    let default_path = (args.mode != Mode::Get).then_some(CALLBACK_PATH);
    let target = Target::parse(&args.url, default_path)?;
    let generator = Generator::new(args.mode, args.config.clone(), &target)?;
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));

    let runtime = runtime(args.threads)?;
    let before = Snapshot::take(args.pid)?;
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
    let after = Snapshot::take(args.pid)?;
    drop(runtime);
    report::print(args, &tally, elapsed, &before, &after);
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
