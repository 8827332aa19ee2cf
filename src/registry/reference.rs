//! Image references: the repository an image is pushed to, its tags, and the ECR registries among
//! registry hosts.
//!
//! Hand-written rather than a crate: the grammar is Docker's `reference` package (short, stable),
//! and the agent needs the pieces (registry host, path, ECR account and region) and error messages
//! that say which part is wrong, which the general-purpose crates do not give.

use std::fmt;

/// Docker Hub's registry host, used when a repository names no registry.
pub const DOCKER_HUB: &str = "docker.io";
/// The address the docker CLI stores Docker Hub's credentials under in config.json.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
/// The tag every build gets unless `--tag` is given.
pub const LATEST: &str = "latest";

/// An image repository without tag, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com/app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The registry host (with port) named in the reference, or `None` for Docker Hub.
    pub domain: Option<String>,
    /// The path within the registry, e.g. `app` or `team/app`.
    pub path: String,
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.domain {
            Some(domain) => write!(f, "{domain}/{}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

impl Repository {
    /// Parses a repository reference. A tag or digest is refused: tags are given with `--tag`.
    pub fn parse(text: &str) -> Result<Repository, String> {
        if text.is_empty() {
            return Err("the image repository is empty".to_string());
        }
        if text.len() > 255 {
            return Err(format!("the image repository is {} characters long; the limit is 255", text.len()));
        }
        if text.contains('@') {
            return Err(
                "the image repository holds a digest ('@'); give a repository without tag or digest".to_string()
            );
        }
        let (domain, remainder) = match text.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (Some(first), rest)
            }
            _ => (None, text),
        };
        if let Some(domain) = domain {
            check_domain(domain)?;
        }
        if let Some((_, tag)) = remainder.rsplit_once(':') {
            return Err(format!(
                "the image repository holds a tag (\":{tag}\"); give the repository alone and the tag with --tag"
            ));
        }
        for component in remainder.split('/') {
            check_path_component(component)?;
        }
        Ok(Repository { domain: domain.map(str::to_string), path: remainder.to_string() })
    }

    /// The registry host this repository is pushed to (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.domain.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// `repository:tag`.
    pub fn with_tag(&self, tag: &str) -> String {
        format!("{self}:{tag}")
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(inner) = domain.strip_prefix('[') {
        let (host, after) =
            inner.split_once(']').ok_or_else(|| format!("the registry {domain:?} opens '[' without ']'"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("the registry {domain:?} holds an invalid IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let valid = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!("the registry host {host:?} is not a valid host name"));
        }
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |port| port == 0) {
            return Err(format!("the registry port {port:?} is not a number from 1 to 65535"));
        }
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "the repository path component {component:?} is not valid: use lowercase letters and digits, \
             separated by '.', '_', '__' or '-'"
        )
    };
    if component.is_empty() {
        return Err("the image repository has an empty path component ('//' or a trailing '/')".to_string());
    }
    let bytes = component.as_bytes();
    if !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit() {
        return Err(bad());
    }
    if !bytes[bytes.len() - 1].is_ascii_lowercase() && !bytes[bytes.len() - 1].is_ascii_digit() {
        return Err(bad());
    }
    // Separators between alphanumeric runs: one '.', one '_', two '_', or any number of '-'.
    let mut separator = String::new();
    for c in component.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !(separator.is_empty()
                || separator == "."
                || separator == "_"
                || separator == "__"
                || separator.chars().all(|s| s == '-'))
            {
                return Err(bad());
            }
            separator.clear();
        } else if matches!(c, '.' | '_' | '-') {
            separator.push(c);
        } else {
            return Err(bad());
        }
    }
    Ok(())
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "the tag {tag:?} is not valid: up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ))
    }
}

/// An Amazon ECR registry host, with the account and region read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrRegistry {
    pub host: String,
    pub account: String,
    pub region: String,
}

