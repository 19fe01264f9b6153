//! tokio-postgres sessions for tests: a client through the proxy as the stand-in's IAM user,
//! a superuser straight to the stand-in, one-value queries, backend pids and waits on the
//! server's view of a backend.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{pg, StandIn};

/// A client through the proxy at `addr` as the stand-in's IAM user.
pub async fn connect(si: &StandIn, addr: SocketAddr) -> Client {
    pg(addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect through the proxy")
        .0
}

/// A client through the proxy naming itself `app` (as libpq's `application_name` does).
pub async fn connect_as(si: &StandIn, addr: SocketAddr, app: &str) -> Client {
    let i = &si.info;
    let conn = format!(
        "host={} port={} user={} dbname={} application_name={app} sslmode=disable \
         connect_timeout=20",
        addr.ip(),
        addr.port(),
        i.iam_user,
        i.database
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect through the proxy");
    tokio::spawn(connection);
    client
}

/// The first column of the first row of `sql`.
pub async fn one(client: &Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// The backend pid of the session `client` is on now.
pub async fn pid(client: &Client) -> String {
    one(client, "SELECT pg_backend_pid()").await
}

/// A superuser session straight to the stand-in (not through the proxy).
pub async fn admin(si: &StandIn) -> Client {
    let i = &si.info;
    let direct = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable",
        i.port, i.master_user, i.master_password, i.database
    );
    let (client, conn) = tokio_postgres::connect(&direct, tokio_postgres::NoTls)
        .await
        .expect("admin");
    tokio::spawn(conn);
    client
}

/// Waits (bounded by `within`) until `admin`'s `sql` answers `want`; `what` names the
/// condition for the failure message.
pub async fn until_one(admin: &Client, sql: &str, want: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while one(admin, sql).await != want {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until backend `pid` is gone from the server.
pub async fn backend_gone(admin: &Client, pid: &str) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    let what = format!("backend {pid} still open");
    until_one(admin, &sql, "0", Duration::from_secs(15), &what).await;
}
