//! The issuance engine against an in-test signer: the policy lands in every certificate, nothing
//! is released unverified or unrecorded, and the CA/key binding is enforced.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use der::{Decode, Encode};
use signer_api::audit::{AuditError, AuditRecord, AuditSink, MemoryAuditSink, RequestContext};
use signer_api::ca::{CaError, CertificateSubject, parse_certificate};
use signer_api::profile::{self, DEFAULT_LEAF_VALIDITY};
use signer_api::{
    CaRole, CertificateAuthority, ErrorKind, IssueError, SignatureAlgorithm, Signer, SignerError,
    VerifiedCsr,
};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};

/// A P-256 key in memory; `corrupt` makes it sign different bytes than it was given.
#[derive(Debug)]
struct TestSigner {
    key: EcdsaKeyPair,
    spki: SubjectPublicKeyInfoOwned,
    corrupt: AtomicBool,
}

impl TestSigner {
    fn new() -> Arc<Self> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_der(key.public_key().as_der().unwrap().as_ref())
            .unwrap();
        Arc::new(TestSigner {
            key,
            spki,
            corrupt: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Signer for TestSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }
    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        let msg: Vec<u8> = if self.corrupt.load(Ordering::SeqCst) {
            [tbs, b"x"].concat()
        } else {
            tbs.to_vec()
        };
        Ok(self
            .key
            .sign(&SystemRandom::new(), &msg)
            .unwrap()
            .as_ref()
            .to_vec())
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

struct FailingSink;

#[async_trait]
impl AuditSink for FailingSink {
    async fn record(&self, _: &AuditRecord) -> Result<(), AuditError> {
        Err(AuditError::new("disk full", None))
    }
}

async fn ca(role: CaRole, validity: Duration) -> (Arc<TestSigner>, CertificateAuthority) {
    let signer = TestSigner::new();
    let der = CertificateAuthority::self_signed(role, signer.as_ref(), validity, SystemTime::now())
        .await
        .unwrap();
    let ca =
        CertificateAuthority::new(role, &der, signer.clone(), "file:/test/ca.key".into()).unwrap();
    (signer, ca)
}

fn csr(cn: &str, sans: &[&str], extra_ku: bool) -> VerifiedCsr {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if extra_ku {
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    VerifiedCsr::parse(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn issued_certificate_carries_the_policy() {
    let (_, ca) = ca(CaRole::Kubernetes, Duration::from_secs(10 * 365 * 86400)).await;
    let req = csr("kube-apiserver", &["kubernetes", "10.96.0.1"], false);
    let profile = profile::by_name("apiserver").unwrap();
    profile.check_request(&req).unwrap();
    let sink = MemoryAuditSink::default();
    let now = SystemTime::now();
    let issued = ca
        .issue(
            &CertificateSubject::from(&req),
            &profile.policy(DEFAULT_LEAF_VALIDITY),
            now,
            &sink,
            RequestContext::default(),
        )
        .await
        .unwrap();
    let cert = parse_certificate(&issued.der).unwrap();
    let tbs = cert.tbs_certificate();
    assert_eq!(tbs.subject(), req.subject());
    assert_eq!(tbs.issuer(), ca.certificate().tbs_certificate().subject());
    let (crit, bc) = tbs.get_extension::<BasicConstraints>().unwrap().unwrap();
    assert!(crit && !bc.ca);
    let (crit, ku) = tbs.get_extension::<KeyUsage>().unwrap().unwrap();
    assert!(crit);
    assert_eq!(
        ku.0,
        KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
    );
    let (_, eku) = tbs.get_extension::<ExtendedKeyUsage>().unwrap().unwrap();
    assert_eq!(eku.0, vec![signer_api::algorithm::oid::KP_SERVER_AUTH]);
    let (_, san) = tbs.get_extension::<SubjectAltName>().unwrap().unwrap();
    assert_eq!(Some(&san), req.subject_alt_name());
    let (_, ski) = tbs
        .get_extension::<SubjectKeyIdentifier>()
        .unwrap()
        .unwrap();
    assert_eq!(
        ski.0.as_bytes(),
        signer_api::verify::key_identifier(req.public_key())
    );
    let (_, aki) = tbs
        .get_extension::<AuthorityKeyIdentifier>()
        .unwrap()
        .unwrap();
    let (_, ca_ski) = ca
        .certificate()
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
        .unwrap()
        .unwrap();
    assert_eq!(aki.key_identifier.unwrap(), ca_ski.0);
    // 128-bit positive serial.
    let serial = tbs.serial_number().as_bytes();
    let serial = serial.strip_prefix(&[0u8]).unwrap_or(serial);
    assert_eq!(serial.len(), 16, "{serial:?}");
    assert_ne!(serial[0], 0);
    // Validity: backdated 5 minutes, one year long, whole seconds.
    let nb = signer_api::ca::not_before(&cert);
    let na = signer_api::ca::not_after(&cert);
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(now) - secs(nb), 300);
    assert_eq!(secs(na) - secs(now), DEFAULT_LEAF_VALIDITY.as_secs());
    // Recorded, with the same serial.
    let records = sink.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].serial, signer_api::ca::hex(serial));
    assert_eq!(
        records[0].sans,
        vec!["DNS:kubernetes".to_owned(), "IP:10.96.0.1".to_owned()]
    );
    assert_eq!(records[0].key, "file:/test/ca.key");
}

#[tokio::test]
async fn serials_differ() {
    let (_, ca) = ca(CaRole::Etcd, Duration::from_secs(86400 * 30)).await;
    let req = csr("kube-etcd-healthcheck-client", &[], false);
    let policy = profile::by_name("etcd/healthcheck-client")
        .unwrap()
        .policy(Duration::from_secs(3600));
    let sink = MemoryAuditSink::default();
    let mut serials = std::collections::HashSet::new();
    for _ in 0..50 {
        let c = ca
            .issue(
                &CertificateSubject::from(&req),
                &policy,
                SystemTime::now(),
                &sink,
                RequestContext::default(),
            )
            .await
            .unwrap();
        assert!(serials.insert(c.record.serial.clone()));
    }
}

#[tokio::test]
async fn validity_never_exceeds_the_ca() {
    let (_, ca) = ca(CaRole::FrontProxy, Duration::from_secs(86400)).await;
    let req = csr("front-proxy-client", &[], false);
    let policy = profile::by_name("front-proxy-client")
        .unwrap()
        .policy(DEFAULT_LEAF_VALIDITY);
    let c = ca
        .issue(
            &CertificateSubject::from(&req),
            &policy,
            SystemTime::now(),
            &MemoryAuditSink::default(),
            RequestContext::default(),
        )
        .await
        .unwrap();
    let cert = parse_certificate(&c.der).unwrap();
    assert_eq!(signer_api::ca::not_after(&cert), ca.not_after());
}

#[tokio::test]
async fn requested_extensions_never_reach_the_certificate() {
    let (_, ca) = ca(CaRole::Kubernetes, Duration::from_secs(86400 * 365)).await;
    let req = csr("kubernetes-admin", &[], true);
    assert!(req.requests_ca());
    let admin = profile::by_name("admin.conf").unwrap();
    let e = admin.check_request(&req).unwrap_err();
    assert!(e.contains("CA:TRUE"), "{e}");
    // Even if a caller skipped the profile check, the engine writes only the policy's extensions.
    let c = ca
        .issue(
            &CertificateSubject::from(&req),
            &admin.policy(DEFAULT_LEAF_VALIDITY),
            SystemTime::now(),
            &MemoryAuditSink::default(),
            RequestContext::default(),
        )
        .await
        .unwrap();
    let cert = parse_certificate(&c.der).unwrap();
    let (_, bc) = cert
        .tbs_certificate()
        .get_extension::<BasicConstraints>()
        .unwrap()
        .unwrap();
    assert!(!bc.ca);
    let (_, ku) = cert
        .tbs_certificate()
        .get_extension::<KeyUsage>()
        .unwrap()
        .unwrap();
    assert!(!ku.0.contains(KeyUsages::KeyCertSign));
}

#[tokio::test]
async fn a_wrong_signature_is_never_released_nor_recorded() {
    let (signer, ca) = ca(CaRole::Kubernetes, Duration::from_secs(86400 * 365)).await;
    signer.corrupt.store(true, Ordering::SeqCst);
    let req = csr("system:kube-scheduler", &[], false);
    let sink = MemoryAuditSink::default();
    let e = ca
        .issue(
            &CertificateSubject::from(&req),
            &profile::by_name("scheduler.conf")
                .unwrap()
                .policy(DEFAULT_LEAF_VALIDITY),
            SystemTime::now(),
            &sink,
            RequestContext::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            IssueError::SignatureInvalid {
                ca: CaRole::Kubernetes
            }
        ),
        "{e}"
    );
    assert!(sink.records().is_empty());
}

#[tokio::test]
async fn an_unwritable_audit_log_stops_release() {
    let (_, ca) = ca(CaRole::Kubernetes, Duration::from_secs(86400 * 365)).await;
    let req = csr("system:kube-scheduler", &[], false);
    let e = ca
        .issue(
            &CertificateSubject::from(&req),
            &profile::by_name("scheduler.conf")
                .unwrap()
                .policy(DEFAULT_LEAF_VALIDITY),
            SystemTime::now(),
            &FailingSink,
            RequestContext::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, IssueError::Audit(_)), "{e}");
    assert!(e.to_string().contains("discarded"), "{e}");
}

