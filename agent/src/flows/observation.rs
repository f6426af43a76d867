//! What the flow table reads of a drained kernel entry.
use podflow_ebpf::{FlowKey, FlowStats};

/// One drained kernel entry: a flow seen at one observation point, merged over CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub key: FlowKey,
    pub stats: FlowStats,
}

/// What the flow table reads of a drained entry. Implemented for [`Observation`] and for the
/// capture module's `FlowEntry`, so that a drain is ingested in place, without a copy; only the
/// user-facing field names of the stats are relied on.
pub trait Observed {
    fn key(&self) -> &FlowKey;
    fn packets(&self) -> u64;
    fn bytes(&self) -> u64;
    /// `CLOCK_MONOTONIC` nanoseconds of the first and last packet.
    fn first_ns(&self) -> u64;
    fn last_ns(&self) -> u64;
    fn ifindex(&self) -> u32;
    fn tcp_flags(&self) -> u8;
    /// The programs' conntrack bits (`podflow_ebpf::CT_PLAIN`, `CT_MISSING`).
    fn ct(&self) -> u8;
}

macro_rules! impl_observed {
    ($t:ty) => {
        impl Observed for $t {
            fn key(&self) -> &FlowKey {
                &self.key
            }
            fn packets(&self) -> u64 {
                self.stats.packets
            }
            fn bytes(&self) -> u64 {
                self.stats.bytes
            }
            fn first_ns(&self) -> u64 {
                self.stats.first_ns
            }
            fn last_ns(&self) -> u64 {
                self.stats.last_ns
            }
            fn ifindex(&self) -> u32 {
                self.stats.ifindex
            }
            fn tcp_flags(&self) -> u8 {
                self.stats.tcp_flags
            }
            fn ct(&self) -> u8 {
                self.stats.ct
            }
        }
    };
}
impl_observed!(Observation);
impl_observed!(crate::capture::FlowEntry);
