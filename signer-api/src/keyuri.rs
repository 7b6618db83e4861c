//! Key references: every CA key is named by a URI, parsed once into a typed [`KeyUri`].
//!
//! Accepted forms:
//!
//! | form | example | meaning |
//! |---|---|---|
//! | `file:PATH` | `file:/secure/ca.key`, `file:///secure/ca.key`, `file://localhost/secure/ca.key`, `file:keys/ca.key` | a PEM private key file; a relative path is resolved against the configuration file's directory |
//! | `pkcs11:PATH-ATTRS[?QUERY-ATTRS]` | `pkcs11:token=kubernetes;object=kubernetes-ca;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/kubesign/pin` | RFC 7512; see [`Pkcs11Uri`] |
//! | `awskms:///KEY` | `awskms:///alias/kubernetes-ca`, `awskms:///arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?region=eu-west-1` | cosign style; see [`AwsKmsUri`] |
//! | `awskms:key-id=KEY[;region=R]` | `awskms:key-id=alias/kubernetes-ca;region=us-east-1` | smallstep style |
//!
//! Parsing never reads a file or contacts a device; secrets in a URI (`pin-value`) are held as
//! [`SecretString`] and never printed: [`KeyUri`]'s `Display` is the redacted form used in logs
//! and audit records.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use secrecy::SecretString;

/// Why a key URI was rejected. Every message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyUriError {
    /// No recognised scheme.
    #[error(
        "{uri:?} is not a key URI: expected file:/path/to/key.pem, pkcs11:token=...;object=... \
         (RFC 7512) or awskms:///alias/NAME"
    )]
    UnknownScheme {
        /// The offending text (secrets cannot appear here: only the scheme is unknown).
        uri: String,
    },
    /// A `file:` URI without a path.
    #[error("file: key URI has no path: expected file:/path/to/key.pem")]
    EmptyPath,
    /// `file://HOST/...` with a host other than localhost.
    #[error(
        "file: key URI names host {0:?}: only local files (file:/path or file:///path) are supported"
    )]
    RemoteFile(String),
    /// An attribute is not `name=value`.
    #[error("{scheme}: attribute {attr:?} is not of the form name=value")]
    MalformedAttribute {
        /// `pkcs11` or `awskms`.
        scheme: &'static str,
        /// The attribute text (with any value removed if it might be secret).
        attr: String,
    },
    /// An attribute name that the scheme does not define.
    #[error("{scheme}: unknown {part} attribute {name:?}: expected one of {expected}")]
    UnknownAttribute {
        /// `pkcs11` or `awskms`.
        scheme: &'static str,
        /// `path` or `query`.
        part: &'static str,
        /// The name.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// An attribute given twice.
    #[error("{scheme}: attribute {name:?} appears more than once")]
    DuplicateAttribute {
        /// `pkcs11` or `awskms`.
        scheme: &'static str,
        /// The name.
        name: String,
    },
    /// A percent-encoded value that does not decode.
    #[error("{scheme}: attribute {name:?} has invalid percent-encoding")]
    BadEncoding {
        /// `pkcs11` or `awskms`.
        scheme: &'static str,
        /// The name.
        name: String,
    },
    /// A value that does not fit its attribute.
    #[error("{scheme}: attribute {name:?}: {reason}")]
    InvalidValue {
        /// `pkcs11` or `awskms`.
        scheme: &'static str,
        /// The name.
        name: String,
        /// What was expected.
        reason: String,
    },
    /// Both pin-source and pin-value.
    #[error("pkcs11: pin-source and pin-value are mutually exclusive (RFC 7512); use pin-source")]
    PinSourceAndValue,
    /// A PKCS#11 URI that does not identify a key.
    #[error("pkcs11: the URI names no key: add object=LABEL or id=%XX... to its path")]
    NoKeyIdentity,
    /// An AWS KMS URI without a key.
    #[error(
        "awskms: no key given: expected awskms:///KEY-ID, awskms:///alias/NAME, awskms:///arn:aws:kms:... \
         or awskms:key-id=..."
    )]
    NoKmsKey,
}

/// A parsed key reference.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyUri {
    /// A PEM file on local disk.
    File(FileKeyUri),
    /// An object in a PKCS#11 token (RFC 7512).
    Pkcs11(Box<Pkcs11Uri>),
    /// An AWS KMS asymmetric key.
    AwsKms(AwsKmsUri),
}

impl KeyUri {
    /// Parses a key URI. See the module documentation for the accepted forms.
    pub fn parse(s: &str) -> Result<Self, KeyUriError> {
        let s = s.trim();
        if let Some(rest) = strip_scheme(s, "file:") {
            FileKeyUri::parse_rest(rest).map(KeyUri::File)
        } else if let Some(rest) = strip_scheme(s, "pkcs11:") {
            Pkcs11Uri::parse_rest(rest).map(|u| KeyUri::Pkcs11(Box::new(u)))
        } else if let Some(rest) = strip_scheme(s, "awskms:") {
            AwsKmsUri::parse_rest(rest).map(KeyUri::AwsKms)
        } else {
            // Show only what precedes a possible query, which is where a PIN could hide.
            let shown = s.split(['?', ';']).next().unwrap_or_default();
            Err(KeyUriError::UnknownScheme {
                uri: shown.to_owned(),
            })
        }
    }

