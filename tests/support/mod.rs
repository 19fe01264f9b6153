//! Test fixtures: the local Aurora stand-in (`standin.py`: real PostgreSQL 15 over TLS with
//! IAM token checking through PAM) and the proxy, in-process or as the real binary.
#![allow(dead_code)]

pub mod clock;
pub mod fault;
pub mod freeze;
pub mod metrics;
pub mod pg;
pub mod pools;
pub mod running;
pub mod wire;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use pg_iam_proxy::config::{build, FileConfig, ProxyArgs, TargetArgs};
use pg_iam_proxy::iam::{Clock, SystemClock, TokenCache};
use pg_iam_proxy::server::{Listener, RunReport};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the stand-in prints when it is ready.
#[derive(Debug, Clone, Deserialize)]
pub struct Info {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub ca_file: PathBuf,
    pub wrong_ca_file: PathBuf,
    pub database: String,
    pub iam_user: String,
    pub iam_user2: String,
    pub plain_user: String,
    pub plain_password: String,
    pub master_user: String,
    pub master_password: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub temp_access_key_id: String,
    pub temp_secret_access_key: String,
    pub temp_session_token: String,
    pub sts_endpoint: Option<String>,
    pub control_socket: PathBuf,
    pub decisions_log: PathBuf,
    pub server_log: PathBuf,
    /// In cluster mode (`standin.py --cluster`): the cluster.
    #[serde(default)]
    pub cluster: Option<ClusterInfo>,
}

/// The stand-in cluster: Aurora-like names, the instances' real ports, and the
/// `--connect-to` rules that reach them (the cluster names map to the first writer).
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub cluster_host: String,
    pub reader_host: String,
    pub virtual_port: u16,
    pub writer: String,
    pub instances: Vec<InstanceInfo>,
    pub connect_to: Vec<String>,
}

/// One instance of the stand-in cluster.
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub host: String,
    pub port: u16,
}

