//! podflow's tc programs: count every IP packet of a pod veth or an L3 tunnel device into a
//! per-CPU flow map (see `lib.rs` for the shared types and the double-buffer protocol).
//!
//! Every program returns `TC_ACT_UNSPEC` (-1) on every path: under tcx that is `TCX_NEXT` (run the
//! next program, e.g. the CNI's) and in legacy cls_bpf direct-action mode it means "continue".
//! The programs never write the packet nor change skb fields, and never pull data.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod programs {
    use core::mem::MaybeUninit;

    use aya_ebpf::{
        bindings::BPF_NOEXIST,
        helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
        macros::{classifier, map},
        maps::{Array, PerCpuArray, PerCpuHashMap},
        programs::TcContext,
    };
    use podflow_ebpf::{
        COUNTER_COUNT, Config, Counter, DEFAULT_FLOW_MAP_ENTRIES, FlowKey, FlowStats, ObsPoint,
    };

    use crate::parse::{self, Flow, Pkt};

    /// "No verdict": continue with the next program / the normal path.
    const TC_ACT_UNSPEC: i32 = -1;

    const _: () = assert!(size_of::<FlowStats>() == 40 && align_of::<FlowStats>() == 8);
    const _: () = assert!(core::mem::offset_of!(FlowStats, ifindex) == 32);
    const _: () = assert!(core::mem::offset_of!(FlowStats, tcp_flags) == 36);

    const EEXIST: i32 = 17;
    const E2BIG: i32 = 7;
    const ENOMEM: i32 = 12;

    // The statics' names are the map names user space looks up: keep them equal to the lib.rs
    // constants (checked at compile time below).
    #[map]
    static FLOWS_0: PerCpuHashMap<FlowKey, FlowStats> =
        PerCpuHashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);
    #[map]
    static FLOWS_1: PerCpuHashMap<FlowKey, FlowStats> =
        PerCpuHashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);
    #[map]
    static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
    #[map]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

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
    const _: () = assert!(str_eq(podflow_ebpf::FLOWS_0, "FLOWS_0"));
    const _: () = assert!(str_eq(podflow_ebpf::FLOWS_1, "FLOWS_1"));
    const _: () = assert!(str_eq(podflow_ebpf::CONFIG, "CONFIG"));
    const _: () = assert!(str_eq(podflow_ebpf::COUNTERS, "COUNTERS"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_VETH_INGRESS, "podflow_veth_in"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_VETH_EGRESS, "podflow_veth_eg"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_L3_INGRESS, "podflow_l3_in"));
    const _: () = assert!(str_eq(podflow_ebpf::PROG_L3_EGRESS, "podflow_l3_eg"));

    #[classifier]
    pub fn podflow_veth_in(ctx: TcContext) -> i32 {
        count(&ctx, ObsPoint::VethIngress as u8, true);
        TC_ACT_UNSPEC
    }

    #[classifier]
    pub fn podflow_veth_eg(ctx: TcContext) -> i32 {
        count(&ctx, ObsPoint::VethEgress as u8, true);
        TC_ACT_UNSPEC
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

    /// Adds 1 to a per-CPU counter. A constant index keeps the lookup inlinable by the verifier.
    #[inline(always)]
    fn bump(c: Counter) {
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
        let (active, rate) = unsafe { ((*cfg).active, (*cfg).sample_rate) };
        bump(Counter::Packets);
        if rate > 1 {
            // Count the packet iff rand < 2^32 / rate: probability ≈ 1/rate, no division.
            // SAFETY: helper without arguments.
            let r = u64::from(unsafe { bpf_get_prandom_u32() });
            if (r * u64::from(rate)) >> 32 != 0 {
                bump(Counter::SampledOut);
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
            parse::NOTE_L4_TRUNCATED => bump(Counter::L4Truncated),
            parse::NOTE_FRAGMENT => bump(Counter::Fragments),
            parse::NOTE_EXT_CHAIN_TOO_LONG => bump(Counter::Ipv6ExtChainTooLong),
            _ => {}
        }

        let skb = ctx.skb.skb;
        // SAFETY: ctx fields the verifier allows tc programs to read.
        let (gso_segs, ifindex) = unsafe { ((*skb).gso_segs, (*skb).ifindex) };
        let segs = if gso_segs > 1 { u64::from(gso_segs) } else { 1 };
        // What the segments total on the wire: every segment repeats the L3 (+ext) and L4 headers.
        let bytes = u64::from(f.ip_len) + (segs - 1) * u64::from(f.hdr_len);
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let u = Update {
            segs,
            bytes,
            now,
            ifindex,
            tcp_flags: f.tcp_flags,
        };
        // Two call sites (not a map pointer chosen at run time) so the verifier can still inline
        // each map's lookup.
        let res = if active == 0 {
            record(&FLOWS_0, &f.key, &u)
        } else {
            record(&FLOWS_1, &f.key, &u)
        };
        bump(res);
    }

    struct Update {
        segs: u64,
        bytes: u64,
        now: u64,
        ifindex: u32,
        tcp_flags: u8,
    }

    #[inline(always)]
    fn apply(s: *mut FlowStats, u: &Update) {
        // SAFETY: this CPU's slot of a per-CPU hash value; no other writer.
        unsafe {
            (*s).packets += u.segs;
            (*s).bytes += u.bytes;
            (*s).last_ns = u.now;
            if (*s).first_ns == 0 {
                (*s).first_ns = u.now;
            }
            (*s).tcp_flags |= u.tcp_flags;
            (*s).ifindex = u.ifindex;
        }
    }

    #[inline(always)]
    fn record(map: &PerCpuHashMap<FlowKey, FlowStats>, key: &FlowKey, u: &Update) -> Counter {
        if let Some(s) = map.get_ptr_mut(key) {
            apply(s, u);
            return Counter::Recorded;
        }
        // Written as five u64 words: a struct literal would leave the 3 padding bytes to a memset,
        // which bpf-linker turns into a call to a byte loop.
        let mut fresh = MaybeUninit::<FlowStats>::uninit();
        let w = fresh.as_mut_ptr().cast::<u64>();
        // SAFETY: FlowStats is 40 bytes, 8-aligned: ifindex (u32), tcp_flags (u8) and _pad (3
        // bytes) make up the last little-endian word.
        unsafe {
            w.write(u.segs);
            w.add(1).write(u.bytes);
            w.add(2).write(u.now);
            w.add(3).write(u.now);
            w.add(4)
                .write(u64::from(u.ifindex) | (u64::from(u.tcp_flags) << 32));
        }
        // SAFETY: fully initialized above.
        let fresh = unsafe { fresh.assume_init_ref() };
        match map.insert(key, fresh, u64::from(BPF_NOEXIST)) {
            Ok(()) => Counter::Recorded,
            // Another CPU inserted the key in between: our slot of it is zeroed, update it.
            Err(e) if e == -EEXIST => match map.get_ptr_mut(key) {
                Some(s) => {
                    apply(s, u);
                    Counter::Recorded
                }
                None => Counter::LostMapError,
            },
            Err(e) if e == -E2BIG || e == -ENOMEM => Counter::LostMapFull,
            Err(_) => Counter::LostMapError,
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
