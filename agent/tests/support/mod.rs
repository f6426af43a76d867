//! Shared helpers of the integration tests (each `tests/*.rs` includes it with `mod support;`):
//! the network namespaces themselves come from [`podflow::testbed`]; here are the test-only
//! parts on top of it.
//!
//! * [`privileged`]: the gate every privileged test calls first.
//! * [`Agent`]: a running `podflow agent` inside a node namespace, read back through
//!   `podflow tail -o json` and `podflow status -o json`; [`expect_totals`] and friends.
//! * [`node_with_pods`], [`CaptureThread`]: an in-process `Capture` pinned to a thread of a
//!   node namespace; [`attached_programs`] / [`podflow_programs`]: what the kernel has attached.
//! * [`flow_key`], [`mapped`] and [`pkt`]: flow keys and crafted packets.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![expect(
    clippy::expect_used,
    reason = "test support: a failed expectation is the test failing, with a message"
)]

use std::{
    cell::RefCell,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use podflow::{
    capture::{Capture, CaptureConfig},
    testbed::{Netns, Node, NsThread, unique_prefix, wait_for},
};
use podflow_ebpf::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, ObsPoint};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_podflow");

/// Returns false (and the test should return) only when not root and PODFLOW_SKIP_PRIVILEGED=1;
/// panics when not root otherwise, so a privileged test never passes silently.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("PODFLOW_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("skipping privileged test (PODFLOW_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!("privileged test: run as root (cargo xtask test), or set PODFLOW_SKIP_PRIVILEGED=1");
}

/// A `podflow agent` process running inside a node namespace. Killed (SIGKILL) on drop if still
/// running; its log is printed on drop when the test is panicking.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
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
        let child = cmd
            .args([
                "--log-format",
                "text",
                "agent",
                "--node-name",
                name,
                "--flush-interval",
                "1s",
            ])
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
            dir,
            sock,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
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
    node: &podflow::testbed::Netns,
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

/// A node namespace (`<tag>…-node`, unique) with `n` pods `pod0`… behind host veths
/// `<veth_prefix>0`… (keep the prefix ≤ 13 bytes), addresses 10.77.0.1… and fd00:77::1… in
/// creation order. Addresses and veth names may repeat across tests running in parallel: every
/// node namespace is its own isolated world.
pub fn node_with_pods(tag: &str, veth_prefix: &str, n: usize) -> Node {
    let mut node = Node::new(&unique_prefix(tag), 77).expect("node namespace");
    for i in 0..n {
        node.add_pod(&format!("pod{i}"), &format!("{veth_prefix}{i}"))
            .expect("pod");
    }
    node
}

thread_local! {
    /// The capture of the [`CaptureThread`] running on this thread.
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// A `Capture` loaded on, and owned by, a thread inside a namespace (its attachments, netlink
/// socket and interface lookups live there), driven step by step from the test. Dropping it
/// drops the capture on that thread, then ends the thread.
pub struct CaptureThread {
    thread: NsThread,
}

impl CaptureThread {
    pub fn load(ns: &Netns, cfg: CaptureConfig) -> CaptureThread {
        let thread = NsThread::new(ns).expect("namespace thread");
        thread
            .run(move || {
                let cap = Capture::load(cfg).expect("load");
                CAPTURE.with(|c| *c.borrow_mut() = Some(cap));
            })
            .unwrap_or_else(|e| panic!("{e}"));
        CaptureThread { thread }
    }

    /// Runs `f` on the capture, on its thread; a panic in `f` fails the test with its message.
    pub fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut Capture) -> R + Send + 'static) -> R {
        self.thread
            .run(move || {
                CAPTURE.with(|c| {
                    f(c.borrow_mut()
                        .as_mut()
                        .expect("capture loaded on this thread"))
                })
            })
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        let _ = self
            .thread
            .run(|| CAPTURE.with(|c| drop(c.borrow_mut().take())));
    }
}

/// One BPF program attached to a tc hook of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetProg {
    pub dev: String,
    pub ifindex: u32,
    /// "ingress" / "egress".
    pub direction: String,
    /// Program name (the kernel's, at most 15 characters) or cls_bpf filter name.
    pub name: String,
    /// "tcx" (tcx link / mprog) or "tc" (cls_bpf filter under clsact).
    pub kind: String,
    pub prog_id: u32,
}

