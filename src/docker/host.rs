//! The `DOCKER_HOST` grammar: which daemon the agent talks to, and how.
//!
//! Accepted forms, as the docker CLI reads them:
//! `ssh://[user@]host[:port][/path/to/docker.sock]`, `tcp://host[:port]`, `unix:///path`;
//! an empty or absent value means the local default socket.

use std::fmt;

/// The local daemon's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The SSH port when the URL names none.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// The plain-TCP daemon port when the URL names none (the docker CLI's default).
pub const DEFAULT_TCP_PORT: u16 = 2375;
/// The TLS daemon port when the URL names none and `DOCKER_TLS_VERIFY` is set.
pub const DEFAULT_TLS_PORT: u16 = 2376;

/// A parsed, valid daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// A daemon reached through SSH: a `direct-streamlocal` channel to `socket` on `host`.
    Ssh {
        /// The user from the URL; `None` means the current user.
        user: Option<String>,
        host: String,
        port: u16,
        /// The daemon's socket on the remote host.
        socket: String,
    },
    /// A daemon listening on TCP (plain HTTP, or HTTPS with `DOCKER_TLS_VERIFY`).
    Tcp { host: String, port: u16 },
    /// A daemon on a local Unix socket.
    Unix { path: String },
}

impl fmt::Display for DockerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerHost::Ssh { user, host, port, socket } => {
                write!(f, "ssh://")?;
                if let Some(user) = user {
                    write!(f, "{user}@")?;
                }
                write!(f, "{}:{port}{socket}", bracket_ipv6(host))
            }
            DockerHost::Tcp { host, port } => write!(f, "tcp://{}:{port}", bracket_ipv6(host)),
            DockerHost::Unix { path } => write!(f, "unix://{path}"),
        }
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

/// Why a `DOCKER_HOST` value was refused, with a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub message: String,
    pub hint: String,
}

const FORMS: &str = "use ssh://[user@]host[:port][/socket], tcp://host:port or unix:///path";

fn refuse(message: impl Into<String>) -> HostError {
    HostError { message: message.into(), hint: FORMS.to_string() }
}

impl DockerHost {
    /// Parses a `DOCKER_HOST` value. `tls` picks the default TCP port as the docker CLI does.
    pub fn parse(value: &str, tls: bool) -> Result<DockerHost, HostError> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(DockerHost::Unix { path: DEFAULT_SOCKET.to_string() });
        }
        let Some((scheme, rest)) = value.split_once("://") else {
            if value.contains('@') {
                return Err(HostError {
                    message: "the address has no scheme (it is not repeated here: it holds '@', so perhaps a password)"
                        .to_string(),
                    hint: FORMS.to_string(),
                });
            }
            return Err(HostError {
                message: format!("{value:?} has no scheme"),
                hint: format!("{FORMS}; for a daemon on TCP write tcp://{value}"),
            });
        };
        let scheme = scheme.to_ascii_lowercase();
        // Nothing typed as userinfo (`user:password@`) may come back in an error: refuse it here, in
        // words that repeat none of it, before the host and port parsers quote what they read.
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if matches!(scheme.as_str(), "tcp" | "http" | "https") {
                return Err(refuse("a tcp:// address takes no user name or password (it is not repeated here)"));
            }
            // `ssh://user:pass@host`, or a password holding '/' (`ssh://user:pa/ss@host`: no '@'
            // before the first '/').
            let authority_end = rest.find('/').unwrap_or(rest.len());
            if scheme == "ssh"
                && userinfo.contains(':')
                && (!userinfo.contains('/') || !rest[..authority_end].contains('@'))
            {
                return Err(password_in_url());
            }
        }
        match scheme.as_str() {
            "ssh" => parse_ssh(rest),
            "tcp" | "http" | "https" => {
                let (host, port, path) = split_authority(rest, if tls { DEFAULT_TLS_PORT } else { DEFAULT_TCP_PORT })?;
                if path.is_some_and(|path| path != "/") {
                    return Err(refuse(format!(
                        "a tcp:// address takes no path, found {:?}",
                        path.unwrap_or_default()
                    )));
                }
                if host.contains('@') {
                    return Err(refuse("a tcp:// address takes no user name"));
                }
                if crate::aws::ec2::is_instance_id(&host) {
                    return Err(HostError {
                        message: format!("{host} is an EC2 instance id: the agent reaches instances over ssh:// only"),
                        hint: format!("write ssh://ec2-user@{host} (the instance's user), or the daemon's address"),
                    });
                }
                Ok(DockerHost::Tcp { host, port })
            }
            "unix" => {
                if !rest.starts_with('/') || rest.len() < 2 {
                    return Err(HostError {
                        message: "a unix:// address needs an absolute socket path".to_string(),
                        hint: "write unix:///var/run/docker.sock (three slashes)".to_string(),
                    });
                }
                Ok(DockerHost::Unix { path: rest.to_string() })
            }
            "npipe" => Err(refuse("npipe:// (Windows named pipes) is not available on Linux")),
            _ if scheme.contains(['@', ':']) => Err(refuse("the scheme before '://' is not one of ssh, tcp, unix")),
            _ => Err(refuse(format!("unknown scheme {scheme:?}"))),
        }
    }

    /// A short word for the transport, for logs.
    pub fn transport(&self) -> &'static str {
        match self {
            DockerHost::Ssh { .. } => "ssh",
            DockerHost::Tcp { .. } => "tcp",
            DockerHost::Unix { .. } => "unix",
        }
    }
}

