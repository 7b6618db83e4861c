//! `kubesign ca init`, `kubesign ca import` and `kubesign keys list`: the CA key lifecycle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use signer_api::audit::{AuditRecord, AuditSink, RequestContext};
use signer_api::ca::{parse_certificate, rfc3339};
use signer_api::keyuri::KeyUri;
use signer_api::{CaRole, CertificateAuthority, PublicKeyKind, Signer};

use crate::audit_log::JsonlAuditLog;
use crate::backends::Backends;
use crate::config::Config;
use crate::fsutil::{Replace, Transaction};
use crate::output::{self, Format};

/// One CA's outcome of `ca init`.
#[derive(Debug, Serialize)]
pub struct InitRow {
    /// The CA.
    pub ca: CaRole,
    /// The key URI (redacted).
    pub key: String,
    /// Key algorithm.
    pub algorithm: String,
    /// The certificate path.
    pub certificate: String,
    /// notAfter.
    pub expires: String,
    /// `created`, `adopted`, `certificate-created` or `exists`.
    pub status: &'static str,
}

fn kind(spki: &spki::SubjectPublicKeyInfoOwned) -> String {
    PublicKeyKind::from_spki(spki)
        .map(|k| k.to_string())
        .unwrap_or_else(|e| e.to_string())
}

/// Runs `kubesign ca init`. With `adopt`, a key that already exists in an HSM or KMS (made by a
/// key ceremony, say) is used instead of refused.
pub async fn init(config_path: PathBuf, adopt: bool, format: Format) -> Result<()> {
    let config = Config::load(&config_path)?;
    let backends = Backends::new(&config.backends);
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let mut audit: Option<JsonlAuditLog> = None;
    for ca in &config.cas {
        let role = ca.role;
        let key_ctx = || format!("cas.{role}.key {}", ca.key);
        let cert_exists = std::fs::symlink_metadata(&ca.certificate).is_ok();
        let existing = backends
            .open_existing(&ca.key)
            .await
            .with_context(key_ctx)?;
        let (signer, status): (Arc<dyn Signer>, &'static str) = match (existing, cert_exists) {
            (Some(signer), true) => {
                // Both present: prove they belong together, change nothing.
                let bytes = crate::fsutil::read_regular(&ca.certificate)?;
                let authority =
                    CertificateAuthority::new(role, &bytes, signer.clone(), ca.key.to_string())
                        .with_context(|| format!("{}", ca.certificate.display()))?;
                rows.push(InitRow {
                    ca: role,
                    key: ca.key.to_string(),
                    algorithm: kind(signer.public_key()),
                    certificate: ca.certificate.display().to_string(),
                    expires: rfc3339(authority.not_after()),
                    status: "exists",
                });
                continue;
            }
            (None, true) => bail!(
                "cas.{role}: the certificate {} exists but the key {} does not; refusing to create a new key that \
                 would not match it (use `kubesign ca import` to move the existing key, or remove the certificate)",
                ca.certificate.display(),
                ca.key
            ),
            (Some(signer), false) if matches!(ca.key, KeyUri::File(_)) => {
                (signer, "certificate-created")
            }
            (Some(_), false) if adopt => {
                let signer = backends
                    .adopt(&ca.key, ca.key_algorithm)
                    .await
                    .with_context(key_ctx)?;
                tracing::info!(ca = %role, key = %ca.key, "existing key adopted");
                (signer, "adopted")
            }
            (Some(_), false) => bail!(
                "cas.{role}: a key already exists at {} but the certificate {} does not; refusing to use a key \
                 without being told to: pass --adopt to make it this CA's key (also when an earlier \
                 `ca init` created the key and stopped before writing the certificate)",
                ca.key,
                ca.certificate.display()
            ),
            (None, false) => {
                let signer = backends
                    .generate(&ca.key, ca.key_algorithm)
                    .await
                    .with_context(|| {
                        format!(
                            "cas.{role}: creating a {} key at {}",
                            ca.key_algorithm, ca.key
                        )
                    })?;
                tracing::info!(ca = %role, key = %ca.key, algorithm = %ca.key_algorithm, "CA key created");
                (signer, "created")
            }
        };
        if audit.is_none() {
            audit = Some(
                JsonlAuditLog::open(&config.audit_path).context("no CA certificate was created")?,
            );
        }
        let der = CertificateAuthority::self_signed(role, signer.as_ref(), config.ca_validity, now)
            .await
            .with_context(|| {
                if status == "created" && !matches!(ca.key, KeyUri::File(_)) {
                    format!(
                        "cas.{role}: the key {} was created, but its CA certificate was not; fix the cause, \
                         then run `kubesign ca init --adopt` to use that key (or delete it in the backend)",
                        ca.key
                    )
                } else {
                    format!("cas.{role}: creating the CA certificate")
                }
            })?;
        let cert = parse_certificate(&der).map_err(anyhow::Error::msg)?;
        let pem = signer_api::pem::encode("CERTIFICATE", &der);
        if let Some(log) = &audit {
            let context = RequestContext {
                profile: role.kubeadm_name().to_owned(),
                source: "kubesign ca init".into(),
                ..Default::default()
            };
            let mut record =
                AuditRecord::for_certificate(&cert, &der, role, &ca.key.to_string(), now, context);
            record.key_detail = Some(signer.describe());
            log.record(&record).await?;
        }
        create_parent(&ca.certificate)?;
        let mut txn = Transaction::new();
        txn.stage(&ca.certificate, pem.as_bytes(), 0o644, Replace::Never)?;
        txn.commit()?;
        rows.push(InitRow {
            ca: role,
            key: ca.key.to_string(),
            algorithm: kind(signer.public_key()),
            certificate: ca.certificate.display().to_string(),
            expires: rfc3339(signer_api::ca::not_after(&cert)),
            status,
        });
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.ca.to_string(),
                r.key.clone(),
                r.algorithm.clone(),
                r.certificate.clone(),
                r.expires.clone(),
                r.status.to_owned(),
            ]
        })
        .collect();
    output::print(
        format,
        &["CA", "KEY", "ALGORITHM", "CERTIFICATE", "EXPIRES", "STATUS"],
        &table,
        &rows,
    )
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    }
    Ok(())
}

