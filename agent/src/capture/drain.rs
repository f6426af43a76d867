//! Reading and clearing a flow map that no program writes into any more.
//!
//! Fast path: `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux ≥ 5.6 for hash maps) through a raw `bpf(2)`
//! call, as aya 0.14 has no batch API: one syscall per few thousand entries. Fallback (older
//! kernels, or if the batch call is refused): iterate keys (`BPF_MAP_GET_NEXT_KEY`), look each up,
//! then delete each — three syscalls per entry.
//!
//! Either way this runs only on the *inactive* map after the RCU grace period, so nothing races it.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use podflow_ebpf::{FlowKey, FlowStats};

use super::{CaptureError, FlowEntry};

/// `enum bpf_cmd`: `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr` (uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Merges the per-CPU values of one flow: packets/bytes summed, `first_ns` = minimum non-zero,
/// `last_ns` = maximum, TCP flags ORed, `ifindex` from the CPU with the latest `last_ns`.
pub fn merge_stats<'a>(per_cpu: impl IntoIterator<Item = &'a FlowStats>) -> FlowStats {
    let mut out = FlowStats::default();
    let mut best_last: Option<u64> = None;
    for s in per_cpu {
        if s.packets == 0 && s.bytes == 0 && s.last_ns == 0 {
            continue; // this CPU never saw the flow (the kernel zero-fills other CPUs' slots)
        }
        out.packets += s.packets;
        out.bytes += s.bytes;
        if s.first_ns != 0 && (out.first_ns == 0 || s.first_ns < out.first_ns) {
            out.first_ns = s.first_ns;
        }
        if best_last.is_none_or(|b| s.last_ns >= b) {
            best_last = Some(s.last_ns);
            out.ifindex = s.ifindex;
        }
        out.last_ns = out.last_ns.max(s.last_ns);
        out.tcp_flags |= s.tcp_flags;
    }
    out
}

/// Outcome of a batch attempt.
pub enum Batch {
    /// The whole map was read and emptied.
    Done,
    /// The kernel refused the batch command before touching anything (`EINVAL`, `ENOTSUPP`...):
    /// use the per-entry path.
    Unsupported(io::Error),
}

/// Reads and deletes every entry with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, appending to `out`.
pub fn lookup_and_delete_batch(
    map: &PerCpuHashMap<MapData, FlowKey, FlowStats>,
    nr_cpus: usize,
    chunk: usize,
    out: &mut Vec<FlowEntry>,
) -> Result<Batch, CaptureError> {
    // Per-CPU values are copied out as `round_up(value_size, 8)` bytes per possible CPU.
    let val_stride = size_of::<FlowStats>().next_multiple_of(8);
    let mut chunk = chunk.max(1);
    let mut keys: Vec<FlowKey> = vec![FlowKey::default(); chunk];
    let mut vals: Vec<FlowStats> = vec![FlowStats::default(); chunk * nr_cpus];
    debug_assert_eq!(val_stride, size_of::<FlowStats>());
    let map_fd = map_fd_of(map);
    // The hash map's batch token is a u32 bucket index; 8 bytes leaves room.
    let mut token: u64 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw mut token) as u64 },
            out_batch: (&raw mut token) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: vals.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr.batch`; `keys`/`vals` hold `chunk` keys and
        // `chunk * nr_cpus` values, which is what the kernel writes at most for `count = chunk`;
        // `token` outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let n = attr.count as usize;
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {}
            Some(libc::ENOSPC) if n == 0 => {
                // One bucket holds more entries than `chunk`: grow and retry the same bucket.
                chunk *= 2;
                keys.resize(chunk, FlowKey::default());
                vals.resize(chunk * nr_cpus, FlowStats::default());
                continue;
            }
            Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP | 524 /* ENOTSUPP */)
                if first && n == 0 =>
            {
                return Ok(Batch::Unsupported(
                    err.unwrap_or_else(|| io::Error::other("?")),
                ));
            }
            Some(_) => {
                return Err(CaptureError::Drain {
                    op: "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
                    source: err.unwrap_or_else(|| io::Error::other("?")),
                });
            }
        }
        for i in 0..n.min(chunk) {
            let per_cpu = &vals[i * nr_cpus..(i + 1) * nr_cpus];
            out.push(FlowEntry {
                key: keys[i],
                stats: merge_stats(per_cpu),
            });
        }
        first = false;
        if err.is_some() {
            return Ok(Batch::Done); // ENOENT: the walk reached the last bucket
        }
    }
}

/// Per-entry fallback: collect keys, look each up, then delete each.
pub fn lookup_then_delete(
    map: &mut PerCpuHashMap<MapData, FlowKey, FlowStats>,
    out: &mut Vec<FlowEntry>,
) -> Result<(), CaptureError> {
    let keys: Vec<FlowKey> =
        map.keys()
            .collect::<Result<_, _>>()
            .map_err(|source| CaptureError::Map {
                op: "iterate flow map keys",
                source,
            })?;
    for key in &keys {
        let values: PerCpuValues<FlowStats> = match map.get(key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(CaptureError::Map {
                    op: "look up flow",
                    source,
                });
            }
        };
        out.push(FlowEntry {
            key: *key,
            stats: merge_stats(values.iter()),
        });
    }
    for key in &keys {
        match map.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(CaptureError::Map {
                    op: "delete flow",
                    source,
                });
            }
        }
    }
    Ok(())
}

fn map_fd_of(map: &PerCpuHashMap<MapData, FlowKey, FlowStats>) -> u32 {
    use aya::maps::IterableMap as _;
    let fd = map.map().fd().as_fd().as_raw_fd();
    u32::try_from(fd).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(packets: u64, first: u64, last: u64, ifindex: u32, flags: u8) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 100,
            first_ns: first,
            last_ns: last,
            ifindex,
            tcp_flags: flags,
            _pad: [0; 3],
        }
    }

    #[test]
    fn merge_over_cpus() {
        let m = merge_stats(&[
            s(2, 50, 60, 7, 0x02),
            FlowStats::default(),
            s(3, 10, 90, 9, 0x10),
            s(1, 40, 45, 7, 0x01),
        ]);
        assert_eq!(m.packets, 6);
        assert_eq!(m.bytes, 600);
        assert_eq!(m.first_ns, 10);
        assert_eq!(m.last_ns, 90);
        assert_eq!(m.ifindex, 9);
        assert_eq!(m.tcp_flags, 0x13);
    }

    #[test]
    fn merge_all_empty() {
        assert_eq!(
            merge_stats(&[FlowStats::default(); 4]),
            FlowStats::default()
        );
    }
}
