//! The floor for `benches/pgbench_compare.py`: the least any user-space relay can do.
//!
//! It accepts TCP connections, opens one to the target for each, and copies bytes both ways
//! with a blocking thread per direction: no TLS, no protocol, no tokio, nothing of the
//! proxy's. Clients run their TLS through it to the server, so what it costs is the extra
//! socket hop and the extra wake-ups alone. The benchmark runs it beside the proxy; if the
//! relay cannot reach a throughput target on a machine, no user-space proxy can.
//!
//!     floor_relay LISTEN_ADDR TARGET_ADDR     (prints the bound address, then serves)

use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target)) = (args.next(), args.next()) else {
        eprintln!("usage: floor_relay LISTEN_ADDR TARGET_ADDR");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen)?;
    let mut out = io::stdout();
    writeln!(out, "{}", listener.local_addr()?)?;
    out.flush()?;
    for client in listener.incoming() {
        let client = client?;
        let upstream = match TcpStream::connect(&target) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("floor_relay: connect {target}: {e}");
                continue;
            }
        };
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        pump(client.try_clone()?, upstream.try_clone()?);
        pump(upstream, client);
    }
    Ok(())
}

/// Copies `from` into `to` on a thread of its own, passing on the end of the stream.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