    /// The URI scheme (`file`, `pkcs11`, `awskms`).
    pub fn scheme(&self) -> &'static str {
        match self {
            KeyUri::File(_) => "file",
            KeyUri::Pkcs11(_) => "pkcs11",
            KeyUri::AwsKms(_) => "awskms",
        }
    }

    /// Resolves relative file paths (key file, pin-source) against `base`.
    pub fn resolve_relative(mut self, base: &Path) -> Self {
        match &mut self {
            KeyUri::File(f) if f.path.is_relative() => f.path = base.join(&f.path),
            KeyUri::Pkcs11(p) => {
                if let Some(PinSource::File(path)) = &mut p.pin
                    && path.is_relative()
                {
                    *path = base.join(&*path);
                }
            }
            _ => {}
        }
        self
    }
}

fn strip_scheme<'a>(s: &'a str, scheme: &str) -> Option<&'a str> {
    let head = s.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &s[scheme.len()..])
}

impl FromStr for KeyUri {
    type Err = KeyUriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyUri::parse(s)
    }
}

/// The redacted form: safe for logs, errors and audit records.
impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyUri::File(k) => write!(f, "{k}"),
            KeyUri::Pkcs11(k) => write!(f, "{k}"),
            KeyUri::AwsKms(k) => write!(f, "{k}"),
        }
    }
}

impl fmt::Debug for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyUri({self})")
    }
}

/// `file:` — a PEM private key on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileKeyUri {
    /// The key file.
    pub path: PathBuf,
}

impl FileKeyUri {
    fn parse_rest(rest: &str) -> Result<Self, KeyUriError> {
        let path = if let Some(after) = rest.strip_prefix("//") {
            // file://HOST/path
            let (host, path) = after.find('/').map_or((after, ""), |i| after.split_at(i));
            if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
                return Err(KeyUriError::RemoteFile(host.to_owned()));
            }
            path
        } else {
            rest
        };
        if path.is_empty() {
            return Err(KeyUriError::EmptyPath);
        }
        let decoded =
            percent_decode_str(path)
                .decode_utf8()
                .map_err(|_| KeyUriError::BadEncoding {
                    scheme: "file",
                    name: "path".into(),
                })?;
        Ok(FileKeyUri {
            path: PathBuf::from(decoded.into_owned()),
        })
    }
}

impl fmt::Display for FileKeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Percent-encode what the parser would read differently; absolute paths as file://PATH
        // so a path starting with "//" is not taken for a host.
        const PATH: &AsciiSet = &percent_encoding::CONTROLS
            .add(b'%')
            .add(b'?')
            .add(b'#')
            .add(b';');
        let text = self.path.to_string_lossy();
        let encoded = utf8_percent_encode(&text, PATH);
        if self.path.is_absolute() && text.starts_with("//") {
            write!(f, "file://{encoded}")
        } else {
            write!(f, "file:{encoded}")
        }
    }
}

/// The PKCS#11 object class a URI asks for (`type=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pkcs11ObjectType {
    /// `type=private`
    Private,
    /// `type=public`
    Public,
    /// `type=cert`
    Cert,
    /// `type=secret-key`
    SecretKey,
    /// `type=data`
    Data,
}

impl Pkcs11ObjectType {
    fn as_str(self) -> &'static str {
        match self {
            Pkcs11ObjectType::Private => "private",
            Pkcs11ObjectType::Public => "public",
            Pkcs11ObjectType::Cert => "cert",
            Pkcs11ObjectType::SecretKey => "secret-key",
            Pkcs11ObjectType::Data => "data",
        }
    }
}

/// Where a PKCS#11 PIN comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum PinSource {
    /// `pin-source=file:/path` or `pin-source=/path`: read the PIN from this file at load time.
    File(PathBuf),
    /// `pin-value=...`: the PIN inline in the URI. Accepted, but unsafe: the URI ends up in
    /// configuration files and shell history.
    Value(SecretString),
}

impl PartialEq for PinSource {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        match (self, other) {
            (PinSource::File(a), PinSource::File(b)) => a == b,
            (PinSource::Value(a), PinSource::Value(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}
impl Eq for PinSource {}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(p) => f.debug_tuple("File").field(p).finish(),
            PinSource::Value(_) => f.write_str("Value([REDACTED])"),
        }
    }
}

