//! NetworkPolicies validated once into the forms the evaluator matches, and why one is rejected.
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::connection::Protocol;
use super::selector::{Selector, SelectorError};
use super::verdict::{Direction, PolicyRef};
use crate::net::IpNet;

/// Why a NetworkPolicy was rejected. `field` is the path inside the object
/// (`spec.ingress[0].from[1].ipBlock.cidr`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// A policy without `metadata.name`.
    #[error("a NetworkPolicy has no metadata.name")]
    MissingName,
    /// A policy without `metadata.namespace` (it decides which pods the policy selects).
    #[error("NetworkPolicy {name:?} has no metadata.namespace")]
    MissingNamespace { name: String },
    /// Two policies with the same namespace and name.
    #[error("NetworkPolicy {policy} is given twice")]
    Duplicate { policy: PolicyRef },
    /// A `policyTypes` entry other than `Ingress` and `Egress`.
    #[error("NetworkPolicy {policy}: {field} is {value:?}, expected Ingress or Egress")]
    UnknownPolicyType {
        policy: PolicyRef,
        field: String,
        value: String,
    },
    /// An invalid label selector.
    #[error("NetworkPolicy {policy}: invalid {field}")]
    Selector {
        policy: PolicyRef,
        field: String,
        #[source]
        source: SelectorError,
    },
    /// A peer without podSelector, namespaceSelector and ipBlock.
    #[error("NetworkPolicy {policy}: {field} sets none of podSelector, namespaceSelector, ipBlock")]
    EmptyPeer { policy: PolicyRef, field: String },
    /// A peer with ipBlock and a selector.
    #[error("NetworkPolicy {policy}: {field} sets ipBlock together with a selector")]
    IpBlockWithSelector { policy: PolicyRef, field: String },
    /// An ipBlock `cidr` or `except` entry that is not a CIDR prefix.
    #[error("NetworkPolicy {policy}: {field} {value:?} is not a CIDR prefix")]
    InvalidCidr {
        policy: PolicyRef,
        field: String,
        value: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    /// An `except` entry that is not a strict subset of the block's `cidr`.
    #[error("NetworkPolicy {policy}: {field} {except} is not a strict subset of cidr {cidr}")]
    ExceptOutsideCidr {
        policy: PolicyRef,
        field: String,
        except: IpNet,
        cidr: IpNet,
    },
    /// A protocol other than TCP, UDP and SCTP.
    #[error("NetworkPolicy {policy}: {field} is {value:?}, expected TCP, UDP or SCTP")]
    UnknownProtocol {
        policy: PolicyRef,
        field: String,
        value: String,
    },
    /// A port number outside 1–65535.
    #[error("NetworkPolicy {policy}: {field} is {value}, expected a port number from 1 to 65535")]
    InvalidPort {
        policy: PolicyRef,
        field: String,
        value: i32,
    },
    /// A port name that is not an IANA service name (1–15 lowercase letters, digits and inner
    /// single hyphens, at least one letter).
    #[error("NetworkPolicy {policy}: {field} {value:?} is not a valid port name")]
    InvalidPortName {
        policy: PolicyRef,
        field: String,
        value: String,
    },
    /// `endPort` without a numeric `port`.
    #[error("NetworkPolicy {policy}: {field} sets endPort without a numeric port")]
    EndPortWithoutNumber { policy: PolicyRef, field: String },
    /// `endPort` below `port`.
    #[error("NetworkPolicy {policy}: {field} has endPort {end} below port {start}")]
    EndPortBelowPort {
        policy: PolicyRef,
        field: String,
        start: u16,
        end: u16,
    },
}

/// A validated peer.
#[derive(Debug, Clone)]
pub(super) enum Peer {
    /// Pods matching `pods` in the namespaces matching `namespaces` (`None`: the policy's own).
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// Addresses inside `cidr` and outside every `except`.
    Block { cidr: IpNet, except: Vec<IpNet> },
}

/// Which ports of a protocol a port entry allows.
#[derive(Debug, Clone)]
pub(super) enum PortMatch {
    Any,
    Range { start: u16, end: u16 },
    Named(String),
}

/// A validated `ports` entry.
#[derive(Debug, Clone)]
pub(super) struct PortSpec {
    pub(super) protocol: Protocol,
    pub(super) port: PortMatch,
}

/// A validated ingress or egress rule; `None` lists mean "all".
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) peers: Option<Vec<Peer>>,
    pub(super) ports: Option<Vec<PortSpec>>,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub(super) struct CompiledPolicy {
    pub(super) id: PolicyRef,
    pub(super) pod_selector: Selector,
    affects_ingress: bool,
    affects_egress: bool,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
}

impl CompiledPolicy {
    pub(super) fn affects(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.affects_ingress,
            Direction::Egress => self.affects_egress,
        }
    }

    pub(super) fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

