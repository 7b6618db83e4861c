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
//!     maxAttempts: 8                    # attempts per operation on transient device errors
//!   awskms:
//!     messageType: DIGEST               # DIGEST (hash locally) | RAW
//!     maxConcurrency: 16                # Sign requests in flight
//!     rateLimit: 300                    # Sign requests per second; default: AWS's quota per key type; 0: none
//!     maxAttempts: 5                    # attempts per Sign on throttling and transient errors
//! serve:                                # `kubesign serve`: sign CertificateSigningRequests
//!   signers:
//!     - name: kubernetes.io/kube-apiserver-client-kubelet   # kube-controller-manager's rules
//!     - name: kubesign.dev/etcd-client  # a custom signer: etcd or front-proxy CA, rules below
//!       ca: etcd
//!       rules:
//!         usages: [digital signature, key encipherment, client auth]
//!         requiredUsages: [client auth]
//!         commonName: {prefix: "etcd-client:"}
//!         organizations: []
//!   maxDuration: 8760h                  # longest certificate (--cluster-signing-duration)
//!   leaderElection: {namespace: kube-system, leaseName: kubesign}
//!   httpAddress: 0.0.0.0:10271          # /metrics, /healthz, /readyz
//! ```
//! Relative paths are resolved against the directory of the configuration file.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use signer_api::profile::{DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use signer_api::{CaRole, KeyAlgorithm, KeyUri};

use crate::duration;
use crate::serve::signers::{
    CommonNameRule, CustomRules, LEGACY_UNKNOWN, SanType, SignerConfig, SignerKind,
    check_signer_name, usage_bit,
};

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
    serve: Option<RawServe>,
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
    /// Attempts per operation on transient device errors (default 8). A wrong PIN is never
    /// retried.
    pub max_attempts: Option<u32>,
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawServe {
    #[serde(default)]
    signers: Vec<RawSigner>,
    max_duration: Option<String>,
    #[serde(default)]
    leader_election: RawLeaderElection,
    http_address: Option<String>,
    workers: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSigner {
    name: String,
    ca: Option<String>,
    max_duration: Option<String>,
    rules: Option<RawRules>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    usages: Vec<String>,
    #[serde(default)]
    required_usages: Vec<String>,
    #[serde(default)]
    subject_alt_names: Vec<SanType>,
    #[serde(default)]
    require_subject_alt_name: bool,
    common_name: Option<RawCommonName>,
    organizations: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommonName {
    exact: Option<String>,
    prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLeaderElection {
    enabled: Option<bool>,
    namespace: Option<String>,
    lease_name: Option<String>,
    lease_duration: Option<String>,
    renew_deadline: Option<String>,
    retry_period: Option<String>,
}

/// `serve:`: the CertificateSigningRequest signing controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The signer names served, each with its CA and rules.
    pub signers: Vec<SignerConfig>,
    /// The default longest certificate lifetime (`maxDuration`, default 8760h).
    pub max_duration: Duration,
    /// Lease-based leader election.
    pub leader_election: LeaderElectionConfig,
    /// Where /metrics, /healthz and /readyz listen.
    pub http_address: SocketAddr,
    /// Requests handled at once.
    pub workers: u16,
}

impl ServeConfig {
    /// The configuration of one signer name, if served.
    pub fn signer(&self, name: &str) -> Option<&SignerConfig> {
        self.signers.iter().find(|s| s.name == name)
    }
}

/// `serve.leaderElection`: a coordination.k8s.io/v1 Lease, as kube-controller-manager's
/// `--leader-elect-*` flags describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// Whether to elect a leader (default true); without, every replica signs.
    pub enabled: bool,
    /// The Lease's namespace; default `$POD_NAMESPACE`, else `kube-system`.
    pub namespace: Option<String>,
    /// The Lease's name (default `kubesign`).
    pub lease_name: String,
    /// How long a lease is valid after its last renewal (default 15s).
    pub lease_duration: Duration,
    /// The leader stops signing when it has not renewed for this long (default 10s).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew (default 2s).
    pub retry_period: Duration,
}

/// The default `serve.maxDuration`: kube-controller-manager's `--cluster-signing-duration`.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(8760 * 3600);
/// The default `serve.httpAddress`.
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0:10271";

/// Parses a listen address: `host:port`, `[v6]:port` or `:port` (all IPv4 interfaces).
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse().map_err(|_| {
        format!("{s:?} is not a listen address: expected host:port such as 0.0.0.0:10271 or :10271")
    })
}

