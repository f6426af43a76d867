//! Drops on the flow records: packets of a flow the node's kernel dropped, how many, why and
//! where (see [`crate::capture::DropEvents`]: a `kfree_skb` BTF tracepoint keyed by the dropped
//! packet's flow).
//!
//! At each flush, after the drain: the entries are taken, named by the real ends of their flow
//! (a packet dropped before the node's DNAT still carries the ClusterIP; the translation makes it
//! the record's key) and attached to the record of that flow. A record whose packets were all
//! dropped in the node's namespace never reached the destination: it no longer lists the
//! destination's veth (which the counting point inferred), so it never claims a path its packets
//! did not take. Entries wait at most two flushes for their record (then counted).
use podflow_ebpf::{DropValue, FlowKey, RttValue};

use crate::{
    capture::{DropEvents, RttEvents},
    flows::{Translate, Waiting},
    proto,
    report::error_chain,
};

/// Counters, cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Dropped packets read from the kernel, by reason name.
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// Dropped packets put on a record.
    pub attached: u64,
    /// Dropped packets whose flow had no record within two flushes (not pod traffic: the node's
    /// own, a host-network pod's; or a flow the agent does not count).
    pub unattached: u64,
    /// Reading the kernel's map failed.
    pub errors: u64,
}

/// One flow's drops, as the record gets them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Dropped {
    packets: u64,
    bytes: u64,
    reason: String,
    in_node: bool,
}

impl Dropped {
    /// Adds later drops of the flow: their counts, and their reason and place as the last.
    fn merge(&mut self, later: Dropped) {
        self.packets += later.packets;
        self.bytes += later.bytes;
        self.reason = later.reason;
        self.in_node = later.in_node;
    }
}

/// Adds a flow's later RTT samples: their count and extremes, and the last.
fn merge_rtt(earlier: &mut RttValue, later: &RttValue) {
    earlier.samples += later.samples;
    earlier.min_us = earlier.min_us.min(later.min_us);
    earlier.max_us = earlier.max_us.max(later.max_us);
    earlier.last_us = later.last_us;
}

/// Drops between the kernel's map and the records.
#[derive(Debug)]
pub struct DropTracker {
    /// This agent's network namespace (the node's), by inode number.
    node_netns: u32,
    waiting: Waiting<Dropped>,
    stats: DropStats,
}

impl DropTracker {
    pub fn new(node_netns: u32) -> DropTracker {
        DropTracker {
            node_netns,
            waiting: Waiting::default(),
            stats: DropStats::default(),
        }
    }

    pub fn stats(&self) -> &DropStats {
        &self.stats
    }

    /// One flow's drops (its key as the dropped packet carried it), named by `nat`.
    pub fn add(&mut self, key: &FlowKey, v: &DropValue, reason: String, nat: &dyn Translate) {
        *self.stats.by_reason.entry(reason.clone()).or_default() += v.packets;
        let in_node = v.netns != 0 && v.netns == self.node_netns;
        self.waiting
            .entry(key, nat, Dropped::default)
            .merge(Dropped {
                packets: v.packets,
                bytes: v.bytes,
                reason,
                in_node,
            });
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_idle()
    }

    /// Puts the drops of `record`'s flow on it; a record all of whose packets were dropped in the
    /// node keeps only the interfaces its packets were seen on (the first: where they were
    /// counted).
    pub fn attach(&mut self, record: &mut proto::Flow) {
        let Some(d) = self.waiting.take(record, Dropped::merge) else {
            return;
        };
        self.stats.attached += d.packets;
        record.dropped_packets += d.packets;
        record.dropped_bytes += d.bytes;
        record.drop_reason = d.reason;
        record.dropped_in_node = d.in_node;
        if d.in_node && record.dropped_packets >= record.packets && record.interfaces.len() > 1 {
            record.interfaces.truncate(1);
        }
    }

    /// After a flush's records.
    pub fn end_flush(&mut self) {
        let mut unattached = 0;
        self.waiting.end_flush(|d| unattached += d.packets);
        self.stats.unattached += unattached;
    }
}

/// The kernel's map and the tracker, as the flush drives them.
#[derive(Debug)]
pub struct DropSource {
    events: Option<DropEvents>,
    pub tracker: DropTracker,
}

impl DropSource {
    pub fn new(events: Option<DropEvents>) -> DropSource {
        DropSource {
            events,
            tracker: DropTracker::new(netns_inode()),
        }
    }

    /// At a flush, after the drain and the conntrack events: takes the kernel's entries.
    pub fn read(&mut self, nat: &dyn Translate) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        let mut taken = Vec::new();
        if let Err(e) = events.take(|k, v| taken.push((*k, *v))) {
            self.tracker.stats.errors += 1;
            tracing::warn!(error = %error_chain(&e), "drops: reading the kernel's map failed");
        }
        for (k, v) in taken {
            let reason = events.reason_name(v.reason);
            self.tracker.add(&k, &v, reason, nat);
        }
    }
}

/// The smoothed RTT samples of TCP sockets (`--tcp-rtt`), by the socket's outgoing flow, from
/// the kernel's map to the records (the same two-flush wait as drops).
#[derive(Debug)]
pub struct RttSource {
    events: Option<RttEvents>,
    waiting: Waiting<RttValue>,
    /// Samples put on records, and samples whose record did not come.
    pub attached: u64,
    pub unattached: u64,
}