/// An RFC 7512 PKCS#11 URI naming a private key.
///
/// Path attributes (separated by `;`): `token`, `manufacturer`, `serial`, `model`, `object`
/// (the CKA_LABEL), `id` (CKA_ID, percent-encoded bytes), `type` (`private`, `public`, `cert`,
/// `secret-key`, `data`), `slot-id`, `slot-description`, `slot-manufacturer`,
/// `library-manufacturer`, `library-description`, `library-version`.
/// Query attributes (after `?`, separated by `&`): `module-path`, `module-name`, `pin-source`
/// (a `file:` URI or a path), `pin-value`. Names starting with `x-` are vendor extensions and are
/// kept but ignored. An attribute may not repeat; `pin-source` and `pin-value` exclude each other;
/// a key URI must carry `object` or `id`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Pkcs11Uri {
    /// `token=`: CKA_LABEL of the token (CK_TOKEN_INFO.label).
    pub token: Option<String>,
    /// `manufacturer=`: token manufacturer.
    pub manufacturer: Option<String>,
    /// `serial=`: token serial number.
    pub serial: Option<String>,
    /// `model=`: token model.
    pub model: Option<String>,
    /// `object=`: CKA_LABEL of the key.
    pub object: Option<String>,
    /// `id=`: CKA_ID of the key.
    pub id: Option<Vec<u8>>,
    /// `type=`: object class.
    pub object_type: Option<Pkcs11ObjectType>,
    /// `slot-id=`: a slot number. Slot numbers may change when tokens are added; prefer `token=`.
    pub slot_id: Option<u64>,
    /// `slot-description=`.
    pub slot_description: Option<String>,
    /// `slot-manufacturer=`.
    pub slot_manufacturer: Option<String>,
    /// `library-manufacturer=`.
    pub library_manufacturer: Option<String>,
    /// `library-description=`.
    pub library_description: Option<String>,
    /// `library-version=`.
    pub library_version: Option<String>,
    /// `module-path=`: the PKCS#11 module to load.
    pub module_path: Option<PathBuf>,
    /// `module-name=`: a module name to look up in the system's module directories.
    pub module_name: Option<String>,
    /// `pin-source=` or `pin-value=`.
    pub pin: Option<PinSource>,
    /// `x-*` vendor attributes of the path, kept verbatim.
    pub vendor: BTreeMap<String, String>,
    /// `x-*` vendor attributes of the query, kept verbatim.
    pub vendor_query: BTreeMap<String, String>,
}

const PKCS11_PATH_ATTRS: &str = "token, manufacturer, serial, model, object, id, type, slot-id, \
     slot-description, slot-manufacturer, library-manufacturer, library-description, library-version";
const PKCS11_QUERY_ATTRS: &str = "module-path, module-name, pin-source, pin-value";

/// Characters RFC 7512 lets stand unescaped in a path value (`pk11-pchar` without `%`).
const PK11_PATH_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'[')
    .remove(b']')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=')
    .remove(b'&');
/// A pin-source path inside `file:`: also escape `:` and `/`-free specials so the file: parser
/// reads back the same path.
const PIN_SOURCE_ESCAPE: &AsciiSet = &PK11_QUERY_ESCAPE
    .add(b':')
    .add(b'%')
    .add(b'&')
    .add(b'?')
    .add(b'#');
const PK11_QUERY_ESCAPE: &AsciiSet = &PK11_PATH_ESCAPE
    .remove(b'/')
    .remove(b'?')
    .remove(b'|')
    .remove(b';')
    .add(b'&');

/// Vendor attributes: `x-` followed by letters, digits and dashes (RFC 7512 leaves the syntax to
/// vendors; anything wider could not be written back unambiguously).
fn is_vendor_name(n: &str) -> bool {
    n.len() > 2
        && n.starts_with("x-")
        && n[2..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn decode(scheme: &'static str, name: &str, value: &str) -> Result<String, KeyUriError> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| KeyUriError::BadEncoding {
            scheme,
            name: name.to_owned(),
        })
}

fn decode_bytes(scheme: &'static str, name: &str, value: &str) -> Result<Vec<u8>, KeyUriError> {
    // Reject stray '%' that percent_decode would pass through silently.
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(KeyUriError::BadEncoding {
                    scheme,
                    name: name.to_owned(),
                });
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(percent_decode_str(value).collect())
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    scheme: &'static str,
    name: &str,
) -> Result<(), KeyUriError> {
    if slot.is_some() {
        return Err(KeyUriError::DuplicateAttribute {
            scheme,
            name: name.to_owned(),
        });
    }
    *slot = Some(value);
    Ok(())
}

