//! known_hosts: parsing the lines of `JETS_SSH_KNOWN` and `~/.ssh/known_hosts`, and checking a
//! server's host key against them the way OpenSSH does — hashed names (`|1|salt|hash`),
//! `[host]:port`, patterns with `*`, `?` and `!`, several key types per host, `@revoked` — and
//! never trusting a host on first use.
//!
//! Lines are parsed by `ssh-key`'s known_hosts module (re-exported by russh); the matching is ours,
//! because russh's own check knows neither patterns, negation nor `@revoked`, and reports no
//! fingerprints.

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{Algorithm, HashAlg, PublicKey};

/// One usable line, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct KnownHost {
    pub entry: Entry,
    /// `JETS_SSH_KNOWN` or a file path, and the line number.
    pub source: String,
    pub line: usize,
}

/// The host keys the agent trusts.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    pub hosts: Vec<KnownHost>,
}

/// A line that is not a known_hosts entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
}

/// Why a server's host key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyError {
    /// No entry names this host with a key of the presented type. `other_types` lists the keys
    /// of other types known for it (as OpenSSH, an unknown host whose other keys are known).
    Unknown { presented: String, other_types: Vec<String> },
    /// Entries name this host, with another key of the same type (or only other types).
    Changed { presented: String, expected: Vec<String> },
    /// The key is marked `@revoked`.
    Revoked { presented: String, source: String },
}

/// `host` for port 22, else `[host]:port`: the name OpenSSH looks up.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 { host } else { format!("[{host}]:{port}") }
}

/// A key as `type SHA256:fingerprint`.
pub fn describe(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm().as_str(), key.fingerprint(HashAlg::Sha256))
}

/// Splits text into its meaningful lines: no blank lines, no comments, whitespace runs made one
/// space (the parser splits fields on single spaces), CRLF and literal `\n` repaired.
pub fn meaningful_lines(text: &str) -> Vec<String> {
    let text = text.trim().trim_matches('"').replace("\\n", "\n");
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

impl KnownHosts {
    /// Adds the lines of one source; returns the lines that are not known_hosts entries.
    pub fn add(&mut self, text: &str, source: &str) -> Vec<BadLine> {
        let mut bad = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let normal = line.split_whitespace().collect::<Vec<_>>().join(" ");
            if normal.is_empty() || normal.starts_with('#') {
                continue;
            }
            match normal.parse::<Entry>() {
                Ok(entry) => self.hosts.push(KnownHost { entry, source: source.to_string(), line: index + 1 }),
                Err(_) => bad.push(BadLine { line: index + 1 }),
            }
        }
        bad
    }

    /// One line per entry for the dry run: marker, hosts (hashed ones are not reversible), key
    /// type and fingerprint.
    pub fn describe_entries(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|known| {
                let hosts = match known.entry.host_patterns() {
                    HostPatterns::HashedName { .. } => "(hashed host name)".to_string(),
                    HostPatterns::Patterns(patterns) => patterns.join(","),
                };
                let marker = match known.entry.marker() {
                    Some(marker) => format!("{} ", marker.as_str()),
                    None => String::new(),
                };
                format!("{marker}{hosts} {}", describe(known.entry.public_key()))
            })
            .collect()
    }

    /// Adds text pasted into a variable (`JETS_SSH_KNOWN`): repaired as [`meaningful_lines`] does,
    /// so line numbers count its meaningful lines.
    pub fn add_pasted(&mut self, text: &str, source: &str) -> Vec<BadLine> {
        self.add(&meaningful_lines(text).join("\n"), source)
    }

    /// The entries that name this host and port (markers included).
    fn matching(&self, host: &str, port: u16) -> impl Iterator<Item = &KnownHost> {
        let name = lookup_name(host, port);
        self.hosts.iter().filter(move |known| matches_name(known.entry.host_patterns(), &name))
    }

    /// The key algorithms known for this host, in file order, without `@revoked` or
    /// `@cert-authority` lines: offered to the server so that it presents a key we can check.
    pub fn algorithms_for(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for known in self.matching(host, port).filter(|known| known.entry.marker().is_none()) {
            let algorithm = known.entry.public_key().algorithm();
            if !algorithms.contains(&algorithm) {
                algorithms.push(algorithm);
            }
        }
        algorithms
    }

    /// Checks the key a server presented for this host and port.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), HostKeyError> {
        let presented = describe(key);
        let matching: Vec<&KnownHost> = self.matching(host, port).collect();
        if let Some(revoked) = self.hosts.iter().find(|known| {
            known.entry.marker() == Some(&Marker::Revoked) && known.entry.public_key().key_data() == key.key_data()
        }) {
            return Err(HostKeyError::Revoked {
                presented,
                source: format!("{} line {}", revoked.source, revoked.line),
            });
        }
        let plain: Vec<&KnownHost> = matching.into_iter().filter(|known| known.entry.marker().is_none()).collect();
        if plain.iter().any(|known| known.entry.public_key().key_data() == key.key_data()) {
            return Ok(());
        }
        let listed = |known: &&KnownHost| {
            format!("{} ({} line {})", describe(known.entry.public_key()), known.source, known.line)
        };
        let (same_type, other_types): (Vec<&KnownHost>, Vec<&KnownHost>) =
            plain.into_iter().partition(|known| known.entry.public_key().algorithm() == key.algorithm());
        if same_type.is_empty() {
            return Err(HostKeyError::Unknown { presented, other_types: other_types.iter().map(listed).collect() });
        }
        Err(HostKeyError::Changed { presented, expected: same_type.iter().map(listed).collect() })
    }

    /// The `@cert-authority` lines, as `SOURCE line N`: host certificates are not supported, so
    /// these lines can never let a host in.
    pub fn cert_authority_lines(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|known| known.entry.marker() == Some(&Marker::CertAuthority))
            .map(|known| format!("{} line {}", known.source, known.line))
            .collect()
    }

    /// The `@cert-authority` entries as text, in the order of [`KnownHosts::cert_authority_lines`]:
    /// the same line from two sources is the same text.
    pub fn cert_authority_entries(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|known| known.entry.marker() == Some(&Marker::CertAuthority))
            .map(|known| known.entry.to_string())
            .collect()
    }

    /// The `@cert-authority` lines that name this host.
    pub fn cert_authority_lines_for(&self, host: &str, port: u16) -> Vec<String> {
        self.matching(host, port)
            .filter(|known| known.entry.marker() == Some(&Marker::CertAuthority))
            .map(|known| format!("{} line {}", known.source, known.line))
            .collect()
    }
}

