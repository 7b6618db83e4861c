//! Helpers the benchmarks share: the median and range of per-round ratios, and a kubeadm-shaped
//! API server CSR to issue from.

use signer_api::KeyAlgorithm;

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// `median [min-max]` with two decimals, for ratio columns.
pub fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} [{lo:.2}-{hi:.2}]", median(v))
}

/// A CSR like kubeadm's `apiserver.csr` (CN kube-apiserver, its DNS and IP SANs) with a fresh
/// key of `algorithm` (ECDSA P-256, or RSA-2048 for any RSA algorithm).
pub fn apiserver_csr_pem(algorithm: KeyAlgorithm) -> String {
    let alg = match algorithm {
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        _ => &rcgen::PKCS_RSA_SHA256,
    };
    let key = rcgen::KeyPair::generate_for(alg).expect("leaf key");
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "kube-apiserver");
    params.distinguished_name = dn;
    params.subject_alt_names = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "node-1",
    ]
    .iter()
    .map(|d| rcgen::SanType::DnsName((*d).try_into().expect("dns")))
    .chain(
        ["10.96.0.1", "198.51.100.10"]
            .iter()
            .map(|ip| rcgen::SanType::IpAddress(ip.parse().expect("ip"))),
    )
    .collect();
    params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM")
}