impl Pkcs11Uri {
    fn parse_rest(rest: &str) -> Result<Self, KeyUriError> {
        const S: &str = "pkcs11";
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) =
                attr.split_once('=')
                    .ok_or_else(|| KeyUriError::MalformedAttribute {
                        scheme: S,
                        attr: attr.to_owned(),
                    })?;
            let text = || decode(S, name, raw);
            match name {
                "token" => set_once(&mut uri.token, text()?, S, name)?,
                "manufacturer" => set_once(&mut uri.manufacturer, text()?, S, name)?,
                "serial" => set_once(&mut uri.serial, text()?, S, name)?,
                "model" => set_once(&mut uri.model, text()?, S, name)?,
                "object" => set_once(&mut uri.object, text()?, S, name)?,
                "id" => {
                    let id = decode_bytes(S, name, raw)?;
                    if id.is_empty() {
                        return Err(KeyUriError::InvalidValue {
                            scheme: S,
                            name: name.into(),
                            reason: "must not be empty (percent-encoded bytes, e.g. id=%01%02)"
                                .into(),
                        });
                    }
                    set_once(&mut uri.id, id, S, name)?
                }
                "type" => {
                    let t = match text()?.as_str() {
                        "private" => Pkcs11ObjectType::Private,
                        "public" => Pkcs11ObjectType::Public,
                        "cert" => Pkcs11ObjectType::Cert,
                        "secret-key" => Pkcs11ObjectType::SecretKey,
                        "data" => Pkcs11ObjectType::Data,
                        other => {
                            return Err(KeyUriError::InvalidValue {
                                scheme: S,
                                name: name.into(),
                                reason: format!(
                                    "{other:?} is not an object type: expected private, public, cert, secret-key or data"
                                ),
                            });
                        }
                    };
                    set_once(&mut uri.object_type, t, S, name)?
                }
                "slot-id" => {
                    let v = text()?;
                    let n = v.parse::<u64>().map_err(|_| KeyUriError::InvalidValue {
                        scheme: S,
                        name: name.into(),
                        reason: format!("{v:?} is not a decimal slot number"),
                    })?;
                    set_once(&mut uri.slot_id, n, S, name)?
                }
                "slot-description" => set_once(&mut uri.slot_description, text()?, S, name)?,
                "slot-manufacturer" => set_once(&mut uri.slot_manufacturer, text()?, S, name)?,
                "library-manufacturer" => {
                    set_once(&mut uri.library_manufacturer, text()?, S, name)?
                }
                "library-description" => set_once(&mut uri.library_description, text()?, S, name)?,
                "library-version" => set_once(&mut uri.library_version, text()?, S, name)?,
                n if is_vendor_name(n) => {
                    if uri.vendor.insert(n.to_owned(), text()?).is_some() {
                        return Err(KeyUriError::DuplicateAttribute {
                            scheme: S,
                            name: n.into(),
                        });
                    }
                }
                other => {
                    return Err(KeyUriError::UnknownAttribute {
                        scheme: S,
                        part: "path",
                        name: other.to_owned(),
                        expected: PKCS11_PATH_ATTRS,
                    });
                }
            }
        }
        let mut pin_source: Option<PathBuf> = None;
        let mut pin_value: Option<SecretString> = None;
        for attr in query
            .unwrap_or_default()
            .split('&')
            .filter(|a| !a.is_empty())
        {
            let Some((name, raw)) = attr.split_once('=') else {
                // Never echo a query attribute: it may be a PIN.
                return Err(KeyUriError::MalformedAttribute {
                    scheme: S,
                    attr: "<query attribute>".into(),
                });
            };
            match name {
                "module-path" => set_once(
                    &mut uri.module_path,
                    PathBuf::from(decode(S, name, raw)?),
                    S,
                    name,
                )?,
                "module-name" => set_once(&mut uri.module_name, decode(S, name, raw)?, S, name)?,
                "pin-source" => {
                    // A file: URI is percent-decoded once, by the file: parser; a bare path here.
                    let v = match strip_scheme(raw, "file:") {
                        Some(_) => raw.to_owned(),
                        None => decode(S, name, raw)?,
                    };
                    let path = match strip_scheme(&v, "file:") {
                        Some(rest) => {
                            FileKeyUri::parse_rest(rest)
                                .map_err(|e| KeyUriError::InvalidValue {
                                    scheme: S,
                                    name: name.into(),
                                    reason: e.to_string(),
                                })?
                                .path
                        }
                        None if v.contains(':') && !v.starts_with('/') => {
                            return Err(KeyUriError::InvalidValue {
                                scheme: S,
                                name: name.into(),
                                reason: "only file: URIs and paths are supported".into(),
                            });
                        }
                        None => PathBuf::from(v),
                    };
                    if path.as_os_str().is_empty() {
                        return Err(KeyUriError::InvalidValue {
                            scheme: S,
                            name: name.into(),
                            reason: "empty path".into(),
                        });
                    }
                    set_once(&mut pin_source, path, S, name)?
                }
                "pin-value" => {
                    let v = decode(S, name, raw)?;
                    set_once(&mut pin_value, SecretString::from(v), S, name)?
                }
                n if is_vendor_name(n) => {
                    if uri
                        .vendor_query
                        .insert(n.to_owned(), decode(S, n, raw)?)
                        .is_some()
                    {
                        return Err(KeyUriError::DuplicateAttribute {
                            scheme: S,
                            name: n.into(),
                        });
                    }
                }
                other => {
                    return Err(KeyUriError::UnknownAttribute {
                        scheme: S,
                        part: "query",
                        name: other.to_owned(),
                        expected: PKCS11_QUERY_ATTRS,
                    });
                }
            }
        }
        uri.pin = match (pin_source, pin_value) {
            (Some(_), Some(_)) => return Err(KeyUriError::PinSourceAndValue),
            (Some(p), None) => Some(PinSource::File(p)),
            (None, Some(v)) => Some(PinSource::Value(v)),
            (None, None) => None,
        };
        if uri.object.is_none() && uri.id.is_none() {
            return Err(KeyUriError::NoKeyIdentity);
        }
        Ok(uri)
    }
}

