//! The proxy against the stand-in: real PostgreSQL 15 over verified TLS, IAM tokens checked
//! by an independent verifier, real clients (tokio-postgres, psql, psycopg).

mod support;

use std::time::Duration;

use support::{code, pg, psql, ProxySpec, StandIn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_protocol_through_the_proxy() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let (client, _conn) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect through the proxy");
    let rows = client
        .simple_query("select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .await
        .expect("simple query");
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(row.get(0), Some("iam_dbuser"));
    assert_eq!(row.get(1), Some("t"), "upstream session is over TLS");
    let stmt = client
        .prepare("select $1::int + v.id, v.v from t v where v.id = $2")
        .await
        .expect("prepare");
    let row = client
        .query_one(&stmt, &[&40i32, &1i32])
        .await
        .expect("extended query");
    assert_eq!(row.get::<_, i32>(0), 41);
    // The token cache served the second connection without signing again.
    let (client2, _c2) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("second connection");
    client2.simple_query("select 1").await.expect("query");
    let stats = proxy.cache.stats();
    assert_eq!(stats.signings, 1, "{stats:?}");
    assert!(stats.hits >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tcp_and_unix_socket() {
    let si = StandIn::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ProxySpec::new(si);
    spec.target.unix_socket = Some(dir.path().to_owned());
    let proxy = spec.start().await;
    let port = proxy.addr.port();
    let (ok, out, err) = psql(
        "127.0.0.1",
        port,
        &si.info.iam_user,
        &si.info.database,
        &["-c", "select current_user"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "iam_dbuser");
    let socket = proxy.unix_socket.clone().expect("unix socket");
    assert_eq!(socket, dir.path().join(format!(".s.PGSQL.{port}")));
    let host = dir.path().to_str().expect("utf8");
    let (ok, out, err) = psql(
        host,
        port,
        &si.info.iam_user,
        &si.info.database,
        &["-c", "select count(*) > 0 from t"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t");
    // Shutdown removes the socket file.
    proxy.shutdown.cancel();
    let report = proxy.task.await.expect("join");
    assert_eq!(report.cut_sessions, 0);
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_and_cancel() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let conn = format!(
        "host=127.0.0.1 port={} user={} dbname={} sslmode=disable",
        proxy.addr.port(),
        si.info.iam_user,
        si.info.database
    );
    let (listener, mut connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(msg)) = stream.next().await {
            let _ = tx.send(msg);
        }
    });
    listener
        .batch_execute("LISTEN proxy_test")
        .await
        .expect("listen");
    let (notifier, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    notifier
        .batch_execute("NOTIFY proxy_test, 'hello through the proxy'")
        .await
        .expect("notify");
    let msg = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("notification in time")
        .expect("a message");
    match msg {
        tokio_postgres::AsyncMessage::Notification(n) => {
            assert_eq!(n.channel(), "proxy_test");
            assert_eq!(n.payload(), "hello through the proxy");
        }
        other => panic!("unexpected {other:?}"),
    }

    // Cancel a long pg_sleep through the proxy's own BackendKeyData.
    let (sleeper, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    let cancel = sleeper.cancel_token();
    let query = tokio::spawn(async move {
        sleeper
            .simple_query("select pg_sleep(60)")
            .await
            .map(|_| ())
    });
    // Wait until the server shows the query running, then send exactly one cancel.
    let (watcher, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    loop {
        let row = watcher
            .query_one(
                "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(60)'",
                &[],
            )
            .await
            .expect("poll");
        if row.get::<_, i64>(0) == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "query never started"
        );
    }
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let err = query.await.expect("join").expect_err("cancelled");
    assert_eq!(code(&err), "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_100_mb_in_and_out_with_checksum() {
    use futures_util::{SinkExt, StreamExt};
    use std::hash::Hasher;
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    client
        .batch_execute("create temp table big(id int, payload text)")
        .await
        .expect("create");
    let payload = "x".repeat(1000);
    let rows = 100 * 1024; // ~100 MiB of COPY text
    let mut sent = std::collections::hash_map::DefaultHasher::new();
    let sink = client
        .copy_in("copy big from stdin")
        .await
        .expect("copy in");
    futures_util::pin_mut!(sink);
    let mut chunk = Vec::with_capacity(1 << 20);
    for i in 0..rows {
        let line = format!("{i}\t{payload}{}\n", i % 10);
        sent.write(line.as_bytes());
        chunk.extend_from_slice(line.as_bytes());
        if chunk.len() >= 1 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .expect("send");
        }
    }
    sink.send(bytes::Bytes::from(chunk)).await.expect("send");
    let copied = sink.finish().await.expect("finish");
    assert_eq!(copied, rows as u64);
    let stream = client
        .copy_out("copy (select * from big order by id) to stdout")
        .await
        .expect("copy out");
    futures_util::pin_mut!(stream);
    let mut received = std::collections::hash_map::DefaultHasher::new();
    let mut total = 0usize;
    while let Some(data) = stream.next().await {
        let data = data.expect("data");
        total += data.len();
        received.write(&data);
    }
    assert!(total > 100_000_000, "{total}");
    assert_eq!(
        sent.finish(),
        received.finish(),
        "COPY OUT returned what COPY IN sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgadmin_pattern_psycopg_prefer_with_a_password() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let script = r#"
import sys, psycopg
conn = psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user=sys.argv[2],
                       dbname=sys.argv[3], password="whatever-pgadmin-sends",
                       sslmode="prefer", application_name="pgAdmin 4 - DB:labdb")
with conn.cursor() as cur:
    cur.execute("select current_user, current_setting('application_name')")
    print("|".join(cur.fetchone()))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &proxy.addr.port().to_string(),
            &si.info.iam_user,
            &si.info.database,
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "iam_dbuser|pgAdmin 4 - DB:labdb");
}
