//! Flows in user space: turn drained kernel entries into flow records, counting each packet once.
//!
//! The kernel counts a packet at every hook it crosses, keyed by the flow's 5-tuple *and* the
//! observation point ([`ObsPoint`]). A packet between two pods on this node crosses the source
//! pod's veth (host-side ingress) and then the destination pod's veth (host-side egress); an
//! inter-node packet through WireGuard crosses a pod veth and the WireGuard device. This module
//! picks, per flow, one *counting point* and uses the other observations only to say which
//! interfaces saw the flow.
//!
//! The counting point is the earliest point on the packet's path that the flow was seen at when it
//! first appeared, in path order [`VethIngress`, `L3Ingress`, `VethEgress`, `L3Egress`], and it is
//! sticky while the flow is tracked. Because the kernel's drain flips the epoch the programs stamp
//! keys with atomically (see `agent-ebpf/src/lib.rs`), a packet's earlier observation is always in the
//! same drain as its later one or in an earlier drain, never a later one: when a flow first
//! appears, its earliest point is present, and a packet that straddles a flip (counted at the
//! source veth in drain k, at the destination veth in drain k+1) is counted once, in drain k.
//!
//! [`VethIngress`]: ObsPoint::VethIngress
//! [`L3Ingress`]: ObsPoint::L3Ingress
//! [`VethEgress`]: ObsPoint::VethEgress
//! [`L3Egress`]: ObsPoint::L3Egress

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

pub mod enrich;

use podflow_ebpf::{FAMILY_IPV4, FlowKey, FlowStats, KEY_F_FRAGMENT, ObsPoint};

use crate::proto;

/// Path order of the observation points: lower is earlier on a packet's path through the node.
const fn path_rank(obs: ObsPoint) -> u8 {
    match obs {
        ObsPoint::VethIngress => 0,
        ObsPoint::L3Ingress => 1,
        ObsPoint::VethEgress => 2,
        ObsPoint::L3Egress => 3,
    }
}

/// A flow's identity: the kernel key without the observation point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub key_flags: u8,
}

impl FlowId {
    pub fn of(key: &FlowKey) -> FlowId {
        FlowId {
            src_addr: key.src_addr,
            dst_addr: key.dst_addr,
            src_port: key.src_port,
            dst_port: key.dst_port,
            protocol: key.protocol,
            family: key.family,
            key_flags: key.key_flags,
        }
    }
}

/// One drained kernel entry: a flow seen at one observation point, merged over CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub key: FlowKey,
    pub stats: FlowStats,
}

#[derive(Clone, Debug)]
pub struct FlowTableConfig {
    /// Node name put on every record.
    pub node: String,
    /// A flow not seen for this long is forgotten (its counting point is chosen afresh if it comes
    /// back).
    pub idle_timeout: Duration,
    /// At most this many flows are tracked; beyond, records are still produced but the flow's
    /// counting point is not remembered (counted in [`FlowTable::untracked`]).
    pub max_flows: usize,
    /// The kernel's 1-in-N sampling rate, carried on every record.
    pub sampling_rate: u32,
}

#[derive(Clone, Copy, Debug)]
struct FlowState {
    counting: ObsPoint,
    last_seen_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct LocalEndpoint {
    ifindex: u32,
    last_seen_ns: u64,
}

/// Wall-clock conversion for the kernel's `CLOCK_MONOTONIC` timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in nanoseconds.
    pub realtime_offset_ns: i128,
    /// CLOCK_MONOTONIC now, in nanoseconds.
    pub mono_now_ns: u64,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            realtime_offset_ns: i128::from(real) - i128::from(mono),
            mono_now_ns: mono,
        }
    }

    pub fn to_timestamp(&self, mono_ns: u64) -> prost_types::Timestamp {
        timestamp_from_unix_ns(i128::from(mono_ns) + self.realtime_offset_ns)
    }
}

