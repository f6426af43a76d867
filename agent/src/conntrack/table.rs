//! The translations the node's conntrack holds, by the tuples a record can carry, kept as the
//! kernel announces entries and a little while after it destroys them.
use std::collections::{HashMap, VecDeque};

use podflow_ebpf::{FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6};

use super::message::{Conn, IPS_DST_NAT, IPS_SRC_NAT, Kind, icmp_reply_type, reversed};
use crate::{
    flows::{FlowId, Translate, Translated},
    hash::{FlowHashState, flow_hash_state},
};

/// Counters of the table, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Translated entries announced (events and dumps).
    pub added: u64,
    /// Destroy events of known entries.
    pub destroyed: u64,
    /// Entries not kept because the table was full of live entries (their flows go
    /// untranslated).
    pub table_full: u64,
    /// Live entries now.
    pub entries: u64,
    /// Live entries known only from a dump (their end is seen only by a later dump).
    pub dump_only: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    orig: FlowKey,
    reply: FlowKey,
    status: u32,
    id: u32,
    /// `CLOCK_MONOTONIC` ns of the destroy event: kept for the grace period after it.
    ended_ns: Option<u64>,
    /// The resync generation that last saw the entry.
    generation: u32,
    /// Known from a dump only. The kernel sends events only for entries created while someone
    /// listened: one that existed before the agent subscribed will never announce its end, so
    /// only a later dump can tell it is gone.
    dump_only: bool,
}

impl Entry {
    /// The keys of the four tuples a record of the connection can be counted under: the request
    /// before the node translated it (at the client's veth) and the reply after the reverse
    /// translation (at the client's veth) share the first; the reply before the reverse
    /// translation (at the backend's veth) and the request after the translation (at the
    /// backend's veth: a client from outside the node) the second. Two hash entries per
    /// connection, not four: inserting and removing them was most of the cost of following
    /// conntrack.
    fn views(&self) -> [FlowId; 2] {
        [pair_id(&self.orig), pair_id(&self.reply)]
    }

    /// Whether `observed`, one of the four tuples, is of the reply direction.
    fn is_reply(&self, observed: &FlowKey) -> bool {
        !(same_tuple(observed, &self.orig) || same_tuple(observed, &reversed(&self.reply)))
    }
}

/// The key of a tuple and its reverse (the packets of both directions of one leg of a
/// connection): the two ends in a fixed order; ICMP with the query's type for the answer's.
fn pair_id(k: &FlowKey) -> FlowId {
    let mut c = normal(k);
    if matches!(k.protocol, IPPROTO_ICMP | IPPROTO_ICMPV6) {
        c.src_port = c.src_port.min(icmp_reply_type(k.protocol, c.src_port));
        if c.src_addr > c.dst_addr {
            (c.src_addr, c.dst_addr) = (c.dst_addr, c.src_addr);
        }
    } else if (c.src_addr, c.src_port) > (c.dst_addr, c.dst_port) {
        (c.src_addr, c.dst_addr) = (c.dst_addr, c.src_addr);
        (c.src_port, c.dst_port) = (c.dst_port, c.src_port);
    }
    FlowId::of(&c)
}

/// The same ends, ports and protocol (the observation point and flags aside).
fn same_tuple(a: &FlowKey, b: &FlowKey) -> bool {
    (a.src_addr, a.dst_addr, a.src_port, a.dst_port, a.protocol)
        == (b.src_addr, b.dst_addr, b.src_port, b.dst_port, b.protocol)
}

/// The node's translated conntrack entries, found by any of the four tuples a record can carry
/// with one hash probe (most records of a node are not translated: one probe, a miss).
#[derive(Debug)]
pub struct NatTable {
    /// The entries; `None` in free slots.
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// [`Entry::views`] → slot.
    views: HashMap<FlowId, u32, FlowHashState>,
    /// Destroyed entries in destroy order: (when, slot, entry id).
    ended: VecDeque<(u64, u32, u32)>,
    max_entries: usize,
    grace_ns: u64,
    generation: u32,
    /// Live entries known only from a dump.
    dump_only_live: u64,
    /// The id of the last entry found by the programs (they have no kernel id; never 0).
    found_id: u32,
    stats: NatStats,
}

