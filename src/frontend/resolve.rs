//! The access settings resolved at start-up: user and group names to ids (an unknown name
//! is a start-up error, exit 2), the user map file read and parsed.

use std::sync::Arc;

use super::access::{Access, DbUserRule};
use super::auth_file::AuthFile;
use super::peer::Lookups;
use super::tls::CertStore;
use super::user_map::UserMap;
use super::users;
use crate::config::{ProxySettings, Target};

/// The process-wide admission rule from the settings.
pub fn access(settings: &ProxySettings) -> Result<Access, String> {
    let uids = settings
        .allow_uid
        .iter()
        .map(|s| users::resolve_uid(s).ok_or_else(|| format!("--allow-uid {s}: no such user")))
        .collect::<Result<Vec<_>, _>>()?;
    let gids = settings
        .allow_gid
        .iter()
        .map(|s| gid(s, "--allow-gid"))
        .collect::<Result<Vec<_>, _>>()?;
    let certs = match (&settings.client_tls_cert, &settings.client_tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(CertStore::load(cert, key)?)),
        _ => None,
    };
    Ok(Access {
        own_uid: users::own_uid(),
        uids,
        gids,
        any_local: settings.allow_any_local_user,
        lookups: Arc::new(Lookups::new()),
        tls: match &certs {
            Some(store) => Some(super::tls::server_config(
                store.clone(),
                settings.client_ca_file.as_deref(),
                settings.client_auth_file.is_some(),
            )?),
            None => None,
        },
        certs,
        client_certs: settings.client_ca_file.is_some(),
        auth_file: match &settings.client_auth_file {
            Some(path) => Some(Arc::new(AuthFile::load(path)?)),
            None => None,
        },
    })
}

/// A group name or gid, resolved; `flag` names the setting in the error.
pub fn gid(spec: &str, flag: &str) -> Result<u32, String> {
    users::resolve_gid(spec).ok_or_else(|| format!("{flag} {spec}: no such group"))
}

/// A target's database user rule.
pub fn db_user_rule(target: &Target) -> Result<DbUserRule, String> {
    if let Some(user) = &target.db_user {
        if target.user_map.is_some() {
            return Err(format!(
                "target {}: --db-user and --user-map both choose the database user; give one",
                target.name
            ));
        }
        return Ok(DbUserRule::Fixed(user.clone()));
    }
    match &target.user_map {
        Some(path) => UserMap::load(path)
            .map(|m| DbUserRule::Map(Arc::new(m)))
            .map_err(|e| e.to_string()),
        None => Ok(DbUserRule::ByName),
    }
}
