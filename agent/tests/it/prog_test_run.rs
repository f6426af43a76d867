//! The tc programs run with `BPF_PROG_TEST_RUN` on crafted packets: verdict, untouched packet data
//! and the exact effect on the flow maps and counters.
//!
//! One concern over 800 lines on purpose: the corpus of crafted packets (malformed, truncated,
//! IPv6 chains, fragments, VLAN, GSO, L3-only) and the map effects each must have, read as one.
//!
//! Privileged (loads eBPF programs): run as root, e.g. `cargo xtask test` or
//! `sudo -E cargo test -p podflow --test it -- prog_test_run::`. With `PODFLOW_SKIP_PRIVILEGED=1`
//! the tests return early when not root.
use std::net::Ipv6Addr;

use crate::support::{
    packets::{flow_key, pkt::*},
    privileged,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult},
};
use podflow::capture::object::EBPF_OBJECT;
use podflow_ebpf::{
    COUNTER_COUNT, CacheEntry, Config, FlowKey, FlowKeyV4, FlowKeyV6, FlowValue, KEY_F_EPOCH,
    KEY_F_FRAGMENT, KEY_F_L4_TRUNCATED, KernelCounter, KeyTail, ObsPoint, SPILL_BYTES,
    SPILL_PACKETS, SpillValue,
};

// TCP flags.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const ALL_PROGS: [&str; 4] = [
    podflow_ebpf::PROG_VETH_INGRESS,
    podflow_ebpf::PROG_VETH_EGRESS,
    podflow_ebpf::PROG_L3_INGRESS,
    podflow_ebpf::PROG_L3_EGRESS,
];
const VETH_IN: &str = podflow_ebpf::PROG_VETH_INGRESS;
const VETH_EG: &str = podflow_ebpf::PROG_VETH_EGRESS;
const L3_IN: &str = podflow_ebpf::PROG_L3_INGRESS;
const L3_EG: &str = podflow_ebpf::PROG_L3_EGRESS;

/// tc_act verdict the programs must return on every path: TC_ACT_UNSPEC (-1).
const VERDICT: u32 = u32::MAX;

/// ifindex the kernel gives the test skb (the loopback device).
const LO_IFINDEX: u32 = 1;

/// The kernel's `struct __sk_buff` (UAPI), for `ctx_in`. BPF_PROG_TEST_RUN only accepts mark,
/// priority, ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_segs, gso_size and hwtstamp
/// non-zero (net/bpf/test_run.c, convert___skb_to_skb).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SkBuffCtx {
    len: u32,
    pkt_type: u32,
    mark: u32,
    queue_mapping: u32,
    protocol: u32,
    vlan_present: u32,
    vlan_tci: u32,
    vlan_proto: u32,
    priority: u32,
    ingress_ifindex: u32,
    ifindex: u32,
    tc_index: u32,
    cb: [u32; 5],
    hash: u32,
    tc_classid: u32,
    data: u32,
    data_end: u32,
    napi_id: u32,
    family: u32,
    remote_ip4: u32,
    local_ip4: u32,
    remote_ip6: [u32; 4],
    local_ip6: [u32; 4],
    remote_port: u32,
    local_port: u32,
    data_meta: u32,
    flow_keys: u64,
    tstamp: u64,
    wire_len: u32,
    gso_segs: u32,
    sk: u64,
    gso_size: u32,
    tstamp_type: u8,
    _bits: [u8; 3],
    hwtstamp: u64,
}
const _: () = assert!(size_of::<SkBuffCtx>() == 192);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, gso_segs) == 164);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, gso_size) == 176);

impl SkBuffCtx {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain integers, no padding (sizes/offsets asserted above).
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

/// One freshly loaded object (its own maps) with the four programs loaded.
struct Harness {
    ebpf: Ebpf,
}

/// One flow entry's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Totals {
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    ifindex: u32,
}

impl Harness {
    fn new() -> Option<Harness> {
        Harness::with_loader(|_| {})
    }

    fn with_loader(tweak: impl FnOnce(&mut EbpfLoader<'_>)) -> Option<Harness> {
        if !privileged() {
            return None;
        }
        let mut loader = EbpfLoader::new();
        tweak(&mut loader);
        let mut ebpf = loader.load(EBPF_OBJECT).expect("load the eBPF object");
        for name in ALL_PROGS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} missing"))
                .try_into()
                .expect("a classifier");
            prog.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        let mut h = Harness { ebpf };
        h.set_config(0, 1);
        Some(h)
    }

