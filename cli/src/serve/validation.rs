//! The signing decisions of `kubesign serve` as pure functions over a parsed CSR and the
//! CertificateSigningRequest's spec fields: kube-controller-manager's csrsigning rules (same checks,
//! same order, same messages), the custom signer rules, the certificate lifetime, and the mapping of
//! `spec.usages` onto keyUsage and extendedKeyUsage. Nothing here talks to the API server or a key.
//!
//! Sources: `pkg/apis/certificates/helpers.go` (ValidateKubeletServingCSR,
//! ValidateKubeletClientCSR), `pkg/controller/certificates/signer/signer.go` (handle, duration,
//! validAPIServerClientUsages) and `pkg/controller/certificates/authority/policies.go`
//! (PermissiveSigningPolicy, keyUsagesFromStrings) in kubernetes/kubernetes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use der::flagset::FlagSet;
use der::oid::ObjectIdentifier;
use signer_api::ca::CertificateSubject;
use signer_api::policy::{BACKDATE, IssuancePolicy, KeyUsageSet};
use signer_api::{VerifiedCsr, name};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::signers::{CommonNameRule, CustomRules, SanType, SignerKind, UsageBit, usage_bit};

/// The condition reason kube-controller-manager writes when a request breaks its signer's rules.
pub const SIGNER_VALIDATION_FAILURE: &str = "SignerValidationFailure";

/// The shortest certificate lifetime: kube-controller-manager raises shorter requests to 10
/// minutes (twice the backdate).
pub const MIN_DURATION: Duration = Duration::from_secs(600);

/// Lifetimes at or above this count as long: their notAfter is moved back by the backdate too.
pub const SHORT_DURATION: Duration = Duration::from_secs(8 * 3600);

/// A CSR as Go's `x509.CertificateRequest` presents it to kube-controller-manager's checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestView {
    /// `Subject.CommonName`: the last CN attribute, empty when there is none.
    pub common_name: String,
    /// `Subject.Organization`, in order.
    pub organizations: Vec<String>,
    /// `DNSNames`.
    pub dns_names: Vec<String>,
    /// `IPAddresses`.
    pub ip_addresses: Vec<IpAddr>,
    /// `EmailAddresses`.
    pub email_addresses: Vec<String>,
    /// `URIs`.
    pub uris: Vec<String>,
    /// SAN forms Go ignores (otherName, directoryName, ...), as text.
    pub other_sans: Vec<String>,
}

impl RequestView {
    /// The view of a verified CSR.
    pub fn from_csr(csr: &VerifiedCsr) -> Self {
        let mut view = RequestView {
            common_name: name::common_names(csr.subject()).pop().unwrap_or_default(),
            organizations: name::organizations(csr.subject()),
            ..RequestView::default()
        };
        for san in csr.sans() {
            match san {
                name::San::Dns(d) => view.dns_names.push(d),
                name::San::Ip(ip) => view.ip_addresses.push(ip),
                name::San::Email(e) => view.email_addresses.push(e),
                name::San::Uri(u) => view.uris.push(u),
                other => view.other_sans.push(other.to_string()),
            }
        }
        view
    }
}

/// Why `spec.request` cannot be signed as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestProblem {
    /// It does not parse (or its self-signature does not verify). kube-controller-manager
    /// returns such errors to its work queue and retries with backoff, without a condition; so does
    /// kubesign. The API server validates both on create, so this should not happen.
    Unparsable(String),
    /// It parses, but carries a public key kubesign does not certify (RSA below 2048 bits, P-521,
    /// Ed25519, ...). kube-controller-manager would sign these; kubesign marks them Failed with
    /// SignerValidationFailure instead, since retrying cannot help.
    UnsupportedKey(String),
}

/// Parses `spec.request` the way kube-controller-manager does (`pem.Decode`, then the first block
/// must be `CERTIFICATE REQUEST`), then checks the key policy and the proof of possession.
pub fn parse_request(request: &[u8]) -> Result<VerifiedCsr, RequestProblem> {
    const WRONG_BLOCK: &str = "PEM block type must be CERTIFICATE REQUEST";
    let blocks = signer_api::pem::decode_all(request).map_err(|e| match e {
        signer_api::pem::PemError::NoBlock => RequestProblem::Unparsable(WRONG_BLOCK.into()),
        other => RequestProblem::Unparsable(other.to_string()),
    })?;
    let first = blocks
        .first()
        .filter(|b| b.label == "CERTIFICATE REQUEST")
        .ok_or_else(|| RequestProblem::Unparsable(WRONG_BLOCK.into()))?;
    VerifiedCsr::parse(&first.der).map_err(|e| match e {
        signer_api::csr::CsrError::Key(k) => RequestProblem::UnsupportedKey(format!(
            "unsupported public key: {k} (kubesign certifies RSA keys of 2048 to 8192 bits and \
             ECDSA P-256 and P-384 keys)"
        )),
        other => RequestProblem::Unparsable(other.to_string()),
    })
}

