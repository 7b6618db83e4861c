//! The CertificateSigningRequest controller: kube-runtime's `reconcile` / `error_policy` pair over
//! a [`Context`], signing each approved request for a served signer name exactly once.
//!
//! One reconcile, for a request the cache says wants a certificate:
//!
//! 1. ignore it unless its signer is served, it is Approved and neither Denied nor Failed, and it
//!    has no certificate (kube-controller-manager's rules), and unless this replica leads;
//! 2. claim its UID (no two tasks of this process work on one request);
//! 3. re-read it from the API server, not the cache, and check step 1 again;
//! 4. parse `spec.request` and verify its proof of possession; validate it against the signer's
//!    rules; a broken rule appends `Failed` / `SignerValidationFailure` and a Warning Event;
//! 5. check the leadership fence again, issue (the engine records the audit entry, with the
//!    requester's username, UID and groups, before it returns the certificate), and keep the
//!    certificate in memory under the UID;
//! 6. write it to `status.certificate` through the `/status` subresource with the resourceVersion
//!    just read. On 409 Conflict: re-read; a certificate already there (ours from a write whose
//!    answer was lost, or another replica's) ends the work without signing again; otherwise the
//!    same certificate is written again. On any other failure the kept certificate is written by the
//!    next attempt; it is never signed twice by this process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use signer_api::IssueError;
use signer_api::audit::{RequestContext, Requester};

use super::leader::LeaderHandle;
use super::metrics::{FailureReason, Metrics};
use super::signers::SignerConfig;
use super::validation::{
    Conditions, RequestProblem, RequestView, SIGNER_VALIDATION_FAILURE, certificate_ttl,
    issuance_policy, issued_subject, parse_request, validate,
};
use crate::audit_log::JsonlAuditLog;
use crate::cas::LoadedCas;
use crate::config::ServeConfig;

/// How often a status write is retried after 409 Conflict within one reconcile.
const CONFLICT_ATTEMPTS: u32 = 5;
/// The first retry delay after an error; doubled per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    api: Api<CertificateSigningRequest>,
    recorder: Recorder,
    serve: ServeConfig,
    cas: LoadedCas,
    audit: JsonlAuditLog,
    leader: LeaderHandle,
    metrics: Metrics,
    state: Mutex<State>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("signers", &self.serve.signers.len())
            .finish_non_exhaustive()
    }
}

/// Per-request bookkeeping, keyed by UID.
#[derive(Default)]
struct State {
    /// Requests being worked on right now.
    in_flight: HashSet<String>,
    /// Certificates issued (and audited) but not yet written to their request.
    pending: HashMap<String, String>,
    /// Consecutive failures, for the backoff.
    failures: HashMap<String, u32>,
}

