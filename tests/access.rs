//! Who may use the proxy, with a second real OS user (created once, idempotently) running
//! real clients (psql, and a raw startup packet from Python for the exact ErrorResponse):
//! refused by default over loopback TCP and the Unix socket, admitted with `--allow-uid`,
//! only as the database users its rule allows; the Unix socket is owner-only; another user's
//! `POST /quitquitquit` is refused; a proxy running as that user admits it and root only;
//! the audit log has one line per session start and end, and no secret.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use support::running::Running;
use support::{pg, ProxySpec, StandIn};

const OTHER: &str = "pgiam_other";
const THIRD: &str = "pgiam_third";

/// The uid and gid of OS user `name`, created if missing (idempotent).
fn os_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, name]).output().expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .expect("useradd");
        assert!(status.success() || id("-u").is_some(), "useradd {name}");
    }
    (id("-u").expect("uid"), id("-g").expect("gid"))
}

/// The second OS user's uid and gid (created on first use).
fn other() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| os_user(OTHER))
}

/// `program args` run as the second user, with no supplementary groups.
fn as_other(program: &str, args: &[&str]) -> Command {
    as_user(other(), program, args)
}

/// `program args` run as `(uid, gid)`, with no supplementary groups.
fn as_user((uid, gid): (u32, u32), program: &str, args: &[&str]) -> Command {
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &uid, "--regid", &gid, "--clear-groups", "--"])
        .arg(program)
        .args(args)
        .env("HOME", "/tmp")
        .current_dir("/tmp")
        .stdin(Stdio::null());
    cmd
}

/// A raw startup packet from the second user; the proxy's first answer as JSON.
fn hello_as_other(host: &str, port: u16, user: &str, db: &str) -> serde_json::Value {
    hello_as(other(), host, port, user, db)
}

/// A raw startup packet from `(uid, gid)`; the proxy's first answer as JSON.
fn hello_as(ids: (u32, u32), host: &str, port: u16, user: &str, db: &str) -> serde_json::Value {
    let script = support::repo().join("tests/support/pg_hello.py");
    let script = script.to_str().expect("path");
    let port = port.to_string();
    let out = as_user(ids, "/usr/bin/python3", &[script, host, &port, user, db])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)))
}

/// psql from the second user: (success, stdout + stderr).
fn psql_as_other(host: &str, port: u16, user: &str, db: &str) -> (bool, String) {
    let port = port.to_string();
    let out = as_other(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-h",
            host,
            "-p",
            &port,
            "-U",
            user,
            "-d",
            db,
            "-c",
            "select current_user",
        ],
    )
    .env("PGSSLMODE", "disable")
    .env("PGCONNECT_TIMEOUT", "20")
    .output()
    .expect("psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn error_of(answer: &serde_json::Value) -> (&str, &str, &str) {
    let e = &answer["error"];
    let s = |k: &str| e[k].as_str().unwrap_or("");
    (s("C"), s("M"), s("H"))
}

