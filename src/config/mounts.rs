//! The `--secret` and `--ssh` flags (for `RUN --mount=type=secret` and `RUN --mount=type=ssh`):
//! parsed as buildx spells them, checked, and their values read — the moment they are read, every
//! value is registered with the redactor. The plan shows ids and sources, never values.
//!
//! `--secret` follows buildx (`util/buildflags/secrets.go`) and BuildKit's secrets store:
//! comma-separated `key=value` fields `id`, `type` (`env` or `file`), `src`/`source`, `env`;
//! `id=ID` alone reads the environment variable ID if it is set, else the file ID. An environment
//! variable may hold `SSM:/parameter`, fetched with the run's other SSM references.
//! `--ssh` follows buildx too: `default`, `ID`, or `ID=PATH[,PATH…]`; here a PATH is a private key
//! file (decoded with JETS_SSH_KEY_PASSPHRASE when encrypted), and `default` without a path is the
//! key in JETS_SSH_KEY. The keys go into an in-memory agent, never to a disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Value, absolute};
use crate::error::Problem;
use crate::secrets::{Origin, Secret, SsmRef};
use crate::session::build_secrets::{MAX_SECRET_BYTES, SecretBytes};
use crate::ssh::key::SshKey;

/// One `--secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSecret {
    pub id: String,
    pub source: SecretSource,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable; its value may be an `SSM:` reference.
    Env { var: String, value: Value<SecretBytes>, origin: Origin },
    /// A file, read when the configuration is checked.
    File { path: PathBuf, value: SecretBytes },
}

impl SecretSource {
    /// Where the value comes from, for the plan.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env { var, value: Value::Known(_), .. } => format!("env {var}"),
            SecretSource::Env { var, value: Value::Ssm(reference), .. } => format!("{reference} (via env {var})"),
            SecretSource::File { path, .. } => format!("file {}", path.display()),
        }
    }
}

/// One `--ssh`: an agent id and the keys its agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshForward {
    pub id: String,
    pub keys: SshKeys,
}

/// The keys of one forwarded agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshKeys {
    /// The key in `JETS_SSH_KEY` (decoded in the configuration, or once its SSM reference resolved).
    JetsSshKey,
    /// Key files, decoded when the configuration is checked.
    Files(Vec<KeyFile>),
}

/// A decoded key file.
#[derive(Debug, Clone)]
pub struct KeyFile {
    pub path: PathBuf,
    pub key: Arc<SshKey>,
}

impl PartialEq for KeyFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.key.key.public_key() == other.key.key.public_key()
    }
}

impl Eq for KeyFile {}

