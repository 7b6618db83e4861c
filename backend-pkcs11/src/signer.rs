//! [`Pkcs11Signer`]: a private key in a token, signing through the token's session pool.
//!
//! ECDSA keys sign with `CKM_ECDSA` over a SHA-256 (P-256) or SHA-384 (P-384) digest computed in
//! software, and the raw `r || s` is re-encoded as the DER `Ecdsa-Sig-Value` X.509 wants. RSA keys
//! sign with `CKM_SHA256_RSA_PKCS` when the token reports it, else with `CKM_RSA_PKCS` over a
//! software DER `DigestInfo`. The mechanism is chosen once, from `C_GetMechanismList`, when the key
//! is loaded; loading also applies the key policy and makes one test signature that must verify
//! against the public key found on the token.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lc_rs::digest;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use signer_api::{ErrorKind, KeyAlgorithm, PublicKeyKind, SignatureAlgorithm, Signer, SignerError};
use spki::SubjectPublicKeyInfoOwned;

use crate::encoding::{Curve, ecdsa_raw_to_der, sha256_digest_info};
use crate::key::{KeyAttributes, KeySelector, find_private_key, hex_id, load_key};
use crate::options::{KeyPolicy, Pkcs11Options, RetryPolicy, RsaMechanism};
use crate::token::{OpError, Token, TokenStats};

/// How a key signs on its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SignMechanism {
    /// `CKM_ECDSA` over a software digest (SHA-256 for P-256, SHA-384 for P-384).
    Ecdsa(Curve),
    /// `CKM_SHA256_RSA_PKCS`: the token hashes.
    RsaSha256Pkcs,
    /// `CKM_RSA_PKCS` over a software `DigestInfo(SHA-256)`.
    RsaPkcsDigestInfo,
}

impl SignMechanism {
    fn name(self) -> &'static str {
        match self {
            SignMechanism::Ecdsa(_) => "CKM_ECDSA",
            SignMechanism::RsaSha256Pkcs => "CKM_SHA256_RSA_PKCS",
            SignMechanism::RsaPkcsDigestInfo => "CKM_RSA_PKCS",
        }
    }

    fn cryptoki(self) -> Mechanism<'static> {
        match self {
            SignMechanism::Ecdsa(_) => Mechanism::Ecdsa,
            SignMechanism::RsaSha256Pkcs => Mechanism::Sha256RsaPkcs,
            SignMechanism::RsaPkcsDigestInfo => Mechanism::RsaPkcs,
        }
    }

    /// What goes into `C_Sign` for a TBSCertificate.
    fn prepare(self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(match self {
            SignMechanism::Ecdsa(Curve::P256) => {
                digest::digest(&digest::SHA256, tbs).as_ref().to_vec()
            }
            SignMechanism::Ecdsa(Curve::P384) => {
                digest::digest(&digest::SHA384, tbs).as_ref().to_vec()
            }
            SignMechanism::RsaSha256Pkcs => tbs.to_vec(),
            SignMechanism::RsaPkcsDigestInfo => {
                sha256_digest_info(digest::digest(&digest::SHA256, tbs).as_ref())
                    .map_err(|e| SignerError::new(ErrorKind::Backend, e.0))?
            }
        })
    }

    /// Picks the mechanism for a key of `kind` from what the token reports.
    fn choose(
        token: &Token,
        kind: PublicKeyKind,
        curve: Option<Curve>,
        rsa: RsaMechanism,
        target: &str,
    ) -> Result<Self, SignerError> {
        let missing = |m: &str| {
            SignerError::new(
                ErrorKind::Unsupported,
                format!("pkcs11: {target}: the token does not offer {m} (C_GetMechanismList)"),
            )
        };
        match (kind, curve) {
            (PublicKeyKind::EcP256 | PublicKeyKind::EcP384, Some(curve)) => {
                if token.has_mechanism(MechanismType::ECDSA) {
                    Ok(SignMechanism::Ecdsa(curve))
                } else {
                    Err(missing("CKM_ECDSA"))
                }
            }
            (PublicKeyKind::Rsa { .. }, _) => {
                if rsa == RsaMechanism::Auto && token.has_mechanism(MechanismType::SHA256_RSA_PKCS)
                {
                    Ok(SignMechanism::RsaSha256Pkcs)
                } else if token.has_mechanism(MechanismType::RSA_PKCS) {
                    Ok(SignMechanism::RsaPkcsDigestInfo)
                } else {
                    Err(missing("CKM_SHA256_RSA_PKCS or CKM_RSA_PKCS"))
                }
            }
            _ => Err(SignerError::new(
                ErrorKind::Unsupported,
                format!("pkcs11: {target}: unsupported key {kind}"),
            )),
        }
    }
}

