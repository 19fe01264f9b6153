//! Remote clients, on a listener beyond loopback: only over TLS (the proxy's certificate,
//! checked by psql with sslmode=verify-full) and with a SCRAM-SHA-256 password from the
//! `--client-auth-file` (a line printed by `pg-iam-proxy scram-verifier`). A wrong password
//! or an unknown user is 28P01; a client without TLS is refused (28000) before any password
//! is asked for; a local client on the same listener is still known by its OS user. The
//! upstream login is the IAM token either way. Connections to the host's own non-loopback
//! address arrive from that address: remote, as the network sees them.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use support::{code, message, pg, ProxySpec, StandIn};

const PASSWORD: &str = "correct horse";

/// A non-loopback address of this host.
fn host_address() -> IpAddr {
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() && !a.is_loopback())
        .expect("a non-loopback IPv4 address")
}

/// An auth file line for `user` from the real `scram-verifier` subcommand.
fn verifier_line(user: &str, password: &str) -> String {
    let mut child = Command::new(support::running::BIN)
        .args(["scram-verifier", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("scram-verifier");
    use std::io::Write;
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        line.starts_with(&format!("\"{user}\" \"SCRAM-SHA-256$4096:")),
        "{line}"
    );
    assert!(!line.contains(password));
    line
}

struct Remote {
    addr: SocketAddr,
    ca: PathBuf,
    _dir: tempfile::TempDir,
    _proxy: support::Proxy,
}

async fn start(si: &StandIn, client_ca: Option<PathBuf>) -> Remote {
    let dir = tempfile::tempdir().expect("dir");
    let auth = dir.path().join("users.txt");
    std::fs::write(&auth, verifier_line("alice", PASSWORD)).expect("auth file");
    let certs = si.info.ca_file.parent().expect("cert dir");
    let mut spec = ProxySpec::new(si);
    spec.target.listen = Some("0.0.0.0:0".parse().expect("addr"));
    if client_ca.is_none() {
        spec.target.db_user = Some(si.info.iam_user.clone());
    } else {
        // Certificate clients: the CN is the identity the map knows.
        let map = dir.path().join("users.map");
        std::fs::write(&map, format!("alice {}\n", si.info.iam_user)).expect("map");
        spec.target.user_map = Some(map);
    }
    spec.proxy.allow_remote_clients = Some(true);
    spec.proxy.client_tls_cert = Some(certs.join("server.crt"));
    spec.proxy.client_tls_key = Some(certs.join("server.key"));
    spec.proxy.client_auth_file = Some(auth);
    spec.proxy.client_ca_file = client_ca;
    let proxy = spec.start().await;
    Remote {
        addr: SocketAddr::new(host_address(), proxy.addr.port()),
        ca: si.info.ca_file.clone(),
        _dir: dir,
        _proxy: proxy,
    }
}

/// psql over TLS with verify-full (the certificate names localhost; the connection goes to
/// the host's network address).
fn psql_remote(r: &Remote, user: &str, password: &str, db: &str) -> (bool, String) {
    psql_remote_with(r, user, password, db, "")
}

/// [`psql_remote`] with more connection parameters (`sslcert=...`).
fn psql_remote_with(
    r: &Remote,
    user: &str,
    password: &str,
    db: &str,
    more: &str,
) -> (bool, String) {
    let conn = format!(
        "host=localhost hostaddr={} port={} user={user} dbname={db} sslmode=verify-full sslrootcert={} {more}",
        r.addr.ip(),
        r.addr.port(),
        r.ca.display()
    );
    support::run_joined(
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "select current_user", &conn])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "20"),
    )
}

/// tokio-postgres over TLS trusting the stand-in's CA: the error's SQLSTATE.
async fn tokio_pg_tls(r: &Remote, user: &str, password: &str, db: &str) -> Result<(), String> {
    tokio_pg_tls_to(r.addr, &r.ca, user, password, db).await
}

/// tokio-postgres over TLS to `addr`, trusting `ca`.
async fn tokio_pg_tls_to(
    addr: SocketAddr,
    ca: &std::path::Path,
    user: &str,
    password: &str,
    db: &str,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("cert")).expect("add");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = format!(
        "host=localhost hostaddr={} port={} user={user} password='{password}' dbname={db} sslmode=require connect_timeout=20",
        addr.ip(),
        addr.port()
    );
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
    match tokio_postgres::connect(&conn, tls).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{} {}", code(&e), message(&e))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_clients_use_tls_and_scram() {
    let si = StandIn::shared();
    let (iam, db) = (&si.info.iam_user, &si.info.database);
    let r = start(si, None).await;
    let (ok, text) = psql_remote(&r, "alice", PASSWORD, db);
    assert!(
        ok && text.trim() == iam.as_str(),
        "verify-full + SCRAM: {text}"
    );

    let wrong = tokio_pg_tls(&r, "alice", "wrong", db)
        .await
        .expect_err("wrong");
    assert!(
        wrong.starts_with("28P01 password authentication failed for user \"alice\""),
        "{wrong}"
    );
    let unknown = tokio_pg_tls(&r, "mallory", PASSWORD, db)
        .await
        .expect_err("unknown");
    assert!(
        unknown.starts_with("28P01 password authentication failed for user \"mallory\""),
        "{unknown}"
    );
    tokio_pg_tls(&r, "alice", PASSWORD, db)
        .await
        .expect("tokio-postgres with the password");

    // Without TLS: refused before any password is asked for (libpq would say so otherwise).
    let plain = pg(r.addr, "alice", db).await.expect_err("no TLS");
    assert_eq!(code(&plain), "28000", "{}", message(&plain));
    assert!(
        message(&plain).contains("must use TLS"),
        "{}",
        message(&plain)
    );

    // A local client on the same listener is known by its OS user (root): no password.
    let local = SocketAddr::from(([127, 0, 0, 1], r.addr.port()));
    let (client, _task) = pg(local, iam, db).await.expect("local root");
    client.simple_query("select 1").await.expect("query");
}

