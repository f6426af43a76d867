//! Keeping the kernel side across agent restarts (`--pin-dir`). The flow maps, their spill maps
//! and per-CPU caches, `CONFIG` (the epoch), `COUNTERS` and `STATE` are pinned under
//! `DIR/netns-<inode>/<layout>/maps/`, the tcx links under `…/links/<ifindex>-<direction>`. A
//! killed, stopped or upgraded agent leaves them in place: its programs keep counting into the
//! maps while no agent runs. The next agent with the same layout adopts them: it opens the maps
//! instead of creating them, continues from the epoch in `CONFIG` and the loss counts in `STATE`,
//! and swaps its own programs into the pinned links atomically (`BPF_LINK_UPDATE`), so every
//! packet is counted once across the restart. (cls_bpf filters, netlink mode, outlive their agent
//! without pins; they are swapped by detach + attach, a gap of microseconds that is declared.)
//!
//! What cannot be adopted is dropped and declared as a gap (`agent_restart_gap`, from the previous
//! agent's last drain to now): maps of another layout (another [`MAP_LAYOUT_VERSION`], map size or
//! sampling rate) or a partial set. The directory is per network namespace, so agents of different
//! namespaces (tests, the demo's nodes) never share maps.
use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use aya::maps::{Array, Map, MapData};
use podflow_ebpf::{
    CACHE_V4, CACHE_V6, CONFIG, COUNTERS, CacheEntry, Config, FLOWS_V4, FLOWS_V6, FlowKeyV4,
    FlowKeyV6, FlowValue, MAP_LAYOUT_VERSION, SPILL_MAP_ENTRIES, SPILL_V4, SPILL_V6, STATE,
    STATE_SLOTS, SpillValue, StateSlot,
};

use super::{CaptureError, KernelCounters, sys};
use crate::time::realtime_ns;

/// The maps a later agent adopts.
pub(super) const PINNED_MAPS: [&str; 9] = [
    FLOWS_V4, FLOWS_V6, SPILL_V4, SPILL_V6, CACHE_V4, CACHE_V6, CONFIG, COUNTERS, STATE,
];

/// Reason of a gap whose maps were dropped.
pub const AGENT_RESTART_GAP: &str = "agent_restart_gap";
/// Reason of a gap while a cls_bpf filter was replaced by detach + attach.
pub const REATTACH_GAP: &str = "reattach_gap";
/// Reason of a gap between the last check that found our filter and the check that found it
/// removed by someone else (it was attached again then).
pub const DETACHED_GAP: &str = "detached_gap";

/// A time during which packets were not counted, or were counted into maps that were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// `CLOCK_REALTIME`, ns.
    pub from_ns: u64,
    pub to_ns: u64,
    pub reason: &'static str,
    pub detail: String,
}

/// The pin directory of this agent: where its maps and links are, and what it found there.
#[derive(Debug)]
pub(super) struct Pins {
    /// `DIR/netns-<inode>/<layout>`.
    pub dir: PathBuf,
    /// The maps were there: a previous agent's, adopted.
    pub adopted: bool,
    pub gaps: Vec<Gap>,
}

impl Pins {
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }
}

