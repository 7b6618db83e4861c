//! How a KMS key is used: message type, concurrency, client-side rate limit, retries, timeouts.
//!
//! Defaults follow AWS's published per-account, per-region quotas for asymmetric `Sign`: 300
//! requests per second for ECC keys and 500 for RSA keys (both adjustable by AWS support). A
//! client that stays under its quota is never throttled by KMS itself; the retry budget covers
//! the throttling that other clients of the same account cause.

use std::time::Duration;

/// What kubesign sends to KMS `Sign`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MessageType {
    /// Hash the TBSCertificate locally (SHA-256, or SHA-384 for P-384 keys) and send the digest
    /// with `MessageType=DIGEST`. Works for messages of any size. The default.
    #[default]
    Digest,
    /// Send the TBSCertificate itself with `MessageType=RAW` and let KMS hash it. KMS accepts at
    /// most 4096 bytes, so larger messages are refused before any request is made. Useful with
    /// emulators that ignore `DIGEST` (moto) and for audit trails that want KMS to see the message.
    Raw,
}

impl MessageType {
    /// The AWS name, `DIGEST` or `RAW`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Digest => "DIGEST",
            MessageType::Raw => "RAW",
        }
    }
}

/// The largest message KMS signs with `MessageType=RAW`.
pub const RAW_MESSAGE_LIMIT: usize = 4096;

/// AWS's default quota for asymmetric `Sign` with ECC keys, per account and region.
pub const AWS_DEFAULT_ECC_SIGN_RATE: f64 = 300.0;
/// AWS's default quota for asymmetric `Sign` with RSA keys, per account and region.
pub const AWS_DEFAULT_RSA_SIGN_RATE: f64 = 500.0;

/// A client-side limit on `Sign` requests, enforced with a token bucket shared by every signer
/// of one [`KmsBackend`](crate::KmsBackend) that talks to the same region and endpoint with the
/// same key family (ECC or RSA) and the same limit.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub enum RateLimit {
    /// AWS's default quota for the key's family: [`AWS_DEFAULT_ECC_SIGN_RATE`] for ECC keys,
    /// [`AWS_DEFAULT_RSA_SIGN_RATE`] for RSA keys, with a burst of a tenth of a second's worth.
    #[default]
    AwsDefaultQuota,
    /// At most `rate` requests per second on average, and at most `burst` at once after a pause.
    PerSecond {
        /// Requests per second; a rate that is not a positive finite number means no limit.
        rate: f64,
        /// Bucket capacity (at least 1).
        burst: u32,
    },
    /// No client-side limit (only [`KmsOptions::max_concurrency`] bounds the load).
    Unlimited,
}

impl RateLimit {
    /// `rate` requests per second with a burst of a tenth of a second's worth (at least 1).
    pub fn per_second(rate: f64) -> Self {
        RateLimit::PerSecond {
            rate,
            burst: default_burst(rate),
        }
    }

    /// The (rate, burst) this limit means for a key of the given family; `None` when unlimited.
    pub(crate) fn resolve(self, rsa: bool) -> Option<(f64, u32)> {
        match self {
            RateLimit::AwsDefaultQuota => {
                let rate = if rsa {
                    AWS_DEFAULT_RSA_SIGN_RATE
                } else {
                    AWS_DEFAULT_ECC_SIGN_RATE
                };
                Some((rate, default_burst(rate)))
            }
            RateLimit::PerSecond { rate, burst } if rate > 0.0 && rate.is_finite() => {
                Some((rate, burst.max(1)))
            }
            RateLimit::PerSecond { .. } | RateLimit::Unlimited => None,
        }
    }
}

fn default_burst(rate: f64) -> u32 {
    // Saturating float-to-int conversion; rates are small positive numbers.
    ((rate / 10.0).ceil() as u32).max(1)
}

/// How transient failures (throttling, KMS internal errors, timeouts, connection errors, HTTP 5xx)
/// are retried: exponential backoff with full jitter, `delay = random(0, min(max_backoff,
/// base_backoff * 2^(attempt-1)))`, for at most `max_attempts` attempts in all. Permanent
/// failures are never retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1). Default 5.
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure. Default 100 ms.
    pub base_backoff: Duration,
    /// The largest backoff ceiling. Default 5 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` attempts with backoff ceilings from `base_backoff` doubling up
    /// to `max_backoff`.
    pub fn new(max_attempts: u32, base_backoff: Duration, max_backoff: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            base_backoff,
            max_backoff,
        }
    }

    /// A policy of `max_attempts` attempts with the default backoff.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// The backoff ceiling after `failures` failed attempts (1 for the first failure).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.base_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }

    /// The full-jitter delay after `failures` failed attempts: `unit` (in `[0, 1)`) times the
    /// ceiling.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        self.ceiling(failures).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Options for the signers a [`KmsBackend`](crate::KmsBackend) opens.
///
/// ```
/// use backend_kms::{KmsOptions, MessageType, RateLimit};
/// let options = KmsOptions::default()
///     .with_message_type(MessageType::Raw)
///     .with_max_concurrency(8)
///     .with_rate_limit(RateLimit::per_second(50.0));
/// assert_eq!(options.max_concurrency, 8);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct KmsOptions {
    /// DIGEST (hash locally, the default) or RAW.
    pub message_type: MessageType,
    /// The most `Sign` requests in flight at once, per shared limiter. Default 16.
    pub max_concurrency: usize,
    /// The client-side request rate limit. Default: AWS's default quota for the key family.
    pub rate_limit: RateLimit,
    /// The retry budget for transient failures.
    pub retry: RetryPolicy,
    /// How long one attempt may take, connection included. Default 10 s.
    pub attempt_timeout: Duration,
    /// How long connecting may take. Default 3 s.
    pub connect_timeout: Duration,
}

impl Default for KmsOptions {
    fn default() -> Self {
        KmsOptions {
            message_type: MessageType::Digest,
            max_concurrency: 16,
            rate_limit: RateLimit::AwsDefaultQuota,
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl KmsOptions {
    /// Sets the message type.
    pub fn with_message_type(mut self, message_type: MessageType) -> Self {
        self.message_type = message_type;
        self
    }

    /// Sets the concurrency bound (at least 1).
    pub fn with_max_concurrency(mut self, max_concurrency: usize) -> Self {
        self.max_concurrency = max_concurrency.max(1);
        self
    }

    /// Sets the client-side rate limit.
    pub fn with_rate_limit(mut self, rate_limit: RateLimit) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    /// Sets the retry budget.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(10), Duration::from_secs(5));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(5));
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(200));
        assert_eq!(p.delay(3, 7.0), Duration::from_millis(400));
    }

    #[test]
    fn rate_defaults_are_aws_quotas() {
        assert_eq!(RateLimit::AwsDefaultQuota.resolve(false), Some((300.0, 30)));
        assert_eq!(RateLimit::AwsDefaultQuota.resolve(true), Some((500.0, 50)));
        assert_eq!(RateLimit::per_second(5.0).resolve(true), Some((5.0, 1)));
        assert_eq!(RateLimit::Unlimited.resolve(true), None);
        assert_eq!(RateLimit::per_second(0.0).resolve(true), None);
    }
}
