//! TCP handshake latency on the flow records: the time from a connection's SYN to its SYN/ACK.
//!
//! The veth programs put every SYN and SYN/ACK segment in a ring where it is counted
//! ([`podflow_ebpf::TcpEvent`]): the client's SYN at its veth, the SYN/ACK at the client's veth
//! when the server is outside the node, at the server's veth when it is a pod of the node (then
//! the figure leaves out the last veth crossing, microseconds). At the flush, segments are named
//! by the real ends of their connection (the node's translation applied, so a SYN to a ClusterIP
//! pairs with the backend's SYN/ACK), a SYN/ACK is paired with the first SYN of its connection
//! (a retransmitted SYN counts in: the latency the client saw), and the connection's record —
//! the client's, client → server — gets the count, minimum, maximum and last of the handshakes
//! of its interval.
//!
//! Bounded like [`crate::dns`]: at most [`HandshakeConfig::max_pending`] connections waiting for
//! their SYN/ACK (the oldest evicted and counted), forgotten and counted unanswered after
//! [`HandshakeConfig::timeout`]; latencies wait at most two flushes for their record.
use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use podflow_ebpf::{FlowKey, TcpEvent};

use crate::{
    capture::{RingConsumer, RingSource},
    flows::{NoTranslation, Translate, Waiting},
    hash::{FlowHashState, flow_hash_state},
    proto,
};

const ACK: u8 = 0x10;

/// Segments read and not yet handled by a flush, at most (beyond: counted lost).
const MAX_UNHANDLED: usize = 1 << 20;

/// How the tracker is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeConfig {
    pub max_pending: usize,
    pub timeout: Duration,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            max_pending: 131_072,
            // Linux gives up a SYN after ~127 s (6 retries); a minute covers all but the last.
            timeout: Duration::from_secs(60),
        }
    }
}

/// Counters, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    pub syns: u64,
    pub syn_acks: u64,
    /// SYN/ACKs paired with their SYN (the handshakes timed).
    pub matched: u64,
    /// Connections whose SYN got no SYN/ACK within the timeout.
    pub unanswered: u64,
    /// Connections evicted because the table was full.
    pub evicted: u64,
    /// Latencies whose record did not come within two flushes.
    pub unattached: u64,
    /// Segments lost before they were read.
    pub lost: u64,
}

/// A connection by its ends, client first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Conn {
    client: ([u8; 16], u16),
    server: ([u8; 16], u16),
}

/// The handshakes of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rtts {
    count: u32,
    min_ns: u64,
    max_ns: u64,
    last_ns: u64,
}

impl Rtts {
    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        self.last_ns = ns;
    }

    fn merge(&mut self, later: &Rtts) {
        self.count += later.count;
        self.min_ns = self.min_ns.min(later.min_ns);
        self.max_ns = self.max_ns.max(later.max_ns);
        self.last_ns = later.last_ns;
    }

    fn to_proto(self) -> proto::TcpHandshake {
        proto::TcpHandshake {
            count: self.count,
            min: Some(duration(self.min_ns)),
            max: Some(duration(self.max_ns)),
            last: Some(duration(self.last_ns)),
        }
    }
}

fn duration(ns: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: (ns % 1_000_000_000) as i32,
    }
}

/// Connection openings, between the kernel's ring and the records.
#[derive(Debug)]
pub struct HandshakeTracker {
    cfg: HandshakeConfig,
    unhandled: Vec<(FlowKey, u64, u8)>,
    /// Connections waiting for their SYN/ACK: when their first SYN was seen.
    pending: HashMap<Conn, u64, FlowHashState>,
    order: VecDeque<(u64, Conn)>,
    /// Handshake times by the client's flow (real ends), until its record comes.
    waiting: Waiting<Rtts>,
    stats: HandshakeStats,
}

impl HandshakeTracker {
    pub fn new(cfg: HandshakeConfig) -> HandshakeTracker {
        HandshakeTracker {
            cfg,
            unhandled: Vec::new(),
            pending: HashMap::with_hasher(flow_hash_state()),
            order: VecDeque::new(),
            waiting: Waiting::default(),
            stats: HandshakeStats::default(),
        }
    }

    pub fn stats(&self) -> HandshakeStats {
        self.stats
    }

