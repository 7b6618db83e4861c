//! `kubesign sign`: sign every CSR `kubeadm certs generate-csr` wrote, all or nothing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use signer_api::audit::RequestContext;
use signer_api::ca::{CertificateSubject, rfc3339, sha256_hex};
use signer_api::{CaRole, VerifiedCsr};

use crate::audit_log::JsonlAuditLog;
use crate::cas::LoadedCas;
use crate::config::Config;
use crate::fsutil::{Replace, Transaction};
use crate::kubeadm_dir::{self, Item, Target};
use crate::kubeconfig::Kubeconfig;
use crate::output::{self, Format};

/// How many certificates are signed at once.
const SIGN_CONCURRENCY: usize = 8;

/// Options of `kubesign sign`.
pub struct SignOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// kubeadm's certificate directory.
    pub cert_dir: PathBuf,
    /// kubeadm's kubeconfig directory, if kubeconfigs are to be signed.
    pub kubeconfig_dir: Option<PathBuf>,
    /// Validate only.
    pub dry_run: bool,
    /// Replace existing certificates.
    pub force: bool,
    /// Output format.
    pub output: Format,
}

/// One row of the result.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The file written.
    pub file: String,
    /// kubeadm's certificate name.
    pub name: String,
    /// The CA.
    pub ca: CaRole,
    /// Subject.
    pub subject: String,
    /// SANs.
    pub sans: Vec<String>,
    /// Usages.
    pub usages: String,
    /// notAfter, RFC 3339.
    pub expires: String,
    /// Serial number (hex), absent in a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

struct Prepared {
    item: Item,
    csr: VerifiedCsr,
    kubeconfig: Option<Kubeconfig>,
}

/// Loads and checks one CSR against its profile, its private key, and its target.
fn prepare(item: Item, force: bool) -> Result<Prepared> {
    let csr_path = item
        .csr
        .clone()
        .ok_or_else(|| anyhow!("internal: item without CSR"))?;
    let bytes = crate::fsutil::read_regular(&csr_path)?;
    let csr = VerifiedCsr::parse(&bytes).with_context(|| format!("{}", csr_path.display()))?;
    item.profile
        .check_request(&csr)
        .map_err(|e| anyhow!("{}: {e}", csr_path.display()))?;
    let key_matches = |key_pem: &[u8], key_name: &Path| -> Result<()> {
        let key = backend_file::FileSigner::from_pem(key_name, key_pem).with_context(|| {
            format!(
                "{}: the private key for {}",
                key_name.display(),
                csr_path.display()
            )
        })?;
        if signer_api::Signer::public_key(&key) != csr.public_key() {
            bail!(
                "{}: the request's public key does not match {} (was the CSR made for another key?)",
                csr_path.display(),
                key_name.display()
            );
        }
        Ok(())
    };
    let kubeconfig = match &item.target {
        Target::CertFile { crt, key } => {
            crate::fsutil::refuse_symlink(crt)?;
            if crt.exists() && !force {
                bail!(
                    "{}: already exists; refusing to overwrite it (use --force to replace, or `kubesign renew`)",
                    crt.display()
                );
            }
            if key.exists() {
                let key_pem = zeroize::Zeroizing::new(crate::fsutil::read_regular(key)?);
                key_matches(&key_pem, key)?;
            } else {
                // Offline signing: only the CSRs travelled to the signing host.
                tracing::info!(csr = %csr_path.display(), "no private key beside the CSR; skipping the key match check");
            }
            None
        }
        Target::Kubeconfig { conf } => {
            let kc = Kubeconfig::load(conf)?;
            if kc.client_certificate_pem()?.is_some() && !force {
                bail!(
                    "{}: client-certificate-data is already set; refusing to overwrite it (use --force to replace)",
                    conf.display()
                );
            }
            key_matches(&kc.client_key_pem()?, conf)?;
            Some(kc)
        }
    };
    Ok(Prepared {
        item,
        csr,
        kubeconfig,
    })
}

fn same_pem(a: &[u8], b: &[u8]) -> bool {
    a.trim_ascii() == b.trim_ascii()
}

