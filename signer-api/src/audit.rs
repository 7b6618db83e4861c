//! The audit record: one JSON object per issued certificate, written before the certificate is
//! released. [`AuditSink`] is where it goes; the CLI provides an append-only JSON-lines file.

use async_trait::async_trait;
use serde::Serialize;

use crate::profile::CaRole;

/// Who asked for a certificate (for the CSR API: the requesting user).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Requester {
    /// The username.
    pub username: String,
    /// The user's UID, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The user's groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Where a request came from, recorded with the certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestContext {
    /// The profile or signer name (`apiserver`, `admin.conf`, `kubernetes.io/kubelet-serving`).
    pub profile: String,
    /// The source: a CSR file path, a certificate being renewed, or a CertificateSigningRequest.
    pub source: String,
    /// SHA-256 (hex) of the source request's DER, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// The requester, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// When the certificate was signed (RFC 3339, UTC).
    pub time: String,
    /// Always `issued`.
    pub event: &'static str,
    /// The signing CA.
    pub ca: CaRole,
    /// The CA key's URI, redacted (never a PIN).
    pub key: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// The subject, RFC 4514.
    pub subject: String,
    /// The SANs, as `DNS:x` / `IP:y`.
    pub sans: Vec<String>,
    /// Key usages.
    pub key_usage: Vec<String>,
    /// Extended key usages.
    pub ext_key_usage: Vec<String>,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// SHA-256 fingerprint of the certificate DER, lowercase hex.
    pub certificate_sha256: String,
    /// Where the request came from.
    #[serde(flatten)]
    pub context: RequestContext,
}

impl AuditRecord {
    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("invariant: AuditRecord serializes to JSON (plain strings and lists)")
    }
}

/// Why an audit record could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuditError {
    message: String,
    #[source]
    source: Option<std::io::Error>,
}

impl AuditError {
    /// A new error; `message` should name the log.
    pub fn new(message: impl Into<String>, source: Option<std::io::Error>) -> Self {
        AuditError { message: message.into(), source }
    }
}

/// Durable storage for audit records. `record` returns only once the record is durable (for a
/// file: written and fsynced); an error means the certificate must not be released.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Stores one record durably.
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditError>;
}

/// A sink that keeps records in memory: for tests and benchmarks, never for production.
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    records: std::sync::Mutex<Vec<AuditRecord>>,
}

impl MemoryAuditSink {
    /// The records so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        self.records
            .lock()
            .map_err(|_| AuditError::new("in-memory audit sink poisoned", None))?
            .push(record.clone());
        Ok(())
    }
}
