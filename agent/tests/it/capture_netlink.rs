//! Privileged: netlink (clsact + cls_bpf) mode, restart after SIGKILL (stale filters are replaced,
//! exactly one podflow program per interface and direction), foreign filters left alone.
//!
//! Run as root: `cargo test -p podflow --test capture_netlink`.
use std::{
    io::{BufRead as _, BufReader},
    time::Duration,
};

use crate::support::{
    capture::{CaptureThread, assert_one_each, attached_programs, count_progs, node_with_pods},
    one_test, privileged, this_binary,
};
use podflow::capture::{AttachMode, AttachModePref, Capture, CaptureConfig, InterfaceChange};
use podflow_testbed::Netns;

const CHILD_ENV: &str = "PODFLOW_TEST_CAPTURE_CHILD";

fn cfg(mode: AttachModePref) -> CaptureConfig {
    CaptureConfig {
        veth_patterns: vec!["pfn*".into()],
        l3_patterns: vec![],
        exclude_patterns: vec![],
        attach_mode: mode,
        flow_map_entries: 1024,
        sample_rate: 1,
        pin_dir: None,
        dns_port: 53,
        handshakes: true,
        tracepoints: false,
        conntrack: false,
    }
}

/// Not a test on its own: the child process of the SIGKILL test. With `PODFLOW_TEST_CAPTURE_CHILD`
/// set (to the attach mode), it loads a capture, attaches, prints READY and waits to be killed.
#[test]
fn capture_child_helper() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = if mode == "tcx" {
        AttachModePref::Tcx
    } else {
        AttachModePref::Netlink
    };
    let mut cap = Capture::load(cfg(mode)).expect("child load");
    let n = cap.sync_interfaces().expect("child sync").len();
    println!("READY {n}");
    std::thread::sleep(Duration::from_secs(60));
    drop(cap);
}

