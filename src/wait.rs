//! `pg-iam-proxy wait`: exits 0 once the proxy's `/startup` answers 200 (for start-up
//! ordering, e.g. an app container waiting for its sidecar), or 1 after `--max`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How often `/startup` is asked.
const POLL: Duration = Duration::from_millis(100);
/// How long one attempt may take.
const ATTEMPT: Duration = Duration::from_secs(1);

async fn started(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let Ok(request) = Request::get("/startup")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    matches!(sender.send_request(request).await, Ok(r) if r.status() == 200)
}

/// Polls `http://addr/startup` until it answers 200 or `max` passes.
pub async fn wait(addr: SocketAddr, max: Duration) -> ExitCode {
    let deadline = Instant::now() + max;
    loop {
        let attempt = tokio::time::timeout(ATTEMPT, started(addr));
        if attempt.await.unwrap_or(false) {
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= deadline {
            eprintln!("pg-iam-proxy: not started after {max:?} (http://{addr}/startup)");
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(POLL).await;
    }
}
