//! EC2: an instance as the Docker host (`ssh://user@i-0123456789abcdef0`). The instance is asked
//! for (DescribeInstances) and reached at its private address (or its public one); a stopped
//! instance is started (StartInstances) and waited for until it runs and its sshd answers with a
//! banner, within the start timeout. One that is `stopping` is waited for, then started.
//!
//! Two EC2 Query calls (`Version=2016-11-15`, a form-encoded POST) signed with `aws-sigv4`, which the
//! SDK already brings, rather than `aws-sdk-ec2`: the issue measured that crate at +187 s on a debug
//! build and +273 s on a release build of this machine (rustc peaking at 8 GiB) for +0.7 MB of
//! binary, to make two calls whose answers are four fields. This way adds no crate to the build
//! (`aws-sigv4`, `aws-credential-types`, `aws-smithy-runtime-api` and `reqwest` were all in the tree
//! already, with these features; Cargo.lock gains four dependency lines and no package). Measured
//! 2026-12-06 on the shared 2-core machine, debug, dependencies built, `cargo clean -p agent` then
//! `cargo build` (lib and bin): main at 0a33971 20.3 s, this 19.4 s (the same, within noise), rustc
//! peaking at 2.0 GiB both; the stripped debug binary +0.19 MB. The answer's XML is read by
//! [`leaves`], a reader of a dozen lines that knows elements and text only (what EC2 sends).
//!
//! The call itself is [`signed::post`]: credentials and region from the SDK's chain, the endpoint
//! `AWS_ENDPOINT_URL_EC2`, then `AWS_ENDPOINT_URL`, as the SDK does.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::signed;
use crate::error::{Error, InstanceFailure};

/// The EC2 Query API version the calls speak.
const API_VERSION: &str = "2016-11-15";
/// How often the instance's state is asked for while it starts or stops.
const POLL: Duration = Duration::from_secs(2);
/// How long one look at the sshd (its TCP port and banner) may take.
const BANNER_WAIT: Duration = Duration::from_secs(5);

/// Whether a host name is an EC2 instance id: `i-` and 8 or 17 lowercase hex digits.
pub fn is_instance_id(host: &str) -> bool {
    host.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Which of the instance's addresses the agent connects to (`AGENT_HOST_ADDRESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AddressKind {
    /// Its private address: CodeBuild in the instance's VPC.
    #[default]
    Private,
    /// Its public address (an instance in a public subnet, CodeBuild outside the VPC).
    Public,
}

impl AddressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Private => "private",
            AddressKind::Public => "public",
        }
    }
}

/// What the agent needs to reach instances: the SDK's configuration, the address kind, and how long
/// a start may take.
#[derive(Clone)]
pub struct InstanceAccess {
    pub aws: aws_config::SdkConfig,
    pub address: AddressKind,
    pub start_timeout: Duration,
}

/// What DescribeInstances said about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    pub state: String,
    pub private_address: Option<String>,
    pub public_address: Option<String>,
}

