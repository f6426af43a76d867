//! Capture: load the eBPF object, attach its tc programs to the node's pod veths and L3 tunnel
//! interfaces (tcx, or clsact + cls_bpf where tcx is missing), follow netlink for interfaces that
//! come and go, and drain the kernel's flow maps.
//!
//! ```ignore
//! let mut cap = Capture::load(CaptureConfig { .. })?;      // loads + configures, attaches nothing
//! let mut events = LinkWatcher::new()?;                      // subscribe first: nothing is missed
//! let changes = cap.sync_interfaces()?;                      // attach to every matching existing link
//! while let Some(ev) = events.next().await { cap.handle_link_event(ev)?; }
//! let drain: Drain = cap.drain()?;                           // flip, RCU-sync, read, clear
//! cap.interfaces();                                          // Vec<AttachedInterface>
//! cap.interface_name(ifindex);                               // also for recently removed ones
//! cap.detach_all();                                          // on SIGTERM: only what we attached
//! ```
//!
//! # Network namespaces
//!
//! Everything acts in the network namespace of the *calling thread*: the netlink sockets, the
//! interface-name lookups and the attachments. Use a `Capture` from one thread (or from threads in
//! the same namespace).
//!
//! # Which programs go where
//!
//! Interfaces are chosen by name pattern *and* link-layer type: an `ARPHRD_ETHER` device matching
//! [`CaptureConfig::veth_patterns`] gets the L2 programs; a device without an Ethernet header
//! (`ARPHRD_NONE`: WireGuard, TUN as created by wireguard-go) matching
//! [`CaptureConfig::l3_patterns`] gets the L3 programs. Operational state does not matter.
//!
//! # Exactness of a drain
//!
//! The programs stamp every key with the epoch in `CONFIG.epoch`. [`Capture::drain`] flips it,
//! waits for an RCU grace period (`membarrier(MEMBARRIER_CMD_GLOBAL)` runs `synchronize_rcu()`; tc
//! programs run inside RCU read-side sections, so after it returns no program can still write a
//! key of the old epoch), then reads the old epoch's entries and deletes exactly those. A packet is
//! therefore in exactly one drain.
mod attach;
pub mod clock;
mod drain;
mod netlink;
pub mod object;
mod pattern;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TcAttachType, tc::SchedClassifierLink},
};
use podflow_ebpf::{
    CACHE_SLOTS, CACHE_V4, CACHE_V6, CLOCK, CONFIG, COUNTER_COUNT, COUNTERS, CacheEntry,
    ClockSample, Config, Counter, DEFAULT_FLOW_MAP_ENTRIES, FAMILY_IPV4, FAMILY_IPV6, FLOWS_V4,
    FLOWS_V6, FlowKey, FlowKeyV4, FlowKeyV6, FlowStats, FlowValue, KEY_F_EPOCH, PROG_CLOCK,
    PROG_L3_EGRESS, PROG_L3_INGRESS, PROG_VETH_EGRESS, PROG_VETH_INGRESS, SPILL_V4, SPILL_V6,
    SpillValue, VETHS, VETHS_MAX, VethSlot,
};

use self::clock::JiffyClock;

pub use self::{
    drain::{TestRunResult, load_empty_tc_program, test_run},
    netlink::{LinkEvent, LinkInfo, LinkWatcher, dump_links},
    pattern::glob_match,
};

