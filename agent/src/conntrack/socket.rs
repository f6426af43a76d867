//! The ctnetlink sockets: one subscribed to translated entries' `NEW` and `DESTROY` events, read
//! without blocking; one for dumps, opened when a dump is needed; one for asking for single
//! entries ([`ConntrackQuery`]).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use netlink_sys::Socket;
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    ConntrackError, NatTable,
    message::{
        Conn, Message, NETLINK_NETFILTER, NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW,
        answers, dump_request, get_request, messages,
    },
    sys,
};

/// The events socket's receive buffer: ~50 000 events of ~300 bytes, what a 10 000-connection/s
/// node announces while a large flush keeps the loop busy.
const EVENT_BUFFER_BYTES: usize = 16 << 20;
/// One dump datagram: a dump sends up to ~32 KiB per datagram.
const RECV_BUF: usize = 64 << 10;
/// A dump that takes longer than this is abandoned (counted as a failed resync).
const DUMP_TIMEOUT: Duration = Duration::from_secs(30);

/// What reading the events socket found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Messages applied to the table.
    pub applied: u64,
    /// Messages that could not be read (malformed, unexpected).
    pub skipped: u64,
    /// The kernel dropped events (`ENOBUFS`): the table needs a resync.
    pub overflowed: bool,
}

/// The subscription to the node's translated conntrack entries.
#[derive(Debug)]
pub struct ConntrackWatcher {
    /// Non-blocking: read when the agent catches up (when events are queued, at most every
    /// 100 ms, and before each flush).
    events: Socket,
    /// Room for one batch of event datagrams.
    buf: Vec<u8>,
    seq: u32,
}

impl ConntrackWatcher {
    /// Opens and subscribes the events socket in the calling thread's network namespace. Call
    /// [`ConntrackWatcher::resync`] next, for the entries that exist already.
    pub fn open() -> Result<ConntrackWatcher, ConntrackError> {
        let unavailable = |op| move |source| ConntrackError::Unavailable { op, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(unavailable("socket"))?;
        sock.bind_auto().map_err(unavailable("bind"))?;
        // The filter first, so that no untranslated event is ever queued.
        sys::attach_filter(sock.as_raw_fd(), &sys::nat_filter())
            .map_err(unavailable("attach the socket filter"))?;
        for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
            sock.add_membership(group)
                .map_err(unavailable("subscribe to conntrack events"))?;
        }
        if let Err(e) = sys::force_rcvbuf(sock.as_raw_fd(), EVENT_BUFFER_BYTES) {
            tracing::warn!(error = %e, "conntrack: keeping the default socket buffer; bursts of new connections may overflow it (counted)");
        }
        sock.set_non_blocking(true)
            .map_err(unavailable("set non-blocking"))?;
        Ok(ConntrackWatcher {
            events: sock,
            buf: vec![0; sys::BATCH * sys::DATAGRAM],
            seq: 0,
        })
    }

