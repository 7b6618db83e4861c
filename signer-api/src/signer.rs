//! The backend seam. A backend implements [`Signer`] for each key it holds; it may also implement
//! [`KeyGenerator`] and [`KeyImporter`] when it can create or take in keys. Everything else
//! (policy, certificate assembly, verification, audit) happens above this seam.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::SecretSlice;
use spki::SubjectPublicKeyInfoOwned;

use crate::algorithm::{KeyAlgorithm, SignatureAlgorithm};
use crate::error::SignerError;
use crate::keyuri::KeyUri;

/// A CA private key that can sign, wherever it lives.
///
/// Implementations must be cheap to share (`Arc<dyn Signer>`) and safe to call concurrently; a
/// backend that needs exclusive access to a device serializes or pools internally.
///
/// The trait is object safe.
#[async_trait]
pub trait Signer: Send + Sync + fmt::Debug {
    /// The X.509 signature algorithm this key signs with.
    fn algorithm(&self) -> SignatureAlgorithm;

    /// The key's public half, as a SubjectPublicKeyInfo.
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned;

    /// Signs `tbs` (the DER encoding of a TBSCertificate) and returns the X.509 signature value:
    /// a DER `Ecdsa-Sig-Value` for ECDSA, the PKCS#1 v1.5 signature for RSA. The backend hashes
    /// (or has the device hash) as [`Signer::algorithm`] says.
    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError>;

    /// A short human description of where the key lives, for logs and `keys list` (never secret).
    fn describe(&self) -> String;
}

/// A backend that can create a new key pair that never leaves it (except for `file:`, where the
/// key is written to the named path).
#[async_trait]
pub trait KeyGenerator: Send + Sync {
    /// Creates the key named by `key` with `algorithm`. Fails with
    /// [`ErrorKind::KeyPolicy`](crate::ErrorKind::KeyPolicy) when a key already exists there: a
    /// generator never replaces a key.
    async fn generate(
        &self,
        key: &KeyUri,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn Signer>, SignerError>;
}

/// Private key material on its way into a backend: PKCS#8 `PrivateKeyInfo` DER, zeroized on drop.
pub struct PrivateKeyMaterial {
    /// The key type.
    pub algorithm: KeyAlgorithm,
    /// The PKCS#8 DER encoding.
    pub pkcs8_der: SecretSlice<u8>,
}

impl fmt::Debug for PrivateKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyMaterial")
            .field("algorithm", &self.algorithm)
            .field("pkcs8_der", &"[REDACTED]")
            .finish()
    }
}

/// A backend that can take in an existing private key (moving a kubeadm CA into an HSM or KMS).
#[async_trait]
pub trait KeyImporter: Send + Sync {
    /// Stores `material` under `key` (as non-extractable where the backend supports it) and
    /// returns a signer for it. Never replaces an existing key.
    async fn import(
        &self,
        key: &KeyUri,
        material: PrivateKeyMaterial,
    ) -> Result<Arc<dyn Signer>, SignerError>;
}
