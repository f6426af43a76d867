//! Types shared between podflow's eBPF programs and its user-space agent.
//!
//! Everything here is `#[repr(C)]`, made of integers and fixed arrays only, with explicit padding,
//! so both sides agree on the layout byte for byte. The sizes are asserted at compile time.
//!
//! # How flows are counted
//!
//! Every tc hook counts each IP packet it sees into a hash map: IPv4 flows into [`FLOWS_V4`]
//! (16-byte [`FlowKeyV4`]), IPv6 flows into [`FLOWS_V6`] (40-byte [`FlowKeyV6`]), both with the
//! 16-byte [`FlowValue`] shared by all CPUs and updated with one atomic fetch-add per update. In
//! front of the maps, each CPU keeps the flows it counted last in a small per-CPU cache
//! ([`CacheEntry`], [`CACHE_V4`]/[`CACHE_V6`]): a packet of a cached flow is counted with plain
//! stores, and the map is only touched when a flow leaves the cache. The key includes the
//! *observation point* ([`ObsPoint`]) and the interface. A packet between two pods of the node is
//! counted once, at the source pod's veth (host-side ingress); the destination veth's egress
//! program sees where it entered and skips it ([`VethSlot`]). User space picks one authoritative
//! observation point per flow and uses the others only to say which interfaces saw it.
//!
//! # Exact drains: the epoch bit
//!
//! Every key carries the current *epoch* ([`Config::epoch`], bit [`KEY_F_EPOCH`] of
//! [`KeyTail::meta`]), and the caches have one half per epoch parity. User space flips the epoch,
//! waits for an RCU grace period (every program that could still write a key or a cache slot of
//! the old epoch has then returned), reads the old epoch's entries and cache slots (no writer
//! races them any more), deletes exactly those keys and zeroes those slots. No packet is lost or
//! counted twice at a flush, and one map holds both epochs only for the few milliseconds of a
//! drain, so a map of N entries tracks N flows: no second buffer.
//!
//! # Memory per flow
//!
//! A preallocated kernel hash map costs, per entry, a 16-byte bucket, a 48-byte element header,
//! the key rounded up to 8 bytes, and the value: 16 + 48 + 16 + 16 = 96 bytes for IPv4 and
//! 16 + 48 + 40 + 16 = 120 bytes for IPv6, independent of the number of CPUs (a per-CPU value
//! would cost its size once per possible CPU: kilobytes per flow on a 64-core node). The spill
//! maps (1024 entries each) and the caches (2 × 128 slots of 32 or 56 bytes per CPU) are fixed
//! costs: about 1 B per flow for a map of 131 072 entries, plus 22 KiB per CPU.
#![no_std]

/// Name of the IPv4 flow map ([`FlowKeyV4`] → [`FlowValue`]).
pub const FLOWS_V4: &str = "FLOWS_V4";
/// Name of the IPv6 flow map ([`FlowKeyV6`] → [`FlowValue`]).
pub const FLOWS_V6: &str = "FLOWS_V6";
/// Name of the IPv4 spill map ([`FlowKeyV4`] → [`SpillValue`]).
pub const SPILL_V4: &str = "SPILL_V4";
/// Name of the IPv6 spill map ([`FlowKeyV6`] → [`SpillValue`]).
pub const SPILL_V6: &str = "SPILL_V6";
/// Name of the per-CPU IPv4 flow cache ([`CacheEntry`]`<`[`FlowKeyV4`]`>`).
pub const CACHE_V4: &str = "CACHE_V4";
/// Name of the per-CPU IPv6 flow cache ([`CacheEntry`]`<`[`FlowKeyV6`]`>`).
pub const CACHE_V6: &str = "CACHE_V6";
/// Name of the single-entry config array ([`Config`] at index 0).
pub const CONFIG: &str = "CONFIG";
/// Name of the per-CPU counters array, indexed by [`KernelCounter`].
pub const COUNTERS: &str = "COUNTERS";
/// Name of the single-entry array [`PROG_CLOCK`] writes a [`ClockSample`] into.
pub const CLOCK: &str = "CLOCK";
/// Name of the array of [`VethSlot`]s indexed by ifindex: the pod veths podflow counts at.
pub const VETHS: &str = "VETHS";
/// Name of the agent's hand-over array (`u64` slots, [`STATE_SLOTS`]; no program touches it):
/// what the agent that drained the maps last had reported (see [`StateSlot`]), pinned with the
/// maps so that the next agent that adopts them continues from there.
pub const STATE: &str = "STATE";
/// Entries of [`STATE`]. Its layout only grows: an agent reads the slots it knows.
pub const STATE_SLOTS: u32 = 64;

