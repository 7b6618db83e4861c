//! The signer names `kubesign serve` answers for, the CA behind each, and the rules each applies.
//!
//! Three names are Kubernetes' own and keep kube-controller-manager's rules exactly
//! (`kubernetes.io/kube-apiserver-client`, `kubernetes.io/kube-apiserver-client-kubelet`,
//! `kubernetes.io/kubelet-serving`); `kubernetes.io/legacy-unknown` is never signed. Any other name
//! (`kubesign.dev/etcd-client`, ...) is a custom signer whose rules come from the configuration and
//! which may only use the etcd or front-proxy CA.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use der::oid::ObjectIdentifier;
use signer_api::CaRole;
use signer_api::algorithm::oid as known;
use x509_cert::ext::pkix::KeyUsages;

/// kubelet serving certificates (`kubernetes.io/kubelet-serving`).
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// kubelet client certificates (`kubernetes.io/kube-apiserver-client-kubelet`).
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Client certificates for the API server (`kubernetes.io/kube-apiserver-client`).
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// The v1beta1 default signer; kube-controller-manager's v1 behaviour is to never sign it.
pub const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// Which rule set a signer name applies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignerKind {
    /// `kubernetes.io/kubelet-serving`, kube-controller-manager's rules.
    KubeletServing,
    /// `kubernetes.io/kube-apiserver-client-kubelet`, kube-controller-manager's rules.
    KubeletClient,
    /// `kubernetes.io/kube-apiserver-client`, kube-controller-manager's rules.
    KubeApiserverClient,
    /// A custom signer name with rules from the configuration.
    Custom(CustomRules),
}

impl SignerKind {
    /// The built-in kind for a `kubernetes.io/` name, if it is one kubesign signs.
    pub fn built_in(name: &str) -> Option<SignerKind> {
        match name {
            KUBELET_SERVING => Some(SignerKind::KubeletServing),
            KUBE_APISERVER_CLIENT_KUBELET => Some(SignerKind::KubeletClient),
            KUBE_APISERVER_CLIENT => Some(SignerKind::KubeApiserverClient),
            _ => None,
        }
    }
}

/// One signer name served, with its CA and rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerConfig {
    /// The signer name (`spec.signerName`).
    pub name: String,
    /// The CA that signs for it.
    pub ca: CaRole,
    /// The longest certificate lifetime (kube-controller-manager's `--cluster-signing-duration`).
    pub max_duration: Duration,
    /// The rules.
    pub kind: SignerKind,
}

/// A subjectAltName type, as the configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
pub enum SanType {
    /// dNSName.
    #[serde(rename = "DNS")]
    Dns,
    /// iPAddress.
    #[serde(rename = "IP")]
    Ip,
    /// rfc822Name.
    #[serde(rename = "email")]
    Email,
    /// uniformResourceIdentifier.
    #[serde(rename = "URI")]
    Uri,
}

impl fmt::Display for SanType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SanType::Dns => "DNS",
            SanType::Ip => "IP",
            SanType::Email => "email",
            SanType::Uri => "URI",
        })
    }
}

/// What a custom signer requires of the subject common name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CommonNameRule {
    /// Anything, including no common name.
    #[default]
    Any,
    /// Exactly this value.
    Exact(String),
    /// This prefix and at least one more character.
    Prefix(String),
}

/// The rules of a custom signer (`serve.signers[].rules`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomRules {
    /// The usages a request may ask for (Kubernetes spelling: `client auth`, ...).
    pub allowed_usages: BTreeSet<String>,
    /// The usages a request must ask for.
    pub required_usages: BTreeSet<String>,
    /// The subjectAltName types a request may carry; other types are refused.
    pub allowed_san_types: BTreeSet<SanType>,
    /// Whether at least one subjectAltName is required.
    pub require_san: bool,
    /// The common name rule.
    pub common_name: CommonNameRule,
    /// The organizations (groups) a subject may carry; `None` allows any.
    pub allowed_organizations: Option<BTreeSet<String>>,
}

/// How a Kubernetes usage name maps onto the certificate, as kube-controller-manager maps it
/// (`pkg/controller/certificates/authority/policies.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageBit {
    /// A keyUsage bit.
    Key(KeyUsages),
    /// An extendedKeyUsage OID, with Go's `x509.ExtKeyUsage` number, which orders the EKU list.
    Ext(ObjectIdentifier, u8),
}

const fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

