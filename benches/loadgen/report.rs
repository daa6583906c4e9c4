//! The result of `loadgen run`: one JSON line (`--json`, the fields compare.sh and
//! soak.sh read) and the human summary, from the merged [`Tally`] and the /proc
//! [`Snapshot`]s taken before and after the load.
//!
//! Deliberately not here: any measuring (`run`, `sample`); the field names and the
//! summary's wording are what the scripts and BENCHMARKS.md rely on, so they change
//! only together.

use std::time::Duration;

use serde_json::{json, Value};

use crate::run::Tally;
use crate::sample::{self, Snapshot};
use crate::RunArgs;

/// Prints the run's result: with `--json` the JSON line on stdout and the summary on
/// stderr, else the summary on stdout.
pub(crate) fn print(args: &RunArgs, tally: &Tally, elapsed: Duration, before: &Snapshot, after: &Snapshot) {
    let label = args.label.clone().unwrap_or_else(|| format!("{:?}", args.mode).to_lowercase());
    let url = &args.url;
    let secs = elapsed.as_secs_f64();
    let ticks = sample::ticks_per_second();
    let percentile = |q: f64| tally.latency.value_at_quantile(q) as f64 / 1000.0;
    let answered = tally.answered();
    let non_2xx = answered - tally.ok();
    let rps = answered as f64 / secs;
    let loadgen_cpu_pct = (after.own.cpu_ticks - before.own.cpu_ticks) as f64 / ticks / secs * 100.0;
    // How busy each core was, whoever used it: on a shared machine the part the
    // server and the generator do not explain is someone else's.
    let core_busy_pct: Vec<f64> = before
        .cores
        .iter()
        .zip(&after.cores)
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
        "p999_ms": percentile(0.999),
        "max_ms": tally.latency.max() as f64 / 1000.0,
        "loadgen_cpu_pct": loadgen_cpu_pct,
        "core_busy_pct": core_busy_pct,
    });
    let mut human = format!(
        "{label}: {url}, {} connections, {secs:.2} s{}\n  \
         requests  {answered} = {rps:.1} req/s (2xx {}, non-2xx {non_2xx}{})\n  \
         latency   p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms\n  \
         socket errors: connect {}, read/write {}, timeout {} (server-closed keep-alives: {})\n  \
         loadgen CPU {loadgen_cpu_pct:.0} %; cores busy {}",
        args.connections,
        if args.rate > 0.0 { format!(", target {} req/s", args.rate) } else { String::new() },
        tally.ok(),
        if non_2xx > 0 { format!(", statuses {:?}", tally.statuses) } else { String::new() },
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(0.999),
        tally.latency.max() as f64 / 1000.0,
        tally.connect_errors,
        tally.io_errors,
        tally.timeouts,
        tally.reconnects,
        core_busy_pct.iter().map(|pct| format!("{pct:.0} %")).collect::<Vec<_>>().join(", "),
    );
    if let (Some(pid), Some(before), Some(after)) = (args.pid, before.server, after.server) {
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
}