/// The address of instance `id` at which its sshd (on `port`) answers, starting the instance if it
/// is stopped (waiting first if it is stopping), all within `timeout`.
pub async fn ready_address(access: &InstanceAccess, id: &str, port: u16, timeout: Duration) -> Result<String, Error> {
    let started_at = Instant::now();
    let deadline = started_at + timeout;
    let mut started: Option<Instant> = None;
    let mut last = String::new();
    let timed_out = |last: &str| {
        failure(id, InstanceFailure::Timeout, format!("not ready within {}s (last seen: {last})", timeout.as_secs()))
    };
    loop {
        let instance = tokio::time::timeout_at(deadline.into(), describe(&access.aws, id))
            .await
            .map_err(|_| timed_out(&last))??;
        match instance.state.as_str() {
            "running" => {
                let address = match access.address {
                    AddressKind::Private => instance.private_address.clone(),
                    AddressKind::Public => instance.public_address.clone(),
                };
                let Some(address) = address else {
                    return Err(failure(
                        id,
                        InstanceFailure::NoAddress,
                        format!("the running instance has no {} address", access.address.as_str()),
                    ));
                };
                match sshd_answers(&address, port).await {
                    Ok(()) => {
                        if let Some(started) = started {
                            tracing::info!("started {id} in {:.1}s", started.elapsed().as_secs_f64());
                        }
                        return Ok(address);
                    }
                    Err(why) => last = format!("running at {address}, its sshd on port {port} {why}"),
                }
            }
            "stopped" if started.is_none() => {
                tracing::info!("{id} is stopped: starting it (up to {}s)", timeout.as_secs());
                start(&access.aws, id).await?;
                started = Some(Instant::now());
                last = "starting".to_string();
            }
            "shutting-down" | "terminated" => {
                return Err(failure(id, InstanceFailure::NotFound, format!("the instance is {}", instance.state)));
            }
            state => {
                if state == "stopping" && last != "stopping" {
                    tracing::info!("{id} is stopping: waiting for it to stop, then starting it");
                }
                last = state.to_string();
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(&last));
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// Whether an sshd answers at `address:port` with its banner (`SSH-2.0-…`).
async fn sshd_answers(address: &str, port: u16) -> Result<(), String> {
    let look = async {
        let mut stream =
            tokio::net::TcpStream::connect((address, port)).await.map_err(|error| format!("refused ({error})"))?;
        let mut banner = [0u8; 4];
        stream.read_exact(&mut banner).await.map_err(|error| format!("sent no banner ({error})"))?;
        if &banner == b"SSH-" { Ok(()) } else { Err("answered without an SSH banner".to_string()) }
    };
    tokio::time::timeout(BANNER_WAIT, look).await.unwrap_or_else(|_| Err("did not answer".to_string()))
}

/// DescribeInstances for one instance.
pub async fn describe(aws: &aws_config::SdkConfig, id: &str) -> Result<Instance, Error> {
    let answer = call(aws, "DescribeInstances", id).await?;
    let mut instance = Instance::default();
    let mut found = false;
    for (path, text) in leaves(&answer) {
        if path.ends_with("instancesSet/item/instanceId") {
            found = text == id;
        } else if path.ends_with("instancesSet/item/instanceState/name") {
            instance.state = text;
        } else if path.ends_with("instancesSet/item/privateIpAddress") {
            instance.private_address = Some(text);
        } else if path.ends_with("instancesSet/item/ipAddress") {
            instance.public_address = Some(text);
        }
    }
    if !found || instance.state.is_empty() {
        return Err(failure(id, InstanceFailure::NotFound, "EC2 knows no such instance".to_string()));
    }
    Ok(instance)
}

/// StartInstances for one instance.
pub async fn start(aws: &aws_config::SdkConfig, id: &str) -> Result<(), Error> {
    call(aws, "StartInstances", id).await.map(drop)
}

fn failure(instance: &str, kind: InstanceFailure, detail: String) -> Error {
    Error::Instance { instance: instance.to_string(), kind, detail }
}

/// The EC2 Query API.
const EC2: signed::Service = signed::Service { signing_name: "ec2", endpoint_variable: "AWS_ENDPOINT_URL_EC2" };

/// One signed Query call about instance `id`; its answer's text.
async fn call(aws: &aws_config::SdkConfig, action: &str, id: &str) -> Result<String, Error> {
    let denied = |detail: String| failure(id, InstanceFailure::Denied, detail);
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", action)
        .append_pair("Version", API_VERSION)
        .append_pair("InstanceId.1", id)
        .finish();
    let what = format!("ec2:{action}");
    let answer = signed::post(aws, &EC2, &what, "application/x-www-form-urlencoded; charset=utf-8", &[], body)
        .await
        .map_err(|unsent| unsent.into_error(denied))?;
    let (status, text) = (answer.status, answer.text);
    if (200..300).contains(&status) {
        return Ok(text);
    }
    let mut code = String::new();
    let mut message = String::new();
    for (path, value) in leaves(&text) {
        if path.ends_with("Error/Code") {
            code = value;
        } else if path.ends_with("Error/Message") {
            message = value;
        }
    }
    let detail = format!(
        "ec2:{action} failed: {}: {} (HTTP {status})",
        crate::output::escape_controls(&code),
        crate::output::escape_controls(&message)
    );
    Err(match code.as_str() {
        "InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed" => failure(id, InstanceFailure::NotFound, detail),
        _ => denied(detail),
    })
}

/// Every text-holding element of an XML document, as `a/b/c` (local names) and its unescaped text,
/// in document order. Enough for EC2's answers: no CDATA, no mixed content that matters.
pub fn leaves(xml: &str) -> Vec<(String, String)> {
    let mut path: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        let Some(close) = rest[open..].find('>') else { break };
        let tag = &rest[open + 1..open + close];
        rest = &rest[open + close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            if path.last() == Some(&name.trim()) && !text.trim().is_empty() {
                out.push((path.join("/"), unescape(text.trim())));
            }
            path.pop();
        } else {
            let name = tag.split_whitespace().next().unwrap_or_default();
            path.push(name.rsplit(':').next().unwrap_or(name));
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_i_and_8_or_17_hex_digits() {
        for id in ["i-0123456789abcdef0", "i-1234abcd"] {
            assert!(is_instance_id(id), "{id}");
        }
        for name in ["i-0123456789ABCDEF0", "i-123", "i-0123456789abcdef", "build.example.com", "i-1234abcg", "i-"] {
            assert!(!is_instance_id(name), "{name}");
        }
    }

    #[test]
    fn the_instance_fields_are_read_from_describe_instances_and_not_from_its_interfaces() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <reservationSet><item><reservationId>r-1</reservationId><instancesSet><item>
    <instanceId>i-0123456789abcdef0</instanceId>
    <instanceState><code>80</code><name>stopped</name></instanceState>
    <groupSet><item><groupId>sg-1</groupId></item></groupSet>
    <privateIpAddress>10.0.0.5</privateIpAddress>
    <networkInterfaceSet><item><privateIpAddress>10.9.9.9</privateIpAddress></item></networkInterfaceSet>
    <tagSet/>
  </item></instancesSet></item></reservationSet>
</DescribeInstancesResponse>"#;
        let leaves = leaves(xml);
        let get = |suffix: &str| {
            leaves.iter().filter(|(path, _)| path.ends_with(suffix)).map(|(_, text)| text.as_str()).collect::<Vec<_>>()
        };
        assert_eq!(get("instancesSet/item/instanceState/name"), ["stopped"]);
        assert_eq!(get("instancesSet/item/privateIpAddress"), ["10.0.0.5"]);
        assert!(get("instancesSet/item/ipAddress").is_empty());
    }

    #[test]
    fn an_error_answer_gives_its_code_and_message_unescaped() {
        let xml = "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not &quot;authorized&quot; &amp; such</Message></Error></Errors><RequestID>x</RequestID></Response>";
        let leaves = leaves(xml);
        assert_eq!(leaves[0], ("Response/Errors/Error/Code".to_string(), "UnauthorizedOperation".to_string()));
        assert_eq!(leaves[1].1, "You are not \"authorized\" & such");
    }
}