impl RttSource {
    pub fn new(events: Option<RttEvents>) -> RttSource {
        RttSource {
            events,
            waiting: Waiting::default(),
            attached: 0,
            unattached: 0,
        }
    }

    /// At a flush: takes the kernel's entries, named by their flows' real ends (`nat`: a
    /// client's socket knows the ClusterIP it connected to).
    pub fn read(&mut self, nat: &dyn Translate) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        let mut taken = Vec::new();
        if let Err(e) = events.take(|k, v| taken.push((*k, *v))) {
            tracing::warn!(error = %error_chain(&e), "tcp rtt: reading the kernel's map failed");
        }
        for (k, v) in taken {
            let e = self.waiting.entry(&k, nat, || RttValue {
                samples: 0,
                min_us: u32::MAX,
                max_us: 0,
                last_us: 0,
            });
            merge_rtt(e, &v);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_idle()
    }

    /// Puts the samples of `record`'s flow on it.
    pub fn attach(&mut self, record: &mut proto::Flow) {
        let Some(v) = self
            .waiting
            .take(record, |earlier, later| merge_rtt(earlier, &later))
        else {
            return;
        };
        self.attached += u64::from(v.samples);
        let d = |us: u32| prost_types::Duration {
            seconds: i64::from(us / 1_000_000),
            nanos: ((us % 1_000_000) * 1000) as i32,
        };
        record.tcp_srtt = Some(proto::TcpRtt {
            samples: v.samples,
            min: Some(d(v.min_us)),
            max: Some(d(v.max_us)),
            last: Some(d(v.last_us)),
        });
    }

    pub fn end_flush(&mut self) {
        let mut unattached = 0;
        self.waiting
            .end_flush(|v| unattached += u64::from(v.samples));
        self.unattached += unattached;
    }
}

/// The inode number of the calling thread's network namespace (0 if it cannot be read).
fn netns_inode() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use podflow_ebpf::{FAMILY_IPV4, IPPROTO_UDP, ipv4_mapped};

    use super::*;
    use crate::flows::NoTranslation;

    const A: [u8; 4] = [10, 44, 0, 2];
    const B: [u8; 4] = [10, 44, 0, 3];

    fn key() -> FlowKey {
        FlowKey {
            src_addr: ipv4_mapped(A),
            dst_addr: ipv4_mapped(B),
            src_port: 40000,
            dst_port: 7000,
            protocol: IPPROTO_UDP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        }
    }

    fn record(packets: u64) -> proto::Flow {
        proto::Flow {
            src_ip: A.to_vec(),
            dst_ip: B.to_vec(),
            src_port: 40000,
            dst_port: 7000,
            protocol: u32::from(IPPROTO_UDP),
            packets,
            interfaces: vec!["vetha".into(), "vethb".into()],
            same_node: true,
            ..Default::default()
        }
    }

    fn dropped(packets: u64, netns: u32) -> DropValue {
        DropValue {
            packets,
            bytes: packets * 40,
            reason: 6,
            ifindex: 2,
            netns,
            _pad: 0,
        }
    }

    #[test]
    fn all_dropped_in_the_node_never_claims_the_destinations_veth() {
        let mut t = DropTracker::new(77);
        t.add(
            &key(),
            &dropped(20, 77),
            "NETFILTER_DROP".into(),
            &NoTranslation,
        );
        let mut r = record(20);
        t.attach(&mut r);
        assert_eq!((r.dropped_packets, r.dropped_bytes), (20, 800));
        assert_eq!(r.drop_reason, "NETFILTER_DROP");
        assert!(r.dropped_in_node);
        assert_eq!(r.interfaces, ["vetha"]);
        assert_eq!(t.stats().by_reason.get("NETFILTER_DROP"), Some(&20));
        assert_eq!(t.stats().attached, 20);
    }

    #[test]
    fn some_dropped_or_dropped_in_the_pod_keeps_the_path() {
        let mut t = DropTracker::new(77);
        // 5 of 20 dropped in the node: the others reached the pod.
        t.add(
            &key(),
            &dropped(5, 77),
            "NETFILTER_DROP".into(),
            &NoTranslation,
        );
        let mut r = record(20);
        t.attach(&mut r);
        assert_eq!(r.interfaces, ["vetha", "vethb"]);
        // All dropped, but in the pod's namespace (its socket's buffer was full): they got there.
        t.add(
            &key(),
            &dropped(20, 99),
            "SOCKET_RCVBUFF".into(),
            &NoTranslation,
        );
        let mut r = record(20);
        t.attach(&mut r);
        assert!(!r.dropped_in_node);
        assert_eq!(r.interfaces, ["vetha", "vethb"]);
        // A drop whose flow never gets a record is counted after two flushes.
        let mut other = key();
        other.dst_port = 9;
        t.add(&other, &dropped(3, 77), "NO_SOCKET".into(), &NoTranslation);
        t.end_flush();
        t.end_flush();
        assert_eq!(t.stats().unattached, 3);
        assert!(t.is_idle());
    }
}
