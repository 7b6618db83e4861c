//! Caller-supplied settings for the PKCS#11 backend: the default module, the session pool size,
//! where a PIN may come from besides the key URI, what to do with keys whose attributes show they
//! could have existed outside the token, and how hard to retry a token that stops answering.

use std::path::PathBuf;
use std::time::Duration;

/// What to do with a key whose attributes fall short of "generated in the token, never
/// extractable".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyPolicy {
    /// Refuse to use the key: loading fails with
    /// [`ErrorKind::KeyPolicy`](signer_api::ErrorKind::KeyPolicy).
    Refuse,
    /// Use the key and log a warning naming it.
    Warn,
    /// Use the key silently.
    Allow,
}

impl KeyPolicy {
    /// The lower-case name used in messages and configuration (`refuse`, `warn`, `allow`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPolicy::Refuse => "refuse",
            KeyPolicy::Warn => "warn",
            KeyPolicy::Allow => "allow",
        }
    }
}

impl std::fmt::Display for KeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How RSA keys sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RsaMechanism {
    /// `CKM_SHA256_RSA_PKCS` when the token reports it, else `CKM_RSA_PKCS` over a DER
    /// `DigestInfo` built from a SHA-256 digest computed in software.
    #[default]
    Auto,
    /// Always `CKM_RSA_PKCS` over a software `DigestInfo`, even when the token offers the combined
    /// mechanism (for tokens whose combined mechanism is broken or slow, and for tests).
    RawPkcs1,
}

/// Bounded exponential backoff with jitter for transient token failures
/// ([`ErrorKind::Unavailable`](signer_api::ErrorKind::Unavailable)).
///
/// Attempt `n` (counting from 1) that fails transiently is followed by a pause of
/// `min(max_backoff, initial_backoff * 2^(n-1))`, of which the second half is random, until
/// `max_attempts` attempts have been made. Authentication failures are never retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// The pause after the first failed attempt.
    pub initial_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            // A flaky device (one transient failure in three) then fails a signature with
            // probability 0.3^8 ≈ 7e-5; the pauses stay under ~6 s in all.
            max_attempts: 8,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The pause after failed attempt `attempt` (1-based), before jitter is applied: exponential,
    /// capped at `max_backoff`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The pause after failed attempt `attempt`: half of [`RetryPolicy::backoff_ceiling`] plus a
    /// random share of the other half.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.backoff_ceiling(attempt);
        let half = ceiling / 2;
        let mut r = [0u8; 4];
        // Without randomness the pause is simply the ceiling; jitter is a nicety, not a guarantee.
        if aws_lc_rs::rand::fill(&mut r).is_err() {
            return ceiling;
        }
        let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        half + (ceiling - half).mul_f64(frac)
    }
}

/// Settings for [`Pkcs11Backend`](crate::Pkcs11Backend) and [`open_signer`](crate::open_signer).
///
/// Construct with [`Pkcs11Options::default`] and assign the fields to change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pkcs11Options {
    /// The PKCS#11 module used when the key URI has neither `module-path` nor `module-name`.
    pub default_module_path: Option<PathBuf>,
    /// Logged-in sessions kept per token (shared by every key on that token in this process).
    /// At most this many PKCS#11 operations run on the token at once. Values below 1 count as 1.
    /// Only the first opener of a token in a process sets it.
    pub pool_size: usize,
    /// The name of an environment variable holding the user PIN, used when the URI has neither
    /// `pin-source` nor `pin-value`.
    pub pin_env: Option<String>,
    /// Keys with `CKA_EXTRACTABLE` true. Default: [`KeyPolicy::Refuse`].
    pub extractable_keys: KeyPolicy,
    /// Keys that were not generated in the token or were once exposed (`CKA_LOCAL`,
    /// `CKA_ALWAYS_SENSITIVE` or `CKA_NEVER_EXTRACTABLE` false), which is what an imported key
    /// looks like. Default: [`KeyPolicy::Warn`]. With [`KeyPolicy::Refuse`], import is refused too.
    pub imported_keys: KeyPolicy,
    /// Retrying transient failures.
    pub retry: RetryPolicy,
    /// Which mechanism RSA keys sign with.
    pub rsa_mechanism: RsaMechanism,
}

impl Default for Pkcs11Options {
    fn default() -> Self {
        Pkcs11Options {
            default_module_path: None,
            pool_size: std::thread::available_parallelism().map_or(2, |n| n.get()),
            pin_env: None,
            extractable_keys: KeyPolicy::Refuse,
            imported_keys: KeyPolicy::Warn,
            retry: RetryPolicy::default(),
            rsa_mechanism: RsaMechanism::Auto,
        }
    }
}

impl Pkcs11Options {
    /// The effective pool size (at least 1).
    pub fn effective_pool_size(&self) -> usize {
        self.pool_size.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(50));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(40), Duration::from_secs(2));
        for attempt in 1..10 {
            let b = p.backoff(attempt);
            assert!(b <= p.backoff_ceiling(attempt));
            assert!(b >= p.backoff_ceiling(attempt) / 2);
        }
    }

    #[test]
    fn defaults() {
        let o = Pkcs11Options::default();
        assert_eq!(o.extractable_keys, KeyPolicy::Refuse);
        assert_eq!(o.imported_keys, KeyPolicy::Warn);
        assert!(o.effective_pool_size() >= 1);
    }
}
