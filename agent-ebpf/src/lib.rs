//! Types shared between podflow's eBPF programs and its user-space agent.
//!
//! Everything here is `#[repr(C)]`, made of integers and fixed arrays only, with explicit padding,
//! so both sides agree on the layout byte for byte. The sizes are asserted at compile time.
//!
//! # How flows are counted
//!
//! Every tc hook counts each IP packet it sees into a hash map: IPv4 flows into [`FLOWS_V4`]
//! (16-byte [`FlowKeyV4`]), IPv6 flows into [`FLOWS_V6`] (40-byte [`FlowKey`]), both with the
//! 24-byte [`FlowValue`] shared by all CPUs and updated with atomic adds. The key includes the
//! *observation point* ([`ObsPoint`]): a packet between two pods on the same node crosses the
//! source pod's veth (host-side ingress) and the destination pod's veth (host-side egress), so it
//! lands in two entries. User space picks one authoritative observation point per flow and uses
//! the others only to say which interfaces saw it, so each packet is counted once.
//!
//! # Exact drains: the epoch bit
//!
//! Every key carries the current *epoch* ([`Config::epoch`], bit [`KEY_F_EPOCH`] of `key_flags`).
//! User space flips the epoch, waits for an RCU grace period (every program that could still
//! write a key of the old epoch has then returned), reads the old epoch's entries (no writer
//! races them any more) and deletes exactly those keys. No packet is lost or counted twice at a
//! flush, and one map holds both epochs only for the few milliseconds of a drain, so a map of N
//! entries tracks N flows: no second buffer.
//!
//! # Memory per flow
//!
//! A preallocated kernel hash map costs, per entry, a 16-byte bucket, a 48-byte element header,
//! the key rounded up to 8 bytes, and the value: 16 + 48 + 16 + 24 = 104 bytes for IPv4 and
//! 16 + 48 + 40 + 24 = 128 bytes for IPv6, independent of the number of CPUs (a per-CPU value
//! would cost its size once per possible CPU: kilobytes per flow on a 64-core node).
#![no_std]

/// Name of the IPv4 flow map ([`FlowKeyV4`] → [`FlowValue`]).
pub const FLOWS_V4: &str = "FLOWS_V4";
/// Name of the IPv6 flow map ([`FlowKey`] → [`FlowValue`]).
pub const FLOWS_V6: &str = "FLOWS_V6";
/// Name of the single-entry config array ([`Config`] at index 0).
pub const CONFIG: &str = "CONFIG";
/// Name of the per-CPU counters array, indexed by [`Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// Name of the single-entry array [`PROG_CLOCK`] writes a [`ClockSample`] into.
pub const CLOCK: &str = "CLOCK";
/// Name of the array of [`VethSlot`]s indexed by ifindex: the pod veths podflow counts at.
pub const VETHS: &str = "VETHS";
/// Entries of [`VETHS`]: veths with a larger ifindex are not in it (their packets are then
/// counted at both veths and deduplicated in user space, as without the array).
pub const VETHS_MAX: u32 = 65_536;

/// A pod veth podflow counts at, at [`VETHS`]`[ifindex]`.
///
/// A packet from one pod to another on the same node enters the node through the source pod's
/// veth, where the ingress program counts it, and leaves through the destination pod's veth. At
/// that egress hook `skb->ingress_ifindex` names the veth it entered through: if podflow counts
/// there (that veth's `attached` set), the egress program does not count it again
/// ([`Counter::CountedUpstream`]) and only notes, in the slot of the veth it leaves through, the
/// destination address it delivers to (`peer4`/`peer6`), from which user space learns which pod
/// sits behind that veth. One map update per packet instead of two.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VethSlot {
    /// Non-zero while podflow's ingress program is attached to this veth.
    pub attached: u32,
    /// The last IPv4 destination this veth delivered a packet counted upstream to.
    pub peer4: [u8; 4],
    /// The last IPv6 destination, likewise.
    pub peer6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<VethSlot>() == 24);

/// Default capacity of each flow map (entries, i.e. flows per observation point and family
/// between two flushes). User space may resize before load.
pub const DEFAULT_FLOW_MAP_ENTRIES: u32 = 65_536;

/// Program names as they appear in the object file and in `bpftool prog`.
pub const PROG_VETH_INGRESS: &str = "podflow_veth_in";
pub const PROG_VETH_EGRESS: &str = "podflow_veth_eg";
pub const PROG_L3_INGRESS: &str = "podflow_l3_in";
pub const PROG_L3_EGRESS: &str = "podflow_l3_eg";
/// Never attached: run by user space with `BPF_PROG_TEST_RUN` to sample the kernel's clocks
/// ([`ClockSample`]) so it can turn the programs' jiffies into `CLOCK_MONOTONIC` time.
pub const PROG_CLOCK: &str = "podflow_clock";

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
/// The epoch the entry was counted in ([`Config::epoch`] & 1). User space clears it before the
/// key goes anywhere else.
pub const KEY_F_EPOCH: u8 = 1 << 7;

/// IP protocol numbers the parser understands.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// A unidirectional 5-tuple plus where it was observed: the key of [`FLOWS_V6`], and the form in
/// which user space handles every flow.
///
/// IPv4 addresses are stored as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), so one type holds
/// both families (in the kernel, IPv4 flows use the shorter [`FlowKeyV4`]). Ports are host byte
/// order. For ICMP and ICMPv6, `src_port` holds the type and
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

/// Key of [`FLOWS_V4`]: [`FlowKey`] with 4-byte addresses. The last 8 bytes have the same layout
/// as [`FlowKey`]'s last 8 (ports, protocol, observation point, family, flags), so the programs
/// copy them as one word.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyV4 {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub obs: u8,
    /// Always [`FAMILY_IPV4`].
    pub family: u8,
    pub key_flags: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);
