//! Privileged: attaching to pod veths in a test node namespace (tcx and netlink modes), link events,
//! restarts after SIGKILL, and leaving foreign programs alone.
//!
//! Run as root: `cargo test -p podflow --test capture_attach` (or `cargo xtask test`).
#![expect(
    clippy::expect_used,
    reason = "a test fails by panicking, with a message"
)]

mod common;

use std::time::{Duration, Instant};

use common::netns::{
    NetNs, NsThread, add_foreign_filter, add_pod, add_tun, attached_programs, count_progs,
    node_with_pods, pod_addrs, require_root, tc_filters,
};
use podflow::capture::{
    AttachMode, AttachModePref, Capture, CaptureConfig, IfaceKind, InterfaceChange, LinkEvent,
    LinkWatcher,
};

fn cfg(mode: AttachModePref) -> CaptureConfig {
    CaptureConfig {
        veth_patterns: vec!["pfv*".into()],
        l3_patterns: vec!["pfwg*".into()],
        exclude_patterns: vec!["pfvx*".into()],
        attach_mode: mode,
        flow_map_entries: 4096,
        sample_rate: 1,
    }
}

/// Asserts that exactly one podflow program is attached per direction on each of `devs`.
fn assert_one_each(node: &NetNs, devs: &[&str], kind: &str) {
    let progs = attached_programs(node);
    for dev in devs {
        for (dir, name) in [
            ("ingress", "podflow_veth_in"),
            ("egress", "podflow_veth_eg"),
        ] {
            let n = count_progs(&progs, dev, dir, "podflow_");
            assert_eq!(
                n, 1,
                "{dev} {dir}: {n} podflow programs; bpftool: {progs:#?}"
            );
            let p = progs
                .iter()
                .find(|p| p.dev == *dev && p.direction == dir && p.name.starts_with("podflow_"))
                .unwrap_or_else(|| panic!("no podflow program on {dev} {dir}"));
            // bpftool shows the kernel's program name (truncated to 15 chars) or the filter name.
            assert!(
                name.starts_with(&p.name) || p.name.starts_with(name),
                "{p:?} vs {name}"
            );
            assert_eq!(p.kind, kind, "{p:?}");
        }
    }
}

fn assert_none(node: &NetNs, dev: &str) {
    let progs = attached_programs(node);
    for dir in ["ingress", "egress"] {
        assert_eq!(
            count_progs(&progs, dev, dir, "podflow_"),
            0,
            "{dev} {dir}: {progs:#?}"
        );
    }
}

