//! Secret values, `SSM:` references, and the redactor that every output passes through.
//!
//! A secret is registered with the process-wide [`redactor`] the moment the agent knows it (read from
//! the environment, resolved from SSM, received as a registry token). Logs, errors and the dry-run
//! plan are written through [`redact`], which replaces every registered value with `********`.

use std::fmt;
use std::sync::{OnceLock, RwLock};

/// A value given directly, or a reference to an SSM parameter that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<T> {
    Known(T),
    Ssm(SsmRef),
}

/// A value with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

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
    known: RwLock<Known>,
}

/// The registered fragments, and one automaton that finds them all in a single pass over a text
/// (aho-corasick: a log line is scanned once, however many forms of however many secrets there are;
/// searching for each of a few hundred fragments in turn was 60 times slower). Rebuilt by the first
/// `redact` after a registration.
#[derive(Default)]
struct Known {
    fragments: Vec<String>,
    matcher: Option<aho_corasick::AhoCorasick>,
    /// Fragments were added since the matcher was built.
    stale: bool,
}

/// Fragments shorter than this are masked only where they stand alone (see [`Redactor::redact`]);
/// longer ones wherever they occur, even inside a word.
const MIN_ANYWHERE: usize = 6;
/// The lines of a multi-line secret (a key) are registered on their own from this length on.
const MIN_LINE: usize = 16;
/// A piece of a base64 stream that encodes part of a secret at an unknown offset is registered from
/// this length on (shorter pieces would be noise; the aligned encodings are registered anyway).
const MIN_BASE64_PIECE: usize = 8;

impl Redactor {
    /// Registers a secret value in every form the agent or a library may print it in:
    /// - as it is, and each of its lines (a private key is printed line by line by some tools), and
    ///   the lines of its one-line `\n`-escaped form;
    /// - escaped as in JSON, as Rust's `Debug` does, and twice (JSON inside a JSON string or a
    ///   Debug-printed body, a Debug-printed value inside a JSON log line);
    /// - each of those URL-encoded: `%20` and `+` for a space (query strings and forms), and with
    ///   every byte but letters and digits escaped;
    /// - base64 (standard and URL-safe, with and without padding), and the pieces of base64 that
    ///   encode it inside a longer message at any offset (an `X-Registry-Auth` header, a config.json
    ///   `auth`), from [`MIN_BASE64_PIECE`] characters on.
    ///
    /// Any length is registered: a 4-character password is still a password. What decides how it is
    /// masked is [`Redactor::redact`]'s rule for short fragments.
    pub fn register(&self, value: &str) {
        if value.trim().is_empty() {
            return;
        }
        let mut fragments: Vec<String> = Vec::new();
        for form in escaped_forms(value) {
            fragments.push(form);
        }
        let trimmed = value.trim();
        if trimmed != value {
            fragments.extend(escaped_forms(trimmed));
        }
        fragments.extend(base64_forms(value.as_bytes()));
        // The lines of a multi-line value, and of its `\n`-escaped one-line form.
        for line in value.split(['\n', '\r']).chain(value.split("\\n")) {
            let line = line.trim_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
            if line.len() >= MIN_LINE && !line.starts_with("-----") && line != trimmed {
                // Not its base64: a key line is base64 already, and nothing encodes a key's lines one by one.
                fragments.extend(escaped_forms(line));
            }
        }
        self.add(fragments);
    }

    /// Registers a registry login: the password (see [`Redactor::register`]), the base64 of
    /// `user:password` as config.json's `auth` and a registry's Basic authorization hold it, and the
    /// base64 of the JSON `"password":"…"` member inside an `X-Registry-Auth` header.
    pub fn register_login(&self, user: &str, password: &str) {
        self.register(password);
        let mut fragments = base64_forms(format!("{user}:{password}").as_bytes());
        let member = format!("\"password\":{}", serde_json::Value::String(password.to_string()));
        fragments.extend(base64_forms(member.as_bytes()));
        self.add(fragments);
    }

    fn add(&self, fragments: Vec<String>) {
        let mut known = self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = known.fragments.len();
        for fragment in fragments {
            if !fragment.is_empty() && !known.fragments.contains(&fragment) {
                known.fragments.push(fragment);
            }
        }
        if known.fragments.len() != before {
            // Rebuilt by the next `redact`, so that the registrations of one step cost one build.
            known.matcher = None;
            known.stale = true;
        }
    }

