//! Which OTLP failures are retried, and how long to wait (OTLP specification, "Failures").
use std::time::Duration;

use tonic::Code;

/// What to do with a failed export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Retry, after at least this long if the server said so.
    Retry(Option<Duration>),
    /// Never retry: drop and count.
    Drop,
}

/// gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are
/// retryable; RESOURCE_EXHAUSTED only when the server sent RetryInfo (throttling); every other
/// code is not.
pub fn classify_grpc(code: Code, retry_info: Option<Duration>) -> Verdict {
    match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Verdict::Retry(retry_info),
        Code::ResourceExhausted if retry_info.is_some() => Verdict::Retry(retry_info),
        _ => Verdict::Drop,
    }
}

/// HTTP: 429, 502, 503 and 504 are retryable (honouring Retry-After); nothing else is.
pub fn classify_http(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        429 | 502 | 503 | 504 => Verdict::Retry(retry_after),
        _ => Verdict::Drop,
    }
}

/// Exponential backoff with full jitter: attempt 0 waits up to `base`, doubling up to `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration, rng: &mut fastrand::Rng) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let nanos = exp.as_nanos().min(u128::from(u64::MAX)) as u64;
    // Full jitter, but never less than half the step: retries from many agents spread out
    // without collapsing to zero.
    Duration::from_nanos(nanos / 2 + rng.u64(0..=nanos / 2))
}

// google.rpc.Status, google.protobuf.Any, google.rpc.RetryInfo and google.protobuf.Duration,
// with the field numbers of google/rpc/status.proto and error_details.proto.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// `google.rpc.RetryInfo` carried in a gRPC status's details (`grpc-status-details-bin`).
pub fn retry_info(details: &[u8]) -> Option<Duration> {
    use prost::Message as _;

    let status = RpcStatus::decode(details).ok()?;
    status.details.iter().find(|a| a.type_url.ends_with("google.rpc.RetryInfo")).and_then(|a| {
        let d = RetryInfo::decode(a.value.as_slice()).ok()?.retry_delay?;
        Some(Duration::new(d.seconds.max(0) as u64, d.nanos.clamp(0, 999_999_999) as u32))
    })
}

/// Encodes a `google.rpc.Status` with a RetryInfo detail (for test servers).
pub fn encode_retry_info(delay: Duration) -> Vec<u8> {
    use prost::Message as _;
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    RpcStatus {
        code: Code::ResourceExhausted as i32,
        message: String::new(),
        details: vec![ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_table() {
        let retry = [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ];
        for c in retry {
            assert_eq!(classify_grpc(c, None), Verdict::Retry(None), "{c:?}");
        }
        let drop = [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ];
        for c in drop {
            assert_eq!(classify_grpc(c, None), Verdict::Drop, "{c:?}");
        }
        let d = Some(Duration::from_millis(250));
        assert_eq!(classify_grpc(Code::ResourceExhausted, d), Verdict::Retry(d));
    }

    #[test]
    fn http_table() {
        for s in [429, 502, 503, 504] {
            assert!(matches!(classify_http(s, None), Verdict::Retry(_)));
        }
        for s in [400, 401, 403, 404, 413, 500, 501] {
            assert_eq!(classify_http(s, None), Verdict::Drop);
        }
    }

    #[test]
    fn retry_info_round_trip() {
        let d = Duration::from_millis(1500);
        assert_eq!(retry_info(&encode_retry_info(d)), Some(d));
        assert_eq!(retry_info(b"garbage"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = fastrand::Rng::with_seed(1);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..20 {
            let d = backoff(attempt, base, max, &mut rng);
            let step = base.saturating_mul(1 << attempt.min(16)).min(max);
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
    }
}
