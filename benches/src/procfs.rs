//! Process CPU time and memory from /proc (Linux only).

use std::time::Instant;

use anyhow::{Context, Result};

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat` (USER_HZ).
pub(crate) fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU time of a process in seconds: the sum of its threads' run time from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds), falling back to utime + stime
/// (10 ms ticks) from `/proc/<pid>/stat`. Threads that exited between two readings
/// are missed by the first; the servers under test keep their threads.
pub(crate) fn cpu_secs(pid: u32) -> Result<f64> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut ns: u64 = 0;
        let mut any = false;
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat"))
                && let Some(v) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                ns += v;
                any = true;
            }
        }
        if any {
            return Ok(ns as f64 / 1e9);
        }
    }
    stat_cpu_secs(pid)
}

/// CPU time of the calling thread in seconds (`/proc/thread-self/schedstat`, ns).
/// Load threads measure themselves with it before they exit: a process-wide reading
/// taken after the join would miss threads that are gone.
pub(crate) fn thread_cpu_secs() -> Result<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    let ns: u64 = s
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?;
    Ok(ns as f64 / 1e9)
}

/// utime + stime of a process (all its threads, live and exited), in seconds.
pub(crate) fn stat_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: split after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) as f64 / clk_tck() as f64)
}

/// VmRSS in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    anyhow::bail!("no VmRSS for pid {pid}")
}

/// A CPU-time meter for one process over a wall-clock interval.
pub(crate) struct CpuMeter {
    pid: u32,
    cpu0: f64,
    t0: Instant,
}

impl CpuMeter {
    pub(crate) fn start(pid: u32) -> Result<Self> {
        Ok(Self {
            pid,
            cpu0: cpu_secs(pid)?,
            t0: Instant::now(),
        })
    }

    /// (cpu seconds used, wall seconds elapsed).
    pub(crate) fn stop(&self) -> Result<(f64, f64)> {
        Ok((
            cpu_secs(self.pid)? - self.cpu0,
            self.t0.elapsed().as_secs_f64(),
        ))
    }
}

/// Machine description: nproc, CPU model, kernel, load average.
pub(crate) fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("nproc={nproc} cpu=\"{model}\" kernel={kernel} loadavg=[{load}]")
}

/// The soft open-file limit of a process (`Max open files` in `/proc/<pid>/limits`;
/// None when unlimited).
pub(crate) fn nofile_limit(pid: u32) -> Result<Option<u64>> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("reading /proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' line")?;
    let soft = line.split_whitespace().nth(3).context("bad limits line")?;
    if soft == "unlimited" {
        return Ok(None);
    }
    Ok(Some(soft.parse()?))
}
