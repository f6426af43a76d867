//! Agent CPU per exported flow under flow churn (every packet a new flow), per churn rate.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use podflow_testbed::wait_for;

use crate::{
    agent::Agent,
    bed::{Bed, Flows},
    harness::{ChildGuard, log, sleep},
    opts::Opts,
};

/// The runs at one churn rate.
#[derive(Debug, Clone)]
pub struct Churn {
    /// New flows per second asked of the generator.
    pub rate: u64,
    /// Agent CPU µs per exported flow, records exported and new flows per second achieved, of
    /// each run.
    pub us_per_flow: Vec<f64>,
    pub records: Vec<f64>,
    pub achieved: Vec<f64>,
    /// Records of flows the node translated (the Service churn), of each run.
    pub translated: Vec<f64>,
    /// The whole machine's busy CPU (every CPU, `/proc/stat`: the generator, the packets' way
    /// through the kernel, conntrack, the agent) µs per exported flow, of each run: what the
    /// agent's figure leaves out (its programs and conntrack's events run in the packets'
    /// softirqs).
    pub machine_us_per_flow: Vec<f64>,
}

/// Busy time of every CPU so far (`/proc/stat`: all but idle and iowait), in ns.
fn machine_busy_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let (total, idle): (u64, u64) = (
        ticks.iter().take(8).sum(),
        ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0),
    );
    // USER_HZ is 100 on Linux.
    Ok((total - idle) * 10_000_000)
}

/// How long an agent of the churn rows has run at the rate before the window: past the idle
/// timeout the rows give it ([`STEADY_IDLE_TIMEOUT`]), and past the Service bed's conntrack UDP
/// timeout plus the agent's grace for destroyed entries (5 s + 2 flushes + 10 s), so that the
/// window sees as many flows and translations end as begin: the cost of a node that has run at
/// that rate for a while, not of an agent whose tables are still growing.
pub const STEADY_WARMUP_SECS: f64 = 20.0;
/// The idle timeout of the churn rows' agents (the default is 2 minutes: a steady state only
/// after 2 minutes at the rate, with 1.2 million flows tracked at 10 000 new flows/s).
pub const STEADY_IDLE_TIMEOUT: &str = "5s";
/// The Service bed's conntrack timeout of unanswered UDP (the kernel's default is 30 s): the
/// generator reuses a source port every 12.8 s, which must then be a new connection.
pub const STEADY_UDP_CT_TIMEOUT_SECS: u32 = 5;

/// How a churn run's window is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    /// A fresh agent: 1 s of flows, 2.5 s for their flushes, then the window and 2.5 s for its
    /// records. Its tables grow through the window (the cost of an agent's first seconds).
    Fresh,
    /// `o.churn_warmup_secs` ([`STEADY_WARMUP_SECS`]; `--smoke`: 2 s) at the rate, then the
    /// window right after, the agent's CPU and
    /// records read at its two ends (see [`STEADY_WARMUP_SECS`]).
    Steady,
}

/// `o.churn_runs` runs of each churn rate, a fresh agent each, measured in steady state.
pub fn run(o: &Opts, bed: &Bed) -> anyhow::Result<Vec<Churn>> {
    let mut out = Vec::new();
    for &rate in &o.churn_rates {
        let mut c = Churn::new(rate);
        for i in 0..o.churn_runs {
            log(format!("churn {rate}/s, run {}/{}", i + 1, o.churn_runs));
            c.push(once(
                o,
                bed,
                rate,
                |start| Flows::Unique { start },
                &[],
                Warm::Steady,
            )?);
        }
        out.push(c);
    }
    Ok(out)
}

/// `o.churn_runs` runs at `rate` new flows per second, every other one through a Service that
/// the node translates (conntrack); with `named`, the agent also names the pods and the Service
/// (a metadata file). On a bed of its own, whose namespace has conntrack on.
pub fn run_service(o: &Opts, rate: u64, named: bool) -> anyhow::Result<Churn> {
    let bed = Bed::build()?;
    bed.set_udp_conntrack_timeout(STEADY_UDP_CT_TIMEOUT_SECS)?;
    let dir = tempfile::Builder::new()
        .prefix("podflow-bench-svc-")
        .tempdir()
        .context("creating the metadata directory")?;
    let metadata = bed.serve_dst(dir.path())?;
    let metadata = metadata.to_string_lossy();
    let extra: &[&str] = if named {
        &["--metadata-file", &metadata]
    } else {
        &[]
    };
    let mut c = Churn::new(rate);
    for i in 0..o.churn_runs {
        log(format!(
            "churn {rate}/s, half through a Service{}, run {}/{}",
            if named { ", named" } else { "" },
            i + 1,
            o.churn_runs
        ));
        bed.flush_conntrack()?;
        c.push(once(
            o,
            &bed,
            rate,
            |start| Flows::HalfService { start },
            extra,
            Warm::Steady,
        )?);
    }
    Ok(c)
}

