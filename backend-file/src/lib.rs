//! The file backend: CA private keys in PEM files on local disk, as kubeadm keeps them.
//!
//! Reads PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) keys:
//! RSA-2048, RSA-3072 and RSA-4096 (kubeadm's sizes), ECDSA P-256 and P-384. Key bytes read from disk are zeroized when
//! dropped; the parsed key lives in aws-lc, which clears it on free. Generation (`ca init`) writes
//! a new PKCS#8 key with mode 0600 and never replaces an existing file.
//!
//! This backend exists for development, CI and migration. Production CA keys belong in an HSM or
//! KMS, which is the point of kubesign.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use der::Decode;
use secrecy::SecretSlice;
use signer_api::keyuri::KeyUri;
use signer_api::signer::PrivateKeyMaterial;
use signer_api::{
    ErrorKind, KeyAlgorithm, KeyGenerator, PublicKeyKind, SignatureAlgorithm, Signer, SignerError,
};
use spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroizing;

enum Key {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A CA key held in a PEM file.
pub struct FileSigner {
    path: PathBuf,
    key: Key,
    algorithm: SignatureAlgorithm,
    key_algorithm: KeyAlgorithm,
    public_key: SubjectPublicKeyInfoOwned,
    rng: SystemRandom,
}

impl fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSigner")
            .field("path", &self.path)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn err(kind: ErrorKind, path: &Path, what: impl fmt::Display) -> SignerError {
    SignerError::new(kind, format!("{}: {what}", path.display()))
}

impl FileSigner {
    /// Loads the private key at `path`.
    pub fn load(path: &Path) -> Result<Self, SignerError> {
        let meta = fs::symlink_metadata(path).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::Backend
            };
            err(kind, path, "cannot read the key file").with_source(e)
        })?;
        if !meta.is_file() {
            return Err(err(
                ErrorKind::InvalidKeyReference,
                path,
                "is not a regular file (symlinks are refused)",
            ));
        }
        warn_if_readable_by_others(path, &meta);
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| {
            err(ErrorKind::Backend, path, "cannot read the key file").with_source(e)
        })?);
        Self::from_pem(path, &bytes)
    }

    /// Parses a PEM private key; `path` is only used in messages.
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Self, SignerError> {
        let (key_algorithm, key) = parse_private_key(path, pem)?;
        let spki_der = match &key {
            Key::Ecdsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Key::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| err(ErrorKind::Backend, path, "cannot encode the public key"))?;
        let public_key = SubjectPublicKeyInfoOwned::from_der(&spki_der)
            .map_err(|e| err(ErrorKind::Backend, path, format!("public key: {e}")))?;
        Ok(FileSigner {
            path: path.to_owned(),
            algorithm: key_algorithm.signature_algorithm(),
            key_algorithm,
            key,
            public_key,
            rng: SystemRandom::new(),
        })
    }

    /// The key's type.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// The key as PKCS#8 DER, for importing it into an HSM or KMS. Zeroized on drop.
    pub fn to_private_key_material(&self) -> Result<PrivateKeyMaterial, SignerError> {
        let der: Vec<u8> = match &self.key {
            Key::Ecdsa(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Key::Rsa(k) => k.as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| {
            err(
                ErrorKind::Backend,
                &self.path,
                "cannot encode the key as PKCS#8",
            )
        })?;
        Ok(PrivateKeyMaterial {
            algorithm: self.key_algorithm,
            pkcs8_der: SecretSlice::from(der),
        })
    }

    /// Signs synchronously (the async trait method calls this; file keys never block on I/O).
    pub fn sign_sync(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        match &self.key {
            Key::Ecdsa(k) => k
                .sign(&self.rng, tbs)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| err(ErrorKind::Backend, &self.path, "ECDSA signing failed")),
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.rng, tbs, &mut sig)
                    .map_err(|_| err(ErrorKind::Backend, &self.path, "RSA signing failed"))?;
                Ok(sig)
            }
        }
    }
}

#[async_trait]
impl Signer for FileSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.public_key
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.sign_sync(tbs)
    }

    fn describe(&self) -> String {
        format!("file {} ({})", self.path.display(), self.key_algorithm)
    }
}

fn ec_alg(a: KeyAlgorithm) -> Option<&'static EcdsaSigningAlgorithm> {
    match a {
        KeyAlgorithm::EcdsaP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyAlgorithm::EcdsaP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
        _ => None,
    }
}

