//! The one place where AWS SDK errors become kubesign errors.
//!
//! [`classify`] decides, for any KMS operation, which [`ErrorKind`] a failure is and therefore
//! whether it is transient (only [`ErrorKind::Unavailable`] is retried) and what the operator
//! should do about it. [`map_sdk_error`] turns the classification into a [`SignerError`] that
//! names the key and the KMS operation and keeps the SDK error as its source.
//!
//! | failure | kind | retried |
//! |---|---|---|
//! | `ThrottlingException`, `KMSInternalException`, `DependencyTimeoutException`, `KeyUnavailableException`, `InternalFailure`, `ServiceUnavailable`, HTTP 5xx or 429 | Unavailable | yes |
//! | attempt timeout, connection refused/reset, other I/O while sending | Unavailable | yes |
//! | `NotFoundException` | NotFound | no |
//! | `AccessDeniedException`, rejected or missing credentials | Auth | no |
//! | `DisabledException`, `KMSInvalidStateException` (disabled, pending deletion, pending import), `InvalidKeyUsageException`, `AlreadyExistsException` | KeyPolicy | no |
//! | `UnsupportedOperationException`, `ValidationException` | Unsupported | no |
//! | `IncorrectKeyException`, `IncorrectKeyMaterialException` | KeyMismatch | no |
//! | `InvalidArnException`, `InvalidAliasNameException` | InvalidKeyReference | no |
//! | anything else | Backend | no |
//!
//! `KeyUnavailableException` is transient by AWS's own definition ("You can retry the request"):
//! it reports a key in a custom key store whose backing HSM or external key manager is briefly
//! unreachable.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use signer_api::{ErrorKind, SignerError};

/// A KMS API operation, named in error messages and logs by its AWS name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KmsOperation {
    /// `Sign`
    Sign,
    /// `GetPublicKey`
    GetPublicKey,
    /// `DescribeKey`
    DescribeKey,
    /// `CreateKey`
    CreateKey,
    /// `CreateAlias`
    CreateAlias,
    /// `GetParametersForImport`
    GetParametersForImport,
    /// `ImportKeyMaterial`
    ImportKeyMaterial,
    /// `ScheduleKeyDeletion`
    ScheduleKeyDeletion,
}

impl KmsOperation {
    /// The AWS API name, e.g. `Sign`.
    pub fn as_str(self) -> &'static str {
        match self {
            KmsOperation::Sign => "Sign",
            KmsOperation::GetPublicKey => "GetPublicKey",
            KmsOperation::DescribeKey => "DescribeKey",
            KmsOperation::CreateKey => "CreateKey",
            KmsOperation::CreateAlias => "CreateAlias",
            KmsOperation::GetParametersForImport => "GetParametersForImport",
            KmsOperation::ImportKeyMaterial => "ImportKeyMaterial",
            KmsOperation::ScheduleKeyDeletion => "ScheduleKeyDeletion",
        }
    }
}

impl fmt::Display for KmsOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`classify`] decided about a failed KMS request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Classification {
    /// The kind to report; [`ErrorKind::Unavailable`] means transient (retried).
    pub kind: ErrorKind,
    /// The AWS error code, when KMS answered with one (e.g. `ThrottlingException`).
    pub code: Option<String>,
    /// What went wrong and what to do about it, in words for an operator.
    pub advice: String,
}

