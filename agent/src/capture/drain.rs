//! The drain: flip the epoch, wait out an RCU grace period, read and delete exactly the old
//! epoch's entries (flow maps, per-CPU cache slots, spill maps), and read the counters.
//!
//! Either way of walking the maps ([`walk`]) runs after the flip and the grace period, so no
//! program writes a key of the old epoch any more: what is read is final, and deleting it loses
//! nothing. The cache slots and spill entries of the old epoch ([`extras`]) are merged into the
//! flow-map entries of the same key as the walk converts them.
mod extras;
mod walk;

use std::{collections::HashMap, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, IterableMap as _, MapData, PerCpuArray},
};
use podflow_ebpf::{
    CACHE_V4, CACHE_V6, COUNTERS, CacheEntry, Config, FLOWS_V4, FLOWS_V6, FlowKey, FlowKeyV4,
    FlowKeyV6, FlowStats, FlowValue, KEY_F_EPOCH, KernelCounter, SPILL_V4, SPILL_V6,
};

use self::{
    extras::{CacheMap, SpillMap, leftover_entry, take_cached, take_spills, with_extras},
    walk::{BatchBufs, FlowMap, drain_one},
};
use super::{
    CaptureError, FlowEntry, KernelCounters,
    clock::{self, ClockSampler, JiffyClock},
    load::open_map,
    sys,
};
use crate::time::monotonic_ns;

/// Keys and values buffer of one batch call stay below this (kept from drain to drain).
const BATCH_BUFFER_BYTES: usize = 1 << 20;
/// Sleep used instead of an RCU grace period when `membarrier` is unavailable. A tc program runs
/// for microseconds; 50 ms is far beyond any RCU read-side section of one.
const GRACE_FALLBACK: Duration = Duration::from_millis(50);

/// One address family's maps and the scratch of draining them.
struct Family<K>
where
    CacheEntry<K>: aya::Pod,
{
    flows: FlowMap<K>,
    spill: SpillMap<K>,
    cache: CacheMap<K>,
    /// What the drain in progress found outside the flow map, by kernel key: the per-CPU cache
    /// slots and the spill entries, merged.
    extras: HashMap<K, FlowStats>,
    /// Buffers reused from drain to drain.
    bufs: BatchBufs<K>,
    keys: Vec<K>,
}

