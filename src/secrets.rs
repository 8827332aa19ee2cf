//! Secret values, `SSM:` references, and the redactor that every output passes through.
//!
//! A secret is registered with the process-wide [`redactor`] the moment the agent knows it (read from
//! the environment, resolved from SSM, received as a registry token). Logs, errors and the dry-run
//! plan are written through [`redact`], which replaces every registered value with `********`.

use std::fmt;
use std::sync::{OnceLock, RwLock};

/// What a masked secret is printed as.
pub const MASK: &str = "********";

/// The prefix that marks a value as a reference to an SSM parameter (Jets-style: `SSM:/path`).
pub const SSM_PREFIX: &str = "SSM:";

/// A secret string: its `Debug` and `Display` print the mask, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value and registers it with the redactor.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        redactor().register(&value);
        Secret(value)
    }

    /// The secret itself: only for the code that must use it (write a key file, log in).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// A reference to an SSM Parameter Store parameter, such as `SSM:/ci/docker/pass`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SsmRef {
    /// The parameter's name or path, e.g. `/ci/docker/pass`.
    pub name: String,
}

impl fmt::Display for SsmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SSM_PREFIX}{}", self.name)
    }
}

impl SsmRef {
    /// `Ok(None)` when the value is not a reference; `Err` with a message (that never repeats the
    /// value, which may be a secret) when it is a reference with an invalid parameter name.
    pub fn parse(value: &str) -> Result<Option<SsmRef>, String> {
        let trimmed = value.trim();
        let Some(prefix) = trimmed.get(..SSM_PREFIX.len()) else {
            return Ok(None);
        };
        if !prefix.eq_ignore_ascii_case(SSM_PREFIX) {
            return Ok(None);
        }
        let name = &trimmed[SSM_PREFIX.len()..];
        if name.is_empty() {
            return Err("the SSM: reference names no parameter".to_string());
        }
        if name.len() > 2048 {
            return Err("the SSM: parameter name is longer than 2048 characters".to_string());
        }
        // Parameter names allow a-z, A-Z, 0-9, and _ . - / (AWS Systems Manager's rule).
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c))) {
            return Err(format!(
                "the SSM: parameter name {name:?} contains {bad:?}; names may hold only letters, digits and _ . - /"
            ));
        }
        if name.contains("//") || (name.contains('/') && !name.starts_with('/')) {
            return Err(format!(
                "the SSM: parameter name {name:?} is not a valid path; a path starts with / and has no empty segment"
            ));
        }
        Ok(Some(SsmRef { name: name.to_string() }))
    }
}

/// Where a value of the configuration came from, as shown by the dry-run plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--image`.
    Flag(&'static str),
    /// An environment variable, e.g. `DOCKER_HOST`.
    Env(&'static str),
    /// An SSM parameter referenced by an environment variable or flag.
    Ssm { via: Box<Origin>, reference: SsmRef },
    /// The environment variable that a `--secret id=ID,env=VAR` reads.
    BuildSecret { id: String, var: String },
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "flag {name}"),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Ssm { via, reference } => write!(f, "{reference} (via {via})"),
            Origin::BuildSecret { id, var } => write!(f, "env {var} (--secret id={id})"),
            Origin::Default => f.write_str("default"),
        }
    }
}

impl Origin {
    /// The variable or flag name, for error messages.
    pub fn subject(&self) -> String {
        match self {
            Origin::Flag(name) | Origin::Env(name) => (*name).to_string(),
            Origin::Ssm { via, .. } => via.subject(),
            Origin::BuildSecret { id, .. } => format!("--secret id={id}"),
            Origin::Default => "default".to_string(),
        }
    }
}

/// The registry of secret values that must never be printed.
#[derive(Default)]
pub struct Redactor {
    values: RwLock<Vec<String>>,
}

/// Values shorter than this are not registered: masking every "test" or "latest" in the output
/// would garble it (a tag, a user name) and protects little. Registry tokens, AWS keys and the
/// lines of a private key are far longer.
const MIN_VALUE: usize = 6;
/// The lines of a multi-line secret (a key) are registered on their own from this length on.
const MIN_LINE: usize = 16;

impl Redactor {
    /// Registers a secret value, and each of its lines (a private key is printed line by line by
    /// some tools), and the lines of its one-line `\n`-escaped form.
    pub fn register(&self, value: &str) {
        let mut fragments: Vec<String> = Vec::new();
        let mut push = |fragment: &str, minimum: usize| {
            let fragment = fragment.trim_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
            if fragment.len() >= minimum && !fragment.starts_with("-----") {
                fragments.push(fragment.to_string());
            }
        };
        push(value, MIN_VALUE);
        for line in value.split(['\n', '\r']) {
            push(line, MIN_LINE);
        }
        for line in value.split("\\n") {
            push(line, MIN_LINE);
        }
        if fragments.is_empty() {
            return;
        }
        let mut values = self.values.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for fragment in fragments {
            if !values.contains(&fragment) {
                values.push(fragment);
            }
        }
        // Longest first, so a whole value is masked before any of its parts.
        values.sort_by_key(|value| std::cmp::Reverse(value.len()));
    }

    /// The text with every registered secret replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let values = self.values.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = text.to_string();
        for value in values.iter() {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), MASK);
            }
        }
        out
    }
}

/// The process-wide redactor.
pub fn redactor() -> &'static Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(Redactor::default)
}

/// Shorthand for `redactor().redact(text)`.
pub fn redact(text: &str) -> String {
    redactor().redact(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssm_references_are_recognised() {
        assert_eq!(SsmRef::parse("plain value"), Ok(None));
        assert_eq!(SsmRef::parse("ssh://x"), Ok(None));
        assert_eq!(SsmRef::parse("SSM"), Ok(None));
        assert_eq!(SsmRef::parse("SSM:/ci/docker/pass"), Ok(Some(SsmRef { name: "/ci/docker/pass".into() })));
        assert_eq!(SsmRef::parse("ssm:name_1"), Ok(Some(SsmRef { name: "name_1".into() })));
        assert!(SsmRef::parse("SSM:").is_err());
        assert!(SsmRef::parse("SSM:/a b").is_err());
        assert!(SsmRef::parse("SSM:/a//b").is_err());
        assert!(SsmRef::parse("SSM:a/b").is_err());
    }

    #[test]
    fn redactor_masks_whole_values_and_key_lines() {
        let redactor = Redactor::default();
        redactor.register("hunter22");
        redactor.register("-----BEGIN KEY-----\nAAAAline1-long-enough\nBBBBline2-long-enough\n-----END KEY-----\n");
        redactor.register("test");
        assert_eq!(redactor.redact("pass=hunter22!"), format!("pass={MASK}!"));
        assert_eq!(redactor.redact("x BBBBline2-long-enough y"), format!("x {MASK} y"));
        assert_eq!(redactor.redact("-----BEGIN KEY----- latest test"), "-----BEGIN KEY----- latest test");
    }

    #[test]
    fn redactor_masks_escaped_one_line_keys() {
        let redactor = Redactor::default();
        redactor.register("-----BEGIN KEY-----\\nAAAAline1-long-enough\\nBBBBline2-long-enough\\n-----END KEY-----");
        assert_eq!(redactor.redact("AAAAline1-long-enough"), MASK);
    }

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("s3cr3t-value");
        assert_eq!(format!("{secret} {secret:?}"), format!("{MASK} {MASK}"));
        assert_eq!(redact("got s3cr3t-value"), format!("got {MASK}"));
    }
}
