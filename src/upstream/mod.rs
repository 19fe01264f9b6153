//! The upstream side: TCP + TLS to the database ([`connect`], [`tls`]) and the login as the
//! IAM database user with a token as the password ([`auth`]), put together for no client in
//! particular in [`login`].

pub mod auth;
pub mod connect;
pub mod login;
pub mod tls;
