//! `setup iam`: the IAM side of database authentication, as the AWS lab did by hand: a policy
//! allowing `rds-db:connect` on `arn:<partition>:rds-db:<region>:<account>:dbuser:<resource-id>/<user>`,
//! a role trusted by a principal (default: the account root) and the attachment. Idempotent
//! both ways: existing entities are compared with the wanted documents and updated only when
//! they differ; `delete` removes what exists and reports what was already gone.

use aws_config::SdkConfig;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::Client;
use aws_smithy_types::error::display::DisplayErrorContext;
use serde_json::Value;

mod spec;
pub use spec::IamSpec;

fn aws_error<E: std::error::Error + 'static>(what: &str, e: &E) -> String {
    format!("{what} failed: {}", DisplayErrorContext(e))
}

/// IAM returns documents URL-encoded.
fn parse_document(encoded: &str) -> Option<Value> {
    let text = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// Creates (or brings up to date) the policy, the role and the attachment.
pub async fn create(sdk: &SdkConfig, spec: &IamSpec) -> Result<Vec<String>, String> {
    let iam = Client::new(sdk);
    let mut report = Vec::new();
    report.push(ensure_policy(&iam, spec).await?);
    report.push(ensure_role(&iam, spec).await?);
    let attached = iam
        .list_attached_role_policies()
        .role_name(&spec.role_name)
        .send()
        .await
        .map_err(|e| aws_error("ListAttachedRolePolicies", &e))?;
    let policy_arn = spec.policy_arn();
    if attached
        .attached_policies()
        .iter()
        .any(|p| p.policy_arn() == Some(policy_arn.as_str()))
    {
        report.push(format!(
            "policy {} already attached to role {}",
            spec.policy_name, spec.role_name
        ));
    } else {
        iam.attach_role_policy()
            .role_name(&spec.role_name)
            .policy_arn(&policy_arn)
            .send()
            .await
            .map_err(|e| aws_error("AttachRolePolicy", &e))?;
        report.push(format!(
            "attached policy {} to role {}",
            spec.policy_name, spec.role_name
        ));
    }
    report.push(format!(
        "role ARN (use with --role-arn): {}",
        spec.role_arn()
    ));
    Ok(report)
}

async fn ensure_policy(iam: &Client, spec: &IamSpec) -> Result<String, String> {
    let wanted = spec.policy_document();
    let created = iam
        .create_policy()
        .policy_name(&spec.policy_name)
        .policy_document(wanted.to_string())
        .description(format!(
            "rds-db:connect as {} (pg-iam-proxy setup iam)",
            spec.user
        ))
        .send()
        .await;
    match created {
        Ok(_) => return Ok(format!("created policy {}", spec.policy_arn())),
        Err(e) if e.code() == Some("EntityAlreadyExists") => {}
        Err(e) => return Err(aws_error("CreatePolicy", &e)),
    }
    let arn = spec.policy_arn();
    let policy = iam
        .get_policy()
        .policy_arn(&arn)
        .send()
        .await
        .map_err(|e| aws_error("GetPolicy", &e))?;
    let version = policy
        .policy()
        .and_then(|p| p.default_version_id())
        .unwrap_or("v1")
        .to_owned();
    let current = iam
        .get_policy_version()
        .policy_arn(&arn)
        .version_id(&version)
        .send()
        .await
        .map_err(|e| aws_error("GetPolicyVersion", &e))?;
    let document = current
        .policy_version()
        .and_then(|v| v.document())
        .and_then(parse_document);
    if document.as_ref() == Some(&wanted) {
        return Ok(format!(
            "policy {arn} already exists with the same document"
        ));
    }
    iam.create_policy_version()
        .policy_arn(&arn)
        .policy_document(wanted.to_string())
        .set_as_default(true)
        .send()
        .await
        .map_err(|e| aws_error("CreatePolicyVersion", &e))?;
    Ok(format!("updated policy {arn} to the wanted document"))
}

async fn ensure_role(iam: &Client, spec: &IamSpec) -> Result<String, String> {
    let wanted = spec.trust_document();
    let created = iam
        .create_role()
        .role_name(&spec.role_name)
        .assume_role_policy_document(wanted.to_string())
        .description(format!(
            "Log in to the database as {} (pg-iam-proxy setup iam)",
            spec.user
        ))
        .send()
        .await;
    match created {
        Ok(_) => return Ok(format!("created role {}", spec.role_arn())),
        Err(e) if e.code() == Some("EntityAlreadyExists") => {}
        Err(e) => return Err(aws_error("CreateRole", &e)),
    }
    let role = iam
        .get_role()
        .role_name(&spec.role_name)
        .send()
        .await
        .map_err(|e| aws_error("GetRole", &e))?;
    let trust = role
        .role()
        .and_then(|r| r.assume_role_policy_document())
        .and_then(parse_document);
    if trust.as_ref() == Some(&wanted) {
        return Ok(format!(
            "role {} already exists with the same trust policy",
            spec.role_arn()
        ));
    }
    iam.update_assume_role_policy()
        .role_name(&spec.role_name)
        .policy_document(wanted.to_string())
        .send()
        .await
        .map_err(|e| aws_error("UpdateAssumeRolePolicy", &e))?;
    Ok(format!(
        "updated the trust policy of role {}",
        spec.role_arn()
    ))
}

/// Detaches and deletes the role and the policy (the lab's clean-up).
pub async fn delete(sdk: &SdkConfig, spec: &IamSpec) -> Result<Vec<String>, String> {
    let iam = Client::new(sdk);
    let arn = spec.policy_arn();
    let mut report = Vec::new();
    let gone = |e: &dyn ProvideErrorMetadata| e.code() == Some("NoSuchEntity");
    match iam
        .detach_role_policy()
        .role_name(&spec.role_name)
        .policy_arn(&arn)
        .send()
        .await
    {
        Ok(_) => report.push(format!(
            "detached policy {} from role {}",
            spec.policy_name, spec.role_name
        )),
        Err(e) if gone(&e) => {}
        Err(e) => return Err(aws_error("DetachRolePolicy", &e)),
    }
    match iam.delete_role().role_name(&spec.role_name).send().await {
        Ok(_) => report.push(format!("deleted role {}", spec.role_arn())),
        Err(e) if gone(&e) => report.push(format!("role {} does not exist", spec.role_name)),
        Err(e) => return Err(aws_error("DeleteRole", &e)),
    }
    match iam.list_policy_versions().policy_arn(&arn).send().await {
        Ok(versions) => {
            for v in versions
                .versions()
                .iter()
                .filter(|v| !v.is_default_version())
            {
                let id = v.version_id().unwrap_or_default();
                iam.delete_policy_version()
                    .policy_arn(&arn)
                    .version_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("DeletePolicyVersion", &e))?;
            }
        }
        Err(e) if gone(&e) => {}
        Err(e) => return Err(aws_error("ListPolicyVersions", &e)),
    }
    match iam.delete_policy().policy_arn(&arn).send().await {
        Ok(_) => report.push(format!("deleted policy {arn}")),
        Err(e) if gone(&e) => report.push(format!("policy {arn} does not exist")),
        Err(e) => return Err(aws_error("DeletePolicy", &e)),
    }
    Ok(report)
}
