//! Shared by the export/collector tests: known flow records, collectors in and out of process,
//! waits with timeouts, reading the collector's files back.

use std::{
    collections::{BTreeMap, HashSet},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use podflow::{
    collector::{Collector, CollectorArgs},
    export::{ExportStats, ExporterConfig, ExporterHandle},
    proto::{self, flow_event::Event},
};
use tokio::sync::oneshot;

/// Flow number `id` of `node`: packets = id % 7 + 1, bytes = 100 × packets; the start time's
/// nanoseconds carry the id, so a record can be told from every other one.
pub fn flow(id: u64, node: &str) -> proto::FlowEvent {
    let packets = id % 7 + 1;
    proto::FlowEvent {
        event: Some(Event::Flow(proto::Flow {
            start_time: Some(prost_types::Timestamp {
                seconds: 1_795_439_101 + i64::try_from(id / 1_000_000_000).unwrap_or(0),
                nanos: i32::try_from(id % 1_000_000_000).unwrap_or(0),
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_795_439_102,
                nanos: 0,
            }),
            src_ip: vec![10, 1, 0, 5],
            dst_ip: vec![10, 1, 0, 9],
            src_port: u32::try_from(id % 65_536).unwrap_or(0),
            dst_port: 80,
            protocol: 6,
            packets,
            bytes: packets * 100,
            interfaces: vec!["veth1".into(), "veth2".into()],
            same_node: true,
            sampling_rate: 1,
            node: node.to_owned(),
            ..Default::default()
        })),
    }
}

/// Sends `n` more flows of `node` (ids `*next..*next + n`) and advances `*next`.
pub fn send_flows(exporter: &ExporterHandle, node: &str, next: &mut u64, n: u64) {
    exporter.send((*next..*next + n).map(|i| flow(i, node)).collect());
    *next += n;
}

pub fn packets_of(ids: impl Iterator<Item = u64>) -> u64 {
    ids.map(|id| id % 7 + 1).sum()
}

/// A quick-reacting exporter configuration for loopback tests.
pub fn fast_config(collector: &str, node: &str) -> ExporterConfig {
    let mut cfg = ExporterConfig::new(collector, node);
    cfg.batch_size = 500;
    cfg.linger = Duration::from_millis(20);
    cfg.buffer_records = 200_000;
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.ack_timeout = Duration::from_secs(2);
    cfg.keepalive_interval = Duration::from_secs(1);
    cfg.keepalive_timeout = Duration::from_secs(1);
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.cert_check_interval = Duration::from_millis(100);
    cfg
}

/// An in-process collector on 127.0.0.1:0; dropping the guard stops it.
pub struct InProcess {
    pub addr: SocketAddr,
    pub hub: std::sync::Arc<podflow::api::Hub>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), podflow::collector::CollectorError>>>,
}

impl InProcess {
    pub async fn start(args: CollectorArgs) -> InProcess {
        let collector = Collector::bind(&args).await.unwrap();
        let addr = collector.local_addr();
        let hub = collector.hub();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(collector.serve(async move {
            let _ = stopped.await;
        }));
        InProcess {
            addr,
            hub,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn loopback_args() -> CollectorArgs {
    CollectorArgs::new("127.0.0.1:0".parse().unwrap())
}

/// Waits until `done(stats)` holds, up to `timeout`.
pub async fn wait_stats(
    exporter: &ExporterHandle,
    timeout: Duration,
    what: &str,
    done: impl Fn(&ExportStats) -> bool,
) -> ExportStats {
    let start = Instant::now();
    loop {
        let stats = exporter.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}: {stats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `podflow collector` binary; killed on drop.
pub struct ChildCollector {
    pub child: Child,
}

impl ChildCollector {
    pub fn start(port: u16, extra: &[&str]) -> ChildCollector {
        Self::spawn(port, extra, Stdio::null())
    }

    /// Like [`ChildCollector::start`], with its log (text format) written to `log`.
    pub fn start_logged(port: u16, extra: &[&str], log: std::fs::File) -> ChildCollector {
        Self::spawn(port, extra, Stdio::from(log))
    }

    /// On a unix socket (which crosses network namespaces), TCP on an ephemeral loopback port.
    pub fn on_socket(sock: &Path) -> ChildCollector {
        Self::on_socket_with(sock, &[], Stdio::null())
    }

    /// Like [`ChildCollector::on_socket`], with `extra` arguments and its log (text) to `log`.
    pub fn on_socket_with(sock: &Path, extra: &[&str], log: Stdio) -> ChildCollector {
        let sock_arg = sock.to_str().expect("utf-8 socket path");
        let args: Vec<&str> = ["--socket", sock_arg]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let collector = Self::launch("127.0.0.1:0", &args, log);
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "collector socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        collector
    }

    fn spawn(port: u16, extra: &[&str], log: Stdio) -> ChildCollector {
        let collector = Self::launch(&format!("127.0.0.1:{port}"), extra, log);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "collector did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        collector
    }

    fn launch(listen: &str, extra: &[&str], log: Stdio) -> ChildCollector {
        let child = Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["--log-format", "text", "collector", "--listen", listen])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ChildCollector { child }
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ChildCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the collector's native files hold.
#[derive(Debug, Default)]
pub struct FileTotals {
    /// Flow lines.
    pub flows: u64,
    /// Distinct flows (by start time, which carries the test's id).
    pub unique_flows: u64,
    /// Packets of the distinct flows.
    pub unique_packets: u64,
    /// Loss counts by (node, reason).
    pub losses: BTreeMap<(String, String), u64>,
}

pub fn read_native(dir: &Path) -> FileTotals {
    let mut totals = FileTotals::default();
    let mut seen = HashSet::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("flows-native-"))
        })
        .collect();
    files.sort();
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(loss) = value.get("loss") {
                let key = (
                    loss["node"].as_str().unwrap().to_owned(),
                    loss["reason"].as_str().unwrap().to_owned(),
                );
                assert_eq!(loss["unit"], "records");
                *totals.losses.entry(key).or_default() += loss["count"].as_u64().unwrap();
            } else {
                totals.flows += 1;
                let id = (
                    value["node"].as_str().unwrap().to_owned(),
                    value["start_time"].as_str().unwrap().to_owned(),
                );
                if seen.insert(id) {
                    totals.unique_flows += 1;
                    totals.unique_packets += value["packets"].as_u64().unwrap();
                }
            }
        }
    }
    totals
}

/// Open fds and threads of this process.
pub fn fds_and_threads() -> (usize, usize) {
    let count = |dir| std::fs::read_dir(dir).unwrap().count();
    (count("/proc/self/fd"), count("/proc/self/task"))
}
