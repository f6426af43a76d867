//! Attaching one program to one interface direction, tcx or netlink (clsact + cls_bpf), and
//! cleaning up cls_bpf filters left behind by a podflow that died without detaching.
use std::io;

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::Link as _,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
    },
};
use podflow_ebpf::{PROG_L3_EGRESS, PROG_L3_INGRESS, PROG_VETH_EGRESS, PROG_VETH_INGRESS};

use super::{AttachMode, IfaceKind, dir_str};

/// Programs (by name) that podflow attaches in a direction: a stale filter with any of these names
/// on that direction is ours.
pub fn our_programs(dir: TcAttachType) -> [&'static str; 2] {
    match dir {
        TcAttachType::Egress => [PROG_VETH_EGRESS, PROG_L3_EGRESS],
        _ => [PROG_VETH_INGRESS, PROG_L3_INGRESS],
    }
}

/// The program for an interface kind and direction.
pub fn program_for(kind: IfaceKind, dir: TcAttachType) -> &'static str {
    match (kind, dir) {
        (IfaceKind::Veth, TcAttachType::Egress) => PROG_VETH_EGRESS,
        (IfaceKind::Veth, _) => PROG_VETH_INGRESS,
        (IfaceKind::L3, TcAttachType::Egress) => PROG_L3_EGRESS,
        (IfaceKind::L3, _) => PROG_L3_INGRESS,
    }
}

/// Whether an error means "the interface is gone" (it vanished between listing and attaching).
pub fn is_gone(e: &ProgramError) -> bool {
    let io = match e {
        ProgramError::SyscallError(s) => Some(&s.io_error),
        ProgramError::TcError(TcError::IoError(e)) => Some(e),
        ProgramError::TcError(TcError::NetlinkError(n)) => {
            return matches!(
                n.raw_os_error(),
                Some(libc::ENODEV | libc::ENXIO | libc::ENOENT)
            );
        }
        _ => None,
    };
    io.is_some_and(|e| matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO)))
}

/// Removes cls_bpf filters named like our programs from `ifname`'s clsact hook `dir` (left by a
/// podflow instance that was killed before it could detach: tcx links die with their process,
/// cls_bpf filters do not). Filters of anyone else are untouched: they are selected by name.
/// Returns how many program names had stale filters. A missing clsact qdisc means nothing to do.
pub fn remove_stale_filters(ifname: &str, dir: TcAttachType) -> Result<usize, TcError> {
    let mut removed = 0;
    for name in our_programs(dir) {
        match tc::qdisc_detach_program(ifname, dir, name) {
            Ok(()) => {
                tracing::info!(
                    iface = ifname,
                    direction = dir_str(dir),
                    program = name,
                    "removed stale podflow tc filter left by a previous instance"
                );
                removed += 1;
            }
            Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            // No clsact qdisc on this device: no filters either.
            Err(TcError::NetlinkError(e))
                if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Adds the clsact qdisc unless some qdisc of that kind is already there. Never deletes one.
pub fn ensure_clsact(ifname: &str) -> Result<(), TcError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(TcError::AlreadyAttached) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Attaches `prog` to `ifname`/`dir` in `mode` and hands back the owned link (dropping it
/// detaches).
pub fn attach_one(
    ebpf: &mut Ebpf,
    prog: &'static str,
    ifname: &str,
    dir: TcAttachType,
    mode: AttachMode,
) -> Result<SchedClassifierLink, ProgramError> {
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog)
        .ok_or_else(|| ProgramError::UnexpectedProgramType)?
        .try_into()?;
    let opts = match mode {
        // First in the tcx chain: we see packets before a CNI program may redirect them.
        AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
        // Priority 0 = the kernel picks (next free below existing filters, 49152 if none).
        AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
    };
    let id = p.attach_with_options(ifname, dir, opts)?;
    p.take_link(id)
}

/// Detaches a link; "the interface is gone" counts as success when `gone_ok`.
pub fn detach_link(link: SchedClassifierLink, gone_ok: bool) -> Result<(), ProgramError> {
    match link.detach() {
        Ok(()) => Ok(()),
        Err(e) if gone_ok && is_gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names() {
        assert_eq!(
            program_for(IfaceKind::Veth, TcAttachType::Ingress),
            "podflow_veth_in"
        );
        assert_eq!(
            program_for(IfaceKind::L3, TcAttachType::Egress),
            "podflow_l3_eg"
        );
        assert_eq!(
            our_programs(TcAttachType::Egress),
            ["podflow_veth_eg", "podflow_l3_eg"]
        );
    }
}
