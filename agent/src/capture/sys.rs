//! Every raw syscall of the capture module, as typed wrappers (what aya keeps in `aya/src/sys`):
//! the hash-map batch commands of `bpf(2)` (aya 0.14 has no batch API), opening a pinned link,
//! reading its tcx target and swapping its program (aya keeps a link's fd private),
//! `membarrier(2)`, `statfs(2)` and `if_indextoname(3)`. Everything else goes through aya or
//! `netlink-sys`.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

/// `enum bpf_cmd` (uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_link_type`: `BPF_LINK_TYPE_TCX`.
pub(super) const BPF_LINK_TYPE_TCX: u32 = 11;
/// `enum bpf_attach_type`: `BPF_TCX_INGRESS`, `BPF_TCX_EGRESS`.
pub(super) const BPF_TCX_INGRESS: u32 = 46;
pub(super) const BPF_TCX_EGRESS: u32 = 47;
/// `statfs.f_type` of a BPF file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, live member of `union bpf_attr` for `cmd` whose pointers
    // reference buffers that outlive the call (the callers' slices and strings).
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
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
    let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr).map(drop);
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
        let res = bpf(BPF_MAP_DELETE_BATCH, &mut attr).map(drop);
        done += (attr.count as usize).min(n);
        if let Err(e) = res {
            return (done, Err(e));
        }
    }
    (done, Ok(()))
}

/// The `obj_pin`/`obj_get` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `BPF_OBJ_GET`: opens the object pinned at `path` (a link here).
pub(super) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..ObjAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The start of `struct bpf_link_info` and its `tcx` member.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct TcxLinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    _pad: u32,
    /// 0 once the device is gone (the link is defunct).
    pub ifindex: u32,
    pub attach_type: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link: its type, program and (tcx) device and direction.
pub(super) fn link_info(link: BorrowedFd<'_>) -> io::Result<TcxLinkInfo> {
    let mut info = TcxLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(link),
        info_len: size_of::<TcxLinkInfo>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The `link_update` member of `union bpf_attr`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `BPF_LINK_UPDATE`: the link runs `prog` from now on, atomically (no packet sees neither).
pub(super) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: fd_u32(link),
        new_prog_fd: fd_u32(prog),
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// The `query` member of `union bpf_attr` (as of Linux 6.6, with tcx).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// `BPF_PROG_QUERY` on a tcx hook: the programs attached to `ifindex` in `attach_type`
/// ([`BPF_TCX_INGRESS`] / [`BPF_TCX_EGRESS`]), in order, at most 64, as (program id, link id;
/// 0 for a program attached without a link).
pub(super) fn tcx_query(ifindex: u32, attach_type: u32) -> io::Result<Vec<(u32, u32)>> {
    let mut progs = [0u32; 64];
    let mut links = [0u32; 64];
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type,
        prog_ids: progs.as_mut_ptr() as u64,
        prog_cnt: progs.len() as u32,
        link_ids: links.as_mut_ptr() as u64,
        ..QueryAttr::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let n = (attr.prog_cnt as usize).min(progs.len());
    Ok(progs[..n]
        .iter()
        .copied()
        .zip(links[..n].iter().copied())
        .collect())
}

/// Whether `path` is on a BPF file system (where objects can be pinned).
pub(super) fn is_bpffs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statfs is valid; statfs(2) fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` a live statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type == BPF_FS_MAGIC)
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