impl SshForward {
    /// What the agent holds, for the plan.
    pub fn describe(&self) -> String {
        match &self.keys {
            SshKeys::JetsSshKey => "the key in JETS_SSH_KEY".to_string(),
            SshKeys::Files(files) => files
                .iter()
                .map(|file| format!("{} ({})", file.path.display(), file.key.describe()))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

const SECRET_HINT: &str =
    "write --secret id=ID,env=VARIABLE or --secret id=ID,src=FILE (as buildx does), e.g. --secret id=npm,env=NPM_TOKEN";
const SSH_HINT: &str = "write --ssh default (the key in JETS_SSH_KEY) or --ssh ID=PATH to a private key file";

/// A value's environment variable, as the configuration reads it.
pub trait Variables {
    fn variable(&self, name: &str) -> Option<&str>;
}

impl Variables for crate::cli::Environment {
    fn variable(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// Parses every `--secret`, reading each value; problems are added to `problems`.
pub fn parse_secrets(
    flags: &[String],
    env: &impl Variables,
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> Vec<BuildSecret> {
    let mut secrets: Vec<BuildSecret> = Vec::new();
    for text in flags {
        let Some(fields) = secret_fields(text, problems) else { continue };
        let subject = format!("--secret id={}", fields.id);
        if secrets.iter().any(|secret| secret.id == fields.id) {
            problems.push(
                Problem::new(&subject, "is given twice").hint("give each secret id once; the Dockerfile names it"),
            );
            continue;
        }
        let source = match (fields.env, fields.src, fields.kind.as_deref()) {
            (Some(var), _, _) | (None, Some(var), Some("env")) => {
                read_env_secret(&subject, &fields.id, &var, env, problems)
            }
            (None, Some(src), _) => read_file_secret(&subject, &absolute(Path::new(&src), cwd), problems),
            (None, None, Some("env")) => read_env_secret(&subject, &fields.id, &fields.id, env, problems),
            (None, None, Some(_)) => read_file_secret(&subject, &absolute(Path::new(&fields.id), cwd), problems),
            // `id=ID` alone: BuildKit's store reads the variable ID if set, else the file ID.
            (None, None, None) => {
                if env.variable(&fields.id).is_some() {
                    read_env_secret(&subject, &fields.id, &fields.id, env, problems)
                } else {
                    let path = absolute(Path::new(&fields.id), cwd);
                    if path.exists() {
                        read_file_secret(&subject, &path, problems)
                    } else {
                        problems.push(
                            Problem::new(
                                &subject,
                                format!(
                                    "names neither a set environment variable {} nor a file {}",
                                    fields.id,
                                    path.display()
                                ),
                            )
                            .hint(SECRET_HINT),
                        );
                        None
                    }
                }
            }
        };
        if let Some(source) = source {
            secrets.push(BuildSecret { id: fields.id, source });
        }
    }
    secrets
}

/// The fields of one `--secret`.
struct SecretFields {
    id: String,
    kind: Option<String>,
    src: Option<String>,
    env: Option<String>,
}

fn secret_fields(text: &str, problems: &mut Vec<Problem>) -> Option<SecretFields> {
    let mut fields = SecretFields { id: String::new(), kind: None, src: None, env: None };
    let mut ok = true;
    // buildx reads the value as one CSV record; the values here (ids, variable names, paths)
    // rarely hold commas or quotes, so fields are split on commas and surrounding quotes dropped.
    for field in text.split(',').map(str::trim).filter(|field| !field.is_empty()) {
        let Some((key, value)) = field.split_once('=') else {
            problems.push(
                Problem::new("--secret", format!("the field {field:?} of {text:?} is not key=value")).hint(SECRET_HINT),
            );
            ok = false;
            continue;
        };
        let value = value.trim_matches('"').to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "id" => fields.id = value,
            "type" if value == "env" || value == "file" => fields.kind = Some(value),
            "type" => {
                problems.push(
                    Problem::new("--secret", format!("the secret type {value:?} is not env or file")).hint(SECRET_HINT),
                );
                ok = false;
            }
            "src" | "source" => fields.src = Some(value),
            "env" => fields.env = Some(value),
            other => {
                problems.push(
                    Problem::new(
                        "--secret",
                        format!("{other:?} in {text:?} is not a secret field (id, type, src, env)"),
                    )
                    .hint(SECRET_HINT),
                );
                ok = false;
            }
        }
    }
    if ok && fields.id.is_empty() {
        // buildx takes the id from the file's name or the variable when `id` is missing.
        fields.id = match (&fields.env, &fields.src) {
            (Some(var), _) => var.clone(),
            (None, Some(src)) => {
                Path::new(src).file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
            }
            (None, None) => String::new(),
        };
    }
    if ok && fields.id.is_empty() {
        problems.push(Problem::new("--secret", format!("{text:?} names no secret id")).hint(SECRET_HINT));
        ok = false;
    }
    ok.then_some(fields)
}

fn read_env_secret(
    subject: &str,
    id: &str,
    var: &str,
    env: &impl Variables,
    problems: &mut Vec<Problem>,
) -> Option<SecretSource> {
    let Some(text) = env.variable(var) else {
        problems.push(
            Problem::new(subject, format!("reads the environment variable {var}, which is not set"))
                .hint(format!("set {var} (it may hold SSM:/parameter), or give the secret from a file with src=FILE")),
        );
        return None;
    };
    let origin = Origin::BuildSecret { id: id.to_string(), var: var.to_string() };
    match SsmRef::parse(text) {
        Ok(Some(reference)) => Some(SecretSource::Env { var: var.to_string(), value: Value::Ssm(reference), origin }),
        Ok(None) => {
            let value = SecretBytes::new(text.as_bytes().to_vec());
            check_size(subject, value.expose().len(), problems)?;
            Some(SecretSource::Env { var: var.to_string(), value: Value::Known(value), origin })
        }
        Err(message) => {
            problems.push(
                Problem::new(subject, format!("env {var}: {message}"))
                    .hint("write SSM:/path/to/parameter, e.g. SSM:/codebuild/npm-token"),
            );
            None
        }
    }
}

fn read_file_secret(subject: &str, path: &Path, problems: &mut Vec<Problem>) -> Option<SecretSource> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let value = SecretBytes::new(bytes);
            check_size(subject, value.expose().len(), problems)?;
            Some(SecretSource::File { path: path.to_path_buf(), value })
        }
        Err(error) => {
            let why = match error.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                std::io::ErrorKind::PermissionDenied => "cannot be read (permission denied)".to_string(),
                _ if path.is_dir() => "is a directory".to_string(),
                _ => format!("cannot be read ({error})"),
            };
            problems.push(
                Problem::new(subject, format!("the file {} {why}", path.display()))
                    .hint("give the secret's file with src=PATH (relative to the working directory)"),
            );
            None
        }
    }
}

fn check_size(subject: &str, bytes: usize, problems: &mut Vec<Problem>) -> Option<()> {
    if bytes > MAX_SECRET_BYTES {
        problems.push(
            Problem::new(subject, format!("holds {bytes} bytes; BuildKit takes secrets up to {MAX_SECRET_BYTES}"))
                .hint("mount a smaller secret, e.g. a token instead of a whole file"),
        );
        return None;
    }
    Some(())
}

/// Parses every `--ssh`, decoding the key files; problems are added to `problems`.
/// `jets_ssh_key_set` tells whether `--ssh default` has a key to forward.
pub fn parse_ssh(
    flags: &[String],
    jets_ssh_key_set: bool,
    passphrase: Option<&Secret>,
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> Vec<SshForward> {
    let mut forwards: Vec<SshForward> = Vec::new();
    for text in flags {
        let text = text.trim();
        let (id, paths) = match text.split_once('=') {
            Some((id, paths)) => (id.trim(), Some(paths)),
            None => (text, None),
        };
        if id.is_empty() || id.contains(|c: char| c.is_whitespace() || c == ',') {
            problems.push(Problem::new("--ssh", format!("{text:?} names no valid id")).hint(SSH_HINT));
            continue;
        }
        let subject = format!("--ssh {id}");
        if forwards.iter().any(|forward| forward.id == id) {
            problems
                .push(Problem::new(&subject, "is given twice").hint("give each ssh id once, with all its key files"));
            continue;
        }
        let paths: Vec<&str> = paths
            .map(|paths| paths.split(',').map(str::trim).filter(|path| !path.is_empty()).collect())
            .unwrap_or_default();
        let keys = if paths.is_empty() {
            if !jets_ssh_key_set {
                problems.push(
                    Problem::new(&subject, "forwards the key in JETS_SSH_KEY, which is not set")
                        .hint(format!("set JETS_SSH_KEY, or name a key file: --ssh {id}=PATH")),
                );
                continue;
            }
            SshKeys::JetsSshKey
        } else {
            let mut files = Vec::new();
            for path in paths {
                let path = absolute(Path::new(path), cwd);
                if let Some(key) = read_key_file(&subject, &path, passphrase, problems) {
                    files.push(KeyFile { path, key: Arc::new(key) });
                }
            }
            SshKeys::Files(files)
        };
        forwards.push(SshForward { id: id.to_string(), keys });
    }
    forwards
}

fn read_key_file(
    subject: &str,
    path: &Path,
    passphrase: Option<&Secret>,
    problems: &mut Vec<Problem>,
) -> Option<SshKey> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket()) {
        problems.push(
            Problem::new(subject, format!("{} is a socket (an ssh-agent's?), not a key file", path.display()))
                .hint("the agent forwards keys it holds itself: name the private key file, e.g. --ssh default=~/.ssh/id_ed25519"),
        );
        return None;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let why = if error.kind() == std::io::ErrorKind::NotFound {
                "does not exist".to_string()
            } else {
                format!("cannot be read ({error})")
            };
            problems.push(Problem::new(subject, format!("the key file {} {why}", path.display())).hint(SSH_HINT));
            return None;
        }
    };
    match SshKey::parse(&text, passphrase) {
        Ok(key) => Some(key),
        Err(error) => {
            problems.push(Problem::new(subject, format!("the key file {} {error}", path.display())).hint(error.hint()));
            None
        }
    }
}

