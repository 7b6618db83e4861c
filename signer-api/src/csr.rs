//! PKCS#10 certificate signing requests: parsing (PEM or DER), the proof-of-possession check, and
//! the requested extensions.
//!
//! A [`VerifiedCsr`] only exists once its self-signature has been verified with the public key it
//! carries and that key has passed kubesign's key policy.

use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use crate::algorithm::{KeyPolicyError, PublicKeyKind, oid};
use crate::name::{self, San};
use crate::pem::{self, PemError};
use crate::verify::{VerifyError, verify_signature};

/// Why a CSR was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The PEM wrapping is broken.
    #[error("not a valid PEM certificate request: {0}")]
    Pem(PemError),
    /// The PEM holds something other than a certificate request.
    #[error("PEM block is {0:?}, expected \"CERTIFICATE REQUEST\"")]
    WrongLabel(String),
    /// More than one request in one file.
    #[error("found {0} CERTIFICATE REQUEST blocks; expected exactly one")]
    Multiple(usize),
    /// The DER does not decode as PKCS#10.
    #[error("not a PKCS#10 certificate request: {0}")]
    Der(String),
    /// Not version 1.
    #[error("certificate request version is not v1")]
    Version,
    /// The public key fails the key policy.
    #[error("{0}")]
    Key(KeyPolicyError),
    /// The self-signature does not verify: the requester does not hold the private key, or the
    /// request was altered.
    #[error(
        "the request's signature does not verify with its own public key (proof of possession failed): {0}"
    )]
    ProofOfPossession(VerifyError),
    /// The extensionRequest attribute is malformed or repeated.
    #[error("malformed extensionRequest attribute: {0}")]
    ExtensionRequest(String),
}

impl From<PemError> for CsrError {
    fn from(e: PemError) -> Self {
        CsrError::Pem(e)
    }
}

impl From<KeyPolicyError> for CsrError {
    fn from(e: KeyPolicyError) -> Self {
        CsrError::Key(e)
    }
}

/// The first element inside the outer SEQUENCE of `der`, as its raw TLV bytes.
fn first_inner_tlv(der: &[u8]) -> Option<&[u8]> {
    // (header length, content length) of the TLV at the start of `b`.
    fn header(b: &[u8]) -> Option<(usize, usize)> {
        let first = *b.get(1)?;
        if first < 0x80 {
            return Some((2, usize::from(first)));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        Some((2 + n, len))
    }
    if *der.first()? != 0x30 {
        return None;
    }
    let (outer_hdr, _) = header(der)?;
    let inner = der.get(outer_hdr..)?;
    let (hdr, len) = header(inner)?;
    inner.get(..hdr.checked_add(len)?)
}

/// A CSR whose proof of possession has been verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    subject: Name,
    public_key: SubjectPublicKeyInfoOwned,
    key_kind: PublicKeyKind,
    subject_alt_name: Option<SubjectAltName>,
    extensions: Vec<Extension>,
    der: Vec<u8>,
}

impl VerifiedCsr {
    /// Parses a CSR in PEM (`CERTIFICATE REQUEST`, or the legacy `NEW CERTIFICATE REQUEST`) or DER
    /// form, checks the key policy and verifies the self-signature.
    pub fn parse(input: &[u8]) -> Result<Self, CsrError> {
        let der = if pem::is_pem(input) {
            let blocks = pem::decode_all(input)?;
            let mut reqs: Vec<_> = blocks
                .iter()
                .filter(|b| {
                    b.label == "CERTIFICATE REQUEST" || b.label == "NEW CERTIFICATE REQUEST"
                })
                .collect();
            match reqs.len() {
                0 => return Err(CsrError::WrongLabel(blocks[0].label.clone())),
                1 => reqs.remove(0).der.clone(),
                n => return Err(CsrError::Multiple(n)),
            }
        } else {
            input.to_vec()
        };
        Self::from_der(der)
    }

