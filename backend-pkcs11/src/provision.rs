//! Creating keys in a token: generating a key pair inside it, or importing a PKCS#8 private key
//! (moving an existing kubeadm CA into the HSM).
//!
//! Both make the private key `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`,
//! allowed to sign and nothing else (no decrypt, unwrap or derive; the public key may verify
//! only), with the label and id the URI gives (a random 16-byte id when
//! it gives only `object=`, the hex of the id as label when it gives only `id=`); both refuse when
//! a key object with that label or id exists. Creation is serialised process-wide (SoftHSM fails
//! concurrent key generation) and runs on a read-write session opened for it. Imported key material
//! and every attribute buffer built from it are zeroized.

use secrecy::ExposeSecret;
use signer_api::signer::PrivateKeyMaterial;
use signer_api::{ErrorKind, KeyAlgorithm, PublicKeyKind, SignerError};
use spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroize;

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::Session;

use crate::encoding::{Curve, PrivateParts, ec_point_attribute, parse_pkcs8};
use crate::key::{KeySelector, existing_key, hex_id};
use crate::token::{OpError, Token};

/// Serialises key generation and import across the process.
pub(crate) static CREATION_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The label and id a new key gets from its URI.
pub(crate) fn new_key_identity(sel: &KeySelector) -> Result<(String, Vec<u8>), SignerError> {
    let id = match &sel.id {
        Some(id) => id.clone(),
        None => {
            let mut id = vec![0u8; 16];
            aws_lc_rs::rand::fill(&mut id).map_err(|_| {
                SignerError::new(ErrorKind::Backend, "pkcs11: no randomness for a key id")
            })?;
            id
        }
    };
    let label = match &sel.label {
        Some(l) => l.clone(),
        None => id.iter().map(|b| format!("{b:02x}")).collect(),
    };
    Ok((label, id))
}

fn refuse_existing(
    session: &Session,
    label: &str,
    id: &[u8],
    token_target: &str,
) -> Result<(), OpError> {
    if let Some(what) = existing_key(session, label, id, token_target)? {
        return Err(SignerError::new(
            ErrorKind::KeyPolicy,
            format!(
                "pkcs11: {token_target} already holds {what}; kubesign never replaces or shadows a \
                 key: adopt the existing key (kubesign ca init --adopt) or choose another object= \
                 and id="
            ),
        )
        .into());
    }
    Ok(())
}

/// Generates a key pair of `algorithm` inside the token. Blocking; the caller holds
/// [`CREATION_LOCK`].
pub(crate) fn generate(
    token: &Token,
    algorithm: KeyAlgorithm,
    label: &str,
    id: &[u8],
) -> Result<(), SignerError> {
    let target = format!("{} object {label:?} id {}", token.target(), hex_id(id));
    let common_pub = |t: &mut Vec<Attribute>| {
        t.extend([
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]);
    };
    let mut private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mut public = Vec::new();
    common_pub(&mut public);
    let (mechanism, mech_type) = match algorithm {
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            let bits: u64 = match algorithm {
                KeyAlgorithm::Rsa2048 => 2048,
                KeyAlgorithm::Rsa3072 => 3072,
                _ => 4096,
            };
            public.extend([
                Attribute::ModulusBits(bits.into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            ]);
            (
                Mechanism::RsaPkcsKeyPairGen,
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            )
        }
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            let curve = if algorithm == KeyAlgorithm::EcdsaP256 {
                Curve::P256
            } else {
                Curve::P384
            };
            public.push(Attribute::EcParams(curve.ec_params_der()));
            private.push(Attribute::Derive(false));
            (Mechanism::EccKeyPairGen, MechanismType::ECC_KEY_PAIR_GEN)
        }
        other => {
            return Err(SignerError::new(
                ErrorKind::Unsupported,
                format!("pkcs11: cannot generate {other} keys"),
            ));
        }
    };
    if !token.has_mechanism(mech_type) {
        return Err(SignerError::new(
            ErrorKind::Unsupported,
            format!(
                "pkcs11: {}: the token does not offer {} (C_GetMechanismList)",
                token.target(),
                mech_type
            ),
        ));
    }
    let token_target = token.target();
    token.with_admin_session(|session| {
        refuse_existing(session, label, id, &token_target)?;
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| OpError::ck(e, &target))?;
        Ok(())
    })?;
    tracing::info!(token = %token.label(), label, id = %hex_id(id), %algorithm, "generated a key pair in the token");
    Ok(())
}

/// An attribute template holding secret values, zeroized on drop.
struct SecretTemplate(Vec<Attribute>);

