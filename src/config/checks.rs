//! Checks and small conversions of [`super::build`]: id lists, the Unix socket's mode,
//! listeners that must be unique, and who may listen beyond loopback.

use super::{ConfigError, IdSpec, ProxySettings, Target};

/// A list of ids from flags/env, else the file's, as text.
pub(super) fn ids(cli: &Option<Vec<IdSpec>>, file: &Option<Vec<IdSpec>>) -> Vec<String> {
    let list = cli.as_ref().or(file.as_ref());
    list.map(|l| l.iter().map(|i| i.0.clone()).collect())
        .unwrap_or_default()
}

/// The Unix socket's mode: given in octal (at most 0777), else 0600, or 0660 with a group.
pub(super) fn socket_mode(given: Option<&str>, group: &Option<String>) -> Result<u32, ConfigError> {
    let Some(text) = given else {
        return Ok(if group.is_some() { 0o660 } else { 0o600 });
    };
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(ConfigError::Invalid(format!(
            "unix_socket_mode {text} is not a permission mode in octal (such as 0660)"
        ))),
    }
}

pub(super) fn check_unique_listeners(targets: &[Target]) -> Result<(), ConfigError> {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[i + 1..] {
            if a.listen == b.listen && a.listen.port() != 0 {
                return Err(ConfigError::Invalid(format!(
                    "targets {} and {} both listen on {}",
                    a.name, b.name, a.listen
                )));
            }
        }
    }
    Ok(())
}

/// Every client of a target logs in as its IAM database user, so a listener the network
/// can reach needs the user's explicit consent, TLS and a client authentication.
pub(super) fn check_local_listeners(
    targets: &[Target],
    proxy: &ProxySettings,
) -> Result<(), ConfigError> {
    let Some(t) = targets
        .iter()
        .find(|t| !t.listen.ip().to_canonical().is_loopback())
    else {
        return Ok(());
    };
    let fix = if !proxy.allow_remote_clients {
        "Listen on 127.0.0.1 (or a Unix socket), or add --allow-remote-clients"
    } else if proxy.client_tls_cert.is_none()
        || (proxy.client_auth_file.is_none() && proxy.client_ca_file.is_none())
    {
        "Remote clients must use TLS and authenticate: add --client-tls-cert, --client-tls-key \
         and --client-auth-file (SCRAM-SHA-256 verifiers; `pg-iam-proxy scram-verifier` prints one) \
         or --client-ca-file (client certificates)"
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid(format!(
        "target {} listens on {}, which clients on the network can reach, and they would use the \
         database as its IAM user. {fix}",
        t.name, t.listen
    )))
}
