//! Stable mtimes for a fresh clone (`--stable-mtimes`): BuildKit's copy of the context is
//! compared file by file on size and mtime, and a fresh `git clone` gives every file a new mtime,
//! so every file would be sent again. For a file git tracks and that is unchanged since checkout
//! (its size and mtime are those git's index recorded), the agent sends instead an mtime made
//! from the file's blob id: the same content has the same mtime on every clone, other content
//! another one. Files git does not track, or changed since checkout, keep their own mtime.
//!
//! Reads `.git/index` (format versions 2 and 3, what `git clone` writes) directly: hand-written
//! because the git crates are far larger than these forty lines, and the agent's image has no git.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The mtime's seconds for files whose time comes from their content: 1980-01-01, the earliest
/// time a zip can hold, as reproducible builds use.
const EPOCH_SECONDS: i64 = 315_532_800;

/// What git's index says of each tracked file.
#[derive(Debug, Default)]
pub struct GitIndex {
    /// The checkout's root.
    pub root: PathBuf,
    entries: HashMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    mtime_seconds: u32,
    mtime_nanos: u32,
    size: u32,
    blob: [u8; 20],
}

impl GitIndex {
    /// The index of the git checkout `dir` is in, if there is one the agent can read.
    pub fn find(dir: &Path) -> Option<GitIndex> {
        let dir = std::fs::canonicalize(dir).ok()?;
        let root = dir.ancestors().find(|ancestor| ancestor.join(".git").is_dir())?.to_path_buf();
        let data = std::fs::read(root.join(".git/index")).ok()?;
        match parse(&data) {
            Some(entries) => Some(GitIndex { root, entries }),
            None => {
                tracing::warn!(
                    "cannot read {}/.git/index (not version 2 or 3): mtimes are sent as they are",
                    root.display()
                );
                None
            }
        }
    }

    /// The mtime to send for a regular file at `path` (relative to the root, `/`-separated) with
    /// this metadata: derived from its blob id when git's index vouches for its content.
    pub fn stable_mtime(&self, path: &str, meta: &std::fs::Metadata) -> Option<i64> {
        use std::os::unix::fs::MetadataExt;
        let entry = self.entries.get(path)?;
        let unchanged = meta.mtime() == i64::from(entry.mtime_seconds)
            && meta.mtime_nsec() == i64::from(entry.mtime_nanos)
            && meta.len() as u32 == entry.size;
        unchanged.then(|| {
            let nanos =
                u32::from_be_bytes([entry.blob[0], entry.blob[1], entry.blob[2], entry.blob[3]]) % 1_000_000_000;
            EPOCH_SECONDS * 1_000_000_000 + i64::from(nanos)
        })
    }
}

/// The entries of an index file (versions 2 and 3), by path.
fn parse(data: &[u8]) -> Option<HashMap<String, IndexEntry>> {
    let word =
        |at: usize| data.get(at..at + 4).map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    if data.get(..4)? != b"DIRC" {
        return None;
    }
    let version = word(4)?;
    if !(2..=3).contains(&version) {
        return None;
    }
    let count = word(8)? as usize;
    let mut entries = HashMap::with_capacity(count.min(1 << 20));
    let mut at = 12;
    for _ in 0..count {
        let start = at;
        let mtime_seconds = word(at + 8)?;
        let mtime_nanos = word(at + 12)?;
        let size = word(at + 36)?;
        let blob: [u8; 20] = data.get(at + 40..at + 60)?.try_into().ok()?;
        let flags = u16::from_be_bytes(data.get(at + 60..at + 62)?.try_into().ok()?);
        at += 62;
        if flags & 0x4000 != 0 {
            // Version 3's extended flags.
            at += 2;
        }
        let name_end = at + data.get(at..)?.iter().position(|byte| *byte == 0)?;
        let name = String::from_utf8_lossy(&data[at..name_end]).into_owned();
        // Entries are padded with NULs to a multiple of 8 bytes (at least one NUL).
        let length = name_end - start + 1;
        at = start + length.div_ceil(8) * 8;
        // Stage 0 only (a conflicted merge has others).
        if (flags >> 12) & 0x3 == 0 {
            entries.insert(name, IndexEntry { mtime_seconds, mtime_nanos, size, blob });
        }
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn two_clones_give_unchanged_files_the_same_mtime_and_a_changed_one_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin");
        std::fs::create_dir_all(origin.join("app/src")).unwrap();
        std::fs::write(origin.join("app/src/a.txt"), "a").unwrap();
        std::fs::write(origin.join("app/b.txt"), "b").unwrap();
        git(&origin, &["init", "-q"]);
        git(&origin, &["add", "."]);
        git(&origin, &["commit", "-q", "-m", "one"]);
        let clone = |name: &str| {
            git(dir.path(), &["clone", "-q", "origin", name]);
            dir.path().join(name)
        };
        let (first, second) = (clone("first"), clone("second"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(second.join("app/b.txt"), "B").unwrap();
        let time = |checkout: &Path, path: &str| {
            let index = GitIndex::find(&checkout.join("app")).expect("the clone's index");
            index.stable_mtime(path, &std::fs::metadata(checkout.join(path)).unwrap())
        };
        let stable = time(&first, "app/src/a.txt").expect("a tracked, unchanged file");
        assert_eq!(time(&second, "app/src/a.txt"), Some(stable));
        assert!(stable / 1_000_000_000 == EPOCH_SECONDS);
        assert!(time(&first, "app/b.txt").is_some());
        assert_eq!(time(&second, "app/b.txt"), None, "a file changed since checkout keeps its own mtime");
    }

    #[test]
    fn garbage_is_not_an_index() {
        assert!(parse(b"not an index").is_none());
        assert!(parse(b"DIRC\0\0\0\x04\0\0\0\0").is_none());
        let mut truncated = b"DIRC\0\0\0\x02\0\0\0\x05".to_vec();
        truncated.extend_from_slice(&[0; 30]);
        assert!(parse(&truncated).is_none());
    }
}
