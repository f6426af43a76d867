//! Flows in user space: turn drained kernel entries into flow records, counting each packet once.
//!
//! The kernel counts a packet at every hook it crosses, keyed by the flow's 5-tuple *and* the
//! observation point ([`ObsPoint`]). A packet between two pods on this node crosses the source
//! pod's veth (host-side ingress) and then the destination pod's veth (host-side egress); an
//! inter-node packet through WireGuard crosses a pod veth and the WireGuard device. This module
//! picks, per flow, one *counting point* and uses the other observations only to say which
//! interfaces saw the flow.
//!
//! The counting point is the earliest point on the packet's path that the flow was seen at when it
//! first appeared, in path order [`VethIngress`, `L3Ingress`, `VethEgress`, `L3Egress`], and it is
//! sticky while the flow is tracked. Because the kernel's drain flips the epoch the programs stamp
//! keys with atomically (see `agent-ebpf/src/lib.rs`), a packet's earlier observation is always in the
//! same drain as its later one or in an earlier drain, never a later one: when a flow first
//! appears, its earliest point is present, and a packet that straddles a flip (counted at the
//! source veth in drain k, at the destination veth in drain k+1) is counted once, in drain k.
//!
//! [`VethIngress`]: ObsPoint::VethIngress
//! [`L3Ingress`]: ObsPoint::L3Ingress
//! [`VethEgress`]: ObsPoint::VethEgress
//! [`L3Egress`]: ObsPoint::L3Egress

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{Ipv4Addr, Ipv6Addr},
    ops::Range,
    time::Duration,
};

pub mod enrich;
mod id;
mod observation;
pub mod rules;
mod translate;
mod waiting;

use self::id::addr_key;
pub use self::{
    id::FlowId,
    observation::{Observation, Observed},
    translate::{NoTranslation, Translate, Translated},
    waiting::{Waiting, record_key},
};

use podflow_ebpf::{FAMILY_IPV4, FlowStats, KEY_F_FRAGMENT, ObsPoint};

use crate::{
    hash::{FlowHashState, flow_hash_state},
    proto,
    time::Clock,
};

/// Path order of the observation points: lower is earlier on a packet's path through the node.
const fn path_rank(obs: ObsPoint) -> u8 {
    match obs {
        ObsPoint::VethIngress => 0,
        ObsPoint::L3Ingress => 1,
        ObsPoint::VethEgress => 2,
        ObsPoint::L3Egress => 3,
    }
}

/// Whether a path rank (see [`path_rank`]) is a layer-3 (WireGuard) point.
const fn rank_is_l3(rank: usize) -> bool {
    rank == 1 || rank == 3
}

#[derive(Clone, Debug)]
pub struct FlowTableConfig {
    /// Node name put on every record.
    pub node: String,
    /// A flow not seen for this long is forgotten (its counting point is chosen afresh if it comes
    /// back).
    pub idle_timeout: Duration,
    /// At most this many flows are tracked; beyond, records are still produced but the flow's
    /// counting point is not remembered (counted in [`FlowTable::untracked`]).
    pub max_flows: usize,
    /// The kernel's 1-in-N sampling rate, carried on every record.
    pub sampling_rate: u32,
}

/// A tracked flow. `epoch`/`slot` say where its observations of the drain being ingested are
/// grouped (valid while `epoch` is the table's current one), so that grouping a drain costs one
/// lookup in this table per observation and no second map.
#[derive(Clone, Copy, Debug)]
struct FlowState {
    last_seen_ns: u64,
    epoch: u32,
    slot: u32,
    /// Path rank of the sticky counting point.
    counting: u8,
}

#[derive(Clone, Copy, Debug)]
struct LocalEndpoint {
    ifindex: u32,
    last_seen_ns: u64,
}

/// "No observation at this point" in a [`Group`].
const NONE: u32 = u32::MAX;

