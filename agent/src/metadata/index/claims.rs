//! Claims: who held an IP from when until when, and how a new claim cuts the ones it excludes.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Claim, Holder, MetadataIndex, TIMESTAMP_GRANULARITY};

impl MetadataIndex {
    /// Adds a claim from `from` (`precise`: the real start is within the timestamp
    /// granularity after it; otherwise somewhere before `now`, when it was first observed).
    pub(super) fn add_claim(
        &mut self,
        ip: IpAddr,
        uid: &Arc<str>,
        from: SystemTime,
        precise: bool,
        now: SystemTime,
        holder: Holder,
    ) {
        let limit = self.cfg.limits.max_claims_per_ip.max(1);
        // Most addresses have one claim: no room for four.
        let list = self
            .claims
            .entry(ip)
            .or_insert_with(|| Vec::with_capacity(1));
        if let Some(i) = list
            .iter()
            .position(|c| c.uid == *uid && (c.until.is_none() || c.from == from))
        {
            if precise && !list[i].precise && list[i].until.is_none() {
                list.remove(i); // a precise start replaces an estimate; re-inserted below
            } else {
                list[i].holder = holder; // same claim: refresh metadata (labels may change)
                return;
            }
        }
        let start_by = if precise {
            from + TIMESTAMP_GRANULARITY
        } else {
            now.max(from)
        };
        let mut claim = Claim {
            uid: Arc::clone(uid),
            from,
            precise,
            start_by,
            until: None,
            uncertain: None,
            holder,
        };
        if let Some(category) = claim.holder.exclusive_category() {
            for other in list
                .iter_mut()
                .filter(|o| o.holder.exclusive_category() == Some(category))
            {
                // An owner that certainly started first had released the IP before the later
                // one started (by its `start_by` at the latest), whatever order we learnt it in.
                if other.start_by <= claim.from {
                    other.until = Some(
                        other
                            .until
                            .map_or(claim.start_by, |u| u.min(claim.start_by)),
                    );
                }
                if claim.start_by <= other.from {
                    claim.until = Some(
                        claim
                            .until
                            .map_or(other.start_by, |u| u.min(other.start_by)),
                    );
                }
            }
        }
        list.push(claim);
        while list.len() > limit {
            // Evict the claim that ended first (open claims last).
            let victim = list
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.until.is_none(), c.until, c.from))
                .map(|(i, _)| i);
            if let Some(i) = victim {
                list.remove(i);
                self.stats.claims_evicted += 1;
            }
        }
    }
}
