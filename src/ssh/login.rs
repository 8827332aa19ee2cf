//! What the agent logs into an SSH host with: the keys it offers (JETS_SSH_KEY, else the usual
//! `~/.ssh/id_*` files) and the host keys it trusts (JETS_SSH_KNOWN and the known_hosts file).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::secrets::Secret;
use crate::ssh::key::SshKey;
use crate::ssh::known_hosts::KnownHosts;

/// A key to offer, with how the log names it.
pub type LoginKey = (String, Arc<russh::keys::PrivateKey>);

/// The keys to log into `host` with: JETS_SSH_KEY, else the `id_*` files beside the key file.
pub fn login_keys(
    host: &str,
    ssh_key: Option<&SshKey>,
    key_file: &Path,
    passphrase: Option<&Secret>,
) -> Result<Vec<LoginKey>> {
    if let Some(key) = ssh_key {
        return Ok(vec![(key.describe(), Arc::new(key.key.clone()))]);
    }
    let candidates = default_key_files(key_file);
    let mut keys = Vec::new();
    for path in &candidates {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        match SshKey::parse(&text, passphrase) {
            Ok(key) => keys.push((format!("{} ({})", key.describe(), path.display()), Arc::new(key.key))),
            Err(error) => tracing::warn!("skipping {}: it {error}", path.display()),
        }
    }
    if keys.is_empty() {
        let tried: Vec<String> = candidates.iter().map(|path| path.display().to_string()).collect();
        return Err(Error::NoSshKey { host: host.to_string(), tried: tried.join(", ") });
    }
    Ok(keys)
}

/// The key files OpenSSH would offer without `-i`, in its order: `id_ed25519`, `id_ecdsa`, `id_rsa`
/// beside the key file (`~/.ssh`).
pub fn default_key_files(key_file: &Path) -> Vec<PathBuf> {
    let dir = key_file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".ssh"));
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|name| dir.join(name)).collect()
}

/// The public halves of the keys [`login_keys`] would offer without JETS_SSH_KEY, read quietly
/// (a file that is missing or cannot be opened is left out: the login warns of it when it comes
/// to it, and offers it not).
pub fn default_public_keys(key_file: &Path, passphrase: Option<&Secret>) -> Vec<russh::keys::PublicKey> {
    let keys = default_key_files(key_file).into_iter().filter_map(|path| std::fs::read_to_string(path).ok());
    keys.filter_map(|text| SshKey::parse(&text, passphrase).ok()).map(|key| key.key.public_key().clone()).collect()
}

/// The host keys a run trusts for its SSH hosts: each candidate's pasted known_hosts (JETS_SSH_KNOWN
/// or its per-arch variable) and the known_hosts file. A run of several hosts (a pool, a host per
/// platform) asks for them once per host: the file is read once, each distinct pasted text parsed
/// once, and each `@cert-authority` line warned of once, not once per host.
pub struct TrustedHosts {
    file: PathBuf,
    read: Mutex<TrustedRead>,
}

/// What [`TrustedHosts`] has read so far.
#[derive(Default)]
struct TrustedRead {
    /// The file's entries, once read (empty when there is no file).
    file: Option<KnownHosts>,
    /// For each pasted text asked for (`None`: none), the pasted entries and the file's.
    combined: Vec<(Option<String>, Arc<KnownHosts>)>,
    /// The `@cert-authority` entries warned of (a pasted line is often in the file too, installed
    /// there by the run).
    warned: HashSet<String>,
}

impl TrustedHosts {
    pub fn new(file: &Path) -> TrustedHosts {
        TrustedHosts { file: file.to_path_buf(), read: Mutex::default() }
    }

    /// The entries trusted for a host whose pasted known_hosts is `pasted`: those lines, then the
    /// file's. A file that cannot be read is an error each time it is asked for, as it would be alone.
    pub fn for_host(&self, pasted: Option<&str>) -> Result<Arc<KnownHosts>> {
        // Held only while reading and parsing (no await): hosts connected at once wait for the first read.
        let mut read = self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, known)) = read.combined.iter().find(|(text, _)| text.as_deref() == pasted) {
            return Ok(known.clone());
        }
        if read.file.is_none() {
            let file = read_known_hosts_file(&self.file)?;
            read.file = Some(file);
        }
        let mut known = KnownHosts::default();
        if let Some(text) = pasted {
            known.add_pasted(text, "JETS_SSH_KNOWN");
        }
        known.hosts.extend(read.file.iter().flat_map(|file| file.hosts.iter().cloned()));
        warn_of_cert_authorities(&known, &mut read.warned);
        let known = Arc::new(known);
        read.combined.push((pasted.map(str::to_string), known.clone()));
        Ok(known)
    }
}

/// The entries of the known_hosts file; none when there is no file.
fn read_known_hosts_file(path: &Path) -> Result<KnownHosts> {
    let mut known = KnownHosts::default();
    // Read as bytes: a line that is not UTF-8 (a Latin-1 comment) must not make the file unreadable.
    match std::fs::read(path) {
        Ok(bytes) => {
            let bad = known.add(&String::from_utf8_lossy(&bytes), &path.display().to_string());
            if !bad.is_empty() {
                tracing::debug!("{}: {} lines are not known_hosts entries and were skipped", path.display(), bad.len());
            }
            tracing::debug!("read {}: {} entries", path.display(), known.hosts.len());
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::LocalFile { action: "read", path: path.to_path_buf(), source, hint: None });
        }
    }
    Ok(known)
}

/// A warning for each `@cert-authority` line of `known` not warned of yet (the same entry in
/// JETS_SSH_KNOWN and the file is one warning, naming the first).
fn warn_of_cert_authorities(known: &KnownHosts, warned: &mut HashSet<String>) {
    for (line, entry) in known.cert_authority_lines().into_iter().zip(known.cert_authority_entries()) {
        if !warned.insert(entry) {
            continue;
        }
        tracing::warn!(
            "{line}: @cert-authority lines are not supported: the agent does not accept host certificates, \
             so this line lets no host in; add the host's own key (ssh-keyscan) to JETS_SSH_KNOWN"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASTED: &str =
        "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkvi7q87GfREbYKvyG0k1d9H6j3l1JFp0cjgeLiPwsy";
    const LINE: &str =
        "build.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkvi7q87GfREbYKvyG0k1d9H6j3l1JFp0cjgeLiPwsy";

    #[test]
    fn the_file_is_read_once_and_each_pasted_text_parsed_once_for_every_host_of_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("{LINE}\n")).unwrap();
        let trusted = TrustedHosts::new(&file);
        let first = trusted.for_host(Some(PASTED)).unwrap();
        assert_eq!(first.hosts.len(), 2);
        assert_eq!(first.hosts[0].source, "JETS_SSH_KNOWN", "the pasted lines come first");
        // Gone after the first read: the run goes on with what it read.
        std::fs::remove_file(&file).unwrap();
        let again = trusted.for_host(Some(PASTED)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let without = trusted.for_host(None).unwrap();
        assert_eq!(without.hosts.len(), 1, "the file's entry, read once");
        assert!(!Arc::ptr_eq(&first, &without));
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails (not "not found").
        let error = TrustedHosts::new(dir.path()).for_host(None).unwrap_err();
        assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
    }
}
