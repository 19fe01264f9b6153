//! The client side's questions before any login: who is connecting ([`peer`]: `SO_PEERCRED`
//! on the Unix socket, the kernel's socket table for loopback TCP via [`sock_diag`] or
//! [`proc_net`]), whether they may use the proxy and as which database user ([`access`],
//! [`user_map`]), with names from the OS user database ([`users`]).

pub mod access;
pub mod auth_file;
pub mod peer;
pub mod proc_net;
pub mod resolve;
pub mod scram;
pub mod sock_diag;
pub mod tls;
pub mod unix_socket;
pub mod user_map;
pub mod users;
