//! DER in and out of PKCS#11 attributes: SubjectPublicKeyInfo from `CKA_MODULUS` /
//! `CKA_PUBLIC_EXPONENT` or `CKA_EC_PARAMS` / `CKA_EC_POINT`, the `Ecdsa-Sig-Value` X.509 wants
//! from the raw `r || s` that `CKM_ECDSA` returns, the PKCS#1 `DigestInfo` for `CKM_RSA_PKCS`, and
//! the parts of a PKCS#8 private key that become `CKA_*` attributes on import.
//!
//! Everything here is pure: no token, no I/O. Borrowed views into secret input are returned as
//! borrows, so the caller controls (and zeroizes) every copy.

use der::asn1::{AnyRef, BitString, ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode, Reader, Sequence, SliceReader};
use signer_api::PublicKeyKind;
use signer_api::algorithm::oid;
use spki::{AlgorithmIdentifierOwned, AlgorithmIdentifierRef, SubjectPublicKeyInfoOwned};

/// An encoding problem, reported by callers as a backend or unsupported-key error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodingError(pub String);

fn e(msg: impl Into<String>) -> EncodingError {
    EncodingError(msg.into())
}

#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

#[derive(Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// The named curves kubesign signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
}

impl Curve {
    /// The curve's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Curve::P256 => oid::SECP256R1,
            Curve::P384 => oid::SECP384R1,
        }
    }

    /// The length in bytes of a field element (and of each of `r` and `s`).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    /// `CKA_EC_PARAMS`: the DER encoding of the named curve's OID.
    pub fn ec_params_der(self) -> Vec<u8> {
        // Encoding a constant OID cannot fail; an empty vector would be refused by the token.
        self.oid().to_der().unwrap_or_default()
    }

    /// The public key kind.
    pub fn kind(self) -> PublicKeyKind {
        match self {
            Curve::P256 => PublicKeyKind::EcP256,
            Curve::P384 => PublicKeyKind::EcP384,
        }
    }

    /// The curve named by `CKA_EC_PARAMS` (a DER OID; explicit parameters are not supported).
    pub fn from_ec_params(params: &[u8]) -> Result<Curve, EncodingError> {
        let oid = ObjectIdentifier::from_der(params).map_err(|_| {
            e("CKA_EC_PARAMS is not a named-curve OID (explicit curve parameters are not supported)")
        })?;
        Self::from_oid(oid)
    }

    /// The curve with this OID.
    pub fn from_oid(oid: ObjectIdentifier) -> Result<Curve, EncodingError> {
        match oid {
            oid::SECP256R1 => Ok(Curve::P256),
            oid::SECP384R1 => Ok(Curve::P384),
            other => Err(e(format!(
                "EC curve {other} is not supported: kubesign signs with P-256 and P-384"
            ))),
        }
    }
}

/// An RSA SubjectPublicKeyInfo (rsaEncryption with NULL parameters) from big-endian modulus and
/// public exponent.
pub fn rsa_spki(
    modulus: &[u8],
    exponent: &[u8],
) -> Result<SubjectPublicKeyInfoOwned, EncodingError> {
    let key = RsaPublicKey {
        modulus: UintRef::new(modulus).map_err(|err| e(format!("RSA modulus: {err}")))?,
        public_exponent: UintRef::new(exponent)
            .map_err(|err| e(format!("RSA public exponent: {err}")))?,
    };
    if key.modulus.is_empty() || key.public_exponent.is_empty() {
        return Err(e("RSA modulus or public exponent is empty"));
    }
    let der = key
        .to_der()
        .map_err(|err| e(format!("encoding the RSA public key: {err}")))?;
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::RSA_ENCRYPTION,
            parameters: Some(der::Any::from(AnyRef::NULL)),
        },
        subject_public_key: BitString::from_bytes(&der)
            .map_err(|err| e(format!("RSA public key: {err}")))?,
    })
}

