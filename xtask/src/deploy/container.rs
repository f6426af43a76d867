//! A container's arguments, flags, environment and named ports, as the agent and collector
//! checks read them.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container};

use super::{
    objects::{Object, named},
    problems::Problems,
};

/// `--flag=value` arguments by flag (flags without `=` map to "").
pub type Flags = BTreeMap<String, Vec<String>>;

/// The container's `args`.
pub fn args(c: &Container) -> &[String] {
    c.args.as_deref().unwrap_or_default()
}

/// `--flag=value` arguments of a container as a map (flags without `=` map to "").
pub fn flag_values(c: &Container) -> Flags {
    let mut out = Flags::new();
    for a in args(c) {
        if let Some(flag) = a.strip_prefix("--") {
            let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

/// `--flag=value` arguments of a container as a map, with the `$(VAR)` references expanded as
/// far as the rendering tells (see [`expand`]).
pub fn expanded_flag_values(c: &Container, env: &Env) -> Flags {
    let mut out = Flags::new();
    for a in args(c) {
        if let Some(flag) = a.strip_prefix("--") {
            let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
            out.entry(k.to_string())
                .or_default()
                .push(expand(v, env).value);
        }
    }
    out
}

/// Where a container's environment variable comes from, as far as the rendering tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A literal `value`, or a key of a ConfigMap of the rendering (`envFrom`, `configMapKeyRef`).
    Value(String),
    /// A key of a Secret (`valueFrom.secretKeyRef`; `optional` as written).
    SecretKey {
        name: String,
        key: String,
        optional: Option<bool>,
    },
    /// Defined, but from nothing the rendering holds (the downward API, a ConfigMap key the
    /// rendering lacks).
    Opaque,
}

/// A container's environment by variable name. Keys of `envFrom` Secrets, or of ConfigMaps that
/// are not in the rendering, are unknown here and missing.
pub type Env = BTreeMap<String, EnvSource>;

/// The container's environment: `envFrom` ConfigMaps (with their prefix), then `env`, which
/// overrides them as in the kubelet.
pub fn container_env(objects: &[Object], c: &Container) -> Env {
    let data = |name: &str| named::<ConfigMap>(objects, name).and_then(|cm| cm.data.as_ref());
    let mut env = Env::new();
    for from in c.env_from.iter().flatten() {
        let Some(cm) = &from.config_map_ref else {
            continue;
        };
        let prefix = from.prefix.as_deref().unwrap_or("");
        for (k, v) in data(&cm.name).into_iter().flatten() {
            env.insert(format!("{prefix}{k}"), EnvSource::Value(v.clone()));
        }
    }
    for e in c.env.iter().flatten() {
        let source = match &e.value_from {
            None => EnvSource::Value(e.value.clone().unwrap_or_default()),
            Some(from) => {
                if let Some(s) = &from.secret_key_ref {
                    EnvSource::SecretKey {
                        name: s.name.clone(),
                        key: s.key.clone(),
                        optional: s.optional,
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    data(&r.name)
                        .and_then(|d| d.get(&r.key))
                        .map_or(EnvSource::Opaque, |v| EnvSource::Value(v.clone()))
                } else {
                    EnvSource::Opaque
                }
            }
        };
        env.insert(e.name.clone(), source);
    }
    env
}

/// An argument with its `$(VAR)` references expanded as the kubelet does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The argument with literal and ConfigMap values in place; other references, and those to
    /// undefined variables (which the kubelet leaves as they are), kept as written.
    pub value: String,
    /// Variables referred to that the container does not define.
    pub undefined: Vec<String>,
    /// Variables referred to whose value comes from a Secret.
    pub secrets: Vec<String>,
}

/// Expands `$(VAR)` in `arg` (`$$` is a literal `$`), as the kubelet expands `args`.
pub fn expand(arg: &str, env: &Env) -> Expanded {
    let mut out = Expanded::default();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.value.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.value.push('$');
            rest = tail;
            continue;
        }
        let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) else {
            out.value.push('$');
            rest = after;
            continue;
        };
        match env.get(name) {
            Some(EnvSource::Value(v)) => out.value.push_str(v),
            other => {
                match other {
                    None => out.undefined.push(name.to_string()),
                    Some(EnvSource::SecretKey { .. }) => out.secrets.push(name.to_string()),
                    _ => {}
                }
                out.value.push_str(&format!("$({name})"));
            }
        }
        rest = tail;
    }
    out.value.push_str(rest);
    out
}

/// Every `$(VAR)` of the container's args is defined (else the kubelet passes it literally), and
/// none comes from a Secret (args show in `ps` and in the pod spec).
pub fn check_arg_references(p: &mut Problems, what: &str, c: &Container, env: &Env) {
    for a in args(c) {
        let e = expand(a, env);
        for var in e.undefined {
            p.push(format!(
                "{what}: argument {a:?} refers to $({var}), which neither env nor the envFrom ConfigMap defines"
            ));
        }
        for var in e.secrets {
            p.push(format!(
                "{what}: argument {a:?} puts the Secret value $({var}) in the args, which show in `ps` and the pod spec"
            ));
        }
    }
}

/// The port of a listen address (`0.0.0.0:4246`, `[::]:4247`).
pub fn port_of(listen: &str) -> Option<i64> {
    listen.rsplit_once(':')?.1.parse().ok()
}

/// The `containerPort` of the container port named `name`.
pub fn named_port(c: &Container, name: &str) -> Option<i64> {
    c.ports
        .iter()
        .flatten()
        .find(|pt| pt.name.as_deref() == Some(name))
        .map(|pt| i64::from(pt.container_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_as_the_kubelet() {
        let env = Env::from([
            (
                "URL".to_string(),
                EnvSource::Value("https://ch:8443".into()),
            ),
            (
                "PASS".to_string(),
                EnvSource::SecretKey {
                    name: "s".into(),
                    key: "k".into(),
                    optional: Some(false),
                },
            ),
            ("NODE".to_string(), EnvSource::Opaque),
        ]);
        let e = expand("--x=$(URL)/$(PASS)/$(NOPE)/$(NODE)/$$(URL)/$/$(", &env);
        assert_eq!(
            e.value,
            "--x=https://ch:8443/$(PASS)/$(NOPE)/$(NODE)/$(URL)/$/$("
        );
        assert_eq!(e.undefined, ["NOPE"]);
        assert_eq!(e.secrets, ["PASS"]);
        assert_eq!(
            expand("plain", &env),
            Expanded {
                value: "plain".into(),
                ..Expanded::default()
            }
        );
    }

    #[test]
    fn listen_ports() {
        assert_eq!(port_of("0.0.0.0:4246"), Some(4246));
        assert_eq!(port_of("[::]:4247"), Some(4247));
    }
}
