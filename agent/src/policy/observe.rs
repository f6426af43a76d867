//! Flow records → the connections NetworkPolicy sees ([`Observed`]): which end initiated, the
//! destination after Service translation and the port it received on, and the workloads'
//! stable labels.
//!
//! A flow record counts the packets of one direction; a connection has two records (or one, for
//! a one-way exchange), and NetworkPolicy allows a connection by its initiator. Which end that is:
//!
//! 1. **Translation says it.** A record the node translated names the Service it went through:
//!    `translation.reply` false is the client's direction (the destination is the backend, the
//!    port its target port), true the backend's answer. Certain.
//! 2. **The destination's declared port.** A port the destination's pod spec declares (the
//!    metadata's named container ports) is where it listens.
//! 3. **Port ranges.** One end on a port below 1024 and the other not, or one end in Linux's
//!    ephemeral range (32768–60999) and the other not: the other end listens.
//! 4. Otherwise a record takes the direction another record of the same conversation (the same
//!    two ends, protocol and ports) was given; a conversation nothing decides is reported, never
//!    allowed.
//!
//! TCP flags do not help as the records carry them: both directions of a connection see SYN
//! (SYN and SYN-ACK) in their OR of flags.
//!
//! Records counted twice across nodes (an inter-node flow seen by both agents) count once
//! ([`crate::flows::rules::counted_once`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    connection::{NamedPort, Protocol},
    generate::{Evidence, Observed, Peer, Workload, WorkloadKey},
    selector::Labels,
};
use crate::{flows::rules::counted_once, net::ip_from_bytes, proto};

#[cfg(test)]
mod tests;

/// Linux's default ephemeral port range (`net.ipv4.ip_local_port_range`).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// A conversation's ends (the lower first), protocol and ports: both directions' records share
/// it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ConversationKey {
    a: (Peer, IpAddr, u16),
    b: (Peer, IpAddr, u16),
    protocol: Protocol,
}

/// What the records of a conversation said.
#[derive(Debug, Default)]
struct Conversation {
    /// `Some(true)`: `a` initiated; `Some(false)`: `b` did. Decided by the first record that
    /// could; a later contradicting one is counted.
    a_initiated: Option<bool>,
    contradictions: u64,
    evidence: Evidence,
}

/// Why a record's conversation could not be turned into a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Undirected {
    pub a: Peer,
    pub a_port: u16,
    pub b: Peer,
    pub b_port: u16,
    pub protocol: String,
    pub records: u64,
}

impl std::fmt::Display for Undirected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not allowed: {} port {} <-> {} port {} {} ({} records): which end initiated is \
             unknown (no translation, no declared port, no telling port range)",
            self.a, self.a_port, self.b, self.b_port, self.protocol, self.records
        )
    }
}

/// What [`Observer::finish`] gives the generator.
#[derive(Debug, Default)]
pub struct Observations {
    pub workloads: BTreeMap<WorkloadKey, Workload>,
    pub observed: Vec<Observed>,
    pub undirected: Vec<Undirected>,
    /// Records left out as the other node's copy of an inter-node flow.
    pub duplicates: u64,
    /// Records whose direction contradicted their conversation's (kept with the first).
    pub contradictions: u64,
}

/// Collects flow records.
#[derive(Debug, Default)]
pub struct Observer {
    conversations: BTreeMap<ConversationKey, Conversation>,
    /// Each workload's labels common to all its records (volatile ones are the generator's to
    /// drop).
    labels: BTreeMap<WorkloadKey, Labels>,
    duplicates: u64,
}

