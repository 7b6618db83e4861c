//! The Prometheus metrics of `kubesign serve`, served at `/metrics` in the OpenMetrics text format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kubesign_serve_certificates_issued_total` | counter | `signer` |
//! | `kubesign_serve_failures_total` | counter | `signer`, `reason` |
//! | `kubesign_serve_signing_duration_seconds` | histogram | `backend`, `ca` |
//! | `kubesign_serve_queue_depth` | gauge | approved requests for served signers without a certificate |
//! | `kubesign_serve_in_flight` | gauge | requests being signed now |
//! | `kubesign_serve_leader` | gauge | 1 while this replica holds the lease (and may sign) |
//! | `kubesign_serve_ready` | gauge | 1 once the CA keys were loaded and matched their certificates |

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a request was not signed (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The request broke its signer's rules; it was marked Failed.
    SignerValidationFailure,
    /// `spec.request` does not parse; retried with backoff, as kube-controller-manager does.
    ParseError,
    /// The key backend is unavailable (transient); retried with backoff.
    BackendUnavailable,
    /// The key backend failed for another reason; retried with backoff.
    SigningError,
    /// The audit record could not be written; nothing was released; retried with backoff.
    AuditError,
    /// The CA cannot issue (expired); retried with backoff.
    CaUnusable,
    /// An API server call failed (5xx, timeout, conflict after retries); retried with backoff.
    ApiError,
}

impl FailureReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::SignerValidationFailure => "SignerValidationFailure",
            FailureReason::ParseError => "ParseError",
            FailureReason::BackendUnavailable => "BackendUnavailable",
            FailureReason::SigningError => "SigningError",
            FailureReason::AuditError => "AuditError",
            FailureReason::CaUnusable => "CaUnusable",
            FailureReason::ApiError => "ApiError",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignerLabels {
    signer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    signer: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    ca: String,
}

/// The metrics, cheap to clone (every handle shares its value).
#[derive(Clone)]
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    issued: Family<SignerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    signing: Family<BackendLabels, Histogram>,
    queue_depth: Gauge,
    in_flight: Gauge,
    leader: Gauge,
    ready: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubesign_serve");
        let issued = Family::<SignerLabels, Counter>::default();
        registry.register(
            "certificates_issued",
            "Certificates issued and written to a CertificateSigningRequest, by signer name",
            issued.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "failures",
            "Requests not signed, by signer name and reason",
            failures.clone(),
        );
        let signing = Family::<BackendLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "signing_duration_seconds",
            "Time to issue one certificate (build, backend signature, verification, audit), by key backend and CA",
            signing.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Approved CertificateSigningRequests for served signers that have no certificate and have not failed",
            queue_depth.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Requests being signed right now",
            in_flight.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and may sign, else 0",
            leader.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once the CA keys were loaded and matched their certificates, else 0",
            ready.clone(),
        );
        Metrics {
            registry: std::sync::Arc::new(registry),
            issued,
            failures,
            signing,
            queue_depth,
            in_flight,
            leader,
            ready,
        }
    }

    /// One certificate issued for `signer`.
    pub fn issued(&self, signer: &str) {
        self.issued
            .get_or_create(&SignerLabels {
                signer: signer.to_owned(),
            })
            .inc();
    }

    /// One request not signed.
    pub fn failed(&self, signer: &str, reason: FailureReason) {
        self.failures
            .get_or_create(&FailureLabels {
                signer: signer.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// One issuance took `took` on `backend` with `ca`.
    pub fn signing_took(&self, backend: &str, ca: &str, took: Duration) {
        self.signing
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
                ca: ca.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The number of requests waiting for a certificate.
    pub fn set_queue_depth(&self, n: usize) {
        self.queue_depth.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The in-flight gauge.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Whether this replica is ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new();
        m.issued("kubernetes.io/kubelet-serving");
        m.failed(
            "kubernetes.io/kubelet-serving",
            FailureReason::SignerValidationFailure,
        );
        m.signing_took("pkcs11", "kubernetes", Duration::from_millis(3));
        m.set_leader(true);
        m.set_queue_depth(2);
        let text = m.encode();
        for want in [
            "kubesign_serve_certificates_issued_total{signer=\"kubernetes.io/kubelet-serving\"} 1",
            "kubesign_serve_failures_total{signer=\"kubernetes.io/kubelet-serving\",reason=\"SignerValidationFailure\"} 1",
            "kubesign_serve_signing_duration_seconds_count{backend=\"pkcs11\",ca=\"kubernetes\"} 1",
            "kubesign_serve_leader 1",
            "kubesign_serve_queue_depth 2",
            "kubesign_serve_ready 0",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }
}
