//! ctnetlink messages: the conntrack entries the kernel announces (`IPCTNL_MSG_CT_NEW` /
//! `IPCTNL_MSG_CT_DELETE` events) or dumps, parsed without allocating, and the dump request.
//!
//! Layout (uapi `linux/netfilter/nfnetlink_conntrack.h`): `nlmsghdr`, `nfgenmsg`, then attributes;
//! `CTA_TUPLE_ORIG` and `CTA_TUPLE_REPLY` nest `CTA_TUPLE_IP` (addresses) and `CTA_TUPLE_PROTO`
//! (protocol, ports, or ICMP type and code); `CTA_STATUS` and `CTA_ID` are big-endian `u32`s.
use podflow_ebpf::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6};

/// `NETLINK_NETFILTER`.
pub(super) const NETLINK_NETFILTER: isize = 12;
/// Multicast groups (`enum nfnetlink_groups`).
pub(super) const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub(super) const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// `NFNL_SUBSYS_CTNETLINK` and its message types.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// `nlmsghdr` types of the netlink core.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// Header sizes: `nlmsghdr` then `nfgenmsg`; the attributes start after both.
const NLMSG_HDR: usize = 16;
pub(super) const ATTRS_AT: usize = NLMSG_HDR + 4;
/// `enum ctattr_type`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
pub(super) const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
/// `enum ctattr_tuple`, `ctattr_ip`, `ctattr_l4proto`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
/// `enum ip_conntrack_status`: the source / destination was translated.
pub(super) const IPS_SRC_NAT: u32 = 1 << 4;
pub(super) const IPS_DST_NAT: u32 = 1 << 5;
/// The attribute type bits of `nla_type` (without `NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What a message says about a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Created (a `NEW` event) or listed (a dump).
    Present,
    /// Destroyed (a `DESTROY` event).
    Destroyed,
}

/// A conntrack entry as the kernel reported it: both directions' tuples as flow keys (IPv4
/// addresses IPv4-mapped; ICMP: the type and code in the ports, as the programs key them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub kind: Kind,
    /// The kernel's id of the entry (`CTA_ID`), 0 if absent.
    pub id: u32,
    /// `IPS_*` status bits.
    pub status: u32,
    /// The original direction, as the client's packets left it (before any NAT).
    pub orig: FlowKey,
    /// The reply direction, as the reply leaves the backend (before the reverse NAT).
    pub reply: FlowKey,
}

impl Conn {
    /// The node translated the destination or the source.
    pub fn is_nat(&self) -> bool {
        self.status & (IPS_SRC_NAT | IPS_DST_NAT) != 0
    }
}

/// One netlink message of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Conn(Conn),
    /// A ctnetlink message that is not about an entry, or an entry that could not be read (the
    /// reason, for the log).
    Skipped(&'static str),
    /// The end of a dump.
    Done,
    /// An error reply (`-errno`; 0 is an acknowledgement).
    Error(i32),
}

/// Splits a datagram into messages. A truncated or malformed message ends the datagram (its
/// length cannot be trusted) as a [`Message::Skipped`].
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Message> + '_ {
    answers(buf).map(|(_, m)| m)
}

/// [`messages`] with each message's sequence number (0 for a malformed one).
pub fn answers(mut buf: &[u8]) -> impl Iterator<Item = (u32, Message)> + '_ {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDR {
            return None;
        }
        let len = u32_ne(buf, 0) as usize;
        if len < NLMSG_HDR || len > buf.len() {
            buf = &[];
            return Some((0, Message::Skipped("bad netlink message length")));
        }
        let msg = &buf[..len];
        // Messages are 4-byte aligned within a datagram.
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some((u32_ne(msg, 8), parse(msg)))
    })
}

