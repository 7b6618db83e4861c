//! Reading subjects and subject alternative names the way operators read them: CN, O, and
//! `DNS:`/`IP:` strings as openssl prints them.

use std::net::IpAddr;

use const_oid::ObjectIdentifier;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::{DirectoryString, GeneralName};
use x509_cert::name::Name;

const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");

fn values(name: &Name, oid: ObjectIdentifier) -> Vec<String> {
    name.iter()
        .filter(|atv| atv.oid == oid)
        .map(|atv| match DirectoryString::try_from(&atv.value) {
            Ok(ds) => ds.value().into_owned(),
            Err(_) => String::from_utf8_lossy(atv.value.value()).into_owned(),
        })
        .collect()
}

/// Every commonName value in `name` (normally one).
pub fn common_names(name: &Name) -> Vec<String> {
    values(name, CN)
}

/// The commonName, when there is exactly one.
pub fn common_name(name: &Name) -> Option<String> {
    let mut cns = common_names(name);
    (cns.len() == 1).then(|| cns.remove(0))
}

/// Every organizationName value in `name`: Kubernetes reads these as the user's groups.
pub fn organizations(name: &Name) -> Vec<String> {
    values(name, O)
}

/// The subject in RFC 4514 form, e.g. `CN=kubernetes-admin,O=kubeadm:cluster-admins`.
pub fn display(name: &Name) -> String {
    name.to_string()
}

/// One subject alternative name, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum San {
    /// dNSName
    Dns(String),
    /// iPAddress
    Ip(IpAddr),
    /// rfc822Name
    Email(String),
    /// uniformResourceIdentifier
    Uri(String),
    /// Any other GeneralName form.
    Other(String),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
            San::Email(e) => write!(f, "email:{e}"),
            San::Uri(u) => write!(f, "URI:{u}"),
            San::Other(o) => f.write_str(o),
        }
    }
}

/// Splits a SubjectAltName into typed names.
pub fn sans(san: &SubjectAltName) -> Vec<San> {
    san.0
        .iter()
        .map(|gn| match gn {
            GeneralName::DnsName(d) => San::Dns(d.to_string()),
            GeneralName::Rfc822Name(e) => San::Email(e.to_string()),
            GeneralName::UniformResourceIdentifier(u) => San::Uri(u.to_string()),
            GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                4 => {
                    let b: [u8; 4] = ip.as_bytes().try_into().unwrap_or_default();
                    San::Ip(IpAddr::from(b))
                }
                16 => {
                    let b: [u8; 16] = ip.as_bytes().try_into().unwrap_or_default();
                    San::Ip(IpAddr::from(b))
                }
                n => San::Other(format!("IP:<{n} bytes>")),
            },
            GeneralName::DirectoryName(n) => San::Other(format!("DirName:{n}")),
            GeneralName::OtherName(o) => San::Other(format!("othername:{}", o.type_id)),
            GeneralName::RegisteredId(id) => San::Other(format!("RID:{id}")),
            GeneralName::EdiPartyName(_) => San::Other("EdiPartyName".into()),
        })
        .collect()
}
