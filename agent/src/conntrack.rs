//! The node's address translations (kube-proxy's Service DNAT in iptables, nftables or IPVS mode,
//! masquerade), from netfilter conntrack, so that records name the real ends: the backend pod
//! behind a ClusterIP, the client behind a masquerade.
//!
//! # In the programs (default, Linux 6.0+ with BTF)
//!
//! The tc programs look each flow's connection up with the kernel's `bpf_skb_ct_lookup` kfunc
//! once per flow and drain: when the flow's first piece of the epoch enters the flow map (a
//! flow leaves the per-CPU cache when another takes its slot), by the flow's tuple where it was
//! counted before conntrack (a pod veth's ingress, a tunnel's ingress) and by its reverse where
//! it was counted after (egress: the translated packet's reverse is the entry's reply tuple).
//! By then conntrack has seen the flow's first packet, so even a one-packet flow is found. The
//! entries the node translated go into a ring buffer that user space reads (at most every
//! 100 ms while entries come, and before each drain is turned into records); the flow's value
//! says whether it was found, and untranslated (`CT_PLAIN`: its records skip the translation
//! table). What the programs did not find — flows the cache held for the whole drain (never
//! looked up), a flow whose only packet was met before conntrack saw it — and that leave the
//! node's pods towards an address that is not a pod of the node is asked for over ctnetlink
//! (`IPCTNL_MSG_CT_GET`, batched, each tuple at most once per grace period) before the records
//! are made. The kernel never announces an entry's end here: an entry is kept until two flush
//! intervals after it was last found (every drain holding packets of the connection finds it
//! again). Cost: one lookup per flow and drain in the kernel (a conntrack hash probe: one or two
//! cache misses), one ring entry per translated connection and drain, no syscall per
//! connection; ctnetlink events cost two messages per connection, each built in the packet's
//! softirq for every connection (the socket filter drops the untranslated ones only then) and
//! received with `recvmmsg` (~0.6 µs each in the agent for the translated ones). The lookups
//! are switched off while conntrack tracks nothing in the node's namespace ([`LookupSwitch`]):
//! a node without conntrack costs nothing. The loader links the kfuncs by rewriting placeholder
//! calls ([`crate::capture::kfunc`]).
//!
//! # Over ctnetlink events (`--conntrack netlink`, or a kernel without the kfuncs)
//!
//! The agent subscribes to conntrack's `NEW` and `DESTROY` events (ctnetlink multicast groups)
//! with a classic-BPF socket filter that lets through only entries whose status says the node
//! translated the source or the destination (`IPS_SRC_NAT | IPS_DST_NAT`): untranslated
//! connections cost user space nothing. A `NEW` event is sent when the entry is confirmed, on the
//! first packet's way through the node, in the same softirq (and RCU read-side section) in which
//! the tc program counted that packet. The drain waits for an RCU grace period after flipping the
//! epoch ([`crate::capture`]), so by the time a drain is read, the event of every connection whose
//! packets it holds is in the socket (the programs' ring likewise): reading it empty before
//! turning the drain into records attributes even a one-packet flow (a DNS query). Polling a
//! conntrack dump would miss the connections that come and go between two dumps; looking each
//! record up at flush time would cost a netlink round trip per record and miss entries deleted
//! early.
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
//! ([`pace`]: on the socket while quiet, on a 100 ms timer while events come). Where neither
//! can be used (no permission, no support), the agent says so once, counts it, and records carry
//! what the wire carried.
mod message;
pub mod pace;
mod socket;
mod source;
mod sys;
mod table;

pub use self::{
    message::{Conn, Kind, reversed},
    pace::LookupSwitch,
    socket::{ConntrackQuery, ConntrackWatcher, ReadOutcome},
    source::{Conntrack, ConntrackConfig, ConntrackMode, ConntrackSource, ConntrackStats},
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