impl Context {
    /// The context for one controller.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        api: Api<CertificateSigningRequest>,
        recorder: Recorder,
        serve: ServeConfig,
        cas: LoadedCas,
        audit: JsonlAuditLog,
        leader: LeaderHandle,
        metrics: Metrics,
    ) -> Self {
        Context {
            api,
            recorder,
            serve,
            cas,
            audit,
            leader,
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain maps behind, still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops everything known about a request that no longer wants a certificate.
    fn forget(&self, uid: &str) {
        let mut s = self.state();
        s.pending.remove(uid);
        s.failures.remove(uid);
    }

    /// How many requests in `csrs` wait for a certificate from a served signer.
    pub fn queue_depth<'a>(
        &self,
        csrs: impl IntoIterator<Item = &'a CertificateSigningRequest>,
    ) -> usize {
        csrs.into_iter()
            .filter(|c| self.serve.signer(&c.spec.signer_name).is_some() && wants_certificate(c))
            .count()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Marks a UID as being worked on for as long as it lives.
struct InFlight<'a> {
    ctx: &'a Context,
    uid: String,
}

impl<'a> InFlight<'a> {
    fn enter(ctx: &'a Context, uid: &str) -> Option<Self> {
        if !ctx.state().in_flight.insert(uid.to_owned()) {
            return None;
        }
        ctx.metrics.in_flight().inc();
        Some(InFlight {
            ctx,
            uid: uid.to_owned(),
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ctx.state().in_flight.remove(&self.uid);
        self.ctx.metrics.in_flight().dec();
    }
}

/// Why a reconcile failed; every variant is retried with backoff by [`error_policy`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the request from the API server failed.
    #[error("reading CertificateSigningRequest {name}")]
    Read {
        /// The request.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// `spec.request` does not parse (kube-controller-manager retries these too).
    #[error("CertificateSigningRequest {name}: unable to parse spec.request: {reason}")]
    Parse {
        /// The request.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA could not issue: backend, audit log, expired CA.
    #[error("CertificateSigningRequest {name}: not signed")]
    Issue {
        /// The request.
        name: String,
        /// The engine's error.
        #[source]
        source: IssueError,
    },
    /// The signer's CA is not loaded (a configuration invariant was broken).
    #[error("CertificateSigningRequest {name}: {reason}")]
    CaNotLoaded {
        /// The request.
        name: String,
        /// What is missing.
        reason: String,
    },
    /// Writing the status failed.
    #[error("CertificateSigningRequest {name}: writing the status")]
    WriteStatus {
        /// The request.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The status kept changing between our read and our write.
    #[error(
        "CertificateSigningRequest {name}: the status changed under every one of {CONFLICT_ATTEMPTS} writes (409 Conflict)"
    )]
    Conflict {
        /// The request.
        name: String,
    },
}

impl Error {
    /// The metrics label for this failure.
    pub fn reason(&self) -> FailureReason {
        match self {
            Error::Parse { .. } => FailureReason::ParseError,
            Error::Issue { source, .. } => match source {
                e if e.is_retryable() => FailureReason::BackendUnavailable,
                IssueError::Audit(_) => FailureReason::AuditError,
                IssueError::CaUnusable { .. } => FailureReason::CaUnusable,
                _ => FailureReason::SigningError,
            },
            Error::CaNotLoaded { .. } => FailureReason::SigningError,
            Error::Read { .. } | Error::WriteStatus { .. } | Error::Conflict { .. } => {
                FailureReason::ApiError
            }
        }
    }
}

/// The error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The conditions of a request, read as kube-controller-manager reads them.
pub fn conditions(csr: &CertificateSigningRequest) -> Conditions {
    Conditions::read(
        csr.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .map(|c| (c.type_.as_str(), c.status.as_str())),
    )
}

fn certificate(csr: &CertificateSigningRequest) -> Option<&[u8]> {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .map(|c| c.0.as_slice())
        .filter(|c| !c.is_empty())
}

/// Whether a signer acts on the request: approved, not denied, not failed, no certificate yet.
pub fn wants_certificate(csr: &CertificateSigningRequest) -> bool {
    certificate(csr).is_none() && conditions(csr).actionable()
}

/// The key backend of a CA, from its key URI's scheme (`file`, `pkcs11`, `awskms`).
fn backend_of(key_uri: &str) -> &str {
    key_uri.split(':').next().unwrap_or("unknown")
}

/// Signs one CertificateSigningRequest if it is this controller's to sign.
pub async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let Some(signer) = ctx.serve.signer(&csr.spec.signer_name) else {
        return Ok(Action::await_change());
    };
    let name = csr.name_any();
    let uid = csr.uid().unwrap_or_default();
    if !wants_certificate(&csr) {
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }
    if !ctx.leader.is_leading() {
        // Every request is reconciled again when this replica becomes the leader; the requeue
        // also covers a leader whose fence closed and reopened without losing the Lease.
        return Ok(Action::requeue(ctx.serve.leader_election.lease_duration));
    }
    let Some(_claim) = InFlight::enter(&ctx, &uid) else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    // The cache may lag behind a certificate written a moment ago: decide on a fresh read.
    let fresh = ctx.api.get_opt(&name).await.map_err(|source| Error::Read {
        name: name.clone(),
        source,
    })?;
    let Some(fresh) = fresh.filter(|f| f.uid().as_deref() == Some(uid.as_str())) else {
        ctx.forget(&uid);
        return Ok(Action::await_change());
    };
    if !wants_certificate(&fresh) {
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }
    let pending = ctx.state().pending.get(&uid).cloned();
    let action = match pending {
        Some(pem) => write_certificate(&ctx, signer, fresh, pem).await?,
        None => sign(&ctx, signer, fresh).await?,
    };
    ctx.state().failures.remove(&uid);
    Ok(action)
}

/// Steps 4 to 6 for a request read just now.
async fn sign(
    ctx: &Context,
    signer: &SignerConfig,
    csr: CertificateSigningRequest,
) -> Result<Action, Error> {
    let name = csr.name_any();
    let uid = csr.uid().unwrap_or_default();
    let parsed = match parse_request(&csr.spec.request.0) {
        Ok(p) => p,
        Err(RequestProblem::Unparsable(reason)) => return Err(Error::Parse { name, reason }),
        Err(RequestProblem::UnsupportedKey(message)) => {
            return fail_request(ctx, signer, csr, message).await;
        }
    };
    let usages = csr.spec.usages.clone().unwrap_or_default();
    if let Err(e) = validate(&signer.kind, &RequestView::from_csr(&parsed), &usages) {
        return fail_request(ctx, signer, csr, e.0).await;
    }
    let ttl = certificate_ttl(csr.spec.expiration_seconds, signer.max_duration);
    let policy = match issuance_policy(&usages, ttl) {
        Ok(p) => p,
        Err(e) => return fail_request(ctx, signer, csr, e.0).await,
    };
    let ca = ctx.cas.get(signer.ca).map_err(|e| Error::CaNotLoaded {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    // The fence: sign only while the lease is certainly ours.
    if !ctx.leader.is_leading() {
        tracing::info!(csr = %name, "not signing: no longer the leader");
        return Ok(Action::requeue(ctx.serve.leader_election.lease_duration));
    }
    let context = RequestContext {
        profile: signer.name.clone(),
        source: format!("CertificateSigningRequest/{name} uid={uid}"),
        source_sha256: Some(signer_api::ca::sha256_hex(parsed.der())),
        requester: Some(Requester {
            username: csr.spec.username.clone().unwrap_or_default(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone().unwrap_or_default(),
        }),
    };
    let started = Instant::now();
    let result = ca
        .issue(
            &issued_subject(&parsed),
            &policy,
            SystemTime::now(),
            &ctx.audit,
            context,
        )
        .await;
    ctx.metrics.signing_took(
        backend_of(ca.key_uri()),
        signer.ca.config_name(),
        started.elapsed(),
    );
    let issued = result.map_err(|source| Error::Issue {
        name: name.clone(),
        source,
    })?;
    tracing::info!(
        csr = %name,
        signer = %signer.name,
        serial = %issued.record.serial,
        subject = %issued.record.subject,
        not_after = %issued.record.not_after,
        requester = %csr.spec.username.as_deref().unwrap_or(""),
        "certificate issued and audited"
    );
    ctx.state().pending.insert(uid, issued.pem.clone());
    write_certificate(ctx, signer, csr, issued.pem).await
}

/// Writes an issued certificate into `status.certificate`; see the module docs for 409 handling.
async fn write_certificate(
    ctx: &Context,
    signer: &SignerConfig,
    mut csr: CertificateSigningRequest,
    pem: String,
) -> Result<Action, Error> {
    let name = csr.name_any();
    let uid = csr.uid().unwrap_or_default();
    for _ in 0..CONFLICT_ATTEMPTS {
        csr.status.get_or_insert_with(Default::default).certificate =
            Some(ByteString(pem.clone().into_bytes()));
        let err = match ctx
            .api
            .replace_status(&name, &PostParams::default(), &csr)
            .await
        {
            Ok(_) => {
                ctx.forget(&uid);
                ctx.metrics.issued(&signer.name);
                tracing::info!(csr = %name, signer = %signer.name, "certificate written to the request");
                return Ok(Action::await_change());
            }
            Err(e) => e,
        };
        if !is_conflict(&err) {
            return Err(Error::WriteStatus { name, source: err });
        }
        let fresh = ctx.api.get_opt(&name).await.map_err(|source| Error::Read {
            name: name.clone(),
            source,
        })?;
        let Some(fresh) = fresh.filter(|f| f.uid().as_deref() == Some(uid.as_str())) else {
            tracing::warn!(csr = %name, "request deleted before its certificate was written; the certificate (in the audit log) is discarded");
            ctx.forget(&uid);
            return Ok(Action::await_change());
        };
        if let Some(existing) = certificate(&fresh) {
            if existing == pem.as_bytes() {
                tracing::info!(csr = %name, "certificate already written");
                ctx.metrics.issued(&signer.name);
            } else {
                tracing::warn!(csr = %name, "another signer wrote a certificate first; ours (in the audit log) is discarded");
            }
            ctx.forget(&uid);
            return Ok(Action::await_change());
        }
        if !conditions(&fresh).actionable() {
            tracing::warn!(csr = %name, "request denied or failed before its certificate was written; the certificate (in the audit log) is discarded");
            ctx.forget(&uid);
            return Ok(Action::await_change());
        }
        csr = fresh;
    }
    Err(Error::Conflict { name })
}

/// Appends `Failed` / `SignerValidationFailure` with `message` and records a Warning Event.
async fn fail_request(
    ctx: &Context,
    signer: &SignerConfig,
    mut csr: CertificateSigningRequest,
    message: String,
) -> Result<Action, Error> {
    let name = csr.name_any();
    let uid = csr.uid().unwrap_or_default();
    let mut written = false;
    for _ in 0..CONFLICT_ATTEMPTS {
        csr.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some(SIGNER_VALIDATION_FAILURE.into()),
                message: Some(message.clone()),
                last_update_time: Some(Time(Timestamp::now())),
                last_transition_time: None,
            });
        let err = match ctx
            .api
            .replace_status(&name, &PostParams::default(), &csr)
            .await
        {
            Ok(_) => {
                written = true;
                break;
            }
            Err(e) => e,
        };
        if !is_conflict(&err) {
            return Err(Error::WriteStatus { name, source: err });
        }
        let fresh = ctx.api.get_opt(&name).await.map_err(|source| Error::Read {
            name: name.clone(),
            source,
        })?;
        match fresh.filter(|f| f.uid().as_deref() == Some(uid.as_str())) {
            Some(f) if wants_certificate(&f) => csr = f,
            _ => {
                ctx.forget(&uid);
                return Ok(Action::await_change());
            }
        }
    }
    if !written {
        return Err(Error::Conflict { name });
    }
    ctx.forget(&uid);
    ctx.metrics
        .failed(&signer.name, FailureReason::SignerValidationFailure);
    tracing::warn!(csr = %name, signer = %signer.name, reason = SIGNER_VALIDATION_FAILURE, detail = %message, "request refused");
    let note: String = message.chars().take(1000).collect();
    let event = Event {
        type_: EventType::Warning,
        reason: SIGNER_VALIDATION_FAILURE.into(),
        note: Some(note),
        action: "Sign".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &csr.object_ref(&())).await {
        tracing::warn!(csr = %name, error = %chain(&e), "could not record the Warning event");
    }
    Ok(Action::await_change())
}

/// Requeues a failed reconcile with exponential backoff per request (1 s doubling to 5 min); a
/// request is never marked Failed for a transient error.
pub fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let uid = csr.uid().unwrap_or_default();
    let n = {
        let mut s = ctx.state();
        let n = s.failures.entry(uid).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(n);
    let reason = error.reason();
    ctx.metrics.failed(&csr.spec.signer_name, reason);
    tracing::warn!(
        csr = %csr.name_any(),
        signer = %csr.spec.signer_name,
        reason = reason.as_str(),
        error = %chain(error),
        retry_in = ?delay,
        "will retry"
    );
    Action::requeue(delay)
}

/// The delay before retry number `n` (1-based).
fn backoff(n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus;

    fn with(conds: &[(&str, &str)], cert: Option<&[u8]>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                certificate: cert.map(|c| ByteString(c.to_vec())),
                conditions: Some(
                    conds
                        .iter()
                        .map(|(t, s)| CertificateSigningRequestCondition {
                            type_: (*t).into(),
                            status: (*s).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn which_requests_want_a_certificate() {
        assert!(wants_certificate(&with(&[("Approved", "True")], None)));
        assert!(wants_certificate(&with(&[("Approved", "True")], Some(b""))));
        assert!(!wants_certificate(&with(
            &[("Approved", "True")],
            Some(b"x")
        )));
        assert!(!wants_certificate(&with(&[], None)));
        assert!(!wants_certificate(&CertificateSigningRequest::default()));
        assert!(!wants_certificate(&with(&[("Denied", "True")], None)));
        assert!(!wants_certificate(&with(
            &[("Approved", "True"), ("Failed", "True")],
            None
        )));
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn transient_failures_are_retried_and_labelled() {
        use signer_api::{CaRole, ErrorKind, SignerError};
        let issue = |source| Error::Issue {
            name: "n".into(),
            source,
        };
        let signing = |kind| IssueError::Signing {
            ca: CaRole::Kubernetes,
            source: SignerError::new(kind, "x"),
        };
        assert_eq!(
            issue(signing(ErrorKind::Unavailable)).reason(),
            FailureReason::BackendUnavailable
        );
        assert_eq!(
            issue(signing(ErrorKind::Auth)).reason(),
            FailureReason::SigningError
        );
        assert_eq!(
            issue(IssueError::Audit(signer_api::audit::AuditError::new(
                "full", None
            )))
            .reason(),
            FailureReason::AuditError
        );
        assert_eq!(
            issue(IssueError::CaUnusable {
                ca: CaRole::Etcd,
                reason: "expired".into()
            })
            .reason(),
            FailureReason::CaUnusable
        );
        assert_eq!(
            Error::Conflict { name: "n".into() }.reason(),
            FailureReason::ApiError
        );
        assert_eq!(
            Error::Parse {
                name: "n".into(),
                reason: "x".into()
            }
            .reason(),
            FailureReason::ParseError
        );
    }

    #[test]
    fn backend_labels() {
        assert_eq!(backend_of("pkcs11:token=k;object=ca"), "pkcs11");
        assert_eq!(backend_of("file:/k"), "file");
        assert_eq!(backend_of("awskms:///alias/x"), "awskms");
    }
}
