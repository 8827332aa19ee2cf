//! The platforms of a run (`--platform linux/amd64,linux/arm64`, env `PLATFORMS`) and the host each
//! builds on: `DOCKER_HOST_<ARCH>` (`AMD64` or `X86_64`, `ARM64` or `AARCH64`) reached with
//! `JETS_SSH_KEY_<ARCH>` / `JETS_SSH_KNOWN_<ARCH>` (the unsuffixed ones are the fallback), else
//! `DOCKER_HOST`, where a foreign platform is emulated.

use std::sync::Arc;

use crate::cli::Environment;
use crate::config::{SSM_HINT, Sourced, Value, check_known_hosts, host_value};
use crate::docker::host::DockerHost;
use crate::error::Problem;
use crate::registry::reference::Platform;
use crate::secrets::{Origin, Secret, SsmRef};
use crate::ssh::key::SshKey;

/// One platform of a multi-platform run and where it builds.
#[derive(Debug, Clone)]
pub struct PlatformHost {
    /// `os/arch[/variant]`, e.g. `linux/arm64`.
    pub platform: Platform,
    /// Its own daemon (`DOCKER_HOST_<ARCH>`); `None` builds on `DOCKER_HOST`, emulated.
    pub host: Option<Sourced<Value<DockerHost>>>,
    /// Its own SSH key (`JETS_SSH_KEY_<ARCH>`); `None` logs in with `JETS_SSH_KEY`.
    pub ssh_key: Option<Sourced<Value<Arc<SshKey>>>>,
    /// Its own host keys (`JETS_SSH_KNOWN_<ARCH>`); `None` trusts `JETS_SSH_KNOWN`.
    pub known_hosts: Option<Sourced<Value<String>>>,
    /// Which spelling won, for each variable whose two spellings are both set.
    pub chosen: Vec<String>,
}

/// Equal when they name the same values from the same variables (keys compared by their text).
impl PartialEq for PlatformHost {
    fn eq(&self, other: &Self) -> bool {
        let key_text = |host: &PlatformHost| {
            host.ssh_key.as_ref().map(|key| {
                let text = match &key.value {
                    Value::Known(key) => Value::Known(key.text.clone()),
                    Value::Ssm(reference) => Value::Ssm(reference.clone()),
                };
                (text, key.origin.clone())
            })
        };
        self.platform == other.platform
            && self.host == other.host
            && self.known_hosts == other.known_hosts
            && self.chosen == other.chosen
            && key_text(self) == key_text(other)
    }
}

impl Eq for PlatformHost {}

/// What a per-arch variable is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PerArch {
    Host,
    SshKey,
    KnownHosts,
}

/// The variables that can hold `what` for an arch, the preferred spelling first.
fn per_arch_variables(arch: &str, what: PerArch) -> &'static [&'static str] {
    match (arch, what) {
        ("amd64" | "x86_64", PerArch::Host) => &["DOCKER_HOST_AMD64", "DOCKER_HOST_X86_64"],
        ("amd64" | "x86_64", PerArch::SshKey) => &["JETS_SSH_KEY_AMD64", "JETS_SSH_KEY_X86_64"],
        ("amd64" | "x86_64", PerArch::KnownHosts) => &["JETS_SSH_KNOWN_AMD64", "JETS_SSH_KNOWN_X86_64"],
        ("arm64" | "aarch64", PerArch::Host) => &["DOCKER_HOST_ARM64", "DOCKER_HOST_AARCH64"],
        ("arm64" | "aarch64", PerArch::SshKey) => &["JETS_SSH_KEY_ARM64", "JETS_SSH_KEY_AARCH64"],
        ("arm64" | "aarch64", PerArch::KnownHosts) => &["JETS_SSH_KNOWN_ARM64", "JETS_SSH_KNOWN_AARCH64"],
        _ => &[],
    }
}

