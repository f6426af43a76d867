//! `podflow-demo` (run by `cargo xtask demo`): a demo node on this machine, built from network
//! namespaces (see [`crate`]), with pod metadata (a `kubectl get -o json` file: namespace `shop`,
//! Deployments `frontend` and `backend`, StatefulSet `db`, labels) and a Service `shop/backend`
//! whose ClusterIP the node translates as kube-proxy would (iptables mode): three "pods" behind veths, the agent attached to them inside the node
//! namespace, steady traffic between the pods (TCP requests after resolving the Service's name
//! over DNS — `db` answers DNS too, NXDOMAIN for a misspelt name every fifth time —, UDP
//! queries, pings over IPv4 and IPv6), and `podflow tail -f` printing the flows live: names,
//! the Service, DNS questions and answers with their latency, TCP handshake times. With `--clickhouse`, a ClickHouse server
//! (loopback, temporary data) and a collector storing into it, which the agent exports to, and the
//! saved queries' answers printed every 15 s instead of the tail. Nothing outside the namespaces
//! it creates is touched; everything is removed on exit (Ctrl-C, SIGTERM, or the end of
//! `--duration`).
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{Node, TestbedError, kube_proxy, unique_prefix, wait_for};

/// The ClusterIP of the Service `shop/backend`.
const BACKEND_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "podflow-demo",
    about = "A demo node (network namespaces with pods and traffic) with live podflow flows. Needs root."
)]
pub struct DemoArgs {
    /// How long to run; 0 runs until Ctrl-C.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Flush interval of the demo agent.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Output of the live tail.
    #[arg(short = 'o', long, default_value = "compact")]
    pub output: String,
    /// The `podflow` binary to run (agent and tail). Default: `podflow` next to this program.
    #[arg(long)]
    pub podflow: Option<PathBuf>,
    /// Also run a ClickHouse server (loopback, temporary data) and a collector storing into it;
    /// instead of the live tail, print the saved queries' answers (`podflow query`) every 15 s.
    #[arg(long)]
    pub clickhouse: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs root (it creates network namespaces and loads eBPF programs)")]
    NotRoot,
    #[error("building the demo network failed")]
    Testbed {
        #[from]
        source: TestbedError,
    },
    #[error("starting {what} failed")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the demo agent did not come up within 10s; its log is in {log}")]
    AgentNotReady { log: String },
    #[error("the demo collector did not come up within 10s; its log is in {log}")]
    CollectorNotReady { log: String },
    #[error("starting ClickHouse failed: {0}")]
    ClickHouse(String),
}

struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: DemoArgs) -> Result<(), DemoError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DemoError::NotRoot);
    }
    let exe = match args.podflow.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|source| DemoError::Spawn {
                what: "podflow (locating own executable)",
                source,
            })?
            .with_file_name("podflow"),
    };
    let p = unique_prefix("pfd");
    let mut node = Node::new(&p, 44)?;
    for pod in ["frontend", "backend", "db"] {
        node.add_pod(pod, &format!("veth{}", &pod[..pod.len().min(8)]))?;
    }
    let dir = std::env::temp_dir().join(format!("podflow-{p}"));
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Spawn {
        what: "the demo directory",
        source,
    })?;
    let sock = dir.join("podflow.sock");
    let log = dir.join("agent.log");
    let metadata = dir.join("cluster.json");
    write_metadata(&node, &metadata)?;
    kube_proxy::install(
        &node.ns,
        kube_proxy::Mode::Iptables,
        &[kube_proxy::ServiceRule {
            name: "backend".into(),
            cluster_ip: BACKEND_VIP,
            protocol: "tcp",
            port: 80,
            node_port: None,
            endpoints: vec![(node.pod("backend")?.ipv4, 8080)],
        }],
        None,
    )?;
    // With --clickhouse: a server and a collector storing into it, which the agent exports to
    // over a unix socket (which crosses network namespaces).
    let mut _clickhouse = None;
    let mut _collector = None;
    let collector_sock = dir.join("collector.sock");
    if args.clickhouse {
        let server =
            crate::clickhouse::ClickHouse::try_start(crate::clickhouse::Options::default())
                .map_err(DemoError::ClickHouse)?;
        let url = server.http_url();
        let collector_log = dir.join("collector.log");
        let logf = std::fs::File::create(&collector_log).map_err(|source| DemoError::Spawn {
            what: "the collector log",
            source,
        })?;
        let collector = Command::new(&exe)
            .args([
                "--log-format",
                "text",
                "collector",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--socket")
            .arg(&collector_sock)
            .args(["--clickhouse", &url, "--clickhouse-linger", "200ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|source| DemoError::Spawn {
                what: "podflow collector",
                source,
            })?;
        _collector = Some(Guarded(collector));
        let ready = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            collector_sock.exists().then_some(())
        });
        if ready.is_none() {
            return Err(DemoError::CollectorNotReady {
                log: collector_log.display().to_string(),
            });
        }
        eprintln!(
            "podflow-demo: ClickHouse at {url} (temporary data), collector log {}",
            collector_log.display()
        );
        _clickhouse = Some(server);
    }
    let logf = std::fs::File::create(&log).map_err(|source| DemoError::Spawn {
        what: "the agent log",
        source,
    })?;
    let mut agent = node.ns.command(&exe.to_string_lossy());
    agent.args(["--log-format", "text", "agent", "--node-name", "demo-node"]);
    if args.clickhouse {
        agent.arg("--collector").arg(&collector_sock);
    }
    let agent = agent
        .arg("--flush-interval")
        .arg(humantime::format_duration(args.flush_interval).to_string())
        .arg("--socket")
        .arg(&sock)
        .arg("--metadata-file")
        .arg(&metadata)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            what: "podflow agent",
            source,
        })?;
    let _agent = Guarded(agent);
    let ready = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        sock.exists().then_some(())
    });
    if ready.is_none() {
        return Err(DemoError::AgentNotReady {
            log: log.display().to_string(),
        });
    }
    info!(
        node = node.ns.name(),
        socket = %sock.display(),
        log = %log.display(),
        "demo node up: pods frontend {}, backend {} (Service shop/backend {BACKEND_VIP}:80), db {}",
        node.pod("frontend")?.ipv4,
        node.pod("backend")?.ipv4,
        node.pod("db")?.ipv4
    );
    eprintln!(
        "podflow-demo: node namespace {}, pods shop/frontend, shop/backend (behind the Service \
         shop/backend), shop/db-0; agent socket {}\n\
         in another terminal: podflow tail -f --server {}\n",
        node.ns.name(),
        sock.display(),
        sock.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    workers.extend(start_traffic(&node, &stop)?);

    match &_clickhouse {
        None => {
            let tail = Command::new(&exe)
                .args(["tail", "-f", "-o", &args.output, "--server"])
                .arg(&sock)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|source| DemoError::Spawn {
                    what: "podflow tail",
                    source,
                })?;
            let _tail = Guarded(tail);
            wait_until_done(args.duration, || {});
        }
        Some(server) => {
            let url = server.http_url();
            let mut next = Instant::now() + Duration::from_secs(15);
            wait_until_done(args.duration, || {
                if Instant::now() >= next {
                    print_queries(&exe, &url);
                    next = Instant::now() + Duration::from_secs(15);
                }
            });
            print_queries(&exe, &url);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        warn!(error = %e, "removing the demo directory");
    }
    Ok(())
}

