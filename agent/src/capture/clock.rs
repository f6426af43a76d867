//! Turning the programs' jiffies into `CLOCK_MONOTONIC` nanoseconds.
//!
//! The programs stamp flows with `bpf_jiffies64()` (inlined by the verifier: one load, where
//! `bpf_ktime_get_coarse_ns()` is a helper call — and coarse time has the same tick resolution
//! anyway). User space samples both clocks together in the kernel ([`ClockSample`], written by
//! the never-attached `podflow_clock` program under `BPF_PROG_TEST_RUN`) at every drain, and maps a
//! jiffies value to `CLOCK_MONOTONIC` by its distance, in ticks, from that sample.
//!
//! The tick rate (`CONFIG_HZ`) is not visible to user space (`sysconf(_SC_CLK_TCK)` is `USER_HZ`),
//! so it is inferred: from one sample, by which HZ makes `jiffies` agree with the boot-time origin
//! of both clocks (jiffies start at `INITIAL_JIFFIES` = 2³² − 300·HZ when `CLOCK_MONOTONIC` is ~0);
//! and, once two samples are seconds apart, by the rate at which jiffies advanced.
//!
//! The flow maps keep only the low 16 bits of jiffies ([`FlowValue`]); a drain reads entries
//! stamped since the previous drain, so a stamp is the latest jiffies value with those low bits at
//! or before the drain's sample, exact while drains are less than [`TIME_WRAP_TICKS`] apart.
use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use podflow_ebpf::{CLOCK, ClockSample, FlowStats, FlowValue, KeyTail, PROG_CLOCK};

use super::{
    CaptureError,
    load::{open_map, program},
};

/// The tick rates Linux is configured with (`CONFIG_HZ`) on the architectures podflow runs on.
const HZ_CANDIDATES: [u32; 8] = [100, 200, 250, 300, 500, 1000, 1024, 1200];
const NS_PER_SEC: u128 = 1_000_000_000;
/// Two samples at least this far apart measure the tick rate.
const MEASURE_AFTER_NS: u64 = 2_000_000_000;
/// Ticks after which the 16-bit stamps of the flow maps wrap.
pub const TIME_WRAP_TICKS: u64 = 1 << 16;
/// Slack kept between the longest allowed flush interval and [`TIME_WRAP_TICKS`], in seconds: a
/// drain may start late (a busy node) or take a while.
const WRAP_SLACK_S: u64 = 2;

/// Samples both clocks in the kernel: runs the never-attached `podflow_clock` program with
/// `BPF_PROG_TEST_RUN` and reads what it wrote into `CLOCK`.
pub(super) struct ClockSampler {
    map: Array<MapData, ClockSample>,
}

impl ClockSampler {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<ClockSampler, CaptureError> {
        Ok(ClockSampler {
            map: open_map(ebpf, CLOCK)?,
        })
    }

    pub(super) fn sample(&self, ebpf: &Ebpf) -> Result<ClockSample, CaptureError> {
        // A zeroed Ethernet-sized frame: the program only reads the clocks.
        program(ebpf, PROG_CLOCK)?
            .test_run(TestRunOptions {
                data_in: Some(&[0u8; 64]),
                ..TestRunOptions::default()
            })
            .map_err(|e| CaptureError::LoadProgram {
                name: PROG_CLOCK,
                source: Box::new(e),
            })?;
        self.map.get(&0, 0).map_err(|source| CaptureError::Map {
            op: "read CLOCK",
            source,
        })
    }
}

/// Maps jiffies to `CLOCK_MONOTONIC` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JiffyClock {
    hz: u32,
    /// The first sample: the tick rate is measured from it.
    origin: ClockSample,
    /// The latest sample: conversions count ticks from it.
    at: ClockSample,
}

impl JiffyClock {
    /// A clock from one sample, HZ inferred from the boot-time origin of jiffies.
    pub fn new(s: ClockSample) -> JiffyClock {
        JiffyClock {
            hz: hz_from_origin(s),
            origin: s,
            at: s,
        }
    }

    /// The inferred tick rate.
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// The longest flush interval for which every stamp of a drain can be unwrapped exactly.
    pub fn max_flush_interval(&self) -> Duration {
        let hz = u64::from(self.hz.max(1));
        Duration::from_secs((TIME_WRAP_TICKS / hz).saturating_sub(WRAP_SLACK_S).max(1))
    }

