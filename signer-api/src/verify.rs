//! Signature verification with aws-lc-rs: CSR proof of possession, verify-after-sign, and chain
//! checks of existing certificates. Only the algorithms kubesign accepts are mapped.

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::algorithm::{KeyPolicyError, PublicKeyKind, oid};

/// Why a signature did not verify.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature algorithm is not one kubesign verifies.
    #[error(
        "signature algorithm {0} is not supported (expected RSA PKCS#1 v1.5 or ECDSA with SHA-256/384/512)"
    )]
    UnsupportedAlgorithm(ObjectIdentifier),
    /// The signature algorithm does not fit the key (e.g. an ECDSA signature with an RSA key).
    #[error("signature algorithm {alg} does not fit a {key} key")]
    AlgorithmKeyMismatch {
        /// The signature algorithm OID.
        alg: ObjectIdentifier,
        /// The key kind.
        key: PublicKeyKind,
    },
    /// The key is unacceptable.
    #[error(transparent)]
    Key(#[from] KeyPolicyError),
    /// The signature is wrong.
    #[error("signature does not verify")]
    BadSignature,
}

fn verification_algorithm(
    alg: &ObjectIdentifier,
    key: PublicKeyKind,
) -> Result<&'static dyn VerificationAlgorithm, VerifyError> {
    let mismatch = || VerifyError::AlgorithmKeyMismatch { alg: *alg, key };
    Ok(match (*alg, key) {
        (oid::SHA256_WITH_RSA, PublicKeyKind::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (oid::SHA384_WITH_RSA, PublicKeyKind::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (oid::SHA512_WITH_RSA, PublicKeyKind::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (oid::ECDSA_WITH_SHA256, PublicKeyKind::EcP256) => &sig::ECDSA_P256_SHA256_ASN1,
        (oid::ECDSA_WITH_SHA384, PublicKeyKind::EcP256) => &sig::ECDSA_P256_SHA384_ASN1,
        (oid::ECDSA_WITH_SHA512, PublicKeyKind::EcP256) => &sig::ECDSA_P256_SHA512_ASN1,
        (oid::ECDSA_WITH_SHA256, PublicKeyKind::EcP384) => &sig::ECDSA_P384_SHA256_ASN1,
        (oid::ECDSA_WITH_SHA384, PublicKeyKind::EcP384) => &sig::ECDSA_P384_SHA384_ASN1,
        (oid::ECDSA_WITH_SHA512, PublicKeyKind::EcP384) => &sig::ECDSA_P384_SHA512_ASN1,
        (
            oid::SHA256_WITH_RSA
            | oid::SHA384_WITH_RSA
            | oid::SHA512_WITH_RSA
            | oid::ECDSA_WITH_SHA256
            | oid::ECDSA_WITH_SHA384
            | oid::ECDSA_WITH_SHA512,
            _,
        ) => return Err(mismatch()),
        (other, _) => return Err(VerifyError::UnsupportedAlgorithm(other)),
    })
}

/// Verifies `signature` over `message` made by the key in `spki` with algorithm `alg`.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    let kind = PublicKeyKind::from_spki(spki)?;
    let algorithm = verification_algorithm(&alg.oid, kind)?;
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| KeyPolicyError::Malformed("subjectPublicKey has unused bits".into()))?;
    UnparsedPublicKey::new(algorithm, key_bytes)
        .verify(message, signature)
        .map_err(|_| VerifyError::BadSignature)
}

/// Verifies that `certificate` was signed by the key in `issuer_spki`.
pub fn verify_certificate_signature(
    certificate: &x509_cert::Certificate,
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> Result<(), VerifyError> {
    use der::Encode;
    let tbs = certificate
        .tbs_certificate()
        .to_der()
        .map_err(|e| KeyPolicyError::Malformed(format!("re-encoding the certificate: {e}")))?;
    let signature = certificate
        .signature()
        .as_bytes()
        .ok_or(VerifyError::BadSignature)?;
    if certificate.signature_algorithm() != certificate.tbs_certificate().signature() {
        return Err(VerifyError::BadSignature);
    }
    verify_signature(
        issuer_spki,
        certificate.signature_algorithm(),
        &tbs,
        signature,
    )
}

/// The SubjectKeyIdentifier kubesign computes: SHA-1 of the subjectPublicKey bits (RFC 5280
/// section 4.2.1.2, method 1), as Go's crypto/x509 and therefore kubeadm do.
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let bits = spki.subject_public_key.raw_bytes();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bits)
        .as_ref()
        .to_vec()
}
