//! [`KmsSigner`]: one KMS asymmetric key, its public key fetched once at load, signing through
//! the shared flow control and retry loop.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::digest;
use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, MessageType as SdkMessageType, SigningAlgorithmSpec};
use signer_api::{ErrorKind, KeyAlgorithm, SignatureAlgorithm, Signer, SignerError};
use spki::SubjectPublicKeyInfoOwned;

use crate::error::{KmsOperation, classify, signer_error};
use crate::limiter::{Limiter, with_retries};
use crate::options::{MessageType, RAW_MESSAGE_LIMIT, RetryPolicy};

/// The KMS key specs kubesign signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KmsKeySpec {
    /// `ECC_NIST_P256`, signing with `ECDSA_SHA_256`.
    EccNistP256,
    /// `ECC_NIST_P384`, signing with `ECDSA_SHA_384`.
    EccNistP384,
    /// `RSA_2048`, signing with `RSASSA_PKCS1_V1_5_SHA_256`.
    Rsa2048,
    /// `RSA_3072`, signing with `RSASSA_PKCS1_V1_5_SHA_256`.
    Rsa3072,
    /// `RSA_4096`, signing with `RSASSA_PKCS1_V1_5_SHA_256`.
    Rsa4096,
}

impl KmsKeySpec {
    /// The AWS name, e.g. `ECC_NIST_P256`.
    pub fn as_str(self) -> &'static str {
        match self {
            KmsKeySpec::EccNistP256 => "ECC_NIST_P256",
            KmsKeySpec::EccNistP384 => "ECC_NIST_P384",
            KmsKeySpec::Rsa2048 => "RSA_2048",
            KmsKeySpec::Rsa3072 => "RSA_3072",
            KmsKeySpec::Rsa4096 => "RSA_4096",
        }
    }

    /// The spec for an AWS name; `None` for specs kubesign does not sign with.
    pub fn from_aws_name(name: &str) -> Option<Self> {
        Some(match name {
            "ECC_NIST_P256" => KmsKeySpec::EccNistP256,
            "ECC_NIST_P384" => KmsKeySpec::EccNistP384,
            "RSA_2048" => KmsKeySpec::Rsa2048,
            "RSA_3072" => KmsKeySpec::Rsa3072,
            "RSA_4096" => KmsKeySpec::Rsa4096,
            _ => return None,
        })
    }

    /// The spec that holds a kubeadm key type.
    pub fn for_algorithm(algorithm: KeyAlgorithm) -> Option<Self> {
        Some(match algorithm {
            KeyAlgorithm::EcdsaP256 => KmsKeySpec::EccNistP256,
            KeyAlgorithm::EcdsaP384 => KmsKeySpec::EccNistP384,
            KeyAlgorithm::Rsa2048 => KmsKeySpec::Rsa2048,
            KeyAlgorithm::Rsa3072 => KmsKeySpec::Rsa3072,
            KeyAlgorithm::Rsa4096 => KmsKeySpec::Rsa4096,
            _ => return None,
        })
    }

    /// The kubeadm key type.
    pub fn key_algorithm(self) -> KeyAlgorithm {
        match self {
            KmsKeySpec::EccNistP256 => KeyAlgorithm::EcdsaP256,
            KmsKeySpec::EccNistP384 => KeyAlgorithm::EcdsaP384,
            KmsKeySpec::Rsa2048 => KeyAlgorithm::Rsa2048,
            KmsKeySpec::Rsa3072 => KeyAlgorithm::Rsa3072,
            KmsKeySpec::Rsa4096 => KeyAlgorithm::Rsa4096,
        }
    }

    /// The X.509 signature algorithm certificates are signed with.
    pub fn signature_algorithm(self) -> SignatureAlgorithm {
        self.key_algorithm().signature_algorithm()
    }

    /// The KMS signing algorithm kubesign asks for.
    pub fn signing_algorithm(self) -> SigningAlgorithmSpec {
        match self {
            KmsKeySpec::EccNistP256 => SigningAlgorithmSpec::EcdsaSha256,
            KmsKeySpec::EccNistP384 => SigningAlgorithmSpec::EcdsaSha384,
            _ => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
        }
    }

    /// Whether AWS counts this key against the RSA (rather than the ECC) request quota.
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KmsKeySpec::Rsa2048 | KmsKeySpec::Rsa3072 | KmsKeySpec::Rsa4096
        )
    }

    pub(crate) fn sdk(self) -> KeySpec {
        KeySpec::from(self.as_str())
    }

    fn digest_algorithm(self) -> &'static digest::Algorithm {
        match self {
            KmsKeySpec::EccNistP384 => &digest::SHA384,
            _ => &digest::SHA256,
        }
    }
}