/// One flow's observations in the drain being ingested, with what deciding its record needs of
/// them (copied while the observation is in cache: the drain is read in order once, then only
/// the counted observations are read again).
#[derive(Clone, Copy, Debug)]
struct Group {
    /// Index into the drain of the observation at each path rank, or [`NONE`].
    at: [u32; 4],
    /// ifindex of the observation at each path rank.
    ifindex: [u32; 4],
    /// `first_ns` of the observation at the counting point.
    first_ns: u64,
    /// Path rank of the counting point: the sticky one of a flow tracked before this drain, else
    /// (`fresh`) the earliest point seen so far in this drain.
    counting: u8,
    fresh: bool,
    /// The observation at the counting point has packets.
    counted_packets: bool,
    /// More observations of the flow at a point that already had one in this drain (the same
    /// 5-tuple on another interface, see [`Dup`]).
    dups: bool,
}

/// A second (third, ...) observation of a flow at one observation point in one drain: the kernel
/// keys entries by interface too, so a 5-tuple seen at the same point on two interfaces — a pod
/// sending with another pod's source address, say — comes as two entries. Its record adds them
/// up and lists every interface.
#[derive(Clone, Copy, Debug)]
struct Dup {
    group: u32,
    rank: u8,
    /// Index of the observation in the drain.
    index: u32,
}

/// A record to produce, in start-time order, with what it needs of its group (so that making it
/// reads one observation of the drain, not up to four).
#[derive(Clone, Copy, Debug)]
struct Pending {
    first_ns: u64,
    /// Index of the counted observation in the drain.
    counted: u32,
    /// ifindexes of the interfaces that saw the flow: the counting point's first, then the others
    /// in path order; `seen` of them are valid.
    ifindexes: [u32; 4],
    seen: u8,
    /// Seen at a layer-3 (WireGuard) point.
    encrypted: bool,
    /// The group (index into the drain's groups) if it has [`Dup`]s, else [`NONE`].
    dup_group: u32,
}

/// An interface name looked up during a drain, and a number shared by the interfaces of equal
/// names (an interface re-created under the same name) to compare names cheaply.
#[derive(Clone, Debug)]
struct IfName {
    name: String,
    id: u32,
}

/// Clears a scratch vector for reuse, giving memory back when a burst left it much larger than
/// its last use needed.
fn reuse<T>(v: &mut Vec<T>) {
    let used = v.len();
    v.clear();
    if v.capacity() > 4 * used.max(16 * 1024) {
        v.shrink_to(2 * used);
    }
}

/// Aggregation state across drains: which point counts each flow, and which addresses are pods
/// behind this node's veths.
///
/// A drain is ingested in three steps, so that the caller can turn a large drain into records a
/// chunk at a time (bounded memory): [`FlowTable::group`], then [`FlowTable::records`] over
/// ranges of `0..pending`, then [`FlowTable::evict`]. [`FlowTable::ingest`] does all three.
#[derive(Debug)]
pub struct FlowTable {
    cfg: FlowTableConfig,
    flows: HashMap<FlowId, FlowState, FlowHashState>,
    /// Addresses seen leaving a pod veth (source at veth ingress) or entering one (destination at
    /// veth egress): the pods behind this node's veths.
    local: HashMap<u128, LocalEndpoint, FlowHashState>,
    untracked: u64,
    /// Incremented by every [`FlowTable::group`].
    epoch: u32,
    /// `CLOCK_MONOTONIC` of the last eviction scan.
    evicted_ns: u64,
    // Scratch of the drain being ingested, kept across drains (no regrowing).
    groups: Vec<Group>,
    /// Groups of flows that could not be tracked (table full), by flow.
    untracked_groups: HashMap<FlowId, u32, FlowHashState>,
    pending: Vec<Pending>,
    /// The drain's [`Dup`]s, sorted by group.
    dups: Vec<Dup>,
    /// Interface names looked up during this drain.
    names: HashMap<u32, IfName, FlowHashState>,
}

