//! `kubesign check`: checks every certificate of a kubeadm tree against kubeadm's table and
//! reports expiry like `kubeadm certs check-expiration`. Exits 3 when anything is wrong.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Result;
use serde::Serialize;
use signer_api::algorithm::oid;
use signer_api::ca::{not_after, not_before, parse_certificate};
use signer_api::profile::CertProfile;
use signer_api::{CaRole, verify};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};

use crate::config::Config;
use crate::kubeadm_dir::{self, Target};
use crate::kubeconfig::Kubeconfig;
use crate::output::{self, Format};

/// Options of `kubesign check`.
pub struct CheckOptions {
    /// kubeadm's certificate directory.
    pub cert_dir: PathBuf,
    /// kubeadm's kubeconfig directory.
    pub kubeconfig_dir: Option<PathBuf>,
    /// The kubesign configuration, to compare CA certificates with.
    pub config: Option<PathBuf>,
    /// Output format.
    pub output: Format,
}

/// The error `check` returns when it found problems (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) found")]
pub struct ProblemsFound(pub usize);

/// One certificate's result.
#[derive(Debug, Serialize)]
pub struct CertResult {
    /// kubeadm's name.
    pub name: String,
    /// The file.
    pub file: String,
    /// The CA.
    pub ca: CaRole,
    /// notAfter (RFC 3339), when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Seconds until expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_seconds: Option<i64>,
    /// Whether the CA's key is absent from the certificate directory (kubeadm's external CA mode).
    pub externally_managed: bool,
    /// `ok`, `missing` or `invalid`.
    pub status: &'static str,
    /// What is wrong.
    pub problems: Vec<String>,
}

/// One CA's result.
#[derive(Debug, Serialize)]
pub struct CaResult {
    /// The CA.
    pub ca: CaRole,
    /// The file.
    pub file: String,
    /// notAfter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Seconds until expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_seconds: Option<i64>,
    /// Whether the CA key is absent from the certificate directory.
    pub externally_managed: bool,
    /// `ok`, `missing` or `invalid`.
    pub status: &'static str,
    /// What is wrong.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    certificates: Vec<CertResult>,
    certificate_authorities: Vec<CaResult>,
}

struct CaInfo {
    cert: Option<Certificate>,
    bytes: Vec<u8>,
}

fn residual(t: SystemTime, now: SystemTime) -> i64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn check_time(cert: &Certificate, now: SystemTime, problems: &mut Vec<String>) {
    if not_after(cert) <= now {
        problems.push("expired".into());
    }
    if not_before(cert) > now {
        problems.push("not yet valid".into());
    }
}

