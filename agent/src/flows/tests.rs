//! Tests of the flow table: counting once across points, interfaces and drains, records, eviction.
use std::net::IpAddr;

use podflow_ebpf::{FAMILY_IPV6, FlowKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::net::ip_from_bytes;

use super::*;

const POD_A: [u8; 4] = [10, 0, 0, 2];
const POD_B: [u8; 4] = [10, 0, 0, 3];
const REMOTE: [u8; 4] = [10, 9, 0, 7];
const VETH_A: u32 = 11;
const VETH_B: u32 = 12;
const WG: u32 = 20;

use podflow_ebpf::ipv4_mapped as mapped;

fn obs(
    src: [u8; 4],
    dst: [u8; 4],
    point: ObsPoint,
    ifindex: u32,
    packets: u64,
    bytes: u64,
    t: (u64, u64),
) -> Observation {
    Observation {
        key: FlowKey {
            src_addr: mapped(src),
            dst_addr: mapped(dst),
            src_port: 40000,
            dst_port: 80,
            protocol: IPPROTO_TCP,
            obs: point as u8,
            family: FAMILY_IPV4,
            key_flags: 0,
        },
        stats: FlowStats {
            packets,
            bytes,
            first_ns: t.0,
            last_ns: t.1,
            ifindex,
            tcp_flags: 0x12,
            ct: 0,
            _pad: [0; 2],
        },
    }
}

fn table() -> FlowTable {
    FlowTable::new(FlowTableConfig {
        node: "node-1".into(),
        idle_timeout: Duration::from_secs(60),
        max_flows: 1000,
        sampling_rate: 1,
    })
}

fn clock(mono_now_s: u64) -> Clock {
    Clock {
        realtime_offset_ns: 1_700_000_000_000_000_000,
        mono_now_ns: mono_now_s * 1_000_000_000,
    }
}

fn names(ifindex: u32) -> Option<String> {
    match ifindex {
        VETH_A => Some("vethA".into()),
        VETH_B => Some("vethB".into()),
        WG => Some("wg0".into()),
        _ => None,
    }
}

const S: u64 = 1_000_000_000;

#[test]
fn same_node_packet_counted_once_with_both_interfaces() {
    let mut t = table();
    let recs = t.ingest(
        &[
            obs(
                POD_A,
                POD_B,
                ObsPoint::VethEgress,
                VETH_B,
                10,
                1000,
                (S, 2 * S),
            ),
            obs(
                POD_A,
                POD_B,
                ObsPoint::VethIngress,
                VETH_A,
                10,
                1000,
                (S, 2 * S),
            ),
        ],
        &clock(3),
        &names,
    );
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!((r.packets, r.bytes), (10, 1000));
    assert_eq!(r.interfaces, vec!["vethA", "vethB"]);
    assert!(r.same_node);
    assert!(!r.encrypted);
    assert_eq!(r.src_ip, POD_A.to_vec());
    assert_eq!(r.dst_ip, POD_B.to_vec());
    assert_eq!(r.node, "node-1");
    // Counted where it left pod A.
    assert_eq!(r.reporter, "SRC");
    assert_eq!(r.tcp_flags, 0x12);
    assert_eq!(
        r.start_time.as_ref().map(|t| t.seconds),
        Some(1_700_000_001)
    );
    assert_eq!(r.end_time.as_ref().map(|t| t.seconds), Some(1_700_000_002));
}

#[test]
fn one_flow_at_one_point_on_two_interfaces_is_added_up_and_lists_both() {
    // The kernel keys entries by interface: pod A's 5-tuple also sent from behind veth B
    // (a spoofed source) makes two entries at the same observation point.
    let mut t = table();
    let mut spoofed = obs(
        POD_A,
        POD_B,
        ObsPoint::VethIngress,
        VETH_B,
        4,
        400,
        (S, 4 * S),
    );
    spoofed.stats.tcp_flags = 0x04;
    let recs = t.ingest(
        &[
            obs(
                POD_A,
                POD_B,
                ObsPoint::VethIngress,
                VETH_A,
                10,
                1000,
                (2 * S, 3 * S),
            ),
            spoofed,
            // Seen again after the flow's counting point: interfaces only.
            obs(POD_A, POD_B, ObsPoint::L3Egress, WG, 7, 700, (2 * S, 3 * S)),
            obs(POD_A, POD_B, ObsPoint::L3Egress, 30, 1, 100, (2 * S, 3 * S)),
        ],
        &clock(5),
        &names,
    );
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let r = &recs[0];
    assert_eq!((r.packets, r.bytes, r.tcp_flags), (14, 1400, 0x16));
    assert_eq!(r.interfaces, vec!["vethA", "wg0", "vethB", "if30"]);
    assert_eq!(
        r.start_time.as_ref().map(|t| t.seconds),
        Some(1_700_000_001)
    );
    assert_eq!(r.end_time.as_ref().map(|t| t.seconds), Some(1_700_000_004));

    // Next drain, the counting point is sticky: duplicates at a later point of a new drain
    // that come before the counting point's entry are not counted.
    let recs = t.ingest(
        &[
            obs(POD_A, POD_B, ObsPoint::L3Egress, WG, 2, 200, (6 * S, 6 * S)),
            obs(POD_A, POD_B, ObsPoint::L3Egress, 30, 2, 200, (6 * S, 6 * S)),
            obs(
                POD_A,
                POD_B,
                ObsPoint::VethIngress,
                VETH_B,
                3,
                300,
                (6 * S, 7 * S),
            ),
            obs(
                POD_A,
                POD_B,
                ObsPoint::VethIngress,
                VETH_A,
                2,
                200,
                (5 * S, 6 * S),
            ),
        ],
        &clock(8),
        &names,
    );
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!((recs[0].packets, recs[0].bytes), (5, 500));
    assert_eq!(
        recs[0].start_time.as_ref().map(|t| t.seconds),
        Some(1_700_000_005)
    );
    assert_eq!(recs[0].interfaces, vec!["vethB", "wg0", "if30", "vethA"]);
}

#[test]
fn duplicates_before_a_fresh_flow_moves_its_counting_point_are_not_counted() {
    // A fresh flow's counting point is the earliest point seen: the two entries at the L3
    // egress come first, the veth ingress entry then takes over as the counting point.
    let mut t = table();
    let recs = t.ingest(
        &[
            obs(POD_A, REMOTE, ObsPoint::L3Egress, WG, 5, 500, (S, 2 * S)),
            obs(POD_A, REMOTE, ObsPoint::L3Egress, 30, 5, 500, (S, 2 * S)),
            obs(
                POD_A,
                REMOTE,
                ObsPoint::VethIngress,
                VETH_A,
                5,
                500,
                (3 * S, 4 * S),
            ),
        ],
        &clock(5),
        &names,
    );
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!((recs[0].packets, recs[0].bytes), (5, 500));
    assert_eq!(
        recs[0].start_time.as_ref().map(|t| t.seconds),
        Some(1_700_000_003)
    );
    assert_eq!(recs[0].interfaces, vec!["vethA", "wg0", "if30"]);
    assert!(recs[0].encrypted);
}

#[test]
fn packet_straddling_a_flip_is_not_counted_twice() {
    let mut t = table();
    // Drain 1: the last packet crossed the source veth before the flip...
    let r1 = t.ingest(
        &[
            obs(
                POD_A,
                POD_B,
                ObsPoint::VethIngress,
                VETH_A,
                5,
                500,
                (S, 2 * S),
            ),
            obs(
                POD_A,
                POD_B,
                ObsPoint::VethEgress,
                VETH_B,
                4,
                400,
                (S, 2 * S),
            ),
        ],
        &clock(3),
        &names,
    );
    // ...and the destination veth after it.
    let r2 = t.ingest(
        &[obs(
            POD_A,
            POD_B,
            ObsPoint::VethEgress,
            VETH_B,
            1,
            100,
            (3 * S, 3 * S),
        )],
        &clock(8),
        &names,
    );
    let total: u64 = r1.iter().chain(&r2).map(|r| r.packets).sum();
    assert_eq!(total, 5);
    assert!(r2.is_empty());
}

#[test]
fn inbound_flow_counted_at_destination_veth() {
    let mut t = table();
    let recs = t.ingest(
        &[obs(
            REMOTE,
            POD_B,
            ObsPoint::VethEgress,
            VETH_B,
            3,
            300,
            (S, S),
        )],
        &clock(2),
        &names,
    );
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].packets, 3);
    assert!(!recs[0].same_node);
    assert_eq!(recs[0].interfaces, vec!["vethB"]);
    assert_eq!(recs[0].reporter, "DEST");
}

