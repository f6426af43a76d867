//! The audit: would existing NetworkPolicies allow the connections that were observed? The
//! connections they would deny (the outage a policy would cause), and the rules nothing used.
//!
//! Each [`Observed`] connection becomes an evaluator [`Connection`]: a workload is a pod with the
//! labels all its observed pods had (the volatile ones included: an existing policy may select
//! on anything), an outside, node or host-network address is itself. A workload's pods have no
//! one address here, so `ipBlock` peers are matched against non-pod addresses only
//! ([`IpBlockScope::NonPodAddresses`], what `ipBlock` is documented for); named ports resolve
//! against the workload's named ports when known.
use std::{collections::BTreeMap, fmt, net::IpAddr};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    PolicyError,
    connection::{AddressEndpoint, AddressKind, Connection, Endpoint, IpBlockScope, PodEndpoint},
    eval::{NamespaceLabels, PolicySet},
    generate::{Observed, Peer, Workload, WorkloadKey},
    verdict::{RuleId, Verdict},
};

/// The audit's answer.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Connections the policies would deny, with the verdict saying why.
    pub denied: Vec<(Observed, Verdict)>,
    /// Connections allowed.
    pub allowed: usize,
    /// Connections with an end podflow could not name: not checked.
    pub unchecked: Vec<Observed>,
    /// Rule peers no observed connection used.
    pub unused: Vec<RuleId>,
    /// Namespaces whose labels a `namespaceSelector` needed and nobody gave (assumed to carry
    /// only `kubernetes.io/metadata.name`).
    pub unknown_namespaces: Vec<String>,
}

/// Checks `observed` against `policies`.
pub fn audit(
    policies: &[NetworkPolicy],
    workloads: &BTreeMap<WorkloadKey, Workload>,
    namespaces: &NamespaceLabels,
    observed: &[Observed],
) -> Result<Audit, PolicyError> {
    let set = PolicySet::new(policies)?.with_ip_block_scope(IpBlockScope::NonPodAddresses);
    let mut out = Audit::default();
    let mut verdicts = Vec::new();
    let mut unknown = std::collections::BTreeSet::new();
    for o in observed {
        let (Some(src), Some(dst)) = (endpoint(&o.src, workloads), endpoint(&o.dst, workloads))
        else {
            out.unchecked.push(o.clone());
            continue;
        };
        let verdict = set.evaluate(
            namespaces,
            &Connection {
                src,
                dst,
                protocol: o.protocol,
                port: o.port,
            },
        );
        unknown.extend(verdict.unknown_namespaces.iter().cloned());
        if verdict.allowed() {
            out.allowed += 1;
        } else {
            out.denied.push((o.clone(), verdict.clone()));
        }
        verdicts.push(verdict);
    }
    out.unused = set.unused_rules(&verdicts);
    out.unknown_namespaces = unknown.into_iter().collect();
    Ok(out)
}

