//! Lease-based leader election (coordination.k8s.io/v1), written by hand with optimistic
//! concurrency, following client-go's `leaderelection` semantics, so that only one replica signs.
//!
//! - A candidate acquires the Lease when it does not exist, when it has no holder, or when its
//!   record has not changed for `leaseDuration` as measured on the candidate's own clock since it
//!   first observed that record (so clock skew between nodes does not matter).
//! - The leader renews every `retryPeriod`. Every write carries the Lease's resourceVersion: two
//!   candidates racing for one Lease cannot both win; the loser gets 409 Conflict.
//! - **Fencing:** the leader may sign only until `renewDeadline` after the *start* of its last
//!   successful renewal ([`LeaderHandle::is_leading`] compares against that instant on every call,
//!   not when the renewal loop gets round to it). Another candidate can take over no earlier than
//!   `leaseDuration` after it observed that renewal, so `leaseDuration - renewDeadline` (5 s by
//!   default) is the margin for clock rate differences and for a signature already under way.
//! - On shutdown the leader releases the Lease (empty holder, `leaseDurationSeconds: 1`), so a
//!   standby replica takes over at its next retry instead of waiting out the lease.
//!
//! A ready-made crate was considered: the ones that fit kube 5 report leadership as a flag without
//! a deadline, which cannot express the fence above.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::LeaderElectionConfig;

/// What the elector last decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// Whether this replica holds the Lease.
    pub leading: bool,
    /// Until when it may sign; `None` while leading means "always" (leader election disabled).
    pub until: Option<Instant>,
}

/// A cheap, cloneable view of the leadership.
#[derive(Clone, Debug)]
pub struct LeaderHandle {
    rx: watch::Receiver<LeaderState>,
    /// Keeps the channel of [`LeaderHandle::always`] open.
    _always: Option<std::sync::Arc<watch::Sender<LeaderState>>>,
}

impl LeaderHandle {
    /// A handle that always leads (leader election disabled).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(LeaderState {
            leading: true,
            until: None,
        });
        LeaderHandle {
            rx,
            _always: Some(std::sync::Arc::new(tx)),
        }
    }

    /// Whether this replica may sign now: it leads and its fence deadline has not passed.
    pub fn is_leading(&self) -> bool {
        let s = *self.rx.borrow();
        s.leading && s.until.is_none_or(|u| Instant::now() < u)
    }

    /// Resolves every time this replica becomes the leader (including immediately, once, if it
    /// already leads).
    pub fn acquisitions(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        rx.mark_changed();
        futures::stream::unfold((rx, false), |(mut rx, mut was)| async move {
            loop {
                rx.changed().await.ok()?;
                let now = rx.borrow_and_update().leading;
                let became = now && !was;
                was = now;
                if became {
                    return Some(((), (rx, was)));
                }
            }
        })
    }
}