fn parse_ssh(rest: &str) -> Result<DockerHost, HostError> {
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], Some(&rest[at..])),
        None => (rest, None),
    };
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, host_port)) => {
            if user.is_empty() {
                return Err(refuse("the user name before '@' is empty"));
            }
            if user.contains(':') {
                return Err(password_in_url());
            }
            if let Some(bad) = user.chars().find(|c| c.is_whitespace() || c.is_control() || *c == '/') {
                return Err(refuse(format!("the user name contains {bad:?}")));
            }
            (Some(user.to_string()), host_port)
        }
        None => (None, authority),
    };
    let (host, port, _) = split_authority(host_port, DEFAULT_SSH_PORT)?;
    let socket = match path {
        None | Some("/") => DEFAULT_SOCKET.to_string(),
        Some(path) => path.to_string(),
    };
    Ok(DockerHost::Ssh { user, host, port, socket })
}

fn password_in_url() -> HostError {
    HostError {
        message: "an ssh:// address may not hold a password (it is not repeated here)".to_string(),
        hint: "the agent logs in with the key from JETS_SSH_KEY; remove ':password' from the URL".to_string(),
    }
}

/// Splits `host[:port][/path]` into its parts, checking the host and port.
fn split_authority(text: &str, default_port: u16) -> Result<(String, u16, Option<&str>), HostError> {
    let (authority, path) = match text.find('/') {
        Some(at) => (&text[..at], Some(&text[at..])),
        None => (text, None),
    };
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err(refuse("an IPv6 address opened with '[' is not closed with ']'"));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(refuse(format!("{host:?} is not an IPv6 address")));
        }
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => {
                return Err(refuse(format!("unexpected {after:?} after the IPv6 address")));
            }
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(HostError {
            message: "the address names no host".to_string(),
            hint: "write the daemon's host, e.g. ssh://ec2-user@docker.example.com".to_string(),
        });
    }
    if !host.contains(':') {
        if let Some(bad) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._".contains(*c))) {
            return Err(refuse(format!("the host {host:?} contains {bad:?}")));
        }
    }
    let port = match port {
        None => default_port,
        Some(port) => parse_port(port)?,
    };
    Ok((host.to_string(), port, path))
}

fn parse_port(text: &str) -> Result<u16, HostError> {
    let hint = "a port is a number from 1 to 65535".to_string();
    if text.is_empty() {
        return Err(HostError { message: "the port after ':' is empty".to_string(), hint });
    }
    if !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(HostError { message: format!("the port {text:?} is not a number"), hint });
    }
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(HostError { message: format!("the port {text} is out of range"), hint }),
    }
}

