//! The heart of kubesign: everything about issuing a Kubernetes certificate that does not depend on
//! where the CA key lives.
//!
//! - [`Signer`] is the one thing a backend (file, PKCS#11, AWS KMS) implements: it names its
//!   [`SignatureAlgorithm`], reports its public key, and signs the DER bytes of a TBSCertificate.
//!   Creating and importing keys are separate capabilities ([`KeyGenerator`], [`KeyImporter`]).
//! - [`KeyUri`] names a key (`file:`, `pkcs11:` per RFC 7512, `awskms:`), parsed once into a typed
//!   value.
//! - [`profile`] holds kubeadm's certificate table: which CA signs which file, with which usages.
//! - [`csr`] parses a PKCS#10 request and checks its proof of possession.
//! - [`CertificateAuthority::issue`] applies the issuance policy, builds the certificate with
//!   `x509-cert`, has the backend sign it and verifies the signature against the CA public key
//!   before anything is returned.
//! - [`audit`] defines the record written for every issued certificate.
//!
//! This crate performs no file, network or device I/O; callers bring the bytes and the sinks.

pub mod algorithm;
pub mod audit;
pub mod ca;
pub mod csr;
pub mod error;
pub mod keyuri;
pub mod name;
pub mod pem;
pub mod policy;
pub mod profile;
pub mod signer;
pub mod verify;

pub use algorithm::{KeyAlgorithm, PublicKeyKind, SignatureAlgorithm};
pub use audit::{AuditRecord, AuditSink};
pub use ca::{CertificateAuthority, IssuedCertificate};
pub use csr::VerifiedCsr;
pub use error::{ErrorKind, IssueError, SignerError};
pub use keyuri::KeyUri;
pub use policy::IssuancePolicy;
pub use profile::{CaRole, CertProfile};
pub use signer::{KeyGenerator, KeyImporter, Signer};

/// Re-exports of the X.509 crates whose types appear in this API.
pub mod reexports {
    pub use der;
    pub use spki;
    pub use x509_cert;
}
