//! The one place where PKCS#11 return values become kubesign errors: [`classify`] decides, for
//! every cryptoki error, which [`ErrorKind`] a caller sees and therefore whether the operation is
//! retried (only [`ErrorKind::Unavailable`] is). Every [`SignerError`] built from a cryptoki error
//! names the PKCS#11 function that failed, the token or object it failed on, and the `CKR_` code,
//! and keeps the cryptoki error as its source.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use signer_api::{ErrorKind, SignerError};

/// What a cryptoki error means for kubesign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Not a failure: the state asked for already holds (`CKR_USER_ALREADY_LOGGED_IN`).
    Success,
    /// A failure of this kind. [`ErrorKind::Unavailable`] is transient: the session it happened
    /// on is discarded (never reused), a new one is opened and logged in, and the operation is
    /// retried with bounded, jittered exponential backoff. Every other kind is permanent.
    Failure(ErrorKind),
}

impl Disposition {
    /// Whether the failure is transient (worth retrying on a fresh session).
    pub fn is_transient(self) -> bool {
        matches!(self, Disposition::Failure(k) if k.is_retryable())
    }
}

/// Maps a cryptoki error to what kubesign does about it. This is the backend's only mapping of
/// PKCS#11 return values; everything else calls it.
///
/// | return value | disposition | why |
/// |---|---|---|
/// | `CKR_USER_ALREADY_LOGGED_IN` | [`Disposition::Success`] | login state is per process and token, shared by all sessions |
/// | `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`, `CKR_DEVICE_ERROR`, `CKR_DEVICE_MEMORY`, `CKR_FUNCTION_FAILED`, `CKR_SLOT_ID_INVALID`, `CKR_TOKEN_NOT_RECOGNIZED`, `CKR_USER_NOT_LOGGED_IN`, `CKR_OPERATION_ACTIVE`, `CKR_SESSION_COUNT`, `CKR_HOST_MEMORY` | [`ErrorKind::Unavailable`] (transient) | the session or device is in a bad state; a fresh session (slot looked up again by token identity, logged in again) may work |
/// | `CKR_PIN_INCORRECT`, `CKR_PIN_LOCKED`, `CKR_PIN_EXPIRED`, `CKR_PIN_INVALID`, `CKR_PIN_LEN_RANGE`, `CKR_USER_PIN_NOT_INITIALIZED`, `CKR_USER_ANOTHER_ALREADY_LOGGED_IN` | [`ErrorKind::Auth`] | never retried: repeating a wrong PIN locks real HSMs |
/// | `CKR_KEY_HANDLE_INVALID`, `CKR_OBJECT_HANDLE_INVALID` | [`ErrorKind::NotFound`] | the key is gone |
/// | `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`, `CKR_KEY_TYPE_INCONSISTENT`, `CKR_FUNCTION_NOT_SUPPORTED`, `CKR_CURVE_NOT_SUPPORTED`, `CKR_KEY_SIZE_RANGE`, `CKR_DOMAIN_PARAMS_INVALID`, `CKR_ATTRIBUTE_TYPE_INVALID`; cryptoki's `NotSupported` and `NullFunctionPointer` | [`ErrorKind::Unsupported`] | the token cannot do this |
/// | `CKR_KEY_FUNCTION_NOT_PERMITTED` | [`ErrorKind::KeyPolicy`] | the key may not sign |
/// | anything else | [`ErrorKind::Backend`] | |
pub fn classify(error: &CkError) -> Disposition {
    use Disposition::{Failure, Success};
    let rv = match error {
        CkError::Pkcs11(rv, _) => *rv,
        CkError::NotSupported | CkError::NullFunctionPointer | CkError::MissingSymbol(_) => {
            return Failure(ErrorKind::Unsupported);
        }
        _ => return Failure(ErrorKind::Backend),
    };
    match rv {
        RvError::UserAlreadyLoggedIn => Success,
        RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::FunctionFailed
        | RvError::SlotIdInvalid
        | RvError::TokenNotRecognized
        | RvError::UserNotLoggedIn
        | RvError::OperationActive
        | RvError::SessionCount
        | RvError::HostMemory => Failure(ErrorKind::Unavailable),
        RvError::PinIncorrect
        | RvError::PinLocked
        | RvError::PinExpired
        | RvError::PinInvalid
        | RvError::PinLenRange
        | RvError::UserPinNotInitialized
        | RvError::UserAnotherAlreadyLoggedIn => Failure(ErrorKind::Auth),
        RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => Failure(ErrorKind::NotFound),
        RvError::MechanismInvalid
        | RvError::MechanismParamInvalid
        | RvError::KeyTypeInconsistent
        | RvError::FunctionNotSupported
        | RvError::CurveNotSupported
        | RvError::KeySizeRange
        | RvError::DomainParamsInvalid
        | RvError::AttributeTypeInvalid => Failure(ErrorKind::Unsupported),
        RvError::KeyFunctionNotPermitted => Failure(ErrorKind::KeyPolicy),
        _ => Failure(ErrorKind::Backend),
    }
}