/// Runs `kubesign sign`.
pub async fn run(opts: SignOptions) -> Result<()> {
    let config = Config::load(&opts.config)?;
    let scan = kubeadm_dir::scan_csrs(&opts.cert_dir, opts.kubeconfig_dir.as_deref())?;

    // Validate everything first and report every problem at once.
    let mut prepared = Vec::new();
    let mut problems = scan.problems;
    for item in scan.items {
        match prepare(item, opts.force) {
            Ok(p) => prepared.push(p),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!("{}\nnothing was signed or written", problems.join("\n"));
    }

    let roles: Vec<CaRole> = prepared.iter().map(|p| p.item.profile.ca).collect();
    let cas = LoadedCas::load(&config, roles.iter().copied()).await?;

    // CA certificates in the certificate directory: copy if missing, refuse if different.
    let mut txn = Transaction::new();
    let mut ca_copies = Vec::new();
    for role in cas.roles() {
        let dest = opts.cert_dir.join(role.cert_file());
        let want = cas.certificate_bytes(role)?;
        crate::fsutil::refuse_symlink(&dest)?;
        if dest.exists() {
            let have = crate::fsutil::read_regular(&dest)?;
            if !same_pem(&have, want) {
                bail!(
                    "{}: differs from the configured {role} CA certificate {}; kubesign will not sign for a \
                     directory that trusts another CA. Nothing was signed or written.",
                    dest.display(),
                    config
                        .ca(role)
                        .map(|c| c.certificate.display().to_string())
                        .unwrap_or_default()
                );
            }
        } else {
            ca_copies.push((dest, want.to_vec()));
        }
        let key_on_disk = opts.cert_dir.join(role.key_file());
        if key_on_disk.exists() {
            tracing::warn!(
                path = %key_on_disk.display(),
                "a CA private key exists in the certificate directory: kubeadm will use it instead of external CA mode; \
                 remove it once its key lives in the HSM/KMS"
            );
        }
    }

    let now = SystemTime::now();
    let mut rows = Vec::new();
    if opts.dry_run {
        for p in &prepared {
            let ca = cas.get(p.item.profile.ca)?;
            let expires = (now + config.leaf_validity).min(ca.not_after());
            rows.push(row(p, &p.item, rfc3339(expires), None));
        }
        print_rows(opts.output, &rows)?;
        eprintln!(
            "dry run: {} certificates would be signed; nothing was signed or written",
            rows.len()
        );
        return Ok(());
    }

    let audit = JsonlAuditLog::open(&config.audit_path).context("nothing was signed")?;
    let batch = audit.batch();
    let mut outputs: Vec<(Prepared, signer_api::IssuedCertificate)> = Vec::new();
    let concurrency = config
        .cas
        .iter()
        .filter(|c| cas.roles().any(|r| r == c.role))
        .map(|c| crate::backends::signing_concurrency(&config.backends, &c.key, SIGN_CONCURRENCY))
        .min()
        .unwrap_or(1);
    // Sign concurrently (an HSM pool or a KMS round trip is the bottleneck, not this process);
    // the backends bound their own load. `buffered` keeps the kubeadm order of the results.
    // The first failure stops the run: nothing further is signed.
    let signed: Vec<(Prepared, signer_api::IssuedCertificate)> =
        futures::stream::iter(prepared.into_iter().map(|p| {
            let cas = &cas;
            let batch = &batch;
            let config = &config;
            async move {
                let ca = cas.get(p.item.profile.ca)?;
                let policy = p.item.profile.policy(config.leaf_validity);
                let csr_path = p.item.csr.clone().unwrap_or_default();
                let context = RequestContext {
                    profile: p.item.profile.name.to_owned(),
                    source: csr_path.display().to_string(),
                    source_sha256: Some(sha256_hex(p.csr.der())),
                    requester: None,
                };
                let issued = ca
                    .issue(
                        &CertificateSubject::from(&p.csr),
                        &policy,
                        now,
                        batch,
                        context,
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "{}: signing failed; no file was written",
                            csr_path.display()
                        )
                    })?;
                anyhow::Ok((p, issued))
            }
        }))
        .buffered(concurrency)
        .try_collect()
        .await?;
    outputs.extend(signed);

    // Stage every file, then move them all into place.
    let replace = if opts.force {
        Replace::Allowed
    } else {
        Replace::Never
    };
    for (dest, bytes) in &ca_copies {
        txn.stage(dest, bytes, 0o644, Replace::Never)?;
    }
    for (p, issued) in &mut outputs {
        match (&p.item.target, &mut p.kubeconfig) {
            (Target::CertFile { crt, .. }, _) => {
                txn.stage(crt, issued.pem.as_bytes(), 0o644, replace)?
            }
            (Target::Kubeconfig { conf }, Some(kc)) => {
                kc.set_client_certificate(issued.pem.as_bytes())?;
                kc.set_certificate_authority(cas.certificate_bytes(p.item.profile.ca)?)?;
                txn.stage(conf, kc.to_yaml()?.as_bytes(), 0o600, Replace::Allowed)?;
            }
            (Target::Kubeconfig { conf }, None) => bail!("internal: {} not loaded", conf.display()),
        }
    }
    // Every record is durable before any certificate leaves this process.
    batch.commit().context("no file was written")?;
    txn.commit()?;
    for (p, issued) in &outputs {
        rows.push(row(
            p,
            &p.item,
            issued.record.not_after.clone(),
            Some(issued.record.serial.clone()),
        ));
    }
    print_rows(opts.output, &rows)?;
    if opts.output == Format::Table {
        eprintln!(
            "signed {} certificates; {} CA certificates copied; audit log {}",
            rows.len(),
            ca_copies.len(),
            audit.path().display()
        );
    }
    Ok(())
}

fn row(p: &Prepared, item: &Item, expires: String, serial: Option<String>) -> Row {
    Row {
        file: item.target.display_path().display().to_string(),
        name: item.profile.name.to_owned(),
        ca: item.profile.ca,
        subject: signer_api::name::display(p.csr.subject()),
        sans: p.csr.sans().iter().map(ToString::to_string).collect(),
        usages: item.profile.usage_names(),
        expires,
        serial,
    }
}

fn print_rows(format: Format, rows: &[Row]) -> Result<()> {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.file.clone(),
                r.ca.to_string(),
                r.subject.clone(),
                if r.sans.is_empty() {
                    "-".into()
                } else {
                    r.sans.join(",")
                },
                r.usages.clone(),
                r.expires.clone(),
            ]
        })
        .collect();
    output::print(
        format,
        &["FILE", "CA", "SUBJECT", "SANS", "USAGES", "EXPIRES"],
        &table,
        &rows,
    )
}
