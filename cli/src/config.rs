//! The kubesign configuration file: kubeadm-style YAML with `apiVersion` and `kind`.
//!
//! ```yaml
//! apiVersion: kubesign.dev/v1alpha1
//! kind: SignerConfiguration
//! cas:
//!   kubernetes:
//!     key: file:/secure/ca.key          # any key URI
//!     certificate: /etc/kubernetes/pki/ca.crt
//!     keyAlgorithm: ECDSA-P256          # for `ca init`; default RSA-2048
//!   etcd: {...}
//!   front-proxy: {...}
//! audit:
//!   path: /var/log/kubesign/audit.jsonl
//! certificateValidityPeriod: 8760h      # leaf certificates (kubeadm's default)
//! caCertificateValidityPeriod: 87600h   # CA certificates made by `ca init`
//! backends:                             # optional tuning of the key backends
//!   pkcs11:
//!     modulePath: /usr/lib/softhsm/libsofthsm2.so   # used when a pkcs11: URI has no module-path
//!     pinEnv: KUBESIGN_PKCS11_PIN       # PIN from this environment variable (else pin-source)
//!     sessions: 4                       # logged-in sessions per token
//!     extractableKeys: Refuse           # Refuse | Warn | Allow
//!     importedKeys: Warn                # Refuse | Warn | Allow
//!   awskms:
//!     messageType: DIGEST               # DIGEST (hash locally) | RAW
//!     maxConcurrency: 16                # Sign requests in flight
//!     rateLimit: 300                    # Sign requests per second; default: AWS's quota per key type; 0: none
//!     maxAttempts: 5                    # attempts per Sign on throttling and transient errors
//! ```
//! Relative paths are resolved against the directory of the configuration file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use signer_api::profile::{DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use signer_api::{CaRole, KeyAlgorithm, KeyUri};

use crate::duration;

/// The only accepted apiVersion.
pub const API_VERSION: &str = "kubesign.dev/v1alpha1";
/// The only accepted kind.
pub const KIND: &str = "SignerConfiguration";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    cas: RawCas,
    audit: Option<RawAudit>,
    certificate_validity_period: Option<String>,
    ca_certificate_validity_period: Option<String>,
    #[serde(default)]
    backends: BackendSettings,
}

/// Tuning of the key backends (`backends:`). Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    /// `backends.pkcs11`.
    #[serde(default)]
    pub pkcs11: Pkcs11Settings,
    /// `backends.awskms`.
    #[serde(default)]
    pub awskms: KmsSettings,
}

/// What to do with a key whose attributes fall short of the ideal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyPolicySetting {
    /// Refuse to use the key.
    Refuse,
    /// Use the key and log a warning.
    Warn,
    /// Use the key silently.
    Allow,
}

/// `backends.pkcs11`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module for URIs without module-path/module-name.
    pub module_path: Option<PathBuf>,
    /// An environment variable holding the user PIN, for URIs without pin-source/pin-value.
    pub pin_env: Option<String>,
    /// Logged-in sessions per token.
    pub sessions: Option<usize>,
    /// Keys with CKA_EXTRACTABLE true (default Refuse).
    pub extractable_keys: Option<KeyPolicySetting>,
    /// Keys imported rather than generated in the token (default Warn).
    pub imported_keys: Option<KeyPolicySetting>,
}

/// The KMS message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MessageTypeSetting {
    /// Hash locally, send the digest (no 4 KiB limit).
    #[serde(rename = "DIGEST")]
    Digest,
    /// Send the TBSCertificate itself (at most 4096 bytes).
    #[serde(rename = "RAW")]
    Raw,
}