/// A running stand-in. Dropping it (or the test process exiting, which closes its stdin)
/// stops the server and removes everything it made.
pub struct StandIn {
    pub info: Info,
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Option<Child>>,
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl StandIn {
    /// Starts a private stand-in (with moto's STS when `sts`).
    pub fn start(sts: bool) -> StandIn {
        Self::start_with(if sts { &["--sts"] } else { &[] })
    }

    /// Starts a stand-in cluster of `instances` (writer inst-1, replicas).
    pub fn start_cluster(instances: usize) -> StandIn {
        Self::start_with(&["--cluster", "--instances", &instances.to_string()])
    }

    /// The cluster, in cluster mode.
    pub fn cluster(&self) -> &ClusterInfo {
        self.info
            .cluster
            .as_ref()
            .expect("a stand-in started with start_cluster")
    }

    /// Runs a failover (`{"failover": options}`) to its end; returns the reply's timings.
    pub fn failover(&self, options: serde_json::Value) -> serde_json::Value {
        let reply = self.control_reply(serde_json::json!({ "failover": options }));
        assert_eq!(reply["ok"], true, "failover refused: {reply}");
        reply["failover"].clone()
    }

    /// Sends a control command and returns the whole reply.
    pub fn control_reply(&self, command: serde_json::Value) -> serde_json::Value {
        let mut s = std::os::unix::net::UnixStream::connect(&self.info.control_socket)
            .expect("control socket");
        writeln!(s, "{command}").expect("send control");
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .expect("control reply");
        serde_json::from_str(&reply).expect("a JSON reply")
    }

    pub fn start_with(args: &[&str]) -> StandIn {
        let logs = repo().join("target/standin-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let log = logs.join(format!("{}-{}.log", std::process::id(), unique()));
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/support/standin.py")).args(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tests/support/standin.py (run scripts/install-test-deps)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read stand-in");
        let info: Info = serde_json::from_str(&line).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("stand-in did not start ({e}): {line}\n{log}")
        });
        StandIn {
            info,
            stdin: Mutex::new(child.stdin.take()),
            child: Mutex::new(Some(child)),
        }
    }

    /// One stand-in shared by the tests of this binary (never mutate its state).
    pub fn shared() -> &'static StandIn {
        static SHARED: OnceLock<StandIn> = OnceLock::new();
        SHARED.get_or_init(|| StandIn::start(false))
    }

    /// Sends a control command (e.g. `{"skew_seconds": 1000}`).
    pub fn control(&self, command: serde_json::Value) {
        let reply = self.control_reply(command);
        assert_eq!(reply["ok"], true, "control refused: {reply}");
    }

    /// The verifier's decisions so far: (user, ok, reason).
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.info.decisions_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Environment for a child process to use the stand-in's static AWS keys only.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.info.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.info.secret_access_key.clone()),
            ("AWS_REGION", self.info.region.clone()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        drop(self.stdin.lock().map(|mut s| s.take()));
        if let Ok(mut child) = self.child.lock() {
            if let Some(mut c) = child.take() {
                let _ = c.wait();
            }
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// An in-process proxy in front of a stand-in.
pub struct Proxy {
    pub addr: SocketAddr,
    pub unix_socket: Option<PathBuf>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<RunReport>,
    pub cache: TokenCache,
}

/// How to start a proxy: defaults point at the stand-in with its static keys.
pub struct ProxySpec {
    pub target: TargetArgs,
    pub proxy: ProxyArgs,
    pub credentials: Credentials,
    pub clock: Arc<dyn Clock>,
    pub sts_endpoint: Option<String>,
}

impl ProxySpec {
    pub fn new(si: &StandIn) -> Self {
        let i = &si.info;
        Self {
            target: TargetArgs {
                listen: Some("127.0.0.1:0".parse().expect("addr")),
                host: Some(i.host.clone()),
                port: Some(i.port),
                region: Some(i.region.clone()),
                ca_file: Some(i.ca_file.clone()),
                ..TargetArgs::default()
            },
            proxy: ProxyArgs::default(),
            credentials: Credentials::new(
                i.access_key_id.clone(),
                i.secret_access_key.clone(),
                None,
                None,
                "standin",
            ),
            clock: Arc::new(SystemClock),
            sts_endpoint: i.sts_endpoint.clone(),
        }
    }

    /// A proxy for the stand-in cluster's endpoint `host` (its cluster or reader name),
    /// reaching every name through the cluster's `--connect-to` rules, verify-full.
    pub fn cluster(si: &StandIn, host: &str) -> Self {
        let c = si.cluster();
        let mut spec = Self::new(si);
        spec.target.host = Some(host.to_owned());
        spec.target.port = Some(c.virtual_port);
        spec.proxy.connect_to = Some(c.connect_to.clone());
        spec
    }

    pub async fn start(self) -> Proxy {
        let config = build(&self.proxy, &self.target, &FileConfig::default()).expect("config");
        let region = self
            .target
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".into());
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .credentials_provider(self.credentials)
            .region(Region::new(region));
        if let Some(url) = &self.sts_endpoint {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        let prepared = pg_iam_proxy::app::prepare_with(&config, &sdk, self.clock)
            .await
            .expect("prepare");
        let mut addr = None;
        let mut unix_socket = None;
        for (l, _) in &prepared.listeners {
            match l {
                Listener::Tcp(t) => addr = addr.or(t.local_addr().ok()),
                Listener::Unix(_, p) => unix_socket = Some(p.clone()),
            }
        }
        let shutdown = CancellationToken::new();
        let cache = prepared.cache.clone();
        let settings = config.proxy.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            pg_iam_proxy::app::serve(prepared, &settings, stop)
                .await
                .expect("serve")
        });
        Proxy {
            addr: addr.expect("tcp listener"),
            unix_socket,
            shutdown,
            task,
            cache,
        }
    }
}

/// A port that was free a moment ago (for listeners whose address must be known up front).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// tokio-postgres through the proxy (plain TCP to the proxy, as local clients do).
pub async fn pg(
    addr: SocketAddr,
    user: &str,
    db: &str,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
    let conn = format!(
        "host={} port={} user={user} dbname={db} sslmode=disable connect_timeout=20",
        addr.ip(),
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// Runs `cmd` with no stdin; returns (success, stdout followed by stderr).
#[allow(dead_code)] // not every test binary runs commands
pub fn run_joined(cmd: &mut Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// psql through the proxy; returns (success, stdout, stderr).
pub fn psql(host: &str, port: u16, user: &str, db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p"])
        .arg(port.to_string())
        .args(["-U", user, "-d", db])
        .args(args)
        .env("PGSSLMODE", "prefer")
        .env("PGCONNECT_TIMEOUT", "20")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The error of a login that must fail.
pub fn must_fail<T>(result: Result<T, tokio_postgres::Error>) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("the login must fail"),
        Err(e) => e,
    }
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// The message of a tokio-postgres error.
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} | hint: {:?}", d.message(), d.hint()))
        .unwrap_or_else(|| e.to_string())
}

/// A plain HTTP/1.1 request to the proxy's operator endpoint: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new()); // not listening (yet)
    };
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `path` until it answers `want` (bounded), for state changes that happen in the
/// background (a session task finishing).
pub async fn http_until(addr: SocketAddr, path: &str, want: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if http(addr, "GET", path).await.0 == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never answered {want}"
        );
        tokio::task::yield_now().await;
    }
}

/// A StartupMessage for protocol `major`.`minor` with `params` in order, as raw bytes.
pub fn startup(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = major.to_be_bytes().to_vec();
    body.extend_from_slice(&minor.to_be_bytes());
    for (k, v) in params {
        for s in [k, v] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}
