//! A real Prometheus (Debian's `prometheus` package) scrapes `serve_metrics` every second and
//! evaluates deploy/prometheus/podflow-rules.yaml: the series arrive with the values observed, and
//! the alerts fire on the growth they are meant for (and not on the rest).
//!
//! Needs the `prometheus` binary (`cargo xtask test` installs it); fails without it unless
//! `PODFLOW_SKIP_PROMETHEUS=1`.
use std::{path::PathBuf, time::Duration};

use crate::support::prometheus::{Prometheus, Sample, prometheus_binary};
use podflow::metrics::{Locality, Metrics, serve_metrics_on};
use podflow_ebpf::{COUNTER_COUNT, KernelCounter};

const WAIT: Duration = Duration::from_secs(40);

fn rules_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/podflow-rules.yaml")
}

fn label<'a>(labels: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> &'a str {
    labels.get(name).and_then(|v| v.as_str()).unwrap_or("")
}

#[test]
fn prometheus_scrapes_the_metrics_and_the_alerts_fire() {
    if prometheus_binary().is_none() && std::env::var_os("PODFLOW_SKIP_PROMETHEUS").is_some() {
        eprintln!("prometheus not installed and PODFLOW_SKIP_PROMETHEUS set: skipping");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    let m = Metrics::with_max_label_sets(3);
    m.observe_flow(
        "shop",
        "frontend",
        "shop",
        "backend",
        10,
        1000,
        Locality::SameNode,
        false,
    );
    m.observe_flow(
        "shop",
        "frontend",
        "shop",
        "backend",
        5,
        500,
        Locality::SameNode,
        false,
    );
    m.observe_flow(
        "shop",
        "frontend",
        "db",
        "postgres",
        1,
        100,
        Locality::InterNode,
        false,
    );
    m.observe_flow(
        "shop",
        "frontend",
        "db",
        "redis",
        1,
        100,
        Locality::InterNode,
        true,
    );
    m.observe_flow("a", "x", "b", "y", 1, 7, Locality::SameNode, false); // fourth tuple: overflows into _other
    m.set_interfaces("veth", 3);
    m.set_interfaces("l3", 1);
    let mut kernel = [0u64; COUNTER_COUNT as usize];
    kernel[KernelCounter::Packets as usize] = 100;
    m.set_kernel_counters(&kernel);

    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let target = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve_metrics_on(m.clone(), listener, async move {
        let _ = stopped.await;
    }));

    let prom = Prometheus::start(&[target], &[rules_file().as_path()]).expect("prometheus");
    let one = |v: f64| move |r: &[Sample]| r.len() == 1 && r[0].1 == v;

    // The series, with the values observed.
    prom.wait_for(
        r#"podflow_flow_bytes_total{src_namespace="shop",src_workload="frontend",dst_namespace="shop",dst_workload="backend",locality="same_node",encrypted="false"}"#,
        WAIT,
        one(1500.0),
    )
    .expect("flow bytes");
    prom.wait_for(
        r#"podflow_flow_packets_total{dst_workload="backend"}"#,
        WAIT,
        one(15.0),
    )
    .expect("flow packets");
    prom.wait_for(
        r#"podflow_flows_total{dst_workload="backend"}"#,
        WAIT,
        one(2.0),
    )
    .expect("flow records");
    prom.wait_for(
        r#"podflow_flow_bytes_total{src_workload="_other"}"#,
        WAIT,
        one(7.0),
    )
    .expect("overflow bucket");
    prom.wait_for(r#"podflow_flow_label_overflow_total"#, WAIT, one(1.0))
        .expect("overflow counter");
    prom.wait_for(
        r#"podflow_plaintext_inter_node_bytes_total"#,
        WAIT,
        one(100.0),
    )
    .expect("plaintext bytes: only the unencrypted inter-node flow");
    prom.wait_for(r#"podflow_interfaces_attached{kind="l3"}"#, WAIT, one(1.0))
        .expect("interfaces");
    prom.wait_for(
        r#"podflow_kernel_packets_total{counter="packets"}"#,
        WAIT,
        one(100.0),
    )
    .expect("kernel packets");
    let losses = prom
        .wait_for(r#"podflow_lost_packets_total"#, WAIT, |r| {
            r.len() == KernelCounter::ALL.iter().filter(|c| c.is_loss()).count()
        })
        .expect("one loss series per kernel loss counter");
    assert!(losses.iter().all(|(_, v)| *v == 0.0), "{losses:?}");

    // Growth after the first scrapes: a kernel loss and 2 GB from frontend to postgres.
    kernel[KernelCounter::Packets as usize] = 150;
    kernel[KernelCounter::LostMapFull as usize] = 9;
    m.set_kernel_counters(&kernel);
    m.observe_flow(
        "shop",
        "frontend",
        "db",
        "postgres",
        1_400_000,
        2_000_000_000,
        Locality::InterNode,
        false,
    );
    prom.wait_for(
        r#"podflow_lost_packets_total{reason="lost_map_full"}"#,
        WAIT,
        one(9.0),
    )
    .expect("loss counter");

    let firing = |name: &str| format!(r#"ALERTS{{alertname="{name}",alertstate="firing"}}"#);
    let kernel_alert = prom
        .wait_for(&firing("PodflowKernelLosses"), WAIT, |r| !r.is_empty())
        .expect("PodflowKernelLosses fires");
    assert_eq!(kernel_alert.len(), 1, "{kernel_alert:?}");
    assert_eq!(label(&kernel_alert[0].0, "reason"), "lost_map_full");

    let big = prom
        .wait_for(&firing("PodflowLargeWorkloadTransfer"), WAIT, |r| {
            !r.is_empty()
        })
        .expect("PodflowLargeWorkloadTransfer fires");
    // Only the pair that moved > 1 GB, not frontend -> backend (1.5 kB).
    assert_eq!(big.len(), 1, "{big:?}");
    assert_eq!(label(&big[0].0, "src_workload"), "frontend");
    assert_eq!(label(&big[0].0, "dst_namespace"), "db");
    assert_eq!(label(&big[0].0, "dst_workload"), "postgres");

    // Plaintext inter-node traffic on a node with a WireGuard interface: pending (for: 1m).
    let plain = prom
        .wait_for(
            r#"ALERTS{alertname="PodflowPlaintextInterNodeTraffic"}"#,
            WAIT,
            |r| !r.is_empty(),
        )
        .expect("PodflowPlaintextInterNodeTraffic pending");
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(label(&plain[0].0, "dst_workload"), "postgres");

    // Nothing else is alerting.
    let all = prom.query("ALERTS").expect("alerts");
    let mut names: Vec<&str> = all.iter().map(|(l, _)| label(l, "alertname")).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "PodflowKernelLosses",
            "PodflowLargeWorkloadTransfer",
            "PodflowPlaintextInterNodeTraffic"
        ],
        "{all:?}"
    );

    drop(prom);
    let _ = stop.send(());
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await })
        .expect("server stops")
        .expect("server task")
        .expect("server result");
}
