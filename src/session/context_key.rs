//! The session's shared key: the name under which BuildKit keeps its copy of a synced context
//! between builds, so that the next build sends only what changed. The docker CLI and buildx
//! derive it from a node id kept in HOME, which a fresh CI machine does not have; the agent
//! derives it from what stays the same from one build of the app to the next on a fresh machine:
//! the image repository and the context's path relative to the source root. Never an absolute
//! path (CodeBuild's source directory changes every build); hashed, so the header is ASCII.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The key, and where it came from (for the plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    pub key: String,
    pub source: String,
}

/// The source root CodeBuild checks out to.
pub const CODEBUILD_SRC_DIR: &str = "CODEBUILD_SRC_DIR";

/// The key given by the user (`--context-key`, `AGENT_CONTEXT_KEY`), named by where it came from.
pub fn given(key: &str, origin: &str) -> SharedKey {
    SharedKey { key: hash(&format!("given\0{key}")), source: format!("{origin} {key:?}") }
}

/// The key derived for `repository` (without tag) and the context directory.
pub fn derive(repository: &str, context: &Path, codebuild_src_dir: Option<&Path>) -> SharedKey {
    let context = canonical(context);
    let (relative, root) = relative_to_root(&context, codebuild_src_dir.map(canonical).as_deref());
    SharedKey {
        key: hash(&format!("derived\0{repository}\0{relative}")),
        source: format!("image {repository}, context {relative:?} in {root}"),
    }
}

/// The path as the file system names it (links resolved), else made absolute as it is.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_path_buf())
}

/// The context's path relative to the source root, and what the root is.
fn relative_to_root(context: &Path, codebuild_src_dir: Option<&Path>) -> (String, &'static str) {
    let slashed = |relative: &Path| {
        let text = relative
            .components()
            .map(|component| component.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if text.is_empty() { ".".to_string() } else { text }
    };
    if let Some(relative) = codebuild_src_dir.and_then(|root| context.strip_prefix(root).ok()) {
        return (slashed(relative), CODEBUILD_SRC_DIR);
    }
    if let Some(root) = context.ancestors().find(|dir| dir.join(".git").exists()) {
        if let Ok(relative) = context.strip_prefix(root) {
            return (slashed(relative), "the git checkout");
        }
    }
    let name = context.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    (if name.is_empty() { ".".to_string() } else { name }, "no source root (its directory name)")
}

fn hash(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_same_wherever_codebuild_checks_out() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for root in [&first, &second] {
            std::fs::create_dir_all(root.path().join("services/api")).unwrap();
        }
        let key = |root: &tempfile::TempDir| {
            derive("registry.example/app", &root.path().join("services/api"), Some(root.path()))
        };
        assert_eq!(key(&first), key(&second));
        assert_eq!(key(&first).source, "image registry.example/app, context \"services/api\" in CODEBUILD_SRC_DIR");
        assert!(key(&first).key.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!key(&first).source.contains(&first.path().display().to_string()));
    }

    #[test]
    fn the_git_root_is_the_source_root_without_codebuild() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(".git")).unwrap();
        std::fs::create_dir_all(root.path().join("app")).unwrap();
        let key = derive("app", &root.path().join("app"), None);
        assert_eq!(key.source, "image app, context \"app\" in the git checkout");
        let top = derive("app", root.path(), None);
        assert_eq!(top.source, "image app, context \".\" in the git checkout");
    }

    #[test]
    fn another_repository_or_context_is_another_key() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a")).unwrap();
        std::fs::create_dir_all(root.path().join("b")).unwrap();
        let a = derive("app", &root.path().join("a"), Some(root.path()));
        assert_ne!(a.key, derive("app", &root.path().join("b"), Some(root.path())).key);
        assert_ne!(a.key, derive("other", &root.path().join("a"), Some(root.path())).key);
        assert_ne!(given("k", "--context-key").key, given("l", "--context-key").key);
    }
}
