//! Reading and deleting the entries of one epoch from a flow map.
//!
//! Fast path, through `BPF_MAP_LOOKUP_BATCH` ([`sys::lookup_batch`]): the whole map is walked a
//! few thousand entries per syscall, the old epoch's entries are kept, and `BPF_MAP_DELETE_BATCH`
//! deletes exactly their keys, chunk by chunk as the walk goes. Fallback (kernels without batch
//! operations on hash maps, < 5.6, or if a batch call is refused): iterate keys
//! (`BPF_MAP_GET_NEXT_KEY`), look each up, delete the old epoch's one by one.
use std::{io, os::fd::AsFd as _};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError},
};
use podflow_ebpf::FlowValue;

use crate::{
    capture::{CaptureError, FlowEntry, sys},
    report::error_chain,
};

/// A flow map of one address family.
pub(crate) type FlowMap<K> = HashMap<MapData, K, FlowValue>;

/// Outcome of a batch walk.
enum Batch {
    /// The whole map was walked.
    Done,
    /// The kernel refused the batch command before touching anything (`EINVAL`, `ENOTSUPP`...):
    /// use the per-entry path.
    Unsupported(io::Error),
}

/// Reusable buffers of one map's batch walk.
pub(crate) struct BatchBufs<K> {
    keys: Vec<K>,
    vals: Vec<FlowValue>,
    kept: Vec<(K, FlowValue)>,
}

impl<K: Pod + Default> BatchBufs<K> {
    pub(crate) fn new(chunk: usize) -> BatchBufs<K> {
        BatchBufs {
            keys: vec![K::default(); chunk.max(1)],
            vals: vec![FlowValue::default(); chunk.max(1)],
            kept: Vec::new(),
        }
    }
}

/// Reads and deletes one map's entries that `keep` accepts (the old epoch), appending them to
/// `entries` through `convert`. Returns whether the batch path may be used next time.
pub(crate) fn drain_one<K: Pod + Default>(
    map: &mut FlowMap<K>,
    batch: bool,
    bufs: &mut BatchBufs<K>,
    keys: &mut Vec<K>,
    keep: impl Fn(&K) -> bool + Copy,
    mut convert: impl FnMut(&K, &FlowValue) -> FlowEntry,
    entries: &mut Vec<FlowEntry>,
) -> Result<bool, CaptureError> {
    if batch {
        match walk_batches(map, bufs, keys, keep, &mut convert, entries) {
            Ok(Batch::Done) => return Ok(true),
            Ok(Batch::Unsupported(e)) => {
                tracing::info!(error = %e,
                    "BPF_MAP_LOOKUP_BATCH unsupported; draining entry by entry");
                per_entry(map, keep, &mut convert, entries)?;
                return Ok(false);
            }
            // What was read so far was deleted too and is in `entries`; the rest is read entry
            // by entry (`keep` still selects only old-epoch keys, all of them still in the map).
            Err(e) => {
                tracing::warn!(error = %error_chain(&e),
                    "batch lookup failed half-way; finishing entry by entry");
            }
        }
    }
    per_entry(map, keep, &mut convert, entries)?;
    Ok(batch)
}

/// Walks the whole map with `BPF_MAP_LOOKUP_BATCH`, deleting and converting the entries `keep`
/// accepts chunk by chunk as the walk goes, so that while the programs fill the same map with the
/// new epoch the old epoch's room is given back as early as possible. (Deleting in buckets the
/// walk has passed does not disturb it: its token is a bucket index.)
fn walk_batches<K: Pod + Default>(
    map: &mut FlowMap<K>,
    bufs: &mut BatchBufs<K>,
    keys: &mut Vec<K>,
    keep: impl Fn(&K) -> bool,
    convert: &mut impl FnMut(&K, &FlowValue) -> FlowEntry,
    entries: &mut Vec<FlowEntry>,
) -> Result<Batch, CaptureError> {
    // The hash map's batch token is a u32 bucket index; 8 bytes leaves room.
    let mut token: u64 = 0;
    let mut first = true;
    loop {
        let chunk = bufs.keys.len();
        let (n, res) = sys::lookup_batch(
            map.map().fd().as_fd(),
            first,
            &mut token,
            &mut bufs.keys,
            &mut bufs.vals,
        );
        match res.as_ref().err().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {}
            Some(libc::ENOSPC) if n == 0 => {
                // One bucket holds more entries than `chunk`: grow and retry the same bucket.
                bufs.keys.resize(chunk * 2, K::default());
                bufs.vals.resize(chunk * 2, FlowValue::default());
                continue;
            }
            Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP | 524 /* ENOTSUPP */)
                if first && n == 0 =>
            {
                return Ok(Batch::Unsupported(
                    res.err().unwrap_or_else(|| io::Error::other("?")),
                ));
            }
            Some(_) => {
                return Err(CaptureError::Drain {
                    op: "BPF_MAP_LOOKUP_BATCH",
                    source: res.err().unwrap_or_else(|| io::Error::other("?")),
                });
            }
        }
        bufs.kept.clear();
        bufs.kept.extend(
            bufs.keys[..n]
                .iter()
                .zip(&bufs.vals[..n])
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (*k, *v)),
        );
        keys.clear();
        keys.extend(bufs.kept.iter().map(|(k, _)| *k));
        let (done, deleted) = sys::delete_batch(map.map().fd().as_fd(), keys);
        if let Err(e) = deleted {
            tracing::warn!(error = %e, deleted = done,
                "BPF_MAP_DELETE_BATCH failed half-way; deleting the rest one by one");
            for k in &keys[done..] {
                delete_one(map, k)?;
            }
        }
        entries.extend(bufs.kept.iter().map(|(k, v)| convert(k, v)));
        first = false;
        if res.is_err() {
            return Ok(Batch::Done); // ENOENT: the walk reached the last bucket
        }
    }
}

/// Per-entry fallback: look up every key `keep` accepts, convert the entry, delete the key.
fn per_entry<K: Pod + Default>(
    map: &mut FlowMap<K>,
    keep: impl Fn(&K) -> bool,
    convert: &mut impl FnMut(&K, &FlowValue) -> FlowEntry,
    entries: &mut Vec<FlowEntry>,
) -> Result<(), CaptureError> {
    let keys: Vec<K> = map
        .keys()
        .filter(|k| k.as_ref().map_or(true, &keep))
        .collect::<Result<_, _>>()
        .map_err(|source| CaptureError::Map {
            op: "iterate flow map keys",
            source,
        })?;
    for key in keys {
        match map.get(&key, 0) {
            Ok(v) => entries.push(convert(&key, &v)),
            Err(MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(CaptureError::Map {
                    op: "look up flow",
                    source,
                });
            }
        }
        delete_one(map, &key)?;
    }
    Ok(())
}

/// Deletes one key; a key already gone is not an error.
pub(crate) fn delete_one<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<(), CaptureError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(CaptureError::Map {
            op: "delete flow",
            source,
        }),
    }
}