    /// Like [`Redactor::redact`], or `None` when the registry is locked (for the panic hook, which
    /// may run on a thread that holds the lock).
    pub fn try_redact(&self, text: &str) -> Option<String> {
        let known = match self.known.try_read() {
            Ok(known) => known,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(redact_with(&known, text))
    }

    /// The text with every registered secret replaced by [`MASK`].
    ///
    /// The rule for short secrets: a fragment of [`MIN_ANYWHERE`] characters or more is masked
    /// wherever it occurs; a shorter one only where it stands alone, that is where neither the
    /// character before nor the one after is a letter or a digit (a `%XX` escape before it counts as
    /// a separator). So a password `ab1x` is masked in `pass=ab1x` and in `"ab1x"`, while `test` as a
    /// password leaves `latest` and `tests` readable. Overlapping occurrences are masked as one.
    pub fn redact(&self, text: &str) -> String {
        {
            let known = self.known.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !known.stale {
                return redact_with(&known, text);
            }
        }
        let mut known = self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.stale {
            known.matcher = build_matcher(&known.fragments);
            known.stale = false;
        }
        redact_with(&known, text)
    }
}

/// One automaton for all fragments: a contiguous NFA, quick to build (a DFA of a few hundred
/// fragments takes long in a debug build) and to run over log lines. `None` only if the build
/// fails (it is not expected to at such sizes): `redact_with` then searches each fragment.
fn build_matcher(fragments: &[String]) -> Option<aho_corasick::AhoCorasick> {
    aho_corasick::AhoCorasick::builder().kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA)).build(fragments).ok()
}

fn redact_with(known: &Known, text: &str) -> String {
    // Every occurrence to mask, as byte ranges, overlapping ones included.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut consider = |start: usize, end: usize| {
        if end - start >= MIN_ANYWHERE || stands_alone(text, start, end) {
            spans.push((start, end));
        }
    };
    match &known.matcher {
        Some(matcher) => {
            for found in matcher.find_overlapping_iter(text) {
                consider(found.start(), found.end());
            }
        }
        None => {
            for fragment in &known.fragments {
                for (start, _) in text.match_indices(fragment.as_str()) {
                    consider(start, start + fragment.len());
                }
            }
        }
    }
    if spans.is_empty() {
        return text.to_string();
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut spans = spans.into_iter().peekable();
    while let Some((start, mut end)) = spans.next() {
        // Overlapping or touching occurrences become one mask.
        while let Some(&(next_start, next_end)) = spans.peek() {
            if next_start > end {
                break;
            }
            end = end.max(next_end);
            spans.next();
        }
        out.push_str(&text[copied..start]);
        out.push_str(MASK);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// The value as it is and in its escaped and URL-encoded forms.
fn escaped_forms(value: &str) -> Vec<String> {
    let json = json_escaped(value);
    let debug = debug_escaped(value);
    let mut forms = Vec::new();
    let twice = [json_escaped(&json), debug_escaped(&json), json_escaped(&debug)];
    for escaped in [value.to_string(), json, debug].into_iter().chain(twice) {
        let form: String = form_urlencoded::byte_serialize(escaped.as_bytes()).collect();
        let percent = form.replace('+', "%20");
        let every = percent_encoding::utf8_percent_encode(&escaped, percent_encoding::NON_ALPHANUMERIC).to_string();
        for text in [escaped, form, percent, every] {
            if !forms.contains(&text) {
                forms.push(text);
            }
        }
    }
    forms
}

/// The text as it stands between the quotes of a JSON string.
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::Value::String(text.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The text as it stands between the quotes of Rust's `Debug` output for a string.
fn debug_escaped(text: &str) -> String {
    let quoted = format!("{text:?}");
    quoted[1..quoted.len() - 1].to_string()
}

/// The base64 encodings of the bytes, and the pieces that encode them inside a longer base64 stream.
fn base64_forms(bytes: &[u8]) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = Vec::new();
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(bytes));
    }
    // At an offset of 0, 1 or 2 bytes into a 3-byte group, the characters that encode only the
    // secret's bits are the same whatever surrounds it: register those.
    for offset in 0..3usize {
        let mut padded = vec![0u8; offset];
        padded.extend_from_slice(bytes);
        let encoded = STANDARD_NO_PAD.encode(&padded);
        let first = (8 * offset).div_ceil(6);
        let last = (8 * padded.len()) / 6;
        if last > first && last - first >= MIN_BASE64_PIECE {
            let piece = &encoded[first..last];
            forms.push(piece.to_string());
            forms.push(piece.replace('+', "-").replace('/', "_"));
        }
    }
    forms.dedup();
    forms
}

/// Whether `text[start..end]` stands alone (see [`Redactor::redact`]).
fn stands_alone(text: &str, start: usize, end: usize) -> bool {
    let before = &text[..start];
    let separated_before = match before.chars().next_back() {
        None => true,
        Some(c) if !c.is_alphanumeric() => true,
        Some(_) => is_percent_escape_end(before),
    };
    separated_before && text[end..].chars().next().is_none_or(|c| !c.is_alphanumeric())
}

