//! Packet parsing shared by the L2 (veth) and L3 (WireGuard) programs.
//!
//! Headers are read in place with direct packet access when they lie in the linear data, and copied
//! with `bpf_skb_load_bytes` when they lie beyond it but within `skb->len` (never
//! `bpf_skb_pull_data`: the packet is not touched). Header structs are byte arrays (alignment 1):
//! packet data carries no alignment guarantee.
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use podflow_ebpf::{
    FAMILY_IPV4, FAMILY_IPV6, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP, KEY_F_FRAGMENT, KEY_F_L4_TRUNCATED, KernelCounter,
};

/// Largest offset read with direct packet access; the bound lets the verifier check
/// `data + off`. Headers further away (never in practice) go through `bpf_skb_load_bytes`.
const MAX_DIRECT_OFF: usize = 0x3fff;

/// IPv6 extension headers followed before giving up.
const MAX_IPV6_EXT: usize = 6;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

pub struct Pkt<'a> {
    ctx: &'a TcContext,
    data: usize,
    data_end: usize,
    len: u32,
}

impl<'a> Pkt<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        Pkt {
            ctx,
            data: ctx.data(),
            data_end: ctx.data_end(),
            len: ctx.len(),
        }
    }

    /// A `T` (alignment 1) at `off`: in place if in the linear data, else copied into `buf`.
    #[inline(always)]
    fn hdr<'b, T>(&self, off: usize, buf: &'b mut MaybeUninit<T>) -> Option<&'b T> {
        if off <= MAX_DIRECT_OFF {
            let start = self.data + off;
            if start + size_of::<T>() <= self.data_end {
                // SAFETY: bounds checked against data_end just above; T has alignment 1.
                return Some(unsafe { &*(start as *const T) });
            }
        }
        // SAFETY: the helper writes exactly size_of::<T>() bytes into buf or fails.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.ctx.skb.skb as *const c_void,
                off as u32,
                buf.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            // SAFETY: initialized by the helper.
            Some(unsafe { buf.assume_init_ref() })
        } else {
            None
        }
    }

    /// Whether `n` bytes from `off` lie within the packet (`skb->len`).
    #[inline(always)]
    fn has(&self, off: usize, n: usize) -> bool {
        off + n <= self.len as usize
    }

    /// The bytes the packet holds from `off` on (`off` within it).
    #[inline(always)]
    fn from(&self, off: usize) -> u32 {
        self.len - off as u32
    }

    /// Whether the packet is a GSO/GRO super-packet (`skb->gso_size` set): only those may leave
    /// an IP length field 0 (BIG TCP). Read only on that rare path.
    #[inline(always)]
    fn is_gso(&self) -> bool {
        // SAFETY: a ctx field tc programs may read.
        unsafe { (*self.ctx.skb.skb).gso_size != 0 }
    }
}

/// Secondary counters a packet also contributes to ([`Flow::note`]).
#[allow(dead_code, reason = "documents the zero value")]
pub const NOTE_NONE: u8 = 0;
pub const NOTE_L4_TRUNCATED: u8 = 1;
pub const NOTE_FRAGMENT: u8 = 2;
pub const NOTE_EXT_CHAIN_TOO_LONG: u8 = 3;

/// The parse result. Aligned and padded to whole u64 words so it can be zeroed with 7 stores:
/// bpf-linker lowers memset to a call to a byte loop (it expands memcpy in order, not memset), so
/// no zeroing may be left to the compiler.
#[repr(C, align(8))]
pub struct Flow {
    pub key: FlowKey,
    /// IP-layer length of the packet.
    pub ip_len: u32,
    /// L3 header (with IPv6 extension headers) + L4 header length, repeated by each GSO segment.
    pub hdr_len: u32,
    pub tcp_flags: u8,
    /// A `NOTE_*` value.
    pub note: u8,
    /// Offset of the L4 payload from the start of the packet (UDP: after the 8-byte header;
    /// TCP: after the header and its options), 0 when the transport header was not read.
    pub payload_off: u16,
    _pad: [u8; 4],
}
const _: () = assert!(size_of::<Flow>() == 56);

