//! podflow's tc programs: count every IP packet of a pod veth or an L3 tunnel device into a flow
//! map (see `lib.rs` for the shared types and the epoch protocol).
//!
//! Per packet: one `CONFIG` load, the parse, `bpf_jiffies64()` (inlined by the verifier into a
//! load of `jiffies`), one per-CPU cache slot (a hash of the key; inlined lookup), and on a hit
//! plain adds and stores into it, one per-CPU counter bump. On a miss, the flow that held the
//! slot moves to the hash map (one lookup and one atomic fetch-add, or an insert).
//!
//! Every program returns `TC_ACT_UNSPEC` (-1) on every path: under tcx that is `TCX_NEXT` (run the
//! next program, e.g. the CNI's) and in legacy cls_bpf direct-action mode it means "continue".
//! The programs never write the packet nor change skb fields, and never pull data.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// The bpf target has no `AtomicU64::fetch_add` (no compare-and-swap in Rust's model of it); the
// intrinsics lower to the BPF atomic instructions (`lock xadd`, `lock or`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// `fetch_add` below.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod programs {
    use core::{
        intrinsics::{AtomicOrdering, atomic_or, atomic_xadd},
        mem::MaybeUninit,
        ptr::{read_volatile, write_unaligned},
    };

    use aya_ebpf::{
        bindings::BPF_NOEXIST,
        check_bounds_signed,
        helpers::bpf_skb_load_bytes,
        helpers::{bpf_get_prandom_u32, bpf_jiffies64, bpf_ktime_get_ns, bpf_skc_to_tcp_sock},
        macros::{btf_tracepoint, classifier, map},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
        programs::{BtfTracePointContext, TcContext},
    };
    use podflow_ebpf::{
        CACHE_FLUSH_BYTES, CACHE_FLUSH_PACKETS, CACHE_SLOTS, COUNTER_COUNT, CT_EVENTS_BYTES,
        CT_FOUND, CT_MISSING, CT_PLAIN, CacheEntry, ClockSample, Config, CtEvent, CtOffsets,
        CtTuple, DEFAULT_FLOW_MAP_ENTRIES, DNS_EVENTS_BYTES, DNS_F_TCP, DNS_MSG_BYTES,
        DROPS_ENTRIES, DnsEvent, DropOffsets, DropValue, FAMILY_IPV4, FAMILY_IPV6, FlowKey,
        FlowKeyV4, FlowKeyV6, FlowValue, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
        IPPROTO_UDP, KEY_F_EPOCH, KernelCounter, META_FLAGS_MASK, META_OBS_SHIFT, ObsPoint,
        RTTS_ENTRIES, RttOffsets, RttValue, SPILL_BYTES, SPILL_MAP_ENTRIES, SPILL_PACKETS,
        SpillValue, TCP_EVENTS_BYTES, TcpEvent, VALUE_BYTES_MASK, VALUE_PACKETS_SHIFT,
        VALUE_TCP_FLAGS_SHIFT, VETHS_MAX, VethSlot,
    };

    use crate::parse::{self, Flow, Pkt};

    /// "No verdict": continue with the next program / the normal path.
    const TC_ACT_UNSPEC: i32 = -1;

    const _: () = assert!(size_of::<FlowValue>() == 16 && align_of::<FlowValue>() == 8);
    const _: () = assert!(size_of::<FlowKeyV4>() == 16 && align_of::<FlowKeyV4>() == 2);
    const _: () = assert!(size_of::<FlowKey>() == 40 && size_of::<FlowKeyV6>() == 40);
    const _: () = assert!(align_of::<FlowKeyV6>() <= align_of::<FlowKey>());

    const EEXIST: i32 = 17;
    const E2BIG: i32 = 7;
    const ENOMEM: i32 = 12;

    // The statics' names are the map names user space looks up: keep them equal to the lib.rs
    // constants (checked at compile time below).
    #[map]
    static FLOWS_V4: HashMap<FlowKeyV4, FlowValue> =
        HashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);
    #[map]
    static FLOWS_V6: HashMap<FlowKeyV6, FlowValue> =
        HashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);
    #[map]
    static SPILL_V4: HashMap<FlowKeyV4, SpillValue> =
        HashMap::with_max_entries(SPILL_MAP_ENTRIES, 0);
    #[map]
    static SPILL_V6: HashMap<FlowKeyV6, SpillValue> =
        HashMap::with_max_entries(SPILL_MAP_ENTRIES, 0);
    #[map]
    static CACHE_V4: PerCpuArray<CacheEntry<FlowKeyV4>> =
        PerCpuArray::with_max_entries(2 * CACHE_SLOTS, 0);
    #[map]
    static CACHE_V6: PerCpuArray<CacheEntry<FlowKeyV6>> =
        PerCpuArray::with_max_entries(2 * CACHE_SLOTS, 0);
    #[map]
    static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
    #[map]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
    #[map]
    static CLOCK: Array<ClockSample> = Array::with_max_entries(1, 0);
    #[map]
    static VETHS: Array<VethSlot> = Array::with_max_entries(VETHS_MAX, 0);
    #[map]
    static STATE: Array<u64> = Array::with_max_entries(podflow_ebpf::STATE_SLOTS, 0);
    #[map]
    static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_EVENTS_BYTES, 0);
    #[map]
    static DNS_LOST: Array<u64> = Array::with_max_entries(1, 0);
    /// See `podflow_ebpf::DNS_PORT` (set by the loader; 0: off).
    #[unsafe(no_mangle)]
    static DNS_PORT: u16 = 0;
    #[map]
    static DROPS: LruHashMap<FlowKey, DropValue> = LruHashMap::with_max_entries(DROPS_ENTRIES, 0);
    /// See `podflow_ebpf::DROP_OFFSETS` (set by the loader; zeros: off).
    #[unsafe(no_mangle)]
    static DROP_OFFSETS: DropOffsets = DropOffsets {
        skb_head: 0,
        skb_network_header: 0,
        skb_transport_header: 0,
        skb_len: 0,
        skb_dev: 0,
        dev_ifindex: 0,
        dev_net: 0,
        net_inum: 0,
    };
    #[map]
    static RTTS: LruHashMap<FlowKey, RttValue> = LruHashMap::with_max_entries(RTTS_ENTRIES, 0);
    /// See `podflow_ebpf::RTT_OFFSETS` (set by the loader; zeros: off).
    #[unsafe(no_mangle)]
    static RTT_OFFSETS: RttOffsets = RttOffsets {
        skc_family: 0,
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_num: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        srtt_us: 0,
    };
    #[map]
    static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(TCP_EVENTS_BYTES, 0);
    #[map]
    static TCP_LOST: Array<u64> = Array::with_max_entries(1, 0);
    /// See `podflow_ebpf::TCP_HANDSHAKES` (set by the loader; 0: off).
    #[unsafe(no_mangle)]
    static TCP_HANDSHAKES: u8 = 0;

    #[map]
    static CT_EVENTS: RingBuf = RingBuf::with_byte_size(CT_EVENTS_BYTES, 0);
    #[map]
    static CT_LOST: Array<u64> = Array::with_max_entries(1, 0);
    /// See `podflow_ebpf::CT_SWITCH`.
    #[map]
    static CT_SWITCH: Array<u32> = Array::with_max_entries(1, 0);
    /// See `podflow_ebpf::CT_OFFSETS` (set by the loader; zeros: off).
    #[unsafe(no_mangle)]
    static CT_OFFSETS: CtOffsets = CtOffsets {
        orig: 0,
        reply: 0,
        status: 0,
        _pad: 0,
    };

    const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    const _: () = assert!(str_eq(podflow_ebpf::FLOWS_V4, "FLOWS_V4"));
    const _: () = assert!(str_eq(podflow_ebpf::FLOWS_V6, "FLOWS_V6"));
    const _: () = assert!(str_eq(podflow_ebpf::CLOCK, "CLOCK"));
    const _: () = assert!(str_eq(podflow_ebpf::SPILL_V4, "SPILL_V4"));
    const _: () = assert!(str_eq(podflow_ebpf::CACHE_V4, "CACHE_V4"));
    const _: () = assert!(str_eq(podflow_ebpf::CACHE_V6, "CACHE_V6"));
    const _: () = assert!(str_eq(podflow_ebpf::SPILL_V6, "SPILL_V6"));
    const _: () = assert!(str_eq(podflow_ebpf::VETHS, "VETHS"));
    const _: () = assert!(str_eq(podflow_ebpf::STATE, "STATE"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_CLOCK, "podflow_clock"));
    const _: () = assert!(str_eq(podflow_ebpf::CONFIG, "CONFIG"));
    const _: () = assert!(str_eq(podflow_ebpf::COUNTERS, "COUNTERS"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_VETH_INGRESS, "podflow_veth_in"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_VETH_EGRESS, "podflow_veth_eg"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_L3_INGRESS, "podflow_l3_in"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_L3_EGRESS, "podflow_l3_eg"));
    const _: () = assert!(str_eq(podflow_ebpf::DNS_EVENTS, "DNS_EVENTS"));
    const _: () = assert!(str_eq(podflow_ebpf::DNS_LOST, "DNS_LOST"));
    const _: () = assert!(str_eq(podflow_ebpf::DNS_PORT, "DNS_PORT"));
    const _: () = assert!(str_eq(podflow_ebpf::TCP_EVENTS, "TCP_EVENTS"));
    const _: () = assert!(str_eq(podflow_ebpf::DROPS, "DROPS"));
    const _: () = assert!(str_eq(podflow_ebpf::RTTS, "RTTS"));
    const _: () = assert!(str_eq(podflow_ebpf::RTT_OFFSETS, "RTT_OFFSETS"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_TCP_PROBE, "podflow_tcp_probe"));
    const _: () = assert!(str_eq(podflow_ebpf::DROP_OFFSETS, "DROP_OFFSETS"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_KFREE_SKB, "podflow_kfree_skb"));
    const _: () = assert!(str_eq(podflow_ebpf::TCP_LOST, "TCP_LOST"));
    const _: () = assert!(str_eq(podflow_ebpf::TCP_HANDSHAKES, "TCP_HANDSHAKES"));
    const _: () = assert!(str_eq(podflow_ebpf::CT_EVENTS, "CT_EVENTS"));
    const _: () = assert!(str_eq(podflow_ebpf::CT_LOST, "CT_LOST"));
    const _: () = assert!(str_eq(podflow_ebpf::CT_OFFSETS, "CT_OFFSETS"));
    const _: () = assert!(str_eq(podflow_ebpf::CT_SWITCH, "CT_SWITCH"));

    #[classifier]
    pub fn podflow_veth_in(ctx: TcContext) -> i32 {
        count(&ctx, ObsPoint::VethIngress as u8, true);
        TC_ACT_UNSPEC
    }

    #[classifier]
    pub fn podflow_veth_eg(ctx: TcContext) -> i32 {
        if !counted_upstream(&ctx) {
            count(&ctx, ObsPoint::VethEgress as u8, true);
        }
        TC_ACT_UNSPEC
    }

    /// Whether the packet entered the node through a pod veth whose ingress podflow counts at
    /// (then it was counted, sampled out or recorded as lost there). Notes the destination the
    /// packet is delivered to in that case. See `VethSlot`.
    #[inline(always)]
    fn counted_upstream(ctx: &TcContext) -> bool {
        // SAFETY: a ctx field tc programs may read (skb->skb_iif).
        let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
        if iif == 0 || iif >= VETHS_MAX {
            return false;
        }
        let Some(slot) = VETHS.get_ptr_mut(iif) else {
            return false;
        };
        // SAFETY: array value pointer from the kernel, valid for the program's run.
        if unsafe { (*slot).attached } == 0 {
            return false;
        }
        // The destination is behind the veth the packet leaves through (this one).
        // SAFETY: a ctx field tc programs may read.
        let oif = unsafe { (*ctx.skb.skb).ifindex };
        if oif < VETHS_MAX
            && let Some(out) = VETHS.get_ptr_mut(oif)
        {
            // A pod keeps its addresses while its veth lives (user space clears the slot when it
            // attaches): only the first destination of each family is noted, so the packet is
            // read only then. skb->protocol is the ethertype (network byte order).
            // SAFETY: a ctx field tc programs may read; the slot is valid for the program's run
            // and 8-aligned (peer6 at offset 8, peer4 at 4).
            let unset = unsafe {
                let proto = (*ctx.skb.skb).protocol;
                if proto == u32::from(0x0800u16.to_be()) {
                    (*out).peer4 == [0; 4]
                } else if proto == u32::from(0x86ddu16.to_be()) {
                    let p6 = (*out).peer6.as_ptr().cast::<u64>();
                    *p6 | *p6.add(1) == 0
                } else {
                    false
                }
            };
            if unset {
                note_peer(ctx, out);
            }
        }
        bump(KernelCounter::CountedUpstream);
        true
    }

    /// Stores the packet's destination address in the veth's slot (the caller found the slot's
    /// address of that family unset).
    #[inline(always)]
    fn note_peer(ctx: &TcContext, slot: *mut VethSlot) {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + 14 > end {
            return;
        }
        // SAFETY: bounds checked above (14 bytes); byte reads.
        let proto = unsafe { u16::from_be_bytes(*((data + 12) as *const [u8; 2])) };
        if proto == 0x0800 {
            if data + 34 > end {
                return;
            }
            // SAFETY: bounds checked above: the IPv4 destination is bytes 30..34.
            let dst = unsafe { *((data + 30) as *const [u8; 4]) };
            // SAFETY: the slot pointer is valid for the program's run.
            unsafe { (*slot).peer4 = dst };
        } else if proto == 0x86DD {
            if data + 54 > end {
                return;
            }
            // SAFETY: bounds checked above: the IPv6 destination is bytes 38..54.
            let dst = unsafe { *((data + 38) as *const [u8; 16]) };
            // SAFETY: as above.
            unsafe { (*slot).peer6 = dst };
        }
    }

    #[classifier]
    pub fn podflow_l3_in(ctx: TcContext) -> i32 {
        count(&ctx, ObsPoint::L3Ingress as u8, false);
        TC_ACT_UNSPEC
    }

    #[classifier]
    pub fn podflow_l3_eg(ctx: TcContext) -> i32 {
        count(&ctx, ObsPoint::L3Egress as u8, false);
        TC_ACT_UNSPEC
    }

    /// Samples jiffies and `CLOCK_MONOTONIC` together into `CLOCK` (run by user space with
    /// `BPF_PROG_TEST_RUN`, never attached).
    #[classifier]
    pub fn podflow_clock(_ctx: TcContext) -> i32 {
        if let Some(p) = CLOCK.get_ptr_mut(0) {
            // SAFETY: array value pointer from the kernel; helpers without arguments.
            unsafe {
                (*p).jiffies = bpf_jiffies64();
                (*p).mono_ns = bpf_ktime_get_ns();
            }
        }
        TC_ACT_UNSPEC
    }

    /// Does nothing (the reference of what the tc hook itself costs; never attached by the agent).
    #[classifier]
    pub fn podflow_empty(_ctx: TcContext) -> i32 {
        TC_ACT_UNSPEC
    }

    /// Adds 1 to a per-CPU counter. A constant index keeps the lookup inlinable by the verifier.
    #[inline(always)]
    fn bump(c: KernelCounter) {
        if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
            // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
            unsafe { *p += 1 };
        }
    }

    #[inline(always)]
    fn count(ctx: &TcContext, obs: u8, l2: bool) {
        let Some(cfg) = CONFIG.get_ptr(0) else {
            return;
        };
        // SAFETY: array value pointer returned by the kernel, valid for the program's run.
        let (epoch, rate) = unsafe { ((*cfg).epoch, (*cfg).sample_rate) };
        if rate > 1 {
            // Count the packet iff rand < 2^32 / rate: probability ≈ 1/rate, no division.
            // SAFETY: helper without arguments.
            let r = u64::from(unsafe { bpf_get_prandom_u32() });
            if (r * u64::from(rate)) >> 32 != 0 {
                bump(KernelCounter::SampledOut);
                return;
            }
        }

        let pkt = Pkt::new(ctx);
        let mut slot = MaybeUninit::<Flow>::uninit();
        let f = Flow::init(&mut slot, obs);
        let parsed = if l2 {
            parse::parse_l2(&pkt, f)
        } else {
            parse::parse_l3(&pkt, f)
        };
        if let Err(c) = parsed {
            bump(c);
            return;
        }
        match f.note {
            parse::NOTE_L4_TRUNCATED => bump(KernelCounter::L4Truncated),
            parse::NOTE_FRAGMENT => bump(KernelCounter::Fragments),
            parse::NOTE_EXT_CHAIN_TOO_LONG => bump(KernelCounter::Ipv6ExtChainTooLong),
            _ => {}
        }

        let skb = ctx.skb.skb;
        // SAFETY: ctx fields the verifier allows tc programs to read.
        let (gso_segs, ifindex) = unsafe { ((*skb).gso_segs, (*skb).ifindex) };
        if l2 {
            dns(ctx, f, ifindex);
            handshake(f, ifindex);
        }
        let segs = if gso_segs > 1 { u32::from(gso_segs) } else { 1 };
        // What the segments total on the wire: every segment repeats the L3 (+ext) and L4 headers.
        let bytes = u64::from(f.ip_len) + u64::from(segs - 1) * u64::from(f.hdr_len);
        // SAFETY: helper without arguments (inlined by the verifier).
        let now = unsafe { bpf_jiffies64() } as u16;
        let u = Update {
            inc: bytes | (u64::from(segs) << VALUE_PACKETS_SHIFT),
            first: now,
            last: now,
            ifindex_hi: (ifindex >> 16) as u16,
            tcp_flags: f.tcp_flags,
        };
        // The key's last word (ports, protocol, obs, family, flags) becomes the kernel keys'
        // KeyTail: ports and protocol stay, then meta (flags, obs, epoch) and the ifindex's low 16
        // bits.
        let meta = (f.key.key_flags & META_FLAGS_MASK)
            | (obs << META_OBS_SHIFT)
            | if epoch & 1 != 0 { KEY_F_EPOCH } else { 0 };
        let family = f.key.family;
        let k = &mut f.key as *mut FlowKey as *mut u64;
        // SAFETY: FlowKey is 40 bytes, 8-aligned (it starts the align(8) Flow): five words.
        let tail = unsafe { *k.add(4) } & 0xff_ffff_ffff
            | (u64::from(meta) << 40)
            | (u64::from(ifindex & 0xffff) << 48);
        let parity = epoch & 1;
        let res = if family == FAMILY_IPV4 {
            // SAFETY: as above; an IPv4 key holds its addresses in bytes 12..16 and 28..32
            // (IPv4-mapped). FlowKeyV4 is these two words.
            let k4 = unsafe {
                let src = (*k.add(1) >> 32) as u32;
                let dst = (*k.add(3) >> 32) as u32;
                [u64::from(src) | (u64::from(dst) << 32), tail]
            };
            count_cached(ctx, &CACHE_V4, &FLOWS_V4, &SPILL_V4, &k4, &u, parity)
        } else {
            // SAFETY: FlowKeyV6 is FlowKey with its last word replaced by the tail: turned into
            // one in place (the FlowKey is not used afterwards).
            let k6 = unsafe {
                k.add(4).write(tail);
                &*(k as *const [u64; 5])
            };
            count_cached(ctx, &CACHE_V6, &FLOWS_V6, &SPILL_V6, k6, &u, parity)
        };
        bump(res);
    }

    /// What a conntrack lookup found.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Ct {
        /// No entry: conntrack has not seen the connection (yet), or the node has none.
        Missing,
        /// An entry the node translated (put into the ring).
        Translated,
        /// An entry the node did not translate.
        Untranslated,
    }

    /// The `nf_conn` offsets, when the loader linked the conntrack kfuncs.
    #[inline(always)]
    fn ct_offsets() -> Option<CtOffsets> {
        // SAFETY: a read-only global the loader set (a constant to the verifier: with zeros,
        // every path below is removed before the program runs).
        let o = unsafe { read_volatile(&CT_OFFSETS) };
        (o.status != 0).then_some(o)
    }

    /// Whether user space switched the lookups on (conntrack tracks connections in the node's
    /// namespace).
    #[inline(always)]
    fn ct_switched_on() -> bool {
        // SAFETY: array value pointer from the kernel, valid for the program's run.
        CT_SWITCH.get_ptr(0).is_some_and(|p| unsafe { *p } != 0)
    }

    /// `struct bpf_ct_opts` (16 bytes, Linux 6.8+; the kernel takes 12 or 16).
    #[repr(C)]
    struct CtOpts {
        netns_id: i32,
        error: i32,
        l4proto: u8,
        dir: u8,
        zone_id: u16,
        zone_dir: u8,
        reserved: [u8; 3],
    }

    /// `BPF_F_CURRENT_NETNS`: the namespace of the packet's device.
    const CURRENT_NETNS: i32 = -1;
    /// `IPS_SRC_NAT | IPS_DST_NAT`.
    const IPS_NAT: u64 = 0x30;

    /// The conntrack bits (`FlowValue::ct`) of the flow whose kernel key is `key` (`N` words:
    /// [`FlowKeyV4`] 2, [`FlowKeyV6`] 5): looks its connection up in the node's conntrack, by
    /// the key's tuple where it was counted before conntrack (ingress), by its reverse after
    /// (egress: the translated packet's reverse is the entry's reply tuple); puts the entry
    /// into [`CT_EVENTS`] when the node translated it. 0 when the lookups are off. TCP and UDP
    /// only (what `bpf_skb_ct_lookup` takes).
    #[inline(always)]
    fn ct_bits<const N: usize>(ctx: &TcContext, key: &[u64; N]) -> u8 {
        let Some(o) = ct_offsets() else {
            return 0;
        };
        if !ct_switched_on() {
            return 0;
        }
        let tail = key[N - 1];
        let (sp, dp) = (tail as u16, (tail >> 16) as u16);
        let proto = (tail >> 32) as u8;
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return CT_MISSING;
        }
        let obs = ((tail >> 40) as u8 >> META_OBS_SHIFT) & 3;
        let reversed = obs == ObsPoint::VethEgress as u8 || obs == ObsPoint::L3Egress as u8;
        let ports = if reversed {
            u32::from(dp.to_be()) | (u32::from(sp.to_be()) << 16)
        } else {
            u32::from(sp.to_be()) | (u32::from(dp.to_be()) << 16)
        };
        // `struct bpf_sock_tuple`: saddr, daddr (4 or 16 bytes each), sport, dport.
        let mut t = [0u32; 9];
        let size = if N == 2 {
            let (a, b) = (key[0] as u32, (key[0] >> 32) as u32);
            (t[0], t[1]) = if reversed { (b, a) } else { (a, b) };
            t[2] = ports;
            12
        } else {
            let w = |i: usize, hi: bool| {
                let x = key[if i < N { i } else { 0 }];
                if hi { (x >> 32) as u32 } else { x as u32 }
            };
            let (s, d) = if reversed { (2, 0) } else { (0, 2) };
            t[0] = w(s, false);
            t[1] = w(s, true);
            t[2] = w(s + 1, false);
            t[3] = w(s + 1, true);
            t[4] = w(d, false);
            t[5] = w(d, true);
            t[6] = w(d + 1, false);
            t[7] = w(d + 1, true);
            t[8] = ports;
            36
        };
        match ct_lookup(ctx, &mut t, size, proto, &o) {
            Ct::Translated => CT_FOUND,
            Ct::Untranslated => CT_FOUND | CT_PLAIN,
            Ct::Missing => CT_MISSING,
        }
    }

    /// Looks the tuple `t` (`size` bytes of a `struct bpf_sock_tuple`) up in the node's
    /// conntrack; when the node translated the entry, puts it into [`CT_EVENTS`].
    #[inline(always)]
    fn ct_lookup(ctx: &TcContext, t: &mut [u32; 9], size: u32, proto: u8, o: &CtOffsets) -> Ct {
        let mut opts = CtOpts {
            netns_id: CURRENT_NETNS,
            error: 0,
            l4proto: proto,
            dir: 0,
            zone_id: 0,
            zone_dir: 0,
            reserved: [0; 3],
        };
        // SAFETY: the placeholders the loader rewrites into calls of `bpf_skb_ct_lookup` and
        // `bpf_ct_release` (see podflow_ebpf::KFUNC_SKB_CT_LOOKUP).
        let (lookup, release) = unsafe {
            let lookup: unsafe extern "C" fn(
                *mut core::ffi::c_void,
                *mut u32,
                u32,
                *mut CtOpts,
                u32,
            ) -> *const u8 = core::mem::transmute(podflow_ebpf::KFUNC_SKB_CT_LOOKUP as usize);
            let release: unsafe extern "C" fn(*const u8) =
                core::mem::transmute(podflow_ebpf::KFUNC_CT_RELEASE as usize);
            (lookup, release)
        };
        // SAFETY: the context, and stack memory of the sizes given.
        let ct = unsafe {
            lookup(
                ctx.skb.skb.cast(),
                t.as_mut_ptr(),
                size,
                &mut opts,
                size_of::<CtOpts>() as u32,
            )
        };
        if ct.is_null() {
            return Ct::Missing;
        }
        // SAFETY: loads of the referenced nf_conn at offsets from its BTF (checked by the
        // verifier); the reference is released on every path.
        let translated = unsafe {
            let status = read_volatile(ct.add(o.status as usize).cast::<u64>());
            if status & IPS_NAT != 0 {
                if let Some(mut e) = CT_EVENTS.reserve::<CtEvent>(0) {
                    let ev = e.as_mut_ptr();
                    ct_tuple(ct.add(o.orig as usize), &mut (*ev).orig);
                    ct_tuple(ct.add(o.reply as usize), &mut (*ev).reply);
                    (*ev).status = status as u32;
                    (*ev)._pad = 0;
                    e.submit(0);
                } else if let Some(lost) = CT_LOST.get_ptr_mut(0) {
                    fetch_add(lost, 1);
                }
            }
            release(ct);
            status & IPS_NAT != 0
        };
        if translated {
            Ct::Translated
        } else {
            Ct::Untranslated
        }
    }

    /// Copies a `struct nf_conntrack_tuple` at `p` (see `podflow_ebpf::CtOffsets`).
    ///
    /// # Safety
    /// `p` points into a referenced `nf_conn` at one of its tuples; `t` is writable.
    #[inline(always)]
    unsafe fn ct_tuple(p: *const u8, t: *mut CtTuple) {
        // SAFETY: see the function's contract.
        unsafe {
            let (s, d) = ((*t).src.as_mut_ptr(), (*t).dst.as_mut_ptr());
            let mut i = 0;
            while i < 16 {
                write_unaligned(
                    s.add(i).cast::<u32>(),
                    read_volatile(p.add(i).cast::<u32>()),
                );
                write_unaligned(
                    d.add(i).cast::<u32>(),
                    read_volatile(p.add(20 + i).cast::<u32>()),
                );
                i += 4;
            }
            (*t).src_port = read_volatile(p.add(16).cast::<u16>());
            (*t).dst_port = read_volatile(p.add(36).cast::<u16>());
            (*t).protocol = read_volatile(p.add(38));
            // `src.l3num`: AF_INET (2) or AF_INET6.
            (*t).family = if read_volatile(p.add(18).cast::<u16>()) == 2 {
                FAMILY_IPV4
            } else {
                FAMILY_IPV6
            };
            (*t)._pad = 0;
        }
    }

    /// A DNS message (to or from the configured port, over UDP or TCP) goes to the DNS ring, its
    /// first [`DNS_MSG_BYTES`] bytes copied as they are. Runs after the packet was parsed and
    /// before it is counted; whatever the message holds, the packet's counts and verdict are
    /// the same (nothing here returns early from the count, and the program never drops).
    #[inline(always)]
    fn dns(ctx: &TcContext, f: &Flow, ifindex: u32) {
        // SAFETY: a read-only global the loader set.
        let port = unsafe { core::ptr::read_volatile(&DNS_PORT) };
        let (proto, sp, dp) = (f.key.protocol, f.key.src_port, f.key.dst_port);
        if port == 0 || f.payload_off == 0 || (sp != port && dp != port) {
            return;
        }
        let (off, flags) = match proto {
            IPPROTO_UDP => (u32::from(f.payload_off), 0),
            // TCP: the message follows its 2-byte length (a segment that does not start a
            // message is read as malformed by user space, never trusted).
            IPPROTO_TCP => (u32::from(f.payload_off) + 2, DNS_F_TCP),
            _ => return,
        };
        let avail = i64::from(ctx.len()) - i64::from(off);
        // Shorter than a DNS header: not a message.
        if avail < 12 {
            return;
        }
        let n = if avail > DNS_MSG_BYTES as i64 {
            DNS_MSG_BYTES as i64
        } else {
            avail
        };
        if !check_bounds_signed(n, 12, DNS_MSG_BYTES as i64) {
            return;
        }
        let Some(mut e) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
            if let Some(lost) = DNS_LOST.get_ptr_mut(0) {
                // SAFETY: map memory, 8-aligned.
                unsafe { fetch_add(lost, 1) };
            }
            return;
        };
        let ev = e.as_mut_ptr();
        // SAFETY: `ev` is the reserved entry (size_of::<DnsEvent>() bytes); `n` is within
        // [12, DNS_MSG_BYTES] (checked above), so the copy stays inside `msg`.
        let copied = unsafe {
            (*ev).key = f.key;
            (*ev).ts_ns = bpf_ktime_get_ns();
            (*ev).ifindex = ifindex;
            (*ev).len = n as u16;
            (*ev).flags = flags;
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                off,
                (*ev).msg.as_mut_ptr().cast(),
                n as u32,
            )
        };
        if copied == 0 {
            e.submit(0);
        } else {
            e.discard(0);
        }
    }

    /// A packet the kernel dropped (`kfree_skb(skb, location, reason, ...)`): its IP and
    /// transport headers read from the skb (BTF-checked, fault-safe loads at offsets the loader
    /// set), added to its flow's drops with the reason and where it was (device, network
    /// namespace). Not IP, or headers not set yet: ignored. Runs only for dropped packets.
    #[btf_tracepoint(function = "kfree_skb")]
    pub fn podflow_kfree_skb(ctx: BtfTracePointContext) -> i32 {
        // SAFETY: a read-only global the loader set.
        let o = unsafe { read_volatile(&DROP_OFFSETS) };
        if o.skb_head == 0 {
            return 0;
        }
        let skb: *const u8 = ctx.arg(0);
        let reason: u32 = ctx.arg(2);
        // SAFETY: every load below is of the traced skb (a BTF-typed pointer) or of memory it
        // points to; the verifier checks them against BTF and makes them fault-safe.
        unsafe {
            let head = read_volatile(skb.add(o.skb_head as usize).cast::<*const u8>());
            let nh = read_volatile(skb.add(o.skb_network_header as usize).cast::<u16>());
            let th = read_volatile(skb.add(o.skb_transport_header as usize).cast::<u16>());
            if head.is_null() || nh == 0xffff {
                return 0;
            }
            let ip = head.add(usize::from(nh));
            let mut key = FlowKey::default();
            let v = read_volatile(ip) >> 4;
            let (l4, bytes, fragment) = if v == 4 {
                let ihl = usize::from(read_volatile(ip) & 0x0f) * 4;
                key.family = FAMILY_IPV4;
                key.protocol = read_volatile(ip.add(9));
                key.src_addr[10] = 0xff;
                key.src_addr[11] = 0xff;
                key.dst_addr[10] = 0xff;
                key.dst_addr[11] = 0xff;
                write_unaligned(
                    key.src_addr.as_mut_ptr().add(12).cast::<u32>(),
                    read_volatile(ip.add(12).cast::<u32>()),
                );
                write_unaligned(
                    key.dst_addr.as_mut_ptr().add(12).cast::<u32>(),
                    read_volatile(ip.add(16).cast::<u32>()),
                );
                let tot = u16::from_be(read_volatile(ip.add(2).cast::<u16>()));
                let frag = u16::from_be(read_volatile(ip.add(6).cast::<u16>())) & 0x1fff;
                (ip.add(ihl), u64::from(tot), frag != 0)
            } else if v == 6 {
                key.family = FAMILY_IPV6;
                key.protocol = read_volatile(ip.add(6));
                let mut i = 0;
                while i < 16 {
                    write_unaligned(
                        key.src_addr.as_mut_ptr().add(i).cast::<u32>(),
                        read_volatile(ip.add(8 + i).cast::<u32>()),
                    );
                    write_unaligned(
                        key.dst_addr.as_mut_ptr().add(i).cast::<u32>(),
                        read_volatile(ip.add(24 + i).cast::<u32>()),
                    );
                    i += 4;
                }
                let plen = u16::from_be(read_volatile(ip.add(4).cast::<u16>()));
                (ip.add(40), u64::from(plen) + 40, false)
            } else {
                return 0;
            };
            // The transport header where the stack set it, else right after the IP header.
            let l4 = if th != 0xffff && th > nh {
                head.add(usize::from(th))
            } else {
                l4
            };
            if !fragment {
                match key.protocol {
                    IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
                        key.src_port = u16::from_be(read_volatile(l4.cast::<u16>()));
                        key.dst_port = u16::from_be(read_volatile(l4.add(2).cast::<u16>()));
                    }
                    IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                        key.src_port = u16::from(read_volatile(l4));
                        key.dst_port = u16::from(read_volatile(l4.add(1)));
                    }
                    _ => {}
                }
            }
            let dev = read_volatile(skb.add(o.skb_dev as usize).cast::<*const u8>());
            let (ifindex, netns) = if dev.is_null() {
                (0, 0)
            } else {
                let ifindex = read_volatile(dev.add(o.dev_ifindex as usize).cast::<u32>());
                let net = read_volatile(dev.add(o.dev_net as usize).cast::<*const u8>());
                let inum = if net.is_null() {
                    0
                } else {
                    read_volatile(net.add(o.net_inum as usize).cast::<u32>())
                };
                (ifindex, inum)
            };
            match DROPS.get_ptr_mut(&key) {
                Some(d) => {
                    fetch_add(&raw mut (*d).packets, 1);
                    fetch_add(&raw mut (*d).bytes, bytes);
                    (*d).reason = reason;
                    (*d).ifindex = ifindex;
                    (*d).netns = netns;
                }
                None => {
                    let d = DropValue {
                        packets: 1,
                        bytes,
                        reason,
                        ifindex,
                        netns,
                        _pad: 0,
                    };
                    let _ = DROPS.insert(&key, &d, 0);
                }
            }
        }
        0
    }

    /// A TCP segment a socket of the node received on an established connection
    /// (`tcp_probe(sk, skb)`): the socket's smoothed RTT goes to its outgoing flow's entry.
    #[btf_tracepoint(function = "tcp_probe")]
    pub fn podflow_tcp_probe(ctx: BtfTracePointContext) -> i32 {
        const AF_INET: u16 = 2;
        const AF_INET6: u16 = 10;
        // SAFETY: a read-only global the loader set.
        let o = unsafe { read_volatile(&RTT_OFFSETS) };
        if o.srtt_us == 0 {
            return 0;
        }
        let sk: *mut core::ffi::c_void = ctx.arg(0);
        // SAFETY: the helper checks the socket's type; NULL when it is not a TCP socket.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<u8>().cast_const();
        if tp.is_null() {
            return 0;
        }
        // SAFETY: BTF-typed loads of the traced socket at offsets the loader set.
        unsafe {
            let mut key = FlowKey {
                protocol: IPPROTO_TCP,
                ..FlowKey::default()
            };
            let family = read_volatile(tp.add(o.skc_family as usize).cast::<u16>());
            if family == AF_INET {
                key.family = FAMILY_IPV4;
                key.src_addr[10] = 0xff;
                key.src_addr[11] = 0xff;
                key.dst_addr[10] = 0xff;
                key.dst_addr[11] = 0xff;
                write_unaligned(
                    key.src_addr.as_mut_ptr().add(12).cast::<u32>(),
                    read_volatile(tp.add(o.skc_rcv_saddr as usize).cast::<u32>()),
                );
                write_unaligned(
                    key.dst_addr.as_mut_ptr().add(12).cast::<u32>(),
                    read_volatile(tp.add(o.skc_daddr as usize).cast::<u32>()),
                );
            } else if family == AF_INET6 {
                key.family = FAMILY_IPV6;
                let mut i = 0;
                while i < 16 {
                    write_unaligned(
                        key.src_addr.as_mut_ptr().add(i).cast::<u32>(),
                        read_volatile(tp.add(o.skc_v6_rcv_saddr as usize + i).cast::<u32>()),
                    );
                    write_unaligned(
                        key.dst_addr.as_mut_ptr().add(i).cast::<u32>(),
                        read_volatile(tp.add(o.skc_v6_daddr as usize + i).cast::<u32>()),
                    );
                    i += 4;
                }
            } else {
                return 0;
            }
            key.src_port = read_volatile(tp.add(o.skc_num as usize).cast::<u16>());
            key.dst_port = u16::from_be(read_volatile(tp.add(o.skc_dport as usize).cast::<u16>()));
            // srtt_us holds the smoothed RTT in µs << 3.
            let srtt = read_volatile(tp.add(o.srtt_us as usize).cast::<u32>()) >> 3;
            match RTTS.get_ptr_mut(&key) {
                Some(v) => {
                    (*v).samples = (*v).samples.wrapping_add(1);
                    if srtt < (*v).min_us {
                        (*v).min_us = srtt;
                    }
                    if srtt > (*v).max_us {
                        (*v).max_us = srtt;
                    }
                    (*v).last_us = srtt;
                }
                None => {
                    let v = RttValue {
                        samples: 1,
                        min_us: srtt,
                        max_us: srtt,
                        last_us: srtt,
                    };
                    let _ = RTTS.insert(&key, &v, 0);
                }
            }
        }
        0
    }

    /// A SYN (a connection opening) or SYN/ACK (its acceptance) goes to the TCP ring, for the
    /// handshake's latency: one event per segment of a connection's first round trip (a
    /// retransmitted SYN again), nothing for any other packet.
    #[inline(always)]
    fn handshake(f: &Flow, ifindex: u32) {
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        // SAFETY: a read-only global the loader set.
        let on = unsafe { core::ptr::read_volatile(&TCP_HANDSHAKES) };
        if on == 0 || f.key.protocol != IPPROTO_TCP || f.tcp_flags & (SYN | RST) != SYN {
            return;
        }
        let Some(mut e) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
            if let Some(lost) = TCP_LOST.get_ptr_mut(0) {
                // SAFETY: map memory, 8-aligned.
                unsafe { fetch_add(lost, 1) };
            }
            return;
        };
        let ev = e.as_mut_ptr();
        // SAFETY: `ev` is the reserved entry, size_of::<TcpEvent>() bytes.
        unsafe {
            (*ev).key = f.key;
            (*ev).ts_ns = bpf_ktime_get_ns();
            (*ev).ifindex = ifindex;
            (*ev).tcp_flags = f.tcp_flags;
            (*ev)._pad = [0; 3];
        }
        e.submit(0);
    }

    /// What a packet (or a cached piece of a flow) adds to a flow.
    struct Update {
        /// Bytes and packets, packed like [`FlowValue::counts`].
        inc: u64,
        /// Low 16 bits of jiffies at the first and last packet.
        first: u16,
        last: u16,
        /// Bits 16..32 of the ifindex (bits 0..16 are in the key).
        ifindex_hi: u16,
        tcp_flags: u8,
    }

    impl Update {
        /// What a flow value (a cache slot's) holds, as an update to another value.
        #[inline(always)]
        fn of(v: &FlowValue) -> Update {
            Update {
                inc: v.counts,
                first: v.first_jiffies,
                last: v.last_jiffies,
                ifindex_hi: v.ifindex_hi,
                tcp_flags: v.tcp_flags,
            }
        }

        /// [`FlowValue`]'s second word for a value that starts with this update: first and last
        /// jiffies, TCP flags, ifindex bits 16..32 (little-endian; written as one word so no
        /// memset).
        #[inline(always)]
        fn word1(&self) -> u64 {
            u64::from(self.first)
                | (u64::from(self.last) << 16)
                | (u64::from(self.tcp_flags) << VALUE_TCP_FLAGS_SHIFT)
                | (u64::from(self.ifindex_hi) << 48)
        }
    }

    /// Counts a packet of the flow `key` (the kernel key `K` as `N` words) through this CPU's
    /// flow cache (see `CacheEntry`): a hit adds to the slot with plain stores; a miss moves the
    /// slot's flow to the flow map and takes the slot.
    #[inline(always)]
    fn count_cached<K, const N: usize>(
        ctx: &TcContext,
        cache: &PerCpuArray<CacheEntry<K>>,
        map: &HashMap<K, FlowValue>,
        spill: &HashMap<K, SpillValue>,
        key: &[u64; N],
        u: &Update,
        parity: u32,
    ) -> KernelCounter {
        const _: () = assert!(CACHE_SLOTS.is_power_of_two());
        let mut h = 0u64;
        let mut i = 0;
        while i < N {
            h = (h ^ key[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            i += 1;
        }
        let slot = (h >> (64 - CACHE_SLOTS.trailing_zeros())) as u32;
        let Some(e) = cache.get_ptr_mut(parity * CACHE_SLOTS + slot) else {
            return record(ctx, map, spill, key, u);
        };
        let ew = e.cast::<u64>();
        // SAFETY: this CPU's slot (per-CPU array value, 8-aligned, N + 2 words), valid for the
        // program's run; only this CPU's programs touch it, and they do not nest.
        unsafe {
            let v = ew.add(N);
            let counts = *v;
            let mut same = counts != 0;
            let mut i = 0;
            while i < N {
                same &= *ew.add(i) == key[i];
                i += 1;
            }
            let value = v.cast::<FlowValue>();
            if same {
                let c = counts + u.inc;
                if (c & VALUE_BYTES_MASK) < CACHE_FLUSH_BYTES
                    && (c >> VALUE_PACKETS_SHIFT) < CACHE_FLUSH_PACKETS
                {
                    *v = c;
                    (*value).last_jiffies = u.last;
                    (*value).tcp_flags |= u.tcp_flags;
                    return KernelCounter::Recorded;
                }
                // Full: the flow, this packet included, moves to the map.
                let mut piece = Update::of(&*value);
                piece.inc = c;
                piece.last = u.last;
                piece.tcp_flags |= u.tcp_flags;
                return match record(ctx, map, spill, key, &piece) {
                    KernelCounter::Recorded => {
                        *v = 0;
                        KernelCounter::Recorded
                    }
                    // The slot keeps what it had; the packet alone is lost (map full).
                    _ => record(ctx, map, spill, key, u),
                };
            }
            if counts != 0 {
                // Another flow holds the slot: move it to the map first.
                let piece = Update::of(&*value);
                // SAFETY: the slot's key, N words like `key`.
                let held = &*(e as *const [u64; N]);
                if record(ctx, map, spill, held, &piece) != KernelCounter::Recorded {
                    // The map is full: the held flow stays; this packet goes to the map alone.
                    return record(ctx, map, spill, key, u);
                }
            }
            let mut i = 0;
            while i < N {
                *ew.add(i) = key[i];
                i += 1;
            }
            *v = u.inc;
            *v.add(1) = u.word1();
        }
        KernelCounter::Recorded
    }

    /// `*p += v`, atomically, returning the previous value (`BPF_ATOMIC | BPF_FETCH | BPF_ADD`,
    /// Linux 5.12). Written as assembly: bpf-linker generates code for the v1 CPU, whose LLVM
    /// backend only emits the fetch-less add, and rustc passes the CPU itself.
    #[inline(always)]
    unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
        let mut r = v;
        // SAFETY: the caller passes a valid, 8-aligned pointer to map memory.
        unsafe {
            core::arch::asm!(
                "{r} = atomic_fetch_add((u64 *)({p} + 0), {r})",
                p = in(reg) p,
                r = inout(reg) r,
                options(nostack),
            );
        }
        r
    }

    #[inline(always)]
    fn apply<K>(spill: &HashMap<K, SpillValue>, key: &K, v: *mut FlowValue, u: &Update) {
        let w = v.cast::<u64>();
        let inc = u.inc;
        // SAFETY: a (non-per-CPU) hash map value, 16 bytes, 8-aligned, valid for the program's
        // run; several CPUs may update it at once, hence the atomics (see FlowValue for the
        // layout). `last_jiffies` is a plain store: any CPU's recent value is right.
        unsafe {
            let old = fetch_add(w, inc);
            let bytes = (old & VALUE_BYTES_MASK) + (inc & VALUE_BYTES_MASK);
            let packets = (old >> VALUE_PACKETS_SHIFT) + (inc >> VALUE_PACKETS_SHIFT);
            if bytes >= SPILL_BYTES || packets >= SPILL_PACKETS {
                spill_counts(spill, key, w, old, inc);
            }
            (*v).last_jiffies = u.last;
            if u.tcp_flags != 0 && (*v).tcp_flags & u.tcp_flags != u.tcp_flags {
                // Atomic only when a flag is new to the flow (rarely after the handshake).
                let bits = u64::from(u.tcp_flags) << VALUE_TCP_FLAGS_SHIFT;
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w.add(1), bits);
            }
        }
    }

    /// Moves [`SPILL_BYTES`] / [`SPILL_PACKETS`] out of a value whose fields this packet took to
    /// the threshold (`old` are the counts before its add `inc`): adds them to the flow's spill
    /// entry, then subtracts them from the value. Only the run whose add crosses a threshold
    /// moves it, so each amount moves once. Out of line: it runs once per 2^23 packets of a flow.
    #[inline(never)]
    fn spill_counts<K>(spill: &HashMap<K, SpillValue>, key: &K, w: *mut u64, old: u64, inc: u64) {
        let (ob, op) = (old & VALUE_BYTES_MASK, old >> VALUE_PACKETS_SHIFT);
        let (nb, np) = (
            ob + (inc & VALUE_BYTES_MASK),
            op + (inc >> VALUE_PACKETS_SHIFT),
        );
        let bytes = if ob < SPILL_BYTES && nb >= SPILL_BYTES {
            SPILL_BYTES
        } else {
            0
        };
        let packets = if op < SPILL_PACKETS && np >= SPILL_PACKETS {
            SPILL_PACKETS
        } else {
            0
        };
        if bytes == 0 && packets == 0 {
            return;
        }
        let moved = add_spill(spill, key, bytes, packets);
        // SAFETY: the flow value's first word, valid for the program's run. Subtracting even if
        // the spill map was full keeps the fields from overflowing into each other; the amount
        // is then counted as lost.
        unsafe {
            fetch_add(w, (bytes | (packets << VALUE_PACKETS_SHIFT)).wrapping_neg());
        }
        if !moved {
            bump(KernelCounter::CountsOverflow);
        }
    }

    #[inline(always)]
    fn add_spill<K>(spill: &HashMap<K, SpillValue>, key: &K, bytes: u64, packets: u64) -> bool {
        let add = |s: *mut SpillValue| {
            // SAFETY: a spill map value, 16 bytes, 8-aligned, valid for the program's run.
            unsafe {
                let w = s.cast::<u64>();
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(w, bytes);
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(w.add(1), packets);
            }
        };
        if let Some(s) = spill.get_ptr_mut(key) {
            add(s);
            return true;
        }
        let fresh = SpillValue { bytes, packets };
        match spill.insert(key, &fresh, u64::from(BPF_NOEXIST)) {
            Ok(()) => true,
            Err(e) if e == -EEXIST => match spill.get_ptr_mut(key) {
                Some(s) => {
                    add(s);
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    /// Adds an update to the flow map (lookup, else insert). Out of line: the cache makes it the
    /// rare path, and the hot path stays compact (live runs pay for code that is not in cache).
    #[inline(never)]
    fn record<K, const N: usize>(
        ctx: &TcContext,
        map: &HashMap<K, FlowValue>,
        spill: &HashMap<K, SpillValue>,
        words: &[u64; N],
        u: &Update,
    ) -> KernelCounter {
        // SAFETY: K is N words (asserted by the callers' types: FlowKeyV4 16 B, FlowKeyV6 40 B).
        let key = unsafe { &*(words as *const [u64; N] as *const K) };
        if let Some(v) = map.get_ptr_mut(key) {
            apply(spill, key, v, u);
            return KernelCounter::Recorded;
        }
        // Written as two u64 words: a struct literal could be left to a memset, which
        // bpf-linker turns into a call to a byte loop.
        let mut fresh = MaybeUninit::<FlowValue>::uninit();
        let w = fresh.as_mut_ptr().cast::<u64>();
        // SAFETY: FlowValue is 16 bytes, 8-aligned: counts; first, last, TCP flags, pad,
        // ifindex bits 16..32 (little-endian words). What one update adds is far below the
        // spill thresholds (a packet: < 2^16 segments, < 2^32 bytes; a cached piece: below
        // CACHE_FLUSH_PACKETS/BYTES plus one packet).
        // The flow's first entry this epoch: the node's translation of its connection, once
        // per flow and drain (conntrack has seen the flow's first packet by now, unless this is
        // it, counted at its pod's veth ingress; see `ct_bits`).
        let ct = u64::from(ct_bits(ctx, words));
        unsafe {
            w.write(u.inc);
            w.add(1).write(u.word1() | (ct << 40));
        }
        // SAFETY: fully initialized above.
        let fresh = unsafe { fresh.assume_init_ref() };
        match map.insert(key, fresh, u64::from(BPF_NOEXIST)) {
            Ok(()) => KernelCounter::Recorded,
            // Another CPU inserted the key in between: add to its entry.
            Err(e) if e == -EEXIST => match map.get_ptr_mut(key) {
                Some(v) => {
                    apply(spill, key, v, u);
                    KernelCounter::Recorded
                }
                None => KernelCounter::LostMapError,
            },
            Err(e) if e == -E2BIG || e == -ENOMEM => KernelCounter::LostMapFull,
            Err(_) => KernelCounter::LostMapError,
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
