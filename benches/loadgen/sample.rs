//! What a run costs, from /proc: a process's CPU time and memory ([`ProcSample`]:
//! the server's and the generator's own) and how busy each core was ([`CoreTicks`]),
//! read together as one [`Snapshot`] before and after the load.
//!
//! Deliberately not here: turning two snapshots into percentages and MiB (`report`),
//! and any platform but Linux.

use anyhow::Context;

/// Everything `run` reads before and after the load, in this order.
pub(crate) struct Snapshot {
    /// The server's process, when its id was given.
    pub(crate) server: Option<ProcSample>,
    /// The generator's own process.
    pub(crate) own: ProcSample,
    /// Every core, in order.
    pub(crate) cores: Vec<CoreTicks>,
}

impl Snapshot {
    pub(crate) fn take(server_pid: Option<u32>) -> anyhow::Result<Self> {
        let server = server_pid.map(|pid| ProcSample::read(&pid.to_string())).transpose()?;
        let own = ProcSample::read("self")?;
        let cores = core_ticks()?;
        Ok(Self { server, own, cores })
    }
}

/// Clock ticks per second: the unit of `cpu_ticks` and of [`CoreTicks`].
pub(crate) fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// A process's CPU time and memory, from /proc.
#[derive(Clone, Copy)]
pub(crate) struct ProcSample {
    /// utime + stime, in clock ticks.
    pub(crate) cpu_ticks: u64,
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
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
pub(crate) struct CoreTicks {
    pub(crate) busy: u64,
    pub(crate) total: u64,
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