/// Writes the metadata of the demo's pods, Services and node, as `kubectl get
/// pods,services,nodes -A -o json` would print it.
fn write_metadata(node: &Node, path: &std::path::Path) -> Result<(), DemoError> {
    let pod = |name: &str,
               app: &str,
               owner: (&str, &str),
               hash: Option<&str>|
     -> Result<String, DemoError> {
        let p = node.pod(app)?;
        let labels = match hash {
            Some(h) => format!(r#"{{"app": "{app}", "pod-template-hash": "{h}"}}"#),
            None => format!(r#"{{"app": "{app}"}}"#),
        };
        Ok(format!(
            r#"{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "{name}", "namespace": "shop", "uid": "demo-{name}", "labels": {labels},
    "creationTimestamp": "2026-01-01T00:00:00Z",
    "ownerReferences": [{{"apiVersion": "apps/v1", "kind": "{}", "name": "{}", "uid": "demo-{}", "controller": true}}]}},
  "spec": {{"nodeName": "demo-node", "containers": [{{"name": "{app}", "image": "demo",
    "ports": [{{"name": "http", "containerPort": 8080}}]}}]}},
  "status": {{"phase": "Running", "podIP": "{ip4}", "podIPs": [{{"ip": "{ip4}"}}, {{"ip": "{ip6}"}}],
    "startTime": "2026-01-01T00:00:00Z"}}}}"#,
            owner.0,
            owner.1,
            owner.1,
            ip4 = p.ipv4,
            ip6 = p.ipv6,
        ))
    };
    let items = [
        pod(
            "frontend-7d9f8c-x2x7q",
            "frontend",
            ("ReplicaSet", "frontend-7d9f8c"),
            Some("7d9f8c"),
        )?,
        pod(
            "backend-5c4b6d-k8s9z",
            "backend",
            ("ReplicaSet", "backend-5c4b6d"),
            Some("5c4b6d"),
        )?,
        pod("db-0", "db", ("StatefulSet", "db"), None)?,
        format!(
            r#"{{"apiVersion": "v1", "kind": "Service",
  "metadata": {{"name": "backend", "namespace": "shop", "uid": "demo-svc-backend", "creationTimestamp": "2026-01-01T00:00:00Z"}},
  "spec": {{"type": "ClusterIP", "clusterIP": "{BACKEND_VIP}", "clusterIPs": ["{BACKEND_VIP}"], "selector": {{"app": "backend"}},
    "ports": [{{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}}]}}}}"#
        ),
        format!(
            r#"{{"apiVersion": "v1", "kind": "Node",
  "metadata": {{"name": "demo-node", "uid": "demo-node"}},
  "spec": {{"podCIDR": "{cidr}", "podCIDRs": ["{cidr}"]}},
  "status": {{"addresses": [{{"type": "InternalIP", "address": "{ip}"}}]}}}}"#,
            cidr = node.pod_cidr_v4(),
            ip = node.ipv4,
        ),
    ];
    let text = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n{}\n]}}\n",
        items.join(",\n")
    );
    std::fs::write(path, text).map_err(|source| DemoError::Spawn {
        what: "the demo metadata file",
        source,
    })
}

/// Prints the answers of the saved queries over the last 10 minutes (`podflow query`).
fn print_queries(exe: &std::path::Path, url: &str) {
    for name in [
        "top_pod_pairs",
        "top_workload_pairs",
        "same_node_namespaces",
        "losses",
    ] {
        println!("\n$ podflow query {name} --clickhouse {url} --since 10m");
        let status = Command::new(exe)
            .args([
                "query",
                name,
                "--clickhouse",
                url,
                "--since",
                "10m",
                "--limit",
                "10",
            ])
            .stdin(Stdio::null())
            .status();
        if let Err(e) = status {
            warn!(error = %e, "podflow query");
        }
    }
}

/// Sleeps until `duration` passed (0: forever) or SIGINT/SIGTERM arrived, calling `tick` every
/// 100 ms.
fn wait_until_done(duration: Duration, mut tick: impl FnMut()) {
    static SIGNALLED: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        SIGNALLED.store(true, Ordering::Relaxed);
    }
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let start = Instant::now();
    while !SIGNALLED.load(Ordering::Relaxed) && (duration.is_zero() || start.elapsed() < duration) {
        std::thread::sleep(Duration::from_millis(100));
        tick();
    }
}

