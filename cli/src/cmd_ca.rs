//! `kubesign ca init`: create each missing CA key in its backend and the self-signed CA
//! certificate kubeadm would have written.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use signer_api::audit::{AuditRecord, AuditSink, RequestContext};
use signer_api::ca::{parse_certificate, rfc3339};
use signer_api::{CaRole, CertificateAuthority, PublicKeyKind};

use crate::audit_log::JsonlAuditLog;
use crate::backends;
use crate::config::Config;
use crate::fsutil::{Replace, Transaction};
use crate::output::{self, Format};

/// One CA's outcome.
#[derive(Debug, Serialize)]
pub struct Row {
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
    /// `created`, `certificate-created` or `exists`.
    pub status: &'static str,
}

/// Runs `kubesign ca init`.
pub async fn init(config_path: PathBuf, format: Format) -> Result<()> {
    let config = Config::load(&config_path)?;
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let mut audit: Option<JsonlAuditLog> = None;
    for ca in &config.cas {
        let role = ca.role;
        let cert_exists = std::fs::symlink_metadata(&ca.certificate).is_ok();
        let key_exists = backends::key_exists(&ca.key)
            .await
            .with_context(|| format!("cas.{role}.key {}", ca.key))?;
        let (signer, status) = match (key_exists, cert_exists) {
            (true, true) => {
                // Both present: prove they belong together, change nothing.
                let bytes = crate::fsutil::read_regular(&ca.certificate)?;
                let signer = backends::open_signer(&ca.key)
                    .await
                    .with_context(|| format!("cas.{role}.key {}", ca.key))?;
                let authority =
                    CertificateAuthority::new(role, &bytes, signer.clone(), ca.key.to_string())
                        .with_context(|| format!("{}", ca.certificate.display()))?;
                rows.push(Row {
                    ca: role,
                    key: ca.key.to_string(),
                    algorithm: kind(signer.public_key()),
                    certificate: ca.certificate.display().to_string(),
                    expires: rfc3339(authority.not_after()),
                    status: "exists",
                });
                continue;
            }
            (false, true) => bail!(
                "cas.{role}: the certificate {} exists but the key {} does not; refusing to create a new key that \
                 would not match it (import the existing key, or remove the certificate)",
                ca.certificate.display(),
                ca.key
            ),
            (true, false) => {
                let signer = backends::open_signer(&ca.key)
                    .await
                    .with_context(|| format!("cas.{role}.key {}", ca.key))?;
                (signer, "certificate-created")
            }
            (false, false) => {
                let generator =
                    backends::key_generator(&ca.key).with_context(|| format!("cas.{role}.key"))?;
                let signer = generator
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
            .with_context(|| format!("cas.{role}: creating the CA certificate"))?;
        let cert = parse_certificate(&der).map_err(anyhow::Error::msg)?;
        let pem = signer_api::pem::encode("CERTIFICATE", &der);
        if let Some(log) = &audit {
            let context = RequestContext {
                profile: role.kubeadm_name().to_owned(),
                source: "kubesign ca init".into(),
                ..Default::default()
            };
            log.record(&AuditRecord::for_certificate(
                &cert,
                &der,
                role,
                &ca.key.to_string(),
                now,
                context,
            ))
            .await?;
        }
        if let Some(dir) = ca
            .certificate
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create the directory", dir.display()))?;
        }
        let mut txn = Transaction::new();
        txn.stage(&ca.certificate, pem.as_bytes(), 0o644, Replace::Never)?;
        txn.commit()?;
        rows.push(Row {
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

fn kind(spki: &spki::SubjectPublicKeyInfoOwned) -> String {
    PublicKeyKind::from_spki(spki)
        .map(|k| k.to_string())
        .unwrap_or_else(|e| e.to_string())
}
