//! The issuance policy: what kubesign puts into every certificate regardless of what was asked.
//!
//! - basicConstraints CA:FALSE (critical);
//! - keyUsage and extendedKeyUsage from the profile, never from the request;
//! - subject and subjectAltName copied from the request; every other requested extension dropped;
//! - subjectKeyIdentifier and authorityKeyIdentifier set;
//! - a 128-bit random serial number;
//! - notBefore backdated by 5 minutes for clock skew; notAfter never past the CA's notAfter.

use std::fmt;
use std::time::Duration;

use const_oid::ObjectIdentifier;
use x509_cert::ext::pkix::{KeyUsage, KeyUsages};

use crate::algorithm::oid;

/// The backdate applied to notBefore, as kubeadm and kube-controller-manager do.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A set of key usages with stable names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyUsageSet(pub der::flagset::FlagSet<KeyUsages>);

impl From<der::flagset::FlagSet<KeyUsages>> for KeyUsageSet {
    fn from(f: der::flagset::FlagSet<KeyUsages>) -> Self {
        KeyUsageSet(f)
    }
}

impl From<KeyUsageSet> for KeyUsage {
    fn from(k: KeyUsageSet) -> Self {
        KeyUsage(k.0)
    }
}

impl KeyUsageSet {
    /// The names, as Kubernetes spells them in CSR usages (`digital signature`, ...).
    pub fn names(&self) -> Vec<&'static str> {
        self.0
            .into_iter()
            .map(|u| match u {
                KeyUsages::DigitalSignature => "digital signature",
                KeyUsages::NonRepudiation => "content commitment",
                KeyUsages::KeyEncipherment => "key encipherment",
                KeyUsages::DataEncipherment => "data encipherment",
                KeyUsages::KeyAgreement => "key agreement",
                KeyUsages::KeyCertSign => "cert sign",
                KeyUsages::CRLSign => "crl sign",
                KeyUsages::EncipherOnly => "encipher only",
                KeyUsages::DecipherOnly => "decipher only",
            })
            .collect()
    }
}

impl fmt::Debug for KeyUsageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// The Kubernetes name of an extended key usage OID (`server auth`, `client auth`, ...).
pub fn ext_key_usage_name(o: &ObjectIdentifier) -> String {
    match *o {
        oid::KP_SERVER_AUTH => "server auth".into(),
        oid::KP_CLIENT_AUTH => "client auth".into(),
        other => match const_oid::db::DB.by_oid(&other) {
            Some(n) => n.to_owned(),
            None => other.to_string(),
        },
    }
}

/// What to put into a certificate besides the subject and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuancePolicy {
    /// keyUsage (critical).
    pub key_usage: KeyUsageSet,
    /// extendedKeyUsage; omitted when empty.
    pub extended_key_usage: Vec<ObjectIdentifier>,
    /// Requested lifetime, counted from the time of issuance.
    pub validity: Duration,
    /// How far notBefore is moved into the past.
    pub backdate: Duration,
    /// Subtract the backdate from notAfter as well (kube-controller-manager does this for
    /// lifetimes of 8 hours or more, so the total span equals the requested lifetime).
    pub shorten_by_backdate: bool,
}

impl IssuancePolicy {
    /// A policy with kubeadm's 5-minute backdate.
    pub fn new(
        key_usage: KeyUsageSet,
        extended_key_usage: Vec<ObjectIdentifier>,
        validity: Duration,
    ) -> Self {
        IssuancePolicy {
            key_usage,
            extended_key_usage,
            validity,
            backdate: BACKDATE,
            shorten_by_backdate: false,
        }
    }
}
