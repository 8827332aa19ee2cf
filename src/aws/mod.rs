//! AWS: resolving `SSM:` references (SSM GetParameters, decrypted, 10 names a call) and ECR
//! registry tokens (GetAuthorizationToken, one call per region). Credentials come from the SDK's
//! default chain (environment, profile, CodeBuild's container credentials); endpoints honour the
//! SDK's own `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SSM` and `AWS_ENDPOINT_URL_ECR`. [`ec2`]: an
//! EC2 instance as the host, started when stopped; [`instance_connect`]: a key pushed to it for the
//! run; [`signed`]: the signed call both make without a service SDK.

pub mod ec2;
pub mod instance_connect;
pub mod signed;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata};
use base64::Engine;

use crate::error::Error;
use crate::secrets::{Origin, Secret, SsmRef};

/// GetParameters takes at most this many names per call.
const SSM_BATCH: usize = 10;

/// The SDK configuration: region from the flag or environment, else the SDK's chain.
pub async fn sdk_config(region: Option<&str>, timeout: Duration) -> aws_config::SdkConfig {
    let provider = RegionProviderChain::first_try(region.map(|region| aws_config::Region::new(region.to_string())))
        .or_default_provider();
    aws_config::defaults(BehaviorVersion::latest())
        .region(provider)
        .timeout_config(TimeoutConfig::builder().connect_timeout(timeout).operation_timeout(timeout * 3).build())
        .load()
        .await
}

/// A parameter's value, and whether it was a SecureString.
#[derive(Debug, Clone)]
pub struct Parameter {
    pub value: String,
    pub secure: bool,
}

