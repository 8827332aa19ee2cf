//! The files the agent installs for itself and for the buildspec's later `ssh`, `docker` and `git`
//! commands: the private key (0600 in a 0700 directory, never overwriting a different key) and
//! known_hosts (each line once). Both are written atomically: a temporary file in the same
//! directory, renamed into place, so a crash leaves the old file or the new one, never half.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::files::write_atomically;

/// What installing a file did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    Written,
    AlreadyThere,
    /// The file holds another key and was left as it is.
    KeptDifferent,
    Added(usize),
}

/// Installs the key text at `path`. An existing file with the same key is left as it is (its
/// mode tightened to 0600); one with other content is left untouched too, and reported as
/// [`Installed::KeptDifferent`]: the run uses the key from memory.
pub fn install_key(path: &Path, text: &str, same_key: impl Fn(&str) -> bool) -> Result<Installed, Error> {
    let dir = crate::files::parent(path);
    ensure_private_dir(&dir)?;
    match fs::read_to_string(path) {
        Ok(existing) => {
            if existing == text || same_key(&existing) {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .map_err(|source| file_error("set the mode of", path, source))?;
                return Ok(Installed::AlreadyThere);
            }
            Ok(Installed::KeptDifferent)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            match write_atomically(path, text.as_bytes(), 0o600, false, KEY_FILE_FLAGS) {
                Ok(()) => Ok(Installed::Written),
                // Someone wrote it between our read and our rename: theirs stays.
                Err(Error::KeyFileExists { .. }) => Ok(Installed::KeptDifferent),
                Err(error) => Err(error),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => Ok(Installed::KeptDifferent),
        Err(source) => Err(file_error("read", path, source)),
    }
}

/// Adds each line that the file does not hold yet (compared with whitespace runs made one).
/// Returns how many were added. The file keeps its mode; a new one is 0644, as OpenSSH expects.
/// The user's bytes are kept exactly (a non-UTF-8 line too), and a symlink stays a symlink: the
/// file it points to gets the lines.
pub fn install_known_hosts(path: &Path, lines: &[String]) -> Result<Installed, Error> {
    let path = &symlink_target(path)?;
    let dir = crate::files::parent(path);
    ensure_private_dir(&dir)?;
    let (existing, mode) = match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path).map(|meta| meta.mode() & 0o7777).unwrap_or(0o644);
            (bytes, mode)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0o644),
        Err(source) => return Err(file_error("read", path, source)),
    };
    let normal = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
    // Compared lossily, kept as they are: a line that is not UTF-8 is never one of ours.
    let mut present: Vec<String> =
        existing.split(|byte| *byte == b'\n').map(|line| normal(&String::from_utf8_lossy(line))).collect();
    let mut content = existing.clone();
    let mut added = 0;
    for line in lines {
        let line = normal(line);
        if line.is_empty() || present.contains(&line) {
            continue;
        }
        if !content.is_empty() && !content.ends_with(b"\n") {
            content.push(b'\n');
        }
        content.extend_from_slice(line.as_bytes());
        content.push(b'\n');
        present.push(line);
        added += 1;
    }
    if added == 0 {
        return Ok(Installed::AlreadyThere);
    }
    write_atomically(path, &content, mode, true, KEY_FILE_FLAGS)?;
    Ok(Installed::Added(added))
}

/// The file a path finally names: its symlinks followed (a dangling one to the file it would
/// create), so that an atomic replace updates the user's file and keeps the link.
pub fn symlink_target(path: &Path) -> Result<PathBuf, Error> {
    let mut current = path.to_path_buf();
    // As many hops as Linux follows (MAXSYMLINKS) before it says ELOOP.
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current).map_err(|source| file_error("read the link", &current, source))?;
                current = match current.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(file_error("follow the links of", path, std::io::Error::other("too many levels of symbolic links")))
}

/// Creates the directory with mode 0700 if it is missing. An existing one keeps its mode.
pub fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| file_error("create the directory", dir, source))
}

/// The key and known_hosts files' error, with where to choose other paths.
fn file_error(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    crate::files::file_error(action, path, source, KEY_FILE_FLAGS)
}

/// The flags that choose other paths for the files this module writes.
const KEY_FILE_FLAGS: &str = "--ssh-key-file / --known-hosts-file";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_written_private_and_never_overwritten() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(".ssh/id_rsa");
        assert_eq!(install_key(&path, "KEY\n", |_| false).unwrap(), Installed::Written);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        assert_eq!(install_key(&path, "KEY\n", |_| false).unwrap(), Installed::AlreadyThere);
        assert_eq!(install_key(&path, "OTHER\n", |_| false).unwrap(), Installed::KeptDifferent);
        assert_eq!(fs::read_to_string(&path).unwrap(), "KEY\n");
        assert_eq!(install_key(&path, "SAME KEY, OTHER FORM\n", |_| true).unwrap(), Installed::AlreadyThere);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file is left");
    }

    /// Regression: a symlinked known_hosts was replaced by a regular file, and a non-UTF-8 one
    /// rewritten lossily.
    #[test]
    fn a_symlinked_or_non_utf8_known_hosts_keeps_its_link_and_bytes_and_only_gains_lines() {
        let home = tempfile::tempdir().unwrap();
        let dotfiles = home.path().join("dotfiles");
        fs::create_dir_all(&dotfiles).unwrap();
        fs::create_dir_all(home.path().join(".ssh")).unwrap();
        let target = dotfiles.join("known_hosts");
        let user_bytes = b"# caf\xe9 latin-1 comment\nold.example ssh-ed25519 AAAA".to_vec();
        fs::write(&target, &user_bytes).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let link = home.path().join(".ssh/known_hosts");
        std::os::unix::fs::symlink("../dotfiles/known_hosts", &link).unwrap();

        let lines = vec!["new.example ssh-ed25519 BBBB".to_string()];
        assert_eq!(install_known_hosts(&link, &lines).unwrap(), Installed::Added(1));
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
        let mut expected = user_bytes.clone();
        expected.extend_from_slice(b"\nnew.example ssh-ed25519 BBBB\n");
        assert_eq!(fs::read(&target).unwrap(), expected, "the user's bytes are kept exactly");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o640);
        assert_eq!(install_known_hosts(&link, &lines).unwrap(), Installed::AlreadyThere);

        // A dangling link: the file it names is created, the link kept.
        let dangling = home.path().join(".ssh/known_hosts2");
        std::os::unix::fs::symlink(dotfiles.join("later"), &dangling).unwrap();
        assert_eq!(install_known_hosts(&dangling, &lines).unwrap(), Installed::Added(1));
        assert!(fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(dotfiles.join("later")).unwrap(), "new.example ssh-ed25519 BBBB\n");
    }

    #[test]
    fn known_hosts_lines_are_added_once() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(".ssh/known_hosts");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "existing  line").unwrap();
        let lines = vec!["a b c".to_string(), "existing line".to_string(), "a  b c".to_string()];
        assert_eq!(install_known_hosts(&path, &lines).unwrap(), Installed::Added(1));
        assert_eq!(fs::read_to_string(&path).unwrap(), "existing  line\na b c\n");
        assert_eq!(install_known_hosts(&path, &lines).unwrap(), Installed::AlreadyThere);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    }
}
