//! The PKCS#11 key backend: CA keys in an HSM (or SoftHSM), named by RFC 7512 `pkcs11:` URIs,
//! signing through cryptoki without the private key ever leaving the token.
//!
//! - [`open_signer`] / [`Pkcs11Backend::open_signer`] load an existing key as a [`Pkcs11Signer`]
//!   (a [`signer_api::Signer`]), applying the key policy in [`Pkcs11Options`].
//! - [`Pkcs11Backend`] also generates keys in the token ([`signer_api::KeyGenerator`]), imports
//!   PKCS#8 keys ([`signer_api::KeyImporter`]), adopts an existing key explicitly, and lists keys
//!   with their protection attributes ([`KeyInfo`], [`KeyAttributes`]).
//!
//! How the pieces fit:
//!
//! | module | role |
//! |---|---|
//! | [`options`] | caller settings: default module, pool size, PIN variable, key policies, retries |
//! | [`module`] | which library a URI names; one process-wide, once-initialised context per library |
//! | [`pin`] | the user PIN from `pin-source`, `pin-value` or an environment variable, as a secret |
//! | `token` | tokens found by identity (never by a cached slot), their pools of logged-in sessions, login state, retries |
//! | `key` | finding keys, reading their attributes, building their SubjectPublicKeyInfo |
//! | `signer` | [`Pkcs11Signer`]: mechanism choice and signing |
//! | `provision` | key generation and import |
//! | [`encoding`] | DER conversions (pure) |
//! | [`error`] | [`error::classify`], the one mapping from PKCS#11 return values to [`signer_api::ErrorKind`] |
//!
//! All PKCS#11 calls run on tokio's blocking pool; none runs on the async runtime's threads, so
//! every public async function here must be called within a tokio runtime.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::SecretString;
use signer_api::keyuri::{KeyUri, Pkcs11Uri};
use signer_api::signer::PrivateKeyMaterial;
use signer_api::{ErrorKind, KeyAlgorithm, KeyGenerator, KeyImporter, Signer, SignerError};

pub mod encoding;
pub mod error;
mod key;
pub mod module;
pub mod options;
pub mod pin;
mod provision;
mod signer;
mod token;

pub use error::{Disposition, classify};
pub use key::{KeyAttributes, KeyInfo};
pub use options::{KeyPolicy, Pkcs11Options, RetryPolicy, RsaMechanism};
pub use signer::Pkcs11Signer;
pub use token::TokenStats;

use key::KeySelector;
use token::{OpError, Token, blocking, with_retry};

/// The `pkcs11:` URI inside a key URI; any other scheme is an
/// [`ErrorKind::InvalidKeyReference`].
pub fn pkcs11_uri(key: &KeyUri) -> Result<&Pkcs11Uri, SignerError> {
    match key {
        KeyUri::Pkcs11(u) => Ok(u),
        other => Err(SignerError::new(
            ErrorKind::InvalidKeyReference,
            format!("the PKCS#11 backend cannot use {other}: expected a pkcs11: URI"),
        )),
    }
}

/// Resolves PIN and module, finds the token and logs it in.
async fn connect(uri: &Pkcs11Uri, options: &Pkcs11Options) -> Result<Arc<Token>, SignerError> {
    let (token, pin): (Arc<Token>, Option<SecretString>) = with_retry(options.retry, None, || {
        let uri = uri.clone();
        let options = options.clone();
        blocking("opening the token", move || {
            // The PIN first: an unreadable pin-source fails before any device is touched.
            let pin = pin::resolve_pin(&uri, &options)?;
            let path = module::resolve_module(&uri, &options)?;
            let (path, ctx) = module::context(&path)?;
            let token = token::lookup(&path, &ctx, &uri, options.effective_pool_size())?;
            Ok((token, pin))
        })
    })
    .await?;
    token
        .run(options.retry, move |t, session| {
            t.login(session, pin.as_ref()).map_err(OpError::from)
        })
        .await?;
    Ok(token)
}

