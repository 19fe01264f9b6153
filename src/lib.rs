//! pg-iam-proxy: a local Postgres proxy that logs in to AWS Aurora / RDS PostgreSQL with IAM
//! database authentication on behalf of any client.
//!
//! A connection goes through stages, each with its own error type and timeout:
//!
//! ```text
//! accept (server)          listeners, connection limit, shutdown drain, per-connection span
//!   -> identify (frontend) the client's OS user: SO_PEERCRED, or the kernel's socket table
//!   -> handshake (client)  SSLRequest answered 'S' (TLS) with --client-tls-cert, else 'N';
//!                          GSSENCRequest 'N'; StartupMessage or CancelRequest
//!   -> admit (frontend)    admitted uid? remote: TLS + SCRAM or certificate; allowed database
//!                          user? else 28000 / 28P01, before any login
//!   -> connect (upstream)  resolve, TCP, SSLRequest -> exactly 'S' -> rustls verify-full
//!   -> login (upstream)    StartupMessage as the IAM db user; password = token from the cache
//!   -> greet (client)      AuthenticationOk, ParameterStatus, BackendKeyData (server pid, our
//!                          secret), ReadyForQuery
//!   -> relay               splice both directions until either side closes
//! ```
//!
//! The token side ([`iam`]) knows nothing about sockets: credentials -> signer -> cache.
//!
//! Modules: [`cli`], [`commands`] and [`app`] (start-up), [`config`], [`server`] (accept,
//! drain), [`target`] (one target's shared context), [`session`] (the stages above, nothing
//! else), [`client`], [`startup`], [`upstream`] (connect, TLS, auth, and [`upstream::login`]:
//! a server connection for no client in particular; [`upstream::topology`]: where an Aurora
//! cluster endpoint's new connections go), [`gate`] (the login queue), [`relay`],
//! [`cancel`], [`wire`], [`error`], [`fds`], [`iam`], [`logging`], [`frontend`] (who may
//! connect, as which database user), [`audit`] (a line per session start and end).

pub mod app;
pub mod audit;
pub mod cancel;
pub mod check;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod fds;
pub mod frontend;
pub mod gate;
pub mod health;
pub mod http;
pub mod iam;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod relay;
pub mod server;
pub mod session;
pub mod setup;
pub mod startup;
pub mod target;
pub mod upstream;
pub mod wait;
pub mod wire;
