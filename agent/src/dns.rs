//! DNS on the flow records: which pods resolve what, how it went and how long it took.
//!
//! The veth programs copy the first bytes of every DNS message (UDP or TCP, to or from the DNS
//! port) into a ring buffer where its packet is counted ([`podflow_ebpf::DnsEvent`]); nothing is
//! parsed in the kernel. Here each message is read with every length checked ([`parse`]: a name
//! that runs past the bytes, a compression pointer that loops or points forward, a label type
//! that does not exist — the message is marked malformed, never trusted), then, at the flush,
//! named by the real ends of its flow (the node's translation applied, so a query to a ClusterIP
//! and its answer from the backend pod pair up), paired with its query for the latency, and
//! attached to the record of the flow its packet was counted in: queries on the client's record,
//! responses on the server's.
//!
//! State is bounded: outstanding queries at most [`DnsConfig::max_pending`] (the oldest evicted
//! and counted when full, forgotten and counted as unanswered after [`DnsConfig::timeout`]),
//! messages waiting for their record at most two flushes (the packet of a message read at a
//! flush may be in the next drain), at most [`MAX_PER_RECORD`] messages per record.
use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    time::Duration,
};

use podflow_ebpf::{DNS_F_TCP, DNS_MSG_BYTES, DnsEvent, FlowKey};

use crate::{
    capture::{RingConsumer, RingSource},
    flows::{NoTranslation, Translate, Waiting},
    hash::{FlowHashState, flow_hash_state},
    proto,
};

/// Messages attached to one record at most; the others are counted
/// ([`DnsStats::dropped_per_record`]).
pub const MAX_PER_RECORD: usize = 16;

/// Messages read and not yet handled by a flush, at most (beyond: counted as lost; a flush
/// handles them every 5 s by default: 50 000 messages a second).
const MAX_UNHANDLED: usize = 262_144;

/// How the tracker is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsConfig {
    /// Outstanding queries kept for their response's latency.
    pub max_pending: usize,
    /// A query without a response after this long is forgotten (counted unanswered).
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            max_pending: 65_536,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Counters, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Messages read.
    pub messages: u64,
    pub queries: u64,
    pub responses: u64,
    /// Messages that could not be read as DNS.
    pub malformed: u64,
    /// Responses paired with their query (they carry a latency).
    pub matched: u64,
    /// Queries forgotten without a response after the timeout.
    pub unanswered: u64,
    /// Outstanding queries evicted because the table was full.
    pub pending_evicted: u64,
    /// Messages beyond [`MAX_PER_RECORD`] on one record.
    pub dropped_per_record: u64,
    /// Messages whose record did not come within two flushes.
    pub unattached: u64,
    /// Messages lost before they were read (the kernel's ring was full, or too many waited).
    pub lost: u64,
    /// Responses by response code (the header's 4 bits).
    pub rcodes: [u64; 16],
}

/// Who asked whom: the client's and the server's ends, the protocol and the message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PendingKey {
    client: ([u8; 16], u16),
    server: ([u8; 16], u16),
    protocol: u8,
    id: u16,
}

/// A message read, waiting for the flush.
#[derive(Debug)]
struct Unhandled {
    key: FlowKey,
    ts_ns: u64,
    msg: proto::DnsMessage,
}

/// The messages of the flows, between the kernel's ring and the records.
#[derive(Debug)]
pub struct DnsTracker {
    cfg: DnsConfig,
    unhandled: Vec<Unhandled>,
    /// Outstanding queries: when each was seen.
    pending: HashMap<PendingKey, u64, FlowHashState>,
    /// The same, in arrival order (entries already answered are skipped when met).
    order: VecDeque<(u64, PendingKey)>,
    /// Messages by the flow (real ends) whose record they go on (what waits two flushes is
    /// counted unattached).
    waiting: Waiting<Vec<proto::DnsMessage>>,
    stats: DnsStats,
}

impl DnsTracker {
    pub fn new(cfg: DnsConfig) -> DnsTracker {
        DnsTracker {
            cfg,
            unhandled: Vec::new(),
            pending: HashMap::with_hasher(flow_hash_state()),
            order: VecDeque::new(),
            waiting: Waiting::default(),
            stats: DnsStats::default(),
        }
    }

    pub fn stats(&self) -> DnsStats {
        self.stats
    }

    /// Counts messages lost before they were read (the ring's loss count grew by `n`).
    pub fn lost(&mut self, n: u64) {
        self.stats.lost += n;
    }

