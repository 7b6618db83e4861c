//! Keys on a token: finding a private key by `CKA_LABEL` and/or `CKA_ID`, reading the attributes
//! that say how it was made and whether it can leave the token ([`KeyAttributes`]), and building
//! its SubjectPublicKeyInfo from the matching public key object or from the private key's own
//! public attributes.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use signer_api::keyuri::{Pkcs11ObjectType, Pkcs11Uri};
use signer_api::{ErrorKind, PublicKeyKind, SignerError};
use spki::SubjectPublicKeyInfoOwned;

use crate::encoding::{Curve, ec_point_from_attribute, ec_spki, rsa_spki};
use crate::token::OpError;

/// How a private key is protected, as the token reports it. Read once when a key is loaded;
/// missing attributes count as the unsafe value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct KeyAttributes {
    /// `CKA_SIGN`: the key may sign.
    pub sign: bool,
    /// `CKA_EXTRACTABLE`: the key may be exported (wrapped) from the token.
    pub extractable: bool,
    /// `CKA_SENSITIVE`: the key's private parts cannot be read in plaintext.
    pub sensitive: bool,
    /// `CKA_ALWAYS_SENSITIVE`: the key has been sensitive since it was created.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: the key has never been extractable.
    pub never_extractable: bool,
    /// `CKA_LOCAL`: the key was generated in the token (not imported or unwrapped).
    pub local: bool,
}

impl KeyAttributes {
    /// Whether the attributes prove the key was generated in the token and never left it:
    /// `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE` all true. An imported key
    /// fails this: a copy of it may exist outside the token.
    pub fn generated_in_token(&self) -> bool {
        self.local && self.always_sensitive && self.never_extractable
    }

    /// The attributes as `name=value` strings for listings: `sign=true`, `extractable=false`,
    /// `sensitive=true`, `always-sensitive=true`, `never-extractable=true`, `local=true`.
    pub fn describe(&self) -> Vec<String> {
        [
            ("sign", self.sign),
            ("extractable", self.extractable),
            ("sensitive", self.sensitive),
            ("always-sensitive", self.always_sensitive),
            ("never-extractable", self.never_extractable),
            ("local", self.local),
        ]
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
    }

    fn from_attributes(attrs: &[Attribute]) -> Self {
        let mut a = KeyAttributes {
            sign: false,
            extractable: true,
            sensitive: false,
            always_sensitive: false,
            never_extractable: false,
            local: false,
        };
        for attr in attrs {
            match attr {
                Attribute::Sign(v) => a.sign = *v,
                Attribute::Extractable(v) => a.extractable = *v,
                Attribute::Sensitive(v) => a.sensitive = *v,
                Attribute::AlwaysSensitive(v) => a.always_sensitive = *v,
                Attribute::NeverExtractable(v) => a.never_extractable = *v,
                Attribute::Local(v) => a.local = *v,
                _ => {}
            }
        }
        a
    }
}

/// A private key listed on a token (for `kubesign keys list`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// `CKA_LABEL`, if set and UTF-8.
    pub label: Option<String>,
    /// `CKA_ID` (may be empty).
    pub id: Vec<u8>,
    /// The key type, when kubesign can sign with it (RSA 2048-8192, EC P-256/P-384).
    pub kind: Option<PublicKeyKind>,
    /// The protection attributes.
    pub attributes: KeyAttributes,
}

impl KeyInfo {
    /// A `pkcs11:` path naming this key on `token`, e.g.
    /// `pkcs11:token=kubernetes;object=kubernetes-ca;id=%01%02;type=private` (no module or PIN).
    pub fn uri_path(&self, token: &str) -> String {
        let uri = Pkcs11Uri {
            token: Some(token.to_owned()),
            object: self.label.clone(),
            id: (!self.id.is_empty()).then(|| self.id.clone()),
            object_type: Some(Pkcs11ObjectType::Private),
            ..Pkcs11Uri::default()
        };
        uri.to_string()
    }
}

/// Which key a URI names: label and/or id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeySelector {
    pub label: Option<String>,
    pub id: Option<Vec<u8>>,
}

impl KeySelector {
    /// The selector of a signing-key URI; `type=` other than `private` is refused.
    pub fn from_uri(uri: &Pkcs11Uri) -> Result<Self, SignerError> {
        match uri.object_type {
            None | Some(Pkcs11ObjectType::Private) => {}
            Some(_) => {
                return Err(SignerError::new(
                    ErrorKind::InvalidKeyReference,
                    format!(
                        "{uri}: a signing key URI names the private key: use type=private or leave type= out"
                    ),
                ));
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(SignerError::new(
                ErrorKind::InvalidKeyReference,
                "pkcs11: the URI names no key: add object=LABEL or id=%XX... to its path",
            ));
        }
        Ok(KeySelector {
            label: uri.object.clone(),
            id: uri.id.clone(),
        })
    }

    /// `object "x" id %01%02`, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.label {
            parts.push(format!("object {l:?}"));
        }
        if let Some(id) = &self.id {
            parts.push(format!("id {}", hex_id(id)));
        }
        parts.join(" ")
    }

    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }
}

