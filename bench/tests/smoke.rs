//! `podflow-bench --smoke`: the benchmark harness works end to end (network namespaces, iperf3,
//! bpf stats, the agent's status and metrics, the flow generator, the collector with its ClickHouse
//! server and the exporters feeding it) and prints a table with every
//! figure measured. The numbers themselves are not checked (a short run on a shared machine is
//! noise); that a number was taken is.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BENCH: &str = env!("CARGO_BIN_EXE_podflow-bench");

/// The `podflow` binary the benchmark runs: the agent crate's, built next to `podflow-bench` by
/// the same `cargo test --workspace` (the agent's integration tests need it).
fn podflow() -> std::path::PathBuf {
    let p = std::path::Path::new(BENCH).with_file_name("podflow");
    assert!(
        p.is_file(),
        "{} is missing: run the workspace's tests (`cargo xtask test`), which build it",
        p.display()
    );
    p
}

/// Every row the table must have (the figure keys podflow-bench prints in backquotes).
const ROWS: [&str; 13] = [
    "tcp_throughput_ratio",
    "udp64_pps_ratio",
    "hook_ns_established",
    "hook_ns_many_flows",
    "cpu_per_flow_low_churn",
    "cpu_per_flow_high_churn",
    "cpu_per_flow_service_churn",
    "cpu_per_flow_service_churn_named",
    "agent_rss",
    "map_bytes_per_flow",
    "lost_at_half_occupancy",
    "collector_records_per_s",
    "collector_cpu_per_record",
];

/// The measured value of a table row: the number at the start of the "measured" column.
fn measured(row: &str) -> Option<f64> {
    let cols: Vec<&str> = row.split('|').map(str::trim).collect();
    // "", figure, measured, target, result, details, ""
    cols.get(2)?.split_whitespace().next()?.parse().ok()
}

#[test]
fn smoke_prints_every_figure() {
    if !podflow_testbed::privileged().unwrap_or_else(|e| panic!("{e}")) {
        return;
    }
    let start = Instant::now();
    let mut child = Command::new(BENCH)
        .arg("--smoke")
        .arg("--podflow")
        .arg(podflow())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BENCH}: {e}"));
    // Bounded: the smoke takes ~40 s; give it 3 minutes on a loaded machine, then kill it (its
    // guards do not run on SIGKILL, so send SIGTERM first: it cleans up and exits).
    let deadline = start + Duration::from_secs(180);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            panic!("podflow-bench --smoke did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "podflow-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for key in ROWS {
        let tag = format!("`{key}`");
        let row = stdout
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&tag))
            .unwrap_or_else(|| panic!("no row {key} in the table:\n{stdout}"));
        let v = measured(row).unwrap_or_else(|| panic!("row {key} has no numeric value: {row}"));
        assert!(v.is_finite(), "row {key}: {v}");
        assert!(!row.contains("ERROR"), "row {key}: {row}");
    }
    assert!(stdout.contains("machine: "), "{stdout}");
    eprintln!("{stdout}\nsmoke took {:?}", start.elapsed());
}
