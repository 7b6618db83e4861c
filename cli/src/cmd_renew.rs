//! `kubesign renew`: re-issue existing leaf and kubeconfig client certificates with the same key,
//! subject and SANs, a new serial and a new validity: the job `kubeadm certs renew` refuses to do
//! in external CA mode.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use signer_api::audit::RequestContext;
use signer_api::ca::{CertificateSubject, parse_certificate, sha256_hex};
use signer_api::{CaRole, verify};

use crate::audit_log::JsonlAuditLog;
use crate::cas::LoadedCas;
use crate::config::Config;
use crate::fsutil::{Replace, Transaction};
use crate::kubeadm_dir::{self, Item, Target};
use crate::kubeconfig::Kubeconfig;
use crate::output::{self, Format};

/// Options of `kubesign renew`.
pub struct RenewOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// kubeadm's certificate directory.
    pub cert_dir: PathBuf,
    /// kubeadm's kubeconfig directory.
    pub kubeconfig_dir: Option<PathBuf>,
    /// Only these certificates (kubeadm names); all present ones when empty.
    pub names: Vec<String>,
    /// Output format.
    pub output: Format,
}

/// One renewed certificate.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The file.
    pub file: String,
    /// kubeadm's name.
    pub name: String,
    /// The CA.
    pub ca: CaRole,
    /// Subject.
    pub subject: String,
    /// New notAfter.
    pub expires: String,
    /// New serial.
    pub serial: String,
}

struct Existing {
    item: Item,
    cert: x509_cert::Certificate,
    /// The certificate's DER, for the audit record's source hash.
    der: Vec<u8>,
    kubeconfig: Option<Kubeconfig>,
}

fn load_existing(item: Item) -> Result<Option<Existing>> {
    match &item.target {
        Target::CertFile { crt, key } => {
            if !crt.exists() {
                return Ok(None);
            }
            let bytes = crate::fsutil::read_regular(crt)?;
            let cert = parse_certificate(&bytes).map_err(|e| anyhow!("{}: {e}", crt.display()))?;
            if key.exists() {
                let key_pem = zeroize::Zeroizing::new(crate::fsutil::read_regular(key)?);
                let k = backend_file::FileSigner::from_pem(key, &key_pem)?;
                if signer_api::Signer::public_key(&k)
                    != cert.tbs_certificate().subject_public_key_info()
                {
                    bail!(
                        "{}: does not match its key {}; refusing to renew a certificate for another key",
                        crt.display(),
                        key.display()
                    );
                }
            }
            Ok(Some(Existing {
                der: der::Encode::to_der(&cert)?,
                cert,
                item,
                kubeconfig: None,
            }))
        }
        Target::Kubeconfig { conf } => {
            if !conf.exists() {
                return Ok(None);
            }
            let kc = Kubeconfig::load(conf)?;
            let Some(pem) = kc.client_certificate_pem()? else {
                bail!(
                    "{}: has no client certificate to renew (sign its CSR with `kubesign sign`)",
                    conf.display()
                );
            };
            let cert = parse_certificate(&pem)
                .map_err(|e| anyhow!("{}: client-certificate-data: {e}", conf.display()))?;
            let key = backend_file::FileSigner::from_pem(conf, &kc.client_key_pem()?)?;
            if signer_api::Signer::public_key(&key)
                != cert.tbs_certificate().subject_public_key_info()
            {
                bail!(
                    "{}: client-certificate-data does not match client-key-data",
                    conf.display()
                );
            }
            Ok(Some(Existing {
                der: der::Encode::to_der(&cert)?,
                cert,
                item,
                kubeconfig: Some(kc),
            }))
        }
    }
}

