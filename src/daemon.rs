//! The Docker daemon: a bollard client for the `DOCKER_HOST` target (over the SSH transport,
//! plain or TLS TCP, or a local Unix socket), and the check that it answers (ping, version).

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;

use crate::config::Tls;
use crate::error::{ConnectClass, Error};
use crate::ssh::transport::{SshSession, classify_io};

/// The oldest API the agent speaks (Docker 1.12). Older daemons are refused with their own exit code.
pub const MINIMUM_API: (u32, u32) = (1, 24);

/// Seconds a single API request may take before bollard gives up (builds and pushes stream, and
/// each chunk resets nothing: so this is generous).
pub const REQUEST_TIMEOUT_SECS: u64 = 3600;

/// A client for one daemon, with what is needed to explain its failures.
pub struct Daemon {
    pub docker: Docker,
    /// The daemon's address, for messages.
    pub target: String,
    ssh: Option<Arc<SshSession>>,
    connect_timeout: Duration,
}

/// What the check learnt about the daemon.
#[derive(Debug, Clone)]
pub struct Facts {
    pub version: String,
    pub api_version: String,
    pub os: String,
    pub arch: String,
    pub driver: String,
}

impl Daemon {
    /// The daemon behind an open SSH connection.
    pub fn over_ssh(session: Arc<SshSession>, target: String, connect_timeout: Duration) -> Result<Daemon, Error> {
        let docker = session.docker(REQUEST_TIMEOUT_SECS)?;
        Ok(Daemon { docker, target, ssh: Some(session), connect_timeout })
    }

