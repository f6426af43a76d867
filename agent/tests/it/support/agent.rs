//! A running `podflow agent` inside a node namespace ([`Agent`]), read back through
//! `podflow tail -o json` and `podflow status -o json`; [`expect_totals`] and friends.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use podflow_testbed::{Node, wait_for};
use serde_json::Value;

use super::BIN;

/// A `podflow agent` process running inside a node namespace. Killed (SIGKILL) on drop if still
/// running; its log is printed on drop when the test is panicking.
pub struct Agent {
    pub child: Option<Child>,
    /// Holds the socket and the log; removed on drop.
    _dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(node: &Node, extra: &[&str]) -> Agent {
        Agent::start_named(node, "e2e-node", extra)
    }

    /// Like [`Agent::start`], with the node name the agent reports.
    pub fn start_named(node: &Node, name: &str, extra: &[&str]) -> Agent {
        Agent::start_wrapped(node, name, &[], extra)
    }

    /// Like [`Agent::start_named`], run through `wrapper` (e.g. `setpriv ... --`) inside the
    /// node namespace.
    pub fn start_wrapped(node: &Node, name: &str, wrapper: &[&str], extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("podflow.sock");
        let log = dir.path().join("agent.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = node.ns.command(program);
                c.args(args).arg(BIN);
                c
            }
            None => node.ns.command(BIN),
        };
        // A flush interval of 1 s unless the test sets one.
        let flush: &[&str] = if extra.contains(&"--flush-interval") {
            &[]
        } else {
            &["--flush-interval", "1s"]
        };
        let child = cmd
            .args(["--log-format", "text", "agent", "--node-name", name])
            .args(flush)
            .arg("--socket")
            .arg(&sock)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn podflow agent");
        Agent {
            child: Some(child),
            _dir: dir,
            sock,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// How many times the agent's threads have been scheduled in, summed (the second field of
    /// `/proc/<pid>/task/<tid>/schedstat`, exact): the wake-ups a sleeping agent costs the node.
    pub fn wakeups(&self) -> u64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).expect("tasks");
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `podflow status -o json`, or None while the agent is not serving yet.
    pub fn status(&self) -> Option<Value> {
        let out = Command::new(BIN)
            .args(["status", "-o", "json", "--server"])
            .arg(&self.sock)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The status counter `name`; panics when the status lacks it.
    pub fn counter(&self, name: &str) -> u64 {
        let st = self.status().expect("status");
        st["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .and_then(|c| c["value"].as_u64())
            .unwrap_or_else(|| panic!("no counter {name} in {st}"))
    }

    /// Names of the attached interfaces (sorted), from the status.
    pub fn attached(&self) -> Option<Vec<String>> {
        let st = self.status()?;
        let mut names: Vec<String> = st["interfaces"]
            .as_array()?
            .iter()
            .filter_map(|i| i["name"].as_str().map(String::from))
            .collect();
        names.sort();
        Some(names)
    }

    /// Waits until exactly `ifaces` are attached.
    pub fn wait_attached(&self, ifaces: &[&str], timeout: Duration) -> Duration {
        let start = Instant::now();
        let mut want: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
        want.sort();
        let got = wait_for(timeout, Duration::from_millis(20), || {
            self.assert_running();
            self.attached().filter(|a| *a == want)
        });
        assert!(
            got.is_some(),
            "interfaces {want:?} not attached within {timeout:?}; status: {:?}\nlog:\n{}",
            self.status(),
            self.log_text()
        );
        start.elapsed()
    }

    pub fn assert_running(&self) {
        let pid = self.pid();
        // SAFETY: kill with signal 0 only checks existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(alive, "agent exited early; log:\n{}", self.log_text());
    }

    /// Every buffered flow record (`podflow tail -o json`, no follow).
    pub fn flows(&self, extra: &[&str]) -> Vec<Value> {
        tail(&self.sock, extra)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log_text());
        }
    }
}

pub fn tail(sock: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["tail", "-o", "json", "--server"])
        .arg(sock)
        .args(extra)
        .stderr(Stdio::piped())
        .output()
        .expect("run podflow tail");
    assert!(
        out.status.success(),
        "podflow tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The part of a flow record that identifies a flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub src_port: u64,
    pub dst_port: u64,
}

impl Tuple {
    pub fn new(src: impl ToString, dst: impl ToString, protocol: &str, sp: u64, dp: u64) -> Tuple {
        Tuple {
            src: src.to_string(),
            dst: dst.to_string(),
            protocol: protocol.to_string(),
            src_port: sp,
            dst_port: dp,
        }
    }

    pub fn matches(&self, f: &Value) -> bool {
        f["src_ip"].as_str() == Some(self.src.as_str())
            && f["dst_ip"].as_str() == Some(self.dst.as_str())
            && protocol_name(&f["protocol"]) == self.protocol
            && f["src_port"].as_u64() == Some(self.src_port)
            && f["dst_port"].as_u64() == Some(self.dst_port)
    }
}

pub fn protocol_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Sum of packets and bytes over a flow's records, and the records themselves.
pub fn totals(flows: &[Value], t: &Tuple) -> (u64, u64, Vec<Value>) {
    let recs: Vec<Value> = flows.iter().filter(|f| t.matches(f)).cloned().collect();
    let p = recs
        .iter()
        .map(|f| f["packets"].as_u64().unwrap_or(0))
        .sum();
    let b = recs.iter().map(|f| f["bytes"].as_u64().unwrap_or(0)).sum();
    (p, b, recs)
}

/// Waits until the flow's totals equal `want` (packets, bytes), then checks they stay there for
/// two more flushes (nothing counted twice later). Panics with the records on mismatch.
pub fn expect_totals(agent: &Agent, t: &Tuple, want: (u64, u64)) -> Vec<Value> {
    let got = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        let (p, b, _) = totals(&agent.flows(&[]), t);
        ((p, b) == want).then_some(())
    });
    if got.is_some() {
        std::thread::sleep(Duration::from_millis(2200));
    }
    let flows = agent.flows(&[]);
    let (p, b, recs) = totals(&flows, t);
    assert_eq!(
        (p, b),
        want,
        "flow {t:?}: got {p} packets / {b} bytes, want {want:?}; records: {recs:#?}"
    );
    recs
}

/// Reads `Field` of `Section` from a /proc/net/{snmp,netstat}-style file inside a namespace.
pub fn proc_net_counter(
    node: &podflow_testbed::Netns,
    file: &str,
    section: &str,
    field: &str,
) -> u64 {
    let text = node
        .exec("cat", &[&format!("/proc/net/{file}")])
        .expect("read proc net");
    let mut lines = text
        .lines()
        .filter(|l| l.starts_with(&format!("{section}:")));
    let header = lines.next().unwrap_or_default();
    let values = lines.next().unwrap_or_default();
    let idx = header
        .split_whitespace()
        .position(|h| h == field)
        .unwrap_or_else(|| panic!("{section}:{field} not in /proc/net/{file}"));
    values
        .split_whitespace()
        .nth(idx)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {section}:{field} in /proc/net/{file}"))
}
