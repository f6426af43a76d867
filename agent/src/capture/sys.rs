//! Every raw syscall of the capture module, as typed wrappers (what aya keeps in `aya/src/sys`):
//! the hash-map batch commands of `bpf(2)` (aya 0.14 has no batch API), `membarrier(2)` and
//! `if_indextoname(3)`. Everything else goes through aya or `netlink-sys`.
use std::{io, os::fd::AsRawFd as _, os::fd::BorrowedFd};

/// `enum bpf_cmd` (uapi/linux/bpf.h).
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

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, live `bpf_attr.batch` whose pointers reference buffers that
    // outlive the call (the callers' slices).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// One `BPF_MAP_LOOKUP_BATCH` call: reads up to `keys.len()` entries (`values` must be as long,
/// `K`/`V` the map's key and value types) after the bucket `token` (`None`: from the start) and
/// stores the next token in `token`. Returns how many entries were read, and the call's error
/// (`ENOENT`: the walk reached the end, with the last entries read).
pub(super) fn lookup_batch<K, V>(
    map: BorrowedFd<'_>,
    start: bool,
    token: &mut u64,
    keys: &mut [K],
    values: &mut [V],
) -> (usize, io::Result<()>) {
    let chunk = keys.len().min(values.len());
    let token_ptr = std::ptr::from_mut(token) as u64;
    let mut attr = BatchAttr {
        in_batch: if start { 0 } else { token_ptr },
        out_batch: token_ptr,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(chunk).unwrap_or(u32::MAX),
        map_fd: fd_u32(map),
        elem_flags: 0,
        flags: 0,
    };
    let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
    ((attr.count as usize).min(chunk), res)
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`; returns how many were deleted before an error
/// (all of them on success).
pub(super) fn delete_batch<K>(map: BorrowedFd<'_>, keys: &[K]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(u32::MAX as usize);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd_u32(map),
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        done += (attr.count as usize).min(n);
        if let Err(e) = res {
            return (done, Err(e));
        }
    }
    (done, Ok(()))
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL)`: returns after an RCU grace period (`synchronize_rcu()`).
pub(super) fn membarrier_global() -> io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes (cmd, flags, cpu_id) integers and touches no user memory.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the name of interface `ifindex` in the calling thread's network namespace.
pub(super) fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let c = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    c.to_str().ok().map(str::to_owned)
}