impl Observer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record. `declared(peer, port, protocol)`: whether the pod spec of `peer`'s pods
    /// declares that container port (from the metadata).
    pub fn add(&mut self, f: &proto::Flow, declared: &dyn Fn(&Peer, u16, Protocol) -> bool) {
        if !counted_once(f) {
            self.duplicates += 1;
            return;
        }
        let (Some(src_ip), Some(dst_ip)) = (ip_from_bytes(&f.src_ip), ip_from_bytes(&f.dst_ip))
        else {
            return;
        };
        let src = peer(f.src.as_ref(), src_ip);
        let dst = peer(f.dst.as_ref(), dst_ip);
        for (end, e) in [(&src, f.src.as_ref()), (&dst, f.dst.as_ref())] {
            if let (Peer::Workload(w), Some(e)) = (end, e) {
                self.labels
                    .entry(w.clone())
                    .and_modify(|l| l.retain(|k, v| e.labels.get(k) == Some(v)))
                    .or_insert_with(|| e.labels.clone());
            }
        }
        let protocol = Protocol::from_number(u8::try_from(f.protocol).unwrap_or(u8::MAX));
        let (src_port, dst_port) = ports(f, protocol);
        // true: the record's source initiated.
        let src_initiated = match &f.translation {
            Some(t) if !t.service_ip.is_empty() || !t.snat_ip.is_empty() => Some(!t.reply),
            _ => listens(&dst, dst_port, &src, src_port, protocol, declared),
        };
        let src_end = (src, src_ip, src_port);
        let dst_end = (dst, dst_ip, dst_port);
        let (key, src_is_a) = if src_end <= dst_end {
            (
                ConversationKey {
                    a: src_end,
                    b: dst_end,
                    protocol,
                },
                true,
            )
        } else {
            (
                ConversationKey {
                    a: dst_end,
                    b: src_end,
                    protocol,
                },
                false,
            )
        };
        let c = self.conversations.entry(key).or_default();
        if let Some(src_initiated) = src_initiated {
            let a_initiated = src_initiated == src_is_a;
            match c.a_initiated {
                None => c.a_initiated = Some(a_initiated),
                Some(known) if known != a_initiated => c.contradictions += 1,
                Some(_) => {}
            }
        }
        let seen = |ts: Option<&prost_types::Timestamp>| ts.map_or(0, |t| t.seconds);
        c.evidence.add(&Evidence {
            flows: 1,
            bytes: f.bytes,
            first: seen(f.start_time.as_ref()),
            last: seen(f.end_time.as_ref()),
        });
    }

    /// The connections, the workloads (with `named_ports` of each) and what was left undecided.
    pub fn finish(self, named_ports: &dyn Fn(&WorkloadKey) -> Vec<NamedPort>) -> Observations {
        let mut out = Observations {
            duplicates: self.duplicates,
            ..Observations::default()
        };
        let mut connections: BTreeMap<(Peer, Peer, Protocol, u16), Evidence> = BTreeMap::new();
        let mut undirected = BTreeSet::new();
        for (key, c) in self.conversations {
            out.contradictions += c.contradictions;
            let ((init, _, _), (resp, _, port)) = match c.a_initiated {
                Some(true) => (key.a, key.b),
                Some(false) => (key.b, key.a),
                None => {
                    undirected.insert(Undirected {
                        a: key.a.0,
                        a_port: key.a.2,
                        b: key.b.0,
                        b_port: key.b.2,
                        protocol: key.protocol.to_string(),
                        records: c.evidence.flows,
                    });
                    continue;
                }
            };
            connections
                .entry((init, resp, key.protocol, port))
                .or_default()
                .add(&c.evidence);
        }
        out.undirected = undirected.into_iter().collect();
        out.observed = connections
            .into_iter()
            .map(|((src, dst, protocol, port), evidence)| Observed {
                src,
                dst,
                protocol,
                port,
                evidence,
            })
            .collect();
        out.workloads = self
            .labels
            .into_iter()
            .map(|(key, labels)| {
                let ports = named_ports(&key);
                (key, Workload { labels, ports })
            })
            .collect();
        out
    }
}

/// The ports NetworkPolicy sees: none for protocols without them.
fn ports(f: &proto::Flow, protocol: Protocol) -> (u16, u16) {
    match protocol {
        Protocol::Other(_) => (0, 0),
        _ => (
            u16::try_from(f.src_port).unwrap_or(0),
            u16::try_from(f.dst_port).unwrap_or(0),
        ),
    }
}

/// Whether the record's source initiated, by the destination's ports: `Some(true)` when `dst`
/// listens on `dst_port`, `Some(false)` when `src` listens on `src_port`, `None` when neither or
/// both.
fn listens(
    dst: &Peer,
    dst_port: u16,
    src: &Peer,
    src_port: u16,
    protocol: Protocol,
    declared: &dyn Fn(&Peer, u16, Protocol) -> bool,
) -> Option<bool> {
    if matches!(protocol, Protocol::Other(_)) {
        return None;
    }
    let decide = |dst_says: bool, src_says: bool| match (dst_says, src_says) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    };
    decide(
        declared(dst, dst_port, protocol),
        declared(src, src_port, protocol),
    )
    .or_else(|| decide(dst_port < 1024, src_port < 1024))
    .or_else(|| decide(EPHEMERAL.contains(&src_port), EPHEMERAL.contains(&dst_port)))
}

/// An endpoint of a record as a peer.
pub fn peer(e: Option<&proto::Endpoint>, ip: IpAddr) -> Peer {
    let Some(e) = e else {
        return Peer::Unnamed {
            ip: Some(ip),
            why: "no metadata".into(),
        };
    };
    let node = (!e.node.is_empty()).then(|| e.node.clone());
    if e.ambiguous {
        return Peer::Unnamed {
            ip: Some(ip),
            why: "ambiguous: several owners had this address".into(),
        };
    }
    match e.kind.as_str() {
        "pod" if e.namespace.is_empty() => Peer::Unnamed {
            ip: Some(ip),
            why: "a pod without namespace".into(),
        },
        "pod" => Peer::Workload(WorkloadKey {
            namespace: e.namespace.clone(),
            kind: if e.workload_kind.is_empty() {
                "Pod".into()
            } else {
                e.workload_kind.clone()
            },
            name: if e.workload.is_empty() {
                e.pod.clone()
            } else {
                e.workload.clone()
            },
        }),
        "host_network_pod" => Peer::HostNetwork { ip, node },
        "node" => Peer::Node { ip, name: node },
        "external" => Peer::External(ip),
        "service" => Peer::Unnamed {
            ip: Some(ip),
            why: "a Service address the node did not translate (no backend known)".into(),
        },
        _ => Peer::Unnamed {
            ip: Some(ip),
            why: "no known owner".into(),
        },
    }
}
