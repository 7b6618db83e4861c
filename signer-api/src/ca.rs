//! A certificate authority: a CA certificate and the [`Signer`] that holds its key, checked to
//! belong together, and the issuance engine that uses them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use der::asn1::{BitString, OctetString};
use der::{Decode, Encode};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SubjectPublicKeyInfoOwned,
};
use x509_cert::Certificate;
use x509_cert::builder::{Builder, CertificateBuilder, profile::BuilderProfile};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier, name::GeneralName,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::algorithm::{PublicKeyKind, oid};
use crate::audit::{AuditRecord, AuditSink, RequestContext};
use crate::csr::VerifiedCsr;
use crate::error::{ErrorKind, IssueError, SignerError};
use crate::pem;
use crate::policy::{IssuancePolicy, KeyUsageSet};
use crate::profile::CaRole;
use crate::signer::Signer;
use crate::verify::{self, key_identifier};

/// What a certificate is issued for: a subject name, its public key and its SANs.
#[derive(Clone, Debug)]
pub struct CertificateSubject {
    /// The subject, copied verbatim.
    pub name: Name,
    /// The subject's public key.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// The SANs, copied verbatim.
    pub alt_names: Option<SubjectAltName>,
}

impl From<&VerifiedCsr> for CertificateSubject {
    fn from(csr: &VerifiedCsr) -> Self {
        CertificateSubject {
            name: csr.subject().clone(),
            public_key: csr.public_key().clone(),
            alt_names: csr.subject_alt_name().cloned(),
        }
    }
}

impl CertificateSubject {
    /// The subject of an existing certificate (for renewal: same key, subject and SANs).
    pub fn from_certificate(cert: &Certificate) -> Result<Self, IssueError> {
        let tbs = cert.tbs_certificate();
        let alt_names = tbs
            .get_extension::<SubjectAltName>()
            .map_err(|e| {
                IssueError::Encoding(format!("subjectAltName of the existing certificate: {e}"))
            })?
            .map(|(_, san)| san);
        Ok(CertificateSubject {
            name: tbs.subject().clone(),
            public_key: tbs.subject_public_key_info().clone(),
            alt_names,
        })
    }
}

/// A certificate issued, verified and recorded.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate, PEM.
    pub pem: String,
    /// The audit record that was written for it.
    pub record: AuditRecord,
    /// notAfter.
    pub not_after: SystemTime,
}

/// A CA certificate and its key.
#[derive(Debug)]
pub struct CertificateAuthority {
    role: CaRole,
    certificate: Certificate,
    certificate_pem: String,
    signer: Arc<dyn Signer>,
    key_uri: String,
    key_id: Vec<u8>,
    not_after: SystemTime,
}

/// Why a CA could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CA certificate does not parse.
    #[error("{ca} CA certificate: {reason}")]
    Certificate {
        /// The CA.
        ca: CaRole,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the certificate, or cannot sign with it.
    #[error("{ca} CA")]
    Key {
        /// The CA.
        ca: CaRole,
        /// The key error.
        #[source]
        source: SignerError,
    },
}

/// Parses one certificate in PEM or DER form.
pub fn parse_certificate(input: &[u8]) -> Result<Certificate, String> {
    let der = if pem::is_pem(input) {
        let blocks = pem::decode_all(input).map_err(|e| e.to_string())?;
        let certs: Vec<_> = blocks
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .collect();
        match certs.len() {
            1 => certs.into_iter().next().map(|b| b.der).unwrap_or_default(),
            0 => return Err("no CERTIFICATE PEM block".into()),
            n => return Err(format!("{n} CERTIFICATE blocks, expected one")),
        }
    } else {
        input.to_vec()
    };
    Certificate::from_der(&der).map_err(|e| format!("not an X.509 certificate: {e}"))
}

/// A certificate's validity bound as SystemTime.
pub fn not_after(cert: &Certificate) -> SystemTime {
    cert.tbs_certificate().validity().not_after.to_system_time()
}

/// A certificate's notBefore as SystemTime.
pub fn not_before(cert: &Certificate) -> SystemTime {
    cert.tbs_certificate()
        .validity()
        .not_before
        .to_system_time()
}