    /// A duplicate of the events socket registered with the tokio runtime of the calling
    /// thread, to wait on for queued events (it becomes readable when the kernel queues one)
    /// without borrowing the watcher.
    pub fn events_ready(&self) -> io::Result<AsyncFd<OwnedFd>> {
        let fd = self.events.as_fd().try_clone_to_owned()?;
        // SAFETY: an `OwnedFd` is open and refers to the same file description until dropped.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    }

    /// Applies every event queued now to `table` (at `now_ns`), without blocking.
    pub fn read_events(
        &mut self,
        table: &mut NatTable,
        now_ns: u64,
    ) -> Result<ReadOutcome, ConntrackError> {
        let mut out = ReadOutcome::default();
        let mut lens = [0usize; sys::BATCH];
        loop {
            let n = match sys::recv_batch(self.events.as_raw_fd(), &mut self.buf, &mut lens) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The kernel dropped events for us; the socket stays usable.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.overflowed = true;
                    continue;
                }
                Err(source) => {
                    return Err(ConntrackError::Read {
                        op: "receive events",
                        source,
                    });
                }
            };
            for (datagram, &len) in self.buf.chunks_exact(sys::DATAGRAM).zip(&lens).take(n) {
                for m in messages(&datagram[..len.min(sys::DATAGRAM)]) {
                    match m {
                        Message::Conn(c) => {
                            table.apply(&c, now_ns);
                            out.applied += 1;
                        }
                        Message::Skipped(_) | Message::Error(_) | Message::Done => {
                            out.skipped += 1;
                        }
                    }
                }
            }
            if n < sys::BATCH {
                return Ok(out);
            }
        }
    }

    /// Rebuilds `table` from a dump of the kernel's entries (at start, and after events were
    /// dropped): entries the dump lacks were destroyed meanwhile. Returns the entries listed.
    pub fn resync(&mut self, table: &mut NatTable, now_ns: u64) -> Result<u64, ConntrackError> {
        let unavailable = |op| move |source| ConntrackError::Unavailable { op, source };
        let read = |op| move |source| ConntrackError::Read { op, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(unavailable("socket"))?;
        sock.bind_auto().map_err(unavailable("bind"))?;
        sys::recv_timeout(sock.as_raw_fd(), Duration::from_secs(5))
            .map_err(unavailable("set a receive timeout"))?;
        self.seq = self.seq.wrapping_add(1);
        sock.send(&dump_request(self.seq), 0)
            .map_err(read("request a dump"))?;
        table.begin_resync();
        let deadline = Instant::now() + DUMP_TIMEOUT;
        let mut listed = 0;
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            if Instant::now() > deadline {
                return Err(ConntrackError::Read {
                    op: "dump",
                    source: io::Error::new(io::ErrorKind::TimedOut, "the dump took over 30 s"),
                });
            }
            buf.clear();
            sock.recv(&mut buf, 0).map_err(read("receive the dump"))?;
            for m in messages(&buf) {
                match m {
                    Message::Conn(c) => {
                        table.apply_listed(&c);
                        listed += 1;
                    }
                    Message::Done => {
                        table.end_resync(now_ns);
                        return Ok(listed);
                    }
                    Message::Error(errno) if errno != 0 => {
                        return Err(ConntrackError::Read {
                            op: "dump",
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    Message::Error(_) | Message::Skipped(_) => {}
                }
            }
        }
    }
}

/// Requests sent in one datagram, and answers awaited before the next.
const QUERY_BATCH: usize = 64;
/// An answer that takes longer than this ends the query (counted as an error).
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks the kernel for single entries by their original tuple (`IPCTNL_MSG_CT_GET`).
#[derive(Debug)]
pub struct ConntrackQuery {
    sock: Socket,
    seq: u32,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl ConntrackQuery {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<ConntrackQuery, ConntrackError> {
        let unavailable = |op| move |source| ConntrackError::Unavailable { op, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(unavailable("socket"))?;
        sock.bind_auto().map_err(unavailable("bind"))?;
        sys::recv_timeout(sock.as_raw_fd(), QUERY_TIMEOUT)
            .map_err(unavailable("set a receive timeout"))?;
        Ok(ConntrackQuery {
            sock,
            seq: 0,
            out: Vec::with_capacity(QUERY_BATCH * 96),
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Asks for the entry of each of `keys` (original tuples, TCP or UDP) and calls `found`
    /// with each the kernel has. Returns how many it had.
    pub fn ask(
        &mut self,
        keys: &[podflow_ebpf::FlowKey],
        mut found: impl FnMut(&Conn),
    ) -> Result<u64, ConntrackError> {
        let read = |op| move |source| ConntrackError::Read { op, source };
        let mut had = 0;
        for batch in keys.chunks(QUERY_BATCH) {
            self.out.clear();
            let first = self.seq.wrapping_add(1);
            for k in batch {
                self.seq = self.seq.wrapping_add(1);
                get_request(&mut self.out, self.seq, k);
            }
            self.sock
                .send(&self.out, 0)
                .map_err(read("ask for conntrack entries"))?;
            // One answer per request: the entry, or an error (ENOENT: none).
            let mut answered = 0;
            while answered < batch.len() {
                self.buf.clear();
                self.sock
                    .recv(&mut self.buf, 0)
                    .map_err(read("receive conntrack entries"))?;
                for (seq, m) in answers(&self.buf) {
                    if seq.wrapping_sub(first) >= batch.len() as u32 {
                        continue; // an answer to an abandoned query
                    }
                    answered += 1;
                    if let Message::Conn(c) = m {
                        found(&c);
                        had += 1;
                    }
                }
            }
        }
        Ok(had)
    }
}