    fn set_config(&mut self, epoch: u32, sample_rate: u32) {
        let mut cfg: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(podflow_ebpf::CONFIG).expect("CONFIG"))
                .expect("array");
        cfg.set(0, Config { epoch, sample_rate }, 0)
            .expect("write CONFIG");
    }

    fn prog(&self, name: &str) -> &SchedClassifier {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name} missing"))
            .try_into()
            .expect("a classifier")
    }

    /// Runs `name` on `data` (`repeat` times), asserting the verdict and that the packet comes
    /// back unchanged.
    fn run_with(
        &self,
        name: &str,
        data: &[u8],
        ctx: Option<&SkBuffCtx>,
        repeat: u32,
    ) -> TestRunResult {
        let mut out = vec![0u8; data.len() + 64];
        let res = self
            .prog(name)
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: ctx.map(SkBuffCtx::as_bytes),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test_run {name}: {e:?}"));
        assert_eq!(
            res.return_value, VERDICT,
            "{name}: verdict must be TC_ACT_UNSPEC (-1)"
        );
        assert_eq!(
            res.data_size_out as usize,
            data.len(),
            "{name}: packet length changed"
        );
        assert_eq!(&out[..data.len()], data, "{name}: packet data changed");
        res
    }

    fn run(&self, name: &str, data: &[u8]) {
        self.run_with(name, data, None, 1);
    }

    fn counters(&self) -> [u64; COUNTER_COUNT as usize] {
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(podflow_ebpf::COUNTERS).expect("COUNTERS"))
                .expect("per-CPU array");
        let mut out = [0; COUNTER_COUNT as usize];
        for (i, c) in out.iter_mut().enumerate() {
            *c = arr.get(&(i as u32), 0).expect("read counter").iter().sum();
        }
        assert_eq!(
            out[KernelCounter::Packets as usize],
            0,
            "the programs do not count runs themselves"
        );
        // What user space derives (Capture::drain): every run ends in exactly one outcome.
        out[KernelCounter::Packets as usize] = KernelCounter::ALL
            .iter()
            .filter(|c| c.is_outcome())
            .map(|c| out[*c as usize])
            .sum();
        out
    }

    /// Asserts the counters: the listed ones have exactly these values, all others are 0.
    fn assert_counters(&self, expected: &[(KernelCounter, u64)]) {
        let got = self.counters();
        for c in KernelCounter::ALL {
            let want = expected
                .iter()
                .find(|(e, _)| *e == c)
                .map_or(0, |(_, n)| *n);
            assert_eq!(got[c as usize], want, "counter {} (all: {got:?})", c.name());
        }
    }

    /// The entries of one epoch in both flow maps (IPv4 keys as IPv4-mapped [`FlowKey`]s, the
    /// epoch bit cleared).
    fn flows(&self, epoch: u32) -> Vec<(FlowKey, Totals)> {
        let bit = if epoch & 1 != 0 { KEY_F_EPOCH } else { 0 };
        let mut raw: Vec<(FlowKey, KeyTail, FlowValue)> =
            self.hash_maps(podflow_ebpf::FLOWS_V4, podflow_ebpf::FLOWS_V6);
        // The flows this CPU (any CPU) still holds in its cache.
        let c4: PerCpuArray<_, CacheEntry<FlowKeyV4>> =
            PerCpuArray::try_from(self.ebpf.map(podflow_ebpf::CACHE_V4).expect("CACHE_V4"))
                .expect("per-cpu array");
        let c6: PerCpuArray<_, CacheEntry<FlowKeyV6>> =
            PerCpuArray::try_from(self.ebpf.map(podflow_ebpf::CACHE_V6).expect("CACHE_V6"))
                .expect("per-cpu array");
        for i in 0..2 * podflow_ebpf::CACHE_SLOTS {
            for e in c4.get(&i, 0).expect("read CACHE_V4").iter() {
                if e.value.counts != 0 {
                    raw.push((e.key.to_key(), e.key.tail, e.value));
                }
            }
            for e in c6.get(&i, 0).expect("read CACHE_V6").iter() {
                if e.value.counts != 0 {
                    raw.push((e.key.to_key(), e.key.tail, e.value));
                }
            }
        }
        let spilled = self.spills();
        for (_, _, s) in &spilled {
            assert!(s.packets != 0 || s.bytes != 0, "an empty spill entry");
        }
        let mut merged: Vec<(FlowKey, KeyTail, Totals)> = Vec::new();
        for (key, tail, v) in raw {
            assert_eq!(tail.meta & 0x4c, 0, "unused meta bits are clear: {tail:?}");
            if tail.epoch_bit() != bit {
                continue;
            }
            assert_ne!(v.packets(), 0, "an entry or cache slot has packets");
            // The test runs within a few ticks: first and last are the same or adjacent.
            let span = v.last_jiffies.wrapping_sub(v.first_jiffies);
            assert!(span < 1_000, "first..last spans {span} ticks");
            let t = Totals {
                packets: v.packets(),
                bytes: v.bytes(),
                tcp_flags: v.tcp_flags,
                ifindex: v.ifindex(&tail),
            };
            match merged
                .iter_mut()
                .find(|(k, tl, _)| *k == key && *tl == tail)
            {
                Some((_, _, m)) => {
                    m.packets += t.packets;
                    m.bytes += t.bytes;
                    m.tcp_flags |= t.tcp_flags;
                }
                None => merged.push((key, tail, t)),
            }
        }
        let mut out = Vec::new();
        for (key, tail, mut t) in merged {
            for (_, _, s) in spilled.iter().filter(|(k, tl, _)| *k == key && *tl == tail) {
                t.packets += s.packets;
                t.bytes += s.bytes;
            }
            out.push((key, t));
        }
        out.sort_by_key(|(k, _)| {
            (
                k.obs,
                k.protocol,
                k.src_port,
                k.dst_port,
                k.src_addr,
                k.dst_addr,
                k.key_flags,
            )
        });
        out
    }

    /// The entries of both spill maps (kernel keys as [`FlowKey`] and tail).
    fn spills(&self) -> Vec<(FlowKey, KeyTail, SpillValue)> {
        self.hash_maps(podflow_ebpf::SPILL_V4, podflow_ebpf::SPILL_V6)
    }

    /// Every entry of an IPv4 and an IPv6 hash map keyed like the flow maps (kernel keys as
    /// [`FlowKey`] and tail).
    fn hash_maps<V: aya::Pod>(&self, v4: &str, v6: &str) -> Vec<(FlowKey, KeyTail, V)> {
        let mut out = Vec::new();
        let m4: HashMap<_, FlowKeyV4, V> =
            HashMap::try_from(self.ebpf.map(v4).expect(v4)).expect("hash");
        for entry in m4.iter() {
            let (k, v) = entry.unwrap_or_else(|e| panic!("iterate {v4}: {e}"));
            out.push((k.to_key(), k.tail, v));
        }
        let m6: HashMap<_, FlowKeyV6, V> =
            HashMap::try_from(self.ebpf.map(v6).expect(v6)).expect("hash");
        for entry in m6.iter() {
            let (k, v) = entry.unwrap_or_else(|e| panic!("iterate {v6}: {e}"));
            out.push((k.to_key(), k.tail, v));
        }
        out
    }

    /// Asserts the maps hold exactly these flows of epoch 0 (in any order).
    fn assert_flows(&self, expected: &[(FlowKey, u64, u64, u8)]) {
        self.assert_flows_in(0, expected);
    }

    fn assert_flows_in(&self, epoch: u32, expected: &[(FlowKey, u64, u64, u8)]) {
        let map = format!("epoch {epoch}");
        let got = self.flows(epoch);
        assert_eq!(got.len(), expected.len(), "{map}: flows {got:#?}");
        for (key, packets, bytes, flags) in expected {
            let (_, t) = got
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("{map}: no flow {key:?} in {got:#?}"));
            assert_eq!(
                *t,
                Totals {
                    packets: *packets,
                    bytes: *bytes,
                    tcp_flags: *flags,
                    ifindex: LO_IFINDEX
                },
                "{map}: flow {key:?}"
            );
        }
    }
}

const A: [u8; 4] = [10, 244, 1, 5];
const B: [u8; 4] = [10, 244, 2, 9];
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 9);

use KernelCounter::{
    CountedUpstream, Fragments, Ipv6ExtChainTooLong, L4Truncated, LostIpMalformed, LostMapFull,
    NotIp, Packets, Recorded, SampledOut,
};
use ObsPoint::{L3Egress, L3Ingress, VethEgress, VethIngress};

#[test]
fn ipv4_tcp_flags_or_and_counts_add() {
    let Some(h) = Harness::new() else { return };
    let syn = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(40000, 80, SYN, 0)));
    let data = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(40000, 80, PSH | ACK, 100)));
    h.run(VETH_IN, &syn);
    h.run(VETH_IN, &data);
    h.assert_flows(&[(
        flow_key(VethIngress, A, B, TCP, 40000, 80, 0),
        2,
        40 + 140,
        SYN | PSH | ACK,
    )]);
    h.assert_counters(&[(Packets, 2), (Recorded, 2)]);
}

#[test]
fn ipv4_udp() {
    let Some(h) = Harness::new() else { return };
    h.run(
        VETH_IN,
        &eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(5353, 53, 32))),
    );
    h.assert_flows(&[(
        flow_key(VethIngress, A, B, UDP, 5353, 53, 0),
        1,
        20 + 8 + 32,
        0,
    )]);
    h.assert_counters(&[(Packets, 1), (Recorded, 1)]);
}

#[test]
fn icmp_type_and_code_in_ports() {
    let Some(h) = Harness::new() else { return };
    h.run(VETH_IN, &eth(ETH_P_IP, &ipv4(A, B, ICMP, &icmp(8, 0))));
    h.run(VETH_IN, &eth(ETH_P_IP, &ipv4(B, A, ICMP, &icmp(3, 3))));
    h.run(
        VETH_IN,
        &eth(ETH_P_IPV6, &ipv6(A6, B6, ICMPV6, &icmp(128, 0))),
    );
    h.assert_flows(&[
        (flow_key(VethIngress, A, B, ICMP, 8, 0, 0), 1, 44, 0),
        (flow_key(VethIngress, B, A, ICMP, 3, 3, 0), 1, 44, 0),
        (flow_key(VethIngress, A6, B6, ICMPV6, 128, 0, 0), 1, 64, 0),
    ]);
    h.assert_counters(&[(Packets, 3), (Recorded, 3)]);
}

