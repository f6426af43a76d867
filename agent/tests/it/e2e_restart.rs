//! Restarts lose nothing (issue 17 item 3): agents with `--pin-dir` on a BPF file system the test
//! mounts, exporting to a real collector. Datagrams sent before a `kill -9`, while no agent runs,
//! after a SIGTERM and before the next agent starts are all counted, exactly once, in both attach
//! modes; one program per hook after each restart; what cannot be adopted (another map layout) is
//! a declared gap; `podflow cleanup` removes what is left. Privileged (root).
use std::{net::UdpSocket, time::Duration};

use crate::support::{
    BIN,
    agent::{Agent, Tuple, tail, totals},
    capture::{Bpffs, podflow_programs},
    export::ChildCollector,
    privileged,
};
use podflow_testbed::{Node, unique_prefix, wait_for};
use serde_json::Value;

/// `n` datagrams of 100 bytes from pod a's port 40100 to pod b's port 9100.
fn send(node: &Node, n: usize) {
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);
    node.pod("a")
        .unwrap()
        .ns
        .run(move || {
            let sock = UdpSocket::bind((a, 40_100)).expect("bind");
            for _ in 0..n {
                sock.send_to(&[1u8; 100], (b, 9100)).expect("send");
                std::thread::sleep(Duration::from_micros(500));
            }
        })
        .expect("sender");
}

fn losses(events: &[Value], reason: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["loss"]["reason"] == reason)
        .cloned()
        .collect()
}

fn one_program_per_hook(node: &Node, veths: &[&str], what: &str) {
    let progs = podflow_programs(&node.ns);
    let mut hooks: Vec<(String, String)> =
        progs.iter().map(|p| (p.0.clone(), p.1.clone())).collect();
    hooks.dedup();
    assert_eq!(
        hooks.len(),
        progs.len(),
        "{what}: two podflow programs on a hook: {progs:?}"
    );
    assert_eq!(progs.len(), 2 * veths.len(), "{what}: {progs:?}");
}

#[test]
fn kill9_and_sigterm_restarts_lose_nothing() {
    if !privileged() {
        return;
    }
    for mode in ["tcx", "netlink"] {
        let bpffs = Bpffs::mount();
        let pin_dir = bpffs.pin_dir();
        let pin = pin_dir.to_str().unwrap();
        let dir = tempfile::tempdir().expect("tempdir");
        let csock = dir.path().join("collector.sock");
        let _collector = ChildCollector::on_socket(&csock);
        let csock_s = csock.to_str().unwrap();

        let p = unique_prefix("k");
        let mut node = Node::new(&p, 71).expect("node");
        let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
        node.add_pod("a", &va).expect("a");
        node.add_pod("b", &vb).expect("b");
        let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);
        // A flush interval longer than the test: nothing is drained before a kill, so what the
        // datagrams add up to can only come from maps adopted across the restarts.
        let args = |flush: &'static str| {
            [
                "--attach-mode",
                mode,
                "--pin-dir",
                pin,
                "--collector",
                csock_s,
                "--export-linger",
                "100ms",
                "--flush-interval",
                flush,
            ]
        };

        let first = Agent::start_named(&node, "node-k", &args("60s"));
        first.wait_attached(&[&va, &vb], Duration::from_secs(10));
        send(&node, 100);
        std::thread::sleep(Duration::from_millis(500));
        first.signal(libc::SIGKILL);
        drop(first);
        // No agent: the pinned programs count on.
        send(&node, 100);

        let mut second = Agent::start_named(&node, "node-k", &args("60s"));
        second.wait_attached(&[&va, &vb], Duration::from_secs(10));
        one_program_per_hook(&node, &[&va, &vb], &format!("{mode}: after kill -9"));
        send(&node, 100);
        // SIGTERM: a last drain, exported; the programs stay attached for the next agent.
        let st = second.terminate();
        assert!(st.success(), "{mode}: exit {st}");
        assert_eq!(
            podflow_programs(&node.ns).len(),
            4,
            "{mode}: the programs stay after SIGTERM"
        );
        send(&node, 100);

        let mut third = Agent::start_named(&node, "node-k", &args("1s"));
        third.wait_attached(&[&va, &vb], Duration::from_secs(10));
        one_program_per_hook(&node, &[&va, &vb], &format!("{mode}: after SIGTERM"));

        // 400 datagrams of 128 IP bytes, each counted once, whichever agent drained it.
        let t = Tuple::new(a, b, "UDP", 40_100, 9100);
        let got = wait_for(Duration::from_secs(20), Duration::from_millis(250), || {
            let (p, by, _) = totals(&tail(&csock, &[]), &t);
            (p >= 400).then_some((p, by))
        });
        std::thread::sleep(Duration::from_millis(2500));
        let events = tail(&csock, &[]);
        let (p, by, recs) = totals(&events, &t);
        assert_eq!(
            (p, by),
            (400, 400 * 128),
            "{mode}: first seen {got:?}; records {recs:#?}"
        );
        // Counts came through adoption, not a gap; netlink mode declares its filter swaps.
        assert!(losses(&events, "agent_restart_gap").is_empty(), "{mode}");
        let swaps = losses(&events, "reattach_gap");
        if mode == "netlink" {
            assert!(!swaps.is_empty(), "netlink: filter swaps are declared");
            for s in &swaps {
                println!("netlink filter swap: {}", s["loss"]);
                assert_eq!(s["loss"]["unit"], "nanoseconds", "{s}");
                assert!(
                    s["loss"]["from"].is_string() && s["loss"]["to"].is_string(),
                    "{s}"
                );
            }
        } else {
            assert!(swaps.is_empty(), "tcx swaps programs atomically: {swaps:?}");
        }

        let st = third.terminate();
        assert!(st.success(), "{mode}: exit {st}");
        let out = node
            .ns
            .command(BIN)
            .args(["cleanup", "--pin-dir", pin])
            .output()
            .expect("cleanup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            podflow_programs(&node.ns),
            vec![],
            "{mode}: cleanup left programs"
        );
    }
}