/// Slots of [`STATE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StateSlot {
    /// `CLOCK_REALTIME` (ns) at the end of the last drain.
    LastDrainNs = 0,
    /// The first of [`COUNTER_COUNT`] slots: [`KernelCounter`] values already reported as losses.
    Reported = 8,
}

/// Version of what the kernel side shares with user space (maps, keys, values, their meaning).
/// Pinned maps are adopted by a later agent only under the same version and sizes; bump it
/// whenever a map's meaning changes without its sizes changing.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Entries of [`VETHS`]: veths with a larger ifindex are not in it (their packets are then
/// counted at both veths and deduplicated in user space, as without the array).
pub const VETHS_MAX: u32 = 65_536;

/// A pod veth podflow counts at, at [`VETHS`]`[ifindex]`.
///
/// A packet from one pod to another on the same node enters the node through the source pod's
/// veth, where the ingress program counts it, and leaves through the destination pod's veth. At
/// that egress hook `skb->ingress_ifindex` names the veth it entered through: if podflow counts
/// there (that veth's `attached` set), the egress program does not count it again
/// ([`KernelCounter::CountedUpstream`]) and only notes, in the slot of the veth it leaves through, the
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
/// Never attached by the agent: the smallest tc program (`r0 = TC_ACT_UNSPEC; exit`), the
/// reference the benchmark and the per-packet cost test measure the hook itself with.
pub const PROG_EMPTY: &str = "podflow_empty";

/// DNS messages the veth programs saw (see [`DnsEvent`]): a ring buffer user space reads at
/// most every 100 ms while messages come (and before each flush).
pub const DNS_EVENTS: &str = "DNS_EVENTS";
/// Its size: ~6 500 messages, what a node's pods send in the 100 ms between two reads at 65 000
/// messages per second (beyond, the loss is counted). Small on purpose: the kernel maps a ring's
/// pages into the reader twice and at once, so its size is the agent's resident memory (an
/// 8 MiB ring cost 16 MiB of VmRSS).
pub const DNS_EVENTS_BYTES: u32 = 2 << 20;
/// Array of one u64: DNS messages the ring had no room for (atomically added).
pub const DNS_LOST: &str = "DNS_LOST";
/// Read-only global the loader sets: the DNS server port (53 unless configured; 0 turns the
/// DNS capture off: the programs then never look at payloads).
pub const DNS_PORT: &str = "DNS_PORT";
/// Bytes of a DNS message copied into an event: the header and the question section (a name
/// of up to 240 bytes, its type and class) and the start of the answers.
pub const DNS_MSG_BYTES: usize = 256;
/// [`DnsEvent::flags`]: the message came over TCP (`msg` starts after the 2-byte length).
pub const DNS_F_TCP: u16 = 1;

/// The start of one DNS message, as a pod sent it or received it, where its packet was counted
/// (each packet once: the veth it left its pod through, or the veth it entered its pod through
/// when it came from outside the node). Nothing is parsed in the kernel beyond the ports: user
/// space reads the message (bounded, every length checked) and pairs queries with responses.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsEvent {
    /// The packet's flow key (addresses, ports, protocol, family, observation point).
    pub key: FlowKey,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) when the program saw it.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Bytes of `msg` that hold the message (at most [`DNS_MSG_BYTES`]).
    pub len: u16,
    /// `DNS_F_*` bits.
    pub flags: u16,
    pub msg: [u8; DNS_MSG_BYTES],
}
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 56 + DNS_MSG_BYTES);

