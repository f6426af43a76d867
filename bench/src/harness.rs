//! What every measurement runs under: the stop flag (SIGINT/SIGTERM/SIGHUP), interruptible
//! sleep, progress lines, and drop guards for `kernel.bpf_stats_enabled` and child processes.
use std::{
    process::Child,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set the stop flag: every wait checks it and the run unwinds
/// through its guards.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether a signal asked the run to stop.
pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once a signal asked the run to stop.
pub fn check_stop() -> anyhow::Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (with an error) when interrupted.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A progress line on stderr (stdout carries the table).
pub fn log(msg: impl AsRef<str>) {
    eprintln!("podflow-bench: {}", msg.as_ref());
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Enables `kernel.bpf_stats_enabled` and restores the previous value on drop.
pub struct BpfStatsGuard {
    previous: String,
}

impl BpfStatsGuard {
    pub fn enable() -> anyhow::Result<BpfStatsGuard> {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStatsGuard { previous })
    }

    /// Turns run-time statistics on for the kernel-cost windows and off for the throughput runs
    /// (production runs without them: they add two clock reads to every program run).
    pub fn set(&self, on: bool) -> anyhow::Result<()> {
        std::fs::write(BPF_STATS_SYSCTL, if on { "1" } else { "0" })
            .context("writing kernel.bpf_stats_enabled")
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!(
                "podflow-bench: could not restore kernel.bpf_stats_enabled={}: {e}",
                self.previous
            );
        }
    }
}

/// utime + stime of process `pid` (all its threads) from `/proc/<pid>/stat`, in nanoseconds
/// (counted in ticks of 1/`CLK_TCK` s).
pub fn process_cpu_ns(pid: i32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = s
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after "comm": state is field 3 (index 0 here); utime 14 and stime 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((utime + stime) * 1_000_000_000 / clock_ticks())
}

/// Ticks per second of the CPU times in /proc.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// CPU time of the whole machine from the first line of `/proc/stat`, in nanoseconds summed over
/// the CPUs: (busy, total), where busy is everything but idle and iowait.
pub fn machine_cpu_ns() -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let ns = |ticks: u64| ticks * 1_000_000_000 / clock_ticks();
    Ok((ns(total - idle), ns(total)))
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    /// The child, while the guard still holds it.
    pub fn get_mut(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    /// Takes the child out of the guard (to stop it some other way).
    pub fn take(&mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