/// The first set spelling of `what` for `arch`, with a note on which won when both are set.
fn per_arch<'e>(
    env: &'e Environment,
    arch: &str,
    what: PerArch,
    chosen: &mut Vec<String>,
) -> Option<(&'static str, &'e str)> {
    let set: Vec<(&'static str, &str)> = per_arch_variables(arch, what)
        .iter()
        .filter_map(|name| env.get(name).filter(|text| !text.trim().is_empty()).map(|text| (*name, text)))
        .collect();
    if let [(winner, _), (loser, _), ..] = set.as_slice() {
        chosen.push(format!("{winner} wins over {loser} (both are set)"));
    }
    set.first().copied()
}

/// Splits and checks the platform list; each must be `OS/ARCH[/VARIANT]` and given once.
pub fn parse_list(text: &str, problems: &mut Vec<Problem>) -> Vec<Platform> {
    let mut platforms: Vec<Platform> = Vec::new();
    for text in text.split(',').map(str::trim) {
        match Platform::parse(text) {
            Err(message) => problems
                .push(Problem::new("--platform", message).hint("write e.g. linux/amd64 or linux/amd64,linux/arm64")),
            Ok(platform) if platforms.contains(&platform) => problems
                .push(Problem::new("--platform", format!("{platform} is given twice")).hint("name each platform once")),
            Ok(platform) => platforms.push(platform),
        }
    }
    platforms
}

/// The host of each platform, from `DOCKER_HOST_<ARCH>`, with its SSH login from
/// `JETS_SSH_KEY_<ARCH>` / `JETS_SSH_KNOWN_<ARCH>`; `tls` as for `DOCKER_HOST`, `passphrase` opens
/// an encrypted key.
pub fn hosts_for(
    platforms: &[Platform],
    env: &Environment,
    tls: bool,
    passphrase: Option<&Secret>,
    problems: &mut Vec<Problem>,
) -> Vec<PlatformHost> {
    platforms
        .iter()
        .map(|platform| {
            // What the index names: letters, digits and `_` in each part.
            if let Err(message) = platform.check_index_name() {
                problems.push(
                    Problem::new("--platform", format!("{message} as an image index names platforms"))
                        .hint("write e.g. linux/amd64,linux/arm64 or linux/arm/v7"),
                );
            }
            let arch = platform.architecture.as_str();
            let mut chosen = Vec::new();
            let host = per_arch(env, arch, PerArch::Host, &mut chosen).and_then(|(name, text)| {
                let origin = Origin::Env(name);
                let value = host_value(text, tls, &origin, problems)?;
                Some(Sourced { value, origin })
            });
            let ssh_key = per_arch(env, arch, PerArch::SshKey, &mut chosen)
                .and_then(|(name, text)| key_value(name, text, passphrase, problems));
            let known_hosts = per_arch(env, arch, PerArch::KnownHosts, &mut chosen)
                .and_then(|(name, text)| known_hosts_value(name, text, problems));
            PlatformHost { platform: platform.clone(), host, ssh_key, known_hosts, chosen }
        })
        .collect()
}

/// A per-arch SSH key: an `SSM:` reference, or the key itself (a secret from the moment it is read).
fn key_value(
    name: &'static str,
    text: &str,
    passphrase: Option<&Secret>,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<Value<Arc<SshKey>>>> {
    let value = match SsmRef::parse(text) {
        Ok(Some(reference)) => Value::Ssm(reference),
        Ok(None) => {
            // `ec2-instance-connect` is a word, not a secret: not handed to the redactor.
            let key = match crate::ssh::key::is_instance_connect_setting(text) {
                true => SshKey::from_setting(text, None),
                false => SshKey::from_setting(Secret::new(text).expose(), passphrase),
            };
            match key {
                Ok(key) => Value::Known(Arc::new(key)),
                Err(error) => {
                    problems.push(Problem::new(name, error.to_string()).hint(error.hint()));
                    return None;
                }
            }
        }
        Err(message) => {
            problems.push(Problem::new(name, message).hint(SSM_HINT));
            return None;
        }
    };
    Some(Sourced { value, origin: Origin::Env(name) })
}

/// Per-arch known_hosts lines: an `SSM:` reference, or lines checked to be entries.
fn known_hosts_value(name: &'static str, text: &str, problems: &mut Vec<Problem>) -> Option<Sourced<Value<String>>> {
    let value = match SsmRef::parse(text) {
        Ok(Some(reference)) => Value::Ssm(reference),
        Ok(None) => match check_known_hosts(text, name) {
            Ok(()) => Value::Known(text.to_string()),
            Err(problem) => {
                problems.push(problem);
                return None;
            }
        },
        Err(message) => {
            problems.push(Problem::new(name, message).hint(SSM_HINT));
            return None;
        }
    };
    Some(Sourced { value, origin: Origin::Env(name) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn a_list_is_split_checked_and_each_platform_named_once() {
        let mut problems = Vec::new();
        let parsed: Vec<String> =
            parse_list("linux/amd64, linux/arm64", &mut problems).iter().map(Platform::to_string).collect();
        assert_eq!(parsed, ["linux/amd64", "linux/arm64"]);
        assert!(problems.is_empty());
        parse_list("linux/amd64,linux/amd64,arm64", &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn each_arch_takes_its_own_host_and_says_which_spelling_won() {
        let env = env(&[
            ("DOCKER_HOST_ARM64", "ssh://ci@arm.example:22"),
            ("DOCKER_HOST_AARCH64", "ssh://ci@other.example:22"),
            ("DOCKER_HOST_X86_64", "SSM:/ci/amd-host"),
        ]);
        let mut problems = Vec::new();
        let platforms = ["linux/amd64", "linux/arm64", "linux/riscv64"].map(|text| Platform::parse(text).unwrap());
        let hosts = hosts_for(&platforms, &env, false, None, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(hosts[0].host.as_ref().map(|host| &host.origin), Some(&Origin::Env("DOCKER_HOST_X86_64")));
        assert!(matches!(hosts[0].host.as_ref().map(|host| &host.value), Some(Value::Ssm(_))));
        assert_eq!(hosts[1].host.as_ref().map(|host| &host.origin), Some(&Origin::Env("DOCKER_HOST_ARM64")));
        assert_eq!(hosts[1].chosen, ["DOCKER_HOST_ARM64 wins over DOCKER_HOST_AARCH64 (both are set)"]);
        assert!(hosts[2].host.is_none(), "no variable for riscv64: built on DOCKER_HOST, emulated");
        assert_eq!(hosts[1].platform.tag_suffix(), "arm64");
    }

    #[test]
    fn a_bad_per_arch_host_is_a_problem_naming_its_variable() {
        let env = env(&[("DOCKER_HOST_ARM64", "ftp://nowhere")]);
        let mut problems = Vec::new();
        hosts_for(&[Platform::parse("linux/arm64").unwrap()], &env, false, None, &mut problems);
        assert_eq!(problems.len(), 1);
        assert!(format!("{:?}", problems[0]).contains("DOCKER_HOST_ARM64"), "{problems:?}");
        hosts_for(&[Platform::parse("linux/amd64-v2").unwrap()], &env, false, None, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn each_arch_takes_its_own_ssh_login_by_either_spelling_and_a_bad_one_is_named() {
        let (key, _) = crate::ssh::key::tests::generated_key();
        let env = env(&[
            ("JETS_SSH_KEY_AARCH64", key.as_str()),
            ("JETS_SSH_KNOWN_ARM64", "SSM:/ci/arm-known"),
            ("JETS_SSH_KNOWN_AARCH64", "SSM:/ci/other-known"),
            ("JETS_SSH_KEY_X86_64", "SSM:/ci/amd-key"),
            ("JETS_SSH_KNOWN_AMD64", "not a known_hosts line"),
        ]);
        let mut problems = Vec::new();
        let platforms = ["linux/amd64", "linux/arm64"].map(|text| Platform::parse(text).unwrap());
        let hosts = hosts_for(&platforms, &env, false, None, &mut problems);
        let arm64 = &hosts[1];
        assert!(matches!(arm64.ssh_key.as_ref().map(|key| &key.value), Some(Value::Known(_))));
        assert_eq!(arm64.ssh_key.as_ref().map(|key| &key.origin), Some(&Origin::Env("JETS_SSH_KEY_AARCH64")));
        assert_eq!(arm64.known_hosts.as_ref().map(|known| &known.origin), Some(&Origin::Env("JETS_SSH_KNOWN_ARM64")));
        assert_eq!(arm64.chosen, ["JETS_SSH_KNOWN_ARM64 wins over JETS_SSH_KNOWN_AARCH64 (both are set)"]);
        assert!(matches!(hosts[0].ssh_key.as_ref().map(|key| &key.value), Some(Value::Ssm(_))));
        assert!(hosts[0].known_hosts.is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].subject, "JETS_SSH_KNOWN_AMD64");
        let body = key.lines().nth(1).expect("a key body line");
        assert_eq!(crate::secrets::redact(body), crate::secrets::MASK, "a per-arch key is a secret");
    }
}