/// The directory name of a map layout: adoption needs equal sizes and meaning, and the same
/// sampling rate (records carry it).
pub fn layout_name(flow_map_entries: u32, sample_rate: u32) -> String {
    // FNV-1a over the sizes that decide what the maps hold.
    let sizes = [
        size_of::<FlowKeyV4>(),
        size_of::<FlowKeyV6>(),
        size_of::<FlowValue>(),
        size_of::<SpillValue>(),
        size_of::<CacheEntry<FlowKeyV4>>(),
        size_of::<CacheEntry<FlowKeyV6>>(),
        size_of::<Config>(),
        podflow_ebpf::COUNTER_COUNT as usize,
        SPILL_MAP_ENTRIES as usize,
        podflow_ebpf::CACHE_SLOTS as usize,
        STATE_SLOTS as usize,
    ];
    let mut hash: u32 = 0x811c_9dc5;
    for b in sizes.iter().flat_map(|s| (*s as u64).to_le_bytes()) {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!(
        "v{MAP_LAYOUT_VERSION}-{flow_map_entries}-r{}-{hash:08x}",
        sample_rate.max(1)
    )
}

/// `DIR/netns-<inode>`: the pins of the calling thread's network namespace.
pub fn netns_dir(root: &Path) -> io::Result<PathBuf> {
    let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(root.join(format!("netns-{ino}")))
}

/// Opens the pinned `STATE` of a layout directory.
fn open_state(dir: &Path) -> Option<Array<MapData, u64>> {
    let data = MapData::from_pin(dir.join("maps").join(STATE)).ok()?;
    Array::try_from(Map::Array(data)).ok()
}

/// When the agent that used a layout directory drained last (`CLOCK_REALTIME` ns), if known.
fn last_drain_ns(dir: &Path) -> Option<u64> {
    open_state(dir)?
        .get(&(StateSlot::LastDrainNs as u32), 0)
        .ok()
        .filter(|t| *t > 0)
}

/// Unpins everything under `dir` (links detach when no one holds them) and removes it.
fn remove_pins(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_pins(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Checks `root` is on a bpffs, drops layouts other than this agent's (declaring their gap) and
/// says whether this agent's maps are there to adopt.
pub(super) fn prepare(
    root: &Path,
    flow_map_entries: u32,
    sample_rate: u32,
) -> Result<Pins, CaptureError> {
    let err = |op: &'static str, path: &Path, source: io::Error| CaptureError::Pin {
        op,
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(root).map_err(|e| err("create", root, e))?;
    if !sys::is_bpffs(root).map_err(|e| err("statfs", root, e))? {
        return Err(err(
            "check",
            root,
            io::Error::other("not on a BPF file system (mount -t bpf bpf /sys/fs/bpf)"),
        ));
    }
    let ns = netns_dir(root).map_err(|e| err("name the network namespace of", root, e))?;
    std::fs::create_dir_all(&ns).map_err(|e| err("create", &ns, e))?;
    let layout = layout_name(flow_map_entries, sample_rate);
    let dir = ns.join(&layout);
    let now = realtime_ns();
    let mut gaps = Vec::new();
    for entry in std::fs::read_dir(&ns).map_err(|e| err("list", &ns, e))? {
        let other = entry.map_err(|e| err("list", &ns, e))?.path();
        if other == dir {
            continue;
        }
        gaps.push(drop_layout(
            &other,
            now,
            &format!("another map layout than this agent's {layout}"),
        )?);
    }
    let complete = PINNED_MAPS
        .iter()
        .all(|name| dir.join("maps").join(name).exists());
    if !complete && dir.exists() {
        gaps.push(drop_layout(&dir, now, "an incomplete set of maps")?);
    }
    for sub in ["maps", "links"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| err("create", &path, e))?;
    }
    if complete {
        tracing::info!(dir = %dir.display(), "adopting the kernel side of the previous agent: \
            its maps and links, and what its programs counted since its last drain");
    }
    Ok(Pins {
        dir,
        adopted: complete,
        gaps,
    })
}

/// Drops a layout directory a previous agent left that this one cannot read: its programs stop
/// (their links are unpinned), and what they counted since that agent's last drain is a gap.
fn drop_layout(dir: &Path, now: u64, why: &str) -> Result<Gap, CaptureError> {
    let from = last_drain_ns(dir).unwrap_or_else(|| {
        // No drain recorded: the directory's age is the best bound there is.
        std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(now, |d| u64::try_from(d.as_nanos()).unwrap_or(now))
    });
    remove_pins(dir).map_err(|source| CaptureError::Pin {
        op: "remove",
        path: dir.to_path_buf(),
        source,
    })?;
    let detail = format!(
        "dropped the kernel side a previous agent left in {} ({why}): what its programs counted \
         after its last drain is lost",
        dir.display()
    );
    tracing::warn!("{detail}");
    Ok(Gap {
        from_ns: from.min(now),
        to_ns: now,
        reason: AGENT_RESTART_GAP,
        detail,
    })
}

/// Removes every pin of the calling thread's network namespace under `root` (`podflow cleanup`):
/// pinned links detach, pinned maps go when no program holds them. Returns the layouts removed.
pub fn remove_all(root: &Path) -> io::Result<usize> {
    let ns = netns_dir(root)?;
    if !ns.exists() {
        return Ok(0);
    }
    let n = std::fs::read_dir(&ns)?.count();
    remove_pins(&ns)?;
    Ok(n)
}

/// `STATE`: what the agent reported, written after every drain for the agent after it.
pub(super) struct State {
    map: Array<MapData, u64>,
}

impl State {
    pub fn new(map: Array<MapData, u64>) -> State {
        State { map }
    }

    /// The loss counts the previous agent had reported (adopted maps only).
    pub fn reported(&self) -> KernelCounters {
        let mut out = KernelCounters::default();
        for (i, v) in out.iter_mut().enumerate() {
            let slot = StateSlot::Reported as u32 + i as u32;
            *v = self.map.get(&slot, 0).unwrap_or(0);
        }
        out
    }

    /// Records the counts reported so far and the time of this drain.
    pub fn save(&mut self, reported: &KernelCounters) -> Result<(), CaptureError> {
        let map_err = |source| CaptureError::Map {
            op: "write STATE",
            source,
        };
        for (i, v) in reported.iter().enumerate() {
            let slot = StateSlot::Reported as u32 + i as u32;
            self.map.set(slot, *v, 0).map_err(map_err)?;
        }
        self.map
            .set(StateSlot::LastDrainNs as u32, realtime_ns(), 0)
            .map_err(map_err)
    }
}

/// A measured gap while cls_bpf filters were swapped (detach + attach), for one interface.
pub(super) fn reattach_gap(iface: &str, from_ns: u64) -> Gap {
    let to_ns = realtime_ns();
    Gap {
        from_ns,
        to_ns: to_ns.max(from_ns),
        reason: REATTACH_GAP,
        detail: format!("{iface}: the previous agent's cls_bpf filters were replaced"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_differ_by_size_and_rate() {
        let a = layout_name(65_536, 1);
        assert!(
            a.starts_with(&format!("v{MAP_LAYOUT_VERSION}-65536-r1-")),
            "{a}"
        );
        assert_eq!(a, layout_name(65_536, 0));
        assert_ne!(a, layout_name(4096, 1));
        assert_ne!(a, layout_name(65_536, 10));
    }
}
