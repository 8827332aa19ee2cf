//! `agent host`: the risky parts of setting up a remote host, done by the agent. `keyscan` reads
//! the host's keys (never trusting them: the user compares the fingerprints) as hashed known_hosts
//! lines; `keygen` makes a login key whose private half goes into Parameter Store and nowhere else;
//! [`idle`] stops the host once no client has been connected for a while.

pub mod idle;
pub mod sock_diag;

use std::time::Duration;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

use crate::cli::{HostCommand, KeygenArgs, KeyscanArgs};
use crate::docker::host::DockerHost;
use crate::error::{Error, Problem};
use crate::ssh::keyscan;

/// Carries out one `agent host` command.
pub async fn run(command: &HostCommand) -> Result<(), Error> {
    match command {
        HostCommand::Keyscan(args) => keyscan(args).await,
        HostCommand::Keygen(args) => keygen(args).await,
        HostCommand::IdleStop(args) => idle::run(args),
    }
}

async fn keyscan(args: &KeyscanArgs) -> Result<(), Error> {
    let (host, port) = ssh_host(&args.url)?;
    let name = crate::ssh::known_hosts::lookup_name(&host, port);
    let instance = crate::aws::ec2::is_instance_id(&host);
    if args.dry {
        if instance {
            tracing::info!(
                "dry run: would ask EC2 for {host}'s {} address (starting it if stopped, up to {}s); the lines would \
                 name {name}, which pins its keys whatever its address",
                args.host_address.as_str(),
                args.start_timeout
            );
        }
        tracing::info!("dry run: would ask {name}'s sshd for each of its host keys (ed25519, ecdsa, rsa)");
        if let Some(parameter) = &args.put_parameter {
            tracing::info!(
                "dry run: would store the lines in the SecureString {parameter}{}",
                overwriting(args.overwrite)
            );
        }
        return Ok(());
    }
    // An EC2 instance: reached at its address, its lines naming its id.
    let address = match instance {
        true => {
            let access = crate::aws::ec2::InstanceAccess {
                aws: crate::aws::sdk_config(args.region.as_deref(), Duration::from_secs(args.connect_timeout)).await,
                address: args.host_address,
                start_timeout: Duration::from_secs(args.start_timeout),
            };
            let timeout = access.start_timeout;
            Some(crate::aws::ec2::ready_address(&access, &host, port, timeout).await?)
        }
        false => None,
    };
    let keys = keyscan::scan(&host, address.as_deref(), port, Duration::from_secs(args.connect_timeout)).await?;
    let lines: Vec<&str> = keys.iter().map(|key| key.known_hosts_line.as_str()).collect();
    for key in &keys {
        match &address {
            Some(address) => tracing::info!("{name} (at {address}) offers {}", key.describe()),
            None => tracing::info!("{name} offers {}", key.describe()),
        }
    }
    tracing::info!(
        "compare these fingerprints with the host's own before you trust them: `ssh-keygen -lf \
         /etc/ssh/ssh_host_ed25519_key.pub` (and the other types) on the host, or its EC2 console output \
         (\"BEGIN SSH HOST KEY FINGERPRINTS\"); anyone between you and the host could have answered"
    );
    if let Some(parameter) = &args.put_parameter {
        let config = crate::aws::sdk_config(args.region.as_deref(), Duration::from_secs(args.connect_timeout)).await;
        let text = format!("{}\n", lines.join("\n"));
        let description = format!("known_hosts of {name}, by agent host keyscan");
        let version = crate::aws::put_parameter(&config, parameter, &text, &description, args.overwrite).await?;
        tracing::info!(
            "stored {} line{} in the SecureString {parameter} (version {version}): set JETS_SSH_KNOWN: SSM:{parameter}",
            lines.len(),
            if lines.len() == 1 { "" } else { "s" }
        );
    }
    crate::output::print(&format!("{}\n", lines.join("\n")));
    Ok(())
}

async fn keygen(args: &KeygenArgs) -> Result<(), Error> {
    let parameter = &args.put_parameter;
    if !parameter.starts_with('/') && parameter.contains('/') {
        return Err(Error::Config(vec![
            Problem::new("--put-parameter", format!("{parameter:?} is not a parameter name"))
                .hint("a hierarchical name starts with a slash: /ci/docker/ssh-key"),
        ]));
    }
    let comment = args.comment.clone().unwrap_or_else(|| format!("agent SSM:{parameter}"));
    if args.dry {
        tracing::info!(
            "dry run: would make an ed25519 key pair ({comment:?}), store its private key in the SecureString \
             {parameter}{} and print its public key",
            overwriting(args.overwrite)
        );
        return Ok(());
    }
    let key = new_key(&comment)?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|error| Error::Internal(format!("failed to encode the new key: {error}")))?;
    // Registered before it goes anywhere: whatever logs the request (the SDK at trace level) prints
    // it masked.
    crate::secrets::redactor().register(&private);
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|error| Error::Internal(format!("failed to encode the new public key: {error}")))?;
    let config = crate::aws::sdk_config(args.region.as_deref(), Duration::from_secs(20)).await;
    let description = format!("SSH private key ({comment}), by agent host keygen");
    let version = crate::aws::put_parameter(&config, parameter, &private, &description, args.overwrite).await?;
    drop(private);
    tracing::info!(
        "stored the private key ({} {}) in the SecureString {parameter} (version {version}), and nowhere else: \
         set JETS_SSH_KEY: SSM:{parameter}",
        key.algorithm().as_str(),
        key.public_key().fingerprint(HashAlg::Sha256)
    );
    tracing::info!("add the public key below to ~USER/.ssh/authorized_keys on the host (USER: DOCKER_HOST's user)");
    crate::output::print(&format!("{public}\n"));
    Ok(())
}

/// A new ed25519 key from the system's randomness.
fn new_key(comment: &str) -> Result<PrivateKey, Error> {
    crate::ssh::key::new_ed25519(comment).map_err(Error::Internal)
}

/// The host and port of an `ssh://` URL.
fn ssh_host(url: &str) -> Result<(String, u16), Error> {
    let problem = |message: String| {
        Error::Config(vec![
            Problem::new("URL", message)
                .hint("give the host as DOCKER_HOST names it: ssh://ec2-user@build.example.com[:22]"),
        ])
    };
    match DockerHost::parse(url, false) {
        Ok(DockerHost::Ssh { host, port, .. }) => Ok((host, port)),
        Ok(other) => Err(problem(format!("{other} is not an ssh:// host: only an SSH server has host keys"))),
        Err(error) => Err(problem(error.message)),
    }
}

fn overwriting(overwrite: bool) -> &'static str {
    if overwrite { " (replacing it if it exists)" } else { " (refusing to replace an existing one)" }
}