    fn from_der(der: Vec<u8>) -> Result<Self, CsrError> {
        let req = CertReq::from_der(&der).map_err(|e| CsrError::Der(e.to_string()))?;
        if req.info.version != x509_cert::request::Version::V1 {
            return Err(CsrError::Version);
        }
        let key_kind = PublicKeyKind::from_spki(&req.info.public_key)?;
        // Verify over the bytes as received: re-encoding would sort SET OF members (attributes)
        // and break the signature of a request that a looser encoder wrote unsorted.
        let info_der = match first_inner_tlv(&der) {
            Some(raw) => raw.to_vec(),
            None => req
                .info
                .to_der()
                .map_err(|e| CsrError::Der(e.to_string()))?,
        };
        let signature = req
            .signature
            .as_bytes()
            .ok_or(CsrError::ProofOfPossession(VerifyError::BadSignature))?;
        verify_signature(&req.info.public_key, &req.algorithm, &info_der, signature)
            .map_err(CsrError::ProofOfPossession)?;

        let mut extensions: Vec<Extension> = Vec::new();
        let mut seen_request = false;
        for attr in req
            .info
            .attributes
            .iter()
            .filter(|a| a.oid == oid::EXTENSION_REQUEST)
        {
            if seen_request {
                return Err(CsrError::ExtensionRequest(
                    "more than one extensionRequest attribute".into(),
                ));
            }
            if attr.values.len() != 1 {
                return Err(CsrError::ExtensionRequest(format!(
                    "the extensionRequest attribute has {} values, expected exactly one",
                    attr.values.len()
                )));
            }
            seen_request = true;
            for value in attr.values.iter() {
                let exts: Vec<Extension> = value
                    .decode_as()
                    .map_err(|e: der::Error| CsrError::ExtensionRequest(e.to_string()))?;
                extensions.extend(exts);
            }
        }
        let mut subject_alt_name = None;
        for (i, ext) in extensions.iter().enumerate() {
            if extensions[..i].iter().any(|e| e.extn_id == ext.extn_id) {
                return Err(CsrError::ExtensionRequest(format!(
                    "extension {} requested twice",
                    ext.extn_id
                )));
            }
            if ext.extn_id == oid::SUBJECT_ALT_NAME {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| CsrError::ExtensionRequest(format!("subjectAltName: {e}")))?;
                subject_alt_name = Some(san);
            }
        }
        Ok(VerifiedCsr {
            subject: req.info.subject,
            public_key: req.info.public_key,
            key_kind,
            subject_alt_name,
            extensions,
            der,
        })
    }

    /// The requested subject, copied verbatim into the certificate.
    pub fn subject(&self) -> &Name {
        &self.subject
    }

    /// The requester's public key.
    pub fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.public_key
    }

    /// The requester's key type.
    pub fn key_kind(&self) -> PublicKeyKind {
        self.key_kind
    }

    /// The requested subject alternative names, if any.
    pub fn subject_alt_name(&self) -> Option<&SubjectAltName> {
        self.subject_alt_name.as_ref()
    }

    /// The requested SANs, typed.
    pub fn sans(&self) -> Vec<San> {
        self.subject_alt_name
            .as_ref()
            .map(name::sans)
            .unwrap_or_default()
    }

    /// Every requested extension, including subjectAltName.
    pub fn requested_extensions(&self) -> &[Extension] {
        &self.extensions
    }

    /// Whether the request asks for basicConstraints CA:TRUE.
    pub fn requests_ca(&self) -> bool {
        self.extensions.iter().any(|e| {
            e.extn_id == oid::BASIC_CONSTRAINTS
                && BasicConstraints::from_der(e.extn_value.as_bytes())
                    .map(|bc| bc.ca)
                    .unwrap_or(true)
        })
    }

    /// The single common name, if the subject has exactly one.
    pub fn common_name(&self) -> Option<String> {
        name::common_name(&self.subject)
    }

    /// The organizations (Kubernetes groups) in the subject.
    pub fn organizations(&self) -> Vec<String> {
        name::organizations(&self.subject)
    }

    /// The DER encoding of the request, as received.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn csr_pem(alg: &'static rcgen::SignatureAlgorithm, sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn parses_and_verifies_each_accepted_key_type() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let pem = csr_pem(
                alg,
                vec![SanType::DnsName("kubernetes".try_into().unwrap())],
            );
            let csr = VerifiedCsr::parse(pem.as_bytes()).unwrap();
            assert_eq!(csr.common_name().as_deref(), Some("kube-apiserver"));
            assert_eq!(csr.sans(), vec![San::Dns("kubernetes".into())]);
            // DER input works too.
            let der = pem::decode_all(pem.as_bytes()).unwrap().remove(0).der;
            assert!(VerifiedCsr::parse(&der).is_ok());
        }
    }

    #[test]
    fn tampered_request_fails_proof_of_possession() {
        let pem = csr_pem(&rcgen::PKCS_ECDSA_P256_SHA256, vec![]);
        let mut der = pem::decode_all(pem.as_bytes()).unwrap().remove(0).der;
        // Flip a byte inside the common name.
        let pos = der.windows(4).position(|w| w == b"kube").unwrap();
        der[pos] = b'K';
        assert!(matches!(
            VerifiedCsr::parse(&der),
            Err(CsrError::ProofOfPossession(_))
        ));
    }

    #[test]
    fn rejects_other_key_types_and_garbage() {
        let pem = csr_pem(&rcgen::PKCS_ED25519, vec![]);
        assert!(matches!(
            VerifiedCsr::parse(pem.as_bytes()),
            Err(CsrError::Key(KeyPolicyError::UnsupportedAlgorithm { .. }))
        ));
        assert!(matches!(
            VerifiedCsr::parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(CsrError::WrongLabel(_))
        ));
        assert!(matches!(
            VerifiedCsr::parse(b"\x30\x03\x02\x01\x00"),
            Err(CsrError::Der(_))
        ));
    }
}

#[cfg(test)]
mod encoding_tests {
    use super::*;

    /// A request whose attribute SET OF is not in DER order (openssl accepts its signature): the
    /// signature is checked over the bytes as received, so the request gets past proof of
    /// possession and is judged on its content (here: two extensionRequest attributes).
    #[test]
    fn unsorted_attribute_set_is_judged_on_content() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../integration/fuzz-corpus/csr/crafted-two-extension-requests-unsorted-set.csr"
        );
        let bytes = std::fs::read(path).unwrap();
        match VerifiedCsr::parse(&bytes) {
            Err(CsrError::ExtensionRequest(m)) => assert!(m.contains("more than one"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