impl NatTable {
    /// A table of at most `max_entries` translated connections, keeping destroyed ones for
    /// `grace_ns` (their last packets may still be in a drain that has not run yet).
    pub fn new(max_entries: usize, grace_ns: u64) -> NatTable {
        NatTable {
            slots: Vec::new(),
            free: Vec::new(),
            views: HashMap::with_hasher(flow_hash_state()),
            ended: VecDeque::new(),
            max_entries: max_entries.max(1),
            grace_ns,
            generation: 0,
            dump_only_live: 0,
            found_id: 0,
            stats: NatStats::default(),
        }
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn stats(&self) -> NatStats {
        NatStats {
            entries: self.len() as u64,
            dump_only: self.dump_only_live,
            ..self.stats
        }
    }

    /// The slot of the entry whose original tuple is `orig`.
    fn slot_of(&self, orig: &FlowKey) -> Option<u32> {
        self.views
            .get(&pair_id(orig))
            .copied()
            .filter(|&slot| self.entry(slot).is_some_and(|e| same_tuple(&e.orig, orig)))
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Applies what the kernel said about an entry at `now_ns`. Entries without translation are
    /// ignored.
    pub fn apply(&mut self, conn: &Conn, now_ns: u64) {
        if !conn.is_nat() {
            return;
        }
        match conn.kind {
            Kind::Present => {
                self.insert(conn, false);
            }
            Kind::Destroyed => {
                let Some(slot) = self.slot_of(&conn.orig) else {
                    return;
                };
                let mut ended = None;
                if let Some(e) = self.entry_mut(slot)
                    && e.ended_ns.is_none()
                    && (conn.id == 0 || e.id == conn.id)
                {
                    e.ended_ns = Some(now_ns);
                    ended = Some((e.id, e.dump_only));
                }
                if let Some((id, dump_only)) = ended {
                    self.dump_only_live -= u64::from(dump_only);
                    self.ended.push_back((now_ns, slot, id));
                    self.stats.destroyed += 1;
                }
            }
        }
    }

    /// Applies an entry the programs found for a packet at `now_ns` (see
    /// [`crate::conntrack`]): the kernel never says when it ends, so it is kept until the grace
    /// period has passed since it was last found (every drain that holds packets of the
    /// connection finds it again). Entries without translation are ignored.
    pub fn apply_found(&mut self, conn: &Conn, now_ns: u64) {
        if !conn.is_nat() {
            return;
        }
        let reply = normal(&conn.reply);
        if let Some(slot) = self.slot_of(&conn.orig)
            && let Some(e) = self.entry_mut(slot)
            && same_tuple(&e.reply, &reply)
        {
            e.ended_ns = Some(now_ns);
            e.status |= conn.status;
            return;
        }
        self.found_id = self.found_id.wrapping_add(1).max(1);
        let id = self.found_id;
        if let Some(slot) = self.insert(&Conn { id, ..*conn }, false)
            && let Some(e) = self.entry_mut(slot)
        {
            e.ended_ns = Some(now_ns);
            self.ended.push_back((now_ns, slot, id));
        }
    }

    /// Adds (or replaces) the entry; its slot, `None` when the table is full.
    fn insert(&mut self, conn: &Conn, dump_only: bool) -> Option<u32> {
        let entry = Entry {
            orig: normal(&conn.orig),
            reply: normal(&conn.reply),
            status: conn.status,
            id: conn.id,
            ended_ns: None,
            generation: self.generation,
            dump_only,
        };
        // The same tuple again: the same entry (a dump after the event), or a new connection
        // reusing it after the old one ended. Its slot is reused.
        let slot = match self.slot_of(&conn.orig) {
            Some(slot) => {
                self.unlink(slot);
                slot
            }
            None => {
                if self.len() >= self.max_entries && !self.evict_oldest_ended() {
                    self.stats.table_full += 1;
                    return None;
                }
                match self.free.pop() {
                    Some(slot) => slot,
                    None => {
                        self.slots.push(None);
                        u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
                    }
                }
            }
        };
        for id in entry.views() {
            self.views.insert(id, slot);
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(entry);
        }
        self.dump_only_live += u64::from(dump_only);
        self.stats.added += 1;
        Some(slot)
    }

    /// Removes an entry's tuples (those still leading to it) and its dump-only count; the slot
    /// keeps the entry until it is overwritten or freed.
    fn unlink(&mut self, slot: u32) {
        let Some(e) = self.entry(slot).copied() else {
            return;
        };
        for id in e.views() {
            // One probe: the view may lead to a newer entry of the same tuple.
            if let std::collections::hash_map::Entry::Occupied(v) = self.views.entry(id)
                && *v.get() == slot
            {
                v.remove();
            }
        }
        self.dump_only_live -= u64::from(e.dump_only && e.ended_ns.is_none());
    }

    /// Makes room by dropping the entry destroyed first; false when every entry is live.
    fn evict_oldest_ended(&mut self) -> bool {
        while let Some((_, slot, entry_id)) = self.ended.pop_front() {
            if self.remove_if_ended(slot, entry_id) {
                return true;
            }
        }
        false
    }

    fn remove_if_ended(&mut self, slot: u32, entry_id: u32) -> bool {
        match self.entry(slot) {
            Some(e) if e.ended_ns.is_some() && e.id == entry_id => {
                self.unlink(slot);
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    *s = None;
                }
                self.free.push(slot);
                true
            }
            _ => false,
        }
    }

    /// Forgets the entries destroyed more than the grace period before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(at, slot, entry_id)) = self.ended.front() {
            if now_ns.saturating_sub(at) < self.grace_ns {
                break;
            }
            self.ended.pop_front();
            // Found again since (an entry the programs found): back in the queue as of then.
            if let Some(e) = self.entry(slot)
                && e.id == entry_id
                && let Some(seen) = e.ended_ns
                && seen > at
            {
                self.ended.push_back((seen, slot, entry_id));
                continue;
            }
            self.remove_if_ended(slot, entry_id);
        }
        if self.views.capacity() > 4 * self.views.len().max(4096) {
            self.views.shrink_to(2 * self.views.len());
        }
        // Free slots at the end of the slab give their memory back.
        // (One pass over the free list for all of them: one per slot was quadratic.)
        let used = self.slots.len();
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        if self.slots.len() < used {
            let end = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
            self.free.retain(|&s| s < end);
        }
    }

    /// Starts a resync: the entries a complete list (a dump) then applies are marked seen.
    pub fn begin_resync(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Ends a resync at `now_ns`: live entries the list did not hold were destroyed while the
    /// events were lost.
    pub fn end_resync(&mut self, now_ns: u64) {
        let generation = self.generation;
        for (slot, e) in self.slots.iter_mut().enumerate() {
            if let Some(e) = e
                && e.ended_ns.is_none()
                && e.generation != generation
            {
                e.ended_ns = Some(now_ns);
                self.dump_only_live -= u64::from(e.dump_only);
                let slot = u32::try_from(slot).unwrap_or(u32::MAX);
                self.ended.push_back((now_ns, slot, e.id));
            }
        }
    }

    /// Marks a listed entry as seen by the resync in progress (and adds it if new).
    pub fn apply_listed(&mut self, conn: &Conn) {
        if !conn.is_nat() {
            return;
        }
        let generation = self.generation;
        let seen = self
            .slot_of(&conn.orig)
            .and_then(|slot| self.entry_mut(slot))
            .is_some_and(|e| {
                let same = e.ended_ns.is_none() && (e.id == conn.id || conn.id == 0);
                if same {
                    e.generation = generation;
                }
                same
            });
        if !seen {
            let _ = self.insert(conn, true);
        }
    }

    fn translated(e: &Entry, observed: &FlowKey, reply: bool) -> Translated {
        // The real ends: the client (the original source) and the backend (the reply's source).
        let (client, backend) = (
            (e.orig.src_addr, e.orig.src_port),
            (e.reply.src_addr, e.reply.src_port),
        );
        let ((src, sport), (dst, dport)) = if reply {
            (backend, client)
        } else {
            (client, backend)
        };
        let mut key = *observed;
        key.src_addr = src;
        key.dst_addr = dst;
        if !matches!(observed.protocol, IPPROTO_ICMP | IPPROTO_ICMPV6) {
            key.src_port = sport;
            key.dst_port = dport;
        }
        Translated {
            key,
            service: (e.status & IPS_DST_NAT != 0).then_some((e.orig.dst_addr, e.orig.dst_port)),
            snat: (e.status & IPS_SRC_NAT != 0).then_some((e.reply.dst_addr, e.reply.dst_port)),
            reply,
        }
    }
}

