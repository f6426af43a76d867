//! Reading and deleting the entries of one epoch from a flow map, and sampling the kernel's clocks.
//!
//! Fast path, through raw `bpf(2)` calls (aya 0.14 has no batch API): `BPF_MAP_LOOKUP_BATCH`
//! walks the whole map a few thousand entries per syscall, the old epoch's entries are kept, and
//! `BPF_MAP_DELETE_BATCH` deletes exactly their keys. Fallback (kernels without batch operations
//! on hash maps, < 5.6, or if a batch call is refused): iterate keys (`BPF_MAP_GET_NEXT_KEY`),
//! look each up, delete the old epoch's one by one.
//!
//! Either way this runs after the epoch flip and an RCU grace period, so no program writes a key
//! of the old epoch any more: what is read is final, and deleting it loses nothing.
use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
};

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError},
};
use podflow_ebpf::FlowValue;

use super::CaptureError;

/// `enum bpf_cmd` (uapi/linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

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

/// The `test` member of `union bpf_attr` (uapi/linux/bpf.h), up to `batch_size`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> io::Result<()> {
    // SAFETY: the callers pass a valid, live `bpf_attr` member of `size` bytes for `cmd`, whose
    // pointers reference buffers that outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRunResult {
    /// The program's return value.
    pub retval: u32,
    /// Average ns per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs a loaded tc program `repeat` times on `data` (`BPF_PROG_TEST_RUN`), for programs aya did
/// not load (a raw fd).
pub fn test_run(prog_fd: RawFd, data: &[u8], repeat: u32) -> io::Result<TestRunResult> {
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog_fd).unwrap_or(u32::MAX),
        data_size_in: u32::try_from(data.len()).unwrap_or(u32::MAX),
        data_in: data.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(
        BPF_PROG_TEST_RUN,
        (&raw mut attr).cast(),
        size_of::<TestRunAttr>(),
    )?;
    Ok(TestRunResult {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

/// Loads the smallest tc program (`r0 = -1 (TC_ACT_UNSPEC); exit`) with raw `bpf(2)`: the
/// baseline the benchmark and the per-packet cost test subtract.
pub fn load_empty_tc_program(name: &str) -> io::Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    let insns: [u8; 16] = [
        0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0,
    ];
    let license = c"GPL";
    let mut attr = [0u64; 16]; // 128 bytes of union bpf_attr, zeroed
    let b = attr.as_mut_ptr().cast::<u8>();
    // SAFETY: writes within the 128-byte buffer at the UAPI offsets of union bpf_attr
    // (prog_type, insn_cnt, insns, license, prog_name at 48, at most 15 bytes + NUL).
    unsafe {
        b.cast::<u32>().write(BPF_PROG_TYPE_SCHED_CLS);
        b.add(4).cast::<u32>().write(2);
        b.add(8).cast::<u64>().write(insns.as_ptr() as u64);
        b.add(16).cast::<u64>().write(license.as_ptr() as u64);
        let n = name.len().min(15);
        std::ptr::copy_nonoverlapping(name.as_ptr(), b.add(48), n);
    }
    // SAFETY: bpf(BPF_PROG_LOAD) with the attr above; insns and license outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Outcome of a batch attempt.
pub enum Batch {
    /// The whole map was walked.
    Done,
    /// The kernel refused the batch command before touching anything (`EINVAL`, `ENOTSUPP`...):
    /// use the per-entry path.
    Unsupported(io::Error),
}

/// Reusable buffers of one map's batch walk.
pub struct BatchBufs<K> {
    keys: Vec<K>,
    vals: Vec<FlowValue>,
    kept: Vec<(K, FlowValue)>,
}

impl<K: Pod + Default> BatchBufs<K> {
    pub fn new(chunk: usize) -> BatchBufs<K> {
        BatchBufs {
            keys: vec![K::default(); chunk.max(1)],
            vals: vec![FlowValue::default(); chunk.max(1)],
            kept: Vec::new(),
        }
    }
}

/// Walks the whole map with `BPF_MAP_LOOKUP_BATCH` and hands the entries `keep` accepts to
/// `on_chunk`, chunk by chunk, as the walk goes: `on_chunk` deletes them, so while the programs
/// fill the same map with the new epoch the old epoch's room is given back as early as possible.
/// (Deleting in buckets the walk has passed does not disturb it: its token is a bucket index.)
pub fn lookup_batch<K: Pod + Default>(
    map_fd: RawFd,
    bufs: &mut BatchBufs<K>,
    keep: impl Fn(&K) -> bool,
    mut on_chunk: impl FnMut(&[(K, FlowValue)]) -> Result<(), CaptureError>,
) -> Result<Batch, CaptureError> {
    let map_fd = u32::try_from(map_fd).unwrap_or(u32::MAX);
    // The hash map's batch token is a u32 bucket index; 8 bytes leaves room.
    let mut token: u64 = 0;
    let mut first = true;
    loop {
        let chunk = bufs.keys.len();
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw mut token) as u64 },
            out_batch: (&raw mut token) as u64,
            keys: bufs.keys.as_mut_ptr() as u64,
            values: bufs.vals.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd,
            elem_flags: 0,
            flags: 0,
        };
        let res = bpf(
            BPF_MAP_LOOKUP_BATCH,
            (&raw mut attr).cast(),
            size_of::<BatchAttr>(),
        );
        let n = (attr.count as usize).min(chunk);
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
        on_chunk(&bufs.kept)?;
        first = false;
        if res.is_err() {
            return Ok(Batch::Done); // ENOENT: the walk reached the last bucket
        }
    }
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`; returns how many were deleted before an error
/// (all of them on success).
pub fn delete_batch<K: Pod>(map_fd: RawFd, keys: &[K]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(u32::MAX as usize);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: u32::try_from(map_fd).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        let res = bpf(
            BPF_MAP_DELETE_BATCH,
            (&raw mut attr).cast(),
            size_of::<BatchAttr>(),
        );
        done += (attr.count as usize).min(n);
        if let Err(e) = res {
            return (done, Err(e));
        }
    }
    (done, Ok(()))
}

/// Per-entry fallback: look up every key, keep the entries `keep` accepts, delete their keys.
pub fn lookup_then_delete<K: Pod + Default>(
    map: &mut HashMap<MapData, K, FlowValue>,
    keep: impl Fn(&K) -> bool,
    out: &mut Vec<(K, FlowValue)>,
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
            Ok(v) => out.push((key, v)),
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
pub fn delete_one<K: Pod, V: Pod>(
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
