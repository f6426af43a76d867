//! Privileged: exact counts through the epoch-stamped flow maps. Pods ping and send UDP to each
//! other through a test node namespace; drains must return every packet exactly once.
//!
//! Run as root: `cargo test -p podflow --test capture_drain`.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use crate::support::{
    capture::{CaptureThread, node_with_pods},
    packets::{flow_key, mapped},
    privileged,
};
use podflow::capture::{AttachModePref, CaptureConfig, Drain, FlowEntry};
use podflow_ebpf::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, KernelCounter, ObsPoint};
use podflow_testbed::Node;

fn cfg(mode: AttachModePref, entries: u32) -> CaptureConfig {
    CaptureConfig {
        veth_patterns: vec!["pfd*".into()],
        l3_patterns: vec![],
        exclude_patterns: vec![],
        attach_mode: mode,
        flow_map_entries: entries,
        sample_rate: 1,
        pin_dir: None,
        dns_port: 53,
        handshakes: true,
        tracepoints: false,
        conntrack: false,
    }
}

fn find<'a>(entries: &'a [FlowEntry], k: &FlowKey) -> Option<&'a FlowEntry> {
    let found: Vec<_> = entries.iter().filter(|e| e.key == *k).collect();
    assert!(found.len() <= 1, "duplicate key in one drain: {found:?}");
    found.first().copied()
}

/// A node with pods `pod0` and `pod1` behind `pfd0` and `pfd1`, and a capture attached to both
/// in the node namespace, its maps drained empty.
fn setup(tag: &str, mode: AttachModePref, entries: u32) -> (Node, CaptureThread) {
    let node = node_with_pods(tag, "pfd", 2);
    let t = CaptureThread::load(&node.ns, cfg(mode, entries));
    t.with(|cap| {
        assert_eq!(cap.sync_interfaces().expect("sync").len(), 2);
        // Start from empty maps.
        let _ = cap.drain().expect("initial drain");
        let _ = cap.drain().expect("initial drain 2");
    });
    (node, t)
}