impl FlowTable {
    pub fn new(cfg: FlowTableConfig) -> FlowTable {
        FlowTable {
            cfg,
            flows: HashMap::with_hasher(flow_hash_state()),
            local: HashMap::with_hasher(flow_hash_state()),
            untracked: 0,
            epoch: 0,
            evicted_ns: 0,
            groups: Vec::new(),
            untracked_groups: HashMap::with_hasher(flow_hash_state()),
            pending: Vec::new(),
            dups: Vec::new(),
            names: HashMap::with_hasher(flow_hash_state()),
        }
    }

    /// Flows currently tracked.
    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Records whose flow could not be tracked because the table was full (cumulative).
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Pod addresses currently known to sit behind this node's veths.
    pub fn local_endpoints(&self) -> usize {
        self.local.len()
    }

    /// Forgets the pods learned behind an interface that was removed.
    pub fn forget_interface(&mut self, ifindex: u32) {
        self.local.retain(|_, ep| ep.ifindex != ifindex);
    }

    /// Turns one drain's entries into flow records (one per flow with counted packets, in
    /// start-time order), updates the tracking state and evicts idle flows. `ifname` names an
    /// ifindex.
    pub fn ingest(
        &mut self,
        observations: &[Observation],
        clock: &Clock,
        ifname: &dyn Fn(u32) -> Option<String>,
    ) -> Vec<proto::Flow> {
        self.ingest_translated(observations, clock, ifname, &NoTranslation)
    }

    /// [`FlowTable::ingest`] with the node's translations.
    pub fn ingest_translated(
        &mut self,
        observations: &[Observation],
        clock: &Clock,
        ifname: &dyn Fn(u32) -> Option<String>,
        nat: &dyn Translate,
    ) -> Vec<proto::Flow> {
        let n = self.group(observations);
        let mut records = Vec::with_capacity(n);
        self.records(observations, 0..n, clock, ifname, nat, &mut records);
        self.evict(clock);
        records
    }

    /// Learns that `addr` is a pod behind the veth `ifindex` (seen at `seen_ns`, `CLOCK_MONOTONIC`).
    /// Multicast, broadcast and unspecified addresses are never pods and are ignored.
    pub fn learn_local(&mut self, family: u8, addr: &[u8; 16], ifindex: u32, seen_ns: u64) {
        if !is_unicast(family, addr) {
            return;
        }
        let ep = self.local.entry(addr_key(addr)).or_insert(LocalEndpoint {
            ifindex,
            last_seen_ns: seen_ns,
        });
        ep.ifindex = ifindex;
        ep.last_seen_ns = ep.last_seen_ns.max(seen_ns);
    }

    /// The flows of `entries` the programs did not find in conntrack — flows the per-CPU cache
    /// held for the whole drain (never looked up), a flow whose only packet was met before
    /// conntrack saw it — that `nat` does not translate and that are not between two pods of
    /// this node (which the node does not translate: no ctnetlink round trip per local flow).
    /// Their tuples as conntrack knows them (the reverse of a flow counted after conntrack, at
    /// an egress; observation point and flags cleared), TCP and UDP only, go to `out`.
    pub fn unfound(
        &self,
        entries: &[crate::capture::FlowEntry],
        nat: &dyn Translate,
        out: &mut Vec<podflow_ebpf::FlowKey>,
    ) {
        out.clear();
        for e in entries {
            let k = &e.key;
            if e.stats.ct & podflow_ebpf::CT_FOUND == 0
                && matches!(
                    k.protocol,
                    podflow_ebpf::IPPROTO_TCP | podflow_ebpf::IPPROTO_UDP
                )
                && !(self.local.contains_key(&addr_key(&k.src_addr))
                    && self.local.contains_key(&addr_key(&k.dst_addr)))
                && nat.translate(k).is_none()
            {
                let k = podflow_ebpf::FlowKey {
                    obs: 0,
                    key_flags: 0,
                    ..*k
                };
                let egress = matches!(
                    ObsPoint::from_u8(e.key.obs),
                    Some(ObsPoint::VethEgress | ObsPoint::L3Egress)
                );
                out.push(if egress {
                    crate::conntrack::reversed(&k)
                } else {
                    k
                });
            }
        }
        out.sort_unstable_by(|a, b| {
            (a.src_addr, a.dst_addr, a.src_port, a.dst_port, a.protocol)
                .cmp(&(b.src_addr, b.dst_addr, b.src_port, b.dst_port, b.protocol))
        });
        out.dedup();
    }