/// A peer as the evaluator sees it; `None` for an unnamed one.
fn endpoint(p: &Peer, workloads: &BTreeMap<WorkloadKey, Workload>) -> Option<Endpoint> {
    let address = |ip: IpAddr, kind| Some(Endpoint::Address(AddressEndpoint { ip, kind }));
    match p {
        Peer::Workload(w) => {
            let known = workloads.get(w);
            Some(Endpoint::Pod(PodEndpoint {
                namespace: w.namespace.clone(),
                labels: known.map(|k| k.labels.clone()).unwrap_or_default(),
                // Never matched by an ipBlock (see the module documentation).
                ip: IpAddr::from([0, 0, 0, 0]),
                ports: known.map(|k| k.ports.clone()).unwrap_or_default(),
                node: None,
            }))
        }
        Peer::External(ip) => address(*ip, AddressKind::External),
        Peer::Node { ip, name } => address(*ip, AddressKind::Node { name: name.clone() }),
        Peer::HostNetwork { ip, node } => {
            address(*ip, AddressKind::HostNetwork { node: node.clone() })
        }
        Peer::Unnamed { .. } => None,
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} observed connection(s) allowed, {} denied, {} not checked; {} rule peer(s) \
             unused",
            self.allowed,
            self.denied.len(),
            self.unchecked.len(),
            self.unused.len()
        )?;
        for (o, verdict) in &self.denied {
            writeln!(
                f,
                "denied: {} -> {} {}/{} ({}): {verdict}",
                o.src, o.dst, o.protocol, o.port, o.evidence
            )?;
        }
        for o in &self.unchecked {
            writeln!(
                f,
                "not checked: {} -> {} {}/{} ({} flows): an end could not be named",
                o.src, o.dst, o.protocol, o.port, o.evidence.flows
            )?;
        }
        for rule in &self.unused {
            writeln!(f, "unused: {rule}")?;
        }
        if !self.unknown_namespaces.is_empty() {
            writeln!(
                f,
                "labels unknown (assumed only kubernetes.io/metadata.name) for namespaces: {}",
                self.unknown_namespaces.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::{
        connection::Protocol,
        generate::{Evidence, Options, generate},
    };

    fn key(ns: &str, name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: ns.into(),
            kind: "Deployment".into(),
            name: name.into(),
        }
    }

    fn workloads() -> BTreeMap<WorkloadKey, Workload> {
        [
            ("shop", "web", "web"),
            ("shop", "api", "api"),
            ("data", "db", "db"),
        ]
        .into_iter()
        .map(|(ns, name, app)| {
            (
                key(ns, name),
                Workload {
                    labels: [("app".to_string(), app.to_string())].into(),
                    ports: vec![],
                },
            )
        })
        .collect()
    }

    fn observed(src: Peer, dst: Peer, port: u16) -> Observed {
        Observed {
            src,
            dst,
            protocol: Protocol::Tcp,
            port,
            evidence: Evidence {
                flows: 2,
                bytes: 200,
                first: 1_765_000_000,
                last: 1_765_000_100,
            },
        }
    }

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn denied_connections_and_unused_rules_are_named() {
        let w = Peer::Workload;
        let traffic = vec![
            observed(w(key("shop", "web")), w(key("shop", "api")), 8080),
            observed(w(key("shop", "api")), w(key("data", "db")), 5432),
            observed(
                w(key("shop", "api")),
                Peer::External("203.0.113.7".parse().unwrap()),
                443,
            ),
            observed(
                w(key("shop", "web")),
                Peer::Unnamed {
                    ip: None,
                    why: "no known owner".into(),
                },
                80,
            ),
        ];
        // The db allows the api on 5432 and, unused, the web; the api isolates its egress and
        // allows only the db: the outside call would break.
        let policies = vec![
            policy(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, \
                 namespace: data}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  \
                 - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \
                 shop}}\n      podSelector: {matchLabels: {app: api}}\n    ports: [{port: \
                 5432}]\n  - from:\n    - namespaceSelector: {matchLabels: {team: shop}}\n",
            ),
            policy(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api, \
                 namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  \
                 policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: \
                 {matchLabels: {kubernetes.io/metadata.name: data}}\n    ports: [{port: 5432}]\n",
            ),
        ];
        let a = audit(&policies, &workloads(), &NamespaceLabels::new(), &traffic).unwrap();
        let text = a.to_string();
        assert_eq!(
            text,
            "2 observed connection(s) allowed, 1 denied, 1 not checked; 1 rule peer(s) unused\n\
             denied: shop/Deployment/api -> external 203.0.113.7 TCP/443 (2 flows, 200 bytes, \
             first 2025-12-06T05:46:40Z, last 2025-12-06T05:48:20Z): denied (egress: denied: \
             isolated by shop/api and no rule allows it; ingress: not a pod)\n\
             not checked: shop/Deployment/web -> an endpoint without address (no known owner) \
             TCP/80 (2 flows): an end could not be named\n\
             unused: data/db ingress[1].from[0]\n\
             labels unknown (assumed only kubernetes.io/metadata.name) for namespaces: shop\n"
        );

        // The policies generated from the same traffic pass their own audit, every rule used.
        let advice = generate(&workloads(), &traffic, Options::default());
        let policies: Vec<NetworkPolicy> =
            advice.policies.iter().map(|g| g.policy.clone()).collect();
        let a = audit(&policies, &workloads(), &NamespaceLabels::new(), &traffic).unwrap();
        assert_eq!(
            (a.allowed, a.denied.len(), a.unused.len()),
            (3, 0, 0),
            "{a}"
        );
    }
}