#[test]
fn sctp_ports() {
    let Some(h) = Harness::new() else { return };
    h.run(
        VETH_IN,
        &eth(ETH_P_IP, &ipv4(A, B, SCTP, &sctp(3868, 3869))),
    );
    h.assert_flows(&[(flow_key(VethIngress, A, B, SCTP, 3868, 3869, 0), 1, 52, 0)]);
    h.assert_counters(&[(Packets, 1), (Recorded, 1)]);
}

#[test]
fn ipv6_tcp_after_hop_by_hop_and_destination_options() {
    let Some(h) = Harness::new() else { return };
    let mut payload = ext(DSTOPTS, 0); // Hop-by-Hop, 8 bytes
    payload.extend(ext(TCP, 1)); // Destination Options, 16 bytes
    payload.extend(tcp(443, 51000, ACK | FIN, 10));
    let p = eth(ETH_P_IPV6, &ipv6(A6, B6, HOP, &payload));
    h.run(VETH_IN, &p);
    h.assert_flows(&[(
        flow_key(VethIngress, A6, B6, TCP, 443, 51000, 0),
        1,
        40 + 8 + 16 + 30,
        ACK | FIN,
    )]);
    h.assert_counters(&[(Packets, 1), (Recorded, 1)]);
}

#[test]
fn ipv6_routing_and_authentication_headers() {
    let Some(h) = Harness::new() else { return };
    // Hop-by-Hop → Routing (24 bytes) → AH (payload len 4: (4 + 2) * 4 = 24 bytes) → UDP.
    let mut payload = ext(ROUTING, 0);
    payload.extend(ext(AH, 2));
    let mut ah = vec![UDP, 4, 0, 0];
    ah.resize(24, 0x42);
    payload.extend(ah);
    payload.extend(udp(500, 4500, 16));
    h.run(VETH_EG, &eth(ETH_P_IPV6, &ipv6(A6, B6, HOP, &payload)));
    h.assert_flows(&[(
        flow_key(VethEgress, A6, B6, UDP, 500, 4500, 0),
        1,
        40 + 8 + 24 + 24 + 24,
        0,
    )]);
    h.assert_counters(&[(Packets, 1), (Recorded, 1)]);
}

#[test]
fn ipv6_fragments() {
    let Some(h) = Harness::new() else { return };
    // First fragment: offset 0, more fragments; the UDP header is there.
    let mut first = frag6(UDP, 0, true);
    first.extend(udp(4789, 8472, 64));
    // Non-first fragment: no transport header.
    let mut rest = frag6(UDP, 9, false);
    rest.extend([0xee; 40]);
    h.run(VETH_IN, &eth(ETH_P_IPV6, &ipv6(A6, B6, FRAG, &first)));
    h.run(VETH_IN, &eth(ETH_P_IPV6, &ipv6(A6, B6, FRAG, &rest)));
    h.assert_flows(&[
        (
            flow_key(VethIngress, A6, B6, UDP, 4789, 8472, 0),
            1,
            40 + 8 + 72,
            0,
        ),
        (
            flow_key(VethIngress, A6, B6, UDP, 0, 0, KEY_F_FRAGMENT),
            1,
            40 + 8 + 40,
            0,
        ),
    ]);
    h.assert_counters(&[(Packets, 2), (Recorded, 2), (Fragments, 1)]);
}

#[test]
fn ipv4_fragments() {
    let Some(h) = Harness::new() else { return };
    let mut first = V4::new(A, B, UDP);
    first.more_frags = true;
    let mut rest = V4::new(A, B, UDP);
    rest.frag_off = 10;
    h.run(VETH_IN, &eth(ETH_P_IP, &first.build(&udp(4789, 4789, 72))));
    h.run(VETH_IN, &eth(ETH_P_IP, &rest.build(&[0x77; 36])));
    h.assert_flows(&[
        (flow_key(VethIngress, A, B, UDP, 4789, 4789, 0), 1, 100, 0),
        (
            flow_key(VethIngress, A, B, UDP, 0, 0, KEY_F_FRAGMENT),
            1,
            56,
            0,
        ),
    ]);
    h.assert_counters(&[(Packets, 2), (Recorded, 2), (Fragments, 1)]);
}

#[test]
fn vlan_tags() {
    let Some(h) = Harness::new() else { return };
    let ip = ipv4(A, B, UDP, &udp(1000, 2000, 12));
    h.run(VETH_IN, &eth_vlan(&[ETH_P_8021Q], ETH_P_IP, &ip));
    h.run(
        VETH_IN,
        &eth_vlan(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IP, &ip),
    );
    let ip6 = ipv6(A6, B6, TCP, &tcp(1, 2, SYN, 0));
    h.run(
        VETH_IN,
        &eth_vlan(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IPV6, &ip6),
    );
    // A third tag is beyond what the parser follows: not IP to it.
    h.run(
        VETH_IN,
        &eth_vlan(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IP, &ip),
    );
    h.assert_flows(&[
        (flow_key(VethIngress, A, B, UDP, 1000, 2000, 0), 2, 80, 0),
        (flow_key(VethIngress, A6, B6, TCP, 1, 2, 0), 1, 60, SYN),
    ]);
    h.assert_counters(&[(Packets, 4), (Recorded, 3), (NotIp, 1)]);
}

#[test]
fn unknown_protocol_and_esp_are_counted_with_ports_0() {
    let Some(h) = Harness::new() else { return };
    h.run(
        VETH_IN,
        &eth(ETH_P_IP, &ipv4(A, B, GRE, &[0, 0, 0x08, 0, 1, 2, 3, 4])),
    );
    let mut esp = ext(ESP, 0); // Hop-by-Hop, then ESP ends the chain
    esp.extend([0x11; 24]);
    h.run(VETH_IN, &eth(ETH_P_IPV6, &ipv6(A6, B6, HOP, &esp)));
    h.assert_flows(&[
        (flow_key(VethIngress, A, B, GRE, 0, 0, 0), 1, 28, 0),
        (flow_key(VethIngress, A6, B6, ESP, 0, 0, 0), 1, 40 + 32, 0),
    ]);
    h.assert_counters(&[(Packets, 2), (Recorded, 2)]);
}

#[test]
fn ipv6_extension_chain_too_long() {
    let Some(h) = Harness::new() else { return };
    // Hop-by-Hop then 6 Destination Options headers: the parser follows 6 and stops at the 7th.
    let mut payload = ext(DSTOPTS, 0);
    for _ in 0..5 {
        payload.extend(ext(DSTOPTS, 0));
    }
    payload.extend(ext(TCP, 0));
    payload.extend(tcp(1, 2, SYN, 0));
    let p = eth(ETH_P_IPV6, &ipv6(A6, B6, HOP, &payload));
    h.run(VETH_IN, &p);
    let len = 40 + 7 * 8 + 20;
    h.assert_flows(&[(flow_key(VethIngress, A6, B6, DSTOPTS, 0, 0, 0), 1, len, 0)]);
    h.assert_counters(&[(Packets, 1), (Recorded, 1), (Ipv6ExtChainTooLong, 1)]);
}

