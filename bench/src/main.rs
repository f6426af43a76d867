//! `podflow-bench`: podflow against the no-agent baseline, on a node built from network
//! namespaces (see `docs/BENCHMARKS.md`, run by `cargo xtask bench`).
//!
//! It builds a node namespace with two pods (`src`, `dst`) on veths ([`podflow_testbed`]), runs
//! the real `podflow agent` binary inside the node namespace, and measures with real tools:
//! iperf3 (TCP throughput, UDP 64-byte packet rate), bpftool (per-program run time with
//! `kernel.bpf_stats_enabled`, map memory), `/proc/<pid>/stat` and `/proc/<pid>/status` (agent
//! CPU and memory), the agent's status and metrics (records exported, loss counters) and an
//! in-process flow generator (UDP datagrams with rotating ports, sent from a thread inside the
//! source pod) that makes many distinct 5-tuples cheaply.
//!
//! Runs with and without the agent are interleaved (the order alternates from pair to pair), and
//! the ratios are medians of per-pair ratios.
//!
//! Safety: nothing is changed in the root namespace except `kernel.bpf_stats_enabled` (a global
//! sysctl), which is restored on every exit path (guard + SIGINT/SIGTERM handler). Traffic only
//! goes to addresses of the namespaces created here; every namespace is deleted on exit; every
//! wait is bounded.
#![expect(
    clippy::cast_precision_loss,
    reason = "benchmark figures are reported as floats"
)]

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use podflow_testbed::{Netns, Node, unique_prefix, wait_for};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    smoke: bool,
    /// Interleaved pairs of throughput blocks (with / without the agent).
    pairs: usize,
    /// Interleaved pairs of kernel-cost windows (agent / empty program).
    hook_pairs: usize,
    /// Runs of each churn rate.
    churn_runs: usize,
    /// Seconds of each iperf3 run.
    iperf_secs: u32,
    /// iperf3 runs of each kind (TCP, UDP) per block; a block's figure is their mean.
    reps: usize,
    /// Seconds of the agent's idle window (CPU and wake-ups with no traffic).
    idle_secs: f64,
    /// Seconds of each generator window for the kernel cost.
    hook_secs: f64,
    /// Packets per second of the generator for the kernel cost.
    hook_rate: u64,
    /// Distinct flows of the "many flows" kernel cost window.
    many_flows: u64,
    /// Flow map capacity for the kernel cost windows (default: from `many_flows`).
    hook_map_entries: Option<u32>,
    /// Flow churn rates (new flows per second) and the window of each.
    churn_rates: Vec<u64>,
    churn_secs: f64,
    /// Active flows for the resident memory figure.
    rss_flows: u64,
    /// Flow map capacity for the 50 % occupancy loss figure.
    loss_map_entries: u32,
    podflow: PathBuf,
    doc: Option<PathBuf>,
    command: String,
    /// Figure groups to measure (`--only`); empty: all of them.
    only: Vec<String>,
}

/// The figure groups `--only` selects from (`pairs` is an alias of `throughput,hook`).
const GROUPS: [&str; 5] = ["throughput", "hook", "churn", "rss", "map"];

impl Opts {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

fn usage() -> &'static str {
    "usage: podflow-bench [--smoke] [--pairs N] [--secs N] [--reps N] [--only throughput,hook,churn,rss,map] [--podflow PATH] [--doc FILE] [--command TEXT]\n\
     Measures podflow against the no-agent baseline inside network namespaces (root needed).\n\
     --pairs N: interleaved pairs of throughput blocks, of kernel-cost windows and churn runs\n\
     (default 9, 7 and 5); --secs: seconds per iperf3 run (3); --reps: iperf3 runs of each kind\n\
     per block (1).\n\
     --only measures some figure groups (throughput: TCP and UDP ratios, A/A, empty program;\n\
     hook: kernel ns per hook; pairs: both; churn: CPU per flow; rss: resident memory;\n\
     map: map memory and loss) and never writes --doc."
}

