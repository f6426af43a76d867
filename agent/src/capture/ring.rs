//! The rings the veth programs put per-message events in (DNS messages, TCP handshakes): taken
//! out of the object once, read by the agent's loop when the kernel says a ring holds events (at
//! most every 100 ms while events come, never while it is quiet) and before each flush.
use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, OwnedFd},
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use podflow_ebpf::{
    CT_EVENTS, CT_LOST, CtEvent, DNS_EVENTS, DNS_LOST, DnsEvent, TCP_EVENTS, TCP_LOST, TcpEvent,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, sleep_until},
};

use super::{Capture, CaptureError, load::open_map};

/// Reads of a ring while events come are this far apart (the first event after a quiet spell
/// wakes the loop; the read follows this long after, so a busy node costs ten wake-ups a second,
/// not one per event).
const READ_INTERVAL: Duration = Duration::from_millis(100);

/// A ring of `T` (plain `#[repr(C)]` integers and bytes) and its loss count, paced.
pub struct EventRing<T> {
    ring: RingBuf<MapData>,
    lost: Array<MapData, u64>,
    /// The loss count already reported.
    lost_seen: u64,
    ready: Option<AsyncFd<OwnedFd>>,
    read_at: Option<Instant>,
    _t: PhantomData<T>,
}

impl<T> std::fmt::Debug for EventRing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing")
            .field("lost_seen", &self.lost_seen)
            .finish_non_exhaustive()
    }
}

/// Types the rings hold: plain integers and byte arrays, every bit pattern valid.
pub trait RingEvent: Copy {}
impl RingEvent for DnsEvent {}
impl RingEvent for TcpEvent {}
impl RingEvent for CtEvent {}

impl Capture {
    /// The DNS ring, or `None` when the programs do not copy DNS (`dns_port` 0) or it was taken
    /// already. Registered with the calling thread's tokio runtime.
    pub fn dns_events(&mut self) -> Result<Option<EventRing<DnsEvent>>, CaptureError> {
        if self.dns_port == 0 {
            return Ok(None);
        }
        self.ring(DNS_EVENTS, DNS_LOST)
    }

    /// The TCP handshake ring, or `None` when the programs do not time handshakes.
    pub fn handshake_events(&mut self) -> Result<Option<EventRing<TcpEvent>>, CaptureError> {
        if !self.handshakes {
            return Ok(None);
        }
        self.ring(TCP_EVENTS, TCP_LOST)
    }

    /// The ring of translated conntrack entries the programs found, or why there is none (the
    /// kernel has no conntrack kfuncs, conntrack is off, or it was taken already).
    pub fn conntrack_events(&mut self) -> Result<EventRing<CtEvent>, String> {
        self.kernel_conntrack.clone()?;
        match self.ring(CT_EVENTS, CT_LOST) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("the conntrack ring was taken already".into()),
            Err(e) => Err(crate::report::error_chain(&e)),
        }
    }

    fn ring<T>(
        &mut self,
        ring: &'static str,
        lost: &'static str,
    ) -> Result<Option<EventRing<T>>, CaptureError> {
        if self.ebpf.map(ring).is_none() {
            return Ok(None);
        }
        let ring: RingBuf<MapData> = open_map(&mut self.ebpf, ring)?;
        let ready = match ring
            .as_fd()
            .try_clone_to_owned()
            // SAFETY: an `OwnedFd` is open and refers to the same file description until
            // dropped.
            .and_then(|fd| {
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(io::Error::from)
            }) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait on an event ring; reading it at each flush only");
                None
            }
        };
        Ok(Some(EventRing {
            ring,
            lost: open_map(&mut self.ebpf, lost)?,
            lost_seen: 0,
            ready,
            read_at: None,
            _t: PhantomData,
        }))
    }
}

impl<T: RingEvent> EventRing<T> {
    /// Calls `f` with every event queued now, in the order the kernel queued them; returns how
    /// many.
    pub fn read(&mut self, mut f: impl FnMut(&T)) -> u64 {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<T>() {
                // SAFETY: `T` is plain integers and bytes (every bit pattern is valid, see
                // `RingEvent`); the item holds at least its size; an unaligned read.
                let ev = unsafe { item.as_ptr().cast::<T>().read_unaligned() };
                f(&ev);
                n += 1;
            }
        }
        n
    }

    /// Calls `f` with every event queued now; returns how many the ring had no room for since
    /// the last call (logged as `what`'s loss; a failure to read the count is logged, 0).
    pub fn drain(&mut self, what: &str, f: impl FnMut(&T)) -> u64 {
        self.read(f);
        match self.newly_lost() {
            Ok(0) => 0,
            Ok(n) => {
                tracing::warn!(lost = n, "{what}: the kernel's ring was full; events lost");
                n
            }
            Err(e) => {
                tracing::warn!(error = %crate::report::error_chain(&e), "{what}: reading the ring's loss count failed");
                0
            }
        }
    }

    /// Events the ring had no room for since the last call.
    pub fn newly_lost(&mut self) -> Result<u64, CaptureError> {
        let lost = self.lost.get(&0, 0).map_err(|source| CaptureError::Map {
            op: "read an event ring's loss count",
            source,
        })?;
        let new = lost.saturating_sub(self.lost_seen);
        self.lost_seen = lost;
        Ok(new)
    }

    /// Waits until it is time to read: [`READ_INTERVAL`] after the kernel said the ring holds
    /// events (it notifies when the reader had caught up); never while it is quiet. Cancel-safe.
    pub async fn wait(&mut self) {
        loop {
            if let Some(at) = self.read_at {
                sleep_until(at).await;
                self.read_at = None;
                return;
            }
            match &self.ready {
                Some(fd) => {
                    if let Ok(mut guard) = fd.readable().await {
                        guard.clear_ready();
                    }
                    self.read_at = Some(Instant::now() + READ_INTERVAL);
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// What a ring's events go to: a tracker that keeps them for the records of the next flush.
pub trait RingConsumer<T> {
    /// The events' name in log lines.
    const WHAT: &'static str;
    /// One event from the kernel.
    fn push(&mut self, ev: &T);
    /// `n` events the kernel could not queue (the ring was full).
    fn lost(&mut self, n: u64);
}

/// A ring (`None`: the feature is off) and the tracker its events go to, as the agent's loop
/// drives them: wait until it is time to read, read.
#[derive(Debug)]
pub struct RingSource<T, C> {
    events: Option<EventRing<T>>,
    pub tracker: C,
}

impl<T: RingEvent, C: RingConsumer<T>> RingSource<T, C> {
    pub fn new(events: Option<EventRing<T>>, tracker: C) -> RingSource<T, C> {
        RingSource { events, tracker }
    }

    /// Waits until it is time to read the ring ([`EventRing::wait`]); for ever without one.
    /// Cancel-safe.
    pub async fn wait(&mut self) {
        match self.events.as_mut() {
            Some(r) => r.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Moves every queued event into the tracker, and counts what the ring lost.
    pub fn read(&mut self) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        let tracker = &mut self.tracker;
        let n = events.drain(C::WHAT, |ev| tracker.push(ev));
        tracker.lost(n);
    }
}