#[test]
fn wireguard_inbound_counted_once_and_marked_encrypted() {
    let mut t = table();
    let recs = t.ingest(
        &[
            obs(REMOTE, POD_B, ObsPoint::VethEgress, VETH_B, 7, 700, (S, S)),
            obs(REMOTE, POD_B, ObsPoint::L3Ingress, WG, 7, 700, (S, S)),
        ],
        &clock(2),
        &names,
    );
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].packets, 7);
    assert!(recs[0].encrypted);
    assert_eq!(recs[0].interfaces, vec!["wg0", "vethB"]);
    assert_eq!(recs[0].reporter, "DEST");
}

#[test]
fn outbound_through_wireguard_counted_at_pod_veth() {
    let mut t = table();
    let recs = t.ingest(
        &[
            obs(POD_A, REMOTE, ObsPoint::L3Egress, WG, 2, 200, (S, S)),
            obs(POD_A, REMOTE, ObsPoint::VethIngress, VETH_A, 2, 200, (S, S)),
        ],
        &clock(2),
        &names,
    );
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].interfaces, vec!["vethA", "wg0"]);
    assert!(recs[0].encrypted);
    assert!(!recs[0].same_node);
    assert_eq!(recs[0].reporter, "SRC");
}

#[test]
fn summing_records_gives_totals_and_counting_point_is_sticky() {
    let mut t = table();
    let mut total = 0;
    for i in 0..5u64 {
        let recs = t.ingest(
            &[
                obs(
                    POD_A,
                    POD_B,
                    ObsPoint::VethIngress,
                    VETH_A,
                    10 + i,
                    100,
                    (i * S, i * S),
                ),
                obs(
                    POD_A,
                    POD_B,
                    ObsPoint::VethEgress,
                    VETH_B,
                    10 + i,
                    100,
                    (i * S, i * S),
                ),
            ],
            &clock(i + 1),
            &names,
        );
        total += recs.iter().map(|r| r.packets).sum::<u64>();
    }
    assert_eq!(total, 10 + 11 + 12 + 13 + 14);
    assert_eq!(t.active_flows(), 1);
}