/// The SEC1 uncompressed point from `CKA_EC_POINT`, which PKCS#11 says is a DER OCTET STRING
/// around the point; a raw point (as some tokens return) is accepted as well.
pub fn ec_point_from_attribute(curve: Curve, value: &[u8]) -> Result<Vec<u8>, EncodingError> {
    let point_len = 1 + 2 * curve.field_len();
    let is_point = |p: &[u8]| p.len() == point_len && p.first() == Some(&0x04);
    if let Ok(inner) = <&OctetStringRef>::from_der(value)
        && is_point(inner.as_bytes())
    {
        return Ok(inner.as_bytes().to_vec());
    }
    if is_point(value) {
        return Ok(value.to_vec());
    }
    Err(e(format!(
        "CKA_EC_POINT is not an uncompressed {}-byte point (DER OCTET STRING or raw)",
        point_len
    )))
}

/// `CKA_EC_POINT` for a public key object: DER OCTET STRING around the SEC1 point.
pub fn ec_point_attribute(point: &[u8]) -> Result<Vec<u8>, EncodingError> {
    OctetStringRef::new(point)
        .and_then(|o| o.to_der())
        .map_err(|err| e(format!("encoding the EC point: {err}")))
}

/// An EC SubjectPublicKeyInfo (id-ecPublicKey with the named-curve OID) around a SEC1 point.
pub fn ec_spki(curve: Curve, point: &[u8]) -> Result<SubjectPublicKeyInfoOwned, EncodingError> {
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::EC_PUBLIC_KEY,
            parameters: Some(der::Any::from(&curve.oid())),
        },
        subject_public_key: BitString::from_bytes(point)
            .map_err(|err| e(format!("EC point: {err}")))?,
    })
}

/// The DER `Ecdsa-Sig-Value` (RFC 3279) for a raw `r || s` signature from `CKM_ECDSA`.
pub fn ecdsa_raw_to_der(curve: Curve, raw: &[u8]) -> Result<Vec<u8>, EncodingError> {
    let n = curve.field_len();
    if raw.len() != 2 * n {
        return Err(e(format!(
            "CKM_ECDSA returned {} bytes; expected r || s of {} bytes",
            raw.len(),
            2 * n
        )));
    }
    let (r, s) = raw.split_at(n);
    if r.iter().all(|b| *b == 0) || s.iter().all(|b| *b == 0) {
        return Err(e("CKM_ECDSA returned r or s equal to zero"));
    }
    let sig = EcdsaSigValue {
        r: UintRef::new(r).map_err(|err| e(format!("ECDSA r: {err}")))?,
        s: UintRef::new(s).map_err(|err| e(format!("ECDSA s: {err}")))?,
    };
    sig.to_der()
        .map_err(|err| e(format!("encoding the ECDSA signature: {err}")))
}

/// The DER prefix of a PKCS#1 v1.5 `DigestInfo` for SHA-256 (RFC 8017, section 9.2, note 1):
/// `SEQUENCE { SEQUENCE { id-sha256, NULL }, OCTET STRING (32 bytes) }`.
const SHA256_DIGEST_INFO_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// The DER `DigestInfo` around a SHA-256 digest, which `CKM_RSA_PKCS` pads and signs.
pub fn sha256_digest_info(digest: &[u8]) -> Result<Vec<u8>, EncodingError> {
    if digest.len() != 32 {
        return Err(e("a SHA-256 digest is 32 bytes"));
    }
    let mut out = Vec::with_capacity(SHA256_DIGEST_INFO_PREFIX.len() + 32);
    out.extend_from_slice(&SHA256_DIGEST_INFO_PREFIX);
    out.extend_from_slice(digest);
    Ok(out)
}

/// RSA private key components borrowed from a PKCS#8 buffer (big-endian, leading zeros removed).
pub struct RsaPrivateParts<'a> {
    /// n
    pub modulus: &'a [u8],
    /// e
    pub public_exponent: &'a [u8],
    /// d
    pub private_exponent: &'a [u8],
    /// p
    pub prime1: &'a [u8],
    /// q
    pub prime2: &'a [u8],
    /// d mod (p-1)
    pub exponent1: &'a [u8],
    /// d mod (q-1)
    pub exponent2: &'a [u8],
    /// q^-1 mod p
    pub coefficient: &'a [u8],
}

/// The private parts of a PKCS#8 key, borrowed from the (secret) input buffer.
pub enum PrivateParts<'a> {
    /// An RSA key (two primes).
    Rsa(RsaPrivateParts<'a>),
    /// An EC key: the curve and the private scalar.
    Ec {
        /// The named curve from the PKCS#8 algorithm parameters.
        curve: Curve,
        /// The private scalar, big-endian.
        scalar: &'a [u8],
    },
}