#[test]
fn truncated_transport_header() {
    let Some(h) = Harness::new() else { return };
    // 10 bytes of a TCP header.
    let short = tcp(40000, 80, SYN, 0)[..10].to_vec();
    h.run(VETH_IN, &eth(ETH_P_IP, &ipv4(A, B, TCP, &short)));
    // A complete 20 bytes but data offset 4 (< 5).
    h.run(
        VETH_IN,
        &eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp_doff(40000, 80, SYN, 4, 0))),
    );
    // Data offset 15 (60 bytes) with only 20 bytes in the packet.
    h.run(
        VETH_IN,
        &eth(
            ETH_P_IP,
            &ipv4(A, B, TCP, &tcp_doff(40000, 80, SYN, 15, 0)[..20]),
        ),
    );
    // 6 bytes of UDP; an IPv6 extension header cut short.
    h.run(
        VETH_IN,
        &eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(1, 2, 0)[..6])),
    );
    h.run(VETH_IN, &eth(ETH_P_IPV6, &ipv6(A6, B6, HOP, &[TCP])));
    h.assert_flows(&[
        (
            flow_key(VethIngress, A, B, TCP, 0, 0, KEY_F_L4_TRUNCATED),
            3,
            30 + 40 + 40,
            0,
        ),
        (
            flow_key(VethIngress, A, B, UDP, 0, 0, KEY_F_L4_TRUNCATED),
            1,
            26,
            0,
        ),
        (
            flow_key(VethIngress, A6, B6, HOP, 0, 0, KEY_F_L4_TRUNCATED),
            1,
            41,
            0,
        ),
    ]);
    h.assert_counters(&[(Packets, 5), (Recorded, 5), (L4Truncated, 5)]);
}

#[test]
fn malformed_ip_header_is_a_loss() {
    let Some(h) = Harness::new() else { return };
    // BPF_PROG_TEST_RUN (6.18) refuses an IPv4/IPv6 ethertype frame shorter than the IP header
    // (EINVAL), so truncated headers are sent behind a VLAN tag (the kernel does not look past it,
    // the parser does) and to the L3 programs.
    let q = [ETH_P_8021Q];
    let good = ipv4(A, B, TCP, &tcp(1, 2, SYN, 0));
    let six = ipv6(A6, B6, TCP, &tcp(1, 2, SYN, 0));
    let mut v4_ihl4 = V4::new(A, B, TCP);
    v4_ihl4.ihl = 4;
    let mut v4_ver6 = V4::new(A, B, TCP);
    v4_ver6.version = 6;
    let mut v4_short_tot = V4::new(A, B, TCP);
    v4_short_tot.tot_len = Some(12);
    let mut short_opts = good.clone(); // IHL 15 (60 bytes) in a 40-byte packet
    short_opts[0] = 0x4f;
    let mut six_ver4 = six.clone();
    six_ver4[0] = 0x40;
    let mut bad_nibble = good.clone();
    bad_nibble[0] = 0x55;
    // Lengths that claim more than the frame carries (forged byte counts), and 0 outside GSO.
    let mut v4_long = V4::new(A, B, UDP);
    v4_long.tot_len = Some(65_535);
    let mut v4_longer_by_one = V4::new(A, B, UDP);
    v4_longer_by_one.tot_len = Some(20 + 8 + 4 + 1);
    let mut v4_zero = V4::new(A, B, TCP);
    v4_zero.tot_len = Some(0);

    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "truncated IPv4 (12 of 20 bytes), VLAN",
            VETH_IN,
            eth_vlan(&q, ETH_P_IP, &good[..12]),
        ),
        ("truncated IPv4, L3", L3_IN, good[..16].to_vec()),
        (
            "IHL 4",
            VETH_IN,
            eth(ETH_P_IP, &v4_ihl4.build(&tcp(1, 2, SYN, 0))),
        ),
        (
            "IHL 4, VLAN",
            VETH_EG,
            eth_vlan(&q, ETH_P_IP, &v4_ihl4.build(&tcp(1, 2, SYN, 0))),
        ),
        (
            "IHL 15 beyond the packet, VLAN",
            VETH_IN,
            eth_vlan(&q, ETH_P_IP, &short_opts),
        ),
        (
            "version 6 behind the IPv4 ethertype",
            VETH_IN,
            eth(ETH_P_IP, &v4_ver6.build(&tcp(1, 2, SYN, 0))),
        ),
        (
            "total length < header",
            VETH_IN,
            eth(ETH_P_IP, &v4_short_tot.build(&tcp(1, 2, SYN, 0))),
        ),
        (
            "truncated IPv6 (30 of 40 bytes), VLAN",
            VETH_IN,
            eth_vlan(&q, ETH_P_IPV6, &six[..30]),
        ),
        ("truncated IPv6, L3", L3_EG, six[..30].to_vec()),
        (
            "version 4 behind the IPv6 ethertype",
            VETH_IN,
            eth(ETH_P_IPV6, &six_ver4),
        ),
        ("L3: version nibble 5", L3_IN, bad_nibble),
        (
            "total length 65535 in a 32-byte packet",
            VETH_IN,
            eth(ETH_P_IP, &v4_long.build(&udp(1, 2, 4))),
        ),
        (
            "total length one past the packet, L3",
            L3_EG,
            v4_longer_by_one.build(&udp(1, 2, 4)),
        ),
        (
            "total length 0 outside GSO",
            VETH_IN,
            eth(ETH_P_IP, &v4_zero.build(&tcp(1, 2, ACK, 10))),
        ),
        (
            "IPv6 payload length past the packet",
            VETH_EG,
            eth(
                ETH_P_IPV6,
                &ipv6_plen(A6, B6, UDP, &udp(1, 2, 4), Some(1000)),
            ),
        ),
        (
            "IPv6 payload length one past the packet, L3",
            L3_IN,
            ipv6_plen(A6, B6, UDP, &udp(1, 2, 4), Some(13)),
        ),
    ];
    for (i, (what, prog, p)) in cases.iter().enumerate() {
        h.run(prog, p);
        let c = h.counters();
        assert_eq!(
            c[LostIpMalformed as usize],
            i as u64 + 1,
            "{what}: counters {c:?}"
        );
    }
    h.assert_flows(&[]);
    let n = cases.len() as u64;
    h.assert_counters(&[(Packets, n), (LostIpMalformed, n)]);
}

#[test]
fn bytes_are_the_ip_length_never_more_than_the_frame() {
    let Some(h) = Harness::new() else { return };
    let ctx = |segs: u32, size: u32| SkBuffCtx {
        gso_segs: segs,
        gso_size: size,
        ifindex: LO_IFINDEX,
        ..Default::default()
    };
    // A 32-byte packet padded to the 60-byte Ethernet minimum counts 32 bytes.
    let mut padded = eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(1, 2, 4)));
    padded.resize(60, 0);
    h.run(VETH_IN, &padded);
    // A length exactly the frame's is honest.
    h.run(L3_IN, &ipv4(A, B, UDP, &udp(3, 4, 100)));
    // IPv6 without payload (No Next Header), padded: 40 bytes; payload length 0 with a
    // Hop-by-Hop header (a jumbogram's form) and BIG TCP (0 in a GSO packet): the frame's length.
    let mut empty6 = eth(ETH_P_IPV6, &ipv6(A6, B6, 59, &[]));
    empty6.resize(60, 0);
    h.run(VETH_IN, &empty6);
    let mut jumbo = ext(UDP, 0);
    jumbo.extend(udp(5, 6, 100));
    h.run(
        VETH_IN,
        &eth(ETH_P_IPV6, &ipv6_plen(A6, B6, HOP, &jumbo, Some(0))),
    );
    let big6 = eth(
        ETH_P_IPV6,
        &ipv6_plen(A6, B6, TCP, &tcp(7, 8, ACK, 500), Some(0)),
    );
    h.run_with(VETH_IN, &big6, Some(&ctx(1, 500)), 1);
    let mut big4 = V4::new(B, A, TCP);
    big4.tot_len = Some(0);
    h.run_with(
        VETH_IN,
        &eth(ETH_P_IP, &big4.build(&tcp(9, 10, ACK, 300))),
        Some(&ctx(1, 300)),
        1,
    );
    h.assert_flows(&[
        (flow_key(VethIngress, A, B, UDP, 1, 2, 0), 1, 32, 0),
        (flow_key(VethIngress, B, A, TCP, 9, 10, 0), 1, 340, ACK),
        (flow_key(VethIngress, A6, B6, 59, 0, 0, 0), 1, 40, 0),
        (flow_key(VethIngress, A6, B6, TCP, 7, 8, 0), 1, 560, ACK),
        (flow_key(VethIngress, A6, B6, UDP, 5, 6, 0), 1, 156, 0),
        (flow_key(L3Ingress, A, B, UDP, 3, 4, 0), 1, 128, 0),
    ]);
    h.assert_counters(&[(Packets, 6), (Recorded, 6)]);
}