fn serve_config(raw: RawServe, cas: &[CaConfig]) -> std::result::Result<ServeConfig, String> {
    let dur = |field: &str, v: &Option<String>| -> std::result::Result<Option<Duration>, String> {
        v.as_deref()
            .map(|s| duration::parse(s).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    let max_duration = dur("serve.maxDuration", &raw.max_duration)?.unwrap_or(DEFAULT_MAX_DURATION);
    let min = crate::serve::validation::MIN_DURATION;
    if max_duration < min {
        return Err("serve.maxDuration is shorter than the 10 minute minimum lifetime".into());
    }
    if raw.signers.is_empty() {
        return Err("serve.signers is empty: name at least one signer, e.g. \
             kubernetes.io/kube-apiserver-client-kubelet"
            .into());
    }
    let mut signers: Vec<SignerConfig> = Vec::new();
    for (i, s) in raw.signers.into_iter().enumerate() {
        let at = format!("serve.signers[{i}] ({})", s.name);
        if signers.iter().any(|o| o.name == s.name) {
            return Err(format!("{at}: listed twice"));
        }
        if s.name == LEGACY_UNKNOWN {
            return Err(format!(
                "{at}: kubernetes.io/legacy-unknown is never signed (kube-controller-manager \
                 does not sign it in certificates.k8s.io/v1 either)"
            ));
        }
        check_signer_name(&s.name).map_err(|e| format!("{at}: {e}"))?;
        let ca = match &s.ca {
            Some(c) => Some(c.parse::<CaRole>().map_err(|e| format!("{at}: ca: {e}"))?),
            None => None,
        };
        let built_in = SignerKind::built_in(&s.name);
        let (kind, ca) = match (built_in, s.rules) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{at}: rules: the kubernetes.io signers keep kube-controller-manager's rules; \
                     remove `rules`"
                ));
            }
            (Some(kind), None) => {
                if ca.is_some_and(|c| c != CaRole::Kubernetes) {
                    return Err(format!(
                        "{at}: ca: the kubernetes.io signers use the kubernetes CA (kubelets and \
                         the API server trust it)"
                    ));
                }
                (kind, CaRole::Kubernetes)
            }
            (None, _)
                if s.name.starts_with("kubernetes.io/") || s.name.ends_with(".kubernetes.io") =>
            {
                return Err(format!(
                    "{at}: unknown kubernetes.io signer; kubesign signs \
                     kubernetes.io/kube-apiserver-client, kubernetes.io/kube-apiserver-client-kubelet \
                     and kubernetes.io/kubelet-serving, or custom names in your own domain"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "{at}: a custom signer needs `rules` (usages, requiredUsages, \
                     subjectAltNames, commonName, organizations)"
                ));
            }
            (None, Some(rules)) => {
                let ca = match ca {
                    None => {
                        return Err(format!(
                            "{at}: a custom signer needs `ca: etcd` or `ca: front-proxy`"
                        ));
                    }
                    Some(CaRole::Kubernetes) => {
                        return Err(format!(
                            "{at}: ca: custom signers may not use the kubernetes CA: its client \
                             certificates authenticate to the API server, and only the \
                             kubernetes.io signers carry the API server's own checks"
                        ));
                    }
                    Some(c) => c,
                };
                (
                    SignerKind::Custom(
                        custom_rules(rules).map_err(|e| format!("{at}: rules: {e}"))?,
                    ),
                    ca,
                )
            }
        };
        if !cas.iter().any(|c| c.role == ca) {
            return Err(format!(
                "{at}: signs with the {ca} CA but cas.{} is not configured",
                ca.config_name()
            ));
        }
        let max = dur(&format!("{at}: maxDuration"), &s.max_duration)?.unwrap_or(max_duration);
        if max < min {
            return Err(format!("{at}: maxDuration is shorter than 10 minutes"));
        }
        signers.push(SignerConfig {
            name: s.name,
            ca,
            max_duration: max,
            kind,
        });
    }
    let le = raw.leader_election;
    let lease_duration = dur("serve.leaderElection.leaseDuration", &le.lease_duration)?
        .unwrap_or(Duration::from_secs(15));
    let renew_deadline = dur("serve.leaderElection.renewDeadline", &le.renew_deadline)?
        .unwrap_or(Duration::from_secs(10));
    let retry_period = dur("serve.leaderElection.retryPeriod", &le.retry_period)?
        .unwrap_or(Duration::from_secs(2));
    // client-go's checks: leaseDuration > renewDeadline > 1.2 * retryPeriod.
    if lease_duration <= renew_deadline {
        return Err("serve.leaderElection: leaseDuration must be longer than renewDeadline".into());
    }
    if renew_deadline.as_millis() * 10 <= retry_period.as_millis() * 12 {
        return Err(
            "serve.leaderElection: renewDeadline must be longer than 1.2 x retryPeriod".into(),
        );
    }
    if retry_period < Duration::from_millis(100) {
        return Err("serve.leaderElection: retryPeriod must be at least 100ms".into());
    }
    if let Some(ns) = &le.namespace
        && ns.is_empty()
    {
        return Err("serve.leaderElection.namespace is empty".into());
    }
    let lease_name = le.lease_name.unwrap_or_else(|| "kubesign".into());
    if lease_name.is_empty() {
        return Err("serve.leaderElection.leaseName is empty".into());
    }
    let http_address =
        parse_listen_address(raw.http_address.as_deref().unwrap_or(DEFAULT_HTTP_ADDRESS))
            .map_err(|e| format!("serve.httpAddress: {e}"))?;
    let workers = raw.workers.unwrap_or(4);
    if workers == 0 {
        return Err("serve.workers must be at least 1".into());
    }
    Ok(ServeConfig {
        signers,
        max_duration,
        leader_election: LeaderElectionConfig {
            enabled: le.enabled.unwrap_or(true),
            namespace: le.namespace,
            lease_name,
            lease_duration,
            renew_deadline,
            retry_period,
        },
        http_address,
        workers,
    })
}