/// `backends.awskms`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KmsSettings {
    /// DIGEST (default) or RAW.
    pub message_type: Option<MessageTypeSetting>,
    /// Sign requests in flight at once.
    pub max_concurrency: Option<usize>,
    /// Sign requests per second (0 = no client-side limit); default AWS's quota per key type.
    pub rate_limit: Option<f64>,
    /// Attempts per Sign on throttling and transient errors.
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCas {
    kubernetes: Option<RawCa>,
    etcd: Option<RawCa>,
    #[serde(rename = "front-proxy")]
    front_proxy: Option<RawCa>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCa {
    key: String,
    certificate: PathBuf,
    key_algorithm: Option<KeyAlgorithm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
}

/// One CA's configuration.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// Which CA.
    pub role: CaRole,
    /// The key.
    pub key: KeyUri,
    /// The CA certificate path.
    pub certificate: PathBuf,
    /// The key type for `ca init`.
    pub key_algorithm: KeyAlgorithm,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The configured CAs, in kubeadm's order.
    pub cas: Vec<CaConfig>,
    /// The audit log.
    pub audit_path: PathBuf,
    /// Leaf validity.
    pub leaf_validity: Duration,
    /// CA validity for `ca init`.
    pub ca_validity: Duration,
    /// Backend tuning.
    pub backends: BackendSettings,
}

impl Config {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let here = |msg: String| anyhow!("{}: {msg}", path.display());
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| here(format!("{e}")))?;
        match raw.api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(other) => {
                return Err(here(format!(
                    "apiVersion is {other:?}, expected {API_VERSION:?}"
                )));
            }
            None => {
                return Err(here(format!(
                    "apiVersion is missing, expected {API_VERSION:?}"
                )));
            }
        }
        match raw.kind.as_deref() {
            Some(KIND) => {}
            Some(other) => return Err(here(format!("kind is {other:?}, expected {KIND:?}"))),
            None => return Err(here(format!("kind is missing, expected {KIND:?}"))),
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let mut cas = Vec::new();
        for (role, ca) in [
            (CaRole::Kubernetes, raw.cas.kubernetes),
            (CaRole::Etcd, raw.cas.etcd),
            (CaRole::FrontProxy, raw.cas.front_proxy),
        ] {
            let Some(ca) = ca else { continue };
            let key = KeyUri::parse(&ca.key)
                .map_err(|e| here(format!("cas.{role}.key: {e}")))?
                .resolve_relative(&base);
            if ca.certificate.as_os_str().is_empty() {
                return Err(here(format!(
                    "cas.{role}.certificate is empty: expected the CA certificate path"
                )));
            }
            cas.push(CaConfig {
                role,
                key,
                certificate: resolve(ca.certificate),
                key_algorithm: ca.key_algorithm.unwrap_or_default(),
            });
        }
        if let Some(0) = raw.backends.pkcs11.sessions {
            return Err(here("backends.pkcs11.sessions must be at least 1".into()));
        }
        if let Some(0) = raw.backends.awskms.max_concurrency {
            return Err(here(
                "backends.awskms.maxConcurrency must be at least 1".into(),
            ));
        }
        if let Some(0) = raw.backends.awskms.max_attempts {
            return Err(here(
                "backends.awskms.maxAttempts must be at least 1".into(),
            ));
        }
        if let Some(r) = raw.backends.awskms.rate_limit
            && !(r.is_finite() && r >= 0.0)
        {
            return Err(here(format!(
                "backends.awskms.rateLimit is {r}: expected requests per second, 0 for no limit"
            )));
        }
        let mut backends = raw.backends;
        if let Some(m) = backends.pkcs11.module_path.take() {
            backends.pkcs11.module_path = Some(resolve(m));
        }
        if cas.is_empty() {
            return Err(here(
                "cas: no CA configured; expected at least one of kubernetes, etcd, front-proxy"
                    .into(),
            ));
        }
        for (i, a) in cas.iter().enumerate() {
            for b in &cas[..i] {
                if a.key == b.key {
                    return Err(here(format!(
                        "cas.{} and cas.{} use the same key {}; each CA needs its own key",
                        b.role, a.role, a.key
                    )));
                }
                if a.certificate == b.certificate {
                    return Err(here(format!(
                        "cas.{} and cas.{} use the same certificate path {}",
                        b.role,
                        a.role,
                        a.certificate.display()
                    )));
                }
            }
        }
        let audit_path = match raw.audit {
            Some(a) if !a.path.as_os_str().is_empty() => resolve(a.path),
            _ => return Err(here("audit.path is missing: every issued certificate is recorded, so an audit log path is required".into())),
        };
        let period = |field: &str, v: Option<String>, default: Duration| -> Result<Duration> {
            match v {
                None => Ok(default),
                Some(s) => {
                    let d = duration::parse(&s).map_err(|e| here(format!("{field}: {e}")))?;
                    if d < Duration::from_secs(3600) {
                        bail!("{}: {field}: {s} is shorter than one hour", path.display());
                    }
                    Ok(d)
                }
            }
        };
        Ok(Config {
            path: path.to_owned(),
            cas,
            audit_path,
            leaf_validity: period(
                "certificateValidityPeriod",
                raw.certificate_validity_period,
                DEFAULT_LEAF_VALIDITY,
            )?,
            ca_validity: period(
                "caCertificateValidityPeriod",
                raw.ca_certificate_validity_period,
                DEFAULT_CA_VALIDITY,
            )?,
            backends,
        })
    }

    /// The configuration of one CA, if present.
    pub fn ca(&self, role: CaRole) -> Option<&CaConfig> {
        self.cas.iter().find(|c| c.role == role)
    }
}