/// One CA's outcome of `ca import`.
#[derive(Debug, Serialize)]
pub struct ImportRow {
    /// The CA.
    pub ca: CaRole,
    /// The key file imported.
    pub from: String,
    /// Where it went (redacted URI).
    pub key: String,
    /// Key algorithm.
    pub algorithm: String,
    /// `imported`, `imported, source removed`, or why nothing was done.
    pub status: String,
}

/// Proves that `signer` signs for `cert`'s public key with a one-off challenge.
async fn prove(signer: &dyn Signer, cert: &x509_cert::Certificate, role: CaRole) -> Result<()> {
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    let challenge = [
        b"kubesign ca import proof of possession ".as_slice(),
        role.config_name().as_bytes(),
        &nonce,
    ]
    .concat();
    let signature = signer
        .sign(&challenge)
        .await
        .with_context(|| format!("{role} CA: test signature with the imported key"))?;
    signer_api::verify::verify_signature(
        cert.tbs_certificate().subject_public_key_info(),
        &signer.algorithm().algorithm_identifier(),
        &challenge,
        &signature,
    )
    .map_err(|e| anyhow!("{role} CA: the imported key's test signature does not verify with the CA certificate ({e})"))
}

/// Overwrites a key file with zeros, syncs it, and removes it.
fn destroy_key_file(path: &Path) -> Result<()> {
    use std::io::Write;
    let len = std::fs::metadata(path)?.len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot open to overwrite", path.display()))?;
    f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])?;
    f.sync_all()?;
    drop(f);
    std::fs::remove_file(path).with_context(|| format!("{}: cannot remove", path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs `kubesign ca import`: moves the CA keys of a kubeadm pki directory into the configured
/// backends, proves each imported key signs for its CA certificate, copies the CA certificates
/// to their configured paths if missing, and with `remove_source` overwrites and removes the key
/// files, leaving the directory in kubeadm's external CA mode.
pub async fn import(
    config_path: PathBuf,
    from: PathBuf,
    remove_source: bool,
    format: Format,
) -> Result<()> {
    let config = Config::load(&config_path)?;
    let audit = JsonlAuditLog::open(&config.audit_path).context("nothing was imported")?;
    let backends = Backends::new(&config.backends);
    if !from.is_dir() {
        bail!(
            "{}: is not a directory (expected a kubeadm pki directory with ca.key, etcd/ca.key, front-proxy-ca.key)",
            from.display()
        );
    }
    // Check everything before importing anything.
    struct Plan<'a> {
        ca: &'a crate::config::CaConfig,
        key_file: PathBuf,
        cert_bytes: Vec<u8>,
        cert: x509_cert::Certificate,
        source: Arc<backend_file::FileSigner>,
    }
    let mut plans = Vec::new();
    let mut rows = Vec::new();
    for ca in &config.cas {
        let role = ca.role;
        let key_file = from.join(role.key_file());
        let cert_file = from.join(role.cert_file());
        if matches!(ca.key, KeyUri::File(_)) {
            rows.push(ImportRow {
                ca: role,
                from: key_file.display().to_string(),
                key: ca.key.to_string(),
                algorithm: String::new(),
                status: "skipped: the configured key is a file".into(),
            });
            continue;
        }
        if !key_file.exists() {
            rows.push(ImportRow {
                ca: role,
                from: key_file.display().to_string(),
                key: ca.key.to_string(),
                algorithm: String::new(),
                status: "skipped: no key file".into(),
            });
            continue;
        }
        crate::backends::check_compiled_in(&ca.key).with_context(|| format!("cas.{role}.key"))?;
        let cert_bytes = crate::fsutil::read_regular(&cert_file)
            .context("the CA certificate must be next to its key")?;
        let cert =
            parse_certificate(&cert_bytes).map_err(|e| anyhow!("{}: {e}", cert_file.display()))?;
        let source = Arc::new(backend_file::FileSigner::load(&key_file)?);
        // The source key must be the CA certificate's key.
        CertificateAuthority::new(
            role,
            &cert_bytes,
            source.clone(),
            format!("file:{}", key_file.display()),
        )
        .with_context(|| format!("{}", cert_file.display()))?;
        if ca.certificate.exists() {
            let configured = crate::fsutil::read_regular(&ca.certificate)?;
            if configured.trim_ascii() != cert_bytes.trim_ascii() {
                bail!(
                    "cas.{role}.certificate {} differs from {}; refusing to import a key for another CA",
                    ca.certificate.display(),
                    cert_file.display()
                );
            }
        }
        if backends
            .open_existing(&ca.key)
            .await
            .with_context(|| format!("cas.{role}.key {}", ca.key))?
            .is_some()
        {
            bail!(
                "cas.{role}: a key already exists at {}; refusing to import over it",
                ca.key
            );
        }
        plans.push(Plan {
            ca,
            key_file,
            cert_bytes,
            cert,
            source,
        });
    }
    for p in plans {
        let role = p.ca.role;
        let material = p.source.to_private_key_material()?;
        let algorithm = material.algorithm;
        let signer = backends
            .import(&p.ca.key, material)
            .await
            .with_context(|| {
                format!(
                    "cas.{role}: importing {} into {}",
                    p.key_file.display(),
                    p.ca.key
                )
            })?;
        CertificateAuthority::new(role, &p.cert_bytes, signer.clone(), p.ca.key.to_string())
            .with_context(|| format!("cas.{role}: the imported key"))?;
        prove(signer.as_ref(), &p.cert, role).await?;
        let context = RequestContext {
            profile: role.kubeadm_name().to_owned(),
            source: format!("kubesign ca import {}", p.key_file.display()),
            ..Default::default()
        };
        let cert_der = der::Encode::to_der(&p.cert)?;
        let mut record = AuditRecord::for_certificate(
            &p.cert,
            &cert_der,
            role,
            &p.ca.key.to_string(),
            SystemTime::now(),
            context,
        );
        record.event = "key-imported";
        record.key_detail = Some(signer.describe());
        audit.record(&record).await?;
        if !p.ca.certificate.exists() {
            create_parent(&p.ca.certificate)?;
            let mut txn = Transaction::new();
            txn.stage(&p.ca.certificate, &p.cert_bytes, 0o644, Replace::Never)?;
            txn.commit()?;
        }
        let mut status = "imported".to_owned();
        if remove_source {
            destroy_key_file(&p.key_file)?;
            status.push_str(", source removed");
        }
        tracing::info!(ca = %role, key = %p.ca.key, from = %p.key_file.display(), "CA key imported");
        rows.push(ImportRow {
            ca: role,
            from: p.key_file.display().to_string(),
            key: p.ca.key.to_string(),
            algorithm: algorithm.to_string(),
            status,
        });
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.ca.to_string(),
                r.from.clone(),
                r.key.clone(),
                r.algorithm.clone(),
                r.status.clone(),
            ]
        })
        .collect();
    output::print(
        format,
        &["CA", "FROM", "KEY", "ALGORITHM", "STATUS"],
        &table,
        &rows,
    )?;
    if !remove_source && rows.iter().any(|r| r.status == "imported") && format == Format::Table {
        eprintln!(
            "the source key files are still on disk: remove them (or rerun with --remove-source) to enter kubeadm's external CA mode"
        );
    }
    Ok(())
}

