//! Network-namespace harness for privileged tests.
//!
//! # Safety rules this module enforces
//!
//! * Nothing is ever changed in the root namespace: every `ip`/`sysctl`/`tc` command runs with
//!   `ip -n NS` or `ip netns exec NS`, and in-process work runs on a dedicated thread that has
//!   `setns(2)`-ed into a test namespace ([`run_in_netns`], [`NsThread`]).
//! * Names are unique per test run: `<prefix>-<pid>-<counter>` ([`unique_name`]).
//! * [`NetNs`] is a guard: dropping it kills the processes still running inside the namespace
//!   (they can only be ours) and deletes it, which deletes the veths in it (and their peers).
//!   It runs on every exit path, panics included.
//! * Every wait is bounded ([`wait_until`]).
//!
//! # Topology built by [`add_pod`] (routed mode, like Calico/Cilium's host routing)
//!
//! ```text
//!   pod ns "podA"                      node ns                         pod ns "podB"
//!   eth0 10.x.0.1/32, fd00::1/128  ── hostvethA   hostvethB ── eth0 10.x.0.2/32, fd00::2/128
//!   default via 169.254.1.1          /32 + /128 routes to each pod    default via 169.254.1.1
//!   default via fe80::1 (v6)         via its host veth; forwarding    default via fe80::1 (v6)
//! ```
//!
//! The pod's gateway addresses (169.254.1.1, fe80::1) are not configured anywhere: like Calico,
//! the pod just needs the host veth's MAC for them, which [`add_pod`] installs as a permanent
//! neighbour entry. The node likewise gets permanent neighbour entries for each pod address, so no
//! ARP/NDP happens at all (no delay, no DAD, no unsolicited packets in the way of exact counts).
//! Forwarding (IPv4 and IPv6) is enabled inside the node namespace only.
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

use std::{
    ffi::OsStr,
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Call first in every privileged test: `true` means "go on". Not root → panics with
/// "privileged test: run as root (cargo xtask test)", unless `PODFLOW_SKIP_PRIVILEGED=1`, then
/// returns `false` (the test should return early).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("PODFLOW_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("skipping privileged test (PODFLOW_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!("privileged test: run as root (cargo xtask test)");
}

/// `<prefix>-<pid>-<n>`, unique within this test run (n counts up per process).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A short unique interface name (≤ 15 bytes): `<prefix><n>` with `prefix` ≤ 9 bytes, where `n`
/// is a per-process counter mixed with the pid so parallel test binaries differ too. Interfaces
/// live in test namespaces, so this only needs to be unique per namespace; the pid part is for
/// readability in `bpftool net` outputs.
pub fn unique_ifname(prefix: &str) -> String {
    assert!(
        prefix.len() <= 9,
        "interface-name prefix too long: {prefix}"
    );
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag = (std::process::id() as u64 * 131 + n as u64) % 0x100_0000;
    format!("{prefix}{tag:06x}")
}