#[test]
fn idle_flows_and_endpoints_are_evicted() {
    let mut t = table();
    t.ingest(
        &[obs(
            POD_A,
            POD_B,
            ObsPoint::VethIngress,
            VETH_A,
            1,
            60,
            (S, S),
        )],
        &clock(2),
        &names,
    );
    assert_eq!((t.active_flows(), t.local_endpoints()), (1, 1));
    t.ingest(&[], &clock(2 + 61), &names);
    assert_eq!((t.active_flows(), t.local_endpoints()), (0, 0));
}

#[test]
fn forgetting_an_interface_drops_its_pods() {
    let mut t = table();
    t.ingest(
        &[
            obs(POD_A, POD_B, ObsPoint::VethIngress, VETH_A, 1, 60, (S, S)),
            obs(POD_A, POD_B, ObsPoint::VethEgress, VETH_B, 1, 60, (S, S)),
        ],
        &clock(2),
        &names,
    );
    assert_eq!(t.local_endpoints(), 2);
    t.forget_interface(VETH_B);
    assert_eq!(t.local_endpoints(), 1);
}

#[test]
fn table_bound_still_emits_records_and_counts_untracked() {
    let mut t = FlowTable::new(FlowTableConfig {
        node: "n".into(),
        idle_timeout: Duration::from_secs(60),
        max_flows: 1,
        sampling_rate: 4,
    });
    let mut a = obs(POD_A, POD_B, ObsPoint::VethIngress, VETH_A, 1, 60, (S, S));
    let mut b = a;
    a.key.protocol = IPPROTO_UDP;
    b.key.src_port = 1;
    let recs = t.ingest(&[a, b], &clock(2), &names);
    assert_eq!(recs.len(), 2);
    assert_eq!(t.active_flows(), 1);
    assert_eq!(t.untracked(), 1);
    assert!(recs.iter().all(|r| r.sampling_rate == 4));
}

