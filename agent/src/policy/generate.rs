//! The generator: observed connections → one least-privilege `networking.k8s.io/v1`
//! NetworkPolicy per workload, as YAML with the evidence of every rule as comments, and a report
//! of what it could not allow.
//!
//! Pure and deterministic: the same observations give byte-identical YAML (everything is kept in
//! sorted maps; the comments hold the evidence, not the time of the run). What it is given is
//! already the connection as NetworkPolicy sees it: the initiator as `src`, the destination after
//! Service translation (the backend and the port it received on), which the caller derives from
//! the flow records (`podflow advise network-policy`).
//!
//! Rules it follows (issue 14):
//!
//! - A policy selects its workload's pods by their pod-template labels without the volatile ones
//!   ([`VOLATILE_LABELS`]). A workload left without labels, or whose labels also select another
//!   known workload's pods in its namespace, gets no policy (a selector that wide would change
//!   other pods' isolation), and rules that would name it as a peer are left out: both reported.
//! - Both directions are isolated (`policyTypes: [Ingress, Egress]`); each observed peer gets a
//!   rule with the ports it used. Peers in the same namespace are a `podSelector`; in another,
//!   `namespaceSelector` on `kubernetes.io/metadata.name` AND the peer's `podSelector`.
//! - Ports are the destination's (after translation), with their protocol; a port the
//!   destination workload's pod spec names is written by name.
//! - DNS: egress to a workload on port 53 (UDP or TCP) allows both UDP and TCP 53, since
//!   resolvers fall back to TCP for truncated answers; the added one is marked as such.
//! - Outside addresses are `ipBlock`s: /32 (/128) by default, [`Options`] aggregates them; a node
//!   or host-network pod address is an `ipBlock` of that address, marked as the node's.
//! - What cannot be allowed without allowing more than was observed is reported, never allowed:
//!   endpoints that could not be named, protocols other than TCP, UDP and SCTP (a rule without
//!   ports would allow every protocol), workloads without distinguishing labels.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
    net::IpAddr,
};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    connection::{NamedPort, Protocol},
    eval::NAMESPACE_NAME_LABEL,
    selector::Labels,
};

#[cfg(test)]
mod tests;

/// Pod labels that differ between the pods of one workload or between its revisions: a selector
/// must not use them.
pub const VOLATILE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
    "controller-uid",
    "job-name",
];

/// A workload: namespace, kind (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`,
/// `Pod` for a bare pod) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// What the generator knows of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its pods' labels (the pod template's; volatile ones are dropped here).
    pub labels: Labels,
    /// Its named container ports.
    pub ports: Vec<NamedPort>,
}

/// One end of an observed connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// Pods of a known workload.
    Workload(WorkloadKey),
    /// An address outside the cluster (nothing known owns it).
    External(IpAddr),
    /// A node's own address.
    Node { ip: IpAddr, name: Option<String> },
    /// A host-network pod (it has its node's address).
    HostNetwork { ip: IpAddr, node: Option<String> },
    /// An endpoint podflow could not name: never allowed, reported.
    Unnamed { ip: Option<IpAddr>, why: String },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Workload(w) => write!(f, "{w}"),
            Peer::External(ip) => write!(f, "external {ip}"),
            Peer::Node { ip, name: Some(n) } => write!(f, "node {n} ({ip})"),
            Peer::Node { ip, name: None } => write!(f, "node {ip}"),
            Peer::HostNetwork { ip, node: Some(n) } => {
                write!(f, "host-network pod on node {n} ({ip})")
            }
            Peer::HostNetwork { ip, node: None } => write!(f, "host-network pod ({ip})"),
            Peer::Unnamed { ip: Some(ip), why } => write!(f, "{ip} ({why})"),
            Peer::Unnamed { ip: None, why } => write!(f, "an endpoint without address ({why})"),
        }
    }
}

/// How much traffic supports a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence {
    pub flows: u64,
    pub bytes: u64,
    /// First and last seen, seconds since the Unix epoch.
    pub first: i64,
    pub last: i64,
}