/// TCP connection openings the veth programs saw (see [`TcpEvent`]): SYN and SYN/ACK segments.
pub const TCP_EVENTS: &str = "TCP_EVENTS";
/// Its size: ~9 000 segments, what the 100 ms between two reads hold at 90 000 new connections
/// per second (beyond, the loss is counted); small for the reason [`DNS_EVENTS_BYTES`] says.
pub const TCP_EVENTS_BYTES: u32 = 512 << 10;
/// Array of one u64: segments the ring had no room for.
pub const TCP_LOST: &str = "TCP_LOST";
/// Read-only global the loader sets: 1 to time TCP handshakes, 0 off.
pub const TCP_HANDSHAKES: &str = "TCP_HANDSHAKES";

/// A SYN or SYN/ACK segment where it was counted (see [`DnsEvent`] for where that is): user
/// space pairs a SYN/ACK with its SYN for the handshake's latency.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpEvent {
    /// The segment's flow key (addresses, ports, family, observation point).
    pub key: FlowKey,
    /// `bpf_ktime_get_ns()` when the program saw it.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// The segment's TCP flags byte.
    pub tcp_flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<TcpEvent>() == 56);

/// Packets the node's kernel dropped, with its reason: a BTF tracepoint on `kfree_skb` (every
/// drop, `SKB_CONSUMED` frees are another tracepoint) reads the dropped packet's IP and transport
/// headers and adds it to [`DROPS`] by its flow. Attached by user space when it follows drops.
pub const PROG_KFREE_SKB: &str = "podflow_kfree_skb";
/// The tracepoint.
pub const TP_KFREE_SKB: &str = "kfree_skb";
/// LRU hash map: [`FlowKey`] (observation point 0) → [`DropValue`].
pub const DROPS: &str = "DROPS";
pub const DROPS_ENTRIES: u32 = 16_384;
/// Read-only global ([`DropOffsets`]) the loader sets from the kernel's BTF; zeros: off.
pub const DROP_OFFSETS: &str = "DROP_OFFSETS";