impl Churn {
    fn new(rate: u64) -> Churn {
        Churn {
            rate,
            us_per_flow: Vec::new(),
            records: Vec::new(),
            achieved: Vec::new(),
            translated: Vec::new(),
            machine_us_per_flow: Vec::new(),
        }
    }

    fn push(&mut self, run: Run) {
        self.machine_us_per_flow
            .push(run.machine_ns_per_flow / 1000.0);
        self.us_per_flow.push(run.ns_per_flow / 1000.0);
        self.records.push(run.records);
        self.achieved.push(run.achieved);
        self.translated.push(run.translated);
    }
}

/// One run's figures.
pub(super) struct Run {
    pub(super) ns_per_flow: f64,
    records: f64,
    achieved: f64,
    translated: f64,
    machine_ns_per_flow: f64,
}

/// CPU per exported flow at a churn of `rate` new flows per second (fresh agent started with
/// `extra` arguments), with the flows `flows` makes from a start index, the window taken as
/// `warm` says.
pub(super) fn once(
    o: &Opts,
    bed: &Bed,
    rate: u64,
    flows: impl Fn(u64) -> Flows,
    extra: &[&str],
    warm: Warm,
) -> anyhow::Result<Run> {
    let entries = ((rate as f64 * 2.0 * 1.5) as u64)
        .next_power_of_two()
        .max(65_536) as u32;
    let mut args = extra.to_vec();
    if warm == Warm::Steady {
        args.extend(["--idle-timeout", STEADY_IDLE_TIMEOUT]);
    }
    let agent = Agent::start(bed, &o.podflow, entries, "1s", &args)?;
    match warm {
        Warm::Fresh => {
            // Warm up (first flush, lazy allocations) outside the window.
            bed.generate(flows(0), rate, 1.0)?;
            sleep(Duration::from_millis(2_500))?;
        }
        // Straight into the window: a pause would let the tables shrink.
        Warm::Steady => {
            bed.generate(flows(0), rate, o.churn_warmup_secs)?;
        }
    }
    let (cpu0, rec0) = (agent.cpu_ns()?, agent.records_exported()?);
    let busy0 = machine_busy_ns()?;
    // Agents older than Service attribution have no such counter: 0.
    let translated0 = agent.counter("translated_records").unwrap_or(0);
    // PODFLOW_BENCH_PERF=DIR: profile the agent during each churn window (perf record -g), at
    // PODFLOW_BENCH_PERF_FREQ samples per second (499).
    let perf_freq = std::env::var("PODFLOW_BENCH_PERF_FREQ").unwrap_or_else(|_| "499".into());
    let mut perf = match std::env::var_os("PODFLOW_BENCH_PERF") {
        Some(dir) => Some(ChildGuard::new(
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-F",
                    &perf_freq,
                    "-g",
                    "-p",
                    &agent.pid().to_string(),
                    "-o",
                ])
                .arg(PathBuf::from(dir).join(format!(
                    "churn-{rate}{}.data",
                    match (
                        matches!(flows(0), Flows::HalfService { .. }),
                        extra.is_empty()
                    ) {
                        (false, _) => "",
                        (true, true) => "-service",
                        (true, false) => "-service-named",
                    }
                )))
                .args(["--", "sleep", &format!("{}", o.churn_secs + 2.5)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("perf record")?,
        )),
        None => None,
    };
    let g = bed.generate(flows(1_000_000), rate, o.churn_secs)?;
    if warm == Warm::Fresh {
        // Two flushes after the last packet: every flow of the window has become a record.
        sleep(Duration::from_millis(2_500))?;
    }
    let (cpu1, rec1) = (agent.cpu_ns()?, agent.records_exported()?);
    let busy1 = machine_busy_ns()?;
    let translated = agent.counter("translated_records").unwrap_or(0) - translated0;
    if let Some(c) = perf.as_mut().and_then(ChildGuard::get_mut) {
        // perf stops by itself (sleep); bounded wait, then the guard kills it.
        let _ = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            c.try_wait().ok().flatten()
        });
    }
    drop(perf);
    let lost = agent.counter("lost_map_full")?;
    agent.stop()?;
    let records = rec1 - rec0;
    ensure!(
        records > 0.0,
        "no flow records exported in the churn window"
    );
    ensure!(lost == 0, "lost_map_full = {lost} during churn at {rate}/s");
    Ok(Run {
        ns_per_flow: (cpu1 - cpu0) as f64 / records,
        records,
        achieved: g.sent as f64 / g.secs,
        translated: translated as f64,
        machine_ns_per_flow: busy1.saturating_sub(busy0) as f64 / records,
    })
}
