//! What the evaluator answers: a verdict per side of a connection, and the rule peers behind it.
use std::fmt;

/// A policy, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A traffic direction, from the selected pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The name of the rule's peer list: `from` or `to`.
    fn peers_field(self) -> &'static str {
        match self {
            Self::Ingress => "from",
            Self::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// One peer of one rule: the unit of "rules nothing used".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    pub policy: PolicyRef,
    pub direction: Direction,
    /// Index in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// Index in the rule's `from` or `to` list; `None` when the list is empty (every peer).
    pub peer: Option<usize>,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.rule)?;
        match self.peer {
            Some(peer) => write!(f, ".{}[{peer}]", self.direction.peers_field()),
            None => f.write_str(" (any peer)"),
        }
    }
}

/// A rule peer that matched a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub rule: RuleId,
    /// Index of the first entry of the rule's `ports` that matched; `None` when the rule has no
    /// ports (every port).
    pub port: Option<usize>,
}

impl fmt::Display for RuleMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rule)?;
        match self.port {
            Some(port) => write!(f, " ports[{port}]"),
            None => Ok(()),
        }
    }
}

/// The decision for one direction on one side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideVerdict {
    /// The endpoint is not a pod: no policy applies.
    NotAPod,
    /// No policy selects the pod for this direction: everything is allowed.
    NotIsolated,
    /// Isolated by `isolated_by`; allowed by every rule peer in `matches` (all of them, in policy
    /// order).
    Allowed {
        isolated_by: Vec<PolicyRef>,
        matches: Vec<RuleMatch>,
    },
    /// Isolated, no rule allows it, but it is ingress from the pod's own node.
    FromOwnNode { isolated_by: Vec<PolicyRef> },
    /// Isolated by `isolated_by` and no rule allows it.
    Denied { isolated_by: Vec<PolicyRef> },
}

impl SideVerdict {
    /// Whether this side lets the connection through.
    pub fn allows(&self) -> bool {
        !matches!(self, Self::Denied { .. })
    }

    /// The rule peers that allowed the connection (empty unless [`SideVerdict::Allowed`]).
    pub fn matches(&self) -> &[RuleMatch] {
        match self {
            Self::Allowed { matches, .. } => matches,
            _ => &[],
        }
    }
}

/// Writes `items` separated by ", ".
fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for SideVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAPod => f.write_str("not a pod"),
            Self::NotIsolated => f.write_str("not isolated"),
            Self::Allowed { matches, .. } => {
                f.write_str("allowed by ")?;
                write_list(f, matches)
            }
            Self::FromOwnNode { isolated_by } => {
                f.write_str("allowed from the pod's own node (isolated by ")?;
                write_list(f, isolated_by)?;
                f.write_str(")")
            }
            Self::Denied { isolated_by } => {
                f.write_str("denied: isolated by ")?;
                write_list(f, isolated_by)?;
                f.write_str(" and no rule allows it")
            }
        }
    }
}

/// The decision for a connection, with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Egress, on the source.
    pub egress: SideVerdict,
    /// Ingress, on the destination.
    pub ingress: SideVerdict,
    /// Namespaces whose labels a `namespaceSelector` needed but the label map did not have; the
    /// verdict assumed they carry only `kubernetes.io/metadata.name`.
    pub unknown_namespaces: Vec<String>,
}

impl Verdict {
    /// Whether both sides let the connection through.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed() { "allowed" } else { "denied" };
        write!(
            f,
            "{verdict} (egress: {}; ingress: {})",
            self.egress, self.ingress
        )?;
        if !self.unknown_namespaces.is_empty() {
            f.write_str("; labels unknown for namespaces ")?;
            write_list(f, &self.unknown_namespaces)?;
        }
        Ok(())
    }
}
