//! A node with pods, built from network namespaces: used by the end-to-end tests, the benchmark
//! and the demo ([`demo`]). Nothing here touches the root namespace's routes, addresses, links or
//! qdiscs: the "node" is a namespace of its own that holds the pods' host-side veths, and every
//! address is inside namespaces this module created.
//!
//! The wiring follows a routed CNI such as Calico: each pod has `eth0` with a /32 (and a /128),
//! a default route via a link-local gateway that the host-side veth owns (`169.254.1.1`,
//! `fe80::1`), and the node has a host route per pod through the pod's veth, with forwarding on
//! inside the node namespace only.
//!
//! Every namespace is deleted when its guard drops (processes inside it are killed first), so
//! tests clean up on every exit path, panics included.
//!
//! # Safety rules
//!
//! * Nothing is changed in the root namespace: every `ip`/`sysctl`/`tc` command runs through
//!   `ip netns exec NS`, and in-process work runs on a thread of our own that has `setns(2)`-ed
//!   into a namespace this module created ([`Netns::run`], [`Netns::spawn`], [`NsThread`]); the
//!   calling thread never changes namespace.
//! * Names are unique per process and call ([`unique_prefix`]).
//! * [`Netns`] is a guard: dropping it kills the processes left inside and deletes it, which
//!   deletes the veths in it (and their peers).
//! * Every wait is bounded ([`wait_for`]).
//!
//! Nothing here panics: every failure is a [`TestbedError`] (the demo runs this code too).
pub mod clickhouse;
pub mod container;
pub mod demo;
pub mod kube_proxy;
pub mod kubelet;

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("failed to run {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("entering network namespace {name}")]
    Setns {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no pod named {0}")]
    NoSuchPod(String),
    #[error("the thread running in network namespace {ns} panicked: {message}")]
    ThreadPanicked { ns: String, message: String },
    #[error("the thread of network namespace {0} is gone")]
    ThreadGone(String),
    #[error("starting a thread for network namespace {name}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected {what}: {text:?}")]
    Parse { what: String, text: String },
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(
        "privileged test: run as root (cargo xtask test), or set PODFLOW_SKIP_PRIVILEGED=1 to skip it"
    )]
    NotRoot,
}

/// The gate of privileged tests: `Ok(true)` as root; `Ok(false)` (the test skips, and says so)
/// when not root and `PODFLOW_SKIP_PRIVILEGED=1`; [`TestbedError::NotRoot`] otherwise, so that a
/// privileged test never passes silently.
pub fn privileged() -> Result<bool, TestbedError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(true);
    }
    if std::env::var_os("PODFLOW_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("skipping privileged test (PODFLOW_SKIP_PRIVILEGED=1)");
        return Ok(false);
    }
    Err(TestbedError::NotRoot)
}

/// The message of a panic payload (`panic!` with a literal or a formatted string).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Moves the calling thread into the network namespace `name` (`setns(CLONE_NEWNET)`). Private:
/// only threads this module spawns, and that never run anything else, enter a namespace.
fn enter(name: &str) -> Result<(), TestbedError> {
    let err = |source| TestbedError::Setns {
        name: name.to_string(),
        source,
    };
    let file = File::open(format!("/run/netns/{name}")).map_err(err)?;
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET changes only this thread's network
    // namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside the (existing) namespace `name` and returns its result:
/// [`Netns::run`] for a namespace this process does not own a guard of.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TestbedError> {
    spawn_in(name, f)?
        .join()
        .map_err(|p| TestbedError::ThreadPanicked {
            ns: name.to_string(),
            message: panic_message(p.as_ref()),
        })
}