fn ping_drain_exact(mode: AttachModePref) {
    let (node, t) = setup(&format!("pfdr{}", mode as u8), mode, 4096);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let out =
        a.ns.exec(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "2",
                &b.ipv4.to_string(),
            ],
        )
        .expect("ping");
    assert!(out.contains("5 received"), "{out}");
    let d: Drain = t.with(|c| c.drain().expect("drain"));
    let (ia, ib) = (a.ipv4, b.ipv4);
    let icmp = podflow_ebpf::IPPROTO_ICMP;
    // Each packet is counted once, where it enters the node: at its source pod's veth ingress.
    // The destination veth's egress sees it came from a veth podflow counts at, and skips it.
    for (k, ifindex) in [
        // Echo requests (type 8, code 0) leave pod A at A's veth ingress.
        (
            flow_key(ObsPoint::VethIngress, ia, ib, icmp, 8, 0, 0),
            a.host_ifindex,
        ),
        // Echo replies (type 0) the other way.
        (
            flow_key(ObsPoint::VethIngress, ib, ia, icmp, 0, 0, 0),
            b.host_ifindex,
        ),
    ] {
        let e = find(&d.entries, &k).unwrap_or_else(|| panic!("missing {k:?} in {:#?}", d.entries));
        assert_eq!(e.stats.packets, 5, "{e:?}");
        assert_eq!(e.stats.bytes, 5 * 84, "{e:?}");
        assert_eq!(e.stats.ifindex, ifindex, "{e:?}");
        assert!(
            e.stats.first_ns > 0 && e.stats.first_ns <= e.stats.last_ns,
            "{e:?}"
        );
        // 5 pings 0.2 s apart: ~0.8 s between first and last.
        let span = e.stats.last_ns - e.stats.first_ns;
        assert!(
            (600_000_000..2_000_000_000).contains(&span),
            "span {span} {e:?}"
        );
        assert!(
            e.stats.last_ns <= d.mono_ns + 1_000_000_000,
            "{e:?} vs {}",
            d.mono_ns
        );
    }
    for (src, dst) in [(ia, ib), (ib, ia)] {
        let k = flow_key(
            ObsPoint::VethEgress,
            src,
            dst,
            icmp,
            if src == ia { 8 } else { 0 },
            0,
            0,
        );
        assert!(find(&d.entries, &k).is_none(), "counted twice: {k:?}");
    }
    assert_eq!(d.counters[KernelCounter::LostMapFull as usize], 0);
    assert_eq!(d.counters[KernelCounter::LostMapError as usize], 0);
    assert!(
        d.counters[KernelCounter::Recorded as usize] >= 10,
        "{:?}",
        d.counters
    );
    assert!(
        d.counters[KernelCounter::CountedUpstream as usize] >= 10,
        "{:?}",
        d.counters
    );
    // Each veth's slot names the pod it delivered to.
    let peers = t.with(|c| c.veth_peers());
    for (ifindex, addr) in [(a.host_ifindex, ia), (b.host_ifindex, ib)] {
        assert!(
            peers
                .iter()
                .any(|(i, f, p)| *i == ifindex && *f == FAMILY_IPV4 && *p == mapped(addr)),
            "{ifindex} {addr} not in {peers:?}"
        );
    }
    // The map was cleared: a drain right after has none of them.
    let d2: Drain = t.with(|c| c.drain().expect("drain 2"));
    for e in &d2.entries {
        assert!(
            !(e.key.protocol == icmp
                && (e.key.src_addr == mapped(ia) || e.key.src_addr == mapped(ib))),
            "stale entry after drain: {e:?}"
        );
    }
    // Counters are cumulative.
    for i in 0..podflow_ebpf::COUNTER_COUNT as usize {
        assert!(d2.counters[i] >= d.counters[i]);
    }
    assert!(d2.mono_ns > d.mono_ns);
    drop(t);
}

#[test]
fn capture_drain_ping_exact_tcx() {
    if !privileged() {
        return;
    }
    ping_drain_exact(AttachModePref::Tcx);
}

#[test]
fn capture_drain_ping_exact_netlink() {
    if !privileged() {
        return;
    }
    ping_drain_exact(AttachModePref::Netlink);
}

