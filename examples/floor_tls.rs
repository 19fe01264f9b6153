//! A second floor for the benchmarks: the least a relay that terminates the server's TLS can
//! do, which is the job of the proxy and of PgBouncer alike.
//!
//! For each client it declines the client's SSLRequest (answers 'N', as the proxy does),
//! opens TLS to the server (SSLRequest, then rustls with the given CA, verifying `SERVER_NAME`)
//! and copies bytes both ways with tokio's `copy_bidirectional`: no protocol parsing, no
//! login of its own (the client answers the server's password request itself), no pooling.
//! Whatever a TLS-terminating pooler costs beyond this is its own; what this costs beyond
//! `floor_relay` is the TLS termination on the same cores.
//!
//!     floor_tls LISTEN_ADDR TARGET_ADDR SERVER_NAME CA_FILE   (prints the bound address)

use std::io::Write;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, target, name, ca] = args.as_slice() else {
        eprintln!("usage: floor_tls LISTEN_ADDR TARGET_ADDR SERVER_NAME CA_FILE");
        std::process::exit(2);
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name.clone())?;
    let listener = TcpListener::bind(listen).await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", listener.local_addr()?)?;
    out.flush()?;
    loop {
        let (client, _) = listener.accept().await?;
        let (tls, name, target) = (tls.clone(), name.clone(), target.clone());
        tokio::spawn(async move {
            if let Err(e) = relay(client, &target, tls, name).await {
                eprintln!("floor_tls: {e}");
            }
        });
    }
}

async fn relay(
    mut client: TcpStream,
    target: &str,
    tls: TlsConnector,
    name: ServerName<'static>,
) -> Result<(), Error> {
    client.set_nodelay(true)?;
    let mut first = [0u8; 8];
    client.read_exact(&mut first).await?;
    let early = if first == SSL_REQUEST {
        client.write_all(b"N").await?;
        Vec::new()
    } else {
        first.to_vec()
    };
    let mut server = TcpStream::connect(target).await?;
    server.set_nodelay(true)?;
    server.write_all(&SSL_REQUEST).await?;
    if server.read_u8().await? != b'S' {
        return Err("the server refused TLS".into());
    }
    let mut server = tls.connect(name, server).await?;
    server.write_all(&early).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
