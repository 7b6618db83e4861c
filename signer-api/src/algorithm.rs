//! Key and signature algorithms: kubeadm's key type names, the X.509 signature algorithms kubesign
//! issues with, and the analysis of a SubjectPublicKeyInfo into a key kind the policy can judge.

use std::fmt;
use std::str::FromStr;

use const_oid::ObjectIdentifier;
use der::asn1::{AnyRef, UintRef};
use der::{Decode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// OIDs used throughout kubesign.
pub mod oid {
    use const_oid::ObjectIdentifier;

    /// rsaEncryption (RFC 8017)
    pub const RSA_ENCRYPTION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    /// sha1WithRSAEncryption
    pub const SHA1_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
    /// sha256WithRSAEncryption
    pub const SHA256_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
    /// sha384WithRSAEncryption
    pub const SHA384_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
    /// sha512WithRSAEncryption
    pub const SHA512_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
    /// id-ecPublicKey (RFC 5480)
    pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    /// secp256r1 / prime256v1 / P-256
    pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    /// secp384r1 / P-384
    pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    /// ecdsa-with-SHA256 (RFC 5758)
    pub const ECDSA_WITH_SHA256: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    /// ecdsa-with-SHA384
    pub const ECDSA_WITH_SHA384: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
    /// ecdsa-with-SHA512
    pub const ECDSA_WITH_SHA512: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
    /// id-kp-serverAuth
    pub const KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
    /// id-kp-clientAuth
    pub const KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
    /// PKCS#9 extensionRequest attribute
    pub const EXTENSION_REQUEST: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
    /// subjectAltName extension
    pub const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
    /// basicConstraints extension
    pub const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
    /// keyUsage extension
    pub const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
    /// extKeyUsage extension
    pub const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
    /// subjectKeyIdentifier extension
    pub const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
    /// authorityKeyIdentifier extension
    pub const AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.5.29.35");
}

/// A CA key type, named as kubeadm names it in `ClusterConfiguration.encryptionAlgorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus (kubeadm's default).
    #[default]
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
}

impl KeyAlgorithm {
    /// Every algorithm, in kubeadm's order.
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
    ];

    /// kubeadm's name for the algorithm, e.g. `ECDSA-P256`.
    pub fn kubeadm_name(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa2048 => "RSA-2048",
            KeyAlgorithm::Rsa3072 => "RSA-3072",
            KeyAlgorithm::Rsa4096 => "RSA-4096",
            KeyAlgorithm::EcdsaP256 => "ECDSA-P256",
            KeyAlgorithm::EcdsaP384 => "ECDSA-P384",
        }
    }

    /// The kind of public key this algorithm produces.
    pub fn public_key_kind(self) -> PublicKeyKind {
        match self {
            KeyAlgorithm::Rsa2048 => PublicKeyKind::Rsa { bits: 2048 },
            KeyAlgorithm::Rsa3072 => PublicKeyKind::Rsa { bits: 3072 },
            KeyAlgorithm::Rsa4096 => PublicKeyKind::Rsa { bits: 4096 },
            KeyAlgorithm::EcdsaP256 => PublicKeyKind::EcP256,
            KeyAlgorithm::EcdsaP384 => PublicKeyKind::EcP384,
        }
    }

    /// The signature algorithm kubesign uses with a key of this type.
    pub fn signature_algorithm(self) -> SignatureAlgorithm {
        SignatureAlgorithm::for_key(self.public_key_kind())
            .expect("invariant: every KeyAlgorithm has a signature algorithm")
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kubeadm_name())
    }
}

/// The error for a key algorithm name that kubeadm does not know.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown key algorithm {0:?}: expected one of RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384"
)]
pub struct UnknownKeyAlgorithm(pub String);

impl FromStr for KeyAlgorithm {
    type Err = UnknownKeyAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.kubeadm_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownKeyAlgorithm(s.to_owned()))
    }
}

impl serde::Serialize for KeyAlgorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.kubeadm_name())
    }
}

impl<'de> serde::Deserialize<'de> for KeyAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The signature algorithm a CA signs certificates with. Chosen from the key type as Go's
/// crypto/x509 (and therefore kubeadm and kube-controller-manager) chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// ecdsa-with-SHA256 for P-256 keys; the signature value is a DER `Ecdsa-Sig-Value`.
    EcdsaP256Sha256,
    /// ecdsa-with-SHA384 for P-384 keys; the signature value is a DER `Ecdsa-Sig-Value`.
    EcdsaP384Sha384,
    /// sha256WithRSAEncryption (RSASSA-PKCS1-v1_5 with SHA-256) for RSA keys.
    RsaPkcs1Sha256,
}

impl SignatureAlgorithm {
    /// The algorithm kubesign uses for a key of this kind, or `None` for keys it does not sign with.
    pub fn for_key(kind: PublicKeyKind) -> Option<Self> {
        match kind {
            PublicKeyKind::EcP256 => Some(SignatureAlgorithm::EcdsaP256Sha256),
            PublicKeyKind::EcP384 => Some(SignatureAlgorithm::EcdsaP384Sha384),
            PublicKeyKind::Rsa { .. } => Some(SignatureAlgorithm::RsaPkcs1Sha256),
        }
    }