#[test]
fn arp_is_not_ip() {
    let Some(h) = Harness::new() else { return };
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend([
        0x02, 0, 0, 0, 0, 0x02, 10, 244, 1, 5, 0, 0, 0, 0, 0, 0, 10, 244, 2, 9,
    ]);
    h.run(VETH_IN, &eth(ETH_P_ARP, &arp));
    h.run(VETH_EG, &eth(ETH_P_ARP, &arp));
    h.assert_flows(&[]);
    h.assert_counters(&[(Packets, 2), (NotIp, 2)]);
}

#[test]
fn runt_frames() {
    let Some(h) = Harness::new() else { return };
    // BPF_PROG_TEST_RUN refuses tc input shorter than an Ethernet header, and an IPv4/IPv6
    // ethertype frame without a whole IP header (EINVAL): such frames never reach the program in
    // a test run. (The program itself treats a frame too short for its ethertype as not IP.)
    for runt in [
        vec![0u8; 10],
        eth(ETH_P_IP, &[]),
        eth(ETH_P_IPV6, &[0x60; 20]),
    ] {
        let res = h.prog(VETH_IN).test_run(TestRunOptions {
            data_in: Some(&runt),
            ..TestRunOptions::default()
        });
        assert!(
            res.is_err(),
            "the kernel accepted a {}-byte runt: {res:?}",
            runt.len()
        );
    }
    h.assert_counters(&[]);
    // Exactly an Ethernet header: a VLAN ethertype with no tag and an unknown ethertype are not
    // IP; an IP ethertype after a VLAN tag with nothing behind it is a malformed IP packet.
    h.run(VETH_IN, &eth(ETH_P_8021Q, &[]));
    h.run(VETH_IN, &eth(0x1234, &[]));
    h.run(VETH_IN, &eth_vlan(&[ETH_P_8021Q], ETH_P_IP, &[]));
    h.run(
        VETH_EG,
        &eth_vlan(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IPV6, &[0x60, 0]),
    );
    h.assert_flows(&[]);
    h.assert_counters(&[(Packets, 4), (LostIpMalformed, 2), (NotIp, 2)]);
}

#[test]
fn sampling_one_in_n() {
    let Some(mut h) = Harness::new() else { return };
    const N: u32 = 4;
    const RUNS: u32 = 20_000;
    h.set_config(0, N);
    let p = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(40000, 80, ACK, 0)));
    h.run_with(VETH_IN, &p, None, RUNS);
    let c = h.counters();
    let (packets, recorded, sampled_out) = (
        c[Packets as usize],
        c[Recorded as usize],
        c[SampledOut as usize],
    );
    assert_eq!(packets, u64::from(RUNS));
    assert_eq!(packets, recorded + sampled_out, "counters {c:?}");
    // Binomial(20000, 1/4): mean 5000, sd 61; ±8 sd.
    assert!(
        (4500..=5500).contains(&recorded),
        "recorded {recorded} of {RUNS} at 1 in {N}"
    );
    h.assert_flows(&[(
        flow_key(VethIngress, A, B, TCP, 40000, 80, 0),
        recorded,
        40 * recorded,
        ACK,
    )]);
    // Sample rate 1 and 0 both mean every packet.
    for rate in [0, 1] {
        h.set_config(0, rate);
        h.run_with(VETH_IN, &p, None, 100);
    }
    let c2 = h.counters();
    assert_eq!(c2[Recorded as usize], recorded + 200);
    assert_eq!(c2[SampledOut as usize], sampled_out);
}

#[test]
fn gso_counts_segments() {
    let Some(h) = Harness::new() else { return };
    let ctx = |segs: u32, size: u32| SkBuffCtx {
        gso_segs: segs,
        gso_size: size,
        ifindex: LO_IFINDEX,
        ..Default::default()
    };
    // TCP over IPv4: 10 segments of 100 bytes.
    let tcp4 = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(40000, 80, ACK | PSH, 1000)));
    h.run_with(VETH_IN, &tcp4, Some(&ctx(10, 100)), 1);
    // UDP over IPv4 (USO): 8 segments of 100 bytes.
    let udp4 = eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(7000, 7001, 800)));
    h.run_with(VETH_IN, &udp4, Some(&ctx(8, 100)), 1);
    // TCP with options (32-byte header) over IPv6 with a Hop-by-Hop header: 5 segments.
    let mut payload = ext(TCP, 0);
    payload.extend(tcp_doff(443, 50000, ACK, 8, 500));
    let tcp6 = eth(ETH_P_IPV6, &ipv6(A6, B6, HOP, &payload));
    h.run_with(VETH_IN, &tcp6, Some(&ctx(5, 100)), 1);
    // gso_segs 0 and 1 both mean one packet.
    let one = eth(ETH_P_IP, &ipv4(B, A, TCP, &tcp(80, 40000, ACK, 0)));
    h.run_with(VETH_IN, &one, Some(&ctx(0, 0)), 1);
    h.run_with(VETH_IN, &one, Some(&ctx(1, 0)), 1);
    h.assert_flows(&[
        (
            flow_key(VethIngress, A, B, TCP, 40000, 80, 0),
            10,
            10 * (40 + 100),
            ACK | PSH,
        ),
        (
            flow_key(VethIngress, A, B, UDP, 7000, 7001, 0),
            8,
            8 * (28 + 100),
            0,
        ),
        (
            flow_key(VethIngress, A6, B6, TCP, 443, 50000, 0),
            5,
            5 * (40 + 8 + 32 + 100),
            ACK,
        ),
        (flow_key(VethIngress, B, A, TCP, 80, 40000, 0), 2, 80, ACK),
    ]);
    h.assert_counters(&[(Packets, 5), (Recorded, 5)]);
}

