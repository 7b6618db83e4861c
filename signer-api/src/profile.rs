//! kubeadm's certificate table: the three CAs and every certificate `kubeadm certs generate-csr`
//! asks for, with the CA that signs it, its usages and its subject rules. The facts come from
//! kubeadm's certlist.go and kubeconfig.go (see docs/design.md).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use const_oid::ObjectIdentifier;
use x509_cert::ext::pkix::KeyUsages;

use crate::algorithm::oid;
use crate::csr::VerifiedCsr;
use crate::policy::{IssuancePolicy, KeyUsageSet};

/// kubeadm's default leaf validity (`certificateValidityPeriod`, 8760h).
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(8760 * 3600);
/// kubeadm's default CA validity (`caCertificateValidityPeriod`, 87600h).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(87600 * 3600);

/// One of kubeadm's three certificate authorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CaRole {
    /// The Kubernetes CA (`ca.crt`): apiserver, kubelet, kubeconfig clients.
    Kubernetes,
    /// The etcd CA (`etcd/ca.crt`).
    Etcd,
    /// The front-proxy CA (`front-proxy-ca.crt`): the aggregation layer's client.
    FrontProxy,
}

impl CaRole {
    /// All three, in kubeadm's order.
    pub const ALL: [CaRole; 3] = [CaRole::Kubernetes, CaRole::Etcd, CaRole::FrontProxy];

    /// The key under `cas:` in kubesign's configuration.
    pub fn config_name(self) -> &'static str {
        match self {
            CaRole::Kubernetes => "kubernetes",
            CaRole::Etcd => "etcd",
            CaRole::FrontProxy => "front-proxy",
        }
    }

    /// kubeadm's name for the CA (`ca`, `etcd-ca`, `front-proxy-ca`).
    pub fn kubeadm_name(self) -> &'static str {
        match self {
            CaRole::Kubernetes => "ca",
            CaRole::Etcd => "etcd-ca",
            CaRole::FrontProxy => "front-proxy-ca",
        }
    }

    /// The subject common name kubeadm gives the CA certificate.
    pub fn common_name(self) -> &'static str {
        match self {
            CaRole::Kubernetes => "kubernetes",
            CaRole::Etcd => "etcd-ca",
            CaRole::FrontProxy => "front-proxy-ca",
        }
    }

    /// The CA certificate's path relative to kubeadm's certificate directory.
    pub fn cert_file(self) -> &'static str {
        match self {
            CaRole::Kubernetes => "ca.crt",
            CaRole::Etcd => "etcd/ca.crt",
            CaRole::FrontProxy => "front-proxy-ca.crt",
        }
    }

    /// The CA key's path relative to kubeadm's certificate directory (absent in external CA mode).
    pub fn key_file(self) -> &'static str {
        match self {
            CaRole::Kubernetes => "ca.key",
            CaRole::Etcd => "etcd/ca.key",
            CaRole::FrontProxy => "front-proxy-ca.key",
        }
    }
}

impl fmt::Display for CaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

impl FromStr for CaRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CaRole::ALL
            .into_iter()
            .find(|r| r.config_name() == s || r.kubeadm_name() == s)
            .ok_or_else(|| format!("unknown CA {s:?}: expected kubernetes, etcd or front-proxy"))
    }
}

impl serde::Serialize for CaRole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.config_name())
    }
}

/// Where kubeadm puts a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// `<cert-dir>/<name>.crt` next to `<name>.key`.
    CertDir,
    /// Embedded in `<kubeconfig-dir>/<name>` as client-certificate-data.
    Kubeconfig,
}