/// Converts nanoseconds since the Unix epoch into a protobuf timestamp.
pub fn timestamp_from_unix_ns(unix_ns: i128) -> prost_types::Timestamp {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    prost_types::Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos).unwrap_or(0),
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Aggregation state across drains: which point counts each flow, and which addresses are pods
/// behind this node's veths.
#[derive(Debug)]
pub struct FlowTable {
    cfg: FlowTableConfig,
    flows: HashMap<FlowId, FlowState>,
    /// Addresses seen leaving a pod veth (source at veth ingress) or entering one (destination at
    /// veth egress): the pods behind this node's veths.
    local: HashMap<[u8; 16], LocalEndpoint>,
    untracked: u64,
}

impl FlowTable {
    pub fn new(cfg: FlowTableConfig) -> FlowTable {
        FlowTable {
            cfg,
            flows: HashMap::new(),
            local: HashMap::new(),
            untracked: 0,
        }
    }

    /// Flows currently tracked.
    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Records whose flow could not be tracked because the table was full (cumulative).
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Pod addresses currently known to sit behind this node's veths.
    pub fn local_endpoints(&self) -> usize {
        self.local.len()
    }

    /// Forgets the pods learned behind an interface that was removed.
    pub fn forget_interface(&mut self, ifindex: u32) {
        self.local.retain(|_, ep| ep.ifindex != ifindex);
    }

    /// Turns one drain's entries into flow records (one per flow with counted packets), updates
    /// the tracking state and evicts idle flows. `ifname` names an ifindex.
    pub fn ingest(
        &mut self,
        observations: &[Observation],
        clock: &Clock,
        ifname: &dyn Fn(u32) -> Option<String>,
    ) -> Vec<proto::Flow> {
        // 1. Learn which addresses are pods behind this node's veths.
        for o in observations {
            let (addr, seen) = match ObsPoint::from_u8(o.key.obs) {
                Some(ObsPoint::VethIngress) => (o.key.src_addr, o.stats.last_ns),
                Some(ObsPoint::VethEgress) => (o.key.dst_addr, o.stats.last_ns),
                _ => continue,
            };
            if !is_unicast(o.key.family, &addr) {
                // Multicast, broadcast or unspecified: never a pod.
                continue;
            }
            let ep = self.local.entry(addr).or_insert(LocalEndpoint {
                ifindex: o.stats.ifindex,
                last_seen_ns: seen,
            });
            ep.ifindex = o.stats.ifindex;
            ep.last_seen_ns = ep.last_seen_ns.max(seen);
        }

        // 2. Group the observations of each flow.
        let mut groups: HashMap<FlowId, Vec<(ObsPoint, &Observation)>> = HashMap::new();
        for o in observations {
            let Some(obs) = ObsPoint::from_u8(o.key.obs) else {
                continue;
            };
            groups.entry(FlowId::of(&o.key)).or_default().push((obs, o));
        }

        // 3. One record per flow, from its counting point.
        let mut records = Vec::with_capacity(groups.len());
        for (id, mut group) in groups {
            group.sort_by_key(|(obs, _)| path_rank(*obs));
            let earliest = group[0].0;
            let last_seen = group
                .iter()
                .map(|(_, o)| o.stats.last_ns)
                .max()
                .unwrap_or(0);
            let counting = match self.flows.get_mut(&id) {
                Some(state) => {
                    state.last_seen_ns = state.last_seen_ns.max(last_seen);
                    state.counting
                }
                None => {
                    if self.flows.len() < self.cfg.max_flows {
                        self.flows.insert(
                            id,
                            FlowState {
                                counting: earliest,
                                last_seen_ns: last_seen,
                            },
                        );
                    } else {
                        self.untracked += 1;
                    }
                    earliest
                }
            };
            let Some((_, counted)) = group.iter().find(|(obs, _)| *obs == counting) else {
                // Only later points saw this flow in this drain: its packets were counted at the
                // counting point in an earlier drain.
                continue;
            };
            if counted.stats.packets == 0 {
                continue;
            }
            records.push(self.record(&id, counted, &group, clock, ifname));
        }

        // 4. Evict idle flows and stale endpoints.
        let horizon = clock
            .mono_now_ns
            .saturating_sub(u64::try_from(self.cfg.idle_timeout.as_nanos()).unwrap_or(u64::MAX));
        self.flows.retain(|_, st| st.last_seen_ns >= horizon);
        self.local.retain(|_, ep| ep.last_seen_ns >= horizon);

        records.sort_by(|a, b| {
            let ka = a.start_time.as_ref().map(|t| (t.seconds, t.nanos));
            let kb = b.start_time.as_ref().map(|t| (t.seconds, t.nanos));
            ka.cmp(&kb)
        });
        records
    }