#[test]
fn counts_move_to_the_spill_map_before_their_fields_overflow() {
    let Some(h) = Harness::new() else { return };
    let ctx = SkBuffCtx {
        gso_segs: 65_535,
        gso_size: 1,
        ifindex: LO_IFINDEX,
        ..Default::default()
    };
    // 131 super-packets of 65 535 segments (IPv4 TCP, 1000-byte payload: 1040 + 65 534 × 40
    // bytes each): the CPU's cache moves the flow to the map every 2 (2^16 packets), and the
    // 65th move takes the map's count past 2^23 packets.
    let small = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(1, 2, ACK, 1000)));
    h.run_with(VETH_IN, &small, Some(&ctx), 131);
    let spills = h.spills();
    assert_eq!(spills.len(), 1, "{spills:?}");
    assert_eq!(
        spills[0].2,
        SpillValue {
            bytes: 0,
            packets: SPILL_PACKETS
        }
    );
    h.assert_flows(&[(
        flow_key(VethIngress, A, B, TCP, 1, 2, 0),
        131 * 65_535,
        131 * (1040 + 65_534 * 40),
        ACK,
    )]);

    // IPv6 and bytes too: every segment repeats 3 356 bytes of headers (IPv6, a 2 048-byte
    // Hop-by-Hop and a 1 208-byte Destination Options header, TCP with 40 bytes of options), the
    // most a test run's frame holds; a run counts 65 535 × 3 356 bytes, so 3 000 runs pass 2^39
    // bytes once (and 2^23 packets 23 times).
    let runs = 3_000u64;
    let mut headers = ext(DSTOPTS, 255);
    headers.extend(ext(TCP, 150));
    let mut tcp60 = tcp_doff(3, 4, ACK, 15, 0);
    tcp60.resize(60, 1);
    headers.extend(tcp60);
    let big = eth(ETH_P_IPV6, &ipv6(A6, B6, HOP, &headers));
    assert_eq!(big.len(), 14 + 3_356);
    h.run_with(VETH_IN, &big, Some(&ctx), runs as u32);
    let per_run = 65_535 * 3_356;
    assert!(runs * per_run > SPILL_BYTES && runs * per_run < 2 * SPILL_BYTES);
    let spill6: Vec<SpillValue> = h
        .spills()
        .into_iter()
        .filter(|(k, _, _)| k.family == podflow_ebpf::FAMILY_IPV6)
        .map(|(_, _, s)| s)
        .collect();
    assert_eq!(
        spill6,
        vec![SpillValue {
            bytes: SPILL_BYTES,
            packets: (runs * 65_535 / SPILL_PACKETS) * SPILL_PACKETS,
        }]
    );
    h.assert_flows(&[
        (
            flow_key(VethIngress, A, B, TCP, 1, 2, 0),
            131 * 65_535,
            131 * (1040 + 65_534 * 40),
            ACK,
        ),
        (
            flow_key(VethIngress, A6, B6, TCP, 3, 4, 0),
            runs * 65_535,
            runs * per_run,
            ACK,
        ),
    ]);
    h.assert_counters(&[(Packets, 131 + runs), (Recorded, 131 + runs)]);
}

#[test]
fn l3_programs_on_raw_ip() {
    let Some(h) = Harness::new() else { return };
    h.run(L3_IN, &ipv4(A, B, TCP, &tcp(40000, 80, SYN, 0)));
    h.run(L3_EG, &ipv6(A6, B6, UDP, &udp(51820, 51820, 100)));
    let mut payload = ext(TCP, 0);
    payload.extend(tcp(22, 60000, ACK, 0));
    h.run(L3_EG, &ipv6(A6, B6, HOP, &payload));
    // BIG TCP: total length 0 in a GSO packet, the length is the packet's.
    let mut big = V4::new(B, A, TCP);
    big.tot_len = Some(0);
    let gso = SkBuffCtx {
        gso_segs: 1,
        gso_size: 300,
        ifindex: LO_IFINDEX,
        ..Default::default()
    };
    h.run_with(L3_IN, &big.build(&tcp(80, 40000, ACK, 300)), Some(&gso), 1);
    h.assert_flows(&[
        (flow_key(L3Ingress, A, B, TCP, 40000, 80, 0), 1, 40, SYN),
        (flow_key(L3Ingress, B, A, TCP, 80, 40000, 0), 1, 340, ACK),
        (flow_key(L3Egress, A6, B6, TCP, 22, 60000, 0), 1, 68, ACK),
        (flow_key(L3Egress, A6, B6, UDP, 51820, 51820, 0), 1, 148, 0),
    ]);
    h.assert_counters(&[(Packets, 4), (Recorded, 4)]);
}

#[test]
fn egress_programs_set_the_observation_point() {
    let Some(h) = Harness::new() else { return };
    let p = eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(1, 2, 0)));
    h.run(VETH_IN, &p);
    h.run(VETH_EG, &p);
    h.run(VETH_EG, &p);
    h.run(L3_EG, &ipv4(A, B, UDP, &udp(1, 2, 0)));
    h.assert_flows(&[
        (flow_key(VethIngress, A, B, UDP, 1, 2, 0), 1, 28, 0),
        (flow_key(VethEgress, A, B, UDP, 1, 2, 0), 2, 56, 0),
        (flow_key(L3Egress, A, B, UDP, 1, 2, 0), 1, 28, 0),
    ]);
    h.assert_counters(&[(Packets, 4), (Recorded, 4)]);
}

#[test]
fn keys_carry_the_epoch() {
    let Some(mut h) = Harness::new() else { return };
    h.set_config(1, 1);
    let p = eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(1, 2, 0)));
    let p6 = eth(ETH_P_IPV6, &ipv6(A6, B6, UDP, &udp(1, 2, 0)));
    h.run(VETH_IN, &p);
    h.run(VETH_IN, &p6);
    h.run(L3_IN, &ipv4(A, B, UDP, &udp(1, 2, 0)));
    h.assert_flows_in(0, &[]);
    h.assert_flows_in(
        1,
        &[
            (flow_key(VethIngress, A, B, UDP, 1, 2, 0), 1, 28, 0),
            (flow_key(VethIngress, A6, B6, UDP, 1, 2, 0), 1, 48, 0),
            (flow_key(L3Ingress, A, B, UDP, 1, 2, 0), 1, 28, 0),
        ],
    );
    // Flip again (epoch 2: bit 0 clear): the same flow gets a separate entry, the epoch-1 entries
    // stay as they were.
    h.set_config(2, 1);
    h.run(VETH_IN, &p);
    h.assert_flows_in(0, &[(flow_key(VethIngress, A, B, UDP, 1, 2, 0), 1, 28, 0)]);
    h.assert_flows_in(
        1,
        &[
            (flow_key(VethIngress, A, B, UDP, 1, 2, 0), 1, 28, 0),
            (flow_key(VethIngress, A6, B6, UDP, 1, 2, 0), 1, 48, 0),
            (flow_key(L3Ingress, A, B, UDP, 1, 2, 0), 1, 28, 0),
        ],
    );
    h.assert_counters(&[(Packets, 4), (Recorded, 4)]);
}

#[test]
fn full_flow_map_is_a_loss() {
    let Some(h) = Harness::with_loader(|l| {
        l.map_max_entries(podflow_ebpf::FLOWS_V4, 2);
    }) else {
        return;
    };
    // New flows first take a slot of the CPU's flow cache and move to the map when another flow
    // needs the slot: with 3 flows per slot on average, most moves find the 2-entry map full.
    // Then the held flow keeps its slot and the new packet is lost (never a held flow).
    let n = 3 * podflow_ebpf::CACHE_SLOTS;
    for port in 0..n {
        let port = 1000 + port as u16;
        h.run(VETH_IN, &eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(port, 53, 0))));
    }
    let c = h.counters();
    let (recorded, lost) = (c[Recorded as usize], c[LostMapFull as usize]);
    assert_eq!(
        recorded + lost,
        u64::from(n),
        "every packet ends recorded or lost: {c:?}"
    );
    assert!(lost > 0 && recorded > 2, "recorded {recorded}, lost {lost}");
    // Every recorded packet is in the map or a cache slot, once.
    let flows = h.flows(0);
    assert_eq!(flows.len() as u64, recorded, "{flows:#?}");
    assert!(flows.iter().all(|(_, t)| t.packets == 1 && t.bytes == 28));
    let v4: HashMap<_, FlowKeyV4, FlowValue> =
        HashMap::try_from(h.ebpf.map(podflow_ebpf::FLOWS_V4).expect("FLOWS_V4")).expect("hash");
    assert_eq!(v4.keys().count(), 2, "the map is full");
    // A flow the map holds still updates.
    let held = v4.keys().next().expect("a key").expect("key");
    let port = held.to_key().src_port;
    h.run(VETH_IN, &eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(port, 53, 0))));
    let t = h
        .flows(0)
        .into_iter()
        .find(|(k, _)| k.src_port == port)
        .map(|(_, t)| t);
    assert_eq!(t.map(|t| t.packets), Some(2));
}