/// What the subject common name must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonName {
    /// Exactly this name.
    Exact(&'static str),
    /// This prefix and a non-empty remainder (kubelet: `system:node:<node name>`).
    Prefix(&'static str),
    /// Any non-empty name (etcd server and peer: the node name).
    NodeName,
}

/// A kubeadm certificate: which CA signs it and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertProfile {
    /// kubeadm's base name (`apiserver`, `etcd/server`) or kubeconfig file name (`admin.conf`).
    pub name: &'static str,
    /// Where the certificate goes.
    pub location: Location,
    /// The signing CA.
    pub ca: CaRole,
    /// Whether the certificate serves TLS (serverAuth).
    pub server_auth: bool,
    /// Whether the certificate authenticates a client (clientAuth).
    pub client_auth: bool,
    /// The common name rule.
    pub common_name: CommonName,
    /// The accepted organization lists; an empty list means "no O".
    pub organizations: &'static [&'static [&'static str]],
    /// Whether the certificate needs at least one SAN (every serving certificate does).
    pub needs_sans: bool,
}

const NO_O: &[&[&str]] = &[&[]];
const CLUSTER_ADMINS: &[&[&str]] = &[&["kubeadm:cluster-admins"], &["system:masters"]];
const NONE_OR_MASTERS: &[&[&str]] = &[&[], &["system:masters"]];

/// Every certificate kubeadm's `certs generate-csr` asks for.
pub const KUBEADM_PROFILES: &[CertProfile] = &[
    CertProfile {
        name: "apiserver",
        location: Location::CertDir,
        ca: CaRole::Kubernetes,
        server_auth: true,
        client_auth: false,
        common_name: CommonName::Exact("kube-apiserver"),
        organizations: NO_O,
        needs_sans: true,
    },
    CertProfile {
        name: "apiserver-kubelet-client",
        location: Location::CertDir,
        ca: CaRole::Kubernetes,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("kube-apiserver-kubelet-client"),
        organizations: CLUSTER_ADMINS,
        needs_sans: false,
    },
    CertProfile {
        name: "front-proxy-client",
        location: Location::CertDir,
        ca: CaRole::FrontProxy,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("front-proxy-client"),
        organizations: NO_O,
        needs_sans: false,
    },
    CertProfile {
        name: "apiserver-etcd-client",
        location: Location::CertDir,
        ca: CaRole::Etcd,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("kube-apiserver-etcd-client"),
        organizations: NONE_OR_MASTERS,
        needs_sans: false,
    },
    CertProfile {
        name: "etcd/server",
        location: Location::CertDir,
        ca: CaRole::Etcd,
        server_auth: true,
        client_auth: true,
        common_name: CommonName::NodeName,
        organizations: NO_O,
        needs_sans: true,
    },
    CertProfile {
        name: "etcd/peer",
        location: Location::CertDir,
        ca: CaRole::Etcd,
        server_auth: true,
        client_auth: true,
        common_name: CommonName::NodeName,
        organizations: NO_O,
        needs_sans: true,
    },
    CertProfile {
        name: "etcd/healthcheck-client",
        location: Location::CertDir,
        ca: CaRole::Etcd,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("kube-etcd-healthcheck-client"),
        organizations: NONE_OR_MASTERS,
        needs_sans: false,
    },
    CertProfile {
        name: "admin.conf",
        location: Location::Kubeconfig,
        ca: CaRole::Kubernetes,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("kubernetes-admin"),
        organizations: CLUSTER_ADMINS,
        needs_sans: false,
    },
    CertProfile {
        name: "super-admin.conf",
        location: Location::Kubeconfig,
        ca: CaRole::Kubernetes,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("kubernetes-super-admin"),
        organizations: &[&["system:masters"]],
        needs_sans: false,
    },
    CertProfile {
        name: "kubelet.conf",
        location: Location::Kubeconfig,
        ca: CaRole::Kubernetes,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Prefix("system:node:"),
        organizations: &[&["system:nodes"]],
        needs_sans: false,
    },
    CertProfile {
        name: "controller-manager.conf",
        location: Location::Kubeconfig,
        ca: CaRole::Kubernetes,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("system:kube-controller-manager"),
        organizations: NO_O,
        needs_sans: false,
    },
    CertProfile {
        name: "scheduler.conf",
        location: Location::Kubeconfig,
        ca: CaRole::Kubernetes,
        server_auth: false,
        client_auth: true,
        common_name: CommonName::Exact("system:kube-scheduler"),
        organizations: NO_O,
        needs_sans: false,
    },
];

/// Looks a profile up by kubeadm name (`apiserver`, `etcd/server`, `admin.conf`).
pub fn by_name(name: &str) -> Option<&'static CertProfile> {
    KUBEADM_PROFILES.iter().find(|p| p.name == name)
}