    fn record(
        &self,
        id: &FlowId,
        counted: &Observation,
        group: &[(ObsPoint, &Observation)],
        clock: &Clock,
        ifname: &dyn Fn(u32) -> Option<String>,
    ) -> proto::Flow {
        let name = |ifindex: u32| ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
        let mut interfaces = vec![name(counted.stats.ifindex)];
        for (_, o) in group {
            let n = name(o.stats.ifindex);
            if !interfaces.contains(&n) {
                interfaces.push(n);
            }
        }
        let encrypted = group
            .iter()
            .any(|(obs, _)| matches!(obs, ObsPoint::L3Ingress | ObsPoint::L3Egress));
        let same_node =
            self.local.contains_key(&id.src_addr) && self.local.contains_key(&id.dst_addr);
        let stats = &counted.stats;
        proto::Flow {
            start_time: Some(clock.to_timestamp(stats.first_ns)),
            end_time: Some(clock.to_timestamp(stats.last_ns.max(stats.first_ns))),
            src_ip: ip_bytes(id.family, &id.src_addr),
            dst_ip: ip_bytes(id.family, &id.dst_addr),
            src_port: u32::from(id.src_port),
            dst_port: u32::from(id.dst_port),
            protocol: u32::from(id.protocol),
            packets: stats.packets,
            bytes: stats.bytes,
            tcp_flags: u32::from(stats.tcp_flags),
            interfaces,
            same_node,
            sampling_rate: self.cfg.sampling_rate.max(1),
            fragment: id.key_flags & KEY_F_FRAGMENT != 0,
            node: self.cfg.node.clone(),
            encrypted,
            // Set by enrichment, which knows where the endpoints live.
            inter_node: false,
            src: None,
            dst: None,
            metadata_age: None,
            plaintext_inter_node: false,
        }
    }
}

/// Whether an address (as stored in the kernel key) can belong to one endpoint.
fn is_unicast(family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_IPV4 {
        let a = Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]);
        !(a.is_multicast() || a.is_broadcast() || a.is_unspecified())
    } else {
        let a = Ipv6Addr::from(*addr);
        !(a.is_multicast() || a.is_unspecified())
    }
}

/// The wire form of an address: 4 bytes for IPv4 (stored IPv4-mapped in the kernel key), 16 for
/// IPv6.
pub fn ip_bytes(family: u8, addr: &[u8; 16]) -> Vec<u8> {
    if family == FAMILY_IPV4 {
        addr[12..].to_vec()
    } else {
        addr.to_vec()
    }
}

/// Parses the wire form of an address (a record's `src_ip`/`dst_ip`): 4 bytes IPv4, 16 bytes
/// IPv6, else `None`.
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use podflow_ebpf::{FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP};

    use super::*;

    const POD_A: [u8; 4] = [10, 0, 0, 2];
    const POD_B: [u8; 4] = [10, 0, 0, 3];
    const REMOTE: [u8; 4] = [10, 9, 0, 7];
    const VETH_A: u32 = 11;
    const VETH_B: u32 = 12;
    const WG: u32 = 20;

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&v4);
        a
    }

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
                _pad: [0; 3],
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
        assert_eq!(r.tcp_flags, 0x12);
        assert_eq!(
            r.start_time.as_ref().map(|t| t.seconds),
            Some(1_700_000_001)
        );
        assert_eq!(r.end_time.as_ref().map(|t| t.seconds), Some(1_700_000_002));
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
    fn timestamps_handle_negative_and_fractional_offsets() {
        let ts = timestamp_from_unix_ns(-1);
        assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_999));
        let ts = timestamp_from_unix_ns(1_500_000_000);
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_000));
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
}