fn custom_rules(r: RawRules) -> std::result::Result<CustomRules, String> {
    if r.usages.is_empty() {
        return Err("usages is empty: list the usages a request may ask for".into());
    }
    for u in r.usages.iter().chain(&r.required_usages) {
        if usage_bit(u).is_none() {
            return Err(format!(
                "unknown usage {u:?}: expected a certificates.k8s.io/v1 usage such as \
                 \"digital signature\", \"key encipherment\", \"client auth\", \"server auth\""
            ));
        }
    }
    for u in &r.required_usages {
        if !r.usages.contains(u) {
            return Err(format!("requiredUsages: {u:?} is not in usages"));
        }
    }
    if r.require_subject_alt_name && r.subject_alt_names.is_empty() {
        return Err(
            "requireSubjectAltName needs subjectAltNames to allow at least one type".into(),
        );
    }
    let common_name = match r.common_name {
        None => CommonNameRule::Any,
        Some(RawCommonName {
            exact: Some(e),
            prefix: None,
        }) if !e.is_empty() => CommonNameRule::Exact(e),
        Some(RawCommonName {
            exact: None,
            prefix: Some(p),
        }) if !p.is_empty() => CommonNameRule::Prefix(p),
        Some(_) => {
            return Err("commonName: give exactly one of `exact` or `prefix`, non-empty".into());
        }
    };
    Ok(CustomRules {
        allowed_usages: r.usages.into_iter().collect(),
        required_usages: r.required_usages.into_iter().collect(),
        allowed_san_types: r.subject_alt_names.into_iter().collect(),
        require_san: r.require_subject_alt_name,
        common_name,
        allowed_organizations: r
            .organizations
            .map(|o| o.into_iter().collect::<BTreeSet<String>>()),
    })
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
    /// `serve:`, when present.
    pub serve: Option<ServeConfig>,
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
        if let Some(0) = raw.backends.pkcs11.max_attempts {
            return Err(here(
                "backends.pkcs11.maxAttempts must be at least 1".into(),
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
        let serve = raw
            .serve
            .map(|s| serve_config(s, &cas))
            .transpose()
            .map_err(here)?;
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
            serve,
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

# `kubesign serve`: sign CertificateSigningRequests in place of kube-controller-manager's csrsigning.
serve:
  signers:
    # Kubernetes' own signer names: kube-controller-manager's rules, the kubernetes CA.
    - name: kubernetes.io/kube-apiserver-client-kubelet   # kubelet client certificates
    - name: kubernetes.io/kubelet-serving                 # kubelet serving certificates
    - name: kubernetes.io/kube-apiserver-client           # other API server clients
    # Custom signer names: the etcd or front-proxy CA, with your rules.
    - name: kubesign.dev/etcd-client
      ca: etcd
      maxDuration: 720h
      rules:
        usages: [digital signature, key encipherment, client auth]
        requiredUsages: [client auth]
        commonName: {prefix: "etcd-client:"}
        organizations: []
  # maxDuration: 8760h            # longest certificate (--cluster-signing-duration)
  # leaderElection:
  #   namespace: kube-system      # default $POD_NAMESPACE, else kube-system
  #   leaseName: kubesign
  #   leaseDuration: 15s
  #   renewDeadline: 10s
  #   retryPeriod: 2s
  # httpAddress: 0.0.0.0:10271    # /metrics, /healthz, /readyz
  # workers: 4
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

    const SERVE_HEAD: &str = "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes: {key: 'file:/k', certificate: c}\n  etcd: {key: 'file:/e', certificate: e}\naudit: {path: a}\n";

    fn serve(section: &str) -> Result<ServeConfig> {
        parse(&format!("{SERVE_HEAD}{section}")).map(|c| c.serve.unwrap())
    }

    #[test]
    fn example_serve_section() {
        let c = parse(EXAMPLE).unwrap();
        let s = c.serve.unwrap();
        let names: Vec<&str> = s.signers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kubernetes.io/kube-apiserver-client-kubelet",
                "kubernetes.io/kubelet-serving",
                "kubernetes.io/kube-apiserver-client",
                "kubesign.dev/etcd-client"
            ]
        );
        assert!(
            s.signers[..3]
                .iter()
                .all(|s| s.ca == CaRole::Kubernetes && s.max_duration == DEFAULT_MAX_DURATION)
        );
        assert_eq!(s.signers[1].kind, SignerKind::KubeletServing);
        let etcd = &s.signers[3];
        assert_eq!(etcd.ca, CaRole::Etcd);
        assert_eq!(etcd.max_duration, Duration::from_secs(720 * 3600));
        let SignerKind::Custom(rules) = &etcd.kind else {
            panic!("custom")
        };
        assert_eq!(
            rules.common_name,
            CommonNameRule::Prefix("etcd-client:".into())
        );
        assert_eq!(rules.allowed_organizations, Some(BTreeSet::new()));
        assert!(rules.required_usages.contains("client auth"));
        // Defaults.
        assert_eq!(s.max_duration, DEFAULT_MAX_DURATION);
        assert!(s.leader_election.enabled);
        assert_eq!(s.leader_election.namespace, None);
        assert_eq!(s.leader_election.lease_name, "kubesign");
        assert_eq!(s.leader_election.lease_duration, Duration::from_secs(15));
        assert_eq!(s.leader_election.renew_deadline, Duration::from_secs(10));
        assert_eq!(s.leader_election.retry_period, Duration::from_secs(2));
        assert_eq!(s.http_address, "0.0.0.0:10271".parse().unwrap());
        assert_eq!(s.workers, 4);
        // No serve section: no serve configuration, as before.
        assert!(parse(SERVE_HEAD).unwrap().serve.is_none());
    }

    #[test]
    fn serve_section_fields() {
        let s = serve(
            "serve:\n  maxDuration: 24h\n  httpAddress: ':9090'\n  workers: 2\n  leaderElection: {enabled: false, namespace: ks, leaseName: l, leaseDuration: 30s, renewDeadline: 20s, retryPeriod: 5s}\n  signers:\n  - name: kubernetes.io/kubelet-serving\n    ca: kubernetes\n  - name: kubesign.dev/etcd-peer\n    ca: etcd-ca\n    maxDuration: 1h\n    rules:\n      usages: [digital signature, key encipherment, server auth, client auth]\n      requiredUsages: [server auth, client auth]\n      subjectAltNames: [DNS, IP]\n      requireSubjectAltName: true\n      commonName: {exact: etcd-peer}\n",
        )
        .unwrap();
        assert_eq!(s.max_duration, Duration::from_secs(86400));
        assert_eq!(s.http_address, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(s.workers, 2);
        assert!(!s.leader_election.enabled);
        assert_eq!(s.leader_election.namespace.as_deref(), Some("ks"));
        assert_eq!(s.leader_election.lease_duration, Duration::from_secs(30));
        assert_eq!(s.signers[0].max_duration, Duration::from_secs(86400));
        let peer = s.signer("kubesign.dev/etcd-peer").unwrap();
        assert_eq!(peer.max_duration, Duration::from_secs(3600));
        let SignerKind::Custom(r) = &peer.kind else {
            panic!("custom")
        };
        assert_eq!(r.allowed_san_types, [SanType::Dns, SanType::Ip].into());
        assert!(r.require_san);
        assert_eq!(r.common_name, CommonNameRule::Exact("etcd-peer".into()));
        assert_eq!(r.allowed_organizations, None);
        assert!(s.signer("kubernetes.io/kube-apiserver-client").is_none());
    }

    #[test]
    fn serve_section_errors() {
        let custom = |extra: &str| {
            format!(
                "serve:\n  signers:\n  - name: kubesign.dev/x\n    ca: etcd\n    rules:\n      usages: [client auth]\n{extra}"
            )
        };
        let cases = [
            ("serve: {}\n".to_owned(), "serve.signers is empty"),
            (
                "serve:\n  signers: [{name: kubernetes.io/legacy-unknown}]\n".into(),
                "legacy-unknown is never signed",
            ),
            (
                "serve:\n  signers: [{name: kubernetes.io/other}]\n".into(),
                "unknown kubernetes.io signer",
            ),
            (
                "serve:\n  signers: [{name: kubernetes.io/kubelet-serving, ca: etcd}]\n".into(),
                "the kubernetes.io signers use the kubernetes CA",
            ),
            (
                "serve:\n  signers: [{name: kubernetes.io/kubelet-serving, rules: {usages: [client auth]}}]\n".into(),
                "keep kube-controller-manager's rules",
            ),
            (
                "serve:\n  signers: [{name: kubernetes.io/kubelet-serving}, {name: kubernetes.io/kubelet-serving}]\n".into(),
                "listed twice",
            ),
            (
                "serve:\n  signers: [{name: kubesign.dev/x, ca: etcd}]\n".into(),
                "a custom signer needs `rules`",
            ),
            (
                "serve:\n  signers: [{name: kubesign.dev/x, rules: {usages: [client auth]}}]\n".into(),
                "needs `ca: etcd` or `ca: front-proxy`",
            ),
            (
                "serve:\n  signers: [{name: kubesign.dev/x, ca: kubernetes, rules: {usages: [client auth]}}]\n".into(),
                "custom signers may not use the kubernetes CA",
            ),
            (
                "serve:\n  signers: [{name: kubesign.dev/x, ca: front-proxy, rules: {usages: [client auth]}}]\n".into(),
                "cas.front-proxy is not configured",
            ),
            (
                "serve:\n  signers: [{name: kubesign.dev/x, ca: etcd, rules: {usages: []}}]\n".into(),
                "usages is empty",
            ),
            (
                "serve:\n  signers: [{name: etcd-client, ca: etcd, rules: {usages: [client auth]}}]\n".into(),
                "not a signer name",
            ),
            (custom("      requiredUsages: [server auth]\n"), "\"server auth\" is not in usages"),
            (custom("      requiredUsages: [bogus]\n"), "unknown usage \"bogus\""),
            (custom("      commonName: {exact: a, prefix: b}\n"), "exactly one of `exact` or `prefix`"),
            (custom("      commonName: {prefix: ''}\n"), "exactly one of `exact` or `prefix`"),
            (custom("      subjectAltNames: [RID]\n"), "unknown variant"),
            (custom("      requireSubjectAltName: true\n"), "requireSubjectAltName needs"),
            (custom("      surprise: 1\n"), "unknown field"),
            (
                "serve:\n  maxDuration: 5m\n  signers: [{name: kubernetes.io/kubelet-serving}]\n".into(),
                "10 minute minimum",
            ),
            (
                "serve:\n  httpAddress: nowhere\n  signers: [{name: kubernetes.io/kubelet-serving}]\n".into(),
                "serve.httpAddress",
            ),
            (
                "serve:\n  workers: 0\n  signers: [{name: kubernetes.io/kubelet-serving}]\n".into(),
                "workers must be at least 1",
            ),
            (
                "serve:\n  leaderElection: {leaseDuration: 10s, renewDeadline: 10s}\n  signers: [{name: kubernetes.io/kubelet-serving}]\n".into(),
                "leaseDuration must be longer than renewDeadline",
            ),
            (
                "serve:\n  leaderElection: {renewDeadline: 2s, retryPeriod: 2s}\n  signers: [{name: kubernetes.io/kubelet-serving}]\n".into(),
                "renewDeadline must be longer than 1.2 x retryPeriod",
            ),
            (
                "serve:\n  leaderElection: {namespace: ''}\n  signers: [{name: kubernetes.io/kubelet-serving}]\n".into(),
                "namespace is empty",
            ),
        ];
        for (section, want) in cases {
            let e = format!("{:#}", serve(&section).unwrap_err());
            assert!(e.contains("/etc/kubesign/config.yaml"), "{e}");
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        assert!(serve(&custom("      requiredUsages: [client auth]\n")).is_ok());
    }

    /// deploy/configmap.yaml carries a valid configuration, and deploy/rbac.yaml grants `sign`
    /// for exactly its signer names.
    #[test]
    fn deploy_manifests_agree_with_the_configuration() {
        let cm: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../deploy/configmap.yaml")).unwrap();
        let text = cm["data"]["config.yaml"].as_str().unwrap();
        let c = Config::parse(text, Path::new("/etc/kubesign/config/config.yaml")).unwrap();
        let mut served: Vec<String> = c
            .serve
            .unwrap()
            .signers
            .into_iter()
            .map(|s| s.name)
            .collect();
        served.sort();
        let rbac = include_str!("../../deploy/rbac.yaml");
        let mut granted = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(rbac) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            for rule in v["rules"].as_sequence().into_iter().flatten() {
                if rule["resources"][0] == "signers" {
                    assert_eq!(rule["verbs"][0], "sign");
                    for n in rule["resourceNames"].as_sequence().unwrap() {
                        granted.push(n.as_str().unwrap().to_owned());
                    }
                }
            }
        }
        granted.sort();
        assert_eq!(served, granted);
        // The example printed by `kubesign config example` serves the same names.
        let mut example: Vec<String> = parse(EXAMPLE)
            .unwrap()
            .serve
            .unwrap()
            .signers
            .into_iter()
            .map(|s| s.name)
            .collect();
        example.sort();
        assert_eq!(example, granted);
    }
}
