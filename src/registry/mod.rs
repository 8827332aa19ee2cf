//! Registry logins: checked by the daemon, and recorded as the docker CLI records them: `auths` entries in `config.json` (under
//! `$DOCKER_CONFIG` or `~/.docker`), merged with what is there, written atomically with mode 0600,
//! so later buildspec commands (`docker push`, `docker run` of a private image) are logged in too.

pub mod api;
pub mod base_image;
pub mod index;
pub mod rate_limit;
pub mod reference;
pub mod unchanged;

use std::path::Path;

use base64::Engine;

use crate::docker::daemon::{AuthError, Daemon};
use crate::error::Error;
use crate::registry::reference::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};
use crate::secrets::Secret;

/// One registry logged into.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The registry host, e.g. `docker.io` or `123456789012.dkr.ecr.eu-west-1.amazonaws.com`.
    pub registry: String,
    pub user: String,
    pub password: Secret,
}

impl Credential {
    /// A login; registers the password and the encodings of `user:password` with the redactor.
    pub fn new(registry: impl Into<String>, user: impl Into<String>, password: Secret) -> Self {
        let user = user.into();
        crate::secrets::redactor().register_login(&user, password.expose());
        Credential { registry: registry.into(), user, password }
    }

    /// The address the daemon's `/auth` and the docker CLI's config.json use for this registry.
    pub fn server_address(&self) -> String {
        server_address(&self.registry)
    }
}

/// Logs in on the daemon (its `/auth`); a refusal is a login failure naming the registry, with `hint`.
pub async fn log_in(daemon: &Daemon, credential: &Credential, hint: &str) -> Result<(), Error> {
    match daemon.auth(&credential.server_address(), &credential.user, &credential.password).await {
        Ok(()) => Ok(()),
        Err(AuthError::Transport(error)) => Err(error),
        // The daemon's words: "login attempt to URL failed with status: 429 Too Many Requests".
        Err(AuthError::Refused { message, .. }) if crate::docker::cause::says_rate_limited(&message) => {
            Err(Error::RateLimited {
                registry: crate::docker::cause::registry_name(&credential.registry),
                during: "the login".to_string(),
                message,
            })
        }
        Err(AuthError::Refused { status, message }) => Err(Error::Login {
            registry: credential.registry.clone(),
            detail: format!("the registry refused the credentials ({status}: {message})"),
            hint: hint.to_string(),
        }),
    }
}

/// Docker Hub is `https://index.docker.io/v1/` to the docker CLI; other registries are their host.
pub fn server_address(registry: &str) -> String {
    if registry == DOCKER_HUB { DOCKER_HUB_AUTH_KEY.to_string() } else { registry.to_string() }
}

/// Merges the credentials into config.json, keeping every other entry and setting. Returns the
/// registries written.
pub fn write_config(path: &Path, credentials: &[Credential]) -> Result<usize, Error> {
    // A symlinked config.json (dotfiles) stays a link: the file it names is updated.
    let path = &crate::ssh::files::symlink_target(path)?;
    let mut document = match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => serde_json::json!({}),
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|error| Error::LocalFile {
            action: "read",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()),
            hint: Some("the file is not valid JSON: fix or remove it; the agent will not overwrite it".to_string()),
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(source) => return Err(Error::LocalFile { action: "read", path: path.to_path_buf(), source, hint: None }),
    };
    let Some(object) = document.as_object_mut() else {
        return Err(Error::LocalFile {
            action: "read",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a JSON object"),
            hint: Some("fix or remove the file; the agent will not overwrite it".to_string()),
        });
    };
    let auths = object.entry("auths").or_insert_with(|| serde_json::json!({}));
    if !auths.is_object() {
        *auths = serde_json::json!({});
    }
    let auths = auths.as_object_mut().expect("auths was made an object");
    for credential in credentials {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            credential.user,
            credential.password.expose()
        ));
        let entry = auths.entry(credential.server_address()).or_insert_with(|| serde_json::json!({}));
        if !entry.is_object() {
            *entry = serde_json::json!({});
        }
        let entry = entry.as_object_mut().expect("the entry was made an object");
        entry.insert("auth".to_string(), serde_json::Value::String(encoded));
        entry.remove("identitytoken");
    }
    route_to_auths(object, credentials, path);
    let mut text = serde_json::to_string_pretty(&document).expect("a JSON value serialises");
    text.push('\n');
    if let Some(dir) = path.parent() {
        crate::ssh::files::ensure_private_dir(dir)?;
    }
    crate::files::write_atomically(path, text.as_bytes(), 0o600, true, "DOCKER_CONFIG")?;
    Ok(credentials.len())
}

