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
use podflow_ebpf::{ClockSample, FIRST_JIFFIES_MASK, FlowStats, FlowValue, TCP_FLAGS_SHIFT};

/// The tick rates Linux is configured with (`CONFIG_HZ`) on the architectures podflow runs on.
const HZ_CANDIDATES: [u32; 8] = [100, 200, 250, 300, 500, 1000, 1024, 1200];
const NS_PER_SEC: u128 = 1_000_000_000;
/// Two samples at least this far apart measure the tick rate.
const MEASURE_AFTER_NS: u64 = 2_000_000_000;

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

    /// Takes a newer sample; re-measures HZ once the samples are far enough apart.
    pub fn update(&mut self, s: ClockSample) {
        self.at = s;
        let dt = s.mono_ns.saturating_sub(self.origin.mono_ns);
        let dj = s.jiffies.saturating_sub(self.origin.jiffies);
        if dt >= MEASURE_AFTER_NS && dj > 0 {
            let measured = u128::from(dj) * NS_PER_SEC / u128::from(dt);
            self.hz = nearest_hz(measured as f64);
        }
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

    /// The full jiffies value whose low 32 bits are `low`, at or before the sample (a flow's last
    /// packet precedes the drain that reads it).
    pub fn unwrap_low32(&self, low: u32) -> u64 {
        let back = (self.at.jiffies as u32).wrapping_sub(low);
        self.at.jiffies.wrapping_sub(u64::from(back))
    }

    /// A map value with its times in `CLOCK_MONOTONIC` ns.
    pub fn decode(&self, v: &FlowValue) -> FlowStats {
        let last = self.unwrap_low32(v.last_jiffies);
        // First and last come from different CPUs' stores: a CPU that read jiffies just before a
        // tick may store a `last` one tick older than the `first` another CPU inserted. A
        // "negative" span is that, not a 4.6-hour-old flow.
        let span = v.last_jiffies.wrapping_sub(v.first_flags) & FIRST_JIFFIES_MASK;
        let first = if span > FIRST_JIFFIES_MASK / 2 {
            last
        } else {
            last - u64::from(span)
        };
        FlowStats {
            packets: u64::from(v.packets),
            bytes: v.bytes,
            first_ns: self.mono_ns(first),
            last_ns: self.mono_ns(last),
            ifindex: v.ifindex,
            tcp_flags: (v.first_flags >> TCP_FLAGS_SHIFT) as u8,
            _pad: [0; 3],
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
        assert_eq!(c.unwrap_low32(at.jiffies as u32), at.jiffies);
        assert_eq!(c.unwrap_low32((at.jiffies - 7) as u32), at.jiffies - 7);
    }

    #[test]
    fn unwraps_across_the_32_bit_boundary() {
        // jiffies just past 2^32 (5 min after boot), a flow stamped just before it.
        let c = JiffyClock::new(ClockSample {
            jiffies: (1 << 32) + 3,
            mono_ns: 300_000_000_000,
        });
        assert_eq!(c.unwrap_low32(u32::MAX - 1), (1 << 32) - 2);
    }

    #[test]
    fn decodes_a_value() {
        let c = JiffyClock::new(sample(1000, 1_000.0));
        let j = c.at.jiffies;
        let first = j - 4_000;
        let last = j - 250;
        let v = FlowValue {
            bytes: 12_345,
            packets: 17,
            ifindex: 9,
            last_jiffies: last as u32,
            first_flags: (first as u32 & FIRST_JIFFIES_MASK) | (0x12 << TCP_FLAGS_SHIFT),
        };
        let s = c.decode(&v);
        assert_eq!(
            (s.packets, s.bytes, s.ifindex, s.tcp_flags),
            (17, 12_345, 9, 0x12)
        );
        assert_eq!(s.last_ns, c.at.mono_ns - 250_000_000);
        assert_eq!(s.first_ns, c.at.mono_ns - 4_000_000_000);
    }

    #[test]
    fn a_last_stamp_older_than_the_first_is_clamped() {
        let c = JiffyClock::new(sample(1000, 1_000.0));
        let j = c.at.jiffies;
        let v = FlowValue {
            bytes: 1,
            packets: 1,
            ifindex: 1,
            last_jiffies: (j - 11) as u32,
            first_flags: (j - 10) as u32 & FIRST_JIFFIES_MASK,
        };
        let s = c.decode(&v);
        assert_eq!(s.first_ns, s.last_ns);
        assert_eq!(s.last_ns, c.at.mono_ns - 11_000_000);
    }
}