/// Runs a command, returns its output (never panics on a non-zero exit; check `status`).
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds; returns stdout.
pub fn run_ok<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let out = run(program, args);
    if !out.status.success() {
        let argv: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into())
            .collect();
        panic!(
            "`{program} {}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A network namespace created by the test (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>` and brings its loopback up.
    pub fn new(prefix: &str) -> NetNs {
        let name = unique_name(prefix);
        run_ok("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the handle `setns(2)` takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip netns exec <ns> args...`; returns the output whatever the exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut argv: Vec<&OsStr> = vec![
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&self.name),
        ];
        argv.extend(args.iter().map(AsRef::as_ref));
        run("ip", &argv)
    }

    /// Like [`NetNs::exec`] but panics (with stderr) on failure; returns stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let mut argv: Vec<&OsStr> = vec![
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&self.name),
        ];
        argv.extend(args.iter().map(AsRef::as_ref));
        run_ok("ip", &argv)
    }

    /// Spawns `args` inside the namespace (stdout/stderr piped, stdin null). The caller owns the
    /// child; anything still running when the `NetNs` drops is killed.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn in {}: {e}", self.name))
    }

    /// `ip -n <ns> args...`, panicking on failure; returns stdout.
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let mut argv: Vec<&OsStr> = vec![OsStr::new("-n"), OsStr::new(&self.name)];
        argv.extend(args.iter().map(AsRef::as_ref));
        run_ok("ip", &argv)
    }

    /// `sysctl -w key=value` inside the namespace (per-namespace keys only, e.g. forwarding).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Enables IPv4 and IPv6 forwarding in this namespace.
    pub fn enable_forwarding(&self) {
        self.sysctl("net.ipv4.ip_forward", "1");
        self.sysctl("net.ipv6.conf.all.forwarding", "1");
    }

    /// ifindex of `ifname` in this namespace, if it exists.
    pub fn ifindex(&self, ifname: &str) -> Option<u32> {
        let out = run(
            "ip",
            &["-n", &self.name, "-o", "link", "show", "dev", ifname],
        );
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout);
        s.split(':').next()?.trim().parse().ok()
    }

    /// Runs `f` on a fresh thread that has entered this namespace; see [`run_in_netns`].
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        run_in_netns(&self.name, f)
    }

    /// `ip netns pids`: processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        let out = run("ip", &["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes inside can only be ours (the namespace is ours); kill them so the namespace
        // really goes away (pings, servers, a SIGKILL-test child...).
        for pid in self.pids() {
            if pid as u32 != std::process::id() {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let out = run("ip", &["netns", "delete", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: deleting netns {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Enters `/run/netns/<name>` on the *calling thread* (`setns(CLONE_NEWNET)`). Only for threads
/// that never go back to a pool (use [`run_in_netns`] / [`NsThread`]).
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET changes only this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new OS thread inside network namespace `name` and returns its result. The thread
/// exits afterwards. Sockets, netlink, `if_nametoindex`, bpf attachments and child processes made
/// from `f` act in that namespace. A panic in `f` is propagated (re-raised) to the caller.
pub fn run_in_netns<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let name = name.to_owned();
    let h = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            enter_netns(&name).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
            f()
        })
        .unwrap_or_else(|e| panic!("spawn thread: {e}"));
    match h.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A long-lived thread inside a namespace that runs closures on demand, for state that must stay
/// on one thread across steps of a test (e.g. a `Capture` between calls of `ip` on the side).
/// Dropping it ends the thread (after the queued jobs).
pub struct NsThread {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl NsThread {
    pub fn new(ns: &NetNs) -> NsThread {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = ns.name().to_owned();
        let handle = std::thread::Builder::new()
            .name(format!("nsthread-{name}"))
            .spawn(move || {
                let r = enter_netns(&name);
                let ok = r.is_ok();
                let _ = ready_tx.send(r);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .unwrap_or_else(|e| panic!("spawn thread: {e}"));
        ready_rx
            .recv()
            .unwrap_or_else(|e| panic!("ns thread died: {e}"))
            .unwrap_or_else(|e| panic!("setns into {}: {e}", ns.name()));
        NsThread {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Runs `f` on the namespace thread and waits for its result (panics propagate).
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (rtx, rrx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = rtx.send(r);
        });
        self.tx
            .as_ref()
            .and_then(|t| t.send(job).ok())
            .unwrap_or_else(|| panic!("ns thread is gone"));
        match rrx
            .recv()
            .unwrap_or_else(|e| panic!("ns thread is gone: {e}"))
        {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A pod: its namespace, its veth pair and addresses.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace (deleting it deletes the pair, host side included).
    pub ns: NetNs,
    /// Host-side veth name (in the node namespace).
    pub host_veth: String,
    /// Host-side veth ifindex (in the node namespace).
    pub host_ifindex: u32,
    /// Pod-side interface, always `eth0`.
    pub pod_if: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub host_mac: String,
    pub pod_mac: String,
}

/// IPv4 gateway the pods route through (never configured on any interface).
pub const POD_GW4: &str = "169.254.1.1";
/// IPv6 gateway the pods route through (a neighbour entry only).
pub const POD_GW6: &str = "fe80::1";

fn mac(n: u32, side: u8) -> String {
    let pid = std::process::id();
    format!(
        "02:{side:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (pid >> 8) & 0xff,
        pid & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// Creates a pod namespace (`<pod_prefix>-<pid>-<n>`) joined to `node` by a veth pair: `host_veth`
/// in `node`, `eth0` in the pod, both up; pod addresses `ip4/32` and `ip6/128` (no DAD); pod
/// default routes via [`POD_GW4`]/[`POD_GW6`] with permanent neighbour entries to the host veth's
/// MAC; node routes `ip4/32` and `ip6/128` via `host_veth` with permanent neighbour entries to the
/// pod's MAC. Call [`NetNs::enable_forwarding`] on the node once (or use [`node_with_pods`]).
pub fn add_pod(
    node: &NetNs,
    pod_prefix: &str,
    host_veth: &str,
    ip4: Ipv4Addr,
    ip6: Ipv6Addr,
) -> Pod {
    assert!(
        host_veth.len() <= 15,
        "interface name too long: {host_veth}"
    );
    let ns = NetNs::new(pod_prefix);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (host_mac, pod_mac) = (mac(n, 0xaa), mac(n, 0xbb));
    node.ip(&[
        "link",
        "add",
        host_veth,
        "address",
        &host_mac,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        &pod_mac,
        "netns",
        ns.name(),
    ]);
    node.ip(&["link", "set", host_veth, "up"]);
    // Pod side.
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["addr", "add", &format!("{ip4}/32"), "dev", "eth0"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip6}/128"),
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.ip(&["route", "add", POD_GW4, "dev", "eth0", "scope", "link"]);
    ns.ip(&["route", "add", "default", "via", POD_GW4, "dev", "eth0"]);
    ns.ip(&[
        "neigh",
        "replace",
        POD_GW4,
        "lladdr",
        &host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "-6", "route", "add", "default", "via", POD_GW6, "dev", "eth0",
    ]);
    ns.ip(&[
        "-6",
        "neigh",
        "replace",
        POD_GW6,
        "lladdr",
        &host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    // Node side.
    node.ip(&["route", "add", &format!("{ip4}/32"), "dev", host_veth]);
    node.ip(&[
        "-6",
        "route",
        "add",
        &format!("{ip6}/128"),
        "dev",
        host_veth,
    ]);
    node.ip(&[
        "neigh",
        "replace",
        &ip4.to_string(),
        "lladdr",
        &pod_mac,
        "dev",
        host_veth,
        "nud",
        "permanent",
    ]);
    node.ip(&[
        "-6",
        "neigh",
        "replace",
        &ip6.to_string(),
        "lladdr",
        &pod_mac,
        "dev",
        host_veth,
        "nud",
        "permanent",
    ]);
    let host_ifindex = node
        .ifindex(host_veth)
        .unwrap_or_else(|| panic!("{host_veth} not found in {}", node.name()));
    Pod {
        ns,
        host_veth: host_veth.to_owned(),
        host_ifindex,
        pod_if: "eth0".into(),
        ip4,
        ip6,
        host_mac,
        pod_mac,
    }
}

/// A node namespace `<prefix>-node-<pid>-<n>` (forwarding on) with `n` pods `<prefix>-pod<i>-…`:
/// host veths `<veth_prefix><i>` (keep the prefix ≤ 13 bytes), addresses from [`pod_addrs`]
/// (`10.77.0.<i+1>`, `fd00:77::<i+1>`). Addresses and names may repeat across tests running in
/// parallel: every node namespace is its own isolated world.
pub fn node_with_pods(prefix: &str, veth_prefix: &str, n: usize) -> (NetNs, Vec<Pod>) {
    let node = NetNs::new(&format!("{prefix}-node"));
    node.enable_forwarding();
    let pods = (0..n)
        .map(|i| {
            let (ip4, ip6) = pod_addrs(i);
            add_pod(
                &node,
                &format!("{prefix}-pod{i}"),
                &format!("{veth_prefix}{i}"),
                ip4,
                ip6,
            )
        })
        .collect();
    (node, pods)
}

/// The addresses [`node_with_pods`] gives pod `i`.
pub fn pod_addrs(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let i = u8::try_from(i + 1).unwrap_or(254);
    (
        Ipv4Addr::new(10, 77, 0, i),
        Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, u16::from(i)),
    )
}

/// Adds a foreign tc filter on `dev`'s clsact `direction` ("ingress"/"egress") in `ns` at `prio`,
/// creating the clsact qdisc if needed: a `u32` filter matching everything with no action (the
/// packet goes on unchanged). It needs no BPF object, and a correct podflow never touches it.
/// (`matchall`/`gact` are not built into every test kernel; `u32` is the most common.) Use a
/// `prio` > 1 so that a filter added with automatic priority can still go in front of it.
pub fn add_foreign_filter(ns: &NetNs, dev: &str, direction: &str, prio: u16) {
    let _ = ns.exec(&["tc", "qdisc", "add", "dev", dev, "clsact"]);
    ns.exec_ok(&[
        "tc",
        "filter",
        "add",
        "dev",
        dev,
        direction,
        "prio",
        &prio.to_string(),
        "u32",
        "match",
        "u32",
        "0",
        "0",
    ]);
}

/// Creates a TUN device `name` (link type `ARPHRD_NONE`, like wireguard-go's) in `ns`, up.
pub fn add_tun(ns: &NetNs, name: &str) {
    ns.ip(&["tuntap", "add", "mode", "tun", "name", name]);
    ns.ip(&["link", "set", name, "up"]);
}

/// `tc filter show dev <dev> <direction>` in `ns`.
pub fn tc_filters(ns: &NetNs, dev: &str, direction: &str) -> String {
    String::from_utf8_lossy(
        &ns.exec(&["tc", "filter", "show", "dev", dev, direction])
            .stdout,
    )
    .into_owned()
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

/// Names and indexes of the devices in `ns` (`ip -o link show`).
pub fn links(ns: &NetNs) -> Vec<(u32, String)> {
    ns.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let idx = it.next()?.trim().parse().ok()?;
            let name = it.next()?.trim();
            let name = name.split('@').next()?.to_string();
            Some((idx, name))
        })
        .collect()
}

/// Every BPF program attached to a tc hook in `ns`, from the kernel:
/// * tcx: `BPF_PROG_QUERY` (via aya's `SchedClassifier::query_tcx`) for every device and
///   direction, run on a thread inside `ns` (bpftool < 7.3 does not list tcx attachments);
/// * cls_bpf: `bpftool -j net show` run inside `ns`.
pub fn attached_programs(ns: &NetNs) -> Vec<NetProg> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let devs = links(ns);
    let mut progs = run_in_netns(ns.name(), move || {
        let mut out = Vec::new();
        for (ifindex, dev) in devs {
            for (dir, t) in [
                ("ingress", TcAttachType::Ingress),
                ("egress", TcAttachType::Egress),
            ] {
                // Fails with ENOENT/EINVAL-like errors on devices without tcx state: none attached.
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
    });
    let out = ns.exec_ok(&["bpftool", "-j", "net", "show"]);
    let v: serde_json::Value =
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
            progs.push(NetProg {
                dev: s("devname"),
                ifindex: n("ifindex"),
                direction: dir.to_string(),
                name: s("name"),
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
