//! Writing outputs so that nothing is lost: into a temporary sibling, then renamed into place.
//! An existing output is replaced only when asked (`--force`), and a failure part-way leaves
//! the previous state untouched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A folder being written: files go to a hidden temporary sibling of `target`, which
/// [`StagedDir::commit`] renames into place. Dropped without commit, the temporary is removed.
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Starts writing `target`. Fails early when `target` exists and `overwrite` is false, or
    /// when its parent folder is not writable.
    pub fn new(target: &Path, overwrite: bool) -> Result<Self> {
        if target.exists() && !overwrite {
            bail!(
                "{}: already exists (use --force to replace it)",
                target.display()
            );
        }
        let staging = sibling(target, "tmp")?;
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("{}: cannot create output folder", staging.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the finished folder into place, replacing an existing `target` (the old one is
    /// moved aside first and deleted only once the new one is in place).
    pub fn commit(mut self) -> Result<PathBuf> {
        let backup = match self.target.exists() {
            true => {
                let backup = sibling(&self.target, "old")?;
                std::fs::rename(&self.target, &backup).with_context(|| {
                    format!(
                        "{}: cannot move the old output aside",
                        self.target.display()
                    )
                })?;
                Some(backup)
            }
            false => None,
        };
        if let Err(err) = std::fs::rename(&self.staging, &self.target) {
            if let Some(backup) = &backup {
                let _ = std::fs::rename(backup, &self.target);
            }
            return Err(err).with_context(|| {
                format!(
                    "{}: cannot move the output into place",
                    self.target.display()
                )
            });
        }
        self.committed = true;
        if let Some(backup) = backup {
            remove_any(&backup).with_context(|| {
                format!("{}: cannot remove the replaced output", backup.display())
            })?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so readers see the old
/// content or the new, never a partial file.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = sibling(path, "tmp")?;
    let result = std::fs::write(&temporary, bytes)
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.with_context(|| format!("{}: cannot write", path.display()))
}

/// A hidden name beside `path`, unique to this process: `.NAME.KIND-PID`.
fn sibling(path: &Path, kind: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file or folder name", path.display()))?
        .to_string_lossy();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(".{name}.{kind}-{}", std::process::id())))
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_folder_appears_and_an_abandoned_one_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        {
            let staged = StagedDir::new(&target, false).unwrap();
            std::fs::write(staged.path().join("a"), "partial").unwrap();
        }
        assert!(!target.exists());
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "temporary left behind"
        );
        let staged = StagedDir::new(&target, false).unwrap();
        std::fs::write(staged.path().join("a"), "done").unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "done");
    }

    #[test]
    fn an_existing_output_needs_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old"), "keep").unwrap();
        let err = StagedDir::new(&target, false).err().unwrap().to_string();
        assert!(err.contains("already exists (use --force"), "{err}");
        assert!(target.join("old").exists());
        let staged = StagedDir::new(&target, true).unwrap();
        std::fs::write(staged.path().join("new"), "x").unwrap();
        staged.commit().unwrap();
        assert!(target.join("new").exists() && !target.join("old").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn files_are_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("f.json");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
