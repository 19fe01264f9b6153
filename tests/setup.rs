//! `setup db-user` against the stand-in, `setup iam` and `whoami` against moto's IAM/STS.

mod support;

use std::process::{Command, Stdio};

use support::running::BIN;
use support::{free_port, pg, run_joined, ProxySpec, StandIn};

fn db_user(si: &StandIn, user: &str, extra: &[&str]) -> (bool, String) {
    run_joined(
        Command::new(BIN)
            .args(["setup", "db-user", "--host", "localhost", "--port"])
            .arg(si.info.port.to_string())
            .args([
                "--master-user",
                &si.info.master_user,
                "--user",
                user,
                "--database",
                "labdb",
                "--ca-file",
            ])
            .arg(&si.info.ca_file)
            .args(extra)
            .env("PGPASSWORD", &si.info.master_password),
    )
}

/// psql as the master user over verified TLS.
fn master_sql(si: &StandIn, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(format!(
            "host=localhost port={} user={} dbname=labdb sslmode=verify-full sslrootcert={}",
            si.info.port,
            si.info.master_user,
            si.info.ca_file.display()
        ))
        .env("PGPASSWORD", &si.info.master_password)
        .stdin(Stdio::null())
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How many roles have exactly this name (quoted as a SQL literal).
fn role_count(si: &StandIn, name: &str) -> u32 {
    let literal = name.replace('\'', "''");
    master_sql(
        si,
        &format!("select count(*) from pg_roles where rolname = '{literal}'"),
    )
    .parse()
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_user_create_rerun_login_drop() {
    let si = StandIn::start(false);
    let (ok, text) = db_user(&si, "app_reader", &[]);
    assert!(ok, "{text}");
    for line in [
        "created role \"app_reader\" WITH LOGIN",
        "granted rds_iam to \"app_reader\"",
        "granted CONNECT on database \"labdb\" to \"app_reader\"",
        "\"app_reader\": member of {rds_iam}",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    // Again: everything exists, nothing changes.
    let (ok, again) = db_user(&si, "app_reader", &[]);
    assert!(ok, "{again}");
    assert!(
        !again.contains("created") && !again.contains("granted"),
        "{again}"
    );
    assert!(
        again.contains("already exists") && again.contains("already a member of rds_iam"),
        "{again}"
    );
    // The new user logs in through the proxy with an IAM token.
    let proxy = ProxySpec::new(&si).start().await;
    let (client, _c) = pg(proxy.addr, "app_reader", "labdb")
        .await
        .expect("login as the new user");
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "app_reader");
    drop(client);
    // An object owned by the user makes --drop refuse, clearly.
    master_sql(
        &si,
        "create table owned_by_reader(x int); alter table owned_by_reader owner to app_reader",
    );
    let (ok, text) = db_user(&si, "app_reader", &["--drop"]);
    assert!(!ok, "{text}");
    assert!(text.contains("refusing to drop \"app_reader\""), "{text}");
    master_sql(&si, "drop table owned_by_reader");
    let (ok, text) = db_user(&si, "app_reader", &["--drop"]);
    assert!(ok, "{text}");
    assert!(text.contains("dropped role \"app_reader\""), "{text}");
    assert_eq!(
        master_sql(
            &si,
            "select count(*) from pg_roles where rolname = 'app_reader'"
        ),
        "0"
    );
    let (ok, text) = db_user(&si, "app_reader", &["--drop"]);
    assert!(ok && text.contains("does not exist"), "{text}");
}

#[test]
fn db_user_names_are_quoted_not_executed() {
    let si = StandIn::start(false);
    let hostile = "x\"; DROP ROLE labadmin; --";
    let (ok, text) = db_user(&si, hostile, &[]);
    assert!(ok, "{text}");
    assert_eq!(role_count(&si, "labadmin"), 1);
    assert_eq!(
        role_count(&si, hostile),
        1,
        "the hostile name is one literal role"
    );
    let (ok, text) = db_user(&si, hostile, &["--drop"]);
    assert!(ok, "{text}");
    assert_eq!(role_count(&si, "labadmin"), 1);
    assert_eq!(role_count(&si, hostile), 0, "dropped");
}

fn aws(si: &StandIn, endpoint: &str, args: &[&str]) -> (bool, String) {
    run_joined(
        Command::new(BIN)
            .args(args)
            .envs(si.aws_env())
            .env("AWS_ENDPOINT_URL", endpoint),
    )
}

/// What moto holds, read with boto3 (independent of the proxy's code).
fn moto_state(endpoint: &str) -> serde_json::Value {
    let script = r#"
import boto3, json, sys
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="x", aws_secret_access_key="x")
out = {}
arn = "arn:aws:iam::123456789012:policy/rdsa-iam-dbuser-policy"
try:
    p = iam.get_policy(PolicyArn=arn)["Policy"]
    out["policy"] = iam.get_policy_version(PolicyArn=arn, VersionId=p["DefaultVersionId"])["PolicyVersion"]["Document"]
except iam.exceptions.NoSuchEntityException:
    out["policy"] = None
try:
    out["trust"] = iam.get_role(RoleName="rdsa-iam-dbuser-role")["Role"]["AssumeRolePolicyDocument"]
    out["attached"] = [a["PolicyArn"] for a in iam.list_attached_role_policies(RoleName="rdsa-iam-dbuser-role")["AttachedPolicies"]]
except iam.exceptions.NoSuchEntityException:
    out["trust"] = None
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script, endpoint])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn setup_iam_and_whoami_against_moto() {
    let si = StandIn::start(true);
    let endpoint = si.info.sts_endpoint.clone().expect("moto");
    let (ok, text) = aws(&si, &endpoint, &["whoami"]);
    assert!(ok, "{text}");
    assert!(text.contains("account: 123456789012"), "{text}");
    assert!(!text.contains(&si.info.secret_access_key));
    let (ok, text) = aws(
        &si,
        &endpoint,
        &[
            "whoami",
            "--role-arn",
            "arn:aws:iam::123456789012:role/some-role",
        ],
    );
    assert!(ok && text.contains("assumed-role/some-role"), "{text}");

    let base = [
        "setup",
        "iam",
        "--account",
        "123456789012",
        "--resource-id",
        "cluster-ABCDEFGHIJKL",
        "--region",
        "us-east-1",
    ];
    let want_policy = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Action": "rds-db:connect",
        "Resource": "arn:aws:rds-db:us-east-1:123456789012:dbuser:cluster-ABCDEFGHIJKL/iam_dbuser"}]});
    let want_trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]});

    // --print calls nothing and shows exactly these documents.
    let (ok, text) = aws(&si, &endpoint, &[&base[..], &["--print"]].concat());
    assert!(ok, "{text}");
    let printed: serde_json::Value = serde_json::from_str(&text).expect("--print is JSON");
    assert_eq!(printed["policy_document"], want_policy);
    assert_eq!(printed["trust_policy_document"], want_trust);
    assert_eq!(
        printed["role_arn"],
        "arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role"
    );
    assert_eq!(moto_state(&endpoint)["policy"], serde_json::Value::Null);

    let (ok, text) = aws(&si, &endpoint, &base);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "role ARN (use with --role-arn): arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role"
        ),
        "{text}"
    );
    let state = moto_state(&endpoint);
    assert_eq!(state["policy"], want_policy);
    assert_eq!(state["trust"], want_trust);
    assert_eq!(
        state["attached"],
        serde_json::json!(["arn:aws:iam::123456789012:policy/rdsa-iam-dbuser-policy"])
    );

    let (ok, text) = aws(&si, &endpoint, &base);
    assert!(ok, "{text}");
    assert!(
        text.contains("already exists with the same document") && text.contains("already attached"),
        "{text}"
    );

    let (ok, text) = aws(&si, &endpoint, &[&base[..], &["--delete"]].concat());
    assert!(ok, "{text}");
    assert!(
        text.contains("deleted role") && text.contains("deleted policy"),
        "{text}"
    );
    let state = moto_state(&endpoint);
    assert!(
        state["policy"].is_null() && state["trust"].is_null(),
        "{state}"
    );
    let (ok, text) = aws(&si, &endpoint, &[&base[..], &["--delete"]].concat());
    assert!(ok && text.contains("does not exist"), "{text}");

    // AWS unreachable: a clear error and a non-zero exit.
    let down = format!("http://127.0.0.1:{}", free_port());
    let (ok, text) = aws(&si, &down, &base);
    assert!(!ok);
    assert!(text.contains("CreatePolicy failed"), "{text}");
}
