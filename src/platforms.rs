//! The platforms of a run (`--platform linux/amd64,linux/arm64`, env `PLATFORMS`) and the host each
//! builds on: `DOCKER_HOST_<ARCH>` (`AMD64` or `X86_64`, `ARM64` or `AARCH64`), else `DOCKER_HOST`,
//! where a foreign platform is emulated.

use crate::cli::Environment;
use crate::config::{Sourced, Value};
use crate::docker_host::DockerHost;
use crate::error::Problem;
use crate::secrets::{Origin, SsmRef};

/// One platform of a multi-platform run and where it builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformHost {
    /// `os/arch[/variant]`, e.g. `linux/arm64`.
    pub platform: String,
    /// Its own daemon (`DOCKER_HOST_<ARCH>`); `None` builds on `DOCKER_HOST`, emulated.
    pub host: Option<Sourced<Value<DockerHost>>>,
    /// Which spelling won when both of an arch's variables are set.
    pub chosen: Option<String>,
}

impl PlatformHost {
    /// The suffix of the per-platform tag: `TAG-<arch>` (`TAG-arm64`, `TAG-arm-v7`).
    pub fn tag_suffix(&self) -> String {
        self.platform.split('/').skip(1).collect::<Vec<_>>().join("-")
    }
}

/// The variables that can name the host of an arch, the preferred spelling first.
fn host_variables(arch: &str) -> &'static [&'static str] {
    match arch {
        "amd64" | "x86_64" => &["DOCKER_HOST_AMD64", "DOCKER_HOST_X86_64"],
        "arm64" | "aarch64" => &["DOCKER_HOST_ARM64", "DOCKER_HOST_AARCH64"],
        _ => &[],
    }
}

/// Splits and checks the platform list; each must be `OS/ARCH[/VARIANT]` and given once.
pub fn parse_list(text: &str, problems: &mut Vec<Problem>) -> Vec<String> {
    let mut platforms: Vec<String> = Vec::new();
    for platform in text.split(',').map(str::trim) {
        let parts: Vec<&str> = platform.split('/').collect();
        if !(2..=3).contains(&parts.len())
            || parts.iter().any(|part| part.is_empty() || part.contains(char::is_whitespace))
        {
            problems.push(
                Problem::new("--platform", format!("{platform:?} is not OS/ARCH[/VARIANT]"))
                    .hint("write e.g. linux/amd64 or linux/amd64,linux/arm64"),
            );
        } else if platforms.iter().any(|seen| seen == platform) {
            problems
                .push(Problem::new("--platform", format!("{platform} is given twice")).hint("name each platform once"));
        } else {
            platforms.push(platform.to_string());
        }
    }
    platforms
}

/// The host of each platform, from `DOCKER_HOST_<ARCH>`; `tls` as for `DOCKER_HOST`.
pub fn hosts_for(platforms: &[String], env: &Environment, tls: bool, problems: &mut Vec<Problem>) -> Vec<PlatformHost> {
    platforms
        .iter()
        .map(|platform| {
            let arch = platform.split('/').nth(1).unwrap_or_default();
            let set: Vec<(&'static str, &str)> = host_variables(arch)
                .iter()
                .filter_map(|name| env.get(name).filter(|text| !text.trim().is_empty()).map(|text| (*name, text)))
                .collect();
            let chosen = match set.as_slice() {
                [(winner, _), (loser, _), ..] => Some(format!("{winner} wins over {loser} (both are set)")),
                _ => None,
            };
            let host = set.first().and_then(|(name, text)| host_value(name, text, tls, problems));
            PlatformHost { platform: platform.clone(), host, chosen }
        })
        .collect()
}

fn host_value(
    name: &'static str,
    text: &str,
    tls: bool,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<Value<DockerHost>>> {
    let value = match SsmRef::parse(text) {
        Ok(Some(reference)) => Value::Ssm(reference),
        Ok(None) => match DockerHost::parse(text, tls) {
            Ok(host) => Value::Known(host),
            Err(error) => {
                problems.push(Problem::new(name, error.message).hint(error.hint));
                return None;
            }
        },
        Err(message) => {
            problems.push(Problem::new(name, message).hint("write SSM:/path/to/parameter"));
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
        assert_eq!(parse_list("linux/amd64, linux/arm64", &mut problems), ["linux/amd64", "linux/arm64"]);
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
        let platforms = ["linux/amd64".to_string(), "linux/arm64".to_string(), "linux/riscv64".to_string()];
        let hosts = hosts_for(&platforms, &env, false, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(hosts[0].host.as_ref().map(|host| &host.origin), Some(&Origin::Env("DOCKER_HOST_X86_64")));
        assert!(matches!(hosts[0].host.as_ref().map(|host| &host.value), Some(Value::Ssm(_))));
        assert_eq!(hosts[1].host.as_ref().map(|host| &host.origin), Some(&Origin::Env("DOCKER_HOST_ARM64")));
        assert_eq!(hosts[1].chosen.as_deref(), Some("DOCKER_HOST_ARM64 wins over DOCKER_HOST_AARCH64 (both are set)"));
        assert_eq!(hosts[2].host, None, "no variable for riscv64: built on DOCKER_HOST, emulated");
        assert_eq!(hosts[1].tag_suffix(), "arm64");
    }

    #[test]
    fn a_bad_per_arch_host_is_a_problem_naming_its_variable() {
        let env = env(&[("DOCKER_HOST_ARM64", "ftp://nowhere")]);
        let mut problems = Vec::new();
        hosts_for(&["linux/arm64".to_string()], &env, false, &mut problems);
        assert_eq!(problems.len(), 1);
        assert!(format!("{:?}", problems[0]).contains("DOCKER_HOST_ARM64"), "{problems:?}");
    }
}