/// Every BPF program attached to a tc hook in `ns`, from the kernel:
/// * tcx: `BPF_PROG_QUERY` (aya's `SchedClassifier::query_tcx`) for every device and direction,
///   on a thread inside `ns` (Debian's bpftool 7.1 predates tcx in `bpftool net`);
/// * cls_bpf: `bpftool -j net show` run inside `ns`.
pub fn attached_programs(ns: &Netns) -> Vec<NetProg> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let devs = ns.links().expect("ip link");
    let mut progs = ns
        .run(move || {
            let mut out = Vec::new();
            for (ifindex, dev) in devs {
                for (dir, t) in [
                    ("ingress", TcAttachType::Ingress),
                    ("egress", TcAttachType::Egress),
                ] {
                    // Fails on devices without tcx state: none attached.
                    let Ok((_rev, infos)) = SchedClassifier::query_tcx(&dev, t) else {
                        continue;
                    };
                    for info in infos {
                        out.push(NetProg {
                            dev: dev.clone(),
                            ifindex,
                            direction: dir.into(),
                            name: info.name_as_str().unwrap_or_default().to_string(),
                            kind: "tcx".into(),
                            prog_id: info.id(),
                        });
                    }
                }
            }
            out
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let out = ns
        .exec("bpftool", &["-j", "net", "show"])
        .expect("bpftool net show");
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool json: {e}: {out}"));
    // Output: [ { "xdp": [...], "tc": [ {devname, ifindex, kind, name, id}, ... ], ... } ]
    for section in v.as_array().into_iter().flatten() {
        for e in section
            .get("tc")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let s = |k: &str| {
                e.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let n = |k: &str| e.get(k).and_then(|x| x.as_u64()).unwrap_or_default() as u32;
            let kind = s("kind");
            // "clsact/ingress", "clsact/egress"; newer bpftool also lists "tcx/ingress" ones,
            // which the query above already has.
            let (k, dir) = kind.split_once('/').unwrap_or((kind.as_str(), ""));
            if k == "tcx" {
                continue;
            }
            let name = s("name");
            progs.push(NetProg {
                dev: s("devname"),
                ifindex: n("ifindex"),
                direction: dir.to_string(),
                // A filter loaded by tc from an object file is named "file.o:[section]".
                name: name.split(':').next().unwrap_or_default().to_string(),
                kind: "tc".into(),
                // bpftool calls it "id" (older versions "prog_id").
                prog_id: n("id").max(n("prog_id")),
            });
        }
    }
    progs
}

/// How many programs named `prefix*` are attached on `dev`/`direction`.
pub fn count_progs(progs: &[NetProg], dev: &str, direction: &str, prefix: &str) -> usize {
    progs
        .iter()
        .filter(|p| p.dev == dev && p.direction == direction && p.name.starts_with(prefix))
        .count()
}

/// Asserts that exactly one podflow program is attached per direction on each of the veths
/// `devs` (`podflow_veth_in` / `podflow_veth_eg`), attached as `kind` ("tcx" or "tc").
pub fn assert_one_each(node: &Netns, devs: &[&str], kind: &str) {
    let progs = attached_programs(node);
    for dev in devs {
        for (dir, name) in [
            ("ingress", "podflow_veth_in"),
            ("egress", "podflow_veth_eg"),
        ] {
            let n = count_progs(&progs, dev, dir, "podflow_");
            assert_eq!(
                n, 1,
                "{dev} {dir}: {n} podflow programs; bpftool: {progs:#?}"
            );
            let p = progs
                .iter()
                .find(|p| p.dev == *dev && p.direction == dir && p.name.starts_with("podflow_"))
                .unwrap_or_else(|| panic!("no podflow program on {dev} {dir}"));
            // bpftool shows the kernel's program name (truncated to 15 chars) or the filter name.
            assert!(
                name.starts_with(&p.name) || p.name.starts_with(name),
                "{p:?} vs {name}"
            );
            assert_eq!(p.kind, kind, "{p:?}");
        }
    }
}

/// podflow programs attached in a namespace (from [`attached_programs`]), sorted, as
/// (interface, hook, program name) with hook "tcx/ingress", "clsact/egress"...
pub fn podflow_programs(ns: &Netns) -> Vec<(String, String, String)> {
    let mut progs: Vec<(String, String, String)> = attached_programs(ns)
        .into_iter()
        .filter(|p| p.name.starts_with("podflow"))
        .map(|p| {
            let hook = if p.kind == "tcx" { "tcx" } else { "clsact" };
            (p.dev, format!("{hook}/{}", p.direction), p.name)
        })
        .collect();
    progs.sort();
    progs
}

/// An address as the flow key holds it: IPv4 as `::ffff:a.b.c.d`.
pub fn mapped(ip: impl Into<IpAddr>) -> [u8; 16] {
    match ip.into() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The flow key of a packet from `src` to `dst` seen at `obs` (family from `src`).
pub fn flow_key(
    obs: ObsPoint,
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    proto: u8,
    sport: u16,
    dport: u16,
    key_flags: u8,
) -> FlowKey {
    let src = src.into();
    FlowKey {
        src_addr: mapped(src),
        dst_addr: mapped(dst),
        src_port: sport,
        dst_port: dport,
        protocol: proto,
        obs: obs as u8,
        family: if src.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        key_flags,
    }
}

/// Plain byte builders for test packets (checksums are left 0 unless a helper says otherwise:
/// the programs do not read them).
pub mod pkt {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_IPV6: u16 = 0x86DD;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88A8;

    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMP: u8 = 1;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const HOP: u8 = 0;
    pub const FRAG: u8 = 44;
    pub const ROUTING: u8 = 43;
    pub const AH: u8 = 51;
    pub const DSTOPTS: u8 = 60;

    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// Ethernet header, VLAN tags (TPIDs, VID 100 + i), ethertype, payload.
    pub fn eth_vlan(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&DST_MAC);
        v.extend_from_slice(&SRC_MAC);
        for (i, tpid) in tpids.iter().enumerate() {
            v.extend_from_slice(&tpid.to_be_bytes());
            v.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        v.extend_from_slice(&ethertype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        eth_vlan(&[], ethertype, payload)
    }

    /// IPv4 header fields the tests vary.
    #[derive(Clone, Copy)]
    pub struct V4 {
        pub src: Ipv4Addr,
        pub dst: Ipv4Addr,
        pub proto: u8,
        pub version: u8,
        pub ihl: u8,
        /// Fragment offset in 8-byte units.
        pub frag_off: u16,
        pub more_frags: bool,
        /// `None`: header + payload length.
        pub tot_len: Option<u16>,
    }

    impl V4 {
        pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> V4 {
            V4 {
                src: Ipv4Addr::from(src),
                dst: Ipv4Addr::from(dst),
                proto,
                version: 4,
                ihl: 5,
                frag_off: 0,
                more_frags: false,
                tot_len: None,
            }
        }

        pub fn build(&self, payload: &[u8]) -> Vec<u8> {
            let hlen = usize::from(self.ihl.max(5)) * 4;
            let tot = self.tot_len.unwrap_or((hlen + payload.len()) as u16);
            let frag = self.frag_off | if self.more_frags { 0x2000 } else { 0 };
            let mut v = vec![(self.version << 4) | self.ihl, 0];
            v.extend_from_slice(&tot.to_be_bytes());
            v.extend_from_slice(&[0x12, 0x34]);
            v.extend_from_slice(&frag.to_be_bytes());
            v.extend_from_slice(&[64, self.proto, 0, 0]);
            v.extend_from_slice(&self.src.octets());
            v.extend_from_slice(&self.dst.octets());
            v.resize(hlen, 0x01); // options: NOPs
            v.extend_from_slice(payload);
            v
        }
    }

    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        V4::new(src, dst, proto).build(payload)
    }

    /// IPv6 header; `payload` includes any extension headers. `plen`: `None` = payload length.
    pub fn ipv6_plen(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next: u8,
        payload: &[u8],
        plen: Option<u16>,
    ) -> Vec<u8> {
        let mut v = vec![0x60, 0, 0, 0];
        v.extend_from_slice(&plen.unwrap_or(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(&[next, 64]);
        v.extend_from_slice(&src.octets());
        v.extend_from_slice(&dst.octets());
        v.extend_from_slice(payload);
        v
    }

    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        ipv6_plen(src, dst, next, payload, None)
    }

    /// Hop-by-Hop / Routing / Destination Options header of `8 * (len + 1)` bytes (PadN filled).
    pub fn ext(next: u8, len: u8) -> Vec<u8> {
        let total = 8 * (usize::from(len) + 1);
        let mut v = vec![next, len, 1, (total - 4) as u8];
        v.resize(total, 0);
        v
    }

    /// IPv6 Fragment header: offset in 8-byte units.
    pub fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let fo = (offset << 3) | u16::from(more);
        let mut v = vec![next, 0];
        v.extend_from_slice(&fo.to_be_bytes());
        v.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
        v
    }

    /// TCP header with data offset `doff` (words) and `payload` bytes of data.
    pub fn tcp_doff(sport: u16, dport: u16, flags: u8, doff: u8, payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&1000_u32.to_be_bytes());
        v.extend_from_slice(&2000_u32.to_be_bytes());
        v.extend_from_slice(&[doff << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        v.resize(usize::from(doff.max(5)) * 4, 0x01);
        v.resize(v.len() + payload, 0xab);
        v
    }

    pub fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
        tcp_doff(sport, dport, flags, 5, payload)
    }

    pub fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.resize(8 + payload, 0xcd);
        v
    }

    pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // vtag, checksum
        v.extend_from_slice(&[1, 0, 0, 20]); // an INIT chunk header, body follows
        v.resize(32, 0);
        v
    }

    /// ICMP/ICMPv6 header (8 bytes) + 16 bytes of data.
    pub fn icmp(ty: u8, code: u8) -> Vec<u8> {
        let mut v = vec![ty, code, 0, 0, 0, 1, 0, 1];
        v.resize(24, 0x55);
        v
    }

    /// Fills in the IPv4 header checksum of `packet` (an IPv4 header first), for packets the
    /// kernel's IP layer will see.
    pub fn with_ipv4_checksum(mut packet: Vec<u8>) -> Vec<u8> {
        let hlen = usize::from(packet[0] & 0x0f) * 4;
        packet[10..12].fill(0);
        let mut sum: u32 = packet[..hlen]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        packet[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        packet
    }
}
