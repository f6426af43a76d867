//! Flow keys ([`flow_key`], [`mapped`]) and crafted packets ([`pkt`]).
use std::net::IpAddr;

use podflow_ebpf::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, ObsPoint};

/// An address as the flow key holds it: IPv4 as `::ffff:a.b.c.d`.
pub fn mapped(ip: impl Into<IpAddr>) -> [u8; 16] {
    match ip.into() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The flow key of a packet from `src` to `dst` seen at `obs` (family from `src`).
pub fn flow_key(
    obs: ObsPoint,
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    proto: u8,
    sport: u16,
    dport: u16,
    key_flags: u8,
) -> FlowKey {
    let src = src.into();
    FlowKey {
        src_addr: mapped(src),
        dst_addr: mapped(dst),
        src_port: sport,
        dst_port: dport,
        protocol: proto,
        obs: obs as u8,
        family: if src.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        key_flags,
    }
}

/// Plain byte builders for test packets (checksums are left 0 unless a helper says otherwise:
/// the programs do not read them).
pub mod pkt {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_IPV6: u16 = 0x86DD;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88A8;

    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMP: u8 = 1;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const HOP: u8 = 0;
    pub const FRAG: u8 = 44;
    pub const ROUTING: u8 = 43;
    pub const AH: u8 = 51;
    pub const DSTOPTS: u8 = 60;

    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// Ethernet header, VLAN tags (TPIDs, VID 100 + i), ethertype, payload.
    pub fn eth_vlan(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&DST_MAC);
        v.extend_from_slice(&SRC_MAC);
        for (i, tpid) in tpids.iter().enumerate() {
            v.extend_from_slice(&tpid.to_be_bytes());
            v.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        v.extend_from_slice(&ethertype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        eth_vlan(&[], ethertype, payload)
    }

    /// IPv4 header fields the tests vary.
    #[derive(Clone, Copy)]
    pub struct V4 {
        pub src: Ipv4Addr,
        pub dst: Ipv4Addr,
        pub proto: u8,
        pub version: u8,
        pub ihl: u8,
        /// Fragment offset in 8-byte units.
        pub frag_off: u16,
        pub more_frags: bool,
        /// `None`: header + payload length.
        pub tot_len: Option<u16>,
    }

    impl V4 {
        pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> V4 {
            V4 {
                src: Ipv4Addr::from(src),
                dst: Ipv4Addr::from(dst),
                proto,
                version: 4,
                ihl: 5,
                frag_off: 0,
                more_frags: false,
                tot_len: None,
            }
        }

        pub fn build(&self, payload: &[u8]) -> Vec<u8> {
            let hlen = usize::from(self.ihl.max(5)) * 4;
            let tot = self.tot_len.unwrap_or((hlen + payload.len()) as u16);
            let frag = self.frag_off | if self.more_frags { 0x2000 } else { 0 };
            let mut v = vec![(self.version << 4) | self.ihl, 0];
            v.extend_from_slice(&tot.to_be_bytes());
            v.extend_from_slice(&[0x12, 0x34]);
            v.extend_from_slice(&frag.to_be_bytes());
            v.extend_from_slice(&[64, self.proto, 0, 0]);
            v.extend_from_slice(&self.src.octets());
            v.extend_from_slice(&self.dst.octets());
            v.resize(hlen, 0x01); // options: NOPs
            v.extend_from_slice(payload);
            v
        }
    }

    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        V4::new(src, dst, proto).build(payload)
    }

    /// IPv6 header; `payload` includes any extension headers. `plen`: `None` = payload length.
    pub fn ipv6_plen(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next: u8,
        payload: &[u8],
        plen: Option<u16>,
    ) -> Vec<u8> {
        let mut v = vec![0x60, 0, 0, 0];
        v.extend_from_slice(&plen.unwrap_or(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(&[next, 64]);
        v.extend_from_slice(&src.octets());
        v.extend_from_slice(&dst.octets());
        v.extend_from_slice(payload);
        v
    }

    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        ipv6_plen(src, dst, next, payload, None)
    }

    /// Hop-by-Hop / Routing / Destination Options header of `8 * (len + 1)` bytes (PadN filled).
    pub fn ext(next: u8, len: u8) -> Vec<u8> {
        let total = 8 * (usize::from(len) + 1);
        let mut v = vec![next, len, 1, (total - 4) as u8];
        v.resize(total, 0);
        v
    }

    /// IPv6 Fragment header: offset in 8-byte units.
    pub fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let fo = (offset << 3) | u16::from(more);
        let mut v = vec![next, 0];
        v.extend_from_slice(&fo.to_be_bytes());
        v.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
        v
    }

    /// TCP header with data offset `doff` (words) and `payload` bytes of data.
    pub fn tcp_doff(sport: u16, dport: u16, flags: u8, doff: u8, payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&1000_u32.to_be_bytes());
        v.extend_from_slice(&2000_u32.to_be_bytes());
        v.extend_from_slice(&[doff << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        v.resize(usize::from(doff.max(5)) * 4, 0x01);
        v.resize(v.len() + payload, 0xab);
        v
    }

    pub fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
        tcp_doff(sport, dport, flags, 5, payload)
    }

    pub fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.resize(8 + payload, 0xcd);
        v
    }

    pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // vtag, checksum
        v.extend_from_slice(&[1, 0, 0, 20]); // an INIT chunk header, body follows
        v.resize(32, 0);
        v
    }

    /// ICMP/ICMPv6 header (8 bytes) + 16 bytes of data.
    pub fn icmp(ty: u8, code: u8) -> Vec<u8> {
        let mut v = vec![ty, code, 0, 0, 0, 1, 0, 1];
        v.resize(24, 0x55);
        v
    }

    /// Fills in the IPv4 header checksum of `packet` (an IPv4 header first), for packets the
    /// kernel's IP layer will see.
    pub fn with_ipv4_checksum(mut packet: Vec<u8>) -> Vec<u8> {
        let hlen = usize::from(packet[0] & 0x0f) * 4;
        packet[10..12].fill(0);
        let mut sum: u32 = packet[..hlen]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        packet[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        packet
    }
}
