//! Head sampling, decided once where a trace starts and carried in the W3C sampled flag, which
//! every later span of the trace (in this process, in others on this node, and downstream
//! through `traceparent`) inherits. `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` semantics.
//!
//! `ratelimiting` (Jaeger's rate-limiting sampler) admits at most N new traces per second on
//! this node, whatever the traffic; traces continued from a parent follow its flag. In the
//! kernel it is one shared word (GCRA); userspace keeps the kernel's decision for the traces the
//! kernel started, and its own limiter for the few it starts itself.
//!
//! The ratio decision is deterministic on the trace id (the rightmost 7 bytes, as the
//! OpenTelemetry probability sampler does), so agents on different nodes agree without talking.
//!
//! After the head decision, [`tail`] sampling may keep or drop each trace once it is finished
//! on this node (errors, latency, an adaptive or capped baseline).
use thiserror::Error;

pub mod tail;
pub mod traces;

/// A head sampler.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    /// Keep every trace.
    AlwaysOn,
    /// Keep none.
    AlwaysOff,
    /// Keep this fraction of traces, decided on the trace id.
    Ratio(f64),
    /// Follow a remote parent's sampled flag; use the inner sampler for new traces.
    ParentBased(Box<Sampler>),
    /// At most this many new traces per second on this node; a remote parent's flag is
    /// followed. The decision for a new trace is a [`RateLimiter`]'s.
    RateLimited(f64),
}

/// An unusable sampler setting.
#[derive(Debug, Error, PartialEq)]
pub enum SamplerError {
    /// Unknown name.
    #[error(
        "unknown sampler {0:?}: use always_on, always_off, traceidratio, parentbased_<one of those> or ratelimiting"
    )]
    Unknown(String),
    /// Bad ratio.
    #[error("sampler argument {0:?}: a ratio between 0 and 1")]
    BadArg(String),
    /// Bad rate.
    #[error("sampler argument {0:?}: traces per second, more than 0")]
    BadRate(String),
}

impl Sampler {
    /// Parses `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (names are case-insensitive;
    /// the ratio defaults to 1.0).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Sampler, SamplerError> {
        let ratio = || match arg {
            None => Ok(1.0),
            Some(a) => match a.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(SamplerError::BadArg(a.to_string())),
            },
        };
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::Ratio(ratio()?))),
            "ratelimiting" => {
                let arg = arg.unwrap_or("1");
                match arg.trim().parse::<f64>() {
                    Ok(r) if r > 0.0 && r.is_finite() => Sampler::RateLimited(r),
                    _ => return Err(SamplerError::BadRate(arg.to_string())),
                }
            }
            other => return Err(SamplerError::Unknown(other.to_string())),
        })
    }

    /// Whether a trace is kept. `parent` is a remote parent's sampled flag, if there is one.
    pub fn sample(&self, trace_id: &[u8; 16], parent: Option<bool>) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => {
                // Rightmost 7 bytes of the trace id: the randomness W3C Level 2 guarantees.
                let mut b = [0u8; 8];
                b[1..].copy_from_slice(&trace_id[9..]);
                let x = u64::from_be_bytes(b);
                // Threshold in integers: with r = 1.0 it is 2^56, above every 56-bit value.
                x < (r * (1u64 << 56) as f64) as u64
            }
            Sampler::ParentBased(root) => parent.unwrap_or_else(|| root.sample(trace_id, None)),
            // A new trace's decision is the limiter's, not this one's.
            Sampler::RateLimited(_) => parent.unwrap_or(true),
        }
    }

    /// For `ratelimiting`: the mean interval between admitted traces, in ns (0 otherwise).
    pub fn rate_interval_ns(&self) -> u64 {
        match self {
            Sampler::RateLimited(r) => (1e9 / r).max(1.0) as u64,
            _ => 0,
        }
    }
}

/// A GCRA rate limiter: a trace is admitted while the theoretical arrival time of the next one
/// is at most `burst` ahead of now; each admitted trace moves it one interval further. The same
/// rule the kernel applies (see `ebpf/src/probes/context.rs`).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    interval: std::time::Duration,
    burst: std::time::Duration,
    next: Option<std::time::Instant>,
}

