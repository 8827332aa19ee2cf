//! The install steps: JETS_SSH_KEY and JETS_SSH_KNOWN written where later `ssh`, `git` and
//! `docker` commands look, with the step's outcome in words and a warning where OpenSSH will not see
//! what was written.

use std::path::Path;

use crate::error::Result;
use crate::secrets::Secret;
use crate::ssh::account;
use crate::ssh::files::{self, Installed};
use crate::ssh::key::SshKey;
use crate::ssh::known_hosts::meaningful_lines;

/// Writes the key to `path` unless a key is there; an existing different key is kept (and said so).
pub fn install_key(path: &Path, key: &SshKey, passphrase: Option<&Secret>) -> Result<String> {
    warn_if_home_is_not_the_accounts(path);
    let same_key = |existing: &str| {
        SshKey::parse(existing, passphrase).is_ok_and(|other| other.key.public_key() == key.key.public_key())
    };
    Ok(match files::install_key(path, key.text.expose(), same_key)? {
        Installed::AlreadyThere => format!("{} already holds {}", path.display(), key.describe()),
        Installed::KeptDifferent => {
            tracing::warn!(
                "{} already holds a different key and was left untouched: the agent logs in with JETS_SSH_KEY \
                 from memory, but later ssh, git and docker (ssh://) commands will find the other key there, \
                 not JETS_SSH_KEY; to install it for them, pass --ssh-key-file PATH and point ssh at it \
                 (IdentityFile, or ssh -i PATH)",
                path.display()
            );
            format!("kept the different key in {}; {} is used from memory", path.display(), key.describe())
        }
        _ => format!("wrote {} ({})", path.display(), key.describe()),
    })
}

/// The run's own key for EC2 Instance Connect is written nowhere: said, with a warning that later
/// commands of the buildspec find no key.
pub fn keep_in_memory(path: &Path, key: &SshKey) -> String {
    tracing::warn!(
        "JETS_SSH_KEY=ec2-instance-connect: the agent logs in with a key made for this run and kept in memory; \
         {} is not written, so later ssh, git and docker (ssh://) commands of the buildspec have no key",
        path.display()
    );
    format!("{}, made for this run, kept in memory; {} not written", key.describe_public(), path.display())
}

/// Appends the lines of `text` that `path` does not hold yet.
pub fn install_known_hosts(path: &Path, text: &str) -> Result<String> {
    Ok(match files::install_known_hosts(path, &meaningful_lines(text))? {
        Installed::Added(count) => {
            format!("added {count} line{} to {}", if count == 1 { "" } else { "s" }, path.display())
        }
        _ => format!("{} already holds every line", path.display()),
    })
}

/// OpenSSH reads `~/.ssh` from the account's home in /etc/passwd, not from `$HOME`: a key written
/// under another `$HOME` is not seen by later `ssh`, `git` or `docker` commands.
fn warn_if_home_is_not_the_accounts(path: &Path) {
    let (Some(account), Ok(home)) = (account::current(), std::env::var("HOME")) else {
        return;
    };
    if Path::new(&home) != account.home && path.starts_with(&home) {
        tracing::warn!(
            "HOME is {home} but the account's home in /etc/passwd is {}: OpenSSH (ssh, git, docker over ssh://) looks \
             in {}/.ssh, not in $HOME/.ssh; pass --ssh-key-file if later commands need the key",
            account.home.display(),
            account.home.display()
        );
    }
}