#[test]
fn capture_attach_tcx_events_and_detach() {
    if !require_root() {
        return;
    }
    let (node, pods) = node_with_pods("pfat", "pfv", 3);
    // A non-matching veth (excluded by pattern) and a non-matching name.
    let (x4, x6) = pod_addrs(10);
    let _excluded = add_pod(&node, "pfat-x", "pfvx0", x4, x6);
    let (y4, y6) = pod_addrs(11);
    let _other = add_pod(&node, "pfat-y", "other0", y4, y6);
    // Link-layer type decides too: a TUN device (ARPHRD_NONE, like wireguard-go's) matching the
    // L3 patterns gets the L3 programs; one matching only the veth patterns gets nothing; an
    // Ethernet device matching only the L3 patterns gets nothing.
    add_tun(&node, "pfwg0");
    add_tun(&node, "pfvtun0");
    node.ip(&[
        "link", "add", "pfwgeth0", "type", "veth", "peer", "name", "pfwgeth1",
    ]);
    // A foreign filter that must survive everything.
    add_foreign_filter(&node, "pfv0", "ingress", 100);

    let t = NsThread::new(&node);
    t.run(|| {
        let cap = Capture::load(cfg(AttachModePref::Tcx)).expect("load");
        assert_eq!(cap.flow_map_capacity(), 4096);
        CAP.with(|c| *c.borrow_mut() = Some(cap));
    });
    let changes = t.run(|| with_cap(|c| c.sync_interfaces().expect("sync")));
    let mut attached: Vec<String> = changes
        .iter()
        .map(|c| match c {
            InterfaceChange::Attached(i) => {
                let kind = if i.name.starts_with("pfwg") {
                    IfaceKind::L3
                } else {
                    IfaceKind::Veth
                };
                assert_eq!(i.kind, kind, "{i:?}");
                assert_eq!(i.mode, AttachMode::Tcx);
                i.name.clone()
            }
            InterfaceChange::Detached(i) => panic!("unexpected detach {i:?}"),
        })
        .collect();
    attached.sort();
    assert_eq!(attached, ["pfv0", "pfv1", "pfv2", "pfwg0"]);
    assert_one_each(&node, &["pfv0", "pfv1", "pfv2"], "tcx");
    assert_none(&node, "pfvx0");
    assert_none(&node, "other0");
    assert_none(&node, "pfvtun0");
    assert_none(&node, "pfwgeth0");
    assert_none(&node, "pfwgeth1");
    let progs = attached_programs(&node);
    assert_eq!(
        count_progs(&progs, "pfwg0", "ingress", "podflow_l3_in"),
        1,
        "{progs:#?}"
    );
    assert_eq!(
        count_progs(&progs, "pfwg0", "egress", "podflow_l3_eg"),
        1,
        "{progs:#?}"
    );
    assert_eq!(
        count_progs(&progs, "pfwg0", "ingress", "podflow_"),
        1,
        "{progs:#?}"
    );
    assert_eq!(
        count_progs(&progs, "pfwg0", "egress", "podflow_"),
        1,
        "{progs:#?}"
    );
    // The foreign filter is still there next to ours.
    assert!(tc_filters(&node, "pfv0", "ingress").contains("u32"));
    // A second sync changes nothing.
    assert!(
        t.run(|| with_cap(|c| c.sync_interfaces().expect("sync2")))
            .is_empty()
    );
    assert_one_each(&node, &["pfv0", "pfv1", "pfv2"], "tcx");
    let idx0 = pods[0].host_ifindex;
    assert_eq!(
        t.run(move || with_cap(|c| c.interface_name(idx0)))
            .as_deref(),
        Some("pfv0")
    );

    // Link events: a pod created later is attached within 1 s; a removed one is forgotten.
    // The watcher runs on its own thread in the node namespace (as the agent's tokio task would)
    // and forwards events; the capture thread applies them.
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<LinkEvent>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let node_name = node.name().to_owned();
    let watcher = std::thread::spawn(move || {
        common::netns::enter_netns(&node_name).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut w = LinkWatcher::new().expect("watcher");
            ready_tx.send(()).expect("ready");
            // Ends when the test drops the receiver (send fails) or after 20 s.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, w.next()).await {
                if ev_tx.send(ev).is_err() {
                    break;
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("watcher ready");
    let mut seen: Vec<LinkEvent> = Vec::new();
    let pump = |t: &NsThread, seen: &mut Vec<LinkEvent>| -> Vec<String> {
        let evs: Vec<LinkEvent> = ev_rx.try_iter().collect();
        seen.extend(evs.iter().cloned());
        t.run(move || {
            with_cap(|c| {
                for ev in evs {
                    c.handle_link_event(ev).expect("a link event must not fail");
                }
                c.interfaces().into_iter().map(|i| i.name).collect()
            })
        })
    };

    let created = Instant::now();
    let (p4, p6) = pod_addrs(3);
    let pod3 = add_pod(&node, "pfat-pod3", "pfv3", p4, p6);
    let ok = common::netns::wait_until(Duration::from_secs(1), || {
        pump(&t, &mut seen).iter().any(|n| n == "pfv3")
    });
    assert!(
        ok,
        "pfv3 not attached within 1 s of its creation; events: {seen:?}"
    );
    eprintln!("pfv3 attached {:?} after its creation", created.elapsed());
    assert_one_each(&node, &["pfv3"], "tcx");

    // Remove pod1 (deleting its namespace deletes the veth pair).
    let idx1 = pods[1].host_ifindex;
    let mut pods = pods;
    drop(pods.remove(1));
    let ok = common::netns::wait_until(Duration::from_secs(2), || {
        !pump(&t, &mut seen).iter().any(|n| n == "pfv1")
    });
    assert!(ok, "pfv1 not forgotten; events: {seen:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, LinkEvent::Added { name, .. } if name == "pfv3"))
    );
    assert!(seen.iter().any(
        |e| matches!(e, LinkEvent::Removed { name, ifindex } if name == "pfv1" && *ifindex == idx1)
    ));
    // The name is still known for records of the gone interface.
    assert_eq!(
        t.run(move || with_cap(|c| c.interface_name(idx1)))
            .as_deref(),
        Some("pfv1")
    );
    drop(ev_rx);
    // The watcher notices the closed channel at its next event; make one (in the node ns).
    node.ip(&[
        "link", "add", "pfdm0", "type", "veth", "peer", "name", "pfdm1",
    ]);
    watcher.join().expect("watcher thread");
    // A full resync agrees.
    assert!(
        t.run(|| with_cap(|c| c.sync_interfaces().expect("sync3")))
            .is_empty()
    );

    // detach_all: ours go, the foreign matchall filter stays.
    t.run(|| with_cap(|c| c.detach_all()));
    for dev in ["pfv0", "pfv2", "pfv3", "pfwg0"] {
        assert_none(&node, dev);
    }
    let f = tc_filters(&node, "pfv0", "ingress");
    assert!(f.contains("u32"), "foreign filter gone: {f}");
    assert!(t.run(|| with_cap(|c| c.interfaces())).is_empty());
    t.run(|| CAP.with(|c| drop(c.borrow_mut().take())));
    drop(pod3);
}

thread_local! {
    /// The capture, owned by the node-namespace thread that loaded it.
    static CAP: std::cell::RefCell<Option<Capture>> = const { std::cell::RefCell::new(None) };
}

fn with_cap<R>(f: impl FnOnce(&mut Capture) -> R) -> R {
    CAP.with(|c| {
        f(c.borrow_mut()
            .as_mut()
            .expect("capture loaded on this thread"))
    })
}