impl Evidence {
    /// Adds `other` (nothing if it saw no flow).
    pub(super) fn add(&mut self, other: &Evidence) {
        if other.flows == 0 {
            return;
        }
        if self.flows == 0 {
            *self = *other;
            return;
        }
        self.flows += other.flows;
        self.bytes += other.bytes;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} flow{}, {} bytes, first {}, last {}",
            self.flows,
            if self.flows == 1 { "" } else { "s" },
            self.bytes,
            crate::format::rfc3339_seconds(self.first),
            crate::format::rfc3339_seconds(self.last)
        )
    }
}

/// A connection as observed: initiator, destination after translation, port and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub src: Peer,
    pub dst: Peer,
    pub protocol: Protocol,
    pub port: u16,
    pub evidence: Evidence,
}

/// Options of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Prefix length outside IPv4 addresses are aggregated to (32: each address on its own).
    pub external_prefix_v4: u8,
    /// The same for IPv6 (128: each address on its own).
    pub external_prefix_v6: u8,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            external_prefix_v4: 32,
            external_prefix_v6: 128,
        }
    }
}

/// Something the generator did not allow, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    /// No connection in the window: nothing to generate from.
    NoObservations,
    /// A connection with an end that could not be named.
    Unnamed {
        src: Peer,
        dst: Peer,
        protocol: String,
        port: u16,
        flows: u64,
    },
    /// A protocol NetworkPolicy cannot allow on its own.
    Protocol {
        src: Peer,
        dst: Peer,
        protocol: String,
        flows: u64,
    },
    /// A workload without labels that would select only its pods.
    NoSelector { workload: WorkloadKey, why: String },
    /// A connection left out because an end is a workload without a selector.
    Unselectable {
        src: Peer,
        dst: Peer,
        protocol: String,
        port: u16,
        flows: u64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::NoObservations => f.write_str(
                "no connection was observed in the window: no policy generated (a policy from \
                 no traffic would deny everything)",
            ),
            Finding::Unnamed {
                src,
                dst,
                protocol,
                port,
                flows,
            } => write!(
                f,
                "not allowed: {src} -> {dst} {protocol}/{port} ({flows} flows): an end could \
                 not be named"
            ),
            Finding::Protocol {
                src,
                dst,
                protocol,
                flows,
            } => write!(
                f,
                "not allowed: {src} -> {dst} {protocol} ({flows} flows): NetworkPolicy can \
                 allow it only with a rule for every protocol and port"
            ),
            Finding::NoSelector { workload, why } => {
                write!(f, "no policy for {workload}: {why}")
            }
            Finding::Unselectable {
                src,
                dst,
                protocol,
                port,
                flows,
            } => write!(
                f,
                "not allowed: {src} -> {dst} {protocol}/{port} ({flows} flows): an end has no \
                 selector of its own (see above)"
            ),
        }
    }
}

/// The generated policies and the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advice {
    /// One per workload, by workload.
    pub policies: Vec<Generated>,
    /// Sorted.
    pub findings: Vec<Finding>,
}

/// One workload's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub workload: WorkloadKey,
    pub policy: NetworkPolicy,
    /// The policy as YAML, with its evidence as comments.
    pub yaml: String,
}

impl Advice {
    /// Every policy as one multi-document YAML stream (`kubectl apply -f -`).
    pub fn yaml(&self) -> String {
        let mut out = String::new();
        for (i, g) in self.policies.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&g.yaml);
        }
        out
    }
}

/// A rule's peer, in a policy of `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PeerSel {
    Pods {
        /// `None`: the policy's own namespace.
        namespace: Option<String>,
        labels: Labels,
        workload: WorkloadKey,
    },
    Block {
        cidr: String,
        what: String,
    },
}

/// A rule's port: a number or a name of the destination's pod spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PortSel {
    protocol: Protocol,
    port: PortValue,
    /// Added for DNS over TCP, not observed.
    dns_fallback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortValue {
    Number(u16),
    Name(String),
}

type Rules = BTreeMap<PeerSel, BTreeMap<PortSel, Evidence>>;

#[derive(Debug, Default)]
struct Draft {
    ingress: Rules,
    egress: Rules,
}