/// The key's handle, refreshed when the token says it went stale.
struct KeyHandle {
    handle: Mutex<ObjectHandle>,
    selector: KeySelector,
    /// `token "T"`
    token_target: String,
    /// `token "T" object "O" ...`
    target: String,
}

impl KeyHandle {
    fn sign(
        &self,
        token: &Token,
        session: &Session,
        mechanism: SignMechanism,
        data: &[u8],
    ) -> Result<Vec<u8>, OpError> {
        let mech = mechanism.cryptoki();
        let handle = *self.handle.lock().unwrap_or_else(|p| p.into_inner());
        match session.sign(&mech, handle, data) {
            Ok(sig) => Ok(sig),
            Err(CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, f)) => {
                // A private key is invisible once the token lost its login (another component
                // called C_Logout, or every session was closed): that is transient, and the pool
                // logs in again on the retry.
                if token.lost_login(session) {
                    return Err(OpError::ck(
                        CkError::Pkcs11(RvError::UserNotLoggedIn, f),
                        &self.target,
                    ));
                }
                // Handles may change when the token was reset: look the key up again, once.
                let fresh = find_private_key(session, &self.selector, &self.token_target)?;
                *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                session
                    .sign(&mech, fresh, data)
                    .map_err(|e| OpError::ck(e, &self.target))
            }
            Err(e) => Err(OpError::ck(e, &self.target)),
        }
    }
}

/// A private key in a PKCS#11 token. Cheap to share; signs concurrently through the token's
/// session pool (at most the pool size at once per token).
pub struct Pkcs11Signer {
    token: Arc<Token>,
    key: Arc<KeyHandle>,
    label: Option<String>,
    id: Vec<u8>,
    kind: PublicKeyKind,
    algorithm: SignatureAlgorithm,
    mechanism: SignMechanism,
    public_key: SubjectPublicKeyInfoOwned,
    attributes: KeyAttributes,
    retry: RetryPolicy,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("token", &self.token.label())
            .field("label", &self.label)
            .field("id", &hex_id(&self.id))
            .field("algorithm", &self.algorithm)
            .field("mechanism", &self.mechanism.name())
            .finish_non_exhaustive()
    }
}

fn apply_policy(
    policy: KeyPolicy,
    target: &str,
    what: &str,
    option: &str,
) -> Result<(), SignerError> {
    match policy {
        KeyPolicy::Allow => Ok(()),
        KeyPolicy::Warn => {
            tracing::warn!(key = %target, "PKCS#11 key {what}; used because the policy ({option}) is warn");
            Ok(())
        }
        KeyPolicy::Refuse => Err(SignerError::new(
            ErrorKind::KeyPolicy,
            format!(
                "pkcs11: {target}: the key {what}; refused by the key policy. Generate the key in \
                 the token instead, or set the policy {option} to warn or allow"
            ),
        )),
    }
}