/// Why a request may not be signed: the message that goes into the Failed condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError(msg.into()))
}

/// Go's `fmt.Sprint` of a sorted `[]string`: `[a b c]`.
fn go_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = items.into_iter().collect();
    v.sort_unstable();
    format!("[{}]", v.join(" "))
}

const KUBELET_SERVING_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];
const KUBELET_SERVING_USAGES_NO_RSA: [&str; 2] = ["digital signature", "server auth"];
const KUBELET_CLIENT_USAGES: [&str; 3] = ["client auth", "digital signature", "key encipherment"];
const KUBELET_CLIENT_USAGES_NO_RSA: [&str; 2] = ["client auth", "digital signature"];

fn set_is(usages: &BTreeSet<&str>, want: &[&str]) -> bool {
    usages.len() == want.len() && want.iter().all(|u| usages.contains(u))
}

/// Checks a request against its signer's rules. `usages` is `spec.usages`.
pub fn validate(
    kind: &SignerKind,
    req: &RequestView,
    usages: &[String],
) -> Result<(), ValidationError> {
    let set: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    match kind {
        SignerKind::KubeletServing => kubelet_serving(req, &set),
        SignerKind::KubeletClient => kubelet_client(req, &set),
        SignerKind::KubeApiserverClient => api_server_client(usages),
        SignerKind::Custom(rules) => custom(rules, req, usages),
    }
}

/// `ValidateKubeletServingCSR`.
fn kubelet_serving(req: &RequestView, usages: &BTreeSet<&str>) -> Result<(), ValidationError> {
    if req.organizations != ["system:nodes"] {
        return fail("subject organization is not system:nodes");
    }
    if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
        return fail("DNS or IP subjectAltName is required");
    }
    if !req.email_addresses.is_empty() {
        return fail("Email subjectAltNames are not allowed");
    }
    if !req.uris.is_empty() {
        return fail("URI subjectAltNames are not allowed");
    }
    if !set_is(usages, &KUBELET_SERVING_USAGES) && !set_is(usages, &KUBELET_SERVING_USAGES_NO_RSA) {
        return fail(format!(
            "usages did not match {}",
            go_list(KUBELET_SERVING_USAGES)
        ));
    }
    if !req.common_name.starts_with("system:node:") {
        return fail("subject common name does not begin with system:node:");
    }
    Ok(())
}

/// `ValidateKubeletClientCSR`.
fn kubelet_client(req: &RequestView, usages: &BTreeSet<&str>) -> Result<(), ValidationError> {
    if req.organizations != ["system:nodes"] {
        return fail("subject organization is not system:nodes");
    }
    if !req.dns_names.is_empty() {
        return fail("DNS subjectAltNames are not allowed");
    }
    if !req.email_addresses.is_empty() {
        return fail("Email subjectAltNames are not allowed");
    }
    if !req.ip_addresses.is_empty() {
        return fail("IP subjectAltNames are not allowed");
    }
    if !req.uris.is_empty() {
        return fail("URI subjectAltNames are not allowed");
    }
    if !req.common_name.starts_with("system:node:") {
        return fail("subject common name does not begin with system:node:");
    }
    if !set_is(usages, &KUBELET_CLIENT_USAGES) && !set_is(usages, &KUBELET_CLIENT_USAGES_NO_RSA) {
        return fail(format!(
            "usages did not match {}",
            go_list(KUBELET_CLIENT_USAGES)
        ));
    }
    Ok(())
}

/// `validAPIServerClientUsages`: client auth required, digital signature and key encipherment
/// optional, nothing else; subject and SANs are not restricted.
fn api_server_client(usages: &[String]) -> Result<(), ValidationError> {
    let mut client_auth = false;
    for u in usages {
        match u.as_str() {
            "digital signature" | "key encipherment" => {}
            "client auth" => client_auth = true,
            other => return fail(format!("invalid usage for client certificate: {other}")),
        }
    }
    if !client_auth {
        return fail("missing required usage for client certificate: client auth");
    }
    Ok(())
}