    /// A daemon on a local Unix socket.
    pub fn unix(path: &str, connect_timeout: Duration) -> Result<Daemon, Error> {
        let target = format!("unix://{path}");
        let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|error| Error::Daemon { target: target.clone(), detail: format!("cannot be used: {error}") })?;
        Ok(Daemon { docker, target, ssh: None, connect_timeout })
    }

    /// A daemon on TCP, plain or with TLS client certificates (as the docker CLI reads
    /// `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`).
    pub fn tcp(host: &str, port: u16, tls: Option<&Tls>, connect_timeout: Duration) -> Result<Daemon, Error> {
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let target = format!("tcp://{address}");
        let docker = match tls {
            None => {
                let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    tracing::warn!(
                        "{target} is plain TCP: the Docker API, and the registry credentials sent with builds and pushes, \
                         cross the network unencrypted and unauthenticated; prefer ssh:// or set DOCKER_TLS_VERIFY=1"
                    );
                }
                Docker::connect_with_http(&format!("http://{address}"), REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            Some(tls) => {
                let file = |name: &str| tls.cert_dir.join(name);
                for name in ["ca.pem", "cert.pem", "key.pem"] {
                    if !file(name).is_file() {
                        return Err(Error::LocalFile {
                            action: "read the TLS file",
                            path: file(name),
                            source: std::io::Error::from(std::io::ErrorKind::NotFound),
                            hint: Some("DOCKER_TLS_VERIFY is set: put ca.pem, cert.pem and key.pem in DOCKER_CERT_PATH".to_string()),
                        });
                    }
                }
                install_crypto_provider();
                Docker::connect_with_ssl(
                    &format!("https://{address}"),
                    &file("key.pem"),
                    &file("cert.pem"),
                    &file("ca.pem"),
                    REQUEST_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
            }
        }
        .map_err(|error| Error::Daemon { target: target.clone(), detail: format!("cannot be used: {error}") })?;
        Ok(Daemon { docker, target, ssh: None, connect_timeout })
    }

    /// Ping, negotiate the API version, then read the version and the storage driver.
    pub async fn check(&mut self) -> Result<Facts, Error> {
        let ping = tokio::time::timeout(self.connect_timeout, self.docker.ping()).await;
        match ping {
            Err(_) => return Err(self.timeout("ping")),
            Ok(Err(error)) => return Err(self.explain(error)),
            Ok(Ok(_)) => {}
        }
        let negotiated = tokio::time::timeout(self.connect_timeout, self.docker.clone().negotiate_version()).await;
        self.docker = match negotiated {
            Err(_) => return Err(self.timeout("version")),
            Ok(Err(error)) => return Err(self.explain(error)),
            Ok(Ok(docker)) => docker,
        };
        let both = tokio::time::timeout(self.connect_timeout, async {
            tokio::join!(self.docker.version(), self.docker.info())
        })
        .await;
        let (version, info) = match both {
            Err(_) => return Err(self.timeout("version")),
            Ok((Err(error), _)) | Ok((_, Err(error))) => return Err(self.explain(error)),
            Ok((Ok(version), Ok(info))) => (version, info),
        };
        let api_version = version.api_version.clone().unwrap_or_default();
        if parse_api(&api_version).is_some_and(|api| api < MINIMUM_API) {
            return Err(Error::DaemonTooOld {
                target: self.target.clone(),
                version: api_version,
                minimum: format!("{}.{}", MINIMUM_API.0, MINIMUM_API.1),
            });
        }
        Ok(Facts {
            version: version.version.unwrap_or_else(|| "?".to_string()),
            api_version,
            os: version.os.unwrap_or_else(|| "?".to_string()),
            arch: version.arch.unwrap_or_else(|| "?".to_string()),
            driver: info.driver.unwrap_or_else(|| "?".to_string()),
        })
    }

    fn timeout(&self, what: &str) -> Error {
        if let Some(failure) = self.ssh.as_ref().and_then(|ssh| ssh.take_failure()) {
            return failure;
        }
        Error::Connect {
            target: self.target.clone(),
            class: ConnectClass::Timeout,
            detail: format!("the daemon did not answer the {what} request within {}s", self.connect_timeout.as_secs()),
        }
    }

    /// Turns a bollard error into the agent's error, with its class.
    pub fn explain(&self, error: bollard::errors::Error) -> Error {
        if let Some(failure) = self.ssh.as_ref().and_then(|ssh| ssh.take_failure()) {
            return failure;
        }
        use bollard::errors::Error as B;
        match &error {
            B::RequestTimeoutError => {
                return Error::Connect {
                    target: self.target.clone(),
                    class: ConnectClass::Timeout,
                    detail: "the request timed out".to_string(),
                };
            }
            B::DockerResponseServerError { status_code, message } => {
                return Error::Daemon {
                    target: self.target.clone(),
                    detail: format!("answered {status_code}: {message}"),
                };
            }
            _ => {}
        }
        if let Some(io) = find_io_error(&error) {
            if self.target.starts_with("unix://") {
                let path = self.target.trim_start_matches("unix://");
                let detail = match io.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("is not running: the socket {path} does not exist")
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        format!("refused access: permission denied on {path} (is the user in group docker?)")
                    }
                    std::io::ErrorKind::ConnectionRefused => {
                        format!("is not running: nothing listens on {path}")
                    }
                    _ => format!("did not answer: {io}"),
                };
                return Error::Daemon { target: self.target.clone(), detail };
            }
            if self.ssh.is_none() {
                return Error::Connect { target: self.target.clone(), class: classify_io(io), detail: io.to_string() };
            }
        }
        if let Some(ssh) = &self.ssh {
            if ssh.is_closed() {
                return Error::Ssh { host: self.target.clone(), detail: "the connection dropped".to_string() };
            }
        }
        Error::Daemon { target: self.target.clone(), detail: format!("did not answer: {}", error_chain(&error)) }
    }

    /// Closes the SSH connection, if any.
    pub async fn close(&self) {
        if let Some(ssh) = &self.ssh {
            ssh.close().await;
        }
    }
}

impl Facts {
    /// The one log line of the daemon check.
    pub fn summary(&self) -> String {
        format!(
            "Docker {} (API {}), {}/{}, storage driver {}",
            self.version, self.api_version, self.os, self.arch, self.driver
        )
    }
}

/// `"1.41"` as `(1, 41)`.
pub fn parse_api(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn find_io_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = error.source();
    }
    None
}

/// An error and its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        current = cause.source();
    }
    text
}

/// bollard's TLS needs a rustls crypto provider; the agent uses aws-lc-rs, as russh and the AWS SDK do.
fn install_crypto_provider() {
    let _ = rustls_provider();
}

fn rustls_provider() -> bool {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INSTALLED.get_or_init(|| rustls::crypto::aws_lc_rs::default_provider().install_default().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compare() {
        assert_eq!(parse_api("1.41"), Some((1, 41)));
        assert!(parse_api("1.23").unwrap() < MINIMUM_API);
        assert!(parse_api("1.24").unwrap() >= MINIMUM_API);
        assert_eq!(parse_api("garbage"), None);
    }
}
