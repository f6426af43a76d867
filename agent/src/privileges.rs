//! Start-up check of what the agent needs from the kernel and its container, so that a
//! mis-configured pod fails at once with an error that names the missing piece (instead of an
//! `EPERM` from deep inside the eBPF loader).
//!
//! What the agent needs, and why:
//!
//! | what | why |
//! |---|---|
//! | `CAP_BPF` (39) | create maps, load the programs (`bpf(2)`) |
//! | `CAP_NET_ADMIN` (12) | tc programs are "net admin" program types; attaching them (tcx or clsact + cls_bpf) to interfaces; reading the node's conntrack (ctnetlink events and dumps, every nfnetlink message needs it) and forcing that socket's buffer size |
//! | `CAP_PERFMON` (38) | the verifier's pointer-arithmetic and Spectre-mitigation relaxations that the programs rely on |
//!
//! `CAP_SYS_ADMIN` (21) stands in for `CAP_BPF` and `CAP_PERFMON`, as the kernel's
//! `bpf_capable()`/`perfmon_capable()` accept it; it never stands in for `CAP_NET_ADMIN`.
//!
//! Not needed:
//!
//! - `CAP_SYS_RESOURCE`: kernels ≥ 5.11 charge BPF memory to the memory cgroup instead of
//!   `RLIMIT_MEMLOCK`. On older kernels the memlock limit must be high enough (or unlimited); the
//!   check fails there with an error that says so (podflow requires ≥ 5.15 anyway).
//! - `/sys/fs/bpf`: only `--pin-dir` (maps and links outliving the agent) needs a bpffs; without
//!   it the programs and maps live as long as the process, so a missing mount is a warning.
//!
//! Beyond capabilities, what a container's other settings can take away, each named rather than
//! left to an `EPERM`/`EROFS` from deep inside:
//!
//! - `bpf(2)` itself: a seccomp profile without it (a custom or old `Localhost` profile) makes
//!   the kernel answer `EPERM` whatever the capabilities. The check creates (and closes) a
//!   one-entry array map; refused with the capabilities present, it says whether a seccomp
//!   filter is installed (`Seccomp: 2` in /proc/self/status) or something else (an LSM) refused.
//! - the API socket's directory ([`check_socket_dir`]): with `readOnlyRootFilesystem` it must be
//!   a writable mount (the DaemonSet's hostPath `/run/podflow`).
//!
//! [`check`] reads the live process state; [`Privileges::check`] is the pure part, tested below.
use std::path::{Path, PathBuf};

