//! Writing files so that nothing is lost: every output is staged as a temporary file in its
//! target directory (written and fsynced), and only when every file of a run is staged are they
//! moved into place. A failure while moving rolls back what was already moved.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::NamedTempFile;

/// Whether a staged file may replace an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// The target must not exist when committed.
    Never,
    /// The target may exist and is replaced.
    Allowed,
}

struct Staged {
    target: PathBuf,
    tmp: NamedTempFile,
    replace: Replace,
}

/// A set of file writes that land together or not at all.
#[derive(Default)]
pub struct Transaction {
    staged: Vec<Staged>,
}

/// Refuses to read or write through a symlink at `path`.
pub fn refuse_symlink(path: &Path) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.file_type().is_symlink()
    {
        bail!(
            "{}: is a symlink; kubesign refuses to read or write through symlinks",
            path.display()
        );
    }
    Ok(())
}

/// Reads a regular file, refusing symlinks.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    refuse_symlink(path)?;
    fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

#[cfg(unix)]
fn set_mode(file: &fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &fs::File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// fsyncs `files` concurrently: one thread per file (runs are a dozen files), so the filesystem
/// can group the flushes into one journal commit. Fails with the first error, naming its file.
fn sync_all_parallel<'a>(files: impl Iterator<Item = (&'a Path, &'a fs::File)>) -> Result<()> {
    let files: Vec<(&Path, &fs::File)> = files.collect();
    let results: Vec<(PathBuf, std::io::Result<()>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|(path, file)| scope.spawn(move || (path.to_path_buf(), file.sync_all())))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        PathBuf::new(),
                        Err(std::io::Error::other("fsync thread panicked")),
                    )
                })
            })
            .collect()
    });
    for (path, result) in results {
        result.with_context(|| format!("{}: cannot write durably (fsync)", path.display()))?;
    }
    Ok(())
}

impl Transaction {
    /// A new, empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stages `contents` for `target` with permission bits `mode`.
    pub fn stage(
        &mut self,
        target: &Path,
        contents: &[u8],
        mode: u32,
        replace: Replace,
    ) -> Result<()> {
        refuse_symlink(target)?;
        if replace == Replace::Never && target.exists() {
            bail!(
                "{}: already exists; refusing to overwrite it (use --force to replace)",
                target.display()
            );
        }
        if self.staged.iter().any(|s| s.target == target) {
            bail!("{}: would be written twice", target.display());
        }
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".kubesign-")
            .tempfile_in(dir)
            .with_context(|| {
                format!(
                    "{}: cannot create a temporary file in {}",
                    target.display(),
                    dir.display()
                )
            })?;
        // Written now, made durable in `commit` (all files at once, so the journal commits
        // coalesce instead of paying one flush per file).
        set_mode(tmp.as_file(), mode)
            .and_then(|()| tmp.write_all(contents))
            .with_context(|| format!("{}: cannot write", target.display()))?;
        self.staged.push(Staged {
            target: target.to_owned(),
            tmp,
            replace,
        });
        Ok(())
    }

    /// Moves every staged file into place. On failure, files already moved are removed (new
    /// files) or restored (replaced files), and the error is returned.
    pub fn commit(self) -> Result<()> {
        // Every staged file is fsynced before any is moved into place.
        sync_all_parallel(
            self.staged
                .iter()
                .map(|s| (s.target.as_path(), s.tmp.as_file())),
        )?;
        let mut done: Vec<(PathBuf, Option<Vec<u8>>, Option<fs::Permissions>)> = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut failure = None;
        for s in self.staged {
            let previous = match s.replace {
                Replace::Allowed => fs::read(&s.target).ok(),
                Replace::Never => None,
            };
            let perms = fs::metadata(&s.target).ok().map(|m| m.permissions());
            let result = match s.replace {
                Replace::Never => s.tmp.persist_noclobber(&s.target).map(|_| ()).map_err(|e| {
                    anyhow!(e.error).context(format!(
                        "{}: cannot move into place (it may have appeared meanwhile)",
                        s.target.display()
                    ))
                }),
                Replace::Allowed => s.tmp.persist(&s.target).map(|_| ()).map_err(|e| {
                    anyhow!(e.error)
                        .context(format!("{}: cannot move into place", s.target.display()))
                }),
            };
            match result {
                Ok(()) => {
                    if let Some(d) = s.target.parent() {
                        dirs.push(d.to_owned());
                    }
                    done.push((s.target, previous, perms));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (target, previous, perms) in done.into_iter().rev() {
                match previous {
                    None => {
                        let _ = fs::remove_file(&target);
                    }
                    Some(bytes) => {
                        let _ = fs::write(&target, bytes);
                        if let Some(p) = perms {
                            let _ = fs::set_permissions(&target, p);
                        }
                    }
                }
            }
            return Err(e.context("no file was changed (the files already moved were rolled back)"));
        }
        dirs.sort();
        dirs.dedup();
        let opened: Vec<(PathBuf, fs::File)> = dirs
            .into_iter()
            .filter_map(|d| fs::File::open(&d).ok().map(|f| (d, f)))
            .collect();
        // A directory that cannot be synced is not an error worth unwinding the renames for.
        let _ = sync_all_parallel(opened.iter().map(|(d, f)| (d.as_path(), f)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.crt");
        let b = dir.path().join("b.crt");
        let mut t = Transaction::new();
        t.stage(&a, b"A", 0o644, Replace::Never).unwrap();
        t.stage(&b, b"B", 0o644, Replace::Never).unwrap();
        // b appears after staging: commit must fail and remove a.
        fs::write(&b, b"someone else").unwrap();
        assert!(t.commit().is_err());
        assert!(!a.exists());
        assert_eq!(fs::read(&b).unwrap(), b"someone else");
        // No temporary files are left behind.
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn refuses_existing_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.crt");
        fs::write(&a, b"old").unwrap();
        let mut t = Transaction::new();
        assert!(t.stage(&a, b"new", 0o644, Replace::Never).is_err());
        t.stage(&a, b"new", 0o644, Replace::Allowed).unwrap();
        t.commit().unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"new");
        #[cfg(unix)]
        {
            let l = dir.path().join("l.crt");
            std::os::unix::fs::symlink(&a, &l).unwrap();
            let mut t = Transaction::new();
            let e = t
                .stage(&l, b"x", 0o644, Replace::Allowed)
                .unwrap_err()
                .to_string();
            assert!(e.contains("symlink"), "{e}");
        }
    }
}