/// Splits a PKCS#8 `PrivateKeyInfo` (v1 or v2) into the parts a token needs. Nothing is copied.
pub fn parse_pkcs8(der: &[u8]) -> Result<PrivateParts<'_>, EncodingError> {
    let bad = |what: &str, err: der::Error| e(format!("malformed PKCS#8 key ({what}: {err})"));
    let mut reader = SliceReader::new(der).map_err(|err| bad("length", err))?;
    let (algorithm, private_key) = reader
        .sequence(|r| {
            let version: u8 = r.decode()?;
            if version > 1 {
                return Err(r.error(der::ErrorKind::Value {
                    tag: der::Tag::Integer,
                }));
            }
            let algorithm: AlgorithmIdentifierRef<'_> = r.decode()?;
            let private_key: &OctetStringRef = r.decode()?;
            // attributes [0] and publicKey [1] (v2) are not needed.
            while !r.is_finished() {
                let _: AnyRef<'_> = r.decode()?;
            }
            Ok((algorithm, private_key.as_bytes()))
        })
        .map_err(|err| bad("PrivateKeyInfo", err))?;
    reader.finish().map_err(|err| bad("trailing data", err))?;
    match algorithm.oid {
        oid::RSA_ENCRYPTION => parse_rsa_private_key(private_key).map(PrivateParts::Rsa),
        oid::EC_PUBLIC_KEY => {
            let curve_oid = algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or_else(|| e("PKCS#8 EC key without a named curve"))?;
            let curve = Curve::from_oid(curve_oid)?;
            let scalar = parse_ec_private_key(private_key)?;
            if scalar.len() > curve.field_len() || scalar.is_empty() {
                return Err(e("EC private scalar has the wrong length for its curve"));
            }
            Ok(PrivateParts::Ec { curve, scalar })
        }
        other => Err(e(format!(
            "PKCS#8 key algorithm {other} is not supported: kubesign imports RSA and ECDSA P-256/P-384 keys"
        ))),
    }
}

fn parse_rsa_private_key(der: &[u8]) -> Result<RsaPrivateParts<'_>, EncodingError> {
    let bad = |err: der::Error| e(format!("malformed RSAPrivateKey ({err})"));
    let mut reader = SliceReader::new(der).map_err(bad)?;
    let parts = reader
        .sequence(|r| {
            let version: u8 = r.decode()?;
            if version != 0 {
                // version 1 means otherPrimeInfos: multi-prime keys are not supported.
                return Err(r.error(der::ErrorKind::Value {
                    tag: der::Tag::Integer,
                }));
            }
            let mut next = || r.decode::<UintRef<'_>>().map(|u| u.as_bytes());
            Ok(RsaPrivateParts {
                modulus: next()?,
                public_exponent: next()?,
                private_exponent: next()?,
                prime1: next()?,
                prime2: next()?,
                exponent1: next()?,
                exponent2: next()?,
                coefficient: next()?,
            })
        })
        .map_err(bad)?;
    reader.finish().map_err(bad)?;
    Ok(parts)
}

