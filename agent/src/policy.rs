//! Kubernetes NetworkPolicy: the semantics podflow needs to generate and audit policies from the
//! flows it observed (issue 14).
//!
//! - [`eval`]: the evaluator. Given NetworkPolicies, the namespaces' labels and a connection
//!   (source and destination: a pod with namespace, labels, IP and named ports, or a bare address;
//!   destination port and protocol), it decides whether the policies allow the connection and
//!   why: which policy and rule peer allowed each side, or which policies isolated the pod
//!   without allowing it. It also lists the rule peers no connection used. Pure and
//!   synchronous: no Kubernetes client, no flow types. Its input types (`connection`), its
//!   answer (`verdict`) and the validated policy forms with their errors (`compile`) live in
//!   their own private modules; everything public is re-exported here and from [`eval`].
//! - [`selector`]: label selectors (`matchLabels`, `matchExpressions`), shared by the evaluator
//!   and the generator.
//! - [`generate`]: the generator. Observed connections (initiator, destination after Service
//!   translation, port, protocol, evidence) and the workloads' labels and named ports → one
//!   least-privilege NetworkPolicy per workload, deterministic YAML with the evidence of every
//!   rule as comments, and a report of what it would not allow. Tested with the evaluator: the
//!   generated policies allow every observed connection and deny the ones never observed.
//!
//! What comes next, building on both:
//!
//! - `podflow advise network-policy`: flow records over a window (ClickHouse, or a
//!   collector/agent stream for a duration) plus pod/workload/namespace/Service metadata →
//!   [`generate::Observed`] connections (which end initiated: translation records say it, TCP
//!   and UDP need more than the records carry today) → [`generate::generate`].
//! - `--check`: the same flows mapped to [`eval::Connection`]s (pods from the metadata index,
//!   backends after Service translation, nodes and host-network pods as addresses), evaluated
//!   against the existing policies (API or file): the flows they would deny, and
//!   [`eval::PolicySet::unused_rules`].
//! - The proof test: policies generated from real traffic allow every observed flow and deny
//!   the flows never observed, as this evaluator decides.
pub mod audit;
mod compile;
mod connection;
pub mod eval;
pub mod generate;
pub mod observe;
pub mod selector;
mod verdict;

pub use compile::PolicyError;
pub use connection::{
    AddressEndpoint, AddressKind, Connection, Endpoint, IpBlockScope, NamedPort, PodEndpoint,
    Protocol,
};
pub use eval::{NamespaceLabels, PolicySet};
pub use selector::{Labels, Selector, SelectorError};
pub use verdict::{Direction, PolicyRef, RuleId, RuleMatch, SideVerdict, Verdict};