/// A custom signer's configured rules: usages, SAN types, common name, organizations.
fn custom(
    rules: &CustomRules,
    req: &RequestView,
    usages: &[String],
) -> Result<(), ValidationError> {
    for u in usages {
        if !rules.allowed_usages.contains(u) {
            return fail(format!(
                "usage {u:?} is not allowed; allowed usages: {}",
                go_list(rules.allowed_usages.iter().map(String::as_str))
            ));
        }
    }
    for r in &rules.required_usages {
        if !usages.contains(r) {
            return fail(format!("missing required usage: {r}"));
        }
    }
    let present = [
        (SanType::Dns, !req.dns_names.is_empty()),
        (SanType::Ip, !req.ip_addresses.is_empty()),
        (SanType::Email, !req.email_addresses.is_empty()),
        (SanType::Uri, !req.uris.is_empty()),
    ];
    for (t, has) in present {
        if has && !rules.allowed_san_types.contains(&t) {
            let what = if t == SanType::Email {
                "Email".to_owned()
            } else {
                t.to_string()
            };
            return fail(format!("{what} subjectAltNames are not allowed"));
        }
    }
    if let Some(other) = req.other_sans.first() {
        return fail(format!("subjectAltName {other} is not allowed"));
    }
    if rules.require_san && !present.iter().any(|(_, has)| *has) {
        let types: Vec<String> = rules
            .allowed_san_types
            .iter()
            .map(ToString::to_string)
            .collect();
        return fail(format!(
            "a subjectAltName is required ({})",
            types.join(" or ")
        ));
    }
    match &rules.common_name {
        CommonNameRule::Any => {}
        CommonNameRule::Exact(cn) if req.common_name != *cn => {
            return fail(format!("subject common name is not {cn}"));
        }
        CommonNameRule::Prefix(p)
            if !req.common_name.starts_with(p.as_str()) || req.common_name.len() == p.len() =>
        {
            return fail(format!(
                "subject common name does not begin with {p} followed by a name"
            ));
        }
        _ => {}
    }
    if let Some(allowed) = &rules.allowed_organizations {
        for o in &req.organizations {
            if !allowed.contains(o) {
                return fail(format!(
                    "subject organization {o:?} is not allowed; allowed organizations: {}",
                    go_list(allowed.iter().map(String::as_str))
                ));
            }
        }
    }
    Ok(())
}

/// The certificate lifetime: `spec.expirationSeconds` when given, raised to 10 minutes and capped
/// at `max` (kube-controller-manager's `signer.duration`); `max` when absent.
pub fn certificate_ttl(expiration_seconds: Option<i32>, max: Duration) -> Duration {
    let Some(secs) = expiration_seconds else {
        return max;
    };
    let requested = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    if requested > max {
        max
    } else if requested < MIN_DURATION {
        MIN_DURATION
    } else {
        requested
    }
}

/// The keyUsage bits and the extendedKeyUsage list for `spec.usages`, as
/// `keyUsagesFromStrings` computes them: usages OR-ed together, EKUs de-duplicated and ordered by
/// Go's `x509.ExtKeyUsage` numbering.
pub fn key_usages(
    usages: &[String],
) -> Result<(KeyUsageSet, Vec<ObjectIdentifier>), ValidationError> {
    let mut key = FlagSet::default();
    let mut ext: Vec<(u8, ObjectIdentifier)> = Vec::new();
    let mut unrecognized = Vec::new();
    for u in usages {
        match usage_bit(u) {
            Some(UsageBit::Key(k)) => key |= k,
            Some(UsageBit::Ext(oid, order)) => {
                if !ext.iter().any(|(o, _)| *o == order) {
                    ext.push((order, oid));
                }
            }
            None => unrecognized.push(format!("{u:?}")),
        }
    }
    if !unrecognized.is_empty() {
        return fail(format!(
            "unrecognized usage values: [{}]",
            unrecognized.join(" ")
        ));
    }
    ext.sort_by_key(|(order, _)| *order);
    Ok((
        KeyUsageSet(key),
        ext.into_iter().map(|(_, oid)| oid).collect(),
    ))
}

/// The issuance policy for a request: usages from `spec.usages`, the lifetime `ttl`, notBefore
/// backdated 5 minutes, and notAfter moved back by the same 5 minutes when `ttl` is 8 hours or
/// more (kube-controller-manager's PermissiveSigningPolicy). The engine caps notAfter at the CA's.
pub fn issuance_policy(
    usages: &[String],
    ttl: Duration,
) -> Result<IssuancePolicy, ValidationError> {
    let (key_usage, extended_key_usage) = key_usages(usages)?;
    Ok(IssuancePolicy {
        key_usage,
        extended_key_usage,
        validity: ttl,
        backdate: BACKDATE,
        shorten_by_backdate: ttl >= SHORT_DURATION,
    })
}

