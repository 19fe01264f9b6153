//! The upstream side: TCP + TLS to the database ([`connect`], [`tls`]) and the login as the
//! IAM database user with a token as the password ([`auth`]).

pub mod auth;
pub mod connect;
pub mod tls;
