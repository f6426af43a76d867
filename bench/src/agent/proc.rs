//! What /proc says about the agent: whether it lives, its CPU time (`stat`, and `schedstat` per
//! thread) and its memory (`status`).
use anyhow::{Context as _, anyhow};

use super::Agent;

/// One thread's CPU time and number of times it was scheduled onto a CPU (its wake-ups, roughly).
#[derive(Debug, Clone)]
pub struct ThreadCpu {
    pub tid: u32,
    pub name: String,
    pub ns: u64,
    pub slices: u64,
}

impl Agent {
    pub(super) fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks existence.
        let exists = unsafe { libc::kill(self.pid, 0) } == 0;
        // A zombie still exists: read its state.
        exists
            && std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
    }

    /// utime + stime of the agent (all threads), in nanoseconds.
    pub fn cpu_ns(&self) -> anyhow::Result<u64> {
        crate::harness::process_cpu_ns(self.pid).context("the agent's CPU time")
    }

    /// CPU time (ns) and times scheduled onto a CPU of each of the agent's threads, from
    /// `/proc/<pid>/task/<tid>/schedstat` (exact ns, unlike the 10 ms ticks of `stat`), with the
    /// thread's name.
    pub fn threads(&self) -> anyhow::Result<Vec<ThreadCpu>> {
        let dir = format!("/proc/{}/task", self.pid);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let path = e?.path();
            // A thread may exit between readdir and read: skip it.
            let Ok(st) = std::fs::read_to_string(path.join("schedstat")) else {
                continue;
            };
            let mut f = st.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
            let (ns, _wait, slices) = (
                f.next().unwrap_or(0),
                f.next().unwrap_or(0),
                f.next().unwrap_or(0),
            );
            let name = std::fs::read_to_string(path.join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            let tid = path
                .file_name()
                .and_then(|t| t.to_str())
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            out.push(ThreadCpu {
                tid,
                name,
                ns,
                slices,
            });
        }
        Ok(out)
    }

    /// Total CPU ns of the agent's threads (schedstat).
    pub(super) fn sched_ns(&self) -> anyhow::Result<u64> {
        Ok(self.threads()?.iter().map(|t| t.ns).sum())
    }

    /// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        s.lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| anyhow!("no {field} in /proc/<pid>/status"))
    }
}