#[test]
fn maps_of_another_layout_are_dropped_and_the_gap_declared() {
    if !privileged() {
        return;
    }
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.pin_dir();
    let pin = pin_dir.to_str().unwrap();
    let p = unique_prefix("l");
    let mut node = Node::new(&p, 72).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("a");
    node.add_pod("b", &vb).expect("b");
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);

    let first = Agent::start(
        &node,
        &[
            "--pin-dir",
            pin,
            "--flow-map-entries",
            "4096",
            "--flush-interval",
            "60s",
        ],
    );
    first.wait_attached(&[&va, &vb], Duration::from_secs(10));
    send(&node, 50);
    first.signal(libc::SIGKILL);
    drop(first);

    let second = Agent::start(&node, &["--pin-dir", pin, "--flow-map-entries", "8192"]);
    second.wait_attached(&[&va, &vb], Duration::from_secs(10));
    one_program_per_hook(&node, &[&va, &vb], "after a layout change");
    send(&node, 10);
    let t = Tuple::new(a, b, "UDP", 40_100, 9100);
    let events = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        let events = second.flows(&[]);
        let (p, _, _) = totals(&events, &t);
        (p >= 10 && !losses(&events, "agent_restart_gap").is_empty()).then_some(events)
    })
    .unwrap_or_else(|| panic!("no gap or no flows: {:#?}", second.flows(&[])));
    // The 50 datagrams counted into the dropped maps are not counted: they are the gap.
    assert_eq!(totals(&events, &t).0, 10);
    let gap = &losses(&events, "agent_restart_gap")[0]["loss"];
    assert_eq!(gap["unit"], "nanoseconds", "{gap}");
    assert!(gap["count"].as_u64().unwrap_or(0) > 0, "{gap}");
    assert!(gap["from"].as_str() < gap["to"].as_str(), "{gap}");
    // Only the current layout is left.
    let ns_dirs: Vec<_> = std::fs::read_dir(&pin_dir)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ns_dirs.len(), 1, "{ns_dirs:?}");
    assert!(ns_dirs[0].contains("-8192-"), "{ns_dirs:?}");
}
