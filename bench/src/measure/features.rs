//! The cost of the features that read payloads or segments (issue 16): DNS messages copied into
//! the DNS ring, TCP SYN and SYN/ACK segments into the handshake ring.
//!
//! Kernel: ns per program run on packets the feature takes (DNS queries to port 53; TCP SYNs)
//! against the same packets it does not (the same query bytes to port 5354; TCP segments with
//! only ACK), every packet a new flow, in windows alternated within each pair (the order flips
//! from pair to pair), on one agent. Agent: CPU per exported flow at 10 000 new flows/s when
//! every flow is one such packet, against the same churn of the baseline packets, alternated.
use crate::{
    bed::{Bed, Flows, RawKind},
    harness::{BpfStatsGuard, log},
    measure::{churn, hook, start_settled, start_settled_with},
    opts::Opts,
};

/// One feature's figures: (baseline, with the feature) of each pair.
#[derive(Debug, Default, Clone)]
pub struct Feature {
    pub kernel_ns: Vec<(f64, f64)>,
    pub cpu_us_per_flow: Vec<(f64, f64)>,
}

#[derive(Debug, Default, Clone)]
pub struct Features {
    pub dns: Feature,
    pub handshakes: Feature,
    /// Drops: the kernel figure is the drop program's own ns per run (one run per dropped
    /// packet; the baseline 0); the CPU figure the churn of UDP packets `dst` drops (nothing
    /// listens: NO_SOCKET), with `--drops` against without.
    pub drops: Feature,
    /// Smoothed RTT (`--tcp-rtt`): the tcp_probe program's own ns per run (one run per TCP
    /// segment a socket of the node receives) during an iperf3 TCP stream, and that stream's
    /// Gbit/s without the agent and with it (`cpu_us_per_flow` holds (Gbit/s without, with)).
    pub rtt: Feature,
}

/// The churn rate of the CPU figures (as the low churn row).
pub const CHURN_RATE: u64 = 10_000;

pub fn run(o: &Opts, bed: &Bed, stats: &BpfStatsGuard) -> anyhow::Result<Features> {
    let mut f = Features::default();
    let kinds = [
        (RawKind::Udp(5354), RawKind::Dns),
        (RawKind::TcpAck, RawKind::TcpSyn),
    ];
    let mut start = 0u64;
    for pair in 0..o.hook_pairs {
        log(format!(
            "features kernel pair {}/{}",
            pair + 1,
            o.hook_pairs
        ));
        let (agent, _) = start_settled(o, bed, o.hook_entries())?;
        let ids = agent.prog_ids()?;
        for (k, (base, with)) in kinds.into_iter().enumerate() {
            let mut ns = [0.0; 2];
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let kind = if which == 0 { base } else { with };
                stats.set(true)?;
                let w = hook::window(
                    bed,
                    &ids,
                    Flows::Raw { start, kind },
                    o.hook_rate,
                    o.hook_secs,
                );
                stats.set(false)?;
                ns[which] = w?.ns;
                start += (o.hook_rate as f64 * o.hook_secs) as u64 + 1;
            }
            let fig = if k == 0 {
                &mut f.dns
            } else {
                &mut f.handshakes
            };
            fig.kernel_ns.push((ns[0], ns[1]));
        }
        agent.stop()?;
        // Every packet of this window is dropped by `dst` (no socket on its port): the drop
        // program (`--drops`) runs once per packet.
        let (agent, _) = start_settled_with(o, bed, o.hook_entries(), &["--drops"])?;
        let drop_ids = crate::kernel::prog_ids_named("podflow_kfree")?;
        if !drop_ids.is_empty() {
            stats.set(true)?;
            let w = hook::window(
                bed,
                &drop_ids,
                Flows::Raw {
                    start,
                    kind: RawKind::Udp(5354),
                },
                o.hook_rate,
                o.hook_secs,
            );
            stats.set(false)?;
            f.drops.kernel_ns.push((0.0, w?.ns));
            start += (o.hook_rate as f64 * o.hook_secs) as u64 + 1;
        }
        agent.stop()?;
    }
    for run in 0..o.churn_runs {
        let mut us = [0.0; 2];
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            log(format!(
                "features churn run {}/{}: drops {}",
                run + 1,
                o.churn_runs,
                if which == 0 { "off" } else { "on" }
            ));
            let extra: &[&str] = if which == 0 { &[] } else { &["--drops"] };
            let r = churn::once(
                o,
                bed,
                CHURN_RATE,
                |s| Flows::Raw {
                    start: s,
                    kind: RawKind::Udp(5354),
                },
                extra,
                churn::Warm::Fresh,
            )?;
            us[which] = r.ns_per_flow / 1000.0;
        }
        f.drops.cpu_us_per_flow.push((us[0], us[1]));
    }
    for run in 0..o.churn_runs {
        for (k, (base, with)) in kinds.into_iter().enumerate() {
            let mut us = [0.0; 2];
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let kind = if which == 0 { base } else { with };
                log(format!(
                    "features churn run {}/{}: {kind:?}",
                    run + 1,
                    o.churn_runs
                ));
                let r = churn::once(
                    o,
                    bed,
                    CHURN_RATE,
                    |s| Flows::Raw { start: s, kind },
                    &[],
                    churn::Warm::Fresh,
                )?;
                us[which] = r.ns_per_flow / 1000.0;
            }
            let fig = if k == 0 {
                &mut f.dns
            } else {
                &mut f.handshakes
            };
            fig.cpu_us_per_flow.push((us[0], us[1]));
        }
    }
    // Smoothed RTT: the program's cost per received TCP segment, and a TCP stream's rate
    // without the agent and with `--tcp-rtt` (alternated).
    for pair in 0..o.hook_pairs {
        log(format!(
            "features tcp rtt pair {}/{}",
            pair + 1,
            o.hook_pairs
        ));
        let without = bed.tcp_gbps(2)?;
        let (agent, _) = start_settled_with(o, bed, o.hook_entries(), &["--tcp-rtt"])?;
        let ids = crate::kernel::prog_ids_named("podflow_tcp_pro")?;
        // The rate with statistics off (they add two clock reads to every program run), then
        // the program's cost in a second stream with them on.
        let with = bed.tcp_gbps(2);
        stats.set(true)?;
        let before = crate::kernel::prog_stats(&ids);
        let stream = bed.tcp_gbps(2);
        let after = crate::kernel::prog_stats(&ids);
        stats.set(false)?;
        agent.stop()?;
        let (before, after, with, _) = (before?, after?, with?, stream?);
        let (t, c) = before.iter().zip(&after).fold((0u64, 0u64), |acc, (b, a)| {
            (
                acc.0 + a.0.saturating_sub(b.0),
                acc.1 + a.1.saturating_sub(b.1),
            )
        });
        if c > 0 {
            f.rtt.kernel_ns.push((0.0, t as f64 / c as f64));
        }
        f.rtt.cpu_us_per_flow.push((without, with));
    }
    Ok(f)
}
