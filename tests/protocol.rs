//! The proxy against PostgreSQL itself (the stand-in, connected to directly): protocol
//! negotiation byte for byte, startup packets near PostgreSQL's length limit, and the real
//! backend pid reaching drivers (psycopg 3 with libpq 18).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::wire::{error_field, frames_until};
use support::{ProxySpec, StandIn};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A startup packet for protocol 3.`minor` with `params` in order.
fn startup(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    support::startup(3, minor, params)
}

/// Sends `packet` and reads whole frames until `stop` matches a tag or the peer closes.
async fn frames(addr: SocketAddr, packet: &[u8], stop: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(packet).await.expect("write");
    frames_until(&mut s, stop).await
}

fn direct(si: &StandIn) -> SocketAddr {
    format!("127.0.0.1:{}", si.info.port).parse().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_protocol_version_is_byte_for_byte_what_postgres_sends() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let user = si.info.iam_user.as_str();
    let db = si.info.database.as_str();
    let cases: [(u16, Vec<(&str, &str)>); 5] = [
        (2, vec![("user", user), ("database", db)]),
        (
            2,
            vec![("_pq_.zeta", "1"), ("user", user), ("_pq_.alpha", "x")],
        ),
        (0, vec![("user", user), ("_pq_.b", ""), ("_pq_.a", "2")]),
        (0, vec![("user", user), ("_pq_.a", "1"), ("_pq_.a", "2")]),
        (0, vec![("user", user), ("database", db)]),
    ];
    for (minor, params) in &cases {
        let packet = startup(*minor, params);
        // PostgreSQL answers before authentication (the IAM user over plain TCP is refused
        // by pg_hba only after this), so the first frame is comparable.
        let theirs = frames(direct(si), &packet, b"vRE").await;
        let ours = frames(proxy.addr, &packet, b"vRE").await;
        let negotiates = *minor > 0 || params.iter().any(|(k, _)| k.starts_with("_pq_."));
        assert_eq!(theirs[0].0 == b'v', negotiates, "{theirs:?}");
        if negotiates {
            assert_eq!(
                ours[0], theirs[0],
                "3.{minor} {params:?}: proxy {ours:?} vs postgres {theirs:?}"
            );
        } else {
            assert_ne!(ours[0].0, b'v', "{ours:?}");
        }
    }
    // Sent before the user check, as PostgreSQL does: 'v' then 28000.
    let packet = startup(2, &[("database", db), ("_pq_.x", "1")]);
    let theirs = frames(direct(si), &packet, b"").await;
    let ours = frames(proxy.addr, &packet, b"").await;
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(ours[0], theirs[0]);
    assert_eq!(
        (ours[1].0, error_field(&ours[1].1, b'C')),
        (b'E', "28000".into())
    );
    assert_eq!(
        (theirs[1].0, error_field(&theirs[1].1, b'C')),
        (b'E', "28000".into())
    );
}

/// Pads `params` with application_name so the whole packet is `total` bytes.
fn packet_of_length(total: usize, params: &[(&str, &str)]) -> Vec<u8> {
    let base = startup(0, params).len() + "application_name".len() + 2;
    let pad = "p".repeat(total - base);
    let mut all = params.to_vec();
    all.push(("application_name", &pad));
    let packet = startup(0, &all);
    assert_eq!(packet.len(), total);
    packet
}