/// Fetches every referenced parameter, decrypted. SecureString values are registered with the
/// redactor here, the moment they are known; the caller registers the values of secret variables.
pub async fn resolve_ssm(
    config: &aws_config::SdkConfig,
    references: &[(Origin, SsmRef)],
) -> Result<BTreeMap<SsmRef, Parameter>, Error> {
    let first = references.first().map(|(origin, reference)| (origin.subject(), reference.to_string()));
    let (variable, parameter) = first.unwrap_or_default();
    if config.region().is_none_or(|region| region.as_ref().trim().is_empty()) {
        return Err(Error::Secrets {
            parameter,
            variable,
            detail: "no AWS region is configured".to_string(),
            hint: "set AWS_REGION (CodeBuild sets it), or pass --region".to_string(),
        });
    }
    let client = aws_sdk_ssm::Client::new(config);
    let mut names: Vec<&str> = references.iter().map(|(_, reference)| reference.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut values = BTreeMap::new();
    for batch in names.chunks(SSM_BATCH) {
        let output = client
            .get_parameters()
            .set_names(Some(batch.iter().map(|name| name.to_string()).collect()))
            .with_decryption(true)
            .send()
            .await
            .map_err(|error| {
                let (variable, parameter) = references
                    .iter()
                    .find(|(_, reference)| batch.contains(&reference.name.as_str()))
                    .map(|(origin, reference)| (origin.subject(), reference.to_string()))
                    .unwrap_or_default();
                sdk_error(error, parameter, variable, "ssm:GetParameters")
            })?;
        if let Some(missing) = output.invalid_parameters().first() {
            let (variable, parameter) = references
                .iter()
                .find(|(_, reference)| &reference.name == missing)
                .map(|(origin, reference)| (origin.subject(), reference.to_string()))
                .unwrap_or_else(|| (String::new(), format!("SSM:{missing}")));
            return Err(Error::Secrets {
                parameter,
                variable,
                detail: "the parameter does not exist".to_string(),
                hint: format!(
                    "create it (aws ssm put-parameter --name {missing} --type SecureString ...) in region {}, or fix the reference",
                    config.region().map(|region| region.to_string()).unwrap_or_default()
                ),
            });
        }
        for parameter in output.parameters() {
            if let (Some(name), Some(value)) = (parameter.name(), parameter.value()) {
                let secure = parameter.r#type() == Some(&aws_sdk_ssm::types::ParameterType::SecureString);
                // The word that asks for EC2 Instance Connect is no secret, wherever it is kept:
                // masked, it would hide itself in the messages about it ("is ec2-instance-connect, but…").
                if secure && value.trim() != crate::ssh::key::INSTANCE_CONNECT {
                    crate::secrets::redactor().register(value);
                }
                values.insert(SsmRef { name: name.to_string() }, Parameter { value: value.to_string(), secure });
            }
        }
    }
    Ok(values)
}

/// Writes `value` into Parameter Store as a SecureString named `name` (`agent host keygen`,
/// `keyscan --put-parameter`), encrypted with the account's default key; an existing parameter is
/// replaced only with `overwrite`. The caller registers a secret value with the redactor first.
pub async fn put_parameter(
    config: &aws_config::SdkConfig,
    name: &str,
    value: &str,
    description: &str,
    overwrite: bool,
) -> Result<i64, Error> {
    let failed = |detail: String, hint: String| Error::ParameterWrite { parameter: name.to_string(), detail, hint };
    if config.region().is_none_or(|region| region.as_ref().trim().is_empty()) {
        return Err(failed(
            "no AWS region is configured".to_string(),
            "set AWS_REGION to the region of the CodeBuild project, or pass --region".to_string(),
        ));
    }
    let client = aws_sdk_ssm::Client::new(config);
    let output = client
        .put_parameter()
        .name(name)
        .value(value)
        .description(description)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(overwrite)
        .send()
        .await
        .map_err(|error| {
            if error.code() == Some("ParameterAlreadyExists") {
                return failed(
                    "the parameter already exists".to_string(),
                    "the agent never replaces a parameter unless told: give --overwrite to replace it, or another name"
                        .to_string(),
                );
            }
            match sdk_error(error, format!("SSM:{name}"), String::new(), "ssm:PutParameter") {
                Error::Secrets { detail, hint, .. } => {
                    failed(detail, hint.replace("kms:Decrypt for SecureString", "kms:Encrypt for a SecureString"))
                }
                other => other,
            }
        })?;
    Ok(output.version())
}

/// ECR passwords by region: one GetAuthorizationToken call per region, started early (while the
/// hosts are connected: they do not depend on each other) and awaited by the ECR logins.
#[derive(Default)]
pub struct EcrTokens {
    passwords: BTreeMap<String, Secret>,
    started: BTreeMap<String, tokio::task::JoinHandle<Result<Secret, Error>>>,
}

impl EcrTokens {
    /// Starts the token request for each `(registry, region)` whose region has none yet.
    pub fn prefetch<'a>(
        &mut self,
        config: &aws_config::SdkConfig,
        logins: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    ) {
        for (registry, region) in logins {
            let key = region.unwrap_or_default().to_string();
            if self.started.contains_key(&key) || self.passwords.contains_key(&key) {
                continue;
            }
            let (config, region, registry) = (config.clone(), region.map(str::to_string), registry.to_string());
            let task = tokio::spawn(async move { ecr_password(&config, region.as_deref(), &registry).await });
            self.started.insert(key, task);
        }
    }

    /// The password for `registry` in `region`: the prefetched one, or one asked for now.
    pub async fn password(
        &mut self,
        config: &aws_config::SdkConfig,
        region: Option<&str>,
        registry: &str,
    ) -> Result<Secret, Error> {
        let key = region.unwrap_or_default().to_string();
        if let Some(task) = self.started.remove(&key) {
            let password =
                task.await.map_err(|error| Error::Internal(format!("the ECR token task failed: {error}")))??;
            self.passwords.insert(key.clone(), password);
        }
        if let Some(password) = self.passwords.get(&key) {
            return Ok(password.clone());
        }
        let password = ecr_password(config, region, registry).await?;
        self.passwords.insert(key, password.clone());
        Ok(password)
    }
}