#[test]
fn ipv6_and_fragments_on_the_wire() {
    let mut t = table();
    let mut o = obs(POD_A, POD_B, ObsPoint::VethIngress, VETH_A, 1, 1280, (S, S));
    o.key.family = FAMILY_IPV6;
    o.key.src_addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    o.key.dst_addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    o.key.key_flags = KEY_F_FRAGMENT;
    o.key.src_port = 0;
    o.key.dst_port = 0;
    let recs = t.ingest(&[o], &clock(2), &names);
    assert_eq!(recs[0].src_ip.len(), 16);
    assert!(recs[0].fragment);
    assert_eq!(
        ip_from_bytes(&recs[0].src_ip),
        Some(
            "fd00::2"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        )
    );
    assert_eq!(
        ip_from_bytes(&recs[0].dst_ip),
        Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3)))
    );
}

#[test]
fn multicast_and_broadcast_are_never_learned_as_pods() {
    let mut t = table();
    let mut v6 = obs(POD_A, POD_B, ObsPoint::VethEgress, VETH_B, 1, 96, (S, S));
    v6.key.family = FAMILY_IPV6;
    v6.key.src_addr = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    v6.key.dst_addr = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let bcast = obs(
        POD_A,
        [255, 255, 255, 255],
        ObsPoint::VethEgress,
        VETH_B,
        1,
        60,
        (S, S),
    );
    let mcast4 = obs(
        POD_A,
        [224, 0, 0, 1],
        ObsPoint::VethEgress,
        VETH_B,
        1,
        60,
        (S, S),
    );
    t.ingest(&[v6, bcast, mcast4], &clock(2), &names);
    assert_eq!(t.local_endpoints(), 0);
    // A pod that sends to the multicast group is learned; the flow is still not same-node.
    let mut from_pod = v6;
    from_pod.key.obs = ObsPoint::VethIngress as u8;
    let recs = t.ingest(&[from_pod], &clock(3), &names);
    assert_eq!(t.local_endpoints(), 1);
    assert!(recs.iter().all(|r| !r.same_node));
}

/// `n` flows between the two pods, each seen at both veths, the egress observations first
/// (the kernel's map order is arbitrary), starts spread over 3 s.
fn many(n: u32) -> Vec<Observation> {
    let mut v = Vec::new();
    for point in [ObsPoint::VethEgress, ObsPoint::VethIngress] {
        for i in 0..n {
            let ifindex = if point == ObsPoint::VethEgress {
                VETH_B
            } else {
                VETH_A
            };
            let t = S + u64::from(i % 3) * S;
            let mut o = obs(POD_A, POD_B, point, ifindex, 2, 120, (t, t + 1));
            o.key.src_port = u16::try_from(1000 + i % 50_000).unwrap();
            o.key.dst_port = u16::try_from(80 + i / 50_000).unwrap();
            v.push(o);
        }
    }
    v
}