/// Opens the existing private key `uri` names, with `options`. See [`Pkcs11Backend::open_signer`].
pub async fn open_signer(
    uri: &Pkcs11Uri,
    options: &Pkcs11Options,
) -> Result<Arc<Pkcs11Signer>, SignerError> {
    let selector = KeySelector::from_uri(uri)?;
    let token = connect(uri, options).await?;
    Ok(Arc::new(
        Pkcs11Signer::load(token, selector, options).await?,
    ))
}

/// The PKCS#11 backend with its options: opens, generates, imports, adopts and lists keys.
#[derive(Clone, Debug, Default)]
pub struct Pkcs11Backend {
    options: Pkcs11Options,
}

impl Pkcs11Backend {
    /// A backend with `options`.
    pub fn new(options: Pkcs11Options) -> Self {
        Pkcs11Backend { options }
    }

    /// The options.
    pub fn options(&self) -> &Pkcs11Options {
        &self.options
    }

    /// Opens the existing private key `uri` names: loads the module (once per process), finds the
    /// token by label/serial/manufacturer/model, logs in (once per process and token), finds the key
    /// by `object=`/`id=`, reads its public key and attributes, applies the key policy, picks the
    /// signing mechanism and makes a test signature.
    ///
    /// Errors: [`ErrorKind::NotFound`] (token or key missing), [`ErrorKind::Auth`] (PIN),
    /// [`ErrorKind::KeyPolicy`] (extractable or imported key refused, `CKA_SIGN` false),
    /// [`ErrorKind::KeyMismatch`] (the public key on the token is not the private key's),
    /// [`ErrorKind::Unsupported`], [`ErrorKind::InvalidKeyReference`], [`ErrorKind::Unavailable`].
    pub async fn open_signer(&self, uri: &Pkcs11Uri) -> Result<Arc<Pkcs11Signer>, SignerError> {
        open_signer(uri, &self.options).await
    }

    /// Uses an existing key for a new CA instead of generating one (the explicit alternative to
    /// [`Pkcs11Backend::generate_key`], which never reuses a key). With `Some(algorithm)`, the
    /// key must be of that type; otherwise [`ErrorKind::KeyMismatch`].
    pub async fn adopt_key(
        &self,
        uri: &Pkcs11Uri,
        algorithm: Option<KeyAlgorithm>,
    ) -> Result<Arc<Pkcs11Signer>, SignerError> {
        let signer = self.open_signer(uri).await?;
        if let Some(algorithm) = algorithm
            && signer.public_key_kind() != algorithm.public_key_kind()
        {
            return Err(SignerError::new(
                ErrorKind::KeyMismatch,
                format!(
                    "{}: the existing key is {}, not {algorithm}",
                    signer.describe(),
                    signer.public_key_kind()
                ),
            ));
        }
        tracing::info!(key = %signer.describe(), "adopted an existing PKCS#11 key");
        Ok(signer)
    }

