//! One signed AWS call without a service SDK: a POST signed with `aws-sigv4` (SigV4, the SDK's own
//! signer) and sent with `reqwest`, for the three calls whose SDKs would cost more build than they
//! save code (EC2's DescribeInstances and StartInstances, EC2 Instance Connect's SendSSHPublicKey;
//! `ec2.rs` and `instance_connect.rs` say why for each).
//!
//! Credentials and region come from the SDK's chain ([`super::sdk_config`]); the endpoint honours
//! the service's own `AWS_ENDPOINT_URL_<SERVICE>`, then `AWS_ENDPOINT_URL`, as the SDK does.

use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;

use crate::error::Error;

/// How much of an answer is read (EC2's answers about one instance are a few kB).
const ANSWER_LIMIT: usize = 1 << 20;

/// The service a call goes to.
pub struct Service {
    /// The name requests are signed for (`ec2`, `ec2-instance-connect`).
    pub signing_name: &'static str,
    /// The endpoint variable of its own (`AWS_ENDPOINT_URL_EC2`).
    pub endpoint_variable: &'static str,
}

/// Why a call got no answer from the service: said in words, for the caller's error.
#[derive(Debug)]
pub enum Unsent {
    /// No region, no credentials, or an endpoint that cannot be reached.
    Unreachable(String),
    /// A bug (a request that cannot be built or signed).
    Internal(String),
}

/// What the service answered: its status and its body.
pub struct Answer {
    pub status: u16,
    pub text: String,
}

/// The endpoint: `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL` (the SDK's configuration), else
/// the region's.
fn endpoint(service: &Service, aws: &aws_config::SdkConfig, region: &str) -> String {
    std::env::var(service.endpoint_variable)
        .ok()
        .filter(|url| !url.trim().is_empty())
        .or_else(|| aws.endpoint_url().map(str::to_string))
        .unwrap_or_else(|| format!("https://{}.{region}.amazonaws.com", service.signing_name))
}

/// POSTs `body` (of `content_type`, with `headers`) to `service`, signed; its answer, whatever its
/// status. `what` names the call in errors (`ec2:StartInstances`).
pub async fn post(
    aws: &aws_config::SdkConfig,
    service: &Service,
    what: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Result<Answer, Unsent> {
    let region = aws.region().map(|region| region.to_string()).filter(|region| !region.trim().is_empty());
    let region = region.ok_or_else(|| Unsent::Unreachable("no AWS region is configured".to_string()))?;
    let provider =
        aws.credentials_provider().ok_or_else(|| Unsent::Unreachable("no AWS credentials were found".to_string()))?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|error| Unsent::Unreachable(format!("no AWS credentials were found ({error})")))?;
    // Known to the redactor before anything is done with them (from CodeBuild's container
    // credentials they were in no environment variable that `run` registered).
    crate::secrets::redactor().register(credentials.secret_access_key());
    if let Some(token) = credentials.session_token() {
        crate::secrets::redactor().register(token);
    }
    let url = endpoint(service, aws, &region);
    let mut builder = http::Request::builder().method("POST").uri(&url).header("content-type", content_type);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder
        .body(body)
        .map_err(|error| Unsent::Unreachable(format!("the endpoint {url:?} is not a URL ({error})")))?;
    let identity = aws_smithy_runtime_api::client::identity::Identity::from(credentials);
    let settings = aws_sigv4::http_request::SigningSettings::default();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name(service.signing_name)
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|error| Unsent::Internal(format!("{what}: signing parameters: {error}")))?
        .into();
    let signed_headers =
        request.headers().iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let signable = aws_sigv4::http_request::SignableRequest::new(
        "POST",
        url.clone(),
        signed_headers,
        aws_sigv4::http_request::SignableBody::Bytes(request.body().as_bytes()),
    )
    .map_err(|error| Unsent::Internal(format!("{what}: request: {error}")))?;
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|error| Unsent::Internal(format!("{what}: signing: {error}")))?
        .into_parts();
    instructions.apply_to_request_http1x(&mut request);
    let timeout = aws.timeout_config().and_then(|timeouts| timeouts.operation_timeout());
    let client = reqwest::Client::builder()
        .timeout(timeout.unwrap_or(Duration::from_secs(60)))
        .build()
        .map_err(|error| Unsent::Internal(format!("{what}: HTTP client: {error}")))?;
    let request =
        reqwest::Request::try_from(request).map_err(|error| Unsent::Internal(format!("{what}: request: {error}")))?;
    let response = client
        .execute(request)
        .await
        .map_err(|error| Unsent::Unreachable(format!("{what}: the endpoint {url} could not be reached ({error})")))?;
    let status = response.status().as_u16();
    // Read up to a bound: the answers are a few hundred bytes; an endpoint that sends more is cut.
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| Unsent::Unreachable(format!("{what}: the answer broke off ({error})")))?
    {
        body.extend_from_slice(&chunk[..chunk.len().min(ANSWER_LIMIT - body.len())]);
        if body.len() >= ANSWER_LIMIT {
            break;
        }
    }
    Ok(Answer { status, text: String::from_utf8_lossy(&body).into_owned() })
}

impl Unsent {
    /// The error for the instance `instance`: a bug stays a bug, the rest are EC2's to answer for.
    pub fn into_error(self, denied: impl FnOnce(String) -> Error) -> Error {
        match self {
            Unsent::Unreachable(detail) => denied(detail),
            Unsent::Internal(detail) => Error::Internal(detail),
        }
    }
}