#[test]
fn chunked_ingest_makes_the_same_records_in_start_order() {
    let drain = many(1000);
    let mut whole = table();
    let expected = whole.ingest(&drain, &clock(5), &names);
    assert_eq!(expected.len(), 1000);
    let mut chunked = table();
    let n = chunked.group(&drain);
    assert_eq!(n, 1000);
    let mut got = Vec::new();
    for from in (0..n).step_by(64) {
        chunked.records(
            &drain,
            from..(from + 64).min(n),
            &clock(5),
            &names,
            &NoTranslation,
            &mut got,
        );
    }
    chunked.evict(&clock(5));
    assert_eq!(got, expected);
    let starts: Vec<i64> = got
        .iter()
        .map(|r| r.start_time.as_ref().map_or(0, |t| t.seconds))
        .collect();
    assert!(starts.is_sorted(), "{starts:?}");
    assert_eq!(starts.first(), Some(&1_700_000_001));
    assert_eq!(starts.last(), Some(&1_700_000_003));
    assert!(
        got.iter()
            .all(|r| r.packets == 2 && r.interfaces == ["vethA", "vethB"] && r.same_node)
    );
    // Out of range: nothing, no panic.
    let mut none = Vec::new();
    chunked.records(
        &drain,
        n..n + 5,
        &clock(5),
        &names,
        &NoTranslation,
        &mut none,
    );
    assert!(none.is_empty());
}

#[test]
fn scratch_is_reused_and_a_second_drain_keeps_sticky_points() {
    let mut t = table();
    let first = t.ingest(&many(500), &clock(5), &names);
    assert_eq!(first.len(), 500);
    // Next drain: only the destination veth saw these flows (the packets straddled a flip):
    // they were counted at the source veth, so no record.
    let late: Vec<Observation> = many(500)
        .into_iter()
        .filter(|o| o.key.obs == ObsPoint::VethEgress as u8)
        .collect();
    assert!(t.ingest(&late, &clock(6), &names).is_empty());
    assert_eq!(t.active_flows(), 500);
}

#[test]
fn untracked_flow_seen_twice_makes_one_record_and_counts_once() {
    let mut t = FlowTable::new(FlowTableConfig {
        node: "n".into(),
        idle_timeout: Duration::from_secs(60),
        max_flows: 1,
        sampling_rate: 1,
    });
    let tracked = obs(POD_A, POD_B, ObsPoint::VethIngress, VETH_A, 1, 60, (S, S));
    let mut egress = obs(POD_A, POD_B, ObsPoint::VethEgress, VETH_B, 3, 180, (S, S));
    let mut ingress = obs(POD_A, POD_B, ObsPoint::VethIngress, VETH_A, 3, 180, (S, S));
    egress.key.src_port = 7;
    ingress.key.src_port = 7;
    let recs = t.ingest(&[tracked, egress, ingress], &clock(2), &names);
    assert_eq!(t.untracked(), 1);
    assert_eq!(t.active_flows(), 1);
    let untracked: Vec<_> = recs.iter().filter(|r| r.src_port == 7).collect();
    assert_eq!(untracked.len(), 1);
    assert_eq!(untracked[0].packets, 3);
    assert_eq!(untracked[0].interfaces, ["vethA", "vethB"]);
}