    /// Takes a newer sample; re-measures HZ once the samples are far enough apart. Returns the
    /// ticks since the previous sample (if [`TIME_WRAP_TICKS`] or more, the 16-bit stamps of the
    /// drain it serves may have wrapped).
    pub fn update(&mut self, s: ClockSample) -> u64 {
        let since = s.jiffies.saturating_sub(self.at.jiffies);
        self.at = s;
        let dt = s.mono_ns.saturating_sub(self.origin.mono_ns);
        let dj = s.jiffies.saturating_sub(self.origin.jiffies);
        if dt >= MEASURE_AFTER_NS && dj > 0 {
            let measured = u128::from(dj) * NS_PER_SEC / u128::from(dt);
            self.hz = nearest_hz(measured as f64);
        }
        since
    }

    /// `CLOCK_MONOTONIC` ns of a full jiffies value.
    pub fn mono_ns(&self, jiffies: u64) -> u64 {
        let hz = u128::from(self.hz.max(1));
        if jiffies <= self.at.jiffies {
            let back = u128::from(self.at.jiffies - jiffies) * NS_PER_SEC / hz;
            u64::try_from(u128::from(self.at.mono_ns).saturating_sub(back)).unwrap_or(0)
        } else {
            let ahead = u128::from(jiffies - self.at.jiffies) * NS_PER_SEC / hz;
            u64::try_from(u128::from(self.at.mono_ns) + ahead).unwrap_or(u64::MAX)
        }
    }

    /// The full jiffies value whose low 16 bits are `low`, at or before the sample (a flow's
    /// packets precede the drain that reads it).
    pub fn unwrap_low16(&self, low: u16) -> u64 {
        let back = (self.at.jiffies as u16).wrapping_sub(low);
        self.at.jiffies.wrapping_sub(u64::from(back))
    }

    /// A map entry (its key's tail and its value) with its times in `CLOCK_MONOTONIC` ns (spill
    /// not included).
    pub fn decode(&self, tail: &KeyTail, v: &FlowValue) -> FlowStats {
        let last = self.unwrap_low16(v.last_jiffies);
        // First and last come from different CPUs' stores: a CPU that read jiffies just before a
        // tick may store a `last` one tick older than the `first` another CPU inserted.
        let first = self.unwrap_low16(v.first_jiffies).min(last);
        FlowStats {
            packets: v.packets(),
            bytes: v.bytes(),
            first_ns: self.mono_ns(first),
            last_ns: self.mono_ns(last),
            ifindex: v.ifindex(tail),
            tcp_flags: v.tcp_flags,
            ct: v.ct & (podflow_ebpf::CT_MISSING | podflow_ebpf::CT_PLAIN | podflow_ebpf::CT_FOUND),
            _pad: [0; 2],
        }
    }
}

/// The HZ for which `jiffies − INITIAL_JIFFIES(HZ)` ticks best match the sample's monotonic time.
fn hz_from_origin(s: ClockSample) -> u32 {
    let mono_s = s.mono_ns as f64 / 1e9;
    let mut best = (f64::INFINITY, 1000);
    for hz in HZ_CANDIDATES {
        let initial = (1u64 << 32) - 300 * u64::from(hz);
        let ticks = s.jiffies.wrapping_sub(initial) as i64 as f64;
        let err = (ticks / f64::from(hz) - mono_s).abs();
        if err < best.0 {
            best = (err, hz);
        }
    }
    best.1
}

