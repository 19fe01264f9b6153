//! Real drivers other than libpq-based ones through the proxy: node-postgres (`pg`, installed
//! by scripts/install-test-deps into tests/drivers/node/node_modules) sees the server's real
//! backend pid, so its "ignore my own NOTIFY" idiom and a cancel by that pid work.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use support::{repo, ProxySpec, StandIn};

/// The node-postgres package directory, or a panic saying how to install it.
fn node_dir() -> PathBuf {
    let dir = repo().join("tests/drivers/node");
    let installed = dir.join("node_modules/pg/package.json");
    assert!(
        installed.exists(),
        "node-postgres is not installed at {}: run scripts/install-test-deps",
        installed.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_sees_the_real_backend_pid() {
    let dir = node_dir();
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let child = tokio::process::Command::new("node")
        .arg(dir.join("backend_pid.js"))
        .current_dir(&dir)
        .env("PGHOST", proxy.addr.ip().to_string())
        .env("PGPORT", proxy.addr.port().to_string())
        .env("PGUSER", &si.info.iam_user)
        .env("PGDATABASE", &si.info.database)
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): run scripts/install-test-deps"));
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the node script finished")
        .expect("node output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    println!("{r}");
    assert!(r["processID"].as_i64().expect("processID") > 0, "{r}");
    assert_eq!(r["processID"], r["backendPid"], "client.processID: {r}");
    assert_eq!(r["notifyProcessId"], r["processID"], "msg.processId: {r}");
    assert_eq!(r["notifyPayload"], "to self", "{r}");
    assert_eq!(r["own"], true, "the ignore-my-own-NOTIFY idiom: {r}");
    assert_eq!(r["cancelSent"], true, "{r}");
    assert_eq!(r["cancelCode"], "57014", "query_canceled: {r}");
    assert_eq!(r["afterCancel"], 1, "{r}");
}
