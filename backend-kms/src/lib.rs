//! The AWS KMS backend: CA keys that are asymmetric `SIGN_VERIFY` KMS keys and never leave KMS.
//!
//! Keys are named by `awskms:` URIs ([`AwsKmsUri`]): a key ID, `alias/NAME`, a key ARN or an alias
//! ARN, with an optional region and endpoint override.
//!
//! - [`open_signer`] loads a key: `GetPublicKey` once (the public key is cached), checks the key
//!   usage, the key spec (ECC_NIST_P256, ECC_NIST_P384, RSA_2048, RSA_3072, RSA_4096) and that
//!   the signing algorithm (ECDSA_SHA_256, ECDSA_SHA_384, RSASSA_PKCS1_V1_5_SHA_256 by spec) is
//!   among the key's. [`KmsSigner`] implements [`signer_api::Signer`]: by default it hashes the
//!   TBSCertificate locally and sends the digest (`MessageType=DIGEST`); RAW is an option.
//!   KMS returns ECDSA signatures in DER and RSA signatures as PKCS#1 bytes, which are exactly
//!   X.509 signature values.
//! - [`KmsBackend`] holds the SDK clients (one per region and endpoint, reused), the shared flow
//!   control (a concurrency bound and a token bucket per AWS quota), and implements
//!   [`signer_api::KeyGenerator`] (`CreateKey` + `CreateAlias`) and [`signer_api::KeyImporter`]
//!   (`ImportKeyMaterial` with `RSA_AES_KEY_WRAP_SHA_256`), plus [`KmsBackend::adopt`] for keys
//!   kubesign did not create and [`KmsBackend::key_info`] for listings.
//! - [`error::classify`] is the one mapping from SDK errors to [`signer_api::ErrorKind`]:
//!   throttling, KMS internal errors, timeouts and connection failures are transient and retried
//!   with jittered exponential backoff ([`RetryPolicy`]); disabled, pending-deletion, missing or
//!   forbidden keys fail at once with a message that says what to fix.
//!
//! Emulators differ from KMS: moto's `Sign` ignores `MessageType=DIGEST` and hashes the digest
//! again, so its DIGEST signatures do not verify. kubesign's issuance engine verifies every
//! signature against the CA public key before releasing a certificate, which turns such a backend
//! bug into [`signer_api::IssueError::SignatureInvalid`] instead of a bad certificate. Use
//! [`MessageType::Raw`] with moto.

pub mod backend;
pub mod error;
mod limiter;
pub mod options;
pub mod signer;
pub mod wrap;

use std::sync::{Arc, OnceLock};

pub use backend::{KmsBackend, KmsKeyInfo};
pub use error::{Classification, KmsOperation, classify, map_sdk_error};
pub use options::{KmsOptions, MessageType, RateLimit, RetryPolicy};
pub use signer::{KmsKeySpec, KmsSigner};
pub use signer_api::keyuri::AwsKmsUri;

/// The process-wide backend behind [`open_signer`] and [`key_info`]: standard AWS configuration
/// chain, default options. Its clients and limiters are shared by every signer opened through it.
pub fn shared_backend() -> &'static KmsBackend {
    static SHARED: OnceLock<KmsBackend> = OnceLock::new();
    SHARED.get_or_init(KmsBackend::default)
}

/// Opens the KMS key `uri` names, with `options`, through the [`shared_backend`]. See
/// [`KmsBackend::open_with`].
pub async fn open_signer(
    uri: &AwsKmsUri,
    options: &KmsOptions,
) -> Result<Arc<KmsSigner>, signer_api::SignerError> {
    shared_backend().open_with(uri, options).await
}

/// Describes the KMS key `uri` names (ARN, spec, state, origin, signing algorithms) through the
/// [`shared_backend`].
pub async fn key_info(uri: &AwsKmsUri) -> Result<KmsKeyInfo, signer_api::SignerError> {
    shared_backend().key_info(uri).await
}