#[test]
fn flow_ids_differ_in_every_field() {
    let base = obs(POD_A, POD_B, ObsPoint::VethIngress, VETH_A, 1, 60, (S, S)).key;
    let id = FlowId::of(&base);
    let mut variants = Vec::new();
    for i in 0..16 {
        let mut k = base;
        k.src_addr[i] ^= 1;
        variants.push(k);
        let mut k = base;
        k.dst_addr[i] ^= 0x80;
        variants.push(k);
    }
    let mut k = base;
    k.src_port ^= 0x8000;
    variants.push(k);
    let mut k = base;
    k.dst_port ^= 1;
    variants.push(k);
    let mut k = base;
    k.protocol = IPPROTO_UDP;
    variants.push(k);
    let mut k = base;
    k.family = FAMILY_IPV6;
    variants.push(k);
    let mut k = base;
    k.key_flags = KEY_F_FRAGMENT;
    variants.push(k);
    let ids: std::collections::HashSet<FlowId> = variants.iter().map(FlowId::of).collect();
    assert_eq!(ids.len(), variants.len());
    assert!(!ids.contains(&id));
    // The observation point is not part of a flow's identity.
    let mut other_point = base;
    other_point.obs = ObsPoint::VethEgress as u8;
    assert_eq!(FlowId::of(&other_point), id);
}

#[test]
fn idle_scan_runs_every_eighth_of_the_timeout_and_the_table_shrinks() {
    // Idle timeout 60 s: a scan at most every 7.5 s.
    let mut t = FlowTable::new(FlowTableConfig {
        max_flows: 100_000,
        ..table().cfg
    });
    t.ingest(&many(100_000), &clock(5), &names);
    assert_eq!(t.active_flows(), 100_000);
    let grown = t.flows.capacity();
    // Scanned at 60 s: the flows (last seen at 1 to 3 s) are not idle yet.
    t.ingest(&[], &clock(60), &names);
    assert_eq!(t.active_flows(), 100_000);
    // 66 s: idle, but the last scan was 6 s ago.
    t.ingest(&[], &clock(66), &names);
    assert_eq!(t.active_flows(), 100_000);
    // 68 s: scanned, forgotten, and the table gave its memory back.
    t.ingest(&[], &clock(68), &names);
    assert_eq!(t.active_flows(), 0);
    assert!(
        t.flows.capacity() < grown / 4,
        "{grown} -> {}",
        t.flows.capacity()
    );
}

#[test]
fn interface_named_twice_is_listed_once() {
    // Two ifindexes with one name (an interface re-created under its old name).
    let same = |ifindex: u32| match ifindex {
        VETH_A | VETH_B => Some("veth0".to_string()),
        _ => None,
    };
    let mut t = table();
    let recs = t.ingest(
        &[
            obs(POD_A, POD_B, ObsPoint::VethIngress, VETH_A, 1, 60, (S, S)),
            obs(POD_A, POD_B, ObsPoint::VethEgress, VETH_B, 1, 60, (S, S)),
            obs(POD_A, REMOTE, ObsPoint::VethIngress, 99, 1, 60, (S, S)),
        ],
        &clock(2),
        &same,
    );
    let mut ifaces: Vec<Vec<String>> = recs.into_iter().map(|r| r.interfaces).collect();
    ifaces.sort();
    assert_eq!(
        ifaces,
        [vec!["if99".to_string()], vec!["veth0".to_string()]]
    );
}

/// Translations of one Service connection: `POD_A:40000 → VIP:80`, DNATed to `POD_B:8080`.
struct OneService;

const VIP: [u8; 4] = [10, 96, 0, 10];

impl Translate for OneService {
    fn translate(&self, key: &FlowKey) -> Option<Translated> {
        let request = (mapped(POD_A), 40000, mapped(VIP), 80);
        let reply = (mapped(POD_B), 8080, mapped(POD_A), 40000);
        let seen = (key.src_addr, key.src_port, key.dst_addr, key.dst_port);
        let (real, is_reply) = if seen == request {
            ((mapped(POD_A), 40000, mapped(POD_B), 8080), false)
        } else if seen == reply {
            (reply, true)
        } else {
            return None;
        };
        Some(Translated {
            key: FlowKey {
                src_addr: real.0,
                src_port: real.1,
                dst_addr: real.2,
                dst_port: real.3,
                ..*key
            },
            service: Some((mapped(VIP), 80)),
            snat: None,
            reply: is_reply,
        })
    }
}