/// Whether a line's host patterns name `name` (`host` or `[host]:port`).
fn matches_name(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                let (negated, pattern) = match pattern.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, pattern.as_str()),
                };
                if glob(&pattern.to_ascii_lowercase(), name) {
                    if negated {
                        // A matching negation rejects the line whatever else matches (OpenSSH).
                        return false;
                    }
                    matched = true;
                }
            }
            matched
        }
    }
}

/// OpenSSH's wildcard match: `*` any run of characters, `?` exactly one.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeewfGQida1Is0o6P7eidCdWOm9M3C0W042few7eesN";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBP4IPfVvFLeKdS1EBQsTQKgeH/mhIVSW8hbOJDlOZCzP/cUnmhw20/wkLF67kuWfI1ejWJ7V6cJzu+6d1XH4G48=";
    const ED_OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkvi7q87GfREbYKvyG0k1d9H6j3l1JFp0cjgeLiPwsy";

    fn key(text: &str) -> PublicKey {
        text.parse().unwrap()
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        use base64::Engine;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        let engine = base64::engine::general_purpose::STANDARD;
        format!("|1|{}|{}", engine.encode(salt), engine.encode(mac.finalize().into_bytes()))
    }

    fn known(text: &str) -> KnownHosts {
        let mut known = KnownHosts::default();
        assert!(known.add(text, "test").is_empty(), "{text}");
        known
    }

    #[test]
    fn plain_and_bracketed_names_match() {
        let hosts = known(&format!("build.example.com,10.0.0.5 {ED}\n[127.0.0.1]:2222 {ED}\n"));
        assert_eq!(hosts.check("build.example.com", 22, &key(ED)), Ok(()));
        assert_eq!(hosts.check("BUILD.example.com", 22, &key(ED)), Ok(()));
        assert_eq!(hosts.check("10.0.0.5", 22, &key(ED)), Ok(()));
        assert_eq!(hosts.check("127.0.0.1", 2222, &key(ED)), Ok(()));
        assert!(matches!(hosts.check("127.0.0.1", 22, &key(ED)), Err(HostKeyError::Unknown { .. })));
        assert!(matches!(hosts.check("build.example.com", 2222, &key(ED)), Err(HostKeyError::Unknown { .. })));
    }

    #[test]
    fn hashed_names_match() {
        let hosts = known(&format!("{} {ED}", hashed("[127.0.0.1]:2222", b"0123456789abcdefghij")));
        assert_eq!(hosts.check("127.0.0.1", 2222, &key(ED)), Ok(()));
        assert!(matches!(hosts.check("127.0.0.1", 2223, &key(ED)), Err(HostKeyError::Unknown { .. })));
    }

    #[test]
    fn a_different_key_is_a_change_with_both_fingerprints() {
        let hosts = known(&format!("host {ED}"));
        match hosts.check("host", 22, &key(ED_OTHER)) {
            Err(HostKeyError::Changed { presented, expected }) => {
                assert_eq!(presented, describe(&key(ED_OTHER)));
                assert_eq!(expected, [format!("{} (test line 1)", describe(&key(ED)))]);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Regression: a host whose known keys are all of another type than the one it presents is
    /// unknown (exit 23), with the known keys listed, not a generic handshake failure.
    #[test]
    fn a_key_of_a_type_known_hosts_lacks_is_unknown_with_the_other_types_listed() {
        let hosts = known(&format!("host {ECDSA}"));
        match hosts.check("host", 22, &key(ED)) {
            Err(HostKeyError::Unknown { other_types, .. }) => {
                assert_eq!(other_types.len(), 1);
                assert!(other_types[0].starts_with("ecdsa-sha2-nistp256 SHA256:"), "{other_types:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Regression: `@cert-authority` lines were accepted silently and can never let a host in.
    #[test]
    fn cert_authority_lines_are_found_for_the_warning_and_the_hint() {
        let hosts = known(&format!(
            "host {ED_OTHER}
@cert-authority *.example.com {ED}
"
        ));
        assert_eq!(hosts.cert_authority_lines(), ["test line 2"]);
        assert_eq!(hosts.cert_authority_lines_for("a.example.com", 22), ["test line 2"]);
        assert!(hosts.cert_authority_lines_for("host", 22).is_empty());
        assert!(matches!(hosts.check("a.example.com", 22, &key(ED)), Err(HostKeyError::Unknown { .. })));
    }

    #[test]
    fn revoked_keys_are_refused_even_when_also_listed() {
        let hosts = known(&format!("host {ED}\n@revoked * {ED}\n"));
        assert!(matches!(hosts.check("host", 22, &key(ED)), Err(HostKeyError::Revoked { .. })));
        assert_eq!(hosts.algorithms_for("host", 22), [Algorithm::Ed25519]);
    }

    #[test]
    fn patterns_and_negation_follow_openssh() {
        let hosts = known(&format!("*.example.com,!bad.example.com {ED}\nbuild?.corp {ED}"));
        assert_eq!(hosts.check("a.example.com", 22, &key(ED)), Ok(()));
        assert!(hosts.check("bad.example.com", 22, &key(ED)).is_err());
        assert_eq!(hosts.check("build1.corp", 22, &key(ED)), Ok(()));
        assert!(hosts.check("build10.corp", 22, &key(ED)).is_err());
    }

    #[test]
    fn messy_lines_are_tolerated_and_bad_ones_reported() {
        let mut hosts = KnownHosts::default();
        let bad = hosts.add(&format!("# comment\n\n  host\t{ED}  comment here\r\nnot a line\n"), "JETS_SSH_KNOWN");
        assert_eq!(bad, [BadLine { line: 4 }]);
        assert_eq!(hosts.check("host", 22, &key(ED)), Ok(()));
    }

    #[test]
    fn glob_matches_like_openssh() {
        assert!(glob("*", "anything"));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*.x.*", "a.x.b"));
        assert!(!glob("abc", "abcd"));
    }
}
