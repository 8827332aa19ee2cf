//! The SSH private key: repairing what users paste into parameter stores, decoding it, and
//! describing it (type and fingerprint) without ever showing it.

use russh::keys::{HashAlg, PrivateKey};

pub use crate::error::KeyError;
use crate::secrets::Secret;

/// The value of `JETS_SSH_KEY` (or an arch's) that asks for a key made for the run and pushed with
/// EC2 Instance Connect (`aws::instance_connect`).
pub const INSTANCE_CONNECT: &str = "ec2-instance-connect";

/// A decoded private key with its repaired text (as it is written to the key file).
#[derive(Clone)]
pub struct SshKey {
    pub key: PrivateKey,
    /// The repaired text: what the key file holds. Registered with the redactor.
    pub text: Secret,
    /// Made for this run (`JETS_SSH_KEY=ec2-instance-connect`): its public half is pushed to each
    /// instance with EC2 Instance Connect before the agent connects, and it is written nowhere.
    pub instance_connect: bool,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshKey({})", self.describe())
    }
}

impl SshKey {
    /// The key a `JETS_SSH_KEY` setting (or an arch's) names: `ec2-instance-connect` for the run's
    /// own key ([`SshKey::for_instance_connect`]), else a private key, repaired and decoded.
    pub fn from_setting(raw: &str, passphrase: Option<&Secret>) -> Result<SshKey, KeyError> {
        if is_instance_connect_setting(raw) {
            return SshKey::for_instance_connect().map_err(KeyError::Corrupt);
        }
        SshKey::parse(raw, passphrase)
    }

    /// The run's key for EC2 Instance Connect: a new ed25519 key, made once per run, in memory only
    /// (its text registered with the redactor).
    pub fn for_instance_connect() -> Result<SshKey, String> {
        static KEY: std::sync::OnceLock<SshKey> = std::sync::OnceLock::new();
        if let Some(key) = KEY.get() {
            return Ok(key.clone());
        }
        let key = new_ed25519("agent run (EC2 Instance Connect)")?;
        let text = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(|error| error.to_string())?;
        crate::secrets::redactor().register(&text);
        let made = SshKey { key, text: Secret::new(text.to_string()), instance_connect: true };
        Ok(KEY.get_or_init(|| made).clone())
    }

    /// `ssh-ed25519 SHA256:abc…`, whatever the key's origin.
    pub fn describe_public(&self) -> String {
        let public = self.key.public_key();
        format!("{} {}", public.algorithm().as_str(), public.fingerprint(HashAlg::Sha256))
    }

    /// The public half as an OpenSSH line (`ssh-ed25519 AAAA… comment`).
    pub fn public_line(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// Repairs and decodes a key as found in `JETS_SSH_KEY` or a key file.
    pub fn parse(raw: &str, passphrase: Option<&Secret>) -> Result<SshKey, KeyError> {
        let text = repair(raw);
        let text = Secret::new(text);
        let body = text.expose();
        if !body.contains("-----BEGIN ") || !body.contains("PRIVATE KEY-----") {
            let first = body.split_whitespace().next().unwrap_or_default();
            if first.starts_with("ssh-")
                || first.starts_with("ecdsa-")
                || first.contains("PUBLIC KEY")
                || body.contains("PUBLIC KEY-----")
            {
                return Err(KeyError::PublicKey);
            }
            return Err(KeyError::NotAKey);
        }
        let key = match russh::keys::decode_secret_key(body, passphrase.map(Secret::expose)) {
            Ok(key) => key,
            Err(russh::keys::Error::KeyIsEncrypted) => return Err(KeyError::Encrypted),
            Err(_) if passphrase.is_some() && is_encrypted(body) => {
                return Err(KeyError::WrongPassphrase);
            }
            Err(error) => return Err(KeyError::Corrupt(redacted_reason(&error))),
        };
        Ok(SshKey { key, text, instance_connect: false })
    }

    /// E.g. `ssh-ed25519 SHA256:abc…` (and, for the run's own, that it is pushed with EC2 Instance Connect).
    pub fn describe(&self) -> String {
        let key = self.describe_public();
        if self.instance_connect {
            format!("{key}, made for this run and pushed with EC2 Instance Connect")
        } else {
            key
        }
    }
}

/// Whether a `JETS_SSH_KEY` setting asks for EC2 Instance Connect: a word, not a secret (callers
/// check it before they wrap the value as one, so that the redactor does not mask the word).
pub fn is_instance_connect_setting(raw: &str) -> bool {
    raw.trim().trim_matches(['"', '\'']).eq_ignore_ascii_case(INSTANCE_CONNECT)
}

/// A new ed25519 key from the system's randomness.
pub fn new_ed25519(comment: &str) -> Result<PrivateKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| format!("no randomness for a new key: {error}"))?;
    let mut key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment(comment);
    Ok(key)
}

/// Whether the key text is an encrypted key (OpenSSH's bcrypt KDF, or a PEM with DEK-Info).
fn is_encrypted(text: &str) -> bool {
    text.contains("ENCRYPTED")
        || text.contains("DEK-Info")
        || russh::keys::ssh_key::PrivateKey::from_openssh(text).is_ok_and(|key| key.is_encrypted())
}

