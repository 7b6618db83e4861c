//! The key backends, chosen for each key URI by one explicit match. A URI whose backend is not
//! compiled into this binary fails with an error naming the cargo feature that adds it.
//!
//! [`Backends`] is built once per command from the configuration's `backends:` section and
//! shared by every CA, so PKCS#11 sessions and KMS clients and rate limits are shared too.

use std::sync::Arc;

use backend_file::{FileKeyGenerator, FileSigner};
use serde::Serialize;
use signer_api::keyuri::KeyUri;
use signer_api::signer::PrivateKeyMaterial;
use signer_api::{ErrorKind, KeyAlgorithm, KeyGenerator, Signer, SignerError};

use crate::config::BackendSettings;

/// What `keys list` shows about a key, beyond its public key.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyFacts {
    /// The backend (`file`, `pkcs11`, `awskms`).
    pub backend: &'static str,
    /// Where the key is, without secrets (file path, token/object, key ARN).
    pub location: String,
    /// Backend-specific attributes (`sensitive=true`, `state=Enabled`, ...).
    pub attributes: Vec<String>,
}

/// The configured backends.
pub struct Backends {
    #[cfg(feature = "pkcs11")]
    pkcs11: backend_pkcs11::Pkcs11Backend,
    #[cfg(feature = "kms")]
    kms: backend_kms::KmsBackend,
}

#[cfg(feature = "pkcs11")]
fn pkcs11_options(s: &crate::config::Pkcs11Settings) -> backend_pkcs11::Pkcs11Options {
    use crate::config::KeyPolicySetting as P;
    use backend_pkcs11::KeyPolicy;
    let policy = |p: P| match p {
        P::Refuse => KeyPolicy::Refuse,
        P::Warn => KeyPolicy::Warn,
        P::Allow => KeyPolicy::Allow,
    };
    let mut o = backend_pkcs11::Pkcs11Options::default();
    o.default_module_path = s.module_path.clone();
    o.pin_env = s.pin_env.clone();
    if let Some(n) = s.sessions {
        o.pool_size = n;
    }
    if let Some(p) = s.extractable_keys {
        o.extractable_keys = policy(p);
    }
    if let Some(p) = s.imported_keys {
        o.imported_keys = policy(p);
    }
    if let Some(n) = s.max_attempts {
        o.retry.max_attempts = n;
    }
    o
}

#[cfg(feature = "kms")]
fn kms_options(s: &crate::config::KmsSettings) -> backend_kms::KmsOptions {
    use backend_kms::{KmsOptions, MessageType, RateLimit, RetryPolicy};
    let mut o = KmsOptions::default();
    if let Some(m) = s.message_type {
        o = o.with_message_type(match m {
            crate::config::MessageTypeSetting::Digest => MessageType::Digest,
            crate::config::MessageTypeSetting::Raw => MessageType::Raw,
        });
    }
    if let Some(n) = s.max_concurrency {
        o = o.with_max_concurrency(n);
    }
    if let Some(r) = s.rate_limit {
        o = o.with_rate_limit(if r == 0.0 {
            RateLimit::Unlimited
        } else {
            RateLimit::per_second(r)
        });
    }
    if let Some(n) = s.max_attempts {
        let default = RetryPolicy::default();
        o = o.with_retry(RetryPolicy::new(
            n,
            default.base_backoff,
            default.max_backoff,
        ));
    }
    o
}

fn not_compiled(key: &KeyUri) -> SignerError {
    match key {
        KeyUri::Pkcs11(_) => SignerError::backend_not_compiled("pkcs11", "pkcs11"),
        KeyUri::AwsKms(_) => SignerError::backend_not_compiled("awskms", "kms"),
        _ => SignerError::backend_not_compiled(key.scheme(), key.scheme()),
    }
}

/// How many signatures to request from `key`'s backend at once: the configured session pool or
/// KMS concurrency, at most `cap`.
pub fn signing_concurrency(settings: &BackendSettings, key: &KeyUri, cap: usize) -> usize {
    let configured = match key {
        KeyUri::Pkcs11(_) => settings.pkcs11.sessions,
        KeyUri::AwsKms(_) => settings.awskms.max_concurrency,
        _ => None,
    };
    configured.unwrap_or(cap).clamp(1, cap)
}

/// Fails when the backend for `key` is not compiled into this binary.
pub fn check_compiled_in(key: &KeyUri) -> Result<(), SignerError> {
    match key {
        KeyUri::File(_) => Ok(()),
        #[cfg(feature = "pkcs11")]
        KeyUri::Pkcs11(_) => Ok(()),
        #[cfg(feature = "kms")]
        KeyUri::AwsKms(_) => Ok(()),
        other => Err(not_compiled(other)),
    }
}

impl Backends {
    /// The backends with the configuration's settings.
    pub fn new(settings: &BackendSettings) -> Self {
        let _ = settings;
        Backends {
            #[cfg(feature = "pkcs11")]
            pkcs11: backend_pkcs11::Pkcs11Backend::new(pkcs11_options(&settings.pkcs11)),
            #[cfg(feature = "kms")]
            kms: backend_kms::KmsBackend::new(kms_options(&settings.awskms)),
        }
    }

    /// Opens the signer for an existing key.
    pub async fn open_signer(&self, key: &KeyUri) -> Result<Arc<dyn Signer>, SignerError> {
        match key {
            KeyUri::File(f) => Ok(Arc::new(FileSigner::load(&f.path)?)),
            #[cfg(feature = "pkcs11")]
            KeyUri::Pkcs11(p) => Ok(self.pkcs11.open_signer(p).await?),
            #[cfg(feature = "kms")]
            KeyUri::AwsKms(k) => Ok(self.kms.open(k).await?),
            other => Err(not_compiled(other)),
        }
    }

