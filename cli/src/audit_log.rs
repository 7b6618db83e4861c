//! The audit log: an append-only JSON-lines file. Each record is written with a single `write`
//! and fsynced before `record` returns, so a certificate is only ever released after its record
//! is durable. The file is opened before anything is signed: if it cannot be opened, nothing is.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use signer_api::audit::{AuditError, AuditRecord, AuditSink};

/// An append-only JSON-lines audit log.
#[derive(Debug)]
pub struct JsonlAuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonlAuditLog {
    /// Opens (creating with mode 0640 if needed) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut opts = OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o640);
        }
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && !meta.is_file()
        {
            return Err(AuditError::new(
                format!(
                    "{}: the audit log is not a regular file (symlinks are refused)",
                    path.display()
                ),
                None,
            ));
        }
        let file = opts.open(path).map_err(|e| {
            AuditError::new(
                format!(
                    "{}: cannot open the audit log for appending ({e})",
                    path.display()
                ),
                Some(e),
            )
        })?;
        Ok(JsonlAuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl AuditSink for JsonlAuditLog {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut line = record.to_json_line();
        line.push('\n');
        let mut file = self.file.lock().map_err(|_| {
            AuditError::new(
                format!("{}: audit log lock poisoned", self.path.display()),
                None,
            )
        })?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| {
                AuditError::new(
                    format!(
                        "{}: cannot write the audit record ({e})",
                        self.path.display()
                    ),
                    Some(e),
                )
            })
    }
}
