//! tcx on the pod veths: the ids of the programs attached there (`BPF_PROG_QUERY`), and the
//! empty tc program attached as the reference of the kernel cost.
use std::{os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, anyhow};

use crate::bed::{Bed, DST_VETH, SRC_VETH};

/// The ids of the programs attached with tcx to both directions of the two pod veths:
/// `BPF_PROG_QUERY` from a thread inside the node namespace (ifindexes are per namespace; bpftool
/// 7.1's `net show` does not list tcx attachments yet).
pub fn attached_prog_ids(node_ns: &str) -> anyhow::Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    let path = format!("/run/netns/{node_ns}");
    let mut ifindexes = Vec::new();
    for dev in [SRC_VETH, DST_VETH] {
        let out = Command::new("ip")
            .args(["netns", "exec", node_ns, "cat"])
            .arg(format!("/sys/class/net/{dev}/ifindex"))
            .output()?;
        ifindexes.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .with_context(|| format!("ifindex of {dev}"))?,
        );
    }
    let ids = std::thread::scope(|sc| {
        sc.spawn(|| -> anyhow::Result<Vec<u32>> {
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns(CLONE_NEWNET) on a namespace fd, on this scoped thread only, which
            // ends right after the queries.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            let mut ids = Vec::new();
            for &ifindex in &ifindexes {
                for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                    let mut buf = [0u32; 64];
                    let mut attr = [0u64; 8];
                    let b = attr.as_mut_ptr().cast::<u8>();
                    // SAFETY: attr.query fields at their UAPI offsets (target_ifindex 0,
                    // attach_type 4, prog_ids 16, prog_cnt 24) in a 64-byte buffer.
                    unsafe {
                        b.cast::<u32>().write(ifindex);
                        b.add(4).cast::<u32>().write(attach_type);
                        b.add(16).cast::<u64>().write(buf.as_mut_ptr() as u64);
                        b.add(24).cast::<u32>().write(buf.len() as u32);
                    }
                    let size = std::mem::size_of_val(&attr) as u32;
                    // SAFETY: bpf(BPF_PROG_QUERY) with a valid attr; buf outlives the call.
                    let rc = unsafe {
                        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), size)
                    };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error()).context("BPF_PROG_QUERY");
                    }
                    // SAFETY: prog_cnt written back by the kernel.
                    let n = unsafe { b.add(24).cast::<u32>().read() } as usize;
                    ids.extend_from_slice(&buf[..n.min(buf.len())]);
                }
            }
            Ok(ids)
        })
        .join()
        .map_err(|_| anyhow!("query thread panicked"))?
    })?;
    let mut ids = ids;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The object's empty tc program (`podflow_empty`: `r0 = -1 (TC_ACT_UNSPEC); exit`), attached
/// with tcx links to both directions of both pod veths; detached when dropped.
pub struct EmptyProg {
    _prog: podflow::capture::EmptyProgram,
}

impl EmptyProg {
    pub fn attach(bed: &Bed) -> anyhow::Result<EmptyProg> {
        use podflow::capture::{CaptureError, EmptyProgram, TcAttachType};
        let prog = EmptyProgram::load().context("loading the empty tc program")?;
        // Attached from a thread inside the node namespace (interface names are per
        // namespace); the links belong to the program, which outlives the thread.
        let prog = bed
            .node_ns()
            .run(move || -> Result<EmptyProgram, CaptureError> {
                let mut prog = prog;
                for dev in [SRC_VETH, DST_VETH] {
                    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                        prog.attach(dev, dir)?;
                    }
                }
                Ok(prog)
            })
            .map_err(|e| anyhow!("{e}"))?
            .context("attaching the empty tc program with tcx")?;
        Ok(EmptyProg { _prog: prog })
    }
}
