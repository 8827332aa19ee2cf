//! Resolution: the configuration's `SSM:` references, fetched in one batch (the plan's first step),
//! each turned into its field's typed value by the field's own parser, giving [`Resolved`], the
//! fully typed values the later steps read. A field is secret because its type is: the parser of a
//! secret field wraps the text in a [`Secret`] (or [`SecretBytes`]) first, which registers it with the
//! redactor before anything can be said about it; nothing here matches on a variable's name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::mounts::SecretSource;
use crate::config::{Config, Sourced, Value, check_known_hosts, normalise_registry, password_text};
use crate::docker::host::DockerHost;
use crate::error::{Error, Problem};
use crate::nodes::affinity;
use crate::nodes::{Candidate, Slot};
use crate::secrets::{Secret, SsmRef};
use crate::session::SessionMounts;
use crate::session::build_secrets::SecretBytes;
use crate::ssh::key::SshKey;

/// The configuration's values with every `SSM:` reference replaced by what it holds, parsed.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The pool of daemons, in the order given, without duplicates; never empty.
    pub hosts: Vec<DockerHost>,
    /// The daemon to build on when no host of the pool answers.
    pub fallback_host: Option<DockerHost>,
    /// JETS_SSH_KEY, parsed (once).
    pub ssh_key: Option<Arc<SshKey>>,
    /// JETS_SSH_KNOWN, checked to hold only known_hosts entries.
    pub known_hosts: Option<String>,
    /// DOCKER_USER / DOCKER_PASS and the registry they are for.
    pub registry_login: Option<Login>,
    /// The values of the `--secret`s, by id.
    pub build_secrets: BTreeMap<String, SecretBytes>,
    /// Each platform of a multi-platform run with its own host, if it has one (empty otherwise).
    pub platforms: Vec<PlatformLogin>,
    /// JETS_SSH_KEY_PASSPHRASE, for key files found beside the key file.
    pub ssh_key_passphrase: Option<Secret>,
}

/// One platform of a multi-platform run: its own daemon (`DOCKER_HOST_<ARCH>`) and the SSH login
/// for it (`JETS_SSH_KEY_<ARCH>` / `JETS_SSH_KNOWN_<ARCH>`, else the unsuffixed ones).
#[derive(Debug, Clone)]
pub struct PlatformLogin {
    /// `linux/arm64`.
    pub platform: crate::registry::reference::Platform,
    /// `None`: the platform builds on the default host.
    pub host: Option<DockerHost>,
    pub ssh_key: Option<Arc<SshKey>>,
    pub known_hosts: Option<String>,
}

/// A registry login with a user and a password.
#[derive(Debug, Clone)]
pub struct Login {
    /// The registry's host, normalised (`host[:port]`).
    pub registry: String,
    pub user: String,
    pub password: Secret,
}