/// The elector for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    config: LeaderElectionConfig,
    tx: watch::Sender<LeaderState>,
    observed: Option<(LeaseSpec, Instant)>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("lease", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Why one attempt to acquire or renew failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused or failed.
    #[error("lease {lease}: {source}")]
    Api {
        /// The Lease.
        lease: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer within the renew deadline.
    #[error("lease {lease}: no answer within {0:?}", .timeout)]
    Timeout {
        /// The Lease.
        lease: String,
        /// How long we waited.
        timeout: Duration,
    },
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaderElector {
    /// An elector for `config.lease_name` in `namespace`, as `identity`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        identity: String,
        config: LeaderElectionConfig,
    ) -> (Self, LeaderHandle) {
        let (tx, rx) = watch::channel(LeaderState::default());
        (
            LeaderElector {
                api: Api::namespaced(client, namespace),
                name: config.lease_name.clone(),
                identity,
                config,
                tx,
                observed: None,
            },
            LeaderHandle { rx, _always: None },
        )
    }

    /// This replica's identity (the Lease's holderIdentity when it leads).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Runs until `shutdown` turns true, then releases the Lease if held. `on_change` is called
    /// with every change of leadership (for metrics and logs).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, on_change: impl Fn(bool)) {
        let mut leading = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let start = Instant::now();
            let attempt =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await;
            let result = match attempt {
                Ok(r) => r,
                Err(_) => Err(LeaseError::Timeout {
                    lease: self.name.clone(),
                    timeout: self.config.renew_deadline,
                }),
            };
            match result {
                Ok(true) => {
                    self.tx.send_replace(LeaderState {
                        leading: true,
                        until: Some(start + self.config.renew_deadline),
                    });
                    if !leading {
                        tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                        leading = true;
                        on_change(true);
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(lease = %self.name, "lost the lease to another replica; signing stopped");
                        leading = false;
                        on_change(false);
                    }
                    self.tx.send_replace(LeaderState::default());
                }
                Err(e) => {
                    let state = *self.tx.borrow();
                    let expired = state.until.is_none_or(|u| Instant::now() >= u);
                    if leading && expired {
                        tracing::error!(lease = %self.name, error = %e, "could not renew the lease within the renew deadline; signing stopped");
                        leading = false;
                        on_change(false);
                        self.tx.send_replace(LeaderState::default());
                    } else {
                        tracing::warn!(lease = %self.name, error = %e, "lease attempt failed");
                    }
                }
            }
            // client-go: JitterUntil(retryPeriod, 1.2) while acquiring, a flat retryPeriod while
            // renewing.
            let wait = if leading {
                self.config.retry_period
            } else {
                jitter(self.config.retry_period)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Stop signing first, then give the Lease up.
        self.tx.send_replace(LeaderState::default());
        if leading {
            on_change(false);
            match tokio::time::timeout(self.config.renew_deadline, self.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.name, "released the lease"),
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "could not release the lease; a standby takes over when it expires")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.name, "releasing the lease timed out; a standby takes over when it expires")
                }
            }
        }
    }

    fn api_err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            lease: self.name.clone(),
            source,
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round of client-go's `tryAcquireOrRenew`: `Ok(true)` when this replica holds the
    /// Lease after the call.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_err(e))?
        else {
            let now = micro_now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observed = created.spec.map(|s| (s, Instant::now()));
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.api_err(e)),
            };
        };
        let record = lease.spec.clone().unwrap_or_default();
        let now = Instant::now();
        let observed_at = match &self.observed {
            Some((spec, at)) if *spec == record => *at,
            _ => {
                self.observed = Some((record.clone(), now));
                now
            }
        };
        let holder = record.holder_identity.clone().unwrap_or_default();
        let duration = Duration::from_secs(
            u64::try_from(record.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let held_by_other = !holder.is_empty() && holder != self.identity;
        if held_by_other && now < observed_at + duration {
            return Ok(false);
        }
        let renewing = holder == self.identity;
        let stamp = micro_now();
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: if renewing {
                record.acquire_time.clone()
            } else {
                Some(stamp.clone())
            },
            renew_time: Some(stamp),
            lease_transitions: Some(if renewing || holder.is_empty() {
                record.lease_transitions.unwrap_or(0)
            } else {
                record.lease_transitions.unwrap_or(0).saturating_add(1)
            }),
            ..record
        });
        // The object carries its resourceVersion: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observed = updated.spec.map(|s| (s, Instant::now()));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.api_err(e)),
        }
    }

    /// Gives the Lease up: empty holder and a one-second duration, as client-go's release does.
    async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_err(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let now = micro_now();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| self.api_err(e))
    }
}

/// `d` stretched by a random factor in [1, 1.2), as client-go's `wait.Jitter(d, 1.2)` does.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if aws_lc_rs::rand::fill(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / 65536.0
    } else {
        0.5
    };
    d.mul_f64(1.0 + 0.2 * r)
}

/// This replica's identity: `$POD_NAME` or the host name, plus a random suffix (two processes on
/// one host, or a restarted pod, are different candidates), as client-go's `hostname_uuid`.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kubesign".into());
    let mut b = [0u8; 6];
    let suffix = if aws_lc_rs::rand::fill(&mut b).is_ok() {
        b.iter().map(|x| format!("{x:02x}")).collect()
    } else {
        std::process::id().to_string()
    };
    format!("{base}_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fence_closes_at_the_deadline_without_the_loop() {
        let (tx, rx) = watch::channel(LeaderState::default());
        let h = LeaderHandle { rx, _always: None };
        assert!(!h.is_leading());
        tx.send_replace(LeaderState {
            leading: true,
            until: Some(Instant::now() + Duration::from_millis(300)),
        });
        assert!(h.is_leading());
        tokio::time::sleep(Duration::from_millis(350)).await;
        // Nobody touched the state: the deadline alone closed the fence.
        assert!(
            !h.is_leading(),
            "no renewal for renewDeadline: stop signing"
        );
        assert!(LeaderHandle::always().is_leading());
    }

    #[tokio::test]
    async fn acquisitions_fire_on_each_rise() {
        use futures::StreamExt;
        let (tx, rx) = watch::channel(LeaderState::default());
        let h = LeaderHandle { rx, _always: None };
        let mut s = Box::pin(h.acquisitions());
        let up = LeaderState {
            leading: true,
            until: None,
        };
        tx.send_replace(up);
        assert_eq!(s.next().await, Some(()));
        tx.send_replace(up); // still leading: no new acquisition
        let quiet = tokio::time::timeout(Duration::from_millis(20), s.next()).await;
        assert!(quiet.is_err());
        tx.send_replace(LeaderState::default());
        let quiet = tokio::time::timeout(Duration::from_millis(20), s.next()).await;
        assert!(quiet.is_err());
        tx.send_replace(up);
        assert_eq!(s.next().await, Some(()));
        drop(tx);
        assert_eq!(s.next().await, None);
    }

    #[test]
    fn identity_and_jitter() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        assert!(a.contains('_'));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(2) && j < Duration::from_millis(2400));
        }
    }
}
