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
use super::{MetadataError, PodRelist, SharedIndex, write_index};

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
    let mut snap = FileSnapshot::default();
    parse_items(path, bytes, &mut |item| add_item(&mut snap, item))?;
    Ok(snap)
}

/// Reads a kubectl `List` (or a single object) one item at a time, handing each to `sink`: only
/// one item's JSON tree exists at once (a 150 000-pod file used to become one tree of about ten
/// times its size).
fn parse_items(
    path: &Path,
    bytes: &[u8],
    sink: &mut dyn FnMut(serde_json::Value),
) -> Result<(), MetadataError> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = de
        .deserialize_map(ListVisitor { sink: &mut *sink })
        .and_then(|p| de.end().map(|()| p))
        .map_err(|source| MetadataError::ParseFile {
            path: path.to_owned(),
            source,
        })?;
    match parsed {
        Parsed::List => Ok(()),
        Parsed::Object(fields) if fields.contains_key("kind") => {
            sink(serde_json::Value::Object(fields));
            Ok(())
        }
        Parsed::Object(_) | Parsed::NotAList => Err(MetadataError::NotAList {
            path: path.to_owned(),
        }),
    }
}

/// The top level of the file: a `List` (its items went to the sink), or the fields of a single
/// object.
enum Parsed {
    List,
    Object(serde_json::Map<String, serde_json::Value>),
    NotAList,
}

struct ListVisitor<'a> {
    sink: &'a mut dyn FnMut(serde_json::Value),
}

impl<'de> serde::de::Visitor<'de> for ListVisitor<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a kubectl List or a Kubernetes object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut fields = serde_json::Map::new();
        let (mut list, mut not_a_list) = (false, false);
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                match map.next_value_seed(Items {
                    sink: &mut *self.sink,
                })? {
                    true => list = true,
                    false => not_a_list = true,
                }
            } else {
                fields.insert(key, map.next_value()?);
            }
        }
        Ok(match (list, not_a_list) {
            (true, _) => Parsed::List,
            (false, true) => Parsed::NotAList,
            (false, false) => Parsed::Object(fields),
        })
    }
}

/// `items`: an array, handed to the sink item by item (`true`); anything else is not a list.
struct Items<'a> {
    sink: &'a mut dyn FnMut(serde_json::Value),
}

impl<'de> serde::de::DeserializeSeed<'de> for Items<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Items<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            (self.sink)(item);
        }
        Ok(true)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
}

/// Turns one item into a record of `snap` (by its `kind`), or counts it skipped or unreadable.
fn add_item(snap: &mut FileSnapshot, item: serde_json::Value) {
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
    let mut loader = Loader::new(index, now);
    loader.rest = snap;
    loader.finish(previous);
}

/// Pods applied to the index at a time while the file is read.
const APPLY_PART: usize = 1024;

/// Applies a file to the index while it is read: pods a part at a time (the index's lock is
/// held for one part, and only one part's records exist at once: the short-lived garbage of
/// reading an item is reused for the next instead of being spread between the index's
/// allocations), the rest at the end.
struct Loader<'a> {
    index: &'a SharedIndex,
    now: SystemTime,
    /// What was read and not applied yet.
    rest: FileSnapshot,
    relist: Option<PodRelist>,
    pods: usize,
}

impl<'a> Loader<'a> {
    fn new(index: &'a SharedIndex, now: SystemTime) -> Self {
        Loader {
            index,
            now,
            rest: FileSnapshot::default(),
            relist: None,
            pods: 0,
        }
    }

    fn item(&mut self, item: serde_json::Value) {
        add_item(&mut self.rest, item);
        if self.rest.pods.len() >= APPLY_PART {
            self.apply_pods();
        }
    }

    fn apply_pods(&mut self) {
        let part = std::mem::take(&mut self.rest.pods);
        self.pods += part.len();
        let mut idx = write_index(self.index);
        let relist = self
            .relist
            .get_or_insert_with(|| idx.begin_relist_pods(Partition::Static));
        idx.relist_pods_part(relist, part, self.now);
    }

    /// Applies the rest and ends what the file no longer names.
    fn finish(mut self, previous: Option<SystemTime>) -> FileCounts {
        self.apply_pods();
        let (now, snap) = (self.now, std::mem::take(&mut self.rest));
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
        let counts = FileCounts {
            pods: self.pods,
            services: snap.services.len(),
            nodes: snap.nodes.len(),
        };
        let mut idx = write_index(self.index);
        let (rs, jobs): (Vec<_>, Vec<_>) = snap
            .owners
            .into_iter()
            .partition(|o| o.kind == "ReplicaSet");
        idx.relist_owners("ReplicaSet", rs, &keep_rs, now);
        idx.relist_owners("Job", jobs, &keep_jobs, now);
        idx.relist_nodes(snap.nodes, &keep_nodes, now);
        idx.relist_services(snap.services, &keep_services, now);
        let relist = self
            .relist
            .take()
            .unwrap_or_else(|| idx.begin_relist_pods(Partition::Static));
        idx.finish_relist_pods(relist, &keep_pods, now, previous);
        idx.confirm(Instant::now());
        drop(idx);
        // The file's bytes and records are gone: return their memory.
        super::release_free_memory();
        counts
    }
}

/// What a file held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FileCounts {
    pods: usize,
    services: usize,
    nodes: usize,
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

/// Reads the file and applies it to the index as it goes (see [`Loader`]). A file that does not
/// parse to the end has had the pods before the error applied (they are real), and nothing
/// ended for being missing.
fn load_into(
    path: &Path,
    index: &SharedIndex,
    now: SystemTime,
    previous: Option<SystemTime>,
) -> Result<(Signature, FileCounts), MetadataError> {
    let read_err = |source| MetadataError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let before = signature(path).map_err(read_err)?;
    let bytes = std::fs::read(path).map_err(read_err)?;
    let mut loader = Loader::new(index, now);
    parse_items(path, &bytes, &mut |item| loader.item(item))?;
    drop(bytes);
    Ok((before, loader.finish(previous)))
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
            Ok(_) => load_into(&path, &index, now, loaded_at).map(|(sig, counts)| {
                if loaded_at.is_none() {
                    tracing::info!(path = %path.display(), pods = counts.pods,
                        services = counts.services, nodes = counts.nodes, "metadata file loaded");
                } else {
                    tracing::info!(path = %path.display(), pods = counts.pods, "metadata file changed, reloaded");
                }
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