/// With `--builder auto`, the daemon decides the builder: `--secret` and `--ssh` (the `flags` given,
/// see [`crate::config::Build::needs_buildkit`]) need BuildKit, so a daemon without it is a config
/// error, found at the daemon check before anything is sent.
pub fn check_builder_offers_mounts(
    flags: &[&'static str],
    facts: &crate::docker::daemon::Facts,
) -> Result<(), crate::error::Error> {
    if facts.offers_buildkit() {
        return Ok(());
    }
    let problems: Vec<Problem> = flags
        .iter()
        .map(|flag| {
            Problem::new(*flag, format!("needs BuildKit, and the daemon does not offer it ({})", facts.summary()))
                .hint("build on a daemon with BuildKit (Docker 18.09 or later on Linux), or build without the flag")
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(crate::error::Error::Config(problems)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Vars(BTreeMap<&'static str, &'static str>);

    impl Variables for Vars {
        fn variable(&self, name: &str) -> Option<&str> {
            self.0.get(name).copied()
        }
    }

    fn parse(flags: &[&str], vars: &[(&'static str, &'static str)], cwd: &Path) -> (Vec<BuildSecret>, Vec<String>) {
        let flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
        let mut problems = Vec::new();
        let secrets = parse_secrets(&flags, &Vars(vars.iter().copied().collect()), cwd, &mut problems);
        (secrets, problems.into_iter().map(|problem| format!("{}: {}", problem.subject, problem.message)).collect())
    }

    #[test]
    fn secrets_are_read_as_buildx_spells_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token.txt"), "file-secret-value").unwrap();
        std::fs::write(dir.path().join("bare"), "bare-file-secret").unwrap();
        let vars = [("NPM_TOKEN", "env-secret-value"), ("BARE_ENV", "bare-env-secret"), ("FROM_SSM", "SSM:/ci/npm")];
        let (secrets, problems) = parse(
            &[
                "id=npm,env=NPM_TOKEN",
                "id=file,src=token.txt",
                "type=file,id=file2,source=token.txt",
                "type=env,id=env2,src=NPM_TOKEN",
                "id=BARE_ENV",
                "id=bare",
                "env=NPM_TOKEN",
                "id=ssm,env=FROM_SSM",
            ],
            &vars,
            dir.path(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let described: Vec<(&str, String)> =
            secrets.iter().map(|secret| (secret.id.as_str(), secret.source.describe())).collect();
        let token = dir.path().join("token.txt");
        assert_eq!(
            described,
            [
                ("npm", "env NPM_TOKEN".to_string()),
                ("file", format!("file {}", token.display())),
                ("file2", format!("file {}", token.display())),
                ("env2", "env NPM_TOKEN".to_string()),
                ("BARE_ENV", "env BARE_ENV".to_string()),
                ("bare", format!("file {}", dir.path().join("bare").display())),
                ("NPM_TOKEN", "env NPM_TOKEN".to_string()),
                ("ssm", "SSM:/ci/npm (via env FROM_SSM)".to_string()),
            ]
        );
        let SecretSource::File { value, .. } = &secrets[1].source else { panic!("{:?}", secrets[1]) };
        assert_eq!(value.expose(), b"file-secret-value");
        assert!(!crate::secrets::redact("x env-secret-value file-secret-value").contains("secret-value"));
        assert!(!format!("{secrets:?}").contains("secret-value"));
    }

    #[test]
    fn every_missing_secret_is_a_problem_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (secrets, problems) = parse(
            &[
                "id=a,env=UNSET",
                "id=b,src=missing.txt",
                "id=nowhere",
                "id=c,type=socket",
                "novalue",
                "id=d,env=SET,x=1",
            ],
            &[("SET", "some-value")],
            dir.path(),
        );
        assert!(secrets.is_empty());
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems[0].starts_with("--secret id=a: reads the environment variable UNSET, which is not set"));
        assert!(problems[1].contains("missing.txt does not exist"), "{problems:?}");
        assert!(problems[2].contains("names neither a set environment variable nowhere nor a file"), "{problems:?}");
    }

    #[test]
    fn auto_on_a_daemon_without_buildkit_refuses_secrets_and_ssh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let (cli, _) = crate::cli::parse(["agent", "run", "--image", "app", "--secret", "id=t,env=TOKEN"]).unwrap();
        let crate::cli::Command::Run(args) = cli.command else { panic!("not a run") };
        let env = crate::cli::Environment::from_pairs([("TOKEN", "auto-builder-secret"), ("HOME", "/home/ci")]);
        let config = crate::config::Config::new(&args, &crate::config::AllFlags, &env, dir.path()).unwrap();
        let facts = |os: &str, api: &str| crate::docker::daemon::Facts {
            version: "20.10".into(),
            api_version: api.into(),
            os: os.into(),
            arch: "amd64".into(),
            driver: "overlay2".into(),
            images: None,
        };
        assert!(check_builder_offers_mounts(&config.build.needs_buildkit(), &facts("linux", "1.41")).is_ok());
        let error = check_builder_offers_mounts(&config.build.needs_buildkit(), &facts("windows", "1.41")).unwrap_err();
        assert_eq!(error.exit_code(), crate::error::exit::CONFIG);
        assert!(
            error.report().contains("--secret: needs BuildKit, and the daemon does not offer it"),
            "{}",
            error.report()
        );
        assert!(check_builder_offers_mounts(&config.build.needs_buildkit(), &facts("linux", "1.38")).is_err());
    }

    #[test]
    fn a_secret_larger_than_buildkit_takes_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; MAX_SECRET_BYTES + 1]).unwrap();
        let (secrets, problems) = parse(&["id=big,src=big"], &[], dir.path());
        assert!(secrets.is_empty());
        assert_eq!(
            problems,
            [format!(
                "--secret id=big: holds {} bytes; BuildKit takes secrets up to {MAX_SECRET_BYTES}",
                MAX_SECRET_BYTES + 1
            )]
        );
    }

    #[test]
    fn ssh_default_needs_jets_ssh_key_and_key_files_must_be_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("not-a-key"), "hello").unwrap();
        let flags: Vec<String> =
            ["default", "git=missing", "other=not-a-key", "=x"].iter().map(|flag| flag.to_string()).collect();
        let mut problems = Vec::new();
        let forwards = parse_ssh(&flags, false, None, dir.path(), &mut problems);
        let subjects: Vec<&str> = problems.iter().map(|problem| problem.subject.as_str()).collect();
        assert_eq!(subjects, ["--ssh default", "--ssh git", "--ssh other", "--ssh"], "{problems:?}");
        assert_eq!(forwards.len(), 2, "the ids with bad files keep their place; the config fails on the problems");
        let mut problems = Vec::new();
        let forwards = parse_ssh(&["default".to_string()], true, None, dir.path(), &mut problems);
        assert!(problems.is_empty());
        assert_eq!(forwards, [SshForward { id: "default".into(), keys: SshKeys::JetsSshKey }]);
    }
}
