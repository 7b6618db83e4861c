//! Choosing a key backend for a key URI: one explicit match. A URI whose backend is not compiled
//! into this binary fails with an error naming the cargo feature that adds it.

use std::sync::Arc;

use backend_file::{FileKeyGenerator, FileSigner};
use signer_api::keyuri::KeyUri;
use signer_api::{KeyGenerator, Signer, SignerError};

/// Fails when the backend for `key` is not compiled into this binary.
pub fn check_compiled_in(key: &KeyUri) -> Result<(), SignerError> {
    match key {
        KeyUri::File(_) => Ok(()),
        KeyUri::Pkcs11(_) => Err(SignerError::backend_not_compiled("pkcs11", "pkcs11")),
        KeyUri::AwsKms(_) => Err(SignerError::backend_not_compiled("awskms", "kms")),
        _ => Err(SignerError::backend_not_compiled(key.scheme(), key.scheme())),
    }
}

/// Opens the signer for an existing key.
pub async fn open_signer(key: &KeyUri) -> Result<Arc<dyn Signer>, SignerError> {
    match key {
        KeyUri::File(f) => Ok(Arc::new(FileSigner::load(&f.path)?)),
        KeyUri::Pkcs11(_) => Err(SignerError::backend_not_compiled("pkcs11", "pkcs11")),
        KeyUri::AwsKms(_) => Err(SignerError::backend_not_compiled("awskms", "kms")),
        _ => Err(SignerError::backend_not_compiled(
            key.scheme(),
            key.scheme(),
        )),
    }
}

/// Whether a key already exists at `key` (used by `ca init`, which never replaces a key).
pub async fn key_exists(key: &KeyUri) -> Result<bool, SignerError> {
    match key {
        KeyUri::File(f) => Ok(std::fs::symlink_metadata(&f.path).is_ok()),
        _ => match open_signer(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == signer_api::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// The key generator for the backend that `key` names.
pub fn key_generator(key: &KeyUri) -> Result<Box<dyn KeyGenerator>, SignerError> {
    match key {
        KeyUri::File(_) => Ok(Box::new(FileKeyGenerator)),
        KeyUri::Pkcs11(_) => Err(SignerError::backend_not_compiled("pkcs11", "pkcs11")),
        KeyUri::AwsKms(_) => Err(SignerError::backend_not_compiled("awskms", "kms")),
        _ => Err(SignerError::backend_not_compiled(
            key.scheme(),
            key.scheme(),
        )),
    }
}