/// Every usage name the certificates.k8s.io/v1 API accepts, with what it sets.
pub const USAGES: &[(&str, UsageBit)] = &[
    ("signing", UsageBit::Key(KeyUsages::DigitalSignature)),
    (
        "digital signature",
        UsageBit::Key(KeyUsages::DigitalSignature),
    ),
    (
        "content commitment",
        UsageBit::Key(KeyUsages::NonRepudiation),
    ),
    (
        "key encipherment",
        UsageBit::Key(KeyUsages::KeyEncipherment),
    ),
    ("key agreement", UsageBit::Key(KeyUsages::KeyAgreement)),
    (
        "data encipherment",
        UsageBit::Key(KeyUsages::DataEncipherment),
    ),
    ("cert sign", UsageBit::Key(KeyUsages::KeyCertSign)),
    ("crl sign", UsageBit::Key(KeyUsages::CRLSign)),
    ("encipher only", UsageBit::Key(KeyUsages::EncipherOnly)),
    ("decipher only", UsageBit::Key(KeyUsages::DecipherOnly)),
    ("any", UsageBit::Ext(oid("2.5.29.37.0"), 0)),
    ("server auth", UsageBit::Ext(known::KP_SERVER_AUTH, 1)),
    ("client auth", UsageBit::Ext(known::KP_CLIENT_AUTH, 2)),
    ("code signing", UsageBit::Ext(oid("1.3.6.1.5.5.7.3.3"), 3)),
    (
        "email protection",
        UsageBit::Ext(oid("1.3.6.1.5.5.7.3.4"), 4),
    ),
    ("s/mime", UsageBit::Ext(oid("1.3.6.1.5.5.7.3.4"), 4)),
    (
        "ipsec end system",
        UsageBit::Ext(oid("1.3.6.1.5.5.7.3.5"), 5),
    ),
    ("ipsec tunnel", UsageBit::Ext(oid("1.3.6.1.5.5.7.3.6"), 6)),
    ("ipsec user", UsageBit::Ext(oid("1.3.6.1.5.5.7.3.7"), 7)),
    ("timestamping", UsageBit::Ext(oid("1.3.6.1.5.5.7.3.8"), 8)),
    ("ocsp signing", UsageBit::Ext(oid("1.3.6.1.5.5.7.3.9"), 9)),
    (
        "microsoft sgc",
        UsageBit::Ext(oid("1.3.6.1.4.1.311.10.3.3"), 10),
    ),
    (
        "netscape sgc",
        UsageBit::Ext(oid("2.16.840.1.113730.4.1"), 11),
    ),
];

/// What a usage name sets, or `None` for a name the API does not know.
pub fn usage_bit(name: &str) -> Option<UsageBit> {
    USAGES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Checks a signer name's form as the API server does for `spec.signerName`: `<domain>/<path>`,
/// the domain a lower-case DNS subdomain with at least one dot.
pub fn check_signer_name(name: &str) -> Result<(), String> {
    let Some((domain, path)) = name.split_once('/') else {
        return Err(format!(
            "{name:?} is not a signer name: expected <domain>/<path>, e.g. kubesign.dev/etcd-client"
        ));
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(label_ok) {
        return Err(format!(
            "{name:?}: the domain {domain:?} must be a lower-case DNS subdomain with at least one dot"
        ));
    }
    if path.is_empty() || path.len() > 571 || path.contains(char::is_whitespace) {
        return Err(format!(
            "{name:?}: the path after the domain must be non-empty, without spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_table_matches_kube_controller_manager() {
        assert_eq!(USAGES.len(), 23);
        assert_eq!(
            usage_bit("signing"),
            Some(UsageBit::Key(KeyUsages::DigitalSignature))
        );
        assert_eq!(usage_bit("s/mime"), usage_bit("email protection"));
        assert_eq!(
            usage_bit("client auth"),
            Some(UsageBit::Ext(known::KP_CLIENT_AUTH, 2))
        );
        assert_eq!(usage_bit("Client Auth"), None);
        assert_eq!(usage_bit("bogus"), None);
    }

    #[test]
    fn signer_names() {
        assert!(check_signer_name("kubesign.dev/etcd-client").is_ok());
        assert!(check_signer_name("example.com/a/b").is_ok());
        for bad in [
            "etcd-client",
            "kubesign/etcd",
            "Kubesign.dev/etcd",
            "kubesign.dev/",
            "-a.dev/x",
            "a.dev/x y",
        ] {
            assert!(check_signer_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            SignerKind::built_in(KUBELET_SERVING),
            Some(SignerKind::KubeletServing)
        );
        assert_eq!(SignerKind::built_in(LEGACY_UNKNOWN), None);
    }
}