/// The PKCS#11 return value inside a cryptoki error, if it is one.
pub(crate) fn rv_of(error: &CkError) -> Option<RvError> {
    match error {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Whether the session handle is already dead, so closing it could only hit a handle the module
/// has since given to another session.
pub(crate) fn session_handle_dead(rv: Option<RvError>) -> bool {
    matches!(
        rv,
        Some(RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::DeviceRemoved)
    )
}

/// The `CKR_...` name of a return value (cryptoki's `Display` is a paragraph of the standard).
pub fn ckr_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(v) => format!("CKR_VENDOR_DEFINED(0x{v:08x})"),
        RvError::UnknownErrorCode(v) => format!("unknown CK_RV 0x{v:08x}"),
        other => format!("CKR_{}", screaming_snake(&format!("{other:?}"))),
    }
}

/// The C name of a PKCS#11 function (`C_Sign`).
pub fn function_name(function: Function) -> String {
    format!("C_{function:?}")
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Builds the [`SignerError`] for a cryptoki failure on `target` (for example
/// `token "kubernetes" object "kubernetes-ca"`): "C_Sign on token ...: CKR_DEVICE_ERROR".
/// A [`Disposition::Success`] error (which callers handle before getting here) maps to
/// [`ErrorKind::Backend`].
pub fn pkcs11_error(error: CkError, target: &str) -> SignerError {
    let kind = match classify(&error) {
        Disposition::Failure(k) => k,
        Disposition::Success => ErrorKind::Backend,
    };
    let message = match &error {
        CkError::Pkcs11(rv, function) => {
            let mut m = format!(
                "{} on {target}: {}",
                function_name(*function),
                ckr_name(*rv)
            );
            if let Some(hint) = hint(*rv) {
                m.push_str(" (");
                m.push_str(hint);
                m.push(')');
            }
            m
        }
        other => format!("PKCS#11 call on {target}: {other}"),
    };
    SignerError::new(kind, message).with_source(error)
}

fn hint(rv: RvError) -> Option<&'static str> {
    Some(match rv {
        RvError::PinIncorrect => {
            "wrong user PIN; it will not be tried again by this process, since repeated wrong PINs lock HSMs"
        }
        RvError::PinLocked => "the user PIN is locked; the security officer must unlock it",
        RvError::PinExpired => "the user PIN has expired; change it with the token's tools",
        RvError::UserPinNotInitialized => {
            "the token has no user PIN yet; initialise it (softhsm2-util --init-token, pkcs11-tool --init-pin)"
        }
        RvError::KeyFunctionNotPermitted => "the key does not allow signing (CKA_SIGN is false)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(rv: RvError) -> CkError {
        CkError::Pkcs11(rv, Function::Sign)
    }

    #[test]
    fn every_listed_code_maps_as_documented() {
        assert_eq!(
            classify(&ck(RvError::UserAlreadyLoggedIn)),
            Disposition::Success
        );
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::DeviceError,
            RvError::DeviceMemory,
            RvError::FunctionFailed,
            RvError::SlotIdInvalid,
            RvError::TokenNotRecognized,
            RvError::UserNotLoggedIn,
            RvError::OperationActive,
            RvError::SessionCount,
            RvError::HostMemory,
        ] {
            let d = classify(&ck(rv));
            assert_eq!(d, Disposition::Failure(ErrorKind::Unavailable), "{rv:?}");
            assert!(d.is_transient(), "{rv:?}");
        }
        for rv in [
            RvError::PinIncorrect,
            RvError::PinLocked,
            RvError::PinExpired,
            RvError::PinInvalid,
            RvError::PinLenRange,
            RvError::UserPinNotInitialized,
            RvError::UserAnotherAlreadyLoggedIn,
        ] {
            let d = classify(&ck(rv));
            assert_eq!(d, Disposition::Failure(ErrorKind::Auth), "{rv:?}");
            assert!(!d.is_transient(), "{rv:?}: auth failures are never retried");
        }
        for rv in [RvError::KeyHandleInvalid, RvError::ObjectHandleInvalid] {
            assert_eq!(
                classify(&ck(rv)),
                Disposition::Failure(ErrorKind::NotFound),
                "{rv:?}"
            );
        }
        for rv in [
            RvError::MechanismInvalid,
            RvError::MechanismParamInvalid,
            RvError::KeyTypeInconsistent,
            RvError::FunctionNotSupported,
            RvError::CurveNotSupported,
            RvError::KeySizeRange,
            RvError::DomainParamsInvalid,
            RvError::AttributeTypeInvalid,
        ] {
            assert_eq!(
                classify(&ck(rv)),
                Disposition::Failure(ErrorKind::Unsupported),
                "{rv:?}"
            );
        }
        assert_eq!(
            classify(&ck(RvError::KeyFunctionNotPermitted)),
            Disposition::Failure(ErrorKind::KeyPolicy)
        );
        for rv in [
            RvError::GeneralError,
            RvError::ArgumentsBad,
            RvError::DataLenRange,
            RvError::TemplateInconsistent,
            RvError::CryptokiNotInitialized,
            RvError::VendorDefined(0x8000_0001),
            RvError::UnknownErrorCode(0x1234),
        ] {
            let d = classify(&ck(rv));
            assert_eq!(d, Disposition::Failure(ErrorKind::Backend), "{rv:?}");
            assert!(!d.is_transient());
        }
        assert_eq!(
            classify(&CkError::NotSupported),
            Disposition::Failure(ErrorKind::Unsupported)
        );
        assert_eq!(
            classify(&CkError::PinNotSet),
            Disposition::Failure(ErrorKind::Backend)
        );
    }

    #[test]
    fn messages_name_function_target_and_code() {
        let e = pkcs11_error(
            CkError::Pkcs11(RvError::DeviceError, Function::Sign),
            "token \"kubernetes\" object \"kubernetes-ca\"",
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(
            e.to_string(),
            "unavailable: C_Sign on token \"kubernetes\" object \"kubernetes-ca\": CKR_DEVICE_ERROR"
        );
        assert!(std::error::Error::source(&e).is_some());
        let e = pkcs11_error(
            CkError::Pkcs11(RvError::PinIncorrect, Function::Login),
            "token \"t\"",
        );
        assert!(
            e.to_string()
                .starts_with("authentication failed: C_Login on token \"t\": CKR_PIN_INCORRECT")
        );
        assert_eq!(ckr_name(RvError::PinLenRange), "CKR_PIN_LEN_RANGE");
        assert_eq!(
            ckr_name(RvError::UserPinNotInitialized),
            "CKR_USER_PIN_NOT_INITIALIZED"
        );
        assert_eq!(
            function_name(Function::GetAttributeValue),
            "C_GetAttributeValue"
        );
    }

    #[test]
    fn dead_handles_are_not_closed() {
        assert!(session_handle_dead(Some(RvError::SessionHandleInvalid)));
        assert!(session_handle_dead(Some(RvError::SessionClosed)));
        assert!(!session_handle_dead(Some(RvError::DeviceError)));
        assert!(!session_handle_dead(None));
    }
}
