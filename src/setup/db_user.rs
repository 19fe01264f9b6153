//! `setup db-user`: connects as the master user over verified TLS (tokio-postgres) and makes
//! `<user>` an IAM database user: `CREATE ROLE <user> WITH LOGIN`, `GRANT rds_iam TO <user>`,
//! and `GRANT CONNECT ON DATABASE` when asked. Idempotent: what exists is reported and left
//! alone. `--drop` reverses it. Identifiers are quoted by the server (`format('%I')`), so a
//! hostile user name is only ever a name.

use std::path::PathBuf;

use tokio_postgres::config::SslMode;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::TlsMode;
use crate::upstream::tls::client_config;

/// What to set up.
#[derive(Debug, Clone)]
pub struct DbUserSpec {
    /// Database endpoint.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Master user.
    pub master_user: String,
    /// Master password.
    pub master_password: String,
    /// The IAM database user to create.
    pub user: String,
    /// Database to grant CONNECT on (and to connect to; default `postgres`).
    pub database: Option<String>,
    /// CA file for verify-full.
    pub ca_file: Option<PathBuf>,
    /// Certificate check.
    pub tls_mode: TlsMode,
}

/// A failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

fn db_error(what: &str, e: tokio_postgres::Error) -> SetupError {
    match e.as_db_error() {
        Some(db) => SetupError(format!(
            "{what}: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        None => SetupError(format!("{what}: {e}")),
    }
}

async fn connect(spec: &DbUserSpec) -> Result<Client, SetupError> {
    let tls = client_config(spec.ca_file.as_deref(), spec.tls_mode)
        .map_err(|e| SetupError(e.to_string()))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&spec.host)
        .port(spec.port)
        .user(&spec.master_user)
        .password(&spec.master_password)
        .dbname(spec.database.as_deref().unwrap_or("postgres"))
        .application_name("pg-iam-proxy setup")
        .ssl_mode(SslMode::Require);
    let (client, connection) = config
        .connect(MakeRustlsConnect::new((*tls).clone()))
        .await
        .map_err(|e| {
            db_error(
                &format!(
                    "cannot connect to {}:{} as {}",
                    spec.host, spec.port, spec.master_user
                ),
                e,
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "setup connection ended");
        }
    });
    Ok(client)
}

async fn flag(
    client: &Client,
    sql: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<bool, SetupError> {
    let row = client
        .query_one(sql, args)
        .await
        .map_err(|e| db_error("query failed", e))?;
    Ok(row.get(0))
}

/// Runs a statement built server-side with `format()` so identifiers are quoted correctly.
async fn execute_formatted(
    client: &Client,
    template: &str,
    idents: &[&str],
) -> Result<(), SetupError> {
    let placeholders: Vec<String> = (1..=idents.len()).map(|i| format!("${i}::text")).collect();
    let sql = format!("select format('{template}', {})", placeholders.join(", "));
    let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = idents
        .iter()
        .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let statement: String = client
        .query_one(&sql, &args)
        .await
        .map_err(|e| db_error("query failed", e))?
        .get(0);
    client
        .batch_execute(&statement)
        .await
        .map_err(|e| db_error(&format!("{statement} failed"), e))
}

const ROLE_EXISTS: &str = "select exists(select 1 from pg_roles where rolname = $1)";
const IS_IAM: &str = "select exists(select 1 from pg_auth_members m \
    join pg_roles g on g.oid = m.roleid join pg_roles u on u.oid = m.member \
    where g.rolname = 'rds_iam' and u.rolname = $1)";
const HAS_CONNECT: &str = "select exists(select 1 from pg_database d, aclexplode(d.datacl) a \
    join pg_roles u on u.oid = a.grantee where d.datname = $2 and u.rolname = $1 \
    and a.privilege_type = 'CONNECT')";
const MEMBERSHIPS: &str = "select coalesce(string_agg(g.rolname, ', ' order by g.rolname), '') \
    from pg_auth_members m join pg_roles g on g.oid = m.roleid join pg_roles u on u.oid = m.member \
    where u.rolname = $1";

/// Creates the IAM database user; returns the report lines.
pub async fn create(spec: &DbUserSpec) -> Result<Vec<String>, SetupError> {
    let client = connect(spec).await?;
    let user = spec.user.as_str();
    let mut report = Vec::new();
    if !flag(&client, ROLE_EXISTS, &[&"rds_iam"]).await? {
        return Err(SetupError(
            "role rds_iam does not exist: is this an RDS or Aurora PostgreSQL database?".into(),
        ));
    }
    if flag(&client, ROLE_EXISTS, &[&user]).await? {
        report.push(format!("role {user:?} already exists"));
    } else {
        execute_formatted(&client, "CREATE ROLE %I WITH LOGIN", &[user]).await?;
        report.push(format!("created role {user:?} WITH LOGIN"));
    }
    if flag(&client, IS_IAM, &[&user]).await? {
        report.push(format!("role {user:?} is already a member of rds_iam"));
    } else {
        execute_formatted(&client, "GRANT rds_iam TO %I", &[user]).await?;
        report.push(format!("granted rds_iam to {user:?}"));
    }
    if let Some(db) = spec.database.as_deref() {
        if flag(&client, HAS_CONNECT, &[&user, &db]).await? {
            report.push(format!("{user:?} already has CONNECT on database {db:?}"));
        } else {
            execute_formatted(&client, "GRANT CONNECT ON DATABASE %I TO %I", &[db, user]).await?;
            report.push(format!("granted CONNECT on database {db:?} to {user:?}"));
        }
    }
    let row = client
        .query_one(MEMBERSHIPS, &[&user])
        .await
        .map_err(|e| db_error("query failed", e))?;
    let member_of: String = row.get(0);
    report.push(format!("{user:?}: member of {{{member_of}}}"));
    Ok(report)
}

/// Drops the IAM database user; refuses (with the server's reason) while it owns objects.
pub async fn drop(spec: &DbUserSpec) -> Result<Vec<String>, SetupError> {
    let client = connect(spec).await?;
    let user = spec.user.as_str();
    if !flag(&client, ROLE_EXISTS, &[&user]).await? {
        return Ok(vec![format!(
            "role {user:?} does not exist; nothing to drop"
        )]);
    }
    let mut report = Vec::new();
    if let Some(db) = spec.database.as_deref() {
        if flag(&client, HAS_CONNECT, &[&user, &db]).await? {
            execute_formatted(
                &client,
                "REVOKE CONNECT ON DATABASE %I FROM %I",
                &[db, user],
            )
            .await?;
            report.push(format!("revoked CONNECT on database {db:?} from {user:?}"));
        }
    }
    match execute_formatted(&client, "DROP ROLE %I", &[user]).await {
        Ok(()) => {
            report.push(format!("dropped role {user:?}"));
            Ok(report)
        }
        Err(e) => Err(SetupError(format!(
            "refusing to drop {user:?}: it still owns objects or holds privileges ({e}); \
             move or drop them first, e.g. REASSIGN OWNED BY ... TO ...; DROP OWNED BY ..."
        ))),
    }
}