/// A directory the second user can enter.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_is_refused_by_default_and_root_still_admitted() {
    let si = StandIn::shared();
    let (uid, _) = other();
    let proxy = ProxySpec::new(si).start().await;
    let port = proxy.addr.port();
    let answer = hello_as_other("127.0.0.1", port, &si.info.iam_user, &si.info.database);
    let (code, message, hint) = error_of(&answer);
    assert_eq!(code, "28000", "{answer}");
    assert!(
        message.contains(&format!("\"{OTHER}\" (uid {uid}) may not use this proxy")),
        "{message}"
    );
    assert!(
        hint.contains(&format!("--allow-uid {uid} or --allow-uid {OTHER}")),
        "{hint}"
    );
    let (ok, text) = psql_as_other("127.0.0.1", port, &si.info.iam_user, &si.info.database);
    assert!(!ok && text.contains("may not use this proxy"), "{text}");
    let (client, _task) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("root over loopback is admitted");
    let row = client
        .query_one("select current_user", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), si.info.iam_user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_user_gets_only_the_database_users_its_rule_allows() {
    let si = StandIn::shared();
    let (iam, db) = (&si.info.iam_user, &si.info.database);
    other(); // the user exists before the proxy resolves its name
    let mut spec = ProxySpec::new(si);
    spec.proxy.allow_uid = Some(vec![OTHER.into()]);
    let by_name = spec.start().await;
    // Without a map: only the database user named like the OS user.
    let answer = hello_as_other("127.0.0.1", by_name.addr.port(), iam, db);
    let (code, message, hint) = error_of(&answer);
    assert_eq!(code, "28000", "{answer}");
    assert!(
        message.contains(&format!("may not log in as database user \"{iam}\"")),
        "{message}"
    );
    assert!(
        hint.contains(&format!("allowed database users: {OTHER}")),
        "{hint}"
    );

    let dir = open_dir();
    let map = dir.path().join("users.map");
    std::fs::write(&map, format!("# test map\n{OTHER}  {iam}\n")).expect("map");
    let mut spec = ProxySpec::new(si);
    spec.proxy.allow_uid = Some(vec![other().0.to_string().as_str().into()]);
    spec.target.user_map = Some(map);
    spec.target.unix_socket = Some(dir.path().to_owned());
    spec.target.unix_socket_mode = Some("0666".into());
    let mapped = spec.start().await;
    let port = mapped.addr.port();
    let (ok, text) = psql_as_other("127.0.0.1", port, iam, db);
    assert!(ok && text.trim() == iam.as_str(), "{text}");
    let socket_dir = dir.path().to_str().expect("path");
    let (ok, text) = psql_as_other(socket_dir, port, iam, db);
    assert!(
        ok && text.trim() == iam.as_str(),
        "over the Unix socket: {text}"
    );
    let answer = hello_as_other("127.0.0.1", port, "postgres", db);
    let (code, message, hint) = error_of(&answer);
    assert_eq!(code, "28000", "{answer}");
    assert!(
        message.contains("may not log in as database user \"postgres\""),
        "{message}"
    );
    assert!(
        hint.contains(&format!("allowed database users: {iam}")),
        "{hint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_owner_only_and_checks_the_peer_uid() {
    let si = StandIn::shared();
    let (iam, db) = (&si.info.iam_user, &si.info.database);
    let dir = open_dir();
    let mut spec = ProxySpec::new(si);
    spec.target.unix_socket = Some(dir.path().to_owned());
    let private = spec.start().await;
    let path = private.unix_socket.clone().expect("socket");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let answer = hello_as_other(path.to_str().expect("path"), 0, iam, db);
    assert_eq!(answer["connect_error"], libc::EACCES, "{answer}");
    let (ok, text, err) = support::psql(
        dir.path().to_str().expect("dir"),
        private.addr.port(),
        iam,
        db,
        &["-c", "select 1"],
    );
    assert!(ok && text.trim() == "1", "root over the socket: {err}");

    // A socket anyone may open: the peer's uid (SO_PEERCRED) still decides.
    let wide = open_dir();
    let mut spec = ProxySpec::new(si);
    spec.target.unix_socket = Some(wide.path().to_owned());
    spec.target.unix_socket_mode = Some("0666".into());
    let open = spec.start().await;
    let path = open.unix_socket.clone().expect("socket");
    let answer = hello_as_other(path.to_str().expect("path"), 0, iam, db);
    let (code, message, _) = error_of(&answer);
    assert_eq!(code, "28000", "{answer}");
    assert!(
        message.contains(&format!("\"{OTHER}\" (uid {})", other().0)),
        "{message}"
    );
    assert!(Path::new(&path).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_from_another_user_is_forbidden() {
    let si = StandIn::shared();
    let http = support::metrics::http_addr();
    let mut spec = ProxySpec::new(si);
    spec.proxy.http_addr = Some(http);
    spec.proxy.quitquitquit = Some(true);
    let proxy = spec.start().await;
    support::http_until(http, "/startup", 200).await;
    let url = format!("http://{http}/quitquitquit");
    let curl = |method: &str, url: &str| {
        let out = as_other(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                url,
            ],
        )
        .output()
        .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("POST", &url), "403");
    assert_eq!(curl("GET", &format!("http://{http}/metrics")), "200");
    assert_eq!(
        support::http(http, "GET", "/readiness").await.0,
        200,
        "still running"
    );
    assert_eq!(
        support::http(http, "POST", "/quitquitquit").await.0,
        200,
        "root may"
    );
    let report = tokio::time::timeout(std::time::Duration::from_secs(20), proxy.task)
        .await
        .expect("stops")
        .expect("task");
    assert_eq!(report.cut_sessions, 0);
}

#[test]
fn audit_lines_for_each_session_and_no_secret() {
    let si = StandIn::shared();
    let mut proxy = Running::start(si, &["--pool-mode", "none"]);
    let addr = proxy.addr();
    let (ok, _, err) = support::psql(
        "127.0.0.1",
        addr.port(),
        &si.info.iam_user,
        &si.info.database,
        &["-c", "select repeat('x', 1000)"],
    );
    assert!(ok, "{err}");
    let end = proxy.wait_for("\"session_end\"");
    let v: serde_json::Value = serde_json::from_str(&end).expect("json");
    let f = &v["fields"];
    assert_eq!(v["target"], "audit", "{end}");
    assert_eq!(
        (f["uid"].as_u64(), f["os_user"].as_str()),
        (Some(0), Some("root")),
        "{end}"
    );
    assert_eq!(f["db_user"], si.info.iam_user.as_str(), "{end}");
    assert_eq!(f["database"], si.info.database.as_str(), "{end}");
    assert!(
        f["bytes_to_client"].as_u64().expect("bytes") > 1000,
        "{end}"
    );
    assert!(f["bytes_to_server"].as_u64().expect("bytes") > 0, "{end}");
    assert!(f["duration_ms"].as_u64().is_some(), "{end}");
    let logs = proxy.logs();
    assert_eq!(logs.matches("\"session_start\"").count(), 1, "{logs}");
    assert!(
        !logs.contains(&si.info.secret_access_key),
        "secret key in the logs"
    );
    assert!(!logs.contains("X-Amz-Signature"), "a token in the logs");
}

/// The proxy binary itself running as the second user: its own user may use any database
/// user, root is admitted, a third user is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_run_by_another_user_admits_that_user_and_root_only() {
    let si = StandIn::shared();
    let (iam, db) = (&si.info.iam_user, &si.info.database);
    let third = os_user(THIRD);
    let dir = open_dir();
    let ca = dir.path().join("ca.pem");
    std::fs::copy(&si.info.ca_file, &ca).expect("copy CA");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let port = si.info.port.to_string();
    let ca = ca.to_str().expect("path");
    let mut cmd = as_other(
        support::running::BIN,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--host",
            "localhost",
            "--port",
            &port,
        ],
    );
    cmd.args(["--ca-file", ca, "--log-format", "json"])
        .envs(si.aws_env())
        .env("PG_IAM_PROXY_LOG", "info");
    let mut proxy = Running::spawn(cmd);
    let addr = proxy.addr();
    let (ok, text) = psql_as_other("127.0.0.1", addr.port(), iam, db);
    assert!(
        ok && text.trim() == iam.as_str(),
        "the proxy's own user: {text}"
    );
    let (client, _task) = pg(addr, iam, db).await.expect("root is admitted");
    client.simple_query("select 1").await.expect("query");
    let answer = hello_as(third, "127.0.0.1", addr.port(), iam, db);
    let (code, message, hint) = error_of(&answer);
    assert_eq!(code, "28000", "{answer}");
    let who = format!("\"{THIRD}\" (uid {}) may not use this proxy", third.0);
    assert!(message.contains(&who), "{message}");
    assert!(
        hint.contains(&format!("its own user (uid {})", other().0)),
        "{hint}"
    );
    let refused = proxy.wait_for("client refused");
    assert!(refused.contains(THIRD), "{refused}");
}
