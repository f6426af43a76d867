//! Throughput: TCP and UDP through the pods with the agent, without it (twice: A/B and A/A) and
//! with the empty tc program, in interleaved pairs; and the agent idle.
use std::time::{Duration, Instant};

use anyhow::bail;

use super::start_settled;
use crate::{
    agent::Agent,
    bed::Bed,
    harness::{BpfStatsGuard, log, sleep},
    kernel::EmptyProg,
    opts::Opts,
};

/// What the agent does with no traffic: its threads' CPU time and wake-ups over an idle window
/// (after it settled, default 5 s flush).
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub secs: f64,
    pub cpu_ns: u64,
    pub wakeups: u64,
    /// Per thread name: (threads, CPU ns, wake-ups), the busiest first.
    pub by_name: Vec<(String, usize, u64, u64)>,
}

/// The throughput blocks: the agent against the baseline (A/B), the baseline against itself
/// (A/A, the noise floor of the same comparison), and the empty tc program as a reference.
#[derive(Debug, Default)]
pub struct Throughput {
    pub tcp_base: Vec<f64>,
    pub udp_base: Vec<f64>,
    pub tcp_agent: Vec<f64>,
    pub udp_agent: Vec<f64>,
    pub tcp_ratio: Vec<f64>,
    pub udp_ratio: Vec<f64>,
    /// Second baseline block / baseline block of the same pair.
    pub tcp_aa: Vec<f64>,
    pub udp_aa: Vec<f64>,
    /// TCP and UDP with the empty tc program attached to the same hooks (no agent): what any tc
    /// program costs there (the tcx hook itself), next to what podflow costs; and its ratio to
    /// the adjacent (second) baseline block.
    pub tcp_empty: Vec<f64>,
    pub udp_empty: Vec<f64>,
    pub tcp_empty_ratio: Vec<f64>,
    pub udp_empty_ratio: Vec<f64>,
    /// Per pair, the highest CPU pressure (PSI "some", share of the wall time) of its blocks:
    /// how much the machine's other work competed with the runs.
    pub pressure: Vec<f64>,
    /// Seconds from the agent's attachment until it settled, and how many times it did not
    /// within the bound.
    pub settle_secs: Vec<f64>,
    pub unsettled: usize,
    pub idle: Idle,
}

impl Throughput {
    fn settled(&mut self, s: Option<f64>) {
        match s {
            Some(secs) => self.settle_secs.push(secs),
            None => self.unsettled += 1,
        }
    }
}

/// The kernel's CPU pressure stall total (`/proc/pressure/cpu`, "some": µs during which at
/// least one runnable task waited for a CPU), if the kernel has PSI.
fn cpu_pressure_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    s.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// One throughput block: `reps` × (TCP run, UDP run) of `secs` each; the means, and the CPU
/// pressure over the block (share of its wall time some task waited for a CPU; NaN without PSI).
fn block(bed: &Bed, reps: usize, secs: u32) -> anyhow::Result<(f64, f64, f64)> {
    let (p0, t0) = (cpu_pressure_us(), Instant::now());
    let (mut tcp, mut udp) = (0.0, 0.0);
    for _ in 0..reps {
        tcp += bed.tcp_gbps(secs)?;
        udp += bed.udp_pps(secs)?;
    }
    let pressure = match (p0, cpu_pressure_us()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / t0.elapsed().as_micros().max(1) as f64,
        _ => f64::NAN,
    };
    Ok((tcp / reps as f64, udp / reps as f64, pressure))
}

/// The agent's CPU time and wake-ups over `secs` with no traffic.
fn idle_window(agent: &Agent, secs: f64) -> anyhow::Result<Idle> {
    let before = agent.threads()?;
    sleep(Duration::from_secs_f64(secs))?;
    let after = agent.threads()?;
    let mut by_name: Vec<(String, usize, u64, u64)> = Vec::new();
    for a in &after {
        let (ns0, sl0) = before
            .iter()
            .find(|b| b.tid == a.tid)
            .map_or((0, 0), |b| (b.ns, b.slices));
        let (ns, sl) = (a.ns.saturating_sub(ns0), a.slices.saturating_sub(sl0));
        match by_name.iter_mut().find(|e| e.0 == a.name) {
            Some(e) => {
                e.1 += 1;
                e.2 += ns;
                e.3 += sl;
            }
            None => by_name.push((a.name.clone(), 1, ns, sl)),
        }
    }
    by_name.sort_by_key(|e| std::cmp::Reverse(e.2));
    Ok(Idle {
        secs,
        cpu_ns: by_name.iter().map(|e| e.2).sum(),
        wakeups: by_name.iter().map(|e| e.3).sum(),
        by_name,
    })
}