fn parse(msg: &[u8]) -> Message {
    let ty = u16_ne(msg, 4);
    match ty {
        NLMSG_DONE => return Message::Done,
        NLMSG_ERROR => {
            let errno = msg
                .get(16..20)
                .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            return Message::Error(errno);
        }
        _ => {}
    }
    if ty >> 8 != NFNL_SUBSYS_CTNETLINK {
        return Message::Skipped("not a ctnetlink message");
    }
    let kind = match ty & 0xff {
        IPCTNL_MSG_CT_NEW => Kind::Present,
        IPCTNL_MSG_CT_DELETE => Kind::Destroyed,
        _ => return Message::Skipped("not a conntrack entry message"),
    };
    let Some(family) = msg.get(NLMSG_HDR).copied() else {
        return Message::Skipped("no nfgenmsg");
    };
    let family = match i32::from(family) {
        libc::AF_INET => FAMILY_IPV4,
        libc::AF_INET6 => FAMILY_IPV6,
        _ => return Message::Skipped("not an IP conntrack entry"),
    };
    let mut conn = Conn {
        kind,
        id: 0,
        status: 0,
        orig: FlowKey::default(),
        reply: FlowKey::default(),
    };
    let (mut orig, mut reply) = (false, false);
    for (ty, value) in attrs(msg.get(ATTRS_AT..).unwrap_or(&[])) {
        match ty {
            CTA_TUPLE_ORIG => orig = tuple(value, family, &mut conn.orig),
            CTA_TUPLE_REPLY => reply = tuple(value, family, &mut conn.reply),
            CTA_STATUS if value.len() >= 4 => conn.status = u32_be(value, 0),
            CTA_ID if value.len() >= 4 => conn.id = u32_be(value, 0),
            _ => {}
        }
    }
    if !(orig && reply) {
        return Message::Skipped("conntrack entry without both tuples");
    }
    Message::Conn(conn)
}

/// Reads a `CTA_TUPLE_*` nest into `key`; whether it had addresses and a protocol.
fn tuple(nest: &[u8], family: u8, key: &mut FlowKey) -> bool {
    key.family = family;
    let (mut ip, mut proto) = (0u8, false);
    for (ty, value) in attrs(nest) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, v) in attrs(value) {
                    match (ty, v.len()) {
                        (CTA_IP_V4_SRC, 4) => {
                            key.src_addr = mapped4(v);
                            ip |= 1;
                        }
                        (CTA_IP_V4_DST, 4) => {
                            key.dst_addr = mapped4(v);
                            ip |= 2;
                        }
                        (CTA_IP_V6_SRC, 16) => {
                            key.src_addr.copy_from_slice(v);
                            ip |= 1;
                        }
                        (CTA_IP_V6_DST, 16) => {
                            key.dst_addr.copy_from_slice(v);
                            ip |= 2;
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, v) in attrs(value) {
                    match (ty, v.len()) {
                        (CTA_PROTO_NUM, 1..) => {
                            key.protocol = v[0];
                            proto = true;
                        }
                        (CTA_PROTO_SRC_PORT, 2..) => key.src_port = u16_be(v),
                        (CTA_PROTO_DST_PORT, 2..) => key.dst_port = u16_be(v),
                        // ICMP: the programs key type and code as the ports.
                        (CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE, 1..) => {
                            key.src_port = u16::from(v[0]);
                        }
                        (CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE, 1..) => {
                            key.dst_port = u16::from(v[0]);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    ip == 3 && proto
}

/// The attributes of a nest (or a message's attribute area): `(type, payload)`, stopping at the
/// first malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16_ne(buf, 0));
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let item = (u16_ne(buf, 2) & NLA_TYPE_MASK, &buf[4..len]);
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some(item)
    })
}

/// A dump request for every IPv4 and IPv6 entry (`IPCTNL_MSG_CT_GET`, `NLM_F_DUMP`).
pub fn dump_request(seq: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..4].copy_from_slice(&20u32.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (every family), version 0, res_id 0.
    m
}

/// An attribute: length, type, payload, padded to 4 bytes.
fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(align4(4 + payload.len()));
    v.extend_from_slice(&u16::try_from(4 + payload.len()).unwrap_or(0).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize(align4(v.len()), 0);
    v
}

/// A nested attribute (`NLA_F_NESTED`).
fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    attr(ty | 0x8000, &parts.concat())
}