/// Redacted RFC 7512 form: `pin-value` is replaced by `pin-value=REDACTED`.
impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enc = |v: &str| utf8_percent_encode(v, PK11_PATH_ESCAPE).to_string();
        let mut path: Vec<String> = Vec::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                path.push(format!("{k}={}", enc(v)));
            }
        };
        push("token", &self.token);
        push("manufacturer", &self.manufacturer);
        push("serial", &self.serial);
        push("model", &self.model);
        push("slot-description", &self.slot_description);
        push("slot-manufacturer", &self.slot_manufacturer);
        push("library-manufacturer", &self.library_manufacturer);
        push("library-description", &self.library_description);
        push("library-version", &self.library_version);
        push("object", &self.object);
        if let Some(slot) = self.slot_id {
            path.push(format!("slot-id={slot}"));
        }
        if let Some(id) = &self.id {
            path.push(format!(
                "id={}",
                id.iter().map(|b| format!("%{b:02x}")).collect::<String>()
            ));
        }
        if let Some(t) = self.object_type {
            path.push(format!("type={}", t.as_str()));
        }
        for (k, v) in &self.vendor {
            path.push(format!("{k}={}", enc(v)));
        }
        let pin_path =
            |p: &Path| utf8_percent_encode(&p.to_string_lossy(), PIN_SOURCE_ESCAPE).to_string();
        let qenc = |v: &str| utf8_percent_encode(v, PK11_QUERY_ESCAPE).to_string();
        let mut query: Vec<String> = Vec::new();
        if let Some(p) = &self.module_path {
            query.push(format!("module-path={}", qenc(&p.to_string_lossy())));
        }
        if let Some(n) = &self.module_name {
            query.push(format!("module-name={}", qenc(n)));
        }
        for (k, v) in &self.vendor_query {
            query.push(format!("{k}={}", qenc(v)));
        }
        match &self.pin {
            Some(PinSource::File(p)) => query.push(if p.is_absolute() {
                format!("pin-source=file://{}", pin_path(p))
            } else {
                format!("pin-source=file:{}", pin_path(p))
            }),
            Some(PinSource::Value(_)) => query.push("pin-value=REDACTED".into()),
            None => {}
        }
        write!(f, "pkcs11:{}", path.join(";"))?;
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

/// How an AWS KMS key is named.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsKeyId {
    /// A key ID (UUID, or `mrk-...` for multi-Region keys).
    KeyId(String),
    /// `alias/NAME`.
    Alias(String),
    /// A key ARN `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`.
    KeyArn(String),
    /// An alias ARN `arn:PARTITION:kms:REGION:ACCOUNT:alias/NAME`.
    AliasArn(String),
}

impl KmsKeyId {
    /// The string the AWS API takes as `KeyId`.
    pub fn as_api_str(&self) -> &str {
        match self {
            KmsKeyId::KeyId(s)
            | KmsKeyId::Alias(s)
            | KmsKeyId::KeyArn(s)
            | KmsKeyId::AliasArn(s) => s,
        }
    }

    /// The alias name (`alias/NAME`), when the key is named by an alias.
    pub fn alias(&self) -> Option<&str> {
        match self {
            KmsKeyId::Alias(s) => Some(s),
            KmsKeyId::AliasArn(s) => s.rsplit_once(':').map(|(_, a)| a),
            _ => None,
        }
    }

