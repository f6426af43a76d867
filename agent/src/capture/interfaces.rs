//! Which links get which programs: classifying links by name and type, attaching both directions
//! (or neither), detaching what vanished, and remembering the names of removed interfaces.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use podflow_ebpf::{FAMILY_IPV4, FAMILY_IPV6, VETHS_MAX, VethSlot};

use super::{
    ARPHRD_ETHER, ARPHRD_NONE, AttachMode, AttachModePref, AttachedInterface, CaptureConfig,
    CaptureError, IfaceKind, InterfaceChange, LinkEvent, LinkInfo, attach, dir_str, dump_links,
    pattern::any_match,
    persist::{self, Gap},
    sys,
};
use crate::{report::error_chain, time::realtime_ns};

/// How many removed interfaces [`Interfaces::name`] still remembers, and for how long.
const RECENT_REMOVED_MAX: usize = 1024;
const RECENT_REMOVED_TTL: Duration = Duration::from_secs(600);

/// A link this agent holds: aya's (dropping it detaches), or a pinned tcx link (it stays
/// attached until unpinned).
enum HeldLink {
    Owned(SchedClassifierLink),
    Pinned(PinnedLink),
}

impl HeldLink {
    /// Detaches: an owned link through aya, a pinned one by removing its pin.
    fn detach(self, gone_ok: bool) -> Result<(), String> {
        match self {
            HeldLink::Owned(link) => attach::detach_link(link, gone_ok).map_err(|e| e.to_string()),
            HeldLink::Pinned(link) => link.unpin().map(drop).map_err(|e| e.to_string()),
        }
    }

    /// Leaves the program attached for the next agent: a pinned link keeps its pin, a cls_bpf
    /// filter stays where it is (aya would remove it on drop).
    fn release(self) {
        match self {
            HeldLink::Owned(link) => std::mem::forget(link),
            HeldLink::Pinned(link) => drop(link),
        }
    }
}

/// One attachment: the interface and the two links.
struct Attachment {
    iface: AttachedInterface,
    ingress: HeldLink,
    egress: HeldLink,
}

/// The attached interfaces and what decides them.
pub(super) struct Interfaces {
    attached: BTreeMap<u32, Attachment>,
    /// The `VETHS` map: which veths have podflow's ingress program (see `podflow_ebpf::VethSlot`).
    veths: Array<MapData, VethSlot>,
    veth_patterns: Vec<String>,
    l3_patterns: Vec<String>,
    exclude_patterns: Vec<String>,
    mode: AttachModePref,
    /// Recently removed interfaces: (ifindex, name, when), newest last.
    removed: VecDeque<(u32, String, Instant)>,
    /// Interfaces (by ifindex) whose stale filters from a previous instance were already removed.
    cleaned: HashMap<u32, String>,
    /// Where tcx links are pinned (`--pin-dir`): the kernel side outlives this agent.
    links_dir: Option<PathBuf>,
    /// Filters swapped by detach + attach since the last [`Interfaces::take_gaps`].
    gaps: Vec<Gap>,
    /// The kernel ids of our tc programs, by name: a cls_bpf filter running one is ours.
    prog_ids: HashMap<&'static str, u32>,
    /// When the netlink-mode attachments were last found in the kernel (`CLOCK_REALTIME` ns).
    verified_ns: u64,
    /// Attachments found removed by someone else and attached again.
    restored: u64,
}

impl Interfaces {
    pub(super) fn new(
        veths: Array<MapData, VethSlot>,
        cfg: CaptureConfig,
        links_dir: Option<PathBuf>,
        prog_ids: HashMap<&'static str, u32>,
    ) -> Interfaces {
        Interfaces {
            attached: BTreeMap::new(),
            veths,
            veth_patterns: cfg.veth_patterns,
            l3_patterns: cfg.l3_patterns,
            exclude_patterns: cfg.exclude_patterns,
            mode: cfg.attach_mode,
            removed: VecDeque::new(),
            cleaned: HashMap::new(),
            links_dir,
            gaps: Vec::new(),
            prog_ids,
            verified_ns: realtime_ns(),
            restored: 0,
        }
    }

    pub(super) fn restored(&self) -> u64 {
        self.restored
    }

    pub(super) fn persistent(&self) -> bool {
        self.links_dir.is_some()
    }

    pub(super) fn take_gaps(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }

    pub(super) fn attached(&self) -> Vec<AttachedInterface> {
        self.attached.values().map(|a| a.iface.clone()).collect()
    }