/// Generates the policies of the workloads in `observed`.
pub fn generate(
    workloads: &BTreeMap<WorkloadKey, Workload>,
    observed: &[Observed],
    options: Options,
) -> Advice {
    let mut advice = Advice::default();
    if observed.is_empty() {
        advice.findings.push(Finding::NoObservations);
        return advice;
    }
    let selectors = selectors(workloads, &mut advice.findings);
    let mut drafts: BTreeMap<WorkloadKey, Draft> = BTreeMap::new();
    let mut findings = BTreeSet::new();
    for o in observed {
        let protocol_name = o.protocol.to_string();
        if matches!(o.src, Peer::Unnamed { .. }) || matches!(o.dst, Peer::Unnamed { .. }) {
            findings.insert(Finding::Unnamed {
                src: o.src.clone(),
                dst: o.dst.clone(),
                protocol: protocol_name,
                port: o.port,
                flows: o.evidence.flows,
            });
            continue;
        }
        if matches!(o.protocol, Protocol::Other(_)) {
            findings.insert(Finding::Protocol {
                src: o.src.clone(),
                dst: o.dst.clone(),
                protocol: protocol_name,
                flows: o.evidence.flows,
            });
            continue;
        }
        let unselectable = |p: &Peer| match p {
            Peer::Workload(w) => !selectors.contains_key(w),
            _ => false,
        };
        if unselectable(&o.src) || unselectable(&o.dst) {
            findings.insert(Finding::Unselectable {
                src: o.src.clone(),
                dst: o.dst.clone(),
                protocol: protocol_name,
                port: o.port,
                flows: o.evidence.flows,
            });
            continue;
        }
        // The ports as the destination names them.
        let dst_ports = match &o.dst {
            Peer::Workload(w) => workloads.get(w).map(|w| w.ports.as_slice()),
            _ => None,
        };
        let mut ports = vec![port_sel(o.protocol, o.port, dst_ports, false)];
        if o.port == 53 && matches!(o.dst, Peer::Workload(_)) {
            let other = match o.protocol {
                Protocol::Udp => Some(Protocol::Tcp),
                Protocol::Tcp => Some(Protocol::Udp),
                _ => None,
            };
            ports.extend(other.map(|p| port_sel(p, 53, dst_ports, true)));
        }
        // Egress of the source, ingress of the destination: each side's own policy.
        for (own, other, ingress) in [(&o.src, &o.dst, false), (&o.dst, &o.src, true)] {
            let Peer::Workload(w) = own else { continue };
            let draft = drafts.entry(w.clone()).or_default();
            let rules = if ingress {
                &mut draft.ingress
            } else {
                &mut draft.egress
            };
            // (Unnamed peers were left out above.)
            let Some(peer) = peer_sel(other, &w.namespace, &selectors, options) else {
                continue;
            };
            add_ports(rules.entry(peer).or_default(), &ports, &o.evidence);
        }
    }
    advice.findings.extend(findings);
    advice.findings.sort();
    advice.findings.dedup();
    for (workload, draft) in drafts {
        let Some(labels) = selectors.get(&workload) else {
            continue;
        };
        let policy = policy(&workload, labels, &draft);
        let yaml = yaml(&workload, labels, &draft);
        advice.policies.push(Generated {
            workload,
            policy,
            yaml,
        });
    }
    advice
}

