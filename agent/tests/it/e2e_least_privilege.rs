//! The deployment's privilege story, end to end: the real agent, started with exactly the
//! capabilities the DaemonSet grants (root's other capabilities dropped with `setpriv`), attaches
//! and counts exactly; with any one of them dropped it exits with an error that names it. And a
//! real Prometheus server scrapes a running agent's metrics endpoint. Privileged (root).
use std::{net::SocketAddr, time::Duration};

use crate::support::prometheus::Prometheus;
use crate::support::{
    agent::{Agent, Tuple, expect_totals},
    capture::{Bpffs, podflow_programs},
    privileged,
};
use podflow::privileges::required_capabilities;
use podflow_testbed::{Node, unique_prefix, wait_for};

/// `setpriv` arguments that leave exactly `caps` (names like "CAP_BPF") to the agent: as root,
/// the permitted and effective sets after exec are the bounding set.
fn setpriv_with(caps: &[&str]) -> Vec<String> {
    let keep: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", keep.join(",")),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

fn manifest_caps() -> Vec<&'static str> {
    required_capabilities()
        .iter()
        .map(|(name, _)| *name)
        .collect()
}

#[test]
fn agent_works_with_only_the_manifest_capabilities() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("l");
    let mut node = Node::new(&p, 67).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("a");
    node.add_pod("b", &vb).expect("b");
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);

    let wrapper = setpriv_with(&manifest_caps());
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    // Every feature on, drops and the smoothed RTT too (BTF tracepoints: CAP_BPF and CAP_PERFMON,
    // no CAP_SYS_ADMIN).
    let mut agent = Agent::start_wrapped(&node, "e2e-node", &wrapper, &["--drops", "--tcp-rtt"]);
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));
    for refused in [
        "cannot follow the kernel's drops",
        "cannot read the sockets' smoothed RTT",
    ] {
        assert!(!agent.log_text().contains(refused), "{}", agent.log_text());
    }
    // Really running with only those: CapEff of the agent process.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let capeff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff");
    let want: u64 = required_capabilities()
        .iter()
        .map(|(_, bit)| 1u64 << bit)
        .sum();
    assert_eq!(
        capeff, want,
        "agent CapEff {capeff:#x}, manifest grants {want:#x}"
    );

    node.pod("a")
        .unwrap()
        .ns
        .exec(
            "ping",
            &["-c", "4", "-i", "0.2", "-W", "2", "-q", &b.to_string()],
        )
        .expect("ping");
    expect_totals(&agent, &Tuple::new(a, b, "ICMP", 8, 0), (4, 4 * 84));
    expect_totals(&agent, &Tuple::new(b, a, "ICMP", 0, 0), (4, 4 * 84));

    let st = agent.terminate();
    assert!(st.success(), "exit {st}; log:\n{}", agent.log_text());
    assert_eq!(
        podflow_programs(&node.ns),
        vec![],
        "programs left after SIGTERM"
    );

    // The manifest's --pin-dir works with these capabilities too: pin, and take over after a
    // kill -9 (BPF_OBJ_GET, BPF_LINK_UPDATE), with what was counted meanwhile.
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.pin_dir();
    let pin = [
        "--pin-dir",
        pin_dir.to_str().unwrap(),
        "--flush-interval",
        "60s",
    ];
    let first = Agent::start_wrapped(&node, "e2e-node", &wrapper, &pin);
    first.wait_attached(&[&va, &vb], Duration::from_secs(10));
    let ping = |count: &str| {
        node.pod("a")
            .unwrap()
            .ns
            .exec(
                "ping",
                &["-c", count, "-i", "0.2", "-W", "2", "-q", &b.to_string()],
            )
            .expect("ping");
    };
    ping("3");
    first.signal(libc::SIGKILL);
    drop(first);
    let second = Agent::start_wrapped(
        &node,
        "e2e-node",
        &wrapper,
        &["--pin-dir", pin_dir.to_str().unwrap()],
    );
    second.wait_attached(&[&va, &vb], Duration::from_secs(10));
    assert_eq!(podflow_programs(&node.ns).len(), 4, "one program per hook");
    ping("2");
    expect_totals(&second, &Tuple::new(a, b, "ICMP", 8, 0), (5, 5 * 84));
}

#[test]
fn agent_names_the_missing_capability() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("n");
    let mut node = Node::new(&p, 68).expect("node");
    node.add_pod("a", &format!("veth{p}a")).expect("a");
    for missing in manifest_caps() {
        let rest: Vec<&str> = manifest_caps()
            .into_iter()
            .filter(|c| *c != missing)
            .collect();
        let wrapper = setpriv_with(&rest);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut agent = Agent::start_wrapped(&node, "e2e-node", &wrapper, &[]);
        let st = agent.wait_exit(Duration::from_secs(10));
        assert!(!st.success(), "agent without {missing} should fail");
        let log = agent.log_text();
        assert!(
            log.contains(&format!("missing capability {missing}")),
            "error does not name {missing}:\n{log}"
        );
        assert!(
            podflow_programs(&node.ns).is_empty(),
            "nothing attached without {missing}"
        );
    }
}

#[test]
fn prometheus_scrapes_a_running_agent() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("s");
    let mut node = Node::new(&p, 69).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("a");
    node.add_pod("b", &vb).expect("b");
    let b = node.pod("b").unwrap().ipv4;
    // The metrics listener lives in the node namespace, so Prometheus runs there too.
    let metrics: SocketAddr = "127.0.0.1:9464".parse().expect("addr");
    let agent = Agent::start(&node, &["--metrics-listen", &metrics.to_string()]);
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));
    node.pod("a")
        .unwrap()
        .ns
        .exec(
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "2", "-q", &b.to_string()],
        )
        .expect("ping");

    let prom = Prometheus::start_in(Some(node.ns.name()), &[metrics], &[]).expect("prometheus");
    let found = wait_for(Duration::from_secs(30), Duration::from_millis(500), || {
        let veths = prom
            .query(r#"podflow_interfaces_attached{kind="veth"}"#)
            .ok()?;
        let packets = prom.query("sum(podflow_flow_packets_total)").ok()?;
        let lost = prom
            .query(r#"podflow_lost_packets_total{reason="lost_map_full"}"#)
            .ok()?;
        let v = |s: &[crate::support::prometheus::Sample]| s.first().map(|x| x.1);
        // 3 requests + 3 replies, at least (neighbour traffic is off in the testbed).
        (v(&veths) == Some(2.0) && v(&packets) >= Some(6.0) && v(&lost) == Some(0.0)).then_some(())
    });
    assert!(
        found.is_some(),
        "series missing; last query results: veths {:?}, packets {:?}; prometheus log:\n{}",
        prom.query(r#"podflow_interfaces_attached{kind="veth"}"#),
        prom.query("sum(podflow_flow_packets_total)"),
        prom.log()
    );
    agent.assert_running();
}
