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
pub const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// A conversation's ends (the lower first; a workload's pods are one end, other ends carry
/// their address), protocol and ports (an ephemeral port as 0): both directions' records share
/// it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ConversationKey {
    a: (Peer, u16),
    b: (Peer, u16),
    protocol: Protocol,
}

/// One record as the observer reads it (from a flow record, or a row of many in ClickHouse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub src: Peer,
    pub src_port: u16,
    pub dst: Peer,
    pub dst_port: u16,
    pub protocol: Protocol,
    /// `Some(reply)` when the node translated it (`translation.reply`).
    pub translated: Option<bool>,
    /// Labels of the source and destination pods, when they are pods.
    pub src_labels: Option<Labels>,
    pub dst_labels: Option<Labels>,
    pub evidence: Evidence,
}

/// A port as conversations key it: an ephemeral one as 0 (any ephemeral port is as good as
/// another, and a window then holds one conversation per pair of ends, not per connection).
pub fn port_key(port: u16) -> u16 {
    if EPHEMERAL.contains(&port) { 0 } else { port }
}

fn is_ephemeral(port_key: u16) -> bool {
    port_key == 0
}

fn well_known(port_key: u16) -> bool {
    (1..1024).contains(&port_key)
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
        let port = |p: u16| {
            if p == 0 {
                "an ephemeral port".to_owned()
            } else {
                format!("port {p}")
            }
        };
        write!(
            f,
            "not allowed: {} {} <-> {} {} {} ({} records): which end initiated is unknown (no \
             translation, no declared port, no telling port range)",
            self.a,
            port(self.a_port),
            self.b,
            port(self.b_port),
            self.protocol,
            self.records
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

    /// Adds a flow record. `declared(peer, port, protocol)`: whether the pod spec of `peer`'s
    /// pods declares that container port (from the metadata).
    pub fn add(&mut self, f: &proto::Flow, declared: &dyn Fn(&Peer, u16, Protocol) -> bool) {
        if !counted_once(f) {
            self.duplicates += 1;
            return;
        }
        let protocol = Protocol::from_number(u8::try_from(f.protocol).unwrap_or(u8::MAX));
        let (src_port, dst_port) = ports(f, protocol);
        let labels =
            |e: Option<&proto::Endpoint>| e.filter(|e| e.kind == "pod").map(|e| e.labels.clone());
        let seen = |ts: Option<&prost_types::Timestamp>| ts.map_or(0, |t| t.seconds);
        self.add_record(
            Record {
                src: peer(f.src.as_ref(), ip_from_bytes(&f.src_ip)),
                src_port,
                dst: peer(f.dst.as_ref(), ip_from_bytes(&f.dst_ip)),
                dst_port,
                protocol,
                translated: f
                    .translation
                    .as_ref()
                    .filter(|t| !t.service_ip.is_empty() || !t.snat_ip.is_empty())
                    .map(|t| t.reply),
                src_labels: labels(f.src.as_ref()),
                dst_labels: labels(f.dst.as_ref()),
                evidence: Evidence {
                    flows: 1,
                    bytes: f.bytes,
                    first: seen(f.start_time.as_ref()),
                    last: seen(f.end_time.as_ref()),
                },
            },
            declared,
        );
    }

    /// Adds a record already read (counted once across nodes: the caller's to ensure).
    pub fn add_record(&mut self, r: Record, declared: &dyn Fn(&Peer, u16, Protocol) -> bool) {
        for (end, labels) in [(&r.src, &r.src_labels), (&r.dst, &r.dst_labels)] {
            if let (Peer::Workload(w), Some(labels)) = (end, labels) {
                self.labels
                    .entry(w.clone())
                    .and_modify(|l| l.retain(|k, v| labels.get(k) == Some(v)))
                    .or_insert_with(|| labels.clone());
            }
        }
        let (src_port, dst_port) = (port_key(r.src_port), port_key(r.dst_port));
        // true: the record's source initiated.
        let src_initiated = match (r.translated, r.protocol) {
            (Some(reply), _) => Some(!reply),
            // No port to tell by, and no way to allow it alone: the generator reports it with
            // the direction of its first record.
            (None, Protocol::Other(_)) => Some(true),
            (None, _) => listens(&r.dst, dst_port, &r.src, src_port, r.protocol, declared),
        };
        let src_end = (r.src, src_port);
        let dst_end = (r.dst, dst_port);
        let (key, src_is_a) = if src_end <= dst_end {
            (
                ConversationKey {
                    a: src_end,
                    b: dst_end,
                    protocol: r.protocol,
                },
                true,
            )
        } else {
            (
                ConversationKey {
                    a: dst_end,
                    b: src_end,
                    protocol: r.protocol,
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
        c.evidence.add(&r.evidence);
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
            let ((init, _), (resp, port)) = match c.a_initiated {
                Some(true) => (key.a, key.b),
                Some(false) => (key.b, key.a),
                None => {
                    undirected.insert(Undirected {
                        a: key.a.0,
                        a_port: key.a.1,
                        b: key.b.0,
                        b_port: key.b.1,
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
    .or_else(|| decide(well_known(dst_port), well_known(src_port)))
    .or_else(|| decide(is_ephemeral(src_port), is_ephemeral(dst_port)))
}

/// An endpoint of a record as a peer (`ip`: its address; a pod's is not needed).
pub fn peer(e: Option<&proto::Endpoint>, ip: Option<IpAddr>) -> Peer {
    let Some(e) = e else {
        return Peer::Unnamed {
            ip,
            why: "no metadata".into(),
        };
    };
    let node = (!e.node.is_empty()).then(|| e.node.clone());
    if e.ambiguous {
        return Peer::Unnamed {
            ip,
            why: "ambiguous: several owners had this address".into(),
        };
    }
    match (e.kind.as_str(), ip) {
        ("pod", _) if e.namespace.is_empty() => Peer::Unnamed {
            ip,
            why: "a pod without namespace".into(),
        },
        ("pod", _) => Peer::Workload(WorkloadKey {
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
        ("host_network_pod", Some(ip)) => Peer::HostNetwork { ip, node },
        ("node", Some(ip)) => Peer::Node { ip, name: node },
        ("external", Some(ip)) => Peer::External(ip),
        ("host_network_pod" | "node" | "external", None) => Peer::Unnamed {
            ip,
            why: format!("a {} without its address", e.kind),
        },
        ("service", _) => Peer::Unnamed {
            ip,
            why: "a Service address the node did not translate (no backend known)".into(),
        },
        _ => Peer::Unnamed {
            ip,
            why: "no known owner".into(),
        },
    }
}