/// UDP from pod A to pod B (IPv4 and IPv6) while user space drains every few milliseconds: the
/// per-drain counts must add up to exactly what was sent — nothing lost or counted twice at a flip.
#[test]
fn capture_drain_no_loss_across_flips() {
    if !privileged() {
        return;
    }
    let (node, t) = setup("pfdf", AttachModePref::Tcx, 8192);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    const N: u64 = 20_000;
    const PAYLOAD: usize = 100;
    let (a4, b4, a6, b6) = (a.ipv4, b.ipv4, a.ipv6, b.ipv6);
    let base = t.with(|c| c.drain().expect("baseline drain")).counters
        [KernelCounter::CountedUpstream as usize];
    // Sender: runs inside pod A's namespace; paced so no queue on the way drops a packet.
    let sender =
        a.ns.spawn(move || send_udp(a4, b4, a6, b6, N, PAYLOAD))
            .expect("sender thread");
    let mut drains = Vec::new();
    let start = Instant::now();
    while !sender.is_finished() && start.elapsed() < Duration::from_secs(60) {
        drains.push(t.with(|c| c.drain().expect("drain")));
        std::thread::sleep(Duration::from_millis(3));
    }
    let (sent4, sent6) = sender.join().expect("sender");
    assert_eq!((sent4, sent6), (N, N));
    // Let the last packets through the veths, then a final drain.
    std::thread::sleep(Duration::from_millis(200));
    drains.push(t.with(|c| c.drain().expect("final drain")));
    assert!(
        drains.len() > 10,
        "only {} drains happened during the send",
        drains.len()
    );

    let mut totals: HashMap<(u8, u8), (u64, u64, usize)> = HashMap::new();
    for d in &drains {
        for e in &d.entries {
            let k = &e.key;
            let ours = k.protocol == podflow_ebpf::IPPROTO_UDP
                && k.dst_port == 9999
                && (k.src_addr == mapped(a4) || k.src_addr == mapped(a6));
            if ours {
                let t = totals.entry((k.family, k.obs)).or_default();
                t.0 += e.stats.packets;
                t.1 += e.stats.bytes;
                t.2 += 1;
            }
        }
    }
    for (family, ip_hdr) in [(FAMILY_IPV4, 20u64), (FAMILY_IPV6, 40)] {
        // Counted where they enter the node; B's veth egress skips them (counted upstream).
        assert!(
            !totals.contains_key(&(family, ObsPoint::VethEgress as u8)),
            "family {family}: counted again at the destination veth"
        );
        let (p, by, n) = totals
            .get(&(family, ObsPoint::VethIngress as u8))
            .copied()
            .unwrap_or_default();
        assert_eq!(
            p, N,
            "family {family}: {p} packets over {n} drains (sent {N})"
        );
        assert_eq!(
            by,
            N * (ip_hdr + 8 + PAYLOAD as u64),
            "family {family} bytes"
        );
        eprintln!("family {family}: {p} packets in {n} drain entries");
    }
    let last = drains.last().expect("drains");
    // Every one of them was seen at B's veth egress too, and skipped there (plus the few ICMP
    // port-unreachable replies B's kernel sends back, rate-limited, and anything else forwarded
    // between the two pods).
    let upstream = last.counters[KernelCounter::CountedUpstream as usize] - base;
    assert!(
        (2 * N..2 * N + 200).contains(&upstream),
        "counted upstream {upstream}, sent {}",
        2 * N
    );
    assert_eq!(last.counters[KernelCounter::LostMapFull as usize], 0);
    assert_eq!(last.counters[KernelCounter::LostMapError as usize], 0);
    drop(t);
    drop(node);
}

/// Sends `n` v4 and `n` v6 datagrams of `payload` bytes from the calling thread's namespace
/// (source port fixed so each family is one flow), paced in bursts.
fn send_udp(
    a4: Ipv4Addr,
    b4: Ipv4Addr,
    a6: Ipv6Addr,
    b6: Ipv6Addr,
    n: u64,
    payload: usize,
) -> (u64, u64) {
    let s4 = UdpSocket::bind(SocketAddr::new(IpAddr::V4(a4), 0)).expect("bind v4");
    let s6 = UdpSocket::bind(SocketAddr::new(IpAddr::V6(a6), 0)).expect("bind v6");
    let buf = vec![0x5au8; payload];
    let (mut c4, mut c6) = (0, 0);
    let d4 = SocketAddr::new(IpAddr::V4(b4), 9999);
    let d6 = SocketAddr::new(IpAddr::V6(b6), 9999);
    for i in 0..n {
        if s4.send_to(&buf, d4).expect("send v4") == payload {
            c4 += 1;
        }
        if s6.send_to(&buf, d6).expect("send v6") == payload {
            c6 += 1;
        }
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    (c4, c6)
}

/// Time drains of a map with 60k flow entries, batch path and per-entry path; both exact.
#[test]
fn capture_drain_large_map_timing() {
    if !privileged() {
        return;
    }
    let (node, t) = setup("pfdl", AttachModePref::Tcx, 65_536);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    // 30k distinct flows; each datagram is counted at A's veth ingress (B's veth egress skips it):
    // 30k entries. (B answers some with rate-limited ICMP port unreachable: a few more entries.)
    const FLOWS: u16 = 30_000;
    let (a4, b4) = (a.ipv4, b.ipv4);
    for batch in [true, false] {
        a.ns.run(move || {
            let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(a4), 40000)).expect("bind");
            for port in 1..=FLOWS {
                s.send_to(b"x", SocketAddr::new(IpAddr::V4(b4), port))
                    .expect("send");
                if port % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(200));
        let (d, took) = t.with(move |c| {
            c.set_batch_drain(batch);
            let t0 = Instant::now();
            let d = c.drain().expect("drain");
            (d, t0.elapsed())
        });
        let ours: Vec<&FlowEntry> = d
            .entries
            .iter()
            .filter(|e| e.key.src_addr == mapped(a4) && e.key.src_port == 40000)
            .collect();
        eprintln!(
            "{} drain of {} entries took {took:?}",
            if batch { "batch" } else { "per-entry" },
            d.entries.len()
        );
        assert_eq!(
            d.counters[KernelCounter::LostMapFull as usize],
            0,
            "map full"
        );
        assert_eq!(ours.len(), FLOWS as usize, "entries");
        assert!(
            ours.iter()
                .all(|e| e.stats.packets == 1 && e.stats.bytes == 29),
            "counts"
        );
        let again = t.with(|c| c.drain().expect("drain 2"));
        assert!(
            !again.entries.iter().any(|e| e.key.src_port == 40000),
            "map not cleared"
        );
    }
}

/// A `struct __sk_buff` for BPF_PROG_TEST_RUN: loopback (ifindex 1), `segs` GSO segments.
fn gso_ctx(segs: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&1u32.to_ne_bytes()); // ifindex
    ctx[164..168].copy_from_slice(&segs.to_ne_bytes()); // gso_segs
    ctx[176..180].copy_from_slice(&1u32.to_ne_bytes()); // gso_size
    ctx
}