/// The configured tick rate closest to a measured one (within 3 %), else the measurement.
fn nearest_hz(measured: f64) -> u32 {
    HZ_CANDIDATES
        .into_iter()
        .map(|hz| (((measured - f64::from(hz)) / f64::from(hz)).abs(), hz))
        .filter(|(rel, _)| *rel < 0.03)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(measured.round().max(1.0) as u32, |(_, hz)| hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(hz: u64, mono_s: f64) -> ClockSample {
        let initial = (1u64 << 32) - 300 * hz;
        ClockSample {
            jiffies: initial + (mono_s * hz as f64) as u64,
            mono_ns: (mono_s * 1e9) as u64,
        }
    }

    #[test]
    fn infers_hz_from_the_boot_origin() {
        for hz in [100, 250, 300, 1000] {
            // Minutes and months after boot, with jiffies a second off the ideal.
            for mono_s in [12.0, 3_600.0, 86_400.0 * 60.0] {
                let mut s = sample(hz, mono_s);
                s.jiffies += hz;
                assert_eq!(hz_from_origin(s), hz as u32, "HZ {hz} at {mono_s} s");
            }
        }
    }

    #[test]
    fn measures_hz_from_two_samples() {
        // An origin that suggests the wrong HZ (jiffies far off the boot relation) is corrected
        // by the measured rate.
        let mut c = JiffyClock::new(ClockSample {
            jiffies: 5_000_000,
            mono_ns: 1_000_000_000_000,
        });
        c.update(ClockSample {
            jiffies: 5_000_000 + 2_501,
            mono_ns: 1_000_000_000_000 + 10_000_000_000,
        });
        assert_eq!(c.hz(), 250);
        assert_eq!(nearest_hz(1_000.4), 1000);
        assert_eq!(nearest_hz(777.0), 777);
    }

    #[test]
    fn converts_jiffies_around_the_sample() {
        let c = JiffyClock::new(sample(1000, 500.0));
        let at = c.at;
        assert_eq!(c.mono_ns(at.jiffies), at.mono_ns);
        assert_eq!(c.mono_ns(at.jiffies - 1_500), at.mono_ns - 1_500_000_000);
        assert_eq!(c.mono_ns(at.jiffies + 2), at.mono_ns + 2_000_000);
        assert_eq!(c.unwrap_low16(at.jiffies as u16), at.jiffies);
        assert_eq!(c.unwrap_low16((at.jiffies - 7) as u16), at.jiffies - 7);
        // The oldest stamp a drain can unwrap: 2^16 - 1 ticks before it.
        let oldest = at.jiffies - (TIME_WRAP_TICKS - 1);
        assert_eq!(c.unwrap_low16(oldest as u16), oldest);
    }

    #[test]
    fn unwraps_across_the_16_and_32_bit_boundaries() {
        // jiffies just past 2^32 (5 min after boot), a flow stamped just before it.
        let c = JiffyClock::new(ClockSample {
            jiffies: (1 << 32) + 3,
            mono_ns: 300_000_000_000,
        });
        assert_eq!(c.unwrap_low16(u16::MAX - 1), (1 << 32) - 2);
        let c = JiffyClock::new(ClockSample {
            jiffies: (7 << 16) + 10,
            mono_ns: 300_000_000_000,
        });
        assert_eq!(c.unwrap_low16(0xfff0), (7 << 16) - 16);
    }

    #[test]
    fn flush_interval_limit_follows_hz() {
        for (hz, secs) in [(100, 653), (250, 260), (1000, 63), (1200, 52)] {
            let mut s = sample(hz, 3_600.0);
            s.jiffies += 1;
            let c = JiffyClock::new(s);
            assert_eq!(c.hz(), hz as u32);
            assert_eq!(c.max_flush_interval(), Duration::from_secs(secs), "HZ {hz}");
            // Within the limit, the drain's oldest possible stamp still unwraps.
            let limit = (secs + WRAP_SLACK_S) * hz;
            assert!(limit <= TIME_WRAP_TICKS, "HZ {hz}");
        }
    }

    #[test]
    fn update_reports_the_ticks_since_the_previous_sample() {
        let mut c = JiffyClock::new(sample(1000, 100.0));
        assert_eq!(c.update(sample(1000, 105.0)), 5_000);
        assert_eq!(c.update(sample(1000, 175.0)), 70_000);
        assert!(c.update(sample(1000, 175.0)) == 0);
    }

    fn value(
        bytes: u64,
        tcp_flags: u8,
        ifindex_hi: u16,
        packets: u64,
        first: u64,
        last: u64,
    ) -> FlowValue {
        FlowValue {
            counts: bytes | packets << podflow_ebpf::VALUE_PACKETS_SHIFT,
            first_jiffies: first as u16,
            last_jiffies: last as u16,
            tcp_flags,
            ct: 0,
            ifindex_hi,
        }
    }

    fn tail(ifindex_lo: u16) -> KeyTail {
        KeyTail {
            ifindex_lo,
            ..KeyTail::default()
        }
    }

    #[test]
    fn decodes_a_value() {
        let c = JiffyClock::new(sample(1000, 1_000.0));
        let j = c.at.jiffies;
        let first = j - 40_000;
        let last = j - 250;
        let bytes = (1 << 40) - 3;
        let packets = (1 << 24) - 1;
        let v = value(bytes, 0x12, 0x8005, packets, first, last);
        let s = c.decode(&tail(0x0009), &v);
        assert_eq!(
            (s.packets, s.bytes, s.ifindex, s.tcp_flags),
            (packets, bytes, 0x8005_0009, 0x12)
        );
        assert_eq!(s.last_ns, c.at.mono_ns - 250_000_000);
        assert_eq!(s.first_ns, c.at.mono_ns - 40_000_000_000);
    }

    #[test]
    fn a_last_stamp_older_than_the_first_is_clamped() {
        let c = JiffyClock::new(sample(1000, 1_000.0));
        let j = c.at.jiffies;
        let v = value(1, 0, 0, 1, j - 10, j - 11);
        let s = c.decode(&tail(1), &v);
        assert_eq!(s.first_ns, s.last_ns);
        assert_eq!(s.last_ns, c.at.mono_ns - 11_000_000);
    }
}
