//! The node's address translations (kube-proxy's Service DNAT in iptables, nftables or IPVS mode,
//! masquerade), from netfilter conntrack over ctnetlink, so that records name the real ends: the
//! backend pod behind a ClusterIP, the client behind a masquerade.
//!
//! # Why events, and why it is exact for short flows
//!
//! The agent subscribes to conntrack's `NEW` and `DESTROY` events (ctnetlink multicast groups)
//! with a classic-BPF socket filter that lets through only entries whose status says the node
//! translated the source or the destination (`IPS_SRC_NAT | IPS_DST_NAT`): untranslated
//! connections cost user space nothing. A `NEW` event is sent when the entry is confirmed, on the
//! first packet's way through the node, in the same softirq (and RCU read-side section) in which
//! the tc program counted that packet. The drain waits for an RCU grace period after flipping the
//! epoch ([`crate::capture`]), so by the time a drain is read, the event of every connection whose
//! packets it holds is in the socket: reading the socket empty before turning the drain into
//! records attributes even a one-packet flow (a DNS query). Polling a conntrack dump would miss
//! the connections that come and go between two dumps; looking each record up at flush time
//! would cost a netlink round trip per record and miss entries deleted early.
//!
//! Destroyed entries are kept for a grace period (their last packets may be in the next drain).
//! At start (the connections that existed before the agent) and whenever the kernel reports that
//! events were dropped (`ENOBUFS`: the socket's buffer overflowed), a dump rebuilds the table
//! ([`NatTable::begin_resync`]); the drops are counted. The kernel gives event state only to
//! entries created while someone listens, so a connection older than the agent never announces
//! its end: while the table holds such dump-only entries, it is rebuilt from a dump every minute.
//!
//! Where the node has no conntrack (no NAT rules in its namespace) nothing is announced and the
//! table stays empty: lookups return at once, and the agent never wakes up for conntrack
//! ([`pace`]: on the socket while quiet, on a 100 ms timer while events come). Where ctnetlink cannot be used (no permission, no
//! support), the agent says so once, counts it, and records carry what the wire carried.
mod message;
pub mod pace;
mod socket;
mod source;
mod sys;
mod table;

pub use self::{
    message::{Conn, Kind},
    socket::{ConntrackWatcher, ReadOutcome},
    source::{Conntrack, ConntrackConfig, ConntrackMode, ConntrackStats},
    table::{NatStats, NatTable},
};

/// Errors of the conntrack source.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The ctnetlink socket could not be opened, bound or subscribed (no `CAP_NET_ADMIN`, no
    /// ctnetlink in the kernel, ...).
    #[error("ctnetlink unavailable: {op}")]
    Unavailable {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading events or a dump failed.
    #[error("reading conntrack failed: {op}")]
    Read {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}