/// The decoder's reason, kept short and free of key material (the decoders never echo input,
/// but the redactor has the key registered anyway).
fn redacted_reason(error: &russh::keys::Error) -> String {
    crate::secrets::redact(&error.to_string())
}

/// Repairs what users paste into parameter stores and CI variables: surrounding whitespace or
/// quotes, literal `\n` sequences, CRLF, indented lines, newlines collapsed into spaces, and a
/// missing final newline.
pub fn repair(raw: &str) -> String {
    let mut text = raw.trim().to_string();
    // Surrounding quotes, possibly several layers ("'…'").
    loop {
        let trimmed = text.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|quote| trimmed.strip_prefix(*quote).and_then(|rest| rest.strip_suffix(*quote)));
        match unquoted {
            Some(inner) => text = inner.trim().to_string(),
            None => break,
        }
    }
    let text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let mut out = String::with_capacity(text.len() + 1);
    if lines.len() == 1 {
        // All on one line with spaces where newlines were: split the armour from the body.
        if let Some(rebuilt) = unflatten(lines[0]) {
            return rebuilt;
        }
    }
    for (index, line) in lines.iter().enumerate() {
        out.push_str(line);
        out.push('\n');
        // PEM headers (Proc-Type, DEK-Info) end with an empty line before the body.
        if line.starts_with("DEK-Info:") && lines.get(index + 1).is_some_and(|next| !next.is_empty()) {
            out.push('\n');
        }
    }
    out
}

/// `-----BEGIN X----- body body -----END X-----` on one line back to lines.
fn unflatten(line: &str) -> Option<String> {
    let begin_end = line.find("-----BEGIN ")?;
    let header_end = line[begin_end + 11..].find("-----")? + begin_end + 11 + 5;
    let footer_start = line.rfind("-----END ")?;
    if footer_start <= header_end {
        return None;
    }
    let header = &line[begin_end..header_end];
    let footer = line[footer_start..].trim();
    let mut out = format!("{header}\n");
    let body = &line[header_end..footer_start];
    let mut words = body.split_whitespace().peekable();
    while let Some(word) = words.next() {
        // PEM headers ("Proc-Type: 4,ENCRYPTED") keep their value on the same line.
        if word.ends_with(':') {
            out.push_str(word);
            if let Some(value) = words.next() {
                out.push(' ');
                out.push_str(value);
            }
            out.push('\n');
            if word == "DEK-Info:" {
                out.push('\n');
            }
        } else {
            out.push_str(word);
            out.push('\n');
        }
    }
    out.push_str(footer);
    out.push('\n');
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn repair_undoes_what_parameter_stores_do() {
        for pasted in [
            KEY.to_string(),
            KEY.trim_end().to_string(),
            KEY.replace('\n', "\\n"),
            KEY.replace('\n', "\r\n"),
            format!("  \"{}\"  ", KEY.replace('\n', "\\n")),
            format!("'{KEY}'"),
            KEY.lines().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n"),
            KEY.trim_end().replace('\n', " "),
        ] {
            assert_eq!(repair(&pasted), KEY, "{pasted:?}");
        }
    }

    #[test]
    fn repair_keeps_pem_headers_apart_from_the_body() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00FF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(repair(pem), pem);
        assert_eq!(repair(&pem.replace('\n', " ")), pem);
    }

    #[test]
    fn not_a_key_is_refused_without_echoing_it() {
        let error = SshKey::parse("hunter2-not-a-key", None).unwrap_err();
        assert_eq!(error, KeyError::NotAKey);
        assert!(!error.to_string().contains("hunter2"));
        assert_eq!(SshKey::parse("ssh-ed25519 AAAAC3Nza user@host", None).unwrap_err(), KeyError::PublicKey);
        assert!(matches!(SshKey::parse(KEY, None).unwrap_err(), KeyError::Corrupt(_)));
    }

    /// A fresh key made with `ssh-keygen` for this test run (keys are never committed), and the
    /// fingerprint ssh-keygen reports for it.
    pub(crate) fn generated_key() -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "unit-test", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen (openssh-client)");
        assert!(made.success());
        let listed =
            std::process::Command::new("ssh-keygen").arg("-lf").arg(path.with_extension("pub")).output().unwrap();
        let fingerprint = String::from_utf8_lossy(&listed.stdout).split_whitespace().nth(1).unwrap().to_string();
        (std::fs::read_to_string(&path).unwrap(), fingerprint)
    }

    #[test]
    fn a_pasted_key_decodes_and_describes_itself() {
        let (key, fingerprint) = generated_key();
        let parsed = SshKey::parse(&key.replace('\n', "\\n"), None).unwrap();
        assert_eq!(parsed.describe(), format!("ssh-ed25519 {fingerprint}"));
        assert_eq!(parsed.text.expose(), key);
        let body = key.lines().nth(1).unwrap();
        assert!(!format!("{parsed:?}").contains(body));
    }
}