#[test]
fn a_service_flow_names_the_backend_and_stays_same_node() {
    let mut t = table();
    // B is known behind its veth (its veth's slot noted it as a destination).
    t.learn_local(FAMILY_IPV4, &mapped(POD_B), VETH_B, S);
    let mut request = obs(POD_A, VIP, ObsPoint::VethIngress, VETH_A, 3, 300, (S, S));
    request.key.protocol = IPPROTO_UDP;
    let recs = t.ingest_translated(&[request], &clock(2), &names, &OneService);
    let [r] = recs.as_slice() else {
        panic!("{recs:?}")
    };
    assert_eq!(ip_from_bytes(&r.dst_ip), Some(IpAddr::from(POD_B)));
    assert_eq!((r.src_port, r.dst_port, r.packets), (40000, 8080, 3));
    assert!(r.same_node);
    assert_eq!(r.interfaces, ["vethA", "vethB"]);
    let x = r
        .translation
        .as_ref()
        .unwrap_or_else(|| panic!("no translation"));
    assert_eq!(
        (x.service_ip.as_slice(), x.service_port, x.reply),
        (&VIP[..], 80, false)
    );
    assert!(x.snat_ip.is_empty());

    // The reply, counted where it left the backend.
    let mut reply = obs(
        POD_B,
        POD_A,
        ObsPoint::VethIngress,
        VETH_B,
        3,
        300,
        (2 * S, 2 * S),
    );
    (reply.key.src_port, reply.key.dst_port, reply.key.protocol) = (8080, 40000, IPPROTO_UDP);
    let recs = t.ingest_translated(&[reply], &clock(3), &names, &OneService);
    let [r] = recs.as_slice() else {
        panic!("{recs:?}")
    };
    assert_eq!(ip_from_bytes(&r.src_ip), Some(IpAddr::from(POD_B)));
    assert!(r.same_node && r.translation.as_ref().is_some_and(|x| x.reply));
    assert_eq!(r.interfaces, ["vethB", "vethA"]);
    // Counted where it left the backend's pod: the reply's source side.
    assert_eq!(r.reporter, "SRC");
    // Without translations the same observation names the ClusterIP, not same-node.
    let recs = t.ingest(&[request], &clock(4), &names);
    assert!(!recs[0].same_node && recs[0].translation.is_none());
    assert_eq!(ip_from_bytes(&recs[0].dst_ip), Some(IpAddr::from(VIP)));
}

#[test]
fn reporter_is_the_side_of_the_observation_point() {
    assert_eq!(reporter(ObsPoint::VethIngress as u8), "SRC");
    assert_eq!(reporter(ObsPoint::L3Egress as u8), "SRC");
    assert_eq!(reporter(ObsPoint::VethEgress as u8), "DEST");
    assert_eq!(reporter(ObsPoint::L3Ingress as u8), "DEST");
    assert_eq!(reporter(200), "DEST");
    // Leaving this node through WireGuard, with no pod veth before it (a host process).
    let mut t = table();
    let recs = t.ingest(
        &[obs(REMOTE, POD_A, ObsPoint::L3Egress, WG, 1, 60, (S, S))],
        &clock(2),
        &names,
    );
    assert_eq!(recs[0].reporter, "SRC");
}

/// [`OneService`], with translated keys that claim another observation point.
struct OtherPoint;

impl Translate for OtherPoint {
    fn translate(&self, key: &FlowKey) -> Option<Translated> {
        OneService.translate(key).map(|mut t| {
            t.key.obs = if key.obs == ObsPoint::VethEgress as u8 {
                ObsPoint::VethIngress as u8
            } else {
                ObsPoint::VethEgress as u8
            };
            t
        })
    }
}