/// Where the drop program reads, in the running kernel's structures (from its BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropOffsets {
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_len: u32,
    pub skb_dev: u32,
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net`.
    pub dev_net: u32,
    /// `net.ns.inum`: the network namespace's inode number.
    pub net_inum: u32,
}
const _: () = assert!(core::mem::size_of::<DropOffsets>() == 32);

/// The drops of one flow since user space last read them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropValue {
    pub packets: u64,
    /// IP-layer bytes (the headers' lengths, as the flow records count).
    pub bytes: u64,
    /// The latest drop's `enum skb_drop_reason` value.
    pub reason: u32,
    /// Where the latest was dropped: the device the packet was on, and its network namespace's
    /// inode number (the node's, or a pod's).
    pub ifindex: u32,
    pub netns: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<DropValue>() == 32);

/// The smoothed RTT of TCP connections (`--tcp-rtt`): a BTF tracepoint on `tcp_probe` (every
/// segment a socket of the node receives on an established connection) reads the socket's ends
/// and `srtt_us` (BTF-checked loads; `bpf_skc_to_tcp_sock`) into [`RTTS`] by the socket's
/// outgoing flow (local → remote).
pub const PROG_TCP_PROBE: &str = "podflow_tcp_probe";
pub const TP_TCP_PROBE: &str = "tcp_probe";
/// LRU hash map: [`FlowKey`] (local → remote) → [`RttValue`].
pub const RTTS: &str = "RTTS";
pub const RTTS_ENTRIES: u32 = 16_384;
/// Read-only global ([`RttOffsets`]) the loader sets from the kernel's BTF; zeros: off.
pub const RTT_OFFSETS: &str = "RTT_OFFSETS";

/// Where the RTT program reads: `struct sock_common` members and `tcp_sock.srtt_us`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttOffsets {
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub srtt_us: u32,
}
const _: () = assert!(core::mem::size_of::<RttOffsets>() == 32);

/// A connection's smoothed RTT samples since user space last read them (µs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttValue {
    pub samples: u32,
    pub min_us: u32,
    pub max_us: u32,
    pub last_us: u32,
}
const _: () = assert!(core::mem::size_of::<RttValue>() == 16);

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
/// Bit of [`KeyTail::meta`]: the epoch the entry was counted in ([`Config::epoch`] & 1). Never in
/// a [`FlowKey`].
pub const KEY_F_EPOCH: u8 = 1 << 7;

/// IP protocol numbers the parser understands.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// A unidirectional 5-tuple plus where it was observed: the form in which user space handles every
/// flow (the kernel maps use the shorter [`FlowKeyV4`] and [`FlowKeyV6`]).
///
/// IPv4 addresses are stored as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), so one type holds
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
    /// `KEY_F_*` bits ([`KEY_F_FRAGMENT`], [`KEY_F_L4_TRUNCATED`]).
    pub key_flags: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::offset_of!(FlowKey, src_port) == 32);

/// The last 8 bytes of both kernel keys ([`FlowKeyV4`], [`FlowKeyV6`]): ports, protocol, `meta`
/// and the low 16 bits of the ifindex, so the programs build them as one word.
///
/// `meta`: bits 0–1 the `KEY_F_*` flags of [`FlowKey::key_flags`] ([`META_FLAGS_MASK`]), bits 4–5
/// the [`ObsPoint`] ([`META_OBS_SHIFT`]), bit 7 the epoch ([`KEY_F_EPOCH`]).
///
/// The interface is part of the key (its low 16 bits here, bits 16–31 in the value, see
/// [`FlowValue`]): the same 5-tuple seen at the same observation point on two interfaces in one
/// epoch — a pod sending with another pod's address, say — makes two entries, which user space
/// adds up into one record that lists both interfaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct KeyTail {
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub meta: u8,
    /// Low 16 bits of the ifindex the packet was seen on.
    pub ifindex_lo: u16,
}
const _: () = assert!(core::mem::size_of::<KeyTail>() == 8);

/// Mask of the `KEY_F_*` flags in [`KeyTail::meta`].
pub const META_FLAGS_MASK: u8 = KEY_F_FRAGMENT | KEY_F_L4_TRUNCATED;
/// Shift of the [`ObsPoint`] in [`KeyTail::meta`] (2 bits).
pub const META_OBS_SHIFT: u32 = 4;

impl KeyTail {
    /// The tail of `key` seen on `ifindex` (low 16 bits kept) in epoch `epoch` (bit 0).
    pub const fn of(key: &FlowKey, ifindex: u32, epoch: u32) -> KeyTail {
        let epoch_bit = if epoch & 1 != 0 { KEY_F_EPOCH } else { 0 };
        KeyTail {
            src_port: key.src_port,
            dst_port: key.dst_port,
            protocol: key.protocol,
            meta: (key.key_flags & META_FLAGS_MASK) | ((key.obs & 3) << META_OBS_SHIFT) | epoch_bit,
            ifindex_lo: ifindex as u16,
        }
    }

    /// The epoch bit ([`KEY_F_EPOCH`] or 0).
    pub const fn epoch_bit(&self) -> u8 {
        self.meta & KEY_F_EPOCH
    }

    /// A [`FlowKey`] with these ports, protocol, flags and observation point.
    const fn key(&self, family: u8, src_addr: [u8; 16], dst_addr: [u8; 16]) -> FlowKey {
        FlowKey {
            src_addr,
            dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            obs: (self.meta >> META_OBS_SHIFT) & 3,
            family,
            key_flags: self.meta & META_FLAGS_MASK,
        }
    }
}

/// Key of [`FLOWS_V4`]: IPv4 addresses and a [`KeyTail`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyV4 {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub tail: KeyTail,
}
const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);

impl FlowKeyV4 {
    /// The kernel key of an IPv4 `key` (IPv4-mapped addresses) seen on `ifindex` in `epoch`.
    pub const fn of(key: &FlowKey, ifindex: u32, epoch: u32) -> FlowKeyV4 {
        let (s, d) = (&key.src_addr, &key.dst_addr);
        FlowKeyV4 {
            src_addr: [s[12], s[13], s[14], s[15]],
            dst_addr: [d[12], d[13], d[14], d[15]],
            tail: KeyTail::of(key, ifindex, epoch),
        }
    }

    /// The same flow as a [`FlowKey`] (IPv4-mapped addresses; no epoch, no ifindex).
    pub const fn to_key(&self) -> FlowKey {
        self.tail.key(
            FAMILY_IPV4,
            ipv4_mapped(self.src_addr),
            ipv4_mapped(self.dst_addr),
        )
    }
}

/// Key of [`FLOWS_V6`]: IPv6 addresses and a [`KeyTail`] (the layout of [`FlowKey`] with its last
/// word replaced, so the programs turn one into the other in place).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyV6 {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub tail: KeyTail,
}
const _: () = assert!(core::mem::size_of::<FlowKeyV6>() == 40);

impl FlowKeyV6 {
    /// The kernel key of an IPv6 `key` seen on `ifindex` in `epoch`.
    pub const fn of(key: &FlowKey, ifindex: u32, epoch: u32) -> FlowKeyV6 {
        FlowKeyV6 {
            src_addr: key.src_addr,
            dst_addr: key.dst_addr,
            tail: KeyTail::of(key, ifindex, epoch),
        }
    }

    /// The same flow as a [`FlowKey`] (no epoch, no ifindex).
    pub const fn to_key(&self) -> FlowKey {
        self.tail.key(FAMILY_IPV6, self.src_addr, self.dst_addr)
    }
}

/// `::ffff:a.b.c.d`: the form an IPv4 address takes in a [`FlowKey`].
pub const fn ipv4_mapped(a: [u8; 4]) -> [u8; 16] {
    core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3])
        .to_ipv6_mapped()
        .octets()
}

/// Value of both flow maps, one per flow shared by all CPUs: 16 bytes, two words.
///
/// Word 0, `counts`: bytes in bits 0–39, packets in bits 40–63, so that one atomic fetch-add
/// counts a packet (an atomic read-modify-write costs ~7 ns; two were a fifth of the program).
/// The fields never overflow: the packet whose add takes a field to [`SPILL_PACKETS`] or
/// [`SPILL_BYTES`] (it sees the previous counts: one program run per crossing) moves that amount
/// into the flow's entry in [`SPILL_V4`]/[`SPILL_V6`] and subtracts it here, so a field stays
/// below its threshold plus the packets in flight on other CPUs — far below its width. User space
/// adds the spill entries back when it drains.
///
/// Word 1: `first_jiffies` (written at insert) and `last_jiffies` (a plain 16-bit store per
/// packet): the low 16 bits of `jiffies` (the kernel's tick counter, read with `bpf_jiffies64()`,
/// which the verifier inlines into one load). User space knows the full `jiffies` at the drain that
/// reads the entry ([`ClockSample`]), and an entry lives one flush interval, so a time is the
/// latest value with those low bits at or before the drain — exact as long as the flush interval
/// is shorter than 2¹⁶ ticks (65 s at HZ=1000; the agent refuses longer intervals). Then the OR of
/// the TCP flags bytes (atomic OR, only when a flag is new to the flow), and bits 16–31 of the
/// ifindex (written at insert; bits 0–15 are in the key).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Bytes (bits 0–39) and packets (bits 40–63); see [`FlowValue::bytes`],
    /// [`FlowValue::packets`].
    pub counts: u64,
    /// Low 16 bits of jiffies at the flow's first packet in this entry.
    pub first_jiffies: u16,
    /// Low 16 bits of jiffies at the last packet.
    pub last_jiffies: u16,
    /// OR of the TCP flags bytes (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20 ECE=0x40
    /// CWR=0x80).
    pub tcp_flags: u8,
    /// The conntrack lookup of the flow (see [`CT_OFFSETS`]), made when its first piece of the
    /// epoch enters the map: [`CT_FOUND`] (and [`CT_PLAIN`]) or [`CT_MISSING`]; 0 in a cache
    /// slot, and when the lookups are off.
    pub ct: u8,
    /// Bits 16–31 of the ifindex the packets were seen on.
    pub ifindex_hi: u16,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 16);
const _: () = assert!(core::mem::offset_of!(FlowValue, first_jiffies) == 8);
const _: () = assert!(core::mem::offset_of!(FlowValue, last_jiffies) == 10);
const _: () = assert!(core::mem::offset_of!(FlowValue, tcp_flags) == 12);
const _: () = assert!(core::mem::offset_of!(FlowValue, ifindex_hi) == 14);

/// Shift of the packet count in [`FlowValue::counts`].
pub const VALUE_PACKETS_SHIFT: u32 = 40;
/// Mask of the byte count in [`FlowValue::counts`].
pub const VALUE_BYTES_MASK: u64 = (1 << VALUE_PACKETS_SHIFT) - 1;
/// Shift of [`FlowValue::tcp_flags`] in the value's second word (for the 64-bit atomic OR).
pub const VALUE_TCP_FLAGS_SHIFT: u32 = 32;
/// Packets moved to the spill map at a time (half the 24-bit field).
pub const SPILL_PACKETS: u64 = 1 << 23;
/// Bytes moved to the spill map at a time (half the 40-bit field).
pub const SPILL_BYTES: u64 = 1 << 39;

impl FlowValue {
    /// IP-layer bytes: the sum of IP total lengths of the packets (for GSO super-packets, as they
    /// will be on the wire once segmented), spill not included.
    pub const fn bytes(&self) -> u64 {
        self.counts & VALUE_BYTES_MASK
    }

    /// Packets (a GSO super-packet counts as its number of segments), spill not included.
    pub const fn packets(&self) -> u64 {
        self.counts >> VALUE_PACKETS_SHIFT
    }

    /// The ifindex: bits 16–31 from the value, 0–15 from the key.
    pub const fn ifindex(&self, tail: &KeyTail) -> u32 {
        ((self.ifindex_hi as u32) << 16) | tail.ifindex_lo as u32
    }
}

/// Value of [`SPILL_V4`]/[`SPILL_V6`]: counts moved out of a [`FlowValue`] before its fields
/// could overflow, keyed like the flow map (epoch bit included).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SpillValue {
    pub bytes: u64,
    pub packets: u64,
}
const _: () = assert!(core::mem::size_of::<SpillValue>() == 16);

/// Capacity of each spill map: flows that moved more than 2²³ packets or 2³⁹ bytes through one
/// hook within one flush interval (a node forwards a few thousand such packets per second per
/// core; 1024 such flows in one interval is far beyond any node).
pub const SPILL_MAP_ENTRIES: u32 = 1024;

/// A slot of the per-CPU flow caches [`CACHE_V4`] and [`CACHE_V6`].
///
/// Each CPU keeps the flows it counted last in a small direct-mapped cache ([`CACHE_SLOTS`]
/// slots per epoch parity and family, indexed by a hash of the key), counted with plain adds: a
/// packet of a cached flow costs no hash-map lookup and no atomic. A flow leaves the cache for
/// the shared flow map when another flow takes its slot, or once it holds
/// [`CACHE_FLUSH_PACKETS`] packets or [`CACHE_FLUSH_BYTES`] bytes (so that what it adds to the
/// map stays far below the spill thresholds). The programs touch only the slots of the current
/// epoch's parity; after flipping the epoch and waiting for the grace period, user space reads
/// the old parity's slots of every CPU, adds them to the drained entries of the same keys (or
/// makes entries of them) and zeroes them. An empty slot has `value.counts == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CacheEntry<K> {
    pub key: K,
    pub value: FlowValue,
}
const _: () = assert!(core::mem::size_of::<CacheEntry<FlowKeyV4>>() == 32);
const _: () = assert!(core::mem::size_of::<CacheEntry<FlowKeyV6>>() == 56);