fn parse_opts() -> anyhow::Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let exe = std::env::current_exe().context("current_exe")?;
    let sibling = exe
        .parent()
        .map(|d| d.join("podflow"))
        .unwrap_or_else(|| PathBuf::from("podflow"));
    let mut o = if smoke {
        Opts {
            smoke,
            pairs: 1,
            hook_pairs: 1,
            churn_runs: 1,
            iperf_secs: 1,
            reps: 1,
            idle_secs: 1.0,
            hook_secs: 1.0,
            hook_rate: 50_000,
            many_flows: 20_000,
            hook_map_entries: None,
            churn_rates: vec![2_000, 10_000],
            churn_secs: 1.0,
            rss_flows: 10_000,
            loss_map_entries: 16_384,
            podflow: sibling,
            doc: None,
            command: String::new(),
            only: Vec::new(),
        }
    } else {
        Opts {
            smoke,
            pairs: 9,
            hook_pairs: 7,
            // 5, as the method says (it used to follow --pairs, 7): the time goes to the
            // throughput pairs.
            churn_runs: 5,
            iperf_secs: 5,
            reps: 1,
            idle_secs: 10.0,
            hook_secs: 2.0,
            hook_rate: 100_000,
            many_flows: 60_000,
            hook_map_entries: None,
            churn_rates: vec![10_000, 100_000],
            churn_secs: 5.0,
            rss_flows: 100_000,
            loss_map_entries: 131_072,
            podflow: sibling,
            doc: None,
            command: String::new(),
            only: Vec::new(),
        }
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{a} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--smoke" => {}
            "--pairs" => {
                o.pairs = val()?.parse().context("--pairs")?;
                o.hook_pairs = o.pairs;
                o.churn_runs = o.pairs;
            }
            "--secs" => o.iperf_secs = val()?.parse().context("--secs")?,
            "--reps" => o.reps = val()?.parse().context("--reps")?,
            "--podflow" => o.podflow = PathBuf::from(val()?),
            "--many-flows" => o.many_flows = val()?.parse().context("--many-flows")?,
            "--map-entries" => o.hook_map_entries = Some(val()?.parse().context("--map-entries")?),
            "--doc" => o.doc = Some(PathBuf::from(val()?)),
            "--command" => o.command = val()?,
            "--only" => {
                o.only = val()?
                    .split(',')
                    .flat_map(|g| match g {
                        "pairs" => vec!["throughput".to_string(), "hook".to_string()],
                        g => vec![g.to_string()],
                    })
                    .collect();
                if let Some(g) = o.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    bail!("--only: unknown group {g} (groups: {})", GROUPS.join(","));
                }
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{}", usage()),
        }
    }
    ensure!(o.pairs >= 1, "--pairs must be at least 1");
    ensure!(o.reps >= 1, "--reps must be at least 1");
    ensure!(o.iperf_secs >= 1, "--secs must be at least 1");
    if o.command.is_empty() {
        o.command = std::iter::once("podflow-bench".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Interruption and guards

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (with an error) when interrupted.
fn sleep(d: Duration) -> anyhow::Result<()> {
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

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Enables `kernel.bpf_stats_enabled` and restores the previous value on drop.
struct BpfStatsGuard {
    previous: String,
}

impl BpfStatsGuard {
    fn enable() -> anyhow::Result<BpfStatsGuard> {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStatsGuard { previous })
    }

    /// Turns run-time statistics on for the kernel-cost windows and off for the throughput runs
    /// (production runs without them: they add two clock reads to every program run).
    fn set(&self, on: bool) -> anyhow::Result<()> {
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

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("podflow-bench-{tag}"));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summary(v: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

fn fmt_range(s: &Summary, digits: usize) -> String {
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, s.median, digits, s.min, digits, s.max
    )
}

// ---------------------------------------------------------------------------------------------
// The testbed

struct Bed {
    node: Node,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    _iperf_server: ChildGuard,
}

const SRC_VETH: &str = "vethpfbsrc";
const DST_VETH: &str = "vethpfbdst";

fn build_bed() -> anyhow::Result<Bed> {
    let prefix = unique_prefix("pfb");
    let mut node = Node::new(&prefix, 213).context("creating the node namespace")?;
    let src_ip = node
        .add_pod("src", SRC_VETH)
        .context("adding pod src")?
        .ipv4;
    let dst_ip = node
        .add_pod("dst", DST_VETH)
        .context("adding pod dst")?
        .ipv4;
    let dst = node.pod("dst")?;
    let server = dst
        .ns
        .command("iperf3")
        .args(["-s", "-B", &dst_ip.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the iperf3 server in pod dst (is iperf3 installed?)")?;
    let server = ChildGuard(Some(server));
    // Bounded wait until the server listens.
    let dst_ns = dst.ns.name().to_string();
    let listening = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        let out = Command::new("ip")
            .args(["netns", "exec", &dst_ns, "ss", "-Hltn", "sport = :5201"])
            .output()
            .ok()?;
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    ensure!(
        listening.is_some(),
        "iperf3 server did not start within 5 s"
    );
    Ok(Bed {
        node,
        src_ip,
        dst_ip,
        _iperf_server: server,
    })
}

impl Bed {
    fn src(&self) -> anyhow::Result<&Netns> {
        Ok(&self.node.pod("src")?.ns)
    }
}

// ---------------------------------------------------------------------------------------------
// iperf3

fn iperf(bed: &Bed, args: &[&str]) -> anyhow::Result<Value> {
    let src = bed.src()?;
    let dst = bed.dst_ip.to_string();
    let mut last_err = None;
    // The server takes one test at a time and may still be closing the previous one: retry.
    for _ in 0..3 {
        check_stop()?;
        let mut cmd = src.command("timeout");
        cmd.args(["60", "iperf3", "-c", &dst, "-J"]);
        // Client on CPU 0, server on CPU 1 (iperf3 -A n,m), in every run with and without the
        // agent: the scheduler moving the two between the cores is most of the run-to-run spread
        // of a single stream on a 2-core VM.
        if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
            cmd.args(["-A", "0,1"]);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running iperf3")?;
        let v: Result<Value, _> = serde_json::from_slice(&out.stdout);
        match v {
            Ok(v) if out.status.success() && v.get("error").is_none() => return Ok(v),
            Ok(v) => last_err = Some(format!("{}", v.get("error").unwrap_or(&Value::Null))),
            Err(e) => last_err = Some(format!("{e}: {}", String::from_utf8_lossy(&out.stderr))),
        }
        sleep(Duration::from_millis(300))?;
    }
    bail!("iperf3 {args:?} failed: {}", last_err.unwrap_or_default())
}

/// Single-stream TCP throughput, receiver side, in Gbit/s.
fn tcp_gbps(bed: &Bed, secs: u32) -> anyhow::Result<f64> {
    let v = iperf(bed, &["-t", &secs.to_string()])?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("iperf3 TCP: no end.sum_received.bits_per_second"))
}

/// UDP 64-byte datagrams at full speed: packets per second the receiver got
/// (`packets - lost_packets` over the receiver's interval).
fn udp_pps(bed: &Bed, secs: u32) -> anyhow::Result<f64> {
    let v = iperf(bed, &["-u", "-l", "64", "-b", "0", "-t", &secs.to_string()])?;
    let s = &v["end"]["sum"];
    let (Some(packets), Some(lost), Some(seconds)) = (
        s["packets"].as_f64(),
        s["lost_packets"].as_f64(),
        s["seconds"].as_f64(),
    ) else {
        bail!("iperf3 UDP: no end.sum.packets/lost_packets/seconds: {s}");
    };
    ensure!(seconds > 0.0, "iperf3 UDP: zero-length run");
    Ok((packets - lost).max(0.0) / seconds)
}

// ---------------------------------------------------------------------------------------------
// Flow generator

/// What a generator window sent.
#[derive(Debug, Clone, Copy)]
struct GenResult {
    sent: u64,
    secs: f64,
}

/// Distinct destination ports per source socket (ports 10000..60000; iperf3 uses 5201).
const PORTS_PER_SOCKET: u64 = 50_000;

#[derive(Debug, Clone, Copy)]
enum Flows {
    /// Cycle through flows 0..n again and again (established flows).
    Rotate(u64),
    /// Every packet is a new flow, numbered from `start`.
    Unique { start: u64 },
}

/// Sends 64-byte frames (22-byte UDP payloads) from a thread inside pod `src` to `dst` at `rate`
/// packets per second for `secs`. Flow `i` is (socket `i / 50000`, destination port
/// `10000 + i % 50000`); each socket has its own ephemeral source port. Nothing listens on those
/// ports in `dst`: the packets cross both veths and are dropped by `dst`'s UDP layer (its ICMP
/// errors are rate-limited by the kernel to about one per second).
fn generate(bed: &Bed, flows: Flows, rate: u64, secs: f64) -> anyhow::Result<GenResult> {
    let dst = bed.dst_ip;
    let max_index = match flows {
        Flows::Rotate(n) => n.max(1),
        Flows::Unique { start } => start + (rate as f64 * secs) as u64 + 1,
    };
    let nsock = max_index.div_ceil(PORTS_PER_SOCKET) as usize;
    let res = bed.src()?.run(move || -> anyhow::Result<GenResult> {
        let socks: Vec<UdpSocket> = (0..nsock)
            .map(|_| UdpSocket::bind("0.0.0.0:0"))
            .collect::<Result<_, _>>()
            .context("binding generator sockets")?;
        let payload = [0x5au8; 22];
        let start = Instant::now();
        let total = (rate as f64 * secs) as u64;
        let mut sent = 0u64;
        while sent < total {
            if STOP.load(Ordering::Relaxed) {
                break;
            }
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            while sent < due {
                let i = match flows {
                    Flows::Rotate(n) => sent % n.max(1),
                    Flows::Unique { start } => start + sent,
                };
                let sock = &socks[(i / PORTS_PER_SOCKET) as usize % nsock];
                let port = 10_000 + (i % PORTS_PER_SOCKET) as u16;
                // Errors (e.g. ENOBUFS) just mean the packet was not sent; it is not counted.
                if sock.send_to(&payload, SocketAddrV4::new(dst, port)).is_ok() {
                    sent += 1;
                } else {
                    // Count it anyway so pacing does not spin; the receiver-side figures do not
                    // depend on this number.
                    sent += 1;
                }
            }
        }
        Ok(GenResult {
            sent,
            secs: start.elapsed().as_secs_f64(),
        })
    });
    let r = res.map_err(|e| anyhow!("generator thread: {e}"))??;
    check_stop()?;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// The agent

/// One thread's CPU time and number of times it was scheduled onto a CPU (its wake-ups, roughly).
#[derive(Debug, Clone)]
struct ThreadCpu {
    tid: u32,
    name: String,
    ns: u64,
    slices: u64,
}

struct Agent {
    child: ChildGuard,
    pid: i32,
    sock: PathBuf,
    metrics_port: u16,
    _dir: TempDir,
    node_ns: String,
    podflow: PathBuf,
}

impl Agent {
    fn start(
        bed: &Bed,
        podflow: &Path,
        flow_map_entries: u32,
        flush: &str,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let dir = TempDir::new(&unique_prefix("a"))?;
        let sock = dir.0.join("podflow.sock");
        let log = std::fs::File::create(dir.0.join("agent.log"))?;
        let metrics_port = 9400 + (std::process::id() % 500) as u16;
        let child = bed
            .node
            .ns
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
            child: ChildGuard(Some(child)),
            // `ip netns exec` execs the agent in place: the pid is the agent's.
            pid,
            sock,
            metrics_port,
            _dir: dir,
            node_ns: bed.node.ns.name().to_string(),
            podflow: podflow.to_path_buf(),
        };
        let attached = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            if STOP.load(Ordering::Relaxed) || !agent.alive() {
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

    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks existence.
        let exists = unsafe { libc::kill(self.pid, 0) } == 0;
        // A zombie still exists: read its state.
        exists
            && std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("agent.log")).unwrap_or_default()
    }

    fn status(&self) -> anyhow::Result<Value> {
        let out = Command::new(&self.podflow)
            .args(["status", "-o", "json", "--server"])
            .arg(&self.sock)
            .stdin(Stdio::null())
            .output()
            .context("podflow status")?;
        ensure!(out.status.success(), "podflow status failed");
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let st = self.status()?;
        st["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .and_then(|c| c["value"].as_u64())
            .ok_or_else(|| anyhow!("no counter {name} in the status"))
    }

    /// Flow records exported so far: the sum of `podflow_flows_total` over its label sets, from
    /// the agent's metrics endpoint (scraped from inside the node namespace).
    fn records_exported(&self) -> anyhow::Result<f64> {
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

    /// utime + stime of the agent (all threads), in nanoseconds.
    fn cpu_ns(&self) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .context("reading the agent's /proc/<pid>/stat")?;
        let rest = s
            .rsplit_once(") ")
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("bad /proc/<pid>/stat"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after "comm": state is field 3 (index 0 here); utime 14 and stime 15.
        let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok((utime + stime) * 1_000_000_000 / tck)
    }

    /// CPU time (ns) and times scheduled onto a CPU of each of the agent's threads, from
    /// `/proc/<pid>/task/<tid>/schedstat` (exact ns, unlike the 10 ms ticks of `stat`), with the
    /// thread's name.
    fn threads(&self) -> anyhow::Result<Vec<ThreadCpu>> {
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
    fn sched_ns(&self) -> anyhow::Result<u64> {
        Ok(self.threads()?.iter().map(|t| t.ns).sum())
    }

    /// Waits until the agent's start-up work (interface discovery, attaching, the first flush,
    /// its runtime's threads) is over: until its threads used less than 2 ms of CPU in the last
    /// 500 ms (sampled every 100 ms), for at most 10 s. Returns how long that took and whether
    /// it settled.
    fn settle(&self) -> anyhow::Result<(Duration, bool)> {
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

    /// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
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

    /// The ids of the programs attached (tcx) to the two pod veths, from `bpftool net show`
    /// inside the node namespace.
    fn prog_ids(&self) -> anyhow::Result<Vec<u32>> {
        attached_prog_ids(&self.node_ns)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.0.take() {
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
            attached_prog_ids(&ns).ok().filter(|v| v.is_empty())
        });
        ensure!(
            gone.is_some(),
            "the agent's programs stayed attached after it exited"
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// bpftool

fn bpftool_json(ns: Option<&str>, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "bpftool"]);
            c
        }
        None => Command::new("bpftool"),
    };
    let out = cmd
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The ids of the programs attached with tcx to both directions of the two pod veths:
/// `BPF_PROG_QUERY` from a thread inside the node namespace (ifindexes are per namespace; bpftool
/// 7.1's `net show` does not list tcx attachments yet).
fn attached_prog_ids(node_ns: &str) -> anyhow::Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    let path = format!("/run/netns/{node_ns}");
    let mut ifindexes = Vec::new();
    for dev in [SRC_VETH, DST_VETH] {
        let out = Command::new("ip")
            .args(["netns", "exec", node_ns, "cat"])
            .arg(format!("/sys/class/net/{dev}/ifindex"))
            .output()?;
        ifindexes.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .with_context(|| format!("ifindex of {dev}"))?,
        );
    }
    let ids = std::thread::scope(|sc| {
        sc.spawn(|| -> anyhow::Result<Vec<u32>> {
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns(CLONE_NEWNET) on a namespace fd, on this scoped thread only, which
            // ends right after the queries.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            let mut ids = Vec::new();
            for &ifindex in &ifindexes {
                for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                    let mut buf = [0u32; 64];
                    let mut attr = [0u64; 8];
                    let b = attr.as_mut_ptr().cast::<u8>();
                    // SAFETY: attr.query fields at their UAPI offsets (target_ifindex 0,
                    // attach_type 4, prog_ids 16, prog_cnt 24) in a 64-byte buffer.
                    unsafe {
                        b.cast::<u32>().write(ifindex);
                        b.add(4).cast::<u32>().write(attach_type);
                        b.add(16).cast::<u64>().write(buf.as_mut_ptr() as u64);
                        b.add(24).cast::<u32>().write(buf.len() as u32);
                    }
                    let size = std::mem::size_of_val(&attr) as u32;
                    // SAFETY: bpf(BPF_PROG_QUERY) with a valid attr; buf outlives the call.
                    let rc = unsafe {
                        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), size)
                    };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error()).context("BPF_PROG_QUERY");
                    }
                    // SAFETY: prog_cnt written back by the kernel.
                    let n = unsafe { b.add(24).cast::<u32>().read() } as usize;
                    ids.extend_from_slice(&buf[..n.min(buf.len())]);
                }
            }
            Ok(ids)
        })
        .join()
        .map_err(|_| anyhow!("query thread panicked"))?
    })?;
    let mut ids = ids;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// (run_time_ns, run_cnt) of each program.
fn prog_stats(ids: &[u32]) -> anyhow::Result<Vec<(u64, u64)>> {
    ids.iter()
        .map(|id| {
            let v = bpftool_json(None, &["prog", "show", "id", &id.to_string()])?;
            Ok((
                v["run_time_ns"].as_u64().unwrap_or(0),
                v["run_cnt"].as_u64().unwrap_or(0),
            ))
        })
        .collect()
}

/// The name of each program (`bpftool -j prog show id N` → name).
fn prog_names(ids: &[u32]) -> anyhow::Result<Vec<String>> {
    ids.iter()
        .map(|id| {
            let v = bpftool_json(None, &["prog", "show", "id", &id.to_string()])?;
            Ok(v["name"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

/// ns per step of a pointer chase through a random cyclic permutation of the cache lines of a
/// `bytes` buffer backed by 4 KiB pages (`MADV_NOHUGEPAGE`, like the kernel's vmalloc'd map
/// memory): the latency of one dependent access that misses the caches and the TLB, which is what
/// a hash lookup pays twice (bucket, then element) when flows are many.
fn memory_latency_ns(bytes: usize) -> anyhow::Result<f64> {
    const LINE: usize = 64;
    let lines = (bytes / LINE).max(2);
    let len = lines * LINE;
    // SAFETY: anonymous private mapping, checked below; unmapped at the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure!(p != libc::MAP_FAILED, "mmap {len} bytes failed");
    // SAFETY: the mapping above.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    let base = p.cast::<u8>();
    // A random cyclic order of the lines (xorshift-shuffled), each line pointing at the next.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for w in 0..lines {
        let (from, to) = (order[w], order[(w + 1) % lines]);
        // SAFETY: both offsets are line starts inside the mapping; 8-aligned.
        unsafe {
            *base.add(from * LINE).cast::<usize>() = base.add(to * LINE) as usize;
        }
    }
    let steps = 2_000_000usize;
    let mut cur = base.wrapping_add(order[0] * LINE) as usize;
    // Warm-up: a full lap (page tables, caches as warm as they get).
    for _ in 0..lines {
        // SAFETY: `cur` always holds a line start written above.
        cur = unsafe { *(cur as *const usize) };
    }
    let t = Instant::now();
    for _ in 0..steps {
        // SAFETY: as above.
        cur = unsafe { std::ptr::read_volatile(cur as *const usize) };
    }
    let ns = t.elapsed().as_nanos() as f64 / steps as f64;
    std::hint::black_box(cur);
    // SAFETY: the mapping above, no references into it remain.
    unsafe { libc::munmap(p, len) };
    Ok(ns)
}

/// A kernel-cost window: ns per program run over all the programs, and per program (ns per
/// run, runs) in the order of the ids given.
#[derive(Debug, Clone)]
struct HookWindow {
    ns: f64,
    per_prog: Vec<(f64, u64)>,
}

/// Average ns per program run over a generator window.
fn hook_ns(
    bed: &Bed,
    ids: &[u32],
    flows: Flows,
    rate: u64,
    secs: f64,
) -> anyhow::Result<HookWindow> {
    ensure!(!ids.is_empty(), "no programs attached to measure");
    // Warm-up outside the window: one pass over every flow, so the window measures packets of
    // flows already in the map (the agent's flush may still flip the epoch once inside the
    // window, which re-inserts the flows: that cost is part of the figure).
    if let Flows::Rotate(n) = flows {
        generate(bed, flows, rate, (n as f64 / rate as f64).max(0.2))?;
    }
    let before = prog_stats(ids)?;
    generate(bed, flows, rate, secs)?;
    let after = prog_stats(ids)?;
    let per: Vec<(u64, u64)> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
        .collect();
    let (t, c) = per
        .iter()
        .fold((0u64, 0u64), |acc, p| (acc.0 + p.0, acc.1 + p.1));
    ensure!(
        c > 0,
        "bpf stats did not advance (kernel.bpf_stats_enabled?)"
    );
    Ok(HookWindow {
        ns: t as f64 / c as f64,
        per_prog: per
            .iter()
            .map(|&(t, c)| (if c > 0 { t as f64 / c as f64 } else { f64::NAN }, c))
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// The empty tc program (baseline of the kernel cost)

/// The object's empty tc program (`podflow_empty`: `r0 = -1 (TC_ACT_UNSPEC); exit`), attached
/// with tcx links to both directions of both pod veths; detached when dropped.
struct EmptyProg {
    _prog: podflow::capture::EmptyProgram,
}

impl EmptyProg {
    fn attach(bed: &Bed) -> anyhow::Result<EmptyProg> {
        use podflow::capture::{EmptyProgram, TcAttachType};
        let prog = EmptyProgram::load().context("loading the empty tc program")?;
        // Attached from a thread inside the node namespace (interface names are per
        // namespace); the links belong to the program, which outlives the thread.
        let prog = bed
            .node
            .ns
            .run(
                move || -> Result<EmptyProgram, podflow::capture::CaptureError> {
                    let mut prog = prog;
                    for dev in [SRC_VETH, DST_VETH] {
                        for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                            prog.attach(dev, dir)?;
                        }
                    }
                    Ok(prog)
                },
            )
            .map_err(|e| anyhow!("{e}"))?
            .context("attaching the empty tc program with tcx")?;
        Ok(EmptyProg { _prog: prog })
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone)]
struct Row {
    key: &'static str,
    figure: String,
    value: Option<f64>,
    unit: &'static str,
    target: String,
    /// true: value ≥ limit passes; false: value ≤ limit passes.
    at_least: bool,
    limit: f64,
    digits: usize,
    detail: String,
}

impl Row {
    fn pass(&self) -> Option<bool> {
        let v = self.value?;
        Some(if self.at_least {
            v >= self.limit
        } else {
            v <= self.limit
        })
    }
}

fn table(rows: &[Row], smoke: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| figure | measured | target | result | details |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for r in rows {
        let value = match r.value {
            Some(v) => format!("{:.*} {}", r.digits, v, r.unit).trim().to_string(),
            None => "not measured".to_string(),
        };
        let result = match (r.pass(), smoke) {
            (None, _) => "ERROR",
            (Some(p), true) => {
                if p {
                    "pass (smoke, not enforced)"
                } else {
                    "miss (smoke, not enforced)"
                }
            }
            (Some(true), false) => "pass",
            (Some(false), false) => "MISS",
        };
        let _ = writeln!(
            s,
            "| `{}` {} | {} | {} | {} | {} |",
            r.key, r.figure, value, r.target, result, r.detail
        );
    }
    s
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{} GiB", k / 1024 / 1024))
        .unwrap_or_default();
    let iperf = Command::new("iperf3")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    format!("{cores} cores, {model}, kernel {kernel}, {mem} RAM, {iperf}")
}

// ---------------------------------------------------------------------------------------------
// The benchmark

/// What the agent does with no traffic: its threads' CPU time and wake-ups over an idle window
/// (after it settled, default 5 s flush).
#[derive(Debug, Clone, Default)]
struct Idle {
    secs: f64,
    cpu_ns: u64,
    wakeups: u64,
    /// Per thread name: (threads, CPU ns, wake-ups), the busiest first.
    by_name: Vec<(String, usize, u64, u64)>,
}

/// The throughput blocks: the agent against the baseline (A/B), the baseline against itself
/// (A/A, the noise floor of the same comparison), and the empty tc program as a reference.
#[derive(Debug, Default)]
struct Throughput {
    tcp_base: Vec<f64>,
    udp_base: Vec<f64>,
    tcp_agent: Vec<f64>,
    udp_agent: Vec<f64>,
    tcp_ratio: Vec<f64>,
    udp_ratio: Vec<f64>,
    /// Second baseline block / baseline block of the same pair.
    tcp_aa: Vec<f64>,
    udp_aa: Vec<f64>,
    /// TCP and UDP with the empty tc program attached to the same hooks (no agent): what any tc
    /// program costs there (the tcx hook itself), next to what podflow costs; and its ratio to
    /// the adjacent (second) baseline block.
    tcp_empty: Vec<f64>,
    udp_empty: Vec<f64>,
    tcp_empty_ratio: Vec<f64>,
    udp_empty_ratio: Vec<f64>,
    /// Per pair, the highest CPU pressure (PSI "some", share of the wall time) of its blocks:
    /// how much the machine's other work competed with the runs.
    pressure: Vec<f64>,
    /// Seconds from the agent's attachment until it settled, and how many times it did not
    /// within the bound.
    settle_secs: Vec<f64>,
    unsettled: usize,
    idle: Idle,
}

/// The kernel-cost windows: podflow's programs against the empty program.
#[derive(Debug, Default)]
struct Hooks {
    empty_est: Vec<f64>,
    agent_est: Vec<f64>,
    diff_est: Vec<f64>,
    empty_many: Vec<f64>,
    agent_many: Vec<f64>,
    diff_many: Vec<f64>,
    /// Per podflow program name: (ns per run, runs) of each pair's window.
    prog_est: std::collections::BTreeMap<String, Vec<(f64, u64)>>,
    prog_many: std::collections::BTreeMap<String, Vec<(f64, u64)>>,
    /// lost_map_full summed over the agent's kernel cost windows, and the map capacity used.
    lost: u64,
    entries: u32,
    /// ns per dependent random access into a buffer the size of the flow maps (4 KiB pages).
    mem_latency_ns: f64,
    mem_latency_bytes: usize,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("podflow-bench: {}", msg.as_ref());
}

/// The kernel's CPU pressure stall total (`/proc/pressure/cpu`, "some": µs during which at
/// least one runnable task waited for a CPU), if the kernel has PSI.
fn cpu_pressure_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    s.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// One throughput block: `reps` × (TCP run, UDP run); the means, and the CPU pressure over the
/// block (share of its wall time some task waited for a CPU; NaN without PSI).
fn throughput_block(o: &Opts, bed: &Bed) -> anyhow::Result<(f64, f64, f64)> {
    let (p0, t0) = (cpu_pressure_us(), Instant::now());
    let (mut tcp, mut udp) = (0.0, 0.0);
    for _ in 0..o.reps {
        tcp += tcp_gbps(bed, o.iperf_secs)?;
        udp += udp_pps(bed, o.iperf_secs)?;
    }
    let pressure = match (p0, cpu_pressure_us()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / t0.elapsed().as_micros().max(1) as f64,
        _ => f64::NAN,
    };
    Ok((tcp / o.reps as f64, udp / o.reps as f64, pressure))
}

/// Starts the agent (default 5 s flush) and waits until it settled (see [`Agent::settle`]).
/// Returns the agent and the seconds that took, `None` when it did not settle within the bound
/// (measured anyway, and reported).
fn start_settled(o: &Opts, bed: &Bed, entries: u32) -> anyhow::Result<(Agent, Option<f64>)> {
    let agent = Agent::start(bed, &o.podflow, entries, "5s", &[])?;
    let (took, settled) = agent.settle()?;
    if !settled {
        log(format!(
            "the agent was still using CPU {:.1} s after attaching; measuring anyway",
            took.as_secs_f64()
        ));
    }
    Ok((agent, settled.then_some(took.as_secs_f64())))
}

impl Throughput {
    fn settled(&mut self, s: Option<f64>) {
        match s {
            Some(secs) => self.settle_secs.push(secs),
            None => self.unsettled += 1,
        }
    }
}

/// The agent's CPU time and wake-ups over `secs` with no traffic.
fn idle_window(agent: &Agent, secs: f64) -> anyhow::Result<Idle> {
    let before = agent.threads()?;
    sleep(Duration::from_secs_f64(secs))?;
    let after = agent.threads()?;
    let mut by_name: Vec<(String, usize, u64, u64)> = Vec::new();
    for a in &after {
        let (ns0, sl0) = before
            .iter()
            .find(|b| b.tid == a.tid)
            .map_or((0, 0), |b| (b.ns, b.slices));
        let (ns, sl) = (a.ns.saturating_sub(ns0), a.slices.saturating_sub(sl0));
        match by_name.iter_mut().find(|e| e.0 == a.name) {
            Some(e) => {
                e.1 += 1;
                e.2 += ns;
                e.3 += sl;
            }
            None => by_name.push((a.name.clone(), 1, ns, sl)),
        }
    }
    by_name.sort_by_key(|e| std::cmp::Reverse(e.2));
    Ok(Idle {
        secs,
        cpu_ns: by_name.iter().map(|e| e.2).sum(),
        wakeups: by_name.iter().map(|e| e.3).sum(),
        by_name,
    })
}

/// The map capacity of the agent in the throughput and kernel-cost runs: room for two epochs of
/// the many-flows window (one entry each, at the source veth's ingress), the map at most half
/// full.
fn hook_entries(o: &Opts) -> u32 {
    o.hook_map_entries
        .unwrap_or((o.many_flows * 4).next_power_of_two().max(65_536) as u32)
}

/// The blocks of a throughput pair, in order. Even pairs: empty, second baseline, baseline,
/// agent; odd pairs the reverse. The compared blocks are adjacent (agent–baseline,
/// baseline–second baseline, second baseline–empty) and each comparison alternates its order
/// from pair to pair, so a drift of the machine favours neither side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Empty,
    Base2,
    Base,
    Agent,
}

fn throughput(o: &Opts, bed: &Bed, stats: &BpfStatsGuard) -> anyhow::Result<Throughput> {
    let mut t = Throughput::default();
    let entries = hook_entries(o);
    stats.set(false)?;
    // Warm-up outside the pairs: one run of each kind (iperf3 server, TCP metrics cache, page
    // cache), then one agent cycle to time its start and stop and to watch it idle.
    log("throughput warm-up (no agent)");
    throughput_block(
        &Opts {
            reps: 1,
            ..o.clone()
        },
        bed,
    )?;
    log("agent start-up, settle and idle window");
    let t0 = Instant::now();
    let (agent, settled) = start_settled(o, bed, entries)?;
    t.settled(settled);
    let mut gap_start = t0.elapsed();
    t.idle = idle_window(&agent, o.idle_secs)?;
    log(format!(
        "agent idle for {:.0} s: {:.2} ms CPU, {} wake-ups; by thread: {}",
        t.idle.secs,
        t.idle.cpu_ns as f64 / 1e6,
        t.idle.wakeups,
        t.idle
            .by_name
            .iter()
            .map(|(n, k, ns, sl)| format!("{n} ×{k} {:.2} ms {sl} wake-ups", *ns as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let t1 = Instant::now();
    agent.stop()?;
    let mut gap_stop = t1.elapsed();
    for pair in 0..o.pairs {
        let mut order = [Arm::Empty, Arm::Base2, Arm::Base, Arm::Agent];
        if pair % 2 == 1 {
            order.reverse();
        }
        let (mut base, mut base2, mut agent, mut empty) = (None, None, None, None);
        for arm in order {
            log(format!("throughput pair {}/{}: {arm:?}", pair + 1, o.pairs));
            // The A/A pair (Base2, Base) gets the same gap between its blocks as the A/B pair
            // (Base, Agent): as long as the agent last took to start and settle (even pairs:
            // Base, start, Agent) or to stop (odd pairs: Agent, stop, Base).
            match (arm, pair % 2) {
                (Arm::Base, 0) => sleep(gap_start)?,
                (Arm::Base2, 1) => sleep(gap_stop)?,
                _ => {}
            }
            match arm {
                Arm::Agent => {
                    let t0 = Instant::now();
                    let (a, settled) = start_settled(o, bed, entries)?;
                    t.settled(settled);
                    gap_start = t0.elapsed();
                    agent = Some(throughput_block(o, bed)?);
                    let t1 = Instant::now();
                    a.stop()?;
                    gap_stop = t1.elapsed();
                }
                Arm::Base => base = Some(throughput_block(o, bed)?),
                Arm::Base2 => base2 = Some(throughput_block(o, bed)?),
                Arm::Empty => {
                    let e = EmptyProg::attach(bed)?;
                    empty = Some(throughput_block(o, bed)?);
                    drop(e);
                }
            }
        }
        let (Some(b), Some(b2), Some(a), Some(e)) = (base, base2, agent, empty) else {
            bail!("throughput pair {pair} incomplete");
        };
        let pressure = [b.2, a.2, b2.2, e.2].into_iter().fold(f64::NAN, f64::max);
        t.pressure.push(pressure * 100.0);
        log(format!(
            "pair {}: tcp {:.2} {:.2} {:.2} {:.2} Gbit/s, udp {:.0} {:.0} {:.0} {:.0} kpps (no agent, agent, no agent again, empty program): ratio tcp {:.3} udp {:.3}, A/A tcp {:.3} udp {:.3}; CPU pressure {:.0} {:.0} {:.0} {:.0} %",
            pair + 1,
            b.0,
            a.0,
            b2.0,
            e.0,
            b.1 / 1e3,
            a.1 / 1e3,
            b2.1 / 1e3,
            e.1 / 1e3,
            a.0 / b.0,
            a.1 / b.1,
            b2.0 / b.0,
            b2.1 / b.1,
            b.2 * 100.0,
            a.2 * 100.0,
            b2.2 * 100.0,
            e.2 * 100.0
        ));
        t.tcp_base.push(b.0);
        t.udp_base.push(b.1);
        t.tcp_agent.push(a.0);
        t.udp_agent.push(a.1);
        t.tcp_ratio.push(a.0 / b.0);
        t.udp_ratio.push(a.1 / b.1);
        t.tcp_aa.push(b2.0 / b.0);
        t.udp_aa.push(b2.1 / b.1);
        t.tcp_empty.push(e.0);
        t.udp_empty.push(e.1);
        t.tcp_empty_ratio.push(e.0 / b2.0);
        t.udp_empty_ratio.push(e.1 / b2.1);
    }
    Ok(t)
}

/// Kernel cost per hook: agent windows against empty-program windows, interleaved (the order
/// alternates from pair to pair), `kernel.bpf_stats_enabled` on only here.
fn hooks(o: &Opts, bed: &Bed, stats: &BpfStatsGuard) -> anyhow::Result<Hooks> {
    let mut h = Hooks {
        entries: hook_entries(o),
        ..Hooks::default()
    };
    let est = Flows::Rotate(16);
    let many = Flows::Rotate(o.many_flows);
    // The memory floor of a lookup in maps that size: FLOWS_V4's buckets (16 B) and elements
    // (80 B) for `entries`, as the kernel lays them out (vmalloc, 4 KiB pages).
    h.mem_latency_bytes = h.entries as usize * (16 + 80);
    h.mem_latency_ns = memory_latency_ns(h.mem_latency_bytes)?;
    log(format!(
        "memory latency: {:.1} ns per dependent random access into {} MiB (4 KiB pages)",
        h.mem_latency_ns,
        h.mem_latency_bytes >> 20
    ));
    for pair in 0..o.hook_pairs {
        let agent_first = pair % 2 == 1;
        let mut base = None;
        let mut with = None;
        for phase in 0..2 {
            let with_agent = (phase == 0) == agent_first;
            if with_agent {
                log(format!("hook pair {}/{}: agent", pair + 1, o.hook_pairs));
                // The default flush interval (5 s).
                let (agent, _) = start_settled(o, bed, h.entries)?;
                let ids = agent.prog_ids()?;
                let names = prog_names(&ids)?;
                stats.set(true)?;
                let e = hook_ns(bed, &ids, est, o.hook_rate, o.hook_secs);
                let m = hook_ns(bed, &ids, many, o.hook_rate, o.hook_secs);
                stats.set(false)?;
                let (e, m) = (e?, m?);
                for (i, name) in names.iter().enumerate() {
                    if let Some(&p) = e.per_prog.get(i) {
                        h.prog_est.entry(name.clone()).or_default().push(p);
                    }
                    if let Some(&p) = m.per_prog.get(i) {
                        h.prog_many.entry(name.clone()).or_default().push(p);
                    }
                }
                // Reported, not fatal: a failed insert is a cheaper path, so the figure says so.
                h.lost += agent.counter("lost_map_full")?;
                agent.stop()?;
                with = Some((e.ns, m.ns));
            } else {
                log(format!(
                    "hook pair {}/{}: empty program",
                    pair + 1,
                    o.hook_pairs
                ));
                let empty = EmptyProg::attach(bed)?;
                let ids = attached_prog_ids(bed.node.ns.name())?;
                ensure!(
                    ids.len() == 1,
                    "expected the empty program alone, got {ids:?}"
                );
                stats.set(true)?;
                let e = hook_ns(bed, &ids, est, o.hook_rate, o.hook_secs);
                let m = hook_ns(bed, &ids, many, o.hook_rate, o.hook_secs);
                stats.set(false)?;
                drop(empty);
                base = Some((e?.ns, m?.ns));
            }
        }
        let (Some(b), Some(w)) = (base, with) else {
            bail!("hook pair {pair} incomplete");
        };
        log(format!(
            "hook pair {}: est {:.1}/{:.1} ns, many {:.1}/{:.1} ns (empty/agent)",
            pair + 1,
            b.0,
            w.0,
            b.1,
            w.1
        ));
        h.empty_est.push(b.0);
        h.agent_est.push(w.0);
        h.diff_est.push(w.0 - b.0);
        h.empty_many.push(b.1);
        h.agent_many.push(w.1);
        h.diff_many.push(w.1 - b.1);
    }
    Ok(h)
}

/// CPU per exported flow at a churn of `rate` new flows per second (fresh agent). Returns
/// (ns per flow, records, achieved new flows/s).
fn churn(o: &Opts, bed: &Bed, rate: u64) -> anyhow::Result<(f64, f64, f64)> {
    let entries = ((rate as f64 * 2.0 * 1.5) as u64)
        .next_power_of_two()
        .max(65_536) as u32;
    let agent = Agent::start(bed, &o.podflow, entries, "1s", &[])?;
    // Warm up (first flush, lazy allocations) outside the window.
    generate(bed, Flows::Unique { start: 0 }, rate, 1.0)?;
    sleep(Duration::from_millis(2_500))?;
    let (cpu0, rec0) = (agent.cpu_ns()?, agent.records_exported()?);
    // PODFLOW_BENCH_PERF=DIR: profile the agent during each churn window (perf record -g).
    let perf = match std::env::var_os("PODFLOW_BENCH_PERF") {
        Some(dir) => Some(ChildGuard(Some(
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-F",
                    "499",
                    "-g",
                    "-p",
                    &agent.pid.to_string(),
                    "-o",
                ])
                .arg(PathBuf::from(dir).join(format!("churn-{rate}.data")))
                .args(["--", "sleep", &format!("{}", o.churn_secs + 2.5)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("perf record")?,
        ))),
        None => None,
    };
    let g = generate(bed, Flows::Unique { start: 1_000_000 }, rate, o.churn_secs)?;
    // Two flushes after the last packet: every flow of the window has become a record.
    sleep(Duration::from_millis(2_500))?;
    let (cpu1, rec1) = (agent.cpu_ns()?, agent.records_exported()?);
    if let Some(mut p) = perf
        && let Some(mut c) = p.0.take()
    {
        // perf stops by itself (sleep); bounded wait, then the guard kills it.
        let _ = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            c.try_wait().ok().flatten()
        });
        p.0 = Some(c);
    }
    let lost = agent.counter("lost_map_full")?;
    agent.stop()?;
    let records = rec1 - rec0;
    ensure!(
        records > 0.0,
        "no flow records exported in the churn window"
    );
    ensure!(lost == 0, "lost_map_full = {lost} during churn at {rate}/s");
    Ok((
        (cpu1 - cpu0) as f64 / records,
        records,
        g.sent as f64 / g.secs,
    ))
}

/// (VmRSS KiB, VmHWM KiB, flows_active, lost_map_full, VmRSS KiB right after attaching) with
/// `n` active flows.
fn rss(o: &Opts, bed: &Bed, n: u64, extra: &[&str]) -> anyhow::Result<(u64, u64, u64, u64, u64)> {
    let entries = (n * 2 + n / 2).next_power_of_two() as u32;
    let agent = Agent::start(bed, &o.podflow, entries, "1s", extra)?;
    let idle_kib = agent.status_kib("VmRSS")?;
    // Every flow at least twice, and at least 3 flush intervals.
    let rate = n.clamp(10_000, 100_000);
    let secs = (2.0 * n as f64 / rate as f64).max(3.0);
    generate(bed, Flows::Rotate(n), rate, secs)?;
    sleep(Duration::from_millis(1_500))?;
    let st = agent.status()?;
    let active = st["flows_active"].as_u64().unwrap_or(0);
    let r = (
        agent.status_kib("VmRSS")?,
        agent.status_kib("VmHWM")?,
        active,
        agent.counter("lost_map_full")?,
        idle_kib,
    );
    agent.stop()?;
    Ok(r)
}

/// Flow map memory per flow: `bytes_memlock` ÷ `max_entries` of FLOWS_V4 and of FLOWS_V6, and
/// lost_map_full with the map at 50 % occupancy.
/// (bytes_memlock, max_entries) of each flow map, and bytes_memlock of its spill map.
struct MapMemory {
    v4: (u64, u64),
    v6: (u64, u64),
    spill_v4: u64,
    spill_v6: u64,
}

impl MapMemory {
    /// Flow map and spill map bytes per flow-map entry.
    fn per_flow(m: (u64, u64), spill: u64) -> f64 {
        (m.0 + spill) as f64 / m.1.max(1) as f64
    }
}

fn map_memory_and_loss(o: &Opts, bed: &Bed) -> anyhow::Result<(MapMemory, u64, u64)> {
    let entries = o.loss_map_entries;
    let agent = Agent::start(bed, &o.podflow, entries, "1s", &[])?;
    let ids = agent.prog_ids()?;
    let mut map_ids = Vec::new();
    for id in &ids {
        let v = bpftool_json(None, &["prog", "show", "id", &id.to_string()])?;
        if let Some(a) = v["map_ids"].as_array() {
            map_ids.extend(a.iter().filter_map(Value::as_u64));
        }
    }
    map_ids.sort_unstable();
    map_ids.dedup();
    let mut mem = MapMemory {
        v4: (0, 0),
        v6: (0, 0),
        spill_v4: 0,
        spill_v6: 0,
    };
    for m in map_ids {
        let v = bpftool_json(None, &["map", "show", "id", &m.to_string()])?;
        let memlock = v["bytes_memlock"].as_u64().unwrap_or(0);
        let slot = match v["name"].as_str().unwrap_or_default() {
            "SPILL_V4" => {
                mem.spill_v4 = memlock;
                continue;
            }
            "SPILL_V6" => {
                mem.spill_v6 = memlock;
                continue;
            }
            "FLOWS_V4" => &mut mem.v4,
            "FLOWS_V6" => &mut mem.v6,
            _ => continue,
        };
        *slot = (
            v["bytes_memlock"].as_u64().unwrap_or(0),
            v["max_entries"].as_u64().unwrap_or(0),
        );
    }
    ensure!(
        mem.v4.1 > 0 && mem.v6.1 > 0 && mem.spill_v4 > 0 && mem.spill_v6 > 0,
        "flow maps FLOWS_V4/FLOWS_V6 and spill maps SPILL_V4/SPILL_V6 not all found through bpftool"
    );
    // 50 % occupancy: entries / 4 flows, each with two entries (two veths), every flush interval.
    // (one entry per flow: counted once, at the source pod's veth; the destination veth skips it)
    let flows = u64::from(entries) / 2;
    let rate = (flows * 2).max(1_000);
    let before = agent.counter("lost_map_full")?;
    let rec0 = agent.records_exported()?;
    generate(bed, Flows::Rotate(flows), rate, 3.0)?;
    sleep(Duration::from_millis(2_000))?;
    let lost = agent.counter("lost_map_full")? - before;
    let records = agent.records_exported()? - rec0;
    agent.stop()?;
    Ok((mem, lost, records as u64))
}

fn run(o: &Opts) -> anyhow::Result<bool> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "podflow-bench must run as root"
    );
    ensure!(
        o.podflow.exists(),
        "{} not found (build it: cargo build --release -p podflow --bins, or pass --podflow)",
        o.podflow.display()
    );
    let started = Instant::now();
    let stats = BpfStatsGuard::enable()?;
    let bed = build_bed()?;
    log(format!(
        "node {} with pods src {} and dst {}",
        bed.node.ns.name(),
        bed.src_ip,
        bed.dst_ip
    ));

    // Statistics off except in the kernel-cost windows (production runs without them: they add
    // two clock reads to every program run).
    stats.set(false)?;
    let tput = if o.wants("throughput") {
        Some(throughput(o, &bed, &stats)?)
    } else {
        None
    };
    let hook = if o.wants("hook") {
        Some(hooks(o, &bed, &stats)?)
    } else {
        None
    };
    let mut churn_results = Vec::new();
    for &rate in o.churn_rates.iter().filter(|_| o.wants("churn")) {
        let mut per = Vec::new();
        let mut achieved = Vec::new();
        let mut recs = Vec::new();
        for i in 0..o.churn_runs {
            log(format!("churn {rate}/s, run {}/{}", i + 1, o.churn_runs));
            let (ns, r, a) = churn(o, &bed, rate)?;
            per.push(ns / 1000.0);
            recs.push(r);
            achieved.push(a);
        }
        churn_results.push((rate, per, recs, achieved));
    }
    let rss_results = if o.wants("rss") {
        log(format!("resident memory with {} flows", o.rss_flows));
        let full = rss(o, &bed, o.rss_flows, &[])?;
        log("resident memory with --buffer 1024 (where the memory goes)");
        let (small, ..) = rss(o, &bed, o.rss_flows, &["--buffer", "1024"])?;
        Some((full, small))
    } else {
        None
    };
    let map_results = if o.wants("map") {
        log("map memory and loss at 50 % occupancy");
        Some(map_memory_and_loss(o, &bed)?)
    } else {
        None
    };

    let s = |v: &[f64]| summary(v).ok_or_else(|| anyhow!("no samples"));
    let mut rows = Vec::new();
    if let Some(t) = &tput {
        throughput_rows(o, t, &mut rows)?;
    }
    if let Some(h) = &hook {
        hook_rows(o, h, &mut rows)?;
    }
    for (k, (rate, per, recs, achieved)) in churn_results.iter().enumerate() {
        let p = s(per)?;
        let r = s(recs)?;
        let a = s(achieved)?;
        rows.push(Row {
            key: if k == 0 {
                "cpu_per_flow_low_churn"
            } else {
                "cpu_per_flow_high_churn"
            },
            figure: format!(
                "agent CPU (utime+stime) per exported flow, churn {} new flows/s, {} s window",
                rate, o.churn_secs
            ),
            value: Some(p.median),
            unit: "µs",
            target: "≤ 2 µs".into(),
            at_least: false,
            limit: 2.0,
            digits: 2,
            detail: format!(
                "{} µs; records per window {}; achieved {} flows/s",
                fmt_range(&p, 2),
                fmt_range(&r, 0),
                fmt_range(&a, 0)
            ),
        });
    }
    if let Some(((rss_kib, hwm_kib, active, rss_lost, idle_kib), rss_small_kib)) = rss_results {
        rows.push(Row {
            key: "agent_rss",
            figure: format!("agent VmRSS with {} active flows", o.rss_flows),
            value: Some(rss_kib as f64 / 1024.0),
            unit: "MiB",
            target: "≤ 64 MiB".into(),
            at_least: false,
            limit: 64.0,
            digits: 1,
            detail: format!(
                "flows_active {active}; VmHWM {:.1} MiB; VmRSS right after attaching (no flows) {:.1} MiB; same run with --buffer 1024 (the replay buffer for tail --last, default 65536 events and at most 32 MiB encoded): {:.1} MiB; lost_map_full {rss_lost}",
                hwm_kib as f64 / 1024.0,
                idle_kib as f64 / 1024.0,
                rss_small_kib as f64 / 1024.0
            ),
        });
    }
    if let Some((mem, lost50, rec50)) = map_results {
        let (v4, v6) = (
            MapMemory::per_flow(mem.v4, mem.spill_v4),
            MapMemory::per_flow(mem.v6, mem.spill_v6),
        );
        rows.push(Row {
            key: "map_bytes_per_flow",
            figure: "kernel flow-map memory per flow ((bytes_memlock of FLOWS_Vn + SPILL_Vn) ÷ max_entries of FLOWS_Vn, n = 4 and 6; the larger)".into(),
            value: Some(v4.max(v6)),
            unit: "B",
            target: "≤ 128 B".into(),
            at_least: false,
            limit: 128.0,
            digits: 2,
            detail: format!(
                "IPv4 {v4:.2} B ({} B for {} entries + {} B spill map), IPv6 {v6:.2} B ({} B for {} entries + {} B spill map); one entry per flow and observation point, independent of the number of CPUs ({} here)",
                mem.v4.0,
                mem.v4.1,
                mem.spill_v4,
                mem.v6.0,
                mem.v6.1,
                mem.spill_v6,
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            ),
        });
        rows.push(Row {
            key: "lost_at_half_occupancy",
            figure: format!(
                "lost_map_full with the flow map at 50 % occupancy ({} flows, one entry each, in {} entries)",
                o.loss_map_entries / 2,
                o.loss_map_entries
            ),
            value: Some(lost50 as f64),
            unit: "",
            target: "0".into(),
            at_least: false,
            limit: 0.0,
            digits: 0,
            detail: format!("records exported in the window: {rec50}"),
        });
    }
    let t = table(&rows, o.smoke);
    let elapsed = started.elapsed().as_secs_f64();
    println!("{t}");
    println!("machine: {}", machine());
    println!("command: {}", o.command);
    println!("elapsed: {elapsed:.0} s");
    if let Some(doc) = o.doc.as_ref().filter(|_| o.only.is_empty()) {
        write_doc(doc, o, &t, elapsed)?;
        log(format!("wrote {}", doc.display()));
    }
    Ok(rows.iter().all(|r| r.pass() == Some(true)))
}

fn kilo(v: &Summary) -> Summary {
    Summary {
        median: v.median / 1e3,
        min: v.min / 1e3,
        max: v.max / 1e3,
    }
}

/// "name 95.1 ns × 200000 runs, ..." (medians over the pairs) for each program.
fn per_prog_detail(m: &std::collections::BTreeMap<String, Vec<(f64, u64)>>) -> String {
    m.iter()
        .filter_map(|(name, v)| {
            let ns: Vec<f64> = v.iter().map(|p| p.0).collect();
            let runs: Vec<f64> = v.iter().map(|p| p.1 as f64).collect();
            Some(format!(
                "{name} {} ns per run × {:.0} runs",
                fmt_range(&summary(&ns)?, 1),
                summary(&runs)?.median
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The throughput rows: TCP and UDP ratios, with the A/A ratio and the empty program.
fn throughput_rows(o: &Opts, t: &Throughput, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let s = |v: &[f64]| summary(v).ok_or_else(|| anyhow!("no samples"));
    let block = if o.reps > 1 {
        format!("mean of {} runs of {} s per block", o.reps, o.iperf_secs)
    } else {
        format!("one run of {} s per block", o.iperf_secs)
    };
    let settle = summary(&t.settle_secs).map_or_else(
        || "agent never quiet within 10 s of attaching".to_string(),
        |v| format!("agent quiet {} s after attaching", fmt_range(&v, 1)),
    );
    let idle = &t.idle;
    let (tb, ta, tr) = (s(&t.tcp_base)?, s(&t.tcp_agent)?, s(&t.tcp_ratio)?);
    rows.push(Row {
        key: "tcp_throughput_ratio",
        figure: format!(
            "single-stream TCP pod→pod, agent / no agent (iperf3 -J, {block})"
        ),
        value: Some(tr.median),
        unit: "",
        target: "≥ 0.98".into(),
        at_least: true,
        limit: 0.98,
        digits: 3,
        detail: format!(
            "ratio {}; A/A (no agent / no agent, same structure) {}; no agent {} Gbit/s; agent {} Gbit/s; empty tc program on the same hooks instead of the agent: {} Gbit/s, {} of the adjacent no-agent block; {}{}; agent idle (no traffic, 5 s flush): {:.1} ms CPU and {:.1} wake-ups/s over {:.0} s; CPU pressure (PSI some, the highest block of each pair) {} %",
            fmt_range(&tr, 3),
            fmt_range(&s(&t.tcp_aa)?, 3),
            fmt_range(&tb, 2),
            fmt_range(&ta, 2),
            fmt_range(&s(&t.tcp_empty)?, 2),
            fmt_range(&s(&t.tcp_empty_ratio)?, 3),
            settle,
            if t.unsettled > 0 {
                format!(" ({} times not within 10 s)", t.unsettled)
            } else {
                String::new()
            },
            idle.cpu_ns as f64 / 1e6,
            idle.wakeups as f64 / idle.secs.max(1e-9),
            idle.secs,
            summary(&t.pressure).map_or_else(|| "not available".to_string(), |v| fmt_range(&v, 0))
        ),
    });
    let (ub, ua, ur) = (s(&t.udp_base)?, s(&t.udp_agent)?, s(&t.udp_ratio)?);
    rows.push(Row {
        key: "udp64_pps_ratio",
        figure: format!(
            "UDP 64-byte packet rate, receiver side, agent / no agent (iperf3 -u -l 64 -b 0, {block})"
        ),
        value: Some(ur.median),
        unit: "",
        target: "≥ 0.92".into(),
        at_least: true,
        limit: 0.92,
        digits: 3,
        detail: format!(
            "ratio {}; A/A (no agent / no agent, same structure) {}; no agent {} kpps; agent {} kpps; empty tc program on the same hooks instead of the agent: {} kpps, {} of the adjacent no-agent block",
            fmt_range(&ur, 3),
            fmt_range(&s(&t.udp_aa)?, 3),
            fmt_range(&kilo(&ub), 0),
            fmt_range(&kilo(&ua), 0),
            fmt_range(&kilo(&s(&t.udp_empty)?), 0),
            fmt_range(&s(&t.udp_empty_ratio)?, 3),
        ),
    });
    Ok(())
}

/// The kernel-cost rows: ns per hook with established flows and with many flows.
fn hook_rows(o: &Opts, h: &Hooks, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let s = |v: &[f64]| summary(v).ok_or_else(|| anyhow!("no samples"));
    let (de, ae, ee) = (s(&h.diff_est)?, s(&h.agent_est)?, s(&h.empty_est)?);
    rows.push(Row {
        key: "hook_ns_established",
        figure: format!(
            "kernel ns per packet per hook minus empty tc program, 16 established flows ({} kpps)",
            o.hook_rate / 1000
        ),
        value: Some(de.median),
        unit: "ns",
        target: "≤ 40 ns".into(),
        at_least: false,
        limit: 40.0,
        digits: 1,
        detail: format!(
            "difference {}; podflow {} ns; empty {} ns (bpf stats run_time_ns/run_cnt); per podflow program: {}",
            fmt_range(&de, 1),
            fmt_range(&ae, 1),
            fmt_range(&ee, 1),
            per_prog_detail(&h.prog_est)
        ),
    });
    let (dm, am, em) = (s(&h.diff_many)?, s(&h.agent_many)?, s(&h.empty_many)?);
    rows.push(Row {
        key: "hook_ns_many_flows",
        figure: format!(
            "kernel ns per packet per hook minus empty tc program, {} distinct flows ({} kpps, 5 s flush)",
            o.many_flows,
            o.hook_rate / 1000
        ),
        value: Some(dm.median),
        unit: "ns",
        target: "≤ 200 ns".into(),
        at_least: false,
        limit: 200.0,
        digits: 1,
        detail: format!(
            "difference {}; podflow {} ns; empty {} ns; per podflow program: {}; flow maps of {} entries, lost_map_full {}; memory floor: one dependent random access into {} MiB with 4 KiB pages takes {:.0} ns here, a lookup makes two (bucket, element)",
            fmt_range(&dm, 1),
            fmt_range(&am, 1),
            fmt_range(&em, 1),
            per_prog_detail(&h.prog_many),
            h.entries,
            h.lost,
            h.mem_latency_bytes >> 20,
            h.mem_latency_ns
        ),
    });
    Ok(())
}

/// Replaces the generated section of `doc` (between the markers), or writes the whole file.
fn write_doc(doc: &Path, o: &Opts, table: &str, elapsed: f64) -> anyhow::Result<()> {
    const BEGIN: &str = "<!-- podflow-bench:begin (generated by `cargo xtask bench`) -->";
    const END: &str = "<!-- podflow-bench:end -->";
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let generated = format!(
        "{BEGIN}\n\n**Last run:** {date}, {elapsed:.0} s, {} interleaved throughput pairs ({}), {} kernel-cost pairs, {} churn runs.\n\n**Machine:** {}\n\n**Command:** `{}`\n\n{table}\n{END}",
        o.pairs,
        if o.reps > 1 {
            format!("{} × {} s per run kind and block", o.reps, o.iperf_secs)
        } else {
            format!("{} s runs", o.iperf_secs)
        },
        o.hook_pairs,
        o.churn_runs,
        machine(),
        o.command
    );
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{generated}{}", &old[..b], &old[e + END.len()..])
        }
        _ => format!("# podflow benchmarks\n\n{generated}\n"),
    };
    if let Some(dir) = doc.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(doc, new).with_context(|| format!("writing {}", doc.display()))
}

fn main() {
    install_signal_handlers();
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("podflow-bench: {e:#}");
            std::process::exit(2);
        }
    };
    let code = match run(&o) {
        Ok(true) => 0,
        Ok(false) if o.smoke => 0,
        Ok(false) => {
            eprintln!("podflow-bench: some targets were missed (see the table)");
            3
        }
        Err(e) => {
            eprintln!("podflow-bench: measurement failed: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
