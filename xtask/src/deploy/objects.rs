//! A rendering's documents, and the same as typed `k8s-openapi` objects (CRDs stay untyped).
use anyhow::Context as _;
use k8s_openapi::{
    Metadata, Resource,
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
        scheduling::v1::PriorityClass,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Deserialize as _;
use serde_yaml::Value;

/// The documents of a multi-document YAML text (empty documents dropped).
pub fn parse_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(de)?;
        if !matches!(v, Value::Null) {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// A document's `kind` ("" if it has none).
pub fn kind(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// A kind the checks read, as its `k8s-openapi` type.
pub trait Typed: Metadata<Ty = ObjectMeta> + Sized + 'static {
    fn of(object: &Object) -> Option<&Self>;
    #[cfg(test)]
    fn of_mut(object: &mut Object) -> Option<&mut Self>;
}

/// The kinds `k8s-openapi` models for the checks; each is a variant of [`Object`] named after it.
macro_rules! typed_kinds {
    ($($kind:ident),* $(,)?) => {
        /// One manifest of a rendering.
        #[derive(Debug, Clone)]
        pub enum Object {
            $($kind($kind),)*
            /// Any other kind (the PrometheusRule CRD, ...), as parsed.
            Other {
                kind: String,
                metadata: ObjectMeta,
                doc: Value,
            },
        }

        impl Object {
            /// The typed object for a document whose kind is modelled, else [`Object::Other`].
            fn from_doc(doc: &Value) -> anyhow::Result<Self> {
                let kind = kind(doc);
                $(if kind == <$kind as Resource>::KIND {
                    return Ok(Self::$kind($kind::deserialize(doc)?));
                })*
                // Only what the checks read, and as leniently as before: CRDs are not
                // schema-validated, so their metadata is not held to `ObjectMeta`'s types.
                let field = |f: &str| {
                    let v = doc.get("metadata")?.get(f)?;
                    v.as_str().map(str::to_string)
                };
                let metadata = ObjectMeta {
                    name: field("name"),
                    namespace: field("namespace"),
                    ..ObjectMeta::default()
                };
                Ok(Self::Other {
                    kind: kind.to_string(),
                    metadata,
                    doc: doc.clone(),
                })
            }

            pub fn kind(&self) -> &str {
                match self {
                    $(Self::$kind(_) => <$kind as Resource>::KIND,)*
                    Self::Other { kind, .. } => kind,
                }
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Self::$kind(o) => o.metadata(),)*
                    Self::Other { metadata, .. } => metadata,
                }
            }
        }

        $(impl Typed for $kind {
            fn of(object: &Object) -> Option<&Self> {
                match object {
                    Object::$kind(o) => Some(o),
                    _ => None,
                }
            }
            #[cfg(test)]
            fn of_mut(object: &mut Object) -> Option<&mut Self> {
                match object {
                    Object::$kind(o) => Some(o),
                    _ => None,
                }
            }
        })*
    };
}

typed_kinds!(
    Namespace,
    ServiceAccount,
    ConfigMap,
    Service,
    DaemonSet,
    Deployment,
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
    PriorityClass,
);

impl Object {
    /// `metadata.name` ("" if it has none).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }
}

/// The documents as objects (see [`Object`]).
///
/// Typed reading differs from reading the documents in two ways the checks account for: an
/// explicit `null` reads as an absent field, and a missing required field reads as its default
/// (`""`, `0`). A value of the wrong type (a string port, a `null` label) is an error here.
pub fn parse_objects(docs: &[Value]) -> anyhow::Result<Vec<Object>> {
    docs.iter()
        .map(|doc| {
            Object::from_doc(doc).with_context(|| {
                let name = doc.get("metadata").and_then(|m| m.get("name"));
                let name = name.and_then(Value::as_str).unwrap_or("");
                format!("reading {} {name}", kind(doc))
            })
        })
        .collect()
}

/// `metadata.name` of a typed object ("" if it has none).
pub fn name_of<T: Typed>(object: &T) -> &str {
    object.metadata().name.as_deref().unwrap_or("")
}

/// The objects of kind `T`.
pub fn all<T: Typed>(objects: &[Object]) -> impl Iterator<Item = &T> {
    objects.iter().filter_map(T::of)
}

/// The first object of kind `T` named `name`.
pub fn named<'a, T: Typed>(objects: &'a [Object], name: &str) -> Option<&'a T> {
    all::<T>(objects).find(|o| name_of(*o) == name)
}

/// The first object of kind `T` named `name`, to change it.
#[cfg(test)]
pub fn named_mut<'a, T: Typed>(objects: &'a mut [Object], name: &str) -> Option<&'a mut T> {
    objects
        .iter_mut()
        .filter_map(T::of_mut)
        .find(|o| name_of(&**o) == name)
}

/// The documents of the untyped objects of kind `kind`.
pub fn untyped<'a>(objects: &'a [Object], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    objects.iter().filter_map(move |o| match o {
        Object::Other { kind: k, doc, .. } if k == kind => Some(doc),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_helpers() {
        let docs = parse_docs("---\na: {b: [x, {c: 1}]}\n---\n---\nkind: K\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["a"]["b"][1]["c"].as_i64(), Some(1));
        assert_eq!(docs[0]["a"]["b"][0].as_str(), Some("x"));
        assert_eq!(kind(&docs[1]), "K");
    }

    #[test]
    fn typed_and_untyped_objects() {
        let docs = parse_docs(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: ns}\n\
             automountServiceAccountToken: false\n---\n\
             apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n\
             metadata: {name: r, namespace: ns}\nspec: {groups: []}\n",
        )
        .unwrap();
        let objects = parse_objects(&docs).unwrap();
        let sa = named::<ServiceAccount>(&objects, "sa").unwrap();
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert_eq!(objects[1].kind(), "PrometheusRule");
        assert_eq!(objects[1].name(), "r");
        assert_eq!(objects[1].metadata().namespace.as_deref(), Some("ns"));
        let rule = untyped(&objects, "PrometheusRule").next().unwrap();
        assert_eq!(rule.get("spec"), docs[1].get("spec"));
        assert!(untyped(&objects, "ServiceAccount").next().is_none());

        let wrong = parse_docs("apiVersion: apps/v1\nkind: ServiceAccount\nmetadata: {name: x}\n");
        let e = format!("{:#}", parse_objects(&wrong.unwrap()).unwrap_err());
        assert!(e.contains("reading ServiceAccount x"), "{e}");
    }
}