/// The blocks of a throughput pair, in order. Even pairs: empty, second baseline, baseline,
/// agent; odd pairs the reverse. The compared blocks are adjacent (agent–baseline,
/// baseline–second baseline, second baseline–empty) and each comparison alternates its order
/// from pair to pair, so a drift of the machine favours neither side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Empty,
    Base2,
    Base,
    Agent,
}

pub fn run(o: &Opts, bed: &Bed, stats: &BpfStatsGuard) -> anyhow::Result<Throughput> {
    let mut t = Throughput::default();
    let entries = o.hook_entries();
    stats.set(false)?;
    // Warm-up outside the pairs: one run of each kind (iperf3 server, TCP metrics cache, page
    // cache), then one agent cycle to time its start and stop and to watch it idle.
    log("throughput warm-up (no agent)");
    block(bed, 1, o.iperf_secs)?;
    log("agent start-up, settle and idle window");
    let t0 = Instant::now();
    let (agent, settled) = start_settled(o, bed, entries)?;
    t.settled(settled);
    let mut gap_start = t0.elapsed();
    t.idle = idle_window(&agent, o.idle_secs)?;
    log(format!(
        "agent idle for {:.0} s: {:.2} ms CPU, {} wake-ups; by thread: {}",
        t.idle.secs,
        t.idle.cpu_ns as f64 / 1e6,
        t.idle.wakeups,
        t.idle
            .by_name
            .iter()
            .map(|(n, k, ns, sl)| format!("{n} ×{k} {:.2} ms {sl} wake-ups", *ns as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let t1 = Instant::now();
    agent.stop()?;
    let mut gap_stop = t1.elapsed();
    for pair in 0..o.pairs {
        let mut order = [Arm::Empty, Arm::Base2, Arm::Base, Arm::Agent];
        if pair % 2 == 1 {
            order.reverse();
        }
        let (mut base, mut base2, mut agent, mut empty) = (None, None, None, None);
        for arm in order {
            log(format!("throughput pair {}/{}: {arm:?}", pair + 1, o.pairs));
            // The A/A pair (Base2, Base) gets the same gap between its blocks as the A/B pair
            // (Base, Agent): as long as the agent last took to start and settle (even pairs:
            // Base, start, Agent) or to stop (odd pairs: Agent, stop, Base).
            match (arm, pair % 2) {
                (Arm::Base, 0) => sleep(gap_start)?,
                (Arm::Base2, 1) => sleep(gap_stop)?,
                _ => {}
            }
            match arm {
                Arm::Agent => {
                    let t0 = Instant::now();
                    let (a, settled) = start_settled(o, bed, entries)?;
                    t.settled(settled);
                    gap_start = t0.elapsed();
                    agent = Some(block(bed, o.reps, o.iperf_secs)?);
                    let t1 = Instant::now();
                    a.stop()?;
                    gap_stop = t1.elapsed();
                }
                Arm::Base => base = Some(block(bed, o.reps, o.iperf_secs)?),
                Arm::Base2 => base2 = Some(block(bed, o.reps, o.iperf_secs)?),
                Arm::Empty => {
                    let e = EmptyProg::attach(bed)?;
                    empty = Some(block(bed, o.reps, o.iperf_secs)?);
                    drop(e);
                }
            }
        }
        let (Some(b), Some(b2), Some(a), Some(e)) = (base, base2, agent, empty) else {
            bail!("throughput pair {pair} incomplete");
        };
        let pressure = [b.2, a.2, b2.2, e.2].into_iter().fold(f64::NAN, f64::max);
        t.pressure.push(pressure * 100.0);
        log(format!(
            "pair {}: tcp {:.2} {:.2} {:.2} {:.2} Gbit/s, udp {:.0} {:.0} {:.0} {:.0} kpps (no agent, agent, no agent again, empty program): ratio tcp {:.3} udp {:.3}, A/A tcp {:.3} udp {:.3}; CPU pressure {:.0} {:.0} {:.0} {:.0} %",
            pair + 1,
            b.0,
            a.0,
            b2.0,
            e.0,
            b.1 / 1e3,
            a.1 / 1e3,
            b2.1 / 1e3,
            e.1 / 1e3,
            a.0 / b.0,
            a.1 / b.1,
            b2.0 / b.0,
            b2.1 / b.1,
            b.2 * 100.0,
            a.2 * 100.0,
            b2.2 * 100.0,
            e.2 * 100.0
        ));
        t.tcp_base.push(b.0);
        t.udp_base.push(b.1);
        t.tcp_agent.push(a.0);
        t.udp_agent.push(a.1);
        t.tcp_ratio.push(a.0 / b.0);
        t.udp_ratio.push(a.1 / b.1);
        t.tcp_aa.push(b2.0 / b.0);
        t.udp_aa.push(b2.1 / b.1);
        t.tcp_empty.push(e.0);
        t.udp_empty.push(e.1);
        t.tcp_empty_ratio.push(e.0 / b2.0);
        t.udp_empty_ratio.push(e.1 / b2.1);
    }
    Ok(t)
}
