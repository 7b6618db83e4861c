//! Errors a caller acts on. Backends report a [`SignerError`] whose [`ErrorKind`] says whether to
//! retry, fix configuration or give up; the issuance engine reports an [`IssueError`] that says
//! which input or which step failed.

use std::fmt;

use crate::algorithm::KeyPolicyError;
use crate::csr::CsrError;
use crate::profile::CaRole;

/// What a caller can do about a backend failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key (or token, or file) named by the key URI does not exist.
    NotFound,
    /// The backend cannot do what was asked (algorithm, mechanism, capability).
    Unsupported,
    /// Authentication failed: wrong or locked PIN, missing permission. Never retried.
    Auth,
    /// A transient failure: the device or service may answer if asked again later.
    Unavailable,
    /// The key URI is malformed or names a backend that is not compiled in.
    InvalidKeyReference,
    /// The key does not belong to the CA certificate it was configured with.
    KeyMismatch,
    /// The key exists but may not be used as configured (extractable, wrong usage, disabled).
    KeyPolicy,
    /// Anything else the backend reported.
    Backend,
}

impl ErrorKind {
    /// Whether an operation that failed this way may succeed when repeated.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidKeyReference => "invalid key reference",
            ErrorKind::KeyMismatch => "key mismatch",
            ErrorKind::KeyPolicy => "key policy",
            ErrorKind::Backend => "backend error",
        })
    }
}

/// An error from a key backend: a kind to act on, a message that names the key, and the
/// backend's own error as the source.
#[derive(Debug)]
pub struct SignerError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl SignerError {
    /// A new error of `kind`. The message must say which key and what was expected; it must never
    /// contain a PIN or key material.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SignerError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the backend's own error as the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether repeating the operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The error for a key URI whose backend was not compiled into this binary.
    pub fn backend_not_compiled(scheme: &str, feature: &str) -> Self {
        SignerError::new(
            ErrorKind::InvalidKeyReference,
            format!(
                "key URI scheme {scheme}: is not supported by this build of kubesign; \
                 rebuild with `--features {feature}`"
            ),
        )
    }
}

impl fmt::Display for SignerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for SignerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The certificate signing request is unusable.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The subject's public key is not acceptable.
    #[error("subject public key: {0}")]
    SubjectKey(KeyPolicyError),
    /// The request does not fit the certificate profile it was submitted for.
    #[error("{0}")]
    Profile(String),
    /// The CA cannot issue at this time (for example, it has expired).
    #[error("{ca} CA: {reason}")]
    CaUnusable {
        /// The CA.
        ca: CaRole,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed to sign.
    #[error("{ca} CA: signing failed")]
    Signing {
        /// The CA.
        ca: CaRole,
        /// The backend's error.
        #[source]
        source: SignerError,
    },
    /// The backend returned a signature that does not verify with the CA public key. Nothing was
    /// released.
    #[error(
        "{ca} CA: the signature returned by the key backend does not verify against the CA \
         certificate's public key; the certificate was discarded (is the key URI pointing at the \
         right key, and does the backend sign what it is given?)"
    )]
    SignatureInvalid {
        /// The CA.
        ca: CaRole,
    },
    /// The audit record could not be written; the certificate was discarded.
    #[error("audit log: {0}; the certificate was discarded")]
    Audit(crate::audit::AuditError),
    /// Certificate encoding failed.
    #[error("encoding the certificate: {0}")]
    Encoding(String),
}

impl IssueError {
    /// Whether repeating the issuance may succeed (a transient backend failure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, IssueError::Signing { source, .. } if source.is_retryable())
    }
}

impl From<KeyPolicyError> for IssueError {
    fn from(e: KeyPolicyError) -> Self {
        IssueError::SubjectKey(e)
    }
}

impl From<crate::audit::AuditError> for IssueError {
    fn from(e: crate::audit::AuditError) -> Self {
        IssueError::Audit(e)
    }
}

impl From<der::Error> for IssueError {
    fn from(e: der::Error) -> Self {
        IssueError::Encoding(e.to_string())
    }
}

impl From<x509_cert::builder::Error> for IssueError {
    fn from(e: x509_cert::builder::Error) -> Self {
        IssueError::Encoding(e.to_string())
    }
}