/// Whether the text ends with a `%XX` escape.
fn is_percent_escape_end(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 3
        && bytes[bytes.len() - 3] == b'%'
        && bytes[bytes.len() - 2].is_ascii_hexdigit()
        && bytes[bytes.len() - 1].is_ascii_hexdigit()
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
        assert_eq!(redactor.redact("pass=hunter22!"), format!("pass={MASK}!"));
        assert_eq!(redactor.redact("x BBBBline2-long-enough y"), format!("x {MASK} y"));
        assert_eq!(redactor.redact("-----BEGIN KEY----- latest"), "-----BEGIN KEY----- latest");
    }

    #[test]
    fn a_short_secret_is_masked_where_it_stands_alone_and_words_around_stay_readable() {
        let redactor = Redactor::default();
        redactor.register("test");
        redactor.register("ab1x");
        assert_eq!(redactor.redact("latest tests attest"), "latest tests attest");
        assert_eq!(redactor.redact("pass test."), format!("pass {MASK}."));
        assert_eq!(redactor.redact("test"), MASK);
        assert_eq!(redactor.redact(r#"{"password":"ab1x"}"#), format!(r#"{{"password":"{MASK}"}}"#));
        assert_eq!(redactor.redact("p=ab1x&q=%22ab1x%22"), format!("p={MASK}&q=%22{MASK}%22"));
        assert_eq!(redactor.redact("xab1x ab1xy"), "xab1x ab1xy");
        // Its base64 is long enough to be masked anywhere.
        assert_eq!(redactor.redact("auth=YWIxeA=="), format!("auth={MASK}"));
    }

    #[test]
    fn overlapping_secrets_are_masked_as_one() {
        let redactor = Redactor::default();
        redactor.register("abcdef12");
        redactor.register("ef12gh99");
        assert_eq!(redactor.redact("x abcdef12gh99 y"), format!("x {MASK} y"));
        assert_eq!(redactor.try_redact("abcdef12 ef12gh99"), Some(format!("{MASK} {MASK}")));
    }

    #[test]
    fn json_escaped_password_is_masked_in_every_escaping() {
        let redactor = Redactor::default();
        let password = r#"p"a\s s%1"#;
        redactor.register(password);
        let json = serde_json::json!({ "password": password }).to_string();
        assert_eq!(redactor.redact(&json), format!(r#"{{"password":"{MASK}"}}"#));
        assert!(!redactor.redact(&format!("{password:?}")).contains("s s"));
        // JSON inside a Debug-printed body, and JSON inside a JSON string.
        assert_eq!(redactor.redact(&format!("{json:?}")), format!(r#""{{\"password\":\"{MASK}\"}}""#));
        let twice = serde_json::Value::String(json.clone()).to_string();
        assert!(!redactor.redact(&twice).contains("s s"), "{}", redactor.redact(&twice));
    }

    #[test]
    fn url_encoded_build_arg_is_masked_with_either_space_form() {
        let redactor = Redactor::default();
        let value = r#"my tok%en"\x"#;
        redactor.register(value);
        // What bollard puts in the build URL: the build args as JSON, form-encoded.
        let buildargs = serde_json::json!({ "TOKEN": value, "OTHER": "1" }).to_string();
        let query: String = form_urlencoded::byte_serialize(buildargs.as_bytes()).collect();
        let redacted = redactor.redact(&format!("/build?buildargs={query}&t=x"));
        assert!(redacted.contains(MASK) && !redacted.contains("tok"), "{redacted}");
        let redacted = redactor.redact(&format!("/build?buildargs={}", query.replace('+', "%20")));
        assert!(redacted.contains(MASK) && !redacted.contains("tok"), "{redacted}");
        let every = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string();
        assert_eq!(redactor.redact(&every), MASK);
    }

    #[test]
    fn a_login_is_masked_in_config_auth_and_registry_auth_header() {
        use base64::Engine;
        let redactor = Redactor::default();
        redactor.register_login("AWS", "pw\"4");
        let auth = base64::engine::general_purpose::STANDARD.encode("AWS:pw\"4");
        assert_eq!(redactor.redact(&format!(r#""auth": "{auth}""#)), format!(r#""auth": "{MASK}""#));
        for prefix in ["", "x", "xy"] {
            let header =
                serde_json::json!({ "username": format!("{prefix}AWS"), "password": "pw\"4", "serveraddress": "r.io" });
            for engine in [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE] {
                let encoded = engine.encode(header.to_string());
                let redacted = redactor.redact(&encoded);
                assert!(redacted.contains(MASK), "{prefix:?}: {encoded} -> {redacted}");
            }
        }
    }

    #[test]
    fn base64_of_a_secret_inside_a_longer_message_is_masked_at_any_offset() {
        use base64::Engine;
        let redactor = Redactor::default();
        redactor.register("123456789012-auth-token");
        for prefix in ["", "A", "AW", "AWS:"] {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}123456789012-auth-token"));
            assert!(redactor.redact(&encoded).contains(MASK), "{prefix:?}");
        }
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