/// Runs `kubesign renew`.
pub async fn run(opts: RenewOptions) -> Result<()> {
    let config = Config::load(&opts.config)?;
    let all = kubeadm_dir::all_items(&opts.cert_dir, opts.kubeconfig_dir.as_deref());
    for n in &opts.names {
        if !all.iter().any(|i| i.profile.name == n) {
            let known: Vec<_> = all.iter().map(|i| i.profile.name).collect();
            bail!(
                "unknown certificate name {n:?}: expected one of {} (kubeconfigs need --kubeconfig-dir)",
                known.join(", ")
            );
        }
    }
    let mut existing = Vec::new();
    let mut problems = Vec::new();
    for item in all
        .into_iter()
        .filter(|i| opts.names.is_empty() || opts.names.iter().any(|n| n == i.profile.name))
    {
        let explicitly_named = !opts.names.is_empty();
        match load_existing(item.clone()) {
            Ok(Some(e)) => existing.push(e),
            Ok(None) if explicitly_named => problems.push(format!(
                "{}: does not exist",
                item.target.display_path().display()
            )),
            Ok(None) => {}
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!("{}\nnothing was renewed", problems.join("\n"));
    }
    if existing.is_empty() {
        bail!(
            "{}: no kubeadm certificates found to renew",
            opts.cert_dir.display()
        );
    }
    let cas = LoadedCas::load(&config, existing.iter().map(|e| e.item.profile.ca)).await?;

    // Every certificate must have been issued by the configured CA and fit kubeadm's profile.
    let mut subjects = Vec::new();
    for e in &existing {
        let path = e.item.target.display_path();
        let cert = &e.cert;
        let ca = cas.get(e.item.profile.ca)?;
        verify::verify_certificate_signature(
            cert,
            ca.certificate().tbs_certificate().subject_public_key_info(),
        )
        .map_err(|_| {
            anyhow!(
                "{}: was not issued by the configured {} CA ({}); refusing to renew it",
                path.display(),
                ca.role(),
                ca.key_uri()
            )
        })?;
        let subject = CertificateSubject::from_certificate(cert)?;
        let san_count = subject.alt_names.as_ref().map_or(0, |s| s.0.len());
        e.item
            .profile
            .check_identity(
                signer_api::name::common_name(&subject.name).as_deref(),
                &signer_api::name::organizations(&subject.name),
                san_count,
            )
            .map_err(|m| anyhow!("{}: {m}", path.display()))?;
        subjects.push(subject);
    }

    let audit = JsonlAuditLog::open(&config.audit_path).context("nothing was renewed")?;
    let batch = audit.batch();
    let now = SystemTime::now();
    let mut txn = Transaction::new();
    let mut rows = Vec::new();
    for (mut e, subject) in existing.into_iter().zip(subjects) {
        let path = e.item.target.display_path().to_owned();
        let ca = cas.get(e.item.profile.ca)?;
        let context = RequestContext {
            profile: e.item.profile.name.to_owned(),
            source: format!("renew {}", path.display()),
            source_sha256: Some(sha256_hex(&e.der)),
            requester: None,
        };
        let issued = ca
            .issue(
                &subject,
                &e.item.profile.policy(config.leaf_validity),
                now,
                &batch,
                context,
            )
            .await
            .with_context(|| format!("{}: renewal failed; no file was written", path.display()))?;
        match (&e.item.target, e.kubeconfig.as_mut()) {
            (Target::CertFile { crt, .. }, _) => {
                txn.stage(crt, issued.pem.as_bytes(), 0o644, Replace::Allowed)?
            }
            (Target::Kubeconfig { conf }, Some(kc)) => {
                kc.set_client_certificate(issued.pem.as_bytes())?;
                txn.stage(conf, kc.to_yaml()?.as_bytes(), 0o600, Replace::Allowed)?;
            }
            (Target::Kubeconfig { conf }, None) => bail!("internal: {} not loaded", conf.display()),
        }
        rows.push(Row {
            file: path.display().to_string(),
            name: e.item.profile.name.to_owned(),
            ca: ca.role(),
            subject: issued.record.subject.clone(),
            expires: issued.record.not_after.clone(),
            serial: issued.record.serial.clone(),
        });
    }
    // Every record is durable before any certificate leaves this process.
    batch.commit().context("no file was written")?;
    txn.commit()?;
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.file.clone(),
                r.ca.to_string(),
                r.subject.clone(),
                r.expires.clone(),
                r.serial.clone(),
            ]
        })
        .collect();
    output::print(
        opts.output,
        &["FILE", "CA", "SUBJECT", "EXPIRES", "SERIAL"],
        &table,
        &rows,
    )?;
    if opts.output == Format::Table {
        eprintln!(
            "renewed {} certificates; restart the control plane components to pick them up",
            rows.len()
        );
    }
    Ok(())
}
