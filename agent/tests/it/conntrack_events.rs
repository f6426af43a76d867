//! The conntrack source against a real kernel, in a namespace of its own: the socket filter lets
//! only translated entries through, a dump finds the translations that existed before the
//! watcher, destroy events end them, and the socket becomes readable for translations only.
//! Privileged (root).
use std::{net::UdpSocket, time::Duration};

use podflow::{
    conntrack::{ConntrackWatcher, NatTable},
    flows::Translate as _,
};
use podflow_ebpf::{FAMILY_IPV4, FlowKey, IPPROTO_UDP, ipv4_mapped};
use podflow_testbed::{Netns, unique_prefix};

use crate::support::privileged;

/// One datagram from a new socket in the calling thread's namespace; returns its source port.
fn send(to: &str) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.send_to(b"x", to).expect("send");
    s.local_addr().expect("addr").port()
}

fn key(src_port: u16, dst: [u8; 4], dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: ipv4_mapped([127, 0, 0, 1]),
        dst_addr: ipv4_mapped(dst),
        src_port,
        dst_port,
        protocol: IPPROTO_UDP,
        family: FAMILY_IPV4,
        ..FlowKey::default()
    }
}

#[test]
fn the_filter_passes_translations_only_and_a_dump_finds_older_ones() {
    if !privileged() {
        return;
    }
    let ns = Netns::create(&format!("{}-ct", unique_prefix("ct"))).expect("netns");
    ns.exec(
        "iptables",
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.96.0.10",
            "-p",
            "udp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            "127.0.0.1:8080",
        ],
    )
    .expect("DNAT rule");
    // A route to the ClusterIP range (the route is looked up before OUTPUT translates).
    ns.ip(&["route", "add", "10.96.0.0/16", "dev", "lo"])
        .expect("route");
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        // A translation before the watcher exists: only a dump can know it.
        let before = send("10.96.0.10:80");
        let mut table = NatTable::new(64, 1_000_000_000);
        let mut w = ConntrackWatcher::open().expect("ctnetlink");
        let listed = w.resync(&mut table, 0).expect("dump");
        assert!(listed >= 1, "the dump lists the entry");
        assert_eq!(table.stats().entries, 1);
        let x = table
            .translate(&key(before, [10, 96, 0, 10], 80))
            .expect("translated from the dump");
        assert_eq!(
            (x.key.dst_addr, x.key.dst_port),
            (ipv4_mapped([127, 0, 0, 1]), 8080)
        );

        // After: one untranslated and one translated connection. The kernel drops the first's
        // event before it is queued, so the socket (what the agent's loop waits on) stays quiet
        // until the second.
        let ready = w.events_ready().expect("registered");
        let readable = |wait_ms| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(wait_ms), ready.readable())
                    .await
                    .map(|guard| guard.expect("readiness").clear_ready())
                    .is_ok()
            })
        };
        let plain = send("127.0.0.1:9999");
        assert!(!readable(200), "an untranslated connection wakes nobody");
        let nat = send("10.96.0.10:80");
        assert!(
            readable(2000),
            "a translated connection makes the socket readable"
        );
        let out = w.read_events(&mut table, 1).expect("events");
        assert_eq!(
            (out.applied, out.skipped, out.overflowed),
            (1, 0, false),
            "{out:?}"
        );
        assert!(table.translate(&key(nat, [10, 96, 0, 10], 80)).is_some());
        assert!(table.translate(&key(plain, [127, 0, 0, 1], 9999)).is_none());

        // Flushing conntrack destroys both. Only the entry created while the watcher listened
        // announces it (the kernel adds event state to new entries only when someone listens);
        // the older one's end is found by the next dump.
        assert_eq!(table.stats().dump_only, 1);
        std::process::Command::new("conntrack")
            .arg("-F")
            .output()
            .expect("conntrack -F");
        std::thread::sleep(Duration::from_millis(100));
        let out = w.read_events(&mut table, 2).expect("events");
        assert_eq!(out.applied, 1, "{out:?}");
        assert_eq!(table.stats().destroyed, 1);
        assert!(table.translate(&key(before, [10, 96, 0, 10], 80)).is_some());
        w.resync(&mut table, 3).expect("dump");
        assert_eq!(table.stats().dump_only, 0);
        // Both ended: gone once the grace period passed.
        table.expire(3 + 1_000_000_000);
        assert_eq!(table.stats().entries, 0);
    })
    .expect("thread in the namespace");
}
