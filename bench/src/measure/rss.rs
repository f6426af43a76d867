//! The agent's resident memory with many active flows, and with a small replay buffer.
use std::time::Duration;

use crate::{
    agent::Agent,
    bed::{Bed, Flows},
    harness::{log, sleep},
    opts::Opts,
};

/// One agent run with `n` active flows.
#[derive(Debug, Clone, Copy)]
pub struct RssRun {
    /// VmRSS and VmHWM, KiB.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub flows_active: u64,
    pub lost_map_full: u64,
    /// VmRSS right after attaching (no flows), KiB.
    pub idle_kib: u64,
}

/// The agent with its default replay buffer, and the same run with `--buffer 1024` (where the
/// memory goes).
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub full: RssRun,
    pub small: RssRun,
}

pub fn run(o: &Opts, bed: &Bed) -> anyhow::Result<Rss> {
    log(format!("resident memory with {} flows", o.rss_flows));
    let full = once(o, bed, o.rss_flows, &[])?;
    log("resident memory with --buffer 1024 (where the memory goes)");
    let small = once(o, bed, o.rss_flows, &["--buffer", "1024"])?;
    Ok(Rss { full, small })
}

/// The agent's memory with `n` active flows.
fn once(o: &Opts, bed: &Bed, n: u64, extra: &[&str]) -> anyhow::Result<RssRun> {
    let entries = (n * 2 + n / 2).next_power_of_two() as u32;
    let agent = Agent::start(bed, &o.podflow, entries, "1s", extra)?;
    let idle_kib = agent.status_kib("VmRSS")?;
    // Every flow at least twice, and at least 3 flush intervals.
    let rate = n.clamp(10_000, 100_000);
    let secs = (2.0 * n as f64 / rate as f64).max(3.0);
    bed.generate(Flows::Rotate(n), rate, secs)?;
    sleep(Duration::from_millis(1_500))?;
    let st = agent.status()?;
    let flows_active = st["flows_active"].as_u64().unwrap_or(0);
    let r = RssRun {
        rss_kib: agent.status_kib("VmRSS")?,
        hwm_kib: agent.status_kib("VmHWM")?,
        flows_active,
        lost_map_full: agent.counter("lost_map_full")?,
        idle_kib,
    };
    agent.stop()?;
    Ok(r)
}