    /// One segment from the kernel.
    pub fn push(&mut self, ev: &TcpEvent) {
        if self.unhandled.len() >= MAX_UNHANDLED {
            self.stats.lost += 1;
            return;
        }
        let mut key = ev.key;
        key.obs = 0;
        key.key_flags = 0;
        self.unhandled.push((key, ev.ts_ns, ev.tcp_flags));
    }

    /// At a flush, before its records: names the segments by their connections' real ends
    /// (`nat`), pairs SYN/ACKs with SYNs, forgets connections older than the timeout.
    pub fn prepare(&mut self, nat: &dyn Translate, now_ns: u64) {
        for (key, ts, flags) in std::mem::take(&mut self.unhandled) {
            let real = nat.translate(&key).map_or(key, |t| t.key);
            let (src, dst) = (
                (real.src_addr, real.src_port),
                (real.dst_addr, real.dst_port),
            );
            if flags & ACK == 0 {
                self.stats.syns += 1;
                let c = Conn {
                    client: src,
                    server: dst,
                };
                if self.pending.contains_key(&c) {
                    // A retransmission: the first SYN is when the client started waiting.
                    continue;
                }
                if self.pending.len() >= self.cfg.max_pending {
                    while let Some((at, old)) = self.order.pop_front() {
                        if self.pending.get(&old) == Some(&at) {
                            self.pending.remove(&old);
                            self.stats.evicted += 1;
                            break;
                        }
                    }
                }
                self.pending.insert(c, ts);
                self.order.push_back((ts, c));
                continue;
            }
            self.stats.syn_acks += 1;
            let c = Conn {
                client: dst,
                server: src,
            };
            let Some(sent) = self.pending.remove(&c) else {
                continue;
            };
            self.stats.matched += 1;
            let mut client_key = real;
            client_key.src_addr = real.dst_addr;
            client_key.src_port = real.dst_port;
            client_key.dst_addr = real.src_addr;
            client_key.dst_port = real.src_port;
            let ns = ts.saturating_sub(sent);
            self.waiting
                .entry(&client_key, &NoTranslation, || Rtts {
                    count: 0,
                    min_ns: u64::MAX,
                    max_ns: 0,
                    last_ns: 0,
                })
                .add(ns);
        }
        let timeout = u64::try_from(self.cfg.timeout.as_nanos()).unwrap_or(u64::MAX);
        while let Some(&(at, c)) = self.order.front() {
            if now_ns.saturating_sub(at) < timeout {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&c) == Some(&at) {
                self.pending.remove(&c);
                self.stats.unanswered += 1;
            }
        }
        // Answered connections leave stale entries in `order`: keep it from growing without
        // bound on a node whose handshakes all complete.
        if self.order.len() > 4 * self.pending.len().max(1024) {
            let pending = &self.pending;
            self.order.retain(|(at, c)| pending.get(c) == Some(at));
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_idle()
    }

    /// Puts the handshakes of `record`'s connection on it (the client's record).
    pub fn attach(&mut self, record: &mut proto::Flow) {
        if let Some(r) = self
            .waiting
            .take(record, |earlier, later| earlier.merge(&later))
        {
            record.tcp_handshake = Some(r.to_proto());
        }
    }

    /// After a flush's records.
    pub fn end_flush(&mut self) {
        let mut unattached = 0;
        self.waiting.end_flush(|_| unattached += 1);
        self.stats.unattached += unattached;
    }
}

/// The kernel's SYN ring and the tracker, as the agent's loop drives them.
pub type HandshakeSource = RingSource<TcpEvent, HandshakeTracker>;

impl RingConsumer<TcpEvent> for HandshakeTracker {
    const WHAT: &'static str = "tcp handshakes";

    fn push(&mut self, ev: &TcpEvent) {
        HandshakeTracker::push(self, ev);
    }

    fn lost(&mut self, n: u64) {
        self.stats.lost += n;
    }
}

#[cfg(test)]
mod tests {
    use podflow_ebpf::{FAMILY_IPV4, IPPROTO_TCP, ipv4_mapped};

    use super::*;
    use crate::flows::NoTranslation;

    const SYN: u8 = 0x02;
    const C: [u8; 4] = [10, 44, 0, 2];
    const S: [u8; 4] = [10, 44, 0, 9];

