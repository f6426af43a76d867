//! `podflow-demo` (run by `cargo xtask demo`): a demo node on this machine, built from network
//! namespaces (see [`crate`]): three "pods" behind veths, the agent attached to them inside the node
//! namespace, steady traffic between the pods (TCP requests, UDP queries, pings over IPv4 and
//! IPv6), and `podflow tail -f` printing the flows live. Nothing outside the namespaces it creates
//! is touched; everything is removed on exit (Ctrl-C, SIGTERM, or the end of `--duration`).
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

use crate::{Node, TestbedError, unique_prefix, wait_for};

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
    let logf = std::fs::File::create(&log).map_err(|source| DemoError::Spawn {
        what: "the agent log",
        source,
    })?;
    let agent = node
        .ns
        .command(&exe.to_string_lossy())
        .args(["--log-format", "text", "agent", "--node-name", "demo-node"])
        .arg("--flush-interval")
        .arg(humantime::format_duration(args.flush_interval).to_string())
        .arg("--socket")
        .arg(&sock)
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
        "demo node up: pods frontend {}, backend {}, db {}",
        node.pod("frontend")?.ipv4,
        node.pod("backend")?.ipv4,
        node.pod("db")?.ipv4
    );
    eprintln!(
        "podflow-demo: node namespace {}, pods frontend/backend/db; agent socket {}\n\
         in another terminal: podflow tail -f --server {}\n",
        node.ns.name(),
        sock.display(),
        sock.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    workers.extend(start_traffic(&node, &stop)?);

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

    wait_until_done(args.duration);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        warn!(error = %e, "removing the demo directory");
    }
    Ok(())
}

/// Sleeps until `duration` passed (0: forever) or SIGINT/SIGTERM arrived.
fn wait_until_done(duration: Duration) {
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
    // frontend → backend: a request every 500 ms.
    let s = stop.clone();
    threads.push(fe.ns.spawn(move || {
        while !s.load(Ordering::Relaxed) {
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

fn which_ping() -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| PathBuf::from(d).join("ping"))
        .find(|p| p.is_file())
}
