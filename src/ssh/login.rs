//! What the agent logs into an SSH host with: the keys it offers (JETS_SSH_KEY, else the usual
//! `~/.ssh/id_*` files) and the host keys it trusts (JETS_SSH_KNOWN and the known_hosts file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let dir = key_file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".ssh"));
    let candidates: Vec<PathBuf> = ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|name| dir.join(name)).collect();
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

/// JETS_SSH_KNOWN and the known_hosts file, both trusted.
pub fn trusted_hosts(pasted: Option<&str>, path: &Path) -> Result<KnownHosts> {
    let mut known = KnownHosts::default();
    if let Some(text) = pasted {
        known.add_pasted(text, "JETS_SSH_KNOWN");
    }
    // Read as bytes: a line that is not UTF-8 (a Latin-1 comment) must not make the file unreadable.
    match std::fs::read(path) {
        Ok(bytes) => {
            let bad = known.add(&String::from_utf8_lossy(&bytes), &path.display().to_string());
            if !bad.is_empty() {
                tracing::debug!("{}: {} lines are not known_hosts entries and were skipped", path.display(), bad.len());
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::LocalFile { action: "read", path: path.to_path_buf(), source, hint: None });
        }
    }
    for line in known.cert_authority_lines() {
        tracing::warn!(
            "{line}: @cert-authority lines are not supported: the agent does not accept host certificates, \
             so this line lets no host in; add the host's own key (ssh-keyscan) to JETS_SSH_KNOWN"
        );
    }
    Ok(known)
}