/// TLS settings for a `tcp://` daemon, as the docker CLI reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The directory holding `ca.pem`, `cert.pem` and `key.pem` (`DOCKER_CERT_PATH`, else `~/.docker`).
    pub cert_dir: std::path::PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(user: Option<&str>, host: &str, port: u16, socket: &str) -> DockerHost {
        DockerHost::Ssh { user: user.map(String::from), host: host.into(), port, socket: socket.into() }
    }

    #[test]
    fn valid_hosts_parse() {
        let cases = [
            ("", DockerHost::Unix { path: DEFAULT_SOCKET.into() }),
            ("ssh://ec2-user@build.example.com", ssh(Some("ec2-user"), "build.example.com", 22, DEFAULT_SOCKET)),
            ("ssh://host:2222", ssh(None, "host", 2222, DEFAULT_SOCKET)),
            (
                "ssh://u@10.0.0.1:2222/run/user/1000/docker.sock",
                ssh(Some("u"), "10.0.0.1", 2222, "/run/user/1000/docker.sock"),
            ),
            ("ssh://u@[::1]:2200", ssh(Some("u"), "::1", 2200, DEFAULT_SOCKET)),
            ("ssh://u@host/", ssh(Some("u"), "host", 22, DEFAULT_SOCKET)),
            ("tcp://127.0.0.1:2375", DockerHost::Tcp { host: "127.0.0.1".into(), port: 2375 }),
            ("tcp://docker", DockerHost::Tcp { host: "docker".into(), port: 2375 }),
            ("unix:///tmp/d.sock", DockerHost::Unix { path: "/tmp/d.sock".into() }),
        ];
        for (text, want) in cases {
            assert_eq!(DockerHost::parse(text, false), Ok(want), "{text}");
        }
        assert_eq!(DockerHost::parse("tcp://docker", true), Ok(DockerHost::Tcp { host: "docker".into(), port: 2376 }));
    }

    #[test]
    fn invalid_hosts_are_refused_with_a_reason() {
        let cases = [
            ("ftp://x", "unknown scheme \"ftp\""),
            ("ssh://", "the address names no host"),
            ("ssh://@host", "the user name before '@' is empty"),
            ("ssh://u:pw@host", "an ssh:// address may not hold a password (it is not repeated here)"),
            ("tcp://host:notaport", "the port \"notaport\" is not a number"),
            ("ssh://host:99999", "the port 99999 is out of range"),
            ("ssh://host:0", "the port 0 is out of range"),
            ("tcp://host:", "the port after ':' is empty"),
            ("tcp://host:2375/path", "a tcp:// address takes no path, found \"/path\""),
            ("unix://", "a unix:// address needs an absolute socket path"),
            ("host:2375", "\"host:2375\" has no scheme"),
            ("ssh://[::1", "an IPv6 address opened with '[' is not closed with ']'"),
            ("ssh://ho st", "the host \"ho st\" contains ' '"),
            (
                "tcp://i-0123456789abcdef0:2376",
                "i-0123456789abcdef0 is an EC2 instance id: the agent reaches instances over ssh:// only",
            ),
        ];
        for (text, want) in cases {
            let error = DockerHost::parse(text, false).expect_err(text);
            assert_eq!(error.message, want, "{text}");
            assert!(!error.hint.is_empty());
        }
    }

    #[test]
    fn userinfo_echo_nothing_typed_as_userinfo_comes_back_in_an_error() {
        for text in [
            "tcp://alice:zz@host",
            "tcp://alice:zz@host:2375",
            "tcp://zz@host",
            "https://alice:zz@host:2376",
            "ssh://alice:zz@host",
            "ssh://alice:z/z@host",
            "ssh://alice:z@z@host:22",
            "alice:zz@host",
            "u:zz@host://x",
        ] {
            let error = DockerHost::parse(text, false).expect_err(text);
            let shown = format!("{} {}", error.message, error.hint);
            assert!(["zz", "z/z", "z@z", "alice"].iter().all(|typed| !shown.contains(typed)), "{text}: {shown}");
        }
        // An '@' inside a socket path after a user is still a path.
        assert_eq!(
            DockerHost::parse("ssh://u@host:22/run/a@b.sock", false),
            Ok(ssh(Some("u"), "host", 22, "/run/a@b.sock"))
        );
    }

    #[test]
    fn display_round_trips() {
        for text in
            ["ssh://u@host:22/var/run/docker.sock", "tcp://h:1", "unix:///x", "ssh://u@[::1]:22/var/run/docker.sock"]
        {
            assert_eq!(DockerHost::parse(text, false).unwrap().to_string(), text);
        }
    }
}
