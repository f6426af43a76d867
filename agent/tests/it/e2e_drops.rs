//! End-to-end drops: packets the node's kernel drops, caused here in the test's own namespaces,
//! end up on their flows' records with the kernel's reason and where: a firewall rule in the
//! node's forward chain (NETFILTER_DROP: the record no longer claims the destination's veth), a
//! route that goes nowhere (unreachable, in the node's namespace: NOT_SPECIFIED, as the kernel
//! says), a pod's full socket buffer (SOCKET_RCVBUFF, in the pod: the packets did reach it). `tail --dropped` selects them. Privileged (root).
use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use podflow_testbed::{Node, unique_prefix, wait_for};
use serde_json::Value;

use crate::support::{
    agent::{Agent, tail},
    nft, privileged,
};

/// Sends `n` datagrams of `size` bytes from pod `from` (source port `sport`) to `to`.
fn send(node: &Node, from: &str, sport: u16, to: SocketAddr, n: usize, size: usize) {
    node.pod(from)
        .expect("pod")
        .ns
        .run(move || {
            let s = UdpSocket::bind(("0.0.0.0", sport)).expect("bind");
            for _ in 0..n {
                let _ = s.send_to(&vec![0x42; size], to);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .expect("sender");
}

fn record(records: &[Value], sport: u16) -> Option<Value> {
    records
        .iter()
        .find(|r| r["src_port"] == sport && r["dropped_packets"].is_u64())
        .cloned()
}

#[test]
fn dropped_packets_carry_the_kernels_reason_and_where() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("x");
    let mut node = Node::new(&p, 75).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("a");
    node.add_pod("b", &vb).expect("b");
    let b = node.pod("b").unwrap().ipv4;
    // A firewall rule in the node: UDP to port 7000 is dropped on its way through.
    let rules = "table inet pf {\n chain forward_drop {\n  type filter hook forward priority 0;\n  \
                 udp dport 7000 drop\n }\n}\n";
    nft(&node.ns, rules);
    // A prefix of the node's own pod range that goes nowhere.
    node.ns
        .ip(&["route", "add", "unreachable", "10.75.200.0/24"])
        .expect("unreachable route");
    // B's socket on 7002 with the smallest receive buffer, never read.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = node
        .pod("b")
        .unwrap()
        .ns
        .spawn(move || {
            let s = UdpSocket::bind(("0.0.0.0", 7002)).expect("bind 7002");
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with an int of its size on an open socket.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    std::ptr::from_ref(&one).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            ready_tx.send(()).expect("ready");
            let _ = done_rx.recv_timeout(Duration::from_secs(60));
            drop(s);
        })
        .expect("holder");
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("socket ready");

    let agent = Agent::start(&node, &["--drops"]);
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));
    send(&node, "a", 41000, SocketAddr::from((b, 7000)), 20, 100);
    send(
        &node,
        "a",
        41001,
        "10.75.200.1:7001".parse().unwrap(),
        5,
        100,
    );
    send(&node, "a", 41002, SocketAddr::from((b, 7002)), 200, 1000);

    let mut records = Vec::new();
    let found = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        records = agent.flows(&[]);
        [41000, 41001, 41002]
            .iter()
            .all(|&p| record(&records, p).is_some())
            .then_some(())
    });
    let _ = done_tx.send(());
    holder.join().expect("holder");
    assert!(found.is_some(), "drops missing: {records:#?}");

    // The firewall: every packet dropped in the node, with its reason; the record lists only
    // the veth the packets were seen on.
    let fw = record(&records, 41000).unwrap();
    assert_eq!(fw["packets"], 20, "{fw}");
    assert_eq!(fw["dropped_packets"], 20, "{fw}");
    assert_eq!(fw["dropped_bytes"], 20 * (20 + 8 + 100), "{fw}");
    assert_eq!(fw["drop_reason"], "NETFILTER_DROP", "{fw}");
    assert_eq!(fw["dropped_in_node"], true, "{fw}");
    assert_eq!(fw["interfaces"], serde_json::json!([va]), "{fw}");
    // No route: dropped in the node too.
    let nr = record(&records, 41001).unwrap();
    assert_eq!(
        (nr["packets"].clone(), nr["dropped_packets"].clone()),
        (Value::from(5), Value::from(5)),
        "{nr}"
    );
    assert_eq!(nr["dropped_in_node"], true, "{nr}");
    // The kernel's own word: an unreachable route ends in ip_error(), which frees the packet
    // with kfree_skb() and no reason on 6.18.
    assert_eq!(nr["drop_reason"], "NOT_SPECIFIED", "{nr}");
    // The full socket buffer: in the pod; the packets got there (B's veth stays listed).
    let full = record(&records, 41002).unwrap();
    assert_eq!(full["packets"], 200, "{full}");
    let dropped = full["dropped_packets"].as_u64().unwrap();
    assert!((150..=200).contains(&dropped), "{full}");
    assert_eq!(full["drop_reason"], "SOCKET_RCVBUFF", "{full}");
    assert!(full["dropped_in_node"].is_null(), "{full}");
    assert_eq!(full["interfaces"], serde_json::json!([va, vb]), "{full}");

    // tail --dropped: exactly the flows with drops.
    let only = tail(&agent.sock, &["--dropped"]);
    assert!(!only.is_empty() && only.iter().all(|r| r["dropped_packets"].as_u64() > Some(0)));
    let compact = std::process::Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["tail", "-o", "compact", "--dropped", "--server"])
        .arg(&agent.sock)
        .output()
        .expect("tail");
    let text = String::from_utf8_lossy(&compact.stdout);
    assert!(
        text.contains("DROPPED 20 pkts in the node (NETFILTER_DROP)"),
        "{text}"
    );
    assert!(agent.counter("dropped_packets_attached") >= 20 + 5 + 150);
}
