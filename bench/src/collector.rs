//! The collector under test: the real `podflow collector` binary on loopback, storing into a
//! real ClickHouse server of its own (`podflow_testbed::clickhouse`, the tests' launcher), fed by
//! in-process exporters ([`load`]).
pub mod load;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use podflow_testbed::wait_for;
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{ChildGuard, check_stop, stopped};

/// A running `podflow collector --listen 127.0.0.1:PORT --clickhouse URL`, killed on drop.
pub struct Collector {
    child: ChildGuard,
    pid: i32,
    addr: SocketAddr,
    podflow: std::path::PathBuf,
    /// Its log; removed on drop, after the process was killed.
    dir: TempDir,
}

impl Collector {
    /// Starts the collector storing into `clickhouse_url` (with `extra` arguments), and waits
    /// (≤ 30 s) until it listens.
    pub fn start(podflow: &Path, clickhouse_url: &str, extra: &[String]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("podflow-bench-collector-")
            .tempdir()
            .context("creating the collector's directory")?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("choosing a port")?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("collector.log"))?;
        let child = Command::new(podflow)
            .args(["--log-format", "text", "collector", "--listen"])
            .arg(addr.to_string())
            .args(["--clickhouse", clickhouse_url])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} collector", podflow.display()))?;
        let pid = i32::try_from(child.id()).context("pid")?;
        let mut c = Collector {
            child: ChildGuard::new(child),
            pid,
            addr,
            podflow: podflow.to_path_buf(),
            dir,
        };
        let up = wait_for(Duration::from_secs(30), Duration::from_millis(20), || {
            if stopped() || !c.alive() {
                return Some(false);
            }
            TcpStream::connect(addr).ok().map(|_| true)
        });
        check_stop()?;
        if up != Some(true) {
            bail!(
                "the collector did not listen on {addr} within 30 s; log:\n{}",
                c.log()
            );
        }
        Ok(c)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .get_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log (stderr), for error messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("collector.log")).unwrap_or_default()
    }

    /// A counter of `podflow status -o json` against the collector (`clickhouse_inserts`, ...).
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let out = Command::new(&self.podflow)
            .args(["status", "-o", "json", "--server"])
            .arg(self.addr.to_string())
            .stdin(Stdio::null())
            .output()
            .context("podflow status")?;
        ensure!(
            out.status.success(),
            "podflow status against the collector failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: Value = serde_json::from_slice(&out.stdout)?;
        st["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .and_then(|c| c["value"].as_u64())
            .ok_or_else(|| anyhow!("no counter {name} in the collector's status"))
    }
}
