//! Privileged: attaching to pod veths in a test node namespace (tcx and netlink modes), link events,
//! restarts after SIGKILL, and leaving foreign programs alone.
//!
//! Run as root: `cargo test -p podflow --test capture_attach` (or `cargo xtask test`).
use std::time::{Duration, Instant};

use crate::support::{
    capture::{CaptureThread, assert_one_each, attached_programs, count_progs, node_with_pods},
    privileged,
};
use podflow::capture::{
    AttachMode, AttachModePref, CaptureConfig, IfaceKind, InterfaceChange, LinkEvent, LinkWatcher,
};
use podflow_testbed::{Netns, wait_for};

fn cfg(mode: AttachModePref) -> CaptureConfig {
    CaptureConfig {
        veth_patterns: vec!["pfv*".into()],
        l3_patterns: vec!["pfwg*".into()],
        exclude_patterns: vec!["pfvx*".into()],
        attach_mode: mode,
        flow_map_entries: 4096,
        sample_rate: 1,
        pin_dir: None,
        dns_port: 53,
        handshakes: true,
        tracepoints: false,
        conntrack: false,
    }
}

fn assert_none(node: &Netns, dev: &str) {
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
    if !privileged() {
        return;
    }
    let mut node = node_with_pods("pfat", "pfv", 3);
    // A non-matching veth (excluded by pattern) and a non-matching name.
    node.add_pod("x", "pfvx0").expect("pod x");
    node.add_pod("y", "other0").expect("pod y");
    let ns = &node.ns;
    // Link-layer type decides too: a TUN device (ARPHRD_NONE, like wireguard-go's) matching the
    // L3 patterns gets the L3 programs; one matching only the veth patterns gets nothing; an
    // Ethernet device matching only the L3 patterns gets nothing.
    ns.add_tun("pfwg0").expect("tun");
    ns.add_tun("pfvtun0").expect("tun");
    ns.ip(&[
        "link", "add", "pfwgeth0", "type", "veth", "peer", "name", "pfwgeth1",
    ])
    .expect("veth");
    // A foreign filter that must survive everything.
    ns.add_foreign_filter("pfv0", "ingress", 100)
        .expect("foreign filter");

    let t = CaptureThread::load(ns, cfg(AttachModePref::Tcx));
    assert_eq!(t.with(|c| c.flow_map_capacity()), 4096);
    let changes = t.with(|c| c.sync_interfaces().expect("sync"));
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
    assert_one_each(ns, &["pfv0", "pfv1", "pfv2"], "tcx");
    for dev in ["pfvx0", "other0", "pfvtun0", "pfwgeth0", "pfwgeth1"] {
        assert_none(ns, dev);
    }
    let progs = attached_programs(ns);
    for (dir, prefix) in [
        ("ingress", "podflow_l3_in"),
        ("egress", "podflow_l3_eg"),
        ("ingress", "podflow_"),
        ("egress", "podflow_"),
    ] {
        assert_eq!(
            count_progs(&progs, "pfwg0", dir, prefix),
            1,
            "{dir} {prefix}: {progs:#?}"
        );
    }
    // The foreign filter is still there next to ours.
    assert!(
        ns.tc_filters("pfv0", "ingress")
            .expect("tc filter show")
            .contains("u32")
    );
    // A second sync changes nothing.
    assert!(t.with(|c| c.sync_interfaces().expect("sync2")).is_empty());
    assert_one_each(ns, &["pfv0", "pfv1", "pfv2"], "tcx");
    let idx0 = node.pod("pod0").expect("pod0").host_ifindex;
    assert_eq!(
        t.with(move |c| c.interface_name(idx0)).as_deref(),
        Some("pfv0")
    );

    // Link events: a pod created later is attached within 1 s; a removed one is forgotten.
    // The watcher runs on its own thread in the node namespace (as the agent's tokio task would)
    // and forwards events; the capture thread applies them.
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<LinkEvent>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let watcher = ns
        .spawn(move || {
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
        })
        .expect("watcher thread");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("watcher ready");
    let mut seen: Vec<LinkEvent> = Vec::new();
    let pump = |t: &CaptureThread, seen: &mut Vec<LinkEvent>| -> Vec<String> {
        let evs: Vec<LinkEvent> = ev_rx.try_iter().collect();
        seen.extend(evs.iter().cloned());
        t.with(move |c| {
            for ev in evs {
                c.handle_link_event(ev).expect("a link event must not fail");
            }
            c.interfaces().into_iter().map(|i| i.name).collect()
        })
    };

    let created = Instant::now();
    node.add_pod("pod3", "pfv3").expect("pod3");
    let ok = wait_for(Duration::from_secs(1), Duration::from_millis(10), || {
        pump(&t, &mut seen)
            .iter()
            .any(|n| n == "pfv3")
            .then_some(())
    })
    .is_some();
    assert!(
        ok,
        "pfv3 not attached within 1 s of its creation; events: {seen:?}"
    );
    eprintln!("pfv3 attached {:?} after its creation", created.elapsed());
    assert_one_each(&node.ns, &["pfv3"], "tcx");

    // Remove pod1 (deleting its namespace deletes the veth pair).
    let idx1 = node.pod("pod1").expect("pod1").host_ifindex;
    node.remove_pod("pod1").expect("remove pod1");
    let ok = wait_for(Duration::from_secs(2), Duration::from_millis(10), || {
        (!pump(&t, &mut seen).iter().any(|n| n == "pfv1")).then_some(())
    })
    .is_some();
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
        t.with(move |c| c.interface_name(idx1)).as_deref(),
        Some("pfv1")
    );
    drop(ev_rx);
    let ns = &node.ns;
    // The watcher notices the closed channel at its next event; make one (in the node ns).
    ns.ip(&[
        "link", "add", "pfdm0", "type", "veth", "peer", "name", "pfdm1",
    ])
    .expect("veth");
    watcher.join().expect("watcher thread");
    // A full resync agrees.
    assert!(t.with(|c| c.sync_interfaces().expect("sync3")).is_empty());

    // detach_all: ours go, the foreign u32 filter stays.
    t.with(|c| c.detach_all());
    for dev in ["pfv0", "pfv2", "pfv3", "pfwg0"] {
        assert_none(ns, dev);
    }
    let f = ns.tc_filters("pfv0", "ingress").expect("tc filter show");
    assert!(f.contains("u32"), "foreign filter gone: {f}");
    assert!(t.with(|c| c.interfaces()).is_empty());
    drop(t);
}
