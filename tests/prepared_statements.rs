//! Transaction pooling with protocol-level named prepared statements against the real
//! stand-in: clients sharing few server connections use the same statement names for
//! different texts and each gets its own results; tokio-postgres's prepare does not pin;
//! a Parse error leaves no statement behind; Close frees the name; pgbench -M prepared;
//! `DEALLOCATE ALL` and `DISCARD ALL` forget every statement, as on the client's own backend,
//! without pinning (others' statements are prepared again on the connection); the documented
//! limit of SQL `DEALLOCATE name` of a protocol-level statement.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::metrics::{http_addr, metric_sum_until};
use support::pools::{txn_proxy, txn_proxy_http};
use support::wire::{error_field, frames_until, message, query, raw_client};
use support::{pg, StandIn};
use tokio::io::AsyncWriteExt;

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
    )
}

/// Bind of statement `name` to the unnamed portal (no parameters), Execute, Sync.
fn run(name: &str) -> Vec<u8> {
    let mut m = message(b'B', &[b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"].concat());
    m.extend(message(b'E', &[0, 0, 0, 0, 0]));
    m.extend(message(b'S', b""));
    m
}

fn close(name: &str) -> Vec<u8> {
    let mut m = message(b'C', &[b"S", name.as_bytes(), b"\0"].concat());
    m.extend(message(b'S', b""));
    m
}

/// The message types of `replies`, and the first column of the first DataRow.
fn summary(replies: &[(u8, Vec<u8>)]) -> (String, Option<String>) {
    let tags = replies.iter().map(|(t, _)| *t as char).collect();
    let value = replies.iter().find(|(t, _)| *t == b'D').map(|(_, b)| {
        let len = i32::from_be_bytes(b[2..6].try_into().expect("4 bytes")) as usize;
        String::from_utf8(b[6..6 + len].to_vec()).expect("text")
    });
    (tags, value)
}

/// The SQLSTATE of the ErrorResponse among `replies`.
fn sqlstate(replies: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = replies.iter().find(|(t, _)| *t == b'E')?;
    Some(error_field(body, b'C'))
}

/// Field `code` of the ErrorResponse among `replies`.
fn field(replies: &[(u8, Vec<u8>)], code: u8) -> Option<String> {
    let (_, body) = replies.iter().find(|(t, _)| *t == b'E')?;
    Some(error_field(body, code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_statement_names_with_different_texts() {
    let si = StandIn::shared();
    let http = http_addr();
    let proxy = txn_proxy_http(si, 2, Some(http)).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = raw_client(si, addr).await;
            let mut first = parse(
                "st",
                &format!("SELECT {i}::text || '-' || pg_backend_pid()"),
            );
            first.extend(parse("other", &format!("SELECT 'o{i}'")));
            first.extend(run("st"));
            raw.write_all(&first).await.expect("send");
            let (tags, value) = summary(&frames_until(&mut raw, b"Z").await);
            assert_eq!(tags, "112DCZ", "client {i}");
            let mut backends = std::collections::HashSet::new();
            backends.insert(value.clone());
            assert!(value.expect("a row").starts_with(&format!("{i}-")));
            for round in 0..20 {
                let name = if round % 3 == 0 { "other" } else { "st" };
                raw.write_all(&run(name)).await.expect("send");
                let (tags, value) = summary(&frames_until(&mut raw, b"Z").await);
                assert_eq!(tags, "2DCZ", "client {i} round {round}");
                let value = value.expect("a row");
                if name == "other" {
                    assert_eq!(value, format!("o{i}"), "client {i} round {round}");
                } else {
                    assert!(value.starts_with(&format!("{i}-")), "{i}: {value}");
                    backends.insert(Some(value));
                }
                tokio::task::yield_now().await;
            }
            backends.len()
        }));
    }
    let mut moved = 0;
    for t in tasks {
        moved += usize::from(t.await.expect("client") > 1);
    }
    assert!(moved > 0, "no client ever changed backends");
    // Counted once a transaction's splice ends, just after the client's ReadyForQuery.
    let reprepared = ("pg_iam_proxy_pool_prepared_statements_reprepared_total", "");
    metric_sum_until(http, reprepared, 1.0, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepare_does_not_pin() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 1).await;
    let i = &si.info;
    let (a, _) = pg(proxy.addr, &i.iam_user, &i.database).await.expect("a");
    let (b, _) = pg(proxy.addr, &i.iam_user, &i.database).await.expect("b");
    let sa = a.prepare("SELECT $1::int + 1").await.expect("prepare a");
    let sb = b.prepare("SELECT $1::int * 10").await.expect("prepare b");
    for n in 0..5i32 {
        let limit = Duration::from_secs(10);
        let ra = tokio::time::timeout(limit, a.query_one(&sa, &[&n])).await;
        let x: i32 = ra.expect("a not blocked").expect("a runs").get(0);
        assert_eq!(x, n + 1);
        let rb = tokio::time::timeout(limit, b.query_one(&sb, &[&n])).await;
        let y: i32 = rb
            .expect("b not blocked: a is not pinned")
            .expect("b runs")
            .get(0);
        assert_eq!(y, n * 10);
    }
}

/// Another client, on the pool's one server connection (so nobody is pinned), prepares
/// `st` with a text of its own and runs it.
async fn another_client(si: &'static StandIn, addr: SocketAddr) {
    let other = async {
        let mut raw = raw_client(si, addr).await;
        let mut m = parse("st", "SELECT 'other'");
        m.extend(run("st"));
        raw.write_all(&m).await.expect("send");
        summary(&frames_until(&mut raw, b"Z").await)
    };
    let got = tokio::time::timeout(Duration::from_secs(10), other).await;
    let got = got.expect("another client served: the first is not pinned");
    assert_eq!(got, ("12DCZ".into(), Some("other".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_error_leaves_no_statement() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 1).await;
    let mut raw = raw_client(si, proxy.addr).await;
    let mut bad = parse("bad", "SELEC 1");
    bad.extend(run("bad"));
    raw.write_all(&bad).await.expect("send");
    let answer = frames_until(&mut raw, b"Z").await;
    assert_eq!(summary(&answer).0, "EZ");
    assert_eq!(sqlstate(&answer).as_deref(), Some("42601"));
    another_client(si, proxy.addr).await;
    raw.write_all(&run("bad")).await.expect("send");
    let answer = frames_until(&mut raw, b"Z").await;
    assert_eq!(sqlstate(&answer).as_deref(), Some("26000"), "no statement");
    // The name is free for a good statement.
    let mut good = parse("bad", "SELECT 'good'");
    good.extend(run("bad"));
    raw.write_all(&good).await.expect("send");
    let answer = frames_until(&mut raw, b"Z").await;
    assert_eq!(summary(&answer), ("12DCZ".into(), Some("good".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_parse_again_with_a_new_text() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 1).await;
    let mut raw = raw_client(si, proxy.addr).await;
    let mut first = parse("st", "SELECT 'one'");
    first.extend(run("st"));
    raw.write_all(&first).await.expect("send");
    assert_eq!(
        summary(&frames_until(&mut raw, b"Z").await).1.as_deref(),
        Some("one")
    );
    another_client(si, proxy.addr).await;
    let mut again = parse("st", "SELECT 'dup'");
    again.extend(message(b'S', b""));
    raw.write_all(&again).await.expect("send");
    let answer = frames_until(&mut raw, b"Z").await;
    assert_eq!(
        sqlstate(&answer).as_deref(),
        Some("42P05"),
        "already exists"
    );
    assert_eq!(
        field(&answer, b'M').as_deref(),
        Some("prepared statement \"st\" already exists"),
        "the client's name, as a direct connection says it"
    );
    raw.write_all(&close("st")).await.expect("send");
    assert_eq!(summary(&frames_until(&mut raw, b"Z").await).0, "3Z");
    another_client(si, proxy.addr).await;
    raw.write_all(&run("st")).await.expect("send");
    let answer = frames_until(&mut raw, b"Z").await;
    assert_eq!(sqlstate(&answer).as_deref(), Some("26000"), "closed");
    let mut second = parse("st", "SELECT 'two'");
    second.extend(run("st"));
    raw.write_all(&second).await.expect("send");
    let answer = frames_until(&mut raw, b"Z").await;
    assert_eq!(summary(&answer), ("12DCZ".into(), Some("two".into())));
    // Re-prepared text the server connection already has: ParseComplete from the proxy.
    raw.write_all(&close("st")).await.expect("send");
    frames_until(&mut raw, b"Z").await;
    let mut third = parse("st", "SELECT 'two'");
    third.extend(run("st"));
    raw.write_all(&third).await.expect("send");
    let answer = frames_until(&mut raw, b"Z").await;
    assert_eq!(summary(&answer), ("12DCZ".into(), Some("two".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_works() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("s.sql");
    std::fs::write(
        &script,
        "\\set x random(1, 1000)\nSELECT :x + 1;\nSELECT :x * 2;\n",
    )
    .expect("script");
    let i = &si.info;
    let out = Command::new("pgbench")
        .args([
            "-n", "-M", "prepared", "-c", "6", "-j", "2", "-t", "100", "-f",
        ])
        .arg(&script)
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args(["-U", &i.iam_user, &i.database])
        .env("PGSSLMODE", "prefer")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed: {text}\n{err}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(text.contains("600/600"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_work_on_after_a_pin() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 2).await;
    let i = &si.info;
    let (a, _) = pg(proxy.addr, &i.iam_user, &i.database).await.expect("a");
    let before = a.prepare("SELECT $1::int + 1").await.expect("prepare");
    let x: i32 = a.query_one(&before, &[&1i32]).await.expect("run").get(0);
    assert_eq!(x, 2);
    a.batch_execute("SET search_path = public")
        .await
        .expect("pins");
    let y: i32 = a
        .query_one(&before, &[&2i32])
        .await
        .expect("pinned: run again")
        .get(0);
    assert_eq!(y, 3);
    let after = a
        .prepare("SELECT $1::int * 3")
        .await
        .expect("prepare pinned");
    let z: i32 = a
        .query_one(&after, &[&3i32])
        .await
        .expect("pinned: run new")
        .get(0);
    assert_eq!(z, 9);
}

/// The tag of the first CommandComplete among `replies`.
fn command_tag(replies: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = replies.iter().find(|(t, _)| *t == b'C')?;
    let tag = body.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(tag).into_owned())
}

/// The proxy's `pool_pinned_clients_total`, every reason.
async fn pinned(http: SocketAddr) -> f64 {
    let (_, body) = support::http(http, "GET", "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("pg_iam_proxy_pool_pinned_clients_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `sql` through `raw`: its replies up to ReadyForQuery, within 10 s.
async fn exchange(raw: &mut tokio::net::TcpStream, sql: &[u8]) -> Vec<(u8, Vec<u8>)> {
    raw.write_all(sql).await.expect("send");
    frames_until(raw, b"Z").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_and_discard_all_forget_every_statement_without_pinning() {
    let si = StandIn::shared();
    let http = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    // One server connection: a pinned client would leave the other waiting.
    let proxy = txn_proxy_http(si, 1, Some(http)).await;
    // Sent as a Query, or as an unnamed Parse + Bind + Execute + Sync (psycopg's pipeline
    // mode, pgjdbc's Statement.execute).
    let ways = [
        ("DEALLOCATE ALL", query("DEALLOCATE ALL")),
        ("DISCARD ALL", query("DISCARD ALL")),
        (
            "DEALLOCATE ALL",
            [parse("", "DEALLOCATE ALL"), run("")].concat(),
        ),
        ("DISCARD ALL", [parse("", "DISCARD ALL"), run("")].concat()),
    ];
    for (reset, sent) in ways {
        let mut a = raw_client(si, proxy.addr).await;
        let mut b = raw_client(si, proxy.addr).await;
        let first = [parse("st", "SELECT 'a1'"), run("st")].concat();
        let got = summary(&exchange(&mut a, &first).await);
        assert_eq!(got, ("12DCZ".into(), Some("a1".into())), "{reset}");
        let keep = [parse("keep", "SELECT 'b'"), run("keep")].concat();
        let got = summary(&exchange(&mut b, &keep).await);
        assert_eq!(got, ("12DCZ".into(), Some("b".into())), "{reset}");
        // DISCARD PLANS keeps every statement.
        let plans = exchange(&mut a, &query("DISCARD PLANS")).await;
        assert_eq!(command_tag(&plans).as_deref(), Some("DISCARD PLANS"));
        let got = summary(&exchange(&mut a, &run("st")).await);
        assert_eq!(got, ("2DCZ".into(), Some("a1".into())), "{reset}");
        // The reset, and at once (same write) a Bind of the statement it dropped.
        let both = [sent, run("st")].concat();
        let answer = exchange(&mut a, &both).await;
        assert_eq!(command_tag(&answer).as_deref(), Some(reset));
        let answer = frames_until(&mut a, b"Z").await;
        assert_eq!(sqlstate(&answer).as_deref(), Some("26000"), "{reset}: gone");
        // As on its own backend, the name is free again.
        let again = [parse("st", "SELECT 'a2'"), run("st")].concat();
        let got = summary(&exchange(&mut a, &again).await);
        assert_eq!(got, ("12DCZ".into(), Some("a2".into())), "{reset}");
        // B's statement, dropped from the connection by A's reset, is prepared there again.
        let got = summary(&exchange(&mut b, &run("keep")).await);
        assert_eq!(got, ("2DCZ".into(), Some("b".into())), "{reset}: B");
    }
    assert_eq!(
        pinned(http).await,
        0.0,
        "DEALLOCATE ALL / DISCARD ALL pinned"
    );
}

/// A documented limit: SQL `DEALLOCATE` of a protocol-level statement's name pins the client
/// and fails (the server knows the statement by the proxy's name); the statement still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_of_a_protocol_statement_pins_and_fails() {
    let si = StandIn::shared();
    let http = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let proxy = txn_proxy_http(si, 2, Some(http)).await;
    let mut a = raw_client(si, proxy.addr).await;
    let first = [parse("st", "SELECT 'one'"), run("st")].concat();
    let got = summary(&exchange(&mut a, &first).await);
    assert_eq!(got, ("12DCZ".into(), Some("one".into())));
    let answer = exchange(&mut a, &query("DEALLOCATE st")).await;
    assert_eq!(
        sqlstate(&answer).as_deref(),
        Some("26000"),
        "no such statement"
    );
    let got = summary(&exchange(&mut a, &run("st")).await);
    assert_eq!(got, ("2DCZ".into(), Some("one".into())), "still there");
    assert_eq!(pinned(http).await, 1.0, "pinned by DEALLOCATE");
}