/// Slots of each flow cache per epoch parity (a power of two); the arrays have twice as many.
pub const CACHE_SLOTS: u32 = 128;
/// A cached flow moves to the flow map once it holds this many packets ...
pub const CACHE_FLUSH_PACKETS: u64 = 1 << 16;
/// ... or this many bytes.
pub const CACHE_FLUSH_BYTES: u64 = 1 << 32;

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
    /// ifindex of the interface the packets were seen on (its low 24 bits until user space has
    /// matched it with the interfaces it attached to).
    pub ifindex: u32,
    /// OR of the TCP flags bytes.
    pub tcp_flags: u8,
    /// The `CT_*` bits of its pieces, OR-ed (0: never looked up, e.g. a flow only the cache
    /// held).
    pub ct: u8,
    pub _pad: [u8; 2],
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
pub enum KernelCounter {
    /// Packets that ran through a podflow program. Not bumped by the programs (one counter
    /// update less per packet): user space derives it as the sum of the outcomes every packet
    /// ends in exactly one of ([`KernelCounter::is_outcome`]).
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
    /// LOSS (not per packet): a flow's counts reached a spill threshold and its spill map was
    /// full; each event means 2²³ packets or 2³⁹ bytes missing from one record (see
    /// [`FlowValue`]).
    CountsOverflow = 11,
}

