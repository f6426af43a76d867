//! DNS reading (well-formed and hostile messages) and the tracker (pairing, bounds, attaching).
use podflow_ebpf::{FAMILY_IPV4, IPPROTO_UDP, ipv4_mapped};

use super::*;
use crate::flows::NoTranslation;

/// A message: header (id, flags, qdcount 1, ancount) then `question` as given.
fn message(id: u16, flags: u16, ancount: u16, question: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(id.to_be_bytes());
    m.extend(flags.to_be_bytes());
    m.extend(1u16.to_be_bytes());
    m.extend(ancount.to_be_bytes());
    m.extend([0, 0, 0, 0]);
    m.extend(question);
    m
}

/// A name in wire form, then type and class IN.
fn question(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.push(0);
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    q
}

#[test]
fn queries_and_responses() {
    let q = parse(
        &message(0x1234, 0x0100, 0, &question("www.example.com", 1)),
        false,
        false,
    );
    assert_eq!(
        (
            q.id,
            q.response,
            q.qname.as_str(),
            q.qtype,
            q.qtype_name.as_str()
        ),
        (0x1234, false, "www.example.com", 1, "A")
    );
    assert!(!q.malformed && !q.qname_truncated && q.rcode_name.is_empty());
    // NXDOMAIN for AAAA, over TCP.
    let r = parse(
        &message(7, 0x8183, 0, &question("nope.test", 28)),
        false,
        true,
    );
    assert!(r.response && r.tcp && !r.malformed);
    assert_eq!(
        (r.rcode, r.rcode_name.as_str(), r.qtype_name.as_str()),
        (3, "NXDOMAIN", "AAAA")
    );
    // NOERROR with two answers (the answers' bytes are not read).
    let mut m = message(8, 0x8180, 2, &question("a.b", 1));
    m.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
    let r = parse(&m, false, false);
    assert_eq!(
        (r.rcode_name.as_str(), r.answers, r.qname.as_str()),
        ("NOERROR", 2, "a.b")
    );
    // The root, a type without a name, odd bytes escaped.
    let r = parse(&message(9, 0, 0, &[0, 0, 99, 0, 1]), false, false);
    assert_eq!(
        (r.qname.as_str(), r.qtype, r.qtype_name.as_str()),
        ("", 99, "")
    );
    let r = parse(
        &message(9, 0, 0, &[3, b'a', b'.', 0xff, 0, 0, 1, 0, 1]),
        false,
        false,
    );
    assert_eq!(r.qname, "a\\046\\255");
    // No question at all.
    let mut m = message(5, 0x8180, 0, &[]);
    m[5] = 0;
    assert!(!parse(&m, false, false).malformed);
}

#[test]
fn hostile_messages_are_malformed_never_trusted() {
    let malformed = |b: &[u8]| {
        let m = parse(b, false, false);
        assert!(m.malformed, "{b:?} read as {m:?}");
        assert!(m.qname.is_empty() && m.qtype == 0 && m.answers == 0);
    };
    // Shorter than a header.
    malformed(&[0x12, 0x34, 0x01]);
    // A label longer than the message.
    malformed(&message(1, 0, 0, &[20, b'a', b'b']));
    // No type after the name.
    malformed(&message(1, 0, 0, &[1, b'a', 0, 0]));
    // A pointer to itself, a pointer forward, a loop of two pointers.
    malformed(&message(1, 0, 0, &[0xc0, 12]));
    malformed(&message(1, 0, 0, &[0xc0, 40, 0, 1, 0, 1]));
    let mut m = message(1, 0, 0, &[1, b'a', 0xc0, 14]);
    m.extend([0, 1, 0, 1]);
    malformed(&m);
    // Reserved label types (0x40, 0x80).
    malformed(&message(1, 0, 0, &[0x41, b'a', 0, 0, 1, 0, 1]));
    malformed(&message(1, 0, 0, &[0x81, b'a', 0, 0, 1, 0, 1]));
    // A name longer than 255 bytes.
    let long: String = ["abcdefghij"; 30].join(".");
    malformed(&message(1, 0, 0, &question(&long, 1)));
    // Compressed names are followed backwards: a response whose question points at a name
    // earlier in the message (unusual but legal) reads.
    let mut m = message(2, 0x8180, 0, &[]);
    m.extend(question("x.example", 1));
    let name_at = 12;
    let mut q2 = vec![0xc0, name_at as u8];
    q2.extend([0, 28, 0, 1]);
    m.extend(&q2);
    assert_eq!(parse(&m, false, false).qname, "x.example");
}

#[test]
fn a_long_name_cut_by_the_copy_is_truncated_not_malformed() {
    let name: String = ["abcdefghijklmnopqrstuvwx"; 10].join(".");
    let mut m = message(3, 0x0100, 0, &question(&name, 1));
    m.truncate(DNS_MSG_BYTES);
    let q = parse(&m, true, false);
    assert!(q.qname_truncated && !q.malformed, "{q:?}");
    assert!(name.starts_with(&q.qname) && q.qname.len() > 200);
    // The same bytes, not cut by the copy (the packet itself ends there): malformed.
    assert!(parse(&m, false, false).malformed);
}