    /// The key at `key` if one exists, opened; `None` when there is none (`ca init` never
    /// replaces a key, `ca import` never imports over one). Opening once here means an HSM or
    /// KMS key is looked up, and self-tested, once per command.
    pub async fn open_existing(
        &self,
        key: &KeyUri,
    ) -> Result<Option<Arc<dyn Signer>>, SignerError> {
        check_compiled_in(key)?;
        if let KeyUri::File(f) = key
            && std::fs::symlink_metadata(&f.path).is_err()
        {
            return Ok(None);
        }
        match self.open_signer(key).await {
            Ok(signer) => Ok(Some(signer)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a key inside the backend (for `file:`, a new key file).
    pub async fn generate(
        &self,
        key: &KeyUri,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        match key {
            KeyUri::File(_) => FileKeyGenerator.generate(key, algorithm).await,
            #[cfg(feature = "pkcs11")]
            KeyUri::Pkcs11(_) => self.pkcs11.generate(key, algorithm).await,
            #[cfg(feature = "kms")]
            KeyUri::AwsKms(_) => self.kms.generate(key, algorithm).await,
            other => Err(not_compiled(other)),
        }
    }

    /// Uses a key that exists in the backend but was not created by `ca init` (`--adopt`).
    pub async fn adopt(
        &self,
        key: &KeyUri,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        match key {
            KeyUri::File(f) => {
                let signer = FileSigner::load(&f.path)?;
                if signer.key_algorithm() != algorithm {
                    return Err(SignerError::new(
                        ErrorKind::KeyMismatch,
                        format!(
                            "{key} is a {} key, the configuration says {algorithm}",
                            signer.key_algorithm()
                        ),
                    ));
                }
                Ok(Arc::new(signer))
            }
            #[cfg(feature = "pkcs11")]
            KeyUri::Pkcs11(p) => Ok(self.pkcs11.adopt_key(p, Some(algorithm)).await?),
            #[cfg(feature = "kms")]
            KeyUri::AwsKms(k) => Ok(self.kms.adopt(k, Some(algorithm)).await?),
            other => Err(not_compiled(other)),
        }
    }

    /// Imports existing key material (`ca import`). The file backend cannot import: a file key
    /// is already where a file key goes.
    pub async fn import(
        &self,
        key: &KeyUri,
        material: PrivateKeyMaterial,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        match key {
            KeyUri::File(_) => Err(SignerError::new(
                ErrorKind::Unsupported,
                format!(
                    "{key}: importing into a file makes no sense; point the CA at the existing file instead"
                ),
            )),
            #[cfg(feature = "pkcs11")]
            KeyUri::Pkcs11(_) => {
                use signer_api::KeyImporter;
                self.pkcs11.import(key, material).await
            }
            #[cfg(feature = "kms")]
            KeyUri::AwsKms(_) => {
                use signer_api::KeyImporter;
                self.kms.import(key, material).await
            }
            other => {
                drop(material);
                Err(not_compiled(other))
            }
        }
    }

    /// Opens the key once and reports what `keys list` shows about it (an HSM key is opened,
    /// and self-tested, only once).
    pub async fn open_with_facts(
        &self,
        key: &KeyUri,
    ) -> Result<(Arc<dyn Signer>, KeyFacts), SignerError> {
        match key {
            KeyUri::File(f) => {
                let signer: Arc<dyn Signer> = Arc::new(FileSigner::load(&f.path)?);
                let mut attributes = Vec::new();
                #[cfg(unix)]
                if let Ok(meta) = std::fs::metadata(&f.path) {
                    use std::os::unix::fs::PermissionsExt;
                    attributes.push(format!("mode={:o}", meta.permissions().mode() & 0o777));
                }
                attributes.push("on-disk=true".into());
                let facts = KeyFacts {
                    backend: "file",
                    location: f.path.display().to_string(),
                    attributes,
                };
                Ok((signer, facts))
            }
            #[cfg(feature = "pkcs11")]
            KeyUri::Pkcs11(p) => {
                let signer = self.pkcs11.open_signer(p).await?;
                let facts = KeyFacts {
                    backend: "pkcs11",
                    location: signer.describe(),
                    attributes: signer.key_attributes().describe(),
                };
                Ok((signer, facts))
            }
            #[cfg(feature = "kms")]
            KeyUri::AwsKms(k) => {
                let signer = self.kms.open(k).await?;
                let info = self.kms.key_info(k).await?;
                let facts = KeyFacts {
                    backend: "awskms",
                    location: info.key_arn.clone(),
                    attributes: vec![
                        format!("spec={}", info.key_spec),
                        format!("state={}", info.key_state),
                        format!("usage={}", info.key_usage),
                        format!("origin={}", info.origin),
                    ],
                };
                Ok((signer, facts))
            }
            other => Err(not_compiled(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_backends_name_their_cargo_feature() {
        let p = KeyUri::parse("pkcs11:object=ca?pin-value=1234").unwrap();
        let k = KeyUri::parse("awskms:///alias/ca").unwrap();
        assert!(not_compiled(&p).to_string().contains("--features pkcs11"));
        assert!(not_compiled(&k).to_string().contains("--features kms"));
        assert!(!not_compiled(&p).to_string().contains("1234"));
        assert_eq!(check_compiled_in(&p).is_ok(), cfg!(feature = "pkcs11"));
        assert_eq!(check_compiled_in(&k).is_ok(), cfg!(feature = "kms"));
        assert!(check_compiled_in(&KeyUri::parse("file:/k").unwrap()).is_ok());
    }
}