impl Resolved {
    /// Resolves the configuration with the values of its `SSM:` references (empty when it has none);
    /// every problem with what the parameters hold is reported at once (exit 3, as the configuration's).
    pub fn new(config: &Config, parameters: &BTreeMap<SsmRef, String>) -> Result<Resolved, Error> {
        let mut fields = Fields { parameters, problems: Vec::new() };
        let tls = config.tls.is_some();
        let parse_host =
            |text: &str| DockerHost::parse(text, tls).map_err(|error| (error.message, Some(error.hint.to_string())));
        let hosts: Vec<Option<DockerHost>> = config.hosts.iter().map(|host| fields.resolve(host, parse_host)).collect();
        let fallback_host = config.fallback_host.as_ref().map(|host| fields.resolve(host, parse_host));
        let passphrase = config.ssh_key_passphrase.as_ref();
        let ssh_key = config.ssh_key.as_ref().map(|key| fields.ssh_key(key, passphrase));
        let known_hosts = config.known_hosts.as_ref().map(|known| fields.known_hosts(known));
        let registry_login = config.registry_login.as_ref().map(|login| {
            let registry =
                fields.resolve(&login.registry, |text| normalise_registry(text).map_err(|message| (message, None)));
            let user = fields.resolve(&login.user, |text| Ok(text.trim().to_string()));
            let password = fields.resolve(&login.password, |text| {
                let whole = Secret::new(text);
                Ok(Secret::new(password_text(whole.expose())))
            });
            (registry, user, password)
        });
        let mut build_secrets = BTreeMap::new();
        for secret in &config.build.secrets {
            let value = match &secret.source {
                SecretSource::File { value, .. } => Some(value.clone()),
                SecretSource::Env { value, origin, .. } => {
                    let sourced = Sourced { value: value.clone(), origin: origin.clone() };
                    fields.resolve(&sourced, |text| Ok(SecretBytes::new(text.as_bytes().to_vec())))
                }
            };
            if let Some(value) = value {
                build_secrets.insert(secret.id.clone(), value);
            }
        }
        let mut platforms = Vec::new();
        for each in &config.build.platform_hosts {
            let host = each.host.as_ref().map(|host| fields.resolve(host, parse_host));
            let key = each.ssh_key.as_ref().map(|key| fields.ssh_key(key, passphrase));
            let known = each.known_hosts.as_ref().map(|known| fields.known_hosts(known));
            platforms.push((each.platform.clone(), host, key, known));
        }
        if !fields.problems.is_empty() {
            return Err(Error::Config(fields.problems));
        }
        let missing = || Error::Internal("a resolved value is missing but no problem was recorded".to_string());
        let registry_login = match registry_login {
            None => None,
            Some((Some(registry), Some(user), Some(password))) => Some(Login { registry, user, password }),
            Some(_) => return Err(missing()),
        };
        let mut pool: Vec<DockerHost> = Vec::with_capacity(hosts.len());
        for host in hosts {
            let host = host.ok_or_else(missing)?;
            // Two parameters may name the same host: it is one host of the pool.
            if !pool.contains(&host) {
                pool.push(host);
            }
        }
        if pool.is_empty() {
            return Err(missing());
        }
        let fallback_host = fallback_host.map(|host| host.ok_or_else(missing)).transpose()?;
        let ssh_key = ssh_key.map(|key| key.ok_or_else(missing)).transpose()?;
        let known_hosts = known_hosts.map(|known| known.ok_or_else(missing)).transpose()?;
        let platforms = platforms
            .into_iter()
            .map(|(platform, host, key, known)| {
                Ok(PlatformLogin {
                    platform,
                    host: host.map(|host| host.ok_or_else(missing)).transpose()?,
                    // The unsuffixed variables are the fallback of every arch.
                    ssh_key: key.map(|key| key.ok_or_else(missing)).transpose()?.or_else(|| ssh_key.clone()),
                    known_hosts: known
                        .map(|known| known.ok_or_else(missing))
                        .transpose()?
                        .or_else(|| known_hosts.clone()),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let ssh_key_passphrase = config.ssh_key_passphrase.clone();
        let resolved = Resolved {
            hosts: pool,
            fallback_host,
            ssh_key,
            known_hosts,
            registry_login,
            build_secrets,
            platforms,
            ssh_key_passphrase,
        };
        let problems = resolved.instance_connect_without_instance();
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        if !config.build.ssh_forward_login_key {
            let problems = resolved.forwarded_login_keys(&config.build.ssh, &config.ssh_key_file.value);
            if !problems.is_empty() {
                return Err(Error::Config(problems));
            }
        }
        Ok(resolved)
    }

    /// Every host of the run with the key it logs in with (`None`: OpenSSH's `~/.ssh/id_*` files)
    /// and the name of that key's variable: the pool's hosts and the fallback host with
    /// JETS_SSH_KEY, each platform's own host with its key.
    fn logins(&self) -> Vec<(&DockerHost, Option<&SshKey>, String)> {
        let jets = crate::config::names::JETS_SSH_KEY;
        let pool = self.hosts.iter().chain(&self.fallback_host);
        let mut logins: Vec<_> = pool.map(|host| (host, self.ssh_key.as_deref(), jets.to_string())).collect();
        for each in &self.platforms {
            if let Some(host) = &each.host {
                logins.push((host, each.ssh_key.as_deref(), format!("the SSH key of {}", each.platform)));
            }
        }
        logins
    }

    /// Each `ssh://` host that would log in with the run's EC2 Instance Connect key but is not named
    /// by an instance id: there is no instance to push the key to.
    fn instance_connect_without_instance(&self) -> Vec<crate::error::Problem> {
        let mut problems: Vec<crate::error::Problem> = Vec::new();
        for (host, key, variable) in self.logins() {
            if let DockerHost::Ssh { host: name, .. } = host
                && key.is_some_and(|key| key.instance_connect)
                && !crate::aws::ec2::is_instance_id(name)
                && !problems.iter().any(|problem| problem.message.contains(&host.to_string()))
            {
                problems.push(
                    crate::error::Problem::new(
                        variable,
                        format!(
                            "is ec2-instance-connect, but {host} is not named by its instance id: EC2 Instance Connect \
                             pushes the key to an instance"
                        ),
                    )
                    .hint(
                        "name the host by its instance id (ssh://ec2-user@i-0123456789abcdef0), or give a private key",
                    ),
                );
            }
        }
        problems
    }

    /// Each `--ssh` that would forward a key that also logs into an `ssh://` host of the run: a
    /// shared host's root could log into the run's other hosts with it while the build runs. A host
    /// logged into without JETS_SSH_KEY logs in with OpenSSH's `~/.ssh/id_*` files beside
    /// `key_file`: those count too.
    fn forwarded_login_keys(
        &self,
        forwards: &[crate::config::mounts::SshForward],
        key_file: &std::path::Path,
    ) -> Vec<crate::error::Problem> {
        let mut logins: Vec<(russh::keys::PublicKey, String)> = Vec::new();
        let mut default_keys = None;
        for (host, key, variable) in self.logins() {
            if !matches!(host, DockerHost::Ssh { .. }) {
                continue;
            }
            match key {
                Some(key) => {
                    logins.push((key.key.public_key().clone(), format!("{variable}, the login key of {host}")))
                }
                None => {
                    let passphrase = self.ssh_key_passphrase.as_ref();
                    let files = default_keys
                        .get_or_insert_with(|| crate::ssh::login::default_public_keys(key_file, passphrase));
                    logins.extend(files.iter().map(|key| (key.clone(), format!("the login key of {host} (~/.ssh)"))));
                }
            }
        }
        let mut problems = Vec::new();
        for forward in forwards {
            let keys: Vec<&SshKey> = match &forward.keys {
                crate::config::mounts::SshKeys::JetsSshKey => self.ssh_key.iter().map(|key| key.as_ref()).collect(),
                crate::config::mounts::SshKeys::Files(files) => files.iter().map(|file| file.key.as_ref()).collect(),
            };
            let shared = logins
                .iter()
                .find(|(login, _)| keys.iter().any(|key| key.key.public_key().key_data() == login.key_data()));
            if let Some((_, what)) = shared {
                problems.push(
                    crate::error::Problem::new(
                        format!("--ssh {}", forward.id),
                        format!("would forward {what}: whoever is root on the build's host could log into the run's hosts with it while the build runs"),
                    )
                    .hint(format!(
                        "forward a deploy key of its own (--ssh {}=PATH, a key that only reads the repositories the \
                         build clones), or give --ssh-forward-login-key (AGENT_SSH_FORWARD_LOGIN_KEY=true) to forward it anyway",
                        forward.id
                    )),
                );
            }
        }
        problems
    }
}

/// The build's secrets and ssh agents, as its session serves them, from the resolved values.
pub fn session_mounts(build: &crate::config::Build, resolved: &Resolved) -> Result<SessionMounts, crate::error::Error> {
    let mut mounts = SessionMounts { ssh_sign_anything: build.ssh_sign_anything, ..SessionMounts::default() };
    for secret in &build.secrets {
        let value = resolved
            .build_secrets
            .get(&secret.id)
            .ok_or_else(|| crate::error::Error::Internal(format!("--secret {} has no resolved value", secret.id)))?;
        mounts.secrets.insert(secret.id.clone(), value.clone());
    }
    for forward in &build.ssh {
        let keys = match &forward.keys {
            crate::config::mounts::SshKeys::JetsSshKey => {
                let key = resolved.ssh_key.as_ref().ok_or_else(|| {
                    crate::error::Error::Internal(format!(
                        "--ssh {} without JETS_SSH_KEY passed the config check",
                        forward.id
                    ))
                })?;
                vec![Arc::new(key.key.clone())]
            }
            crate::config::mounts::SshKeys::Files(files) => {
                files.iter().map(|file| Arc::new(file.key.key.clone())).collect()
            }
        };
        mounts.ssh.push((forward.id.clone(), keys));
    }
    Ok(mounts)
}

impl Resolved {
    /// The candidates of a build without a host of its own: the pool's hosts in the order the image's
    /// repository hashes them to (see [`crate::nodes::affinity`]), then the fallback, if any and not in the
    /// pool already. Every one is reached with the shared JETS_SSH_KEY and JETS_SSH_KNOWN.
    pub fn pool_candidates(&self, repository: &str) -> Vec<Candidate> {
        let names: Vec<String> = self.hosts.iter().map(DockerHost::to_string).collect();
        let candidate = |target: &DockerHost| Candidate {
            target: target.clone(),
            ssh_key: self.ssh_key.clone(),
            known_hosts: self.known_hosts.clone(),
        };
        let mut candidates: Vec<Candidate> =
            affinity::order(&names, repository).into_iter().map(|index| candidate(&self.hosts[index])).collect();
        if let Some(fallback) = self.fallback_host.as_ref().filter(|fallback| !self.hosts.contains(fallback)) {
            candidates.push(candidate(fallback));
        }
        candidates
    }

    /// The run's slots: one for a single-platform run; one per platform (named by it) otherwise, on
    /// the platform's own host when it has one, else on the pool ([`Resolved::pool_candidates`]: the
    /// one place that says where a build without a host of its own goes).
    pub fn slots(&self, repository: &str) -> Vec<Slot> {
        if self.platforms.is_empty() {
            return vec![Slot { name: String::new(), candidates: self.pool_candidates(repository) }];
        }
        self.platforms
            .iter()
            .map(|each| {
                let candidates = match &each.host {
                    Some(host) => vec![Candidate {
                        target: host.clone(),
                        ssh_key: each.ssh_key.clone(),
                        known_hosts: each.known_hosts.clone(),
                    }],
                    None => self.pool_candidates(repository),
                };
                Slot { name: each.platform.to_string(), candidates }
            })
            .collect()
    }

    /// Whether `target` is the fallback host, not one of the pool (a build there found no host of
    /// the pool answering).
    pub fn on_fallback(&self, target: &DockerHost) -> bool {
        self.fallback_host.as_ref() == Some(target) && !self.hosts.contains(target)
    }
}

/// A parser's complaint: the message and, where there is one, a hint.
type Complaint = (String, Option<String>);

/// The fetched parameters and the problems found so far.
struct Fields<'a> {
    parameters: &'a BTreeMap<SsmRef, String>,
    problems: Vec<Problem>,
}

impl Fields<'_> {
    /// How a problem names the field: `JETS_SSH_KEY (SSM:/x)`, or the variable alone when it was given.
    fn subject<T>(&self, sourced: &Sourced<Value<T>>) -> String {
        match &sourced.value {
            Value::Known(_) => sourced.origin.subject(),
            Value::Ssm(reference) => format!("{} ({reference})", sourced.origin.subject()),
        }
    }

    /// An SSH private key (JETS_SSH_KEY or an arch's), parsed once; a referenced one is registered
    /// with the redactor before it is parsed.
    fn ssh_key(&mut self, sourced: &Sourced<Value<Arc<SshKey>>>, passphrase: Option<&Secret>) -> Option<Arc<SshKey>> {
        self.resolve(sourced, |text| {
            // `ec2-instance-connect` is a word, not a secret: not handed to the redactor.
            let key = match crate::ssh::key::is_instance_connect_setting(text) {
                true => SshKey::from_setting(text, None),
                false => SshKey::from_setting(Secret::new(text).expose(), passphrase),
            };
            key.map(Arc::new).map_err(|error| (error.to_string(), Some(error.hint().to_string())))
        })
    }

    /// known_hosts lines (JETS_SSH_KNOWN or an arch's), checked to hold only known_hosts entries.
    fn known_hosts(&mut self, sourced: &Sourced<Value<String>>) -> Option<String> {
        let subject = self.subject(sourced);
        self.resolve(sourced, |text| {
            check_known_hosts(text, &subject)
                .map(|()| text.to_string())
                .map_err(|problem| (problem.message, problem.hint))
        })
    }

    /// A given value as it is; a referenced one parsed from what the parameter holds, or `None` with
    /// the problem recorded.
    fn resolve<T: Clone>(
        &mut self,
        sourced: &Sourced<Value<T>>,
        parse: impl FnOnce(&str) -> Result<T, Complaint>,
    ) -> Option<T> {
        let reference = match &sourced.value {
            Value::Known(value) => return Some(value.clone()),
            Value::Ssm(reference) => reference,
        };
        let subject = self.subject(sourced);
        let Some(text) = self.parameters.get(reference) else {
            self.problems.push(Problem::new(subject, "was not resolved (the parameter was not fetched)"));
            return None;
        };
        match parse(text) {
            Ok(value) => Some(value),
            Err((message, hint)) => {
                let problem = Problem::new(subject, message);
                self.problems.push(match hint {
                    Some(hint) => problem.hint(hint),
                    None => problem,
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config, fixture};
    use crate::secrets::{MASK, redact};

    fn parameters(pairs: &[(&str, &str)]) -> BTreeMap<SsmRef, String> {
        pairs.iter().map(|(name, value)| (SsmRef { name: name.to_string() }, value.to_string())).collect()
    }

    #[test]
    fn without_references_the_given_values_are_the_resolved_ones() {
        let dir = fixture();
        let config = config(&["--image", "app", "--host", "tcp://127.0.0.1:2375"], &[], dir.path()).unwrap();
        let resolved = Resolved::new(&config, &BTreeMap::new()).unwrap();
        assert_eq!(resolved.hosts, [DockerHost::Tcp { host: "127.0.0.1".into(), port: 2375 }]);
        assert!(resolved.ssh_key.is_none() && resolved.known_hosts.is_none() && resolved.registry_login.is_none());
    }

    #[test]
    fn each_parameter_is_parsed_by_its_field_and_every_problem_is_reported_at_once() {
        let dir = fixture();
        let env = [("JETS_SSH_KEY", "SSM:/ci/key"), ("JETS_SSH_KNOWN", "SSM:/ci/known")];
        let config = config(&["--image", "app", "--host", "SSM:/ci/host"], &env, dir.path()).unwrap();
        let values = parameters(&[
            ("/ci/host", "ftp://nowhere"),
            ("/ci/key", "resolve-test-not-a-key-7d1f"),
            ("/ci/known", "not a known_hosts line"),
        ]);
        let Err(Error::Config(problems)) = Resolved::new(&config, &values) else {
            panic!("expected configuration problems");
        };
        let subjects: Vec<&str> = problems.iter().map(|problem| problem.subject.as_str()).collect();
        assert_eq!(subjects, ["--host (SSM:/ci/host)", "JETS_SSH_KEY (SSM:/ci/key)", "JETS_SSH_KNOWN (SSM:/ci/known)"]);
        assert!(problems.iter().all(|problem| problem.hint.is_some()), "{problems:?}");
    }

    #[test]
    fn a_secret_field_is_known_to_the_redactor_even_when_it_does_not_parse() {
        let dir = fixture();
        let config = config(&["--image", "app"], &[("JETS_SSH_KEY", "SSM:/ci/key")], dir.path()).unwrap();
        let text = "resolve-test-unparsable-key-51c9e";
        assert!(Resolved::new(&config, &parameters(&[("/ci/key", text)])).is_err());
        assert_eq!(redact(text), MASK);
    }

    #[test]
    fn a_login_from_parameters_is_normalised_and_its_password_registered_without_the_line_ending() {
        let dir = fixture();
        let env = [("DOCKER_PASS", "SSM:/ci/pass")];
        let argv = ["--image", "app", "--registry-user", "SSM:/ci/user", "--registry", "SSM:/ci/registry"];
        let config = config(&argv, &env, dir.path()).unwrap();
        let values = parameters(&[
            ("/ci/user", " bob \n"),
            ("/ci/pass", "resolve-test-password-0b2e\r\n"),
            ("/ci/registry", "https://registry.example.com/v2/"),
        ]);
        let login = Resolved::new(&config, &values).unwrap().registry_login.unwrap();
        assert_eq!((login.registry.as_str(), login.user.as_str()), ("registry.example.com", "bob"));
        assert_eq!(login.password.expose(), "resolve-test-password-0b2e");
        assert_eq!(redact("resolve-test-password-0b2e"), MASK);
    }

    #[test]
    fn a_build_secret_from_a_parameter_is_registered() {
        let dir = fixture();
        let env = [("NPM_TOKEN", "SSM:/ci/npm")];
        let config = config(&["--image", "app", "--secret", "id=npm,env=NPM_TOKEN"], &env, dir.path()).unwrap();
        let resolved = Resolved::new(&config, &parameters(&[("/ci/npm", "resolve-test-npm-token-9a3c")])).unwrap();
        assert_eq!(resolved.build_secrets["npm"].expose(), b"resolve-test-npm-token-9a3c");
        assert_eq!(redact("resolve-test-npm-token-9a3c"), MASK);
    }

    #[test]
    fn a_platform_with_its_own_host_takes_its_own_key_from_a_parameter_and_falls_back_to_the_unsuffixed_known_hosts() {
        let dir = fixture();
        let (key, _) = crate::ssh::key::tests::generated_key();
        let known = "[arm.example]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let env = [
            ("PLATFORMS", "linux/amd64,linux/arm64"),
            ("DOCKER_HOST_ARM64", "SSM:/ci/arm-host"),
            ("JETS_SSH_KEY_ARM64", "SSM:/ci/arm-key"),
            ("JETS_SSH_KNOWN", known),
        ];
        let config = config(&["--image", "app", "--platform", "linux/amd64,linux/arm64"], &env, dir.path()).unwrap();
        let values = parameters(&[("/ci/arm-host", "ssh://ci@arm.example"), ("/ci/arm-key", key.as_str())]);
        let resolved = Resolved::new(&config, &values).unwrap();
        let [amd64, arm64] = resolved.platforms.as_slice() else { panic!("two platforms: {:?}", resolved.platforms) };
        assert_eq!((amd64.platform.to_string().as_str(), amd64.host.is_none()), ("linux/amd64", true));
        assert!(matches!(&arm64.host, Some(DockerHost::Ssh { host, .. }) if host == "arm.example"));
        assert_eq!(arm64.ssh_key.as_ref().map(|key| key.text.expose().to_string()), Some(key.clone()));
        assert_eq!(arm64.known_hosts.as_deref(), Some(known), "JETS_SSH_KNOWN is the fallback");
        assert_eq!(redact(key.lines().nth(1).unwrap()), MASK);
    }
}
