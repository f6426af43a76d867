//! The static metadata source: the output of `kubectl get pods,services,nodes -A -o json` (a
//! `List`; ReplicaSets and Jobs in it are used for the owner chain too), re-read when it changes.
//!
//! The file is polled once a second: a change of (device, inode, size, mtime) triggers a re-read,
//! so an atomic replace by rename is seen even when size and mtime happen to match. A file that
//! cannot be read or parsed (missing for a moment, half written by a non-atomic writer) leaves
//! the index serving the last good content; it is retried on the next poll and `age()` grows
//! until a read succeeds. The same holds at start: a file missing or invalid then is said once
//! (warn) and loaded when it becomes readable; until then records carry no names.
//!
//! One entry that does not decode (a field of the wrong type, `status.podIP: 42`) does not cost
//! the others: it is named in a warning, and the object it describes keeps its last good state
//! (found by the entry's `metadata.uid`) instead of ending.

use std::collections::HashSet;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};

use super::convert::{node_info, owner_info, pod_info, service_info};
use super::records::{NodeInfo, OwnerInfo, Partition, PodInfo, ServiceInfo};
use super::{MetadataError, SharedIndex, write_index};

/// How often the file is checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The records of one metadata file.
#[derive(Clone, Debug, Default)]
pub struct FileSnapshot {
    pub pods: Vec<PodInfo>,
    pub services: Vec<ServiceInfo>,
    pub nodes: Vec<NodeInfo>,
    pub owners: Vec<OwnerInfo>,
    /// Entries of the kinds above that did not decode.
    pub unreadable: Vec<Unreadable>,
    /// Items of other kinds, or without what the index needs (e.g. no UID).
    pub skipped: usize,
}

/// An entry of the file that did not decode, as far as it can be named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unreadable {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `metadata.uid` when it is a string: the object whose last good state is kept.
    pub uid: Option<String>,
    pub error: String,
}

impl Unreadable {
    fn of(kind: &str, item: &serde_json::Value, error: &serde_json::Error) -> Unreadable {
        let meta = |key: &str| {
            item.get("metadata")
                .and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Unreadable {
            kind: kind.to_owned(),
            namespace: meta("namespace").unwrap_or_default(),
            name: meta("name").unwrap_or_default(),
            uid: meta("uid"),
            error: error.to_string(),
        }
    }
}

/// Parses a kubectl `List` (or a single object). Items are told apart by their `kind`.
pub fn parse_kubectl_list(path: &Path, bytes: &[u8]) -> Result<FileSnapshot, MetadataError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| MetadataError::ParseFile {
            path: path.to_owned(),
            source,
        })?;
    let items = match value.get("items") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(MetadataError::NotAList {
                path: path.to_owned(),
            });
        }
        None if value.get("kind").is_some() => vec![value],
        None => {
            return Err(MetadataError::NotAList {
                path: path.to_owned(),
            });
        }
    };
    let mut snap = FileSnapshot::default();
    for item in items {
        let kind = item
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let decoded = match kind.as_str() {
            "Pod" => decode::<Pod>(&item).map(|p| pod_info(&p).map(|p| snap.pods.push(p))),
            "Service" => {
                decode::<Service>(&item).map(|s| service_info(&s).map(|s| snap.services.push(s)))
            }
            "Node" => decode::<Node>(&item).map(|n| node_info(&n).map(|n| snap.nodes.push(n))),
            "ReplicaSet" => decode::<ReplicaSet>(&item)
                .map(|o| owner_info("ReplicaSet", &o.metadata).map(|o| snap.owners.push(o))),
            "Job" => decode::<Job>(&item)
                .map(|o| owner_info("Job", &o.metadata).map(|o| snap.owners.push(o))),
            _ => Ok(None),
        };
        match decoded {
            Ok(Some(())) => {}
            Ok(None) => snap.skipped += 1,
            Err(e) => snap.unreadable.push(Unreadable::of(&kind, &item, &e)),
        }
    }
    Ok(snap)
}

fn decode<T: serde::de::DeserializeOwned>(item: &serde_json::Value) -> serde_json::Result<T> {
    T::deserialize(item)
}