fn event(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ts: u64, msg: &[u8]) -> DnsEvent {
    let mut ev = DnsEvent {
        key: FlowKey {
            src_addr: ipv4_mapped(src),
            dst_addr: ipv4_mapped(dst),
            src_port: sport,
            dst_port: dport,
            protocol: IPPROTO_UDP,
            family: FAMILY_IPV4,
            obs: 1,
            ..FlowKey::default()
        },
        ts_ns: ts,
        ifindex: 3,
        len: msg.len() as u16,
        flags: 0,
        msg: [0; DNS_MSG_BYTES],
    };
    ev.msg[..msg.len()].copy_from_slice(msg);
    ev
}

fn record(src: [u8; 4], sport: u32, dst: [u8; 4], dport: u32) -> proto::Flow {
    proto::Flow {
        src_ip: src.to_vec(),
        dst_ip: dst.to_vec(),
        src_port: sport,
        dst_port: dport,
        protocol: u32::from(IPPROTO_UDP),
        ..Default::default()
    }
}

const C: [u8; 4] = [10, 44, 0, 2];
const S: [u8; 4] = [10, 44, 0, 9];

#[test]
fn responses_pair_with_their_query_and_go_on_the_servers_record() {
    let mut t = DnsTracker::new(DnsConfig::default());
    t.push(&event(
        C,
        40000,
        S,
        53,
        1_000,
        &message(77, 0x0100, 0, &question("db.shop.svc", 1)),
    ));
    t.push(&event(
        S,
        53,
        C,
        40000,
        2_501_000,
        &message(77, 0x8180, 1, &question("db.shop.svc", 1)),
    ));
    // Another client's response with the same id: not this query's.
    t.push(&event(
        S,
        53,
        [10, 44, 0, 3],
        40000,
        3_000_000,
        &message(77, 0x8183, 0, &question("x", 1)),
    ));
    t.prepare(&NoTranslation, 10_000_000);
    let mut query = record(C, 40000, S, 53);
    let mut response = record(S, 53, C, 40000);
    t.attach(&mut query);
    t.attach(&mut response);
    assert_eq!(query.dns.len(), 1);
    assert!(!query.dns[0].response && query.dns[0].latency.is_none());
    assert_eq!(response.dns.len(), 1);
    let r = &response.dns[0];
    assert_eq!(
        (r.qname.as_str(), r.answers, r.rcode_name.as_str()),
        ("db.shop.svc", 1, "NOERROR")
    );
    assert_eq!(
        r.latency,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 2_500_000
        })
    );
    let s = t.stats();
    assert_eq!(
        (s.messages, s.queries, s.responses, s.matched),
        (3, 1, 2, 1)
    );
    // Attached once: a second record of the flow gets nothing.
    let mut again = record(C, 40000, S, 53);
    t.attach(&mut again);
    assert!(again.dns.is_empty());
    // The other client's response waited two flushes for a record: counted, dropped.
    t.end_flush();
    assert_eq!(t.stats().unattached, 0);
    t.end_flush();
    assert_eq!(t.stats().unattached, 1);
    assert!(t.is_idle());
}

#[test]
fn outstanding_queries_are_bounded_and_time_out() {
    let mut t = DnsTracker::new(DnsConfig {
        max_pending: 2,
        timeout: Duration::from_secs(10),
    });
    for (i, port) in [40001u16, 40002, 40003].into_iter().enumerate() {
        t.push(&event(
            C,
            port,
            S,
            53,
            i as u64,
            &message(1, 0x0100, 0, &question("a", 1)),
        ));
    }
    t.prepare(&NoTranslation, 10);
    assert_eq!(t.stats().pending_evicted, 1);
    // The first was evicted: its response has no latency; the third's has.
    t.push(&event(
        S,
        53,
        C,
        40001,
        100,
        &message(1, 0x8180, 0, &question("a", 1)),
    ));
    t.push(&event(
        S,
        53,
        C,
        40003,
        100,
        &message(1, 0x8180, 0, &question("a", 1)),
    ));
    t.prepare(&NoTranslation, 200);
    let (mut r1, mut r3) = (record(S, 53, C, 40001), record(S, 53, C, 40003));
    t.attach(&mut r1);
    t.attach(&mut r3);
    assert!(r1.dns[0].latency.is_none() && r3.dns[0].latency.is_some());
    // The second is never answered: forgotten after the timeout.
    t.prepare(&NoTranslation, 10_000_000_002);
    assert_eq!(t.stats().unanswered, 1);
    assert!(t.pending.is_empty());
}

#[test]
fn at_most_sixteen_messages_per_record() {
    let mut t = DnsTracker::new(DnsConfig::default());
    for id in 0..20 {
        t.push(&event(
            C,
            40000,
            S,
            53,
            1,
            &message(id, 0x0100, 0, &question("a", 1)),
        ));
    }
    t.prepare(&NoTranslation, 2);
    let mut r = record(C, 40000, S, 53);
    t.attach(&mut r);
    assert_eq!(r.dns.len(), MAX_PER_RECORD);
    assert_eq!(t.stats().dropped_per_record, 4);
}