fn tags(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    frames.iter().map(|(t, _)| *t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packets_near_the_postgres_limit_work_as_directly() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let (iam, master) = (si.info.iam_user.as_str(), si.info.master_user.as_str());
    let db = si.info.database.as_str();
    // PostgreSQL's limit is 10,000 bytes after the length word: 10,004 in all.
    for total in [9_995, 10_004] {
        let direct_packet = packet_of_length(total, &[("user", master)]);
        let theirs = frames(direct(si), &direct_packet, b"RE").await;
        assert_eq!(tags(&theirs), b"R", "postgres accepts {total} bytes");
        let packet = packet_of_length(total, &[("user", iam), ("database", db)]);
        let ours = frames(proxy.addr, &packet, b"ZE").await;
        assert_eq!(tags(&ours).last(), Some(&b'Z'), "{total}: {ours:?}");
        // No database: the server's default (the user) is not added to the rebuilt packet,
        // and the server answers as it would directly (there is no database of that name).
        let packet = packet_of_length(total, &[("user", iam)]);
        let ours = frames(proxy.addr, &packet, b"ZE").await;
        assert_eq!(tags(&ours), b"E", "{total}: {ours:?}");
        let msg = error_field(&ours[0].1, b'M');
        assert_eq!(error_field(&ours[0].1, b'C'), "3D000", "{msg}");
        assert!(msg.contains(iam), "{msg}");
    }
    // One byte more: PostgreSQL hangs up without a word; the proxy says why at once.
    let theirs = frames(
        direct(si),
        &packet_of_length(10_005, &[("user", master)]),
        b"",
    )
    .await;
    assert!(theirs.is_empty(), "{theirs:?}");
    let ours = frames(proxy.addr, &packet_of_length(10_005, &[("user", iam)]), b"").await;
    assert_eq!(tags(&ours), b"E");
    assert_eq!(error_field(&ours[0].1, b'C'), "08P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_db_user_fits_or_fails_at_once_with_the_overrun() {
    let si = StandIn::shared();
    let mut spec = ProxySpec::new(si);
    spec.target.db_user = Some(si.info.iam_user.clone());
    // The startup packet is rebuilt per client only for a login of its own (a pooled login
    // carries user, database and options; the rest is applied with set_config).
    spec.target.pool_mode = Some(pg_iam_proxy::config::PoolMode::None);
    let proxy = spec.start().await;
    let db = si.info.database.as_str();
    let grow = si.info.iam_user.len() - 1; // the client says user "u"
    let fits = packet_of_length(10_004 - grow, &[("user", "u"), ("database", db)]);
    let ours = frames(proxy.addr, &fits, b"ZE").await;
    assert_eq!(tags(&ours).last(), Some(&b'Z'), "{ours:?}");

    let over = packet_of_length(10_004, &[("user", "u"), ("database", db)]);
    let started = std::time::Instant::now();
    let ours = frames(proxy.addr, &over, b"ZE").await;
    assert_eq!(tags(&ours), b"E");
    assert_eq!(error_field(&ours[0].1, b'C'), "08P01");
    let text = error_field(&ours[0].1, b'M');
    assert!(
        text.contains("rebuilt") && text.contains(&format!("{grow} over")),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "prompt");
}

const PSYCOPG: &str = r#"
import json, sys, psycopg
port, user, db, dport, muser, mpw = sys.argv[1:7]
out = {}
def proxy(**kw):
    return psycopg.connect(host="127.0.0.1", port=int(port), user=user, dbname=db,
                           sslmode="disable", connect_timeout=20, autocommit=True, **kw)
def direct(**kw):
    return psycopg.connect(host="127.0.0.1", port=int(dport), user=muser, password=mpw,
                           dbname=db, sslmode="disable", connect_timeout=20, autocommit=True, **kw)
out["libpq"] = psycopg.pq.version()
c = proxy(max_protocol_version="latest")
out["latest_via_proxy"] = c.info.pgconn.protocol_version
out["latest_direct"] = direct(max_protocol_version="latest").info.pgconn.protocol_version
out["pid"] = c.info.backend_pid
out["server_pid"] = c.execute("select pg_backend_pid()").fetchone()[0]
c.execute("LISTEN to_self")
c.execute("NOTIFY to_self, 'mine'")
n = next(c.notifies(timeout=10, stop_after=1))
out["notify_pid"] = n.pid
victim, bystander = proxy(), proxy()
out["victim_seen"] = c.execute(
    "select count(*) from pg_stat_activity where pid = %s", [victim.info.backend_pid]).fetchone()[0]
out["terminated"] = c.execute("select pg_terminate_backend(%s)", [victim.info.backend_pid]).fetchone()[0]
try:
    victim.execute("select 1")
    out["victim"] = "alive"
except psycopg.OperationalError:
    out["victim"] = "gone"
out["bystander"] = bystander.execute("select 1").fetchone()[0]
for name, connect in (("proxy", proxy), ("direct", direct)):
    try:
        connect(min_protocol_version="3.2")
        out[name + "_min_3_2"] = "connected"
    except psycopg.OperationalError as e:
        out[name + "_min_3_2"] = str(e).split("failed: ")[-1].strip()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_with_libpq_18_sees_the_real_backend_pid_and_negotiates_as_directly() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let i = &si.info;
    let args = [
        proxy.addr.port().to_string(),
        i.iam_user.clone(),
        i.database.clone(),
        i.port.to_string(),
        i.master_user.clone(),
        i.master_password.clone(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", PSYCOPG])
            .args(args)
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    println!("{r}");
    assert!(r["libpq"].as_i64().expect("libpq") >= 180_000, "{r}");
    assert_eq!(r["latest_via_proxy"], r["latest_direct"], "{r}");
    assert_eq!(r["latest_via_proxy"], 3, "{r}");
    assert_eq!(r["pid"], r["server_pid"], "{r}");
    assert_eq!(r["notify_pid"], r["pid"], "ignore-my-own-NOTIFY works: {r}");
    assert_eq!(r["victim_seen"], 1, "{r}");
    assert_eq!(r["terminated"], true, "{r}");
    assert_eq!(r["victim"], "gone", "{r}");
    assert_eq!(r["bystander"], 1, "{r}");
    assert_eq!(r["proxy_min_3_2"], r["direct_min_3_2"], "{r}");
    assert_ne!(r["proxy_min_3_2"], "connected", "{r}");
}