impl<K: aya::Pod + Default> Family<K>
where
    CacheEntry<K>: aya::Pod,
{
    fn open(
        ebpf: &mut Ebpf,
        names: [&'static str; 3],
        chunk: usize,
    ) -> Result<Family<K>, CaptureError> {
        Ok(Family {
            flows: open_map(ebpf, names[0])?,
            spill: open_map(ebpf, names[1])?,
            cache: open_map(ebpf, names[2])?,
            extras: HashMap::new(),
            bufs: BatchBufs::new(chunk),
            keys: Vec::new(),
        })
    }
}

/// The maps a drain reads and the state it keeps from one drain to the next.
pub(super) struct Drainer {
    v4: Family<FlowKeyV4>,
    v6: Family<FlowKeyV6>,
    /// Possible CPUs: the values of a per-CPU cache slot.
    cpus: usize,
    /// The `CONFIG` map the programs read the epoch and the sampling rate from.
    config_map: Array<MapData, Config>,
    sample_rate: u32,
    epoch: u32,
    counters: PerCpuArray<MapData, u64>,
    sampler: ClockSampler,
    clock: JiffyClock,
    capacity: u32,
    /// `false` once `BPF_MAP_LOOKUP_AND_DELETE_BATCH` was refused: use the per-entry path.
    batch_ok: bool,
    membarrier_warned: bool,
}

impl Drainer {
    pub(super) fn new(
        ebpf: &mut Ebpf,
        config_map: Array<MapData, Config>,
        sample_rate: u32,
        entries: u32,
        epoch: u32,
    ) -> Result<Drainer, CaptureError> {
        let sampler = ClockSampler::open(ebpf)?;
        let clock = JiffyClock::new(sampler.sample(ebpf)?);
        // Each batch call reads at most what fits the buffer, or the whole map.
        let chunk = (BATCH_BUFFER_BYTES / (size_of::<FlowKey>() + size_of::<FlowValue>()))
            .clamp(64, entries.max(64) as usize);
        let v4 = Family::open(ebpf, [FLOWS_V4, SPILL_V4, CACHE_V4], chunk)?;
        let capacity = (v4.flows.map().info().ok()).map_or(entries, |i| i.max_entries());
        Ok(Drainer {
            v4,
            v6: Family::open(ebpf, [FLOWS_V6, SPILL_V6, CACHE_V6], chunk)?,
            cpus: aya::util::nr_cpus().map_err(|(_, e)| CaptureError::Cpus { source: e })?,
            config_map,
            sample_rate,
            epoch,
            counters: open_map(ebpf, COUNTERS)?,
            sampler,
            clock,
            capacity,
            batch_ok: true,
            membarrier_warned: false,
        })
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(super) fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub(super) fn epoch(&self) -> u32 {
        self.epoch
    }

    pub(super) fn clock(&self) -> &JiffyClock {
        &self.clock
    }

    pub(super) fn set_batch(&mut self, on: bool) {
        self.batch_ok = on;
    }

    /// See [`super::Capture::drain_into`]; `ebpf` runs the clock sampler.
    pub(super) fn drain_into(
        &mut self,
        ebpf: &Ebpf,
        entries: &mut Vec<FlowEntry>,
    ) -> Result<(KernelCounters, u64), CaptureError> {
        let old = self.epoch;
        let new = old.wrapping_add(1);
        self.config_map
            .set(
                0,
                Config {
                    epoch: new,
                    sample_rate: self.sample_rate,
                },
                0,
            )
            .map_err(|source| CaptureError::Map {
                op: "flip CONFIG.epoch",
                source,
            })?;
        self.epoch = new;
        let mono_ns = monotonic_ns();
        self.wait_grace_period();
        let ticks = self.clock.update(self.sampler.sample(ebpf)?);
        if ticks >= clock::TIME_WRAP_TICKS {
            tracing::warn!(
                ticks,
                hz = self.clock.hz(),
                "drains were 2^16 ticks or more apart: first/last times of this drain may be early \
                 by multiples of 2^16 ticks"
            );
        }

        let old_bit = if old & 1 != 0 { KEY_F_EPOCH } else { 0 };
        entries.clear();
        let clock = self.clock;
        let (cpus, parity) = (self.cpus, old & 1);
        let (v4, v6) = (&mut self.v4, &mut self.v6);
        take_cached(&mut v4.cache, parity, cpus, &clock, &mut v4.extras)?;
        take_cached(&mut v6.cache, parity, cpus, &clock, &mut v6.extras)?;
        take_spills(&mut v4.spill, old_bit, &mut v4.extras)?;
        take_spills(&mut v6.spill, old_bit, &mut v6.extras)?;
        let batch = self.batch_ok;
        let extras = &mut v4.extras;
        let res = drain_one(
            &mut v4.flows,
            batch,
            &mut v4.bufs,
            &mut v4.keys,
            |k: &FlowKeyV4| k.tail.epoch_bit() == old_bit,
            |k: &FlowKeyV4, v: &FlowValue| FlowEntry {
                key: k.to_key(),
                stats: with_extras(clock.decode(&k.tail, v), extras, k),
            },
            entries,
        );
        let v4_batch = self.settle_batch(res)?;
        let (v4, v6) = (&mut self.v4, &mut self.v6);
        let extras = &mut v6.extras;
        let res = drain_one(
            &mut v6.flows,
            v4_batch,
            &mut v6.bufs,
            &mut v6.keys,
            |k: &FlowKeyV6| k.tail.epoch_bit() == old_bit,
            |k: &FlowKeyV6, v: &FlowValue| FlowEntry {
                key: k.to_key(),
                stats: with_extras(clock.decode(&k.tail, v), extras, k),
            },
            entries,
        );
        // Flows only the caches held this drain (never moved to the maps) are entries of their
        // own.
        let leftovers = (v4.extras.drain())
            .map(|(k, s)| (k.to_key(), s))
            .chain(v6.extras.drain().map(|(k, s)| (k.to_key(), s)));
        entries.extend(leftovers.map(|(key, stats)| leftover_entry(key, stats, mono_ns)));
        self.settle_batch(res)?;
        Ok((self.read_counters()?, mono_ns))
    }

    /// Remembers a refused batch command; returns whether batches may still be used.
    fn settle_batch(&mut self, res: Result<bool, CaptureError>) -> Result<bool, CaptureError> {
        self.batch_ok &= res?;
        Ok(self.batch_ok)
    }

    /// The `COUNTERS` array summed over CPUs.
    fn read_counters(&self) -> Result<KernelCounters, CaptureError> {
        let mut counters = KernelCounters::default();
        for (i, c) in counters.iter_mut().enumerate() {
            let v = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|source| CaptureError::Map {
                    op: "read COUNTERS",
                    source,
                })?;
            *c = v.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        }
        // The programs do not count runs (one update less per packet): every run ends in exactly
        // one outcome counter.
        counters[KernelCounter::Packets as usize] = KernelCounter::ALL
            .iter()
            .filter(|c| c.is_outcome())
            .fold(0u64, |a, c| a.wrapping_add(counters[*c as usize]));
        Ok(counters)
    }

    fn wait_grace_period(&mut self) {
        if let Err(e) = sys::membarrier_global() {
            if !self.membarrier_warned {
                tracing::warn!(error = %e,
                    "membarrier(MEMBARRIER_CMD_GLOBAL) unavailable (nohz_full?); waiting 50 ms per drain instead of an RCU grace period");
                self.membarrier_warned = true;
            }
            std::thread::sleep(GRACE_FALLBACK);
        }
    }
}
