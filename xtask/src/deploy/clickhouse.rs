//! The collector's ClickHouse store (kustomize/components/clickhouse and clickhouse-replicated):
//! the layout the overlay declares, https with the server's CA on a secret mount, the password
//! from a Secret in the environment and never in args or a ConfigMap, the buffer the alert
//! assumes, and only flags `podflow collector` declares.
use std::collections::BTreeSet;

use anyhow::bail;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use serde_yaml::Value;

use super::{
    container::{Env, EnvSource, args, expanded_flag_values, flag_values},
    objects::{Object, all, name_of, untyped},
    problems::Problems,
    tls::on_secret_mount,
};

/// The environment variable the collector reads the password from (`podflow::clickhouse::PASSWORD_ENV`).
pub const PASSWORD_ENV: &str = "PODFLOW_CLICKHOUSE_PASSWORD";
/// The alert whose threshold is 80 % of `--clickhouse-buffer`.
pub const BUFFER_ALERT: &str = "PodflowClickHouseBufferFilling";
/// `--clickhouse-buffer`'s default (agent/src/collector/store.rs).
const DEFAULT_BUFFER: u64 = 500_000;
/// Where `podflow collector`'s ClickHouse flags are declared (`long = "..."`).
pub const FLAG_SOURCES: &[&str] = &["agent/src/clickhouse.rs", "agent/src/collector/store.rs"];

/// Where an overlay's collector stores the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Nowhere but its files and consumers: no `--clickhouse*` flag.
    None,
    /// One ClickHouse server (components/clickhouse).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "no checked overlay uses it yet")
    )]
    Single,
    /// The production layout, deploy/clickhouse/cluster.sql (components/clickhouse and
    /// clickhouse-replicated).
    Replicated,
}

/// The collector container `c` (of `pod`, with environment `env`) stores as `want` says.
pub fn check_clickhouse(
    p: &mut Problems,
    objects: &[Object],
    pod: &PodSpec,
    c: &Container,
    env: &Env,
    want: Store,
) {
    check_no_password_in_args(p, c);
    for cm in all::<ConfigMap>(objects) {
        for key in cm.data.iter().flatten().map(|(k, _)| k) {
            p.expect(!key.to_ascii_lowercase().contains("password"), || {
                format!(
                    "ConfigMap {}: key {key}: a password goes in a Secret, not a ConfigMap",
                    name_of(cm)
                )
            });
        }
    }

    let raw = flag_values(c);
    let flags = expanded_flag_values(c, env);
    let set: Vec<&str> = raw
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("clickhouse"))
        .collect();
    if want == Store::None {
        p.expect(set.is_empty(), || {
            format!(
                "collector: {set:?} set, but the overlay is declared without ClickHouse (xtask/src/deploy/overlays.rs)"
            )
        });
        return;
    }
    let one = |f: &str| {
        flags
            .get(f)
            .and_then(|v| (v.len() == 1).then(|| v[0].as_str()))
    };

    // Where: https, no credentials in the URL.
    let Some(url) = one("clickhouse") else {
        p.push(format!(
            "collector: the overlay stores in ClickHouse ({want:?}) but has no single --clickhouse=URL"
        ));
        return;
    };
    match url.strip_prefix("https://") {
        Some(rest) => {
            let authority = rest.split('/').next().unwrap_or("");
            p.expect(!authority.contains('@'), || {
                format!("collector: --clickhouse={url} carries credentials (they show in `ps`): {PASSWORD_ENV} from a Secret")
            });
        }
        None => p.push(format!(
            "collector: --clickhouse={url}: https:// expected (the password travels with every request)"
        )),
    }
    // TLS material on secret mounts.
    match one("clickhouse-ca") {
        Some(ca) => p.expect(on_secret_mount(pod, c, ca), || {
            format!("collector: --clickhouse-ca={ca} is not on a read-only secret mount")
        }),
        None => p.push("collector: no --clickhouse-ca (https needs the server's CA)".into()),
    }
    for f in [
        "clickhouse-cert",
        "clickhouse-key",
        "clickhouse-password-file",
    ] {
        for path in flags.get(f).into_iter().flatten() {
            p.expect(on_secret_mount(pod, c, path), || {
                format!("collector: --{f}={path} is not on a read-only secret mount")
            });
        }
    }
    p.expect(
        flags.contains_key("clickhouse-cert") == flags.contains_key("clickhouse-key"),
        || "collector: --clickhouse-cert and --clickhouse-key go together".into(),
    );

    // The password: from a Secret, required, in the environment (unless a file names it).
    if !flags.contains_key("clickhouse-password-file") {
        let from_secret = matches!(
            env.get(PASSWORD_ENV),
            Some(EnvSource::SecretKey {
                optional: Some(false),
                ..
            })
        );
        p.expect(from_secret, || {
            format!(
                "collector: env {PASSWORD_ENV} must come from a Secret (valueFrom.secretKeyRef, optional: false), is {}",
                // Never print a value: it may be the password.
                match env.get(PASSWORD_ENV) {
                    None => "not set",
                    Some(EnvSource::Value(_)) => "a literal or ConfigMap value",
                    Some(EnvSource::SecretKey { .. }) => "an optional Secret key",
                    Some(EnvSource::Opaque) => "not from a Secret",
                }
            )
        });
    }

    // The layout.
    let cluster = flags.get("clickhouse-cluster");
    let replicated = raw.contains_key("clickhouse-replicated");
    let shards = raw.contains_key("clickhouse-shard");
    match want {
        Store::Single => p.expect(cluster.is_none() && !replicated && !shards, || {
            "collector: a single ClickHouse server is declared: no --clickhouse-cluster, --clickhouse-replicated or --clickhouse-shard".into()
        }),
        Store::Replicated => {
            let name = one("clickhouse-cluster");
            p.expect(
                name.is_some_and(|n| !n.is_empty() && !n.contains("$(")) && replicated && !shards,
                || format!(
                    "collector: the production layout is --clickhouse-cluster=NAME --clickhouse-replicated without --clickhouse-shard (cluster {cluster:?}, replicated {replicated}, shards {shards})"
                ),
            );
        }
        Store::None => {}
    }

    // The buffer the alert's threshold assumes.
    let buffer = match one("clickhouse-buffer") {
        None => Some(DEFAULT_BUFFER),
        Some(b) => b.parse().ok(),
    };
    let assumed = alert_buffer(objects);
    p.expect(buffer.is_some() && buffer == assumed, || {
        format!(
            "collector: --clickhouse-buffer is {buffer:?} but {BUFFER_ALERT} assumes {assumed:?} (its threshold is `> 0.8 * BUFFER`): change them together"
        )
    });
}

