//! EC2 Instance Connect: `JETS_SSH_KEY=ec2-instance-connect` logs in with a key made for the run,
//! in memory only, whose public half is pushed to the instance for the URL's user right before the
//! agent connects (SendSSHPublicKey). The instance's sshd accepts it for 60 seconds, through the
//! `ec2-instance-connect` package's `AuthorizedKeysCommand`; one connection serves the whole run.
//!
//! One signed JSON call ([`signed::post`], as EC2's two Query calls) rather than
//! `aws-sdk-ec2instanceconnect`: that crate would cost little (the issue measured +3 s of build),
//! but the signer, the client and the error handling are already here for EC2, and the call is one
//! request of three fields whose answer matters only by its status and error type.

use std::time::Duration;

use super::signed;
use crate::error::{Error, InstanceFailure};

const SERVICE: signed::Service = signed::Service {
    signing_name: "ec2-instance-connect",
    endpoint_variable: "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT",
};

/// How often a throttled or failing push is tried again, and the waits between the tries.
const RETRY_WAITS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)];

/// Pushes `public_key` (an OpenSSH public key line) to `instance` for `user`. A throttled push
/// (ThrottlingException: many builds pushing at once) or one the service failed (ServiceException,
/// HTTP 5xx) is tried again after 1, 2 and 4 s.
pub async fn send_public_key(
    aws: &aws_config::SdkConfig,
    instance: &str,
    user: &str,
    public_key: &str,
) -> Result<(), Error> {
    let mut waits = RETRY_WAITS.iter();
    loop {
        match push_once(aws, instance, user, public_key).await {
            Err(Pushed::Again(error)) => match waits.next() {
                Some(wait) => {
                    tracing::warn!("{error}; trying again in {}s", wait.as_secs());
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(error),
            },
            Err(Pushed::Failed(error)) => return Err(error),
            Ok(()) => return Ok(()),
        }
    }
}

/// Why one push did not take.
enum Pushed {
    /// Throttled, or the service's own failure: worth another try.
    Again(Error),
    Failed(Error),
}

async fn push_once(aws: &aws_config::SdkConfig, instance: &str, user: &str, public_key: &str) -> Result<(), Pushed> {
    let failed = |detail: String| Error::Instance {
        instance: instance.to_string(),
        kind: InstanceFailure::KeyPush { user: user.to_string() },
        detail,
    };
    let body = serde_json::json!({
        "InstanceId": instance,
        "InstanceOSUser": user,
        "SSHPublicKey": public_key,
    })
    .to_string();
    let what = "ec2-instance-connect:SendSSHPublicKey";
    let answer = signed::post(
        aws,
        &SERVICE,
        what,
        "application/x-amz-json-1.1",
        &[("x-amz-target", "AWSEC2InstanceConnectService.SendSSHPublicKey")],
        body,
    )
    .await
    .map_err(|unsent| Pushed::Failed(unsent.into_error(failed)))?;
    let reply: serde_json::Value = serde_json::from_str(&answer.text).unwrap_or_default();
    if (200..300).contains(&answer.status) && reply.get("Success").and_then(serde_json::Value::as_bool) != Some(false) {
        return Ok(());
    }
    // `__type` is `ErrorName` or `namespace#ErrorName`; the message is `Message` or `message`.
    let kind = reply.get("__type").and_then(serde_json::Value::as_str).unwrap_or_default();
    let kind = kind.rsplit('#').next().unwrap_or(kind);
    let message = ["Message", "message"]
        .iter()
        .find_map(|name| reply.get(*name).and_then(serde_json::Value::as_str))
        .unwrap_or_default();
    let detail = match kind {
        "" => format!("{what} failed (HTTP {})", answer.status),
        kind => format!(
            "{what} failed: {}: {} (HTTP {})",
            crate::output::escape_controls(kind),
            crate::output::escape_controls(message),
            answer.status
        ),
    };
    Err(match kind {
        "EC2InstanceNotFoundException" => {
            Pushed::Failed(Error::Instance { instance: instance.to_string(), kind: InstanceFailure::NotFound, detail })
        }
        "ThrottlingException" | "ServiceException" => Pushed::Again(failed(detail)),
        _ if answer.status >= 500 => Pushed::Again(failed(detail)),
        _ => Pushed::Failed(failed(detail)),
    })
}
