//! The audit log: an append-only JSON-lines file. The file is opened before anything is signed:
//! if it cannot be opened, nothing is.
//!
//! - [`JsonlAuditLog`] as an [`AuditSink`] writes each record with a single `write` and fsyncs it
//!   before `record` returns (`kubesign serve` releases each certificate right after).
//! - [`AuditBatch`] is for the all-or-nothing commands (`sign`, `renew`), which hold
//!   every certificate in memory until the end: `record` keeps the line, and
//!   [`AuditBatch::commit`] writes all lines and fsyncs once. The commands call it before they
//!   write any file, so the rule "recorded before released" holds with one flush per run.

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

/// Records held until [`AuditBatch::commit`]; see the module documentation for when that is
/// enough.
#[derive(Debug)]
pub struct AuditBatch<'a> {
    log: &'a JsonlAuditLog,
    lines: Mutex<String>,
}

impl JsonlAuditLog {
    /// A batch of records for this log.
    pub fn batch(&self) -> AuditBatch<'_> {
        AuditBatch {
            log: self,
            lines: Mutex::new(String::new()),
        }
    }
}

impl AuditBatch<'_> {
    /// Appends every held record with one write and fsyncs. Nothing may be released before this
    /// returns `Ok`.
    pub fn commit(self) -> Result<(), AuditError> {
        let path = self.log.path.display().to_string();
        let lines = self
            .lines
            .into_inner()
            .map_err(|_| AuditError::new(format!("{path}: audit batch poisoned"), None))?;
        if lines.is_empty() {
            return Ok(());
        }
        let mut file = self
            .log
            .file
            .lock()
            .map_err(|_| AuditError::new(format!("{path}: audit log lock poisoned"), None))?;
        file.write_all(lines.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| {
                AuditError::new(
                    format!("{path}: cannot write the audit records ({e})"),
                    Some(e),
                )
            })
    }
}

#[async_trait]
impl AuditSink for AuditBatch<'_> {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut lines = self
            .lines
            .lock()
            .map_err(|_| AuditError::new("audit batch poisoned", None))?;
        lines.push_str(&record.to_json_line());
        lines.push('\n');
        Ok(())
    }
}
