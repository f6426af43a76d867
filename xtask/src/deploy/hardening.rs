//! Container hardening shared by the agent and the collector (privileges, seccomp, resources).
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::problems::Problems;

/// Container checks shared by the agent and the collector (`add`: the capabilities it adds).
pub fn check_container_hardening(
    p: &mut Problems,
    what: &str,
    pod: &PodSpec,
    c: &Container,
    add: &[&str],
) {
    // `name` is required, so the typed model reads a missing one as "" (untyped, it was "?").
    let cname = if c.name.is_empty() { "?" } else { &c.name };
    let sc = c.security_context.as_ref();
    p.expect(sc.and_then(|s| s.privileged) != Some(true), || {
        format!("{what} container {cname}: privileged: true")
    });
    p.expect(
        sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        || format!("{what} container {cname}: allowPrivilegeEscalation must be false"),
    );
    p.expect(
        sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        || format!("{what} container {cname}: readOnlyRootFilesystem must be true"),
    );
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let drop: Vec<&str> = caps
        .and_then(|c| c.drop.as_ref())
        .map(|d| d.iter().map(String::as_str).collect())
        .unwrap_or_default();
    p.expect(drop == ["ALL"], || {
        format!("{what} container {cname}: capabilities.drop must be [ALL], is {drop:?}")
    });
    let added: Vec<&str> = caps
        .and_then(|c| c.add.as_ref())
        .map(|a| a.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut sorted = added.clone();
    sorted.sort_unstable();
    let mut want = add.to_vec();
    want.sort_unstable();
    p.expect(sorted == want && added.len() == want.len(), || {
        format!("{what} container {cname}: capabilities.add must be exactly {want:?}, is {added:?}")
    });
    // The container's profile, else the pod's. (`type` is required, so the typed model reads a
    // profile without one as type "", which fails here; untyped, that fell back to the pod's
    // profile. kubernetes-validate rejects such a profile either way.)
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod.security_context.as_ref()?.seccomp_profile.as_ref());
    p.expect(
        seccomp.map(|s| s.type_.as_str()) == Some("RuntimeDefault"),
        || format!("{what} container {cname}: seccompProfile must be RuntimeDefault"),
    );
    let resources = c.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    for (section, quantities, r) in [
        ("requests", requests, "cpu"),
        ("requests", requests, "memory"),
        ("limits", limits, "memory"),
    ] {
        p.expect(quantities.is_some_and(|q| q.contains_key(r)), || {
            format!("{what} container {cname}: no resources.{section}.{r}")
        });
    }
    let image = c.image.as_deref().unwrap_or("");
    p.expect(
        image.contains('/') && (image.contains('@') || image.rsplit('/').next().is_some_and(|n| n.contains(':')))
            && !image.ends_with(":latest"),
        || format!("{what} container {cname}: image {image:?} must be a registry path with a tag (not latest) or digest"),
    );
}

#[cfg(test)]
mod tests {
    use super::super::{
        manifests::fixtures::{agent_container, committed, problems},
        objects::Object,
    };

    #[test]
    fn rejects_privileged_and_extra_capabilities() {
        let mut d = committed();
        agent_container(&mut d)
            .security_context
            .get_or_insert_default()
            .privileged = Some(true);
        assert!(
            problems(&d).contains("privileged: true"),
            "{}",
            problems(&d)
        );

        let add = |d: &mut [Object], caps: &[&str]| {
            let sc = agent_container(d).security_context.get_or_insert_default();
            sc.capabilities.get_or_insert_default().add =
                Some(caps.iter().map(|c| c.to_string()).collect());
        };
        let mut d = committed();
        add(&mut d, &["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]);
        assert!(
            problems(&d).contains("capabilities.add must be exactly"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        add(&mut d, &["BPF", "NET_ADMIN"]);
        assert!(
            problems(&d).contains("capabilities.add must be exactly"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        let sc = agent_container(&mut d)
            .security_context
            .get_or_insert_default();
        sc.read_only_root_filesystem = Some(false);
        sc.allow_privilege_escalation = Some(true);
        let pr = problems(&d);
        assert!(
            pr.contains("readOnlyRootFilesystem") && pr.contains("allowPrivilegeEscalation"),
            "{pr}"
        );
    }
}
