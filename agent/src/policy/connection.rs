//! What the evaluator decides: a connection between two endpoints (pods or bare addresses).
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ContainerPort;

use super::selector::Labels;

/// A transport protocol as NetworkPolicy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Any other IP protocol (by number): only rules without ports allow it.
    Other(u8),
}

impl Protocol {
    /// From an IP protocol number (6 TCP, 17 UDP, 132 SCTP, anything else [`Protocol::Other`]).
    pub fn from_number(number: u8) -> Self {
        match number {
            6 => Self::Tcp,
            17 => Self::Udp,
            132 => Self::Sctp,
            other => Self::Other(other),
        }
    }

    /// From a Kubernetes protocol name (`TCP`, `UDP`, `SCTP`; case-sensitive, as in the API).
    pub fn from_k8s(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Sctp => f.write_str("SCTP"),
            Self::Other(n) => write!(f, "IP protocol {n}"),
        }
    }
}

/// A named container port of a pod, for resolving named ports in policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

impl NamedPort {
    /// The named port a container port declares; `None` when it has no name, its number is out
    /// of range or its protocol is unknown (protocol defaults to TCP).
    pub fn from_container_port(port: &ContainerPort) -> Option<Self> {
        let name = port.name.as_deref().filter(|n| !n.is_empty())?;
        let number = u16::try_from(port.container_port)
            .ok()
            .filter(|&n| n != 0)?;
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(p) => Protocol::from_k8s(p)?,
        };
        Some(Self {
            name: name.to_owned(),
            port: number,
            protocol,
        })
    }
}

/// A pod, as far as NetworkPolicy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    pub namespace: String,
    pub labels: Labels,
    pub ip: IpAddr,
    /// Its named container ports (unnamed ones do not matter).
    pub ports: Vec<NamedPort>,
    /// The node it runs on, for the own-node ingress exception (`None`: unknown, no exception).
    pub node: Option<String>,
}

/// What a non-pod address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressKind {
    /// Outside the cluster, or nothing known owns it.
    External,
    /// A node's address.
    Node { name: Option<String> },
    /// A host-network pod's (the node's) address.
    HostNetwork { node: Option<String> },
}

/// An address that is not a pod's: only `ipBlock` peers can match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEndpoint {
    pub ip: IpAddr,
    pub kind: AddressKind,
}

/// One side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Pod(PodEndpoint),
    Address(AddressEndpoint),
}

impl Endpoint {
    /// The endpoint's address.
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::Pod(pod) => pod.ip,
            Self::Address(address) => address.ip,
        }
    }

    /// The node's name when the endpoint is a node's address (its own or a host-network pod's).
    pub(super) fn node_address_of(&self) -> Option<&str> {
        match self {
            Self::Address(AddressEndpoint {
                kind: AddressKind::Node { name: node } | AddressKind::HostNetwork { node },
                ..
            }) => node.as_deref(),
            _ => None,
        }
    }
}

/// A connection: its initiator, its destination after Service translation, and the destination
/// port and protocol (the port is ignored for [`Protocol::Other`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub protocol: Protocol,
    pub port: u16,
}

/// Which endpoints an `ipBlock` peer can match (see the [`eval`](super::eval) module
/// documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpBlockScope {
    /// Every address, pod IPs included: what the upstream conformance suite expects.
    #[default]
    AllAddresses,
    /// Every address but pods' (nodes, host-network pods and outside addresses).
    NonPodAddresses,
    /// Only [`AddressKind::External`] addresses: closer to implementations that map cluster
    /// addresses to identities before looking at CIDR rules (Cilium, by default).
    ExternalOnly,
}

impl IpBlockScope {
    pub(super) fn covers(self, endpoint: &Endpoint) -> bool {
        match (self, endpoint) {
            (Self::AllAddresses, _) => true,
            (Self::NonPodAddresses, endpoint) => matches!(endpoint, Endpoint::Address(_)),
            (Self::ExternalOnly, endpoint) => matches!(
                endpoint,
                Endpoint::Address(AddressEndpoint {
                    kind: AddressKind::External,
                    ..
                })
            ),
        }
    }
}
