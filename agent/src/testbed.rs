//! A node with pods, built from network namespaces: used by the end-to-end tests, the benchmark
//! and `podflow demo`. Nothing here touches the root namespace's routes, addresses, links or
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
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
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
    #[error("the thread running in network namespace {0} panicked")]
    ThreadPanicked(String),
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

    /// Runs `f` on a fresh thread that has entered this namespace (sockets it opens live there),
    /// and returns its result. The thread exits afterwards, so the namespace switch never leaks.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TestbedError> {
        let name = self.name.clone();
        let handle = self.spawn(f)?;
        handle
            .join()
            .map_err(|_| TestbedError::ThreadPanicked(name))
    }

    /// Like [`Netns::run`], without waiting for the thread.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, TestbedError> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).map_err(|source| TestbedError::Setns {
            name: self.name.clone(),
            source,
        })?;
        let name = self.name.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), std::io::Error>>();
        let handle = std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace,
            // and this thread is ours and ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error()));
                // Never run `f` in the wrong namespace.
                std::process::abort();
            }
            let _ = tx.send(Ok(()));
            f()
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(source)) => Err(TestbedError::Setns { name, source }),
            Err(_) => Err(TestbedError::ThreadPanicked(name)),
        }
    }

    /// Kills every process inside the namespace.
    pub fn kill_all(&self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
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

/// A pod: a namespace with `eth0`, whose peer (the host-side veth) sits in the node namespace.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub host_veth: String,
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
        self.ns.ip(&[
            "link",
            "add",
            host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
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
        let host_mac = mac_of(&self.ns, host_veth)?;
        let pod_mac = mac_of(&ns, "eth0")?;
        for gw in [GATEWAY_V4, GATEWAY_V6] {
            ns.ip(&[
                "neigh",
                "replace",
                gw,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        for addr in [ipv4.to_string(), ipv6.to_string()] {
            self.ns.ip(&[
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &pod_mac,
                "dev",
                host_veth,
                "nud",
                "permanent",
            ])?;
        }
        self.pods.push(Pod {
            name: name.to_string(),
            host_veth: host_veth.to_string(),
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

/// The MAC address of `dev` inside `ns`.
fn mac_of(ns: &Netns, dev: &str) -> Result<String, TestbedError> {
    let text = ns.exec("cat", &[&format!("/sys/class/net/{dev}/address")])?;
    Ok(text.trim().to_string())
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