/// The subject of the certificate: the request's subject and public key, and the SANs Go's
/// x509 copies (DNS, IP, email, URI); other SAN forms are dropped as kube-controller-manager drops
/// them.
pub fn issued_subject(csr: &VerifiedCsr) -> CertificateSubject {
    let alt_names = csr.subject_alt_name().and_then(|san| {
        let kept: Vec<GeneralName> = san
            .0
            .iter()
            .filter(|gn| match gn {
                GeneralName::DnsName(_)
                | GeneralName::Rfc822Name(_)
                | GeneralName::UniformResourceIdentifier(_) => true,
                GeneralName::IpAddress(ip) => matches!(ip.as_bytes().len(), 4 | 16),
                _ => false,
            })
            .cloned()
            .collect();
        (!kept.is_empty()).then_some(SubjectAltName(kept))
    });
    CertificateSubject {
        name: csr.subject().clone(),
        public_key: csr.public_key().clone(),
        alt_names,
    }
}

/// What the conditions of a CertificateSigningRequest say, read as kube-controller-manager reads
/// them: any `Approved` or `Denied` condition counts whatever its status; `Failed` counts when its
/// status is `True` or empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// An Approved condition is present.
    pub approved: bool,
    /// A Denied condition is present.
    pub denied: bool,
    /// A Failed condition with status True (or empty) is present.
    pub failed: bool,
}