    fn parse(s: &str) -> Result<(Self, Option<String>), KeyUriError> {
        let invalid = |reason: String| KeyUriError::InvalidValue {
            scheme: "awskms",
            name: "key".into(),
            reason,
        };
        if s.is_empty() {
            return Err(KeyUriError::NoKmsKey);
        }
        if let Some(rest) = s.strip_prefix("arn:") {
            // arn:PARTITION:kms:REGION:ACCOUNT:RESOURCE
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, region, account, resource] = parts[..] else {
                return Err(invalid(format!(
                    "{s:?} is not an ARN of the form arn:aws:kms:REGION:ACCOUNT:key/ID"
                )));
            };
            let lower_dash = |x: &str| {
                !x.is_empty()
                    && x.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if !partition.starts_with("aws")
                || !lower_dash(partition)
                || service != "kms"
                || !lower_dash(region)
            {
                return Err(invalid(format!(
                    "{s:?} is not a KMS ARN (arn:aws:kms:REGION:ACCOUNT:...)"
                )));
            }
            if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!(
                    "{s:?}: account {account:?} is not a 12-digit AWS account ID"
                )));
            }
            let id = if let Some(k) = resource.strip_prefix("key/") {
                check_key_id(k).map_err(invalid)?;
                KmsKeyId::KeyArn(s.to_owned())
            } else if resource.starts_with("alias/") {
                check_alias(resource).map_err(invalid)?;
                KmsKeyId::AliasArn(s.to_owned())
            } else {
                return Err(invalid(format!(
                    "{s:?}: resource must be key/ID or alias/NAME"
                )));
            };
            return Ok((id, Some(region.to_owned())));
        }
        if s.starts_with("alias/") {
            check_alias(s).map_err(invalid)?;
            return Ok((KmsKeyId::Alias(s.to_owned()), None));
        }
        check_key_id(s).map_err(invalid)?;
        Ok((KmsKeyId::KeyId(s.to_owned()), None))
    }
}

fn check_alias(alias: &str) -> Result<(), String> {
    let name = &alias["alias/".len()..];
    if name.is_empty() || name.len() > 250 {
        return Err(format!(
            "alias {alias:?} must have a name of 1 to 250 characters"
        ));
    }
    if name.starts_with("aws/") {
        return Err(format!(
            "alias {alias:?} is reserved for AWS managed keys, which cannot sign"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
    {
        return Err(format!(
            "alias {alias:?} may contain only letters, digits, '/', '_' and '-'"
        ));
    }
    Ok(())
}

fn check_key_id(id: &str) -> Result<(), String> {
    let body = id.strip_prefix("mrk-").unwrap_or(id);
    let uuid_like = body.len() == 36
        && body.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let mrk_like =
        id.starts_with("mrk-") && body.len() == 32 && body.bytes().all(|b| b.is_ascii_hexdigit());
    if uuid_like || mrk_like {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a KMS key ID (a UUID such as 1234abcd-12ab-34cd-56ef-1234567890ab, or mrk-...), \
             an alias (alias/NAME) or an ARN"
        ))
    }
}

/// An AWS KMS key reference.
///
/// `awskms:///KEY[?region=R&endpoint=URL]` where KEY is a key ID, `alias/NAME`, a key ARN or an
/// alias ARN; or the smallstep form `awskms:key-id=KEY;region=R;endpoint=URL`. The region comes
/// from, in order: the ARN, `region=`, the standard AWS configuration chain. `endpoint=` (an
/// `http://` or `https://` URL) overrides the service endpoint for VPC endpoints and emulators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKmsUri {
    /// The key.
    pub key: KmsKeyId,
    /// The region, when given or implied by an ARN.
    pub region: Option<String>,
    /// An endpoint override.
    pub endpoint: Option<String>,
}

impl AwsKmsUri {
    fn parse_rest(rest: &str) -> Result<Self, KeyUriError> {
        const S: &str = "awskms";
        let mut attrs: Vec<(String, String)> = Vec::new();
        let key_text: String;
        if let Some(after) = rest.strip_prefix("//") {
            let Some(path) = after.strip_prefix('/') else {
                return Err(KeyUriError::InvalidValue {
                    scheme: S,
                    name: "key".into(),
                    reason: "expected awskms:///KEY (three slashes: the host part is empty)".into(),
                });
            };
            let (key, query) = path.split_once('?').unwrap_or((path, ""));
            key_text = decode(S, "key", key)?;
            for attr in query.split('&').filter(|a| !a.is_empty()) {
                let (n, v) =
                    attr.split_once('=')
                        .ok_or_else(|| KeyUriError::MalformedAttribute {
                            scheme: S,
                            attr: attr.to_owned(),
                        })?;
                attrs.push((n.to_owned(), decode(S, n, v)?));
            }
        } else {
            let mut key = None;
            for attr in rest.split(';').filter(|a| !a.is_empty()) {
                let (n, v) =
                    attr.split_once('=')
                        .ok_or_else(|| KeyUriError::MalformedAttribute {
                            scheme: S,
                            attr: attr.to_owned(),
                        })?;
                if n == "key-id" {
                    set_once(&mut key, decode(S, n, v)?, S, n)?;
                } else {
                    attrs.push((n.to_owned(), decode(S, n, v)?));
                }
            }
            key_text = key.ok_or(KeyUriError::NoKmsKey)?;
        }
        let (key, arn_region) = KmsKeyId::parse(&key_text)?;
        let mut region = None;
        let mut endpoint = None;
        for (name, value) in attrs {
            match name.as_str() {
                "region" => {
                    if value.is_empty()
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        return Err(KeyUriError::InvalidValue {
                            scheme: S,
                            name,
                            reason: format!(
                                "{value:?} is not an AWS region name such as eu-west-1"
                            ),
                        });
                    }
                    set_once(&mut region, value, S, "region")?
                }
                "endpoint" => {
                    if !(value.starts_with("http://") || value.starts_with("https://"))
                        || value.len() < 9
                    {
                        return Err(KeyUriError::InvalidValue {
                            scheme: S,
                            name,
                            reason: format!("{value:?} is not an http:// or https:// URL"),
                        });
                    }
                    set_once(&mut endpoint, value, S, "endpoint")?
                }
                other => {
                    return Err(KeyUriError::UnknownAttribute {
                        scheme: S,
                        part: "query",
                        name: other.to_owned(),
                        expected: "region, endpoint",
                    });
                }
            }
        }
        if let (Some(arn), Some(given)) = (&arn_region, &region)
            && arn != given
        {
            return Err(KeyUriError::InvalidValue {
                scheme: S,
                name: "region".into(),
                reason: format!("{given:?} contradicts the ARN's region {arn:?}"),
            });
        }
        Ok(AwsKmsUri {
            key,
            region: region.or(arn_region),
            endpoint,
        })
    }
}

