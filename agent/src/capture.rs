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
//! The rooms: `load` (object, maps, programs), `interfaces`
//! (which links get which programs, attach and detach, via `attach` and
//! `netlink`), `drain` (the epoch flip and reading the maps), [`clock`] (kernel
//! ticks to wall time), `persist` (the pins that let the kernel side outlive the agent:
//! adoption by the next one, declared gaps), `sys` (every raw `bpf(2)` and other syscall of the
//! module), `testing` (hooks for tests and the benchmark).
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
mod btf;
pub mod clock;
mod drain;
mod drops;
mod interfaces;
pub mod kfunc;
mod load;
mod netlink;
pub mod object;
mod pattern;
mod persist;
mod ring;
mod sys;
mod testing;

use std::{io, time::Duration};

use aya::{Ebpf, maps::MapError, programs::ProgramError};
use podflow_ebpf::{COUNTER_COUNT, DEFAULT_FLOW_MAP_ENTRIES, FlowKey, FlowStats};

use self::{drain::Drainer, interfaces::Interfaces};
pub use aya::programs::TcAttachType;

pub use self::{
    btf::BtfError,
    drops::{DropEvents, RttEvents},
    netlink::{LinkEvent, LinkInfo, LinkWatcher, dump_links},
    pattern::glob_match,
    persist::{
        AGENT_RESTART_GAP, DETACHED_GAP, Gap, REATTACH_GAP, layout_name, netns_dir, remove_all,
    },
    ring::{EventRing, RingConsumer, RingSource},
    testing::{EmptyProgram, tcx_ingress_links},
};