impl Flow {
    /// Zeroes `slot` word by word (volatile, so the stores are not merged back into a memset).
    #[inline(always)]
    pub fn init(slot: &mut MaybeUninit<Flow>, obs: u8) -> &mut Flow {
        let p = slot.as_mut_ptr().cast::<u64>();
        let mut i = 0;
        while i < size_of::<Flow>() / 8 {
            // SAFETY: within `slot`, 8-aligned (Flow is align(8)).
            unsafe { core::ptr::write_volatile(p.add(i), 0) };
            i += 1;
        }
        // SAFETY: all bytes written; every bit pattern is a valid Flow.
        let f = unsafe { slot.assume_init_mut() };
        f.key.obs = obs;
        f
    }
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    ver_tc: u8,
    tc_flow: [u8; 3],
    payload_len: [u8; 2],
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// First 4 bytes of an IPv6 extension header (the fragment header's offset is in bytes 2..4).
#[repr(C)]
struct ExtHdr {
    nexthdr: u8,
    len: u8,
    frag_off: [u8; 2],
}

/// The first 14 bytes of a TCP header: ports, seq, ack, data offset, flags.
#[repr(C)]
struct TcpHdr {
    ports: [u8; 4],
    seq: [u8; 4],
    ack: [u8; 4],
    doff: u8,
    flags: u8,
}

/// `dst.copy_from_slice(src)` as an explicit non-overlapping copy: LLVM cannot always tell that the
/// header (packet or stack buffer) and the key do not overlap and would emit a memmove, which
/// bpf-linker leaves as a call to a byte loop; memcpy is expanded inline.
#[inline(always)]
fn copy(dst: &mut [u8], src: &[u8]) {
    let n = if dst.len() < src.len() {
        dst.len()
    } else {
        src.len()
    };
    // SAFETY: distinct borrows, n within both.
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), n) };
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Ethernet, up to two VLAN tags, then IPv4/IPv6.
#[inline(always)]
pub fn parse_l2(p: &Pkt, f: &mut Flow) -> Result<(), KernelCounter> {
    let mut b = MaybeUninit::<[u8; 2]>::uninit();
    let mut proto = be16(*p.hdr(12, &mut b).ok_or(KernelCounter::NotIp)?);
    let mut off = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(*p.hdr(ETH_HLEN + 2, &mut b).ok_or(KernelCounter::NotIp)?);
        off = ETH_HLEN + 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = be16(*p.hdr(ETH_HLEN + 6, &mut b).ok_or(KernelCounter::NotIp)?);
            off = ETH_HLEN + 8;
        }
    }
    match proto {
        ETH_P_IP => parse_ipv4(p, off, f),
        ETH_P_IPV6 => parse_ipv6(p, off, f),
        _ => Err(KernelCounter::NotIp),
    }
}

/// Raw IP (no link-layer header): the family comes from the version nibble.
///
/// Every packet of an L3 tunnel device is IP, so a bad version nibble is a malformed IP packet.
#[inline(always)]
pub fn parse_l3(p: &Pkt, f: &mut Flow) -> Result<(), KernelCounter> {
    // Two bytes, not one: LLVM turns a 1-byte check into `data < data_end`, which gives the
    // verifier no packet range. Nothing shorter than 2 bytes is an IP packet anyway.
    let mut b = MaybeUninit::<[u8; 2]>::uninit();
    let v = p.hdr(0, &mut b).ok_or(KernelCounter::LostIpMalformed)?[0] >> 4;
    if v == 4 {
        parse_ipv4(p, 0, f)
    } else if v == 6 {
        parse_ipv6(p, 0, f)
    } else {
        Err(KernelCounter::LostIpMalformed)
    }
}

#[inline(always)]
fn parse_ipv4(p: &Pkt, l3: usize, f: &mut Flow) -> Result<(), KernelCounter> {
    let mut b = MaybeUninit::<Ipv4Hdr>::uninit();
    let ip = p.hdr(l3, &mut b).ok_or(KernelCounter::LostIpMalformed)?;
    let ver_ihl = ip.ver_ihl;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || !p.has(l3, ihl) {
        return Err(KernelCounter::LostIpMalformed);
    }
    // Bytes are what the frame carries: a length field may claim less (Ethernet padding
    // follows) but never more. A header claiming more is forged or cut: the kernel drops the
    // packet as truncated, and it is malformed IP here, not bytes.
    let tot_len = u32::from(be16(ip.tot_len));
    f.ip_len = if tot_len == 0 && p.is_gso() {
        // BIG TCP: the length is not in the header.
        p.from(l3)
    } else if (tot_len as usize) < ihl || tot_len > p.from(l3) {
        return Err(KernelCounter::LostIpMalformed);
    } else {
        tot_len
    };
    f.key.family = FAMILY_IPV4;
    f.key.src_addr[10] = 0xff;
    f.key.src_addr[11] = 0xff;
    copy(&mut f.key.src_addr[12..16], &ip.saddr);
    f.key.dst_addr[10] = 0xff;
    f.key.dst_addr[11] = 0xff;
    copy(&mut f.key.dst_addr[12..16], &ip.daddr);
    let proto = ip.protocol;
    f.key.protocol = proto;
    if be16(ip.frag_off) & 0x1fff != 0 {
        f.key.key_flags = KEY_F_FRAGMENT;
        f.note = NOTE_FRAGMENT;
        return Ok(());
    }
    parse_l4(p, l3, l3 + ihl, proto, f);
    Ok(())
}