impl fmt::Display for AwsKmsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys and regions are validated to plain characters; the endpoint may hold anything a
        // URL can, so it is percent-encoded to read back as one query value.
        const VALUE: &AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'%')
            .add(b'&')
            .add(b'?')
            .add(b'#')
            .add(b'=')
            .add(b';');
        write!(
            f,
            "awskms:///{}",
            utf8_percent_encode(self.key.as_api_str(), VALUE)
        )?;
        let mut sep = '?';
        if let Some(r) = &self.region {
            write!(f, "{sep}region={}", utf8_percent_encode(r, VALUE))?;
            sep = '&';
        }
        if let Some(e) = &self.endpoint {
            write!(f, "{sep}endpoint={}", utf8_percent_encode(e, VALUE))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn p11(s: &str) -> Pkcs11Uri {
        match KeyUri::parse(s) {
            Ok(KeyUri::Pkcs11(p)) => *p,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn file_forms() {
        for s in [
            "file:/secure/ca.key",
            "file:///secure/ca.key",
            "file://localhost/secure/ca.key",
            "FILE:/secure/ca.key",
        ] {
            assert_eq!(
                KeyUri::parse(s),
                Ok(KeyUri::File(FileKeyUri {
                    path: "/secure/ca.key".into()
                })),
                "{s}"
            );
        }
        assert_eq!(
            KeyUri::parse("file:///a%20b/k.pem"),
            Ok(KeyUri::File(FileKeyUri {
                path: "/a b/k.pem".into()
            }))
        );
        assert_eq!(KeyUri::parse("file:"), Err(KeyUriError::EmptyPath));
        assert!(
            matches!(KeyUri::parse("file://evil/ca.key"), Err(KeyUriError::RemoteFile(h)) if h == "evil")
        );
        let rel = KeyUri::parse("file:keys/ca.key")
            .map(|k| k.resolve_relative(Path::new("/etc/kubesign")));
        assert_eq!(
            rel,
            Ok(KeyUri::File(FileKeyUri {
                path: "/etc/kubesign/keys/ca.key".into()
            }))
        );
    }

    #[test]
    fn unknown_scheme_names_the_forms() {
        let e = KeyUri::parse("/secure/ca.key").unwrap_err();
        assert!(e.to_string().contains("file:/path/to/key.pem"), "{e}");
        let e = KeyUri::parse("vault:foo?token=s3cret").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn pkcs11_rfc7512_example() {
        let u = p11(
            "pkcs11:token=kubernetes;object=kubernetes-ca;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/kubesign/pin",
        );
        assert_eq!(u.token.as_deref(), Some("kubernetes"));
        assert_eq!(u.object.as_deref(), Some("kubernetes-ca"));
        assert_eq!(u.object_type, Some(Pkcs11ObjectType::Private));
        assert_eq!(
            u.module_path.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin, Some(PinSource::File("/etc/kubesign/pin".into())));
    }

    #[test]
    fn pkcs11_ids_serials_and_encoding() {
        let u = p11(
            "pkcs11:serial=DECC0401648;id=%01%ab%FF;slot-id=3;token=My%20Token?pin-source=/run/pin",
        );
        assert_eq!(u.id.as_deref(), Some(&[0x01, 0xab, 0xff][..]));
        assert_eq!(u.slot_id, Some(3));
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.pin, Some(PinSource::File("/run/pin".into())));
        assert!(u.to_string().contains("id=%01%ab%ff"));
    }

    #[test]
    fn pkcs11_pin_value_is_redacted_everywhere() {
        let k = KeyUri::parse("pkcs11:object=ca?pin-value=12345678").unwrap();
        let KeyUri::Pkcs11(u) = &k else { panic!() };
        match &u.pin {
            Some(PinSource::Value(v)) => assert_eq!(v.expose_secret(), "12345678"),
            other => panic!("{other:?}"),
        }
        assert!(!k.to_string().contains("12345678"));
        assert!(!format!("{k:?}").contains("12345678"));
        assert!(!format!("{u:?}").contains("12345678"));
    }

    #[test]
    fn pkcs11_errors() {
        assert_eq!(
            KeyUri::parse("pkcs11:object=a;object=b"),
            Err(KeyUriError::DuplicateAttribute {
                scheme: "pkcs11",
                name: "object".into()
            })
        );
        assert_eq!(
            KeyUri::parse("pkcs11:object=a?pin-source=/p&pin-value=1"),
            Err(KeyUriError::PinSourceAndValue)
        );
        assert_eq!(
            KeyUri::parse("pkcs11:token=t"),
            Err(KeyUriError::NoKeyIdentity)
        );
        assert!(matches!(
            KeyUri::parse("pkcs11:object=a;colour=red"),
            Err(KeyUriError::UnknownAttribute { part: "path", .. })
        ));
        assert!(matches!(
            KeyUri::parse("pkcs11:object=a?pin=1"),
            Err(KeyUriError::UnknownAttribute { part: "query", .. })
        ));
        assert!(matches!(
            KeyUri::parse("pkcs11:object=a;type=key"),
            Err(KeyUriError::InvalidValue { .. })
        ));
        assert!(matches!(
            KeyUri::parse("pkcs11:id=%zz"),
            Err(KeyUriError::BadEncoding { .. })
        ));
        assert!(matches!(
            KeyUri::parse("pkcs11:object=a;slot-id=x"),
            Err(KeyUriError::InvalidValue { .. })
        ));
        assert!(matches!(
            KeyUri::parse("pkcs11:object"),
            Err(KeyUriError::MalformedAttribute { .. })
        ));
        let e = KeyUri::parse("pkcs11:object=a?pin-value")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pin-value"), "{e}");
        let u = p11("pkcs11:object=a;x-vendor=1");
        assert_eq!(u.vendor.get("x-vendor").map(String::as_str), Some("1"));
    }

    #[test]
    fn pkcs11_display_round_trips() {
        for s in [
            "pkcs11:token=kubernetes;object=kubernetes-ca;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kubesign/pin",
            "pkcs11:token=a%20b;object=c%3bd;id=%01?module-name=softhsm2",
        ] {
            let u = KeyUri::parse(s).unwrap();
            assert_eq!(KeyUri::parse(&u.to_string()).unwrap(), u, "{s} -> {u}");
        }
    }

    #[test]
    fn awskms_forms() {
        let k = |s: &str| match KeyUri::parse(s) {
            Ok(KeyUri::AwsKms(k)) => k,
            other => panic!("{s}: {other:?}"),
        };
        let a = k("awskms:///alias/kubernetes-ca");
        assert_eq!(a.key, KmsKeyId::Alias("alias/kubernetes-ca".into()));
        assert_eq!(a.key.alias(), Some("alias/kubernetes-ca"));
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(
            k(&format!("awskms:///{id}")).key,
            KmsKeyId::KeyId(id.into())
        );
        let arn = format!("arn:aws:kms:eu-west-1:111122223333:key/{id}");
        let b = k(&format!("awskms:///{arn}"));
        assert_eq!(b.region.as_deref(), Some("eu-west-1"));
        let c = k("awskms:///alias/ca?region=us-east-1&endpoint=http://127.0.0.1:4566");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        let d = k("awskms:key-id=alias/ca;region=us-east-2");
        assert_eq!(d.region.as_deref(), Some("us-east-2"));
        assert_eq!(
            k("awskms:///arn:aws:kms:us-east-1:111122223333:alias/x")
                .key
                .alias(),
            Some("alias/x")
        );
        assert_eq!(
            k("awskms:///mrk-1234abcd12ab34cd56ef1234567890ab").key,
            KmsKeyId::KeyId("mrk-1234abcd12ab34cd56ef1234567890ab".into())
        );
        assert_eq!(KeyUri::parse(&c.to_string()).unwrap(), KeyUri::AwsKms(c));
    }

    #[test]
    fn awskms_errors() {
        for bad in [
            "awskms:///",
            "awskms://host/alias/x",
            "awskms:///not-a-key",
            "awskms:///alias/aws/ebs",
            "awskms:///alias/with space",
            "awskms:///arn:aws:s3:::bucket",
            "awskms:///arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?region=us-east-1",
            "awskms:///alias/x?colour=red",
            "awskms:///alias/x?endpoint=ftp://x",
            "awskms:region=us-east-1",
        ] {
            assert!(KeyUri::parse(bad).is_err(), "{bad} should fail");
        }
    }
}
