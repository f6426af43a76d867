//! One agent per network namespace: an agent holds the abstract unix socket `@podflow-agent`,
//! which is per network namespace and released by the kernel when the process ends, however it
//! ends. A second agent (a second DaemonSet, an agent started by hand on a node) would count every
//! packet a second time and take the first one's filters for stale ones: it waits briefly for the
//! holder to exit (a restart that overlaps), then refuses to start, naming the holder's pid.
use std::{
    io,
    os::{
        fd::AsRawFd as _,
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    time::{Duration, Instant},
};

const NAME: &[u8] = b"podflow-agent";

/// Held while the agent runs.
#[derive(Debug)]
pub(super) struct NamespaceLock {
    _listener: UnixListener,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another podflow agent (pid {pid}) runs in this network namespace; one agent per node \
         (a second one would count every packet twice)"
    )]
    Held { pid: i32 },
    #[error("taking the agent lock (@podflow-agent) failed")]
    Io {
        #[source]
        source: io::Error,
    },
}

/// Takes the lock, waiting up to `wait` for a holder to exit.
pub(super) fn acquire(wait: Duration) -> Result<NamespaceLock, LockError> {
    let addr = SocketAddr::from_abstract_name(NAME).map_err(|source| LockError::Io { source })?;
    let start = Instant::now();
    let mut logged = false;
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => {
                return Ok(NamespaceLock {
                    _listener: listener,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let pid = holder_pid(&addr).unwrap_or(0);
                if start.elapsed() >= wait {
                    return Err(LockError::Held { pid });
                }
                if !logged {
                    tracing::info!(
                        pid,
                        "another podflow agent runs here; waiting for it to exit"
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => return Err(LockError::Io { source }),
        }
    }
}

/// The pid of the lock's holder (`SO_PEERCRED` of a connection to it).
fn holder_pid(addr: &SocketAddr) -> Option<i32> {
    let stream = UnixStream::connect_addr(addr).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live and sized for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::from_mut(&mut cred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        // Its own network namespace is not needed: the name is unique to this test binary run
        // only if no agent runs here, so skip when the lock is taken.
        let Ok(first) = acquire(Duration::ZERO) else {
            return;
        };
        match acquire(Duration::from_millis(300)) {
            Err(LockError::Held { pid }) => assert_eq!(pid, std::process::id() as i32),
            other => panic!("{other:?}"),
        }
        drop(first);
        assert!(acquire(Duration::ZERO).is_ok());
    }
}