/// An example configuration, printed by `kubesign config example`.
pub const EXAMPLE: &str = r#"apiVersion: kubesign.dev/v1alpha1
kind: SignerConfiguration
cas:
  kubernetes:
    key: file:/secure/kubesign/ca.key
    certificate: /etc/kubernetes/pki/ca.crt
    keyAlgorithm: RSA-2048
  etcd:
    key: file:/secure/kubesign/etcd-ca.key
    certificate: /etc/kubernetes/pki/etcd/ca.crt
    keyAlgorithm: RSA-2048
  front-proxy:
    key: file:/secure/kubesign/front-proxy-ca.key
    certificate: /etc/kubernetes/pki/front-proxy-ca.crt
    keyAlgorithm: RSA-2048
audit:
  path: /var/log/kubesign/audit.jsonl
# certificateValidityPeriod: 8760h
# caCertificateValidityPeriod: 87600h
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::parse(s, Path::new("/etc/kubesign/config.yaml"))
    }

    #[test]
    fn example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.cas.len(), 3);
        assert_eq!(c.leaf_validity, DEFAULT_LEAF_VALIDITY);
        assert_eq!(
            c.ca(CaRole::Etcd).map(|c| c.certificate.clone()),
            Some(PathBuf::from("/etc/kubernetes/pki/etcd/ca.crt"))
        );
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let c = parse(
            "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes:\n    key: file:keys/ca.key\n    certificate: pki/ca.crt\naudit:\n  path: audit.jsonl\ncertificateValidityPeriod: 720h\n",
        )
        .unwrap();
        let ca = &c.cas[0];
        assert_eq!(ca.key.to_string(), "file:/etc/kubesign/keys/ca.key");
        assert_eq!(ca.certificate, PathBuf::from("/etc/kubesign/pki/ca.crt"));
        assert_eq!(c.audit_path, PathBuf::from("/etc/kubesign/audit.jsonl"));
        assert_eq!(c.leaf_validity, Duration::from_secs(720 * 3600));
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let cases = [
            ("kind: SignerConfiguration\n", "apiVersion is missing"),
            (
                "apiVersion: v1\nkind: SignerConfiguration\n",
                "apiVersion is \"v1\"",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: Other\n",
                "kind is \"Other\"",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\naudit: {path: a}\n",
                "no CA configured",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes: {key: /k, certificate: c}\naudit: {path: a}\n",
                "cas.kubernetes.key",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes: {key: 'file:/k', certificate: c, keyAlgorithm: DSA}\naudit: {path: a}\n",
                "unknown key algorithm",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes: {key: 'file:/k', certificate: c}\n",
                "audit.path is missing",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes: {key: 'file:/k', certificate: c}\n  etcd: {key: 'file:/k', certificate: d}\naudit: {path: a}\n",
                "same key",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes: {key: 'file:/k', certificate: c}\naudit: {path: a}\ncertificateValidityPeriod: 1y\n",
                "certificateValidityPeriod",
            ),
            (
                "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas: {}\nsurprise: 1\n",
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains("/etc/kubesign/config.yaml"), "{e}");
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }
}
