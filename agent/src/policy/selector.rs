//! Kubernetes label selectors (`metav1.LabelSelector`), validated once and matched many times.
//!
//! Semantics are apimachinery's: `matchLabels` and `matchExpressions` are ANDed; `In` needs the
//! key with one of the values, `NotIn` matches when the key is absent or its value is not listed,
//! `Exists` / `DoesNotExist` test the key only; the empty selector matches everything. (A *null*
//! selector, which matches nothing in apimachinery, is the caller's business: NetworkPolicy gives
//! each absent selector its own meaning.)
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A label set: key → value.
pub type Labels = BTreeMap<String, String>;

/// Why a label selector was rejected (the API server rejects the same selectors).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SelectorError {
    /// An operator other than `In`, `NotIn`, `Exists` and `DoesNotExist`.
    #[error(
        "unknown operator {operator:?} for key {key:?}: expected In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator { key: String, operator: String },
    /// `In` or `NotIn` without values.
    #[error("operator {operator} for key {key:?} needs at least one value")]
    MissingValues { key: String, operator: &'static str },
    /// `Exists` or `DoesNotExist` with values.
    #[error("operator {operator} for key {key:?} takes no values")]
    UnexpectedValues { key: String, operator: &'static str },
}

/// One requirement of a selector; all of them must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `matchLabels` entry: the key is present with this value.
    Equals { key: String, value: String },
    /// The key is present with one of the values.
    In {
        key: String,
        values: BTreeSet<String>,
    },
    /// The key is absent, or present with none of the values.
    NotIn {
        key: String,
        values: BTreeSet<String>,
    },
    /// The key is present, whatever its value.
    Exists { key: String },
    /// The key is absent.
    DoesNotExist { key: String },
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Self::Equals { key, .. }
            | Self::In { key, .. }
            | Self::NotIn { key, .. }
            | Self::Exists { key }
            | Self::DoesNotExist { key } => key,
        }
    }

    fn holds<'a>(&self, get: &impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Self::Equals { key, value } => get(key) == Some(value.as_str()),
            Self::In { key, values } => get(key).is_some_and(|v| values.contains(v)),
            Self::NotIn { key, values } => get(key).is_none_or(|v| !values.contains(v)),
            Self::Exists { key } => get(key).is_some(),
            Self::DoesNotExist { key } => get(key).is_none(),
        }
    }
}

/// A validated label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The empty selector: matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Validates a Kubernetes selector.
    pub fn compile(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements: Vec<Requirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(key, value)| Requirement::Equals {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        for expr in selector.match_expressions.iter().flatten() {
            let key = expr.key.clone();
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let requirement = match expr.operator.as_str() {
                operator @ ("In" | "NotIn") => {
                    let operator = if operator == "In" { "In" } else { "NotIn" };
                    if values.is_empty() {
                        return Err(SelectorError::MissingValues { key, operator });
                    }
                    if operator == "In" {
                        Requirement::In { key, values }
                    } else {
                        Requirement::NotIn { key, values }
                    }
                }
                operator @ ("Exists" | "DoesNotExist") => {
                    let exists = operator == "Exists";
                    if !values.is_empty() {
                        let operator = if exists { "Exists" } else { "DoesNotExist" };
                        return Err(SelectorError::UnexpectedValues { key, operator });
                    }
                    if exists {
                        Requirement::Exists { key }
                    } else {
                        Requirement::DoesNotExist { key }
                    }
                }
                other => {
                    return Err(SelectorError::UnknownOperator {
                        key,
                        operator: other.to_owned(),
                    });
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether the selector is empty (matches everything).
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether every requirement is about `key` (true for the empty selector).
    pub fn refers_only_to(&self, key: &str) -> bool {
        self.requirements.iter().all(|r| r.key() == key)
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// Like [`Selector::matches`], with the labels given by a lookup function (for label sets
    /// with implied entries, such as a namespace's `kubernetes.io/metadata.name`).
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.holds(&get))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Result<Selector, SelectorError> {
        let parsed: LabelSelector = serde_yaml::from_str(yaml).expect("selector YAML");
        Selector::compile(&parsed)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = selector("{}").expect("valid");
        assert!(s.is_everything());
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("app", "db")])));
        let s = selector("matchLabels: {}\nmatchExpressions: []").expect("valid");
        assert!(s.is_everything() && s.matches(&Labels::new()));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = selector(
            r"
matchLabels: {app: db}
matchExpressions:
  - {key: tier, operator: In, values: [backend, cache]}
  - {key: env, operator: NotIn, values: [dev]}
  - {key: team, operator: Exists}
  - {key: legacy, operator: DoesNotExist}
",
        )
        .expect("valid");
        let good = labels(&[("app", "db"), ("tier", "cache"), ("team", "x")]);
        assert!(s.matches(&good));
        let mut prod = good.clone();
        prod.insert("env".into(), "prod".into());
        assert!(s.matches(&prod), "NotIn holds for another value");
        let mut dev = good.clone();
        dev.insert("env".into(), "dev".into());
        assert!(!s.matches(&dev), "NotIn fails for a listed value");
        let mut legacy = good.clone();
        legacy.insert("legacy".into(), String::new());
        assert!(
            !s.matches(&legacy),
            "DoesNotExist fails when the key is set"
        );
        let mut other_app = good.clone();
        other_app.insert("app".into(), "web".into());
        assert!(!s.matches(&other_app), "matchLabels value differs");
        let mut no_team = good.clone();
        no_team.remove("team");
        assert!(!s.matches(&no_team), "Exists fails without the key");
        let mut frontend = good;
        frontend.insert("tier".into(), "frontend".into());
        assert!(!s.matches(&frontend), "In fails for an unlisted value");
        frontend.remove("tier");
        assert!(!s.matches(&frontend), "In fails without the key");
    }

    #[test]
    fn lookup_function_and_key_scope() {
        let s = selector("matchLabels: {kubernetes.io/metadata.name: y}").expect("valid");
        assert!(s.matches_with(|k| (k == "kubernetes.io/metadata.name").then_some("y")));
        assert!(!s.matches_with(|_| None));
        assert!(s.refers_only_to("kubernetes.io/metadata.name"));
        assert!(!s.refers_only_to("team"));
        assert!(Selector::everything().refers_only_to("anything"));
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        assert_eq!(
            selector("matchExpressions: [{key: a, operator: Equals, values: [b]}]"),
            Err(SelectorError::UnknownOperator {
                key: "a".into(),
                operator: "Equals".into()
            })
        );
        assert_eq!(
            selector("matchExpressions: [{key: a, operator: In}]"),
            Err(SelectorError::MissingValues {
                key: "a".into(),
                operator: "In"
            })
        );
        assert_eq!(
            selector("matchExpressions: [{key: a, operator: NotIn, values: []}]"),
            Err(SelectorError::MissingValues {
                key: "a".into(),
                operator: "NotIn"
            })
        );
        assert_eq!(
            selector("matchExpressions: [{key: a, operator: Exists, values: [b]}]"),
            Err(SelectorError::UnexpectedValues {
                key: "a".into(),
                operator: "Exists"
            })
        );
    }
}