    /// Step 1 of ingesting a drain: learns the local pods, groups the observations of each flow,
    /// updates the tracking state and decides which flows get a record. Returns the number of
    /// records the drain makes, to be produced with [`FlowTable::records`] from the same
    /// `observations`.
    pub fn group<O: Observed>(&mut self, observations: &[O]) -> usize {
        self.epoch = self.epoch.wrapping_add(1);
        reuse(&mut self.groups);
        reuse(&mut self.pending);
        self.dups.clear();
        self.untracked_groups.clear();
        self.names.clear();

        // 1. Learn which addresses are pods behind this node's veths.
        for o in observations {
            let key = o.key();
            let addr = match ObsPoint::from_u8(key.obs) {
                Some(ObsPoint::VethIngress) => &key.src_addr,
                Some(ObsPoint::VethEgress) => &key.dst_addr,
                _ => continue,
            };
            self.learn_local(key.family, addr, o.ifindex(), o.last_ns());
        }

        // 2. Group the observations of each flow (one lookup per observation) and keep the
        // tracking state up to date.
        let epoch = self.epoch;
        for (i, o) in observations.iter().enumerate() {
            let Some(point) = ObsPoint::from_u8(o.key().obs) else {
                continue;
            };
            let Ok(index) = u32::try_from(i) else {
                break;
            };
            let rank = path_rank(point);
            let last = o.last_ns();
            let id = FlowId::of(o.key());
            let tracked = self.flows.len();
            let slot = match self.flows.entry(id) {
                Entry::Occupied(e) => {
                    let st = e.into_mut();
                    st.last_seen_ns = st.last_seen_ns.max(last);
                    if st.epoch != epoch {
                        st.epoch = epoch;
                        st.slot = new_group(&mut self.groups, st.counting, false);
                    } else if let Some(g) = self.groups.get(st.slot as usize)
                        && g.fresh
                    {
                        // New in this drain: counted at its earliest point.
                        st.counting = st.counting.min(rank);
                    }
                    st.slot
                }
                Entry::Vacant(e) if tracked < self.cfg.max_flows => {
                    let slot = new_group(&mut self.groups, rank, true);
                    e.insert(FlowState {
                        last_seen_ns: last,
                        epoch,
                        slot,
                        counting: rank,
                    });
                    slot
                }
                Entry::Vacant(_) => match self.untracked_groups.entry(id) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => {
                        self.untracked += 1;
                        *e.insert(new_group(&mut self.groups, rank, true))
                    }
                },
            };
            if let Some(g) = self.groups.get_mut(slot as usize) {
                if g.at[usize::from(rank)] != NONE {
                    g.dups = true;
                    self.dups.push(Dup {
                        group: slot,
                        rank,
                        index,
                    });
                    if g.counting == rank {
                        g.first_ns = g.first_ns.min(o.first_ns());
                        g.counted_packets |= o.packets() != 0;
                    }
                    continue;
                }
                g.at[usize::from(rank)] = index;
                g.ifindex[usize::from(rank)] = o.ifindex();
                if g.fresh {
                    g.counting = g.counting.min(rank);
                }
                if g.counting == rank {
                    g.first_ns = o.first_ns();
                    g.counted_packets = o.packets() != 0;
                }
            }
        }

