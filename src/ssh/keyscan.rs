//! `agent host keyscan`: every host key an sshd offers, as hashed known_hosts lines (what
//! `ssh-keyscan -H` writes), each with its type and `SHA256:` fingerprint for the user to compare
//! with the host's own.
//!
//! An SSH handshake shows one host key, of the first type both sides name: like ssh-keyscan, the
//! scan shakes hands once per key type (all at once), offering only that type, and ends each
//! handshake as soon as the key is shown (it never authenticates, and trusts nothing).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use russh::client;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PublicKey, PublicKeyOrCertificate};

use crate::error::{ConnectClass, Error};
use crate::ssh::known_hosts::lookup_name;
use crate::ssh::transport::connect_tcp;

/// The host-key types asked for, one handshake each: OpenSSH's (RSA once, with SHA-512).
const KEY_TYPES: [Algorithm; 5] = [
    Algorithm::Ed25519,
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
    Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
];

/// One host key the server offered.
pub struct ScannedKey {
    pub key: PublicKey,
    /// `|1|salt|hash ssh-ed25519 AAAA…`: the host's name (`host`, or `[host]:port` off port 22)
    /// hashed with a fresh salt, as `ssh-keyscan -H` and `HashKnownHosts yes` write it.
    pub known_hosts_line: String,
}

impl ScannedKey {
    /// `ssh-ed25519 SHA256:…`
    pub fn describe(&self) -> String {
        crate::ssh::known_hosts::describe(&self.key)
    }
}

/// Every host key that the sshd at `host:port` offers, in [`KEY_TYPES`]' order; each handshake
/// within `timeout`. The sshd is reached at `address` when given (an EC2 instance's), the lines name
/// `host` (the instance's id, which pins its key whatever its address). A host that cannot be
/// reached fails with its connection class.
pub async fn scan(host: &str, address: Option<&str>, port: u16, timeout: Duration) -> Result<Vec<ScannedKey>, Error> {
    let name_host = host;
    let host = address.unwrap_or(host);
    // An instance is named by its id and the address it was reached at (`i-… (at 10.0.1.23)`).
    let shown_as = match address {
        Some(address) => format!("{} (at {})", lookup_name(name_host, port), lookup_name(address, port)),
        None => lookup_name(host, port),
    };
    // First a plain connection, so that a wrong name, a refusal or a timeout is said once, as such.
    let target = format!("ssh://{shown_as}");
    let timed_out = || Error::Connect {
        target: target.clone(),
        class: ConnectClass::Timeout,
        detail: format!("no answer within {}s", timeout.as_secs()),
    };
    tokio::time::timeout(timeout, connect_tcp("ssh", host, port)).await.map_err(|_| timed_out())??;
    let shown = futures_util::future::join_all(
        KEY_TYPES.iter().map(|algorithm| shown_key(host, port, &shown_as, algorithm, timeout)),
    );
    let mut keys = Vec::new();
    let mut failures = Vec::new();
    for (algorithm, outcome) in KEY_TYPES.iter().zip(shown.await) {
        match outcome {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => tracing::debug!("keyscan: {target} offers no {} key", algorithm.as_str()),
            Err(error) => failures.push(error),
        }
    }
    if keys.is_empty() {
        return Err(failures.into_iter().next().unwrap_or_else(|| Error::Ssh {
            host: target,
            detail: "the server offered no host key of a type the agent knows".to_string(),
        }));
    }
    let name = lookup_name(name_host, port);
    Ok(keys.into_iter().map(|key| ScannedKey { known_hosts_line: line(&name, &key), key }).collect())
}

/// The key the server shows when offered only `algorithm`; `None` when it has no key of that type.
/// Errors name the host `shown_as`.
async fn shown_key(
    host: &str,
    port: u16,
    shown_as: &str,
    algorithm: &Algorithm,
    timeout: Duration,
) -> Result<Option<PublicKey>, Error> {
    let name = shown_as.to_string();
    let handshake = async {
        let tcp = connect_tcp("ssh", host, port).await?;
        let preferred = russh::Preferred { key: Cow::Owned(vec![algorithm.clone()]), ..Default::default() };
        let config = Arc::new(client::Config { preferred, nodelay: true, ..Default::default() });
        let shown = Arc::new(Mutex::new(None));
        let outcome = client::connect_stream(config, tcp, Catch { shown: shown.clone() }).await;
        let key = shown.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        Ok::<_, Error>(match (key, outcome) {
            (Some(key), _) => Some(key),
            (None, Err(russh::Error::NoCommonAlgo { .. })) => None,
            (None, Err(error)) => {
                return Err(Error::Ssh { host: name.clone(), detail: format!("the SSH handshake failed: {error}") });
            }
            (None, Ok(_)) => None,
        })
    };
    tokio::time::timeout(timeout, handshake).await.map_err(|_| Error::Connect {
        target: format!("ssh://{name}"),
        class: ConnectClass::Timeout,
        detail: format!("no SSH handshake within {}s", timeout.as_secs()),
    })?
}

/// Keeps the key the server shows, and ends the handshake there: nothing is trusted, nothing sent.
struct Catch {
    shown: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Catch {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        if let PublicKeyOrCertificate::PublicKey { key, .. } = server {
            *self.shown.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(key.clone());
        }
        Ok(false)
    }
}

/// A hashed known_hosts line for `name` (`host` or `[host]:port`).
fn line(name: &str, key: &PublicKey) -> String {
    let mut salt = [0u8; 20];
    if getrandom::fill(&mut salt).is_err() {
        // No randomness: an unhashed line still pins the key, it only shows the name.
        return format!("{name} {}", openssh(key));
    }
    format!("{} {}", hashed_name(name, &salt), openssh(key))
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`, OpenSSH's hashed host name.
pub fn hashed_name(name: &str, salt: &[u8]) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).expect("HMAC takes a key of any length");
    mac.update(name.as_bytes());
    format!("|1|{}|{}", engine.encode(salt), engine.encode(mac.finalize().into_bytes()))
}

/// `type base64`, without a comment.
fn openssh(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().unwrap_or_else(|_| format!("{} {}", key.algorithm().as_str(), key.fingerprint(HashAlg::Sha256)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_hashed_as_openssh_hashes_them_and_match_the_checker() {
        let key: PublicKey =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeewfGQida1Is0o6P7eidCdWOm9M3C0W042few7eesN".parse().unwrap();
        let line = line("[127.0.0.1]:2222", &key);
        assert!(line.starts_with("|1|"), "{line}");
        assert!(line.ends_with(" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeewfGQida1Is0o6P7eidCdWOm9M3C0W042few7eesN"));
        let mut known = crate::ssh::known_hosts::KnownHosts::default();
        assert!(known.add(&line, "test").is_empty());
        assert!(matches!(known.check("127.0.0.1", 2222, &key), Ok(())), "the scanned line pins the host");
        assert!(known.check("127.0.0.1", 22, &key).is_err(), "and only that host and port");
    }
}
