//! The conntrack source as the agent runs it: the watcher (when ctnetlink can be used), the
//! table, and what went wrong, counted.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use podflow_ebpf::{CtEvent, CtTuple, FAMILY_IPV4, FlowKey, ipv4_mapped};

use super::{Conn, ConntrackError, ConntrackQuery, ConntrackWatcher, Kind, NatStats, NatTable};
use crate::{capture::EventRing, flows::Translate, report::error_chain, time::monotonic_ns};

/// How often the table is rebuilt from a dump while it holds entries known only from a dump
/// (connections older than the agent, whose end the kernel never announces).
const DUMP_ONLY_RESYNC: Duration = Duration::from_secs(60);

/// Whether and how to read the node's translations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConntrackMode {
    /// The programs look each new flow up in conntrack where the kernel lets them (conntrack
    /// kfuncs, Linux 6.0+ with BTF); else ctnetlink events; without either, say so and go on
    /// with what the wire carries.
    #[default]
    Auto,
    /// As `auto`, but refuse to start without either.
    On,
    /// ctnetlink events only (the programs never look conntrack up).
    Netlink,
    /// Never read conntrack.
    Off,
}

impl ConntrackMode {
    /// Whether the programs should look conntrack up.
    pub fn kernel_lookups(self) -> bool {
        matches!(self, ConntrackMode::Auto | ConntrackMode::On)
    }
}

/// Where the translations come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConntrackSource {
    /// Nowhere (off, or unavailable).
    #[default]
    None,
    /// The programs' lookups.
    Kernel,
    /// ctnetlink events.
    Netlink,
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
    /// How long an entry the programs found still translates records after it was last found
    /// (every drain that holds packets of the connection finds it again).
    pub found_grace_ns: u64,
}

/// Counters of the source, cumulative (the table's and the watcher's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    pub table: NatStats,
    /// Times the kernel dropped events for us: ctnetlink's `ENOBUFS` (it does not say how
    /// many), or one per entry the programs' ring had no room for.
    pub overflows: u64,
    /// Dumps that rebuilt the table (the first one included).
    pub resyncs: u64,
    /// Failed reads or dumps.
    pub errors: u64,
    /// Messages that could not be read.
    pub skipped: u64,
    /// Connections asked for over ctnetlink (the programs could not find them).
    pub asked: u64,
    /// Translated entries the programs found (read from their ring; a connection once per
    /// drain with packets of it).
    pub found: u64,
    /// Neither the programs nor ctnetlink could be used (mode `auto`); nothing is translated.
    pub unavailable: bool,
    pub source: ConntrackSource,
}

/// The node's translations, kept current.
#[derive(Debug)]
pub struct Conntrack {
    watcher: Option<ConntrackWatcher>,
    /// The entries the programs found (mode `auto`/`on` on a kernel with the kfuncs).
    kernel: Option<EventRing<CtEvent>>,
    /// With `kernel`: asks ctnetlink for the connections the programs could not find.
    query: Option<ConntrackQuery>,
    /// Tuples asked for that the kernel did not have translated, and when: not asked again
    /// within the grace period (a flow conntrack does not track would be asked for at every
    /// drain).
    asked: HashMap<FlowKey, u64>,
    grace_ns: u64,
    /// Whether conntrack tracked connections at the last [`Conntrack::check_tracking`].
    tracking: bool,
    table: NatTable,
    stats: ConntrackStats,
    last_resync: Instant,
}

impl Conntrack {
    /// Follows the entries the programs find (`kernel`: their ring, or why there is none) or,
    /// without them, opens the watcher (in the calling thread's network namespace) and loads
    /// the entries that exist already. `Off`, or `Auto` without either: a source that
    /// translates nothing.
    pub fn start(
        cfg: ConntrackConfig,
        kernel: Result<EventRing<CtEvent>, String>,
    ) -> Result<Conntrack, ConntrackError> {
        Self::start_with(cfg, kernel, ConntrackWatcher::open)
    }