        // A counting point that moved (fresh flows: to the earliest point seen) may have had
        // duplicates added before it was the counting point.
        self.dups.sort_by_key(|d| d.group);
        for d in &self.dups {
            if let Some(g) = self.groups.get_mut(d.group as usize)
                && g.counting == d.rank
                && let Some(o) = observations.get(d.index as usize)
            {
                g.first_ns = g.first_ns.min(o.first_ns());
                g.counted_packets |= o.packets() != 0;
            }
        }

        // 3. The flows with packets at their counting point make a record, in start-time order.
        // Only later points saw the others in this drain: their packets were counted at the
        // counting point in an earlier drain.
        for (gi, g) in self.groups.iter().enumerate() {
            let counting = usize::from(g.counting);
            let counted = g.at[counting];
            if counted == NONE || !g.counted_packets {
                continue;
            }
            let mut p = Pending {
                first_ns: g.first_ns,
                counted,
                ifindexes: [g.ifindex[counting], 0, 0, 0],
                seen: 1,
                encrypted: false,
                dup_group: if g.dups {
                    u32::try_from(gi).unwrap_or(NONE)
                } else {
                    NONE
                },
            };
            for (rank, &at) in g.at.iter().enumerate() {
                if at == NONE {
                    continue;
                }
                p.encrypted |= rank_is_l3(rank);
                if rank != counting
                    && let Some(slot) = p.ifindexes.get_mut(usize::from(p.seen))
                {
                    *slot = g.ifindex[rank];
                    p.seen += 1;
                }
            }
            self.pending.push(p);
        }
        // Unstable is enough: flows of equal start came in the kernel map's hash order anyway.
        self.pending.sort_unstable_by_key(|p| p.first_ns);
        self.pending.len()
    }

    /// Step 2: appends to `out` the records `range` (of `0..n`, `n` from [`FlowTable::group`]
    /// with the same `observations`). `ifname` names an ifindex.
    pub fn records<O: Observed>(
        &mut self,
        observations: &[O],
        range: Range<usize>,
        clock: &Clock,
        ifname: &dyn Fn(u32) -> Option<String>,
        nat: &dyn Translate,
        out: &mut Vec<proto::Flow>,
    ) {
        let Some(pending) = self.pending.get(range) else {
            return;
        };
        out.reserve(pending.len());
        for p in pending {
            let Some(counted) = observations.get(p.counted as usize) else {
                continue;
            };
            if p.dup_group == NONE {
                out.push(record(
                    &self.cfg,
                    &self.local,
                    &mut self.names,
                    counted,
                    p,
                    &[],
                    clock,
                    ifname,
                    nat,
                ));
                continue;
            }
            // Add up the entries at the counting point; list every interface.
            let counting = self
                .groups
                .get(p.dup_group as usize)
                .map_or(u8::MAX, |g| g.counting);
            let from = self.dups.partition_point(|d| d.group < p.dup_group);
            let mut merged = Observation {
                key: *counted.key(),
                stats: FlowStats {
                    packets: counted.packets(),
                    bytes: counted.bytes(),
                    first_ns: counted.first_ns(),
                    last_ns: counted.last_ns(),
                    ifindex: counted.ifindex(),
                    tcp_flags: counted.tcp_flags(),
                    ct: counted.ct(),
                    _pad: [0; 2],
                },
            };
            let mut extra = Vec::new();
            for d in self.dups[from..]
                .iter()
                .take_while(|d| d.group == p.dup_group)
            {
                let Some(o) = observations.get(d.index as usize) else {
                    continue;
                };
                extra.push(o.ifindex());
                if d.rank == counting {
                    let m = &mut merged.stats;
                    m.packets += o.packets();
                    m.bytes += o.bytes();
                    m.first_ns = m.first_ns.min(o.first_ns());
                    m.last_ns = m.last_ns.max(o.last_ns());
                    m.tcp_flags |= o.tcp_flags();
                    m.ct |= o.ct();
                }
            }
            out.push(record(
                &self.cfg,
                &self.local,
                &mut self.names,
                &merged,
                p,
                &extra,
                clock,
                ifname,
                nat,
            ));
        }
    }

    /// Step 3: evicts idle flows and stale endpoints. The tables are scanned at most every
    /// eighth of the idle timeout (a flow is forgotten between 1 and 1⅛ idle timeouts after it was
    /// last seen): scanning 600 000 flows every flush was 3 % of the agent's CPU at 100 000 new
    /// flows/s. Forgetting later is always safe for counting (see the module docs).
    pub fn evict(&mut self, clock: &Clock) {
        let timeout_ns = u64::try_from(self.cfg.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        if clock.mono_now_ns.saturating_sub(self.evicted_ns) < timeout_ns / 8 {
            return;
        }
        self.evicted_ns = clock.mono_now_ns;
        let horizon = clock.mono_now_ns.saturating_sub(timeout_ns);
        self.flows.retain(|_, st| st.last_seen_ns >= horizon);
        self.local.retain(|_, ep| ep.last_seen_ns >= horizon);
        // After a burst, give the table's memory back (the map never shrinks by itself).
        if self.flows.capacity() > 4 * self.flows.len().max(16 * 1024) {
            self.flows.shrink_to(2 * self.flows.len());
        }
    }
}