/// `%01%ab`: an id as it appears in a PKCS#11 URI.
pub(crate) fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("%{b:02x}")).collect()
}

/// Finds the one private key matching `sel`.
pub(crate) fn find_private_key(
    session: &Session,
    sel: &KeySelector,
    token_target: &str,
) -> Result<ObjectHandle, OpError> {
    let target = format!("{token_target} {}", sel.describe());
    let found = session
        .find_objects(&sel.template(ObjectClass::PRIVATE_KEY))
        .map_err(|e| OpError::ck(e, &target))?;
    match found.as_slice() {
        [h] => Ok(*h),
        [] => Err(SignerError::new(
            ErrorKind::NotFound,
            format!("pkcs11: no private key with {} on {token_target}", sel.describe()),
        )
        .into()),
        many => Err(SignerError::new(
            ErrorKind::InvalidKeyReference,
            format!(
                "pkcs11: {} private keys match {} on {token_target}: add id= (or object=) to the key URI",
                many.len(),
                sel.describe()
            ),
        )
        .into()),
    }
}

/// Whether any private or public key object carries `label` or `id`; returns a description of
/// the first one found.
pub(crate) fn existing_key(
    session: &Session,
    label: &str,
    id: &[u8],
    token_target: &str,
) -> Result<Option<String>, OpError> {
    for (class, class_name) in [
        (ObjectClass::PRIVATE_KEY, "private key"),
        (ObjectClass::PUBLIC_KEY, "public key"),
    ] {
        for (attr, what) in [
            (
                Attribute::Label(label.as_bytes().to_vec()),
                format!("label {label:?}"),
            ),
            (Attribute::Id(id.to_vec()), format!("id {}", hex_id(id))),
        ] {
            let found = session
                .find_objects(&[Attribute::Class(class), attr])
                .map_err(|e| OpError::ck(e, token_target))?;
            if !found.is_empty() {
                return Ok(Some(format!("a {class_name} with {what}")));
            }
        }
    }
    Ok(None)
}

/// A private key as loaded: handle, identity, attributes and public key.
pub(crate) struct LoadedKey {
    pub handle: ObjectHandle,
    pub label: Option<String>,
    pub id: Vec<u8>,
    pub attributes: KeyAttributes,
    pub public_key: SubjectPublicKeyInfoOwned,
    pub kind: PublicKeyKind,
    pub curve: Option<Curve>,
}

const PRIVATE_ATTRS: [AttributeType; 12] = [
    AttributeType::KeyType,
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::Sign,
    AttributeType::Extractable,
    AttributeType::Sensitive,
    AttributeType::AlwaysSensitive,
    AttributeType::NeverExtractable,
    AttributeType::Local,
    AttributeType::Modulus,
    AttributeType::PublicExponent,
    AttributeType::EcParams,
];