/// A CA and a certificate (CN `cn`, extensions `ext`) signed by it, made with the openssl
/// CLI in `dir`: (CA, certificate, key).
fn issue(dir: &std::path::Path, cn: &str, ext: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output();
        let out = out.expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ca = format!("req -x509 {ec} -keyout ca.key -out ca.crt -days 1 -subj");
    run(&[ca.split(' ').collect::<Vec<_>>(), vec!["/CN=test CA"]].concat());
    let req = format!("req {ec} -keyout leaf.key -out leaf.csr -subj");
    run(&[
        req.split(' ').collect::<Vec<_>>(),
        vec![&format!("/CN={cn}")],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        format!("basicConstraints=CA:FALSE\n{ext}\n"),
    )
    .expect("ext");
    let sign = "x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out leaf.crt -days 1 -extfile ext.cnf";
    run(&sign.split(' ').collect::<Vec<_>>());
    (
        dir.join("ca.crt"),
        dir.join("leaf.crt"),
        dir.join("leaf.key"),
    )
}

/// A CA and a client certificate with CN `cn`.
fn client_certificate(dir: &std::path::Path, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    issue(dir, cn, "extendedKeyUsage=clientAuth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_clients_with_a_certificate_need_no_password() {
    let si = StandIn::shared();
    let (iam, db) = (&si.info.iam_user, &si.info.database);
    let certs = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = client_certificate(certs.path(), "alice");
    let r = start(si, Some(ca)).await;
    let with_cert = format!("sslcert={} sslkey={}", cert.display(), key.display());
    let (ok, text) = psql_remote_with(&r, iam, "", db, &with_cert);
    assert!(
        ok && text.trim() == iam.as_str(),
        "certificate, no password: {text}"
    );
    let (ok, text) = psql_remote_with(&r, "postgres", "", db, &with_cert);
    let refused = "remote user \"alice\" (certificate)";
    assert!(
        !ok && text.contains(refused) && text.contains("\"postgres\""),
        "{text}"
    );
    // Without a certificate, SCRAM still applies (the certificate is optional with a SCRAM file).
    let (ok, text) = psql_remote(&r, "alice", "wrong", db);
    assert!(
        !ok && text.contains("password authentication failed for user \"alice\""),
        "{text}"
    );
}

/// SIGHUP re-reads the certificate files: after the files change, clients see the new
/// certificate (and a pair that does not load keeps the old one in service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_client_certificate() {
    let si = StandIn::shared();
    let db = &si.info.database;
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let standin_certs = si.info.ca_file.parent().expect("dir");
    std::fs::copy(standin_certs.join("server.crt"), &cert).expect("cert");
    std::fs::copy(standin_certs.join("server.key"), &key).expect("key");
    let auth = dir.path().join("users.txt");
    std::fs::write(&auth, verifier_line("alice", PASSWORD)).expect("auth file");
    let port = si.info.port.to_string();
    let path = |p: &PathBuf| p.to_str().expect("path").to_owned();
    let mut cmd = Command::new(support::running::BIN);
    cmd.args([
        "run",
        "--listen",
        "0.0.0.0:0",
        "--host",
        "localhost",
        "--port",
        &port,
    ])
    .args(["--ca-file", &path(&si.info.ca_file), "--log-format", "json"])
    .args(["--db-user", &si.info.iam_user, "--allow-remote-clients"])
    .args([
        "--client-tls-cert",
        &path(&cert),
        "--client-tls-key",
        &path(&key),
    ])
    .args(["--client-auth-file", &path(&auth)])
    .envs(si.aws_env());
    let mut proxy = support::running::Running::spawn(cmd);
    let addr = SocketAddr::new(host_address(), proxy.addr().port());
    tokio_pg_tls_to(addr, &si.info.ca_file, "alice", PASSWORD, db)
        .await
        .expect("the first certificate");

    let fresh = tempfile::tempdir().expect("dir");
    let (new_ca, new_cert, new_key) =
        issue(fresh.path(), "localhost", "subjectAltName=DNS:localhost");
    std::fs::write(&key, "not a key").expect("break the key");
    proxy.signal(libc::SIGHUP);
    proxy.wait_for("kept the previous client TLS certificate");
    tokio_pg_tls_to(addr, &si.info.ca_file, "alice", PASSWORD, db)
        .await
        .expect("still the first certificate");
    std::fs::copy(&new_cert, &cert).expect("cert");
    std::fs::copy(&new_key, &key).expect("key");
    proxy.signal(libc::SIGHUP);
    proxy.wait_for("client TLS certificate reloaded");
    tokio_pg_tls_to(addr, &new_ca, "alice", PASSWORD, db)
        .await
        .expect("the new certificate");
    let old = tokio_pg_tls_to(addr, &si.info.ca_file, "alice", PASSWORD, db).await;
    assert!(old.is_err(), "the old CA no longer verifies the proxy");
}
