//! PKCS#11 modules: which shared library a key URI names, and the one process-wide cryptoki
//! context per library.
//!
//! `C_Initialize` may succeed only once per process and library, and several contexts on one
//! library have crashed SoftHSM; so every context lives in a global registry keyed by the
//! module's canonical path, is initialised once with `CKF_OS_LOCKING_OK` (the module does its own
//! locking, sessions are used from several threads), and is never finalised.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use signer_api::keyuri::Pkcs11Uri;
use signer_api::{ErrorKind, SignerError};

use crate::error::pkcs11_error;
use crate::options::Pkcs11Options;

/// Directories searched, in order, for `module-name=NAME` (as `NAME`, `NAME.so`, `libNAME.so`).
pub const MODULE_DIRS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/lib/softhsm",
];

/// The module a key URI names: `module-path`, else `module-name` looked up in [`MODULE_DIRS`],
/// else the configured default. The file must exist.
pub fn resolve_module(uri: &Pkcs11Uri, options: &Pkcs11Options) -> Result<PathBuf, SignerError> {
    resolve_module_in(uri, options, &MODULE_DIRS)
}

fn resolve_module_in(
    uri: &Pkcs11Uri,
    options: &Pkcs11Options,
    dirs: &[&str],
) -> Result<PathBuf, SignerError> {
    let invalid = |m: String| SignerError::new(ErrorKind::InvalidKeyReference, m);
    let path = if let Some(p) = &uri.module_path {
        p.clone()
    } else if let Some(name) = &uri.module_name {
        if name.is_empty() || name.contains('/') || name.contains("..") {
            return Err(invalid(format!(
                "pkcs11: module-name={name:?} must be a bare library name such as softhsm2; \
                 use module-path= for a path"
            )));
        }
        let candidates = [name.clone(), format!("{name}.so"), format!("lib{name}.so")];
        let found = dirs.iter().find_map(|d| {
            candidates
                .iter()
                .map(|c| Path::new(d).join(c))
                .find(|p| p.is_file())
        });
        match found {
            Some(p) => p,
            None => {
                return Err(invalid(format!(
                    "pkcs11: module-name={name:?} was not found as {} in {}; \
                     give the library with module-path= instead",
                    candidates.join(", "),
                    dirs.join(", ")
                )));
            }
        }
    } else if let Some(p) = &options.default_module_path {
        p.clone()
    } else {
        return Err(invalid(
            "pkcs11: no PKCS#11 module: add module-path=/path/to/module.so to the key URI \
             or configure a default module (backends.pkcs11.modulePath)"
                .into(),
        ));
    };
    if !path.is_file() {
        return Err(invalid(format!(
            "pkcs11: PKCS#11 module {} does not exist or is not a file",
            path.display()
        )));
    }
    Ok(path)
}

type Registry = Mutex<HashMap<PathBuf, Pkcs11>>;

fn registry() -> &'static Registry {
    static CONTEXTS: OnceLock<Registry> = OnceLock::new();
    CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The canonical form of a module path, the key of the context registry.
pub(crate) fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The process-wide context for the module at `path`, loading and initialising it on first use.
/// Blocking (dlopen and `C_Initialize`): call from a blocking thread.
pub(crate) fn context(path: &Path) -> Result<(PathBuf, Pkcs11), SignerError> {
    let key = canonical(path);
    // A poisoned lock only means another thread panicked while holding it; the map is still
    // consistent because it is only ever inserted into after a successful initialisation.
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = map.get(&key) {
        return Ok((key, ctx.clone()));
    }
    let ctx = Pkcs11::new(&key).map_err(|e| {
        SignerError::new(
            ErrorKind::InvalidKeyReference,
            format!("pkcs11: cannot load PKCS#11 module {}", key.display()),
        )
        .with_source(e)
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
            // Someone else in this process (another library) initialised the module; its state
            // is shared, which is what we want.
            tracing::warn!(module = %key.display(), "PKCS#11 module was already initialised in this process by another component");
        }
        Err(e) => {
            return Err(pkcs11_error(e, &format!("module {}", key.display())));
        }
    }
    tracing::debug!(module = %key.display(), "PKCS#11 module initialised");
    map.insert(key.clone(), ctx.clone());
    Ok((key, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Pkcs11Uri {
        match signer_api::KeyUri::parse(s).unwrap() {
            signer_api::KeyUri::Pkcs11(u) => *u,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn module_resolution_order_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libfake.so");
        std::fs::write(&lib, b"").unwrap();
        let dirs = [dir.path().to_str().unwrap()];
        let opts = Pkcs11Options::default();

        let u = uri(&format!("pkcs11:object=a?module-path={}", lib.display()));
        assert_eq!(resolve_module_in(&u, &opts, &dirs).unwrap(), lib);

        let u = uri("pkcs11:object=a?module-name=fake");
        assert_eq!(resolve_module_in(&u, &opts, &dirs).unwrap(), lib);

        let u = uri("pkcs11:object=a?module-name=missing");
        let e = resolve_module_in(&u, &opts, &dirs).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidKeyReference);
        assert!(e.to_string().contains("libmissing.so"), "{e}");

        let u = uri("pkcs11:object=a?module-name=..%2Fetc");
        assert!(resolve_module_in(&u, &opts, &dirs).is_err());

        let u = uri("pkcs11:object=a");
        let e = resolve_module_in(&u, &opts, &dirs).unwrap_err();
        assert!(e.to_string().contains("module-path"), "{e}");
        let mut with_default = opts.clone();
        with_default.default_module_path = Some(lib.clone());
        assert_eq!(resolve_module_in(&u, &with_default, &dirs).unwrap(), lib);

        let u = uri("pkcs11:object=a?module-path=/nonexistent/lib.so");
        let e = resolve_module_in(&u, &opts, &dirs).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lib.so"), "{e}");
    }
}