/// No argument carries a password: no `$(PODFLOW_CLICKHOUSE_PASSWORD)`, no password flag (but
/// `--clickhouse-password-file=PATH`), nothing that mentions one.
fn check_no_password_in_args(p: &mut Problems, c: &Container) {
    for a in args(c) {
        if a.starts_with("--clickhouse-password-file=") {
            continue;
        }
        p.expect(
            !a.contains(PASSWORD_ENV) && !a.to_ascii_lowercase().contains("password"),
            || {
                // The flag's name only: the value may be the password.
                let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
                format!(
                    "collector: argument {name}=... carries a password (args show in `ps` and the pod spec): env {PASSWORD_ENV} from a Secret"
                )
            },
        );
    }
}

/// The BUFFER of [`BUFFER_ALERT`]'s `> 0.8 * BUFFER` in the rendering's PrometheusRule.
fn alert_buffer(objects: &[Object]) -> Option<u64> {
    let rule = untyped(objects, "PrometheusRule")
        .flat_map(|r| r["spec"]["groups"].as_sequence().into_iter().flatten())
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .find(|r| r.get("alert").and_then(Value::as_str) == Some(BUFFER_ALERT))?;
    let expr = rule.get("expr")?.as_str()?;
    let (_, after) = expr.split_once("> 0.8 *")?;
    after.trim().parse().ok()
}