/// `CAP_NET_ADMIN`, see capability(7).
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: accepted by the kernel in place of `CAP_BPF` and `CAP_PERFMON`.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON` (Linux ≥ 5.8).
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (Linux ≥ 5.8).
pub const CAP_BPF: u32 = 39;

/// `statfs(2)` magic of a bpffs mount (`BPF_FS_MAGIC`).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted (and where the DaemonSet mounts the host's).
pub const BPFFS_PATH: &str = "/sys/fs/bpf";

/// First kernel that accounts BPF memory to the memory cgroup instead of `RLIMIT_MEMLOCK`.
pub const MEMCG_ACCOUNTING_KERNEL: (u32, u32) = (5, 11);

const REQUIRED: &[(&str, u32)] = &[
    ("CAP_BPF", CAP_BPF),
    ("CAP_NET_ADMIN", CAP_NET_ADMIN),
    ("CAP_PERFMON", CAP_PERFMON),
];

/// The capabilities the agent needs, as `(name, number)`; the DaemonSet adds exactly these (its
/// `capabilities.add` lists them without the `CAP_` prefix). Shared by the manifest tests.
pub fn required_capabilities() -> &'static [(&'static str, u32)] {
    REQUIRED
}

/// What a missing capability is needed for (used in the error message).
pub fn capability_purpose(cap: u32) -> &'static str {
    match cap {
        CAP_BPF => "needed to load eBPF programs and create their maps",
        CAP_NET_ADMIN => "needed to attach tc programs to network interfaces and to read conntrack",
        CAP_PERFMON => "needed by the eBPF verifier to accept the programs' pointer arithmetic",
        _ => "needed by the agent",
    }
}

/// A capability the process lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingCapability {
    pub name: &'static str,
    pub number: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{}", missing_message(missing))]
    MissingCapabilities { missing: Vec<MissingCapability> },
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no CapEff line in /proc/self/status")]
    NoCapEff,
    #[error("malformed CapEff mask {value:?} (expected up to 16 hex digits)")]
    BadCapEff { value: String },
    #[error(
        "kernel {}.{} accounts eBPF memory to RLIMIT_MEMLOCK, whose soft limit is {soft} bytes: \
         raise it (e.g. `ulimit -l unlimited`, or grant CAP_SYS_RESOURCE) or use a kernel ≥ 5.11",
        kernel.0, kernel.1
    )]
    MemlockTooLow { kernel: (u32, u32), soft: u64 },
    /// `bpf(2)` is refused although the capabilities are there, and a seccomp filter is set.
    #[error(
        "bpf(2) is blocked by the container's seccomp profile (it fails with {errno} although \
         CAP_BPF is held, and a seccomp filter is installed): use a profile that allows bpf, \
         perf_event_open and membarrier, such as containerd's or Docker's RuntimeDefault \
         (seccompProfile: {{type: RuntimeDefault}}), not a Localhost or older profile without it"
    )]
    SeccompBlocksBpf { errno: String },
    /// `bpf(2)` is refused although the capabilities are there, without a seccomp filter.
    #[error(
        "bpf(2) fails with {errno} although CAP_BPF is held and no seccomp filter is set: a \
         Linux security module (SELinux, AppArmor, lockdown) or the runtime refuses it"
    )]
    BpfRefused { errno: String },
    /// The API socket's directory is on a read-only file system.
    #[error(
        "cannot create the API socket {}: {} is on a read-only file system (a read-only root \
         filesystem without a writable mount there); mount a writable volume at {} (the \
         DaemonSet mounts the node's /run/podflow there, a hostPath volume)",
        socket.display(), dir.display(), dir.display()
    )]
    SocketDirReadOnly { socket: PathBuf, dir: PathBuf },
    /// The API socket's directory is not writable for another reason.
    #[error("cannot create the API socket {}: {} is not writable", socket.display(), dir.display())]
    SocketDirNotWritable {
        socket: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn missing_message(missing: &[MissingCapability]) -> String {
    let list = missing
        .iter()
        .map(|m| format!("{} ({})", m.name, capability_purpose(m.number)))
        .collect::<Vec<_>>()
        .join(", ");
    let (noun, pronoun) = if missing.len() == 1 {
        ("capability", "it")
    } else {
        ("capabilities", "them")
    };
    format!("missing {noun} {list}; grant {pronoun} in the pod securityContext.capabilities.add")
}

/// Something that works now but deserves a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivilegeWarning {
    /// `/sys/fs/bpf` is not a bpffs mount. Not needed today (nothing is pinned).
    NoBpffs,
    /// The capabilities are satisfied through `CAP_SYS_ADMIN`, which grants far more.
    SysAdmin,
}

impl std::fmt::Display for PrivilegeWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivilegeWarning::NoBpffs => write!(
                f,
                "{BPFFS_PATH} is not a bpffs mount: --pin-dir (keeping the counts across agent \
                 restarts) needs the host's {BPFFS_PATH} mounted (hostPath)"
            ),
            PrivilegeWarning::SysAdmin => write!(
                f,
                "running with CAP_SYS_ADMIN; CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are enough"
            ),
        }
    }
}

/// The process facts the check looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Effective capability mask (`CapEff` of /proc/self/status).
    pub cap_eff: u64,
    /// Kernel (major, minor), if it could be read.
    pub kernel: Option<(u32, u32)>,
    /// Soft `RLIMIT_MEMLOCK` in bytes; `None` = unlimited.
    pub memlock_soft: Option<u64>,
    /// Whether /sys/fs/bpf is a bpffs mount.
    pub bpffs: bool,
    /// Whether a seccomp filter is installed (`Seccomp: 2` in /proc/self/status).
    pub seccomp_filter: bool,
    /// What `bpf(2)` answered to creating a one-entry array map: `Ok`, or the errno.
    pub bpf_probe: Result<(), i32>,
}

/// Memlock needed on kernels without memcg accounting: the flow maps are several MiB.
const MEMLOCK_NEEDED: u64 = 256 << 20;

impl Privileges {
    /// Reads the facts of the running process.
    pub fn read() -> Result<Privileges, PrivilegeError> {
        let status = read("/proc/self/status")?;
        let cap_eff = parse_cap_eff(&status)?;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|s| parse_kernel_release(&s));
        Ok(Privileges {
            cap_eff,
            kernel,
            memlock_soft: memlock_soft(),
            bpffs: is_bpffs(Path::new(BPFFS_PATH)),
            seccomp_filter: parse_seccomp_mode(&status) == Some(2),
            bpf_probe: probe_bpf(),
        })
    }

    /// Capabilities of [`required_capabilities`] not in the effective set.
    pub fn missing_capabilities(&self) -> Vec<MissingCapability> {
        missing_capabilities(self.cap_eff)
    }

    /// Ok with the warnings worth logging, or the error naming what is missing.
    pub fn check(&self) -> Result<Vec<PrivilegeWarning>, PrivilegeError> {
        let missing = self.missing_capabilities();
        if !missing.is_empty() {
            return Err(PrivilegeError::MissingCapabilities { missing });
        }
        if let (Some(kernel), Some(soft)) = (self.kernel, self.memlock_soft)
            && kernel < MEMCG_ACCOUNTING_KERNEL
            && soft < MEMLOCK_NEEDED
        {
            return Err(PrivilegeError::MemlockTooLow { kernel, soft });
        }
        // Refused with the capabilities there: something else blocks the syscall. Other errors
        // (e.g. ENOMEM) are the loader's to report, with their context.
        if let Err(errno) = self.bpf_probe
            && (errno == libc::EPERM || errno == libc::EACCES)
        {
            let errno = errno_name(errno).to_string();
            return Err(if self.seccomp_filter {
                PrivilegeError::SeccompBlocksBpf { errno }
            } else {
                PrivilegeError::BpfRefused { errno }
            });
        }
        let mut warnings = Vec::new();
        if has_cap(self.cap_eff, CAP_SYS_ADMIN) {
            warnings.push(PrivilegeWarning::SysAdmin);
        }
        if !self.bpffs {
            warnings.push(PrivilegeWarning::NoBpffs);
        }
        Ok(warnings)
    }
}

/// Run at agent start: fails naming the missing capability (or memlock limit); logs warnings.
pub fn check() -> Result<(), PrivilegeError> {
    for w in Privileges::read()?.check()? {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// Run at agent start, before anything is loaded: the directory of the API socket `socket` (or
/// its nearest existing ancestor, the rest is created) must be writable.
pub fn check_socket_dir(socket: &Path) -> Result<(), PrivilegeError> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
    writable(existing).map_err(|source| socket_dir_error(socket, dir, source))
}

/// The error for a socket directory `dir` that `access(W_OK)` refused with `source`.
pub fn socket_dir_error(socket: &Path, dir: &Path, source: std::io::Error) -> PrivilegeError {
    if source.raw_os_error() == Some(libc::EROFS) {
        PrivilegeError::SocketDirReadOnly {
            socket: socket.to_path_buf(),
            dir: dir.to_path_buf(),
        }
    } else {
        PrivilegeError::SocketDirNotWritable {
            socket: socket.to_path_buf(),
            dir: dir.to_path_buf(),
            source,
        }
    }
}

fn writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The `Seccomp:` mode of a `/proc/<pid>/status` text (0 none, 1 strict, 2 filter).
pub fn parse_seccomp_mode(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim()
        .parse()
        .ok()
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        _ => "an error",
    }
}

/// Creates and closes a one-entry array map (`BPF_MAP_CREATE`): whether `bpf(2)` is usable at
/// all, before the loader's many calls; the errno when it is not.
fn probe_bpf() -> Result<(), i32> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr's map-create part: map_type, key_size, value_size, max_entries, then
    // zeros (the kernel accepts a larger attr whose tail is zero).
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of the attr, which we own; on success
    // it returns a new file descriptor, closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM));
    }
    // SAFETY: `fd` is the descriptor bpf(2) just returned to us, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn read(path: &str) -> Result<String, PrivilegeError> {
    std::fs::read_to_string(path).map_err(|source| PrivilegeError::Read {
        path: path.to_string(),
        source,
    })
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Result<u64, PrivilegeError> {
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or(PrivilegeError::NoCapEff)?
        .trim();
    parse_cap_mask(value)
}

/// A capability mask as the kernel prints it (16 hex digits, e.g. `000001ffffffffff`).
pub fn parse_cap_mask(value: &str) -> Result<u64, PrivilegeError> {
    let bad = || PrivilegeError::BadCapEff {
        value: value.to_string(),
    };
    if value.is_empty() || value.len() > 16 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(value, 16).map_err(|_| bad())
}

/// Whether capability `cap` is set in `mask`.
pub fn has_cap(mask: u64, cap: u32) -> bool {
    cap < 64 && mask & (1u64 << cap) != 0
}

/// Required capabilities missing from `mask`, with `CAP_SYS_ADMIN` standing in for `CAP_BPF` and
/// `CAP_PERFMON` as in the kernel's `bpf_capable()`/`perfmon_capable()`.
pub fn missing_capabilities(mask: u64) -> Vec<MissingCapability> {
    let sys_admin = has_cap(mask, CAP_SYS_ADMIN);
    required_capabilities()
        .iter()
        .filter(|&&(_, cap)| {
            let via_sys_admin = sys_admin && matches!(cap, CAP_BPF | CAP_PERFMON);
            !has_cap(mask, cap) && !via_sys_admin
        })
        .map(|&(name, number)| MissingCapability { name, number })
        .collect()
}

/// (major, minor) of a kernel release string such as `6.1.0-28-cloud-amd64` or `5.15.0+`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor_digits: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor_digits.parse().ok()?))
}

fn memlock_soft() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(lim.rlim_cur)
    }
}

/// Whether `path` is a bpffs mount (`statfs` magic `0xcafe4a11`).
pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value; statfs only writes into it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but i32/u32 on other targets"
    )]
    let f_type = i64::from(st.f_type);
    rc == 0 && f_type == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_MASK: &str = "000001ffffffffff"; // all 41 capabilities of Linux 5.9+

    fn caps(list: &[u32]) -> u64 {
        list.iter().fold(0, |m, c| m | 1u64 << c)
    }

    fn privs(cap_eff: u64) -> Privileges {
        Privileges {
            cap_eff,
            kernel: Some((6, 1)),
            memlock_soft: Some(8 << 20),
            bpffs: true,
            seccomp_filter: true,
            bpf_probe: Ok(()),
        }
    }

    #[test]
    fn parses_cap_eff_from_status() {
        let status = "Name:\tpodflow\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000000c000001000\n";
        let mask = parse_cap_eff(status).unwrap();
        assert_eq!(mask, caps(&[CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF]));
        assert_eq!(mask, 0x0000_00c0_0000_1000);
        assert!(missing_capabilities(mask).is_empty());
    }

    #[test]
    fn parses_masks() {
        assert_eq!(parse_cap_mask(ROOT_MASK).unwrap(), (1u64 << 41) - 1);
        assert_eq!(parse_cap_mask("0000000000000000").unwrap(), 0);
        assert_eq!(parse_cap_mask("ffffffffffffffff").unwrap(), u64::MAX);
        assert_eq!(parse_cap_mask("a80425fb").unwrap(), 0xa804_25fb); // docker's default set
        for bad in ["", "xyz", "00000000000000000", "-1", "0x10", " 1"] {
            assert!(
                matches!(parse_cap_mask(bad), Err(PrivilegeError::BadCapEff { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_cap_eff("Name:\tx\n"),
            Err(PrivilegeError::NoCapEff)
        ));
    }

    #[test]
    fn names_each_missing_capability() {
        let all = caps(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        for &(name, cap) in required_capabilities() {
            let missing = missing_capabilities(all & !(1u64 << cap));
            assert_eq!(missing, vec![MissingCapability { name, number: cap }]);
            let err = privs(all & !(1u64 << cap)).check().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("missing capability {name} (needed to"))
                    || err.starts_with(&format!("missing capability {name} (needed by")),
                "{err}"
            );
            assert!(
                err.contains("grant it in the pod securityContext.capabilities.add"),
                "{err}"
            );
        }
        assert_eq!(
            privs(caps(&[CAP_NET_ADMIN, CAP_PERFMON]))
                .check()
                .unwrap_err()
                .to_string(),
            "missing capability CAP_BPF (needed to load eBPF programs and create their maps); grant \
             it in the pod securityContext.capabilities.add"
        );
        let none = privs(0).check().unwrap_err().to_string();
        assert!(none.starts_with("missing capabilities CAP_BPF ("), "{none}");
        assert!(
            none.contains("CAP_NET_ADMIN (needed to attach tc programs"),
            "{none}"
        );
        assert!(none.contains("CAP_PERFMON ("), "{none}");
        assert!(none.contains("grant them in"), "{none}");
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon_not_net_admin() {
        assert!(missing_capabilities(caps(&[CAP_SYS_ADMIN, CAP_NET_ADMIN])).is_empty());
        assert_eq!(
            missing_capabilities(caps(&[CAP_SYS_ADMIN])),
            vec![MissingCapability {
                name: "CAP_NET_ADMIN",
                number: CAP_NET_ADMIN
            }]
        );
        assert_eq!(
            privs(caps(&[CAP_SYS_ADMIN, CAP_NET_ADMIN]))
                .check()
                .unwrap(),
            vec![PrivilegeWarning::SysAdmin]
        );
        assert!(missing_capabilities(parse_cap_mask(ROOT_MASK).unwrap()).is_empty());
    }

    #[test]
    fn bpffs_is_a_warning_and_memlock_matters_only_before_5_11() {
        let ok = caps(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        assert_eq!(privs(ok).check().unwrap(), vec![]);
        let no_bpffs = Privileges {
            bpffs: false,
            ..privs(ok)
        };
        assert_eq!(no_bpffs.check().unwrap(), vec![PrivilegeWarning::NoBpffs]);
        let old = Privileges {
            kernel: Some((5, 10)),
            memlock_soft: Some(64 << 10),
            ..privs(ok)
        };
        let err = old.check().unwrap_err().to_string();
        assert!(
            err.contains("kernel 5.10") && err.contains("65536 bytes"),
            "{err}"
        );
        let old_unlimited = Privileges {
            memlock_soft: None,
            ..old.clone()
        };
        assert!(old_unlimited.check().is_ok());
        let new_low = Privileges {
            kernel: Some((5, 11)),
            ..old
        };
        assert!(new_low.check().is_ok());
    }

    #[test]
    fn a_blocked_bpf_syscall_is_named_with_its_cause() {
        let ok = caps(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        let blocked = Privileges {
            bpf_probe: Err(libc::EPERM),
            ..privs(ok)
        };
        let err = blocked.check().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "bpf(2) is blocked by the container's seccomp profile (it fails with EPERM"
            ),
            "{err}"
        );
        assert!(err.contains("RuntimeDefault"), "{err}");
        let no_filter = Privileges {
            seccomp_filter: false,
            ..blocked.clone()
        };
        let err = no_filter.check().unwrap_err().to_string();
        assert!(
            err.starts_with("bpf(2) fails with EPERM although CAP_BPF is held and no seccomp"),
            "{err}"
        );
        // A missing capability is named first: that EPERM is the capability's.
        let err = Privileges {
            cap_eff: caps(&[CAP_NET_ADMIN, CAP_PERFMON]),
            ..blocked.clone()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("missing capability CAP_BPF"), "{err}");
        // Other errors are left to the loader.
        let nomem = Privileges {
            bpf_probe: Err(libc::ENOMEM),
            ..blocked
        };
        assert!(nomem.check().is_ok());
    }

    #[test]
    fn parses_the_seccomp_mode() {
        assert_eq!(
            parse_seccomp_mode("Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(2)
        );
        assert_eq!(parse_seccomp_mode("Seccomp:\t0\n"), Some(0));
        assert_eq!(parse_seccomp_mode("Name:\tx\n"), None);
    }

    #[test]
    fn an_unwritable_socket_directory_is_named() {
        let socket = Path::new("/run/podflow/podflow.sock");
        let dir = Path::new("/run/podflow");
        let ro = socket_dir_error(socket, dir, std::io::Error::from_raw_os_error(libc::EROFS));
        assert_eq!(
            ro.to_string(),
            "cannot create the API socket /run/podflow/podflow.sock: /run/podflow is on a \
             read-only file system (a read-only root filesystem without a writable mount \
             there); mount a writable volume at /run/podflow (the DaemonSet mounts the node's \
             /run/podflow there, a hostPath volume)"
        );
        let denied = socket_dir_error(socket, dir, std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(
            denied,
            PrivilegeError::SocketDirNotWritable { .. }
        ));
        // A writable directory passes, and so does a directory yet to be created under one.
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_socket_dir(&tmp.path().join("podflow.sock")).is_ok());
        assert!(check_socket_dir(&tmp.path().join("a/b/podflow.sock")).is_ok());
        assert!(check_socket_dir(Path::new("podflow.sock")).is_ok());
    }

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_kernel_release("6.1.0-28-cloud-amd64\n"), Some((6, 1)));
        assert_eq!(parse_kernel_release("5.15.0+"), Some((5, 15)));
        assert_eq!(parse_kernel_release("6.6.56+"), Some((6, 6)));
        assert_eq!(parse_kernel_release("5.10"), Some((5, 10)));
        assert_eq!(parse_kernel_release("6.12rc1"), Some((6, 12)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        // Whatever this runs as, the live reading must parse and agree with the status file.
        let p = Privileges::read().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(p.cap_eff, parse_cap_eff(&status).unwrap());
        assert!(!is_bpffs(Path::new("/proc")));
    }
}