/// Number of entries of the [`COUNTERS`] array.
pub const COUNTER_COUNT: u32 = 12;

impl KernelCounter {
    pub const ALL: [KernelCounter; COUNTER_COUNT as usize] = [
        KernelCounter::Packets,
        KernelCounter::Recorded,
        KernelCounter::SampledOut,
        KernelCounter::NotIp,
        KernelCounter::LostMapFull,
        KernelCounter::LostMapError,
        KernelCounter::LostIpMalformed,
        KernelCounter::L4Truncated,
        KernelCounter::Fragments,
        KernelCounter::Ipv6ExtChainTooLong,
        KernelCounter::CountedUpstream,
        KernelCounter::CountsOverflow,
    ];

    /// Stable snake_case name, used in the API and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            KernelCounter::Packets => "packets",
            KernelCounter::Recorded => "recorded",
            KernelCounter::SampledOut => "sampled_out",
            KernelCounter::NotIp => "not_ip",
            KernelCounter::LostMapFull => "lost_map_full",
            KernelCounter::LostMapError => "lost_map_error",
            KernelCounter::LostIpMalformed => "lost_ip_malformed",
            KernelCounter::L4Truncated => "l4_truncated",
            KernelCounter::Fragments => "fragments",
            KernelCounter::Ipv6ExtChainTooLong => "ipv6_ext_chain_too_long",
            KernelCounter::CountedUpstream => "counted_upstream",
            KernelCounter::CountsOverflow => "counts_overflow",
        }
    }

    /// Whether every packet ends in exactly one of these counters (the sum is
    /// [`KernelCounter::Packets`]).
    pub const fn is_outcome(self) -> bool {
        matches!(
            self,
            KernelCounter::Recorded
                | KernelCounter::SampledOut
                | KernelCounter::NotIp
                | KernelCounter::LostMapFull
                | KernelCounter::LostMapError
                | KernelCounter::LostIpMalformed
                | KernelCounter::CountedUpstream
        )
    }

    /// Whether the counter counts packets that are missing from the flow records.
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            KernelCounter::LostMapFull
                | KernelCounter::LostMapError
                | KernelCounter::LostIpMalformed
                | KernelCounter::CountsOverflow
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
    unsafe impl aya::Pod for super::FlowKeyV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpillValue {}
    // SAFETY: as above (a key and a value, no padding: sizes asserted).
    unsafe impl aya::Pod for super::CacheEntry<super::FlowKeyV4> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CacheEntry<super::FlowKeyV6> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClockSample {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VethSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RttOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RttValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtOffsets {}
}

