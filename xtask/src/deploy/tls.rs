//! The TLS flags of the agent and the collector: files on a read-only secret mount.
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::{container::Flags, problems::Problems};

/// The CA flag (`ca_flag`: `tls-ca` on the agent, `tls-client-ca` on the collector),
/// `--tls-cert` and `--tls-key` are files on a read-only secret mount.
pub fn check_tls(
    p: &mut Problems,
    what: &str,
    ca_flag: &str,
    flags: &Flags,
    pod: &PodSpec,
    c: &Container,
) {
    for f in [ca_flag, "tls-cert", "tls-key"] {
        let Some(path) = flags.get(f).and_then(|v| v.first()) else {
            p.push(format!("{what}: no --{f}"));
            continue;
        };
        p.expect(on_secret_mount(pod, c, path), || {
            format!("{what}: --{f}={path} is not on a read-only secret mount")
        });
    }
}

/// `path` is a file under a read-only mount of a Secret volume.
pub fn on_secret_mount(pod: &PodSpec, c: &Container, path: &str) -> bool {
    c.volume_mounts.iter().flatten().any(|m| {
        // `mountPath` is required, so the typed model reads a missing one as "", which must
        // not read as the root (untyped, a missing one matched no path).
        !m.mount_path.is_empty()
            && path.starts_with(&format!("{}/", m.mount_path.trim_end_matches('/')))
            && m.read_only == Some(true)
            && pod.volumes.iter().flatten().any(|v| {
                v.name == m.name && v.secret.as_ref().is_some_and(|s| s.secret_name.is_some())
            })
    })
}
