//! The raw socket options of the conntrack socket: a forced receive buffer and the classic-BPF
//! filter that keeps only translated entries.
use std::{io, os::fd::RawFd};

use super::message::{ATTRS_AT, CTA_STATUS, IPS_DST_NAT, IPS_SRC_NAT};

/// Sets `SO_RCVBUFFORCE` (beyond `rmem_max`; needs `CAP_NET_ADMIN`).
pub(super) fn force_rcvbuf(fd: RawFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &v)
}

/// Sets `SO_RCVTIMEO`: a blocking receive fails with `EAGAIN` after `timeout`.
pub(super) fn recv_timeout(fd: RawFd, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// The filter: find `CTA_STATUS` among the message's attributes (the `SKF_AD_NLATTR` extension),
/// accept the message if its status has `IPS_SRC_NAT` or `IPS_DST_NAT`, drop it otherwise. A
/// message without a status is accepted (user space judges it).
pub(super) fn nat_filter() -> [libc::sock_filter; 9] {
    const SKF_AD_OFF: i32 = -0x1000;
    const SKF_AD_NLATTR: i32 = 12;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, ldx, ret, jmp, misc) = (
        libc::BPF_LD,
        libc::BPF_LDX,
        libc::BPF_RET,
        libc::BPF_JMP,
        libc::BPF_MISC,
    );
    let (imm, abs, ind, b, w, k) = (
        libc::BPF_IMM,
        libc::BPF_ABS,
        libc::BPF_IND,
        libc::BPF_B,
        libc::BPF_W,
        libc::BPF_K,
    );
    [
        // A = offset of the attributes, X = the type to find.
        op(ld | w | imm, 0, 0, ATTRS_AT as u32),
        op(ldx | w | imm, 0, 0, u32::from(CTA_STATUS)),
        // A = offset of the attribute, or 0.
        op(ld | b | abs, 0, 0, (SKF_AD_OFF + SKF_AD_NLATTR) as u32),
        op(jmp | libc::BPF_JEQ | k, 4, 0, 0),
        // X = A; A = the status (big-endian, as classic BPF loads it) after the 4-byte header.
        op(misc | libc::BPF_TAX, 0, 0, 0),
        op(ld | w | ind, 0, 0, 4),
        op(jmp | libc::BPF_JSET | k, 1, 0, IPS_SRC_NAT | IPS_DST_NAT),
        op(ret | k, 0, 0, 0),
        op(ret | k, 0, 0, u32::MAX),
    ]
}

/// Attaches `prog` as the socket's filter (`SO_ATTACH_FILTER`).
pub(super) fn attach_filter(fd: RawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).unwrap_or(u16::MAX),
        filter: prog.as_ptr().cast_mut(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// Datagrams one [`recv_batch`] call reads at most, and the room for each (an event is one
/// message of a few hundred bytes).
pub(super) const BATCH: usize = 64;
pub(super) const DATAGRAM: usize = 2048;

/// Reads up to [`BATCH`] queued datagrams with one `recvmmsg(2)` (non-blocking) into `bufs`,
/// one per [`DATAGRAM`] bytes; their lengths go to `lens`. Returns how many were read (an
/// error pending on the socket, such as `ENOBUFS`, comes as the error of a call that read none).
pub(super) fn recv_batch(
    fd: RawFd,
    bufs: &mut [u8],
    lens: &mut [usize; BATCH],
) -> io::Result<usize> {
    let n = (bufs.len() / DATAGRAM).min(BATCH);
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: an all-zero mmsghdr is valid (null name, no control data); fields set below.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, chunk) in bufs.chunks_exact_mut(DATAGRAM).take(n).enumerate() {
        iovs[i] = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: DATAGRAM,
        };
        msgs[i].msg_hdr.msg_iov = std::ptr::from_mut(&mut iovs[i]);
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `n` message headers, each pointing at its own iovec and buffer of DATAGRAM bytes,
    // all alive for the call.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            u32::try_from(n).unwrap_or(0),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = usize::try_from(rc).unwrap_or(0).min(n);
    for (len, m) in lens.iter_mut().zip(&msgs).take(got) {
        *len = m.msg_len as usize;
    }
    Ok(got)
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            libc::socklen_t::try_from(size_of::<T>()).unwrap_or(0),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
