//! What a drain finds outside the flow maps: the old epoch's per-CPU cache slots (flows counted
//! with plain stores, see `podflow_ebpf::CacheEntry`) and spill entries (counts moved out of a
//! flow-map entry before its fields overflowed), merged by kernel key into the flow-map entries
//! of the same flow, point and interface.
use std::collections::HashMap;

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use podflow_ebpf::{CACHE_SLOTS, CacheEntry, FlowKey, FlowStats, KeyTail, SpillValue};

use super::walk::delete_one;
use crate::capture::{CaptureError, FlowEntry, clock::JiffyClock};

/// A spill map of one address family.
pub(crate) type SpillMap<K> = aya::maps::HashMap<MapData, K, SpillValue>;
/// The per-CPU flow cache of one address family.
pub(crate) type CacheMap<K> = PerCpuArray<MapData, CacheEntry<K>>;

/// A kernel key that ends in a [`KeyTail`].
pub(crate) trait Tailed {
    fn tail(&self) -> &KeyTail;
}

impl Tailed for podflow_ebpf::FlowKeyV4 {
    fn tail(&self) -> &KeyTail {
        &self.tail
    }
}

impl Tailed for podflow_ebpf::FlowKeyV6 {
    fn tail(&self) -> &KeyTail {
        &self.tail
    }
}

/// Reads and deletes the spill entries of the epoch `old_bit`, merging them into `out` by key.
/// Spilled counts have no times of their own (`first_ns` `u64::MAX`, `last_ns` 0): they always
/// join the flow-map entry they were moved out of.
pub(crate) fn take_spills<K: aya::Pod + Eq + std::hash::Hash + Tailed>(
    map: &mut SpillMap<K>,
    old_bit: u8,
    out: &mut HashMap<K, FlowStats>,
) -> Result<(), CaptureError> {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.tail().epoch_bit() == old_bit)
        .collect();
    for k in keys {
        match map.get(&k, 0) {
            Ok(v) => {
                let piece = FlowStats {
                    packets: v.packets,
                    bytes: v.bytes,
                    first_ns: u64::MAX,
                    last_ns: 0,
                    ifindex: u32::from(k.tail().ifindex_lo),
                    ..FlowStats::default()
                };
                out.entry(k)
                    .and_modify(|m| merge_stats(m, &piece))
                    .or_insert(piece);
            }
            Err(MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(CaptureError::Map {
                    op: "read a spill entry",
                    source,
                });
            }
        }
        delete_one(map, &k)?;
    }
    Ok(())
}

/// Reads the cache slots of epoch parity `parity` of every CPU (`cpus` possible ones), merging
/// the occupied ones into `out` (cleared first) by key, and zeroes the slots it found occupied.
pub(crate) fn take_cached<K: aya::Pod + Eq + std::hash::Hash + Default + Tailed>(
    map: &mut CacheMap<K>,
    parity: u32,
    cpus: usize,
    clock: &JiffyClock,
    out: &mut HashMap<K, FlowStats>,
) -> Result<(), CaptureError>
where
    CacheEntry<K>: aya::Pod,
{
    out.clear();
    for index in parity * CACHE_SLOTS..(parity + 1) * CACHE_SLOTS {
        let values = map.get(&index, 0).map_err(|source| CaptureError::Map {
            op: "read a flow cache slot",
            source,
        })?;
        let mut occupied = false;
        for e in values.iter().filter(|e| e.value.counts != 0) {
            occupied = true;
            let s = clock.decode(e.key.tail(), &e.value);
            out.entry(e.key)
                .and_modify(|m| merge_stats(m, &s))
                .or_insert(s);
        }
        if occupied {
            let zeros = PerCpuValues::try_from(vec![CacheEntry::<K>::default(); cpus]).map_err(
                |source| CaptureError::Map {
                    op: "zero a flow cache slot",
                    source: MapError::IoError(source),
                },
            )?;
            map.set(index, zeros, 0)
                .map_err(|source| CaptureError::Map {
                    op: "zero a flow cache slot",
                    source,
                })?;
        }
    }
    Ok(())
}

/// Adds `b` (another piece of the same flow at the same point and interface) to `a`.
fn merge_stats(a: &mut FlowStats, b: &FlowStats) {
    a.packets += b.packets;
    a.bytes += b.bytes;
    a.first_ns = a.first_ns.min(b.first_ns);
    a.last_ns = a.last_ns.max(b.last_ns);
    a.tcp_flags |= b.tcp_flags;
    a.ct |= b.ct;
}

/// `stats` (a flow-map entry) with the drain's extras of the same key taken out and added.
pub(crate) fn with_extras<K: Eq + std::hash::Hash>(
    mut stats: FlowStats,
    extras: &mut HashMap<K, FlowStats>,
    key: &K,
) -> FlowStats {
    if !extras.is_empty()
        && let Some(s) = extras.remove(key)
    {
        merge_stats(&mut stats, &s);
    }
    stats
}

/// An entry of extras no flow-map entry took: a flow only a cache held. Spilled counts are
/// always moved out of a flow-map entry, so extras without times (`first_ns` `u64::MAX`) should
/// not happen; if they ever do, they are kept, stamped with the drain's time (`now_ns`).
pub(crate) fn leftover_entry(key: FlowKey, mut stats: FlowStats, now_ns: u64) -> FlowEntry {
    if stats.first_ns == u64::MAX {
        tracing::warn!(
            ?key,
            ifindex = stats.ifindex,
            "spill entry without a flow entry"
        );
        stats.first_ns = now_ns;
        stats.last_ns = now_ns;
    }
    FlowEntry { key, stats }
}