impl EcrRegistry {
    /// Recognises ECR's private registry hosts: `<account>.dkr.ecr.<region>.amazonaws.com`, the
    /// `.amazonaws.com.cn` form, the FIPS form `dkr.ecr-fips`, and the dual-stack forms
    /// `<account>.dkr-ecr.<region>.on.aws` and `dkr-ecr-fips`.
    pub fn detect(host: &str) -> Option<EcrRegistry> {
        let host = host.trim().trim_start_matches("https://").trim_end_matches('/').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let account = *labels.first()?;
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let region = match labels.as_slice() {
            [_, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com"]
            | [_, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com", "cn"]
            | [_, "dkr-ecr" | "dkr-ecr-fips", region, "on", "aws"] => *region,
            _ => return None,
        };
        let region_valid =
            !region.is_empty() && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        region_valid.then(|| EcrRegistry {
            host: host.clone(),
            account: account.to_string(),
            region: region.to_string(),
        })
    }
}

/// A platform as `docker build --platform` and image indexes name it: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `linux/arm64` or `linux/arm/v7`: two or three parts, none empty, no whitespace.
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &&str| !part.is_empty() && !part.contains(char::is_whitespace);
        match parts.as_slice() {
            [os, architecture, rest @ ..] if rest.len() <= 1 && parts.iter().all(valid) => Ok(Platform {
                os: os.to_string(),
                architecture: architecture.to_string(),
                variant: rest.first().map(|variant| variant.to_string()),
            }),
            _ => Err(format!("{text:?} is not OS/ARCH[/VARIANT]")),
        }
    }

    /// Whether an image index can name it: letters, digits and `_` in each part.
    pub fn check_index_name(&self) -> Result<(), String> {
        let valid = |part: &str| part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let parts = [Some(self.os.as_str()), Some(self.architecture.as_str()), self.variant.as_deref()];
        match parts.into_iter().flatten().all(valid) {
            true => Ok(()),
            false => Err(format!("{:?} is not OS/ARCH[/VARIANT]", self.to_string())),
        }
    }

    /// The suffix of the platform's own tags in a multi-platform run, e.g. `arm64` or `arm-v7`.
    pub fn tag_suffix(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}-{variant}", self.architecture),
            None => self.architecture.clone(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The tag a build pushes: `tag` itself, or, for one platform of a multi-platform run, its own
/// `TAG-<arch>` (`v1-arm64`, `latest-arm-v7`), from which the index is made.
pub fn platform_tag(tag: &str, platform: Option<&Platform>) -> String {
    match platform {
        Some(platform) => format!("{tag}-{}", platform.tag_suffix()),
        None => tag.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_parse() {
        let cases = [
            ("app", None, "app"),
            ("team/app", None, "team/app"),
            ("localhost/app", Some("localhost"), "app"),
            ("127.0.0.1:5000/a/b", Some("127.0.0.1:5000"), "a/b"),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/my-app",
                Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
                "my-app",
            ),
            ("a__b/c.d-e--f", None, "a__b/c.d-e--f"),
            ("[::1]:5000/app", Some("[::1]:5000"), "app"),
        ];
        for (text, domain, path) in cases {
            let repo = Repository::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(repo.domain.as_deref(), domain, "{text}");
            assert_eq!(repo.path, path, "{text}");
            assert_eq!(repo.to_string(), text);
        }
        assert_eq!(Repository::parse("app").unwrap().registry(), "docker.io");
    }

    #[test]
    fn invalid_repositories_are_refused() {
        for text in [
            "",
            "App",
            "app:latest",
            "reg.io/app:1",
            "app@sha256:00",
            "a//b",
            "a/",
            "-a",
            "a..b",
            "a___b",
            "a b",
            "bad_host.io:x/app",
            "ex-.com/app",
        ] {
            assert!(Repository::parse(text).is_err(), "{text:?} should be refused");
        }
        assert!(Repository::parse("app:latest").unwrap_err().contains("--tag"));
    }

    #[test]
    fn tags_are_checked() {
        for tag in ["latest", "v1.2.3", "abc1234", "_x", "A-b_c.d"] {
            assert_eq!(check_tag(tag), Ok(()), "{tag}");
        }
        for tag in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(check_tag(tag).is_err(), "{tag}");
        }
    }

    #[test]
    fn ecr_registries_are_detected() {
        let ecr = EcrRegistry::detect("123456789012.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((ecr.account.as_str(), ecr.region.as_str()), ("123456789012", "eu-west-1"));
        for host in [
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
            "123456789012.dkr-ecr.us-east-1.on.aws",
            "123456789012.dkr-ecr-fips.us-gov-west-1.on.aws",
            "https://123456789012.dkr.ecr.us-east-1.amazonaws.com",
        ] {
            assert!(EcrRegistry::detect(host).is_some(), "{host}");
        }
        for host in [
            "docker.io",
            "12345.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.eu-west-1.example.com",
            "127.0.0.1:5000",
        ] {
            assert!(EcrRegistry::detect(host).is_none(), "{host}");
        }
    }
}