/// One key in `keys list`.
#[derive(Debug, Serialize)]
pub struct KeyRow {
    /// The CA.
    pub ca: CaRole,
    /// The key URI (redacted).
    pub key: String,
    /// The backend facts.
    #[serde(flatten)]
    pub facts: crate::backends::KeyFacts,
    /// Key algorithm.
    pub algorithm: String,
    /// Whether the key matches the configured CA certificate: `yes`, `no`, or why unknown.
    pub matches_certificate: String,
    /// An error loading the key, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs `kubesign keys list`. Fails (exit 1) when a key cannot be loaded or does not match its
/// certificate, after printing every row.
pub async fn list(config_path: PathBuf, format: Format) -> Result<()> {
    let config = Config::load(&config_path)?;
    let backends = Backends::new(&config.backends);
    let mut rows = Vec::new();
    let mut bad = 0;
    for ca in &config.cas {
        let mut row = KeyRow {
            ca: ca.role,
            key: ca.key.to_string(),
            facts: Default::default(),
            algorithm: String::new(),
            matches_certificate: String::new(),
            error: None,
        };
        match backends.open_with_facts(&ca.key).await {
            Ok((signer, facts)) => {
                row.algorithm = kind(signer.public_key());
                row.facts = facts;
                row.matches_certificate = match std::fs::read(&ca.certificate) {
                    Ok(bytes) => match parse_certificate(&bytes) {
                        Ok(cert)
                            if cert.tbs_certificate().subject_public_key_info()
                                == signer.public_key() =>
                        {
                            "yes".into()
                        }
                        Ok(_) => {
                            bad += 1;
                            "no".into()
                        }
                        Err(e) => format!("unknown: {e}"),
                    },
                    Err(e) => format!("unknown: {}: {e}", ca.certificate.display()),
                };
            }
            Err(e) => {
                bad += 1;
                row.error = Some(e.to_string());
                row.matches_certificate = "unknown".into();
            }
        }
        rows.push(row);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.ca.to_string(),
                if r.facts.backend.is_empty() {
                    r.key.clone()
                } else {
                    r.facts.backend.to_owned()
                },
                if r.facts.location.is_empty() {
                    r.error.clone().unwrap_or_default()
                } else {
                    r.facts.location.clone()
                },
                r.algorithm.clone(),
                r.facts.attributes.join(","),
                r.matches_certificate.clone(),
            ]
        })
        .collect();
    output::print(
        format,
        &[
            "CA",
            "BACKEND",
            "KEY",
            "ALGORITHM",
            "ATTRIBUTES",
            "MATCHES CERTIFICATE",
        ],
        &table,
        &rows,
    )?;
    if bad > 0 {
        let details: Vec<String> = rows
            .iter()
            .filter_map(|r| match (&r.error, r.matches_certificate.as_str()) {
                (Some(e), _) => Some(format!("cas.{}.key {}: {e}", r.ca, r.key)),
                (None, "no") => Some(format!(
                    "cas.{}.key {}: does not match the CA certificate",
                    r.ca, r.key
                )),
                _ => None,
            })
            .collect();
        bail!(
            "{}\n{bad} key(s) cannot be used as configured",
            details.join("\n")
        );
    }
    Ok(())
}
