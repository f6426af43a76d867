//! The DNS messages the veth programs copy into their ring (see [`crate::dns`]): taken out of the
//! object once, read by the agent's loop when the kernel says the ring holds some (at most every
//! 100 ms while messages come) and before each flush.
use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::{Array, MapData, RingBuf};
use podflow_ebpf::{DNS_EVENTS, DNS_LOST, DnsEvent};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Capture, CaptureError, load::open_map};

/// The ring of DNS messages and its loss count.
pub struct DnsEvents {
    ring: RingBuf<MapData>,
    lost: Array<MapData, u64>,
    /// The loss count already reported.
    lost_seen: u64,
}

impl std::fmt::Debug for DnsEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsEvents")
            .field("lost_seen", &self.lost_seen)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// The DNS ring, or `None` when the programs do not copy DNS (`dns_port` 0) or it was taken
    /// already.
    pub fn dns_events(&mut self) -> Result<Option<DnsEvents>, CaptureError> {
        if self.dns_port == 0 || self.ebpf.map(DNS_EVENTS).is_none() {
            return Ok(None);
        }
        Ok(Some(DnsEvents {
            ring: open_map(&mut self.ebpf, DNS_EVENTS)?,
            lost: open_map(&mut self.ebpf, DNS_LOST)?,
            lost_seen: 0,
        }))
    }
}

impl DnsEvents {
    /// Calls `f` with every message queued now, in the order the kernel queued them; returns
    /// how many.
    pub fn read(&mut self, mut f: impl FnMut(&DnsEvent)) -> u64 {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<DnsEvent>() {
                // SAFETY: `DnsEvent` is plain integers and bytes (every bit pattern is valid);
                // the item holds at least its size; an unaligned read.
                let ev = unsafe { item.as_ptr().cast::<DnsEvent>().read_unaligned() };
                f(&ev);
                n += 1;
            }
        }
        n
    }

    /// Messages the ring had no room for since the last call.
    pub fn newly_lost(&mut self) -> Result<u64, CaptureError> {
        let lost = self.lost.get(&0, 0).map_err(|source| CaptureError::Map {
            op: "read DNS_LOST",
            source,
        })?;
        let new = lost.saturating_sub(self.lost_seen);
        self.lost_seen = lost;
        Ok(new)
    }

    /// A duplicate of the ring's descriptor registered with the calling thread's tokio runtime:
    /// readable when the kernel queued messages (it notifies when the reader had caught up).
    pub fn ready(&self) -> io::Result<AsyncFd<OwnedFd>> {
        let fd = self.ring.as_fd().try_clone_to_owned()?;
        // SAFETY: an `OwnedFd` is open and refers to the same file description until dropped.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    }
}