impl Translate for NatTable {
    fn translate(&self, key: &FlowKey) -> Option<Translated> {
        if self.views.is_empty() {
            return None;
        }
        let &slot = self.views.get(&pair_id(key))?;
        let e = self.entry(slot)?;
        Some(Self::translated(e, key, e.is_reply(key)))
    }
}

/// A key as the table stores and looks it up: no observation point, no flags.
fn normal(k: &FlowKey) -> FlowKey {
    FlowKey {
        obs: 0,
        key_flags: 0,
        ..*k
    }
}

#[cfg(test)]
mod tests {
    use podflow_ebpf::{FAMILY_IPV4, IPPROTO_UDP, ipv4_mapped};

    use super::*;

    const C: [u8; 4] = [10, 44, 0, 2];
    const VIP: [u8; 4] = [10, 96, 0, 10];
    const B: [u8; 4] = [10, 44, 0, 3];
    const NODE: [u8; 4] = [192, 168, 9, 1];
    const EXT: [u8; 4] = [203, 0, 113, 7];

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            src_addr: ipv4_mapped(src),
            dst_addr: ipv4_mapped(dst),
            src_port: sport,
            dst_port: dport,
            protocol: IPPROTO_UDP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        }
    }

    fn conn(kind: Kind, orig: FlowKey, reply: FlowKey, status: u32, id: u32) -> Conn {
        Conn {
            kind,
            id,
            status,
            orig,
            reply,
        }
    }

    fn ends(t: &Translated) -> ([u8; 16], u16, [u8; 16], u16) {
        (
            t.key.src_addr,
            t.key.src_port,
            t.key.dst_addr,
            t.key.dst_port,
        )
    }

    #[test]
    fn every_view_of_a_dnat_entry_names_the_real_ends() {
        let mut t = NatTable::new(16, 1_000);
        let orig = key(C, 40000, VIP, 80);
        let reply = key(B, 8080, C, 40000);
        t.apply(&conn(Kind::Present, orig, reply, IPS_DST_NAT, 1), 0);
        let request = (ipv4_mapped(C), 40000, ipv4_mapped(B), 8080);
        let response = (ipv4_mapped(B), 8080, ipv4_mapped(C), 40000);
        let mut at_egress = orig;
        at_egress.obs = 2; // the observation point is not part of the lookup
        for (seen, want, is_reply) in [
            (at_egress, request, false),
            (reply, response, true),
            (reversed(&orig), response, true),
            (reversed(&reply), request, false),
        ] {
            let x = t.translate(&seen).unwrap_or_else(|| panic!("{seen:?}"));
            assert_eq!((ends(&x), x.reply), (want, is_reply));
            assert_eq!(x.service, Some((ipv4_mapped(VIP), 80)));
            assert_eq!(x.snat, None);
        }
        assert!(t.translate(&key(C, 40001, VIP, 80)).is_none());
    }

    #[test]
    fn masquerade_and_nodeport() {
        let mut t = NatTable::new(16, 1_000);
        // An outside client to a NodePort, DNATed to a pod and masqueraded to the node.
        let orig = key(EXT, 5000, NODE, 30080);
        let reply = key(B, 8080, NODE, 61000);
        t.apply(
            &conn(Kind::Present, orig, reply, IPS_DST_NAT | IPS_SRC_NAT, 2),
            0,
        );
        // Counted at the backend's veth egress: after both translations.
        let x = t
            .translate(&reversed(&reply))
            .unwrap_or_else(|| panic!("no translation"));
        assert_eq!(ends(&x), (ipv4_mapped(EXT), 5000, ipv4_mapped(B), 8080));
        assert_eq!(x.service, Some((ipv4_mapped(NODE), 30080)));
        assert_eq!(x.snat, Some((ipv4_mapped(NODE), 61000)));
        // A pod to the outside, masqueraded only.
        let o = key(C, 41000, EXT, 443);
        let r = key(EXT, 443, NODE, 41000);
        t.apply(&conn(Kind::Present, o, r, IPS_SRC_NAT, 3), 0);
        let x = t.translate(&o).unwrap_or_else(|| panic!("no translation"));
        assert_eq!(x.service, None);
        assert_eq!(x.snat, Some((ipv4_mapped(NODE), 41000)));
        assert_eq!(ends(&x), (ipv4_mapped(C), 41000, ipv4_mapped(EXT), 443));
    }

    #[test]
    fn entries_the_programs_found_live_until_the_grace_period_after_the_last_find() {
        let grace = 1_000;
        let mut t = NatTable::new(16, grace);
        let orig = key(C, 40000, VIP, 80);
        let reply = key(B, 8080, C, 40000);
        let found = conn(Kind::Present, orig, reply, IPS_DST_NAT, 0);
        t.apply_found(&found, 0);
        // Untranslated entries are not kept.
        t.apply_found(
            &conn(Kind::Present, key(C, 1, B, 2), key(B, 2, C, 1), 0, 0),
            0,
        );
        assert_eq!((t.stats().entries, t.stats().added), (1, 1));
        // Found again by every drain with packets: one entry, kept.
        for now in [600, 1_200, 1_800] {
            t.apply_found(&found, now);
            t.expire(now);
        }
        assert_eq!((t.stats().entries, t.stats().added), (1, 1));
        assert!(t.translate(&orig).is_some());
        t.expire(1_800 + grace - 1);
        assert!(
            t.translate(&reversed(&reply)).is_some(),
            "within the grace period"
        );
        t.expire(1_800 + grace);
        assert!(t.translate(&orig).is_none(), "forgotten");
        assert_eq!(t.stats().entries, 0);
        // The same tuple, a new connection to another backend: replaces the first.
        t.apply_found(&found, 5_000);
        let other = key([10, 44, 0, 9], 8080, C, 40000);
        t.apply_found(&conn(Kind::Present, orig, other, IPS_DST_NAT, 0), 5_100);
        let x = t
            .translate(&orig)
            .unwrap_or_else(|| panic!("no translation"));
        assert_eq!(x.key.dst_addr, ipv4_mapped([10, 44, 0, 9]));
        assert!(
            t.translate(&reversed(&reply)).is_none(),
            "the old backend's view is gone"
        );
        assert_eq!(t.stats().entries, 1);
    }

    /// The direction of each of the four tuples, for an entry whose tuples sort either way.
    fn directions(t: &NatTable, orig: &FlowKey, reply: &FlowKey) -> [Option<bool>; 4] {
        [*orig, *reply, reversed(orig), reversed(reply)].map(|k| t.translate(&k).map(|x| x.reply))
    }

    #[test]
    fn a_hairpin_and_icmp_find_every_view_in_its_direction() {
        let mut t = NatTable::new(16, 1_000);
        // A pod reaching itself through its Service: DNATed to itself, masqueraded to the node.
        let orig = key(C, 40000, VIP, 80);
        let reply = key(C, 8080, NODE, 61000);
        t.apply(
            &conn(Kind::Present, orig, reply, IPS_DST_NAT | IPS_SRC_NAT, 1),
            0,
        );
        assert_eq!(
            directions(&t, &orig, &reply),
            [Some(false), Some(true), Some(true), Some(false)]
        );
        let x = t
            .translate(&reversed(&reply))
            .unwrap_or_else(|| panic!("the request at the pod's veth"));
        assert_eq!(ends(&x), (ipv4_mapped(C), 40000, ipv4_mapped(C), 8080));
        // A ping to the outside, masqueraded: the echo request's and reply's types.
        let mut o = key(C, 8, EXT, 77);
        let mut r = key(EXT, 0, NODE, 77);
        o.protocol = IPPROTO_ICMP;
        r.protocol = IPPROTO_ICMP;
        t.apply(&conn(Kind::Present, o, r, IPS_SRC_NAT, 2), 0);
        assert_eq!(
            directions(&t, &o, &r),
            [Some(false), Some(true), Some(true), Some(false)]
        );
        // The same tuples in the other order of addresses (the entry sorts the other way).
        let (o2, r2) = (key(EXT, 5000, C, 80), key(B, 8080, EXT, 5000));
        t.apply(&conn(Kind::Present, o2, r2, IPS_DST_NAT, 3), 0);
        assert_eq!(
            directions(&t, &o2, &r2),
            [Some(false), Some(true), Some(true), Some(false)]
        );
        assert_eq!(t.stats().entries, 3);
        // Other ports of the same ends are other connections.
        let mut other = o;
        other.dst_port = 78;
        assert!(t.translate(&other).is_none());
        assert!(t.translate(&key(C, 40000, VIP, 81)).is_none());
    }

    #[test]
    fn untranslated_entries_are_ignored_and_an_empty_table_costs_nothing() {
        let mut t = NatTable::new(16, 1_000);
        let k = key(C, 1, B, 2);
        t.apply(&conn(Kind::Present, k, reversed(&k), 0x188, 1), 0);
        assert_eq!(t.stats().entries, 0);
        assert!(t.translate(&k).is_none());
    }

    #[test]
    fn destroyed_entries_stay_for_the_grace_period_then_go() {
        let mut t = NatTable::new(16, 1_000);
        let orig = key(C, 40000, VIP, 80);
        let reply = key(B, 8080, C, 40000);
        t.apply(&conn(Kind::Present, orig, reply, IPS_DST_NAT, 5), 0);
        // A destroy of another entry with the same tuple (an older id) changes nothing.
        t.apply(&conn(Kind::Destroyed, orig, reply, IPS_DST_NAT, 4), 10);
        t.expire(5_000);
        assert!(t.translate(&orig).is_some());
        t.apply(&conn(Kind::Destroyed, orig, reply, IPS_DST_NAT, 5), 100);
        t.expire(1_099);
        assert!(t.translate(&orig).is_some(), "within the grace period");
        t.expire(1_100);
        assert!(t.translate(&orig).is_none() && t.translate(&reply).is_none());
        assert_eq!(t.stats().destroyed, 1);
        // The tuple reused by a new connection to another backend after the old one ended.
        let b2 = [10, 44, 0, 9];
        t.apply(&conn(Kind::Present, orig, reply, IPS_DST_NAT, 6), 2_000);
        t.apply(&conn(Kind::Destroyed, orig, reply, IPS_DST_NAT, 6), 2_001);
        let reply2 = key(b2, 8080, C, 40000);
        t.apply(&conn(Kind::Present, orig, reply2, IPS_DST_NAT, 7), 2_002);
        t.expire(10_000);
        let x = t
            .translate(&orig)
            .unwrap_or_else(|| panic!("the new entry"));
        assert_eq!(x.key.dst_addr, ipv4_mapped(b2));
        assert!(t.translate(&reply).is_none(), "the old reply tuple is gone");
    }

    #[test]
    fn a_full_table_evicts_ended_entries_first_and_counts_what_it_cannot_keep() {
        let mut t = NatTable::new(2, 1_000_000);
        let entry = |p: u16| {
            let o = key(C, p, VIP, 80);
            (o, key(B, 8080, C, p))
        };
        for (p, id) in [(1, 1), (2, 2)] {
            let (o, r) = entry(p);
            t.apply(&conn(Kind::Present, o, r, IPS_DST_NAT, id), 0);
        }
        let (o3, r3) = entry(3);
        t.apply(&conn(Kind::Present, o3, r3, IPS_DST_NAT, 3), 0);
        assert_eq!((t.stats().table_full, t.stats().entries), (1, 2));
        assert!(t.translate(&o3).is_none());
        let (o1, r1) = entry(1);
        t.apply(&conn(Kind::Destroyed, o1, r1, IPS_DST_NAT, 1), 5);
        t.apply(&conn(Kind::Present, o3, r3, IPS_DST_NAT, 3), 6);
        assert!(t.translate(&o3).is_some() && t.translate(&o1).is_none());
        assert_eq!(t.stats().entries, 2);
    }

    #[test]
    fn a_resync_ends_what_the_list_no_longer_holds() {
        let mut t = NatTable::new(16, 1_000);
        let (o1, r1) = (key(C, 1, VIP, 80), key(B, 8080, C, 1));
        let (o2, r2) = (key(C, 2, VIP, 80), key(B, 8080, C, 2));
        t.apply(&conn(Kind::Present, o1, r1, IPS_DST_NAT, 1), 0);
        t.apply(&conn(Kind::Present, o2, r2, IPS_DST_NAT, 2), 0);
        // Events were lost; the dump holds only the second entry, and a third one.
        let (o3, r3) = (key(C, 3, VIP, 80), key(B, 8080, C, 3));
        t.begin_resync();
        t.apply_listed(&conn(Kind::Present, o2, r2, IPS_DST_NAT, 2));
        t.apply_listed(&conn(Kind::Present, o3, r3, IPS_DST_NAT, 3));
        t.end_resync(50);
        t.expire(1_050);
        assert!(t.translate(&o1).is_none());
        assert!(t.translate(&o2).is_some() && t.translate(&o3).is_some());
    }
}