impl Classification {
    /// Whether the request may succeed when repeated.
    pub fn is_transient(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// Classifies a failed KMS request. This is the single mapping from AWS SDK errors to kubesign's
/// error kinds; the module documentation has the table. `op` and `key_id` (the key ID, alias or
/// ARN the request named, as the `aws kms` commands in the advice take it) only shape the advice.
pub fn classify<E>(
    err: &SdkError<E, HttpResponse>,
    op: KmsOperation,
    key_id: &str,
) -> Classification
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            classify_code(e.code(), e.message(), status, op, key_id)
        }
        SdkError::TimeoutError(_) => Classification {
            kind: ErrorKind::Unavailable,
            code: None,
            advice: "KMS did not answer within the attempt timeout".into(),
        },
        SdkError::DispatchFailure(d) => {
            let chain = DisplayErrorContext(err).to_string();
            if d.is_timeout() {
                Classification {
                    kind: ErrorKind::Unavailable,
                    code: None,
                    advice: "timed out connecting to KMS".into(),
                }
            } else if d.is_io() {
                Classification {
                    kind: ErrorKind::Unavailable,
                    code: None,
                    advice: "cannot reach KMS (connection failed); check the endpoint, proxy and \
                             network"
                        .into(),
                }
            } else if mentions_credentials(err) {
                if chain.contains("timed out") {
                    Classification {
                        kind: ErrorKind::Unavailable,
                        code: None,
                        advice: "loading AWS credentials timed out".into(),
                    }
                } else {
                    Classification {
                        kind: ErrorKind::Auth,
                        code: None,
                        advice: "no usable AWS credentials: set AWS_PROFILE or \
                                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an instance \
                                 role, EKS pod identity or web identity token is available"
                            .into(),
                    }
                }
            } else if d.is_user() {
                Classification {
                    kind: ErrorKind::Backend,
                    code: None,
                    advice: "the request could not be sent (check the endpoint URL)".into(),
                }
            } else if d.as_other().is_some() {
                // The HTTP client marked it transient (e.g. an incomplete response).
                Classification {
                    kind: ErrorKind::Unavailable,
                    code: None,
                    advice: "the connection to KMS failed".into(),
                }
            } else {
                Classification {
                    kind: ErrorKind::Backend,
                    code: None,
                    advice: "the request could not be sent (check the region, endpoint and \
                             credentials configuration)"
                        .into(),
                }
            }
        }
        SdkError::ResponseError(_) => match status {
            Some(s) if s >= 500 || s == 429 => Classification {
                kind: ErrorKind::Unavailable,
                code: None,
                advice: format!("KMS answered HTTP {s}"),
            },
            _ => Classification {
                kind: ErrorKind::Backend,
                code: None,
                advice: format!(
                    "KMS answered something the SDK could not read (HTTP {}); is the endpoint a \
                     KMS endpoint?",
                    status.map_or_else(|| "?".to_owned(), |s| s.to_string())
                ),
            },
        },
        SdkError::ConstructionFailure(_) => Classification {
            kind: ErrorKind::Backend,
            code: None,
            advice: "the request could not be built".into(),
        },
        _ => Classification {
            kind: ErrorKind::Backend,
            code: None,
            advice: "unexpected SDK error".into(),
        },
    }
}