/// Appends a group for a flow and returns its index.
fn new_group(groups: &mut Vec<Group>, counting: u8, fresh: bool) -> u32 {
    let slot = u32::try_from(groups.len()).unwrap_or(NONE);
    groups.push(Group {
        at: [NONE; 4],
        ifindex: [0; 4],
        first_ns: 0,
        counting,
        fresh,
        counted_packets: false,
        dups: false,
    });
    slot
}

/// The name of an interface, looked up once per drain.
fn ifname_cached<'a>(
    names: &'a mut HashMap<u32, IfName, FlowHashState>,
    ifname: &dyn Fn(u32) -> Option<String>,
    ifindex: u32,
) -> &'a IfName {
    if !names.contains_key(&ifindex) {
        let name = ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
        let id = names
            .values()
            .find(|n| n.name == name)
            .map_or(u32::try_from(names.len()).unwrap_or(u32::MAX), |n| n.id);
        names.insert(ifindex, IfName { name, id });
    }
    // Inserted just above if it was missing.
    names.entry(ifindex).or_insert_with(|| IfName {
        name: format!("if{ifindex}"),
        id: u32::MAX,
    })
}

/// The record of a flow: `counted` is its observation at the counting point (duplicates at that
/// point already added in), `extra` the ifindexes of its [`Dup`]s.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per kind of pending record"
)]
fn record<O: Observed>(
    cfg: &FlowTableConfig,
    local: &HashMap<u128, LocalEndpoint, FlowHashState>,
    names: &mut HashMap<u32, IfName, FlowHashState>,
    counted: &O,
    p: &Pending,
    extra: &[u32],
    clock: &Clock,
    ifname: &dyn Fn(u32) -> Option<String>,
    nat: &dyn Translate,
) -> proto::Flow {
    // The counting point's interface first, then the others in path order, each name once.
    let mut interfaces = Vec::with_capacity(usize::from(p.seen) + extra.len());
    let mut ids = [u32::MAX; 4];
    for (i, &ifindex) in p.ifindexes.iter().take(usize::from(p.seen)).enumerate() {
        let n = ifname_cached(names, ifname, ifindex);
        if !ids[..i].contains(&n.id) {
            interfaces.push(n.name.clone());
        }
        ids[i] = n.id;
    }
    for &ifindex in extra {
        let n = ifname_cached(names, ifname, ifindex);
        if !interfaces.contains(&n.name) {
            interfaces.push(n.name.clone());
        }
    }
    // The real ends of a flow the node translated (a Service's backend, a masqueraded client);
    // not looked for when the programs found its connection untranslated.
    let translated = if counted.ct() & podflow_ebpf::CT_PLAIN != 0 {
        None
    } else {
        nat.translate(counted.key())
    };
    let key = translated.as_ref().map_or(counted.key(), |t| &t.key);
    // Counted where it entered from a pod: a packet to a pod of this node also left through that
    // pod's veth, whose egress program (seeing it counted upstream) did not count it again.
    if key.obs == ObsPoint::VethIngress as u8
        && let Some(ep) = local.get(&addr_key(&key.dst_addr))
        && !p
            .ifindexes
            .iter()
            .take(usize::from(p.seen))
            .any(|&i| i == ep.ifindex)
    {
        let n = ifname_cached(names, ifname, ep.ifindex);
        if !interfaces.contains(&n.name) {
            interfaces.push(n.name.clone());
        }
    }
    let encrypted = p.encrypted;
    let same_node = local.contains_key(&addr_key(&key.src_addr))
        && local.contains_key(&addr_key(&key.dst_addr));
    let (first_ns, last_ns) = (counted.first_ns(), counted.last_ns());
    proto::Flow {
        start_time: Some(clock.to_timestamp(first_ns)),
        end_time: Some(clock.to_timestamp(last_ns.max(first_ns))),
        src_ip: ip_bytes(key.family, &key.src_addr),
        dst_ip: ip_bytes(key.family, &key.dst_addr),
        src_port: u32::from(key.src_port),
        dst_port: u32::from(key.dst_port),
        protocol: u32::from(key.protocol),
        packets: counted.packets(),
        bytes: counted.bytes(),
        tcp_flags: u32::from(counted.tcp_flags()),
        interfaces,
        same_node,
        sampling_rate: cfg.sampling_rate.max(1),
        fragment: key.key_flags & KEY_F_FRAGMENT != 0,
        node: cfg.node.clone(),
        encrypted,
        // Set by enrichment, which knows where the endpoints live.
        inter_node: false,
        src: None,
        dst: None,
        metadata_age: None,
        plaintext_inter_node: false,
        translation: translated.map(|t| t.to_proto()),
        // Where the counted packets were observed, whatever the translation made of the ends
        // (a reply is reported by the side it was counted on, like any record); enrichment
        // refines it from the endpoints' home nodes.
        reporter: reporter(counted.key().obs).to_string(),
        // Attached at the flush, from the DNS ring (see `dns`).
        dns: Vec::new(),
        tcp_handshake: None,
        // Attached at the flush, from the kernel's drops (see `drops`).
        dropped_packets: 0,
        dropped_bytes: 0,
        drop_reason: String::new(),
        dropped_in_node: false,
        tcp_srtt: None,
    }
}

