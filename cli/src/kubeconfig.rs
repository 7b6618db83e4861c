//! Reading and filling the kubeconfig files kubeadm writes: one cluster, one user, one context.
//! kubesign sets the current context's user `client-certificate-data` and its cluster's
//! `certificate-authority-data`, and keeps everything else (including `client-key-data`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_yaml::{Mapping, Value};
use zeroize::Zeroizing;

/// A kubeadm kubeconfig file.
pub struct Kubeconfig {
    path: PathBuf,
    doc: Value,
    user_index: usize,
    cluster_index: usize,
}

fn entry_index(doc: &Value, list: &str, name: &str, path: &Path) -> Result<usize> {
    let items = doc
        .get(list)
        .and_then(Value::as_sequence)
        .ok_or_else(|| anyhow!("{}: has no {list} list", path.display()))?;
    items
        .iter()
        .position(|i| i.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| anyhow!("{}: {list} has no entry named {name:?}", path.display()))
}

impl Kubeconfig {
    /// Reads a kubeconfig and locates the current context's user and cluster.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::fsutil::read_regular(path)?;
        Self::parse(path, &bytes)
    }

    /// Parses kubeconfig text; `path` names the file in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let doc: Value = serde_yaml::from_slice(bytes)
            .with_context(|| format!("{}: not valid YAML", path.display()))?;
        if doc.get("kind").and_then(Value::as_str) != Some("Config") {
            bail!(
                "{}: not a kubeconfig (kind: Config expected)",
                path.display()
            );
        }
        let current = doc
            .get("current-context")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("{}: current-context is not set", path.display()))?
            .to_owned();
        let contexts = doc
            .get("contexts")
            .and_then(Value::as_sequence)
            .ok_or_else(|| anyhow!("{}: has no contexts list", path.display()))?;
        let ctx = contexts
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(current.as_str()))
            .and_then(|c| c.get("context"))
            .ok_or_else(|| {
                anyhow!(
                    "{}: current-context {current:?} is not in contexts",
                    path.display()
                )
            })?;
        let user = ctx
            .get("user")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let cluster = ctx
            .get("cluster")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let user_index = entry_index(&doc, "users", &user, path)?;
        let cluster_index = entry_index(&doc, "clusters", &cluster, path)?;
        Ok(Kubeconfig {
            path: path.to_owned(),
            doc,
            user_index,
            cluster_index,
        })
    }

    fn section(&self, list: &str, index: usize, inner: &str) -> Option<&Mapping> {
        self.doc
            .get(list)?
            .as_sequence()?
            .get(index)?
            .get(inner)?
            .as_mapping()
    }

    fn section_mut(&mut self, list: &str, index: usize, inner: &str) -> Result<&mut Mapping> {
        let path = self.path.display().to_string();
        let entry = self
            .doc
            .get_mut(list)
            .and_then(Value::as_sequence_mut)
            .and_then(|s| s.get_mut(index))
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| anyhow!("{path}: malformed {list} entry"))?;
        let key = Value::from(inner);
        if !entry.contains_key(&key) || entry.get(&key).is_some_and(Value::is_null) {
            entry.insert(key.clone(), Value::Mapping(Mapping::new()));
        }
        entry
            .get_mut(&key)
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| anyhow!("{path}: {list}[].{inner} is not a mapping"))
    }

    fn data(&self, list: &str, index: usize, inner: &str, field: &str) -> Result<Option<Vec<u8>>> {
        match self
            .section(list, index, inner)
            .and_then(|m| m.get(field))
            .and_then(Value::as_str)
        {
            None | Some("") => Ok(None),
            Some(b64) => STANDARD
                .decode(b64.trim())
                .map(Some)
                .with_context(|| format!("{}: {field} is not valid base64", self.path.display())),
        }
    }

    /// The client key (PEM) from client-key-data. kubeadm always embeds it.
    pub fn client_key_pem(&self) -> Result<Zeroizing<Vec<u8>>> {
        if self
            .section("users", self.user_index, "user")
            .and_then(|m| m.get("client-key"))
            .is_some()
        {
            bail!(
                "{}: the user's key is a file reference (client-key); kubesign expects client-key-data as kubeadm writes it",
                self.path.display()
            );
        }
        let key = self
            .data("users", self.user_index, "user", "client-key-data")?
            .ok_or_else(|| {
                anyhow!(
                    "{}: client-key-data is empty: expected the key kubeadm generated",
                    self.path.display()
                )
            })?;
        Ok(Zeroizing::new(key))
    }

    /// The embedded client certificate (PEM), if any.
    pub fn client_certificate_pem(&self) -> Result<Option<Vec<u8>>> {
        self.data("users", self.user_index, "user", "client-certificate-data")
    }

    /// The embedded CA certificate (PEM), if any.
    pub fn certificate_authority_pem(&self) -> Result<Option<Vec<u8>>> {
        self.data(
            "clusters",
            self.cluster_index,
            "cluster",
            "certificate-authority-data",
        )
    }

    /// Sets client-certificate-data.
    pub fn set_client_certificate(&mut self, pem: &[u8]) -> Result<()> {
        let user = self.section_mut("users", self.user_index, "user")?;
        user.insert(
            "client-certificate-data".into(),
            STANDARD.encode(pem).into(),
        );
        Ok(())
    }

    /// Sets certificate-authority-data to exactly these bytes.
    pub fn set_certificate_authority(&mut self, pem: &[u8]) -> Result<()> {
        let cluster = self.section_mut("clusters", self.cluster_index, "cluster")?;
        cluster.insert(
            "certificate-authority-data".into(),
            STANDARD.encode(pem).into(),
        );
        Ok(())
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(&self.doc)
            .with_context(|| format!("{}: cannot serialize", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: \"\"\n    server: https://127.0.0.1:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\ncurrent-context: kubernetes-admin@kubernetes\nkind: Config\npreferences: {}\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: \"\"\n    client-key-data: a2V5\n";

    #[test]
    fn fills_and_keeps() {
        let mut k = Kubeconfig::parse(Path::new("admin.conf"), KUBEADM.as_bytes()).unwrap();
        assert_eq!(&*k.client_key_pem().unwrap(), b"key");
        assert_eq!(k.client_certificate_pem().unwrap(), None);
        k.set_client_certificate(b"CERT").unwrap();
        k.set_certificate_authority(b"CA\n").unwrap();
        let out = k.to_yaml().unwrap();
        let again = Kubeconfig::parse(Path::new("admin.conf"), out.as_bytes()).unwrap();
        assert_eq!(
            again.client_certificate_pem().unwrap().as_deref(),
            Some(&b"CERT"[..])
        );
        assert_eq!(
            again.certificate_authority_pem().unwrap().as_deref(),
            Some(&b"CA\n"[..])
        );
        assert_eq!(&*again.client_key_pem().unwrap(), b"key");
    }

    #[test]
    fn errors_name_the_file() {
        let e = Kubeconfig::parse(Path::new("x.conf"), b"kind: Config\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("x.conf") && e.contains("current-context"), "{e}");
        let e = Kubeconfig::parse(Path::new("x.conf"), b"a: [")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("x.conf"), "{e}");
    }
}
