//! Kernel flow-map memory per flow, and flows lost with the map at 50 % occupancy.
use std::time::Duration;

use anyhow::ensure;

use crate::{
    agent::Agent,
    bed::{Bed, Flows},
    harness::{log, sleep},
    kernel,
    opts::Opts,
};

/// (bytes_memlock, max_entries) of each flow map, and bytes_memlock of its spill map.
#[derive(Debug, Clone, Copy)]
pub struct MapMemory {
    pub v4: (u64, u64),
    pub v6: (u64, u64),
    pub spill_v4: u64,
    pub spill_v6: u64,
}

impl MapMemory {
    /// Flow map and spill map bytes per flow-map entry.
    pub fn per_flow(m: (u64, u64), spill: u64) -> f64 {
        (m.0 + spill) as f64 / m.1.max(1) as f64
    }
}

/// The map memory, and lost_map_full and records exported with the map at 50 % occupancy.
#[derive(Debug, Clone, Copy)]
pub struct MapFigures {
    pub memory: MapMemory,
    pub lost: u64,
    pub records: u64,
}

/// Flow map memory per flow: `bytes_memlock` ÷ `max_entries` of FLOWS_V4 and of FLOWS_V6, and
/// lost_map_full with the map at 50 % occupancy.
pub fn run(o: &Opts, bed: &Bed) -> anyhow::Result<MapFigures> {
    log("map memory and loss at 50 % occupancy");
    let entries = o.loss_map_entries;
    let agent = Agent::start(bed, &o.podflow, entries, "1s", &[])?;
    let ids = agent.prog_ids()?;
    let mut memory = MapMemory {
        v4: (0, 0),
        v6: (0, 0),
        spill_v4: 0,
        spill_v6: 0,
    };
    for m in kernel::map_ids(&ids)? {
        let info = kernel::map_info(m)?;
        let sizes = (info.bytes_memlock, info.max_entries);
        match info.name.as_str() {
            "SPILL_V4" => memory.spill_v4 = info.bytes_memlock,
            "SPILL_V6" => memory.spill_v6 = info.bytes_memlock,
            "FLOWS_V4" => memory.v4 = sizes,
            "FLOWS_V6" => memory.v6 = sizes,
            _ => {}
        }
    }
    ensure!(
        memory.v4.1 > 0 && memory.v6.1 > 0 && memory.spill_v4 > 0 && memory.spill_v6 > 0,
        "flow maps FLOWS_V4/FLOWS_V6 and spill maps SPILL_V4/SPILL_V6 not all found through bpftool"
    );
    // 50 % occupancy: entries / 4 flows, each with two entries (two veths), every flush interval.
    // (one entry per flow: counted once, at the source pod's veth; the destination veth skips it)
    let flows = u64::from(entries) / 2;
    let rate = (flows * 2).max(1_000);
    let before = agent.counter("lost_map_full")?;
    let rec0 = agent.records_exported()?;
    bed.generate(Flows::Rotate(flows), rate, 3.0)?;
    sleep(Duration::from_millis(2_000))?;
    let lost = agent.counter("lost_map_full")? - before;
    let records = agent.records_exported()? - rec0;
    agent.stop()?;
    Ok(MapFigures {
        memory,
        lost,
        records: records as u64,
    })
}