/// Starts `f` on a fresh thread inside the namespace `name`; the thread ends with `f`.
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, TestbedError> {
    let owned = name.to_string();
    let (tx, rx) = mpsc::channel::<Result<(), TestbedError>>();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let entered = enter(&owned);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            if !ok {
                // Never run `f` in the wrong namespace (the caller has the error already).
                std::process::abort();
            }
            f()
        })
        .map_err(|source| TestbedError::Thread {
            name: name.to_string(),
            source,
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(TestbedError::ThreadGone(name.to_string())),
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay), for the HTTP
/// requests of the test servers' clients (ClickHouse, Prometheus).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A short name unique to this process and call, for namespaces and interfaces (interface names
/// are limited to 15 bytes, so keep prefixes short).
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 100_000)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion, failing with its stderr on a non-zero exit.
pub fn run_checked(cmd: &mut Command) -> Result<Output, TestbedError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn {
            cmd: describe(cmd),
            source,
        })?;
    if !out.status.success() {
        return Err(TestbedError::Failed {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output, TestbedError> {
    run_checked(Command::new("ip").args(args))
}

/// A network namespace, deleted (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, TestbedError> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, TestbedError> {
        let out = run_checked(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, TestbedError> {
        self.exec("ip", args)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), TestbedError> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a fresh thread that has entered this namespace (sockets, netlink, bpf
    /// attachments and child processes made from `f` act there), and returns its result. The
    /// thread exits afterwards, so the namespace switch never leaks. A panic in `f` comes back as
    /// [`TestbedError::ThreadPanicked`] with its message.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TestbedError> {
        let handle = self.spawn(f)?;
        handle.join().map_err(|p| TestbedError::ThreadPanicked {
            ns: self.name.clone(),
            message: panic_message(p.as_ref()),
        })
    }

    /// Like [`Netns::run`], without waiting for the thread.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>, TestbedError> {
        spawn_in(&self.name, f)
    }

    /// The interfaces of the namespace, as (ifindex, name), from `ip -o link show`.
    pub fn links(&self) -> Result<Vec<(u32, String)>, TestbedError> {
        let text = self.ip(&["-o", "link", "show"])?;
        text.lines()
            .map(|l| {
                let mut it = l.splitn(3, ':');
                let idx = it.next().and_then(|i| i.trim().parse().ok());
                // "veth0@if3": the name is before the '@'.
                let name = it
                    .next()
                    .and_then(|n| n.trim().split('@').next())
                    .map(String::from);
                idx.zip(name).ok_or_else(|| TestbedError::Parse {
                    what: "ip -o link show line".into(),
                    text: l.to_string(),
                })
            })
            .collect()
    }

    /// The ifindex of `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32, TestbedError> {
        let text = self.exec("cat", &[&format!("/sys/class/net/{dev}/ifindex")])?;
        text.trim().parse().map_err(|_| TestbedError::Parse {
            what: format!("ifindex of {dev}"),
            text,
        })
    }

    /// The MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> Result<String, TestbedError> {
        let text = self.exec("cat", &[&format!("/sys/class/net/{dev}/address")])?;
        Ok(text.trim().to_string())
    }

    /// A permanent neighbour entry `addr` → `mac` on `dev` (IPv4 or IPv6): no ARP/NDP for it.
    pub fn neigh_permanent(&self, addr: &str, mac: &str, dev: &str) -> Result<(), TestbedError> {
        self.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(|_| ())
    }

    /// Creates a TUN device `name` (link type `ARPHRD_NONE`, like wireguard-go's), up.
    pub fn add_tun(&self, name: &str) -> Result<(), TestbedError> {
        self.ip(&["tuntap", "add", "mode", "tun", "name", name])?;
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Adds another tool's tc filter on `dev`'s clsact `direction` ("ingress"/"egress") at `prio`,
    /// creating the clsact qdisc if needed: a `u32` filter matching everything with no action
    /// (packets go on unchanged). It needs no BPF object, and a correct podflow never touches it.
    /// (`matchall`/`gact` are not built into every kernel; `u32` is the most common.) Use a
    /// `prio` > 1 so that a filter added with automatic priority can still go in front of it.
    pub fn add_foreign_filter(
        &self,
        dev: &str,
        direction: &str,
        prio: u16,
    ) -> Result<(), TestbedError> {
        // Fails when the qdisc exists already, which is fine.
        let _ = self.exec("tc", &["qdisc", "add", "dev", dev, "clsact"]);
        self.exec(
            "tc",
            &[
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
            ],
        )
        .map(|_| ())
    }

    /// `tc filter show dev <dev> <direction>`.
    pub fn tc_filters(&self, dev: &str, direction: &str) -> Result<String, TestbedError> {
        self.exec("tc", &["filter", "show", "dev", dev, direction])
    }

    /// Kills every process inside the namespace.
    pub fn kill_all(&self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                // Never ourselves (only a thread of ours may be inside, never the main one).
                if let Ok(pid) = pid.parse::<i32>()
                    && pid as u32 != std::process::id()
                {
                    // SAFETY: plain kill(2) on a pid that lives in our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        // The namespace's veths go with it. Retry briefly: a process may still be exiting.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(false)
            && Instant::now() < deadline
        {
            if !std::path::Path::new(&format!("/run/netns/{}", self.name)).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A long-lived thread inside a namespace that runs closures on demand, for state that must stay
/// on one thread across the steps of a test (e.g. a loaded `Capture`, kept in a thread-local,
/// between `ip` commands on the side). Dropping it ends the thread after the queued jobs.
#[derive(Debug)]
pub struct NsThread {
    ns: String,
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl NsThread {
    pub fn new(ns: &Netns) -> Result<NsThread, TestbedError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = ns.name().to_string();
        let handle = std::thread::Builder::new()
            .name(format!("nsthread-{name}"))
            .spawn(move || {
                let entered = enter(&name);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(|source| TestbedError::Thread {
                name: ns.name().to_string(),
                source,
            })?;
        let thread = NsThread {
            ns: ns.name().to_string(),
            tx: Some(tx),
            handle: Some(handle),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TestbedError::ThreadGone(thread.ns.clone())),
        }
    }

    /// Runs `f` on the namespace thread and waits for its result. A panic in `f` comes back as
    /// [`TestbedError::ThreadPanicked`] (the thread goes on serving).
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, TestbedError> {
        let (rtx, rrx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = rtx.send(r);
        });
        let gone = || TestbedError::ThreadGone(self.ns.clone());
        self.tx
            .as_ref()
            .and_then(|t| t.send(job).ok())
            .ok_or_else(gone)?;
        match rrx.recv() {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(p)) => Err(TestbedError::ThreadPanicked {
                ns: self.ns.clone(),
                message: panic_message(p.as_ref()),
            }),
            Err(_) => Err(gone()),
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

/// A pod: a namespace with `eth0`, whose peer (the host-side veth) sits in the node namespace.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    /// Host-side veth name and ifindex, in the node namespace.
    pub host_veth: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    /// MAC of the pod's `eth0`.
    pub pod_mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ns: Netns,
}

/// Gateway addresses the host-side veths own (as Calico does).
pub const GATEWAY_V4: &str = "169.254.1.1";
pub const GATEWAY_V6: &str = "fe80::1";

/// A node namespace with pods behind veths.
#[derive(Debug)]
pub struct Node {
    pub prefix: String,
    /// The node's own address (on its loopback), reachable from the pods.
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Pods, in creation order. Dropped (deleted) before the node.
    pub pods: Vec<Pod>,
    pub ns: Netns,
    /// Pod addresses are 10.<subnet>.0.<n> and fd00:<subnet>::<n>.
    subnet: u8,
    next_pod: u8,
}

impl Node {
    /// Creates the node namespace `<prefix>-node`. `subnet` picks the pods' address range
    /// (10.<subnet>.0.0/24, fd00:<subnet>::/64) so that several nodes can be joined.
    pub fn new(prefix: &str, subnet: u8) -> Result<Node, TestbedError> {
        let ns = Netns::create(&format!("{prefix}-node"))?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
        ] {
            ns.sysctl(k, v)?;
        }
        let ipv4 = Ipv4Addr::new(10, subnet, 255, 1);
        let ipv6: Ipv6Addr = format!("fd00:{subnet:x}:ffff::1")
            .parse()
            .unwrap_or(Ipv6Addr::LOCALHOST);
        ns.ip(&["addr", "add", &format!("{ipv4}/32"), "dev", "lo"])?;
        ns.ip(&["-6", "addr", "add", &format!("{ipv6}/128"), "dev", "lo"])?;
        Ok(Node {
            prefix: prefix.to_string(),
            ipv4,
            ipv6,
            pods: Vec::new(),
            ns,
            subnet,
            next_pod: 1,
        })
    }

    /// Adds a pod named `name` whose host-side veth is `host_veth` (≤ 15 bytes; it should match
    /// the agent's veth patterns, e.g. start with `veth`, unless the test wants it ignored).
    pub fn add_pod(&mut self, name: &str, host_veth: &str) -> Result<&Pod, TestbedError> {
        self.add_pod_at(name, host_veth, None)
    }

    /// [`Node::add_pod`] with the host-side veth at a chosen ifindex (the kernel allocates one
    /// otherwise): long-lived nodes reach ifindexes past 2^16 and 2^24.
    pub fn add_pod_at(
        &mut self,
        name: &str,
        host_veth: &str,
        ifindex: Option<u32>,
    ) -> Result<&Pod, TestbedError> {
        let n = self.next_pod;
        self.next_pod = self.next_pod.saturating_add(1);
        let ipv4 = Ipv4Addr::new(10, self.subnet, 0, n);
        let ipv6: Ipv6Addr = format!("fd00:{:x}::{n:x}", self.subnet)
            .parse()
            .unwrap_or(Ipv6Addr::LOCALHOST);
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        // Quiet pods: no duplicate address detection, no router solicitations; with the
        // permanent neighbour entries below, no ARP/NDP either. Only the traffic a test sends
        // crosses the veth, so interface counters are exact references.
        for (k, v) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.router_solicitations", "0"),
            ("net.ipv6.conf.default.router_solicitations", "0"),
        ] {
            ns.sysctl(k, v)?;
        }
        // Create the pair inside the node namespace, with the pod end straight in the pod's.
        let index = ifindex.map(|i| i.to_string());
        let mut args = vec!["link", "add", host_veth];
        if let Some(i) = index.as_deref() {
            args.extend(["index", i]);
        }
        args.extend(["type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        self.ns.ip(&args)?;
        // Pod side.
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["addr", "add", &format!("{ipv4}/32"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ipv6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", GATEWAY_V4, "dev", "eth0"])?;
        ns.ip(&[
            "-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0",
        ])?;
        // Node side.
        self.ns.ip(&["link", "set", host_veth, "up"])?;
        self.ns
            .ip(&["addr", "add", &format!("{GATEWAY_V4}/32"), "dev", host_veth])?;
        self.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            host_veth,
            "nodad",
        ])?;
        self.ns
            .ip(&["route", "add", &format!("{ipv4}/32"), "dev", host_veth])?;
        self.ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{ipv6}/128"),
            "dev",
            host_veth,
        ])?;
        let host_mac = self.ns.mac(host_veth)?;
        let pod_mac = ns.mac("eth0")?;
        for gw in [GATEWAY_V4, GATEWAY_V6] {
            ns.neigh_permanent(gw, &host_mac, "eth0")?;
        }
        for addr in [ipv4.to_string(), ipv6.to_string()] {
            self.ns.neigh_permanent(&addr, &pod_mac, host_veth)?;
        }
        let host_ifindex = self.ns.ifindex(host_veth)?;
        self.pods.push(Pod {
            name: name.to_string(),
            host_veth: host_veth.to_string(),
            host_ifindex,
            host_mac,
            pod_mac,
            ipv4,
            ipv6,
            ns,
        });
        self.pods
            .last()
            .ok_or_else(|| TestbedError::NoSuchPod(name.to_string()))
    }

    pub fn pod(&self, name: &str) -> Result<&Pod, TestbedError> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| TestbedError::NoSuchPod(name.to_string()))
    }

    /// Deletes a pod (its namespace, hence its veth pair).
    pub fn remove_pod(&mut self, name: &str) -> Result<(), TestbedError> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| TestbedError::NoSuchPod(name.to_string()))?;
        drop(self.pods.remove(i));
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pods first, then the node namespace (field order would drop `pods` before `ns` too,
        // but be explicit: a pod's veth must not outlive a half-deleted node).
        self.pods.clear();
    }
}

impl Node {
    /// The pods' IPv4 range, `10.<subnet>.0.0/24`.
    pub fn pod_cidr_v4(&self) -> String {
        format!("10.{}.0.0/24", self.subnet)
    }
}

/// A point-to-point link between two namespaces of the test (an underlay between two nodes, or a
/// node and a host outside the cluster), with names that match no pod pattern: `dev_a` in `a`
/// with `10.250.<net>.1/24`, `dev_b` in `b` with `10.250.<net>.2/24`, both up, reverse-path
/// filtering off in both (routes are asymmetric in tests). Returns the two addresses.
pub fn link(
    a: &Netns,
    dev_a: &str,
    b: &Netns,
    dev_b: &str,
    net: u8,
) -> Result<(Ipv4Addr, Ipv4Addr), TestbedError> {
    a.ip(&[
        "link",
        "add",
        dev_a,
        "type",
        "veth",
        "peer",
        "name",
        dev_b,
        "netns",
        b.name(),
    ])?;
    let addr_a = Ipv4Addr::new(10, 250, net, 1);
    let addr_b = Ipv4Addr::new(10, 250, net, 2);
    for (ns, dev, addr) in [(a, dev_a, addr_a), (b, dev_b, addr_b)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
        for k in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            ns.sysctl(k, "0")?;
        }
    }
    Ok((addr_a, addr_b))
}

/// A host outside the cluster: namespace `<prefix>-out`, linked to `node` ([`link`], devices
/// `ex<prefix>a` on the node and `ex<prefix>o` outside, `10.250.<net>.0/24`), its default route
/// via the node. Returns it, the node's address on the link and the host's.
pub fn outside_host(
    node: &Netns,
    prefix: &str,
    net: u8,
) -> Result<(Netns, Ipv4Addr, Ipv4Addr), TestbedError> {
    let outside = Netns::create(&format!("{prefix}-out"))?;
    let (node_addr, addr) = link(
        node,
        &format!("ex{prefix}a"),
        &outside,
        &format!("ex{prefix}o"),
        net,
    )?;
    outside.ip(&["route", "add", "default", "via", &node_addr.to_string()])?;
    Ok((outside, node_addr, addr))
}

/// Polls `f` every `every` until it returns `Some`, or gives up after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}
