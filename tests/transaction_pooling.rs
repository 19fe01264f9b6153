//! Transaction pooling against the real stand-in: many clients over two server connections;
//! a transaction stays on one backend while clients share backends between transactions;
//! each pin reason keeps its client on its backend; cancel reaches the current transaction
//! only; a pipeline with an error in the middle gives the connection back; COPY done, aborted
//! or left midway never leaves a connection mid-state in the pool; psql and
//! tokio-postgres's unnamed statements work; `RESET` does not pin, and the client's
//! `application_name` is set again after it, and after a pinned client's connection was reset.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::metrics::{http_addr, metric, metric_becomes, metric_sum_until, pins};
use support::pg::{admin, backend_gone, connect, connect_as, one, pid, until_one};
use support::pools::{txn_proxy, txn_proxy_http};
use support::wire::{frames_until, message, query, raw_client, until_ready};
use support::StandIn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

/// Waits (bounded) until the proxy's `pool_pinned_clients_total` for `reason` is at least
/// `want`.
async fn pinned_count(http: SocketAddr, reason: &str, want: f64) {
    let series = (
        "pg_iam_proxy_pool_pinned_clients_total",
        &*format!("reason=\"{reason}\""),
    );
    metric_sum_until(http, series, want, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_over_two_connections_are_served() {
    let si = StandIn::shared();
    let http = http_addr();
    let proxy = txn_proxy_http(si, 2, Some(http)).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(si, proxy.addr).await);
    }
    let runs = clients.into_iter().map(|c| {
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            for i in 0..5 {
                seen.insert(pid(&c).await);
                let sum = one(&c, &format!("SELECT {i} + 1")).await;
                assert_eq!(sum, (i + 1).to_string());
            }
            seen
        })
    });
    let mut pids = HashSet::new();
    for run in runs {
        pids.extend(run.await.expect("client"));
    }
    assert!(
        pids.len() <= 2,
        "at most two backends served 20 clients: {pids:?}"
    );
    // The peaks: 20 clients at once, at most 2 server connections, and their ratio.
    let series = |name: &str| format!("pg_iam_proxy_{name}{{target=\"localhost\"}}");
    let clients = metric(http, &series("pool_clients_peak")).await;
    let servers = metric(http, &series("pool_server_connections_peak")).await;
    let ratio = series("pool_server_connections_per_client_at_peak");
    let ratio = metric(http, &ratio).await;
    assert_eq!(clients, 20.0);
    assert!((1.0..=2.0).contains(&servers), "{servers}");
    assert_eq!(ratio, servers / 20.0);
    // The clients are gone: their count goes back to 0 (the peaks stay).
    metric_becomes(http, &series("pool_clients"), "0").await;
    assert_eq!(metric(http, &series("pool_clients_peak")).await, 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_stays_on_its_backend_and_clients_share_between() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 2).await;
    let (a, b) = (connect(si, proxy.addr).await, connect(si, proxy.addr).await);
    // Both idle between transactions: one backend serves both in turn.
    let first = pid(&a).await;
    assert_eq!(pid(&b).await, first, "shared between transactions");

    a.batch_execute("BEGIN").await.expect("begin");
    let inside = pid(&a).await;
    // B's statements meanwhile get the other connection.
    let other = pid(&b).await;
    assert_ne!(other, inside, "A's transaction holds its backend");
    assert_eq!(pid(&a).await, inside, "same backend inside BEGIN..COMMIT");
    a.batch_execute("COMMIT").await.expect("commit");
    // Returned: now B (LIFO) gets A's former backend.
    assert_eq!(pid(&b).await, inside, "given back after COMMIT");
}

