//! Which AWS region to sign for: an explicit value, else the AWS SDK's configured region,
//! else one inferred from an RDS endpoint name (`*.<region>.rds.amazonaws.com[.cn]`).
//! When none applies the caller gets an error; a region is never guessed.

/// No region could be determined for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no AWS region for {host}: pass --region (or set region in the config file or AWS_REGION); \
     it can only be inferred from endpoints like <name>.<region>.rds.amazonaws.com"
)]
pub struct RegionError {
    host: String,
}

/// Is `s` shaped like an AWS region name (`us-east-1`, `cn-north-1`, `us-gov-west-1`)?
fn looks_like_region(s: &str) -> bool {
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let Some((last, middle)) = rest.split_last() else {
        return false;
    };
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// Infers the region from an RDS endpoint host name, if it has the standard shape.
pub fn infer_region(host: &str) -> Option<&str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let stem = host
        .strip_suffix(".rds.amazonaws.com")
        .or_else(|| host.strip_suffix(".rds.amazonaws.com.cn"))?;
    let (_, region) = stem.rsplit_once('.')?;
    looks_like_region(region).then_some(region)
}

/// The ARN partition of a region (`aws`, `aws-cn` or `aws-us-gov`).
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// Resolves the region in order: explicit value, SDK region, inference from `host`.
pub fn resolve_region(
    explicit: Option<&str>,
    sdk_region: Option<&str>,
    host: &str,
) -> Result<String, RegionError> {
    explicit
        .or(sdk_region)
        .or_else(|| infer_region(host))
        .map(str::to_owned)
        .ok_or_else(|| RegionError {
            host: host.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_standard_and_china_endpoints() {
        let cases = [
            (
                "mydb.cluster-c1a2b3.us-east-1.rds.amazonaws.com",
                "us-east-1",
            ),
            (
                "mydb.cluster-ro-c1a2b3.eu-west-2.rds.amazonaws.com",
                "eu-west-2",
            ),
            (
                "inst-1.abcdefgh.ap-southeast-1.rds.amazonaws.com.",
                "ap-southeast-1",
            ),
            (
                "db.cluster-abc.cn-north-1.rds.amazonaws.com.cn",
                "cn-north-1",
            ),
            (
                "db.cluster-abc.us-gov-west-1.rds.amazonaws.com",
                "us-gov-west-1",
            ),
        ];
        for (host, region) in cases {
            assert_eq!(infer_region(host), Some(region), "{host}");
        }
    }

    #[test]
    fn refuses_to_guess_for_other_hosts() {
        for host in [
            "localhost",
            "127.0.0.1",
            "db.example.com",
            "rds.amazonaws.com",
            "x.rds.amazonaws.com",
            "x.notaregion.rds.amazonaws.com",
            "x.us-east.rds.amazonaws.com",
            "x.us-east-1.rds.amazonaws.com.evil.com",
            "x.US-EAST-1.rds.amazonaws.com",
        ] {
            assert_eq!(infer_region(host), None, "{host}");
        }
    }

    #[test]
    fn explicit_beats_sdk_beats_inference() {
        let host = "db.cluster-x.eu-west-1.rds.amazonaws.com";
        assert_eq!(
            resolve_region(Some("us-west-2"), Some("ap-south-1"), host).as_deref(),
            Ok("us-west-2")
        );
        assert_eq!(
            resolve_region(None, Some("ap-south-1"), host).as_deref(),
            Ok("ap-south-1")
        );
        assert_eq!(resolve_region(None, None, host).as_deref(), Ok("eu-west-1"));
        let err = resolve_region(None, None, "localhost").expect_err("no region");
        assert!(err.to_string().contains("--region"), "{err}");
    }
}