/// Every `--clickhouse*` flag of the collector is one `podflow collector` declares (`long =
/// "..."` in `sources`, the text of [`FLAG_SOURCES`]): a renamed flag fails here rather than at
/// the collector's start.
pub fn check_flags_known(objects: &[Object], sources: &str) -> anyhow::Result<()> {
    let known: BTreeSet<&str> = sources
        .split("long = \"")
        .skip(1)
        .filter_map(|s| s.split_once('"').map(|(name, _)| name))
        .collect();
    if !known.contains("clickhouse") {
        bail!("no `long = \"clickhouse\"` in {FLAG_SOURCES:?}: where are the flags declared now?");
    }
    let Some(c) = super::collector::collector_pod(objects).and_then(|pod| pod.containers.first())
    else {
        bail!("no collector container");
    };
    let unknown: Vec<String> = flag_values(c)
        .into_keys()
        .filter(|f| f.starts_with("clickhouse") && !known.contains(f.as_str()))
        .collect();
    if !unknown.is_empty() {
        bail!("collector: `podflow collector` has no {unknown:?} (flags: {known:?})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        ConfigMap, ConfigMapEnvSource, EnvFromSource, EnvVar, EnvVarSource, SecretKeySelector,
        SecretVolumeSource, Volume, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::super::{
        manifests::fixtures::{collector_pod, committed, problems, problems_in},
        objects::{Object, named_mut, parse_docs, parse_objects},
        overlays::{BASE, Overlay},
        read,
    };
    use super::*;

    const REPLICATED: Overlay = Overlay {
        clickhouse: Store::Replicated,
        ..BASE
    };
    const SINGLE: Overlay = Overlay {
        clickhouse: Store::Single,
        ..BASE
    };

    /// The committed base with what components/clickhouse and clickhouse-replicated add.
    fn with_clickhouse() -> Vec<Object> {
        let mut d = committed();
        let data = BTreeMap::from(
            [
                ("PODFLOW_CLICKHOUSE_URL", "https://ch.clickhouse.svc:8443"),
                ("PODFLOW_CLICKHOUSE_USER", "podflow"),
                ("PODFLOW_CLICKHOUSE_CLUSTER", "podflow"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        d.push(Object::ConfigMap(ConfigMap {
            metadata: ObjectMeta {
                name: Some("podflow-clickhouse-abc".into()),
                namespace: Some("podflow".into()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        }));
        let pod = collector_pod(&mut d);
        pod.volumes.get_or_insert_default().push(Volume {
            name: "clickhouse-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("podflow-clickhouse-tls".into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        let c = &mut pod.containers[0];
        c.args.get_or_insert_default().extend(
            [
                "--clickhouse=$(PODFLOW_CLICKHOUSE_URL)",
                "--clickhouse-user=$(PODFLOW_CLICKHOUSE_USER)",
                "--clickhouse-ca=/etc/podflow/clickhouse-tls/ca.crt",
                "--clickhouse-cluster=$(PODFLOW_CLICKHOUSE_CLUSTER)",
                "--clickhouse-replicated",
            ]
            .map(String::from),
        );
        c.env_from = Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: "podflow-clickhouse-abc".into(),
                optional: None,
            }),
            ..EnvFromSource::default()
        }]);
        c.env = Some(vec![EnvVar {
            name: PASSWORD_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "podflow-clickhouse-password".into(),
                    key: "password".into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]);
        c.volume_mounts.get_or_insert_default().push(VolumeMount {
            name: "clickhouse-tls".into(),
            mount_path: "/etc/podflow/clickhouse-tls".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        d
    }

    fn collector_container(d: &mut [Object]) -> &mut Container {
        &mut collector_pod(d).containers[0]
    }

    fn set_config(d: &mut [Object], key: &str, value: &str) {
        let cm = named_mut::<ConfigMap>(d, "podflow-clickhouse-abc").unwrap();
        cm.data
            .get_or_insert_default()
            .insert(key.into(), value.into());
    }

    fn sources() -> String {
        FLAG_SOURCES.iter().map(|f| read(f).unwrap()).collect()
    }

    #[test]
    fn the_components_wiring_passes() {
        let d = with_clickhouse();
        super::super::manifests::check_manifests(&d, &REPLICATED).unwrap();
        check_flags_known(&d, &sources()).unwrap();
        // Declared and configured must agree.
        let pr = problems(&d);
        assert!(pr.contains("declared without ClickHouse"), "{pr}");
        let pr = problems_in(&d, &SINGLE);
        assert!(
            pr.contains("a single ClickHouse server is declared"),
            "{pr}"
        );
        let pr = problems_in(&committed(), &REPLICATED);
        assert!(pr.contains("has no single --clickhouse=URL"), "{pr}");
    }

    #[test]
    fn rejects_a_password_in_args_or_a_config_map() {
        // The Secret's variable expanded into the args.
        let mut d = with_clickhouse();
        let args = collector_container(&mut d).args.as_mut().unwrap();
        args.push(format!("--clickhouse-user=podflow:$({PASSWORD_ENV})"));
        let pr = problems_in(&d, &REPLICATED);
        assert!(
            pr.contains("puts the Secret value $(PODFLOW_CLICKHOUSE_PASSWORD) in the args")
                && pr.contains("argument --clickhouse-user=... carries a password"),
            "{pr}"
        );

        // A password flag, and credentials in the URL; neither value is printed.
        let mut d = with_clickhouse();
        let args = collector_container(&mut d).args.as_mut().unwrap();
        args.push("--clickhouse-password=hunter2".into());
        set_config(
            &mut d,
            "PODFLOW_CLICKHOUSE_URL",
            "https://podflow:hunter3@ch:8443",
        );
        let pr = problems_in(&d, &REPLICATED);
        assert!(
            pr.contains("argument --clickhouse-password=... carries a password")
                && pr.contains("carries credentials"),
            "{pr}"
        );
        assert!(!pr.contains("hunter2"), "{pr}");

        // The password as a literal, from an optional Secret key, or in a ConfigMap.
        let mut d = with_clickhouse();
        collector_container(&mut d).env.as_mut().unwrap()[0] = EnvVar {
            name: PASSWORD_ENV.into(),
            value: Some("hunter2".into()),
            ..EnvVar::default()
        };
        set_config(&mut d, "CLICKHOUSE_PASSWORD", "hunter2");
        let pr = problems_in(&d, &REPLICATED);
        assert!(
            pr.contains("must come from a Secret")
                && pr.contains("a literal or ConfigMap value")
                && pr.contains("key CLICKHOUSE_PASSWORD: a password goes in a Secret"),
            "{pr}"
        );
        assert!(!pr.contains("hunter2"), "{pr}");
        let mut d = with_clickhouse();
        let env = collector_container(&mut d).env.as_mut().unwrap();
        let secret = env[0].value_from.as_mut().unwrap();
        secret.secret_key_ref.as_mut().unwrap().optional = Some(true);
        let pr = problems_in(&d, &REPLICATED);
        assert!(pr.contains("an optional Secret key"), "{pr}");

        // A committed Secret.
        let mut d = with_clickhouse();
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: podflow-clickhouse-password, namespace: podflow}\n";
        d.extend(parse_objects(&parse_docs(secret).unwrap()).unwrap());
        let pr = problems_in(&d, &REPLICATED);
        assert!(
            pr.contains("Secret podflow-clickhouse-password in the manifests"),
            "{pr}"
        );
    }

    #[test]
    fn rejects_plaintext_unmounted_ca_and_layout_mistakes() {
        let mut d = with_clickhouse();
        set_config(&mut d, "PODFLOW_CLICKHOUSE_URL", "http://ch:8123");
        let c = collector_container(&mut d);
        c.volume_mounts
            .as_mut()
            .unwrap()
            .retain(|m| m.name != "clickhouse-tls");
        c.args
            .as_mut()
            .unwrap()
            .retain(|a| a != "--clickhouse-replicated");
        let pr = problems_in(&d, &REPLICATED);
        assert!(
            pr.contains("--clickhouse=http://ch:8123: https:// expected")
                && pr.contains("--clickhouse-ca=/etc/podflow/clickhouse-tls/ca.crt is not on a read-only secret mount")
                && pr.contains("the production layout is"),
            "{pr}"
        );

        // A ConfigMap key that is not there: the kubelet would pass `$(...)` as it is.
        let mut d = with_clickhouse();
        named_mut::<ConfigMap>(&mut d, "podflow-clickhouse-abc")
            .unwrap()
            .data
            .as_mut()
            .unwrap()
            .remove("PODFLOW_CLICKHOUSE_CLUSTER");
        let pr = problems_in(&d, &REPLICATED);
        assert!(
            pr.contains("refers to $(PODFLOW_CLICKHOUSE_CLUSTER)")
                && pr.contains("the production layout is"),
            "{pr}"
        );
    }

    #[test]
    fn the_buffer_is_the_one_the_alert_assumes() {
        assert_eq!(alert_buffer(&committed()), Some(DEFAULT_BUFFER));
        let mut d = with_clickhouse();
        let args = collector_container(&mut d).args.as_mut().unwrap();
        args.push("--clickhouse-buffer=2000000".into());
        let pr = problems_in(&d, &REPLICATED);
        assert!(
            pr.contains("--clickhouse-buffer is Some(2000000) but PodflowClickHouseBufferFilling assumes Some(500000)"),
            "{pr}"
        );
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut d = with_clickhouse();
        let args = collector_container(&mut d).args.as_mut().unwrap();
        args.push("--clickhouse-replicas=2".into());
        let e = format!("{:#}", check_flags_known(&d, &sources()).unwrap_err());
        assert!(e.contains("has no [\"clickhouse-replicas\"]"), "{e}");
        let e = format!(
            "{:#}",
            check_flags_known(&d, "long = \"other\"").unwrap_err()
        );
        assert!(e.contains("where are the flags declared now"), "{e}");
    }
}