/// A pins itself with `sql`; B then opens a transaction, which would take A's backend (the
/// most recently used) were it back in the pool (it is back before A reads the
/// ReadyForQuery that ends its statement); A must still be on its backend.
async fn pinned_by(si: &StandIn, addr: SocketAddr, sql: &str) -> bool {
    let (a, b) = (connect(si, addr).await, connect(si, addr).await);
    a.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let before = pid(&a).await;
    b.batch_execute("BEGIN").await.expect("begin");
    let b_pid = pid(&b).await;
    let after = pid(&a).await;
    b.batch_execute("COMMIT").await.expect("commit");
    assert!(
        after == before || b_pid == before,
        "{sql}: a third backend?"
    );
    after == before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pin_reason_pins_and_the_rest_does_not() {
    let si = StandIn::shared();
    let http = http_addr();
    let proxy = txn_proxy_http(si, 2, Some(http)).await;
    for sql in [
        "SET search_path = public",
        "SELECT set_config('search_path', 'public', false)",
        "LISTEN txn_test",
        "SELECT pg_advisory_lock(77)",
        "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
        "CREATE TEMP TABLE txn_tmp (a int)",
        "PREPARE txn_p AS SELECT 1",
    ] {
        assert!(pinned_by(si, proxy.addr, sql).await, "{sql} did not pin");
    }
    // Counted once the pinning statement's transaction ended.
    for (reason, want) in [
        ("set", 2.0),
        ("listen", 1.0),
        ("advisory_lock", 1.0),
        ("cursor_with_hold", 1.0),
        ("temp_table", 1.0),
        ("prepare", 1.0),
    ] {
        pinned_count(http, reason, want).await;
    }
    for sql in ["BEGIN; SET LOCAL work_mem = '2MB'; COMMIT", "SELECT 1"] {
        assert!(!pinned_by(si, proxy.addr, sql).await, "{sql} pinned");
    }
    // Protocol-level unnamed statements do not pin.
    let (a, b) = (connect(si, proxy.addr).await, connect(si, proxy.addr).await);
    let typed = a
        .query_typed(
            "SELECT $1::int + 1",
            &[(&1i32, tokio_postgres::types::Type::INT4)],
        )
        .await
        .expect("an unnamed statement");
    assert_eq!(typed[0].get::<_, i32>(0), 2);
    let before = pid(&a).await;
    b.batch_execute("BEGIN").await.expect("begin");
    assert_ne!(pid(&a).await, before, "unnamed statements do not pin");
    b.batch_execute("COMMIT").await.expect("commit");
    // Named statements do not pin either: tests/prepared_statements.rs (a pool of one shared
    // by two clients, which cannot race with the check-in as a pid comparison here would).
}

/// Waits (bounded) until backend `pid` runs a query.
async fn running(admin: &Client, pid: &str) {
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'");
    let what = format!("backend {pid} never ran the query");
    until_one(admin, &sql, "1", Duration::from_secs(10), &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_current_transaction_only() {
    let si = StandIn::shared();
    let admin = admin(si).await;
    let http = http_addr();
    let proxy = txn_proxy_http(si, 2, Some(http)).await;
    let (a, b) = (connect(si, proxy.addr).await, connect(si, proxy.addr).await);
    let (a_cancel, b_cancel) = (a.cancel_token(), b.cancel_token());
    // B's last transaction ran on backend X; A's next one gets X (the most recently used).
    let x = pid(&b).await;
    let sleeping = tokio::spawn(async move {
        let r = a.simple_query("SELECT pg_sleep(2)").await;
        (a, r)
    });
    running(&admin, &x).await;
    // B runs no transaction now: its cancel is dropped, never reaching A's query on X.
    b_cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("B's cancel taken");
    let (a, result) = sleeping.await.expect("join");
    assert!(result.is_ok(), "B's cancel reached A: {result:?}");

    // A's own cancel reaches the server connection of its current transaction.
    let x = pid(&a).await;
    let sleeping = tokio::spawn(async move { a.simple_query("SELECT pg_sleep(20)").await });
    running(&admin, &x).await;
    a_cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("A's cancel taken");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("cancelled in time")
        .expect("join");
    let e = result.expect_err("cancelled");
    assert_eq!(support::code(&e), "57014", "{e}");
}

/// Parse (unnamed) + Bind + Execute of `sql`.
fn extended(sql: &str) -> Vec<u8> {
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut m = message(b'P', &parse);
    m.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    m.extend(message(b'E', &[0, 0, 0, 0, 0]));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_an_error_in_the_middle_gives_the_connection_back() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 1).await;
    let mut raw = raw_client(si, proxy.addr).await;
    let mut pipeline = extended("SELECT 1");
    pipeline.extend(extended("SELECT 1/0"));
    pipeline.extend(extended("SELECT 3"));
    pipeline.extend(message(b'S', b""));
    raw.write_all(&pipeline).await.expect("pipeline");
    let answer = until_ready(&mut raw).await;
    assert!(
        answer.windows(5).any(|w| w == b"22012"),
        "division by zero reported"
    );
    // The one server connection went back: another client gets served.
    let other = connect(si, proxy.addr).await;
    let served = tokio::time::timeout(Duration::from_secs(10), pid(&other)).await;
    assert!(served.is_ok(), "the connection was not given back");
    // The raw client goes on: its next statement works.
    raw.write_all(&extended("SELECT 4")).await.expect("more");
    raw.write_all(&message(b'S', b"")).await.expect("sync");
    let answer = until_ready(&mut raw).await;
    assert!(
        answer.windows(2).any(|w| w == b"\x014"),
        "SELECT 4 answered: {answer:?}"
    );
    raw.write_all(&message(b'X', b"")).await.expect("terminate");
}

/// Sends `pg_backend_pid()` by the extended protocol with Flush and no Sync, and returns the
/// pid from its answer: the server then owes a ReadyForQuery.
async fn unsynced_pid(raw: &mut tokio::net::TcpStream) -> String {
    let mut unsynced = extended("SELECT pg_backend_pid()");
    unsynced.extend(message(b'H', b""));
    raw.write_all(&unsynced).await.expect("pipeline");
    let mut answer = Vec::new();
    let complete = [b'C', 0, 0, 0, 13];
    while !answer.windows(5).any(|w| w == complete) {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("answer");
        assert!(n > 0, "closed");
        answer.extend_from_slice(&buf[..n]);
    }
    // DataRow: 'D', length, 1 column, its length, the text.
    let d = answer.iter().position(|b| *b == b'D').expect("DataRow");
    let len = i32::from_be_bytes(answer[d + 7..d + 11].try_into().expect("4 bytes")) as usize;
    String::from_utf8(answer[d + 11..d + 11 + len].to_vec()).expect("pid text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_pipeline_costs_its_connection() {
    let si = StandIn::shared();
    let admin = admin(si).await;
    let proxy = txn_proxy(si, 1).await;
    let mut raw = raw_client(si, proxy.addr).await;
    let first = unsynced_pid(&mut raw).await;
    drop(raw);
    // Not provably idle: closed, never handed to the next client.
    backend_gone(&admin, &first).await;
    let mut raw = raw_client(si, proxy.addr).await;
    assert_ne!(unsynced_pid(&mut raw).await, first, "a fresh backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_works_in_transaction_mode() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 1).await;
    let i = &si.info;
    let port = proxy.addr.port();
    let args = [
        "-c",
        "SELECT 41 + 1",
        "-c",
        "BEGIN; SELECT 'in' || 'side'; COMMIT",
    ];
    let (ok, out, err) = support::psql("127.0.0.1", port, &i.iam_user, &i.database, &args);
    assert!(ok, "psql failed: {err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["42", "BEGIN", "inside", "COMMIT"],
        "{out}"
    );
}

/// The first column of the first row `sql` returns, by a raw client's simple query.
async fn raw_one(raw: &mut tokio::net::TcpStream, sql: &str) -> String {
    raw.write_all(&query(sql)).await.expect("query");
    let answer = frames_until(raw, b"Z").await;
    let (_, row) = answer.iter().find(|(t, _)| *t == b'D').expect("a row");
    // DataRow: 1 column, its length, the text.
    let len = i32::from_be_bytes(row[2..6].try_into().expect("4 bytes")) as usize;
    String::from_utf8(row[6..6 + len].to_vec()).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_done_aborted_or_left_midway_never_leaves_a_connection_mid_state() {
    let si = StandIn::shared();
    let admin = admin(si).await;
    let table = format!("txn_copy_{}", std::process::id());
    let create = format!(
        "CREATE TABLE {table} (x int); GRANT ALL ON {table} TO {}",
        si.info.iam_user
    );
    admin.batch_execute(&create).await.expect("create");
    // Two raw clients (one pool: the same startup parameters) over one server connection.
    let proxy = txn_proxy(si, 1).await;
    let mut raw = raw_client(si, proxy.addr).await;
    let mut other = raw_client(si, proxy.addr).await;
    let count = format!("SELECT count(*) FROM {table}");
    let first = raw_one(&mut other, "SELECT pg_backend_pid()").await;

    // Aborted by the client: the server answers CopyFail with 57014 and ReadyForQuery('I').
    raw.write_all(&query(&format!("COPY {table} FROM STDIN")))
        .await
        .expect("copy");
    frames_until(&mut raw, b"G").await;
    raw.write_all(&message(b'd', b"1\n")).await.expect("data");
    raw.write_all(&message(b'f', b"client gave up\0"))
        .await
        .expect("fail");
    let answer = until_ready(&mut raw).await;
    assert!(answer.windows(5).any(|w| w == b"57014"), "{answer:?}");
    assert_eq!(raw_one(&mut other, &count).await, "0");

    // Done: the rows are there, and the connection goes back.
    raw.write_all(&query(&format!("COPY {table} FROM STDIN")))
        .await
        .expect("copy");
    frames_until(&mut raw, b"G").await;
    let mut rows = message(b'd', b"1\n2\n");
    rows.extend(message(b'c', b""));
    raw.write_all(&rows).await.expect("rows");
    let answer = until_ready(&mut raw).await;
    assert!(answer.windows(6).any(|w| w == b"COPY 2"), "{answer:?}");
    assert_eq!(raw_one(&mut other, &count).await, "2");

    // COPY TO STDOUT.
    raw.write_all(&query(&format!("COPY {table} TO STDOUT")))
        .await
        .expect("copy out");
    let answer = until_ready(&mut raw).await;
    assert!(answer.contains(&b'H'), "CopyOutResponse: {answer:?}");
    let pid = "SELECT pg_backend_pid()";
    assert_eq!(
        raw_one(&mut other, pid).await,
        first,
        "one connection all along"
    );

    // Left in the middle of COPY: that connection is closed, never lent again.
    raw.write_all(&query(&format!("COPY {table} FROM STDIN")))
        .await
        .expect("copy");
    frames_until(&mut raw, b"G").await;
    raw.write_all(&message(b'd', b"3\n")).await.expect("data");
    drop(raw);
    backend_gone(&admin, &first).await;
    assert_ne!(raw_one(&mut other, pid).await, first, "a fresh backend");
    assert_eq!(
        raw_one(&mut other, &count).await,
        "2",
        "the unfinished COPY left nothing"
    );
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_does_not_pin_and_the_name_is_set_again() {
    let si = StandIn::shared();
    let http = http_addr();
    let proxy = txn_proxy_http(si, 1, Some(http)).await;
    // The pool's one connection is opened for "first": its login's name.
    let first = connect_as(si, proxy.addr, "first").await;
    assert_eq!(one(&first, "SHOW application_name").await, "first");
    let second = connect_as(si, proxy.addr, "second").await;
    assert_eq!(one(&second, "SHOW application_name").await, "second");
    // RESET returns the connection to its login's values (asyncpg's pool runs RESET ALL at
    // every release); the proxy then sets the client's name again at its next transaction.
    for reset in ["RESET application_name", "RESET ALL"] {
        second.batch_execute(reset).await.expect("reset");
        assert_eq!(
            one(&second, "SHOW application_name").await,
            "second",
            "{reset}"
        );
        let limit = Duration::from_secs(10);
        let shown = tokio::time::timeout(limit, one(&first, "SHOW application_name")).await;
        assert_eq!(shown.expect("first served: second not pinned"), "first");
    }
    let pins = pins(http).await;
    assert!(pins.is_empty(), "RESET pinned: {pins:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_pinned_client_is_reset_the_name_is_set_again() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 1).await;
    // The pool's one connection is opened for "first": its login's name.
    let first = connect_as(si, proxy.addr, "first").await;
    assert_eq!(one(&first, "SHOW application_name").await, "first");
    let pinned = connect_as(si, proxy.addr, "second").await;
    pinned
        .batch_execute("SET search_path = public")
        .await
        .expect("pins");
    assert_eq!(one(&pinned, "SHOW application_name").await, "second");
    // It leaves: the connection is reset (DISCARD ALL: the login's name again) and back.
    drop(pinned);
    let again = connect_as(si, proxy.addr, "second").await;
    let limit = Duration::from_secs(20);
    let shown = tokio::time::timeout(limit, one(&again, "SHOW application_name")).await;
    assert_eq!(shown.expect("the connection came back"), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_names_no_app_has_none_on_a_connection_opened_for_another() {
    let si = StandIn::shared();
    let proxy = txn_proxy(si, 1).await;
    let named = connect_as(si, proxy.addr, "orders").await;
    assert_eq!(one(&named, "SHOW application_name").await, "orders");
    let plain = connect(si, proxy.addr).await;
    assert_eq!(
        one(&plain, "SHOW application_name").await,
        "",
        "as on a direct login"
    );
    assert_eq!(one(&named, "SHOW application_name").await, "orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_set_follows_its_client_and_does_not_pin() {
    let si = StandIn::shared();
    let http = http_addr();
    // One connection: every transaction of both clients runs on it, one after the other.
    let proxy = txn_proxy_http(si, 1, Some(http)).await;
    let (a, b) = (connect(si, proxy.addr).await, connect(si, proxy.addr).await);
    a.batch_execute("SET extra_float_digits = 3")
        .await
        .expect("set");
    a.batch_execute("set SESSION application_name TO 'It''s a'")
        .await
        .expect("set");
    a.batch_execute("SET IntervalStyle = 'postgres_verbose'")
        .await
        .expect("set");
    for _ in 0..2 {
        // Each sees its own values on the one connection, in turn.
        assert_eq!(one(&a, "SHOW extra_float_digits").await, "3");
        assert_eq!(one(&b, "SHOW extra_float_digits").await, "1", "login's");
        assert_eq!(one(&a, "SHOW application_name").await, "It's a");
        assert_eq!(one(&b, "SHOW application_name").await, "");
        assert_eq!(one(&a, "SHOW IntervalStyle").await, "postgres_verbose");
        assert_eq!(one(&b, "SHOW IntervalStyle").await, "postgres");
    }
    // DEFAULT and RESET give the login's value back, for that name only.
    a.batch_execute("SET extra_float_digits TO DEFAULT")
        .await
        .expect("default");
    a.batch_execute("RESET IntervalStyle").await.expect("reset");
    assert_eq!(one(&b, "SHOW IntervalStyle").await, "postgres");
    assert_eq!(one(&a, "SHOW extra_float_digits").await, "1");
    assert_eq!(one(&a, "SHOW IntervalStyle").await, "postgres");
    assert_eq!(one(&a, "SHOW application_name").await, "It's a");
    // A SET the server refuses, alone, changes nothing and pins nothing.
    let refused = a.batch_execute("SET extra_float_digits = 99").await;
    let code = refused.expect_err("out of range").code().cloned();
    assert_eq!(
        code,
        Some(tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE)
    );
    assert_eq!(one(&b, "SHOW extra_float_digits").await, "1");
    assert_eq!(one(&a, "SHOW extra_float_digits").await, "1");
    let pins = pins(http).await;
    assert!(pins.is_empty(), "a tracked SET pinned: {pins:?}");
    // A tracked SET with anything else in its transaction still pins (it could be rolled
    // back, or half done).
    let http = http_addr();
    let proxy = txn_proxy_http(si, 2, Some(http)).await;
    for sql in [
        "SET extra_float_digits = 2; SELECT 1",
        "BEGIN; SET extra_float_digits = 2; ROLLBACK",
        // Tracked only with the values that keep the proxy's reading of SQL right.
        "SET standard_conforming_strings = off",
    ] {
        assert!(pinned_by(si, proxy.addr, sql).await, "{sql} did not pin");
    }
    pinned_count(http, "set", 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orms_settings_at_connect_do_not_pin() {
    let si = StandIn::shared();
    let http = http_addr();
    let proxy = txn_proxy_http(si, 1, Some(http)).await;
    let (a, b) = (connect(si, proxy.addr).await, connect(si, proxy.addr).await);
    // What ActiveRecord's PostgreSQL adapter runs after connecting (libpq's
    // PQsetClientEncoding sends the first), each a Query of its own.
    for sql in [
        "set client_encoding to 'UTF8'",
        "SET client_min_messages TO 'warning'",
        "SET standard_conforming_strings = on",
        "SET intervalstyle = iso_8601",
        "SET SESSION timezone TO 'UTC'",
    ] {
        a.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    b.batch_execute("SET SESSION timezone TO 'Asia/Tokyo'")
        .await
        .expect("set");
    for _ in 0..2 {
        assert_eq!(one(&a, "SHOW TimeZone").await, "UTC");
        assert_eq!(one(&b, "SHOW TimeZone").await, "Asia/Tokyo");
        assert_eq!(one(&a, "SHOW client_min_messages").await, "warning");
        assert_eq!(one(&b, "SHOW client_min_messages").await, "notice");
        assert_eq!(one(&a, "SHOW IntervalStyle").await, "iso_8601");
        assert_eq!(one(&b, "SHOW IntervalStyle").await, "postgres");
    }
    let pins = pins(http).await;
    assert!(pins.is_empty(), "an ORM's SETs pinned: {pins:?}");
}