impl RateLimiter {
    /// `per_sec` traces per second, with a burst of about a second's worth.
    pub fn new(per_sec: f64) -> Self {
        RateLimiter {
            interval: std::time::Duration::from_secs_f64(1.0 / per_sec),
            burst: std::time::Duration::from_secs(1),
            next: None,
        }
    }

    /// Whether a new trace starting at `now` is admitted.
    pub fn admit(&mut self, now: std::time::Instant) -> bool {
        let start = self.next.map_or(now, |t| t.max(now));
        if start.duration_since(now) > self.burst {
            return false;
        }
        self.next = Some(start + self.interval);
        true
    }
}

impl Sampler {
    /// The same decision for traces that start in the kernel: a trace is sampled when the integer
    /// of its rightmost 7 bytes is below this.
    pub fn root_threshold(&self) -> u64 {
        match self {
            Sampler::AlwaysOn => tracewire_common::SAMPLE_ALL,
            Sampler::AlwaysOff => 0,
            Sampler::Ratio(r) => (r * (1u64 << 56) as f64) as u64,
            Sampler::ParentBased(root) => root.root_threshold(),
            // The kernel's limiter decides (`rate_interval_ns`).
            Sampler::RateLimited(_) => tracewire_common::SAMPLE_ALL,
        }
    }
}

impl Default for Sampler {
    /// The specification's default: `parentbased_always_on`.
    fn default() -> Self {
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_standard_names() {
        assert_eq!(Sampler::parse("always_on", None), Ok(Sampler::AlwaysOn));
        assert_eq!(Sampler::parse("TraceIdRatio", Some("0.25")), Ok(Sampler::Ratio(0.25)));
        assert_eq!(
            Sampler::parse("parentbased_traceidratio", Some("0.1")),
            Ok(Sampler::ParentBased(Box::new(Sampler::Ratio(0.1))))
        );
        assert!(Sampler::parse("traceidratio", Some("1.5")).is_err());
        assert!(Sampler::parse("jaeger_remote", None).is_err());
        assert_eq!(Sampler::parse("ratelimiting", Some("50")), Ok(Sampler::RateLimited(50.0)));
        assert!(Sampler::parse("ratelimiting", Some("0")).is_err());
        assert_eq!(Sampler::RateLimited(50.0).rate_interval_ns(), 20_000_000);
    }

    #[test]
    fn the_rate_limiter_admits_a_burst_then_the_rate() {
        let t0 = std::time::Instant::now();
        let mut l = RateLimiter::new(4.0);
        // A burst of about a second's worth at once (4, plus the one due now).
        let burst = (0..20).filter(|_| l.admit(t0)).count();
        assert_eq!(burst, 5);
        // Then one per 250 ms: over 10 s of a request every 10 ms, 40 more.
        let later = (1..=1000).filter(|i| l.admit(t0 + std::time::Duration::from_millis(10 * i))).count();
        assert_eq!(later, 40);
    }

    #[test]
    fn ratio_is_deterministic_and_close_to_the_fraction() {
        let s = Sampler::Ratio(0.1);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut kept = 0;
        for _ in 0..20_000 {
            let mut id = [0u8; 16];
            rng.fill(&mut id);
            let a = s.sample(&id, None);
            assert_eq!(a, s.sample(&id, None));
            kept += usize::from(a);
        }
        assert!((1_700..2_300).contains(&kept), "{kept} of 20000 kept at 10%");
        assert!(!Sampler::Ratio(0.0).sample(&[0xff; 16], None));
        assert!(Sampler::Ratio(1.0).sample(&[0xff; 16], None));
    }

    #[test]
    fn parent_based_follows_a_remote_parent() {
        let s = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        assert!(s.sample(&[1; 16], Some(true)));
        assert!(!s.sample(&[1; 16], None));
        assert!(!Sampler::default().sample(&[1; 16], Some(false)));
        assert!(Sampler::default().sample(&[1; 16], None));
    }
}
