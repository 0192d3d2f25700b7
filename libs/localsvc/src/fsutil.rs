//! File system helpers: binary lookup, ownership and permissions for
//! running postgres as an unprivileged user when we are root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use nix::unistd::{User, geteuid};

use crate::error::{Error, Result};

/// The user a child process runs as when we are root.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when not root; the `postgres` system user when root.
pub(crate) fn postgres_user() -> Result<Option<RunAs>> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .map_err(|e| Error::sys("look up postgres user", e))?
        .ok_or(Error::NoPostgresUser)?;
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// First executable `name` in the directories of `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Creates `dir` (and parents), returns its canonical absolute path.
pub(crate) fn create_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| Error::io_path("create dir", dir, e))?;
    dir.canonicalize().map_err(|e| Error::io_path("resolve dir", dir, e))
}

pub(crate) fn chown(path: &Path, user: RunAs) -> Result<()> {
    lchown(path, Some(user.uid), Some(user.gid)).map_err(|e| Error::io_path("chown", path, e))
}

/// Chowns `path` and everything below it (symlinks themselves, not targets).
pub(crate) fn chown_recursive(path: &Path, user: RunAs) -> Result<()> {
    chown(path, user)?;
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io_path("stat", path, e))?;
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(|e| Error::io_path("read dir", path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io_path("read dir", path, e))?;
            chown_recursive(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// Makes sure `user` can traverse `dir` and all its ancestors. Ancestors
/// owned by us (root) that block traversal get the one missing search bit
/// added (e.g. a 0700 temp dir becomes 0701); anything else is an error.
pub(crate) fn ensure_traversable(dir: &Path, user: RunAs) -> Result<()> {
    let euid = geteuid().as_raw();
    let temp = std::env::temp_dir().canonicalize().ok();
    for anc in dir.ancestors() {
        let meta = fs::metadata(anc).map_err(|e| Error::io_path("stat", anc, e))?;
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        let mode = meta.permissions().mode();
        if mode & bit != 0 {
            continue;
        }
        if meta.uid() != euid {
            return Err(Error::Invalid(format!(
                "{} is not traversable by uid {}, fix its permissions",
                anc.display(),
                user.uid
            )));
        }
        let new_mode = (mode & 0o7777) | bit;
        fs::set_permissions(anc, fs::Permissions::from_mode(new_mode)).map_err(|e| Error::io_path("chmod", anc, e))?;
        if temp.as_deref().is_some_and(|t| anc.starts_with(t)) {
            tracing::debug!(path = %anc.display(), mode = format!("{new_mode:o}"), "made dir traversable for postgres");
        } else {
            tracing::warn!(path = %anc.display(), mode = format!("{new_mode:o}"), "made dir traversable for postgres");
        }
    }
    Ok(())
}

/// Owner uid of `path`.
pub(crate) fn owner(path: &Path) -> Result<u32> {
    fs::symlink_metadata(path)
        .map(|m| m.uid())
        .map_err(|e| Error::io_path("stat", path, e))
}

/// Removes `path` if it exists (dir or file).
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_path("stat", path, e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| Error::io_path("remove", path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io_path("remove", path, e)),
    }
}

/// Runs a blocking command, failing with its output when it exits non-zero.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("run {name}"), e))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(Error::Command {
            cmd: name,
            status: out.status.to_string(),
            output: text.trim().to_string(),
        })
    }
}