    /// Reads one message from the kernel (parsed now; named and paired at the flush).
    pub fn push(&mut self, ev: &DnsEvent) {
        if self.unhandled.len() >= MAX_UNHANDLED {
            self.stats.lost += 1;
            return;
        }
        let len = usize::from(ev.len).min(DNS_MSG_BYTES);
        let msg = parse(
            &ev.msg[..len],
            len == DNS_MSG_BYTES,
            ev.flags & DNS_F_TCP != 0,
        );
        self.stats.messages += 1;
        self.stats.malformed += u64::from(msg.malformed);
        let mut key = ev.key;
        key.obs = 0;
        key.key_flags = 0;
        self.unhandled.push(Unhandled {
            key,
            ts_ns: ev.ts_ns,
            msg,
        });
    }

    /// At a flush, before its records are made: names the messages read since the last flush by
    /// the real ends of their flows (`nat`), pairs responses with their queries, and forgets
    /// queries older than the timeout (`now_ns`: `CLOCK_MONOTONIC`, the ring's clock).
    pub fn prepare(&mut self, nat: &dyn Translate, now_ns: u64) {
        let unhandled = std::mem::take(&mut self.unhandled);
        for u in unhandled {
            let key = nat.translate(&u.key).map_or(u.key, |t| t.key);
            let mut msg = u.msg;
            if !msg.malformed {
                self.pair(&key, u.ts_ns, &mut msg);
            }
            self.waiting.entry(&key, &NoTranslation, Vec::new).push(msg);
        }
        let timeout = u64::try_from(self.cfg.timeout.as_nanos()).unwrap_or(u64::MAX);
        while let Some(&(at, k)) = self.order.front() {
            if now_ns.saturating_sub(at) < timeout {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&k) == Some(&at) {
                self.pending.remove(&k);
                self.stats.unanswered += 1;
            }
        }
    }

    /// A query becomes outstanding; a response takes its query's latency.
    fn pair(&mut self, key: &FlowKey, ts_ns: u64, msg: &mut proto::DnsMessage) {
        let id = u16::try_from(msg.id).unwrap_or(0);
        let (src, dst) = ((key.src_addr, key.src_port), (key.dst_addr, key.dst_port));
        if msg.response {
            self.stats.responses += 1;
            if let Some(n) = self.stats.rcodes.get_mut(msg.rcode as usize) {
                *n += 1;
            }
            let k = PendingKey {
                client: dst,
                server: src,
                protocol: key.protocol,
                id,
            };
            if let Some(asked) = self.pending.remove(&k) {
                self.stats.matched += 1;
                let ns = ts_ns.saturating_sub(asked);
                msg.latency = Some(prost_types::Duration {
                    seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
                    nanos: (ns % 1_000_000_000) as i32,
                });
            }
            return;
        }
        self.stats.queries += 1;
        let k = PendingKey {
            client: src,
            server: dst,
            protocol: key.protocol,
            id,
        };
        if !self.pending.contains_key(&k) && self.pending.len() >= self.cfg.max_pending {
            // Evict the oldest still outstanding.
            while let Some((at, old)) = self.order.pop_front() {
                if self.pending.get(&old) == Some(&at) {
                    self.pending.remove(&old);
                    self.stats.pending_evicted += 1;
                    break;
                }
            }
        }
        self.pending.insert(k, ts_ns);
        self.order.push_back((ts_ns, k));
    }

    /// Whether no message waits for a record (then [`DnsTracker::attach`] need not be called).
    pub fn is_idle(&self) -> bool {
        self.waiting.is_idle()
    }

    /// Puts the messages of `record`'s flow on it.
    pub fn attach(&mut self, record: &mut proto::Flow) {
        let mut msgs = self
            .waiting
            .take(record, |earlier, later| earlier.extend(later))
            .unwrap_or_default();
        if msgs.len() > MAX_PER_RECORD {
            self.stats.dropped_per_record += (msgs.len() - MAX_PER_RECORD) as u64;
            msgs.truncate(MAX_PER_RECORD);
        }
        record.dns.extend(msgs);
    }

    /// After a flush's records: what waited two flushes for its record is counted and dropped.
    pub fn end_flush(&mut self) {
        let mut unattached = 0;
        self.waiting.end_flush(|v| unattached += v.len() as u64);
        self.stats.unattached += unattached;
    }
}

/// The kernel's DNS ring and the tracker, as the agent's loop drives them.
pub type DnsSource = RingSource<DnsEvent, DnsTracker>;