#[tokio::test]
async fn key_and_certificate_must_belong_together() {
    let (_, ca1) = ca(CaRole::Kubernetes, Duration::from_secs(86400)).await;
    let other = TestSigner::new();
    let der = ca1.certificate().to_der().unwrap();
    let e = CertificateAuthority::new(CaRole::Kubernetes, &der, other, "file:/other.key".into())
        .unwrap_err();
    match e {
        CaError::Key { source, .. } => {
            assert_eq!(source.kind(), ErrorKind::KeyMismatch);
            assert!(source.to_string().contains("file:/other.key"));
        }
        other => panic!("{other}"),
    }
    // A leaf certificate is not a CA.
    let req = csr("kube-apiserver", &["kubernetes"], false);
    let leaf = ca1
        .issue(
            &CertificateSubject::from(&req),
            &profile::by_name("apiserver")
                .unwrap()
                .policy(Duration::from_secs(3600)),
            SystemTime::now(),
            &MemoryAuditSink::default(),
            RequestContext::default(),
        )
        .await
        .unwrap();
    let e = CertificateAuthority::new(CaRole::Kubernetes, &leaf.der, TestSigner::new(), "x".into())
        .unwrap_err();
    assert!(e.to_string().contains("not a CA certificate"), "{e}");
}

#[tokio::test]
async fn an_expired_ca_issues_nothing() {
    let (_, ca) = ca(CaRole::Etcd, Duration::from_secs(3600)).await;
    let req = csr("node-1", &["node-1"], false);
    let later = SystemTime::now() + Duration::from_secs(7200);
    let e = ca
        .issue(
            &CertificateSubject::from(&req),
            &profile::by_name("etcd/server")
                .unwrap()
                .policy(DEFAULT_LEAF_VALIDITY),
            later,
            &MemoryAuditSink::default(),
            RequestContext::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, IssueError::CaUnusable { .. }), "{e}");
}

