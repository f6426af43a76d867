//! The running agent: `podflow agent` in the node namespace, started until it attached, settled
//! and stopped, and what it reports (status, counters, metrics); /proc readings in [`proc`].
mod proc;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use podflow_testbed::wait_for;
use serde_json::Value;
use tempfile::TempDir;

use crate::{
    bed::{Bed, DST_VETH, SRC_VETH},
    harness::{ChildGuard, check_stop, stopped},
    kernel,
};

/// A running `podflow agent`, killed on drop ([`Agent::stop`] stops it gracefully).
pub struct Agent {
    child: ChildGuard,
    pid: i32,
    sock: PathBuf,
    metrics_port: u16,
    /// Its socket and log; removed on drop, after the agent was killed.
    dir: TempDir,
    node_ns: String,
    podflow: PathBuf,
}

impl Agent {
    /// Starts `podflow agent` in the node namespace with a flow map of `flow_map_entries`, the
    /// flush interval `flush` and `extra` arguments, and waits (30 s at most) until it attached
    /// to both pod veths.
    pub fn start(
        bed: &Bed,
        podflow: &Path,
        flow_map_entries: u32,
        flush: &str,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("podflow-bench-")
            .tempdir()
            .context("creating the agent's directory")?;
        let sock = dir.path().join("podflow.sock");
        let log = std::fs::File::create(dir.path().join("agent.log"))
            .context("creating the agent's log")?;
        let metrics_port = 9400 + (std::process::id() % 500) as u16;
        let child = bed
            .node_ns()
            .command(&podflow.to_string_lossy())
            .args(["--log-format", "text", "agent", "--node-name", "bench"])
            .args(["--flush-interval", flush, "--kubernetes", "off"])
            .args(["--flow-map-entries", &flow_map_entries.to_string()])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--veth-pattern", "vethpfb*"])
            .arg("--socket")
            .arg(&sock)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", podflow.display()))?;
        let pid = child.id() as i32;
        let agent = Agent {
            child: ChildGuard::new(child),
            // `ip netns exec` execs the agent in place: the pid is the agent's.
            pid,
            sock,
            metrics_port,
            dir,
            node_ns: bed.node_ns().name().to_string(),
            podflow: podflow.to_path_buf(),
        };
        let attached = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            if stopped() || !agent.alive() {
                return Some(false);
            }
            let st = agent.status().ok()?;
            let mut names: Vec<&str> = st["interfaces"]
                .as_array()?
                .iter()
                .filter_map(|i| i["name"].as_str())
                .collect();
            names.sort_unstable();
            (names == [DST_VETH, SRC_VETH]).then_some(true)
        });
        check_stop()?;
        if attached != Some(true) {
            bail!(
                "the agent did not attach to {SRC_VETH} and {DST_VETH} within 30 s; log:\n{}",
                agent.log()
            );
        }
        Ok(agent)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `podflow status -o json` against the agent's socket.
    pub fn status(&self) -> anyhow::Result<Value> {
        let out = Command::new(&self.podflow)
            .args(["status", "-o", "json", "--server"])
            .arg(&self.sock)
            .stdin(Stdio::null())
            .output()
            .context("podflow status")?;
        ensure!(out.status.success(), "podflow status failed");
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A counter of the status (`lost_map_full`, ...).
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let st = self.status()?;
        st["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .and_then(|c| c["value"].as_u64())
            .ok_or_else(|| anyhow!("no counter {name} in the status"))
    }

    /// Flow records exported so far: the sum of `podflow_flows_total` over its label sets, from
    /// the agent's metrics endpoint (scraped from inside the node namespace).
    pub fn records_exported(&self) -> anyhow::Result<f64> {
        let port = self.metrics_port;
        let text = Command::new("ip")
            .args(["netns", "exec", &self.node_ns, "timeout", "10", "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"
            ))
            .stdin(Stdio::null())
            .output()
            .context("scraping the agent's metrics")?;
        let text = String::from_utf8_lossy(&text.stdout);
        ensure!(
            text.contains("podflow_"),
            "no metrics from the agent on 127.0.0.1:{port}"
        );
        Ok(text
            .lines()
            .filter(|l| {
                l.starts_with("podflow_flows_total{") || l.starts_with("podflow_flows_total ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits until the agent's start-up work (interface discovery, attaching, the first flush,
    /// its runtime's threads) is over: until its threads used less than 2 ms of CPU in the last
    /// 500 ms (sampled every 100 ms), for at most 10 s. Returns how long that took and whether
    /// it settled.
    pub fn settle(&self) -> anyhow::Result<(Duration, bool)> {
        const WINDOW: usize = 5;
        const QUIET_NS: u64 = 2_000_000;
        let start = Instant::now();
        let mut samples = std::collections::VecDeque::new();
        loop {
            check_stop()?;
            samples.push_back(self.sched_ns()?);
            if samples.len() > WINDOW {
                samples.pop_front();
                if let (Some(first), Some(last)) = (samples.front(), samples.back())
                    && last.saturating_sub(*first) < QUIET_NS
                {
                    return Ok((start.elapsed(), true));
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Ok((start.elapsed(), false));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ids of the programs attached (tcx) to the two pod veths.
    pub fn prog_ids(&self) -> anyhow::Result<Vec<u32>> {
        kernel::attached_prog_ids(&self.node_ns)
    }

    /// SIGTERM, 10 s to exit (then SIGKILL), and a bounded wait until its programs are detached.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Bounded wait until the kernel has let go of the attachments.
        let ns = self.node_ns.clone();
        let gone = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            kernel::attached_prog_ids(&ns).ok().filter(|v| v.is_empty())
        });
        ensure!(
            gone.is_some(),
            "the agent's programs stayed attached after it exited"
        );
        Ok(())
    }
}
