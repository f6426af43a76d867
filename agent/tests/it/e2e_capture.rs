//! End-to-end: a node namespace with pod namespaces behind veths, the real `podflow agent` running
//! inside the node namespace, known traffic, and exact packet and byte counts read back through
//! `podflow tail -o json`. Privileged (root): run with `cargo xtask test`.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use crate::support::{
    agent::{Agent, Tuple, expect_totals, proc_net_counter},
    capture::podflow_programs,
    privileged,
};
use podflow_testbed::{Node, unique_prefix, wait_for};

/// ICMP echo: 56 bytes of payload + 8 ICMP + 20 IPv4 = 84 bytes per packet.
const PING_V4_BYTES: u64 = 84;
/// ICMPv6 echo: 56 + 8 + 40 = 104 bytes per packet.
const PING_V6_BYTES: u64 = 104;

fn ping(node: &Node, from: &str, to: &str, count: u32, v6: bool) {
    let pod = node.pod(from).expect("pod");
    let count = count.to_string();
    let mut args = vec!["-c", &count, "-i", "0.2", "-W", "2", "-q"];
    if v6 {
        args.insert(0, "-6");
    }
    args.push(to);
    pod.ns.exec("ping", &args).expect("ping");
}

#[test]
fn pod_traffic_is_counted_exactly() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("e");
    let mut node = Node::new(&p, 61).expect("node");
    let (va, vb, vc, vd) = (
        format!("veth{p}a"),
        format!("veth{p}b"),
        format!("veth{p}c"),
        format!("veth{p}d"),
    );
    node.add_pod("a", &va).expect("pod a");
    node.add_pod("b", &vb).expect("pod b");
    node.add_pod("c", &vc).expect("pod c");
    // An interface that matches no pattern: never attached.
    let other = format!("other{p}");
    node.ns
        .ip(&[
            "link",
            "add",
            &other,
            "type",
            "veth",
            "peer",
            "name",
            &format!("o{p}"),
        ])
        .expect("other veth");
    // Another tool's tc filter (a classic-BPF cls_bpf filter that lets everything through),
    // which must survive the agent.
    node.ns
        .exec("tc", &["qdisc", "add", "dev", &vb, "clsact"])
        .expect("clsact");
    node.ns
        .exec(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                &vb,
                "ingress",
                "pref",
                "7",
                "bpf",
                "bytecode",
                "1,6 0 0 4294967295,",
            ],
        )
        .expect("foreign filter");

    let (a, b, c) = {
        let (a, b, c) = (
            node.pod("a").unwrap(),
            node.pod("b").unwrap(),
            node.pod("c").unwrap(),
        );
        ((a.ipv4, a.ipv6), (b.ipv4, b.ipv6), (c.ipv4, c.ipv6))
    };

    let mut agent = Agent::start(&node, &[]);
    agent.wait_attached(&[&va, &vb, &vc], Duration::from_secs(10));
    let status = agent.status().expect("status");
    for i in status["interfaces"].as_array().expect("interfaces") {
        assert_eq!(i["kind"], "veth", "{i}");
        assert_eq!(i["attach_mode"], "tcx", "{i}");
    }

    // ICMP, IPv4, between two pods of this node: counted once, same-node, both veths named.
    ping(&node, "a", &b.0.to_string(), 5, false);
    let recs = expect_totals(
        &agent,
        &Tuple::new(a.0, b.0, "ICMP", 8, 0),
        (5, 5 * PING_V4_BYTES),
    );
    for r in &recs {
        assert_eq!(r["same_node"], true, "{r}");
        assert_eq!(r["interfaces"], serde_json::json!([va, vb]), "{r}");
        assert_eq!(r["node"], "e2e-node");
        assert_eq!(r["sampling_rate"], 1);
    }
    expect_totals(
        &agent,
        &Tuple::new(b.0, a.0, "ICMP", 0, 0),
        (5, 5 * PING_V4_BYTES),
    );

    // ICMPv6.
    ping(&node, "a", &b.1.to_string(), 3, true);
    expect_totals(
        &agent,
        &Tuple::new(a.1, b.1, "ICMPv6", 128, 0),
        (3, 3 * PING_V6_BYTES),
    );
    expect_totals(
        &agent,
        &Tuple::new(b.1, a.1, "ICMPv6", 129, 0),
        (3, 3 * PING_V6_BYTES),
    );

    // UDP: 20 datagrams of 200 bytes from a fixed port; IP bytes = 20 × (20 + 8 + 200).
    let server: SocketAddr = (c.0, 9000).into();
    let rx = node
        .pod("c")
        .unwrap()
        .ns
        .spawn(move || -> usize {
            let sock = UdpSocket::bind(server).expect("bind udp");
            sock.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut buf = [0u8; 2048];
            let mut n = 0;
            while n < 20 {
                match sock.recv(&mut buf) {
                    Ok(200) => n += 1,
                    Ok(_) | Err(_) => break,
                }
            }
            n
        })
        .expect("udp receiver");
    std::thread::sleep(Duration::from_millis(200));
    node.pod("a")
        .unwrap()
        .ns
        .run(move || {
            let sock = UdpSocket::bind((a.0, 40_001)).expect("bind udp client");
            for _ in 0..20 {
                sock.send_to(&[7u8; 200], server).expect("send");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .expect("udp sender");
    assert_eq!(
        rx.join().expect("receiver"),
        20,
        "receiver got every datagram"
    );
    expect_totals(
        &agent,
        &Tuple::new(a.0, c.0, "UDP", 40_001, 9000),
        (20, 20 * 228),
    );

    // TCP with segmentation offloads off in both pods: every skb is one wire packet, so the
    // kernel's own IP counters in the sending namespace are the exact reference.
    for pod in ["a", "b"] {
        let ns = &node.pod(pod).unwrap().ns;
        ns.exec(
            "ethtool",
            &["-K", "eth0", "tso", "off", "gso", "off", "gro", "off"],
        )
        .expect("ethtool");
    }
    let before = tcp_counters(&node, "a");
    let before_b = tcp_counters(&node, "b");
    let (sent, server_port) = tcp_transfer(&node, "a", "b", b.0.into(), 256 * 1024);
    let after = tcp_counters(&node, "a");
    let after_b = tcp_counters(&node, "b");
    assert_eq!(sent, 256 * 1024);
    let want_ab = wire_reference(before, after);
    let want_ba = wire_reference(before_b, after_b);
    let flows = wait_for(Duration::from_secs(10), Duration::from_millis(250), || {
        let f = agent.flows(&["--protocol", "tcp", "--port", &server_port.to_string()]);
        let sum = |src: &str| -> (u64, u64) {
            f.iter()
                .filter(|r| r["src_ip"].as_str() == Some(src))
                .fold((0, 0), |acc, r| {
                    (
                        acc.0 + r["packets"].as_u64().unwrap_or(0),
                        acc.1 + r["bytes"].as_u64().unwrap_or(0),
                    )
                })
        };
        let got = (sum(&a.0.to_string()), sum(&b.0.to_string()));
        (got == (want_ab, want_ba)).then_some(got)
    });
    let f = agent.flows(&["--protocol", "tcp", "--port", &server_port.to_string()]);
    assert!(
        flows.is_some(),
        "TCP a→b want {want_ab:?}, b→a want {want_ba:?} (from the pods' eth0 counters); records: {f:#?}"
    );
    let flags: Vec<String> = f
        .iter()
        .filter(|r| r["src_ip"].as_str() == Some(&a.0.to_string()))
        .flat_map(|r| r["tcp_flags"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    for flag in ["SYN", "ACK", "FIN"] {
        assert!(
            flags.contains(&flag.to_string()),
            "flags {flags:?} lack {flag}"
        );
    }

    // TCP with GSO on (pod c): a super-packet counts as its segments: packets = segments sent.
    let before = tcp_counters(&node, "c");
    let (_, port) = tcp_transfer(&node, "c", "a", a.0.into(), 4 * 1024 * 1024);
    let after = tcp_counters(&node, "c");
    let segs = after.0 - before.0;
    assert!(
        after.1 - before.1 < segs,
        "GSO on: fewer frames than segments crossed eth0"
    );
    let got = wait_for(Duration::from_secs(10), Duration::from_millis(250), || {
        let f = agent.flows(&[
            "--src-ip",
            &c.0.to_string(),
            "--dst-port",
            &port.to_string(),
        ]);
        let p: u64 = f.iter().map(|r| r["packets"].as_u64().unwrap_or(0)).sum();
        let b: u64 = f.iter().map(|r| r["bytes"].as_u64().unwrap_or(0)).sum();
        (p == segs).then_some((p, b))
    });
    let (gp, gb) = got.unwrap_or_else(|| {
        panic!(
            "GSO flow c→a: want {segs} packets; records {:#?}",
            agent.flows(&["--src-ip", &c.0.to_string()])
        )
    });
    // The exact reference, retransmissions included: eth0 sent `frames` skbs of `tx_bytes`
    // (one Ethernet, IP and TCP header each); podflow counts IP bytes as on the wire, so every
    // segment after a super-packet's first repeats its IP + TCP headers (h bytes: 20 + 20–60).
    let (frames, tx_bytes) = (after.1 - before.1, after.2 - before.2);
    let ip_bytes = tx_bytes - 14 * frames;
    let extra = gb.checked_sub(ip_bytes).unwrap_or_else(|| {
        panic!("GSO bytes {gb} below eth0's {tx_bytes} bytes in {frames} frames")
    });
    let h = extra / (segs - frames);
    assert!(
        extra % (segs - frames) == 0 && (40..=80).contains(&h),
        "GSO bytes {gb} for {gp} packets: eth0 sent {tx_bytes} bytes in {frames} frames, so \
         the {} repeated headers would be {extra} bytes",
        segs - frames
    );
    let payload = 4 * 1024 * 1024u64;
    assert!(gb >= payload + 40 * gp, "GSO bytes {gb} below the payload");

    // Traffic to the node itself: not same-node, seen on one veth only.
    ping(&node, "a", &node.ipv4.to_string(), 2, false);
    let recs = expect_totals(
        &agent,
        &Tuple::new(a.0, node.ipv4, "ICMP", 8, 0),
        (2, 2 * PING_V4_BYTES),
    );
    for r in &recs {
        assert_eq!(r["same_node"], false, "{r}");
        assert_eq!(r["interfaces"], serde_json::json!([va]), "{r}");
    }

    // A veth created after start is attached within 1 s, and its traffic counted.
    let t0 = std::time::Instant::now();
    node.add_pod("d", &vd).expect("pod d");
    let created = t0.elapsed();
    let waited = agent.wait_attached(&[&va, &vb, &vc, &vd], Duration::from_secs(5));
    assert!(
        waited <= Duration::from_secs(1),
        "veth attached {waited:?} after its pod was set up (set-up took {created:?})"
    );
    let d = node.pod("d").unwrap().ipv4;
    ping(&node, "d", &a.0.to_string(), 3, false);
    let recs = expect_totals(
        &agent,
        &Tuple::new(d, a.0, "ICMP", 8, 0),
        (3, 3 * PING_V4_BYTES),
    );
    assert!(recs.iter().all(|r| r["same_node"] == true));

    // A removed veth is forgotten.
    node.remove_pod("c").expect("remove c");
    agent.wait_attached(&[&va, &vb, &vd], Duration::from_secs(5));

    // No loss on this light traffic, and the loss counters are reported.
    let status = agent.status().expect("status");
    let counters = status["counters"].as_array().expect("counters");
    for name in ["lost_map_full", "lost_map_error", "lost_ip_malformed"] {
        let c = counters
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("counter {name} missing: {counters:?}"));
        assert_eq!(c["loss"], true, "{c}");
        assert_eq!(c["value"], 0, "{c}");
    }

    // SIGTERM: exits cleanly, detaches all of podflow and nothing else.
    let mut before: Vec<(String, String)> = podflow_programs(&node.ns)
        .into_iter()
        .map(|(dev, dir, _)| (dev, direction(&dir)))
        .collect();
    before.sort();
    let mut want = Vec::new();
    for v in [&va, &vb, &vd] {
        for dir in ["egress", "ingress"] {
            want.push((v.to_string(), dir.to_string()));
        }
    }
    want.sort();
    assert_eq!(
        before, want,
        "one podflow program per attached veth and direction"
    );
    let st = agent.terminate();
    assert!(
        st.success(),
        "agent exit status {st}; log:\n{}",
        agent.log_text()
    );
    assert_eq!(
        podflow_programs(&node.ns),
        vec![],
        "podflow programs left after SIGTERM"
    );
    let filters = node
        .ns
        .exec("tc", &["-j", "filter", "show", "dev", &vb, "ingress"])
        .expect("tc");
    assert!(
        filters.contains("\"pref\":7") && filters.contains("bytecode"),
        "foreign filter removed: {filters}"
    );
    let qdiscs = node
        .ns
        .exec("tc", &["qdisc", "show", "dev", &vb])
        .expect("tc");
    assert!(qdiscs.contains("clsact"), "clsact qdisc removed: {qdiscs}");
}

/// (TCP segments sent incl. retransmits, eth0 tx packets, eth0 tx bytes) in a pod's namespace.
fn tcp_counters(node: &Node, pod: &str) -> (u64, u64, u64) {
    let ns = &node.pod(pod).unwrap().ns;
    let segs = proc_net_counter(ns, "snmp", "Tcp", "OutSegs")
        + proc_net_counter(ns, "snmp", "Tcp", "RetransSegs");
    let stat = |f: &str| -> u64 {
        ns.exec("cat", &[&format!("/sys/class/net/eth0/statistics/{f}")])
            .expect("eth0 statistics")
            .trim()
            .parse()
            .expect("counter")
    };
    (segs, stat("tx_packets"), stat("tx_bytes"))
}

/// The exact (packets, IP bytes) a pod sent between two `tcp_counters` readings, with
/// segmentation offloads off: every TCP segment is one frame on eth0, and the test checks that
/// nothing but those segments left the pod, so IP bytes = frame bytes − 14 per frame.
fn wire_reference(before: (u64, u64, u64), after: (u64, u64, u64)) -> (u64, u64) {
    let segs = after.0 - before.0;
    let frames = after.1 - before.1;
    assert_eq!(
        segs, frames,
        "only the TCP segments left the pod during the transfer"
    );
    (frames, after.2 - before.2 - 14 * frames)
}

/// Sends `len` bytes over one TCP connection from pod `from` to a server in pod `to`; returns
/// the bytes the server received and the server port.
fn tcp_transfer(
    node: &Node,
    from: &str,
    to: &str,
    to_ip: std::net::IpAddr,
    len: usize,
) -> (usize, u64) {
    let (ltx, lrx) = std::sync::mpsc::channel::<u16>();
    let server = node
        .pod(to)
        .unwrap()
        .ns
        .spawn(move || -> usize {
            let l = TcpListener::bind((to_ip, 0)).expect("listen");
            let _ = ltx.send(l.local_addr().map(|a| a.port()).unwrap_or(0));
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = vec![0u8; 65536];
            let mut total = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            total
        })
        .expect("server");
    let port = lrx
        .recv_timeout(Duration::from_secs(5))
        .expect("server port");
    node.pod(from)
        .unwrap()
        .ns
        .run(move || {
            let mut s = TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(5))
                .expect("connect");
            s.write_all(&vec![0x5au8; len]).expect("write");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        })
        .expect("client");
    let got = server.join().expect("server thread");
    // Let the FIN/ACK exchange finish before counters are read.
    std::thread::sleep(Duration::from_millis(300));
    (got, u64::from(port))
}

#[test]
fn restart_after_kill9_leaves_one_program_per_hook() {
    if !privileged() {
        return;
    }
    for mode in ["tcx", "netlink"] {
        let p = unique_prefix("r");
        let mut node = Node::new(&p, 62).expect("node");
        let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
        node.add_pod("a", &va).expect("pod a");
        node.add_pod("b", &vb).expect("pod b");
        let b_ip = node.pod("b").unwrap().ipv4;
        let a_ip = node.pod("a").unwrap().ipv4;

        let first = Agent::start(&node, &["--attach-mode", mode]);
        first.wait_attached(&[&va, &vb], Duration::from_secs(10));
        first.signal(libc::SIGKILL);
        drop(first);

        let mut second = Agent::start(&node, &["--attach-mode", mode]);
        second.wait_attached(&[&va, &vb], Duration::from_secs(10));
        let progs = podflow_programs(&node.ns);
        let mut want = Vec::new();
        for v in [&va, &vb] {
            for (dir, prog) in [
                ("ingress", "podflow_veth_in"),
                ("egress", "podflow_veth_eg"),
            ] {
                want.push((v.to_string(), dir.to_string(), prog.to_string()));
            }
        }
        want.sort();
        let mut normalized: Vec<(String, String, String)> = progs
            .into_iter()
            .map(|(d, dir, n)| (d, direction(&dir), n))
            .collect();
        normalized.sort();
        assert_eq!(
            normalized, want,
            "mode {mode}: exactly one podflow program per hook"
        );

        ping(&node, "a", &b_ip.to_string(), 4, false);
        expect_totals(
            &second,
            &Tuple::new(a_ip, b_ip, "ICMP", 8, 0),
            (4, 4 * PING_V4_BYTES),
        );

        let st = second.terminate();
        assert!(st.success(), "mode {mode}: exit {st}");
        assert_eq!(
            podflow_programs(&node.ns),
            vec![],
            "mode {mode}: left after SIGTERM"
        );
    }
}

/// bpftool names directions "clsact/ingress", "tcx/ingress", "ingress"...: keep the direction.
fn direction(kind: &str) -> String {
    if kind.contains("egress") {
        "egress".into()
    } else {
        "ingress".into()
    }
}

#[test]
fn veths_past_ifindex_2_16_and_2_24_are_counted_once_and_named() {
    if !privileged() {
        return;
    }
    // The kernel maps keep an ifindex's low 16 bits in the key and the next 8 in the value, and
    // the VETHS array covers ifindexes below 2^16. Pod b's veth is past 2^16 (its packets are
    // counted at both veths and deduplicated in user space), pod c's past 2^24 (user space
    // matches the low 24 bits back to the interface it attached to).
    let p = unique_prefix("i");
    let mut node = Node::new(&p, 63).expect("node");
    let (va, vb, vc) = (
        format!("veth{p}a"),
        format!("veth{p}b"),
        format!("veth{p}c"),
    );
    let (ib, ic) = (70_001u32, (1u32 << 24) + 0x0203);
    node.add_pod("a", &va).expect("pod a");
    node.add_pod_at("b", &vb, Some(ib)).expect("pod b");
    node.add_pod_at("c", &vc, Some(ic)).expect("pod c");
    assert_eq!(node.pod("b").unwrap().host_ifindex, ib);
    assert_eq!(node.pod("c").unwrap().host_ifindex, ic);
    let ip = |n: &str| node.pod(n).unwrap().ipv4;
    let (a, b, c) = (ip("a"), ip("b"), ip("c"));

    let agent = Agent::start(&node, &[]);
    agent.wait_attached(&[&va, &vb, &vc], Duration::from_secs(10));
    let status = agent.status().expect("status");
    let mut indexes: Vec<u64> = status["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .filter_map(|i| i["ifindex"].as_u64())
        .collect();
    indexes.sort();
    assert_eq!(&indexes[1..], &[u64::from(ib), u64::from(ic)]);

    for (from, to, ifaces, n) in [
        ("a", b, [&va, &vb], 3),
        ("b", c, [&vb, &vc], 4),
        ("c", a, [&vc, &va], 5),
    ] {
        let src = ip(from);
        ping(&node, from, &to.to_string(), n, false);
        for (s, d, ty, names) in [
            (src, to, 8, [ifaces[0], ifaces[1]]),
            (to, src, 0, [ifaces[1], ifaces[0]]),
        ] {
            let recs = expect_totals(
                &agent,
                &Tuple::new(s, d, "ICMP", ty, 0),
                (u64::from(n), u64::from(n) * PING_V4_BYTES),
            );
            for r in &recs {
                assert_eq!(r["same_node"], true, "{r}");
                assert_eq!(r["interfaces"], serde_json::json!(names), "{r}");
            }
        }
    }
}

#[test]
fn a_flush_interval_past_the_tick_wrap_is_refused() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("f");
    let mut node = Node::new(&p, 64).expect("node");
    let va = format!("veth{p}a");
    node.add_pod("a", &va).expect("pod a");
    // 11 min is more than 2^16 ticks at any HZ Linux is built with except 100 (655 s).
    let sock = tempfile::tempdir().expect("tempdir");
    let out = node
        .ns
        .command("timeout")
        .args(["20", crate::support::BIN, "--log-format", "text", "agent"])
        .args(["--flush-interval", "11m", "--socket"])
        .arg(sock.path().join("podflow.sock"))
        .output()
        .expect("run podflow agent");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "agent exit; log:\n{log}");
    assert!(
        log.contains("--flush-interval 660s is longer than"),
        "log:\n{log}"
    );
    assert_eq!(podflow_programs(&node.ns), vec![], "nothing left attached");
}
