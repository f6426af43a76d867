//! The static metadata source: the output of `kubectl get pods,services,nodes -A -o json` (a
//! `List`; ReplicaSets and Jobs in it are used for the owner chain too), re-read when it changes.
//!
//! The file is polled once a second: a change of (device, inode, size, mtime) triggers a re-read,
//! so an atomic replace by rename is seen even when size and mtime happen to match. A file that
//! cannot be read or parsed (missing for a moment, half written by a non-atomic writer) leaves
//! the index serving the last good content; it is retried on the next poll and `age()` grows
//! until a read succeeds. The first read must succeed: a wrong path is a configuration error.

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
    /// Items of other kinds, or that did not decode.
    pub skipped: usize,
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
        let ok = match kind.as_str() {
            "Pod" => serde_json::from_value::<Pod>(item)
                .ok()
                .and_then(|p| pod_info(&p))
                .map(|p| snap.pods.push(p)),
            "Service" => serde_json::from_value::<Service>(item)
                .ok()
                .and_then(|s| service_info(&s))
                .map(|s| snap.services.push(s)),
            "Node" => serde_json::from_value::<Node>(item)
                .ok()
                .and_then(|n| node_info(&n))
                .map(|n| snap.nodes.push(n)),
            "ReplicaSet" => serde_json::from_value::<ReplicaSet>(item)
                .ok()
                .and_then(|o| owner_info("ReplicaSet", &o.metadata))
                .map(|o| snap.owners.push(o)),
            "Job" => serde_json::from_value::<Job>(item)
                .ok()
                .and_then(|o| owner_info("Job", &o.metadata))
                .map(|o| snap.owners.push(o)),
            _ => None,
        };
        if ok.is_none() {
            snap.skipped += 1;
        }
    }
    Ok(snap)
}

/// Replaces the index's content with `snap`, observed at `now` (pods missing from it end now).
/// `previous`: when the previous content was read (pods missing now ended in between).
pub fn apply_snapshot(
    index: &SharedIndex,
    snap: FileSnapshot,
    now: SystemTime,
    previous: Option<SystemTime>,
) {
    let mut idx = write_index(index);
    let (rs, jobs): (Vec<_>, Vec<_>) = snap
        .owners
        .into_iter()
        .partition(|o| o.kind == "ReplicaSet");
    idx.relist_owners("ReplicaSet", rs, now);
    idx.relist_owners("Job", jobs, now);
    idx.relist_nodes(snap.nodes, now);
    idx.relist_services(snap.services, now);
    idx.relist_pods(Partition::Static, snap.pods, now, previous);
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

/// Serves the metadata file `path` into `index` until `shutdown` completes.
pub async fn run_file_source(
    path: PathBuf,
    index: SharedIndex,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MetadataError> {
    run_file_source_every(path, index, FILE_POLL_INTERVAL, shutdown).await
}

/// [`run_file_source`] with a chosen poll interval.
pub async fn run_file_source_every(
    path: PathBuf,
    index: SharedIndex,
    poll: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MetadataError> {
    let (mut current, snap) = load(&path)?;
    tracing::info!(
        path = %path.display(),
        pods = snap.pods.len(),
        services = snap.services.len(),
        nodes = snap.nodes.len(),
        "metadata file loaded"
    );
    let mut loaded_at = SystemTime::now();
    apply_snapshot(&index, snap, loaded_at, None);
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = SystemTime::now();
        let result = match signature(&path) {
            Ok(sig) if sig == current => {
                write_index(&index).confirm(Instant::now());
                Ok(())
            }
            Ok(_) => load(&path).map(|(sig, snap)| {
                tracing::info!(path = %path.display(), pods = snap.pods.len(), "metadata file changed, reloaded");
                apply_snapshot(&index, snap, now, Some(loaded_at));
                loaded_at = now;
                current = sig;
            }),
            Err(source) => Err(MetadataError::ReadFile { path: path.clone(), source }),
        };
        match result {
            Ok(()) => last_error = None,
            Err(e) => {
                let msg = crate::report::error_chain(&e);
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "metadata file unusable, serving the last good content");
                    last_error = Some(msg);
                }
            }
        }
        write_index(&index).maintain(now);
    }
}
