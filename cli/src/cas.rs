//! Loading the configured CAs: the certificate from its path, the key from its backend, and the
//! check that they belong together.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use signer_api::{CaRole, CertificateAuthority};

use crate::config::Config;

/// The CAs a command needs, with the exact bytes of each CA certificate file.
pub struct LoadedCas {
    cas: BTreeMap<CaRole, (CertificateAuthority, Vec<u8>)>,
}

impl LoadedCas {
    /// Loads `roles` from the configuration.
    pub async fn load(config: &Config, roles: impl IntoIterator<Item = CaRole>) -> Result<Self> {
        let backends = crate::backends::Backends::new(&config.backends);
        let mut cas = BTreeMap::new();
        for role in roles {
            if cas.contains_key(&role) {
                continue;
            }
            let ca = config.ca(role).ok_or_else(|| {
                anyhow!(
                    "{}: the {role} CA is needed but cas.{} is not configured",
                    config.path.display(),
                    role.config_name()
                )
            })?;
            crate::backends::check_compiled_in(&ca.key)
                .with_context(|| format!("cas.{role}.key {}", ca.key))?;
            let cert = crate::fsutil::read_regular(&ca.certificate).with_context(|| {
                format!(
                    "cas.{role}.certificate (run `kubesign ca init --config {}` to create the CAs)",
                    config.path.display()
                )
            })?;
            let signer = backends
                .open_signer(&ca.key)
                .await
                .with_context(|| format!("cas.{role}.key {}", ca.key))?;
            let authority =
                CertificateAuthority::new(role, &cert, Arc::clone(&signer), ca.key.to_string())
                    .with_context(|| format!("{}", ca.certificate.display()))?;
            authority
                .check_usable(std::time::SystemTime::now())
                .with_context(|| format!("{}", ca.certificate.display()))?;
            tracing::debug!(ca = %role, key = %signer.describe(), "CA loaded");
            cas.insert(role, (authority, cert));
        }
        Ok(LoadedCas { cas })
    }

    /// A loaded CA.
    pub fn get(&self, role: CaRole) -> Result<&CertificateAuthority> {
        self.cas
            .get(&role)
            .map(|(c, _)| c)
            .ok_or_else(|| anyhow!("the {role} CA is not loaded"))
    }

    /// The CA certificate file's bytes, exactly as on disk.
    pub fn certificate_bytes(&self, role: CaRole) -> Result<&[u8]> {
        self.cas
            .get(&role)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| anyhow!("the {role} CA is not loaded"))
    }

    /// The loaded roles.
    pub fn roles(&self) -> impl Iterator<Item = CaRole> + '_ {
        self.cas.keys().copied()
    }
}