impl fmt::Display for KmsKeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CA key in AWS KMS. Cheap to share; safe to call concurrently (requests are bounded by the
/// shared limiter). Created by [`open_signer`](crate::open_signer) or a
/// [`KmsBackend`](crate::KmsBackend).
pub struct KmsSigner {
    pub(crate) uri: String,
    pub(crate) key_arn: String,
    pub(crate) spec: KmsKeySpec,
    pub(crate) public_key: SubjectPublicKeyInfoOwned,
    pub(crate) client: Client,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) message_type: MessageType,
    pub(crate) retry: RetryPolicy,
}

impl fmt::Debug for KmsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsSigner")
            .field("uri", &self.uri)
            .field("key_arn", &self.key_arn)
            .field("spec", &self.spec)
            .field("message_type", &self.message_type)
            .finish_non_exhaustive()
    }
}

impl KmsSigner {
    /// The key's ARN (or its key ID, when the service did not report an ARN).
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    /// The key spec.
    pub fn key_spec(&self) -> KmsKeySpec {
        self.spec
    }

    /// The message type this signer sends.
    pub fn message_type(&self) -> MessageType {
        self.message_type
    }

    /// The key URI the signer was opened with (redacted form).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn key_label(&self) -> String {
        if self.uri.contains(&self.key_arn) {
            self.uri.clone()
        } else {
            format!("{} ({})", self.uri, self.key_arn)
        }
    }

    /// The message to send for `tbs`: its digest, or `tbs` itself in RAW mode.
    fn message(&self, tbs: &[u8]) -> Result<(Vec<u8>, SdkMessageType), SignerError> {
        match self.message_type {
            MessageType::Digest => Ok((
                digest::digest(self.spec.digest_algorithm(), tbs)
                    .as_ref()
                    .to_vec(),
                SdkMessageType::Digest,
            )),
            MessageType::Raw => {
                if tbs.len() > RAW_MESSAGE_LIMIT {
                    return Err(SignerError::new(
                        ErrorKind::Unsupported,
                        format!(
                            "{}: the message is {} bytes, but KMS signs at most {RAW_MESSAGE_LIMIT} \
                             bytes with MessageType RAW; use DIGEST (the default) for this key",
                            self.key_label(),
                            tbs.len()
                        ),
                    ));
                }
                if tbs.is_empty() {
                    return Err(SignerError::new(
                        ErrorKind::Unsupported,
                        format!("{}: KMS cannot sign an empty message", self.key_label()),
                    ));
                }
                Ok((tbs.to_vec(), SdkMessageType::Raw))
            }
        }
    }
}

#[async_trait]
impl Signer for KmsSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.spec.signature_algorithm()
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.public_key
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        let (message, message_type) = self.message(tbs)?;
        let label = self.key_label();
        let label = label.as_str();
        let message = Blob::new(message);
        let out = with_retries(&self.limiter, &self.retry, |attempt| {
            let request = self
                .client
                .sign()
                .key_id(&self.key_arn)
                .message(message.clone())
                .message_type(message_type.clone())
                .signing_algorithm(self.spec.signing_algorithm());
            async move {
                request.send().await.map_err(|e| {
                    let c = classify(&e, KmsOperation::Sign, &self.key_arn);
                    let attempts =
                        (c.is_transient() && attempt >= self.retry.max_attempts).then_some(attempt);
                    signer_error(&c, &e, KmsOperation::Sign, label, attempts).with_source(e)
                })
            }
        })
        .await?;
        let signature = out
            .signature()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default();
        if signature.is_empty() {
            return Err(SignerError::new(
                ErrorKind::Backend,
                format!("{label}: KMS Sign returned no signature"),
            ));
        }
        Ok(signature)
    }

    fn describe(&self) -> String {
        format!("awskms {} ({})", self.key_arn, self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_map_to_algorithms() {
        for a in KeyAlgorithm::ALL {
            let s = KmsKeySpec::for_algorithm(a).unwrap();
            assert_eq!(s.key_algorithm(), a);
            assert_eq!(KmsKeySpec::from_aws_name(s.as_str()), Some(s));
            assert_eq!(s.sdk().as_str(), s.as_str());
        }
        assert_eq!(
            KmsKeySpec::EccNistP256.signature_algorithm(),
            SignatureAlgorithm::EcdsaP256Sha256
        );
        assert_eq!(
            KmsKeySpec::EccNistP384.signing_algorithm(),
            SigningAlgorithmSpec::EcdsaSha384
        );
        assert_eq!(
            KmsKeySpec::Rsa3072.signature_algorithm(),
            SignatureAlgorithm::RsaPkcs1Sha256
        );
        assert!(KmsKeySpec::from_aws_name("ECC_SECG_P256K1").is_none());
        assert!(KmsKeySpec::Rsa4096.is_rsa() && !KmsKeySpec::EccNistP384.is_rsa());
    }
}
