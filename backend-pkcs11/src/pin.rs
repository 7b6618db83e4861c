//! Where the user PIN comes from: the URI's `pin-source` file, its `pin-value` (accepted with a
//! warning), or an environment variable named in the options. A PIN source that cannot be read or
//! is empty is an error, never an empty PIN. PINs are [`SecretString`]s: they never appear in
//! `Debug`, `Display`, errors or logs, and file contents are zeroized after reading.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use signer_api::keyuri::{PinSource, Pkcs11Uri};
use signer_api::{ErrorKind, SignerError};
use zeroize::Zeroizing;

use crate::options::Pkcs11Options;

/// The user PIN for `uri`, or `None` when neither the URI nor the options name one (tokens that
/// need no login, or that authenticate on a protected path such as a PIN pad).
///
/// Reads a file; call from a blocking context (or accept a short block for a small file).
pub fn resolve_pin(
    uri: &Pkcs11Uri,
    options: &Pkcs11Options,
) -> Result<Option<SecretString>, SignerError> {
    match &uri.pin {
        Some(PinSource::File(path)) => read_pin_file(path).map(Some),
        Some(PinSource::Value(v)) => {
            tracing::warn!(
                "the PKCS#11 key URI carries pin-value: the PIN is exposed in configuration files, \
                 process listings and shell history; use pin-source=file:/path instead"
            );
            if v.expose_secret().is_empty() {
                return Err(SignerError::new(
                    ErrorKind::Auth,
                    "pkcs11: pin-value is empty; refusing to log in with an empty PIN",
                ));
            }
            Ok(Some(v.clone()))
        }
        Some(_) => Err(SignerError::new(
            ErrorKind::Unsupported,
            "pkcs11: unsupported PIN source",
        )),
        None => match &options.pin_env {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(SecretString::from(v))),
                Ok(_) => Err(SignerError::new(
                    ErrorKind::Auth,
                    format!("pkcs11: the PIN environment variable {var} is empty"),
                )),
                Err(std::env::VarError::NotPresent) => Err(SignerError::new(
                    ErrorKind::Auth,
                    format!(
                        "pkcs11: no PIN: the key URI has no pin-source and the environment \
                         variable {var} is not set"
                    ),
                )),
                Err(e) => Err(SignerError::new(
                    ErrorKind::Auth,
                    format!("pkcs11: the PIN environment variable {var} is not valid UTF-8"),
                )
                .with_source(e)),
            },
            None => Ok(None),
        },
    }
}

/// Reads a PIN file: the whole content, minus one trailing newline (`\n` or `\r\n`).
pub fn read_pin_file(path: &Path) -> Result<SecretString, SignerError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        SignerError::new(
            ErrorKind::Auth,
            format!(
                "pkcs11: cannot read the PIN from pin-source {}: {e}",
                path.display()
            ),
        )
        .with_source(e)
    })?);
    warn_if_readable_by_others(path);
    let mut content: &[u8] = &bytes;
    if let Some(rest) = content.strip_suffix(b"\n") {
        content = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if content.is_empty() {
        return Err(SignerError::new(
            ErrorKind::Auth,
            format!(
                "pkcs11: pin-source {} is empty; refusing to log in with an empty PIN",
                path.display()
            ),
        ));
    }
    let text = std::str::from_utf8(content).map_err(|_| {
        SignerError::new(
            ErrorKind::Auth,
            format!("pkcs11: pin-source {} is not UTF-8 text", path.display()),
        )
    })?;
    Ok(SecretString::from(text))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "PIN file is accessible to group or others; chmod 0600");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn uri_with(pin: Option<PinSource>) -> Pkcs11Uri {
        Pkcs11Uri {
            object: Some("k".into()),
            pin,
            ..Pkcs11Uri::default()
        }
    }

    #[test]
    fn pin_file_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        for (content, want) in [
            ("1234\n", "1234"),
            ("1234", "1234"),
            ("1234\r\n", "1234"),
            ("12 34\n\n", "12 34\n"),
        ] {
            std::fs::write(&p, content).unwrap();
            assert_eq!(read_pin_file(&p).unwrap().expose_secret(), want);
        }
    }

    #[test]
    fn unreadable_or_empty_pin_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = resolve_pin(
            &uri_with(Some(PinSource::File(missing.clone()))),
            &Pkcs11Options::default(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("cannot read the PIN"), "{e}");

        let empty = dir.path().join("empty");
        for content in ["", "\n"] {
            std::fs::write(&empty, content).unwrap();
            let e = read_pin_file(&empty).unwrap_err();
            assert!(e.to_string().contains("is empty"), "{e}");
        }
    }

    #[test]
    fn pin_value_and_env() {
        let p = resolve_pin(
            &uri_with(Some(PinSource::Value(SecretString::from("9876")))),
            &Pkcs11Options::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.expose_secret(), "9876");
        assert!(
            resolve_pin(&uri_with(None), &Pkcs11Options::default())
                .unwrap()
                .is_none()
        );
        let mut o = Pkcs11Options {
            pin_env: Some("KUBESIGN_TEST_PIN_VARIABLE_THAT_IS_NOT_SET".into()),
            ..Pkcs11Options::default()
        };
        let e = resolve_pin(&uri_with(None), &o).unwrap_err();
        assert!(e.to_string().contains("is not set"), "{e}");
        // PATH is always set: it proves the variable is read (its value is not a PIN, of course).
        o.pin_env = Some("PATH".into());
        assert!(resolve_pin(&uri_with(None), &o).unwrap().is_some());
        // A pin-source in the URI wins over the environment.
        let e = resolve_pin(
            &uri_with(Some(PinSource::File(PathBuf::from("/nonexistent/pin")))),
            &o,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pin"));
    }
}
