//! Crash-safe file writes: the new contents go to a temporary file next to the target, are
//! fsynced, then renamed over it, and the rename is fsynced. A crash at any point leaves either
//! the old file or the new one, never a torn mix. Index files, owner keys, device keys, tokens
//! and QR images are all written this way.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    stage(path, bytes)?.commit()
}

/// [`write`] for a secret: the file is created with mode 0600 (owner only) on Unix, so no
/// moment exists when the secret is readable by others.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    stage_with(path, bytes, true)?.commit()
}

/// The first half of [`write`], the slow part: written and fsynced under a temporary name.
/// [`Staged::commit`] renames it into place; dropping the [`Staged`] instead removes it.
pub fn stage(path: &Path, bytes: &[u8]) -> Result<Staged> {
    stage_with(path, bytes, false)
}

/// A file written and fsynced under a temporary name next to its target, not yet renamed into
/// place. Dropping it without [`Staged::commit`] removes the temporary file.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    done: bool,
}

fn stage_with(path: &Path, bytes: &[u8], private: bool) -> Result<Staged> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A stale temporary file (an earlier crash of a process with the same id) is removed, and
    // the new one is created fresh: an existing file would keep its old permissions.
    let _ = std::fs::remove_file(&tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let staged = Staged {
        tmp: tmp.clone(),
        path: path.to_path_buf(),
        dir,
        done: false,
    };
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    Ok(staged)
}

impl Staged {
    /// The second half: renames over the target and persists the rename.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.done = true;
        if let Ok(d) = File::open(&self.dir) {
            // Persist the rename; not every platform allows fsync on a directory.
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        write(&p, b"old").unwrap();
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_stage_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        write(&p, b"old").unwrap();
        drop(stage(&p, b"new").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn not_a_file_path_is_an_error() {
        assert!(matches!(
            write(Path::new("/"), b"x"),
            Err(Error::InvalidInput(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn private_file_is_owner_only_even_over_a_stale_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.json");
        // A world-readable leftover under the exact temporary name this process would use.
        let stale = dir
            .path()
            .join(format!(".key.json.tmp{}", std::process::id()));
        std::fs::write(&stale, b"stale").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"secret").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        assert!(!stale.exists());
    }
}
