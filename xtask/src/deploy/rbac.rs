//! RBAC: the agent's ClusterRole is exactly get/list/watch on its resources, bound to it alone.
use std::collections::BTreeSet;

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};

use super::{
    AGENT, COLLECTOR, NAMESPACE,
    objects::{Object, all, name_of, named},
    problems::Problems,
};

/// What the agent's ClusterRole grants: (API group, resource), each with exactly these verbs.
pub const AGENT_RBAC: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "nodes"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
];
/// The verbs each of [`AGENT_RBAC`] is granted.
pub const AGENT_RBAC_VERBS: &[&str] = &["get", "list", "watch"];

/// RBAC: no namespaced roles, one ClusterRole and one binding, and the collector's ServiceAccount.
pub fn check_rbac(p: &mut Problems, objects: &[Object]) {
    for k in ["Role", "RoleBinding"] {
        p.expect(!objects.iter().any(|o| o.kind() == k), || {
            format!("RBAC: no {k} expected")
        });
    }
    let roles: Vec<&ClusterRole> = all(objects).collect();
    p.expect(roles.len() == 1 && name_of(roles[0]) == AGENT, || {
        format!("RBAC: expected exactly one ClusterRole, {AGENT}")
    });
    let mut granted = BTreeSet::new();
    for role in &roles {
        p.expect(role.aggregation_rule.is_none(), || {
            "RBAC: no aggregationRule".into()
        });
        for rule in role.rules.iter().flatten() {
            p.expect(
                rule.non_resource_urls.is_none() && rule.resource_names.is_none(),
                || "RBAC: no nonResourceURLs or resourceNames expected".into(),
            );
            for g in rule.api_groups.iter().flatten() {
                for r in rule.resources.iter().flatten() {
                    for v in &rule.verbs {
                        granted.insert((g.to_string(), r.to_string(), v.to_string()));
                    }
                }
            }
        }
    }
    let want: BTreeSet<(String, String, String)> = AGENT_RBAC
        .iter()
        .flat_map(|(g, r)| {
            AGENT_RBAC_VERBS
                .iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    let extra: Vec<_> = granted.difference(&want).collect();
    let missing: Vec<_> = want.difference(&granted).collect();
    p.expect(extra.is_empty() && missing.is_empty(), || {
        format!("RBAC: the agent's ClusterRole grants extra {extra:?} and lacks {missing:?}")
    });
    let bindings: Vec<&ClusterRoleBinding> = all(objects).collect();
    p.expect(bindings.len() == 1, || {
        "RBAC: expected exactly one ClusterRoleBinding".into()
    });
    for b in bindings {
        p.expect(
            b.role_ref.kind == "ClusterRole" && b.role_ref.name == AGENT,
            || "RBAC: the binding must refer to ClusterRole podflow-agent".into(),
        );
        let subjects = b.subjects.as_deref().unwrap_or_default();
        p.expect(
            subjects.len() == 1
                && subjects[0].kind == "ServiceAccount"
                && subjects[0].name == AGENT
                && subjects[0].namespace.as_deref() == Some(NAMESPACE),
            || {
                format!(
                    "RBAC: the binding's only subject must be ServiceAccount {NAMESPACE}/{AGENT}"
                )
            },
        );
    }
    let collector_sa = named::<ServiceAccount>(objects, COLLECTOR);
    p.expect(
        collector_sa.and_then(|sa| sa.automount_service_account_token) == Some(false),
        || {
            format!(
                "ServiceAccount {COLLECTOR} must exist with automountServiceAccountToken: false"
            )
        },
    );
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};

    use super::super::{
        AGENT,
        manifests::fixtures::{committed, problems},
        objects::{Object, named_mut},
    };

    fn first_rule(d: &mut [Object]) -> &mut PolicyRule {
        let role = named_mut::<ClusterRole>(d, AGENT).unwrap();
        &mut role.rules.as_mut().unwrap()[0]
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rejects_rbac_beyond_read_only() {
        let mut d = committed();
        first_rule(&mut d).verbs = strings(&["get", "list", "watch", "delete"]);
        assert!(problems(&d).contains("grants extra"), "{}", problems(&d));

        let mut d = committed();
        first_rule(&mut d).resources = Some(strings(&["pods", "services", "nodes", "secrets"]));
        assert!(problems(&d).contains("\"secrets\""), "{}", problems(&d));

        let mut d = committed();
        first_rule(&mut d).resources = Some(strings(&["pods", "services"]));
        assert!(problems(&d).contains("lacks"), "{}", problems(&d));

        let mut d = committed();
        let binding = named_mut::<ClusterRoleBinding>(&mut d, AGENT).unwrap();
        binding.subjects.as_mut().unwrap()[0].name = "default".into();
        assert!(problems(&d).contains("only subject"), "{}", problems(&d));
    }
}