/// Conntrack entries the node translated (see [`CtEvent`]), as the tc programs found them with
/// the kernel's `bpf_skb_ct_lookup`: a ring buffer user space reads at most every 100 ms while
/// entries come (and before each flush).
pub const CT_EVENTS: &str = "CT_EVENTS";
/// Its size: ~2 900 entries, what the 100 ms between two reads hold at 29 000 new translated
/// connections per second (beyond, the loss is counted; a connection's entry is found again by
/// its next flow of a later drain).
pub const CT_EVENTS_BYTES: u32 = 256 << 10;
/// Array of one u64: entries the ring had no room for.
pub const CT_LOST: &str = "CT_LOST";
/// Read-only global ([`CtOffsets`]) the loader sets from the kernel's BTF when it linked the
/// conntrack kfuncs; zeros: the programs never look conntrack up.
pub const CT_OFFSETS: &str = "CT_OFFSETS";

/// [`FlowValue::ct`]: the flow's conntrack lookup found no entry (it was the flow's first
/// packet, counted before conntrack saw it; conntrack does not track it; or the protocol is not
/// one `bpf_skb_ct_lookup` takes).
pub const CT_MISSING: u8 = 0x80;
/// [`FlowValue::ct`]: the lookup found the flow's connection, and the node did not translate
/// it (user space need not look its records up among the translations).
pub const CT_PLAIN: u8 = 0x40;
/// [`FlowValue::ct`]: the lookup found the flow's connection (translated: in [`CT_EVENTS`]).
pub const CT_FOUND: u8 = 0x20;