impl CertificateAuthority {
    /// Binds a CA certificate (PEM or DER) to the signer holding its key. Fails unless the
    /// certificate is a CA certificate (basicConstraints CA:TRUE, keyCertSign when keyUsage is
    /// present) and the signer's public key is the certificate's public key.
    pub fn new(
        role: CaRole,
        certificate: &[u8],
        signer: Arc<dyn Signer>,
        key_uri: String,
    ) -> Result<Self, CaError> {
        let bad = |reason: String| CaError::Certificate { ca: role, reason };
        let cert = parse_certificate(certificate).map_err(bad)?;
        let tbs = cert.tbs_certificate();
        match tbs.get_extension::<BasicConstraints>() {
            Ok(Some((_, bc))) if bc.ca => {}
            Ok(_) => {
                return Err(bad(
                    "not a CA certificate (basicConstraints CA:TRUE missing)".into(),
                ));
            }
            Err(e) => return Err(bad(format!("basicConstraints: {e}"))),
        }
        if let Ok(Some((_, ku))) = tbs.get_extension::<KeyUsage>()
            && !ku.0.contains(KeyUsages::KeyCertSign)
        {
            return Err(bad(
                "keyUsage lacks keyCertSign: the certificate may not sign certificates".into(),
            ));
        }
        let cert_kind = PublicKeyKind::from_spki(tbs.subject_public_key_info())
            .map_err(|e| bad(e.to_string()))?;
        let key_err = |source| CaError::Key { ca: role, source };
        if signer.public_key() != tbs.subject_public_key_info() {
            return Err(key_err(SignerError::new(
                ErrorKind::KeyMismatch,
                format!(
                    "the key {key_uri} does not belong to the CA certificate (certificate subject {}, \
                     certificate key SHA-1 id {}, key's {})",
                    tbs.subject(),
                    hex(&key_identifier(tbs.subject_public_key_info())),
                    hex(&key_identifier(signer.public_key())),
                ),
            )));
        }
        if !signer.algorithm().fits(cert_kind) {
            return Err(key_err(SignerError::new(
                ErrorKind::Unsupported,
                format!(
                    "the key {key_uri} signs with {} which does not fit a {cert_kind} key",
                    signer.algorithm()
                ),
            )));
        }
        let key_id = match tbs.get_extension::<SubjectKeyIdentifier>() {
            Ok(Some((_, ski))) => ski.0.as_bytes().to_vec(),
            _ => key_identifier(tbs.subject_public_key_info()),
        };
        let der = cert.to_der().map_err(|e| bad(e.to_string()))?;
        Ok(CertificateAuthority {
            role,
            not_after: not_after(&cert),
            certificate_pem: pem::encode("CERTIFICATE", &der),
            certificate: cert,
            signer,
            key_uri,
            key_id,
        })
    }