fn rsa_algorithm(path: &Path, key: &RsaKeyPair) -> Result<KeyAlgorithm, SignerError> {
    let bits = key.public_modulus_len() * 8;
    match bits {
        2048 => Ok(KeyAlgorithm::Rsa2048),
        3072 => Ok(KeyAlgorithm::Rsa3072),
        4096 => Ok(KeyAlgorithm::Rsa4096),
        b if b < 2048 => Err(err(
            ErrorKind::KeyPolicy,
            path,
            format!("RSA key of {b} bits is too small: a CA key needs at least 2048 bits"),
        )),
        b => Err(err(
            ErrorKind::Unsupported,
            path,
            format!("RSA key of {b} bits: CA keys must be RSA-2048, RSA-3072 or RSA-4096"),
        )),
    }
}

fn parse_private_key(path: &Path, pem: &[u8]) -> Result<(KeyAlgorithm, Key), SignerError> {
    let blocks = signer_api::pem::decode_all(pem)
        .map_err(|e| err(ErrorKind::InvalidKeyReference, path, e))?;
    let mut labels = Vec::new();
    for block in blocks {
        let der = Zeroizing::new(block.der);
        labels.push(block.label.clone());
        match block.label.as_str() {
            "PRIVATE KEY" => {
                for a in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
                    if let Some(alg) = ec_alg(a)
                        && let Ok(k) = EcdsaKeyPair::from_pkcs8(alg, &der)
                    {
                        return Ok((a, Key::Ecdsa(k)));
                    }
                }
                return match RsaKeyPair::from_pkcs8(&der) {
                    Ok(k) => Ok((rsa_algorithm(path, &k)?, Key::Rsa(k))),
                    Err(e) => Err(err(
                        ErrorKind::Unsupported,
                        path,
                        format!(
                            "PKCS#8 key is not RSA (2048-4096 bits) or ECDSA P-256/P-384 ({e})"
                        ),
                    )),
                };
            }
            "EC PRIVATE KEY" => {
                for a in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
                    if let Some(alg) = ec_alg(a)
                        && let Ok(k) = EcdsaKeyPair::from_private_key_der(alg, &der)
                    {
                        return Ok((a, Key::Ecdsa(k)));
                    }
                }
                return Err(err(
                    ErrorKind::Unsupported,
                    path,
                    "EC key is not on P-256 or P-384",
                ));
            }
            "RSA PRIVATE KEY" => {
                let k = RsaKeyPair::from_der(&der).map_err(|e| {
                    err(
                        ErrorKind::InvalidKeyReference,
                        path,
                        format!("malformed RSA PRIVATE KEY ({e})"),
                    )
                })?;
                return Ok((rsa_algorithm(path, &k)?, Key::Rsa(k)));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(err(
                    ErrorKind::Unsupported,
                    path,
                    "encrypted PEM keys are not supported; decrypt it for migration with `openssl pkey`, \
                     or keep the key in an HSM or KMS",
                ));
            }
            _ => {}
        }
    }
    Err(err(
        ErrorKind::InvalidKeyReference,
        path,
        format!(
            "no private key found (PEM blocks: {}); expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY",
            labels.join(", ")
        ),
    ))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, meta: &fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "CA key file is accessible to group or others; chmod 0600");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _meta: &fs::Metadata) {}

/// Generates new file keys for `kubesign ca init`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileKeyGenerator;

