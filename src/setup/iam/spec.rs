//! What `setup iam` creates, as pure data: the names and ARNs of the policy and role, the
//! `rds-db:connect` policy document and the role's trust document, in the region's partition.

use serde_json::{json, Value};

use crate::iam::partition;

/// What to create or delete.
#[derive(Debug, Clone)]
pub struct IamSpec {
    /// AWS account ID.
    pub account: String,
    /// The cluster's (or instance's) resource ID, e.g. `cluster-ABCDEFGHIJKL`.
    pub resource_id: String,
    /// Database user.
    pub user: String,
    /// Region of the database.
    pub region: String,
    /// Role name.
    pub role_name: String,
    /// Policy name.
    pub policy_name: String,
    /// Principal ARN allowed to assume the role (default: the account root).
    pub trust: Option<String>,
}

impl IamSpec {
    fn arn(&self, kind: &str, name: &str) -> String {
        format!(
            "arn:{}:iam::{}:{kind}/{name}",
            partition(&self.region),
            self.account
        )
    }

    /// The policy's ARN.
    pub fn policy_arn(&self) -> String {
        self.arn("policy", &self.policy_name)
    }

    /// The role's ARN (what `--role-arn` takes).
    pub fn role_arn(&self) -> String {
        self.arn("role", &self.role_name)
    }

    /// The `rds-db:connect` policy document.
    pub fn policy_document(&self) -> Value {
        let resource = format!(
            "arn:{}:rds-db:{}:{}:dbuser:{}/{}",
            partition(&self.region),
            self.region,
            self.account,
            self.resource_id,
            self.user
        );
        json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "rds-db:connect", "Resource": resource}]
        })
    }

    /// The role's trust policy document.
    pub fn trust_document(&self) -> Value {
        let principal = self.trust.clone().unwrap_or_else(|| {
            format!("arn:{}:iam::{}:root", partition(&self.region), self.account)
        });
        json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"}]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(region: &str) -> IamSpec {
        IamSpec {
            account: "123456789012".into(),
            resource_id: "cluster-ABCDEFGHIJKL".into(),
            user: "iam_dbuser".into(),
            region: region.into(),
            role_name: "rdsa-iam-dbuser-role".into(),
            policy_name: "rdsa-iam-dbuser-policy".into(),
            trust: None,
        }
    }

    #[test]
    fn documents_name_the_db_user_resource_and_the_account_root() {
        let s = spec("us-east-1");
        assert_eq!(
            s.policy_document()["Statement"][0]["Resource"],
            "arn:aws:rds-db:us-east-1:123456789012:dbuser:cluster-ABCDEFGHIJKL/iam_dbuser"
        );
        assert_eq!(
            s.trust_document()["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::123456789012:root"
        );
        assert_eq!(
            s.role_arn(),
            "arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role"
        );
        let cn = spec("cn-north-1");
        assert_eq!(
            cn.policy_arn(),
            "arn:aws-cn:iam::123456789012:policy/rdsa-iam-dbuser-policy"
        );
    }
}
