//! The conntrack source as the agent runs it: the watcher (when ctnetlink can be used), the
//! table, and what went wrong, counted.
use std::time::{Duration, Instant};

use super::{ConntrackError, ConntrackWatcher, NatStats, NatTable};
use crate::{flows::Translate, report::error_chain, time::monotonic_ns};

/// How often the table is rebuilt from a dump while it holds entries known only from a dump
/// (connections older than the agent, whose end the kernel never announces).
const DUMP_ONLY_RESYNC: Duration = Duration::from_secs(60);

/// Whether to read the node's translations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConntrackMode {
    /// Use ctnetlink where it works; without it, say so and go on with what the wire carries.
    #[default]
    Auto,
    /// Refuse to start without ctnetlink.
    On,
    /// Never read conntrack.
    Off,
}

/// How the source is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    pub mode: ConntrackMode,
    /// Translated connections kept at most.
    pub max_entries: usize,
    /// How long a destroyed entry still translates records (its last packets may be in the
    /// next drain).
    pub grace_ns: u64,
}

/// Counters of the source, cumulative (the table's and the watcher's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    pub table: NatStats,
    /// Times the kernel dropped events for us (`ENOBUFS`; it does not say how many).
    pub overflows: u64,
    /// Dumps that rebuilt the table (the first one included).
    pub resyncs: u64,
    /// Failed reads or dumps.
    pub errors: u64,
    /// Messages that could not be read.
    pub skipped: u64,
    /// ctnetlink could not be used (mode `auto`); nothing is translated.
    pub unavailable: bool,
}

/// The node's translations, kept current.
#[derive(Debug)]
pub struct Conntrack {
    watcher: Option<ConntrackWatcher>,
    table: NatTable,
    stats: ConntrackStats,
    last_resync: Instant,
}

impl Conntrack {
    /// Opens the watcher (in the calling thread's network namespace) and loads the entries that
    /// exist already. `Off`, or `Auto` without ctnetlink: a source that translates nothing.
    pub fn start(cfg: ConntrackConfig) -> Result<Conntrack, ConntrackError> {
        Self::start_with(cfg, ConntrackWatcher::open)
    }

    /// [`Conntrack::start`] with the watcher from `open`.
    fn start_with(
        cfg: ConntrackConfig,
        open: impl FnOnce() -> Result<ConntrackWatcher, ConntrackError>,
    ) -> Result<Conntrack, ConntrackError> {
        let mut ct = Conntrack {
            watcher: None,
            table: NatTable::new(cfg.max_entries, cfg.grace_ns),
            stats: ConntrackStats::default(),
            last_resync: Instant::now(),
        };
        if cfg.mode == ConntrackMode::Off {
            return Ok(ct);
        }
        match open() {
            Ok(w) => ct.watcher = Some(w),
            Err(e) if cfg.mode == ConntrackMode::Auto => {
                tracing::warn!(error = %error_chain(&e),
                    "conntrack: cannot read the node's address translations; records through Services name the ClusterIP, not the backend");
                ct.stats.unavailable = true;
                return Ok(ct);
            }
            Err(e) => return Err(e),
        }
        ct.resync();
        tracing::info!(
            translated = ct.table.stats().entries,
            "conntrack: following the node's address translations"
        );
        Ok(ct)
    }

    /// Whether events are being followed.
    pub fn active(&self) -> bool {
        self.watcher.is_some()
    }

    /// When events are followed, a descriptor registered with the calling thread's tokio runtime
    /// that becomes readable when events are queued ([`ConntrackWatcher::events_ready`]): waiting
    /// on it, an agent on a node without translations never wakes up for conntrack.
    pub fn events_ready(
        &self,
    ) -> Option<std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>> {
        self.watcher.as_ref().map(ConntrackWatcher::events_ready)
    }

    /// Applies every queued event (and resyncs if some were dropped, or if entries known only
    /// from a dump may have ended), then forgets entries destroyed longer ago than the grace
    /// period. Before a drain is turned into records, this makes the table hold every connection
    /// whose packets the drain counted. Returns how many messages were read.
    pub fn catch_up(&mut self) -> u64 {
        let now = monotonic_ns();
        let Some(w) = self.watcher.as_mut() else {
            return 0;
        };
        let mut received = 0;
        match w.read_events(&mut self.table, now) {
            Ok(out) => {
                received = out.applied + out.skipped;
                self.stats.skipped += out.skipped;
                if out.overflowed {
                    self.stats.overflows += 1;
                    tracing::warn!(
                        "conntrack: the kernel dropped events (socket buffer full); rebuilding from a dump"
                    );
                    self.resync();
                } else if self.last_resync.elapsed() >= DUMP_ONLY_RESYNC
                    && self.table.stats().dump_only > 0
                {
                    self.resync();
                }
            }
            Err(e) => {
                self.stats.errors += 1;
                tracing::warn!(error = %error_chain(&e), "conntrack: reading events failed");
            }
        }
        self.table.expire(now);
        received
    }

    fn resync(&mut self) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        self.last_resync = Instant::now();
        match w.resync(&mut self.table, monotonic_ns()) {
            Ok(_) => self.stats.resyncs += 1,
            Err(e) => {
                self.stats.errors += 1;
                tracing::warn!(error = %error_chain(&e), "conntrack: dump failed; connections older than the events are not translated");
            }
        }
    }

    pub fn stats(&self) -> ConntrackStats {
        ConntrackStats {
            table: self.table.stats(),
            ..self.stats
        }
    }

    /// The translations, for the flow table.
    pub fn translations(&self) -> &dyn Translate {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use podflow_ebpf::FlowKey;

    use super::*;

    fn cfg(mode: ConntrackMode) -> ConntrackConfig {
        ConntrackConfig {
            mode,
            max_entries: 16,
            grace_ns: 1,
        }
    }

    fn denied() -> Result<ConntrackWatcher, ConntrackError> {
        Err(ConntrackError::Unavailable {
            op: "subscribe to conntrack events",
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        })
    }

    #[test]
    fn without_ctnetlink_auto_goes_on_and_says_so_and_on_refuses() {
        let ct = Conntrack::start_with(cfg(ConntrackMode::Auto), denied)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!ct.active());
        assert!(ct.stats().unavailable);
        assert!(ct.translations().translate(&FlowKey::default()).is_none());
        let err = Conntrack::start_with(cfg(ConntrackMode::On), denied).err();
        assert_eq!(
            err.map(|e| error_chain(&e)),
            Some(
                "ctnetlink unavailable: subscribe to conntrack events: Operation not permitted (os error 1)"
                    .to_owned()
            )
        );
        let off = Conntrack::start_with(cfg(ConntrackMode::Off), || panic!("not opened"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!off.active() && !off.stats().unavailable);
    }
}