    pub(super) fn name(&self, ifindex: u32) -> Option<String> {
        if let Some(a) = self.attached.get(&ifindex) {
            return Some(a.iface.name.clone());
        }
        self.removed
            .iter()
            .rev()
            .find(|(i, _, when)| *i == ifindex && when.elapsed() < RECENT_REMOVED_TTL)
            .map(|(_, n, _)| n.clone())
    }

    pub(super) fn classify(&self, name: &str, link_type: u16) -> Option<IfaceKind> {
        if any_match(&self.exclude_patterns, name) {
            return None;
        }
        match link_type {
            ARPHRD_ETHER if any_match(&self.veth_patterns, name) => Some(IfaceKind::Veth),
            ARPHRD_NONE if any_match(&self.l3_patterns, name) => Some(IfaceKind::L3),
            _ => None,
        }
    }

    /// See [`super::Capture::sync_interfaces`].
    pub(super) fn sync(&mut self, ebpf: &mut Ebpf) -> Result<Vec<InterfaceChange>, CaptureError> {
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
            changes.extend(self.forget(ifindex, gone));
        }
        // cls_bpf filters can be deleted by anyone with CAP_NET_ADMIN (`tc filter del`): check
        // ours are still there, and attach again where one is missing.
        let removed = self.removed_filters();
        let now = realtime_ns();
        for ifindex in removed {
            if let Some(a) = self.attached.get(&ifindex) {
                tracing::warn!(iface = %a.iface.name, ifindex, mode = a.iface.mode.as_str(),
                    "a podflow program was removed from its hook by someone else; attaching again");
                self.gaps.push(Gap {
                    from_ns: self.verified_ns.min(now),
                    to_ns: now,
                    reason: persist::DETACHED_GAP,
                    detail: format!("{}: a podflow program was removed", a.iface.name),
                });
                self.restored += 1;
            }
            // The remaining filter is detached too (the removed one may error: ignored).
            changes.extend(self.forget(ifindex, true));
        }
        for l in &links {
            match self.ensure_attached(ebpf, l) {
                Ok(c) => changes.extend(c),
                Err(e) => tracing::warn!(iface = %l.name, ifindex = l.ifindex,
                    error = %error_chain(&e), "attaching failed; will retry at next sync"),
            }
        }
        self.verified_ns = realtime_ns();
        self.sweep_pins();
        Ok(changes)
    }

    /// Attachments one of whose programs is no longer on its hook: a cls_bpf filter deleted
    /// (`tc filter del`), a tcx link detached (`bpftool link detach`).
    fn removed_filters(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (&ifindex, a) in &self.attached {
            for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                let Some(&ours) = self.prog_ids.get(attach::program_for(a.iface.kind, dir)) else {
                    continue;
                };
                let egress = dir == TcAttachType::Egress;
                let present = match a.iface.mode {
                    AttachMode::Netlink => super::netlink::dump_filters(ifindex, egress)
                        .map(|filters| filters.iter().any(|f| f.prog_id == Some(ours)))
                        .map_err(|e| error_chain(&e)),
                    AttachMode::Tcx => {
                        let hook = if egress {
                            sys::BPF_TCX_EGRESS
                        } else {
                            sys::BPF_TCX_INGRESS
                        };
                        sys::tcx_query(ifindex, hook)
                            .map(|attached| attached.iter().any(|(prog, _)| *prog == ours))
                            .map_err(|e| e.to_string())
                    }
                };
                match present {
                    Ok(false) => {
                        out.push(ifindex);
                        break;
                    }
                    Ok(true) => {}
                    Err(e) => tracing::debug!(iface = %a.iface.name, error = %e,
                        "could not list the programs of a hook"),
                }
            }
        }
        out
    }

    /// Unpins the links a previous agent pinned that this one did not take over (interfaces gone,
    /// renamed, or no longer matching): their programs would count on, unread.
    fn sweep_pins(&self) {
        let Some(dir) = &self.links_dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name
                .split_once('-')
                .and_then(|(i, _)| i.parse::<u32>().ok())
                .and_then(|i| self.attached.get(&i))
                .is_some_and(|a| a.iface.mode == AttachMode::Tcx);
            if !ours {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(pin = %entry.path().display(),
                        "unpinned a link of a previous agent that this one does not use"),
                    Err(e) => tracing::warn!(pin = %entry.path().display(), error = %e,
                        "could not unpin a link of a previous agent"),
                }
            }
        }
    }

    /// See [`super::Capture::handle_link_event`].
    pub(super) fn handle_link_event(
        &mut self,
        ebpf: &mut Ebpf,
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
                changes.extend(self.ensure_attached(ebpf, &info)?);
            }
            LinkEvent::Removed { ifindex, .. } => changes.extend(self.forget(ifindex, true)),
            LinkEvent::Resync => changes = self.sync(ebpf)?,
        }
        Ok(changes)
    }

    /// Attaches `l` if it matches and is not attached yet.
    fn ensure_attached(
        &mut self,
        ebpf: &mut Ebpf,
        l: &LinkInfo,
    ) -> Result<Option<InterfaceChange>, CaptureError> {
        if self.attached.contains_key(&l.ifindex) {
            return Ok(None);
        }
        let Some(kind) = self.classify(&l.name, l.link_type) else {
            return Ok(None);
        };
        // We attach by name (aya's API): make sure the name still designates this ifindex.
        if sys::ifname_of(l.ifindex).as_deref() != Some(l.name.as_str()) {
            tracing::debug!(iface = %l.name, ifindex = l.ifindex, "link vanished or renamed before attach");
            return Ok(None);
        }
        match self.attach_iface(ebpf, &l.name, l.ifindex, kind) {
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
            Err(e) if sys::ifname_of(l.ifindex).as_deref() != Some(l.name.as_str()) => {
                tracing::debug!(iface = %l.name, ifindex = l.ifindex, error = %e,
                    "link vanished while attaching");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn attach_iface(
        &mut self,
        ebpf: &mut Ebpf,
        name: &str,
        ifindex: u32,
        kind: IfaceKind,
    ) -> Result<Attachment, CaptureError> {
        // Stale cls_bpf filters of a podflow that died (kill -9): remove them once per interface,
        // in every mode, so a restart leaves exactly one podflow program per hook.
        // A failure here is logged, not fatal: capturing matters more than a duplicate counter
        // (it is retried at the interface's next attach).
        //
        // With a pin directory those filters counted into the adopted maps while no agent ran:
        // removing them and attaching ours leaves a short window uncounted, declared as a gap.
        let mut swapped_at = None;
        if self.cleaned.get(&ifindex).map(String::as_str) != Some(name) {
            let mut ok = true;
            let started = realtime_ns();
            for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                match attach::remove_stale_filters(name, dir) {
                    Ok(n) if n > 0 => swapped_at = Some(started),
                    Ok(_) => {}
                    Err(e) => {
                        ok = false;
                        tracing::warn!(iface = name, direction = dir_str(dir), error = %e,
                            "could not check for stale podflow tc filters");
                    }
                }
            }
            if ok {
                self.cleaned.insert(ifindex, name.to_owned());
            }
        }
        let links_dir = self.links_dir.as_deref();
        let attached = match self.mode {
            AttachModePref::Tcx => {
                attach_pair(ebpf, name, ifindex, kind, AttachMode::Tcx, links_dir)
            }
            AttachModePref::Netlink => {
                attach_pair(ebpf, name, ifindex, kind, AttachMode::Netlink, links_dir)
            }
            AttachModePref::Auto => {
                let tcx = aya::util::KernelVersion::current()
                    .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
                let mut attached = None;
                if tcx {
                    match attach_pair(ebpf, name, ifindex, kind, AttachMode::Tcx, links_dir) {
                        Ok(a) => attached = Some(a),
                        Err(e) => tracing::warn!(iface = name, error = %error_chain(&e),
                            "tcx attach failed, falling back to clsact + cls_bpf"),
                    }
                }
                match attached {
                    Some(a) => Ok(a),
                    None => attach_pair(ebpf, name, ifindex, kind, AttachMode::Netlink, links_dir),
                }
            }
        };
        if let (Some(from), true, Ok(_)) = (swapped_at, self.persistent(), &attached) {
            self.gaps.push(persist::reattach_gap(name, from));
        }
        attached
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
            if let Err(e) = link.detach(true)
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

    /// See [`super::Capture::detach_all`].
    pub(super) fn detach_all(&mut self) {
        let all = std::mem::take(&mut self.attached);
        if self.persistent() {
            // The programs stay, with the veth marks they count by, for the next agent.
            let n = all.len();
            for (ifindex, a) in all {
                a.ingress.release();
                a.egress.release();
                self.remember_removed(ifindex, a.iface.name);
            }
            if n > 0 {
                tracing::info!(
                    interfaces = n,
                    "left the programs attached, counting into the pinned maps for the next agent"
                );
            }
            return;
        }
        for (ifindex, a) in &all {
            if a.iface.kind == IfaceKind::Veth {
                self.set_veth_slot(*ifindex, false);
            }
        }
        for (ifindex, a) in all {
            for (dir, link) in [("ingress", a.ingress), ("egress", a.egress)] {
                if let Err(e) = link.detach(true) {
                    tracing::warn!(iface = %a.iface.name, direction = dir, error = %e,
                        "detach failed");
                }
            }
            tracing::info!(iface = %a.iface.name, ifindex, mode = a.iface.mode.as_str(), "detached");
            self.remember_removed(ifindex, a.iface.name);
        }
        self.cleaned.clear();
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

    /// See [`super::Capture::veth_peers`].
    pub(super) fn veth_peers(&self) -> Vec<(u32, u8, [u8; 16])> {
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
}

/// Attaches both directions or neither. With `links_dir`, tcx links are pinned there, and a
/// link a previous agent pinned for this interface and direction is taken over: its program is
/// swapped for ours atomically.
fn attach_pair(
    ebpf: &mut Ebpf,
    name: &str,
    ifindex: u32,
    kind: IfaceKind,
    mode: AttachMode,
    links_dir: Option<&Path>,
) -> Result<Attachment, CaptureError> {
    if mode == AttachMode::Netlink {
        attach::ensure_clsact(name).map_err(|source| CaptureError::Tc {
            iface: name.to_owned(),
            op: "add clsact qdisc",
            source,
        })?;
    }
    let mut one = |dir: TcAttachType| -> Result<HeldLink, CaptureError> {
        let program = attach::program_for(kind, dir);
        let err = |source| CaptureError::Attach {
            program,
            iface: name.to_owned(),
            direction: dir_str(dir),
            mode: mode.as_str(),
            source: Box::new(source),
        };
        let pin = links_dir.map(|d| d.join(format!("{ifindex}-{}", dir_str(dir))));
        if let Some(pin) = pin.as_deref().filter(|p| p.exists()) {
            if mode == AttachMode::Tcx {
                match take_over(ebpf, program, pin, ifindex, dir) {
                    Ok(link) => return Ok(HeldLink::Pinned(link)),
                    Err(e) => tracing::info!(iface = name, direction = dir_str(dir),
                        error = %e, "not taking over the pinned link; attaching anew"),
                }
            }
            // Not ours to keep (defunct, another mode): unpinning detaches it.
            if let Err(e) = std::fs::remove_file(pin) {
                tracing::warn!(pin = %pin.display(), error = %e, "could not unpin a stale link");
            }
        }
        let link = attach::attach_one(ebpf, program, name, dir, mode).map_err(err)?;
        match (mode, pin) {
            (AttachMode::Tcx, Some(pin)) => {
                let io = |e: String| {
                    err(aya::programs::ProgramError::IOError(std::io::Error::other(
                        e,
                    )))
                };
                let fd = FdLink::try_from(link).map_err(|e| io(format!("not an fd link: {e}")))?;
                let pinned = fd.pin(&pin).map_err(|e| io(format!("pin: {e}")))?;
                Ok(HeldLink::Pinned(pinned))
            }
            _ => Ok(HeldLink::Owned(link)),
        }
    };
    let ingress = one(TcAttachType::Ingress)?;
    let egress = match one(TcAttachType::Egress) {
        Ok(l) => l,
        Err(e) => {
            if let Err(de) = ingress.detach(true) {
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

/// Takes over the tcx link a previous agent pinned at `pin`: checks it is a live tcx link of
/// `ifindex`/`dir`, then swaps `program` into it (`BPF_LINK_UPDATE`: each packet runs either the
/// old program or the new one, both counting into the same pinned maps).
fn take_over(
    ebpf: &Ebpf,
    program: &'static str,
    pin: &Path,
    ifindex: u32,
    dir: TcAttachType,
) -> Result<PinnedLink, String> {
    let fd = sys::obj_get(pin).map_err(|e| format!("open: {e}"))?;
    let info = sys::link_info(fd.as_fd()).map_err(|e| format!("link info: {e}"))?;
    let want = match dir {
        TcAttachType::Egress => sys::BPF_TCX_EGRESS,
        _ => sys::BPF_TCX_INGRESS,
    };
    if info.link_type != sys::BPF_LINK_TYPE_TCX
        || info.ifindex != ifindex
        || info.attach_type != want
    {
        return Err(format!(
            "the pin holds link type {} on ifindex {} ({}), not tcx on {ifindex}",
            info.link_type, info.ifindex, info.attach_type
        ));
    }
    let prog = super::load::program(ebpf, program).map_err(|e| e.to_string())?;
    let prog_fd = prog.fd().map_err(|e| e.to_string())?;
    sys::link_update(fd.as_fd(), prog_fd.as_fd()).map_err(|e| format!("BPF_LINK_UPDATE: {e}"))?;
    PinnedLink::from_pin(pin).map_err(|e| e.to_string())
}