#[tokio::test]
async fn weak_subject_keys_are_refused() {
    let (_, ca) = ca(CaRole::Kubernetes, Duration::from_secs(86400)).await;
    let req = csr("kube-apiserver", &["kubernetes"], false);
    let mut subject = CertificateSubject::from(&req);
    // An RSA-1024 public key: SEQUENCE { INTEGER modulus (128 bytes, top bit set), INTEGER 65537 }.
    let mut modulus = vec![0x00, 0xc0];
    modulus.extend(std::iter::repeat_n(0x11, 127));
    let mut body = Vec::new();
    body.extend([0x02, 0x81, modulus.len() as u8]);
    body.extend(&modulus);
    body.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
    let mut key = vec![0x30, 0x81, body.len() as u8];
    key.extend(body);
    subject.public_key = SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: signer_api::algorithm::oid::RSA_ENCRYPTION,
            parameters: Some(der::asn1::Null.into()),
        },
        subject_public_key: der::asn1::BitString::from_bytes(&key).unwrap(),
    };
    let e = ca
        .issue(
            &subject,
            &profile::by_name("apiserver")
                .unwrap()
                .policy(DEFAULT_LEAF_VALIDITY),
            SystemTime::now(),
            &MemoryAuditSink::default(),
            RequestContext::default(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1024 bits is too small"), "{e}");
}

#[tokio::test]
async fn no_key_usage_bits_means_no_key_usage_extension() {
    let (_, ca) = ca(CaRole::Kubernetes, Duration::from_secs(86400)).await;
    let req = csr("jane", &[], false);
    let policy = signer_api::IssuancePolicy::new(
        signer_api::policy::KeyUsageSet(der::flagset::FlagSet::default()),
        vec![signer_api::algorithm::oid::KP_CLIENT_AUTH],
        Duration::from_secs(3600),
    );
    let c = ca
        .issue(
            &CertificateSubject::from(&req),
            &policy,
            SystemTime::now(),
            &MemoryAuditSink::default(),
            RequestContext::default(),
        )
        .await
        .unwrap();
    let cert = parse_certificate(&c.der).unwrap();
    assert!(
        cert.tbs_certificate()
            .get_extension::<KeyUsage>()
            .unwrap()
            .is_none()
    );
    assert!(
        cert.tbs_certificate()
            .get_extension::<ExtendedKeyUsage>()
            .unwrap()
            .is_some()
    );
}