/// A registry password from ECR: the decoded `AWS:password` token of GetAuthorizationToken.
pub async fn ecr_password(
    config: &aws_config::SdkConfig,
    region: Option<&str>,
    registry: &str,
) -> Result<Secret, Error> {
    let mut builder = aws_sdk_ecr::config::Builder::from(config);
    if let Some(region) = region {
        builder = builder.region(aws_config::Region::new(region.to_string()));
    }
    let ecr_config = builder.build();
    if ecr_config.region().is_none_or(|region| region.as_ref().trim().is_empty()) {
        return Err(Error::Login {
            registry: registry.to_string(),
            detail: "no AWS region for its ECR token".to_string(),
            hint: "set AWS_REGION, or pass --region".to_string(),
        });
    }
    let client = aws_sdk_ecr::Client::from_conf(ecr_config);
    let output = client.get_authorization_token().send().await.map_err(|error| {
        let code = error.code().map(str::to_string);
        Error::Login {
            registry: registry.to_string(),
            detail: format!("ECR GetAuthorizationToken failed: {}", short(&error)),
            hint: match code.as_deref() {
                Some("AccessDeniedException") => {
                    "allow ecr:GetAuthorizationToken to the build's role (CodeBuild service role)".to_string()
                }
                _ => "check the build's AWS credentials and region".to_string(),
            },
        }
    })?;
    let token = output.authorization_data().first().and_then(|data| data.authorization_token()).ok_or_else(|| {
        Error::Login {
            registry: registry.to_string(),
            detail: "ECR returned no authorization token".to_string(),
            hint: "run again; if it persists, check the ECR service's health".to_string(),
        }
    })?;
    // Registered before anything else is done with it; the SDK's own trace of the response is capped
    // below trace (see `output::LIBRARY_CAPS`), since it runs before this line can.
    crate::secrets::redactor().register(token);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.split_once(':').map(|(user, password)| (user.to_string(), password.to_string())))
        .ok_or_else(|| Error::Login {
            registry: registry.to_string(),
            detail: "ECR's token is not base64 of user:password".to_string(),
            hint: "report this with the agent's version".to_string(),
        })?;
    let (user, password) = decoded;
    crate::secrets::redactor().register_login(&user, &password);
    Ok(Secret::new(password))
}

fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    error: aws_sdk_ssm::error::SdkError<E>,
    parameter: String,
    variable: String,
    action: &str,
) -> Error {
    let code = error.code().map(str::to_string);
    let (detail, hint) = match (&error, code.as_deref()) {
        (_, Some("AccessDeniedException")) => (
            format!("access denied ({action})"),
            format!("allow {action} (and kms:Decrypt for SecureString) on the parameter to the build's role"),
        ),
        (aws_sdk_ssm::error::SdkError::DispatchFailure(failure), _) if failure.is_io() || failure.is_timeout() => (
            format!("the SSM endpoint could not be reached: {}", short(&error)),
            "check the build's network access to SSM (VPC endpoint or NAT), or AWS_ENDPOINT_URL_SSM".to_string(),
        ),
        (aws_sdk_ssm::error::SdkError::DispatchFailure(failure), _) if failure.as_other().is_some() => {
            let text = DisplayErrorContext(&error).to_string();
            if text.contains("credentials") {
                (
                    "no AWS credentials were found".to_string(),
                    "in CodeBuild the service role provides them; locally set AWS_PROFILE or AWS_ACCESS_KEY_ID"
                        .to_string(),
                )
            } else {
                (format!("the request failed: {}", short(&error)), "check the build's AWS configuration".to_string())
            }
        }
        _ => {
            let text = DisplayErrorContext(&error).to_string();
            if text.contains("credentials") || text.contains("Credentials") {
                (
                    "no AWS credentials were found".to_string(),
                    "in CodeBuild the service role provides them; locally set AWS_PROFILE or AWS_ACCESS_KEY_ID"
                        .to_string(),
                )
            } else if matches!(error, aws_sdk_ssm::error::SdkError::TimeoutError(_)) {
                ("the SSM request timed out".to_string(), "check the build's network access to SSM".to_string())
            } else {
                (format!("the request failed: {}", short(&error)), "check the build's AWS configuration".to_string())
            }
        }
    };
    Error::Secrets { parameter, variable, detail, hint }
}

/// An SDK error in one short line: the service's code and message, the HTTP status, or the cause.
fn short<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: &aws_sdk_ssm::error::SdkError<E, R>,
) -> String {
    use aws_sdk_ssm::error::SdkError;
    match error {
        SdkError::ServiceError(service) => match (service.err().code(), service.err().message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_string(),
            _ => "the service answered with an error it did not describe (is the endpoint an AWS API?)".to_string(),
        },
        SdkError::TimeoutError(_) => "timed out".to_string(),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}