pub(super) fn compile_policy(policy: &NetworkPolicy) -> Result<CompiledPolicy, PolicyError> {
    let name = policy
        .metadata
        .name
        .clone()
        .ok_or(PolicyError::MissingName)?;
    let Some(namespace) = policy.metadata.namespace.clone() else {
        return Err(PolicyError::MissingNamespace { name });
    };
    let id = PolicyRef { namespace, name };
    let default_spec = Default::default();
    let spec = policy.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = match &spec.pod_selector {
        Some(selector) => compile_selector(&id, "spec.podSelector", selector)?,
        None => Selector::everything(),
    };
    let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
    let egress_rules = spec.egress.as_deref().unwrap_or_default();
    let (affects_ingress, affects_egress) = match spec.policy_types.as_deref() {
        None | Some([]) => (true, !egress_rules.is_empty()),
        Some(types) => {
            let (mut ingress, mut egress) = (false, false);
            for (i, value) in types.iter().enumerate() {
                match value.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    _ => {
                        return Err(PolicyError::UnknownPolicyType {
                            policy: id,
                            field: format!("spec.policyTypes[{i}]"),
                            value: value.clone(),
                        });
                    }
                }
            }
            (ingress, egress)
        }
    };
    let ingress = ingress_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let path = format!("spec.ingress[{i}]");
            compile_rule(
                &id,
                &path,
                "from",
                rule.from.as_deref(),
                rule.ports.as_deref(),
            )
        })
        .collect::<Result<_, _>>()?;
    let egress = egress_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let path = format!("spec.egress[{i}]");
            compile_rule(&id, &path, "to", rule.to.as_deref(), rule.ports.as_deref())
        })
        .collect::<Result<_, _>>()?;
    Ok(CompiledPolicy {
        id,
        pod_selector,
        affects_ingress,
        affects_egress,
        ingress,
        egress,
    })
}

fn compile_selector(
    policy: &PolicyRef,
    field: &str,
    selector: &LabelSelector,
) -> Result<Selector, PolicyError> {
    Selector::compile(selector).map_err(|source| PolicyError::Selector {
        policy: policy.clone(),
        field: field.to_owned(),
        source,
    })
}

fn compile_rule(
    policy: &PolicyRef,
    path: &str,
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, PolicyError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(peers) => Some(
            peers
                .iter()
                .enumerate()
                .map(|(i, peer)| compile_peer(policy, &format!("{path}.{peers_field}[{i}]"), peer))
                .collect::<Result<_, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(ports) => Some(
            ports
                .iter()
                .enumerate()
                .map(|(i, port)| compile_port(policy, &format!("{path}.ports[{i}]"), port))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

fn compile_peer(
    policy: &PolicyRef,
    path: &str,
    peer: &NetworkPolicyPeer,
) -> Result<Peer, PolicyError> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(block), None, None) => compile_block(policy, &format!("{path}.ipBlock"), block),
        (Some(_), _, _) => Err(PolicyError::IpBlockWithSelector {
            policy: policy.clone(),
            field: path.to_owned(),
        }),
        (None, None, None) => Err(PolicyError::EmptyPeer {
            policy: policy.clone(),
            field: path.to_owned(),
        }),
        (None, namespaces, pods) => Ok(Peer::Pods {
            namespaces: namespaces
                .as_ref()
                .map(|s| compile_selector(policy, &format!("{path}.namespaceSelector"), s))
                .transpose()?,
            pods: match pods {
                Some(s) => compile_selector(policy, &format!("{path}.podSelector"), s)?,
                None => Selector::everything(),
            },
        }),
    }
}

fn compile_block(policy: &PolicyRef, path: &str, block: &IPBlock) -> Result<Peer, PolicyError> {
    let parse = |field: String, value: &str| {
        value
            .trim()
            .parse::<IpNet>()
            .map_err(|source| PolicyError::InvalidCidr {
                policy: policy.clone(),
                field,
                value: value.to_owned(),
                source,
            })
    };
    let cidr = parse(format!("{path}.cidr"), &block.cidr)?;
    let mut except = Vec::new();
    for (i, value) in block.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{i}]");
        let net = parse(field.clone(), value)?;
        if net.prefix_len() <= cidr.prefix_len() || !cidr.contains(&net) {
            return Err(PolicyError::ExceptOutsideCidr {
                policy: policy.clone(),
                field,
                except: net,
                cidr,
            });
        }
        except.push(net);
    }
    Ok(Peer::Block { cidr, except })
}

fn compile_port(
    policy: &PolicyRef,
    path: &str,
    port: &NetworkPolicyPort,
) -> Result<PortSpec, PolicyError> {
    let protocol = match port.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(value) => Protocol::from_k8s(value).ok_or_else(|| PolicyError::UnknownProtocol {
            policy: policy.clone(),
            field: format!("{path}.protocol"),
            value: value.to_owned(),
        })?,
    };
    let number = |field: &str, value: i32| {
        u16::try_from(value)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| PolicyError::InvalidPort {
                policy: policy.clone(),
                field: format!("{path}.{field}"),
                value,
            })
    };
    let without_number = || PolicyError::EndPortWithoutNumber {
        policy: policy.clone(),
        field: path.to_owned(),
    };
    let port = match (&port.port, port.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) | (Some(IntOrString::String(_)), Some(_)) => return Err(without_number()),
        (Some(IntOrString::String(name)), None) => {
            if !is_port_name(name) {
                return Err(PolicyError::InvalidPortName {
                    policy: policy.clone(),
                    field: format!("{path}.port"),
                    value: name.clone(),
                });
            }
            PortMatch::Named(name.clone())
        }
        (Some(IntOrString::Int(start)), end) => {
            let start = number("port", *start)?;
            let end = match end {
                None => start,
                Some(end) => {
                    let end = number("endPort", end)?;
                    if end < start {
                        return Err(PolicyError::EndPortBelowPort {
                            policy: policy.clone(),
                            field: path.to_owned(),
                            start,
                            end,
                        });
                    }
                    end
                }
            };
            PortMatch::Range { start, end }
        }
    };
    Ok(PortSpec { protocol, port })
}

/// Whether `name` is an IANA service name, as Kubernetes requires of port names: 1–15 characters
/// of `a-z`, `0-9` and `-`, at least one letter, no hyphen first, last or next to another.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}