/// The object's empty tc program (`podflow_empty`: `r0 = -1; exit`), to measure
/// BPF_PROG_TEST_RUN's own per-run overhead. Returns the average ns per run.
fn empty_program_ns(data: &[u8], repeat: u32) -> u128 {
    let prog = podflow::capture::EmptyProgram::load()
        .unwrap_or_else(|e| panic!("load the empty program: {e}"));
    let r = prog
        .test_run(data, repeat)
        .unwrap_or_else(|e| panic!("test_run the empty program: {e}"));
    assert_eq!(r.return_value, VERDICT);
    r.duration.as_nanos()
}

/// The reference program is the smallest tc program there is: `r0 = TC_ACT_UNSPEC; exit`, two
/// instructions in three slots (rustc loads the 32-bit -1 with a 16-byte `ld_imm64`).
#[test]
fn empty_program_is_two_instructions() {
    if !privileged() {
        return;
    }
    let prog = podflow::capture::EmptyProgram::load().expect("load the empty program");
    assert_eq!(prog.insn_slots().expect("program info"), 3);
    let frame = eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(1, 2, 0)));
    let r = prog.test_run(&frame, 1).expect("test_run");
    assert_eq!(r.return_value, VERDICT);
}

/// Informational: the kernel's average run time of one program invocation for an established
/// IPv4 TCP flow (map hit) and others, next to an empty program's. Noisy: no assertion on time.
#[test]
fn per_packet_cost() {
    let Some(mut h) = Harness::new() else { return };
    const RUNS: u32 = 1_000_000;
    let p = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(40000, 80, ACK, 100)));
    h.run(VETH_IN, &p); // establish the flow
    let empty_ns = empty_program_ns(&p, RUNS);
    let tcp_ns = h.run_with(VETH_IN, &p, None, RUNS).duration.as_nanos();
    let p6 = eth(ETH_P_IPV6, &ipv6(A6, B6, TCP, &tcp(40000, 80, ACK, 100)));
    let tcp6_ns = h.run_with(VETH_IN, &p6, None, RUNS).duration.as_nanos();
    let l3_ns = h
        .run_with(
            L3_IN,
            &ipv4(A, B, TCP, &tcp(40000, 80, ACK, 100)),
            None,
            RUNS,
        )
        .duration
        .as_nanos();
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.resize(28, 0);
    let arp_ns = h
        .run_with(VETH_IN, &eth(ETH_P_ARP, &arp), None, RUNS)
        .duration
        .as_nanos();
    // A same-node packet at the destination veth's egress: entered through a pod veth podflow
    // counts at, so only the skip path runs (destination noted, unchanged).
    const SRC_VETH: u32 = 7;
    mark_veth(&mut h, SRC_VETH);
    let upstream = SkBuffCtx {
        ingress_ifindex: SRC_VETH,
        ifindex: LO_IFINDEX,
        ..Default::default()
    };
    let skip_ns = h
        .run_with(VETH_EG, &p, Some(&upstream), RUNS)
        .duration
        .as_nanos();
    let empty2_ns = empty_program_ns(&p, RUNS);
    println!(
        "BPF_PROG_TEST_RUN ns per run ({RUNS} runs): empty program {empty_ns}/{empty2_ns} ns; \
         veth IPv4 TCP established flow {tcp_ns} ns; veth IPv6 TCP {tcp6_ns} ns; \
         L3 IPv4 TCP {l3_ns} ns; ARP (not IP) {arp_ns} ns; \
         veth egress, counted upstream {skip_ns} ns"
    );
    h.assert_counters(&[
        (Packets, 5 * u64::from(RUNS) + 1),
        (Recorded, 3 * u64::from(RUNS) + 1),
        (NotIp, u64::from(RUNS)),
        (CountedUpstream, u64::from(RUNS)),
    ]);
    h.assert_flows(&[
        (
            flow_key(VethIngress, A, B, TCP, 40000, 80, 0),
            u64::from(RUNS) + 1,
            140 * (u64::from(RUNS) + 1),
            ACK,
        ),
        (
            flow_key(VethIngress, A6, B6, TCP, 40000, 80, 0),
            u64::from(RUNS),
            160 * u64::from(RUNS),
            ACK,
        ),
        (
            flow_key(L3Ingress, A, B, TCP, 40000, 80, 0),
            u64::from(RUNS),
            140 * u64::from(RUNS),
            ACK,
        ),
    ]);
}

/// Marks `ifindex` as a veth podflow's ingress program is attached to (`VETHS`).
fn mark_veth(h: &mut Harness, ifindex: u32) {
    let mut veths: Array<_, podflow_ebpf::VethSlot> =
        Array::try_from(h.ebpf.map_mut(podflow_ebpf::VETHS).expect("VETHS")).expect("array");
    veths
        .set(
            ifindex,
            podflow_ebpf::VethSlot {
                attached: 1,
                ..Default::default()
            },
            0,
        )
        .expect("mark the veth");
}

#[test]
fn egress_skips_packets_counted_at_a_pod_veth_ingress() {
    let Some(mut h) = Harness::new() else { return };
    const SRC_VETH: u32 = 7;
    mark_veth(&mut h, SRC_VETH);
    let from = |iif: u32| SkBuffCtx {
        ingress_ifindex: iif,
        ifindex: LO_IFINDEX,
        ..Default::default()
    };
    let p = eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(1, 2, 0)));
    let p6 = eth(ETH_P_IPV6, &ipv6(A6, B6, UDP, &udp(1, 2, 0)));
    // Entered through the marked veth: not counted again at the egress, destination noted.
    h.run_with(VETH_EG, &p, Some(&from(SRC_VETH)), 1);
    h.run_with(VETH_EG, &p6, Some(&from(SRC_VETH)), 1);
    // Later destinations of the same family are not noted: a pod keeps its addresses while its
    // veth lives (the slot is cleared when podflow attaches).
    let to_c = eth(ETH_P_IP, &ipv4(A, [10, 244, 3, 3], UDP, &udp(1, 2, 0)));
    h.run_with(VETH_EG, &to_c, Some(&from(SRC_VETH)), 1);
    // Entered elsewhere (another veth, the node's own stack): counted at the egress.
    h.run_with(VETH_EG, &p, Some(&from(SRC_VETH + 1)), 1);
    h.run_with(VETH_EG, &p, Some(&from(0)), 1);
    // The ingress program never skips.
    h.run_with(VETH_IN, &p, Some(&from(SRC_VETH)), 1);
    h.assert_flows(&[
        (flow_key(VethIngress, A, B, UDP, 1, 2, 0), 1, 28, 0),
        (flow_key(VethEgress, A, B, UDP, 1, 2, 0), 2, 56, 0),
    ]);
    h.assert_counters(&[(Packets, 6), (Recorded, 3), (CountedUpstream, 3)]);
    let veths: Array<_, podflow_ebpf::VethSlot> =
        Array::try_from(h.ebpf.map(podflow_ebpf::VETHS).expect("VETHS")).expect("array");
    // The destination is noted in the slot of the veth the packet left through (the test skb's
    // device), not in the one it entered through.
    let out = veths.get(&LO_IFINDEX, 0).expect("slot");
    assert_eq!((out.attached, out.peer4, out.peer6), (0, B, B6.octets()));
    assert_eq!(
        veths.get(&SRC_VETH, 0).expect("slot"),
        podflow_ebpf::VethSlot {
            attached: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        veths.get(&(SRC_VETH + 1), 0).expect("slot"),
        podflow_ebpf::VethSlot::default(),
        "an unrelated veth's slot stays untouched"
    );
}