#[inline(always)]
fn is_ext(nh: u8) -> bool {
    matches!(
        nh,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

#[inline(always)]
fn parse_ipv6(p: &Pkt, l3: usize, f: &mut Flow) -> Result<(), KernelCounter> {
    let mut b = MaybeUninit::<Ipv6Hdr>::uninit();
    let ip = p.hdr(l3, &mut b).ok_or(KernelCounter::LostIpMalformed)?;
    if ip.ver_tc >> 4 != 6 {
        return Err(KernelCounter::LostIpMalformed);
    }
    // As for IPv4: never more bytes than the frame carries.
    let plen = u32::from(be16(ip.payload_len));
    let mut nh = ip.nexthdr;
    f.ip_len = if plen == 0 {
        if nh == NEXTHDR_HOP || p.is_gso() {
            // Jumbogram (the length is in a Hop-by-Hop option) / BIG TCP.
            p.from(l3)
        } else {
            // No payload: the kernel trims what follows the header.
            40
        }
    } else if 40 + plen > p.from(l3) {
        return Err(KernelCounter::LostIpMalformed);
    } else {
        40 + plen
    };
    f.key.family = FAMILY_IPV6;
    copy(&mut f.key.src_addr, &ip.saddr);
    copy(&mut f.key.dst_addr, &ip.daddr);

    let mut off = l3 + 40;
    let mut eb = MaybeUninit::<ExtHdr>::uninit();
    for _ in 0..MAX_IPV6_EXT {
        if !is_ext(nh) {
            break;
        }
        let Some(e) = p.hdr(off, &mut eb) else {
            // The chain is cut short: count under the header reached, as a truncated L4.
            f.key.protocol = nh;
            f.key.key_flags = KEY_F_L4_TRUNCATED;
            f.note = NOTE_L4_TRUNCATED;
            return Ok(());
        };
        let next = e.nexthdr;
        if nh == NEXTHDR_FRAGMENT {
            off += 8;
            nh = next;
            if be16(e.frag_off) & 0xfff8 != 0 {
                f.key.protocol = nh;
                f.key.key_flags = KEY_F_FRAGMENT;
                f.note = NOTE_FRAGMENT;
                return Ok(());
            }
        } else if nh == NEXTHDR_AUTH {
            off += (usize::from(e.len) + 2) * 4;
            nh = next;
        } else {
            off += (usize::from(e.len) + 1) * 8;
            nh = next;
        }
    }
    f.key.protocol = nh;
    if is_ext(nh) {
        f.note = NOTE_EXT_CHAIN_TOO_LONG;
        return Ok(());
    }
    parse_l4(p, l3, off, nh, f);
    Ok(())
}

/// Ports (or ICMP type/code) and TCP flags. Never fails: a bad transport header only costs the
/// ports.
#[inline(always)]
fn parse_l4(p: &Pkt, l3: usize, l4: usize, proto: u8, f: &mut Flow) {
    let l3_len = (l4 - l3) as u32;
    if proto == IPPROTO_TCP {
        let mut b = MaybeUninit::<TcpHdr>::uninit();
        let Some(t) = p.hdr(l4, &mut b) else {
            return l4_truncated(f);
        };
        let doff = usize::from(t.doff >> 4) * 4;
        if doff < 20 || !p.has(l4, doff) {
            return l4_truncated(f);
        }
        f.key.src_port = be16([t.ports[0], t.ports[1]]);
        f.key.dst_port = be16([t.ports[2], t.ports[3]]);
        f.tcp_flags = t.flags;
        f.hdr_len = l3_len + doff as u32;
        f.payload_off = (l4 + doff) as u16;
        return;
    }
    let need = match proto {
        IPPROTO_UDP => 8,
        IPPROTO_SCTP => 12,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => 8,
        _ => {
            // Unknown protocol (ESP, GRE, No Next Header ...): ports 0.
            f.hdr_len = l3_len;
            return;
        }
    };
    let mut b = MaybeUninit::<[u8; 4]>::uninit();
    let Some(h) = p.hdr(l4, &mut b) else {
        return l4_truncated(f);
    };
    if !p.has(l4, need) {
        return l4_truncated(f);
    }
    let h = *h;
    if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        f.key.src_port = u16::from(h[0]);
        f.key.dst_port = u16::from(h[1]);
        f.hdr_len = l3_len;
    } else {
        f.key.src_port = be16([h[0], h[1]]);
        f.key.dst_port = be16([h[2], h[3]]);
        f.hdr_len = l3_len + if proto == IPPROTO_UDP { 8 } else { 0 };
        if proto == IPPROTO_UDP {
            f.payload_off = (l4 + 8) as u16;
        }
    }
}

#[inline(always)]
fn l4_truncated(f: &mut Flow) {
    f.key.key_flags = KEY_F_L4_TRUNCATED;
    f.note = NOTE_L4_TRUNCATED;
}
