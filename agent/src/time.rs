//! Time: the kernel's `CLOCK_MONOTONIC` (what flow times are counted in) and its conversion to
//! wall-clock protobuf timestamps.

/// Wall-clock conversion for the kernel's `CLOCK_MONOTONIC` timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in nanoseconds.
    pub realtime_offset_ns: i128,
    /// CLOCK_MONOTONIC now, in nanoseconds.
    pub mono_now_ns: u64,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            realtime_offset_ns: i128::from(real) - i128::from(mono),
            mono_now_ns: mono,
        }
    }

    /// The wall-clock time of a `CLOCK_MONOTONIC` time.
    pub fn to_timestamp(&self, mono_ns: u64) -> prost_types::Timestamp {
        timestamp_from_unix_ns(i128::from(mono_ns) + self.realtime_offset_ns)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (what `bpf_ktime_get_ns`/coarse variants count in).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Converts nanoseconds since the Unix epoch into a protobuf timestamp.
pub fn timestamp_from_unix_ns(unix_ns: i128) -> prost_types::Timestamp {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    prost_types::Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos).unwrap_or(0),
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_handle_negative_and_fractional_offsets() {
        let ts = timestamp_from_unix_ns(-1);
        assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_999));
        let ts = timestamp_from_unix_ns(1_500_000_000);
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_000));
    }
}