    fn seg(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ts: u64, flags: u8) -> TcpEvent {
        TcpEvent {
            key: FlowKey {
                src_addr: ipv4_mapped(src),
                dst_addr: ipv4_mapped(dst),
                src_port: sport,
                dst_port: dport,
                protocol: IPPROTO_TCP,
                family: FAMILY_IPV4,
                obs: 1,
                ..FlowKey::default()
            },
            ts_ns: ts,
            ifindex: 2,
            tcp_flags: flags,
            _pad: [0; 3],
        }
    }

    fn record(src: [u8; 4], sport: u32, dst: [u8; 4], dport: u32) -> proto::Flow {
        proto::Flow {
            src_ip: src.to_vec(),
            dst_ip: dst.to_vec(),
            src_port: sport,
            dst_port: dport,
            protocol: u32::from(IPPROTO_TCP),
            ..Default::default()
        }
    }

    #[test]
    fn a_syn_ack_times_the_first_syn_of_its_connection_on_the_clients_record() {
        let mut t = HandshakeTracker::new(HandshakeConfig::default());
        // Two connections; the first SYN is retransmitted.
        t.push(&seg(C, 40000, S, 80, 1_000_000, SYN));
        t.push(&seg(C, 40000, S, 80, 1_001_000_000, SYN));
        t.push(&seg(S, 80, C, 40000, 1_001_500_000, SYN | ACK));
        t.push(&seg(C, 40001, S, 80, 2_000_000_000, SYN));
        t.push(&seg(S, 80, C, 40001, 2_000_300_000, SYN | ACK));
        // A SYN/ACK without a SYN seen (the agent started in between): not timed.
        t.push(&seg(S, 80, C, 40002, 2_100_000_000, SYN | ACK));
        t.prepare(&NoTranslation, 2_200_000_000);
        let mut first = record(C, 40000, S, 80);
        t.attach(&mut first);
        let h = first.tcp_handshake.expect("timed");
        assert_eq!(h.count, 1);
        assert_eq!(h.last, Some(duration(1_000_500_000)));
        let mut second = record(C, 40001, S, 80);
        t.attach(&mut second);
        assert_eq!(second.tcp_handshake.unwrap().last, Some(duration(300_000)));
        // The server's record gets nothing.
        let mut reply = record(S, 80, C, 40001);
        t.attach(&mut reply);
        assert!(reply.tcp_handshake.is_none());
        let s = t.stats();
        assert_eq!((s.syns, s.syn_acks, s.matched), (3, 3, 2));
        t.end_flush();
        t.end_flush();
        assert_eq!(t.stats().unattached, 0);
    }

    #[test]
    fn several_handshakes_on_one_record_and_bounds() {
        let mut t = HandshakeTracker::new(HandshakeConfig {
            max_pending: 1,
            timeout: Duration::from_secs(1),
        });
        // The same ports reused twice in one interval: count 2, min and max.
        t.push(&seg(C, 40000, S, 80, 0, SYN));
        t.push(&seg(S, 80, C, 40000, 500, SYN | ACK));
        t.push(&seg(C, 40000, S, 80, 1_000, SYN));
        t.push(&seg(S, 80, C, 40000, 3_000, SYN | ACK));
        // Two waiting at once with room for one: the older is evicted.
        t.push(&seg(C, 40005, S, 80, 4_000, SYN));
        t.push(&seg(C, 40006, S, 80, 5_000, SYN));
        t.prepare(&NoTranslation, 6_000);
        let mut r = record(C, 40000, S, 80);
        t.attach(&mut r);
        let h = r.tcp_handshake.unwrap();
        assert_eq!(
            (h.count, h.min, h.max),
            (2, Some(duration(500)), Some(duration(2_000)))
        );
        assert_eq!(t.stats().evicted, 1);
        // The other never answered: forgotten after the timeout.
        t.prepare(&NoTranslation, 2_000_000_000);
        assert_eq!(t.stats().unanswered, 1);
        // Latencies left without a record are counted after two flushes.
        t.push(&seg(C, 40009, S, 80, 2_000_000_001, SYN));
        t.push(&seg(S, 80, C, 40009, 2_000_000_002, SYN | ACK));
        t.prepare(&NoTranslation, 2_000_000_003);
        t.end_flush();
        t.end_flush();
        assert_eq!(t.stats().unattached, 1);
    }
}