/// Array of one u32 user space sets: non-zero while conntrack tracks connections in the node's
/// namespace, so that on a node without conntrack the programs never look it up (a lookup that
/// cannot find anything still probes conntrack's hash table, a cache miss per new flow).
pub const CT_SWITCH: &str = "CT_SWITCH";

/// Placeholder helper numbers the programs call where they mean a kernel function (kfunc): the
/// loader rewrites each such call into a kfunc call to the function's BTF id in the running
/// kernel (Rust's BPF target cannot emit kfunc calls itself), or into `r0 = 0` where the kernel
/// has no such function.
pub const KFUNC_SKB_CT_LOOKUP: u32 = 0x7066_0001;
/// See [`KFUNC_SKB_CT_LOOKUP`]: `bpf_ct_release`.
pub const KFUNC_CT_RELEASE: u32 = 0x7066_0002;

/// Where the programs read a `struct nf_conn` (from the kernel's BTF). The tuples'
/// `struct nf_conntrack_tuple` layout is fixed: source address (16 bytes) at 0, source port or
/// ICMP id at 16, destination address at 20, destination port (or ICMP type and code) at 36,
/// protocol at 38.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtOffsets {
    /// `tuplehash[IP_CT_DIR_ORIGINAL].tuple`.
    pub orig: u32,
    /// `tuplehash[IP_CT_DIR_REPLY].tuple`.
    pub reply: u32,
    /// `status` (8 bytes).
    pub status: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CtOffsets>() == 16);

/// One direction of a conntrack entry, as the kernel keeps it (ports in network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub protocol: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<CtTuple>() == 40);

/// A conntrack entry the node translated (`IPS_SRC_NAT` or `IPS_DST_NAT` in its status), found
/// by a program for a packet it saw: the original and the reply tuple, and the status.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEvent {
    pub orig: CtTuple,
    pub reply: CtTuple,
    pub status: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CtEvent>() == 88);