#[test]
fn spilled_counts_come_back_in_the_drain_exactly_once() {
    if !privileged() {
        return;
    }
    // Flows past 2^23 packets in one drain interval: their counts partly live in the spill map,
    // and a drain adds them back. Packets run through the loaded program with BPF_PROG_TEST_RUN
    // (no link moves 10^9 packets in a test's time).
    let (_node, t) = setup("pfsp", AttachModePref::Auto, 4096);
    // Ethernet + IPv4 (20) + TCP (20, ACK) + 1000 bytes of payload.
    let mut frame = vec![0u8; 14 + 20 + 20 + 1000];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&1040u16.to_be_bytes());
    frame[23] = 6;
    frame[26..30].copy_from_slice(&[10, 1, 2, 3]);
    frame[30..34].copy_from_slice(&[10, 4, 5, 6]);
    frame[34..36].copy_from_slice(&1111u16.to_be_bytes());
    frame[36..38].copy_from_slice(&2222u16.to_be_bytes());
    frame[46] = 5 << 4;
    frame[47] = 0x10;
    let key = flow_key(
        ObsPoint::VethIngress,
        Ipv4Addr::new(10, 1, 2, 3),
        Ipv4Addr::new(10, 4, 5, 6),
        6,
        1111,
        2222,
        0,
    );
    let per_run = (65_535u64, 1040 + 65_534 * 40);
    for (round, runs) in [(0, 300u64), (1, 129), (2, 1)] {
        let (frame, ctx) = (frame.clone(), gso_ctx(65_535));
        let d: Drain = t.with(move |cap| {
            cap.test_run_program(podflow_ebpf::PROG_VETH_INGRESS, &frame, &ctx, runs as u32)
                .expect("test run");
            cap.drain().expect("drain")
        });
        let e = find(&d.entries, &key)
            .unwrap_or_else(|| panic!("round {round}: no entry in {:?}", d.entries));
        assert_eq!(
            (
                e.stats.packets,
                e.stats.bytes,
                e.stats.ifindex,
                e.stats.tcp_flags
            ),
            (runs * per_run.0, runs * per_run.1, 1, 0x10),
            "round {round}"
        );
    }
    // Nothing left behind in either map (the pods' own IPv6 chatter may still show up).
    let d = t.with(|cap| cap.drain().expect("drain"));
    assert!(find(&d.entries, &key).is_none(), "{:?}", d.entries);
}