/// Steady traffic between the demo pods, until `stop` is set.
fn start_traffic(
    node: &Node,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, DemoError> {
    let fe = node.pod("frontend")?;
    let be = node.pod("backend")?;
    let db = node.pod("db")?;
    let mut threads = Vec::new();

    // backend: an HTTP-ish TCP server answering 4 KiB per request.
    let be_addr = SocketAddr::new(IpAddr::V4(be.ipv4), 8080);
    let s = stop.clone();
    threads.push(be.ns.spawn(move || {
        let Ok(l) = TcpListener::bind(be_addr) else {
            return;
        };
        let _ = l.set_nonblocking(true);
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 2048];
                    if c.read(&mut buf).is_ok() {
                        let _ = c.write_all(&[b'x'; 4096]);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })?);
    // db: a UDP service echoing queries, over IPv6.
    let db_addr = SocketAddr::new(IpAddr::V6(db.ipv6), 5432);
    let s = stop.clone();
    threads.push(db.ns.spawn(move || {
        let Ok(sock) = UdpSocket::bind(db_addr) else {
            return;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1500];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    })?);
    // db also answers DNS (as a cluster DNS pod would): the Service's name resolves to its
    // ClusterIP, any other name does not exist.
    let dns_addr = SocketAddr::new(IpAddr::V4(db.ipv4), 53);
    let s = stop.clone();
    threads.push(db.ns.spawn(move || {
        let Ok(sock) = UdpSocket::bind(dns_addr) else {
            return;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 512];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf)
                && let Some(reply) = dns_reply(&buf[..n])
            {
                let _ = sock.send_to(&reply, from);
            }
        }
    })?);
    // frontend → backend through its Service: a request every 500 ms, after resolving the
    // Service's name (every fifth time a misspelt one: NXDOMAIN).
    let s = stop.clone();
    let be_addr = SocketAddr::new(IpAddr::V4(BACKEND_VIP), 80);
    threads.push(fe.ns.spawn(move || {
        let mut n = 0u16;
        while !s.load(Ordering::Relaxed) {
            n = n.wrapping_add(1);
            let name = if n.is_multiple_of(5) {
                "bakend.shop.svc.cluster.local"
            } else {
                "backend.shop.svc.cluster.local"
            };
            if let Ok(sock) = UdpSocket::bind("0.0.0.0:0") {
                let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = sock.send_to(&dns_query(n, name), dns_addr);
                let _ = sock.recv(&mut [0u8; 512]);
            }
            if let Ok(mut c) = TcpStream::connect_timeout(&be_addr, Duration::from_secs(1)) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = c.write_all(b"GET /cart HTTP/1.1\r\nhost: backend\r\n\r\n");
                let mut resp = Vec::new();
                let _ = c.read_to_end(&mut resp);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })?);
    // backend → db: a query every 300 ms.
    let s = stop.clone();
    let be6 = be.ipv6;
    threads.push(be.ns.spawn(move || {
        let Ok(sock) = UdpSocket::bind(SocketAddr::new(IpAddr::V6(be6), 0)) else {
            return;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1500];
        while !s.load(Ordering::Relaxed) {
            let _ = sock.send_to(b"SELECT * FROM carts WHERE id = 42", db_addr);
            let _ = sock.recv(&mut buf);
            std::thread::sleep(Duration::from_millis(300));
        }
    })?);
    // frontend pings db, like a health check.
    let s = stop.clone();
    let db4 = db.ipv4.to_string();
    let ping = which_ping().unwrap_or_else(|| PathBuf::from("ping"));
    let fe_ns = fe.ns.name().to_string();
    threads.push(std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let _ = Command::new("ip")
                .args(["netns", "exec", &fe_ns])
                .arg(&ping)
                .args(["-c", "1", "-W", "1", "-q", &db4])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_secs(1));
        }
    }));
    Ok(threads)
}

/// A DNS query for `name` (type A, recursion desired).
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// The demo's DNS answer to `query`: the Service's name → its ClusterIP, anything else
/// NXDOMAIN. `None` for what is not a one-question query.
fn dns_reply(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 17 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    let wanted = dns_query(0, "backend.shop.svc.cluster.local");
    let found = query.get(12..)? == &wanted[12..];
    let mut r = query.to_vec();
    r[2] = 0x81;
    r[3] = if found { 0x80 } else { 0x83 };
    r[6..8].copy_from_slice(&u16::from(found).to_be_bytes());
    if found {
        // The name by pointer to the question, A, IN, TTL 30 s, the ClusterIP.
        r.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        r.extend(BACKEND_VIP.octets());
    }
    Some(r)
}

fn which_ping() -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| PathBuf::from(d).join("ping"))
        .find(|p| p.is_file())
}
