//! The checks of one rendering: namespaces, no Secret, then the agent, the collector (with its
//! ClickHouse store) and RBAC.
use k8s_openapi::api::core::v1::Namespace;

use super::{
    NAMESPACE,
    agent::check_agent,
    collector::check_collector,
    objects::{Object, named},
    overlays::Overlay,
    problems::Problems,
    rbac::check_rbac,
};

/// Checks a rendering's security settings, RBAC and wiring (see the module documentation).
pub fn check_manifests(objects: &[Object], overlay: &Overlay) -> anyhow::Result<()> {
    let mut p = Problems::default();

    // Namespaces: everything namespaced lives in podflow.
    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "PriorityClass",
    ];
    p.expect(named::<Namespace>(objects, NAMESPACE).is_some(), || {
        format!("no Namespace {NAMESPACE}")
    });
    for o in objects
        .iter()
        .filter(|o| !cluster_scoped.contains(&o.kind()))
    {
        p.expect(o.metadata().namespace.as_deref() == Some(NAMESPACE), || {
            format!("{} {} is not in namespace {NAMESPACE}", o.kind(), o.name())
        });
    }

    check_agent(&mut p, objects, overlay);
    check_collector(&mut p, objects, overlay);
    check_rbac(&mut p, objects);
    // Secrets are created with kubectl (deploy/README.md): one in the manifests is in git.
    for o in objects.iter().filter(|o| o.kind() == "Secret") {
        p.push(format!(
            "Secret {} in the manifests: create it with kubectl, a committed Secret is a leaked one",
            o.name()
        ));
    }
    let rules = objects.iter().filter(|o| o.kind() == "PrometheusRule");
    p.expect(rules.count() == 1, || {
        "expected exactly one PrometheusRule".into()
    });
    p.into_result()
}

/// The committed rendering (deploy/podflow.yaml) as objects, the means to change them, and the
/// problems [`check_manifests`] reports.
#[cfg(test)]
pub mod fixtures {
    use k8s_openapi::api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Container, PodSpec},
    };

    use super::super::{
        AGENT, COLLECTOR, RENDERED,
        objects::{Object, named_mut, parse_docs, parse_objects},
        overlays::{BASE, Overlay},
        read,
    };

    pub fn committed() -> Vec<Object> {
        parse_objects(&parse_docs(&read(RENDERED).unwrap()).unwrap()).unwrap()
    }

    pub fn problems(objects: &[Object]) -> String {
        problems_in(objects, &BASE)
    }

    /// The problems of `objects` as a rendering of `overlay`.
    pub fn problems_in(objects: &[Object], overlay: &Overlay) -> String {
        format!(
            "{:#}",
            super::check_manifests(objects, overlay).unwrap_err()
        )
    }

    /// The agent DaemonSet's pod spec.
    pub fn agent_pod(objects: &mut [Object]) -> &mut PodSpec {
        let ds = named_mut::<DaemonSet>(objects, AGENT).unwrap();
        ds.spec.as_mut().unwrap().template.spec.as_mut().unwrap()
    }

    /// The agent's (only) container.
    pub fn agent_container(objects: &mut [Object]) -> &mut Container {
        &mut agent_pod(objects).containers[0]
    }

    /// The collector Deployment's pod spec.
    pub fn collector_pod(objects: &mut [Object]) -> &mut PodSpec {
        let dep = named_mut::<Deployment>(objects, COLLECTOR).unwrap();
        dep.spec.as_mut().unwrap().template.spec.as_mut().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::{check_manifests, fixtures::committed};
    use crate::deploy::overlays::BASE;

    #[test]
    fn committed_rendering_passes() {
        check_manifests(&committed(), &BASE).unwrap();
    }
}