/// The names kubesign knows, for error messages: `apiserver, apiserver-kubelet-client, ...`.
pub fn known_names(location: Location) -> String {
    KUBEADM_PROFILES
        .iter()
        .filter(|p| p.location == location)
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl CertProfile {
    /// Extended key usages, in the order Go writes them.
    pub fn extended_key_usage(&self) -> Vec<ObjectIdentifier> {
        let mut v = Vec::new();
        if self.server_auth {
            v.push(oid::KP_SERVER_AUTH);
        }
        if self.client_auth {
            v.push(oid::KP_CLIENT_AUTH);
        }
        v
    }

    /// The issuance policy for this certificate with the given validity.
    pub fn policy(&self, validity: Duration) -> IssuancePolicy {
        IssuancePolicy::new(
            KeyUsageSet::from(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment),
            self.extended_key_usage(),
            validity,
        )
    }

    /// The usages as kubeadm's table lists them, e.g. `serverAuth,clientAuth`.
    pub fn usage_names(&self) -> String {
        let mut v = Vec::new();
        if self.server_auth {
            v.push("serverAuth");
        }
        if self.client_auth {
            v.push("clientAuth");
        }
        v.join(",")
    }

    /// The path of the certificate file relative to the certificate directory (`etcd/server.crt`),
    /// or of the kubeconfig relative to the kubeconfig directory (`admin.conf`).
    pub fn file_name(&self) -> String {
        match self.location {
            Location::CertDir => format!("{}.crt", self.name),
            Location::Kubeconfig => self.name.to_owned(),
        }
    }

    /// The CSR file kubeadm writes for this certificate (`etcd/server.csr`, `admin.conf.csr`).
    pub fn csr_file_name(&self) -> String {
        match self.location {
            Location::CertDir => format!("{}.csr", self.name),
            Location::Kubeconfig => format!("{}.csr", self.name),
        }
    }

    /// Checks a subject (common name and organizations) and its SANs against kubeadm's table.
    pub fn check_identity(
        &self,
        cn: Option<&str>,
        orgs: &[String],
        san_count: usize,
    ) -> Result<(), String> {
        let cn = cn.ok_or_else(|| {
            format!(
                "{}: the subject must have exactly one common name",
                self.name
            )
        })?;
        match self.common_name {
            CommonName::Exact(want) if cn != want => {
                return Err(format!(
                    "{}: subject CN is {cn:?}, kubeadm's {} profile has CN {want:?}",
                    self.name, self.name
                ));
            }
            CommonName::Prefix(prefix) if !cn.starts_with(prefix) || cn.len() == prefix.len() => {
                return Err(format!(
                    "{}: subject CN is {cn:?}, expected {prefix}<node name>",
                    self.name
                ));
            }
            CommonName::NodeName if cn.is_empty() => {
                return Err(format!(
                    "{}: subject CN is empty, expected the node name",
                    self.name
                ));
            }
            _ => {}
        }
        if !self.organizations.iter().any(|allowed| {
            allowed.len() == orgs.len() && allowed.iter().zip(orgs).all(|(a, b)| a == b)
        }) {
            let expected: Vec<String> = self
                .organizations
                .iter()
                .map(|o| {
                    if o.is_empty() {
                        "no O".to_owned()
                    } else {
                        format!("O={}", o.join("+"))
                    }
                })
                .collect();
            return Err(format!(
                "{}: subject O is {:?}, kubeadm's profile allows {}",
                self.name,
                orgs,
                expected.join(" or ")
            ));
        }
        if self.needs_sans && san_count == 0 {
            return Err(format!(
                "{}: a serving certificate needs subject alternative names, the request has none",
                self.name
            ));
        }
        Ok(())
    }

    /// Checks a kubeadm CSR against this profile: the subject rules, SANs for serving
    /// certificates, and no requested extension but subjectAltName (kubeadm requests nothing else,
    /// so anything more means the file is not what kubeadm wrote).
    pub fn check_request(&self, csr: &VerifiedCsr) -> Result<(), String> {
        if csr.requests_ca() {
            return Err(format!(
                "{}: the request asks for basicConstraints CA:TRUE; kubeadm leaf certificates are never CAs",
                self.name
            ));
        }
        if let Some(ext) = csr
            .requested_extensions()
            .iter()
            .find(|e| e.extn_id != oid::SUBJECT_ALT_NAME)
        {
            let name = const_oid::db::DB.by_oid(&ext.extn_id).unwrap_or("unknown");
            return Err(format!(
                "{}: the request asks for extension {} ({name}); a kubeadm CSR carries only subjectAltName, \
                 and usages come from kubeadm's profile",
                self.name, ext.extn_id
            ));
        }
        let sans = csr.sans();
        if let Some(bad) = sans
            .iter()
            .find(|s| !matches!(s, crate::name::San::Dns(_) | crate::name::San::Ip(_)))
        {
            return Err(format!(
                "{}: the request asks for subject alternative name {bad}; kubeadm requests only DNS names and IP addresses",
                self.name
            ));
        }
        self.check_identity(
            csr.common_name().as_deref(),
            &csr.organizations(),
            sans.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete() {
        assert_eq!(KUBEADM_PROFILES.len(), 12);
        for p in KUBEADM_PROFILES {
            assert!(p.server_auth || p.client_auth, "{}", p.name);
            assert_eq!(by_name(p.name), Some(p));
        }
        assert_eq!(by_name("etcd/peer").map(|p| p.ca), Some(CaRole::Etcd));
        assert_eq!(
            by_name("front-proxy-client").map(|p| p.ca),
            Some(CaRole::FrontProxy)
        );
        assert!(known_names(Location::Kubeconfig).contains("super-admin.conf"));
    }

    #[test]
    fn identity_rules() {
        let kubelet = by_name("kubelet.conf").unwrap();
        assert!(
            kubelet
                .check_identity(Some("system:node:n1"), &["system:nodes".into()], 0)
                .is_ok()
        );
        assert!(
            kubelet
                .check_identity(Some("system:node:"), &["system:nodes".into()], 0)
                .is_err()
        );
        assert!(
            kubelet
                .check_identity(Some("system:node:n1"), &[], 0)
                .is_err()
        );
        let admin = by_name("admin.conf").unwrap();
        assert!(
            admin
                .check_identity(
                    Some("kubernetes-admin"),
                    &["kubeadm:cluster-admins".into()],
                    0
                )
                .is_ok()
        );
        assert!(
            admin
                .check_identity(Some("kubernetes-admin"), &["system:masters".into()], 0)
                .is_ok()
        );
        let e = admin.check_identity(Some("root"), &[], 0).unwrap_err();
        assert!(e.contains("kubernetes-admin"), "{e}");
        let apiserver = by_name("apiserver").unwrap();
        assert!(
            apiserver
                .check_identity(Some("kube-apiserver"), &[], 0)
                .is_err()
        );
        assert!(
            apiserver
                .check_identity(Some("kube-apiserver"), &[], 3)
                .is_ok()
        );
    }
}
