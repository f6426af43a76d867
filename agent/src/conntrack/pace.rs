//! When the run loop reads the events socket: never while the node is quiet, at most every
//! 100 ms while events come.
//!
//! A quiet node (no translated connection) must cost no wake-up, so the loop waits on the socket
//! itself. But a socket registered with the runtime's poller wakes the poller for every datagram
//! the kernel queues (epoll is edge-triggered), even while nobody waits on it: at 5 000 events/s
//! that is up to 5 000 wake-ups/s, which cost more than reading the events. So the pacer switches
//! between the two: on the socket while quiet; once a read finds events, on a timer (the socket
//! deregistered), reading every [`READ_INTERVAL`] until a read finds none; then back on the
//! socket. Registering again reports events queued meanwhile at once (epoll checks readiness when
//! a descriptor is added), so nothing waits for the next flush.
use std::{io, os::fd::OwnedFd, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    time::{Instant, sleep_until},
};

use super::Conntrack;

/// Reads while events come are at least this far apart. At 100 000 new translated connections
/// per second, 100 ms of events is ~3 MB: well within the socket's 16 MiB buffer.
pub const READ_INTERVAL: Duration = Duration::from_millis(100);

/// How the loop learns that events are queued (see the module doc).
#[derive(Debug)]
pub struct EventPacer {
    wait: Wait,
}

#[derive(Debug)]
enum Wait {
    /// Conntrack is not followed: never.
    Never,
    /// Until the socket is readable.
    Socket(AsyncFd<OwnedFd>),
    /// Until then (events came at the last read, or the socket cannot be waited on).
    Timer(Instant),
}

/// What the pacer does next, from what it did and what the read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Never,
    Socket,
    Timer,
}

/// The next way to wait: events found → the timer; none → the socket.
pub fn next(now: Next, received: u64) -> Next {
    match now {
        Next::Never => Next::Never,
        _ if received > 0 => Next::Timer,
        _ => Next::Socket,
    }
}

impl EventPacer {
    /// A pacer for `ct`, on its socket (registered with the calling thread's runtime).
    pub fn new(ct: &Conntrack) -> EventPacer {
        let wait = if ct.active() {
            Self::socket(ct)
        } else {
            Wait::Never
        };
        EventPacer { wait }
    }

    fn socket(ct: &Conntrack) -> Wait {
        match ct.events_ready() {
            Some(Ok(fd)) => Wait::Socket(fd),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "conntrack: cannot wait on the events socket; reading it every 100 ms");
                Wait::Timer(Instant::now() + READ_INTERVAL)
            }
            None => Wait::Never,
        }
    }

    /// Waits until it is time to read (never, when conntrack is not followed).
    pub async fn wait(&self) -> io::Result<()> {
        match &self.wait {
            Wait::Never => std::future::pending().await,
            Wait::Timer(at) => {
                sleep_until(*at).await;
                Ok(())
            }
            Wait::Socket(fd) => {
                // Cleared before the read that follows at once: an event queued after this
                // makes the socket ready again.
                fd.readable().await?.clear_ready();
                Ok(())
            }
        }
    }

    /// Reads the events (`woke` is what [`EventPacer::wait`] returned) and chooses how to wait
    /// next.
    pub fn read(&mut self, ct: &mut Conntrack, woke: io::Result<()>) {
        if let Err(e) = woke {
            tracing::warn!(error = %e, "conntrack: waiting on the events socket failed; reading it on a timer");
            self.wait = Wait::Timer(Instant::now());
        }
        let received = ct.catch_up();
        let now = match self.wait {
            Wait::Never => Next::Never,
            Wait::Socket(_) => Next::Socket,
            Wait::Timer(_) => Next::Timer,
        };
        self.wait = match (now, next(now, received)) {
            (_, Next::Never) => Wait::Never,
            // Dropping the registered socket deregisters it.
            (_, Next::Timer) => Wait::Timer(Instant::now() + READ_INTERVAL),
            (Next::Socket, Next::Socket) => std::mem::replace(&mut self.wait, Wait::Never),
            (_, Next::Socket) => Self::socket(ct),
        };
    }
}

/// Checks in a row that must find conntrack idle before the programs' lookups are switched off.
const IDLE_CHECKS: u32 = 10;

/// When the programs look conntrack up: while conntrack tracks connections in the node's
/// namespace (at once when a check finds it tracking), and until it has tracked nothing for
/// [`IDLE_CHECKS`] checks in a row. A node without conntrack never looks it up. Flows counted
/// while the lookups were off (the first second of traffic on a node that had none) are asked
/// for over ctnetlink ([`super::Conntrack::asks`]).
#[derive(Debug, Default)]
pub struct LookupSwitch {
    /// What the programs were told (`None`: nothing yet).
    told: Option<bool>,
    idle: u32,
}

impl LookupSwitch {
    /// What to tell the programs after a check that found conntrack `tracking`, if anything.
    pub fn next(&mut self, tracking: bool) -> Option<bool> {
        self.idle = if tracking {
            0
        } else {
            self.idle.saturating_add(1)
        };
        let want = tracking || (self.told == Some(true) && self.idle < IDLE_CHECKS);
        (self.told != Some(want)).then(|| {
            self.told = Some(want);
            want
        })
    }

    /// The last change could not be told: try again at the next check.
    pub fn failed(&mut self) {
        self.told = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_follow_conntrack_and_go_off_after_ten_idle_checks() {
        let mut s = LookupSwitch::default();
        assert_eq!(s.next(false), Some(false), "told once at the start: off");
        assert_eq!(s.next(false), None);
        assert_eq!(
            s.next(true),
            Some(true),
            "on at the first check that finds it tracking"
        );
        for _ in 0..IDLE_CHECKS - 1 {
            assert_eq!(s.next(false), None);
        }
        assert_eq!(
            s.next(true),
            None,
            "tracking again before the tenth: stays on"
        );
        for _ in 0..IDLE_CHECKS - 1 {
            assert_eq!(s.next(false), None);
        }
        assert_eq!(s.next(false), Some(false), "the tenth idle check in a row");
        assert_eq!(s.next(false), None);
        let mut t = LookupSwitch::default();
        assert_eq!(
            t.next(true),
            Some(true),
            "on from the start on a node with conntrack"
        );
        t.failed();
        assert_eq!(t.next(true), Some(true), "told again after a failure");
    }

    #[test]
    fn events_move_to_the_timer_and_a_quiet_read_back_to_the_socket() {
        assert_eq!(next(Next::Socket, 0), Next::Socket, "a spurious wake-up");
        assert_eq!(next(Next::Socket, 3), Next::Timer);
        assert_eq!(next(Next::Timer, 500), Next::Timer, "events keep coming");
        assert_eq!(next(Next::Timer, 0), Next::Socket, "quiet again");
        assert_eq!(next(Next::Never, 0), Next::Never);
        assert_eq!(next(Next::Never, 7), Next::Never);
    }
}
