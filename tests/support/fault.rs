//! A real TCP fault proxy for tests: put it in front of any address (moto's STS, the
//! database, an HTTP endpoint) and switch what happens to connections while the test runs.
//!
//! * [`Mode::Pass`]: connections are forwarded to the target, bytes copied both ways.
//! * [`Mode::Reset`]: new connections are accepted and reset at once (RST); forwarded ones
//!   are reset too.
//! * [`Mode::Hang`]: new connections are accepted and read, never answered; forwarded ones
//!   stop moving bytes either way, like packets sent to an address that went dead. They stay
//!   open (silent) until the proxy is dropped, whatever the mode becomes later.
//! * [`Mode::Http503`]: new connections get `HTTP/1.1 503 Service Unavailable` after their
//!   request head, then are closed.
//!
//! ```ignore
//! let fault = FaultProxy::start(sts_addr).await;
//! env AWS_ENDPOINT_URL_STS = fault.url();
//! fault.set(Mode::Hang);   // STS accepts and never answers
//! fault.set(Mode::Pass);   // STS is back
//! ```
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What happens to connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the target.
    Pass,
    /// Accept, then reset.
    Reset,
    /// Accept and read, never answer; stop forwarding.
    Hang,
    /// Answer an HTTP request with 503 and close.
    Http503,
}

/// Connections accepted so far, by the mode they met.
#[derive(Debug, Default)]
pub struct Counts {
    pub passed: AtomicU64,
    pub reset: AtomicU64,
    pub hung: AtomicU64,
    pub http503: AtomicU64,
}

/// A running fault proxy; dropping it closes the listener and every connection.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub target: SocketAddr,
    mode: watch::Sender<Mode>,
    pub counts: Arc<Counts>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) in front of `target`, in [`Mode::Pass`].
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (mode, _) = watch::channel(Mode::Pass);
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            target,
            mode.clone(),
            counts.clone(),
            stop.clone(),
        ));
        FaultProxy {
            addr,
            target,
            mode,
            counts,
            stop,
        }
    }

    /// In front of an `http://host:port` URL (e.g. the stand-in's `sts_endpoint`).
    pub async fn for_url(url: &str) -> FaultProxy {
        let hostport = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let target = tokio::net::lookup_host(hostport)
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        Self::start(target).await
    }

    /// Switches the mode for new connections and for forwarded ones.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// `http://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections that met [`Mode::Hang`] (new or forwarded when it was set).
    pub fn hung(&self) -> u64 {
        self.counts.hung.load(Ordering::SeqCst)
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        let now = *mode.borrow();
        let (counts, stop, watch) = (counts.clone(), stop.clone(), mode.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve(client, now, target, watch, &counts) => {}
            }
        });
    }
}

async fn serve(
    client: TcpStream,
    mode: Mode,
    target: SocketAddr,
    watch: watch::Receiver<Mode>,
    counts: &Counts,
) {
    match mode {
        Mode::Pass => {
            counts.passed.fetch_add(1, Ordering::SeqCst);
            forward(client, target, watch, counts).await;
        }
        Mode::Reset => {
            counts.reset.fetch_add(1, Ordering::SeqCst);
            reset(client);
        }
        Mode::Hang => {
            counts.hung.fetch_add(1, Ordering::SeqCst);
            swallow(client).await;
        }
        Mode::Http503 => {
            counts.http503.fetch_add(1, Ordering::SeqCst);
            answer_503(client).await;
        }
    }
}

/// Closes with RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Reads and discards forever; never writes.
async fn swallow(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    // The peer closed its side: stay silent until the proxy goes away.
    std::future::pending::<()>().await;
}

async fn answer_503(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let body = "<ErrorResponse><Error><Code>ServiceUnavailable</Code>\
                <Message>fault proxy: 503</Message></Error></ErrorResponse>";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Copies both ways until either side closes or the mode leaves `Pass`.
async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    mut watch: watch::Receiver<Mode>,
    counts: &Counts,
) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return reset(client);
    };
    let changed = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::select! {
            _ = copy => None,
            m = watch.wait_for(|m| *m != Mode::Pass) => m.ok().map(|m| *m),
        }
    };
    match changed {
        None | Some(Mode::Pass) => {}
        Some(Mode::Reset) => {
            counts.reset.fetch_add(1, Ordering::SeqCst);
            reset(client);
            reset(upstream);
        }
        Some(Mode::Hang | Mode::Http503) => {
            // Bytes stop moving; both connections stay open and silent.
            counts.hung.fetch_add(1, Ordering::SeqCst);
            let _held = (client, upstream);
            std::future::pending::<()>().await;
        }
    }
}