/// Replaces the index's content with `snap`, observed at `now` (pods missing from it end now).
/// `previous`: when the previous content was read (pods missing now ended in between).
pub fn apply_snapshot(
    index: &SharedIndex,
    snap: FileSnapshot,
    now: SystemTime,
    previous: Option<SystemTime>,
) {
    // The objects of entries that did not decode keep their last good state.
    let keep = |kind: &str| -> HashSet<String> {
        snap.unreadable
            .iter()
            .filter(|u| u.kind == kind)
            .filter_map(|u| u.uid.clone())
            .collect()
    };
    let keep_owners = |kind: &str| -> HashSet<(String, String)> {
        snap.unreadable
            .iter()
            .filter(|u| u.kind == kind)
            .map(|u| (u.namespace.clone(), u.name.clone()))
            .collect()
    };
    for u in &snap.unreadable {
        let kept = if u.uid.is_some() || matches!(u.kind.as_str(), "ReplicaSet" | "Job") {
            "its last good state is kept"
        } else {
            "no readable metadata.uid: it is treated as gone"
        };
        tracing::warn!(kind = %u.kind, namespace = %u.namespace, name = %u.name, error = %u.error,
            "metadata file: an entry does not decode; {kept}");
    }
    let (keep_rs, keep_jobs) = (keep_owners("ReplicaSet"), keep_owners("Job"));
    let (keep_nodes, keep_services, keep_pods) = (keep("Node"), keep("Service"), keep("Pod"));
    let mut idx = write_index(index);
    let (rs, jobs): (Vec<_>, Vec<_>) = snap
        .owners
        .into_iter()
        .partition(|o| o.kind == "ReplicaSet");
    idx.relist_owners("ReplicaSet", rs, &keep_rs, now);
    idx.relist_owners("Job", jobs, &keep_jobs, now);
    idx.relist_nodes(snap.nodes, &keep_nodes, now);
    idx.relist_services(snap.services, &keep_services, now);
    idx.relist_pods(Partition::Static, snap.pods, &keep_pods, now, previous);
    idx.confirm(Instant::now());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signature {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn signature(path: &Path) -> std::io::Result<Signature> {
    let m = std::fs::metadata(path)?;
    Ok(Signature {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

fn load(path: &Path) -> Result<(Signature, FileSnapshot), MetadataError> {
    let read_err = |source| MetadataError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let before = signature(path).map_err(read_err)?;
    let bytes = std::fs::read(path).map_err(read_err)?;
    let snap = parse_kubectl_list(path, &bytes)?;
    Ok((before, snap))
}

/// Serves the metadata file `path` into `index` until `shutdown` completes (a file that cannot
/// be read is retried, never an error that stops the source).
pub async fn run_file_source(
    path: PathBuf,
    index: SharedIndex,
    shutdown: impl Future<Output = ()> + Send,
) {
    run_file_source_every(path, index, FILE_POLL_INTERVAL, shutdown).await;
}

/// [`run_file_source`] with a chosen poll interval.
pub async fn run_file_source_every(
    path: PathBuf,
    index: SharedIndex,
    poll: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut current: Option<Signature> = None;
    let mut loaded_at: Option<SystemTime> = None;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let now = SystemTime::now();
        let result = match signature(&path) {
            Ok(sig) if Some(sig) == current => {
                write_index(&index).confirm(Instant::now());
                Ok(())
            }
            Ok(_) => load(&path).map(|(sig, snap)| {
                if loaded_at.is_none() {
                    tracing::info!(path = %path.display(), pods = snap.pods.len(),
                        services = snap.services.len(), nodes = snap.nodes.len(), "metadata file loaded");
                } else {
                    tracing::info!(path = %path.display(), pods = snap.pods.len(), "metadata file changed, reloaded");
                }
                apply_snapshot(&index, snap, now, loaded_at);
                loaded_at = Some(now);
                current = Some(sig);
            }),
            Err(source) => Err(MetadataError::ReadFile { path: path.clone(), source }),
        };
        match result {
            Ok(()) => last_error = None,
            Err(e) => {
                let msg = crate::report::error_chain(&e);
                if last_error.as_deref() != Some(msg.as_str()) {
                    if loaded_at.is_some() {
                        tracing::warn!(error = %msg, "metadata file unusable, serving the last good content");
                    } else {
                        tracing::warn!(error = %msg, "metadata file unusable; records carry no names until it can be read (retried every poll)");
                    }
                    last_error = Some(msg);
                }
            }
        }
        write_index(&index).maintain(now);
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
    }
}