/// DNS payloads, well-formed and hostile (the corpus of issue 16): whatever the message holds, the
/// verdict, the packet and its counts are those of any UDP or TCP packet; a message of at least a
/// header goes to the DNS ring with its first `DNS_MSG_BYTES` bytes exactly as sent (user space
/// reads them, bounded); shorter payloads and other ports never do. Port 53 as the agent sets it.
#[test]
fn dns_messages_never_change_a_verdict_or_a_count() {
    use podflow_ebpf::{DNS_EVENTS, DNS_F_TCP, DNS_MSG_BYTES, DNS_PORT, DnsEvent};
    let Some(mut h) = Harness::with_loader(|l| {
        l.override_global(DNS_PORT, &53u16, true);
    }) else {
        return;
    };
    let header =
        |id: u16| -> Vec<u8> { [&id.to_be_bytes()[..], &[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]].concat() };
    let with = |head: &[u8], rest: &[u8]| [head, rest].concat();
    let long: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    // (payload, over TCP)
    let corpus: Vec<(Vec<u8>, bool)> = vec![
        // A query for "a.b" type A.
        (with(&header(1), &[1, b'a', 1, b'b', 0, 0, 1, 0, 1]), false),
        // A compression pointer to itself; one pointing past the message.
        (with(&header(2), &[0xc0, 12, 0, 1, 0, 1]), false),
        (with(&header(3), &[0xc0, 0xff]), false),
        // A label longer than the packet; a truncated name; a header and nothing else.
        (with(&header(4), &[63, b'x', b'y']), false),
        (with(&header(5), &[5, b'a', b'b']), false),
        (header(6), false),
        // Longer than the copy: 600 bytes of anything after a header.
        (with(&header(7), &long), false),
        // Over TCP: the 2-byte length (lying), then a message.
        (with(&[0xff, 0xff], &with(&header(8), &[0xc0, 12])), true),
        // Shorter than a header: never a message.
        (vec![0x12, 0x34, 0x01], false),
        (vec![], false),
    ];
    let mut expected_flows = Vec::new();
    let mut expected_events = Vec::new();
    for (i, (payload, tcp_)) in corpus.iter().enumerate() {
        let sport = 40_000 + i as u16;
        let l4 = if *tcp_ {
            let mut t = tcp(sport, 53, PSH | ACK, 0);
            t.extend(payload);
            t
        } else {
            let mut u = udp(sport, 53, 0);
            u.extend(payload);
            let len = u.len() as u16;
            u[4..6].copy_from_slice(&len.to_be_bytes());
            u
        };
        let frame = eth(ETH_P_IP, &ipv4(A, B, if *tcp_ { TCP } else { UDP }, &l4));
        h.run(VETH_IN, &frame);
        let proto = if *tcp_ { TCP } else { UDP };
        let flags = if *tcp_ { PSH | ACK } else { 0 };
        expected_flows.push((
            flow_key(VethIngress, A, B, proto, sport, 53, 0),
            1,
            20 + l4.len() as u64,
            flags,
        ));
        // The message after the transport header (after the length, over TCP).
        let msg = if *tcp_ { &payload[2..] } else { &payload[..] };
        if msg.len() >= 12 {
            expected_events.push((sport, msg[..msg.len().min(DNS_MSG_BYTES)].to_vec(), *tcp_));
        }
    }
    // Another port: counted, never copied.
    h.run(
        VETH_IN,
        &eth(ETH_P_IP, &ipv4(A, B, UDP, &udp(40_100, 5353, 40))),
    );
    expected_flows.push((
        flow_key(VethIngress, A, B, UDP, 40_100, 5353, 0),
        1,
        20 + 8 + 40,
        0,
    ));
    h.assert_flows(&expected_flows);
    let n = expected_flows.len() as u64;
    h.assert_counters(&[(Packets, n), (Recorded, n)]);

    let mut ring: aya::maps::RingBuf<_> =
        aya::maps::RingBuf::try_from(h.ebpf.map_mut(DNS_EVENTS).expect("DNS_EVENTS"))
            .expect("ring");
    let mut got = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<DnsEvent>());
        // SAFETY: plain integers and bytes; an unaligned read of the item's bytes.
        let ev = unsafe { item.as_ptr().cast::<DnsEvent>().read_unaligned() };
        let len = usize::from(ev.len);
        got.push((
            ev.key.src_port,
            ev.msg[..len].to_vec(),
            ev.flags & DNS_F_TCP != 0,
        ));
        assert_eq!(ev.key.dst_port, 53);
        assert!(ev.ts_ns > 0);
    }
    assert_eq!(got, expected_events);
}

/// TCP segments with malformed options (issue 16's corpus): a data offset past the segment, an
/// option whose length runs past the header, a zero-length option. The programs never read
/// options: the verdict, the packet and the counts are those of any TCP segment, and a SYN among
/// them still goes to the handshake ring (its flags are in the fixed header).
#[test]
fn malformed_tcp_options_never_change_a_verdict_or_a_count() {
    use podflow_ebpf::{TCP_EVENTS, TCP_HANDSHAKES, TcpEvent};
    let Some(mut h) = Harness::with_loader(|l| {
        l.override_global(TCP_HANDSHAKES, &1u8, true);
    }) else {
        return;
    };
    let with_options = |sport: u16, flags: u8, doff: u8, options: &[u8]| {
        let mut t = tcp_doff(sport, 80, flags, doff, 0);
        let end = (20 + options.len()).min(t.len());
        t[20..end].copy_from_slice(&options[..end - 20]);
        t
    };
    let cases = [
        // MSS whose length byte says 40 (past the 24-byte header).
        with_options(42_000, SYN, 6, &[2, 40, 5, 0xb4]),
        // A zero-length option (a parser that trusts it loops for ever).
        with_options(42_001, SYN, 6, &[8, 0, 1, 1]),
        // Window scale, SACK-permitted cut by the header's end.
        with_options(42_002, SYN | ACK, 6, &[3, 3, 7, 4]),
    ];
    let mut expected = Vec::new();
    for seg in &cases {
        h.run(VETH_IN, &eth(ETH_P_IP, &ipv4(A, B, TCP, seg)));
        let sport = u16::from_be_bytes([seg[0], seg[1]]);
        expected.push((
            flow_key(VethIngress, A, B, TCP, sport, 80, 0),
            1,
            20 + seg.len() as u64,
            seg[13],
        ));
    }
    // A data offset past the segment: the transport header is cut, counted as such.
    let cut = tcp_doff(42_003, 80, SYN, 15, 0)[..24].to_vec();
    h.run(VETH_IN, &eth(ETH_P_IP, &ipv4(A, B, TCP, &cut)));
    expected.push((
        flow_key(VethIngress, A, B, TCP, 0, 0, KEY_F_L4_TRUNCATED),
        1,
        20 + 24,
        0,
    ));
    h.assert_flows(&expected);
    let mut ring: aya::maps::RingBuf<_> =
        aya::maps::RingBuf::try_from(h.ebpf.map_mut(TCP_EVENTS).expect("TCP_EVENTS"))
            .expect("ring");
    let mut syns = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: plain integers and bytes; an unaligned read of the item's bytes.
        let ev = unsafe { item.as_ptr().cast::<TcpEvent>().read_unaligned() };
        syns.push((ev.key.src_port, ev.tcp_flags));
    }
    assert_eq!(syns, [(42_000, SYN), (42_001, SYN), (42_002, SYN | ACK)]);
}
