//! The user's files the agent writes (the key, known_hosts, config.json, the metadata file,
//! imagedefinitions.json): each through a temporary file in the same directory renamed into place,
//! so that a crash leaves the old file or the new one, never half of one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Writes a file through a temporary file in the same directory and a rename. With `replace`
/// false, an existing file is never replaced (the rename fails instead). `flags` names the flags or
/// variables that choose another path, for the hint of a permission error.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32, replace: bool, flags: &str) -> Result<(), Error> {
    let dir = parent(path);
    let mut temp = tempfile::Builder::new()
        .prefix(".agent-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(|source| file_error("create a temporary file in", &dir, source, flags))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|source| file_error("write", temp.path(), source, flags))?;
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(mode))
        .map_err(|source| file_error("set the mode of", temp.path(), source, flags))?;
    let result = if replace { temp.persist(path).map(drop) } else { temp.persist_noclobber(path).map(drop) };
    result.map_err(|error| {
        if error.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::KeyFileExists { path: path.to_path_buf() }
        } else {
            file_error("write", path, error.error, flags)
        }
    })
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A local file's error; permission denied gets a hint naming `flags`, which choose another path.
pub fn file_error(action: &'static str, path: &Path, source: std::io::Error, flags: &str) -> Error {
    let hint = (source.kind() == std::io::ErrorKind::PermissionDenied).then(|| {
        format!("check the owner and mode of the file and its directory, or choose another path with {flags}")
    });
    Error::LocalFile { action, path: path.to_path_buf(), source, hint }
}