const _: () = assert!(core::mem::offset_of!(FlowKey, src_port) == 32);

impl FlowKeyV4 {
    /// The same flow as a [`FlowKey`] (IPv4-mapped addresses).
    pub const fn to_key(&self) -> FlowKey {
        let src_addr = ipv4_mapped(self.src_addr);
        let dst_addr = ipv4_mapped(self.dst_addr);
        FlowKey {
            src_addr,
            dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            obs: self.obs,
            family: self.family,
            key_flags: self.key_flags,
        }
    }
}

/// `::ffff:a.b.c.d`: the form an IPv4 address takes in a [`FlowKey`].
pub const fn ipv4_mapped(a: [u8; 4]) -> [u8; 16] {
    core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3])
        .to_ipv6_mapped()
        .octets()
}

/// Value of both flow maps, one per flow shared by all CPUs.
///
/// Three words, laid out for 64-bit atomics (the only RMW width every BPF CPU version has): word 0
/// `bytes` (atomic add); word 1 `packets` + `first_flags` (atomic add of the packet count, atomic
/// OR of new TCP flags into the high byte); word 2 `last_jiffies` + `ifindex` (one plain store).
/// `packets` cannot carry into `first_flags`: 2³² packets of one flow at one hook within one
/// flush interval is ~860 Mpps over 5 s.
///
/// Times are `jiffies` (the kernel's tick counter; the programs read it with `bpf_jiffies64()`,
/// which the verifier inlines into one load): `last_jiffies` holds its low 32 bits, the low 24
/// bits of `first_flags` the low 24 bits at the flow's first packet, so first = last − ((last −
/// first) mod 2²⁴) as long as an entry lives less than 2²⁴ ticks (4.6 h at HZ=1000; entries live
/// one flush interval). User space maps jiffies to `CLOCK_MONOTONIC` with a [`ClockSample`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// IP-layer bytes: the sum of IP total lengths of the packets (for GSO super-packets, as they
    /// will be on the wire once segmented).
    pub bytes: u64,
    /// Packets (a GSO super-packet counts as its number of segments).
    pub packets: u32,
    /// Low 24 bits: low 24 bits of jiffies at the first packet ([`FIRST_JIFFIES_MASK`]); high 8
    /// bits: OR of the TCP flags bytes ([`TCP_FLAGS_SHIFT`]).
    pub first_flags: u32,
    /// Low 32 bits of jiffies at the last packet.
    pub last_jiffies: u32,
    /// ifindex of the interface the packets were seen on (the last one if several).
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);
const _: () = assert!(core::mem::offset_of!(FlowValue, first_flags) == 12);
const _: () = assert!(core::mem::offset_of!(FlowValue, ifindex) == 20);

/// Mask of the first-packet jiffies in [`FlowValue::first_flags`].
pub const FIRST_JIFFIES_MASK: u32 = 0x00ff_ffff;
/// Shift of the TCP flags in [`FlowValue::first_flags`] (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08
/// ACK=0x10 URG=0x20 ECE=0x40 CWR=0x80).
pub const TCP_FLAGS_SHIFT: u32 = 24;

/// What [`PROG_CLOCK`] writes into [`CLOCK`]: both clocks read in the same program run.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockSample {
    /// `bpf_jiffies64()`.
    pub jiffies: u64,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`).
    pub mono_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ClockSample>() == 16);

/// A flow entry as user space hands it on after a drain: a [`FlowValue`] decoded, times in
/// `CLOCK_MONOTONIC` nanoseconds. Not a map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// Packets (a GSO super-packet counts as its number of segments).
    pub packets: u64,
    /// IP-layer bytes (see [`FlowValue::bytes`]).
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the first packet (tick resolution); 0 if none.
    pub first_ns: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the last packet (tick resolution).
    pub last_ns: u64,
    /// ifindex of the interface the packets were seen on.
    pub ifindex: u32,
    /// OR of the TCP flags bytes.
    pub tcp_flags: u8,
    pub _pad: [u8; 3],
}

/// Runtime configuration, written by user space into [`CONFIG`] index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// The epoch keys are counted in (only bit 0 matters; see [`KEY_F_EPOCH`]).
    pub epoch: u32,
    /// Count 1 in `sample_rate` packets; 0 or 1 means every packet.
    pub sample_rate: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 8);

/// Indexes of the per-CPU [`COUNTERS`] array. Every value that a packet could have contributed to
/// a flow but did not is a loss and has its own counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets that ran through a podflow program. Not bumped by the programs (one counter
    /// update less per packet): user space derives it as the sum of the outcomes every packet
    /// ends in exactly one of ([`Counter::is_outcome`]).
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
    /// Packets at a pod veth's egress that entered the node through a pod veth podflow counts at
    /// (see [`VethSlot`]): already accounted for there, not counted again.
    CountedUpstream = 10,
}

/// Number of entries of the [`COUNTERS`] array.
pub const COUNTER_COUNT: u32 = 11;

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
        Counter::CountedUpstream,
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
            Counter::CountedUpstream => "counted_upstream",
        }
    }

    /// Whether every packet ends in exactly one of these counters (the sum is
    /// [`Counter::Packets`]).
    pub const fn is_outcome(self) -> bool {
        matches!(
            self,
            Counter::Recorded
                | Counter::SampledOut
                | Counter::NotIp
                | Counter::LostMapFull
                | Counter::LostMapError
                | Counter::LostIpMalformed
                | Counter::CountedUpstream
        )
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
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClockSample {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VethSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
}