/// `ARPHRD_ETHER`.
pub const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_NONE`: no link-layer header (WireGuard, TUN).
pub const ARPHRD_NONE: u16 = 0xfffe;

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
    /// Keep the kernel side across restarts, pinned under this bpffs directory (see
    /// `persist`): adopt a previous agent's maps and links, and leave them attached on exit.
    /// `None`: the maps live and die with this process, links are detached on exit.
    pub pin_dir: Option<std::path::PathBuf>,
    /// The DNS server port whose messages the programs copy for user space (see
    /// [`crate::dns`]); 0: none (the programs never look at payloads).
    pub dns_port: u16,
    /// Time TCP handshakes: the programs put SYN and SYN/ACK segments in a ring for user space
    /// to pair.
    pub handshakes: bool,
    /// The BTF tracepoint programs (drops, smoothed RTT) may be attached: only then is the
    /// kernel's BTF read at load for their offsets.
    pub tracepoints: bool,
    /// Link the conntrack kfuncs (where the kernel has them), so the programs look up the
    /// node's translation of each new flow (see [`crate::conntrack`]).
    pub conntrack: bool,
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
            pin_dir: None,
            dns_port: 53,
            handshakes: true,
            tracepoints: false,
            conntrack: false,
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

/// The `COUNTERS` array, cumulative since load, summed over CPUs, indexed by
/// [`podflow_ebpf::KernelCounter`].
pub type KernelCounters = [u64; COUNTER_COUNT as usize];

/// What one [`Capture::drain`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// Every flow entry counted since the previous drain (each packet in exactly one drain).
    pub entries: Vec<FlowEntry>,
    /// The kernel's counters, cumulative since load.
    pub counters: KernelCounters,
    /// `CLOCK_MONOTONIC` right after the flip. Packets counted here arrived before it — or at most
    /// one RCU grace period after it, by programs that had read the old `CONFIG.epoch` just
    /// before the flip; packets after that are in the next drain.
    pub mono_ns: u64,
}

/// Errors of the capture module.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The object could not be parsed or its maps created.
    #[error("loading the ebpf object failed")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The object could not be prepared for loading.
    #[error("the ebpf object is malformed: {0}")]
    Object(&'static str),
    /// A program the agent needs is not in the object.
    #[error("the ebpf object has no program {name}")]
    MissingProgram { name: &'static str },
    /// A map the agent needs is not in the object.
    #[error("the ebpf object has no map {name}")]
    MissingMap { name: &'static str },
    /// The verifier (or the kernel) refused a program, or it has the wrong type.
    #[error("loading program {name} into the kernel failed")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// A map of the object has an unexpected type or size.
    #[error("opening map {name} failed")]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// The possible-CPU list could not be read.
    #[error("counting the possible cpus failed")]
    Cpus {
        #[source]
        source: std::io::Error,
    },
    /// A map read or write failed.
    #[error("map operation failed: {op}")]
    Map {
        op: &'static str,
        #[source]
        source: MapError,
    },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to {iface} ({direction}, {mode}) failed")]
    Attach {
        program: &'static str,
        iface: String,
        direction: &'static str,
        mode: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// Setting up the clsact qdisc failed.
    #[error("setting up tc on {iface} failed: {op}")]
    Tc {
        iface: String,
        op: &'static str,
        #[source]
        source: aya::programs::tc::TcError,
    },
    /// A netlink socket operation failed.
    #[error("netlink failed: {op}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel sent a netlink message that could not be parsed.
    #[error("undecodable netlink message: {reason}")]
    NetlinkDecode { reason: String },
    /// The pin directory could not be prepared (`--pin-dir`).
    #[error("pin directory {}: {op} failed", path.display())]
    Pin {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel's BTF could not be read, or lacks what a program needs.
    #[error("reading the kernel's BTF failed")]
    Btf {
        #[source]
        source: btf::BtfError,
    },
    /// A raw `bpf(2)` command of the drain failed.
    #[error("draining the flow maps failed: {op}")]
    Drain {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The loaded eBPF object, its maps and what is attached where.
pub struct Capture {
    // Field order matters on drop: links detach before the programs and maps go away.
    interfaces: Interfaces,
    drainer: Drainer,
    state: persist::State,
    /// Adopted maps: the loss counts the previous agent had reported.
    reported: Option<KernelCounters>,
    /// Gaps not yet taken by [`Capture::take_gaps`].
    gaps: Vec<Gap>,
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// [`CaptureConfig::dns_port`].
    dns_port: u16,
    /// [`CaptureConfig::handshakes`].
    handshakes: bool,
    /// The kernel's drop reasons (value, name) as read from its BTF at load, for
    /// [`Capture::follow_drops`] (which takes them).
    drop_reasons: Option<Result<Vec<(u32, String)>, btf::BtfError>>,
    /// Whether the RTT program's offsets were read (taken by [`Capture::follow_rtt`]).
    rtt_offsets: Option<Result<(), btf::BtfError>>,
    /// Whether the programs look conntrack up (the kfuncs linked), or why not.
    kernel_conntrack: Result<(), String>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("interfaces", &self.interfaces())
            .field("epoch", &self.epoch())
            .field("capacity", &self.flow_map_capacity())
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Loads the embedded object ([`object::EBPF_OBJECT`]), sizes the flow maps, writes `CONFIG`
    /// and loads the four tc programs (and the clock sampler). Attaches nothing.
    pub fn load(cfg: CaptureConfig) -> Result<Capture, CaptureError> {
        Self::load_object(object::EBPF_OBJECT, cfg)
    }

    /// [`Capture::load`] with another object (tests, benchmarks).
    pub fn load_object(obj: &[u8], cfg: CaptureConfig) -> Result<Capture, CaptureError> {
        load::load(obj, cfg)
    }

    /// Capacity of each flow map (IPv4 and IPv6: flows per observation point between two
    /// drains), as the kernel created it.
    pub fn flow_map_capacity(&self) -> u32 {
        self.drainer.capacity()
    }

    /// Switches the programs' conntrack lookups on or off (see `podflow_ebpf::CT_SWITCH`); a
    /// no-op when they were not linked.
    pub fn set_conntrack_lookups(&mut self, on: bool) -> Result<(), CaptureError> {
        if self.kernel_conntrack.is_err() {
            return Ok(());
        }
        let map = self
            .ebpf
            .map_mut(podflow_ebpf::CT_SWITCH)
            .ok_or(CaptureError::MissingMap {
                name: podflow_ebpf::CT_SWITCH,
            })?;
        let mut switch: aya::maps::Array<&mut aya::maps::MapData, u32> =
            aya::maps::Array::try_from(map).map_err(|source| CaptureError::OpenMap {
                name: podflow_ebpf::CT_SWITCH,
                source,
            })?;
        switch
            .set(0, u32::from(on), 0)
            .map_err(|source| CaptureError::Map {
                op: "switch the conntrack lookups",
                source,
            })
    }

    /// The interfaces attached right now, by ifindex.
    pub fn interfaces(&self) -> Vec<AttachedInterface> {
        self.interfaces.attached()
    }

    /// Name of an attached interface, or of one removed recently (the last 1024, up to 10 min).
    pub fn interface_name(&self, ifindex: u32) -> Option<String> {
        self.interfaces.name(ifindex)
    }

    /// The kind of program pair a link gets, or `None` if it is not to be attached.
    pub fn classify(&self, name: &str, link_type: u16) -> Option<IfaceKind> {
        self.interfaces.classify(name, link_type)
    }

    /// Lists the links (netlink dump) and reconciles: attaches every matching link not attached
    /// yet, forgets attached ones that vanished, treats a rename as remove + add.
    ///
    /// A failure to attach one interface is logged (warn) and skipped — it is retried at the next
    /// sync — so one odd device does not keep the others unattached. Errors: the dump itself.
    pub fn sync_interfaces(&mut self) -> Result<Vec<InterfaceChange>, CaptureError> {
        self.interfaces.sync(&mut self.ebpf)
    }

    /// Applies one link event and returns what changed. `Added` attaches a matching link (no-op
    /// if already attached under that name; a rename detaches the old name first: `Detached`
    /// then possibly `Attached`), `Removed` forgets it, `Resync` runs
    /// [`Capture::sync_interfaces`].
    pub fn handle_link_event(
        &mut self,
        ev: LinkEvent,
    ) -> Result<Vec<InterfaceChange>, CaptureError> {
        self.interfaces.handle_link_event(&mut self.ebpf, ev)
    }

    /// Detaches exactly the programs this instance attached (SIGTERM path). Foreign tc filters and
    /// tcx programs, and the clsact qdiscs, stay. Errors are logged; it always completes.
    ///
    /// With a pin directory the programs stay attached instead (pinned tcx links, cls_bpf
    /// filters) and keep counting into the pinned maps for the next agent.
    pub fn detach_all(&mut self) {
        self.interfaces.detach_all();
    }

    /// Attachments found removed by someone else (a `tc filter del`) and attached again, since
    /// load. Each resync checks.
    pub fn restored_attachments(&self) -> u64 {
        self.interfaces.restored()
    }

    /// Whether the kernel side outlives this agent (a pin directory is used).
    pub fn persistent(&self) -> bool {
        self.interfaces.persistent()
    }

    /// The loss counts (per [`podflow_ebpf::KernelCounter`]) the previous agent had already
    /// reported, when its maps were adopted: report only what grew since.
    pub fn reported_before(&self) -> Option<KernelCounters> {
        self.reported
    }

    /// Records, for an agent that may adopt these maps later, what has been reported so far and
    /// when this drain was. Call after each drain's loss records are made.
    pub fn save_state(&mut self, reported: &KernelCounters) -> Result<(), CaptureError> {
        self.state.save(reported)
    }

    /// Times packets were not counted (a previous agent's maps dropped, filters swapped), each
    /// once.
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        let mut gaps = std::mem::take(&mut self.gaps);
        gaps.extend(self.interfaces.take_gaps());
        gaps
    }

    /// The destination addresses the attached veths last delivered packets counted upstream to
    /// (`(ifindex, family, IPv4-mapped or IPv6 address)`): the pods behind them.
    pub fn veth_peers(&self) -> Vec<(u32, u8, [u8; 16])> {
        self.interfaces.veth_peers()
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
    ) -> Result<(KernelCounters, u64), CaptureError> {
        self.flush_ebpf_logs();
        self.drainer.drain_into(&self.ebpf, entries)
    }

    /// The longest flush interval the flow maps' 16-bit time stamps allow at this kernel's tick
    /// rate (see [`clock::JiffyClock::max_flush_interval`]).
    pub fn max_flush_interval(&self) -> Duration {
        self.drainer.clock().max_flush_interval()
    }

    /// Reads aya-log records the programs emitted (if the object logs) into the `log` crate.
    /// [`Capture::drain`] calls it too.
    pub fn flush_ebpf_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// The epoch the programs count into now (it advances by one at every drain).
    pub fn epoch(&self) -> u32 {
        self.drainer.epoch()
    }

    /// The tick rate the jiffies clock inferred (`CONFIG_HZ`).
    pub fn hz(&self) -> u32 {
        self.drainer.clock().hz()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Dropping the links detaches them anyway; this logs it and skips nothing.
        self.interfaces.detach_all();
    }
}

/// What `podflow cleanup` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Layout directories (pinned maps and tcx links) of this network namespace.
    pub layouts: usize,
    /// podflow cls_bpf filters (netlink mode), by interface and direction.
    pub filters: usize,
}

/// Removes what agents with `--pin-dir` left in the calling thread's network namespace: the pins
/// under `pin_dir` (tcx links detach, maps are freed) and podflow's cls_bpf filters on every
/// interface. For uninstalling; a running agent's programs would be removed too.
pub fn cleanup(pin_dir: &std::path::Path) -> Result<Cleaned, CaptureError> {
    let layouts = persist::remove_all(pin_dir).map_err(|source| CaptureError::Pin {
        op: "remove",
        path: pin_dir.to_path_buf(),
        source,
    })?;
    let mut filters = 0;
    for link in dump_links()? {
        for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
            filters += attach::remove_stale_filters(&link.name, dir).map_err(|source| {
                CaptureError::Tc {
                    iface: link.name.clone(),
                    op: "remove podflow filters",
                    source,
                }
            })?;
        }
    }
    Ok(Cleaned { layouts, filters })
}

/// The direction's name in logs and errors.
fn dir_str(dir: TcAttachType) -> &'static str {
    match dir {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    }
}

// The agent keeps the capture in a tokio task.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Capture>();
    assert_send::<LinkWatcher>();
};