/// Runs the child helper in `node` with `mode`, waits for READY and SIGKILLs it: its tcx links
/// die with it, its cls_bpf filters stay behind (as after `kill -9` of a real agent).
fn run_and_kill_child(node: &Netns, mode: &str) -> usize {
    let mut child = node
        .command(&this_binary().to_string_lossy())
        .args(one_test("capture_netlink::capture_child_helper"))
        .env(CHILD_ENV, mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test capture_child_helper ... " before it, on the same line.
            if let Some(n) = line.split("READY ").nth(1) {
                let _ = tx.send(n.trim().parse::<usize>().unwrap_or(0));
                return;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    // `ip netns exec` execs the test binary, so the child pid is the capture process.
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    ready.expect("child never became ready")
}

fn podflow_counts(node: &Netns, devs: &[&str]) -> Vec<(String, usize, usize)> {
    let progs = attached_programs(node);
    devs.iter()
        .map(|d| {
            (
                d.to_string(),
                count_progs(&progs, d, "ingress", "podflow_"),
                count_progs(&progs, d, "egress", "podflow_"),
            )
        })
        .collect()
}

/// Whether the foreign `u32` filter is still on `dev`'s `direction`.
fn foreign_filter_on(node: &Netns, dev: &str, direction: &str) -> bool {
    node.tc_filters(dev, direction)
        .expect("tc filter show")
        .contains("u32")
}

#[test]
fn capture_netlink_restart_after_sigkill() {
    if !privileged() {
        return;
    }
    let testbed = node_with_pods("pfnl", "pfn", 2);
    let node = &testbed.ns;
    let devs = ["pfn0", "pfn1"];
    // Foreign cls filters on both directions of pfn0, before and after ours.
    for dir in ["ingress", "egress"] {
        node.add_foreign_filter("pfn0", dir, 100)
            .expect("foreign filter");
    }

    // 1. An instance attaches in netlink mode and is SIGKILLed: its filters stay.
    assert_eq!(run_and_kill_child(node, "netlink"), 2);
    assert_eq!(
        podflow_counts(node, &devs),
        [("pfn0".to_string(), 1, 1), ("pfn1".to_string(), 1, 1)],
        "stale filters expected after SIGKILL"
    );
    let stale_ids: Vec<u32> = attached_programs(node)
        .iter()
        .filter(|p| p.name.starts_with("podflow_"))
        .map(|p| p.prog_id)
        .collect();

    // 2. A new instance in netlink mode: stale filters replaced, exactly one of ours per hook.
    let (tx_done, rx_done) = std::sync::mpsc::channel::<()>();
    let (tx_checked, rx_checked) = std::sync::mpsc::channel::<()>();
    let h = node
        .spawn(move || {
            let mut cap = Capture::load(cfg(AttachModePref::Netlink)).expect("load");
            let changes = cap.sync_interfaces().expect("sync");
            assert_eq!(changes.len(), 2, "{changes:?}");
            for c in &changes {
                let InterfaceChange::Attached(i) = c else {
                    panic!("{c:?}")
                };
                assert_eq!(i.mode, AttachMode::Netlink);
            }
            tx_done.send(()).expect("send");
            rx_checked
                .recv_timeout(Duration::from_secs(30))
                .expect("checked");
            // 3. SIGTERM path: detach exactly ours.
            cap.detach_all();
            assert!(cap.interfaces().is_empty());
            tx_done.send(()).expect("send");
            rx_checked
                .recv_timeout(Duration::from_secs(30))
                .expect("checked");
            drop(cap);
        })
        .expect("capture thread");
    rx_done
        .recv_timeout(Duration::from_secs(30))
        .expect("attached");
    assert_one_each(node, &devs, "tc");
    let new_ids: Vec<u32> = attached_programs(node)
        .iter()
        .filter(|p| p.name.starts_with("podflow_"))
        .map(|p| p.prog_id)
        .collect();
    assert!(
        new_ids.iter().all(|id| !stale_ids.contains(id)),
        "stale {stale_ids:?} new {new_ids:?}"
    );
    for dir in ["ingress", "egress"] {
        assert!(
            foreign_filter_on(node, "pfn0", dir),
            "foreign {dir} filter gone"
        );
    }
    tx_checked.send(()).expect("send");
    rx_done
        .recv_timeout(Duration::from_secs(30))
        .expect("detached");
    assert_eq!(
        podflow_counts(node, &devs),
        [("pfn0".to_string(), 0, 0), ("pfn1".to_string(), 0, 0)]
    );
    for dir in ["ingress", "egress"] {
        assert!(
            foreign_filter_on(node, "pfn0", dir),
            "foreign {dir} filter gone"
        );
    }
    // The clsact qdisc stays (podflow never deletes a qdisc).
    let q = node
        .exec("tc", &["qdisc", "show", "dev", "pfn1"])
        .expect("tc qdisc show");
    assert!(q.contains("clsact"), "{q}");
    tx_checked.send(()).expect("send");
    h.join().expect("capture thread");
}

#[test]
fn capture_tcx_restart_after_netlink_sigkill() {
    if !privileged() {
        return;
    }
    let testbed = node_with_pods("pfnt", "pfn", 2);
    let node = &testbed.ns;
    let devs = ["pfn0", "pfn1"];
    node.add_foreign_filter("pfn1", "ingress", 100)
        .expect("foreign filter");
    // A netlink-mode instance dies, then a tcx-mode one (e.g. after an upgrade) starts: the stale
    // cls_bpf filters must go, leaving one podflow program (tcx) per hook.
    assert_eq!(run_and_kill_child(node, "netlink"), 2);
    assert_eq!(
        podflow_counts(node, &devs),
        [("pfn0".to_string(), 1, 1), ("pfn1".to_string(), 1, 1)]
    );
    let t = CaptureThread::load(node, cfg(AttachModePref::Tcx));
    assert_eq!(t.with(|c| c.sync_interfaces().expect("sync").len()), 2);
    assert_one_each(node, &devs, "tcx");
    assert!(foreign_filter_on(node, "pfn1", "ingress"));
    t.with(|c| c.detach_all());
    assert_eq!(
        podflow_counts(node, &devs),
        [("pfn0".to_string(), 0, 0), ("pfn1".to_string(), 0, 0)]
    );
    assert!(foreign_filter_on(node, "pfn1", "ingress"));
    drop(t);
}

#[test]
fn capture_tcx_sigkill_leaves_nothing() {
    if !privileged() {
        return;
    }
    let node = node_with_pods("pfnk", "pfn", 1);
    assert_eq!(run_and_kill_child(&node.ns, "tcx"), 1);
    assert_eq!(
        podflow_counts(&node.ns, &["pfn0"]),
        [("pfn0".to_string(), 0, 0)]
    );
}