/// The selector labels of every workload that has a selector of its own; the others reported.
fn selectors(
    workloads: &BTreeMap<WorkloadKey, Workload>,
    findings: &mut Vec<Finding>,
) -> BTreeMap<WorkloadKey, Labels> {
    let stable: BTreeMap<&WorkloadKey, Labels> = workloads
        .iter()
        .map(|(k, w)| {
            let labels = w
                .labels
                .iter()
                .filter(|(key, _)| !VOLATILE_LABELS.contains(&key.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (k, labels)
        })
        .collect();
    let mut out = BTreeMap::new();
    for (key, labels) in &stable {
        if labels.is_empty() {
            findings.push(Finding::NoSelector {
                workload: (*key).clone(),
                why: "its pods carry no labels but volatile ones: a selector would select every \
                      pod of the namespace"
                    .into(),
            });
            continue;
        }
        // Another workload of the namespace whose pods these labels select too.
        let overlap = stable.iter().find(|(other, other_labels)| {
            other != &key
                && other.namespace == key.namespace
                && labels.iter().all(|(k, v)| other_labels.get(k) == Some(v))
        });
        if let Some((other, _)) = overlap {
            findings.push(Finding::NoSelector {
                workload: (*key).clone(),
                why: format!("its labels select the pods of {other} too"),
            });
            continue;
        }
        out.insert((*key).clone(), labels.clone());
    }
    out
}

fn port_sel(
    protocol: Protocol,
    port: u16,
    named: Option<&[NamedPort]>,
    dns_fallback: bool,
) -> PortSel {
    let name = named
        .into_iter()
        .flatten()
        .find(|n| n.port == port && n.protocol == protocol)
        .map(|n| n.name.clone());
    PortSel {
        protocol,
        port: name.map_or(PortValue::Number(port), PortValue::Name),
        dns_fallback,
    }
}

fn add_ports(rule: &mut BTreeMap<PortSel, Evidence>, ports: &[PortSel], evidence: &Evidence) {
    for (i, p) in ports.iter().enumerate() {
        let e = rule.entry(p.clone()).or_default();
        // An added port (DNS over TCP) has no evidence of its own.
        if i == 0 {
            e.add(evidence);
        }
    }
}

/// The peer `p` as seen from a policy in `namespace`; `None` for an unnamed one.
fn peer_sel(
    p: &Peer,
    namespace: &str,
    selectors: &BTreeMap<WorkloadKey, Labels>,
    options: Options,
) -> Option<PeerSel> {
    Some(match p {
        Peer::Workload(w) => PeerSel::Pods {
            namespace: (w.namespace != namespace).then(|| w.namespace.clone()),
            labels: selectors.get(w).cloned().unwrap_or_default(),
            workload: w.clone(),
        },
        Peer::External(ip) => PeerSel::Block {
            cidr: cidr(*ip, options),
            what: if cidr_len(*ip, options) == full_len(*ip) {
                format!("external {ip}")
            } else {
                "external addresses".into()
            },
        },
        Peer::Node { ip, .. } | Peer::HostNetwork { ip, .. } => PeerSel::Block {
            cidr: format!("{ip}/{}", full_len(*ip)),
            what: p.to_string(),
        },
        Peer::Unnamed { .. } => return None,
    })
}

fn full_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn cidr_len(ip: IpAddr, options: Options) -> u8 {
    match ip {
        IpAddr::V4(_) => options.external_prefix_v4.min(32),
        IpAddr::V6(_) => options.external_prefix_v6.min(128),
    }
}

/// `ip` aggregated to the configured prefix (the network address), as a CIDR.
fn cidr(ip: IpAddr, options: Options) -> String {
    let len = cidr_len(ip, options);
    let network = match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    format!("{network}/{len}")
}

/// The policy's name: `podflow-<kind>-<name>`, within the API's 253 characters.
fn policy_name(w: &WorkloadKey) -> String {
    let mut name = format!("podflow-{}-{}", w.kind.to_ascii_lowercase(), w.name);
    name.truncate(253);
    name
}

fn selector(labels: &Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

fn api_peer(p: &PeerSel) -> NetworkPolicyPeer {
    match p {
        PeerSel::Pods {
            namespace, labels, ..
        } => NetworkPolicyPeer {
            namespace_selector: namespace
                .as_ref()
                .map(|ns| selector(&[(NAMESPACE_NAME_LABEL.to_string(), ns.clone())].into())),
            pod_selector: Some(selector(labels)),
            ip_block: None,
        },
        PeerSel::Block { cidr, .. } => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..Default::default()
        },
    }
}

fn api_ports(ports: &BTreeMap<PortSel, Evidence>) -> Vec<NetworkPolicyPort> {
    ports
        .keys()
        .map(|p| NetworkPolicyPort {
            protocol: Some(p.protocol.to_string()),
            port: Some(match &p.port {
                PortValue::Number(n) => IntOrString::Int(i32::from(*n)),
                PortValue::Name(s) => IntOrString::String(s.clone()),
            }),
            end_port: None,
        })
        .collect()
}

/// The policy as an API object (what the YAML says, for the evaluator and `--check`).
fn policy(w: &WorkloadKey, labels: &Labels, d: &Draft) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(w)),
            namespace: Some(w.namespace.clone()),
            labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(labels)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(
                d.ingress
                    .iter()
                    .map(|(peer, ports)| NetworkPolicyIngressRule {
                        from: Some(vec![api_peer(peer)]),
                        ports: Some(api_ports(ports)),
                    })
                    .collect(),
            ),
            egress: Some(
                d.egress
                    .iter()
                    .map(|(peer, ports)| NetworkPolicyEgressRule {
                        to: Some(vec![api_peer(peer)]),
                        ports: Some(api_ports(ports)),
                    })
                    .collect(),
            ),
        }),
    }
}

