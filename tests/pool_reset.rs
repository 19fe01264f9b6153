//! A pooled server connection between clients, against the real stand-in: the reset brings
//! the same backend back to a clean state (or fails, typed), a connection the server ended
//! shows input waiting, and the next client's startup parameters applied on a reused
//! connection report what a direct login with them reports, refusals included.

mod support;

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use pg_iam_proxy::client::StartupInfo;
use pg_iam_proxy::config::TlsMode;
use pg_iam_proxy::iam::{sign_token, TokenRequest};
use pg_iam_proxy::upstream::auth::{login, startup_packet, AuthError, Login};
use pg_iam_proxy::upstream::connect::{connect, Endpoint, UpstreamStream};
use pg_iam_proxy::upstream::exchange;
use pg_iam_proxy::upstream::params::{apply, fatal, ApplyError, ServerParams};
use pg_iam_proxy::upstream::reset::{has_pending_input, reset, tls_has_pending_input, ResetError};
use pg_iam_proxy::upstream::tls::client_config;
use pg_iam_proxy::wire;
use pgwire::messages::response::ErrorResponse;
use support::StandIn;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

/// A login as the IAM user over TLS with a fresh token and `params` in the startup packet.
async fn open(params: &[(&str, &str)]) -> Result<(UpstreamStream, Login), AuthError> {
    let i = &StandIn::shared().info;
    let tls = client_config(Some(&i.ca_file), TlsMode::VerifyFull).expect("tls");
    let ep = Endpoint::new(&i.host, i.port, tls, None).expect("endpoint");
    let creds = Credentials::new(&i.access_key_id, &i.secret_access_key, None, None, "t");
    let request = TokenRequest {
        host: &i.host,
        port: i.port,
        user: &i.iam_user,
        region: &i.region,
    };
    let token = sign_token(&creds, &request, SystemTime::now()).expect("sign");
    let (mut stream, _) = connect(&ep).await.expect("connect");
    let info = StartupInfo {
        user: i.iam_user.clone(),
        database: i.database.clone(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let startup = startup_packet(&i.iam_user, &info).expect("startup");
    let login = login(&mut stream, &i.iam_user, &startup, token.expose()).await?;
    Ok((stream, login))
}

async fn fresh() -> (UpstreamStream, ServerParams) {
    let (s, l) = open(&[]).await.expect("login");
    (
        s,
        ServerParams::from_login(&l.server_params).expect("params"),
    )
}

type Rows = Vec<Vec<Option<String>>>;

/// A simple query: its rows (text) or its SQLSTATE, and the ReadyForQuery status.
async fn simple(s: &mut UpstreamStream, sql: &str) -> (Result<Rows, String>, u8) {
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q).await.expect("send");
    s.flush().await.expect("flush");
    let mut out = Ok(Vec::new());
    loop {
        let frame = wire::read_tagged(s, 1 << 20).await.expect("answer");
        match frame[0] {
            b'D' => {
                if let Ok(rows) = &mut out {
                    rows.push(data_row(&frame[5..]));
                }
            }
            b'E' => out = Err(exchange::server_error(frame).expect("error").code),
            b'Z' => return (out, frame[5]),
            _ => {} // T, C, N, A, S
        }
    }
}

fn data_row(mut b: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([b[0], b[1]]);
    b = &b[2..];
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            b = &b[4..];
            (len >= 0).then(|| {
                let (v, rest) = b.split_at(len as usize);
                b = rest;
                String::from_utf8_lossy(v).into_owned()
            })
        })
        .collect()
}

/// The one value of a query that must succeed.
async fn one(s: &mut UpstreamStream, sql: &str) -> String {
    let (rows, _) = simple(s, sql).await;
    let rows = rows.unwrap_or_else(|code| panic!("{sql}: SQLSTATE {code}"));
    rows[0][0].clone().unwrap_or_default()
}

/// Runs statements that must succeed, leaving the given status.
async fn run(s: &mut UpstreamStream, sql: &str, status: u8) {
    let (rows, st) = simple(s, sql).await;
    assert!(rows.is_ok(), "{sql}: {rows:?}");
    assert_eq!(char::from(st), char::from(status), "{sql}");
}

