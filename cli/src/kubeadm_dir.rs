//! The layout kubeadm uses: certificates and CSRs in the certificate directory (etcd ones under
//! `etcd/`), client certificates embedded in kubeconfig files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use signer_api::profile::{self, CertProfile, KUBEADM_PROFILES, Location};

/// Where one certificate lives.
#[derive(Debug, Clone)]
pub enum Target {
    /// `<cert-dir>/<name>.crt` with its key `<name>.key`.
    CertFile {
        /// The certificate.
        crt: PathBuf,
        /// The private key kubeadm generated.
        key: PathBuf,
    },
    /// `<kubeconfig-dir>/<name>`.
    Kubeconfig {
        /// The kubeconfig file.
        conf: PathBuf,
    },
}

impl Target {
    /// The file shown to users.
    pub fn display_path(&self) -> &Path {
        match self {
            Target::CertFile { crt, .. } => crt,
            Target::Kubeconfig { conf } => conf,
        }
    }
}

/// One kubeadm certificate in a concrete directory.
#[derive(Debug, Clone)]
pub struct Item {
    /// kubeadm's profile.
    pub profile: &'static CertProfile,
    /// Where the certificate goes.
    pub target: Target,
    /// The CSR kubeadm wrote, when signing.
    pub csr: Option<PathBuf>,
}

/// Every kubeadm certificate with its location under `cert_dir` / `kubeconfig_dir`.
pub fn all_items(cert_dir: &Path, kubeconfig_dir: Option<&Path>) -> Vec<Item> {
    KUBEADM_PROFILES
        .iter()
        .filter_map(|p| {
            let target = match p.location {
                Location::CertDir => Target::CertFile {
                    crt: cert_dir.join(format!("{}.crt", p.name)),
                    key: cert_dir.join(format!("{}.key", p.name)),
                },
                Location::Kubeconfig => Target::Kubeconfig {
                    conf: kubeconfig_dir?.join(p.name),
                },
            };
            Some(Item {
                profile: p,
                target,
                csr: None,
            })
        })
        .collect()
}

fn csr_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir)
        .map_err(|e| anyhow!("{}: cannot list the directory ({e})", dir.display()))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| anyhow!("{}: cannot list the directory ({e})", dir.display()))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "csr") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// What a scan found: the CSRs kubesign knows, and the problems with the rest.
pub struct Scan {
    /// CSRs with a known kubeadm name.
    pub items: Vec<Item>,
    /// Unknown file names (with the names kubesign knows), symlinks, kubeconfig CSRs without
    /// their kubeconfig: reported together with the problems of the CSRs themselves.
    pub problems: Vec<String>,
}

/// Finds every CSR `kubeadm certs generate-csr` wrote. Fails only when a directory cannot be
/// read or holds no CSR at all; everything else is collected in [`Scan::problems`].
pub fn scan_csrs(cert_dir: &Path, kubeconfig_dir: Option<&Path>) -> Result<Scan> {
    if !cert_dir.is_dir() {
        bail!(
            "{}: is not a directory (expected the --cert-dir that kubeadm certs generate-csr wrote)",
            cert_dir.display()
        );
    }
    let mut problems = Vec::new();
    let mut items = Vec::new();
    let mut dirs = vec![(cert_dir.to_path_buf(), "")];
    let etcd = cert_dir.join("etcd");
    if etcd.is_dir() {
        dirs.push((etcd, "etcd/"));
    }
    let known_certs = profile::known_names(Location::CertDir);
    for (dir, prefix) in dirs {
        for path in csr_files(&dir)? {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = format!("{prefix}{stem}");
            match profile::by_name(&name).filter(|p| p.location == Location::CertDir) {
                Some(p) => {
                    if let Err(e) = crate::fsutil::refuse_symlink(&path) {
                        problems.push(e.to_string());
                        continue;
                    }
                    let key = dir.join(format!("{stem}.key"));
                    items.push(Item {
                        profile: p,
                        target: Target::CertFile { crt: dir.join(format!("{stem}.crt")), key },
                        csr: Some(path),
                    });
                }
                None => problems.push(format!(
                    "{}: unknown CSR file name {name:?}; kubesign signs the CSRs kubeadm writes: {known_certs} \
                     (as NAME.csr, etcd ones under etcd/)",
                    path.display()
                )),
            }
        }
    }
    if let Some(kdir) = kubeconfig_dir {
        if !kdir.is_dir() {
            bail!(
                "{}: is not a directory (expected the --kubeconfig-dir of kubeadm certs generate-csr)",
                kdir.display()
            );
        }
        let known = profile::known_names(Location::Kubeconfig);
        for path in csr_files(kdir)? {
            let file = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let conf_name = file.trim_end_matches(".csr");
            match profile::by_name(conf_name).filter(|p| p.location == Location::Kubeconfig) {
                Some(p) => {
                    if let Err(e) = crate::fsutil::refuse_symlink(&path) {
                        problems.push(e.to_string());
                        continue;
                    }
                    let conf = kdir.join(conf_name);
                    if !conf.exists() {
                        problems.push(format!(
                            "{}: its kubeconfig {} is missing",
                            path.display(),
                            conf.display()
                        ));
                        continue;
                    }
                    items.push(Item {
                        profile: p,
                        target: Target::Kubeconfig { conf },
                        csr: Some(path),
                    });
                }
                None => problems.push(format!(
                    "{}: unknown kubeconfig CSR file name; kubesign knows {} (each as NAME.csr)",
                    path.display(),
                    known
                )),
            }
        }
    }
    if items.is_empty() && problems.is_empty() {
        bail!(
            "{}: no certificate signing requests found (expected the output of `kubeadm certs generate-csr`)",
            cert_dir.display()
        );
    }
    Ok(Scan { items, problems })
}