/// Makes later `docker` commands use the `auths` entries just written. The docker CLI looks a
/// registry up in `credHelpers` first, then in `credsStore`, and reads `auths` only when neither
/// names a helper — a `credsStore` (Docker Desktop's `desktop`, `osxkeychain`, `pass`) hides our
/// logins. An empty `credHelpers` entry for a registry means "no helper" to the CLI, so it sends
/// that registry to `auths` and leaves the store serving every other one. A helper the user
/// named for the registry itself is their explicit choice: it is kept, with a warning.
fn route_to_auths(object: &mut serde_json::Map<String, serde_json::Value>, credentials: &[Credential], path: &Path) {
    let store = object.get("credsStore").and_then(|store| store.as_str()).filter(|store| !store.is_empty());
    let store = store.map(str::to_string);
    for credential in credentials {
        let address = credential.server_address();
        let helper = object
            .get("credHelpers")
            .and_then(|helpers| helpers.get(&address))
            .map(|helper| helper.as_str().map(str::to_string).unwrap_or_default());
        match (helper, &store) {
            (Some(helper), _) if !helper.is_empty() => tracing::warn!(
                "{}: credHelpers sends {address} to docker-credential-{helper}, so later docker commands use that \
                 helper's credentials for it, not this login; remove that entry to use the login",
                path.display()
            ),
            (None, Some(store)) => {
                let helpers = object.entry("credHelpers").or_insert_with(|| serde_json::json!({}));
                if !helpers.is_object() {
                    *helpers = serde_json::json!({});
                }
                if let Some(helpers) = helpers.as_object_mut() {
                    helpers.insert(address.clone(), serde_json::Value::String(String::new()));
                }
                tracing::info!(
                    "{}: credsStore {store:?} would hide the login to {address} from later docker commands: an empty \
                     credHelpers entry sends that registry to auths (the store keeps every other one)",
                    path.display()
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn logins_are_merged_with_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".docker/config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, r#"{"auths":{"ghcr.io":{"auth":"eDp5"}},"psFormat":"table"}"#).unwrap();
        let credential = Credential::new("docker.io", "bob", Secret::new("pw-1234"));
        write_config(&path, &[credential]).unwrap();
        let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["auths"]["ghcr.io"]["auth"], "eDp5");
        assert_eq!(value["psFormat"], "table");
        assert_eq!(value["auths"]["https://index.docker.io/v1/"]["auth"], "Ym9iOnB3LTEyMzQ=");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    /// Regression: a config.json that is a symlink was replaced by a regular file.
    #[test]
    fn a_symlinked_docker_config_stays_a_link_and_its_target_gets_the_login() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shared-config.json");
        std::fs::write(&target, r#"{"psFormat":"table"}"#).unwrap();
        let link = dir.path().join(".docker/config.json");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let credential = Credential { registry: "r.io".into(), user: "u".into(), password: Secret::new("p-5678") };
        write_config(&link, &[credential]).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
        assert_eq!(value["psFormat"], "table");
        assert!(value["auths"]["r.io"]["auth"].is_string());
    }

    /// Regression: a credsStore made later docker commands ignore the auths entries written.
    #[test]
    fn a_creds_store_gets_an_empty_cred_helper_per_login_and_a_users_cred_helper_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credsStore":"desktop","credHelpers":{"mine.example.com":"ecr-login"}}"#).unwrap();
        let login = |registry: &str| Credential {
            registry: registry.into(),
            user: "u".into(),
            password: Secret::new("p-5678"),
        };
        write_config(&path, &[login("docker.io"), login("mine.example.com"), login("r.io")]).unwrap();
        let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["credsStore"], "desktop", "the store keeps serving the other registries");
        assert_eq!(value["credHelpers"]["https://index.docker.io/v1/"], "");
        assert_eq!(value["credHelpers"]["r.io"], "");
        assert_eq!(value["credHelpers"]["mine.example.com"], "ecr-login", "the user's own choice is kept");
        assert!(value["auths"]["r.io"]["auth"].is_string());
    }

    #[test]
    fn without_a_creds_store_no_cred_helpers_are_added() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let credential = Credential { registry: "r.io".into(), user: "u".into(), password: Secret::new("p-5678") };
        write_config(&path, &[credential]).unwrap();
        let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(value.get("credHelpers").is_none(), "{value}");
    }

    #[test]
    fn a_broken_config_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        let credential = Credential::new("r.io", "u", Secret::new("p-5678"));
        assert!(matches!(write_config(&path, &[credential]), Err(Error::LocalFile { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{not json");
    }
}