impl Pkcs11Signer {
    /// Loads the key `selector` names on `token`: reads it, applies `options`' key policies,
    /// picks the mechanism and makes a test signature.
    pub(crate) async fn load(
        token: Arc<Token>,
        selector: KeySelector,
        options: &Pkcs11Options,
    ) -> Result<Self, SignerError> {
        let target = format!("{} {}", token.target(), selector.describe());
        let sel = selector.clone();
        let t = target.clone();
        let loaded = token
            .run(options.retry, move |tok, session| {
                let handle = find_private_key(session, &sel, &tok.target())?;
                load_key(session, handle, &t)
            })
            .await?;
        let attrs = loaded.attributes;
        if !attrs.sign {
            return Err(SignerError::new(
                ErrorKind::KeyPolicy,
                format!("pkcs11: {target}: the key may not sign (CKA_SIGN is false)"),
            ));
        }
        if attrs.extractable {
            apply_policy(
                options.extractable_keys,
                &target,
                "is extractable (CKA_EXTRACTABLE=true): it can be exported from the token",
                "backends.pkcs11.extractableKeys in the kubesign configuration",
            )?;
        }
        if !attrs.generated_in_token() {
            apply_policy(
                options.imported_keys,
                &target,
                &format!(
                    "was not generated in the token or was once exposed (CKA_LOCAL={}, \
                     CKA_ALWAYS_SENSITIVE={}, CKA_NEVER_EXTRACTABLE={}): a copy may exist outside it",
                    attrs.local, attrs.always_sensitive, attrs.never_extractable
                ),
                "backends.pkcs11.importedKeys in the kubesign configuration",
            )?;
        }
        if !attrs.sensitive {
            tracing::warn!(key = %target, "PKCS#11 key is not sensitive (CKA_SENSITIVE=false): its private value can be read from the token");
        }
        let mechanism = SignMechanism::choose(
            &token,
            loaded.kind,
            loaded.curve,
            options.rsa_mechanism,
            &target,
        )?;
        let algorithm = SignatureAlgorithm::for_key(loaded.kind).ok_or_else(|| {
            SignerError::new(
                ErrorKind::Unsupported,
                format!(
                    "pkcs11: {target}: no signature algorithm for {}",
                    loaded.kind
                ),
            )
        })?;
        let signer = Pkcs11Signer {
            key: Arc::new(KeyHandle {
                handle: Mutex::new(loaded.handle),
                selector,
                token_target: token.target(),
                target,
            }),
            token,
            label: loaded.label,
            id: loaded.id,
            kind: loaded.kind,
            algorithm,
            mechanism,
            public_key: loaded.public_key,
            attributes: attrs,
            retry: options.retry,
        };
        signer.self_test().await?;
        Ok(signer)
    }

    async fn self_test(&self) -> Result<(), SignerError> {
        let msg = b"kubesign PKCS#11 key self-test";
        let sig = self.sign_bytes(msg).await?;
        signer_api::verify::verify_signature(
            &self.public_key,
            &self.algorithm.algorithm_identifier(),
            msg,
            &sig,
        )
        .map_err(|e| {
            SignerError::new(
                ErrorKind::KeyMismatch,
                format!(
                    "pkcs11: {}: a test signature does not verify with the public key found on the \
                     token ({e}): the public key object with this id or label belongs to another key",
                    self.key.target
                ),
            )
        })
    }

    async fn sign_bytes(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        let mechanism = self.mechanism;
        let data: Arc<[u8]> = mechanism.prepare(tbs)?.into();
        let key = Arc::clone(&self.key);
        let raw = self
            .token
            .run(self.retry, move |token, session| {
                key.sign(token, session, mechanism, &data)
            })
            .await?;
        match mechanism {
            SignMechanism::Ecdsa(curve) => ecdsa_raw_to_der(curve, &raw).map_err(|e| {
                SignerError::new(
                    ErrorKind::Backend,
                    format!("pkcs11: {}: {}", self.key.target, e.0),
                )
            }),
            SignMechanism::RsaSha256Pkcs | SignMechanism::RsaPkcsDigestInfo => Ok(raw),
        }
    }

    /// The key's protection attributes, as read when it was loaded.
    pub fn key_attributes(&self) -> KeyAttributes {
        self.attributes
    }

    /// The key's type.
    pub fn public_key_kind(&self) -> PublicKeyKind {
        self.kind
    }

    /// The key's type as kubeadm names it, when it is one kubeadm generates (RSA 2048/3072/4096,
    /// ECDSA P-256/P-384).
    pub fn key_algorithm(&self) -> Option<KeyAlgorithm> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.public_key_kind() == self.kind)
    }

    /// `CKA_LABEL` of the private key.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// `CKA_ID` of the private key.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        self.token.label()
    }

    /// The token's serial number.
    pub fn token_serial(&self) -> &str {
        self.token.serial()
    }

    /// The PKCS#11 mechanism the key signs with (`CKM_ECDSA`, `CKM_SHA256_RSA_PKCS` or
    /// `CKM_RSA_PKCS`).
    pub fn mechanism(&self) -> &'static str {
        self.mechanism.name()
    }

    /// Counters of the token's session pool (shared with every key on the token).
    pub fn token_stats(&self) -> TokenStats {
        self.token.stats()
    }
}

#[async_trait]
impl Signer for Pkcs11Signer {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.public_key
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.sign_bytes(tbs).await
    }

    fn describe(&self) -> String {
        let mut s = format!("pkcs11 token={}", self.token.label());
        match &self.label {
            Some(l) => {
                s.push_str(" object=");
                s.push_str(l);
            }
            None => {
                s.push_str(" id=");
                s.push_str(&hex_id(&self.id));
            }
        }
        s.push_str(&format!(" ({}, {})", self.token.model(), self.kind));
        s
    }
}