/// The checks on one leaf certificate.
fn check_leaf(
    profile: &CertProfile,
    cert: &Certificate,
    ca: Option<&Certificate>,
    now: SystemTime,
) -> Vec<String> {
    let mut p = Vec::new();
    let tbs = cert.tbs_certificate();
    match ca {
        Some(ca) => {
            if tbs.issuer() != ca.tbs_certificate().subject() {
                p.push(format!(
                    "issuer {} is not the {} CA ({})",
                    tbs.issuer(),
                    profile.ca,
                    ca.tbs_certificate().subject()
                ));
            } else if verify::verify_certificate_signature(
                cert,
                ca.tbs_certificate().subject_public_key_info(),
            )
            .is_err()
            {
                p.push(format!(
                    "signature does not verify with the {} CA certificate",
                    profile.ca
                ));
            }
        }
        None => p.push(format!(
            "cannot verify: the {} CA certificate is missing",
            profile.ca
        )),
    }
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {
            p.push("is a CA certificate (CA:TRUE); kubeadm leaves are CA:FALSE".into())
        }
        Ok(_) => {}
        Err(e) => p.push(format!("basicConstraints: {e}")),
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) => {
            let want = KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment;
            if ku.0 != want {
                p.push(format!(
                    "key usage {:?}, kubeadm uses digital signature + key encipherment",
                    signer_api::policy::KeyUsageSet(ku.0)
                ));
            }
        }
        Ok(None) => p.push("no key usage extension".into()),
        Err(e) => p.push(format!("keyUsage: {e}")),
    }
    match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, eku))) => {
            let mut have = eku.0.clone();
            have.sort();
            let mut want = profile.extended_key_usage();
            want.sort();
            if have != want {
                let names: Vec<String> = eku
                    .0
                    .iter()
                    .map(signer_api::policy::ext_key_usage_name)
                    .collect();
                p.push(format!(
                    "extended key usage is {}, kubeadm's {} profile has {}",
                    names.join(","),
                    profile.name,
                    profile.usage_names()
                ));
            }
        }
        Ok(None) => p.push(format!(
            "no extended key usage, kubeadm's profile has {}",
            profile.usage_names()
        )),
        Err(e) => p.push(format!("extendedKeyUsage: {e}")),
    }
    let san_count = match tbs.get_extension::<SubjectAltName>() {
        Ok(Some((_, san))) => san.0.len(),
        _ => 0,
    };
    if let Err(e) = profile.check_identity(
        signer_api::name::common_name(tbs.subject()).as_deref(),
        &signer_api::name::organizations(tbs.subject()),
        san_count,
    ) {
        p.push(
            e.trim_start_matches(&format!("{}: ", profile.name))
                .to_owned(),
        );
    }
    if tbs.signature().oid == oid::SHA1_WITH_RSA {
        p.push("signed with SHA-1".into());
    }
    check_time(cert, now, &mut p);
    p
}

fn key_matches(cert: &Certificate, key_path: &Path, key_pem: &[u8]) -> Option<String> {
    match backend_file::FileSigner::from_pem(key_path, key_pem) {
        Ok(k)
            if signer_api::Signer::public_key(&k)
                == cert.tbs_certificate().subject_public_key_info() =>
        {
            None
        }
        Ok(_) => Some(format!(
            "does not match its private key {}",
            key_path.display()
        )),
        Err(e) => Some(format!("private key: {e}")),
    }
}