/// Reads everything kubesign needs about the private key `handle`.
pub(crate) fn load_key(
    session: &Session,
    handle: ObjectHandle,
    target: &str,
) -> Result<LoadedKey, OpError> {
    let attrs = session
        .get_attributes(handle, &PRIVATE_ATTRS)
        .map_err(|e| OpError::ck(e, target))?;
    let mut key_type = None;
    let mut label = None;
    let mut id = Vec::new();
    let mut modulus = None;
    let mut exponent = None;
    let mut ec_params = None;
    for a in &attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(*t),
            Attribute::Label(l) => label = String::from_utf8(l.clone()).ok(),
            Attribute::Id(i) => id = i.clone(),
            Attribute::Modulus(m) if !m.is_empty() => modulus = Some(m.clone()),
            Attribute::PublicExponent(e) if !e.is_empty() => exponent = Some(e.clone()),
            Attribute::EcParams(p) if !p.is_empty() => ec_params = Some(p.clone()),
            _ => {}
        }
    }
    let attributes = KeyAttributes::from_attributes(&attrs);
    let unsupported = |m: String| -> OpError {
        SignerError::new(ErrorKind::Unsupported, format!("pkcs11: {target}: {m}")).into()
    };

    // The public key object with the same id (or, without an id, the same label).
    let public_sel = if id.is_empty() {
        KeySelector {
            label: label.clone(),
            id: None,
        }
    } else {
        KeySelector {
            label: None,
            id: Some(id.clone()),
        }
    };
    let public = if public_sel.label.is_some() || public_sel.id.is_some() {
        let found = session
            .find_objects(&public_sel.template(ObjectClass::PUBLIC_KEY))
            .map_err(|e| OpError::ck(e, target))?;
        match found.as_slice() {
            [h] => Some(*h),
            _ => None,
        }
    } else {
        None
    };

    let (public_key, curve) = match key_type {
        Some(KeyType::RSA) => {
            if let Some(h) = public {
                let pa = session
                    .get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])
                    .map_err(|e| OpError::ck(e, target))?;
                for a in pa {
                    match a {
                        Attribute::Modulus(m) if !m.is_empty() => modulus = Some(m),
                        Attribute::PublicExponent(e) if !e.is_empty() => exponent = Some(e),
                        _ => {}
                    }
                }
            }
            let (Some(m), Some(e)) = (modulus, exponent) else {
                return Err(unsupported(
                    "RSA key without a readable CKA_MODULUS and CKA_PUBLIC_EXPONENT, and no public key object with its id".into(),
                ));
            };
            let spki = rsa_spki(&m, &e).map_err(|err| unsupported(err.0))?;
            (spki, None)
        }
        Some(KeyType::EC) => {
            let Some(params) = ec_params else {
                return Err(unsupported("EC key without CKA_EC_PARAMS".into()));
            };
            let curve = Curve::from_ec_params(&params).map_err(|err| unsupported(err.0))?;
            // The point lives on the public key object; some tokens also expose it on the private key.
            let mut point_attr = None;
            for h in public.into_iter().chain(std::iter::once(handle)) {
                let pa = session
                    .get_attributes(h, &[AttributeType::EcPoint])
                    .map_err(|e| OpError::ck(e, target))?;
                if let Some(Attribute::EcPoint(p)) = pa.into_iter().next()
                    && !p.is_empty()
                {
                    point_attr = Some(p);
                    break;
                }
            }
            let Some(point_attr) = point_attr else {
                return Err(unsupported(
                    "EC key without a public key object (same id or label) holding CKA_EC_POINT: \
                     the public key cannot be determined"
                        .into(),
                ));
            };
            let point =
                ec_point_from_attribute(curve, &point_attr).map_err(|err| unsupported(err.0))?;
            (
                ec_spki(curve, &point).map_err(|err| unsupported(err.0))?,
                Some(curve),
            )
        }
        Some(other) => {
            return Err(unsupported(format!(
                "key type {other} is not supported: kubesign signs with RSA and EC (P-256, P-384) keys"
            )));
        }
        None => return Err(unsupported("the token did not report CKA_KEY_TYPE".into())),
    };
    let kind = PublicKeyKind::from_spki(&public_key).map_err(|e| {
        OpError::from(SignerError::new(
            ErrorKind::Unsupported,
            format!("pkcs11: {target}: {e}"),
        ))
    })?;
    Ok(LoadedKey {
        handle,
        label,
        id,
        attributes,
        public_key,
        kind,
        curve,
    })
}

/// Lists the private keys matching `sel` (every private key when it is empty).
pub(crate) fn list_keys(
    session: &Session,
    sel: &KeySelector,
    token_target: &str,
) -> Result<Vec<KeyInfo>, OpError> {
    let handles = session
        .find_objects(&sel.template(ObjectClass::PRIVATE_KEY))
        .map_err(|e| OpError::ck(e, token_target))?;
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match load_key(session, h, token_target) {
            Ok(k) => out.push(KeyInfo {
                label: k.label,
                id: k.id,
                kind: Some(k.kind),
                attributes: k.attributes,
            }),
            Err(OpError { error, .. }) if error.kind() == ErrorKind::Unsupported => {
                // Listed all the same, without a kind kubesign can use.
                let attrs = session
                    .get_attributes(
                        h,
                        &[
                            AttributeType::Label,
                            AttributeType::Id,
                            AttributeType::Sign,
                            AttributeType::Extractable,
                            AttributeType::Sensitive,
                            AttributeType::AlwaysSensitive,
                            AttributeType::NeverExtractable,
                            AttributeType::Local,
                        ],
                    )
                    .map_err(|e| OpError::ck(e, token_target))?;
                let mut label = None;
                let mut id = Vec::new();
                for a in &attrs {
                    match a {
                        Attribute::Label(l) => label = String::from_utf8(l.clone()).ok(),
                        Attribute::Id(i) => id = i.clone(),
                        _ => {}
                    }
                }
                out.push(KeyInfo {
                    label,
                    id,
                    kind: None,
                    attributes: KeyAttributes::from_attributes(&attrs),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
