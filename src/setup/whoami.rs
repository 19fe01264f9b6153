//! `whoami`: the identity (account, ARN) of the credentials the proxy would use, via STS
//! GetCallerIdentity. Never prints a secret.

use aws_config::SdkConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_types::error::display::DisplayErrorContext;

/// The caller identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// AWS account ID.
    pub account: String,
    /// Caller ARN.
    pub arn: String,
    /// Unique user ID.
    pub user_id: String,
}

/// Asks STS who `provider`'s credentials (default: the SDK chain's) belong to.
pub async fn caller_identity(
    sdk: &SdkConfig,
    provider: Option<SharedCredentialsProvider>,
) -> Result<Identity, String> {
    let mut conf = aws_sdk_sts::config::Builder::from(sdk);
    if let Some(p) = provider {
        conf = conf.credentials_provider(p);
    }
    let who = aws_sdk_sts::Client::from_conf(conf.build())
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| format!("STS GetCallerIdentity failed: {}", DisplayErrorContext(&e)))?;
    Ok(Identity {
        account: who.account().unwrap_or_default().to_owned(),
        arn: who.arn().unwrap_or_default().to_owned(),
        user_id: who.user_id().unwrap_or_default().to_owned(),
    })
}