fn parse_ec_private_key(der: &[u8]) -> Result<&[u8], EncodingError> {
    let bad = |err: der::Error| e(format!("malformed ECPrivateKey ({err})"));
    let mut reader = SliceReader::new(der).map_err(bad)?;
    let scalar = reader
        .sequence(|r| {
            let version: u8 = r.decode()?;
            if version != 1 {
                return Err(r.error(der::ErrorKind::Value {
                    tag: der::Tag::Integer,
                }));
            }
            let key: &OctetStringRef = r.decode()?;
            while !r.is_finished() {
                let _: AnyRef<'_> = r.decode()?;
            }
            Ok(key.as_bytes())
        })
        .map_err(bad)?;
    reader.finish().map_err(bad)?;
    Ok(scalar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair,
        UnparsedPublicKey,
    };

    #[test]
    fn ecdsa_raw_to_der_verifies() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let rng = SystemRandom::new();
        for i in 0..50u8 {
            let msg = [i; 20];
            let raw = kp.sign(&rng, &msg).unwrap();
            let der = ecdsa_raw_to_der(Curve::P256, raw.as_ref()).unwrap();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref())
                .verify(&msg, &der)
                .unwrap();
        }
        assert!(ecdsa_raw_to_der(Curve::P256, &[1; 63]).is_err());
        assert!(ecdsa_raw_to_der(Curve::P256, &[0; 64]).is_err());
        // High bit set: a leading zero is added; leading zeros of r are dropped.
        let mut raw = [0u8; 64];
        raw[0] = 0x80;
        raw[33] = 0x01;
        let der = ecdsa_raw_to_der(Curve::P256, &raw).unwrap();
        // r: 33 bytes (0x00 0x80 ...), s: 31 bytes (0x01 ...): 2 + 33 + 2 + 31 = 68.
        assert_eq!(&der[..5], &[0x30, 0x44, 0x02, 0x21, 0x00]);
        assert_eq!(&der[37..40], &[0x02, 0x1f, 0x01]);
        assert_eq!(der.len(), 70);
    }

    #[test]
    fn ec_spki_matches_aws_lc() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let attr = ec_point_attribute(&point).unwrap();
        assert_eq!(attr[0], 0x04);
        assert_eq!(attr[1] as usize, point.len());
        assert_eq!(ec_point_from_attribute(Curve::P256, &attr).unwrap(), point);
        assert_eq!(ec_point_from_attribute(Curve::P256, &point).unwrap(), point);
        assert!(ec_point_from_attribute(Curve::P384, &attr).is_err());
        let spki = ec_spki(Curve::P256, &point).unwrap();
        assert_eq!(
            spki.to_der().unwrap(),
            kp.public_key().as_der().unwrap().as_ref()
        );
        assert_eq!(PublicKeyKind::from_spki(&spki), Ok(PublicKeyKind::EcP256));
        assert_eq!(
            Curve::from_ec_params(&Curve::P384.ec_params_der()),
            Ok(Curve::P384)
        );
        assert!(Curve::from_ec_params(&[0x06, 0x03, 0x2b, 0x65, 0x70]).is_err());
    }

    #[test]
    fn rsa_spki_and_pkcs8_parts_match_aws_lc() {
        let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = kp.as_der().unwrap();
        let PrivateParts::Rsa(parts) = parse_pkcs8(pkcs8.as_ref()).unwrap() else {
            panic!("not RSA");
        };
        assert_eq!(parts.modulus.len(), 256);
        // Leading zeros in the modulus attribute are tolerated.
        let mut padded = vec![0u8];
        padded.extend_from_slice(parts.modulus);
        let spki = rsa_spki(&padded, parts.public_exponent).unwrap();
        assert_eq!(
            spki.to_der().unwrap(),
            kp.public_key().as_der().unwrap().as_ref()
        );
        assert_eq!(
            PublicKeyKind::from_spki(&spki),
            Ok(PublicKeyKind::Rsa { bits: 2048 })
        );
        assert_eq!(parts.prime1.len(), 128);
        assert!(!parts.coefficient.is_empty());
    }

    #[test]
    fn pkcs8_ec_scalar_and_errors() {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let PrivateParts::Ec { curve, scalar } = parse_pkcs8(doc.as_ref()).unwrap() else {
            panic!("not EC");
        };
        assert_eq!(curve, Curve::P256);
        assert_eq!(scalar.len(), 32);
        assert!(parse_pkcs8(b"\x30\x00").is_err());
        let mut trailing = doc.as_ref().to_vec();
        trailing.push(0);
        assert!(parse_pkcs8(&trailing).is_err());
    }

    #[test]
    fn digest_info_is_the_rfc_8017_encoding() {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"abc");
        let di = sha256_digest_info(digest.as_ref()).unwrap();
        assert_eq!(di.len(), 51);
        // Parse it back as SEQUENCE { AlgorithmIdentifier, OCTET STRING }.
        let mut r = SliceReader::new(&di).unwrap();
        r.sequence(|r| {
            let alg: AlgorithmIdentifierRef<'_> = r.decode()?;
            assert_eq!(
                alg.oid,
                ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1")
            );
            let d: &OctetStringRef = r.decode()?;
            assert_eq!(d.as_bytes(), digest.as_ref());
            Ok::<_, der::Error>(())
        })
        .unwrap();
        assert!(sha256_digest_info(&[0; 31]).is_err());
    }
}