impl Conditions {
    /// Reads `(type, status)` pairs.
    pub fn read<'a>(conditions: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut c = Conditions::default();
        for (t, status) in conditions {
            match t {
                "Approved" => c.approved = true,
                "Denied" => c.denied = true,
                "Failed" if status.is_empty() || status == "True" => c.failed = true,
                _ => {}
            }
        }
        c
    }

    /// Whether a signer acts on the request: approved, not denied, not failed.
    pub fn actionable(&self) -> bool {
        self.approved && !self.denied && !self.failed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::SystemTime;

    use der::Decode;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType as Rc};
    use signer_api::algorithm::oid;
    use x509_cert::Certificate;
    use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};

    use super::*;
    use crate::serve::signers::{KUBELET_SERVING, SignerKind};

    fn csr(
        cn: Option<&str>,
        orgs: &[&str],
        sans: Vec<Rc>,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> VerifiedCsr {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        VerifiedCsr::parse(pem.as_bytes()).unwrap()
    }

    fn node(cn: &str, orgs: &[&str], sans: Vec<Rc>) -> RequestView {
        RequestView::from_csr(&csr(Some(cn), orgs, sans, &rcgen::PKCS_ECDSA_P256_SHA256))
    }

    fn dns(d: &str) -> Rc {
        Rc::DnsName(d.try_into().unwrap())
    }
    fn ip(s: &str) -> Rc {
        Rc::IpAddress(s.parse().unwrap())
    }
    fn email(s: &str) -> Rc {
        Rc::Rfc822Name(s.try_into().unwrap())
    }
    fn uri(s: &str) -> Rc {
        Rc::URI(s.try_into().unwrap())
    }
    fn u(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }
    fn err(r: Result<(), ValidationError>) -> String {
        r.unwrap_err().0
    }

    const SERVING: &[&str] = &["digital signature", "key encipherment", "server auth"];
    const CLIENT: &[&str] = &["digital signature", "key encipherment", "client auth"];

    #[test]
    fn view_reads_like_go_x509() {
        let v = node(
            "system:node:n1",
            &["system:nodes"],
            vec![
                dns("n1"),
                ip("10.0.0.1"),
                email("a@b.c"),
                uri("spiffe://x/y"),
            ],
        );
        assert_eq!(v.common_name, "system:node:n1");
        assert_eq!(v.organizations, ["system:nodes"]);
        assert_eq!(v.dns_names, ["n1"]);
        assert_eq!(v.ip_addresses, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(v.email_addresses, ["a@b.c"]);
        assert_eq!(v.uris, ["spiffe://x/y"]);
        let none = RequestView::from_csr(&csr(None, &[], vec![], &rcgen::PKCS_ECDSA_P256_SHA256));
        assert_eq!(none.common_name, "");
    }

    #[test]
    fn kubelet_serving_accepts_kcm_shapes() {
        let k = SignerKind::KubeletServing;
        let ok = node("system:node:n1", &["system:nodes"], vec![dns("n1")]);
        assert_eq!(validate(&k, &ok, &u(SERVING)), Ok(()));
        // ECDSA kubelets omit key encipherment; order does not matter.
        assert_eq!(
            validate(&k, &ok, &u(&["server auth", "digital signature"])),
            Ok(())
        );
        let ip_only = node("system:node:n1", &["system:nodes"], vec![ip("10.0.0.1")]);
        assert_eq!(validate(&k, &ip_only, &u(SERVING)), Ok(()));
    }

    #[test]
    fn kubelet_serving_rejections_in_kcm_order_with_kcm_messages() {
        let k = SignerKind::KubeletServing;
        let cases: Vec<(RequestView, Vec<String>, &str)> = vec![
            (
                node("system:node:n1", &[], vec![dns("n1")]),
                u(SERVING),
                "subject organization is not system:nodes",
            ),
            (
                node("system:node:n1", &["system:nodes", "x"], vec![dns("n1")]),
                u(SERVING),
                "subject organization is not system:nodes",
            ),
            (
                node("system:node:n1", &["system:masters"], vec![dns("n1")]),
                u(SERVING),
                "subject organization is not system:nodes",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![]),
                u(SERVING),
                "DNS or IP subjectAltName is required",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![email("a@b.c")]),
                u(SERVING),
                "DNS or IP subjectAltName is required",
            ),
            (
                node(
                    "system:node:n1",
                    &["system:nodes"],
                    vec![dns("n1"), email("a@b.c")],
                ),
                u(SERVING),
                "Email subjectAltNames are not allowed",
            ),
            (
                node(
                    "system:node:n1",
                    &["system:nodes"],
                    vec![dns("n1"), uri("spiffe://a/b")],
                ),
                u(SERVING),
                "URI subjectAltNames are not allowed",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![dns("n1")]),
                u(&[
                    "digital signature",
                    "key encipherment",
                    "server auth",
                    "client auth",
                ]),
                "usages did not match [digital signature key encipherment server auth]",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![dns("n1")]),
                u(&["server auth"]),
                "usages did not match [digital signature key encipherment server auth]",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![dns("n1")]),
                u(&["key encipherment", "server auth"]),
                "usages did not match [digital signature key encipherment server auth]",
            ),
            (
                node("node:n1", &["system:nodes"], vec![dns("n1")]),
                u(SERVING),
                "subject common name does not begin with system:node:",
            ),
            // Usages are checked before the common name, as in kcm.
            (
                node("n1", &["system:nodes"], vec![dns("n1")]),
                u(&["client auth"]),
                "usages did not match [digital signature key encipherment server auth]",
            ),
        ];
        for (view, usages, want) in cases {
            assert_eq!(
                err(validate(&k, &view, &usages)),
                want,
                "{view:?} {usages:?}"
            );
        }
    }

    #[test]
    fn kubelet_client_rules() {
        let k = SignerKind::KubeletClient;
        let ok = node("system:node:n1", &["system:nodes"], vec![]);
        assert_eq!(validate(&k, &ok, &u(CLIENT)), Ok(()));
        assert_eq!(
            validate(&k, &ok, &u(&["client auth", "digital signature"])),
            Ok(())
        );
        let cases: Vec<(RequestView, Vec<String>, &str)> = vec![
            (
                node("system:node:n1", &["system:masters"], vec![]),
                u(CLIENT),
                "subject organization is not system:nodes",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![dns("n1")]),
                u(CLIENT),
                "DNS subjectAltNames are not allowed",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![email("a@b.c")]),
                u(CLIENT),
                "Email subjectAltNames are not allowed",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![ip("10.0.0.1")]),
                u(CLIENT),
                "IP subjectAltNames are not allowed",
            ),
            (
                node(
                    "system:node:n1",
                    &["system:nodes"],
                    vec![uri("spiffe://a/b")],
                ),
                u(CLIENT),
                "URI subjectAltNames are not allowed",
            ),
            // The common name is checked before the usages, as in kcm.
            (
                node("admin", &["system:nodes"], vec![]),
                u(&["server auth"]),
                "subject common name does not begin with system:node:",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![]),
                u(&[
                    "digital signature",
                    "key encipherment",
                    "client auth",
                    "server auth",
                ]),
                "usages did not match [client auth digital signature key encipherment]",
            ),
            (
                node("system:node:n1", &["system:nodes"], vec![]),
                u(&["client auth"]),
                "usages did not match [client auth digital signature key encipherment]",
            ),
        ];
        for (view, usages, want) in cases {
            assert_eq!(
                err(validate(&k, &view, &usages)),
                want,
                "{view:?} {usages:?}"
            );
        }
    }

    #[test]
    fn api_server_client_rules() {
        let k = SignerKind::KubeApiserverClient;
        // Any subject and any SANs.
        let any = node(
            "anyone",
            &["system:masters", "x"],
            vec![dns("a"), email("a@b.c")],
        );
        assert_eq!(validate(&k, &any, &u(&["client auth"])), Ok(()));
        assert_eq!(validate(&k, &any, &u(CLIENT)), Ok(()));
        assert_eq!(
            err(validate(&k, &any, &u(&["client auth", "server auth"]))),
            "invalid usage for client certificate: server auth"
        );
        assert_eq!(
            err(validate(&k, &any, &u(&["signing", "client auth"]))),
            "invalid usage for client certificate: signing"
        );
        assert_eq!(
            err(validate(&k, &any, &u(&["digital signature"]))),
            "missing required usage for client certificate: client auth"
        );
        assert_eq!(
            err(validate(&k, &any, &[])),
            "missing required usage for client certificate: client auth"
        );
    }

    fn etcd_client_rules() -> CustomRules {
        CustomRules {
            allowed_usages: ["digital signature", "key encipherment", "client auth"]
                .map(String::from)
                .into(),
            required_usages: ["client auth".to_owned()].into(),
            allowed_san_types: BTreeSet::new(),
            require_san: false,
            common_name: CommonNameRule::Prefix("etcd-client:".into()),
            allowed_organizations: Some(BTreeSet::new()),
        }
    }

    #[test]
    fn custom_rules() {
        let k = SignerKind::Custom(etcd_client_rules());
        let ok = node("etcd-client:backup", &[], vec![]);
        assert_eq!(validate(&k, &ok, &u(CLIENT)), Ok(()));
        let cases: Vec<(RequestView, Vec<String>, &str)> = vec![
            (
                ok.clone(),
                u(&["client auth", "server auth"]),
                "usage \"server auth\" is not allowed; allowed usages: [client auth digital signature key encipherment]",
            ),
            (
                ok.clone(),
                u(&["digital signature"]),
                "missing required usage: client auth",
            ),
            (
                node("etcd-client:backup", &[], vec![dns("x")]),
                u(CLIENT),
                "DNS subjectAltNames are not allowed",
            ),
            (
                node("etcd-client:backup", &[], vec![email("a@b.c")]),
                u(CLIENT),
                "Email subjectAltNames are not allowed",
            ),
            (
                node("etcd-client:", &[], vec![]),
                u(CLIENT),
                "subject common name does not begin with etcd-client: followed by a name",
            ),
            (
                node("backup", &[], vec![]),
                u(CLIENT),
                "subject common name does not begin with etcd-client: followed by a name",
            ),
            (
                node("etcd-client:backup", &["system:masters"], vec![]),
                u(CLIENT),
                "subject organization \"system:masters\" is not allowed; allowed organizations: []",
            ),
        ];
        for (view, usages, want) in cases {
            assert_eq!(
                err(validate(&k, &view, &usages)),
                want,
                "{view:?} {usages:?}"
            );
        }

        let mut peer = etcd_client_rules();
        peer.allowed_usages.insert("server auth".into());
        peer.required_usages.insert("server auth".into());
        peer.allowed_san_types = [SanType::Dns, SanType::Ip].into();
        peer.require_san = true;
        peer.common_name = CommonNameRule::Any;
        peer.allowed_organizations = None;
        let k = SignerKind::Custom(peer.clone());
        let usages = u(&["client auth", "server auth", "digital signature"]);
        assert_eq!(
            validate(
                &k,
                &node("n1", &["any"], vec![dns("n1"), ip("10.0.0.2")]),
                &usages
            ),
            Ok(())
        );
        assert_eq!(
            err(validate(&k, &node("n1", &[], vec![]), &usages)),
            "a subjectAltName is required (DNS or IP)"
        );
        assert_eq!(
            err(validate(
                &k,
                &node("n1", &[], vec![uri("spiffe://a/b")]),
                &usages
            )),
            "URI subjectAltNames are not allowed"
        );
        peer.common_name = CommonNameRule::Exact("front-proxy-client".into());
        let k = SignerKind::Custom(peer);
        assert_eq!(
            err(validate(&k, &node("n1", &[], vec![dns("a")]), &usages)),
            "subject common name is not front-proxy-client"
        );
    }

    #[test]
    fn request_parsing_like_kcm() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        assert!(parse_request(pem.as_bytes()).is_ok());
        // Leading text is skipped; only the first block counts.
        let with_text =
            format!("hello\n{pem}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(parse_request(with_text.as_bytes()).is_ok());
        let cert_first =
            format!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n{pem}");
        let wrong = RequestProblem::Unparsable("PEM block type must be CERTIFICATE REQUEST".into());
        assert_eq!(parse_request(cert_first.as_bytes()).unwrap_err(), wrong);
        assert_eq!(parse_request(b"garbage").unwrap_err(), wrong);
        // The legacy NEW CERTIFICATE REQUEST label is refused, as Go's ParseCSR refuses it.
        let legacy = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert_eq!(parse_request(legacy.as_bytes()).unwrap_err(), wrong);
        // DER is not accepted in spec.request.
        let der = signer_api::pem::decode_all(pem.as_bytes())
            .unwrap()
            .remove(0)
            .der;
        assert_eq!(parse_request(&der).unwrap_err(), wrong);
        // A broken body: retried, not failed.
        let broken =
            "-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQA=\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            parse_request(broken.as_bytes()),
            Err(RequestProblem::Unparsable(_))
        ));
        // An Ed25519 key parses but is not certified: a terminal failure.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_pem = CertificateParams::default()
            .serialize_request(&ed)
            .unwrap()
            .pem()
            .unwrap();
        assert!(matches!(
            parse_request(ed_pem.as_bytes()),
            Err(RequestProblem::UnsupportedKey(m)) if m.starts_with("unsupported public key")
        ));
    }

    #[test]
    fn issued_sans_are_the_ones_go_copies() {
        let req = csr(
            Some("system:node:n1"),
            &["system:nodes"],
            vec![
                dns("n1"),
                Rc::OtherName((vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3], "upn@x".into())),
                ip("10.0.0.1"),
            ],
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        let view = RequestView::from_csr(&req);
        assert_eq!(view.other_sans.len(), 1);
        // kcm ignores the otherName when validating ...
        assert_eq!(
            validate(&SignerKind::KubeletServing, &view, &u(SERVING)),
            Ok(())
        );
        // ... and drops it from the certificate.
        let subject = issued_subject(&req);
        let kept = subject.alt_names.unwrap();
        assert_eq!(kept.0.len(), 2);
        assert!(matches!(kept.0[0], GeneralName::DnsName(_)));
        assert!(matches!(kept.0[1], GeneralName::IpAddress(_)));
        // A custom signer refuses it outright.
        let mut rules = etcd_client_rules();
        rules.allowed_san_types = [SanType::Dns, SanType::Ip].into();
        rules.common_name = CommonNameRule::Any;
        assert!(
            err(validate(&SignerKind::Custom(rules), &view, &u(CLIENT)))
                .starts_with("subjectAltName othername:")
        );
    }

    #[test]
    fn ttl_like_kcm() {
        let max = Duration::from_secs(8760 * 3600);
        assert_eq!(certificate_ttl(None, max), max);
        assert_eq!(certificate_ttl(Some(3600), max), Duration::from_secs(3600));
        assert_eq!(certificate_ttl(Some(600), max), Duration::from_secs(600));
        assert_eq!(certificate_ttl(Some(599), max), MIN_DURATION);
        assert_eq!(certificate_ttl(Some(0), max), MIN_DURATION);
        assert_eq!(certificate_ttl(Some(-5), max), MIN_DURATION);
        assert_eq!(certificate_ttl(Some(i32::MAX), max), max);
        let small = Duration::from_secs(86400);
        assert_eq!(certificate_ttl(Some(2 * 86400), small), small);
        assert_eq!(certificate_ttl(Some(86400), small), small);
    }

    #[test]
    fn usages_map_like_kcm() {
        let (ku, eku) = key_usages(&u(&[
            "client auth",
            "signing",
            "key encipherment",
            "server auth",
            "digital signature",
            "s/mime",
            "email protection",
            "any",
        ]))
        .unwrap();
        assert_eq!(
            ku,
            KeyUsageSet(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment)
        );
        // Go's ExtKeyUsage order: any, server auth, client auth, ..., email protection once.
        assert_eq!(
            eku,
            vec![
                ObjectIdentifier::new_unwrap("2.5.29.37.0"),
                oid::KP_SERVER_AUTH,
                oid::KP_CLIENT_AUTH,
                ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4"),
            ]
        );
        assert_eq!(
            key_usages(&u(&["client auth", "bogus", "weird"]))
                .unwrap_err()
                .0,
            "unrecognized usage values: [\"bogus\" \"weird\"]"
        );
        let (ku, eku) = key_usages(&u(&["client auth"])).unwrap();
        assert!(ku.0.is_empty());
        assert_eq!(eku, vec![oid::KP_CLIENT_AUTH]);
    }

    #[test]
    fn policy_backdates_long_lifetimes_only() {
        let p = issuance_policy(&u(CLIENT), Duration::from_secs(8 * 3600)).unwrap();
        assert!(p.shorten_by_backdate);
        assert_eq!(p.backdate, Duration::from_secs(300));
        let p = issuance_policy(&u(CLIENT), Duration::from_secs(8 * 3600 - 1)).unwrap();
        assert!(!p.shorten_by_backdate);
        let p = issuance_policy(&u(CLIENT), MIN_DURATION).unwrap();
        assert!(!p.shorten_by_backdate);
    }

    #[test]
    fn conditions_read_like_kcm() {
        let c = Conditions::read([("Approved", "True")]);
        assert!(c.actionable());
        // Any Approved/Denied condition counts, whatever its status.
        assert!(Conditions::read([("Approved", "False")]).approved);
        assert!(!Conditions::read([("Approved", "True"), ("Denied", "True")]).actionable());
        assert!(!Conditions::read([("Approved", "True"), ("Failed", "True")]).actionable());
        assert!(!Conditions::read([("Approved", "True"), ("Failed", "")]).actionable());
        assert!(Conditions::read([("Approved", "True"), ("Failed", "False")]).actionable());
        assert!(!Conditions::read([]).actionable());
    }

    /// A P-256 CA made by the file backend in a temporary directory.
    async fn test_ca(dir: &std::path::Path) -> signer_api::CertificateAuthority {
        use signer_api::KeyGenerator;
        let uri =
            signer_api::KeyUri::parse(&format!("file:{}", dir.join("ca.key").display())).unwrap();
        let signer = backend_file::FileKeyGenerator
            .generate(&uri, signer_api::KeyAlgorithm::EcdsaP256)
            .await
            .unwrap();
        let der = signer_api::CertificateAuthority::self_signed(
            signer_api::CaRole::Kubernetes,
            signer.as_ref(),
            Duration::from_secs(3650 * 86400),
            SystemTime::now(),
        )
        .await
        .unwrap();
        signer_api::CertificateAuthority::new(
            signer_api::CaRole::Kubernetes,
            &der,
            signer,
            uri.to_string(),
        )
        .unwrap()
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[tokio::test]
    async fn issued_certificate_follows_kcm_policy() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca(dir.path()).await;
        let audit = signer_api::audit::MemoryAuditSink::default();
        let req = csr(
            Some("system:node:n1"),
            &["system:nodes"],
            vec![dns("n1"), ip("10.0.0.1")],
            &rcgen::PKCS_RSA_SHA256,
        );
        let kind = SignerKind::KubeletServing;
        let view = RequestView::from_csr(&req);
        validate(&kind, &view, &u(SERVING)).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs(SystemTime::now()));
        for (expiration, span, shortened) in [
            (None, 8760 * 3600, true),
            (Some(3600), 3600, false),
            (Some(60), 600, false),
            (Some(8 * 3600), 8 * 3600, true),
        ] {
            let ttl = certificate_ttl(expiration, Duration::from_secs(8760 * 3600));
            let policy = issuance_policy(&u(SERVING), ttl).unwrap();
            let issued = ca
                .issue(
                    &issued_subject(&req),
                    &policy,
                    now,
                    &audit,
                    signer_api::audit::RequestContext {
                        profile: KUBELET_SERVING.into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let cert = Certificate::from_der(&issued.der).unwrap();
            let nb = signer_api::ca::not_before(&cert);
            let na = signer_api::ca::not_after(&cert);
            assert_eq!(secs(nb), secs(now) - 300);
            let want_na = secs(now) + span - if shortened { 300 } else { 0 };
            assert_eq!(secs(na), want_na, "{expiration:?}");
            let tbs = cert.tbs_certificate();
            let (_, bc) = tbs.get_extension::<BasicConstraints>().unwrap().unwrap();
            assert!(!bc.ca);
            let (_, ku) = tbs.get_extension::<KeyUsage>().unwrap().unwrap();
            assert_eq!(
                ku.0,
                KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
            );
            let (_, eku) = tbs.get_extension::<ExtendedKeyUsage>().unwrap().unwrap();
            assert_eq!(eku.0, vec![oid::KP_SERVER_AUTH]);
            let (_, san) = tbs.get_extension::<SubjectAltName>().unwrap().unwrap();
            assert_eq!(san.0.len(), 2);
            assert_eq!(tbs.subject(), req.subject());
            // 128-bit serial: 16 bytes, or 17 with the DER sign octet.
            assert!(matches!(tbs.serial_number().as_bytes().len(), 16 | 17));
        }
        assert_eq!(audit.records().len(), 4);
    }

    #[tokio::test]
    async fn not_after_never_passes_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca(dir.path()).await;
        let audit = signer_api::audit::MemoryAuditSink::default();
        let req = csr(Some("x"), &[], vec![], &rcgen::PKCS_ECDSA_P256_SHA256);
        let ttl = certificate_ttl(None, Duration::from_secs(20 * 365 * 86400));
        let policy = issuance_policy(&u(&["client auth"]), ttl).unwrap();
        let issued = ca
            .issue(
                &issued_subject(&req),
                &policy,
                SystemTime::now(),
                &audit,
                Default::default(),
            )
            .await
            .unwrap();
        assert_eq!(secs(issued.not_after), secs(ca.not_after()));
    }
}