/// `ARPHRD_ETHER`.
pub const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_NONE`: no link-layer header (WireGuard, TUN).
pub const ARPHRD_NONE: u16 = 0xfffe;

/// How many removed interfaces [`Capture::interface_name`] still remembers, and for how long.
const RECENT_REMOVED_MAX: usize = 1024;
const RECENT_REMOVED_TTL: Duration = Duration::from_secs(600);
/// Keys and values buffer of one batch call stay below this (kept from drain to drain).
const BATCH_BUFFER_BYTES: usize = 1 << 20;
/// Sleep used instead of an RCU grace period when `membarrier` is unavailable. A tc program runs
/// for microseconds; 50 ms is far beyond any RCU read-side section of one.
const GRACE_FALLBACK: Duration = Duration::from_millis(50);

/// What to attach to and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Glob include patterns (`*`, `?`) for host-side pod veths (`ARPHRD_ETHER` devices).
    pub veth_patterns: Vec<String>,
    /// Glob include patterns for layer-3 tunnel devices (WireGuard: `ARPHRD_NONE`).
    pub l3_patterns: Vec<String>,
    /// Names matching any of these are never attached, e.g. Cilium's `lxc_health` (its health
    /// endpoint) or `cilium_wg*` on a node where only pod veths matter. Default: none.
    pub exclude_patterns: Vec<String>,
    pub attach_mode: AttachModePref,
    /// Capacity of each of the two flow maps (`EbpfLoader::set_max_entries`).
    pub flow_map_entries: u32,
    /// Count 1 in `sample_rate` packets (written into `CONFIG`); 0 or 1: every packet.
    pub sample_rate: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            veth_patterns: ["veth*", "cali*", "lxc*", "gke*"]
                .map(String::from)
                .to_vec(),
            l3_patterns: ["cilium_wg*", "wg*"].map(String::from).to_vec(),
            exclude_patterns: Vec::new(),
            attach_mode: AttachModePref::Auto,
            flow_map_entries: DEFAULT_FLOW_MAP_ENTRIES,
            sample_rate: 1,
        }
    }
}

/// Requested attach mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachModePref {
    /// tcx links where the kernel has them (≥ 6.6), else clsact + cls_bpf; if a tcx attach fails
    /// on an interface, that interface falls back to netlink.
    #[default]
    Auto,
    /// tcx links only.
    Tcx,
    /// clsact qdisc + cls_bpf filters (direct action) only.
    Netlink,
}

/// Attach mechanism actually used on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    Tcx,
    Netlink,
}

impl AttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
        }
    }
}

/// Which program pair an interface gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IfaceKind {
    /// Host-side pod veth: `podflow_veth_in` / `podflow_veth_eg`.
    Veth,
    /// Layer-3 tunnel (WireGuard): `podflow_l3_in` / `podflow_l3_eg`.
    L3,
}

impl IfaceKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            IfaceKind::Veth => "veth",
            IfaceKind::L3 => "l3",
        }
    }
}

/// An interface podflow has attached to, on both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub kind: IfaceKind,
    pub mode: AttachMode,
}

/// Result of reconciling with the kernel's link set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceChange {
    Attached(AttachedInterface),
    /// The interface vanished (or was renamed to a non-matching name); its programs are detached.
    Detached(AttachedInterface),
}

/// One flow entry of a drain (one flow at one observation point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// IPv4 flows with IPv4-mapped addresses; the epoch bit cleared.
    pub key: FlowKey,
    /// The map value decoded: times in `CLOCK_MONOTONIC` ns (tick resolution).
    pub stats: FlowStats,
}

/// What one [`Capture::drain`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// Every flow entry counted since the previous drain (each packet in exactly one drain).
    pub entries: Vec<FlowEntry>,
    /// The `COUNTERS` array, cumulative since load, summed over CPUs, indexed by `Counter`.
    pub counters: [u64; COUNTER_COUNT as usize],
    /// `CLOCK_MONOTONIC` right after the flip. Packets counted here arrived before it — or at most
    /// one RCU grace period after it, by programs that had read the old `CONFIG.epoch` just
    /// before the flip; packets after that are in the next drain.
    pub mono_ns: u64,
}

/// Errors of the capture module.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading the ebpf object failed")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the ebpf object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the ebpf object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("loading program {name} into the kernel failed")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("opening map {name} failed")]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("counting the possible cpus failed")]
    Cpus {
        #[source]
        source: std::io::Error,
    },
    #[error("map operation failed: {op}")]
    Map {
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching {program} to {iface} ({direction}, {mode}) failed")]
    Attach {
        program: &'static str,
        iface: String,
        direction: &'static str,
        mode: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("setting up tc on {iface} failed: {op}")]
    Tc {
        iface: String,
        op: &'static str,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("netlink failed: {op}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("undecodable netlink message: {reason}")]
    NetlinkDecode { reason: String },
    #[error("draining the flow maps failed: {op}")]
    Drain {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One attachment: the interface and the two owned links (dropping a link detaches it).
struct Attachment {
    iface: AttachedInterface,
    ingress: SchedClassifierLink,
    egress: SchedClassifierLink,
}

type FlowMapV4 = aya::maps::HashMap<MapData, FlowKeyV4, FlowValue>;
type FlowMapV6 = aya::maps::HashMap<MapData, FlowKeyV6, FlowValue>;
type SpillMap<K> = aya::maps::HashMap<MapData, K, SpillValue>;
type CacheMap<K> = PerCpuArray<MapData, CacheEntry<K>>;

/// The loaded eBPF object, its maps and what is attached where.
pub struct Capture {
    // Field order matters on drop: links detach before the programs and maps go away.
    attached: BTreeMap<u32, Attachment>,
    ebpf: Ebpf,
    flows_v4: FlowMapV4,
    flows_v6: FlowMapV6,
    spill_v4: SpillMap<FlowKeyV4>,
    spill_v6: SpillMap<FlowKeyV6>,
    cache_v4: CacheMap<FlowKeyV4>,
    cache_v6: CacheMap<FlowKeyV6>,
    /// What the drain in progress found outside the flow maps, by kernel key: the per-CPU cache
    /// slots and the spill entries, merged (see [`take_cached`], [`take_spills`]).
    extras_v4: HashMap<FlowKeyV4, FlowStats>,
    extras_v6: HashMap<FlowKeyV6, FlowStats>,
    /// Possible CPUs: the values of a per-CPU cache slot.
    cpus: usize,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    clock_map: Array<MapData, ClockSample>,
    veths: Array<MapData, VethSlot>,
    clock_prog: RawFd,
    clock: JiffyClock,
    cfg: CaptureConfig,
    epoch: u32,
    capacity: u32,
    /// Buffers reused from drain to drain.
    bufs_v4: drain::BatchBufs<FlowKeyV4>,
    bufs_v6: drain::BatchBufs<FlowKeyV6>,
    keys_v4: Vec<FlowKeyV4>,
    keys_v6: Vec<FlowKeyV6>,
    /// Recently removed interfaces: (ifindex, name, when), newest last.
    removed: VecDeque<(u32, String, Instant)>,
    /// Interfaces (by ifindex) whose stale filters from a previous instance were already removed.
    cleaned: HashMap<u32, String>,
    /// `false` once `BPF_MAP_LOOKUP_AND_DELETE_BATCH` was refused: use the per-entry path.
    batch_ok: bool,
    membarrier_warned: bool,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("interfaces", &self.interfaces())
            .field("epoch", &self.epoch)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Takes the map `name` out of the object as a `T` (a typed aya map).
fn open_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(CaptureError::MissingMap { name })?;
    T::try_from(map).map_err(|source| CaptureError::OpenMap { name, source })
}

impl Capture {
    /// Loads the embedded object ([`object::EBPF_OBJECT`]), sizes the flow maps, writes `CONFIG`
    /// and loads the four tc programs (and the clock sampler). Attaches nothing.
    pub fn load(cfg: CaptureConfig) -> Result<Capture, CaptureError> {
        Self::load_object(object::EBPF_OBJECT, cfg)
    }

    /// [`Capture::load`] with another object (tests, benchmarks).
    pub fn load_object(obj: &[u8], cfg: CaptureConfig) -> Result<Capture, CaptureError> {
        let entries = cfg.flow_map_entries.max(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_V4, entries)
            .map_max_entries(FLOWS_V6, entries)
            .load(obj)
            .map_err(|e| CaptureError::Load {
                source: Box::new(e),
            })?;

        // aya-log: only if the object logs at all.
        let logger = if ebpf.map("AYA_LOGS").is_some() {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "ebpf logging unavailable");
                    None
                }
            }
        } else {
            None
        };

        let flows_v4: FlowMapV4 = open_map(&mut ebpf, FLOWS_V4)?;
        let flows_v6: FlowMapV6 = open_map(&mut ebpf, FLOWS_V6)?;
        let spill_v4: SpillMap<_> = open_map(&mut ebpf, SPILL_V4)?;
        let spill_v6: SpillMap<_> = open_map(&mut ebpf, SPILL_V6)?;
        let cache_v4: CacheMap<_> = open_map(&mut ebpf, CACHE_V4)?;
        let cache_v6: CacheMap<_> = open_map(&mut ebpf, CACHE_V6)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| CaptureError::Cpus { source: e })?;
        let clock_map: Array<MapData, ClockSample> = open_map(&mut ebpf, CLOCK)?;
        let veths: Array<MapData, VethSlot> = open_map(&mut ebpf, VETHS)?;
        let mut config: Array<MapData, Config> = open_map(&mut ebpf, CONFIG)?;
        let counters: PerCpuArray<MapData, u64> = open_map(&mut ebpf, COUNTERS)?;

        config
            .set(
                0,
                Config {
                    epoch: 0,
                    sample_rate: cfg.sample_rate,
                },
                0,
            )
            .map_err(|source| CaptureError::Map {
                op: "write CONFIG",
                source,
            })?;

        for name in [
            PROG_VETH_INGRESS,
            PROG_VETH_EGRESS,
            PROG_L3_INGRESS,
            PROG_L3_EGRESS,
            PROG_CLOCK,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram { name })?
                .try_into()
                .map_err(|e| CaptureError::LoadProgram {
                    name,
                    source: Box::new(e),
                })?;
            prog.load().map_err(|e| CaptureError::LoadProgram {
                name,
                source: Box::new(e),
            })?;
        }

        let clock_prog = {
            let prog: &SchedClassifier = ebpf
                .program(PROG_CLOCK)
                .ok_or(CaptureError::MissingProgram { name: PROG_CLOCK })?
                .try_into()
                .map_err(|e| CaptureError::LoadProgram {
                    name: PROG_CLOCK,
                    source: Box::new(e),
                })?;
            // The fd stays owned by the program inside `ebpf`, which lives as long as `Capture`.
            prog.fd()
                .map_err(|e| CaptureError::LoadProgram {
                    name: PROG_CLOCK,
                    source: Box::new(e),
                })?
                .as_fd()
                .as_raw_fd()
        };
        let clock = JiffyClock::new(sample_clock(clock_prog, &clock_map)?);

        let capacity = flows_v4.map_info_max_entries().unwrap_or(entries);
        tracing::info!(
            flow_map_entries = capacity,
            sample_rate = cfg.sample_rate,
            hz = clock.hz(),
            "ebpf programs loaded"
        );
        let chunk = (BATCH_BUFFER_BYTES / (size_of::<FlowKey>() + size_of::<FlowValue>()))
            .clamp(64, capacity.max(64) as usize);
        Ok(Capture {
            attached: BTreeMap::new(),
            ebpf,
            flows_v4,
            flows_v6,
            spill_v4,
            spill_v6,
            cache_v4,
            cache_v6,
            extras_v4: HashMap::new(),
            extras_v6: HashMap::new(),
            cpus,
            config,
            counters,
            clock_map,
            veths,
            clock_prog,
            clock,
            cfg,
            epoch: 0,
            capacity,
            bufs_v4: drain::BatchBufs::new(chunk),
            bufs_v6: drain::BatchBufs::new(chunk),
            keys_v4: Vec::new(),
            keys_v6: Vec::new(),
            removed: VecDeque::new(),
            cleaned: HashMap::new(),
            batch_ok: true,
            membarrier_warned: false,
            logger,
        })
    }

    /// Capacity of each flow map (IPv4 and IPv6: flows per observation point between two
    /// drains), as the kernel created it.
    pub fn flow_map_capacity(&self) -> u32 {
        self.capacity
    }

    /// The interfaces attached right now, by ifindex.
    pub fn interfaces(&self) -> Vec<AttachedInterface> {
        self.attached.values().map(|a| a.iface.clone()).collect()
    }

    /// Name of an attached interface, or of one removed recently (the last 1024, up to 10 min).
    pub fn interface_name(&self, ifindex: u32) -> Option<String> {
        if let Some(a) = self.attached.get(&ifindex) {
            return Some(a.iface.name.clone());
        }
        self.removed
            .iter()
            .rev()
            .find(|(i, _, when)| *i == ifindex && when.elapsed() < RECENT_REMOVED_TTL)
            .map(|(_, n, _)| n.clone())
    }

    /// The kind of program pair a link gets, or `None` if it is not to be attached.
    pub fn classify(&self, name: &str, link_type: u16) -> Option<IfaceKind> {
        if pattern::any_match(&self.cfg.exclude_patterns, name) {
            return None;
        }
        match link_type {
            ARPHRD_ETHER if pattern::any_match(&self.cfg.veth_patterns, name) => {
                Some(IfaceKind::Veth)
            }
            ARPHRD_NONE if pattern::any_match(&self.cfg.l3_patterns, name) => Some(IfaceKind::L3),
            _ => None,
        }
    }

    /// Lists the links (netlink dump) and reconciles: attaches every matching link not attached
    /// yet, forgets attached ones that vanished, treats a rename as remove + add.
    ///
    /// A failure to attach one interface is logged (warn) and skipped — it is retried at the next
    /// sync — so one odd device does not keep the others unattached. Errors: the dump itself.
    pub fn sync_interfaces(&mut self) -> Result<Vec<InterfaceChange>, CaptureError> {
        let links = dump_links()?;
        let mut changes = Vec::new();
        let present: HashMap<u32, &LinkInfo> = links.iter().map(|l| (l.ifindex, l)).collect();
        // Vanished or renamed.
        let stale: Vec<u32> = self
            .attached
            .iter()
            .filter(|(i, a)| present.get(i).is_none_or(|l| l.name != a.iface.name))
            .map(|(i, _)| *i)
            .collect();
        for ifindex in stale {
            let gone = !present.contains_key(&ifindex);
            if let Some(c) = self.forget(ifindex, gone) {
                changes.push(c);
            }
        }
        for l in &links {
            match self.ensure_attached(l) {
                Ok(Some(c)) => changes.push(c),
                Ok(None) => {}
                Err(e) => tracing::warn!(iface = %l.name, ifindex = l.ifindex,
                    error = %crate::capture::error_chain(&e), "attaching failed; will retry at next sync"),
            }
        }
        Ok(changes)
    }

    /// Applies one link event. `Added` attaches a matching link (no-op if already attached under
    /// that name; a rename detaches the old name first), `Removed` forgets it. `Resync` runs
    /// [`Capture::sync_interfaces`] and logs its changes (use [`Capture::handle_link_event_all`]
    /// to get them).
    pub fn handle_link_event(
        &mut self,
        ev: LinkEvent,
    ) -> Result<Option<InterfaceChange>, CaptureError> {
        Ok(self.handle_link_event_all(ev)?.pop())
    }

    /// Like [`Capture::handle_link_event`], but returns every change (a rename of an attached
    /// interface gives `Detached` then possibly `Attached`; `Resync` gives everything the sync did).
    pub fn handle_link_event_all(
        &mut self,
        ev: LinkEvent,
    ) -> Result<Vec<InterfaceChange>, CaptureError> {
        let mut changes = Vec::new();
        match ev {
            LinkEvent::Added {
                name,
                ifindex,
                link_type,
            } => {
                if let Some(a) = self.attached.get(&ifindex) {
                    if a.iface.name == name {
                        return Ok(changes);
                    }
                    // Renamed: remove + add.
                    changes.extend(self.forget(ifindex, false));
                }
                let info = LinkInfo {
                    name,
                    ifindex,
                    link_type,
                };
                changes.extend(self.ensure_attached(&info)?);
            }
            LinkEvent::Removed { ifindex, .. } => {
                changes.extend(self.forget(ifindex, true));
            }
            LinkEvent::Resync => {
                changes = self.sync_interfaces()?;
                for c in &changes {
                    match c {
                        InterfaceChange::Attached(i) => tracing::info!(iface = %i.name,
                            ifindex = i.ifindex, "resync: attached"),
                        InterfaceChange::Detached(i) => tracing::info!(iface = %i.name,
                            ifindex = i.ifindex, "resync: forgotten"),
                    }
                }
            }
        }
        Ok(changes)
    }

    /// Attaches `l` if it matches and is not attached yet.
    fn ensure_attached(&mut self, l: &LinkInfo) -> Result<Option<InterfaceChange>, CaptureError> {
        if self.attached.contains_key(&l.ifindex) {
            return Ok(None);
        }
        let Some(kind) = self.classify(&l.name, l.link_type) else {
            return Ok(None);
        };
        // We attach by name (aya's API): make sure the name still designates this ifindex.
        if attach::ifname_of(l.ifindex).as_deref() != Some(l.name.as_str()) {
            tracing::debug!(iface = %l.name, ifindex = l.ifindex, "link vanished or renamed before attach");
            return Ok(None);
        }
        match self.attach_iface(&l.name, l.ifindex, kind) {
            Ok(a) => {
                let iface = a.iface.clone();
                tracing::info!(iface = %iface.name, ifindex = iface.ifindex, kind = kind.as_str(),
                    mode = iface.mode.as_str(), "attached");
                self.attached.insert(l.ifindex, a);
                // Both programs are attached: from now on the ingress one counts what enters
                // here, so egress programs elsewhere may skip it.
                if kind == IfaceKind::Veth {
                    self.set_veth_slot(l.ifindex, true);
                }
                Ok(Some(InterfaceChange::Attached(iface)))
            }
            Err(e) if attach::ifname_of(l.ifindex).as_deref() != Some(l.name.as_str()) => {
                tracing::debug!(iface = %l.name, ifindex = l.ifindex, error = %e,
                    "link vanished while attaching");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn attach_iface(
        &mut self,
        name: &str,
        ifindex: u32,
        kind: IfaceKind,
    ) -> Result<Attachment, CaptureError> {
        // Stale cls_bpf filters of a podflow that died (kill -9): remove them once per interface,
        // in every mode, so a restart leaves exactly one podflow program per hook.
        // A failure here is logged, not fatal: capturing matters more than a duplicate counter
        // (it is retried at the interface's next attach).
        if self.cleaned.get(&ifindex).map(String::as_str) != Some(name) {
            let mut ok = true;
            for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                if let Err(e) = attach::remove_stale_filters(name, dir) {
                    ok = false;
                    tracing::warn!(iface = name, direction = attach::dir_str(dir), error = %e,
                        "could not check for stale podflow tc filters");
                }
            }
            if ok {
                self.cleaned.insert(ifindex, name.to_owned());
            }
        }
        match self.cfg.attach_mode {
            AttachModePref::Tcx => self.attach_pair(name, ifindex, kind, AttachMode::Tcx),
            AttachModePref::Netlink => self.attach_pair(name, ifindex, kind, AttachMode::Netlink),
            AttachModePref::Auto => {
                let tcx = aya::util::KernelVersion::current()
                    .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
                if tcx {
                    match self.attach_pair(name, ifindex, kind, AttachMode::Tcx) {
                        Ok(a) => return Ok(a),
                        Err(e) => tracing::warn!(iface = name, error = %error_chain(&e),
                            "tcx attach failed, falling back to clsact + cls_bpf"),
                    }
                }
                self.attach_pair(name, ifindex, kind, AttachMode::Netlink)
            }
        }
    }

    /// Attaches both directions or neither.
    fn attach_pair(
        &mut self,
        name: &str,
        ifindex: u32,
        kind: IfaceKind,
        mode: AttachMode,
    ) -> Result<Attachment, CaptureError> {
        if mode == AttachMode::Netlink {
            attach::ensure_clsact(name).map_err(|source| CaptureError::Tc {
                iface: name.to_owned(),
                op: "add clsact qdisc",
                source,
            })?;
        }
        let one = |ebpf: &mut Ebpf, dir: TcAttachType| {
            let program = attach::program_for(kind, dir);
            attach::attach_one(ebpf, program, name, dir, mode).map_err(|e| CaptureError::Attach {
                program,
                iface: name.to_owned(),
                direction: attach::dir_str(dir),
                mode: mode.as_str(),
                source: Box::new(e),
            })
        };
        let ingress = one(&mut self.ebpf, TcAttachType::Ingress)?;
        let egress = match one(&mut self.ebpf, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                if let Err(de) = attach::detach_link(ingress, true) {
                    tracing::warn!(iface = name, error = %de, "rolling back ingress attach failed");
                }
                return Err(e);
            }
        };
        Ok(Attachment {
            iface: AttachedInterface {
                name: name.to_owned(),
                ifindex,
                kind,
                mode,
            },
            ingress,
            egress,
        })
    }

    /// Drops an attachment (detaching; errors because the device is gone are expected) and
    /// remembers its name.
    fn forget(&mut self, ifindex: u32, gone: bool) -> Option<InterfaceChange> {
        let a = self.attached.remove(&ifindex)?;
        // Before the ingress program goes: egress programs must count what enters here again.
        if a.iface.kind == IfaceKind::Veth {
            self.set_veth_slot(ifindex, false);
        }
        self.cleaned.remove(&ifindex);
        for (dir, link) in [("ingress", a.ingress), ("egress", a.egress)] {
            // A device that is gone took its tcx links / cls_bpf filters with it.
            if let Err(e) = attach::detach_link(link, true)
                && !gone
            {
                tracing::warn!(iface = %a.iface.name, direction = dir, error = %e, "detach failed");
            }
        }
        self.remember_removed(ifindex, a.iface.name.clone());
        tracing::info!(iface = %a.iface.name, ifindex, "detached (interface gone or renamed)");
        Some(InterfaceChange::Detached(a.iface))
    }

    fn remember_removed(&mut self, ifindex: u32, name: String) {
        let now = Instant::now();
        while self.removed.len() >= RECENT_REMOVED_MAX
            || self
                .removed
                .front()
                .is_some_and(|(_, _, t)| now.duration_since(*t) > RECENT_REMOVED_TTL)
        {
            self.removed.pop_front();
        }
        self.removed.push_back((ifindex, name, now));
    }

    /// Detaches exactly the programs this instance attached (SIGTERM path). Foreign tc filters and
    /// tcx programs, and the clsact qdiscs, stay. Errors are logged; it always completes.
    pub fn detach_all(&mut self) {
        let all = std::mem::take(&mut self.attached);
        for (ifindex, a) in &all {
            if a.iface.kind == IfaceKind::Veth {
                self.set_veth_slot(*ifindex, false);
            }
        }
        for (ifindex, a) in all {
            for (dir, link) in [("ingress", a.ingress), ("egress", a.egress)] {
                match attach::detach_link(link, true) {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(iface = %a.iface.name, direction = dir,
                        error = %e, "detach failed"),
                }
            }
            tracing::info!(iface = %a.iface.name, ifindex, mode = a.iface.mode.as_str(), "detached");
            self.remember_removed(ifindex, a.iface.name);
        }
        self.cleaned.clear();
    }

    /// Flips the epoch, waits until no program can still write a key of the old one, reads and
    /// deletes the old epoch's entries, and reads the counters. Every packet counted by the
    /// programs ends up in exactly one drain.
    pub fn drain(&mut self) -> Result<Drain, CaptureError> {
        let mut entries = Vec::new();
        let (counters, mono_ns) = self.drain_into(&mut entries)?;
        Ok(Drain {
            entries,
            counters,
            mono_ns,
        })
    }

    /// [`Capture::drain`] into a caller's vector (cleared first; it keeps its allocation from one
    /// flush to the next). Returns the counters and the flip time (see [`Drain`]).
    pub fn drain_into(
        &mut self,
        entries: &mut Vec<FlowEntry>,
    ) -> Result<([u64; COUNTER_COUNT as usize], u64), CaptureError> {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
        let old = self.epoch;
        let new = old.wrapping_add(1);
        self.config
            .set(
                0,
                Config {
                    epoch: new,
                    sample_rate: self.cfg.sample_rate,
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
        let ticks = self
            .clock
            .update(sample_clock(self.clock_prog, &self.clock_map)?);
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
        take_cached(
            &mut self.cache_v4,
            parity,
            cpus,
            |e: &CacheEntry<FlowKeyV4>| clock.decode(&e.key.tail, &e.value),
            &mut self.extras_v4,
        )?;
        take_cached(
            &mut self.cache_v6,
            parity,
            cpus,
            |e: &CacheEntry<FlowKeyV6>| clock.decode(&e.key.tail, &e.value),
            &mut self.extras_v6,
        )?;
        take_spills(&mut self.spill_v4, old_bit, |k| k.tail, &mut self.extras_v4)?;
        take_spills(&mut self.spill_v6, old_bit, |k| k.tail, &mut self.extras_v6)?;
        let batch = self.batch_ok;
        let extras_v4 = &mut self.extras_v4;
        let v4 = drain_one(
            &mut self.flows_v4,
            batch,
            &mut self.bufs_v4,
            &mut self.keys_v4,
            |k: &FlowKeyV4| k.tail.epoch_bit() == old_bit,
            |k: &FlowKeyV4, v: &FlowValue| FlowEntry {
                key: k.to_key(),
                stats: with_extras(clock.decode(&k.tail, v), extras_v4, k),
            },
            entries,
        );
        let v4_batch = settle_batch(&mut self.batch_ok, v4)?;
        let extras_v6 = &mut self.extras_v6;
        let v6 = drain_one(
            &mut self.flows_v6,
            v4_batch,
            &mut self.bufs_v6,
            &mut self.keys_v6,
            |k: &FlowKeyV6| k.tail.epoch_bit() == old_bit,
            |k: &FlowKeyV6, v: &FlowValue| FlowEntry {
                key: k.to_key(),
                stats: with_extras(clock.decode(&k.tail, v), extras_v6, k),
            },
            entries,
        );
        settle_batch(&mut self.batch_ok, v6)?;
        // Flows only the caches held this drain (never moved to the maps) are entries of their
        // own.
        let leftovers = (self.extras_v4.drain())
            .map(|(k, s)| (k.to_key(), s))
            .chain(self.extras_v6.drain().map(|(k, s)| (k.to_key(), s)));
        entries.extend(leftovers.map(|(key, stats)| leftover_entry(key, stats, mono_ns)));

        let mut counters = [0u64; COUNTER_COUNT as usize];
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
        counters[Counter::Packets as usize] = Counter::ALL
            .iter()
            .filter(|c| c.is_outcome())
            .fold(0u64, |a, c| a.wrapping_add(counters[*c as usize]));
        Ok((counters, mono_ns))
    }

    /// Runs the loaded tc program `name` on `data` (`ctx`: a `struct __sk_buff`, or empty)
    /// `repeat` times with `BPF_PROG_TEST_RUN`, as if packets had crossed a hook — for tests of
    /// the drain path with packets no real interface could deliver in a test's time.
    #[doc(hidden)]
    pub fn test_run_program(
        &mut self,
        name: &'static str,
        data: &[u8],
        ctx: &[u8],
        repeat: u32,
    ) -> Result<(), CaptureError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let load = |source: ProgramError| CaptureError::LoadProgram {
            name,
            source: Box::new(source),
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram { name })?
            .try_into()
            .map_err(load)?;
        let mut out = vec![0u8; data.len() + 64];
        prog.test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            ctx_in: (!ctx.is_empty()).then_some(ctx),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(load)?;
        Ok(())
    }

    /// The longest flush interval the flow maps' 16-bit time stamps allow at this kernel's tick
    /// rate (see [`clock::JiffyClock::max_flush_interval`]).
    pub fn max_flush_interval(&self) -> Duration {
        self.clock.max_flush_interval()
    }

    /// Reads aya-log records the programs emitted (if the object logs) into the `log` crate.
    /// [`Capture::drain`] calls it too.
    pub fn flush_ebpf_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Uses (`true`, the default) or avoids `BPF_MAP_LOOKUP_BATCH`/`BPF_MAP_DELETE_BATCH` in
    /// [`Capture::drain`];
    /// `false` forces the per-entry path (lookup each key, then delete each) — for benchmarks and
    /// tests. The batch path also turns itself off if the kernel refuses the command.
    pub fn set_batch_drain(&mut self, on: bool) {
        self.batch_ok = on;
    }

    /// Marks (`on`) or unmarks the veth `ifindex` in `VETHS` (see `podflow_ebpf::VethSlot`).
    /// A failure only costs the optimisation: the packet is then counted at both veths and
    /// deduplicated in user space.
    fn set_veth_slot(&mut self, ifindex: u32, on: bool) {
        if ifindex >= VETHS_MAX {
            return;
        }
        let slot = VethSlot {
            attached: u32::from(on),
            ..VethSlot::default()
        };
        if let Err(e) = self.veths.set(ifindex, slot, 0) {
            tracing::warn!(ifindex, error = %e, "could not update VETHS");
        }
    }

    /// The destination addresses the attached veths last delivered packets counted upstream to
    /// (`(ifindex, family, IPv4-mapped or IPv6 address)`): the pods behind them.
    pub fn veth_peers(&self) -> Vec<(u32, u8, [u8; 16])> {
        let mut out = Vec::new();
        for (&ifindex, a) in &self.attached {
            if a.iface.kind != IfaceKind::Veth || ifindex >= VETHS_MAX {
                continue;
            }
            let Ok(slot) = self.veths.get(&ifindex, 0) else {
                continue;
            };
            if slot.peer4 != [0; 4] {
                out.push((ifindex, FAMILY_IPV4, podflow_ebpf::ipv4_mapped(slot.peer4)));
            }
            if slot.peer6 != [0; 16] {
                out.push((ifindex, FAMILY_IPV6, slot.peer6));
            }
        }
        out
    }

    /// The epoch the programs count into now (it advances by one at every drain).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The tick rate the jiffies clock inferred (`CONFIG_HZ`).
    pub fn hz(&self) -> u32 {
        self.clock.hz()
    }

    fn wait_grace_period(&mut self) {
        const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
        // SAFETY: membarrier takes (cmd, flags, cpu_id) integers and touches no user memory.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
        if r != 0 {
            if !self.membarrier_warned {
                tracing::warn!(error = %io::Error::last_os_error(),
                    "membarrier(MEMBARRIER_CMD_GLOBAL) unavailable (nohz_full?); waiting 50 ms per drain instead of an RCU grace period");
                self.membarrier_warned = true;
            }
            std::thread::sleep(GRACE_FALLBACK);
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Dropping the links detaches them anyway; this logs it and skips nothing.
        if !self.attached.is_empty() {
            self.detach_all();
        }
    }
}

trait MaxEntries {
    fn map_info_max_entries(&self) -> Option<u32>;
}

impl<K: aya::Pod> MaxEntries for aya::maps::HashMap<MapData, K, FlowValue> {
    fn map_info_max_entries(&self) -> Option<u32> {
        self.map().info().ok().map(|i| i.max_entries())
    }
}

fn map_fd(map: &MapData) -> RawFd {
    map.fd().as_fd().as_raw_fd()
}

/// Remembers a refused batch command; returns whether batches may still be used.
fn settle_batch(
    batch_ok: &mut bool,
    res: Result<bool, CaptureError>,
) -> Result<bool, CaptureError> {
    *batch_ok &= res?;
    Ok(*batch_ok)
}

/// Reads and deletes the spill entries of the epoch `old_bit`, merging them into `out` by key.
/// Spilled counts have no times of their own (`first_ns` `u64::MAX`, `last_ns` 0): they always
/// join the flow-map entry they were moved out of.
fn take_spills<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut SpillMap<K>,
    old_bit: u8,
    tail: impl Fn(&K) -> podflow_ebpf::KeyTail,
    out: &mut HashMap<K, FlowStats>,
) -> Result<(), CaptureError> {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| tail(k).epoch_bit() == old_bit)
        .collect();
    for k in keys {
        match map.get(&k, 0) {
            Ok(v) => {
                let piece = FlowStats {
                    packets: v.packets,
                    bytes: v.bytes,
                    first_ns: u64::MAX,
                    last_ns: 0,
                    ifindex: u32::from(tail(&k).ifindex_lo),
                    ..FlowStats::default()
                };
                out.entry(k)
                    .and_modify(|m| merge_stats(m, &piece))
                    .or_insert(piece);
            }
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(CaptureError::Map {
                    op: "read a spill entry",
                    source,
                });
            }
        }
        drain::delete_one(map, &k)?;
    }
    Ok(())
}

/// Reads the cache slots of epoch parity `parity` of every CPU (`cpus` possible ones), merging
/// the occupied ones into `out` (cleared first) by key, and zeroes the slots it found occupied.
fn take_cached<K: aya::Pod + Eq + std::hash::Hash + Default>(
    map: &mut CacheMap<K>,
    parity: u32,
    cpus: usize,
    decode: impl Fn(&CacheEntry<K>) -> FlowStats,
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
            let s = decode(e);
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
}

/// `stats` (a flow-map entry) with the drain's extras of the same key taken out and added.
fn with_extras<K: Eq + std::hash::Hash>(
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
fn leftover_entry(key: FlowKey, mut stats: FlowStats, now_ns: u64) -> FlowEntry {
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

/// Reads and deletes one map's entries that `keep` accepts (the old epoch), appending them to
/// `entries` through `convert`. Returns whether the batch path may be used next time.
fn drain_one<K: aya::Pod + Default>(
    map: &mut aya::maps::HashMap<MapData, K, FlowValue>,
    batch: bool,
    bufs: &mut drain::BatchBufs<K>,
    keys: &mut Vec<K>,
    keep: impl Fn(&K) -> bool + Copy,
    mut convert: impl FnMut(&K, &FlowValue) -> FlowEntry,
    entries: &mut Vec<FlowEntry>,
) -> Result<bool, CaptureError> {
    let fd = map_fd(map.map());
    if batch {
        let on_chunk = |chunk: &[(K, FlowValue)]| {
            keys.clear();
            keys.extend(chunk.iter().map(|(k, _)| *k));
            let (done, res) = drain::delete_batch(fd, keys);
            if let Err(e) = res {
                tracing::warn!(error = %e, deleted = done,
                    "BPF_MAP_DELETE_BATCH failed half-way; deleting the rest one by one");
                for k in &keys[done..] {
                    drain::delete_one(map, k)?;
                }
            }
            entries.extend(chunk.iter().map(|(k, v)| convert(k, v)));
            Ok(())
        };
        match drain::lookup_batch(fd, bufs, keep, on_chunk) {
            Ok(drain::Batch::Done) => return Ok(true),
            Ok(drain::Batch::Unsupported(e)) => {
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

fn per_entry<K: aya::Pod + Default>(
    map: &mut aya::maps::HashMap<MapData, K, FlowValue>,
    keep: impl Fn(&K) -> bool,
    convert: &mut impl FnMut(&K, &FlowValue) -> FlowEntry,
    entries: &mut Vec<FlowEntry>,
) -> Result<(), CaptureError> {
    let mut read = Vec::new();
    drain::lookup_then_delete(map, keep, &mut read)?;
    entries.extend(read.iter().map(|(k, v)| convert(k, v)));
    Ok(())
}

/// Runs the clock program and reads what it wrote.
fn sample_clock(
    prog_fd: RawFd,
    map: &Array<MapData, ClockSample>,
) -> Result<ClockSample, CaptureError> {
    // A zeroed Ethernet-sized frame: the program only reads the clocks.
    drain::test_run(prog_fd, &[0u8; 64], 1).map_err(|source| CaptureError::Drain {
        op: "BPF_PROG_TEST_RUN podflow_clock",
        source,
    })?;
    map.get(&0, 0).map_err(|source| CaptureError::Map {
        op: "read CLOCK",
        source,
    })
}

// The agent keeps the capture in a tokio task.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Capture>();
    assert_send::<LinkWatcher>();
};

/// `CLOCK_MONOTONIC` in nanoseconds (what `bpf_ktime_get_ns`/coarse variants count in).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// "outer: inner: innermost".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
