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
    /// `issued` for a leaf certificate, `ca-created` for a self-signed CA certificate,
    /// `key-imported` when `ca import` moved the key of this CA certificate into a backend.
    pub event: &'static str,
    /// The signing CA.
    pub ca: CaRole,
    /// The CA key's URI, redacted (never a PIN).
    pub key: String,
    /// What the backend says the key is (a file path, a token and object, a KMS key ARN), so the
    /// record can be matched with the backend's own log (for example CloudTrail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_detail: Option<String>,
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
    /// The record for `cert` (whose DER is `der`), signed by `ca` with the key `key` at `now`.
    pub fn for_certificate(
        cert: &x509_cert::Certificate,
        der: &[u8],
        ca: CaRole,
        key: &str,
        now: std::time::SystemTime,
        context: RequestContext,
    ) -> Self {
        use crate::ca::{not_after, not_before, rfc3339, serial_hex, sha256_hex};
        use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
        let tbs = cert.tbs_certificate();
        let sans = match tbs.get_extension::<SubjectAltName>() {
            Ok(Some((_, san))) => crate::name::sans(&san)
                .iter()
                .map(ToString::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let key_usage = match tbs.get_extension::<KeyUsage>() {
            Ok(Some((_, ku))) => crate::policy::KeyUsageSet(ku.0)
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let ext_key_usage = match tbs.get_extension::<ExtendedKeyUsage>() {
            Ok(Some((_, eku))) => eku
                .0
                .iter()
                .map(crate::policy::ext_key_usage_name)
                .collect(),
            _ => Vec::new(),
        };
        let is_ca = matches!(tbs.get_extension::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca);
        AuditRecord {
            time: rfc3339(now),
            event: if is_ca { "ca-created" } else { "issued" },
            ca,
            key: key.to_owned(),
            key_detail: None,
            serial: serial_hex(tbs.serial_number()),
            subject: crate::name::display(tbs.subject()),
            sans,
            key_usage,
            ext_key_usage,
            not_before: rfc3339(not_before(cert)),
            not_after: rfc3339(not_after(cert)),
            certificate_sha256: sha256_hex(der),
            context,
        }
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .expect("invariant: AuditRecord serializes to JSON (plain strings and lists)")
    }
}

/// Why an audit record could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuditError {
    message: String,
    /// The I/O error; its text is already part of `message`.
    io: Option<std::io::Error>,
}

impl AuditError {
    /// A new error; `message` should name the log.
    pub fn new(message: impl Into<String>, io: Option<std::io::Error>) -> Self {
        AuditError {
            message: message.into(),
            io,
        }
    }

    /// The underlying I/O error, if any.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        self.io.as_ref()
    }
}

/// Storage for audit records. An error from `record` means the certificate must not be released.
/// A sink either makes the record durable before `record` returns (for a file: written and
/// fsynced), or it is a batch whose owner makes every record durable before releasing any
/// certificate (the CLI's all-or-nothing commands; see `kubesign_cli::audit_log::AuditBatch`).
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