/// The side of the flow an observation point is on ([`rules::SRC`] or [`rules::DEST`]): where
/// the packets leave a pod of this node or leave the node through WireGuard, this node is the
/// source's side; where they enter a pod of this node or come out of WireGuard, the destination's.
fn reporter(obs: u8) -> &'static str {
    match ObsPoint::from_u8(obs) {
        Some(ObsPoint::VethIngress | ObsPoint::L3Egress) => rules::SRC,
        Some(ObsPoint::VethEgress | ObsPoint::L3Ingress) => rules::DEST,
        // Not a point the kernel side stamps; the destination's side counts unless the source's
        // side is known to have reported (see rules::counted_once).
        None => rules::DEST,
    }
}

/// Whether an address (as stored in the kernel key) can belong to one endpoint.
fn is_unicast(family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_IPV4 {
        let a = Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]);
        !(a.is_multicast() || a.is_broadcast() || a.is_unspecified())
    } else {
        let a = Ipv6Addr::from(*addr);
        !(a.is_multicast() || a.is_unspecified())
    }
}

/// The wire form of an address: 4 bytes for IPv4 (stored IPv4-mapped in the kernel key), 16 for
/// IPv6.
pub fn ip_bytes(family: u8, addr: &[u8; 16]) -> Vec<u8> {
    if family == FAMILY_IPV4 {
        addr[12..].to_vec()
    } else {
        addr.to_vec()
    }
}

#[cfg(test)]
mod tests;