    /// Generates a key pair of `algorithm` inside the token (see the `provision` rules: sensitive,
    /// never extractable, sign only), then opens it. Fails with [`ErrorKind::KeyPolicy`] when a
    /// key with the URI's label or id exists.
    pub async fn generate_key(
        &self,
        uri: &Pkcs11Uri,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<Pkcs11Signer>, SignerError> {
        let selector = KeySelector::from_uri(uri)?;
        let (label, id) = provision::new_key_identity(&selector)?;
        let token = connect(uri, &self.options).await?;
        {
            let _creating = provision::CREATION_LOCK.lock().await;
            let t = Arc::clone(&token);
            let (l, i) = (label.clone(), id.clone());
            blocking("generating a key", move || {
                provision::generate(&t, algorithm, &l, &i)
            })
            .await?;
        }
        let created = KeySelector {
            label: Some(label),
            id: Some(id),
        };
        Ok(Arc::new(
            Pkcs11Signer::load(token, created, &self.options).await?,
        ))
    }

    /// Imports `material` (PKCS#8) as a sensitive, non-extractable private key plus its public key
    /// object, then opens it. Refused with [`ErrorKind::KeyPolicy`] when the imported-key policy is
    /// [`KeyPolicy::Refuse`] or a key with the URI's label or id exists. The material is zeroized.
    pub async fn import_key(
        &self,
        uri: &Pkcs11Uri,
        material: PrivateKeyMaterial,
    ) -> Result<Arc<Pkcs11Signer>, SignerError> {
        if self.options.imported_keys == KeyPolicy::Refuse {
            return Err(SignerError::new(
                ErrorKind::KeyPolicy,
                "pkcs11: importing keys is refused by the imported-key policy \
                 (backends.pkcs11.importedKeys); generate the key in the token, or set the policy \
                 to Warn or Allow",
            ));
        }
        let selector = KeySelector::from_uri(uri)?;
        let (label, id) = provision::new_key_identity(&selector)?;
        let material = Arc::new(material);
        let m = Arc::clone(&material);
        let spki = blocking("checking the key to import", move || {
            provision::public_key_of(&m)
        })
        .await?;
        let token = connect(uri, &self.options).await?;
        {
            let _creating = provision::CREATION_LOCK.lock().await;
            let t = Arc::clone(&token);
            let (l, i) = (label.clone(), id.clone());
            let s = spki.clone();
            blocking("importing a key", move || {
                provision::import(&t, &material, &s, &l, &i)
            })
            .await?;
        }
        let signer = Pkcs11Signer::load(
            token,
            KeySelector {
                label: Some(label),
                id: Some(id),
            },
            &self.options,
        )
        .await?;
        if signer.public_key() != &spki {
            return Err(SignerError::new(
                ErrorKind::KeyMismatch,
                format!(
                    "{}: the imported key's public key differs from the material's",
                    signer.describe()
                ),
            ));
        }
        Ok(Arc::new(signer))
    }

    /// Lists the private keys on the token `uri` names (all of them, or those matching its
    /// `object=`/`id=`), with their kinds and protection attributes. Logs in, since private keys
    /// are private objects.
    pub async fn list_keys(&self, uri: &Pkcs11Uri) -> Result<Vec<KeyInfo>, SignerError> {
        let token = connect(uri, &self.options).await?;
        let sel = KeySelector {
            label: uri.object.clone(),
            id: uri.id.clone(),
        };
        token
            .run(self.options.retry, move |t, session| {
                key::list_keys(session, &sel, &t.target())
            })
            .await
    }

    /// The counters of the session pool of the token `uri` names, if this process has opened it.
    /// Makes no PKCS#11 call.
    pub fn token_stats(&self, uri: &Pkcs11Uri) -> Option<TokenStats> {
        let path: PathBuf = module::resolve_module(uri, &self.options).ok()?;
        token::registered(&path, uri).map(|t| t.stats())
    }
}

#[async_trait]
impl KeyGenerator for Pkcs11Backend {
    async fn generate(
        &self,
        key: &KeyUri,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        let signer: Arc<dyn Signer> = self.generate_key(pkcs11_uri(key)?, algorithm).await?;
        Ok(signer)
    }
}

#[async_trait]
impl KeyImporter for Pkcs11Backend {
    async fn import(
        &self,
        key: &KeyUri,
        material: PrivateKeyMaterial,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        let signer: Arc<dyn Signer> = self.import_key(pkcs11_uri(key)?, material).await?;
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn non_pkcs11_uris_are_rejected() {
        let backend = Pkcs11Backend::default();
        let file = KeyUri::parse("file:/tmp/ca.key").unwrap();
        let e = KeyGenerator::generate(&backend, &file, KeyAlgorithm::EcdsaP256)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidKeyReference);
        assert!(e.to_string().contains("file:/tmp/ca.key"), "{e}");
    }

    #[tokio::test]
    async fn public_or_cert_uris_are_rejected() {
        let KeyUri::Pkcs11(uri) = KeyUri::parse("pkcs11:object=a;type=public").unwrap() else {
            unreachable!()
        };
        let e = open_signer(&uri, &Pkcs11Options::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidKeyReference);
    }
}
