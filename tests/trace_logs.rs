//! No secret at any log level: `token`, `check --login` and `run` with an assumed role
//! (moto's STS) at TRACE write no secret key, session token or token signature to stderr.

mod support;

use std::process::{Command, Stdio};

use support::running::{Running, BIN};
use support::{pg, StandIn};

const ROLE: &str = "arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role";

/// Fails when `stderr` holds anything secret: the stand-in's secret key, STS's answer with
/// the role's secret key and session token, or a token's query (its session token and
/// signature).
fn assert_no_secrets(si: &StandIn, what: &str, stderr: &str, extra: &[&str]) {
    assert!(
        stderr.lines().count() > 20,
        "{what}: TRACE logging is on: {stderr}"
    );
    let markers = [
        si.info.secret_access_key.as_str(),
        "SecretAccessKey",
        "SessionToken",
        "X-Amz-Security-Token=",
        "X-Amz-Signature=",
        "x-amz-security-token",
    ];
    for secret in markers.iter().chain(extra) {
        assert!(
            !stderr.contains(secret),
            "{what}: {secret:?} in stderr:\n{}",
            stderr
                .lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn with_role(cmd: &mut Command, si: &StandIn) {
    cmd.envs(si.aws_env())
        .env(
            "AWS_ENDPOINT_URL_STS",
            si.info.sts_endpoint.as_deref().expect("moto"),
        )
        .env("PG_IAM_PROXY_LOG", "trace")
        .stdin(Stdio::null());
}

/// `value` of `name=value` in a token's query, percent-decoded.
fn query_value(token: &str, name: &str) -> String {
    let raw = token
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {token}"));
    percent_decode(raw)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("utf8");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

#[test]
fn token_and_check_at_trace_log_no_secret() {
    let si = StandIn::start(true);
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "--host", "localhost", "--port"])
        .arg(si.info.port.to_string())
        .args(["--user", &si.info.iam_user, "--role-arn", ROLE]);
    with_role(&mut cmd, &si);
    let out = cmd.output().expect("run token");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let token = String::from_utf8(out.stdout).expect("utf8");
    let session = query_value(token.trim(), "X-Amz-Security-Token");
    let signature = query_value(token.trim(), "X-Amz-Signature");
    assert_no_secrets(&si, "token", &stderr, &[&session, &signature]);

    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--host", "localhost", "--port"])
        .arg(si.info.port.to_string())
        .arg("--ca-file")
        .arg(&si.info.ca_file)
        .args([
            "--role-arn",
            ROLE,
            "--login",
            "--login-user",
            &si.info.iam_user,
        ])
        .args(["--database", &si.info.database]);
    with_role(&mut cmd, &si);
    let out = cmd.output().expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("login as iam_dbuser"), "{stdout}");
    assert_no_secrets(&si, "check --login", &stderr, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_trace_logs_no_secret() {
    let si = StandIn::start(true);
    let mut cmd = Running::command(&si, &["--role-arn", ROLE]);
    with_role(&mut cmd, &si);
    let mut proxy = Running::spawn(cmd);
    let addr = proxy.addr();
    let (client, _conn) = pg(addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("login through the proxy with the role's token");
    client.simple_query("select 1").await.expect("query");
    drop(client);
    proxy.signal(libc::SIGTERM);
    let (_, seen) = proxy.rest();
    assert_no_secrets(&si, "run", &seen.join("\n"), &[]);
}
