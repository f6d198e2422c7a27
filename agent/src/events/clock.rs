//! Kernel timestamps (CLOCK_MONOTONIC ns from `bpf_ktime_get_ns`) → wall-clock time.
//!
//! The offset between the two clocks is sampled by reading both clocks back to back; the reading
//! with the tightest bracket wins, so the offset is accurate to well under a microsecond. NTP
//! slews the realtime clock, so callers refresh the offset periodically ([`Clock::refresh`]).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts monotonic nanoseconds to Unix-epoch nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// realtime − monotonic, in ns.
    offset_ns: i128,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn realtime_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as i128
}

impl Clock {
    /// Samples the current offset.
    pub fn now() -> Self {
        let mut best = (u64::MAX, 0i128);
        for _ in 0..5 {
            let a = monotonic_ns();
            let r = realtime_ns();
            let b = monotonic_ns();
            let width = b.saturating_sub(a);
            if width < best.0 {
                best = (width, r - (a as i128 + (width / 2) as i128));
            }
        }
        Clock { offset_ns: best.1 }
    }

    /// A clock with a fixed offset (recorded captures, tests).
    pub const fn with_offset(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    /// Re-samples the offset.
    pub fn refresh(&mut self) {
        *self = Clock::now();
    }

    /// Unix-epoch nanoseconds for a kernel monotonic timestamp.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }

    /// The current wall-clock time, in ns since the Unix epoch.
    pub fn wall_now_ns() -> u64 {
        realtime_ns().clamp(0, u64::MAX as i128) as u64
    }

    /// The current monotonic time, as the kernel sees it.
    pub fn monotonic_now() -> u64 {
        monotonic_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let c = Clock::now();
        let wall = c.wall_ns(monotonic_ns()) as i128;
        let diff = (wall - realtime_ns()).abs();
        assert!(diff < 50_000_000, "offset off by {diff} ns");
    }

    #[test]
    fn fixed_offset_is_exact() {
        let c = Clock::with_offset(1_000);
        assert_eq!(c.wall_ns(5), 1_005);
        assert_eq!(Clock::with_offset(-10).wall_ns(5), 0);
    }
}