/// The state a client can leave behind, as counts: (TimeZone, temp table, prepared
/// statements, advisory locks held, channels listened to).
async fn leftovers(s: &mut UpstreamStream) -> (String, String, String, String, String) {
    (
        one(s, "SHOW TimeZone").await,
        one(s, "SELECT count(*) FROM pg_class WHERE relname = 'scratch'").await,
        one(s, "SELECT count(*) FROM pg_prepared_statements").await,
        one(
            s,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .await,
        one(s, "SELECT count(*) FROM pg_listening_channels()").await,
    )
}

/// Waits (bounded) until bytes from the server reach `s`'s socket, without reading them.
async fn bytes_arrive(s: &UpstreamStream) {
    let mut b = [0u8; 1];
    let peek = s.get_ref().0.peek(&mut b);
    let n = tokio::time::timeout(WAIT, peek).await.expect("in time");
    n.expect("peek");
}

#[tokio::test]
async fn reset_brings_the_same_backend_back_to_a_clean_state() {
    let (mut a, baseline) = fresh().await;
    let pid = one(&mut a, "SELECT pg_backend_pid()").await;
    let clean = leftovers(&mut a).await;
    assert_eq!(clean.0, baseline.get("TimeZone").expect("TimeZone"));
    run(
        &mut a,
        "SET TimeZone = 'Asia/Tokyo'; SET application_name = 'dirty'",
        b'I',
    )
    .await;
    run(
        &mut a,
        "CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1",
        b'I',
    )
    .await;
    run(
        &mut a,
        "SELECT pg_advisory_lock(42); LISTEN ch; NOTIFY ch, 'self'",
        b'I',
    )
    .await;
    run(&mut a, "BEGIN", b'T').await;
    assert_eq!(
        simple(&mut a, "SELECT 1/0").await,
        (Err("22012".into()), b'E')
    );
    run(&mut a, "ROLLBACK", b'I').await;
    let dirty = leftovers(&mut a).await;
    assert_eq!(
        dirty,
        (
            "Asia/Tokyo".into(),
            "1".into(),
            "1".into(),
            "1".into(),
            "1".into()
        )
    );
    // A notification lands while the connection sits between clients.
    let (mut b, _) = fresh().await;
    run(&mut b, "NOTIFY ch, 'other'", b'I').await;
    bytes_arrive(&a).await;

    let ok = reset(&mut a, "DISCARD ALL", WAIT).await.expect("reset");
    assert_eq!(ok.swallowed, 1, "the notification");
    let zone = baseline.get("TimeZone").expect("TimeZone").to_owned();
    assert!(ok.reported.contains(&("TimeZone".into(), zone)), "{ok:?}");
    assert!(ok
        .reported
        .contains(&("application_name".into(), "".into())));
    assert!(!has_pending_input(&mut a), "nothing left unread");
    assert_eq!(
        one(&mut a, "SELECT pg_backend_pid()").await,
        pid,
        "same backend"
    );
    assert_eq!(leftovers(&mut a).await, clean);
}

#[tokio::test]
async fn reset_outside_ready_idle_fails_typed() {
    let (mut s, _) = fresh().await;
    run(&mut s, "BEGIN", b'T').await;
    match reset(&mut s, "DISCARD ALL", WAIT).await {
        Err(ResetError::Server(e)) => assert_eq!(e.code, "25001", "{}", e.message),
        other => panic!("in a transaction block: {other:?}"),
    }
    let (mut s, _) = fresh().await;
    run(&mut s, "BEGIN", b'T').await;
    assert_eq!(simple(&mut s, "SELECT 1/0").await.1, b'E');
    match reset(&mut s, "DISCARD ALL", WAIT).await {
        Err(ResetError::Server(e)) => assert_eq!(e.code, "25P02", "{}", e.message),
        other => panic!("in a failed transaction block: {other:?}"),
    }
    let (mut s, _) = fresh().await;
    let r = reset(&mut s, "BEGIN", WAIT).await;
    assert!(matches!(r, Err(ResetError::NotIdle(b'T'))), "{r:?}");
    let (mut s, _) = fresh().await;
    let r = reset(&mut s, "SELECT 1", WAIT).await;
    assert!(matches!(r, Err(ResetError::Unexpected(b'T'))), "{r:?}");
    let (mut s, _) = fresh().await;
    let short = Duration::from_millis(200);
    let r = reset(&mut s, "SELECT pg_sleep(30)", short).await;
    assert!(matches!(r, Err(ResetError::Timeout(_))), "{r:?}");
}

#[tokio::test]
async fn a_connection_the_server_ended_shows_input_waiting() {
    let (mut a, _) = fresh().await;
    let pid = one(&mut a, "SELECT pg_backend_pid()").await;
    reset(&mut a, "DISCARD ALL", WAIT).await.expect("reset");
    assert!(!has_pending_input(&mut a), "idle and clean");
    assert!(
        !tls_has_pending_input(&mut a),
        "idle and clean, without a read"
    );
    let (mut b, _) = fresh().await;
    let kill = format!("SELECT pg_terminate_backend({pid})");
    assert_eq!(one(&mut b, &kill).await, "t");
    bytes_arrive(&a).await;
    let deadline = Instant::now() + WAIT;
    while !tls_has_pending_input(&mut a) {
        assert!(Instant::now() < deadline, "the FATAL never showed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn decrypted_bytes_not_taken_yet_show_as_input_waiting() {
    let (mut a, _) = fresh().await;
    let sql = "SELECT 1";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    a.write_all(&q).await.expect("write");
    a.flush().await.expect("flush");
    // The answer is one flush, so one TLS record: reading its frames up to CommandComplete
    // leaves the ReadyForQuery decrypted in rustls, the socket drained.
    while wire::read_tagged(&mut a, 1 << 20).await.expect("answer")[0] != b'C' {}
    assert!(
        tls_has_pending_input(&mut a),
        "the ReadyForQuery is waiting"
    );
}

const CLIENT_PARAMS: &[(&str, &str)] = &[
    ("application_name", "pooled app"),
    ("DateStyle", "ISO, DMY"),
    ("TimeZone", "Europe/Berlin"),
    ("search_path", "a, b"),
    ("extra_float_digits", "2"),
    ("IntervalStyle", "iso_8601"),
];

fn owned(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn applied_parameters_report_what_a_direct_login_reports() {
    let (mut direct, login) = open(CLIENT_PARAMS).await.expect("direct login");
    let want = ServerParams::from_login(&login.server_params).expect("params");
    let (mut pooled, baseline) = fresh().await;
    let got = apply(&mut pooled, &owned(CLIENT_PARAMS), &baseline, WAIT)
        .await
        .expect("apply");
    assert_ne!(got, baseline, "something to apply");
    assert_eq!(got, want, "same values, same order");
    for show in [
        "SHOW search_path",
        "SHOW extra_float_digits",
        "SHOW DateStyle",
    ] {
        let value = one(&mut pooled, show).await;
        assert_eq!(value, one(&mut direct, show).await, "{show}");
    }
    assert_eq!(one(&mut pooled, "SHOW search_path").await, "a, b");
    assert!(!has_pending_input(&mut pooled));
}

/// What a direct login with `param` is refused with: (SQLSTATE, message).
async fn direct_refusal(param: (&str, &str)) -> (String, String) {
    match open(&[param]).await {
        Err(AuthError::Server(e)) => (e.code, e.message),
        other => panic!("a direct login with {param:?}: {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_parameter_gives_the_servers_error_and_rolls_back() {
    for bad in [("DateStyle", "bogus"), ("no_such_setting", "1")] {
        let (mut pooled, baseline) = fresh().await;
        let params = owned(&[("application_name", "first"), bad]);
        let r = match apply(&mut pooled, &params, &baseline, WAIT).await {
            Err(ApplyError::Rejected(r)) => r,
            other => panic!("{bad:?}: {other:?}"),
        };
        let direct = direct_refusal(bad).await;
        assert_eq!((r.error.code.clone(), r.error.message.clone()), direct);
        assert!(r.reusable && !r.cannot_change_now());
        let e: ErrorResponse = wire::decode(fatal(&r.error.frame), "ErrorResponse").expect("e");
        let severities: Vec<&str> = (e.fields.iter())
            .filter(|(k, _)| matches!(k, b'S' | b'V'))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(severities, ["FATAL", "FATAL"]);
        let name = baseline.get("application_name").expect("application_name");
        assert_eq!(one(&mut pooled, "SHOW application_name").await, name);
    }
}

#[tokio::test]
async fn a_login_only_parameter_is_55p02() {
    let param = ("ignore_system_indexes", "on");
    let (mut pooled, baseline) = fresh().await;
    match apply(&mut pooled, &owned(&[param]), &baseline, WAIT).await {
        Err(ApplyError::Rejected(r)) => {
            assert_eq!(r.error.code, "55P02", "{}", r.error.message);
            assert!(r.cannot_change_now() && r.reusable);
        }
        other => panic!("{other:?}"),
    }
    let (mut direct, _) = open(&[param]).await.expect("a direct login takes it");
    assert_eq!(one(&mut direct, "SHOW ignore_system_indexes").await, "on");
}
