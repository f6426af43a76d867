//! Kernel cost per hook: bpf stats of podflow's programs against the empty tc program's, with
//! 16 established flows and with many flows, and the memory floor of a lookup in maps that size.
use std::collections::BTreeMap;

use anyhow::{bail, ensure};

use super::start_settled;
use crate::{
    bed::{Bed, Flows},
    harness::{BpfStatsGuard, log},
    kernel::{self, EmptyProg},
    opts::Opts,
};

/// A kernel-cost window: ns per program run over all the programs, and per program (ns per
/// run, runs) in the order of the ids given.
#[derive(Debug, Clone)]
pub(super) struct HookWindow {
    pub(super) ns: f64,
    per_prog: Vec<(f64, u64)>,
}

/// The kernel-cost windows: podflow's programs against the empty program.
#[derive(Debug, Default)]
pub struct Hooks {
    pub empty_est: Vec<f64>,
    pub agent_est: Vec<f64>,
    pub diff_est: Vec<f64>,
    pub empty_many: Vec<f64>,
    pub agent_many: Vec<f64>,
    pub diff_many: Vec<f64>,
    /// Per podflow program name: (ns per run, runs) of each pair's window.
    pub prog_est: BTreeMap<String, Vec<(f64, u64)>>,
    pub prog_many: BTreeMap<String, Vec<(f64, u64)>>,
    /// lost_map_full summed over the agent's kernel cost windows, and the map capacity used.
    pub lost: u64,
    pub entries: u32,
    /// ns per dependent random access into a buffer the size of the flow maps (4 KiB pages).
    pub mem_latency_ns: f64,
    pub mem_latency_bytes: usize,
}

/// Average ns per program run over a generator window.
pub(super) fn window(
    bed: &Bed,
    ids: &[u32],
    flows: Flows,
    rate: u64,
    secs: f64,
) -> anyhow::Result<HookWindow> {
    ensure!(!ids.is_empty(), "no programs attached to measure");
    // Warm-up outside the window: one pass over every flow, so the window measures packets of
    // flows already in the map (the agent's flush may still flip the epoch once inside the
    // window, which re-inserts the flows: that cost is part of the figure).
    if let Flows::Rotate(n) = flows {
        bed.generate(flows, rate, (n as f64 / rate as f64).max(0.2))?;
    }
    let before = kernel::prog_stats(ids)?;
    bed.generate(flows, rate, secs)?;
    let after = kernel::prog_stats(ids)?;
    let per: Vec<(u64, u64)> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
        .collect();
    let (t, c) = per
        .iter()
        .fold((0u64, 0u64), |acc, p| (acc.0 + p.0, acc.1 + p.1));
    ensure!(
        c > 0,
        "bpf stats did not advance (kernel.bpf_stats_enabled?)"
    );
    Ok(HookWindow {
        ns: t as f64 / c as f64,
        per_prog: per
            .iter()
            .map(|&(t, c)| (if c > 0 { t as f64 / c as f64 } else { f64::NAN }, c))
            .collect(),
    })
}

/// Kernel cost per hook: agent windows against empty-program windows, interleaved (the order
/// alternates from pair to pair), `kernel.bpf_stats_enabled` on only here.
pub fn run(o: &Opts, bed: &Bed, stats: &BpfStatsGuard) -> anyhow::Result<Hooks> {
    let mut h = Hooks {
        entries: o.hook_entries(),
        ..Hooks::default()
    };
    let est = Flows::Rotate(16);
    let many = Flows::Rotate(o.many_flows);
    // PODFLOW_BENCH_HOOK_CONNTRACK=1: the node's conntrack tracks the windows' packets (both the
    // agent's and the empty program's windows), so the agent's programs look each new flow up
    // and find it, as on a node with kube-proxy.
    let _tracking = if std::env::var_os("PODFLOW_BENCH_HOOK_CONNTRACK").is_some() {
        log("hook: conntrack tracks the node's forwarded packets (PODFLOW_BENCH_HOOK_CONNTRACK)");
        Some(bed.track_connections()?)
    } else {
        None
    };
    // The memory floor of a lookup in maps that size: FLOWS_V4's buckets (16 B) and elements
    // (80 B) for `entries`, as the kernel lays them out (vmalloc, 4 KiB pages).
    h.mem_latency_bytes = h.entries as usize * (16 + 80);
    h.mem_latency_ns = kernel::memory_latency_ns(h.mem_latency_bytes)?;
    log(format!(
        "memory latency: {:.1} ns per dependent random access into {} MiB (4 KiB pages)",
        h.mem_latency_ns,
        h.mem_latency_bytes >> 20
    ));
    for pair in 0..o.hook_pairs {
        let agent_first = pair % 2 == 1;
        let mut base = None;
        let mut with = None;
        for phase in 0..2 {
            let with_agent = (phase == 0) == agent_first;
            if with_agent {
                log(format!("hook pair {}/{}: agent", pair + 1, o.hook_pairs));
                // The default flush interval (5 s).
                let (agent, _) = start_settled(o, bed, h.entries)?;
                let ids = agent.prog_ids()?;
                let names = kernel::prog_names(&ids)?;
                stats.set(true)?;
                let e = window(bed, &ids, est, o.hook_rate, o.hook_secs);
                let m = window(bed, &ids, many, o.hook_rate, o.hook_secs);
                stats.set(false)?;
                let (e, m) = (e?, m?);
                for (i, name) in names.iter().enumerate() {
                    if let Some(&p) = e.per_prog.get(i) {
                        h.prog_est.entry(name.clone()).or_default().push(p);
                    }
                    if let Some(&p) = m.per_prog.get(i) {
                        h.prog_many.entry(name.clone()).or_default().push(p);
                    }
                }
                // Reported, not fatal: a failed insert is a cheaper path, so the figure says so.
                h.lost += agent.counter("lost_map_full")?;
                agent.stop()?;
                with = Some((e.ns, m.ns));
            } else {
                log(format!(
                    "hook pair {}/{}: empty program",
                    pair + 1,
                    o.hook_pairs
                ));
                let empty = EmptyProg::attach(bed)?;
                let ids = kernel::attached_prog_ids(bed.node_ns().name())?;
                ensure!(
                    ids.len() == 1,
                    "expected the empty program alone, got {ids:?}"
                );
                stats.set(true)?;
                let e = window(bed, &ids, est, o.hook_rate, o.hook_secs);
                let m = window(bed, &ids, many, o.hook_rate, o.hook_secs);
                stats.set(false)?;
                drop(empty);
                base = Some((e?.ns, m?.ns));
            }
        }
        let (Some(b), Some(w)) = (base, with) else {
            bail!("hook pair {pair} incomplete");
        };
        log(format!(
            "hook pair {}: est {:.1}/{:.1} ns, many {:.1}/{:.1} ns (empty/agent)",
            pair + 1,
            b.0,
            w.0,
            b.1,
            w.1
        ));
        h.empty_est.push(b.0);
        h.agent_est.push(w.0);
        h.diff_est.push(w.0 - b.0);
        h.empty_many.push(b.1);
        h.agent_many.push(w.1);
        h.diff_many.push(w.1 - b.1);
    }
    Ok(h)
}
