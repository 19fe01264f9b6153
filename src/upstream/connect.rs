//! TCP and TLS to the database: resolve on every connection (Aurora endpoints move on
//! failover), connect with TCP keepalive, send SSLRequest, require exactly the byte 'S',
//! then a verified rustls handshake with SNI. With `--connect-to` the TCP connection goes
//! elsewhere ([`Endpoint::dial`]) while SNI and verification keep the endpoint's own name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::connect_to::{route, ConnectTo};
use crate::error::{sqlstate, ClientError};
use crate::fds;

/// A TLS connection to the database.
pub type UpstreamStream = Box<TlsStream<TcpStream>>;

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name (also the TLS server name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS client configuration.
    pub tls: Arc<ClientConfig>,
    /// Parsed server name for SNI and verification.
    pub server_name: ServerName<'static>,
    /// TCP keepalive idle time, if on.
    pub keepalive: Option<Duration>,
    /// Where TCP really goes (`--connect-to`); `host`/`port` unless a rule matched.
    pub dial: (String, u16),
}

impl Endpoint {
    /// An endpoint; fails if `host` is not a valid DNS name or IP address.
    pub fn new(
        host: &str,
        port: u16,
        tls: Arc<ClientConfig>,
        keepalive: Option<Duration>,
    ) -> Result<Self, String> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("invalid host name {host:?}: {e}"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            server_name,
            keepalive,
            dial: (host.to_owned(), port),
        })
    }

    /// The endpoint with TCP sent where the first matching `--connect-to` rule says.
    pub fn routed(mut self, rules: &[ConnectTo]) -> Self {
        self.dial = route(rules, &self.host, self.port);
        self
    }

    /// `host:port`, plus ` via dial-host:port` when `--connect-to` redirects it.
    pub fn describe(&self) -> String {
        let (dh, dp) = &self.dial;
        if dh == &self.host && *dp == self.port {
            format!("{}:{}", self.host, self.port)
        } else {
            format!("{}:{} (via {dh}:{dp})", self.host, self.port)
        }
    }
}

/// Why the database could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// DNS failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// Host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// No address could be connected to.
    #[error("cannot connect to {endpoint}: {source}")]
    Tcp {
        /// host:port (address).
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server refused or botched TLS negotiation.
    #[error("{endpoint} did not accept TLS: {detail}")]
    NoTls {
        /// host:port.
        endpoint: String,
        /// What it answered.
        detail: String,
    },
    /// The process is out of file descriptors (resolving or connecting needs one).
    #[error("out of file descriptors")]
    OutOfFds,
    /// The TLS handshake or certificate check failed.
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls {
        /// host:port.
        endpoint: String,
        /// Why (certificate errors included).
        source: std::io::Error,
    },
}

impl ConnectError {
    /// Short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Resolve { .. } => "dns",
            Self::Tcp { .. } => "connect",
            Self::NoTls { .. } | Self::Tls { .. } => "tls",
            Self::OutOfFds => "fds",
        }
    }

    /// The process ran out of file descriptors.
    pub fn is_out_of_fds(&self) -> bool {
        matches!(self, Self::OutOfFds)
    }

    /// `source` made `or_else`, unless it came from running out of descriptors: by its
    /// errno, or (`probe`, for getaddrinfo, whose errors hide it) by trying for one now.
    fn unless_out_of_fds(
        source: std::io::Error,
        probe: bool,
        or_else: impl FnOnce(std::io::Error) -> Self,
    ) -> Self {
        let out = if probe {
            fds::caused_exhaustion(&source)
        } else {
            fds::is_exhaustion(&source)
        };
        if out {
            Self::OutOfFds
        } else {
            or_else(source)
        }
    }

    /// What the client is told.
    pub fn to_client(&self) -> ClientError {
        let code = match self {
            Self::Resolve { .. } | Self::Tcp { .. } => sqlstate::UNABLE_TO_CONNECT,
            Self::NoTls { .. } | Self::Tls { .. } => sqlstate::CONNECTION_FAILURE,
            Self::OutOfFds => return fds::exhausted_error(),
        };
        ClientError::new(code, format!("pg-iam-proxy: {self}"))
    }
}

/// Turns on TCP keepalive (`idle` before the first probe, then every 10 s, 6 probes) and
/// TCP_NODELAY.
pub fn tune_socket(stream: &TcpStream, idle: Option<Duration>) -> std::io::Result<()> {
    if let Some(idle) = idle {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10))
            .with_retries(6);
        socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)?;
    }
    stream.set_nodelay(true)
}

/// Resolves the endpoint now and connects to the first address that answers.
pub async fn connect(ep: &Endpoint) -> Result<(UpstreamStream, SocketAddr), ConnectError> {
    let (dial_host, dial_port) = (&ep.dial.0, ep.dial.1);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((dial_host.as_str(), dial_port))
        .await
        .map_err(|source| {
            ConnectError::unless_out_of_fds(source, true, |source| ConnectError::Resolve {
                host: dial_host.clone(),
                source,
            })
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok((handshake(ep, tcp).await?, addr)),
            Err(e) => {
                let out_of_fds = fds::is_exhaustion(&e);
                last = Some(e);
                if out_of_fds {
                    break; // no other address does better
                }
            }
        }
    }
    let source = last.unwrap_or_else(|| std::io::Error::other("no addresses"));
    Err(ConnectError::unless_out_of_fds(source, false, |source| {
        ConnectError::Tcp {
            endpoint: ep.describe(),
            source,
        }
    }))
}

/// Connects to a known address (used to route a cancel to the session's server).
pub async fn connect_addr(ep: &Endpoint, addr: SocketAddr) -> Result<UpstreamStream, ConnectError> {
    let tcp = TcpStream::connect(addr).await.map_err(|source| {
        ConnectError::unless_out_of_fds(source, false, |source| ConnectError::Tcp {
            endpoint: addr.to_string(),
            source,
        })
    })?;
    handshake(ep, tcp).await
}

async fn handshake(ep: &Endpoint, mut tcp: TcpStream) -> Result<UpstreamStream, ConnectError> {
    let endpoint = ep.describe();
    let no_tls = |detail: String| ConnectError::NoTls {
        endpoint: endpoint.clone(),
        detail,
    };
    tune_socket(&tcp, ep.keepalive).map_err(|e| no_tls(e.to_string()))?;
    tcp.write_all(&SSL_REQUEST)
        .await
        .map_err(|e| no_tls(e.to_string()))?;
    // Exactly one byte: anything the server sent after it must go through TLS, where it
    // fails the handshake (no plaintext injection, CVE-2021-23222).
    let answer = tcp.read_u8().await.map_err(|e| no_tls(e.to_string()))?;
    match answer {
        b'S' => {}
        b'N' => return Err(no_tls("the server does not support TLS".into())),
        b'E' => {
            return Err(no_tls(
                "the server answered the TLS request with an error".into(),
            ))
        }
        other => return Err(no_tls(format!("unexpected answer byte 0x{other:02x}"))),
    }
    TlsConnector::from(ep.tls.clone())
        .connect(ep.server_name.clone(), tcp)
        .await
        .map(Box::new)
        .map_err(|source| ConnectError::Tls { endpoint, source })
}