fn mentions_credentials(err: &(dyn StdError + 'static)) -> bool {
    // The credential chain's error types are not re-exported by the SDK; their messages are
    // stable ("the credential provider was not enabled", "... loading credentials").
    let mut next = Some(err);
    while let Some(e) = next {
        if e.to_string().to_ascii_lowercase().contains("credential") {
            return true;
        }
        next = e.source();
    }
    false
}

fn classify_code(
    code: Option<&str>,
    message: Option<&str>,
    status: Option<u16>,
    op: KmsOperation,
    key: &str,
) -> Classification {
    let said = message.unwrap_or("").to_owned();
    let lower = said.to_ascii_lowercase();
    let c = |kind: ErrorKind, advice: String| Classification {
        kind,
        code: code.map(str::to_owned),
        advice,
    };
    match code.unwrap_or("") {
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => c(
            ErrorKind::Unavailable,
            "KMS throttled the request (the account's request quota is shared by every client \
             in the region; lower the rate limit or request a quota increase)"
                .into(),
        ),
        "KMSInternalException"
        | "InternalFailure"
        | "InternalFailureException"
        | "InternalError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => {
            c(ErrorKind::Unavailable, "KMS had an internal error".into())
        }
        "DependencyTimeoutException" | "RequestTimeout" | "RequestTimeoutException" => c(
            ErrorKind::Unavailable,
            "KMS timed out fulfilling the request".into(),
        ),
        "KeyUnavailableException" => c(
            ErrorKind::Unavailable,
            "the key is temporarily unavailable (its custom key store may be disconnected)".into(),
        ),
        "DisabledException" => c(
            ErrorKind::KeyPolicy,
            format!("key {key} is disabled: enable it with `aws kms enable-key --key-id {key}`"),
        ),
        "KMSInvalidStateException" => {
            let advice = if lower.contains("pending deletion") || lower.contains("pendingdeletion")
            {
                format!(
                    "key {key} is pending deletion: cancel it with `aws kms cancel-key-deletion \
                     --key-id {key}`, then `aws kms enable-key --key-id {key}`"
                )
            } else if lower.contains("pending import") || lower.contains("pendingimport") {
                format!(
                    "key {key} has no key material yet (pending import): import it with \
                     `kubesign` or `aws kms import-key-material`"
                )
            } else if lower.contains("disabled") {
                format!("key {key} is disabled: enable it with `aws kms enable-key --key-id {key}`")
            } else {
                format!(
                    "key {key} is not in a state that allows {op}: check its KeyState with \
                     `aws kms describe-key --key-id {key}`"
                )
            };
            c(ErrorKind::KeyPolicy, advice)
        }
        "NotFoundException" => c(
            ErrorKind::NotFound,
            format!(
                "key {key} does not exist in this account and region: check the alias or key ID, \
                 the region and the credentials' account (`aws kms list-aliases`)"
            ),
        ),
        "AccessDeniedException" | "AccessDenied" | "NotAuthorizedException" => c(
            ErrorKind::Auth,
            format!(
                "AWS denied kms:{op} on key {key}: allow it in the key policy or in the IAM policy \
                 of the caller"
            ),
        ),
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "InvalidGrantTokenException" => c(
            ErrorKind::Auth,
            "AWS rejected the credentials: check AWS_PROFILE / AWS_ACCESS_KEY_ID, the session \
             token and the clock"
                .into(),
        ),
        "InvalidKeyUsageException" => c(
            ErrorKind::KeyPolicy,
            format!(
                "key {key} cannot be used for {op}: a CA key must have KeyUsage SIGN_VERIFY and a \
                 KeySpec that supports the signing algorithm (ECC_NIST_P256, ECC_NIST_P384, \
                 RSA_2048, RSA_3072 or RSA_4096)"
            ),
        ),
        "AlreadyExistsException" => c(
            ErrorKind::KeyPolicy,
            format!("{key} already exists; kubesign never replaces a CA key"),
        ),
        "UnsupportedOperationException" => c(
            ErrorKind::Unsupported,
            format!("KMS does not support {op} for key {key}"),
        ),
        "ValidationException" => c(
            ErrorKind::Unsupported,
            format!("KMS rejected the {op} request as invalid"),
        ),
        "IncorrectKeyException" | "IncorrectKeyMaterialException" => c(
            ErrorKind::KeyMismatch,
            format!("the key material does not belong to key {key}"),
        ),
        "InvalidArnException" | "InvalidAliasNameException" => c(
            ErrorKind::InvalidKeyReference,
            format!("{key} is not a valid KMS key reference"),
        ),
        "LimitExceededException" => c(
            ErrorKind::Backend,
            "an AWS resource quota (number of keys or aliases) is exhausted: request an increase \
             or delete unused keys"
                .into(),
        ),
        "InvalidImportTokenException" | "ExpiredImportTokenException" => c(
            ErrorKind::Backend,
            "the import token was rejected or expired; run the import again".into(),
        ),
        "InvalidCiphertextException" => c(
            ErrorKind::Backend,
            "KMS could not unwrap the key material".into(),
        ),
        other => match status {
            Some(s) if s >= 500 || s == 429 => c(
                ErrorKind::Unavailable,
                format!("KMS answered HTTP {s} ({})", display_code(other)),
            ),
            _ => c(
                ErrorKind::Backend,
                format!("KMS refused {op} ({})", display_code(other)),
            ),
        },
    }
}

fn display_code(code: &str) -> &str {
    if code.is_empty() {
        "no error code"
    } else {
        code
    }
}

/// Maps a failed KMS request to a [`SignerError`] that names the key (`label`, the redacted key
/// URI) and the operation, says what to do, and keeps the SDK error as its source. `key_id` is
/// what the request named (see [`classify`]).
pub fn map_sdk_error<E>(
    err: SdkError<E, HttpResponse>,
    op: KmsOperation,
    label: &str,
    key_id: &str,
) -> SignerError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let c = classify(&err, op, key_id);
    signer_error(&c, &err, op, label, None).with_source(err)
}