/// The label generated policies carry.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "podflow");

/// A YAML double-quoted scalar (JSON's escaping is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn total(rules: &Rules) -> Evidence {
    let mut t = Evidence::default();
    for e in rules.values().flat_map(BTreeMap::values) {
        t.add(e);
    }
    t
}

fn yaml_labels(out: &mut String, indent: &str, labels: &Labels) {
    let _ = writeln!(out, "{indent}matchLabels:");
    for (k, v) in labels {
        let _ = writeln!(out, "{indent}  {}: {}", q(k), q(v));
    }
}

fn yaml_rules(out: &mut String, field: &str, peers: &str, rules: &Rules) {
    if rules.is_empty() {
        let _ = writeln!(out, "  # none observed: every {field} is denied");
        let _ = writeln!(out, "  {field}: []");
        return;
    }
    let _ = writeln!(out, "  {field}:");
    for (peer, ports) in rules {
        let mut t = Evidence::default();
        for e in ports.values() {
            t.add(e);
        }
        match peer {
            PeerSel::Pods { workload, .. } => {
                let _ = writeln!(out, "  # {workload}: {t}");
            }
            PeerSel::Block { what, .. } => {
                let _ = writeln!(out, "  # {what}: {t}");
            }
        }
        let _ = writeln!(out, "  - {peers}:");
        match peer {
            PeerSel::Pods {
                namespace, labels, ..
            } => {
                if let Some(ns) = namespace {
                    let _ = writeln!(out, "    - namespaceSelector:");
                    let _ = writeln!(out, "        matchLabels:");
                    let _ = writeln!(out, "          {}: {}", q(NAMESPACE_NAME_LABEL), q(ns));
                    let _ = writeln!(out, "      podSelector:");
                } else {
                    let _ = writeln!(out, "    - podSelector:");
                }
                yaml_labels(out, "        ", labels);
            }
            PeerSel::Block { cidr, .. } => {
                let _ = writeln!(out, "    - ipBlock:");
                let _ = writeln!(out, "        cidr: {}", q(cidr));
            }
        }
        let _ = writeln!(out, "    ports:");
        for (p, e) in ports {
            let port = match &p.port {
                PortValue::Number(n) => n.to_string(),
                PortValue::Name(s) => q(s),
            };
            let note = if p.dns_fallback {
                "DNS over TCP: not observed, allowed as the fallback of truncated answers".into()
            } else {
                e.to_string()
            };
            let _ = writeln!(out, "    - protocol: {}", p.protocol);
            let _ = writeln!(out, "      port: {port}  # {note}");
        }
    }
}

/// The policy as YAML, with evidence comments.
fn yaml(w: &WorkloadKey, labels: &Labels, d: &Draft) -> String {
    let mut out = String::new();
    let mut all = total(&d.ingress);
    all.add(&total(&d.egress));
    let _ = writeln!(out, "# Generated by podflow advise network-policy for {w}.");
    let _ = writeln!(out, "# Observed: {all}.");
    out.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", q(&policy_name(w)));
    let _ = writeln!(out, "  namespace: {}", q(&w.namespace));
    let _ = writeln!(
        out,
        "  labels:\n    {}: {}",
        q(MANAGED_BY.0),
        q(MANAGED_BY.1)
    );
    out.push_str("spec:\n  podSelector:\n");
    yaml_labels(&mut out, "    ", labels);
    out.push_str("  policyTypes:\n  - Ingress\n  - Egress\n");
    yaml_rules(&mut out, "ingress", "from", &d.ingress);
    yaml_rules(&mut out, "egress", "to", &d.egress);
    out
}
