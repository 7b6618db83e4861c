//! Client-side flow control for KMS requests: a token bucket (requests per second) in front of a
//! semaphore (requests in flight), and the retry loop that runs every request under both.
//!
//! The bucket hands out reservations: a caller takes a token at once, even into debt, and sleeps
//! until its token would have been available. Callers are therefore served in arrival order and
//! the long-run rate never exceeds the configured one, whatever the number of tasks.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use signer_api::SignerError;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::options::RetryPolicy;

struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

/// Flow control shared by every signer that uses the same KMS quota.
pub(crate) struct Limiter {
    bucket: Option<Mutex<Bucket>>,
    in_flight: Semaphore,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rate", &self.rate())
            .field("available_permits", &self.in_flight.available_permits())
            .finish()
    }
}

impl Limiter {
    /// `rate` is (requests per second, burst); `None` means no rate limit.
    pub(crate) fn new(rate: Option<(f64, u32)>, max_concurrency: usize) -> Self {
        Limiter {
            bucket: rate.map(|(rate, burst)| {
                Mutex::new(Bucket {
                    rate,
                    capacity: f64::from(burst.max(1)),
                    tokens: f64::from(burst.max(1)),
                    last: Instant::now(),
                })
            }),
            in_flight: Semaphore::new(max_concurrency.clamp(1, Semaphore::MAX_PERMITS)),
        }
    }

    /// A limiter that only bounds concurrency (used for control-plane calls).
    pub(crate) fn unlimited() -> Self {
        Limiter::new(None, Semaphore::MAX_PERMITS)
    }

    /// The configured requests per second, if any.
    pub(crate) fn rate(&self) -> Option<f64> {
        self.bucket
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).rate)
    }

    /// Waits for a rate token, then for a concurrency permit. The permit is held for one attempt.
    pub(crate) async fn acquire(&self) -> SemaphorePermit<'_> {
        if let Some(bucket) = &self.bucket {
            let wait = {
                let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
                b.tokens = (b.tokens + elapsed * b.rate).min(b.capacity);
                b.last = now;
                b.tokens -= 1.0;
                if b.tokens >= 0.0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(-b.tokens / b.rate)
                }
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        // The semaphore is never closed.
        self.in_flight
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the limiter's semaphore is never closed"))
    }
}

/// A uniform random number in `[0, 1)` for backoff jitter.
fn jitter_unit(rng: &SystemRandom) -> f64 {
    let mut b = [0u8; 8];
    if rng.fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `attempt` (given the attempt number, from 1) under `limiter` until it succeeds, fails
/// permanently, or `policy.max_attempts` attempts have failed transiently. Between attempts it
/// sleeps with full-jitter exponential backoff, holding no permit. `attempt` returns the already
/// mapped error (see [`crate::error::classify`]); only [`signer_api::ErrorKind::Unavailable`] is
/// retried. The returned error is the last attempt's.
pub(crate) async fn with_retries<T, F, Fut>(
    limiter: &Limiter,
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<T, SignerError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, SignerError>>,
{
    let rng = SystemRandom::new();
    let max = policy.max_attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        let result = {
            let _permit = limiter.acquire().await;
            attempt(n).await
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && n < max => {
                let delay = policy.delay(n, jitter_unit(&rng));
                tracing::debug!(attempt = n, delay_ms = delay.as_millis() as u64, error = %e, "KMS request failed transiently; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signer_api::ErrorKind;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    fn fast_policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_succeed() {
        let limiter = Limiter::unlimited();
        let calls = AtomicU32::new(0);
        let out = with_retries(&limiter, &fast_policy(5), |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(SignerError::new(ErrorKind::Unavailable, "throttled"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(out.ok(), Some(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_fail_at_once_and_budget_is_bounded() {
        let limiter = Limiter::unlimited();
        let calls = AtomicU32::new(0);
        let e = with_retries(&limiter, &fast_policy(5), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(SignerError::new(ErrorKind::KeyPolicy, "disabled")) }
        })
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyPolicy);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let e = with_retries(&limiter, &fast_policy(4), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(SignerError::new(ErrorKind::Unavailable, "throttled")) }
        })
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_bounded_and_rate_is_kept() {
        let limiter = Arc::new(Limiter::new(Some((200.0, 1)), 3));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..60 {
            let (limiter, in_flight, peak) = (limiter.clone(), in_flight.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _p = limiter.acquire().await;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(peak.load(Ordering::SeqCst) <= 3);
        // 60 requests at 200/s with a burst of 1 take at least 59/200 s.
        assert!(elapsed >= 0.29, "{elapsed}");
    }

    #[test]
    fn jitter_is_in_unit_interval() {
        let rng = SystemRandom::new();
        for _ in 0..1000 {
            let u = jitter_unit(&rng);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