    /// The OID that goes into the certificate's signature algorithm fields.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => oid::ECDSA_WITH_SHA256,
            SignatureAlgorithm::EcdsaP384Sha384 => oid::ECDSA_WITH_SHA384,
            SignatureAlgorithm::RsaPkcs1Sha256 => oid::SHA256_WITH_RSA,
        }
    }

    /// The AlgorithmIdentifier: ECDSA has absent parameters, PKCS#1 v1.5 an explicit NULL.
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        let parameters = match self {
            SignatureAlgorithm::RsaPkcs1Sha256 => Some(der::Any::from(AnyRef::NULL)),
            _ => None,
        };
        AlgorithmIdentifierOwned {
            oid: self.oid(),
            parameters,
        }
    }

    /// Whether a key of `kind` can make signatures of this algorithm.
    pub fn fits(self, kind: PublicKeyKind) -> bool {
        matches!(
            (self, kind),
            (SignatureAlgorithm::EcdsaP256Sha256, PublicKeyKind::EcP256)
                | (SignatureAlgorithm::EcdsaP384Sha384, PublicKeyKind::EcP384)
                | (
                    SignatureAlgorithm::RsaPkcs1Sha256,
                    PublicKeyKind::Rsa { .. }
                )
        )
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureAlgorithm::EcdsaP256Sha256 => "ECDSA-SHA256",
            SignatureAlgorithm::EcdsaP384Sha384 => "ECDSA-SHA384",
            SignatureAlgorithm::RsaPkcs1Sha256 => "SHA256-RSA",
        })
    }
}

/// What kind of public key a SubjectPublicKeyInfo holds, as far as kubesign's policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublicKeyKind {
    /// An RSA key with a modulus of this many bits.
    Rsa {
        /// Modulus length in bits.
        bits: usize,
    },
    /// An EC key on P-256.
    EcP256,
    /// An EC key on P-384.
    EcP384,
}

impl fmt::Display for PublicKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            PublicKeyKind::EcP256 => f.write_str("ECDSA-P256"),
            PublicKeyKind::EcP384 => f.write_str("ECDSA-P384"),
        }
    }
}

/// Why a public key is not acceptable to kubesign.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyPolicyError {
    /// RSA modulus below 2048 bits.
    #[error("RSA key of {bits} bits is too small: kubesign requires at least 2048 bits")]
    RsaTooSmall {
        /// The modulus length found.
        bits: usize,
    },
    /// RSA modulus above what verifiers accept.
    #[error("RSA key of {bits} bits is too large: kubesign accepts at most 8192 bits")]
    RsaTooLarge {
        /// The modulus length found.
        bits: usize,
    },
    /// An elliptic curve other than P-256 and P-384.
    #[error("EC key on curve {curve} is not supported: kubesign accepts P-256 and P-384")]
    UnsupportedCurve {
        /// The curve OID, or a description of the parameters.
        curve: String,
    },
    /// A key algorithm that is neither RSA nor EC (for example Ed25519).
    #[error(
        "public key algorithm {oid} is not supported: kubesign accepts RSA (2048 bits or more) and ECDSA P-256/P-384"
    )]
    UnsupportedAlgorithm {
        /// The algorithm OID.
        oid: ObjectIdentifier,
    },
    /// The key bytes do not parse.
    #[error("malformed public key: {0}")]
    Malformed(String),
}

#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    #[allow(dead_code)]
    public_exponent: UintRef<'a>,
}

impl PublicKeyKind {
    /// Classifies a SubjectPublicKeyInfo and applies kubesign's key policy: RSA 2048 to 8192 bits,
    /// EC on P-256 or P-384, nothing else.
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, KeyPolicyError> {
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| KeyPolicyError::Malformed("subjectPublicKey has unused bits".into()))?;
        match spki.algorithm.oid {
            oid::RSA_ENCRYPTION => {
                let key = RsaPublicKey::from_der(key_bytes)
                    .map_err(|e| KeyPolicyError::Malformed(format!("RSA public key: {e}")))?;
                let m = key.modulus.as_bytes();
                let bits = match m.first() {
                    Some(first) => m.len() * 8 - first.leading_zeros() as usize,
                    None => 0,
                };
                if bits < 2048 {
                    Err(KeyPolicyError::RsaTooSmall { bits })
                } else if bits > 8192 {
                    Err(KeyPolicyError::RsaTooLarge { bits })
                } else {
                    Ok(PublicKeyKind::Rsa { bits })
                }
            }
            oid::EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                    .ok_or_else(|| KeyPolicyError::UnsupportedCurve {
                        curve: "explicit or missing parameters".into(),
                    })?;
                let (kind, point_len) = match curve {
                    oid::SECP256R1 => (PublicKeyKind::EcP256, 65),
                    oid::SECP384R1 => (PublicKeyKind::EcP384, 97),
                    other => {
                        return Err(KeyPolicyError::UnsupportedCurve {
                            curve: curve_name(other),
                        });
                    }
                };
                if key_bytes.len() != point_len || key_bytes[0] != 0x04 {
                    return Err(KeyPolicyError::Malformed(format!(
                        "{kind} public key must be an uncompressed point of {point_len} bytes"
                    )));
                }
                Ok(kind)
            }
            other => Err(KeyPolicyError::UnsupportedAlgorithm { oid: other }),
        }
    }
}

fn curve_name(oid: ObjectIdentifier) -> String {
    match const_oid::db::DB.by_oid(&oid) {
        Some(name) => format!("{name} ({oid})"),
        None => oid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_names_round_trip() {
        for a in KeyAlgorithm::ALL {
            assert_eq!(a.kubeadm_name().parse::<KeyAlgorithm>().ok(), Some(a));
        }
        assert!("ed25519".parse::<KeyAlgorithm>().is_err());
        assert_eq!(
            "ecdsa-p384".parse::<KeyAlgorithm>().ok(),
            Some(KeyAlgorithm::EcdsaP384)
        );
    }

    #[test]
    fn signature_algorithms_fit_their_keys() {
        for a in KeyAlgorithm::ALL {
            assert!(a.signature_algorithm().fits(a.public_key_kind()));
        }
        assert!(!SignatureAlgorithm::EcdsaP256Sha256.fits(PublicKeyKind::EcP384));
    }
}
