//! Types shared between podflow's eBPF programs and its user-space agent.
//!
//! Everything here is `#[repr(C)]`, made of integers and fixed arrays only, with explicit padding,
//! so both sides agree on the layout byte for byte. The sizes are asserted at compile time.
//!
//! # How flows are counted
//!
//! Every tc hook counts each IP packet it sees into a per-CPU hash map keyed by [`FlowKey`]. The
//! key includes the *observation point* ([`ObsPoint`]): a packet between two pods on the same node
//! crosses the source pod's veth (host-side ingress) and the destination pod's veth (host-side
//! egress), so it lands in two entries. User space picks one authoritative observation point per
//! flow and uses the others only to say which interfaces saw it, so each packet is counted once.
//!
//! Two flow maps ([`FLOWS_0`], [`FLOWS_1`]) are used as a double buffer: the programs write into the
//! map named by [`Config::active`]; user space flips it, waits for an RCU grace period (every
//! program that could still write into the old map has then returned), and reads and clears the old
//! map with no writer racing it. No packet is lost or counted twice at a flush.
#![no_std]

/// Name of the first flow map of the double buffer.
pub const FLOWS_0: &str = "FLOWS_0";
/// Name of the second flow map of the double buffer.
pub const FLOWS_1: &str = "FLOWS_1";
/// Name of the single-entry config array ([`Config`] at index 0).
pub const CONFIG: &str = "CONFIG";
/// Name of the per-CPU counters array, indexed by [`Counter`].
pub const COUNTERS: &str = "COUNTERS";

/// Default capacity of each flow map (entries). User space may resize before load.
pub const DEFAULT_FLOW_MAP_ENTRIES: u32 = 65_536;

/// Program names as they appear in the object file and in `bpftool prog`.
pub const PROG_VETH_INGRESS: &str = "podflow_veth_in";
pub const PROG_VETH_EGRESS: &str = "podflow_veth_eg";
pub const PROG_L3_INGRESS: &str = "podflow_l3_in";
pub const PROG_L3_EGRESS: &str = "podflow_l3_eg";

/// Where a packet was observed. Part of the flow key.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObsPoint {
    /// tc ingress of a host-side pod veth: the packet leaves a pod on this node.
    VethIngress = 0,
    /// tc egress of a host-side pod veth: the packet enters a pod on this node.
    VethEgress = 1,
    /// tc ingress of a layer-3 tunnel device (WireGuard): decrypted traffic from a remote node.
    L3Ingress = 2,
    /// tc egress of a layer-3 tunnel device (WireGuard): traffic about to be encrypted.
    L3Egress = 3,
}

impl ObsPoint {
    pub const ALL: [ObsPoint; 4] = [
        ObsPoint::VethIngress,
        ObsPoint::VethEgress,
        ObsPoint::L3Ingress,
        ObsPoint::L3Egress,
    ];

    pub const fn from_u8(v: u8) -> Option<ObsPoint> {
        match v {
            0 => Some(ObsPoint::VethIngress),
            1 => Some(ObsPoint::VethEgress),
            2 => Some(ObsPoint::L3Ingress),
            3 => Some(ObsPoint::L3Egress),
            _ => None,
        }
    }
}

/// [`FlowKey::family`] values.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// [`FlowKey::key_flags`] bits.
/// The packet is a non-first IP fragment: it carries no transport header, ports are 0.
pub const KEY_F_FRAGMENT: u8 = 1 << 0;
/// The transport header was truncated or malformed: ports are 0, the packet is still counted
/// under its IP pair and protocol.
pub const KEY_F_L4_TRUNCATED: u8 = 1 << 1;

/// IP protocol numbers the parser understands.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// Key of the flow maps: a unidirectional 5-tuple plus where it was observed.
///
/// IPv4 addresses are stored as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), so one map holds
/// both families. Ports are host byte order. For ICMP and ICMPv6, `src_port` holds the type and
/// `dst_port` the code (as VPC flow logs and IPFIX do).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// An [`ObsPoint`] as u8.
    pub obs: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// `KEY_F_*` bits.
    pub key_flags: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Per-CPU value of the flow maps. User space sums packets and bytes over CPUs, takes the minimum
/// non-zero `first_ns` and the maximum `last_ns`, and ORs the TCP flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// Packets (a GSO super-packet counts as its number of segments).
    pub packets: u64,
    /// IP-layer bytes: the sum of IP total lengths of the packets (for GSO super-packets, as they
    /// will be on the wire once segmented).
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` (coarse) nanoseconds of the first packet on this CPU; 0 if none.
    pub first_ns: u64,
    /// `CLOCK_MONOTONIC` (coarse) nanoseconds of the last packet on this CPU.
    pub last_ns: u64,
    /// ifindex of the interface the packets were seen on (last one if several).
    pub ifindex: u32,
    /// OR of the TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20 ECE=0x40
    /// CWR=0x80).
    pub tcp_flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 40);

/// Runtime configuration, written by user space into [`CONFIG`] index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Which flow map the programs write into: 0 → [`FLOWS_0`], 1 → [`FLOWS_1`].
    pub active: u32,
    /// Count 1 in `sample_rate` packets; 0 or 1 means every packet.
    pub sample_rate: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 8);

/// Indexes of the per-CPU [`COUNTERS`] array. Every value that a packet could have contributed to
/// a flow but did not is a loss and has its own counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets that ran through a podflow program.
    Packets = 0,
    /// Packets counted into a flow entry.
    Recorded = 1,
    /// Packets skipped by 1-in-N sampling (not a loss: records carry the sampling rate).
    SampledOut = 2,
    /// Packets that are not IP (ARP, LLDP, ...): not a loss, flows are IP flows.
    NotIp = 3,
    /// LOSS: a new flow could not be inserted because the flow map was full.
    LostMapFull = 4,
    /// LOSS: any other map update failure.
    LostMapError = 5,
    /// LOSS: the packet claimed to be IP but its IP header was truncated or malformed, so it
    /// could not be attributed to any address pair.
    LostIpMalformed = 6,
    /// Packets counted with ports 0 because their transport header was truncated/malformed.
    L4Truncated = 7,
    /// Non-first IP fragments (counted under their IP pair and protocol, ports 0).
    Fragments = 8,
    /// Packets whose IPv6 extension header chain was longer than the parser follows; counted
    /// under their IP pair with the last header reached as protocol.
    Ipv6ExtChainTooLong = 9,
}

/// Number of entries of the [`COUNTERS`] array.
pub const COUNTER_COUNT: u32 = 10;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Packets,
        Counter::Recorded,
        Counter::SampledOut,
        Counter::NotIp,
        Counter::LostMapFull,
        Counter::LostMapError,
        Counter::LostIpMalformed,
        Counter::L4Truncated,
        Counter::Fragments,
        Counter::Ipv6ExtChainTooLong,
    ];

    /// Stable snake_case name, used in the API and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::Recorded => "recorded",
            Counter::SampledOut => "sampled_out",
            Counter::NotIp => "not_ip",
            Counter::LostMapFull => "lost_map_full",
            Counter::LostMapError => "lost_map_error",
            Counter::LostIpMalformed => "lost_ip_malformed",
            Counter::L4Truncated => "l4_truncated",
            Counter::Fragments => "fragments",
            Counter::Ipv6ExtChainTooLong => "ipv6_ext_chain_too_long",
        }
    }

    /// Whether the counter counts packets that are missing from the flow records.
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            Counter::LostMapFull | Counter::LostMapError | Counter::LostIpMalformed
        )
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
}
