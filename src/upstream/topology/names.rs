//! Aurora endpoint names: which role a target's host name asks for (the cluster endpoint
//! `<name>.cluster-<id>.<region>.rds.amazonaws.com` is the writer, `<name>.cluster-ro-<id>...`
//! the readers), and the instance endpoints, from a host pattern whose `?` stands for the
//! instance identifier (the AWS JDBC Wrapper's `clusterInstanceHostPattern`). By default the
//! pattern is derived from the cluster endpoint: `?.<id>.<region>.rds.amazonaws.com`.

/// What a target on a cluster endpoint connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The cluster (writer) endpoint: new connections go to the writer.
    Writer,
    /// The reader endpoint (`cluster-ro-`): new connections are spread over the readers.
    Reader,
}

/// An instance host pattern with exactly one `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    before: String,
    after: String,
}

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --instance-host-pattern {0:?}: it must contain exactly one '?' (the instance identifier), e.g. ?.c1a2b3d4e5f6.us-east-1.rds.amazonaws.com")]
pub struct PatternError(pub String);

impl HostPattern {
    /// Parses a pattern such as `?.abc.us-east-1.rds.amazonaws.com`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let (before, after) = text
            .split_once('?')
            .filter(|(_, after)| !after.contains('?'))
            .ok_or_else(|| PatternError(text.to_owned()))?;
        if text.chars().any(char::is_whitespace) || (before.is_empty() && after.is_empty()) {
            return Err(PatternError(text.to_owned()));
        }
        Ok(Self {
            before: before.to_owned(),
            after: after.to_owned(),
        })
    }

    /// The instance endpoint of `instance`.
    pub fn host(&self, instance: &str) -> String {
        format!("{}{instance}{}", self.before, self.after)
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}?{}", self.before, self.after)
    }
}

/// The role and default pattern of a cluster or reader endpoint, or `None` for any other
/// host (an instance endpoint, plain RDS, another PostgreSQL).
pub fn cluster_endpoint(host: &str) -> Option<(Role, HostPattern)> {
    let host = host.to_ascii_lowercase();
    let (_name, rest) = host.split_once('.')?;
    let (role, id_and_domain) = if let Some(r) = rest.strip_prefix("cluster-ro-") {
        (Role::Reader, r)
    } else if let Some(r) = rest.strip_prefix("cluster-") {
        (Role::Writer, r)
    } else {
        return None;
    };
    let rds = id_and_domain.contains(".rds.amazonaws.com");
    (rds && !id_and_domain.starts_with('.')).then(|| {
        let pattern = HostPattern {
            before: String::new(),
            after: format!(".{id_and_domain}"),
        };
        (role, pattern)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_and_reader_endpoints_give_a_role_and_the_instance_pattern() {
        let (role, p) = cluster_endpoint("orders.cluster-c1a2b3d4e5f6.us-east-1.rds.amazonaws.com")
            .expect("a cluster endpoint");
        assert_eq!(role, Role::Writer);
        assert_eq!(p.to_string(), "?.c1a2b3d4e5f6.us-east-1.rds.amazonaws.com");
        assert_eq!(
            p.host("orders-1"),
            "orders-1.c1a2b3d4e5f6.us-east-1.rds.amazonaws.com"
        );
        let (role, p) =
            cluster_endpoint("orders.cluster-ro-c1a2b3d4e5f6.cn-north-1.rds.amazonaws.com.cn")
                .expect("a parsed name");
        assert_eq!(role, Role::Reader);
        assert_eq!(
            p.to_string(),
            "?.c1a2b3d4e5f6.cn-north-1.rds.amazonaws.com.cn"
        );
    }

    #[test]
    fn other_hosts_are_not_cluster_endpoints() {
        for host in [
            "orders-1.c1a2b3d4e5f6.us-east-1.rds.amazonaws.com",
            "localhost",
            "db.cluster-x.example.com",
            "cluster-abc",
        ] {
            assert_eq!(cluster_endpoint(host), None, "{host}");
        }
    }

    #[test]
    fn a_pattern_needs_exactly_one_question_mark() {
        assert_eq!(
            HostPattern::parse("?.x.example")
                .expect("a pattern")
                .host("a"),
            "a.x.example"
        );
        assert_eq!(
            HostPattern::parse("db-?:x").expect("a pattern").host("1"),
            "db-1:x"
        );
        for bad in ["x.example", "??.x", "?.x.?", "?", "? .x"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