impl FileKeyGenerator {
    /// Generates a key of `algorithm` and writes it as PKCS#8 PEM to `path` with mode 0600. The
    /// key is written to a temporary file in the same directory, fsynced and linked into place
    /// without replacing anything: an existing file (or symlink) at `path` is an error.
    pub fn generate_at(path: &Path, algorithm: KeyAlgorithm) -> Result<FileSigner, SignerError> {
        if fs::symlink_metadata(path).is_ok() {
            return Err(err(
                ErrorKind::KeyPolicy,
                path,
                "already exists; refusing to replace a CA key",
            ));
        }
        let pkcs8: Zeroizing<Vec<u8>> = Zeroizing::new(match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                let alg = ec_alg(algorithm)
                    .ok_or_else(|| err(ErrorKind::Unsupported, path, "unknown curve"))?;
                EcdsaKeyPair::generate(alg)
                    .and_then(|k| k.to_pkcs8v1())
                    .map(|d| d.as_ref().to_vec())
                    .map_err(|_| err(ErrorKind::Backend, path, "EC key generation failed"))?
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let size = match algorithm {
                    KeyAlgorithm::Rsa2048 => KeySize::Rsa2048,
                    KeyAlgorithm::Rsa3072 => KeySize::Rsa3072,
                    _ => KeySize::Rsa4096,
                };
                RsaKeyPair::generate(size)
                    .and_then(|k| k.as_der().map(|d| d.as_ref().to_vec()))
                    .map_err(|_| err(ErrorKind::Backend, path, "RSA key generation failed"))?
            }
            other => {
                return Err(err(
                    ErrorKind::Unsupported,
                    path,
                    format!("cannot generate {other}"),
                ));
            }
        });
        let pem = Zeroizing::new(signer_api::pem::encode("PRIVATE KEY", &pkcs8));
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".kubesign-key-")
            .permissions(private_mode())
            .tempfile_in(dir)
            .map_err(|e| {
                err(ErrorKind::Backend, path, "cannot create a temporary file").with_source(e)
            })?;
        tmp.write_all(pem.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| err(ErrorKind::Backend, path, "cannot write the key").with_source(e))?;
        tmp.persist_noclobber(path).map_err(|e| {
            let kind = if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                ErrorKind::KeyPolicy
            } else {
                ErrorKind::Backend
            };
            err(
                kind,
                path,
                "cannot move the new key into place without replacing a file",
            )
            .with_source(e.error)
        })?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        FileSigner::from_pem(path, pem.as_bytes())
    }
}

#[cfg(unix)]
fn private_mode() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o600)
}

#[cfg(not(unix))]
fn private_mode() -> fs::Permissions {
    fs::metadata(".")
        .map(|m| m.permissions())
        .unwrap_or_else(|_| unreachable!())
}

fn create_private_dir(dir: &Path) -> Result<(), SignerError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| err(ErrorKind::Backend, dir, "cannot create the key directory").with_source(e))
}

#[async_trait]
impl KeyGenerator for FileKeyGenerator {
    async fn generate(
        &self,
        key: &KeyUri,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        match key {
            KeyUri::File(f) => Ok(Arc::new(Self::generate_at(&f.path, algorithm)?)),
            other => Err(SignerError::new(
                ErrorKind::InvalidKeyReference,
                format!("the file backend cannot create {other}"),
            )),
        }
    }
}

/// The key kind the file's public key has; used by `keys list`.
pub fn public_key_kind(signer: &FileSigner) -> Option<PublicKeyKind> {
    PublicKeyKind::from_spki(&signer.public_key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use signer_api::verify::verify_signature;

    #[tokio::test]
    async fn generate_load_and_sign_each_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        for a in KeyAlgorithm::ALL {
            let path = dir.path().join(format!("{a}.key"));
            let generated = FileKeyGenerator::generate_at(&path, a).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(
                    fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
            let loaded = FileSigner::load(&path).unwrap();
            assert_eq!(loaded.public_key(), generated.public_key());
            assert_eq!(loaded.key_algorithm(), a);
            let sig = loaded.sign(b"to be signed").await.unwrap();
            verify_signature(
                loaded.public_key(),
                &loaded.algorithm().algorithm_identifier(),
                b"to be signed",
                &sig,
            )
            .unwrap();
            // Never replaces.
            let again = FileKeyGenerator::generate_at(&path, a).unwrap_err();
            assert_eq!(again.kind(), ErrorKind::KeyPolicy);
        }
    }

    #[test]
    fn reads_sec1_pkcs1_and_pkcs8_from_other_tools() {
        // rcgen/aws-lc produce PKCS#8; convert to SEC1 and PKCS#1 through aws-lc encoders.
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let sec1 = ec.private_key().as_der().unwrap();
        let pem = signer_api::pem::encode("EC PRIVATE KEY", sec1.as_ref());
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{pem}"
        );
        let s = FileSigner::from_pem(Path::new("ec.key"), with_params.as_bytes()).unwrap();
        assert_eq!(s.key_algorithm(), KeyAlgorithm::EcdsaP256);

        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = rsa.as_der().unwrap();
        let pem = signer_api::pem::encode("PRIVATE KEY", pkcs8.as_ref());
        assert_eq!(
            FileSigner::from_pem(Path::new("rsa.key"), pem.as_bytes())
                .unwrap()
                .key_algorithm(),
            KeyAlgorithm::Rsa2048
        );
    }

    #[test]
    fn clear_errors() {
        let e = FileSigner::from_pem(
            Path::new("x.key"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("x.key") && e.to_string().contains("no private key"),
            "{e}"
        );
        let e = FileSigner::from_pem(
            Path::new("x.key"),
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let e = FileSigner::load(Path::new("/nonexistent/ca.key")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
