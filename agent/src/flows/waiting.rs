//! What waits for a flow's record: facts the kernel reports beside the counts (DNS messages,
//! handshake times, drops, RTT samples), keyed by the flow's real ends, kept until the record of
//! that flow is made — at most two flushes, since a fact read at one flush may belong to a packet
//! of the next drain.
use std::collections::HashMap;

use podflow_ebpf::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, ipv4_mapped};

use super::{FlowId, Translate};
use crate::{
    hash::{FlowHashState, flow_hash_state},
    proto,
};

/// Facts `V` by flow, in two generations: read at this flush, and at the previous one.
#[derive(Debug)]
pub struct Waiting<V> {
    current: HashMap<FlowId, V, FlowHashState>,
    previous: HashMap<FlowId, V, FlowHashState>,
}

impl<V> Default for Waiting<V> {
    fn default() -> Self {
        Waiting {
            current: HashMap::with_hasher(flow_hash_state()),
            previous: HashMap::with_hasher(flow_hash_state()),
        }
    }
}

impl<V> Waiting<V> {
    /// The fact of the flow `key` (as a packet carried it: `nat` names its real ends), made by
    /// `new` if none waits yet.
    pub fn entry(&mut self, key: &FlowKey, nat: &dyn Translate, new: impl FnOnce() -> V) -> &mut V {
        let mut real = nat.translate(&normal(key)).map_or(*key, |t| t.key);
        real.obs = 0;
        real.key_flags = 0;
        self.current.entry(FlowId::of(&real)).or_insert_with(new)
    }

    /// The fact waiting for `record`'s flow: the previous flush's and this one's, put together by
    /// `merge` (called with the earlier one) when both wait.
    pub fn take(&mut self, record: &proto::Flow, merge: impl FnOnce(&mut V, V)) -> Option<V> {
        let id = FlowId::of(&record_key(record)?);
        match (self.previous.remove(&id), self.current.remove(&id)) {
            (Some(mut earlier), Some(later)) => {
                merge(&mut earlier, later);
                Some(earlier)
            }
            (earlier, later) => earlier.or(later),
        }
    }

    /// Whether nothing waits (then no record need be looked up).
    pub fn is_idle(&self) -> bool {
        self.current.is_empty() && self.previous.is_empty()
    }

    /// After a flush's records: what waited two flushes is given to `gone` and dropped.
    pub fn end_flush(&mut self, gone: impl FnMut(V)) {
        let old = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
        old.into_values().for_each(gone);
        self.previous.shrink_to_fit();
    }
}

/// A key as the kernel's observations carry it, without observation point and flags.
fn normal(k: &FlowKey) -> FlowKey {
    FlowKey {
        obs: 0,
        key_flags: 0,
        ..*k
    }
}

/// The flow key of a record's real ends (its addresses, ports and protocol).
pub fn record_key(r: &proto::Flow) -> Option<FlowKey> {
    let addr = |b: &[u8]| -> Option<([u8; 16], u8)> {
        match b.len() {
            4 => Some((ipv4_mapped([b[0], b[1], b[2], b[3]]), FAMILY_IPV4)),
            16 => Some((b.try_into().ok()?, FAMILY_IPV6)),
            _ => None,
        }
    };
    let ((src_addr, family), (dst_addr, _)) = (addr(&r.src_ip)?, addr(&r.dst_ip)?);
    Some(FlowKey {
        src_addr,
        dst_addr,
        src_port: u16::try_from(r.src_port).ok()?,
        dst_port: u16::try_from(r.dst_port).ok()?,
        protocol: u8::try_from(r.protocol).ok()?,
        family,
        ..FlowKey::default()
    })
}

#[cfg(test)]
mod tests {
    use podflow_ebpf::IPPROTO_UDP;

    use super::*;
    use crate::flows::NoTranslation;

    #[test]
    fn a_fact_waits_two_flushes_for_its_record() {
        let key = FlowKey {
            src_addr: ipv4_mapped([10, 0, 0, 1]),
            dst_addr: ipv4_mapped([10, 0, 0, 2]),
            src_port: 1000,
            dst_port: 53,
            protocol: IPPROTO_UDP,
            family: FAMILY_IPV4,
            obs: 1,
            ..FlowKey::default()
        };
        let record = proto::Flow {
            src_ip: vec![10, 0, 0, 1],
            dst_ip: vec![10, 0, 0, 2],
            src_port: 1000,
            dst_port: 53,
            protocol: u32::from(IPPROTO_UDP),
            ..Default::default()
        };
        let mut w: Waiting<u32> = Waiting::default();
        *w.entry(&key, &NoTranslation, || 0) += 2;
        *w.entry(&key, &NoTranslation, || 0) += 3;
        w.end_flush(|_| panic!("nothing is two flushes old"));
        *w.entry(&key, &NoTranslation, || 0) += 1;
        let mut merged = None;
        let taken = w.take(&record, |earlier, later| merged = Some((*earlier, later)));
        assert_eq!((merged, taken), (Some((5, 1)), Some(5)));
        assert!(w.is_idle());
        *w.entry(&key, &NoTranslation, || 0) += 7;
        let mut gone = Vec::new();
        w.end_flush(|v| gone.push(v));
        w.end_flush(|v| gone.push(v));
        assert_eq!(gone, [7]);
    }
}