/// Appends to `out` a request for the entry whose original tuple is `key` (`IPCTNL_MSG_CT_GET`
/// without `NLM_F_DUMP`: the kernel answers with the entry, or an error such as `ENOENT`). TCP,
/// UDP and the like: ports in `key`'s ports.
pub fn get_request(out: &mut Vec<u8>, seq: u32, key: &FlowKey) {
    let ip = if key.family == FAMILY_IPV4 {
        nested(
            CTA_TUPLE_IP,
            &[
                attr(CTA_IP_V4_SRC, &key.src_addr[12..]),
                attr(CTA_IP_V4_DST, &key.dst_addr[12..]),
            ],
        )
    } else {
        nested(
            CTA_TUPLE_IP,
            &[
                attr(CTA_IP_V6_SRC, &key.src_addr),
                attr(CTA_IP_V6_DST, &key.dst_addr),
            ],
        )
    };
    let proto = nested(
        CTA_TUPLE_PROTO,
        &[
            attr(CTA_PROTO_NUM, &[key.protocol]),
            attr(CTA_PROTO_SRC_PORT, &key.src_port.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &key.dst_port.to_be_bytes()),
        ],
    );
    let body = nested(CTA_TUPLE_ORIG, &[ip, proto]);
    let len = u32::try_from(ATTRS_AT + body.len()).unwrap_or(0);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    let family = if key.family == FAMILY_IPV4 {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    out.extend_from_slice(&[family as u8, 0, 0, 0]);
    out.extend_from_slice(&body);
}

/// The reverse of a flow key: the packets of the other direction, as they would be keyed (ICMP:
/// the reply's type for the request's, and back).
pub fn reversed(k: &FlowKey) -> FlowKey {
    let mut r = *k;
    r.src_addr = k.dst_addr;
    r.dst_addr = k.src_addr;
    if matches!(k.protocol, IPPROTO_ICMP | IPPROTO_ICMPV6) {
        r.src_port = icmp_reply_type(k.protocol, k.src_port);
    } else {
        r.src_port = k.dst_port;
        r.dst_port = k.src_port;
    }
    r
}

/// The type of the answer to an ICMP(v6) query type, and back (echo, timestamp, information,
/// address mask; ICMPv6 echo); other types are kept.
pub(super) fn icmp_reply_type(protocol: u8, ty: u16) -> u16 {
    let pairs: &[(u16, u16)] = if protocol == IPPROTO_ICMP {
        &[(8, 0), (13, 14), (15, 16), (17, 18)]
    } else {
        &[(128, 129)]
    };
    pairs
        .iter()
        .find_map(|&(q, a)| {
            if ty == q {
                Some(a)
            } else if ty == a {
                Some(q)
            } else {
                None
            }
        })
        .unwrap_or(ty)
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn mapped4(v: &[u8]) -> [u8; 16] {
    podflow_ebpf::ipv4_mapped([v[0], v[1], v[2], v[3]])
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u16_be(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u32_be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
pub(crate) mod tests {
    use podflow_ebpf::{IPPROTO_TCP, IPPROTO_UDP};

    use super::*;

    /// A ctnetlink message as the kernel builds one: IPv4 tuples `orig` and `reply` as
    /// `(src, dst, sport, dport)`.
    pub(crate) fn message(
        ty: u16,
        protocol: u8,
        orig: ([u8; 4], [u8; 4], u16, u16),
        reply: ([u8; 4], [u8; 4], u16, u16),
        status: u32,
    ) -> Vec<u8> {
        let tuple = |ty: u16, t: ([u8; 4], [u8; 4], u16, u16)| {
            nested(
                ty,
                &[
                    nested(
                        CTA_TUPLE_IP,
                        &[attr(CTA_IP_V4_SRC, &t.0), attr(CTA_IP_V4_DST, &t.1)],
                    ),
                    nested(
                        CTA_TUPLE_PROTO,
                        &[
                            attr(CTA_PROTO_NUM, &[protocol]),
                            attr(CTA_PROTO_SRC_PORT, &t.2.to_be_bytes()),
                            attr(CTA_PROTO_DST_PORT, &t.3.to_be_bytes()),
                        ],
                    ),
                ],
            )
        };
        let body = [
            tuple(CTA_TUPLE_ORIG, orig),
            tuple(CTA_TUPLE_REPLY, reply),
            attr(CTA_STATUS, &status.to_be_bytes()),
            attr(CTA_ID, &7u32.to_be_bytes()),
        ]
        .concat();
        let mut m = Vec::new();
        let len = u32::try_from(20 + body.len()).unwrap_or(0);
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
        // flags, seq, pid
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 0, 0, 0]); // AF_INET
        m.extend_from_slice(&body);
        m
    }

    const C: [u8; 4] = [10, 44, 0, 2];
    const VIP: [u8; 4] = [10, 96, 0, 10];
    const B: [u8; 4] = [10, 44, 0, 3];

    #[test]
    fn parses_a_dnat_event() {
        let m = message(
            IPCTNL_MSG_CT_NEW,
            IPPROTO_UDP,
            (C, VIP, 40000, 80),
            (B, C, 8080, 40000),
            IPS_DST_NAT | 0x188,
        );
        let got: Vec<Message> = messages(&m).collect();
        let [Message::Conn(c)] = got.as_slice() else {
            panic!("{got:?}");
        };
        assert_eq!((c.kind, c.id, c.is_nat()), (Kind::Present, 7, true));
        assert_eq!(c.orig.dst_addr, podflow_ebpf::ipv4_mapped(VIP));
        assert_eq!((c.orig.src_port, c.orig.dst_port), (40000, 80));
        assert_eq!(c.reply.src_addr, podflow_ebpf::ipv4_mapped(B));
        assert_eq!((c.reply.src_port, c.reply.protocol), (8080, IPPROTO_UDP));
        assert_eq!(c.orig.family, FAMILY_IPV4);
    }

    #[test]
    fn several_messages_and_malformed_ones() {
        let a = message(
            IPCTNL_MSG_CT_DELETE,
            IPPROTO_TCP,
            (C, VIP, 1, 80),
            (B, C, 8080, 1),
            0,
        );
        let mut two = a.clone();
        two.extend_from_slice(&a);
        let kinds: Vec<Kind> = messages(&two)
            .filter_map(|m| match m {
                Message::Conn(c) => Some(c.kind),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, [Kind::Destroyed, Kind::Destroyed]);
        // A length past the end, truncated attributes, a missing tuple: skipped, no panic.
        let mut bad = a.clone();
        bad[0] = 0xff;
        bad[1] = 0xff;
        assert!(matches!(messages(&bad).next(), Some(Message::Skipped(_))));
        for cut in [18, 24, 40, a.len() - 30] {
            let mut t = a[..cut].to_vec();
            let len = u32::try_from(cut).unwrap_or(0);
            t[..4].copy_from_slice(&len.to_ne_bytes());
            assert!(
                matches!(messages(&t).next(), None | Some(Message::Skipped(_))),
                "cut at {cut}"
            );
        }
        // Every byte flipped once: never a panic.
        for i in 0..a.len() {
            let mut f = a.clone();
            f[i] ^= 0xa5;
            let _ = messages(&f).count();
        }
    }

    #[test]
    fn reversing_a_key() {
        let k = FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: 5,
            dst_port: 6,
            protocol: IPPROTO_TCP,
            family: FAMILY_IPV6,
            ..FlowKey::default()
        };
        let r = reversed(&k);
        assert_eq!(
            (r.src_addr, r.dst_addr, r.src_port, r.dst_port),
            ([2; 16], [1; 16], 6, 5)
        );
        assert_eq!(reversed(&r), k);
        let echo = FlowKey {
            protocol: IPPROTO_ICMP,
            src_port: 8,
            dst_port: 0,
            ..k
        };
        assert_eq!((reversed(&echo).src_port, reversed(&echo).dst_port), (0, 0));
        assert_eq!(icmp_reply_type(IPPROTO_ICMPV6, 129), 128);
        assert_eq!(icmp_reply_type(IPPROTO_ICMP, 3), 3);
    }

    #[test]
    fn a_get_request_names_the_original_tuple() {
        let mut out = vec![0xee; 3]; // appended to what is there
        let k = FlowKey {
            src_addr: podflow_ebpf::ipv4_mapped(C),
            dst_addr: podflow_ebpf::ipv4_mapped(VIP),
            src_port: 40000,
            dst_port: 80,
            protocol: IPPROTO_UDP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        get_request(&mut out, 77, &k);
        let m = &out[3..];
        assert_eq!(u32_ne(m, 0) as usize, m.len());
        assert_eq!(u16_ne(m, 4), 0x101, "IPCTNL_MSG_CT_GET");
        assert_eq!(u16_ne(m, 6), 1, "a request, not a dump");
        assert_eq!(u32_ne(m, 8), 77);
        assert_eq!(m[16], 2, "AF_INET");
        // The kernel's answer has the same layout as an event: read the tuple back with the
        // event parser.
        let mut key = FlowKey::default();
        let (ty, nest) = attrs(&m[ATTRS_AT..]).next().unwrap_or((0, &[]));
        assert_eq!(ty, CTA_TUPLE_ORIG);
        assert!(tuple(nest, FAMILY_IPV4, &mut key));
        assert_eq!(key, k);
        let six = FlowKey {
            src_addr: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            dst_addr: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            family: FAMILY_IPV6,
            protocol: IPPROTO_TCP,
            ..k
        };
        out.clear();
        get_request(&mut out, 1, &six);
        assert_eq!(out[16], 10, "AF_INET6");
        let (_, nest) = attrs(&out[ATTRS_AT..]).next().unwrap_or((0, &[]));
        assert!(tuple(nest, FAMILY_IPV6, &mut key));
        assert_eq!(key, six);
    }

    #[test]
    fn the_dump_request() {
        let m = dump_request(9);
        assert_eq!(u32_ne(&m, 0), 20);
        assert_eq!(u16_ne(&m, 4), 0x101);
        assert_eq!(u16_ne(&m, 6), 0x301);
        assert_eq!(u32_ne(&m, 8), 9);
    }
}