impl RingConsumer<DnsEvent> for DnsTracker {
    const WHAT: &'static str = "dns";

    fn push(&mut self, ev: &DnsEvent) {
        DnsTracker::push(self, ev);
    }

    fn lost(&mut self, n: u64) {
        DnsTracker::lost(self, n);
    }
}

/// Why a message is not DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    NameTooLong,
    LabelType,
    Loop,
    PastEnd,
}

/// Reads a message's header and question. `cut`: the bytes are the message's beginning only
/// (the kernel copied at most [`DNS_MSG_BYTES`]), so running out of them truncates the name
/// rather than making the message malformed.
pub fn parse(b: &[u8], cut: bool, tcp: bool) -> proto::DnsMessage {
    let be16 =
        |at: usize| -> Option<u16> { b.get(at..at + 2).map(|x| u16::from_be_bytes([x[0], x[1]])) };
    let mut msg = proto::DnsMessage {
        tcp,
        ..Default::default()
    };
    let (Some(id), Some(flags), Some(qdcount), Some(ancount)) =
        (be16(0), be16(2), be16(4), be16(6))
    else {
        msg.malformed = true;
        return msg;
    };
    msg.id = u32::from(id);
    msg.response = flags & 0x8000 != 0;
    if msg.response {
        msg.rcode = u32::from(flags & 0x000f);
        msg.rcode_name = rcode_name(msg.rcode);
        msg.answers = u32::from(ancount);
    }
    if qdcount == 0 {
        return msg;
    }
    match name(b, 12, cut) {
        Ok((qname, Some(end))) => {
            msg.qname = qname;
            match be16(end) {
                Some(t) => {
                    msg.qtype = u32::from(t);
                    msg.qtype_name = qtype_name(t).unwrap_or_default().to_owned();
                }
                None if cut => {}
                None => msg.malformed = true,
            }
        }
        Ok((qname, None)) => {
            msg.qname = qname;
            msg.qname_truncated = true;
        }
        Err(_) => msg.malformed = true,
    }
    if msg.malformed {
        // Only what the header said.
        msg = proto::DnsMessage {
            id: msg.id,
            response: msg.response,
            tcp,
            malformed: true,
            ..Default::default()
        };
    }
    msg
}

/// The name at `at`: dotted, and where the question goes on (`None`: the bytes ran out and `cut`
/// says the message goes on past them: truncated). Compression pointers are followed only
/// backwards (each jump strictly before the last position: no loop can last) and at most 16
/// times; a name is at most 255 bytes.
fn name(b: &[u8], at: usize, cut: bool) -> Result<(String, Option<usize>), Malformed> {
    let mut out = String::new();
    let (mut pos, mut resume, mut jumps, mut total) = (at, None, 0, 0usize);
    let ran_out = |out: String| {
        if cut {
            Ok((out, None))
        } else {
            Err(Malformed::PastEnd)
        }
    };
    loop {
        let Some(&len) = b.get(pos) else {
            return ran_out(out);
        };
        match len & 0xc0 {
            0x00 if len == 0 => return Ok((out, Some(resume.unwrap_or(pos + 1)))),
            0x00 => {
                let l = usize::from(len);
                total += l + 1;
                if total > 255 {
                    return Err(Malformed::NameTooLong);
                }
                if !out.is_empty() {
                    out.push('.');
                }
                let label = b.get(pos + 1..(pos + 1 + l).min(b.len())).unwrap_or(&[]);
                for &c in label {
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        out.push(char::from(c));
                    } else {
                        let _ = write!(out, "\\{c:03}");
                    }
                }
                if label.len() < l {
                    return ran_out(out);
                }
                pos += 1 + l;
            }
            0xc0 => {
                let Some(&lo) = b.get(pos + 1) else {
                    return ran_out(out);
                };
                let target = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                jumps += 1;
                if target >= pos || jumps > 16 {
                    return Err(Malformed::Loop);
                }
                resume.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(Malformed::LabelType),
        }
    }
}

fn qtype_name(t: u16) -> Option<&'static str> {
    Some(match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        41 => "OPT",
        43 => "DS",
        46 => "RRSIG",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        257 => "CAA",
        _ => return None,
    })
}

/// The response code's name (RFC 1035, 2136); others as `RCODE<n>`.
pub fn rcode_name(rcode: u32) -> String {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        n => return format!("RCODE{n}"),
    }
    .to_owned()
}

#[cfg(test)]
mod tests;