impl SecretTemplate {
    fn wipe(&mut self) {
        for a in &mut self.0 {
            match a {
                Attribute::Value(v)
                | Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v) => v.zeroize(),
                _ => {}
            }
        }
    }
}

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Checks PKCS#8 material with aws-lc and returns its public key. Blocking (RSA key checks).
pub(crate) fn public_key_of(
    material: &PrivateKeyMaterial,
) -> Result<SubjectPublicKeyInfoOwned, SignerError> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
        RsaKeyPair,
    };
    use der::Decode;
    let der = material.pkcs8_der.expose_secret();
    let bad = |m: String| SignerError::new(ErrorKind::InvalidKeyReference, m);
    let spki_der = if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der) {
        k.public_key().as_der().map(|d| d.as_ref().to_vec())
    } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, der) {
        k.public_key().as_der().map(|d| d.as_ref().to_vec())
    } else {
        match RsaKeyPair::from_pkcs8(der) {
            Ok(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Err(e) => {
                return Err(bad(format!(
                    "pkcs11: the key to import is not an RSA or ECDSA P-256/P-384 PKCS#8 key ({e})"
                )));
            }
        }
    }
    .map_err(|_| bad("pkcs11: cannot encode the public key of the key to import".into()))?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der)
        .map_err(|e| bad(format!("pkcs11: public key of the key to import: {e}")))?;
    let kind = PublicKeyKind::from_spki(&spki)
        .map_err(|e| SignerError::new(ErrorKind::Unsupported, format!("pkcs11: import: {e}")))?;
    if kind != material.algorithm.public_key_kind() {
        return Err(SignerError::new(
            ErrorKind::KeyMismatch,
            format!(
                "pkcs11: the key to import is {kind}, but it was declared as {}",
                material.algorithm
            ),
        ));
    }
    Ok(spki)
}

/// Creates the private and public key objects for `material`. Blocking; the caller holds
/// [`CREATION_LOCK`].
pub(crate) fn import(
    token: &Token,
    material: &PrivateKeyMaterial,
    spki: &SubjectPublicKeyInfoOwned,
    label: &str,
    id: &[u8],
) -> Result<(), SignerError> {
    let target = format!("{} object {label:?} id {}", token.target(), hex_id(id));
    let parts = parse_pkcs8(material.pkcs8_der.expose_secret()).map_err(|e| {
        SignerError::new(
            ErrorKind::InvalidKeyReference,
            format!("pkcs11: import: {}", e.0),
        )
    })?;
    let identity = |t: &mut Vec<Attribute>| {
        t.extend([
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]);
    };
    let mut private = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
    ];
    identity(&mut private);
    let mut public = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ];
    identity(&mut public);
    match parts {
        PrivateParts::Rsa(p) => {
            private.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(p.modulus.to_vec()),
                Attribute::PublicExponent(p.public_exponent.to_vec()),
                Attribute::PrivateExponent(p.private_exponent.to_vec()),
                Attribute::Prime1(p.prime1.to_vec()),
                Attribute::Prime2(p.prime2.to_vec()),
                Attribute::Exponent1(p.exponent1.to_vec()),
                Attribute::Exponent2(p.exponent2.to_vec()),
                Attribute::Coefficient(p.coefficient.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(p.modulus.to_vec()),
                Attribute::PublicExponent(p.public_exponent.to_vec()),
            ]);
        }
        PrivateParts::Ec { curve, scalar } => {
            let point = spki.subject_public_key.as_bytes().ok_or_else(|| {
                SignerError::new(
                    ErrorKind::Backend,
                    "pkcs11: import: malformed EC public key",
                )
            })?;
            let point = ec_point_attribute(point)
                .map_err(|e| SignerError::new(ErrorKind::Backend, format!("pkcs11: {}", e.0)))?;
            private.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::Derive(false),
                Attribute::EcParams(curve.ec_params_der()),
                Attribute::Value(scalar.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(curve.ec_params_der()),
                Attribute::EcPoint(point),
            ]);
        }
    }
    let private = SecretTemplate(private);
    let token_target = token.target();
    token.with_admin_session(|session| {
        refuse_existing(session, label, id, &token_target)?;
        let handle = session
            .create_object(&private.0)
            .map_err(|e| OpError::ck(e, &target))?;
        if let Err(e) = session.create_object(&public) {
            // Leave nothing half-imported behind.
            if let Err(d) = session.destroy_object(handle) {
                tracing::error!(key = %target, error = %d, "could not remove the imported private key after its public key failed; remove it by hand");
            }
            return Err(OpError::ck(e, &target));
        }
        Ok(())
    })?;
    drop(private);
    tracing::info!(token = %token.label(), label, id = %hex_id(id), algorithm = %material.algorithm, "imported a private key into the token");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_key_identity_from_uri_parts() {
        let (label, id) = new_key_identity(&KeySelector {
            label: Some("ca".into()),
            id: None,
        })
        .unwrap();
        assert_eq!(label, "ca");
        assert_eq!(id.len(), 16);
        let (label, id) = new_key_identity(&KeySelector {
            label: None,
            id: Some(vec![0x01, 0xab]),
        })
        .unwrap();
        assert_eq!(label, "01ab");
        assert_eq!(id, vec![0x01, 0xab]);
    }

    #[test]
    fn secret_template_zeroizes() {
        let mut probe = SecretTemplate(vec![
            Attribute::Value(vec![7; 32]),
            Attribute::Label(b"keep".to_vec()),
        ]);
        // What the destructor runs, observed before the buffers are freed.
        probe.wipe();
        assert!(matches!(&probe.0[0], Attribute::Value(v) if v.is_empty()));
        assert!(matches!(&probe.0[1], Attribute::Label(v) if v == b"keep"));
    }
}