/// Builds the message shared by [`map_sdk_error`] and the retry loop.
pub(crate) fn signer_error<E>(
    c: &Classification,
    err: &SdkError<E, HttpResponse>,
    op: KmsOperation,
    label: &str,
    attempts: Option<u32>,
) -> SignerError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let said = match err {
        SdkError::ServiceError(s) => match (s.err().code(), s.err().message()) {
            (Some(code), Some(m)) if !m.is_empty() => format!("{code}: {m}"),
            (Some(code), _) => code.to_owned(),
            (None, Some(m)) => m.to_owned(),
            (None, None) => DisplayErrorContext(err).to_string(),
        },
        _ => DisplayErrorContext(err).to_string(),
    };
    let tries = match attempts {
        Some(n) if n > 1 => format!(" (gave up after {n} attempts)"),
        _ => String::new(),
    };
    SignerError::new(
        c.kind,
        format!("{label}: KMS {op} failed: {}{tries} [{said}]", c.advice),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::error::ErrorMetadata;
    use aws_sdk_kms::operation::create_alias::CreateAliasError;
    use aws_sdk_kms::operation::get_public_key::GetPublicKeyError;
    use aws_sdk_kms::operation::sign::SignError;
    use aws_sdk_kms::types::error::{
        DisabledException, KmsInternalException, KmsInvalidStateException, NotFoundException,
    };

    const KEY: &str = "alias/kubernetes-ca";
    const LABEL: &str = "awskms:///alias/kubernetes-ca?region=eu-west-1";

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().expect("valid status"), "".into())
    }

    fn meta(code: &str, message: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).message(message).build()
    }

    fn service<E>(e: E, status: u16) -> SdkError<E, HttpResponse> {
        SdkError::service_error(e, response(status))
    }

    #[test]
    fn throttling_and_internal_errors_are_transient() {
        let throttled = service(
            SignError::generic(meta("ThrottlingException", "Rate exceeded")),
            400,
        );
        let c = classify(&throttled, KmsOperation::Sign, KEY);
        assert_eq!(c.kind, ErrorKind::Unavailable);
        assert!(c.is_transient());
        assert_eq!(c.code.as_deref(), Some("ThrottlingException"));

        let internal = service(
            SignError::KmsInternalException(
                KmsInternalException::builder()
                    .message("boom")
                    .meta(meta("KMSInternalException", "boom"))
                    .build(),
            ),
            500,
        );
        assert!(classify(&internal, KmsOperation::Sign, KEY).is_transient());

        let dep = service(
            SignError::generic(meta("DependencyTimeoutException", "slow")),
            503,
        );
        assert!(classify(&dep, KmsOperation::Sign, KEY).is_transient());

        // An unknown code on a 5xx is transient, on a 4xx it is not.
        let odd5 = service(SignError::generic(meta("Weird", "x")), 502);
        assert!(classify(&odd5, KmsOperation::Sign, KEY).is_transient());
        let odd4 = service(SignError::generic(meta("Weird", "x")), 400);
        assert_eq!(
            classify(&odd4, KmsOperation::Sign, KEY).kind,
            ErrorKind::Backend
        );
    }

    #[test]
    fn non_service_failures() {
        let timeout: SdkError<SignError, HttpResponse> = SdkError::timeout_error("too slow");
        assert!(classify(&timeout, KmsOperation::Sign, KEY).is_transient());

        let refused: SdkError<SignError, HttpResponse> =
            SdkError::dispatch_failure(aws_sdk_kms::error::ConnectorError::io(
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into(),
            ));
        assert!(classify(&refused, KmsOperation::Sign, KEY).is_transient());

        let connect_timeout: SdkError<SignError, HttpResponse> = SdkError::dispatch_failure(
            aws_sdk_kms::error::ConnectorError::timeout("connect timeout".into()),
        );
        assert!(classify(&connect_timeout, KmsOperation::Sign, KEY).is_transient());

        let no_creds: SdkError<SignError, HttpResponse> =
            SdkError::dispatch_failure(aws_sdk_kms::error::ConnectorError::other(
                "failed to load credentials: the credential provider was not enabled".into(),
                None,
            ));
        let c = classify(&no_creds, KmsOperation::Sign, KEY);
        assert_eq!(c.kind, ErrorKind::Auth);
        assert!(c.advice.contains("AWS_PROFILE"), "{}", c.advice);

        let bad_gateway: SdkError<SignError, HttpResponse> =
            SdkError::response_error("unparseable", response(502));
        assert!(classify(&bad_gateway, KmsOperation::Sign, KEY).is_transient());
        let garbage: SdkError<SignError, HttpResponse> =
            SdkError::response_error("unparseable", response(200));
        assert_eq!(
            classify(&garbage, KmsOperation::Sign, KEY).kind,
            ErrorKind::Backend
        );

        let construction: SdkError<SignError, HttpResponse> =
            SdkError::construction_failure("missing KeyId");
        assert!(!classify(&construction, KmsOperation::Sign, KEY).is_transient());
    }

    #[test]
    fn permanent_failures_say_what_to_fix() {
        let disabled = service(
            SignError::DisabledException(
                DisabledException::builder()
                    .message("key is disabled")
                    .meta(meta("DisabledException", "key is disabled"))
                    .build(),
            ),
            400,
        );
        let e = map_sdk_error(disabled, KmsOperation::Sign, LABEL, KEY);
        assert_eq!(e.kind(), ErrorKind::KeyPolicy);
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(
            text.contains("is disabled")
                && text.contains("aws kms enable-key")
                && text.contains(KEY),
            "{text}"
        );
        assert!(text.contains("KMS Sign failed"), "{text}");
        assert!(std::error::Error::source(&e).is_some());

        let pending = service(
            SignError::KmsInvalidStateException(
                KmsInvalidStateException::builder()
                    .message("arn:... is pending deletion.")
                    .meta(meta(
                        "KMSInvalidStateException",
                        "arn:... is pending deletion.",
                    ))
                    .build(),
            ),
            400,
        );
        let e = map_sdk_error(pending, KmsOperation::Sign, LABEL, KEY);
        assert_eq!(e.kind(), ErrorKind::KeyPolicy);
        assert!(e.to_string().contains("cancel-key-deletion"), "{e}");

        let import = service(
            SignError::generic(meta("KMSInvalidStateException", "k is pending import.")),
            400,
        );
        assert!(
            map_sdk_error(import, KmsOperation::Sign, LABEL, KEY)
                .to_string()
                .contains("import")
        );

        let missing = service(
            GetPublicKeyError::NotFoundException(
                NotFoundException::builder()
                    .message("Alias not found")
                    .meta(meta("NotFoundException", "Alias not found"))
                    .build(),
            ),
            400,
        );
        let e = map_sdk_error(missing, KmsOperation::GetPublicKey, LABEL, KEY);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("GetPublicKey"), "{e}");

        let denied = service(
            SignError::generic(meta("AccessDeniedException", "not authorized")),
            400,
        );
        let e = map_sdk_error(denied, KmsOperation::Sign, LABEL, KEY);
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert!(e.to_string().contains("kms:Sign"), "{e}");

        for (code, kind) in [
            ("InvalidKeyUsageException", ErrorKind::KeyPolicy),
            ("UnsupportedOperationException", ErrorKind::Unsupported),
            ("IncorrectKeyException", ErrorKind::KeyMismatch),
            ("UnrecognizedClientException", ErrorKind::Auth),
            ("ValidationException", ErrorKind::Unsupported),
            ("InvalidArnException", ErrorKind::InvalidKeyReference),
        ] {
            let e = service(SignError::generic(meta(code, "x")), 400);
            assert_eq!(classify(&e, KmsOperation::Sign, KEY).kind, kind, "{code}");
        }

        let exists = service(
            CreateAliasError::generic(meta("AlreadyExistsException", "exists")),
            400,
        );
        assert_eq!(
            classify(&exists, KmsOperation::CreateAlias, KEY).kind,
            ErrorKind::KeyPolicy
        );
    }
}