    /// Which CA this is.
    pub fn role(&self) -> CaRole {
        self.role
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The signer.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// The key URI (redacted).
    pub fn key_uri(&self) -> &str {
        &self.key_uri
    }

    /// The CA certificate's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the CA can issue at `now`: its certificate is within its validity period.
    pub fn check_usable(&self, now: SystemTime) -> Result<(), IssueError> {
        let reason = if now >= self.not_after {
            format!("the CA certificate expired at {}", rfc3339(self.not_after))
        } else if now < not_before(&self.certificate) {
            format!(
                "the CA certificate is not valid before {}",
                rfc3339(not_before(&self.certificate))
            )
        } else {
            return Ok(());
        };
        Err(IssueError::CaUnusable {
            ca: self.role,
            reason,
        })
    }

    /// Issues a certificate for `subject` under `policy`: builds the TBSCertificate, has the
    /// backend sign it, verifies the signature with the CA certificate's public key, records it in
    /// `audit`, and only then returns it.
    pub async fn issue(
        &self,
        subject: &CertificateSubject,
        policy: &IssuancePolicy,
        now: SystemTime,
        audit: &dyn AuditSink,
        context: RequestContext,
    ) -> Result<IssuedCertificate, IssueError> {
        PublicKeyKind::from_spki(&subject.public_key)?;
        self.check_usable(now)?;
        let not_before = now.checked_sub(policy.backdate).unwrap_or(now);
        let mut not_after = now + policy.validity;
        if policy.shorten_by_backdate {
            not_after -= policy.backdate;
        }
        let not_after = not_after.min(self.not_after);

        let mut extensions = Vec::new();
        // RFC 5280: a keyUsage extension must assert at least one bit; with none, omit it (as
        // kube-controller-manager does for a CSR asking only for "client auth").
        if !policy.key_usage.0.is_empty() {
            extensions.push(extension(
                oid::KEY_USAGE,
                true,
                &KeyUsage::from(policy.key_usage),
            )?);
        }
        if !policy.extended_key_usage.is_empty() {
            extensions.push(extension(
                oid::EXT_KEY_USAGE,
                false,
                &ExtendedKeyUsage(policy.extended_key_usage.clone()),
            )?);
        }
        extensions.push(extension(
            oid::BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?);
        extensions.push(extension(
            oid::SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(key_identifier(&subject.public_key))?),
        )?);
        extensions.push(extension(
            oid::AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(self.key_id.clone())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?);
        if let Some(san) = &subject.alt_names
            && !san.0.is_empty()
        {
            // RFC 5280: SAN is critical when the subject is empty.
            extensions.push(extension(
                oid::SUBJECT_ALT_NAME,
                subject.name.is_empty(),
                san,
            )?);
        }

        let issuer = self.certificate.tbs_certificate().subject().clone();
        let der = self
            .sign(
                issuer,
                subject.name.clone(),
                subject.public_key.clone(),
                not_before,
                not_after,
                extensions,
            )
            .await?;
        let cert = Certificate::from_der(&der)?;

        let mut record =
            AuditRecord::for_certificate(&cert, &der, self.role, &self.key_uri, now, context);
        record.key_detail = Some(self.signer.describe());
        audit.record(&record).await?;
        Ok(IssuedCertificate {
            pem: pem::encode("CERTIFICATE", &der),
            not_after: crate::ca::not_after(&cert),
            der,
            record,
        })
    }

    /// Builds, signs and verifies one certificate; returns its DER.
    async fn sign(
        &self,
        issuer: Name,
        subject: Name,
        public_key: SubjectPublicKeyInfoOwned,
        not_before: SystemTime,
        not_after: SystemTime,
        extensions: Vec<Extension>,
    ) -> Result<Vec<u8>, IssueError> {
        let serial = random_serial()?;
        let validity = Validity::new(time(not_before)?, time(not_after)?);
        let profile = FixedProfile {
            issuer,
            subject,
            extensions,
        };
        let mut builder = CertificateBuilder::new(profile, serial, validity, public_key)?;
        let tbs_signer = TbsSigner {
            public_key: self.signer.public_key().clone(),
            algorithm: self.signer.algorithm().algorithm_identifier(),
        };
        let tbs = builder.finalize(&tbs_signer)?;
        let signature = self
            .signer
            .sign(&tbs)
            .await
            .map_err(|source| IssueError::Signing {
                ca: self.role,
                source,
            })?;
        let cert = builder.assemble(BitString::from_bytes(&signature)?, &tbs_signer)?;
        // Verify-after-sign against the CA *certificate's* key, not the backend's claim.
        verify::verify_certificate_signature(
            &cert,
            self.certificate.tbs_certificate().subject_public_key_info(),
        )
        .map_err(|_| IssueError::SignatureInvalid { ca: self.role })?;
        Ok(cert.to_der()?)
    }

    /// Creates the self-signed CA certificate kubeadm would create for `role` with the key in
    /// `signer`: CN as kubeadm names the CA, a DNS SAN equal to the CN, keyUsage
    /// digitalSignature+keyEncipherment+keyCertSign, CA:TRUE without a path length, SKI and AKI,
    /// valid from 5 minutes ago for `validity`. The signature is verified before it is returned.
    pub async fn self_signed(
        role: CaRole,
        signer: &dyn Signer,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Vec<u8>, IssueError> {
        PublicKeyKind::from_spki(signer.public_key())?;
        let cn = role.common_name();
        let name: Name = format!("CN={cn}")
            .parse()
            .map_err(|e: der::Error| IssueError::Encoding(e.to_string()))?;
        let key_id = key_identifier(signer.public_key());
        let usage = KeyUsageSet::from(
            KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment | KeyUsages::KeyCertSign,
        );
        let dns = der::asn1::Ia5String::new(cn)?;
        let extensions = vec![
            extension(oid::KEY_USAGE, true, &KeyUsage::from(usage))?,
            extension(
                oid::BASIC_CONSTRAINTS,
                true,
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                },
            )?,
            extension(
                oid::SUBJECT_KEY_IDENTIFIER,
                false,
                &SubjectKeyIdentifier(OctetString::new(key_id.clone())?),
            )?,
            extension(
                oid::AUTHORITY_KEY_IDENTIFIER,
                false,
                &AuthorityKeyIdentifier {
                    key_identifier: Some(OctetString::new(key_id)?),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                },
            )?,
            extension(
                oid::SUBJECT_ALT_NAME,
                false,
                &SubjectAltName(vec![GeneralName::DnsName(dns)]),
            )?,
        ];
        let serial = random_serial()?;
        let not_before = now.checked_sub(crate::policy::BACKDATE).unwrap_or(now);
        let validity = Validity::new(time(not_before)?, time(now + validity)?);
        let profile = FixedProfile {
            issuer: name.clone(),
            subject: name,
            extensions,
        };
        let mut builder =
            CertificateBuilder::new(profile, serial, validity, signer.public_key().clone())?;
        let tbs_signer = TbsSigner {
            public_key: signer.public_key().clone(),
            algorithm: signer.algorithm().algorithm_identifier(),
        };
        let tbs = builder.finalize(&tbs_signer)?;
        let signature = signer
            .sign(&tbs)
            .await
            .map_err(|source| IssueError::Signing { ca: role, source })?;
        let cert = builder.assemble(BitString::from_bytes(&signature)?, &tbs_signer)?;
        verify::verify_certificate_signature(&cert, signer.public_key())
            .map_err(|_| IssueError::SignatureInvalid { ca: role })?;
        Ok(cert.to_der()?)
    }
}

/// A profile that returns precomputed names and extensions (kubesign decides every extension
/// itself; see [`crate::policy`]).
struct FixedProfile {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for FixedProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: spki::SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// Tells the x509-cert builder which algorithm and issuer key to write into the TBSCertificate;
/// the signature itself is made asynchronously by the backend.
struct TbsSigner {
    public_key: SubjectPublicKeyInfoOwned,
    algorithm: AlgorithmIdentifierOwned,
}

#[derive(Clone)]
struct SpkiKey(SubjectPublicKeyInfoOwned);

impl EncodePublicKey for SpkiKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::encode_msg(&self.0)?)
    }
}