    /// [`Conntrack::start`] with the watcher from `open`.
    fn start_with(
        cfg: ConntrackConfig,
        kernel: Result<EventRing<CtEvent>, String>,
        open: impl FnOnce() -> Result<ConntrackWatcher, ConntrackError>,
    ) -> Result<Conntrack, ConntrackError> {
        let mut ct = Conntrack {
            watcher: None,
            kernel: None,
            query: None,
            asked: HashMap::new(),
            grace_ns: cfg.grace_ns,
            tracking: false,
            table: NatTable::new(cfg.max_entries, cfg.grace_ns),
            stats: ConntrackStats::default(),
            last_resync: Instant::now(),
        };
        if cfg.mode == ConntrackMode::Off {
            return Ok(ct);
        }
        if cfg.mode.kernel_lookups() {
            match kernel {
                Ok(ring) => {
                    ct.kernel = Some(ring);
                    ct.table = NatTable::new(cfg.max_entries, cfg.found_grace_ns);
                    match ConntrackQuery::open() {
                        Ok(q) => ct.query = Some(q),
                        Err(e) => tracing::warn!(error = %error_chain(&e),
                            "conntrack: cannot ask ctnetlink; flows the programs did not look up or find are named as the wire carried them"),
                    }
                    ct.stats.source = ConntrackSource::Kernel;
                    tracing::info!(
                        "conntrack: the programs look each new flow up in the node's conntrack"
                    );
                    return Ok(ct);
                }
                Err(why) => tracing::info!(reason = %why,
                    "conntrack: the programs cannot look conntrack up; following ctnetlink events"),
            }
        }
        match open() {
            Ok(w) => {
                ct.watcher = Some(w);
                ct.stats.source = ConntrackSource::Netlink;
            }
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

    /// Whether ctnetlink events are being followed.
    pub fn active(&self) -> bool {
        self.watcher.is_some()
    }

    /// Waits until it is time to read the entries the programs found (for ever when they do
    /// not look conntrack up). Cancel-safe.
    pub async fn wait_found(&mut self) {
        match self.kernel.as_mut() {
            Some(r) => r.wait().await,
            None => std::future::pending().await,
        }
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
        if let Some(ring) = self.kernel.as_mut() {
            let (table, mut found) = (&mut self.table, 0);
            let lost = ring.drain("conntrack", |ev| {
                table.apply_found(&found_conn(ev), now);
                found += 1;
            });
            self.stats.overflows += lost;
            self.stats.found += found;
            self.table.expire(now);
            if !self.asked.is_empty() {
                let grace = self.grace_ns;
                self.asked.retain(|_, at| now.saturating_sub(*at) < grace);
            }
            return found;
        }
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

    /// Checks whether conntrack tracks connections in the calling thread's network namespace
    /// (`nf_conntrack_count` above 0; where nothing is tracked, nothing could be found), when
    /// the programs follow it. Cheap: one small procfs read.
    pub fn check_tracking(&mut self) -> bool {
        self.tracking = self.kernel.is_some()
            && std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0);
        self.tracking
    }

    /// Whether [`Conntrack::ask`] is to be used: the programs follow conntrack, conntrack
    /// tracks connections (at the last [`Conntrack::check_tracking`]), and ctnetlink answers.
    pub fn asks(&self) -> bool {
        self.query.is_some() && self.tracking
    }

    /// Asks ctnetlink for the connections of `keys` (original tuples the programs could not
    /// find, see `FlowTable::unfound`) and adds the translated ones to the table.
    pub fn ask(&mut self, keys: &[FlowKey]) {
        let Some(q) = self.query.as_mut() else {
            return;
        };
        let now = monotonic_ns();
        let grace = self.grace_ns;
        let asked = &mut self.asked;
        let keys: Vec<FlowKey> = keys
            .iter()
            .filter(|k| {
                let fresh = asked
                    .get(*k)
                    .is_none_or(|&at| now.saturating_sub(at) >= grace);
                if fresh {
                    asked.insert(**k, now);
                }
                fresh
            })
            .copied()
            .collect();
        if keys.is_empty() {
            return;
        }
        let (table, asked) = (&mut self.table, &mut self.asked);
        self.stats.asked += keys.len() as u64;
        let res = q.ask(&keys, |c| {
            table.apply_found(c, now);
            // Translated: asked for again once the table forgets it (a flow the cache keeps
            // for whole drains is never looked up by the programs).
            if c.is_nat() {
                asked.remove(&c.orig);
            }
        });
        if let Err(e) = res {
            self.stats.errors += 1;
            tracing::warn!(error = %error_chain(&e), "conntrack: asking for entries failed");
        }
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

/// An entry the programs found, as the table takes it.
fn found_conn(ev: &CtEvent) -> Conn {
    Conn {
        kind: Kind::Present,
        id: 0,
        status: ev.status,
        orig: found_key(&ev.orig),
        reply: found_key(&ev.reply),
    }
}

fn found_key(t: &CtTuple) -> FlowKey {
    let addr = |a: &[u8; 16]| {
        if t.family == FAMILY_IPV4 {
            ipv4_mapped([a[0], a[1], a[2], a[3]])
        } else {
            *a
        }
    };
    FlowKey {
        src_addr: addr(&t.src),
        dst_addr: addr(&t.dst),
        src_port: u16::from_be(t.src_port),
        dst_port: u16::from_be(t.dst_port),
        protocol: t.protocol,
        family: t.family,
        ..FlowKey::default()
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
            found_grace_ns: 1,
        }
    }

    fn no_kfuncs() -> Result<EventRing<CtEvent>, String> {
        Err("no kfuncs".into())
    }

    fn denied() -> Result<ConntrackWatcher, ConntrackError> {
        Err(ConntrackError::Unavailable {
            op: "subscribe to conntrack events",
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        })
    }

    #[test]
    fn an_entry_the_programs_found_as_a_flow_key() {
        let mut ev = CtEvent::default();
        ev.orig.src[..4].copy_from_slice(&[10, 44, 0, 2]);
        ev.orig.dst[..4].copy_from_slice(&[10, 96, 0, 10]);
        ev.orig.src_port = 40000u16.to_be();
        ev.orig.dst_port = 80u16.to_be();
        ev.orig.protocol = podflow_ebpf::IPPROTO_UDP;
        ev.orig.family = FAMILY_IPV4;
        ev.reply = CtTuple {
            src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            family: podflow_ebpf::FAMILY_IPV6,
            src_port: 8080u16.to_be(),
            ..ev.orig
        };
        ev.status = 0x20;
        let c = found_conn(&ev);
        assert!(c.is_nat() && c.kind == Kind::Present);
        assert_eq!(c.orig.src_addr, ipv4_mapped([10, 44, 0, 2]));
        assert_eq!(c.orig.dst_addr, ipv4_mapped([10, 96, 0, 10]));
        assert_eq!((c.orig.src_port, c.orig.dst_port), (40000, 80));
        assert_eq!((c.orig.obs, c.orig.key_flags), (0, 0));
        assert_eq!(c.reply.src_addr, ev.reply.src, "IPv6 as it is");
        assert_eq!(c.reply.src_port, 8080);
    }

    #[test]
    fn without_ctnetlink_auto_goes_on_and_says_so_and_on_refuses() {
        let ct = Conntrack::start_with(cfg(ConntrackMode::Auto), no_kfuncs(), denied)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!ct.active());
        assert!(ct.stats().unavailable);
        assert!(ct.translations().translate(&FlowKey::default()).is_none());
        let err = Conntrack::start_with(cfg(ConntrackMode::On), no_kfuncs(), denied).err();
        assert_eq!(
            err.map(|e| error_chain(&e)),
            Some(
                "ctnetlink unavailable: subscribe to conntrack events: Operation not permitted (os error 1)"
                    .to_owned()
            )
        );
        let off = Conntrack::start_with(cfg(ConntrackMode::Off), no_kfuncs(), || {
            panic!("not opened")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!off.active() && !off.stats().unavailable);
    }
}