#[test]
fn a_service_reply_is_reported_by_the_side_it_was_counted_on() {
    // The reply reaching the client's veth (from a backend elsewhere): the destination's side,
    // although the translated record reads backend -> client.
    let mut reply = obs(POD_B, POD_A, ObsPoint::VethEgress, VETH_A, 2, 200, (S, S));
    (reply.key.src_port, reply.key.dst_port) = (8080, 40000);
    let request = obs(POD_A, VIP, ObsPoint::VethIngress, VETH_A, 2, 200, (S, S));
    for (translate, what) in [
        (&OneService as &dyn Translate, "one service"),
        (&OtherPoint, "other point"),
    ] {
        let mut t = table();
        let recs = t.ingest_translated(&[reply, request], &clock(2), &names, translate);
        let sides: Vec<(bool, &str)> = recs
            .iter()
            .map(|r| {
                (
                    r.translation.as_ref().is_some_and(|x| x.reply),
                    r.reporter.as_str(),
                )
            })
            .collect();
        assert_eq!(sides.len(), 2, "{what}: {recs:?}");
        assert!(sides.contains(&(true, "DEST")), "{what}: {sides:?}");
        assert!(sides.contains(&(false, "SRC")), "{what}: {sides:?}");
    }
}

#[test]
fn flows_the_programs_could_not_find_in_conntrack() {
    let mut t = table();
    t.learn_local(FAMILY_IPV4, &mapped(POD_A), VETH_A, 0);
    t.learn_local(FAMILY_IPV4, &mapped(POD_B), VETH_B, 0);
    let entry = |src: [u8; 4], dst: [u8; 4], point: ObsPoint, ct: u8, protocol: u8| {
        let o = obs(src, dst, point, VETH_A, 1, 60, (S, S));
        crate::capture::FlowEntry {
            key: FlowKey { protocol, ..o.key },
            stats: FlowStats { ct, ..o.stats },
        }
    };
    let missing = podflow_ebpf::CT_MISSING;
    let (found, plain) = (podflow_ebpf::CT_FOUND, podflow_ebpf::CT_PLAIN);
    let vip = [10, 96, 0, 10];
    let (ingress, egress) = (ObsPoint::VethIngress, ObsPoint::VethEgress);
    let entries = [
        entry(POD_A, REMOTE, ingress, missing, IPPROTO_UDP),
        entry(POD_A, REMOTE, ingress, missing, IPPROTO_UDP), // the same flow twice
        entry(POD_A, vip, ingress, 0, IPPROTO_TCP),          // never looked up (cache only)
        entry(POD_A, POD_B, ingress, 0, IPPROTO_UDP),        // between two pods of the node
        entry(POD_A, REMOTE, ingress, found | plain, IPPROTO_TCP), // found
        entry(POD_A, vip, ingress, found, IPPROTO_UDP),      // found, translated
        entry(REMOTE, POD_B, egress, 0, IPPROTO_UDP),        // after conntrack: its reverse
        entry(POD_A, REMOTE, ingress, missing, 1),           // ICMP: not asked for
    ];
    let mut out = vec![FlowKey::default()];
    t.unfound(&entries, &NoTranslation, &mut out);
    let tuples: Vec<_> = out
        .iter()
        .map(|k| (k.src_addr, k.dst_addr, k.src_port, k.protocol, k.obs))
        .collect();
    assert_eq!(
        tuples,
        [
            (mapped(POD_A), mapped(REMOTE), 40000, IPPROTO_UDP, 0),
            (mapped(POD_A), mapped(vip), 40000, IPPROTO_TCP, 0),
            (mapped(POD_B), mapped(REMOTE), 80, IPPROTO_UDP, 0),
        ]
    );
    // Already translated: not asked for again.
    struct All;
    impl Translate for All {
        fn translate(&self, key: &FlowKey) -> Option<Translated> {
            Some(Translated {
                key: *key,
                service: None,
                snat: None,
                reply: false,
            })
        }
    }
    t.unfound(&entries, &All, &mut out);
    assert!(out.is_empty());
}