impl signature::Keypair for TbsSigner {
    type VerifyingKey = SpkiKey;
    fn verifying_key(&self) -> SpkiKey {
        SpkiKey(self.public_key.clone())
    }
}

impl DynSignatureAlgorithmIdentifier for TbsSigner {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.algorithm.clone())
    }
}

fn extension<T: Encode>(
    id: const_oid::ObjectIdentifier,
    critical: bool,
    value: &T,
) -> Result<Extension, IssueError> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// A positive 128-bit random serial number (a leading zero octet is added by the encoder when
/// the top bit is set), as kube-controller-manager draws them.
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    loop {
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
            IssueError::Encoding("the system random number generator failed".into())
        })?;
        if bytes[0] != 0 {
            break;
        }
    }
    Ok(SerialNumber::new(&bytes)?)
}

fn time(t: SystemTime) -> Result<Time, IssueError> {
    // Whole seconds: X.509 times carry no fractions.
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| IssueError::Encoding("time before 1970".into()))?
        .as_secs();
    let dt = der::DateTime::from_unix_duration(Duration::from_secs(secs))?;
    Ok(Time::GeneralTime(
        der::asn1::GeneralizedTime::from_date_time(dt),
    ))
}

/// A serial number as lowercase hex of the positive integer (no DER sign octet), as openssl
/// prints it.
pub fn serial_hex(serial: &SerialNumber) -> String {
    let bytes = serial.as_bytes();
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    hex(&bytes[start..])
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// RFC 3339 UTC with second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    odt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