/// Runs `kubesign check`.
pub fn run(opts: CheckOptions) -> Result<()> {
    let now = SystemTime::now();
    if !opts.cert_dir.is_dir() {
        anyhow::bail!(
            "{}: is not a directory (expected kubeadm's certificate directory)",
            opts.cert_dir.display()
        );
    }
    if let Some(k) = &opts.kubeconfig_dir
        && !k.is_dir()
    {
        anyhow::bail!(
            "{}: is not a directory (expected kubeadm's kubeconfig directory)",
            k.display()
        );
    }
    let config = opts.config.as_deref().map(Config::load).transpose()?;
    let mut report = Report {
        certificates: Vec::new(),
        certificate_authorities: Vec::new(),
    };
    let mut cas: Vec<(CaRole, CaInfo)> = Vec::new();
    for role in CaRole::ALL {
        let path = opts.cert_dir.join(role.cert_file());
        let external = !opts.cert_dir.join(role.key_file()).exists();
        let mut problems = Vec::new();
        let (info, status) = if !path.exists() {
            (
                CaInfo {
                    cert: None,
                    bytes: Vec::new(),
                },
                "missing",
            )
        } else {
            match crate::fsutil::read_regular(&path)
                .map_err(|e| format!("{e:#}"))
                .and_then(|b| parse_certificate(&b).map(|c| (c, b)))
            {
                Ok((cert, bytes)) => {
                    match cert.tbs_certificate().get_extension::<BasicConstraints>() {
                        Ok(Some((_, bc))) if bc.ca => {}
                        _ => problems.push("not a CA certificate (CA:TRUE missing)".into()),
                    }
                    if verify::verify_certificate_signature(
                        &cert,
                        cert.tbs_certificate().subject_public_key_info(),
                    )
                    .is_err()
                        && cert.tbs_certificate().issuer() == cert.tbs_certificate().subject()
                    {
                        problems.push("self-signature does not verify".into());
                    }
                    check_time(&cert, now, &mut problems);
                    if let Some(cfg) = &config
                        && let Some(ca) = cfg.ca(role)
                    {
                        match std::fs::read(&ca.certificate) {
                            Ok(want) if want.trim_ascii() == bytes.trim_ascii() => {}
                            Ok(_) => problems.push(format!(
                                "differs from the configured CA certificate {}",
                                ca.certificate.display()
                            )),
                            Err(e) => problems.push(format!(
                                "configured CA certificate {}: {e}",
                                ca.certificate.display()
                            )),
                        }
                    }
                    (
                        CaInfo {
                            cert: Some(cert),
                            bytes,
                        },
                        if problems.is_empty() { "ok" } else { "invalid" },
                    )
                }
                Err(e) => {
                    problems.push(e);
                    (
                        CaInfo {
                            cert: None,
                            bytes: Vec::new(),
                        },
                        "invalid",
                    )
                }
            }
        };
        report.certificate_authorities.push(CaResult {
            ca: role,
            file: path.display().to_string(),
            expires: info
                .cert
                .as_ref()
                .map(|c| signer_api::ca::rfc3339(not_after(c))),
            residual_seconds: info.cert.as_ref().map(|c| residual(not_after(c), now)),
            externally_managed: external,
            status,
            problems,
        });
        cas.push((role, info));
    }
    let ca_of = |role: CaRole| cas.iter().find(|(r, _)| *r == role).map(|(_, i)| i);

    for item in kubeadm_dir::all_items(&opts.cert_dir, opts.kubeconfig_dir.as_deref()) {
        let profile = item.profile;
        let ca = ca_of(profile.ca);
        let mut problems = Vec::new();
        let loaded: Option<Certificate> = match &item.target {
            Target::CertFile { crt, key } => {
                if !crt.exists() {
                    None
                } else {
                    match crate::fsutil::read_regular(crt)
                        .map_err(|e| format!("{e:#}"))
                        .and_then(|b| parse_certificate(&b))
                    {
                        Ok(cert) => {
                            match crate::fsutil::read_regular(key) {
                                Ok(pem) => problems.extend(key_matches(
                                    &cert,
                                    key,
                                    &zeroize::Zeroizing::new(pem),
                                )),
                                Err(e) => problems.push(format!("{e:#}")),
                            }
                            Some(cert)
                        }
                        Err(e) => {
                            problems.push(e);
                            None
                        }
                    }
                }
            }
            Target::Kubeconfig { conf } => {
                if !conf.exists() {
                    None
                } else {
                    match Kubeconfig::load(conf) {
                        Ok(kc) => {
                            match (kc.certificate_authority_pem(), ca) {
                                (Ok(Some(data)), Some(ca))
                                    if ca.cert.is_some()
                                        && data.trim_ascii() != ca.bytes.trim_ascii() =>
                                {
                                    problems.push(format!(
                                        "certificate-authority-data differs from {}",
                                        profile.ca.cert_file()
                                    ));
                                }
                                (Ok(None), _) => {
                                    problems.push("certificate-authority-data is empty".into())
                                }
                                (Err(e), _) => problems.push(format!("{e:#}")),
                                _ => {}
                            }
                            match kc.client_certificate_pem() {
                                Ok(Some(pem)) => match parse_certificate(&pem) {
                                    Ok(cert) => {
                                        match kc.client_key_pem() {
                                            Ok(key) => {
                                                problems.extend(key_matches(&cert, conf, &key))
                                            }
                                            Err(e) => problems.push(format!("{e:#}")),
                                        }
                                        Some(cert)
                                    }
                                    Err(e) => {
                                        problems.push(format!("client-certificate-data: {e}"));
                                        None
                                    }
                                },
                                Ok(None) => {
                                    problems.push(
                                        "client-certificate-data is empty (not signed yet?)".into(),
                                    );
                                    None
                                }
                                Err(e) => {
                                    problems.push(format!("{e:#}"));
                                    None
                                }
                            }
                        }
                        Err(e) => {
                            problems.push(format!("{e:#}"));
                            None
                        }
                    }
                }
            }
        };
        let exists = item.target.display_path().exists();
        if let Some(cert) = &loaded {
            problems.extend(check_leaf(
                profile,
                cert,
                ca.and_then(|c| c.cert.as_ref()),
                now,
            ));
        }
        let status = if !exists {
            "missing"
        } else if problems.is_empty() {
            "ok"
        } else {
            "invalid"
        };
        report.certificates.push(CertResult {
            name: profile.name.to_owned(),
            file: item.target.display_path().display().to_string(),
            ca: profile.ca,
            expires: loaded
                .as_ref()
                .map(|c| signer_api::ca::rfc3339(not_after(c))),
            residual_seconds: loaded.as_ref().map(|c| residual(not_after(c), now)),
            externally_managed: !opts.cert_dir.join(profile.ca.key_file()).exists(),
            status,
            problems,
        });
    }

    let problems: usize = report
        .certificates
        .iter()
        .map(|c| c.problems.len())
        .sum::<usize>()
        + report
            .certificate_authorities
            .iter()
            .map(|c| c.problems.len())
            .sum::<usize>();
    match opts.output {
        Format::Json => output::print(Format::Json, &[], &[], &report)?,
        Format::Table => {
            let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
            let rows: Vec<Vec<String>> = report
                .certificates
                .iter()
                .map(|c| {
                    vec![
                        if c.status == "missing" {
                            format!("!MISSING! {}", c.name)
                        } else {
                            c.name.clone()
                        },
                        c.expires.as_deref().map(kubeadm_time).unwrap_or_default(),
                        c.residual_seconds
                            .map(crate::duration::short_human)
                            .unwrap_or_default(),
                        c.ca.kubeadm_name().to_owned(),
                        yes_no(c.externally_managed),
                        if c.problems.is_empty() {
                            c.status.to_owned()
                        } else {
                            c.problems.join("; ")
                        },
                    ]
                })
                .collect();
            output::print(
                Format::Table,
                &[
                    "CERTIFICATE",
                    "EXPIRES",
                    "RESIDUAL TIME",
                    "CERTIFICATE AUTHORITY",
                    "EXTERNALLY MANAGED",
                    "STATUS",
                ],
                &rows,
                &(),
            )?;
            output::write_stdout(b"\n")?;
            let rows: Vec<Vec<String>> = report
                .certificate_authorities
                .iter()
                .map(|c| {
                    vec![
                        if c.status == "missing" {
                            format!("!MISSING! {}", c.ca.kubeadm_name())
                        } else {
                            c.ca.kubeadm_name().to_owned()
                        },
                        c.expires.as_deref().map(kubeadm_time).unwrap_or_default(),
                        c.residual_seconds
                            .map(crate::duration::short_human)
                            .unwrap_or_default(),
                        yes_no(c.externally_managed),
                        if c.problems.is_empty() {
                            c.status.to_owned()
                        } else {
                            c.problems.join("; ")
                        },
                    ]
                })
                .collect();
            output::print(
                Format::Table,
                &[
                    "CERTIFICATE AUTHORITY",
                    "EXPIRES",
                    "RESIDUAL TIME",
                    "EXTERNALLY MANAGED",
                    "STATUS",
                ],
                &rows,
                &(),
            )?;
        }
    }
    if problems > 0 {
        return Err(ProblemsFound(problems).into());
    }
    Ok(())
}

/// kubeadm's expiry format: `Jan 02, 2006 15:04 UTC`.
fn kubeadm_time(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => t
            .format(time::macros::format_description!(
                "[month repr:short] [day], [year] [hour]:[minute] UTC"
            ))
            .unwrap_or_else(|_| rfc3339.to_owned()),
        Err(_) => rfc3339.to_owned(),
    }
}
